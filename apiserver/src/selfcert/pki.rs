//! Making and checking certificates: the CA, the serving certificates it signs, PEM
//! encoding, and verification as a TLS client does it.
//!
//! Invariants: a [`Ca`] holds a CA certificate and the key that matches it (checked by
//! [`parse_ca`], true by construction in [`new_ca`]), and its `issuer` reproduces the
//! name and key identifier of that certificate, so leaves it signs chain to it; a serving
//! certificate from [`issue_cert`] is back-dated by an hour (clock skew) and never
//! outlives its CA; [`check_cert`] accepts a pair only if the key matches, it verifies for
//! every configured name against the CA, and it is [`fresh`]. Nothing here does I/O.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::{SelfCertConfig, SelfCertError};

/// rcgen's time type (`time::OffsetDateTime`) from a `SystemTime`, without depending on
/// the `time` crate: its epoch plus a std `Duration`.
macro_rules! at {
    ($t:expr) => {
        rcgen::date_time_ymd(1970, 1, 1) + $t.duration_since(UNIX_EPOCH).unwrap_or_default()
    };
}

/// Certificates are issued this long before "now", so a node whose clock is slightly behind
/// still accepts them.
const BACKDATE: Duration = Duration::from_secs(3600);

/// A CA that can sign: its certificate and key as PEM, the certificate's DER, and its
/// validity (Unix seconds).
pub(super) struct Ca {
    pub(super) cert_pem: String,
    pub(super) key_pem: String,
    pub(super) der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    pub(super) not_before: i64,
    pub(super) not_after: i64,
}

impl Ca {
    pub(super) fn fresh(&self, now: i64) -> bool {
        fresh(self.not_before, self.not_after, now)
    }
}

/// Valid now, with more than a third of the lifetime left.
pub(super) fn fresh(not_before: i64, not_after: i64, now: i64) -> bool {
    let life = (not_after - not_before).max(0);
    now >= not_before && not_after - now > life / 3
}

pub(super) fn parse_ca(cert_pem: &str, key_pem: &str) -> Result<Ca, String> {
    if cert_pem.is_empty() || key_pem.is_empty() {
        return Err("no CA".into());
    }
    let der = pem_certs(cert_pem)
        .into_iter()
        .next()
        .ok_or("ca.crt holds no certificate")?;
    let (_, x509) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| format!("ca.crt: {e}"))?;
    if !x509.is_ca() {
        return Err("ca.crt is not a CA certificate".into());
    }
    let key = KeyPair::from_pem(key_pem).map_err(|e| format!("ca.key: {e}"))?;
    if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err("ca.key does not match ca.crt".into());
    }
    let cn = x509
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or("ca.crt has no common name")?
        .to_string();
    let not_before = x509.validity().not_before.timestamp();
    let not_after = x509.validity().not_after.timestamp();
    // Our CAs carry only a CN and the default (SHA-256) key identifier, so these
    // parameters reproduce the issuer name and key identifier that leaves must carry; a
    // CA made otherwise fails the check of the first certificate it issues.
    let params = ca_params(&cn);
    Ok(Ca {
        cert_pem: pem("CERTIFICATE", &der),
        key_pem: key_pem.to_string(),
        der: der.clone(),
        issuer: Issuer::new(params, key),
        not_before,
        not_after,
    })
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

pub(super) fn new_ca(cfg: &SelfCertConfig, now: SystemTime) -> Result<Ca, SelfCertError> {
    let key = KeyPair::generate()?;
    let cn = format!("{}-ca@{}", cfg.service_name, unix(now));
    let mut params = ca_params(&cn);
    params.not_before = at!(now.checked_sub(BACKDATE).unwrap_or(UNIX_EPOCH));
    params.not_after = at!(now + cfg.ca_validity);
    let cert = params.self_signed(&key)?;
    let der = cert.der().to_vec();
    let (not_before, not_after) = parse_validity(&der)
        .ok_or_else(|| SelfCertError::SelfCheck("the new CA does not parse".into()))?;
    Ok(Ca {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der,
        issuer: Issuer::new(params, key),
        not_before,
        not_after,
    })
}

