//! `components.schemas` (v3) / `definitions` (v2), derived from the Rust types with schemars
//! and then shaped the way Kubernetes writes its own documents.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIResourceList, DeleteOptions, ListMeta, Patch, Status, WatchEvent,
};
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

use super::Dialect;
use crate::types::{
    gvk_extension, schema_name, Coredump, CoredumpQuota, KindInfo, API_VERSION_DESCRIPTION, KINDS,
    KIND_DESCRIPTION,
};
use crate::{GROUP, VERSION};

/// Schema name of Kubernetes' `Quantity`.
const QUANTITY: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";
/// Prefix of the meta/v1 schema names.
const META_V1: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.";

/// All schemas the documents refer to, keyed by their Kubernetes names.
pub(crate) fn definitions(dialect: Dialect) -> Map<String, Value> {
    let settings = SchemaSettings::openapi3()
        .with(|s| {
            s.definitions_path = dialect.definitions_path().into();
            s.meta_schema = None;
            // The shaping below replaces schemars' OpenAPI transforms: Kubernetes documents
            // have neither `nullable` nor `anyOf` null branches.
            s.transforms = Vec::new();
        })
        // Required = always serialized: the types skip only absent optional fields.
        .for_serialize();
    let mut generator = settings.into_generator();
    // The kinds, then what the operations refer to; referenced types come along.
    generator.subschema_for::<Coredump>();
    generator.subschema_for::<CoredumpQuota>();
    generator.subschema_for::<crate::types::CrashGroup>();
    generator.subschema_for::<ListMeta>();
    generator.subschema_for::<Status>();
    generator.subschema_for::<DeleteOptions>();
    generator.subschema_for::<Patch>();
    generator.subschema_for::<WatchEvent<Coredump>>();
    generator.subschema_for::<APIResourceList>();
    let mut defs = generator.take_definitions(false);

    for info in KINDS {
        defs.insert(schema_name(info.list_kind), list_schema(info, dialect));
    }

    // Meta kinds carry their group-version-kinds as in Kubernetes' own documents (k8s-openapi
    // leaves them out).
    let ours = json!({ "group": GROUP, "version": VERSION });
    for (kind, in_our_group) in [
        ("Status", false),
        ("APIResourceList", false),
        ("DeleteOptions", true),
        ("WatchEvent", true),
    ] {
        if let Some(Value::Object(schema)) = defs.get_mut(&format!("{META_V1}{kind}")) {
            let mut gvks = vec![json!({ "group": "", "version": "v1", "kind": kind })];
            if in_our_group {
                let mut gvk = ours.clone();
                gvk["kind"] = kind.into();
                gvks.push(gvk);
            }
            schema.insert("x-kubernetes-group-version-kind".into(), Value::Array(gvks));
        }
    }

    for (name, schema) in defs.iter_mut() {
        let own = name.starts_with(&schema_name(""));
        shape(schema, dialect, own);
    }

    // Quantity accepts a string or a number. Swagger 2.0 has no oneOf: Kubernetes writes a
    // string there.
    if let Some(Value::Object(quantity)) = defs.get_mut(QUANTITY) {
        quantity.remove("x-kubernetes-int-or-string");
        match dialect {
            Dialect::V2 => {
                quantity.insert("type".into(), "string".into());
            }
            Dialect::V3 => {
                quantity.insert(
                    "oneOf".into(),
                    json!([{ "type": "string" }, { "type": "number" }]),
                );
            }
        }
    }
    defs
}

/// The schema of `<Kind>List`, which has no Rust type: the server builds lists generically.
fn list_schema(info: &KindInfo, dialect: Dialect) -> Value {
    let mut schema = json!({
        "description": format!("{} is a list of {} objects.", info.list_kind, info.kind),
        "type": "object",
        "properties": {
            "apiVersion": { "type": "string", "description": API_VERSION_DESCRIPTION },
            "kind": { "type": "string", "description": KIND_DESCRIPTION },
            "metadata": {
                "$ref": dialect.reference(&format!("{META_V1}ListMeta")),
                "description": "Standard list metadata: the resourceVersion the list was read \
                    at, and continue for the next page.",
            },
            "items": {
                "type": "array",
                "description": format!("The {}.", info.plural),
                "items": { "$ref": dialect.reference(&schema_name(info.kind)) },
            },
        },
        "required": ["items"],
        "x-kubernetes-group-version-kind": gvk_extension(info.list_kind),
    });
    shape(&mut schema, dialect, true);
    schema
}

