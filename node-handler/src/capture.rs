//! `capture`: run by the kernel for every core dump (see `pattern` for the
//! arguments). Reads `/proc/<pid>` first, decides, then streams the core from
//! stdin through SHA-256 and zstd into the spool. Never touches the network.
//!
//! Each decision not to store ends in a [`DropRecord`]; each stored core in a
//! [`SpoolEntry`]. The crashing process is blocked until we close stdin, so
//! stdin is closed as soon as the core is read (or refused) and the slower
//! work (fsync, rename) happens after.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::analysis::{ProcessModules, MODULES_FILE};
use crate::buildid;
use crate::cgroup;
use crate::config::{CaptureConfig, OptOut};
use crate::escape::escape;
use crate::install::InstallState;
use crate::limits::{self, Refusal, SizeLimit};
use crate::pattern::{self, Pattern, SpecifierValues};
use crate::procinfo::{self, ProcInfo};
use crate::spool::{
    signal_name, CrashInfo, DropReason, DropRecord, HandlerStats, Spool, SpoolEntry, FORMAT_VERSION,
};

/// Read buffer: fixed, so memory stays flat whatever the core size.
const BUFFER_BYTES: usize = 1 << 20;
/// Grace after the soft deadline before SIGALRM kills the handler outright
/// (a read blocked in the kernel cannot be interrupted otherwise).
const HARD_DEADLINE_GRACE: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("expected `%P %I %s %t %c %d %u %g [%F] %E %e`, got {0} arguments")]
    ArgCount(usize),
    #[error("argument {index} ({spec}) is {value:?}, not a number")]
    BadNumber {
        index: usize,
        spec: &'static str,
        value: String,
    },
}

/// The values the kernel put on our command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelArgs {
    pub host_pid: i32,
    pub host_tid: i32,
    pub signal: i32,
    pub time: u64,
    pub rlimit_core: u64,
    pub dumpable: u32,
    pub uid: u32,
    pub gid: u32,
    /// `%F`: fd number of the crasher's pidfd in our fd table.
    pub pidfd: Option<i32>,
    /// `%E`: executable path with `/` as `!`. Bytes: a path need not be
    /// UTF-8.
    pub exe_escaped: Vec<u8>,
    /// `%e`: comm. Bytes, and set by the process (`prctl(PR_SET_NAME)`):
    /// shown, never used to attribute the crash.
    pub comm: Vec<u8>,
}

impl KernelArgs {
    /// Parses `%P %I %s %t %c %d %u %g [%F] %E %e`: %E and %e are always the
    /// last two, so 9 numbers mean %F is there. The arguments are the
    /// kernel's bytes; only the numbers need to be text.
    pub fn parse(args: &[OsString]) -> Result<Self, CaptureError> {
        let n = args.len();
        if !(10..=11).contains(&n) {
            return Err(CaptureError::ArgCount(n));
        }
        let nums = &args[..n - 2];
        fn num<T: std::str::FromStr>(
            nums: &[OsString],
            index: usize,
            spec: &'static str,
        ) -> Result<T, CaptureError> {
            let bad = || CaptureError::BadNumber {
                index,
                spec,
                value: crate::escape::escape(nums[index].as_bytes()),
            };
            nums[index]
                .to_str()
                .ok_or_else(bad)?
                .parse()
                .map_err(|_| bad())
        }
        Ok(Self {
            host_pid: num(nums, 0, "%P")?,
            host_tid: num(nums, 1, "%I")?,
            signal: num(nums, 2, "%s")?,
            time: num(nums, 3, "%t")?,
            rlimit_core: num(nums, 4, "%c")?,
            dumpable: num(nums, 5, "%d")?,
            uid: num(nums, 6, "%u")?,
            gid: num(nums, 7, "%g")?,
            pidfd: if nums.len() == 9 {
                Some(num(nums, 8, "%F")?)
            } else {
                None
            },
            exe_escaped: args[n - 2].as_bytes().to_vec(),
            comm: args[n - 1].as_bytes().to_vec(),
        })
    }

