//! `kubectl coredump` through the real kubectl and kube-apiserver: found as a plugin on
//! PATH, every command on real objects, a 2 GiB core fetched in pieces under a 2 s
//! request timeout and verified, a killed download resumed, a corrupt partial file cut
//! back, kubectl's error wording for Forbidden, no progress output off a terminal and a
//! bar under tmux, and gdb on a real core.

// A test binary: its helpers are test code as much as its #[test] functions, and a panic
// is the failure report (clippy.toml's allow-*-in-tests covers only the #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use coredump_integration::bins::controlplane_bin_dir;
use coredump_integration::controlplane;
use coredump_integration::curl::Curl;
use coredump_integration::env::TestEnv;
use coredump_integration::fixtures::{big_core, collection, coredump_path, Core, CoredumpFixture};
use serde_json::Value;

fn env() -> &'static TestEnv {
    static ENV: std::sync::OnceLock<TestEnv> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        TestEnv::start_shared(
            controlplane::Options {
                // A whole 2 GiB core cannot pass through the aggregator in one request.
                request_timeout: Duration::from_secs(2),
                ..Default::default()
            },
            Default::default(),
        )
    })
}

/// A directory holding only kubectl-coredump, as a user installs a plugin (cargo's
/// target directory also holds `kubectl-coredump.d`, which kubectl warns about).
fn plugin_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("exe");
        let built = exe
            .ancestors()
            .skip(1)
            .take(3)
            .map(|d| d.join("kubectl-coredump"))
            .find(|p| p.is_file())
            .expect("kubectl-coredump is built (cargo build --workspace --bins)");
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::copy(&built, dir.path().join("kubectl-coredump")).expect("install the plugin");
        dir
    })
    .path()
    .to_path_buf()
}

