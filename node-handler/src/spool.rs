//! The on-disk spool shared by `capture` (writer) and `agent` (reader).
//!
//! Layout under the spool root:
//! - `cores/<id>/core.zst` + `cores/<id>/metadata.json`: one complete entry.
//!   Entries are built in `tmp/` and the directory is renamed into `cores/`
//!   when both files are durable, so `cores/` only ever holds complete ones.
//! - `dropped/<id>.json`: a [`DropRecord`] per crash that was not stored.
//! - `tmp/`: entries being written (or abandoned by a killed handler).
//! - `ratelimit/`, `capture.json`, `optout.json`, `install.json`,
//!   `capture.log`: see the `limits`, `config` and `install` modules.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
use serde::{Deserialize, Serialize};

use crate::cgroup::{CgroupLine, QosClass};

/// Bumped on incompatible changes of the JSON below.
pub const FORMAT_VERSION: u32 = 1;
pub const CORE_FILE: &str = "core.zst";
pub const METADATA_FILE: &str = "metadata.json";
/// Longest command line kept, in bytes of the NUL-separated form.
pub const MAX_COMMAND_LINE: usize = 4096;
/// Metadata files are small; anything larger is not ours.
const MAX_METADATA_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("metadata {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid spool entry id {0:?}")]
    InvalidId(String),
    #[error("metadata {0} is larger than {MAX_METADATA_BYTES} bytes")]
    TooLarge(PathBuf),
    #[error("no free name for {0} after many attempts")]
    NameExhausted(PathBuf),
}

type Result<T> = std::result::Result<T, SpoolError>;

/// A durable write's failed step keeps its name and path.
impl From<coredump_durable::Error> for SpoolError {
    fn from(e: coredump_durable::Error) -> Self {
        let (op, path, source) = e.into_parts();
        SpoolError::Io { op, path, source }
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SpoolError {
    let path = path.to_path_buf();
    move |source| SpoolError::Io { op, path, source }
}

/// Who crashed and how: the part shared by stored entries and drop records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CrashInfo {
    /// `%P`: PID in the initial PID namespace.
    pub host_pid: i32,
    /// `%I`: TID of the crashing thread in the initial PID namespace.
    pub host_tid: i32,
    /// PID as the container sees it (last `NSpid` field), if /proc was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_pid: Option<i32>,
    pub signal: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal_name: Option<String>,
    /// `%t`: seconds since the epoch.
    pub dump_time: u64,
    /// `/proc/<pid>/comm`, else `%e`. Set by the process: not trustworthy.
    pub comm: String,
    /// Target of `/proc/<pid>/exe`, else `%E` with `!` turned back into `/`.
    pub executable: String,
    /// argv, at most [`MAX_COMMAND_LINE`] bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command_line: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub command_line_truncated: bool,
    pub uid: u32,
    pub gid: u32,
    /// `%d`: 1 normal, 2 suid_dumpable "suidsafe" (treat as sensitive).
    pub dumpable: u32,
    /// `%c`: the crasher's RLIMIT_CORE (u64::MAX = unlimited).
    pub rlimit_core: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroups: Vec<CgroupLine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_runtime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos_class: Option<QosClass>,
    /// True when `/proc/<pid>` was shown to belong to the crasher (pidfd from
    /// `%F`, or `CoreDumping: 1` in its status), so PID reuse is excluded.
    pub proc_verified: bool,
}

/// How the handler itself fared; lets the agent export it as metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandlerStats {
    pub version: String,
    /// Peak resident set of the handler (`VmHWM`), bytes.
    pub vm_hwm_bytes: u64,
    /// From the handler's start to the commit, milliseconds.
    pub elapsed_millis: u64,
    /// From the handler's start to the end of the core (when the crashing
    /// process was let go), milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_millis: Option<u64>,
}

