//! What a cluster admin installs: the kustomize base and overlays in deploy/ against the
//! real kube-apiserver, the images deploy/images/build.sh produces, and the self-signed
//! certificate path (apiserver/src/selfcert/) making the APIService Available.

// A test binary: its helpers are test code as much as its #[test] functions, and a panic
// is the failure report (clippy.toml's allow-*-in-tests covers only the #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use coredump_integration::bins::workspace_bin;
use coredump_integration::env::TestEnv;
use coredump_integration::kubectl::Kubectl;
use coredump_integration::process::{Lifetime, Proc};
use serde_json::Value;

use coredump_apiserver::selfcert;

const SERVICE_DNS: &str = "coredump-apiserver.coredump-system.svc";
const APISERVICE: &str = "v1alpha1.coredump.io";
const SECRET: &str = "coredump-apiserver-tls";
const NAMESPACE: &str = "coredump-system";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

fn deploy(sub: &str) -> String {
    repo()
        .join("deploy")
        .join(sub)
        .to_string_lossy()
        .into_owned()
}

/// The tests here change cluster-wide objects (the APIService, the server's certificate):
/// one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn env() -> &'static TestEnv {
    TestEnv::shared()
}

/// `kubectl kustomize <dir>` → the documents, parsed.
fn render(kubectl: &Kubectl, dir: &str) -> Vec<Value> {
    let yaml = kubectl
        .ok(&["kustomize", dir])
        .unwrap_or_else(|e| panic!("kubectl kustomize {dir}: {e}"));
    docs(&yaml)
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml document"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn kind_name(o: &Value) -> String {
    format!(
        "{}/{}",
        o["kind"].as_str().unwrap_or("?"),
        o["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in the rendered manifests"))
}

fn pod_spec(o: &Value) -> &Value {
    &o["spec"]["template"]["spec"]
}

fn containers(o: &Value) -> Vec<&Value> {
    let spec = pod_spec(o);
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| spec[k].as_array())
        .flatten()
        .collect()
}

/// Every image a workload in `objs` names.
fn images(objs: &[Value]) -> BTreeSet<String> {
    objs.iter()
        .flat_map(containers)
        .filter_map(|c| c["image"].as_str().map(str::to_string))
        .collect()
}

/// `kubectl apply --dry-run=server` of `objs` (one List), returning kubectl's output.
fn server_dry_run(kubectl: &Kubectl, objs: Vec<Value>) -> String {
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objs});
    let body = serde_json::to_vec(&list).unwrap();
    let out = kubectl
        .run_stdin(&["apply", "--dry-run=server", "-f", "-"], &body)
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "server dry-run failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn base_passes_server_side_dry_run() {
    let _g = serial();
    let kubectl = env().kubectl();
    // Exactly what deploy/README.md tells an admin to run, against the real
    // kube-apiserver: every object passes admission and validation.
    let out = kubectl
        .ok(&["apply", "--dry-run=server", "-k", &deploy(""), "-o", "name"])
        .unwrap_or_else(|e| panic!("{e}"));
    let objs = render(&kubectl, &deploy(""));
    let names: Vec<String> = objs.iter().map(kind_name).collect();
    for want in [
        "Namespace/coredump-system",
        "StatefulSet/coredump-apiserver",
        "Service/coredump-apiserver",
        "APIService/v1alpha1.coredump.io",
        "DaemonSet/coredump-node-agent",
        "ServiceAccount/coredump-apiserver",
        "ServiceAccount/coredump-node-agent",
        "ClusterRoleBinding/coredump-node-agent",
        "Role/coredump-apiserver-selfcert",
        "ClusterRole/coredump-apiserver-selfcert",
        "ClusterRole/coredump-view",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let printed: BTreeSet<String> = out.lines().map(str::to_string).collect();
    for o in &objs {
        let kind = o["kind"].as_str().unwrap().to_lowercase();
        let name = o["metadata"]["name"].as_str().unwrap();
        assert!(
            printed
                .iter()
                .any(|p| p.starts_with(&kind) && p.ends_with(&format!("/{name}"))),
            "{} not in the dry-run output:\n{out}",
            kind_name(o)
        );
    }
    assert_eq!(printed.len(), objs.len(), "{out}");
}

