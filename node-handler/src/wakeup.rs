//! A wake-up for the delivery loop: inotify on `cores/`, where capture renames each
//! finished entry, so a crash is delivered at once instead of at the next poll.
//!
//! The poll stays: inotify can overflow its queue, misses entries left from before a
//! restart, and is not on every filesystem a hostPath may be. A wake-up that cannot be
//! set up is logged and the agent polls alone.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;

/// tokio's AsyncFd wants `AsRawFd`, nix's Inotify offers `AsFd`.
struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

pub struct Wakeup(AsyncFd<Fd>);

impl Wakeup {
    /// Watches `dir` for entries moved into it. Needs a tokio runtime.
    #[allow(unsafe_code)] // FFI: see the SAFETY comment at the unsafe block
    pub fn new(dir: &Path) -> Result<Self, std::io::Error> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        inotify.add_watch(dir, AddWatchFlags::IN_MOVED_TO)?;
        // SAFETY: `Fd` owns the descriptor (nix's Inotify holds an OwnedFd) and is only
        // dropped with the AsyncFd, so it stays open and the same for its whole lifetime.
        let fd = unsafe { AsyncFd::register(Fd(inotify)) }.map_err(std::io::Error::from)?;
        Ok(Self(fd))
    }

    /// Returns once something was moved into the directory since the last call (at once
    /// if it already was). Never returns if the descriptor fails: the poll goes on.
    pub async fn changed(&self) {
        loop {
            let Ok(mut ready) = self.0.readable().await else {
                return std::future::pending().await;
            };
            match ready.get_inner().0.read_events() {
                Ok(events) if !events.is_empty() => return,
                Ok(_) | Err(Errno::EAGAIN) => ready.clear_ready(),
                Err(Errno::EINTR) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "inotify on the spool failed; polling only");
                    return std::future::pending().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn wakes_on_a_rename_into_the_directory_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cores = dir.path().join("cores");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&cores).expect("mkdir");
        std::fs::create_dir_all(tmp.join("1-2")).expect("mkdir");
        let w = Wakeup::new(&cores).expect("inotify");
        let quiet = tokio::time::timeout(Duration::from_millis(200), w.changed()).await;
        assert!(quiet.is_err(), "woke with nothing moved");
        std::fs::rename(tmp.join("1-2"), cores.join("1-2")).expect("rename");
        tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .expect("woken by the rename");
        // Consumed: the next wait sleeps again.
        let quiet = tokio::time::timeout(Duration::from_millis(200), w.changed()).await;
        assert!(quiet.is_err(), "woke twice for one rename");
    }
}
