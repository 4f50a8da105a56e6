//! Who is making a request, and whether they may: delegated authentication and
//! authorization, as an extension API server does them.
//!
//! Authentication, in kube-apiserver's order: the front proxy (the aggregator's client
//! certificate plus `X-Remote-*` headers), then client certificates from the cluster's client
//! CA, then bearer tokens by TokenReview. What to trust comes from ConfigMap
//! `kube-system/extension-apiserver-authentication`, followed as it changes. Authorization
//! is a SubjectAccessReview per request. Both reviews are cached for a few seconds.

mod authz;
mod cache;
mod requestheader;
mod trust;
mod x509;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use http::header::{HeaderMap, HeaderName, AUTHORIZATION};
use http::Extensions;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::PostParams;
use kube::Api;
use rustls::pki_types::{CertificateDer, UnixTime};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::Instrument;

use crate::error::ApiError;
use crate::reqinfo::RequestInfo;
use crate::serve::PeerCerts;
use cache::TtlCache;
use trust::{Trust, TrustRx};

pub use authz::{Action, Attributes, Decision};
pub use trust::{TrustError, CONFIGMAP_NAME, CONFIGMAP_NAMESPACE};
pub use x509::CertError;

/// Added to every authenticated user.
pub const SYSTEM_AUTHENTICATED: &str = "system:authenticated";
/// Members skip authorization, as with kube-apiserver.
pub const SYSTEM_MASTERS: &str = "system:masters";

/// An authenticated user, as Kubernetes describes one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// The user of requests that need no authentication (health checks).
    pub fn anonymous() -> Self {
        Self {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
            ..Default::default()
        }
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// Paths served to anyone: kubelet probes carry no credentials.
pub fn is_health_path(path: &str) -> bool {
    ["/healthz", "/livez", "/readyz"].iter().any(|p| {
        path.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// How long a TokenReview answer (authenticated or not) is reused.
    pub token_cache_ttl: Duration,
    /// How long an allowing SubjectAccessReview answer is reused.
    pub allow_cache_ttl: Duration,
    /// How long a denying SubjectAccessReview answer is reused.
    pub deny_cache_ttl: Duration,
    /// Entries per cache (tokens; decisions).
    pub cache_size: usize,
    /// A TokenReview or SubjectAccessReview taking longer fails the request.
    pub review_timeout: Duration,
    /// Audiences bearer tokens must be for (TokenReview `spec.audiences`); empty:
    /// kube-apiserver's own.
    pub token_audiences: Vec<String>,
    /// How long [`Auth::new`] waits for the first read of the ConfigMap before returning;
    /// requests get 503 until it has been read.
    pub initial_load_timeout: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            token_cache_ttl: Duration::from_secs(10),
            allow_cache_ttl: Duration::from_secs(10),
            deny_cache_ttl: Duration::from_secs(10),
            cache_size: 4096,
            review_timeout: Duration::from_secs(10),
            token_audiences: Vec::new(),
            initial_load_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: std::path::PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("no kubeconfig given and no in-cluster configuration: {0}")]
    InCluster(#[from] kube::config::InClusterError),
    #[error("kube client: {0}")]
    Client(#[source] kube::Error),
    #[error("{what}: {source}")]
    Review {
        what: &'static str,
        source: kube::Error,
    },
    #[error("{0} returned no status")]
    NoStatus(&'static str),
}

/// A client for kube-apiserver: from `kubeconfig` when given, else the in-cluster
/// service account.
pub async fn kube_client(kubeconfig: Option<&Path>) -> Result<kube::Client, AuthError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                AuthError::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| AuthError::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                })?
        }
        None => kube::Config::incluster()?,
    };
    kube::Client::try_from(config).map_err(AuthError::Client)
}

/// The calls to kube-apiserver, behind a trait so that tests can answer them.
pub(crate) trait Reviewer: Send + Sync {
    /// The user a bearer token belongs to; `None` when it authenticates no one.
    fn review_token<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<UserInfo>, AuthError>>;
    fn review_access<'a>(
        &'a self,
        attrs: &'a Attributes,
    ) -> BoxFuture<'a, Result<Decision, AuthError>>;
}

struct KubeReviewer {
    tokens: Api<TokenReview>,
    access: Api<SubjectAccessReview>,
    /// Audiences a token must be for; empty: kube-apiserver's own.
    audiences: Vec<String>,
}

impl Reviewer for KubeReviewer {
    fn review_token<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<UserInfo>, AuthError>> {
        async move {
            let review = TokenReview {
                // No audiences: kube-apiserver checks against its own, as for its own clients.
                spec: TokenReviewSpec {
                    token: token.to_string(),
                    audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
                },
                ..Default::default()
            };
            let answer = self
                .tokens
                .create(&PostParams::default(), &review)
                .await
                .map_err(|source| AuthError::Review {
                    what: "TokenReview",
                    source,
                })?;
            let status = answer.status.ok_or(AuthError::NoStatus("TokenReview"))?;
            if let Some(err) = status.error.as_deref().filter(|e| !e.is_empty()) {
                tracing::debug!(error = err, "token not authenticated");
            }
            let user = status.user.filter(|_| status.authenticated == Some(true));
            Ok(user.and_then(|u| {
                let name = u.username.filter(|n| !n.is_empty())?;
                Some(UserInfo {
                    name,
                    uid: u.uid.unwrap_or_default(),
                    groups: u.groups.unwrap_or_default(),
                    extra: u.extra.unwrap_or_default(),
                })
            }))
        }
        .boxed()
    }

