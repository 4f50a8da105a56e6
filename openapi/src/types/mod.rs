//! The API types of `coredump.io/v1alpha1` and what belongs to them: kind constants, labels,
//! byte-quantity and duration helpers, and validation.
//!
//! The doc comments on the fields below are not only Rust documentation: they become the
//! `description`s of the OpenAPI documents (what `kubectl explain` prints), so they are written
//! for users of the API.

mod duration;
mod quantity;
mod validation;

pub mod analysis;

pub use analysis::{
    crash_group_name, is_fingerprint, AnalysisState, CrashAnalysis, CrashCause, CrashGroup,
    CrashGroupSpec, CrashGroupStatus, CrashOccurrence, CrashSignal, MappedModule, StackFrame,
    ThreadSummary, ThreadTrace, CRASH_GROUP,
};
pub use duration::{human_duration, parse_duration, DurationError};
pub use quantity::{
    bytes_quantity, format_bytes, human_bytes, parse_bytes, quantity_bytes, QuantityError,
};
pub use validation::{
    validate_coredump, validate_coredump_quota, validate_coredump_update, validate_name,
    validate_namespace_name, FieldError, MAX_EXECUTABLE, MAX_MESSAGE, MAX_REASON,
};

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use schemars::JsonSchema;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use crate::{API_VERSION, GROUP, VERSION};

/// Longest `spec.commandLine` accepted, in bytes. The node handler cuts longer command lines.
pub const MAX_COMMAND_LINE: usize = 4096;

/// Label (on a pod or a namespace) that controls capture: the value [`CAPTURE_DISABLED`] opts
/// the pod, or every pod of the namespace, out of core dump capture.
pub const LABEL_CAPTURE: &str = "coredump.io/capture";
/// The value of [`LABEL_CAPTURE`] that disables capture.
pub const CAPTURE_DISABLED: &str = "disabled";
/// Label the node handler puts on every `Coredump`: the node it was captured on.
pub const LABEL_NODE: &str = "coredump.io/node";
/// Label the node handler puts on every `Coredump`: the name of the pod that dumped core.
pub const LABEL_POD: &str = "coredump.io/pod";
/// Label the node handler puts on every `Coredump`: the name of the container that dumped core.
pub const LABEL_CONTAINER: &str = "coredump.io/container";

/// Key of [`CoredumpQuotaSpec::hard`] / [`CoredumpQuotaStatus::used`]: bytes of stored cores.
pub const QUOTA_STORAGE: &str = "storage";
/// Key of [`CoredumpQuotaSpec::hard`] / [`CoredumpQuotaStatus::used`]: number of stored cores.
pub const QUOTA_COUNT: &str = "count";

/// A subresource of a kind, as discovery and the OpenAPI documents describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubresourceInfo {
    /// The path segment after the object name, e.g. `status`.
    pub name: &'static str,
    /// The kind discovery reports for the subresource (client-go drops subresources without one).
    pub kind: &'static str,
    /// The Kubernetes verbs the subresource supports, sorted.
    pub verbs: &'static [&'static str],
}

/// Names and capabilities of one kind of this API group, the single source for discovery, the
/// OpenAPI documents and the server's routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindInfo {
    /// The kind, e.g. `Coredump`.
    pub kind: &'static str,
    /// The kind of a list of it, e.g. `CoredumpList`.
    pub list_kind: &'static str,
    /// The resource name in URLs, e.g. `coredumps`.
    pub plural: &'static str,
    /// The singular resource name, e.g. `coredump`.
    pub singular: &'static str,
    /// Short names kubectl accepts, e.g. `cdump`.
    pub short_names: &'static [&'static str],
    /// Categories (`kubectl get <category>`).
    pub categories: &'static [&'static str],
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// The Kubernetes verbs the resource itself supports, sorted.
    pub verbs: &'static [&'static str],
    /// Its subresources.
    pub subresources: &'static [SubresourceInfo],
}

impl KindInfo {
    /// The subresource with this name, if the kind has it.
    pub fn subresource(&self, name: &str) -> Option<&'static SubresourceInfo> {
        self.subresources.iter().find(|s| s.name == name)
    }
}

