//! Which cores are being written right now: at most one writer per Coredump (by uid).
//!
//! Invariant: a blob is created, committed and, if its object can no longer take it,
//! removed only by the holder of its uid's [`UploadGuard`]. A second upload of the same
//! Coredump is refused (409) before its body is read, and maintenance takes the guard
//! before it removes a leftover blob, so neither can delete a core another one stored.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Default)]
pub struct Uploads {
    busy: Mutex<HashSet<String>>,
}

/// Held while one upload (or one maintenance decision) owns a uid's blob.
pub struct UploadGuard {
    uploads: Arc<Uploads>,
    uid: String,
}

impl Uploads {
    /// The guard for `uid`, or `None` when someone else holds it.
    pub fn try_begin(self: &Arc<Self>, uid: &str) -> Option<UploadGuard> {
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        busy.insert(uid.to_string()).then(|| UploadGuard {
            uploads: Arc::clone(self),
            uid: uid.to_string(),
        })
    }
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        let mut busy = self
            .uploads
            .busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        busy.remove(&self.uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_per_uid_until_dropped() {
        let u = Arc::new(Uploads::default());
        let a = u.try_begin("a").expect("first");
        assert!(u.try_begin("a").is_none(), "second holder refused");
        let b = u.try_begin("b").expect("another uid is independent");
        drop(a);
        assert!(u.try_begin("a").is_some(), "free again once dropped");
        drop(b);
    }
}
