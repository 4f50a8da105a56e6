//! What the cluster tells extension servers to trust, read from ConfigMap
//! `kube-system/extension-apiserver-authentication` and followed as it changes (kube-apiserver
//! rewrites it when its CAs rotate).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use http::header::HeaderName;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use tokio::sync::watch;

use super::requestheader::RequestHeaderConfig;
use super::x509::{CertError, ChainVerifier};

pub const CONFIGMAP_NAMESPACE: &str = "kube-system";
pub const CONFIGMAP_NAME: &str = "extension-apiserver-authentication";

const CLIENT_CA: &str = "client-ca-file";
const RH_CA: &str = "requestheader-client-ca-file";
const RH_ALLOWED_NAMES: &str = "requestheader-allowed-names";
const RH_USERNAME: &str = "requestheader-username-headers";
const RH_UID: &str = "requestheader-uid-headers";
const RH_GROUP: &str = "requestheader-group-headers";
const RH_EXTRA_PREFIX: &str = "requestheader-extra-headers-prefix";

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{key}: not a JSON array of strings: {source}")]
    List {
        key: &'static str,
        source: serde_json::Error,
    },
    #[error("{key}: {name:?} is not a valid header name")]
    HeaderName { key: &'static str, name: String },
    #[error("{key}: {source}")]
    Ca {
        key: &'static str,
        source: CertError,
    },
}

/// The authentication settings in force.
#[derive(Debug, Default)]
pub(crate) struct Trust {
    /// Front-proxy authentication; `None` when the ConfigMap does not configure it.
    pub(crate) request_header: Option<RequestHeaderConfig>,
    /// CA for client certificates naming users directly.
    pub(crate) client_ca: Option<ChainVerifier>,
}

impl Trust {
    pub(crate) fn from_data(data: &BTreeMap<String, String>) -> Result<Self, TrustError> {
        let client_ca =
            match non_empty(data, CLIENT_CA) {
                Some(pem) => Some(ChainVerifier::from_pem(pem.as_bytes()).map_err(|source| {
                    TrustError::Ca {
                        key: CLIENT_CA,
                        source,
                    }
                })?),
                None => None,
            };
        let username_headers = header_names(data, RH_USERNAME)?;
        // Without a CA or a username header nothing can be proven or named: no front proxy.
        let request_header = match non_empty(data, RH_CA) {
            Some(pem) if !username_headers.is_empty() => Some(RequestHeaderConfig {
                verifier: ChainVerifier::from_pem(pem.as_bytes())
                    .map_err(|source| TrustError::Ca { key: RH_CA, source })?,
                allowed_names: string_list(data, RH_ALLOWED_NAMES)?,
                username_headers,
                uid_headers: header_names(data, RH_UID)?,
                group_headers: header_names(data, RH_GROUP)?,
                extra_prefixes: string_list(data, RH_EXTRA_PREFIX)?
                    .into_iter()
                    .map(|p| p.to_ascii_lowercase())
                    .filter(|p| !p.is_empty())
                    .collect(),
            }),
            _ => None,
        };
        Ok(Self {
            request_header,
            client_ca,
        })
    }
}

fn non_empty<'a>(data: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    data.get(key)
        .map(String::as_str)
        .filter(|s| !s.trim().is_empty())
}

/// The `requestheader-*` lists are JSON arrays inside a string; a missing key is an empty list.
fn string_list(
    data: &BTreeMap<String, String>,
    key: &'static str,
) -> Result<Vec<String>, TrustError> {
    match non_empty(data, key) {
        None => Ok(Vec::new()),
        Some(s) => serde_json::from_str(s).map_err(|source| TrustError::List { key, source }),
    }
}

fn header_names(
    data: &BTreeMap<String, String>,
    key: &'static str,
) -> Result<Vec<HeaderName>, TrustError> {
    string_list(data, key)?
        .into_iter()
        .filter(|n| !n.is_empty())
        .map(|name| {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| TrustError::HeaderName { key, name })
        })
        .collect()
}

/// The current settings; `None` until the ConfigMap has been read once.
pub(crate) type TrustRx = watch::Receiver<Option<Arc<Trust>>>;

