//! The behaviour every [`MetadataStore`] must have (the invariants of the module docs), as
//! one suite each backend runs, like k8s.io/apiserver's `pkg/storage/testing`: a backend's
//! tests call [`metadata_store_conformance!`] with a constructor, which opens (or reopens,
//! for the restart cases) a store in a directory keeping a given number of log records.
//!
//! Backend-specific behaviour (sled's group commit batching, a change held between commit
//! and flush) is tested next to the backend.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::{keep_all, EventType, Key, MetadataStore, Scope, StoreError, Tx};

/// Opens the backend's store in `dir`, keeping at most `log_keep` log records; opening
/// the same directory again is a restart.
pub type Open = fn(&Path, usize) -> Arc<dyn MetadataStore>;

/// Expands to one `#[tokio::test]` per conformance case, each running it on `$open`.
macro_rules! metadata_store_conformance {
    ($open:expr) => {
        $crate::store::conformance::metadata_store_conformance!(@cases $open;
            revisions_are_monotonic_and_lists_at_old_revisions_are_exact,
            compacted_revisions_are_refused,
            prefiltered_lists_keep_every_object_that_can_match,
            deletions_carry_their_own_revision_and_the_object_before,
            concurrent_writes_all_finish,
            events_are_published_in_order_and_only_once_durable,
            writes_are_answered_only_once_durable,
            read_modify_write_transactions_are_serializable,
            admission_against_a_scope_is_exact_under_concurrency,
            a_failed_body_writes_nothing,
            a_transaction_without_changes_takes_no_revision,
            state_and_revisions_survive_a_restart,
            counts_objects_by_resource
        );
    };
    (@cases $open:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                $crate::store::conformance::$case($open).await;
            }
        )*
    };
}
pub(crate) use metadata_store_conformance;

fn obj(name: &str, v: i64) -> Value {
    json!({"metadata": {"name": name, "namespace": "ns"}, "spec": {"v": v}})
}

fn key(name: &str) -> Key {
    Key::new("things", "ns", name)
}

fn scope(ns: Option<&str>) -> Scope {
    Scope {
        resource: "things".into(),
        namespace: ns.map(str::to_string),
    }
}

/// One write of one object (committed, durable and published).
async fn put(store: &dyn MetadataStore, key: Key, value: Value) -> u64 {
    let ((), events) = store
        .transact(|tx: &mut Tx<'_>| -> Result<(), StoreError> {
            tx.put(key.clone(), value.clone());
            Ok(())
        })
        .await
        .expect("write");
    events.last().map_or(0, |e| e.rv)
}

async fn delete(store: &dyn MetadataStore, key: Key) {
    store
        .transact(|tx: &mut Tx<'_>| -> Result<(), StoreError> {
            tx.delete(key.clone());
            Ok(())
        })
        .await
        .expect("delete");
}

fn names(map: &BTreeMap<Key, Value>) -> Vec<(String, i64)> {
    map.iter()
        .map(|(k, v)| (k.name.clone(), v["spec"]["v"].as_i64().unwrap_or(-1)))
        .collect()
}

fn list(store: &dyn MetadataStore, rv: Option<u64>) -> (u64, BTreeMap<Key, Value>) {
    store.list(&scope(Some("ns")), rv, &keep_all).expect("list")
}

/// `writers` tasks, each putting `each` objects one transaction at a time.
fn spawn_writers(
    store: &Arc<dyn MetadataStore>,
    writers: usize,
    each: i64,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..writers)
        .map(|w| {
            let store = Arc::clone(store);
            tokio::spawn(async move {
                for i in 0..each {
                    let name = format!("w{w}-{i}");
                    put(&*store, key(&name), obj(&name, i)).await;
                }
            })
        })
        .collect()
}

