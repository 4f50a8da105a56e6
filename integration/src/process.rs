//! Child processes the harness owns: each in its own process group, its output in a log
//! file, ended by pid on drop (tests) or by pid file (`make down`).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::Error;

/// How long a process may take to stop after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Whether a process dies with the harness or outlives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    /// Ended when the handle drops, and by the kernel if the spawning thread dies.
    Scoped,
    /// Survives the harness (`make up`); stopped through its pid file (`make down`).
    Detached,
}

pub struct Proc {
    pub name: String,
    pub pid: u32,
    pub log: PathBuf,
    child: Option<Child>,
    lifetime: Lifetime,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `<dir>/<name>.log`; a detached
    /// process also gets `<dir>/<name>.pid`.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        dir: &Path,
        lifetime: Lifetime,
    ) -> Result<Self, Error> {
        let log = dir.join(format!("{name}.log"));
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Error::Io(format!("open {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::Io("dup log".into(), e))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        match lifetime {
            Lifetime::Scoped => {
                cmd.process_group(0);
                // SAFETY: pre_exec's closure runs in the forked child, where only
                // async-signal-safe calls are sound: this one makes a single prctl(2) and
                // turns its errno into an io::Error without allocating; it borrows nothing.
                #[allow(unsafe_code)]
                unsafe {
                    cmd.pre_exec(|| {
                        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                            .map_err(std::io::Error::from)
                    });
                }
            }
            Lifetime::Detached => {
                // SAFETY: as above: the child only calls setsid(2), which is
                // async-signal-safe, and converts its errno without allocating.
                #[allow(unsafe_code)]
                unsafe {
                    cmd.pre_exec(|| {
                        nix::unistd::setsid()
                            .map(|_| ())
                            .map_err(std::io::Error::from)
                    });
                }
            }
        }
        let program = cmd.get_program().to_os_string();
        let child = match lifetime {
            Lifetime::Scoped => spawn_from_long_lived_thread(cmd),
            Lifetime::Detached => cmd.spawn(),
        }
        .map_err(|e| Error::Io(format!("start {name} ({program:?})"), e))?;
        let pid = child.id();
        if lifetime == Lifetime::Scoped {
            if let Ok(mut pids) = SCOPED.lock() {
                pids.push(pid);
            }
        }
        if lifetime == Lifetime::Detached {
            crate::pki::write(&dir.join(format!("{name}.pid")), &pid.to_string())?;
        }
        Ok(Self {
            name: name.to_string(),
            pid,
            log,
            child: Some(child),
            lifetime,
        })
    }

    /// The process has exited (and is reaped).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The last lines of the process's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// SIGTERM to the group, SIGKILL after a grace period; waits for the exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_group(self.pid, Some(&mut child), STOP_GRACE);
            forget_scoped(self.pid);
        }
    }

    /// SIGKILL without grace, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
            let _ = child.wait();
            forget_scoped(self.pid);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.lifetime == Lifetime::Scoped {
            self.stop();
        }
    }
}

/// The parent-death signal fires when the *thread* that forked exits, not the process: a
/// server restarted from a test's thread would die with that test. So scoped processes are
/// all forked by one thread that lives as long as the harness.
fn spawn_from_long_lived_thread(cmd: Command) -> std::io::Result<Child> {
    type Job = (Command, std::sync::mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: std::sync::OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<Job>>> =
        std::sync::OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
            // All senders gone: stay alive anyway, children depend on this thread.
            loop {
                std::thread::park();
            }
        });
        std::sync::Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = std::sync::mpsc::channel();
    sender
        .lock()
        .map_err(|_| std::io::Error::other("spawner lock poisoned"))?
        .send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("spawner thread gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("spawner thread gone"))?
}

/// Process groups started with [`Lifetime::Scoped`], for [`kill_scoped`].
static SCOPED: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// SIGKILLs every scoped process group still alive: the exit hook of a test binary whose
/// shared environment never drops.
pub fn kill_scoped() {
    if let Ok(pids) = SCOPED.lock() {
        for pid in pids.iter() {
            let _ = killpg(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
    }
}

/// A stopped group's pid may be reused: it must not be signalled at exit.
fn forget_scoped(pid: u32) {
    if let Ok(mut pids) = SCOPED.lock() {
        pids.retain(|p| *p != pid);
    }
}

/// Stops the process group led by `pid`. With `child`, waits on it; otherwise polls /proc.
pub fn stop_group(pid: u32, child: Option<&mut Child>, grace: Duration) {
    let pgid = Pid::from_raw(pid as i32);
    if killpg(pgid, Signal::SIGTERM).is_err() {
        if let Some(child) = child {
            let _ = child.wait();
        }
        return;
    }
    let deadline = Instant::now() + grace;
    let mut child = child;
    loop {
        let gone = match child.as_deref_mut() {
            Some(c) => matches!(c.try_wait(), Ok(Some(_))),
            None => !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid),
        };
        if gone {
            break;
        }
        if Instant::now() > deadline {
            let _ = killpg(pgid, Signal::SIGKILL);
            if let Some(c) = child.as_deref_mut() {
                let _ = c.wait();
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Anything else left in the group (helpers the process started) goes too.
    let _ = killpg(pgid, Signal::SIGKILL);
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

pub fn log_tail(path: &Path, lines: usize) -> String {
    tail_lines(&std::fs::read_to_string(path).unwrap_or_default(), lines)
}

/// The last `lines` lines of `text`.
pub fn tail_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A free TCP port on loopback, below the kernel's ephemeral range: the port is released
/// before its server binds it, and a port from the ephemeral range (what binding port 0
/// gives) can meanwhile become the source port of any outgoing connection (seen: a
/// kube-apiserver failing with "address already in use"). Below that range only another
/// explicit bind can take it.
pub fn free_port() -> Result<u16, Error> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u32, ephemeral_low.max(10_001));
    // Processes (test binaries, `make up`) start at different points of the range.
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..1000 {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = low + start.wrapping_add(n.wrapping_mul(104_729)) % (high - low);
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(Error::Setup(format!(
        "no free port in {low}..{high} after 1000 tries"
    )))
}

/// Polls `f` every 200 ms until it returns `Some` or the deadline passes.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    f: impl FnMut() -> Result<Option<T>, Error>,
) -> Result<T, Error> {
    wait_every(what, timeout, Duration::from_millis(200), f)
}

/// Polls `f` every `interval` until it returns `Some` or the deadline passes. Errors are
/// retried (the last one is reported on timeout), except a process that exited.
pub fn wait_every<T>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut f: impl FnMut() -> Result<Option<T>, Error>,
) -> Result<T, Error> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e @ Error::Exited { .. }) => return Err(e),
            Err(e) => last_err = Some(e.to_string()),
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: what.to_string(),
                last: last_err.unwrap_or_default(),
            });
        }
        std::thread::sleep(interval);
    }
}
