//! Self-signed serving certificates: the no-dependency default for clusters without
//! cert-manager.
//!
//! The server keeps its own CA and serving certificate in one Secret (by default
//! `coredump-system/coredump-apiserver-tls`, type `kubernetes.io/tls`):
//!
//! | key | what |
//! | --- | --- |
//! | `tls.crt`, `tls.key` | the serving certificate (for `<service>.<namespace>.svc` and the shorter forms) and its key |
//! | `ca.crt`, `ca.key` | the CA that signs it |
//! | `ca-bundle.crt` | what kube-apiserver's aggregator trusts: `ca.crt` first, then earlier CAs not yet expired |
//!
//! [`ensure`] creates the Secret if it is missing, reuses it when it is still good, and
//! re-issues what is due (the serving certificate, or the CA and the serving certificate)
//! when less than a third of its lifetime is left or it no longer fits (other names, a key
//! that does not match, unparseable data). It then sets the `APIService`'s
//! `spec.caBundle` to `ca-bundle.crt` and writes `tls.crt` and `tls.key` into a directory
//! for the TLS layer, which reloads files when they change. [`spawn`] repeats that every
//! [`SelfCertConfig::check_interval`] for the life of the process.
//!
//! Order matters when the CA rotates: the Secret is written first (one source of truth,
//! optimistic concurrency against a second replica), then the caBundle (which then holds
//! the new CA and the old one), and only then the files the server serves from, so the
//! aggregator trusts the new certificate before it is presented. The old CA stays in the
//! bundle until it expires.
//!
//! Permissions this needs (see `deploy/base/selfcert-rbac.yaml`): `get`/`update` on that
//! one Secret and `create` on Secrets in its namespace (a create request carries no name to
//! scope by), and `get`/`patch` on that one APIService.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::collections::BTreeMap;

/// rcgen's time type (`time::OffsetDateTime`) from a `SystemTime`, without depending on
/// the `time` crate: its epoch plus a std `Duration`.
macro_rules! at {
    ($t:expr) => {
        rcgen::date_time_ymd(1970, 1, 1) + $t.duration_since(UNIX_EPOCH).unwrap_or_default()
    };
}

/// Secret keys.
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";
pub const CA_CERT_KEY: &str = "ca.crt";
pub const CA_KEY_KEY: &str = "ca.key";
pub const CA_BUNDLE_KEY: &str = "ca-bundle.crt";

/// File names written into [`SelfCertConfig::dir`].
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";

/// Certificates are issued this long before "now", so a node whose clock is slightly behind
/// still accepts them.
const BACKDATE: Duration = Duration::from_secs(3600);

/// Attempts at a read-modify-write of the Secret before giving up on conflicts.
const MAX_ATTEMPTS: usize = 5;

#[derive(Clone, Debug)]
pub struct SelfCertConfig {
    /// Namespace of the Secret and of the Service the certificate is for.
    pub namespace: String,
    pub secret_name: String,
    /// The Service the aggregator dials: the certificate names `<service>.<namespace>.svc`
    /// (what the aggregator checks) and the shorter forms.
    pub service_name: String,
    /// The APIService whose `spec.caBundle` is kept equal to the CA bundle.
    pub apiservice_name: String,
    /// More DNS names or IP addresses for the certificate.
    pub extra_sans: Vec<String>,
    /// Where `tls.crt` and `tls.key` are written (a writable, preferably in-memory, volume).
    pub dir: PathBuf,
    pub ca_validity: Duration,
    pub cert_validity: Duration,
    /// How often [`spawn`]'s task re-checks the Secret, the expiry and the caBundle.
    pub check_interval: Duration,
}

