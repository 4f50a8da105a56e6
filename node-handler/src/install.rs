//! Installs our core_pattern and restores the one it replaced.
//!
//! The replaced values are saved in `<spool>/install.json` before the kernel
//! is touched, and a pattern that is already ours is never saved as the
//! previous one, so a restarted agent still restores the node's original.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::pattern::{self, PatternError};
use crate::spool::{read_bounded, Spool, SpoolError};

pub const CORE_PATTERN: &str = "/proc/sys/kernel/core_pattern";
pub const CORE_PIPE_LIMIT: &str = "/proc/sys/kernel/core_pipe_limit";
/// Everything that changes core_pattern on this node (tests of any crate,
/// scripts) takes this lock first: the setting is global.
pub const PATTERN_LOCK_PATH: &str = "/run/coredump-detector-core-pattern.lock";
/// An agent that finds [`PATTERN_LOCK_PATH`] taken holds this one while it
/// waits for it: in a DaemonSet rolling update with `maxSurge` the new agent
/// starts before the old one stops, and the old one, seeing a successor,
/// leaves its pattern installed for it instead of restoring the node's
/// previous one (which would leave the node without capture in between).
/// A flock, so a successor that dies stops counting at once.
pub const SUCCESSOR_LOCK_PATH: &str = "/run/coredump-detector-core-pattern.next.lock";
/// Concurrent piped dumps; >0 also makes the kernel keep `/proc/<pid>` until
/// the handler is done.
pub const DEFAULT_PIPE_LIMIT: u32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("lock {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error(transparent)]
    Pattern(#[from] PatternError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("{path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} holds {value:?}, not a number")]
    NotANumber { path: PathBuf, value: String },
    #[error("the kernel kept {got:?} after writing {want:?} to {path}")]
    NotApplied {
        path: PathBuf,
        want: String,
        got: String,
    },
}

type Result<T> = std::result::Result<T, InstallError>;

/// The two sysctl files; tests point them at ordinary files.
#[derive(Debug, Clone)]
pub struct Sysctls {
    pub core_pattern: PathBuf,
    pub core_pipe_limit: PathBuf,
}

impl Default for Sysctls {
    fn default() -> Self {
        Self {
            core_pattern: CORE_PATTERN.into(),
            core_pipe_limit: CORE_PIPE_LIMIT.into(),
        }
    }
}

impl Sysctls {
    pub fn read_pattern(&self) -> Result<String> {
        read_value(&self.core_pattern)
    }

    pub fn read_pipe_limit(&self) -> Result<u32> {
        let v = read_value(&self.core_pipe_limit)?;
        v.parse().map_err(|_| InstallError::NotANumber {
            path: self.core_pipe_limit.clone(),
            value: v,
        })
    }

    /// Writes and reads back: the kernel truncates silently.
    pub fn write_pattern(&self, pattern: &str) -> Result<()> {
        write_value(&self.core_pattern, pattern)
    }

    pub fn write_pipe_limit(&self, limit: u32) -> Result<()> {
        write_value(&self.core_pipe_limit, &limit.to_string())
    }
}

fn read_value(path: &Path) -> Result<String> {
    let data = std::fs::read(path).map_err(|source| InstallError::Io {
        op: "read",
        path: path.to_path_buf(),
        source,
    })?;
    let s = String::from_utf8_lossy(&data);
    Ok(s.strip_suffix('\n').unwrap_or(&s).to_string())
}

fn write_value(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, format!("{value}\n")).map_err(|source| InstallError::Io {
        op: "write",
        path: path.to_path_buf(),
        source,
    })?;
    let got = read_value(path)?;
    if got != value {
        return Err(InstallError::NotApplied {
            path: path.to_path_buf(),
            want: value.to_string(),
            got,
        });
    }
    Ok(())
}

/// `<spool>/install.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstallState {
    pub previous_pattern: String,
    pub previous_pipe_limit: u32,
    pub installed_pattern: String,
    pub installed_pipe_limit: u32,
}

