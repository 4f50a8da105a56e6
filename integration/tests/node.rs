//! The node agent end to end, with the real kernel and the real control plane: a crash in
//! a (kubelet-less) pod's cgroup goes through core_pattern into the spool, the agent
//! attributes it from its pod watch, creates the Coredump on the extension server, uploads
//! the core and records a CoreDumped Event.
//!
//! Root only (core_pattern, cgroups); each test prints why it skips otherwise. The agent
//! installs the freshly built handler and holds the node-handler's core_pattern lock while
//! it runs, restoring the previous pattern when stopped; the tests here run one at a time
//! (they share the kernel setting, and one of them stops the shared server).
//!
//! Capture-side behaviour (host processes going to the previous handler, flat memory for
//! big cores, truncation, RLIMIT_CORE) is covered by node-handler/tests/real_crash.rs.

// A test binary: its helpers are test code as much as its #[test] functions, and a panic
// is the failure report (clippy.toml's allow-*-in-tests covers only the #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use coredump_integration::agent::{
    build_crasher, cgroup2_root, crash, create_node, random_container_id, Agent, AgentOptions,
    FakePod, PodCgroup,
};
use coredump_integration::curl::{Credential, Curl};
use coredump_integration::env::TestEnv;
use coredump_integration::fixtures::{CoredumpFixture, QuotaFixture};
use coredump_integration::kubectl::Kubectl;
use coredump_integration::process::wait_every;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const API: &str = "/apis/coredump.io/v1alpha1";
const CORE_PATTERN: &str = "/proc/sys/kernel/core_pattern";
/// Generous: 2 shared cores, debug builds, other builds running.
const WAIT: Duration = Duration::from_secs(180);

fn env() -> &'static TestEnv {
    TestEnv::shared()
}

/// One test at a time: they all change core_pattern, and one stops the shared server.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn can_run(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping {test}: needs root for core_pattern and cgroups");
        return false;
    }
    if std::fs::OpenOptions::new()
        .write(true)
        .open(CORE_PATTERN)
        .is_err()
    {
        eprintln!("skipping {test}: {CORE_PATTERN} is not writable here");
        return false;
    }
    if cgroup2_root().is_none() {
        eprintln!("skipping {test}: no cgroup v2 hierarchy");
        return false;
    }
    for tool in ["gcc", "gdb"] {
        if Command::new(tool).arg("--version").output().is_err() {
            eprintln!("skipping {test}: {tool} is not installed");
            return false;
        }
    }
    true
}

fn crasher() -> &'static Path {
    static CRASHER: OnceLock<PathBuf> = OnceLock::new();
    CRASHER.get_or_init(|| {
        build_crasher(Path::new(env!("CARGO_TARGET_TMPDIR"))).expect("building the crasher")
    })
}

fn core_pattern() -> String {
    std::fs::read_to_string(CORE_PATTERN)
        .expect("read core_pattern")
        .trim_end()
        .to_string()
}

/// The extension server directly, as the cluster admin.
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

/// The namespace's Coredumps, straight from the server (None while it is down).
fn coredumps(ns: &str) -> Option<Vec<Value>> {
    let r = direct()
        .get(&format!("{API}/namespaces/{ns}/coredumps"), &[])
        .ok()?;
    (r.status == 200).then(|| r.json()["items"].as_array().cloned().unwrap_or_default())
}

fn phase(cd: &Value) -> &str {
    cd["status"]["phase"].as_str().unwrap_or("")
}

/// Polls `f` every 50 ms until it returns Some, panicking with `what` and the agent's log
/// after `timeout`.
fn wait<T>(what: &str, agent: &Agent, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    wait_every(what, timeout, Duration::from_millis(50), || Ok(f()))
        .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent.log_tail(60)))
}

/// Waits until `ns` holds `n` Coredumps, all Stored.
fn wait_stored(agent: &Agent, ns: &str, n: usize) -> Vec<Value> {
    wait(
        &format!("{n} Stored coredumps in {ns}"),
        agent,
        WAIT,
        || {
            coredumps(ns)
                .filter(|items| items.len() >= n && items.iter().all(|c| phase(c) == "Stored"))
        },
    )
}