    pub fn id(&self) -> String {
        format!("{}-{}", self.time, self.host_pid)
    }
}

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
    set_hard_deadline(CaptureConfig::default().deadline_seconds);
    // /proc first: it is only guaranteed to be there while the crasher
    // waits for us, and it tells whether to read the core at all.
    let pidfd = kargs.pidfd.and_then(borrow_pidfd);
    let proc = procinfo::read(&opts.proc_root, kargs.host_pid, kargs.host_tid, pidfd);
    let spool = Spool::new(&opts.spool);
    let mut cfg = CaptureConfig::load(&spool.config_path()).unwrap_or_else(|e| {
        warn!(error = %e, "unreadable capture.json; using defaults");
        CaptureConfig::default()
    });
    opts.overrides.apply(&mut cfg);
    let deadline = started + Duration::from_secs(cfg.deadline_seconds);
    set_hard_deadline(cfg.deadline_seconds);
    let crash = crash_info(kargs, proc.as_ref().ok(), &cfg.cgroup_roots);
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

    let proc = match proc {
        Ok(p) => p,
        Err(e) => return ctx.dropped(DropReason::ProcUnavailable, e.to_string(), 0),
    };
    let Some(pod) = cgroup::pod_of(&ctx.crash.cgroups, &ctx.cfg.cgroup_roots) else {
        return ctx.not_a_container(&opts.proc_root, &proc);
    };
    // The cgroup file must be the crasher's own, not that of a process
    // that took its PID since: never file a crash under a pod otherwise.
    if !ctx.crash.proc_verified {
        return ctx.dropped(
            DropReason::ProcUnverified,
            "/proc/<pid> could not be shown to be the crasher's (it exited, or its PID was reused)"
                .into(),
            0,
        );
    }
    info!(
        pid = kargs.host_pid,
        signal = kargs.signal,
        pod_uid = pod.pod_uid,
        container_id = pod.container_id,
        "core dump of a pod"
    );

    match OptOut::load(&ctx.spool.optout_path()) {
        Ok(Some(o)) if o.is_opted_out(&pod.pod_uid, Some(&pod.container_id)) => {
            return ctx.dropped(DropReason::OptedOut, "pod or container opted out".into(), 0);
        }
        Ok(_) => {}
        Err(e) => return ctx.dropped(DropReason::OptOutUnreadable, e.to_string(), 0),
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
        release_stdin();
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

    /// Not in a pod: the core belongs to whoever handled cores before us.
    fn not_a_container(&self, proc_root: &Path, proc: &ProcInfo) -> Outcome {
        let previous = match InstallState::load(&self.spool) {
            Ok(Some(s)) => s.previous_pattern,
            Ok(None) => {
                return self.dropped(
                    DropReason::NotAContainer,
                    "no previous core_pattern saved".into(),
                    0,
                )
            }
            Err(e) => return self.dropped(DropReason::NotAContainer, e.to_string(), 0),
        };
        let argv = match Pattern::parse(&previous) {
            Some(Pattern::Pipe(argv)) if !pattern::is_ours(&previous) => argv,
            Some(Pattern::Pipe(_)) => {
                return self.dropped(
                    DropReason::NotAContainer,
                    "previous core_pattern is ours; not recursing".into(),
                    0,
                )
            }
            // Writing a file relative to the crasher's cwd with its
            // permissions is not emulated.
            _ => {
                return self.dropped(
                    DropReason::NotAContainer,
                    format!("previous core_pattern {previous:?} is not a pipe; core dropped"),
                    0,
                )
            }
        };
        let values = SpecifierValues {
            ns_pid: proc.ns_pid,
            host_pid: self.kargs.host_pid,
            ns_tid: proc.ns_tid,
            host_tid: self.kargs.host_tid,
            uid: self.kargs.uid,
            gid: self.kargs.gid,
            dumpable: self.kargs.dumpable,
            signal: self.kargs.signal,
            time: self.kargs.time,
            hostname: if pattern::needs_hostname(&argv) {
                procinfo::uts_hostname(proc_root, self.kargs.host_pid)
            } else {
                None
            },
            comm: self.kargs.comm.clone(),
            exe: proc
                .exe
                .clone()
                .unwrap_or_else(|| procinfo::unescape_exe(&self.kargs.exe_escaped)),
            rlimit_core: self.kargs.rlimit_core,
            cpu: proc.last_cpu,
            pidfd: self.kargs.pidfd,
        };
        let expanded: Vec<OsString> = argv.iter().map(|a| pattern::expand(a, &values)).collect();
        info!(
            ?expanded,
            "not in a pod; handing the core to the previous handler"
        );
        let deadline = self.started + Duration::from_secs(self.cfg.deadline_seconds);
        // The child inherits stdin (the core) and the pidfd at the same fd
        // number, exactly as the kernel would have given them.
        let status = Command::new(&expanded[0])
            .args(&expanded[1..])
            .current_dir("/")
            .stdin(Stdio::inherit())
            .spawn()
            .map_err(|e| e.to_string())
            .and_then(|mut child| {
                // Only the child may hold the pipe now.
                release_stdin();
                wait_deadline(&mut child, deadline)
            });
        match status {
            Ok(code) => self.dropped_full(
                DropReason::NotAContainer,
                "handed to the previous core_pattern".into(),
                0,
                Some(previous),
                Some(code),
            ),
            Err(e) => self.dropped_full(
                DropReason::NotAContainer,
                format!("previous handler failed: {e}"),
                0,
                Some(previous),
                None,
            ),
        }
    }

    fn store<R: Read + AsFd>(
        &self,
        input: &mut R,
        cap: u64,
        cap_by: SizeLimit,
        budget: u64,
        deadline: Instant,
    ) -> Outcome {
        let id = self.kargs.id();
        let pending = match self.spool.begin_entry(&id) {
            Ok(p) => p,
            Err(e) => return self.dropped(DropReason::CaptureFailed, e.to_string(), 0),
        };
        let file = match pending.create_core() {
            Ok(f) => f,
            Err(e) => return self.dropped(DropReason::CaptureFailed, e.to_string(), 0),
        };
        // Only now: the flag is shared with anyone who inherits stdin.
        if let Err(e) = set_nonblocking(input.as_fd()) {
            warn!(error = %e, "stdin stays blocking; only SIGALRM bounds reads");
        }
        if self.cfg.pipe_buffer_bytes > 0 {
            // Fewer wake-ups per MiB; fails harmlessly on non-pipes.
            let _ = fcntl(
                input.as_fd(),
                FcntlArg::F_SETPIPE_SZ(self.cfg.pipe_buffer_bytes as i32),
            );
        }
        let limits = StreamLimits {
            cap,
            budget,
            deadline,
            zstd_level: self.cfg.zstd_level,
            zstd_workers: self.cfg.zstd_workers,
        };
        let streamed = stream_core(input, file, &limits);
        // The kernel still holds the process (its mm, /proc/<pid>/map_files): open the
        // files it mapped executable, and nothing slower, before letting it go.
        let held = (streamed.is_ok() && self.cfg.binary_cache)
            .then(|| buildid::hold(&self.proc_root, self.kargs.host_pid));
        // The whole core is read (or we give up): let the crasher go on.
        release_stdin();
        let read_millis = self.started.elapsed().as_millis() as u64;
        if let Some(held) = held {
            self.record_modules(&pending, held);
        }
        let streamed = match streamed {
            Ok((s, file)) => match file.sync_all() {
                Ok(()) => s,
                Err(e) => {
                    return self.dropped(DropReason::CaptureFailed, format!("fsync: {e}"), s.raw)
                }
            },
            Err(StreamError::Deadline { raw }) => {
                return self.dropped(
                    DropReason::DeadlineExceeded,
                    format!("deadline of {}s", self.cfg.deadline_seconds),
                    raw,
                )
            }
            Err(StreamError::Budget { raw, stored }) => {
                return self.dropped(
                    DropReason::SpoolFull,
                    format!(
                        "compressed core passed the space budget of {budget} bytes at {stored}"
                    ),
                    raw,
                )
            }
            Err(StreamError::Io { raw, op, source }) => {
                return self.dropped(DropReason::CaptureFailed, format!("{op}: {source}"), raw)
            }
        };
        let truncated = streamed.hit_cap;
        let mut entry = SpoolEntry {
            format_version: FORMAT_VERSION,
            id: id.clone(),
            crash: self.crash.clone(),
            raw_size: streamed.raw,
            stored_size: streamed.stored,
            sha256: hex::encode(streamed.sha256),
            truncated,
            truncated_by: truncated.then(|| cap_by.as_str().to_string()),
            compression: "zstd".into(),
            handler: HandlerStats {
                read_millis: Some(read_millis),
                ..self.stats()
            },
        };
        match pending.commit(&mut entry) {
            Ok(id) => {
                info!(
                    id,
                    raw = entry.raw_size,
                    stored = entry.stored_size,
                    truncated,
                    millis = entry.handler.elapsed_millis,
                    "core stored"
                );
                Outcome::Stored { id }
            }
            Err(e) => self.dropped(DropReason::CaptureFailed, e.to_string(), streamed.raw),
        }
    }
}

