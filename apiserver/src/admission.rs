//! Quota at admission, inside the write transaction: a new Coredump is admitted against
//! every CoredumpQuota of its namespace (or the server-wide default) and reserves its
//! bytes while `Pending`; over quota it is still recorded, as `Rejected/QuotaExceeded`.
//! Usage is always recomputed from the namespace's Coredumps in the same transaction, so
//! `status.used` is exact by construction, also under concurrency and after restarts.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};

use coredump_openapi::types::{format_bytes, parse_bytes, QUOTA_COUNT, QUOTA_STORAGE};
use coredump_openapi::{COREDUMP, COREDUMP_QUOTA};

use crate::blobs::{BlobKey, BlobStore};
use crate::error::ApiError;
use crate::registry::{invalid, now_rfc3339, phase_of, str_at, Admission, Ctx, Kind};
use crate::store::{Event, EventType, Key, Scope, Tx};
use coredump_openapi::CoredumpPhase;

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

/// Usage of the namespace as the transaction sees it, `except` one object.
pub fn usage(tx: &Tx<'_>, ns: &str, except: Option<&str>) -> Result<Usage, ApiError> {
    let mut u = Usage::default();
    for (k, o) in coredumps(tx, ns)? {
        if Some(k.name.as_str()) != except && counts(&o) {
            // Saturating: validation bounds each size, but a sum must never wrap (a
            // wrapped sum would undercount and admit past the quota).
            u.storage = u.storage.saturating_add(cost(&o));
            u.count = u.count.saturating_add(1);
        }
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

fn add(a: Usage, b: Usage) -> Usage {
    Usage {
        storage: a.storage.saturating_add(b.storage),
        count: a.count.saturating_add(b.count),
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
            "reason": "QuotaExceeded",
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
