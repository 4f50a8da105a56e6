//! The report: the main table (every operation against the CRD) and the sweep of
//! creates in flight.

use super::*;

impl ApiResults {
    pub fn target(&self, t: Target) -> Option<&TargetResults> {
        self.targets.iter().find(|r| r.target == t)
    }

    /// Create throughput by creates in flight, each target against the CRD at the same
    /// level.
    pub fn sweep_section(&self) -> Section {
        let o = &self.options;
        let mut sec = Section::new(
            "API: create throughput by creates in flight",
            &format!(
                "{} fresh Coredumps per level and target, created with 1 to {} requests in                  flight (after the main run, into the same namespaces; quota admission on                  ours). objects/s over the whole level; ratio = ours ÷ the CRD's objects/s                  at the same level (above 1.00× is faster).",
                o.sweep_objects,
                o.sweep.iter().max().copied().unwrap_or(1)
            ),
            &["in flight", "target", "objects/s", "p50", "p99", "vs CRD"],
        );
        let crd = self.target(Target::Crd);
        for (i, level) in o.sweep.iter().enumerate() {
            let base = crd.and_then(|c| c.sweep.get(i)).map(|(_, r)| r.per_s);
            for t in &self.targets {
                let Some((_, r)) = t.sweep.get(i) else {
                    continue;
                };
                let vs = match (t.target, base) {
                    (Target::Crd, _) => "baseline".to_string(),
                    (_, Some(b)) if b > 0.0 => ratio(r.per_s / b),
                    _ => "–".to_string(),
                };
                sec.row(vec![
                    level.to_string(),
                    t.target.name().to_string(),
                    if r.succeeded == r.attempted {
                        format!("{:.0}", r.per_s)
                    } else {
                        format!(
                            "{:.0} ({} of {} failed)",
                            r.per_s,
                            r.attempted - r.succeeded,
                            r.attempted
                        )
                    },
                    ms(r.p50),
                    ms(r.p99),
                    vs,
                ]);
            }
        }
        sec
    }

