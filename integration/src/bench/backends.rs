//! Backends: one core uploaded (zstd, as the agent sends it) and downloaded raw
//! (decompressed on the fly) straight to the server, on the filesystem backend and on
//! the S3 backend (a versitygw on loopback), in interleaved rounds of the same run, with
//! the server process's resident memory sampled during each transfer. Every download is
//! hashed and checked against the upload's sha256.
//!
//! The server's VmHWM cannot be reset between rounds, so a thread reads its VmRSS from
//! /proc every [`RSS_EVERY`] while a transfer runs; the figure is the highest sample
//! minus the VmRSS just before the transfer started.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::report::{mib, ratio, secs, Section};
use super::transfer::{post_pending, sha_of_download, write_mixed_core};
use super::{mb_per_s, median};
use crate::env::{Backend, TestEnv};
use crate::Error;

const API: &str = "/apis/coredump.io/v1alpha1";

/// How often the server's VmRSS is read during a transfer.
pub const RSS_EVERY: Duration = Duration::from_millis(20);

/// The goal for the S3 backend's upload time, against the filesystem backend's.
pub const GOAL_S3_UPLOAD_RATIO: f64 = 1.5;
/// The goal for the server's RSS growth during one transfer, whatever the core's size.
pub const GOAL_RSS_GROWTH_KIB: u64 = 64 * 1024;

/// One core of the transfer benchmark's size, moved the same number of rounds.
pub use super::transfer::TransferOptions as BackendsOptions;

/// The server's resident memory around one transfer.
#[derive(Clone, Copy, Debug, Default)]
pub struct RssGrowth {
    /// VmRSS just before the transfer.
    pub baseline_kib: u64,
    /// The highest VmRSS sampled during it.
    pub peak_kib: u64,
    /// How many samples were read.
    pub samples: usize,
}

impl RssGrowth {
    pub fn growth_kib(&self) -> u64 {
        self.peak_kib.saturating_sub(self.baseline_kib)
    }
}

/// One operation on one backend, once per round.
#[derive(Clone, Debug)]
pub struct BackendMeasure {
    pub backend: Backend,
    pub op: String,
    /// Bytes on the wire per run.
    pub bytes: u64,
    pub samples: Vec<Duration>,
    pub rss: Vec<RssGrowth>,
}

impl BackendMeasure {
    pub fn median(&self) -> Duration {
        median(&self.samples)
    }

    /// The largest RSS growth over the rounds.
    pub fn max_growth_kib(&self) -> u64 {
        self.rss
            .iter()
            .map(RssGrowth::growth_kib)
            .max()
            .unwrap_or(0)
    }
}

#[derive(Debug)]
pub struct BackendsResults {
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub measures: Vec<BackendMeasure>,
    /// Per backend: how many downloads were hashed, and how many had the upload's sha256.
    pub verified: Vec<(Backend, usize, usize)>,
    /// Per backend: the server's VmHWM before the first round and after the last.
    pub hwm_kib: Vec<(Backend, u64, u64)>,
}

/// A field (`VmRSS`, `VmHWM`) of `/proc/<pid>/status`, in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Runs `f` while a thread samples `pid`'s VmRSS every [`RSS_EVERY`].
fn sampling_rss<T>(
    pid: u32,
    f: impl FnOnce() -> Result<T, Error>,
) -> Result<(T, RssGrowth), Error> {
    let baseline_kib = status_kib(pid, "VmRSS")
        .ok_or_else(|| Error::Setup(format!("no VmRSS in /proc/{pid}/status")))?;
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let (mut peak, mut n) = (0u64, 0usize);
            loop {
                let done = stop.load(Ordering::Acquire);
                if let Some(kib) = status_kib(pid, "VmRSS") {
                    peak = peak.max(kib);
                    n += 1;
                }
                if done {
                    return (peak, n);
                }
                std::thread::sleep(RSS_EVERY);
            }
        });
        let out = f();
        stop.store(true, Ordering::Release);
        let (peak_kib, samples) = sampler.join().unwrap_or((0, 0));
        out.map(|v| {
            (
                v,
                RssGrowth {
                    baseline_kib,
                    peak_kib,
                    samples,
                },
            )
        })
    })
}

