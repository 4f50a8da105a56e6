//! The add-on on a real node (integration/src/realnode.rs): kubelet, containerd, runc, a
//! bridge CNI network, kube-proxy and CoreDNS on this machine, the add-on installed from
//! `deploy/overlays/local` as deploy/README.md tells an admin, and real containers that
//! crash.
//!
//! One node per test binary, shared by the tests (each in its own namespace), torn down at
//! exit. The node's DaemonSet agent owns core_pattern while it runs, holding the node
//! handler's core_pattern lock; other tests that install a handler wait for that lock.
//! Tests that disturb the add-on for everyone (killing the server) take the write side of
//! [`DISRUPT`]; the others its read side.
//!
//! Root only, with runc, nft and the CNI plugins installed; each test prints why it skips
//! otherwise.

// A test binary: its helpers are test code as much as its #[test] functions, and a panic
// is the failure report (clippy.toml's allow-*-in-tests covers only the #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use coredump_integration::kubectl::Kubectl;
use coredump_integration::process::wait_for;
use coredump_integration::realnode::{
    self, RealNode, CRASHER_GO_IMAGE, CRASHER_IMAGE, CRASHER_MT_IMAGE, NODE_NAME,
};
use coredump_node_handler::install::PatternLock;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Generous: two cores shared with builds; a crash loop's back-off alone is 10 s + 20 s.
const WAIT: Duration = Duration::from_secs(240);
const API: &str = "/apis/coredump.io/v1alpha1";

struct Shared {
    kubectl: Kubectl,
    /// The workloads' binaries with symbols (for gdb).
    bins: PathBuf,
    pv_dir: PathBuf,
}

static NODE: Mutex<Option<RealNode>> = Mutex::new(None);
static DISRUPT: RwLock<()> = RwLock::new(());

fn shared() -> Option<&'static Shared> {
    static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();
    let s = SHARED.get_or_init(|| {
        if let Some(why) = realnode::unavailable() {
            return Err(why);
        }
        let images = tempfile::Builder::new()
            .prefix("cdrn-images")
            .tempdir()
            .expect("tempdir")
            .keep();
        let archives = realnode::build_images(&images).expect("build the images");
        extern "C" fn teardown() {
            if let Ok(mut n) = NODE.lock() {
                if let Some(mut node) = n.take() {
                    node.teardown();
                }
            }
        }
        // SAFETY: atexit only stores the pointer; `teardown` is a static `extern "C"
        // fn()`, valid for the whole program, and a panic in it aborts instead of unwinding.
        #[allow(unsafe_code)]
        unsafe {
            libc::atexit(teardown);
        }
        let node = RealNode::start(realnode::Options {
            images: archives,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("the real node failed to start: {e}"));
        node.install_addon()
            .unwrap_or_else(|e| panic!("installing the add-on failed: {e}"));
        let shared = Shared {
            kubectl: node.kubectl(),
            bins: images.join("bin"),
            pv_dir: node.dir.join("pv"),
        };
        *NODE.lock().unwrap_or_else(|e| e.into_inner()) = Some(node);
        Ok(shared)
    });
    match s {
        Ok(s) => Some(s),
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

fn read() -> RwLockReadGuard<'static, ()> {
    DISRUPT.read().unwrap_or_else(|e| e.into_inner())
}

fn write() -> RwLockWriteGuard<'static, ()> {
    DISRUPT.write().unwrap_or_else(|e| e.into_inner())
}

