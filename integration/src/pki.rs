//! Certificates and keys for a throw-away control plane: one CA per trust domain,
//! as kubeadm lays them out (cluster CA, front-proxy CA, service-account key).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::Error;

/// A certificate authority that can issue leaf certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
}

/// What a leaf certificate may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
}

/// A PEM certificate and its PEM (PKCS#8) key.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Paths of a certificate and key written to disk.
#[derive(Clone, Debug)]
pub struct PairFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    pub fn new(common_name: &str) -> Result<Self, Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(common_name, None);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        })
    }

    /// Issues a leaf certificate. `sans` may hold DNS names and IP addresses; for client
    /// certificates `org` becomes the user's group, as Kubernetes reads it (rcgen keeps one
    /// value per attribute, so users with several groups authenticate by token instead).
    pub fn issue(
        &self,
        common_name: &str,
        org: Option<&str>,
        sans: &[&str],
        usage: Usage,
    ) -> Result<Pair, Error> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name = dn(common_name, org);
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    pub fn write_cert(&self, path: &Path) -> Result<PathBuf, Error> {
        write(path, &self.cert_pem)?;
        Ok(path.to_path_buf())
    }
}

impl Pair {
    /// Writes `<dir>/<name>.crt` and `<dir>/<name>.key`.
    pub fn write(&self, dir: &Path, name: &str) -> Result<PairFiles, Error> {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        write(&cert, &self.cert_pem)?;
        write(&key, &self.key_pem)?;
        Ok(PairFiles { cert, key })
    }
}

/// A key pair as PEM: private (PKCS#8) and public (SPKI), e.g. for service-account tokens.
pub fn key_pair_pem() -> Result<(String, String), Error> {
    let key = KeyPair::generate()?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

fn dn(common_name: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(org) = org {
        dn.push(DnType::OrganizationName, org);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

pub(crate) fn write(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(|e| Error::Io(format!("write {}", path.display()), e))
}
