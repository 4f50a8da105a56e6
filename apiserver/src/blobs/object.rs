//! The object-storage backend (S3 and S3-compatible servers, GCS, Azure Blob Storage)
//! through the `object_store` crate: `<prefix>/<namespace>/<name>_<uid>.zst`.
//!
//! - Uploads: a core that fits in one part ([`PART_SIZE`]) is one conditional PUT
//!   (`PutMode::Create`: S3's `If-None-Match: *`, GCS's `ifGenerationMatch=0`, Azure's
//!   `If-None-Match: *`), so it never replaces a stored object, atomically. A larger core
//!   is a multipart upload of fixed-size parts, at most [`PARTS_IN_FLIGHT`] in flight
//!   (memory per upload stays about `(PARTS_IN_FLIGHT + 1) * PART_SIZE` whatever the core's
//!   size); object_store cannot make the completion conditional, so the writer checks
//!   that no object is there just before completing (check-then-write: a concurrent
//!   writer of the same key could slip in between, which the one-upload-per-core guard of
//!   [`crate::uploads`] excludes within a server). An object appears only when the upload
//!   completes. A failed, aborted or dropped writer aborts its multipart upload; only a
//!   server killed mid-upload leaves parts behind, invisible to readers and listings: a
//!   bucket lifecycle rule (S3 `AbortIncompleteMultipartUpload`, GCS and Azure expire
//!   uncommitted parts/blocks on their own) removes them (see deploy/README.md).
//! - Reads are ranged GETs of at most [`READ_PIECE`] bytes each, one after another, so a
//!   slow client never holds one request open for a whole core.
//! - Credentials come only from the environment or workload identity (object_store's
//!   `from_env` builders and their credential chains); a URL with credentials is refused.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload,
    WriteMultipart,
};

use super::{BlobEntry, BlobError, BlobKey, BlobStore, BlobWriter, ByteStream};

/// Bytes per multipart part (S3's minimum is 5 MiB, its maximum count 10 000 parts: 80 GB).
pub const PART_SIZE: usize = 8 << 20;
/// Parts uploaded at once per core.
pub const PARTS_IN_FLIGHT: usize = 2;
/// Bytes per ranged GET of a download.
pub const READ_PIECE: u64 = 8 << 20;
/// Per request: a part's PUT or a piece's GET, including its body.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// What the server's `--object-store-*` flags say.
#[derive(Clone, Debug, Default)]
pub struct ObjectStoreConfig {
    /// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`.
    pub url: String,
    pub region: Option<String>,
    /// An S3-compatible server (or Azure/GCS emulator) instead of the cloud's own.
    pub endpoint: Option<String>,
    /// PEM bundle of CAs trusted in addition to the system's.
    pub ca_file: Option<std::path::PathBuf>,
    /// Plain HTTP to the endpoint; only for a loopback endpoint.
    pub allow_http: bool,
}

pub struct ObjectBlobs {
    store: Arc<dyn ObjectStore>,
    /// Empty or without a trailing `/`.
    prefix: String,
    /// For messages: `s3://bucket/prefix`.
    name: String,
}

fn config(message: impl Into<String>) -> BlobError {
    BlobError::Config(message.into())
}

fn backend(what: impl Into<String>) -> impl FnOnce(object_store::Error) -> BlobError {
    let what = what.into();
    move |source| BlobError::Backend { what, source }
}

