//! Command-line flags, each with an environment-variable fallback.

use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "coredump-apiserver",
    version,
    about = "The coredump.io extension API server"
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "COREDUMP_BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,

    /// HTTPS port.
    #[arg(long, env = "COREDUMP_SECURE_PORT", default_value_t = 8443)]
    pub secure_port: u16,

    /// Serving certificate (PEM, leaf first); reloaded when it changes. Required unless
    /// --self-signed.
    #[arg(
        long,
        env = "COREDUMP_TLS_CERT_FILE",
        required_unless_present = "self_signed",
        conflicts_with = "self_signed"
    )]
    pub tls_cert_file: Option<PathBuf>,

    /// Serving key (PEM); reloaded when it changes.
    #[arg(
        long,
        env = "COREDUMP_TLS_PRIVATE_KEY_FILE",
        required_unless_present = "self_signed",
        conflicts_with = "self_signed"
    )]
    pub tls_private_key_file: Option<PathBuf>,

    #[command(flatten)]
    pub self_cert: crate::selfcert::SelfCertArgs,

    /// Audiences a bearer token must be issued for (comma-separated), e.g. the audience of
    /// the node agents' projected tokens; empty: kube-apiserver's own audiences.
    #[arg(
        long,
        env = "COREDUMP_AUTHENTICATION_TOKEN_AUDIENCES",
        value_delimiter = ','
    )]
    pub authentication_token_audiences: Vec<String>,

    /// Directory for the metadata store and the stored cores.
    #[arg(
        long,
        env = "COREDUMP_DATA_DIR",
        default_value = "/var/lib/coredump-apiserver"
    )]
    pub data_dir: PathBuf,

    /// Keep the cores in object storage instead of under --data-dir/cores:
    /// `s3://BUCKET/PREFIX`, `gs://BUCKET/PREFIX` or `az://CONTAINER/PREFIX`, objects at
    /// `PREFIX/<namespace>/<name>_<uid>.zst`. Credentials come from the environment or
    /// workload identity (AWS_*, GOOGLE_*, AZURE_* variables, IRSA, EKS Pod Identity, GKE
    /// Workload Identity, Azure managed identity), never from this URL.
    #[arg(long, env = "COREDUMP_OBJECT_STORE_URL")]
    pub object_store_url: Option<String>,

    /// The bucket's region (s3:// only; else AWS_REGION or the default chain).
    #[arg(
        long,
        env = "COREDUMP_OBJECT_STORE_REGION",
        requires = "object_store_url"
    )]
    pub object_store_region: Option<String>,

    /// An S3-compatible server (or storage emulator) to use instead of the cloud's own
    /// endpoint, e.g. `https://minio.example:9000` (path-style requests).
    #[arg(
        long,
        env = "COREDUMP_OBJECT_STORE_ENDPOINT",
        requires = "object_store_url"
    )]
    pub object_store_endpoint: Option<String>,

    /// PEM bundle of CA certificates trusted for the object store, in addition to the
    /// system's (a private endpoint).
    #[arg(
        long,
        env = "COREDUMP_OBJECT_STORE_CA_FILE",
        requires = "object_store_url"
    )]
    pub object_store_ca_file: Option<PathBuf>,

    /// Plain HTTP to --object-store-endpoint; refused unless it is a loopback address
    /// (test servers).
    #[arg(
        long,
        env = "COREDUMP_OBJECT_STORE_ALLOW_HTTP",
        requires = "object_store_endpoint"
    )]
    pub object_store_allow_http: bool,

    /// How often the stored cores are reconciled with the Coredumps (besides at start).
    #[arg(long, env = "COREDUMP_RECONCILE_INTERVAL", default_value = "10m")]
    pub reconcile_interval: String,

    /// How old a stored core without any Coredump must be before reconciliation removes
    /// it.
    #[arg(long, env = "COREDUMP_ORPHAN_GRACE_PERIOD", default_value = "1h")]
    pub orphan_grace_period: String,

    /// Changes kept for watches and consistent paging; a watch or `continue` from an older
    /// revision gets 410 Expired and the client relists.
    #[arg(long, env = "COREDUMP_REVISION_LOG_SIZE", default_value_t = 100_000)]
    pub revision_log_size: usize,

    /// Limit on stored core bytes (a quantity, e.g. 10Gi) for namespaces without a
    /// CoredumpQuota; unset: no limit.
    #[arg(long, env = "COREDUMP_DEFAULT_QUOTA_STORAGE")]
    pub default_quota_storage: Option<String>,

    /// Limit on the number of stored cores for namespaces without a CoredumpQuota.
    #[arg(long, env = "COREDUMP_DEFAULT_QUOTA_COUNT")]
    pub default_quota_count: Option<u64>,

    /// Rejected (over-quota) records kept per namespace; the oldest goes first.
    #[arg(
        long,
        env = "COREDUMP_MAX_REJECTED_PER_NAMESPACE",
        default_value_t = 100
    )]
    pub max_rejected_per_namespace: usize,

    /// How long a Pending coredump waits for its upload before it becomes Failed and its
    /// reservation is freed (a Go-style duration).
    #[arg(long, env = "COREDUMP_PENDING_TIMEOUT", default_value = "15m")]
    pub pending_timeout: String,

    /// How often pending uploads and retention (CoredumpQuota maxAge) are checked.
    #[arg(long, env = "COREDUMP_MAINTENANCE_INTERVAL", default_value = "30s")]
    pub maintenance_interval: String,

    /// How long TokenReview answers are reused (a Go-style duration).
    #[arg(long, env = "COREDUMP_AUTHN_CACHE_TTL", default_value = "10s")]
    pub authn_cache_ttl: String,

    /// How long SubjectAccessReview answers (allow and deny) are reused.
    #[arg(long, env = "COREDUMP_AUTHZ_CACHE_TTL", default_value = "10s")]
    pub authz_cache_ttl: String,

    /// A client that has not finished its TLS handshake within this is disconnected.
    #[arg(long, env = "COREDUMP_TLS_HANDSHAKE_TIMEOUT", default_value = "10s")]
    pub tls_handshake_timeout: String,

    /// An HTTP/1.1 client that has not sent a request's headers within this (also while
    /// a kept-alive connection is idle) is disconnected, as kube-apiserver's 32 s.
    #[arg(long, env = "COREDUMP_REQUEST_HEADER_TIMEOUT", default_value = "32s")]
    pub request_header_timeout: String,

    /// Connections open at once; more clients wait in the listen backlog until one ends.
    #[arg(long, env = "COREDUMP_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// kubeconfig for reaching kube-apiserver; in-cluster configuration when unset.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Log format.
    #[arg(long, env = "COREDUMP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Args {
    /// The object-storage flags, if --object-store-url is set.
    pub fn object_store(&self) -> Option<crate::blobs::ObjectStoreConfig> {
        Some(crate::blobs::ObjectStoreConfig {
            url: self.object_store_url.clone()?,
            region: self.object_store_region.clone(),
            endpoint: self.object_store_endpoint.clone(),
            ca_file: self.object_store_ca_file.clone(),
            allow_http: self.object_store_allow_http,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
