//! Crash groups through the real control plane: counted in the create's transaction
//! (Rejected cores too), printed and sorted by kubectl, watched, kept after their cores
//! are deleted, gone with the namespace, read-only to clients, RBAC'd like the cores, and
//! the crash signature and cause on `kubectl get coredumps`.

// A test binary: its helpers are test code as much as its #[test] functions, and a panic
// is the failure report (clippy.toml's allow-*-in-tests covers only the #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use coredump_integration::controlplane::USERS;
use coredump_integration::curl::{Credential, Curl, Reply};
use coredump_integration::env::TestEnv;
use coredump_integration::fixtures::{
    collection, fingerprint, Core, CoredumpFixture, QuotaFixture, API,
};
use serde_json::{json, Value};

fn env() -> &'static TestEnv {
    static RBAC: OnceLock<()> = OnceLock::new();
    let env = TestEnv::shared();
    RBAC.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rbac");
        env.kubectl()
            .ok(&["apply", "-k", &dir.display().to_string()])
            .unwrap_or_else(|e| panic!("apply deploy/rbac: {e}"));
    });
    env
}

fn direct() -> Curl {
    env().direct_admin()
}

fn post(c: &Curl, path: &str, body: &Value) -> Reply {
    c.request(
        "POST",
        path,
        &[("Content-Type", "application/json")],
        Some(&serde_json::to_vec(body).expect("json")),
    )
    .expect("curl")
}

