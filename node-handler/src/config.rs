//! The small files the agent writes into the spool for `capture`:
//! `capture.json` (limits) and `optout.json` (who must not be captured).
//!
//! They exist because the core_pattern is limited to 127 characters: only
//! the spool path travels on the command line, everything else is here.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::spool::{read_bounded, SpoolError};

const MAX_CONFIG_BYTES: u64 = 64 << 10;
/// Enough for tens of thousands of IDs; the node has far fewer pods.
const MAX_OPTOUT_BYTES: u64 = 4 << 20;

const GIB: u64 = 1 << 30;

/// `capture.json`. Missing fields take the defaults below.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CaptureConfig {
    /// Raw bytes kept of one core; the rest is cut and the entry marked
    /// truncated (systemd-coredump's ProcessSizeMax).
    pub max_core_bytes: u64,
    /// Disk the spool may use in all (systemd's MaxUse).
    pub spool_max_bytes: u64,
    /// Free space to leave on the spool's filesystem (systemd's KeepFree):
    /// the larger of `keep_free_bytes` and `keep_free_percent` of the
    /// filesystem, the percentage capped at `keep_free_percent_cap_bytes`
    /// (as systemd caps it at 4G), so that on a large disk a mostly-full
    /// but still roomy filesystem does not refuse every core.
    pub keep_free_bytes: u64,
    pub keep_free_percent: u8,
    pub keep_free_percent_cap_bytes: u64,
    /// At most `rate_limit_count` cores per pod per `rate_limit_window_seconds`.
    /// Keyed by pod UID, not container ID: a restarted container gets a new
    /// ID, so a container ID key would not bound a crash loop.
    pub rate_limit_count: u32,
    pub rate_limit_window_seconds: u64,
    pub zstd_level: i32,
    /// zstd worker threads; 0 compresses on the reading thread.
    pub zstd_workers: u32,
    /// Whole capture, from start to commit.
    pub deadline_seconds: u64,
    /// Stop writing drop records beyond this many (the agent deletes them
    /// once reported).
    pub max_drop_records: usize,
    /// Size asked for the core pipe (F_SETPIPE_SZ); 0 keeps the kernel's.
    pub pipe_buffer_bytes: u32,
    /// Cgroup paths where the kubelet's tree (`kubepods`, `kubepods.slice`)
    /// may start; a kubelet-shaped path anywhere else is not a pod (see
    /// `cgroup`). `/` unless the kubelet has `--cgroup-root` or runs nested
    /// (kind: `/kubelet.slice`).
    pub cgroup_roots: Vec<String>,
    /// After the core is read, and before the process is let go, open the files it
    /// mapped executable (`/proc/<pid>/map_files`) and keep them by build-id under
    /// `<spool>/buildid` for the agent's analysis (see `buildid`). Off: no modules are
    /// recorded and frames are not symbolized.
    pub binary_cache: bool,
    /// Disk the build-id cache may use; least recently used files go first.
    pub build_id_cache_max_bytes: u64,
    /// Larger binaries are not copied (their build-id is still recorded).
    pub build_id_max_file_bytes: u64,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            max_core_bytes: 4 * GIB,
            spool_max_bytes: 8 * GIB,
            keep_free_bytes: GIB,
            keep_free_percent: 10,
            keep_free_percent_cap_bytes: 4 * GIB,
            rate_limit_count: 5,
            rate_limit_window_seconds: 3600,
            zstd_level: 1,
            zstd_workers: 1,
            deadline_seconds: 180,
            max_drop_records: 10_000,
            pipe_buffer_bytes: 1 << 20,
            cgroup_roots: vec![crate::cgroup::DEFAULT_ROOT.to_string()],
            binary_cache: true,
            build_id_cache_max_bytes: GIB,
            build_id_max_file_bytes: 256 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Read(#[from] SpoolError),
    #[error("{path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

impl CaptureConfig {
    /// Reads `capture.json`; a missing file means the defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        match load_json(path, MAX_CONFIG_BYTES)? {
            Some(cfg) => Ok(cfg),
            None => Ok(Self::default()),
        }
    }

    pub fn store(&self, path: &Path) -> Result<(), ConfigError> {
        store_json(path, self)
    }
}

/// `optout.json`: pods and containers whose cores must not be kept. The
/// agent rewrites it atomically whenever the opt-out labels change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OptOut {
    pub pod_uids: BTreeSet<String>,
    pub container_ids: BTreeSet<String>,
}

impl OptOut {
    /// Reads `optout.json`; None when it does not exist.
    pub fn load(path: &Path) -> Result<Option<Self>, ConfigError> {
        load_json(path, MAX_OPTOUT_BYTES)
    }

    pub fn store(&self, path: &Path) -> Result<(), ConfigError> {
        store_json(path, self)
    }

    pub fn is_opted_out(&self, pod_uid: &str, container_id: Option<&str>) -> bool {
        self.pod_uids.contains(pod_uid)
            || container_id.is_some_and(|c| self.container_ids.contains(c))
    }
}

fn load_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    max: u64,
) -> Result<Option<T>, ConfigError> {
    let data = match read_bounded(path, max) {
        Ok(d) => d,
        Err(SpoolError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None)
        }
        Err(e) => return Err(e.into()),
    };
    serde_json::from_slice(&data)
        .map(Some)
        .map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })
}

fn store_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ConfigError> {
    let mut json = serde_json::to_vec_pretty(value).map_err(|source| ConfigError::Parse {
        path: path.display().to_string(),
        source,
    })?;
    json.push(b'\n');
    Ok(coredump_durable::write_atomic(path, &json, 0o600).map_err(SpoolError::from)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_mean_defaults_and_no_optout() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            CaptureConfig::load(&dir.path().join("capture.json")).unwrap(),
            CaptureConfig::default()
        );
        assert_eq!(OptOut::load(&dir.path().join("optout.json")).unwrap(), None);
    }

    #[test]
    fn partial_config_keeps_other_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("capture.json");
        std::fs::write(&p, r#"{"maxCoreBytes": 1048576, "rateLimitCount": 2}"#).unwrap();
        let cfg = CaptureConfig::load(&p).unwrap();
        assert_eq!(cfg.max_core_bytes, 1 << 20);
        assert_eq!(cfg.rate_limit_count, 2);
        assert_eq!(cfg.zstd_level, CaptureConfig::default().zstd_level);
    }

    #[test]
    fn optout_round_trip_and_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("optout.json");
        let mut o = OptOut::default();
        o.pod_uids.insert("uid-a".into());
        o.container_ids.insert("cid-b".into());
        o.store(&p).unwrap();
        let back = OptOut::load(&p).unwrap().unwrap();
        assert_eq!(back, o);
        assert!(back.is_opted_out("uid-a", None));
        assert!(back.is_opted_out("uid-x", Some("cid-b")));
        assert!(!back.is_opted_out("uid-x", Some("cid-y")));
        std::fs::write(&p, "{not json").unwrap();
        assert!(OptOut::load(&p).is_err());
    }
}
