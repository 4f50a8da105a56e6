//! `make bench`'s transfer and end-to-end benchmarks, run once at their tiny size so the
//! code cannot rot. Only correctness is asserted (every transfer moved every byte, every
//! crash was Stored, the tables have their rows) — never time.

use std::process::Command;

use coredump_integration::agent::cgroup2_root;
use coredump_integration::bench::e2e::{self, E2eOptions};
use coredump_integration::bench::transfer::{self, TransferOptions};
use coredump_integration::bench::Scale;
use coredump_integration::env::TestEnv;

#[test]
fn transfer_moves_every_byte_on_every_path() {
    let env = TestEnv::shared();
    let work = tempfile::tempdir().expect("tempdir");
    let opts = TransferOptions::for_scale(Scale::Tiny);
    let r = transfer::run(env, &opts, work.path()).expect("transfer benchmark");
    assert_eq!(r.raw_bytes, opts.core_mib << 20);
    assert!(r.stored_bytes > 0 && r.stored_bytes < r.raw_bytes, "{r:?}");
    assert!(
        r.download_verified,
        "the raw download matches the spec's sha256"
    );
    for op in ["upload (zstd)", "download raw", "download compressed"] {
        for path in ["direct", "aggregator"] {
            let m = r
                .measures
                .iter()
                .find(|m| m.op == op && m.path == path)
                .unwrap_or_else(|| panic!("no {op} via {path}: {r:?}"));
            assert_eq!(m.samples.len(), opts.repeats, "{m:?}");
        }
    }
    assert!(r.measures.iter().any(|m| m.path == "cat (limit)"), "{r:?}");
    let md = r.section().markdown();
    eprintln!("{md}");
    assert!(md.contains("| download raw | aggregator |"), "{md}");
}

#[test]
fn end_to_end_stores_every_crash() {
    let root = nix::unistd::geteuid().is_root();
    let gcc = Command::new("gcc").arg("--version").output().is_ok();
    if !root || cgroup2_root().is_none() || !gcc {
        eprintln!("skipping: needs root, cgroup v2 and gcc (root {root}, gcc {gcc})");
        return;
    }
    let env = TestEnv::shared();
    let work = tempfile::tempdir().expect("tempdir");
    let opts = E2eOptions::for_scale(Scale::Tiny);
    let before = std::fs::read_to_string("/proc/sys/kernel/core_pattern").expect("read");
    let r = e2e::run(env, &opts, work.path()).expect("end-to-end benchmark");
    assert_eq!(r.stored.len(), opts.crashes);
    assert_eq!(r.reaped.len(), opts.crashes);
    for (reaped, stored) in r.reaped.iter().zip(&r.stored) {
        assert!(stored >= reaped, "Stored before reaped? {r:?}");
    }
    let md = r.section().markdown();
    eprintln!("{md}");
    assert!(md.contains("signal → Stored"), "{md}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").expect("read"),
        before,
        "the agent restored core_pattern"
    );
}
