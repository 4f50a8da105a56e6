//! The two kinds: how `Coredump` and `CoredumpQuota` decode, validate, select and print.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use coredump_openapi::types::{
    human_bytes, human_duration, parse_bytes, validate_coredump, validate_coredump_quota,
    validate_coredump_update, QUOTA_COUNT, QUOTA_STORAGE,
};
use coredump_openapi::{
    Coredump, CoredumpQuota, CrashGroup, FieldError, KindInfo, COREDUMP, COREDUMP_QUOTA,
    CRASH_GROUP,
};

use super::{str_at, Kind};

/// Decodes `v` into `T` and back, collecting the paths of fields `T` does not have.
fn decode_typed<T: DeserializeOwned + Serialize>(
    v: &Value,
) -> Result<(Value, Vec<String>), String> {
    let mut unknown = Vec::new();
    let typed: T = serde_ignored::deserialize(v, |path| {
        let p = path.to_string();
        // apiVersion and kind are checked by the registry, not fields of the type.
        if p != "apiVersion" && p != "kind" {
            unknown.push(p);
        }
    })
    .map_err(|e| e.to_string())?;
    let value = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    Ok((value, unknown))
}

fn typed<T: DeserializeOwned>(v: &Value) -> Result<T, Vec<FieldError>> {
    serde_json::from_value(v.clone()).map_err(|e| {
        vec![FieldError {
            field: "<object>".into(),
            reason: FieldError::INVALID,
            message: e.to_string(),
        }]
    })
}

fn column(name: &str, ty: &str, format: &str, description: &str, priority: u8) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
}

fn name_column() -> Value {
    column(
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace.",
        0,
    )
}

fn age_column() -> Value {
    column(
        "Age",
        "string",
        "",
        "Time since the object was created (metadata.creationTimestamp).",
        0,
    )
}

fn age(obj: &Value) -> String {
    let Some(created) =
        str_at(obj, "/metadata/creationTimestamp").and_then(|t| t.parse::<jiff::Timestamp>().ok())
    else {
        return "<unknown>".into();
    };
    let secs = jiff::Timestamp::now().as_second() - created.as_second();
    human_duration(secs)
}

pub struct CoredumpKind;

impl Kind for CoredumpKind {
    fn info(&self) -> &'static KindInfo {
        &COREDUMP
    }

    fn decode(&self, v: &Value) -> Result<(Value, Vec<String>), String> {
        decode_typed::<Coredump>(v)
    }

    fn validate(&self, obj: &Value) -> Vec<FieldError> {
        typed::<Coredump>(obj).map_or_else(|e| e, |c| validate_coredump(&c))
    }

    fn validate_update(&self, old: &Value, new: &Value) -> Vec<FieldError> {
        match (typed::<Coredump>(old), typed::<Coredump>(new)) {
            (Ok(o), Ok(n)) => validate_coredump_update(&o, &n),
            (Err(e), _) | (_, Err(e)) => e,
        }
    }

    fn prepare_create(&self, obj: &mut Value) {
        obj["status"] = json!({"phase": coredump_openapi::CoredumpPhase::Pending});
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &[
            "spec.nodeName",
            "spec.podName",
            "spec.containerName",
            "spec.analysis.fingerprint",
            "status.phase",
        ]
    }

    fn field(&self, obj: &Value, field: &str) -> Option<String> {
        let ptr = match field {
            "spec.nodeName" => "/spec/nodeName",
            "spec.podName" => "/spec/podName",
            "spec.containerName" => "/spec/containerName",
            "spec.analysis.fingerprint" => "/spec/analysis/fingerprint",
            "status.phase" => "/status/phase",
            _ => return None,
        };
        str_at(obj, ptr)
    }

    fn columns(&self) -> Value {
        json!([
            name_column(),
            column(
                "Pod",
                "string",
                "",
                "The pod whose container dumped core.",
                0
            ),
            column(
                "Container",
                "string",
                "",
                "The container that dumped core.",
                0
            ),
            column(
                "Signal",
                "string",
                "",
                "The signal that killed the process.",
                0
            ),
            column(
                "Signature",
                "string",
                "",
                "The crash signature: the top in-app function of the crashing thread.",
                0
            ),
            column(
                "Cause",
                "string",
                "",
                "The probable cause, e.g. NullPointerDereference or StackOverflow.",
                0
            ),
            column("Size", "string", "", "Size of the core file.", 0),
            column(
                "Stored",
                "string",
                "",
                "Bytes the core takes in storage, compressed.",
                0
            ),
            column(
                "Phase",
                "string",
                "",
                "Pending, Stored, Rejected or Failed.",
                0
            ),
            age_column(),
            column("Node", "string", "", "The node the crash happened on.", 1),
            column(
                "Executable",
                "string",
                "",
                "Path of the crashed executable inside the container.",
                1
            ),
            column("Image", "string", "", "The container's image.", 1),
            column(
                "Fingerprint",
                "string",
                "",
                "Crashes of the same bug share it; names the CrashGroup.",
                1
            ),
        ])
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        let s = |p: &str| str_at(obj, p).unwrap_or_default();
        let signal = str_at(obj, "/spec/signalName").unwrap_or_else(|| {
            obj.pointer("/spec/signal")
                .map(|v| v.to_string())
                .unwrap_or_default()
        });
        vec![
            json!(s("/metadata/name")),
            json!(s("/spec/podName")),
            json!(s("/spec/containerName")),
            json!(signal),
            json!(or_none(str_at(obj, "/spec/analysis/signature"))),
            json!(or_none(str_at(obj, "/spec/analysis/cause"))),
            json!(human(str_at(obj, "/spec/size"))),
            json!(human(str_at(obj, "/spec/storedSize"))),
            json!(s("/status/phase")),
            json!(age(obj)),
            json!(s("/spec/nodeName")),
            json!(s("/spec/executable")),
            json!(s("/spec/image")),
            json!(or_none(str_at(obj, "/spec/analysis/fingerprint"))),
        ]
    }
}

