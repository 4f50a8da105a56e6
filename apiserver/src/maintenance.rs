//! Background upkeep: at start, quota usage is recomputed and the blob store is
//! reconciled with the Coredumps (whatever the backend: a directory or a bucket); then,
//! periodically, pending uploads that never arrived expire, cores older than their
//! namespace's `maxAge` are deleted, and every `--reconcile-interval` the blob store is
//! reconciled again: blobs no Stored Coredump owns are removed (those without any
//! Coredump after `--orphan-grace-period`), Stored Coredumps whose blob is missing
//! become `Failed/CoreMissing`.
//!
//! Invariant: a blob is removed here only under its [`crate::uploads::UploadGuard`] and
//! after reading its object again, so a core an upload is storing, or has just stored,
//! is never taken for a leftover.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use coredump_openapi::types::parse_duration;
use coredump_openapi::{COREDUMP, COREDUMP_QUOTA};

use crate::admission::{blob_key, rebuild_usage, usage, write_quota_status, USAGE_RESOURCE};
use crate::blobs::{BlobKey, BlobStore};
use crate::error::ApiError;
use crate::registry::{phase_of, str_at, Ctx, Kind, Preconditions, Registry};
use crate::store::{keep_all, Key, Scope};
use crate::uploads::Uploads;
use coredump_openapi::{CoredumpPhase, CoredumpReason, EventReason};

pub struct Maintenance {
    pub registry: Arc<Registry>,
    pub blobs: Arc<dyn BlobStore>,
    pub uploads: Arc<Uploads>,
    pub events: Arc<crate::events::EventSink>,
    pub pending_timeout: Duration,
    /// How old a blob without any Coredump must be before reconciliation removes it.
    pub orphan_grace: Duration,
}

fn age_secs(obj: &Value, now: i64) -> Option<i64> {
    let created = str_at(obj, "/metadata/creationTimestamp")?
        .parse::<jiff::Timestamp>()
        .ok()?;
    Some(now - created.as_second())
}

impl Maintenance {
    fn all(&self, resource: &str) -> Result<Vec<(Key, Value)>, ApiError> {
        let (_, objects) = self.registry.store.list(
            &Scope {
                resource: resource.to_string(),
                namespace: None,
            },
            None,
            &keep_all,
        )?;
        Ok(objects.into_iter().collect())
    }

    /// Makes derived state agree with the objects at start-up: quota usage (the usage
    /// records rebuilt from the Coredumps, and the quotas' status), then the blob store
    /// ([`Self::reconcile_blobs`]).
    pub async fn reconcile(&self) -> Result<(), ApiError> {
        let namespaces: BTreeSet<String> = self
            .all(COREDUMP_QUOTA.plural)?
            .into_iter()
            .chain(self.all(USAGE_RESOURCE)?)
            .map(|(k, _)| k.namespace)
            .collect();
        for ns in namespaces {
            self.registry
                .commit(|tx| {
                    let used = rebuild_usage(tx, &ns)?;
                    write_quota_status(tx, &ns, |_| Ok(used))
                })
                .await?;
        }
        self.reconcile_blobs().await
    }

