//! Capture: realistic cores through the real kernel path. A process fills N MiB like a
//! heap (`crasher.c`, CRASHER_FILL=mixed), waits, and gets SIGSEGV; each handler is
//! core_pattern in turn with the same core_pipe_limit, so the kernel holds the dying
//! process until the handler lets go of the core pipe. Measured per handler and size:
//! signal → reaped, signal → handler exited, peak RSS and stored bytes.
//!
//! Handlers: ours (the workspace's `coredump-node-handler capture`, with exactly the
//! pattern the agent installs) and the baselines `cat > /dev/null` (the physical limit),
//! `cat > file`, `cat > file && gzip -6` (raw file, then single-threaded compression) and
//! the zstd CLI streaming from the pipe (when installed). All run under `rusage-wrap.c`
//! (the kernel starts them as children of kthreadd, out of our reach), which records
//! peak RSS, exit status and exit time.
//!
//! Files: everything the kernel runs lives in a short directory under /tmp (core_pattern
//! holds at most 127 characters); what the handlers store goes to `work` (the spool
//! through a symlink), and is deleted after each crash.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use coredump_node_handler::buildid;
use coredump_node_handler::config::{CaptureConfig, OptOut};
use coredump_node_handler::install::{
    self, CorePatternGuard, InstallOptions, PatternLock, PidfdMode, Sysctls,
};
use coredump_node_handler::pattern::MAX_PATTERN_LEN;
use coredump_node_handler::spool::{Spool, CORE_FILE};

use super::report::{mib, ratio, secs, Section};
use super::{mb_per_s, median, Scale};
use crate::agent::{build_crasher, cgroup2_root, crash_timed, random_pod_ids, PodCgroup};
use crate::bins::workspace_bin;
use crate::Error;

const WRAPPER_C: &str = include_str!("rusage-wrap.c");
/// A handler may take this long after the reaping to exit (ours fsyncs and commits then).
const EXIT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Clone, Debug)]
pub struct CaptureOptions {
    /// Heap sizes of the crasher, MiB (its core is a little larger).
    pub sizes_mib: Vec<u64>,
    /// Crashes per handler and size.
    pub repeats: usize,
    /// core_pipe_limit for every handler (the agent's default): above 0, the kernel
    /// holds the crashed process until the handler has closed the pipe.
    pub pipe_limit: u32,
}

impl CaptureOptions {
    pub fn for_scale(s: Scale) -> Self {
        match s {
            Scale::Full => Self {
                sizes_mib: vec![64, 256, 1024, 2048],
                repeats: 3,
                pipe_limit: install::DEFAULT_PIPE_LIMIT,
            },
            Scale::Tiny => Self {
                sizes_mib: vec![4],
                repeats: 1,
                pipe_limit: install::DEFAULT_PIPE_LIMIT,
            },
        }
    }
}

/// One core_pattern handler of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handler {
    /// `cat > /dev/null`: the kernel's own speed of producing the core.
    Discard,
    /// `coredump-node-handler capture`.
    Ours,
    /// The same with `binaryCache: false` in capture.json: no mapped binaries held and
    /// copied for the crash analysis (#14's "insight on vs off").
    OursNoBinaryCopy,
    /// `cat > file`.
    RawCopy,
    /// `cat > file && gzip -6 file`, the pipe held until gzip is done, as a plain
    /// `|script` does.
    RawThenGzip,
    /// `zstd -q -T1 -3 -o file` reading the pipe.
    ZstdCli,
}

impl Handler {
    pub const ALL: [Handler; 6] = [
        Handler::Discard,
        Handler::Ours,
        Handler::OursNoBinaryCopy,
        Handler::RawCopy,
        Handler::RawThenGzip,
        Handler::ZstdCli,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Handler::Discard => "cat > /dev/null",
            Handler::Ours => "ours",
            Handler::OursNoBinaryCopy => "ours, binary copy off",
            Handler::RawCopy => "cat > file",
            Handler::RawThenGzip => "cat > file && gzip -6",
            Handler::ZstdCli => "zstd -T1 -3",
        }
    }

    /// Short name of its script and stored files (the pattern is at most 127 chars).
    fn tag(self) -> &'static str {
        match self {
            Handler::Discard => "d",
            Handler::Ours => "h",
            Handler::OursNoBinaryCopy => "n",
            Handler::RawCopy => "c",
            Handler::RawThenGzip => "g",
            Handler::ZstdCli => "z",
        }
    }
}

