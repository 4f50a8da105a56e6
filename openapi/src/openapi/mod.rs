//! The OpenAPI documents of the group: Swagger 2.0 for `/openapi/v2` and OpenAPI 3.0 for
//! `/openapi/v3/apis/coredump.io/v1alpha1`, which `kubectl explain` reads.
//!
//! Schemas are derived from the Rust types (schemars, with the doc comments as descriptions),
//! paths from the [`KindInfo`](crate::KindInfo) constants, so a change to a type changes the
//! documents. The generated documents are checked in as `openapi-v2.json` and
//! `openapi-v3.json` next to `Cargo.toml` and served from there byte for byte
//! ([`OPENAPI_V2_JSON`], [`OPENAPI_V3_JSON`]); a test fails when they are out of date, and
//! `UPDATE_OPENAPI=1 cargo test -p coredump-openapi` rewrites them.

mod paths;
mod schemas;

use std::sync::OnceLock;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::{GROUP, VERSION};

/// The checked-in Swagger 2.0 document, served at `/openapi/v2`.
pub const OPENAPI_V2_JSON: &str = include_str!("../../openapi-v2.json");
/// The checked-in OpenAPI 3.0 document, served at [`OPENAPI_V3_PATH`] under `/openapi/v3/`.
pub const OPENAPI_V3_JSON: &str = include_str!("../../openapi-v3.json");
/// The group-version's path in `/openapi/v3` discovery (no leading slash).
pub const OPENAPI_V3_PATH: &str = "apis/coredump.io/v1alpha1";

/// Which OpenAPI version a document is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// Swagger 2.0.
    V2,
    /// OpenAPI 3.0.
    V3,
}

impl Dialect {
    fn definitions_path(self) -> &'static str {
        match self {
            Dialect::V2 => "/definitions",
            Dialect::V3 => "/components/schemas",
        }
    }

    /// The `$ref` to the schema `name`.
    fn reference(self, name: &str) -> String {
        format!("#{}/{name}", self.definitions_path())
    }
}

fn info() -> Value {
    json!({
        "title": GROUP,
        "version": VERSION,
        "description": "Core dumps of containers (Coredump) and the limits on storing them \
            (CoredumpQuota), served by the coredump.io extension API server.",
    })
}

/// The bearer token scheme Kubernetes documents declare.
fn bearer_token() -> Value {
    json!({
        "BearerToken": {
            "type": "apiKey",
            "name": "authorization",
            "in": "header",
            "description": "Bearer Token authentication",
        }
    })
}

/// The OpenAPI 3.0 document of `coredump.io/v1alpha1`.
pub fn openapi_v3() -> Value {
    json!({
        "openapi": "3.0.0",
        "info": info(),
        "paths": paths::paths(Dialect::V3),
        "components": {
            "schemas": schemas::definitions(Dialect::V3),
            "securitySchemes": bearer_token(),
        },
        "security": [{ "BearerToken": [] }],
    })
}

/// The Swagger 2.0 document, for `/openapi/v2` (which kube-aggregator merges into the cluster's).
pub fn openapi_v2() -> Value {
    json!({
        "swagger": "2.0",
        "info": info(),
        "paths": paths::paths(Dialect::V2),
        "definitions": schemas::definitions(Dialect::V2),
        "securityDefinitions": bearer_token(),
        "security": [{ "BearerToken": [] }],
    })
}

/// The `/openapi/v3` discovery document, pointing at the group-version document by `hash`.
pub fn openapi_v3_discovery(hash: &str) -> Value {
    json!({
        "paths": {
            OPENAPI_V3_PATH: {
                "serverRelativeURL": format!("/openapi/v3/{OPENAPI_V3_PATH}?hash={hash}"),
            }
        }
    })
}

/// Uppercase hex SHA-256 of [`OPENAPI_V3_JSON`], the bytes served; for the `hash` query
/// parameter and as an ETag.
pub fn openapi_v3_hash() -> String {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hex::encode_upper(Sha256::digest(OPENAPI_V3_JSON.as_bytes())))
        .clone()
}

