//! Client-certificate chains checked against a CA bundle from the cluster, and the subject
//! of the verified leaf (CN = user, O = groups, as Kubernetes reads it).
//!
//! The TLS layer accepts any client certificate whose key the peer holds: which CA to trust
//! changes at run time (the ConfigMap rotates), so the chain is checked here, per request.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("the CA bundle holds no usable certificate")]
    NoCertificates,
    #[error("the CA bundle is not valid PEM: {0}")]
    Pem(#[from] rustls::pki_types::pem::Error),
    #[error("building the verifier: {0}")]
    Builder(#[from] rustls::server::VerifierBuilderError),
    #[error("no client certificate")]
    NoPeerCertificate,
    #[error("chain does not verify: {0}")]
    Chain(rustls::Error),
    #[error("leaf certificate does not parse: {0}")]
    Parse(String),
}

/// The subject of a verified client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Subject {
    pub(crate) common_name: String,
    pub(crate) organizations: Vec<String>,
}

/// Verifies client-certificate chains (client-auth usage, validity, signatures) against one
/// CA bundle.
pub(crate) struct ChainVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    /// How many CA certificates were usable, for the log.
    pub(crate) anchors: usize,
}

impl std::fmt::Debug for ChainVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainVerifier")
            .field("anchors", &self.anchors)
            .finish()
    }
}

