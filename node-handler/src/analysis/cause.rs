//! The probable cause of a crash: a pure function of the signal, its code and fault
//! address, the crashing thread's SP and frames, and the container's last log lines.
//!
//! Invariants: no I/O; a cause is only claimed when the evidence names it (frames of the
//! crash machinery, a fault address, a runtime's own message), else it falls back to what
//! the signal alone says. A message is at most [`MAX_CAUSE_MESSAGE`] bytes, cut on a
//! character boundary.

use coredump_openapi::types::analysis::MAX_CAUSE_MESSAGE;
use coredump_openapi::types::CrashCause;

/// A fault this close to the stack pointer (below or above) is the stack running into
/// its guard page.
pub const STACK_FAULT_DISTANCE: u64 = 64 << 10;
/// Addresses below this are a null pointer plus a small offset.
pub const NULL_PAGE: u64 = 4096;

/// What the cause is told from.
#[derive(Debug, Clone, Default)]
pub struct Evidence<'a> {
    pub signo: i32,
    pub code: Option<i32>,
    pub fault_address: Option<u64>,
    pub sp: Option<u64>,
    /// Normalized function names of the crashing thread, innermost first.
    pub frames: &'a [String],
    pub log_tail: Option<&'a str>,
}

const SIGILL: i32 = 4;
const SIGTRAP: i32 = 5;
const SIGABRT: i32 = 6;
const SIGBUS: i32 = 7;
const SIGFPE: i32 = 8;
const SIGKILL: i32 = 9;
const SIGSEGV: i32 = 11;
const SIGSYS: i32 = 31;

fn has(frames: &[String], pred: impl Fn(&str) -> bool) -> bool {
    frames.iter().any(|f| pred(f))
}

/// The cause and, where one was found, its message (panic text, assertion, exception).
pub fn probable_cause(e: &Evidence) -> (CrashCause, Option<String>) {
    let log = e.log_tail.unwrap_or("");
    let f = e.frames;
    // Runtimes first: their own machinery decides, whatever signal ends the process.
    let go_fatal = has(f, |n| {
        n == "runtime.throw" || n == "runtime.fatalthrow" || n.starts_with("runtime.fatalthrow.")
    });
    let go_panic = has(f, |n| {
        n.starts_with("runtime.gopanic") || n.starts_with("runtime.fatalpanic")
    });
    let log_go_fatal = last_line_with(log, "fatal error: ");
    let log_go_panic = last_line_with(log, "panic: ");
    if go_fatal
        || go_panic
        || (log_go_panic.is_some() || log_go_fatal.is_some())
            && has(f, |n| n.starts_with("runtime."))
    {
        if let Some(m) = &log_go_fatal {
            if m.contains("stack overflow") {
                return (CrashCause::StackOverflow, Some(bound(m)));
            }
        }
        if go_fatal || log_go_fatal.is_some() && !go_panic {
            return (CrashCause::GoFatalError, log_go_fatal.map(|m| bound(&m)));
        }
        return (CrashCause::GoPanic, log_go_panic.map(|m| bound(&m)));
    }
    if log.contains("has overflowed its stack") {
        return (
            CrashCause::StackOverflow,
            last_line_with(log, "has overflowed its stack").map(|m| bound(&m)),
        );
    }
    let rust = has(f, |n| {
        n.starts_with("core::panicking::")
            || n.starts_with("std::panicking::begin_panic")
            || n.starts_with("std::panicking::rust_panic")
            || n == "rust_panic"
            || n.ends_with("rust_begin_unwind")
            || n.ends_with("__rust_start_panic")
            || n == "core::option::unwrap_failed"
            || n == "core::result::unwrap_failed"
            || n == "core::option::expect_failed"
    });
    if rust || e.signo == SIGABRT && f.is_empty() && rust_panic_message(log).is_some() {
        return (
            CrashCause::RustPanic,
            rust_panic_message(log).map(|m| bound(&m)),
        );
    }
    if has(f, |n| {
        n == "__stack_chk_fail" || n == "__stack_chk_fail_local"
    }) || e.signo == SIGABRT && log.contains("stack smashing detected")
    {
        return (
            CrashCause::StackSmashing,
            last_line_with(log, "stack smashing detected").map(|m| bound(&m)),
        );
    }
    let cxx = has(f, |n| {
        n == "std::terminate"
            || n == "std::__terminate"
            || n == "__cxxabiv1::__terminate"
            || n == "__cxa_throw"
            || n == "__cxa_rethrow"
            || n == "__gnu_cxx::__verbose_terminate_handler"
    });
    if cxx || e.signo == SIGABRT && log.contains("terminate called after throwing") {
        return (
            CrashCause::CxxUncaughtException,
            cxx_message(log).map(|m| bound(&m)),
        );
    }
    let assert = has(f, |n| {
        n.starts_with("__assert_fail") || n == "__assert_perror_fail" || n == "__assert"
    });
    if assert || e.signo == SIGABRT && log.contains("Assertion `") {
        return (
            CrashCause::AssertionFailure,
            last_line_with(log, "Assertion `").map(|m| bound(&m)),
        );
    }
    match e.signo {
        SIGSEGV | SIGBUS => {
            // Sent by a process (kill, tgkill): si_code <= 0 carries no address.
            let sent = e.code.is_some_and(|c| c <= 0);
            if let (Some(addr), false) = (e.fault_address, sent) {
                if addr < NULL_PAGE {
                    return (CrashCause::NullPointerDereference, None);
                }
                if let Some(sp) = e.sp {
                    if addr.abs_diff(sp) <= STACK_FAULT_DISTANCE {
                        return (CrashCause::StackOverflow, None);
                    }
                }
            }
            if e.signo == SIGBUS {
                (CrashCause::BusError, None)
            } else {
                (CrashCause::InvalidMemoryAccess, None)
            }
        }
        SIGABRT => (CrashCause::Abort, None),
        SIGILL => (CrashCause::IllegalInstruction, None),
        SIGFPE => (CrashCause::ArithmeticError, None),
        SIGTRAP => (CrashCause::Trap, None),
        SIGKILL => (CrashCause::Killed, None),
        SIGSYS => (CrashCause::Trap, None),
        _ => (CrashCause::Unknown, None),
    }
}