pub(super) fn issue_cert(
    ca: &Ca,
    cfg: &SelfCertConfig,
    now: SystemTime,
) -> Result<(String, String), SelfCertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(cfg.subject_alt_names())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cfg.service_dns_name());
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = at!(now.checked_sub(BACKDATE).unwrap_or(UNIX_EPOCH));
    // Never past the CA: a certificate outliving its issuer would not verify anyway.
    let ca_end = UNIX_EPOCH + Duration::from_secs(ca.not_after.max(0) as u64);
    params.not_after = at!((now + cfg.cert_validity).min(ca_end));
    let cert = params.signed_by(&key, &ca.issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Why the serving certificate cannot be kept, if it cannot.
pub(super) fn check_cert(
    cert_pem: &str,
    key_pem: &str,
    ca: &Ca,
    cfg: &SelfCertConfig,
    now: SystemTime,
) -> Result<(), String> {
    if cert_pem.is_empty() || key_pem.is_empty() {
        return Err("no serving certificate".into());
    }
    let der = pem_certs(cert_pem)
        .into_iter()
        .next()
        .ok_or("tls.crt holds no certificate")?;
    let (_, x509) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| format!("tls.crt: {e}"))?;
    let key = KeyPair::from_pem(key_pem).map_err(|e| format!("tls.key: {e}"))?;
    if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err("tls.key does not match tls.crt".into());
    }
    let (nb, na) = (
        x509.validity().not_before.timestamp(),
        x509.validity().not_after.timestamp(),
    );
    if !fresh(nb, na, unix(now)) {
        return Err(format!(
            "the serving certificate expires at {na} (less than a third of its lifetime left)"
        ));
    }
    let ca_pem = pem("CERTIFICATE", &ca.der);
    for name in cfg.subject_alt_names() {
        verify_serving_cert(ca_pem.as_bytes(), cert_pem.as_bytes(), &name, now)?;
    }
    Ok(())
}

/// Verifies `cert_pem` (leaf first) as a TLS server certificate for `name` (a DNS name or
/// an IP address) against the CAs in `ca_bundle_pem`, as of `now` — what a TLS client
/// trusting that bundle does.
pub fn verify_serving_cert(
    ca_bundle_pem: &[u8],
    cert_pem: &[u8],
    name: &str,
    now: SystemTime,
) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for der in pem_certs_bytes(ca_bundle_pem) {
        roots
            .add(CertificateDer::from(der))
            .map_err(|e| format!("CA bundle: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the CA bundle holds no certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| format!("verifier: {e}"))?;
    let mut chain = pem_certs_bytes(cert_pem)
        .into_iter()
        .map(CertificateDer::from);
    let leaf = chain.next().ok_or("no certificate")?;
    let intermediates: Vec<_> = chain.collect();
    let server_name =
        ServerName::try_from(name.to_string()).map_err(|e| format!("{name:?}: {e}"))?;
    let when = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
    rustls::client::danger::ServerCertVerifier::verify_server_cert(
        verifier.as_ref(),
        &leaf,
        &intermediates,
        &server_name,
        &[],
        when,
    )
    .map(|_| ())
    .map_err(|e| format!("the serving certificate does not verify for {name}: {e}"))
}

pub(super) fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

pub(super) fn pem_certs(text: &str) -> Vec<Vec<u8>> {
    pem_certs_bytes(text.as_bytes())
}

fn pem_certs_bytes(bytes: &[u8]) -> Vec<Vec<u8>> {
    CertificateDer::pem_slice_iter(bytes)
        .filter_map(Result::ok)
        .map(|c| c.as_ref().to_vec())
        .collect()
}

pub(super) fn parse_validity(der: &[u8]) -> Option<(i64, i64)> {
    let (_, x509) = x509_parser::parse_x509_certificate(der).ok()?;
    Some((
        x509.validity().not_before.timestamp(),
        x509.validity().not_after.timestamp(),
    ))
}

pub(super) fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}
