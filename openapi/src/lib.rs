//! The `coredump.io/v1alpha1` API, as pure data: no I/O.
//!
//! - [`types`]: the `Coredump` and `CoredumpQuota` kinds, their names and labels, byte-quantity
//!   and duration helpers, and the validation the server applies.
//! - [`discovery`]: the discovery documents (`APIResourceList`, `APIGroup`, `APIGroupList`, and
//!   aggregated discovery).
//! - [`openapi`]: the OpenAPI v2 and v3 documents, generated from the types and checked in as
//!   `openapi-v2.json` / `openapi-v3.json`.
//!
//! Everything a client or server needs to agree on lives here, so that the node handler, the
//! extension API server and the tests cannot drift apart.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod discovery;
pub mod openapi;
pub mod types;

pub use types::{
    Coredump, CoredumpPhase, CoredumpQuota, CoredumpQuotaSpec, CoredumpQuotaStatus, CoredumpReason,
    CoredumpSpec, CoredumpStatus, CrashAnalysis, CrashGroup, EventReason, FieldError, KindInfo,
    SubresourceInfo, COREDUMP, COREDUMP_QUOTA, CRASH_GROUP,
};

/// The API group.
pub const GROUP: &str = "coredump.io";
/// The only version of the group.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of every object of the group.
pub const API_VERSION: &str = "coredump.io/v1alpha1";