fn measure<'a>(
    v: &'a mut Vec<BackendMeasure>,
    backend: Backend,
    op: &str,
    bytes: u64,
) -> &'a mut BackendMeasure {
    if let Some(i) = v.iter().position(|m| m.backend == backend && m.op == op) {
        return &mut v[i];
    }
    v.push(BackendMeasure {
        backend,
        op: op.into(),
        bytes,
        samples: Vec::new(),
        rss: Vec::new(),
    });
    let last = v.len() - 1;
    &mut v[last]
}

fn server_pid(env: &TestEnv) -> Result<u32, Error> {
    env.server()
        .pid()
        .ok_or_else(|| Error::Setup("the extension server is not running".into()))
}

/// Runs the rounds on `envs` (one per backend, e.g. the filesystem's and the S3 one's),
/// interleaved: round r uploads and downloads one core on each environment in turn.
pub fn run(
    envs: &[&TestEnv],
    opts: &BackendsOptions,
    work: &Path,
) -> Result<BackendsResults, Error> {
    std::fs::create_dir_all(work).map_err(|e| Error::Io("mkdir work".into(), e))?;
    let raw = opts.core_mib << 20;
    let zst = work.join("core.zst");
    let (sha, stored) = write_mixed_core(&zst, raw)?;
    let null = Path::new("/dev/null");
    let mut nss = Vec::new();
    let mut hwm_kib = Vec::new();
    let mut verified = Vec::new();
    for env in envs {
        nss.push(env.namespace("bench-backends")?);
        let pid = server_pid(env)?;
        hwm_kib.push((env.backend, status_kib(pid, "VmHWM").unwrap_or(0), 0));
        verified.push((env.backend, 0, 0));
    }
    let mut m: Vec<BackendMeasure> = Vec::new();

    for r in 0..opts.repeats {
        for (i, env) in envs.iter().enumerate() {
            let (ns, b) = (&nss[i], env.backend);
            let c = env.direct_admin();
            let pid = server_pid(env)?;
            let name = format!("core-{r}");
            post_pending(&c, ns, &name, raw, stored, &sha)?;
            let base = format!("{API}/namespaces/{ns}/coredumps/{name}");

            let (t, rss) = sampling_rss(pid, || {
                c.transfer(
                    "PUT",
                    &format!("{base}/upload"),
                    &[("Content-Type", "application/zstd")],
                    Some(&zst),
                    null,
                )
            })?;
            if t.status != 200 || t.uploaded != stored {
                return Err(Error::Setup(format!(
                    "upload on {b:?}: status {}, {} of {stored} bytes sent",
                    t.status, t.uploaded
                )));
            }
            let u = measure(&mut m, b, "upload (zstd)", stored);
            u.samples.push(t.elapsed);
            u.rss.push(rss);

            let (t, rss) = sampling_rss(pid, || {
                c.transfer("GET", &format!("{base}/download"), &[], None, null)
            })?;
            if t.status != 200 || t.downloaded != raw {
                return Err(Error::Setup(format!(
                    "raw download on {b:?}: status {}, {} of {raw} bytes",
                    t.status, t.downloaded
                )));
            }
            let d = measure(&mut m, b, "download raw", raw);
            d.samples.push(t.elapsed);
            d.rss.push(rss);

            // Untimed: the bytes themselves, hashed from a file.
            let got =
                sha_of_download(&c, &format!("{base}/download"), &work.join("download.core"))?;
            verified[i].1 += 1;
            if got == sha {
                verified[i].2 += 1;
            }
            let _ = c.request("DELETE", &base, &[], None);
        }
    }
    for (i, env) in envs.iter().enumerate() {
        hwm_kib[i].2 = status_kib(server_pid(env)?, "VmHWM").unwrap_or(0);
    }
    let _ = std::fs::remove_file(&zst);
    Ok(BackendsResults {
        raw_bytes: raw,
        stored_bytes: stored,
        measures: m,
        verified,
        hwm_kib,
    })
}

fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::Filesystem => "filesystem",
        Backend::S3 => "S3 (versitygw)",
    }
}

fn kib(k: u64) -> String {
    format!("{:.1} MiB", k as f64 / 1024.0)
}

impl BackendsResults {
    pub fn find(&self, b: Backend, op: &str) -> Option<&BackendMeasure> {
        self.measures.iter().find(|m| m.backend == b && m.op == op)
    }

    /// Every download hashed on every backend had the upload's sha256.
    pub fn all_verified(&self) -> bool {
        self.verified.iter().all(|(_, n, ok)| *n > 0 && n == ok)
    }

    pub fn section(&self) -> Section {
        let mut s = Section::new(
            "Storage backends",
            &format!(
                "One heap-like core of {} ({} stored with zstd) uploaded and downloaded raw \
                 with curl straight to the server (TLS, HTTP/1.1, bodies from disk and to \
                 /dev/null), on the filesystem backend and on the S3 backend (versitygw, \
                 posix root, on loopback), in interleaved rounds. Medians; RSS growth is the \
                 server's highest VmRSS during a transfer (sampled every {} ms) minus its \
                 VmRSS just before, the largest over the rounds.",
                mib(self.raw_bytes),
                mib(self.stored_bytes),
                RSS_EVERY.as_millis()
            ),
            &[
                "operation",
                "backend",
                "bytes",
                "time",
                "wire MB/s",
                "raw core MB/s",
                "time vs filesystem",
                "server RSS growth",
            ],
        );
        for op in ["upload (zstd)", "download raw"] {
            let fs = self
                .find(Backend::Filesystem, op)
                .map(BackendMeasure::median);
            for m in self.measures.iter().filter(|m| m.op == op) {
                let t = m.median();
                s.row(vec![
                    m.op.clone(),
                    backend_name(m.backend).into(),
                    mib(m.bytes),
                    secs(t),
                    format!("{:.0}", mb_per_s(m.bytes, t)),
                    format!("{:.0}", mb_per_s(self.raw_bytes, t)),
                    fs.map(|f| ratio(t.as_secs_f64() / f.as_secs_f64()))
                        .unwrap_or_else(|| "–".into()),
                    kib(m.max_growth_kib()),
                ]);
            }
        }
        let met = |ok: bool| if ok { "met" } else { "NOT met" };
        if let (Some(fs), Some(s3)) = (
            self.find(Backend::Filesystem, "upload (zstd)"),
            self.find(Backend::S3, "upload (zstd)"),
        ) {
            let x = s3.median().as_secs_f64() / fs.median().as_secs_f64();
            s.note(format!(
                "goal: S3 upload ≤ {GOAL_S3_UPLOAD_RATIO}× the filesystem backend's time: {} ({})",
                ratio(x),
                met(x <= GOAL_S3_UPLOAD_RATIO)
            ));
        }
        for (b, _, _) in &self.verified {
            let worst = self
                .measures
                .iter()
                .filter(|m| m.backend == *b)
                .map(BackendMeasure::max_growth_kib)
                .max()
                .unwrap_or(0);
            s.note(format!(
                "goal: server RSS growth ≤ {} per transfer on {}: at most {} ({})",
                kib(GOAL_RSS_GROWTH_KIB),
                backend_name(*b),
                kib(worst),
                met(worst <= GOAL_RSS_GROWTH_KIB)
            ));
        }
        for (b, before, after) in &self.hwm_kib {
            s.note(format!(
                "server VmHWM on {}: {} before the first round, {} after the last",
                backend_name(*b),
                kib(*before),
                kib(*after)
            ));
        }
        for (b, n, ok) in &self.verified {
            s.note(if n == ok && *n > 0 {
                format!(
                    "{}: all {n} raw downloads had the upload's sha256",
                    backend_name(*b)
                )
            } else {
                format!(
                    "{}: only {ok} of {n} raw downloads had the upload's sha256",
                    backend_name(*b)
                )
            });
        }
        s
    }
}
