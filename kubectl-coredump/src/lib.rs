//! `kubectl coredump`: the kubectl plugin for the core dumps of crashed containers.
//!
//! Everything goes through kube-apiserver (the aggregator) with the user's kubeconfig, so
//! RBAC applies exactly as to kubectl. Modules: [`cli`] (flags), [`client`] (connecting,
//! and the one place errors become kubectl's wording), [`render`] (tables and pages,
//! pure), [`download`] (pieces, resume, verification), [`commands`].

pub mod cli;
pub mod client;
pub mod commands;
pub mod download;
pub mod render;
