//! The coredump.io API through the real aggregator with the real kubectl: every kubectl
//! habit, Kubernetes REST semantics, negotiation and errors.

// A test binary: its helpers are test code as much as its #[test] functions, and a panic
// is the failure report (clippy.toml's allow-*-in-tests covers only the #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use coredump_integration::curl::Curl;
use coredump_integration::env::TestEnv;
use coredump_integration::fixtures::{CoredumpFixture, QuotaFixture};
use coredump_integration::kubectl::Kubectl;
use serde_json::{json, Value};

const API: &str = "/apis/coredump.io/v1alpha1";

fn env() -> &'static TestEnv {
    TestEnv::shared()
}

/// Coredump `ns/name` of `pod` on `node`, labelled `app=<pod>`.
fn fixture(ns: &str, name: &str, pod: &str, node: &str) -> CoredumpFixture {
    CoredumpFixture::new(ns, name)
        .label("app", pod)
        .node(node)
        .pod(pod)
        .image("example/app:1")
        .executable("/bin/app")
}

fn coredump(ns: &str, name: &str, pod: &str, node: &str) -> Value {
    fixture(ns, name, pod, node).build()
}

fn create(k: &Kubectl, obj: &Value) -> Value {
    let body = serde_json::to_vec(obj).expect("json");
    let out = k
        .run_stdin(&["create", "-f", "-", "-o", "json"], &body)
        .expect("run");
    assert!(
        out.status.success(),
        "create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("created json")
}

fn json_of(k: &Kubectl, args: &[&str]) -> Value {
    let out = k.ok(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    serde_json::from_str(&out).expect("json output")
}

fn stderr_of(k: &Kubectl, args: &[&str], stdin: Option<&[u8]>) -> String {
    let out = match stdin {
        Some(b) => k.run_stdin(args, b),
        None => k.run(args),
    }
    .expect("run kubectl");
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn admin_curl() -> Curl {
    Curl::admin(&env().cp.endpoints)
}

#[test]
fn create_get_and_delete_like_a_builtin() {
    let ns = env().namespace("api-crud").expect("ns");
    let k = env().kubectl();
    let created = create(&k, &coredump(&ns, "one", "web-1", "node-a"));
    let meta = &created["metadata"];
    assert_eq!(created["apiVersion"], "coredump.io/v1alpha1");
    assert_eq!(created["kind"], "Coredump");
    assert_eq!(meta["generation"], 1);
    assert!(meta["uid"].as_str().is_some_and(|u| u.len() == 36));
    let ts = meta["creationTimestamp"].as_str().expect("timestamp");
    assert!(
        ts.ends_with('Z') && !ts.contains('.'),
        "RFC 3339 seconds: {ts}"
    );
    let rv: u64 = meta["resourceVersion"]
        .as_str()
        .expect("rv")
        .parse()
        .expect("decimal rv");
    assert_eq!(created["status"]["phase"], "Pending");

    let got = json_of(
        &k,
        &[
            "get",
            "coredumps.coredump.io",
            "one",
            "-n",
            &ns,
            "-o",
            "json",
        ],
    );
    assert_eq!(got["metadata"]["uid"], meta["uid"]);

    // Printed columns, plain and wide.
    let table = k.ok(&["get", "coredumps", "-n", &ns]).expect("get");
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "POD",
            "CONTAINER",
            "SIGNAL",
            "SIGNATURE",
            "CAUSE",
            "SIZE",
            "STORED",
            "PHASE",
            "AGE"
        ]
    );
    assert!(
        table.contains("one")
            && table.contains("web-1")
            && table.contains("SIGSEGV")
            && table.contains("Pending")
    );
    let wide = k
        .ok(&["get", "cdump", "-n", &ns, "-o", "wide"])
        .expect("wide");
    let header: Vec<&str> = wide
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "POD",
            "CONTAINER",
            "SIGNAL",
            "SIGNATURE",
            "CAUSE",
            "SIZE",
            "STORED",
            "PHASE",
            "AGE",
            "NODE",
            "EXECUTABLE",
            "IMAGE",
            "FINGERPRINT"
        ]
    );
    assert!(wide.contains("node-a") && wide.contains("/bin/app") && wide.contains("example/app:1"));

    // Cluster-wide.
    let all = k
        .ok(&["get", "coredumps.coredump.io", "-A"])
        .expect("get -A");
    assert!(
        all.lines().any(|l| l.starts_with(&ns) && l.contains("one")),
        "{all}"
    );

    k.ok(&["delete", "coredump", "one", "-n", &ns])
        .expect("delete");
    let err = stderr_of(&k, &["get", "coredump", "one", "-n", &ns], None);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
    // The next write gets a larger revision.
    let again = create(&k, &coredump(&ns, "two", "web-1", "node-a"));
    let rv2: u64 = again["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .parse()
        .expect("rv");
    assert!(rv2 > rv);
}

