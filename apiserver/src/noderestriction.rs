//! Node restriction for coredumps, as the NodeRestriction admission plugin does for
//! kubelets: a node agent authenticates with a service-account token bound to its pod,
//! which carries its node's name; it may create coredumps only for pods bound to that
//! node with the UID it claims, and may read and touch only its own node's coredumps.
//!
//! A member of the registry's admission [`Chain`](crate::registry::Chain) for coredumps,
//! request phase only: a get is checked on the object read, a create on its body (and the
//! Pod it names), every other write (update, patch, status, upload, delete, a method no
//! handler serves) on the object it names, read first only for a node identity. Downloads
//! are left to RBAC.

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use crate::auth::UserInfo;
use crate::error::ApiError;
use crate::registry::{str_at, Admission, Attributes, Kind, Operation, Registry};
use coredump_openapi::COREDUMP;

/// Set by kube-apiserver on tokens bound to a pod running on a node.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

pub struct NodeRestriction {
    client: kube::Client,
}

/// The node a request acts for, if it comes from a node-bound identity.
pub fn node_of(user: &UserInfo) -> Option<&str> {
    user.extra
        .get(NODE_NAME_EXTRA)
        .and_then(|v| v.first())
        .map(String::as_str)
        .filter(|n| !n.is_empty())
}

fn forbidden(user: &UserInfo, node: &str, why: String) -> ApiError {
    ApiError::forbidden(format!(
        "coredumps.coredump.io is forbidden: User \"{}\" on node \"{node}\": {why}",
        user.name
    ))
}

impl NodeRestriction {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    /// A node identity creates a coredump only for its own node and for a pod bound there
    /// with the UID it names. Other identities are left to RBAC.
    pub async fn check_create(
        &self,
        user: &UserInfo,
        ns: &str,
        obj: &Value,
    ) -> Result<(), ApiError> {
        let Some(node) = node_of(user) else {
            return Ok(());
        };
        let spec_node = str_at(obj, "/spec/nodeName").unwrap_or_default();
        if spec_node != node {
            return Err(forbidden(
                user,
                node,
                format!("may only create coredumps of its own node, not of node \"{spec_node}\""),
            ));
        }
        let pod_name = str_at(obj, "/spec/podName").unwrap_or_default();
        let pod_uid = str_at(obj, "/spec/podUID").unwrap_or_default();
        let pods: kube::Api<Pod> = kube::Api::namespaced(self.client.clone(), ns);
        let pod = pods.get_opt(&pod_name).await.map_err(|e| {
            tracing::warn!(error = %e, "looking up a pod for node restriction");
            ApiError::unavailable(format!("cannot verify pod {ns}/{pod_name}: {e}"))
        })?;
        let Some(pod) = pod else {
            return Err(forbidden(
                user,
                node,
                format!("pod {ns}/{pod_name} does not exist"),
            ));
        };
        let bound = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or_default();
        if bound != node {
            return Err(forbidden(
                user,
                node,
                format!("pod {ns}/{pod_name} is bound to node \"{bound}\", not to this node"),
            ));
        }
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        if uid != pod_uid {
            return Err(forbidden(
                user,
                node,
                format!("pod {ns}/{pod_name} has UID {uid}, not {pod_uid}"),
            ));
        }
        Ok(())
    }

    /// A node identity reads (GET by name) only its own node's coredumps: the agent needs
    /// that to recognise its own earlier attempt after a lost answer, and RBAC alone would
    /// let every node read every namespace's coredump metadata. Lists and watches stay
    /// with RBAC, which grants node agents none.
    pub fn check_read(user: &UserInfo, obj: &Value) -> Result<(), ApiError> {
        let Some(node) = node_of(user) else {
            return Ok(());
        };
        let owner = str_at(obj, "/spec/nodeName").unwrap_or_default();
        if owner == node {
            return Ok(());
        }
        Err(forbidden(
            user,
            node,
            format!("may not read coredumps of node \"{owner}\""),
        ))
    }

    /// Any other write (update, patch, status, upload, delete) by a node identity is
    /// allowed only on coredumps of its own node; a collection delete not at all.
    pub fn check_owned(user: &UserInfo, obj: Option<&Value>) -> Result<(), ApiError> {
        let Some(node) = node_of(user) else {
            return Ok(());
        };
        match obj {
            Some(o) if str_at(o, "/spec/nodeName").as_deref() == Some(node) => Ok(()),
            Some(o) => Err(forbidden(
                user,
                node,
                format!(
                    "may not change coredumps of node \"{}\"",
                    str_at(o, "/spec/nodeName").unwrap_or_default()
                ),
            )),
            None => Err(forbidden(
                user,
                node,
                "may not delete collections of coredumps".into(),
            )),
        }
    }
}

impl Admission for NodeRestriction {
    fn handles(&self, kind: &dyn Kind, op: Operation) -> bool {
        kind.info().plural == COREDUMP.plural && op != Operation::Download
    }

    fn admit<'a>(
        &'a self,
        a: &'a Attributes<'a>,
        registry: &'a Registry,
    ) -> futures::future::BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            match a.operation {
                Operation::Get => a.object.map_or(Ok(()), |obj| Self::check_read(a.user, obj)),
                Operation::Create => {
                    let body = a.object.unwrap_or(&Value::Null);
                    self.check_create(a.user, a.namespace, body).await
                }
                _ => {
                    if node_of(a.user).is_none() {
                        return Ok(());
                    }
                    let current = match a.name {
                        Some(name) => Some(registry.get(a.kind, a.namespace, name).await?),
                        None => None,
                    };
                    Self::check_owned(a.user, current.as_ref())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn agent(node: &str) -> UserInfo {
        let mut u = UserInfo {
            name: "system:serviceaccount:coredump-system:coredump-node-agent".into(),
            ..Default::default()
        };
        u.extra.insert(NODE_NAME_EXTRA.into(), vec![node.into()]);
        u
    }

    #[test]
    fn node_identities_touch_only_their_nodes_coredumps() {
        let on_a = json!({"spec": {"nodeName": "a"}});
        assert!(NodeRestriction::check_owned(&agent("a"), Some(&on_a)).is_ok());
        assert_eq!(
            NodeRestriction::check_owned(&agent("b"), Some(&on_a)).map_err(|e| e.code),
            Err(403)
        );
        assert_eq!(
            NodeRestriction::check_owned(&agent("a"), None).map_err(|e| e.code),
            Err(403)
        );
        assert!(NodeRestriction::check_read(&agent("a"), &on_a).is_ok());
        assert_eq!(
            NodeRestriction::check_read(&agent("b"), &on_a).map_err(|e| e.code),
            Err(403)
        );
        // Users without a node are left to RBAC.
        assert!(NodeRestriction::check_read(&UserInfo::default(), &on_a).is_ok());
        assert!(NodeRestriction::check_owned(&UserInfo::default(), Some(&on_a)).is_ok());
        assert!(NodeRestriction::check_owned(&UserInfo::default(), None).is_ok());
    }
}
