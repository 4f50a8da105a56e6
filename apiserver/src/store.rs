//! Metadata store on sled: objects, a revision log, and the resourceVersion counter, all
//! changed together in one transaction per write.
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
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use tokio::sync::broadcast;

use crate::groupcommit::{Durability, Flusher};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("flushing to disk: {0}")]
    Flush(String),
    #[error("corrupt record at {key}: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
    #[error("revision {requested} is older than the oldest kept ({compacted})")]
    Compacted { requested: u64, compacted: u64 },
}

/// Where an object lives.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    pub resource: String,
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(resource: &str, namespace: &str, name: &str) -> Self {
        Self {
            resource: resource.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    fn encode(&self) -> Vec<u8> {
        format!("{}\0{}\0{}", self.resource, self.namespace, self.name).into_bytes()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(bytes).ok()?;
        let mut parts = s.splitn(3, '\0');
        Some(Self {
            resource: parts.next()?.to_string(),
            namespace: parts.next()?.to_string(),
            name: parts.next()?.to_string(),
        })
    }
}

/// Which objects a read covers: one resource, optionally one namespace.
#[derive(Clone, Debug)]
pub struct Scope {
    pub resource: String,
    pub namespace: Option<String>,
}

impl Scope {
    fn prefix(&self) -> Vec<u8> {
        match &self.namespace {
            Some(ns) => format!("{}\0{}\0", self.resource, ns).into_bytes(),
            None => format!("{}\0", self.resource).into_bytes(),
        }
    }

    pub fn contains(&self, key: &Key) -> bool {
        key.resource == self.resource
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| ns == key.namespace)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "ADDED")]
    Added,
    #[serde(rename = "MODIFIED")]
    Modified,
    #[serde(rename = "DELETED")]
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change.
#[derive(Clone, Debug)]
pub struct Event {
    pub rv: u64,
    pub kind: EventType,
    pub key: Key,
    /// The object after the change (for a deletion: as it was, with the deletion's rv).
    pub object: Arc<Value>,
    /// The object before the change (none for an addition).
    pub prev: Option<Arc<Value>>,
}

#[derive(Serialize, Deserialize)]
struct LogRecord {
    t: EventType,
    k: Key,
    o: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p: Option<Value>,
}

/// A write inside [`Store::transact`].
pub struct Tx<'a> {
    store: &'a Store,
    writes: BTreeMap<Key, Option<Value>>,
}

impl Tx<'_> {
    /// The object as this transaction sees it (its own writes included).
    pub fn get(&self, key: &Key) -> Result<Option<Value>, StoreError> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.store.get_current(key),
        }
    }

    /// Every object in `scope` as this transaction sees it.
    pub fn list(&self, scope: &Scope) -> Result<Vec<(Key, Value)>, StoreError> {
        let mut map: BTreeMap<Key, Value> = self.store.list_current(scope)?.into_iter().collect();
        for (k, v) in &self.writes {
            if scope.contains(k) {
                match v {
                    Some(v) => {
                        map.insert(k.clone(), v.clone());
                    }
                    None => {
                        map.remove(k);
                    }
                }
            }
        }
        Ok(map.into_iter().collect())
    }

    /// Stores `value`; its `metadata.resourceVersion` is set at commit.
    pub fn put(&mut self, key: Key, value: Value) {
        self.writes.insert(key, Some(value));
    }

    pub fn delete(&mut self, key: Key) {
        self.writes.insert(key, None);
    }

    /// Drops every write made so far (dry run, or nothing to change).
    pub fn discard(&mut self) {
        self.writes.clear();
    }
}