    /// Makes the blob store agree with the Coredumps, whatever the backend: a blob no
    /// Stored Coredump owns is removed (see `remove_leftover`), and a Stored Coredump
    /// whose blob is missing becomes `Failed/CoreMissing` (freeing its quota). Run at
    /// start-up and every `--reconcile-interval`.
    pub async fn reconcile_blobs(&self) -> Result<(), ApiError> {
        let coredumps = self.all(COREDUMP.plural)?;
        let stored_keys: BTreeSet<_> = coredumps
            .iter()
            .filter(|(_, o)| phase_of(o) == Some(CoredumpPhase::Stored))
            .filter_map(|(_, o)| blob_key(o))
            .collect();
        // Listed after the Coredumps: a Stored one's blob was committed before it became
        // Stored, so it is in this listing unless it was deleted since.
        let stored = self.blobs.list().await?;
        let now = SystemTime::now();
        for entry in stored.iter().filter(|e| !stored_keys.contains(&e.key)) {
            // Backends may truncate the time to the second (HTTP dates): the age counts
            // from the end of that second, so a blob is never taken as older than it is.
            let modified = entry.modified + Duration::from_secs(1);
            let age = now.duration_since(modified).unwrap_or_default();
            self.remove_leftover(&entry.key, age).await?;
        }
        let present: BTreeSet<_> = stored.into_iter().map(|e| e.key).collect();
        for (key, obj) in coredumps {
            let stored_phase = phase_of(&obj) == Some(CoredumpPhase::Stored);
            if let Some(blob) = blob_key(&obj).filter(|b| stored_phase && !present.contains(b)) {
                tracing::error!(namespace = %key.namespace, name = %key.name, "a Stored coredump has no core in the blob store");
                self.fail(
                    &key,
                    &blob.uid,
                    CoredumpPhase::Stored,
                    CoredumpReason::CoreMissing,
                    "the stored core is missing from the core storage",
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Removes a blob that no Stored coredump owns, under its upload guard (skipped while
    /// an upload holds it) and after reading its object again:
    /// - its Coredump (same uid) is there but not Stored: an upload committed the blob and
    ///   died before marking it Stored (the agent uploads again, which needs the key free),
    ///   or the Coredump failed meanwhile: removed now;
    /// - no Coredump has its uid (deleted, or re-created under the same name) and its core
    ///   could not be removed then: removed once it is older than `--orphan-grace-period`,
    ///   so a blob that something outside this server's guards is still writing or
    ///   marking is never taken for an orphan.
    async fn remove_leftover(&self, key: &BlobKey, age: Duration) -> Result<(), ApiError> {
        let Some(_guard) = self.uploads.try_begin(&key.to_string()) else {
            return Ok(());
        };
        let store_key = Key::new(COREDUMP.plural, &key.namespace, &key.name);
        let obj = self.registry.store.get(&store_key)?;
        let ours = obj.as_ref().filter(|o| blob_key(o).as_ref() == Some(key));
        let remove = match ours {
            Some(o) => phase_of(o) != Some(CoredumpPhase::Stored),
            None => age >= self.orphan_grace,
        };
        if !remove {
            return Ok(());
        }
        tracing::info!(%key, "removing a core no stored coredump owns");
        if let Err(e) = self.blobs.delete(key).await {
            tracing::warn!(%key, error = %e, "removing a leftover core");
        }
        Ok(())
    }

    /// Moves a coredump to Failed and frees what it held, if it is still the incarnation
    /// `uid` and still in phase `from` (an upload may have finished meanwhile).
    async fn fail(
        &self,
        key: &Key,
        uid: &str,
        from: CoredumpPhase,
        reason: CoredumpReason,
        message: &str,
    ) -> Result<(), ApiError> {
        self.registry
            .commit(|tx| {
                let Some(mut obj) = tx.get(key)? else {
                    return Ok(());
                };
                let same = str_at(&obj, "/metadata/uid").as_deref() == Some(uid);
                if !same || phase_of(&obj) != Some(from) {
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
                let Some(blob) = blob_key(obj) else {
                    continue;
                };
                // An upload in progress has arrived: it is not timed out under its feet
                // (it would be refused at its end). Held while failing, so none starts.
                let Some(_guard) = self.uploads.try_begin(&blob.to_string()) else {
                    continue;
                };
                tracing::info!(namespace = %key.namespace, name = %key.name, "upload never arrived; releasing the reservation");
                self.fail(
                    key,
                    &blob.uid,
                    CoredumpPhase::Pending,
                    CoredumpReason::UploadTimeout,
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
                            reason: EventReason::DeletedByRetention,
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

    /// Reconciles at start, then runs [`Self::tick`] `every` and
    /// [`Self::reconcile_blobs`] every `reconcile_every`.
    pub fn spawn(self, every: Duration, reconcile_every: Duration) {
        tokio::spawn(async move {
            if let Err(e) = self.reconcile().await {
                tracing::error!(error = %e, "start-up reconciliation");
            }
            let mut reconciled = Instant::now();
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Err(e) = self.tick().await {
                    tracing::warn!(error = %e, "maintenance round");
                }
                if reconciled.elapsed() >= reconcile_every {
                    reconciled = Instant::now();
                    if let Err(e) = self.reconcile_blobs().await {
                        tracing::warn!(error = %e, "reconciling the core storage");
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::{mark_stored, QuotaAdmission};
    use crate::blobs::{FsBlobs, ObjectBlobs};
    use crate::registry::kinds::{CoredumpKind, QuotaKind};
    use crate::registry::{Chain, FieldValidation};
    use crate::store::SledStore;
    use bytes::Bytes;

    fn maintenance(dir: &std::path::Path, blobs: Arc<dyn BlobStore>) -> Maintenance {
        let store: Arc<dyn crate::store::MetadataStore> =
            Arc::new(SledStore::open(&dir.join("db"), 1000).expect("store"));
        let kinds: Vec<Arc<dyn Kind>> = vec![Arc::new(CoredumpKind), Arc::new(QuotaKind)];
        let chain = Chain(vec![Arc::new(QuotaAdmission {
            blobs: Arc::clone(&blobs),
            default_hard: Default::default(),
            max_rejected: 100,
        })]);
        Maintenance {
            registry: Arc::new(Registry::new(store, kinds, Arc::new(chain))),
            blobs,
            uploads: Arc::new(Uploads::default()),
            events: crate::events::EventSink::discard(),
            pending_timeout: Duration::from_secs(900),
            orphan_grace: Duration::from_secs(3600),
        }
    }

    async fn create(m: &Maintenance, name: &str) -> BlobKey {
        let body = json!({
            "apiVersion": "coredump.io/v1alpha1", "kind": "Coredump",
            "metadata": {"name": name},
            "spec": {
                "nodeName": "n1", "podName": "web", "podUID": "u-1", "containerName": "app",
                "signal": 11, "dumpTime": "2026-01-01T00:00:00Z", "size": "1Ki",
                "storedSize": "4", "sha256": "ab".repeat(32), "executable": "/bin/app",
            }
        });
        let obj = m
            .registry
            .create(
                &CoredumpKind,
                "ns",
                body,
                FieldValidation::Strict,
                &mut Ctx::default(),
            )
            .await
            .expect("create");
        blob_key(&obj).expect("key")
    }

    async fn put(m: &Maintenance, key: &BlobKey) {
        let mut w = m.blobs.create(key).await.expect("create blob");
        w.write(Bytes::from_static(b"core")).await.expect("write");
        w.commit(4).await.expect("commit");
    }

    async fn stored(m: &Maintenance, key: &BlobKey) {
        put(m, key).await;
        let store_key = Key::new(COREDUMP.plural, &key.namespace, &key.name);
        m.registry
            .commit(|tx| mark_stored(tx, &store_key, &key.uid))
            .await
            .expect("mark stored");
    }

    async fn status(m: &Maintenance, name: &str) -> (Option<String>, Option<String>) {
        let o = m
            .registry
            .get(&CoredumpKind, "ns", name)
            .await
            .expect("get");
        (str_at(&o, "/status/phase"), str_at(&o, "/status/reason"))
    }

    async fn keys(m: &Maintenance) -> Vec<String> {
        let list = m.blobs.list().await.expect("list");
        list.into_iter().map(|e| e.key.name).collect()
    }

    /// The same reconciliation on whichever backend.
    async fn reconciles(m: &mut Maintenance) {
        let kept = create(m, "kept").await;
        stored(m, &kept).await;
        // An upload that committed its blob and died before marking it Stored.
        let crashed = create(m, "crashed").await;
        put(m, &crashed).await;
        // A Stored core whose blob went missing.
        let lost = create(m, "lost").await;
        stored(m, &lost).await;
        m.blobs.delete(&lost).await.expect("delete");
        // A blob without any Coredump (its delete failed, say).
        let orphan = BlobKey {
            name: "orphan".into(),
            ..kept.clone()
        };
        put(m, &orphan).await;
        // Held by an upload in progress: never touched.
        let busy = create(m, "busy").await;
        put(m, &busy).await;
        let guard = m.uploads.try_begin(&busy.to_string()).expect("guard");

        m.reconcile().await.expect("reconcile");
        assert_eq!(
            keys(m).await,
            ["busy", "kept", "orphan"],
            "the orphan is young"
        );
        assert_eq!(status(m, "kept").await, (Some("Stored".into()), None));
        assert_eq!(status(m, "crashed").await, (Some("Pending".into()), None));
        assert_eq!(
            status(m, "lost").await,
            (Some("Failed".into()), Some("CoreMissing".into()))
        );

        m.orphan_grace = Duration::ZERO;
        m.reconcile_blobs().await.expect("reconcile");
        assert_eq!(keys(m).await, ["busy", "kept"], "past its grace period");
        drop(guard);
        m.reconcile_blobs().await.expect("reconcile");
        assert_eq!(keys(m).await, ["kept"]);
        assert_eq!(status(m, "kept").await, (Some("Stored".into()), None));
    }

    #[tokio::test]
    async fn an_upload_in_progress_is_not_timed_out_under_its_feet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = Arc::new(FsBlobs::new(&dir.path().join("cores")).expect("blobs"));
        let mut m = maintenance(dir.path(), blobs);
        m.pending_timeout = Duration::ZERO;
        let key = create(&m, "slow").await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let guard = m.uploads.try_begin(&key.to_string()).expect("guard");
        m.tick().await.expect("tick");
        assert_eq!(status(&m, "slow").await, (Some("Pending".into()), None));
        drop(guard);
        m.tick().await.expect("tick");
        assert_eq!(
            status(&m, "slow").await,
            (Some("Failed".into()), Some("UploadTimeout".into()))
        );
    }

    #[tokio::test]
    async fn reconciliation_on_the_filesystem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = Arc::new(FsBlobs::new(&dir.path().join("cores")).expect("blobs"));
        reconciles(&mut maintenance(dir.path(), blobs)).await;
    }

    #[tokio::test]
    async fn reconciliation_on_object_storage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mem = Arc::new(object_store::memory::InMemory::new());
        let blobs = Arc::new(ObjectBlobs::new(mem, "prefix", "memory://prefix"));
        reconciles(&mut maintenance(dir.path(), blobs)).await;
    }
}
