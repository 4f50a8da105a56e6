//! The coredump.io extension API server: serves `coredumps` and `coredumpquotas` to
//! kube-apiserver's aggregator and to direct clients.

#![forbid(unsafe_code)]

pub mod admission;
pub mod auth;
pub mod blobs;
pub mod config;
pub mod crashgroups;
pub mod error;
pub mod events;
pub mod groupcommit;
pub mod http;
pub mod maintenance;
pub mod metrics;
pub mod namespaces;
pub mod noderestriction;
pub mod registry;
pub mod reqinfo;
pub mod selfcert;
pub mod serve;
pub mod store;
#[cfg(test)]
pub(crate) mod testing;
pub mod tls;
pub mod uploads;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use config::Args;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("opening the store in {path}: {source}")]
    Store {
        path: std::path::PathBuf,
        source: store::StoreError,
    },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error(transparent)]
    SelfCert(#[from] selfcert::SelfCertError),
    #[error("core storage: {0}")]
    Blobs(#[from] blobs::BlobError),
    #[error("invalid flag {flag}: {message}")]
    Flag { flag: &'static str, message: String },
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The server-wide quota for namespaces without a CoredumpQuota.
fn default_quota(args: &Args) -> Result<std::collections::BTreeMap<String, u64>, StartError> {
    let mut hard = std::collections::BTreeMap::new();
    if let Some(s) = &args.default_quota_storage {
        let bytes = coredump_openapi::types::parse_bytes(s).map_err(|e| StartError::Flag {
            flag: "--default-quota-storage",
            message: e.to_string(),
        })?;
        hard.insert(coredump_openapi::types::QUOTA_STORAGE.to_string(), bytes);
    }
    if let Some(n) = args.default_quota_count {
        hard.insert(coredump_openapi::types::QUOTA_COUNT.to_string(), n);
    }
    Ok(hard)
}

/// Runs the server until `shutdown` resolves.
pub async fn run(
    args: Args,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), StartError> {
    let client = auth::kube_client(args.kubeconfig.as_deref()).await?;
    // Serving certificate: our own self-signed one (kept in a Secret, trusted by the
    // APIService), or files from elsewhere (cert-manager, your PKI).
    let (cert_file, key_file) = match args.self_cert.config()? {
        Some(cfg) => {
            let paths = selfcert::ensure(client.clone(), &cfg).await?;
            selfcert::spawn(client.clone(), cfg);
            paths
        }
        None => match (&args.tls_cert_file, &args.tls_private_key_file) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => return Err(StartError::Flag {
                flag: "--tls-cert-file",
                message:
                    "--tls-cert-file and --tls-private-key-file are required without --self-signed"
                        .into(),
            }),
        },
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = tls::ReloadingCert::load(&cert_file, &key_file, Arc::clone(&provider))?;
    cert.watch(Duration::from_secs(10));
    let tls = Arc::new(tls::server_config(cert, provider)?);

    let db_path = args.data_dir.join("db");
    let store: Arc<dyn store::MetadataStore> = Arc::new(
        store::SledStore::open(&db_path, args.revision_log_size).map_err(|source| {
            StartError::Store {
                path: db_path.clone(),
                source,
            }
        })?,
    );
    let kinds: Vec<Arc<dyn registry::Kind>> = vec![
        Arc::new(registry::kinds::CoredumpKind),
        Arc::new(registry::kinds::QuotaKind),
        Arc::new(registry::kinds::CrashGroupKind),
    ];
    let metrics = Arc::new(metrics::Metrics::new(
        Arc::clone(&store),
        kinds.iter().map(|k| k.info().plural).collect(),
    )?);
    let blobs: Arc<dyn blobs::BlobStore> = match args.object_store() {
        Some(cfg) => {
            let store = blobs::ObjectBlobs::from_config(&cfg)?;
            tracing::info!(store = %store, "cores in object storage");
            Arc::new(store)
        }
        None => Arc::new(blobs::FsBlobs::open(&args.data_dir.join("cores")).await?),
    };
    let admission = admission::QuotaAdmission {
        blobs: Arc::clone(&blobs),
        default_hard: default_quota(&args)?,
        max_rejected: args.max_rejected_per_namespace,
    };
    let uploads = Arc::new(uploads::Uploads::default());
    let event_sink = events::EventSink::spawn(client.clone());
    let chain = registry::Chain(vec![
        Arc::new(noderestriction::NodeRestriction::new(client.clone())),
        Arc::new(admission),
        Arc::new(crashgroups::CrashGroups {
            metrics: Arc::clone(&metrics),
        }),
        Arc::new(events::CoredumpEvents {
            sink: Arc::clone(&event_sink),
        }),
    ]);
    let registry = Arc::new(registry::Registry::new(
        Arc::clone(&store),
        kinds,
        Arc::new(chain),
    ));
    let duration = |flag: &'static str, value: &str| {
        coredump_openapi::types::parse_duration(value).map_err(|e| StartError::Flag {
            flag,
            message: e.to_string(),
        })
    };
    maintenance::Maintenance {
        registry: Arc::clone(&registry),
        blobs: Arc::clone(&blobs),
        uploads: Arc::clone(&uploads),
        events: event_sink,
        pending_timeout: duration("--pending-timeout", &args.pending_timeout)?,
        orphan_grace: duration("--orphan-grace-period", &args.orphan_grace_period)?,
    }
    .spawn(
        duration("--maintenance-interval", &args.maintenance_interval)?.max(Duration::from_secs(1)),
        duration("--reconcile-interval", &args.reconcile_interval)?.max(Duration::from_secs(1)),
    );
    let auth = auth::Auth::new(
        client.clone(),
        auth::AuthConfig {
            token_cache_ttl: duration("--authn-cache-ttl", &args.authn_cache_ttl)?,
            allow_cache_ttl: duration("--authz-cache-ttl", &args.authz_cache_ttl)?,
            deny_cache_ttl: duration("--authz-cache-ttl", &args.authz_cache_ttl)?,
            token_audiences: args.authentication_token_audiences.clone(),
            ..Default::default()
        },
    )
    .await?;
    let app = http::router(http::AppState {
        registry,
        metrics,
        blobs,
        auth,
        uploads,
        namespaces: namespaces::Namespaces::spawn(client),
    });
    let addr = SocketAddr::new(args.bind_address, args.secure_port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    tracing::info!(%addr, "serving");
    let limits = serve::Limits {
        handshake_timeout: duration("--tls-handshake-timeout", &args.tls_handshake_timeout)?,
        header_timeout: duration("--request-header-timeout", &args.request_header_timeout)?,
        max_connections: args.max_connections,
    };
    serve::serve(listener, tls, app, limits, shutdown).await;
    Ok(())
}
