//! The node agent (`coredump-node-handler agent`) as a child process of the harness, and
//! what a crash needs around it on a machine without a kubelet: a Node object, a Pod bound
//! to it whose status names a container ID, a kubelet-style cgroup for that container, and
//! a program that crashes in a known function.
//!
//! The agent installs the freshly built handler as core_pattern (holding the node-handler's
//! core_pattern lock while it runs) and restores the previous pattern when stopped, so
//! whoever uses this must run as root and stop the agent (dropping it does).
//!
//! For `make demo`: [`Agent::start`] (or [`Agent::start_with`] outside a `TestEnv`),
//! [`create_node`], [`FakePod::create`], [`PodCgroup::new`], [`build_crasher`], [`crash`].

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::bins::workspace_bin;
use crate::endpoints::Endpoints;
use crate::env::TestEnv;
use crate::kubectl::Kubectl;
use crate::process::{free_port, wait_for, Lifetime, Proc};
use crate::Error;

#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The node the agent serves (its pods are those with this spec.nodeName).
    pub node: String,
    /// Extra flags, e.g. `--pod-wait=5s` or `--rate-limit-count=5`.
    pub args: Vec<String>,
    pub lifetime: Lifetime,
    /// How long to wait for the agent to be ready (it may wait for the core_pattern lock
    /// held by another test binary).
    pub ready_timeout: Duration,
    /// Use this directory (spool `s`, handler `h`) and leave it in place when stopped, e.g.
    /// to restart an agent on the spool of a previous one. Default: a fresh one, removed
    /// when the agent is dropped.
    pub dir: Option<PathBuf>,
    /// Another server URL than the environment's (e.g. one nobody listens on).
    pub server_url: Option<String>,
    /// Authenticate to the server with the bearer token in this file (re-read by the agent
    /// for every request) instead of the admin's client certificate.
    pub token_file: Option<PathBuf>,
}

impl AgentOptions {
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_string(),
            args: Vec::new(),
            lifetime: Lifetime::Scoped,
            ready_timeout: Duration::from_secs(600),
            dir: None,
            server_url: None,
            token_file: None,
        }
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
}

/// A running agent with its own directory (handler copy and spool, short paths for the
/// 127-character core_pattern), removed when the agent is dropped.
pub struct Agent {
    pub node: String,
    pub dir: PathBuf,
    pub spool: PathBuf,
    pub handler: PathBuf,
    pub metrics_addr: String,
    proc: Option<Proc>,
    keep_dir: bool,
}

impl Agent {
    /// Starts an agent for `env`'s control plane and extension server: the server directly
    /// (its URL and CA) with the cluster admin's client certificate, kube-apiserver through
    /// the admin kubeconfig. Returns once `/readyz` answers (pod index synced, optout.json
    /// written, core_pattern installed).
    pub fn start(env: &TestEnv, opts: AgentOptions) -> Result<Self, Error> {
        let (url, ca) = {
            let s = env.server();
            (s.url.clone(), s.ca_cert.clone())
        };
        Self::start_with(&env.cp.endpoints, &url, &ca, opts)
    }

