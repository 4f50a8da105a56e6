//! `make up` / `make down` / `make demo`: a local control plane with the add-on, the roles
//! of `deploy/rbac` as an install applies them, a namespace for each token user, and (as
//! root) the node agent for this machine, left running in the background, its state
//! (kubeconfig, logs, pid files) in `.local/`; and one real crash to see it work. With
//! `--storage s3` (`make up STORAGE=s3`) the server keeps the cores in a bucket of a
//! versitygw started beside it instead of its data directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use coredump_integration::agent::{create_node, Agent, AgentOptions};
use coredump_integration::bins::{controlplane_bin_dir, workspace_bin};
use coredump_integration::controlplane::{self, ControlPlane, USERS};
use coredump_integration::demo;
use coredump_integration::endpoints::Endpoints;
use coredump_integration::extension::{self, ExtensionServer};
use coredump_integration::kubectl::Kubectl;
use coredump_integration::process::{stop_group, wait_for, Lifetime};
use coredump_integration::realnode::{self, RealNode};
use coredump_integration::s3::S3Server;
use serde_json::json;

/// The agent's handler and spool paths go into core_pattern (at most 127 characters):
/// a state directory deeper than this keeps the agent's files under /tmp instead.
const MAX_AGENT_DIR_LEN: usize = 40;

/// The users' roles, the agent's and the server's, as a real install applies them
/// (deploy/README.md): `kubectl apply -k` of this checkout's `deploy/rbac`.
const RBAC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/rbac");

/// The ClusterRole each token user's group holds in its own namespace: the built-in `edit`,
/// into which the controller manager aggregates `coredump-edit` (list, download, delete).
const USER_ROLE: &str = "edit";

