//! The coredump.io extension API server: serves `coredumps` and `coredumpquotas` to
//! kube-apiserver's aggregator and to direct clients.

pub mod auth;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod registry;
pub mod serve;
pub mod store;
pub mod tls;

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
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Runs the server until `shutdown` resolves.
pub async fn run(
    args: Args,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), StartError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = tls::ReloadingCert::load(
        &args.tls_cert_file,
        &args.tls_private_key_file,
        Arc::clone(&provider),
    )?;
    cert.watch(Duration::from_secs(10));
    let tls = Arc::new(tls::server_config(cert, provider)?);

    let db_path = args.data_dir.join("db");
    let store = Arc::new(
        store::Store::open(&db_path, args.revision_log_size).map_err(|source| {
            StartError::Store {
                path: db_path.clone(),
                source,
            }
        })?,
    );
    let kinds: Vec<Arc<dyn registry::Kind>> = vec![
        Arc::new(registry::kinds::CoredumpKind),
        Arc::new(registry::kinds::QuotaKind),
    ];
    let metrics = Arc::new(metrics::Metrics::new(
        Arc::clone(&store),
        kinds.iter().map(|k| k.info().plural).collect(),
    )?);
    let registry = Arc::new(registry::Registry::new(
        Arc::clone(&store),
        kinds,
        Arc::new(registry::NoAdmission),
    ));
    let app = http::router(http::AppState { registry, metrics });
    let addr = SocketAddr::new(args.bind_address, args.secure_port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    tracing::info!(%addr, "serving");
    serve::serve(listener, tls, app, shutdown).await;
    Ok(())
}
