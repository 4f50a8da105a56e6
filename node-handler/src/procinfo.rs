//! Bounded reads of `/proc/<pid>` for the crashing process.
//!
//! Invariants:
//! - All files are opened relative to one directory fd, so every read
//!   refers to the same process even if the PID were reused in between; the
//!   pidfd the kernel hands over with `%F`, checked after the reads, then
//!   shows that this process is the crasher ([`ProcInfo::verified`]).
//! - Every read has a size bound, and nothing here panics on what it reads:
//!   the files are the crasher's (comm, cmdline and exe are set by it, and
//!   are kept as bytes, not text).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{openat, readlinkat, OFlag};
use nix::sys::stat::Mode;

use crate::spool::MAX_COMMAND_LINE;

const MAX_CGROUP: u64 = 64 << 10;
const MAX_STATUS: u64 = 16 << 10;
const MAX_SMALL: u64 = 4 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("read {path}/{file}: {source}")]
    Read {
        path: PathBuf,
        file: &'static str,
        #[source]
        source: io::Error,
    },
}

/// What the handler learns about the crasher before reading its core.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcInfo {
    pub cgroup: String,
    /// argv as the kernel keeps it: bytes, not text (see `escape`).
    pub command_line: Vec<Vec<u8>>,
    pub command_line_truncated: bool,
    /// Set by the process itself (`prctl(PR_SET_NAME)`): shown, never used
    /// to attribute a crash.
    pub comm: Option<Vec<u8>>,
    /// Target of the `exe` link, as bytes.
    pub exe: Option<Vec<u8>>,
    /// Real UID/GID as seen from the initial user namespace.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// PID in the innermost PID namespace (what `%p` would give).
    pub ns_pid: Option<i32>,
    /// Crashing thread's TID in its PID namespace (what `%i` would give).
    pub ns_tid: Option<i32>,
    /// `CoreDumping: 1` from status: the process is being dumped right now.
    pub core_dumping: bool,
    /// CPU the process last ran on (field 39 of stat), for `%C`.
    pub last_cpu: Option<u32>,
    /// The kernel passed a pidfd (`%F`) and it was checked.
    pub had_pidfd: bool,
    /// The pidfd from `%F` refers to this very process, alive after all
    /// the reads above.
    pub pidfd_matches: bool,
}

impl ProcInfo {
    /// Whether the reads are the crasher's own (no PID reuse in between).
    ///
    /// With a pidfd, it alone decides: the process it names was alive, with
    /// this PID, after the reads, so the directory opened before them was
    /// its own (a PID is only reused once its process is gone). Without
    /// one (kernels before 6.16), `CoreDumping: 1` in the status read
    /// through the same directory fd says that directory is a process being
    /// dumped right now, which the crasher is until we close stdin.
    pub fn verified(&self) -> bool {
        if self.had_pidfd {
            self.pidfd_matches
        } else {
            self.core_dumping
        }
    }
}

/// Reads what attribution needs. `proc_root` is normally `/proc`.
pub fn read(
    proc_root: &Path,
    pid: i32,
    tid: i32,
    pidfd: Option<BorrowedFd<'_>>,
) -> Result<ProcInfo, ProcError> {
    let path = proc_root.join(pid.to_string());
    let dir = openat(
        nix::fcntl::AT_FDCWD,
        &path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| ProcError::Open {
        path: path.clone(),
        source,
    })?;
    let rd = |file: &'static str, max: u64| -> Result<Vec<u8>, ProcError> {
        read_at(dir.as_fd(), file, max).map_err(|source| ProcError::Read {
            path: path.clone(),
            file,
            source,
        })
    };

    let mut info = ProcInfo {
        cgroup: String::from_utf8_lossy(&rd("cgroup", MAX_CGROUP)?).into_owned(),
        ..ProcInfo::default()
    };
    let status = String::from_utf8_lossy(&rd("status", MAX_STATUS)?).into_owned();
    parse_status(&status, &mut info);
    // The rest is nice to have: a failure leaves the field empty.
    if let Ok(cmdline) = rd("cmdline", MAX_COMMAND_LINE as u64 + 1) {
        let (args, truncated) = split_cmdline(&cmdline, MAX_COMMAND_LINE);
        info.command_line = args;
        info.command_line_truncated = truncated;
    }
    if let Ok(mut comm) = rd("comm", MAX_SMALL) {
        if comm.last() == Some(&b'\n') {
            comm.pop();
        }
        info.comm = Some(comm);
    }
    info.exe = readlinkat(dir.as_fd(), "exe").ok().map(|p| p.into_vec());
    if let Ok(stat) = rd("stat", MAX_SMALL) {
        info.last_cpu = parse_last_cpu(&String::from_utf8_lossy(&stat));
    }
    info.ns_tid = if tid == pid {
        info.ns_pid
    } else {
        let file = format!("task/{tid}/status");
        read_at_path(dir.as_fd(), &file, MAX_STATUS)
            .ok()
            .and_then(|s| {
                let mut t = ProcInfo::default();
                parse_status(&String::from_utf8_lossy(&s), &mut t);
                t.ns_pid
            })
    };
    // Last, after every read: see ProcInfo::verified.
    if let Some(fd) = pidfd {
        info.had_pidfd = true;
        info.pidfd_matches = pidfd_is(fd, pid);
    }
    Ok(info)
}

