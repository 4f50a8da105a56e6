//! Crash analysis (#14): why a process crashed, where, and which crashes are the same
//! bug, computed on the node from the spooled core, the binaries `capture` cached while
//! the kernel held the process (`buildid`), and the container's log tail (`logtail`).
//!
//! - [`elfcore`] reads the core in one streaming pass (headers, notes, stack windows);
//! - [`unwind`] walks each thread (CFI, frame pointers, scanning);
//! - [`symbolize`] names the frames (symbols, DWARF lines, demangling);
//! - [`cause`] and [`fingerprint`] are pure decisions over the result.
//!
//! Invariants: [`analyze`] never fails and never panics on hostile input: what it could
//! not read is reported as `state: Partial` (some of it) or `Failed` (nothing useful)
//! with `error`; the result always fits the API's bounds (`MAX_FRAMES`, `MAX_THREADS`,
//! `MAX_MODULES`, `MAX_ANALYSIS_BYTES`). The agent runs it in the `analyze` child process
//! (`sandbox`), under a time and memory limit, never in its own.

pub mod cause;
pub mod elfcore;
pub mod fingerprint;
pub mod gopclntab;
pub mod sandbox;
pub mod symbolize;
pub mod unwind;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use coredump_openapi::types::analysis::{
    MappedModule, StackFrame, ThreadSummary, ThreadTrace, MAX_ANALYSIS_BYTES, MAX_FRAMES,
    MAX_LOG_TAIL, MAX_MODULES, MAX_THREADS,
};
use coredump_openapi::types::{AnalysisState, CrashAnalysis, CrashSignal};
use serde::{Deserialize, Serialize};

use crate::escape::escape;
use elfcore::{CoreLimits, Memory};
use fingerprint::FpFrame;
use symbolize::Binary;
use unwind::{AddressSpace, Mapping, Module, RawFrame, UnwindLimits};

/// The file `capture` writes next to `metadata.json`: what it saw of the process while
/// the kernel held it.
pub const MODULES_FILE: &str = "modules.json";
/// Where the agent keeps an entry's analysis between attempts.
pub const ANALYSIS_FILE: &str = "analysis.json";
/// More passes over the core for memory the frame pointers lead to (another stack).
const MAX_EXTRA_PASSES: usize = 2;

/// One mapped file, as `/proc/<pid>/maps` showed it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleRecord {
    /// Path as the process saw it (escaped bytes, see `escape`).
    pub path: String,
    #[serde(default, rename = "buildID", skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// Start of the mapping at file offset 0.
    pub base: u64,
    /// (start, end, file offset) of each mapping of the file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mappings: Vec<(u64, u64, u64)>,
    /// The binary is in the build-id cache.
    #[serde(default)]
    pub cached: bool,
}

/// `modules.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessModules {
    /// The crashing thread (`%I`) as the crasher's PID namespace numbers it, which is
    /// how NT_PRSTATUS names threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crashing_tid: Option<i32>,
    #[serde(default)]
    pub modules: Vec<ModuleRecord>,
    /// Why the list is incomplete, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Microseconds the process was held longer for this (maps + opening the files).
    #[serde(default)]
    pub held_micros: u64,
    /// Microseconds spent on build-ids and copies after the process was let go.
    #[serde(default)]
    pub copy_micros: u64,
}

/// What [`analyze`] is given.
#[derive(Debug, Clone, Default)]
pub struct Input {
    /// `core.zst`.
    pub core: PathBuf,
    /// The build-id cache directory.
    pub cache: PathBuf,
    pub modules: Option<ProcessModules>,
    /// `%I`, the host TID, when `modules` lacks the namespace's.
    pub host_tid: i32,
    /// `%s`.
    pub signal: i32,
    /// The executable (escaped path).
    pub executable: String,
    pub log_tail: Option<String>,
}

fn open_core(p: &Path) -> Result<impl Read, String> {
    let f = std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
    zstd::stream::read::Decoder::new(f).map_err(|e| format!("zstd: {e}"))
}