impl SelfCertConfig {
    /// The defaults used by `deploy/`: Secret `coredump-system/coredump-apiserver-tls`,
    /// Service `coredump-apiserver`, APIService `v1alpha1.coredump.io`, a CA for 10 years
    /// and serving certificates for 1 year, re-checked every minute.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            namespace: "coredump-system".into(),
            secret_name: "coredump-apiserver-tls".into(),
            service_name: "coredump-apiserver".into(),
            apiservice_name: "v1alpha1.coredump.io".into(),
            extra_sans: Vec::new(),
            dir: dir.into(),
            ca_validity: Duration::from_secs(10 * 365 * 24 * 3600),
            cert_validity: Duration::from_secs(365 * 24 * 3600),
            check_interval: Duration::from_secs(60),
        }
    }

    /// The name the aggregator verifies: `<service>.<namespace>.svc`.
    pub fn service_dns_name(&self) -> String {
        format!("{}.{}.svc", self.service_name, self.namespace)
    }

    /// Every name the serving certificate must carry, the aggregator's first.
    pub fn subject_alt_names(&self) -> Vec<String> {
        let mut names = vec![
            self.service_dns_name(),
            format!("{}.{}", self.service_name, self.namespace),
            self.service_name.clone(),
        ];
        for s in &self.extra_sans {
            let s = s.trim();
            if !s.is_empty() && !names.iter().any(|n| n == s) {
                names.push(s.to_string());
            }
        }
        names
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CERT_FILE)
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }

    fn check(&self) -> Result<(), SelfCertError> {
        let bad = |m: String| Err(SelfCertError::Config(m));
        if self.ca_validity < Duration::from_secs(2 * 3600) {
            return bad("the CA validity must be at least 2h".into());
        }
        if self.cert_validity < Duration::from_secs(2 * 3600) {
            return bad("the certificate validity must be at least 2h".into());
        }
        if self.cert_validity > self.ca_validity {
            return bad("the certificate validity must not exceed the CA's".into());
        }
        for name in self.subject_alt_names() {
            if name.parse::<std::net::IpAddr>().is_err()
                && ServerName::try_from(name.as_str()).is_err()
            {
                return bad(format!("{name:?} is neither a DNS name nor an IP address"));
            }
        }
        Ok(())
    }
}

/// The command-line flags for self-signed mode, to `#[command(flatten)]` into the
/// server's `Args`. `--self-signed` is off by default: the server then serves the files
/// named by `--tls-cert-file`/`--tls-private-key-file` (cert-manager, or your own PKI).
#[derive(Clone, Debug, clap::Args)]
pub struct SelfCertArgs {
    /// Make and rotate a self-signed CA and serving certificate, kept in a Secret, and keep
    /// the APIService's caBundle equal to that CA. Excludes --tls-cert-file.
    #[arg(long, env = "COREDUMP_SELF_SIGNED")]
    pub self_signed: bool,

    /// Writable directory the serving certificate and key are written to (tls.crt, tls.key).
    #[arg(
        long,
        env = "COREDUMP_SELF_SIGNED_CERT_DIR",
        default_value = "/run/coredump-apiserver/tls"
    )]
    pub self_signed_cert_dir: PathBuf,

    /// Namespace of the Secret and of the Service.
    #[arg(long, env = "POD_NAMESPACE", default_value = "coredump-system")]
    pub self_signed_namespace: String,

    /// Secret holding the CA and the serving certificate.
    #[arg(
        long,
        env = "COREDUMP_SELF_SIGNED_SECRET",
        default_value = "coredump-apiserver-tls"
    )]
    pub self_signed_secret: String,

    /// Service the aggregator dials; the certificate is for `<service>.<namespace>.svc`.
    #[arg(
        long,
        env = "COREDUMP_SELF_SIGNED_SERVICE",
        default_value = "coredump-apiserver"
    )]
    pub self_signed_service: String,

    /// APIService whose spec.caBundle is kept equal to the CA.
    #[arg(
        long,
        env = "COREDUMP_SELF_SIGNED_APISERVICE",
        default_value = "v1alpha1.coredump.io"
    )]
    pub self_signed_apiservice: String,

    /// More DNS names or IP addresses for the serving certificate (comma-separated).
    #[arg(long, env = "COREDUMP_SELF_SIGNED_EXTRA_SANS", value_delimiter = ',')]
    pub self_signed_extra_sans: Vec<String>,

    /// Lifetime of the CA; a new one is made when a third of it is left.
    #[arg(
        long,
        env = "COREDUMP_SELF_SIGNED_CA_VALIDITY",
        default_value = "87600h"
    )]
    pub self_signed_ca_validity: String,

    /// Lifetime of the serving certificate; a new one is issued when a third of it is left.
    #[arg(
        long,
        env = "COREDUMP_SELF_SIGNED_CERT_VALIDITY",
        default_value = "8760h"
    )]
    pub self_signed_cert_validity: String,

    /// How often the Secret, the expiry dates and the caBundle are re-checked.
    #[arg(
        long,
        env = "COREDUMP_SELF_SIGNED_CHECK_INTERVAL",
        default_value = "1m"
    )]
    pub self_signed_check_interval: String,
}