/// What every test here starts from: its turn (held while alive), the core_pattern to
/// restore, a Kubectl, and a Node and a namespace of its own.
struct Scene(MutexGuard<'static, ()>, String, Kubectl, String, String);

/// None (having said why) where the test cannot run here; `short` names the node and the
/// namespace.
fn scene(short: &str) -> Option<Scene> {
    if !can_run(short) {
        return None;
    }
    let serial = serial();
    let kubectl = env().kubectl();
    let node = format!("node-{short}-{}", std::process::id() % 100_000);
    create_node(&kubectl, &node).expect("node");
    let ns = env()
        .namespace(&format!("node-{short}"))
        .expect("namespace");
    Some(Scene(serial, core_pattern(), kubectl, node, ns))
}

/// Waits until the agent's counter `series` reaches `n`.
fn wait_metric(agent: &Agent, series: &str, n: f64) {
    wait(&format!("{series} >= {n}"), agent, WAIT, || {
        (agent.metric(series).ok()? >= n).then_some(())
    });
}

fn assert_metric(agent: &Agent, series: &str, n: f64) {
    assert_eq!(agent.metric(series).expect("metrics"), n, "{series}");
}

/// Waits until every core has left the agent's spool.
fn wait_spool_empty(agent: &Agent) {
    wait("the spool to be empty", agent, WAIT, || {
        agent.spooled().is_empty().then_some(())
    });
}

/// The first CoreDumped Event in `ns`, once there is one.
fn coredumped_event(kubectl: &Kubectl, agent: &Agent, ns: &str) -> Value {
    wait("the CoreDumped event", agent, WAIT, || {
        let out = kubectl
            .ok(&[
                "get",
                "events",
                "-n",
                ns,
                "--field-selector",
                "reason=CoreDumped",
                "-o",
                "json",
            ])
            .ok()?;
        let v: Value = serde_json::from_str(&out).ok()?;
        v["items"].as_array()?.first().cloned()
    })
}

/// Creates, as the admin, the Pending Coredump `name` that an attempt of the agent whose
/// answer was lost would have left for `pod`'s core with metadata.json `meta`.
fn create_lost_attempt(pod: &FakePod, node: &str, name: &str, meta: &Value, sha: &str) {
    let ns = &pod.namespace;
    let body = CoredumpFixture::new(ns, name)
        .node(node)
        .pod(&pod.name)
        .pod_uid(&pod.uid)
        .container(&pod.container)
        .signal(meta["signal"].as_i64().expect("metadata.json signal"))
        .dump_time("2026-01-01T00:00:00Z")
        .size(&meta["rawSize"])
        .stored_size(&meta["storedSize"])
        .sha(sha)
        .build();
    let r = direct()
        .request(
            "POST",
            &format!("{API}/namespaces/{ns}/coredumps"),
            &[("Content-Type", "application/json")],
            Some(&serde_json::to_vec(&body).expect("json")),
        )
        .expect("curl");
    assert_eq!(r.status, 201, "{}", r.text());
}

/// Stops the agent and checks it put core_pattern back exactly.
fn stop_and_check_restored(mut agent: Agent, before: &str) {
    assert!(
        core_pattern().contains(" capture "),
        "the agent's pattern is installed while it runs: {}",
        core_pattern()
    );
    agent.stop();
    assert_eq!(core_pattern(), before, "core_pattern restored on SIGTERM");
    let log = std::fs::read_to_string(agent.log_path()).unwrap_or_default();
    assert!(log.contains("core_pattern restored"), "{log}");
}

#[test]
fn crash_in_a_pod_becomes_a_stored_coredump_with_an_event() {
    let Some(Scene(_serial, before, kubectl, node, ns)) = scene("stored") else {
        return;
    };
    let pod = FakePod::create(&kubectl, &ns, "web-0", &node, json!({})).expect("pod");
    let agent = Agent::start(env(), AgentOptions::new(&node)).expect("agent");
    let cg = PodCgroup::new(&pod.uid, &pod.container_id).expect("cgroup");

    let c = crash(crasher(), &cg.procs(), "segv", 8).expect("crash");
    assert_eq!(c.signal, Some(11));
    assert!(c.core_dumped, "the kernel reports the core as dumped");
    let items = wait_stored(&agent, &ns, 1);
    let latency = c.ended.elapsed();
    assert_eq!(items.len(), 1, "{items:#?}");
    let cd = &items[0];
    eprintln!(
        "crash -> Stored (seen by polling the server): {latency:?}\n{}",
        serde_json::to_string_pretty(cd).expect("json")
    );
    let name = cd["metadata"]["name"].as_str().expect("name").to_string();
    assert!(name.starts_with("web-0-"), "{name}");
    let labels = &cd["metadata"]["labels"];
    assert_eq!(labels["coredump.io/node"], node.as_str());
    assert_eq!(labels["coredump.io/pod"], "web-0");
    assert_eq!(labels["coredump.io/container"], "app");
    let s = &cd["spec"];
    assert_eq!(s["nodeName"], node.as_str());
    assert_eq!(s["podName"], "web-0");
    assert_eq!(s["podUID"], pod.uid.as_str());
    assert_eq!(s["containerName"], "app");
    assert_eq!(
        s["containerID"],
        format!("containerd://{}", pod.container_id)
    );
    assert_eq!(s["image"], pod.image.as_str());
    assert_eq!(s["signal"], 11);
    assert_eq!(s["signalName"], "SIGSEGV");
    assert_eq!(s["executable"], crasher().to_string_lossy().as_ref());
    assert_eq!(s["hostPID"], c.pid);
    assert!(s["commandLine"]
        .as_str()
        .is_some_and(|l| l.starts_with(crasher().to_string_lossy().as_ref())));

    // What users see through kube-apiserver.
    let table = wait("kubectl get coredumps", &agent, WAIT, || {
        kubectl
            .ok(&["get", "coredumps", "-n", &ns])
            .ok()
            .filter(|t| t.contains(&name))
    });
    eprintln!("{table}");
    assert!(table.contains("Stored"), "{table}");

    let event = coredumped_event(&kubectl, &agent, &ns);
    eprintln!("event: {}", event["message"]);
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["involvedObject"]["kind"], "Pod");
    assert_eq!(event["involvedObject"]["name"], "web-0");
    let msg = event["message"].as_str().unwrap_or_default();
    assert!(msg.contains("SIGSEGV"), "{msg}");
    assert!(msg.contains(crasher().to_string_lossy().as_ref()), "{msg}");
    assert!(msg.contains(&name), "{msg}");

    // The core as users download it.
    let out = kubectl
        .run(&[
            "get",
            "--raw",
            &format!("{API}/namespaces/{ns}/coredumps/{name}/download"),
        ])
        .expect("kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let core = out.stdout;
    assert_eq!(
        core.len().to_string(),
        s["size"].as_str().expect("size").to_string()
    );
    assert_eq!(hex::encode(Sha256::digest(&core)), s["sha256"]);
    let core_path = agent.dir.join("downloaded.core");
    std::fs::write(&core_path, &core).expect("write core");
    let bt = Command::new("gdb")
        .args(["-batch", "-ex", "bt"])
        .arg(crasher())
        .arg(&core_path)
        .output()
        .expect("gdb");
    let bt = String::from_utf8_lossy(&bt.stdout);
    eprintln!("gdb bt:\n{bt}");
    assert!(bt.contains("crash_here_in_known_function"), "{bt}");

    // Delivered: the local copy is gone, and the counters say so.
    wait_spool_empty(&agent);
    assert_metric(&agent, "coredump_agent_captured_total", 1.0);
    assert_metric(&agent, "coredump_agent_uploaded_total", 1.0);
    stop_and_check_restored(agent, &before);
}

#[test]
fn opted_out_pods_and_namespaces_leave_nothing_and_unknown_pods_are_dropped() {
    let Some(Scene(_serial, before, kubectl, node, ns)) = scene("optout") else {
        return;
    };
    let quiet_ns = env().namespace("node-quiet").expect("namespace");
    kubectl
        .ok(&[
            "label",
            "namespace",
            &quiet_ns,
            "coredump.io/capture=disabled",
        ])
        .expect("label namespace");
    let quiet = FakePod::create(
        &kubectl,
        &ns,
        "quiet",
        &node,
        json!({"coredump.io/capture": "disabled"}),
    )
    .expect("pod");
    let in_quiet_ns = FakePod::create(&kubectl, &quiet_ns, "any", &node, json!({})).expect("pod");
    let late = FakePod::create(&kubectl, &ns, "late", &node, json!({})).expect("pod");
    let agent = Agent::start(env(), AgentOptions::new(&node).arg("--pod-wait=20s")).expect("agent");

    let optout = agent.spool.join("optout.json");
    wait("optout.json to list both pods", &agent, WAIT, || {
        let v: Value = serde_json::from_slice(&std::fs::read(&optout).ok()?).ok()?;
        let uids: Vec<&str> = v["podUids"]
            .as_array()?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        (uids.contains(&quiet.uid.as_str()) && uids.contains(&in_quiet_ns.uid.as_str()))
            .then_some(())
    });

    // Opted out before the crash: capture drops them without reading the core.
    for p in [&quiet, &in_quiet_ns] {
        let cg = PodCgroup::new(&p.uid, &p.container_id).expect("cgroup");
        let t = Instant::now();
        crash(crasher(), &cg.procs(), "segv", 64).expect("crash");
        eprintln!("opted-out crash of a 64 MiB process took {:?}", t.elapsed());
        assert!(agent.spooled().is_empty(), "no core in the spool");
    }
    wait_metric(
        &agent,
        "coredump_agent_dropped_total{reason=\"OptedOut\"}",
        2.0,
    );
    assert_metric(&agent, "coredump_agent_captured_total", 0.0);

    // Opted out after the crash: the core is in the spool (its container is not in the
    // pod status yet, so the agent waits), then the label comes; the agent drops it.
    let restarted = random_container_id().expect("id");
    let cg = PodCgroup::new(&late.uid, &restarted).expect("cgroup");
    crash(crasher(), &cg.procs(), "abort", 1).expect("crash");
    wait("the late pod's core in the spool", &agent, WAIT, || {
        (!agent.spooled().is_empty()).then_some(())
    });
    kubectl
        .ok(&[
            "label",
            "pod",
            "late",
            "-n",
            &ns,
            "coredump.io/capture=disabled",
        ])
        .expect("label pod");
    wait("the late core dropped as OptedOut", &agent, WAIT, || {
        let n = agent
            .metric("coredump_agent_dropped_total{reason=\"OptedOut\"}")
            .ok()?;
        (n >= 3.0 && agent.spooled().is_empty()).then_some(())
    });

    // A pod this node never had: dropped once --pod-wait has passed.
    let stranger = "5d6e7f80-1111-4222-8333-944455556666";
    let cg = PodCgroup::new(stranger, &random_container_id().expect("id")).expect("cgroup");
    let t = Instant::now();
    crash(crasher(), &cg.procs(), "segv", 1).expect("crash");
    wait_metric(
        &agent,
        "coredump_agent_dropped_total{reason=\"PodUnknown\"}",
        1.0,
    );
    let waited = t.elapsed();
    eprintln!("unknown pod dropped after {waited:?}");
    assert!(waited >= Duration::from_secs(19), "{waited:?}");
    assert!(agent.spooled().is_empty());

    for n in [&ns, &quiet_ns] {
        assert_eq!(coredumps(n).expect("list"), Vec::<Value>::new(), "{n}");
    }
    stop_and_check_restored(agent, &before);
}

/// Attribution trusts only the kubelet's own cgroup tree and the pod's status: a process
/// in a cgroup whose path merely contains a pod's `kubepods/…/pod<uid>/<id>` (here under a
/// user slice, where delegation lets a user create such names), or in that pod's real
/// cgroup tree under a container ID its status does not name, is never filed as that
/// pod's crash.
#[test]
fn crashes_in_look_alike_cgroups_are_not_filed_under_the_pod() {
    let Some(Scene(_serial, before, kubectl, node, ns)) = scene("spoof") else {
        return;
    };
    let pod = FakePod::create(&kubectl, &ns, "victim", &node, json!({})).expect("pod");
    let agent = Agent::start(env(), AgentOptions::new(&node).arg("--pod-wait=3s")).expect("agent");

    // The pod's own UID and container ID, under a user slice.
    let spoof = PodCgroup::at(&format!(
        "user.slice/user-1000.slice/kubepods/burstable/pod{}/{}",
        pod.uid, pod.container_id
    ))
    .expect("cgroup");
    crash(crasher(), &spoof.procs(), "segv", 1).expect("crash");
    wait_metric(
        &agent,
        "coredump_agent_dropped_total{reason=\"NotAContainer\"}",
        1.0,
    );
    assert!(agent.spooled().is_empty(), "nothing spooled for the pod");

    // The pod's real tree, a container its status never names.
    let stranger = PodCgroup::new(&pod.uid, &random_container_id().expect("id")).expect("cgroup");
    crash(crasher(), &stranger.procs(), "segv", 1).expect("crash");
    wait_metric(
        &agent,
        "coredump_agent_dropped_total{reason=\"ContainerUnknown\"}",
        1.0,
    );
    wait_spool_empty(&agent);
    assert_eq!(coredumps(&ns).expect("list"), Vec::<Value>::new());
    assert_metric(&agent, "coredump_agent_uploaded_total", 0.0);
    stop_and_check_restored(agent, &before);
}

#[test]
fn cores_wait_in_the_spool_while_the_server_is_down() {
    let Some(Scene(_serial, before, kubectl, node, ns)) = scene("down") else {
        return;
    };
    let pod = FakePod::create(&kubectl, &ns, "db-0", &node, json!({})).expect("pod");
    let agent =
        Agent::start(env(), AgentOptions::new(&node).arg("--max-backoff=2s")).expect("agent");
    let cg = PodCgroup::new(&pod.uid, &pod.container_id).expect("cgroup");

    env().server().stop();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crash(crasher(), &cg.procs(), "abort", 4).expect("crash");
        wait("the core in the spool", &agent, WAIT, || {
            (agent.spooled().len() == 1).then_some(())
        });
        wait_metric(&agent, "coredump_agent_delivery_retries_total", 3.0);
        assert_eq!(agent.spooled().len(), 1, "kept while the server is down");
        assert_metric(&agent, "coredump_agent_uploaded_total", 0.0);
    }));
    // Whatever happened above, the other tests need the server back.
    env().server().restart().expect("restarting the server");
    let back = Instant::now();
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
    let items = wait_stored(&agent, &ns, 1);
    eprintln!("server back -> Stored: {:?}", back.elapsed());
    assert_eq!(items[0]["spec"]["signalName"], "SIGABRT");
    assert_eq!(items[0]["spec"]["podName"], "db-0");
    wait_spool_empty(&agent);
    assert_metric(&agent, "coredump_agent_uploaded_total", 1.0);
    stop_and_check_restored(agent, &before);
}

