//! The self-signed mode's configuration: the command-line flags ([`SelfCertArgs`]) and
//! the [`SelfCertConfig`] they turn into.
//!
//! Invariant: a [`SelfCertConfig`] that passed [`SelfCertConfig::check`] (every
//! [`SelfCertArgs::config`] did) has lifetimes of at least 2 hours, a serving certificate
//! that does not outlive the CA, and only names that are DNS names or IP addresses, so
//! issuing a certificate from it cannot fail on the configuration. The flags' defaults
//! are [`SelfCertConfig::new`]'s, which are what `deploy/` expects.

use std::path::PathBuf;
use std::time::Duration;

use rustls::pki_types::ServerName;

use super::{SelfCertError, CERT_FILE, KEY_FILE};

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
    /// How often [`spawn`](super::spawn)'s task re-checks the Secret, the expiry and the caBundle.
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

    /// Refuses lifetimes under 2 hours, a certificate outliving its CA, and names that are
    /// neither DNS names nor IP addresses.
    pub fn check(&self) -> Result<(), SelfCertError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn cfg() -> SelfCertConfig {
        SelfCertConfig::new("/nonexistent")
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
}
