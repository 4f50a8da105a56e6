//! `make bench`: runs the benchmarks of `coredump_integration::bench` against the
//! binaries beside this one (the release build under `make bench`) and a fresh local
//! control plane, prints each table as it is done, and with `--write` puts them all into
//! BENCHMARKS.md between its markers.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use coredump_integration::bench::api::{self, ApiOptions};
use coredump_integration::bench::backends::{self, BackendsOptions};
use coredump_integration::bench::capture::{self, CaptureOptions};
use coredump_integration::bench::e2e::{self, E2eOptions};
use coredump_integration::bench::insight::{self, InsightOptions};
use coredump_integration::bench::report::{self, Section};
use coredump_integration::bench::transfer::{self, TransferOptions};
use coredump_integration::bench::Scale;
use coredump_integration::controlplane;
use coredump_integration::env::{Backend, TestEnv};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Which {
    Capture,
    Insight,
    Api,
    Transfer,
    Backends,
    E2e,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ScaleArg {
    Full,
    Tiny,
}

#[derive(Parser)]
#[command(about = "Benchmarks of coredump-detector, each against a baseline of the same run")]
struct Cli {
    /// `full` for the published figures, `tiny` to check it all works.
    #[arg(long, value_enum, default_value = "full", env = "COREDUMP_BENCH_SCALE")]
    scale: ScaleArg,
    /// Run only these (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Which>,
    /// Replace the generated part of this file (e.g. BENCHMARKS.md) with the results of
    /// this run (all of it: run everything at full scale for the published figures).
    #[arg(long)]
    write: Option<PathBuf>,
    /// Core sizes (MiB) for the capture benchmark instead of the scale's.
    #[arg(long, value_delimiter = ',')]
    capture_sizes: Vec<u64>,
    /// Repeats of each capture measurement instead of the scale's.
    #[arg(long)]
    capture_repeats: Option<usize>,
    /// Scratch space (cores of gigabytes land here); default: a temporary directory.
    #[arg(long, env = "COREDUMP_BENCH_WORK")]
    work: Option<PathBuf>,
}

fn skipped(title: &str, why: &str) -> Section {
    let mut s = Section::new(title, "Not run.", &["reason"]);
    s.row(vec![why.to_string()]);
    s
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let scale = match cli.scale {
        ScaleArg::Full => Scale::Full,
        ScaleArg::Tiny => Scale::Tiny,
    };
    let wants = |w: Which| cli.only.is_empty() || cli.only.contains(&w);
    let tmp = tempfile::Builder::new()
        .prefix("cdbench")
        .tempdir()
        .context("work directory")?;
    let work = cli.work.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let mut sections = Vec::new();
    let mut done = |s: Section| {
        println!("{}", s.markdown());
        sections.push(s);
    };

    if wants(Which::Capture) {
        let s = match capture::available() {
            Ok(()) => {
                let mut opts = CaptureOptions::for_scale(scale);
                if !cli.capture_sizes.is_empty() {
                    opts.sizes_mib = cli.capture_sizes.clone();
                }
                if let Some(r) = cli.capture_repeats {
                    opts.repeats = r;
                }
                capture::run(&opts, &work.join("capture"))
                    .context("capture benchmark")?
                    .section()
            }
            Err(why) => skipped("Capture", &why),
        };
        done(s);
    }
    if wants(Which::Insight) {
        let s = match capture::available() {
            Ok(()) => insight::run(&InsightOptions::for_scale(scale), &work.join("insight"))
                .context("crash insight benchmark")?
                .section(),
            Err(why) => skipped("Crash insight", &why),
        };
        done(s);
    }
    if wants(Which::Api) || wants(Which::Transfer) || wants(Which::Backends) || wants(Which::E2e) {
        // etcd syncs its writes, as in a real cluster and as our server does.
        let cp = controlplane::Options {
            etcd_fsync: true,
            ..Default::default()
        };
        let env = TestEnv::start(cp.clone(), Default::default()).context("local control plane")?;
        if wants(Which::Api) {
            let res = api::run(&env, &ApiOptions::for_scale(scale)).context("API benchmark")?;
            done(res.section());
            done(res.sweep_section());
        }
        if wants(Which::Transfer) {
            done(
                transfer::run(
                    &env,
                    &TransferOptions::for_scale(scale),
                    &work.join("transfer"),
                )
                .context("transfer benchmark")?
                .section(),
            );
        }
        if wants(Which::Backends) {
            // The S3 backend's own control plane and server, started after the first.
            let s3 = TestEnv::start_on(Backend::S3, cp.clone(), Default::default())
                .context("control plane on the S3 backend")?;
            done(
                backends::run(
                    &[&env, &s3],
                    &BackendsOptions::for_scale(scale),
                    &work.join("backends"),
                )
                .context("storage backends benchmark")?
                .section(),
            );
        }
        if wants(Which::E2e) {
            let s = match capture::available() {
                Ok(()) => e2e::run(&env, &E2eOptions::for_scale(scale), &work.join("e2e"))
                    .context("end-to-end benchmark")?
                    .section(),
                Err(why) => skipped("End to end", &why),
            };
            done(s);
        }
    }

    if let Some(path) = &cli.write {
        let date = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let command = match (cli.scale, cli.only.is_empty()) {
            (ScaleArg::Full, true) => "make bench".to_string(),
            _ => std::env::args().collect::<Vec<_>>().join(" "),
        };
        let doc = std::fs::read_to_string(path).unwrap_or_default();
        let generated = report::render(&sections, &command, &date);
        std::fs::write(path, report::splice(&doc, &generated))
            .with_context(|| format!("write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