/// The last line containing `needle`, from there on.
fn last_line_with(log: &str, needle: &str) -> Option<String> {
    log.lines()
        .rev()
        .find_map(|l| l.find(needle).map(|i| l[i..].trim().to_string()))
        .or_else(|| {
            log.lines()
                .rev()
                .find(|l| l.contains(needle))
                .map(|l| l.trim().to_string())
        })
}

/// Rust ≥ 1.73: `thread 'main' panicked at src/main.rs:4:5:` then the message; before:
/// `thread 'main' panicked at 'msg', src/main.rs:4:5`.
fn rust_panic_message(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().collect();
    let i = lines.iter().rposition(|l| l.contains("panicked at"))?;
    let head = lines[i].trim();
    if head.ends_with(':') {
        let msg = lines.get(i + 1).map(|l| l.trim()).unwrap_or("");
        Some(format!("{head} {msg}").trim().to_string())
    } else {
        Some(head.to_string())
    }
}

/// `terminate called after throwing an instance of 'T'` and `  what():  msg`.
fn cxx_message(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().collect();
    let i = lines.iter().rposition(|l| l.contains("terminate called"))?;
    let mut m = lines[i].trim().to_string();
    if let Some(w) = lines.get(i + 1).filter(|l| l.contains("what():")) {
        m.push_str(": ");
        m.push_str(w.trim());
    }
    Some(m)
}

