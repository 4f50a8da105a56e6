//! The filesystem backend: `<root>/<namespace>/<name>_<uid>.zst`.
//!
//! A blob is written to `<root>/.tmp`, fsynced, and hard-linked into place: a link is an
//! atomic "rename unless the name exists", so a crash never leaves a partial core under
//! a key and a commit never replaces a stored one. Whatever a crash leaves in `.tmp` is
//! removed when the store is opened. All file I/O runs through `tokio::fs` (blocking
//! threads), never on the async workers.

use std::io::SeekFrom;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{BlobEntry, BlobError, BlobKey, BlobStore, BlobWriter, ByteStream};

/// Bytes per chunk of a read stream.
const READ_CHUNK: usize = 256 * 1024;

pub struct FsBlobs {
    root: PathBuf,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BlobError {
    let what = what.into();
    move |source| BlobError::Io { what, source }
}

impl FsBlobs {
    /// Opens (creating) the store at `root` and clears partial writes from before a crash
    /// or restart. Blocking: call it at start-up off the async workers (or in tests).
    pub fn new(root: &Path) -> Result<Self, BlobError> {
        let tmp = root.join(".tmp");
        std::fs::create_dir_all(&tmp).map_err(io(format!("create {}", tmp.display())))?;
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// [`Self::new`] on a blocking thread.
    pub async fn open(root: &Path) -> Result<Self, BlobError> {
        let root = root.to_path_buf();
        tokio::task::spawn_blocking(move || Self::new(&root))
            .await
            .map_err(|e| BlobError::Io {
                what: "opening the core store".into(),
                source: std::io::Error::other(e),
            })?
    }

    fn path(&self, key: &BlobKey) -> Result<PathBuf, BlobError> {
        Ok(self.root.join(&key.namespace).join(key.file_name()?))
    }

    fn not_found(key: &BlobKey, path: &Path) -> impl FnOnce(std::io::Error) -> BlobError {
        let (key, path) = (key.to_string(), path.display().to_string());
        move |e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                BlobError::NotFound(key)
            } else {
                BlobError::Io {
                    what: format!("open {path}"),
                    source: e,
                }
            }
        }
    }
}

struct FsWriter {
    /// `None` once committed or aborted.
    file: Option<tokio::fs::File>,
    written: u64,
    tmp: PathBuf,
    dest: PathBuf,
    key: String,
}

/// Removes a temporary file off the async workers (also from `Drop`).
fn remove_later(path: PathBuf) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn_blocking(move || {
                let _ = std::fs::remove_file(path);
            });
        }
        Err(_) => {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl FsWriter {
    async fn link(&self, file: tokio::fs::File) -> Result<(), BlobError> {
        file.sync_all().await.map_err(io("fsync core"))?;
        drop(file);
        let dir = self
            .dest
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io(format!("create {}", dir.display())))?;
        // A hard link is an atomic "rename unless the name exists": an upload can never
        // replace a core another one stored. The link is durable only once the directory
        // is: link_new fsyncs it.
        let (tmp, dest) = (self.tmp.clone(), self.dest.clone());
        let linked = tokio::task::spawn_blocking(move || coredump_durable::link_new(&tmp, &dest))
            .await
            .map_err(|e| io("link")(std::io::Error::other(e)))?;
        match linked {
            Ok(()) => Ok(()),
            Err(e) if e.op() == "link" && e.io().kind() == std::io::ErrorKind::AlreadyExists => {
                Err(BlobError::Exists(self.key.clone()))
            }
            Err(e) if e.op() == "link" => Err(io(format!("link into {}", self.dest.display()))(
                e.into_io(),
            )),
            Err(e) => Err(io(format!("fsync {}", dir.display()))(e.into_io())),
        }
    }
}

#[async_trait]
impl BlobWriter for FsWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), BlobError> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io("write")(std::io::Error::other("blob already committed")))?;
        file.write_all(&chunk)
            .await
            .map_err(io(format!("write {}", self.tmp.display())))?;
        self.written += chunk.len() as u64;
        Ok(())
    }

    async fn commit(mut self: Box<Self>, len: u64) -> Result<(), BlobError> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| io("commit")(std::io::Error::other("blob already committed")))?;
        let result = if self.written != len {
            Err(BlobError::Length {
                key: self.key.clone(),
                written: self.written,
                expected: len,
            })
        } else {
            // tokio's File writes in the background: flush before fsync.
            match file.flush().await {
                Ok(()) => self.link(file).await,
                Err(e) => Err(io("flush core")(e)),
            }
        };
        // The temporary name goes in every case (a crash before this leaves it in .tmp,
        // which opening the store clears).
        let _ = tokio::fs::remove_file(&self.tmp).await;
        result
    }

    async fn abort(mut self: Box<Self>) {
        if let Some(file) = self.file.take() {
            drop(file);
            let _ = tokio::fs::remove_file(&self.tmp).await;
        }
    }
}

