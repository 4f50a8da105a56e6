//! Transfer: one realistic core uploaded (zstd, as the agent sends it) and downloaded
//! (raw, decompressed on the fly, and `?compressed=true`), straight to the server and
//! through the aggregator, against reading the stored file with `cat` (the limit) and
//! decompressing it with the zstd CLI (the limit for a raw download). curl streams both
//! ways, so neither side holds a core in memory.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};

use super::report::{mib, ratio, secs, Section};
use super::{mb_per_s, median, Scale};
use crate::curl::Curl;
use crate::env::TestEnv;
use crate::Error;

const API: &str = "/apis/coredump.io/v1alpha1";
const PAGE: usize = 4096;

#[derive(Clone, Debug)]
pub struct TransferOptions {
    pub core_mib: u64,
    pub repeats: usize,
}

impl TransferOptions {
    pub fn for_scale(s: Scale) -> Self {
        match s {
            Scale::Full => Self {
                core_mib: 1024,
                repeats: 3,
            },
            Scale::Tiny => Self {
                core_mib: 4,
                repeats: 1,
            },
        }
    }
}

/// One operation on one path, timed `repeats` times.
#[derive(Clone, Debug)]
pub struct Measure {
    pub op: String,
    pub path: String,
    /// Bytes on the wire (or read from disk for the limits) per run.
    pub bytes: u64,
    pub samples: Vec<Duration>,
}

impl Measure {
    pub fn median(&self) -> Duration {
        median(&self.samples)
    }
}

#[derive(Debug)]
pub struct TransferResults {
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub measures: Vec<Measure>,
    /// The sha256 of a raw download through the aggregator equals the spec's.
    pub download_verified: bool,
}

/// Writes `bytes` of heap-like data (per 10 pages: 5 zero, 2 random, 3 log text — the
/// mix of `crasher.c`'s CRASHER_FILL=mixed) zstd-compressed (level 3, as the handler
/// stores it) to `zst`; returns the raw sha256 and the compressed size.
pub fn write_mixed_core(zst: &Path, bytes: u64) -> Result<(String, u64), Error> {
    let io = |what: &str| {
        let what = format!("{what} {}", zst.display());
        move |e| Error::Io(what, e)
    };
    let file = BufWriter::new(File::create(zst).map_err(io("create"))?);
    let mut enc = zstd::Encoder::new(file, 3).map_err(io("zstd"))?;
    let mut sha = Sha256::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut line: u64 = 0;
    let mut page = [0u8; PAGE];
    let mut done: u64 = 0;
    let mut n: u64 = 0;
    while done < bytes {
        match n % 10 {
            0..=4 => page.fill(0),
            5 | 6 => {
                for c in page.chunks_exact_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    c.copy_from_slice(&x.to_le_bytes());
                }
            }
            _ => {
                let mut i = 0;
                while i < PAGE {
                    let l = format!(
                        "2026-11-25T12:{:02}:{:02}.{:03}Z INFO handler: request id={line:08} path=/api/v1/items status=200\n",
                        (line / 60000) % 60,
                        (line / 1000) % 60,
                        line % 1000
                    );
                    line += 1;
                    let k = l.len().min(PAGE - i);
                    page[i..i + k].copy_from_slice(&l.as_bytes()[..k]);
                    i += k;
                }
            }
        }
        let take = (bytes - done).min(PAGE as u64) as usize;
        sha.update(&page[..take]);
        enc.write_all(&page[..take]).map_err(io("write"))?;
        done += take as u64;
        n += 1;
    }
    let mut file = enc.finish().map_err(io("finish"))?;
    file.flush().map_err(io("flush"))?;
    let stored = std::fs::metadata(zst).map_err(io("stat"))?.len();
    Ok((hex::encode(sha.finalize()), stored))
}

