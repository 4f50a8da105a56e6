//! The metadata store seam: what the registry needs from a store of objects with a
//! revision log, as [`MetadataStore`]. sled is the implementation ([`SledStore`]); the
//! trait is what lets another backend (etcd, for several replicas) come later, and the
//! conformance suite (`conformance.rs`, run on every backend) pins down its behaviour.
//!
//! Invariants every backend keeps:
//! - **Revisions**: every change gets its own revision, one more than the last, assigned in
//!   commit order; a transaction's changes are committed atomically, with consecutive
//!   revisions. Objects carry theirs as `metadata.resourceVersion`.
//! - **Durability first**: a write is answered only once it is durable, and nothing reads a
//!   change before then: [`MetadataStore::get`], a list without a revision and
//!   [`MetadataStore::events_after`] serve the last durable revision, and events reach
//!   subscribers only once durable, in revision order, each exactly once. A watcher never
//!   sees a change that a crash could take back.
//! - **History**: a list at an older revision is exact for as long as the log reaches back;
//!   older revisions fail with [`StoreError::Compacted`] (410 Expired to clients).
//! - **Transactions are serializable**: a transaction's reads ([`Tx::get`], [`Tx::list`])
//!   see the newest committed state plus its own writes, and it commits only if nothing it
//!   read changed meanwhile; otherwise the backend runs its body again on the new state (as
//!   k8s.io/apiserver's `GuaranteedUpdate` does). A body must therefore be a function of
//!   what it reads: no side effects outside its [`Tx`], its result taken from its last run.
//!   This is what keeps quota admission exact under concurrency.
//! - **Prefilter hints are only hints**: [`MetadataStore::list`] may leave out objects whose
//!   stored JSON the given [`Prefilter`] refuses, or return them anyway; callers filter.
//!
//! sled's transactions never conflict (writers are serialized by one lock, and many
//! writes share one flush: group commit, see [`crate::groupcommit`]), so it runs each body
//! once.

#[cfg(test)]
pub(crate) mod conformance;
mod sled;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;

pub use self::sled::SledStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] ::sled::Error),
    #[error("flushing to disk: {0}")]
    Flush(String),
    #[error("corrupt record at {key}: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
    #[error("revision {requested} is older than the oldest kept ({compacted})")]
    Compacted { requested: u64, compacted: u64 },
    /// The transaction's body returned an error: nothing was written. The typed error is
    /// the caller's (`transact` on `dyn MetadataStore` returns it); this only signals it.
    #[error("the transaction was aborted by its body")]
    Aborted,
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
}

/// Which objects a read covers: one resource, optionally one namespace.
#[derive(Clone, Debug)]
pub struct Scope {
    pub resource: String,
    pub namespace: Option<String>,
}

impl Scope {
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

/// What a backend serves a transaction's reads from: the newest committed state (durable
/// or not), which the transaction's commit is then checked against.
pub trait TxRead: Sync {
    fn get(&self, key: &Key) -> Result<Option<Value>, StoreError>;
    fn list(&self, scope: &Scope) -> Result<Vec<(Key, Value)>, StoreError>;
}

/// One run of a transaction's body: reads through the backend, writes buffered here until
/// the backend commits them (or drops them, when the body fails or is run again).
///
/// Committed reads are remembered for the rest of the run: the committed state cannot
/// change under a running body (the backend commits it only if nothing it read changed,
/// and runs it again otherwise), and admission reads the same quota and usage record
/// several times per write (#17: each read was a store lookup and a JSON decode).
pub struct Tx<'a> {
    base: &'a dyn TxRead,
    writes: BTreeMap<Key, Option<Value>>,
    read: RefCell<HashMap<Key, Option<Value>>>,
    listed: RefCell<Listed>,
}

/// Committed lists by (resource, namespace).
type Listed = HashMap<(String, Option<String>), Vec<(Key, Value)>>;

/// What a body left for the backend to commit: its writes, and the committed values it
/// read (a backend may take an object's previous value from here instead of reading it
/// again).
pub struct TxWrites {
    pub writes: BTreeMap<Key, Option<Value>>,
    pub read: HashMap<Key, Option<Value>>,
}

