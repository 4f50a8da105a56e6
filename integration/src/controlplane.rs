//! etcd + kube-apiserver (+ kube-controller-manager) on loopback, configured for what the
//! add-on relies on: RBAC, client-certificate and token users, service-account tokens
//! (also bound to pods), and the aggregation layer with its front-proxy CA.
//!
//! With [`Options::node`] it is the control plane of a real node ([`crate::realnode`]):
//! kube-apiserver listens on the node's address instead of loopback (pods reach it through
//! the `kubernetes` Service, whose endpoint it maintains), authorizes with Node and RBAC,
//! admits with NodeRestriction, reaches the kubelet with a client certificate and routes
//! aggregated APIs to endpoint (pod) IPs; kube-controller-manager runs every controller;
//! and the kubelet gets its own kubeconfig (`system:node:<name>`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::endpoints::Endpoints;
use crate::kubectl::Kubectl;
use crate::pki::{self, Ca, PairFiles, Usage};
use crate::process::{free_port, wait_for, Lifetime, Proc};
use crate::Error;

/// Users the harness configures, with the token that authenticates each.
pub const USERS: &[User] = &[
    User {
        name: "alice",
        group: "team-a",
        token: "alice-token-4b1f0c2e",
    },
    User {
        name: "bob",
        group: "team-b",
        token: "bob-token-9d3e7a51",
    },
];

#[derive(Clone, Copy, Debug)]
pub struct User {
    pub name: &'static str,
    pub group: &'static str,
    pub token: &'static str,
}

/// The service-account issuer; also the audience of tokens from `kubectl create token`.
pub const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

#[derive(Clone, Debug)]
pub struct Options {
    /// kube-apiserver's `--request-timeout`.
    pub request_timeout: Duration,
    /// Also run kube-controller-manager: namespace deletion, default service accounts, garbage
    /// collection and the aggregation of ClusterRoles such as `view` (their rules are empty
    /// without it).
    pub controller_manager: bool,
    pub lifetime: Lifetime,
    /// etcd syncs every write to disk, as in a real cluster. Off for the tests (a
    /// throw-away store, faster); on for the benchmarks, whose baseline would otherwise
    /// skip the fsync our server does on every write.
    pub etcd_fsync: bool,
    /// The control plane of a real node (see the module docs); `None`: loopback only.
    pub node: Option<NodeApi>,
}

/// What a real node needs from its control plane.
#[derive(Clone, Debug)]
pub struct NodeApi {
    /// kube-apiserver's bind and advertise address, reachable from the node's pods.
    pub address: std::net::Ipv4Addr,
    /// The Node's name: the kubelet's kubeconfig authenticates `system:node:<name>`.
    pub node_name: String,
}

/// ClusterIP of the `kubernetes` Service (first address of the service range).
pub const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";
/// The service range.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

impl Default for Options {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(60),
            controller_manager: true,
            lifetime: Lifetime::Scoped,
            etcd_fsync: false,
            node: None,
        }
    }
}

pub struct ControlPlane {
    pub endpoints: Endpoints,
    procs: Vec<Proc>,
}

