//! Request bodies that are not read to the end are drained, a bounded amount, after the
//! answer has gone out.
//!
//! A refusal sent before the body was read (401, 403, 409, 413, 422…) reaches a client
//! that sends without `Expect: 100-continue` (hyper's and Go's clients) only if the
//! connection stays open while the client is still sending: closing it with unread data
//! makes the kernel reset it, and a reset can discard the answer before the client read
//! it, so the client sees a broken pipe instead of the Status. Invariant: a body dropped
//! unfinished is read and discarded in the background for at most [`DRAIN_BYTES`] or
//! [`DRAIN_TIME`], whichever comes first; then the connection closes as before.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

/// Most bytes read and discarded after a refusal: enough for the answer to be read by
/// a client on any link, small next to what an upload sends.
pub const DRAIN_BYTES: u64 = 64 * 1024 * 1024;
/// Longest time spent draining one body.
pub const DRAIN_TIME: Duration = Duration::from_secs(10);

pub struct DrainOnDrop {
    inner: Option<Body>,
    finished: bool,
}

impl DrainOnDrop {
    pub fn wrap(body: Body) -> Body {
        Body::new(Self {
            inner: Some(body),
            finished: false,
        })
    }
}

impl HttpBody for DrainOnDrop {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.finished = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        if self.finished || body.is_end_stream() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(drain(body));
        }
    }
}

async fn drain(mut body: Body) {
    let read = async {
        let mut seen = 0u64;
        while seen < DRAIN_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => {
                    seen += frame.data_ref().map_or(0, |d| d.len() as u64);
                }
                Some(Err(_)) | None => return,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn an_unfinished_body_is_drained_in_the_background_up_to_the_bound() {
        let pulled = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&pulled);
        let chunks = futures::stream::iter(0..).map(move |_| {
            counter.fetch_add(1024 * 1024, Ordering::Relaxed);
            Ok::<_, std::io::Error>(Bytes::from(vec![0u8; 1024 * 1024]))
        });
        let mut body = DrainOnDrop::wrap(Body::from_stream(chunks));
        // A handler reads one chunk, then refuses and drops the rest.
        let first = body.frame().await.expect("frame").expect("ok");
        assert_eq!(first.data_ref().map(|d| d.len()), Some(1024 * 1024));
        drop(body);
        for _ in 0..200 {
            if pulled.load(Ordering::Relaxed) > DRAIN_BYTES {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let n = pulled.load(Ordering::Relaxed);
        assert!(n > DRAIN_BYTES, "drained {n} bytes");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            pulled.load(Ordering::Relaxed) <= DRAIN_BYTES + 2 * 1024 * 1024,
            "stops at the bound"
        );
    }

    use futures::StreamExt;
}
