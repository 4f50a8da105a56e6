//! Resource requests: maps HTTP (method, path, query, body, Accept) onto the registry and
//! renders its answers.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::Value;
use tokio_stream::wrappers::ReceiverStream;

use super::negotiate::{self, json_response, Output};
use super::query::Query;
use super::AppState;
use crate::auth::UserInfo;
use crate::error::ApiError;
use crate::registry::{
    self, Attributes, Ctx, FieldValidation, Kind, LabelSelector, ListOptions, Operation, PatchType,
    Preconditions, Registry, WriteOpts,
};
use crate::reqinfo::RequestInfo;

/// Largest JSON body accepted (kube-apiserver's limit is 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

pub async fn handle(State(state): State<AppState>, req: Request) -> Response {
    match dispatch(state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn dispatch(state: AppState, req: Request) -> Result<Response, ApiError> {
    let info = req
        .extensions()
        .get::<RequestInfo>()
        .cloned()
        .ok_or_else(|| ApiError::internal("request info missing"))?;
    let user = req
        .extensions()
        .get::<UserInfo>()
        .cloned()
        .unwrap_or_default();
    // The query as authorization saw it (parsed once, in the request context).
    let q = req
        .extensions()
        .get::<Query>()
        .cloned()
        .ok_or_else(|| ApiError::internal("request query missing"))?;
    let registry = Arc::clone(&state.registry);
    let kind = registry
        .kind(&info.resource)
        .ok_or_else(ApiError::path_not_found)?;
    if info.extra_segments {
        return Err(ApiError::path_not_found());
    }
    if info.subresource.is_none() && !kind.info().verbs.contains(&info.verb.as_str()) {
        // E.g. a create or update of a CrashGroup, which only the server writes.
        return Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        ));
    }
    let Some(ns) = info.namespace.clone() else {
        // Only lists and watches span namespaces; a name needs its namespace.
        return match (info.verb.as_str(), &info.path_name) {
            ("list" | "watch", None) if info.subresource.is_none() => {
                list_or_watch(&state, &kind, None, &info, &q, req.headers()).await
            }
            _ => Err(ApiError::path_not_found()),
        };
    };
    if let Err(why) = coredump_openapi::types::validate_namespace_name(&ns) {
        return Err(ApiError::bad_request(format!(
            "invalid namespace {ns:?}: {why}"
        )));
    }
    let mut ctx = Ctx {
        user,
        dry_run: dry_run(&q)?,
        warnings: Vec::new(),
    };
    let validation = field_validation(&q)?;
    let headers = req.headers().clone();
    // Admission on the request: here for what needs no object, below for a get (on the
    // object read) and a create (on its body).
    let op = Operation::of(
        req.method(),
        info.subresource.as_deref(),
        info.path_name.is_some(),
    );
    let attrs = |object| Attributes {
        kind: &*kind,
        operation: op,
        namespace: &ns,
        name: info.path_name.as_deref(),
        user: &ctx.user,
        object,
    };
    if !matches!(op, Operation::Get | Operation::Create) {
        registry.admit(&attrs(None)).await?;
    }
    let status_only = match info.subresource.as_deref() {
        None => false,
        Some("status") => true,
        Some("download" | "upload")
            if kind
                .info()
                .subresource(info.subresource.as_deref().unwrap_or_default())
                .is_some() =>
        {
            return super::transfer::handle(&state, &kind, &ns, &info, &q, req, &ctx).await;
        }
        Some(_) => return Err(ApiError::path_not_found()),
    };
    let name = info.path_name.clone();
    let write = WriteOpts {
        status_only,
        validation,
    };
    let resp = match (req.method().clone(), name) {
        (Method::GET, None) => {
            if status_only {
                return Err(ApiError::path_not_found());
            }
            return list_or_watch(&state, &kind, Some(&ns), &info, &q, &headers).await;
        }
        (Method::GET, Some(name)) => {
            let out = negotiate::choose(
                &headers,
                false,
                false,
                q.get("includeObject").map(String::as_str),
            )?;
            if info.verb == "watch" {
                return list_or_watch(&state, &kind, Some(&ns), &info, &q, &headers).await;
            }
            let obj = registry.get(&*kind, &ns, &name).await?;
            registry.admit(&attrs(Some(&obj))).await?;
            json_response(StatusCode::OK, &negotiate::render_object(&*kind, out, obj))
        }
        (Method::POST, None) => {
            if status_only {
                return Err(ApiError::method_not_allowed(
                    "the server does not allow this method on the requested resource",
                ));
            }
            let out = negotiate::choose(&headers, false, false, None)?;
            let body = read_json(req, &["application/json"]).await?;
            state.namespaces.check_create(&ns).await?;
            registry.admit(&attrs(Some(&body))).await?;
            let obj = registry
                .create(&*kind, &ns, body, validation, &mut ctx)
                .await?;
            json_response(
                StatusCode::CREATED,
                &negotiate::render_object(&*kind, out, obj),
            )
        }
        (Method::PUT, Some(name)) => {
            let out = negotiate::choose(&headers, false, false, None)?;
            let body = read_json(req, &["application/json"]).await?;
            let obj = registry
                .update(&*kind, &ns, &name, body, write, &mut ctx)
                .await?;
            json_response(StatusCode::OK, &negotiate::render_object(&*kind, out, obj))
        }
        (Method::PATCH, Some(name)) => {
            let out = negotiate::choose(&headers, false, false, None)?;
            let ct = content_type(&headers);
            let patch_type = match ct.as_str() {
                "application/merge-patch+json" => PatchType::Merge,
                "application/json-patch+json" => PatchType::Json,
                other => return Err(ApiError::unsupported_media_type(other)),
            };
            let body = read_json(
                req,
                &[
                    "application/merge-patch+json",
                    "application/json-patch+json",
                ],
            )
            .await?;
            let obj = registry
                .patch(&*kind, &ns, &name, (patch_type, body), write, &mut ctx)
                .await?;
            json_response(StatusCode::OK, &negotiate::render_object(&*kind, out, obj))
        }
        (Method::DELETE, Some(name)) => {
            if status_only {
                return Err(ApiError::method_not_allowed(
                    "the server does not allow this method on the requested resource",
                ));
            }
            let (pre, opts_dry) = delete_options(req).await?;
            ctx.dry_run |= opts_dry;
            let (code, obj) = registry.delete(&*kind, &ns, &name, &pre, &ctx).await?;
            json_response(StatusCode::from_u16(code).unwrap_or(StatusCode::OK), &obj)
        }
        (Method::DELETE, None) => {
            let opts = list_options(&kind, &q)?;
            let (pre, opts_dry) = delete_options(req).await?;
            ctx.dry_run |= opts_dry;
            let deleted = registry
                .delete_collection(&*kind, Some(&ns), &opts, &pre, &ctx)
                .await?;
            let list = registry::ListResult {
                items: deleted,
                resource_version: registry.store.durable_rv(),
                continue_token: None,
                remaining: None,
            };
            json_response(
                StatusCode::OK,
                &negotiate::render_list(&*kind, Output::Json, list),
            )
        }
        _ => Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        )),
    }?;
    Ok(with_warnings(resp, &ctx.warnings))
}