fn is_loopback(endpoint: &url::Url) -> bool {
    match endpoint.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

impl ObjectBlobs {
    /// A store on `store` under `prefix` (e.g. object_store's in-memory store in tests).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, name: &str) -> Self {
        Self {
            store,
            prefix: prefix.trim_matches('/').to_string(),
            name: name.to_string(),
        }
    }

    /// The store the flags describe. Fails on a URL with credentials, an unknown scheme,
    /// `allow_http` with a non-loopback endpoint, an unreadable CA file.
    pub fn from_config(cfg: &ObjectStoreConfig) -> Result<Self, BlobError> {
        let url = url::Url::parse(&cfg.url)
            .map_err(|e| config(format!("--object-store-url {:?}: {e}", cfg.url)))?;
        if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
            return Err(config(
                "--object-store-url must not carry credentials (user, password or query such \
                 as a SAS token): they come from the environment or workload identity",
            ));
        }
        let bucket = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| config("--object-store-url needs a bucket: s3://BUCKET/PREFIX"))?
            .to_string();
        let prefix = url.path().trim_matches('/').to_string();
        if prefix.split('/').any(|p| p == "." || p == "..") {
            return Err(config(
                "--object-store-url: the prefix may not contain . or ..",
            ));
        }
        let endpoint = cfg
            .endpoint
            .as_deref()
            .map(|e| {
                url::Url::parse(e)
                    .map_err(|err| config(format!("--object-store-endpoint {e:?}: {err}")))
            })
            .transpose()?;
        if let Some(e) = &endpoint {
            if !e.username().is_empty() || e.password().is_some() || e.query().is_some() {
                return Err(config("--object-store-endpoint must not carry credentials"));
            }
        }
        if cfg.allow_http && !endpoint.as_ref().is_some_and(is_loopback) {
            return Err(config(
                "--object-store-allow-http is for a loopback --object-store-endpoint only",
            ));
        }
        let mut options = object_store::ClientOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_allow_http(cfg.allow_http);
        if let Some(path) = &cfg.ca_file {
            let pem = std::fs::read(path).map_err(|source| BlobError::Io {
                what: format!("--object-store-ca-file {}", path.display()),
                source,
            })?;
            let certs = object_store::Certificate::from_pem_bundle(&pem).map_err(backend(
                format!("--object-store-ca-file {}", path.display()),
            ))?;
            if certs.is_empty() {
                return Err(config(format!(
                    "--object-store-ca-file {}: no certificate in it",
                    path.display()
                )));
            }
            for c in certs {
                options = options.with_root_certificate(c);
            }
        }
        let endpoint = endpoint.map(|e| e.as_str().trim_end_matches('/').to_string());
        let store: Arc<dyn ObjectStore> = match url.scheme() {
            "s3" => {
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(&bucket)
                    .with_client_options(options)
                    .with_allow_http(cfg.allow_http);
                if let Some(r) = &cfg.region {
                    b = b.with_region(r);
                }
                if let Some(e) = endpoint {
                    b = b.with_endpoint(e);
                }
                Arc::new(b.build().map_err(backend("configuring S3"))?)
            }
            "gs" => {
                if cfg.region.is_some() {
                    return Err(config("--object-store-region is for s3:// only"));
                }
                let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(&bucket)
                    .with_client_options(options);
                if let Some(e) = &endpoint {
                    b = b.with_base_url(e);
                }
                Arc::new(b.build().map_err(backend("configuring GCS"))?)
            }
            "az" | "azure" => {
                if cfg.region.is_some() {
                    return Err(config("--object-store-region is for s3:// only"));
                }
                let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(&bucket)
                    .with_client_options(options)
                    .with_allow_http(cfg.allow_http);
                if let Some(e) = endpoint {
                    b = b.with_endpoint(e);
                }
                Arc::new(
                    b.build()
                        .map_err(backend("configuring Azure Blob Storage"))?,
                )
            }
            other => {
                return Err(config(format!(
                    "--object-store-url: unknown scheme {other:?} (s3://, gs://, az://)"
                )))
            }
        };
        let name = format!("{}://{bucket}/{prefix}", url.scheme());
        Ok(Self::new(store, &prefix, &name))
    }

    fn path(&self, key: &BlobKey) -> Result<Path, BlobError> {
        let rel = key.relative()?;
        Ok(if self.prefix.is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{}/{rel}", self.prefix))
        })
    }

    fn not_found(&self, key: &BlobKey) -> impl FnOnce(object_store::Error) -> BlobError {
        let (key, name) = (key.to_string(), self.name.clone());
        move |e| match e {
            object_store::Error::NotFound { .. } => BlobError::NotFound(key),
            source => BlobError::Backend {
                what: format!("reading {key} in {name}"),
                source,
            },
        }
    }

    async fn head(&self, key: &BlobKey) -> Result<u64, BlobError> {
        let path = self.path(key)?;
        let got = self
            .store
            .get_opts(&path, GetOptions::new().with_head(true))
            .await
            .map_err(self.not_found(key))?;
        Ok(got.meta.size)
    }
}

