//! `capture`: run by the kernel for every core dump (see `pattern` for the
//! arguments). Reads `/proc/<pid>` first, decides, then streams the core from
//! stdin through SHA-256 and zstd into the spool. Never touches the network.
//!
//! Each decision not to store ends in a [`DropRecord`]; each stored core in a
//! [`SpoolEntry`](crate::spool::SpoolEntry). The crashing process is blocked
//! until we close stdin, so stdin is closed as soon as the core is read (or
//! refused) and the slower work (fsync, rename) happens after.
//!
//! The parts, each with its own invariants:
//! - [`args`]: the kernel's command line ([`KernelArgs`]) and its bytes as text;
//! - [`decide`]: pure decisions, capture or drop and why;
//! - [`forward`]: crashes outside any pod, to the previous core_pattern;
//! - [`stream`]: stdin through SHA-256 and zstd into a spool entry;
//! - [`fds`]: stdin, the pidfd and the SIGALRM deadline (the only unsafe code).
//!
//! This module reads what the decisions need, in the order that lets the
//! crasher go soonest, and writes the drop records.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::config::{CaptureConfig, OptOut};
use crate::limits::{self, Refusal};
use crate::procinfo;
use crate::spool::{CrashInfo, DropReason, DropRecord, HandlerStats, Spool, FORMAT_VERSION};

pub mod args;
pub mod decide;
pub mod fds;
pub mod forward;
pub mod stream;

pub use args::{CaptureError, KernelArgs};
pub use fds::{ensure_std_fds, release_stdin};
pub use stream::{set_nonblocking, stream_core, StreamError, StreamLimits, Streamed};

use decide::Whose;

/// Command-line overrides of `capture.json` (mainly for tests and manual
/// runs: the kernel passes none).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub max_core_bytes: Option<u64>,
    pub spool_max_bytes: Option<u64>,
    pub keep_free_bytes: Option<u64>,
    pub rate_limit_count: Option<u32>,
    pub rate_limit_window_seconds: Option<u64>,
    pub zstd_level: Option<i32>,
    pub zstd_workers: Option<u32>,
    pub deadline_seconds: Option<u64>,
}

impl Overrides {
    pub fn apply(&self, cfg: &mut CaptureConfig) {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { cfg.$f = v; } )* };
        }
        set!(
            max_core_bytes,
            spool_max_bytes,
            keep_free_bytes,
            rate_limit_count,
            rate_limit_window_seconds,
            zstd_level,
            zstd_workers,
            deadline_seconds
        );
    }
}

#[derive(Debug, Clone)]
pub struct CaptureOptions {
    pub spool: PathBuf,
    /// `/proc`, or a fake tree in tests.
    pub proc_root: PathBuf,
    pub overrides: Overrides,
}

/// What happened to one crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Stored {
        id: String,
    },
    Dropped {
        reason: DropReason,
        record: Option<String>,
    },
}

/// Handles one crash. `input` must be stdin (fd 0): to let the crasher go
/// on early, fd 0 is replaced by /dev/null once the core is read.
pub fn run<R: Read + AsFd>(
    opts: &CaptureOptions,
    kargs: &KernelArgs,
    input: &mut R,
    started: Instant,
) -> Outcome {
    // A backstop before anything can block (even /proc reads), tightened
    // below once capture.json is read.
    fds::set_hard_deadline(CaptureConfig::default().deadline_seconds);
    // /proc first: it is only guaranteed to be there while the crasher
    // waits for us, and it tells whether to read the core at all.
    let pidfd = kargs.pidfd.and_then(fds::borrow_pidfd);
    let proc = procinfo::read(&opts.proc_root, kargs.host_pid, kargs.host_tid, pidfd);
    let spool = Spool::new(&opts.spool);
    let mut cfg = CaptureConfig::load(&spool.config_path()).unwrap_or_else(|e| {
        warn!(error = %e, "unreadable capture.json; using defaults");
        CaptureConfig::default()
    });
    opts.overrides.apply(&mut cfg);
    let deadline = started + Duration::from_secs(cfg.deadline_seconds);
    fds::set_hard_deadline(cfg.deadline_seconds);
    let crash = args::crash_info(kargs, proc.as_ref().ok(), &cfg.cgroup_roots);
    let ctx = Ctx {
        spool,
        cfg,
        kargs,
        crash,
        started,
        proc_root: opts.proc_root.clone(),
        ns_tid: proc.as_ref().ok().and_then(|p| p.ns_tid),
    };
    if let Err(e) = ctx.spool.ensure_layout() {
        warn!(error = %e, "spool unusable; core dropped");
        return Outcome::Dropped {
            reason: DropReason::CaptureFailed,
            record: None,
        };
    }

    let read = proc.as_ref().map_err(ToString::to_string);
    let pod = match decide::whose(read, &ctx.crash, &ctx.cfg.cgroup_roots) {
        Ok(Whose::Pod(pod)) => pod,
        Ok(Whose::Host(p)) => return ctx.not_a_container(&opts.proc_root, p),
        Err(r) => return ctx.refuse(r),
    };
    info!(
        pid = kargs.host_pid,
        signal = kargs.signal,
        pod_uid = pod.pod_uid,
        container_id = pod.container_id,
        "core dump of a pod"
    );

    let optout = OptOut::load(&ctx.spool.optout_path()).map_err(|e| e.to_string());
    if let Err(r) = decide::opted_out(optout, &pod) {
        return ctx.refuse(r);
    }
    let (cap, cap_by) = match limits::size_cap(kargs.rlimit_core, ctx.cfg.max_core_bytes) {
        Ok(c) => c,
        Err(r) => return ctx.refuse(r),
    };

    // Housekeeping that affects the space check: leftovers of killed
    // handlers and expired rate-limit files.
    let stale_after = Duration::from_secs(2 * ctx.cfg.deadline_seconds + 60);
    if let Err(e) = ctx.spool.remove_stale_tmp(stale_after) {
        warn!(error = %e, "cleaning spool tmp");
    }
    limits::prune_rate_limits(
        &ctx.spool.ratelimit_dir(),
        ctx.cfg.rate_limit_window_seconds,
    );

    let used = match ctx.spool.total_bytes() {
        Ok(u) => u,
        Err(e) => return ctx.dropped(DropReason::CaptureFailed, e.to_string(), 0),
    };
    let (free, total) = match limits::fs_space(ctx.spool.root()) {
        Ok(s) => s,
        Err(e) => return ctx.dropped(DropReason::CaptureFailed, e.to_string(), 0),
    };
    let budget = match limits::space_budget(used, free, total, &ctx.cfg) {
        Ok(b) => b,
        Err(r) => return ctx.refuse(r),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(kargs.time);
    match limits::rate_limit(
        &ctx.spool.ratelimit_dir(),
        &pod.pod_uid,
        now,
        ctx.cfg.rate_limit_count,
        ctx.cfg.rate_limit_window_seconds,
    ) {
        Ok(Ok(())) => {}
        Ok(Err(r)) => return ctx.refuse(r),
        Err(e) => return ctx.dropped(DropReason::CaptureFailed, e.to_string(), 0),
    }

    ctx.store(input, cap, cap_by, budget, deadline)
}

/// One crash being handled: what every step after `/proc` needs.
struct Ctx<'a> {
    spool: Spool,
    cfg: CaptureConfig,
    kargs: &'a KernelArgs,
    crash: CrashInfo,
    started: Instant,
    proc_root: PathBuf,
    /// The crashing thread as its PID namespace numbers it (NT_PRSTATUS's pr_pid).
    ns_tid: Option<i32>,
}