impl InstallState {
    /// None when nothing was installed from this spool.
    pub fn load(spool: &Spool) -> Result<Option<Self>> {
        let path = spool.install_state_path();
        let data = match read_bounded(&path, 64 << 10) {
            Ok(d) => d,
            Err(SpoolError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&data)
            .map(Some)
            .map_err(|source| InstallError::State { path, source })
    }

    fn store(&self, spool: &Spool) -> Result<()> {
        let path = spool.install_state_path();
        let json = serde_json::to_vec_pretty(self).map_err(|source| InstallError::State {
            path: path.clone(),
            source,
        })?;
        Ok(coredump_durable::write_atomic(&path, &json, 0o600).map_err(SpoolError::from)?)
    }
}

/// Whether to pass `%F`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PidfdMode {
    /// When the running kernel supports it.
    #[default]
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Handler path as the host's mount namespace sees it.
    pub handler: PathBuf,
    pub spool: PathBuf,
    pub pipe_limit: u32,
    pub pidfd: PidfdMode,
}

/// The pattern `install` would write.
pub fn pattern_for(opts: &InstallOptions) -> Result<String> {
    let pidfd = match opts.pidfd {
        PidfdMode::Always => true,
        PidfdMode::Never => false,
        PidfdMode::Auto => {
            pattern::running_kernel_release().is_some_and(|r| pattern::kernel_supports_pidfd(&r))
        }
    };
    Ok(pattern::build(&opts.handler, &opts.spool, pidfd)?)
}

