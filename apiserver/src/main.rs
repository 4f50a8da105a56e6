#![forbid(unsafe_code)]
use anyhow::Context;
use clap::Parser;
use coredump_apiserver::config::{Args, LogFormat};

/// A request decodes, validates and encodes JSON in many small allocations, from both
/// runtime threads at once; under glibc's malloc, allocation and free were the top of the
/// server's profile during creates (#17: a quarter of its samples, with
/// `malloc_consolidate` and arena locking). mimalloc's thread-local free lists take that
/// off the request path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // One crypto provider for the whole process, before anything touches rustls.
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    match args.log_format {
        LogFormat::Json => fmt.json().init(),
        LogFormat::Text => fmt.init(),
    }
    coredump_apiserver::run(args, shutdown_signal())
        .await
        .context("coredump-apiserver")
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "no SIGTERM handler; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