/// The whole analysis: never fails, see the module docs.
pub fn analyze(input: &Input) -> CrashAnalysis {
    let mut problems: Vec<String> = Vec::new();
    let mut a = CrashAnalysis {
        log_tail: input
            .log_tail
            .as_deref()
            .map(|t| tail_bound(t, MAX_LOG_TAIL)),
        signal: Some(signal(input.signal, None)),
        ..Default::default()
    };
    let limits = CoreLimits::default();
    let core = open_core(&input.core)
        .and_then(|r| elfcore::read_core(r, &limits).map_err(|e| e.to_string()));
    let mut core = match core {
        Ok(c) => c,
        Err(e) => {
            a.state = Some(AnalysisState::Failed);
            a.error = Some(format!("core unreadable: {e}"));
            let (c, m) = cause::probable_cause(&cause::Evidence {
                signo: input.signal,
                log_tail: input.log_tail.as_deref(),
                ..Default::default()
            });
            a.cause = Some(c);
            a.cause_message = m;
            return a;
        }
    };
    problems.append(&mut core.warnings);
    if let Some(si) = core.siginfo {
        a.signal = Some(signal(si.signo, Some((si.code, si.addr))));
    }
    let space = address_space(input, &core, &mut problems);
    a.modules = space
        .modules
        .iter()
        .take(MAX_MODULES)
        .map(|m| MappedModule {
            path: m.path.clone(),
            build_id: m.build_id.clone(),
            base: Some(format!("{:#x}", m.base)),
        })
        .collect();
    // The crashing thread: by %I, never by position, unless nothing else names it.
    let want = input.modules.as_ref().and_then(|m| m.crashing_tid);
    let crashing = want
        .and_then(|t| core.threads.iter().position(|th| th.tid == t))
        .or_else(|| core.threads.iter().position(|th| th.tid == input.host_tid));
    let crashing = match crashing {
        Some(i) => Some(i),
        None if !core.threads.is_empty() => {
            problems.push(format!(
                "no thread {} in the core; the kernel's first (the dumping thread) taken",
                want.unwrap_or(input.host_tid)
            ));
            Some(0)
        }
        None => None,
    };
    let ulimits = UnwindLimits {
        max_frames: MAX_FRAMES,
        ..Default::default()
    };
    let mut crash_frames: Vec<RawFrame> = Vec::new();
    let mut sp = None;
    if let Some(ci) = crashing {
        let th = core.threads[ci].clone();
        sp = Some(th.sp());
        let mut u = unwind::unwind(&space, &core.memory, unwind::dwarf_regs(&th.regs), &ulimits);
        for _ in 0..MAX_EXTRA_PASSES {
            let wanted: Vec<(u64, u64)> = u
                .wants
                .iter()
                .filter(|a| !core.memory.contains(**a))
                .map(|a| {
                    (
                        a.saturating_sub(limits.stack_below),
                        a.saturating_add(limits.stack_above),
                    )
                })
                .collect();
            if wanted.is_empty() || u.frames.len() >= MAX_FRAMES {
                break;
            }
            let budget = limits
                .max_memory_bytes
                .saturating_sub(core.memory.bytes() as u64);
            let more = match open_core(&input.core) {
                Ok(r) => elfcore::read_more(r, &core.segments, &wanted, budget, &mut problems),
                Err(_) => Memory::default(),
            };
            if more.bytes() == 0 {
                break;
            }
            core.memory.merge(more);
            u = unwind::unwind(&space, &core.memory, unwind::dwarf_regs(&th.regs), &ulimits);
        }
        crash_frames = u.frames;
        let mut frames: Vec<StackFrame> = Vec::with_capacity(crash_frames.len());
        for raw in crash_frames.iter_mut() {
            // Go's injected call to runtime.sigpanic and a signal handler's return
            // both "return" to the interrupted instruction itself, which may be its
            // function's first: look that address up, not the one before it.
            if let Some(prev) = frames
                .last()
                .and_then(|f: &StackFrame| f.function.as_deref())
            {
                if interrupts(&fingerprint::normalize(prev)) {
                    raw.lookup = raw.pc;
                }
            }
            frames.push(symbolize_frame(&space, raw));
        }
        // Stopping right after a thread's base is the walk's normal end.
        let at_base = frames
            .last()
            .and_then(|f| f.function.as_deref())
            .is_some_and(|f| fingerprint::is_thread_base(&fingerprint::normalize(f)));
        if let Some(s) = u.stopped.as_ref().filter(|_| !at_base) {
            problems.push(format!("unwinding stopped: {s}"));
        }
        a.crashing_thread = Some(ThreadTrace {
            tid: i64::from(th.tid),
            name: core
                .fname
                .as_deref()
                .map(escape)
                .filter(|_| ci == 0 || core.threads.len() == 1),
            frames,
        });
    } else {
        problems.push("no threads in the core".into());
    }
    a.threads = core
        .threads
        .iter()
        .take(MAX_THREADS)
        .map(|t| {
            let f = symbolize_frame(
                &space,
                &RawFrame {
                    pc: t.pc(),
                    sp: t.sp(),
                    trust: unwind::Trust::Context,
                    lookup: t.pc(),
                },
            );
            ThreadSummary {
                tid: i64::from(t.tid),
                name: None,
                top_frame: Some(frame_line(&f)),
            }
        })
        .collect();
    if core.threads.len() > MAX_THREADS {
        problems.push(format!(
            "{} threads, {MAX_THREADS} listed",
            core.threads.len()
        ));
    }
    let frames = a
        .crashing_thread
        .as_ref()
        .map(|t| t.frames.clone())
        .unwrap_or_default();
    let names: Vec<String> = frames
        .iter()
        .filter_map(|f| f.function.as_deref())
        .map(fingerprint::normalize)
        .collect();
    let sig = a.signal.clone().unwrap_or_default();
    let fault = sig
        .fault_address
        .as_deref()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok());
    let (c, m) = cause::probable_cause(&cause::Evidence {
        signo: sig.number,
        code: sig.code,
        fault_address: fault,
        sp,
        frames: &names,
        log_tail: input.log_tail.as_deref(),
    });
    a.cause = Some(c);
    a.cause_message = m;
    if !frames.is_empty() {
        let fp: Vec<FpFrame> = frames
            .iter()
            .map(|f| FpFrame {
                function: f.function.clone(),
                module: f.module.clone(),
                offset: f
                    .offset
                    .as_deref()
                    .and_then(|o| u64::from_str_radix(o.trim_start_matches("0x"), 16).ok()),
            })
            .collect();
        let exe = input.executable.as_str();
        let (fp, signature) = fingerprint::fingerprint(sig.number, exe, &fp);
        a.fingerprint = Some(fp);
        a.signature = signature;
    }
    let missing: Vec<&str> = space
        .modules
        .iter()
        .filter(|m| {
            m.binary.is_none()
                && crash_frames.iter().any(|f| {
                    space
                        .lookup(f.lookup)
                        .is_some_and(|(_, mm)| std::ptr::eq(mm, *m))
                })
        })
        .map(|m| m.path.as_str())
        .collect();
    if !missing.is_empty() {
        problems.push(format!("binaries not cached: {}", missing.join(", ")));
    }
    a.state = Some(
        if a.crashing_thread
            .as_ref()
            .is_none_or(|t| t.frames.is_empty())
        {
            AnalysisState::Failed
        } else if problems.is_empty() {
            AnalysisState::Complete
        } else {
            AnalysisState::Partial
        },
    );
    if !problems.is_empty() {
        let mut e = problems.join("; ");
        symbolize::cut(&mut e, 2048);
        a.error = Some(e);
    }
    fit(&mut a);
    a
}

