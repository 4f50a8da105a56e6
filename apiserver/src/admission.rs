//! Quota at admission, inside the write transaction: a new Coredump is admitted against
//! every CoredumpQuota of its namespace (or the server-wide default) and reserves its
//! bytes while `Pending`; over quota it is still recorded, as `Rejected/QuotaExceeded`.
//!
//! Usage comes from a per-namespace usage record (count and bytes of the Coredumps that
//! hold room), kept in the same transaction as every Coredump write
//! ([`Admission::prepare_commit`]), so admission reads one record instead of decoding
//! the namespace's Coredumps under the write lock (#17). Invariants: in a namespace with a
//! quota (or under a server default) the record, when present, equals the sum over its
//! Coredumps at every revision, because each transaction adds the difference its own
//! writes make before committing, and the store serializes transactions; without a
//! record (an older store, a namespace that just got a quota, or one left without
//! any Coredump) usage is recomputed from the Coredumps and the record written (none
//! while the namespace has no Coredump). Start-up
//! reconciliation rebuilds every record from the Coredumps ([`rebuild_usage`]). So
//! `status.used` is exact by construction, also under concurrency and after restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{json, Value};

use coredump_openapi::types::{format_bytes, parse_bytes, QUOTA_COUNT, QUOTA_STORAGE};
use coredump_openapi::{COREDUMP, COREDUMP_QUOTA};

use crate::blobs::{BlobKey, BlobStore};
use crate::error::ApiError;
use crate::registry::{invalid, now_rfc3339, phase_of, str_at, Admission, Ctx, Kind, Operation};
use crate::store::{Event, EventType, Key, Scope, Tx};
use coredump_openapi::{CoredumpPhase, CoredumpReason};

/// Bytes and count of stored (or reserved) cores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub storage: u64,
    pub count: u64,
}

pub struct QuotaAdmission {
    pub blobs: Arc<dyn BlobStore>,
    /// Limits for namespaces without a CoredumpQuota (`storage`, `count`); empty: none.
    pub default_hard: BTreeMap<String, u64>,
    /// Rejected records kept per namespace; the oldest goes when a new one comes.
    pub max_rejected: usize,
}

/// Whether a Coredump holds (or has reserved) room: Pending and Stored do.
pub fn counts(obj: &Value) -> bool {
    matches!(
        phase_of(obj),
        Some(CoredumpPhase::Pending | CoredumpPhase::Stored)
    )
}

/// The bytes a Coredump takes: its compressed size.
pub fn cost(obj: &Value) -> u64 {
    str_at(obj, "/spec/storedSize")
        .and_then(|q| parse_bytes(&q).ok())
        .unwrap_or(0)
}

pub fn blob_key(obj: &Value) -> Option<BlobKey> {
    Some(BlobKey {
        namespace: str_at(obj, "/metadata/namespace")?,
        name: str_at(obj, "/metadata/name")?,
        uid: str_at(obj, "/metadata/uid")?,
    })
}

fn coredumps(tx: &Tx<'_>, ns: &str) -> Result<Vec<(Key, Value)>, ApiError> {
    Ok(tx.list(&Scope {
        resource: COREDUMP.plural.to_string(),
        namespace: Some(ns.to_string()),
    })?)
}

/// Where a namespace's usage record lives: a resource no kind serves, so it is never
/// listed, watched or counted as an object.
pub const USAGE_RESOURCE: &str = "coredump.io:usage";

pub fn usage_key(ns: &str) -> Key {
    Key::new(USAGE_RESOURCE, ns, "usage")
}

/// What one Coredump (or its absence) adds to the usage.
fn contribution(obj: Option<&Value>) -> Usage {
    match obj {
        Some(o) if counts(o) => Usage {
            storage: cost(o),
            count: 1,
        },
        _ => Usage::default(),
    }
}

fn record_value(u: Usage) -> Value {
    json!({"count": u.count, "storage": u.storage})
}

