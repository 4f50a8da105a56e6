//! Where the binaries the harness runs come from: the control plane from the pinned Go
//! module (built once into a cache outside the repository), ours from this workspace.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::Error;

/// The directory holding etcd, kube-apiserver, kube-controller-manager and kubectl.
/// `COREDUMP_CONTROLPLANE_BIN` overrides; otherwise `controlplane/build.sh` builds or finds
/// them (it prints the directory and builds nothing when the cache is complete).
pub fn controlplane_bin_dir() -> Result<PathBuf, Error> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(dir) = std::env::var("COREDUMP_CONTROLPLANE_BIN") {
            return Ok(PathBuf::from(dir));
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("controlplane/build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .output()
            .map_err(|e| format!("run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed:\n{}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    })
    .clone()
    .map_err(Error::Setup)
}

/// A binary of this workspace, e.g. `coredump-apiserver`: `COREDUMP_<NAME>_BIN` overrides,
/// else it is looked up beside the running test binary (`target/<profile>/`). `make test`
/// builds the binaries before the tests run.
pub fn workspace_bin(name: &str) -> Result<PathBuf, Error> {
    let var = format!(
        "COREDUMP_{}_BIN",
        name.trim_start_matches("coredump-")
            .replace('-', "_")
            .to_uppercase()
    );
    if let Ok(path) = std::env::var(&var) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|e| Error::Io("current_exe".into(), e))?;
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    let candidates = exe
        .ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join(name))
        .collect::<Vec<_>>();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            Error::Setup(format!(
                "{name} not found in {candidates:?}: run `cargo build --workspace --bins` first or set {var}"
            ))
        })
}
