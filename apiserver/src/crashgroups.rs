//! Crash groups: one `CrashGroup` per fingerprint and namespace, kept in the transaction of
//! each Coredump create (an admission member), so a group's count is exact under
//! concurrency, counts Rejected cores too (they are created all the same), and is never
//! shown ahead of the Coredump that made it.
//!
//! Invariants: only this module writes CrashGroups (clients may read and delete them, not
//! create or change them); deleting Coredumps never touches their group; a namespace's
//! deletion removes its groups like any other namespaced object.

use std::sync::Arc;

use serde_json::{json, Value};

use coredump_openapi::types::analysis::MAX_RECENT;
use coredump_openapi::types::{crash_group_name, is_fingerprint};
use coredump_openapi::{COREDUMP, CRASH_GROUP};

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::registry::{now_rfc3339, str_at, Admission, Ctx, Kind};
use crate::store::{Event, EventType, Key, Tx};

pub struct CrashGroups {
    pub metrics: Arc<Metrics>,
}

/// The group a new Coredump belongs to, if its analysis has a fingerprint.
pub fn group_key(coredump: &Value) -> Option<Key> {
    let fp = str_at(coredump, "/spec/analysis/fingerprint").filter(|f| is_fingerprint(f))?;
    let ns = str_at(coredump, "/metadata/namespace")?;
    let name = crash_group_name(
        &fp,
        str_at(coredump, "/spec/executable").as_deref(),
        str_at(coredump, "/spec/analysis/signature").as_deref(),
    );
    Some(Key::new(CRASH_GROUP.plural, &ns, &name))
}

/// The group after counting `coredump` in it (`existing`: the group so far, if any).
/// Pure: the transaction reads and writes around it.
pub fn counted(existing: Option<Value>, key: &Key, coredump: &Value) -> Value {
    let s = |p: &str| str_at(coredump, p);
    let dump_time = s("/spec/dumpTime").unwrap_or_else(now_rfc3339);
    let occurrence = json!({
        "coredump": s("/metadata/name").unwrap_or_default(),
        "podName": s("/spec/podName").unwrap_or_default(),
        "containerName": s("/spec/containerName").unwrap_or_default(),
        "image": s("/spec/image"),
        "nodeName": s("/spec/nodeName").unwrap_or_default(),
        "dumpTime": dump_time,
    });
    let mut group = existing.unwrap_or_else(|| {
        let mut spec = json!({
            "fingerprint": s("/spec/analysis/fingerprint").unwrap_or_default(),
        });
        for (field, ptr) in [
            ("signature", "/spec/analysis/signature"),
            ("cause", "/spec/analysis/cause"),
            ("executable", "/spec/executable"),
            ("signalName", "/spec/signalName"),
        ] {
            if let Some(v) = s(ptr) {
                spec[field] = json!(v);
            }
        }
        json!({
            "metadata": {
                "name": key.name,
                "namespace": key.namespace,
                "uid": uuid::Uuid::new_v4().to_string(),
                "creationTimestamp": now_rfc3339(),
                "generation": 1,
            },
            "spec": spec,
            "status": {"count": 0, "firstSeen": dump_time, "lastSeen": dump_time},
        })
    });
    let status = &mut group["status"];
    let count = status["count"].as_i64().unwrap_or(0).saturating_add(1);
    status["count"] = json!(count);
    // RFC 3339 in UTC with the same layout compares as text.
    let first = str_at(status, "/firstSeen").unwrap_or_else(|| dump_time.clone());
    let last = str_at(status, "/lastSeen").unwrap_or_else(|| dump_time.clone());
    if dump_time < first {
        status["firstSeen"] = json!(dump_time);
    }
    if dump_time >= last {
        status["lastSeen"] = json!(dump_time);
    }
    status["latest"] = occurrence["coredump"].clone();
    let mut recent: Vec<Value> = status["recent"].as_array().cloned().unwrap_or_default();
    recent.insert(0, occurrence);
    recent.truncate(MAX_RECENT);
    status["recent"] = Value::Array(recent);
    group
}

impl Admission for CrashGroups {
    fn create(
        &self,
        tx: &mut Tx<'_>,
        kind: &dyn Kind,
        obj: &mut Value,
        _ctx: &Ctx,
    ) -> Result<(), ApiError> {
        if kind.info().plural != COREDUMP.plural {
            return Ok(());
        }
        let Some(key) = group_key(obj) else {
            return Ok(());
        };
        let existing = tx.get(&key)?;
        tx.put(key.clone(), counted(existing, &key, obj));
        Ok(())
    }

    fn committed(&self, events: &[Arc<Event>]) {
        for ev in events {
            if ev.kind == EventType::Added && ev.key.resource == COREDUMP.plural {
                if let Some(group) = group_key(&ev.object) {
                    self.metrics.observe_crash(&group.namespace, &group.name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coredump(name: &str, time: &str, fp: &str) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {
                "podName": format!("pod-{name}"), "containerName": "app", "nodeName": "n1",
                "image": "app:1", "executable": "/bin/app", "signalName": "SIGSEGV",
                "dumpTime": time,
                "analysis": {"fingerprint": fp, "signature": "parse_header", "cause": "NullPointerDereference"},
            }
        })
    }

    #[test]
    fn counting_keeps_first_last_latest_and_a_bounded_recent_list() {
        let fp = format!("v1:{}", "a".repeat(64));
        let first = coredump("c0", "2026-01-02T00:00:00Z", &fp);
        let key = group_key(&first).expect("fingerprinted");
        assert_eq!(key.name, "app-parse-header-aaaaaaaaaaaa");
        let mut g = counted(None, &key, &first);
        for i in 1..8 {
            // One out of order: firstSeen is the earliest, lastSeen the latest.
            let t = if i == 3 {
                "2026-01-01T00:00:00Z".to_string()
            } else {
                format!("2026-01-02T00:00:0{i}Z")
            };
            g = counted(Some(g), &key, &coredump(&format!("c{i}"), &t, &fp));
        }
        assert_eq!(g["status"]["count"], 8);
        assert_eq!(g["status"]["firstSeen"], "2026-01-01T00:00:00Z");
        assert_eq!(g["status"]["lastSeen"], "2026-01-02T00:00:07Z");
        assert_eq!(g["status"]["latest"], "c7");
        let recent = g["status"]["recent"].as_array().expect("recent");
        assert_eq!(recent.len(), MAX_RECENT);
        assert_eq!(recent[0]["coredump"], "c7");
        assert_eq!(g["spec"]["signature"], "parse_header");
        assert_eq!(g["spec"]["cause"], "NullPointerDereference");
    }

    #[test]
    fn only_valid_fingerprints_make_groups() {
        assert!(group_key(&coredump("x", "2026-01-01T00:00:00Z", "v1:zz")).is_none());
        let mut no_analysis = coredump("x", "2026-01-01T00:00:00Z", "");
        no_analysis["spec"]
            .as_object_mut()
            .expect("spec")
            .remove("analysis");
        assert!(group_key(&no_analysis).is_none());
    }
}
