//! Background upkeep: at start, quota usage is recomputed and cores whose object is gone
//! (or that a crashed upload left for a still-Pending object) are removed; then,
//! periodically, pending uploads that never arrived expire and cores older than their
//! namespace's `maxAge` are deleted.
//!
//! Invariant: a blob is removed here only under its [`crate::uploads::UploadGuard`] and
//! after reading its object again, so a core an upload is storing, or has just stored,
//! is never taken for a leftover.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use coredump_openapi::types::parse_duration;
use coredump_openapi::{COREDUMP, COREDUMP_QUOTA};

use crate::admission::{blob_key, counts, usage, write_quota_status};
use crate::blobs::BlobStore;
use crate::error::ApiError;
use crate::registry::{phase_of, str_at, Ctx, Kind, Preconditions, Registry};
use crate::store::{Key, Scope};
use crate::uploads::Uploads;
use coredump_openapi::CoredumpPhase;

pub struct Maintenance {
    pub registry: Arc<Registry>,
    pub blobs: Arc<dyn BlobStore>,
    pub uploads: Arc<Uploads>,
    pub events: Arc<crate::events::EventSink>,
    pub pending_timeout: Duration,
}

fn age_secs(obj: &Value, now: i64) -> Option<i64> {
    let created = str_at(obj, "/metadata/creationTimestamp")?
        .parse::<jiff::Timestamp>()
        .ok()?;
    Some(now - created.as_second())
}

impl Maintenance {
    fn all(&self, resource: &str) -> Result<Vec<(Key, Value)>, ApiError> {
        let (_, objects) = self.registry.store.list_at(
            &Scope {
                resource: resource.to_string(),
                namespace: None,
            },
            None,
        )?;
        Ok(objects.into_iter().collect())
    }

    /// Makes derived state agree with the objects: quota usage, and the files on disk.
    pub async fn reconcile(&self) -> Result<(), ApiError> {
        let mut namespaces: Vec<String> = self
            .all(COREDUMP_QUOTA.plural)?
            .into_iter()
            .map(|(k, _)| k.namespace)
            .collect();
        namespaces.dedup();
        for ns in namespaces {
            self.registry
                .commit(|tx| write_quota_status(tx, &ns, |tx| usage(tx, &ns, None)))
                .await?;
        }
        let coredumps = self.all(COREDUMP.plural)?;
        let stored_keys: std::collections::BTreeSet<_> = coredumps
            .iter()
            .filter(|(_, o)| phase_of(o) == Some(CoredumpPhase::Stored))
            .filter_map(|(_, o)| blob_key(o))
            .collect();
        let blobs = self.blobs.clone();
        let stored = tokio::task::spawn_blocking(move || blobs.list())
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::internal(e.to_string()))?;
        for key in stored.iter().filter(|k| !stored_keys.contains(*k)) {
            self.remove_leftover(key).await?;
        }
        let on_disk: std::collections::BTreeSet<_> = stored.into_iter().collect();
        for (key, obj) in coredumps {
            let stored_phase = phase_of(&obj) == Some(CoredumpPhase::Stored);
            if stored_phase && blob_key(&obj).is_some_and(|b| !on_disk.contains(&b)) {
                tracing::error!(namespace = %key.namespace, name = %key.name, "a Stored coredump has no core file");
                self.fail(&key, "CoreMissing", "the stored core file is missing")
                    .await?;
            }
        }
        Ok(())
    }

    /// Removes a blob that no Stored coredump owns: its object is gone or was replaced,
    /// or an upload committed the file and died before marking it Stored (the object is
    /// still Pending and the agent will upload again). Skipped while an upload holds it.
    async fn remove_leftover(&self, key: &crate::blobs::BlobKey) -> Result<(), ApiError> {
        let Some(_guard) = self.uploads.try_begin(&key.to_string()) else {
            return Ok(());
        };
        let store_key = Key::new(COREDUMP.plural, &key.namespace, &key.name);
        let obj = self.registry.store.get(&store_key)?;
        let owned = obj.as_ref().is_some_and(|o| {
            blob_key(o).as_ref() == Some(key) && phase_of(o) == Some(CoredumpPhase::Stored)
        });
        if owned {
            return Ok(());
        }
        tracing::info!(%key, "removing a core no stored coredump owns");
        if let Err(e) = self.blobs.delete(key) {
            tracing::warn!(%key, error = %e, "removing a leftover core");
        }
        Ok(())
    }

    /// Moves a counting coredump to Failed and frees what it held.
    async fn fail(&self, key: &Key, reason: &str, message: &str) -> Result<(), ApiError> {
        self.registry
            .commit(|tx| {
                let Some(mut obj) = tx.get(key)? else {
                    return Ok(());
                };
                if !counts(&obj) {
                    return Ok(());
                }
                obj["status"] =
                    json!({"phase": CoredumpPhase::Failed, "reason": reason, "message": message});
                tx.put(key.clone(), obj);
                write_quota_status(tx, &key.namespace, |tx| usage(tx, &key.namespace, None))
            })
            .await?;
        Ok(())
    }

    /// One round of expiry and retention.
    pub async fn tick(&self) -> Result<(), ApiError> {
        let now = jiff::Timestamp::now().as_second();
        let pending_limit = i64::try_from(self.pending_timeout.as_secs()).unwrap_or(i64::MAX);
        let coredumps = self.all(COREDUMP.plural)?;
        for (key, obj) in &coredumps {
            let pending = phase_of(obj) == Some(CoredumpPhase::Pending);
            if pending && age_secs(obj, now).is_some_and(|a| a > pending_limit) {
                tracing::info!(namespace = %key.namespace, name = %key.name, "upload never arrived; releasing the reservation");
                self.fail(
                    key,
                    "UploadTimeout",
                    &format!("no core was uploaded within {}s", pending_limit),
                )
                .await?;
            }
        }
        let Some(kind) = self.registry.kind(COREDUMP.plural) else {
            return Ok(());
        };
        for (qkey, quota) in self.all(COREDUMP_QUOTA.plural)? {
            let Some(max_age) =
                str_at(&quota, "/spec/maxAge").and_then(|d| parse_duration(&d).ok())
            else {
                continue;
            };
            let limit = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
            for (key, obj) in coredumps
                .iter()
                .filter(|(k, _)| k.namespace == qkey.namespace)
            {
                if age_secs(obj, now).is_some_and(|a| a > limit) {
                    tracing::info!(namespace = %key.namespace, name = %key.name, quota = %qkey.name, "deleting a core older than maxAge");
                    match self
                        .registry
                        .delete(
                            &*kind as &dyn Kind,
                            &key.namespace,
                            &key.name,
                            &Preconditions::default(),
                            &Ctx::default(),
                        )
                        .await
                    {
                        Ok(_) => self.events.record(crate::events::Note {
                            namespace: key.namespace.clone(),
                            name: key.name.clone(),
                            uid: str_at(obj, "/metadata/uid").unwrap_or_default(),
                            warning: false,
                            reason: "DeletedByRetention",
                            message: format!(
                                "older than the maxAge of CoredumpQuota {}",
                                qkey.name
                            ),
                        }),
                        Err(e) if e.code == 404 => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }

    pub fn spawn(self, every: Duration) {
        tokio::spawn(async move {
            if let Err(e) = self.reconcile().await {
                tracing::error!(error = %e, "start-up reconciliation");
            }
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Err(e) = self.tick().await {
                    tracing::warn!(error = %e, "maintenance round");
                }
            }
        });
    }
}
