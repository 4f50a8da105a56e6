//! Crash analysis against the real kernel (#14): programs built here with gcc, g++, rustc
//! and go crash in a kubelet-style cgroup with our handler installed; the spooled core is
//! analyzed as the agent does (the `analyze` child under its limits) and compared with
//! what `gdb -batch -ex bt` says of the same core. Needs root, like tests/real_crash.rs;
//! a missing tool skips the test that needs it (with the reason printed).

// A test crate: a panic is the failure report, and libc calls set up the crashes.
#![allow(clippy::unwrap_used, clippy::expect_used, unsafe_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use coredump_node_handler::analysis::{self, sandbox, ProcessModules};
use coredump_node_handler::install::{self, CorePatternGuard, InstallOptions, PidfdMode, Sysctls};
use coredump_node_handler::spool::{Spool, SpoolEntry};
use coredump_openapi::types::{AnalysisState, CrashAnalysis, CrashCause};

const POD_UID: &str = "7a6e2b53-6a8e-4c3c-9d0e-1f2a3b4c5d6f";
const CONTAINER_ID: &str = "5f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1d";
const WAIT: Duration = Duration::from_secs(30);

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        || Command::new(tool)
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
}

fn can_run(test: &str, tools: &[&str]) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping {test}: needs root to set core_pattern and create cgroups");
        return false;
    }
    for t in tools.iter().chain(&["gdb"]) {
        if !have(t) {
            eprintln!("skipping {test}: {t} is not installed");
            return false;
        }
    }
    true
}

fn src(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/analysis")
        .join(name)
}

fn out_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("analysis-builds");
    fs::create_dir_all(&d).expect("mkdir");
    d
}

/// Builds with `cmd` into `<tmp>/analysis/<name>/<input's stem>` (under a private name,
/// then renamed): builds of one program keep one executable name.
fn build(name: &str, cmd: &[&str], input: &Path) -> PathBuf {
    let dir = out_dir().join(name);
    fs::create_dir_all(&dir).expect("mkdir");
    let stem = input.file_stem().and_then(|s| s.to_str()).unwrap_or("prog");
    let out = dir.join(stem);
    let tmp = out_dir().join(format!("{name}.{}.tmp", std::process::id()));
    let mut c = Command::new(cmd[0]);
    c.args(&cmd[1..]);
    if cmd[0] == "go" {
        c.arg("-o").arg(&tmp).arg(input);
        c.env("GOCACHE", out_dir().join("gocache"))
            .env("GOPATH", out_dir().join("gopath"))
            .env("GO111MODULE", "off")
            .env("CGO_ENABLED", "0");
    } else {
        c.arg("-o").arg(&tmp).arg(input);
    }
    let o = c.output().expect("compiler");
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    fs::rename(&tmp, &out).expect("rename");
    out
}

fn strip(from: &Path, name: &str) -> PathBuf {
    let dir = out_dir().join(name);
    fs::create_dir_all(&dir).expect("mkdir");
    let out = dir.join(from.file_name().unwrap_or_default());
    let st = Command::new("strip")
        .arg("-o")
        .arg(&out)
        .arg(from)
        .status()
        .expect("strip");
    assert!(st.success());
    out
}

struct Env {
    _dir: tempfile::TempDir,
    spool: Spool,
    cgroup: PathBuf,
    _guard: CorePatternGuard,
}