/// How long `up` waits for what the README's first commands rely on: the aggregated roles
/// and the group's OpenAPI document in kube-apiserver.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Parser)]
#[command(about = "Runs a local control plane with the coredump.io add-on")]
struct Cli {
    /// Where state, logs and pid files live.
    #[arg(long, env = "COREDUMP_LOCAL_DIR", default_value = ".local")]
    dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Starts everything in the background and returns once it is ready.
    Up {
        /// A real node instead (kubelet, containerd, CNI, kube-proxy, CoreDNS) with the
        /// add-on installed from deploy/overlays/local as an admin would (`make up
        /// REAL_NODE=1`; root).
        #[arg(long, env = "REAL_NODE", value_parser = flag, num_args = 0..=1,
              default_value = "0", default_missing_value = "1")]
        real_node: bool,
        /// With --real-node: image archives already built (build.sh and test-images.sh
        /// --archive) instead of building them.
        #[arg(long)]
        images: Option<PathBuf>,
        /// Where the server keeps the cores: `fs` (its data directory) or `s3` (a bucket
        /// of a local S3 server, versitygw, started with it; `make up STORAGE=s3`).
        #[arg(long, value_enum, default_value = "fs")]
        storage: Storage,
    },
    /// Stops everything `up` started (the agent first: it restores core_pattern).
    Down,
    /// Crashes a real program in pod demo/crasher and waits for its Stored Coredump.
    Demo {
        /// How long to wait for the Coredump, its Event and the download.
        #[arg(long, default_value = "60s", value_parser = seconds)]
        timeout: Duration,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Storage {
    Fs,
    S3,
}

/// The key prefix of the cores in `up --storage s3`'s bucket.
const S3_PREFIX: &str = "cores";

/// `REAL_NODE=1` / `--real-node`: empty, 0 and false are off.
fn flag(s: &str) -> Result<bool, String> {
    Ok(!matches!(s.trim(), "" | "0" | "false" | "no"))
}

fn seconds(s: &str) -> Result<Duration, String> {
    s.strip_suffix('s')
        .unwrap_or(s)
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("{s:?}: expected seconds, e.g. 60s"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Up {
            real_node: true,
            storage: Storage::S3,
            ..
        } => bail!("--storage s3 is for the local control plane, not --real-node"),
        Cmd::Up {
            real_node: true,
            images,
            ..
        } => up_real_node(&cli.dir, images),
        Cmd::Up { storage, .. } => up(&cli.dir, storage),
        Cmd::Down => down(&cli.dir),
        Cmd::Demo { timeout } => run_demo(&cli.dir, timeout),
    }
}

fn up(dir: &Path, storage: Storage) -> anyhow::Result<()> {
    let state = dir.join("state");
    if has_pids(&state) {
        bail!(
            "{} holds a running environment: `make down` first",
            state.display()
        );
    }
    let _ = std::fs::remove_dir_all(&state);
    let bin_dir = controlplane_bin_dir().context("control-plane binaries")?;
    let opts = controlplane::Options {
        lifetime: Lifetime::Detached,
        ..Default::default()
    };
    let cp = ControlPlane::start(&state, &bin_dir, &opts).context("control plane")?;
    let mut ext_opts = extension::Options {
        lifetime: Lifetime::Detached,
        ..Default::default()
    };
    let s3 = match storage {
        Storage::Fs => None,
        Storage::S3 => {
            let s3 = S3Server::start_in(&state.join("s3"), Lifetime::Detached)
                .context("S3 server (versitygw)")?;
            ext_opts.args.extend(s3.server_args(S3_PREFIX));
            ext_opts.env.extend(s3.server_env());
            write_s3_env(&s3)?;
            Some(s3)
        }
    };
    let server = ExtensionServer::start(
        &cp.endpoints,
        "apiserver",
        &workspace_bin("coredump-apiserver")?,
        ext_opts,
    )
    .context("extension server")?;
    let kubectl = Kubectl::new(&cp.endpoints);
    if let Err(e) = grant_users(&kubectl).and_then(|()| wait_openapi(&kubectl)) {
        let mut server = server;
        server.stop();
        return Err(e);
    }
    let agent_note = match start_agent(&state, &cp.endpoints, &server) {
        Ok(node) => {
            format!("The node agent serves node {node}: `make demo` crashes a program there.")
        }
        Err(e) => format!("The node agent is not running ({e:#}); `make demo` needs it."),
    };
    let storage_note = match &s3 {
        None => "Cores are kept in the server's data directory (make up STORAGE=s3: in a bucket)."
            .to_string(),
        Some(s3) => s3_note(s3, &state.join("s3")),
    };
    server.detach();
    if let Some(s3) = s3 {
        s3.detach();
    }
    let ep = cp.detach();

    let kubeconfig = dir.join("kubeconfig");
    std::fs::copy(&ep.kubeconfig, &kubeconfig).context("copy kubeconfig")?;
    let local_bin = dir.join("bin");
    link_tools(&local_bin, &bin_dir.join("kubectl"))?;

    let users: Vec<String> = USERS
        .iter()
        .map(|u| format!("{} in {}", u.name, u.group))
        .collect();
    println!(
        "Control plane and coredump.io add-on are running (logs in {state}).\n\n\
         export KUBECONFIG={kc} PATH={bin}:$PATH\n\
         kubectl api-resources --api-group=coredump.io\n\
         kubectl get coredumps.coredump.io -A\n\
         kubectl --context alice get coredumps -n team-a   # token users (role {USER_ROLE}): {users}\n\
         kubectl --context alice get coredumps -n team-b   # Forbidden: team-b is bob's\n\n\
         {agent_note}\n\
         {storage_note}\n\
         Stop it all with: make down",
        state = state.display(),
        kc = shell_path(&kubeconfig),
        bin = shell_path(&local_bin),
        users = users.join(", "),
    );
    Ok(())
}

/// `<s3 dir>/env`: the bucket's endpoint and credentials as shell variables, for a user's
/// S3 client (`set -a; . .local/state/s3/env`).
fn write_s3_env(s3: &S3Server) -> anyhow::Result<()> {
    let env = format!(
        "AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={}\nAWS_REGION={}\nAWS_ENDPOINT_URL={}\nCOREDUMP_BUCKET={}\nCOREDUMP_PREFIX={S3_PREFIX}\n",
        s3.access_key, s3.secret_key, s3.region, s3.endpoint, s3.bucket
    );
    let path = s3.dir.join("env");
    std::fs::write(&path, env).with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// What `up --storage s3` prints about the bucket: where the cores go and how to look.
fn s3_note(s3: &S3Server, dir: &Path) -> String {
    format!(
        "Cores are kept in bucket {bucket} of versitygw at {endpoint}, as \
         {S3_PREFIX}/<namespace>/<name>_<uid>.zst (its posix root: {root}). List them:\n\
         (set -a; . {env}; curl -sS --aws-sigv4 \"aws:amz:$AWS_REGION:s3\" --user \"$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY\" -H \"x-amz-content-sha256: UNSIGNED-PAYLOAD\" \"$AWS_ENDPOINT_URL/$COREDUMP_BUCKET?list-type=2&prefix=$COREDUMP_PREFIX%2F\")",
        bucket = s3.bucket,
        endpoint = s3.endpoint,
        root = shell_path(&s3.root.join(&s3.bucket)),
        env = shell_path(&dir.join("env")),
    )
}

/// `path` as the user can paste it from where they ran `make up`.
fn shell_path(path: &Path) -> String {
    if path.is_absolute() {
        path.display().to_string()
    } else {
        format!("$PWD/{}", path.display())
    }
}

/// Applies deploy/rbac, then gives each token user's group a namespace of the same name
/// (`team-a`, `team-b`) where it holds [`USER_ROLE`]; returns once kube-apiserver allows
/// each user to download cores there (the controller manager has aggregated the roles).
fn grant_users(kubectl: &Kubectl) -> anyhow::Result<()> {
    kubectl
        .ok(&["apply", "-k", RBAC])
        .context("kubectl apply -k deploy/rbac")?;
    let mut items = Vec::new();
    for u in USERS {
        items.push(json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": u.group}
        }));
        items.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": format!("{}-{USER_ROLE}", u.group), "namespace": u.group},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": USER_ROLE
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": u.group}]
        }));
    }
    kubectl
        .apply(&json!({"apiVersion": "v1", "kind": "List", "items": items}))
        .context("the users' namespaces and RoleBindings")?;
    for u in USERS {
        let user = kubectl.context(u.name);
        wait_for(
            &format!("{} to be allowed to download cores in {}", u.name, u.group),
            READY_TIMEOUT,
            || {
                let out = user.run(&[
                    "auth",
                    "can-i",
                    "get",
                    "coredumps.coredump.io",
                    "--subresource=download",
                    "-n",
                    u.group,
                ])?;
                Ok((String::from_utf8_lossy(&out.stdout).trim() == "yes").then_some(()))
            },
        )?;
    }
    Ok(())
}

