//! `make up` / `make down`: a local control plane with the add-on, left running in the
//! background, its state (kubeconfig, logs, pid files) in `.local/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use coredump_integration::bins::{controlplane_bin_dir, workspace_bin};
use coredump_integration::controlplane::{self, ControlPlane};
use coredump_integration::extension::{self, ExtensionServer};
use coredump_integration::process::{stop_group, Lifetime};

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
    Up,
    /// Stops everything `up` started.
    Down,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Up => up(&cli.dir),
        Cmd::Down => down(&cli.dir),
    }
}

fn up(dir: &Path) -> anyhow::Result<()> {
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
    let server = ExtensionServer::start(
        &cp.endpoints,
        "apiserver",
        &workspace_bin("coredump-apiserver")?,
        extension::Options {
            lifetime: Lifetime::Detached,
            ..Default::default()
        },
    )
    .context("extension server")?;
    server.detach();
    let ep = cp.detach();

    let kubeconfig = dir.join("kubeconfig");
    std::fs::copy(&ep.kubeconfig, &kubeconfig).context("copy kubeconfig")?;
    let local_bin = dir.join("bin");
    std::fs::create_dir_all(&local_bin)?;
    let kubectl = local_bin.join("kubectl");
    let _ = std::fs::remove_file(&kubectl);
    std::os::unix::fs::symlink(bin_dir.join("kubectl"), &kubectl).context("link kubectl")?;

    println!(
        "Control plane and coredump.io add-on are running (logs in {state}).\n\n\
         export KUBECONFIG=$PWD/{kc} PATH=$PWD/{bin}:$PATH\n\
         kubectl api-resources --api-group=coredump.io\n\
         kubectl get coredumps.coredump.io -A\n\
         kubectl --context alice get coredumps -n default   # a token user (also: bob)\n\n\
         Stop it all with: make down",
        state = state.display(),
        kc = kubeconfig.display(),
        bin = local_bin.display(),
    );
    Ok(())
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
    // Dependents first: the add-on, then kube-apiserver, then etcd.
    let order = [
        "coredump",
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
    Ok(())
}
