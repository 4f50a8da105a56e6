//! `make bench`'s capture benchmark once at its tiny size so the code cannot rot. Only
//! correctness is asserted (every handler ran, ours stored a compressed core, the table
//! has its rows, core_pattern is restored) — never time.

use coredump_integration::bench::capture::{self, CaptureOptions, Handler};
use coredump_integration::bench::insight::{self, InsightOptions};
use coredump_integration::bench::Scale;

const CORE_PATTERN: &str = "/proc/sys/kernel/core_pattern";
const CORE_PIPE_LIMIT: &str = "/proc/sys/kernel/core_pipe_limit";

#[test]
fn capture_measures_every_handler_and_restores_core_pattern() {
    if let Err(why) = capture::available() {
        eprintln!("skipping: {why}");
        return;
    }
    let before = std::fs::read_to_string(CORE_PATTERN).expect("read core_pattern");
    let limit_before = std::fs::read_to_string(CORE_PIPE_LIMIT).expect("read core_pipe_limit");
    let work = tempfile::tempdir().expect("tempdir");
    let opts = CaptureOptions::for_scale(Scale::Tiny);
    let r = capture::run(&opts, work.path()).expect("capture benchmark");
    let size = opts.sizes_mib[0];

    for h in [
        Handler::Discard,
        Handler::Ours,
        Handler::OursNoBinaryCopy,
        Handler::RawCopy,
        Handler::RawThenGzip,
    ] {
        assert!(r.handlers.contains(&h), "{h:?} did not run: {r:?}");
    }
    for h in &r.handlers {
        let m = r
            .get(*h, size)
            .unwrap_or_else(|| panic!("no result for {h:?}: {r:?}"));
        assert_eq!(m.reaped_samples.len(), opts.repeats, "{m:?}");
        assert!(m.peak_rss_bytes > 0, "{m:?}");
        assert!(m.raw_bytes > size << 20, "{m:?}");
    }
    let ours = r.get(Handler::Ours, size).expect("ours");
    assert!(
        ours.stored_bytes > 0 && ours.stored_bytes < ours.raw_bytes,
        "{ours:?}"
    );
    // The two variants of ours differ in exactly the binary copy.
    let cached = |h: Handler| {
        r.cached_files
            .iter()
            .find(|(c, _)| *c == h)
            .map(|(_, n)| *n)
            .unwrap_or_else(|| panic!("no cache count for {h:?}: {r:?}"))
    };
    assert!(cached(Handler::Ours) > 0, "{r:?}");
    assert_eq!(cached(Handler::OursNoBinaryCopy), 0, "{r:?}");
    let copy = r.get(Handler::RawCopy, size).expect("cat > file");
    assert_eq!(copy.stored_bytes, copy.raw_bytes, "{copy:?}");
    assert!(r.pattern.len() <= 127, "{}", r.pattern);

    let sec = r.section();
    let md = sec.markdown();
    eprintln!("{md}");
    assert_eq!(sec.rows.len(), r.handlers.len(), "{md}");
    for h in &r.handlers {
        assert!(
            sec.rows
                .iter()
                .any(|row| row.get(2) == Some(&h.name().to_string())),
            "no row for {h:?}:\n{md}"
        );
    }
    assert!(md.contains("Goal,"), "{md}");

    assert_eq!(
        std::fs::read_to_string(CORE_PATTERN).expect("read core_pattern"),
        before,
        "core_pattern restored"
    );
    assert_eq!(
        std::fs::read_to_string(CORE_PIPE_LIMIT).expect("read core_pipe_limit"),
        limit_before,
        "core_pipe_limit restored"
    );
}

/// `make bench`'s crash insight benchmark at its tiny size: every program that could be
/// built crashed, was analyzed (Complete or Partial) with its crashing function found,
/// and the build-id cache did not grow after the first crash of the same program.
#[test]
fn insight_analyzes_every_program_and_caches_one_copy() {
    if let Err(why) = capture::available() {
        eprintln!("skipping: {why}");
        return;
    }
    let before = std::fs::read_to_string(CORE_PATTERN).expect("read core_pattern");
    let work = tempfile::tempdir().expect("tempdir");
    let opts = InsightOptions::for_scale(Scale::Tiny);
    let r = insight::run(&opts, work.path()).expect("insight benchmark");
    eprintln!("{}", r.section().markdown());
    // gcc is what the capture benchmark needs too: the C programs always run.
    assert!(r.programs.len() >= 4, "{r:?}");
    for p in &r.programs {
        assert_eq!(p.samples.len(), opts.crashes_per_program, "{p:?}");
        assert_eq!(p.analyzed, p.samples.len(), "{p:?}");
        assert_eq!(p.found, p.samples.len(), "{p:?}");
        assert!(p.raw_core_bytes > 0, "{p:?}");
    }
    let c = r.cache.as_ref().expect("the cache run");
    assert_eq!(c.crashes, opts.cache_crashes);
    assert!(c.after_first.0 > 0, "{c:?}");
    assert_eq!(c.after_all, c.after_first, "{c:?}");
    assert!(r.section().markdown().contains("Goal:"));
    assert_eq!(
        std::fs::read_to_string(CORE_PATTERN).expect("read core_pattern"),
        before,
        "core_pattern restored"
    );
}