pub(crate) fn post_pending(
    c: &Curl,
    ns: &str,
    name: &str,
    raw: u64,
    stored: u64,
    sha: &str,
) -> Result<(), Error> {
    let obj = json!({
        "apiVersion": "coredump.io/v1alpha1", "kind": "Coredump",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "nodeName": "bench-node", "podName": "bench", "podUID": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
            "containerName": "main", "signal": 11, "signalName": "SIGSEGV",
            "dumpTime": "2026-11-25T12:00:00Z",
            "size": raw.to_string(), "storedSize": stored.to_string(), "sha256": sha
        }
    });
    let body = serde_json::to_vec(&obj).map_err(Error::Json)?;
    let r = c.request(
        "POST",
        &format!("{API}/namespaces/{ns}/coredumps"),
        &[("Content-Type", "application/json")],
        Some(&body),
    )?;
    if r.status != 201 {
        return Err(Error::Setup(format!(
            "create {ns}/{name}: {} {}",
            r.status,
            r.text()
        )));
    }
    Ok(())
}

/// Times `program args… < input > /dev/null`.
fn time_reading(program: &str, args: &[&str], input: &Path) -> Result<Duration, Error> {
    let start = Instant::now();
    let st = Command::new(program)
        .args(args)
        .stdin(File::open(input).map_err(|e| Error::Io(format!("open {}", input.display()), e))?)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| Error::Io(format!("run {program}"), e))?;
    let d = start.elapsed();
    if !st.success() {
        return Err(Error::Setup(format!("{program} {args:?}: {st}")));
    }
    Ok(d)
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn measure<'a>(v: &'a mut Vec<Measure>, op: &str, path: &str, bytes: u64) -> &'a mut Measure {
    if let Some(i) = v.iter().position(|m| m.op == op && m.path == path) {
        return &mut v[i];
    }
    v.push(Measure {
        op: op.into(),
        path: path.into(),
        bytes,
        samples: Vec::new(),
    });
    let last = v.len() - 1;
    &mut v[last]
}

/// Streams a download to a file and returns its sha256.
pub(crate) fn sha_of_download(c: &Curl, path: &str, tmp: &Path) -> Result<String, Error> {
    let t = c.transfer("GET", path, &[], None, tmp)?;
    if t.status != 200 {
        return Err(Error::Setup(format!("GET {path}: {}", t.status)));
    }
    let mut f = File::open(tmp).map_err(|e| Error::Io("open download".into(), e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::Io("hash download".into(), e))?;
    let _ = std::fs::remove_file(tmp);
    Ok(hex::encode(h.finalize()))
}

pub fn run(env: &TestEnv, opts: &TransferOptions, work: &Path) -> Result<TransferResults, Error> {
    std::fs::create_dir_all(work).map_err(|e| Error::Io("mkdir work".into(), e))?;
    let raw = opts.core_mib << 20;
    let zst = work.join("core.zst");
    let (sha, stored) = write_mixed_core(&zst, raw)?;
    let ns = env.namespace("bench-transfer")?;
    let paths = [
        ("direct", env.direct_admin()),
        ("aggregator", Curl::admin(&env.cp.endpoints)),
    ];
    let blob_dir: PathBuf = env.server().dir.join("data/cores").join(&ns);
    let null = Path::new("/dev/null");
    let mut m: Vec<Measure> = Vec::new();
    let mut download_verified = false;
    let mut names = Vec::new();

    for r in 0..opts.repeats {
        // Interleaved, so drift on a shared machine hits every path alike.
        for (path, c) in &paths {
            let name = format!("{path}-{r}");
            post_pending(c, &ns, &name, raw, stored, &sha)?;
            let base = format!("{API}/namespaces/{ns}/coredumps/{name}");
            let t = c.transfer(
                "PUT",
                &format!("{base}/upload"),
                &[("Content-Type", "application/zstd")],
                Some(&zst),
                null,
            )?;
            if t.status != 200 || t.uploaded != stored {
                return Err(Error::Setup(format!(
                    "upload via {path}: status {}, {} of {stored} bytes sent",
                    t.status, t.uploaded
                )));
            }
            measure(&mut m, "upload (zstd)", path, stored)
                .samples
                .push(t.elapsed);

            for (op, query, want) in [
                ("download raw", "", raw),
                ("download compressed", "?compressed=true", stored),
            ] {
                let t = c.transfer("GET", &format!("{base}/download{query}"), &[], None, null)?;
                if t.status != 200 || t.downloaded != want {
                    return Err(Error::Setup(format!(
                        "{op} via {path}: status {}, {} of {want} bytes",
                        t.status, t.downloaded
                    )));
                }
                measure(&mut m, op, path, want).samples.push(t.elapsed);
            }
            names.push(name);
        }
        // The limits, on the file the server stored.
        let blob = std::fs::read_dir(&blob_dir)
            .map_err(|e| Error::Io(format!("list {}", blob_dir.display()), e))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "zst"))
            .ok_or_else(|| Error::Setup(format!("no stored core under {}", blob_dir.display())))?;
        let d = time_reading("cat", &[], &blob)?;
        measure(&mut m, "read stored file", "cat (limit)", stored)
            .samples
            .push(d);
        if have("zstd") {
            let d = time_reading("zstd", &["-dcq"], &blob)?;
            measure(
                &mut m,
                "read stored file",
                "zstd -dc (limit for raw)",
                stored,
            )
            .samples
            .push(d);
        }
    }
    if let Some(name) = names.last() {
        let got = sha_of_download(
            &paths[1].1,
            &format!("{API}/namespaces/{ns}/coredumps/{name}/download"),
            &work.join("download.core"),
        )?;
        download_verified = got == sha;
    }
    for name in &names {
        let _ = paths[0].1.request(
            "DELETE",
            &format!("{API}/namespaces/{ns}/coredumps/{name}"),
            &[],
            None,
        );
    }
    let _ = std::fs::remove_file(&zst);
    Ok(TransferResults {
        raw_bytes: raw,
        stored_bytes: stored,
        measures: m,
        download_verified,
    })
}

