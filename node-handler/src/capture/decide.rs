//! Whether a crash is captured, handed on or dropped, and why: the
//! decisions `capture` takes between its reads of `/proc` and the spool.
//!
//! Invariants:
//! - Pure: every function takes what the caller read (or the error it got)
//!   and returns a decision; no I/O, no clock, so each branch is tested.
//! - A crash is filed under a pod only when its cgroup names the pod's
//!   container *and* `/proc/<pid>` was shown to be the crasher's: never under
//!   a pod whose PID was reused since.
//! - Every "no" carries a [`DropReason`] and a detail for its drop record;
//!   nothing is dropped silently.
//! - A crash outside any pod goes to the previous core_pattern only when
//!   that one was a pipe and not ours (no recursion, no emulated file
//!   writes in the crasher's cwd).
//!
//! The size, space and rate limits are decided in [`crate::limits`].

use crate::cgroup::{self, PodCgroup};
use crate::config::OptOut;
use crate::limits::Refusal;
use crate::pattern::{self, Pattern};
use crate::procinfo::ProcInfo;
use crate::spool::{CrashInfo, DropReason};

use super::stream::StreamError;

fn refusal(reason: DropReason, detail: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        detail: detail.into(),
    }
}

/// Whose crash it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Whose<'a> {
    /// A pod's container: captured, within the limits.
    Pod(PodCgroup),
    /// Not in a pod: the previous handler's, if there is one, with what
    /// `/proc` said of the crasher.
    Host(&'a ProcInfo),
}

/// Decides from `/proc`'s answer (its error when it could not be read) and
/// the crash it described. Checked in this order: readable, in a pod, shown
/// to be the crasher's.
pub fn whose<'a>(
    proc: Result<&'a ProcInfo, String>,
    crash: &CrashInfo,
    roots: &[String],
) -> Result<Whose<'a>, Refusal> {
    let proc = proc.map_err(|e| refusal(DropReason::ProcUnavailable, e))?;
    let Some(pod) = cgroup::pod_of(&crash.cgroups, roots) else {
        return Ok(Whose::Host(proc));
    };
    // The cgroup file must be the crasher's own, not that of a process
    // that took its PID since: never file a crash under a pod otherwise.
    if !crash.proc_verified {
        return Err(refusal(
            DropReason::ProcUnverified,
            "/proc/<pid> could not be shown to be the crasher's (it exited, or its PID was reused)",
        ));
    }
    Ok(Whose::Pod(pod))
}

/// Decides from `optout.json` as read (`Ok(None)`: no file yet). A file
/// that cannot be read drops the core: it may be the one opting this pod out.
pub fn opted_out(optout: Result<Option<OptOut>, String>, pod: &PodCgroup) -> Result<(), Refusal> {
    match optout {
        Ok(Some(o)) if o.is_opted_out(&pod.pod_uid, Some(&pod.container_id)) => {
            Err(refusal(DropReason::OptedOut, "pod or container opted out"))
        }
        Ok(_) => Ok(()),
        Err(e) => Err(refusal(DropReason::OptOutUnreadable, e)),
    }
}

/// The previous handler to hand a crash outside any pod to: the saved
/// previous core_pattern (`Ok(None)`: none saved) and its argv templates.
pub fn forward_to(
    previous: Result<Option<String>, String>,
) -> Result<(String, Vec<String>), Refusal> {
    let previous = match previous {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Err(refusal(
                DropReason::NotAContainer,
                "no previous core_pattern saved",
            ))
        }
        Err(e) => return Err(refusal(DropReason::NotAContainer, e)),
    };
    match Pattern::parse(&previous) {
        Some(Pattern::Pipe(argv)) if !pattern::is_ours(&previous) => Ok((previous, argv)),
        Some(Pattern::Pipe(_)) => Err(refusal(
            DropReason::NotAContainer,
            "previous core_pattern is ours; not recursing",
        )),
        // Writing a file relative to the crasher's cwd with its
        // permissions is not emulated.
        _ => Err(refusal(
            DropReason::NotAContainer,
            format!("previous core_pattern {previous:?} is not a pipe; core dropped"),
        )),
    }
}