/// Every verb a stored resource supports.
const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
/// Verbs of a `status` subresource.
const STATUS_VERBS: &[&str] = &["get", "patch", "update"];

/// Core dumps are not workloads, so they stay out of `all`; `kubectl get cores` lists both
/// kinds. A category must not equal any resource name or short name: kubectl expands
/// categories first, so a category `coredump` would turn `kubectl delete coredump x` into a
/// request for both kinds, which kubectl refuses ("you must specify only one resource").
const CATEGORIES: &[&str] = &["cores"];

/// The `Coredump` kind.
pub const COREDUMP: KindInfo = KindInfo {
    kind: "Coredump",
    list_kind: "CoredumpList",
    plural: "coredumps",
    singular: "coredump",
    short_names: &["cdump"],
    categories: CATEGORIES,
    namespaced: true,
    verbs: ALL_VERBS,
    subresources: &[
        SubresourceInfo {
            name: "status",
            kind: "Coredump",
            verbs: STATUS_VERBS,
        },
        // Returns the core file's bytes, not a Coredump; discovery still needs a kind.
        SubresourceInfo {
            name: "download",
            kind: "Coredump",
            verbs: &["get"],
        },
        // PUT of the core file's bytes; answers with the updated Coredump.
        SubresourceInfo {
            name: "upload",
            kind: "Coredump",
            verbs: &["update"],
        },
    ],
};

/// The `CoredumpQuota` kind.
pub const COREDUMP_QUOTA: KindInfo = KindInfo {
    kind: "CoredumpQuota",
    list_kind: "CoredumpQuotaList",
    plural: "coredumpquotas",
    singular: "coredumpquota",
    short_names: &["cdquota"],
    categories: CATEGORIES,
    namespaced: true,
    verbs: ALL_VERBS,
    subresources: &[SubresourceInfo {
        name: "status",
        kind: "CoredumpQuota",
        verbs: STATUS_VERBS,
    }],
};

/// All kinds of the group, in the order discovery lists them.
pub const KINDS: [&KindInfo; 3] = [&COREDUMP, &COREDUMP_QUOTA, &CRASH_GROUP];

/// The kind whose plural resource name is `plural`.
pub fn kind_by_plural(plural: &str) -> Option<&'static KindInfo> {
    KINDS.into_iter().find(|k| k.plural == plural)
}

/// The OpenAPI schema name of one of this group's kinds, Kubernetes style
/// (`io.coredump.v1alpha1.Coredump`: the group's DNS labels reversed).
pub fn schema_name(kind: &str) -> String {
    let mut reversed: Vec<&str> = GROUP.split('.').collect();
    reversed.reverse();
    format!("{}.{VERSION}.{kind}", reversed.join("."))
}

/// A core dump of a process in a container: where and when it happened, which signal killed the
/// process, and the size and checksum of the core file.
///
/// The node handler creates a Coredump when the kernel hands it a core, then uploads the core
/// file to the upload subresource; users fetch it from the download subresource. The spec
/// never changes after creation; the server maintains the status.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(
    rename = "io.coredump.v1alpha1.Coredump",
    transform = coredump_schema_transform
)]
pub struct Coredump {
    /// Standard object metadata. The node handler sets the labels coredump.io/node,
    /// coredump.io/pod and coredump.io/container.
    #[serde(default)]
    pub metadata: ObjectMeta,

    /// What was dumped, set by the node handler at creation. Immutable.
    pub spec: CoredumpSpec,

    /// Where the core file stands: pending upload, stored, rejected by quota, or failed. Set by
    /// the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<CoredumpStatus>,
}

/// What was dumped: the container and process, the signal, and the core file's size and
/// checksum.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.coredump.v1alpha1.CoredumpSpec")]
pub struct CoredumpSpec {
    /// Name of the node the process ran on.
    #[serde(default)]
    pub node_name: String,

    /// Name of the pod, in the Coredump's namespace, whose container dumped core.
    #[serde(default)]
    pub pod_name: String,

    /// UID of that pod: tells apart pods that reused a name.
    #[serde(default, rename = "podUID")]
    pub pod_uid: String,

    /// Name of the container, as in the pod spec.
    #[serde(default)]
    pub container_name: String,