/// Shapes a schema schemars produced like Kubernetes' own: optional fields are simply not
/// required (no null branch), no defaults, descriptions as flowing text, and in OpenAPI v3 a
/// `$ref` with siblings (a description) wrapped in `allOf`, since v3.0 ignores siblings of
/// `$ref`. Swagger 2.0 tools, kubectl's included, read siblings as Kubernetes writes them.
fn shape(schema: &mut Value, dialect: Dialect, own: bool) {
    let Value::Object(obj) = schema else {
        return;
    };
    unwrap_nullable(obj);
    // Our types default missing fields for lenient decoding; that is no API default.
    obj.remove("default");
    if own {
        if let Some(Value::String(d)) = obj.get_mut("description") {
            *d = reflow(d);
        }
    }

    if let Some(Value::Object(props)) = obj.get_mut("properties") {
        for prop in props.values_mut() {
            shape(prop, dialect, own);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(sub) = obj.get_mut(key) {
            shape(sub, dialect, own);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(subs)) = obj.get_mut(key) {
            subs.iter_mut().for_each(|s| shape(s, dialect, own));
        }
    }

    if dialect == Dialect::V3 && obj.len() > 1 {
        if let Some(reference) = obj.remove("$ref") {
            obj.insert("allOf".into(), json!([{ "$ref": reference }]));
        }
    }
}

/// Removes what schemars adds to let an `Option` be null: an `anyOf` with a `null` branch,
/// `"null"` in `type`, `null` in `enum`.
fn unwrap_nullable(obj: &mut Map<String, Value>) {
    let is_null = |v: &Value| v.get("type").and_then(Value::as_str) == Some("null");
    if let Some(Value::Array(branches)) = obj.get("anyOf") {
        if branches.len() == 2 && branches.iter().any(is_null) {
            let inner = branches.iter().find(|b| !is_null(b)).cloned();
            obj.remove("anyOf");
            if let Some(Value::Object(inner)) = inner {
                for (k, v) in inner {
                    // The field's own description wins over the referenced type's.
                    obj.entry(k).or_insert(v);
                }
            }
        }
    }
    if let Some(Value::Array(types)) = obj.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let single = types.remove(0);
            obj.insert("type".into(), single);
        }
    }
    if let Some(Value::Array(values)) = obj.get_mut("enum") {
        values.retain(|v| !v.is_null());
    }
}

/// Joins the lines of a doc comment into flowing text, keeping blank lines as paragraph
/// breaks, as Kubernetes' generator does with Go comments.
fn reflow(doc: &str) -> String {
    doc.split("\n\n")
        .map(|para| {
            para.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflow_joins_lines_and_keeps_paragraphs() {
        assert_eq!(reflow("a\nb\n\nc\n d"), "a b\n\nc d");
        assert_eq!(reflow("single"), "single");
    }

    #[test]
    fn nullable_is_unwrapped() {
        let mut v = json!({
            "description": "d",
            "anyOf": [{ "$ref": "#/x" }, { "type": "null" }],
        });
        shape(&mut v, Dialect::V3, true);
        assert_eq!(
            v,
            json!({ "description": "d", "allOf": [{ "$ref": "#/x" }] })
        );

        let mut v = json!({ "type": ["string", "null"], "enum": ["A", null] });
        shape(&mut v, Dialect::V2, true);
        assert_eq!(v, json!({ "type": "string", "enum": ["A"] }));

        let mut v = json!({ "$ref": "#/x", "description": "d" });
        shape(&mut v, Dialect::V2, true);
        assert_eq!(v, json!({ "$ref": "#/x", "description": "d" }));
    }
}
