//! Raw HTTPS requests with curl, for what kubectl cannot express: Accept headers, bodies
//! of any content type, bearer tokens and client certificates of our choosing.

use std::path::PathBuf;
use std::process::Command;

use crate::endpoints::Endpoints;
use crate::Error;

/// Who a request authenticates as.
#[derive(Clone, Debug)]
pub enum Credential {
    None,
    /// A client certificate and key (PEM files).
    Cert {
        cert: PathBuf,
        key: PathBuf,
    },
    Bearer(String),
    /// AWS Signature Version 4 for S3 (`curl --aws-sigv4`), e.g. for [`crate::s3`].
    AwsSigV4 {
        region: String,
        access_key: String,
        secret_key: String,
    },
}

#[derive(Clone, Debug)]
pub struct Curl {
    /// Base URL, e.g. kube-apiserver's or the extension server's.
    pub base: String,
    pub ca: PathBuf,
    pub cred: Credential,
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Curl {
    /// kube-apiserver as the admin (client certificate in system:masters).
    pub fn admin(ep: &Endpoints) -> Self {
        let pki = ep.dir.join("pki");
        Self {
            base: ep.server.clone(),
            ca: ep.ca_cert.clone(),
            cred: Credential::Cert {
                cert: pki.join("admin.crt"),
                key: pki.join("admin.key"),
            },
        }
    }

    /// curl with the method, the CA, the credential and `headers`; the URL comes last.
    pub fn command(&self, method: &str, headers: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--http1.1", "-X", method])
            .arg("--cacert")
            .arg(&self.ca);
        match &self.cred {
            Credential::None => {}
            Credential::Cert { cert, key } => {
                cmd.arg("--cert").arg(cert).arg("--key").arg(key);
            }
            Credential::Bearer(t) => {
                cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
            }
            Credential::AwsSigV4 {
                region,
                access_key,
                secret_key,
            } => {
                // S3 requires x-amz-content-sha256, which curl before 8.x does not send;
                // UNSIGNED-PAYLOAD leaves the body out of the signature, as S3 allows.
                cmd.arg("--aws-sigv4")
                    .arg(format!("aws:amz:{region}:s3"))
                    .arg("--user")
                    .arg(format!("{access_key}:{secret_key}"))
                    .arg("-H")
                    .arg("x-amz-content-sha256: UNSIGNED-PAYLOAD");
            }
        }
        for (k, v) in headers {
            cmd.arg("-H").arg(format!("{k}: {v}"));
        }
        cmd
    }

    /// `method` on `path` with extra `headers` and an optional body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Reply, Error> {
        let dir = tempfile::tempdir().map_err(|e| Error::Io("tempdir".into(), e))?;
        let head = dir.path().join("head");
        let out = dir.path().join("body");
        let mut cmd = self.command(method, headers);
        cmd.arg("-D").arg(&head).arg("-o").arg(&out);
        if let Some(b) = body {
            let f = dir.path().join("req");
            std::fs::write(&f, b).map_err(|e| Error::Io("write body".into(), e))?;
            cmd.arg("--data-binary").arg(format!("@{}", f.display()));
        }
        cmd.arg(format!("{}{}", self.base, path));
        let o = cmd.output().map_err(|e| Error::Io("run curl".into(), e))?;
        if !o.status.success() {
            return Err(Error::Setup(format!(
                "curl {method} {path}: {}",
                String::from_utf8_lossy(&o.stderr)
            )));
        }
        let head = std::fs::read_to_string(&head).unwrap_or_default();
        // The last response's head (after any 100 Continue).
        let last = head
            .split("\r\n\r\n")
            .filter(|b| !b.trim().is_empty())
            .last()
            .unwrap_or_default();
        let mut lines = last.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let body = std::fs::read(&out).unwrap_or_default();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<Reply, Error> {
        self.request("GET", path, headers, None)
    }
}

/// What [`Curl::transfer`] moved.
#[derive(Debug)]
pub struct Transfer {
    pub status: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    /// Wall time of the whole curl run (start, TLS handshake, transfer).
    pub elapsed: std::time::Duration,
}

impl Curl {
    /// `method` on `path`, streaming the request body from the file `upload` (`-T`) and
    /// the response body into `out` (e.g. /dev/null): neither is held in memory, so it
    /// suits cores of gigabytes.
    pub fn transfer(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        upload: Option<&std::path::Path>,
        out: &std::path::Path,
    ) -> Result<Transfer, Error> {
        let mut cmd = self.command(method, headers);
        cmd.arg("-o")
            .arg(out)
            .args(["-w", "%{http_code} %{size_upload} %{size_download}"])
            // No 100-continue round trip before a large body.
            .args(["-H", "Expect:"]);
        if let Some(f) = upload {
            cmd.arg("-T").arg(f);
        }
        cmd.arg(format!("{}{}", self.base, path));
        let start = std::time::Instant::now();
        let o = cmd.output().map_err(|e| Error::Io("run curl".into(), e))?;
        let elapsed = start.elapsed();
        if !o.status.success() {
            return Err(Error::Setup(format!(
                "curl {method} {path}: {}",
                String::from_utf8_lossy(&o.stderr)
            )));
        }
        let w = String::from_utf8_lossy(&o.stdout);
        let mut f = w.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(0));
        Ok(Transfer {
            status: f.next().unwrap_or(0) as u16,
            uploaded: f.next().unwrap_or(0),
            downloaded: f.next().unwrap_or(0),
            elapsed,
        })
    }
}
