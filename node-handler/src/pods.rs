//! This node's pods, as the agent's watches see them: who a core belongs
//! to (pod UID + container ID from the cgroup → pod, namespace, container,
//! image) and who opted out of capture.
//!
//! Invariant: a container is attributed only when its pod's status
//! (`containerStatuses`, `initContainerStatuses`,
//! `ephemeralContainerStatuses`: `containerID` or
//! `lastState.terminated.containerID`) names exactly the ID from the cgroup
//! path. The path alone could be made up by anyone who can create cgroups;
//! the status is the kubelet's word.
//!
//! [`PodIndex`] is plain data fed by watch events, so it can be tested
//! without a cluster; [`watch_pods`] and [`watch_namespaces`] feed it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use coredump_openapi::types::{CAPTURE_DISABLED, LABEL_CAPTURE};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ContainerStatus, Namespace, Pod};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::OptOut;

/// Deleted pods are remembered this long: a core written just before a pod
/// went away (a Job's pod, an evicted pod) is still attributed.
pub const GONE_RETENTION: Duration = Duration::from_secs(15 * 60);

/// The annotation a mirror pod carries: the static pod's UID, which is what
/// the kubelet names the cgroup after.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// One container of a pod, with every container ID it is known under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRecord {
    pub name: String,
    pub image: Option<String>,
    /// `containerd://<id>` etc.: the current ID and the last terminated one
    /// (a crashed container restarts under a new ID, and the status moves
    /// the old one to `lastState` while its core is still on the way).
    pub ids: Vec<String>,
}

/// What the agent keeps of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// The static pod's UID for a mirror pod.
    pub mirror_of: Option<String>,
    pub opted_out: bool,
    /// Regular, init and ephemeral containers.
    pub containers: Vec<ContainerRecord>,
    /// Names from the spec, for pods whose status lags.
    pub spec_containers: Vec<String>,
}

impl PodRecord {
    /// None for objects without the fields every pod has.
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let meta = &pod.metadata;
        let name = meta.name.clone()?;
        let namespace = meta.namespace.clone()?;
        let uid = meta.uid.clone()?.to_ascii_lowercase();
        let mirror_of = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(MIRROR_ANNOTATION))
            .map(|s| s.to_ascii_lowercase());
        let opted_out = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_CAPTURE))
            .is_some_and(|v| v == CAPTURE_DISABLED);
        let mut containers = Vec::new();
        if let Some(status) = &pod.status {
            for s in [
                &status.container_statuses,
                &status.init_container_statuses,
                &status.ephemeral_container_statuses,
            ]
            .into_iter()
            .flatten()
            .flatten()
            {
                containers.push(container_record(s));
            }
        }
        let mut spec_containers = Vec::new();
        if let Some(spec) = &pod.spec {
            spec_containers.extend(spec.containers.iter().map(|c| c.name.clone()));
            spec_containers.extend(
                spec.init_containers
                    .iter()
                    .flatten()
                    .map(|c| c.name.clone()),
            );
            spec_containers.extend(
                spec.ephemeral_containers
                    .iter()
                    .flatten()
                    .map(|c| c.name.clone()),
            );
        }
        Some(Self {
            name,
            namespace,
            uid,
            mirror_of,
            opted_out,
            containers,
            spec_containers,
        })
    }

    /// The container whose status names exactly the bare ID from the
    /// cgroup path (current or last terminated ID). Exact: an ID the status
    /// does not name is not this pod's container, whatever the path says.
    fn container(&self, bare_id: &str) -> Option<(&ContainerRecord, &str)> {
        if bare_id.is_empty() {
            return None;
        }
        self.containers.iter().find_map(|c| {
            c.ids
                .iter()
                .find(|full| strip_runtime(full) == bare_id)
                .map(|full| (c, full.as_str()))
        })
    }
}

fn container_record(s: &ContainerStatus) -> ContainerRecord {
    let mut ids = Vec::new();
    ids.extend(s.container_id.clone());
    let last = s
        .last_state
        .as_ref()
        .and_then(|l| l.terminated.as_ref())
        .and_then(|t| t.container_id.clone());
    ids.extend(last);
    ids.retain(|i| !i.is_empty());
    ContainerRecord {
        name: s.name.clone(),
        image: Some(s.image.clone()).filter(|i| !i.is_empty()),
        ids,
    }
}

/// `containerd://abc` → `abc`.
pub fn strip_runtime(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, hex)| hex)
}