#[test]
fn quotas_print_used_over_hard() {
    let ns = env().namespace("api-quota").expect("ns");
    let k = env().kubectl();
    create(
        &k,
        &QuotaFixture::new(&ns)
            .name("limits")
            .storage("1Gi")
            .count(10)
            .max_age("720h")
            .build(),
    );
    let wide = k
        .ok(&["get", "coredumpquotas", "-n", &ns, "-o", "wide"])
        .expect("get");
    let mut lines = wide.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "STORAGE", "COUNT", "AGE", "MAX", "AGE", "EVICT", "OLDEST"]
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row[..3], ["limits", "0/1Gi", "0/10"]);
    assert_eq!(row[4], "720h");
    let explain = k
        .ok(&["explain", "coredumpquotas.spec.hard"])
        .expect("explain");
    assert!(
        explain.contains("storage") && explain.contains("count"),
        "{explain}"
    );
    let explain = k.ok(&["explain", "coredumps.spec"]).expect("explain");
    for field in [
        "podName",
        "containerName",
        "sha256",
        "storedSize",
        "dumpTime",
    ] {
        assert!(explain.contains(field), "explain lacks {field}: {explain}");
    }
}

#[test]
fn label_and_field_selectors_and_delete_by_label() {
    let ns = env().namespace("api-select").expect("ns");
    let k = env().kubectl();
    create(&k, &coredump(&ns, "a", "web", "node-a"));
    create(&k, &coredump(&ns, "b", "web", "node-b"));
    create(&k, &coredump(&ns, "c", "db", "node-a"));
    let names = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["get", "coredumps", "-n", &ns, "-o", "name"];
        all.extend_from_slice(args);
        let mut v: Vec<String> = k
            .ok(&all)
            .expect("get")
            .lines()
            .map(|l| l.rsplit('/').next().unwrap_or_default().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&["-l", "app=web"]), ["a", "b"]);
    assert_eq!(names(&["-l", "app in (db,cache)"]), ["c"]);
    assert_eq!(names(&["-l", "app!=web"]), ["c"]);
    assert_eq!(
        names(&["--field-selector", "spec.nodeName=node-a"]),
        ["a", "c"]
    );
    assert_eq!(
        names(&["--field-selector", "spec.podName=web,spec.nodeName!=node-a"]),
        ["b"]
    );
    assert_eq!(names(&["--field-selector", "metadata.name=b"]), ["b"]);
    assert_eq!(
        names(&["--field-selector", "status.phase=Pending", "-l", "app=db"]),
        ["c"]
    );
    let err = stderr_of(
        &k,
        &[
            "get",
            "coredumps",
            "-n",
            &ns,
            "--field-selector",
            "spec.image=x",
        ],
        None,
    );
    assert!(err.contains("field label not supported"), "{err}");
    let err = stderr_of(
        &k,
        &["get", "coredumps", "-n", &ns, "-l", "app in web"],
        None,
    );
    assert!(
        err.contains("BadRequest") || err.contains("unable to parse"),
        "{err}"
    );

    k.ok(&["delete", "coredumps", "-n", &ns, "-l", "app=web"])
        .expect("delete -l");
    assert_eq!(names(&[]), ["c"]);
}

