//! The `upload` and `download` subresources of coredumps: streamed with flat memory.
//!
//! Upload (PUT, zstd body as the node agent compressed it): streamed into a blob writer
//! (invisible until committed) while a blocking thread decompresses the same chunks to
//! check the declared `storedSize`, raw `size` and `sha256`; any mismatch is a 422 and the
//! writer is aborted, so nothing is kept. Only then is the blob committed (never over a
//! stored one) and the Coredump marked `Stored`.
//!
//! Download (GET): the raw core, decompressed on the fly, or with `?compressed=true` the
//! stored zstd bytes. `Range: bytes=…` or `?offset=&length=` (for `kubectl get --raw`, which
//! cannot send headers) fetch a piece, so cores larger than one request window of the
//! aggregator can be fetched in several requests; the stored bytes of a piece are one
//! ranged read of the blob store (ranged GETs on object storage).

use std::io::{Read, Write};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::Response;
use futures::StreamExt;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::negotiate;
use super::negotiate::json_response;
use super::query::Query;
use super::AppState;
use crate::admission::{blob_key, mark_stored};
use crate::blobs::{BlobKey, BlobWriter, ByteStream};
use crate::error::ApiError;
use crate::registry::{phase_of, str_at, Ctx, Kind};
use crate::reqinfo::RequestInfo;
use crate::store::Key;
use coredump_openapi::types::parse_bytes;
use coredump_openapi::CoredumpPhase;

/// Chunks in flight between the network and the disk: bounds memory per transfer.
const CHANNEL_DEPTH: usize = 8;
const CHUNK: usize = 256 * 1024;

pub async fn handle(
    state: &AppState,
    kind: &Arc<dyn Kind>,
    ns: &str,
    info: &RequestInfo,
    q: &Query,
    req: Request,
    ctx: &Ctx,
) -> Result<Response, ApiError> {
    let name = info.path_name.as_deref().unwrap_or_default();
    let (download, expected) = match info.subresource.as_deref() {
        Some("download") => (true, Method::GET),
        _ => (false, Method::PUT),
    };
    if req.method() != expected && !(download && req.method() == Method::HEAD) {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource: use {expected}"
        )));
    }
    if !download && ctx.dry_run {
        // An upload is the core itself: there is nothing to simulate, and a dry run
        // must change nothing. Refused before the body is read.
        return Err(ApiError::bad_request(
            "dryRun is not supported for the upload subresource",
        ));
    }
    let obj = state.registry.get(&**kind, ns, name).await?;
    if download {
        download_core(state, &obj, q, req.headers()).await
    } else {
        upload_core(state, kind, ns, name, obj, req).await
    }
}

fn spec_bytes(obj: &Value, field: &str) -> Result<u64, ApiError> {
    str_at(obj, &format!("/spec/{field}"))
        .and_then(|q| parse_bytes(&q).ok())
        .ok_or_else(|| ApiError::internal(format!("stored coredump has no valid spec.{field}")))
}

/// What the upload checker found wrong, as a 422.
fn mismatch(name: &str, field: &str, message: String) -> ApiError {
    ApiError::invalid(
        crate::error::Target {
            group: coredump_openapi::GROUP,
            resource: "coredumps",
            name,
        },
        "Coredump",
        vec![crate::error::Cause {
            reason: "FieldValueInvalid".into(),
            message,
            field: field.into(),
        }],
    )
}

/// Counts and hashes what the zstd decoder produces.
struct RawCheck {
    hasher: Sha256,
    count: u64,
    limit: u64,
}

