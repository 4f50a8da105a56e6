//! Typed test objects: a core with its compressed form and checksum, and the Coredump and
//! CoredumpQuota bodies of the tests, built one way for every test ([`CoredumpFixture`],
//! [`QuotaFixture`]): a test names only the fields it is about, the rest are the valid
//! defaults, so the same object is spelled the same everywhere.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::Error;

pub const API: &str = "/apis/coredump.io/v1alpha1";
/// The pod UID the fixtures claim (the server checks it only for node identities).
pub const POD_UID: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";

/// A core's bytes as the node agent would send them.
pub struct Core {
    pub raw: Vec<u8>,
    pub zst: Vec<u8>,
    pub sha: String,
}

impl Core {
    /// `len` bytes of repeated text with the seed mixed in (compresses, differs by seed).
    pub fn text(len: usize, seed: u64) -> Self {
        let line = format!("stack frame {seed:016x}: main -> crash_here -> abort\n");
        let raw: Vec<u8> = line.bytes().cycle().take(len).collect();
        Self::from_raw(raw)
    }

    pub fn from_raw(raw: Vec<u8>) -> Self {
        let zst = zstd::encode_all(&raw[..], 3).unwrap_or_default();
        let sha = hex::encode(Sha256::digest(&raw));
        Self { raw, zst, sha }
    }
}

/// A large core streamed into `dir/core.zst` without holding it in memory: zero pages
/// with 1 MiB of pseudo-random bytes every 64 MiB (the same bytes for the same size).
/// Returns the file, the raw size and the raw sha256.
pub fn big_core(
    dir: &std::path::Path,
    size: u64,
) -> Result<(std::path::PathBuf, u64, String), Error> {
    use std::io::Write;
    let path = dir.join("core.zst");
    let io = |e| Error::Io(format!("write {}", path.display()), e);
    let mut hasher = Sha256::new();
    let file = std::fs::File::create(&path).map_err(io)?;
    let mut enc = zstd::stream::write::Encoder::new(file, 1).map_err(io)?;
    let zeros = vec![0u8; 1 << 20];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for mib in 0..(size >> 20) {
        let chunk: Vec<u8> = if mib % 64 == 0 {
            (0..1 << 20)
                .map(|_| {
                    // xorshift: reproducible noise without a dependency.
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 24) as u8
                })
                .collect()
        } else {
            zeros.clone()
        };
        hasher.update(&chunk);
        enc.write_all(&chunk).map_err(io)?;
    }
    enc.finish().map_err(io)?;
    Ok((path, size, hex::encode(hasher.finalize())))
}

/// A Coredump body for the tests, field by field: [`CoredumpFixture::new`] starts from a
/// valid object of pod `web` on `node-a` (SIGSEGV, a 1 MiB core of an all-zero sha256), the
/// methods change one field each, and [`CoredumpFixture::build`] gives the JSON. The
/// invariant: a fixture nobody changed is one the server accepts; invalid objects come
/// only from a method's deliberately invalid argument or from [`CoredumpFixture::spec`].
#[derive(Clone, Debug)]
pub struct CoredumpFixture {
    namespace: String,
    name: String,
    labels: Map<String, Value>,
    annotations: Map<String, Value>,
    finalizers: Vec<String>,
    node: String,
    pod: String,
    pod_uid: String,
    container: String,
    image: Option<String>,
    executable: Option<String>,
    signal: i64,
    signal_name: Option<String>,
    dump_time: String,
    size: String,
    stored_size: String,
    sha256: String,
    /// Raw `spec` fields set last, over the typed ones.
    extra_spec: Map<String, Value>,
}

impl CoredumpFixture {
    /// Coredump `ns/name` with the defaults above.
    pub fn new(ns: &str, name: &str) -> Self {
        Self {
            namespace: ns.to_string(),
            name: name.to_string(),
            labels: Map::new(),
            annotations: Map::new(),
            finalizers: Vec::new(),
            node: "node-a".into(),
            pod: "web".into(),
            pod_uid: POD_UID.into(),
            container: "main".into(),
            image: None,
            executable: None,
            signal: 11,
            signal_name: Some("SIGSEGV".into()),
            dump_time: "2026-11-25T09:00:00Z".into(),
            size: "1Mi".into(),
            stored_size: "100Ki".into(),
            sha256: "0".repeat(64),
            extra_spec: Map::new(),
        }
    }