impl std::fmt::Display for ObjectBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

enum State {
    /// Nothing sent yet: the first part's bytes, held until they fill a part or commit.
    Buffering(Vec<Bytes>, usize),
    Multipart(WriteMultipart),
    Done,
}

struct ObjectWriter {
    store: Arc<dyn ObjectStore>,
    path: Path,
    key: String,
    written: u64,
    state: State,
}

impl ObjectWriter {
    async fn start_multipart(&mut self, first: Vec<Bytes>) -> Result<(), BlobError> {
        let upload = self
            .store
            .put_multipart_opts(&self.path, PutMultipartOptions::default())
            .await
            .map_err(backend(format!("starting the upload of {}", self.key)))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        for b in first {
            w.put(b);
        }
        self.state = State::Multipart(w);
        Ok(())
    }
}

/// Whether an object is at `path` (`ObjectWriter` is not `Sync`: these take its parts).
async fn exists(store: &Arc<dyn ObjectStore>, path: &Path, key: &str) -> Result<bool, BlobError> {
    match store
        .get_opts(path, GetOptions::new().with_head(true))
        .await
    {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(backend(format!("checking {key}"))(e)),
    }
}

/// One conditional PUT of a core that fits in a part.
async fn put_whole(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    key: &str,
    parts: Vec<Bytes>,
) -> Result<(), BlobError> {
    let payload: PutPayload = parts.into_iter().collect();
    let create = PutOptions::from(PutMode::Create);
    match store.put_opts(path, payload.clone(), create).await {
        Ok(_) => Ok(()),
        Err(object_store::Error::AlreadyExists { .. }) => Err(BlobError::Exists(key.to_string())),
        // A backend without conditional writes: check, then write.
        Err(object_store::Error::NotImplemented { .. }) => {
            if exists(store, path, key).await? {
                return Err(BlobError::Exists(key.to_string()));
            }
            store
                .put_opts(path, payload, PutOptions::default())
                .await
                .map(|_| ())
                .map_err(backend(format!("storing {key}")))
        }
        Err(e) => Err(backend(format!("storing {key}"))(e)),
    }
}

async fn abort_upload(mut w: WriteMultipart, key: &str) {
    // Parts in flight finish first: a part that lands after the abort can recreate the
    // upload on some servers (S3 itself says aborting may need repeating while parts are
    // uploading). A failed part ends one wait; the others are waited for again.
    for _ in 0..=PARTS_IN_FLIGHT {
        if w.wait_for_capacity(1).await.is_ok() {
            break;
        }
    }
    if let Err(e) = w.abort().await {
        tracing::warn!(%key, error = %e, "aborting a multipart upload");
    }
}

#[async_trait]
impl BlobWriter for ObjectWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), BlobError> {
        self.written += chunk.len() as u64;
        match &mut self.state {
            State::Buffering(parts, len) => {
                *len += chunk.len();
                parts.push(chunk);
                if *len >= PART_SIZE {
                    let first = std::mem::take(parts);
                    self.start_multipart(first).await?;
                }
                Ok(())
            }
            State::Multipart(w) => {
                // Back-pressure: no more than PARTS_IN_FLIGHT parts uploading, one filling.
                w.wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(backend(format!("uploading {}", self.key)))?;
                w.put(chunk);
                Ok(())
            }
            State::Done => Err(config("blob already committed")),
        }
    }

    async fn commit(mut self: Box<Self>, len: u64) -> Result<(), BlobError> {
        let state = std::mem::replace(&mut self.state, State::Done);
        if self.written != len {
            if let State::Multipart(w) = state {
                abort_upload(w, &self.key).await;
            }
            return Err(BlobError::Length {
                key: self.key.clone(),
                written: self.written,
                expected: len,
            });
        }
        match state {
            State::Buffering(parts, _) => {
                put_whole(&self.store, &self.path, &self.key, parts).await
            }
            State::Multipart(mut w) => {
                // Every part up, then check-then-complete (see the module docs).
                if let Err(e) = w.wait_for_capacity(1).await {
                    abort_upload(w, &self.key).await;
                    return Err(backend(format!("uploading {}", self.key))(e));
                }
                match exists(&self.store, &self.path, &self.key).await {
                    Ok(false) => {}
                    Ok(true) => {
                        abort_upload(w, &self.key).await;
                        return Err(BlobError::Exists(self.key.clone()));
                    }
                    Err(e) => {
                        abort_upload(w, &self.key).await;
                        return Err(e);
                    }
                }
                // finish() aborts the upload itself when it fails.
                w.finish()
                    .await
                    .map(|_| ())
                    .map_err(backend(format!("completing the upload of {}", self.key)))
            }
            State::Done => Err(config("blob already committed")),
        }
    }

    async fn abort(mut self: Box<Self>) {
        if let State::Multipart(w) = std::mem::replace(&mut self.state, State::Done) {
            abort_upload(w, &self.key).await;
        }
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        // Dropped mid-upload (e.g. the client went away): abort it in the background.
        if let State::Multipart(w) = std::mem::replace(&mut self.state, State::Done) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let key = std::mem::take(&mut self.key);
                rt.spawn(async move { abort_upload(w, &key).await });
            }
        }
    }
}

