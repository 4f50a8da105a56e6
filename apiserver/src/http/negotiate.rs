//! Content negotiation: plain JSON, `Table` (meta.k8s.io v1 and v1beta1) and
//! `PartialObjectMetadata[List]`, and how each renders objects, lists and watch events.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::registry::watch::WatchItem;
use crate::registry::{Kind, ListResult};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Json,
    Table {
        version: &'static str,
        include: IncludeObject,
    },
    /// PartialObjectMetadata for single objects and watch events, the List form for lists.
    Metadata {
        version: &'static str,
    },
}

/// What the response looks like for `is_list` (list or watch) given `Accept` and the
/// `includeObject` query parameter. Nothing acceptable → 406.
pub fn choose(
    headers: &HeaderMap,
    is_list: bool,
    is_watch: bool,
    include: Option<&str>,
) -> Result<Output, ApiError> {
    let include = match include {
        None | Some("") | Some("Metadata") => IncludeObject::Metadata,
        Some("None") => IncludeObject::None,
        Some("Object") => IncludeObject::Object,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "includeObject: Unsupported value: {other:?}: supported values: \"None\", \"Metadata\", \"Object\""
            )))
        }
    };
    let accept: Vec<String> = headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if accept.is_empty() {
        return Ok(Output::Json);
    }
    for media in &accept {
        let mut parts = media.split(';').map(str::trim);
        let mime = parts.next().unwrap_or_default().to_ascii_lowercase();
        let mut as_ = None;
        let mut g = None;
        let mut v = None;
        for p in parts {
            if let Some((k, val)) = p.split_once('=') {
                match k.trim() {
                    "as" => as_ = Some(val.trim().to_string()),
                    "g" => g = Some(val.trim().to_string()),
                    "v" => v = Some(val.trim().to_string()),
                    _ => {}
                }
            }
        }
        if !matches!(mime.as_str(), "application/json" | "*/*" | "application/*") {
            continue;
        }
        let version = match v.as_deref() {
            Some("v1") => "v1",
            Some("v1beta1") => "v1beta1",
            _ => "",
        };
        match as_.as_deref() {
            None => return Ok(Output::Json),
            Some(_) if g.as_deref() != Some("meta.k8s.io") || version.is_empty() => continue,
            Some("Table") => return Ok(Output::Table { version, include }),
            Some("PartialObjectMetadata") if !is_list || is_watch => {
                return Ok(Output::Metadata { version })
            }
            Some("PartialObjectMetadataList") if is_list => {
                return Ok(Output::Metadata { version })
            }
            _ => continue,
        }
    }
    Err(ApiError::not_acceptable(format!(
        "only the following media types are accepted: application/json, application/json;as=Table;v=v1;g=meta.k8s.io, application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io, application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io (got {})",
        accept.join(",")
    )))
}