/// One handler at one size, over all repeats.
#[derive(Clone, Debug)]
pub struct Measurement {
    pub handler: Handler,
    pub size_mib: u64,
    /// Bytes of the core the kernel produced (what `cat > file` stored).
    pub raw_bytes: u64,
    /// Crash signal → crashed process reaped, one per repeat.
    pub reaped_samples: Vec<Duration>,
    /// Median of `reaped_samples`.
    pub reaped: Duration,
    /// Crash signal → handler exited (ours commits after letting the process go).
    pub exited_samples: Vec<Duration>,
    pub exited: Duration,
    /// Raw core MB/s (10^6 B/s) over the median crash → reaped.
    pub mb_per_s: f64,
    /// Largest ru_maxrss of the handler (with its waited-for children) over the repeats.
    pub peak_rss_bytes: u64,
    /// Bytes the handler stored (0 for the discarding one).
    pub stored_bytes: u64,
}

#[derive(Clone, Debug)]
pub struct CaptureResults {
    /// Per size (in the order run), per handler (in [`Handler::ALL`] order).
    pub measurements: Vec<Measurement>,
    /// The handlers that ran (the zstd CLI only when installed).
    pub handlers: Vec<Handler>,
    /// Our handler's binary (the release build under `make bench`).
    pub handler_path: PathBuf,
    /// Ours as installed: the agent's pattern behind the wrapper.
    pub pattern: String,
    pub pipe_limit: u32,
    pub repeats: usize,
    /// Rows left out and why.
    pub skipped: Vec<String>,
    /// Files in the build-id cache of our two spools at the end (binary copy on, off).
    pub cached_files: Vec<(Handler, u64)>,
}

/// Ok when this machine can run the benchmark, else why not.
pub fn available() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root to set core_pattern and create cgroups".into());
    }
    if cgroup2_root().is_none() {
        return Err("needs a cgroup v2 hierarchy for the pod cgroups".into());
    }
    if Command::new("gcc").arg("--version").output().is_err() {
        return Err("needs gcc to build the crasher and the wrapper".into());
    }
    let sys = Sysctls::default();
    sys.read_pattern()
        .and_then(|p| {
            let _lock = PatternLock::acquire()?;
            sys.write_pattern(&p)
        })
        .map_err(|e| format!("core_pattern is not writable here: {e}"))
}