/// Modules and mappings: from `modules.json` where capture wrote it, else the core's
/// NT_FILE (then nothing is cached, so nothing symbolizes).
fn address_space(input: &Input, core: &elfcore::Core, problems: &mut Vec<String>) -> AddressSpace {
    let mut space = AddressSpace::default();
    let mut binaries: HashMap<String, Option<usize>> = HashMap::new();
    let records: Vec<ModuleRecord> = match &input.modules {
        Some(pm) if !pm.modules.is_empty() => pm.modules.clone(),
        _ => {
            let mut by_path: Vec<ModuleRecord> = Vec::new();
            for f in &core.files {
                let path = escape(&f.path);
                let i = match by_path.iter().position(|m| m.path == path) {
                    Some(i) => i,
                    None => {
                        by_path.push(ModuleRecord {
                            path,
                            base: u64::MAX,
                            ..Default::default()
                        });
                        by_path.len() - 1
                    }
                };
                let m = &mut by_path[i];
                if f.offset == 0 {
                    m.base = m.base.min(f.start);
                }
                m.mappings.push((f.start, f.end, f.offset));
            }
            for m in &mut by_path {
                if m.base == u64::MAX {
                    m.base = m
                        .mappings
                        .iter()
                        .map(|x| x.0.saturating_sub(x.2))
                        .min()
                        .unwrap_or(0);
                }
            }
            by_path
        }
    };
    for r in records.into_iter().take(4096) {
        let binary = match &r.build_id {
            Some(id) if crate::buildid::is_build_id(id) => {
                let path = input.cache.join(id);
                if let Some(Some(_)) = binaries.get(id) {
                    None
                } else {
                    match Binary::load(&path) {
                        Ok(b) => Some(b),
                        Err(e) => {
                            if path.exists() {
                                problems.push(format!("{}: {e}", r.path));
                            }
                            None
                        }
                    }
                }
            }
            _ => None,
        };
        let idx = space.modules.len();
        if let Some(id) = &r.build_id {
            binaries.insert(id.clone(), binary.as_ref().map(|_| idx));
        }
        for &(start, end, offset) in r.mappings.iter().take(4096) {
            if end > start {
                space.mappings.push(Mapping {
                    start,
                    end,
                    offset,
                    module: idx,
                });
            }
        }
        space.modules.push(Module {
            path: r.path,
            build_id: r.build_id,
            base: r.base,
            binary,
        });
    }
    space.mappings.sort_by_key(|m| m.start);
    space
}