pub async fn revisions_are_monotonic_and_lists_at_old_revisions_are_exact(open: Open) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 100);
    let store = &*store;
    assert_eq!(put(store, key("a"), obj("a", 1)).await, 1);
    assert_eq!(put(store, key("b"), obj("b", 1)).await, 2);
    put(store, key("a"), obj("a", 2)).await;
    let ((), events) = store
        .transact(|tx: &mut Tx<'_>| -> Result<(), StoreError> {
            tx.delete(key("b"));
            tx.put(key("c"), obj("c", 1));
            Ok(())
        })
        .await
        .expect("delete b, add c");
    // One revision per change, consecutive within the transaction.
    assert_eq!(events.iter().map(|e| e.rv).collect::<Vec<_>>(), [4, 5]);
    assert_eq!(store.current_rv().expect("rv"), 5);
    assert_eq!(store.durable_rv(), 5);

    let (rv, now) = list(store, None);
    assert_eq!(rv, 5);
    assert_eq!(names(&now), [("a".into(), 2), ("c".into(), 1)]);
    assert_eq!(now[&key("a")]["metadata"]["resourceVersion"], "3");
    let (rv, then) = list(store, Some(2));
    assert_eq!(rv, 2);
    assert_eq!(names(&then), [("a".into(), 1), ("b".into(), 1)]);
    assert_eq!(then[&key("a")]["metadata"]["resourceVersion"], "1");
    // Another namespace is another scope; no namespace is all of them.
    put(store, Key::new("things", "other", "d"), obj("d", 1)).await;
    assert_eq!(list(store, None).1.len(), 2);
    let (_, all) = store.list(&scope(None), None, &keep_all).expect("all");
    assert_eq!(all.len(), 3);

    let events = store.events_after(2).expect("events");
    let kinds: Vec<_> = events
        .iter()
        .map(|e| (e.rv, e.kind, e.key.name.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (3, EventType::Modified, "a"),
            (4, EventType::Deleted, "b"),
            (5, EventType::Added, "c"),
            (6, EventType::Added, "d"),
        ]
    );
    assert_eq!(
        store
            .get(&key("a"))
            .expect("get")
            .map(|o| o["spec"]["v"].clone()),
        Some(json!(2))
    );
    assert_eq!(store.get(&key("b")).expect("get"), None);
}

/// Older than the log reaches: refused, never answered with a wrong state.
pub async fn compacted_revisions_are_refused(open: Open) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 2);
    let store = &*store;
    for i in 0..10 {
        put(store, key("a"), obj("a", i)).await;
    }
    assert!(matches!(
        store.list(&scope(Some("ns")), Some(1), &keep_all),
        Err(StoreError::Compacted { .. })
    ));
    assert!(matches!(
        store.events_after(0),
        Err(StoreError::Compacted { .. })
    ));
    // The newest revisions are still there.
    assert_eq!(store.events_after(9).expect("recent").len(), 1);
    let (_, at) = list(store, Some(9));
    assert_eq!(names(&at), [("a".into(), 8)]);
}

/// The prefiltered list is the plain list filtered, now and at an older revision (where
/// an object that lost its label since must come back).
pub async fn prefiltered_lists_keep_every_object_that_can_match(open: Open) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 100);
    let store = &*store;
    let labelled = |name: &str, group: &str| json!({"metadata": {"name": name, "namespace": "ns", "labels": {"g": group}}});
    for (name, group) in [("a", "x"), ("b", "y"), ("c", "x")] {
        put(store, key(name), labelled(name, group)).await;
    }
    let before = store.current_rv().expect("rv");
    // "c" leaves group x after `before`.
    put(store, key("c"), labelled("c", "z")).await;
    let frag = |bytes: &[u8]| memchr::memmem::find(bytes, br#""g":"x""#).is_some();
    let in_x = |m: BTreeMap<Key, Value>| {
        m.into_iter()
            .filter(|(_, v)| v["metadata"]["labels"]["g"] == "x")
            .map(|(k, _)| k.name)
            .collect::<Vec<_>>()
    };
    let (_, now) = store.list(&scope(Some("ns")), None, &frag).expect("now");
    assert_eq!(in_x(now), ["a"]);
    let (_, then) = store
        .list(&scope(Some("ns")), Some(before), &frag)
        .expect("then");
    assert_eq!(in_x(then), ["a", "c"]);
}

pub async fn deletions_carry_their_own_revision_and_the_object_before(open: Open) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 100);
    let store = &*store;
    put(store, key("a"), obj("a", 1)).await;
    put(store, key("a"), obj("a", 2)).await;
    let mut rx = store.subscribe();
    delete(store, key("a")).await;
    let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event")
        .expect("received");
    assert_eq!((ev.rv, ev.kind), (3, EventType::Deleted));
    assert_eq!(ev.object["metadata"]["resourceVersion"], "3");
    assert_eq!(ev.object["spec"]["v"], 2);
    let prev = ev.prev.as_ref().expect("the object before");
    assert_eq!(prev["metadata"]["resourceVersion"], "2");
    // The log replays the same.
    let logged = store.events_after(2).expect("log");
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0].object["metadata"]["resourceVersion"], "3");
    assert!(logged[0].prev.is_some());
    // Added has no prev; Modified has the old object.
    let log = store.events_after(0).expect("log");
    assert!(log[0].prev.is_none());
    assert_eq!(
        log[1].prev.as_ref().map(|p| p["spec"]["v"].clone()),
        Some(json!(1))
    );
}

