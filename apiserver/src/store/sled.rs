//! The [`MetadataStore`] on sled: objects, a revision log, and the resourceVersion
//! counter, all changed together in one sled transaction per write.
//!
//! - `objects`: `<resource>\0<namespace>\0<name>` → object JSON. A namespace lists by prefix.
//! - `log`: revision (big-endian u64) → `LogRecord`: the change and the object before it.
//!   Watches replay it, and any list at an older revision is the current state with the
//!   newer changes undone, which gives consistent `continue` pages and `resourceVersion=N`
//!   lists for as long as the log reaches back (older: 410 Expired).
//! - `meta`: `rv` (last revision) and `compacted` (revisions up to it are gone from the log).
//!
//! Writers are serialized by one lock (a write is a short in-memory transaction), so
//! revisions are assigned in commit order; each write is on disk before it is
//! acknowledged (group commit: one flusher covers every write committed before its flush
//! began, see [`crate::groupcommit`]), and its event is published to watchers (live or
//! replaying the log) only once it is on disk, in revision order: a watcher never sees a
//! change that a crash could take back.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use tokio::sync::broadcast;

use super::{
    keep_all, Event, EventType, Key, MetadataStore, Prefilter, Scope, StoreError, Tx, TxBody,
    TxRead, TxWrites,
};
use crate::groupcommit::{Durability, Flusher};

fn encode_key(key: &Key) -> Vec<u8> {
    format!("{}\0{}\0{}", key.resource, key.namespace, key.name).into_bytes()
}

fn decode_key(bytes: &[u8]) -> Option<Key> {
    let s = std::str::from_utf8(bytes).ok()?;
    let mut parts = s.splitn(3, '\0');
    Some(Key {
        resource: parts.next()?.to_string(),
        namespace: parts.next()?.to_string(),
        name: parts.next()?.to_string(),
    })
}

fn scope_prefix(scope: &Scope) -> Vec<u8> {
    match &scope.namespace {
        Some(ns) => format!("{}\0{}\0", scope.resource, ns).into_bytes(),
        None => format!("{}\0", scope.resource).into_bytes(),
    }
}

#[derive(Deserialize)]
struct LogRecord {
    t: EventType,
    k: Key,
    o: Value,
    #[serde(default)]
    p: Option<Value>,
}

/// A [`LogRecord`] as written: borrowed from the event, so a commit serializes the
/// objects without copying them first.
#[derive(Serialize)]
struct LogRecordRef<'a> {
    t: EventType,
    k: &'a Key,
    o: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    p: Option<&'a Value>,
}

/// A transaction's reads: the committed state, under the write lock.
impl TxRead for SledStore {
    fn get(&self, key: &Key) -> Result<Option<Value>, StoreError> {
        self.get_current(key)
    }

    fn list(&self, scope: &Scope) -> Result<Vec<(Key, Value)>, StoreError> {
        self.list_current(scope)
    }
}

pub struct SledStore {
    db: sled::Db,
    objects: sled::Tree,
    log: sled::Tree,
    meta: sled::Tree,
    /// Serializes writers. Async, so that writers queued behind it (up to one per request
    /// in flight) wait without holding a runtime thread.
    write_lock: tokio::sync::Mutex<()>,
    /// Held shared by every flush and exclusively by every sled transaction: sled 0.34
    /// deadlocks when the two overlap (a flush keeps its concurrency-control read lock
    /// while it waits for the log to be stable; a transaction queued for the write lock
    /// then blocks the log writers' read locks).
    flush_gate: Arc<RwLock<()>>,
    /// The durable revision and the events waiting for it.
    durability: Arc<Durability>,
    /// Makes committed writes durable, many per flush.
    _flusher: Flusher,
    /// How many log records to keep; older revisions answer 410 Expired.
    log_keep: usize,
    /// Records in the log (sled's `len` walks the tree, so it is counted here).
    log_len: AtomicUsize,
}