/// Follows the ConfigMap for the life of the task. A ConfigMap that fails to parse, or one
/// that is deleted, leaves the last good settings in force.
pub(crate) async fn follow(api: Api<ConfigMap>, tx: watch::Sender<Option<Arc<Trust>>>) {
    let config = watcher::Config::default().fields(&format!("metadata.name={CONFIGMAP_NAME}"));
    let events = watcher::watcher(api, config).default_backoff();
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(cm) | Event::InitApply(cm)) => apply(&cm, &tx),
            Ok(Event::Delete(_)) => {
                tracing::warn!(
                    "{CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME} was deleted; keeping the last settings"
                )
            }
            Ok(Event::Init | Event::InitDone) => {}
            Err(e) => tracing::warn!(error = %e, "watching {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}"),
        }
    }
}

fn apply(cm: &ConfigMap, tx: &watch::Sender<Option<Arc<Trust>>>) {
    let version = cm.metadata.resource_version.as_deref().unwrap_or_default();
    let empty = BTreeMap::new();
    match Trust::from_data(cm.data.as_ref().unwrap_or(&empty)) {
        Ok(trust) => {
            tracing::info!(
                resource_version = version,
                front_proxy_cas = trust.request_header.as_ref().map(|r| r.verifier.anchors),
                client_cas = trust.client_ca.as_ref().map(|c| c.anchors),
                allowed_names = ?trust.request_header.as_ref().map(|r| &r.allowed_names),
                "authentication settings loaded"
            );
            tx.send_replace(Some(Arc::new(trust)));
        }
        Err(e) => {
            tracing::error!(resource_version = version, error = %e, "authentication settings rejected; keeping the last ones")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::x509::testpki::TestCa;
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn kubeadm_style_configmap() {
        let cluster = TestCa::new("kubernetes");
        let front = TestCa::new("front-proxy-ca");
        let t = Trust::from_data(&data(&[
            (CLIENT_CA, &cluster.pem),
            (RH_CA, &front.pem),
            (RH_ALLOWED_NAMES, r#"["front-proxy-client"]"#),
            (RH_USERNAME, r#"["X-Remote-User"]"#),
            (RH_UID, r#"["X-Remote-Uid"]"#),
            (RH_GROUP, r#"["X-Remote-Group"]"#),
            (RH_EXTRA_PREFIX, r#"["X-Remote-Extra-"]"#),
        ]))
        .expect("parses");
        let rh = t.request_header.expect("front proxy configured");
        assert_eq!(rh.allowed_names, ["front-proxy-client"]);
        assert_eq!(
            rh.username_headers,
            [HeaderName::from_static("x-remote-user")]
        );
        assert_eq!(rh.uid_headers, [HeaderName::from_static("x-remote-uid")]);
        assert_eq!(
            rh.group_headers,
            [HeaderName::from_static("x-remote-group")]
        );
        assert_eq!(rh.extra_prefixes, ["x-remote-extra-"]);
        assert!(t.client_ca.is_some());
    }

    #[test]
    fn front_proxy_needs_a_ca_and_a_username_header() {
        let front = TestCa::new("front-proxy-ca");
        let no_headers = Trust::from_data(&data(&[(RH_CA, &front.pem)])).expect("parses");
        assert!(no_headers.request_header.is_none());
        let no_ca =
            Trust::from_data(&data(&[(RH_USERNAME, r#"["X-Remote-User"]"#)])).expect("parses");
        assert!(no_ca.request_header.is_none());
        let empty = Trust::from_data(&BTreeMap::new()).expect("parses");
        assert!(empty.request_header.is_none() && empty.client_ca.is_none());
    }

    #[test]
    fn malformed_settings_are_errors() {
        let front = TestCa::new("front-proxy-ca");
        let bad_list = data(&[(RH_CA, &front.pem), (RH_USERNAME, "X-Remote-User")]);
        assert!(matches!(
            Trust::from_data(&bad_list),
            Err(TrustError::List { .. })
        ));
        let bad_name = data(&[(RH_CA, &front.pem), (RH_USERNAME, r#"["X Remote"]"#)]);
        assert!(matches!(
            Trust::from_data(&bad_name),
            Err(TrustError::HeaderName { .. })
        ));
        let bad_ca = data(&[(
            CLIENT_CA,
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        )]);
        assert!(matches!(
            Trust::from_data(&bad_ca),
            Err(TrustError::Ca { .. })
        ));
    }
}