async fn list_or_watch(
    state: &AppState,
    kind: &Arc<dyn Kind>,
    ns: Option<&str>,
    info: &RequestInfo,
    q: &Query,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let watch = info.verb == "watch";
    let mut opts = list_options(kind, q)?;
    if let Some(name) = &info.path_name {
        // GET …/name?watch=true: a watch of that one object, whatever else the selector
        // says (a selector naming another object is a 400, as in kube-apiserver).
        opts.field = opts.field.and_name(name)?;
    }
    let out = negotiate::choose(
        headers,
        true,
        watch,
        q.get("includeObject").map(String::as_str),
    )?;
    if !watch {
        let list = state.registry.list(&**kind, ns, &opts).await?;
        return json_response(StatusCode::OK, &negotiate::render_list(&**kind, out, list));
    }
    let rx = registry::watch::start(
        Arc::clone(&state.registry),
        Arc::clone(kind),
        ns.map(str::to_string),
        opts,
    )?;
    let kind = Arc::clone(kind);
    let mut first = true;
    let stream = ReceiverStream::new(rx).map(move |item| {
        let ev = negotiate::render_event(&*kind, out, &item, first);
        first = false;
        let mut line = serde_json::to_vec(&ev).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(line))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Proxies must not buffer the stream.
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(resp)
}

pub fn list_options(kind: &Arc<dyn Kind>, q: &Query) -> Result<ListOptions, ApiError> {
    let fields = Registry::supported_fields(&**kind);
    Ok(ListOptions {
        label: LabelSelector::parse(
            q.get("labelSelector")
                .map(String::as_str)
                .unwrap_or_default(),
        )?,
        field: {
            // Parsed with the query (authorization saw the same); checked against the
            // kind's fields here.
            let field = q.field_selector()?.clone();
            field.check_fields(&fields, kind.info().kind)?;
            field
        },
        limit: match q.get("limit").filter(|s| !s.is_empty()) {
            Some(l) => Some(
                l.parse()
                    .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
            ),
            None => None,
        },
        continue_token: q.get("continue").filter(|s| !s.is_empty()).cloned(),
        resource_version: q.get("resourceVersion").cloned(),
        resource_version_match: q
            .get("resourceVersionMatch")
            .filter(|s| !s.is_empty())
            .cloned(),
        allow_bookmarks: q.flag("allowWatchBookmarks")?,
        timeout_seconds: match q.non_empty("timeoutSeconds") {
            Some(t) => Some(t.parse().map_err(|_| {
                ApiError::bad_request(format!("timeoutSeconds: invalid value {t:?}"))
            })?),
            None => None,
        },
        send_initial_events: match q.non_empty("sendInitialEvents") {
            Some(_) => Some(q.flag("sendInitialEvents")?),
            None => None,
        },
    })
}

fn dry_run(q: &Query) -> Result<bool, ApiError> {
    match q.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "dryRun: Unsupported value: {other:?}: supported values: \"All\""
        ))),
    }
}