const META_RV: &[u8] = b"rv";
const META_COMPACTED: &[u8] = b"compacted";

impl SledStore {
    /// Opens (or creates) the store, keeping at most `log_keep` log records.
    pub fn open(path: &Path, log_keep: usize) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            // Every write is flushed by `transact` (behind the gate); sled's own periodic
            // flusher would be a flush outside it.
            .flush_every_ms(None)
            .open()?;
        let (events, _) = broadcast::channel(4096);
        let log = db.open_tree("log")?;
        let log_len = log.len();
        let meta = db.open_tree("meta")?;
        // What sled recovered is on disk.
        let durable_rv = read_u64(&meta, META_RV)?;
        let flush_gate = Arc::new(RwLock::new(()));
        let durability = Durability::new(durable_rv, events)?;
        let flusher = Flusher::start(db.clone(), Arc::clone(&flush_gate), Arc::clone(&durability))?;
        Ok(Self {
            objects: db.open_tree("objects")?,
            meta,
            log,
            db,
            write_lock: tokio::sync::Mutex::new(()),
            flush_gate,
            durability,
            _flusher: flusher,
            log_keep: log_keep.max(1),
            log_len: AtomicUsize::new(log_len),
        })
    }

    /// The newest revision.
    pub fn current_rv(&self) -> Result<u64, StoreError> {
        read_u64(&self.meta, META_RV)
    }

    /// Revisions up to this one are on disk; watchers see changes up to here.
    pub fn durable_rv(&self) -> u64 {
        self.durability.durable_rv()
    }

    /// Flushes done so far: fewer than writes when group commit batches them.
    pub fn flushes(&self) -> u64 {
        self.durability.flushes()
    }

    /// Revisions at or below this are no longer in the log.
    pub fn compacted_rv(&self) -> Result<u64, StoreError> {
        read_u64(&self.meta, META_COMPACTED)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.durability.subscribe()
    }

    /// The object as of the last durable revision: a change still being flushed is not
    /// shown (it is undone from the log, like a list at an older revision).
    pub fn get(&self, key: &Key) -> Result<Option<Value>, StoreError> {
        let durable = self.durable_rv();
        let current = self.get_current(key)?;
        // The oldest undurable change to this key holds what it was before.
        let oldest = self
            .log_range(durable, u64::MAX)?
            .into_iter()
            .find(|ev| ev.key == *key);
        Ok(match oldest {
            Some(ev) => ev.prev.map(|p| (*p).clone()),
            None => current,
        })
    }

    /// The object as committed, durable or not (for writers, under the write lock).
    fn get_current(&self, key: &Key) -> Result<Option<Value>, StoreError> {
        self.objects
            .get(encode_key(key))?
            .map(|v| decode(&v, key))
            .transpose()
    }

    fn list_current(&self, scope: &Scope) -> Result<Vec<(Key, Value)>, StoreError> {
        self.list_current_containing(scope, &keep_all)
    }

    /// Like `list_current`, skipping (without decoding) objects whose stored bytes
    /// `prefilter` refuses.
    fn list_current_containing(
        &self,
        scope: &Scope,
        prefilter: &Prefilter<'_>,
    ) -> Result<Vec<(Key, Value)>, StoreError> {
        let mut out = Vec::new();
        for item in self.objects.scan_prefix(scope_prefix(scope)) {
            let (k, v) = item?;
            if !prefilter(&v) {
                continue;
            }
            if let Some(key) = decode_key(&k) {
                let value = decode(&v, &key)?;
                out.push((key, value));
            }
        }
        Ok(out)
    }

    /// The objects in `scope` as they were at revision `rv` (`None`: the last durable
    /// revision, so a change still being flushed is not shown), and that revision. Fails
    /// with [`StoreError::Compacted`] when the log no longer reaches `rv`.
    pub fn list_at(
        &self,
        scope: &Scope,
        rv: Option<u64>,
    ) -> Result<(u64, BTreeMap<Key, Value>), StoreError> {
        self.list_at_containing(scope, rv, &keep_all)
    }

    /// Like [`SledStore::list_at`], but current objects whose stored JSON `prefilter`
    /// refuses are left out undecoded (objects restored from the log are all kept): a
    /// superset of what the caller wants, for it to filter.
    pub fn list_at_containing(
        &self,
        scope: &Scope,
        rv: Option<u64>,
        prefilter: &Prefilter<'_>,
    ) -> Result<(u64, BTreeMap<Key, Value>), StoreError> {
        // Read the counter first: whatever the scan then sees beyond it is undone below,
        // so the result is exactly the state at `target` without holding the write lock.
        let durable = self.durable_rv();
        let now = self.current_rv()?;
        let target = rv.unwrap_or(durable).min(now);
        let compacted = self.compacted_rv()?;
        if target < compacted {
            return Err(StoreError::Compacted {
                requested: target,
                compacted,
            });
        }
        let mut map: BTreeMap<Key, Value> = self
            .list_current_containing(scope, prefilter)?
            .into_iter()
            .collect();
        let newer: Vec<Event> = self.log_range(target, u64::MAX)?;
        for ev in newer.into_iter().rev() {
            if !scope.contains(&ev.key) {
                continue;
            }
            match (&ev.kind, &ev.prev) {
                (EventType::Added, _) | (_, None) => {
                    map.remove(&ev.key);
                }
                (_, Some(prev)) => {
                    map.insert(ev.key.clone(), (**prev).clone());
                }
            }
        }
        Ok((target, map))
    }

    /// Every logged change after revision `rv` that is on disk, oldest first.
    pub fn events_after(&self, rv: u64) -> Result<Vec<Event>, StoreError> {
        let durable = self.durable_rv();
        let compacted = self.compacted_rv()?;
        if rv < compacted {
            return Err(StoreError::Compacted {
                requested: rv,
                compacted,
            });
        }
        self.log_range(rv, durable)
    }

    /// The logged changes after revision `after` up to `upto`, oldest first.
    fn log_range(&self, after: u64, upto: u64) -> Result<Vec<Event>, StoreError> {
        let mut out = Vec::new();
        if upto <= after {
            return Ok(out);
        }
        for item in self
            .log
            .range((after + 1).to_be_bytes()..=upto.to_be_bytes())
        {
            let (k, v) = item?;
            let rv = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            let rec: LogRecord =
                serde_json::from_slice(&v).map_err(|source| StoreError::Corrupt {
                    key: format!("log/{rv}"),
                    source,
                })?;
            out.push(Event {
                rv,
                kind: rec.t,
                key: rec.k,
                object: Arc::new(rec.o),
                prev: rec.p.map(Arc::new),
            });
        }
        Ok(out)
    }

    /// Runs `body` once with exclusive write access (so it cannot conflict) and commits
    /// its writes atomically, each with its own revision, then waits until they are on
    /// disk. Returns the events.
    async fn run_body(&self, body: &mut TxBody<'_>) -> Result<Vec<Arc<Event>>, StoreError> {
        // Counted from before the lock until committed: the flusher lingers for writers
        // already queued, so they share its flush instead of each waiting for the next.
        let arriving = self.durability.arrive();
        let events = {
            let _guard = self.write_lock.lock().await;
            // A commit waits out a running flush (the flush gate): off the async threads.
            blocking(|| {
                let mut tx = Tx::new(self);
                body(&mut tx).map_err(|_| StoreError::Aborted)?;
                let events = self.commit(tx.into_parts())?;
                self.durability.committed(&events);
                let len = self.log_len.fetch_add(events.len(), Ordering::Relaxed) + events.len();
                // Trim in steps of a tenth, so most writes pay nothing for it.
                if len > self.log_keep + self.log_keep / 10 {
                    self.compact(self.log_keep)?;
                }
                Ok::<_, StoreError>(events)
            })?
        };
        drop(arriving);
        if let Some(last) = events.last() {
            // Answered once on disk; writers waiting together share one flush.
            self.durability.wait(last.rv).await?;
        }
        Ok(events)
    }

    fn commit(&self, tx: TxWrites) -> Result<Vec<Arc<Event>>, StoreError> {
        let TxWrites { writes, mut read } = tx;
        let mut rv = self.current_rv()?;
        let mut events = Vec::new();
        for (key, new) in writes {
            // The body read it under the same lock: still what is committed.
            let prev = match read.remove(&key) {
                Some(p) => p,
                None => self.get_current(&key)?,
            };
            let kind = match (&prev, &new) {
                (None, Some(_)) => EventType::Added,
                (Some(_), Some(_)) => EventType::Modified,
                (Some(_), None) => EventType::Deleted,
                (None, None) => continue,
            };
            rv += 1;
            let mut object = match (&new, &prev) {
                (Some(v), _) => v.clone(),
                (None, Some(p)) => p.clone(),
                (None, None) => continue,
            };
            set_rv(&mut object, rv);
            events.push(Arc::new(Event {
                rv,
                kind,
                key,
                object: Arc::new(object),
                prev: prev.map(Arc::new),
            }));
        }
        if events.is_empty() {
            return Ok(events);
        }
        // (object key, object bytes or None for a deletion, log record bytes)
        type Encoded = (Vec<u8>, Option<Vec<u8>>, Vec<u8>);
        let encoded: Vec<Encoded> = events
            .iter()
            .map(|ev| {
                let rec = LogRecordRef {
                    t: ev.kind,
                    k: &ev.key,
                    o: &ev.object,
                    p: ev.prev.as_deref(),
                };
                let obj = (ev.kind != EventType::Deleted)
                    .then(|| serde_json::to_vec(&*ev.object).unwrap_or_default());
                (
                    encode_key(&ev.key),
                    obj,
                    serde_json::to_vec(&rec).unwrap_or_default(),
                )
            })
            .collect();
        let last = rv;
        let _exclusive = self.flush_gate.write().unwrap_or_else(|e| e.into_inner());
        let result: Result<(), TransactionError<()>> = (&self.objects, &self.log, &self.meta)
            .transaction(|(objects, log, meta)| {
                for (ev, (key, obj, rec)) in events.iter().zip(&encoded) {
                    match obj {
                        Some(bytes) => objects.insert(key.as_slice(), bytes.as_slice())?,
                        None => objects.remove(key.as_slice())?,
                    };
                    log.insert(&ev.rv.to_be_bytes(), rec.as_slice())?;
                }
                meta.insert(META_RV, &last.to_be_bytes())?;
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        match result {
            Ok(()) => Ok(events),
            Err(TransactionError::Storage(e)) => Err(StoreError::Sled(e)),
            Err(TransactionError::Abort(())) => Err(StoreError::Sled(sled::Error::Unsupported(
                "transaction aborted".into(),
            ))),
        }
    }

    /// Drops the oldest log records so that at most `keep` remain.
    pub fn compact(&self, keep: usize) -> Result<u64, StoreError> {
        let len = self.log.len();
        self.log_len.store(len.min(keep), Ordering::Relaxed);
        if len <= keep {
            return self.compacted_rv();
        }
        let mut upto = self.compacted_rv()?;
        let mut batch = sled::Batch::default();
        for item in self.log.iter().take(len - keep) {
            let (k, _) = item?;
            upto = upto.max(u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8])));
            batch.remove(k);
        }
        // Raise the floor before deleting, so no reader trusts a half-trimmed log.
        self.meta.insert(META_COMPACTED, &upto.to_be_bytes())?;
        self.log.apply_batch(batch)?;
        let _shared = self.flush_gate.read().unwrap_or_else(|e| e.into_inner());
        self.db.flush()?;
        Ok(upto)
    }
}