/// Why a core that did not stream is dropped, and how many raw bytes were
/// read by then.
pub fn stream_failure(e: StreamError, deadline_seconds: u64, budget: u64) -> (Refusal, u64) {
    match e {
        StreamError::Deadline { raw } => (
            refusal(
                DropReason::DeadlineExceeded,
                format!("deadline of {deadline_seconds}s"),
            ),
            raw,
        ),
        StreamError::Budget { raw, stored } => (
            refusal(
                DropReason::SpoolFull,
                format!("compressed core passed the space budget of {budget} bytes at {stored}"),
            ),
            raw,
        ),
        StreamError::Io { raw, op, source } => (
            refusal(DropReason::CaptureFailed, format!("{op}: {source}")),
            raw,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::CgroupLine;

    const POD: &str = "0b6e2b53-6a8e-4c3c-9d0e-1f2a3b4c5d6e";

    fn roots() -> Vec<String> {
        crate::config::CaptureConfig::default().cgroup_roots
    }

    fn pod_crash(verified: bool) -> CrashInfo {
        let path = format!(
            "/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{}.scope",
            POD.replace('-', "_"),
            "ab".repeat(32)
        );
        CrashInfo {
            cgroups: vec![CgroupLine {
                hierarchy_id: 0,
                controllers: String::new(),
                path,
            }],
            proc_verified: verified,
            ..Default::default()
        }
    }

    #[test]
    fn a_pod_crash_is_captured_only_when_proc_is_the_crashers() {
        let roots = roots();
        let proc = ProcInfo::default();
        let Ok(Whose::Pod(pod)) = whose(Ok(&proc), &pod_crash(true), &roots) else {
            panic!("not filed under its pod");
        };
        assert_eq!(pod.pod_uid, POD);
        assert_eq!(pod.container_id, "ab".repeat(32));
        let r = whose(Ok(&proc), &pod_crash(false), &roots).unwrap_err();
        assert_eq!(r.reason, DropReason::ProcUnverified);
        let r = whose(Err("gone".into()), &pod_crash(true), &roots).unwrap_err();
        assert_eq!(
            (r.reason, r.detail.as_str()),
            (DropReason::ProcUnavailable, "gone")
        );
        // Outside a pod, verified or not: the previous handler's.
        let host = CrashInfo::default();
        assert_eq!(whose(Ok(&proc), &host, &roots).unwrap(), Whose::Host(&proc));
        let r = whose(Err("gone".into()), &host, &roots).unwrap_err();
        assert_eq!(r.reason, DropReason::ProcUnavailable);
    }

    #[test]
    fn opt_out_and_an_unreadable_opt_out_drop() {
        let proc = ProcInfo::default();
        let Ok(Whose::Pod(pod)) = whose(Ok(&proc), &pod_crash(true), &roots()) else {
            panic!("no pod");
        };
        assert!(opted_out(Ok(None), &pod).is_ok());
        let mut o = OptOut::default();
        assert!(opted_out(Ok(Some(o.clone())), &pod).is_ok());
        o.pod_uids.insert(POD.to_string());
        assert_eq!(
            opted_out(Ok(Some(o)), &pod).unwrap_err().reason,
            DropReason::OptedOut
        );
        assert_eq!(
            opted_out(Err("bad json".into()), &pod).unwrap_err().reason,
            DropReason::OptOutUnreadable
        );
    }

    #[test]
    fn only_a_foreign_pipe_is_forwarded_to() {
        let (p, argv) =
            forward_to(Ok(Some("|/usr/lib/systemd/systemd-coredump %P %u".into()))).unwrap();
        assert_eq!(p, "|/usr/lib/systemd/systemd-coredump %P %u");
        assert_eq!(argv, ["/usr/lib/systemd/systemd-coredump", "%P", "%u"]);
        for previous in [
            Ok(None),
            Err("unreadable".to_string()),
            Ok(Some("core".to_string())),
            Ok(Some(
                "|/opt/coredump-detector/coredump-node-handler capture --spool=/var/x -- %P %I %s"
                    .into(),
            )),
        ] {
            let r = forward_to(previous.clone()).unwrap_err();
            assert_eq!(r.reason, DropReason::NotAContainer, "{previous:?}");
        }
        let r = forward_to(Ok(Some("core".into()))).unwrap_err();
        assert!(r.detail.contains("not a pipe"), "{}", r.detail);
    }

    #[test]
    fn stream_failures_name_their_reason_and_bytes_read() {
        let (r, raw) = stream_failure(StreamError::Deadline { raw: 5 }, 30, 9);
        assert_eq!(
            (r.reason, r.detail.as_str(), raw),
            (DropReason::DeadlineExceeded, "deadline of 30s", 5)
        );
        let (r, raw) = stream_failure(StreamError::Budget { raw: 7, stored: 10 }, 30, 9);
        assert_eq!(r.reason, DropReason::SpoolFull);
        assert!(r.detail.contains("budget of 9 bytes at 10"), "{}", r.detail);
        assert_eq!(raw, 7);
        let io = std::io::Error::other("disk");
        let (r, raw) = stream_failure(
            StreamError::Io {
                raw: 3,
                op: "write",
                source: io,
            },
            30,
            9,
        );
        assert_eq!(
            (r.reason, r.detail.as_str(), raw),
            (DropReason::CaptureFailed, "write: disk", 3)
        );
    }
}