    fn review_access<'a>(
        &'a self,
        attrs: &'a Attributes,
    ) -> BoxFuture<'a, Result<Decision, AuthError>> {
        async move {
            let answer = self
                .access
                .create(&PostParams::default(), &attrs.to_review())
                .await
                .map_err(|source| AuthError::Review {
                    what: "SubjectAccessReview",
                    source,
                })?;
            Ok(authz::decision(&answer))
        }
        .boxed()
    }
}

/// What one request's credentials come to before any round trip.
enum Local {
    User(UserInfo),
    Token(String),
    Nobody,
}

/// Authentication and authorization for the request path.
pub struct Auth {
    cfg: AuthConfig,
    reviewer: Arc<dyn Reviewer>,
    trust: TrustRx,
    /// Keyed by the token's SHA-256, so the cache holds no credentials.
    tokens: TtlCache<[u8; 32], Option<UserInfo>>,
    decisions: TtlCache<Attributes, Decision>,
    follower: Option<tokio::task::AbortHandle>,
}

impl Drop for Auth {
    fn drop(&mut self) {
        if let Some(f) = &self.follower {
            f.abort();
        }
    }
}

impl Auth {
    /// Starts following the authentication ConfigMap and waits (up to
    /// `cfg.initial_load_timeout`) for its first read.
    pub async fn new(client: kube::Client, cfg: AuthConfig) -> Result<Arc<Self>, AuthError> {
        let (tx, rx) = watch::channel(None);
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), CONFIGMAP_NAMESPACE);
        let follower =
            tokio::spawn(trust::follow(api, tx).instrument(tracing::info_span!("auth_configmap")))
                .abort_handle();
        let reviewer = Arc::new(KubeReviewer {
            tokens: Api::all(client.clone()),
            access: Api::all(client),
            audiences: cfg.token_audiences.clone(),
        });
        let mut auth = Self::with_reviewer(reviewer, cfg, rx);
        auth.follower = Some(follower);
        let mut first = auth.trust.clone();
        let loaded = tokio::time::timeout(
            auth.cfg.initial_load_timeout,
            first.wait_for(Option::is_some),
        )
        .await;
        if !matches!(loaded, Ok(Ok(_))) {
            tracing::warn!(
                "{CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME} not read yet; answering 503 until it is"
            );
        }
        Ok(Arc::new(auth))
    }

    pub(crate) fn with_reviewer(
        reviewer: Arc<dyn Reviewer>,
        cfg: AuthConfig,
        trust: TrustRx,
    ) -> Self {
        Self {
            tokens: TtlCache::new(cfg.cache_size),
            decisions: TtlCache::new(cfg.cache_size),
            cfg,
            reviewer,
            trust,
            follower: None,
        }
    }

    /// Whether the authentication settings have been read (for `/readyz`).
    pub fn is_ready(&self) -> bool {
        self.trust.borrow().is_some()
    }

    /// Authenticates and authorizes a request given as parts.
    pub async fn check(
        &self,
        parts: &http::request::Parts,
        info: &RequestInfo,
    ) -> Result<UserInfo, ApiError> {
        self.check_headers(&parts.headers, &parts.extensions, info)
            .await
    }

    /// [`Self::check`] for a whole request; on success also removes the identity headers
    /// (nothing after this point may read them) and puts the [`UserInfo`] in the
    /// request's extensions.
    pub async fn check_request<B: Send>(
        &self,
        req: &mut http::Request<B>,
        info: &RequestInfo,
    ) -> Result<UserInfo, ApiError> {
        let user = self
            .check_headers(req.headers(), req.extensions(), info)
            .await?;
        self.strip_identity_headers(req.headers_mut());
        req.extensions_mut().insert(user.clone());
        Ok(user)
    }

    /// Authentication then authorization. `extensions` carries the connection's
    /// [`PeerCerts`].
    pub async fn check_headers(
        &self,
        headers: &HeaderMap,
        extensions: &Extensions,
        info: &RequestInfo,
    ) -> Result<UserInfo, ApiError> {
        if is_health_path(&info.path) {
            return Ok(UserInfo::anonymous());
        }
        let span = tracing::debug_span!(
            "auth",
            verb = %info.verb,
            path = %info.path,
            user = tracing::field::Empty
        );
        async {
            let user = self.authenticate(headers, extensions).await?;
            tracing::Span::current().record("user", user.name.as_str());
            self.authorize(&user, info).await?;
            Ok(user)
        }
        .instrument(span)
        .await
    }

    /// Removes `Authorization` and the front proxy's identity headers.
    pub fn strip_identity_headers(&self, headers: &mut HeaderMap) {
        let trust = self.trust.borrow().clone();
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|name| {
                *name == AUTHORIZATION
                    || match trust.as_ref().and_then(|t| t.request_header.as_ref()) {
                        Some(rh) => rh.is_identity_header(name),
                        // Not configured: still drop the conventional names.
                        None => name.as_str().starts_with("x-remote-"),
                    }
            })
            .cloned()
            .collect();
        for name in doomed {
            headers.remove(&name);
        }
    }

    async fn authenticate(
        &self,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) -> Result<UserInfo, ApiError> {
        let Some(trust) = self.trust.borrow().clone() else {
            return Err(ApiError::unavailable(
                "authentication settings not loaded yet",
            ));
        };
        let certs = extensions
            .get::<PeerCerts>()
            .map(|c| Arc::clone(&c.0))
            .unwrap_or_default();
        let mut user = match authenticate_locally(&trust, headers, &certs, UnixTime::now()) {
            Local::User(u) => u,
            Local::Token(token) => self
                .authenticate_token(&token)
                .await
                .ok_or_else(ApiError::unauthorized)?,
            Local::Nobody => {
                tracing::debug!("no credentials");
                return Err(ApiError::unauthorized());
            }
        };
        if !user.in_group(SYSTEM_AUTHENTICATED) {
            user.groups.push(SYSTEM_AUTHENTICATED.to_string());
        }
        Ok(user)
    }

    async fn authenticate_token(&self, token: &str) -> Option<UserInfo> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.tokens.get(&key, Instant::now()) {
            return hit;
        }
        let answer =
            tokio::time::timeout(self.cfg.review_timeout, self.reviewer.review_token(token)).await;
        match answer {
            Ok(Ok(user)) => {
                self.tokens
                    .insert(key, user.clone(), self.cfg.token_cache_ttl, Instant::now());
                if user.is_none() {
                    tracing::debug!("token not authenticated");
                }
                user
            }
            // Not cached: the next request tries again.
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "TokenReview failed");
                None
            }
            Err(_) => {
                tracing::warn!("TokenReview timed out");
                None
            }
        }
    }

    async fn authorize(&self, user: &UserInfo, info: &RequestInfo) -> Result<(), ApiError> {
        if user.in_group(SYSTEM_MASTERS) {
            return Ok(());
        }
        let attrs = Attributes::new(user, info);
        let decision = match self.decisions.get(&attrs, Instant::now()) {
            Some(d) => d,
            None => {
                let answer = tokio::time::timeout(
                    self.cfg.review_timeout,
                    self.reviewer.review_access(&attrs),
                )
                .await;
                let d = match answer {
                    Ok(Ok(d)) => d,
                    // As kube-apiserver does when its authorizer fails: 500, not a denial that
                    // would look final to the client.
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "SubjectAccessReview failed");
                        return Err(ApiError::internal("the authorization check failed"));
                    }
                    Err(_) => {
                        tracing::warn!("SubjectAccessReview timed out");
                        return Err(ApiError::internal("authorization timed out"));
                    }
                };
                let ttl = if d.allowed {
                    self.cfg.allow_cache_ttl
                } else {
                    self.cfg.deny_cache_ttl
                };
                self.decisions
                    .insert(attrs.clone(), d.clone(), ttl, Instant::now());
                d
            }
        };
        if decision.allowed {
            Ok(())
        } else {
            tracing::debug!(reason = %decision.reason, "forbidden");
            Err(attrs.forbidden(&decision.reason))
        }
    }
}