fn bound(s: &str) -> String {
    if s.len() <= MAX_CAUSE_MESSAGE {
        return s.to_string();
    }
    let mut end = MAX_CAUSE_MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn cause(
        signo: i32,
        addr: Option<u64>,
        sp: Option<u64>,
        frames: &[&str],
        log: &str,
    ) -> (CrashCause, Option<String>) {
        let f = names(frames);
        probable_cause(&Evidence {
            signo,
            code: Some(1),
            fault_address: addr,
            sp,
            frames: &f,
            log_tail: Some(log),
        })
    }

    #[test]
    fn memory_faults() {
        assert_eq!(
            cause(11, Some(0), None, &[], "").0,
            CrashCause::NullPointerDereference
        );
        assert_eq!(
            cause(11, Some(0x18), Some(0x7ffd_0000), &[], "").0,
            CrashCause::NullPointerDereference
        );
        assert_eq!(
            cause(
                11,
                Some(0x7ffd_0000 - 8),
                Some(0x7ffd_0000),
                &["recurse"],
                ""
            )
            .0,
            CrashCause::StackOverflow
        );
        assert_eq!(
            cause(11, Some(0xdead_0000), Some(0x7ffd_0000), &[], "").0,
            CrashCause::InvalidMemoryAccess
        );
        assert_eq!(
            cause(7, Some(0xdead_0000), None, &[], "").0,
            CrashCause::BusError
        );
        // kill -SEGV: no fault address to believe.
        let f = names(&[]);
        let e = Evidence {
            signo: 11,
            code: Some(0),
            fault_address: Some(0),
            sp: None,
            frames: &f,
            log_tail: None,
        };
        assert_eq!(probable_cause(&e).0, CrashCause::InvalidMemoryAccess);
    }

    #[test]
    fn signals_alone() {
        assert_eq!(
            cause(4, None, None, &[], "").0,
            CrashCause::IllegalInstruction
        );
        assert_eq!(
            cause(8, Some(0x401000), None, &[], "").0,
            CrashCause::ArithmeticError
        );
        assert_eq!(cause(5, None, None, &[], "").0, CrashCause::Trap);
        assert_eq!(
            cause(6, None, None, &["raise", "abort", "main"], "").0,
            CrashCause::Abort
        );
        assert_eq!(cause(3, None, None, &[], "").0, CrashCause::Unknown);
    }

    #[test]
    fn abort_flavours_with_messages() {
        let (c, m) = cause(
            6,
            None,
            None,
            &[
                "raise",
                "abort",
                "__assert_fail_base",
                "__assert_fail",
                "check",
            ],
            "starting\nasserter: t.c:7: check: Assertion `n > 0' failed.\n",
        );
        assert_eq!(c, CrashCause::AssertionFailure);
        assert_eq!(m.as_deref(), Some("Assertion `n > 0' failed."));
        assert_eq!(
            cause(
                6,
                None,
                None,
                &[
                    "raise",
                    "abort",
                    "__libc_message",
                    "__fortify_fail",
                    "__stack_chk_fail",
                    "f"
                ],
                ""
            )
            .0,
            CrashCause::StackSmashing
        );
        let (c, m) = cause(6, None, None, &["raise", "abort", "__gnu_cxx::__verbose_terminate_handler", "std::terminate", "__cxa_throw", "run"],
            "terminate called after throwing an instance of 'std::runtime_error'\n  what():  boom\n");
        assert_eq!(c, CrashCause::CxxUncaughtException);
        assert_eq!(m.as_deref(), Some("terminate called after throwing an instance of 'std::runtime_error': what():  boom"));
    }

    #[test]
    fn runtimes() {
        let (c, m) = cause(6, None, None, &["abort", "std::process::abort", "rust_panic", "core::panicking::panic_fmt", "app::parse"],
            "thread 'main' panicked at src/main.rs:4:5:\nindex out of bounds: the len is 3 but the index is 7\nnote: run with `RUST_BACKTRACE=1`\n");
        assert_eq!(c, CrashCause::RustPanic);
        assert_eq!(m.as_deref(), Some("thread 'main' panicked at src/main.rs:4:5: index out of bounds: the len is 3 but the index is 7"));
        let (c, m) = cause(6, None, None, &["runtime.raise", "runtime.fatalpanic", "runtime.gopanic", "runtime.sigpanic", "main.crashHere"],
            "panic: runtime error: invalid memory address or nil pointer dereference\n[signal SIGSEGV: segmentation violation]\n\ngoroutine 1 gp=0x1 m=0 mp=0x2 [running]:\n");
        assert_eq!(c, CrashCause::GoPanic);
        assert_eq!(
            m.as_deref(),
            Some("panic: runtime error: invalid memory address or nil pointer dereference")
        );
        let (c, m) = cause(
            6,
            None,
            None,
            &[
                "runtime.raise",
                "runtime.fatalthrow",
                "runtime.throw",
                "main.f",
            ],
            "fatal error: all goroutines are asleep - deadlock!\n",
        );
        assert_eq!(c, CrashCause::GoFatalError);
        assert!(m.unwrap().contains("deadlock"));
        assert_eq!(cause(6, None, None, &["runtime.raise"], "runtime: goroutine stack exceeds 1000000000-byte limit\nfatal error: stack overflow\n").0, CrashCause::StackOverflow);
        assert_eq!(
            cause(
                6,
                None,
                None,
                &["abort"],
                "\nthread 'main' has overflowed its stack\nfatal runtime error: stack overflow\n"
            )
            .0,
            CrashCause::StackOverflow
        );
    }

    proptest! {
        #[test]
        fn any_evidence_gives_a_bounded_answer(
            signo in any::<i32>(), code in any::<Option<i32>>(), addr in any::<Option<u64>>(),
            sp in any::<Option<u64>>(), frames in proptest::collection::vec(".{0,30}", 0..8),
            log in proptest::option::of(".{0,3000}"),
        ) {
            let (_, m) = probable_cause(&Evidence { signo, code, fault_address: addr, sp, frames: &frames, log_tail: log.as_deref() });
            prop_assert!(m.is_none_or(|m| m.len() <= MAX_CAUSE_MESSAGE));
        }
    }
}
