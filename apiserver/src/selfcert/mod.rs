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
//!
//! The parts, each with its own invariants:
//!
//! - `flags`: the command-line flags and the checked [`SelfCertConfig`] they make;
//! - `reconcile`: what the Secret and the APIService should hold, decided from what they
//!   hold now and the time, without talking to the cluster or the disk ([`reconcile()`]);
//! - `pki`: making CAs and serving certificates, and checking them as a TLS client would
//!   ([`verify_serving_cert`]);
//! - `sync`: the rounds against the cluster (the Secret, the APIService's caBundle) and
//!   the files the TLS layer serves from, in the order above ([`sync_at`]).

use std::path::PathBuf;

mod flags;
mod pki;
mod reconcile;
mod sync;

pub use flags::{SelfCertArgs, SelfCertConfig};
pub use pki::verify_serving_cert;
pub use reconcile::{reconcile, Change, Material};
pub use sync::{ensure, spawn, sync_at, SyncReport};

/// Secret keys.
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";
pub const CA_CERT_KEY: &str = "ca.crt";
pub const CA_KEY_KEY: &str = "ca.key";
pub const CA_BUNDLE_KEY: &str = "ca-bundle.crt";

/// File names written into [`SelfCertConfig::dir`].
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";

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
