//! Delivery of one spool entry to the extension API server: POST the
//! `Coredump`, then PUT the compressed core to its `upload` subresource.
//!
//! The parts, each with its own invariants:
//! - [`client`]: the HTTPS client ([`ServerClient`]), one connection per
//!   request, the core streamed from the spool file so memory stays flat
//!   whatever its size, and refusals read as answers, not broken pipes;
//! - [`object`]: the `Coredump` a spool entry becomes, and its stable names;
//! - [`retry`]: the steps from create to stored for one core ([`deliver`]),
//!   driven through the [`Transport`] trait, and what each answer means
//!   ([`classify`]).
//!
//! Idempotence: the Coredump's name is derived from the node, the spool ID
//! and the core's checksum, so a retry after a lost response finds its own
//! object (409 AlreadyExists → GET) and carries on from its phase. The
//! local copy is deleted by the caller only once the server has it.
//!
//! Nothing here waits between attempts: a delivery that fails returns its
//! [`DeliverError`], and the caller (the agent) keeps the core in the spool
//! and decides when to try again.

pub mod client;
pub mod object;
pub mod retry;

pub use client::{ClientError, Reply, ServerClient, ServerOptions, CONTINUE_WAIT};
pub use object::{build_coredump, container_name, coredump_name};
pub use retry::{classify, deliver, Class, Transport};

/// Why a delivery did not finish.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// Worth retrying later: the server is unreachable, overloaded, or
    /// refused us for now (a token being rotated, RBAC not applied yet).
    #[error("{0}")]
    Transient(String),
    /// Refused for this core (403): the server's node restriction (a node
    /// identity may only report pods that exist and are bound to its node)
    /// or RBAC. Final: the same request gets the same answer.
    #[error("{0}")]
    Forbidden(String),
    /// This core cannot be taken right now (409: an earlier attempt's upload
    /// is still in progress, or a create raced): retried for this core
    /// alone, a bounded number of times.
    #[error("{0}")]
    Busy(String),
    /// Retrying cannot help: the server judged the object or core invalid.
    #[error("{0}")]
    Invalid(String),
    /// The local entry cannot be read.
    #[error("{0}")]
    Local(String),
}

/// How a delivered core ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// The server has the core. `uploaded` is false when an earlier
    /// attempt had already uploaded it (its answer was lost).
    Stored { name: String, uploaded: bool },
    /// The namespace's quota had no room; the server keeps the record only.
    Rejected { name: String, message: String },
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! A spool entry and its attribution, shared by the tests of the parts.
    use crate::pods::Attribution;
    use crate::spool::{CrashInfo, HandlerStats, SpoolEntry, FORMAT_VERSION};

    pub(crate) fn entry() -> SpoolEntry {
        SpoolEntry {
            format_version: FORMAT_VERSION,
            id: "1700000000-4242".into(),
            crash: CrashInfo {
                host_pid: 4242,
                host_tid: 4243,
                container_pid: Some(7),
                signal: 11,
                signal_name: Some("SIGSEGV".into()),
                dump_time: 1_700_000_000,
                comm: "app".into(),
                executable: "/usr/bin/app".into(),
                command_line: vec!["/usr/bin/app".into(), "--serve".into()],
                uid: 1000,
                gid: 1000,
                dumpable: 1,
                rlimit_core: u64::MAX,
                pod_uid: Some("0b6e2b53-6a8e-4c3c-9d0e-1f2a3b4c5d6e".into()),
                container_id: Some("ab".repeat(32)),
                container_runtime: Some("cri-containerd".into()),
                proc_verified: true,
                ..Default::default()
            },
            raw_size: 1 << 20,
            stored_size: 12345,
            sha256: "0f".repeat(32),
            truncated: false,
            truncated_by: None,
            compression: "zstd".into(),
            handler: HandlerStats::default(),
        }
    }

    pub(crate) fn attr() -> Attribution {
        Attribution {
            pod_name: "web-0".into(),
            namespace: "shop".into(),
            pod_uid: "0b6e2b53-6a8e-4c3c-9d0e-1f2a3b4c5d6e".into(),
            container_name: Some("app".into()),
            container_id: Some(format!("containerd://{}", "ab".repeat(32))),
            image: Some("registry/app:1".into()),
            opted_out: false,
            spec_containers: vec!["app".into(), "sidecar".into()],
            deleted: false,
        }
    }
}
