//! Who may see and touch a namespace's core dumps: the roles in deploy/rbac through the
//! real aggregator and kubectl, and the extension server's own authentication and
//! authorization when reached directly (tokens, client certificates, the front proxy).

// A test binary: its helpers are test code as much as its #[test] functions, and a panic
// is the failure report (clippy.toml's allow-*-in-tests covers only the #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use coredump_integration::curl::{Credential, Curl, Reply};
use coredump_integration::env::TestEnv;
use coredump_integration::fixtures::CoredumpFixture;
use coredump_integration::kubectl::Kubectl;
use coredump_integration::pki::{Ca, Usage};
use serde_json::Value;

const API: &str = "/apis/coredump.io/v1alpha1";

fn env() -> &'static TestEnv {
    let env = TestEnv::shared();
    apply_rbac(env);
    env
}

/// `kubectl apply -k deploy/rbac`, once per test binary.
fn apply_rbac(env: &TestEnv) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rbac");
        let dir = dir.to_string_lossy().into_owned();
        env.kubectl()
            .ok(&["apply", "-k", &dir])
            .unwrap_or_else(|e| panic!("apply deploy/rbac: {e}"));
    });
}

fn create_coredump(ns: &str, name: &str) {
    let body = CoredumpFixture::new(ns, name)
        .pod("web-1")
        .signal(11)
        .bytes();
    let out = env()
        .kubectl()
        .run_stdin(&["create", "-f", "-"], &body)
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "create coredump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Binds `role` (a ClusterRole) in `ns` to a group, user or service account
/// (`--group=…`, `--user=…`, `--serviceaccount=ns:name`).
fn bind(ns: &str, name: &str, role: &str, subject: &str) {
    env()
        .kubectl()
        .ok(&[
            "create",
            "rolebinding",
            name,
            &format!("--clusterrole={role}"),
            subject,
            "-n",
            ns,
        ])
        .unwrap_or_else(|e| panic!("bind {role} in {ns}: {e}"));
}

/// Polls `f` until it returns `Some`, for up to `timeout`.
fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `kubectl auth can-i …`: true for "yes", false for "no" (anything else fails the test).
fn can_i(k: &Kubectl, args: &[&str]) -> bool {
    let out = k
        .run(&[&["auth", "can-i"], args].concat())
        .expect("run can-i");
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        answer == "yes" || answer == "no",
        "can-i {args:?}: {answer} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    answer == "yes"
}

/// Waits until kube-apiserver's RBAC cache has seen a new binding, so that the extension
/// server's (cached) SubjectAccessReview is not asked before.
fn wait_can_i(args: &[&str]) {
    let k = env().kubectl();
    eventually(&format!("can-i {args:?}"), Duration::from_secs(30), || {
        can_i(&k, args).then_some(())
    });
}

/// The extension server reached directly, not through the aggregator.
fn direct(cred: Credential) -> Curl {
    let server = env().server();
    Curl {
        base: server.url.clone(),
        ca: server.ca_cert.clone(),
        cred,
    }
}

fn cert(files: &coredump_integration::pki::PairFiles) -> Credential {
    Credential::Cert {
        cert: files.cert.clone(),
        key: files.key.clone(),
    }
}

fn get(c: &Curl, path: &str, headers: &[(&str, &str)]) -> Reply {
    c.get(path, headers)
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn kubectl_err(k: &Kubectl, args: &[&str]) -> String {
    let out = k.run(args).expect("run kubectl");
    assert!(
        !out.status.success(),
        "{args:?} should fail; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn alice_with_coredump_edit_works_in_her_namespace_and_is_forbidden_in_bobs() {
    let mine = env().namespace("auth-alice").expect("ns");
    let theirs = env().namespace("auth-bob").expect("ns");
    create_coredump(&mine, "one");
    create_coredump(&theirs, "one");
    bind(&mine, "team-a-coredumps", "coredump-edit", "--group=team-a");
    bind(
        &theirs,
        "team-b-coredumps",
        "coredump-edit",
        "--group=team-b",
    );
    let alice = env().kubectl().context("alice");

    let listed = eventually("alice to list", Duration::from_secs(30), || {
        let out = alice
            .run(&["get", "coredumps", "-n", &mine, "-o", "name"])
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert_eq!(listed.trim(), "coredump.coredump.io/one");
    let got = alice
        .ok(&[
            "get",
            "coredump",
            "one",
            "-n",
            &mine,
            "-o",
            "jsonpath={.metadata.name}",
        ])
        .expect("alice gets her core dump");
    assert_eq!(got, "one");

    let err = kubectl_err(&alice, &["get", "coredumps", "-n", &theirs]);
    assert!(
        err.contains("Forbidden")
            && err.contains(&format!(
                "User \"alice\" cannot list resource \"coredumps\" in API group \"coredump.io\" in the namespace \"{theirs}\""
            )),
        "{err}"
    );
    // Forbidden, not NotFound, whether the object exists or not.
    for name in ["one", "does-not-exist"] {
        let err = kubectl_err(&alice, &["get", "coredump", name, "-n", &theirs]);
        assert!(
            err.contains("Forbidden") && !err.contains("NotFound"),
            "{err}"
        );
    }
    let err = kubectl_err(&alice, &["get", "coredumps", "-A"]);
    assert!(err.contains("at the cluster scope"), "{err}");
}

#[test]
fn view_lists_but_cannot_download() {
    let ns = env().namespace("auth-view").expect("ns");
    create_coredump(&ns, "core");
    bind(&ns, "bob-view", "coredump-view", "--user=bob");
    let bob = env().kubectl().context("bob");
    eventually("bob to list", Duration::from_secs(30), || {
        let out = bob.run(&["get", "coredumps", "-n", &ns]).ok()?;
        out.status.success().then_some(())
    });
    bob.ok(&["get", "coredumpquotas", "-n", &ns])
        .expect("view lists quotas");
    let download = format!("{API}/namespaces/{ns}/coredumps/core/download");
    let err = kubectl_err(&bob, &["get", "--raw", &download]);
    assert!(
        err.contains("Forbidden") || err.contains("forbidden"),
        "download must be forbidden: {err}"
    );
    let err = kubectl_err(&bob, &["delete", "coredump", "core", "-n", &ns]);
    assert!(err.contains("Forbidden"), "{err}");
}

#[test]
fn can_i_answers_per_role_verb_and_subresource() {
    let ns = env().namespace("auth-cani").expect("ns");
    // One namespace per role, all for the same user, so the answers differ only by role.
    let roles = ["coredump-view", "coredump-edit", "coredump-admin"];
    let namespaces: Vec<String> = roles
        .iter()
        .map(|r| {
            let n = env().namespace(&format!("auth-{r}")).expect("ns");
            bind(&n, "r", r, "--user=bob");
            n
        })
        .collect();
    let bob = env().kubectl().context("bob");
    // (verb, resource, subresource, view, edit, admin)
    let matrix: &[(&str, &str, &str, bool, bool, bool)] = &[
        ("get", "coredumps", "", true, true, true),
        ("list", "coredumps", "", true, true, true),
        ("watch", "coredumps", "", true, true, true),
        ("get", "coredumps", "status", true, true, true),
        ("get", "coredumps", "download", false, true, true),
        ("update", "coredumps", "upload", false, false, false),
        ("create", "coredumps", "", false, false, false),
        ("update", "coredumps", "", false, false, false),
        ("delete", "coredumps", "", false, true, true),
        ("deletecollection", "coredumps", "", false, true, true),
        ("list", "coredumpquotas", "", true, true, true),
        ("create", "coredumpquotas", "", false, false, true),
        ("update", "coredumpquotas", "", false, false, true),
        ("patch", "coredumpquotas", "", false, false, true),
        ("delete", "coredumpquotas", "", false, false, true),
    ];
    eventually("bindings to take effect", Duration::from_secs(30), || {
        namespaces
            .iter()
            .all(|n| can_i(&bob, &["list", "coredumps.coredump.io", "-n", n]))
            .then_some(())
    });
    for (verb, resource, sub, view, edit, admin) in matrix {
        let resource = format!("{resource}.coredump.io");
        for (n, expect) in namespaces.iter().zip([view, edit, admin]) {
            let mut args = vec![*verb, resource.as_str(), "-n", n.as_str()];
            let sub_flag = format!("--subresource={sub}");
            if !sub.is_empty() {
                args.push(&sub_flag);
            }
            assert_eq!(can_i(&bob, &args), *expect, "bob {args:?}");
        }
        // Without a binding: nothing.
        assert!(!can_i(&bob, &[verb, &resource, "-n", &ns]));
    }

    // The built-in roles pick ours up through the aggregation labels (controller-manager
    // fills them in shortly after the ClusterRoles appear).
    for (builtin, download, quota) in [
        ("view", false, false),
        ("edit", true, false),
        ("admin", true, true),
    ] {
        let n = env()
            .namespace(&format!("auth-builtin-{builtin}"))
            .expect("ns");
        bind(&n, "r", builtin, "--user=bob");
        eventually(
            &format!("{builtin} to aggregate coredump rules"),
            Duration::from_secs(60),
            || can_i(&bob, &["list", "coredumps.coredump.io", "-n", &n]).then_some(()),
        );
        assert_eq!(
            can_i(
                &bob,
                &[
                    "get",
                    "coredumps.coredump.io",
                    "--subresource=download",
                    "-n",
                    &n
                ]
            ),
            download,
            "{builtin} download"
        );
        assert_eq!(
            can_i(&bob, &["create", "coredumpquotas.coredump.io", "-n", &n]),
            quota,
            "{builtin} quota"
        );
    }
}

#[test]
fn node_agent_and_server_service_accounts_have_what_they_need() {
    let ns = env().namespace("auth-sa").expect("ns");
    let k = env().kubectl();
    k.ok(&["create", "serviceaccount", "agent", "-n", &ns])
        .expect("sa");
    k.ok(&[
        "create",
        "clusterrolebinding",
        &format!("{ns}-agent"),
        "--clusterrole=coredump-node-agent",
        &format!("--serviceaccount={ns}:agent"),
    ])
    .expect("bind agent");
    let agent = format!("--as=system:serviceaccount:{ns}:agent");
    wait_can_i(&["create", "coredumps.coredump.io", "-n", &ns, &agent]);
    let yes: &[&[&str]] = &[
        &["update", "coredumps.coredump.io", "--subresource=upload"],
        // Limited to its own node's by the server's node restriction (tests/noderestriction.rs).
        &["get", "coredumps.coredump.io"],
        &["get", "pods"],
        &["watch", "pods"],
        &["list", "namespaces"],
        &["create", "events"],
        &["patch", "events.events.k8s.io"],
    ];
    let no: &[&[&str]] = &[
        &["get", "coredumps.coredump.io", "--subresource=download"],
        &["list", "coredumps.coredump.io"],
        &["watch", "coredumps.coredump.io"],
        &["delete", "coredumps.coredump.io"],
        &["get", "secrets"],
    ];
    for (args, expect) in yes
        .iter()
        .map(|a| (a, true))
        .chain(no.iter().map(|a| (a, false)))
    {
        let all = [*args, &["-n", ns.as_str(), agent.as_str()]].concat();
        assert_eq!(can_i(&k, &all), expect, "agent {all:?}");
    }

    let server = "--as=system:serviceaccount:coredump-system:coredump-apiserver";
    wait_can_i(&["create", "tokenreviews.authentication.k8s.io", server]);
    for args in [
        &[
            "create",
            "subjectaccessreviews.authorization.k8s.io",
            server,
        ][..],
        &[
            "get",
            "configmaps/extension-apiserver-authentication",
            "-n",
            "kube-system",
            server,
        ],
        &[
            "watch",
            "configmaps/extension-apiserver-authentication",
            "-n",
            "kube-system",
            server,
        ],
        &["list", "pods", "-A", server],
        &["get", "namespaces", server],
        &["create", "events", "-n", &ns, server],
    ] {
        assert!(can_i(&k, args), "server {args:?}");
    }
    assert!(!can_i(&k, &["get", "secrets", "-n", "kube-system", server]));
    // The server follows the ConfigMap with a list+watch narrowed by a field selector; RBAC
    // matches that against the Role's resourceNames.
    k.ok(&[
        "get",
        "configmaps",
        "-n",
        "kube-system",
        "--field-selector=metadata.name=extension-apiserver-authentication",
        server,
    ])
    .expect("list the authentication ConfigMap by name");
}

#[test]
fn service_account_token_works_directly_and_is_authorized_by_the_server() {
    let ns = env().namespace("auth-token").expect("ns");
    create_coredump(&ns, "core");
    let k = env().kubectl();
    for sa in ["reader", "nobody"] {
        k.ok(&["create", "serviceaccount", sa, "-n", &ns])
            .expect("sa");
    }
    bind(
        &ns,
        "reader",
        "coredump-view",
        &format!("--serviceaccount={ns}:reader"),
    );
    wait_can_i(&[
        "list",
        "coredumps.coredump.io",
        "-n",
        &ns,
        &format!("--as=system:serviceaccount:{ns}:reader"),
    ]);
    let token = |sa: &str| {
        k.ok(&["create", "token", sa, "-n", &ns])
            .expect("token")
            .trim()
            .to_string()
    };

    let reader = direct(Credential::Bearer(token("reader")));
    let list = get(&reader, &format!("{API}/namespaces/{ns}/coredumps"), &[]);
    assert_eq!(list.status, 200, "{}", list.text());
    assert_eq!(list.json()["items"][0]["metadata"]["name"], "core");
    // Cached or not, the same answer.
    assert_eq!(
        get(
            &reader,
            &format!("{API}/namespaces/{ns}/coredumps/core"),
            &[]
        )
        .status,
        200
    );

    let download = get(
        &reader,
        &format!("{API}/namespaces/{ns}/coredumps/core/download"),
        &[],
    );
    assert_eq!(download.status, 403, "{}", download.text());
    let status = download.json();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Forbidden");
    assert_eq!(
        status["message"],
        format!(
            "coredumps.coredump.io \"core\" is forbidden: User \"system:serviceaccount:{ns}:reader\" cannot get resource \"coredumps/download\" in API group \"coredump.io\" in the namespace \"{ns}\""
        )
    );
    assert_eq!(status["details"]["name"], "core");
    assert_eq!(status["details"]["group"], "coredump.io");
    assert_eq!(status["details"]["kind"], "coredumps");

    // Authenticated but not bound: 403 for an object that exists and one that does not.
    let nobody = direct(Credential::Bearer(token("nobody")));
    for name in ["core", "missing"] {
        let r = get(
            &nobody,
            &format!("{API}/namespaces/{ns}/coredumps/{name}"),
            &[],
        );
        assert_eq!(r.status, 403, "{name}: {}", r.text());
    }
    // Discovery is open to every authenticated user (system:discovery).
    assert_eq!(get(&nobody, API, &[]).status, 200);

    let bogus = direct(Credential::Bearer("not-a-token".into()));
    let r = get(&bogus, &format!("{API}/namespaces/{ns}/coredumps"), &[]);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["reason"], "Unauthorized");
    // Health needs no credentials.
    assert_eq!(get(&direct(Credential::None), "/healthz", &[]).status, 200);
}

#[test]
fn identity_headers_count_only_from_the_front_proxy() {
    let ns = env().namespace("auth-proxy").expect("ns");
    let theirs = env().namespace("auth-proxy-b").expect("ns");
    create_coredump(&ns, "core");
    create_coredump(&theirs, "core");
    bind(&ns, "team-a", "coredump-edit", "--group=team-a");
    wait_can_i(&[
        "list",
        "coredumps.coredump.io",
        "-n",
        &ns,
        "--as=alice",
        "--as-group=team-a",
    ]);
    let ep = &env().cp.endpoints;
    let list = format!("{API}/namespaces/{ns}/coredumps");
    let spoof = [
        ("X-Remote-User", "admin"),
        ("X-Remote-Group", "system:masters"),
    ];

    // No client certificate: the headers are ignored and nothing else authenticates.
    let r = get(&direct(Credential::None), &list, &spoof);
    assert_eq!(r.status, 401, "{}", r.text());
    // A certificate from the front-proxy CA whose CN is not an allowed name.
    let r = get(&direct(cert(&ep.front_proxy_other)), &list, &spoof);
    assert_eq!(r.status, 401, "{}", r.text());

    // The aggregator's own certificate: the headers name the user.
    let proxy = direct(cert(&ep.front_proxy_client));
    let alice = [("X-Remote-User", "alice"), ("X-Remote-Group", "team-a")];
    let r = get(&proxy, &list, &alice);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["items"][0]["metadata"]["name"], "core");
    let r = get(
        &proxy,
        &format!("{list}/core/download"),
        &[("X-Remote-User", "alice")],
    );
    assert_eq!(r.status, 403, "alice without her group: {}", r.text());
    let r = get(
        &proxy,
        &format!("{API}/namespaces/{theirs}/coredumps/core/download"),
        &alice,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        r.json()["message"],
        format!(
            "coredumps.coredump.io \"core\" is forbidden: User \"alice\" cannot get resource \"coredumps/download\" in API group \"coredump.io\" in the namespace \"{theirs}\""
        )
    );
    // Non-resource paths are authorized as such.
    let r = get(&proxy, "/metrics", &alice);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        r.json()["message"],
        "forbidden: User \"alice\" cannot get path \"/metrics\""
    );
    // The admin's client certificate (cluster CA, system:masters) authenticates directly;
    // headers next to it change nothing.
    let pki = ep.dir.join("pki");
    let admin = direct(Credential::Cert {
        cert: pki.join("admin.crt"),
        key: pki.join("admin.key"),
    });
    let r = get(
        &admin,
        &format!("{API}/namespaces/{theirs}/coredumps"),
        &[("X-Remote-User", "alice")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Removes the test's CA from the shared control plane's ConfigMap even if the test fails.
struct RestoreCa<'a> {
    pem: &'a str,
}

impl Drop for RestoreCa<'_> {
    fn drop(&mut self) {
        let _ = edit_front_proxy_ca(|bundle| bundle.replace(self.pem, ""));
    }
}

const CM: [&str; 4] = [
    "configmap",
    "extension-apiserver-authentication",
    "-n",
    "kube-system",
];

/// Rewrites `requestheader-client-ca-file`, retrying on conflicts with kube-apiserver, which
/// also writes this ConfigMap.
fn edit_front_proxy_ca(f: impl Fn(&str) -> String) -> Result<(), String> {
    let k = env().kubectl();
    for _ in 0..20 {
        let out = k
            .ok(&[&["get"], &CM[..], &["-o", "json"]].concat())
            .map_err(|e| e.to_string())?;
        let mut cm: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        let old = cm["data"]["requestheader-client-ca-file"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        cm["data"]["requestheader-client-ca-file"] = Value::String(f(&old));
        // replace carries the resourceVersion: a concurrent write makes it fail, and we retry.
        let body = serde_json::to_vec(&cm).map_err(|e| e.to_string())?;
        let out = k
            .run_stdin(&["replace", "-f", "-"], &body)
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err("ConfigMap kept changing".into())
}

/// Adds a second front-proxy CA to the shared control plane's ConfigMap and removes it again.
/// kube-apiserver merges its own CA back into the bundle whenever it syncs, so adding trust
/// (and taking the added trust away) is what can be tested without disturbing the aggregator.
#[test]
fn a_rotated_front_proxy_ca_is_picked_up_without_restart() {
    let env = env();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("rotated-front-proxy-ca").expect("ca");
    let pair = ca
        .issue("front-proxy-client", None, &[], Usage::Client)
        .expect("issue")
        .write(dir.path(), "rotated")
        .expect("write");
    let pid = env.server().pid();
    let rotated = direct(cert(&pair));
    let alice = [("X-Remote-User", "alice"), ("X-Remote-Group", "team-a")];
    // Discovery: allowed for any authenticated user, so only authentication is in question.
    let status = || get(&rotated, API, &alice).status;
    assert_eq!(
        status(),
        401,
        "a certificate from an unknown CA must not authenticate"
    );

    let pem = ca.cert_pem.clone();
    let _restore = RestoreCa { pem: &pem };
    edit_front_proxy_ca(|bundle| format!("{bundle}{pem}")).expect("add CA");
    eventually("the new CA to be trusted", Duration::from_secs(30), || {
        (status() == 200).then_some(())
    });
    // The aggregator's certificate still works alongside.
    let ep = &env.cp.endpoints;
    assert_eq!(
        get(&direct(cert(&ep.front_proxy_client)), API, &alice).status,
        200
    );
    // kube-apiserver resyncs the ConfigMap from its flags; our CA survives that merge, and
    // removing it takes the trust away again.
    edit_front_proxy_ca(|bundle| bundle.replace(&pem, "")).expect("remove CA");
    eventually(
        "the removed CA to be distrusted",
        Duration::from_secs(30),
        || (status() == 401).then_some(()),
    );
    assert_eq!(env.server().pid(), pid, "no restart");
    assert_eq!(
        get(&direct(cert(&ep.front_proxy_client)), API, &alice).status,
        200
    );
}