fn crash(ns: &str, name: &str, bug: &str, signature: &str) -> Value {
    let r = post(
        &direct(),
        &collection(ns, "coredumps"),
        &CoredumpFixture::new(ns, name)
            .core(&Core::text(4096, name.len() as u64))
            .executable("/usr/local/bin/server")
            .image("registry.example/server:1.2")
            .analysis(bug, signature, "NullPointerDereference")
            .build(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

fn groups(ns: &str) -> Vec<Value> {
    let r = direct()
        .get(&collection(ns, "crashgroups"), &[])
        .expect("curl");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["items"].as_array().cloned().unwrap_or_default()
}

fn group_of<'a>(groups: &'a [Value], bug: &str) -> &'a Value {
    let fp = fingerprint(bug);
    groups
        .iter()
        .find(|g| g["spec"]["fingerprint"] == json!(fp))
        .unwrap_or_else(|| panic!("no group for {bug} in {groups:?}"))
}

#[test]
fn crash_groups_count_every_create_survive_their_cores_and_go_with_the_namespace() {
    let ns = env().namespace("cg-count").expect("ns");
    let c = direct();
    // Room for two: the third crash of the loop is Rejected, and still counted.
    let r = post(
        &c,
        &collection(&ns, "coredumpquotas"),
        &QuotaFixture::new(&ns).count(2).build(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    for i in 0..3 {
        crash(&ns, &format!("loop-{i}"), "parse-bug", "parse_header");
    }
    crash(&ns, "other", "another-bug", "write_body");
    let rejected = c
        .get(&format!("{}/loop-2", collection(&ns, "coredumps")), &[])
        .expect("curl")
        .json();
    assert_eq!(rejected["status"]["phase"], "Rejected", "{rejected}");

    let all = groups(&ns);
    assert_eq!(all.len(), 2, "{all:?}");
    let g = group_of(&all, "parse-bug");
    assert_eq!(g["kind"], "CrashGroup");
    assert_eq!(g["status"]["count"], 3);
    assert_eq!(g["status"]["latest"], "loop-2");
    assert_eq!(g["spec"]["signature"], "parse_header");
    assert_eq!(g["spec"]["executable"], "/usr/local/bin/server");
    assert_eq!(
        g["status"]["recent"][0]["image"],
        "registry.example/server:1.2"
    );
    assert_eq!(group_of(&all, "another-bug")["status"]["count"], 1);
    let name = g["metadata"]["name"].as_str().expect("name").to_string();
    assert!(name.starts_with("server-parse-header-"), "{name}");

    // kubectl: the team's bugs, most frequent last with --sort-by.
    let k = env().kubectl();
    let sorted = k
        .ok(&[
            "get",
            "crashgroups",
            "-n",
            &ns,
            "--sort-by=.status.count",
            "-o",
            "custom-columns=SIG:.spec.signature,N:.status.count",
            "--no-headers",
        ])
        .expect("kubectl");
    let rows: Vec<Vec<&str>> = sorted
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows, [vec!["write_body", "1"], vec!["parse_header", "3"]]);
    let table = k.ok(&["get", "crashgroups", "-n", &ns]).expect("kubectl");
    for want in [
        "SIGNATURE",
        "CAUSE",
        "COUNT",
        "LAST SEEN",
        "parse_header",
        "NullPointerDereference",
    ] {
        assert!(table.contains(want), "{want} in\n{table}");
    }
    let cores = k.ok(&["get", "coredumps", "-n", &ns]).expect("kubectl");
    for want in [
        "SIGNATURE",
        "CAUSE",
        "parse_header",
        "NullPointerDereference",
    ] {
        assert!(cores.contains(want), "{want} in\n{cores}");
    }
    let wide = k
        .ok(&["get", "coredumps", "-n", &ns, "-o", "wide"])
        .expect("kubectl");
    assert!(wide.contains(&fingerprint("parse-bug")), "{wide}");
    let by_group = k
        .ok(&[
            "get",
            "coredumps",
            "-n",
            &ns,
            &format!(
                "--field-selector=spec.analysis.fingerprint={}",
                fingerprint("parse-bug")
            ),
            "-o",
            "name",
        ])
        .expect("kubectl");
    assert_eq!(by_group.lines().count(), 3, "{by_group}");

    // A watch from before the next crash sees the group change.
    let rv = c
        .get(&collection(&ns, "crashgroups"), &[])
        .expect("curl")
        .json()["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    crash(&ns, "loop-3", "parse-bug", "parse_header");
    let watched = c
        .get(
            &format!(
                "{}?watch=true&resourceVersion={rv}&timeoutSeconds=1",
                collection(&ns, "crashgroups")
            ),
            &[],
        )
        .expect("curl");
    let events: Vec<Value> = watched
        .text()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        events.iter().any(|e| e["type"] == "MODIFIED"
            && e["object"]["status"]["count"] == 4
            && e["object"]["metadata"]["name"] == json!(name)),
        "{events:?}"
    );

    // Read-only to clients.
    let path = format!("{}/{name}", collection(&ns, "crashgroups"));
    let r = post(&c, &collection(&ns, "crashgroups"), &groups(&ns)[0]);
    assert_eq!(r.status, 405, "{}", r.text());
    let r = c
        .request(
            "PATCH",
            &path,
            &[("Content-Type", "application/merge-patch+json")],
            Some(br#"{"status":{"count":0}}"#),
        )
        .expect("curl");
    assert_eq!(r.status, 405, "{}", r.text());

    // The cores go; the groups stay.
    let r = c
        .request("DELETE", &collection(&ns, "coredumps"), &[], None)
        .expect("curl");
    assert_eq!(r.status, 200, "{}", r.text());
    let all = groups(&ns);
    assert_eq!(group_of(&all, "parse-bug")["status"]["count"], 4);

    // The namespace goes, and its groups with it.
    k.ok(&["delete", "namespace", &ns, "--wait=true", "--timeout=60s"])
        .expect("delete namespace");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = c
            .get(&format!("{API}/crashgroups"), &[])
            .expect("curl")
            .json()["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter(|g| g["metadata"]["namespace"] == json!(ns))
                    .count()
            })
            .unwrap_or(0);
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} groups outlived {ns}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn crash_groups_are_rbacd_like_the_cores_and_counted_in_metrics() {
    let mine = env().namespace("cg-alice").expect("ns");
    let theirs = env().namespace("cg-bob").expect("ns");
    crash(&mine, "a", "alice-bug", "alice_fn");
    crash(&theirs, "b", "bob-bug", "bob_fn");
    let k = env().kubectl();
    k.ok(&[
        "create",
        "rolebinding",
        "view",
        "--clusterrole=view",
        "--user=alice",
        "-n",
        &mine,
    ])
    .expect("bind");
    let deadline = Instant::now() + Duration::from_secs(60);
    while k
        .ok(&[
            "auth",
            "can-i",
            "list",
            "crashgroups.coredump.io",
            "-n",
            &mine,
            "--as=alice",
        ])
        .map(|o| o.trim() != "yes")
        .unwrap_or(true)
    {
        assert!(
            Instant::now() < deadline,
            "view never aggregated crashgroups"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let ep = &env().cp.endpoints;
    let token = USERS
        .iter()
        .find(|u| u.name == "alice")
        .map(|u| u.token)
        .unwrap_or_default();
    let alice = Curl {
        base: ep.server.clone(),
        ca: ep.ca_cert.clone(),
        cred: Credential::Bearer(token.into()),
    };
    let r = alice
        .get(&collection(&mine, "crashgroups"), &[])
        .expect("curl");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["items"][0]["spec"]["signature"], "alice_fn");
    let r = alice
        .get(&collection(&theirs, "crashgroups"), &[])
        .expect("curl");
    assert_eq!(r.status, 403, "{}", r.text());
    let out = k
        .context("alice")
        .run(&["get", "crashgroups", "-n", &theirs])
        .expect("kubectl");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Forbidden"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let metrics = direct().get("/metrics", &[]).expect("curl").text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("coredump_apiserver_crashes_total")
                && l.contains(&format!("namespace=\"{mine}\""))
                && l.contains("alice-fn")),
        "{metrics}"
    );
}