#[async_trait]
impl BlobStore for ObjectBlobs {
    async fn create(&self, key: &BlobKey) -> Result<Box<dyn BlobWriter>, BlobError> {
        Ok(Box::new(ObjectWriter {
            store: Arc::clone(&self.store),
            path: self.path(key)?,
            key: key.to_string(),
            written: 0,
            state: State::Buffering(Vec::new(), 0),
        }))
    }

    async fn read(
        &self,
        key: &BlobKey,
        range: Option<Range<u64>>,
    ) -> Result<ByteStream, BlobError> {
        let path = self.path(key)?;
        let size = self.head(key).await?;
        let range = range.unwrap_or(0..size);
        let (start, end) = (range.start.min(size), range.end.min(size));
        let pieces = (start..end)
            .step_by(usize::try_from(READ_PIECE).unwrap_or(usize::MAX))
            .map(move |s| s..(s + READ_PIECE).min(end));
        let store = Arc::clone(&self.store);
        let what = key.to_string();
        let stream = futures::stream::iter(pieces)
            .then(move |piece| {
                let (store, path, what) = (Arc::clone(&store), path.clone(), what.clone());
                async move {
                    let got = store
                        .get_opts(
                            &path,
                            GetOptions::new().with_range(Some(GetRange::Bounded(piece))),
                        )
                        .await
                        .map_err(|e| std::io::Error::other(format!("reading {what}: {e}")))?;
                    Ok::<_, std::io::Error>(got.into_stream().map_err(std::io::Error::other))
                }
            })
            .try_flatten();
        Ok(stream.boxed())
    }

    async fn size(&self, key: &BlobKey) -> Result<u64, BlobError> {
        self.head(key).await
    }