/// Waits until kube-apiserver serves the group's OpenAPI document, which `kubectl explain`
/// reads: the aggregator fetches it from the server a moment after the APIService is
/// Available.
fn wait_openapi(kubectl: &Kubectl) -> anyhow::Result<()> {
    let path = "apis/coredump.io/v1alpha1";
    wait_for(
        "kube-apiserver to serve coredump.io's OpenAPI document",
        READY_TIMEOUT,
        || {
            let out = kubectl.run(&["get", "--raw", "/openapi/v3"])?;
            Ok((out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains(&format!("\"{path}\"")))
            .then_some(()))
        },
    )?;
    Ok(())
}

/// This machine's hostname as a Node name (a DNS-1123 subdomain).
fn local_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .unwrap_or_default();
    let name: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches(|c| c == '-' || c == '.');
    if name.is_empty() {
        "localhost".to_string()
    } else {
        name.to_string()
    }
}

/// Registers this machine as a Node and starts the agent for it (root only: it installs
/// core_pattern). Its pid file lands under `state/agent`, so `down` stops it like the rest.
fn start_agent(state: &Path, ep: &Endpoints, server: &ExtensionServer) -> anyhow::Result<String> {
    if !nix::unistd::geteuid().is_root() {
        bail!("it needs root to install core_pattern");
    }
    let node = local_node_name();
    create_node(&Kubectl::new(ep), &node).context("create the Node")?;
    let link = state.join("agent");
    let abs = std::path::absolute(&link)?;
    let dir = if abs.as_os_str().len() <= MAX_AGENT_DIR_LEN {
        abs
    } else {
        let tmp = tempfile::Builder::new()
            .prefix("cda")
            .tempdir_in("/tmp")?
            .keep();
        std::os::unix::fs::symlink(&tmp, &link).context("link the agent's directory")?;
        tmp
    };
    std::fs::create_dir_all(&dir)?;
    let opts = AgentOptions {
        lifetime: Lifetime::Detached,
        dir: Some(dir),
        ready_timeout: Duration::from_secs(120),
        ..AgentOptions::new(&node)
    };
    let agent = Agent::start_with(ep, &server.url, &server.ca_cert, opts).context("start")?;
    agent.detach();
    std::fs::write(state.join("node-name"), &node)?;
    Ok(node)
}

