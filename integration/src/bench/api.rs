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
pub const OPERATIONS: [&str; 5] = [
    OP_CREATE,
    OP_LIST_ALL,
    OP_LIST_LABEL,
    OP_LIST_NAMESPACE,
    OP_WATCH,
];
pub const OP_CREATE: &str = "create";
pub const OP_LIST_ALL: &str = "list all";
pub const OP_LIST_LABEL: &str = "list by label (1%)";
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
    pub list_namespace: ListResult,
    pub watch: WatchResult,
    /// (creates in flight, the creates of that level).
    pub sweep: Vec<(usize, CreateResult)>,
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
            targets.push(run_target(target, &admin, &client, opts).await?);
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

// ---------------------------------------------------------------------------------------
// The CRD baseline.

/// The CRD's `openAPIV3Schema`, derived from the OpenAPI v3 document our server serves,
/// and a sentence on how.
async fn crd_schema(direct: &Client) -> Result<(Value, String), Error> {
    let req = build(
        "openapi request",
        Request::new(OPENAPI_V3.0).get(OPENAPI_V3.1, &Default::default()),
    )?;
    let text = direct
        .request_text(req)
        .await
        .map_err(|e| kube_err("GET our OpenAPI v3", e))?;
    let doc: Value = parse("our OpenAPI v3", &text)?;
    let schema = structural(&doc)?;
    Ok((
        schema,
        "The CRD's schema is ours, derived from our server's OpenAPI v3 document ($refs \
         inlined, Quantity as int-or-string with the Kubernetes quantity pattern), so the \
         baseline checks types, required fields and enums; ours also checks names, label \
         syntax, the sha256 form, the signal range and lengths, and runs quota admission."
            .to_string(),
    ))
}

const SCHEMA_PREFIX: &str = "#/components/schemas/";
const COREDUMP_SCHEMA: &str = "io.coredump.v1alpha1.Coredump";
/// What controller-gen writes for a `resource.Quantity`.
const QUANTITY_PATTERN: &str = concat!(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))",
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
);

/// The Coredump schema of an OpenAPI v3 document as a structural schema a CRD accepts.
pub fn structural(doc: &Value) -> Result<Value, Error> {
    let schemas = doc
        .pointer("/components/schemas")
        .ok_or_else(|| Error::Setup("OpenAPI v3: no components.schemas".into()))?;
    let root = schemas
        .get(COREDUMP_SCHEMA)
        .ok_or_else(|| Error::Setup(format!("OpenAPI v3: no {COREDUMP_SCHEMA}")))?;
    let mut out = convert(schemas, root, 0)?;
    // A CRD may say nothing about metadata beyond its type.
    if let Some(props) = out.get_mut("properties").and_then(Value::as_object_mut) {
        props.insert("metadata".into(), json!({"type": "object"}));
    }
    Ok(out)
}

fn convert(schemas: &Value, node: &Value, depth: usize) -> Result<Value, Error> {
    if depth > 32 {
        return Err(Error::Setup("OpenAPI v3: $refs nest too deep".into()));
    }
    let Some(obj) = node.as_object() else {
        return Err(Error::Setup(format!("OpenAPI v3: not a schema: {node}")));
    };
    // `$ref` or `allOf: [{$ref}]`: the referenced schema, with this node's description.
    let referenced = match (obj.get("$ref"), obj.get("allOf").and_then(Value::as_array)) {
        (Some(r), _) => Some(r),
        (None, Some(all)) if all.len() == 1 => all[0].get("$ref"),
        _ => None,
    };
    if let Some(r) = referenced {
        let name = r
            .as_str()
            .and_then(|r| r.strip_prefix(SCHEMA_PREFIX))
            .ok_or_else(|| Error::Setup(format!("OpenAPI v3: unsupported $ref {r}")))?;
        let target = schemas
            .get(name)
            .ok_or_else(|| Error::Setup(format!("OpenAPI v3: missing schema {name}")))?;
        let mut out = convert(schemas, target, depth + 1)?;
        if let (Some(d), Some(o)) = (obj.get("description"), out.as_object_mut()) {
            o.insert("description".into(), d.clone());
        }
        return Ok(out);
    }
    let mut out = serde_json::Map::new();
    for (k, v) in obj {
        match k.as_str() {
            "type" | "format" | "description" | "required" | "enum" | "pattern" | "minimum"
            | "maximum" | "minLength" | "maxLength" | "minItems" | "maxItems" | "nullable" => {
                out.insert(k.clone(), v.clone());
            }
            "properties" => {
                let mut props = serde_json::Map::new();
                for (name, p) in v.as_object().into_iter().flatten() {
                    props.insert(name.clone(), convert(schemas, p, depth + 1)?);
                }
                out.insert(k.clone(), Value::Object(props));
            }
            "items" | "additionalProperties" if v.is_object() => {
                out.insert(k.clone(), convert(schemas, v, depth + 1)?);
            }
            // A string-or-number (Quantity): CRDs express it as int-or-string.
            "oneOf" => {
                out.insert("x-kubernetes-int-or-string".into(), json!(true));
                out.insert(
                    "anyOf".into(),
                    json!([{"type": "integer"}, {"type": "string"}]),
                );
                out.insert("pattern".into(), json!(QUANTITY_PATTERN));
            }
            // Extensions a CRD rejects or does not need (x-kubernetes-group-version-kind).
            _ => {}
        }
    }
    Ok(Value::Object(out))
}