impl Write for RawCheck {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.count += buf.len() as u64;
        if self.count > self.limit {
            return Err(std::io::Error::other("more raw bytes than spec.size"));
        }
        self.hasher.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn upload_core(
    state: &AppState,
    kind: &Arc<dyn Kind>,
    ns: &str,
    name: &str,
    obj: Value,
    req: Request,
) -> Result<Response, ApiError> {
    let key = blob_key(&obj).ok_or_else(|| ApiError::internal("coredump without uid"))?;
    // One upload per core at a time, refused before its body is read; the guard is
    // held until the object says Stored (or the blob is gone again). See `uploads`.
    let Some(_guard) = state.uploads.try_begin(&key.to_string()) else {
        return Err(ApiError::new(
            409,
            "Conflict",
            format!(
                "coredumps.coredump.io \"{name}\": an upload of this core is already in progress"
            ),
        ));
    };
    // Read again under the guard: an upload that finished meanwhile made it Stored.
    let obj = state.registry.get(&**kind, ns, name).await?;
    if blob_key(&obj).as_ref() != Some(&key) {
        return Err(ApiError::new(
            409,
            "Conflict",
            format!("coredumps.coredump.io \"{name}\" was replaced during the upload"),
        ));
    }
    let phase = str_at(&obj, "/status/phase").unwrap_or_default();
    if phase_of(&obj) != Some(CoredumpPhase::Pending) {
        return Err(ApiError::new(
            409,
            "Conflict",
            format!("coredumps.coredump.io \"{name}\" is {phase}, not Pending: its core is not accepted"),
        ));
    }
    let stored_size = spec_bytes(&obj, "storedSize")?;
    let raw_size = spec_bytes(&obj, "size")?;
    let sha = str_at(&obj, "/spec/sha256").unwrap_or_default();
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len != stored_size {
            return Err(mismatch(name, "spec.storedSize", format!("Invalid value: the body has {len} bytes, spec.storedSize declares {stored_size}")));
        }
    }
    let mut writer = state.blobs.create(&key).await?;
    let (tx, mut rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let obj_name = name.to_string();
    // Decompression and hashing (CPU) run on a blocking thread, fed chunk by chunk while
    // the same chunks go to the blob writer here.
    let checker = tokio::task::spawn_blocking(move || -> Result<(), ApiError> {
        let mut decoder = zstd::stream::write::Decoder::new(RawCheck {
            hasher: Sha256::new(),
            count: 0,
            limit: raw_size,
        })
        .map_err(|e| ApiError::internal(format!("zstd: {e}")))?;
        while let Some(chunk) = rx.blocking_recv() {
            decoder.write_all(&chunk).map_err(|e| {
                mismatch(
                    &obj_name,
                    "spec.size",
                    format!(
                        "Invalid value: the body does not decompress to the declared core: {e}"
                    ),
                )
            })?;
        }
        decoder.flush().map_err(|e| {
            mismatch(
                &obj_name,
                "spec.size",
                format!("Invalid value: the body is not a complete zstd stream: {e}"),
            )
        })?;
        let raw = decoder.into_inner();
        if raw.count != raw_size {
            return Err(mismatch(
                &obj_name,
                "spec.size",
                format!(
                    "Invalid value: the core has {} bytes, spec.size declares {raw_size}",
                    raw.count
                ),
            ));
        }
        let got = hex::encode(raw.hasher.finalize());
        if got != sha {
            return Err(mismatch(
                &obj_name,
                "spec.sha256",
                format!("Invalid value: the core's sha256 is {got}"),
            ));
        }
        Ok(())
    });
    let written = feed(req, stored_size, name, &tx, &mut *writer).await;
    // Dropping the sender ends the checker's loop: on a short or broken body it sees an
    // incomplete stream and fails; only a complete, matching core is committed.
    drop(tx);
    let checked = checker
        .await
        .map_err(|e| ApiError::internal(format!("upload task: {e}")))
        .and_then(|r| r);
    let result = match (written, checked) {
        (Err(e), _) | (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(())) => Ok(()),
    };
    if let Err(e) = result {
        writer.abort().await;
        return Err(e);
    }
    writer.commit(stored_size).await?;

    let store_key = Key::new(kind.info().plural, ns, name);
    let uid = key.uid.clone();
    let result = state
        .registry
        .commit(|tx| mark_stored(tx, &store_key, &uid))
        .await;
    match result {
        Ok((obj, _)) => json_response(
            StatusCode::OK,
            &negotiate::render_object(
                &**kind,
                negotiate::Output::Json,
                crate::registry::with_type_meta(&**kind, obj),
            ),
        ),
        Err(e) => {
            // Deleted meanwhile: the file must not outlive its object. It is ours to
            // remove: commit never replaces, and the guard kept other uploads out.
            if let Err(err) = state.blobs.delete(&key).await {
                tracing::warn!(%key, error = %err, "removing the core of a coredump gone during its upload");
            }
            Err(e)
        }
    }
}

/// Streams the request body into the blob writer and the checker, refusing more bytes
/// than `spec.storedSize` (the body's own count is checked once it ends).
async fn feed(
    req: Request,
    stored_size: u64,
    name: &str,
    tx: &mpsc::Sender<Bytes>,
    writer: &mut dyn BlobWriter,
) -> Result<(), ApiError> {
    let mut body = req.into_body().into_data_stream();
    let mut compressed = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the upload: {e}")))?;
        compressed += chunk.len() as u64;
        if compressed > stored_size {
            return Err(mismatch(
                name,
                "spec.storedSize",
                format!(
                    "Invalid value: the body is larger than spec.storedSize ({stored_size} bytes)"
                ),
            ));
        }
        if tx.send(chunk.clone()).await.is_err() {
            return Ok(()); // the checker already failed; its error is the answer
        }
        writer.write(chunk).await?;
    }
    if compressed != stored_size {
        return Err(mismatch(name, "spec.storedSize", format!("Invalid value: the body has {compressed} bytes, spec.storedSize declares {stored_size}")));
    }
    Ok(())
}

