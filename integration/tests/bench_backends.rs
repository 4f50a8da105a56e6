//! `make bench`'s storage-backends benchmark, run once at its tiny size so the code cannot
//! rot. Only correctness is asserted (both backends ran, every download had the upload's
//! sha256, the table has its rows, the server's RSS was sampled) — never time or memory.

use coredump_integration::bench::backends::{self, BackendsOptions};
use coredump_integration::bench::Scale;
use coredump_integration::env::{Backend, TestEnv};

#[test]
fn both_backends_move_a_core_and_give_it_back_byte_identical() {
    // One at a time: two control planes starting together on two busy cores time out.
    let fs = TestEnv::shared_on(Backend::Filesystem);
    let s3 = TestEnv::shared_on(Backend::S3);
    let work = tempfile::tempdir().expect("tempdir");
    let opts = BackendsOptions::for_scale(Scale::Tiny);
    let r = backends::run(&[fs, s3], &opts, work.path()).expect("backends benchmark");
    assert_eq!(r.raw_bytes, opts.core_mib << 20);
    assert!(r.stored_bytes > 0 && r.stored_bytes < r.raw_bytes, "{r:?}");
    assert!(r.all_verified(), "a download differed: {:?}", r.verified);
    for b in [Backend::Filesystem, Backend::S3] {
        assert!(
            r.verified
                .iter()
                .any(|(v, n, _)| *v == b && *n == opts.repeats),
            "{b:?} not verified: {:?}",
            r.verified
        );
        for op in ["upload (zstd)", "download raw"] {
            let m = r
                .find(b, op)
                .unwrap_or_else(|| panic!("no {op} on {b:?}: {r:?}"));
            assert_eq!(m.samples.len(), opts.repeats, "{m:?}");
            assert_eq!(m.rss.len(), opts.repeats, "{m:?}");
            for g in &m.rss {
                assert!(
                    g.samples >= 1 && g.baseline_kib > 0 && g.peak_kib > 0,
                    "{m:?}"
                );
            }
        }
    }
    let md = r.section().markdown();
    eprintln!("{md}");
    for row in [
        "| upload (zstd) | filesystem |",
        "| upload (zstd) | S3 (versitygw) |",
        "| download raw | filesystem |",
        "| download raw | S3 (versitygw) |",
    ] {
        assert!(md.contains(row), "{row} missing:\n{md}");
    }
    assert!(md.contains("goal: S3 upload"), "{md}");
    assert!(md.contains("goal: server RSS growth"), "{md}");
}
