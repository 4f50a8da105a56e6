//! A real single-node cluster on this machine: the control plane of [`crate::controlplane`]
//! (Node authorization, NodeRestriction, aggregator routing, every controller) plus
//! kube-scheduler, containerd, a kubelet, kube-proxy (nftables) and CoreDNS, with a bridge
//! CNI network. Pods are real containers (runc), so the add-on can be installed from
//! `deploy/` as an admin would and real crashes captured.
//!
//! Layout: the bridge [`BRIDGE`] carries [`NODE_IP`], which is the node's address, the pods'
//! gateway, kube-apiserver's bind and advertise address and CoreDNS's (the cluster DNS).
//! Pods get addresses from [`POD_SUBNET`]; a guard nftables table drops anything a pod
//! sends that would leave the bridge, so nothing reaches beyond this machine. CoreDNS
//! answers only `cluster.local` and reverse zones (no forwarding). Pulls cannot leave the
//! machine either: containerd's registry hosts point every registry at a closed loopback
//! port, and the images a test needs are imported (`ctr images import`).
//!
//! Invariants:
//! - At most one real node per machine (the kubelet's `/kubepods` cgroups, the bridge and
//!   core_pattern are machine-wide): a scoped node holds the flock [`MACHINE_LOCK`] while it
//!   lives; every node writes [`STATE_FILE`] before it changes anything outside its
//!   directory, and a detached node (`make up REAL_NODE=1`) is refused a second start.
//! - [`STATE_FILE`] records what was there before (ip_forward, core_pattern and
//!   core_pipe_limit, which machine paths did not exist); [`teardown`] undoes exactly that,
//!   also from another process after a run that died (the next start, or `make down`).
//! - Teardown stops pods through Kubernetes first (namespaces deleted, so the kubelet runs
//!   CNI DEL), then the processes, then removes what they left: containers' processes,
//!   mounts under the directory, pod cgroups, kube-proxy's and the guard's nft tables, the
//!   bridge, CNI results, `/var/log/containers` links.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::controlplane::{self, ControlPlane, NodeApi};
use crate::endpoints::Endpoints;
use crate::kubectl::Kubectl;
use crate::process::{free_port, wait_for, Lifetime, Proc};
use crate::Error;

/// The CNI bridge; it also carries [`NODE_IP`].
pub const BRIDGE: &str = "cdbr0";
/// The node's address (on [`BRIDGE`]): kubelet, kube-apiserver, CoreDNS.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// Pod addresses (host-local IPAM), gateway [`NODE_IP`].
pub const POD_SUBNET: &str = "10.244.0.0/24";
/// The Node's name.
pub const NODE_NAME: &str = "coredump-node";
/// The CNI network's name (also the prefix of its cached results in /var/lib/cni).
pub const CNI_NETWORK: &str = "coredump-realnode";
/// containerd's pinned sandbox image, built and imported by the harness.
pub const PAUSE_IMAGE: &str = "docker.io/coredump-detector/pause:local";
/// Where a node records what it changed on the machine (see the module docs).
pub const STATE_FILE: &str = "/run/coredump-detector-realnode.json";
/// Held by a scoped node for its lifetime.
pub const MACHINE_LOCK: &str = "/run/coredump-detector-realnode.lock";
/// The guard table that keeps pods' traffic on the bridge.
const GUARD_TABLE: &str = "coredump-realnode-guard";
/// Machine paths the components may create; removed at teardown if they did not exist.
const MACHINE_PATHS: &[&str] = &[
    "/var/lib/coredump-detector",
    "/run/containerd",
    "/var/lib/cni",
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/kubelet",
    "/opt/containerd",
    "/run/netns",
    "/etc/cni",
];
/// How long teardown waits for pods to go through Kubernetes.
const POD_STOP_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Clone, Debug)]
pub struct Options {
    pub lifetime: Lifetime,
    /// State directory (created); default a fresh temporary one. Keep it short: socket
    /// paths live below it.
    pub dir: Option<PathBuf>,
    /// Images (docker-archives) to import into containerd before the kubelet starts; the
    /// pause image must be among them or imported with [`RealNode::import`] before pods run.
    pub images: Vec<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            lifetime: Lifetime::Scoped,
            dir: None,
            images: Vec::new(),
        }
    }
}