/// `cores/<id>/metadata.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpoolEntry {
    pub format_version: u32,
    /// Node-local ID, `<dump time>-<host pid>` (plus `-N` on a collision).
    pub id: String,
    #[serde(flatten)]
    pub crash: CrashInfo,
    /// Bytes of the ELF core that were read (and hashed).
    pub raw_size: u64,
    /// Bytes of `core.zst`.
    pub stored_size: u64,
    /// SHA-256 of the raw (uncompressed) bytes, lower-case hex.
    pub sha256: String,
    /// The core was cut at `rawSize` bytes (size limit or RLIMIT_CORE).
    pub truncated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated_by: Option<String>,
    /// Always "zstd" for now.
    pub compression: String,
    pub handler: HandlerStats,
}

/// Why a crash was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DropReason {
    /// The pod or container is in `optout.json`.
    OptedOut,
    /// `optout.json` exists but cannot be read; dropping errs on the side of
    /// privacy.
    OptOutUnreadable,
    /// Too many cores of this pod in the rate-limit window.
    RateLimited,
    /// The spool is at its size limit.
    SpoolFull,
    /// The filesystem's free space is below the floor.
    LowDiskSpace,
    /// RLIMIT_CORE of the crasher is 0.
    RlimitZero,
    /// RLIMIT_CORE is below one page: such a core would hold no memory.
    RlimitBelowPage,
    /// Not in a pod; handed to the previous pipe handler or dropped.
    NotAContainer,
    /// `/proc/<pid>` could not be read, so the crash cannot be attributed.
    ProcUnavailable,
    /// `/proc/<pid>` names a pod, but could not be shown to be the crasher's
    /// (it exited during the dump, or its PID was reused): not filed under
    /// a pod it may not belong to.
    ProcUnverified,
    /// The capture did not finish within its deadline.
    DeadlineExceeded,
    /// Reading, compressing or writing failed.
    CaptureFailed,
    // The agent's reasons: the core was stored but not delivered.
    /// The pod of the core never showed up in the agent's pod index.
    PodUnknown,
    /// The pod is known, but its status never named the container ID from
    /// the cgroup path: not one of its containers.
    ContainerUnknown,
    /// The namespace's CoredumpQuota had no room: the server recorded the
    /// Coredump as Rejected.
    QuotaExceeded,
    /// The server refused the Coredump or its core as invalid.
    Invalid,
    /// The server refused the core (403): its node restriction or RBAC.
    /// Final; the same request would get the same answer.
    Forbidden,
    /// The core kept meeting a 409 race (an upload of it in progress)
    /// past the agent's bounded retries.
    Conflict,
    /// The entry's metadata or core file cannot be read.
    EntryUnreadable,
}

impl DropReason {
    /// The name as serialized, e.g. for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::OptedOut => "OptedOut",
            DropReason::OptOutUnreadable => "OptOutUnreadable",
            DropReason::RateLimited => "RateLimited",
            DropReason::SpoolFull => "SpoolFull",
            DropReason::LowDiskSpace => "LowDiskSpace",
            DropReason::RlimitZero => "RlimitZero",
            DropReason::RlimitBelowPage => "RlimitBelowPage",
            DropReason::NotAContainer => "NotAContainer",
            DropReason::ProcUnavailable => "ProcUnavailable",
            DropReason::ProcUnverified => "ProcUnverified",
            DropReason::DeadlineExceeded => "DeadlineExceeded",
            DropReason::CaptureFailed => "CaptureFailed",
            DropReason::PodUnknown => "PodUnknown",
            DropReason::ContainerUnknown => "ContainerUnknown",
            DropReason::QuotaExceeded => "QuotaExceeded",
            DropReason::Invalid => "Invalid",
            DropReason::Forbidden => "Forbidden",
            DropReason::Conflict => "Conflict",
            DropReason::EntryUnreadable => "EntryUnreadable",
        }
    }
}

/// `dropped/<id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DropRecord {
    pub format_version: u32,
    pub id: String,
    pub reason: DropReason,
    pub detail: String,
    /// Command lines are left out: a dropped core may be opted out.
    #[serde(flatten)]
    pub crash: CrashInfo,
    /// For `NotAContainer`: the previous core_pattern the core went to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_exit_status: Option<i32>,
    /// Raw bytes read before dropping (0 when decided before reading).
    pub raw_bytes_read: u64,
    pub handler: HandlerStats,
}

