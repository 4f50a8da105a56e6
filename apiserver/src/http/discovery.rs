//! Discovery and OpenAPI documents. Cheap and independent of the store: the aggregator's
//! availability check reads `/apis/coredump.io/v1alpha1` every 30 s with a 5 s deadline.

use axum::extract::Query;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use coredump_openapi::{discovery, openapi};

use super::AppState;

const AGGREGATED_V2: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/apis", get(apis))
        .route(
            "/apis/coredump.io",
            get(|| async { Json(discovery::api_group()) }),
        )
        .route(
            "/apis/coredump.io/v1alpha1",
            get(|| async { Json(discovery::api_resource_list()) }),
        )
        .route("/openapi/v2", get(openapi_v2))
        .route("/openapi/v3", get(openapi_v3_index))
        .route("/openapi/v3/apis/coredump.io/v1alpha1", get(openapi_v3))
}

/// `/apis`: aggregated discovery (v2) when the client asks for it, the legacy
/// `APIGroupList` otherwise.
async fn apis(headers: HeaderMap) -> Response {
    let wants_aggregated = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| {
            let v = v.replace(' ', "");
            v.contains("g=apidiscovery.k8s.io")
                && v.contains("v=v2")
                && v.contains("as=APIGroupDiscoveryList")
        });
    if wants_aggregated {
        let mut resp = Json(discovery::aggregated_discovery()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(AGGREGATED_V2),
        );
        resp
    } else {
        Json(discovery::api_group_list()).into_response()
    }
}

async fn openapi_v2() -> Response {
    json_bytes(openapi::OPENAPI_V2_JSON)
}

async fn openapi_v3_index() -> Response {
    Json(openapi::openapi_v3_discovery(&openapi::openapi_v3_hash())).into_response()
}

#[derive(Deserialize)]
struct HashQuery {
    hash: Option<String>,
}

/// The v3 document. A request for another hash gets the current document (never a
/// redirect, which clients would follow into a loop), marked uncacheable.
async fn openapi_v3(Query(q): Query<HashQuery>) -> Response {
    let current = openapi::openapi_v3_hash();
    let mut resp = json_bytes(openapi::OPENAPI_V3_JSON);
    let cache = if q.hash.as_deref() == Some(current.as_str()) {
        "public, immutable"
    } else {
        "no-cache, private"
    };
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{current}\"")) {
        resp.headers_mut().insert(header::ETAG, etag);
    }
    resp
}

fn json_bytes(body: &'static str) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

pub async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "major": "0",
        "minor": "1",
        "gitVersion": concat!("v", env!("CARGO_PKG_VERSION")),
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    }))
}
