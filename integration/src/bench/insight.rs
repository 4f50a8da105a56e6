//! Crash insight (#14): what the analysis costs. The test programs of
//! node-handler/tests/analysis (C with debug info and stripped, a stack overflow, an
//! assertion, C++ with 8 threads, Rust `panic=abort`, Go `GOTRACEBACK=crash`), built
//! here, crash in a kubelet-style pod cgroup through the real kernel with our handler as
//! core_pattern; each spooled core is analyzed as the agent does it (the `analyze` child
//! under the agent's default limits) and timed. Then one program crashes many times into
//! the same spool, and the node's build-id cache is measured: every crash of the same
//! image must leave one copy of each binary, not one per crash.
//!
//! A missing compiler leaves its program out (said in the notes). Holds the core_pattern
//! lock throughout and restores core_pattern and core_pipe_limit, also on error.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coredump_node_handler::analysis::sandbox::{self, SandboxOptions};
use coredump_node_handler::buildid;
use coredump_node_handler::config::CaptureConfig;
use coredump_node_handler::install::{self, CorePatternGuard, InstallOptions, PidfdMode, Sysctls};
use coredump_node_handler::spool::{Spool, SpoolEntry};
use coredump_openapi::types::AnalysisState;

use super::capture::{bench_spool, tree_size};
use super::report::{mib, ms, Section};
use super::{median, percentile, Scale};
use crate::agent::{random_pod_ids, PodCgroup};
use crate::bins::workspace_bin;
use crate::Error;

/// The analysis time goal per crash (p50).
const GOAL_P50: Duration = Duration::from_millis(200);
/// How long a crash may take to show up in the spool.
const SPOOL_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct InsightOptions {
    /// Crashes (and analyses) per test program.
    pub crashes_per_program: usize,
    /// Crashes of one program into one spool before the build-id cache is measured.
    pub cache_crashes: usize,
}

impl InsightOptions {
    pub fn for_scale(s: Scale) -> Self {
        match s {
            Scale::Full => Self {
                crashes_per_program: 20,
                cache_crashes: 1000,
            },
            Scale::Tiny => Self {
                crashes_per_program: 1,
                cache_crashes: 5,
            },
        }
    }
}

/// One test program: how it is built and run, and the function its crash is in.
struct Program {
    name: &'static str,
    tool: &'static str,
    build: &'static [&'static str],
    source: &'static str,
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    function: &'static str,
    /// Strip the built binary (no symbols at all).
    strip: bool,
}

const PROGRAMS: &[Program] = &[
    Program {
        name: "C, -O1 -g",
        tool: "gcc",
        build: &["gcc", "-O1", "-g", "-fno-omit-frame-pointer"],
        source: "c_crash.c",
        args: &["header"],
        env: &[],
        function: "parse_header",
        strip: false,
    },
    Program {
        name: "C, -O2 stripped",
        tool: "gcc",
        build: &["gcc", "-O2"],
        source: "c_crash.c",
        args: &["header"],
        env: &[],
        // No symbols: the frame is a module offset.
        function: "",
        strip: true,
    },
    Program {
        name: "C stack overflow",
        tool: "gcc",
        build: &["gcc", "-O0", "-g"],
        source: "c_crash.c",
        args: &["overflow"],
        env: &[],
        function: "recurse",
        strip: false,
    },
    Program {
        name: "C assert()",
        tool: "gcc",
        build: &["gcc", "-O0", "-g"],
        source: "c_crash.c",
        args: &["assert"],
        env: &[],
        function: "check_input",
        strip: false,
    },
    Program {
        name: "C++, 8 threads",
        tool: "g++",
        build: &["g++", "-O1", "-g", "-pthread"],
        source: "cxx_threads.cc",
        args: &[],
        env: &[],
        function: "crash_in_worker",
        strip: false,
    },
    Program {
        name: "Rust panic=abort",
        tool: "rustc",
        build: &["rustc", "-C", "panic=abort", "-g", "-C", "opt-level=1"],
        source: "rust_panic.rs",
        args: &[],
        env: &[],
        function: "parse_header",
        strip: false,
    },
    Program {
        name: "Go, GOTRACEBACK=crash",
        tool: "go",
        build: &["go", "build"],
        source: "go_panic.go",
        args: &[],
        env: &[("GOTRACEBACK", "crash")],
        function: "main.crashHere",
        strip: false,
    },
];

