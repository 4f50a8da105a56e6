//! The harness is a real control plane: RBAC, token users, service-account tokens (also
//! bound to pods) and the aggregation layer reaching the extension server.

use coredump_integration::env::TestEnv;
use serde_json::{json, Value};

fn env() -> &'static TestEnv {
    TestEnv::shared()
}

#[test]
fn admin_creates_a_namespace() {
    let ns = env().namespace("cp-admin").expect("create namespace");
    let phase = env()
        .kubectl()
        .ok(&["get", "namespace", &ns, "-o", "jsonpath={.status.phase}"])
        .expect("get namespace");
    assert_eq!(phase, "Active");
}

#[test]
fn rbac_forbids_alice_until_a_rolebinding_grants_her() {
    let ns = env().namespace("cp-rbac").expect("namespace");
    let alice = env().kubectl().context("alice");

    let denied = alice
        .run(&["get", "configmaps", "-n", &ns])
        .expect("run kubectl");
    assert!(
        !denied.status.success(),
        "alice must be forbidden before the binding"
    );
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        stderr.contains("Forbidden") && stderr.contains("User \"alice\""),
        "unexpected error: {stderr}"
    );
    // can-i prints its answer and exits non-zero for "no".
    let can_i = alice
        .run(&["auth", "can-i", "list", "configmaps", "-n", &ns])
        .expect("run");
    assert_eq!(String::from_utf8_lossy(&can_i.stdout).trim(), "no");
    assert!(!can_i.status.success());

    // Granting her group (team-a), not her name, proves groups come from the token file.
    env()
        .kubectl()
        .ok(&[
            "create",
            "rolebinding",
            "team-a-view",
            "--clusterrole=view",
            "--group=team-a",
            "-n",
            &ns,
        ])
        .expect("create rolebinding");
    let mut listed = None;
    for _ in 0..50 {
        let out = alice
            .run(&["get", "configmaps", "-n", &ns, "-o", "name"])
            .expect("run");
        if out.status.success() {
            listed = Some(String::from_utf8_lossy(&out.stdout).into_owned());
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        listed.is_some(),
        "alice still forbidden after the RoleBinding"
    );
    // bob is in team-b: still forbidden.
    let bob = env()
        .kubectl()
        .context("bob")
        .run(&["get", "configmaps", "-n", &ns])
        .expect("run");
    assert!(!bob.status.success());
}

#[test]
fn service_account_tokens_authenticate_and_bind_to_pods() {
    let ns = env().namespace("cp-sa").expect("namespace");
    let k = env().kubectl();
    k.ok(&["create", "serviceaccount", "agent", "-n", &ns])
        .expect("create sa");
    let node = format!("{ns}-node");
    k.apply(&json!({
        "apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}},
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "agent", "namespace": ns},
             "spec": {"nodeName": node, "serviceAccountName": "agent",
                      "containers": [{"name": "c", "image": "agent:dev"}]}}
        ]
    }))
    .expect("create node and pod");
    let pod_uid = k
        .ok(&[
            "get",
            "pod",
            "agent",
            "-n",
            &ns,
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .expect("pod uid");

    let token = k
        .ok(&[
            "create",
            "token",
            "agent",
            "-n",
            &ns,
            "--bound-object-kind=Pod",
            "--bound-object-name=agent",
        ])
        .expect("create token");
    let token = token.trim();

    // The token authenticates on its own: kubectl with nothing but the server and the token.
    let ep = &env().cp.endpoints;
    let whoami = std::process::Command::new(ep.bin_dir.join("kubectl"))
        .args([
            &format!("--server={}", ep.server),
            &format!("--certificate-authority={}", ep.ca_cert.display()),
            &format!("--token={token}"),
            "--kubeconfig=/dev/null",
            "auth",
            "whoami",
            "-o",
            "json",
        ])
        .output()
        .expect("run kubectl auth whoami");
    assert!(
        whoami.status.success(),
        "whoami failed: {}",
        String::from_utf8_lossy(&whoami.stderr)
    );
    let review: Value = serde_json::from_slice(&whoami.stdout).expect("whoami json");
    let user = &review["status"]["userInfo"];
    assert_eq!(
        user["username"],
        format!("system:serviceaccount:{ns}:agent")
    );
    let extra = &user["extra"];
    assert_eq!(extra["authentication.kubernetes.io/pod-name"][0], "agent");
    assert_eq!(
        extra["authentication.kubernetes.io/pod-uid"][0],
        pod_uid.as_str()
    );
    assert_eq!(
        extra["authentication.kubernetes.io/node-name"][0],
        node.as_str()
    );
}

#[test]
fn extension_server_is_reached_through_the_aggregator() {
    let k = env().kubectl();
    let available = k
        .ok(&[
            "get",
            "apiservice",
            "v1alpha1.coredump.io",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Available\")].status}",
        ])
        .expect("get apiservice");
    assert_eq!(available, "True");

    let resources = k
        .ok(&[
            "api-resources",
            "--api-group=coredump.io",
            "--no-headers",
            "-o",
            "name",
        ])
        .expect("api-resources");
    let mut names: Vec<&str> = resources.lines().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "coredumpquotas.coredump.io",
            "coredumps.coredump.io",
            "crashgroups.coredump.io"
        ]
    );

    // The aggregator proxies to the extension server: its discovery document comes back.
    let raw = k
        .ok(&["get", "--raw", "/apis/coredump.io/v1alpha1"])
        .expect("get --raw");
    let list: Value = serde_json::from_str(&raw).expect("APIResourceList json");
    assert_eq!(list["kind"], "APIResourceList");
    assert_eq!(list["groupVersion"], "coredump.io/v1alpha1");
}
