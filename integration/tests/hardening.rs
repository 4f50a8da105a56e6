//! The holes an adversarial pass found (issue #12), each kept closed through the real
//! control plane: what a name-restricted Role lets one see, selectors served as lists,
//! metric labels from anonymous clients, slow clients, concurrent and dry-run uploads,
//! size overflow, refusals of bodies sent without `Expect`, and the validation gaps.

// A test binary: its helpers are test code as much as its #[test] functions, and a panic
// is the failure report (clippy.toml's allow-*-in-tests covers only the #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coredump_integration::controlplane::USERS;
use coredump_integration::curl::{Credential, Curl, Reply};
use coredump_integration::env::TestEnv;
use coredump_integration::extension;
use coredump_integration::fixtures::{
    collection, coredump_path, Core, CoredumpFixture, QuotaFixture,
};
use serde_json::{json, Value};

fn env() -> &'static TestEnv {
    TestEnv::shared()
}

fn direct() -> Curl {
    env().direct_admin()
}

/// kube-apiserver (so, through the aggregator) as token user `name`.
fn through_aggregator_as(name: &str) -> Curl {
    let ep = &env().cp.endpoints;
    let token = USERS
        .iter()
        .find(|u| u.name == name)
        .map(|u| u.token)
        .unwrap_or_default();
    Curl {
        base: ep.server.clone(),
        ca: ep.ca_cert.clone(),
        cred: Credential::Bearer(token.to_string()),
    }
}

fn post(c: &Curl, path: &str, body: &[u8]) -> Reply {
    c.request(
        "POST",
        path,
        &[("Content-Type", "application/json")],
        Some(body),
    )
    .expect("curl")
}

fn create(ns: &str, name: &str, core: &Core) -> Value {
    let r = post(
        &direct(),
        &collection(ns, "coredumps"),
        &CoredumpFixture::new(ns, name).core(core).bytes(),
    );
    assert_eq!(r.status, 201, "create {name}: {}", r.text());
    r.json()
}

fn upload(c: &Curl, ns: &str, name: &str, body: &[u8], query: &str) -> Reply {
    c.request(
        "PUT",
        &format!("{}{query}", coredump_path(ns, name, Some("upload"))),
        &[("Content-Type", "application/zstd")],
        Some(body),
    )
    .expect("curl")
}

