//! The CRD baseline: the same objects as a CustomResourceDefinition, its structural
//! schema derived from our server's OpenAPI v3 document.

use super::*;

/// The CRD's `openAPIV3Schema`, derived from the OpenAPI v3 document our server serves,
/// and a sentence on how.
pub(super) async fn crd_schema(direct: &Client) -> Result<(Value, String), Error> {
    let req = build(
        "openapi request",
        Request::new(OPENAPI_V3.0).get(OPENAPI_V3.1, &Default::default()),
    )?;
    let text = direct
        .request_text(req)
        .await
        .map_err(|e| kube_err("GET our OpenAPI v3", e))?;
    let doc: Value = parse("our OpenAPI v3", &text)?;
    let schema = structural(&doc)?;
    Ok((
        schema,
        "The CRD's schema is ours, derived from our server's OpenAPI v3 document ($refs \
         inlined, Quantity as int-or-string with the Kubernetes quantity pattern), so the \
         baseline checks types, required fields and enums; ours also checks names, label \
         syntax, the sha256 form, the signal range and lengths, and runs quota admission."
            .to_string(),
    ))
}

pub(super) const SCHEMA_PREFIX: &str = "#/components/schemas/";
pub(super) const COREDUMP_SCHEMA: &str = "io.coredump.v1alpha1.Coredump";
/// What controller-gen writes for a `resource.Quantity`.
pub(super) const QUANTITY_PATTERN: &str = concat!(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))",
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
);

/// The Coredump schema of an OpenAPI v3 document as a structural schema a CRD accepts.
pub fn structural(doc: &Value) -> Result<Value, Error> {
    let schemas = doc
        .pointer("/components/schemas")
        .ok_or_else(|| Error::Setup("OpenAPI v3: no components.schemas".into()))?;
    let root = schemas
        .get(COREDUMP_SCHEMA)
        .ok_or_else(|| Error::Setup(format!("OpenAPI v3: no {COREDUMP_SCHEMA}")))?;
    let mut out = convert(schemas, root, 0)?;
    // A CRD may say nothing about metadata beyond its type.
    if let Some(props) = out.get_mut("properties").and_then(Value::as_object_mut) {
        props.insert("metadata".into(), json!({"type": "object"}));
    }
    Ok(out)
}

pub(super) fn convert(schemas: &Value, node: &Value, depth: usize) -> Result<Value, Error> {
    if depth > 32 {
        return Err(Error::Setup("OpenAPI v3: $refs nest too deep".into()));
    }
    let Some(obj) = node.as_object() else {
        return Err(Error::Setup(format!("OpenAPI v3: not a schema: {node}")));
    };
    // `$ref` or `allOf: [{$ref}]`: the referenced schema, with this node's description.
    let referenced = match (obj.get("$ref"), obj.get("allOf").and_then(Value::as_array)) {
        (Some(r), _) => Some(r),
        (None, Some(all)) if all.len() == 1 => all[0].get("$ref"),
        _ => None,
    };
    if let Some(r) = referenced {
        let name = r
            .as_str()
            .and_then(|r| r.strip_prefix(SCHEMA_PREFIX))
            .ok_or_else(|| Error::Setup(format!("OpenAPI v3: unsupported $ref {r}")))?;
        let target = schemas
            .get(name)
            .ok_or_else(|| Error::Setup(format!("OpenAPI v3: missing schema {name}")))?;
        let mut out = convert(schemas, target, depth + 1)?;
        if let (Some(d), Some(o)) = (obj.get("description"), out.as_object_mut()) {
            o.insert("description".into(), d.clone());
        }
        return Ok(out);
    }
    let mut out = serde_json::Map::new();
    for (k, v) in obj {
        match k.as_str() {
            "type" | "format" | "description" | "required" | "enum" | "pattern" | "minimum"
            | "maximum" | "minLength" | "maxLength" | "minItems" | "maxItems" | "nullable" => {
                out.insert(k.clone(), v.clone());
            }
            "properties" => {
                let mut props = serde_json::Map::new();
                for (name, p) in v.as_object().into_iter().flatten() {
                    props.insert(name.clone(), convert(schemas, p, depth + 1)?);
                }
                out.insert(k.clone(), Value::Object(props));
            }
            "items" | "additionalProperties" if v.is_object() => {
                out.insert(k.clone(), convert(schemas, v, depth + 1)?);
            }
            // A string-or-number (Quantity): CRDs express it as int-or-string.
            "oneOf" => {
                out.insert("x-kubernetes-int-or-string".into(), json!(true));
                out.insert(
                    "anyOf".into(),
                    json!([{"type": "integer"}, {"type": "string"}]),
                );
                out.insert("pattern".into(), json!(QUANTITY_PATTERN));
            }
            // Extensions a CRD rejects or does not need (x-kubernetes-group-version-kind).
            _ => {}
        }
    }
    Ok(Value::Object(out))
}

