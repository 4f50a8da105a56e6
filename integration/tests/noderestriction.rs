//! Node restriction with real pod-bound service-account tokens: a node agent creates and
//! uploads coredumps only for pods bound to its own node with the UID it claims.

// A test binary: its helpers are test code as much as its #[test] functions, and a panic
// is the failure report (clippy.toml's allow-*-in-tests covers only the #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coredump_integration::curl::{Credential, Curl, Reply};
use coredump_integration::env::TestEnv;
use coredump_integration::fixtures::CoredumpFixture;
use serde_json::{json, Value};

const API: &str = "/apis/coredump.io/v1alpha1";

fn env() -> &'static TestEnv {
    TestEnv::shared()
}

/// Coredump `ns/name` claiming pod `pod` (UID `uid`) on `node`: what node restriction
/// checks against the pod the agent's token is bound to.
fn coredump(ns: &str, name: &str, node: &str, pod: &str, uid: &str) -> Value {
    CoredumpFixture::new(ns, name)
        .node(node)
        .pod(pod)
        .pod_uid(uid)
        .signal(11)
        .size(100)
        .stored_size(10)
        .sha(&"d".repeat(64))
        .build()
}

fn post(c: &Curl, ns: &str, obj: &Value) -> Reply {
    c.request(
        "POST",
        &format!("{API}/namespaces/{ns}/coredumps"),
        &[("Content-Type", "application/json")],
        Some(&serde_json::to_vec(obj).expect("json")),
    )
    .expect("curl")
}

#[test]
fn a_node_agent_writes_only_its_own_nodes_coredumps() {
    let ns = env().namespace("noderestrict").expect("ns");
    let k = env().kubectl();
    let (node_a, node_b) = (format!("{ns}-a"), format!("{ns}-b"));
    let pod = |name: &str, node: &str, sa: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
               "spec": {"nodeName": node, "serviceAccountName": sa, "automountServiceAccountToken": false,
                        "containers": [{"name": "main", "image": "app:1"}]}})
    };
    k.ok(&[
        "apply",
        "-k",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/rbac"),
    ])
    .expect("apply rbac");
    k.ok(&["create", "serviceaccount", "agent", "-n", &ns])
        .expect("sa");
    k.apply(&json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node_a}},
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node_b}},
        pod("agent-a", &node_a, "agent"),
        pod("web-a", &node_a, "default"),
        pod("web-b", &node_b, "default"),
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "agent", "namespace": ns},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "coredump-node-agent"},
         "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": ns}]}
    ]}))
    .expect("objects");
    let uid = |p: &str| {
        k.ok(&["get", "pod", p, "-n", &ns, "-o", "jsonpath={.metadata.uid}"])
            .expect("uid")
    };
    let (uid_a, uid_b) = (uid("web-a"), uid("web-b"));
    let token = k
        .ok(&[
            "create",
            "token",
            "agent",
            "-n",
            &ns,
            "--bound-object-kind=Pod",
            "--bound-object-name=agent-a",
        ])
        .expect("token");
    let agent = {
        let s = env().server();
        Curl {
            base: s.url.clone(),
            ca: s.ca_cert.clone(),
            cred: Credential::Bearer(token.trim().to_string()),
        }
    };

    // Its own node's pod, with the right UID: allowed.
    let r = post(&agent, &ns, &coredump(&ns, "ok", &node_a, "web-a", &uid_a));
    assert_eq!(r.status, 201, "{}", r.text());
    // Another node's coredump, a pod bound elsewhere, a wrong UID, a missing pod: refused.
    for (name, node, pod, uid) in [
        ("other-node", node_b.as_str(), "web-b", uid_b.as_str()),
        ("pod-elsewhere", node_a.as_str(), "web-b", uid_b.as_str()),
        ("wrong-uid", node_a.as_str(), "web-a", uid_b.as_str()),
        ("no-pod", node_a.as_str(), "ghost", uid_a.as_str()),
    ] {
        let r = post(&agent, &ns, &coredump(&ns, name, node, pod, uid));
        assert_eq!(r.status, 403, "{name}: {}", r.text());
        assert_eq!(r.json()["reason"], "Forbidden");
    }
    // A coredump of node B (created by the admin) cannot be uploaded to by node A's agent.
    let admin = Curl::admin(&env().cp.endpoints);
    let r = admin
        .request(
            "POST",
            &format!("{API}/namespaces/{ns}/coredumps"),
            &[("Content-Type", "application/json")],
            Some(
                &serde_json::to_vec(&coredump(&ns, "of-b", &node_b, "web-b", &uid_b))
                    .expect("json"),
            ),
        )
        .expect("curl");
    assert_eq!(r.status, 201, "{}", r.text());
    let r = agent
        .request(
            "PUT",
            &format!("{API}/namespaces/{ns}/coredumps/of-b/upload"),
            &[],
            Some(b"x"),
        )
        .expect("curl");
    assert_eq!(r.status, 403, "{}", r.text());
    // It reads its own node's coredumps by name (to recognise an earlier attempt of its
    // own), not another node's, and lists none.
    let get = |path: &str| {
        agent
            .get(&format!("{API}/namespaces/{ns}/{path}"), &[])
            .expect("curl")
    };
    let r = get("coredumps/ok");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["spec"]["nodeName"], node_a.as_str());
    let r = get("coredumps/of-b");
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["reason"], "Forbidden");
    assert!(
        r.text().contains("may not read coredumps of node"),
        "{}",
        r.text()
    );
    let r = get("coredumps");
    assert_eq!(r.status, 403, "{}", r.text());
    let r = get("coredumps/ok/download");
    assert_eq!(r.status, 403, "{}", r.text());
    // RBAC still applies on top: the agent role has no delete.
    let r = agent
        .request(
            "DELETE",
            &format!("{API}/namespaces/{ns}/coredumps/ok"),
            &[],
            None,
        )
        .expect("curl");
    assert_eq!(r.status, 403, "{}", r.text());
    // Ordinary users cannot create coredumps without an explicit grant, even as editors.
    k.ok(&[
        "create",
        "rolebinding",
        "alice-edit",
        "--clusterrole=coredump-edit",
        "--user=alice",
        "-n",
        &ns,
    ])
    .expect("binding");
    let mut denied = None;
    for _ in 0..30 {
        let out = k
            .context("alice")
            .run_stdin(
                &["create", "-f", "-"],
                &serde_json::to_vec(&coredump(&ns, "by-alice", &node_a, "web-a", &uid_a))
                    .expect("json"),
            )
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if err.contains("Forbidden") || err.contains("forbidden") {
            denied = Some(err);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert!(denied.is_some(), "alice could create a coredump");
}
