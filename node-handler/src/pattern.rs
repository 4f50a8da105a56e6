//! The core_pattern strings: the one we install, recognising it, and running
//! the one we replaced (expanding its %-specifiers like the kernel does).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

/// The kernel keeps 128 bytes including the terminating NUL and silently
/// truncates longer writes, so a longer pattern must be refused up front.
pub const MAX_PATTERN_LEN: usize = 127;

/// First kernel release that passes a pidfd with `%F`.
pub const PIDFD_SINCE: (u32, u32) = (6, 16);

/// Spool used when `capture` gets no `-s`: leaving it out keeps the pattern
/// short.
pub const DEFAULT_SPOOL: &str = "/var/lib/coredump-detector/spool";

/// Numeric specifiers in the order `capture` expects them after `--`,
/// optionally followed by `%F`, then always `%E %e` last. `%e` (settable
/// by the process) comes after `--` so it can never be taken for a flag.
pub const NUMERIC_SPECIFIERS: [&str; 8] = ["%P", "%I", "%s", "%t", "%c", "%d", "%u", "%g"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    #[error("core_pattern {pattern:?} is {len} characters; the kernel keeps at most {MAX_PATTERN_LEN}: use shorter handler or spool paths")]
    TooLong { pattern: String, len: usize },
    #[error("{what} {path:?} must be an absolute path without whitespace or %")]
    BadPath { what: &'static str, path: String },
}

/// Parses `uname -r` (`6.18.44-foo`) into (major, minor).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

pub fn kernel_supports_pidfd(release: &str) -> bool {
    kernel_version(release).is_some_and(|v| v >= PIDFD_SINCE)
}

/// The running kernel's release.
pub fn running_kernel_release() -> Option<String> {
    nix::sys::utsname::uname()
        .ok()
        .map(|u| u.release().to_string_lossy().into_owned())
}

fn check_path(what: &'static str, p: &Path) -> Result<String, PatternError> {
    let s = p.to_string_lossy().into_owned();
    if !p.is_absolute() || s.chars().any(|c| c.is_whitespace() || c == '%') {
        return Err(PatternError::BadPath { what, path: s });
    }
    Ok(s)
}

/// Builds `|<handler> capture [-s<spool>] -- %P %I %s %t %c %d %u %g [%F] %E %e`.
pub fn build(handler: &Path, spool: &Path, pidfd: bool) -> Result<String, PatternError> {
    let handler = check_path("handler", handler)?;
    let spool = check_path("spool", spool)?;
    let mut p = format!("|{handler} capture");
    if spool != DEFAULT_SPOOL {
        p.push_str(" -s");
        p.push_str(&spool);
    }
    p.push_str(" --");
    for s in NUMERIC_SPECIFIERS {
        p.push(' ');
        p.push_str(s);
    }
    if pidfd {
        p.push_str(" %F");
    }
    p.push_str(" %E %e");
    if p.len() > MAX_PATTERN_LEN {
        return Err(PatternError::TooLong {
            len: p.len(),
            pattern: p,
        });
    }
    Ok(p)
}

/// Whether a core_pattern runs our `capture` (any handler path or spool), so
/// `install` never saves its own pattern as the "previous" one.
pub fn is_ours(pattern: &str) -> bool {
    let Some(cmd) = pattern.trim_end_matches('\n').strip_prefix('|') else {
        return false;
    };
    let words: Vec<&str> = cmd.split(' ').filter(|w| !w.is_empty()).collect();
    words.get(1) == Some(&"capture") && cmd.contains(" -- %P %I %s")
}

/// A core_pattern as the kernel reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `|/path args`: argv templates, split on spaces before expansion as
    /// the kernel does since Linux 5.3.
    Pipe(Vec<String>),
    /// A file name template (relative to the crasher's cwd if relative).
    File(String),
}

impl Pattern {
    pub fn parse(pattern: &str) -> Option<Self> {
        let pattern = pattern.trim_end_matches('\n');
        if let Some(cmd) = pattern.strip_prefix('|') {
            let argv: Vec<String> = cmd
                .split(' ')
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect();
            (!argv.is_empty()).then_some(Pattern::Pipe(argv))
        } else if pattern.is_empty() {
            None
        } else {
            Some(Pattern::File(pattern.to_string()))
        }
    }
}

/// Values for the specifiers of a previous handler. Supported: `%% %p %P %i
/// %I %u %g %d %s %t %h %e %f %E %c %C %F`; `%p`, `%i`, `%h` and `%C` come from
/// /proc (and may be empty when it could not be read). Unknown specifiers
/// expand to nothing, as in the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecifierValues {
    pub ns_pid: Option<i32>,
    pub host_pid: i32,
    pub ns_tid: Option<i32>,
    pub host_tid: i32,
    pub uid: u32,
    pub gid: u32,
    pub dumpable: u32,
    pub signal: i32,
    pub time: u64,
    /// Bytes, like the next two: the crasher sets them, and the kernel
    /// passes them on unchanged, UTF-8 or not.
    pub hostname: Option<Vec<u8>>,
    pub comm: Vec<u8>,
    /// Executable path with `/` (escaped to `!` on expansion).
    pub exe: Vec<u8>,
    pub rlimit_core: u64,
    pub cpu: Option<u32>,
    /// Fd number of the pidfd the previous handler will inherit.
    pub pidfd: Option<i32>,
}

