//! The newcomer's path, as the README gives it: `make up` (control plane, add-on and the
//! node agent for this machine), `make demo` twice, then `make down` — through the real
//! `coredump-dev` binary the Makefile runs, in a private state directory. What the demo
//! reports is checked independently here with kubectl.
//!
//! Root only (the agent installs core_pattern); skips with a reason otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use sha2::{Digest, Sha256};

const CORE_PATTERN: &str = "/proc/sys/kernel/core_pattern";

fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: needs root for core_pattern and cgroups");
        return false;
    }
    if coredump_integration::agent::cgroup2_root().is_none() {
        eprintln!("skipping: no cgroup v2 hierarchy");
        return false;
    }
    if Command::new("gcc").arg("--version").output().is_err() {
        eprintln!("skipping: gcc is not installed (the demo compiles its crasher)");
        return false;
    }
    true
}

fn core_pattern() -> String {
    std::fs::read_to_string(CORE_PATTERN)
        .expect("read core_pattern")
        .trim_end()
        .to_string()
}

fn dev(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coredump-dev"))
        .arg(format!("--dir={}", dir.display()))
        .args(args)
        .output()
        .expect("run coredump-dev")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `down` however the test ends, so no control plane or agent outlives it.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let o = dev(&self.0, &["down"]);
        eprintln!("down: {}", text(&o));
    }
}

fn pids(dir: &Path) -> Vec<u32> {
    fn walk(d: &Path, out: &mut Vec<u32>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "pid") {
                if let Some(pid) = std::fs::read_to_string(&p)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                {
                    out.push(pid);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out
}

/// Running and not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

#[test]
fn make_up_then_demo_twice_then_down() {
    if !can_run() {
        return;
    }
    let before = core_pattern();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();

    let up = dev(&dir, &["up"]);
    let _down = Down(dir.clone());
    assert!(up.status.success(), "{}", text(&up));
    let out = String::from_utf8_lossy(&up.stdout);
    assert!(out.contains("The node agent serves node"), "{out}");
    assert!(
        core_pattern().contains(" capture "),
        "the agent's handler is installed: {}",
        core_pattern()
    );
    let running = pids(&dir);
    assert_eq!(
        running.len(),
        5,
        "etcd, kube-apiserver, controller-manager, server, agent: {running:?}"
    );

    let again = dev(&dir, &["up"]);
    assert!(
        !again.status.success(),
        "a second up must refuse: {}",
        text(&again)
    );
    assert!(text(&again).contains("make down"), "{}", text(&again));

    let mut reported = Vec::new();
    for _ in 0..2 {
        let demo = dev(&dir, &["demo"]);
        assert!(demo.status.success(), "{}", text(&demo));
        let out = String::from_utf8_lossy(&demo.stdout).into_owned();
        eprintln!("{out}");
        let name = out
            .split("coredump ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .expect("the demo names its coredump")
            .to_string();
        assert!(out.contains(&format!("coredumps/{name}/download")), "{out}");
        reported.push(name);
    }
    assert_ne!(reported[0], reported[1], "each run is a new crash");

    // What a newcomer would see, with the kubectl and kubeconfig `up` left behind.
    let kubectl = |args: &[&str]| -> Output {
        Command::new(dir.join("bin/kubectl"))
            .arg(format!("--kubeconfig={}", dir.join("kubeconfig").display()))
            .args(args)
            .output()
            .expect("kubectl")
    };
    let list = kubectl(&["get", "coredumps", "-n", "demo", "-o", "json"]);
    assert!(list.status.success(), "{}", text(&list));
    let list: Value = serde_json::from_slice(&list.stdout).expect("json");
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{items:#?}");
    for cd in items {
        let name = cd["metadata"]["name"].as_str().expect("name");
        assert!(
            reported.iter().any(|r| r == name),
            "{name} not in {reported:?}"
        );
        assert_eq!(cd["status"]["phase"], "Stored");
        assert_eq!(cd["spec"]["podName"], "crasher");
        assert_eq!(cd["spec"]["containerName"], "app");
        assert_eq!(cd["spec"]["signalName"], "SIGSEGV");
        let core = kubectl(&[
            "get",
            "--raw",
            &format!("/apis/coredump.io/v1alpha1/namespaces/demo/coredumps/{name}/download"),
        ]);
        assert!(core.status.success(), "{}", text(&core));
        assert_eq!(
            hex::encode(Sha256::digest(&core.stdout)),
            cd["spec"]["sha256"],
            "{name}"
        );
    }
    let events = kubectl(&[
        "get",
        "events",
        "-n",
        "demo",
        "--field-selector",
        "reason=CoreDumped",
        "-o",
        "json",
    ]);
    let events: Value = serde_json::from_slice(&events.stdout).expect("events json");
    let messages: Vec<&str> = events["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    for name in &reported {
        assert!(
            messages.iter().any(|m| m.contains(name.as_str())),
            "no CoreDumped event for {name}: {messages:?}"
        );
    }

    let down = dev(&dir, &["down"]);
    assert!(down.status.success(), "{}", text(&down));
    assert_eq!(core_pattern(), before, "down restores core_pattern");
    let left: Vec<u32> = running.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "still running after down: {left:?}");
}