impl Ctx<'_> {
    /// Build-ids and copies from the files [`buildid::hold`] opened, then
    /// `modules.json` into the entry: best effort, a failure only costs the analysis.
    fn record_modules(&self, pending: &crate::spool::PendingEntry, held: buildid::Held) {
        let held_micros = held.micros;
        let limits = buildid::CacheLimits {
            max_total_bytes: self.cfg.build_id_cache_max_bytes,
            max_file_bytes: self.cfg.build_id_max_file_bytes,
        };
        let (modules, error, copy_micros) =
            buildid::cache_all(held, self.spool.root(), Some(&limits));
        let pm = ProcessModules {
            crashing_tid: self.ns_tid,
            modules,
            error,
            held_micros,
            copy_micros,
        };
        let written = serde_json::to_vec(&pm)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                std::fs::write(pending.dir().join(MODULES_FILE), b).map_err(|e| e.to_string())
            });
        match written {
            Ok(()) => info!(
                modules = pm.modules.len(),
                cached = pm.modules.iter().filter(|m| m.cached).count(),
                held_micros,
                copy_micros,
                "binaries recorded"
            ),
            Err(e) => warn!(error = %e, "writing modules.json"),
        }
    }
}

fn crash_info(k: &KernelArgs, proc: Option<&ProcInfo>, roots: &[String]) -> CrashInfo {
    let cgroups = proc
        .map(|p| cgroup::parse_lines(&p.cgroup))
        .unwrap_or_default();
    let pod = cgroup::pod_of(&cgroups, roots);
    CrashInfo {
        host_pid: k.host_pid,
        host_tid: k.host_tid,
        container_pid: proc.and_then(|p| p.ns_pid),
        signal: k.signal,
        signal_name: signal_name(k.signal),
        dump_time: k.time,
        // Bytes become text here, losslessly (see `escape`).
        comm: escape(proc.and_then(|p| p.comm.as_deref()).unwrap_or(&k.comm)),
        executable: match proc.and_then(|p| p.exe.as_deref()) {
            Some(exe) => escape(exe),
            None => escape(&procinfo::unescape_exe(&k.exe_escaped)),
        },
        command_line: proc
            .map(|p| p.command_line.iter().map(|a| escape(a)).collect())
            .unwrap_or_default(),
        command_line_truncated: proc.is_some_and(|p| p.command_line_truncated),
        uid: k.uid,
        gid: k.gid,
        dumpable: k.dumpable,
        rlimit_core: k.rlimit_core,
        pod_uid: pod.as_ref().map(|p| p.pod_uid.clone()),
        container_id: pod.as_ref().map(|p| p.container_id.clone()),
        container_runtime: pod.as_ref().and_then(|p| p.runtime.clone()),
        qos_class: pod.as_ref().map(|p| p.qos),
        cgroups,
        proc_verified: proc.is_some_and(ProcInfo::verified),
    }
}