impl<'a> Tx<'a> {
    /// A transaction reading from `base` (for backends).
    pub fn new(base: &'a dyn TxRead) -> Self {
        Self {
            base,
            writes: BTreeMap::new(),
            read: RefCell::new(HashMap::new()),
            listed: RefCell::new(HashMap::new()),
        }
    }

    /// The object as this transaction sees it (its own writes included).
    pub fn get(&self, key: &Key) -> Result<Option<Value>, StoreError> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.get_committed(key),
        }
    }

    /// The object as committed, before this transaction's writes.
    pub fn get_committed(&self, key: &Key) -> Result<Option<Value>, StoreError> {
        if let Some(v) = self.read.borrow().get(key) {
            return Ok(v.clone());
        }
        let v = self.base.get(key)?;
        self.read.borrow_mut().insert(key.clone(), v.clone());
        Ok(v)
    }

    /// This transaction's writes so far, in key order (`None`: a deletion).
    pub fn pending(&self) -> impl Iterator<Item = (&Key, Option<&Value>)> {
        self.writes.iter().map(|(k, v)| (k, v.as_ref()))
    }

    /// Every object in `scope` as this transaction sees it, in key order.
    pub fn list(&self, scope: &Scope) -> Result<Vec<(Key, Value)>, StoreError> {
        let id = (scope.resource.clone(), scope.namespace.clone());
        let cached = self.listed.borrow().get(&id).cloned();
        let committed = match cached {
            Some(items) => items,
            None => {
                let items = self.base.list(scope)?;
                self.listed.borrow_mut().insert(id, items.clone());
                items
            }
        };
        let mut map: BTreeMap<Key, Value> = committed.into_iter().collect();
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

    /// The buffered writes and the committed values read, for the backend to commit.
    pub fn into_parts(self) -> TxWrites {
        TxWrites {
            writes: self.writes,
            read: self.read.into_inner(),
        }
    }
}

/// The body signals failure with this; its typed error stays with the caller.
#[derive(Debug)]
pub struct Abort;

/// A transaction's body, as backends see it: run once per attempt, each time on a fresh
/// [`Tx`].
/// A test on an object's stored JSON, before it is decoded: `false` lets a list leave
/// the object out. It may accept objects the caller then filters out, never refuse one
/// the caller wants (e.g. a label selector read from the bytes, see the registry).
pub type Prefilter<'a> = dyn Fn(&[u8]) -> bool + Sync + 'a;

/// A [`Prefilter`] that keeps everything.
pub fn keep_all(_: &[u8]) -> bool {
    true
}

pub type TxBody<'f> = dyn FnMut(&mut Tx<'_>) -> Result<(), Abort> + Send + 'f;

/// A store of objects with a revision log; see the module docs for what every
/// implementation guarantees.
///
/// Reads are synchronous: a backend serves them from local state (sled's trees; for a
/// remote store, a cache kept current by its watch, as kube-apiserver's watch cache is).
pub trait MetadataStore: Send + Sync {
    /// The object as of the last durable revision.
    fn get(&self, key: &Key) -> Result<Option<Value>, StoreError>;

    /// The objects in `scope` at revision `rv` (`None`: the last durable revision) and
    /// that revision. Objects whose stored JSON `prefilter` refuses may be left out
    /// undecoded (a hint: callers filter the result themselves). Fails with
    /// [`StoreError::Compacted`] when the log no longer reaches `rv`.
    fn list(
        &self,
        scope: &Scope,
        rv: Option<u64>,
        prefilter: &Prefilter<'_>,
    ) -> Result<(u64, BTreeMap<Key, Value>), StoreError>;

    /// Every change after revision `rv` that is durable, oldest first; fails with
    /// [`StoreError::Compacted`] when the log no longer reaches `rv`.
    fn events_after(&self, rv: u64) -> Result<Vec<Event>, StoreError>;

    /// Changes as they become durable, in revision order.
    fn subscribe(&self) -> broadcast::Receiver<Arc<Event>>;

    /// The newest committed revision (durable or not).
    fn current_rv(&self) -> Result<u64, StoreError>;

    /// Revisions up to this one are durable; reads and watchers see changes up to here.
    fn durable_rv(&self) -> u64;

    /// Number of stored objects of `resource` (for metrics; need not be at one revision).
    fn count(&self, resource: &str) -> Result<usize, StoreError>;

