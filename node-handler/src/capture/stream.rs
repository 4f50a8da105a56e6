//! Reading the core from stdin through SHA-256 and zstd into a spool entry.
//!
//! Invariants:
//! - Memory stays flat whatever the core's size: one fixed buffer
//!   ([`BUFFER_BYTES`]), zstd's window, and nothing else per byte.
//! - At most `cap` raw bytes are kept; a core of exactly `cap` bytes is
//!   complete, not truncated ([`Streamed::hit_cap`] reads one byte more to tell).
//! - The compressed size is checked against the space budget as it grows,
//!   and reads never wait past the deadline on a non-blocking input (a
//!   blocking one is bounded by capture's SIGALRM).
//! - The crasher is released (stdin closed) as soon as the core is read or
//!   refused, before the slower fsync and rename; an entry is only visible
//!   in `cores/` once its core is synced (see [`crate::spool`]).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::analysis::{ProcessModules, MODULES_FILE};
use crate::buildid;
use crate::limits::SizeLimit;
use crate::spool::{DropReason, HandlerStats, PendingEntry, SpoolEntry, FORMAT_VERSION};

use super::{decide, fds, Ctx, Outcome};

/// Read buffer: fixed, so memory stays flat whatever the core size.
pub const BUFFER_BYTES: usize = 1 << 20;

impl Ctx<'_> {
    /// Streams the core into a new spool entry and commits it.
    pub(super) fn store<R: Read + AsFd>(
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
        fds::release_stdin();
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
            Err(e) => {
                let (r, raw) = decide::stream_failure(e, self.cfg.deadline_seconds, budget);
                return self.dropped(r.reason, r.detail, raw);
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

    /// Build-ids and copies from the files [`buildid::hold`] opened, then
    /// `modules.json` into the entry: best effort, a failure only costs the analysis.
    fn record_modules(&self, pending: &PendingEntry, held: buildid::Held) {
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
    use std::time::Duration;

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
}
