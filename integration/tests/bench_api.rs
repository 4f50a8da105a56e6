//! The API benchmark at tiny scale: correctness only, nothing about time.

use coredump_integration::bench::api::{run, ApiOptions, Target, OPERATIONS};
use coredump_integration::bench::Scale;
use coredump_integration::env::TestEnv;

#[test]
fn api_benchmark_runs_at_tiny_scale() {
    let env = TestEnv::start(Default::default(), Default::default()).expect("environment");
    let opts = ApiOptions::for_scale(Scale::Tiny);
    let res = run(&env, &opts).expect("benchmark");
    let section = res.section();
    println!("{}", section.markdown());
    println!("{}", res.sweep_section().markdown());
    for t in &res.targets {
        assert_eq!(t.sweep.len(), opts.sweep.len(), "{}", t.target.name());
        for (level, r) in &t.sweep {
            assert_eq!(
                (r.attempted, r.succeeded),
                (opts.sweep_objects, opts.sweep_objects),
                "{} at {level} in flight: {:?}",
                t.target.name(),
                r.first_error
            );
        }
    }

    // Round robin: object i is in namespace i % namespaces and label group i % 100.
    let in_ns0 = opts.objects.div_ceil(opts.namespaces);
    let in_group0 = opts.objects.div_ceil(100);
    let in_groups01 = in_group0 + opts.objects.saturating_sub(1).div_ceil(100);
    assert_eq!(res.targets.len(), Target::ALL.len());
    for t in &res.targets {
        let name = t.target.name();
        let c = &t.create;
        assert_eq!(
            (c.attempted, c.succeeded),
            (opts.objects, opts.objects),
            "{name}: creates: {:?}",
            c.first_error
        );
        if t.target == Target::Crd {
            assert_eq!(c.phases.get("(none)"), Some(&opts.objects), "{name}: {c:?}");
        } else {
            // Quota admission ran and admitted every one.
            assert_eq!(
                c.phases.get("Pending"),
                Some(&opts.objects),
                "{name}: {c:?}"
            );
        }
        for (what, l, want) in [
            ("list all", &t.list_all, opts.objects),
            ("list by label", &t.list_label, in_group0),
            ("list by label in", &t.list_label_in, in_groups01),
            ("list by !label", &t.list_label_absent, in_group0),
            ("list one namespace", &t.list_namespace, in_ns0),
        ] {
            assert_eq!(l.error, None, "{name}: {what}");
            assert_eq!((l.expected, l.returned), (want, want), "{name}: {what}");
        }
        if t.target == Target::Crd {
            assert_eq!(t.flushes, None, "{name}");
        } else {
            // Every create (and its usage record) made durable by some flush.
            let f = t.flushes.expect("flush metrics");
            assert!(
                f.flushes >= 1.0 && f.revisions >= opts.objects as f64,
                "{name}: {f:?}"
            );
        }
        let w = &t.watch;
        assert_eq!(w.error, None, "{name}: watch");
        assert_eq!(
            (w.expected, w.received),
            (opts.objects, opts.objects),
            "{name}: watch"
        );
    }
    for op in OPERATIONS {
        for t in Target::ALL {
            let rows = section
                .rows
                .iter()
                .filter(|r| {
                    r.first().map(String::as_str) == Some(op)
                        && r.get(1).map(String::as_str) == Some(t.name())
                })
                .count();
            assert_eq!(rows, 1, "a row for {op} / {}", t.name());
            assert!(section
                .rows
                .iter()
                .all(|r| r.len() == section.columns.len()));
        }
    }
    assert_eq!(section.rows.len(), OPERATIONS.len() * Target::ALL.len());
}
