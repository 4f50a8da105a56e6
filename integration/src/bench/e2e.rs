//! End to end: a real crash in a pod's cgroup, through core_pattern, the spool, the agent
//! and the server, until the Coredump is `Stored` — seen on a watch straight from the
//! server. Crashes run one at a time, so each latency is one crash's, not a queue's. The
//! baseline in the same run is the capture part alone (signal → reaped).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::report::{ms, ratio, Section};
use super::{percentile, Scale};
use crate::agent::{
    build_crasher, crash_timed, create_node, Agent, AgentOptions, FakePod, PodCgroup,
};
use crate::env::TestEnv;
use crate::Error;

const API: &str = "/apis/coredump.io/v1alpha1";

#[derive(Clone, Debug)]
pub struct E2eOptions {
    pub crashes: usize,
    pub core_mib: u64,
}

impl E2eOptions {
    pub fn for_scale(s: Scale) -> Self {
        match s {
            Scale::Full => Self {
                crashes: 100,
                core_mib: 8,
            },
            Scale::Tiny => Self {
                crashes: 3,
                core_mib: 4,
            },
        }
    }
}

#[derive(Debug)]
pub struct E2eResults {
    pub core_mib: u64,
    /// Per crash: signal → reaped (the capture handler's share).
    pub reaped: Vec<Duration>,
    /// Per crash: signal → the watch shows it Stored.
    pub stored: Vec<Duration>,
}

/// `curl -N` on a watch of `ns`'s coredumps straight from the server: sends
/// (hostPID, when seen Stored) for every Stored object, until dropped.
struct StoredWatch {
    child: std::process::Child,
    rx: mpsc::Receiver<(u64, Instant)>,
}

impl StoredWatch {
    fn start(env: &TestEnv, ns: &str) -> Result<Self, Error> {
        let c = env.direct_admin();
        let mut cmd = c.command("GET", &[]);
        // Unbuffered: each event as it arrives.
        cmd.arg("-N")
            .arg(format!(
                "{}{API}/namespaces/{ns}/coredumps?watch=true&timeoutSeconds=3600",
                c.base
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::Io("run curl watch".into(), e))?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| Error::Setup("watch has no stdout".into()))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let seen = Instant::now();
                let Ok(ev) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let obj = &ev["object"];
                if obj["status"]["phase"] == "Stored" {
                    if let Some(pid) = obj["spec"]["hostPID"].as_u64() {
                        if tx.send((pid, seen)).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Self { child, rx })
    }
}

impl Drop for StoredWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run(env: &TestEnv, opts: &E2eOptions, work: &Path) -> Result<E2eResults, Error> {
    std::fs::create_dir_all(work).map_err(|e| Error::Io("mkdir work".into(), e))?;
    let crasher = build_crasher(work)?;
    let kubectl = env.kubectl();
    let node = format!("bench-e2e-{}", std::process::id() % 100_000);
    create_node(&kubectl, &node)?;
    let ns = env.namespace("bench-e2e")?;
    let pod = FakePod::create(&kubectl, &ns, "crasher", &node, json!({}))?;
    // Production defaults except the per-container rate limit, which a benchmark of
    // 100 crashes of one container would otherwise hit by design.
    let agent = Agent::start(
        env,
        AgentOptions::new(&node).arg("--rate-limit-count=100000"),
    )?;
    let cgroup = PodCgroup::new(&pod.uid, &pod.container_id)?;
    let watch = StoredWatch::start(env, &ns)?;
    let mut seen: HashMap<u64, Instant> = HashMap::new();
    let mut reaped = Vec::new();
    let mut stored = Vec::new();
    for _ in 0..opts.crashes {
        let c = crash_timed(&crasher, &cgroup.procs(), opts.core_mib)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let at = loop {
            if let Some(t) = seen.get(&u64::from(c.pid)) {
                break *t;
            }
            if Instant::now() >= deadline {
                return Err(Error::Setup(format!(
                    "crash of pid {} not Stored within 120 s; agent log:\n{}",
                    c.pid,
                    agent.log_tail(30)
                )));
            }
            match watch.rx.recv_timeout(Duration::from_secs(1)) {
                Ok((pid, t)) => {
                    seen.entry(pid).or_insert(t);
                }
                // A dropped crash will never be Stored: say why now rather than at the deadline.
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::Setup(format!(
                        "the watch of Stored coredumps ended before pid {} was Stored",
                        c.pid
                    )));
                }
                Err(RecvTimeoutError::Timeout) if agent.dropped()? > 0.0 => {
                    return Err(Error::Setup(format!(
                        "the agent dropped the crash of pid {}; agent log:\n{}",
                        c.pid,
                        agent.log_tail(30)
                    )));
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        };
        reaped.push(c.reaped - c.signalled);
        stored.push(at.saturating_duration_since(c.signalled));
    }
    drop(watch);
    drop(agent);
    drop(cgroup);
    let _ = kubectl.run(&["delete", "node", &node, "--wait=false"]);
    Ok(E2eResults {
        core_mib: opts.core_mib,
        reaped,
        stored,
    })
}

impl E2eResults {
    pub fn section(&self) -> Section {
        let mut s = Section::new(
            "End to end",
            &format!(
                "{} crashes, one at a time, of a process holding {} MiB of heap-like memory \
                 in a pod's cgroup: from the crash signal until a watch straight from the \
                 server shows the Coredump `Stored` (core captured, spooled, attributed, \
                 created, uploaded). Baseline: the same crashes' signal → reaped (capture \
                 alone).",
                self.stored.len(),
                self.core_mib
            ),
            &["figure", "p50", "p99", "max", "p50 vs capture"],
        );
        let cap50 = percentile(&self.reaped, 50.0);
        for (name, v) in [
            ("signal → reaped (capture)", &self.reaped),
            ("signal → Stored", &self.stored),
        ] {
            let p50 = percentile(v, 50.0);
            s.row(vec![
                name.to_string(),
                ms(p50),
                ms(percentile(v, 99.0)),
                ms(percentile(v, 100.0)),
                ratio(p50.as_secs_f64() / cap50.as_secs_f64()),
            ]);
        }
        s.note(
            "the agent starts delivery when inotify reports the core in its spool (and polls \
             every 100 ms besides, --poll-interval): after capture, the latency is one create, \
             one upload with its verification and fsync, and the watch's delivery",
        );
        s
    }
}
