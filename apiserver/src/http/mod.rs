//! The HTTP surface: routes, content negotiation and the mapping of errors to `Status`.

mod discovery;
pub mod negotiate;
pub mod reqinfo;
pub mod resources;
mod transfer;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{any, get};
use axum::Router;

use crate::error::ApiError;
use crate::registry::Registry;
use reqinfo::{RequestInfo, API_PREFIX};

#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route(&format!("{API_PREFIX}/{{*rest}}"), any(resources::handle))
        .layer(middleware::from_fn_with_state(state.clone(), context));
    Router::new()
        .route("/healthz", get(health))
        .route("/livez", get(health))
        .route("/readyz", get(health))
        .route("/version", get(discovery::version))
        .merge(discovery::routes())
        .merge(api)
        .fallback(not_found)
        .with_state(state)
}

/// Works out what the request asks for (and, with authentication, who asks) before any
/// handler runs.
async fn context(State(_state): State<AppState>, mut req: Request, next: Next) -> Response {
    let q = req.uri().query().unwrap_or_default().to_string();
    let params: Vec<(String, String)> = url::form_urlencoded::parse(q.as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| params.iter().find(|(p, _)| p == k).map(|(_, v)| v.as_str());
    let watch = matches!(get("watch"), Some("true" | "1"));
    let field_name = get("fieldSelector").and_then(|s| {
        s.split(',')
            .find_map(|t| t.trim().strip_prefix("metadata.name=").map(str::to_string))
    });
    let info = RequestInfo::parse(req.method(), req.uri().path(), watch, field_name.as_deref());
    req.extensions_mut().insert(info);
    next.run(req).await
}

async fn health() -> &'static str {
    "ok"
}

async fn not_found() -> ApiError {
    ApiError::path_not_found()
}
