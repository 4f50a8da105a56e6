//! What the kernel passes on `capture`'s command line, read into
//! [`KernelArgs`], and turned into the text of a [`CrashInfo`].
//!
//! Invariants:
//! - The arguments are the kernel's bytes (`OsString`): only the numbers must
//!   be text; `%E` and `%e` stay bytes until [`crash_info`] escapes them
//!   losslessly (see [`crate::escape`]).
//! - `%E %e` are always the last two, so the count alone tells whether `%F`
//!   is there; any other count, or a number that does not parse, is a
//!   [`CaptureError`], never a panic and never a guess.
//! - `%e` (comm) is set by the process itself: shown, never used to
//!   attribute the crash.
//! - Pure: no I/O here.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

use crate::cgroup;
use crate::escape::escape;
use crate::procinfo::{self, ProcInfo};
use crate::spool::{signal_name, CrashInfo};

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("expected `%P %I %s %t %c %d %u %g [%F] %E %e`, got {0} arguments")]
    ArgCount(usize),
    #[error("argument {index} ({spec}) is {value:?}, not a number")]
    BadNumber {
        index: usize,
        spec: &'static str,
        value: String,
    },
}

/// The values the kernel put on our command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelArgs {
    pub host_pid: i32,
    pub host_tid: i32,
    pub signal: i32,
    pub time: u64,
    pub rlimit_core: u64,
    pub dumpable: u32,
    pub uid: u32,
    pub gid: u32,
    /// `%F`: fd number of the crasher's pidfd in our fd table.
    pub pidfd: Option<i32>,
    /// `%E`: executable path with `/` as `!`. Bytes: a path need not be
    /// UTF-8.
    pub exe_escaped: Vec<u8>,
    /// `%e`: comm. Bytes, and set by the process (`prctl(PR_SET_NAME)`):
    /// shown, never used to attribute the crash.
    pub comm: Vec<u8>,
}

impl KernelArgs {
    /// Parses `%P %I %s %t %c %d %u %g [%F] %E %e`: %E and %e are always the
    /// last two, so 9 numbers mean %F is there. The arguments are the
    /// kernel's bytes; only the numbers need to be text.
    pub fn parse(args: &[OsString]) -> Result<Self, CaptureError> {
        let n = args.len();
        if !(10..=11).contains(&n) {
            return Err(CaptureError::ArgCount(n));
        }
        let nums = &args[..n - 2];
        fn num<T: std::str::FromStr>(
            nums: &[OsString],
            index: usize,
            spec: &'static str,
        ) -> Result<T, CaptureError> {
            let bad = || CaptureError::BadNumber {
                index,
                spec,
                value: escape(nums[index].as_bytes()),
            };
            nums[index]
                .to_str()
                .ok_or_else(bad)?
                .parse()
                .map_err(|_| bad())
        }
        Ok(Self {
            host_pid: num(nums, 0, "%P")?,
            host_tid: num(nums, 1, "%I")?,
            signal: num(nums, 2, "%s")?,
            time: num(nums, 3, "%t")?,
            rlimit_core: num(nums, 4, "%c")?,
            dumpable: num(nums, 5, "%d")?,
            uid: num(nums, 6, "%u")?,
            gid: num(nums, 7, "%g")?,
            pidfd: if nums.len() == 9 {
                Some(num(nums, 8, "%F")?)
            } else {
                None
            },
            exe_escaped: args[n - 2].as_bytes().to_vec(),
            comm: args[n - 1].as_bytes().to_vec(),
        })
    }

    pub fn id(&self) -> String {
        format!("{}-{}", self.time, self.host_pid)
    }
}