    /// Container ID as the pod status reports it, e.g. containerd://0123abcd...
    #[serde(
        default,
        rename = "containerID",
        skip_serializing_if = "Option::is_none"
    )]
    pub container_id: Option<String>,

    /// Image the container ran, as the pod status reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// Process ID of the dumping process in the container's PID namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i64>,

    /// Process ID of the dumping process in the node's PID namespace.
    #[serde(default, rename = "hostPID", skip_serializing_if = "Option::is_none")]
    pub host_pid: Option<i64>,

    /// Number of the signal that caused the dump, 1 to 64 (e.g. 11 for SIGSEGV).
    #[serde(default)]
    pub signal: i32,

    /// Name of that signal, e.g. SIGSEGV.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal_name: Option<String>,

    /// Path of the executable inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,

    /// Command line of the process, arguments separated by spaces; at most 4096 bytes, longer
    /// ones are cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_line: Option<String>,

    /// Real user ID of the process, as seen in the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<i64>,

    /// Real group ID of the process, as seen in the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<i64>,

    /// When the kernel produced the core, in RFC 3339 form.
    pub dump_time: Time,

    /// Size of the core file in bytes, uncompressed (e.g. 1536Mi). If truncated is true this is
    /// the size kept, not the size the process had.
    #[serde(default)]
    pub size: Quantity,

    /// Bytes the core file takes in storage, after compression. Counts against the storage
    /// limit of the namespace's CoredumpQuota.
    #[serde(default)]
    pub stored_size: Quantity,

    /// SHA-256 checksum of the uncompressed core file, 64 lowercase hexadecimal digits. Check a
    /// download against it.
    #[serde(default)]
    pub sha256: String,

    /// True when the node handler cut the core file at its size limit; such a core may be of
    /// little use to a debugger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,

    /// Why it crashed and where, read on the node before upload: signal details, probable
    /// cause, the crashing thread's frames, the other threads, the mapped modules, the
    /// crash signature and the fingerprint that groups it (see CrashGroup). At most 64 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<CrashAnalysis>,
}

/// Where a core file stands. Pending: the Coredump exists and the core file is being uploaded.
/// Stored: the core file is stored and can be downloaded. Rejected: the namespace's
/// CoredumpQuota had no room, the core file was dropped. Failed: the upload or storage failed,
/// see message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[schemars(inline)]
// Variants are named, not documented: see the note inside.
#[allow(missing_docs)]
pub enum CoredumpPhase {
    // No doc comments on the variants: with them schemars would describe the enum as a oneOf
    // of constants instead of a string enum, whose values kubectl explain lists.
    Pending,
    Stored,
    Rejected,
    Failed,
}

impl CoredumpPhase {
    /// The phase as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            CoredumpPhase::Pending => "Pending",
            CoredumpPhase::Stored => "Stored",
            CoredumpPhase::Rejected => "Rejected",
            CoredumpPhase::Failed => "Failed",
        }
    }
}

impl std::fmt::Display for CoredumpPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the server set a Coredump's phase, as written in `status.reason` (the wire keeps the
/// field a string, so a status written by someone else still decodes; the server writes
/// only these values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CoredumpReason {
    /// Rejected: the namespace's CoredumpQuota (or the server default) had no room.
    QuotaExceeded,
    /// Failed: no core was uploaded within the server's --pending-timeout.
    UploadTimeout,
    /// Failed: the core of a Stored Coredump is gone from the core storage.
    CoreMissing,
}

/// The reason of a Kubernetes Event the server records about a Coredump.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventReason {
    /// The quota refused the core (a Warning).
    Rejected,
    /// The core was uploaded and stored.
    Stored,
    /// The upload or storage failed (a Warning; the message names the status reason).
    Failed,
    /// Deleted to make room for a newer core (the quota's evictOldest).
    Evicted,
    /// Deleted because it was older than its quota's maxAge.
    DeletedByRetention,
}