impl Ctx<'_> {
    fn stats(&self) -> HandlerStats {
        HandlerStats {
            version: env!("CARGO_PKG_VERSION").to_string(),
            vm_hwm_bytes: procinfo::own_vm_hwm().unwrap_or(0),
            elapsed_millis: self.started.elapsed().as_millis() as u64,
            read_millis: None,
        }
    }

    fn refuse(&self, r: Refusal) -> Outcome {
        self.dropped(r.reason, r.detail, 0)
    }

    fn dropped(&self, reason: DropReason, detail: String, raw_bytes_read: u64) -> Outcome {
        self.dropped_full(reason, detail, raw_bytes_read, None, None)
    }

    fn dropped_full(
        &self,
        reason: DropReason,
        detail: String,
        raw_bytes_read: u64,
        forwarded_to: Option<String>,
        forward_exit_status: Option<i32>,
    ) -> Outcome {
        // Release the crasher before the bookkeeping.
        fds::release_stdin();
        warn!(
            ?reason,
            detail,
            pid = self.kargs.host_pid,
            "core not stored"
        );
        let mut crash = self.crash.clone();
        crash.command_line.clear();
        crash.command_line_truncated = false;
        let record = DropRecord {
            format_version: FORMAT_VERSION,
            id: self.kargs.id(),
            reason,
            detail,
            crash,
            forwarded_to,
            forward_exit_status,
            raw_bytes_read,
            handler: self.stats(),
        };
        let written = match self.spool.count_drops(self.cfg.max_drop_records) {
            Ok(n) if n >= self.cfg.max_drop_records => {
                warn!(n, "too many drop records; not writing another");
                None
            }
            _ => match self.spool.write_drop(&record) {
                Ok(id) => Some(id),
                Err(e) => {
                    warn!(error = %e, "writing drop record");
                    None
                }
            },
        };
        Outcome::Dropped {
            reason,
            record: written,
        }
    }
}

/// A kernel command line `capture` cannot read still leaves a trace: a
/// `CaptureFailed` drop record, which the agent counts, never silence.
/// Returns the record's ID when one was written.
pub fn record_bad_arguments(spool_root: &Path, detail: String) -> Option<String> {
    fds::release_stdin();
    let spool = Spool::new(spool_root);
    spool.ensure_layout().ok()?;
    let limit = CaptureConfig::load(&spool.config_path())
        .unwrap_or_default()
        .max_drop_records;
    if spool.count_drops(limit).ok()? >= limit {
        return None;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let record = DropRecord {
        format_version: FORMAT_VERSION,
        // Our own PID: the crasher's is among what could not be read.
        id: format!("{now}-{}", std::process::id()),
        reason: DropReason::CaptureFailed,
        detail,
        crash: CrashInfo::default(),
        forwarded_to: None,
        forward_exit_status: None,
        raw_bytes_read: 0,
        handler: HandlerStats {
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..HandlerStats::default()
        },
    };
    spool.write_drop(&record).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply() {
        let mut cfg = CaptureConfig::default();
        Overrides {
            max_core_bytes: Some(7),
            zstd_workers: Some(0),
            ..Overrides::default()
        }
        .apply(&mut cfg);
        assert_eq!(cfg.max_core_bytes, 7);
        assert_eq!(cfg.zstd_workers, 0);
        assert_eq!(
            cfg.rate_limit_count,
            CaptureConfig::default().rate_limit_count
        );
    }
}