#[test]
fn paging_with_chunk_size_and_continue_tokens() {
    let ns = env().namespace("api-page").expect("ns");
    let k = env().kubectl();
    for i in 0..5 {
        create(&k, &coredump(&ns, &format!("p{i}"), "web", "node-a"));
    }
    let out = k
        .ok(&[
            "get",
            "coredumps",
            "-n",
            &ns,
            "--chunk-size=2",
            "-o",
            "name",
        ])
        .expect("get");
    assert_eq!(out.lines().count(), 5, "{out}");

    let page1 = json_of(
        &k,
        &[
            "get",
            "--raw",
            &format!("{API}/namespaces/{ns}/coredumps?limit=2"),
        ],
    );
    assert_eq!(page1["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(page1["metadata"]["remainingItemCount"], 3);
    let token = page1["metadata"]["continue"]
        .as_str()
        .expect("continue token")
        .to_string();
    let list_rv = page1["metadata"]["resourceVersion"].clone();
    // A change after the first page does not show in later pages: a consistent snapshot.
    k.ok(&["delete", "coredump", "p4", "-n", &ns])
        .expect("delete p4");
    create(&k, &coredump(&ns, "p5", "web", "node-a"));
    let page2 = json_of(
        &k,
        &[
            "get",
            "--raw",
            &format!("{API}/namespaces/{ns}/coredumps?limit=10&continue={token}"),
        ],
    );
    let names: Vec<&str> = page2["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["p2", "p3", "p4"]);
    assert_eq!(page2["metadata"]["resourceVersion"], list_rv);
    for item in page2["items"].as_array().expect("items") {
        assert_eq!(item["kind"], "Coredump");
        assert_eq!(item["apiVersion"], "coredump.io/v1alpha1");
    }
    let bad = stderr_of(
        &k,
        &[
            "get",
            "--raw",
            &format!("{API}/namespaces/{ns}/coredumps?limit=1&continue=garbage"),
        ],
        None,
    );
    assert!(
        bad.contains("BadRequest") || bad.contains("continue"),
        "{bad}"
    );
}

#[test]
fn kubectl_get_watch_receives_events() {
    let ns = env().namespace("api-watch").expect("ns");
    let k = env().kubectl();
    create(&k, &coredump(&ns, "before", "web", "node-a"));
    let mut child = k
        .command()
        .args([
            "get",
            "coredumps",
            "-n",
            &ns,
            "-w",
            "--output-watch-events",
            "--request-timeout=30s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |want: &dyn Fn(&str) -> bool| -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                if want(&line) {
                    return line;
                }
            }
        }
        panic!("no matching watch line");
    };
    wait_for(&|l| l.starts_with("ADDED") && l.contains("before"));
    create(&k, &coredump(&ns, "during", "db", "node-b"));
    wait_for(&|l| l.starts_with("ADDED") && l.contains("during"));
    k.ok(&["label", "coredump", "during", "-n", &ns, "seen=yes"])
        .expect("label");
    wait_for(&|l| l.starts_with("MODIFIED") && l.contains("during"));
    k.ok(&["delete", "coredump", "during", "-n", &ns])
        .expect("delete");
    wait_for(&|l| l.starts_with("DELETED") && l.contains("during"));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn raw_watch_from_revision_with_selector_transitions_and_initial_events() {
    let ns = env().namespace("api-rawwatch").expect("ns");
    let k = env().kubectl();
    let a = create(&k, &coredump(&ns, "a", "web", "node-a"));
    let rv = a["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    k.ok(&["label", "coredump", "a", "-n", &ns, "--overwrite", "app=db"])
        .expect("relabel");
    create(&k, &coredump(&ns, "b", "web", "node-a"));
    // From rv, selector app=web: a leaves the selection (DELETED), b enters (ADDED).
    let out = k
        .ok(&["get", "--raw", &format!("{API}/namespaces/{ns}/coredumps?watch=true&resourceVersion={rv}&labelSelector=app%3Dweb&timeoutSeconds=2")])
        .expect("watch");
    let events: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_string(),
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("DELETED".to_string(), "a".to_string()),
            ("ADDED".to_string(), "b".to_string())
        ]
    );

    // sendInitialEvents: ADDED for what exists, then the initial-events-end bookmark.
    let out = k
        .ok(&["get", "--raw", &format!("{API}/namespaces/{ns}/coredumps?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=2")])
        .expect("watch-list");
    let events: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["ADDED", "ADDED", "BOOKMARK"]);
    assert_eq!(
        events[2]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    // Without resourceVersionMatch=NotOlderThan the server answers as kube-apiserver does.
    let err = stderr_of(
        &k,
        &[
            "get",
            "--raw",
            &format!("{API}/namespaces/{ns}/coredumps?watch=true&sendInitialEvents=true"),
        ],
        None,
    );
    assert!(
        err.contains("Invalid") || err.contains("422") || err.contains("invalid"),
        "{err}"
    );
}

#[test]
fn updates_conflict_on_stale_resource_version_and_spec_is_immutable() {
    let ns = env().namespace("api-update").expect("ns");
    let k = env().kubectl();
    create(&k, &coredump(&ns, "u", "web", "node-a"));
    let yaml = k
        .ok(&["get", "coredump", "u", "-n", &ns, "-o", "yaml"])
        .expect("yaml");
    // Round trip: the YAML kubectl printed replaces the object.
    let edited = yaml.replace("app: web", "app: web2");
    let replaced = k
        .run_stdin(&["replace", "-f", "-"], edited.as_bytes())
        .expect("replace");
    assert!(
        replaced.status.success(),
        "{}",
        String::from_utf8_lossy(&replaced.stderr)
    );
    // The same (now stale) YAML again: 409 Conflict.
    let err = stderr_of(
        &k,
        &["replace", "-f", "-"],
        Some(yaml.replace("app: web", "app: web3").as_bytes()),
    );
    assert!(
        err.contains("Conflict") || err.contains("the object has been modified"),
        "{err}"
    );
    // kubectl apply of a manifest (merge patch underneath) works.
    let manifest = fixture(&ns, "u", "web", "node-a")
        .label("app", "web4")
        .build();
    let applied = k
        .run_stdin(
            &["apply", "-f", "-"],
            &serde_json::to_vec(&manifest).expect("json"),
        )
        .expect("apply");
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    assert_eq!(
        k.ok(&[
            "get",
            "coredump",
            "u",
            "-n",
            &ns,
            "-o",
            "jsonpath={.metadata.labels.app}"
        ])
        .expect("get"),
        "web4"
    );

    let err = stderr_of(
        &k,
        &[
            "patch",
            "coredump",
            "u",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"podName":"other"}}"#,
        ],
        None,
    );
    assert!(
        err.contains("Invalid") && err.contains("immutable"),
        "{err}"
    );
    // JSON patch with a failing test op.
    let err = stderr_of(
        &k,
        &[
            "patch",
            "coredump",
            "u",
            "-n",
            &ns,
            "--type=json",
            "-p",
            r#"[{"op":"test","path":"/metadata/labels/app","value":"nope"},{"op":"add","path":"/metadata/labels/x","value":"y"}]"#,
        ],
        None,
    );
    assert!(!err.is_empty());
    k.ok(&["patch", "coredump", "u", "-n", &ns, "--type=json", "-p", r#"[{"op":"test","path":"/metadata/labels/app","value":"web4"},{"op":"add","path":"/metadata/labels/x","value":"y"}]"#])
        .expect("json patch");
    // Strategic merge patch is answered as for custom resources: 415.
    let err = stderr_of(
        &k,
        &[
            "patch",
            "coredump",
            "u",
            "-n",
            &ns,
            "--type=strategic",
            "-p",
            r#"{"metadata":{"labels":{"z":"1"}}}"#,
        ],
        None,
    );
    assert!(
        err.contains("UnsupportedMediaType")
            || err.contains("415")
            || err.contains("unknown format"),
        "{err}"
    );
    // Status is ignored on the main resource and written through /status only.
    k.ok(&[
        "patch",
        "coredump",
        "u",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Failed"}}"#,
    ])
    .expect("patch");
    assert_eq!(
        k.ok(&[
            "get",
            "coredump",
            "u",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.phase}"
        ])
        .expect("get"),
        "Pending"
    );
    k.ok(&[
        "patch",
        "coredump",
        "u",
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Failed","reason":"Test"}}"#,
    ])
    .expect("patch status");
    assert_eq!(
        k.ok(&[
            "get",
            "coredump",
            "u",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.phase}"
        ])
        .expect("get"),
        "Failed"
    );
}