/// `make up REAL_NODE=1`: a real node with the add-on from deploy/overlays/local, left
/// running; its state in `<dir>/node` (kubeconfig copied to `<dir>/kubeconfig`).
fn up_real_node(dir: &Path, images: Option<PathBuf>) -> anyhow::Result<()> {
    let state = dir.join("state");
    if has_pids(&state) {
        bail!(
            "{} holds a running environment: `make down` first",
            state.display()
        );
    }
    let start = std::time::Instant::now();
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state)?;
    let images = match images {
        Some(d) => d,
        None => {
            let d = std::path::absolute(dir.join("images"))?;
            println!("building the images into {} …", d.display());
            realnode::build_images(&d).context("build the images")?;
            d
        }
    };
    let archives: Vec<PathBuf> = std::fs::read_dir(&images)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    let built = start.elapsed();
    let node = RealNode::start(realnode::Options {
        lifetime: Lifetime::Detached,
        dir: Some(std::path::absolute(state.join("node"))?),
        images: archives,
    })
    .context("real node")?;
    let ready = start.elapsed();
    if let Err(e) = node.install_addon() {
        let mut node = node;
        node.teardown();
        return Err(e).context("install the add-on");
    }
    let ep = node.endpoints()?.clone();
    node.detach();
    // The node's name and where the crasher's binary (with symbols) is, for `make demo`.
    std::fs::write(
        state.join("real-node"),
        format!(
            "{}\n{}\n",
            realnode::NODE_NAME,
            images.join("bin").display()
        ),
    )?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::copy(&ep.kubeconfig, &kubeconfig).context("copy kubeconfig")?;
    let local_bin = dir.join("bin");
    link_tools(&local_bin, &ep.bin_dir.join("kubectl"))?;
    println!(
        "A real node ({node}) runs with the add-on installed from deploy/overlays/local (images {b:.0} s, node Ready {r:.0} s, installed {i:.0} s; logs in {state}).\n\n\
         export KUBECONFIG={kc} PATH={bin}:$PATH\n\
         kubectl get nodes -o wide\n\
         kubectl -n coredump-system get pods -o wide\n\
         kubectl get coredumps -A\n\n\
         `make demo` crashes a real container there. Stop it all with: make down",
        node = realnode::NODE_NAME,
        b = built.as_secs_f64(),
        r = ready.as_secs_f64(),
        i = start.elapsed().as_secs_f64(),
        state = state.display(),
        kc = shell_path(&kubeconfig),
        bin = shell_path(&local_bin),
    );
    Ok(())
}