    /// Like [`Agent::start`], for a control plane not held in a `TestEnv` (`make demo`).
    pub fn start_with(
        ep: &Endpoints,
        server_url: &str,
        server_ca: &Path,
        opts: AgentOptions,
    ) -> Result<Self, Error> {
        let keep_dir = opts.dir.is_some() || opts.lifetime == Lifetime::Detached;
        let dir = match &opts.dir {
            Some(d) => d.clone(),
            None => tempfile::Builder::new()
                .prefix("cda")
                .tempdir_in("/tmp")
                .map_err(|e| Error::Io("agent tempdir".into(), e))?
                .keep(),
        };
        let server_url = opts.server_url.as_deref().unwrap_or(server_url);
        let spool = dir.join("s");
        let handler = dir.join("h");
        let port = free_port()?;
        let metrics_addr = format!("127.0.0.1:{port}");
        let pki = ep.dir.join("pki");
        let mut cmd = Command::new(workspace_bin("coredump-node-handler")?);
        cmd.arg("agent")
            .arg(format!("--node-name={}", opts.node))
            .arg(format!("--spool={}", spool.display()))
            .arg(format!("--server={server_url}"))
            .arg(format!("--server-ca={}", server_ca.display()))
            .arg(format!("--kubeconfig={}", ep.kubeconfig.display()))
            .arg(format!("--handler-path={}", handler.display()))
            .arg(format!("--metrics-addr={metrics_addr}"))
            .args(&opts.args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        match &opts.token_file {
            Some(t) => {
                cmd.arg(format!("--token-file={}", t.display()));
            }
            None => {
                cmd.arg(format!("--client-cert={}", pki.join("admin.crt").display()))
                    .arg(format!("--client-key={}", pki.join("admin.key").display()));
            }
        }
        let proc = Proc::spawn("agent", cmd, &dir, opts.lifetime)?;
        let mut agent = Self {
            node: opts.node,
            dir,
            spool,
            handler,
            metrics_addr,
            proc: Some(proc),
            keep_dir,
        };
        agent.wait_ready(opts.ready_timeout)?;
        Ok(agent)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), Error> {
        let addr = self.metrics_addr.clone();
        let proc = self
            .proc
            .as_mut()
            .ok_or_else(|| Error::Setup("agent not running".into()))?;
        wait_for("the agent to be ready", timeout, || {
            if let Some(status) = proc.exited() {
                return Err(Error::Exited {
                    name: proc.name.clone(),
                    status: status.to_string(),
                    log: proc.log_tail(40),
                });
            }
            Ok(http_get(&addr, "/readyz")
                .ok()
                .filter(|(code, _)| *code == 200)
                .map(|_| ()))
        })
    }

    /// The Prometheus exposition.
    pub fn metrics(&self) -> Result<String, Error> {
        let (code, body) = http_get(&self.metrics_addr, "/metrics")?;
        if code != 200 {
            return Err(Error::Setup(format!("GET /metrics: {code}")));
        }
        Ok(body)
    }

    /// One sample, e.g. `coredump_agent_dropped_total{reason="RateLimited"}`; 0 when the
    /// series does not exist (yet).
    pub fn metric(&self, series: &str) -> Result<f64, Error> {
        Ok(parse_metric(&self.metrics()?, series))
    }

    /// Crashes dropped for any reason so far (all `coredump_agent_dropped_total` series).
    pub fn dropped(&self) -> Result<f64, Error> {
        Ok(samples(&self.metrics()?)
            .filter(|(series, _)| series.starts_with("coredump_agent_dropped_total"))
            .map(|(_, v)| v)
            .sum())
    }

    /// Whether the agent process is still running.
    pub fn running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.exited().is_none())
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        crate::process::log_tail(&self.log_path(), lines)
    }

    /// IDs of the cores waiting in the spool.
    pub fn spooled(&self) -> Vec<String> {
        std::fs::read_dir(self.spool.join("cores"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// SIGTERM and wait: the agent restores core_pattern and exits.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }

    /// Leaves the agent running (for `make demo`); stop it with SIGTERM to its pid.
    pub fn detach(mut self) -> u32 {
        self.keep_dir = true;
        match self.proc.take() {
            Some(p) => {
                let pid = p.pid;
                std::mem::forget(p);
                pid
            }
            None => 0,
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A plain HTTP/1.0 GET on loopback (the agent's metrics port): status and body.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String), Error> {
    let io = |e| Error::Io(format!("GET http://{addr}{path}"), e);
    let mut s = std::net::TcpStream::connect(addr).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(io)?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(io)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

/// The value of `series` (name with its labels, as exposed) in a Prometheus exposition.
pub fn parse_metric(text: &str, series: &str) -> f64 {
    samples(text)
        .find(|(s, _)| *s == series)
        .map_or(0.0, |(_, v)| v)
}

/// Every sample of a Prometheus exposition: (name with its labels, value).
fn samples(text: &str) -> impl Iterator<Item = (&str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series, value.parse().ok()?))
        })
}

/// Creates (or keeps) a Node object; no kubelet runs for it, so pods bound to it stay as
/// the test writes them.
pub fn create_node(kubectl: &Kubectl, name: &str) -> Result<(), Error> {
    kubectl.apply(&json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}
    }))?;
    Ok(())
}

