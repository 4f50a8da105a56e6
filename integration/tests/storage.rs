//! Cores stored within quota: admission, upload checks, downloads through the aggregator
//! and directly, ranges, delete, namespace deletion, and flat server memory — each test on
//! both storage backends (`fs::…` and `s3::…`): the server's data directory, and a bucket
//! of a real S3 server (versitygw), where the objects are checked through S3 and its posix
//! root too.

// A test binary: its helpers are test code as much as its #[test] functions, and a panic
// is the failure report (clippy.toml's allow-*-in-tests covers only the #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use coredump_integration::curl::{Curl, Reply};
use coredump_integration::env::{Backend, TestEnv, S3_PREFIX};
use coredump_integration::fixtures::{CoredumpFixture, QuotaFixture};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const API: &str = "/apis/coredump.io/v1alpha1";

fn env(b: Backend) -> &'static TestEnv {
    TestEnv::shared_on(b)
}

/// The extension server directly, as the cluster admin (client certificate).
fn direct(b: Backend) -> Curl {
    env(b).direct_admin()
}

coredump_integration::on_each_backend!(
    a_quota_of_1mib_rejects_the_core_that_would_exceed_it_and_delete_frees_it,
    parallel_creates_never_exceed_the_quota,
    uploaded_cores_download_byte_identical_through_the_aggregator_and_directly,
    a_quota_created_later_counts_the_coredumps_already_there,
    deleting_the_namespace_removes_its_cores_from_storage,
    server_memory_stays_flat_while_a_2gib_core_streams_in_and_out,
    failed_and_cut_uploads_of_many_parts_leave_nothing_behind,
    evict_oldest_makes_room_instead_of_rejecting,
);

/// A core-like body: zero pages, random bytes and repeated text.
fn core_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        match rng.random_range(0..3) {
            0 => out.extend(std::iter::repeat_n(0u8, 4096)),
            1 => out.extend((0..4096).map(|_| rng.random::<u8>())),
            _ => out.extend(
                b"stack frame 0x7ffd: main -> crash_here -> abort "
                    .iter()
                    .cycle()
                    .take(4096),
            ),
        }
    }
    out.truncate(len);
    out
}

struct Core {
    raw: Vec<u8>,
    zst: Vec<u8>,
    sha: String,
}

fn make_core(len: usize, seed: u64) -> Core {
    core_from(core_bytes(len, seed))
}

fn core_from(raw: Vec<u8>) -> Core {
    let zst = zstd::encode_all(&raw[..], 3).expect("compress");
    let sha = hex::encode(Sha256::digest(&raw));
    Core { raw, zst, sha }
}

/// A SIGABRT Coredump `ns/name` of a core of `size` raw and `stored` bytes.
fn coredump(ns: &str, name: &str, size: u64, stored: u64, sha: &str) -> Value {
    CoredumpFixture::new(ns, name)
        .signal(6)
        .signal_name("SIGABRT")
        .size(size)
        .stored_size(stored)
        .sha(sha)
        .build()
}

fn post(c: &Curl, ns: &str, resource: &str, obj: &Value) -> Reply {
    c.request(
        "POST",
        &format!("{API}/namespaces/{ns}/{resource}"),
        &[("Content-Type", "application/json")],
        Some(&serde_json::to_vec(obj).expect("json")),
    )
    .expect("curl")
}

fn upload(c: &Curl, ns: &str, name: &str, body: &[u8]) -> Reply {
    c.request(
        "PUT",
        &format!("{API}/namespaces/{ns}/coredumps/{name}/upload"),
        &[("Content-Type", "application/zstd")],
        Some(body),
    )
    .expect("curl")
}

fn used(c: &Curl, ns: &str) -> Value {
    c.get(&format!("{API}/namespaces/{ns}/coredumpquotas/quota"), &[])
        .expect("curl")
        .json()["status"]["used"]
        .clone()
}

fn phase(c: &Curl, ns: &str, name: &str) -> Value {
    let o = c
        .get(&format!("{API}/namespaces/{ns}/coredumps/{name}"), &[])
        .expect("curl")
        .json();
    json!([o["status"]["phase"], o["status"]["reason"]])
}

