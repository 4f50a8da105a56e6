//! Limits that keep a crash loop or a huge process from filling the node:
//! RLIMIT_CORE, core size, spool size, free space and a per-pod rate limit.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use crate::config::CaptureConfig;
use crate::spool::DropReason;

/// Below one page a core holds no memory at all (systemd skips those too).
pub const PAGE_SIZE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("lock {path}: {source}")]
    Lock {
        path: String,
        #[source]
        source: nix::Error,
    },
    #[error("statvfs {path}: {source}")]
    Statvfs {
        path: String,
        #[source]
        source: nix::Error,
    },
    #[error("invalid rate-limit key {0:?}")]
    InvalidKey(String),
}

/// A decision not to store a core, with a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: DropReason,
    pub detail: String,
}

impl Refusal {
    fn new(reason: DropReason, detail: String) -> Self {
        Self { reason, detail }
    }
}

/// What cuts a core short, when one does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeLimit {
    MaxCoreBytes,
    RlimitCore,
}

impl SizeLimit {
    pub fn as_str(self) -> &'static str {
        match self {
            SizeLimit::MaxCoreBytes => "maxCoreBytes",
            SizeLimit::RlimitCore => "rlimitCore",
        }
    }
}

/// Raw bytes to keep given the crasher's RLIMIT_CORE (`%c`): the kernel
/// ignores it for pipes, so the handler honours it like a file dump would.
pub fn size_cap(rlimit_core: u64, max_core_bytes: u64) -> Result<(u64, SizeLimit), Refusal> {
    if rlimit_core == 0 {
        return Err(Refusal::new(
            DropReason::RlimitZero,
            "RLIMIT_CORE of the process is 0".into(),
        ));
    }
    if rlimit_core < PAGE_SIZE {
        return Err(Refusal::new(
            DropReason::RlimitBelowPage,
            format!("RLIMIT_CORE of the process is {rlimit_core} bytes"),
        ));
    }
    if rlimit_core < max_core_bytes {
        Ok((rlimit_core, SizeLimit::RlimitCore))
    } else {
        Ok((max_core_bytes, SizeLimit::MaxCoreBytes))
    }
}

/// Space the spool may still use, from its usage and the filesystem's state.
/// Returns the byte budget for the compressed core.
pub fn space_budget(
    spool_used: u64,
    fs_free: u64,
    fs_total: u64,
    cfg: &CaptureConfig,
) -> Result<u64, Refusal> {
    if spool_used >= cfg.spool_max_bytes {
        return Err(Refusal::new(
            DropReason::SpoolFull,
            format!(
                "spool uses {spool_used} bytes, limit {}",
                cfg.spool_max_bytes
            ),
        ));
    }
    let percent = fs_total / 100 * u64::from(cfg.keep_free_percent.min(100));
    let floor = cfg
        .keep_free_bytes
        .max(percent.min(cfg.keep_free_percent_cap_bytes));
    if fs_free <= floor {
        return Err(Refusal::new(
            DropReason::LowDiskSpace,
            format!("{fs_free} bytes free, floor {floor}"),
        ));
    }
    Ok((cfg.spool_max_bytes - spool_used).min(fs_free - floor))
}

/// Free and total bytes of the filesystem holding `path` (free as seen by
/// unprivileged users, so the root reserve stays untouched).
pub fn fs_space(path: &Path) -> Result<(u64, u64), LimitError> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|source| LimitError::Statvfs {
        path: path.display().to_string(),
        source,
    })?;
    let frsize = st.fragment_size();
    Ok((
        st.blocks_available().saturating_mul(frsize),
        st.blocks().saturating_mul(frsize),
    ))
}

/// Sliding-window decision: `history` holds the times of accepted cores.
/// Returns whether to accept at `now` and the history to keep.
pub fn rate_decision(history: &[u64], now: u64, count: u32, window: u64) -> (bool, Vec<u64>) {
    let mut kept: Vec<u64> = history
        .iter()
        .copied()
        .filter(|&t| t <= now && now - t < window)
        .collect();
    let accept = kept.len() < count as usize;
    if accept {
        kept.push(now);
    }
    (accept, kept)
}

/// Checks and records one core for `key` in `dir/<key>` under an exclusive
/// flock, so concurrent handlers (a pod crashing on many replicas of a
/// thread at once) count correctly.
pub fn rate_limit(
    dir: &Path,
    key: &str,
    now: u64,
    count: u32,
    window: u64,
) -> Result<Result<(), Refusal>, LimitError> {
    if key.is_empty()
        || key.len() > 128
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(LimitError::InvalidKey(key.to_string()));
    }
    let path = dir.join(key);
    let io = |op: &'static str| {
        let path = path.display().to_string();
        move |source| LimitError::Io { op, path, source }
    };
    let mut file = loop {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io("open"))?;
        let locked =
            Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, source)| LimitError::Lock {
                path: path.display().to_string(),
                source,
            })?;
        // A pruner may have unlinked the file between our open and lock;
        // then count in a fresh file instead of a deleted one.
        if locked.metadata().map_err(io("stat"))?.nlink() > 0 {
            break locked;
        }
    };
    let mut text = String::new();
    (&*file)
        .take(64 << 10)
        .read_to_string(&mut text)
        .map_err(io("read"))?;
    let history: Vec<u64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let (accept, kept) = rate_decision(&history, now, count, window);
    let mut out = String::new();
    for t in &kept {
        out.push_str(&t.to_string());
        out.push('\n');
    }
    file.seek(SeekFrom::Start(0)).map_err(io("seek"))?;
    file.set_len(0).map_err(io("truncate"))?;
    file.write_all(out.as_bytes()).map_err(io("write"))?;
    if accept {
        Ok(Ok(()))
    } else {
        Ok(Err(Refusal::new(
            DropReason::RateLimited,
            format!(
                "{} cores of this pod in the last {window}s (limit {count})",
                kept.len()
            ),
        )))
    }
}

