//! Prometheus metrics: requests by verb, resource and code with latency, and objects stored.
//!
//! Invariant: every label value comes from a closed set (the served resources and their
//! subresources, Kubernetes verbs, HTTP methods, status codes); whatever a client makes up
//! is counted as `other`, so no request, authenticated or not, adds a series.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::reqinfo::RequestInfo;
use crate::store::MetadataStore;

/// The label value for anything outside a closed set.
pub const OTHER: &str = "other";

const VERBS: [&str; 8] = [
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];
/// Non-resource requests carry the lower-cased HTTP method as their verb.
const METHODS: [&str; 7] = ["get", "head", "post", "put", "patch", "delete", "options"];
const SUBRESOURCES: [&str; 3] = ["status", "download", "upload"];
/// Distinct (namespace, crash group) series kept; crashes of further ones count as
/// `other`/`other`. Groups are made by crashing programs, so their number is not ours to
/// bound otherwise.
pub const MAX_CRASH_SERIES: usize = 1000;

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    objects: IntGaugeVec,
    crashes: IntCounterVec,
    crash_series: Mutex<HashSet<(String, String)>>,
    store: Arc<dyn MetadataStore>,
    resources: Vec<&'static str>,
}

impl Metrics {
    pub fn new(
        store: Arc<dyn MetadataStore>,
        resources: Vec<&'static str>,
    ) -> Result<Self, prometheus::Error> {
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
        let crashes = IntCounterVec::new(
            Opts::new(
                "coredump_apiserver_crashes_total",
                "Coredumps created, by namespace and crash group (at most 1000 series; \
                 the rest as other/other).",
            ),
            &["namespace", "group"],
        )?;
        registry.register(Box::new(objects.clone()))?;
        registry.register(Box::new(crashes.clone()))?;
        for c in store.collectors() {
            registry.register(c)?;
        }
        Ok(Self {
            registry,
            requests,
            latency,
            objects,
            crashes,
            crash_series: Mutex::new(HashSet::new()),
            store,
            resources,
        })
    }

    /// The bounded labels of a request: (verb, resource, subresource).
    pub fn labels<'a>(&self, info: &'a RequestInfo) -> [&'a str; 3] {
        let closed = |v: &'a str, set: &[&str]| if set.contains(&v) { v } else { OTHER };
        if !info.is_resource {
            return [closed(info.verb.as_str(), &METHODS), "", ""];
        }
        let resource = if self.resources.contains(&info.resource.as_str()) {
            info.resource.as_str()
        } else {
            OTHER
        };
        let sub = info
            .subresource
            .as_deref()
            .map_or("", |s| closed(s, &SUBRESOURCES));
        [closed(info.verb.as_str(), &VERBS), resource, sub]
    }

    pub fn observe(&self, info: &RequestInfo, code: u16, seconds: f64) {
        let [verb, resource, subresource] = self.labels(info);
        let code = if (100..600).contains(&code) {
            code.to_string()
        } else {
            OTHER.to_string()
        };
        self.requests
            .with_label_values(&[verb, resource, subresource, &code])
            .inc();
        self.latency
            .with_label_values(&[verb, resource, subresource])
            .observe(seconds);
    }

    /// One crash of `group` in `namespace`, within [`MAX_CRASH_SERIES`] series.
    pub fn observe_crash(&self, namespace: &str, group: &str) {
        let key = (namespace.to_string(), group.to_string());
        let known = {
            let mut seen = self
                .crash_series
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            seen.contains(&key) || (seen.len() < MAX_CRASH_SERIES && seen.insert(key.clone()))
        };
        let (ns, g) = if known {
            (key.0.as_str(), key.1.as_str())
        } else {
            (OTHER, OTHER)
        };
        self.crashes.with_label_values(&[ns, g]).inc();
    }

    /// The text exposition, with object counts read at scrape time.
    pub fn render(&self) -> String {
        for r in &self.resources {
            match self.store.count(r) {
                Ok(n) => {
                    let n = i64::try_from(n).unwrap_or(i64::MAX);
                    self.objects.with_label_values(&[r]).set(n);
                }
                Err(e) => tracing::warn!(resource = r, error = %e, "counting objects"),
            }
        }
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
