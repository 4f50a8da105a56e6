//! The rounds against the cluster and the disk: read the Secret, write what
//! [`reconcile()`](super::reconcile()) decided, make the APIService trust the bundle, then
//! write the files the TLS layer serves from.
//!
//! Invariants: the Secret is the one source of truth and is written only with the
//! `resourceVersion` it was read at (a second replica's write makes ours fail with 409 and
//! the round starts over from what it wrote, at most `MAX_ATTEMPTS` times); the files are
//! written only after the APIService's caBundle holds the CA that signed them (or the
//! APIService does not exist yet), so the aggregator never sees a certificate it does
//! not trust; a file is replaced only when its contents change, atomically (a reader sees
//! the old file or the new one), the key first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams, PostParams};

use super::reconcile::{ca_bundle_needs_patch, reconcile, Change, Material};
use super::{SelfCertConfig, SelfCertError};

/// Attempts at a read-modify-write of the Secret before giving up on conflicts.
const MAX_ATTEMPTS: usize = 5;

/// Makes sure the Secret holds a usable CA and serving certificate, the APIService trusts
/// the CA, and the PEM files are in `cfg.dir`; returns the paths of the certificate and the
/// key. Call before serving; then [`spawn`] keeps everything current.
///
/// A missing APIService is not an error (it may be applied after the server starts; the
/// background task sets its caBundle once it exists); any other failure to update it is.
pub async fn ensure(
    client: kube::Client,
    cfg: &SelfCertConfig,
) -> Result<(PathBuf, PathBuf), SelfCertError> {
    sync_at(client, cfg, SystemTime::now()).await?;
    Ok((cfg.cert_path(), cfg.key_path()))
}

/// Runs [`ensure`]'s work every `cfg.check_interval` until the runtime shuts down. Errors
/// are logged and retried on the next round; the files are only replaced after the
/// APIService trusts what they hold.
pub fn spawn(client: kube::Client, cfg: SelfCertConfig) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(cfg.check_interval.max(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate: ensure() just ran
        loop {
            tick.tick().await;
            if let Err(e) = sync_at(client.clone(), &cfg, SystemTime::now()).await {
                tracing::warn!(error = %e, "self-signed certificates not refreshed; retrying");
            }
        }
    })
}

/// What one round did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncReport {
    pub change: Change,
    /// The APIService's caBundle was updated.
    pub ca_bundle_updated: bool,
    /// The APIService does not exist (yet).
    pub apiservice_missing: bool,
    /// The files in `cfg.dir` were (re)written.
    pub files_written: bool,
}

