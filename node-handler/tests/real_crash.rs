//! Real crashes through the real kernel: each test installs the freshly built
//! handler as core_pattern (restored by `CorePatternGuard`, also on panic),
//! crashes `tests/crasher.c` and looks at the spool.
//!
//! Root only; each test prints why it skips otherwise. The tests hold
//! `install::PatternLock` while they run, so they serialize among
//! themselves and with any other test that takes the same lock.

// A test crate: a panic is the failure report, and libc calls set up the crashes.
#![allow(clippy::unwrap_used, clippy::expect_used, unsafe_code)]

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use coredump_node_handler::config::{CaptureConfig, OptOut};
use coredump_node_handler::install::{self, CorePatternGuard, InstallOptions, PidfdMode, Sysctls};
use coredump_node_handler::spool::{DropReason, DropRecord, Spool, SpoolEntry};
use sha2::{Digest, Sha256};

const POD_UID: &str = "0b6e2b53-6a8e-4c3c-9d0e-1f2a3b4c5d6e";
const CONTAINER_ID: &str = "4f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c";
const MARKER: &[u8] = b"COREDUMP-DETECTOR-MARKER-0123456789";
/// Generous: the machine has 2 cores shared with other builds.
const WAIT: Duration = Duration::from_secs(120);

/// None (after printing why) when this machine cannot run the tests.
fn can_run(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping {test}: needs root to set core_pattern and create cgroups");
        return false;
    }
    let sys = Sysctls::default();
    let writable = sys
        .read_pattern()
        .and_then(|p| {
            let _lock = install::PatternLock::acquire()?;
            sys.write_pattern(&p)
        })
        .is_ok();
    if !writable {
        eprintln!("skipping {test}: /proc/sys/kernel/core_pattern is not writable here");
        return false;
    }
    for tool in ["gcc", "gdb"] {
        if Command::new(tool).arg("--version").output().is_err() {
            eprintln!("skipping {test}: {tool} is not installed");
            return false;
        }
    }
    true
}

/// The crasher, compiled once per test binary.
fn crasher() -> &'static Path {
    static CRASHER: OnceLock<PathBuf> = OnceLock::new();
    CRASHER.get_or_init(|| {
        // In cargo's scratch dir for integration tests; built under a
        // private name and renamed, so concurrent runs never see half a file.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let tmp = dir.join(format!("crasher.{}.tmp", std::process::id()));
        let out = dir.join("crasher");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/crasher.c");
        let st = Command::new("gcc")
            .args(["-O0", "-g", "-o"])
            .arg(&tmp)
            .arg(&src)
            .status()
            .expect("running gcc");
        assert!(st.success(), "gcc failed");
        fs::rename(&tmp, &out).expect("rename crasher");
        out
    })
}

/// One test's world: the saved core_pattern, a temp dir with a copy of the
/// handler (short path for the 127-character limit; and cargo cannot
/// replace it while the kernel runs it) and a spool.
struct Env {
    dir: tempfile::TempDir,
    spool: Spool,
    handler: PathBuf,
    // Last: restores the kernel settings after everything else is gone.
    _guard: CorePatternGuard,
}

impl Env {
    fn new() -> Self {
        let guard = CorePatternGuard::save().expect("saving core_pattern");
        let dir = tempfile::Builder::new()
            .prefix("nh")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let handler = dir.path().join("h");
        fs::copy(env!("CARGO_BIN_EXE_coredump-node-handler"), &handler).expect("copy handler");
        let spool = Spool::new(dir.path().join("s"));
        spool.ensure_layout().expect("spool");
        Self {
            dir,
            spool,
            handler,
            _guard: guard,
        }
    }

    fn install(&self) -> install::InstallState {
        install::install(
            &Sysctls::default(),
            &InstallOptions {
                handler: self.handler.clone(),
                spool: self.spool.root().to_path_buf(),
                pipe_limit: 16,
                pidfd: PidfdMode::Auto,
            },
        )
        .expect("install")
    }

    fn config(&self, f: impl FnOnce(&mut CaptureConfig)) {
        let mut cfg = CaptureConfig::default();
        f(&mut cfg);
        cfg.store(&self.spool.config_path()).expect("capture.json");
    }

    /// Entries and drop records of the crashes of `pids`, once each has one.
    /// Crashes of other processes on the machine while our pattern is
    /// installed land in the spool too; they are left out.
    fn wait_outcomes(&self, pids: &[u32]) -> (Vec<SpoolEntry>, Vec<DropRecord>) {
        self.wait_outcomes_within(pids, WAIT)
    }