/// Our printer columns (name, JSON path, description, priority), Age aside.
const COLUMNS: &[(&str, &str, &str, u32)] = &[
    (
        "Pod",
        ".spec.podName",
        "The pod whose container dumped core.",
        0,
    ),
    (
        "Container",
        ".spec.containerName",
        "The container that dumped core.",
        0,
    ),
    (
        "Signal",
        ".spec.signalName",
        "The signal that killed the process.",
        0,
    ),
    ("Size", ".spec.size", "Size of the core file.", 0),
    (
        "Phase",
        ".status.phase",
        "Pending, Stored, Rejected or Failed.",
        0,
    ),
    (
        "Node",
        ".spec.nodeName",
        "The node the crash happened on.",
        1,
    ),
    (
        "Executable",
        ".spec.executable",
        "Path of the crashed executable inside the container.",
        1,
    ),
    ("Image", ".spec.image", "The container's image.", 1),
];

fn crd_manifest(schema: Value) -> Value {
    let mut columns: Vec<Value> = COLUMNS
        .iter()
        .map(|(name, path, desc, priority)| {
            json!({"name": name, "type": "string", "jsonPath": path, "description": desc,
                   "priority": priority})
        })
        .collect();
    // Where ours has it: after Phase, before the wide columns.
    columns.insert(
        5,
        json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}),
    );
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": CRD_GROUP,
            "scope": "Namespaced",
            "names": {"plural": "coredumps", "singular": "coredump", "kind": "Coredump",
                      "listKind": "CoredumpList"},
            "versions": [{
                "name": "v1alpha1",
                "served": true,
                "storage": true,
                "schema": {"openAPIV3Schema": schema},
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                // Ours support these field selectors too.
                "selectableFields": [
                    {"jsonPath": ".spec.nodeName"},
                    {"jsonPath": ".spec.podName"},
                    {"jsonPath": ".spec.containerName"},
                    {"jsonPath": ".status.phase"},
                ],
            }],
        },
    })
}