/// A kernel command line `capture` cannot read still leaves a trace: a
/// `CaptureFailed` drop record, which the agent counts, never silence.
/// Returns the record's ID when one was written.
pub fn record_bad_arguments(spool_root: &Path, detail: String) -> Option<String> {
    release_stdin();
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

/// SIGALRM's default action ends the handler: the one bound that also
/// holds when a syscall is stuck.
fn set_hard_deadline(seconds: u64) {
    let secs = u32::try_from(seconds)
        .unwrap_or(u32::MAX)
        .saturating_add(HARD_DEADLINE_GRACE);
    nix::unistd::alarm::set(secs);
}

/// The kernel's pidfd at `fd`, if that fd is open.
fn borrow_pidfd(fd: i32) -> Option<BorrowedFd<'static>> {
    if fd < 0 || fcntl(unsafe_borrow(fd), FcntlArg::F_GETFD).is_err() {
        return None;
    }
    Some(unsafe_borrow(fd))
}

#[allow(unsafe_code)] // FFI: see the SAFETY comment at the unsafe block
fn unsafe_borrow(fd: i32) -> BorrowedFd<'static> {
    // SAFETY: only used for fds the kernel opened for this process before
    // main (0-2 and the %F pidfd), which nothing closes while we run.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Makes sure fds 0-2 are open: the kernel starts the handler with only