#[test]
fn generate_name_dry_run_and_preconditions() {
    let ns = env().namespace("api-gen").expect("ns");
    let k = env().kubectl();
    let mut obj = coredump(&ns, "", "web", "node-a");
    obj["metadata"] = json!({"generateName": "crash-", "namespace": ns});
    let created = create(&k, &obj);
    let name = created["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    assert!(
        name.starts_with("crash-") && name.len() == "crash-".len() + 5,
        "{name}"
    );

    let dry = k
        .run_stdin(
            &["create", "--dry-run=server", "-f", "-", "-o", "json"],
            &serde_json::to_vec(&coredump(&ns, "dry", "web", "n")).expect("json"),
        )
        .expect("run");
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let err = stderr_of(&k, &["get", "coredump", "dry", "-n", &ns], None);
    assert!(err.contains("not found"), "{err}");
    k.ok(&["delete", "coredump", &name, "-n", &ns, "--dry-run=server"])
        .expect("dry delete");
    k.ok(&["get", "coredump", &name, "-n", &ns])
        .expect("still there");

    // Delete with a stale UID precondition: 409.
    let reply = admin_curl()
        .request(
            "DELETE",
            &format!("{API}/namespaces/{ns}/coredumps/{name}"),
            &[("Content-Type", "application/json")],
            Some(br#"{"kind":"DeleteOptions","apiVersion":"v1","preconditions":{"uid":"00000000-0000-0000-0000-000000000000"}}"#),
        )
        .expect("curl");
    assert_eq!(reply.status, 409, "{}", reply.text());
    assert_eq!(reply.json()["reason"], "Conflict");
}

#[test]
fn bad_input_gets_a_status_and_stores_nothing() {
    let ns = env().namespace("api-bad").expect("ns");
    let c = admin_curl();
    let path = format!("{API}/namespaces/{ns}/coredumps");
    let post = |body: &[u8]| {
        c.request(
            "POST",
            &path,
            &[("Content-Type", "application/json")],
            Some(body),
        )
        .expect("curl")
    };
    let check = |r: coredump_integration::curl::Reply, code: u16, reason: &str| {
        assert_eq!(r.status, code, "{}", r.text());
        let s = r.json();
        assert_eq!(s["kind"], "Status", "{}", r.text());
        assert_eq!(s["reason"], reason, "{}", r.text());
        assert_eq!(s["code"], code);
    };
    check(post(b"{not json"), 400, "BadRequest");
    let mut wrong = coredump(&ns, "w", "web", "n");
    wrong["apiVersion"] = json!("coredump.io/v9");
    check(
        post(&serde_json::to_vec(&wrong).expect("json")),
        400,
        "BadRequest",
    );
    let other_ns = coredump("elsewhere", "w", "web", "n");
    check(
        post(&serde_json::to_vec(&other_ns).expect("json")),
        400,
        "BadRequest",
    );
    check(
        post(&serde_json::to_vec(&coredump(&ns, "Bad_Name", "web", "n")).expect("json")),
        422,
        "Invalid",
    );
    let bad_sha = fixture(&ns, "badsha", "web", "n").sha("xyz").build();
    let r = post(&serde_json::to_vec(&bad_sha).expect("json"));
    assert_eq!(
        r.json()["details"]["causes"][0]["field"],
        "spec.sha256",
        "{}",
        r.text()
    );
    check(r, 422, "Invalid");
    let unknown = fixture(&ns, "unknown", "web", "n")
        .spec("bogus", json!(1))
        .build();
    let r = c
        .request(
            "POST",
            &format!("{path}?fieldValidation=Strict"),
            &[("Content-Type", "application/json")],
            Some(&serde_json::to_vec(&unknown).expect("json")),
        )
        .expect("curl");
    assert!(
        r.text().contains("unknown field \\\"spec.bogus\\\""),
        "{}",
        r.text()
    );
    check(r, 400, "BadRequest");
    let r = c
        .request(
            "POST",
            &format!("{path}?fieldValidation=Warn"),
            &[("Content-Type", "application/json")],
            Some(&serde_json::to_vec(&unknown).expect("json")),
        )
        .expect("curl");
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(
        r.header("Warning")
            .is_some_and(|w| w.contains("spec.bogus")),
        "{:?}",
        r.headers
    );
    let big = fixture(&ns, "big", "web", "n")
        .annotation("pad", &"x".repeat(4 * 1024 * 1024))
        .build();
    check(
        post(&serde_json::to_vec(&big).expect("json")),
        413,
        "RequestEntityTooLarge",
    );
    let r = c
        .request(
            "POST",
            &path,
            &[("Content-Type", "application/yaml")],
            Some(b"a: b"),
        )
        .expect("curl");
    check(r, 415, "UnsupportedMediaType");
    check(
        c.get(&format!("{path}/missing"), &[]).expect("curl"),
        404,
        "NotFound",
    );
    let r = c
        .get(&format!("{path}/missing/download"), &[])
        .expect("curl");
    check(r, 404, "NotFound");

    // Only the object created under fieldValidation=Warn was stored.
    let list = c.get(&path, &[]).expect("curl").json();
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["unknown"]);
}