fn phase(ns: &str, name: &str) -> String {
    direct()
        .get(&coredump_path(ns, name, None), &[])
        .expect("curl")
        .json()["status"]["phase"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Names of the objects in a list or in the events of a watch stream.
fn names_in(body: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_slice(line).unwrap_or(Value::Null);
        let objects: Vec<Value> = match v.get("items").and_then(Value::as_array) {
            Some(items) => items.clone(),
            None => v.get("object").cloned().into_iter().collect(),
        };
        for o in objects {
            if let Some(n) = o.pointer("/metadata/name").and_then(Value::as_str) {
                out.push(n.to_string());
            }
        }
    }
    out
}

fn wait_can_i(args: &[&str]) {
    let k = env().kubectl();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = k
            .run(&[&["auth", "can-i"], args].concat())
            .expect("kubectl");
        if String::from_utf8_lossy(&out.stdout).trim() == "yes" {
            return;
        }
        assert!(Instant::now() < deadline, "RBAC never allowed {args:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_name_restricted_role_sees_only_that_name_through_every_list_and_watch_form() {
    let ns = env().namespace("hd-names").expect("ns");
    let core = Core::text(4096, 1);
    create(&ns, "allowed", &core);
    create(&ns, "secret", &core);
    let k = env().kubectl();
    k.ok(&[
        "create",
        "role",
        "one-core",
        "-n",
        &ns,
        "--verb=get,list,watch",
        "--resource=coredumps.coredump.io",
        "--resource-name=allowed",
    ])
    .expect("role");
    k.ok(&[
        "create",
        "rolebinding",
        "one-core",
        "-n",
        &ns,
        "--role=one-core",
        "--user=alice",
    ])
    .expect("binding");
    wait_can_i(&[
        "get",
        "coredumps.coredump.io/allowed",
        "-n",
        &ns,
        "--as=alice",
    ]);
    let alice = through_aggregator_as("alice");
    let list = collection(&ns, "coredumps");
    let one = coredump_path(&ns, "allowed", None);

    // The path names "allowed"; the selector another object: refused, nothing served.
    let r = alice
        .get(
            &format!("{one}?watch=true&timeoutSeconds=2&fieldSelector=metadata.name%3Dsecret"),
            &[],
        )
        .expect("curl");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(!r.text().contains("\"secret\""), "{}", r.text());

    // The selector given twice: authorization and the handler must not read different ones.
    for verb in ["", "watch=true&timeoutSeconds=2&"] {
        let r = alice
            .get(
                &format!("{list}?{verb}fieldSelector=metadata.name%3Dallowed&fieldSelector=metadata.name%3Dsecret"),
                &[],
            )
            .expect("curl");
        assert_eq!(r.status, 400, "{verb}: {}", r.text());
        assert!(!names_in(&r.body).contains(&"secret".to_string()));
    }

    // What the Role allows: a list and a watch pinned to "allowed", and its named watch.
    let r = alice
        .get(
            &format!("{list}?fieldSelector=metadata.name%3Dallowed"),
            &[],
        )
        .expect("curl");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["kind"], "CoredumpList");
    assert_eq!(names_in(&r.body), ["allowed"]);
    let r = alice
        .get(&format!("{one}?watch=true&timeoutSeconds=2"), &[])
        .expect("curl");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(names_in(&r.body), ["allowed"]);
    let r = alice
        .get(
            &format!("{list}?watch=true&timeoutSeconds=2&fieldSelector=metadata.name%3Dallowed"),
            &[],
        )
        .expect("curl");
    assert_eq!(names_in(&r.body), ["allowed"]);
    // And nothing else: "secret" by any form is forbidden.
    for path in [
        coredump_path(&ns, "secret", None),
        format!("{list}?fieldSelector=metadata.name%3Dsecret"),
        list.clone(),
    ] {
        let r = alice.get(&path, &[]).expect("curl");
        assert_eq!(r.status, 403, "{path}: {}", r.text());
    }
}

#[test]
fn a_list_by_metadata_name_is_a_list_of_zero_or_one_items() {
    let ns = env().namespace("hd-pinned").expect("ns");
    create(&ns, "one", &Core::text(4096, 2));
    let c = direct();
    let list = collection(&ns, "coredumps");
    let r = c
        .get(&format!("{list}?fieldSelector=metadata.name%3Done"), &[])
        .expect("curl");
    assert_eq!(
        (r.status, r.json()["kind"].clone()),
        (200, json!("CoredumpList"))
    );
    assert_eq!(names_in(&r.body), ["one"]);
    // A missing name: an empty list, not a 404.
    let r = c
        .get(&format!("{list}?fieldSelector=metadata.name%3Dnone"), &[])
        .expect("curl");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["items"], json!([]));
    // Other terms still apply (it is Pending).
    let r = c
        .get(
            &format!("{list}?fieldSelector=metadata.name%3Done,status.phase%3DStored"),
            &[],
        )
        .expect("curl");
    assert_eq!(r.json()["items"], json!([]), "{}", r.text());
    // The metadata-only list informers ask for.
    let r = c
        .get(
            &format!("{list}?fieldSelector=metadata.name%3Done"),
            &[(
                "Accept",
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
            )],
        )
        .expect("curl");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["kind"], "PartialObjectMetadataList");
    assert_eq!(names_in(&r.body), ["one"]);
    // And kubectl, which informers and `kubectl wait` behave like.
    let out = env()
        .kubectl()
        .ok(&[
            "get",
            "coredumps.coredump.io",
            "-n",
            &ns,
            "--field-selector=metadata.name=one",
            "-o",
            "name",
        ])
        .expect("kubectl");
    assert_eq!(out.trim(), "coredump.coredump.io/one");
}