/// Runs every size `opts.repeats` times through every handler. Holds the core_pattern
/// lock throughout and restores core_pattern and core_pipe_limit, also on error.
pub fn run(opts: &CaptureOptions, work: &Path) -> Result<CaptureResults, Error> {
    if opts.sizes_mib.is_empty() || opts.repeats == 0 || opts.pipe_limit == 0 {
        return Err(Error::Setup(format!(
            "capture benchmark needs sizes, repeats and a pipe limit above 0: {opts:?}"
        )));
    }
    let io = |what: String| move |e| Error::Io(what, e);
    std::fs::create_dir_all(work).map_err(io(format!("mkdir {}", work.display())))?;
    // Absolute: the scripts run with / as their working directory.
    let work = work
        .canonicalize()
        .map_err(io(format!("canonicalize {}", work.display())))?;
    let crasher = build_crasher(&work)?;
    let handler_path = workspace_bin("coredump-node-handler")?;

    let short = tempfile::Builder::new()
        .prefix("cdb")
        .tempdir_in("/tmp")
        .map_err(io("tempdir in /tmp".into()))?;
    let k = short.path().to_path_buf();
    let wrapper = build_wrapper(&k)?;
    // A copy: cargo may replace the original while the kernel runs it.
    let handler = k.join(Handler::Ours.tag());
    std::fs::copy(&handler_path, &handler).map_err(io(format!(
        "copy {} to {}",
        handler_path.display(),
        handler.display()
    )))?;

    // The spools where the agent would keep them (one with the binary copy for the
    // analysis off), with what the agent writes into them (the capture reads both
    // files for every crash; neither drops our crasher's core).
    let spool_dir = work.join("spool");
    let spool = bench_spool(&spool_dir, &CaptureConfig::default())?;
    let spool_link = k.join("s");
    std::os::unix::fs::symlink(&spool_dir, &spool_link)
        .map_err(io(format!("symlink {}", spool_link.display())))?;
    let nocopy_dir = work.join("spool-nocopy");
    let nocopy = CaptureConfig {
        binary_cache: false,
        ..Default::default()
    };
    let spool_nocopy = bench_spool(&nocopy_dir, &nocopy)?;
    let nocopy_link = k.join("n");
    std::os::unix::fs::symlink(&nocopy_dir, &nocopy_link)
        .map_err(io(format!("symlink {}", nocopy_link.display())))?;

    let mut handlers = Vec::new();
    let mut skipped = Vec::new();
    let mut patterns = Vec::new();
    let cat = find_program("cat")
        .ok_or_else(|| Error::Setup("cat is not installed (not in PATH)".into()))?;
    let out = |h: Handler| sh_quote(&format!("{}/{}.", work.display(), h.tag()));
    let record = format!("{}/o.%P", k.display());
    for h in Handler::ALL {
        let script = match h {
            Handler::Ours | Handler::OursNoBinaryCopy => None,
            Handler::Discard => Some(format!("exec {} > /dev/null", sh_quote(&cat))),
            Handler::RawCopy => Some(format!("exec {} > {}\"$1\"", sh_quote(&cat), out(h))),
            Handler::RawThenGzip => match find_program("gzip") {
                Some(gzip) => Some(format!(
                    "{} > {o}\"$1\" && exec {} -6 {o}\"$1\"",
                    sh_quote(&cat),
                    sh_quote(&gzip),
                    o = out(h)
                )),
                None => {
                    skipped.push(format!("{}: gzip is not installed", h.name()));
                    continue;
                }
            },
            Handler::ZstdCli => match find_program("zstd") {
                Some(zstd) => Some(format!(
                    "exec {} -q -T1 -3 -o {}\"$1\"",
                    sh_quote(&zstd),
                    out(h)
                )),
                None => {
                    skipped.push(format!("{}: zstd is not installed", h.name()));
                    continue;
                }
            },
        };
        let pattern = match script {
            None => {
                let ours = install::pattern_for(&InstallOptions {
                    handler: handler.clone(),
                    spool: if h == Handler::Ours {
                        spool_link.clone()
                    } else {
                        nocopy_link.clone()
                    },
                    pipe_limit: opts.pipe_limit,
                    pidfd: PidfdMode::Auto,
                })
                .map_err(|e| Error::Setup(format!("our pattern: {e}")))?;
                let argv = ours.strip_prefix('|').unwrap_or(&ours).to_string();
                format!("|{} {record} {argv}", wrapper.display())
            }
            Some(body) => {
                let path = k.join(h.tag());
                write_script(&path, &body)?;
                format!("|{} {record} {} %P", wrapper.display(), path.display())
            }
        };
        if pattern.len() > MAX_PATTERN_LEN {
            return Err(Error::Setup(format!(
                "core_pattern {pattern:?} is {} characters, the kernel keeps {MAX_PATTERN_LEN}",
                pattern.len()
            )));
        }
        handlers.push(h);
        patterns.push(pattern);
    }

    let ctx = Ctx {
        crasher,
        k: k.clone(),
        work: work.clone(),
        spool,
        spool_nocopy,
    };
    // Declared after `short`, so dropped before it: the pattern is restored before the
    // programs it names are deleted.
    let guard =
        CorePatternGuard::save().map_err(|e| Error::Setup(format!("saving core_pattern: {e}")))?;
    let sys = Sysctls::default();
    sys.write_pipe_limit(opts.pipe_limit)
        .map_err(|e| Error::Setup(format!("core_pipe_limit: {e}")))?;

    // samples[size][handler]
    let mut samples: Vec<Vec<Vec<Sample>>> = Vec::new();
    let mut raw_of_size = Vec::new();
    for &size in &opts.sizes_mib {
        let mut per: Vec<Vec<Sample>> = vec![Vec::new(); handlers.len()];
        let mut raw: Option<u64> = None;
        for rep in 0..opts.repeats {
            // Interleaved and rotated, so drift on a shared machine and the order
            // within a round hit every handler alike.
            for i in 0..handlers.len() {
                let j = (i + rep) % handlers.len();
                sys.write_pattern(&patterns[j])
                    .map_err(|e| Error::Setup(format!("core_pattern: {e}")))?;
                let s = ctx.crash_once(handlers[j], size)?;
                if let Some(r) = s.raw {
                    // Same program, same fill, no ASLR: every core has the same size.
                    match raw {
                        None => raw = Some(r),
                        Some(prev) if prev != r => {
                            return Err(Error::Setup(format!(
                                "{} stored a raw core of {r} bytes, another handler {prev} \
                                 (heap {size} MiB)",
                                handlers[j].name()
                            )))
                        }
                        Some(_) => {}
                    }
                }
                per[j].push(s);
            }
        }
        samples.push(per);
        raw_of_size.push(raw.unwrap_or(0));
    }
    drop(guard);
    let cached_files = [
        (Handler::Ours, tree_size(&buildid::cache_dir(&spool_dir)).0),
        (
            Handler::OursNoBinaryCopy,
            tree_size(&buildid::cache_dir(&nocopy_dir)).0,
        ),
    ];
    let _ = std::fs::remove_dir_all(&spool_dir);
    let _ = std::fs::remove_dir_all(&nocopy_dir);
    let _ = std::fs::remove_file(&ctx.crasher);
    // Cores of other processes that crashed while a baseline was installed.
    for e in std::fs::read_dir(&work).into_iter().flatten().flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if ["c.", "g.", "z."].iter().any(|p| name.starts_with(p)) {
            let _ = std::fs::remove_file(e.path());
        }
    }

    let mut measurements = Vec::new();
    for ((&size, per), raw) in opts.sizes_mib.iter().zip(samples).zip(raw_of_size) {
        for (&h, ss) in handlers.iter().zip(per) {
            let reaped_samples: Vec<Duration> = ss.iter().map(|s| s.reaped).collect();
            let exited_samples: Vec<Duration> = ss.iter().map(|s| s.exited).collect();
            let mut stored: Vec<u64> = ss.iter().map(|s| s.stored).collect();
            stored.sort_unstable();
            let reaped = median(&reaped_samples);
            measurements.push(Measurement {
                handler: h,
                size_mib: size,
                raw_bytes: raw,
                reaped,
                exited: median(&exited_samples),
                mb_per_s: mb_per_s(raw, reaped),
                peak_rss_bytes: ss.iter().map(|s| s.rss).max().unwrap_or(0),
                stored_bytes: stored.get(stored.len() / 2).copied().unwrap_or(0),
                reaped_samples,
                exited_samples,
            });
        }
    }
    let ours = patterns
        .iter()
        .zip(&handlers)
        .find(|(_, h)| **h == Handler::Ours)
        .map(|(p, _)| p.clone())
        .unwrap_or_default();
    Ok(CaptureResults {
        measurements,
        handlers,
        handler_path,
        pattern: ours,
        pipe_limit: opts.pipe_limit,
        repeats: opts.repeats,
        skipped,
        cached_files: cached_files.to_vec(),
    })
}