    pub fn section(&self) -> Section {
        let o = &self.options;
        let mut sec = Section::new(
            "API: creates, lists and a watch",
            &format!(
                "{} Coredumps like the node agent's, created {} at a time into {} namespaces \
                 (for ours each has a CoredumpQuota, so quota admission runs on every create \
                 and admits it), then listed: all, by a label matching 1%, by two selectors without an equality \
                 (`in` matching 2%, `!key` matching 1%), one namespace; a \
                 cluster-wide watch runs from before the first create. Baseline: the same \
                 objects as a CustomResourceDefinition in the same kube-apiserver.",
                o.objects, o.concurrency, o.namespaces
            ),
            &[
                "operation",
                "target",
                "objects",
                "time",
                "objects/s",
                "p50",
                "p99",
                "time vs CRD",
                "p50 vs CRD",
            ],
        );
        let crd = self.target(Target::Crd);
        for op in OPERATIONS {
            let base = crd.map(|c| figures(c, op));
            for t in &self.targets {
                let f = figures(t, op);
                let vs = |ours: Duration, crd: Option<Duration>| match (t.target, crd) {
                    (Target::Crd, _) => "baseline".to_string(),
                    (_, Some(c)) => ratio(ours.as_secs_f64() / c.as_secs_f64()),
                    (_, None) => "–".to_string(),
                };
                sec.row(vec![
                    op.to_string(),
                    t.target.name().to_string(),
                    if f.count == f.expected {
                        f.count.to_string()
                    } else {
                        format!("{} of {}", f.count, f.expected)
                    },
                    secs(f.time),
                    format!("{:.0}", f.per_s),
                    ms(f.p50),
                    ms(f.p99),
                    vs(f.time, base.as_ref().map(|b| b.time)),
                    vs(f.p50, base.as_ref().map(|b| b.p50)),
                ]);
            }
        }
        sec.note(
            "time vs CRD, p50 vs CRD: this target's figure ÷ the CRD's for the same \
             operation; below 1.00× is faster than the CRD.",
        );
        sec.note(format!(
            "create: time for all, p50/p99 per request. Lists: median of {} whole responses \
             (no limit, so unchunked), timed to the last byte; p50/p99 over those repeats. \
             Watch: time from the first create sent to the last ADDED event received; \
             p50/p99 delivery lag, an event's arrival − its create's acknowledgement \
             (0 if it came first).",
            o.list_repeats.max(1)
        ));
        let sizes: Vec<String> = self
            .targets
            .iter()
            .map(|t| {
                let l = &t.list_all;
                format!(
                    "{} {} ({} bytes per object)",
                    t.target.name(),
                    crate::bench::report::mib(l.bytes as u64),
                    l.bytes.checked_div(l.returned).unwrap_or(0)
                )
            })
            .collect();
        sec.note(format!("List-all response: {}.", sizes.join(", ")));
        let warm: Vec<String> = self
            .targets
            .iter()
            .map(|t| format!("{} {}", t.target.name(), ms(t.warmup)))
            .collect();
        sec.note(format!(
            "Not counted: one create per target before the measurement, to pay first-use \
             costs (a new CRD's storage, connections, caches): {}.",
            warm.join(", ")
        ));
        let flushes: Vec<String> = self
            .targets
            .iter()
            .filter_map(|t| {
                let f = t.flushes?;
                (f.flushes > 0.0).then(|| {
                    format!(
                        "{} {:.0} flushes for {:.0} writes ({:.1} per flush, {:.1} ms per flush)",
                        t.target.name(),
                        f.flushes,
                        f.revisions,
                        f.revisions / f.flushes,
                        f.seconds * 1000.0 / f.flushes
                    )
                })
            })
            .collect();
        if !flushes.is_empty() {
            sec.note(format!(
                "Group commit during the creates (our store's flush metrics): {}.",
                flushes.join("; ")
            ));
        }
        sec.note(self.crd_schema.clone());
        sec.note(
            "Both sides sync every write to disk before answering under `make bench` (its \
             etcd runs without --unsafe-no-fsync); the tests' harness skips etcd's fsync, \
             which makes the baseline's writes cheaper there. A real cluster's etcd also \
             replicates each write, which neither side pays here.",
        );
        sec.note(
            "Each target writes into its own namespaces; its objects are deleted before the \
             next target starts, so every list returns only its own.",
        );
        for t in &self.targets {
            let problems = [
                t.create.first_error.as_ref().map(|e| {
                    format!(
                        "{} of {} creates failed, e.g. {e}",
                        t.create.attempted - t.create.succeeded,
                        t.create.attempted
                    )
                }),
                t.list_all.error.clone(),
                t.list_label.error.clone(),
                t.list_label_in.error.clone(),
                t.list_label_absent.error.clone(),
                t.list_namespace.error.clone(),
                t.watch.error.clone(),
            ];
            for p in problems.into_iter().flatten() {
                sec.note(format!("{}: {p}", t.target.name()));
            }
            if t.target.is_ours() {
                let not_pending: usize = t
                    .create
                    .phases
                    .iter()
                    .filter(|(p, _)| p.as_str() != "Pending")
                    .map(|(_, n)| n)
                    .sum();
                if not_pending > 0 {
                    sec.note(format!(
                        "{}: {not_pending} creates were not admitted as Pending: {:?}",
                        t.target.name(),
                        t.create.phases
                    ));
                }
            }
        }
        sec
    }
}

/// One row's figures.
pub(super) struct Figures {
    count: usize,
    expected: usize,
    time: Duration,
    per_s: f64,
    p50: Duration,
    p99: Duration,
}

pub(super) fn figures(t: &TargetResults, op: &str) -> Figures {
    let list = |l: &ListResult| Figures {
        count: l.returned,
        expected: l.expected,
        time: l.median,
        per_s: l.per_s,
        p50: l.median,
        p99: l.slowest,
    };
    match op {
        OP_CREATE => Figures {
            count: t.create.succeeded,
            expected: t.create.attempted,
            time: t.create.total,
            per_s: t.create.per_s,
            p50: t.create.p50,
            p99: t.create.p99,
        },
        OP_LIST_ALL => list(&t.list_all),
        OP_LIST_LABEL => list(&t.list_label),
        OP_LIST_LABEL_IN => list(&t.list_label_in),
        OP_LIST_LABEL_ABSENT => list(&t.list_label_absent),
        OP_LIST_NAMESPACE => list(&t.list_namespace),
        _ => Figures {
            count: t.watch.received,
            expected: t.watch.expected,
            time: t.watch.to_last_event,
            per_s: t.watch.per_s,
            p50: t.watch.lag_p50,
            p99: t.watch.lag_p99,
        },
    }
}