#[test]
fn anonymous_made_up_requests_add_no_metric_series() {
    let url = env().server().url.clone();
    let anon = Curl {
        base: url,
        ca: env().server().ca_cert.clone(),
        cred: Credential::None,
    };
    let marker = format!("zz{}", std::process::id());
    for (method, path) in [
        (
            "GET",
            format!("/apis/coredump.io/v1alpha1/namespaces/x/{marker}a"),
        ),
        (
            "GET",
            format!("/apis/coredump.io/v1alpha1/namespaces/x/coredumps/n/{marker}b"),
        ),
        (
            &*format!("{}C", marker.to_uppercase()),
            "/healthz-not".to_string(),
        ),
        (
            &*format!("{}D", marker.to_uppercase()),
            "/apis/coredump.io/v1alpha1/coredumps".to_string(),
        ),
        ("GET", format!("/{marker}e")),
    ] {
        let r = anon.request(method, &path, &[], None).expect("curl");
        assert!(r.status >= 400, "{method} {path}: {}", r.status);
    }
    let metrics = direct().get("/metrics", &[]).expect("curl").text();
    assert!(
        metrics.contains("coredump_apiserver_requests_total"),
        "{metrics}"
    );
    assert!(
        !metrics.to_lowercase().contains(&marker),
        "made-up values became labels:\n{}",
        metrics
            .lines()
            .filter(|l| l.to_lowercase().contains(&marker))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(metrics.contains("resource=\"other\""), "{metrics}");
}

#[test]
fn concurrent_uploads_of_one_core_store_it_once_and_never_delete_it() {
    let ns = env().namespace("hd-race").expect("ns");
    // Large enough that both uploads overlap.
    let core = Core::from_raw(
        (0..32u64 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect(),
    );
    for round in 0..3 {
        let name = format!("race-{round}");
        create(&ns, &name, &core);
        let replies: Vec<Reply> = std::thread::scope(|s| {
            let uploads: Vec<_> = (0..2)
                .map(|_| s.spawn(|| upload(&direct(), &ns, &name, &core.zst, "")))
                .collect();
            uploads
                .into_iter()
                .map(|h| h.join().expect("upload thread"))
                .collect()
        });
        let mut codes: Vec<u16> = replies.iter().map(|r| r.status).collect();
        codes.sort();
        assert_eq!(
            codes,
            [200, 409],
            "round {round}: {:?}",
            replies.iter().map(Reply::text).collect::<Vec<_>>()
        );
        assert_eq!(phase(&ns, &name), "Stored");
        let got = direct()
            .get(&coredump_path(&ns, &name, Some("download")), &[])
            .expect("curl");
        assert_eq!(got.status, 200, "round {round}: {}", got.text());
        assert_eq!(got.body.len(), core.raw.len());
        assert!(got.body == core.raw, "round {round}: download differs");
    }
}

#[test]
fn a_dry_run_upload_changes_nothing() {
    let ns = env().namespace("hd-dry").expect("ns");
    let core = Core::text(64 * 1024, 3);
    create(&ns, "dry", &core);
    let r = upload(&direct(), &ns, "dry", &core.zst, "?dryRun=All");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["kind"], "Status");
    assert_eq!(phase(&ns, "dry"), "Pending");
    let r = direct()
        .get(&coredump_path(&ns, "dry", Some("download")), &[])
        .expect("curl");
    assert_eq!(r.status, 409, "nothing stored: {}", r.text());
    // The real upload still works afterwards.
    assert_eq!(upload(&direct(), &ns, "dry", &core.zst, "").status, 200);
    assert_eq!(phase(&ns, "dry"), "Stored");
}

#[test]
fn sizes_near_the_integer_limit_are_refused_and_quota_stays_exact() {
    let ns = env().namespace("hd-overflow").expect("ns");
    let c = direct();
    let r = post(
        &c,
        &collection(&ns, "coredumpquotas"),
        &serde_json::to_vec(&QuotaFixture::new(&ns).storage("7Ei").count(10).build())
            .expect("json"),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let core = Core::text(4096, 4);
    for (i, size) in ["9223372036854775000", "4611686018427387904"]
        .iter()
        .enumerate()
    {
        let body = CoredumpFixture::new(&ns, &format!("huge-{i}"))
            .core(&core)
            .stored_size(size)
            .size(size)
            .bytes();
        let r = post(&c, &collection(&ns, "coredumps"), &body);
        assert_eq!(r.status, 422, "{size}: {}", r.text());
        assert!(r.text().contains("spec.storedSize"), "{}", r.text());
    }
    // Sizes at the bound are accepted, and the next create is admitted normally.
    for i in 0..2 {
        let body = CoredumpFixture::new(&ns, &format!("big-{i}"))
            .core(&core)
            .stored_size("1Pi")
            .size("1Pi")
            .bytes();
        let r = post(&c, &collection(&ns, "coredumps"), &body);
        assert_eq!(r.status, 201, "{}", r.text());
    }
    create(&ns, "small", &core);
    let q = c
        .get(&format!("{}/quota", collection(&ns, "coredumpquotas")), &[])
        .expect("curl")
        .json();
    assert_eq!(q["status"]["used"]["count"], "3", "{q}");
}

/// A refused upload of a large body sent without `Expect: 100-continue` must reach the
/// client as the Status, not as a broken pipe.
#[test]
fn refusals_of_bodies_sent_without_expect_arrive_as_the_status() {
    let ns = env().namespace("hd-early").expect("ns");
    let core = Core::text(4096, 5);
    create(&ns, "stored", &core);
    assert_eq!(upload(&direct(), &ns, "stored", &core.zst, "").status, 200);
    let big = vec![7u8; 48 << 20];
    let file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(file.path(), &big).expect("write");
    let url = format!(
        "{}{}",
        env().server().url,
        coredump_path(&ns, "stored", Some("upload"))
    );
    let unauthenticated = Curl {
        base: String::new(),
        ca: env().server().ca_cert.clone(),
        cred: Credential::None,
    };
    for (who, want) in [(direct(), 409), (unauthenticated, 401)] {
        for attempt in 0..5 {
            let out = who
                .command(
                    "PUT",
                    &[("Content-Type", "application/zstd"), ("Expect", "")],
                )
                .args(["-o", "/dev/null", "-w", "%{http_code}"])
                .arg("--data-binary")
                .arg(format!("@{}", file.path().display()))
                .arg(&url)
                .output()
                .expect("curl");
            let code = String::from_utf8_lossy(&out.stdout).to_string();
            assert_eq!(
                code,
                want.to_string(),
                "attempt {attempt}: curl exit {:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn object_metadata_is_validated_as_kube_apiserver_does() {
    let ns = env().namespace("hd-meta").expect("ns");
    let core = Core::text(4096, 6);
    let c = direct();
    for (what, body) in [
        (
            "label key",
            CoredumpFixture::new(&ns, "a")
                .core(&core)
                .label("-bad", "x"),
        ),
        (
            "label value",
            CoredumpFixture::new(&ns, "b")
                .core(&core)
                .label("app", "not valid"),
        ),
        (
            "annotation size",
            CoredumpFixture::new(&ns, "c")
                .core(&core)
                .annotation("big", &"x".repeat(256 * 1024 + 1)),
        ),
        (
            "finalizer",
            CoredumpFixture::new(&ns, "d").core(&core).finalizer("mine"),
        ),
    ] {
        let r = post(&c, &collection(&ns, "coredumps"), &body.bytes());
        assert_eq!(r.status, 422, "{what}: {}", r.text());
        assert_eq!(r.json()["reason"], "Invalid", "{what}");
    }
    let ok = CoredumpFixture::new(&ns, "e")
        .core(&core)
        .label("example.com/app", "web")
        .finalizer("example.com/keep")
        .bytes();
    assert_eq!(post(&c, &collection(&ns, "coredumps"), &ok).status, 201);
}

#[test]
fn creates_need_an_existing_namespace_with_a_valid_name() {
    let core = Core::text(4096, 7);
    let c = direct();
    let missing = format!("hd-missing-{}", std::process::id());
    let r = post(
        &c,
        &collection(&missing, "coredumps"),
        &CoredumpFixture::new(&missing, "x").core(&core).bytes(),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["reason"], "NotFound");
    assert_eq!(
        r.json()["message"],
        format!("namespaces \"{missing}\" not found")
    );
    let r = c
        .get(&collection(&missing, "coredumps"), &[])
        .expect("curl");
    assert_eq!(r.status, 200, "a list of a missing namespace is empty");
    let r = post(
        &c,
        &collection("Bad_NS", "coredumps"),
        &CoredumpFixture::new("Bad_NS", "x").core(&core).bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    // A namespace created a moment ago is known at once (the informer may lag).
    let fresh = env().namespace("hd-fresh").expect("ns");
    create(&fresh, "x", &core);
}

#[test]
fn selector_version_timeout_and_path_edge_cases() {
    let ns = env().namespace("hd-edges").expect("ns");
    create(&ns, "x", &Core::text(4096, 8));
    let c = direct();
    let list = collection(&ns, "coredumps");
    for q in [
        "labelSelector=a,,",
        "labelSelector=a,",
        "fieldSelector=metadata.name%3Dx%3Dy",
        "fieldSelector=metadata.name%3Dx,spec.nodeName%3Da%3Db",
        "watch=maybe",
        "limit=ten",
        "timeoutSeconds=soon",
    ] {
        let r = c.get(&format!("{list}?{q}"), &[]).expect("curl");
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        assert_eq!(r.json()["kind"], "Status", "{q}");
    }
    let rv: u64 = c.get(&list, &[]).expect("curl").json()["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("rv");
    let r = c
        .get(
            &format!(
                "{list}?resourceVersion={}&resourceVersionMatch=Exact",
                rv + 1000
            ),
            &[],
        )
        .expect("curl");
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(
        r.text().contains("Too large resource version"),
        "{}",
        r.text()
    );
    // timeoutSeconds=0 is "no client timeout": the watch is still open after 2 s.
    let started = Instant::now();
    let out = c
        .command("GET", &[])
        .args(["--max-time", "3", "-o", "/dev/null"])
        .arg(format!("{}{list}?watch=true&timeoutSeconds=0", c.base))
        .output()
        .expect("curl");
    assert_eq!(
        out.status.code(),
        Some(28),
        "curl timed out, the watch did not end"
    );
    assert!(started.elapsed() >= Duration::from_secs(3));
    let r = c
        .get(
            &format!("{}/extra", coredump_path(&ns, "x", Some("status"))),
            &[],
        )
        .expect("curl");
    assert_eq!(r.status, 404, "{}", r.text());
}

/// The server with tight limits: a silent TCP client, a TLS client that never finishes
/// its headers, and clients past the connection cap are all dealt with.
#[test]
fn slow_clients_are_disconnected_and_connections_are_capped() {
    let e = TestEnv::start(
        Default::default(),
        extension::Options {
            args: [
                "--tls-handshake-timeout=1s",
                "--request-header-timeout=1s",
                "--max-connections=2",
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        },
    )
    .expect("env");
    let (port, ca) = {
        let s = e.server();
        (s.port, s.ca_cert.clone())
    };
    let addr = format!("127.0.0.1:{port}");

    // No handshake at all: closed after about a second.
    let started = Instant::now();
    let mut silent = TcpStream::connect(&addr).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    let n = silent.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // TLS done, headers never finished: closed after about a second.
    let mut tls = Command::new("openssl")
        .args([
            "s_client", "-quiet", "-alpn", "http/1.1", "-connect", &addr, "-CAfile",
        ])
        .arg(&ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl");
    let mut stdin = tls.stdin.take().expect("stdin");
    std::io::Write::write_all(&mut stdin, b"GET /healthz HTTP/1.1\r\nHost: x\r\n").expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    let ended = loop {
        if let Some(status) = tls.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = tls.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(stdin);
    assert!(
        ended.is_some(),
        "the server kept a connection without headers open"
    );

    // Two connections held (no handshake yet): a third client waits...
    let held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let c = Curl {
        base: format!("https://127.0.0.1:{port}"),
        ca: ca.clone(),
        cred: Credential::None,
    };
    let blocked = c
        .command("GET", &[])
        .args(["--max-time", "0.5", "-o", "/dev/null"])
        .arg(format!("{}/healthz", c.base))
        .output()
        .expect("curl");
    assert_eq!(
        blocked.status.code(),
        Some(28),
        "past the cap the client waits"
    );
    // ...until the held ones time out.
    drop(held);
    let r = c.get("/healthz", &[]).expect("curl");
    assert_eq!(r.status, 200);
}