impl SelfCertArgs {
    /// The configuration, or None without `--self-signed`.
    pub fn config(&self) -> Result<Option<SelfCertConfig>, SelfCertError> {
        if !self.self_signed {
            return Ok(None);
        }
        let duration = |flag: &str, v: &str| {
            coredump_openapi::types::parse_duration(v)
                .map_err(|e| SelfCertError::Config(format!("--{flag}: {e}")))
        };
        let cfg = SelfCertConfig {
            namespace: self.self_signed_namespace.clone(),
            secret_name: self.self_signed_secret.clone(),
            service_name: self.self_signed_service.clone(),
            apiservice_name: self.self_signed_apiservice.clone(),
            extra_sans: self.self_signed_extra_sans.clone(),
            dir: self.self_signed_cert_dir.clone(),
            ca_validity: duration("self-signed-ca-validity", &self.self_signed_ca_validity)?,
            cert_validity: duration("self-signed-cert-validity", &self.self_signed_cert_validity)?,
            check_interval: duration(
                "self-signed-check-interval",
                &self.self_signed_check_interval,
            )?,
        };
        cfg.check()?;
        Ok(Some(cfg))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SelfCertError {
    #[error("self-signed certificates: {0}")]
    Config(String),
    #[error("Secret {namespace}/{name}: {source}")]
    Secret {
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("Secret {namespace}/{name} kept changing under us ({attempts} attempts)")]
    Contended {
        namespace: String,
        name: String,
        attempts: usize,
    },
    #[error("APIService {name}: {source}")]
    ApiService {
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("a freshly issued certificate does not verify: {0}")]
    SelfCheck(String),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Makes sure the Secret holds a usable CA and serving certificate, the APIService trusts
/// the CA, and the PEM files are in `cfg.dir`; returns the paths of the certificate and the
/// key. Call before serving; then [`spawn`] keeps everything current.
///
/// A missing APIService is not an error (it may be applied after the server starts; the
/// background task sets its caBundle once it exists); any other failure to update it is.
pub async fn ensure(
    client: kube::Client,
    cfg: &SelfCertConfig,
) -> Result<(PathBuf, PathBuf), SelfCertError> {
    sync_at(client, cfg, SystemTime::now()).await?;
    Ok((cfg.cert_path(), cfg.key_path()))
}

/// Runs [`ensure`]'s work every `cfg.check_interval` until the runtime shuts down. Errors
/// are logged and retried on the next round; the files are only replaced after the
/// APIService trusts what they hold.
pub fn spawn(client: kube::Client, cfg: SelfCertConfig) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(cfg.check_interval.max(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate: ensure() just ran
        loop {
            tick.tick().await;
            if let Err(e) = sync_at(client.clone(), &cfg, SystemTime::now()).await {
                tracing::warn!(error = %e, "self-signed certificates not refreshed; retrying");
            }
        }
    })
}

/// What one round did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncReport {
    pub change: Change,
    /// The APIService's caBundle was updated.
    pub ca_bundle_updated: bool,
    /// The APIService does not exist (yet).
    pub apiservice_missing: bool,
    /// The files in `cfg.dir` were (re)written.
    pub files_written: bool,
}

/// One round as of `now` (tests pass a time in the future to see rotation).
pub async fn sync_at(
    client: kube::Client,
    cfg: &SelfCertConfig,
    now: SystemTime,
) -> Result<SyncReport, SelfCertError> {
    cfg.check()?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    let secret_err = |source: kube::Error| SelfCertError::Secret {
        namespace: cfg.namespace.clone(),
        name: cfg.secret_name.clone(),
        source: Box::new(source),
    };
    let mut attempt = 0;
    let (material, change) = loop {
        attempt += 1;
        if attempt > MAX_ATTEMPTS {
            return Err(SelfCertError::Contended {
                namespace: cfg.namespace.clone(),
                name: cfg.secret_name.clone(),
                attempts: MAX_ATTEMPTS,
            });
        }
        let existing = secrets
            .get_opt(&cfg.secret_name)
            .await
            .map_err(secret_err)?;
        let data = existing.as_ref().map(secret_strings).unwrap_or_default();
        let (material, change) = reconcile(&data, cfg, now)?;
        if change == Change::None {
            break (material, change);
        }
        let written = match existing {
            None => {
                let secret = new_secret(cfg, &material);
                secrets.create(&PostParams::default(), &secret).await
            }
            Some(mut secret) => {
                // Replace keeps the resourceVersion: a concurrent writer makes this fail
                // with 409 and we start over from what it wrote.
                secret.data = Some(material.to_data());
                secret.string_data = None;
                secrets
                    .replace(&cfg.secret_name, &PostParams::default(), &secret)
                    .await
            }
        };
        match written {
            Ok(_) => {
                tracing::info!(
                    secret = %format!("{}/{}", cfg.namespace, cfg.secret_name),
                    change = ?change,
                    "self-signed certificates written"
                );
                break (material, change);
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::debug!(reason = %s.reason, "Secret changed concurrently; retrying");
                continue;
            }
            Err(e) => return Err(secret_err(e)),
        }
    };

    let apiservices: Api<APIService> = Api::all(client);
    let api_err = |source: kube::Error| SelfCertError::ApiService {
        name: cfg.apiservice_name.clone(),
        source: Box::new(source),
    };
    let bundle = material.ca_bundle_pem.as_bytes();
    let (ca_bundle_updated, apiservice_missing) = match apiservices
        .get_opt(&cfg.apiservice_name)
        .await
        .map_err(api_err)?
    {
        None => {
            tracing::warn!(
                apiservice = %cfg.apiservice_name,
                "APIService not found; its caBundle will be set once it exists"
            );
            (false, true)
        }
        Some(svc) => {
            let spec = svc.spec.as_ref();
            let current = spec.and_then(|s| s.ca_bundle.as_ref()).map(|b| &b.0[..]);
            let skip = spec.and_then(|s| s.insecure_skip_tls_verify) == Some(true);
            if current == Some(bundle) && !skip {
                (false, false)
            } else {
                let patch = serde_json::json!({
                    "spec": {
                        "caBundle": ByteString(bundle.to_vec()),
                        "insecureSkipTLSVerify": serde_json::Value::Null,
                    }
                });
                apiservices
                    .patch(
                        &cfg.apiservice_name,
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                    .map_err(api_err)?;
                tracing::info!(apiservice = %cfg.apiservice_name, "caBundle updated");
                (true, false)
            }
        }
    };

    let files_written = write_files(cfg, &material)?;
    Ok(SyncReport {
        change,
        ca_bundle_updated,
        apiservice_missing,
        files_written,
    })
}

/// What [`reconcile`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The Secret was good as it was.
    None,
    /// A new serving certificate from the existing CA.
    NewCert { reason: String },
    /// A new CA and serving certificate.
    NewCa { reason: String },
    /// Only expired CAs were dropped from the bundle.
    PrunedBundle,
}

/// The Secret's contents, as PEM text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub ca_bundle_pem: String,
}