#[test]
fn table_and_metadata_negotiation() {
    let ns = env().namespace("api-neg").expect("ns");
    let k = env().kubectl();
    create(&k, &coredump(&ns, "n1", "web", "node-a"));
    let c = admin_curl();
    let path = format!("{API}/namespaces/{ns}/coredumps");
    let meta_list = c
        .get(
            &path,
            &[(
                "Accept",
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
            )],
        )
        .expect("curl");
    let v = meta_list.json();
    assert_eq!(
        v["kind"],
        "PartialObjectMetadataList",
        "{}",
        meta_list.text()
    );
    assert_eq!(v["items"][0]["kind"], "PartialObjectMetadata");
    assert!(v["items"][0].get("spec").is_none());
    let one = c
        .get(
            &format!("{path}/n1"),
            &[(
                "Accept",
                "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
            )],
        )
        .expect("curl")
        .json();
    assert_eq!(one["kind"], "PartialObjectMetadata");
    assert_eq!(one["metadata"]["name"], "n1");
    let table = c
        .get(
            &path,
            &[(
                "Accept",
                "application/json;as=Table;g=meta.k8s.io;v=v1beta1",
            )],
        )
        .expect("curl")
        .json();
    assert_eq!(table["kind"], "Table");
    assert_eq!(table["apiVersion"], "meta.k8s.io/v1beta1");
    assert_eq!(table["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(table["rows"][0]["cells"][0], "n1");
    let r = c
        .get(&path, &[("Accept", "application/vnd.kubernetes.protobuf")])
        .expect("curl");
    assert_eq!(r.status, 406, "{}", r.text());
    // Metadata watch events (the garbage collector's and namespace controller's form).
    let r = c
        .get(
            &format!("{path}?watch=true&timeoutSeconds=1"),
            &[(
                "Accept",
                "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
            )],
        )
        .expect("curl");
    let first: Value =
        serde_json::from_str(r.text().lines().next().unwrap_or_default()).expect("event");
    assert_eq!(first["type"], "ADDED");
    assert_eq!(first["object"]["kind"], "PartialObjectMetadata");
}

#[test]
fn kube_rs_watcher_sees_creates_and_deletes() {
    use coredump_openapi::Coredump;
    use futures::StreamExt;
    use kube::runtime::watcher;

    let ns = env().namespace("api-kube-rs").expect("ns");
    let k = env().kubectl();
    create(&k, &coredump(&ns, "pre", "web", "node-a"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let kubeconfig = kube::config::Kubeconfig::read_from(&env().cp.endpoints.kubeconfig)
            .expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("config");
        let client = kube::Client::try_from(config).expect("client");
        let api: kube::Api<Coredump> = kube::Api::namespaced(client, &ns);
        let mut events = watcher(api, watcher::Config::default()).boxed();
        let mut seen = std::collections::BTreeSet::new();
        let mut deleted = false;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut created_live = false;
        while !(seen.contains("pre") && seen.contains("live") && deleted) {
            let ev = tokio::time::timeout_at(deadline, events.next())
                .await
                .expect("watcher events in time")
                .expect("stream open")
                .expect("watcher event");
            match ev {
                watcher::Event::Apply(cd) | watcher::Event::InitApply(cd) => {
                    seen.insert(cd.metadata.name.clone().unwrap_or_default());
                }
                watcher::Event::Delete(cd) => {
                    deleted |= cd.metadata.name.as_deref() == Some("live");
                }
                watcher::Event::InitDone => {}
                watcher::Event::Init => {}
            }
            if seen.contains("pre") && !created_live {
                created_live = true;
                create(&k, &coredump(&ns, "live", "web", "node-a"));
            }
            if seen.contains("live") && !deleted {
                k.ok(&["delete", "coredump", "live", "-n", &ns, "--wait=false"])
                    .expect("delete");
            }
        }
    });
}

#[test]
fn deleting_a_namespace_removes_its_coredumps() {
    let ns = env().namespace("api-nsdel").expect("ns");
    let k = env().kubectl();
    create(&k, &coredump(&ns, "x", "web", "node-a"));
    create(&k, &coredump(&ns, "y", "web", "node-a"));
    // The namespace controller finds coredumps through discovery and deletes them with
    // the metadata client before the namespace goes.
    k.ok(&["delete", "namespace", &ns, "--timeout=60s"])
        .expect("namespace deletion completes");
    let left = admin_curl()
        .get(&format!("{API}/namespaces/{ns}/coredumps"), &[])
        .expect("curl")
        .json();
    assert_eq!(left["items"].as_array().map(Vec::len), Some(0), "{left}");
}

#[test]
fn served_openapi_matches_the_checked_in_documents() {
    let k = env().kubectl();
    let checked_in = |file: &str| -> Value {
        let path = format!("{}/../openapi/{file}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json")
    };
    // Through the aggregator, which fetches it from the extension server.
    let v3: Value = serde_json::from_str(
        &k.ok(&["get", "--raw", "/openapi/v3/apis/coredump.io/v1alpha1"])
            .expect("v3"),
    )
    .expect("json");
    assert_eq!(
        v3,
        checked_in("openapi-v3.json"),
        "served v3 document drifted from openapi/openapi-v3.json"
    );
    let direct = admin_curl();
    let index = direct.get("/openapi/v3", &[]).expect("curl").json();
    assert!(
        index["paths"]["apis/coredump.io/v1alpha1"]["serverRelativeURL"].is_string(),
        "{index}"
    );
    let server = env().server();
    let ext = Curl {
        base: server.url.clone(),
        ca: server.ca_cert.clone(),
        cred: direct.cred.clone(),
    };
    drop(server);
    let v2 = ext.get("/openapi/v2", &[]).expect("curl").json();
    assert_eq!(
        v2,
        checked_in("openapi-v2.json"),
        "served v2 document drifted from openapi/openapi-v2.json"
    );
}

#[test]
fn metrics_count_requests_by_verb_resource_and_code() {
    let ns = env().namespace("api-metrics").expect("ns");
    let k = env().kubectl();
    create(&k, &coredump(&ns, "m", "web", "node-a"));
    let _ = k.run(&["get", "coredump", "missing", "-n", &ns]);
    let server = env().server();
    let c = Curl {
        base: server.url.clone(),
        ca: server.ca_cert.clone(),
        cred: admin_curl().cred,
    };
    drop(server);
    let text = c.get("/metrics", &[]).expect("curl").text();
    let has = |needle: &str| text.lines().any(|l| l.contains(needle));
    assert!(
        has(
            r#"coredump_apiserver_requests_total{code="201",resource="coredumps",subresource="",verb="create"}"#
        ),
        "{text}"
    );
    assert!(
        has(
            r#"coredump_apiserver_requests_total{code="404",resource="coredumps",subresource="",verb="get"}"#
        ),
        "{text}"
    );
    assert!(
        has(
            r#"coredump_apiserver_request_duration_seconds_bucket{resource="coredumps",subresource="",verb="create""#
        ),
        "{text}"
    );
    assert!(
        has(r#"coredump_apiserver_objects{resource="coredumps"}"#),
        "{text}"
    );
    // Unauthenticated callers get no metrics.
    let anon = Curl {
        cred: coredump_integration::curl::Credential::None,
        ..c
    };
    assert_eq!(anon.get("/metrics", &[]).expect("curl").status, 401);
}