/// The `scheme://` a cgroup's runtime prefix stands for, for a container
/// the pod status does not list (yet).
pub fn runtime_scheme(cgroup_runtime: Option<&str>) -> Option<&'static str> {
    match cgroup_runtime? {
        "cri-containerd" => Some("containerd"),
        "crio" => Some("cri-o"),
        "docker" => Some("docker"),
        _ => None,
    }
}

/// Who a core belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribution {
    pub pod_name: String,
    pub namespace: String,
    /// The pod's UID in the API (for a static pod: its mirror pod's).
    pub pod_uid: String,
    /// None when the pod is known but its status does not list the
    /// container yet.
    pub container_name: Option<String>,
    /// As the pod status has it, e.g. `containerd://<id>`.
    pub container_id: Option<String>,
    pub image: Option<String>,
    pub opted_out: bool,
    /// Names of the pod's containers from its spec.
    pub spec_containers: Vec<String>,
    /// The pod was deleted since.
    pub deleted: bool,
}

/// This node's pods and the namespaces' opt-out labels.
#[derive(Debug, Default)]
pub struct PodIndex {
    pods: HashMap<String, PodRecord>,
    /// Pods deleted recently, with when.
    gone: HashMap<String, (Instant, PodRecord)>,
    /// Pods seen since the last (re)list began; swapped in when it is done.
    relist: Option<HashMap<String, PodRecord>>,
    opted_out_namespaces: BTreeSet<String>,
    ns_relist: Option<BTreeSet<String>>,
    pods_synced_at: Option<Instant>,
    namespaces_synced: bool,
}

impl PodIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Both watches have listed everything once: lookups that miss now mean
    /// "not (yet) on this node", and the opt-out set is complete.
    pub fn synced(&self) -> bool {
        self.pods_synced_at.is_some() && self.namespaces_synced
    }

    /// When the pod list was first complete.
    pub fn synced_at(&self) -> Option<Instant> {
        self.pods_synced_at.filter(|_| self.namespaces_synced)
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    pub fn apply_pod(&mut self, pod: &Pod) {
        let Some(rec) = PodRecord::from_pod(pod) else {
            return;
        };
        self.gone.remove(&rec.uid);
        self.pods.insert(rec.uid.clone(), rec);
    }

    pub fn delete_pod(&mut self, pod: &Pod, now: Instant) {
        let Some(rec) = PodRecord::from_pod(pod) else {
            return;
        };
        // The object in a delete event is the last state; keep it, the
        // container IDs may be newer than what we had.
        self.pods.remove(&rec.uid);
        self.gone.insert(rec.uid.clone(), (now, rec));
        self.prune(now);
    }

    /// The pod watch starts (again) with a full list.
    pub fn begin_pod_relist(&mut self) {
        self.relist = Some(HashMap::new());
    }

    pub fn relist_pod(&mut self, pod: &Pod) {
        if let Some(rec) = PodRecord::from_pod(pod) {
            match &mut self.relist {
                Some(buf) => {
                    buf.insert(rec.uid.clone(), rec);
                }
                None => self.apply_pod(pod),
            }
        }
    }

    /// The list is complete: pods missing from it were deleted meanwhile.
    pub fn finish_pod_relist(&mut self, now: Instant) {
        let Some(new) = self.relist.take() else {
            return;
        };
        let old = std::mem::replace(&mut self.pods, new);
        for (uid, rec) in old {
            if !self.pods.contains_key(&uid) {
                self.gone.insert(uid, (now, rec));
            }
        }
        for uid in self.pods.keys() {
            self.gone.remove(uid);
        }
        self.pods_synced_at.get_or_insert(now);
        self.prune(now);
    }

    pub fn apply_namespace(&mut self, name: &str, opted_out: bool) {
        let set = self
            .ns_relist
            .as_mut()
            .unwrap_or(&mut self.opted_out_namespaces);
        if opted_out {
            set.insert(name.to_string());
        } else {
            set.remove(name);
        }
    }

    pub fn delete_namespace(&mut self, name: &str) {
        self.opted_out_namespaces.remove(name);
        if let Some(buf) = &mut self.ns_relist {
            buf.remove(name);
        }
    }

    pub fn begin_namespace_relist(&mut self) {
        self.ns_relist = Some(BTreeSet::new());
    }

    pub fn finish_namespace_relist(&mut self) {
        if let Some(set) = self.ns_relist.take() {
            self.opted_out_namespaces = set;
        }
        self.namespaces_synced = true;
    }

    fn prune(&mut self, now: Instant) {
        self.gone
            .retain(|_, (when, _)| now.saturating_duration_since(*when) < GONE_RETENTION);
    }

    fn is_opted_out(&self, rec: &PodRecord) -> bool {
        rec.opted_out || self.opted_out_namespaces.contains(&rec.namespace)
    }

    /// The pod with this cgroup UID: its own UID, or for a static pod the
    /// UID its mirror pod names.
    fn find(&self, cgroup_uid: &str) -> Option<(&PodRecord, bool)> {
        let uid = cgroup_uid.to_ascii_lowercase();
        let live = self.pods.get(&uid).or_else(|| {
            self.pods
                .values()
                .find(|p| p.mirror_of.as_deref() == Some(&uid))
        });
        if let Some(p) = live {
            return Some((p, false));
        }
        self.gone
            .get(&uid)
            .map(|(_, p)| p)
            .or_else(|| {
                self.gone
                    .values()
                    .map(|(_, p)| p)
                    .find(|p| p.mirror_of.as_deref() == Some(&uid))
            })
            .map(|p| (p, true))
    }

    /// Who a core with this cgroup pod UID and bare container ID belongs
    /// to; None when the pod is not known.
    pub fn lookup(&self, cgroup_uid: &str, container_id: Option<&str>) -> Option<Attribution> {
        let (pod, deleted) = self.find(cgroup_uid)?;
        let found = container_id.and_then(|id| pod.container(id));
        Some(Attribution {
            pod_name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            pod_uid: pod.uid.clone(),
            container_name: found.map(|(c, _)| c.name.clone()),
            container_id: found.map(|(_, full)| full.to_string()),
            image: found.and_then(|(c, _)| c.image.clone()),
            opted_out: self.is_opted_out(pod),
            spec_containers: pod.spec_containers.clone(),
            deleted,
        })
    }

    /// What `optout.json` must say: every opted-out pod by its UID (and,
    /// for a static pod, the UID in its cgroup path).
    pub fn optout(&self) -> OptOut {
        let mut out = OptOut::default();
        for pod in self.pods.values().filter(|p| self.is_opted_out(p)) {
            out.pod_uids.insert(pod.uid.clone());
            out.pod_uids.extend(pod.mirror_of.clone());
        }
        out
    }
}