/// Maps a signal number to its name (`SIGSEGV`).
pub fn signal_name(signo: i32) -> Option<String> {
    nix::sys::signal::Signal::try_from(signo)
        .ok()
        .map(|s| s.as_str().to_string())
}

/// A spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
}

/// An entry ID: no path separators, no dot files, short.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(SpoolError::InvalidId(id.to_string()))
    }
}

impl Spool {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn cores_dir(&self) -> PathBuf {
        self.root.join("cores")
    }
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub fn dropped_dir(&self) -> PathBuf {
        self.root.join("dropped")
    }
    pub fn ratelimit_dir(&self) -> PathBuf {
        self.root.join("ratelimit")
    }
    /// Settings for `capture`, written by the agent (see `config`).
    pub fn config_path(&self) -> PathBuf {
        self.root.join("capture.json")
    }
    /// Opted-out pods and containers, written by the agent (see `config`).
    pub fn optout_path(&self) -> PathBuf {
        self.root.join("optout.json")
    }
    /// The core_pattern we replaced (see `install`).
    pub fn install_state_path(&self) -> PathBuf {
        self.root.join("install.json")
    }
    pub fn log_path(&self) -> PathBuf {
        self.root.join("capture.log")
    }
    pub fn entry_dir(&self, id: &str) -> Result<PathBuf> {
        validate_id(id)?;
        Ok(self.cores_dir().join(id))
    }

