//! Prometheus metrics: requests by verb, resource and code with latency, and objects stored.

use std::sync::Arc;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::store::Store;

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    objects: IntGaugeVec,
    store: Arc<Store>,
    resources: Vec<&'static str>,
}

impl Metrics {
    pub fn new(store: Arc<Store>, resources: Vec<&'static str>) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "coredump_apiserver_requests_total",
                "Requests by verb, resource, subresource and HTTP code.",
            ),
            &["verb", "resource", "subresource", "code"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "coredump_apiserver_request_duration_seconds",
                "Time to answer a request (for watches and downloads: until the response starts).",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ]),
            &["verb", "resource", "subresource"],
        )?;
        let objects = IntGaugeVec::new(
            Opts::new("coredump_apiserver_objects", "Objects stored, by resource."),
            &["resource"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(objects.clone()))?;
        Ok(Self {
            registry,
            requests,
            latency,
            objects,
            store,
            resources,
        })
    }

    pub fn observe(&self, verb: &str, resource: &str, subresource: &str, code: u16, seconds: f64) {
        self.requests
            .with_label_values(&[verb, resource, subresource, &code.to_string()])
            .inc();
        self.latency
            .with_label_values(&[verb, resource, subresource])
            .observe(seconds);
    }

    /// The text exposition, with object counts read at scrape time.
    pub fn render(&self) -> String {
        for r in &self.resources {
            let n = i64::try_from(self.store.count(r)).unwrap_or(i64::MAX);
            self.objects.with_label_values(&[r]).set(n);
        }
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