pub struct Store {
    db: sled::Db,
    objects: sled::Tree,
    log: sled::Tree,
    meta: sled::Tree,
    write_lock: Mutex<()>,
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

impl Store {
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
        let durability = Durability::new(durable_rv, events);
        let flusher = Flusher::start(db.clone(), Arc::clone(&flush_gate), Arc::clone(&durability))?;
        Ok(Self {
            objects: db.open_tree("objects")?,
            meta,
            log,
            db,
            write_lock: Mutex::new(()),
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
            .get(key.encode())?
            .map(|v| decode(&v, key))
            .transpose()
    }

    fn list_current(&self, scope: &Scope) -> Result<Vec<(Key, Value)>, StoreError> {
        self.list_current_containing(scope, &[])
    }

    /// Like `list_current`, skipping (without decoding) objects whose stored bytes lack
    /// one of `fragments`.
    fn list_current_containing(
        &self,
        scope: &Scope,
        fragments: &[Vec<u8>],
    ) -> Result<Vec<(Key, Value)>, StoreError> {
        let finders: Vec<memchr::memmem::Finder<'_>> = fragments
            .iter()
            .map(|f| memchr::memmem::Finder::new(f.as_slice()))
            .collect();
        let mut out = Vec::new();
        for item in self.objects.scan_prefix(scope.prefix()) {
            let (k, v) = item?;
            if !finders.iter().all(|f| f.find(&v).is_some()) {
                continue;
            }
            if let Some(key) = Key::decode(&k) {
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
        self.list_at_containing(scope, rv, &[])
    }

    /// Like [`Store::list_at`], but current objects whose stored JSON lacks one of
    /// `fragments` are left out undecoded (objects restored from the log are all kept):
    /// a superset of what a selector with these required fragments matches, for the
    /// caller to filter.
    pub fn list_at_containing(
        &self,
        scope: &Scope,
        rv: Option<u64>,
        fragments: &[Vec<u8>],
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
            .list_current_containing(scope, fragments)?
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

    /// Runs `f` with exclusive write access and commits its writes atomically, each with
    /// its own revision, then flushes them to disk. Returns `f`'s result and the events.
    pub async fn transact<T, E>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, E>,
    ) -> Result<(T, Vec<Arc<Event>>), E>
    where
        E: From<StoreError>,
    {
        let (value, events) = {
            let _guard = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
            let mut tx = Tx {
                store: self,
                writes: BTreeMap::new(),
            };
            let value = f(&mut tx)?;
            let events = self.commit(tx.writes)?;
            self.durability.committed(&events);
            let len = self.log_len.fetch_add(events.len(), Ordering::Relaxed) + events.len();
            // Trim in steps of a tenth, so most writes pay nothing for it.
            if len > self.log_keep + self.log_keep / 10 {
                self.compact(self.log_keep)?;
            }
            (value, events)
        };
        if let Some(last) = events.last() {
            // Answered once on disk; writers waiting together share one flush.
            self.durability.wait(last.rv).await?;
        }
        Ok((value, events))
    }

    fn commit(&self, writes: BTreeMap<Key, Option<Value>>) -> Result<Vec<Arc<Event>>, StoreError> {
        let mut rv = self.current_rv()?;
        let mut events = Vec::new();
        for (key, new) in writes {
            let prev = self.get_current(&key)?;
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
                let rec = LogRecord {
                    t: ev.kind,
                    k: ev.key.clone(),
                    o: (*ev.object).clone(),
                    p: ev.prev.as_deref().cloned(),
                };
                let obj = (ev.kind != EventType::Deleted)
                    .then(|| serde_json::to_vec(&*ev.object).unwrap_or_default());
                (
                    ev.key.encode(),
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

    /// Number of stored objects of `resource`.
    pub fn count(&self, resource: &str) -> usize {
        self.objects
            .scan_prefix(format!("{resource}\0").as_bytes())
            .count()
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

    fn obj(name: &str, v: i64) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns"}, "spec": {"v": v}})
    }

    /// One write of one object, through `transact` (flushed and published).
    async fn put(store: &Store, key: Key, value: Value) {
        store
            .transact(|tx: &mut Tx<'_>| -> Result<(), StoreError> {
                tx.put(key, value);
                Ok(())
            })
            .await
            .expect("write");
    }

    fn names(map: &BTreeMap<Key, Value>) -> Vec<(String, i64)> {
        map.iter()
            .map(|(k, v)| (k.name.clone(), v["spec"]["v"].as_i64().unwrap_or(-1)))
            .collect()
    }

    /// The prefiltered list is the plain list filtered, now and at an older revision
    /// (where an object that lost its label since must come back).
    #[tokio::test]
    async fn lists_containing_fragments_skip_only_objects_that_cannot_match() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 100).expect("open");
        let scope = Scope {
            resource: "things".into(),
            namespace: Some("ns".into()),
        };
        let labelled = |name: &str, group: &str| json!({"metadata": {"name": name, "namespace": "ns", "labels": {"g": group}}});
        for (name, group) in [("a", "x"), ("b", "y"), ("c", "x")] {
            put(
                &store,
                Key::new("things", "ns", name),
                labelled(name, group),
            )
            .await;
        }
        let before = store.current_rv().expect("rv");
        // "c" leaves group x after `before`.
        put(&store, Key::new("things", "ns", "c"), labelled("c", "z")).await;
        let frag = vec![br#""g":"x""#.to_vec()];
        let names = |m: BTreeMap<Key, Value>| m.into_keys().map(|k| k.name).collect::<Vec<_>>();
        let (_, now) = store.list_at_containing(&scope, None, &frag).expect("now");
        assert_eq!(names(now), ["a"]);
        let (_, then) = store
            .list_at_containing(&scope, Some(before), &frag)
            .expect("then");
        let then = names(then);
        assert!(
            then.contains(&"a".to_string()) && then.contains(&"c".to_string()),
            "{then:?}"
        );
        assert!(!then.contains(&"b".to_string()), "{then:?}");
    }

    /// `writers` tasks, each putting `each` objects one transaction at a time.
    fn spawn_writers(
        store: &Arc<Store>,
        writers: usize,
        each: i64,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..writers)
            .map(|w| {
                let store = Arc::clone(store);
                tokio::spawn(async move {
                    for i in 0..each {
                        let name = format!("w{w}-{i}");
                        put(&store, Key::new("things", "ns", &name), obj(&name, i)).await;
                    }
                })
            })
            .collect()
    }

    /// sled deadlocks when a flush (holding its concurrency-control read lock while it
    /// waits for the log to become stable) overlaps a transaction (queued for the write
    /// lock, which then blocks the log writers' read locks). 10,000 concurrent creates hung
    /// the server that way; concurrent writers with their flushes must all finish.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writes_and_their_flushes_never_deadlock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path(), 500).expect("open"));
        let writers = spawn_writers(&store, 16, 150);
        // A watchdog thread: deadlocked workers would also stall tokio's timers.
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&finished);
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(120));
            if !flag.load(Ordering::SeqCst) {
                eprintln!("16 writers × 150 writes did not finish in 120 s: the sled deadlock");
                std::process::exit(101);
            }
        });
        let done = futures::future::join_all(writers).await;
        finished.store(true, Ordering::SeqCst);
        assert!(done.iter().all(Result::is_ok));
        assert_eq!(store.count("things"), 16 * 150);
        assert_eq!(store.current_rv().expect("rv"), 16 * 150);
    }

    /// Watchers get every change exactly once, in revision order, and only once it is on
    /// disk, while concurrent writers' flushes finish in any order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn events_are_published_in_order_and_only_once_flushed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path(), 10_000).expect("open"));
        let mut rx = store.subscribe();
        let writers = spawn_writers(&store, 8, 50);
        let mut seen = Vec::new();
        while seen.len() < 8 * 50 {
            let ev = tokio::time::timeout(std::time::Duration::from_secs(60), rx.recv())
                .await
                .expect("events keep coming")
                .expect("no lag at this size");
            assert!(
                ev.rv <= store.durable_rv(),
                "revision {} published before it was on disk (durable: {})",
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
        drop(store);
        let reopened = Store::open(dir.path(), 10_000).expect("reopen");
        assert_eq!(
            reopened.durable_rv(),
            8 * 50,
            "what was recovered is durable"
        );
    }

    /// A change committed but not yet flushed is invisible to reads and watchers: it
    /// could still be lost to a crash.
    #[tokio::test]
    async fn reads_show_only_durable_revisions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 100).expect("open");
        let scope = Scope {
            resource: "things".into(),
            namespace: None,
        };
        let (a, b) = (Key::new("things", "ns", "a"), Key::new("things", "ns", "b"));
        put(&store, a.clone(), obj("a", 1)).await;
        // As `transact` does, minus the flush.
        let pending = store
            .commit(BTreeMap::from([
                (a.clone(), Some(obj("a", 2))),
                (b.clone(), Some(obj("b", 1))),
            ]))
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
    /// flight, far fewer flushes than writes, and every write is durable when answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn group_commit_batches_concurrent_writers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path(), 100_000).expect("open"));
        let before = store.flushes();
        let writers: Vec<_> = (0..32)
            .map(|w| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    for i in 0..20 {
                        let key = Key::new("things", "ns", &format!("w{w}-{i}"));
                        let (_, events) = store
                            .transact(|tx: &mut Tx<'_>| -> Result<(), StoreError> {
                                tx.put(key.clone(), obj("x", i));
                                Ok(())
                            })
                            .await
                            .expect("write");
                        let rv = events.last().map_or(0, |e| e.rv);
                        assert!(store.durable_rv() >= rv, "answered before durable");
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

    #[tokio::test]
    async fn revisions_are_monotonic_and_lists_at_old_revisions_are_exact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 100).expect("open");
        let scope = Scope {
            resource: "things".into(),
            namespace: Some("ns".into()),
        };
        let key = |name: &str| Key::new("things", "ns", name);
        put(&store, key("a"), obj("a", 1)).await;
        put(&store, key("b"), obj("b", 1)).await;
        let rv2 = store.current_rv().expect("rv");
        assert_eq!(rv2, 2);
        put(&store, key("a"), obj("a", 2)).await;
        store
            .transact(|tx: &mut Tx<'_>| -> Result<(), StoreError> {
                tx.delete(Key::new("things", "ns", "b"));
                tx.put(Key::new("things", "ns", "c"), obj("c", 1));
                Ok(())
            })
            .await
            .expect("delete b, add c");
        assert_eq!(store.current_rv().expect("rv"), 5);

        let (_, now) = store.list_at(&scope, None).expect("now");
        assert_eq!(names(&now), [("a".into(), 2), ("c".into(), 1)]);
        let (rv, then) = store.list_at(&scope, Some(rv2)).expect("then");
        assert_eq!(rv, 2);
        assert_eq!(names(&then), [("a".into(), 1), ("b".into(), 1)]);
        assert_eq!(
            then[&Key::new("things", "ns", "a")]["metadata"]["resourceVersion"],
            "1"
        );

        let events = store.events_after(rv2).expect("events");
        let kinds: Vec<_> = events
            .iter()
            .map(|e| (e.rv, e.kind, e.key.name.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                (3, EventType::Modified, "a"),
                (4, EventType::Deleted, "b"),
                (5, EventType::Added, "c")
            ]
        );

        store.compact(1).expect("compact");
        assert_eq!(store.compacted_rv().expect("compacted"), 4);
        assert!(matches!(
            store.list_at(&scope, Some(rv2)),
            Err(StoreError::Compacted { .. })
        ));
        drop(store);

        // Reopened: revision counter and objects survive.
        let store = Store::open(dir.path(), 100).expect("reopen");
        assert_eq!(store.current_rv().expect("rv"), 5);
        let (_, now) = store.list_at(&scope, None).expect("now");
        assert_eq!(names(&now), [("a".into(), 2), ("c".into(), 1)]);
    }
}