/// `make demo` on a real node: `kubectl run` of the local crasher image in namespace demo,
/// then its Stored Coredump, Event and download.
fn run_real_demo(dir: &Path, timeout: Duration) -> anyhow::Result<()> {
    let bin = std::path::absolute(dir.join("bin"))?;
    let kubectl = Kubectl {
        bin: bin.join("kubectl"),
        kubeconfig: std::path::absolute(dir.join("kubeconfig"))?,
        base_args: Vec::new(),
    };
    let ns = demo::NAMESPACE;
    kubectl.apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))?;
    let pod = format!(
        "crasher-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
    );
    kubectl
        .ok(&[
            "run",
            &pod,
            "-n",
            ns,
            "--image",
            realnode::CRASHER_IMAGE,
            "--image-pull-policy=Never",
            "--restart=Never",
            "--",
            "segv",
        ])
        .context("kubectl run")?;
    let start = std::time::Instant::now();
    let cd = wait_for("the Coredump to be Stored", timeout, || {
        let out = kubectl.ok(&["get", "coredumps", "-n", ns, "-o", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out)
            .map_err(|e| coredump_integration::Error::Setup(format!("coredumps json: {e}")))?;
        Ok(v["items"].as_array().and_then(|items| {
            items
                .iter()
                .find(|cd| {
                    cd["spec"]["podName"] == pod.as_str() && cd["status"]["phase"] == "Stored"
                })
                .cloned()
        }))
    })?;
    let name = cd["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let spec = &cd["spec"];
    let raw = kubectl.run(&[
        "get",
        "--raw",
        &format!("/apis/coredump.io/v1alpha1/namespaces/{ns}/coredumps/{name}/download"),
    ])?;
    use sha2::Digest as _;
    let sha = hex::encode(sha2::Sha256::digest(&raw.stdout));
    if sha != spec["sha256"].as_str().unwrap_or_default() {
        bail!(
            "downloaded core has sha256 {sha}, the spec says {}",
            spec["sha256"]
        );
    }
    let crasher = std::fs::read_to_string(dir.join("state/real-node"))
        .ok()
        .and_then(|s| s.lines().nth(1).map(|l| Path::new(l).join("crasher")))
        .unwrap_or_else(|| dir.join("images/bin/crasher"));
    println!(
        "kubectl run {pod} ({img}) crashed: coredump {ns}/{name} Stored {secs:.1} s after the pod was created (pod {p}, container {c}, signal {sig}, {size} bytes, sha256 {sha}).\n\n\
         export KUBECONFIG={kc} PATH={bin}:$PATH\n\
         kubectl get coredumps -n {ns}\n\
         kubectl get coredump {name} -n {ns} -o yaml\n\
         kubectl get events -n {ns} --field-selector reason=CoreDumped\n\
         kubectl get --raw /apis/coredump.io/v1alpha1/namespaces/{ns}/coredumps/{name}/download > {name}.core\n\
         gdb -batch -ex bt {crasher} {name}.core\n\n\
         Run `make demo` again for another crash.",
        img = realnode::CRASHER_IMAGE,
        secs = start.elapsed().as_secs_f64(),
        p = spec["podName"],
        c = spec["containerName"],
        sig = spec["signalName"],
        size = raw.stdout.len(),
        kc = kubectl.kubeconfig.display(),
        bin = bin.display(),
        crasher = crasher.display(),
    );
    Ok(())
}

fn run_demo(dir: &Path, timeout: Duration) -> anyhow::Result<()> {
    let state = dir.join("state");
    if state.join("real-node").exists() {
        return run_real_demo(dir, timeout);
    }
    let node = std::fs::read_to_string(state.join("node-name"))
        .map(|n| n.trim().to_string())
        .map_err(|_| {
            anyhow::anyhow!(
                "no node agent is running from {}: `make up` (as root) first",
                state.display()
            )
        })?;
    let bin = std::path::absolute(dir.join("bin"))?;
    let kubectl = Kubectl {
        bin: bin.join("kubectl"),
        kubeconfig: std::path::absolute(dir.join("kubeconfig"))?,
        base_args: Vec::new(),
    };
    let outcome = demo::run(
        &kubectl,
        &node,
        &std::path::absolute(dir.join("demo"))?,
        timeout,
    )
    .context("demo crash")?;
    println!(
        "{}",
        demo::instructions(&outcome, &kubectl.kubeconfig, &bin)
    );
    let s3_dir = state.join("s3");
    if s3_dir.is_dir() {
        println!("{}", demo_object(&s3_dir, &outcome)?);
    }
    Ok(())
}

/// With `up --storage s3`: the demo's core as the object it is in the bucket (read from
/// versitygw's posix root), or an error if it is not there.
fn demo_object(s3_dir: &Path, outcome: &demo::Outcome) -> anyhow::Result<String> {
    let dir = PathBuf::from(format!("{S3_PREFIX}/{}", demo::NAMESPACE));
    let files = s3_dir
        .join("root")
        .join(coredump_integration::s3::BUCKET)
        .join(&dir);
    let object = std::fs::read_dir(&files)
        .into_iter()
        .flatten()
        .flatten()
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{}_", outcome.coredump))
        })
        .with_context(|| {
            format!(
                "the core of {} is not in the bucket ({} has no {}_<uid>.zst)",
                outcome.coredump,
                files.display(),
                outcome.coredump
            )
        })?;
    let size = object.metadata()?.len();
    Ok(format!(
        "In the bucket: s3://{}/{}/{} ({size} bytes, zstd)",
        coredump_integration::s3::BUCKET,
        dir.display(),
        object.file_name().to_string_lossy()
    ))
}

