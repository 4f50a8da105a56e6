//! Group commit: one flusher makes the store's writes durable, many at a time.
//!
//! A writer commits its transaction in memory (under the store's write lock), tells the
//! flusher the revision it needs on disk, and waits. The flusher takes the newest
//! committed revision, flushes once, and declares everything up to that revision durable:
//! writers that arrived while a flush was running are covered together by the next one,
//! as etcd batches raft entries and databases batch WAL fsyncs.
//!
//! Invariants: a revision is declared durable only after a flush that began after it was
//! committed returned successfully (the flusher reads the target before flushing, and a
//! revision is recorded only after its transaction is applied); events are published to
//! watchers only up to the durable revision and in revision order; a writer is answered
//! only once its revision is durable, or with the flush's error.
//!
//! Batching: a commit cannot overlap a flush (see the store's flush gate), so writers
//! that queue during a flush commit one after another once it ends. The flusher lingers
//! — at most [`LINGER`] — while writers are still arriving (counted from before the
//! write lock until their commit), so that one flush covers the whole queue instead of
//! the first commit after each flush alone. Lingering delays a flush, never declares
//! anything durable early.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts};
use tokio::sync::{broadcast, watch};

use crate::store::{Event, StoreError};

/// The longest a flush waits for writers already queued to commit: a bound on the
/// latency batching adds, small against a flush (milliseconds on a real disk).
pub const LINGER: Duration = Duration::from_millis(5);

/// What writers learn from the flusher.
#[derive(Clone, Debug, Default)]
struct Flushed {
    /// Every revision up to here is on disk.
    durable: u64,
    /// The last failed flush: the revision it was for, and why.
    failed: Option<(u64, String)>,
}

#[derive(Default)]
struct Wanted {
    /// The newest committed revision.
    committed: u64,
    stop: bool,
}

/// The durable revision, the events waiting for it, and the flusher's mailbox.
pub struct Durability {
    durable_rv: AtomicU64,
    unpublished: Mutex<VecDeque<Arc<Event>>>,
    events: broadcast::Sender<Arc<Event>>,
    wanted: Mutex<Wanted>,
    wake: Condvar,
    flushed: watch::Sender<Flushed>,
    /// Writers between arriving at the store and committing.
    arriving: AtomicUsize,
    /// How long flushes take, and how many revisions each made durable: the batching.
    flush_seconds: Histogram,
    flush_revisions: Histogram,
}

/// A writer on its way to a commit; counted until dropped.
pub struct Arriving<'a>(&'a Durability);

impl Drop for Arriving<'_> {
    fn drop(&mut self) {
        // Under the mailbox lock, so a lingering flusher cannot miss the change.
        let _w = self.0.wanted.lock().unwrap_or_else(PoisonError::into_inner);
        self.0.arriving.fetch_sub(1, Ordering::AcqRel);
        self.0.wake.notify_one();
    }
}