impl Material {
    pub fn to_data(&self) -> BTreeMap<String, ByteString> {
        [
            (TLS_CERT_KEY, &self.cert_pem),
            (TLS_KEY_KEY, &self.key_pem),
            (CA_CERT_KEY, &self.ca_cert_pem),
            (CA_KEY_KEY, &self.ca_key_pem),
            (CA_BUNDLE_KEY, &self.ca_bundle_pem),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect()
    }
}

fn secret_strings(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?)))
        .collect()
}

fn new_secret(cfg: &SelfCertConfig, material: &Material) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(cfg.secret_name.clone()),
            namespace: Some(cfg.namespace.clone()),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/name".to_string(),
                    "coredump-detector".to_string(),
                ),
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    "coredump-apiserver".to_string(),
                ),
            ])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(material.to_data()),
        ..Default::default()
    }
}

/// Decides, from the Secret's current data (key → PEM text; empty when there is no
/// Secret), what the Secret should hold as of `now`. Pure: no I/O.
pub fn reconcile(
    data: &BTreeMap<String, String>,
    cfg: &SelfCertConfig,
    now: SystemTime,
) -> Result<(Material, Change), SelfCertError> {
    let now_s = unix(now);
    let get = |k: &str| data.get(k).map(String::as_str).unwrap_or("");
    let old_bundle = pem_certs(get(CA_BUNDLE_KEY));

    // The CA: reuse it while it is sound and has more than a third of its life left.
    let ca = match parse_ca(get(CA_CERT_KEY), get(CA_KEY_KEY)) {
        Err(why) => Err(why),
        Ok(ca) if !ca.fresh(now_s) => Err(format!(
            "the CA expires at {} (less than a third of its lifetime left)",
            ca.not_after
        )),
        Ok(ca) => Ok(ca),
    };
    let (ca, mut change) = match ca {
        Ok(ca) => (ca, Change::None),
        Err(reason) => {
            if !data.is_empty() {
                tracing::info!(%reason, "issuing a new CA");
            }
            let reason = if data.is_empty() {
                "no Secret yet".to_string()
            } else {
                reason
            };
            (new_ca(cfg, now)?, Change::NewCa { reason })
        }
    };

    // The serving certificate: reuse it while it verifies for every name against this CA,
    // matches its key and has more than a third of its life left.
    let cert = if matches!(change, Change::NewCa { .. }) {
        None
    } else {
        match check_cert(get(TLS_CERT_KEY), get(TLS_KEY_KEY), &ca, cfg, now) {
            Ok(()) => Some((get(TLS_CERT_KEY).to_string(), get(TLS_KEY_KEY).to_string())),
            Err(reason) => {
                tracing::info!(%reason, "issuing a new serving certificate");
                change = Change::NewCert { reason };
                None
            }
        }
    };
    let (cert_pem, key_pem) = match cert {
        Some(pair) => pair,
        None => {
            let (cert_pem, key_pem) = issue_cert(&ca, cfg, now)?;
            check_cert(&cert_pem, &key_pem, &ca, cfg, now).map_err(SelfCertError::SelfCheck)?;
            (cert_pem, key_pem)
        }
    };

    // The bundle: this CA first, then earlier ones (from the old bundle, and the old CA
    // itself) that have not expired.
    let mut bundle: Vec<Vec<u8>> = vec![ca.der.clone()];
    let previous = pem_certs(get(CA_CERT_KEY))
        .into_iter()
        .chain(old_bundle.clone());
    for der in previous {
        let alive = parse_validity(&der).is_some_and(|(_, not_after)| not_after > now_s);
        if alive && !bundle.contains(&der) {
            bundle.push(der);
        }
    }
    let ca_bundle_pem = bundle
        .iter()
        .map(|d| pem("CERTIFICATE", d))
        .collect::<String>();
    if change == Change::None && bundle != old_bundle {
        change = Change::PrunedBundle;
    }

    Ok((
        Material {
            cert_pem,
            key_pem,
            ca_cert_pem: ca.cert_pem.clone(),
            ca_key_pem: ca.key_pem.clone(),
            ca_bundle_pem,
        },
        change,
    ))
}

