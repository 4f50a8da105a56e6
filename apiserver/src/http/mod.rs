//! The HTTP surface: routes, content negotiation and the mapping of errors to `Status`.

mod discovery;
mod drain;
pub mod negotiate;
pub mod query;
pub mod resources;
#[cfg(test)]
mod router_tests;
mod transfer;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use futures::FutureExt;
use std::panic::AssertUnwindSafe;
use tracing::Instrument;

use crate::auth::Auth;
use crate::blobs::BlobStore;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::namespaces::Namespaces;
use crate::registry::{FieldSelector, Registry};
use crate::reqinfo::{RequestInfo, API_PREFIX};
use crate::uploads::Uploads;
use query::Query;

#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub blobs: Arc<dyn BlobStore>,
    pub auth: Arc<Auth>,
    pub uploads: Arc<Uploads>,
    pub namespaces: Arc<Namespaces>,
}

pub fn router(state: AppState) -> Router {
    // Health stays outside the request context: open to all, never authenticated.
    let health = Router::new()
        .route("/healthz", get(health))
        .route("/livez", get(health))
        .route("/readyz", get(ready));
    let api = Router::new()
        .route(&format!("{API_PREFIX}/{{*rest}}"), any(resources::handle))
        .route("/version", get(discovery::version))
        .route("/metrics", get(metrics))
        .merge(discovery::routes())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), context));
    health.merge(api).with_state(state)
}

/// Works out what the request asks for (and, with authentication, who asks) before any
/// handler runs.
async fn context(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    // One parse of the query for authorization and the handlers alike (see `query`).
    let parsed = Query::parse(req.uri().query()).and_then(|q| {
        let watch = q.flag("watch")?;
        Ok((q, watch))
    });
    let (query, watch) = match parsed {
        Ok(p) => p,
        Err(e) => {
            let info = RequestInfo::parse(req.method(), req.uri().path(), false, None);
            let resp = e.into_response();
            state.metrics.observe(&info, resp.status().as_u16(), 0.0);
            return resp;
        }
    };
    // A selector's name is what authorization sees (kube-apiserver's RequestInfo);
    // a selector that does not parse names nothing, and the handler answers 400.
    let field_name = query
        .field_selector()
        .ok()
        .and_then(FieldSelector::pinned_name);
    let info = RequestInfo::parse(req.method(), req.uri().path(), watch, field_name);
    let span = tracing::info_span!(
        "request",
        verb = %info.verb,
        resource = %info.resource,
        namespace = info.namespace.as_deref().unwrap_or(""),
        name = info.name.as_deref().unwrap_or(""),
        path = %info.path,
    );
    req.extensions_mut().insert(info.clone());
    req.extensions_mut().insert(query);
    // A refusal must reach a client still sending its body (see `drain`).
    let mut req = req.map(drain::DrainOnDrop::wrap);
    let start = std::time::Instant::now();
    // Who asks, and may they: before any handler reads the store, so a user without
    // access learns nothing (403, never a 404 that reveals names).
    let resp = match state
        .auth
        .check_request(&mut req, &info)
        .instrument(span.clone())
        .await
    {
        // A handler that panics (a bug) answers 500 with a Status, like any other
        // error, instead of resetting the client's connection.
        Ok(_) => match AssertUnwindSafe(next.run(req).instrument(span.clone()))
            .catch_unwind()
            .await
        {
            Ok(resp) => resp,
            Err(_) => {
                span.in_scope(|| tracing::error!("request handler panicked"));
                ApiError::internal("the server failed to handle the request").into_response()
            }
        },
        Err(e) => e.into_response(),
    };
    let code = resp.status().as_u16();
    state
        .metrics
        .observe(&info, code, start.elapsed().as_secs_f64());
    span.in_scope(|| tracing::debug!(code, "answered"));
    resp
}

async fn health() -> &'static str {
    "ok"
}

/// Ready once the store answers (it is opened before the listener, so this checks that
/// it still reads).
async fn ready(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if !state.auth.is_ready() {
        return Err(ApiError::unavailable(
            "the authentication settings (kube-system/extension-apiserver-authentication) are not read yet",
        ));
    }
    if !state.namespaces.is_ready() {
        return Err(ApiError::unavailable("the namespaces are not listed yet"));
    }
    state
        .registry
        .store
        .current_rv()
        .map(|_| "ok")
        .map_err(|e| ApiError::unavailable(format!("store: {e}")))
}

async fn metrics(State(state): State<AppState>) -> String {
    state.metrics.render()
}

async fn not_found() -> ApiError {
    ApiError::path_not_found()
}