/// One crash through one handler.
#[derive(Clone, Debug)]
struct Sample {
    reaped: Duration,
    exited: Duration,
    rss: u64,
    stored: u64,
    /// The raw core size, where the handler shows it (ours, `cat > file`).
    raw: Option<u64>,
}

struct Ctx {
    crasher: PathBuf,
    /// The short directory the kernel runs things from.
    k: PathBuf,
    work: PathBuf,
    spool: Spool,
    spool_nocopy: Spool,
}

impl Ctx {
    fn crash_once(&self, h: Handler, size: u64) -> Result<Sample, Error> {
        // A fresh pod and container each time: our handler's rate limit (per pod) never
        // drops a core, and the cgroup path makes it a pod crash, not a host one.
        let (pod_uid, cid) = random_pod_ids()?;
        let cg = PodCgroup::new(&pod_uid, &cid)?;
        // Instant is CLOCK_MONOTONIC too; this pair maps the signal onto the wrapper's clock.
        let (i0, m0) = (Instant::now(), monotonic_ns());
        let c = crash_timed(&self.crasher, &cg.procs(), size)?;
        let signalled_ns = m0 + (c.signalled - i0).as_nanos() as u64;
        let reaped = c.reaped - c.signalled;

        let rec_path = self.k.join(format!("o.{}", c.pid));
        let rec = wait_record(&rec_path, h)?;
        let _ = std::fs::remove_file(&rec_path);
        if !rec.status.success() {
            return Err(Error::Setup(format!(
                "{} ended with {:?} for pid {}; capture log tail:\n{}",
                h.name(),
                rec.status,
                c.pid,
                crate::process::log_tail(&self.spool.log_path(), 20)
            )));
        }
        let exited = Duration::from_nanos(rec.end_ns.saturating_sub(signalled_ns));
        let (stored, raw) = self.collect(h, c.pid, &pod_uid)?;
        // Dirty pages of other runs must not slow the next one.
        nix::unistd::sync();
        drop(cg);
        Ok(Sample {
            reaped,
            exited,
            rss: rec.maxrss_kib * 1024,
            stored,
            raw,
        })
    }