/// The kernel escapes `/` in `%e`, `%E` and `%h` so they stay one path
/// component.
fn escaped(s: &[u8]) -> Vec<u8> {
    s.iter()
        .map(|&b| if b == b'/' { b'!' } else { b })
        .collect()
}

/// Expands one argv template into the bytes of one argument.
pub fn expand(template: &str, v: &SpecifierValues) -> OsString {
    let opt = |x: Option<i32>| x.map(|x| x.to_string()).unwrap_or_default();
    let mut out: Vec<u8> = Vec::new();
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let text = |s: String| s.into_bytes();
        let part: Vec<u8> = match chars.next() {
            Some('%') => b"%".to_vec(),
            Some('p') => text(opt(v.ns_pid)),
            Some('P') => text(v.host_pid.to_string()),
            Some('i') => text(opt(v.ns_tid)),
            Some('I') => text(v.host_tid.to_string()),
            Some('u') => text(v.uid.to_string()),
            Some('g') => text(v.gid.to_string()),
            Some('d') => text(v.dumpable.to_string()),
            Some('s') => text(v.signal.to_string()),
            Some('t') => text(v.time.to_string()),
            Some('h') => escaped(v.hostname.as_deref().unwrap_or_default()),
            Some('e') => escaped(&v.comm),
            Some('E') => escaped(&v.exe),
            Some('f') => escaped(v.exe.rsplit(|&b| b == b'/').next().unwrap_or_default()),
            Some('c') => text(v.rlimit_core.to_string()),
            Some('C') => text(v.cpu.map(|c| c.to_string()).unwrap_or_default()),
            Some('F') => text(opt(v.pidfd)),
            // Unknown specifier or a lone % at the end: nothing, like the
            // kernel.
            _ => Vec::new(),
        };
        out.extend_from_slice(&part);
    }
    OsString::from_vec(out)
}