fn symbolize_frame(space: &AddressSpace, f: &RawFrame) -> StackFrame {
    let mut out = StackFrame {
        trust: Some(f.trust.as_str().into()),
        ..Default::default()
    };
    let Some((map, m)) = space.lookup(f.lookup) else {
        out.offset = Some(format!("{:#x}", f.pc));
        out.in_app = Some(false);
        return out;
    };
    out.module = Some(m.path.clone());
    out.build_id = m.build_id.clone();
    out.offset = Some(format!(
        "{:#x}",
        f.pc.wrapping_sub(map.start).wrapping_add(map.offset)
    ));
    if let Some(b) = &m.binary {
        let svma = f.lookup.wrapping_sub(m.bias());
        out.function = b
            .function(svma)
            .map(|(n, _)| n)
            .or_else(|| b.go_function(svma))
            .or_else(|| b.dwarf_function(svma));
        if let Some((file, line)) = b.location(svma) {
            out.file = Some(file);
            out.line = line.map(i64::from);
        }
    }
    out.in_app = Some(fingerprint::in_app(
        out.module.as_deref(),
        out.function.as_deref(),
    ));
    out
}

/// Frames whose caller's "return address" is the interrupted instruction.
fn interrupts(name: &str) -> bool {
    name == "runtime.sigpanic"
        || name.starts_with("runtime.sigtramp")
        || name.starts_with("runtime.sigreturn")
        || name == "__restore_rt"
}

/// `function (module+0xoff)`.
pub fn frame_line(f: &StackFrame) -> String {
    let module = f
        .module
        .as_deref()
        .map(|m| m.rsplit('/').next().unwrap_or(m))
        .unwrap_or("?");
    let off = f.offset.as_deref().unwrap_or("?");
    match &f.function {
        Some(func) => format!("{func} ({module}+{off})"),
        None => format!("{module}+{off}"),
    }
}

