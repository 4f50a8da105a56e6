//! Core files, stored as the node agent sent them (zstd), one subtree per namespace:
//! `<namespace>/<name>_<uid>.zst` under the filesystem root ([`FsBlobs`]) or under the
//! bucket's prefix ([`ObjectBlobs`]: S3, GCS, Azure). The API code sees only
//! [`BlobStore`], so either backend serves the same API.
//!
//! Invariants every implementation keeps (the shared suite in `tests` checks them):
//! - A blob is invisible under its key until [`BlobWriter::commit`] returns: readers,
//!   [`BlobStore::size`] and [`BlobStore::list`] never see a partial core. An aborted,
//!   failed or dropped writer leaves nothing visible (partial data the backend keeps is
//!   swept at start-up or expires: see each implementation).
//! - `commit` checks the byte count it was given and never replaces a stored blob: if one
//!   is there, [`BlobError::Exists`] and the new data is discarded. One upload per core
//!   at a time is guarded above the store (see [`crate::uploads`]).
//! - [`BlobStore::delete`] of a missing blob is not an error.
//! - Keys are DNS names and a UUID only ([`BlobKey::check`]), so no key escapes its
//!   namespace's subtree or is ambiguous to [`BlobKey::parse`].
//! - No blocking I/O on the async workers: the filesystem goes through `tokio::fs` or
//!   blocking threads.

use std::ops::Range;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

pub mod fs;
pub mod object;

pub use fs::FsBlobs;
pub use object::{ObjectBlobs, ObjectStoreConfig};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Backend {
        what: String,
        source: object_store::Error,
    },
    #[error("no stored core for {0}")]
    NotFound(String),
    #[error("invalid blob key {0}")]
    BadKey(String),
    #[error("a core is already stored for {0}")]
    Exists(String),
    #[error("{key}: {written} bytes were written, {expected} declared")]
    Length {
        key: String,
        written: u64,
        expected: u64,
    },
    #[error("{0}")]
    Config(String),
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

/// Namespaces and names are DNS names and uids are UUIDs: anything else (a `/`, `..`, an
/// underscore that would make file names ambiguous) is refused before touching storage.
fn safe(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 253
        && part
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !part.starts_with('.')
}

impl BlobKey {
    pub fn check(&self) -> Result<(), BlobError> {
        if safe(&self.namespace) && safe(&self.name) && safe(&self.uid) {
            Ok(())
        } else {
            Err(BlobError::BadKey(self.to_string()))
        }
    }

    /// The file name inside the namespace's directory: `<name>_<uid>.zst`.
    pub fn file_name(&self) -> Result<String, BlobError> {
        self.check()?;
        Ok(format!("{}_{}.zst", self.name, self.uid))
    }

    /// `<namespace>/<name>_<uid>.zst`, the layout both backends use.
    pub fn relative(&self) -> Result<String, BlobError> {
        Ok(format!("{}/{}", self.namespace, self.file_name()?))
    }

    /// The key of a file `name` in namespace directory `namespace`; `None` for anything
    /// [`Self::relative`] would not have produced.
    pub fn parse(namespace: &str, file: &str) -> Option<Self> {
        let (name, uid) = file.strip_suffix(".zst")?.split_once('_')?;
        let key = Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: uid.to_string(),
        };
        key.check().ok().map(|()| key)
    }
}

/// A stored blob, as listed for reconciliation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobEntry {
    pub key: BlobKey,
    /// When it was committed (the file's mtime, the object's last-modified).
    pub modified: SystemTime,
}

/// Bytes of a blob in order; an `Err` item ends the stream (the client sees a short body).
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

/// A blob being written: invisible until [`Self::commit`], discarded by [`Self::abort`]
/// or when dropped.
#[async_trait]
pub trait BlobWriter: Send {
    /// Appends a chunk. Memory stays bounded: the writer waits for room (disk, parts in
    /// flight) before it takes more.
    async fn write(&mut self, chunk: Bytes) -> Result<(), BlobError>;
    /// Makes the blob durable and visible under its key, if exactly `len` bytes were
    /// written ([`BlobError::Length`] otherwise). Never replaces a stored blob: if one is
    /// there, [`BlobError::Exists`]. On any error nothing of this writer stays visible.
    async fn commit(self: Box<Self>, len: u64) -> Result<(), BlobError>;
    /// Discards what was written (best effort; errors are logged).
    async fn abort(self: Box<Self>);
}

#[async_trait]
pub trait BlobStore: Send + Sync {
    /// A writer for `key`'s blob, invisible until committed.
    async fn create(&self, key: &BlobKey) -> Result<Box<dyn BlobWriter>, BlobError>;
    /// The bytes `range` of the blob (all of it: `None`), as a stream; a range past the
    /// end stops at the end. [`BlobError::NotFound`] before any byte if there is no blob.
    async fn read(&self, key: &BlobKey, range: Option<Range<u64>>)
        -> Result<ByteStream, BlobError>;
    /// The stored size in bytes.
    async fn size(&self, key: &BlobKey) -> Result<u64, BlobError>;
    /// Removes the blob; a missing one is not an error.
    async fn delete(&self, key: &BlobKey) -> Result<(), BlobError>;
    /// Every stored blob with when it was stored, sorted by key, for reconciliation.
    async fn list(&self) -> Result<Vec<BlobEntry>, BlobError>;
}

#[cfg(test)]
pub(crate) mod conformance;
