//! See [`super`]: Coredumps created with quota admission, listed (all, by a label that
//! matches 1%, one namespace), and watched, against three targets in the same run:
//!
//! - the same objects as a CustomResourceDefinition (group `crd.coredump.io`, schema
//!   derived from our OpenAPI) served by the same kube-apiserver: the original design;
//! - our server through the aggregator (what kubectl users get);
//! - our server directly with the admin's client certificate (what the node agent does).
//!
//! Each target writes into its own namespaces, and its objects are deleted before the next
//! target starts, so every list of every target sees exactly its own N objects.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{DeleteParams, ListParams, PostParams, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{Request, WatchEvent};
use kube::Client;
use serde::Deserialize;
use serde_json::{json, Value};

use super::report::{ms, ratio, secs, Section};
use super::{percentile, Scale};
use crate::env::TestEnv;
use crate::Error;

mod crd;
mod objects;
mod runner;
mod table;

use crd::*;
use objects::*;
use runner::*;

/// How big a run is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiOptions {
    /// Coredumps created per target.
    pub objects: usize,
    /// Namespaces per target the objects are spread over (round robin).
    pub namespaces: usize,
    /// Creates in flight at once.
    pub concurrency: usize,
    /// How often each list is repeated; the median is reported.
    pub list_repeats: usize,
    /// Creates in flight for the throughput sweep (each level creates `sweep_objects`).
    pub sweep: Vec<usize>,
    pub sweep_objects: usize,
}

impl ApiOptions {
    pub fn for_scale(s: Scale) -> Self {
        match s {
            Scale::Full => Self {
                objects: 10_000,
                namespaces: 100,
                concurrency: 16,
                list_repeats: 5,
                sweep: vec![1, 4, 16, 64],
                sweep_objects: 2000,
            },
            Scale::Tiny => Self {
                objects: 20,
                namespaces: 2,
                concurrency: 4,
                list_repeats: 1,
                sweep: vec![1, 4],
                sweep_objects: 8,
            },
        }
    }
}

/// What serves the objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A CustomResourceDefinition in kube-apiserver: the baseline.
    Crd,
    /// Our server through kube-apiserver's aggregator.
    Aggregated,
    /// Our server directly, with the admin's client certificate.
    Direct,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::Crd, Target::Aggregated, Target::Direct];

    pub fn name(self) -> &'static str {
        match self {
            Target::Crd => "CRD (baseline)",
            Target::Aggregated => "ours via aggregator",
            Target::Direct => "ours direct",
        }
    }

    /// Namespaces of this target are `<prefix>-<i>`.
    pub fn namespace_prefix(self) -> &'static str {
        match self {
            Target::Crd => "bench-crd",
            Target::Aggregated => "bench-agg",
            Target::Direct => "bench-direct",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Target::Crd => CRD_API_VERSION,
            Target::Aggregated | Target::Direct => OUR_API_VERSION,
        }
    }

    fn is_ours(self) -> bool {
        self != Target::Crd
    }
}

/// The operations of the table, in its order.
pub const OPERATIONS: [&str; 7] = [
    OP_CREATE,
    OP_LIST_ALL,
    OP_LIST_LABEL,
    OP_LIST_LABEL_IN,
    OP_LIST_LABEL_ABSENT,
    OP_LIST_NAMESPACE,
    OP_WATCH,
];
pub const OP_CREATE: &str = "create";
pub const OP_LIST_ALL: &str = "list all";
pub const OP_LIST_LABEL: &str = "list by label (1%)";
/// Selectors without an equality: a set (`in`) and an absent key (`!key`).
pub const OP_LIST_LABEL_IN: &str = "list by label in (2%)";
pub const OP_LIST_LABEL_ABSENT: &str = "list by !label (1%)";
pub const OP_LIST_NAMESPACE: &str = "list one namespace";
pub const OP_WATCH: &str = "watch all creates";

/// The creates of one target.
#[derive(Clone, Debug, Default)]
pub struct CreateResult {
    pub attempted: usize,
    pub succeeded: usize,
    /// `status.phase` of the created objects as the create answered them (`(none)` when
    /// there is no status, as for the CRD, which nobody admits).
    pub phases: BTreeMap<String, usize>,
    /// From the first request sent to the last answer received.
    pub total: Duration,
    /// Successful creates per second over `total`.
    pub per_s: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub first_error: Option<String>,
}

/// One kind of list, repeated.
#[derive(Clone, Debug, Default)]
pub struct ListResult {
    /// What the list should return.
    pub expected: usize,
    /// What it returned (the first repeat; a repeat that differs is an error).
    pub returned: usize,
    /// Median time of a whole response (unchunked: no `limit`).
    pub median: Duration,
    /// Slowest repeat.
    pub slowest: Duration,
    /// Objects per second at the median.
    pub per_s: f64,
    /// Size of the response body.
    pub bytes: usize,
    pub error: Option<String>,
}

/// The cluster-wide watch started before the creates.
#[derive(Clone, Debug, Default)]
pub struct WatchResult {
    pub expected: usize,
    /// Distinct ADDED events for this target's objects.
    pub received: usize,
    /// From the first create sent to the last event received.
    pub to_last_event: Duration,
    /// Events per second over `to_last_event`.
    pub per_s: f64,
    /// Delivery lag: event received − that object's create acknowledged, 0 if earlier.
    pub lag_p50: Duration,
    pub lag_p99: Duration,
    pub error: Option<String>,
}

