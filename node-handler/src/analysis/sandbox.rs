//! Running [`super::analyze`] in a child process (`coredump-node-handler analyze`), since
//! its input is hostile: the child gets an address-space limit (`RLIMIT_AS`), a CPU limit,
//! no core dumps of its own, and is killed at its deadline. Whatever goes wrong (timeout,
//! out of memory, a crash, output that is not a valid analysis) becomes a `Failed`
//! analysis that says why; the core is delivered either way.
//!
//! Invariants: the agent never parses a core or a binary itself; it reads at most
//! [`MAX_OUTPUT`] bytes of the child's answer and keeps it only if it passes the API's
//! `validate_analysis`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use coredump_openapi::types::{AnalysisState, CrashAnalysis};
use tokio::io::AsyncReadExt;

use crate::spool::SpoolEntry;

/// Largest answer read from the child.
pub const MAX_OUTPUT: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// This binary (it has the `analyze` subcommand).
    pub exe: PathBuf,
    pub timeout: Duration,
    /// RLIMIT_AS of the child.
    pub memory_bytes: u64,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe")),
            timeout: Duration::from_secs(10),
            memory_bytes: 1 << 30,
        }
    }
}

/// An analysis that failed: the signal from the metadata, the reason, the log tail.
pub fn failed(entry: &SpoolEntry, error: String, log_tail: Option<String>) -> CrashAnalysis {
    let mut a = super::analyze(&super::Input {
        core: PathBuf::from("/nonexistent"),
        signal: entry.crash.signal,
        log_tail,
        ..Default::default()
    });
    a.state = Some(AnalysisState::Failed);
    a.error = Some(error);
    a
}

/// Runs the child for one entry and returns its analysis (or a Failed one).
#[allow(unsafe_code)] // FFI: see the SAFETY comment at the unsafe block
pub async fn run(
    opts: &SandboxOptions,
    entry: &SpoolEntry,
    entry_dir: &Path,
    cache_dir: &Path,
    log_file: Option<&Path>,
) -> (CrashAnalysis, Duration) {
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new(&opts.exe);
    cmd.arg("analyze")
        .arg("--entry-dir")
        .arg(entry_dir)
        .arg("--cache-dir")
        .arg(cache_dir);
    if let Some(l) = log_file {
        cmd.arg("--log-file").arg(l);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .env_clear();
    let mem = opts.memory_bytes;
    let cpu = opts.timeout.as_secs().saturating_add(1);
    // SAFETY: only async-signal-safe calls (setrlimit, prctl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            use nix::sys::resource::{setrlimit, Resource};
            setrlimit(Resource::RLIMIT_AS, mem, mem).map_err(std::io::Error::from)?;
            setrlimit(Resource::RLIMIT_CPU, cpu, cpu).map_err(std::io::Error::from)?;
            // A crash of the analyzer must not come back through core_pattern.
            setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(std::io::Error::from)?;
            nix::libc::prctl(nix::libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
            Ok(())
        });
    }
    let log_tail = || {
        log_file.and_then(|l| {
            crate::logtail::read_tail(l, coredump_openapi::types::analysis::MAX_LOG_TAIL)
        })
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return (
                failed(entry, format!("analysis not started: {e}"), log_tail()),
                started.elapsed(),
            )
        }
    };
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return (
            failed(entry, "analysis has no output pipe".into(), log_tail()),
            started.elapsed(),
        );
    };
    let work = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut so = (&mut stdout).take(MAX_OUTPUT + 1);
        let mut se = (&mut stderr).take(64 << 10);
        let (r1, r2) = tokio::join!(so.read_to_end(&mut out), se.read_to_end(&mut err));
        let status = child.wait().await;
        (r1.and(r2).and(status), out, err)
    };
    let answer = tokio::time::timeout(opts.timeout, work).await;
    let elapsed = started.elapsed();
    let (status, out, err) = match answer {
        Ok(x) => x,
        Err(_) => {
            return (
                failed(
                    entry,
                    format!("analysis timed out after {:?} and was killed", opts.timeout),
                    log_tail(),
                ),
                elapsed,
            )
        }
    };
    let err_tail = || {
        let s = String::from_utf8_lossy(&err);
        super::tail_bound(s.trim(), 300)
    };
    let status = match status {
        Ok(s) => s,
        Err(e) => return (failed(entry, format!("analysis: {e}"), log_tail()), elapsed),
    };
    if !status.success() {
        use std::os::unix::process::ExitStatusExt;
        let how = match status.signal() {
            Some(9) => format!("killed (signal 9; CPU limit {cpu}s)"),
            Some(s) => format!(
                "died of signal {s} (limits: {} MiB, {cpu} s of CPU)",
                mem >> 20
            ),
            None => format!("exited with {}", status.code().unwrap_or(-1)),
        };
        let mut msg = format!("analysis {how}");
        let e = err_tail();
        if !e.is_empty() {
            msg.push_str(": ");
            msg.push_str(&e);
        }
        if e.contains("memory allocation") {
            msg = format!("analysis ran out of memory (limit {} MiB): {e}", mem >> 20);
        }
        return (failed(entry, msg, log_tail()), elapsed);
    }
    if out.len() as u64 > MAX_OUTPUT {
        return (
            failed(entry, "analysis answer too large".into(), log_tail()),
            elapsed,
        );
    }
    let a: CrashAnalysis = match serde_json::from_slice(&out) {
        Ok(a) => a,
        Err(e) => {
            return (
                failed(
                    entry,
                    format!("analysis answer unreadable: {e}"),
                    log_tail(),
                ),
                elapsed,
            )
        }
    };
    let mut errors = Vec::new();
    coredump_openapi::types::analysis::validate_analysis(&a, &mut errors);
    if !errors.is_empty() {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        return (
            failed(
                entry,
                format!("analysis answer invalid: {}", list.join("; ")),
                log_tail(),
            ),
            elapsed,
        );
    }
    (a, elapsed)
}

/// The child's side: the input for an entry directory.
pub fn input_for(
    entry_dir: &Path,
    cache_dir: &Path,
    log_file: Option<&Path>,
) -> Result<super::Input, String> {
    let meta = crate::spool::read_bounded(&entry_dir.join(crate::spool::METADATA_FILE), 1 << 20)
        .map_err(|e| e.to_string())?;
    let entry: SpoolEntry = serde_json::from_slice(&meta).map_err(|e| format!("metadata: {e}"))?;
    Ok(super::Input {
        core: entry_dir.join(crate::spool::CORE_FILE),
        cache: cache_dir.to_path_buf(),
        modules: super::read_modules(entry_dir),
        host_tid: entry.crash.host_tid,
        signal: entry.crash.signal,
        executable: entry.crash.executable.clone(),
        log_tail: log_file.and_then(|l| {
            crate::logtail::read_tail(l, coredump_openapi::types::analysis::MAX_LOG_TAIL)
        }),
    })
}
