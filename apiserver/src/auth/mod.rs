//! Who is making a request. Authentication and authorization plug into the request path
//! in `http::context`; this module holds the identity they produce.

use std::collections::BTreeMap;

/// An authenticated user, as Kubernetes describes one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}