fn a_quota_of_1mib_rejects_the_core_that_would_exceed_it_and_delete_frees_it(b: Backend) {
    let ns = env(b).namespace("st-quota").expect("ns");
    let c = direct(b);
    assert_eq!(
        post(
            &c,
            &ns,
            "coredumpquotas",
            &QuotaFixture::new(&ns).storage("1Mi").build()
        )
        .status,
        201
    );
    let sha = "a".repeat(64);
    assert_eq!(
        post(
            &c,
            &ns,
            "coredumps",
            &coredump(&ns, "first", 2 << 20, 600 << 10, &sha)
        )
        .status,
        201
    );
    assert_eq!(phase(&c, &ns, "first"), json!(["Pending", null]));
    assert_eq!(used(&c, &ns), json!({"storage": "600Ki", "count": "1"}));
    let r = post(
        &c,
        &ns,
        "coredumps",
        &coredump(&ns, "second", 2 << 20, 600 << 10, &sha),
    );
    assert_eq!(r.status, 201, "over quota is still recorded: {}", r.text());
    assert_eq!(
        phase(&c, &ns, "second"),
        json!(["Rejected", "QuotaExceeded"])
    );
    assert_eq!(used(&c, &ns), json!({"storage": "600Ki", "count": "1"}));
    // kubectl shows it as a user would look.
    let k = env(b).kubectl();
    let table = k.ok(&["get", "coredumpquotas", "-n", &ns]).expect("get");
    assert!(
        table.contains("600Ki/1Mi") && table.contains("1/-"),
        "{table}"
    );
    let cds = k.ok(&["get", "coredumps", "-n", &ns]).expect("get");
    assert!(
        cds.lines()
            .any(|l| l.starts_with("second") && l.contains("Rejected")),
        "{cds}"
    );
    // Sizes for people (SIZE, STORED), and the refusal in the core's history.
    assert!(
        cds.lines()
            .any(|l| l.starts_with("first") && l.contains(" 2Mi ") && l.contains(" 600Ki ")),
        "{cds}"
    );
    let history = eventually_reasons(b, &ns, "second", "Rejected");
    let described = k
        .ok(&["describe", "coredump", "second", "-n", &ns])
        .expect("describe");
    assert!(
        described.contains("Rejected") && described.contains("quota"),
        "{history:?}\n{described}"
    );
    // A rejected core is never accepted.
    let r = upload(&c, &ns, "second", b"x");
    assert_eq!(r.status, 409, "{}", r.text());
    // Delete frees exactly what was used.
    assert_eq!(
        c.request(
            "DELETE",
            &format!("{API}/namespaces/{ns}/coredumps/first"),
            &[],
            None
        )
        .expect("curl")
        .status,
        200
    );
    assert_eq!(used(&c, &ns), json!({"storage": "0", "count": "0"}));
    assert_eq!(
        post(
            &c,
            &ns,
            "coredumps",
            &coredump(&ns, "third", 2 << 20, 1 << 20, &sha)
        )
        .status,
        201
    );
    assert_eq!(phase(&c, &ns, "third"), json!(["Pending", null]));
}