fn read_at(dir: BorrowedFd<'_>, file: &'static str, max: u64) -> io::Result<Vec<u8>> {
    read_at_path(dir, file, max)
}

fn read_at_path(dir: BorrowedFd<'_>, file: &str, max: u64) -> io::Result<Vec<u8>> {
    let fd: OwnedFd = openat(dir, file, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(io::Error::from)?;
    let mut data = Vec::new();
    File::from(fd).take(max).read_to_end(&mut data)?;
    Ok(data)
}

/// Picks Uid, Gid, the last NSpid and CoreDumping out of `status`.
pub fn parse_status(status: &str, info: &mut ProcInfo) {
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let first = || value.split_whitespace().next().and_then(|v| v.parse().ok());
        match key {
            "Uid" => info.uid = first(),
            "Gid" => info.gid = first(),
            "NSpid" => info.ns_pid = value.split_whitespace().last().and_then(|v| v.parse().ok()),
            "CoreDumping" => info.core_dumping = value.trim() == "1",
            _ => {}
        }
    }
}

/// Splits the NUL-separated cmdline, keeping at most `max` bytes.
pub fn split_cmdline(raw: &[u8], max: usize) -> (Vec<Vec<u8>>, bool) {
    let truncated = raw.len() > max;
    let raw = &raw[..raw.len().min(max)];
    let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
    if raw.is_empty() {
        return (Vec::new(), truncated);
    }
    let args = raw.split(|&b| b == 0).map(<[u8]>::to_vec).collect();
    (args, truncated)
}

/// Field 39 (processor) of `/proc/<pid>/stat`; the comm field may hold
/// spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_last_cpu(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields after comm start at field 3 (state); processor is field 39.
    rest.split_whitespace()
        .nth(39 - 3)
        .and_then(|v| v.parse().ok())
}

/// True when `fd` is a pidfd of the still existing process `pid`: its fdinfo
/// names that PID and signal 0 can be sent through it.
#[allow(unsafe_code)] // FFI: see the SAFETY comment at the unsafe block
fn pidfd_is(fd: BorrowedFd<'_>, pid: i32) -> bool {
    let fdinfo = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let Ok(text) = std::fs::read_to_string(fdinfo) else {
        return false;
    };
    let named = text
        .lines()
        .filter_map(|l| l.strip_prefix("Pid:"))
        .any(|v| v.trim() == pid.to_string());
    // SAFETY: pidfd_send_signal with signal 0 and no siginfo only checks
    // that the process exists; the fd is borrowed for the call.
    let alive = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            0,
            std::ptr::null::<nix::libc::siginfo_t>(),
            0,
        )
    } == 0;
    named && alive
}

/// Hostname in the UTS namespace of `pid` (what `%h` gives). Enters the
/// namespace on a short-lived thread so the handler's own is untouched.
pub fn uts_hostname(proc_root: &Path, pid: i32) -> Option<Vec<u8>> {
    let ns = proc_root.join(pid.to_string()).join("ns/uts");
    let ours = std::fs::read_link("/proc/self/ns/uts").ok();
    if ours.is_some() && std::fs::read_link(&ns).ok() == ours {
        return nix::unistd::gethostname().ok().map(|h| h.into_vec());
    }
    let file = File::open(&ns).ok()?;
    std::thread::spawn(move || {
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWUTS).ok()?;
        let uts = nix::sys::utsname::uname().ok()?;
        Some(uts.nodename().as_bytes().to_vec())
    })
    .join()
    .ok()
    .flatten()
}

