//! The binaries of a crashing process, kept by build-id while the kernel still holds it.
//!
//! With `core_pipe_limit` > 0 the kernel keeps `/proc/<pid>` (and its mm) until capture
//! closes the core pipe. Capture then reads `/proc/<pid>/maps` and opens
//! `/proc/<pid>/map_files/<start>-<end>` of each executable file mapping: the exact file
//! the process mapped, from its own mount namespace (the container's image). That is all
//! it does while the process waits (see [`hold`]); reading build-ids and copying files
//! into the cache (`<spool>/buildid/<key>`) happens after the pipe is closed, from the
//! open descriptors ([`cache_all`]).
//!
//! Invariants: `maps` is hostile (a path is whatever the process named a file): lines
//! are parsed strictly and bounded in number and length, and a path is only ever shown,
//! never opened (the file is reached through `map_files`, by address). A cache file is
//! named by its key (a GNU build-id, else a content hash) and written whole to a
//! temporary name and renamed, so a reader sees a complete file or none; files above the
//! per-file cap are not copied; after each insert the cache is cut to its total size by
//! removing the least recently used files (a hit refreshes the mtime), under a lock.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use sha2::{Digest, Sha256};

use crate::analysis::ModuleRecord;
use crate::escape::escape;

/// Bounds on what `maps` may make capture do.
pub const MAX_MAPS_BYTES: u64 = 8 << 20;
pub const MAX_MAP_LINES: usize = 65_536;
/// Files opened while the process is held.
pub const MAX_FILES: usize = 512;
/// Mappings recorded per file.
const MAX_MAPPINGS_PER_FILE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum BuildIdError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One line of `/proc/<pid>/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapLine {
    pub start: u64,
    pub end: u64,
    pub exec: bool,
    pub offset: u64,
    pub inode: u64,
    pub dev: String,
    pub path: Vec<u8>,
}

/// Parses `maps`; malformed lines are skipped, at most [`MAX_MAP_LINES`].
pub fn parse_maps(text: &[u8]) -> Vec<MapLine> {
    let mut out = Vec::new();
    for line in text.split(|b| *b == b'\n').take(MAX_MAP_LINES) {
        if let Some(l) = parse_map_line(line) {
            out.push(l);
        }
    }
    out
}

fn parse_map_line(line: &[u8]) -> Option<MapLine> {
    // start-end perms offset dev inode [spaces path]
    let mut fields = Vec::with_capacity(5);
    let mut rest = line;
    for _ in 0..5 {
        let sp = rest.iter().position(|b| *b == b' ').unwrap_or(rest.len());
        fields.push(&rest[..sp]);
        rest = rest.get(sp + 1..).unwrap_or(&[]);
    }
    fn text(b: &[u8]) -> Option<&str> {
        std::str::from_utf8(b).ok()
    }
    let (s, e) = text(fields[0])?.split_once('-')?;
    let hex = |s: &str| {
        (!s.is_empty() && s.len() <= 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u64::from_str_radix(s, 16).ok())
            .flatten()
    };
    let start = hex(s)?;
    let end = hex(e)?;
    let perms = fields[1];
    if end <= start || perms.len() != 4 {
        return None;
    }
    let offset = hex(text(fields[2])?)?;
    let dev = text(fields[3])?;
    if !dev.contains(':') || dev.len() > 16 {
        return None;
    }
    let inode: u64 = text(fields[4])?.parse().ok()?;
    let path = rest
        .iter()
        .position(|b| *b != b' ')
        .map_or(&[][..], |i| &rest[i..]);
    Some(MapLine {
        start,
        end,
        exec: perms[2] == b'x',
        offset,
        inode,
        dev: dev.to_string(),
        path: path.to_vec(),
    })
}

/// A mapped file with an executable mapping, and every mapping of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedFile {
    pub path: Vec<u8>,
    pub dev: String,
    pub inode: u64,
    pub base: u64,
    /// The executable mapping opened through map_files.
    pub exec: (u64, u64),
    pub mappings: Vec<(u64, u64, u64)>,
}

/// Files with an executable mapping, in the order of their first mapping.
pub fn exec_files(lines: &[MapLine]) -> Vec<MappedFile> {
    let mut out: Vec<MappedFile> = Vec::new();
    for l in lines {
        if l.inode == 0 || !l.path.starts_with(b"/") {
            continue;
        }
        let i = match out
            .iter()
            .position(|f| f.inode == l.inode && f.dev == l.dev && f.path == l.path)
        {
            Some(i) => i,
            None => {
                if out.len() >= MAX_FILES * 4 {
                    continue;
                }
                out.push(MappedFile {
                    path: l.path.clone(),
                    dev: l.dev.clone(),
                    inode: l.inode,
                    base: u64::MAX,
                    exec: (0, 0),
                    mappings: Vec::new(),
                });
                out.len() - 1
            }
        };
        let f = &mut out[i];
        if l.offset == 0 {
            f.base = f.base.min(l.start);
        }
        if l.exec && f.exec == (0, 0) {
            f.exec = (l.start, l.end);
        }
        if f.mappings.len() < MAX_MAPPINGS_PER_FILE {
            f.mappings.push((l.start, l.end, l.offset));
        }
    }
    out.retain(|f| f.exec != (0, 0));
    for f in &mut out {
        if f.base == u64::MAX {
            f.base = f
                .mappings
                .iter()
                .map(|m| m.0.saturating_sub(m.2))
                .min()
                .unwrap_or(0);
        }
    }
    out.truncate(MAX_FILES);
    out
}

/// What capture holds after the pipe is closed: the files, open.
pub struct Held {
    pub files: Vec<(MappedFile, Option<File>)>,
    pub error: Option<String>,
    pub micros: u64,
}

/// While the process is held: read its maps and open each executable file mapping.
pub fn hold(proc_root: &Path, pid: i32) -> Held {
    let t = Instant::now();
    let dir = proc_root.join(pid.to_string());
    let maps = File::open(dir.join("maps")).and_then(|f| {
        let mut b = Vec::new();
        f.take(MAX_MAPS_BYTES).read_to_end(&mut b).map(|_| b)
    });
    let maps = match maps {
        Ok(m) => m,
        Err(e) => {
            return Held {
                files: Vec::new(),
                error: Some(format!("maps: {e}")),
                micros: t.elapsed().as_micros() as u64,
            }
        }
    };
    let mut error = None;
    let files = exec_files(&parse_maps(&maps))
        .into_iter()
        .map(|f| {
            let p = dir
                .join("map_files")
                .join(format!("{:x}-{:x}", f.exec.0, f.exec.1));
            // The entry is a magic link: it opens the mapped file itself.
            let file = File::open(&p);
            let file = match file {
                Ok(file) => Some(file),
                Err(e) => {
                    error.get_or_insert_with(|| format!("{}: {e}", p.display()));
                    None
                }
            };
            (f, file)
        })
        .collect();
    Held {
        files,
        error,
        micros: t.elapsed().as_micros() as u64,
    }
}

/// The GNU build-id (`NT_GNU_BUILD_ID` in a PT_NOTE) of an ELF file, lowercase hex.
pub fn gnu_build_id(f: &File) -> Option<String> {
    let mut h = [0u8; 64];
    f.read_exact_at(&mut h, 0).ok()?;
    if &h[..4] != b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        return None;
    }
    let phoff = u64::from_le_bytes(h[32..40].try_into().ok()?);
    let phentsize = u16::from_le_bytes(h[54..56].try_into().ok()?);
    let phnum = u16::from_le_bytes(h[56..58].try_into().ok()?);
    if phentsize != 56 || phnum == 0 || phnum > 256 {
        return None;
    }
    let mut ph = vec![0u8; usize::from(phnum) * 56];
    f.read_exact_at(&mut ph, phoff).ok()?;
    for p in ph.chunks_exact(56) {
        if u32::from_le_bytes(p[0..4].try_into().ok()?) != 4 {
            continue;
        }
        let off = u64::from_le_bytes(p[8..16].try_into().ok()?);
        let size = u64::from_le_bytes(p[32..40].try_into().ok()?);
        if size == 0 || size > 64 << 10 {
            continue;
        }
        let mut notes = vec![0u8; size as usize];
        if f.read_exact_at(&mut notes, off).is_err() {
            continue;
        }
        let (list, _) = crate::analysis::elfcore::parse_notes(&notes);
        for (kind, name, desc) in list {
            if kind == 3 && name == b"GNU" && (4..=64).contains(&desc.len()) {
                return Some(hex::encode(desc));
            }
        }
    }
    None
}

/// A build-id as the cache names files: 8 to 128 lowercase hex digits, or `h-` and a
/// sha256 for files without one.
pub fn is_build_id(s: &str) -> bool {
    let hexpart = s.strip_prefix("h-").unwrap_or(s);
    (8..=128).contains(&hexpart.len())
        && hexpart
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// For files without a GNU build-id (Go's internal linker writes none): a hash of the
/// size and the first and last 64 KiB, which is the same for every copy of the file.
fn content_key(f: &File, size: u64) -> Option<String> {
    let mut h = Sha256::new();
    h.update(size.to_le_bytes());
    let n = size.min(64 << 10) as usize;
    let mut buf = vec![0u8; n];
    f.read_exact_at(&mut buf, 0).ok()?;
    h.update(&buf);
    f.read_exact_at(&mut buf, size - n as u64).ok()?;
    h.update(&buf);
    Some(format!("h-{}", hex::encode(h.finalize())))
}

/// Limits of the cache.
#[derive(Debug, Clone)]
pub struct CacheLimits {
    pub max_total_bytes: u64,
    pub max_file_bytes: u64,
}

/// `<spool>/buildid`.
pub fn cache_dir(spool_root: &Path) -> PathBuf {
    spool_root.join("buildid")
}

/// Puts one file into the cache unless it is there; true when it is there afterwards.
pub fn ensure_cached(
    dir: &Path,
    key: &str,
    src: &File,
    size: u64,
    limits: &CacheLimits,
) -> Result<bool, BuildIdError> {
    let dst = dir.join(key);
    if let Ok(m) = fs::metadata(&dst) {
        if m.len() == size {
            // A hit: refresh for the LRU.
            let _ = File::options()
                .write(true)
                .open(&dst)
                .and_then(|f| f.set_modified(SystemTime::now()));
            return Ok(true);
        }
    }
    if size > limits.max_file_bytes || size > limits.max_total_bytes {
        return Ok(false);
    }
    // Not fsynced (commit_unsynced): a hit checks the size, so a short file a power loss
    // may leave is copied again; the copy runs while the crashed process is held.
    let durable = |e: coredump_durable::Error| {
        let (op, path, source) = e.into_parts();
        BuildIdError::Io { op, path, source }
    };
    let mut out = coredump_durable::AtomicFile::create(&dst, 0o600).map_err(durable)?;
    let mut reader = src.take(size);
    let copied = (|| {
        // From the start, whatever the descriptor's position.
        use std::io::Seek;
        let mut s = src;
        s.seek(io::SeekFrom::Start(0))?;
        io::copy(&mut reader, out.file_mut())
    })();
    // An error drops `out`, which removes the temporary file.
    match copied {
        Ok(n) if n == size => {}
        Ok(n) => {
            return Err(BuildIdError::Io {
                op: "copy",
                path: out.temp_path().to_path_buf(),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{n} of {size} bytes"),
                ),
            });
        }
        Err(e) => {
            return Err(BuildIdError::Io {
                op: "copy",
                path: out.temp_path().to_path_buf(),
                source: e,
            });
        }
    }
    out.commit_unsynced().map_err(durable)?;
    evict(dir, limits.max_total_bytes)?;
    Ok(true)
}

/// Removes the least recently used files until the cache holds at most `max` bytes.
pub fn evict(dir: &Path, max: u64) -> Result<u64, BuildIdError> {
    let lock_path = dir.join(".lock");
    let lock = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|source| BuildIdError::Io {
            op: "open",
            path: lock_path.clone(),
            source,
        })?;
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).ok();
    let mut files: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
    let rd = fs::read_dir(dir).map_err(|source| BuildIdError::Io {
        op: "readdir",
        path: dir.to_path_buf(),
        source,
    })?;
    for ent in rd.flatten() {
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        if let Ok(m) = ent.metadata() {
            if m.is_file() {
                files.push((
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    m.len(),
                    ent.path(),
                ));
            }
        }
    }
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort();
    for (_, len, path) in files {
        if total <= max {
            break;
        }
        if fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
    Ok(total)
}

/// After the pipe is closed: build-ids and copies, from the descriptors [`hold`] opened.
pub fn cache_all(
    held: Held,
    spool_root: &Path,
    limits: Option<&CacheLimits>,
) -> (Vec<ModuleRecord>, Option<String>, u64) {
    let t = Instant::now();
    let dir = cache_dir(spool_root);
    let mut error = held.error;
    if limits.is_some() {
        if let Err(e) = fs::DirBuilder::new().mode_700().create(&dir) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                error.get_or_insert_with(|| format!("{}: {e}", dir.display()));
            }
        }
    }
    let mut out = Vec::new();
    for (f, file) in held.files {
        let mut rec = ModuleRecord {
            path: escape(&f.path),
            build_id: None,
            base: f.base,
            mappings: f.mappings.clone(),
            cached: false,
        };
        if let Some(file) = file {
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            let gnu = gnu_build_id(&file);
            let key = gnu.clone().or_else(|| content_key(&file, size));
            rec.build_id = key.clone();
            if let (Some(limits), Some(key)) = (limits, key) {
                match ensure_cached(&dir, &key, &file, size, limits) {
                    Ok(c) => rec.cached = c,
                    Err(e) => {
                        error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
        }
        out.push(rec);
    }
    (out, error, t.elapsed().as_micros() as u64)
}

trait Mode700 {
    fn mode_700(&mut self) -> &mut Self;
}
impl Mode700 for fs::DirBuilder {
    fn mode_700(&mut self) -> &mut Self {
        use std::os::unix::fs::DirBuilderExt;
        self.mode(0o700)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAPS: &str = "\
5581a5a00000-5581a5a01000 r--p 00000000 fd:01 1234                       /app/server
5581a5a01000-5581a5a02000 r-xp 00001000 fd:01 1234                       /app/server
5581a5a02000-5581a5a03000 rw-p 00002000 fd:01 1234                       /app/server
7f0000000000-7f0000028000 r--p 00000000 fd:01 99                         /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000028000-7f00001bd000 r-xp 00028000 fd:01 99                         /usr/lib/x86_64-linux-gnu/libc.so.6
7f00001bd000-7f0000200000 rw-p 00000000 00:00 0
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
7ffd00100000-7ffd00102000 r-xp 00000000 00:00 0                          [vdso]
7f0000300000-7f0000301000 r-xp 00000000 fd:01 77                         /tmp/a file with spaces (deleted)
garbage line
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn maps_give_executable_files_with_their_base() {
        let lines = parse_maps(MAPS.as_bytes());
        assert_eq!(lines.len(), 10);
        let files = exec_files(&lines);
        let paths: Vec<String> = files
            .iter()
            .map(|f| String::from_utf8_lossy(&f.path).into_owned())
            .collect();
        assert_eq!(
            paths,
            [
                "/app/server",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                "/tmp/a file with spaces (deleted)"
            ]
        );
        assert_eq!(files[0].base, 0x5581a5a00000);
        assert_eq!(files[0].exec, (0x5581a5a01000, 0x5581a5a02000));
        assert_eq!(files[0].mappings.len(), 3);
        assert_eq!(files[1].base, 0x7f0000000000);
    }

    #[test]
    fn this_test_binary_has_a_build_id_and_caches_once() {
        let exe = File::open(std::env::current_exe().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let size = exe.metadata().unwrap().len();
        let key = gnu_build_id(&exe)
            .or_else(|| content_key(&exe, size))
            .unwrap();
        assert!(is_build_id(&key), "{key}");
        let limits = CacheLimits {
            max_total_bytes: 4 << 30,
            max_file_bytes: 4 << 30,
        };
        for _ in 0..3 {
            assert!(ensure_cached(dir.path(), &key, &exe, size, &limits).unwrap());
        }
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            names
                .iter()
                .filter(|n| !n.to_string_lossy().starts_with('.'))
                .count(),
            1
        );
        assert_eq!(fs::metadata(dir.path().join(&key)).unwrap().len(), size);
        // Over the per-file cap: not copied.
        let small = CacheLimits {
            max_total_bytes: 4 << 30,
            max_file_bytes: 10,
        };
        assert!(!ensure_cached(dir.path(), "abcdef0123", &exe, size, &small).unwrap());
    }

    #[test]
    fn eviction_removes_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        for (i, name) in ["aaaaaaaa01", "aaaaaaaa02", "aaaaaaaa03"]
            .iter()
            .enumerate()
        {
            let p = dir.path().join(name);
            fs::write(&p, vec![0u8; 1000]).unwrap();
            let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i as u64);
            File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        assert_eq!(evict(dir.path(), 2000).unwrap(), 2000);
        assert!(!dir.path().join("aaaaaaaa01").exists());
        assert!(dir.path().join("aaaaaaaa03").exists());
    }

    proptest! {
        #[test]
        fn any_maps_parse_without_panic(lines in proptest::collection::vec(any::<Vec<u8>>(), 0..32)) {
            let text = lines.join(&b'\n');
            let files = exec_files(&parse_maps(&text));
            prop_assert!(files.len() <= MAX_FILES);
            for f in files {
                prop_assert!(f.exec.0 < f.exec.1);
            }
        }

        #[test]
        fn real_lines_round_trip(start in 0u64..(1 << 47), len in 1u64..(1 << 30), off in any::<u32>(), inode in 1u64..u64::MAX, path in "/[a-z/ ]{1,40}") {
            let line = format!("{:x}-{:x} r-xp {:08x} fd:01 {} {}", start, start + len, off, inode, path);
            let l = parse_map_line(line.as_bytes()).unwrap();
            prop_assert_eq!(l.start, start);
            prop_assert_eq!(l.end, start + len);
            prop_assert_eq!(l.offset, u64::from(off));
            prop_assert!(l.exec);
            prop_assert_eq!(l.path, path.trim_start().as_bytes().to_vec());
        }
    }
}