fn parallel_creates_never_exceed_the_quota(b: Backend) {
    let ns = env(b).namespace("st-parallel").expect("ns");
    let c = direct(b);
    assert_eq!(
        post(
            &c,
            &ns,
            "coredumpquotas",
            &QuotaFixture::new(&ns).count(10).build()
        )
        .status,
        201
    );
    let sha = Arc::new("b".repeat(64));
    let threads: Vec<_> = (0..50)
        .map(|i| {
            let (c, ns, sha) = (c.clone(), ns.clone(), Arc::clone(&sha));
            std::thread::spawn(move || {
                post(
                    &c,
                    &ns,
                    "coredumps",
                    &coredump(&ns, &format!("c{i}"), 100, 10, &sha),
                )
                .status
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().expect("thread"), 201);
    }
    let list = c
        .get(&format!("{API}/namespaces/{ns}/coredumps"), &[])
        .expect("curl")
        .json();
    let phases: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["status"]["phase"].as_str())
        .collect();
    assert_eq!(phases.len(), 50);
    assert_eq!(phases.iter().filter(|p| **p == "Pending").count(), 10);
    assert_eq!(phases.iter().filter(|p| **p == "Rejected").count(), 40);
    assert_eq!(used(&c, &ns)["count"], "10");
}

fn uploaded_cores_download_byte_identical_through_the_aggregator_and_directly(b: Backend) {
    let ns = env(b).namespace("st-roundtrip").expect("ns");
    let c = direct(b);
    let core = make_core(3 << 20, 7);
    let (size, stored) = (core.raw.len() as u64, core.zst.len() as u64);
    let created = post(
        &c,
        &ns,
        "coredumps",
        &coredump(&ns, "rt", size, stored, &core.sha),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let uid = created.json()["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    // Not stored yet: nothing to download.
    assert_eq!(
        c.get(&format!("{API}/namespaces/{ns}/coredumps/rt/download"), &[])
            .expect("curl")
            .status,
        409
    );

    // Mismatches are 422 and keep nothing.
    let mut wrong = core.zst.clone();
    wrong.truncate(wrong.len() - 10);
    let r = upload(&c, &ns, "rt", &wrong);
    assert_eq!(
        (r.status, r.json()["reason"].clone()),
        (422, json!("Invalid")),
        "{}",
        r.text()
    );
    let other = make_core(3 << 20, 8);
    let mut same_len = zstd::encode_all(&other.raw[..], 3).expect("compress");
    same_len.resize(core.zst.len(), 0);
    let r = upload(&c, &ns, "rt", &same_len);
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(phase(&c, &ns, "rt"), json!(["Pending", null]));
    assert!(
        env(b).stored_cores(&ns).is_empty(),
        "nothing kept after a bad upload: {:?}",
        env(b).stored_cores(&ns)
    );
    assert!(env(b).partial_uploads(&ns, &uid).is_empty());

    let r = upload(&c, &ns, "rt", &core.zst);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"]["phase"], "Stored");
    assert!(r.json()["status"]["storedAt"].is_string());
    assert_eq!(
        upload(&c, &ns, "rt", &core.zst).status,
        409,
        "a second upload is refused"
    );
    // Stored as <name>_<uid>.zst under the namespace, the compressed bytes as sent.
    assert_eq!(env(b).stored_cores(&ns), [format!("rt_{uid}.zst")]);
    if let Some(s3) = env(b).s3() {
        let key = format!("{S3_PREFIX}/{ns}/rt_{uid}.zst");
        assert_eq!(
            s3.files(&format!("{S3_PREFIX}/{ns}/")),
            std::slice::from_ref(&key)
        );
        assert!(
            std::fs::read(s3.root.join(&s3.bucket).join(&key)).expect("the object's file")
                == core.zst
        );
    }
    assert!(env(b).partial_uploads(&ns, &uid).is_empty());

    // Direct, with the headers a user needs.
    let d = c
        .get(&format!("{API}/namespaces/{ns}/coredumps/rt/download"), &[])
        .expect("curl");
    assert_eq!(d.status, 200);
    assert_eq!(hex::encode(Sha256::digest(&d.body)), core.sha);
    assert_eq!(d.header("Content-Length"), Some(size.to_string().as_str()));
    assert!(d
        .header("Content-Disposition")
        .is_some_and(|v| v.contains("rt.core")));
    let z = c
        .get(
            &format!("{API}/namespaces/{ns}/coredumps/rt/download?compressed=true"),
            &[],
        )
        .expect("curl");
    assert_eq!(z.body, core.zst);
    let part = c
        .get(
            &format!("{API}/namespaces/{ns}/coredumps/rt/download"),
            &[("Range", "bytes=1000-1999")],
        )
        .expect("curl");
    assert_eq!(part.status, 206);
    assert_eq!(part.body, core.raw[1000..2000]);
    assert_eq!(
        part.header("Content-Range"),
        Some(format!("bytes 1000-1999/{size}").as_str())
    );

    // Through the aggregator with kubectl, whole and in pieces.
    let k = env(b).kubectl();
    let path = format!("{API}/namespaces/{ns}/coredumps/rt/download");
    let whole = k
        .command()
        .args(["get", "--raw", &path])
        .output()
        .expect("kubectl");
    assert!(
        whole.status.success(),
        "{}",
        String::from_utf8_lossy(&whole.stderr)
    );
    assert_eq!(hex::encode(Sha256::digest(&whole.stdout)), core.sha);
    let mut pieces = Vec::new();
    k.get_raw_in_pieces(&path, size, 1 << 20, |piece| {
        pieces.extend_from_slice(piece)
    })
    .expect("download in pieces");
    assert_eq!(hex::encode(Sha256::digest(&pieces)), core.sha);

    // Deleting the Coredump deletes its bytes.
    let r = c
        .request(
            "DELETE",
            &format!("{API}/namespaces/{ns}/coredumps/rt"),
            &[],
            None,
        )
        .expect("curl");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        env(b).stored_cores(&ns).is_empty(),
        "{:?}",
        env(b).stored_cores(&ns)
    );
}

/// Without a quota the server does not track usage; a quota created later counts what is
/// already there, and follows deletes from then on.
fn a_quota_created_later_counts_the_coredumps_already_there(b: Backend) {
    let ns = env(b).namespace("st-late").expect("ns");
    let c = direct(b);
    for (name, stored) in [("a", 100 << 10), ("b", 300 << 10), ("c", 600 << 10)] {
        let r = post(
            &c,
            &ns,
            "coredumps",
            &coredump(&ns, name, 1 << 20, stored, &"e".repeat(64)),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        assert_eq!(r.json()["status"]["phase"], "Pending");
    }
    let r = post(
        &c,
        &ns,
        "coredumpquotas",
        &QuotaFixture::new(&ns).count(3).build(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(used(&c, &ns), json!({"storage": "1000Ki", "count": "3"}));
    // Full: the next one is recorded as Rejected.
    let r = post(
        &c,
        &ns,
        "coredumps",
        &coredump(&ns, "d", 1 << 20, 1 << 10, &"e".repeat(64)),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(phase(&c, &ns, "d"), json!(["Rejected", "QuotaExceeded"]));
    let r = c
        .request(
            "DELETE",
            &format!("{API}/namespaces/{ns}/coredumps/b"),
            &[],
            None,
        )
        .expect("curl");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(used(&c, &ns), json!({"storage": "700Ki", "count": "2"}));
}

fn deleting_the_namespace_removes_its_cores_from_storage(b: Backend) {
    let ns = env(b).namespace("st-nsdel").expect("ns");
    let c = direct(b);
    let core = make_core(200 << 10, 9);
    let obj = coredump(
        &ns,
        "gone",
        core.raw.len() as u64,
        core.zst.len() as u64,
        &core.sha,
    );
    assert_eq!(post(&c, &ns, "coredumps", &obj).status, 201);
    assert_eq!(upload(&c, &ns, "gone", &core.zst).status, 200);
    assert_eq!(env(b).stored_cores(&ns).len(), 1);
    env(b)
        .kubectl()
        .ok(&["delete", "namespace", &ns, "--timeout=60s"])
        .expect("delete namespace");
    assert!(
        env(b).stored_cores(&ns).is_empty(),
        "{:?}",
        env(b).stored_cores(&ns)
    );
    if let Some(s3) = env(b).s3() {
        assert!(s3.files(&format!("{S3_PREFIX}/{ns}/")).is_empty());
    }
}

/// Peak resident memory of a process, from /proc.
fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn server_memory_stays_flat_while_a_2gib_core_streams_in_and_out(b: Backend) {
    let ns = env(b).namespace("st-big").expect("ns");
    let c = direct(b);
    // 2 GiB raw: mostly zero pages with a random block every 64 MiB, compressed on the fly
    // to a file so the test itself stays small in memory too.
    let size: u64 = 2 << 30;
    let dir = tempfile::tempdir().expect("tempdir");
    let zst_path = dir.path().join("core.zst");
    let mut hasher = Sha256::new();
    {
        use std::io::Write;
        let file = std::fs::File::create(&zst_path).expect("create");
        let mut enc = zstd::stream::write::Encoder::new(file, 1).expect("encoder");
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let zeros = vec![0u8; 1 << 20];
        for mib in 0..(size >> 20) {
            let chunk: Vec<u8> = if mib % 64 == 0 {
                (0..1 << 20).map(|_| rng.random()).collect()
            } else {
                zeros.clone()
            };
            hasher.update(&chunk);
            enc.write_all(&chunk).expect("write");
        }
        enc.finish().expect("finish");
    }
    let sha = hex::encode(hasher.finalize());
    let stored = std::fs::metadata(&zst_path).expect("stat").len();
    let created = post(
        &c,
        &ns,
        "coredumps",
        &coredump(&ns, "big", size, stored, &sha),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let uid = created.json()["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    let pid = env(b).server().pid().expect("server pid");
    let before = vm_hwm_kib(pid);

    let zst = std::fs::read(&zst_path).expect("read");
    assert_eq!(upload(&c, &ns, "big", &zst).status, 200);
    drop(zst);
    assert_eq!(env(b).stored_cores(&ns).len(), 1);
    assert!(env(b).partial_uploads(&ns, &uid).is_empty());
    // Download the raw 2 GiB straight into sha256sum, never into this process's memory.
    let ep = &env(b).cp.endpoints;
    let server = env(b).server();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "curl -sS --fail --cacert {} --cert {} --key {} {}{API}/namespaces/{ns}/coredumps/big/download | sha256sum",
            server.ca_cert.display(),
            ep.dir.join("pki/admin.crt").display(),
            ep.dir.join("pki/admin.key").display(),
            server.url
        ))
        .output()
        .expect("curl | sha256sum");
    drop(server);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next(),
        Some(sha.as_str())
    );
    let after = vm_hwm_kib(pid);
    eprintln!("server VmHWM: {before} KiB before, {after} KiB after moving 2 GiB in and out");
    assert!(
        after < before + 128 * 1024,
        "server peak memory grew by {} KiB while streaming a 2 GiB core",
        after.saturating_sub(before)
    );
}

/// An upload of several of the S3 backend's 8 MiB parts that fails at its end (content of
/// the right length whose checksum is wrong) or that the client cuts off leaves no core
/// and no partial upload: the file in .tmp goes, the multipart upload is aborted. The
/// whole core then stores and reads back across its parts.
fn failed_and_cut_uploads_of_many_parts_leave_nothing_behind(b: Backend) {
    let ns = env(b).namespace("st-parts").expect("ns");
    let c = direct(b);
    // Incompressible, so that the stored bytes are about as many as the raw ones.
    let random = |seed: u64| -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..20 << 20).map(|_| rng.random::<u8>()).collect()
    };
    let core = core_from(random(40));
    assert!(core.zst.len() > 2 * (8 << 20), "{}", core.zst.len());
    let created = post(
        &c,
        &ns,
        "coredumps",
        &coredump(
            &ns,
            "parts",
            core.raw.len() as u64,
            core.zst.len() as u64,
            &core.sha,
        ),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let uid = created.json()["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();

    // Another core's bytes at the same length: wrong only once (nearly) all are in.
    let mut wrong = zstd::encode_all(&random(41)[..], 3).expect("compress");
    wrong.resize(core.zst.len(), 0);
    let r = upload(&c, &ns, "parts", &wrong);
    assert_eq!(r.status, 422, "{}", r.text());
    eventually("the failed upload's partial upload to go", || {
        env(b).partial_uploads(&ns, &uid).is_empty()
    });
    assert!(env(b).stored_cores(&ns).is_empty());

    // Cut by the client in the middle of a slow upload.
    let dir = tempfile::tempdir().expect("tempdir");
    let body = dir.path().join("core.zst");
    std::fs::write(&body, &core.zst).expect("write");
    let mut cmd = c.command("PUT", &[("Content-Type", "application/zstd")]);
    cmd.args(["--limit-rate", "2M", "-o", "/dev/null"])
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg(format!(
            "{}{API}/namespaces/{ns}/coredumps/parts/upload",
            c.base
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut slow = cmd.spawn().expect("curl");
    eventually("the slow upload to reach the storage", || {
        !env(b).partial_uploads(&ns, &uid).is_empty()
    });
    let _ = slow.kill();
    let _ = slow.wait();
    eventually("the cut upload's partial upload to go", || {
        env(b).partial_uploads(&ns, &uid).is_empty()
    });
    assert!(env(b).stored_cores(&ns).is_empty());
    assert_eq!(phase(&c, &ns, "parts"), json!(["Pending", null]));

    // The whole core, then a range across the first part's end.
    let r = upload(&c, &ns, "parts", &core.zst);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(env(b).stored_cores(&ns), [format!("parts_{uid}.zst")]);
    assert!(env(b).partial_uploads(&ns, &uid).is_empty());
    let z = c
        .get(
            &format!("{API}/namespaces/{ns}/coredumps/parts/download?compressed=true"),
            &[],
        )
        .expect("curl");
    assert!(z.body == core.zst, "compressed download differs");
    let (from, to) = ((8 << 20) - 100, (8 << 20) + 99);
    let range = format!("bytes={from}-{to}");
    let part = c
        .get(
            &format!("{API}/namespaces/{ns}/coredumps/parts/download"),
            &[("Range", &range)],
        )
        .expect("curl");
    assert_eq!(part.status, 206);
    assert_eq!(part.body, core.raw[from..=to]);
}

/// Polls `f` for up to 30 s.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "{what}: timed out");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn evict_oldest_makes_room_instead_of_rejecting(b: Backend) {
    let ns = env(b).namespace("st-evict").expect("ns");
    let c = direct(b);
    let q = QuotaFixture::new(&ns).count(2).evict_oldest(true).build();
    assert_eq!(post(&c, &ns, "coredumpquotas", &q).status, 201);
    for (i, name) in ["old", "mid"].iter().enumerate() {
        let core = make_core(64 << 10, 20 + i as u64);
        let obj = coredump(
            &ns,
            name,
            core.raw.len() as u64,
            core.zst.len() as u64,
            &core.sha,
        );
        assert_eq!(post(&c, &ns, "coredumps", &obj).status, 201);
        assert_eq!(upload(&c, &ns, name, &core.zst).status, 200);
        // creationTimestamp has one-second resolution: keep the order unambiguous.
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let core = make_core(64 << 10, 30);
    let obj = coredump(
        &ns,
        "new",
        core.raw.len() as u64,
        core.zst.len() as u64,
        &core.sha,
    );
    assert_eq!(post(&c, &ns, "coredumps", &obj).status, 201);
    assert_eq!(phase(&c, &ns, "new"), json!(["Pending", null]));
    assert_eq!(
        c.get(&format!("{API}/namespaces/{ns}/coredumps/old"), &[])
            .expect("curl")
            .status,
        404
    );
    assert_eq!(phase(&c, &ns, "mid"), json!(["Stored", null]));
    assert_eq!(used(&c, &ns)["count"], "2");
    let stored = env(b).stored_cores(&ns);
    assert!(
        stored.len() == 1 && stored[0].starts_with("mid_"),
        "the evicted core's bytes are gone: {stored:?}"
    );
    eventually_reasons(b, &ns, "old", "Evicted");
    eventually_reasons(b, &ns, "mid", "Stored");
}

/// The reasons of the Events about coredump `name`, once they include `want`.
fn eventually_reasons(b: Backend, ns: &str, name: &str, want: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let reasons = env(b)
            .kubectl()
            .coredump_event_reasons(ns, name)
            .unwrap_or_default();
        if reasons.split_whitespace().any(|r| r == want) {
            return reasons;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {want} event for {ns}/{name}: {reasons:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