fn namespace(s: &Shared, prefix: &str, labels: Value) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "{prefix}-{}",
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    s.kubectl
        .apply(&json!({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": name, "labels": labels}}))
        .expect("create namespace");
    name
}

fn container(name: &str, image: &str, args: &[&str]) -> Value {
    json!({"name": name, "image": image, "imagePullPolicy": "Never", "args": args})
}

fn pod(s: &Shared, ns: &str, name: &str, spec: Value, labels: Value) {
    let mut spec = spec;
    spec["terminationGracePeriodSeconds"] = json!(1);
    spec["automountServiceAccountToken"] = json!(false);
    s.kubectl
        .apply(&json!({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": name, "namespace": ns, "labels": labels},
                       "spec": spec}))
        .expect("create pod");
}

fn list(s: &Shared, args: &[&str]) -> Vec<Value> {
    try_list(s, args).expect("kubectl list")
}

/// For waits: kubectl errors (e.g. 503 while the server pod is replaced) are retried.
fn try_list(s: &Shared, args: &[&str]) -> Result<Vec<Value>, coredump_integration::Error> {
    let out = s.kubectl.ok(args)?;
    let v: Value = serde_json::from_str(&out)
        .map_err(|e| coredump_integration::Error::Setup(format!("json: {e}")))?;
    Ok(v["items"].as_array().cloned().unwrap_or_default())
}

/// Waits until `ns` holds at least `n` Stored coredumps; fails on Rejected or Failed.
fn stored(s: &Shared, ns: &str, n: usize) -> Vec<Value> {
    wait_for(&format!("{n} Stored coredumps in {ns}"), WAIT, || {
        let items = try_list(s, &["get", "coredumps", "-n", ns, "-o", "json"])?;
        for cd in &items {
            if let Some(p @ ("Rejected" | "Failed")) = cd["status"]["phase"].as_str() {
                panic!("coredump ended {p}: {cd}");
            }
        }
        let done: Vec<Value> = items
            .into_iter()
            .filter(|cd| cd["status"]["phase"] == "Stored")
            .collect();
        Ok((done.len() >= n).then_some(done))
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn download(s: &Shared, ns: &str, name: &str) -> Vec<u8> {
    let out = s
        .kubectl
        .run(&[
            "get",
            "--raw",
            &format!("{API}/namespaces/{ns}/coredumps/{name}/download"),
        ])
        .expect("kubectl");
    assert!(
        out.status.success(),
        "download: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The download equals the core (its spec's sha256), and gdb with `binary` shows `function`.
fn check_core(s: &Shared, ns: &str, cd: &Value, binary: &str, function: &str) {
    let name = cd["metadata"]["name"].as_str().expect("name");
    let core = download(s, ns, name);
    assert_eq!(
        hex::encode(Sha256::digest(&core)),
        cd["spec"]["sha256"].as_str().expect("sha256"),
        "download of {ns}/{name}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let core_path = dir.path().join("core");
    std::fs::write(&core_path, &core).expect("write core");
    let out = Command::new("gdb")
        .args(["-batch", "-nx", "-ex", "thread apply all bt"])
        .arg(s.bins.join(binary))
        .arg(&core_path)
        .output()
        .expect("run gdb");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(function),
        "gdb on {ns}/{name} does not name {function}:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn container_ids(s: &Shared, ns: &str, pod: &str) -> Vec<String> {
    let out = s
        .kubectl
        .ok(&["get", "pod", pod, "-n", ns, "-o", "json"])
        .expect("get pod");
    let v: Value = serde_json::from_str(&out).expect("json");
    let mut ids = Vec::new();
    for list in ["initContainerStatuses", "containerStatuses"] {
        for c in v["status"][list].as_array().into_iter().flatten() {
            for id in [
                &c["containerID"],
                &c["lastState"]["terminated"]["containerID"],
            ] {
                if let Some(id) = id.as_str() {
                    ids.push(id.trim_start_matches("containerd://").to_string());
                }
            }
        }
    }
    ids
}

fn event_for(s: &Shared, ns: &str, pod: &str, coredump: &str) {
    wait_for("the CoreDumped Event", WAIT, || {
        let items = try_list(
            s,
            &[
                "get",
                "events",
                "-n",
                ns,
                "--field-selector",
                "reason=CoreDumped",
                "-o",
                "json",
            ],
        )?;
        Ok(items
            .iter()
            .any(|e| {
                e["involvedObject"]["name"] == pod
                    && e["involvedObject"]["kind"] == "Pod"
                    && e["message"].as_str().is_some_and(|m| m.contains(coredump))
            })
            .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn segfaulting_container_is_stored_with_its_pod_and_downloads_as_the_core() {
    let Some(s) = shared() else { return };
    let _g = read();
    let ns = namespace(s, "segv", json!({}));
    pod(
        s,
        &ns,
        "crasher",
        json!({"restartPolicy": "Never",
               "containers": [container("app", CRASHER_IMAGE, &["segv"])]}),
        json!({}),
    );
    let cds = stored(s, &ns, 1);
    let cd = &cds[0];
    let spec = &cd["spec"];
    let uid = s
        .kubectl
        .ok(&[
            "get",
            "pod",
            "crasher",
            "-n",
            &ns,
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .expect("uid");
    assert_eq!(spec["podName"], "crasher", "{cd}");
    assert_eq!(spec["podUID"].as_str(), Some(uid.trim()), "{cd}");
    assert_eq!(spec["containerName"], "app", "{cd}");
    assert_eq!(spec["nodeName"], NODE_NAME, "{cd}");
    assert_eq!(spec["signal"], 11, "{cd}");
    assert!(
        spec["image"]
            .as_str()
            .is_some_and(|i| i.contains("coredump-detector/test-crasher:local")),
        "{cd}"
    );
    assert!(
        spec["executable"]
            .as_str()
            .is_some_and(|e| e.ends_with("crasher")),
        "{cd}"
    );
    let ids = container_ids(s, &ns, "crasher");
    assert!(
        spec["containerID"]
            .as_str()
            .is_some_and(|id| ids.iter().any(|i| id.ends_with(i.as_str()))),
        "{cd} vs {ids:?}"
    );
    let name = cd["metadata"]["name"].as_str().expect("name");
    event_for(s, &ns, "crasher", name);
    check_core(s, &ns, cd, "crasher", "crash_here_in_known_function");
}

#[test]
fn pods_get_addresses_on_the_pod_network() {
    let Some(s) = shared() else { return };
    let _g = read();
    // The agent reached the server through its Service name (CoreDNS, kube-proxy) and
    // kube-apiserver through the kubernetes Service: the install waited for both.
    let pods = list(s, &["get", "pods", "-n", "coredump-system", "-o", "json"]);
    assert!(!pods.is_empty());
    for p in pods {
        let ip = p["status"]["podIP"].as_str().unwrap_or_default();
        assert!(
            ip.starts_with("10.244.0."),
            "{}: {ip}",
            p["metadata"]["name"]
        );
    }
}

#[test]
fn crash_loop_restarts_are_each_attributed_to_their_container() {
    let Some(s) = shared() else { return };
    let _g = read();
    let ns = namespace(s, "loop", json!({}));
    pod(
        s,
        &ns,
        "looper",
        json!({"restartPolicy": "Always",
               "containers": [container("app", CRASHER_IMAGE, &["segv"])]}),
        json!({}),
    );
    let cds = stored(s, &ns, 3);
    let mut ids: Vec<&str> = cds
        .iter()
        .map(|cd| {
            assert_eq!(cd["spec"]["podName"], "looper", "{cd}");
            assert_eq!(cd["spec"]["containerName"], "app", "{cd}");
            cd["spec"]["containerID"].as_str().expect("containerID")
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        cds.len(),
        "one container ID per restart: {ids:?}"
    );
    let _ = s.kubectl.run(&["delete", "namespace", &ns, "--wait=false"]);
}

/// The node agent's pods (one, or two during a rolling update's hand-over).
fn agent_pod_names(s: &Shared) -> Result<Vec<String>, coredump_integration::Error> {
    let names = s.kubectl.ok(&[
        "-n",
        "coredump-system",
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/component=node-agent",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])?;
    Ok(names.split_whitespace().map(str::to_string).collect())
}

/// The agent's DaemonSet with an environment variable set (`NAME=VALUE`) or removed
/// (`NAME-`): a rolling update, waited for until the new agent holds the pattern.
fn set_agent_env(s: &Shared, change: &str) -> Result<(), coredump_integration::Error> {
    s.kubectl.ok(&[
        "-n",
        "coredump-system",
        "set",
        "env",
        "daemonset/coredump-node-agent",
        change,
    ])?;
    realnode::wait_installed(&s.kubectl, WAIT)?;
    // The old agent may still be stopping (maxSurge): until it is gone, "the agent's
    // metrics" would be ambiguous.
    wait_for("one agent pod", WAIT, || {
        Ok((agent_pod_names(s)?.len() == 1).then_some(()))
    })
}

/// Puts the agent's default rate limit back, also when the test fails.
struct AgentEnvReset<'a>(&'a Shared);

impl Drop for AgentEnvReset<'_> {
    fn drop(&mut self) {
        if let Err(e) = set_agent_env(self.0, "COREDUMP_RATE_LIMIT_COUNT-") {
            eprintln!("resetting the agent's rate limit: {e}");
        }
    }
}

/// The agent's `coredump_agent_dropped_total{reason}` from its /metrics on the pod
/// network.
fn agent_dropped(s: &Shared, reason: &str) -> u64 {
    let ip = s
        .kubectl
        .ok(&[
            "-n",
            "coredump-system",
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/component=node-agent",
            "-o",
            "jsonpath={.items[0].status.podIP}",
        ])
        .expect("the agent's pod IP");
    let (code, body) =
        coredump_integration::agent::http_get(&format!("{}:9808", ip.trim()), "/metrics")
            .expect("the agent's metrics");
    assert_eq!(code, 200, "{body}");
    let prefix = format!("coredump_agent_dropped_total{{reason=\"{reason}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().expect("a counter"))
        .unwrap_or(0)
}

/// The per-pod rate limit counts a crash-looping container's real restarts (same pod
/// UID, a new container ID each time): with 2 cores per pod per window, the first two
/// crashes are stored and the third, after the kubelet's back-off, is dropped as
/// `RateLimited`. The limit is set as an admin would, on the DaemonSet's environment
/// (a rolling update, which also exercises the agent hand-over).
#[test]
fn the_rate_limit_holds_over_a_crash_loop_restarts() {
    let Some(s) = shared() else { return };
    let _g = write();
    realnode::wait_installed(&s.kubectl, WAIT).expect("the add-on is installed");
    let _reset = AgentEnvReset(s);
    set_agent_env(s, "COREDUMP_RATE_LIMIT_COUNT=2").expect("rate limit set");
    let limited_before = agent_dropped(s, "RateLimited");
    let ns = namespace(s, "ratelimit", json!({}));
    pod(
        s,
        &ns,
        "looper",
        json!({"restartPolicy": "Always",
               "containers": [container("app", CRASHER_IMAGE, &["segv"])]}),
        json!({}),
    );
    wait_for("a third crash of the container", WAIT, || {
        let p = s.kubectl.ok(&[
            "-n",
            &ns,
            "get",
            "pod",
            "looper",
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ])?;
        Ok((p.trim().parse::<u32>().unwrap_or(0) >= 3).then_some(()))
    })
    .expect("the container restarted three times");
    wait_for("the third core to be dropped", WAIT, || {
        Ok((agent_dropped(s, "RateLimited") > limited_before).then_some(()))
    })
    .expect("a RateLimited drop");
    let cds = stored(s, &ns, 2);
    // Nothing more arrives for the pod (the drop is final).
    std::thread::sleep(Duration::from_secs(3));
    let all = list(
        s,
        &["get", "coredumps.coredump.io", "-n", &ns, "-o", "json"],
    );
    assert_eq!(all.len(), 2, "{all:?}");
    let ids: Vec<&str> = cds
        .iter()
        .map(|cd| cd["spec"]["containerID"].as_str().expect("containerID"))
        .collect();
    assert_ne!(ids[0], ids[1], "two restarts, two container IDs");
    let _ = s.kubectl.run(&["delete", "namespace", &ns, "--wait=false"]);
}

#[test]
fn init_container_crash_is_attributed_to_the_init_container() {
    let Some(s) = shared() else { return };
    let _g = read();
    let ns = namespace(s, "init", json!({}));
    pod(
        s,
        &ns,
        "withinit",
        json!({"restartPolicy": "Never",
               "initContainers": [container("setup", CRASHER_IMAGE, &["segv"])],
               "containers": [container("app", CRASHER_IMAGE, &["sleep"])]}),
        json!({}),
    );
    let cds = stored(s, &ns, 1);
    assert_eq!(cds[0]["spec"]["containerName"], "setup", "{}", cds[0]);
    assert_eq!(cds[0]["spec"]["signal"], 11, "{}", cds[0]);
}

#[test]
fn crash_of_a_kubectl_exec_process_is_attributed_to_its_container() {
    let Some(s) = shared() else { return };
    let _g = read();
    let ns = namespace(s, "exec", json!({}));
    pod(
        s,
        &ns,
        "sleeper",
        json!({"containers": [container("main", CRASHER_IMAGE, &["sleep"])]}),
        json!({}),
    );
    s.kubectl
        .ok(&[
            "wait",
            "--for=condition=Ready",
            "pod/sleeper",
            "-n",
            &ns,
            "--timeout=240s",
        ])
        .expect("pod ready");
    let out = s
        .kubectl
        .run(&[
            "exec", "sleeper", "-n", &ns, "-c", "main", "--", "/crasher", "segv",
        ])
        .expect("kubectl exec");
    assert!(!out.status.success(), "the exec'd crasher exited 0");
    let cds = stored(s, &ns, 1);
    assert_eq!(cds[0]["spec"]["podName"], "sleeper", "{}", cds[0]);
    assert_eq!(cds[0]["spec"]["containerName"], "main", "{}", cds[0]);
    check_core(s, &ns, &cds[0], "crasher", "crash_here_in_known_function");
}

#[test]
fn second_container_of_a_pod_is_named() {
    let Some(s) = shared() else { return };
    let _g = read();
    let ns = namespace(s, "multi", json!({}));
    pod(
        s,
        &ns,
        "two",
        json!({"restartPolicy": "Never",
               "containers": [container("first", CRASHER_IMAGE, &["sleep"]),
                              container("second", CRASHER_MT_IMAGE, &[])]}),
        json!({}),
    );
    let cds = stored(s, &ns, 1);
    assert_eq!(cds[0]["spec"]["containerName"], "second", "{}", cds[0]);
    check_core(s, &ns, &cds[0], "crasher-mt", "crash_in_worker_thread");
}

#[test]
fn burstable_and_guaranteed_pods_are_attributed() {
    let Some(s) = shared() else { return };
    let _g = read();
    let ns = namespace(s, "qos", json!({}));
    let mut burst = container("app", CRASHER_IMAGE, &["segv"]);
    burst["resources"] = json!({"requests": {"cpu": "10m", "memory": "16Mi"}});
    let mut guar = container("app", CRASHER_GO_IMAGE, &[]);
    guar["resources"] = json!({"requests": {"cpu": "50m", "memory": "64Mi"},
                               "limits": {"cpu": "50m", "memory": "64Mi"}});
    pod(
        s,
        &ns,
        "burstable",
        json!({"restartPolicy": "Never", "containers": [burst]}),
        json!({}),
    );
    pod(
        s,
        &ns,
        "guaranteed",
        // The Go runtime ends itself with SIGABRT, which a PID namespace's init ignores:
        // with the pause process as PID 1 the crasher is not init.
        json!({"restartPolicy": "Never", "shareProcessNamespace": true, "containers": [guar]}),
        json!({}),
    );
    let cds = stored(s, &ns, 2);
    let mut pods: Vec<&str> = cds
        .iter()
        .map(|cd| cd["spec"]["podName"].as_str().expect("podName"))
        .collect();
    pods.sort();
    assert_eq!(pods, ["burstable", "guaranteed"]);
    for cd in &cds {
        let qos = s
            .kubectl
            .ok(&[
                "get",
                "pod",
                cd["spec"]["podName"].as_str().expect("pod"),
                "-n",
                &ns,
                "-o",
                "jsonpath={.status.qosClass}",
            ])
            .expect("qos");
        if cd["spec"]["podName"] == "guaranteed" {
            assert_eq!(qos, "Guaranteed");
            // The Go runtime aborts (GOTRACEBACK=crash).
            assert_eq!(cd["spec"]["signal"], 6, "{cd}");
            check_core(s, &ns, cd, "crasher-go", "main.crashHereInGo");
        } else {
            assert_eq!(qos, "Burstable");
        }
    }
}

#[test]
fn opted_out_pods_and_namespaces_are_not_captured() {
    let Some(s) = shared() else { return };
    let _g = read();
    let disabled = json!({"coredump.io/capture": "disabled"});
    let ns_out = namespace(s, "optout-ns", disabled.clone());
    let ns = namespace(s, "optout-pod", json!({}));
    let spec = json!({"restartPolicy": "Never",
                      "containers": [container("app", CRASHER_IMAGE, &["segv"])]});
    pod(s, &ns_out, "quiet", spec.clone(), json!({}));
    pod(s, &ns, "quiet", spec.clone(), disabled);
    for (n, p) in [(&ns_out, "quiet"), (&ns, "quiet")] {
        wait_for("the opted-out crasher to end", WAIT, || {
            let phase =
                s.kubectl
                    .ok(&["get", "pod", p, "-n", n, "-o", "jsonpath={.status.phase}"])?;
            Ok((phase == "Failed").then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e}"));
    }
    // A crash after them that is captured: by the time it is Stored, theirs would be.
    pod(s, &ns, "loud", spec, json!({}));
    let cds = stored(s, &ns, 1);
    assert_eq!(cds.len(), 1);
    assert_eq!(cds[0]["spec"]["podName"], "loud");
    assert!(list(s, &["get", "coredumps", "-n", &ns_out, "-o", "json"]).is_empty());
}

#[test]
fn deleting_a_namespace_removes_its_pods_cores_and_files() {
    let Some(s) = shared() else { return };
    let _g = read();
    let ns = namespace(s, "gone", json!({}));
    pod(
        s,
        &ns,
        "crasher",
        json!({"restartPolicy": "Never",
               "containers": [container("app", CRASHER_IMAGE, &["segv"])]}),
        json!({}),
    );
    pod(
        s,
        &ns,
        "runner",
        json!({"containers": [container("app", CRASHER_IMAGE, &["sleep"])]}),
        json!({}),
    );
    stored(s, &ns, 1);
    let files = s.pv_dir.join("cores").join(&ns);
    assert!(files.exists(), "{} missing", files.display());
    s.kubectl
        .ok(&["delete", "namespace", &ns, "--timeout=240s"])
        .expect("delete namespace");
    assert!(list(s, &["get", "coredumps", "-A", "-o", "json"])
        .iter()
        .all(|cd| cd["metadata"]["namespace"] != ns.as_str()));
    wait_for("the core files to go", WAIT, || {
        Ok((!files.exists()
            || std::fs::read_dir(&files)
                .map(|d| d.count() == 0)
                .unwrap_or(true))
        .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn core_waits_in_the_spool_while_the_server_pod_is_replaced() {
    let Some(s) = shared() else { return };
    let _g = write();
    let ns = namespace(s, "spool", json!({}));
    s.kubectl
        .ok(&[
            "delete",
            "pod",
            "coredump-apiserver-0",
            "-n",
            "coredump-system",
            "--force",
            "--grace-period=0",
        ])
        .expect("force-delete the server pod");
    pod(
        s,
        &ns,
        "crasher",
        json!({"restartPolicy": "Never",
               "containers": [container("app", CRASHER_IMAGE, &["segv"])]}),
        json!({}),
    );
    let cds = stored(s, &ns, 1);
    assert_eq!(cds[0]["spec"]["podName"], "crasher");
    realnode::wait_installed(&s.kubectl, WAIT).expect("the add-on is back");
}

const CORE_PATTERN: &str = "/proc/sys/kernel/core_pattern";
const CORE_PIPE_LIMIT: &str = "/proc/sys/kernel/core_pipe_limit";
/// The agent's spool on the host (deploy/base/node-agent.yaml).
const HOST_SPOOL: &str = "/var/lib/coredump-detector/spool";

fn sysctl(path: &str) -> String {
    std::fs::read_to_string(path)
        .expect("read sysctl")
        .trim_end_matches('\n')
        .to_string()
}

/// Writes core_pattern and core_pipe_limit under the node handler's core_pattern lock
/// (free only while no agent runs).
fn set_pattern(pattern: &str, pipe_limit: &str) {
    try_set_pattern(pattern, pipe_limit).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sysctl(CORE_PATTERN), pattern);
    assert_eq!(sysctl(CORE_PIPE_LIMIT), pipe_limit);
}

fn try_set_pattern(pattern: &str, pipe_limit: &str) -> Result<(), String> {
    let _lock = PatternLock::acquire().map_err(|e| format!("pattern lock: {e}"))?;
    std::fs::write(CORE_PIPE_LIMIT, format!("{pipe_limit}\n"))
        .map_err(|e| format!("write core_pipe_limit: {e}"))?;
    std::fs::write(CORE_PATTERN, format!("{pattern}\n"))
        .map_err(|e| format!("write core_pattern: {e}"))
}

/// What the running agent saved as the node's previous core_pattern.
fn saved_previous() -> coredump_node_handler::install::InstallState {
    coredump_node_handler::install::InstallState::load(&coredump_node_handler::spool::Spool::new(
        HOST_SPOOL,
    ))
    .expect("read install.json")
    .expect("install.json present while the agent runs")
}

/// `kubectl delete -k` of the overlay, waiting until everything is gone (so the agent's
/// preStop hook and its own shutdown have run).
fn uninstall(s: &Shared) -> Result<(), coredump_integration::Error> {
    s.kubectl.ok(&[
        "delete",
        "-k",
        realnode::OVERLAY,
        "--ignore-not-found",
        "--timeout=240s",
    ])?;
    // The server's claim went with the namespace; the PV (which an admin creates
    // separately, deploy/overlays/local/local-pv.yaml) is Released: the admin recreates it.
    s.kubectl.ok(&[
        "delete",
        "pv",
        "coredump-apiserver-data",
        "--ignore-not-found",
        "--timeout=240s",
    ])?;
    Ok(())
}

fn reinstall() -> Result<(), coredump_integration::Error> {
    let node = NODE.lock().unwrap_or_else(|e| e.into_inner());
    match node.as_ref() {
        Some(n) => n.install_addon(),
        None => Err(coredump_integration::Error::Setup("no node".into())),
    }
}

/// Puts the machine's original core_pattern and core_pipe_limit back and the add-on
/// installed (for the other tests) if the test that changed them did not finish.
struct MachinePattern {
    pattern: String,
    pipe_limit: String,
    done: bool,
}

impl Drop for MachinePattern {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let Some(s) = shared() else { return };
        if let Err(e) = uninstall(s) {
            eprintln!("recovery: uninstalling: {e}");
        }
        let pattern = std::fs::read_to_string(CORE_PATTERN).unwrap_or_default();
        // Still ours: an agent did not let go; the node's teardown restores the original.
        if !pattern.starts_with(realnode::HANDLER_PATTERN_PREFIX) {
            if let Err(e) = try_set_pattern(&self.pattern, &self.pipe_limit) {
                eprintln!("recovery: {e}");
            }
        }
        if let Err(e) = reinstall() {
            eprintln!("recovery: reinstalling the add-on: {e}");
        }
    }
}

fn crash_pod_and_wait_stored(s: &Shared, prefix: &str) -> (String, Vec<Value>) {
    let ns = namespace(s, prefix, json!({}));
    pod(
        s,
        &ns,
        "crasher",
        json!({"restartPolicy": "Never",
               "containers": [container("app", CRASHER_IMAGE, &["segv"])]}),
        json!({}),
    );
    let cds = stored(s, &ns, 1);
    assert_eq!(cds[0]["spec"]["podName"], "crasher", "{}", cds[0]);
    (ns, cds)
}

/// A DaemonSet rolling update replaces the node's agent pod without a gap in capture:
/// with `maxSurge: 1` (deploy/base/node-agent.yaml) the new agent starts beside the old
/// one and stands by for the core_pattern lock (holding the successor lock), the old
/// one's preStop hook and exit see it waiting and leave the pattern installed
/// (install::restore, `HandedOver`), and the new agent takes the lock over. Asserted:
/// core_pattern, sampled every 2 ms from before the restart until the old pod is gone,
/// only ever holds our handler (one torn read of a rewrite aside); the new agent stood
/// by (its log), the previous pattern saved is unchanged, and a crash afterwards is
/// stored.
#[test]
fn rollout_restart_of_the_agent_keeps_the_pattern_installed() {
    let Some(s) = shared() else { return };
    let _g = write();
    realnode::wait_installed(&s.kubectl, WAIT).expect("the add-on is installed");
    let ours = sysctl(CORE_PATTERN);
    assert!(ours.starts_with(realnode::HANDLER_PATTERN_PREFIX), "{ours}");
    let previous = saved_previous();
    assert_eq!(previous.installed_pattern, ours);
    assert!(
        !previous
            .previous_pattern
            .starts_with(realnode::HANDLER_PATTERN_PREFIX),
        "{previous:?}"
    );
    let agent_pods = || agent_pod_names(s).expect("agent pods");
    let old = agent_pods();
    assert_eq!(old.len(), 1, "{old:?}");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Runs of equal samples: (value, count).
            let mut runs: Vec<(String, usize)> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let v = sysctl(CORE_PATTERN);
                match runs.last_mut() {
                    Some((last, n)) if *last == v => *n += 1,
                    _ => runs.push((v, 1)),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            runs
        })
    };
    let restarted = (|| {
        s.kubectl.ok(&[
            "-n",
            "coredump-system",
            "rollout",
            "restart",
            "daemonset/coredump-node-agent",
        ])?;
        realnode::wait_installed(&s.kubectl, WAIT)?;
        // Until the old agent has exited, its restore may still come.
        s.kubectl.ok(&[
            "-n",
            "coredump-system",
            "wait",
            "--for=delete",
            &format!("pod/{}", old[0]),
            "--timeout=120s",
        ])
    })();
    // A crash in between is still captured; give a late write time to show.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let runs = sampler.join().expect("sampler");
    restarted.expect("the restarted agent is installed and the old one gone");

    // A read racing the kernel's (unlocked) copy of a new value may see a mix of the two:
    // a single sample that is neither value is ignored.
    let seq: Vec<&(String, usize)> = runs.iter().filter(|(v, n)| *n > 1 || *v == ours).collect();
    let samples: usize = runs.iter().map(|(_, n)| n).sum();
    eprintln!("core_pattern during the restart ({samples} samples): {runs:?}");
    assert!(samples > 100, "sampled {samples} times");
    assert!(
        seq.iter().all(|(v, _)| *v == ours),
        "core_pattern during the restart was not always the handler: {runs:?}"
    );
    assert_eq!(sysctl(CORE_PATTERN), ours);
    let new = agent_pods();
    assert_eq!(new.len(), 1, "{new:?}");
    assert_ne!(new, old);
    let log = s
        .kubectl
        .ok(&["-n", "coredump-system", "logs", &format!("pod/{}", new[0])])
        .expect("the new agent's log");
    assert!(
        log.contains("standing by to take it over"),
        "the new agent did not start beside the old one: {log}"
    );
    let after = saved_previous();
    assert_eq!(after.previous_pattern, previous.previous_pattern);
    assert_eq!(after.previous_pipe_limit, previous.previous_pipe_limit);
    crash_pod_and_wait_stored(s, "restarted");
}

/// `kubectl delete -k` restores what the agent found exactly (core_pattern and
/// core_pipe_limit), and while the add-on is installed a crash outside any pod goes to
/// that previous pattern (a pipe to a script here) and makes no Coredump. The add-on is
/// uninstalled (back to the machine's values), installed over distinctive values,
/// uninstalled again (back to them), and finally installed over the machine's values
/// again for the other tests.
#[test]
fn uninstall_restores_the_previous_pattern_which_gets_host_crashes() {
    let Some(s) = shared() else { return };
    let _g = write();
    realnode::wait_installed(&s.kubectl, WAIT).expect("the add-on is installed");
    // What the agent found when it installed (this machine's values).
    let found = saved_previous();
    let mut guard = MachinePattern {
        pattern: found.previous_pattern.clone(),
        pipe_limit: found.previous_pipe_limit.to_string(),
        done: false,
    };

    // 1. Uninstall: the machine's values, exactly. Checked under the core_pattern lock:
    // another binary's test may own the pattern for a while once the agent has let go,
    // and puts it back before it releases the lock.
    uninstall(s).expect("kubectl delete -k");
    {
        let _lock = PatternLock::acquire().expect("pattern lock");
        assert_eq!(sysctl(CORE_PATTERN), guard.pattern);
        assert_eq!(sysctl(CORE_PIPE_LIMIT), guard.pipe_limit);
    }

    // 2. A previous handler of our own: a pipe to a script that records its arguments
    // and the core's size.
    let dir = tempfile::Builder::new()
        .prefix("cdrn-prev")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let marker = dir.path().join("marker");
    let script = dir.path().join("prev.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nn=$(wc -c)\necho \"$1 $2 $n\" > {m}.tmp && mv {m}.tmp {m}\n",
            m = marker.display()
        ),
    )
    .expect("write prev.sh");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod prev.sh");
    let prev_pattern = format!("|{} %P %s", script.display());
    let prev_limit = if guard.pipe_limit == "5" { "7" } else { "5" };
    set_pattern(&prev_pattern, prev_limit);

    // 3. Installed over it.
    reinstall().expect("install the add-on again");
    assert!(sysctl(CORE_PATTERN).starts_with(realnode::HANDLER_PATTERN_PREFIX));
    assert_eq!(saved_previous().previous_pattern, prev_pattern);
    let before: std::collections::BTreeSet<String> =
        list(s, &["get", "coredumps", "-A", "-o", "json"])
            .iter()
            .map(|cd| format!("{}/{}", cd["metadata"]["namespace"], cd["metadata"]["name"]))
            .collect();

    // 4. A host process (the test's own cgroup, no pod's) crashes.
    let mut crasher = Command::new(s.bins.join("crasher"));
    crasher.arg("segv");
    // SAFETY: pre_exec's closure runs in the forked child: it only calls setrlimit(2)
    // (async-signal-safe) with a local struct and reads errno, allocating nothing.
    #[allow(unsafe_code)]
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut crasher, || {
            let unlimited = libc::rlimit {
                rlim_cur: libc::RLIM_INFINITY,
                rlim_max: libc::RLIM_INFINITY,
            };
            if libc::setrlimit(libc::RLIMIT_CORE, &unlimited) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = crasher.spawn().expect("start the host crasher");
    let pid = child.id();
    let status = child
        .wait_with_output()
        .expect("wait for the crasher")
        .status;
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(11),
        "{status:?}"
    );
    assert!(
        std::os::unix::process::ExitStatusExt::core_dumped(&status),
        "{status:?}"
    );
    let got = wait_for("the previous handler to get the core", WAIT, || {
        Ok(std::fs::read_to_string(&marker).ok())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let fields: Vec<&str> = got.split_whitespace().collect();
    assert_eq!(fields.len(), 3, "{got}");
    assert_eq!(fields[0], pid.to_string(), "{got}");
    assert_eq!(fields[1], "11", "{got}");
    assert!(
        fields[2].parse::<u64>().is_ok_and(|n| n > 4096),
        "core size: {got}"
    );
    // A pod's crash after it is stored: the host crash would have been by then.
    let (ns, _) = crash_pod_and_wait_stored(s, "afterhost");
    let new: Vec<String> = list(s, &["get", "coredumps", "-A", "-o", "json"])
        .iter()
        .map(|cd| format!("{}/{}", cd["metadata"]["namespace"], cd["metadata"]["name"]))
        .filter(|n| !before.contains(n))
        .collect();
    assert_eq!(new.len(), 1, "only the pod's crash is a Coredump: {new:?}");
    assert!(new[0].starts_with(&format!("\"{ns}\"/")), "{new:?}");

    // 5. Uninstall: exactly the values it was installed over.
    uninstall(s).expect("kubectl delete -k");
    {
        let _lock = PatternLock::acquire().expect("pattern lock");
        assert_eq!(sysctl(CORE_PATTERN), prev_pattern);
        assert_eq!(sysctl(CORE_PIPE_LIMIT), prev_limit);
    }

    // 6. The machine's values back, and the add-on over them for the other tests.
    set_pattern(&guard.pattern, &guard.pipe_limit);
    reinstall().expect("install the add-on again");
    assert_eq!(saved_previous().previous_pattern, guard.pattern);
    guard.done = true;
}
