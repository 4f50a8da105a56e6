//! Hostile input for the analysis (#14): cores whose notes lie, a stack that loops, a
//! binary with corrupt CFI, and a child that runs out of time or memory. Each analysis
//! must end within its limits and say Failed or Partial and why; it never stops the core
//! from being delivered (the agent attaches whatever comes back). No root needed.

// A test crate: a panic is the failure report, and libc calls set up the crashes.
#![allow(clippy::unwrap_used, clippy::expect_used, unsafe_code)]

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use coredump_node_handler::analysis::{sandbox, ModuleRecord, ProcessModules, MODULES_FILE};
use coredump_node_handler::spool::{CrashInfo, HandlerStats, SpoolEntry, CORE_FILE, METADATA_FILE};
use coredump_openapi::types::{AnalysisState, CrashAnalysis};

const STACK: u64 = 0x7000_0000;
const CODE: u64 = 0x40_0000;

fn note(out: &mut Vec<u8>, kind: u32, desc: &[u8], descsz: u32) {
    out.extend_from_slice(&5u32.to_le_bytes());
    out.extend_from_slice(&descsz.to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(b"CORE\0\0\0\0");
    out.extend_from_slice(desc);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn prstatus(tid: i32, pc: u64, sp: u64, fp: u64) -> Vec<u8> {
    let mut d = vec![0u8; 336];
    d[32..36].copy_from_slice(&tid.to_le_bytes());
    for (i, v) in [(16usize, pc), (19, sp), (4, fp)] {
        d[112 + i * 8..120 + i * 8].copy_from_slice(&v.to_le_bytes());
    }
    d
}

/// A core: header, a PT_NOTE with `notes`, one PT_LOAD of `stack` at STACK.
fn core(notes: &[u8], stack: &[u8], phnum: u16) -> Vec<u8> {
    let notes_off = 64 + 2 * 56u64;
    let load_off = (notes_off + notes.len() as u64 + 4095) & !4095;
    let mut out = vec![0u8; 64];
    out[..6].copy_from_slice(b"\x7fELF\x02\x01");
    out[16..18].copy_from_slice(&4u16.to_le_bytes());
    out[18..20].copy_from_slice(&62u16.to_le_bytes());
    out[32..40].copy_from_slice(&64u64.to_le_bytes());
    out[54..56].copy_from_slice(&56u16.to_le_bytes());
    out[56..58].copy_from_slice(&phnum.to_le_bytes());
    for (kind, off, vaddr, size) in [
        (4u32, notes_off, 0, notes.len() as u64),
        (1, load_off, STACK, stack.len() as u64),
    ] {
        let mut p = vec![0u8; 56];
        p[0..4].copy_from_slice(&kind.to_le_bytes());
        p[8..16].copy_from_slice(&off.to_le_bytes());
        p[16..24].copy_from_slice(&vaddr.to_le_bytes());
        p[32..40].copy_from_slice(&size.to_le_bytes());
        p[40..48].copy_from_slice(&size.to_le_bytes());
        out.extend(p);
    }
    out.extend_from_slice(notes);
    out.resize(load_off as usize, 0);
    out.extend_from_slice(stack);
    out
}

struct Entry {
    _dir: tempfile::TempDir,
    path: PathBuf,
    cache: PathBuf,
    entry: SpoolEntry,
}

fn entry(raw: &[u8], modules: Option<ProcessModules>) -> Entry {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("e");
    let cache = dir.path().join("buildid");
    fs::create_dir_all(&path).expect("mkdir");
    fs::create_dir_all(&cache).expect("mkdir");
    let mut enc = zstd::stream::write::Encoder::new(
        fs::File::create(path.join(CORE_FILE)).expect("create"),
        1,
    )
    .expect("zstd");
    enc.write_all(raw).expect("write");
    enc.finish().expect("finish");
    let entry = SpoolEntry {
        format_version: 1,
        id: "1-2".into(),
        crash: CrashInfo {
            host_pid: 2,
            host_tid: 2,
            signal: 11,
            executable: "/app/server".into(),
            ..Default::default()
        },
        raw_size: raw.len() as u64,
        stored_size: 0,
        sha256: "0".repeat(64),
        truncated: false,
        truncated_by: None,
        compression: "zstd".into(),
        handler: HandlerStats::default(),
    };
    fs::write(
        path.join(METADATA_FILE),
        serde_json::to_vec(&entry).expect("json"),
    )
    .expect("write");
    if let Some(m) = modules {
        fs::write(
            path.join(MODULES_FILE),
            serde_json::to_vec(&m).expect("json"),
        )
        .expect("write");
    }
    Entry {
        _dir: dir,
        path,
        cache,
        entry,
    }
}

fn run(e: &Entry, timeout: Duration, memory: u64) -> (CrashAnalysis, Duration) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let opts = sandbox::SandboxOptions {
        exe: PathBuf::from(env!("CARGO_BIN_EXE_coredump-node-handler")),
        timeout,
        memory_bytes: memory,
    };
    rt.block_on(sandbox::run(&opts, &e.entry, &e.path, &e.cache, None))
}

fn valid(a: &CrashAnalysis) {
    let mut errors = Vec::new();
    coredump_openapi::types::analysis::validate_analysis(a, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    assert!(a.error.is_some(), "{a:?}");
    assert_eq!(a.signal.as_ref().map(|s| s.number), Some(11));
}

const LIMIT: Duration = Duration::from_secs(10);
const MEM: u64 = 1 << 30;

#[test]
fn lying_notes_end_partial_or_failed_with_a_reason() {
    // A note claiming 4 GiB, NT_FILE claiming 2^40 files, more phdrs than there are.
    let mut n = Vec::new();
    note(&mut n, 1, &prstatus(2, CODE + 0x10, STACK + 0x800, 0), 336);
    let mut f = vec![0u8; 32];
    f[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    note(&mut n, 0x4649_4c45, &f, 32);
    note(&mut n, 0x5349_4749, &[0u8; 16], u32::MAX);
    let (a, took) = run(&entry(&core(&n, &[0u8; 8192], 2), None), LIMIT, MEM);
    valid(&a);
    assert!(
        matches!(
            a.state,
            Some(AnalysisState::Partial | AnalysisState::Failed)
        ),
        "{a:?}"
    );
    assert!(
        a.error.as_deref().unwrap_or("").contains("NT_FILE"),
        "{a:?}"
    );
    assert!(took < LIMIT);
    // phnum says 40000 program headers; the file ends long before.
    let (a, _) = run(&entry(&core(&n, &[0u8; 64], 40_000), None), LIMIT, MEM);
    valid(&a);
    assert_eq!(a.state, Some(AnalysisState::Failed), "{a:?}");
    // Not a core at all.
    let (a, _) = run(
        &entry(&b"garbage, not an ELF file ".repeat(8), None),
        LIMIT,
        MEM,
    );
    valid(&a);
    assert_eq!(a.state, Some(AnalysisState::Failed));
    assert!(
        a.error.as_deref().unwrap_or("").contains("not an ELF core"),
        "{a:?}"
    );
}

#[test]
fn a_stack_that_loops_ends_with_the_reason() {
    // rbp points at itself, [rbp+8] is a code address: a frame-pointer loop.
    let fp = STACK + 0x1000;
    let mut stack = vec![0u8; 8192];
    stack[0x1000..0x1008].copy_from_slice(&fp.to_le_bytes());
    stack[0x1008..0x1010].copy_from_slice(&(CODE + 0x20).to_le_bytes());
    let mut n = Vec::new();
    note(&mut n, 1, &prstatus(2, CODE + 0x10, STACK + 0x800, fp), 336);
    let modules = ProcessModules {
        crashing_tid: Some(2),
        modules: vec![ModuleRecord {
            path: "/app/server".into(),
            base: CODE,
            mappings: vec![(CODE, CODE + 0x1000, 0)],
            ..Default::default()
        }],
        ..Default::default()
    };
    let (a, _) = run(&entry(&core(&n, &stack, 2), Some(modules)), LIMIT, MEM);
    valid(&a);
    assert_eq!(a.state, Some(AnalysisState::Partial), "{a:?}");
    assert!(a.error.as_deref().unwrap_or("").contains("loops"), "{a:?}");
    assert!(a
        .crashing_thread
        .as_ref()
        .is_some_and(|t| t.frames.len() <= 64));
    assert!(a.fingerprint.is_some());
}

#[test]
fn a_binary_with_corrupt_cfi_falls_back_and_ends() {
    // This test binary as the module, its .eh_frame overwritten with garbage.
    let exe = std::env::current_exe().expect("exe");
    let mut bin = fs::read(&exe).expect("read");
    let text = String::from_utf8_lossy(
        &std::process::Command::new("readelf")
            .args(["-SW"])
            .arg(&exe)
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default(),
    )
    .into_owned();
    let eh = text
        .lines()
        .find(|l| l.contains(" .eh_frame "))
        .and_then(|l| {
            let p: Vec<&str> = l.split_whitespace().collect();
            let i = p.iter().position(|x| *x == ".eh_frame")?;
            Some((
                usize::from_str_radix(p.get(i + 3)?, 16).ok()?,
                usize::from_str_radix(p.get(i + 4)?, 16).ok()?,
            ))
        });
    let Some((off, size)) = eh else {
        eprintln!("skipping: no readelf or no .eh_frame");
        return;
    };
    for (i, b) in bin[off..off + size].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37) ^ 0xa5;
    }
    let mut n = Vec::new();
    let fp = STACK + 0x1000;
    let mut stack = vec![0u8; 8192];
    for (i, w) in stack.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&(CODE + 0x1000 + i as u64 * 13).to_le_bytes());
    }
    note(
        &mut n,
        1,
        &prstatus(2, CODE + 0x1234, STACK + 0x800, fp),
        336,
    );
    let modules = ProcessModules {
        crashing_tid: Some(2),
        modules: vec![ModuleRecord {
            path: "/app/server".into(),
            build_id: Some("deadbeefdeadbeef".into()),
            base: CODE,
            mappings: vec![(CODE, CODE + bin.len() as u64, 0)],
            cached: true,
        }],
        ..Default::default()
    };
    let e = entry(&core(&n, &stack, 2), Some(modules));
    fs::write(e.cache.join("deadbeefdeadbeef"), &bin).expect("write");
    let (a, took) = run(&e, LIMIT, MEM);
    valid(&a);
    assert!(took < LIMIT, "{took:?}");
    assert!(
        matches!(
            a.state,
            Some(AnalysisState::Partial | AnalysisState::Failed)
        ),
        "{a:?}"
    );
}

#[test]
fn time_and_memory_limits_end_the_child() {
    let mut n = Vec::new();
    note(&mut n, 1, &prstatus(2, CODE, STACK + 0x800, 0), 336);
    let e = entry(&core(&n, &[0u8; 8192], 2), None);
    // A core that never ends: a FIFO nobody writes (the child blocks opening it).
    let slow = entry(&core(&n, &[0u8; 8192], 2), None);
    fs::remove_file(slow.path.join(CORE_FILE)).expect("rm");
    nix::unistd::mkfifo(&slow.path.join(CORE_FILE), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let (a, took) = run(&slow, Duration::from_millis(300), MEM);
    assert_eq!(a.state, Some(AnalysisState::Failed));
    assert!(
        a.error.as_deref().unwrap_or("").contains("timed out"),
        "{a:?}"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    let (a, _) = run(&e, LIMIT, 8 << 20);
    assert_eq!(a.state, Some(AnalysisState::Failed), "{a:?}");
    eprintln!("8 MiB limit: {:?}", a.error);
    valid(&a);
}