impl ChainVerifier {
    /// Trusts every parsable certificate in a PEM bundle. Unparsable entries are skipped (a
    /// bundle mid-rotation may hold one bad block); a bundle with none usable is an error.
    pub(crate) fn from_pem(pem: &[u8]) -> Result<Self, CertError> {
        let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>()?;
        let mut roots = RootCertStore::empty();
        let (anchors, skipped) = roots.add_parsable_certificates(certs);
        if skipped > 0 {
            tracing::warn!(skipped, "CA bundle has certificates that do not parse");
        }
        if anchors == 0 {
            return Err(CertError::NoCertificates);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let inner =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
        Ok(Self { inner, anchors })
    }

    /// Verifies `chain` (leaf first, as the peer sent it) for client authentication at `now`
    /// and returns the leaf's subject.
    pub(crate) fn verify(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Subject, CertError> {
        let (leaf, intermediates) = chain.split_first().ok_or(CertError::NoPeerCertificate)?;
        self.inner
            .verify_client_cert(leaf, intermediates, now)
            .map_err(CertError::Chain)?;
        subject(leaf)
    }
}

/// CN and O of a certificate. With several CNs the last one wins, as in Go's `pkix.Name`,
/// which is what kube-apiserver uses.
fn subject(der: &CertificateDer<'_>) -> Result<Subject, CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| CertError::Parse(e.to_string()))?;
    let name = cert.subject();
    let common_name = name
        .iter_common_name()
        .filter_map(|a| a.as_str().ok())
        .last()
        .unwrap_or_default()
        .to_string();
    let organizations = name
        .iter_organization()
        .filter_map(|a| a.as_str().ok())
        .map(str::to_string)
        .collect();
    Ok(Subject {
        common_name,
        organizations,
    })
}

#[cfg(test)]
pub(crate) mod testpki {
    //! Throw-away CAs and leaf certificates for the unit tests.

    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    use rustls::pki_types::CertificateDer;

    pub(crate) struct TestCa {
        pub(crate) issuer: Issuer<'static, KeyPair>,
        pub(crate) pem: String,
        pub(crate) der: CertificateDer<'static>,
    }

    fn dn(cn: &str, orgs: &[&str]) -> DistinguishedName {
        let mut dn = DistinguishedName::new();
        // rcgen keeps one value per attribute type; a second O goes in under the same OID
        // spelled as a custom type, which encodes identically.
        assert!(
            orgs.len() <= 2,
            "test certificates carry at most two organizations"
        );
        if let Some(o) = orgs.first() {
            dn.push(DnType::OrganizationName, *o);
        }
        if let Some(o) = orgs.get(1) {
            dn.push(DnType::CustomDnType(vec![2, 5, 4, 10]), *o);
        }
        dn.push(DnType::CommonName, cn);
        dn
    }

    fn ca_params(cn: &str) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = dn(cn, &[]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
    }

    impl TestCa {
        pub(crate) fn new(cn: &str) -> Self {
            let key = KeyPair::generate().expect("key");
            let params = ca_params(cn);
            let cert = params.self_signed(&key).expect("self-signed");
            Self {
                pem: cert.pem(),
                der: cert.der().clone(),
                issuer: Issuer::new(params, key),
            }
        }

        /// An intermediate CA signed by this one.
        pub(crate) fn intermediate(&self, cn: &str) -> Self {
            let key = KeyPair::generate().expect("key");
            let params = ca_params(cn);
            let cert = params.signed_by(&key, &self.issuer).expect("sign");
            Self {
                pem: cert.pem(),
                der: cert.der().clone(),
                issuer: Issuer::new(params, key),
            }
        }

        pub(crate) fn leaf(
            &self,
            cn: &str,
            orgs: &[&str],
            usage: ExtendedKeyUsagePurpose,
        ) -> CertificateDer<'static> {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.distinguished_name = dn(cn, orgs);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![usage];
            params
                .signed_by(&key, &self.issuer)
                .expect("sign")
                .der()
                .clone()
        }

        pub(crate) fn client(&self, cn: &str, orgs: &[&str]) -> CertificateDer<'static> {
            self.leaf(cn, orgs, ExtendedKeyUsagePurpose::ClientAuth)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testpki::TestCa;
    use super::*;

    fn now() -> UnixTime {
        UnixTime::now()
    }

    #[test]
    fn leaf_signed_by_the_ca_verifies_with_cn_and_orgs() {
        let ca = TestCa::new("test-ca");
        let v = ChainVerifier::from_pem(ca.pem.as_bytes()).expect("verifier");
        let leaf = ca.client("alice", &["team-a", "team-x"]);
        let s = v.verify(&[leaf], now()).expect("verifies");
        assert_eq!(s.common_name, "alice");
        assert_eq!(s.organizations, ["team-a", "team-x"]);
    }

    #[test]
    fn chain_through_an_intermediate_verifies() {
        let root = ChainVerifier::from_pem(TestCa::new("unrelated").pem.as_bytes()).expect("v");
        let ca = TestCa::new("root");
        let mid = ca.intermediate("mid");
        let leaf = mid.client("front-proxy-client", &[]);
        let v = ChainVerifier::from_pem(ca.pem.as_bytes()).expect("verifier");
        // Without the intermediate the leaf does not reach the root.
        assert!(matches!(
            v.verify(std::slice::from_ref(&leaf), now()),
            Err(CertError::Chain(_))
        ));
        let s = v
            .verify(&[leaf.clone(), mid.der.clone()], now())
            .expect("verifies");
        assert_eq!(s.common_name, "front-proxy-client");
        assert!(root.verify(&[leaf, mid.der.clone()], now()).is_err());
    }

    #[test]
    fn other_ca_server_usage_and_self_signed_are_refused() {
        let ca = TestCa::new("ca");
        let other = TestCa::new("other");
        let v = ChainVerifier::from_pem(ca.pem.as_bytes()).expect("verifier");
        assert!(v.verify(&[other.client("alice", &[])], now()).is_err());
        let server = ca.leaf("alice", &[], rcgen::ExtendedKeyUsagePurpose::ServerAuth);
        assert!(
            v.verify(&[server], now()).is_err(),
            "server-only usage must not authenticate a client"
        );
        // The CA certificate itself presented as a leaf.
        assert!(v.verify(std::slice::from_ref(&other.der), now()).is_err());
        assert!(matches!(
            v.verify(&[], now()),
            Err(CertError::NoPeerCertificate)
        ));
    }

    #[test]
    fn outside_the_validity_period_is_refused() {
        let ca = TestCa::new("ca");
        let v = ChainVerifier::from_pem(ca.pem.as_bytes()).expect("verifier");
        let leaf = ca.client("alice", &[]);
        // rcgen's default validity is 1975..4096: 1970 is before it.
        let early = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1));
        assert!(v.verify(&[leaf], early).is_err());
    }

    #[test]
    fn bundles_with_several_cas_trust_each() {
        let a = TestCa::new("a");
        let b = TestCa::new("b");
        let v = ChainVerifier::from_pem(format!("{}{}", a.pem, b.pem).as_bytes()).expect("v");
        assert_eq!(v.anchors, 2);
        assert!(v.verify(&[a.client("x", &[])], now()).is_ok());
        assert!(v.verify(&[b.client("y", &[])], now()).is_ok());
    }

    #[test]
    fn empty_or_garbage_bundles_are_errors() {
        assert!(matches!(
            ChainVerifier::from_pem(b""),
            Err(CertError::NoCertificates)
        ));
        assert!(ChainVerifier::from_pem(
            b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"
        )
        .is_err());
    }
}