fn code_name(signo: i32, code: i32) -> Option<&'static str> {
    Some(match (signo, code) {
        (_, 0) => "SI_USER",
        (_, 0x80) => "SI_KERNEL",
        (_, -1) => "SI_QUEUE",
        (_, -2) => "SI_TIMER",
        (_, -6) => "SI_TKILL",
        (11, 1) => "SEGV_MAPERR",
        (11, 2) => "SEGV_ACCERR",
        (11, 3) => "SEGV_BNDERR",
        (11, 4) => "SEGV_PKUERR",
        (7, 1) => "BUS_ADRALN",
        (7, 2) => "BUS_ADRERR",
        (7, 3) => "BUS_OBJERR",
        (4, 1) => "ILL_ILLOPC",
        (4, 2) => "ILL_ILLOPN",
        (4, 3) => "ILL_ILLADR",
        (4, 4) => "ILL_ILLTRP",
        (4, 5) => "ILL_PRVOPC",
        (4, 8) => "ILL_BADSTK",
        (8, 1) => "FPE_INTDIV",
        (8, 2) => "FPE_INTOVF",
        (8, 3) => "FPE_FLTDIV",
        (8, 7) => "FPE_FLTINV",
        (5, 1) => "TRAP_BRKPT",
        (5, 2) => "TRAP_TRACE",
        _ => return None,
    })
}

fn signal(signo: i32, info: Option<(i32, u64)>) -> CrashSignal {
    let mut s = CrashSignal {
        number: signo,
        name: crate::spool::signal_name(signo),
        ..Default::default()
    };
    if let Some((code, addr)) = info {
        s.code = Some(code);
        s.code_name = code_name(signo, code).map(str::to_string);
        if matches!(signo, 4 | 5 | 7 | 8 | 11) && code > 0 {
            s.fault_address = Some(format!("{addr:#x}"));
        }
    }
    s
}

/// The last `max` bytes of `s`, cut on a character boundary.
pub fn tail_bound(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_string()
}

/// Shrinks an analysis until its JSON fits `MAX_ANALYSIS_BYTES`: other threads first,
/// then modules, then the crashing thread's outer frames, then the log tail.
pub fn fit(a: &mut CrashAnalysis) {
    let size = |a: &CrashAnalysis| serde_json::to_vec(a).map_or(usize::MAX, |v| v.len());
    let mut guard = 0;
    while size(a) > MAX_ANALYSIS_BYTES && guard < 10_000 {
        guard += 1;
        if a.threads.len() > 1 {
            a.threads.truncate(a.threads.len() / 2);
        } else if a.modules.len() > 8 {
            a.modules.truncate(a.modules.len() / 2);
        } else if a
            .crashing_thread
            .as_ref()
            .is_some_and(|t| t.frames.len() > 8)
        {
            if let Some(t) = a.crashing_thread.as_mut() {
                let n = t.frames.len() / 2;
                t.frames.truncate(n.max(8));
            }
        } else if a.log_tail.is_some() {
            a.log_tail = None;
        } else {
            a.threads.clear();
            a.modules.clear();
            if let Some(t) = a.crashing_thread.as_mut() {
                for f in &mut t.frames {
                    f.file = None;
                    if let Some(func) = f.function.as_mut() {
                        symbolize::cut(func, 128);
                    }
                    if let Some(m) = f.module.as_mut() {
                        symbolize::cut(m, 128);
                    }
                }
            }
            if let Some(e) = a.error.as_mut() {
                symbolize::cut(e, 256);
            }
            if size(a) > MAX_ANALYSIS_BYTES {
                a.crashing_thread = None;
            }
            break;
        }
    }
}

/// Reads `modules.json` of an entry directory, if capture wrote one.
pub fn read_modules(entry_dir: &Path) -> Option<ProcessModules> {
    let b = crate::spool::read_bounded(&entry_dir.join(MODULES_FILE), 4 << 20).ok()?;
    serde_json::from_slice(&b).ok()
}