impl Durability {
    pub fn new(
        durable_rv: u64,
        events: broadcast::Sender<Arc<Event>>,
    ) -> Result<Arc<Self>, StoreError> {
        let (flushed, _) = watch::channel(Flushed {
            durable: durable_rv,
            failed: None,
        });
        let metric = |e: prometheus::Error| StoreError::Flush(format!("flush metrics: {e}"));
        let flush_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "coredump_apiserver_store_flush_duration_seconds",
                "Time of one flush of the metadata store to disk (fsync included).",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0,
            ]),
        )
        .map_err(metric)?;
        let flush_revisions = Histogram::with_opts(
            HistogramOpts::new(
                "coredump_apiserver_store_flush_revisions",
                "Revisions one flush made durable (group commit: writes sharing a flush).",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )
        .map_err(metric)?;
        Ok(Arc::new(Self {
            durable_rv: AtomicU64::new(durable_rv),
            unpublished: Mutex::new(VecDeque::new()),
            events,
            wanted: Mutex::new(Wanted {
                committed: durable_rv,
                stop: false,
            }),
            wake: Condvar::new(),
            flushed,
            arriving: AtomicUsize::new(0),
            flush_seconds,
            flush_revisions,
        }))
    }

    pub fn durable_rv(&self) -> u64 {
        self.durable_rv.load(Ordering::Acquire)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    /// The flush metrics, for the server's registry.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.flush_seconds.clone()),
            Box::new(self.flush_revisions.clone()),
        ]
    }

    /// Flushes done so far (fewer than writes means batching): the flush-time histogram's
    /// count, kept once.
    pub fn flushes(&self) -> u64 {
        self.flush_seconds.get_sample_count()
    }

    /// Counts a writer from its arrival (before the write lock) until the guard drops
    /// (after its commit, before it waits for the flush).
    pub fn arrive(&self) -> Arriving<'_> {
        self.arriving.fetch_add(1, Ordering::AcqRel);
        Arriving(self)
    }

    /// Writers counted by [`Durability::arrive`] right now.
    #[cfg(test)]
    pub fn arriving_now(&self) -> usize {
        self.arriving.load(Ordering::Acquire)
    }

    /// Records committed events (call under the store's write lock, in revision order).
    pub fn committed(&self, events: &[Arc<Event>]) {
        let Some(last) = events.last().map(|e| e.rv) else {
            return;
        };
        self.unpublished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(events.iter().cloned());
        let mut w = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
        w.committed = w.committed.max(last);
        self.wake.notify_one();
    }

    /// Records committed events without asking for a flush: a test's way to hold a
    /// change between commit and flush.
    #[cfg(test)]
    pub fn committed_unflushed(&self, events: &[Arc<Event>]) {
        self.unpublished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(events.iter().cloned());
    }

    /// Waits until `rv` is on disk.
    pub async fn wait(&self, rv: u64) -> Result<(), StoreError> {
        let mut rx = self.flushed.subscribe();
        loop {
            {
                let f = rx.borrow_and_update();
                if f.durable >= rv {
                    return Ok(());
                }
                if let Some((upto, why)) = &f.failed {
                    if *upto >= rv {
                        return Err(StoreError::Flush(why.clone()));
                    }
                }
            }
            rx.changed()
                .await
                .map_err(|_| StoreError::Flush("the store is closed".into()))?;
        }
    }

    fn mark_durable(&self, rv: u64) {
        self.durable_rv.fetch_max(rv, Ordering::AcqRel);
        {
            let mut queue = self
                .unpublished
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let durable = self.durable_rv();
            while queue.front().is_some_and(|ev| ev.rv <= durable) {
                if let Some(ev) = queue.pop_front() {
                    // No receivers is fine: nobody is watching.
                    let _ = self.events.send(ev);
                }
            }
        }
        self.flushed.send_modify(|f| f.durable = f.durable.max(rv));
    }
}

/// The flusher thread; stopped and joined when dropped.
pub struct Flusher {
    durability: Arc<Durability>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Flusher {
    /// Starts flushing `db` behind `gate` (held shared while flushing; see the store).
    pub fn start(
        db: sled::Db,
        gate: Arc<RwLock<()>>,
        durability: Arc<Durability>,
    ) -> Result<Self, StoreError> {
        let d = Arc::clone(&durability);
        let thread = std::thread::Builder::new()
            .name("store-flusher".into())
            .spawn(move || run(&db, &gate, &d))
            .map_err(|e| StoreError::Flush(format!("starting the flusher: {e}")))?;
        Ok(Self {
            durability,
            thread: Mutex::new(Some(thread)),
        })
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        {
            let mut w = self
                .durability
                .wanted
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            w.stop = true;
            self.durability.wake.notify_one();
        }
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

fn run(db: &sled::Db, gate: &RwLock<()>, d: &Durability) {
    let mut flushed = d.durable_rv();
    loop {
        let target = {
            let mut w = d.wanted.lock().unwrap_or_else(PoisonError::into_inner);
            while w.committed <= flushed && !w.stop {
                w = d.wake.wait(w).unwrap_or_else(PoisonError::into_inner);
            }
            if w.committed <= flushed {
                return; // stopped with nothing left to flush
            }
            // Writers queued behind the write lock join this flush (bounded by LINGER).
            let deadline = Instant::now() + LINGER;
            while d.arriving.load(Ordering::Acquire) > 0 && !w.stop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                w = d
                    .wake
                    .wait_timeout(w, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            w.committed
        };
        let started = Instant::now();
        let result = {
            let _shared = gate.read().unwrap_or_else(PoisonError::into_inner);
            db.flush()
        };
        d.flush_seconds.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(_) => {
                d.flush_revisions
                    .observe(target.saturating_sub(flushed) as f64);
                flushed = target;
                d.mark_durable(target);
            }
            Err(e) => {
                tracing::error!(error = %e, "flushing the store");
                d.flushed
                    .send_modify(|f| f.failed = Some((target, e.to_string())));
                // The next writer retries; don't spin on a failing disk.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
