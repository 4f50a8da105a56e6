//! The crash fingerprint (`v1:` + sha256) and signature: which crashes are the same bug.
//!
//! Pure functions over the crashing thread's frames. Invariants: the fingerprint depends
//! only on the signal's class, the executable's base name and the normalized names of at
//! most [`TOP_FRAMES`] frames (or `module+offset` for unsymbolized ones); never on
//! addresses, build-ids, pod names or image tags, so a group spans builds, versions and
//! pods. The scheme is versioned: any change to what is hashed needs a new prefix.

use sha2::{Digest, Sha256};

/// Frames hashed.
pub const TOP_FRAMES: usize = 5;
/// The scheme written (the API's `FINGERPRINT_PREFIX`).
pub const VERSION: &str = "v1";

/// One frame as the fingerprint sees it (innermost first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FpFrame {
    /// Function name, demangled or not (normalized here).
    pub function: Option<String>,
    /// Path of the module.
    pub module: Option<String>,
    /// Offset of the instruction in the module's file.
    pub offset: Option<u64>,
}

/// Paths of the distribution's and runtimes' libraries: not the application's code.
pub fn is_system_path(path: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "/lib/",
        "/lib64/",
        "/lib32/",
        "/libx32/",
        "/usr/lib/",
        "/usr/lib64/",
        "/usr/lib32/",
        "/usr/libexec/",
        "/usr/local/lib/",
        "/usr/share/",
        "/nix/store/",
        "/opt/java/",
    ];
    path.starts_with('[') || PREFIXES.iter().any(|p| path.starts_with(p)) || {
        let base = basename(path);
        base.starts_with("ld-linux") || base.starts_with("libc.so") || base.starts_with("libstdc++")
    }
}