    /// Creates the directories (mode 0700: cores hold process memory).
    pub fn ensure_layout(&self) -> Result<()> {
        for dir in [
            self.root.clone(),
            self.cores_dir(),
            self.tmp_dir(),
            self.dropped_dir(),
            self.ratelimit_dir(),
        ] {
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("mkdir", &dir)(e)),
            }
        }
        Ok(())
    }

    /// IDs of complete entries, oldest first (IDs start with the dump time).
    pub fn list_entries(&self) -> Result<Vec<String>> {
        let dir = self.cores_dir();
        let mut ids = Vec::new();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ids),
            Err(e) => return Err(io_err("readdir", &dir)(e)),
        };
        for ent in rd {
            let ent = ent.map_err(io_err("readdir", &dir))?;
            let Some(name) = ent.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if validate_id(&name).is_ok() && ent.path().join(METADATA_FILE).is_file() {
                ids.push(name);
            }
        }
        ids.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)));
        Ok(ids)
    }

    pub fn read_entry(&self, id: &str) -> Result<SpoolEntry> {
        read_json(&self.entry_dir(id)?.join(METADATA_FILE))
    }

    /// The compressed core as stored.
    pub fn open_core(&self, id: &str) -> Result<File> {
        let path = self.entry_dir(id)?.join(CORE_FILE);
        File::open(&path).map_err(io_err("open", &path))
    }

    /// The core decompressed on the fly.
    pub fn open_core_decompressed(
        &self,
        id: &str,
    ) -> Result<zstd::stream::read::Decoder<'static, io::BufReader<File>>> {
        let path = self.entry_dir(id)?.join(CORE_FILE);
        let file = self.open_core(id)?;
        zstd::stream::read::Decoder::new(file).map_err(io_err("zstd", &path))
    }

    /// Deletes an entry: it first leaves `cores/` in one rename, so a reader
    /// never sees half an entry.
    pub fn delete_entry(&self, id: &str) -> Result<()> {
        let from = self.entry_dir(id)?;
        let trash = self
            .tmp_dir()
            .join(format!("deleted-{id}-{}", std::process::id()));
        fs::rename(&from, &trash).map_err(io_err("rename", &from))?;
        fs::remove_dir_all(&trash).map_err(io_err("remove", &trash))
    }

    /// Disk space used by entries, including ones being written, in
    /// allocated bytes (what fills the disk).
    pub fn total_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for dir in [self.cores_dir(), self.tmp_dir()] {
            total += dir_usage(&dir, 2)?;
        }
        Ok(total)
    }

    /// IDs of drop records, oldest first.
    pub fn list_drops(&self) -> Result<Vec<String>> {
        let dir = self.dropped_dir();
        let mut ids = Vec::new();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ids),
            Err(e) => return Err(io_err("readdir", &dir)(e)),
        };
        for ent in rd {
            let ent = ent.map_err(io_err("readdir", &dir))?;
            if let Some(id) = ent
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|id| validate_id(id).is_ok())
            {
                ids.push(id.to_string());
            }
        }
        ids.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)));
        Ok(ids)
    }

    pub fn read_drop(&self, id: &str) -> Result<DropRecord> {
        validate_id(id)?;
        read_json(&self.dropped_dir().join(format!("{id}.json")))
    }

    pub fn delete_drop(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        let path = self.dropped_dir().join(format!("{id}.json"));
        fs::remove_file(&path).map_err(io_err("remove", &path))
    }

    /// Number of drop records, counting at most `limit + 1`.
    pub fn count_drops(&self, limit: usize) -> Result<usize> {
        let dir = self.dropped_dir();
        match fs::read_dir(&dir) {
            Ok(rd) => Ok(rd.take(limit + 1).count()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io_err("readdir", &dir)(e)),
        }
    }

    /// Writes a drop record atomically; on an ID collision a suffix is
    /// added. Returns the final ID.
    pub fn write_drop(&self, record: &DropRecord) -> Result<String> {
        validate_id(&record.id)?;
        let dir = self.dropped_dir();
        let tmp = dir.join(format!(".{}.{}.tmp", record.id, std::process::id()));
        let mut json = serde_json::to_vec_pretty(record).map_err(|source| SpoolError::Json {
            path: tmp.clone(),
            source,
        })?;
        json.push(b'\n');
        coredump_durable::write_file(&tmp, &json, 0o600)?;
        let mut last = record.id.clone();
        let moved = rename_unique(&tmp, |n| {
            last = suffixed(&record.id, n);
            dir.join(format!("{last}.json"))
        });
        if moved.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        moved?;
        coredump_durable::sync_dir(&dir)?;
        Ok(last)
    }

    /// Starts a new entry in `tmp/`.
    pub fn begin_entry(&self, id: &str) -> Result<PendingEntry> {
        validate_id(id)?;
        let dir = self
            .tmp_dir()
            .join(format!("{id}.{}.partial", std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io_err("mkdir", &dir))?;
        Ok(PendingEntry {
            spool: self.clone(),
            id: id.to_string(),
            dir,
            committed: false,
        })
    }

    /// Removes abandoned work in `tmp/` older than `max_age` (a killed
    /// handler leaves it behind; live ones are younger than their deadline).
    pub fn remove_stale_tmp(&self, max_age: std::time::Duration) -> Result<usize> {
        let dir = self.tmp_dir();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err("readdir", &dir)(e)),
        };
        let mut removed = 0;
        for ent in rd.flatten() {
            let path = ent.path();
            let old = ent
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > max_age);
            if old {
                let res = if path.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                if res.is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// An entry being written in `tmp/`; removed on drop unless committed.
#[derive(Debug)]
pub struct PendingEntry {
    spool: Spool,
    id: String,
    dir: PathBuf,
    committed: bool,
}

impl PendingEntry {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the (empty) core file.
    pub fn create_core(&self) -> Result<File> {
        let path = self.dir.join(CORE_FILE);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("create", &path))
    }

    /// Writes the metadata and moves the entry into `cores/` in one rename.
    /// The core file must already be synced by the caller. Returns the final
    /// ID (with a suffix if the ID was taken).
    pub fn commit(mut self, entry: &mut SpoolEntry) -> Result<String> {
        let cores = self.spool.cores_dir();
        let mut attempt = 0u32;
        loop {
            entry.id = suffixed(&self.id, attempt);
            let meta = self.dir.join(METADATA_FILE);
            let mut json = serde_json::to_vec_pretty(entry).map_err(|source| SpoolError::Json {
                path: meta.clone(),
                source,
            })?;
            json.push(b'\n');
            coredump_durable::write_file(&meta, &json, 0o600)?;
            coredump_durable::sync_dir(&self.dir)?;
            let to = cores.join(&entry.id);
            match renameat2(
                AT_FDCWD,
                &self.dir,
                AT_FDCWD,
                &to,
                RenameFlags::RENAME_NOREPLACE,
            ) {
                Ok(()) => break,
                Err(nix::errno::Errno::EEXIST) if attempt < 100 => attempt += 1,
                Err(e) => return Err(io_err("rename", &to)(io::Error::from(e))),
            }
        }
        self.committed = true;
        coredump_durable::sync_dir(&cores)?;
        Ok(entry.id.clone())
    }
}