#[derive(Clone, Debug)]
pub struct TargetResults {
    pub target: Target,
    /// One create and delete before the measurement (not counted): first-use costs
    /// such as a new CRD's storage, connections and authorization caches.
    pub warmup: Duration,
    pub create: CreateResult,
    pub list_all: ListResult,
    pub list_label: ListResult,
    pub list_label_in: ListResult,
    pub list_label_absent: ListResult,
    pub list_namespace: ListResult,
    pub watch: WatchResult,
    /// (creates in flight, the creates of that level).
    pub sweep: Vec<(usize, CreateResult)>,
    /// Our store's flushes during the main creates (from its /metrics; not for the CRD).
    pub flushes: Option<FlushStats>,
}

/// Our metadata store's flushes over a stretch of time: group commit at work.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FlushStats {
    pub flushes: f64,
    /// Revisions made durable (one per write).
    pub revisions: f64,
    /// Time spent flushing.
    pub seconds: f64,
}

impl FlushStats {
    /// From the server's metrics text; `None` without the flush metrics.
    pub fn parse(metrics: &str) -> Option<Self> {
        let value = |name: &str| {
            metrics.lines().find_map(|l| {
                let (n, v) = l.split_once(' ')?;
                (n == name).then(|| v.trim().parse::<f64>().ok()).flatten()
            })
        };
        Some(Self {
            flushes: value("coredump_apiserver_store_flush_duration_seconds_count")?,
            revisions: value("coredump_apiserver_store_flush_revisions_sum")?,
            seconds: value("coredump_apiserver_store_flush_duration_seconds_sum")?,
        })
    }

    pub fn since(self, before: Self) -> Self {
        Self {
            flushes: self.flushes - before.flushes,
            revisions: self.revisions - before.revisions,
            seconds: self.seconds - before.seconds,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ApiResults {
    pub options: ApiOptions,
    /// In the order of [`Target::ALL`].
    pub targets: Vec<TargetResults>,
    /// How the CRD's schema was made, for the section's notes.
    pub crd_schema: String,
}

const OUR_API_VERSION: &str = "coredump.io/v1alpha1";
const OUR_BASE: &str = "/apis/coredump.io/v1alpha1";
const CRD_GROUP: &str = "crd.coredump.io";
const CRD_API_VERSION: &str = "crd.coredump.io/v1alpha1";
const CRD_BASE: &str = "/apis/crd.coredump.io/v1alpha1";
const CRD_NAME: &str = "coredumps.crd.coredump.io";
const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
/// Where our server serves its OpenAPI v3 document (the CRD's schema comes from it):
/// `<dir>/<version>`.
const OPENAPI_V3: (&str, &str) = ("/openapi/v3/apis/coredump.io", "v1alpha1");
const GROUP_LABEL: &str = "bench.coredump.io/group";
/// Label groups: the selector `g0` matches 1% of the objects.
const GROUPS: usize = 100;
/// On every object outside group 0, so `!SEEN_LABEL` matches 1% (a selector without an
/// equality, which no stored-bytes search can narrow down).
const SEEN_LABEL: &str = "bench.coredump.io/seen";
/// Under the client's 295 s read timeout; the watch is resumed when it ends.
const WATCH_TIMEOUT_S: u32 = 280;

/// Runs the benchmark against the three targets, one after another.
pub fn run(env: &TestEnv, opts: &ApiOptions) -> Result<ApiResults, Error> {
    let (server_url, server_ca) = {
        let s = env.server();
        (s.url.clone(), s.ca_cert.clone())
    };
    let kubeconfig = env.cp.endpoints.kubeconfig.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Io("tokio runtime".into(), e))?;
    rt.block_on(async move {
        let admin = admin_client(&kubeconfig, None).await?;
        let direct = admin_client(&kubeconfig, Some((&server_url, &server_ca))).await?;
        let (schema, crd_schema) = crd_schema(&direct).await?;
        create_crd(&admin, schema).await?;
        let mut targets = Vec::new();
        for target in Target::ALL {
            let client = match target {
                Target::Direct => direct.clone(),
                Target::Crd | Target::Aggregated => admin.clone(),
            };
            targets.push(run_target(target, &admin, &client, &direct, opts).await?);
        }
        Ok(ApiResults {
            options: opts.clone(),
            targets,
            crd_schema,
        })
    })
}

/// The admin of the harness's kubeconfig; with `direct` (URL, CA file), pointed at our
/// server instead of kube-apiserver, as the node agent talks to it.
async fn admin_client(
    kubeconfig: &std::path::Path,
    direct: Option<(&str, &std::path::Path)>,
) -> Result<Client, Error> {
    let mut kc = Kubeconfig::read_from(kubeconfig)
        .map_err(|e| Error::Setup(format!("read {}: {e}", kubeconfig.display())))?;
    if let Some((url, ca)) = direct {
        for c in kc.clusters.iter_mut().filter_map(|c| c.cluster.as_mut()) {
            c.server = Some(url.to_string());
            c.certificate_authority = Some(ca.display().to_string());
            c.certificate_authority_data = None;
        }
    }
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Setup(format!("kubeconfig: {e}")))?;
    Client::try_from(config).map_err(|e| Error::Setup(format!("kube client: {e}")))
}

fn kube_err(what: &str, e: kube::Error) -> Error {
    Error::Setup(format!("{what}: {e}"))
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, Error> {
    serde_json::from_str(text).map_err(|e| Error::Setup(format!("{what}: {e}")))
}

/// A request that cannot be built is a bug here, not a measurement.
fn build<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> Result<T, Error> {
    r.map_err(|e| Error::Setup(format!("{what}: {e}")))
}
