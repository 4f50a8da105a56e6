//! Test harness: a real etcd and kube-apiserver (with the aggregation layer) on loopback,
//! the coredump.io extension server registered through an `APIService`, and the real
//! kubectl. Used by the integration tests and by `make up`.

pub mod agent;
pub mod bench;
pub mod bins;
pub mod controlplane;
pub mod curl;
pub mod demo;
pub mod endpoints;
pub mod env;
pub mod extension;
pub mod fixtures;
pub mod kubectl;
pub mod pki;
pub mod process;
pub mod realnode;
pub mod s3;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("json: {0}")]
    Json(#[source] serde_json::Error),
    #[error("setup: {0}")]
    Setup(String),
    #[error("timed out waiting for {what} (last error: {last})")]
    Timeout { what: String, last: String },
    #[error("{name} exited ({status}); log tail:\n{log}")]
    Exited {
        name: String,
        status: String,
        log: String,
    },
    #[error("kubectl {args} failed: {stderr}")]
    Kubectl { args: String, stderr: String },
}
