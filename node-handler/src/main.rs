//! `coredump-node-handler`: see README.md. Parses the command line, sets up
//! logging and hands over to the library.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use coredump_node_handler::agent::{self, AgentOptions, AnalysisSettings, InstallSettings};
use coredump_node_handler::analysis::sandbox::SandboxOptions;
use coredump_node_handler::capture::{self, CaptureOptions, KernelArgs, Outcome, Overrides};
use coredump_node_handler::config::CaptureConfig;
use coredump_node_handler::deliver::ServerOptions;
use coredump_node_handler::install::{self, InstallOptions, PidfdMode, Sysctls};
use coredump_node_handler::pattern::DEFAULT_SPOOL;
use coredump_node_handler::spool::Spool;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Rotate the capture log past this size (one old file is kept).
const MAX_LOG_BYTES: u64 = 1 << 20;

#[derive(Parser)]
#[command(name = "coredump-node-handler", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Store one core dump; run by the kernel through core_pattern.
    Capture(CaptureCmd),
    /// Save the current core_pattern and core_pipe_limit and install ours.
    InstallPattern(InstallCmd),
    /// Put back what install-pattern saved (DaemonSet preStop, scripts).
    RestorePattern(RestoreCmd),
    /// The node agent (DaemonSet): install the handler, keep optout.json
    /// current, deliver spooled cores to the server.
    Agent(Box<AgentCmd>),
    /// Analyze one spooled core and print the analysis as JSON. The agent runs
    /// it as a child with a time and memory limit: its input is hostile.
    Analyze(AnalyzeCmd),
}