/// Deletes rate-limit files untouched for longer than the window: their
/// history has expired. Takes the lock first so a handler counting in the
/// file is not lost.
pub fn prune_rate_limits(dir: &Path, window: u64) -> usize {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for ent in rd.flatten() {
        let path = ent.path();
        let stale = |p: &Path| {
            fs::metadata(p)
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > window)
        };
        if !stale(&path) {
            continue;
        }
        let Ok(f) = File::open(&path) else { continue };
        let Ok(_locked) = Flock::lock(f, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        if stale(&path) && fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rlimit_core_rules() {
        let max = 1 << 30;
        assert_eq!(size_cap(0, max).unwrap_err().reason, DropReason::RlimitZero);
        assert_eq!(
            size_cap(4095, max).unwrap_err().reason,
            DropReason::RlimitBelowPage
        );
        assert_eq!(size_cap(4096, max).unwrap(), (4096, SizeLimit::RlimitCore));
        assert_eq!(
            size_cap(u64::MAX, max).unwrap(),
            (max, SizeLimit::MaxCoreBytes)
        );
        assert_eq!(size_cap(max, max).unwrap(), (max, SizeLimit::MaxCoreBytes));
    }

    #[test]
    fn space_rules() {
        let cfg = CaptureConfig {
            spool_max_bytes: 1000,
            keep_free_bytes: 100,
            keep_free_percent: 10,
            keep_free_percent_cap_bytes: 5000,
            ..CaptureConfig::default()
        };
        // Floor is max(100, 10% of 10_000) = 1000.
        assert_eq!(space_budget(0, 5000, 10_000, &cfg), Ok(1000));
        assert_eq!(space_budget(600, 5000, 10_000, &cfg), Ok(400));
        assert_eq!(space_budget(0, 1300, 10_000, &cfg), Ok(300));
        assert_eq!(
            space_budget(1000, 5000, 10_000, &cfg).unwrap_err().reason,
            DropReason::SpoolFull
        );
        assert_eq!(
            space_budget(0, 1000, 10_000, &cfg).unwrap_err().reason,
            DropReason::LowDiskSpace
        );
        // Small filesystem: the byte floor wins.
        assert_eq!(space_budget(0, 150, 500, &cfg), Ok(50));
        // Large filesystem: 10% of 100_000 is capped at 5000.
        assert_eq!(space_budget(0, 5600, 100_000, &cfg), Ok(600));
        assert_eq!(
            space_budget(0, 5000, 100_000, &cfg).unwrap_err().reason,
            DropReason::LowDiskSpace
        );
        // The cap never lowers the byte floor.
        let cfg = CaptureConfig {
            keep_free_percent_cap_bytes: 50,
            ..cfg
        };
        assert_eq!(space_budget(0, 150, 100_000, &cfg), Ok(50));
    }

    #[test]
    fn sliding_window() {
        let (ok, h) = rate_decision(&[], 100, 2, 60);
        assert!(ok);
        let (ok, h) = rate_decision(&h, 110, 2, 60);
        assert!(ok);
        let (ok, h) = rate_decision(&h, 120, 2, 60);
        assert!(!ok);
        assert_eq!(h, vec![100, 110]);
        // 100 leaves the window at 160.
        let (ok, h) = rate_decision(&h, 160, 2, 60);
        assert!(ok);
        assert_eq!(h, vec![110, 160]);
        // A count of 0 refuses everything.
        assert!(!rate_decision(&[], 1, 0, 60).0);
        // Times from the future (clock stepped back) are forgotten.
        assert!(rate_decision(&[500, 500], 100, 2, 60).0);
    }

    #[test]
    fn rate_limit_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = "0b6e2b53-6a8e-4c3c-9d0e-1f2a3b4c5d6e";
        for i in 0..3 {
            assert_eq!(
                rate_limit(dir.path(), key, 1000 + i, 3, 600).unwrap(),
                Ok(())
            );
        }
        let refused = rate_limit(dir.path(), key, 1010, 3, 600)
            .unwrap()
            .unwrap_err();
        assert_eq!(refused.reason, DropReason::RateLimited);
        // Other pods have their own budget.
        assert_eq!(
            rate_limit(dir.path(), "other", 1010, 3, 600).unwrap(),
            Ok(())
        );
        assert!(rate_limit(dir.path(), "../x", 1, 3, 600).is_err());
        // Fresh files are not pruned.
        assert_eq!(prune_rate_limits(dir.path(), 600), 0);
        assert_eq!(prune_rate_limits(dir.path(), 0), 0);
    }
}
