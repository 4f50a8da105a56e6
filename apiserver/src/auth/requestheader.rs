//! Front-proxy (request-header) authentication: kube-apiserver's aggregator proxies a
//! request with the user in `X-Remote-*` headers and proves itself with a client
//! certificate from the request-header CA. The headers count only after that proof.

use std::collections::BTreeMap;

use http::header::{HeaderMap, HeaderName};

use super::x509::ChainVerifier;
use super::UserInfo;

/// The `requestheader-*` settings of the `extension-apiserver-authentication` ConfigMap.
#[derive(Debug)]
pub(crate) struct RequestHeaderConfig {
    pub(crate) verifier: ChainVerifier,
    /// CNs a front-proxy certificate may have; empty allows any.
    pub(crate) allowed_names: Vec<String>,
    pub(crate) username_headers: Vec<HeaderName>,
    pub(crate) uid_headers: Vec<HeaderName>,
    pub(crate) group_headers: Vec<HeaderName>,
    /// Lower-cased, as `HeaderName`s are.
    pub(crate) extra_prefixes: Vec<String>,
}

impl RequestHeaderConfig {
    pub(crate) fn allows(&self, common_name: &str) -> bool {
        self.allowed_names.is_empty() || self.allowed_names.iter().any(|n| n == common_name)
    }

    /// The user the proxy names; `None` when no username header has a value. Call only for
    /// a connection whose certificate passed [`ChainVerifier::verify`] and [`Self::allows`].
    pub(crate) fn user_from_headers(&self, headers: &HeaderMap) -> Option<UserInfo> {
        let name = first_value(headers, &self.username_headers)?;
        let uid = first_value(headers, &self.uid_headers).unwrap_or_default();
        // One group per header value: a group name may contain a comma.
        let groups = self
            .group_headers
            .iter()
            .flat_map(|h| headers.get_all(h))
            .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .collect();
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        // Prefixes first, so values keep the order of the configured prefixes.
        for prefix in &self.extra_prefixes {
            for (name, value) in headers {
                let Some(key) = name.as_str().strip_prefix(prefix.as_str()) else {
                    continue;
                };
                let Ok(value) = std::str::from_utf8(value.as_bytes()) else {
                    continue;
                };
                extra
                    .entry(unescape_extra_key(key))
                    .or_default()
                    .push(value.to_string());
            }
        }
        Some(UserInfo {
            name,
            uid,
            groups,
            extra,
        })
    }

    /// Whether `name` is one of the headers this configuration reads identity from.
    pub(crate) fn is_identity_header(&self, name: &HeaderName) -> bool {
        self.username_headers.contains(name)
            || self.uid_headers.contains(name)
            || self.group_headers.contains(name)
            || self
                .extra_prefixes
                .iter()
                .any(|p| name.as_str().starts_with(p.as_str()))
    }
}

/// The first non-empty value among `names`, looking at the first value of each header.
fn first_value(headers: &HeaderMap, names: &[HeaderName]) -> Option<String> {
    names
        .iter()
        .filter_map(|h| headers.get(h))
        .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
        .find(|v| !v.is_empty())
        .map(str::to_string)
}

/// Extra keys travel percent-encoded (a key such as `example.org/scopes` contains `/`); the
/// header name is already lower-case. A key with a malformed escape is taken as it is.
pub(crate) fn unescape_extra_key(key: &str) -> String {
    let bytes = key.as_bytes();
    let well_formed = bytes.iter().enumerate().all(|(i, b)| {
        *b != b'%'
            || (bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        return key.to_string();
    }
    match percent_encoding::percent_decode_str(key).decode_utf8() {
        Ok(decoded) => decoded.into_owned(),
        Err(_) => key.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::x509::testpki::TestCa;
    use super::*;
    use http::HeaderValue;

    fn config() -> RequestHeaderConfig {
        let ca = TestCa::new("front-proxy-ca");
        let h = |s: &str| HeaderName::from_bytes(s.as_bytes()).expect("header name");
        RequestHeaderConfig {
            verifier: ChainVerifier::from_pem(ca.pem.as_bytes()).expect("verifier"),
            allowed_names: vec!["front-proxy-client".into()],
            username_headers: vec![h("X-Remote-User"), h("X-Other-User")],
            uid_headers: vec![h("X-Remote-Uid")],
            group_headers: vec![h("X-Remote-Group")],
            extra_prefixes: vec!["x-remote-extra-".into()],
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        map
    }

    #[test]
    fn user_uid_groups_and_extras() {
        let h = headers(&[
            ("X-Remote-User", "alice"),
            ("X-Remote-Uid", "alice-uid"),
            ("X-Remote-Group", "team-a"),
            ("X-Remote-Group", "a,b"),
            ("X-Remote-Group", ""),
            ("X-Remote-Extra-Scopes", "read"),
            ("X-Remote-Extra-Scopes", "write"),
            ("X-Remote-Extra-Example.org%2FRole", "x"),
            (
                "X-Remote-Extra-Authentication.Kubernetes.Io%2Fnode-Name",
                "node-1",
            ),
        ]);
        let u = config().user_from_headers(&h).expect("user");
        assert_eq!(u.name, "alice");
        assert_eq!(u.uid, "alice-uid");
        // Not comma-split; empty values dropped.
        assert_eq!(u.groups, ["team-a", "a,b"]);
        assert_eq!(u.extra["scopes"], ["read", "write"]);
        assert_eq!(u.extra["example.org/role"], ["x"]);
        assert_eq!(
            u.extra["authentication.kubernetes.io/node-name"],
            ["node-1"]
        );
    }

    #[test]
    fn first_non_empty_username_header_wins() {
        let c = config();
        let h = headers(&[("X-Remote-User", ""), ("X-Other-User", "bob")]);
        assert_eq!(c.user_from_headers(&h).map(|u| u.name), Some("bob".into()));
        let h = headers(&[("X-Remote-User", "alice"), ("X-Other-User", "bob")]);
        assert_eq!(
            c.user_from_headers(&h).map(|u| u.name),
            Some("alice".into())
        );
        assert!(c
            .user_from_headers(&headers(&[("X-Remote-Group", "g")]))
            .is_none());
        assert!(c
            .user_from_headers(&headers(&[("X-Remote-User", "")]))
            .is_none());
    }

    #[test]
    fn allowed_names() {
        let mut c = config();
        assert!(c.allows("front-proxy-client"));
        assert!(!c.allows("not-the-aggregator"));
        c.allowed_names.clear();
        assert!(c.allows("anyone"));
    }

    #[test]
    fn identity_headers_are_recognised_for_stripping() {
        let c = config();
        for n in [
            "x-remote-user",
            "x-other-user",
            "x-remote-uid",
            "x-remote-group",
            "x-remote-extra-foo",
        ] {
            assert!(c.is_identity_header(&HeaderName::from_static(n)), "{n}");
        }
        assert!(!c.is_identity_header(&HeaderName::from_static("accept")));
    }

    #[test]
    fn extra_keys_unescape_only_when_well_formed() {
        assert_eq!(unescape_extra_key("a%2fb"), "a/b");
        assert_eq!(unescape_extra_key("a%zzb"), "a%zzb");
        assert_eq!(unescape_extra_key("a%2"), "a%2");
        // Invalid UTF-8 after decoding: kept as sent.
        assert_eq!(unescape_extra_key("a%ff"), "a%ff");
        assert_eq!(unescape_extra_key("plain"), "plain");
    }
}