#[derive(clap::Args)]
struct AnalyzeCmd {
    /// The spool entry (`<spool>/cores/<id>`).
    #[arg(long)]
    entry_dir: PathBuf,
    /// The build-id cache (`<spool>/buildid`).
    #[arg(long)]
    cache_dir: PathBuf,
    /// The crashed container's CRI log file, for the log tail.
    #[arg(long)]
    log_file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct CaptureCmd {
    /// Spool directory; short form `-s/path` keeps core_pattern short.
    #[arg(short, long, env = "COREDUMP_SPOOL", default_value = DEFAULT_SPOOL)]
    spool: PathBuf,
    /// Where to read the crasher's process information.
    #[arg(long, env = "COREDUMP_PROC_ROOT", default_value = "/proc", hide = true)]
    proc_root: PathBuf,
    /// Overrides capture.json: raw bytes kept of one core.
    #[arg(long, env = "COREDUMP_MAX_CORE_BYTES")]
    max_core_bytes: Option<u64>,
    /// Overrides capture.json: disk the spool may use.
    #[arg(long, env = "COREDUMP_SPOOL_MAX_BYTES")]
    spool_max_bytes: Option<u64>,
    /// Overrides capture.json: free space to leave on the filesystem.
    #[arg(long, env = "COREDUMP_KEEP_FREE_BYTES")]
    keep_free_bytes: Option<u64>,
    /// Overrides capture.json: cores per pod per window.
    #[arg(long, env = "COREDUMP_RATE_LIMIT_COUNT")]
    rate_limit_count: Option<u32>,
    /// Overrides capture.json: rate-limit window in seconds.
    #[arg(long, env = "COREDUMP_RATE_LIMIT_WINDOW")]
    rate_limit_window: Option<u64>,
    /// Overrides capture.json: zstd level.
    #[arg(long, env = "COREDUMP_ZSTD_LEVEL")]
    zstd_level: Option<i32>,
    /// Overrides capture.json: zstd worker threads (0: none).
    #[arg(long, env = "COREDUMP_ZSTD_WORKERS")]
    zstd_workers: Option<u32>,
    /// Overrides capture.json: deadline of the whole capture, seconds.
    #[arg(long, env = "COREDUMP_DEADLINE")]
    deadline: Option<u64>,
    /// `%P %I %s %t %c %d %u %g [%F] %E %e`, after `--`. Bytes, not text:
    /// `%e` and `%E` are whatever the crasher made them, UTF-8 or not.
    #[arg(last = true, required = true, value_parser = clap::value_parser!(OsString))]
    specifiers: Vec<OsString>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Pidfd {
    Auto,
    Always,
    Never,
}

#[derive(clap::Args)]
struct InstallCmd {
    /// Handler path on the host (default: this binary).
    #[arg(long, env = "COREDUMP_HANDLER")]
    handler: Option<PathBuf>,
    #[arg(short, long, env = "COREDUMP_SPOOL", default_value = DEFAULT_SPOOL)]
    spool: PathBuf,
    /// core_pipe_limit to set; must be >0 so /proc/<pid> outlives the dump.
    #[arg(long, env = "COREDUMP_PIPE_LIMIT", default_value_t = install::DEFAULT_PIPE_LIMIT,
          value_parser = clap::value_parser!(u32).range(1..))]
    pipe_limit: u32,
    /// Pass %F (a pidfd); `auto` when the kernel is 6.16 or newer.
    #[arg(long, env = "COREDUMP_PIDFD", value_enum, default_value = "auto")]
    pidfd: Pidfd,
    /// Print the pattern and its length, change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(clap::Args)]
struct RestoreCmd {
    #[arg(short, long, env = "COREDUMP_SPOOL", default_value = DEFAULT_SPOOL)]
    spool: PathBuf,
    /// Restore even if someone else replaced our pattern since, or another
    /// agent waits to take it over.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args)]
struct AgentCmd {
    /// This node's name (the DaemonSet passes spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    #[arg(short, long, env = "COREDUMP_SPOOL", default_value = DEFAULT_SPOOL)]
    spool: PathBuf,
    /// The extension API server, directly (not through kube-apiserver),
    /// e.g. https://coredump-apiserver.coredump-system.svc:443.
    #[arg(long, env = "COREDUMP_SERVER")]
    server: String,
    /// CA bundle (PEM) of the server's serving certificate.
    #[arg(long, env = "COREDUMP_SERVER_CA")]
    server_ca: PathBuf,
    /// Bearer token file for the server, re-read for every request
    /// (a projected service-account token rotates).
    #[arg(long, env = "COREDUMP_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Client certificate (PEM) for the server, instead of a token.
    #[arg(long, env = "COREDUMP_CLIENT_CERT", requires = "client_key")]
    client_cert: Option<PathBuf>,
    #[arg(long, env = "COREDUMP_CLIENT_KEY", requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// kubeconfig for kube-apiserver (pods, namespaces, events); default:
    /// in-cluster, or $KUBECONFIG.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Copy this binary here and install it as the handler (a host path,
    /// mounted at the same path in the container); default: this binary.
    #[arg(long, env = "COREDUMP_HANDLER")]
    handler_path: Option<PathBuf>,
    /// Leave core_pattern alone (someone else installs the handler).
    #[arg(long, env = "COREDUMP_NO_INSTALL")]
    no_install: bool,
    #[arg(long, env = "COREDUMP_PIPE_LIMIT", default_value_t = install::DEFAULT_PIPE_LIMIT,
          value_parser = clap::value_parser!(u32).range(1..))]
    pipe_limit: u32,
    #[arg(long, env = "COREDUMP_PIDFD", value_enum, default_value = "auto")]
    pidfd: Pidfd,
    /// Where /metrics, /healthz and /readyz are served (plain HTTP).
    #[arg(long, env = "COREDUMP_METRICS_ADDR", default_value = "0.0.0.0:9808")]
    metrics_addr: std::net::SocketAddr,
    /// How often the spool is scanned for new cores.
    #[arg(long, env = "COREDUMP_POLL_INTERVAL", default_value = "100ms", value_parser = duration)]
    poll_interval: Duration,
    /// How long a core waits for its pod to show up in the watch before it
    /// is dropped (PodUnknown).
    #[arg(long, env = "COREDUMP_POD_WAIT", default_value = "60s", value_parser = duration)]
    pod_wait: Duration,
    /// Longest wait between delivery attempts while the server is down.
    #[arg(long, env = "COREDUMP_MAX_BACKOFF", default_value = "30s", value_parser = duration)]
    max_backoff: Duration,
    /// Timeout of one request to the server (uploads get 1 s more per MiB).
    #[arg(long, env = "COREDUMP_REQUEST_TIMEOUT", default_value = "30s", value_parser = duration)]
    request_timeout: Duration,
    /// capture.json: raw bytes kept of one core (e.g. 4Gi).
    #[arg(long, env = "COREDUMP_MAX_CORE_BYTES", value_parser = bytes)]
    max_core_bytes: Option<u64>,
    /// capture.json: disk the spool may use.
    #[arg(long, env = "COREDUMP_SPOOL_MAX_BYTES", value_parser = bytes)]
    spool_max_bytes: Option<u64>,
    /// capture.json: free space to leave on the spool's filesystem.
    #[arg(long, env = "COREDUMP_KEEP_FREE_BYTES", value_parser = bytes)]
    keep_free_bytes: Option<u64>,
    /// capture.json: free space to leave, percent of the filesystem.
    #[arg(long, env = "COREDUMP_KEEP_FREE_PERCENT", value_parser = clap::value_parser!(u8).range(0..=100))]
    keep_free_percent: Option<u8>,
    /// capture.json: the most the percentage may ask to keep free (default 4Gi).
    #[arg(long, env = "COREDUMP_KEEP_FREE_PERCENT_CAP", value_parser = bytes)]
    keep_free_percent_cap: Option<u64>,
    /// capture.json: cores per pod per rate-limit window.
    #[arg(long, env = "COREDUMP_RATE_LIMIT_COUNT")]
    rate_limit_count: Option<u32>,
    /// capture.json: the rate-limit window.
    #[arg(long, env = "COREDUMP_RATE_LIMIT_WINDOW", value_parser = duration)]
    rate_limit_window: Option<Duration>,
    /// capture.json: deadline of one capture.
    #[arg(long, env = "COREDUMP_DEADLINE", value_parser = duration)]
    capture_deadline: Option<Duration>,
    /// capture.json: a cgroup path where the kubelet's tree starts (its
    /// --cgroup-root, or the node container's cgroup when nested); repeat
    /// or separate with commas. Default `/`. Kubelet-shaped paths anywhere
    /// else are not pods.
    #[arg(long = "cgroup-root", env = "COREDUMP_CGROUP_ROOTS", value_delimiter = ',',
          value_parser = cgroup_root)]
    cgroup_roots: Vec<String>,
    /// Do not analyze cores (no spec.analysis: no signature, cause or crash group).
    #[arg(long, env = "COREDUMP_NO_ANALYSIS")]
    no_analysis: bool,
    /// Time limit of one core's analysis (the child is killed after it).
    #[arg(long, env = "COREDUMP_ANALYSIS_TIMEOUT", default_value = "10s", value_parser = duration)]
    analysis_timeout: Duration,
    /// Address-space limit (RLIMIT_AS) of the analysis child.
    #[arg(long, env = "COREDUMP_ANALYSIS_MEMORY", default_value = "1Gi", value_parser = bytes)]
    analysis_memory: u64,
    /// Do not read the crashed container's log tail from the kubelet's logs.
    #[arg(long, env = "COREDUMP_NO_LOG_TAIL")]
    no_log_tail: bool,
    /// Where the kubelet keeps container logs.
    #[arg(long, env = "COREDUMP_POD_LOG_ROOT", default_value = coredump_node_handler::logtail::DEFAULT_ROOT)]
    pod_log_root: PathBuf,
    /// capture.json: do not open and cache the crashed process's binaries
    /// (frames are then not symbolized).
    #[arg(long, env = "COREDUMP_NO_BINARY_CACHE")]
    no_binary_cache: bool,
    /// capture.json: disk the build-id cache may use.
    #[arg(long, env = "COREDUMP_BUILD_ID_CACHE_MAX_BYTES", value_parser = bytes)]
    build_id_cache_max_bytes: Option<u64>,
}

