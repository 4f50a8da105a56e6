//! `CoreDumped` Events on the crashed pod, through kube-apiserver
//! (`events.k8s.io/v1`), so `kubectl describe pod` shows the crash. Best
//! effort: a failure is logged, never retried at the cost of delivery.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::Api;

use crate::pods::Attribution;
use crate::spool::SpoolEntry;

pub const REASON: &str = "CoreDumped";
pub const CONTROLLER: &str = "coredump.io/node-handler";
/// events.k8s.io caps `note` at 1 KiB.
const MAX_NOTE: usize = 1024;

#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    instance: String,
}

/// What became of the core, for the message.
pub enum Fate<'a> {
    Stored,
    Rejected(&'a str),
}

/// The Event for a core (also used by tests of its shape).
pub fn build(
    entry: &SpoolEntry,
    attr: &Attribution,
    container: &str,
    coredump: &str,
    fate: Fate<'_>,
    instance: &str,
) -> Event {
    let c = &entry.crash;
    let signal = c
        .signal_name
        .clone()
        .unwrap_or_else(|| format!("signal {}", c.signal));
    let mut note = format!(
        "Container {container} dumped core ({signal}) in {}: coredump {coredump}",
        c.executable
    );
    match fate {
        Fate::Stored => note.push_str(" is stored"),
        Fate::Rejected(why) => {
            note.push_str(" was not kept: ");
            note.push_str(why);
        }
    }
    if note.len() > MAX_NOTE {
        let mut end = MAX_NOTE;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
    }
    // One name per coredump: a retried delivery finds its Event exists.
    let mut name: String = coredump.chars().take(240).collect();
    while name.ends_with(['-', '.']) {
        name.pop();
    }
    name.push_str(".coredump");
    Event {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(attr.namespace.clone()),
            ..Default::default()
        },
        event_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
        reporting_controller: Some(CONTROLLER.to_string()),
        reporting_instance: Some(instance.to_string()),
        action: Some("Capture".to_string()),
        reason: Some(REASON.to_string()),
        type_: Some("Warning".to_string()),
        note: Some(note),
        regarding: Some(ObjectReference {
            api_version: Some("v1".to_string()),
            kind: Some("Pod".to_string()),
            name: Some(attr.pod_name.clone()),
            namespace: Some(attr.namespace.clone()),
            uid: Some(attr.pod_uid.clone()),
            field_path: Some(format!("spec.containers{{{container}}}")),
            ..Default::default()
        }),
        related: Some(ObjectReference {
            api_version: Some(coredump_openapi::API_VERSION.to_string()),
            kind: Some("Coredump".to_string()),
            name: Some(coredump.to_string()),
            namespace: Some(attr.namespace.clone()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Recorder {
    pub fn new(client: kube::Client, node: &str) -> Self {
        Self {
            client,
            // reportingInstance is at most 128 characters.
            instance: format!("coredump-node-handler-{node}")
                .chars()
                .take(128)
                .collect(),
        }
    }

    pub async fn core_dumped(
        &self,
        entry: &SpoolEntry,
        attr: &Attribution,
        container: &str,
        coredump: &str,
        fate: Fate<'_>,
    ) {
        let ev = build(entry, attr, container, coredump, fate, &self.instance);
        let api: Api<Event> = Api::namespaced(self.client.clone(), &attr.namespace);
        match api.create(&PostParams::default(), &ev).await {
            Ok(_) => tracing::debug!("CoreDumped event recorded"),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => tracing::warn!(error = %e, "recording the CoreDumped event"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_the_pod_signal_and_coredump() {
        let entry: SpoolEntry = serde_json::from_value(serde_json::json!({
            "formatVersion": 1, "id": "1-2", "hostPid": 5, "hostTid": 5, "signal": 6,
            "signalName": "SIGABRT", "dumpTime": 1, "comm": "x", "executable": "/bin/x",
            "uid": 0, "gid": 0, "dumpable": 1, "rlimitCore": 0, "procVerified": true,
            "rawSize": 1, "storedSize": 1, "sha256": "00", "truncated": false,
            "compression": "zstd", "handler": {"version": "", "vmHwmBytes": 0, "elapsedMillis": 0}
        }))
        .unwrap();
        let attr = Attribution {
            pod_name: "web-0".into(),
            namespace: "shop".into(),
            pod_uid: "u".into(),
            container_name: Some("app".into()),
            container_id: None,
            image: None,
            opted_out: false,
            spec_containers: vec![],
            deleted: false,
        };
        let ev = build(&entry, &attr, "app", "web-0-0123456789", Fate::Stored, "i");
        assert_eq!(ev.reason.as_deref(), Some("CoreDumped"));
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        assert_eq!(
            ev.metadata.name.as_deref(),
            Some("web-0-0123456789.coredump")
        );
        let note = ev.note.unwrap();
        assert!(
            note.contains("SIGABRT")
                && note.contains("/bin/x")
                && note.contains("web-0-0123456789"),
            "{note}"
        );
        let r = ev.regarding.unwrap();
        assert_eq!(
            (r.kind.as_deref(), r.name.as_deref()),
            (Some("Pod"), Some("web-0"))
        );
    }
}