fn parse_record(v: &Value) -> Option<Usage> {
    Some(Usage {
        count: v.get("count")?.as_u64()?,
        storage: v.get("storage")?.as_u64()?,
    })
}

/// Usage by decoding every Coredump of the namespace, as the transaction sees them.
fn scanned_usage(tx: &Tx<'_>, ns: &str) -> Result<Usage, ApiError> {
    Ok(coredumps(tx, ns)?
        .iter()
        .fold(Usage::default(), |u, (_, o)| add(u, contribution(Some(o)))))
}

/// The committed record plus what this transaction's Coredump writes change (none
/// without a record, or with one that does not parse: then usage is scanned).
fn recorded_usage(tx: &Tx<'_>, ns: &str) -> Result<Option<Usage>, ApiError> {
    let Some(mut u) = tx
        .get_committed(&usage_key(ns))?
        .as_ref()
        .and_then(parse_record)
    else {
        return Ok(None);
    };
    for (k, new) in tx.pending() {
        if k.resource == COREDUMP.plural && k.namespace == ns {
            let old = tx.get_committed(k)?;
            u = add(sub(u, contribution(old.as_ref())), contribution(new));
        }
    }
    Ok(Some(u))
}

/// Usage of the namespace as the transaction sees it, `except` one object.
pub fn usage(tx: &Tx<'_>, ns: &str, except: Option<&str>) -> Result<Usage, ApiError> {
    let total = match recorded_usage(tx, ns)? {
        Some(u) => u,
        None => scanned_usage(tx, ns)?,
    };
    Ok(match except {
        Some(name) => {
            let obj = tx.get(&Key::new(COREDUMP.plural, ns, name))?;
            sub(total, contribution(obj.as_ref()))
        }
        None => total,
    })
}

/// Writes the namespace's record as `u`, if that changes it (an unchanged record takes
/// no revision). A zero record is kept: without it the next admission would decode the
/// namespace's Coredumps that hold no room (Rejected, Failed).
fn write_record(tx: &mut Tx<'_>, ns: &str, u: Usage) -> Result<(), ApiError> {
    let key = usage_key(ns);
    let want = record_value(u);
    if tx.get(&key)?.as_ref() != Some(&want) {
        tx.put(key, want);
    }
    Ok(())
}

/// Removes the namespace's record, if it has one (an absent record takes no revision).
fn remove_record(tx: &mut Tx<'_>, ns: &str) -> Result<(), ApiError> {
    if tx.get(&usage_key(ns))?.is_some() {
        tx.delete(usage_key(ns));
    }
    Ok(())
}

/// Recomputes the namespace's usage record from its Coredumps (start-up reconciliation:
/// a record written by another version, or none yet); a namespace without Coredumps
/// (deleted, say) loses its record.
pub fn rebuild_usage(tx: &mut Tx<'_>, ns: &str) -> Result<Usage, ApiError> {
    let all = coredumps(tx, ns)?;
    let u = all
        .iter()
        .fold(Usage::default(), |u, (_, o)| add(u, contribution(Some(o))));
    if all.is_empty() {
        remove_record(tx, ns)?;
    } else {
        write_record(tx, ns, u)?;
    }
    Ok(u)
}

/// One set of limits: a quota's `spec.hard` (or the server default).
struct Limit {
    name: String,
    hard: BTreeMap<String, u64>,
    evict_oldest: bool,
}

/// Limits that apply: each quota's `spec.hard`, or the default when there is none.
fn limits(tx: &Tx<'_>, ns: &str, default: &BTreeMap<String, u64>) -> Result<Vec<Limit>, ApiError> {
    let quotas = tx.list(&Scope {
        resource: COREDUMP_QUOTA.plural.to_string(),
        namespace: Some(ns.to_string()),
    })?;
    if quotas.is_empty() {
        return Ok(if default.is_empty() {
            vec![]
        } else {
            vec![Limit {
                name: "server default".to_string(),
                hard: default.clone(),
                evict_oldest: false,
            }]
        });
    }
    Ok(quotas
        .into_iter()
        .map(|(k, q)| {
            let hard = q
                .pointer("/spec/hard")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter_map(|(r, v)| Some((r.clone(), parse_bytes(v.as_str()?).ok()?)))
                        .collect()
                })
                .unwrap_or_default();
            let evict = q
                .pointer("/spec/evictOldest")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            Limit {
                name: k.name,
                hard,
                evict_oldest: evict,
            }
        })
        .collect())
}