    /// The backend's own metrics (e.g. flush times and writes per flush), registered by
    /// the server's metrics; none by default.
    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        Vec::new()
    }

    /// Runs `body` on the newest state and commits its writes atomically once durable,
    /// running it again on conflict; returns the committed events (none when it wrote
    /// nothing). A failing body ends it with [`StoreError::Aborted`], nothing written.
    /// Callers use `transact` on `dyn MetadataStore`, which adds a typed result.
    fn transact_body<'a>(
        &'a self,
        body: &'a mut TxBody<'_>,
    ) -> BoxFuture<'a, Result<Vec<Arc<Event>>, StoreError>>;
}

impl<'s> dyn MetadataStore + 's {
    /// A transaction with a typed result: `f` may run more than once (on conflict), and
    /// the result of its last run is returned with the committed events; an error from
    /// `f` ends the transaction with nothing written.
    pub async fn transact<T, E>(
        &self,
        mut f: impl FnMut(&mut Tx<'_>) -> Result<T, E> + Send,
    ) -> Result<(T, Vec<Arc<Event>>), E>
    where
        T: Send,
        E: From<StoreError> + Send,
    {
        let mut last: Option<Result<T, E>> = None;
        let committed = self
            .transact_body(&mut |tx| {
                let r = f(tx);
                let failed = r.is_err();
                last = Some(r);
                if failed {
                    Err(Abort)
                } else {
                    Ok(())
                }
            })
            .await;
        match (committed, last) {
            (Ok(events), Some(Ok(value))) => Ok((value, events)),
            (_, Some(Err(e))) => Err(e),
            (Err(e), _) => Err(e.into()),
            // A backend that commits without running the body at all.
            (Ok(_), None) => Err(StoreError::Aborted.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;

    use super::*;

    /// A committed state of one object and one scope, counting the reads that reach it.
    struct Counting {
        gets: AtomicUsize,
        lists: AtomicUsize,
    }

    impl TxRead for Counting {
        fn get(&self, key: &Key) -> Result<Option<Value>, StoreError> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            Ok((key.name == "a").then(|| json!({"v": 1})))
        }

        fn list(&self, _scope: &Scope) -> Result<Vec<(Key, Value)>, StoreError> {
            self.lists.fetch_add(1, Ordering::SeqCst);
            Ok(vec![(Key::new("things", "ns", "a"), json!({"v": 1}))])
        }
    }

    #[test]
    fn a_body_reads_each_committed_object_and_scope_once_and_sees_its_own_writes() {
        let base = Counting {
            gets: AtomicUsize::new(0),
            lists: AtomicUsize::new(0),
        };
        let scope = Scope {
            resource: "things".into(),
            namespace: Some("ns".into()),
        };
        let (a, b) = (Key::new("things", "ns", "a"), Key::new("things", "ns", "b"));
        let mut tx = Tx::new(&base);
        for _ in 0..3 {
            assert_eq!(tx.get(&a).expect("get"), Some(json!({"v": 1})));
            assert_eq!(tx.get(&b).expect("get"), None);
            assert_eq!(tx.list(&scope).expect("list").len(), 1);
        }
        assert_eq!(base.gets.load(Ordering::SeqCst), 2);
        assert_eq!(base.lists.load(Ordering::SeqCst), 1);
        tx.put(a.clone(), json!({"v": 2}));
        tx.put(b.clone(), json!({"v": 3}));
        // Its own writes over the remembered reads; the committed values stay as read.
        assert_eq!(tx.get(&a).expect("get"), Some(json!({"v": 2})));
        assert_eq!(tx.get_committed(&a).expect("get"), Some(json!({"v": 1})));
        let listed: Vec<Value> = tx
            .list(&scope)
            .expect("list")
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert_eq!(listed, vec![json!({"v": 2}), json!({"v": 3})]);
        tx.delete(a.clone());
        assert_eq!(tx.list(&scope).expect("list").len(), 1);
        assert_eq!(base.gets.load(Ordering::SeqCst), 2);
        assert_eq!(base.lists.load(Ordering::SeqCst), 1);
        let parts = tx.into_parts();
        assert_eq!(parts.read.get(&a), Some(&Some(json!({"v": 1}))));
        assert_eq!(parts.read.get(&b), Some(&None));
        assert_eq!(parts.writes.get(&a), Some(&None));
    }
}