    /// Describes `core`: its raw size, compressed size and sha256.
    pub fn core(self, core: &Core) -> Self {
        self.size(core.raw.len())
            .stored_size(core.zst.len())
            .sha(&core.sha)
    }

    pub fn node(mut self, node: &str) -> Self {
        self.node = node.into();
        self
    }

    pub fn pod(mut self, pod: &str) -> Self {
        self.pod = pod.into();
        self
    }

    pub fn pod_uid(mut self, uid: &str) -> Self {
        self.pod_uid = uid.into();
        self
    }

    pub fn container(mut self, container: &str) -> Self {
        self.container = container.into();
        self
    }

    pub fn image(mut self, image: &str) -> Self {
        self.image = Some(image.into());
        self
    }

    pub fn executable(mut self, path: &str) -> Self {
        self.executable = Some(path.into());
        self
    }

    /// `spec.signal`, with no `signalName` (as from an agent that does not name it);
    /// [`Self::signal_name`] adds one.
    pub fn signal(mut self, number: i64) -> Self {
        self.signal = number;
        self.signal_name = None;
        self
    }

    pub fn signal_name(mut self, name: &str) -> Self {
        self.signal_name = Some(name.into());
        self
    }

    /// `spec.dumpTime`, RFC 3339.
    pub fn dump_time(mut self, time: &str) -> Self {
        self.dump_time = time.into();
        self
    }

    /// `spec.size`: bytes (`100`) or a quantity (`"1Mi"`).
    pub fn size(mut self, size: impl ToString) -> Self {
        self.size = size.to_string();
        self
    }

    /// `spec.storedSize`: bytes or a quantity.
    pub fn stored_size(mut self, size: impl ToString) -> Self {
        self.stored_size = size.to_string();
        self
    }

    /// `spec.sha256` of the raw core.
    pub fn sha(mut self, sha256: &str) -> Self {
        self.sha256 = sha256.into();
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }

    pub fn finalizer(mut self, finalizer: &str) -> Self {
        self.finalizers.push(finalizer.into());
        self
    }

    /// Sets `spec.analysis` with a fingerprint made from `bug`, a signature and a cause.
    pub fn analysis(self, bug: &str, signature: &str, cause: &str) -> Self {
        self.spec(
            "analysis",
            json!({
                "state": "Complete",
                "signal": {"number": 11, "name": "SIGSEGV", "code": 1, "codeName": "SEGV_MAPERR", "faultAddress": "0x0"},
                "cause": cause,
                "signature": signature,
                "fingerprint": fingerprint(bug),
                "crashingThread": {"tid": 42, "frames": [
                    {"function": signature, "module": "/bin/app", "offset": "0x1139", "inApp": true}
                ]},
            }),
        )
    }

    /// Sets `spec.<field>` to any JSON, over the typed fields: for fields the fixture does
    /// not model and for values of the wrong type or unknown fields.
    pub fn spec(mut self, field: &str, value: Value) -> Self {
        self.extra_spec.insert(field.into(), value);
        self
    }

    pub fn build(self) -> Value {
        let mut metadata = json!({"name": self.name, "namespace": self.namespace});
        if !self.labels.is_empty() {
            metadata["labels"] = Value::Object(self.labels);
        }
        if !self.annotations.is_empty() {
            metadata["annotations"] = Value::Object(self.annotations);
        }
        if !self.finalizers.is_empty() {
            metadata["finalizers"] = json!(self.finalizers);
        }
        let mut spec = json!({
            "nodeName": self.node, "podName": self.pod, "podUID": self.pod_uid,
            "containerName": self.container, "signal": self.signal,
            "dumpTime": self.dump_time,
            "size": self.size, "storedSize": self.stored_size, "sha256": self.sha256,
        });
        if let Some(name) = self.signal_name {
            spec["signalName"] = name.into();
        }
        if let Some(image) = self.image {
            spec["image"] = image.into();
        }
        if let Some(executable) = self.executable {
            spec["executable"] = executable.into();
        }
        for (field, value) in self.extra_spec {
            spec[field] = value;
        }
        json!({
            "apiVersion": "coredump.io/v1alpha1", "kind": "Coredump",
            "metadata": metadata, "spec": spec,
        })
    }