/// One program's analyses.
#[derive(Clone, Debug)]
pub struct ProgramResult {
    pub name: String,
    /// Analysis time per crash (the `analyze` child, start to result).
    pub samples: Vec<Duration>,
    /// Analyses that ended Complete (or Partial: frames without all symbols).
    pub analyzed: usize,
    /// Analyses whose crashing thread names the program's function.
    pub found: usize,
    pub raw_core_bytes: u64,
}

#[derive(Clone, Debug)]
pub struct CacheResult {
    pub crashes: usize,
    /// (files, bytes) of the build-id cache after the first crash and after all.
    pub after_first: (u64, u64),
    pub after_all: (u64, u64),
    /// Bytes of the binaries the program maps (the executable, libc, the loader, …):
    /// one copy of each.
    pub mapped_bytes: u64,
}

#[derive(Clone, Debug)]
pub struct InsightResults {
    pub programs: Vec<ProgramResult>,
    pub cache: Option<CacheResult>,
    pub skipped: Vec<String>,
}

/// Runs every available program `crashes_per_program` times, then the cache run.
pub fn run(opts: &InsightOptions, work: &Path) -> Result<InsightResults, Error> {
    let io = |what: String| move |e| Error::Io(what, e);
    std::fs::create_dir_all(work).map_err(io(format!("mkdir {}", work.display())))?;
    let work = work
        .canonicalize()
        .map_err(io(format!("canonicalize {}", work.display())))?;
    let exe = workspace_bin("coredump-node-handler")?;
    let mut skipped = Vec::new();
    let mut built = Vec::new();
    for p in PROGRAMS {
        if !have(p.tool) {
            skipped.push(format!("{}: {} is not installed", p.name, p.tool));
            continue;
        }
        built.push((p, build(p, &work)?));
    }

    // The kernel runs the handler from a short path (core_pattern keeps 127 characters).
    let short = tempfile::Builder::new()
        .prefix("cdi")
        .tempdir_in("/tmp")
        .map_err(io("tempdir in /tmp".into()))?;
    let handler = short.path().join("h");
    std::fs::copy(&exe, &handler).map_err(io(format!("copy {}", exe.display())))?;
    // One pod for all the crashes: the rate limit must not drop any.
    let cfg = CaptureConfig {
        rate_limit_count: u32::MAX,
        ..Default::default()
    };
    let spool_dir = short.path().join("s");
    let spool = bench_spool(&spool_dir, &cfg)?;
    let (pod_uid, cid) = random_pod_ids()?;
    let cg = PodCgroup::new(&pod_uid, &cid)?;
    let guard =
        CorePatternGuard::save().map_err(|e| Error::Setup(format!("saving core_pattern: {e}")))?;
    install::install(
        &Sysctls::default(),
        &InstallOptions {
            handler: handler.clone(),
            spool: spool_dir.clone(),
            pipe_limit: install::DEFAULT_PIPE_LIMIT,
            pidfd: PidfdMode::Auto,
        },
    )
    .map_err(|e| Error::Setup(format!("installing our handler: {e}")))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("tokio runtime".into()))?;
    let sandbox = SandboxOptions {
        exe,
        ..Default::default()
    };
    let cache = buildid::cache_dir(&spool_dir);
    let ctx = Ctx {
        spool,
        procs: cg.procs(),
    };

    let mut programs = Vec::new();
    for (p, bin) in &built {
        let mut r = ProgramResult {
            name: p.name.to_string(),
            samples: Vec::new(),
            analyzed: 0,
            found: 0,
            raw_core_bytes: 0,
        };
        for _ in 0..opts.crashes_per_program {
            let (id, entry, dir) = ctx.crash(bin, p)?;
            let (a, took) = rt.block_on(sandbox::run(&sandbox, &entry, &dir, &cache, None));
            r.samples.push(took);
            r.raw_core_bytes = entry.raw_size;
            if matches!(
                a.state,
                Some(AnalysisState::Complete | AnalysisState::Partial)
            ) {
                r.analyzed += 1;
            }
            let frames = a
                .crashing_thread
                .as_ref()
                .map(|t| t.frames.as_slice())
                .unwrap_or_default();
            // Stripped: found when there are frames at all (module + offset).
            let found = if p.function.is_empty() {
                !frames.is_empty()
            } else {
                frames
                    .iter()
                    .filter_map(|f| f.function.as_deref())
                    .any(|f| f.contains(p.function))
            };
            r.found += usize::from(found);
            ctx.delete(&id)?;
        }
        programs.push(r);
    }

    // The cache run: a fresh cache, then the first C program again and again.
    let _ = std::fs::remove_dir_all(&cache);
    let cache_result = match built.first() {
        Some((p, bin)) if opts.cache_crashes > 0 => {
            let mut after_first = (0, 0);
            let mut mapped_bytes = 0;
            for i in 0..opts.cache_crashes {
                let (id, _, dir) = ctx.crash(bin, p)?;
                if i == 0 {
                    after_first = tree_size(&cache);
                    mapped_bytes = mapped_size(&dir);
                }
                ctx.delete(&id)?;
            }
            Some(CacheResult {
                crashes: opts.cache_crashes,
                after_first,
                after_all: tree_size(&cache),
                mapped_bytes,
            })
        }
        _ => None,
    };
    drop(guard);
    drop(cg);
    Ok(InsightResults {
        programs,
        cache: cache_result,
        skipped,
    })
}