#[test]
fn base_objects_are_configured_as_documented() {
    let objs = render(&env().kubectl(), &deploy(""));

    let sts = find(&objs, "StatefulSet", "coredump-apiserver");
    assert_eq!(sts["metadata"]["namespace"], NAMESPACE);
    assert_eq!(sts["spec"]["replicas"], 1);
    let pod = pod_spec(sts);
    assert_eq!(pod["serviceAccountName"], "coredump-apiserver");
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    for probe in ["livenessProbe", "readinessProbe"] {
        let p = &c[probe]["httpGet"];
        assert_eq!(p["scheme"], "HTTPS", "{probe}");
        assert_eq!(p["port"], "https", "{probe}");
    }
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["ports"][0]["containerPort"], 8443);
    assert!(c["resources"]["requests"].is_object() && c["resources"]["limits"].is_object());
    let claim = &sts["spec"]["volumeClaimTemplates"][0];
    let data_mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == claim["metadata"]["name"])
        .expect("the claim is mounted");
    assert_eq!(data_mount["mountPath"], "/var/lib/coredump-apiserver");

    let svc = find(&objs, "Service", "coredump-apiserver");
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert_eq!(svc["spec"]["ports"][0]["port"], 443);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "https");

    let api = find(&objs, "APIService", APISERVICE);
    assert_eq!(api["spec"]["groupPriorityMinimum"], 1000);
    assert_eq!(api["spec"]["versionPriority"], 15);
    assert_eq!(api["spec"]["service"]["name"], "coredump-apiserver");
    assert_eq!(api["spec"]["service"]["port"], 443);
    assert!(api["spec"]["caBundle"].is_null() && api["spec"]["insecureSkipTLSVerify"].is_null());

    let ds = find(&objs, "DaemonSet", "coredump-node-agent");
    let pod = pod_spec(ds);
    assert_eq!(pod["hostPID"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["privileged"], true);
    assert_eq!(
        c["lifecycle"]["preStop"]["exec"]["command"][1],
        "restore-pattern"
    );
    assert_eq!(
        c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    let host_paths: BTreeMap<String, &Value> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["hostPath"].is_object())
        .map(|v| (v["hostPath"]["path"].as_str().unwrap().to_string(), v))
        .collect();
    for p in [
        "/proc/sys/kernel",
        "/var/lib/coredump-detector",
        "/sys/fs/cgroup",
    ] {
        assert!(host_paths.contains_key(p), "hostPath {p} missing");
    }
    let cgroup_vol = host_paths["/sys/fs/cgroup"]["name"].clone();
    let cgroup_mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == cgroup_vol)
        .unwrap();
    assert_eq!(cgroup_mount["readOnly"], true);
    let token = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|v| v["projected"]["sources"][0]["serviceAccountToken"].as_object())
        .expect("a projected service-account token");
    assert!(token["audience"].is_string() && token["expirationSeconds"].is_number());
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let token_path = args
        .iter()
        .find_map(|a| a.strip_prefix("--token-file="))
        .expect("--token-file");
    assert!(token_path.ends_with(token["path"].as_str().unwrap()));
    // The kernel runs the handler and writes the spool in the host's filesystem: both
    // must be under a hostPath mounted at the same path inside the container.
    let mounts = c["volumeMounts"].as_array().unwrap();
    let same_path_host_mount = |p: &str| {
        mounts.iter().any(|m| {
            let mp = m["mountPath"].as_str().unwrap();
            p.starts_with(&format!("{mp}/"))
                && host_paths.get(mp).is_some_and(|v| v["name"] == m["name"])
        })
    };
    for flag in ["--handler-path=", "--spool="] {
        let p = args
            .iter()
            .find_map(|a| a.strip_prefix(flag))
            .unwrap_or_else(|| panic!("{flag} missing"));
        assert!(
            same_path_host_mount(p),
            "{flag}{p} is not on a same-path hostPath"
        );
    }
    // The node-wide core_pattern lock is the host's.
    assert!(host_paths.contains_key("/run/coredump-detector-core-pattern.lock"));
}

/// Flags the manifests pass that a binary's `--help` does not list.
fn unknown_flags(help: &str, args: &[&str]) -> Vec<String> {
    args.iter()
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap().to_string())
        .filter(|flag| !help.contains(&format!("--{flag}")))
        .collect()
}

