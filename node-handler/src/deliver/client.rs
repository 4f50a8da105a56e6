//! The HTTPS client of the extension server.
//!
//! The server is talked to directly (not through kube-apiserver's
//! aggregator, which would buffer and time out large bodies), over a small
//! HTTPS client: one connection per request, the body streamed from the
//! spool file so memory stays flat whatever the core's size.
//!
//! Invariants:
//! - Every request is bounded in time: [`ServerOptions::timeout`], and for
//!   an upload more per byte (the slowest rate waited for is 1 MiB/s).
//! - The bearer token is re-read for every request (projected tokens
//!   rotate); an unreadable or empty token file is a transient failure.
//! - An answer is at most 1 MiB; a larger one is not held.
//! - Refusals are answers, not failures:
//!   - An upload asks `Expect: 100-continue` and holds its body until the
//!     server says 100 (or [`CONTINUE_WAIT`] passes), so a refused core is
//!     not sent at all.
//!   - A server that answers early anyway (403, 409, 422 before the body is
//!     in) and closes makes our next write fail while its answer is already
//!     in the receive buffer. Writes that fail are swallowed below TLS
//!     (`TolerantWrite`), so the answer is read and returned; with no
//!     answer the read fails and the request is a transient failure.
//! - What an answer means is not decided here: see
//!   [`classify`](super::classify).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use coredump_openapi::Coredump;
use futures::{StreamExt, TryStreamExt};
use http::{header, Method, Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsConnector;

use super::{DeliverError, Transport};

const API_PREFIX: &str = "/apis/coredump.io/v1alpha1";
/// Coredump objects and Status answers are small; anything larger is not
/// an answer we want to hold.
const MAX_RESPONSE_BYTES: usize = 1 << 20;
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
    pub(crate) fn status_reason(&self) -> Option<String> {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()?
            .get("reason")?
            .as_str()
            .map(str::to_string)
    }

    pub(crate) fn message(&self) -> String {
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

/// The transport of [`deliver`](super::deliver): each step one request.
impl Transport for ServerClient {
    fn create(
        &self,
        cd: &Coredump,
        ns: &str,
    ) -> impl Future<Output = Result<Reply, DeliverError>> + Send {
        ServerClient::create(self, cd, ns)
    }

    fn get(
        &self,
        ns: &str,
        name: &str,
    ) -> impl Future<Output = Result<Reply, DeliverError>> + Send {
        ServerClient::get(self, ns, name)
    }

    fn upload(
        &self,
        ns: &str,
        name: &str,
        core: &Path,
        len: u64,
    ) -> impl Future<Output = Result<Reply, DeliverError>> + Send {
        ServerClient::upload(self, ns, name, core, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::retry::unexpected;

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
}
