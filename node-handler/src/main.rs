//! `coredump-node-handler`: see README.md. Parses the command line, sets up
//! logging and hands over to the library.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use coredump_node_handler::capture::{self, CaptureOptions, KernelArgs, Outcome, Overrides};
use coredump_node_handler::install::{self, InstallOptions, PidfdMode, Sysctls};
use coredump_node_handler::pattern::DEFAULT_SPOOL;
use coredump_node_handler::spool::Spool;
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
    /// `%P %I %s %t %c %d %u %g [%F] %E %e`, after `--`.
    #[arg(last = true, required = true)]
    specifiers: Vec<String>,
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
    /// Restore even if someone else replaced our pattern since.
    #[arg(long)]
    force: bool,
}

fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    // Before anything can open a file: the kernel gives us no stdout/stderr.
    capture::ensure_std_fds();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version are "errors" too, but not worth a kernel log.
            if e.use_stderr() && std::env::args().nth(1).as_deref() == Some("capture") {
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
            let out = install::restore(&Sysctls::default(), &c.spool, c.force)?;
            println!("{out:?}");
            Ok(())
        }
    }
}

fn run_capture(c: CaptureCmd, started: Instant) -> anyhow::Result<()> {
    init_capture_logging(&Spool::new(&c.spool));
    let kargs = match KernelArgs::parse(&c.specifiers) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(error = %e, args = ?c.specifiers, "bad core_pattern arguments");
            kmsg(&format!("bad core_pattern arguments: {e}"));
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
        pidfd: match c.pidfd {
            Pidfd::Auto => PidfdMode::Auto,
            Pidfd::Always => PidfdMode::Always,
            Pidfd::Never => PidfdMode::Never,
        },
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
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
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
