//! A real S3 server for the object-storage backend: versitygw (built from its pinned Go
//! module by `controlplane/build.sh`, beside the control plane) with its `posix` backend,
//! on a free loopback port, with credentials of its own and its backend root in a
//! temporary directory. Requests to it are signed by curl (`--aws-sigv4`), a real S3
//! client; the posix root shows what is stored (an object is the file
//! `<root>/<bucket>/<key>`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::curl::{Credential, Curl, Reply};
use crate::process::{free_port, wait_for, Lifetime, Proc};
use crate::Error;

/// The region the server is configured with and requests are signed for.
pub const REGION: &str = "us-east-1";
/// The bucket [`S3Server::start`] creates.
pub const BUCKET: &str = "coredumps";
/// Where versitygw's posix backend keeps uploads in progress, inside each bucket.
const POSIX_TMP: &str = ".sgwtmp";

/// One object of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    pub key: String,
    pub size: u64,
}

pub struct S3Server {
    /// `http://127.0.0.1:<port>`, for `--object-store-endpoint`.
    pub endpoint: String,
    pub port: u16,
    pub bucket: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    /// The posix backend's root: bucket `b`'s object `k` is the file `<root>/b/k`.
    pub root: PathBuf,
    /// State and log (`versitygw.log`, `access.log`).
    pub dir: PathBuf,
    proc: Option<Proc>,
    lifetime: Lifetime,
    _tmp: Option<tempfile::TempDir>,
}

/// The versitygw binary: `COREDUMP_VERSITYGW_BIN`, else the control plane's cache (where
/// build.sh puts it).
pub fn versitygw_bin() -> Result<PathBuf, Error> {
    if let Ok(path) = std::env::var("COREDUMP_VERSITYGW_BIN") {
        return Ok(PathBuf::from(path));
    }
    let bin = crate::bins::controlplane_bin_dir()?.join("versitygw");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(Error::Setup(format!(
            "{} missing: run integration/controlplane/build.sh (make controlplane) or set COREDUMP_VERSITYGW_BIN",
            bin.display()
        )))
    }
}

/// `n` random bytes as hex, from the kernel.
fn random_hex(n: usize) -> Result<String, Error> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| Error::Io("read /dev/urandom".into(), e))?;
    Ok(hex::encode(buf))
}

/// `s` percent-encoded as S3 wants a query value or a key's path segments (`/` kept
/// when `keep_slash`).
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The text of every `<tag>…</tag>` in `xml`, unescaped (S3's listings are flat enough
/// for this).
pub fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let Some(j) = rest.find(&close) else { break };
        out.push(unescape(&rest[..j]));
        rest = &rest[j + close.len()..];
    }
    out
}

