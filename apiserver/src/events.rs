//! Kubernetes Events about Coredumps, so `kubectl describe coredump` shows its history:
//! Stored, Rejected (with the quota that refused it), Failed (with its reason), Evicted
//! (to make room for a newer core) and DeletedByRetention (older than a quota's maxAge).
//!
//! Invariants: events are derived from durable changes only (the store's committed
//! batches, see [`notes_for`], a pure function) or recorded by maintenance after its own
//! delete succeeded; recording never blocks or fails a write: notes go through a bounded
//! queue to a background publisher and are dropped, with a log line, when it is full.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use serde_json::Value;
use tokio::sync::mpsc;

use coredump_openapi::COREDUMP;

use crate::registry::{phase_of, str_at, Admission};
use crate::store::{Event, EventType as Change};
use coredump_openapi::{CoredumpPhase, EventReason};

/// Notes waiting to be published; past this, new ones are dropped.
const QUEUE: usize = 1024;

/// One event to record about a Coredump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub warning: bool,
    pub reason: EventReason,
    pub message: String,
}

impl Note {
    fn about(obj: &Value, warning: bool, reason: EventReason, message: String) -> Option<Self> {
        Some(Self {
            namespace: str_at(obj, "/metadata/namespace")?,
            name: str_at(obj, "/metadata/name")?,
            uid: str_at(obj, "/metadata/uid").unwrap_or_default(),
            warning,
            reason,
            message,
        })
    }
}

fn phase(obj: &Value) -> Option<CoredumpPhase> {
    phase_of(obj)
}

/// The events one committed batch of changes calls for. A Coredump deleted in the same
/// batch as another one's creation in its namespace was evicted to make room for it.
pub fn notes_for(batch: &[Arc<Event>]) -> Vec<Note> {
    let coredumps = || batch.iter().filter(|e| e.key.resource == COREDUMP.plural);
    let created_in: Vec<&str> = coredumps()
        .filter(|e| e.kind == Change::Added)
        .map(|e| e.key.namespace.as_str())
        .collect();
    let mut out = Vec::new();
    for ev in coredumps() {
        let obj = &*ev.object;
        let message = || str_at(obj, "/status/message").unwrap_or_default();
        let note = match ev.kind {
            Change::Added if phase(obj) == Some(CoredumpPhase::Rejected) => {
                Note::about(obj, true, EventReason::Rejected, message())
            }
            Change::Modified => {
                let before = ev.prev.as_deref().and_then(phase);
                match (before, phase(obj)) {
                    (Some(CoredumpPhase::Pending), Some(CoredumpPhase::Stored)) => Note::about(
                        obj,
                        false,
                        EventReason::Stored,
                        format!(
                            "core stored: {} bytes ({} compressed)",
                            str_at(obj, "/spec/size").unwrap_or_default(),
                            str_at(obj, "/spec/storedSize").unwrap_or_default()
                        ),
                    ),
                    (Some(b), Some(CoredumpPhase::Failed)) if b != CoredumpPhase::Failed => {
                        Note::about(
                            obj,
                            true,
                            EventReason::Failed,
                            format!(
                                "{}: {}",
                                str_at(obj, "/status/reason").unwrap_or_default(),
                                message()
                            ),
                        )
                    }
                    _ => None,
                }
            }
            Change::Deleted if created_in.contains(&ev.key.namespace.as_str()) => Note::about(
                obj,
                false,
                EventReason::Evicted,
                "deleted to make room for a newer core (the quota's evictOldest)".into(),
            ),
            _ => None,
        };
        out.extend(note);
    }
    out
}

/// Publishes notes in the background.
pub struct EventSink {
    tx: mpsc::Sender<Note>,
}