fn pid_files(state: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = walk(state)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "pid"))
        .collect();
    files.sort();
    files
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn has_pids(state: &Path) -> bool {
    pid_files(state)
        .iter()
        .any(|f| read_pid(f).is_some_and(alive))
}

fn read_pid(f: &Path) -> Option<u32> {
    std::fs::read_to_string(f).ok()?.trim().parse().ok()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn down(dir: &Path) -> anyhow::Result<()> {
    let state = dir.join("state");
    if realnode::read_state().is_some_and(|s| s.detached) {
        println!("stopping the real node (pods first) and undoing its changes");
        realnode::down().context("real node down")?;
        let _ = std::fs::remove_file(state.join("real-node"));
        let _ = std::fs::remove_dir_all(state.join("node"));
    }
    // Dependents first: the agent (it restores core_pattern), the add-on, its S3 server,
    // then kube-apiserver, then etcd.
    let order = [
        "agent",
        "coredump",
        "versitygw",
        "kube-controller-manager",
        "kube-apiserver",
        "etcd",
    ];
    let mut files = pid_files(&state);
    files.sort_by_key(|f| {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        order.iter().position(|o| name.starts_with(o)).unwrap_or(0)
    });
    for f in files {
        if let Some(pid) = read_pid(&f) {
            if alive(pid) {
                println!("stopping {} (pid {pid})", f.display());
                stop_group(pid, None, Duration::from_secs(10));
            }
        }
        let _ = std::fs::remove_file(&f);
    }
    // The agent's directory, when core_pattern's length limit put it under /tmp.
    let link = state.join("agent");
    if let Ok(target) = std::fs::read_link(&link) {
        let _ = std::fs::remove_dir_all(target);
        let _ = std::fs::remove_file(link);
    }
    Ok(())
}

/// `.local/bin`: kubectl, and the kubectl coredump plugin beside it, so that the README's
/// `PATH=$PWD/.local/bin:$PATH` gives both (kubectl finds plugins on PATH).
fn link_tools(local_bin: &Path, kubectl: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(local_bin)?;
    for (name, target) in [
        ("kubectl", kubectl.to_path_buf()),
        (
            "kubectl-coredump",
            workspace_bin("kubectl-coredump").context("kubectl-coredump")?,
        ),
    ] {
        let link = local_bin.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).with_context(|| format!("link {name}"))?;
    }
    Ok(())
}
