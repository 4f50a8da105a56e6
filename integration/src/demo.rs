//! `make demo`: one real crash in a pod of namespace `demo`, seen through to a Stored
//! Coredump with its Event and a download whose sha256 matches — on the control plane and
//! node agent `make up` runs. No kubelet runs here, so the pod is bound to the agent's node
//! and its "container" is a kubelet-style cgroup the crashing program joins.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::agent::{build_crasher, crash, FakePod, PodCgroup};
use crate::kubectl::Kubectl;
use crate::process::wait_every;
use crate::Error;

pub const NAMESPACE: &str = "demo";
pub const POD: &str = "crasher";
const API: &str = "/apis/coredump.io/v1alpha1";
const POLL: Duration = Duration::from_millis(100);

/// What one demo run produced, checked end to end.
#[derive(Debug)]
pub struct Outcome {
    pub coredump: String,
    pub crasher: PathBuf,
    pub pid: u32,
    pub signal_name: String,
    pub sha256: String,
    pub size: u64,
    /// From the crashed process being reaped to the Coredump being Stored.
    pub latency: Duration,
    pub event: String,
}

/// Ensures the namespace and a pod on `node`, crashes a real program in the pod's cgroup
/// and waits (up to `timeout`) until its Coredump is Stored, its CoreDumped Event exists
/// and the download's sha256 is the one in the spec. `work` holds the crasher binary.
pub fn run(
    kubectl: &Kubectl,
    node: &str,
    work: &Path,
    timeout: Duration,
) -> Result<Outcome, Error> {
    std::fs::create_dir_all(work).map_err(|e| Error::Io(format!("mkdir {}", work.display()), e))?;
    let crasher = build_crasher(work)?;
    kubectl.apply(&json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}
    }))?;
    // nodeName is immutable: a pod left from an environment on another node goes first.
    let bound = kubectl.run(&[
        "get",
        "pod",
        POD,
        "-n",
        NAMESPACE,
        "-o",
        "jsonpath={.spec.nodeName}",
    ])?;
    if bound.status.success() && String::from_utf8_lossy(&bound.stdout).trim() != node {
        kubectl.ok(&["delete", "pod", POD, "-n", NAMESPACE, "--wait=true"])?;
    }
    // Each run is a container restart: a fresh container ID in the pod's status.
    let pod = FakePod::create(kubectl, NAMESPACE, POD, node, json!({"app": POD}))?;
    let cgroup = PodCgroup::new(&pod.uid, &pod.container_id)?;
    let c = crash(&crasher, &cgroup.procs(), "segv", 16)?;
    drop(cgroup);

    // Every 100 ms: the latency printed is measured by this loop.
    let cd = wait_every("the Coredump to be Stored", timeout, POLL, || {
        let items = list(
            kubectl,
            &["get", "coredumps", "-n", NAMESPACE, "-o", "json"],
        )?;
        let Some(cd) = items
            .into_iter()
            .find(|cd| cd["spec"]["hostPID"].as_u64() == Some(u64::from(c.pid)))
        else {
            return Ok(None);
        };
        match cd["status"]["phase"].as_str() {
            Some("Stored") => Ok(Some(Ok(cd))),
            // Final: not retried.
            Some(p @ ("Rejected" | "Failed")) => Ok(Some(Err(Error::Setup(format!(
                "the coredump ended {p}: {}",
                cd["status"]["message"]
            ))))),
            _ => Ok(None),
        }
    })??;
    let latency = c.ended.elapsed();
    let name = cd["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let spec = &cd["spec"];
    let sha256 = spec["sha256"].as_str().unwrap_or_default().to_string();

    let event = wait_every("the CoreDumped Event", timeout, POLL, || {
        let items = list(
            kubectl,
            &[
                "get",
                "events",
                "-n",
                NAMESPACE,
                "--field-selector",
                "reason=CoreDumped",
                "-o",
                "json",
            ],
        )?;
        Ok(items.into_iter().find_map(|e| {
            let msg = e["message"].as_str()?;
            msg.contains(&name).then(|| msg.to_string())
        }))
    })?;

    let download = kubectl.run(&[
        "get",
        "--raw",
        &format!("{API}/namespaces/{NAMESPACE}/coredumps/{name}/download"),
    ])?;
    if !download.status.success() {
        return Err(Error::Kubectl {
            args: "get --raw …/download".into(),
            stderr: String::from_utf8_lossy(&download.stderr).into_owned(),
        });
    }
    let got = hex::encode(Sha256::digest(&download.stdout));
    if got != sha256 {
        return Err(Error::Setup(format!(
            "downloaded core has sha256 {got}, the spec says {sha256}"
        )));
    }
    Ok(Outcome {
        coredump: name,
        crasher,
        pid: c.pid,
        signal_name: spec["signalName"].as_str().unwrap_or_default().to_string(),
        sha256,
        size: download.stdout.len() as u64,
        latency,
        event,
    })
}

/// The `items` of a `kubectl … -o json` list, or None if kubectl failed.
fn list(kubectl: &Kubectl, args: &[&str]) -> Result<Vec<Value>, Error> {
    let out = kubectl.ok(args)?;
    let v: Value = serde_json::from_str(&out)
        .map_err(|e| Error::Setup(format!("kubectl {}: {e}", args.join(" "))))?;
    Ok(v["items"].as_array().cloned().unwrap_or_default())
}

/// What a newcomer types next, for the outcome of [`run`].
pub fn instructions(o: &Outcome, kubeconfig: &Path, bin: &Path) -> String {
    let ns = NAMESPACE;
    let name = &o.coredump;
    format!(
        "Crashed {crasher} (pid {pid}, {sig}) in pod {ns}/{POD}: coredump {name} seen Stored \
         {ms} ms after the process was reaped ({size} bytes, sha256 {sha}).\n\
         Event: {event}\n\n\
         export KUBECONFIG={kc} PATH={bin}:$PATH\n\
         kubectl get coredumps -n {ns}\n\
         kubectl get coredump {name} -n {ns} -o yaml\n\
         kubectl get events -n {ns} --field-selector reason=CoreDumped\n\
         kubectl get --raw {API}/namespaces/{ns}/coredumps/{name}/download > {name}.core\n\
         sha256sum {name}.core   # {sha}\n\
         gdb -batch -ex bt {crasher} {name}.core\n\n\
         Run `make demo` again for another crash.",
        crasher = o.crasher.display(),
        pid = o.pid,
        sig = o.signal_name,
        ms = o.latency.as_millis(),
        size = o.size,
        sha = o.sha256,
        event = o.event,
        kc = kubeconfig.display(),
        bin = bin.display(),
    )
}