macro_rules! str_enum {
    ($t:ident { $($v:ident),* $(,)? }) => {
        impl $t {
            /// The value as serialized.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($t::$v => stringify!($v),)*
                }
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

str_enum!(CoredumpReason {
    QuotaExceeded,
    UploadTimeout,
    CoreMissing
});
str_enum!(EventReason {
    Rejected,
    Stored,
    Failed,
    Evicted,
    DeletedByRetention
});

/// Where the core file stands, maintained by the server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.coredump.v1alpha1.CoredumpStatus")]
pub struct CoredumpStatus {
    /// Pending while the core file is uploaded, Stored once it can be downloaded, Rejected when
    /// the namespace's quota had no room for it, Failed when the upload or storage failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<CoredumpPhase>,

    /// Machine-readable reason for the phase, in CamelCase, e.g. QuotaExceeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,

    /// Human-readable details about the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// When the core file was stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_at: Option<Time>,
}

/// Limits on the core dumps kept in a namespace. The server checks them when a core file is
/// uploaded: a core that does not fit is rejected, or, with evictOldest, the oldest stored
/// cores are deleted to make room. Cores older than maxAge are deleted.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(
    rename = "io.coredump.v1alpha1.CoredumpQuota",
    transform = coredump_quota_schema_transform
)]
pub struct CoredumpQuota {
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,

    /// The limits.
    #[serde(default)]
    pub spec: CoredumpQuotaSpec,

    /// Limits in force and current usage. Set by the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<CoredumpQuotaStatus>,
}

/// The limits of a CoredumpQuota.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.coredump.v1alpha1.CoredumpQuotaSpec")]
pub struct CoredumpQuotaSpec {
    /// Hard limits by resource name. storage: total bytes of stored core files, after
    /// compression (e.g. 10Gi). count: number of stored core files. A resource left out is not
    /// limited.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hard: BTreeMap<String, Quantity>,

    /// Stored cores older than this are deleted. A duration such as 720h, 90m or 1h30m (units
    /// h, m, s, ms, us, ns). Unset keeps cores until deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,

    /// When a new core does not fit the hard limits: true deletes the oldest stored cores of
    /// the namespace until it fits; false (the default) rejects the new core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evict_oldest: Option<bool>,
}

/// Limits in force and current usage of a CoredumpQuota.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.coredump.v1alpha1.CoredumpQuotaStatus")]
pub struct CoredumpQuotaStatus {
    /// The hard limits the server enforces, by resource name (storage, count).
    #[serde(default)]
    pub hard: BTreeMap<String, Quantity>,

    /// Current usage by resource name: storage is the bytes of stored core files after
    /// compression, count the number of stored core files.
    #[serde(default)]
    pub used: BTreeMap<String, Quantity>,
}

/// Serializes an object with `apiVersion` and `kind` first, as Kubernetes clients expect.
fn serialize_object<S, Spec, Status>(
    serializer: S,
    info: &KindInfo,
    metadata: &ObjectMeta,
    spec: &Spec,
    status: Option<&Status>,
) -> Result<S::Ok, S::Error>
where
    S: Serializer,
    Spec: Serialize,
    Status: Serialize,
{
    let fields = if status.is_some() { 5 } else { 4 };
    let mut s = serializer.serialize_struct(info.kind, fields)?;
    s.serialize_field("apiVersion", API_VERSION)?;
    s.serialize_field("kind", info.kind)?;
    s.serialize_field("metadata", metadata)?;
    s.serialize_field("spec", spec)?;
    match status {
        Some(status) => s.serialize_field("status", status)?,
        None => s.skip_field("status")?,
    }
    s.end()
}

// Hand-written so that apiVersion and kind are always written; deserialization (derived)
// ignores them, the server checks them itself.
impl Serialize for Coredump {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_object(
            serializer,
            &COREDUMP,
            &self.metadata,
            &self.spec,
            self.status.as_ref(),
        )
    }
}

impl Serialize for CoredumpQuota {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_object(
            serializer,
            &COREDUMP_QUOTA,
            &self.metadata,
            &self.spec,
            self.status.as_ref(),
        )
    }
}