    /// Stored bytes (and the raw size where known) of the crash of `pid`, then deletes
    /// what was stored. An error when the handler stored nothing.
    fn collect(&self, h: Handler, pid: u32, pod_uid: &str) -> Result<(u64, Option<u64>), Error> {
        let file = |suffix: &str| self.work.join(format!("{}.{pid}{suffix}", h.tag()));
        let take = |p: &Path| -> Result<u64, Error> {
            let len = std::fs::metadata(p)
                .map_err(|e| Error::Io(format!("{} stored no {}", h.name(), p.display()), e))?
                .len();
            std::fs::remove_file(p).map_err(|e| Error::Io(format!("rm {}", p.display()), e))?;
            Ok(len)
        };
        match h {
            Handler::Discard => Ok((0, None)),
            Handler::Ours => collect_ours(&self.spool, pid, pod_uid),
            Handler::OursNoBinaryCopy => collect_ours(&self.spool_nocopy, pid, pod_uid),
            Handler::RawCopy => {
                let n = take(&file(""))?;
                Ok((n, Some(n)))
            }
            Handler::RawThenGzip => {
                if file("").exists() {
                    return Err(Error::Setup(format!("gzip left {}", file("").display())));
                }
                Ok((take(&file(".gz"))?, None))
            }
            Handler::ZstdCli => Ok((take(&file(""))?, None)),
        }
    }
}

/// Our stored core of `pid` in `spool` (its size, and the raw size), then deletes it.
fn collect_ours(spool: &Spool, pid: u32, pod_uid: &str) -> Result<(u64, Option<u64>), Error> {
    let err = |e: &dyn std::fmt::Display| Error::Setup(format!("spool: {e}"));
    let ids = spool.list_entries().map_err(|e| err(&e))?;
    for id in ids {
        let entry = spool.read_entry(&id).map_err(|e| err(&e))?;
        if entry.crash.host_pid != pid as i32 {
            continue;
        }
        let core = spool.entry_dir(&id).map_err(|e| err(&e))?.join(CORE_FILE);
        let stored = std::fs::metadata(&core)
            .map_err(|e| Error::Io(format!("stat {}", core.display()), e))?
            .len();
        if entry.truncated || stored == 0 || stored != entry.stored_size {
            return Err(Error::Setup(format!(
                "our core of pid {pid} is incomplete: truncated {}, {stored} bytes on \
                 disk, {} in its metadata",
                entry.truncated, entry.stored_size
            )));
        }
        if entry.crash.pod_uid.as_deref() != Some(pod_uid) {
            return Err(Error::Setup(format!(
                "our handler attributed pid {pid} to pod {:?}, not {pod_uid}",
                entry.crash.pod_uid
            )));
        }
        spool.delete_entry(&id).map_err(|e| err(&e))?;
        return Ok((stored, Some(entry.raw_size)));
    }
    // Nothing stored: say why if the handler wrote a drop record.
    let why = spool
        .list_drops()
        .unwrap_or_default()
        .iter()
        .filter_map(|id| spool.read_drop(id).ok())
        .find(|d| d.crash.host_pid == pid as i32)
        .map(|d| format!("dropped it ({:?}: {})", d.reason, d.detail))
        .unwrap_or_else(|| "left neither an entry nor a drop record".into());
    Err(Error::Setup(format!(
        "our handler did not store the core of pid {pid}: {why}; capture log tail:\n{}",
        crate::process::log_tail(&spool.log_path(), 20)
    )))
}