/// `kubectl ARGS` with the plugin and kubectl on PATH, as a user would have them.
fn kubectl(args: &[&str]) -> Command {
    let path = format!(
        "{}:{}:{}",
        plugin_dir().display(),
        controlplane_bin_dir().expect("bins").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(controlplane_bin_dir().expect("bins").join("kubectl"));
    cmd.env("PATH", path)
        .env("KUBECONFIG", &env().cp.endpoints.kubeconfig)
        .env("HOME", std::env::temp_dir())
        .args(args)
        .stdin(Stdio::null());
    cmd
}

fn run(args: &[&str]) -> Output {
    kubectl(args).output().expect("kubectl")
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn direct() -> Curl {
    env().direct_admin()
}

fn post(ns: &str, body: &Value) {
    let r = direct()
        .request(
            "POST",
            &collection(ns, "coredumps"),
            &[("Content-Type", "application/json")],
            Some(&serde_json::to_vec(body).expect("json")),
        )
        .expect("curl");
    assert_eq!(r.status, 201, "{}", r.text());
}

fn upload_file(ns: &str, name: &str, zst: &Path) {
    let (url, ca) = {
        let s = env().server();
        (s.url.clone(), s.ca_cert.clone())
    };
    let pki = env().cp.endpoints.dir.join("pki");
    let out = Command::new("curl")
        .args([
            "-sS",
            "-f",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/zstd",
            "-o",
            "/dev/null",
        ])
        .arg("--cacert")
        .arg(ca)
        .arg("--cert")
        .arg(pki.join("admin.crt"))
        .arg("--key")
        .arg(pki.join("admin.key"))
        .arg("--data-binary")
        .arg(format!("@{}", zst.display()))
        .arg(format!("{url}{}", coredump_path(ns, name, Some("upload"))))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small stored core with an analysis.
fn stored(ns: &str, name: &str, bug: &str, signature: &str) -> Core {
    let core = Core::text(256 * 1024, name.len() as u64 * 7);
    post(
        ns,
        &CoredumpFixture::new(ns, name)
            .core(&core)
            .image("example/app:1")
            .executable("/bin/app")
            .analysis(bug, signature, "NullPointerDereference")
            .build(),
    );
    let dir = tempfile::tempdir().expect("tmp");
    let zst = dir.path().join("c.zst");
    std::fs::write(&zst, &core.zst).expect("write");
    upload_file(ns, name, &zst);
    core
}

#[test]
fn kubectl_finds_the_plugin_and_every_command_works_on_real_objects() {
    let listed = ok(&["plugin", "list"]);
    assert!(listed.contains("kubectl-coredump"), "{listed}");

    let ns = env().namespace("pl-cmds").expect("ns");
    let a = stored(&ns, "crash-a", "bug-1", "parse_header");
    std::thread::sleep(Duration::from_millis(1100));
    stored(&ns, "crash-b", "bug-1", "parse_header");
    stored(&ns, "crash-c", "bug-2", "write_body");

    let table = ok(&["coredump", "list", "-n", &ns]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME")
            && lines[0].contains("SIGNATURE")
            && lines[0].contains("CAUSE"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("crash-b") || lines[1].starts_with("crash-c"),
        "newest first:\n{table}"
    );
    assert!(
        lines.last().is_some_and(|l| l.starts_with("crash-a")),
        "oldest last:\n{table}"
    );
    assert!(
        table.contains("256Ki")
            && table.contains("parse_header")
            && table.contains("example/app:1"),
        "{table}"
    );

    let groups = ok(&["coredump", "groups", "-n", &ns]);
    let first = groups.lines().nth(1).expect("a group row");
    assert!(
        first.contains("parse_header") && first.contains(" 2 "),
        "most frequent first:\n{groups}"
    );
    let group_name = first.split_whitespace().next().expect("name").to_string();
    let in_group = ok(&[
        "coredump",
        "list",
        "-n",
        &ns,
        "--group",
        &group_name,
        "-o",
        "name",
    ]);
    assert_eq!(
        in_group.lines().collect::<Vec<_>>(),
        [
            "coredump.coredump.io/crash-b",
            "coredump.coredump.io/crash-a"
        ]
    );
    let as_json: Value =
        serde_json::from_str(&ok(&["coredump", "list", "-n", &ns, "-o", "json"])).expect("json");
    assert_eq!(as_json["items"].as_array().map(Vec::len), Some(3));
    let as_yaml = ok(&["coredump", "groups", "-n", &ns, "-o", "yaml"]);
    assert!(as_yaml.contains("kind: CrashGroup"), "{as_yaml}");

    let page = ok(&["coredump", "show", "crash-a", "-n", &ns]);
    for want in [
        "NullPointerDereference",
        "parse_header",
        "Crash group:",
        "kubectl coredump get crash-a",
        &a.sha,
    ] {
        assert!(page.contains(want), "{want} in\n{page}");
    }

    // get, off a terminal: the file, verified, and no progress output.
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("a.core");
    let o = run(&[
        "coredump",
        "get",
        "crash-a",
        "-n",
        &ns,
        "-o",
        &file.display().to_string(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert_eq!(std::fs::read(&file).expect("read"), a.raw);
    assert_eq!(stderr.lines().count(), 1, "only the summary: {stderr:?}");
    assert!(
        stderr.contains("sha256 verified") && !stderr.contains("ETA"),
        "{stderr}"
    );
    let zfile = dir.path().join("a.core.zst");
    ok(&[
        "coredump",
        "get",
        "crash-a",
        "-n",
        &ns,
        "--compressed",
        "-o",
        &zfile.display().to_string(),
    ]);
    assert_eq!(std::fs::read(&zfile).expect("read"), a.zst);

    // Errors as kubectl words them, and a non-zero exit.
    let other = env().namespace("pl-other").expect("ns");
    let o = run(&["coredump", "list", "-n", &other, "--as", "alice"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.starts_with("Error from server (Forbidden): "), "{err}");
    let o = run(&["coredump", "show", "missing", "-n", &ns]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("Error from server (NotFound): "));
    let o = run(&["coredump", "list", "-n", &ns, "--context", "alice"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Forbidden"),
        "--context is honoured"
    );

    // -w: the table, then each change as it happens.
    let mut watching = kubectl(&["coredump", "list", "-n", &ns, "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("watch");
    let stdout = watching.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The listed table comes first; then a new crash shows up.
    let header = rx.recv_timeout(Duration::from_secs(30)).expect("table");
    assert!(header.starts_with("NAME"), "{header}");
    stored(&ns, "crash-w", "bug-3", "late_fn");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let found = loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(l) if l.starts_with("crash-w") => break true,
            Ok(l) => seen.push(l),
            Err(_) if Instant::now() > deadline => break false,
            Err(_) => {}
        }
    };
    let _ = watching.kill();
    let _ = watching.wait();
    assert!(found, "no row for the new crash: {seen:?}");

    // delete by group, by name, by age.
    let out = ok(&["coredump", "delete", "-n", &ns, "--group", &group_name]);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        out.contains("coredump.coredump.io \"crash-a\" deleted"),
        "{out}"
    );
    // creationTimestamp has one-second resolution.
    std::thread::sleep(Duration::from_millis(1100));
    let out = ok(&["coredump", "delete", "-n", &ns, "--older-than", "0s"]);
    assert!(
        out.contains("\"crash-c\" deleted") && out.contains("\"crash-w\" deleted"),
        "{out}"
    );
    let o = run(&["coredump", "delete", "crash-c", "-n", &ns]);
    assert!(!o.status.success(), "deleting a missing one fails");
}

#[test]
fn a_2gib_core_arrives_in_pieces_resumes_after_a_kill_and_survives_a_corrupt_partial() {
    let ns = env().namespace("pl-big").expect("ns");
    let dir = tempfile::tempdir().expect("tmp");
    let (zst, size, sha) = big_core(dir.path(), 2 << 30).expect("big core");
    let stored_size = std::fs::metadata(&zst).expect("stat").len();
    post(
        &ns,
        &CoredumpFixture::new(&ns, "big")
            .sha(&sha)
            .size(size)
            .stored_size(stored_size)
            .build(),
    );
    upload_file(&ns, "big", &zst);
    let out = dir.path().join("big.core");
    let part = dir.path().join("big.core.part");
    let out_arg = out.display().to_string();
    let get = |extra: &[&str]| {
        let mut args = vec!["coredump", "get", "big", "-n", &ns, "-o", &out_arg];
        args.extend_from_slice(extra);
        kubectl(&args)
    };

    // Killed about halfway.
    let mut child = get(&[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(300);
    while std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) < size / 2 {
        assert!(Instant::now() < deadline, "the download never got halfway");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill");
    let _ = child.wait();
    assert!(
        !out.exists(),
        "nothing under the final name before it is verified"
    );
    let had = std::fs::metadata(&part).expect("part").len();

    // Resumed: fewer bytes the second time, and the whole is right.
    let o = get(&[]).output().expect("kubectl");
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}");
    let fetched = number_after(&stderr, "fetched ");
    let resumed = number_after(&stderr, "resumed at ");
    assert!(resumed > 0 && resumed <= had, "{stderr}");
    assert_eq!(fetched + resumed, size, "{stderr}");
    assert!(number_after(&stderr, "; ") > 1, "in pieces: {stderr}");
    assert_eq!(file_sha(&out), sha);

    // A corrupt partial file: cut back to where it still matches, then completed.
    std::fs::remove_file(&out).expect("rm");
    let mut child = get(&[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    while std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) < size / 2 {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill");
    let _ = child.wait();
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&part)
            .expect("open");
        f.seek(SeekFrom::Start(size / 4)).expect("seek");
        f.write_all(b"corrupt").expect("write");
    }
    let o = get(&[]).output().expect("kubectl");
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}");
    assert!(
        number_after(&stderr, "resumed at ") <= size / 4,
        "the corrupt piece was dropped: {stderr}"
    );
    assert_eq!(file_sha(&out), sha);
}

#[test]
fn the_progress_bar_is_drawn_on_a_terminal() {
    let ns = env().namespace("pl-tty").expect("ns");
    let dir = tempfile::tempdir().expect("tmp");
    let (zst, size, sha) = big_core(dir.path(), 1 << 30).expect("big core");
    post(
        &ns,
        &CoredumpFixture::new(&ns, "tty")
            .sha(&sha)
            .size(size)
            .stored_size(std::fs::metadata(&zst).expect("stat").len())
            .build(),
    );
    upload_file(&ns, "tty", &zst);
    let session = format!("cdplugin{}", std::process::id());
    let cmd = kubectl(&[
        "coredump",
        "get",
        "tty",
        "-n",
        &ns,
        "-o",
        &dir.path().join("tty.core").display().to_string(),
    ]);
    let line = format!(
        "env PATH={} KUBECONFIG={} {} ; sleep 30",
        shell(
            cmd.get_envs()
                .find(|(k, _)| *k == "PATH")
                .and_then(|(_, v)| v)
                .expect("PATH")
        ),
        shell(env().cp.endpoints.kubeconfig.as_os_str()),
        std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(shell)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let status = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            "160",
            "-y",
            "20",
            &line,
        ])
        .status()
        .expect("tmux");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = String::new();
    let drawn = loop {
        let pane = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &session])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if pane.contains("ETA") {
            break true;
        }
        if pane.contains("sha256 verified") || Instant::now() > deadline {
            seen = pane;
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = Command::new("tmux")
        .args(["kill-session", "-t", &session])
        .status();
    assert!(drawn, "no progress bar on the terminal:\n{seen}");
}

#[test]
fn gdb_opens_a_real_core_with_the_executable_from_the_sysroot() {
    let ns = env().namespace("pl-gdb").expect("ns");
    let dir = tempfile::tempdir().expect("tmp");
    let mut sleeper = Command::new("sleep").arg("300").spawn().expect("sleep");
    let prefix = dir.path().join("core");
    let g = Command::new("gcore")
        .arg("-o")
        .arg(&prefix)
        .arg(sleeper.id().to_string())
        .output()
        .expect("gcore");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
    let raw = std::fs::read(format!("{}.{}", prefix.display(), sleeper.id())).expect("core");
    let core = Core::from_raw(raw);
    post(
        &ns,
        &CoredumpFixture::new(&ns, "sleeper")
            .core(&core)
            .executable(&which("sleep"))
            .build(),
    );
    let zst = dir.path().join("c.zst");
    std::fs::write(&zst, &core.zst).expect("write");
    upload_file(&ns, "sleeper", &zst);
    let cache = tempfile::tempdir().expect("cache");
    let o = kubectl(&[
        "coredump",
        "gdb",
        "sleeper",
        "-n",
        &ns,
        "--sysroot",
        "/",
        "--",
        "-batch",
        "-ex",
        "info inferiors",
    ])
    .env("XDG_CACHE_HOME", cache.path())
    .output()
    .expect("kubectl");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("Core was generated by `sleep"), "{stdout}");
    assert!(
        stdout.contains("nanosleep"),
        "gdb found the frame in libc: {stdout}"
    );
}

fn which(prog: &str) -> String {
    let o = Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .output()
        .expect("sh");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn shell(s: impl AsRef<std::ffi::OsStr>) -> String {
    format!("'{}'", s.as_ref().to_string_lossy().replace('\'', "'\\''"))
}

fn file_sha(p: &Path) -> String {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(p).expect("open");
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// The number that follows `marker` in `text`.
fn number_after(text: &str, marker: &str) -> u64 {
    text.split(marker)
        .nth(1)
        .and_then(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no number after {marker:?} in {text:?}"))
}
