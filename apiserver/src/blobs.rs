//! Core files, stored as the node agent sent them (zstd), one subtree per namespace.
//! Behind a small trait so an object store can replace the filesystem without touching
//! the API code.

use std::fs::{self, File};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("no stored core for {0}")]
    NotFound(String),
    #[error("invalid blob key {0}")]
    BadKey(String),
    #[error("a core is already stored for {0}")]
    Exists(String),
}

/// Which core: the Coredump's namespace, name and uid (a re-created object with the same
/// name never sees the old core).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BlobKey {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl std::fmt::Display for BlobKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} ({})", self.namespace, self.name, self.uid)
    }
}

pub trait ReadSeek: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadSeek for T {}

/// A blob being written: invisible until `commit`, discarded if dropped.
pub trait BlobWriter: Write + Send {
    /// Makes the blob durable and visible under its key. Never replaces a stored blob:
    /// if one is there, [`BlobError::Exists`] and this one is discarded.
    fn commit(self: Box<Self>) -> Result<(), BlobError>;
}

pub trait BlobStore: Send + Sync {
    fn create(&self, key: &BlobKey) -> Result<Box<dyn BlobWriter>, BlobError>;
    fn open(&self, key: &BlobKey) -> Result<Box<dyn ReadSeek>, BlobError>;
    fn size(&self, key: &BlobKey) -> Result<u64, BlobError>;
    /// Removes the blob; a missing one is not an error.
    fn delete(&self, key: &BlobKey) -> Result<(), BlobError>;
    /// Every stored blob, for removing those whose object is gone.
    fn list(&self) -> Result<Vec<BlobKey>, BlobError>;
}

/// `<root>/<namespace>/<name>_<uid>.zst`; partial writes live in `<root>/.tmp` and are
/// renamed into place after fsync, so a crash never leaves a partial core under a key.
pub struct FsBlobs {
    root: PathBuf,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BlobError {
    let what = what.into();
    move |source| BlobError::Io { what, source }
}

/// Namespaces and names are DNS names and uids are UUIDs: anything else (a `/`, `..`, an
/// underscore that would make file names ambiguous) is refused before touching the disk.
fn safe(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 253
        && part
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !part.starts_with('.')
}

impl FsBlobs {
    pub fn new(root: &Path) -> Result<Self, BlobError> {
        let tmp = root.join(".tmp");
        fs::create_dir_all(&tmp).map_err(io(format!("create {}", tmp.display())))?;
        // Partial uploads from before a crash or restart are garbage.
        if let Ok(entries) = fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    fn path(&self, key: &BlobKey) -> Result<PathBuf, BlobError> {
        if !safe(&key.namespace) || !safe(&key.name) || !safe(&key.uid) {
            return Err(BlobError::BadKey(key.to_string()));
        }
        Ok(self
            .root
            .join(&key.namespace)
            .join(format!("{}_{}.zst", key.name, key.uid)))
    }
}

struct FsWriter {
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
}

impl Write for FsWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.file.as_mut() {
            Some(f) => f.write(buf),
            None => Err(std::io::Error::other("blob already committed")),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl BlobWriter for FsWriter {
    fn commit(mut self: Box<Self>) -> Result<(), BlobError> {
        let file = self
            .file
            .take()
            .ok_or_else(|| BlobError::NotFound("writer already committed".into()))?;
        file.sync_all().map_err(io("fsync core"))?;
        drop(file);
        let dir = self
            .dest
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        // A hard link is an atomic "rename unless the name exists": an upload can never
        // replace a core another one stored. The temporary name goes after (a crash
        // in between leaves it in .tmp, which start-up clears).
        match fs::hard_link(&self.tmp, &self.dest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let _ = fs::remove_file(&self.tmp);
                return Err(BlobError::Exists(self.dest.display().to_string()));
            }
            Err(e) => {
                let _ = fs::remove_file(&self.tmp);
                return Err(io(format!("link into {}", self.dest.display()))(e));
            }
        }
        let _ = fs::remove_file(&self.tmp);
        // The rename is durable only once the directory is.
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io(format!("fsync {}", dir.display())))?;
        Ok(())
    }
}

impl Drop for FsWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl BlobStore for FsBlobs {
    fn create(&self, key: &BlobKey) -> Result<Box<dyn BlobWriter>, BlobError> {
        let dest = self.path(key)?;
        let tmp = self
            .root
            .join(".tmp")
            .join(format!("{}.{}", key.uid, uuid::Uuid::new_v4()));
        let file = File::create(&tmp).map_err(io(format!("create {}", tmp.display())))?;
        Ok(Box::new(FsWriter {
            file: Some(file),
            tmp,
            dest,
        }))
    }

