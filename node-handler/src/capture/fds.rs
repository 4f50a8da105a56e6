//! The handler's file descriptors and deadline as the kernel starts it: fd 0
//! is the core pipe, `%F` a pidfd of the crasher, fds 1 and 2 may be closed.
//!
//! Invariants:
//! - The only unsafe code of `capture` is here, each block with its SAFETY
//!   comment, and only for fds the kernel opened before `main` (0-2 and the
//!   `%F` pidfd), which nothing closes while we run.
//! - The crasher is held until fd 0 is closed: [`release_stdin`] is what
//!   lets it go, and may be called more than once.
//! - A SIGALRM (`set_hard_deadline`) bounds the whole handler, also a
//!   syscall stuck in the kernel.

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::fcntl::{fcntl, FcntlArg};

/// Grace after the soft deadline before SIGALRM kills the handler outright
/// (a read blocked in the kernel cannot be interrupted otherwise).
const HARD_DEADLINE_GRACE: u32 = 10;

/// SIGALRM's default action ends the handler: the one bound that also
/// holds when a syscall is stuck.
pub(super) fn set_hard_deadline(seconds: u64) {
    let secs = u32::try_from(seconds)
        .unwrap_or(u32::MAX)
        .saturating_add(HARD_DEADLINE_GRACE);
    nix::unistd::alarm::set(secs);
}

/// The kernel's pidfd at `fd`, if that fd is open.
pub(super) fn borrow_pidfd(fd: i32) -> Option<BorrowedFd<'static>> {
    if fd < 0 || fcntl(unsafe_borrow(fd), FcntlArg::F_GETFD).is_err() {
        return None;
    }
    Some(unsafe_borrow(fd))
}

#[allow(unsafe_code)] // FFI: see the SAFETY comment at the unsafe block
fn unsafe_borrow(fd: i32) -> BorrowedFd<'static> {
    // SAFETY: only used for fds the kernel opened for this process before
    // main (0-2 and the %F pidfd), which nothing closes while we run.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Makes sure fds 0-2 are open: the kernel starts the handler with only
/// stdin, and a file opened later must not land on fd 1 or 2.
#[allow(unsafe_code)] // FFI: see the SAFETY comment at the unsafe block
pub fn ensure_std_fds() {
    for fd in 0..=2 {
        if fcntl(unsafe_borrow(fd), FcntlArg::F_GETFD).is_err() {
            if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
                let raw = null.as_raw_fd();
                if raw != fd {
                    // SAFETY: dup2 onto a closed standard fd number.
                    unsafe { nix::libc::dup2(raw, fd) };
                } else {
                    // It landed on the right number: keep it open.
                    std::mem::forget(null);
                }
            }
        }
    }
}

/// Replaces stdin with /dev/null: the kernel waits for the pipe's reader to
/// go away before it lets the crashing process finish.
#[allow(unsafe_code)] // FFI: see the SAFETY comment at the unsafe block
pub fn release_stdin() {
    if let Ok(null) = File::open("/dev/null") {
        // SAFETY: dup2 onto fd 0, which we own for the process lifetime.
        unsafe { nix::libc::dup2(null.as_raw_fd(), 0) };
    }
}
