//! TLS: a serving certificate reloaded when its files change, and a client certificate
//! requested but not required. Client certificates are only checked for proof of key
//! possession here; whom they identify is decided per request by the authenticator
//! against CAs that rotate (see `auth`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{0} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("private key in {path}: {source}")]
    Key {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("tls config: {0}")]
    Config(#[from] rustls::Error),
}

/// The serving certificate, swapped in place when the files change.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<(Arc<CertifiedKey>, Option<SystemTime>)>,
}

impl ReloadingCert {
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<Self>, TlsError> {
        let key = load_certified_key(cert_path, key_path, &provider)?;
        Ok(Arc::new(Self {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            provider,
            current: RwLock::new((Arc::new(key), modified(cert_path, key_path))),
        }))
    }

    /// Reloads if either file changed; a broken pair (e.g. mid-rotation) keeps the old one.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let stamp = modified(&self.cert_path, &self.key_path);
        let unchanged = self.current.read().map(|c| c.1 == stamp).unwrap_or(false);
        if unchanged {
            return Ok(false);
        }
        let key = load_certified_key(&self.cert_path, &self.key_path, &self.provider)?;
        if let Ok(mut c) = self.current.write() {
            *c = (Arc::new(key), stamp);
        }
        Ok(true)
    }

    /// Polls the files every `period` for the life of the process.
    pub fn watch(self: &Arc<Self>, period: Duration) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                match this.reload_if_changed() {
                    Ok(true) => {
                        tracing::info!(cert = %this.cert_path.display(), "reloaded serving certificate")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "serving certificate not reloaded; keeping the current one")
                    }
                }
            }
        });
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| Arc::clone(&c.0))
    }
}

fn modified(cert: &Path, key: &Path) -> Option<SystemTime> {
    let c = std::fs::metadata(cert).and_then(|m| m.modified()).ok()?;
    let k = std::fs::metadata(key).and_then(|m| m.modified()).ok()?;
    Some(c.max(k))
}

fn load_certified_key(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read {
            path: cert_path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert_path.to_path_buf()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|source| TlsError::Read {
        path: key_path.to_path_buf(),
        source,
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::Key {
            path: key_path.to_path_buf(),
            source,
        })?;
    Ok(CertifiedKey::new(certs, signing))
}

/// Asks for a client certificate without requiring one, and checks only that the peer
/// holds the key. Which CA it must chain to is the authenticator's decision, because
/// those CAs come from a ConfigMap that changes while connections stay open.
#[derive(Debug)]
struct OptionalClientCert {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for OptionalClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: Go clients then send the certificate they are configured with.
        &[]
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The server's TLS configuration: h2 and http/1.1 by ALPN, as the aggregator expects.
pub fn server_config(
    cert: Arc<ReloadingCert>,
    provider: Arc<CryptoProvider>,
) -> Result<ServerConfig, TlsError> {
    let verifier = Arc::new(OptionalClientCert {
        provider: Arc::clone(&provider),
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