#[test]
fn a_crash_loop_stays_within_the_rate_limit_and_the_spool_limit() {
    let Some(Scene(_serial, before, kubectl, node, ns)) = scene("loop") else {
        return;
    };
    let pod = FakePod::create(&kubectl, &ns, "flappy", &node, json!({})).expect("pod");
    const SPOOL_MAX: f64 = (64u64 << 20) as f64;
    let agent = Agent::start(
        env(),
        AgentOptions::new(&node)
            .arg("--rate-limit-count=5")
            .arg("--rate-limit-window=1h")
            .arg("--spool-max-bytes=64Mi"),
    )
    .expect("agent");
    let cg = PodCgroup::new(&pod.uid, &pod.container_id).expect("cgroup");

    let t = Instant::now();
    let mut peak = 0.0f64;
    for i in 0..200 {
        let c = crash(crasher(), &cg.procs(), "segv", 1).expect("crash");
        assert_eq!(c.signal, Some(11));
        if i % 10 == 0 {
            peak = peak.max(agent.metric("coredump_agent_spool_bytes").expect("metrics"));
        }
    }
    let crashing = t.elapsed();
    wait("195 RateLimited drops and 5 uploads", &agent, WAIT, || {
        let m = agent.metrics().ok()?;
        let dropped = coredump_integration::agent::parse_metric(
            &m,
            "coredump_agent_dropped_total{reason=\"RateLimited\"}",
        );
        let uploaded =
            coredump_integration::agent::parse_metric(&m, "coredump_agent_uploaded_total");
        (dropped >= 195.0 && uploaded >= 5.0).then_some(())
    });
    let settled = t.elapsed();
    let items = wait_stored(&agent, &ns, 5);
    assert_eq!(items.len(), 5, "only the rate limit's worth is kept");
    let m = agent.metrics().expect("metrics");
    eprintln!(
        "200 crashes in {crashing:?}, all accounted for after {settled:?}; peak spool {:.1} MiB\n{}",
        peak / (1 << 20) as f64,
        m.lines()
            .filter(|l| l.starts_with("coredump_agent"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        coredump_integration::agent::parse_metric(
            &m,
            "coredump_agent_dropped_total{reason=\"RateLimited\"}"
        ),
        195.0
    );
    assert_eq!(
        coredump_integration::agent::parse_metric(&m, "coredump_agent_uploaded_total"),
        5.0
    );
    assert_eq!(
        coredump_integration::agent::parse_metric(&m, "coredump_agent_captured_total"),
        5.0
    );
    assert!(peak <= SPOOL_MAX, "spool peaked at {peak} bytes");
    wait_spool_empty(&agent);
    // Drop records are counted and removed, so they cannot pile up either.
    let records = std::fs::read_dir(agent.spool.join("dropped"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(records, 0);
    stop_and_check_restored(agent, &before);
}

/// The name the agent gives a core (its contract, see node-handler's `deliver` module):
/// `<pod>-` and 10 hex digits of SHA-256 over node, spool ID and checksum.
fn agent_name(pod: &str, node: &str, id: &str, sha: &str) -> String {
    let mut h = Sha256::new();
    for part in [node, id, sha] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    format!("{pod}-{}", &hex::encode(h.finalize())[..10])
}

#[test]
fn a_restarted_agent_finds_the_coredumps_of_lost_answers() {
    let Some(Scene(_serial, before, kubectl, node, ns)) = scene("lost") else {
        return;
    };
    let pod = FakePod::create(&kubectl, &ns, "api-0", &node, json!({})).expect("pod");
    let dir = tempfile::Builder::new()
        .prefix("cdr")
        .tempdir_in("/tmp")
        .expect("tempdir");

    // A first agent that cannot reach the server spools three cores, then stops.
    let mut opts = AgentOptions::new(&node).arg("--max-backoff=1s");
    opts.dir = Some(dir.path().to_path_buf());
    opts.server_url = Some("https://127.0.0.1:1".into());
    let mut first = Agent::start(env(), opts.clone()).expect("agent");
    let cg = PodCgroup::new(&pod.uid, &pod.container_id).expect("cgroup");
    for _ in 0..3 {
        crash(crasher(), &cg.procs(), "abort", 1).expect("crash");
    }
    wait("three cores in the spool", &first, WAIT, || {
        (first.spooled().len() == 3).then_some(())
    });
    first.stop();
    assert_eq!(core_pattern(), before);
    let mut ids = first.spooled();
    ids.sort();
    let meta: Vec<Value> = ids
        .iter()
        .map(|id| {
            let p = first.spool.join("cores").join(id).join("metadata.json");
            serde_json::from_slice(&std::fs::read(p).expect("metadata")).expect("json")
        })
        .collect();
    drop(first);

    // What earlier attempts whose answers were lost would have left on the server.
    let post = |name: &str, m: &Value, sha: &str| create_lost_attempt(&pod, &node, name, m, sha);
    let sha = |m: &Value| m["sha256"].as_str().expect("sha").to_string();
    let names: Vec<String> = ids
        .iter()
        .zip(&meta)
        .map(|(id, m)| agent_name("api-0", &node, id, &sha(m)))
        .collect();
    // 1: created, the upload never happened.
    post(&names[0], &meta[0], &sha(&meta[0]));
    // 2: created and uploaded; only the answer was lost.
    post(&names[1], &meta[1], &sha(&meta[1]));
    let core =
        std::fs::read(dir.path().join("s/cores").join(&ids[1]).join("core.zst")).expect("core.zst");
    let r = direct()
        .request(
            "PUT",
            &format!("{API}/namespaces/{ns}/coredumps/{}/upload", names[1]),
            &[("Content-Type", "application/zstd")],
            Some(&core),
        )
        .expect("curl");
    assert_eq!(r.status, 200, "{}", r.text());
    // 3: the name is taken by something else (another core): the agent moves on.
    post(&names[2], &meta[2], &"ab".repeat(32));

    opts.server_url = None;
    let second = Agent::start(env(), opts).expect("agent");
    wait_spool_empty(&second);
    let items = coredumps(&ns).expect("list");
    let by_name = |n: &str| {
        items
            .iter()
            .find(|i| i["metadata"]["name"] == n)
            .unwrap_or_else(|| panic!("no {n} in {items:#?}"))
    };
    assert_eq!(items.len(), 4, "{items:#?}");
    for (name, m) in names.iter().take(2).zip(&meta) {
        assert_eq!(phase(by_name(name)), "Stored", "{name}");
        assert_eq!(by_name(name)["spec"]["sha256"], sha(m));
    }
    assert_eq!(
        phase(by_name(&names[2])),
        "Pending",
        "the other core's object is left alone"
    );
    let moved = by_name(&format!("{}-1", names[2]));
    assert_eq!(phase(moved), "Stored");
    assert_eq!(moved["spec"]["sha256"], sha(&meta[2]));
    assert_metric(&second, "coredump_agent_uploaded_total", 3.0);
    stop_and_check_restored(second, &before);
}

/// Writes a token file the way the kubelet rotates one: a new file renamed into place.
fn write_token(path: &Path, token: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, token).expect("write token");
    std::fs::rename(&tmp, path).expect("rename token");
}

#[test]
fn with_the_deployed_rbac_and_a_rotating_pod_bound_token() {
    let Some(Scene(_serial, before, kubectl, node, ns)) = scene("token") else {
        return;
    };
    let pod = FakePod::create(&kubectl, &ns, "svc-0", &node, json!({})).expect("pod");
    // The agent's identity as deployed: the node-agent role from deploy/rbac, a service
    // account, and a token bound to the agent's pod on this node (so the server's node
    // restriction applies).
    kubectl
        .ok(&[
            "apply",
            "-k",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/rbac"),
        ])
        .expect("apply rbac");
    kubectl
        .ok(&["create", "serviceaccount", "agent", "-n", &ns])
        .expect("sa");
    kubectl
        .apply(&json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "agent", "namespace": ns},
             "spec": {"nodeName": node, "serviceAccountName": "agent",
                      "automountServiceAccountToken": false,
                      "containers": [{"name": "agent", "image": "node-handler:1"}]}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": "agent", "namespace": ns},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                         "name": "coredump-node-agent"},
             "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": ns}]}
        ]}))
        .expect("agent pod and binding");
    let dir = tempfile::Builder::new()
        .prefix("cdt")
        .tempdir_in("/tmp")
        .expect("tempdir");

    // Two cores spooled while the server was unreachable; the second one's Coredump was
    // created by an attempt whose answer was lost.
    let mut opts = AgentOptions::new(&node).arg("--max-backoff=1s");
    opts.dir = Some(dir.path().to_path_buf());
    opts.server_url = Some("https://127.0.0.1:1".into());
    let mut first = Agent::start(env(), opts.clone()).expect("agent");
    let cg = PodCgroup::new(&pod.uid, &pod.container_id).expect("cgroup");
    for _ in 0..2 {
        crash(crasher(), &cg.procs(), "segv", 1).expect("crash");
    }
    wait("two cores in the spool", &first, WAIT, || {
        (first.spooled().len() == 2).then_some(())
    });
    first.stop();
    let mut ids = first.spooled();
    ids.sort();
    drop(first);
    let meta: Value = serde_json::from_slice(
        &std::fs::read(
            dir.path()
                .join("s/cores")
                .join(&ids[1])
                .join("metadata.json"),
        )
        .expect("metadata"),
    )
    .expect("json");
    let sha = meta["sha256"].as_str().expect("sha");
    let lost = agent_name("svc-0", &node, &ids[1], sha);
    create_lost_attempt(&pod, &node, &lost, &meta, sha);

    // The token the agent starts with is not (or no longer) valid.
    let token_file = dir.path().join("token");
    write_token(&token_file, "not-a-valid-token");
    opts.server_url = None;
    opts.token_file = Some(token_file.clone());
    let second = Agent::start(env(), opts).expect("agent");
    wait_metric(&second, "coredump_agent_delivery_retries_total", 2.0);
    assert_eq!(second.spooled().len(), 2, "kept while unauthenticated");

    // The kubelet rotates the token: the agent reads the new one on its next request.
    let token = kubectl
        .ok(&[
            "create",
            "token",
            "agent",
            "-n",
            &ns,
            "--bound-object-kind=Pod",
            "--bound-object-name=agent",
        ])
        .expect("token");
    let rotated = Instant::now();
    write_token(&token_file, token.trim());
    let items = wait_stored(&second, &ns, 2);
    eprintln!(
        "token rotated -> both Stored: {:?}; agent log:\n{}",
        rotated.elapsed(),
        second.log_tail(12)
    );
    assert_eq!(items.len(), 2, "{items:#?}");
    assert!(items.iter().any(|i| i["metadata"]["name"] == lost.as_str()));
    // The role grants `get`, and node restriction lets it read its own node's object: the
    // 409 is resolved by reading, not by uploading blind.
    let log = second.log_tail(400);
    assert!(!log.contains("may not be read"), "{log}");
    wait_spool_empty(&second);
    assert_metric(&second, "coredump_agent_uploaded_total", 2.0);
    stop_and_check_restored(second, &before);
}