/// One round as of `now` (tests pass a time in the future to see rotation).
pub async fn sync_at(
    client: kube::Client,
    cfg: &SelfCertConfig,
    now: SystemTime,
) -> Result<SyncReport, SelfCertError> {
    cfg.check()?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    let secret_err = |source: kube::Error| SelfCertError::Secret {
        namespace: cfg.namespace.clone(),
        name: cfg.secret_name.clone(),
        source: Box::new(source),
    };
    let mut attempt = 0;
    let (material, change) = loop {
        attempt += 1;
        if attempt > MAX_ATTEMPTS {
            return Err(SelfCertError::Contended {
                namespace: cfg.namespace.clone(),
                name: cfg.secret_name.clone(),
                attempts: MAX_ATTEMPTS,
            });
        }
        let existing = secrets
            .get_opt(&cfg.secret_name)
            .await
            .map_err(secret_err)?;
        let data = existing.as_ref().map(secret_strings).unwrap_or_default();
        let (material, change) = reconcile(&data, cfg, now)?;
        if change == Change::None {
            break (material, change);
        }
        let written = match existing {
            None => {
                let secret = new_secret(cfg, &material);
                secrets.create(&PostParams::default(), &secret).await
            }
            Some(mut secret) => {
                // Replace keeps the resourceVersion: a concurrent writer makes this fail
                // with 409 and we start over from what it wrote.
                secret.data = Some(material.to_data());
                secret.string_data = None;
                secrets
                    .replace(&cfg.secret_name, &PostParams::default(), &secret)
                    .await
            }
        };
        match written {
            Ok(_) => {
                tracing::info!(
                    secret = %format!("{}/{}", cfg.namespace, cfg.secret_name),
                    change = ?change,
                    "self-signed certificates written"
                );
                break (material, change);
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::debug!(reason = %s.reason, "Secret changed concurrently; retrying");
                continue;
            }
            Err(e) => return Err(secret_err(e)),
        }
    };

    let apiservices: Api<APIService> = Api::all(client);
    let api_err = |source: kube::Error| SelfCertError::ApiService {
        name: cfg.apiservice_name.clone(),
        source: Box::new(source),
    };
    let bundle = material.ca_bundle_pem.as_bytes();
    let (ca_bundle_updated, apiservice_missing) = match apiservices
        .get_opt(&cfg.apiservice_name)
        .await
        .map_err(api_err)?
    {
        None => {
            tracing::warn!(
                apiservice = %cfg.apiservice_name,
                "APIService not found; its caBundle will be set once it exists"
            );
            (false, true)
        }
        Some(svc) => {
            let spec = svc.spec.as_ref();
            let current = spec.and_then(|s| s.ca_bundle.as_ref()).map(|b| &b.0[..]);
            let skip = spec.and_then(|s| s.insecure_skip_tls_verify);
            if !ca_bundle_needs_patch(current, skip, bundle) {
                (false, false)
            } else {
                let patch = serde_json::json!({
                    "spec": {
                        "caBundle": ByteString(bundle.to_vec()),
                        "insecureSkipTLSVerify": serde_json::Value::Null,
                    }
                });
                apiservices
                    .patch(
                        &cfg.apiservice_name,
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                    .map_err(api_err)?;
                tracing::info!(apiservice = %cfg.apiservice_name, "caBundle updated");
                (true, false)
            }
        }
    };

    let files_written = write_files(cfg, &material)?;
    Ok(SyncReport {
        change,
        ca_bundle_updated,
        apiservice_missing,
        files_written,
    })
}

fn secret_strings(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?)))
        .collect()
}

fn new_secret(cfg: &SelfCertConfig, material: &Material) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(cfg.secret_name.clone()),
            namespace: Some(cfg.namespace.clone()),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/name".to_string(),
                    "coredump-detector".to_string(),
                ),
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    "coredump-apiserver".to_string(),
                ),
            ])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(material.to_data()),
        ..Default::default()
    }
}

/// Writes the files if their contents differ (an unchanged file keeps its mtime, so the
/// TLS layer does not reload for nothing). The key goes first: the TLS layer keeps the old
/// pair when it reads a mismatched one and loads the new pair on its next poll.
fn write_files(cfg: &SelfCertConfig, m: &Material) -> Result<bool, SelfCertError> {
    std::fs::create_dir_all(&cfg.dir).map_err(|source| SelfCertError::Write {
        path: cfg.dir.clone(),
        source,
    })?;
    let key = write_if_changed(&cfg.key_path(), m.key_pem.as_bytes(), 0o600)?;
    let cert = write_if_changed(&cfg.cert_path(), m.cert_pem.as_bytes(), 0o644)?;
    Ok(key || cert)
}

fn write_if_changed(path: &Path, contents: &[u8], mode: u32) -> Result<bool, SelfCertError> {
    coredump_durable::write_atomic_if_changed(path, contents, mode).map_err(|e| {
        SelfCertError::Write {
            path: path.to_path_buf(),
            source: e.into_io(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn files_are_written_only_when_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let c = SelfCertConfig::new(dir.path().join("tls"));
        let (m, _) = reconcile(&BTreeMap::new(), &c, SystemTime::now()).unwrap();
        assert!(write_files(&c, &m).unwrap());
        assert!(!write_files(&c, &m).unwrap());
        assert_eq!(std::fs::read_to_string(c.cert_path()).unwrap(), m.cert_pem);
        assert_eq!(std::fs::read_to_string(c.key_path()).unwrap(), m.key_pem);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(c.key_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // The pair loads as a rustls signing key.
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(c.key_path()).unwrap();
        rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(key)
            .unwrap();
    }
}