impl Drop for PendingEntry {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn suffixed(id: &str, n: u32) -> String {
    if n == 0 {
        id.to_string()
    } else {
        format!("{id}-{n}")
    }
}

/// Renames without replacing, trying names from `name(0..)`.
fn rename_unique(from: &Path, mut name: impl FnMut(u32) -> PathBuf) -> Result<PathBuf> {
    for n in 0..100 {
        let to = name(n);
        match renameat2(AT_FDCWD, from, AT_FDCWD, &to, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => return Ok(to),
            Err(nix::errno::Errno::EEXIST) => continue,
            Err(e) => return Err(io_err("rename", &to)(io::Error::from(e))),
        }
    }
    Err(SpoolError::NameExhausted(from.to_path_buf()))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let data = read_bounded(path, MAX_METADATA_BYTES)?;
    serde_json::from_slice(&data).map_err(|source| SpoolError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a whole file, refusing ones larger than `max`.
pub(crate) fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = File::open(path).map_err(io_err("open", path))?;
    let mut data = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut data)
        .map_err(io_err("read", path))?;
    if data.len() as u64 > max {
        return Err(SpoolError::TooLarge(path.to_path_buf()));
    }
    Ok(data)
}

/// IDs start with the dump time; sort numerically on it, then on the rest.
fn sort_key(id: &str) -> (u64, &str) {
    let (t, rest) = id.split_once('-').unwrap_or((id, ""));
    (t.parse().unwrap_or(u64::MAX), rest)
}

/// Allocated bytes of the files under `dir`, `depth` levels deep.
fn dir_usage(dir: &Path, depth: u32) -> Result<u64> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err("readdir", dir)(e)),
    };
    let mut total = 0;
    for ent in rd.flatten() {
        // Entries vanish while we walk (renamed, deleted): skip them.
        let Ok(meta) = ent.metadata() else { continue };
        if meta.is_dir() {
            if depth > 1 {
                total += dir_usage(&ent.path(), depth - 1)?;
            }
        } else {
            total += meta.blocks() * 512;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn crash() -> CrashInfo {
        CrashInfo {
            host_pid: 4242,
            host_tid: 4243,
            container_pid: Some(1),
            signal: 11,
            signal_name: signal_name(11),
            dump_time: 1_700_000_000,
            comm: "crasher".into(),
            executable: "/usr/bin/crasher".into(),
            command_line: vec!["crasher".into(), "--flag".into()],
            command_line_truncated: false,
            uid: 1000,
            gid: 1000,
            dumpable: 1,
            rlimit_core: u64::MAX,
            cgroups: crate::cgroup::parse_lines(
                "0::/kubepods/pod0b6e2b53-6a8e-4c3c-9d0e-1f2a3b4c5d6e/abcdefabcdef\n",
            ),
            pod_uid: Some("0b6e2b53-6a8e-4c3c-9d0e-1f2a3b4c5d6e".into()),
            container_id: Some("abcdefabcdef".into()),
            container_runtime: None,
            qos_class: Some(QosClass::Guaranteed),
            proc_verified: true,
        }
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(11).as_deref(), Some("SIGSEGV"));
        assert_eq!(signal_name(6).as_deref(), Some("SIGABRT"));
        assert_eq!(signal_name(7).as_deref(), Some("SIGBUS"));
        assert_eq!(signal_name(999), None);
    }

    #[test]
    fn entry_round_trip_and_listing() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = Spool::new(tmp.path().join("spool"));
        spool.ensure_layout().unwrap();

        let raw = b"\x7fELF not really a core".repeat(100);
        let pending = spool.begin_entry("1700000000-4242").unwrap();
        let mut f = pending.create_core().unwrap();
        let compressed = zstd::encode_all(&raw[..], 1).unwrap();
        f.write_all(&compressed).unwrap();
        f.sync_all().unwrap();
        // Not visible before the commit.
        assert!(spool.list_entries().unwrap().is_empty());

        let mut entry = SpoolEntry {
            format_version: FORMAT_VERSION,
            id: String::new(),
            crash: crash(),
            raw_size: raw.len() as u64,
            stored_size: compressed.len() as u64,
            sha256: "00".repeat(32),
            truncated: false,
            truncated_by: None,
            compression: "zstd".into(),
            handler: HandlerStats::default(),
        };
        let id = pending.commit(&mut entry).unwrap();
        assert_eq!(id, "1700000000-4242");

        // Same ID again gets a suffix instead of replacing the first.
        let pending = spool.begin_entry("1700000000-4242").unwrap();
        pending.create_core().unwrap();
        let mut second = entry.clone();
        assert_eq!(pending.commit(&mut second).unwrap(), "1700000000-4242-1");

        // An abandoned entry disappears with its guard.
        let abandoned = spool.begin_entry("1600000000-1").unwrap();
        let dir = abandoned.dir().to_path_buf();
        drop(abandoned);
        assert!(!dir.exists());

        assert_eq!(
            spool.list_entries().unwrap(),
            vec!["1700000000-4242", "1700000000-4242-1"]
        );
        let back = spool.read_entry(&id).unwrap();
        assert_eq!(back, entry);
        let mut out = Vec::new();
        spool
            .open_core_decompressed(&id)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, raw);
        assert!(spool.total_bytes().unwrap() > 0);

        spool.delete_entry(&id).unwrap();
        assert_eq!(spool.list_entries().unwrap(), vec!["1700000000-4242-1"]);
    }

    #[test]
    fn json_uses_camel_case_and_flattens_the_crash() {
        let entry = SpoolEntry {
            format_version: FORMAT_VERSION,
            id: "1-2".into(),
            crash: crash(),
            raw_size: 10,
            stored_size: 5,
            sha256: "ab".into(),
            truncated: true,
            truncated_by: Some("maxCoreBytes".into()),
            compression: "zstd".into(),
            handler: HandlerStats::default(),
        };
        let v: serde_json::Value = serde_json::to_value(&entry).unwrap();
        for key in [
            "hostPid",
            "hostTid",
            "containerPid",
            "signalName",
            "commandLine",
            "podUid",
            "containerId",
            "rawSize",
            "storedSize",
            "sha256",
            "truncated",
        ] {
            assert!(v.get(key).is_some(), "missing {key} in {v}");
        }
        assert_eq!(v["signalName"], "SIGSEGV");
    }

    #[test]
    fn drop_records_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = Spool::new(tmp.path());
        spool.ensure_layout().unwrap();
        let mut rec = DropRecord {
            format_version: FORMAT_VERSION,
            id: "1700000000-1".into(),
            reason: DropReason::RateLimited,
            detail: "5 in 600s".into(),
            crash: crash(),
            forwarded_to: None,
            forward_exit_status: None,
            raw_bytes_read: 0,
            handler: HandlerStats::default(),
        };
        rec.crash.command_line.clear();
        let a = spool.write_drop(&rec).unwrap();
        let b = spool.write_drop(&rec).unwrap();
        assert_eq!((a.as_str(), b.as_str()), ("1700000000-1", "1700000000-1-1"));
        assert_eq!(spool.list_drops().unwrap(), vec![a.clone(), b.clone()]);
        assert_eq!(spool.read_drop(&a).unwrap(), rec);
        assert_eq!(spool.count_drops(10).unwrap(), 2);
        spool.delete_drop(&a).unwrap();
        assert_eq!(spool.list_drops().unwrap(), vec![b]);
    }

    #[test]
    fn drop_reason_names_match_serde() {
        for r in [
            DropReason::OptedOut,
            DropReason::RateLimited,
            DropReason::CaptureFailed,
            DropReason::PodUnknown,
            DropReason::QuotaExceeded,
            DropReason::EntryUnreadable,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }

    #[test]
    fn ids_are_validated() {
        for bad in ["", "../x", "a/b", ".hidden", "a b"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
        assert!(validate_id("1700000000-42-1").is_ok());
        let spool = Spool::new("/nonexistent");
        assert!(spool.open_core("../../etc/passwd").is_err());
        assert!(spool.list_entries().unwrap().is_empty());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn json_value() -> impl Strategy<Value = serde_json::Value> {
            use serde_json::Value;
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                "\\PC{0,12}".prop_map(Value::String),
            ];
            leaf.prop_recursive(4, 48, 8, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    proptest::collection::btree_map(
                        prop_oneof![
                            Just("hostPid".to_string()),
                            Just("sha256".to_string()),
                            Just("cgroups".to_string()),
                            Just("commandLine".to_string()),
                            Just("podUid".to_string()),
                            Just("storedSize".to_string()),
                            "[a-zA-Z]{1,10}",
                        ],
                        inner,
                        0..8
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            // proptest's default: 256 cases, or PROPTEST_CASES (see README.md).

            /// A hostile metadata.json (any bytes, or any JSON, or a real
            /// entry with one field replaced): the reader gives an entry or
            /// an error, never panics; what it accepts writes back the same.
            #[test]
            fn hostile_metadata_is_read_or_refused(
                bytes in proptest::collection::vec(any::<u8>(), 0..200),
                value in json_value(),
                field in "[a-zA-Z]{1,12}",
                replacement in json_value(),
            ) {
                let tmp = tempfile::tempdir().unwrap();
                let spool = Spool::new(tmp.path());
                spool.ensure_layout().unwrap();
                let dir = spool.cores_dir().join("1700000000-1");
                fs::create_dir(&dir).unwrap();
                let mut real = serde_json::to_value(SpoolEntry {
                    format_version: FORMAT_VERSION,
                    id: "1700000000-1".into(),
                    crash: crash(),
                    raw_size: 1,
                    stored_size: 1,
                    sha256: "00".repeat(32),
                    truncated: false,
                    truncated_by: None,
                    compression: "zstd".into(),
                    handler: HandlerStats::default(),
                }).unwrap();
                real[&field] = replacement;
                for data in [bytes, serde_json::to_vec(&value).unwrap(), serde_json::to_vec(&real).unwrap()] {
                    fs::write(dir.join(METADATA_FILE), &data).unwrap();
                    match spool.read_entry("1700000000-1") {
                        Ok(e) => {
                            let again: SpoolEntry =
                                serde_json::from_value(serde_json::to_value(&e).unwrap()).unwrap();
                            prop_assert_eq!(again, e);
                        }
                        Err(SpoolError::Json { .. }) => {}
                        Err(e) => return Err(TestCaseError::fail(format!("not a JSON error: {e}"))),
                    }
                    let _ = spool.list_entries().unwrap();
                }
            }

            /// Any name in the spool's directories: validated, never a path
            /// out of the spool, never a panic when sorted.
            #[test]
            fn any_id_is_validated(id in "\\PC{0,40}", ids in proptest::collection::vec("[0-9a-z-]{0,20}", 0..8)) {
                if validate_id(&id).is_ok() {
                    prop_assert!(!id.contains('/') && !id.starts_with('.') && !id.is_empty());
                }
                let mut sorted = ids.clone();
                sorted.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)));
                prop_assert_eq!(sorted.len(), ids.len());
            }
        }
    }
}