/// stdin, and a file opened later must not land on fd 1 or 2.
#[allow(unsafe_code)] // FFI: see the SAFETY comment at the unsafe block
pub fn ensure_std_fds() {
    for fd in 0..=2 {
        if fcntl(unsafe_borrow(fd), FcntlArg::F_GETFD).is_err() {
            if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
                let raw = null.as_raw_fd();
                if raw != fd {
                    // SAFETY: dup2 onto a closed standard fd number.
                    unsafe { nix::libc::dup2(raw, fd) };
                } else {
                    // It landed on the right number: keep it open.
                    std::mem::forget(null);
                }
            }
        }
    }
}

/// Replaces stdin with /dev/null: the kernel waits for the pipe's reader to
/// go away before it lets the crashing process finish.
#[allow(unsafe_code)] // FFI: see the SAFETY comment at the unsafe block
pub fn release_stdin() {
    if let Ok(null) = File::open("/dev/null") {
        // SAFETY: dup2 onto fd 0, which we own for the process lifetime.
        unsafe { nix::libc::dup2(null.as_raw_fd(), 0) };
    }
}

fn wait_deadline(child: &mut std::process::Child, deadline: Instant) -> Result<i32, String> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                use std::os::unix::process::ExitStatusExt;
                return Ok(status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)));
            }
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("deadline exceeded; killed".into());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Bounds of one streaming run.
#[derive(Debug, Clone)]
pub struct StreamLimits {
    /// Raw bytes to keep at most.
    pub cap: u64,
    /// Compressed bytes the spool can take.
    pub budget: u64,
    pub deadline: Instant,
    pub zstd_level: i32,
    pub zstd_workers: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Streamed {
    pub raw: u64,
    pub stored: u64,
    pub sha256: [u8; 32],
    /// Stopped at `cap` with more input possibly left.
    pub hit_cap: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("deadline passed after {raw} bytes")]
    Deadline { raw: u64 },
    #[error("space budget passed after {raw} raw / {stored} stored bytes")]
    Budget { raw: u64, stored: u64 },
    #[error("{op} after {raw} bytes: {source}")]
    Io {
        raw: u64,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Counts what zstd writes, so the space budget is checked as we go.
struct Counting {
    file: File,
    written: u64,
}

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Streams `input` into `out` compressed, hashing the raw bytes, and gives
/// the file back unsynced: the caller first releases the crasher, then
/// fsyncs (at disk speed, often the slowest step).
/// Reads never wait past the deadline when `input` is non-blocking (a
/// blocking input is bounded by the caller's SIGALRM).
pub fn stream_core<R: Read + AsFd>(
    input: &mut R,
    out: File,
    lim: &StreamLimits,
) -> Result<(Streamed, File), StreamError> {
    let mut raw: u64 = 0;
    let io_at = |op: &'static str, raw: u64| move |source| StreamError::Io { raw, op, source };
    let mut enc = zstd::stream::write::Encoder::new(
        Counting {
            file: out,
            written: 0,
        },
        lim.zstd_level,
    )
    .map_err(io_at("zstd init", 0))?;
    if lim.zstd_workers > 0 {
        enc.multithread(lim.zstd_workers)
            .map_err(io_at("zstd workers", 0))?;
    }
    enc.include_checksum(true)
        .map_err(io_at("zstd checksum", 0))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUFFER_BYTES];
    let mut hit_cap = false;
    loop {
        if raw >= lim.cap {
            // A core of exactly `cap` bytes is complete, not truncated.
            hit_cap = !at_eof(input, lim.deadline, raw)?;
            break;
        }
        let want = (lim.cap - raw).min(buf.len() as u64) as usize;
        let n = match input.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_readable(input.as_fd(), lim.deadline, raw)?;
                continue;
            }
            Err(e) => return Err(io_at("read", raw)(e)),
        };
        hasher.update(&buf[..n]);
        enc.write_all(&buf[..n]).map_err(io_at("write", raw))?;
        raw += n as u64;
        let stored = enc.get_ref().written;
        if stored > lim.budget {
            return Err(StreamError::Budget { raw, stored });
        }
        if Instant::now() >= lim.deadline {
            return Err(StreamError::Deadline { raw });
        }
    }
    let counting = enc.finish().map_err(io_at("zstd finish", raw))?;
    if counting.written > lim.budget {
        return Err(StreamError::Budget {
            raw,
            stored: counting.written,
        });
    }
    Ok((
        Streamed {
            raw,
            stored: counting.written,
            sha256: hasher.finalize().into(),
            hit_cap,
        },
        counting.file,
    ))
}