impl Drop for FsWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            remove_later(std::mem::take(&mut self.tmp));
        }
    }
}

#[async_trait]
impl BlobStore for FsBlobs {
    async fn create(&self, key: &BlobKey) -> Result<Box<dyn BlobWriter>, BlobError> {
        let dest = self.path(key)?;
        let tmp = self
            .root
            .join(".tmp")
            .join(format!("{}.{}", key.uid, uuid::Uuid::new_v4()));
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(io(format!("create {}", tmp.display())))?;
        Ok(Box::new(FsWriter {
            file: Some(file),
            written: 0,
            tmp,
            dest,
            key: key.to_string(),
        }))
    }

    async fn read(
        &self,
        key: &BlobKey,
        range: Option<Range<u64>>,
    ) -> Result<ByteStream, BlobError> {
        let path = self.path(key)?;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(Self::not_found(key, &path))?;
        let Some(range) = range else {
            return Ok(tokio_util::io::ReaderStream::with_capacity(file, READ_CHUNK).boxed());
        };
        file.seek(SeekFrom::Start(range.start))
            .await
            .map_err(io(format!("seek {}", path.display())))?;
        let piece = file.take(range.end.saturating_sub(range.start));
        Ok(tokio_util::io::ReaderStream::with_capacity(piece, READ_CHUNK).boxed())
    }

    async fn size(&self, key: &BlobKey) -> Result<u64, BlobError> {
        let path = self.path(key)?;
        tokio::fs::metadata(&path)
            .await
            .map(|m| m.len())
            .map_err(Self::not_found(key, &path))
    }

    async fn delete(&self, key: &BlobKey) -> Result<(), BlobError> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("remove {}", path.display()))(e)),
        }
        // An emptied namespace directory goes too (fails harmlessly if not empty).
        if let Some(dir) = path.parent() {
            let _ = tokio::fs::remove_dir(dir).await;
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<BlobEntry>, BlobError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || list_dir(&root))
            .await
            .map_err(|e| io("list")(std::io::Error::other(e)))?
    }
}

fn list_dir(root: &Path) -> Result<Vec<BlobEntry>, BlobError> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(root).map_err(io(format!("list {}", root.display())))?;
    for ns in entries.flatten() {
        let namespace = ns.file_name().to_string_lossy().into_owned();
        if namespace.starts_with('.') || !ns.path().is_dir() {
            continue;
        }
        let Ok(files) = std::fs::read_dir(ns.path()) else {
            continue;
        };
        for f in files.flatten() {
            let file = f.file_name().to_string_lossy().into_owned();
            let Some(key) = BlobKey::parse(&namespace, &file) else {
                continue;
            };
            let modified = f
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            out.push(BlobEntry { key, modified });
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobs::conformance;

    /// Partial writes left in `.tmp`.
    fn tmp_files(root: &Path) -> usize {
        std::fs::read_dir(root.join(".tmp")).expect("tmp").count()
    }

    #[tokio::test]
    async fn conformance_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = FsBlobs::new(dir.path()).expect("blobs");
        conformance::run(&blobs).await;
        assert_eq!(tmp_files(dir.path()), 0, "no temporary file is left");
    }

    #[tokio::test]
    async fn dropped_and_refused_writers_leave_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = FsBlobs::new(dir.path()).expect("blobs");
        let key = conformance::key("a");
        let mut w = blobs.create(&key).await.expect("create");
        w.write(Bytes::from_static(b"partial"))
            .await
            .expect("write");
        assert_eq!(tmp_files(dir.path()), 1, "the partial write is in .tmp");
        drop(w);
        // Drop removes it on a blocking thread.
        for _ in 0..100 {
            if tmp_files(dir.path()) == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(tmp_files(dir.path()), 0);

        let mut w = blobs.create(&key).await.expect("create");
        w.write(Bytes::from_static(b"core")).await.expect("write");
        w.commit(4).await.expect("commit");
        let mut w = blobs.create(&key).await.expect("create");
        w.write(Bytes::from_static(b"other")).await.expect("write");
        assert!(matches!(w.commit(5).await, Err(BlobError::Exists(_))));
        assert_eq!(tmp_files(dir.path()), 0);
    }

    #[test]
    fn opening_the_store_clears_partial_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(FsBlobs::new(dir.path()).expect("blobs"));
        std::fs::write(dir.path().join(".tmp/uid.partial"), b"x").expect("write");
        drop(FsBlobs::new(dir.path()).expect("blobs"));
        assert_eq!(tmp_files(dir.path()), 0);
    }
}