    async fn delete(&self, key: &BlobKey) -> Result<(), BlobError> {
        let path = self.path(key)?;
        let mut done = self
            .store
            .delete_stream(futures::stream::once(async move { Ok(path) }).boxed());
        while let Some(r) = done.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(backend(format!("deleting {key} in {}", self.name))(e)),
            }
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<BlobEntry>, BlobError> {
        let prefix = (!self.prefix.is_empty()).then(|| Path::from(self.prefix.as_str()));
        let mut objects = self.store.list(prefix.as_ref());
        let mut out = Vec::new();
        while let Some(meta) = objects.next().await {
            let meta = meta.map_err(backend(format!("listing {}", self.name)))?;
            let location = meta.location.as_ref();
            let rel = if self.prefix.is_empty() {
                location
            } else {
                match location
                    .strip_prefix(self.prefix.as_str())
                    .and_then(|r| r.strip_prefix('/'))
                {
                    Some(r) => r,
                    None => continue,
                }
            };
            // Only `<namespace>/<file>`: anything else under the prefix is not ours.
            let Some((ns, file)) = rel.split_once('/') else {
                continue;
            };
            if let Some(key) = BlobKey::parse(ns, file) {
                out.push(BlobEntry {
                    key,
                    modified: SystemTime::from(meta.last_modified),
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobs::conformance;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn conformance_suite_on_object_stores_in_memory_store() {
        let mem = Arc::new(InMemory::new());
        let blobs = ObjectBlobs::new(mem.clone(), "cores/", "memory://cores");
        // Big enough for a multipart upload of three parts.
        conformance::run_with(&blobs, 2 * PART_SIZE + 12345).await;
        // No object outside the layout was made (nothing of the aborted writers).
        let all: Vec<_> = mem.list(None).try_collect().await.expect("list");
        assert!(all.is_empty(), "{all:?}");
    }

    #[tokio::test]
    async fn keys_are_prefixed_and_foreign_objects_are_not_listed() {
        let mem = Arc::new(InMemory::new());
        let blobs = ObjectBlobs::new(mem.clone(), "p/q", "memory://p/q");
        let k = conformance::key("a");
        let mut w = blobs.create(&k).await.expect("create");
        w.write(Bytes::from_static(b"x")).await.expect("write");
        w.commit(1).await.expect("commit");
        let got = mem
            .get_opts(
                &Path::from(format!("p/q/ns/a_{}.zst", k.uid)),
                GetOptions::new(),
            )
            .await
            .expect("the object at <prefix>/<namespace>/<name>_<uid>.zst");
        assert_eq!(got.bytes().await.expect("bytes").as_ref(), b"x");
        for other in [
            "p/q/README",
            "p/q/ns/notes.txt",
            "p/qr/ns/a_b.zst",
            "elsewhere/ns/a_b.zst",
        ] {
            mem.put_opts(
                &Path::from(other),
                PutPayload::from_static(b"y"),
                PutOptions::default(),
            )
            .await
            .expect("put");
        }
        assert_eq!(
            blobs
                .list()
                .await
                .expect("list")
                .into_iter()
                .map(|e| e.key)
                .collect::<Vec<_>>(),
            [k]
        );
    }

    #[test]
    fn configuration_refuses_credentials_in_urls_and_http_off_loopback() {
        let cfg = |url: &str| ObjectStoreConfig {
            url: url.into(),
            region: Some("us-east-1".into()),
            ..Default::default()
        };
        for bad in [
            "s3://AKIA:secret@bucket/p",
            "s3://user@bucket/p",
            "az://container/p?sv=2020&sig=abc",
            "ftp://bucket/p",
            "s3:///p",
        ] {
            assert!(
                matches!(
                    ObjectBlobs::from_config(&cfg(bad)),
                    Err(BlobError::Config(_))
                ),
                "{bad}"
            );
        }
        let http = |endpoint: &str| ObjectStoreConfig {
            endpoint: Some(endpoint.into()),
            allow_http: true,
            ..cfg("s3://bucket/p")
        };
        assert!(matches!(
            ObjectBlobs::from_config(&http("http://s3.example.com")),
            Err(BlobError::Config(_))
        ));
        let ok = ObjectBlobs::from_config(&http("http://127.0.0.1:9000")).expect("loopback");
        assert_eq!(ok.to_string(), "s3://bucket/p");
        assert_eq!(
            ok.path(&conformance::key("a")).expect("path").as_ref(),
            "p/ns/a_0b6f3c6e-1111-4222-8333-944455556666.zst"
        );
    }

    /// Against a real S3-compatible server when the environment names one (the
    /// integration harness's versitygw): `COREDUMP_TEST_S3_URL` (s3://bucket/prefix),
    /// `COREDUMP_TEST_S3_ENDPOINT`, and the usual `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`. Skipped otherwise.
    #[tokio::test]
    async fn conformance_suite_on_s3_from_the_environment() {
        let Ok(url) = std::env::var("COREDUMP_TEST_S3_URL") else {
            eprintln!("COREDUMP_TEST_S3_URL unset: skipped");
            return;
        };
        let endpoint = std::env::var("COREDUMP_TEST_S3_ENDPOINT").ok();
        let allow_http = endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        let blobs = ObjectBlobs::from_config(&ObjectStoreConfig {
            url: format!(
                "{}/conformance-{}",
                url.trim_end_matches('/'),
                uuid::Uuid::new_v4()
            ),
            endpoint,
            allow_http,
            ..Default::default()
        })
        .expect("config");
        conformance::run_with(&blobs, 2 * PART_SIZE + 12345).await;
        // A dropped writer aborts its upload in the background: let it finish before the
        // test's runtime goes (the server's lives on).
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
