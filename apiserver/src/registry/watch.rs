//! Watch: replay from a resourceVersion (or the current state), then live changes, with
//! selector transitions, bookmarks, `sendInitialEvents`, and 410 inside the stream when
//! the requested revision is gone. Runs as a task that ends when the client goes away.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::{with_type_meta, Kind, ListOptions, Registry};
use crate::error::ApiError;
use crate::store::{keep_all, Event, EventType, Scope};

/// Default and cap for how long one watch lasts (kube-apiserver: 30–60 min).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often a bookmark is sent when the client allows them.
const BOOKMARK_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub enum WatchItem {
    Event { kind: EventType, object: Value },
    Bookmark { object: Value },
    Error(ApiError),
}

impl WatchItem {
    pub fn type_str(&self) -> &'static str {
        match self {
            WatchItem::Event { kind, .. } => kind.as_str(),
            WatchItem::Bookmark { .. } => "BOOKMARK",
            WatchItem::Error(_) => "ERROR",
        }
    }
}

/// Checks the options and starts the watch; items arrive on the returned channel.
pub fn start(
    registry: Arc<Registry>,
    kind: Arc<dyn Kind>,
    ns: Option<String>,
    opts: ListOptions,
) -> Result<mpsc::Receiver<WatchItem>, ApiError> {
    let initial_events = opts.send_initial_events.unwrap_or(false);
    if opts.send_initial_events.is_some() {
        let mut causes = Vec::new();
        if opts.resource_version_match.as_deref() != Some("NotOlderThan") {
            causes.push("sendInitialEvents is forbidden for watch unless the resourceVersionMatch is set to NotOlderThan");
        }
        if initial_events && !opts.allow_bookmarks {
            causes.push("sendInitialEvents requires setting allowWatchBookmarks to true");
        }
        if !causes.is_empty() {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!(
                    "ListOptions.meta.k8s.io \"\" is invalid: {}",
                    causes.join(", ")
                ),
            ));
        }
    }
    let rx_events = registry.store.subscribe();
    let (tx, rx) = mpsc::channel(256);
    let timeout = opts
        .timeout_seconds
        // 0 means no client timeout (kube-apiserver's reading), not "end at once".
        .filter(|&t| t > 0)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT)
        .min(DEFAULT_TIMEOUT * 2);
    tokio::spawn(async move {
        let w = Watcher {
            registry,
            kind,
            scope_ns: ns,
            opts,
            tx,
        };
        // Ends on timeout, client gone (send fails), or an error sent in-stream.
        let _ = tokio::time::timeout(timeout, w.run(rx_events, initial_events)).await;
    });
    Ok(rx)
}

struct Watcher {
    registry: Arc<Registry>,
    kind: Arc<dyn Kind>,
    scope_ns: Option<String>,
    opts: ListOptions,
    tx: mpsc::Sender<WatchItem>,
}

/// The client went away.
struct Gone;

impl Watcher {
    async fn run(
        self,
        mut live: broadcast::Receiver<Arc<Event>>,
        initial_events: bool,
    ) -> Result<(), Gone> {
        let rv_opt = self
            .opts
            .resource_version
            .as_deref()
            .filter(|s| !s.is_empty() && *s != "0");
        let mut last = match (rv_opt, initial_events) {
            (Some(rv), false) => {
                let Ok(rv) = rv.parse::<u64>() else {
                    return self
                        .send(WatchItem::Error(ApiError::bad_request(format!(
                            "invalid resource version {rv:?}"
                        ))))
                        .await;
                };
                rv
            }
            _ => {
                // The current state as ADDED events, then changes after it.
                let scope = Scope {
                    resource: self.kind.info().plural.to_string(),
                    namespace: self.scope_ns.clone(),
                };
                let (rv, objects) = match self.registry.store.list(&scope, None, &keep_all) {
                    Ok(x) => x,
                    Err(e) => return self.send(WatchItem::Error(e.into())).await,
                };
                for obj in objects.into_values() {
                    if Registry::matches(&*self.kind, &self.opts, &obj) {
                        self.send(WatchItem::Event {
                            kind: EventType::Added,
                            object: with_type_meta(&*self.kind, obj),
                        })
                        .await?;
                    }
                }
                if initial_events {
                    self.send(WatchItem::Bookmark {
                        object: self.bookmark(rv, true),
                    })
                    .await?;
                }
                rv
            }
        };
        last = self.replay_after(last).await?;
        let mut bookmark = tokio::time::interval(BOOKMARK_EVERY);
        bookmark.tick().await;
        loop {
            tokio::select! {
                ev = live.recv() => match ev {
                    Ok(ev) => {
                        if ev.rv <= last {
                            continue;
                        }
                        if ev.rv > last + 1 {
                            // Missed some (e.g. committed between replay and now): read the log.
                            last = self.replay_after(last).await?;
                            if ev.rv <= last {
                                continue;
                            }
                        }
                        self.emit(&ev).await?;
                        last = ev.rv;
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        last = self.replay_after(last).await?;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                _ = bookmark.tick(), if self.opts.allow_bookmarks => {
                    self.send(WatchItem::Bookmark { object: self.bookmark(last, false) }).await?;
                }
                () = self.tx.closed() => return Err(Gone),
            }
        }
    }

    /// Sends every logged change after `from`; returns the last revision seen. A revision
    /// no longer in the log ends the watch with a 410 ERROR event (clients then relist).
    async fn replay_after(&self, from: u64) -> Result<u64, Gone> {
        let events = match self.registry.events_after(from) {
            Ok(ev) => ev,
            Err(e) => {
                self.send(WatchItem::Error(e)).await?;
                return Err(Gone);
            }
        };
        let mut last = from;
        for ev in events {
            self.emit(&ev).await?;
            last = ev.rv;
        }
        Ok(last)
    }

    async fn emit(&self, ev: &Event) -> Result<(), Gone> {
        let scope = Scope {
            resource: self.kind.info().plural.to_string(),
            namespace: self.scope_ns.clone(),
        };
        if !scope.contains(&ev.key) {
            return Ok(());
        }
        let matches = |o: &Value| Registry::matches(&*self.kind, &self.opts, o);
        let now = matches(&ev.object);
        let before = ev.prev.as_deref().is_some_and(matches);
        let kind = match ev.kind {
            EventType::Added if now => EventType::Added,
            EventType::Modified if before && now => EventType::Modified,
            EventType::Modified if now => EventType::Added,
            EventType::Modified if before => EventType::Deleted,
            EventType::Deleted if before || now => EventType::Deleted,
            _ => return Ok(()),
        };
        self.send(WatchItem::Event {
            kind,
            object: with_type_meta(&*self.kind, (*ev.object).clone()),
        })
        .await
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Value {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        json!({
            "apiVersion": coredump_openapi::API_VERSION,
            "kind": self.kind.info().kind,
            "metadata": meta,
        })
    }

    async fn send(&self, item: WatchItem) -> Result<(), Gone> {
        let is_error = matches!(item, WatchItem::Error(_));
        self.tx.send(item).await.map_err(|_| Gone)?;
        if is_error {
            Err(Gone)
        } else {
            Ok(())
        }
    }
}