/// Whether `input` has nothing more to give (reads at most one byte).
fn at_eof<R: Read + AsFd>(input: &mut R, deadline: Instant, raw: u64) -> Result<bool, StreamError> {
    let mut one = [0u8; 1];
    loop {
        match input.read(&mut one) {
            Ok(n) => return Ok(n == 0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_readable(input.as_fd(), deadline, raw)?
            }
            Err(e) => {
                return Err(StreamError::Io {
                    raw,
                    op: "read",
                    source: e,
                })
            }
        }
    }
}

fn wait_readable(fd: BorrowedFd<'_>, deadline: Instant, raw: u64) -> Result<(), StreamError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(StreamError::Deadline { raw });
    }
    let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    match poll(&mut fds, timeout) {
        Ok(0) => Err(StreamError::Deadline { raw }),
        Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
        Err(e) => Err(StreamError::Io {
            raw,
            op: "poll",
            source: e.into(),
        }),
    }
}

/// Sets O_NONBLOCK so reads can be bounded by poll() and the deadline.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> nix::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<OsString> {
        s.split(' ').map(OsString::from).collect()
    }

    #[test]
    fn parses_kernel_args_with_and_without_pidfd() {
        let k = KernelArgs::parse(&args(
            "4242 4243 11 1700000000 18446744073709551615 1 1000 100 3 !usr!bin!x my-comm",
        ))
        .unwrap();
        assert_eq!(k.host_pid, 4242);
        assert_eq!(k.rlimit_core, u64::MAX);
        assert_eq!(k.pidfd, Some(3));
        assert_eq!(k.exe_escaped, b"!usr!bin!x");
        assert_eq!(k.comm, b"my-comm");
        assert_eq!(k.id(), "1700000000-4242");

        let k = KernelArgs::parse(&args("1 1 6 5 0 1 0 0 !x --spool=/evil")).unwrap();
        assert_eq!(k.pidfd, None);
        assert_eq!(k.comm, b"--spool=/evil");

        assert!(matches!(
            KernelArgs::parse(&args("1 2 3")),
            Err(CaptureError::ArgCount(3))
        ));
        assert!(matches!(
            KernelArgs::parse(&args("1 x 6 5 0 1 0 0 !x c")),
            Err(CaptureError::BadNumber { index: 1, .. })
        ));
    }

    #[test]
    fn kernel_args_are_bytes() {
        use std::os::unix::ffi::OsStringExt;
        let mut a = args("1 1 6 5 0 1 0 0 3 x y");
        a[9] = OsString::from_vec(b"!tmp!\xff\xfe!crasher".to_vec());
        a[10] = OsString::from_vec(b"\xff\xfe".to_vec());
        let k = KernelArgs::parse(&a).unwrap();
        assert_eq!(k.comm, b"\xff\xfe");
        assert_eq!(k.exe_escaped, b"!tmp!\xff\xfe!crasher");
        let info = crash_info(&k, None, &[]);
        assert_eq!(info.comm, "\\xff\\xfe");
        assert_eq!(info.executable, "/tmp/\\xff\\xfe/crasher");
        // A number that is not text is an error, not a panic.
        a[0] = OsString::from_vec(b"\xff".to_vec());
        assert!(matches!(
            KernelArgs::parse(&a),
            Err(CaptureError::BadNumber { index: 0, .. })
        ));
    }

    fn limits(cap: u64, budget: u64) -> StreamLimits {
        StreamLimits {
            cap,
            budget,
            deadline: Instant::now() + Duration::from_secs(60),
            zstd_level: 1,
            zstd_workers: 0,
        }
    }

    fn sample(len: usize) -> Vec<u8> {
        // Some structure, some noise: like memory.
        let mut x: u32 = 12345;
        (0..len)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                if i % 4096 < 2048 {
                    0
                } else {
                    (x >> 16) as u8
                }
            })
            .collect()
    }

    #[test]
    fn streams_hashes_and_compresses() {
        let dir = tempfile::tempdir().unwrap();
        let data = sample(3 * BUFFER_BYTES + 17);
        let src = dir.path().join("src");
        std::fs::write(&src, &data).unwrap();
        for workers in [0, 2] {
            let out_path = dir.path().join(format!("out{workers}"));
            let out = File::create(&out_path).unwrap();
            let mut lim = limits(u64::MAX, u64::MAX);
            lim.zstd_workers = workers;
            let (s, _) = stream_core(&mut File::open(&src).unwrap(), out, &lim).unwrap();
            assert_eq!(s.raw, data.len() as u64);
            assert!(!s.hit_cap);
            assert_eq!(s.sha256, <[u8; 32]>::from(Sha256::digest(&data)));
            let stored = std::fs::read(&out_path).unwrap();
            assert_eq!(s.stored, stored.len() as u64);
            assert!(s.stored < s.raw);
            assert_eq!(zstd::decode_all(&stored[..]).unwrap(), data);
        }
    }

    #[test]
    fn cap_truncates_and_budget_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let data = sample(BUFFER_BYTES + 5000);
        let src = dir.path().join("src");
        std::fs::write(&src, &data).unwrap();

        let out = File::create(dir.path().join("cut")).unwrap();
        let (s, _) = stream_core(
            &mut File::open(&src).unwrap(),
            out,
            &limits(10_000, u64::MAX),
        )
        .unwrap();
        assert!(s.hit_cap);
        assert_eq!(s.raw, 10_000);
        assert_eq!(s.sha256, <[u8; 32]>::from(Sha256::digest(&data[..10_000])));

        // Exactly at the cap: complete, not truncated.
        let exact = dir.path().join("exact");
        std::fs::write(&exact, &data[..10_000]).unwrap();
        let out = File::create(dir.path().join("exact.zst")).unwrap();
        let (s, _) = stream_core(
            &mut File::open(&exact).unwrap(),
            out,
            &limits(10_000, u64::MAX),
        )
        .unwrap();
        assert!(!s.hit_cap);
        assert_eq!(s.raw, 10_000);

        let out = File::create(dir.path().join("full")).unwrap();
        let e =
            stream_core(&mut File::open(&src).unwrap(), out, &limits(u64::MAX, 100)).unwrap_err();
        assert!(matches!(e, StreamError::Budget { .. }), "{e}");
    }

    #[test]
    fn deadline_on_a_silent_pipe() {
        let (r, _w) = nix::unistd::pipe().unwrap();
        let mut r = File::from(r);
        set_nonblocking(r.as_fd()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = File::create(dir.path().join("x")).unwrap();
        let mut lim = limits(u64::MAX, u64::MAX);
        lim.deadline = Instant::now() + Duration::from_millis(200);
        let t = Instant::now();
        let e = stream_core(&mut r, out, &lim).unwrap_err();
        assert!(matches!(e, StreamError::Deadline { raw: 0 }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

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

    mod props {
        use super::*;
        use proptest::prelude::*;
        use std::os::unix::ffi::OsStringExt;

        fn os(b: Vec<u8>) -> OsString {
            OsString::from_vec(b)
        }

        /// The kernel's argument vector as our pattern makes it: any values
        /// for the numbers, any bytes for %E and %e.
        fn kernel_argv() -> impl Strategy<Value = (KernelArgs, Vec<OsString>)> {
            (
                (any::<i32>(), any::<i32>(), any::<i32>(), any::<u64>()),
                (any::<u64>(), any::<u32>(), any::<u32>(), any::<u32>()),
                proptest::option::of(any::<i32>()),
                proptest::collection::vec(any::<u8>(), 0..64),
                proptest::collection::vec(any::<u8>(), 0..16),
            )
                .prop_map(|((p, i, s, t), (c, d, u, g), f, exe, comm)| {
                    let k = KernelArgs {
                        host_pid: p,
                        host_tid: i,
                        signal: s,
                        time: t,
                        rlimit_core: c,
                        dumpable: d,
                        uid: u,
                        gid: g,
                        pidfd: f,
                        exe_escaped: exe,
                        comm,
                    };
                    let mut argv: Vec<OsString> = [
                        p.to_string(),
                        i.to_string(),
                        s.to_string(),
                        t.to_string(),
                        c.to_string(),
                        d.to_string(),
                        u.to_string(),
                        g.to_string(),
                    ]
                    .into_iter()
                    .map(OsString::from)
                    .collect();
                    argv.extend(f.map(|f| OsString::from(f.to_string())));
                    argv.push(os(k.exe_escaped.clone()));
                    argv.push(os(k.comm.clone()));
                    (k, argv)
                })
        }

        proptest! {
            // proptest's default: 256 cases, or PROPTEST_CASES (see README.md).

            /// What the kernel can give parses back to the same values.
            #[test]
            fn kernel_args_round_trip((k, argv) in kernel_argv()) {
                prop_assert_eq!(KernelArgs::parse(&argv).ok(), Some(k));
            }

            /// Any argument vector at all: a value or a clear error, never a
            /// panic, and a value re-parses from what it holds.
            #[test]
            fn any_argv_parses_or_errs(argv in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..24).prop_map(os), 0..14)
            ) {
                match KernelArgs::parse(&argv) {
                    Ok(k) => {
                        prop_assert!((10..=11).contains(&argv.len()));
                        prop_assert_eq!(k.pidfd.is_some(), argv.len() == 11);
                        prop_assert_eq!(&k.comm, &argv[argv.len() - 1].as_bytes().to_vec());
                        let info = crash_info(&k, None, &[]);
                        prop_assert_eq!(
                            crate::escape::unescape(&info.comm),
                            Some(k.comm.clone())
                        );
                    }
                    Err(CaptureError::ArgCount(n)) => prop_assert_eq!(n, argv.len()),
                    Err(CaptureError::BadNumber { index, value, .. }) => {
                        prop_assert!(index < argv.len() - 2);
                        prop_assert_eq!(
                            crate::escape::unescape(&value),
                            Some(argv[index].as_bytes().to_vec())
                        );
                    }
                }
            }
        }
    }
}
