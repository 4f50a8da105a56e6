//! The `Coredump` object a spool entry becomes, and the names it is tried
//! under.
//!
//! Invariants:
//! - Pure: built from the entry and its attribution only.
//! - A core's names are stable: the same node, spool ID and checksum give
//!   the same name on every retry, also by a restarted agent; each is a
//!   valid object name (at most 253 characters, ending alphanumeric).
//! - What the spool holds escaped (executable, command line) is cut
//!   between escape units, within the API's limits; a label value that
//!   cannot be one is left out (the spec has the full value).
//! - The object built validates (`validate_coredump`) for any entry the
//!   capture side writes.

use coredump_openapi::types::{
    LABEL_CONTAINER, LABEL_NODE, LABEL_POD, MAX_COMMAND_LINE, MAX_EXECUTABLE,
};
use coredump_openapi::{Coredump, CoredumpSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use sha2::{Digest, Sha256};

use crate::escape;
use crate::pods::{runtime_scheme, Attribution};
use crate::spool::SpoolEntry;

/// The first name tried for a core: `<pod>-<10 hex digits>`, the digits
/// from the node, the spool ID and the checksum, so every retry of this
/// core (also by a restarted agent) uses the same name.
pub fn coredump_name(pod: &str, node: &str, entry_id: &str, sha256: &str, attempt: u32) -> String {
    let mut h = Sha256::new();
    for part in [node, entry_id, sha256] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let digest = hex::encode(h.finalize());
    let mut suffix = format!("-{}", &digest[..10]);
    if attempt > 0 {
        suffix.push_str(&format!("-{attempt}"));
    }
    // Object names are at most 253 characters and must end alphanumeric.
    let mut base: String = pod.chars().take(253 - suffix.len()).collect();
    while base.ends_with(['-', '.']) {
        base.pop();
    }
    if base.is_empty() {
        base.push_str("core");
    }
    base + &suffix
}

/// A label value is at most 63 characters of `[A-Za-z0-9._-]`, starting and
/// ending alphanumeric; values that cannot be one are left out (the spec
/// has the full value).
fn label_value(v: &str) -> Option<String> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && v.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && v.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    ok.then(|| v.to_string())
}

/// The container name for the Coredump: as attributed, else the only
/// container the pod has, else `unknown` (the container ID still says
/// which one it was).
pub fn container_name(attr: &Attribution) -> String {
    if let Some(n) = &attr.container_name {
        return n.clone();
    }
    match attr.spec_containers.as_slice() {
        [only] => only.clone(),
        _ => "unknown".to_string(),
    }
}

