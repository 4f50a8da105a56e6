//! The coredump.io extension server run on loopback and registered with the control plane
//! through an `APIService` whose Service is an ExternalName for 127.0.0.1 (the aggregator
//! dials it; Endpoints may not point at loopback).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::endpoints::Endpoints;
use crate::kubectl::Kubectl;
use crate::pki::{Ca, PairFiles, Usage};
use crate::process::{free_port, wait_for, Lifetime, Proc};
use crate::Error;

pub const NAMESPACE: &str = "coredump-system";
pub const SERVICE: &str = "coredump-apiserver";
pub const APISERVICE: &str = "v1alpha1.coredump.io";

#[derive(Clone, Debug)]
pub struct Options {
    pub lifetime: Lifetime,
    /// Extra flags for the server.
    pub args: Vec<String>,
    /// Extra environment, e.g. an object store's credentials. The server inherits no
    /// `AWS_*` variable from the harness's environment: only these.
    pub env: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            lifetime: Lifetime::Scoped,
            args: Vec::new(),
            env: Vec::new(),
        }
    }
}

pub struct ExtensionServer {
    pub url: String,
    pub port: u16,
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub serving: PairFiles,
    bin: PathBuf,
    opts: Options,
    kubeconfig: PathBuf,
    proc: Option<Proc>,
}

impl ExtensionServer {
    /// Starts the server in `<cp dir>/<name>` and registers it; returns once the APIService
    /// is Available.
    pub fn start(cp: &Endpoints, name: &str, bin: &Path, opts: Options) -> Result<Self, Error> {
        let dir = cp.dir.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io("mkdir server dir".into(), e))?;
        let port = free_port()?;
        let ca = Ca::new("coredump-apiserver-ca")?;
        let ca_cert = ca.write_cert(&dir.join("serving-ca.crt"))?;
        let svc_name = format!("{SERVICE}.{NAMESPACE}.svc");
        let serving = ca
            .issue(
                &svc_name,
                None,
                &[&svc_name, "127.0.0.1", "localhost"],
                Usage::Server,
            )?
            .write(&dir, "serving")?;
        let mut server = Self {
            url: format!("https://127.0.0.1:{port}"),
            port,
            dir,
            ca_cert,
            serving,
            bin: bin.to_path_buf(),
            opts,
            kubeconfig: cp.kubeconfig.clone(),
            proc: None,
        };
        server.spawn()?;
        server.register(&Kubectl::new(cp), &ca.cert_pem)?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<(), Error> {
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "--bind-address=127.0.0.1".to_string(),
            format!("--secure-port={}", self.port),
            format!("--tls-cert-file={}", self.serving.cert.display()),
            format!("--tls-private-key-file={}", self.serving.key.display()),
            format!("--data-dir={}", self.dir.join("data").display()),
            format!("--kubeconfig={}", self.kubeconfig.display()),
        ]);
        cmd.args(&self.opts.args);
        // Credentials and settings of an object store come from the options alone.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("AWS_") {
                cmd.env_remove(&k);
            }
        }
        cmd.envs(self.opts.env.iter().map(|(k, v)| (k, v)));
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        let mut proc = Proc::spawn("coredump-apiserver", cmd, &self.dir, self.opts.lifetime)?;
        let port = self.port;
        wait_for(
            "coredump-apiserver to listen",
            Duration::from_secs(30),
            || {
                if let Some(status) = proc.exited() {
                    return Err(Error::Exited {
                        name: proc.name.clone(),
                        status: status.to_string(),
                        log: proc.log_tail(30),
                    });
                }
                Ok(std::net::TcpStream::connect(("127.0.0.1", port))
                    .ok()
                    .map(|_| ()))
            },
        )?;
        self.proc = Some(proc);
        Ok(())
    }

    fn register(&self, kubectl: &Kubectl, ca_pem: &str) -> Result<(), Error> {
        use base64::Engine as _;
        let encode = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let manifest = json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
                {
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": SERVICE, "namespace": NAMESPACE},
                    "spec": {
                        "type": "ExternalName",
                        "externalName": "127.0.0.1",
                        "ports": [{"name": "https", "port": self.port, "protocol": "TCP"}]
                    }
                },
                {
                    "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                    "metadata": {"name": APISERVICE},
                    "spec": {
                        "group": "coredump.io",
                        "version": "v1alpha1",
                        "groupPriorityMinimum": 1000,
                        "versionPriority": 15,
                        "service": {"namespace": NAMESPACE, "name": SERVICE, "port": self.port},
                        "caBundle": encode(ca_pem.as_bytes()),
                    }
                }
            ]
        });
        kubectl.apply(&manifest)?;
        wait_for(
            "APIService to be Available",
            Duration::from_secs(90),
            || {
                let out = kubectl.run(&[
                    "get",
                    "apiservice",
                    APISERVICE,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Available\")].status}",
                ])?;
                Ok((String::from_utf8_lossy(&out.stdout).trim() == "True").then_some(()))
            },
        )
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Graceful stop.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }

    /// Starts the server again on the same port, data and certificates.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.stop();
        self.spawn()
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.pid)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("coredump-apiserver.log")
    }

    /// Leaves the server running (for `make up`).
    pub fn detach(mut self) {
        if let Some(p) = self.proc.take() {
            std::mem::forget(p);
        }
    }
}

impl Drop for ExtensionServer {
    fn drop(&mut self) {
        if self.opts.lifetime == Lifetime::Scoped {
            self.stop();
        }
    }
}
