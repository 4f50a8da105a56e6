//! Where a running control plane is: its directory, binaries, URL, kubeconfig and the
//! certificate files a client needs. Plain data with no behaviour, so that every client
//! (kubectl, curl, the extension server, the agent) depends on it and not on
//! [`crate::controlplane`], which starts the processes and itself uses those clients:
//! the dependencies go one way, from the control plane to its clients to this module.

use std::path::PathBuf;

use crate::pki::PairFiles;

/// Paths of everything a client of the control plane needs.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub dir: PathBuf,
    pub bin_dir: PathBuf,
    pub server: String,
    /// Admin kubeconfig (system:masters), with contexts `alice` and `bob` as well.
    pub kubeconfig: PathBuf,
    pub ca_cert: PathBuf,
    pub front_proxy_ca: PathBuf,
    /// A client certificate signed by the front-proxy CA with a name the aggregator does not
    /// use: for tests that a server trusts only the allowed names.
    pub front_proxy_other: PairFiles,
    pub front_proxy_client: PairFiles,
    pub sa_key: PathBuf,
    /// With [`crate::controlplane::Options::node`]: the kubelet's kubeconfig.
    pub kubelet_kubeconfig: Option<PathBuf>,
}