/// Creates the CRD and waits until it is Established and its resource answers.
async fn create_crd(admin: &Client, schema: Value) -> Result<(), Error> {
    let body = serde_json::to_vec(&crd_manifest(schema)).map_err(Error::Json)?;
    let req = build(
        "CRD request",
        Request::new(CRDS).create(&PostParams::default(), body),
    )?;
    admin
        .request_text(req)
        .await
        .map_err(|e| kube_err("create the CRD", e))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::from("not Established yet");
    loop {
        let crd = admin
            .request_text(build(
                "CRD get",
                Request::new(CRDS).get(CRD_NAME, &Default::default()),
            )?)
            .await
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| e.to_string()));
        let established = match crd {
            Ok(crd) => crd
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Established" && c["status"] == "True")
                }),
            Err(e) => {
                last = e;
                false
            }
        };
        if established {
            // Established says the handler is installed; a list proves it serves.
            let probe = build(
                "CRD probe",
                Request::new(format!("{CRD_BASE}/coredumps")).list(&ListParams::default().limit(1)),
            )?;
            match admin.request_text(probe).await {
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: format!("CRD {CRD_NAME} to be served"),
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The objects.

/// One Coredump to create.
struct Obj {
    namespace: String,
    name: String,
    group: usize,
    /// Its storedSize, for the namespace's quota.
    stored: u64,
    body: Vec<u8>,
}

/// splitmix64's finalizer: deterministic variety without a random number generator.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn hex(seed: u64, len: usize) -> String {
    let mut s = String::with_capacity(len + 16);
    let mut k = 0u64;
    while s.len() < len {
        s.push_str(&format!(
            "{:016x}",
            mix(seed ^ k.wrapping_mul(0xD6E8_FEB8_6659_FD93))
        ));
        k += 1;
    }
    s.truncate(len);
    s
}

/// (container and app, image, executable, arguments)
const APPS: &[(&str, &str, &str, &str)] = &[
    (
        "checkout",
        "registry.example.com/shop/checkout:1.27.3",
        "/usr/local/bin/checkout",
        "--config /etc/checkout/config.yaml --port 8080",
    ),
    (
        "payments",
        "registry.example.com/shop/payments:4.2.0",
        "/app/payments",
        "serve --grpc-port 9090 --db-pool 32",
    ),
    (
        "search",
        "registry.example.com/platform/search-engine:2024.11.2",
        "/opt/search/bin/searchd",
        "--index /data/index --threads 8",
    ),
    (
        "thumbnailer",
        "registry.example.com/media/thumbnailer:0.9.14",
        "/usr/bin/thumbnailer",
        "--queue thumbnails --max-size 4096",
    ),
    (
        "envoy",
        "docker.io/envoyproxy/envoy:v1.31.2",
        "/usr/local/bin/envoy",
        "-c /etc/envoy/envoy.yaml --log-level warn",
    ),
];

/// The `i`-th Coredump of a target, as the node agent writes one (labels included), plus
/// the benchmark's group label.
fn object(target: Target, namespaces: &[String], i: usize) -> Result<Obj, Error> {
    let n = i as u64;
    let (app, image, exe, args) = APPS[i % APPS.len()];
    // A pod crashes a few times before it is fixed.
    let pod_seed = n / 3;
    let pod = format!(
        "{app}-{}-{}",
        hex(pod_seed ^ 0x5eed, 10),
        hex(pod_seed ^ 0xfeed, 5)
    );
    // Multiplying by an odd constant is a bijection mod 2^40: names never collide.
    let name = format!(
        "{pod}-{:010x}",
        n.wrapping_mul(0x9E37_79B9_7F4A_7C15) & 0xff_ffff_ffff
    );
    let node = format!("worker-{:02}", mix(pod_seed) % 20);
    let uid = hex(pod_seed ^ 0x0001_d000, 32);
    let pod_uid = format!(
        "{}-{}-{}-{}-{}",
        &uid[..8],
        &uid[8..12],
        &uid[12..16],
        &uid[16..20],
        &uid[20..]
    );
    let r = mix(n);
    let (signal, signal_name) = match r % 10 {
        0..=5 => (11, "SIGSEGV"),
        6..=8 => (6, "SIGABRT"),
        _ => (7, "SIGBUS"),
    };
    let size = (64 + (r >> 8) % 960) << 20;
    let stored = size / (4 + (r >> 20) % 8);
    let group = i % GROUPS;
    let namespace = namespaces[i % namespaces.len()].clone();
    let body = json!({
        "apiVersion": target.api_version(),
        "kind": "Coredump",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "coredump.io/node": node,
                "coredump.io/pod": pod,
                "coredump.io/container": app,
                GROUP_LABEL: format!("g{group}"),
            },
        },
        "spec": {
            "nodeName": node,
            "podName": pod,
            "podUID": pod_uid,
            "containerName": app,
            "containerID": format!("containerd://{}", hex(pod_seed ^ 0xc0c0, 64)),
            "image": image,
            "pid": 1 + (r >> 32) % 40,
            "hostPID": 1000 + (r >> 16) % 4_000_000,
            "signal": signal,
            "signalName": signal_name,
            "executable": exe,
            "commandLine": format!("{exe} {args}"),
            "uid": 65532,
            "gid": 65532,
            "dumpTime": format!(
                "2026-11-25T{:02}:{:02}:{:02}Z",
                9 + (i / 3600) % 14,
                (i / 60) % 60,
                i % 60
            ),
            "size": size.to_string(),
            "storedSize": stored.to_string(),
            "sha256": hex(n ^ 0x5a5a_5a5a, 64),
        },
    });
    Ok(Obj {
        namespace,
        name,
        group,
        stored,
        body: serde_json::to_vec(&body).map_err(Error::Json)?,
    })
}

// ---------------------------------------------------------------------------------------
// One target.

fn base(target: Target) -> &'static str {
    match target {
        Target::Crd => CRD_BASE,
        Target::Aggregated | Target::Direct => OUR_BASE,
    }
}