/// What teardown needs, also from another process: written to [`STATE_FILE`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MachineState {
    pub dir: PathBuf,
    pub bin_dir: PathBuf,
    pub detached: bool,
    pub kubeconfig: Option<PathBuf>,
    pub ip_forward: String,
    pub core_pattern: String,
    pub core_pipe_limit: String,
    /// Of `MACHINE_PATHS` and the cgroup hierarchies' `kubepods`, those that did not exist.
    pub created: Vec<PathBuf>,
    /// nftables tables (`family name`) that existed: the kubelet's iptables-nft chains
    /// (KUBE-FIREWALL, canaries) create `ip filter` and friends, removed if new.
    pub nft_tables: Vec<String>,
}

pub struct RealNode {
    cp: Option<ControlPlane>,
    pub dir: PathBuf,
    pub bin_dir: PathBuf,
    /// containerd's socket (for `ctr --address`).
    pub containerd_socket: PathBuf,
    state: MachineState,
    procs: Vec<Proc>,
    lifetime: Lifetime,
    torn_down: bool,
    _tempdir: Option<tempfile::TempDir>,
    _lock: Option<Flock<File>>,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |e| Error::Io(what, e)
}

/// Why this machine cannot run a real node, if it cannot.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (containers, cgroups, the bridge, core_pattern)".into());
    }
    for tool in ["runc", "nft", "ip", "buildah", "gcc", "g++", "go"] {
        if which(tool).is_none() {
            return Some(format!("{tool} is not installed (.ci/run installs it)"));
        }
    }
    for plugin in ["bridge", "host-local", "loopback"] {
        if !Path::new("/usr/lib/cni").join(plugin).exists() {
            return Some(format!(
                "CNI plugin {plugin} missing: apt-get install containernetworking-plugins"
            ));
        }
    }
    None
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs: Vec<&str> = path.split(':').chain(["/usr/sbin", "/sbin"]).collect();
    dirs.into_iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// The directory with the node's binaries: `controlplane/build.sh --node`.