struct Ctx {
    spool: Spool,
    procs: PathBuf,
}

impl Ctx {
    fn delete(&self, id: &str) -> Result<(), Error> {
        self.spool
            .delete_entry(id)
            .map_err(|e| Error::Setup(format!("spool: {e}")))
    }

    /// Runs `bin` in the pod's cgroup (a shell moves itself in, then execs it), waits for
    /// it to die of its signal and for its spool entry.
    fn crash(&self, bin: &Path, p: &Program) -> Result<(String, SpoolEntry, PathBuf), Error> {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("ulimit -c unlimited && echo $$ > \"$0\" && exec \"$@\"")
            .arg(&self.procs)
            .arg(bin)
            .args(p.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in p.env {
            c.env(k, v);
        }
        let mut child = c
            .spawn()
            .map_err(|e| Error::Io(format!("run {}", p.name), e))?;
        let pid = child.id() as i32;
        let st = child
            .wait()
            .map_err(|e| Error::Io(format!("wait for {}", p.name), e))?;
        if st.code().is_some() {
            return Err(Error::Setup(format!(
                "{} should die of a signal: {st:?}",
                p.name
            )));
        }
        let err = |e: &dyn std::fmt::Display| Error::Setup(format!("spool: {e}"));
        let t = Instant::now();
        loop {
            for id in self.spool.list_entries().map_err(|e| err(&e))? {
                let e = self.spool.read_entry(&id).map_err(|e| err(&e))?;
                if e.crash.host_pid == pid {
                    let dir = self.spool.entry_dir(&id).map_err(|e| err(&e))?;
                    return Ok((id, e, dir));
                }
            }
            if let Some(d) = self
                .spool
                .list_drops()
                .unwrap_or_default()
                .iter()
                .filter_map(|id| self.spool.read_drop(id).ok())
                .find(|d| d.crash.host_pid == pid)
            {
                return Err(Error::Setup(format!(
                    "our handler dropped the core of {} ({:?}: {})",
                    p.name, d.reason, d.detail
                )));
            }
            if t.elapsed() > SPOOL_WAIT {
                return Err(Error::Setup(format!(
                    "no spool entry for {} (pid {pid}); capture log tail:\n{}",
                    p.name,
                    crate::process::log_tail(&self.spool.log_path(), 20)
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Bytes of the files the crashed process mapped executable (its modules.json).
fn mapped_size(dir: &Path) -> u64 {
    coredump_node_handler::analysis::read_modules(dir)
        .map(|pm| {
            let mut paths: Vec<&str> = pm.modules.iter().map(|m| m.path.as_str()).collect();
            paths.sort_unstable();
            paths.dedup();
            paths
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn have(tool: &str) -> bool {
    ["--version", "version"].iter().any(|a| {
        Command::new(tool)
            .arg(a)
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Builds `p` into `work/<name>` (and strips it if asked).
fn build(p: &Program, work: &Path) -> Result<PathBuf, Error> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../node-handler/tests/analysis")
        .join(p.source);
    let stem: String = p
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let out = work.join(stem);
    let mut c = Command::new(p.build[0]);
    c.args(&p.build[1..]).arg("-o").arg(&out).arg(&src);
    if p.tool == "go" {
        c.env("GOCACHE", work.join("gocache"))
            .env("GOPATH", work.join("gopath"))
            .env("GO111MODULE", "off")
            .env("CGO_ENABLED", "0");
    }
    let o = c
        .output()
        .map_err(|e| Error::Io(format!("run {}", p.build[0]), e))?;
    if !o.status.success() {
        return Err(Error::Setup(format!(
            "{:?} {}: {}",
            p.build,
            src.display(),
            String::from_utf8_lossy(&o.stderr)
        )));
    }
    if p.strip {
        let st = Command::new("strip")
            .arg(&out)
            .status()
            .map_err(|e| Error::Io("run strip".into(), e))?;
        if !st.success() {
            return Err(Error::Setup(format!("strip {}: {st}", out.display())));
        }
    }
    Ok(out)
}

impl InsightResults {
    pub fn section(&self) -> Section {
        let mut s = Section::new(
            "Crash insight",
            "Analysis time per crash: each test program crashes through the real kernel \
             with our handler as core_pattern, and its spooled core is analyzed as the agent \
             does it (the `analyze` child with its time and memory limits: read the notes, \
             unwind every thread with the build-id cache's unwind tables, symbolize, \
             fingerprint). Then one program crashes many times into one spool and the \
             node's build-id cache is measured.",
            &[
                "program",
                "raw core",
                "crashes",
                "analysis p50",
                "p99",
                "analyzed",
                "crashing function found",
            ],
        );
        for p in &self.programs {
            s.row(vec![
                p.name.clone(),
                mib(p.raw_core_bytes),
                p.samples.len().to_string(),
                ms(median(&p.samples)),
                ms(percentile(&p.samples, 99.0)),
                format!("{}/{}", p.analyzed, p.samples.len()),
                format!("{}/{}", p.found, p.samples.len()),
            ]);
        }
        let worst = self
            .programs
            .iter()
            .map(|p| (median(&p.samples), p.name.as_str()))
            .max();
        if let Some((p50, name)) = worst {
            s.note(format!(
                "Goal: analysis p50 ≤ {} for every program; the slowest is {name} at {}: {}.",
                ms(GOAL_P50),
                ms(p50),
                if p50 <= GOAL_P50 { "met" } else { "NOT met" }
            ));
        }
        if let Some(c) = &self.cache {
            s.note(format!(
                "Build-id cache after {} crashes of the same program: {} files, {} (after \
                 the first crash: {} files, {}; the binaries it maps are {} together): {} \
                 (goal: one copy, i.e. no growth after the first crash).",
                c.crashes,
                c.after_all.0,
                mib(c.after_all.1),
                c.after_first.0,
                mib(c.after_first.1),
                mib(c.mapped_bytes),
                if c.after_all == c.after_first && c.after_first.0 > 0 {
                    "met"
                } else {
                    "NOT met"
                }
            ));
        }
        s.note(
            "The cache holds each mapped file once, keyed by its GNU build-id (else a \
             content hash), whole up to a per-file cap and cut to a total size by least \
             recent use; see node-handler/src/buildid.rs.",
        );
        for why in &self.skipped {
            s.note(format!("Not run: {why}."));
        }
        s
    }
}
