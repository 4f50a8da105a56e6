//! The `download` and `upload` subresources of coredumps.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::Request;
use axum::response::Response;

use super::reqinfo::RequestInfo;
use super::AppState;
use crate::error::ApiError;
use crate::registry::{Ctx, Kind};

pub async fn handle(
    state: &AppState,
    kind: &Arc<dyn Kind>,
    ns: &str,
    info: &RequestInfo,
    _q: &HashMap<String, String>,
    req: Request,
    _ctx: &Ctx,
) -> Result<Response, ApiError> {
    let name = info.name.as_deref().unwrap_or_default();
    let expected = match info.subresource.as_deref() {
        Some("download") => http::Method::GET,
        _ => http::Method::PUT,
    };
    if req.method() != expected {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource: use {expected}"
        )));
    }
    // The object must exist before anything else is said about its core file.
    state.registry.get(&**kind, ns, name).await?;
    Err(ApiError::unavailable(
        "core file transfer is not available on this server yet",
    ))
}