/// Front proxy, then client certificate, then bearer token: the first that applies decides
/// (a verified front-proxy certificate without a username header falls through).
fn authenticate_locally(
    trust: &Trust,
    headers: &HeaderMap,
    certs: &[CertificateDer<'static>],
    now: UnixTime,
) -> Local {
    if !certs.is_empty() {
        if let Some(rh) = &trust.request_header {
            match rh.verifier.verify(certs, now) {
                Ok(subject) if rh.allows(&subject.common_name) => {
                    if let Some(user) = rh.user_from_headers(headers) {
                        return Local::User(user);
                    }
                    tracing::debug!("front-proxy certificate without a username header");
                }
                Ok(subject) => {
                    tracing::debug!(cn = %subject.common_name, "front-proxy certificate CN not allowed")
                }
                Err(e) => tracing::trace!(error = %e, "not a front-proxy certificate"),
            }
        }
        if let Some(ca) = &trust.client_ca {
            match ca.verify(certs, now) {
                Ok(subject) if !subject.common_name.is_empty() => {
                    return Local::User(UserInfo {
                        name: subject.common_name,
                        uid: String::new(),
                        groups: subject.organizations,
                        extra: BTreeMap::new(),
                    });
                }
                Ok(_) => tracing::debug!("client certificate without a CN"),
                Err(e) => tracing::debug!(error = %e, "client certificate not trusted"),
            }
        }
    }
    match bearer_token(headers) {
        Some(token) => Local::Token(token),
        None => Local::Nobody,
    }
}

/// `Authorization: Bearer <token>`, read as kube-apiserver reads it.
fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = std::str::from_utf8(headers.get(AUTHORIZATION)?.as_bytes()).ok()?;
    let mut parts = value.trim().splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_string())
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