/// 64 random lower-case hex digits, like a containerd container ID.
pub fn random_container_id() -> Result<String, Error> {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| Error::Io("read /dev/urandom".into(), e))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// A fresh random container ID and a pod UID made from it (UUID-shaped), for a crash
/// in a pod cgroup of its own.
pub fn random_pod_ids() -> Result<(String, String), Error> {
    let cid = random_container_id()?;
    let pod_uid = format!(
        "{}-{}-{}-{}-{}",
        &cid[0..8],
        &cid[8..12],
        &cid[12..16],
        &cid[16..20],
        &cid[20..32]
    );
    Ok((pod_uid, cid))
}

/// A pod bound to a node, with a status as a kubelet would write it.
#[derive(Clone, Debug)]
pub struct FakePod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub container: String,
    pub image: String,
    /// Bare 64-hex ID; the status says `containerd://<id>`.
    pub container_id: String,
}

impl FakePod {
    /// Creates the pod on `node` with `labels`, and sets its status to one running
    /// container (`container`, `image`) with a fresh container ID.
    pub fn create(
        kubectl: &Kubectl,
        namespace: &str,
        name: &str,
        node: &str,
        labels: serde_json::Value,
    ) -> Result<Self, Error> {
        let container = "app".to_string();
        let image = "registry.example/crasher:1.0".to_string();
        kubectl.apply(&json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "nodeName": node,
                "terminationGracePeriodSeconds": 0,
                "containers": [{"name": container, "image": image}]
            }
        }))?;
        let uid = kubectl
            .ok(&[
                "get",
                "pod",
                name,
                "-n",
                namespace,
                "-o",
                "jsonpath={.metadata.uid}",
            ])?
            .trim()
            .to_string();
        let pod = Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid,
            container,
            image,
            container_id: random_container_id()?,
        };
        pod.set_container_id(kubectl, &pod.container_id)?;
        Ok(pod)
    }

    /// Writes the status a kubelet would after (re)starting the container as `id`.
    pub fn set_container_id(&self, kubectl: &Kubectl, id: &str) -> Result<(), Error> {
        let status = json!({"status": {
            "phase": "Running",
            "containerStatuses": [{
                "name": self.container,
                "image": self.image,
                "imageID": format!("{}@sha256:{}", self.image, "0".repeat(64)),
                "containerID": format!("containerd://{id}"),
                "ready": true,
                "restartCount": 0,
                "started": true,
                "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
            }]
        }});
        let patch = serde_json::to_string(&status).map_err(Error::Json)?;
        kubectl.ok(&[
            "patch",
            "pod",
            &self.name,
            "-n",
            &self.namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ])?;
        Ok(())
    }
}

/// The cgroup v2 mount: /sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts.
pub fn cgroup2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| {
            nix::sys::statfs::statfs(p)
                .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        })
}

/// A kubelet-style cgroup (systemd driver, containerd) for one container of a pod; the
/// levels it created are removed when dropped.
pub struct PodCgroup {
    created: Vec<PathBuf>,
    leaf: PathBuf,
}