#[test]
fn a_core_over_quota_is_recorded_as_rejected_and_not_kept() {
    let Some(Scene(_serial, before, kubectl, node, ns)) = scene("quota") else {
        return;
    };
    kubectl
        .apply(&QuotaFixture::new(&ns).name("none").count(0).build())
        .expect("quota");
    let pod = FakePod::create(&kubectl, &ns, "big-0", &node, json!({})).expect("pod");
    let agent = Agent::start(env(), AgentOptions::new(&node)).expect("agent");
    let cg = PodCgroup::new(&pod.uid, &pod.container_id).expect("cgroup");
    crash(crasher(), &cg.procs(), "segv", 1).expect("crash");
    wait_metric(
        &agent,
        "coredump_agent_dropped_total{reason=\"QuotaExceeded\"}",
        1.0,
    );
    assert!(agent.spooled().is_empty(), "a rejected core is not kept");
    let items = coredumps(&ns).expect("list");
    assert_eq!(items.len(), 1, "{items:#?}");
    assert_eq!(phase(&items[0]), "Rejected");
    assert_eq!(items[0]["status"]["reason"], "QuotaExceeded");
    let event = coredumped_event(&kubectl, &agent, &ns);
    let msg = event["message"].as_str().unwrap_or_default();
    assert!(msg.contains("not kept") && msg.contains("quota"), "{msg}");
    assert_metric(&agent, "coredump_agent_uploaded_total", 0.0);
    stop_and_check_restored(agent, &before);
}
