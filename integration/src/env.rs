//! A control plane with the extension server, shared by the tests of one test binary.
//! Tests isolate themselves by namespace ([`TestEnv::namespace`]); tests that kill or
//! reconfigure the server start their own with [`TestEnv::start`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::bins::{controlplane_bin_dir, workspace_bin};
use crate::controlplane::{self, ControlPlane};
use crate::extension::{self, ExtensionServer};
use crate::kubectl::Kubectl;
use crate::Error;

pub struct TestEnv {
    pub cp: ControlPlane,
    server: Mutex<ExtensionServer>,
    _dir: tempfile::TempDir,
}

impl TestEnv {
    /// A private control plane and extension server, ended when the value drops.
    pub fn start(
        cp_opts: controlplane::Options,
        ext_opts: extension::Options,
    ) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("coredump-it-")
            .tempdir()
            .map_err(|e| Error::Io("tempdir".into(), e))?;
        let bin_dir = controlplane_bin_dir()?;
        let cp = ControlPlane::start(dir.path(), &bin_dir, &cp_opts)?;
        let server = ExtensionServer::start(
            &cp.endpoints,
            "apiserver",
            &workspace_bin("coredump-apiserver")?,
            ext_opts,
        )?;
        register_cleanup(dir.path().to_path_buf());
        Ok(Self {
            cp,
            server: Mutex::new(server),
            _dir: dir,
        })
    }

    /// The environment shared by all tests of this test binary, with default options.
    pub fn shared() -> &'static TestEnv {
        static ENV: OnceLock<TestEnv> = OnceLock::new();
        ENV.get_or_init(|| Self::start_shared(Default::default(), Default::default()))
    }

    /// Starts an environment meant to live as long as the test binary (keep it in a
    /// `static`): the kernel kills its processes when the test binary ends in any way
    /// (parent-death signal), and an exit hook ends them and removes their files on a
    /// normal exit. Panics if it cannot start: every test using it would fail anyway.
    pub fn start_shared(cp_opts: controlplane::Options, ext_opts: extension::Options) -> TestEnv {
        TestEnv::start(cp_opts, ext_opts)
            .unwrap_or_else(|e| panic!("test environment failed to start: {e}"))
    }

    pub fn kubectl(&self) -> Kubectl {
        self.cp.kubectl()
    }

    /// The extension server, e.g. to read its URL or restart it.
    pub fn server(&self) -> MutexGuard<'_, ExtensionServer> {
        self.server.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The extension server directly (not through the aggregator), as the cluster admin:
    /// a client certificate in `system:masters` from the cluster CA.
    pub fn direct_admin(&self) -> crate::curl::Curl {
        let pki = self.cp.endpoints.dir.join("pki");
        let server = self.server();
        crate::curl::Curl {
            base: server.url.clone(),
            ca: server.ca_cert.clone(),
            cred: crate::curl::Credential::Cert {
                cert: pki.join("admin.crt"),
                key: pki.join("admin.key"),
            },
        }
    }

    /// Creates a fresh namespace `<prefix>-<n>` for one test.
    pub fn namespace(&self, prefix: &str) -> Result<String, Error> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.kubectl().ok(&["create", "namespace", &name])?;
        Ok(name)
    }
}

/// Directories removed when the process exits, for environments that never drop.
fn register_cleanup(dir: PathBuf) {
    static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    static HOOK: OnceLock<()> = OnceLock::new();
    extern "C" fn cleanup() {
        crate::process::kill_scoped();
        if let Ok(dirs) = DIRS.lock() {
            for d in dirs.iter() {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
    if let Ok(mut dirs) = DIRS.lock() {
        dirs.push(dir);
    }
    HOOK.get_or_init(|| {
        // SAFETY: registering a plain extern "C" function with no arguments.
        unsafe {
            libc::atexit(cleanup);
        }
    });
}