/// XML's five named entities and numeric character references (`&#34;`, `&#x22;`).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';') else { break };
        let entity = &rest[1..end];
        let c = match entity {
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "amp" => Some('&'),
            _ => entity
                .strip_prefix("#x")
                .map(|h| u32::from_str_radix(h, 16))
                .or_else(|| entity.strip_prefix('#').map(str::parse))
                .and_then(Result::ok)
                .and_then(char::from_u32),
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

impl S3Server {
    /// A server in a temporary directory of its own, ended (and the directory removed)
    /// when the value drops, with bucket [`BUCKET`] created.
    pub fn start() -> Result<Self, Error> {
        let tmp = tempfile::Builder::new()
            .prefix("coredump-s3-")
            .tempdir()
            .map_err(|e| Error::Io("tempdir".into(), e))?;
        let mut server = Self::start_in(tmp.path(), Lifetime::Scoped)?;
        server._tmp = Some(tmp);
        Ok(server)
    }

    /// A server with its state in `dir` (created), bucket [`BUCKET`] created; a
    /// [`Lifetime::Detached`] one leaves `dir/versitygw.pid` for `make down`.
    pub fn start_in(dir: &Path, lifetime: Lifetime) -> Result<Self, Error> {
        let bin = versitygw_bin()?;
        std::fs::create_dir_all(dir.join("root"))
            .map_err(|e| Error::Io(format!("mkdir {}/root", dir.display()), e))?;
        // Absolute: versitygw runs in `dir`, so a relative `dir` (make up's
        // `.local/state/s3`) would name its files twice over.
        let dir = &dir
            .canonicalize()
            .map_err(|e| Error::Io(format!("canonicalize {}", dir.display()), e))?;
        let root = dir.join("root");
        let port = free_port()?;
        let mut server = Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            bucket: BUCKET.to_string(),
            region: REGION.to_string(),
            // Shaped like AWS keys (20 and 40 characters).
            access_key: format!("AK{}", random_hex(9)?.to_uppercase()),
            secret_key: random_hex(20)?,
            root,
            dir: dir.to_path_buf(),
            proc: None,
            lifetime,
            _tmp: None,
        };
        let mut cmd = Command::new(&bin);
        cmd.arg("--port")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--region")
            .arg(&server.region)
            .arg("--access-log")
            .arg(dir.join("access.log"))
            .arg("posix")
            .arg(&server.root)
            // Credentials in the environment, not on the command line.
            .env("ROOT_ACCESS_KEY_ID", &server.access_key)
            .env("ROOT_SECRET_ACCESS_KEY", &server.secret_key);
        let mut proc = Proc::spawn("versitygw", cmd, dir, lifetime)?;
        let answered = wait_for("versitygw to answer", Duration::from_secs(30), || {
            if let Some(status) = proc.exited() {
                return Err(Error::Exited {
                    name: proc.name.clone(),
                    status: status.to_string(),
                    log: proc.log_tail(30),
                });
            }
            // ListBuckets: signed, so it also proves the credentials.
            Ok(server
                .request("GET", "/", &[], None)
                .ok()
                .filter(|r| r.status == 200)
                .map(|_| ()))
        });
        server.proc = Some(proc);
        answered?;
        server.create_bucket(&server.bucket.clone())?;
        Ok(server)
    }

    /// A curl client signing for this server, e.g. for [`Curl::transfer`] of large bodies.
    pub fn curl(&self) -> Curl {
        Curl {
            base: self.endpoint.clone(),
            // Plain HTTP on loopback: curl ignores the CA.
            ca: PathBuf::from("/dev/null"),
            cred: Credential::AwsSigV4 {
                region: self.region.clone(),
                access_key: self.access_key.clone(),
                secret_key: self.secret_key.clone(),
            },
        }
    }

    /// A signed request; `path` is `/<bucket>/<key>` (encoded) with any query string,
    /// whose parameters must be in sorted order (as the signature's canonical form).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Reply, Error> {
        self.curl().request(method, path, headers, body)
    }

    /// The path of `key` in the bucket.
    pub fn object_path(&self, key: &str) -> String {
        format!("/{}/{}", self.bucket, uri_encode(key, true))
    }

    pub fn create_bucket(&self, bucket: &str) -> Result<(), Error> {
        let r = self.request("PUT", &format!("/{bucket}"), &[], None)?;
        if r.status != 200 {
            return Err(Error::Setup(format!(
                "create bucket {bucket}: {} {}",
                r.status,
                r.text()
            )));
        }
        Ok(())
    }

    pub fn put_object(&self, key: &str, body: &[u8]) -> Result<Reply, Error> {
        self.request("PUT", &self.object_path(key), &[], Some(body))
    }

    /// GET of `key`, all of it or the bytes `first..=last`.
    pub fn get_object(&self, key: &str, range: Option<(u64, u64)>) -> Result<Reply, Error> {
        let header = range.map(|(a, b)| format!("bytes={a}-{b}"));
        let headers: Vec<(&str, &str)> = header.iter().map(|h| ("Range", h.as_str())).collect();
        self.request("GET", &self.object_path(key), &headers, None)
    }

    pub fn delete_object(&self, key: &str) -> Result<Reply, Error> {
        self.request("DELETE", &self.object_path(key), &[], None)
    }

    /// The objects whose key starts with `prefix` (ListObjectsV2, every page), by key.
    pub fn list(&self, prefix: &str) -> Result<Vec<Object>, Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            // Parameters in sorted order.
            let mut query = String::new();
            if let Some(t) = &token {
                query.push_str(&format!("continuation-token={}&", uri_encode(t, false)));
            }
            query.push_str(&format!("list-type=2&prefix={}", uri_encode(prefix, false)));
            let r = self.request("GET", &format!("/{}?{query}", self.bucket), &[], None)?;
            if r.status != 200 {
                return Err(Error::Setup(format!(
                    "list {prefix}: {} {}",
                    r.status,
                    r.text()
                )));
            }
            let xml = r.text();
            for contents in xml_values(&xml, "Contents") {
                let key = xml_values(&contents, "Key").pop().unwrap_or_default();
                let size = xml_values(&contents, "Size")
                    .pop()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                out.push(Object { key, size });
            }
            token = xml_values(&xml, "NextContinuationToken").pop();
            if token.is_none() || xml_values(&xml, "IsTruncated").pop().as_deref() != Some("true") {
                break;
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// The keys of the object names under `prefix` (sorted).
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>, Error> {
        Ok(self.list(prefix)?.into_iter().map(|o| o.key).collect())
    }

    /// The keys of the multipart uploads in progress under `prefix` (ListMultipartUploads):
    /// what an aborted upload must not leave behind.
    pub fn multipart_uploads(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let r = self.request(
            "GET",
            &format!(
                "/{}?prefix={}&uploads=",
                self.bucket,
                uri_encode(prefix, false)
            ),
            &[],
            None,
        )?;
        if r.status != 200 {
            return Err(Error::Setup(format!(
                "list multipart uploads {prefix}: {} {}",
                r.status,
                r.text()
            )));
        }
        let mut keys: Vec<String> = xml_values(&r.text(), "Upload")
            .iter()
            .filter_map(|u| xml_values(u, "Key").pop())
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Starts a multipart upload of `key`; returns its upload id.
    pub fn create_multipart_upload(&self, key: &str) -> Result<String, Error> {
        let r = self.request(
            "POST",
            &format!("{}?uploads=", self.object_path(key)),
            &[],
            None,
        )?;
        xml_values(&r.text(), "UploadId")
            .pop()
            .filter(|_| r.status == 200)
            .ok_or_else(|| {
                Error::Setup(format!(
                    "create multipart upload {key}: {} {}",
                    r.status,
                    r.text()
                ))
            })
    }

    /// Uploads part `number` (from 1); returns its ETag.
    pub fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: &[u8],
    ) -> Result<String, Error> {
        let r = self.request(
            "PUT",
            &format!(
                "{}?partNumber={number}&uploadId={}",
                self.object_path(key),
                uri_encode(upload_id, false)
            ),
            &[],
            Some(body),
        )?;
        r.header("ETag")
            .filter(|_| r.status == 200)
            .map(str::to_string)
            .ok_or_else(|| {
                Error::Setup(format!(
                    "upload part {number} of {key}: {} {}",
                    r.status,
                    r.text()
                ))
            })
    }

    /// Completes a multipart upload from its parts' ETags, in order.
    pub fn complete_multipart_upload(
        &self,
        key: &str,
        upload_id: &str,
        etags: &[String],
    ) -> Result<Reply, Error> {
        let parts: String = etags
            .iter()
            .enumerate()
            .map(|(i, e)| {
                format!(
                    "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
                    i + 1,
                    e.replace('&', "&amp;").replace('"', "&quot;")
                )
            })
            .collect();
        let body = format!("<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>");
        self.request(
            "POST",
            &format!(
                "{}?uploadId={}",
                self.object_path(key),
                uri_encode(upload_id, false)
            ),
            &[("Content-Type", "application/xml")],
            Some(body.as_bytes()),
        )
    }

    pub fn abort_multipart_upload(&self, key: &str, upload_id: &str) -> Result<Reply, Error> {
        self.request(
            "DELETE",
            &format!(
                "{}?uploadId={}",
                self.object_path(key),
                uri_encode(upload_id, false)
            ),
            &[],
            None,
        )
    }

    /// The keys under `prefix` as the posix backend stores them: regular files below
    /// `<root>/<bucket>`, without its uploads in progress (sorted).
    pub fn files(&self, prefix: &str) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let path = e.path();
                if path.file_name().is_some_and(|n| n == POSIX_TMP) {
                    continue;
                }
                match e.file_type() {
                    Ok(t) if t.is_dir() => walk(&path, base, out),
                    Ok(t) if t.is_file() => {
                        if let Ok(rel) = path.strip_prefix(base) {
                            out.push(rel.to_string_lossy().into_owned());
                        }
                    }
                    _ => {}
                }
            }
        }
        let base = self.root.join(&self.bucket);
        let mut out = Vec::new();
        walk(&base, &base, &mut out);
        out.retain(|k| k.starts_with(prefix));
        out.sort();
        out
    }

    /// The flags that put the extension server's cores in this bucket under `prefix`.
    pub fn server_args(&self, prefix: &str) -> Vec<String> {
        vec![
            format!("--object-store-url=s3://{}/{prefix}", self.bucket),
            format!("--object-store-region={}", self.region),
            format!("--object-store-endpoint={}", self.endpoint),
            "--object-store-allow-http".to_string(),
        ]
    }

    /// The environment the extension server reads its credentials from.
    pub fn server_env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
        ]
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.pid)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        crate::process::log_tail(&self.dir.join("versitygw.log"), lines)
    }

    /// Graceful stop (SIGTERM, then SIGKILL after a grace period).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }

    /// Leaves the server running (for `make up`; `make down` stops it by its pid file).
    pub fn detach(mut self) {
        if let Some(p) = self.proc.take() {
            std::mem::forget(p);
        }
        if let Some(tmp) = self._tmp.take() {
            let _ = tmp.keep();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if self.lifetime == Lifetime::Scoped {
            self.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_values_reads_every_element_unescaped() {
        let xml = "<R><Contents><Key>a&amp;b&#34;&#x27;</Key><Size>3</Size></Contents>\
                   <Contents><Key>c/d</Key><Size>10</Size></Contents></R>";
        let contents = xml_values(xml, "Contents");
        assert_eq!(contents.len(), 2);
        assert_eq!(xml_values(&contents[0], "Key"), ["a&b\"'"]);
        assert_eq!(unescape("x &bogus; &#;y"), "x &bogus; &#;y");
        assert_eq!(xml_values(&contents[1], "Size"), ["10"]);
        assert!(xml_values(xml, "Missing").is_empty());
    }

    #[test]
    fn uri_encode_keeps_unreserved_and_optionally_slashes() {
        assert_eq!(uri_encode("a b/c~_.-", true), "a%20b/c~_.-");
        assert_eq!(uri_encode("ns/x_y.zst", false), "ns%2Fx_y.zst");
    }
}