async fn run_target(
    target: Target,
    admin: &Client,
    client: &Client,
    opts: &ApiOptions,
) -> Result<TargetResults, Error> {
    let namespaces: Vec<String> = (0..opts.namespaces.max(1))
        .map(|i| format!("{}-{i}", target.namespace_prefix()))
        .collect();
    let objects = (0..opts.objects)
        .map(|i| object(target, &namespaces, i))
        .collect::<Result<Vec<_>, _>>()?;
    setup_namespaces(target, admin, client, &namespaces, &objects).await?;
    let warmup = warm_up(client, target, &namespaces, opts.objects).await?;

    let all = format!("{}/coredumps", base(target));
    // The watch starts where a list would: at the current revision.
    let start_rv = current_rv(client, &all).await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let mut watch = tokio::spawn(watch_adds(
        client.clone(),
        all.clone(),
        start_rv,
        format!("{}-", target.namespace_prefix()),
        objects.len(),
        stop_rx,
    ));

    let (create, acks, first_sent) = create_all(client, target, &objects, opts.concurrency).await;

    // Generous: as long as the creates took, and at least 30 s, for the rest to arrive.
    let grace = create.total.max(Duration::from_secs(30));
    let log = match tokio::time::timeout(grace, &mut watch).await {
        Ok(done) => done,
        Err(_) => {
            let _ = stop_tx.send(());
            watch.await
        }
    }
    .map_err(|e| Error::Setup(format!("watch task: {e}")))?;
    let watch = watch_result(&log, &acks, first_sent, objects.len());

    let label = format!("{GROUP_LABEL}=g0");
    let in_label = objects.iter().filter(|o| o.group == 0).count();
    let ns0 = &namespaces[0];
    let in_ns0 = objects.iter().filter(|o| &o.namespace == ns0).count();
    let list_all = list(client, &all, None, objects.len(), opts.list_repeats).await;
    let list_label = list(client, &all, Some(&label), in_label, opts.list_repeats).await;
    let list_namespace = list(
        client,
        &format!("{}/namespaces/{ns0}/coredumps", base(target)),
        None,
        in_ns0,
        opts.list_repeats,
    )
    .await;

    // How throughput grows with the creates in flight: fresh objects for each level.
    let mut sweep = Vec::new();
    let mut next = opts.objects;
    for &level in &opts.sweep {
        let batch = (next..next + opts.sweep_objects)
            .map(|i| object(target, &namespaces, i))
            .collect::<Result<Vec<_>, _>>()?;
        next += opts.sweep_objects;
        let (result, _, _) = create_all(client, target, &batch, level).await;
        sweep.push((level, result));
    }

    // The next target starts from an empty store: ours serves two of the targets.
    cleanup(client, target, &namespaces, next).await?;

    Ok(TargetResults {
        target,
        warmup,
        create,
        list_all,
        list_label,
        list_namespace,
        watch,
        sweep,
    })
}

