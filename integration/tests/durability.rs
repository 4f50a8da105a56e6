//! The store under abrupt stops: SIGKILL during concurrent writes, 20 times, loses nothing
//! acknowledged; and revisions older than the kept log answer 410 in the watch stream.
//! What involves the cores' bytes (SIGKILL mid-upload, expiry and retention) runs on both
//! storage backends (`fs::…`, `s3::…`: the data directory, and a bucket of a real S3
//! server).

// A test binary: its helpers are test code as much as its #[test] functions, and a panic
// is the failure report (clippy.toml's allow-*-in-tests covers only the #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use coredump_integration::curl::Curl;
use coredump_integration::env::{Backend, TestEnv};
use coredump_integration::fixtures::{big_core, CoredumpFixture, QuotaFixture};
use coredump_integration::{controlplane, extension};
use serde_json::Value;

const API: &str = "/apis/coredump.io/v1alpha1";
/// Small, so that a few writes push old revisions out of the log.
const LOG_SIZE: usize = 40;
/// The server's `--orphan-grace-period` here.
const ORPHAN_GRACE: Duration = Duration::from_secs(5);
/// kube-apiserver's `--request-timeout` in this environment.
const REQUEST_TIMEOUT_SECS: u64 = 2;

/// The kill tests take their environment's server down; the other tests on the same
/// environment must not run meanwhile.
fn serial(b: Backend) -> std::sync::MutexGuard<'static, ()> {
    static FS: Mutex<()> = Mutex::new(());
    static S3: Mutex<()> = Mutex::new(());
    match b {
        Backend::Filesystem => &FS,
        Backend::S3 => &S3,
    }
    .lock()
    .unwrap_or_else(|e| e.into_inner())
}

fn env(b: Backend) -> &'static TestEnv {
    static FS: std::sync::OnceLock<TestEnv> = std::sync::OnceLock::new();
    static S3: std::sync::OnceLock<TestEnv> = std::sync::OnceLock::new();
    match b {
        Backend::Filesystem => &FS,
        Backend::S3 => &S3,
    }
    .get_or_init(|| {
        // One environment starts at a time: two control planes starting together on two
        // cores can make kube-apiserver miss this environment's 2 s request timeout while
        // the extension server registers.
        static START: Mutex<()> = Mutex::new(());
        let _start = START.lock().unwrap_or_else(|e| e.into_inner());
        TestEnv::start_shared_on(
            b,
            controlplane::Options {
                // Short, so that a whole large download cannot fit in one request.
                request_timeout: Duration::from_secs(REQUEST_TIMEOUT_SECS),
                ..Default::default()
            },
            extension::Options {
                args: vec![
                    format!("--revision-log-size={LOG_SIZE}"),
                    "--maintenance-interval=1s".into(),
                    "--pending-timeout=4s".into(),
                    "--reconcile-interval=1s".into(),
                    format!("--orphan-grace-period={}s", ORPHAN_GRACE.as_secs()),
                ],
                ..Default::default()
            },
        )
    })
}

/// Quota `ns/name` number `n`, labelled with it (the writer checks which ones survived).
fn quota(ns: &str, name: &str, n: usize) -> Value {
    QuotaFixture::new(ns)
        .name(name)
        .label("n", &n.to_string())
        .storage(&format!("{}Mi", n + 1))
        .count(n)
        .build()
}

/// The extension server directly, as the cluster admin (client certificate).
fn direct(b: Backend) -> Curl {
    env(b).direct_admin()
}

coredump_integration::on_each_backend!(
    sigkill_during_an_upload_leaves_no_partial_core_and_exact_usage,
    pending_uploads_expire_and_max_age_deletes_old_cores,
    reconciliation_removes_orphans_and_fails_coredumps_whose_core_is_missing,
);

