//! Namespace lifecycle at create, as kube-apiserver's NamespaceLifecycle admission does:
//! an object may be created only in a namespace that exists and is not terminating.
//!
//! Namespaces come from an informer (metadata only); a name the informer has not seen yet
//! (a namespace created a moment ago) is looked up live before the create is refused, so
//! the cache's lag never refuses a valid create. Nothing is created in a namespace that
//! is gone: such an object would be an orphan nothing cleans up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;

use crate::error::ApiError;

pub struct Namespaces {
    client: kube::Client,
    reader: reflector::Store<PartialObjectMeta<Namespace>>,
    ready: Arc<AtomicBool>,
}

/// What is known of one namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    Active,
    Terminating,
    Missing,
}

/// The decision, apart from where the facts came from.
pub fn admit_create(ns: &str, state: Lifecycle) -> Result<(), ApiError> {
    match state {
        Lifecycle::Active => Ok(()),
        Lifecycle::Terminating => Err(ApiError::forbidden(format!(
            "unable to create new content in namespace {ns} because it is being terminated"
        ))),
        Lifecycle::Missing => Err(ApiError::namespace_not_found(ns)),
    }
}

fn lifecycle(meta: Option<&PartialObjectMeta<Namespace>>) -> Lifecycle {
    match meta {
        None => Lifecycle::Missing,
        Some(m) if m.metadata.deletion_timestamp.is_some() => Lifecycle::Terminating,
        Some(_) => Lifecycle::Active,
    }
}

impl Namespaces {
    /// Starts the informer; it retries with backoff for as long as the server runs.
    pub fn spawn(client: kube::Client) -> Arc<Self> {
        // An Api of PartialObjectMeta asks for metadata only.
        let api: kube::Api<PartialObjectMeta<Namespace>> = kube::Api::all(client.clone());
        let (reader, writer) = reflector::store();
        let ready = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ready);
        let events = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer);
        tokio::spawn(async move {
            futures::pin_mut!(events);
            while let Some(ev) = events.next().await {
                match ev {
                    Ok(Event::InitDone) => flag.store(true, Ordering::Release),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "watching namespaces"),
                }
            }
        });
        Arc::new(Self {
            client,
            reader,
            ready,
        })
    }

    /// For tests: an informer that has listed `active` namespaces and nothing else, as
    /// the watcher's initial list would leave it; a name not among them is looked up
    /// through `client`, as in the server.
    #[cfg(test)]
    pub(crate) fn seeded(client: kube::Client, active: &[&str]) -> Arc<Self> {
        use kube::core::PartialObjectMetaExt;
        let (reader, mut writer) = reflector::store();
        writer.apply_watcher_event(&Event::Init);
        for ns in active {
            let meta = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(ns.to_string()),
                ..Default::default()
            };
            writer.apply_watcher_event(&Event::InitApply(meta.into_response_partial()));
        }
        writer.apply_watcher_event(&Event::InitDone);
        Arc::new(Self {
            client,
            reader,
            ready: Arc::new(AtomicBool::new(true)),
        })
    }

    /// Whether the informer has listed the namespaces once.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub async fn check_create(&self, ns: &str) -> Result<(), ApiError> {
        let cached = self.reader.get(&ObjectRef::new(ns));
        let state = match cached {
            Some(m) => lifecycle(Some(&m)),
            None => {
                let api: kube::Api<Namespace> = kube::Api::all(self.client.clone());
                let live = api.get_metadata_opt(ns).await.map_err(|e| {
                    tracing::warn!(error = %e, "looking up a namespace");
                    ApiError::unavailable(format!("cannot verify namespace {ns}: {e}"))
                })?;
                lifecycle(live.as_ref())
            }
        };
        admit_create(ns, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_need_an_active_namespace() {
        assert!(admit_create("a", Lifecycle::Active).is_ok());
        let gone = admit_create("a", Lifecycle::Missing).expect_err("missing");
        assert_eq!(
            (gone.code, gone.message.as_str()),
            (404, "namespaces \"a\" not found")
        );
        assert_eq!(
            admit_create("a", Lifecycle::Terminating)
                .expect_err("terminating")
                .code,
            403
        );
    }
}