/// `VmHWM` (peak resident set) of the current process, in bytes.
pub fn own_vm_hwm() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// `%E` turns `/` into `!`; turn it back (a `!` in the real path is lost).
pub fn unescape_exe(escaped: &[u8]) -> Vec<u8> {
    escaped
        .iter()
        .map(|&b| if b == b'!' { b'/' } else { b })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields() {
        let status = "Name:\tcrasher\nUmask:\t0022\nState:\tR (running)\nUid:\t1000\t1000\t1000\t1000\nGid:\t2000\t2000\t2000\t2000\nNSpid:\t12345\t7\nCoreDumping:\t1\n";
        let mut info = ProcInfo::default();
        parse_status(status, &mut info);
        assert_eq!(info.uid, Some(1000));
        assert_eq!(info.gid, Some(2000));
        assert_eq!(info.ns_pid, Some(7));
        assert!(info.core_dumping);
    }

    #[test]
    fn cmdline_is_bounded() {
        assert_eq!(
            split_cmdline(b"/bin/x\0-a\0b c\0", 4096),
            (
                vec![b"/bin/x".to_vec(), b"-a".to_vec(), b"b c".to_vec()],
                false
            )
        );
        assert_eq!(split_cmdline(b"", 4096), (vec![], false));
        let (args, truncated) = split_cmdline(b"abcdef\0ghij\0", 8);
        assert!(truncated);
        assert_eq!(args, vec![b"abcdef".to_vec(), b"g".to_vec()]);
    }

    #[test]
    fn last_cpu_after_tricky_comm() {
        let mut stat = String::from("42 (a) b (c) R");
        for i in 4..=52 {
            stat.push_str(&format!(" {i}"));
        }
        assert_eq!(parse_last_cpu(&stat), Some(39));
    }

    #[test]
    fn the_pidfd_decides_when_there_is_one() {
        let mut i = ProcInfo {
            core_dumping: true,
            ..ProcInfo::default()
        };
        assert!(i.verified(), "no pidfd: CoreDumping");
        i.had_pidfd = true;
        assert!(
            !i.verified(),
            "a pidfd whose process is gone outweighs CoreDumping"
        );
        i.pidfd_matches = true;
        assert!(i.verified());
        assert!(!ProcInfo::default().verified());
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id() as i32;
        let info = read(Path::new("/proc"), me, me, None).unwrap();
        assert!(!info.cgroup.is_empty());
        assert!(info.exe.is_some());
        assert!(!info.command_line.is_empty());
        assert!(!info.core_dumping);
        assert_eq!(info.ns_tid, info.ns_pid);
        assert!(own_vm_hwm().unwrap() > 0);
        assert!(uts_hostname(Path::new("/proc"), me).is_some());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            // proptest's default: 256 cases, or PROPTEST_CASES (see README.md).

            /// Any status text: no panic; the fields written by the kernel's
            /// format are read back.
            #[test]
            fn status_round_trips(
                noise in "[ -~\t\n]{0,200}",
                uid in any::<u32>(), gid in any::<u32>(),
                nspid in proptest::collection::vec(1i32..i32::MAX, 1..4),
                dumping in any::<bool>(),
            ) {
                let mut info = ProcInfo::default();
                parse_status(&noise, &mut info);
                let ns: Vec<String> = nspid.iter().map(ToString::to_string).collect();
                let text = format!(
                    "Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{gid}\t0\t0\t0\nNSpid:\t{}\nCoreDumping:\t{}\n",
                    ns.join("\t"),
                    u8::from(dumping)
                );
                let mut info = ProcInfo::default();
                parse_status(&text, &mut info);
                prop_assert_eq!(info.uid, Some(uid));
                prop_assert_eq!(info.gid, Some(gid));
                prop_assert_eq!(info.ns_pid, nspid.last().copied());
                prop_assert_eq!(info.core_dumping, dumping);
            }

            /// Any bytes, any bound: the arguments are the kept prefix,
            /// split at NULs, and `truncated` says whether bytes were cut.
            #[test]
            fn cmdline_is_split_losslessly(raw in proptest::collection::vec(any::<u8>(), 0..300), max in 0usize..400) {
                let (args, truncated) = split_cmdline(&raw, max);
                prop_assert_eq!(truncated, raw.len() > max);
                let kept = &raw[..raw.len().min(max)];
                let kept = kept.strip_suffix(b"\0").unwrap_or(kept);
                prop_assert_eq!(args.join(&0u8), kept.to_vec());
            }

            /// Any stat line: no panic; with a hostile comm (spaces,
            /// parentheses), field 39 is found after the last `)`.
            #[test]
            fn last_cpu_survives_any_comm(comm in "[ -~]{0,16}", cpu in any::<u32>(), junk in "[ -~]{0,120}") {
                let _ = parse_last_cpu(&junk);
                let mut stat = format!("42 ({comm}) R");
                for field in 4..=52 {
                    if field == 39 {
                        stat.push_str(&format!(" {cpu}"));
                    } else {
                        stat.push_str(" 0");
                    }
                }
                prop_assert_eq!(parse_last_cpu(&stat), Some(cpu));
            }

            #[test]
            fn exe_unescapes_bytewise(raw in proptest::collection::vec(any::<u8>(), 0..100)) {
                let back = unescape_exe(&raw);
                prop_assert_eq!(back.len(), raw.len());
                prop_assert!(!back.contains(&b'!'));
            }
        }
    }
}