    /// [`Self::build`] as a request body.
    pub fn bytes(self) -> Vec<u8> {
        // A Value (string keys only) always serializes.
        serde_json::to_vec(&self.build()).unwrap_or_default()
    }
}

/// A valid `v1:` fingerprint derived from `bug`.
pub fn fingerprint(bug: &str) -> String {
    format!("v1:{}", hex::encode(Sha256::digest(bug.as_bytes())))
}

/// A CoredumpQuota body: [`QuotaFixture::new`] starts from `ns/quota` with an empty
/// `spec.hard`, each method sets one field, [`QuotaFixture::build`] gives the JSON.
#[derive(Clone, Debug)]
pub struct QuotaFixture {
    namespace: String,
    name: String,
    labels: Map<String, Value>,
    hard: Map<String, Value>,
    max_age: Option<String>,
    evict_oldest: Option<bool>,
}

impl QuotaFixture {
    pub fn new(ns: &str) -> Self {
        Self {
            namespace: ns.into(),
            name: "quota".into(),
            labels: Map::new(),
            hard: Map::new(),
            max_age: None,
            evict_oldest: None,
        }
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// `spec.hard.storage`, a quantity of stored (compressed) bytes.
    pub fn storage(mut self, quantity: &str) -> Self {
        self.hard.insert("storage".into(), quantity.into());
        self
    }

    /// `spec.hard.count`.
    pub fn count(mut self, count: impl ToString) -> Self {
        self.hard.insert("count".into(), count.to_string().into());
        self
    }

    /// `spec.maxAge`, a duration such as `720h`.
    pub fn max_age(mut self, age: &str) -> Self {
        self.max_age = Some(age.into());
        self
    }

    pub fn evict_oldest(mut self, evict: bool) -> Self {
        self.evict_oldest = Some(evict);
        self
    }

    pub fn build(self) -> Value {
        let mut metadata = json!({"name": self.name, "namespace": self.namespace});
        if !self.labels.is_empty() {
            metadata["labels"] = Value::Object(self.labels);
        }
        let mut spec = json!({"hard": self.hard});
        if let Some(age) = self.max_age {
            spec["maxAge"] = age.into();
        }
        if let Some(evict) = self.evict_oldest {
            spec["evictOldest"] = evict.into();
        }
        json!({"apiVersion": "coredump.io/v1alpha1", "kind": "CoredumpQuota",
               "metadata": metadata, "spec": spec})
    }
}

/// The collection path of `resource` in `ns`.
pub fn collection(ns: &str, resource: &str) -> String {
    format!("{API}/namespaces/{ns}/{resource}")
}

/// The path of one coredump (and, with `sub`, of its subresource).
pub fn coredump_path(ns: &str, name: &str, sub: Option<&str>) -> String {
    match sub {
        Some(s) => format!("{API}/namespaces/{ns}/coredumps/{name}/{s}"),
        None => format!("{API}/namespaces/{ns}/coredumps/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The objects the tests spelled out by hand before the fixtures: the builder must
    /// give exactly these, or the tests' meaning changed.
    #[test]
    fn coredumps_are_the_objects_the_tests_spelled_out() {
        let api = CoredumpFixture::new("ns", "one")
            .label("app", "web-1")
            .node("node-a")
            .pod("web-1")
            .image("example/app:1")
            .executable("/bin/app")
            .build();
        assert_eq!(
            api,
            json!({
                "apiVersion": "coredump.io/v1alpha1",
                "kind": "Coredump",
                "metadata": {"name": "one", "namespace": "ns", "labels": {"app": "web-1"}},
                "spec": {
                    "nodeName": "node-a", "podName": "web-1",
                    "podUID": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
                    "containerName": "main", "image": "example/app:1",
                    "signal": 11, "signalName": "SIGSEGV", "executable": "/bin/app",
                    "dumpTime": "2026-11-25T09:00:00Z",
                    "size": "1Mi", "storedSize": "100Ki",
                    "sha256": "0000000000000000000000000000000000000000000000000000000000000000"
                }
            })
        );
        let storage = CoredumpFixture::new("ns", "c0")
            .signal(6)
            .signal_name("SIGABRT")
            .size(2u64 << 20)
            .stored_size(600u64 << 10)
            .sha(&"a".repeat(64))
            .build();
        assert_eq!(
            storage,
            json!({
                "apiVersion": "coredump.io/v1alpha1", "kind": "Coredump",
                "metadata": {"name": "c0", "namespace": "ns"},
                "spec": {
                    "nodeName": "node-a", "podName": "web",
                    "podUID": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
                    "containerName": "main", "signal": 6, "signalName": "SIGABRT",
                    "dumpTime": "2026-11-25T09:00:00Z",
                    "size": "2097152", "storedSize": "614400", "sha256": "a".repeat(64)
                }
            })
        );
        let unnamed = CoredumpFixture::new("ns", "x")
            .node("n-a")
            .pod("web-a")
            .pod_uid("u-1")
            .signal(11)
            .size(100)
            .stored_size(10)
            .sha(&"d".repeat(64))
            .build();
        assert_eq!(
            unnamed,
            json!({
                "apiVersion": "coredump.io/v1alpha1", "kind": "Coredump",
                "metadata": {"name": "x", "namespace": "ns"},
                "spec": {
                    "nodeName": "n-a", "podName": "web-a", "podUID": "u-1",
                    "containerName": "main", "signal": 11,
                    "dumpTime": "2026-11-25T09:00:00Z",
                    "size": "100", "storedSize": "10", "sha256": "d".repeat(64)
                }
            })
        );
    }

    #[test]
    fn a_core_sets_sizes_and_checksum_and_raw_fields_win() {
        let core = Core::text(4096, 1);
        let cd = CoredumpFixture::new("ns", "a")
            .core(&core)
            .finalizer("example.com/keep")
            .annotation("k", "v")
            .spec("sha256", json!("xyz"))
            .build();
        assert_eq!(cd["spec"]["size"], "4096");
        assert_eq!(cd["spec"]["storedSize"], core.zst.len().to_string());
        assert!(!core.zst.is_empty());
        assert_eq!(cd["spec"]["sha256"], "xyz", "spec() is applied last");
        assert_eq!(cd["metadata"]["finalizers"], json!(["example.com/keep"]));
        assert_eq!(cd["metadata"]["annotations"], json!({"k": "v"}));
    }

    #[test]
    fn quotas_are_the_objects_the_tests_spelled_out() {
        assert_eq!(
            QuotaFixture::new("ns")
                .name("limits")
                .storage("1Gi")
                .count(10)
                .max_age("720h")
                .build(),
            json!({"apiVersion": "coredump.io/v1alpha1", "kind": "CoredumpQuota",
                   "metadata": {"name": "limits", "namespace": "ns"},
                   "spec": {"hard": {"storage": "1Gi", "count": "10"}, "maxAge": "720h"}})
        );
        assert_eq!(
            QuotaFixture::new("ns")
                .name("q-3")
                .label("n", "3")
                .storage("4Mi")
                .count(3)
                .build(),
            json!({"apiVersion": "coredump.io/v1alpha1", "kind": "CoredumpQuota",
                   "metadata": {"name": "q-3", "namespace": "ns", "labels": {"n": "3"}},
                   "spec": {"hard": {"storage": "4Mi", "count": "3"}}})
        );
        assert_eq!(
            QuotaFixture::new("ns").count(2).evict_oldest(true).build(),
            json!({"apiVersion": "coredump.io/v1alpha1", "kind": "CoredumpQuota",
                   "metadata": {"name": "quota", "namespace": "ns"},
                   "spec": {"hard": {"count": "2"}, "evictOldest": true}})
        );
    }
}