/// A byte quantity for a table: `16.4Mi`; what does not parse is shown as it is.
fn human(q: Option<String>) -> String {
    match q {
        Some(q) => parse_bytes(&q).map(human_bytes).unwrap_or(q),
        None => "<none>".to_string(),
    }
}

/// A printed cell for an optional field, as kubectl prints absent ones.
fn or_none(v: Option<String>) -> String {
    v.unwrap_or_else(|| "<none>".to_string())
}

pub struct QuotaKind;

impl Kind for QuotaKind {
    fn info(&self) -> &'static KindInfo {
        &COREDUMP_QUOTA
    }

    fn decode(&self, v: &Value) -> Result<(Value, Vec<String>), String> {
        decode_typed::<CoredumpQuota>(v)
    }

    fn validate(&self, obj: &Value) -> Vec<FieldError> {
        typed::<CoredumpQuota>(obj).map_or_else(|e| e, |q| validate_coredump_quota(&q))
    }

    fn validate_update(&self, _old: &Value, _new: &Value) -> Vec<FieldError> {
        Vec::new()
    }

    fn prepare_create(&self, obj: &mut Value) {
        let hard = obj
            .pointer("/spec/hard")
            .cloned()
            .unwrap_or_else(|| json!({}));
        obj["status"] = json!({"hard": hard, "used": {QUOTA_STORAGE: "0", QUOTA_COUNT: "0"}});
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &[]
    }

    fn field(&self, _obj: &Value, _field: &str) -> Option<String> {
        None
    }

    fn columns(&self) -> Value {
        json!([
            name_column(),
            column(
                "Storage",
                "string",
                "",
                "Bytes of stored cores: used/hard.",
                0
            ),
            column(
                "Count",
                "string",
                "",
                "Number of stored cores: used/hard.",
                0
            ),
            age_column(),
            column(
                "Max Age",
                "string",
                "",
                "Stored cores older than this are deleted.",
                1
            ),
            column(
                "Evict Oldest",
                "string",
                "",
                "Whether the oldest cores make room for new ones.",
                1
            ),
        ])
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        let used_hard = |key: &str| {
            let used = str_at(obj, &format!("/status/used/{key}")).unwrap_or_else(|| "0".into());
            let hard = str_at(obj, &format!("/spec/hard/{key}")).unwrap_or_else(|| "-".into());
            if key == QUOTA_STORAGE {
                let h = |q: String| parse_bytes(&q).map(human_bytes).unwrap_or(q);
                format!("{}/{}", h(used), h(hard))
            } else {
                format!("{used}/{hard}")
            }
        };
        vec![
            json!(str_at(obj, "/metadata/name").unwrap_or_default()),
            json!(used_hard(QUOTA_STORAGE)),
            json!(used_hard(QUOTA_COUNT)),
            json!(age(obj)),
            json!(str_at(obj, "/spec/maxAge").unwrap_or_else(|| "<none>".into())),
            json!(obj
                .pointer("/spec/evictOldest")
                .and_then(Value::as_bool)
                .unwrap_or(false)
                .to_string()),
        ]
    }
}