    fn open(&self, key: &BlobKey) -> Result<Box<dyn ReadSeek>, BlobError> {
        let path = self.path(key)?;
        match File::open(&path) {
            Ok(f) => Ok(Box::new(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(BlobError::NotFound(key.to_string()))
            }
            Err(e) => Err(io(format!("open {}", path.display()))(e)),
        }
    }

    fn size(&self, key: &BlobKey) -> Result<u64, BlobError> {
        let path = self.path(key)?;
        match fs::metadata(&path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(BlobError::NotFound(key.to_string()))
            }
            Err(e) => Err(io(format!("stat {}", path.display()))(e)),
        }
    }

    fn delete(&self, key: &BlobKey) -> Result<(), BlobError> {
        let path = self.path(key)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("remove {}", path.display()))(e)),
        }
        // An emptied namespace directory goes too (fails harmlessly if not empty).
        if let Some(dir) = path.parent() {
            let _ = fs::remove_dir(dir);
        }
        Ok(())
    }

    fn list(&self) -> Result<Vec<BlobKey>, BlobError> {
        let mut out = Vec::new();
        let entries =
            fs::read_dir(&self.root).map_err(io(format!("list {}", self.root.display())))?;
        for ns in entries.flatten() {
            let namespace = ns.file_name().to_string_lossy().into_owned();
            if namespace.starts_with('.') || !ns.path().is_dir() {
                continue;
            }
            let Ok(files) = fs::read_dir(ns.path()) else {
                continue;
            };
            for f in files.flatten() {
                let file = f.file_name().to_string_lossy().into_owned();
                if let Some((name, uid)) = file.strip_suffix(".zst").and_then(|s| s.split_once('_'))
                {
                    out.push(BlobKey {
                        namespace: namespace.clone(),
                        name: name.to_string(),
                        uid: uid.to_string(),
                    });
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> BlobKey {
        BlobKey {
            namespace: "ns".into(),
            name: name.into(),
            uid: "0b6f3c6e-1111-4222-8333-944455556666".into(),
        }
    }

    /// The stored core of `name`, as text.
    fn stored(blobs: &FsBlobs, name: &str) -> String {
        let mut s = String::new();
        blobs
            .open(&key(name))
            .expect("open")
            .read_to_string(&mut s)
            .expect("read");
        s
    }

    /// Partial writes left in `.tmp`.
    fn tmp_files(root: &Path) -> usize {
        fs::read_dir(root.join(".tmp")).expect("tmp").count()
    }

    #[test]
    fn blobs_are_invisible_until_committed_and_dropped_writers_leave_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = FsBlobs::new(dir.path()).expect("blobs");
        let mut w = blobs.create(&key("a")).expect("create");
        w.write_all(b"partial").expect("write");
        assert!(matches!(blobs.open(&key("a")), Err(BlobError::NotFound(_))));
        drop(w);
        assert!(blobs.list().expect("list").is_empty());
        assert_eq!(tmp_files(dir.path()), 0);

        let mut w = blobs.create(&key("a")).expect("create");
        w.write_all(b"whole core").expect("write");
        w.commit().expect("commit");
        assert_eq!(stored(&blobs, "a"), "whole core");
        assert_eq!(blobs.size(&key("a")).expect("size"), 10);
        assert_eq!(blobs.list().expect("list"), [key("a")]);
        assert_eq!(
            tmp_files(dir.path()),
            0,
            "the temporary name is gone after commit"
        );

        // A second writer of the same key never replaces the stored core.
        let mut w = blobs.create(&key("a")).expect("create");
        w.write_all(b"other").expect("write");
        assert!(matches!(w.commit(), Err(BlobError::Exists(_))));
        assert_eq!(
            stored(&blobs, "a"),
            "whole core",
            "the first core is intact"
        );
        assert_eq!(tmp_files(dir.path()), 0);
        blobs.delete(&key("a")).expect("delete");
        blobs.delete(&key("a")).expect("delete twice is fine");
        assert!(blobs.list().expect("list").is_empty());
    }

    #[test]
    fn keys_that_could_escape_the_root_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = FsBlobs::new(dir.path()).expect("blobs");
        for bad in ["../x", "a/b", ".hidden", "", "under_score"] {
            assert!(
                matches!(blobs.create(&key(bad)), Err(BlobError::BadKey(_))),
                "{bad}"
            );
        }
    }
}