/// The Coredump for a spool entry and its attribution.
pub fn build_coredump(entry: &SpoolEntry, attr: &Attribution, node: &str, name: &str) -> Coredump {
    let c = &entry.crash;
    let container = container_name(attr);
    let container_id = attr.container_id.clone().or_else(|| {
        c.container_id
            .as_ref()
            .map(|id| match runtime_scheme(c.container_runtime.as_deref()) {
                Some(scheme) => format!("{scheme}://{id}"),
                None => id.clone(),
            })
    });
    let mut labels = std::collections::BTreeMap::new();
    for (k, v) in [
        (LABEL_NODE, node),
        (LABEL_POD, attr.pod_name.as_str()),
        (LABEL_CONTAINER, container.as_str()),
    ] {
        if let Some(v) = label_value(v) {
            labels.insert(k.to_string(), v);
        }
    }
    // The spool holds these escaped (see `escape`): cut between escape
    // units, within the API's limits.
    let command_line = (!c.command_line.is_empty())
        .then(|| escape::cut(&c.command_line.join(" "), MAX_COMMAND_LINE).to_string());
    let executable =
        Some(escape::cut(&c.executable, MAX_EXECUTABLE).to_string()).filter(|e| !e.is_empty());
    let dump_time = i64::try_from(c.dump_time)
        .ok()
        .and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok())
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    Coredump {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(attr.namespace.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: CoredumpSpec {
            node_name: node.to_string(),
            pod_name: attr.pod_name.clone(),
            pod_uid: attr.pod_uid.clone(),
            container_name: container,
            container_id,
            image: attr.image.clone(),
            pid: c.container_pid.map(i64::from).filter(|p| *p > 0),
            host_pid: Some(i64::from(c.host_pid)).filter(|p| *p > 0),
            signal: c.signal,
            signal_name: c.signal_name.clone(),
            executable,
            command_line,
            uid: Some(i64::from(c.uid)),
            gid: Some(i64::from(c.gid)),
            dump_time: Time(dump_time),
            size: Quantity(entry.raw_size.to_string()),
            stored_size: Quantity(entry.stored_size.to_string()),
            sha256: entry.sha256.clone(),
            truncated: entry.truncated.then_some(true),
            analysis: None,
        },
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::fixtures::{attr, entry};
    use coredump_openapi::types::validate_coredump;

    #[test]
    fn names_are_stable_valid_and_bounded() {
        let a = coredump_name("web-0", "n1", "1-2", "ff", 0);
        assert_eq!(a, coredump_name("web-0", "n1", "1-2", "ff", 0));
        assert_ne!(a, coredump_name("web-0", "n2", "1-2", "ff", 0));
        assert!(
            a.starts_with("web-0-") && a.len() == "web-0-".len() + 10,
            "{a}"
        );
        assert_eq!(
            coredump_name("web-0", "n1", "1-2", "ff", 2),
            format!("{a}-2")
        );
        let long = format!("{}-x", "a".repeat(260));
        let n = coredump_name(&long, "n1", "1-2", "ff", 3);
        assert!(n.len() <= 253);
        assert!(coredump_openapi::types::validate_name(&n).is_ok(), "{n}");
        // A cut that ends in '-' or '.' is trimmed.
        let dotted = format!("{}.{}", "a".repeat(241), "b".repeat(20));
        let n = coredump_name(&dotted, "n1", "1-2", "ff", 0);
        assert!(coredump_openapi::types::validate_name(&n).is_ok(), "{n}");
    }

    #[test]
    fn coredump_carries_the_metadata_and_validates() {
        let e = entry();
        let cd = build_coredump(&e, &attr(), "node-1", "web-0-abc");
        assert!(
            validate_coredump(&cd).is_empty(),
            "{:?}",
            validate_coredump(&cd)
        );
        let v = serde_json::to_value(&cd).unwrap();
        assert_eq!(v["metadata"]["namespace"], "shop");
        assert_eq!(v["metadata"]["labels"][LABEL_NODE], "node-1");
        assert_eq!(v["metadata"]["labels"][LABEL_POD], "web-0");
        assert_eq!(v["metadata"]["labels"][LABEL_CONTAINER], "app");
        let s = &v["spec"];
        assert_eq!(s["nodeName"], "node-1");
        assert_eq!(s["podUID"], "0b6e2b53-6a8e-4c3c-9d0e-1f2a3b4c5d6e");
        assert_eq!(
            s["containerID"],
            format!("containerd://{}", "ab".repeat(32))
        );
        assert_eq!(s["image"], "registry/app:1");
        assert_eq!(s["pid"], 7);
        assert_eq!(s["hostPID"], 4242);
        assert_eq!(s["signal"], 11);
        assert_eq!(s["signalName"], "SIGSEGV");
        assert_eq!(s["executable"], "/usr/bin/app");
        assert_eq!(s["commandLine"], "/usr/bin/app --serve");
        assert_eq!(s["uid"], 1000);
        assert_eq!(s["dumpTime"], "2023-11-14T22:13:20Z");
        assert_eq!(s["size"], "1048576");
        assert_eq!(s["storedSize"], "12345");
        assert_eq!(s["sha256"], "0f".repeat(32));
        assert!(s.get("truncated").is_none());
    }

    #[test]
    fn unattributed_container_falls_back_sensibly() {
        let mut a = attr();
        a.container_name = None;
        a.container_id = None;
        a.image = None;
        let cd = build_coredump(&entry(), &a, "node-1", "x");
        assert_eq!(cd.spec.container_name, "unknown");
        assert_eq!(
            cd.spec.container_id,
            Some(format!("containerd://{}", "ab".repeat(32)))
        );
        a.spec_containers = vec!["only".into()];
        assert_eq!(
            build_coredump(&entry(), &a, "n", "x").spec.container_name,
            "only"
        );
    }

    #[test]
    fn long_values_are_cut_or_left_out() {
        let mut e = entry();
        e.crash.command_line = vec!["é".repeat(3000)];
        let mut a = attr();
        a.pod_name = "p".repeat(100);
        let cd = build_coredump(&e, &a, "node-1", "x");
        assert!(cd.spec.command_line.as_ref().unwrap().len() <= MAX_COMMAND_LINE);
        // Escaped non-UTF-8 bytes are never cut in half, and the longest
        // path the kernel allows, escaped, still fits the API.
        e.crash.executable = escape::escape(&[0xff; 4096]);
        e.crash.command_line = vec![escape::escape(&[0xfe; 4096])];
        let cd = build_coredump(&e, &a, "node-1", "x");
        assert!(
            validate_coredump(&cd).is_empty(),
            "{:?}",
            validate_coredump(&cd)
        );
        let exe = cd.spec.executable.as_deref().unwrap();
        assert_eq!(exe.len(), MAX_EXECUTABLE);
        assert!(escape::unescape(exe).is_some());
        assert!(escape::unescape(cd.spec.command_line.as_deref().unwrap()).is_some());
        assert!(!cd.metadata.labels.as_ref().unwrap().contains_key(LABEL_POD));
        assert_eq!(label_value("-x"), None);
        assert_eq!(label_value("a.b_c-d").as_deref(), Some("a.b_c-d"));
    }
}