impl ControlPlane {
    /// Starts a control plane in `dir` (created if missing) and waits until it is ready.
    pub fn start(dir: &Path, bin_dir: &Path, opts: &Options) -> Result<Self, Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Io(format!("mkdir {}", dir.display()), e))?;
        // kubectl resolves relative paths in a kubeconfig against the file's directory.
        let dir = &dir
            .canonicalize()
            .map_err(|e| Error::Io(format!("resolve {}", dir.display()), e))?;
        let pki_dir = dir.join("pki");
        std::fs::create_dir_all(&pki_dir).map_err(|e| Error::Io("mkdir pki".into(), e))?;

        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let api_port = free_port()?;
        let api_ip = opts
            .node
            .as_ref()
            .map_or_else(|| "127.0.0.1".to_string(), |n| n.address.to_string());
        let server = format!("https://{api_ip}:{api_port}");

        let ca = Ca::new("kubernetes-ca")?;
        let ca_cert = ca.write_cert(&pki_dir.join("ca.crt"))?;
        let mut sans = vec![
            "127.0.0.1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ];
        if opts.node.is_some() {
            sans.push(&api_ip);
            sans.push(KUBERNETES_SERVICE_IP);
        }
        let serving = ca
            .issue("kube-apiserver", None, &sans, Usage::Server)?
            .write(&pki_dir, "apiserver")?;
        let admin = ca
            .issue(
                "kubernetes-admin",
                Some("system:masters"),
                &[],
                Usage::Client,
            )?
            .write(&pki_dir, "admin")?;
        let front_ca = Ca::new("front-proxy-ca")?;
        let front_proxy_ca = front_ca.write_cert(&pki_dir.join("front-proxy-ca.crt"))?;
        let front_proxy_client = front_ca
            .issue("front-proxy-client", None, &[], Usage::Client)?
            .write(&pki_dir, "front-proxy-client")?;
        let front_proxy_other = front_ca
            .issue("not-the-aggregator", None, &[], Usage::Client)?
            .write(&pki_dir, "front-proxy-other")?;
        let sa_key = pki_dir.join("sa.key");
        let sa_pub = pki_dir.join("sa.pub");
        let (private, public) = pki::key_pair_pem()?;
        pki::write(&sa_key, &private)?;
        pki::write(&sa_pub, &public)?;
        let tokens = pki_dir.join("tokens.csv");
        let token_lines: String = USERS
            .iter()
            .map(|u| format!("{},{},{}-uid,\"{}\"\n", u.token, u.name, u.name, u.group))
            .collect();
        pki::write(&tokens, &token_lines)?;

        let kubeconfig = dir.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &server, &ca_cert, &admin)?;
        let mut kubelet_kubeconfig = None;
        let mut kubelet_client = None;
        if let Some(node) = &opts.node {
            // The kubelet as NodeRestriction and the Node authorizer know it.
            let kubelet = ca
                .issue(
                    &format!("system:node:{}", node.node_name),
                    Some("system:nodes"),
                    &[],
                    Usage::Client,
                )?
                .write(&pki_dir, "kubelet")?;
            let path = dir.join("kubelet.kubeconfig");
            write_single_user_kubeconfig(&path, &server, &ca_cert, &kubelet)?;
            kubelet_kubeconfig = Some(path);
            // kube-apiserver to the kubelet (logs, exec): authorized by the kubelet's
            // webhook as a cluster admin.
            kubelet_client = Some(
                ca.issue(
                    "kube-apiserver-kubelet-client",
                    Some("system:masters"),
                    &[],
                    Usage::Client,
                )?
                .write(&pki_dir, "apiserver-kubelet-client")?,
            );
        }

        let mut procs = Vec::new();
        let mut etcd = Command::new(bin_dir.join("etcd"));
        etcd.args([
            "--name=default".to_string(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"),
            "--log-level=warn".to_string(),
        ]);
        if !opts.etcd_fsync {
            etcd.arg("--unsafe-no-fsync");
        }
        procs.push(Proc::spawn("etcd", etcd, dir, opts.lifetime)?);
        wait_for("etcd to listen", Duration::from_secs(30), || {
            check_alive(&mut procs)?;
            Ok(std::net::TcpStream::connect(("127.0.0.1", etcd_port))
                .ok()
                .map(|_| ()))
        })?;

        let mut api = Command::new(bin_dir.join("kube-apiserver"));
        api.args([
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            format!("--bind-address={api_ip}"),
            format!("--advertise-address={api_ip}"),
            format!("--secure-port={api_port}"),
            format!("--tls-cert-file={}", serving.cert.display()),
            format!("--tls-private-key-file={}", serving.key.display()),
            format!("--client-ca-file={}", ca_cert.display()),
            format!("--token-auth-file={}", tokens.display()),
            format!("--service-account-issuer={SA_ISSUER}"),
            format!("--service-account-key-file={}", sa_pub.display()),
            format!("--service-account-signing-key-file={}", sa_key.display()),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            // The aggregation layer, as kubeadm configures it.
            format!(
                "--requestheader-client-ca-file={}",
                front_proxy_ca.display()
            ),
            "--requestheader-allowed-names=front-proxy-client".to_string(),
            "--requestheader-username-headers=X-Remote-User".to_string(),
            "--requestheader-uid-headers=X-Remote-Uid".to_string(),
            "--requestheader-group-headers=X-Remote-Group".to_string(),
            "--requestheader-extra-headers-prefix=X-Remote-Extra-".to_string(),
            format!(
                "--proxy-client-cert-file={}",
                front_proxy_client.cert.display()
            ),
            format!(
                "--proxy-client-key-file={}",
                front_proxy_client.key.display()
            ),
            format!("--request-timeout={}s", opts.request_timeout.as_secs()),
            "--allow-privileged=true".to_string(),
            "--profiling=false".to_string(),
            "--v=1".to_string(),
        ]);
        match (&opts.node, &kubelet_client) {
            (Some(_), Some(kc)) => {
                api.args([
                    "--authorization-mode=Node,RBAC".to_string(),
                    "--enable-admission-plugins=NodeRestriction".to_string(),
                    format!("--kubelet-client-certificate={}", kc.cert.display()),
                    format!("--kubelet-client-key={}", kc.key.display()),
                    "--kubelet-preferred-address-types=InternalIP".to_string(),
                    // The aggregator dials the APIService's endpoint (the server pod's IP)
                    // rather than its ClusterIP.
                    "--enable-aggregator-routing=true".to_string(),
                ]);
            }
            _ => {
                api.args([
                    "--authorization-mode=RBAC",
                    // Loopback is not a valid Endpoints address; nothing here needs the
                    // endpoints.
                    "--endpoint-reconciler-type=none",
                ]);
            }
        }
        procs.push(Proc::spawn("kube-apiserver", api, dir, opts.lifetime)?);

        let endpoints = Endpoints {
            dir: dir.to_path_buf(),
            bin_dir: bin_dir.to_path_buf(),
            server,
            kubeconfig,
            ca_cert,
            front_proxy_ca,
            front_proxy_other,
            front_proxy_client,
            sa_key,
            kubelet_kubeconfig,
        };
        let kubectl = Kubectl::new(&endpoints);
        wait_for(
            "kube-apiserver to be ready",
            Duration::from_secs(120),
            || {
                check_alive(&mut procs)?;
                Ok(kubectl
                    .run(&["get", "--raw=/readyz"])
                    .ok()
                    .filter(|o| o.status.success())
                    .map(|_| ()))
            },
        )?;

        if opts.controller_manager {
            let mut kcm = Command::new(bin_dir.join("kube-controller-manager"));
            let controllers = if opts.node.is_some() {
                "*"
            } else {
                "namespace,serviceaccount,garbagecollector,root-ca-cert-publisher,clusterrole-aggregation"
            };
            kcm.args([
                format!("--kubeconfig={}", endpoints.kubeconfig.display()),
                format!("--controllers={controllers}"),
                format!("--root-ca-file={}", endpoints.ca_cert.display()),
                format!(
                    "--service-account-private-key-file={}",
                    endpoints.sa_key.display()
                ),
                "--leader-elect=false".to_string(),
                "--secure-port=0".to_string(),
                "--v=1".to_string(),
            ]);
            procs.push(Proc::spawn(
                "kube-controller-manager",
                kcm,
                dir,
                opts.lifetime,
            )?);
        }

        Ok(Self { endpoints, procs })
    }

    pub fn kubectl(&self) -> Kubectl {
        Kubectl::new(&self.endpoints)
    }

    /// Leaves the processes running (for `make up`); they are stopped by pid file.
    pub fn detach(mut self) -> Endpoints {
        for p in self.procs.drain(..) {
            std::mem::forget(p);
        }
        self.endpoints.clone()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Stop in reverse start order: the API server before its store.
        while let Some(mut p) = self.procs.pop() {
            p.stop();
        }
    }
}