/// Crash groups: written by the server only (see `crashgroups`), read and deleted by
/// clients.
pub struct CrashGroupKind;

impl Kind for CrashGroupKind {
    fn info(&self) -> &'static KindInfo {
        &CRASH_GROUP
    }

    fn decode(&self, v: &Value) -> Result<(Value, Vec<String>), String> {
        decode_typed::<CrashGroup>(v)
    }

    fn validate(&self, _obj: &Value) -> Vec<FieldError> {
        Vec::new()
    }

    fn validate_update(&self, _old: &Value, _new: &Value) -> Vec<FieldError> {
        Vec::new()
    }

    fn prepare_create(&self, _obj: &mut Value) {}

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["spec.fingerprint"]
    }

    fn field(&self, obj: &Value, field: &str) -> Option<String> {
        match field {
            "spec.fingerprint" => str_at(obj, "/spec/fingerprint"),
            _ => None,
        }
    }

    fn columns(&self) -> Value {
        json!([
            name_column(),
            column("Signature", "string", "", "The crash signature.", 0),
            column("Cause", "string", "", "The probable cause.", 0),
            column("Count", "integer", "", "Crashes counted.", 0),
            column("Last Seen", "string", "", "Time since the latest crash.", 0),
            age_column(),
            column("Executable", "string", "", "The crashed executable.", 1),
            column("Latest", "string", "", "The latest Coredump.", 1),
            column("Fingerprint", "string", "", "The group's fingerprint.", 1),
        ])
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        let last_seen = str_at(obj, "/status/lastSeen")
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(|t| human_duration(jiff::Timestamp::now().as_second() - t.as_second()))
            .unwrap_or_else(|| "<unknown>".into());
        vec![
            json!(str_at(obj, "/metadata/name").unwrap_or_default()),
            json!(or_none(str_at(obj, "/spec/signature"))),
            json!(or_none(str_at(obj, "/spec/cause"))),
            json!(obj
                .pointer("/status/count")
                .and_then(Value::as_i64)
                .unwrap_or(0)),
            json!(last_seen),
            json!(age(obj)),
            json!(or_none(str_at(obj, "/spec/executable"))),
            json!(or_none(str_at(obj, "/status/latest"))),
            json!(str_at(obj, "/spec/fingerprint").unwrap_or_default()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_match_kubectl() {
        for (s, want) in [
            (5, "5s"),
            (119, "119s"),
            (200, "3m20s"),
            (600, "10m"),
            (4 * 3600, "4h"),
            (3 * 86400 + 3600, "3d1h"),
            (400 * 86400, "400d"),
        ] {
            assert_eq!(human_duration(s), want, "{s}");
        }
    }

    #[test]
    fn unknown_fields_are_reported_with_paths() {
        let v = json!({
            "apiVersion": "coredump.io/v1alpha1", "kind": "CoredumpQuota",
            "metadata": {"name": "q", "bogus": 1},
            "spec": {"hard": {"storage": "1Mi"}, "extra": true}
        });
        let (decoded, unknown) = QuotaKind.decode(&v).expect("decode");
        assert_eq!(unknown, ["metadata.bogus", "spec.extra"]);
        assert!(decoded.pointer("/spec/extra").is_none());
        assert_eq!(decoded["spec"]["hard"]["storage"], "1Mi");
    }

    use proptest::prelude::*;

    /// Arbitrary JSON, biased towards the shapes of our objects.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
            ".{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            let keys = prop_oneof![
                Just("metadata".to_string()),
                Just("spec".to_string()),
                Just("status".to_string()),
                Just("name".to_string()),
                Just("labels".to_string()),
                Just("hard".to_string()),
                Just("size".to_string()),
                "[a-zA-Z]{1,8}",
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(keys, inner, 0..5)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Any request body: decoding and validation never panic, and what decodes
        /// encodes back to JSON that decodes to the same object.
        #[test]
        fn any_body_decodes_or_is_refused(body in json_value()) {
            for kind in [&CoredumpKind as &dyn Kind, &QuotaKind] {
                if let Ok((obj, _unknown)) = kind.decode(&body) {
                    let _ = kind.validate(&obj);
                    let (again, _) = kind.decode(&obj).expect("a decoded object decodes");
                    prop_assert_eq!(again, obj);
                }
            }
        }
    }
}