pub fn node_bin_dir() -> Result<PathBuf, Error> {
    if let Ok(dir) = std::env::var("COREDUMP_CONTROLPLANE_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("controlplane/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--node")
        .output()
        .map_err(io(format!("run {}", script.display())))?;
    if !out.status.success() {
        return Err(Error::Setup(format!(
            "{} --node failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn run(cmd: &mut Command) -> Result<String, Error> {
    let out = cmd
        .output()
        .map_err(io(format!("run {:?}", cmd.get_program())))?;
    if !out.status.success() {
        return Err(Error::Setup(format!(
            "{:?} {:?}: {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String, Error> {
    run(Command::new("ip").args(args))
}

fn nft(args: &[&str]) -> Result<String, Error> {
    run(Command::new("nft").args(args))
}

/// `family name` of every nftables table.
fn nft_tables() -> Vec<String> {
    nft(&["list", "tables"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("table "))
        .map(str::to_string)
        .collect()
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches('\n').to_string())
        .unwrap_or_default()
}

/// Every `kubepods` directory the kubelet (cgroupfs driver) creates or would create.
fn kubepods_dirs() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            let p = e.path();
            if p.join("cgroup.procs").exists() {
                out.push(p.join("kubepods"));
            }
        }
    }
    if Path::new("/sys/fs/cgroup/cgroup.procs").exists() {
        out.push(PathBuf::from("/sys/fs/cgroup/kubepods"));
    }
    out.sort();
    out
}

impl RealNode {
    /// Brings the node up and returns once it is Ready and CoreDNS serves.
    pub fn start(opts: Options) -> Result<Self, Error> {
        if let Some(why) = unavailable() {
            return Err(Error::Setup(why));
        }
        let bin_dir = node_bin_dir()?;
        let lock = if opts.lifetime == Lifetime::Scoped {
            let f = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(MACHINE_LOCK)
                .map_err(io(format!("open {MACHINE_LOCK}")))?;
            Some(
                Flock::lock(f, FlockArg::LockExclusive)
                    .map_err(|(_, e)| Error::Io("flock realnode".into(), e.into()))?,
            )
        } else {
            None
        };
        // Leftovers of a node that died, or a running detached node.
        if let Some(prev) = read_state() {
            if prev.detached
                && prev
                    .dir
                    .join("kubelet.pid")
                    .exists()
                    .then(|| read_pid(&prev.dir.join("kubelet.pid")))
                    .flatten()
                    .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists())
            {
                return Err(Error::Setup(format!(
                    "a real node (make up REAL_NODE=1) is running from {}: make down first",
                    prev.dir.display()
                )));
            }
            teardown(&prev);
        }
        let (tempdir, dir) = match &opts.dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(io(format!("mkdir {}", d.display())))?;
                (None, d.canonicalize().map_err(io("resolve node dir"))?)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("cdrn")
                    .tempdir_in("/tmp")
                    .map_err(io("node tempdir"))?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let mut created: Vec<PathBuf> = MACHINE_PATHS
            .iter()
            .map(PathBuf::from)
            .chain(kubepods_dirs())
            .filter(|p| !p.exists())
            .collect();
        created.sort();
        let state = MachineState {
            dir: dir.clone(),
            bin_dir: bin_dir.clone(),
            detached: opts.lifetime == Lifetime::Detached,
            kubeconfig: None,
            ip_forward: read_trim("/proc/sys/net/ipv4/ip_forward"),
            core_pattern: read_trim("/proc/sys/kernel/core_pattern"),
            core_pipe_limit: read_trim("/proc/sys/kernel/core_pipe_limit"),
            created,
            nft_tables: nft_tables(),
        };
        write_state(&state)?;
        let mut node = Self {
            cp: None,
            dir: dir.clone(),
            bin_dir: bin_dir.clone(),
            containerd_socket: dir.join("containerd/c.sock"),
            state,
            procs: Vec::new(),
            lifetime: opts.lifetime,
            torn_down: false,
            _tempdir: tempdir,
            _lock: lock,
        };
        // From here a failure tears down what was started (Drop).
        node.bring_up(&opts)?;
        Ok(node)
    }

    fn bring_up(&mut self, opts: &Options) -> Result<(), Error> {
        let dir = self.dir.clone();
        let bin = self.bin_dir.clone();
        let lifetime = self.lifetime;
        // The bridge with the node's address, and the guard that keeps pods on it.
        ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", BRIDGE])?;
        ip(&["link", "set", BRIDGE, "up"])?;
        nft(&["add", "table", "inet", GUARD_TABLE])?;
        nft(&[
            "add",
            "chain",
            "inet",
            GUARD_TABLE,
            "forward",
            "{ type filter hook forward priority -10 ; policy accept ; }",
        ])?;
        nft(&[
            "add",
            "rule",
            "inet",
            GUARD_TABLE,
            "forward",
            "iifname",
            BRIDGE,
            "oifname",
            "!=",
            BRIDGE,
            "drop",
        ])?;

        let cp_opts = controlplane::Options {
            lifetime,
            node: Some(NodeApi {
                address: NODE_IP,
                node_name: NODE_NAME.to_string(),
            }),
            ..Default::default()
        };
        let cp = ControlPlane::start(&dir.join("cp"), &bin, &cp_opts)?;
        let ep = cp.endpoints.clone();
        let kubectl = cp.kubectl();
        self.cp = Some(cp);
        self.state.kubeconfig = Some(ep.kubeconfig.clone());
        write_state(&self.state)?;
        let admin_kc = ep.kubeconfig.display().to_string();

        // kube-scheduler.
        let mut sched = Command::new(bin.join("kube-scheduler"));
        sched.args([
            format!("--kubeconfig={admin_kc}"),
            format!("--authentication-kubeconfig={admin_kc}"),
            format!("--authorization-kubeconfig={admin_kc}"),
            "--leader-elect=false".to_string(),
            "--bind-address=127.0.0.1".to_string(),
            format!("--secure-port={}", free_port()?),
            "--v=1".to_string(),
        ]);
        self.procs
            .push(Proc::spawn("kube-scheduler", sched, &dir, lifetime)?);

        // containerd, its CNI network and registry hosts.
        let cdir = dir.join("containerd");
        let cni_dir = dir.join("cni");
        let hosts_dir = cdir.join("hosts/_default");
        for d in [&cdir, &cni_dir, &hosts_dir] {
            std::fs::create_dir_all(d).map_err(io(format!("mkdir {}", d.display())))?;
        }
        write(
            &cni_dir.join("10-coredump.conflist"),
            &serde_json::to_string_pretty(&json!({
                "cniVersion": "1.0.0",
                "name": CNI_NETWORK,
                "plugins": [{
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP.to_string()}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": dir.join("cni-ipam"),
                    }
                }]
            }))
            .map_err(Error::Json)?,
        )?;
        // Every registry resolves to a closed loopback port: a missing image fails fast
        // instead of being pulled from elsewhere.
        write(
            &hosts_dir.join("hosts.toml"),
            "server = \"http://127.0.0.1:9\"\n\n[host.\"http://127.0.0.1:9\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        )?;
        let sock = self.containerd_socket.clone();
        let config = format!(
            r#"version = 3
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"

[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "{pause}"

[plugins."io.containerd.cri.v1.images".registry]
  config_path = "{hosts}"

[plugins."io.containerd.cri.v1.runtime"]
  # The runtime asks for oomScoreAdj -998 otherwise, which needs CAP_SYS_RESOURCE.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_cdi = false

[plugins."io.containerd.cri.v1.runtime".containerd]
  default_runtime_name = "runc"

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
  SystemdCgroup = false

[plugins."io.containerd.cri.v1.runtime".cni]
  bin_dirs = ["/usr/lib/cni"]
  conf_dir = "{cni}"
"#,
            root = cdir.join("root").display(),
            state = cdir.join("state").display(),
            sock = sock.display(),
            opt = cdir.join("opt").display(),
            pause = PAUSE_IMAGE,
            hosts = cdir.join("hosts").display(),
            cni = cni_dir.display(),
        );
        write(&cdir.join("config.toml"), &config)?;
        let mut containerd = Command::new(bin.join("containerd"));
        containerd
            .arg(format!("--config={}", cdir.join("config.toml").display()))
            // The v2 shim from the cache first: a distribution's older shim would not speak
            // this containerd's protocol.
            .env(
                "PATH",
                format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display()),
            );
        // Cores of containers: a node's containerd runs with an unlimited RLIMIT_CORE (the
        // containers inherit it), as its systemd unit sets.
        // SAFETY: pre_exec's closure runs in the forked child: it only calls setrlimit(2)
        // (async-signal-safe) with a local struct and reads errno, allocating nothing.
        #[allow(unsafe_code)]
        unsafe {
            containerd.pre_exec(|| {
                let unlimited = libc::rlimit {
                    rlim_cur: libc::RLIM_INFINITY,
                    rlim_max: libc::RLIM_INFINITY,
                };
                if libc::setrlimit(libc::RLIMIT_CORE, &unlimited) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        self.procs
            .push(Proc::spawn("containerd", containerd, &dir, lifetime)?);
        wait_for("containerd to serve", Duration::from_secs(60), || {
            self.check_alive()?;
            Ok(self.ctr(&["version"]).ok().map(|_| ()))
        })?;
        for image in &opts.images {
            self.import(image)?;
        }

        // The kubelet.
        let kdir = dir.join("kubelet");
        std::fs::create_dir_all(&kdir).map_err(io("mkdir kubelet"))?;
        let resolv = dir.join("resolv.conf");
        write(&resolv, "")?;
        let kubelet_port = free_port()?;
        let healthz_port = free_port()?;
        let kconf = json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP.to_string(),
            "port": kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz_port,
            "authentication": {
                "anonymous": {"enabled": false},
                "webhook": {"enabled": true},
                "x509": {"clientCAFile": ep.ca_cert},
            },
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": false,
            "failSwapOn": false,
            "containerRuntimeEndpoint": format!("unix://{}", sock.display()),
            "clusterDNS": [NODE_IP.to_string()],
            "clusterDomain": "cluster.local",
            "resolvConf": resolv,
            "podLogsDir": dir.join("pod-logs"),
            "evictionHard": {
                "memory.available": "50Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": false,
            "nodeStatusUpdateFrequency": "5s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "registerNode": true,
            "protectKernelDefaults": false,
        });
        write(
            &kdir.join("config.json"),
            &serde_json::to_string_pretty(&kconf).map_err(Error::Json)?,
        )?;
        let kubelet_kc = ep
            .kubelet_kubeconfig
            .clone()
            .ok_or_else(|| Error::Setup("the control plane made no kubelet kubeconfig".into()))?;
        let mut kubelet = Command::new(bin.join("kubelet"));
        kubelet
            .args([
                format!("--config={}", kdir.join("config.json").display()),
                format!("--kubeconfig={}", kubelet_kc.display()),
                format!("--root-dir={}", kdir.join("root").display()),
                format!("--cert-dir={}", kdir.join("pki").display()),
                format!("--hostname-override={NODE_NAME}"),
                format!("--node-ip={NODE_IP}"),
                "--v=1".to_string(),
            ])
            .env(
                "PATH",
                format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display()),
            );
        self.procs
            .push(Proc::spawn("kubelet", kubelet, &dir, lifetime)?);

        // kube-proxy (nftables; every Service packet masqueraded on this one node).
        let mut proxy = Command::new(bin.join("kube-proxy"));
        proxy
            .args([
                format!("--kubeconfig={admin_kc}"),
                "--proxy-mode=nftables".to_string(),
                "--masquerade-all".to_string(),
                format!("--cluster-cidr={POD_SUBNET}"),
                format!("--hostname-override={NODE_NAME}"),
                format!("--healthz-bind-address=127.0.0.1:{}", free_port()?),
                format!("--metrics-bind-address=127.0.0.1:{}", free_port()?),
                format!("--nodeport-addresses={NODE_IP}/32"),
                "--conntrack-max-per-core=0".to_string(),
                "--conntrack-tcp-timeout-established=0".to_string(),
                "--conntrack-tcp-timeout-close-wait=0".to_string(),
                "--v=1".to_string(),
            ])
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        self.procs
            .push(Proc::spawn("kube-proxy", proxy, &dir, lifetime)?);

        // CoreDNS on the node's address: the cluster zone only.
        let ready_port = free_port()?;
        let corefile = format!(
            "cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {{\n  bind {NODE_IP}\n  errors\n  ready 127.0.0.1:{ready_port}\n  kubernetes cluster.local in-addr.arpa ip6.arpa {{\n    kubeconfig {admin_kc} admin\n    pods insecure\n  }}\n  cache 5\n}}\n"
        );
        write(&dir.join("Corefile"), &corefile)?;
        let mut coredns = Command::new(bin.join("coredns"));
        coredns.arg("-conf").arg(dir.join("Corefile"));
        self.procs
            .push(Proc::spawn("coredns", coredns, &dir, lifetime)?);

        wait_for(
            &format!("node {NODE_NAME} to be Ready"),
            Duration::from_secs(180),
            || {
                self.check_alive()?;
                let out = kubectl.run(&[
                    "get",
                    "node",
                    NODE_NAME,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ])?;
                Ok((String::from_utf8_lossy(&out.stdout).trim() == "True").then_some(()))
            },
        )?;
        wait_for("CoreDNS to be ready", Duration::from_secs(60), || {
            self.check_alive()?;
            Ok(
                crate::agent::http_get(&format!("127.0.0.1:{ready_port}"), "/ready")
                    .ok()
                    .filter(|(c, _)| *c == 200)
                    .map(|_| ()),
            )
        })?;
        // The default ServiceAccount must exist before pods can be created.
        wait_for(
            "the default ServiceAccount",
            Duration::from_secs(60),
            || {
                Ok(kubectl
                    .run(&["get", "serviceaccount", "default", "-n", "default"])?
                    .status
                    .success()
                    .then_some(()))
            },
        )?;
        Ok(())
    }

    fn check_alive(&mut self) -> Result<(), Error> {
        for p in self.procs.iter_mut() {
            if let Some(status) = p.exited() {
                return Err(Error::Exited {
                    name: p.name.clone(),
                    status: status.to_string(),
                    log: p.log_tail(30),
                });
            }
        }
        Ok(())
    }

    /// The node's control plane (kubeconfig, CA, binaries).
    pub fn endpoints(&self) -> Result<&Endpoints, Error> {
        self.cp
            .as_ref()
            .map(|c| &c.endpoints)
            .ok_or_else(|| Error::Setup("the real node's control plane is not running".into()))
    }

    /// kubectl as the cluster admin (a kubectl that fails if the node is down).
    pub fn kubectl(&self) -> Kubectl {
        match &self.cp {
            Some(cp) => cp.kubectl(),
            None => Kubectl {
                bin: self.bin_dir.join("kubectl"),
                kubeconfig: self.dir.join("cp/kubeconfig"),
                base_args: Vec::new(),
            },
        }
    }

    /// `ctr -n k8s.io ARGS` against this node's containerd.
    pub fn ctr(&self, args: &[&str]) -> Result<String, Error> {
        ctr(&self.bin_dir, &self.containerd_socket, args)
    }

    /// Imports a docker-archive into containerd's CRI namespace.
    pub fn import(&self, archive: &Path) -> Result<(), Error> {
        let a = archive.display().to_string();
        self.ctr(&["images", "import", "--local", &a])
            .or_else(|_| self.ctr(&["images", "import", &a]))
            .map(|_| ())
    }

    /// The record teardown works from.
    pub fn machine_state(&self) -> &MachineState {
        &self.state
    }

    /// Leaves everything running (`make up REAL_NODE=1`); [`down`] stops it.
    pub fn detach(mut self) -> MachineState {
        self.torn_down = true;
        for p in self.procs.drain(..) {
            std::mem::forget(p);
        }
        if let Some(cp) = self.cp.take() {
            cp.detach();
        }
        if let Some(t) = self._tempdir.take() {
            let _ = t.keep();
        }
        self.state.clone()
    }

    /// Stops pods, processes and undoes the machine changes (idempotent).
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        stop_pods(&self.kubectl(), &self.bin_dir, &self.containerd_socket);
        while let Some(mut p) = self.procs.pop() {
            p.stop();
        }
        drop(self.cp.take());
        teardown(&self.state);
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        if self.lifetime == Lifetime::Scoped {
            self.teardown();
        }
    }
}

fn ctr(bin_dir: &Path, socket: &Path, args: &[&str]) -> Result<String, Error> {
    run(Command::new(bin_dir.join("ctr"))
        .arg(format!("--address={}", socket.display()))
        .args(["-n", "k8s.io"])
        .args(args))
}

fn write(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(io(format!("write {}", path.display())))
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub fn read_state() -> Option<MachineState> {
    let text = std::fs::read_to_string(STATE_FILE).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_state(state: &MachineState) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(state).map_err(Error::Json)?;
    let tmp = format!("{STATE_FILE}.tmp");
    write(Path::new(&tmp), &text)?;
    std::fs::rename(&tmp, STATE_FILE).map_err(io("rename state file"))
}

/// Pods go through Kubernetes so that the kubelet stops their sandboxes (CNI DEL): the
/// APIService first (namespace deletion stalls on a group without a server), then every
/// namespace but the system ones, then any pod left; then until containerd runs no task.
fn stop_pods(kubectl: &Kubectl, bin_dir: &Path, socket: &Path) {
    let _ = kubectl.run(&[
        "delete",
        "apiservice",
        "v1alpha1.coredump.io",
        "--ignore-not-found",
        "--wait=false",
    ]);
    let keep: BTreeSet<&str> = ["default", "kube-system", "kube-public", "kube-node-lease"]
        .into_iter()
        .collect();
    if let Ok(out) = kubectl.run(&["get", "namespaces", "-o", "name"]) {
        let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("namespace/"))
            .filter(|n| !keep.contains(n))
            .map(str::to_string)
            .collect();
        if !names.is_empty() {
            let mut args = vec!["delete", "namespace", "--wait=false"];
            args.extend(names.iter().map(String::as_str));
            let _ = kubectl.run(&args);
        }
    }
    let _ = kubectl.run(&["delete", "pods", "--all", "-A", "--wait=false"]);
    let _ = wait_for("pods to be gone", POD_STOP_TIMEOUT, || {
        let out = kubectl.run(&["get", "pods", "-A", "-o", "name"])?;
        Ok(
            (out.status.success() && String::from_utf8_lossy(&out.stdout).trim().is_empty())
                .then_some(()),
        )
    });
    let _ = wait_for("containerd to run no task", Duration::from_secs(60), || {
        let out = ctr(bin_dir, socket, &["tasks", "ls", "-q"])?;
        Ok(out.trim().is_empty().then_some(()))
    });
}

/// Undoes what a node changed on the machine, from its record (see the module docs).
/// Safe to call more than once and from another process.
pub fn teardown(state: &MachineState) {
    // Processes our containerd started and that outlive it: shims and containers.
    kill_node_processes(state);
    // Mounts under the node's directory (pod volumes, netns, rootfs), deepest first.
    unmount_below(&state.dir);
    // Pod cgroups (created by the kubelet): deepest first.
    for d in kubepods_dirs() {
        if state.created.contains(&d) {
            remove_cgroup_tree(&d);
        }
    }
    for table in [
        ("ip", "kube-proxy"),
        ("ip6", "kube-proxy"),
        ("inet", GUARD_TABLE),
    ] {
        let _ = nft(&["delete", "table", table.0, table.1]);
    }
    for table in nft_tables() {
        if !state.nft_tables.contains(&table) {
            if let Some((family, name)) = table.split_once(' ') {
                let _ = nft(&["delete", "table", family, name]);
            }
        }
    }
    let _ = ip(&["link", "del", BRIDGE]);
    if !state.ip_forward.is_empty() {
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", &state.ip_forward);
    }
    // Our handler left as core_pattern (an agent that could not restore it): put the
    // node's previous values back, under the node handler's lock.
    let pattern = read_trim("/proc/sys/kernel/core_pattern");
    if pattern.contains("/var/lib/coredump-detector/") && !state.core_pattern.is_empty() {
        let _lock = coredump_node_handler::install::PatternLock::acquire();
        let _ = std::fs::write("/proc/sys/kernel/core_pattern", &state.core_pattern);
        let _ = std::fs::write("/proc/sys/kernel/core_pipe_limit", &state.core_pipe_limit);
    }
    // CNI results libcni caches for our network; links to our pods' logs.
    if let Ok(rd) = std::fs::read_dir("/var/lib/cni/results") {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(CNI_NETWORK) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/var/log/containers") {
        for e in rd.flatten() {
            if std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(&state.dir)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    for p in &state.created {
        if p.starts_with("/sys/fs/cgroup") {
            continue;
        }
        unmount_below(p);
        let _ = std::fs::remove_dir_all(p);
    }
    let _ = std::fs::remove_file(STATE_FILE);
}

/// SIGKILLs the shims of this node's containerd and every process in its pod cgroups.
fn kill_node_processes(state: &MachineState) {
    let shim = state.bin_dir.join("containerd-shim-runc-v2");
    let socket = state.dir.join("containerd/c.sock");
    let socket = socket.to_string_lossy().into_owned();
    let mut pids = BTreeSet::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let exe = std::fs::read_link(e.path().join("exe")).ok();
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if exe.as_deref() == Some(shim.as_path()) && cmdline.contains(&socket) {
                pids.insert(pid);
            }
        }
    }
    for d in kubepods_dirs() {
        if state.created.contains(&d) {
            collect_cgroup_pids(&d, &mut pids);
        }
    }
    for pid in &pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    if !pids.is_empty() {
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn collect_cgroup_pids(dir: &Path, out: &mut BTreeSet<i32>) {
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_cgroup_pids(&e.path(), out);
            }
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lazily unmounts every mount point at or below `dir`, deepest first.
fn unmount_below(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    points.dedup();
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// `make down` for a detached node: stops its pods, then its processes (by pid file),
/// then undoes the machine changes.
pub fn down() -> Result<bool, Error> {
    let Some(state) = read_state() else {
        return Ok(false);
    };
    if let Some(kc) = &state.kubeconfig {
        let kubectl = Kubectl {
            bin: state.bin_dir.join("kubectl"),
            kubeconfig: kc.clone(),
            base_args: Vec::new(),
        };
        stop_pods(
            &kubectl,
            &state.bin_dir,
            &state.dir.join("containerd/c.sock"),
        );
    }
    let order = [
        "kube-proxy",
        "coredns",
        "kubelet",
        "kube-scheduler",
        "containerd",
        "cp/kube-controller-manager",
        "cp/kube-apiserver",
        "cp/etcd",
    ];
    for name in order {
        let f = state.dir.join(format!("{name}.pid"));
        if let Some(pid) = read_pid(&f) {
            if Path::new(&format!("/proc/{pid}")).exists() {
                crate::process::stop_group(pid, None, Duration::from_secs(10));
            }
        }
        let _ = std::fs::remove_file(&f);
    }
    teardown(&state);
    Ok(true)
}

/// The overlay an admin of a registry-less cluster applies (deploy/README.md).
pub const OVERLAY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/overlays/local");
const IMAGES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/images");
/// The test workloads' images (deploy/images/test-images.sh).
pub const CRASHER_IMAGE: &str = "docker.io/coredump-detector/test-crasher:local";
pub const CRASHER_MT_IMAGE: &str = "docker.io/coredump-detector/test-crasher-mt:local";
pub const CRASHER_GO_IMAGE: &str = "docker.io/coredump-detector/test-crasher-go:local";
/// What the agent installs as core_pattern on a node (deploy/base/node-agent.yaml).
pub const HANDLER_PATTERN_PREFIX: &str = "|/var/lib/coredump-detector/coredump-node-handler ";

/// Image archives for a node: the add-on's (deploy/images/build.sh --archive) and the
/// local ones (pause and the test workloads, deploy/images/test-images.sh), written to
/// `dir`; the workloads' binaries (with symbols, for gdb) land in `dir/bin`.
pub fn build_images(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    std::fs::create_dir_all(dir).map_err(io(format!("mkdir {}", dir.display())))?;
    for script in ["build.sh", "test-images.sh"] {
        let path = Path::new(IMAGES).join(script);
        let out = Command::new("bash")
            .arg(&path)
            .arg("--archive")
            .arg(dir)
            .output()
            .map_err(io(format!("run {}", path.display())))?;
        if !out.status.success() {
            return Err(Error::Setup(format!(
                "{} failed:\n{}",
                path.display(),
                crate::process::tail_lines(&String::from_utf8_lossy(&out.stderr), 40)
            )));
        }
    }
    let mut archives: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(format!("list {}", dir.display())))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    archives.sort();
    Ok(archives)
}

impl RealNode {
    /// Installs the add-on as deploy/README.md tells an admin of a cluster without a
    /// StorageClass and without a registry (the images are already imported): a local
    /// PersistentVolume for the server's claim (as deploy/overlays/local/local-pv.yaml,
    /// with this node's name and a directory under the node's), `kubectl apply -k
    /// deploy/overlays/local`, then the README's waits: the StatefulSet and the DaemonSet
    /// rolled out, the APIService Available, the handler installed as core_pattern.
    pub fn install_addon(&self) -> Result<(), Error> {
        let kubectl = self.kubectl();
        let pv_dir = self.dir.join("pv");
        std::fs::create_dir_all(&pv_dir).map_err(io("mkdir pv"))?;
        kubectl.apply(&local_pv(&pv_dir))?;
        kubectl.ok(&["apply", "-k", OVERLAY])?;
        wait_installed(&kubectl, Duration::from_secs(600))
    }
}

/// deploy/overlays/local/local-pv.yaml for this node, at `path`.
pub fn local_pv(path: &Path) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": "coredump-apiserver-data",
                     "labels": {"app.kubernetes.io/name": "coredump-detector"}},
        "spec": {
            "capacity": {"storage": "20Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "volumeMode": "Filesystem",
            "claimRef": {"namespace": "coredump-system", "name": "data-coredump-apiserver-0"},
            "local": {"path": path},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [{
                "key": "kubernetes.io/hostname", "operator": "In", "values": [NODE_NAME]
            }]}]}}
        }
    })
}

/// The waits of deploy/README.md's install: rollouts, APIService Available, core_pattern.
pub fn wait_installed(kubectl: &Kubectl, timeout: Duration) -> Result<(), Error> {
    let t = format!("--timeout={}s", timeout.as_secs());
    kubectl.ok(&[
        "-n",
        "coredump-system",
        "rollout",
        "status",
        "statefulset/coredump-apiserver",
        &t,
    ])?;
    kubectl.ok(&[
        "-n",
        "coredump-system",
        "rollout",
        "status",
        "daemonset/coredump-node-agent",
        &t,
    ])?;
    wait_for("the APIService to be Available", timeout, || {
        let out = kubectl.run(&[
            "get",
            "apiservice",
            "v1alpha1.coredump.io",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Available\")].status}",
        ])?;
        Ok((String::from_utf8_lossy(&out.stdout).trim() == "True").then_some(()))
    })?;
    wait_for("the handler as core_pattern", timeout, || {
        Ok(read_trim("/proc/sys/kernel/core_pattern")
            .starts_with(HANDLER_PATTERN_PREFIX)
            .then_some(()))
    })
}