/// Saves the current values (unless they are already ours) and sets ours.
pub fn install(sys: &Sysctls, opts: &InstallOptions) -> Result<InstallState> {
    let ours = pattern_for(opts)?;
    let spool = Spool::new(&opts.spool);
    spool.ensure_layout()?;
    let current = sys.read_pattern()?;
    let current_limit = sys.read_pipe_limit()?;
    let saved = InstallState::load(&spool)?;

    let (previous_pattern, previous_pipe_limit) = if pattern::is_ours(&current)
        || saved
            .as_ref()
            .is_some_and(|s| s.installed_pattern == current)
    {
        match &saved {
            Some(s) => (s.previous_pattern.clone(), s.previous_pipe_limit),
            None => {
                // Ours is installed but nothing was saved (another spool?):
                // the kernel defaults are the only honest guess.
                warn!(current, "core_pattern is already ours and no previous one is saved; will restore the kernel default");
                ("core".to_string(), 0)
            }
        }
    } else {
        (current.clone(), current_limit)
    };
    let state = InstallState {
        previous_pattern,
        previous_pipe_limit,
        installed_pattern: ours.clone(),
        installed_pipe_limit: opts.pipe_limit,
    };
    // Saved before the kernel changes, so a crash in between loses nothing.
    state.store(&spool)?;
    // The limit first: from the moment our pattern is live, /proc/<pid>
    // must stay readable while we run.
    sys.write_pipe_limit(opts.pipe_limit)?;
    sys.write_pattern(&ours)?;
    info!(
        pattern = ours,
        previous = state.previous_pattern,
        "core_pattern installed"
    );
    Ok(state)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreOutcome {
    Restored {
        pattern: String,
        pipe_limit: u32,
    },
    NothingSaved,
    /// Someone replaced our pattern since: theirs is left in place.
    LeftAlone {
        current: String,
    },
    /// Another agent waits to take over (see [`SUCCESSOR_LOCK_PATH`]): our
    /// pattern and the saved previous values stay for it.
    HandedOver,
}

/// How [`restore`] decides.
#[derive(Debug, Clone)]
pub enum RestoreMode {
    /// Only if our pattern is still installed and no successor waits at
    /// this lock path.
    IfOurs { successor_lock: PathBuf },
    /// Even if someone else replaced our pattern, or a successor waits.
    Force,
}

impl RestoreMode {
    /// [`RestoreMode::IfOurs`] with the node-wide [`SUCCESSOR_LOCK_PATH`].
    pub fn if_ours() -> Self {
        Self::IfOurs {
            successor_lock: SUCCESSOR_LOCK_PATH.into(),
        }
    }
}

/// Puts back the saved values if our pattern is still installed and no
/// successor waits for it (or `Force`), then forgets them.
pub fn restore(sys: &Sysctls, spool: &Path, mode: &RestoreMode) -> Result<RestoreOutcome> {
    let spool = Spool::new(spool);
    let Some(state) = InstallState::load(&spool)? else {
        return Ok(RestoreOutcome::NothingSaved);
    };
    let current = sys.read_pattern()?;
    if let RestoreMode::IfOurs { successor_lock } = mode {
        if current != state.installed_pattern && !pattern::is_ours(&current) {
            warn!(
                current,
                "core_pattern was changed by someone else; leaving it"
            );
            return Ok(RestoreOutcome::LeftAlone { current });
        }
        if successor_waiting(successor_lock)? {
            info!("another agent waits to take over core_pattern; leaving ours installed for it");
            return Ok(RestoreOutcome::HandedOver);
        }
    }
    sys.write_pattern(&state.previous_pattern)?;
    sys.write_pipe_limit(state.previous_pipe_limit)?;
    let path = spool.install_state_path();
    std::fs::remove_file(&path).map_err(|source| InstallError::Io {
        op: "remove",
        path,
        source,
    })?;
    info!(pattern = state.previous_pattern, "core_pattern restored");
    Ok(RestoreOutcome::Restored {
        pattern: state.previous_pattern,
        pipe_limit: state.previous_pipe_limit,
    })
}

/// Whether someone holds the successor lock at `path` (an agent waiting to
/// take over the pattern). A missing file means no one.
pub fn successor_waiting(path: &Path) -> Result<bool> {
    let file = match OpenOptions::new().read(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(InstallError::Io {
                op: "open",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        // Ours for a moment: no one waits; unlocked when dropped.
        Ok(_free) => Ok(false),
        Err((_, Errno::EWOULDBLOCK)) => Ok(true),
        Err((_, source)) => Err(InstallError::Lock {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|source| InstallError::Io {
            op: "open",
            path: path.to_path_buf(),
            source,
        })
}

/// Some(lock) when taken; None when it would block (`nonblock`).
fn flock(path: &Path, nonblock: bool) -> Result<Option<Flock<File>>> {
    let arg = if nonblock {
        FlockArg::LockExclusiveNonblock
    } else {
        FlockArg::LockExclusive
    };
    match Flock::lock(open_lock_file(path)?, arg) {
        Ok(l) => Ok(Some(l)),
        Err((_, Errno::EWOULDBLOCK)) if nonblock => Ok(None),
        Err((_, source)) => Err(InstallError::Lock {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// An exclusive flock on [`PATTERN_LOCK_PATH`], held until dropped. Take it
/// around anything that changes core_pattern or core_pipe_limit.
#[derive(Debug)]
pub struct PatternLock {
    _lock: Flock<File>,
}

impl PatternLock {
    pub fn acquire() -> Result<Self> {
        Self::acquire_at(Path::new(PATTERN_LOCK_PATH))
    }

    /// Blocks until the lock at `path` is free.
    pub fn acquire_at(path: &Path) -> Result<Self> {
        match flock(path, false)? {
            Some(lock) => Ok(Self { _lock: lock }),
            None => Err(InstallError::Lock {
                path: path.to_path_buf(),
                source: Errno::EWOULDBLOCK,
            }),
        }
    }

    /// Takes the lock at `lock`; if it is held, first announces itself as
    /// the successor at `successor` (waiting for any earlier successor),
    /// calls `standing_by`, waits for the lock and then stops announcing.
    pub fn acquire_or_succeed(
        lock: &Path,
        successor: &Path,
        standing_by: impl FnOnce(),
    ) -> Result<Self> {
        if let Some(l) = flock(lock, true)? {
            return Ok(Self { _lock: l });
        }
        let announce = flock(successor, false)?;
        standing_by();
        let taken = Self::acquire_at(lock)?;
        drop(announce);
        Ok(taken)
    }
}

/// Holds the [`PatternLock`] and puts the core_pattern and core_pipe_limit
/// it found back when dropped, also when a test panics.
#[derive(Debug)]
pub struct CorePatternGuard {
    sys: Sysctls,
    pattern: String,
    pipe_limit: u32,
    _lock: PatternLock,
}

impl CorePatternGuard {
    pub fn save() -> Result<Self> {
        Self::save_with(Sysctls::default(), PatternLock::acquire()?)
    }

    pub fn save_with(sys: Sysctls, lock: PatternLock) -> Result<Self> {
        Ok(Self {
            pattern: sys.read_pattern()?,
            pipe_limit: sys.read_pipe_limit()?,
            sys,
            _lock: lock,
        })
    }

    pub fn original_pattern(&self) -> &str {
        &self.pattern
    }

    pub fn original_pipe_limit(&self) -> u32 {
        self.pipe_limit
    }
}

impl Drop for CorePatternGuard {
    fn drop(&mut self) {
        if let Err(e) = self.sys.write_pattern(&self.pattern) {
            eprintln!("restoring core_pattern {:?}: {e}", self.pattern);
        }
        if let Err(e) = self.sys.write_pipe_limit(self.pipe_limit) {
            eprintln!("restoring core_pipe_limit {}: {e}", self.pipe_limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_sysctls(dir: &Path, pattern: &str, limit: u32) -> Sysctls {
        let sys = Sysctls {
            core_pattern: dir.join("core_pattern"),
            core_pipe_limit: dir.join("core_pipe_limit"),
        };
        std::fs::write(&sys.core_pattern, format!("{pattern}\n")).unwrap();
        std::fs::write(&sys.core_pipe_limit, format!("{limit}\n")).unwrap();
        sys
    }

    fn if_ours(dir: &Path) -> RestoreMode {
        RestoreMode::IfOurs {
            successor_lock: dir.join("next.lock"),
        }
    }

    fn opts(dir: &Path) -> InstallOptions {
        InstallOptions {
            handler: "/h".into(),
            spool: dir.join("spool"),
            pipe_limit: 16,
            pidfd: PidfdMode::Never,
        }
    }

    #[test]
    fn install_restart_restore() {
        let dir = tempfile::tempdir().unwrap();
        let sys = fake_sysctls(dir.path(), "|/usr/lib/systemd/systemd-coredump %P %u", 0);
        let o = opts(dir.path());
        let st = install(&sys, &o).unwrap();
        assert_eq!(
            st.previous_pattern,
            "|/usr/lib/systemd/systemd-coredump %P %u"
        );
        assert_eq!(sys.read_pattern().unwrap(), st.installed_pattern);
        assert_eq!(sys.read_pipe_limit().unwrap(), 16);

        // A restarted agent must not save its own pattern as the previous.
        let again = install(&sys, &o).unwrap();
        assert_eq!(again.previous_pattern, st.previous_pattern);
        assert_eq!(again.previous_pipe_limit, 0);
        // Nor one of ours with another handler path.
        let other = InstallOptions {
            handler: "/other/h".into(),
            ..o.clone()
        };
        assert_eq!(
            install(&sys, &other).unwrap().previous_pattern,
            st.previous_pattern
        );

        let out = restore(&sys, &o.spool, &if_ours(dir.path())).unwrap();
        assert_eq!(
            out,
            RestoreOutcome::Restored {
                pattern: "|/usr/lib/systemd/systemd-coredump %P %u".into(),
                pipe_limit: 0
            }
        );
        assert_eq!(
            sys.read_pattern().unwrap(),
            "|/usr/lib/systemd/systemd-coredump %P %u"
        );
        assert_eq!(sys.read_pipe_limit().unwrap(), 0);
        assert_eq!(
            restore(&sys, &o.spool, &if_ours(dir.path())).unwrap(),
            RestoreOutcome::NothingSaved
        );
    }

    #[test]
    fn restore_leaves_a_foreign_pattern() {
        let dir = tempfile::tempdir().unwrap();
        let sys = fake_sysctls(dir.path(), "core", 0);
        let o = opts(dir.path());
        install(&sys, &o).unwrap();
        sys.write_pattern("|/usr/bin/other %p").unwrap();
        assert_eq!(
            restore(&sys, &o.spool, &if_ours(dir.path())).unwrap(),
            RestoreOutcome::LeftAlone {
                current: "|/usr/bin/other %p".into()
            }
        );
        assert!(matches!(
            restore(&sys, &o.spool, &RestoreMode::Force).unwrap(),
            RestoreOutcome::Restored { .. }
        ));
        assert_eq!(sys.read_pattern().unwrap(), "core");
    }

    /// A rolling update with maxSurge: the new agent starts while the old
    /// one holds the lock; the old one's restore (preStop, then its own on
    /// exit) leaves the pattern for it, and the new one keeps the node's
    /// original as the previous pattern.
    #[test]
    fn an_agent_with_a_successor_hands_the_pattern_over() {
        let dir = tempfile::tempdir().unwrap();
        let (lock, next) = (dir.path().join("lock"), dir.path().join("next.lock"));
        let sys = fake_sysctls(dir.path(), "|/usr/bin/previous %p", 3);
        let o = opts(dir.path());
        let old = PatternLock::acquire_at(&lock).unwrap();
        let st = install(&sys, &o).unwrap();
        assert!(!successor_waiting(&next).unwrap());

        let (tx, rx) = std::sync::mpsc::channel();
        let (l2, n2, sys2, o2) = (lock.clone(), next.clone(), sys.clone(), o.clone());
        let new = std::thread::spawn(move || {
            let _l = PatternLock::acquire_or_succeed(&l2, &n2, || tx.send(()).unwrap()).unwrap();
            install(&sys2, &o2).unwrap()
        });
        rx.recv().unwrap();
        assert!(successor_waiting(&next).unwrap());
        for _ in 0..2 {
            assert_eq!(
                restore(&sys, &o.spool, &if_ours(dir.path())).unwrap(),
                RestoreOutcome::HandedOver
            );
            assert_eq!(sys.read_pattern().unwrap(), st.installed_pattern);
            assert_eq!(sys.read_pipe_limit().unwrap(), 16);
        }
        drop(old);
        let taken = new.join().unwrap();
        assert_eq!(taken.previous_pattern, "|/usr/bin/previous %p");
        assert_eq!(taken.previous_pipe_limit, 3);
        assert!(
            !successor_waiting(&next).unwrap(),
            "announced only while waiting"
        );
        // With no successor left, the new agent's restore is a restore.
        assert_eq!(
            restore(&sys, &o.spool, &if_ours(dir.path())).unwrap(),
            RestoreOutcome::Restored {
                pattern: "|/usr/bin/previous %p".into(),
                pipe_limit: 3
            }
        );
    }

    #[test]
    fn force_restores_even_with_a_successor_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let sys = fake_sysctls(dir.path(), "core", 0);
        let o = opts(dir.path());
        install(&sys, &o).unwrap();
        let _waiting = flock(&dir.path().join("next.lock"), false).unwrap();
        assert!(matches!(
            restore(&sys, &o.spool, &RestoreMode::Force).unwrap(),
            RestoreOutcome::Restored { .. }
        ));
        assert_eq!(sys.read_pattern().unwrap(), "core");
    }

    #[test]
    fn too_long_is_refused_before_touching_anything() {
        let dir = tempfile::tempdir().unwrap();
        let sys = fake_sysctls(dir.path(), "core", 0);
        let o = InstallOptions {
            handler: format!("/{}", "h".repeat(120)).into(),
            ..opts(dir.path())
        };
        assert!(matches!(
            install(&sys, &o),
            Err(InstallError::Pattern(PatternError::TooLong { .. }))
        ));
        assert_eq!(sys.read_pattern().unwrap(), "core");
        assert_eq!(sys.read_pipe_limit().unwrap(), 0);
    }

    #[test]
    fn guard_restores_on_panic() {
        let dir = tempfile::tempdir().unwrap();
        let sys = fake_sysctls(dir.path(), "core", 0);
        let lock = PatternLock::acquire_at(&dir.path().join("lock")).unwrap();
        let s2 = sys.clone();
        let r = std::panic::catch_unwind(move || {
            let _g = CorePatternGuard::save_with(s2.clone(), lock).unwrap();
            s2.write_pattern("|/x").unwrap();
            s2.write_pipe_limit(4).unwrap();
            panic!("test failure");
        });
        assert!(r.is_err());
        assert_eq!(sys.read_pattern().unwrap(), "core");
        assert_eq!(sys.read_pipe_limit().unwrap(), 0);
    }
}