impl EventSink {
    pub fn spawn(client: kube::Client) -> Arc<Self> {
        let (tx, mut rx) = mpsc::channel::<Note>(QUEUE);
        let instance = std::env::var("POD_NAME")
            .ok()
            .or_else(hostname)
            .unwrap_or_else(|| "coredump-apiserver".into());
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: "coredump-apiserver".into(),
                instance: Some(instance),
            },
        );
        tokio::spawn(async move {
            while let Some(n) = rx.recv().await {
                let reference = ObjectReference {
                    api_version: Some(coredump_openapi::API_VERSION.into()),
                    kind: Some(COREDUMP.kind.into()),
                    name: Some(n.name.clone()),
                    namespace: Some(n.namespace.clone()),
                    uid: Some(n.uid.clone()).filter(|u| !u.is_empty()),
                    ..Default::default()
                };
                let ev = KubeEvent {
                    type_: if n.warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason: n.reason.as_str().into(),
                    note: Some(n.message.chars().take(1000).collect()),
                    action: n.reason.as_str().into(),
                    secondary: None,
                };
                if let Err(e) = recorder.publish(&ev, &reference).await {
                    tracing::warn!(namespace = %n.namespace, name = %n.name, reason = n.reason.as_str(), error = %e, "recording an event");
                }
            }
        });
        Arc::new(Self { tx })
    }

    /// A sink that drops every note (tests without a cluster).
    #[cfg(test)]
    pub fn discard() -> Arc<Self> {
        let (tx, _) = mpsc::channel::<Note>(1);
        Arc::new(Self { tx })
    }

    pub fn record(&self, note: Note) {
        if let Err(e) = self.tx.try_send(note) {
            tracing::warn!(error = %e, "event queue full; an event is dropped");
        }
    }
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// The admission member that turns committed batches into events.
pub struct CoredumpEvents {
    pub sink: Arc<EventSink>,
}

impl Admission for CoredumpEvents {
    fn committed(&self, events: &[Arc<Event>]) {
        for n in notes_for(events) {
            self.sink.record(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Key;
    use serde_json::json;

    fn ev(kind: Change, name: &str, prev: Option<Value>, obj: Value) -> Arc<Event> {
        Arc::new(Event {
            rv: 1,
            kind,
            key: Key::new("coredumps", "ns", name),
            object: Arc::new(obj),
            prev: prev.map(Arc::new),
        })
    }

    fn cd(name: &str, status: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns", "uid": "u"},
               "spec": {"size": "10", "storedSize": "5"}, "status": status})
    }

    #[test]
    fn phase_changes_become_events() {
        let pending = cd("a", json!({"phase": "Pending"}));
        let batch = [
            ev(
                Change::Modified,
                "a",
                Some(pending.clone()),
                cd("a", json!({"phase": "Stored"})),
            ),
            ev(
                Change::Added,
                "b",
                None,
                cd(
                    "b",
                    json!({"phase": "Rejected", "message": "exceeded quota: q"}),
                ),
            ),
            ev(
                Change::Modified,
                "c",
                Some(pending),
                cd(
                    "c",
                    json!({"phase": "Failed", "reason": "UploadTimeout", "message": "late"}),
                ),
            ),
        ];
        let notes = notes_for(&batch);
        let got: Vec<(&str, EventReason, bool)> = notes
            .iter()
            .map(|n| (n.name.as_str(), n.reason, n.warning))
            .collect();
        assert_eq!(
            got,
            [
                ("a", EventReason::Stored, false),
                ("b", EventReason::Rejected, true),
                ("c", EventReason::Failed, true)
            ]
        );
        assert_eq!(notes[1].message, "exceeded quota: q");
        assert_eq!(notes[2].message, "UploadTimeout: late");
    }

    #[test]
    fn a_delete_beside_a_create_is_an_eviction_and_a_lone_delete_is_not() {
        let old = cd("old", json!({"phase": "Stored"}));
        let new = cd("new", json!({"phase": "Pending"}));
        let evicted = notes_for(&[
            ev(Change::Deleted, "old", None, old.clone()),
            ev(Change::Added, "new", None, new),
        ]);
        assert_eq!(evicted.len(), 1);
        assert_eq!(
            (evicted[0].name.as_str(), evicted[0].reason),
            ("old", EventReason::Evicted)
        );
        assert!(notes_for(&[ev(Change::Deleted, "old", None, old)]).is_empty());
    }
}