impl k8s_openapi::Resource for Coredump {
    const API_VERSION: &'static str = API_VERSION;
    const GROUP: &'static str = GROUP;
    const KIND: &'static str = COREDUMP.kind;
    const VERSION: &'static str = VERSION;
    const URL_PATH_SEGMENT: &'static str = COREDUMP.plural;
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::ListableResource for Coredump {
    const LIST_KIND: &'static str = COREDUMP.list_kind;
}

impl k8s_openapi::Metadata for Coredump {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl k8s_openapi::Resource for CoredumpQuota {
    const API_VERSION: &'static str = API_VERSION;
    const GROUP: &'static str = GROUP;
    const KIND: &'static str = COREDUMP_QUOTA.kind;
    const VERSION: &'static str = VERSION;
    const URL_PATH_SEGMENT: &'static str = COREDUMP_QUOTA.plural;
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::ListableResource for CoredumpQuota {
    const LIST_KIND: &'static str = COREDUMP_QUOTA.list_kind;
}

impl k8s_openapi::Metadata for CoredumpQuota {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Description of `apiVersion` in every top-level schema.
pub(crate) const API_VERSION_DESCRIPTION: &str = "APIVersion names the versioned schema of this \
    representation of an object. Servers convert recognized schemas to their latest internal \
    version and may reject unrecognized values. More info: \
    https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources";

/// Description of `kind` in every top-level schema.
pub(crate) const KIND_DESCRIPTION: &str = "Kind is the REST resource this object represents, in \
    CamelCase. Servers may infer it from the endpoint the client sends requests to. Cannot be \
    updated. More info: \
    https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";

/// The `x-kubernetes-group-version-kind` array of a schema describing `kind` of this group.
pub(crate) fn gvk_extension(kind: &str) -> serde_json::Value {
    serde_json::json!([{ "group": GROUP, "version": VERSION, "kind": kind }])
}

/// Adds what a top-level kind's schema has beyond its Rust fields: `apiVersion`, `kind`, and the
/// `x-kubernetes-group-version-kind` that `kubectl explain` looks schemas up by. `metadata` is
/// optional on the wire (the server fills it in), so it is not required.
fn add_type_meta(schema: &mut schemars::Schema, kind: &str) {
    let obj = schema.ensure_object();
    if let Some(props) = obj
        .get_mut("properties")
        .and_then(serde_json::Value::as_object_mut)
    {
        props.insert(
            "apiVersion".into(),
            serde_json::json!({ "type": "string", "description": API_VERSION_DESCRIPTION }),
        );
        props.insert(
            "kind".into(),
            serde_json::json!({ "type": "string", "description": KIND_DESCRIPTION }),
        );
    }
    if let Some(required) = obj
        .get_mut("required")
        .and_then(serde_json::Value::as_array_mut)
    {
        required.retain(|r| r != "metadata");
    }
    obj.insert(
        "x-kubernetes-group-version-kind".into(),
        gvk_extension(kind),
    );
}

fn coredump_schema_transform(schema: &mut schemars::Schema) {
    add_type_meta(schema, COREDUMP.kind);
}

fn coredump_quota_schema_transform(schema: &mut schemars::Schema) {
    add_type_meta(schema, COREDUMP_QUOTA.kind);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample_spec() -> serde_json::Value {
        json!({
            "nodeName": "node-1",
            "podName": "web-0",
            "podUID": "6f1c1a4e-0000-4000-8000-000000000001",
            "containerName": "app",
            "signal": 11,
            "dumpTime": "2025-01-02T03:04:05Z",
            "size": "1Mi",
            "storedSize": "200k",
            "sha256": "a".repeat(64),
        })
    }

    #[test]
    fn coredump_serializes_type_meta_and_camel_case() {
        let cd: Coredump = serde_json::from_value(json!({
            "metadata": {"name": "x", "namespace": "ns"},
            "spec": sample_spec(),
        }))
        .expect("valid coredump");
        let v = serde_json::to_value(&cd).expect("serializable");
        assert_eq!(v["apiVersion"], "coredump.io/v1alpha1");
        assert_eq!(v["kind"], "Coredump");
        assert_eq!(v["spec"]["podUID"], "6f1c1a4e-0000-4000-8000-000000000001");
        assert_eq!(v["spec"]["dumpTime"], "2025-01-02T03:04:05Z");
        // Optional fields left out, not null.
        assert!(v["spec"].get("pid").is_none());
        assert!(v["spec"].get("truncated").is_none());
        assert!(v.get("status").is_none());
    }

    #[test]
    fn coredump_accepts_type_meta_present_or_absent() {
        let with: Coredump = serde_json::from_value(json!({
            "apiVersion": "coredump.io/v1alpha1",
            "kind": "Coredump",
            "metadata": {"name": "x"},
            "spec": sample_spec(),
            "status": {"phase": "Stored", "storedAt": "2025-01-02T03:04:06Z"},
        }))
        .expect("with type meta");
        let without: Coredump = serde_json::from_value(json!({
            "metadata": {"name": "x"},
            "spec": sample_spec(),
            "status": {"phase": "Stored", "storedAt": "2025-01-02T03:04:06Z"},
        }))
        .expect("without type meta");
        assert_eq!(with, without);
        assert_eq!(
            with.status.and_then(|s| s.phase),
            Some(CoredumpPhase::Stored)
        );
    }

    #[test]
    fn round_trip() {
        let mut spec = sample_spec();
        spec["containerID"] = json!("containerd://abc");
        spec["hostPID"] = json!(4242);
        spec["pid"] = json!(1);
        spec["truncated"] = json!(true);
        let input = json!({
            "apiVersion": "coredump.io/v1alpha1",
            "kind": "Coredump",
            "metadata": {"name": "x", "labels": {LABEL_NODE: "node-1"}},
            "spec": spec,
            "status": {"phase": "Rejected", "reason": "QuotaExceeded", "message": "full"},
        });
        let cd: Coredump = serde_json::from_value(input.clone()).expect("valid");
        assert_eq!(serde_json::to_value(&cd).expect("serializable"), input);
    }

    #[test]
    fn quota_round_trip() {
        let input = json!({
            "apiVersion": "coredump.io/v1alpha1",
            "kind": "CoredumpQuota",
            "metadata": {"name": "default", "namespace": "ns"},
            "spec": {"hard": {"storage": "10Gi", "count": "20"}, "maxAge": "720h", "evictOldest": true},
            "status": {"hard": {"storage": "10Gi"}, "used": {"storage": "1Gi", "count": "3"}},
        });
        let q: CoredumpQuota = serde_json::from_value(input.clone()).expect("valid");
        assert_eq!(serde_json::to_value(&q).expect("serializable"), input);
    }

    #[test]
    fn unknown_phase_is_rejected() {
        let r: Result<CoredumpStatus, _> = serde_json::from_value(json!({"phase": "Gone"}));
        assert!(r.is_err());
    }

    #[test]
    fn kind_constants() {
        use k8s_openapi::{ListableResource, Resource};
        assert_eq!(<Coredump as Resource>::KIND, "Coredump");
        assert_eq!(<Coredump as ListableResource>::LIST_KIND, "CoredumpList");
        assert_eq!(
            <CoredumpQuota as Resource>::URL_PATH_SEGMENT,
            "coredumpquotas"
        );
        assert_eq!(kind_by_plural("coredumps"), Some(&COREDUMP));
        assert_eq!(kind_by_plural("pods"), None);
        assert_eq!(schema_name("Coredump"), "io.coredump.v1alpha1.Coredump");
        let names: Vec<&str> = KINDS
            .iter()
            .flat_map(|k| {
                [k.plural, k.singular]
                    .into_iter()
                    .chain(k.short_names.iter().copied())
            })
            .collect();
        for k in KINDS {
            for c in k.categories {
                assert!(!names.contains(c), "category {c} shadows a resource name");
            }
            assert!(k.verbs.windows(2).all(|w| w[0] < w[1]), "verbs sorted");
            for s in k.subresources {
                assert!(!s.kind.is_empty());
            }
        }
    }

    #[test]
    fn reasons_serialize_as_their_names() {
        for r in [
            CoredumpReason::QuotaExceeded,
            CoredumpReason::UploadTimeout,
            CoredumpReason::CoreMissing,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
            assert_eq!(
                serde_json::from_value::<CoredumpReason>(r.as_str().into()).unwrap(),
                r
            );
        }
        assert_eq!(CoredumpReason::QuotaExceeded.as_str(), "QuotaExceeded");
        for r in [
            EventReason::Rejected,
            EventReason::Stored,
            EventReason::Failed,
            EventReason::Evicted,
            EventReason::DeletedByRetention,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        assert_eq!(
            EventReason::DeletedByRetention.to_string(),
            "DeletedByRetention"
        );
    }
}