fn help(bin: &str, sub: &[&str]) -> String {
    let path = workspace_bin(bin).unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(&path)
        .args(sub)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", path.display()));
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn manifests_pass_only_flags_the_binaries_have() {
    let kubectl = env().kubectl();
    let mut missing = Vec::new();
    for dir in ["", "overlays/cert-manager"] {
        let objs = render(&kubectl, &deploy(dir));
        let sts = find(&objs, "StatefulSet", "coredump-apiserver");
        let args: Vec<&str> = pod_spec(sts)["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for f in unknown_flags(&help("coredump-apiserver", &[]), &args) {
            missing.push(format!("deploy/{dir}: coredump-apiserver --{f}"));
        }
        let ds = find(&objs, "DaemonSet", "coredump-node-agent");
        let c = &pod_spec(ds)["containers"][0];
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let (sub, flags) = args.split_first().expect("a subcommand");
        for f in unknown_flags(&help("coredump-node-handler", &[sub]), flags) {
            missing.push(format!("deploy/{dir}: coredump-node-handler {sub} --{f}"));
        }
        let pre: Vec<&str> = c["lifecycle"]["preStop"]["exec"]["command"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for f in unknown_flags(&help("coredump-node-handler", &[pre[1]]), &pre[2..]) {
            missing.push(format!(
                "deploy/{dir}: preStop coredump-node-handler {} --{f}",
                pre[1]
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "flags the binaries do not know: {missing:#?}"
    );
}

fn script_images() -> BTreeSet<String> {
    let out = Command::new("bash")
        .arg(repo().join("deploy/images/build.sh"))
        .arg("--print-images")
        .output()
        .expect("run build.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn manifests_name_the_images_the_build_script_produces() {
    let built = script_images();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        built,
        BTreeSet::from([
            format!("coredump-detector/apiserver:{version}"),
            format!("coredump-detector/node-handler:{version}"),
        ])
    );
    let kubectl = env().kubectl();
    for dir in ["", "base", "overlays/cert-manager"] {
        let named = images(&render(&kubectl, &deploy(dir)));
        assert_eq!(named, built, "deploy/{dir}");
    }
}

#[test]
fn cert_manager_overlay() {
    let _g = serial();
    let kubectl = env().kubectl();
    let objs = render(&kubectl, &deploy("overlays/cert-manager"));
    // cert-manager's kinds have no CRDs in the harness (a client dry-run needs them too, to
    // map the kind): check how they fit together here, and dry-run everything else.
    let (cm, rest): (Vec<Value>, Vec<Value>) = objs.into_iter().partition(|o| {
        o["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .starts_with("cert-manager.io/")
    });
    let issuers: BTreeSet<&str> = cm
        .iter()
        .filter(|o| o["kind"] == "Issuer")
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    let certs: Vec<&Value> = cm.iter().filter(|o| o["kind"] == "Certificate").collect();
    assert_eq!(certs.len(), 2, "a CA and a serving certificate");
    for c in &certs {
        assert_eq!(c["apiVersion"], "cert-manager.io/v1");
        assert_eq!(c["metadata"]["namespace"], NAMESPACE);
        let issuer = c["spec"]["issuerRef"]["name"].as_str().unwrap();
        assert!(
            issuers.contains(issuer),
            "issuer {issuer} not in the overlay"
        );
    }
    let ca_issuer = cm
        .iter()
        .find(|o| o["kind"] == "Issuer" && o["spec"]["ca"].is_object())
        .expect("a CA issuer");
    let ca_cert = certs.iter().find(|c| c["spec"]["isCA"] == true).unwrap();
    assert_eq!(
        ca_issuer["spec"]["ca"]["secretName"],
        ca_cert["spec"]["secretName"]
    );
    let serving = certs.iter().find(|c| c["spec"]["isCA"] != true).unwrap();
    assert_eq!(serving["spec"]["secretName"], SECRET);
    assert_eq!(
        serving["spec"]["issuerRef"]["name"],
        ca_issuer["metadata"]["name"]
    );
    assert!(serving["spec"]["dnsNames"]
        .as_array()
        .unwrap()
        .contains(&Value::from(SERVICE_DNS)));

    let api = find(&rest, "APIService", APISERVICE);
    assert_eq!(
        api["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!(
            "{}/{}",
            serving["metadata"]["namespace"].as_str().unwrap(),
            serving["metadata"]["name"].as_str().unwrap()
        )
    );
    let sts = find(&rest, "StatefulSet", "coredump-apiserver");
    let c = &pod_spec(sts)["containers"][0];
    let args = c["args"].to_string();
    assert!(!args.contains("--self-signed"), "{args}");
    assert!(
        args.contains("--tls-cert-file=/run/coredump-apiserver/tls/tls.crt"),
        "{args}"
    );
    let tls = pod_spec(sts)["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "tls")
        .unwrap();
    assert_eq!(tls["secret"]["secretName"], SECRET);
    assert!(tls["emptyDir"].is_null());
    let ds = find(&rest, "DaemonSet", "coredump-node-agent");
    let ca_vol = pod_spec(ds)["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "serving-ca")
        .unwrap();
    assert_eq!(ca_vol["secret"]["items"][0]["key"], "ca.crt");
    for o in &rest {
        assert!(
            !o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .ends_with("-selfcert"),
            "{} should be removed by the overlay",
            kind_name(o)
        );
    }
    let printed = server_dry_run(&kubectl, rest);
    assert!(printed.contains("(server dry run)"), "{printed}");
}

async fn kube_client() -> kube::Client {
    let ep = &env().cp.endpoints;
    let kubeconfig = kube::config::Kubeconfig::read_from(&ep.kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("client config");
    kube::Client::try_from(config).expect("client")
}

fn secret_data(kubectl: &Kubectl) -> (Value, BTreeMap<String, Vec<u8>>) {
    use base64::Engine as _;
    let json = kubectl
        .ok(&["get", "secret", SECRET, "-n", NAMESPACE, "-o", "json"])
        .expect("get secret");
    let v: Value = serde_json::from_str(&json).unwrap();
    let data = v["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, b)| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b.as_str().unwrap())
                .unwrap();
            (k.clone(), bytes)
        })
        .collect();
    (v, data)
}

fn apiservice_ca_bundle(kubectl: &Kubectl) -> Vec<u8> {
    use base64::Engine as _;
    let b64 = kubectl
        .ok(&[
            "get",
            "apiservice",
            APISERVICE,
            "-o",
            "jsonpath={.spec.caBundle}",
        ])
        .expect("get apiservice");
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .unwrap()
}

fn wait_available(kubectl: &Kubectl, within: Duration) {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < within {
        last = kubectl
            .ok(&[
                "get",
                "apiservice",
                APISERVICE,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Available\")]}",
            ])
            .unwrap_or_default();
        if last.contains("\"status\":\"True\"") {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("APIService not Available after {within:?}: {last}");
}

/// Installs `cert`/`key` as the harness server's serving files (it reloads them within
/// about 10 s), key first, each by rename.
fn serve_with(cert: &Path, key: &Path) {
    let server = env().server();
    for (from, to) in [(key, &server.serving.key), (cert, &server.serving.cert)] {
        let tmp = to.with_extension("new");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    }
}

/// GET /livez from the harness server by its Service name with curl (OpenSSL), trusting
/// only `ca_file`.
fn curl_livez(ca_file: &Path) -> Result<String, String> {
    let port = env().server().port;
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "5", "--cacert"])
        .arg(ca_file)
        .arg("--resolve")
        .arg(format!("{SERVICE_DNS}:{port}:127.0.0.1"))
        .arg(format!("https://{SERVICE_DNS}:{port}/livez"))
        .output()
        .map_err(|e| format!("run curl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn wait_curl_livez(ca_file: &Path, within: Duration) {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < within {
        match curl_livez(ca_file) {
            Ok(_) => return,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("curl trusting the self-signed CA failed for {within:?}: {last}");
}

#[test]
fn self_signed_certificate_makes_the_apiservice_available() {
    let _g = serial();
    let env = env();
    let kubectl = env.kubectl();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(kube_client());
    let dir = tempfile::tempdir().unwrap();
    let cfg = selfcert::SelfCertConfig::new(dir.path().join("tls"));
    let _ = kubectl.run(&[
        "delete",
        "secret",
        SECRET,
        "-n",
        NAMESPACE,
        "--ignore-not-found",
    ]);

    // First start: a new Secret, the caBundle set, the files written.
    let (cert, key) = rt
        .block_on(selfcert::ensure(client.clone(), &cfg))
        .expect("ensure");
    assert_eq!(
        (cert.clone(), key.clone()),
        (cfg.cert_path(), cfg.key_path())
    );
    let (secret, data) = secret_data(&kubectl);
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let keys: BTreeSet<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["tls.crt", "tls.key", "ca.crt", "ca.key", "ca-bundle.crt"])
    );
    assert_eq!(std::fs::read(&cert).unwrap(), data["tls.crt"]);
    assert_eq!(std::fs::read(&key).unwrap(), data["tls.key"]);
    let bundle = apiservice_ca_bundle(&kubectl);
    assert_eq!(bundle, data["ca-bundle.crt"]);
    assert_eq!(bundle, data["ca.crt"], "one CA so far");
    selfcert::verify_serving_cert(&bundle, &data["tls.crt"], SERVICE_DNS, SystemTime::now())
        .expect("the certificate verifies for the Service name against the caBundle");
    assert!(selfcert::verify_serving_cert(
        &bundle,
        &data["tls.crt"],
        "other.coredump-system.svc",
        SystemTime::now()
    )
    .is_err());

    // A second start reuses everything.
    let rv = secret["metadata"]["resourceVersion"].clone();
    let report = rt
        .block_on(selfcert::sync_at(client.clone(), &cfg, SystemTime::now()))
        .unwrap();
    assert_eq!(report.change, selfcert::Change::None);
    assert!(
        !report.ca_bundle_updated && !report.files_written,
        "{report:?}"
    );
    assert_eq!(secret_data(&kubectl).0["metadata"]["resourceVersion"], rv);

    // The harness's server serves what ensure wrote: the aggregator (Go's TLS client,
    // trusting only the caBundle) marks the APIService Available, and curl (OpenSSL)
    // trusting only the bundle reaches it by the Service's name.
    serve_with(&cert, &key);
    let ca_file = dir.path().join("bundle.pem");
    std::fs::write(&ca_file, &bundle).unwrap();
    wait_curl_livez(&ca_file, Duration::from_secs(30));
    wait_available(&kubectl, Duration::from_secs(90));
    kubectl
        .ok(&["get", "coredumps.coredump.io", "-A"])
        .expect("the API answers through the aggregator");

    // Some 250 days on: a new serving certificate from the same CA; caBundle untouched.
    let day = Duration::from_secs(86400);
    let report = rt
        .block_on(selfcert::sync_at(
            client.clone(),
            &cfg,
            SystemTime::now() + 250 * day,
        ))
        .unwrap();
    assert!(
        matches!(report.change, selfcert::Change::NewCert { .. }),
        "{report:?}"
    );
    assert!(
        !report.ca_bundle_updated && report.files_written,
        "{report:?}"
    );
    let (_, renewed) = secret_data(&kubectl);
    assert_eq!(renewed["ca.crt"], data["ca.crt"]);
    assert_ne!(renewed["tls.crt"], data["tls.crt"]);
    assert_eq!(apiservice_ca_bundle(&kubectl), bundle);

    // Seven years on: a new CA; the bundle holds it first and the old one after.
    let report = rt
        .block_on(selfcert::sync_at(
            client.clone(),
            &cfg,
            SystemTime::now() + 7 * 365 * day,
        ))
        .unwrap();
    assert!(
        matches!(report.change, selfcert::Change::NewCa { .. }),
        "{report:?}"
    );
    assert!(report.ca_bundle_updated, "{report:?}");
    let (_, rotated) = secret_data(&kubectl);
    assert_ne!(rotated["ca.crt"], data["ca.crt"]);
    let bundle2 = apiservice_ca_bundle(&kubectl);
    assert_eq!(bundle2, rotated["ca-bundle.crt"]);
    assert!(bundle2.starts_with(&rotated["ca.crt"]));
    assert!(bundle2.ends_with(&data["ca.crt"]));

    // Back to the present: that future CA is not valid yet, so a CA valid now is made; the
    // bundle trusts all three until they expire, and the server is Available again with
    // the new certificate.
    rt.block_on(selfcert::ensure(client.clone(), &cfg))
        .expect("ensure");
    let (_, now_data) = secret_data(&kubectl);
    let bundle3 = apiservice_ca_bundle(&kubectl);
    assert_eq!(bundle3, now_data["ca-bundle.crt"]);
    assert_eq!(count_certs(&bundle3), 3);
    selfcert::verify_serving_cert(
        &bundle3,
        &now_data["tls.crt"],
        SERVICE_DNS,
        SystemTime::now(),
    )
    .unwrap();
    serve_with(&cert, &key);
    std::fs::write(&ca_file, &bundle3).unwrap();
    let mut only_new = tempfile::NamedTempFile::new().unwrap();
    only_new.write_all(&now_data["ca.crt"]).unwrap();
    wait_curl_livez(only_new.path(), Duration::from_secs(30));
    wait_available(&kubectl, Duration::from_secs(90));
}

/// A kubeconfig for kube-apiserver that authenticates as `token`.
fn token_kubeconfig(path: &Path, token: &str) {
    let ep = &env().cp.endpoints;
    let kc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {
            "server": ep.server,
            "certificate-authority": ep.ca_cert,
        }}],
        "users": [{"name": "u", "user": {"token": token.trim()}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    });
    std::fs::write(path, serde_json::to_vec_pretty(&kc).unwrap()).unwrap();
}

/// The real server binary with `--self-signed`, authenticating to kube-apiserver as its
/// ServiceAccount with only the permissions deploy/ grants it, takes the harness server's
/// place (port, data) and becomes Available through the aggregator.
#[test]
fn server_binary_with_self_signed_and_the_deployed_rbac_becomes_available() {
    let _g = serial();
    let env = env();
    let kubectl = env.kubectl();
    kubectl
        .ok(&["apply", "-k", &deploy("rbac")])
        .unwrap_or_else(|e| panic!("{e}"));
    kubectl
        .ok(&["apply", "-f", &deploy("base/selfcert-rbac.yaml")])
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = kubectl.run(&[
        "delete",
        "secret",
        SECRET,
        "-n",
        NAMESPACE,
        "--ignore-not-found",
    ]);
    let token = kubectl
        .ok(&[
            "create",
            "token",
            "coredump-apiserver",
            "-n",
            NAMESPACE,
            "--duration=1h",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    token_kubeconfig(&kubeconfig, &token);
    let cert_dir = dir.path().join("tls");

    let mut server = env.server();
    server.stop();
    let mut cmd = Command::new(workspace_bin("coredump-apiserver").unwrap());
    cmd.args([
        "--bind-address=127.0.0.1".to_string(),
        format!("--secure-port={}", server.port),
        "--self-signed".to_string(),
        format!("--self-signed-cert-dir={}", cert_dir.display()),
        format!("--data-dir={}", server.dir.join("data").display()),
        format!("--kubeconfig={}", kubeconfig.display()),
    ])
    .env_remove("POD_NAMESPACE")
    .env("RUST_LOG", "info");
    let mut proc = Proc::spawn("selfsigned-apiserver", cmd, dir.path(), Lifetime::Scoped).unwrap();

    let start = Instant::now();
    loop {
        if let Some(status) = proc.exited() {
            panic!(
                "coredump-apiserver --self-signed exited ({status}):\n{}",
                proc.log_tail(40)
            );
        }
        let available = kubectl
            .ok(&[
                "get",
                "apiservice",
                APISERVICE,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Available\")].status}",
            ])
            .unwrap_or_default();
        if available.trim() == "True" && secret_exists(&kubectl) {
            // Available may still be the harness server's verdict from before: require the
            // caBundle to be the one the server just wrote, and the API to answer.
            let (_, data) = secret_data(&kubectl);
            if apiservice_ca_bundle(&kubectl) == data["ca-bundle.crt"]
                && kubectl.ok(&["get", "coredumps.coredump.io", "-A"]).is_ok()
            {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "not Available with --self-signed after 2 minutes; server log:\n{}",
            proc.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // It serves the certificate it wrote, trusted by the bundle it published.
    let (secret, data) = secret_data(&kubectl);
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(
        std::fs::read(cert_dir.join("tls.crt")).unwrap(),
        data["tls.crt"]
    );
    selfcert::verify_serving_cert(
        &data["ca-bundle.crt"],
        &data["tls.crt"],
        SERVICE_DNS,
        SystemTime::now(),
    )
    .unwrap();
    let log = std::fs::read_to_string(&proc.log).unwrap_or_default();
    assert!(
        !log.contains("Forbidden") && !log.contains("forbidden"),
        "{log}"
    );
    proc.stop();

    // Give the harness its server back, serving the same certificate.
    for (from, to) in [
        (cert_dir.join("tls.key"), &server.serving.key),
        (cert_dir.join("tls.crt"), &server.serving.cert),
    ] {
        std::fs::copy(from, to).unwrap();
    }
    server.restart().unwrap();
    drop(server);
    wait_available(&kubectl, Duration::from_secs(90));
}

fn secret_exists(kubectl: &Kubectl) -> bool {
    kubectl
        .ok(&["get", "secret", SECRET, "-n", NAMESPACE, "-o", "name"])
        .is_ok()
}

fn count_certs(pem: &[u8]) -> usize {
    String::from_utf8_lossy(pem)
        .matches("-----BEGIN CERTIFICATE-----")
        .count()
}

/// Why the image test cannot run here, if it cannot.
fn buildah_unavailable() -> Option<String> {
    if std::env::var_os("COREDUMP_SKIP_IMAGE_BUILD").is_some() {
        return Some("COREDUMP_SKIP_IMAGE_BUILD is set".into());
    }
    match Command::new("buildah").arg("--version").output() {
        Err(e) => {
            return Some(format!(
                "buildah not runnable ({e}); apt-get install buildah"
            ))
        }
        Ok(o) if !o.status.success() => return Some("buildah --version failed".into()),
        Ok(_) => {}
    }
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not root (build.sh uses root buildah storage)".into());
    }
    None
}

#[test]
fn build_script_builds_images_whose_binaries_start() {
    if let Some(why) = buildah_unavailable() {
        eprintln!("SKIPPED build_script_builds_images_whose_binaries_start: {why}");
        return;
    }
    let script = repo().join("deploy/images/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .expect("run build.sh");
    assert!(
        out.status.success(),
        "build.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(built, script_images());

    let version = env!("CARGO_PKG_VERSION");
    let buildah = |args: &[&str]| {
        let o = Command::new("buildah")
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .expect("run buildah");
        assert!(
            o.status.success(),
            "buildah {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    for (image, bin, user, extra) in [
        ("apiserver", "/coredump-apiserver", "65532:65532", vec![]),
        (
            "node-handler",
            "/coredump-node-handler",
            "0:0",
            vec!["agent", "restore-pattern"],
        ),
    ] {
        let r = format!("coredump-detector/{image}:{version}");
        let ctr = buildah(&["from", "--pull-never", &r]);
        let config = buildah(&["inspect", "--type", "container", &ctr]);
        let config: Value = serde_json::from_str(&config).unwrap();
        assert_eq!(config["OCIv1"]["config"]["User"], user, "{r}");
        // Nothing but the binary and the few files from the build context (looked at
        // before anything runs: `buildah run` adds /etc/hosts and friends to the
        // working container).
        let mnt = buildah(&["mount", &ctr]);
        let mut files = Vec::new();
        collect_files(Path::new(&mnt), Path::new(&mnt), &mut files);
        buildah(&["umount", &ctr]);
        let run = |args: &[&str]| {
            let mut all = vec![
                "run",
                "--isolation",
                "chroot",
                "--user",
                user,
                &ctr,
                "--",
                bin,
            ];
            all.extend_from_slice(args);
            buildah(&all)
        };
        let v = run(&["--version"]);
        assert!(v.contains(version), "{r}: {v}");
        for sub in extra {
            let h = run(&[sub, "--help"]);
            assert!(h.contains("Usage"), "{r} {sub}: {h}");
        }
        buildah(&["rm", &ctr]);
        let expected: BTreeSet<String> = [
            bin.trim_start_matches('/'),
            "etc/passwd",
            "etc/group",
            "etc/ssl/certs/ca-certificates.crt",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let files: BTreeSet<String> = files.into_iter().collect();
        assert_eq!(files, expected, "{r}");
    }
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            collect_files(root, &p, out);
        } else {
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
}
