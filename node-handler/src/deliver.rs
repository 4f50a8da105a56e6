//! Delivery of one spool entry to the extension API server: POST the
//! `Coredump`, then PUT the compressed core to its `upload` subresource.
//!
//! The server is talked to directly (not through kube-apiserver's
//! aggregator, which would buffer and time out large bodies), over a small
//! HTTPS client: one connection per request, the body streamed from the
//! spool file so memory stays flat whatever the core's size.
//!
//! Idempotence: the Coredump's name is derived from the node, the spool ID
//! and the core's checksum, so a retry after a lost response finds its own
//! object (409 AlreadyExists → GET) and carries on from its phase. The
//! local copy is deleted by the caller only once the server has it.
//!
//! Refusals are answers, not failures:
//! - An upload asks `Expect: 100-continue` and holds its body until the
//!   server says 100 (or [`CONTINUE_WAIT`] passes), so a refused core is not
//!   sent at all.
//! - A server that answers early anyway (403, 409, 422 before the body is
//!   in) and closes makes our next write fail while its answer is already
//!   in the receive buffer. Writes that fail are swallowed below TLS
//!   (`TolerantWrite`), so the answer is read and returned; with no
//!   answer the read fails and the request is a transient failure.
//! - What an answer means is decided by the pure [`classify`]: 403 and
//!   other 4xx answers are final for the core (no retry loop), a 409 race is
//!   retried for that core only and a bounded number of times (by the
//!   caller), 401/408/429/5xx pause delivery.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use coredump_openapi::types::{
    validate_coredump, LABEL_CONTAINER, LABEL_NODE, LABEL_POD, MAX_COMMAND_LINE, MAX_EXECUTABLE,
};
use coredump_openapi::{Coredump, CoredumpPhase, CoredumpSpec};
use futures::{StreamExt, TryStreamExt};
use http::{header, Method, Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsConnector;

use crate::escape;
use crate::pods::{runtime_scheme, Attribution};
use crate::spool::SpoolEntry;

const API_PREFIX: &str = "/apis/coredump.io/v1alpha1";
/// Coredump objects and Status answers are small; anything larger is not
/// an answer we want to hold.
const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Names tried per core: a name whose object is Failed (its upload expired
/// while we were away) or deleted is skipped for the next.
const MAX_NAMES: u32 = 4;
/// Slowest upload rate we wait for before calling an upload stuck.
const MIN_UPLOAD_BYTES_PER_SEC: u64 = 1 << 20;
const MAX_TOKEN_BYTES: u64 = 64 << 10;
/// How long an upload waits for `100 Continue` before it sends its body
/// anyway (a server or proxy that does not answer `Expect`).
pub const CONTINUE_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--server {0:?}: must be an https:// URL with a host")]
    BadUrl(String),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Pem { path: PathBuf, detail: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Why a delivery did not finish.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// Worth retrying later: the server is unreachable, overloaded, or
    /// refused us for now (a token being rotated, RBAC not applied yet).
    #[error("{0}")]
    Transient(String),
    /// Refused for this core (403): the server's node restriction (a node
    /// identity may only report pods that exist and are bound to its node)
    /// or RBAC. Final: the same request gets the same answer.
    #[error("{0}")]
    Forbidden(String),
    /// This core cannot be taken right now (409: an earlier attempt's upload
    /// is still in progress, or a create raced): retried for this core
    /// alone, a bounded number of times.
    #[error("{0}")]
    Busy(String),
    /// Retrying cannot help: the server judged the object or core invalid.
    #[error("{0}")]
    Invalid(String),
    /// The local entry cannot be read.
    #[error("{0}")]
    Local(String),
}

/// How a delivered core ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// The server has the core. `uploaded` is false when an earlier
    /// attempt had already uploaded it (its answer was lost).
    Stored { name: String, uploaded: bool },
    /// The namespace's quota had no room; the server keeps the record only.
    Rejected { name: String, message: String },
}

/// How to reach and authenticate to the server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// `https://host[:port][/prefix]`.
    pub url: String,
    /// PEM CA bundle that signed the server's certificate.
    pub ca_file: PathBuf,
    /// A bearer token file, re-read for every request (projected tokens
    /// rotate).
    pub token_file: Option<PathBuf>,
    /// A client certificate and key (PEM).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// For requests without a core body; uploads get more per byte.
    pub timeout: Duration,
}

/// A status code and body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    /// `reason` of a metav1.Status answer.
    fn status_reason(&self) -> Option<String> {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()?
            .get("reason")?
            .as_str()
            .map(str::to_string)
    }

    fn message(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let msg = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("message")?.as_str().map(str::to_string))
            .unwrap_or_else(|| text.chars().take(500).collect());
        format!("{}: {msg}", self.status)
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