/// What the wrapper recorded.
struct Record {
    maxrss_kib: u64,
    status: ExitStatus,
    end_ns: u64,
}

/// Waits for the wrapper's record: with our handler it comes after the reaping (the
/// crasher is let go before the fsync and commit).
fn wait_record(path: &Path, h: Handler) -> Result<Record, Error> {
    let deadline = Instant::now() + EXIT_TIMEOUT;
    loop {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let f: Vec<&str> = text.split_whitespace().collect();
                let parsed = match f[..] {
                    [rss, status, end] => rss
                        .parse()
                        .ok()
                        .zip(status.parse().ok())
                        .zip(end.parse().ok()),
                    _ => None,
                };
                return match parsed {
                    Some(((maxrss_kib, status), end_ns)) => Ok(Record {
                        maxrss_kib,
                        status: ExitStatus::from_raw(status),
                        end_ns,
                    }),
                    None => Err(Error::Setup(format!(
                        "{}: unreadable record {text:?}",
                        path.display()
                    ))),
                };
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::Io(format!("read {}", path.display()), e)),
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: format!("{} to exit ({})", h.name(), path.display()),
                last: "no record from the wrapper".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec passed to it.
    #[allow(unsafe_code)]
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts)
    };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Compiles `rusage-wrap.c` into `dir/w`.
fn build_wrapper(dir: &Path) -> Result<PathBuf, Error> {
    let src = dir.join("w.c");
    let out = dir.join("w");
    std::fs::write(&src, WRAPPER_C)
        .map_err(|e| Error::Io(format!("write {}", src.display()), e))?;
    let o = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .map_err(|e| Error::Io("run gcc".into(), e))?;
    if !o.status.success() {
        return Err(Error::Setup(format!(
            "gcc rusage-wrap.c: {}",
            String::from_utf8_lossy(&o.stderr)
        )));
    }
    Ok(out)
}

fn write_script(path: &Path, body: &str) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let io = |e| Error::Io(format!("write {}", path.display()), e);
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(io)
}

/// `name` in $PATH, by absolute path: the kernel runs helpers with a minimal PATH.
/// Files and bytes under `dir` (0, 0 when it does not exist).
pub(crate) fn tree_size(dir: &Path) -> (u64, u64) {
    let mut total = (0, 0);
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => todo.push(e.path()),
                Ok(m) => total = (total.0 + 1, total.1 + m.len()),
                Err(_) => {}
            }
        }
    }
    total
}

/// A spool laid out as the agent leaves it, with `cfg` as capture.json and an empty
/// opt-out list.
pub(crate) fn bench_spool(dir: &Path, cfg: &CaptureConfig) -> Result<Spool, Error> {
    let _ = std::fs::remove_dir_all(dir);
    let spool = Spool::new(dir);
    spool
        .ensure_layout()
        .map_err(|e| Error::Setup(format!("spool: {e}")))?;
    cfg.store(&spool.config_path())
        .map_err(|e| Error::Setup(format!("capture.json: {e}")))?;
    OptOut::default()
        .store(&spool.optout_path())
        .map_err(|e| Error::Setup(format!("optout.json: {e}")))?;
    Ok(spool)
}

