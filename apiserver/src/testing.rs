//! What the unit tests of the REST core share: the server's registry over a temporary
//! store, with its kinds and admission chain, a cluster that answers nothing, and a
//! Coredump body.
//!
//! Invariant: one builder for the registry-level tests (`registry::rest_tests`) and the
//! router-level ones (`http::router_tests`), so both test the chain `run` assembles (less
//! what needs a live cluster).

use std::sync::Arc;

use serde_json::{json, Value};

use crate::admission::QuotaAdmission;
use crate::blobs::{BlobStore, FsBlobs};
use crate::crashgroups::CrashGroups;
use crate::metrics::Metrics;
use crate::registry::kinds::{CoredumpKind, CrashGroupKind, QuotaKind};
use crate::registry::{Admission, Chain, Kind, Registry};
use crate::store::{MetadataStore, SledStore};

pub(crate) struct Fixture {
    pub(crate) registry: Arc<Registry>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) blobs: Arc<dyn BlobStore>,
    /// Holds the store and the cores; removed on drop.
    pub(crate) _dir: tempfile::TempDir,
}

/// Revisions the store's log keeps unless a test wants compaction sooner.
pub(crate) const REVISION_LOG: usize = 1000;

/// The registry with quota and crash-group admission.
pub(crate) fn fixture() -> Fixture {
    fixture_with(Vec::new(), REVISION_LOG)
}

/// [`fixture`] with `first` ahead of quota and crash groups in the chain (where `run`
/// puts node restriction) and a log of `revision_log` revisions.
pub(crate) fn fixture_with(first: Vec<Arc<dyn Admission>>, revision_log: usize) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn MetadataStore> =
        Arc::new(SledStore::open(&dir.path().join("db"), revision_log).expect("store"));
    let kinds: Vec<Arc<dyn Kind>> = vec![
        Arc::new(CoredumpKind),
        Arc::new(QuotaKind),
        Arc::new(CrashGroupKind),
    ];
    let metrics = Arc::new(
        Metrics::new(
            Arc::clone(&store),
            kinds.iter().map(|k| k.info().plural).collect(),
        )
        .expect("metrics"),
    );
    let blobs: Arc<dyn BlobStore> =
        Arc::new(FsBlobs::new(&dir.path().join("cores")).expect("blobs"));
    let mut chain = first;
    chain.push(Arc::new(QuotaAdmission {
        blobs: Arc::clone(&blobs),
        default_hard: Default::default(),
        max_rejected: 100,
    }));
    chain.push(Arc::new(CrashGroups {
        metrics: Arc::clone(&metrics),
    }));
    Fixture {
        registry: Arc::new(Registry::new(store, kinds, Arc::new(Chain(chain)))),
        metrics,
        blobs,
        _dir: dir,
    }
}

/// A kube client whose every request fails as if kube-apiserver were unreachable: what
/// the server does when a live lookup fails. Needs a Tokio runtime.
pub(crate) fn unreachable_cluster() -> kube::Client {
    let service = tower::service_fn(|_req: http::Request<kube::client::Body>| async {
        Err::<http::Response<http_body_util::Full<bytes::Bytes>>, _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "no cluster in unit tests",
        ))
    });
    kube::Client::new(service, "default")
}

/// A valid Coredump of pod `web` on node `n1`; with `fingerprint`, an analysed one.
pub(crate) fn coredump(name: &str, labels: Value, fingerprint: Option<&str>) -> Value {
    let mut o = json!({
        "apiVersion": "coredump.io/v1alpha1", "kind": "Coredump",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeName": "n1", "podName": "web", "podUID": "u-1", "containerName": "app",
            "signal": 11, "dumpTime": "2026-01-01T00:00:00Z", "size": "1Mi",
            "storedSize": "100Ki", "sha256": "ab".repeat(32), "executable": "/bin/app",
        }
    });
    if let Some(fp) = fingerprint {
        o["spec"]["analysis"] = json!({"fingerprint": fp, "signature": "parse"});
    }
    o
}
