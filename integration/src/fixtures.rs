//! Typed test objects: a core with its compressed form and checksum, and the Coredump and
//! CoredumpQuota bodies that describe it, built one way for every test.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

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
/// with 1 MiB of pseudo-random bytes every 64 MiB. Returns the file, the raw size and
/// the raw sha256.
pub fn big_core(dir: &std::path::Path, size: u64) -> (std::path::PathBuf, u64, String) {
    use std::io::Write;
    let path = dir.join("core.zst");
    let mut hasher = Sha256::new();
    let Ok(file) = std::fs::File::create(&path) else {
        return (path, 0, String::new());
    };
    let Ok(mut enc) = zstd::stream::write::Encoder::new(file, 1) else {
        return (path, 0, String::new());
    };
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
        if enc.write_all(&chunk).is_err() {
            return (path, 0, String::new());
        }
    }
    if enc.finish().is_err() {
        return (path, 0, String::new());
    }
    (path, size, hex::encode(hasher.finalize()))
}

/// A Coredump body; change fields with [`CoredumpBuilder`]'s methods.
pub struct CoredumpBuilder {
    obj: Value,
}

/// A Coredump `ns/name` describing `core`.
pub fn coredump(ns: &str, name: &str, core: &Core) -> CoredumpBuilder {
    CoredumpBuilder {
        obj: json!({
            "apiVersion": "coredump.io/v1alpha1", "kind": "Coredump",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "nodeName": "node-a", "podName": "web", "podUID": POD_UID,
                "containerName": "main", "signal": 11, "signalName": "SIGSEGV",
                "dumpTime": "2026-11-25T09:00:00Z",
                "size": core.raw.len().to_string(),
                "storedSize": core.zst.len().to_string(),
                "sha256": core.sha,
            }
        }),
    }
}

impl CoredumpBuilder {
    /// Sets `spec.<field>`.
    pub fn spec(mut self, field: &str, value: Value) -> Self {
        self.obj["spec"][field] = value;
        self
    }

    /// Sets `metadata.<field>`.
    pub fn meta(mut self, field: &str, value: Value) -> Self {
        self.obj["metadata"][field] = value;
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

    pub fn build(self) -> Value {
        self.obj
    }

    pub fn bytes(self) -> Vec<u8> {
        serde_json::to_vec(&self.obj).unwrap_or_default()
    }
}

/// A valid `v1:` fingerprint derived from `bug`.
pub fn fingerprint(bug: &str) -> String {
    format!("v1:{}", hex::encode(Sha256::digest(bug.as_bytes())))
}

/// A CoredumpQuota `ns/quota` with `spec.hard`.
pub fn quota(ns: &str, hard: Value) -> Value {
    json!({"apiVersion": "coredump.io/v1alpha1", "kind": "CoredumpQuota",
           "metadata": {"name": "quota", "namespace": ns}, "spec": {"hard": hard}})
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
