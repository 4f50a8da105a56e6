//! `make bench`'s capture benchmark once at its tiny size so the code cannot rot. Only
//! correctness is asserted (every handler ran, ours stored a compressed core, the table
//! has its rows, core_pattern is restored) — never time.

use coredump_integration::bench::capture::{self, CaptureOptions, Handler};
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