impl MetadataStore for SledStore {
    fn get(&self, key: &Key) -> Result<Option<Value>, StoreError> {
        SledStore::get(self, key)
    }

    fn list(
        &self,
        scope: &Scope,
        rv: Option<u64>,
        prefilter: &Prefilter<'_>,
    ) -> Result<(u64, BTreeMap<Key, Value>), StoreError> {
        self.list_at_containing(scope, rv, prefilter)
    }

    fn events_after(&self, rv: u64) -> Result<Vec<Event>, StoreError> {
        SledStore::events_after(self, rv)
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        SledStore::subscribe(self)
    }

    fn current_rv(&self) -> Result<u64, StoreError> {
        SledStore::current_rv(self)
    }

    fn durable_rv(&self) -> u64 {
        SledStore::durable_rv(self)
    }

    fn count(&self, resource: &str) -> Result<usize, StoreError> {
        let mut n = 0;
        for item in self.objects.scan_prefix(format!("{resource}\0").as_bytes()) {
            item?;
            n += 1;
        }
        Ok(n)
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        self.durability.collectors()
    }

    fn transact_body<'a>(
        &'a self,
        body: &'a mut TxBody<'_>,
    ) -> BoxFuture<'a, Result<Vec<Arc<Event>>, StoreError>> {
        Box::pin(self.run_body(body))
    }
}

