//! Authorization by SubjectAccessReview: what is asked of kube-apiserver for a request, and
//! the 403 answered, worded as kube-apiserver words it.

use std::collections::BTreeMap;

use coredump_openapi::{GROUP, VERSION};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};

use super::UserInfo;
use crate::error::{ApiError, Details};
use crate::reqinfo::RequestInfo;

/// Who asks to do what: the SubjectAccessReview of one request, and the cache key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Attributes {
    pub user: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Resource {
        verb: String,
        /// Empty for cluster-wide requests.
        namespace: String,
        group: String,
        version: String,
        resource: String,
        subresource: String,
        /// Empty when the request names no object.
        name: String,
    },
    NonResource {
        verb: String,
        path: String,
    },
}

/// A SubjectAccessReview's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

impl Attributes {
    pub fn new(user: &UserInfo, info: &RequestInfo) -> Self {
        let action = if info.is_resource {
            Action::Resource {
                verb: info.verb.clone(),
                namespace: info.namespace.clone().unwrap_or_default(),
                group: GROUP.to_string(),
                version: VERSION.to_string(),
                resource: info.resource.clone(),
                subresource: info.subresource.clone().unwrap_or_default(),
                name: info.name.clone().unwrap_or_default(),
            }
        } else {
            Action::NonResource {
                verb: info.verb.clone(),
                path: info.path.clone(),
            }
        };
        Self {
            user: user.name.clone(),
            uid: user.uid.clone(),
            groups: user.groups.clone(),
            extra: user.extra.clone(),
            action,
        }
    }

    pub fn to_review(&self) -> SubjectAccessReview {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let (resource_attributes, non_resource_attributes) = match &self.action {
            Action::Resource {
                verb,
                namespace,
                group,
                version,
                resource,
                subresource,
                name,
            } => (
                Some(ResourceAttributes {
                    verb: Some(verb.clone()),
                    namespace: some(namespace),
                    group: Some(group.clone()),
                    version: some(version),
                    resource: Some(resource.clone()),
                    subresource: some(subresource),
                    name: some(name),
                    ..Default::default()
                }),
                None,
            ),
            Action::NonResource { verb, path } => (
                None,
                Some(NonResourceAttributes {
                    verb: Some(verb.clone()),
                    path: Some(path.clone()),
                }),
            ),
        };
        SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(self.user.clone()),
                uid: some(&self.uid),
                groups: (!self.groups.is_empty()).then(|| self.groups.clone()),
                extra: (!self.extra.is_empty()).then(|| self.extra.clone()),
                resource_attributes,
                non_resource_attributes,
            },
            ..Default::default()
        }
    }

    /// The 403 for a denied request, as kube-apiserver's `responsewriters.Forbidden` builds it.
    pub fn forbidden(&self, reason: &str) -> ApiError {
        let (message, details) = match &self.action {
            Action::Resource {
                verb,
                namespace,
                group,
                resource,
                subresource,
                name,
                ..
            } => {
                let what = if subresource.is_empty() {
                    resource.clone()
                } else {
                    format!("{resource}/{subresource}")
                };
                let why = if namespace.is_empty() {
                    format!(
                        "User {:?} cannot {verb} resource {what:?} in API group {group:?} at the cluster scope",
                        self.user
                    )
                } else {
                    format!(
                        "User {:?} cannot {verb} resource {what:?} in API group {group:?} in the namespace {namespace:?}",
                        self.user
                    )
                };
                let why = with_reason(why, reason);
                let message = if name.is_empty() {
                    format!("{resource}.{group} is forbidden: {why}")
                } else {
                    format!("{resource}.{group} {name:?} is forbidden: {why}")
                };
                let details = Details {
                    name: (!name.is_empty()).then(|| name.clone()),
                    group: Some(group.clone()),
                    kind: Some(resource.clone()),
                    ..Default::default()
                };
                (message, Some(details))
            }
            Action::NonResource { verb, path } => {
                let why = format!("User {:?} cannot {verb} path {path:?}", self.user);
                (format!("forbidden: {}", with_reason(why, reason)), None)
            }
        };
        let mut e = ApiError::forbidden(message);
        e.details = details.map(Into::into);
        e
    }
}

fn with_reason(message: String, reason: &str) -> String {
    if reason.is_empty() {
        message
    } else {
        format!("{message}: {reason}")
    }
}