/// Many concurrent writers (with the backend's flushes or round trips) all finish. On
/// sled, a flush overlapping a transaction once deadlocked the server under 10,000
/// concurrent creates.
pub async fn concurrent_writes_all_finish(open: Open) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 500);
    let writers = spawn_writers(&store, 16, 100);
    // A watchdog thread: deadlocked workers would also stall tokio's timers.
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&finished);
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(120));
        if !flag.load(std::sync::atomic::Ordering::SeqCst) {
            eprintln!("16 writers × 100 writes did not finish in 120 s: a deadlock");
            std::process::exit(101);
        }
    });
    let done = futures::future::join_all(writers).await;
    finished.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(done.iter().all(Result::is_ok));
    assert_eq!(store.count("things").expect("count"), 16 * 100);
    assert_eq!(store.current_rv().expect("rv"), 16 * 100);
}

/// Watchers get every change exactly once, in revision order, and only once durable; what
/// a restart recovers is durable.
pub async fn events_are_published_in_order_and_only_once_durable(open: Open) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 10_000);
    let mut rx = store.subscribe();
    let writers = spawn_writers(&store, 8, 50);
    let mut seen = Vec::new();
    while seen.len() < 8 * 50 {
        let ev = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("events keep coming")
            .expect("no lag at this size");
        assert!(
            ev.rv <= store.durable_rv(),
            "revision {} published before it was durable (durable: {})",
            ev.rv,
            store.durable_rv()
        );
        seen.push(ev.rv);
    }
    for w in writers {
        w.await.expect("writer");
    }
    assert_eq!(seen, (1..=8 * 50).collect::<Vec<u64>>());
    assert_eq!(store.durable_rv(), 8 * 50);
    // The log replays the same, and nothing past what is durable.
    assert_eq!(store.events_after(390).expect("log").len(), 10);
    assert!(store.events_after(400).expect("log").is_empty());
    drop(rx);
    drop(store);
    let reopened = open(dir.path(), 10_000);
    assert_eq!(
        reopened.durable_rv(),
        8 * 50,
        "what was recovered is durable"
    );
}

/// A write is answered only once durable, whatever number of writers share the wait.
pub async fn writes_are_answered_only_once_durable(open: Open) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 100_000);
    let writers: Vec<_> = (0..32)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..20 {
                    let rv = put(&*store, key(&format!("w{w}-{i}")), obj("x", i)).await;
                    assert!(store.durable_rv() >= rv, "answered before durable");
                    // Reads without a revision see it from now on.
                    let name = format!("w{w}-{i}");
                    assert!(store.get(&key(&name)).expect("get").is_some());
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    assert_eq!(store.durable_rv(), 640);
}

/// Read-modify-write of one object from many tasks loses no update (a backend that
/// detects conflicts runs the losing body again).
pub async fn read_modify_write_transactions_are_serializable(open: Open) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 10_000);
    put(&*store, key("counter"), obj("counter", 0)).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for _ in 0..25 {
                    store
                        .transact(|tx: &mut Tx<'_>| -> Result<(), StoreError> {
                            let mut c = tx
                                .get(&key("counter"))?
                                .unwrap_or_else(|| obj("counter", 0));
                            let n = c["spec"]["v"].as_i64().unwrap_or(0);
                            c["spec"]["v"] = json!(n + 1);
                            tx.put(key("counter"), c);
                            Ok(())
                        })
                        .await
                        .expect("increment");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let c = store.get(&key("counter")).expect("get").expect("counter");
    assert_eq!(c["spec"]["v"], 200);
    assert_eq!(c["metadata"]["resourceVersion"], "201");
}