fn cgroup_root(s: &str) -> Result<String, String> {
    if s.starts_with('/') && !s.contains("//") {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?}: a cgroup root is an absolute path such as / or /kubelet.slice"
        ))
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    coredump_openapi::types::parse_duration(s).map_err(|e| e.to_string())
}

fn bytes(s: &str) -> Result<u64, String> {
    coredump_openapi::types::parse_bytes(s).map_err(|e| e.to_string())
}

fn pidfd_mode(p: Pidfd) -> PidfdMode {
    match p {
        Pidfd::Auto => PidfdMode::Auto,
        Pidfd::Always => PidfdMode::Always,
        Pidfd::Never => PidfdMode::Never,
    }
}

fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    // Before anything can open a file: the kernel gives us no stdout/stderr.
    capture::ensure_std_fds();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version are "errors" too, but not worth a kernel log.
            // args_os: args() panics on the non-UTF-8 bytes a crasher can
            // put into its name or path.
            if e.use_stderr()
                && std::env::args_os().nth(1).as_deref() == Some(OsStr::new("capture"))
            {
                kmsg(&format!("bad arguments: {e}"));
            }
            e.exit();
        }
    };
    match cli.cmd {
        Cmd::Capture(c) => run_capture(c, started),
        Cmd::InstallPattern(c) => {
            init_stderr_logging();
            run_install(c)
        }
        Cmd::RestorePattern(c) => {
            init_stderr_logging();
            let mode = if c.force {
                install::RestoreMode::Force
            } else {
                install::RestoreMode::if_ours()
            };
            let out = install::restore(&Sysctls::default(), &c.spool, &mode)?;
            println!("{out:?}");
            Ok(())
        }
        Cmd::Agent(c) => {
            init_stderr_logging();
            run_agent(*c)
        }
        Cmd::Analyze(c) => run_analyze(c),
    }
}