/// The crash as the spool records it: the kernel's values, preferring what
/// `/proc` said (`proc`, when it could be read), with bytes made text.
pub fn crash_info(k: &KernelArgs, proc: Option<&ProcInfo>, roots: &[String]) -> CrashInfo {
    let cgroups = proc
        .map(|p| cgroup::parse_lines(&p.cgroup))
        .unwrap_or_default();
    let pod = cgroup::pod_of(&cgroups, roots);
    CrashInfo {
        host_pid: k.host_pid,
        host_tid: k.host_tid,
        container_pid: proc.and_then(|p| p.ns_pid),
        signal: k.signal,
        signal_name: signal_name(k.signal),
        dump_time: k.time,
        // Bytes become text here, losslessly (see `escape`).
        comm: escape(proc.and_then(|p| p.comm.as_deref()).unwrap_or(&k.comm)),
        executable: match proc.and_then(|p| p.exe.as_deref()) {
            Some(exe) => escape(exe),
            None => escape(&procinfo::unescape_exe(&k.exe_escaped)),
        },
        command_line: proc
            .map(|p| p.command_line.iter().map(|a| escape(a)).collect())
            .unwrap_or_default(),
        command_line_truncated: proc.is_some_and(|p| p.command_line_truncated),
        uid: k.uid,
        gid: k.gid,
        dumpable: k.dumpable,
        rlimit_core: k.rlimit_core,
        pod_uid: pod.as_ref().map(|p| p.pod_uid.clone()),
        container_id: pod.as_ref().map(|p| p.container_id.clone()),
        container_runtime: pod.as_ref().and_then(|p| p.runtime.clone()),
        qos_class: pod.as_ref().map(|p| p.qos),
        cgroups,
        proc_verified: proc.is_some_and(ProcInfo::verified),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<OsString> {
        s.split(' ').map(OsString::from).collect()
    }

    #[test]
    fn parses_kernel_args_with_and_without_pidfd() {
        let k = KernelArgs::parse(&args(
            "4242 4243 11 1700000000 18446744073709551615 1 1000 100 3 !usr!bin!x my-comm",
        ))
        .unwrap();
        assert_eq!(k.host_pid, 4242);
        assert_eq!(k.rlimit_core, u64::MAX);
        assert_eq!(k.pidfd, Some(3));
        assert_eq!(k.exe_escaped, b"!usr!bin!x");
        assert_eq!(k.comm, b"my-comm");
        assert_eq!(k.id(), "1700000000-4242");

        let k = KernelArgs::parse(&args("1 1 6 5 0 1 0 0 !x --spool=/evil")).unwrap();
        assert_eq!(k.pidfd, None);
        assert_eq!(k.comm, b"--spool=/evil");

        assert!(matches!(
            KernelArgs::parse(&args("1 2 3")),
            Err(CaptureError::ArgCount(3))
        ));
        assert!(matches!(
            KernelArgs::parse(&args("1 x 6 5 0 1 0 0 !x c")),
            Err(CaptureError::BadNumber { index: 1, .. })
        ));
    }

    #[test]
    fn kernel_args_are_bytes() {
        use std::os::unix::ffi::OsStringExt;
        let mut a = args("1 1 6 5 0 1 0 0 3 x y");
        a[9] = OsString::from_vec(b"!tmp!\xff\xfe!crasher".to_vec());
        a[10] = OsString::from_vec(b"\xff\xfe".to_vec());
        let k = KernelArgs::parse(&a).unwrap();
        assert_eq!(k.comm, b"\xff\xfe");
        assert_eq!(k.exe_escaped, b"!tmp!\xff\xfe!crasher");
        let info = crash_info(&k, None, &[]);
        assert_eq!(info.comm, "\\xff\\xfe");
        assert_eq!(info.executable, "/tmp/\\xff\\xfe/crasher");
        // A number that is not text is an error, not a panic.
        a[0] = OsString::from_vec(b"\xff".to_vec());
        assert!(matches!(
            KernelArgs::parse(&a),
            Err(CaptureError::BadNumber { index: 0, .. })
        ));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        use std::os::unix::ffi::OsStringExt;

        fn os(b: Vec<u8>) -> OsString {
            OsString::from_vec(b)
        }

        /// The kernel's argument vector as our pattern makes it: any values
        /// for the numbers, any bytes for %E and %e.
        fn kernel_argv() -> impl Strategy<Value = (KernelArgs, Vec<OsString>)> {
            (
                (any::<i32>(), any::<i32>(), any::<i32>(), any::<u64>()),
                (any::<u64>(), any::<u32>(), any::<u32>(), any::<u32>()),
                proptest::option::of(any::<i32>()),
                proptest::collection::vec(any::<u8>(), 0..64),
                proptest::collection::vec(any::<u8>(), 0..16),
            )
                .prop_map(|((p, i, s, t), (c, d, u, g), f, exe, comm)| {
                    let k = KernelArgs {
                        host_pid: p,
                        host_tid: i,
                        signal: s,
                        time: t,
                        rlimit_core: c,
                        dumpable: d,
                        uid: u,
                        gid: g,
                        pidfd: f,
                        exe_escaped: exe,
                        comm,
                    };
                    let mut argv: Vec<OsString> = [
                        p.to_string(),
                        i.to_string(),
                        s.to_string(),
                        t.to_string(),
                        c.to_string(),
                        d.to_string(),
                        u.to_string(),
                        g.to_string(),
                    ]
                    .into_iter()
                    .map(OsString::from)
                    .collect();
                    argv.extend(f.map(|f| OsString::from(f.to_string())));
                    argv.push(os(k.exe_escaped.clone()));
                    argv.push(os(k.comm.clone()));
                    (k, argv)
                })
        }

        proptest! {
            // proptest's default: 256 cases, or PROPTEST_CASES (see README.md).

            /// What the kernel can give parses back to the same values.
            #[test]
            fn kernel_args_round_trip((k, argv) in kernel_argv()) {
                prop_assert_eq!(KernelArgs::parse(&argv).ok(), Some(k));
            }

            /// Any argument vector at all: a value or a clear error, never a
            /// panic, and a value re-parses from what it holds.
            #[test]
            fn any_argv_parses_or_errs(argv in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..24).prop_map(os), 0..14)
            ) {
                match KernelArgs::parse(&argv) {
                    Ok(k) => {
                        prop_assert!((10..=11).contains(&argv.len()));
                        prop_assert_eq!(k.pidfd.is_some(), argv.len() == 11);
                        prop_assert_eq!(&k.comm, &argv[argv.len() - 1].as_bytes().to_vec());
                        let info = crash_info(&k, None, &[]);
                        prop_assert_eq!(
                            crate::escape::unescape(&info.comm),
                            Some(k.comm.clone())
                        );
                    }
                    Err(CaptureError::ArgCount(n)) => prop_assert_eq!(n, argv.len()),
                    Err(CaptureError::BadNumber { index, value, .. }) => {
                        prop_assert!(index < argv.len() - 2);
                        prop_assert_eq!(
                            crate::escape::unescape(&value),
                            Some(argv[index].as_bytes().to_vec())
                        );
                    }
                }
            }
        }
    }
}