/// Quota admission's shape: admit into a scope only while it holds fewer than a limit.
/// Concurrent creates and deletes never take it past the limit, and each outcome is the
/// body's own from its last run.
pub async fn admission_against_a_scope_is_exact_under_concurrency(open: Open) {
    const LIMIT: usize = 5;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 10_000);
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut admitted = 0usize;
                for i in 0..20 {
                    let name = format!("w{w}-{i}");
                    let (ok, _) = store
                        .transact(|tx: &mut Tx<'_>| -> Result<bool, StoreError> {
                            let n = tx.list(&scope(Some("ns")))?.len();
                            if n >= LIMIT {
                                return Ok(false);
                            }
                            tx.put(key(&name), obj(&name, i));
                            let after = tx.list(&scope(Some("ns")))?.len();
                            assert_eq!(after, n + 1, "a transaction sees its own writes");
                            Ok(true)
                        })
                        .await
                        .expect("admit");
                    if ok {
                        admitted += 1;
                        let (_, now) = store
                            .list(&scope(Some("ns")), None, &keep_all)
                            .expect("list");
                        assert!(now.len() <= LIMIT, "{} objects, limit {LIMIT}", now.len());
                        if i % 2 == 0 {
                            delete(&*store, key(&name)).await;
                        }
                    }
                }
                admitted
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await.expect("task");
    }
    let (_, left) = store
        .list(&scope(Some("ns")), None, &keep_all)
        .expect("list");
    assert!(left.len() <= LIMIT, "{} kept, limit {LIMIT}", left.len());
    assert!(admitted >= left.len());
    assert_eq!(store.count("things").expect("count"), left.len());
}

/// An error from the body ends the transaction with nothing written, and the caller gets
/// that error.
pub async fn a_failed_body_writes_nothing(open: Open) {
    #[derive(Debug)]
    enum Failure {
        Refused,
        Store,
    }
    impl From<StoreError> for Failure {
        fn from(_: StoreError) -> Self {
            Failure::Store
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 100);
    put(&*store, key("a"), obj("a", 1)).await;
    let r = store
        .transact(|tx: &mut Tx<'_>| -> Result<(), Failure> {
            tx.put(key("a"), obj("a", 2));
            tx.put(key("b"), obj("b", 1));
            Err(Failure::Refused)
        })
        .await;
    assert!(matches!(r, Err(Failure::Refused)), "{r:?}");
    assert_eq!(store.current_rv().expect("rv"), 1);
    assert_eq!(names(&list(&*store, None).1), [("a".into(), 1)]);
    assert_eq!(store.events_after(0).expect("log").len(), 1);
}

/// Nothing to change (a discarded dry run, a deletion of nothing): no revision, no event.
pub async fn a_transaction_without_changes_takes_no_revision(open: Open) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 100);
    put(&*store, key("a"), obj("a", 1)).await;
    let (seen, events) = store
        .transact(|tx: &mut Tx<'_>| -> Result<Option<Value>, StoreError> {
            tx.put(key("b"), obj("b", 1));
            let seen = tx.get(&key("b"))?;
            tx.discard();
            tx.delete(key("missing"));
            Ok(seen)
        })
        .await
        .expect("no-op");
    assert!(seen.is_some(), "a transaction reads its own writes");
    assert!(events.is_empty());
    assert_eq!(store.current_rv().expect("rv"), 1);
    assert_eq!(store.get(&key("b")).expect("get"), None);
}

pub async fn state_and_revisions_survive_a_restart(open: Open) {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path(), 100);
        put(&*store, key("a"), obj("a", 1)).await;
        put(&*store, key("b"), obj("b", 1)).await;
        delete(&*store, key("b")).await;
        put(&*store, key("a"), obj("a", 2)).await;
    }
    let store = open(dir.path(), 100);
    assert_eq!(store.current_rv().expect("rv"), 4);
    assert_eq!(store.durable_rv(), 4);
    assert_eq!(names(&list(&*store, None).1), [("a".into(), 2)]);
    // History too: the log survives.
    assert_eq!(
        names(&list(&*store, Some(2)).1),
        [("a".into(), 1), ("b".into(), 1)]
    );
    assert_eq!(store.events_after(0).expect("log").len(), 4);
    // And the next write continues the revisions.
    assert_eq!(put(&*store, key("c"), obj("c", 1)).await, 5);
}

pub async fn counts_objects_by_resource(open: Open) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 100);
    put(&*store, key("a"), obj("a", 1)).await;
    put(&*store, Key::new("things", "other", "b"), obj("b", 1)).await;
    put(&*store, Key::new("thingsx", "ns", "c"), obj("c", 1)).await;
    assert_eq!(store.count("things").expect("count"), 2);
    assert_eq!(store.count("thingsx").expect("count"), 1);
    assert_eq!(store.count("none").expect("count"), 0);
}