/// The index shared by the watches and the delivery loop; `changed` wakes
/// whoever keeps `optout.json` current.
#[derive(Debug, Default, Clone)]
pub struct SharedIndex {
    inner: Arc<Mutex<PodIndex>>,
    pub changed: Arc<Notify>,
}

impl SharedIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// A poisoned lock only means a panic elsewhere; the data is still
    /// consistent enough to read.
    pub fn lock(&self) -> MutexGuard<'_, PodIndex> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut PodIndex)) {
        f(&mut self.lock());
        self.changed.notify_one();
    }
}

/// Keeps the index current with the pods bound to `node` until cancelled.
/// Watch errors are retried with the watcher's default backoff.
pub async fn watch_pods(
    client: kube::Client,
    node: String,
    index: SharedIndex,
    cancel: CancellationToken,
) {
    let api: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let stream = watcher::watcher(api, cfg).default_backoff();
    futures::pin_mut!(stream);
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return,
            n = stream.try_next() => n,
        };
        match next {
            Ok(Some(ev)) => index.update(|ix| match ev {
                Event::Init => ix.begin_pod_relist(),
                Event::InitApply(p) => ix.relist_pod(&p),
                Event::InitDone => ix.finish_pod_relist(Instant::now()),
                Event::Apply(p) => ix.apply_pod(&p),
                Event::Delete(p) => ix.delete_pod(&p, Instant::now()),
            }),
            Ok(None) => return,
            Err(e) => tracing::warn!(error = %e, "pod watch failed; retrying"),
        }
    }
}

