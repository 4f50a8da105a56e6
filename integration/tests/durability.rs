//! The store under abrupt stops: SIGKILL during concurrent writes, 20 times, loses nothing
//! acknowledged; and revisions older than the kept log answer 410 in the watch stream.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use coredump_integration::curl::{Credential, Curl};
use coredump_integration::env::TestEnv;
use coredump_integration::{controlplane, extension};
use serde_json::{json, Value};

const API: &str = "/apis/coredump.io/v1alpha1";
/// Small, so that a few writes push old revisions out of the log.
const LOG_SIZE: usize = 40;

/// The kill test takes the server down; the other test must not run meanwhile.
static SERIAL: Mutex<()> = Mutex::new(());

fn env() -> &'static TestEnv {
    static ENV: std::sync::OnceLock<TestEnv> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        TestEnv::start_shared(
            controlplane::Options::default(),
            extension::Options {
                args: vec![format!("--revision-log-size={LOG_SIZE}")],
                ..Default::default()
            },
        )
    })
}

fn quota(ns: &str, name: &str, n: usize) -> Value {
    json!({
        "apiVersion": "coredump.io/v1alpha1", "kind": "CoredumpQuota",
        "metadata": {"name": name, "namespace": ns, "labels": {"n": n.to_string()}},
        "spec": {"hard": {"storage": format!("{}Mi", n + 1), "count": n.to_string()}}
    })
}

/// The extension server directly, as the cluster admin (client certificate).
fn direct() -> Curl {
    let ep = &env().cp.endpoints;
    let server = env().server();
    Curl {
        base: server.url.clone(),
        ca: server.ca_cert.clone(),
        cred: Credential::Cert {
            cert: ep.dir.join("pki/admin.crt"),
            key: ep.dir.join("pki/admin.key"),
        },
    }
}

#[test]
fn sigkill_under_concurrent_writes_loses_nothing_acknowledged() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = env().namespace("kill").expect("ns");
    let acked: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
    for round in 0..20 {
        let c = direct();
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let c = c.clone();
                let ns = ns.clone();
                let acked = Arc::clone(&acked);
                std::thread::spawn(move || {
                    for i in 0.. {
                        let n = round * 1000 + w * 100 + i;
                        let name = format!("q-{n}");
                        let body = serde_json::to_vec(&quota(&ns, &name, n)).expect("json");
                        match c.request(
                            "POST",
                            &format!("{API}/namespaces/{ns}/coredumpquotas"),
                            &[("Content-Type", "application/json")],
                            Some(&body),
                        ) {
                            Ok(r) if r.status == 201 => acked.lock().expect("lock").push((name, n)),
                            // The server died under us: stop this writer.
                            _ => break,
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(150 + (round as u64 % 5) * 70));
        env().server().kill();
        for w in writers {
            let _ = w.join();
        }
        env().server().restart().expect("restart after SIGKILL");
    }
    let acked = acked.lock().expect("lock").clone();
    let log = env().server().log_path();
    let ready = direct().get("/readyz", &[]);
    assert!(
        ready.as_ref().is_ok_and(|r| r.status == 200),
        "server not ready after the last restart: {ready:?}\n{}",
        coredump_integration::process::log_tail(&log, 40)
    );
    eprintln!("{} writes acknowledged across 20 SIGKILLs", acked.len());
    assert!(
        acked.len() >= 20,
        "too few writes acknowledged to prove anything: {}",
        acked.len()
    );
    let list = direct()
        .get(&format!("{API}/namespaces/{ns}/coredumpquotas"), &[])
        .expect("list")
        .json();
    let items = list["items"].as_array().expect("items");
    for (name, n) in &acked {
        let item = items
            .iter()
            .find(|i| i["metadata"]["name"] == name.as_str())
            .unwrap_or_else(|| panic!("acknowledged {name} lost after SIGKILL"));
        assert_eq!(
            item["spec"]["hard"]["count"],
            n.to_string(),
            "{name} corrupted"
        );
        assert_eq!(item["metadata"]["labels"]["n"], n.to_string());
    }
    // Revisions stay monotonic across restarts.
    let mut rvs: Vec<u64> = items
        .iter()
        .filter_map(|i| i["metadata"]["resourceVersion"].as_str()?.parse().ok())
        .collect();
    let count = rvs.len();
    rvs.sort_unstable();
    rvs.dedup();
    assert_eq!(rvs.len(), count, "duplicate resourceVersions");
}

#[test]
fn too_old_revisions_answer_410_inside_the_watch_stream_and_for_continue() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = env().namespace("expired").expect("ns");
    let k = env().kubectl();
    let c = direct();
    let create = |i: usize| {
        let body = serde_json::to_vec(&quota(&ns, &format!("e-{i}"), i)).expect("json");
        let r = c
            .request(
                "POST",
                &format!("{API}/namespaces/{ns}/coredumpquotas"),
                &[("Content-Type", "application/json")],
                Some(&body),
            )
            .expect("create");
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()
    };
    let first = create(0);
    let old_rv = first["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    create(1);
    let page = k
        .ok(&[
            "get",
            "--raw",
            &format!("{API}/namespaces/{ns}/coredumpquotas?limit=1"),
        ])
        .expect("page");
    let token = serde_json::from_str::<Value>(&page).expect("json")["metadata"]["continue"]
        .as_str()
        .expect("continue")
        .to_string();
    for i in 2..LOG_SIZE * 2 {
        create(i);
    }
    // Watch through the aggregator: HTTP 200 with an ERROR event carrying 410 Expired.
    let out = k
        .ok(&["get", "--raw", &format!("{API}/namespaces/{ns}/coredumpquotas?watch=true&resourceVersion={old_rv}&timeoutSeconds=5")])
        .expect("watch from an old revision is a 200 stream");
    let ev: Value = serde_json::from_str(out.lines().next().unwrap_or_default()).expect("event");
    assert_eq!(ev["type"], "ERROR", "{out}");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");
    // A continue token from then: 410 Expired.
    let r = c
        .get(
            &format!("{API}/namespaces/{ns}/coredumpquotas?limit=1&continue={token}"),
            &[],
        )
        .expect("continue");
    assert_eq!(r.status, 410, "{}", r.text());
    assert_eq!(r.json()["reason"], "Expired");
    // A watch from now still works.
    let now = c
        .get(&format!("{API}/namespaces/{ns}/coredumpquotas"), &[])
        .expect("list")
        .json();
    let rv = now["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    let out = k
        .ok(&["get", "--raw", &format!("{API}/namespaces/{ns}/coredumpquotas?watch=true&resourceVersion={rv}&timeoutSeconds=1")])
        .expect("watch");
    assert!(!out.contains("ERROR"), "{out}");
}