/// Our printer columns (name, JSON path, description, priority), Age aside.
pub(super) const COLUMNS: &[(&str, &str, &str, u32)] = &[
    (
        "Pod",
        ".spec.podName",
        "The pod whose container dumped core.",
        0,
    ),
    (
        "Container",
        ".spec.containerName",
        "The container that dumped core.",
        0,
    ),
    (
        "Signal",
        ".spec.signalName",
        "The signal that killed the process.",
        0,
    ),
    ("Size", ".spec.size", "Size of the core file.", 0),
    (
        "Phase",
        ".status.phase",
        "Pending, Stored, Rejected or Failed.",
        0,
    ),
    (
        "Node",
        ".spec.nodeName",
        "The node the crash happened on.",
        1,
    ),
    (
        "Executable",
        ".spec.executable",
        "Path of the crashed executable inside the container.",
        1,
    ),
    ("Image", ".spec.image", "The container's image.", 1),
];

pub(super) fn crd_manifest(schema: Value) -> Value {
    let mut columns: Vec<Value> = COLUMNS
        .iter()
        .map(|(name, path, desc, priority)| {
            json!({"name": name, "type": "string", "jsonPath": path, "description": desc,
                   "priority": priority})
        })
        .collect();
    // Where ours has it: after Phase, before the wide columns.
    columns.insert(
        5,
        json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}),
    );
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": CRD_GROUP,
            "scope": "Namespaced",
            "names": {"plural": "coredumps", "singular": "coredump", "kind": "Coredump",
                      "listKind": "CoredumpList"},
            "versions": [{
                "name": "v1alpha1",
                "served": true,
                "storage": true,
                "schema": {"openAPIV3Schema": schema},
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                // Ours support these field selectors too.
                "selectableFields": [
                    {"jsonPath": ".spec.nodeName"},
                    {"jsonPath": ".spec.podName"},
                    {"jsonPath": ".spec.containerName"},
                    {"jsonPath": ".status.phase"},
                ],
            }],
        },
    })
}

/// Creates the CRD and waits until it is Established and its resource answers.
pub(super) async fn create_crd(admin: &Client, schema: Value) -> Result<(), Error> {
    let body = serde_json::to_vec(&crd_manifest(schema)).map_err(Error::Json)?;
    let req = build(
        "CRD request",
        Request::new(CRDS).create(&PostParams::default(), body),
    )?;
    admin
        .request_text(req)
        .await
        .map_err(|e| kube_err("create the CRD", e))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::from("not Established yet");
    loop {
        let crd = admin
            .request_text(build(
                "CRD get",
                Request::new(CRDS).get(CRD_NAME, &Default::default()),
            )?)
            .await
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| e.to_string()));
        let established = match crd {
            Ok(crd) => crd
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Established" && c["status"] == "True")
                }),
            Err(e) => {
                last = e;
                false
            }
        };
        if established {
            // Established says the handler is installed; a list proves it serves.
            let probe = build(
                "CRD probe",
                Request::new(format!("{CRD_BASE}/coredumps")).list(&ListParams::default().limit(1)),
            )?;
            match admin.request_text(probe).await {
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: format!("CRD {CRD_NAME} to be served"),
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structural_schema_inlines_refs_and_quantities() {
        let doc = json!({"components": {"schemas": {
            "io.coredump.v1alpha1.Coredump": {
                "type": "object",
                "x-kubernetes-group-version-kind": [{}],
                "properties": {
                    "metadata": {"allOf": [{"$ref": "#/components/schemas/Meta"}]},
                    "spec": {"allOf": [{"$ref": "#/components/schemas/Spec"}], "description": "d"}
                }
            },
            "Meta": {"type": "object", "properties": {"name": {"type": "string"}}},
            "Spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"$ref": "#/components/schemas/Q"}
            }},
            "Q": {"oneOf": [{"type": "string"}, {"type": "number"}]}
        }}});
        let s = structural(&doc).expect("schema");
        assert_eq!(s["properties"]["metadata"], json!({"type": "object"}));
        assert_eq!(s["properties"]["spec"]["description"], "d");
        assert_eq!(s["properties"]["spec"]["required"], json!(["size"]));
        let q = &s["properties"]["spec"]["properties"]["size"];
        assert_eq!(q["x-kubernetes-int-or-string"], true);
        assert!(s.get("x-kubernetes-group-version-kind").is_none());
    }
}