#[test]
fn sigkill_under_concurrent_writes_loses_nothing_acknowledged() {
    let b = Backend::Filesystem;
    let _serial = serial(b);
    let ns = env(b).namespace("kill").expect("ns");
    let acked: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
    for round in 0..20 {
        let c = direct(b);
        // 16 writers: group commit makes several of them durable per flush.
        let writers: Vec<_> = (0..16)
            .map(|w| {
                let c = c.clone();
                let ns = ns.clone();
                let acked = Arc::clone(&acked);
                std::thread::spawn(move || {
                    for i in 0.. {
                        let n = round * 100_000 + w * 1000 + i;
                        let name = format!("q-{n}");
                        let body = serde_json::to_vec(&quota(&ns, &name, n)).expect("json");
                        match c.request(
                            "POST",
                            &format!("{API}/namespaces/{ns}/coredumpquotas"),
                            &[("Content-Type", "application/json")],
                            Some(&body),
                        ) {
                            Ok(r) if r.status == 201 => acked.lock().expect("lock").push((name, n)),
                            // The server died under us: stop this writer.
                            _ => break,
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(150 + (round as u64 % 5) * 70));
        env(b).server().kill();
        for w in writers {
            let _ = w.join();
        }
        env(b).server().restart().expect("restart after SIGKILL");
    }
    let acked = acked.lock().expect("lock").clone();
    let log = env(b).server().log_path();
    let ready = direct(b).get("/readyz", &[]);
    assert!(
        ready.as_ref().is_ok_and(|r| r.status == 200),
        "server not ready after the last restart: {ready:?}\n{}",
        coredump_integration::process::log_tail(&log, 40)
    );
    eprintln!("{} writes acknowledged across 20 SIGKILLs", acked.len());
    assert!(
        acked.len() >= 20,
        "too few writes acknowledged to prove anything: {}",
        acked.len()
    );
    let list = direct(b)
        .get(&format!("{API}/namespaces/{ns}/coredumpquotas"), &[])
        .expect("list")
        .json();
    let items = list["items"].as_array().expect("items");
    for (name, n) in &acked {
        let item = items
            .iter()
            .find(|i| i["metadata"]["name"] == name.as_str())
            .unwrap_or_else(|| panic!("acknowledged {name} lost after SIGKILL"));
        assert_eq!(
            item["spec"]["hard"]["count"],
            n.to_string(),
            "{name} corrupted"
        );
        assert_eq!(item["metadata"]["labels"]["n"], n.to_string());
    }
    // Revisions stay monotonic across restarts.
    let mut rvs: Vec<u64> = items
        .iter()
        .filter_map(|i| i["metadata"]["resourceVersion"].as_str()?.parse().ok())
        .collect();
    let count = rvs.len();
    rvs.sort_unstable();
    rvs.dedup();
    assert_eq!(rvs.len(), count, "duplicate resourceVersions");
}

#[test]
fn too_old_revisions_answer_410_inside_the_watch_stream_and_for_continue() {
    let b = Backend::Filesystem;
    let _serial = serial(b);
    let ns = env(b).namespace("expired").expect("ns");
    let k = env(b).kubectl();
    let c = direct(b);
    let create = |i: usize| {
        let body = serde_json::to_vec(&quota(&ns, &format!("e-{i}"), i)).expect("json");
        let r = c
            .request(
                "POST",
                &format!("{API}/namespaces/{ns}/coredumpquotas"),
                &[("Content-Type", "application/json")],
                Some(&body),
            )
            .expect("create");
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()
    };
    let first = create(0);
    let old_rv = first["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    create(1);
    let page = k
        .ok(&[
            "get",
            "--raw",
            &format!("{API}/namespaces/{ns}/coredumpquotas?limit=1"),
        ])
        .expect("page");
    let token = serde_json::from_str::<Value>(&page).expect("json")["metadata"]["continue"]
        .as_str()
        .expect("continue")
        .to_string();
    for i in 2..LOG_SIZE * 2 {
        create(i);
    }
    // Watch through the aggregator: HTTP 200 with an ERROR event carrying 410 Expired.
    let out = k
        .ok(&["get", "--raw", &format!("{API}/namespaces/{ns}/coredumpquotas?watch=true&resourceVersion={old_rv}&timeoutSeconds=5")])
        .expect("watch from an old revision is a 200 stream");
    let ev: Value = serde_json::from_str(out.lines().next().unwrap_or_default()).expect("event");
    assert_eq!(ev["type"], "ERROR", "{out}");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");
    // A continue token from then: 410 Expired.
    let r = c
        .get(
            &format!("{API}/namespaces/{ns}/coredumpquotas?limit=1&continue={token}"),
            &[],
        )
        .expect("continue");
    assert_eq!(r.status, 410, "{}", r.text());
    assert_eq!(r.json()["reason"], "Expired");
    // A watch from now still works.
    let now = c
        .get(&format!("{API}/namespaces/{ns}/coredumpquotas"), &[])
        .expect("list")
        .json();
    let rv = now["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    let out = k
        .ok(&["get", "--raw", &format!("{API}/namespaces/{ns}/coredumpquotas?watch=true&resourceVersion={rv}&timeoutSeconds=1")])
        .expect("watch");
    assert!(!out.contains("ERROR"), "{out}");
}

/// A SIGABRT (unnamed) Coredump `ns/name` of a core of `size` raw and `stored` bytes.
fn coredump(ns: &str, name: &str, size: u64, stored: u64, sha: &str) -> Value {
    CoredumpFixture::new(ns, name)
        .signal(6)
        .size(size)
        .stored_size(stored)
        .sha(sha)
        .build()
}

fn post(c: &Curl, ns: &str, resource: &str, obj: &Value) -> u16 {
    c.request(
        "POST",
        &format!("{API}/namespaces/{ns}/{resource}"),
        &[("Content-Type", "application/json")],
        Some(&serde_json::to_vec(obj).expect("json")),
    )
    .expect("curl")
    .status
}

fn get(c: &Curl, path: &str) -> Value {
    c.get(path, &[]).expect("curl").json()
}

/// Polls until `f` holds (maintenance runs every second here).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("{what} did not happen in time");
}

fn sigkill_during_an_upload_leaves_no_partial_core_and_exact_usage(b: Backend) {
    let _serial = serial(b);
    let ns = env(b).namespace("killup").expect("ns");
    let c = direct(b);
    let quota = QuotaFixture::new(&ns).storage("1Gi").build();
    assert_eq!(post(&c, &ns, "coredumpquotas", &quota), 201);
    let dir = tempfile::tempdir().expect("tempdir");
    // 2 GiB raw: the upload takes long enough to be killed in the middle.
    let (zst, size, sha) = big_core(dir.path(), 2 << 30).expect("big core");
    let stored = std::fs::metadata(&zst).expect("stat").len();
    assert_eq!(
        post(
            &c,
            &ns,
            "coredumps",
            &coredump(&ns, "cut", size, stored, &sha)
        ),
        201
    );
    let uid = get(&c, &format!("{API}/namespaces/{ns}/coredumps/cut"))["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    let used_before =
        get(&c, &format!("{API}/namespaces/{ns}/coredumpquotas/quota"))["status"]["used"].clone();

    // A slow upload (rate-limited curl), killed in the middle.
    let ep = &env(b).cp.endpoints;
    let (url, ca) = {
        let s = env(b).server();
        (s.url.clone(), s.ca_cert.clone())
    };
    let mut upload = std::process::Command::new("curl")
        .args([
            "-sS",
            "--limit-rate",
            "4M",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/zstd",
        ])
        .arg("--cacert")
        .arg(&ca)
        .arg("--cert")
        .arg(ep.dir.join("pki/admin.crt"))
        .arg("--key")
        .arg(ep.dir.join("pki/admin.key"))
        .arg("--data-binary")
        .arg(format!("@{}", zst.display()))
        .arg(format!("{url}{API}/namespaces/{ns}/coredumps/cut/upload"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("curl");
    // A partial file in the data directory's .tmp, or a multipart upload in the bucket.
    eventually("the partial upload to reach the storage", || {
        !env(b).partial_uploads(&ns, &uid).is_empty()
    });
    env(b).server().kill();
    let _ = upload.wait();
    env(b).server().restart().expect("restart");

    match env(b).s3() {
        // Opening the store clears .tmp.
        None => assert_eq!(
            env(b).partial_uploads(&ns, &uid),
            Vec::<String>::new(),
            "partial upload left behind"
        ),
        // A killed server cannot abort its multipart upload: the parts stay invisible
        // (not an object, not a file of the posix root) until the bucket's lifecycle rule
        // removes them (deploy/README.md).
        Some(s3) => {
            assert!(s3
                .files(&format!("{}/{ns}/", coredump_integration::env::S3_PREFIX))
                .is_empty());
            eprintln!(
                "multipart uploads the killed server left: {:?}",
                env(b).partial_uploads(&ns, &uid)
            );
        }
    }
    assert!(
        env(b).stored_cores(&ns).is_empty(),
        "a core was stored from a cut upload: {:?}",
        env(b).stored_cores(&ns)
    );
    let obj = get(&c, &format!("{API}/namespaces/{ns}/coredumps/cut"));
    assert_eq!(obj["status"]["phase"], "Pending");
    assert_eq!(
        get(&c, &format!("{API}/namespaces/{ns}/coredumpquotas/quota"))["status"]["used"],
        used_before
    );

    // The retry after the crash replaces nothing half-done and stores the whole core.
    let body = std::fs::read(&zst).expect("read");
    let r = c
        .request(
            "PUT",
            &format!("{API}/namespaces/{ns}/coredumps/cut/upload"),
            &[("Content-Type", "application/zstd")],
            Some(&body),
        )
        .expect("upload");
    assert_eq!(r.status, 200, "{}", r.text());
    drop(body);

    // Through the aggregator, a 2 GiB download does not fit in one request window: it is
    // cut visibly (fewer bytes than Content-Length, so kubectl fails), and fetched in
    // pieces it is whole.
    let k = env(b).kubectl();
    let path = format!("{API}/namespaces/{ns}/coredumps/cut/download");
    let whole = k
        .command()
        .args(["get", "--raw", &path])
        .output()
        .expect("kubectl");
    let cut_visibly = !whole.status.success() || (whole.stdout.len() as u64) < size;
    assert!(cut_visibly, "a 2 GiB download finished within a {REQUEST_TIMEOUT_SECS}s request timeout: the test proves nothing");
    assert!((whole.stdout.len() as u64) < size);
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    k.get_raw_in_pieces(&path, size, 64 << 20, |piece| {
        sha2::Digest::update(&mut hasher, piece)
    })
    .expect("download in pieces");
    assert_eq!(hex::encode(sha2::Digest::finalize(hasher)), sha);
}

fn pending_uploads_expire_and_max_age_deletes_old_cores(b: Backend) {
    let _serial = serial(b);
    let ns = env(b).namespace("expire").expect("ns");
    let c = direct(b);
    let quota = QuotaFixture::new(&ns).count(5).build();
    assert_eq!(post(&c, &ns, "coredumpquotas", &quota), 201);
    assert_eq!(
        post(
            &c,
            &ns,
            "coredumps",
            &coredump(&ns, "never", 100, 10, &"c".repeat(64))
        ),
        201
    );
    let quota_path = format!("{API}/namespaces/{ns}/coredumpquotas/quota");
    assert_eq!(get(&c, &quota_path)["status"]["used"]["count"], "1");
    eventually("the pending upload to expire", || {
        get(&c, &format!("{API}/namespaces/{ns}/coredumps/never"))["status"]["reason"]
            == "UploadTimeout"
    });
    assert_eq!(
        get(&c, &format!("{API}/namespaces/{ns}/coredumps/never"))["status"]["phase"],
        "Failed"
    );
    assert_eq!(get(&c, &quota_path)["status"]["used"]["count"], "0");
    // A stored core, which retention deletes with its bytes.
    let raw = b"stack frame: main -> crash_here -> abort\n".repeat(2000);
    let zst = zstd::encode_all(&raw[..], 3).expect("compress");
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&raw));
    assert_eq!(
        post(
            &c,
            &ns,
            "coredumps",
            &coredump(&ns, "old", raw.len() as u64, zst.len() as u64, &sha)
        ),
        201
    );
    let r = c
        .request(
            "PUT",
            &format!("{API}/namespaces/{ns}/coredumps/old/upload"),
            &[("Content-Type", "application/zstd")],
            Some(&zst),
        )
        .expect("upload");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(env(b).stored_cores(&ns).len(), 1);

    // Retention: maxAge on the quota deletes what is older.
    let patch = br#"{"spec":{"maxAge":"2s"}}"#;
    let r = c
        .request(
            "PATCH",
            &quota_path,
            &[("Content-Type", "application/merge-patch+json")],
            Some(patch),
        )
        .expect("patch");
    assert_eq!(r.status, 200, "{}", r.text());
    for name in ["never", "old"] {
        eventually(&format!("maxAge to delete coredump {name}"), || {
            c.get(&format!("{API}/namespaces/{ns}/coredumps/{name}"), &[])
                .map(|r| r.status == 404)
                .unwrap_or(false)
        });
    }
    assert!(
        env(b).stored_cores(&ns).is_empty(),
        "retention left the core's bytes: {:?}",
        env(b).stored_cores(&ns)
    );
    // Both steps are in the coredump's history, as `kubectl describe` lists it.
    eventually("the Failed and DeletedByRetention events", || {
        let reasons = env(b)
            .kubectl()
            .coredump_event_reasons(&ns, "never")
            .unwrap_or_default();
        reasons.contains("Failed") && reasons.contains("DeletedByRetention")
    });
}

#[test]
fn serving_certificate_files_are_reloaded_without_a_restart() {
    use coredump_integration::pki::{Ca, Usage};
    let b = Backend::Filesystem;
    let _serial = serial(b);
    let (cert_file, key_file, dir) = {
        let s = env(b).server();
        (s.serving.cert.clone(), s.serving.key.clone(), s.dir.clone())
    };
    let original = (
        std::fs::read(&cert_file).expect("cert"),
        std::fs::read(&key_file).expect("key"),
    );
    let ca = Ca::new("rotated-ca").expect("ca");
    let ca_file = ca
        .write_cert(&dir.join("rotated-ca.crt"))
        .expect("write ca");
    let pair = ca
        .issue(
            "coredump-apiserver.coredump-system.svc",
            None,
            &["127.0.0.1"],
            Usage::Server,
        )
        .expect("issue");
    let mut rotated = direct(b);
    rotated.ca = ca_file;
    std::fs::write(&key_file, &pair.key_pem).expect("write key");
    std::fs::write(&cert_file, &pair.cert_pem).expect("write cert");
    eventually("the rotated certificate to be served", || {
        rotated
            .get("/readyz", &[])
            .map(|r| r.status == 200)
            .unwrap_or(false)
    });
    std::fs::write(&key_file, &original.1).expect("restore key");
    std::fs::write(&cert_file, &original.0).expect("restore cert");
    eventually("the original certificate to be served again", || {
        direct(b)
            .get("/readyz", &[])
            .map(|r| r.status == 200)
            .unwrap_or(false)
    });
}

/// A small stored core `name` in `ns`; returns its uid.
fn store_small_core(b: Backend, ns: &str, name: &str) -> String {
    let c = direct(b);
    let raw = format!("stack frame of {name}: main -> crash_here -> abort\n").repeat(2000);
    let zst = zstd::encode_all(raw.as_bytes(), 3).expect("compress");
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(raw.as_bytes()));
    let obj = coredump(ns, name, raw.len() as u64, zst.len() as u64, &sha);
    assert_eq!(post(&c, ns, "coredumps", &obj), 201);
    let r = c
        .request(
            "PUT",
            &format!("{API}/namespaces/{ns}/coredumps/{name}/upload"),
            &[("Content-Type", "application/zstd")],
            Some(&zst),
        )
        .expect("upload");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string()
}

/// Behind the server's back: removes the stored core `file` (`<name>_<uid>.zst`) of `ns`
/// from the backend, or with `Some(bytes)` puts one there.
fn tamper(b: Backend, ns: &str, file: &str, bytes: Option<&[u8]>) {
    match env(b).s3() {
        None => {
            let path = env(b).server().dir.join("data/cores").join(ns).join(file);
            match bytes {
                None => std::fs::remove_file(&path).expect("remove the core's file"),
                Some(body) => std::fs::write(&path, body).expect("plant a core file"),
            }
        }
        Some(s3) => {
            let key = format!("{}/{ns}/{file}", coredump_integration::env::S3_PREFIX);
            let r = match bytes {
                None => s3.delete_object(&key),
                Some(body) => s3.put_object(&key, body),
            }
            .expect("S3 request");
            assert!(r.status == 200 || r.status == 204, "{key}: {}", r.status);
        }
    }
}

/// Reconciliation at start-up and every --reconcile-interval makes the storage agree with
/// the Coredumps: a core that no Coredump owns goes once older than --orphan-grace-period,
/// and a Stored Coredump whose core vanished becomes Failed/CoreMissing, freeing its quota;
/// the other cores stay.
fn reconciliation_removes_orphans_and_fails_coredumps_whose_core_is_missing(b: Backend) {
    let _serial = serial(b);
    let ns = env(b).namespace("reconcile").expect("ns");
    let c = direct(b);
    let quota = QuotaFixture::new(&ns).count(5).build();
    assert_eq!(post(&c, &ns, "coredumpquotas", &quota), 201);
    let kept = store_small_core(b, &ns, "kept");
    let lost = store_small_core(b, &ns, "lost");
    let quota_path = format!("{API}/namespaces/{ns}/coredumpquotas/quota");
    assert_eq!(get(&c, &quota_path)["status"]["used"]["count"], "2");

    // While the server is down, one core vanishes and one no Coredump owns appears.
    env(b).server().stop();
    tamper(b, &ns, &format!("lost_{lost}.zst"), None);
    let ghost = "ghost_00000000-0000-4000-8000-000000000001.zst";
    tamper(b, &ns, ghost, Some(b"not a core of any coredump"));
    let planted = std::time::Instant::now();
    env(b).server().restart().expect("restart");

    let path = |name: &str| format!("{API}/namespaces/{ns}/coredumps/{name}");
    eventually("the Coredump whose core vanished to fail", || {
        get(&c, &path("lost"))["status"]["reason"] == "CoreMissing"
    });
    assert_eq!(get(&c, &path("lost"))["status"]["phase"], "Failed");
    assert_eq!(get(&c, &quota_path)["status"]["used"]["count"], "1");
    if planted.elapsed() < ORPHAN_GRACE - Duration::from_secs(1) {
        assert!(
            env(b).stored_cores(&ns).iter().any(|f| f == ghost),
            "an orphan younger than the grace period was removed"
        );
    }
    eventually("the orphan to be removed after the grace period", || {
        !env(b).stored_cores(&ns).iter().any(|f| f == ghost)
    });
    assert!(planted.elapsed() >= ORPHAN_GRACE);
    assert_eq!(env(b).stored_cores(&ns), [format!("kept_{kept}.zst")]);
    assert_eq!(get(&c, &path("kept"))["status"]["phase"], "Stored");
    let d = c
        .get(&format!("{}/download", path("kept")), &[])
        .expect("download");
    assert_eq!(d.status, 200);
    eventually("the Failed event", || {
        env(b)
            .kubectl()
            .coredump_event_reasons(&ns, "lost")
            .unwrap_or_default()
            .contains("Failed")
    });
}