/// What is over which limit if `add` more were stored; empty when it fits.
fn violations(limits: &[Limit], used: Usage, add: Usage) -> Vec<String> {
    let mut out = Vec::new();
    for Limit { name, hard, .. } in limits {
        if let Some(h) = hard.get(QUOTA_STORAGE) {
            if used.storage.saturating_add(add.storage) > *h {
                out.push(format!(
                    "{name}: requested storage={}, used storage={}, limited storage={}",
                    format_bytes(add.storage),
                    format_bytes(used.storage),
                    format_bytes(*h)
                ));
            }
        }
        if let Some(h) = hard.get(QUOTA_COUNT) {
            if used.count.saturating_add(add.count) > *h {
                out.push(format!(
                    "{name}: requested count={}, used count={}, limited count={h}",
                    add.count, used.count
                ));
            }
        }
    }
    out
}

/// Writes `status.hard`/`status.used` of every quota of the namespace where they changed.
/// `used` is asked only when the namespace has a quota: without one, nothing reads the
/// namespace's coredumps (that would cost O(n) per write).
pub fn write_quota_status(
    tx: &mut Tx<'_>,
    ns: &str,
    used: impl FnOnce(&Tx<'_>) -> Result<Usage, ApiError>,
) -> Result<(), ApiError> {
    let quotas = tx.list(&Scope {
        resource: COREDUMP_QUOTA.plural.to_string(),
        namespace: Some(ns.to_string()),
    })?;
    if quotas.is_empty() {
        return Ok(());
    }
    let used = used(tx)?;
    for (key, mut q) in quotas {
        let status = quota_status(&q, used);
        if q.get("status") != Some(&status) {
            q["status"] = status;
            tx.put(key, q);
        }
    }
    Ok(())
}

fn quota_status(q: &Value, used: Usage) -> Value {
    json!({
        "hard": q.pointer("/spec/hard").cloned().unwrap_or_else(|| json!({})),
        "used": {QUOTA_STORAGE: format_bytes(used.storage), QUOTA_COUNT: used.count.to_string()},
    })
}

// Saturating: validation bounds each size, but a sum must never wrap (a wrapped sum
// would undercount and admit past the quota).
fn add(a: Usage, b: Usage) -> Usage {
    Usage {
        storage: a.storage.saturating_add(b.storage),
        count: a.count.saturating_add(b.count),
    }
}

fn sub(a: Usage, b: Usage) -> Usage {
    Usage {
        storage: a.storage.saturating_sub(b.storage),
        count: a.count.saturating_sub(b.count),
    }
}

impl QuotaAdmission {
    fn admit_coredump(&self, tx: &mut Tx<'_>, ns: &str, obj: &mut Value) -> Result<(), ApiError> {
        let want = Usage {
            storage: cost(obj),
            count: 1,
        };
        let lims = limits(tx, ns, &self.default_hard)?;
        if lims.is_empty() {
            // No quota and no default: nothing to check and no status to keep, so the
            // namespace's coredumps are not read (that would cost O(n) per create).
            obj["status"] = json!({"phase": CoredumpPhase::Pending});
            return Ok(());
        }
        let mut used = usage(tx, ns, None)?;
        let mut over = violations(&lims, used, want);
        if !over.is_empty() && lims.iter().any(|l| l.evict_oldest) {
            // Make room by deleting the oldest stored cores, as long as that helps.
            let mut stored: Vec<(Key, Value)> = coredumps(tx, ns)?
                .into_iter()
                .filter(|(_, o)| phase_of(o) == Some(CoredumpPhase::Stored))
                .collect();
            stored
                .sort_by_key(|(_, o)| str_at(o, "/metadata/creationTimestamp").unwrap_or_default());
            for (k, o) in stored {
                if over.is_empty() {
                    break;
                }
                used.storage = used.storage.saturating_sub(cost(&o));
                used.count = used.count.saturating_sub(1);
                tracing::info!(namespace = ns, evicted = %k.name, "evicting the oldest core to make room");
                tx.delete(k);
                over = violations(&lims, used, want);
            }
        }
        if over.is_empty() {
            obj["status"] = json!({"phase": CoredumpPhase::Pending});
            write_quota_status(tx, ns, |_| Ok(add(used, want)))?;
            return Ok(());
        }
        obj["status"] = json!({
            "phase": CoredumpPhase::Rejected,
            "reason": CoredumpReason::QuotaExceeded,
            "message": format!("exceeded quota: {}", over.join("; ")),
        });
        // Keep a bounded number of rejected records: the oldest goes first.
        let mut rejected: Vec<(Key, Value)> = coredumps(tx, ns)?
            .into_iter()
            .filter(|(_, o)| phase_of(o) == Some(CoredumpPhase::Rejected))
            .collect();
        rejected.sort_by_key(|(_, o)| str_at(o, "/metadata/creationTimestamp").unwrap_or_default());
        let excess = (rejected.len() + 1).saturating_sub(self.max_rejected.max(1));
        for (k, _) in rejected.into_iter().take(excess) {
            tx.delete(k);
        }
        write_quota_status(tx, ns, |_| Ok(used))
    }
}

impl Admission for QuotaAdmission {
    /// Coredumps and their quotas, on every write (reads and transfers are not its
    /// business: the upload marks Stored through its own transaction).
    fn handles(&self, kind: &dyn Kind, op: Operation) -> bool {
        let plural = kind.info().plural;
        (plural == COREDUMP.plural || plural == COREDUMP_QUOTA.plural)
            && matches!(
                op,
                Operation::Create | Operation::Update | Operation::Patch | Operation::Delete
            )
    }

    fn create(
        &self,
        tx: &mut Tx<'_>,
        kind: &dyn Kind,
        obj: &mut Value,
        _ctx: &Ctx,
    ) -> Result<(), ApiError> {
        let ns = str_at(obj, "/metadata/namespace").unwrap_or_default();
        if kind.info().plural == COREDUMP.plural {
            self.admit_coredump(tx, &ns, obj)
        } else {
            let used = usage(tx, &ns, None)?;
            obj["status"] = quota_status(obj, used);
            Ok(())
        }
    }

    fn update(
        &self,
        tx: &mut Tx<'_>,
        kind: &dyn Kind,
        old: &Value,
        new: &mut Value,
        _ctx: &Ctx,
    ) -> Result<(), ApiError> {
        let ns = str_at(new, "/metadata/namespace").unwrap_or_default();
        let name = str_at(new, "/metadata/name").unwrap_or_default();
        if kind.info().plural == COREDUMP_QUOTA.plural {
            // Status is derived: whatever a client wrote, it is recomputed.
            new["status"] = quota_status(new, usage(tx, &ns, None)?);
            return Ok(());
        }
        // Only the server moves a core to Stored (on upload) or out of Rejected; a client
        // may only give up on a pending upload (Failed).
        let (from, to) = (str_at(old, "/status/phase"), str_at(new, "/status/phase"));
        let unchanged = from == to;
        let allowed = unchanged
            || (phase_of(old) == Some(CoredumpPhase::Pending)
                && phase_of(new) == Some(CoredumpPhase::Failed));
        if !allowed {
            return Err(invalid(
                kind,
                &name,
                vec![coredump_openapi::FieldError {
                    field: "status.phase".into(),
                    reason: coredump_openapi::FieldError::FORBIDDEN,
                    message: format!(
                        "Forbidden: may not change from {} to {}: the server sets Stored on upload and Rejected at admission",
                        from.unwrap_or_default(),
                        to.unwrap_or_default()
                    ),
                }],
            ));
        }
        let now = counts(new).then(|| Usage {
            storage: cost(new),
            count: 1,
        });
        write_quota_status(tx, &ns, |tx| {
            let others = usage(tx, &ns, Some(&name))?;
            Ok(now.map_or(others, |n| add(others, n)))
        })
    }

    fn delete(
        &self,
        tx: &mut Tx<'_>,
        kind: &dyn Kind,
        obj: &Value,
        _ctx: &Ctx,
    ) -> Result<(), ApiError> {
        if kind.info().plural == COREDUMP.plural {
            let ns = str_at(obj, "/metadata/namespace").unwrap_or_default();
            let name = str_at(obj, "/metadata/name").unwrap_or_default();
            write_quota_status(tx, &ns, |tx| usage(tx, &ns, Some(&name)))?;
        }
        Ok(())
    }

    /// Keeps the usage record of every namespace whose Coredumps this transaction writes,
    /// where quota applies or a record already exists (a namespace without either never
    /// pays for it).
    fn prepare_commit(&self, tx: &mut Tx<'_>) -> Result<(), ApiError> {
        let touched: BTreeSet<String> = tx
            .pending()
            .filter(|(k, _)| k.resource == COREDUMP.plural)
            .map(|(k, _)| k.namespace.clone())
            .collect();
        for ns in touched {
            let recorded = tx.get_committed(&usage_key(&ns))?.is_some();
            if recorded || !limits(tx, &ns, &self.default_hard)?.is_empty() {
                let u = usage(tx, &ns, None)?;
                // A namespace left without any Coredump (being deleted, say) keeps no
                // record: a scan of nothing costs nothing, and the record would
                // otherwise outlive the namespace until the next start.
                if u == Usage::default() && coredumps(tx, &ns)?.is_empty() {
                    remove_record(tx, &ns)?;
                } else {
                    write_record(tx, &ns, u)?;
                }
            }
        }
        Ok(())
    }

    fn finish(&self, events: &[Arc<Event>]) -> futures::future::BoxFuture<'static, ()> {
        // The objects are gone for good; their cores follow, before the request answers.
        // A failure leaves an orphan that reconciliation removes.
        let keys: Vec<BlobKey> = events
            .iter()
            .filter(|ev| ev.kind == EventType::Deleted && ev.key.resource == COREDUMP.plural)
            .filter_map(|ev| blob_key(&ev.object))
            .collect();
        let blobs = Arc::clone(&self.blobs);
        Box::pin(async move {
            for key in keys {
                if let Err(e) = blobs.delete(&key).await {
                    tracing::warn!(%key, error = %e, "removing the core of a deleted coredump");
                }
            }
        })
    }
}