    fn wait_outcomes_within(
        &self,
        pids: &[u32],
        wait: Duration,
    ) -> (Vec<SpoolEntry>, Vec<DropRecord>) {
        let ours = |pid: i32| pids.iter().any(|&p| p as i32 == pid);
        let t = Instant::now();
        loop {
            let entries: Vec<SpoolEntry> = self
                .spool
                .list_entries()
                .expect("list")
                .iter()
                .map(|id| self.spool.read_entry(id).expect("entry"))
                .filter(|e| ours(e.crash.host_pid))
                .collect();
            let drops: Vec<DropRecord> = self
                .spool
                .list_drops()
                .expect("drops")
                .iter()
                .map(|id| self.spool.read_drop(id).expect("drop"))
                .filter(|d| ours(d.crash.host_pid))
                .collect();
            if entries.len() + drops.len() >= pids.len() {
                return (entries, drops);
            }
            assert!(
                t.elapsed() < wait,
                "waited {wait:?} for {} outcomes, have {} entries and {} drops; log:\n{}",
                pids.len(),
                entries.len(),
                drops.len(),
                fs::read_to_string(self.spool.log_path()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Creates a kubelet-style cgroup (all missing levels) and removes what it
/// created when dropped.
struct TestCgroup {
    created: Vec<PathBuf>,
    leaf: PathBuf,
}

impl TestCgroup {
    fn new(root: &Path, rel: &str) -> Self {
        let mut created = Vec::new();
        let mut p = root.to_path_buf();
        for part in rel.split('/').filter(|s| !s.is_empty()) {
            p.push(part);
            if !p.exists() {
                fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
                created.push(p.clone());
            }
        }
        Self { created, leaf: p }
    }

    fn procs(&self) -> PathBuf {
        self.leaf.join("cgroup.procs")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The crashed process is gone; a cgroup dir can take a moment to
        // become removable after its last task exits.
        for dir in self.created.iter().rev() {
            for _ in 0..50 {
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The cgroup v2 mount: /sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid
/// hosts.
fn cgroup2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| {
            nix::sys::statfs::statfs(p)
                .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        })
}

fn systemd_pod_cgroup(container_id: &str) -> TestCgroup {
    let root = cgroup2_root().expect("a cgroup v2 hierarchy");
    let uid_ = POD_UID.replace('-', "_");
    TestCgroup::new(
        &root,
        &format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{container_id}.scope"
        ),
    )
}

struct Crash {
    pid: u32,
    status: std::process::ExitStatus,
    /// From the crash (after filling memory) to the process's exit.
    dump_time: Option<Duration>,
}

/// Runs the crasher: `mode` segv|abort, `mib` of touched memory.
fn crash(mode: &str, mib: u64, rlimit: &str, cgroups: &[PathBuf], comm: Option<&str>) -> Crash {
    crash_as(crasher(), mode, mib, rlimit, cgroups, comm.map(OsStr::new))
}

/// [`crash`] of the crasher at `bin`, with a comm of any bytes.
fn crash_as(
    bin: &Path,
    mode: &str,
    mib: u64,
    rlimit: &str,
    cgroups: &[PathBuf],
    comm: Option<&OsStr>,
) -> Crash {
    let mut cmd = Command::new(bin);
    cmd.arg(mode).arg(mib.to_string()).arg(rlimit).args(cgroups);
    cmd.env("CRASHER_TIMING", "1");
    if let Some(c) = comm {
        cmd.env("CRASHER_COMM", c);
    }
    cmd.stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn crasher");
    let pid = child.id();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child.wait().expect("wait crasher");
    let ended = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    let dump_time = err
        .lines()
        .find_map(|l| l.strip_prefix("crashing at "))
        .and_then(|t| t.trim().parse::<f64>().ok())
        .map(|t| Duration::from_secs_f64((ended.as_secs_f64() - t).max(0.0)));
    let expected = if mode == "abort" { 6 } else { 11 };
    assert_eq!(
        status.signal(),
        Some(expected),
        "crasher should die by signal {expected}: {status:?}, stderr: {err}"
    );
    Crash {
        pid,
        status,
        dump_time,
    }
}

fn decompress(spool: &Spool, id: &str, to: &Path) -> (u64, String) {
    let mut dec = spool.open_core_decompressed(id).expect("open core");
    let mut out = fs::File::create(to).expect("create");
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = dec.read(&mut buf).expect("decompress");
        if k == 0 {
            break;
        }
        hasher.update(&buf[..k]);
        std::io::Write::write_all(&mut out, &buf[..k]).expect("write");
        n += k as u64;
    }
    (n, hex::encode(hasher.finalize()))
}

// ---- minimal ELF core reading, enough to compare two cores ----

#[derive(Debug, Clone, PartialEq, Eq)]
struct Phdr {
    p_type: u32,
    flags: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
    memsz: u64,
}

fn u16at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;

/// Program headers of an ELF64 little-endian core (checks it is one).
fn core_phdrs(core: &[u8]) -> Vec<Phdr> {
    assert_eq!(&core[..4], b"\x7fELF", "not ELF");
    assert_eq!(core[4], 2, "not ELF64");
    assert_eq!(u16at(core, 16), 4, "e_type is not ET_CORE");
    let phoff = u64at(core, 0x20) as usize;
    let phentsize = u16at(core, 0x36) as usize;
    let phnum = u16at(core, 0x38) as usize;
    (0..phnum)
        .map(|i| {
            let o = phoff + i * phentsize;
            Phdr {
                p_type: u32at(core, o),
                flags: u32at(core, o + 4),
                offset: u64at(core, o + 8),
                vaddr: u64at(core, o + 16),
                filesz: u64at(core, o + 32),
                memsz: u64at(core, o + 40),
            }
        })
        .collect()
}

/// Note types in the PT_NOTE segment, in order.
fn note_types(core: &[u8], phdrs: &[Phdr]) -> Vec<u32> {
    let mut types = Vec::new();
    for ph in phdrs.iter().filter(|p| p.p_type == PT_NOTE) {
        let mut o = ph.offset as usize;
        let end = o + ph.filesz as usize;
        let align = |x: usize| (x + 3) & !3;
        while o + 12 <= end {
            let namesz = u32at(core, o) as usize;
            let descsz = u32at(core, o + 4) as usize;
            types.push(u32at(core, o + 8));
            o += 12 + align(namesz) + align(descsz);
        }
    }
    types
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---- the tests ----

#[test]
fn pod_crash_is_stored_attributed_and_matches_a_kernel_core() {
    if !can_run("pod_crash_is_stored_attributed_and_matches_a_kernel_core") {
        return;
    }
    let env = Env::new();
    let state = env.install();
    let pattern = Sysctls::default().read_pattern().expect("pattern");
    assert_eq!(pattern, state.installed_pattern);
    assert!(pattern.len() <= 127);
    eprintln!("core_pattern: {pattern}");
    let cg = systemd_pod_cgroup(CONTAINER_ID);

    // A hostile comm: it arrives after `--` as one argument.
    let c = crash("segv", 8, "unlimited", &[cg.procs()], Some("-s/tmp/x y"));
    assert!(
        c.status.core_dumped(),
        "the kernel reports the core as dumped"
    );
    let (entries, drops) = env.wait_outcomes(&[c.pid]);
    assert!(drops.is_empty(), "{drops:?}");
    let e = &entries[0];
    eprintln!("{}", serde_json::to_string_pretty(e).expect("json"));
    assert_eq!(e.crash.host_pid, c.pid as i32);
    assert_eq!(e.crash.host_tid, c.pid as i32);
    assert_eq!(e.crash.signal, 11);
    assert_eq!(e.crash.signal_name.as_deref(), Some("SIGSEGV"));
    assert_eq!(e.crash.pod_uid.as_deref(), Some(POD_UID));
    assert_eq!(e.crash.container_id.as_deref(), Some(CONTAINER_ID));
    assert_eq!(e.crash.container_runtime.as_deref(), Some("cri-containerd"));
    assert_eq!(e.crash.executable, crasher().to_string_lossy());
    assert_eq!(e.crash.comm, "-s/tmp/x y");
    assert_eq!(e.crash.command_line[0], crasher().to_string_lossy());
    assert_eq!(e.crash.rlimit_core, u64::MAX);
    assert!(
        e.crash.proc_verified,
        "pidfd or CoreDumping should verify /proc"
    );
    assert!(!e.truncated);
    // The spool is where the pattern said, not where comm pointed.
    assert!(!Path::new("/tmp/x y").exists());

    let ours = env.dir.path().join("ours.core");
    let (n, sha) = decompress(&env.spool, &e.id, &ours);
    assert_eq!(n, e.raw_size);
    assert_eq!(sha, e.sha256);

    let bt = Command::new("gdb")
        .args(["-batch", "-ex", "bt"])
        .arg(crasher())
        .arg(&ours)
        .output()
        .expect("gdb");
    let bt = String::from_utf8_lossy(&bt.stdout);
    eprintln!("gdb bt:\n{bt}");
    assert!(bt.contains("crash_here_in_known_function"), "{bt}");

    // The same program crashing the same way, dumped by the kernel to a
    // plain file. Exact bytes differ between two runs (PIDs, times, the
    // stack), so the comparison is structural: with ASLR off in the crasher
    // both cores must have the same segments at the same addresses, the
    // same notes, and identical bytes in the segment holding the
    // deterministic buffer.
    let kdir = env.dir.path().join("kernel");
    fs::create_dir(&kdir).expect("mkdir");
    Sysctls::default()
        .write_pattern(&format!("{}/core.%P", kdir.display()))
        .expect("file pattern");
    let k = crash("segv", 8, "unlimited", &[cg.procs()], Some("-s/tmp/x y"));
    assert!(k.status.core_dumped());
    let kcore = fs::read(kdir.join(format!("core.{}", k.pid))).expect("kernel core");
    let ocore = fs::read(&ours).expect("our core");
    let (kp, op) = (core_phdrs(&kcore), core_phdrs(&ocore));
    assert_eq!(kp.len(), op.len(), "program header count");
    let layout = |v: &[Phdr]| {
        v.iter()
            .map(|p| (p.p_type, p.flags, p.vaddr, p.filesz, p.memsz))
            .collect::<Vec<_>>()
    };
    assert_eq!(layout(&kp), layout(&op), "segments");
    assert_eq!(
        note_types(&kcore, &kp),
        note_types(&ocore, &op),
        "note types"
    );
    let at = find(&ocore, MARKER).expect("marker in our core");
    let seg = op
        .iter()
        .position(|p| {
            p.p_type == PT_LOAD && p.offset as usize <= at && at < (p.offset + p.filesz) as usize
        })
        .expect("segment with the marker");
    let bytes =
        |core: &[u8], p: &Phdr| core[p.offset as usize..(p.offset + p.filesz) as usize].to_vec();
    assert!(
        bytes(&ocore, &op[seg]) == bytes(&kcore, &kp[seg]),
        "the buffer segment ({} bytes) differs",
        op[seg].filesz
    );
    eprintln!(
        "kernel core {} bytes, ours {} bytes, {} program headers, notes {:?}",
        kcore.len(),
        ocore.len(),
        op.len(),
        note_types(&ocore, &op)
    );
}

#[test]
fn cgroupfs_v1_hierarchy_is_attributed() {
    if !can_run("cgroupfs_v1_hierarchy_is_attributed") {
        return;
    }
    let pids = Path::new("/sys/fs/cgroup/pids");
    let v1 = nix::sys::statfs::statfs(pids)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP_SUPER_MAGIC);
    if !v1 {
        eprintln!("skipping cgroupfs_v1_hierarchy_is_attributed: no cgroup v1 pids hierarchy");
        return;
    }
    let env = Env::new();
    env.install();
    let cg = TestCgroup::new(
        pids,
        &format!("kubepods/burstable/pod{POD_UID}/{CONTAINER_ID}"),
    );
    let c = crash("abort", 1, "unlimited", &[cg.procs()], None);
    let (entries, _) = env.wait_outcomes(&[c.pid]);
    let e = &entries[0];
    assert_eq!(e.crash.host_pid, c.pid as i32);
    assert_eq!(e.crash.signal_name.as_deref(), Some("SIGABRT"));
    assert_eq!(e.crash.pod_uid.as_deref(), Some(POD_UID));
    assert_eq!(e.crash.container_id.as_deref(), Some(CONTAINER_ID));
    assert_eq!(e.crash.container_runtime, None);
}

#[test]
fn opted_out_pod_leaves_no_core() {
    if !can_run("opted_out_pod_leaves_no_core") {
        return;
    }
    let env = Env::new();
    env.install();
    let mut o = OptOut::default();
    o.pod_uids.insert(POD_UID.into());
    o.store(&env.spool.optout_path()).expect("optout.json");
    let cg = systemd_pod_cgroup(CONTAINER_ID);
    let c = crash("segv", 64, "unlimited", &[cg.procs()], None);
    let (entries, drops) = env.wait_outcomes(&[c.pid]);
    assert!(entries.is_empty());
    assert_eq!(drops[0].reason, DropReason::OptedOut);
    assert_eq!(drops[0].crash.host_pid, c.pid as i32);
    assert_eq!(drops[0].raw_bytes_read, 0);
    assert!(
        drops[0].crash.command_line.is_empty(),
        "no command line for opted-out pods"
    );
    // We close the pipe without reading: the process still dies by its
    // signal, the kernel just does not call it "core dumped".
    eprintln!(
        "opted out: status {:?}, core_dumped={}, dump took {:?}",
        c.status,
        c.status.core_dumped(),
        c.dump_time
    );
    assert!(env.spool.total_bytes().expect("usage") == 0);
}

#[test]
fn host_process_goes_to_the_previous_pipe_handler() {
    if !can_run("host_process_goes_to_the_previous_pipe_handler") {
        return;
    }
    let env = Env::new();
    let out = env.dir.path().join("prev");
    let script = env.dir.path().join("prev.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$@\" > {o}.args\ncat > {o}.core\nreadlink /proc/self/fd/3 > {o}.fd3 2>&1\n",
            o = out.display()
        ),
    )
    .expect("script");
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let previous = format!(
        "|{} %P %p %i %s %c %d %u %g %e %E %h %C %F %t %%",
        script.display()
    );
    Sysctls::default()
        .write_pattern(&previous)
        .expect("previous pattern");
    let state = env.install();
    assert_eq!(state.previous_pattern, previous);

    // Not in any pod cgroup.
    let c = crash("segv", 1, "unlimited", &[], None);
    let (entries, drops) = env.wait_outcomes(&[c.pid]);
    assert!(entries.is_empty());
    let d = &drops[0];
    assert_eq!(d.reason, DropReason::NotAContainer);
    assert_eq!(d.forwarded_to.as_deref(), Some(previous.as_str()));
    assert_eq!(d.forward_exit_status, Some(0));

    let args = fs::read_to_string(out.with_extension("args")).expect("args");
    let args: Vec<&str> = args.split_whitespace().collect();
    eprintln!("previous handler got: {args:?}");
    let pid = c.pid.to_string();
    let exe = crasher().to_string_lossy().replace('/', "!");
    assert_eq!(args[0], pid, "%P");
    assert_eq!(args[1], pid, "%p (same PID namespace)");
    assert_eq!(args[2], pid, "%i");
    assert_eq!(args[3], "11", "%s");
    assert_eq!(args[4], u64::MAX.to_string(), "%c");
    assert_eq!(args[5], "1", "%d");
    assert_eq!(args[6], "0", "%u");
    assert_eq!(args[7], "0", "%g");
    assert_eq!(args[8], "crasher", "%e");
    assert_eq!(args[9], exe, "%E");
    let host = nix::unistd::gethostname().expect("hostname");
    assert_eq!(args[10], host.to_string_lossy(), "%h");
    assert!(args[11].parse::<u32>().is_ok(), "%C");
    if state.installed_pattern.contains("%F") {
        assert_eq!(args[12], "3", "%F");
        let fd3 = fs::read_to_string(out.with_extension("fd3")).expect("fd3");
        assert!(fd3.contains("pidfd"), "fd 3 of the previous handler: {fd3}");
    }
    assert_eq!(args.last().copied(), Some("%"), "%%");
    let core = fs::read(out.with_extension("core")).expect("core");
    core_phdrs(&core);
    assert!(
        find(&core, MARKER).is_some(),
        "the whole core went to the previous handler"
    );

    // restore-pattern puts the previous handler back.
    let restored = install::restore(
        &Sysctls::default(),
        env.spool.root(),
        &install::RestoreMode::if_ours(),
    )
    .expect("restore");
    assert!(matches!(restored, install::RestoreOutcome::Restored { .. }));
    assert_eq!(Sysctls::default().read_pattern().expect("read"), previous);
}

#[test]
fn host_process_with_a_file_pattern_before_is_dropped() {
    if !can_run("host_process_with_a_file_pattern_before_is_dropped") {
        return;
    }
    let env = Env::new();
    Sysctls::default()
        .write_pattern("core")
        .expect("file pattern");
    env.install();
    let c = crash("segv", 1, "unlimited", &[], None);
    let (_, drops) = env.wait_outcomes(&[c.pid]);
    assert_eq!(drops[0].reason, DropReason::NotAContainer);
    assert_eq!(drops[0].crash.host_pid, c.pid as i32);
    assert!(
        drops[0].detail.contains("not a pipe"),
        "{}",
        drops[0].detail
    );
    assert_eq!(drops[0].forwarded_to, None);
}

#[test]
fn rlimit_core_zero_means_no_core_and_small_limits_truncate() {
    if !can_run("rlimit_core_zero_means_no_core_and_small_limits_truncate") {
        return;
    }
    let env = Env::new();
    env.install();
    let cg = systemd_pod_cgroup(CONTAINER_ID);
    let c0 = crash("segv", 1, "0", &[cg.procs()], None);
    let (entries, drops) = env.wait_outcomes(&[c0.pid]);
    assert!(entries.is_empty());
    assert_eq!(drops[0].reason, DropReason::RlimitZero);
    assert_eq!(drops[0].crash.rlimit_core, 0);

    // RLIMIT_CORE of 2 MiB on an 8 MiB process: cut like a file dump.
    let c1 = crash("segv", 8, &(2u64 << 20).to_string(), &[cg.procs()], None);
    let (entries, _) = env.wait_outcomes(&[c0.pid, c1.pid]);
    let e = &entries[0];
    assert!(e.truncated);
    assert_eq!(e.truncated_by.as_deref(), Some("rlimitCore"));
    assert_eq!(e.raw_size, 2 << 20);
    let (n, sha) = decompress(&env.spool, &e.id, &env.dir.path().join("cut"));
    assert_eq!((n, sha.as_str()), (e.raw_size, e.sha256.as_str()));
}

#[test]
fn max_core_size_truncates_and_full_spool_drops() {
    if !can_run("max_core_size_truncates_and_full_spool_drops") {
        return;
    }
    let env = Env::new();
    env.install();
    env.config(|c| c.max_core_bytes = 1 << 20);
    let cg = systemd_pod_cgroup(CONTAINER_ID);
    let c = crash("segv", 8, "unlimited", &[cg.procs()], None);
    let (entries, _) = env.wait_outcomes(&[c.pid]);
    let e = &entries[0];
    assert!(e.truncated);
    assert_eq!(e.truncated_by.as_deref(), Some("maxCoreBytes"));
    assert_eq!(e.raw_size, 1 << 20);
    let cut = env.dir.path().join("cut");
    let (n, sha) = decompress(&env.spool, &e.id, &cut);
    assert_eq!((n, sha.as_str()), (e.raw_size, e.sha256.as_str()));
    // Still an ELF core (the headers come first).
    core_phdrs(&fs::read(&cut).expect("read"));
    eprintln!(
        "truncated: crasher status {:?}, dump took {:?}",
        c.status, c.dump_time
    );

    // The spool now holds more than a 1-byte limit: the next is refused.
    env.config(|c| c.spool_max_bytes = 1);
    let c2 = crash("segv", 1, "unlimited", &[cg.procs()], None);
    let (_, drops) = env.wait_outcomes(&[c.pid, c2.pid]);
    assert_eq!(drops[0].reason, DropReason::SpoolFull);
}

#[test]
fn crash_loop_stays_within_the_rate_limit() {
    if !can_run("crash_loop_stays_within_the_rate_limit") {
        return;
    }
    let env = Env::new();
    env.install();
    env.config(|c| {
        c.rate_limit_count = 5;
        c.rate_limit_window_seconds = 3600;
    });
    let root = cgroup2_root().expect("cgroup v2");
    let uid_ = POD_UID.replace('-', "_");
    let t = Instant::now();
    let mut pids = Vec::new();
    for i in 0..50u32 {
        // Each restart of a container gets a new ID: the limit is per pod.
        let cid = format!("{:064x}", 0xc0ffee00u64 + u64::from(i));
        let cg = TestCgroup::new(
            &root,
            &format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{cid}.scope"),
        );
        pids.push(crash("segv", 0, "unlimited", &[cg.procs()], None).pid);
    }
    let (entries, drops) = env.wait_outcomes(&pids);
    eprintln!(
        "50 crashes in {:?}: {} stored, {} dropped",
        t.elapsed(),
        entries.len(),
        drops.len()
    );
    assert_eq!(entries.len(), 5);
    assert_eq!(drops.len(), 45);
    assert!(drops.iter().all(|d| d.reason == DropReason::RateLimited));
}

#[test]
fn handler_memory_stays_flat_for_a_512_mib_core() {
    if !can_run("handler_memory_stays_flat_for_a_512_mib_core") {
        return;
    }
    let env = Env::new();
    env.install();
    let cg = systemd_pod_cgroup(CONTAINER_ID);
    let c = crash("segv", 512, "unlimited", &[cg.procs()], None);
    let (entries, _) = env.wait_outcomes(&[c.pid]);
    let e = &entries[0];
    assert!(e.raw_size > 512 << 20);
    let secs = e
        .handler
        .read_millis
        .unwrap_or(e.handler.elapsed_millis)
        .max(1) as f64
        / 1000.0;
    eprintln!(
        "512 MiB core: raw {} stored {} ({:.0}%), handler VmHWM {:.1} MiB, read in {:.2}s ({:.0} MB/s), committed after {} ms, crasher dump-to-exit {:?}",
        e.raw_size,
        e.stored_size,
        100.0 * e.stored_size as f64 / e.raw_size as f64,
        e.handler.vm_hwm_bytes as f64 / (1 << 20) as f64,
        secs,
        e.raw_size as f64 / secs / 1e6,
        e.handler.elapsed_millis,
        c.dump_time
    );
    assert!(e.handler.vm_hwm_bytes > 0);
    assert!(
        e.handler.vm_hwm_bytes < 64 << 20,
        "handler peak RSS {} bytes",
        e.handler.vm_hwm_bytes
    );
    let (n, sha) = decompress(&env.spool, &e.id, &env.dir.path().join("big"));
    assert_eq!((n, sha.as_str()), (e.raw_size, e.sha256.as_str()));
}

#[test]
fn stored_core_is_byte_identical_to_the_kernel_stream() {
    if !can_run("stored_core_is_byte_identical_to_the_kernel_stream") {
        return;
    }
    // One crash, two copies: a wrapper between the kernel and the handler
    // keeps the exact bytes the kernel piped. (The comparison with a file
    // dump above covers what the kernel would have written to disk; this
    // covers that nothing is lost or changed on the way into the spool.)
    let env = Env::new();
    let state = env.install();
    let raw = env.dir.path().join("raw.core");
    let wrapper = env.dir.path().join("tee.sh");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ntee {} | {} capture -s{} -- \"$@\"\n",
            raw.display(),
            env.handler.display(),
            env.spool.root().display()
        ),
    )
    .expect("wrapper");
    fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let args = state
        .installed_pattern
        .split_once(" -- ")
        .map(|(_, a)| a.to_string())
        .expect("specifiers");
    Sysctls::default()
        .write_pattern(&format!("|{} {args}", wrapper.display()))
        .expect("wrapper pattern");

    let cg = systemd_pod_cgroup(CONTAINER_ID);
    let c = crash("abort", 16, "unlimited", &[cg.procs()], None);
    let (entries, _) = env.wait_outcomes(&[c.pid]);
    let e = &entries[0];
    let ours = env.dir.path().join("ours.core");
    let (n, sha) = decompress(&env.spool, &e.id, &ours);
    let kernel = fs::read(&raw).expect("raw core");
    assert_eq!(n, kernel.len() as u64);
    assert_eq!(sha, hex::encode(Sha256::digest(&kernel)));
    assert!(
        fs::read(&ours).expect("ours") == kernel,
        "stored core differs from the kernel's stream"
    );
    assert_eq!(e.crash.signal_name.as_deref(), Some("SIGABRT"));
    eprintln!("byte-identical: {n} bytes, sha256 {sha}");
}

/// A pod's crasher with a name that is not UTF-8 and one that runs from a
/// directory whose name is not UTF-8: the kernel passes those bytes in
/// `%e` and `%E`, and `capture` must still keep the core, with the bytes
/// escaped losslessly, and produce a Coredump the API accepts.
#[test]
fn non_utf8_comm_and_executable_path_are_captured() {
    if !can_run("non_utf8_comm_and_executable_path_are_captured") {
        return;
    }
    use coredump_node_handler::escape;
    let env = Env::new();
    env.install();
    let cg = systemd_pod_cgroup(CONTAINER_ID);

    let comm = OsStr::from_bytes(b"\xff\xfe");
    let named = crash_as(crasher(), "segv", 1, "unlimited", &[cg.procs()], Some(comm));
    let dir = env.dir.path().join(OsStr::from_bytes(b"d\xff\xfe"));
    fs::create_dir(&dir).expect("mkdir");
    let bin = dir.join("crasher");
    fs::copy(crasher(), &bin).expect("copy crasher");
    let moved = crash_as(&bin, "abort", 1, "unlimited", &[cg.procs()], None);

    // Before the fix nothing arrived at all: no need to wait long for that.
    let (entries, drops) =
        env.wait_outcomes_within(&[named.pid, moved.pid], Duration::from_secs(30));
    assert!(drops.is_empty(), "{drops:?}");
    let by_pid = |pid: u32| {
        entries
            .iter()
            .find(|e| e.crash.host_pid == pid as i32)
            .unwrap_or_else(|| panic!("no entry for pid {pid}: {entries:?}"))
    };
    let e = by_pid(named.pid);
    assert_eq!(e.crash.comm, "\\xff\\xfe");
    assert_eq!(e.crash.pod_uid.as_deref(), Some(POD_UID));
    let e2 = by_pid(moved.pid);
    let want = escape::escape(bin.as_os_str().as_bytes());
    assert!(want.contains("d\\xff\\xfe/crasher"), "{want}");
    assert_eq!(e2.crash.executable, want);
    assert_eq!(e2.crash.command_line[0], want);
    assert_eq!(
        escape::unescape(&e2.crash.executable).as_deref(),
        Some(bin.as_os_str().as_bytes()),
        "lossless"
    );
    for e in [e, e2] {
        let (n, sha) = decompress(&env.spool, &e.id, &env.dir.path().join("x.core"));
        assert_eq!((n, sha.as_str()), (e.raw_size, e.sha256.as_str()));
        let attr = coredump_node_handler::pods::Attribution {
            pod_name: "web-0".into(),
            namespace: "shop".into(),
            pod_uid: POD_UID.into(),
            container_name: Some("app".into()),
            container_id: Some(format!("containerd://{CONTAINER_ID}")),
            image: None,
            opted_out: false,
            spec_containers: vec!["app".into()],
            deleted: false,
        };
        let cd = coredump_node_handler::deliver::build_coredump(e, &attr, "node-1", "web-0-x");
        let errors = coredump_openapi::types::validate_coredump(&cd);
        assert!(errors.is_empty(), "{errors:?}");
    }
}

/// A host process in a cgroup whose path merely contains a kubelet-shaped
/// tail (a delegated user slice can create such names) is not a pod's:
/// it goes the way of host processes (`NotAContainer`), never into the
/// spool under that pod.
#[test]
fn kubelet_shaped_cgroup_outside_the_kubelet_root_is_not_a_pod() {
    if !can_run("kubelet_shaped_cgroup_outside_the_kubelet_root_is_not_a_pod") {
        return;
    }
    let env = Env::new();
    env.install();
    let root = cgroup2_root().expect("a cgroup v2 hierarchy");
    let uid_ = POD_UID.replace('-', "_");
    for rel in [
        format!("user.slice/user-1000.slice/kubepods/burstable/pod{POD_UID}/{CONTAINER_ID}"),
        format!(
            "user.slice/user-1000.slice/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{CONTAINER_ID}.scope"
        ),
    ] {
        let cg = TestCgroup::new(&root, &rel);
        let c = crash("segv", 1, "unlimited", &[cg.procs()], None);
        let (entries, drops) = env.wait_outcomes(&[c.pid]);
        assert!(entries.is_empty(), "filed under the pod: {entries:?}");
        let d = &drops[0];
        assert_eq!(d.reason, DropReason::NotAContainer, "{d:?}");
        assert_eq!(d.crash.pod_uid, None);
        assert_eq!(d.crash.container_id, None);
    }
}

/// PID reuse, with real processes: the kernel's pidfd (fd 3) names a crasher
/// that is gone, and `%P` now belongs to another process, which sits in a
/// pod's cgroup. The handler must not file that "crash" under the pod
/// (`ProcUnverified`). Without a pidfd, a live process that is not being
/// dumped (no `CoreDumping: 1`) is refused the same way. A pidfd of the very
/// process is the control: stored. Runs `capture` directly (as the kernel
/// would, stdin = the core, fd 3 = the pidfd), not through core_pattern.
#[test]
fn a_reused_pid_is_not_filed_under_the_pod_it_now_names() {
    if !can_run("a_reused_pid_is_not_filed_under_the_pod_it_now_names") {
        return;
    }
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    let cg = systemd_pod_cgroup(CONTAINER_ID);
    /// Ends the process when dropped, also on a failed assertion, so its
    /// cgroup can be removed.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    // Declared after `cg`, so dropped (and reaped) before it.
    let squatter = Killed(Command::new("sleep").arg("60").spawn().expect("sleep"));
    let squatter = &squatter.0;
    fs::write(cg.procs(), squatter.id().to_string()).expect("join the pod cgroup");
    let pidfd_of = |pid: u32| -> OwnedFd {
        // SAFETY: pidfd_open with no flags returns a new fd or -1.
        let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid as i32, 0) };
        assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
        // SAFETY: the fd was just returned to us and nothing else owns it.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    };
    let mut gone = Command::new("true").spawn().expect("true");
    let dead_pidfd = pidfd_of(gone.id());
    gone.wait().expect("reap");
    let live_pidfd = pidfd_of(squatter.id());

    let core = env.dir.path().join("fake.core");
    fs::write(&core, b"\x7fELF not really a core").expect("core");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let pid = squatter.id().to_string();
    let run = |time: u64, pidfd: Option<&OwnedFd>| {
        let mut cmd = Command::new(&env.handler);
        cmd.arg("capture")
            .arg(format!("-s{}", env.spool.root().display()))
            .arg("--")
            .args([
                &pid,
                &pid,
                "11",
                &time.to_string(),
                "18446744073709551615",
                "1",
                "0",
                "0",
            ]);
        if pidfd.is_some() {
            cmd.arg("3");
        }
        cmd.args(["!bin!sleep", "sleep"])
            .stdin(fs::File::open(&core).expect("open"));
        if let Some(fd) = pidfd {
            let raw = fd.as_raw_fd();
            // SAFETY: only dup2 (async-signal-safe) between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if nix::libc::dup2(raw, 3) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let st = cmd.status().expect("run capture");
        assert!(st.success(), "capture: {st:?}");
    };
    let outcome = |time: u64| {
        let id = format!("{time}-{pid}");
        let entry = env.spool.read_entry(&id).ok();
        let drop = env.spool.read_drop(&id).ok();
        (entry, drop)
    };

    run(now, Some(&dead_pidfd));
    let (entry, drop) = outcome(now);
    assert!(entry.is_none(), "filed under the pod: {entry:?}");
    let d = drop.expect("a drop record");
    assert_eq!(d.reason, DropReason::ProcUnverified, "{d:?}");

    run(now + 1, None);
    let (entry, drop) = outcome(now + 1);
    assert!(entry.is_none(), "filed under the pod: {entry:?}");
    assert_eq!(
        drop.expect("a drop record").reason,
        DropReason::ProcUnverified
    );

    run(now + 2, Some(&live_pidfd));
    let (entry, _) = outcome(now + 2);
    let e = entry.expect("the control is stored");
    assert!(e.crash.proc_verified);
    assert_eq!(e.crash.pod_uid.as_deref(), Some(POD_UID));
}
