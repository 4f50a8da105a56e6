//! The agent's Prometheus metrics and the small HTTP server that exposes
//! them (`/metrics`), with `/healthz` and `/readyz` for the DaemonSet's
//! probes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use tokio_util::sync::CancellationToken;

use crate::spool::DropReason;

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Complete spool entries seen.
    pub captured: IntCounter,
    /// Cores delivered (their Coredump is Stored).
    pub uploaded: IntCounter,
    dropped: IntCounterVec,
    pub spool_bytes: IntGauge,
    pub spool_entries: IntGauge,
    /// Delivery attempts that failed and will be retried.
    pub delivery_retries: IntCounter,
    /// /readyz needs both: the pod index synced and optout.json written, and
    /// the pattern held (see [`Metrics::set_pattern_held`]).
    synced: Arc<AtomicBool>,
    pattern_held: Arc<AtomicBool>,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let captured = IntCounter::new(
            "coredump_agent_captured_total",
            "Cores the capture handler stored in the spool, as the agent found them.",
        )?;
        let uploaded = IntCounter::new(
            "coredump_agent_uploaded_total",
            "Cores delivered to the server (their Coredump is Stored).",
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "coredump_agent_dropped_total",
                "Crashes whose core was not kept or not delivered, by reason.",
            ),
            &["reason"],
        )?;
        let spool_bytes = IntGauge::new(
            "coredump_agent_spool_bytes",
            "Disk used by the spool's cores, including ones being written.",
        )?;
        let spool_entries = IntGauge::new(
            "coredump_agent_spool_entries",
            "Cores in the spool waiting for delivery.",
        )?;
        let delivery_retries = IntCounter::new(
            "coredump_agent_delivery_retries_total",
            "Delivery attempts that failed transiently (server unreachable, 5xx) and will be retried.",
        )?;
        registry.register(Box::new(captured.clone()))?;
        registry.register(Box::new(uploaded.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(spool_bytes.clone()))?;
        registry.register(Box::new(spool_entries.clone()))?;
        registry.register(Box::new(delivery_retries.clone()))?;
        Ok(Self {
            registry,
            captured,
            uploaded,
            dropped,
            spool_bytes,
            spool_entries,
            delivery_retries,
            synced: Arc::new(AtomicBool::new(false)),
            pattern_held: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn dropped(&self, reason: DropReason) {
        self.dropped.with_label_values(&[reason.as_str()]).inc();
    }

    pub fn dropped_count(&self, reason: DropReason) -> u64 {
        self.dropped.with_label_values(&[reason.as_str()]).get()
    }

    /// The pod index is synced and `optout.json` written.
    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::Relaxed);
    }

    /// Our pattern is installed, or this agent stands by to take it over
    /// from the one that holds it (a rolling update), or it is not ours to
    /// install (`--no-install`).
    pub fn set_pattern_held(&self) {
        self.pattern_held.store(true, Ordering::Relaxed);
    }

    /// What /readyz still waits for; None when ready.
    pub fn not_ready(&self) -> Option<&'static str> {
        if !self.synced.load(Ordering::Relaxed) {
            Some("pod index not synced yet\n")
        } else if !self.pattern_held.load(Ordering::Relaxed) {
            Some("core_pattern not installed yet\n")
        } else {
            None
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

async fn metrics(State(m): State<Metrics>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        m.render(),
    )
}

async fn readyz(State(m): State<Metrics>) -> impl IntoResponse {
    match m.not_ready() {
        None => (StatusCode::OK, "ok\n"),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// Serves until `cancel`; plain HTTP (the metrics hold no secrets).
pub async fn serve(
    listener: tokio::net::TcpListener,
    m: Metrics,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(m);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

/// Binds early so a taken port fails the start, not a background task.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_documented_names() {
        let m = Metrics::new().unwrap();
        m.captured.inc();
        m.dropped(DropReason::RateLimited);
        m.dropped(DropReason::RateLimited);
        m.spool_bytes.set(4096);
        let text = m.render();
        assert!(text.contains("coredump_agent_captured_total 1"), "{text}");
        assert!(text.contains("coredump_agent_uploaded_total 0"), "{text}");
        assert!(
            text.contains("coredump_agent_dropped_total{reason=\"RateLimited\"} 2"),
            "{text}"
        );
        assert!(text.contains("coredump_agent_spool_bytes 4096"), "{text}");
        assert_eq!(m.dropped_count(DropReason::RateLimited), 2);
    }
}