/// Whether any template uses `%h` (costs a namespace switch to expand).
pub fn needs_hostname(argv: &[String]) -> bool {
    argv.iter().any(|a| a.contains("%h"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.18.44-fc-v782"), Some((6, 18)));
        assert_eq!(kernel_version("5.15.0-101-generic"), Some((5, 15)));
        assert!(kernel_supports_pidfd("6.16.0"));
        assert!(kernel_supports_pidfd("7.0.1"));
        assert!(!kernel_supports_pidfd("6.15.9"));
        assert!(!kernel_supports_pidfd("garbage"));
    }

    #[test]
    fn builds_and_measures_the_pattern() {
        let p = build(
            Path::new("/var/lib/coredump-detector/coredump-node-handler"),
            Path::new(DEFAULT_SPOOL),
            true,
        )
        .unwrap();
        assert_eq!(
            p,
            "|/var/lib/coredump-detector/coredump-node-handler capture -- %P %I %s %t %c %d %u %g %F %E %e"
        );
        assert!(p.len() <= MAX_PATTERN_LEN);
        assert!(is_ours(&p));

        let p = build(Path::new("/h"), Path::new("/tmp/s"), false).unwrap();
        assert_eq!(p, "|/h capture -s/tmp/s -- %P %I %s %t %c %d %u %g %E %e");

        let long = format!("/{}", "x".repeat(100));
        match build(Path::new(&long), Path::new("/tmp/spool"), true) {
            Err(PatternError::TooLong { len, .. }) => assert!(len > MAX_PATTERN_LEN),
            other => panic!("{other:?}"),
        }
        // Exactly at the limit is fine, one more is not.
        let base = build(Path::new("/h"), Path::new("/s"), true).unwrap().len();
        let pad = MAX_PATTERN_LEN - base;
        let spool = format!("/s{}", "x".repeat(pad));
        assert_eq!(
            build(Path::new("/h"), Path::new(&spool), true)
                .unwrap()
                .len(),
            127
        );
        let spool = format!("/s{}", "x".repeat(pad + 1));
        assert!(build(Path::new("/h"), Path::new(&spool), true).is_err());

        assert!(build(Path::new("relative"), Path::new("/s"), true).is_err());
        assert!(build(Path::new("/a b"), Path::new("/s"), true).is_err());
        assert!(build(Path::new("/h"), Path::new("/s%p"), true).is_err());
    }

    #[test]
    fn recognises_our_pattern_only() {
        assert!(!is_ours("core"));
        assert!(!is_ours(
            "|/usr/lib/systemd/systemd-coredump %P %u %g %s %t %c %h"
        ));
        assert!(is_ours(
            "|/other/path/h capture -s/x -- %P %I %s %t %c %d %u %g %E %e\n"
        ));
    }

    #[test]
    fn parses_patterns() {
        assert_eq!(Pattern::parse("core\n"), Some(Pattern::File("core".into())));
        assert_eq!(Pattern::parse(""), None);
        assert_eq!(
            Pattern::parse("|/usr/share/apport/apport  -p%p -s%s -- %E\n"),
            Some(Pattern::Pipe(vec![
                "/usr/share/apport/apport".into(),
                "-p%p".into(),
                "-s%s".into(),
                "--".into(),
                "%E".into()
            ]))
        );
    }

    #[test]
    fn expands_like_the_kernel() {
        let v = SpecifierValues {
            ns_pid: Some(7),
            host_pid: 4242,
            ns_tid: Some(8),
            host_tid: 4243,
            uid: 1000,
            gid: 100,
            dumpable: 1,
            signal: 11,
            time: 1_700_000_000,
            hostname: Some(b"pod-a".to_vec()),
            comm: b"my prog".to_vec(),
            exe: b"/usr/bin/prog".to_vec(),
            rlimit_core: u64::MAX,
            cpu: Some(1),
            pidfd: Some(3),
        };
        let sd = "%P %u %g %s %t %c %h %d %F";
        let got: Vec<OsString> = sd.split(' ').map(|t| expand(t, &v)).collect();
        assert_eq!(
            got,
            [
                "4242",
                "1000",
                "100",
                "11",
                "1700000000",
                "18446744073709551615",
                "pod-a",
                "1",
                "3"
            ]
        );
        assert_eq!(expand("-p%p", &v), "-p7");
        assert_eq!(expand("%i/%I", &v), "8/4243");
        assert_eq!(expand("%E", &v), "!usr!bin!prog");
        assert_eq!(expand("%f", &v), "prog");
        assert_eq!(expand("%e", &v), "my prog");
        assert_eq!(expand("core.%e.%p.%C", &v), "core.my prog.7.1");
        assert_eq!(expand("100%%", &v), "100%");
        assert_eq!(expand("x%zy%", &v), "xy");
        let none = SpecifierValues::default();
        assert_eq!(expand("[%p][%h][%C][%F]", &none), "[][][][]");
        assert!(needs_hostname(&["a".into(), "-h%h".into()]));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        use std::os::unix::ffi::OsStrExt;

        proptest! {
            // proptest's default: 256 cases, or PROPTEST_CASES (see README.md).

            /// Any core_pattern text: no panic; a pipe's argv is its words,
            /// anything else non-empty is a file template.
            #[test]
            fn any_pattern_parses(p in "\\|?[ -~]{0,100}\n?") {
                let trimmed = p.trim_end_matches('\n');
                match Pattern::parse(&p) {
                    Some(Pattern::Pipe(argv)) => {
                        prop_assert!(!argv.is_empty());
                        prop_assert!(argv.iter().all(|a| !a.is_empty() && !a.contains(' ')));
                        let words: Vec<&str> =
                            trimmed[1..].split(' ').filter(|w| !w.is_empty()).collect();
                        prop_assert_eq!(argv, words);
                    }
                    Some(Pattern::File(f)) => prop_assert_eq!(f, trimmed),
                    None => prop_assert!(trimmed.is_empty() || trimmed.trim_start_matches('|').trim().is_empty()),
                }
            }

            /// Our own pattern, for any paths build() accepts, is recognised,
            /// parses back to its words and fits the kernel's limit.
            #[test]
            fn built_patterns_round_trip(h in "/[a-z0-9/_.-]{0,60}", sp in "/[a-z0-9/_.-]{0,60}", pidfd in any::<bool>()) {
                if let Ok(p) = build(Path::new(&h), Path::new(&sp), pidfd) {
                    prop_assert!(p.len() <= MAX_PATTERN_LEN);
                    prop_assert!(is_ours(&p));
                    let Some(Pattern::Pipe(argv)) = Pattern::parse(&p) else {
                        return Err(TestCaseError::fail("not a pipe"));
                    };
                    prop_assert_eq!(&argv[0], &h);
                    prop_assert_eq!(argv.last().map(String::as_str), Some("%e"));
                    prop_assert_eq!(argv.contains(&"%F".to_string()), pidfd);
                }
            }

            /// Any template, any comm bytes: no panic; text without `%` is
            /// kept, and `%e` is the comm with `/` as `!`, byte for byte.
            #[test]
            fn expansion_is_bytewise(
                template in "[ -~]{0,40}",
                comm in proptest::collection::vec(any::<u8>(), 0..16),
            ) {
                let v = SpecifierValues { comm: comm.clone(), ..SpecifierValues::default() };
                let out = expand(&template, &v);
                if !template.contains('%') {
                    prop_assert_eq!(out.as_bytes(), template.as_bytes());
                }
                let e = expand("%e", &v);
                let want: Vec<u8> = comm.iter().map(|&b| if b == b'/' { b'!' } else { b }).collect();
                prop_assert_eq!(e.as_bytes(), &want[..]);
            }

            #[test]
            fn kernel_versions_parse(major in 0u32..100, minor in 0u32..1000, rest in "([-.][a-z0-9.-]{0,20})?", junk in "\\PC{0,20}") {
                let _ = kernel_version(&junk);
                prop_assert_eq!(kernel_version(&format!("{major}.{minor}{rest}")), Some((major, minor)));
            }
        }
    }
}
