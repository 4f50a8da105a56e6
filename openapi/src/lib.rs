//! The `coredump.io` API: group/version constants, the `Coredump` and `CoredumpQuota`
//! types, discovery documents and the OpenAPI documents served by the extension server.

pub const GROUP: &str = "coredump.io";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "coredump.io/v1alpha1";