/// A byte range `[start, start+len)` of a body of `total` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: u64,
    len: u64,
}

fn parse_range(headers: &HeaderMap, q: &Query, total: u64) -> Result<Option<Span>, ApiError> {
    let unsatisfiable = || {
        ApiError::new(
            416,
            "RequestedRangeNotSatisfiable",
            format!("the range is outside the {total} bytes of the core"),
        )
    };
    let (start, end) = if let Some(r) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        let spec = r
            .strip_prefix("bytes=")
            .filter(|s| !s.contains(','))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "unsupported Range {r:?}: use one bytes=START-END range"
                ))
            })?;
        let (a, b) = spec
            .split_once('-')
            .ok_or_else(|| ApiError::bad_request(format!("malformed Range {r:?}")))?;
        let num = |s: &str| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("malformed Range {r:?}")))
        };
        match (a.trim().is_empty(), b.trim().is_empty()) {
            (true, false) => {
                let n = num(b)?.min(total);
                (total - n, total)
            }
            (false, true) => (num(a)?, total),
            (false, false) => (num(a)?, num(b)?.saturating_add(1).min(total)),
            (true, true) => return Err(ApiError::bad_request(format!("malformed Range {r:?}"))),
        }
    } else if q.contains_key("offset") || q.contains_key("length") {
        let num = |k: &str| -> Result<Option<u64>, ApiError> {
            q.get(k)
                .map(|v| {
                    v.parse::<u64>().map_err(|_| {
                        ApiError::bad_request(format!("{k} must be a non-negative integer"))
                    })
                })
                .transpose()
        };
        let start = num("offset")?.unwrap_or(0);
        let end = match num("length")? {
            Some(l) => start.saturating_add(l).min(total),
            None => total,
        };
        (start, end)
    } else {
        return Ok(None);
    };
    if start >= total || end <= start {
        return Err(unsatisfiable());
    }
    Ok(Some(Span {
        start,
        len: end - start,
    }))
}

async fn download_core(
    state: &AppState,
    obj: &Value,
    q: &Query,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let name = str_at(obj, "/metadata/name").unwrap_or_default();
    let phase = str_at(obj, "/status/phase").unwrap_or_default();
    if phase_of(obj) != Some(CoredumpPhase::Stored) {
        return Err(ApiError::new(
            409,
            "Conflict",
            format!(
                "coredumps.coredump.io \"{name}\" is {phase}: there is no stored core to download"
            ),
        ));
    }
    let key = blob_key(obj).ok_or_else(|| ApiError::internal("coredump without uid"))?;
    let compressed = q.flag("compressed")?;
    let total = if compressed {
        state.blobs.size(&key).await?
    } else {
        spec_bytes(obj, "size")?
    };
    let range = parse_range(headers, q, total)?;
    let span = range.unwrap_or(Span {
        start: 0,
        len: total,
    });
    let stream = if compressed {
        let piece = state
            .blobs
            .read(&key, Some(span.start..span.start + span.len))
            .await?;
        exactly(piece, span.len, key)
    } else {
        // zstd frames are not seekable: the raw bytes of a range come from decompressing
        // from the start (CPU, on a blocking thread; memory stays one chunk per stage).
        let whole = state.blobs.read(&key, None).await?;
        // Made here: the bridge needs the runtime's handle.
        let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(whole));
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(CHANNEL_DEPTH);
        tokio::task::spawn_blocking(move || decompress(reader, span, &key, tx));
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
    };
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let h = resp.headers_mut();
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    set(h, header::CONTENT_LENGTH, span.len.to_string());
    set(h, header::ACCEPT_RANGES, "bytes".into());
    let (ctype, file_name) = if compressed {
        ("application/zstd", format!("{name}.core.zst"))
    } else {
        ("application/octet-stream", format!("{name}.core"))
    };
    set(h, header::CONTENT_TYPE, ctype.into());
    set(
        h,
        header::CONTENT_DISPOSITION,
        format!("attachment; filename=\"{file_name}\""),
    );
    if range.is_some() {
        set(
            h,
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{total}", span.start, span.start + span.len - 1),
        );
    }
    if let Some(sha) = str_at(obj, "/spec/sha256") {
        set(h, header::HeaderName::from_static("x-coredump-sha256"), sha);
    }
    Ok(resp)
}