/// Functions of language runtimes and standard libraries, wherever they are linked.
pub fn is_runtime_name(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "std::",
        "core::",
        "alloc::",
        "<std::",
        "<core::",
        "<alloc::",
        "panic_abort::",
        "panic_unwind::",
        "__rust",
        "__rdl_",
        "__rg_",
        "runtime.",
        "runtime/",
        "internal/",
        "syscall.",
        "sync.",
        "os.",
        "reflect.",
        "__libc_",
        "__GI_",
        "_dl_",
        "_Unwind",
        "__cxa",
        "__gxx",
        "__cxxabiv1::",
        "__gnu_cxx::",
        "__pthread",
        "__sanitizer",
        "__asan",
        "__ubsan",
        "__tsan",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Whether a frame is the application's: not in a system library, not a runtime's.
pub fn in_app(module: Option<&str>, function: Option<&str>) -> bool {
    if module.is_some_and(is_system_path) {
        return false;
    }
    !function.map(normalize).is_some_and(|f| is_runtime_name(&f))
}

/// The frames of crash handling: they and everything above them are dropped.
pub fn is_machinery(n: &str) -> bool {
    const EXACT: &[&str] = &[
        "raise",
        "abort",
        "gsignal",
        "pthread_kill",
        "__pthread_kill",
        "__pthread_kill_implementation",
        "__pthread_kill_internal",
        "__assert_fail",
        "__assert_fail_base",
        "__assert_perror_fail",
        "__assert",
        "__stack_chk_fail",
        "__stack_chk_fail_local",
        "__fortify_fail",
        "__chk_fail",
        "__libc_message",
        "__libc_message_impl",
        "__libc_fatal",
        "__malloc_assert",
        "malloc_printerr",
        "__cxa_throw",
        "__cxa_rethrow",
        "__cxa_call_terminate",
        "__cxa_call_unexpected",
        "std::terminate",
        "std::__terminate",
        "__cxxabiv1::__terminate",
        "__gnu_cxx::__verbose_terminate_handler",
        "_Unwind_RaiseException",
        "_Unwind_Resume",
        "rust_panic",
        "rust_begin_unwind",
        "__rustc::rust_begin_unwind",
        "__rust_start_panic",
        "__rust_abort",
        "__rust_end_short_backtrace",
        "std::process::abort",
        "core::result::unwrap_failed",
        "core::option::unwrap_failed",
        "core::option::expect_failed",
        "std::sys::backtrace::__rust_end_short_backtrace",
    ];
    const PREFIX: &[&str] = &[
        "core::panicking::",
        "std::panicking::begin_panic",
        "std::panicking::rust_panic",
        "std::panicking::default_hook",
        "std::panicking::panic_count",
        "std::panicking::panic_with_hook",
        "std::sys::pal::unix::abort_internal",
        "std::sys::abort_internal",
        "panic_abort::",
        "__rust_panic",
        "core::slice::index::slice_",
        "core::str::slice_error_fail",
        "core::cell::panic_already_",
    ];
    /// Go: the name itself or one of its closures (`.func1`).
    const GO: &[&str] = &[
        "runtime.sigpanic",
        "runtime.gopanic",
        "runtime.throw",
        "runtime.fatalthrow",
        "runtime.fatalpanic",
        "runtime.panicmem",
        "runtime.panicmemAddr",
        "runtime.panicdivide",
        "runtime.panicshift",
        "runtime.panicwrap",
        "runtime.panicnildottype",
        "runtime.raise",
        "runtime.raiseproc",
        "runtime.dieFromSignal",
        "runtime.crash",
        "runtime.sighandler",
        "runtime.sigtrampgo",
        "runtime.sigtramp",
        "runtime.sigfwdgo",
        "runtime.systemstack",
        "runtime.abort",
        "runtime.startpanic_m",
        "runtime.dopanic_m",
        "runtime.mcall",
        "runtime.morestack",
        "runtime.newstack",
        "runtime.printpanics",
        "runtime.preprintpanics",
        "runtime.badsignal",
        "runtime.sigpanic0",
    ];
    EXACT.contains(&n)
        || PREFIX.iter().any(|p| n.starts_with(p))
        || n.starts_with("runtime.goPanic")
        || n.starts_with("runtime.panicIndex")
        || n.starts_with("runtime.panicSlice")
        || n.starts_with("runtime.panicdottype")
        || n.starts_with("runtime.panicunsafe")
        || GO
            .iter()
            .any(|g| n == *g || n.strip_prefix(g).is_some_and(|r| r.starts_with('.')))
}

/// Where threads begin: never part of a bug's identity.
pub fn is_thread_base(n: &str) -> bool {
    const EXACT: &[&str] = &[
        "_start",
        "__libc_start_main",
        "__libc_start_main_impl",
        "__libc_start_call_main",
        "start_thread",
        "clone",
        "clone3",
        "__clone",
        "__clone3",
        "__clone_internal",
        "thread_start",
        "runtime.goexit",
        "runtime.main",
        "runtime.mstart",
        "runtime.mstart0",
        "runtime.mstart1",
        "runtime.rt0_go",
        "std::rt::lang_start_internal",
        "std::rt::lang_start",
        "std::sys::backtrace::__rust_begin_short_backtrace",
        "__rust_begin_short_backtrace",
        "core::ops::function::FnOnce::call_once",
        "std::panicking::try",
        "std::panicking::try::do_call",
        "std::panicking::catch_unwind",
        "std::panicking::catch_unwind::do_call",
        "std::panic::catch_unwind",
    ];
    EXACT.contains(&n)
        || n.starts_with("std::rt::lang_start")
        || n.starts_with("core::ops::function::FnOnce::call_once")
        || n.starts_with("std::sys::pal::unix::thread::Thread::new::thread_start")
        || n.starts_with("std::sys::thread::unix::Thread::new::thread_start")
        || n.starts_with("std::thread::Builder::spawn_unchecked_")
        || n.starts_with("runtime.goexit")
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// The part of a name that is the same in every build: demangled, without hashes,
/// arguments, template arguments or compiler clone suffixes; IFUNC variants folded.
pub fn normalize(name: &str) -> String {
    let mut s = crate::analysis::symbolize::demangle(name.trim());
    // ` [clone .cold]` (as demanglers print clones).
    while let Some(i) = s.find(" [clone ") {
        let end = s[i..].find(']').map_or(s.len(), |j| i + j + 1);
        s.replace_range(i..end, "");
    }
    // ELF clone suffixes: foo.cold, foo.isra.0, foo.part.1, foo.constprop.0, foo.llvm.123.
    for suffix in [
        ".abi0",
        ".abiinternal",
        ".cold",
        ".isra",
        ".part",
        ".constprop",
        ".lto_priv",
        ".llvm.",
        ".localalias",
        ".specialized",
    ] {
        if let Some(i) = s.find(suffix) {
            let rest = &s[i + suffix.len()..];
            if rest.is_empty() || rest.starts_with('.') || rest.bytes().all(|b| b.is_ascii_digit())
            {
                s.truncate(i);
            }
        }
    }
    // Rust legacy hash.
    if let Some(i) = s.rfind("::h") {
        let h = &s[i + 3..];
        if h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()) {
            s.truncate(i);
        }
    }
    // C++ qualifiers and arguments at the end: `f(int) const`.
    loop {
        let t = s.trim_end();
        let t = [" const", " volatile", " &&", " &", " noexcept"]
            .iter()
            .find_map(|q| t.strip_suffix(q))
            .unwrap_or(t);
        if t.len() == s.len() {
            break;
        }
        s = t.to_string();
    }
    if s.ends_with(')') && !s.ends_with("operator()") {
        if let Some(open) = matching_open(&s, '(', ')') {
            if open > 0 {
                s.truncate(open);
            }
        }
    }
    let s = strip_brackets(&s, '<', '>');
    let s = strip_brackets(&s, '[', ']');
    fold_ifunc(s.trim())
}

/// Index of the bracket opening the one that closes `s`.
fn matching_open(s: &str, open: char, close: char) -> Option<usize> {
    let mut depth = 0i32;
    for (i, c) in s.char_indices().rev() {
        if c == close {
            depth += 1;
        } else if c == open {
            depth -= 1;
            if depth == 0 {
                return Some(i);
            }
        }
    }
    None
}

/// Removes `<…>` (or `[…]`) that follow a name (template and generic arguments), keeping
/// Rust's `<T as Trait>::` qualifications and operators.
fn strip_brackets(s: &str, open: char, close: char) -> String {
    let mut out = String::with_capacity(s.len());
    let mut depth = 0usize;
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if depth > 0 {
            if c == open {
                depth += 1;
            } else if c == close {
                depth -= 1;
            }
            i += 1;
            continue;
        }
        if c == open {
            let prev = out.chars().last();
            let after_name = prev.is_some_and(|p| p.is_alphanumeric() || p == '_' || p == '>');
            let after_colons = out.ends_with("::");
            // `operator<< <T>`: the arguments of an operator template.
            let after_operator = out.ends_with(' ')
                && out
                    .trim_end()
                    .rsplit("::")
                    .next()
                    .is_some_and(|t| t.starts_with("operator"));
            if !out.ends_with("operator") && (after_name || after_colons || after_operator) {
                if after_colons {
                    out.truncate(out.len() - 2);
                }
                if after_operator {
                    out.truncate(out.trim_end().len());
                }
                depth = 1;
                i += 1;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

/// glibc's IFUNC implementations (`__memcpy_avx_unaligned_erms`) are one function.
fn fold_ifunc(s: &str) -> String {
    const VARIANTS: &[&str] = &[
        "_sse2",
        "_ssse3",
        "_sse4",
        "_avx",
        "_evex",
        "_erms",
        "_unaligned",
        "_aligned",
        "_generic",
    ];
    const FAMILIES: &[&str] = &["mem", "str", "wmem", "wcs", "stp", "raw", "bzero", "rawmem"];
    if let Some(rest) = s.strip_prefix("__") {
        if let Some(cut) = VARIANTS.iter().filter_map(|v| rest.find(v)).min() {
            let base = &rest[..cut];
            if !base.is_empty() && FAMILIES.iter().any(|f| base.starts_with(f)) {
                return base.to_string();
            }
        }
    }
    s.to_string()
}

/// The signal as the fingerprint groups it.
pub fn signal_class(signo: i32) -> String {
    match signo {
        11 | 7 => "memory".into(),
        6 => "abort".into(),
        4 | 5 => "trap".into(),
        8 => "arithmetic".into(),
        n => format!("signal{n}"),
    }
}

/// What a frame contributes: its normalized name, else `module+0xoffset`.
fn frame_key(f: &FpFrame) -> Option<String> {
    match &f.function {
        Some(name) if !name.is_empty() => Some(normalize(name)),
        _ => {
            let m = basename(f.module.as_deref()?);
            Some(match f.offset {
                Some(o) => format!("{m}+{o:#x}"),
                None => m.to_string(),
            })
        }
    }
}

/// The fingerprint (`v1:` + 64 hex) and the signature (top in-app function).
pub fn fingerprint(signo: i32, executable: &str, frames: &[FpFrame]) -> (String, Option<String>) {
    let keyed: Vec<(String, bool)> = frames
        .iter()
        .filter_map(|f| {
            let key = frame_key(f)?;
            let app = f.function.is_some() && in_app(f.module.as_deref(), Some(&key))
                || f.function.is_none() && !f.module.as_deref().is_some_and(is_system_path);
            Some((key, app))
        })
        .collect();
    // Crash machinery above the first in-app frame, and everything above it.
    let first_app = keyed
        .iter()
        .position(|(_, app)| *app)
        .unwrap_or(keyed.len());
    let cut = keyed[..first_app]
        .iter()
        .rposition(|(k, _)| is_machinery(k))
        .map_or(0, |i| i + 1);
    let mut kept: Vec<(String, bool)> = Vec::new();
    for (k, app) in &keyed[cut..] {
        if is_thread_base(k) || is_machinery(k) && !app {
            continue;
        }
        // Recursion: one frame of it.
        if kept.last().is_some_and(|(p, _)| p == k) {
            continue;
        }
        kept.push((k.clone(), *app));
    }
    let app: Vec<&str> = kept
        .iter()
        .filter(|(_, a)| *a)
        .map(|(k, _)| k.as_str())
        .collect();
    let chosen: Vec<&str> = if !app.is_empty() {
        app.into_iter().take(TOP_FRAMES).collect()
    } else if !kept.is_empty() {
        kept.iter()
            .map(|(k, _)| k.as_str())
            .take(TOP_FRAMES)
            .collect()
    } else {
        keyed
            .iter()
            .map(|(k, _)| k.as_str())
            .take(TOP_FRAMES)
            .collect()
    };
    let mut h = Sha256::new();
    h.update(VERSION.as_bytes());
    h.update(b"\n");
    h.update(signal_class(signo).as_bytes());
    h.update(b"\n");
    h.update(basename(executable).as_bytes());
    for c in &chosen {
        h.update(b"\n");
        h.update(c.as_bytes());
    }
    let signature = kept
        .iter()
        .find(|(_, a)| *a)
        .map(|(k, _)| k.clone())
        .or_else(|| chosen.first().map(|s| s.to_string()))
        .map(|s| cut_str(&s, 256));
    (
        format!("{VERSION}:{}", hex::encode(h.finalize())),
        signature,
    )
}

fn cut_str(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f(name: &str, module: &str) -> FpFrame {
        FpFrame {
            function: Some(name.into()),
            module: Some(module.into()),
            offset: Some(0x1234),
        }
    }
    const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";
    const APP: &str = "/app/server";

    #[test]
    fn names_are_normalized() {
        for (raw, want) in [
            (
                "_ZN6server12parse_header17h0123456789abcdefE",
                "server::parse_header",
            ),
            ("_RNvCs1234_6server12parse_header", "server::parse_header"),
            ("_ZN3foo3barEv", "foo::bar"),
            (
                "_ZNSt6vectorIiSaIiEE9push_backERKi",
                "std::vector::push_back",
            ),
            (
                "ns::parse<int, std::string>(char const*, unsigned long) const",
                "ns::parse",
            ),
            ("parse_header.cold", "parse_header"),
            ("parse_header.isra.0", "parse_header"),
            ("parse_header.part.3", "parse_header"),
            ("parse_header.constprop.0.isra.0", "parse_header"),
            ("foo [clone .cold]", "foo"),
            ("__memcpy_avx_unaligned_erms", "memcpy"),
            ("__strlen_evex", "strlen"),
            ("__memmove_sse2_unaligned_erms", "memmove"),
            ("main.crashHere", "main.crashHere"),
            ("main.(*Server).handle", "main.(*Server).handle"),
            ("main.Map[go.shape.int]", "main.Map"),
            (
                "<server::Header as core::fmt::Display>::fmt",
                "<server::Header as core::fmt::Display>::fmt",
            ),
            ("alloc::vec::Vec<T,A>::push", "alloc::vec::Vec::push"),
            (
                "std::operator<< <std::char_traits<char> >",
                "std::operator<<",
            ),
            ("Foo::operator()(int)", "Foo::operator()"),
        ] {
            assert_eq!(normalize(raw), want, "{raw}");
        }
    }

    #[test]
    fn system_and_runtime_frames_are_not_in_app() {
        assert!(!in_app(Some(LIBC), Some("memcpy")));
        assert!(!in_app(Some(APP), Some("std::panicking::begin_panic")));
        assert!(!in_app(Some(APP), Some("runtime.gopanic")));
        assert!(in_app(Some(APP), Some("main.crashHere")));
        assert!(in_app(Some("/opt/app/lib/libfoo.so"), None));
        assert!(!in_app(Some("[vdso]"), None));
    }

    #[test]
    fn assertion_drops_machinery_and_bases() {
        let frames = vec![
            f("__pthread_kill_implementation", LIBC),
            f("raise", LIBC),
            f("abort", LIBC),
            f("__assert_fail_base.cold", LIBC),
            f("__assert_fail", LIBC),
            f("check_input", APP),
            f("main", APP),
            f("__libc_start_call_main", LIBC),
            f("__libc_start_main_impl", LIBC),
            f("_start", APP),
        ];
        let (fp, sig) = fingerprint(6, "/app/server", &frames);
        assert_eq!(sig.as_deref(), Some("check_input"));
        // The same as a trace that only has the app's frames.
        let (fp2, _) = fingerprint(
            6,
            "/other/dir/server",
            &[f("check_input", APP), f("main", APP)],
        );
        assert_eq!(fp, fp2);
        assert!(fp.starts_with("v1:") && fp.len() == 67);
        assert!(coredump_openapi::types::is_fingerprint(&fp));
    }

    #[test]
    fn rust_panic_keeps_the_app_frames_below_catch_unwind() {
        let frames: Vec<FpFrame> = [
            "__pthread_kill_implementation",
            "raise",
            "abort",
            "std::sys::pal::unix::abort_internal",
            "std::process::abort",
            "__rustc::__rust_start_panic",
            "rust_panic",
            "std::panicking::rust_panic_with_hook",
            "std::panicking::begin_panic_handler::{{closure}}",
            "std::sys::backtrace::__rust_end_short_backtrace",
            "__rustc::rust_begin_unwind",
            "core::panicking::panic_fmt",
            "core::option::unwrap_failed",
            "_ZN7crasher12parse_header17h0123456789abcdefE",
            "crasher::main",
            "core::ops::function::FnOnce::call_once",
            "std::sys::backtrace::__rust_begin_short_backtrace",
            "std::rt::lang_start::{{closure}}",
            "std::panicking::catch_unwind::do_call",
            "std::panicking::catch_unwind",
            "std::rt::lang_start_internal",
            "main",
            "__libc_start_call_main",
            "_start",
        ]
        .iter()
        .map(|n| {
            f(
                n,
                if n.starts_with("std")
                    || n.starts_with("core")
                    || n.starts_with("crasher")
                    || n.starts_with("_Z")
                    || *n == "main"
                {
                    APP
                } else {
                    LIBC
                },
            )
        })
        .collect();
        let (_, sig) = fingerprint(6, APP, &frames);
        assert_eq!(sig.as_deref(), Some("crasher::parse_header"));
    }

    #[test]
    fn go_panic_keeps_the_faulting_function() {
        let names = [
            "runtime.raise",
            "runtime.dieFromSignal",
            "runtime.crash",
            "runtime.fatalpanic.func1",
            "runtime.systemstack",
            "runtime.fatalpanic",
            "runtime.gopanic",
            "runtime.panicmem",
            "runtime.sigpanic",
            "main.crashHere",
            "main.main",
            "runtime.main",
            "runtime.goexit",
        ];
        let frames: Vec<FpFrame> = names.iter().map(|n| f(n, APP)).collect();
        let (fp, sig) = fingerprint(6, APP, &frames);
        assert_eq!(sig.as_deref(), Some("main.crashHere"));
        let (fp2, _) = fingerprint(6, APP, &[f("main.crashHere", APP), f("main.main", APP)]);
        assert_eq!(fp, fp2);
    }

    #[test]
    fn different_bugs_differ_and_recursion_collapses() {
        let a = fingerprint(11, APP, &[f("parse_header", APP), f("main", APP)]).0;
        let b = fingerprint(11, APP, &[f("parse_body", APP), f("main", APP)]).0;
        let c = fingerprint(6, APP, &[f("parse_header", APP), f("main", APP)]).0;
        let d = fingerprint(11, "/app/other", &[f("parse_header", APP), f("main", APP)]).0;
        assert!(a != b && a != c && a != d);
        let rec = |n: usize| {
            let mut v = vec![f("recurse", APP); n];
            v.push(f("main", APP));
            fingerprint(11, APP, &v).0
        };
        assert_eq!(rec(3), rec(3000));
        // Beyond 5 in-app frames nothing counts.
        let deep = |last: &str| {
            fingerprint(
                11,
                APP,
                &[
                    f("a", APP),
                    f("b", APP),
                    f("c", APP),
                    f("d", APP),
                    f("e", APP),
                    f(last, APP),
                ],
            )
            .0
        };
        assert_eq!(deep("x"), deep("y"));
    }

    #[test]
    fn no_addresses_or_build_ids_count_but_unsymbolized_offsets_do() {
        let frames = |off: u64| {
            vec![FpFrame {
                function: None,
                module: Some("/app/lib/libx.so".into()),
                offset: Some(off),
            }]
        };
        assert_ne!(
            fingerprint(11, APP, &frames(0x10)).0,
            fingerprint(11, APP, &frames(0x20)).0
        );
        // Only libc frames: the top five of them.
        let libc_only = [f("__memcpy_avx_unaligned_erms", LIBC), f("qsort", LIBC)];
        let libc_only2 = [f("__memcpy_evex_unaligned", LIBC), f("qsort", LIBC)];
        assert_eq!(
            fingerprint(11, APP, &libc_only).0,
            fingerprint(11, APP, &libc_only2).0
        );
        assert!(fingerprint(11, APP, &[]).0.starts_with("v1:"));
    }

    #[test]
    fn cxx_uncaught_exception() {
        let frames = [
            f("raise", LIBC),
            f("abort", LIBC),
            f(
                "__gnu_cxx::__verbose_terminate_handler()",
                "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
            ),
            f(
                "__cxxabiv1::__terminate(void (*)())",
                "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
            ),
            f(
                "std::terminate()",
                "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
            ),
            f("__cxa_throw", "/usr/lib/x86_64-linux-gnu/libstdc++.so.6"),
            f("_ZN6worker3runEi", APP),
            f("start_thread", LIBC),
            f("clone3", LIBC),
        ];
        assert_eq!(
            fingerprint(6, APP, &frames).1.as_deref(),
            Some("worker::run")
        );
    }

    proptest! {
        #[test]
        fn normalize_and_fingerprint_never_panic(
            names in proptest::collection::vec(".{0,40}", 0..12),
            signo in any::<i32>(),
        ) {
            let frames: Vec<FpFrame> = names.iter().map(|n| f(n, APP)).collect();
            let (fp, sig) = fingerprint(signo, APP, &frames);
            prop_assert!(coredump_openapi::types::is_fingerprint(&fp));
            prop_assert!(sig.is_none_or(|s| s.len() <= 256));
            for n in &names {
                let _ = normalize(n);
            }
        }
    }
}