/// Keeps the namespaces' opt-out labels current until cancelled (metadata
/// only: the labels are all that matters).
pub async fn watch_namespaces(client: kube::Client, index: SharedIndex, cancel: CancellationToken) {
    let api: Api<PartialObjectMeta<Namespace>> = Api::all(client);
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let disabled = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        m.labels
            .as_ref()
            .and_then(|l| l.get(LABEL_CAPTURE))
            .is_some_and(|v| v == CAPTURE_DISABLED)
    };
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return,
            n = stream.next() => n,
        };
        match next {
            Some(Ok(ev)) => index.update(|ix| match ev {
                Event::Init => ix.begin_namespace_relist(),
                Event::InitApply(ns) | Event::Apply(ns) => {
                    if let Some(name) = &ns.metadata.name {
                        ix.apply_namespace(name, disabled(&ns.metadata));
                    }
                }
                Event::InitDone => ix.finish_namespace_relist(),
                Event::Delete(ns) => {
                    if let Some(name) = &ns.metadata.name {
                        ix.delete_namespace(name);
                    }
                }
            }),
            Some(Err(e)) => tracing::warn!(error = %e, "namespace watch failed; retrying"),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const UID: &str = "0b6e2b53-6a8e-4c3c-9d0e-1f2a3b4c5d6e";
    const CID: &str = "4f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c";
    const OLD: &str = "1111111111111111111111111111111111111111111111111111111111111111";

    fn pod(name: &str, ns: &str, uid: &str, labels: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "uid": uid, "labels": labels},
            "spec": {
                "nodeName": "n1",
                "containers": [{"name": "app"}, {"name": "sidecar"}],
                "initContainers": [{"name": "init"}]
            },
            "status": {
                "containerStatuses": [
                    {"name": "app", "image": "registry/app:1", "imageID": "", "ready": false,
                     "restartCount": 1, "containerID": format!("containerd://{CID}"),
                     "lastState": {"terminated": {"exitCode": 139, "containerID": format!("containerd://{OLD}")}}},
                    {"name": "sidecar", "image": "registry/side:2", "imageID": "", "ready": true,
                     "restartCount": 0, "containerID": "containerd://2222222222222222222222222222222222222222222222222222222222222222"}
                ],
                "initContainerStatuses": [
                    {"name": "init", "image": "registry/init:3", "imageID": "", "ready": false,
                     "restartCount": 0, "containerID": "cri-o://3333333333333333333333333333333333333333333333333333333333333333"}
                ]
            }
        }))
        .unwrap()
    }

    fn synced(ix: &mut PodIndex) {
        ix.begin_pod_relist();
        ix.finish_pod_relist(Instant::now());
        ix.begin_namespace_relist();
        ix.finish_namespace_relist();
    }

    #[test]
    fn attributes_current_last_init_and_abbreviated_ids() {
        let mut ix = PodIndex::new();
        synced(&mut ix);
        ix.apply_pod(&pod("web-0", "shop", UID, json!({})));
        let a = ix.lookup(UID, Some(CID)).unwrap();
        assert_eq!(a.pod_name, "web-0");
        assert_eq!(a.namespace, "shop");
        assert_eq!(a.container_name.as_deref(), Some("app"));
        assert_eq!(a.container_id, Some(format!("containerd://{CID}")));
        assert_eq!(a.image.as_deref(), Some("registry/app:1"));
        assert!(!a.opted_out && !a.deleted);

        // The crashed container was already restarted: its ID is in lastState.
        let a = ix.lookup(UID, Some(OLD)).unwrap();
        assert_eq!(a.container_name.as_deref(), Some("app"));
        assert_eq!(a.container_id, Some(format!("containerd://{OLD}")));

        let a = ix.lookup(UID, Some(&"3".repeat(64))).unwrap();
        assert_eq!(a.container_name.as_deref(), Some("init"));
        assert_eq!(a.container_id, Some(format!("cri-o://{}", "3".repeat(64))));

        let a = ix.lookup(UID, Some(&"2".repeat(64))).unwrap();
        assert_eq!(a.container_name.as_deref(), Some("sidecar"));
        // Only what the status names: a prefix of an ID is not that ID.
        let a = ix.lookup(UID, Some(&"2".repeat(12))).unwrap();
        assert_eq!(a.container_name, None);

        // Pod known, container not (yet): no guess here.
        let a = ix.lookup(UID, Some(&"9".repeat(64))).unwrap();
        assert_eq!(a.container_name, None);
        assert_eq!(a.spec_containers, ["app", "sidecar", "init"]);
        assert!(ix
            .lookup("ffffffff-6a8e-4c3c-9d0e-1f2a3b4c5d6e", Some(CID))
            .is_none());
        // Cgroup UIDs are compared case-insensitively.
        assert!(ix.lookup(&UID.to_uppercase(), Some(CID)).is_some());
    }

    #[test]
    fn deleted_pods_are_remembered_for_late_cores() {
        let mut ix = PodIndex::new();
        synced(&mut ix);
        let p = pod("job-x", "batch", UID, json!({}));
        ix.apply_pod(&p);
        ix.delete_pod(&p, Instant::now());
        assert_eq!(ix.pod_count(), 0);
        let a = ix.lookup(UID, Some(CID)).unwrap();
        assert!(a.deleted);
        assert_eq!(a.container_name.as_deref(), Some("app"));
        // Long gone: forgotten.
        ix.delete_pod(
            &pod(
                "other",
                "batch",
                "aaaaaaaa-6a8e-4c3c-9d0e-1f2a3b4c5d6e",
                json!({}),
            ),
            Instant::now() + GONE_RETENTION * 2,
        );
        assert!(ix.lookup(UID, Some(CID)).is_none());
    }

    #[test]
    fn relist_replaces_and_remembers_what_vanished() {
        let mut ix = PodIndex::new();
        assert!(!ix.synced());
        ix.begin_pod_relist();
        ix.relist_pod(&pod("a", "ns", UID, json!({})));
        // Not visible before the list is complete.
        assert!(ix.lookup(UID, None).is_none());
        ix.finish_pod_relist(Instant::now());
        assert!(!ix.synced(), "namespaces not listed yet");
        ix.begin_namespace_relist();
        ix.finish_namespace_relist();
        assert!(ix.synced());
        assert!(ix.lookup(UID, None).is_some());
        // A re-list without the pod: it was deleted while the watch was down.
        ix.begin_pod_relist();
        ix.finish_pod_relist(Instant::now());
        assert!(ix.lookup(UID, None).unwrap().deleted);
    }

    #[test]
    fn optout_by_pod_label_namespace_label_and_static_pod_uid() {
        let mut ix = PodIndex::new();
        synced(&mut ix);
        ix.apply_pod(&pod(
            "quiet",
            "a",
            UID,
            json!({LABEL_CAPTURE: CAPTURE_DISABLED}),
        ));
        let in_quiet_ns = "cccccccc-6a8e-4c3c-9d0e-1f2a3b4c5d6e";
        ix.apply_pod(&pod("loud", "b", in_quiet_ns, json!({})));
        ix.apply_pod(&pod(
            "other",
            "a",
            "dddddddd-6a8e-4c3c-9d0e-1f2a3b4c5d6e",
            json!({LABEL_CAPTURE: "enabled"}),
        ));
        let mut mirror = pod(
            "etcd-n1",
            "kube-system",
            "eeeeeeee-6a8e-4c3c-9d0e-1f2a3b4c5d6e",
            json!({LABEL_CAPTURE: CAPTURE_DISABLED}),
        );
        let hash = "0123456789abcdef0123456789abcdef";
        mirror.metadata.annotations =
            Some([(MIRROR_ANNOTATION.to_string(), hash.to_string())].into());
        ix.apply_pod(&mirror);
        assert_eq!(
            ix.optout().pod_uids,
            BTreeSet::from([
                UID.to_string(),
                "eeeeeeee-6a8e-4c3c-9d0e-1f2a3b4c5d6e".to_string(),
                hash.to_string()
            ])
        );
        // The static pod's cores carry the hash in their cgroup path.
        let a = ix.lookup(hash, None).unwrap();
        assert_eq!(a.pod_name, "etcd-n1");
        assert!(a.opted_out);

        ix.apply_namespace("b", true);
        assert!(ix.optout().pod_uids.contains(in_quiet_ns));
        assert!(ix.lookup(in_quiet_ns, None).unwrap().opted_out);
        ix.apply_namespace("b", false);
        assert!(!ix.optout().pod_uids.contains(in_quiet_ns));
        ix.apply_namespace("b", true);
        ix.delete_namespace("b");
        assert!(!ix.lookup(in_quiet_ns, None).unwrap().opted_out);
    }

    #[test]
    fn runtime_schemes() {
        assert_eq!(strip_runtime("containerd://abc"), "abc");
        assert_eq!(strip_runtime("abc"), "abc");
        assert_eq!(runtime_scheme(Some("cri-containerd")), Some("containerd"));
        assert_eq!(runtime_scheme(Some("crio")), Some("cri-o"));
        assert_eq!(runtime_scheme(None), None);
    }
}