/// Marks a Coredump `Stored` once its core is durable (the upload path).
pub fn mark_stored(tx: &mut Tx<'_>, key: &Key, uid: &str) -> Result<Value, ApiError> {
    let mut obj = tx.get(key)?.ok_or_else(|| {
        ApiError::new(
            409,
            "Conflict",
            "the coredump was deleted during the upload",
        )
    })?;
    if str_at(&obj, "/metadata/uid").as_deref() != Some(uid) {
        return Err(ApiError::new(
            409,
            "Conflict",
            "the coredump was replaced during the upload",
        ));
    }
    if phase_of(&obj) != Some(CoredumpPhase::Pending) {
        return Err(ApiError::new(
            409,
            "Conflict",
            format!(
                "the coredump is {}, not Pending: its core is not accepted",
                str_at(&obj, "/status/phase").unwrap_or_default()
            ),
        ));
    }
    obj["status"] = json!({"phase": CoredumpPhase::Stored, "storedAt": now_rfc3339()});
    tx.put(key.clone(), obj.clone());
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::blobs::FsBlobs;
    use crate::maintenance::Maintenance;
    use crate::registry::kinds::{CoredumpKind, QuotaKind};
    use crate::registry::{Chain, FieldValidation, Preconditions, Registry, WriteOpts};
    use crate::store::{MetadataStore, SledStore};
    use crate::uploads::Uploads;

    fn registry(dir: &Path) -> Arc<Registry> {
        registry_with(dir, BTreeMap::new())
    }

    fn registry_with(dir: &Path, default_hard: BTreeMap<String, u64>) -> Arc<Registry> {
        let store: Arc<dyn MetadataStore> =
            Arc::new(SledStore::open(&dir.join("db"), 100_000).expect("store"));
        let blobs = Arc::new(FsBlobs::new(&dir.join("cores")).expect("blobs"));
        let chain = Chain(vec![Arc::new(QuotaAdmission {
            blobs,
            default_hard,
            max_rejected: 1000,
        })]);
        let kinds: Vec<Arc<dyn Kind>> = vec![Arc::new(CoredumpKind), Arc::new(QuotaKind)];
        Arc::new(Registry::new(store, kinds, Arc::new(chain)))
    }

    fn coredump(name: &str) -> Value {
        json!({
            "apiVersion": "coredump.io/v1alpha1", "kind": "Coredump",
            "metadata": {"name": name},
            "spec": {
                "nodeName": "n1", "podName": "web", "podUID": "u-1", "containerName": "app",
                "signal": 11, "dumpTime": "2026-01-01T00:00:00Z", "size": "1Ki",
                "storedSize": "100", "sha256": "ab".repeat(32), "executable": "/bin/app",
            }
        })
    }

    async fn create(r: &Registry, name: &str) -> Value {
        r.create(
            &CoredumpKind,
            "ns",
            coredump(name),
            FieldValidation::Strict,
            &mut Ctx::default(),
        )
        .await
        .expect("create")
    }

    /// The namespace's usage record, as stored.
    fn record(r: &Registry) -> Option<Usage> {
        r.store
            .get(&usage_key("ns"))
            .expect("record")
            .as_ref()
            .and_then(parse_record)
    }

    /// The record, the Coredumps summed, and the quota's `status.used`.
    fn observed(r: &Registry) -> (Option<Usage>, Usage, Value) {
        let record = record(r);
        let scope = Scope {
            resource: COREDUMP.plural.into(),
            namespace: Some("ns".into()),
        };
        let (_, all) = r
            .store
            .list(&scope, None, &crate::store::keep_all)
            .expect("list");
        let summed = all
            .values()
            .fold(Usage::default(), |u, o| add(u, contribution(Some(o))));
        let quota = r
            .store
            .get(&Key::new(COREDUMP_QUOTA.plural, "ns", "q"))
            .expect("quota")
            .expect("quota exists");
        (record, summed, quota["status"]["used"].clone())
    }

    fn assert_exact(r: &Registry) -> Usage {
        let (record, summed, used) = observed(r);
        assert_eq!(record, Some(summed), "the record is the Coredumps' sum");
        assert_eq!(
            used,
            json!({"storage": format_bytes(summed.storage), "count": summed.count.to_string()})
        );
        summed
    }

    /// Concurrent creates (some over quota: Rejected, holding nothing), deletes and
    /// give-ups (Pending → Failed) keep the usage record exactly the Coredumps' sum; it
    /// survives a restart, and start-up reconciliation repairs one that drifted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn usage_record_stays_exact_under_concurrency_and_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = registry(dir.path());
        let mut ctx = Ctx::default();
        r.create(
            &QuotaKind,
            "ns",
            json!({"apiVersion": "coredump.io/v1alpha1", "kind": "CoredumpQuota",
                   "metadata": {"name": "q"}, "spec": {"hard": {"count": "30"}}}),
            FieldValidation::Strict,
            &mut ctx,
        )
        .await
        .expect("quota");
        let tasks: Vec<_> = (0..8)
            .map(|w| {
                let r = Arc::clone(&r);
                tokio::spawn(async move {
                    for i in 0..12 {
                        let name = format!("w{w}-{i}");
                        let mut ctx = Ctx::default();
                        r.create(
                            &CoredumpKind,
                            "ns",
                            coredump(&name),
                            FieldValidation::Strict,
                            &mut ctx,
                        )
                        .await
                        .expect("create");
                        match i % 3 {
                            0 => {
                                r.delete(
                                    &CoredumpKind,
                                    "ns",
                                    &name,
                                    &Preconditions::default(),
                                    &ctx,
                                )
                                .await
                                .expect("delete");
                            }
                            1 => {
                                let patch = json!({"status": {"phase": "Failed"}});
                                // Refused for a Rejected one: only a Pending one may fail.
                                let _ = r
                                    .patch(
                                        &CoredumpKind,
                                        "ns",
                                        &name,
                                        (crate::registry::PatchType::Merge, patch),
                                        WriteOpts {
                                            status_only: true,
                                            validation: FieldValidation::Strict,
                                        },
                                        &mut ctx,
                                    )
                                    .await;
                            }
                            _ => {}
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        let before = assert_exact(&r);
        assert!(before.count > 0 && before.count <= 30, "{before:?}");
        drop(r);

        // Restart: the record is read back as it was.
        let r = registry(dir.path());
        assert_eq!(assert_exact(&r), before);
        // A record another version left behind (wrong), repaired at start-up.
        r.commit(|tx| {
            tx.put(
                usage_key("ns"),
                record_value(Usage {
                    storage: 1,
                    count: 999,
                }),
            );
            Ok(())
        })
        .await
        .expect("tamper");
        let m = Maintenance {
            registry: Arc::clone(&r),
            blobs: Arc::new(FsBlobs::new(&dir.path().join("cores")).expect("blobs")),
            uploads: Arc::new(Uploads::default()),
            events: crate::events::EventSink::discard(),
            pending_timeout: Duration::from_secs(900),
            orphan_grace: Duration::from_secs(3600),
        };
        m.reconcile().await.expect("reconcile");
        assert_eq!(assert_exact(&r), before);
        // And it keeps being maintained.
        create(&r, "after").await;
        assert_exact(&r);
    }

    /// Under the server default (no CoredumpQuota) the record is kept too, and admission
    /// uses it: the third create is over the default count.
    #[tokio::test]
    async fn the_server_default_uses_the_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = registry_with(dir.path(), BTreeMap::from([(QUOTA_COUNT.to_string(), 2)]));
        let mut phases = Vec::new();
        for name in ["a", "b", "c"] {
            let o = create(&r, name).await;
            phases.push(str_at(&o, "/status/phase").unwrap_or_default());
        }
        assert_eq!(phases, ["Pending", "Pending", "Rejected"]);
        assert_eq!(
            record(&r),
            Some(Usage {
                storage: 200,
                count: 2
            })
        );
    }

    /// The last Coredump of a namespace takes its record with it (a deleted namespace
    /// leaves nothing behind); the next create starts a new one.
    #[tokio::test]
    async fn the_last_delete_removes_the_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = registry_with(dir.path(), BTreeMap::from([(QUOTA_COUNT.to_string(), 5)]));
        for name in ["a", "b"] {
            create(&r, name).await;
        }
        let delete = |name: &'static str| {
            let r = Arc::clone(&r);
            async move {
                r.delete(
                    &CoredumpKind,
                    "ns",
                    name,
                    &Preconditions::default(),
                    &Ctx::default(),
                )
                .await
                .expect("delete");
            }
        };
        delete("a").await;
        assert_eq!(
            record(&r),
            Some(Usage {
                storage: 100,
                count: 1
            })
        );
        delete("b").await;
        assert_eq!(r.store.get(&usage_key("ns")).expect("get"), None);
        create(&r, "c").await;
        assert_eq!(
            record(&r),
            Some(Usage {
                storage: 100,
                count: 1
            })
        );
    }

    /// A namespace without any quota never gets a record (nor the extra revision).
    #[tokio::test]
    async fn no_quota_no_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = registry(dir.path());
        create(&r, "a").await;
        assert_eq!(r.store.get(&usage_key("ns")).expect("get"), None);
        assert_eq!(r.store.current_rv().expect("rv"), 1);
    }
}
