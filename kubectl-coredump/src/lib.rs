//! `kubectl coredump`: the kubectl plugin for the core dumps of crashed containers.
//!
//! Everything goes through kube-apiserver (the aggregator) with the user's kubeconfig, so
//! RBAC applies exactly as to kubectl. Modules: [`cli`] (flags), [`client`] (connecting,
//! and the one place errors become kubectl's wording), [`render`] (tables and pages,
//! pure), [`download`] (pieces, resume, verification), [`commands`].

#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
pub mod commands;
pub mod download;
pub mod render;

#[cfg(test)]
mod tests {
    /// The krew manifest in the repository installs this binary.
    #[test]
    fn the_krew_manifest_names_the_plugin_binary() {
        let text = include_str!("../krew/coredump.yaml");
        let m: serde_json::Value = serde_yaml::from_str(text).expect("yaml");
        assert_eq!(m["kind"], "Plugin");
        assert_eq!(m["metadata"]["name"], "coredump");
        let p = &m["spec"]["platforms"][0];
        assert_eq!(p["bin"], "kubectl-coredump");
        assert_eq!(p["files"][0]["from"], "kubectl-coredump");
        assert!(m["spec"]["shortDescription"]
            .as_str()
            .is_some_and(|d| d.len() < 80));
    }
}
