//! What a request asks for, in Kubernetes' terms: verb, resource, subresource, namespace
//! and name. The same value drives authorization, routing and metrics.
//!
//! Invariant: [`RequestInfo::name`] is the name authorization sees; a handler serves a
//! named object only by [`RequestInfo::path_name`], and a list or watch whose `name`
//! came from a `metadata.name` field selector serves at most that name (the selector is
//! an AND of all its terms, parsed from the same `http::query::Query`).
//!
//! It sits below `http`, `auth` and `metrics`, which all read it, and depends on none
//! of them.

use http::Method;

pub const API_PREFIX: &str = "/apis/coredump.io/v1alpha1";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    /// A resource request (under `/apis/coredump.io/v1alpha1/…`) or a non-resource path.
    pub is_resource: bool,
    /// Kubernetes verb: get, list, watch, create, update, patch, delete, deletecollection
    /// (or the lower-cased HTTP method for non-resource paths).
    pub verb: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub subresource: Option<String>,
    /// The name authorization sees: the path's, or a list's or watch's `metadata.name`
    /// field selector (as kube-apiserver's RequestInfo does).
    pub name: Option<String>,
    /// The name in the URL path: the only one that makes a request about one object.
    pub path_name: Option<String>,
    /// Path segments after the subresource (`…/NAME/status/extra`): nothing is served there.
    pub extra_segments: bool,
    pub path: String,
}

impl RequestInfo {
    /// `watch` is a query parameter; `field_name` is a `metadata.name=` field selector,
    /// which names the object for authorization as kube-apiserver does.
    pub fn parse(method: &Method, path: &str, watch: bool, field_name: Option<&str>) -> Self {
        let non_resource = || Self {
            is_resource: false,
            verb: method.as_str().to_ascii_lowercase(),
            namespace: None,
            resource: String::new(),
            subresource: None,
            name: None,
            path_name: None,
            extra_segments: false,
            path: path.to_string(),
        };
        let Some(rest) = path
            .strip_prefix(API_PREFIX)
            .and_then(|r| r.strip_prefix('/'))
        else {
            return non_resource();
        };
        let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let (namespace, parts) = match parts.as_slice() {
            ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some(ns.to_string()), tail),
            _ => (None, parts.as_slice()),
        };
        let Some((resource, tail)) = parts.split_first() else {
            return non_resource();
        };
        let name = tail.first().map(|s| s.to_string());
        let subresource = tail.get(1).map(|s| s.to_string());
        let collection = name.is_none();
        let verb = match (method.as_str(), collection) {
            ("GET" | "HEAD", true) if watch => "watch",
            ("GET" | "HEAD", true) => "list",
            ("GET" | "HEAD", false) if watch => "watch",
            ("GET" | "HEAD", false) => "get",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "deletecollection",
            ("DELETE", false) => "delete",
            (other, _) => {
                return Self {
                    verb: other.to_ascii_lowercase(),
                    ..non_resource()
                }
            }
        };
        let path_name = name.clone();
        let name = name.or_else(|| {
            matches!(verb, "list" | "watch")
                .then(|| {
                    field_name
                        .filter(|n| valid_path_segment(n))
                        .map(str::to_string)
                })
                .flatten()
        });
        Self {
            is_resource: true,
            verb: verb.to_string(),
            namespace,
            resource: resource.to_string(),
            subresource,
            name,
            path_name,
            extra_segments: tail.len() > 2,
            path: path.to_string(),
        }
    }

    /// Whether the request is about one object named in the URL (not a field selector).
    pub fn names_object(&self) -> bool {
        !matches!(
            self.verb.as_str(),
            "list" | "watch" | "create" | "deletecollection"
        ) || (self.verb == "create" && self.subresource.is_some())
    }
}

/// apimachinery's `IsValidPathSegmentName`: a selector's name that could not be a path
/// segment is not used for authorization (the request is then a plain list).
fn valid_path_segment(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '%'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(method: Method, path: &str, watch: bool) -> RequestInfo {
        RequestInfo::parse(&method, path, watch, None)
    }

    #[test]
    fn verbs_and_scopes() {
        let p = "/apis/coredump.io/v1alpha1/namespaces/ns/coredumps";
        assert_eq!(info(Method::GET, p, false).verb, "list");
        assert_eq!(info(Method::GET, p, true).verb, "watch");
        assert_eq!(info(Method::POST, p, false).verb, "create");
        assert_eq!(info(Method::DELETE, p, false).verb, "deletecollection");
        let one = info(Method::GET, &format!("{p}/a/download"), false);
        assert_eq!(
            (
                one.verb.as_str(),
                one.namespace.as_deref(),
                one.name.as_deref(),
                one.subresource.as_deref()
            ),
            ("get", Some("ns"), Some("a"), Some("download"))
        );
        assert_eq!(
            info(Method::PUT, &format!("{p}/a/upload"), false).verb,
            "update"
        );
        assert_eq!(info(Method::PATCH, &format!("{p}/a"), false).verb, "patch");
        let all = info(Method::GET, "/apis/coredump.io/v1alpha1/coredumps", true);
        assert_eq!((all.verb.as_str(), all.namespace.clone()), ("watch", None));
        let pinned = RequestInfo::parse(&Method::GET, p, true, Some("x"));
        assert_eq!(pinned.name.as_deref(), Some("x"));
        assert_eq!(
            pinned.path_name, None,
            "a selector never names the object served"
        );
        let listed = RequestInfo::parse(&Method::GET, p, false, Some("x"));
        assert_eq!(
            (listed.verb.as_str(), listed.path_name.clone()),
            ("list", None)
        );
        let named = RequestInfo::parse(&Method::GET, &format!("{p}/a"), true, Some("b"));
        assert_eq!(
            named.name.as_deref(),
            Some("a"),
            "the path's name is authorized"
        );
        assert_eq!(
            RequestInfo::parse(&Method::GET, p, false, Some("a/b")).name,
            None
        );
        let nr = info(Method::GET, "/metrics", false);
        assert!(!nr.is_resource);
        assert_eq!(nr.verb, "get");
    }
}