/// Serializes a document the way the checked-in files are written: keys sorted (whatever
/// serde_json features other crates enable), two-space indent, trailing newline.
pub fn to_pretty_json(doc: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                let out: Map<String, Value> = keys
                    .into_iter()
                    .map(|k| (k.clone(), sorted(&map[k])))
                    .collect();
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    let mut s = serde_json::to_string_pretty(&sorted(doc)).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{schema_name, KINDS};
    use std::collections::BTreeSet;

    /// First differing line, for a readable failure.
    fn first_difference(a: &str, b: &str) -> String {
        for (n, (x, y)) in a.lines().zip(b.lines()).enumerate() {
            if x != y {
                return format!("line {}:\n  generated:  {x}\n  checked in: {y}", n + 1);
            }
        }
        format!(
            "lengths differ: generated {} lines, checked in {} lines",
            a.lines().count(),
            b.lines().count()
        )
    }

    #[test]
    fn generated_documents_match_checked_in() {
        let update = std::env::var("UPDATE_OPENAPI").is_ok_and(|v| v == "1");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for (file, generated, checked_in) in [
            (
                "openapi-v2.json",
                to_pretty_json(&openapi_v2()),
                OPENAPI_V2_JSON,
            ),
            (
                "openapi-v3.json",
                to_pretty_json(&openapi_v3()),
                OPENAPI_V3_JSON,
            ),
        ] {
            let path = dir.join(file);
            if update {
                std::fs::write(&path, &generated)
                    .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
                continue;
            }
            assert!(
                generated == checked_in,
                "openapi/{file} does not match the document generated from the types; \
                 regenerate it with `UPDATE_OPENAPI=1 cargo test -p coredump-openapi` and \
                 commit it. First difference at {}",
                first_difference(&generated, checked_in)
            );
        }
    }

    #[test]
    fn checked_in_documents_are_json() {
        for doc in [OPENAPI_V2_JSON, OPENAPI_V3_JSON] {
            let v: Value = serde_json::from_str(doc).expect("valid JSON");
            assert!(v.is_object());
        }
    }

    fn v3() -> Value {
        openapi_v3()
    }

    const OPERATIONS: [&str; 5] = ["get", "put", "post", "patch", "delete"];
    const ACTIONS: [&str; 8] = [
        "get",
        "list",
        "watch",
        "post",
        "put",
        "patch",
        "delete",
        "deletecollection",
    ];

    #[test]
    fn required_paths_exist() {
        let doc = v3();
        let paths = doc["paths"].as_object().expect("paths");
        let ns = "/apis/coredump.io/v1alpha1/namespaces/{namespace}";
        for p in [
            format!("{ns}/coredumps"),
            format!("{ns}/coredumps/{{name}}"),
            format!("{ns}/coredumps/{{name}}/status"),
            format!("{ns}/coredumps/{{name}}/download"),
            format!("{ns}/coredumps/{{name}}/upload"),
            "/apis/coredump.io/v1alpha1/coredumps".to_owned(),
            format!("{ns}/coredumpquotas"),
            format!("{ns}/coredumpquotas/{{name}}"),
            format!("{ns}/coredumpquotas/{{name}}/status"),
            "/apis/coredump.io/v1alpha1/coredumpquotas".to_owned(),
        ] {
            assert!(paths.contains_key(&p), "missing path {p}");
        }
        assert_eq!(
            doc["paths"][format!("{ns}/coredumps")]["get"]["x-kubernetes-action"],
            "list"
        );
        assert_eq!(
            doc["paths"][format!("{ns}/coredumps/{{name}}/upload")]["put"]["x-kubernetes-action"],
            "put"
        );
    }

    #[test]
    fn every_discovered_route_has_a_path() {
        let doc = v3();
        for info in KINDS {
            for sub in info.subresources {
                let p = format!(
                    "/apis/coredump.io/v1alpha1/namespaces/{{namespace}}/{}/{{name}}/{}",
                    info.plural, sub.name
                );
                assert!(doc["paths"].get(&p).is_some(), "no path for {p}");
            }
        }
    }

    #[test]
    fn operations_carry_kubernetes_extensions() {
        for doc in [openapi_v2(), openapi_v3()] {
            let mut ids = BTreeSet::new();
            for (path, item) in doc["paths"].as_object().expect("paths") {
                for method in OPERATIONS {
                    let Some(op) = item.get(method) else { continue };
                    let id = op["operationId"].as_str().expect("operationId");
                    assert!(ids.insert(id.to_owned()), "duplicate operationId {id}");
                    if path == "/apis/coredump.io/v1alpha1/" {
                        continue;
                    }
                    let action = op["x-kubernetes-action"].as_str().expect("action");
                    assert!(ACTIONS.contains(&action), "{path} {method}: {action}");
                    let gvk = &op["x-kubernetes-group-version-kind"];
                    assert!(gvk.is_object(), "{path} {method}: GVK must be an object");
                    assert_eq!(gvk["group"], "coredump.io");
                    assert_eq!(gvk["version"], "v1alpha1");
                    assert!(gvk["kind"].as_str().is_some_and(|k| !k.is_empty()));
                }
            }
        }
    }

    #[test]
    fn patch_accepts_only_json_and_merge_patch() {
        let want: BTreeSet<&str> = paths::PATCH_MEDIA.iter().copied().collect();
        let v3 = v3();
        let v2 = openapi_v2();
        let mut seen = 0;
        for (path, item) in v3["paths"].as_object().expect("paths") {
            if let Some(op) = item.get("patch") {
                let media: BTreeSet<&str> = op["requestBody"]["content"]
                    .as_object()
                    .expect("content")
                    .keys()
                    .map(String::as_str)
                    .collect();
                assert_eq!(media, want, "{path}");
                let consumes: BTreeSet<&str> = v2["paths"][path]["patch"]["consumes"]
                    .as_array()
                    .expect("consumes")
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                assert_eq!(consumes, want, "{path}");
                let has_validation = op["parameters"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["name"] == "fieldValidation"));
                assert!(has_validation, "{path}: PATCH declares fieldValidation");
                seen += 1;
            }
        }
        assert_eq!(seen, 4);
        assert!(!to_pretty_json(&v3).contains("strategic-merge-patch"));
        assert!(!to_pretty_json(&v3).contains("apply-patch"));
    }

    #[test]
    fn list_operations_take_list_parameters() {
        let doc = v3();
        let op =
            &doc["paths"]["/apis/coredump.io/v1alpha1/namespaces/{namespace}/coredumps"]["get"];
        let names: BTreeSet<&str> = op["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        for p in [
            "labelSelector",
            "fieldSelector",
            "limit",
            "continue",
            "resourceVersion",
            "resourceVersionMatch",
            "watch",
            "allowWatchBookmarks",
            "timeoutSeconds",
            "sendInitialEvents",
        ] {
            assert!(names.contains(p), "missing {p}");
        }
    }

    /// Collects every `$ref` in a document.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn every_ref_resolves() {
        for (doc, prefix, defs) in [
            (v3(), "#/components/schemas/", "/components/schemas"),
            (openapi_v2(), "#/definitions/", "/definitions"),
        ] {
            let mut all = Vec::new();
            refs(&doc, &mut all);
            assert!(!all.is_empty());
            for r in all {
                let name = r
                    .strip_prefix(prefix)
                    .unwrap_or_else(|| panic!("bad ref {r}"));
                assert!(
                    doc.pointer(defs).and_then(|d| d.get(name)).is_some(),
                    "unresolved {r}"
                );
            }
        }
    }

    #[test]
    fn kind_schemas_carry_gvk_arrays() {
        for doc in [v3(), openapi_v2()] {
            let defs = doc
                .pointer("/components/schemas")
                .or_else(|| doc.pointer("/definitions"))
                .expect("schemas");
            for info in KINDS {
                for kind in [info.kind, info.list_kind] {
                    let schema = &defs[schema_name(kind)];
                    assert_eq!(
                        schema["x-kubernetes-group-version-kind"],
                        json!([{ "group": "coredump.io", "version": "v1alpha1", "kind": kind }]),
                        "{kind}"
                    );
                    for p in ["apiVersion", "kind", "metadata"] {
                        assert!(schema["properties"].get(p).is_some(), "{kind}.{p}");
                    }
                }
            }
            for name in [
                "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
                "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta",
                "io.k8s.apimachinery.pkg.apis.meta.v1.Time",
                "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
                "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
                "io.k8s.apimachinery.pkg.apis.meta.v1.Patch",
                "io.k8s.apimachinery.pkg.apis.meta.v1.WatchEvent",
                "io.k8s.apimachinery.pkg.api.resource.Quantity",
                "io.coredump.v1alpha1.CoredumpSpec",
                "io.coredump.v1alpha1.CoredumpStatus",
                "io.coredump.v1alpha1.CoredumpQuotaSpec",
                "io.coredump.v1alpha1.CoredumpQuotaStatus",
            ] {
                assert!(defs.get(name).is_some(), "missing schema {name}");
            }
        }
    }

    #[test]
    fn own_schemas_describe_every_field() {
        let doc = v3();
        let defs = doc["components"]["schemas"].as_object().expect("schemas");
        for (name, schema) in defs.iter().filter(|(n, _)| n.starts_with("io.coredump.")) {
            assert!(
                schema["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty()),
                "{name} has no description"
            );
            for (field, prop) in schema["properties"].as_object().expect("properties") {
                let d = prop["description"].as_str().unwrap_or_default();
                assert!(!d.is_empty(), "{name}.{field} has no description");
                assert!(
                    !d.contains('\n'),
                    "{name}.{field}: description not reflowed"
                );
                assert!(prop.get("nullable").is_none() && prop.get("anyOf").is_none());
                assert!(
                    prop.get("default").is_none(),
                    "{name}.{field} has a default"
                );
            }
        }
    }

    #[test]
    fn required_fields() {
        let doc = v3();
        let defs = &doc["components"]["schemas"];
        let required = |name: &str| -> Vec<String> {
            defs[name]["required"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(
            required("io.coredump.v1alpha1.CoredumpSpec"),
            [
                "nodeName",
                "podName",
                "podUID",
                "containerName",
                "signal",
                "dumpTime",
                "size",
                "storedSize",
                "sha256"
            ]
        );
        assert_eq!(required("io.coredump.v1alpha1.Coredump"), ["spec"]);
        assert_eq!(required("io.coredump.v1alpha1.CoredumpList"), ["items"]);
        assert_eq!(required("io.coredump.v1alpha1.CoredumpQuota"), ["spec"]);
        assert!(required("io.coredump.v1alpha1.CoredumpQuotaSpec").is_empty());
        assert!(required("io.coredump.v1alpha1.CoredumpStatus").is_empty());
        let phase = &defs["io.coredump.v1alpha1.CoredumpStatus"]["properties"]["phase"];
        assert_eq!(phase["type"], "string");
        assert_eq!(
            phase["enum"],
            json!(["Pending", "Stored", "Rejected", "Failed"])
        );
        // Fields that are references: wrapped in allOf in v3, siblings in v2.
        let size = &defs["io.coredump.v1alpha1.CoredumpSpec"]["properties"]["size"];
        assert_eq!(
            size["allOf"],
            json!([{ "$ref": "#/components/schemas/io.k8s.apimachinery.pkg.api.resource.Quantity" }])
        );
        let v2 = openapi_v2();
        let size = &v2["definitions"]["io.coredump.v1alpha1.CoredumpSpec"]["properties"]["size"];
        assert_eq!(
            size["$ref"],
            "#/definitions/io.k8s.apimachinery.pkg.api.resource.Quantity"
        );
        assert_eq!(
            v2["definitions"]["io.k8s.apimachinery.pkg.api.resource.Quantity"]["type"],
            "string"
        );
    }

    /// Resolves `$ref` and single-element `allOf` of a schema.
    fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
        let target = schema
            .get("$ref")
            .or_else(|| schema["allOf"].get(0).and_then(|s| s.get("$ref")))
            .and_then(Value::as_str);
        match target {
            Some(r) => doc
                .pointer(r.trim_start_matches('#'))
                .map(|s| resolve(doc, s))
                .unwrap_or(schema),
            None => schema,
        }
    }

    /// Checks that every key of `value` is a property of `schema` and required ones are there.
    fn conforms(doc: &Value, schema: &Value, value: &Value, path: &str) {
        let schema = resolve(doc, schema);
        match value {
            Value::Object(map) => {
                if let Some(props) = schema["properties"].as_object() {
                    for (k, v) in map {
                        let prop = props
                            .get(k)
                            .unwrap_or_else(|| panic!("{path}.{k} is not in the schema"));
                        conforms(doc, prop, v, &format!("{path}.{k}"));
                    }
                    for r in schema["required"].as_array().into_iter().flatten() {
                        let r = r.as_str().unwrap_or_default();
                        assert!(map.contains_key(r), "{path}.{r} required but absent");
                    }
                } else if let Some(extra) = schema.get("additionalProperties") {
                    for (k, v) in map {
                        conforms(doc, extra, v, &format!("{path}[{k}]"));
                    }
                }
            }
            Value::Array(items) => {
                for (n, item) in items.iter().enumerate() {
                    conforms(doc, &schema["items"], item, &format!("{path}[{n}]"));
                }
            }
            _ => {}
        }
    }

    #[test]
    fn serialized_objects_conform_to_the_schema() {
        let coredump = json!({
            "apiVersion": "coredump.io/v1alpha1",
            "kind": "Coredump",
            "metadata": {"name": "x", "namespace": "ns", "labels": {"coredump.io/pod": "web-0"}},
            "spec": {
                "nodeName": "n", "podName": "p", "podUID": "u", "containerName": "c",
                "containerID": "containerd://1", "image": "i", "pid": 1, "hostPID": 2,
                "signal": 11, "signalName": "SIGSEGV", "executable": "/x", "commandLine": "x",
                "uid": 0, "gid": 0, "dumpTime": "2025-01-02T03:04:05Z", "size": "1Mi",
                "storedSize": "1k", "sha256": "0".repeat(64), "truncated": true,
            },
            "status": {"phase": "Stored", "reason": "R", "message": "m",
                       "storedAt": "2025-01-02T03:04:05Z"},
        });
        let coredump: crate::Coredump = serde_json::from_value(coredump).expect("coredump");
        let quota: crate::CoredumpQuota = serde_json::from_value(json!({
            "metadata": {"name": "q"},
            "spec": {"hard": {"storage": "1Gi", "count": "3"}, "maxAge": "1h", "evictOldest": true},
            "status": {"hard": {"storage": "1Gi"}, "used": {"storage": "0"}},
        }))
        .expect("quota");
        for doc in [v3(), openapi_v2()] {
            let defs = doc
                .pointer("/components/schemas")
                .or_else(|| doc.pointer("/definitions"))
                .expect("schemas");
            let check = |kind: &str, value: Value| {
                conforms(&doc, &defs[schema_name(kind)], &value, kind);
            };
            check("Coredump", serde_json::to_value(&coredump).expect("json"));
            check("CoredumpQuota", serde_json::to_value(&quota).expect("json"));
            check(
                "CoredumpList",
                json!({"apiVersion": "coredump.io/v1alpha1", "kind": "CoredumpList",
                       "metadata": {"resourceVersion": "1"},
                       "items": [serde_json::to_value(&coredump).expect("json")]}),
            );
        }
    }

    #[test]
    fn v3_discovery_and_hash() {
        let hash = openapi_v3_hash();
        assert_eq!(hash.len(), 64);
        assert!(hash
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()));
        let d = openapi_v3_discovery(&hash);
        assert_eq!(
            d["paths"]["apis/coredump.io/v1alpha1"]["serverRelativeURL"],
            format!("/openapi/v3/apis/coredump.io/v1alpha1?hash={hash}")
        );
    }
}