struct Ca {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    not_before: i64,
    not_after: i64,
}

impl Ca {
    fn fresh(&self, now: i64) -> bool {
        fresh(self.not_before, self.not_after, now)
    }
}

/// Valid now, with more than a third of the lifetime left.
fn fresh(not_before: i64, not_after: i64, now: i64) -> bool {
    let life = (not_after - not_before).max(0);
    now >= not_before && not_after - now > life / 3
}

fn parse_ca(cert_pem: &str, key_pem: &str) -> Result<Ca, String> {
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

fn new_ca(cfg: &SelfCertConfig, now: SystemTime) -> Result<Ca, SelfCertError> {
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

fn issue_cert(
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
fn check_cert(
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

/// Writes the files if their contents differ (an unchanged file keeps its mtime, so the
/// TLS layer does not reload for nothing). The key goes first: the TLS layer keeps the old
/// pair when it reads a mismatched one and loads the new pair on its next poll.
fn write_files(cfg: &SelfCertConfig, m: &Material) -> Result<bool, SelfCertError> {
    std::fs::create_dir_all(&cfg.dir).map_err(|source| SelfCertError::Write {
        path: cfg.dir.clone(),
        source,
    })?;
    let key = write_if_changed(&cfg.key_path(), m.key_pem.as_bytes(), 0o600)?;
    let cert = write_if_changed(&cfg.cert_path(), m.cert_pem.as_bytes(), 0o644)?;
    Ok(key || cert)
}

fn write_if_changed(path: &Path, contents: &[u8], mode: u32) -> Result<bool, SelfCertError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if std::fs::read(path).is_ok_and(|old| old == contents) {
        return Ok(false);
    }
    let err = |source| SelfCertError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(contents).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(true)
}

fn pem(label: &str, der: &[u8]) -> String {
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

fn pem_certs(text: &str) -> Vec<Vec<u8>> {
    pem_certs_bytes(text.as_bytes())
}

fn pem_certs_bytes(bytes: &[u8]) -> Vec<Vec<u8>> {
    CertificateDer::pem_slice_iter(bytes)
        .filter_map(Result::ok)
        .map(|c| c.as_ref().to_vec())
        .collect()
}

fn parse_validity(der: &[u8]) -> Option<(i64, i64)> {
    let (_, x509) = x509_parser::parse_x509_certificate(der).ok()?;
    Some((
        x509.validity().not_before.timestamp(),
        x509.validity().not_after.timestamp(),
    ))
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn cfg() -> SelfCertConfig {
        SelfCertConfig::new("/nonexistent")
    }

    fn data_of(m: &Material) -> BTreeMap<String, String> {
        m.to_data()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
            .collect()
    }

    fn not_after(pem_text: &str) -> i64 {
        parse_validity(&pem_certs(pem_text)[0]).unwrap().1
    }

    #[test]
    fn fresh_secret_gets_a_ca_and_a_certificate_for_the_service() {
        let now = SystemTime::now();
        let (m, change) = reconcile(&BTreeMap::new(), &cfg(), now).unwrap();
        assert!(matches!(change, Change::NewCa { .. }), "{change:?}");
        assert_eq!(pem_certs(&m.ca_bundle_pem), pem_certs(&m.ca_cert_pem));
        for name in [
            "coredump-apiserver.coredump-system.svc",
            "coredump-apiserver.coredump-system",
            "coredump-apiserver",
        ] {
            verify_serving_cert(m.ca_bundle_pem.as_bytes(), m.cert_pem.as_bytes(), name, now)
                .unwrap();
        }
        // Not for other names, and not trusted by another CA.
        assert!(verify_serving_cert(
            m.ca_bundle_pem.as_bytes(),
            m.cert_pem.as_bytes(),
            "other.coredump-system.svc",
            now
        )
        .is_err());
        let (other, _) = reconcile(&BTreeMap::new(), &cfg(), now).unwrap();
        assert!(verify_serving_cert(
            other.ca_bundle_pem.as_bytes(),
            m.cert_pem.as_bytes(),
            "coredump-apiserver.coredump-system.svc",
            now
        )
        .is_err());
        // Lifetimes as configured (to the second, minus nothing: not_after = now + validity).
        let now_s = unix(now);
        assert!((not_after(&m.cert_pem) - (now_s + 365 * 86400)).abs() <= 1);
        assert!((not_after(&m.ca_cert_pem) - (now_s + 3650 * 86400)).abs() <= 1);
        // The key is a PKCS#8 PEM the TLS layer can load.
        assert!(m.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    }

    #[test]
    fn a_good_secret_is_reused_unchanged() {
        let now = SystemTime::now();
        let (m, _) = reconcile(&BTreeMap::new(), &cfg(), now).unwrap();
        let later = now + 100 * DAY;
        let (again, change) = reconcile(&data_of(&m), &cfg(), later).unwrap();
        assert_eq!(change, Change::None);
        assert_eq!(again, m);
    }

    #[test]
    fn the_certificate_is_renewed_with_a_third_of_its_life_left_under_the_same_ca() {
        let now = SystemTime::now();
        let (m, _) = reconcile(&BTreeMap::new(), &cfg(), now).unwrap();
        // 365 days: renewed once fewer than ~121.7 days are left.
        let (kept, change) = reconcile(&data_of(&m), &cfg(), now + 240 * DAY).unwrap();
        assert_eq!(change, Change::None);
        assert_eq!(kept.cert_pem, m.cert_pem);
        let later = now + 250 * DAY;
        let (renewed, change) = reconcile(&data_of(&m), &cfg(), later).unwrap();
        assert!(matches!(change, Change::NewCert { .. }), "{change:?}");
        assert_ne!(renewed.cert_pem, m.cert_pem);
        assert_ne!(renewed.key_pem, m.key_pem);
        assert_eq!(renewed.ca_cert_pem, m.ca_cert_pem);
        assert_eq!(renewed.ca_key_pem, m.ca_key_pem);
        assert_eq!(renewed.ca_bundle_pem, m.ca_bundle_pem);
        verify_serving_cert(
            m.ca_bundle_pem.as_bytes(),
            renewed.cert_pem.as_bytes(),
            "coredump-apiserver.coredump-system.svc",
            later,
        )
        .unwrap();
        // An expired certificate is renewed too.
        let (_, change) = reconcile(&data_of(&m), &cfg(), now + 400 * DAY).unwrap();
        assert!(matches!(change, Change::NewCert { .. }), "{change:?}");
    }

    #[test]
    fn the_ca_rotates_and_the_bundle_keeps_the_old_one_until_it_expires() {
        let mut c = cfg();
        c.ca_validity = 30 * DAY;
        c.cert_validity = 6 * DAY;
        let t0 = SystemTime::now();
        let (m0, _) = reconcile(&BTreeMap::new(), &c, t0).unwrap();
        // Keep the certificate fresh along the way, as the background task would: after
        // 4 or 5 days it has less than 2 of its 6 days left.
        let mut m1 = m0.clone();
        for day in [5, 10, 15, 19] {
            let (next, change) = reconcile(&data_of(&m1), &c, t0 + day * DAY).unwrap();
            assert!(
                matches!(change, Change::NewCert { .. }),
                "day {day}: {change:?}"
            );
            assert_eq!(next.ca_cert_pem, m0.ca_cert_pem, "day {day}");
            m1 = next;
        }
        // Day 21: the CA has less than a third (10 days) of its 30 days left.
        let t2 = t0 + 21 * DAY;
        let (m2, change) = reconcile(&data_of(&m1), &c, t2).unwrap();
        assert!(matches!(change, Change::NewCa { .. }), "{change:?}");
        assert_ne!(m2.ca_cert_pem, m0.ca_cert_pem);
        let bundle = pem_certs(&m2.ca_bundle_pem);
        assert_eq!(bundle.len(), 2);
        assert_eq!(bundle[0], pem_certs(&m2.ca_cert_pem)[0], "new CA first");
        assert_eq!(bundle[1], pem_certs(&m0.ca_cert_pem)[0]);
        // The bundle verifies both the certificate still being served and the new one.
        let name = "coredump-apiserver.coredump-system.svc";
        verify_serving_cert(
            m2.ca_bundle_pem.as_bytes(),
            m1.cert_pem.as_bytes(),
            name,
            t2,
        )
        .unwrap();
        verify_serving_cert(
            m2.ca_bundle_pem.as_bytes(),
            m2.cert_pem.as_bytes(),
            name,
            t2,
        )
        .unwrap();
        // Once the old CA has expired it leaves the bundle.
        let t3 = t0 + 31 * DAY;
        let (m3, change) = reconcile(&data_of(&m2), &c, t3).unwrap();
        assert!(
            matches!(change, Change::PrunedBundle | Change::NewCert { .. }),
            "{change:?}"
        );
        assert_eq!(m3.ca_cert_pem, m2.ca_cert_pem);
        assert_eq!(pem_certs(&m3.ca_bundle_pem), vec![bundle[0].clone()]);
    }

    #[test]
    fn a_certificate_never_outlives_its_ca() {
        let mut c = cfg();
        c.ca_validity = 30 * DAY;
        c.cert_validity = 20 * DAY;
        let t0 = SystemTime::now();
        let (m0, _) = reconcile(&BTreeMap::new(), &c, t0).unwrap();
        // Day 14: the certificate has 6 of its 20 days left; the CA 16 of its 30 (kept).
        // The new certificate would run to day 34, but stops with the CA on day 30.
        let (m1, change) = reconcile(&data_of(&m0), &c, t0 + 14 * DAY).unwrap();
        assert!(matches!(change, Change::NewCert { .. }), "{change:?}");
        assert_eq!(m1.ca_cert_pem, m0.ca_cert_pem);
        assert_eq!(not_after(&m1.cert_pem), not_after(&m1.ca_cert_pem));
    }

    #[test]
    fn unusable_contents_are_replaced() {
        let now = SystemTime::now();
        let (m, _) = reconcile(&BTreeMap::new(), &cfg(), now).unwrap();
        let (other, _) = reconcile(&BTreeMap::new(), &cfg(), now).unwrap();

        // A key that does not belong to the certificate: new certificate, same CA.
        let mut d = data_of(&m);
        d.insert(TLS_KEY_KEY.into(), other.key_pem.clone());
        let (fixed, change) = reconcile(&d, &cfg(), now).unwrap();
        assert!(matches!(change, Change::NewCert { .. }), "{change:?}");
        assert_eq!(fixed.ca_cert_pem, m.ca_cert_pem);

        // A certificate from another CA: new certificate from ours.
        let mut d = data_of(&m);
        d.insert(TLS_CERT_KEY.into(), other.cert_pem.clone());
        d.insert(TLS_KEY_KEY.into(), other.key_pem.clone());
        let (fixed, change) = reconcile(&d, &cfg(), now).unwrap();
        assert!(matches!(change, Change::NewCert { .. }), "{change:?}");
        assert_eq!(fixed.ca_cert_pem, m.ca_cert_pem);

        // A CA key that does not match: everything new.
        let mut d = data_of(&m);
        d.insert(CA_KEY_KEY.into(), other.ca_key_pem.clone());
        let (_, change) = reconcile(&d, &cfg(), now).unwrap();
        assert!(matches!(change, Change::NewCa { .. }), "{change:?}");

        // Garbage.
        let d = BTreeMap::from([
            (CA_CERT_KEY.to_string(), "junk".to_string()),
            (TLS_CERT_KEY.to_string(), "junk".to_string()),
        ]);
        let (fixed, change) = reconcile(&d, &cfg(), now).unwrap();
        assert!(matches!(change, Change::NewCa { .. }), "{change:?}");
        verify_serving_cert(
            fixed.ca_bundle_pem.as_bytes(),
            fixed.cert_pem.as_bytes(),
            "coredump-apiserver.coredump-system.svc",
            now,
        )
        .unwrap();

        // A leaf certificate posing as the CA.
        let mut d = data_of(&m);
        d.insert(CA_CERT_KEY.into(), m.cert_pem.clone());
        d.insert(CA_KEY_KEY.into(), m.key_pem.clone());
        let (_, change) = reconcile(&d, &cfg(), now).unwrap();
        assert!(matches!(change, Change::NewCa { .. }), "{change:?}");
    }

    #[test]
    fn new_names_get_a_new_certificate() {
        let now = SystemTime::now();
        let (m, _) = reconcile(&BTreeMap::new(), &cfg(), now).unwrap();
        let mut c = cfg();
        c.extra_sans = vec![
            "coredump-apiserver.coredump-system.svc.cluster.local".into(),
            "10.0.0.7".into(),
        ];
        let (renamed, change) = reconcile(&data_of(&m), &c, now).unwrap();
        assert!(matches!(change, Change::NewCert { .. }), "{change:?}");
        for name in c.subject_alt_names() {
            verify_serving_cert(
                renamed.ca_bundle_pem.as_bytes(),
                renamed.cert_pem.as_bytes(),
                &name,
                now,
            )
            .unwrap();
        }
        let (_, change) = reconcile(&data_of(&renamed), &c, now).unwrap();
        assert_eq!(change, Change::None);
    }

    #[test]
    fn flags_default_to_the_deploy_manifests() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            s: SelfCertArgs,
        }
        let off = Cli::try_parse_from(["x"]).unwrap();
        assert!(off.s.config().unwrap().is_none());
        let on = Cli::try_parse_from([
            "x",
            "--self-signed",
            "--self-signed-extra-sans=a.example,10.0.0.1",
        ])
        .unwrap();
        let c = on.s.config().unwrap().unwrap();
        let d = SelfCertConfig::new("/run/coredump-apiserver/tls");
        assert_eq!(c.secret_name, d.secret_name);
        assert_eq!(c.service_name, d.service_name);
        assert_eq!(c.apiservice_name, d.apiservice_name);
        assert_eq!(c.dir, d.dir);
        assert_eq!(c.ca_validity, d.ca_validity);
        assert_eq!(c.cert_validity, d.cert_validity);
        assert_eq!(c.check_interval, d.check_interval);
        assert_eq!(c.extra_sans, vec!["a.example", "10.0.0.1"]);
        let bad =
            Cli::try_parse_from(["x", "--self-signed", "--self-signed-cert-validity=1s"]).unwrap();
        assert!(bad.s.config().is_err());
    }

    #[test]
    fn bad_configuration_is_refused() {
        let mut c = cfg();
        c.cert_validity = c.ca_validity + DAY;
        assert!(c.check().is_err());
        let mut c = cfg();
        c.extra_sans = vec!["not a name".into()];
        assert!(c.check().is_err());
        assert!(cfg().check().is_ok());
    }

    #[test]
    fn files_are_written_only_when_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let c = SelfCertConfig::new(dir.path().join("tls"));
        let (m, _) = reconcile(&BTreeMap::new(), &c, SystemTime::now()).unwrap();
        assert!(write_files(&c, &m).unwrap());
        assert!(!write_files(&c, &m).unwrap());
        assert_eq!(std::fs::read_to_string(c.cert_path()).unwrap(), m.cert_pem);
        assert_eq!(std::fs::read_to_string(c.key_path()).unwrap(), m.key_pem);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(c.key_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // The pair loads as a rustls signing key.
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(c.key_path()).unwrap();
        rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(key)
            .unwrap();
    }
}
