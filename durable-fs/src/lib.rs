//! Durable and atomic file writes, one implementation for the server, the node handler
//! and kubectl-coredump.
//!
//! Replacing a file ([`write_atomic`], [`AtomicFile::commit`]) takes four steps, and a
//! crash (of the process, or of the machine: a power loss) at any of them leaves either
//! the old file or the new one under the name, never a mix and never a partial file:
//!
//! 1. **Write a temporary file in the same directory** (`.<name>.<pid>.<n>.tmp`, created
//!    with `O_EXCL` and the caller's mode). A crash here leaves the old file untouched and
//!    at most a stray temporary file, which the callers' directories tolerate (hidden,
//!    `.tmp`) and the next write does not trip over (every write takes a fresh name).
//! 2. **fsync the file**: its data and size are on disk before any name points at it.
//!    A crash here: as in 1.
//! 3. **rename it over the name**: atomic for every reader, who sees the old file or the
//!    new one. After a process crash from here on, the new file is in place. After a power
//!    loss before step 4, either the old or the new file is there (the rename may not
//!    have reached the disk), each complete: the new one's data was synced in 2.
//! 4. **fsync the directory**: the rename itself is on disk; from here on the new file
//!    survives a power loss.
//!
//! A step that fails removes the temporary file, so an error never leaves one behind;
//! the error ([`Error`]) names the step and the path. The same directory is required
//! because a rename is atomic only within one filesystem.
//!
//! [`write_file`] is steps 1–2 without the temporary name, for files inside a directory
//! that is itself published by a rename later (a spool entry); [`sync_dir`] is step 4 on
//! its own, after the caller's own rename or link; [`link_new`] publishes a finished file
//! under a name unless that name exists (a hard link, then step 4), so a store never
//! replaces what it stored. [`AtomicFile::commit_unsynced`] skips steps 2 and 4 for caches
//! that check what they read back: readers still never see a partial file while the
//! machine runs, but a power loss may leave a short one.
//!
//! Unix only (modes, directory fsync); std only, no unsafe code.

#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A failed step: which one, on which path, and the system's error.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}", path = path.display())]
pub struct Error {
    op: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

impl Error {
    fn at(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self { op, path, source }
    }

    /// The step: `"create"`, `"write"`, `"fsync"`, `"rename"` or `"link"`.
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The file or directory the step failed on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The system's error (its kind is `AlreadyExists` when [`link_new`] finds the name
    /// taken).
    pub fn io(&self) -> &io::Error {
        &self.source
    }

    /// The parts, for callers that keep their own error type.
    pub fn into_parts(self) -> (&'static str, PathBuf, io::Error) {
        (self.op, self.path, self.source)
    }

    /// The system's error alone.
    pub fn into_io(self) -> io::Error {
        self.source
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Creates (or truncates) `path` with `mode` (for a new file; the umask applies), writes
/// `data` and fsyncs it: steps 1–2 of the module doc under the final name. Not atomic on
/// its own: for files in a directory that is published later, as a whole.
pub fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(Error::at("create", path))?;
    f.write_all(data).map_err(Error::at("write", path))?;
    f.sync_all().map_err(Error::at("fsync", path))
}

/// Replaces `path` with `data` (a new file gets `mode`; the umask applies), durably and
/// atomically: all four steps of the module doc.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let mut f = AtomicFile::create(path, mode)?;
    f.write_all(data)
        .map_err(Error::at("write", f.temp_path()))?;
    f.commit()
}

/// [`write_atomic`] unless `path` already holds exactly `data`; true when it wrote. An
/// unchanged file keeps its mtime, so a reader polling for changes does not reload.
pub fn write_atomic_if_changed(path: &Path, data: &[u8], mode: u32) -> Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == data) {
        return Ok(false);
    }
    write_atomic(path, data, mode)?;
    Ok(true)
}

/// fsyncs a directory, so the renames, links and removals in it are on disk.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::at("fsync", dir))
}

/// Renames `from` to `to`, then fsyncs `to`'s directory (and `from`'s when it is another
/// one), so the move survives a power loss. `from` should already be synced.
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(Error::at("rename", to))?;
    let (a, b) = (parent(to), parent(from));
    sync_dir(a)?;
    if a != b {
        sync_dir(b)?;
    }
    Ok(())
}