/// HTTPS to the extension server.
#[derive(Clone)]
pub struct ServerClient {
    host: String,
    port: u16,
    prefix: String,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    token_file: Option<PathBuf>,
    timeout: Duration,
}

impl std::fmt::Debug for ServerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ServerClient(https://{}:{}{})",
            self.host, self.port, self.prefix
        )
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn pem_error(path: &Path, e: impl std::fmt::Display) -> ClientError {
    ClientError::Pem {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

impl ServerClient {
    pub fn new(opts: &ServerOptions) -> Result<Self, ClientError> {
        let uri: http::Uri = opts
            .url
            .parse()
            .map_err(|_| ClientError::BadUrl(opts.url.clone()))?;
        if uri.scheme_str() != Some("https") {
            return Err(ClientError::BadUrl(opts.url.clone()));
        }
        let host = uri
            .host()
            .ok_or_else(|| ClientError::BadUrl(opts.url.clone()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let prefix = uri.path().trim_end_matches('/').to_string();
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| ClientError::BadUrl(opts.url.clone()))?;

        let mut roots = rustls::RootCertStore::empty();
        let ca = read_file(&opts.ca_file)?;
        for cert in CertificateDer::pem_slice_iter(&ca) {
            let cert = cert.map_err(|e| pem_error(&opts.ca_file, e))?;
            roots.add(cert).map_err(|e| pem_error(&opts.ca_file, e))?;
        }
        if roots.is_empty() {
            return Err(pem_error(&opts.ca_file, "no certificates"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut config = match &opts.client_cert {
            Some((cert, key)) => {
                let pem = read_file(cert)?;
                let chain = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| pem_error(cert, e))?;
                let key_der = PrivateKeyDer::from_pem_slice(&read_file(key)?)
                    .map_err(|e| pem_error(key, e))?;
                builder.with_client_auth_cert(chain, key_der)?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            host,
            port,
            prefix,
            server_name,
            tls: TlsConnector::from(Arc::new(config)),
            token_file: opts.token_file.clone(),
            timeout: opts.timeout,
        })
    }

    /// The token as the file says now; a file that cannot be read is a
    /// transient problem (the kubelet rewrites it while rotating).
    fn bearer(&self) -> Result<Option<String>, DeliverError> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let data = crate::spool::read_bounded(path, MAX_TOKEN_BYTES)
            .map_err(|e| DeliverError::Transient(format!("token file: {e}")))?;
        let token = String::from_utf8_lossy(&data).trim().to_string();
        if token.is_empty() {
            return Err(DeliverError::Transient(format!(
                "token file {} is empty",
                path.display()
            )));
        }
        Ok(Some(token))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        content: Option<(&str, u64, Body)>,
        go_ahead: Option<tokio::sync::oneshot::Sender<()>>,
        timeout: Duration,
    ) -> Result<Reply, DeliverError> {
        let fut = self.send_inner(method.clone(), path, content, go_ahead);
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(DeliverError::Transient(format!(
                "{method} {path}: no answer within {timeout:?}"
            ))),
        }
    }

    /// One request on a new connection. With `go_ahead`, it says
    /// `Expect: 100-continue` and the sender fires on the server's 100.
    async fn send_inner(
        &self,
        method: Method,
        path: &str,
        content: Option<(&str, u64, Body)>,
        go_ahead: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Result<Reply, DeliverError> {
        let transient = |what: &str, e: &dyn std::fmt::Display| {
            DeliverError::Transient(format!("{what} {}:{}: {e}", self.host, self.port))
        };
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(header::HOST, format!("{}:{}", self.host, self.port))
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("coredump-node-handler/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(token) = self.bearer()? {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match content {
            Some((ctype, len, body)) => {
                req = req
                    .header(header::CONTENT_TYPE, ctype)
                    .header(header::CONTENT_LENGTH, len);
                body
            }
            None => empty(),
        };
        let mut req = req
            .body(body)
            .map_err(|e| DeliverError::Local(format!("building the request: {e}")))?;
        if let Some(tx) = go_ahead {
            req.headers_mut().insert(
                header::EXPECT,
                http::HeaderValue::from_static("100-continue"),
            );
            let tx = std::sync::Mutex::new(Some(tx));
            hyper::ext::on_informational(&mut req, move |res| {
                if res.status() == StatusCode::CONTINUE {
                    let sender = tx.lock().unwrap_or_else(|e| e.into_inner()).take();
                    if let Some(sender) = sender {
                        let _ = sender.send(());
                    }
                }
            });
        }

        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| transient("connecting to", &e))?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(self.server_name.clone(), TolerantWrite::new(tcp))
            .await
            .map_err(|e| transient("TLS with", &e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| transient("HTTP with", &e))?;
        // The connection is driven beside the request; it ends with it.
        let driver = tokio::spawn(conn);
        let resp = sender.send_request(req).await;
        let result = match resp {
            Ok(resp) => {
                let status = resp.status();
                match Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                    .collect()
                    .await
                {
                    Ok(b) => Ok(Reply {
                        status,
                        body: b.to_bytes(),
                    }),
                    Err(e) => Err(transient("reading the answer of", &e)),
                }
            }
            Err(e) => Err(transient("request to", &e)),
        };
        driver.abort();
        result
    }

    async fn send_json(
        &self,
        method: Method,
        path: &str,
        value: Option<&impl serde::Serialize>,
    ) -> Result<Reply, DeliverError> {
        let content = match value {
            Some(v) => {
                let json = serde_json::to_vec(v)
                    .map_err(|e| DeliverError::Local(format!("encoding JSON: {e}")))?;
                let len = json.len() as u64;
                let body = Full::new(Bytes::from(json))
                    .map_err(|never| match never {})
                    .boxed();
                Some(("application/json", len, body))
            }
            None => None,
        };
        self.send(method, path, content, None, self.timeout).await
    }

    fn coredumps(&self, ns: &str) -> String {
        format!("{API_PREFIX}/namespaces/{ns}/coredumps")
    }

    pub async fn create(&self, cd: &Coredump, ns: &str) -> Result<Reply, DeliverError> {
        self.send_json(Method::POST, &self.coredumps(ns), Some(cd))
            .await
    }

    pub async fn get(&self, ns: &str, name: &str) -> Result<Reply, DeliverError> {
        let path = format!("{}/{name}", self.coredumps(ns));
        self.send_json(Method::GET, &path, None::<&()>).await
    }

    /// PUT of `core` (exactly `len` bytes) to the upload subresource,
    /// streamed from the file.
    pub async fn upload(
        &self,
        ns: &str,
        name: &str,
        core: &Path,
        len: u64,
    ) -> Result<Reply, DeliverError> {
        let file = tokio::fs::File::open(core)
            .await
            .map_err(|e| DeliverError::Local(format!("opening {}: {e}", core.display())))?;
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        // Nothing of the body goes out before the server's 100 Continue (or
        // CONTINUE_WAIT): a refusal costs no upload.
        let gate = futures::stream::once(async move {
            let _ = tokio::time::timeout(CONTINUE_WAIT, go_rx).await;
        })
        .filter_map(|()| std::future::ready(None::<Result<Frame<Bytes>, std::io::Error>>));
        let stream =
            tokio_util::io::ReaderStream::with_capacity(file, 256 << 10).map_ok(Frame::data);
        let body: Body = BodyExt::boxed(StreamBody::new(gate.chain(stream)));
        let path = format!("{}/{name}/upload", self.coredumps(ns));
        let timeout =
            self.timeout + CONTINUE_WAIT + Duration::from_secs(len / MIN_UPLOAD_BYTES_PER_SEC);
        self.send(
            Method::PUT,
            &path,
            Some(("application/zstd", len, body)),
            Some(go_tx),
            timeout,
        )
        .await
    }
}

/// The connection's write side, made to outlive a peer that stopped
/// reading (see the module doc): a failed write is remembered and swallowed,
/// and so is everything written after it, while reads go on as usual. Sits
/// below TLS, so the TLS session never sees the failure either.
struct TolerantWrite<S> {
    inner: S,
    failed: Option<std::io::ErrorKind>,
}

impl<S> TolerantWrite<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            failed: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TolerantWrite<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TolerantWrite<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.failed.is_some() {
            return Poll::Ready(Ok(buf.len()));
        }
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Err(e)) => {
                tracing::debug!(error = %e, "write failed; reading the server's answer anyway");
                self.failed = Some(e.kind());
                Poll::Ready(Ok(buf.len()))
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.failed.is_some() {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(Err(e)) => {
                self.failed = Some(e.kind());
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.failed.is_some() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

/// The first name tried for a core: `<pod>-<10 hex digits>`, the digits
/// from the node, the spool ID and the checksum, so every retry of this
/// core (also by a restarted agent) uses the same name.
pub fn coredump_name(pod: &str, node: &str, entry_id: &str, sha256: &str, attempt: u32) -> String {
    let mut h = Sha256::new();
    for part in [node, entry_id, sha256] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let digest = hex::encode(h.finalize());
    let mut suffix = format!("-{}", &digest[..10]);
    if attempt > 0 {
        suffix.push_str(&format!("-{attempt}"));
    }
    // Object names are at most 253 characters and must end alphanumeric.
    let mut base: String = pod.chars().take(253 - suffix.len()).collect();
    while base.ends_with(['-', '.']) {
        base.pop();
    }
    if base.is_empty() {
        base.push_str("core");
    }
    base + &suffix
}

/// A label value is at most 63 characters of `[A-Za-z0-9._-]`, starting and
/// ending alphanumeric; values that cannot be one are left out (the spec
/// has the full value).
fn label_value(v: &str) -> Option<String> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && v.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && v.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    ok.then(|| v.to_string())
}

/// The container name for the Coredump: as attributed, else the only
/// container the pod has, else `unknown` (the container ID still says
/// which one it was).
pub fn container_name(attr: &Attribution) -> String {
    if let Some(n) = &attr.container_name {
        return n.clone();
    }
    match attr.spec_containers.as_slice() {
        [only] => only.clone(),
        _ => "unknown".to_string(),
    }
}

/// The Coredump for a spool entry and its attribution.
pub fn build_coredump(entry: &SpoolEntry, attr: &Attribution, node: &str, name: &str) -> Coredump {
    let c = &entry.crash;
    let container = container_name(attr);
    let container_id = attr.container_id.clone().or_else(|| {
        c.container_id
            .as_ref()
            .map(|id| match runtime_scheme(c.container_runtime.as_deref()) {
                Some(scheme) => format!("{scheme}://{id}"),
                None => id.clone(),
            })
    });
    let mut labels = std::collections::BTreeMap::new();
    for (k, v) in [
        (LABEL_NODE, node),
        (LABEL_POD, attr.pod_name.as_str()),
        (LABEL_CONTAINER, container.as_str()),
    ] {
        if let Some(v) = label_value(v) {
            labels.insert(k.to_string(), v);
        }
    }
    // The spool holds these escaped (see `escape`): cut between escape
    // units, within the API's limits.
    let command_line = (!c.command_line.is_empty())
        .then(|| escape::cut(&c.command_line.join(" "), MAX_COMMAND_LINE).to_string());
    let executable =
        Some(escape::cut(&c.executable, MAX_EXECUTABLE).to_string()).filter(|e| !e.is_empty());
    let dump_time = i64::try_from(c.dump_time)
        .ok()
        .and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok())
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    Coredump {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(attr.namespace.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: CoredumpSpec {
            node_name: node.to_string(),
            pod_name: attr.pod_name.clone(),
            pod_uid: attr.pod_uid.clone(),
            container_name: container,
            container_id,
            image: attr.image.clone(),
            pid: c.container_pid.map(i64::from).filter(|p| *p > 0),
            host_pid: Some(i64::from(c.host_pid)).filter(|p| *p > 0),
            signal: c.signal,
            signal_name: c.signal_name.clone(),
            executable,
            command_line,
            uid: Some(i64::from(c.uid)),
            gid: Some(i64::from(c.gid)),
            dump_time: Time(dump_time),
            size: Quantity(entry.raw_size.to_string()),
            stored_size: Quantity(entry.stored_size.to_string()),
            sha256: entry.sha256.clone(),
            truncated: entry.truncated.then_some(true),
            analysis: None,
        },
        status: None,
    }
}

/// What an answer the step did not expect means for the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The server cannot take anything now: pause delivery, retry later.
    Transient,
    /// A race on this core (409): retry it alone, a bounded number of times.
    Busy,
    /// Refused (403): asking again gets the same answer.
    Forbidden,
    /// The request is wrong for the server (other 4xx): final.
    Invalid,
}

/// Classifies a status code. Pure: the whole policy is this table.
pub fn classify(status: StatusCode) -> Class {
    match status.as_u16() {
        // A token being rotated, a slow or overloaded server.
        401 | 408 | 429 => Class::Transient,
        403 => Class::Forbidden,
        409 => Class::Busy,
        400..=499 => Class::Invalid,
        // 5xx, and anything else a proxy may invent.
        _ => Class::Transient,
    }
}

/// The error for an answer that is not what the step expected.
fn unexpected(what: &str, r: &Reply) -> DeliverError {
    let msg = format!("{what}: {}", r.message());
    match classify(r.status) {
        Class::Transient => DeliverError::Transient(msg),
        Class::Busy => DeliverError::Busy(msg),
        Class::Forbidden => DeliverError::Forbidden(msg),
        Class::Invalid => DeliverError::Invalid(msg),
    }
}

fn parse_coredump(r: &Reply) -> Result<Coredump, DeliverError> {
    serde_json::from_slice(&r.body)
        .map_err(|e| DeliverError::Transient(format!("the server's answer is no Coredump: {e}")))
}

fn phase(cd: &Coredump) -> Option<CoredumpPhase> {
    cd.status.as_ref().and_then(|s| s.phase)
}

/// What to do after looking at the object a name holds.
enum Next {
    Upload,
    Done(Delivered),
    /// Not usable (Failed, deleted, someone else's): try the next name.
    Skip(String),
}

fn judge(cd: &Coredump, entry: &SpoolEntry, name: &str) -> Next {
    if cd.spec.sha256 != entry.sha256 {
        return Next::Skip(format!("{name} holds another core"));
    }
    match phase(cd) {
        Some(CoredumpPhase::Pending) => Next::Upload,
        Some(CoredumpPhase::Stored) => Next::Done(Delivered::Stored {
            name: name.to_string(),
            uploaded: false,
        }),
        Some(CoredumpPhase::Rejected) => Next::Done(Delivered::Rejected {
            name: name.to_string(),
            message: cd
                .status
                .as_ref()
                .and_then(|s| s.message.clone())
                .unwrap_or_default(),
        }),
        Some(CoredumpPhase::Failed) | None => Next::Skip(format!("{name} is {:?}", phase(cd))),
    }
}

/// Delivers one entry (its metadata `entry`, its core file `core`).
pub async fn deliver(
    client: &ServerClient,
    entry: &SpoolEntry,
    core: &Path,
    attr: &Attribution,
    node: &str,
    analysis: Option<&coredump_openapi::types::CrashAnalysis>,
) -> Result<Delivered, DeliverError> {
    // The server checks Content-Length against spec.storedSize; a file
    // that disagrees with its metadata can never be delivered.
    let len = tokio::fs::metadata(core)
        .await
        .map_err(|e| DeliverError::Local(format!("{}: {e}", core.display())))?
        .len();
    if len != entry.stored_size {
        return Err(DeliverError::Local(format!(
            "{} has {len} bytes, its metadata says {}",
            core.display(),
            entry.stored_size
        )));
    }
    let ns = attr.namespace.as_str();
    let mut skipped = Vec::new();
    let mut attempt = 0;
    // Bounds the loop when objects keep vanishing under us.
    let mut rounds = 0;
    while attempt < MAX_NAMES && rounds < 3 * MAX_NAMES {
        rounds += 1;
        let name = coredump_name(&attr.pod_name, node, &entry.id, &entry.sha256, attempt);
        let mut cd = build_coredump(entry, attr, node, &name);
        // Computed on the node before the upload: Rejected cores carry it too.
        cd.spec.analysis = analysis.cloned();
        let errors = validate_coredump(&cd);
        if !errors.is_empty() {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return Err(DeliverError::Invalid(list.join("; ")));
        }
        let created = client.create(&cd, ns).await?;
        // Uploading to an object we could not read.
        let mut blind = false;
        let next = match created.status.as_u16() {
            200 | 201 => judge(&parse_coredump(&created)?, entry, &name),
            // Ours from an attempt whose answer was lost, most likely.
            409 if created.status_reason().as_deref() == Some("AlreadyExists") => {
                match look(client, ns, &name, entry).await? {
                    Look::Is(next) => next,
                    // Deleted between the two requests: the same name again.
                    Look::Gone => continue,
                    // No `get` permission: the upload itself tells whether
                    // it is ours and Pending.
                    Look::Forbidden => {
                        tracing::info!(
                            coredump = name,
                            "exists and may not be read (no get on coredumps): uploading to it"
                        );
                        blind = true;
                        Next::Upload
                    }
                }
            }
            _ => return Err(unexpected("creating the Coredump", &created)),
        };
        match next {
            Next::Done(d) => return Ok(d),
            Next::Skip(why) => {
                skipped.push(why);
                attempt += 1;
                continue;
            }
            Next::Upload => {}
        }
        let put = client.upload(ns, &name, core, len).await?;
        match put.status.as_u16() {
            200 => {
                return Ok(Delivered::Stored {
                    name,
                    uploaded: true,
                })
            }
            // No longer Pending: a concurrent attempt finished, it expired,
            // or it was deleted. Look again.
            409 | 404 => match look(client, ns, &name, entry).await? {
                Look::Is(Next::Done(d)) => return Ok(d),
                Look::Is(Next::Skip(why)) => {
                    skipped.push(why);
                    attempt += 1;
                }
                // Still Pending: an earlier attempt's upload holds it.
                Look::Is(Next::Upload) => {
                    return Err(DeliverError::Busy(format!(
                        "{name}: upload refused while Pending: {}",
                        put.message()
                    )))
                }
                Look::Gone => {
                    skipped.push(format!("{name} was deleted during the upload"));
                    attempt += 1;
                }
                // Stored, Rejected or Failed cannot be told apart without
                // reading it: a new name risks a duplicate, never a loss.
                Look::Forbidden => {
                    skipped.push(format!("{name}: {}", put.message()));
                    attempt += 1;
                }
            },
            // A checksum or size mismatch on an object we could not read:
            // it holds another core, not a broken one of ours.
            422 if blind => {
                skipped.push(format!("{name} holds another core: {}", put.message()));
                attempt += 1;
            }
            _ => return Err(unexpected("uploading the core", &put)),
        }
    }
    Err(DeliverError::Invalid(format!(
        "no usable name after {attempt} tries: {}",
        skipped.join("; ")
    )))
}

/// What a GET of an existing name found.
enum Look {
    Is(Next),
    Gone,
    /// RBAC grants no `get` on coredumps.
    Forbidden,
}

async fn look(
    client: &ServerClient,
    ns: &str,
    name: &str,
    entry: &SpoolEntry,
) -> Result<Look, DeliverError> {
    let got = client.get(ns, name).await?;
    match got.status.as_u16() {
        200 => Ok(Look::Is(judge(&parse_coredump(&got)?, entry, name))),
        404 => Ok(Look::Gone),
        403 => Ok(Look::Forbidden),
        _ => Err(unexpected("reading the existing Coredump", &got)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{CrashInfo, HandlerStats, FORMAT_VERSION};

    fn entry() -> SpoolEntry {
        SpoolEntry {
            format_version: FORMAT_VERSION,
            id: "1700000000-4242".into(),
            crash: CrashInfo {
                host_pid: 4242,
                host_tid: 4243,
                container_pid: Some(7),
                signal: 11,
                signal_name: Some("SIGSEGV".into()),
                dump_time: 1_700_000_000,
                comm: "app".into(),
                executable: "/usr/bin/app".into(),
                command_line: vec!["/usr/bin/app".into(), "--serve".into()],
                uid: 1000,
                gid: 1000,
                dumpable: 1,
                rlimit_core: u64::MAX,
                pod_uid: Some("0b6e2b53-6a8e-4c3c-9d0e-1f2a3b4c5d6e".into()),
                container_id: Some("ab".repeat(32)),
                container_runtime: Some("cri-containerd".into()),
                proc_verified: true,
                ..Default::default()
            },
            raw_size: 1 << 20,
            stored_size: 12345,
            sha256: "0f".repeat(32),
            truncated: false,
            truncated_by: None,
            compression: "zstd".into(),
            handler: HandlerStats::default(),
        }
    }

    fn attr() -> Attribution {
        Attribution {
            pod_name: "web-0".into(),
            namespace: "shop".into(),
            pod_uid: "0b6e2b53-6a8e-4c3c-9d0e-1f2a3b4c5d6e".into(),
            container_name: Some("app".into()),
            container_id: Some(format!("containerd://{}", "ab".repeat(32))),
            image: Some("registry/app:1".into()),
            opted_out: false,
            spec_containers: vec!["app".into(), "sidecar".into()],
            deleted: false,
        }
    }

    #[test]
    fn names_are_stable_valid_and_bounded() {
        let a = coredump_name("web-0", "n1", "1-2", "ff", 0);
        assert_eq!(a, coredump_name("web-0", "n1", "1-2", "ff", 0));
        assert_ne!(a, coredump_name("web-0", "n2", "1-2", "ff", 0));
        assert!(
            a.starts_with("web-0-") && a.len() == "web-0-".len() + 10,
            "{a}"
        );
        assert_eq!(
            coredump_name("web-0", "n1", "1-2", "ff", 2),
            format!("{a}-2")
        );
        let long = format!("{}-x", "a".repeat(260));
        let n = coredump_name(&long, "n1", "1-2", "ff", 3);
        assert!(n.len() <= 253);
        assert!(coredump_openapi::types::validate_name(&n).is_ok(), "{n}");
        // A cut that ends in '-' or '.' is trimmed.
        let dotted = format!("{}.{}", "a".repeat(241), "b".repeat(20));
        let n = coredump_name(&dotted, "n1", "1-2", "ff", 0);
        assert!(coredump_openapi::types::validate_name(&n).is_ok(), "{n}");
    }

    #[test]
    fn coredump_carries_the_metadata_and_validates() {
        let e = entry();
        let cd = build_coredump(&e, &attr(), "node-1", "web-0-abc");
        assert!(
            validate_coredump(&cd).is_empty(),
            "{:?}",
            validate_coredump(&cd)
        );
        let v = serde_json::to_value(&cd).unwrap();
        assert_eq!(v["metadata"]["namespace"], "shop");
        assert_eq!(v["metadata"]["labels"][LABEL_NODE], "node-1");
        assert_eq!(v["metadata"]["labels"][LABEL_POD], "web-0");
        assert_eq!(v["metadata"]["labels"][LABEL_CONTAINER], "app");
        let s = &v["spec"];
        assert_eq!(s["nodeName"], "node-1");
        assert_eq!(s["podUID"], "0b6e2b53-6a8e-4c3c-9d0e-1f2a3b4c5d6e");
        assert_eq!(
            s["containerID"],
            format!("containerd://{}", "ab".repeat(32))
        );
        assert_eq!(s["image"], "registry/app:1");
        assert_eq!(s["pid"], 7);
        assert_eq!(s["hostPID"], 4242);
        assert_eq!(s["signal"], 11);
        assert_eq!(s["signalName"], "SIGSEGV");
        assert_eq!(s["executable"], "/usr/bin/app");
        assert_eq!(s["commandLine"], "/usr/bin/app --serve");
        assert_eq!(s["uid"], 1000);
        assert_eq!(s["dumpTime"], "2023-11-14T22:13:20Z");
        assert_eq!(s["size"], "1048576");
        assert_eq!(s["storedSize"], "12345");
        assert_eq!(s["sha256"], "0f".repeat(32));
        assert!(s.get("truncated").is_none());
    }

    #[test]
    fn unattributed_container_falls_back_sensibly() {
        let mut a = attr();
        a.container_name = None;
        a.container_id = None;
        a.image = None;
        let cd = build_coredump(&entry(), &a, "node-1", "x");
        assert_eq!(cd.spec.container_name, "unknown");
        assert_eq!(
            cd.spec.container_id,
            Some(format!("containerd://{}", "ab".repeat(32)))
        );
        a.spec_containers = vec!["only".into()];
        assert_eq!(
            build_coredump(&entry(), &a, "n", "x").spec.container_name,
            "only"
        );
    }

    #[test]
    fn long_values_are_cut_or_left_out() {
        let mut e = entry();
        e.crash.command_line = vec!["é".repeat(3000)];
        let mut a = attr();
        a.pod_name = "p".repeat(100);
        let cd = build_coredump(&e, &a, "node-1", "x");
        assert!(cd.spec.command_line.as_ref().unwrap().len() <= MAX_COMMAND_LINE);
        // Escaped non-UTF-8 bytes are never cut in half, and the longest
        // path the kernel allows, escaped, still fits the API.
        e.crash.executable = escape::escape(&[0xff; 4096]);
        e.crash.command_line = vec![escape::escape(&[0xfe; 4096])];
        let cd = build_coredump(&e, &a, "node-1", "x");
        assert!(
            validate_coredump(&cd).is_empty(),
            "{:?}",
            validate_coredump(&cd)
        );
        let exe = cd.spec.executable.as_deref().unwrap();
        assert_eq!(exe.len(), MAX_EXECUTABLE);
        assert!(escape::unescape(exe).is_some());
        assert!(escape::unescape(cd.spec.command_line.as_deref().unwrap()).is_some());
        assert!(!cd.metadata.labels.as_ref().unwrap().contains_key(LABEL_POD));
        assert_eq!(label_value("-x"), None);
        assert_eq!(label_value("a.b_c-d").as_deref(), Some("a.b_c-d"));
    }

    /// What the test server does with an upload.
    #[derive(Clone, Copy, Debug)]
    enum Answer {
        /// 403 as soon as the head is in, without reading the body.
        RefuseAtOnce,
        /// 100 Continue, read 64 KiB of the body, then 403 and close.
        RefuseMidBody,
        /// 100 Continue, read the whole body, 200.
        Accept,
    }

    /// A tiny TLS server on 127.0.0.1 answering one request per
    /// connection as `answer` says; returns its address and CA file.
    async fn refusing_server(
        dir: &Path,
        answer: Answer,
    ) -> (std::net::SocketAddr, PathBuf, tokio::task::JoinHandle<()>) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let ca_file = dir.join("ca.crt");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if tls.read(&mut byte).await.unwrap_or(0) == 0 {
                        break;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_lowercase();
                assert!(head.contains("expect: 100-continue"), "{head}");
                let status = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"node n1 may not report pods of other nodes","reason":"Forbidden","code":403}"#;
                let refuse = format!(
                    "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{status}",
                    status.len()
                );
                match answer {
                    Answer::RefuseAtOnce => {
                        // A client that does not wait for 100 Continue has
                        // sent megabytes of body by now.
                        let mut early = vec![0u8; 1 << 20];
                        let sent =
                            tokio::time::timeout(Duration::from_millis(300), tls.read(&mut early))
                                .await
                                .map_or(0, |r| r.unwrap_or(0));
                        let msg = format!("early body bytes: {sent}");
                        let status = format!(
                            r#"{{"kind":"Status","status":"Failure","message":"{msg}","reason":"Forbidden","code":403}}"#
                        );
                        let refuse = format!(
                            "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{status}",
                            status.len()
                        );
                        let _ = tls.write_all(refuse.as_bytes()).await;
                    }
                    Answer::RefuseMidBody => {
                        let _ = tls.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
                        let mut body = vec![0u8; 64 << 10];
                        let _ = tls.read_exact(&mut body).await;
                        let _ = tls.write_all(refuse.as_bytes()).await;
                    }
                    Answer::Accept => {
                        let _ = tls.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
                        let len: u64 = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        let mut sink = tokio::io::sink();
                        let _ = tokio::io::copy(&mut (&mut tls).take(len), &mut sink).await;
                        let _ = tls
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                            .await;
                    }
                }
                let _ = tls.shutdown().await;
                // Dropped with the unread body still queued: the kernel
                // answers the rest of the upload with a reset.
            }
        });
        (addr, ca_file, task)
    }

    #[tokio::test]
    async fn a_refused_upload_is_read_as_the_refusal_not_a_broken_pipe() {
        let dir = tempfile::tempdir().unwrap();
        // Far more than socket buffers hold: the writes must fail once the
        // server has closed.
        let core = dir.path().join("core.zst");
        std::fs::write(&core, vec![7u8; 48 << 20]).unwrap();
        for answer in [Answer::RefuseAtOnce, Answer::RefuseMidBody, Answer::Accept] {
            let (addr, ca_file, server) = refusing_server(dir.path(), answer).await;
            let client = ServerClient::new(&ServerOptions {
                url: format!("https://{addr}"),
                ca_file,
                token_file: None,
                client_cert: None,
                timeout: Duration::from_secs(20),
            })
            .unwrap();
            let started = std::time::Instant::now();
            let reply = client
                .upload("shop", "web-0-abc", &core, 48 << 20)
                .await
                .unwrap_or_else(|e| panic!("the server's answer was lost: {e}"));
            let elapsed = started.elapsed();
            match answer {
                Answer::Accept => assert_eq!(reply.status, StatusCode::OK),
                _ => {
                    assert_eq!(reply.status, StatusCode::FORBIDDEN);
                    assert_eq!(reply.status_reason().as_deref(), Some("Forbidden"));
                    assert!(matches!(
                        unexpected("uploading the core", &reply),
                        DeliverError::Forbidden(_)
                    ));
                }
            }
            if let Answer::RefuseAtOnce = answer {
                // The client waited for 100 Continue: nothing of the body
                // went out, and the refusal came without CONTINUE_WAIT.
                assert!(
                    reply.message().contains("early body bytes: 0"),
                    "{}",
                    reply.message()
                );
                assert!(elapsed < CONTINUE_WAIT, "{elapsed:?}");
            }
            server.abort();
        }
    }

    /// The adapter's own promise, without hyper or TLS: once the peer has
    /// answered and reset the connection, writes "succeed" (into nothing)
    /// and the answer is still there to read.
    #[tokio::test]
    async fn a_write_after_the_peer_reset_still_lets_the_answer_be_read() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut some = [0u8; 1024];
            let _ = s.read(&mut some).await;
            s.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n")
                .await
                .unwrap();
            // Unread data in the receive buffer: close() sends a reset.
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut conn = TolerantWrite::new(tcp);
        conn.write_all(&[1u8; 64 << 10]).await.unwrap();
        server.await.unwrap();
        // Keep writing until the reset has arrived and a write failed.
        let chunk = vec![2u8; 1 << 20];
        for _ in 0..64 {
            conn.write_all(&chunk).await.unwrap();
            if conn.failed.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(conn.failed.is_some(), "the peer never reset the connection");
        conn.flush().await.unwrap();
        let mut answer = Vec::new();
        let _ = conn.read_to_end(&mut answer).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 403"),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
    }

    #[test]
    fn answers_are_classified() {
        let r = |code: u16, body: &str| Reply {
            status: StatusCode::from_u16(code).unwrap(),
            body: Bytes::from(body.to_string()),
        };
        assert!(matches!(
            unexpected("x", &r(422, r#"{"message":"bad"}"#)),
            DeliverError::Invalid(m) if m.contains("bad")
        ));
        assert!(matches!(
            unexpected("x", &r(403, "")),
            DeliverError::Forbidden(_)
        ));
        for code in [401, 408, 429, 500, 503] {
            assert!(matches!(
                unexpected("x", &r(code, "")),
                DeliverError::Transient(_)
            ));
        }
        // Final answers, never a blind retry loop; a 409 race is retried
        // by the caller for that core, a bounded number of times.
        let class = |c: u16| classify(StatusCode::from_u16(c).unwrap());
        assert_eq!(class(403), Class::Forbidden);
        assert_eq!(class(409), Class::Busy);
        for code in [400, 404, 405, 410, 413, 415, 422] {
            assert_eq!(class(code), Class::Invalid, "{code}");
        }
        for code in [401, 408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(class(code), Class::Transient, "{code}");
        }
        assert_eq!(
            r(409, r#"{"kind":"Status","reason":"AlreadyExists"}"#)
                .status_reason()
                .as_deref(),
            Some("AlreadyExists")
        );
    }
}