fn find_program(name: &str) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .map(|p| p.display().to_string())
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl CaptureResults {
    pub fn get(&self, h: Handler, size_mib: u64) -> Option<&Measurement> {
        self.measurements
            .iter()
            .find(|m| m.handler == h && m.size_mib == size_mib)
    }

    pub fn section(&self) -> Section {
        let mut s = Section::new(
            "Capture",
            &format!(
                "Crash → reaped through the real kernel path: a process fills its heap like \
                 a real one (per 10 pages 5 zero, 2 random, 3 log text), waits, and gets \
                 SIGSEGV; each handler is core_pattern in turn with core_pipe_limit {}, so \
                 the kernel holds the dying process until the handler lets go of the pipe. \
                 Medians of {} interleaved run{}; every handler runs under the same small \
                 wrapper that records its peak RSS (ru_maxrss with its children) and when it \
                 exited. Raw MB/s: raw core bytes over crash → reaped (10^6 B/s).",
                self.pipe_limit,
                self.repeats,
                if self.repeats == 1 { "" } else { "s" }
            ),
            &[
                "heap",
                "raw core",
                "handler",
                "crash → reaped",
                "vs discard",
                "raw MB/s",
                "crash → handler exit",
                "peak RSS",
                "stored",
                "stored/raw",
            ],
        );
        for m in &self.measurements {
            let discard = self.get(Handler::Discard, m.size_mib).map(|d| d.reaped);
            let stored = m.handler != Handler::Discard;
            s.row(vec![
                format!("{} MiB", m.size_mib),
                mib(m.raw_bytes),
                m.handler.name().to_string(),
                secs(m.reaped),
                discard
                    .map(|d| ratio(m.reaped.as_secs_f64() / d.as_secs_f64()))
                    .unwrap_or_else(|| "–".into()),
                format!("{:.0}", m.mb_per_s),
                secs(m.exited),
                mib(m.peak_rss_bytes),
                if stored {
                    mib(m.stored_bytes)
                } else {
                    "–".into()
                },
                if stored && m.raw_bytes > 0 {
                    percent(m.stored_bytes, m.raw_bytes)
                } else {
                    "–".into()
                },
            ]);
        }
        for n in self.goal_notes() {
            s.note(n);
        }
        s.note(
            "Binary copy: before letting the process go, ours opens the files it mapped \
             executable (/proc/PID/map_files, for the crash analysis's unwind tables and \
             symbols), and copies those not yet in the node's build-id cache after; \
             `binaryCache: false` in capture.json turns that off (\"ours, binary copy off\"). \
             The stack and registers need nothing at capture: the agent's analysis reads \
             them from the spooled core.",
        );
        s.note(
            "Ours lets the process go once the core is read, then fsyncs and commits \
             (counted in handler exit); the baselines never fsync. `cat > file && gzip` \
             holds the pipe until gzip is done, as a plain `|script` does.",
        );
        if self
            .handler_path
            .components()
            .any(|c| c.as_os_str() == "debug")
        {
            s.note(format!(
                "Our handler is a debug build ({}): not representative; `make bench` uses \
                 the release build.",
                self.handler_path.display()
            ));
        }
        for why in &self.skipped {
            s.note(format!("Not run: {why}."));
        }
        s
    }

    /// The issue's goals for a 1 GiB core (or the largest heap run), measured.
    fn goal_notes(&self) -> Vec<String> {
        let mut sizes: Vec<u64> = self.measurements.iter().map(|m| m.size_mib).collect();
        sizes.sort_unstable();
        let Some(size) = sizes
            .iter()
            .copied()
            .find(|&s| s == 1024)
            .or(sizes.last().copied())
        else {
            return Vec::new();
        };
        let (Some(ours), Some(discard), Some(copy)) = (
            self.get(Handler::Ours, size),
            self.get(Handler::Discard, size),
            self.get(Handler::RawCopy, size),
        ) else {
            return Vec::new();
        };
        let met = |ok: bool| if ok { "met" } else { "NOT met" };
        let vs = |b: &Measurement| ours.reaped.as_secs_f64() / b.reaped.as_secs_f64();
        let (vd, vc) = (vs(discard), vs(copy));
        let stored = ours.stored_bytes as f64 / ours.raw_bytes.max(1) as f64;
        let mut notes = Vec::new();
        if let Some(off) = self.get(Handler::OursNoBinaryCopy, size) {
            let v = vs(off);
            notes.push(format!(
                "Goal, {size} MiB heap: ours vs ours with the binary copy off {} (goal ≤ \
                 1.05×, the crash analysis's cost at capture): {}.",
                ratio(v),
                met(v <= 1.05)
            ));
        }
        notes.extend([
            format!(
                "Goal, {size} MiB heap: ours vs cat > /dev/null {} (goal ≤ 2×): {}.",
                ratio(vd),
                met(vd <= 2.0)
            ),
            format!(
                "Goal, {size} MiB heap: ours vs cat > file {} (goal < 1×, faster than the raw \
                 copy): {}.",
                ratio(vc),
                met(vc < 1.0)
            ),
            format!(
                "Goal, {size} MiB heap: ours stores {} of the raw core (goal ≤ 25 %): {}.",
                percent(ours.stored_bytes, ours.raw_bytes),
                met(stored <= 0.25)
            ),
        ]);
        notes
    }
}

fn percent(part: u64, whole: u64) -> String {
    format!("{:.1} %", 100.0 * part as f64 / whole.max(1) as f64)
}
