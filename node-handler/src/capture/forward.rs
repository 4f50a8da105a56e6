//! Handing a crash outside any pod to the core_pattern that was installed
//! before ours, as the kernel would have run it.
//!
//! Invariants:
//! - Whether to forward, and to what, is [`super::decide::forward_to`]'s
//!   decision; this module only expands the previous pattern's specifiers
//!   and runs it.
//! - The child inherits stdin (the core) and the `%F` pidfd at the same fd
//!   numbers, and runs from `/`; once it has started only the child holds
//!   the pipe.
//! - The child is bounded by capture's deadline and killed past it; its
//!   exit status (128 + signal when killed) goes into the drop record.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tracing::info;

use crate::install::InstallState;
use crate::pattern::{self, SpecifierValues};
use crate::procinfo::{self, ProcInfo};
use crate::spool::DropReason;

use super::{decide, fds, Ctx, KernelArgs, Outcome};

impl Ctx<'_> {
    /// Not in a pod: the core belongs to whoever handled cores before us.
    pub(super) fn not_a_container(&self, proc_root: &Path, proc: &ProcInfo) -> Outcome {
        let saved = InstallState::load(&self.spool)
            .map(|s| s.map(|s| s.previous_pattern))
            .map_err(|e| e.to_string());
        let (previous, argv) = match decide::forward_to(saved) {
            Ok(p) => p,
            Err(r) => return self.refuse(r),
        };
        let hostname = if pattern::needs_hostname(&argv) {
            procinfo::uts_hostname(proc_root, self.kargs.host_pid)
        } else {
            None
        };
        let values = specifier_values(self.kargs, proc, hostname);
        let expanded: Vec<OsString> = argv.iter().map(|a| pattern::expand(a, &values)).collect();
        info!(
            ?expanded,
            "not in a pod; handing the core to the previous handler"
        );
        let deadline = self.started + Duration::from_secs(self.cfg.deadline_seconds);
        // The child inherits stdin (the core) and the pidfd at the same fd
        // number, exactly as the kernel would have given them.
        let status = Command::new(&expanded[0])
            .args(&expanded[1..])
            .current_dir("/")
            .stdin(Stdio::inherit())
            .spawn()
            .map_err(|e| e.to_string())
            .and_then(|mut child| {
                // Only the child may hold the pipe now.
                fds::release_stdin();
                wait_deadline(&mut child, deadline)
            });
        match status {
            Ok(code) => self.dropped_full(
                DropReason::NotAContainer,
                "handed to the previous core_pattern".into(),
                0,
                Some(previous),
                Some(code),
            ),
            Err(e) => self.dropped_full(
                DropReason::NotAContainer,
                format!("previous handler failed: {e}"),
                0,
                Some(previous),
                None,
            ),
        }
    }
}

/// The values the previous pattern's `%` specifiers stand for: the kernel's,
/// with what only `/proc` knows (namespace PIDs, the CPU, the real path).
fn specifier_values(k: &KernelArgs, proc: &ProcInfo, hostname: Option<Vec<u8>>) -> SpecifierValues {
    SpecifierValues {
        ns_pid: proc.ns_pid,
        host_pid: k.host_pid,
        ns_tid: proc.ns_tid,
        host_tid: k.host_tid,
        uid: k.uid,
        gid: k.gid,
        dumpable: k.dumpable,
        signal: k.signal,
        time: k.time,
        hostname,
        comm: k.comm.clone(),
        exe: proc
            .exe
            .clone()
            .unwrap_or_else(|| procinfo::unescape_exe(&k.exe_escaped)),
        rlimit_core: k.rlimit_core,
        cpu: proc.last_cpu,
        pidfd: k.pidfd,
    }
}

fn wait_deadline(child: &mut std::process::Child, deadline: Instant) -> Result<i32, String> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                use std::os::unix::process::ExitStatusExt;
                return Ok(status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)));
            }
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("deadline exceeded; killed".into());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_handler_is_waited_for_and_killed_past_the_deadline() {
        let far = Instant::now() + Duration::from_secs(30);
        let mut child = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
        assert_eq!(wait_deadline(&mut child, far), Ok(3));
        let mut child = Command::new("sh")
            .args(["-c", "kill -9 $$"])
            .spawn()
            .unwrap();
        assert_eq!(wait_deadline(&mut child, far), Ok(128 + 9));
        let started = Instant::now();
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let e = wait_deadline(&mut child, started + Duration::from_millis(200)).unwrap_err();
        assert!(e.contains("deadline"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
        // Reaped, not left running.
        assert!(child.try_wait().unwrap().is_some());
    }
}