fn partial(version: &str, obj: &Value) -> Value {
    json!({
        "apiVersion": format!("meta.k8s.io/{version}"),
        "kind": "PartialObjectMetadata",
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

fn row(kind: &dyn Kind, obj: &Value, version: &str, include: IncludeObject) -> Value {
    let mut r = json!({"cells": kind.cells(obj)});
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => r["object"] = partial(version, obj),
        IncludeObject::Object => r["object"] = obj.clone(),
    }
    r
}

fn table(
    kind: &dyn Kind,
    rows: Vec<Value>,
    list_meta: Value,
    version: &str,
    headers: bool,
) -> Value {
    let mut t = json!({
        "apiVersion": format!("meta.k8s.io/{version}"),
        "kind": "Table",
        "metadata": list_meta,
        "rows": rows,
    });
    t["columnDefinitions"] = if headers { kind.columns() } else { json!([]) };
    t
}

pub fn render_object(kind: &dyn Kind, out: Output, obj: Value) -> Value {
    match out {
        Output::Json => obj,
        Output::Metadata { version } => partial(version, &obj),
        Output::Table { version, include } => {
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .cloned()
                .unwrap_or(Value::Null);
            let r = row(kind, &obj, version, include);
            table(kind, vec![r], json!({"resourceVersion": rv}), version, true)
        }
    }
}

pub fn render_list(kind: &dyn Kind, out: Output, list: ListResult) -> Value {
    let mut meta = Map::new();
    meta.insert(
        "resourceVersion".into(),
        json!(list.resource_version.to_string()),
    );
    if let Some(c) = &list.continue_token {
        meta.insert("continue".into(), json!(c));
    }
    if let Some(n) = list.remaining {
        meta.insert("remainingItemCount".into(), json!(n));
    }
    let meta = Value::Object(meta);
    match out {
        Output::Json => json!({
            "apiVersion": coredump_openapi::API_VERSION,
            "kind": kind.info().list_kind,
            "metadata": meta,
            "items": list.items,
        }),
        Output::Metadata { version } => json!({
            "apiVersion": format!("meta.k8s.io/{version}"),
            "kind": "PartialObjectMetadataList",
            "metadata": meta,
            "items": list.items.iter().map(|o| partial(version, o)).collect::<Vec<_>>(),
        }),
        Output::Table { version, include } => {
            let rows = list
                .items
                .iter()
                .map(|o| row(kind, o, version, include))
                .collect();
            table(kind, rows, meta, version, true)
        }
    }
}

/// One watch event as a line of JSON. Table events carry column definitions only in the
/// first event, as kube-apiserver sends them.
pub fn render_event(kind: &dyn Kind, out: Output, item: &WatchItem, first: bool) -> Value {
    let object = match item {
        WatchItem::Error(e) => e.status(),
        WatchItem::Event { object, .. } => match out {
            Output::Json => object.clone(),
            Output::Metadata { version } => partial(version, object),
            Output::Table { version, include } => {
                let rv = object
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or(Value::Null);
                table(
                    kind,
                    vec![row(kind, object, version, include)],
                    json!({"resourceVersion": rv}),
                    version,
                    first,
                )
            }
        },
        WatchItem::Bookmark { object } => match out {
            Output::Json => object.clone(),
            Output::Metadata { version } => partial(version, object),
            Output::Table { version, .. } => {
                let meta = object.get("metadata").cloned().unwrap_or_else(|| json!({}));
                table(kind, vec![], meta, version, first)
            }
        },
    };
    json!({"type": item.type_str(), "object": object})
}

/// A JSON body with its content type: every object, list and Status the resource
/// handlers answer (shared by `resources` and `transfer`, which depend on this module
/// and not on each other).
pub fn json_response(code: StatusCode, v: &Value) -> Result<Response, ApiError> {
    let body =
        serde_json::to_vec(v).map_err(|e| ApiError::internal(format!("encoding response: {e}")))?;
    let mut resp = (code, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::ACCEPT,
            HeaderValue::from_str(v).expect("header"),
        );
        h
    }

    #[test]
    fn kubectl_and_client_go_accept_headers() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert!(matches!(
            choose(&accept(kubectl), true, false, None),
            Ok(Output::Table {
                version: "v1",
                include: IncludeObject::Metadata
            })
        ));
        let metadata_client = "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
        assert_eq!(
            choose(&accept(metadata_client), true, false, None).ok(),
            Some(Output::Metadata { version: "v1" })
        );
        assert_eq!(
            choose(&HeaderMap::new(), false, false, None).ok(),
            Some(Output::Json)
        );
        assert_eq!(
            choose(&accept("*/*"), false, false, None).ok(),
            Some(Output::Json)
        );
        let e = choose(
            &accept("application/vnd.kubernetes.protobuf"),
            false,
            false,
            None,
        )
        .expect_err("406");
        assert_eq!(e.code, 406);
        let e = choose(&accept("application/yaml"), false, false, None).expect_err("406");
        assert_eq!(e.code, 406);
        assert_eq!(
            choose(&accept("application/json"), true, false, Some("Bad"))
                .expect_err("400")
                .code,
            400
        );
    }
}
