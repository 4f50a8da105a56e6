//! The command line, as kubectl users expect it: kubectl's connection flags on every
//! command (kubeconfig, context, namespace, impersonation, request timeout) and `-o`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "kubectl-coredump",
    bin_name = "kubectl coredump",
    version,
    about = "The core dumps of crashed containers: list, show, crash groups, download, gdb, delete"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// kubectl's flags that say where and as whom.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The kubeconfig cluster to use.
    #[arg(long, global = true)]
    pub cluster: Option<String>,
    /// The kubeconfig user to use.
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// The namespace (default: the context's).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Act as this user (impersonation).
    #[arg(long = "as", global = true)]
    pub as_user: Option<String>,
    /// Act as this group (impersonation; repeatable).
    #[arg(long = "as-group", global = true)]
    pub as_group: Vec<String>,
    /// How long to wait for one request (e.g. 30s, 2m; 0: no limit). Downloads size their
    /// pieces to finish well inside it.
    #[arg(long, global = true)]
    pub request_timeout: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Json,
    Yaml,
    Name,
    Wide,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Core dumps, newest first, with their crash signature and cause.
    List {
        /// List across all namespaces.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Label selector, e.g. coredump.io/pod=web-0.
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// Only the crashes of one group: its name or fingerprint (v1:…).
        #[arg(long)]
        group: Option<String>,
        /// After listing, print changes as they happen.
        #[arg(short = 'w', long)]
        watch: bool,
        #[arg(short = 'o', long, value_enum)]
        output: Option<Output>,
    },
    /// Everything about one crash: trace, cause, log tail, group, how to download it.
    Show { name: String },
    /// The crash groups, most frequent first.
    Groups {
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short = 'o', long, value_enum)]
        output: Option<Output>,
    },
    /// Downloads a core in pieces (resumable, sha256-verified).
    Get {
        name: String,
        /// Where to write it (default: NAME.core, or NAME.core.zst with --compressed).
        #[arg(short = 'o', long = "output-file", alias = "file")]
        output: Option<PathBuf>,
        /// The stored zstd bytes instead of the raw core.
        #[arg(long)]
        compressed: bool,
        /// Seconds one piece should take (default: a third of --request-timeout, at most 15).
        #[arg(long, hide = true)]
        piece_seconds: Option<f64>,
    },
    /// Downloads the core into a cache and starts gdb on it.
    Gdb {
        name: String,
        /// The container image's filesystem, unpacked (gdb's sysroot; the executable is
        /// found under it).
        #[arg(long)]
        sysroot: Option<PathBuf>,
        /// Arguments for gdb, after `--`.
        #[arg(last = true)]
        gdb_args: Vec<String>,
    },
    /// Deletes core dumps: by name, by crash group, or by age.
    Delete {
        names: Vec<String>,
        /// Every core of this group (name or fingerprint).
        #[arg(long)]
        group: Option<String>,
        /// Every core older than this (e.g. 7d, 12h).
        #[arg(long)]
        older_than: Option<String>,
    },
}