impl PodCgroup {
    pub fn new(pod_uid: &str, container_id: &str) -> Result<Self, Error> {
        let uid_ = pod_uid.replace('-', "_");
        Self::at(&format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{container_id}.scope"
        ))
    }

    /// A cgroup at `rel` below the v2 root, kubelet-shaped or not (e.g. one that only
    /// looks like a pod's).
    pub fn at(rel: &str) -> Result<Self, Error> {
        let root = cgroup2_root().ok_or_else(|| Error::Setup("no cgroup v2 hierarchy".into()))?;
        let mut created = Vec::new();
        let mut p = root;
        for part in rel.split('/') {
            p.push(part);
            if !p.exists() {
                std::fs::create_dir(&p)
                    .map_err(|e| Error::Io(format!("mkdir {}", p.display()), e))?;
                created.push(p.clone());
            }
        }
        Ok(Self { created, leaf: p })
    }

    /// The file a process writes its PID to, to join.
    pub fn procs(&self) -> PathBuf {
        self.leaf.join("cgroup.procs")
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        // A cgroup can stay busy for a moment after its last task exited.
        for dir in self.created.iter().rev() {
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Compiles node-handler/tests/crasher.c (joins the cgroups named on its command line,
/// fills memory, crashes in `crash_here_in_known_function`) into `out_dir`.
pub fn build_crasher(out_dir: &Path) -> Result<PathBuf, Error> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../node-handler/tests/crasher.c");
    let out = out_dir.join("crasher");
    let tmp = out_dir.join(format!("crasher.{}.tmp", std::process::id()));
    let o = Command::new("gcc")
        .args(["-O0", "-g", "-o"])
        .arg(&tmp)
        .arg(&src)
        .output()
        .map_err(|e| Error::Io("run gcc".into(), e))?;
    if !o.status.success() {
        return Err(Error::Setup(format!(
            "gcc {}: {}",
            src.display(),
            String::from_utf8_lossy(&o.stderr)
        )));
    }
    std::fs::rename(&tmp, &out).map_err(|e| Error::Io("rename crasher".into(), e))?;
    Ok(out)
}

/// One crash of the crasher.
#[derive(Debug)]
pub struct Crash {
    pub pid: u32,
    pub signal: Option<i32>,
    pub core_dumped: bool,
    /// When the process was gone (its core handed over).
    pub ended: Instant,
}

/// Runs `crasher` in the cgroup whose `cgroup.procs` is `procs`: `mode` is `segv` or
/// `abort`, `mib` the memory it fills first.
pub fn crash(crasher: &Path, procs: &Path, mode: &str, mib: u64) -> Result<Crash, Error> {
    let child = Command::new(crasher)
        .arg(mode)
        .arg(mib.to_string())
        .arg("unlimited")
        .arg(procs)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Error::Io("run crasher".into(), e))?;
    let pid = child.id();
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Io("wait crasher".into(), e))?;
    let ended = Instant::now();
    if out.status.signal().is_none() {
        return Err(Error::Setup(format!(
            "the crasher did not crash: {:?}, stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(Crash {
        pid,
        signal: out.status.signal(),
        core_dumped: out.status.core_dumped(),
        ended,
    })
}

/// A crash timed from the signal: the benchmarks' unit.
#[derive(Debug)]
pub struct TimedCrash {
    pub pid: u32,
    /// When the crash signal was sent (the crasher had filled its memory).
    pub signalled: Instant,
    /// When the crashed process was reaped: with core_pipe_limit above 0 the kernel
    /// waits for the core_pattern handler to exit first.
    pub reaped: Instant,
}

/// Runs `crasher` with `mib` MiB of heap-like memory (CRASHER_FILL=mixed) in the cgroup
/// whose `cgroup.procs` is `procs`, waits until it is ready, sends SIGSEGV and waits for
/// it to be reaped. An error unless the kernel reports a core dumped.
pub fn crash_timed(crasher: &Path, procs: &Path, mib: u64) -> Result<TimedCrash, Error> {
    use std::io::BufRead;
    let mut child = Command::new(crasher)
        .args(["segv", &mib.to_string(), "unlimited"])
        .arg(procs)
        .env("CRASHER_FILL", "mixed")
        .env("CRASHER_WAIT", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|e| Error::Io("run crasher".into(), e))?;
    let pid = child.id();
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| Error::Io("read crasher".into(), e))?;
    }
    if line.trim() != "ready" {
        let _ = child.kill();
        let _ = child.wait();
        return Err(Error::Setup(format!(
            "the crasher did not get ready: {line:?}"
        )));
    }
    let signalled = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGSEGV,
    )
    .map_err(|e| Error::Io("kill crasher".into(), e.into()))?;
    let status = child
        .wait()
        .map_err(|e| Error::Io("wait crasher".into(), e))?;
    let reaped = Instant::now();
    if !status.core_dumped() {
        return Err(Error::Setup(format!(
            "the crasher ended {status:?} without a core dump"
        )));
    }
    Ok(TimedCrash {
        pid,
        signalled,
        reaped,
    })
}