impl TransferResults {
    fn limit(&self, path: &str) -> Option<Duration> {
        self.measures
            .iter()
            .find(|m| m.path == path)
            .map(Measure::median)
    }

    pub fn section(&self) -> Section {
        let mut s = Section::new(
            "Transfer",
            &format!(
                "One heap-like core of {} ({} stored with zstd), uploaded and downloaded with \
                 curl (one TLS connection per run, HTTP/1.1, bodies streamed from/to disk and \
                 /dev/null), straight to the server and through kube-apiserver's aggregator; \
                 the limit is reading the stored file with `cat` (page cache, no network). \
                 Medians; raw MB/s counts core bytes (10^6 B/s).",
                mib(self.raw_bytes),
                mib(self.stored_bytes)
            ),
            &[
                "operation",
                "path",
                "bytes",
                "time",
                "wire MB/s",
                "raw core MB/s",
                "time vs cat",
            ],
        );
        let cat = self.limit("cat (limit)");
        for m in &self.measures {
            let t = m.median();
            s.row(vec![
                m.op.clone(),
                m.path.clone(),
                mib(m.bytes),
                secs(t),
                format!("{:.0}", mb_per_s(m.bytes, t)),
                format!("{:.0}", mb_per_s(self.raw_bytes, t)),
                cat.map(|c| ratio(t.as_secs_f64() / c.as_secs_f64()))
                    .unwrap_or_else(|| "–".into()),
            ]);
        }
        if let Some(z) = self.limit("zstd -dc (limit for raw)") {
            for m in self.measures.iter().filter(|m| m.op == "download raw") {
                s.note(format!(
                    "raw download via {}: {} the time of `zstd -dc` on the stored file",
                    m.path,
                    ratio(m.median().as_secs_f64() / z.as_secs_f64())
                ));
            }
        }
        s.note(if self.download_verified {
            "a raw download through the aggregator had the spec's sha256".to_string()
        } else {
            "a raw download through the aggregator did NOT match the spec's sha256".to_string()
        });
        s
    }
}