/// `stream`, failed at its end if it ended before `len` bytes (an error item aborts the
/// response, so the client sees a short body, not a silently wrong one).
fn exactly(stream: ByteStream, len: u64, key: BlobKey) -> ByteStream {
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = std::sync::Arc::clone(&sent);
    let check = futures::stream::once(async move {
        let sent = counted.load(std::sync::atomic::Ordering::Relaxed);
        if sent == len {
            None
        } else {
            tracing::error!(%key, sent, len, "a stored core ended early");
            Some(Err(std::io::Error::other(format!(
                "stored core ended after {sent} of {len} bytes"
            ))))
        }
    })
    .filter_map(std::future::ready);
    stream
        .inspect(move |c| {
            if let Ok(c) = c {
                sent.fetch_add(c.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        })
        .chain(check)
        .boxed()
}

/// Decompresses the stored core, skips to `span` and sends it in chunks; stops when the
/// client goes away. Runs on a blocking thread, reading the blob's async stream through a
/// bridge.
fn decompress(
    reader: impl Read,
    span: Span,
    key: &BlobKey,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let result = (|| -> std::io::Result<()> {
        let mut decoder = zstd::stream::read::Decoder::new(reader)?;
        // zstd frames are not seekable: skip by decompressing (CPU, no memory).
        std::io::copy(&mut (&mut decoder).take(span.start), &mut std::io::sink())?;
        let mut reader = decoder.take(span.len);
        let mut sent = 0u64;
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            sent += n as u64;
            if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                return Ok(()); // client gone
            }
        }
        if sent != span.len {
            return Err(std::io::Error::other(format!(
                "stored core ended after {sent} of {} bytes",
                span.len
            )));
        }
        Ok(())
    })();
    if let Err(e) = result {
        tracing::error!(%key, error = %e, "streaming a core");
        // An error item aborts the response, so the client sees a short body, not a
        // silently wrong one.
        let _ = tx.blocking_send(Err(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(h: Option<&str>, q: &[(&str, &str)], total: u64) -> Result<Option<Span>, ApiError> {
        let mut headers = HeaderMap::new();
        if let Some(h) = h {
            headers.insert(header::RANGE, HeaderValue::from_str(h).expect("header"));
        }
        let q = q
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_range(&headers, &q, total)
    }

    #[test]
    fn ranges_and_offsets() {
        assert_eq!(range(None, &[], 100).expect("none"), None);
        assert_eq!(
            range(Some("bytes=0-9"), &[], 100).expect("r"),
            Some(Span { start: 0, len: 10 })
        );
        assert_eq!(
            range(Some("bytes=90-"), &[], 100).expect("r"),
            Some(Span { start: 90, len: 10 })
        );
        assert_eq!(
            range(Some("bytes=-5"), &[], 100).expect("r"),
            Some(Span { start: 95, len: 5 })
        );
        assert_eq!(
            range(Some("bytes=50-500"), &[], 100).expect("r"),
            Some(Span { start: 50, len: 50 })
        );
        assert_eq!(
            range(None, &[("offset", "10"), ("length", "20")], 100).expect("q"),
            Some(Span { start: 10, len: 20 })
        );
        assert_eq!(
            range(None, &[("offset", "80")], 100).expect("q"),
            Some(Span { start: 80, len: 20 })
        );
        assert_eq!(
            range(Some("bytes=100-"), &[], 100).expect_err("416").code,
            416
        );
        assert_eq!(
            range(Some("bytes=0-1,5-6"), &[], 100)
                .expect_err("multi")
                .code,
            400
        );
        assert_eq!(
            range(None, &[("offset", "-1")], 100).expect_err("neg").code,
            400
        );
    }

    use proptest::prelude::*;

    proptest! {
        /// Any Range header or offset/length: no panic; a span is inside the core.
        #[test]
        fn any_range_is_inside_the_core_or_refused(
            header in proptest::option::of("(bytes=)?[0-9 -]{0,24}"),
            offset in proptest::option::of("[0-9-]{0,22}"),
            length in proptest::option::of("[0-9]{0,22}"),
            total in 0u64..u64::MAX,
        ) {
            let mut q = Vec::new();
            if let Some(o) = &offset { q.push(("offset", o.as_str())); }
            if let Some(l) = &length { q.push(("length", l.as_str())); }
            match range(header.as_deref(), &q, total) {
                Ok(Some(span)) => {
                    prop_assert!(span.len > 0);
                    prop_assert!(span.start.checked_add(span.len).is_some_and(|end| end <= total));
                }
                Ok(None) => prop_assert!(header.is_none() && q.is_empty()),
                Err(e) => prop_assert!(e.code == 400 || e.code == 416),
            }
        }
    }
}