fn check_alive(procs: &mut [Proc]) -> Result<(), Error> {
    for p in procs.iter_mut() {
        if let Some(status) = p.exited() {
            return Err(Error::Exited {
                name: p.name.clone(),
                status: status.to_string(),
                log: p.log_tail(30),
            });
        }
    }
    Ok(())
}

/// A kubeconfig with one client-certificate user (e.g. the kubelet's).
fn write_single_user_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    user: &PairFiles,
) -> Result<(), Error> {
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "local",
            "cluster": {"server": server, "certificate-authority": ca}
        }],
        "users": [{"name": "user", "user": {
            "client-certificate": user.cert,
            "client-key": user.key,
        }}],
        "contexts": [{"name": "user", "context": {"cluster": "local", "user": "user"}}],
        "current-context": "user",
    });
    let text = serde_json::to_string_pretty(&config).map_err(Error::Json)?;
    pki::write(path, &text)
}

/// Admin kubeconfig with a context per token user. JSON is valid kubeconfig YAML.
fn write_kubeconfig(path: &Path, server: &str, ca: &Path, admin: &PairFiles) -> Result<(), Error> {
    let mut users = vec![json!({
        "name": "admin",
        "user": {
            "client-certificate": admin.cert,
            "client-key": admin.key,
        }
    })];
    let mut contexts = vec![json!({
        "name": "admin",
        "context": {"cluster": "local", "user": "admin"}
    })];
    for u in USERS {
        users.push(json!({"name": u.name, "user": {"token": u.token}}));
        contexts.push(json!({
            "name": u.name,
            "context": {"cluster": "local", "user": u.name}
        }));
    }
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "local",
            "cluster": {"server": server, "certificate-authority": ca}
        }],
        "users": users,
        "contexts": contexts,
        "current-context": "admin",
    });
    let text = serde_json::to_string_pretty(&config).map_err(Error::Json)?;
    pki::write(path, &text)
}