fn run_analyze(c: AnalyzeCmd) -> anyhow::Result<()> {
    use coredump_node_handler::analysis;
    let input = analysis::sandbox::input_for(&c.entry_dir, &c.cache_dir, c.log_file.as_deref())
        .map_err(|e| anyhow::anyhow!(e))?;
    let a = analysis::analyze(&input);
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &a)?;
    out.flush()?;
    Ok(())
}

fn run_agent(c: AgentCmd) -> anyhow::Result<()> {
    // One TLS provider for kube's client and ours (ring; see Cargo.toml).
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    let mut capture = CaptureConfig::default();
    if let Some(v) = c.max_core_bytes {
        capture.max_core_bytes = v;
    }
    if let Some(v) = c.spool_max_bytes {
        capture.spool_max_bytes = v;
    }
    if let Some(v) = c.keep_free_bytes {
        capture.keep_free_bytes = v;
    }
    if let Some(v) = c.keep_free_percent {
        capture.keep_free_percent = v;
    }
    if let Some(v) = c.keep_free_percent_cap {
        capture.keep_free_percent_cap_bytes = v;
    }
    if let Some(v) = c.rate_limit_count {
        capture.rate_limit_count = v;
    }
    if let Some(v) = c.rate_limit_window {
        capture.rate_limit_window_seconds = v.as_secs().max(1);
    }
    if let Some(v) = c.capture_deadline {
        capture.deadline_seconds = v.as_secs().max(1);
    }
    if !c.cgroup_roots.is_empty() {
        capture.cgroup_roots = c.cgroup_roots;
    }
    capture.binary_cache = !c.no_binary_cache;
    if let Some(v) = c.build_id_cache_max_bytes {
        capture.build_id_cache_max_bytes = v;
    }
    let opts = AgentOptions {
        node_name: c.node_name,
        spool: c.spool,
        server: ServerOptions {
            url: c.server,
            ca_file: c.server_ca,
            token_file: c.token_file,
            client_cert: c.client_cert.zip(c.client_key),
            timeout: c.request_timeout,
        },
        kubeconfig: c.kubeconfig,
        install: (!c.no_install).then(|| InstallSettings {
            handler_path: c.handler_path,
            pipe_limit: c.pipe_limit,
            pidfd: pidfd_mode(c.pidfd),
        }),
        metrics_addr: c.metrics_addr,
        poll_interval: c.poll_interval,
        pod_wait: c.pod_wait,
        max_backoff: c.max_backoff,
        capture,
        analysis: (!c.no_analysis).then(|| AnalysisSettings {
            sandbox: SandboxOptions {
                timeout: c.analysis_timeout,
                memory_bytes: c.analysis_memory,
                ..SandboxOptions::default()
            },
            log_root: (!c.no_log_tail).then_some(c.pod_log_root),
        }),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
            on_signal.cancel();
        });
        agent::run(opts, shutdown).await.context("agent")
    })
}