/// Gives the finished file `from` the name `to` unless `to` exists (then the error's
/// [`kind`](io::Error::kind) is `AlreadyExists` and nothing changed), and fsyncs `to`'s
/// directory. A hard link is an atomic "rename unless the name exists"; `from` keeps its
/// name (the caller removes it) and should already be synced.
pub fn link_new(from: &Path, to: &Path) -> Result<()> {
    std::fs::hard_link(from, to).map_err(Error::at("link", to))?;
    sync_dir(parent(to))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes temporary names unique within the process (the pid makes them unique between
/// processes).
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A file being written under a temporary name next to `path`, published by
/// [`commit`](Self::commit). Dropped without a commit (or when a commit fails), it removes
/// the temporary file.
#[derive(Debug)]
pub struct AtomicFile {
    file: File,
    temp: PathBuf,
    path: PathBuf,
    /// Renamed into place: nothing to remove.
    published: bool,
}

impl AtomicFile {
    /// Creates the temporary file (with `mode`; the umask applies) in `path`'s directory.
    pub fn create(path: &Path, mode: u32) -> Result<Self> {
        let dir = parent(path);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut tries = 0;
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let temp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&temp)
            {
                Ok(file) => {
                    return Ok(Self {
                        file,
                        temp,
                        path: path.to_path_buf(),
                        published: false,
                    })
                }
                // A leftover of a killed process that had our pid: take the next name.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 100 => {
                    tries += 1;
                }
                Err(e) => return Err(Error::at("create", &temp)(e)),
            }
        }
    }

    /// The name the file gets on commit.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary file's name.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// The open temporary file (to set its permissions, or to copy into it).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The open temporary file, for writing.
    pub fn file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    /// fsyncs the file, renames it over [`path`](Self::path) and fsyncs the directory:
    /// steps 2–4 of the module doc.
    pub fn commit(mut self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(Error::at("fsync", &self.temp))?;
        self.rename()?;
        sync_dir(parent(&self.path))
    }

    /// Renames the file over [`path`](Self::path) without any fsync: readers see the old
    /// file or the whole new one, but after a power loss the name may hold a short file.
    /// Only for caches that check what they read (a size, a hash) and can fetch again.
    pub fn commit_unsynced(mut self) -> Result<()> {
        self.rename()
    }

    fn rename(&mut self) -> Result<()> {
        std::fs::rename(&self.temp, &self.path).map_err(Error::at("rename", &self.path))?;
        self.published = true;
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn write_atomic_leaves_the_content_the_mode_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_atomic(&p, b"first", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        assert_eq!(mode(&p), 0o600);
        write_atomic(&p, b"second, longer", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second, longer");
        write_atomic(&p, b"3", 0o600).unwrap();
        assert_eq!(
            std::fs::read(&p).unwrap(),
            b"3",
            "no tail of the longer one"
        );
        assert_eq!(names(dir.path()), vec!["state.json"]);
    }

    #[test]
    fn write_file_writes_in_place_with_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metadata.json");
        write_file(&p, b"a longer first version", 0o600).unwrap();
        write_file(&p, b"short", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"short");
        assert_eq!(mode(&p), 0o600);
        assert_eq!(names(dir.path()), vec!["metadata.json"]);
    }

    #[test]
    fn an_uncommitted_file_is_invisible_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tls.crt");
        write_atomic(&p, b"old", 0o644).unwrap();
        let mut f = AtomicFile::create(&p, 0o644).unwrap();
        f.write_all(b"half of the new").unwrap();
        assert_eq!(f.temp_path().parent(), Some(dir.path()), "same directory");
        assert_eq!(
            std::fs::read(&p).unwrap(),
            b"old",
            "not visible before commit"
        );
        let temp = f.temp_path().to_path_buf();
        assert!(temp.exists());
        drop(f);
        assert!(!temp.exists());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(names(dir.path()), vec!["tls.crt"]);
    }

    #[test]
    fn a_reader_sees_the_old_file_or_the_new_one_never_a_partial_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        let a = vec![b'a'; 1 << 20];
        let b = vec![b'b'; 1 << 20];
        write_atomic(&p, &a, 0o600).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (p, stop) = (p.clone(), stop.clone());
            let (a, b) = (a.clone(), b.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(Ordering::Relaxed) {
                    let got = std::fs::read(&p).unwrap();
                    assert!(
                        got == a || got == b,
                        "a partial file of {} bytes",
                        got.len()
                    );
                    reads += 1;
                }
                reads
            })
        };
        for i in 0..40 {
            // Written in small pieces, so a non-atomic replace would be caught midway.
            let mut f = AtomicFile::create(&p, 0o600).unwrap();
            for chunk in (if i % 2 == 0 { &b } else { &a }).chunks(4096) {
                f.write_all(chunk).unwrap();
            }
            f.commit().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        assert_eq!(names(dir.path()), vec!["big"]);
    }

    #[test]
    fn a_failed_write_removes_its_temporary_file_and_names_the_step() {
        let dir = tempfile::tempdir().unwrap();
        // The rename fails: the name is a non-empty directory.
        let p = dir.path().join("taken");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("inside"), b"x").unwrap();
        let e = write_atomic(&p, b"data", 0o600).unwrap_err();
        assert_eq!(e.op(), "rename");
        assert_eq!(e.path(), p);
        assert!(e
            .to_string()
            .starts_with(&format!("rename {}: ", p.display())));
        assert_eq!(names(dir.path()), vec!["taken"], "no temporary file left");

        // The create fails: no such directory.
        let missing = dir.path().join("no/such/file");
        let e = write_atomic(&missing, b"data", 0o600).unwrap_err();
        assert_eq!(e.op(), "create");
        assert_eq!(e.io().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn sync_dir_syncs_a_directory_and_reports_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        sync_dir(dir.path()).unwrap();
        let missing = dir.path().join("gone");
        let e = sync_dir(&missing).unwrap_err();
        assert_eq!((e.op(), e.path()), ("fsync", missing.as_path()));
        assert_eq!(e.into_io().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn an_unchanged_file_is_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tls.key");
        assert!(write_atomic_if_changed(&p, b"key", 0o600).unwrap());
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000);
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(!write_atomic_if_changed(&p, b"key", 0o600).unwrap());
        assert_eq!(std::fs::metadata(&p).unwrap().modified().unwrap(), old);
        assert!(write_atomic_if_changed(&p, b"new key", 0o600).unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"new key");
    }

    #[test]
    fn link_new_never_replaces_a_name() {
        let dir = tempfile::tempdir().unwrap();
        let (tmp, dest) = (dir.path().join("tmp"), dir.path().join("core.zst"));
        write_file(&tmp, b"first", 0o600).unwrap();
        link_new(&tmp, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"first");
        std::fs::remove_file(&tmp).unwrap();
        write_file(&tmp, b"second", 0o600).unwrap();
        let e = link_new(&tmp, &dest).unwrap_err();
        assert_eq!(e.op(), "link");
        assert_eq!(e.io().kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&dest).unwrap(), b"first");
    }

    #[test]
    fn rename_moves_between_directories() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        write_file(&a.join("f.part"), b"done", 0o644).unwrap();
        rename(&a.join("f.part"), &b.join("f")).unwrap();
        assert_eq!(std::fs::read(b.join("f")).unwrap(), b"done");
        assert!(names(&a).is_empty());
        let e = rename(&a.join("f.part"), &b.join("g")).unwrap_err();
        assert_eq!(e.op(), "rename");
    }

    #[test]
    fn commit_unsynced_publishes_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cached");
        let mut f = AtomicFile::create(&p, 0o600).unwrap();
        f.write_all(b"binary").unwrap();
        f.file()
            .set_permissions(std::fs::Permissions::from_mode(0o755))
            .unwrap();
        f.commit_unsynced().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"binary");
        assert_eq!(mode(&p), 0o755);
        assert_eq!(names(dir.path()), vec!["cached"]);
    }

    #[test]
    fn a_relative_name_in_the_current_directory_has_a_parent() {
        assert_eq!(parent(Path::new("file")), Path::new("."));
        assert_eq!(parent(Path::new("d/file")), Path::new("d"));
    }
}