impl Env {
    fn new() -> Self {
        let guard = CorePatternGuard::save().expect("saving core_pattern");
        let dir = tempfile::Builder::new()
            .prefix("na")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let handler = dir.path().join("h");
        fs::copy(env!("CARGO_BIN_EXE_coredump-node-handler"), &handler).expect("copy handler");
        let spool = Spool::new(dir.path().join("s"));
        spool.ensure_layout().expect("spool");
        // One pod crashes more often than the default rate limit lets through.
        coredump_node_handler::config::CaptureConfig {
            rate_limit_count: 100,
            ..Default::default()
        }
        .store(&spool.config_path())
        .expect("capture.json");
        install::install(
            &Sysctls::default(),
            &InstallOptions {
                handler,
                spool: spool.root().to_path_buf(),
                pipe_limit: 16,
                pidfd: PidfdMode::Auto,
            },
        )
        .expect("install");
        // The cgroup v2 mount: /sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts.
        let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| {
                nix::sys::statfs::statfs(p)
                    .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
            })
            .expect("a cgroup v2 hierarchy");
        let uid_ = POD_UID.replace('-', "_");
        let cgroup = root.join(format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{CONTAINER_ID}.scope"
        ));
        fs::create_dir_all(&cgroup).expect("cgroup");
        assert!(
            cgroup.join("cgroup.procs").exists(),
            "not a cgroup: {}",
            cgroup.display()
        );
        Self {
            _dir: dir,
            spool,
            cgroup,
            _guard: guard,
        }
    }

    /// Runs `argv` in the pod's cgroup (a shell moves itself in, then execs it), waits
    /// for it to die and for its spool entry.
    fn crash(&self, argv: &[&str], env: &[(&str, &str)]) -> (SpoolEntry, PathBuf) {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("ulimit -c unlimited && echo $$ > \"$0\" && exec \"$@\"")
            .arg(self.cgroup.join("cgroup.procs"))
            .args(argv)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("spawn");
        let pid = child.id() as i32;
        let st = child.wait().expect("wait");
        assert!(
            st.code().is_none(),
            "{argv:?} should die of a signal: {st:?}"
        );
        let t = Instant::now();
        loop {
            for id in self.spool.list_entries().expect("list") {
                let e = self.spool.read_entry(&id).expect("entry");
                if e.crash.host_pid == pid {
                    return (e, self.spool.entry_dir(&id).expect("dir"));
                }
            }
            let dropped = self.spool.list_drops().expect("drops").iter().any(|id| {
                self.spool
                    .read_drop(id)
                    .is_ok_and(|d| d.crash.host_pid == pid)
            });
            assert!(
                t.elapsed() < WAIT && !dropped,
                "no entry for {argv:?}; log:\n{}",
                fs::read_to_string(self.spool.log_path()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The analysis as the agent gets it: the `analyze` child under its limits.
    fn analyze(&self, entry: &SpoolEntry, dir: &Path) -> (CrashAnalysis, Duration) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let opts = sandbox::SandboxOptions {
            exe: PathBuf::from(env!("CARGO_BIN_EXE_coredump-node-handler")),
            ..Default::default()
        };
        let cache = coredump_node_handler::buildid::cache_dir(self.spool.root());
        rt.block_on(sandbox::run(&opts, entry, dir, &cache, None))
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // The leaf and the pod level; the QoS levels may be shared with other tests.
        for dir in [
            self.cgroup.clone(),
            self.cgroup
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        ] {
            for _ in 0..50 {
                if fs::remove_dir(&dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// `gdb -batch -ex bt` on the spooled core, decompressed.
fn gdb_bt(exe: &Path, dir: &Path) -> String {
    let core = dir.join("core.raw");
    let mut dec =
        zstd::stream::read::Decoder::new(fs::File::open(dir.join("core.zst")).expect("open"))
            .expect("zstd");
    let mut out = fs::File::create(&core).expect("create");
    std::io::copy(&mut dec, &mut out).expect("decompress");
    let o = Command::new("gdb")
        .args([
            "-batch",
            "-nx",
            "-ex",
            "set debuginfod enabled off",
            "-ex",
            "bt",
        ])
        .arg(exe)
        .arg(&core)
        .output()
        .expect("gdb");
    let _ = fs::remove_file(&core);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn functions(a: &CrashAnalysis) -> Vec<String> {
    a.crashing_thread
        .as_ref()
        .map(|t| {
            t.frames
                .iter()
                .map(|f| {
                    f.function
                        .clone()
                        .unwrap_or_else(|| analysis::frame_line(f))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn check(a: &CrashAnalysis, want_fn: &str, cause: CrashCause, gdb: &str) {
    let fns = functions(a);
    let pretty = serde_json::to_string_pretty(a).unwrap_or_default();
    assert!(
        fns.iter().any(|f| f.contains(want_fn)),
        "{want_fn} not in {fns:#?}\n{pretty}"
    );
    if !gdb.is_empty() {
        assert!(gdb.contains(want_fn), "gdb's bt lacks {want_fn}:\n{gdb}");
    }
    assert_eq!(a.cause, Some(cause), "{pretty}");
    assert!(
        matches!(
            a.state,
            Some(AnalysisState::Complete | AnalysisState::Partial)
        ),
        "{pretty}"
    );
    assert!(a
        .fingerprint
        .as_deref()
        .is_some_and(coredump_openapi::types::is_fingerprint));
    let mut errors = Vec::new();
    coredump_openapi::types::analysis::validate_analysis(a, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    eprintln!(
        "{want_fn}: {:?} {:?} signature {:?}\n  frames: {fns:?}\n  error: {:?}",
        a.state, a.cause, a.signature, a.error
    );
}

#[test]
fn c_with_and_without_debug_info_and_stripped() {
    if !can_run(
        "c_with_and_without_debug_info_and_stripped",
        &["gcc", "strip"],
    ) {
        return;
    }
    let c = src("c_crash.c");
    let debug = build(
        "c_debug",
        &["gcc", "-O1", "-g", "-fno-omit-frame-pointer"],
        &c,
    );
    let zdebug = build(
        "c_zdebug",
        &["gcc", "-O1", "-g", "-gz=zlib", "-fno-omit-frame-pointer"],
        &c,
    );
    let nodebug = build("c_nodebug", &["gcc", "-O2"], &c);
    let extra = build("c_extra", &["gcc", "-O2", "-DEXTRA"], &c);
    let stripped = strip(&nodebug, "c_stripped");
    let env = Env::new();
    let mut times = Vec::new();
    let mut run = |exe: &Path, mode: &str| {
        let (e, dir) = env.crash(&[exe.to_str().unwrap_or_default(), mode], &[]);
        let (a, took) = env.analyze(&e, &dir);
        times.push(took);
        (a, dir)
    };
    let (a, dir) = run(&debug, "header");
    check(
        &a,
        "parse_header",
        CrashCause::NullPointerDereference,
        &gdb_bt(&debug, &dir),
    );
    let top = &a.crashing_thread.as_ref().unwrap().frames[0];
    assert!(
        top.file
            .as_deref()
            .is_some_and(|f| f.ends_with("c_crash.c")),
        "{top:?}"
    );
    assert!(top.line.is_some(), "{top:?}");
    assert_eq!(a.signature.as_deref(), Some("parse_header"));
    // The same with compressed DWARF (SHF_COMPRESSED, as `gcc -gz` and Go write it).
    let (z, _) = run(&zdebug, "header");
    let ztop = &z.crashing_thread.as_ref().unwrap().frames[0];
    assert_eq!(ztop.function.as_deref(), Some("parse_header"), "{ztop:?}");
    assert_eq!((&ztop.file, ztop.line), (&top.file, top.line), "{ztop:?}");
    assert_eq!(z.fingerprint, a.fingerprint);
    let pm: ProcessModules = analysis::read_modules(&dir).expect("modules.json");
    eprintln!(
        "process held {} us longer (maps + {} opens); build-ids and copies after release: {} us",
        pm.held_micros,
        pm.modules.len(),
        pm.copy_micros
    );
    assert!(
        pm.modules
            .iter()
            .any(|m| m.path.ends_with("libc.so.6") && m.cached),
        "{pm:?}"
    );
    let (b, dir) = run(&nodebug, "header");
    check(
        &b,
        "parse_header",
        CrashCause::NullPointerDereference,
        &gdb_bt(&nodebug, &dir),
    );
    let (x, dir) = run(&extra, "header");
    check(
        &x,
        "parse_header",
        CrashCause::NullPointerDereference,
        &gdb_bt(&extra, &dir),
    );
    let (other, dir) = run(&nodebug, "body");
    check(
        &other,
        "parse_body",
        CrashCause::NullPointerDereference,
        &gdb_bt(&nodebug, &dir),
    );
    // Same bug in two builds (one with an extra function): one fingerprint; another bug: another.
    assert_eq!(a.fingerprint, b.fingerprint);
    assert_eq!(b.fingerprint, x.fingerprint);
    assert_ne!(b.fingerprint, other.fingerprint);
    // Stripped: no name, but the frame's offset lies in parse_header of the unstripped file.
    let (s, _) = run(&stripped, "header");
    let frame0 = &s.crashing_thread.as_ref().unwrap().frames[0];
    let off = u64::from_str_radix(
        frame0.offset.as_deref().unwrap().trim_start_matches("0x"),
        16,
    )
    .unwrap();
    let nm = Command::new("nm")
        .arg("-S")
        .arg(&nodebug)
        .output()
        .expect("nm");
    let nm = String::from_utf8_lossy(&nm.stdout);
    let (start, size) = nm
        .lines()
        .find_map(|l| {
            let p: Vec<&str> = l.split_whitespace().collect();
            (p.len() == 4 && p[3] == "parse_header").then(|| {
                (
                    u64::from_str_radix(p[0], 16).unwrap(),
                    u64::from_str_radix(p[1], 16).unwrap(),
                )
            })
        })
        .expect("parse_header in nm");
    // PIE: file offsets and addresses of .text agree in gcc's default layout.
    assert!(
        off >= start && off < start + size,
        "{off:#x} not in {start:#x}+{size:#x}: {frame0:?}"
    );
    assert_eq!(s.cause, Some(CrashCause::NullPointerDereference));
    eprintln!("analysis times: {times:?}");
}

#[test]
fn stack_overflow_and_assertion() {
    if !can_run("stack_overflow_and_assertion", &["gcc"]) {
        return;
    }
    let exe = build("c_debug2", &["gcc", "-O0", "-g"], &src("c_crash.c"));
    let env = Env::new();
    let (e, dir) = env.crash(&[exe.to_str().unwrap_or_default(), "overflow"], &[]);
    let (a, _) = env.analyze(&e, &dir);
    check(
        &a,
        "recurse",
        CrashCause::StackOverflow,
        &gdb_bt(&exe, &dir),
    );
    assert_eq!(a.crashing_thread.as_ref().unwrap().frames.len(), 64);
    let (e, dir) = env.crash(&[exe.to_str().unwrap_or_default(), "assert"], &[]);
    let (a, _) = env.analyze(&e, &dir);
    check(
        &a,
        "check_input",
        CrashCause::AssertionFailure,
        &gdb_bt(&exe, &dir),
    );
    assert!(
        functions(&a).iter().any(|f| f.contains("__assert_fail")),
        "{:?}",
        functions(&a)
    );
    assert_eq!(a.signature.as_deref(), Some("check_input"));
}

#[test]
fn cxx_eight_threads_crashing_thread_by_tid() {
    if !can_run("cxx_eight_threads_crashing_thread_by_tid", &["g++"]) {
        return;
    }
    let exe = build(
        "cxx_threads",
        &["g++", "-O1", "-g", "-pthread"],
        &src("cxx_threads.cc"),
    );
    let env = Env::new();
    let (e, dir) = env.crash(&[exe.to_str().unwrap_or_default()], &[]);
    let (a, _) = env.analyze(&e, &dir);
    check(
        &a,
        "worker::crash_in_worker",
        CrashCause::NullPointerDereference,
        &gdb_bt(&exe, &dir),
    );
    let t = a.crashing_thread.as_ref().unwrap();
    assert_eq!(a.threads.len(), 9, "{:?}", a.threads);
    // Not the main thread (whose TID is the PID), and the one %I named.
    assert_ne!(Some(t.tid as i32), e.crash.container_pid);
    assert_eq!(
        Some(t.tid as i32),
        analysis::read_modules(&dir).and_then(|m| m.crashing_tid)
    );
    assert_eq!(a.signature.as_deref(), Some("worker::crash_in_worker"));
}

#[test]
fn rust_panic_with_panic_abort() {
    if !can_run("rust_panic_with_panic_abort", &["rustc"]) {
        return;
    }
    let exe = build(
        "rust_panic",
        &["rustc", "-C", "panic=abort", "-g", "-C", "opt-level=1"],
        &src("rust_panic.rs"),
    );
    let env = Env::new();
    let (e, dir) = env.crash(&[exe.to_str().unwrap_or_default()], &[]);
    let (a, _) = env.analyze(&e, &dir);
    check(
        &a,
        "parse_header",
        CrashCause::RustPanic,
        &gdb_bt(&exe, &dir),
    );
    assert_eq!(a.signature.as_deref(), Some("rust_panic::parse_header"));
    assert!(functions(&a)
        .iter()
        .any(|f| f.starts_with("core::panicking::")));
}

#[test]
fn go_panic_with_gotraceback_crash() {
    if !can_run("go_panic_with_gotraceback_crash", &["go"]) {
        return;
    }
    let exe = build("go_panic", &["go", "build"], &src("go_panic.go"));
    let env = Env::new();
    let (e, dir) = env.crash(
        &[exe.to_str().unwrap_or_default()],
        &[("GOTRACEBACK", "crash")],
    );
    let (a, _) = env.analyze(&e, &dir);
    // gdb looks up the address before the faulting one (as for a return address) and
    // shows `??` where Go's injected sigpanic call "returns" to crashHere's first
    // instruction; it must agree on the frames around it.
    let gdb = gdb_bt(&exe, &dir);
    assert!(
        gdb.contains("runtime.sigpanic") && gdb.contains("main.main"),
        "{gdb}"
    );
    check(&a, "main.crashHere", CrashCause::GoPanic, "");
    let fns = functions(&a);
    let at = |n: &str| fns.iter().position(|f| f == n);
    // crashHere is a frameless leaf and Go's CFI is not used (symbolize.rs), so the
    // frame-pointer walk goes from it to its caller's caller (main.main is skipped).
    assert!(
        at("runtime.sigpanic") < at("main.crashHere") && at("main.crashHere") < at("runtime.main"),
        "{fns:?}"
    );
    // Go's DWARF is zlib-compressed: inflated, it gives the line of the fault.
    let top = a
        .crashing_thread
        .as_ref()
        .unwrap()
        .frames
        .iter()
        .find(|f| f.function.as_deref() == Some("main.crashHere"))
        .unwrap();
    assert!(
        top.file
            .as_deref()
            .is_some_and(|f| f.ends_with("go_panic.go"))
            && top.line == Some(12),
        "{top:?}"
    );
    assert_eq!(a.signature.as_deref(), Some("main.crashHere"));

    // Built as images often are, without symbol table and DWARF (-s -w): the names come
    // from .gopclntab, and it is the same bug (fingerprint) as the build with symbols.
    let bare = build(
        "go_panic_stripped",
        &["go", "build", "-ldflags=-s -w"],
        &src("go_panic.go"),
    );
    let nm = Command::new("nm").arg(&bare).output().expect("nm");
    assert!(
        String::from_utf8_lossy(&nm.stderr).contains("no symbols"),
        "{nm:?}"
    );
    let (e, dir) = env.crash(
        &[bare.to_str().unwrap_or_default()],
        &[("GOTRACEBACK", "crash")],
    );
    let (b, _) = env.analyze(&e, &dir);
    check(&b, "main.crashHere", CrashCause::GoPanic, "");
    assert!(
        functions(&b).iter().any(|f| f == "runtime.main"),
        "{:?}",
        functions(&b)
    );
    assert_eq!(b.signature.as_deref(), Some("main.crashHere"));
    assert_eq!(b.fingerprint, a.fingerprint);
}