/// The decision in a SubjectAccessReview's status; no status counts as a denial.
pub(crate) fn decision(review: &SubjectAccessReview) -> Decision {
    match &review.status {
        Some(s) => {
            if let Some(err) = s.evaluation_error.as_deref().filter(|e| !e.is_empty()) {
                // Partial evaluation errors still come with a decision; keep it but log why.
                tracing::debug!(error = err, "SubjectAccessReview evaluation error");
            }
            Decision {
                allowed: s.allowed && !s.denied.unwrap_or(false),
                reason: s.reason.clone().unwrap_or_default(),
            }
        }
        None => Decision {
            allowed: false,
            reason: String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn alice() -> UserInfo {
        UserInfo {
            name: "alice".into(),
            uid: "alice-uid".into(),
            groups: vec!["team-a".into(), "system:authenticated".into()],
            extra: BTreeMap::from([("scopes".to_string(), vec!["x".to_string()])]),
        }
    }

    fn attrs(method: Method, path: &str, watch: bool, field: Option<&str>) -> Attributes {
        Attributes::new(&alice(), &RequestInfo::parse(&method, path, watch, field))
    }

    const NS: &str = "/apis/coredump.io/v1alpha1/namespaces/team-b/coredumps";

    #[test]
    fn resource_request_review() {
        let a = attrs(Method::GET, &format!("{NS}/x/download"), false, None);
        let r = a.to_review();
        let ra = r
            .spec
            .resource_attributes
            .clone()
            .expect("resource attributes");
        assert_eq!(ra.verb.as_deref(), Some("get"));
        assert_eq!(ra.group.as_deref(), Some("coredump.io"));
        assert_eq!(ra.version.as_deref(), Some("v1alpha1"));
        assert_eq!(ra.resource.as_deref(), Some("coredumps"));
        assert_eq!(ra.subresource.as_deref(), Some("download"));
        assert_eq!(ra.namespace.as_deref(), Some("team-b"));
        assert_eq!(ra.name.as_deref(), Some("x"));
        assert!(r.spec.non_resource_attributes.is_none());
        assert_eq!(r.spec.user.as_deref(), Some("alice"));
        assert_eq!(r.spec.uid.as_deref(), Some("alice-uid"));
        assert_eq!(r.spec.groups.as_deref().map(<[String]>::len), Some(2));
        assert_eq!(
            r.spec.extra.as_ref().map(|e| e["scopes"].clone()),
            Some(vec!["x".to_string()])
        );
    }

    #[test]
    fn verbs_collections_and_field_selector_names() {
        let verb = |a: &Attributes| match &a.action {
            Action::Resource {
                verb,
                name,
                namespace,
                ..
            } => (verb.clone(), name.clone(), namespace.clone()),
            Action::NonResource { .. } => panic!("not a resource request"),
        };
        assert_eq!(
            verb(&attrs(Method::GET, NS, false, None)),
            ("list".into(), "".into(), "team-b".into())
        );
        assert_eq!(
            verb(&attrs(Method::GET, NS, true, Some("x"))),
            ("watch".into(), "x".into(), "team-b".into())
        );
        assert_eq!(
            verb(&attrs(Method::DELETE, NS, false, None)).0,
            "deletecollection"
        );
        assert_eq!(
            verb(&attrs(Method::DELETE, &format!("{NS}/x"), false, None)).0,
            "delete"
        );
        assert_eq!(
            verb(&attrs(Method::PUT, &format!("{NS}/x/upload"), false, None)).0,
            "update"
        );
        let all = attrs(
            Method::GET,
            "/apis/coredump.io/v1alpha1/coredumps",
            false,
            None,
        );
        assert_eq!(verb(&all), ("list".into(), "".into(), "".into()));
        let ra = all.to_review().spec.resource_attributes.expect("ra");
        assert_eq!((ra.namespace, ra.name, ra.subresource), (None, None, None));
    }

    #[test]
    fn non_resource_paths() {
        for path in [
            "/metrics",
            "/apis",
            "/apis/coredump.io/v1alpha1",
            "/openapi/v3",
            "/version",
        ] {
            let r = attrs(Method::GET, path, false, None).to_review();
            assert!(r.spec.resource_attributes.is_none(), "{path}");
            let nr = r.spec.non_resource_attributes.expect("non-resource");
            assert_eq!(
                (nr.verb.as_deref(), nr.path.as_deref()),
                (Some("get"), Some(path))
            );
        }
    }

    #[test]
    fn forbidden_wording() {
        let e = attrs(Method::GET, &format!("{NS}/x/download"), false, None).forbidden("");
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            r#"coredumps.coredump.io "x" is forbidden: User "alice" cannot get resource "coredumps/download" in API group "coredump.io" in the namespace "team-b""#
        );
        let s = e.status();
        assert_eq!(s["reason"], "Forbidden");
        assert_eq!(s["details"]["name"], "x");
        assert_eq!(s["details"]["group"], "coredump.io");
        assert_eq!(s["details"]["kind"], "coredumps");

        let list = attrs(
            Method::GET,
            "/apis/coredump.io/v1alpha1/coredumps",
            false,
            None,
        )
        .forbidden("no");
        assert_eq!(
            list.message,
            r#"coredumps.coredump.io is forbidden: User "alice" cannot list resource "coredumps" in API group "coredump.io" at the cluster scope: no"#
        );
        let nr = attrs(Method::GET, "/metrics", false, None).forbidden("");
        assert_eq!(
            nr.message,
            r#"forbidden: User "alice" cannot get path "/metrics""#
        );
    }

    #[test]
    fn decisions() {
        use k8s_openapi::api::authorization::v1::SubjectAccessReviewStatus;
        let mut r = SubjectAccessReview::default();
        assert!(!decision(&r).allowed);
        r.status = Some(SubjectAccessReviewStatus {
            allowed: true,
            reason: Some("RBAC: allowed".into()),
            ..Default::default()
        });
        assert_eq!(
            decision(&r),
            Decision {
                allowed: true,
                reason: "RBAC: allowed".into()
            }
        );
    }
}