/// Runs `f`, which may block (a sled commit waiting for a flush), without stalling the
/// runtime: on a multi-threaded runtime the thread hands its other tasks to another
/// first; elsewhere (single-threaded tests) it just runs.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<u64, StoreError> {
    Ok(tree
        .get(key)?
        .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0))
}

fn decode(bytes: &[u8], key: &Key) -> Result<Value, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        key: format!("{}/{}/{}", key.resource, key.namespace, key.name),
        source,
    })
}

fn set_rv(obj: &mut Value, rv: u64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn open(dir: &Path, log_keep: usize) -> Arc<dyn MetadataStore> {
        Arc::new(SledStore::open(dir, log_keep).expect("open"))
    }

    /// The suite every backend passes, on sled.
    mod conformance {
        use super::open;
        crate::store::conformance::metadata_store_conformance!(open);
    }

    fn obj(name: &str, v: i64) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns"}, "spec": {"v": v}})
    }

    async fn put(store: &SledStore, key: Key, value: Value) -> u64 {
        let mut body = |tx: &mut Tx<'_>| {
            tx.put(key.clone(), value.clone());
            Ok(())
        };
        let events = store.run_body(&mut body).await.expect("write");
        events.last().map_or(0, |e| e.rv)
    }

    fn names(map: &BTreeMap<Key, Value>) -> Vec<(String, i64)> {
        map.iter()
            .map(|(k, v)| (k.name.clone(), v["spec"]["v"].as_i64().unwrap_or(-1)))
            .collect()
    }

    /// A change committed but not yet flushed is invisible to reads and watchers: it
    /// could still be lost to a crash.
    #[tokio::test]
    async fn reads_show_only_durable_revisions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path(), 100).expect("open");
        let scope = Scope {
            resource: "things".into(),
            namespace: None,
        };
        let (a, b) = (Key::new("things", "ns", "a"), Key::new("things", "ns", "b"));
        put(&store, a.clone(), obj("a", 1)).await;
        // As `run_body` does, minus the flush.
        let pending = store
            .commit(TxWrites {
                writes: BTreeMap::from([
                    (a.clone(), Some(obj("a", 2))),
                    (b.clone(), Some(obj("b", 1))),
                ]),
                read: Default::default(),
            })
            .expect("commit");
        store.durability.committed_unflushed(&pending);
        assert_eq!(
            (store.durable_rv(), store.current_rv().expect("rv")),
            (1, 3)
        );
        let v = |o: Option<Value>| o.map(|o| o["spec"]["v"].clone());
        assert_eq!(v(store.get(&a).expect("get")), Some(json!(1)));
        assert_eq!(v(store.get(&b).expect("get")), None);
        let (rv, map) = store.list_at(&scope, None).expect("list");
        assert_eq!(rv, 1);
        assert_eq!(names(&map), vec![("a".to_string(), 1)]);
        assert_eq!(store.events_after(0).expect("log").len(), 1);
        // An explicit revision is served exactly, as before.
        let (_, map) = store.list_at(&scope, Some(3)).expect("list");
        assert_eq!(names(&map), vec![("a".into(), 2), ("b".into(), 1)]);
        // A transaction reads the newest committed state, durable or not.
        let mut seen = None;
        let mut body = |tx: &mut Tx<'_>| {
            seen = tx.get(&b).ok().flatten();
            Ok(())
        };
        store.run_body(&mut body).await.expect("read");
        assert!(seen.is_some());

        // The next write's flush covers the earlier ones: all become visible, in order.
        let mut rx = store.subscribe();
        put(&store, Key::new("things", "ns", "c"), obj("c", 1)).await;
        assert_eq!(store.durable_rv(), 4);
        assert_eq!(v(store.get(&a).expect("get")), Some(json!(2)));
        let rvs: Vec<u64> = std::iter::from_fn(|| rx.try_recv().ok().map(|e| e.rv)).collect();
        assert_eq!(rvs, vec![2, 3, 4]);
        assert_eq!(store.list_at(&scope, None).expect("list").1.len(), 3);
    }

    /// Writers that arrive while a flush runs share the next one: with 32 writers in
    /// flight, far fewer flushes than writes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn group_commit_batches_concurrent_writers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SledStore::open(dir.path(), 100_000).expect("open"));
        let before = store.flushes();
        let writers: Vec<_> = (0..32)
            .map(|w| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    for i in 0..20 {
                        let key = Key::new("things", "ns", &format!("w{w}-{i}"));
                        put(&store, key, obj("x", i)).await;
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.expect("writer");
        }
        let flushes = store.flushes() - before;
        assert_eq!(store.durable_rv(), 640);
        assert!(flushes < 640 / 2, "{flushes} flushes for 640 writes");
    }

    /// Writers that queue while a flush runs commit one after another once it ends; the
    /// flusher lingers for them, so they share one flush instead of the first commit
    /// being flushed alone (and the rest after it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn writers_queued_behind_a_flush_share_the_next_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SledStore::open(dir.path(), 100_000).expect("open"));
        put(&store, Key::new("things", "ns", "first"), obj("x", 0)).await;
        let gate = Arc::clone(&store.flush_gate);
        // As a running flush does: no commit can start (held by a thread of its own,
        // as the flusher does).
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let _held = gate.write().expect("gate");
            locked_tx.send(()).expect("locked");
            let _ = release_rx.recv();
        });
        locked_rx.recv().expect("gate held");
        let before = store.flushes();
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    put(
                        &store,
                        Key::new("things", "ns", &format!("w{w}")),
                        obj("x", w),
                    )
                    .await;
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.durability.arriving_now() < 8 {
            assert!(
                std::time::Instant::now() < deadline,
                "writers did not arrive"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        release_tx.send(()).expect("release");
        holder.join().expect("holder");
        for w in writers {
            w.await.expect("writer");
        }
        assert_eq!(store.durable_rv(), 9);
        let flushes = store.flushes() - before;
        // One, or two when the machine is so slow that the linger ran out; without it,
        // each flush took the one commit made before it (one flush per writer or so).
        assert!(flushes <= 2, "8 queued writers took {flushes} flushes");
    }

    /// Compaction keeps the newest `keep` records and raises the floor to match.
    #[tokio::test]
    async fn compaction_raises_the_floor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path(), 100).expect("open");
        for i in 0..5 {
            put(&store, Key::new("things", "ns", "a"), obj("a", i)).await;
        }
        store.compact(1).expect("compact");
        assert_eq!(store.compacted_rv().expect("compacted"), 4);
        assert_eq!(store.events_after(4).expect("log").len(), 1);
    }
}
