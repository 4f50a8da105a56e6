//! `kubectl-coredump`: found by kubectl on PATH as `kubectl coredump`.

#![forbid(unsafe_code)]

use clap::Parser;

use kubectl_coredump::{cli::Cli, client, commands};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let target = client::connect(&cli.global).await?;
        commands::run(&target, cli.command).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}