/// Namespaces (created by the admin in kube-apiserver) and, for ours, a CoredumpQuota in
/// each with room for twice its share: quota admission runs on every create and admits.
async fn setup_namespaces(
    target: Target,
    admin: &Client,
    client: &Client,
    namespaces: &[String],
    objects: &[Obj],
) -> Result<(), Error> {
    let mut share: HashMap<&str, (u64, u64)> = HashMap::new();
    for o in objects {
        let s = share.entry(o.namespace.as_str()).or_default();
        s.0 += o.stored;
        s.1 += 1;
    }
    let results: Vec<Result<(), Error>> = futures::stream::iter(namespaces)
        .map(|ns| {
            let (storage, count) = share.get(ns.as_str()).copied().unwrap_or_default();
            async move {
                let body = json!({"apiVersion": "v1", "kind": "Namespace",
                                  "metadata": {"name": ns}});
                create_ignoring_conflict(admin, "/api/v1/namespaces", &body).await?;
                if target.is_ours() {
                    let quota = json!({
                        "apiVersion": OUR_API_VERSION, "kind": "CoredumpQuota",
                        "metadata": {"name": "bench", "namespace": ns},
                        "spec": {"hard": {
                            "storage": (storage * 2).max(1).to_string(),
                            "count": (count * 2).max(1).to_string(),
                        }},
                    });
                    let path = format!("{OUR_BASE}/namespaces/{ns}/coredumpquotas");
                    create_ignoring_conflict(client, &path, &quota).await?;
                }
                Ok(())
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Creates and deletes one more object (index `objects`, so its name is unused).
async fn warm_up(
    client: &Client,
    target: Target,
    namespaces: &[String],
    objects: usize,
) -> Result<Duration, Error> {
    let o = object(target, namespaces, objects)?;
    let path = format!("{}/namespaces/{}/coredumps", base(target), o.namespace);
    let t = Instant::now();
    let req = build(
        &path,
        Request::new(&path).create(&PostParams::default(), o.body),
    )?;
    client
        .request_text(req)
        .await
        .map_err(|e| kube_err(&format!("warm-up create in {path}"), e))?;
    let took = t.elapsed();
    let req = build(
        &path,
        Request::new(&path).delete(&o.name, &DeleteParams::default()),
    )?;
    client
        .request_text(req)
        .await
        .map_err(|e| kube_err(&format!("warm-up delete in {path}"), e))?;
    Ok(took)
}

async fn create_ignoring_conflict(client: &Client, path: &str, body: &Value) -> Result<(), Error> {
    let body = serde_json::to_vec(body).map_err(Error::Json)?;
    let req = build(
        path,
        Request::new(path).create(&PostParams::default(), body),
    )?;
    match client.request_text(req).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(kube_err(&format!("POST {path}"), e)),
    }
}

#[derive(Deserialize)]
struct ListMeta {
    #[serde(rename = "resourceVersion", default)]
    resource_version: String,
}

#[derive(Deserialize)]
struct ListHead {
    metadata: ListMeta,
}

async fn current_rv(client: &Client, path: &str) -> Result<String, Error> {
    let req = build(
        "list",
        Request::new(path).list(&ListParams::default().limit(1)),
    )?;
    let text = client
        .request_text(req)
        .await
        .map_err(|e| kube_err(&format!("list {path}"), e))?;
    Ok(parse::<ListHead>("list", &text)?.metadata.resource_version)
}

#[derive(Deserialize)]
struct CreatedStatus {
    phase: Option<String>,
}

#[derive(Deserialize)]
struct Created {
    status: Option<CreatedStatus>,
}

/// Creates every object, `concurrency` in flight. Returns the results, when each create
/// was acknowledged (by `namespace/name`), and when the first was sent.
async fn create_all(
    client: &Client,
    target: Target,
    objects: &[Obj],
    concurrency: usize,
) -> (CreateResult, HashMap<String, Instant>, Instant) {
    let first_sent = Instant::now();
    let outcomes: Vec<(String, Duration, Instant, Result<String, String>)> =
        futures::stream::iter(objects)
            .map(|o| {
                let path = format!("{}/namespaces/{}/coredumps", base(target), o.namespace);
                let req = Request::new(path).create(&PostParams::default(), o.body.clone());
                let key = format!("{}/{}", o.namespace, o.name);
                async move {
                    let sent = Instant::now();
                    let res = match req {
                        Ok(req) => client.request_text(req).await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    let acked = Instant::now();
                    (key, acked - sent, acked, res)
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
    let total = outcomes
        .iter()
        .map(|(_, _, acked, _)| *acked)
        .max()
        .map_or(Duration::ZERO, |last| last - first_sent);

    let mut r = CreateResult {
        attempted: objects.len(),
        total,
        ..Default::default()
    };
    let mut latencies = Vec::with_capacity(outcomes.len());
    let mut acks = HashMap::with_capacity(outcomes.len());
    for (key, latency, acked, res) in outcomes {
        match res {
            Ok(text) => {
                r.succeeded += 1;
                latencies.push(latency);
                acks.insert(key, acked);
                let phase = serde_json::from_str::<Created>(&text)
                    .ok()
                    .and_then(|c| c.status?.phase)
                    .unwrap_or_else(|| "(none)".to_string());
                *r.phases.entry(phase).or_default() += 1;
            }
            Err(e) => {
                r.first_error.get_or_insert(format!("{key}: {e}"));
            }
        }
    }
    r.per_s = per_s(r.succeeded, total);
    r.p50 = percentile(&latencies, 50.0);
    r.p99 = percentile(&latencies, 99.0);
    (r, acks, first_sent)
}

fn per_s(n: usize, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s == 0.0 {
        return f64::INFINITY;
    }
    n as f64 / s
}

#[derive(Deserialize)]
struct Items {
    items: Vec<serde::de::IgnoredAny>,
}

/// `repeats` full lists (no `limit`, so one response each), timed to the last byte.
async fn list(
    client: &Client,
    path: &str,
    label: Option<&str>,
    expected: usize,
    repeats: usize,
) -> ListResult {
    let mut r = ListResult {
        expected,
        ..Default::default()
    };
    let mut times = Vec::new();
    let mut lp = ListParams::default();
    if let Some(l) = label {
        lp = lp.labels(l);
    }
    for i in 0..repeats.max(1) {
        let req = match Request::new(path).list(&lp) {
            Ok(req) => req,
            Err(e) => {
                r.error = Some(e.to_string());
                break;
            }
        };
        let t = Instant::now();
        let res = client.request_text(req).await;
        let took = t.elapsed();
        let counted = res.map_err(|e| e.to_string()).and_then(|text| {
            let n = serde_json::from_str::<Items>(&text)
                .map_err(|e| e.to_string())?
                .items
                .len();
            Ok((n, text.len()))
        });
        match counted {
            Ok((n, bytes)) => {
                if i == 0 {
                    r.returned = n;
                    r.bytes = bytes;
                } else if n != r.returned {
                    r.error
                        .get_or_insert(format!("repeat {i} returned {n}, not {}", r.returned));
                }
                times.push(took);
            }
            Err(e) => {
                r.error.get_or_insert(format!("list {path}: {e}"));
                break;
            }
        }
    }
    r.median = percentile(&times, 50.0);
    r.slowest = percentile(&times, 100.0);
    r.per_s = per_s(r.returned, r.median);
    r
}

#[derive(Clone, Deserialize)]
struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(rename = "resourceVersion", default)]
    resource_version: String,
}

/// Just the metadata of a watched object: the client's decoding stays small.
#[derive(Clone, Deserialize)]
struct Named {
    metadata: Meta,
}

struct WatchLog {
    received: HashMap<String, Instant>,
    error: Option<String>,
}

/// Watches `path` from `rv`, noting when the ADDED event of each object in a namespace
/// starting with `prefix` arrived, until `want` arrived, an error, or `stop`. A watch the
/// server ends (its timeout) is resumed from the last revision seen.
async fn watch_adds(
    client: Client,
    path: String,
    mut rv: String,
    prefix: String,
    want: usize,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> WatchLog {
    let mut log = WatchLog {
        received: HashMap::with_capacity(want),
        error: None,
    };
    let wp = WatchParams::default().timeout(WATCH_TIMEOUT_S);
    'watch: while log.received.len() < want {
        let req = match Request::new(&path).watch(&wp, &rv) {
            Ok(r) => r,
            Err(e) => {
                log.error = Some(e.to_string());
                break;
            }
        };
        let stream = match client.request_events::<Named>(req).await {
            Ok(s) => s,
            Err(e) => {
                log.error = Some(format!("watch {path}: {e}"));
                break;
            }
        };
        let mut stream = std::pin::pin!(stream);
        loop {
            let ev = tokio::select! {
                _ = &mut stop => break 'watch,
                ev = stream.next() => ev,
            };
            match ev {
                // Ended by the server: resume where it stopped.
                None => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue 'watch;
                }
                Some(Ok(WatchEvent::Added(o))) => {
                    let at = Instant::now();
                    rv = o.metadata.resource_version;
                    if o.metadata.namespace.starts_with(&prefix) {
                        let key = format!("{}/{}", o.metadata.namespace, o.metadata.name);
                        log.received.entry(key).or_insert(at);
                        if log.received.len() >= want {
                            break 'watch;
                        }
                    }
                }
                Some(Ok(WatchEvent::Modified(o) | WatchEvent::Deleted(o))) => {
                    rv = o.metadata.resource_version;
                }
                Some(Ok(WatchEvent::Bookmark(b))) => rv = b.metadata.resource_version,
                Some(Ok(WatchEvent::Error(s))) => {
                    log.error = Some(format!("watch {path}: {} ({})", s.message, s.code));
                    break 'watch;
                }
                Some(Err(e)) => {
                    log.error = Some(format!("watch {path}: {e}"));
                    break 'watch;
                }
            }
        }
    }
    log
}

fn watch_result(
    log: &WatchLog,
    acks: &HashMap<String, Instant>,
    first_sent: Instant,
    expected: usize,
) -> WatchResult {
    let lags: Vec<Duration> = log
        .received
        .iter()
        .filter_map(|(k, at)| Some(at.saturating_duration_since(*acks.get(k)?)))
        .collect();
    let to_last_event = log.received.values().max().map_or(Duration::ZERO, |last| {
        last.saturating_duration_since(first_sent)
    });
    WatchResult {
        expected,
        received: log.received.len(),
        to_last_event,
        per_s: per_s(log.received.len(), to_last_event),
        lag_p50: percentile(&lags, 50.0),
        lag_p99: percentile(&lags, 99.0),
        error: log.error.clone(),
    }
}

/// Deletes this target's Coredumps namespace by namespace and waits until none is left.
async fn cleanup(
    client: &Client,
    target: Target,
    namespaces: &[String],
    objects: usize,
) -> Result<(), Error> {
    let results: Vec<Result<(), Error>> = futures::stream::iter(namespaces)
        .map(|ns| async move {
            let path = format!("{}/namespaces/{ns}/coredumps", base(target));
            let req = build(
                &path,
                Request::new(&path)
                    .delete_collection(&DeleteParams::default(), &ListParams::default()),
            )?;
            client
                .request_text(req)
                .await
                .map(|_| ())
                .map_err(|e| kube_err(&format!("delete {path}"), e))
        })
        .buffer_unordered(4)
        .collect()
        .await;
    results.into_iter().collect::<Result<(), Error>>()?;
    let all = format!("{}/coredumps", base(target));
    let deadline =
        Instant::now() + Duration::from_secs(60) + Duration::from_millis(objects as u64 * 20);
    loop {
        let req = build(
            "list",
            Request::new(&all).list(&ListParams::default().limit(1)),
        )?;
        let left = client
            .request_text(req)
            .await
            .map_err(|e| e.to_string())
            .and_then(|t| {
                serde_json::from_str::<Items>(&t)
                    .map(|i| i.items.len())
                    .map_err(|e| e.to_string())
            });
        let last = match left {
            Ok(0) => return Ok(()),
            Ok(n) => format!("{n} left"),
            Err(e) => e,
        };
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: format!("the Coredumps of {} to be deleted", target.name()),
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The report.

impl ApiResults {
    pub fn target(&self, t: Target) -> Option<&TargetResults> {
        self.targets.iter().find(|r| r.target == t)
    }

    /// Create throughput by creates in flight, each target against the CRD at the same
    /// level.
    pub fn sweep_section(&self) -> Section {
        let o = &self.options;
        let mut sec = Section::new(
            "API: create throughput by creates in flight",
            &format!(
                "{} fresh Coredumps per level and target, created with 1 to {} requests in                  flight (after the main run, into the same namespaces; quota admission on                  ours). objects/s over the whole level; ratio = ours ÷ the CRD's objects/s                  at the same level (above 1.00× is faster).",
                o.sweep_objects,
                o.sweep.iter().max().copied().unwrap_or(1)
            ),
            &["in flight", "target", "objects/s", "p50", "p99", "vs CRD"],
        );
        let crd = self.target(Target::Crd);
        for (i, level) in o.sweep.iter().enumerate() {
            let base = crd.and_then(|c| c.sweep.get(i)).map(|(_, r)| r.per_s);
            for t in &self.targets {
                let Some((_, r)) = t.sweep.get(i) else {
                    continue;
                };
                let vs = match (t.target, base) {
                    (Target::Crd, _) => "baseline".to_string(),
                    (_, Some(b)) if b > 0.0 => ratio(r.per_s / b),
                    _ => "–".to_string(),
                };
                sec.row(vec![
                    level.to_string(),
                    t.target.name().to_string(),
                    if r.succeeded == r.attempted {
                        format!("{:.0}", r.per_s)
                    } else {
                        format!(
                            "{:.0} ({} of {} failed)",
                            r.per_s,
                            r.attempted - r.succeeded,
                            r.attempted
                        )
                    },
                    ms(r.p50),
                    ms(r.p99),
                    vs,
                ]);
            }
        }
        sec
    }

    pub fn section(&self) -> Section {
        let o = &self.options;
        let mut sec = Section::new(
            "API: creates, lists and a watch",
            &format!(
                "{} Coredumps like the node agent's, created {} at a time into {} namespaces \
                 (for ours each has a CoredumpQuota, so quota admission runs on every create \
                 and admits it), then listed: all, by a label matching 1%, one namespace; a \
                 cluster-wide watch runs from before the first create. Baseline: the same \
                 objects as a CustomResourceDefinition in the same kube-apiserver.",
                o.objects, o.concurrency, o.namespaces
            ),
            &[
                "operation",
                "target",
                "objects",
                "time",
                "objects/s",
                "p50",
                "p99",
                "time vs CRD",
                "p50 vs CRD",
            ],
        );
        let crd = self.target(Target::Crd);
        for op in OPERATIONS {
            let base = crd.map(|c| figures(c, op));
            for t in &self.targets {
                let f = figures(t, op);
                let vs = |ours: Duration, crd: Option<Duration>| match (t.target, crd) {
                    (Target::Crd, _) => "baseline".to_string(),
                    (_, Some(c)) => ratio(ours.as_secs_f64() / c.as_secs_f64()),
                    (_, None) => "–".to_string(),
                };
                sec.row(vec![
                    op.to_string(),
                    t.target.name().to_string(),
                    if f.count == f.expected {
                        f.count.to_string()
                    } else {
                        format!("{} of {}", f.count, f.expected)
                    },
                    secs(f.time),
                    format!("{:.0}", f.per_s),
                    ms(f.p50),
                    ms(f.p99),
                    vs(f.time, base.as_ref().map(|b| b.time)),
                    vs(f.p50, base.as_ref().map(|b| b.p50)),
                ]);
            }
        }
        sec.note(
            "time vs CRD, p50 vs CRD: this target's figure ÷ the CRD's for the same \
             operation; below 1.00× is faster than the CRD.",
        );
        sec.note(format!(
            "create: time for all, p50/p99 per request. Lists: median of {} whole responses \
             (no limit, so unchunked), timed to the last byte; p50/p99 over those repeats. \
             Watch: time from the first create sent to the last ADDED event received; \
             p50/p99 delivery lag, an event's arrival − its create's acknowledgement \
             (0 if it came first).",
            o.list_repeats.max(1)
        ));
        let sizes: Vec<String> = self
            .targets
            .iter()
            .map(|t| {
                let l = &t.list_all;
                format!(
                    "{} {} ({} bytes per object)",
                    t.target.name(),
                    super::report::mib(l.bytes as u64),
                    l.bytes.checked_div(l.returned).unwrap_or(0)
                )
            })
            .collect();
        sec.note(format!("List-all response: {}.", sizes.join(", ")));
        let warm: Vec<String> = self
            .targets
            .iter()
            .map(|t| format!("{} {}", t.target.name(), ms(t.warmup)))
            .collect();
        sec.note(format!(
            "Not counted: one create per target before the measurement, to pay first-use \
             costs (a new CRD's storage, connections, caches): {}.",
            warm.join(", ")
        ));
        sec.note(self.crd_schema.clone());
        sec.note(
            "Both sides sync every write to disk before answering under `make bench` (its \
             etcd runs without --unsafe-no-fsync); the tests' harness skips etcd's fsync, \
             which makes the baseline's writes cheaper there. A real cluster's etcd also \
             replicates each write, which neither side pays here.",
        );
        sec.note(
            "Each target writes into its own namespaces; its objects are deleted before the \
             next target starts, so every list returns only its own.",
        );
        for t in &self.targets {
            let problems = [
                t.create.first_error.as_ref().map(|e| {
                    format!(
                        "{} of {} creates failed, e.g. {e}",
                        t.create.attempted - t.create.succeeded,
                        t.create.attempted
                    )
                }),
                t.list_all.error.clone(),
                t.list_label.error.clone(),
                t.list_namespace.error.clone(),
                t.watch.error.clone(),
            ];
            for p in problems.into_iter().flatten() {
                sec.note(format!("{}: {p}", t.target.name()));
            }
            if t.target.is_ours() {
                let not_pending: usize = t
                    .create
                    .phases
                    .iter()
                    .filter(|(p, _)| p.as_str() != "Pending")
                    .map(|(_, n)| n)
                    .sum();
                if not_pending > 0 {
                    sec.note(format!(
                        "{}: {not_pending} creates were not admitted as Pending: {:?}",
                        t.target.name(),
                        t.create.phases
                    ));
                }
            }
        }
        sec
    }
}

/// One row's figures.
struct Figures {
    count: usize,
    expected: usize,
    time: Duration,
    per_s: f64,
    p50: Duration,
    p99: Duration,
}

fn figures(t: &TargetResults, op: &str) -> Figures {
    let list = |l: &ListResult| Figures {
        count: l.returned,
        expected: l.expected,
        time: l.median,
        per_s: l.per_s,
        p50: l.median,
        p99: l.slowest,
    };
    match op {
        OP_CREATE => Figures {
            count: t.create.succeeded,
            expected: t.create.attempted,
            time: t.create.total,
            per_s: t.create.per_s,
            p50: t.create.p50,
            p99: t.create.p99,
        },
        OP_LIST_ALL => list(&t.list_all),
        OP_LIST_LABEL => list(&t.list_label),
        OP_LIST_NAMESPACE => list(&t.list_namespace),
        _ => Figures {
            count: t.watch.received,
            expected: t.watch.expected,
            time: t.watch.to_last_event,
            per_s: t.watch.per_s,
            p50: t.watch.lag_p50,
            p99: t.watch.lag_p99,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_have_unique_names_and_valid_fields() {
        let ns = vec!["a".to_string(), "b".to_string()];
        let mut names = std::collections::HashSet::new();
        for i in 0..2000 {
            let o = object(Target::Aggregated, &ns, i).expect("object");
            assert!(names.insert(o.name.clone()), "duplicate {}", o.name);
            let v: Value = serde_json::from_slice(&o.body).expect("json");
            assert!(o.name.len() <= 253);
            for l in v["metadata"]["labels"]
                .as_object()
                .expect("labels")
                .values()
            {
                assert!(l.as_str().is_some_and(|s| s.len() <= 63));
            }
            assert_eq!(v["spec"]["sha256"].as_str().map(str::len), Some(64));
        }
    }

    #[test]
    fn structural_schema_inlines_refs_and_quantities() {
        let doc = json!({"components": {"schemas": {
            "io.coredump.v1alpha1.Coredump": {
                "type": "object",
                "x-kubernetes-group-version-kind": [{}],
                "properties": {
                    "metadata": {"allOf": [{"$ref": "#/components/schemas/Meta"}]},
                    "spec": {"allOf": [{"$ref": "#/components/schemas/Spec"}], "description": "d"}
                }
            },
            "Meta": {"type": "object", "properties": {"name": {"type": "string"}}},
            "Spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"$ref": "#/components/schemas/Q"}
            }},
            "Q": {"oneOf": [{"type": "string"}, {"type": "number"}]}
        }}});
        let s = structural(&doc).expect("schema");
        assert_eq!(s["properties"]["metadata"], json!({"type": "object"}));
        assert_eq!(s["properties"]["spec"]["description"], "d");
        assert_eq!(s["properties"]["spec"]["required"], json!(["size"]));
        let q = &s["properties"]["spec"]["properties"]["size"];
        assert_eq!(q["x-kubernetes-int-or-string"], true);
        assert!(s.get("x-kubernetes-group-version-kind").is_none());
    }
}