fn run_capture(c: CaptureCmd, started: Instant) -> anyhow::Result<()> {
    init_capture_logging(&Spool::new(&c.spool));
    let kargs = match KernelArgs::parse(&c.specifiers) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(error = %e, args = ?c.specifiers, "bad core_pattern arguments");
            kmsg(&format!("bad core_pattern arguments: {e}"));
            capture::record_bad_arguments(&c.spool, format!("bad core_pattern arguments: {e}"));
            return Err(e.into());
        }
    };
    let opts = CaptureOptions {
        spool: c.spool,
        proc_root: c.proc_root,
        overrides: Overrides {
            max_core_bytes: c.max_core_bytes,
            spool_max_bytes: c.spool_max_bytes,
            keep_free_bytes: c.keep_free_bytes,
            rate_limit_count: c.rate_limit_count,
            rate_limit_window_seconds: c.rate_limit_window,
            zstd_level: c.zstd_level,
            zstd_workers: c.zstd_workers,
            deadline_seconds: c.deadline,
        },
    };
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    match capture::run(&opts, &kargs, &mut input, started) {
        Outcome::Stored { .. } => {}
        Outcome::Dropped {
            reason,
            record: None,
        } => {
            kmsg(&format!(
                "core of pid {} dropped ({reason:?}), no record written",
                kargs.host_pid
            ));
        }
        Outcome::Dropped { .. } => {}
    }
    Ok(())
}

fn run_install(c: InstallCmd) -> anyhow::Result<()> {
    let handler = match c.handler {
        Some(h) => h,
        None => std::env::current_exe().context("finding this binary's path")?,
    };
    let opts = InstallOptions {
        handler,
        spool: c.spool,
        pipe_limit: c.pipe_limit,
        pidfd: pidfd_mode(c.pidfd),
    };
    if c.dry_run {
        let p = install::pattern_for(&opts)?;
        println!("{p}\n({} of at most 127 characters)", p.len());
        return Ok(());
    }
    let state = install::install(&Sysctls::default(), &opts)?;
    println!("{}", serde_json::to_string_pretty(&state)?);
    Ok(())
}

fn init_stderr_logging() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for people, not for the DaemonSet's log.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
}

/// The kernel-run handler has no terminal and no journal connection: it
/// logs to `<spool>/capture.log` (rotated at 1 MiB, next to the data it
/// describes) and, if that cannot be opened, to the kernel log.
fn init_capture_logging(spool: &Spool) {
    let path = spool.log_path();
    let writer: Box<dyn Write + Send> = match open_log(&path) {
        Some(f) => Box::new(f),
        None => match OpenOptions::new().write(true).open("/dev/kmsg") {
            Ok(f) => Box::new(KmsgLines(f)),
            Err(_) => Box::new(std::io::sink()),
        },
    };
    tracing_subscriber::fmt()
        .with_writer(Mutex::new(writer))
        .with_ansi(false)
        .with_target(false)
        .with_env_filter(EnvFilter::new("info"))
        .init();
}

fn open_log(path: &Path) -> Option<File> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir);
    }
    if std::fs::metadata(path).is_ok_and(|m| m.len() > MAX_LOG_BYTES) {
        let _ = std::fs::rename(path, path.with_extension("log.1"));
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .ok()
}

/// Prefixes each write with our name, as /dev/kmsg takes one record per write.
struct KmsgLines(File);

impl Write for KmsgLines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut line = b"coredump-node-handler: ".to_vec();
        line.extend_from_slice(buf);
        self.0.write_all(&line)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn kmsg(msg: &str) {
    if let Ok(mut f) = OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = writeln!(f, "coredump-node-handler: {msg}");
    }
}