fn field_validation(q: &Query) -> Result<FieldValidation, ApiError> {
    match q.get("fieldValidation").map(String::as_str) {
        None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
        Some("Strict") => Ok(FieldValidation::Strict),
        Some("Ignore") => Ok(FieldValidation::Ignore),
        Some(other) => Err(ApiError::bad_request(format!(
            "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Warn\", \"Strict\""
        ))),
    }
}

pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// Reads a JSON body of one of the `allowed` content types, at most [`MAX_BODY`] bytes.
async fn read_json(req: Request, allowed: &[&str]) -> Result<Value, ApiError> {
    let ct = content_type(req.headers());
    if !ct.is_empty() && !allowed.contains(&ct.as_str()) {
        return Err(ApiError::unsupported_media_type(&ct));
    }
    let bytes = read_body(req).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "the body of the request could not be decoded as JSON: {e}"
        ))
    })
}

pub async fn read_body(req: Request) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|e| {
            let too_large = std::error::Error::source(&e).is_some_and(|s| {
                s.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
            });
            if too_large {
                ApiError::too_large(format!("the request body is larger than {MAX_BODY} bytes"))
            } else {
                ApiError::bad_request(format!("reading the request body: {e}"))
            }
        })
}

/// `DeleteOptions` from the body, if any: preconditions and dryRun.
async fn delete_options(req: Request) -> Result<(Preconditions, bool), ApiError> {
    let bytes = read_body(req).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok((Preconditions::default(), false));
    }
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("DeleteOptions could not be decoded: {e}")))?;
    if let Some(k) = v.get("kind").and_then(Value::as_str) {
        if k != "DeleteOptions" {
            return Err(ApiError::bad_request(format!(
                "expected DeleteOptions, got kind {k:?}"
            )));
        }
    }
    let pre: Preconditions = v
        .get("preconditions")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("DeleteOptions.preconditions: {e}")))?
        .unwrap_or_default();
    let dry = match v.get("dryRun").and_then(Value::as_array) {
        None => false,
        Some(a) if a.is_empty() => false,
        Some(a) if a.iter().all(|x| x == "All") => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "dryRun: Unsupported value: supported values: \"All\"",
            ))
        }
    };
    Ok((pre, dry))
}

fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}
