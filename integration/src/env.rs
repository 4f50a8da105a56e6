//! A control plane with the extension server, shared by the tests of one test binary.
//! Tests isolate themselves by namespace ([`TestEnv::namespace`]); tests that kill or
//! reconfigure the server start their own with [`TestEnv::start`]. The server keeps its
//! cores on a [`Backend`] the test chooses: its data directory, or a bucket of a real S3
//! server ([`crate::s3::S3Server`]) started with the environment.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::bins::{controlplane_bin_dir, workspace_bin};
use crate::controlplane::{self, ControlPlane};
use crate::extension::{self, ExtensionServer};
use crate::kubectl::Kubectl;
use crate::process::Lifetime;
use crate::s3::S3Server;
use crate::Error;

/// Where the extension server keeps the cores' bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Files under the server's `--data-dir` (`cores/<namespace>/<name>_<uid>.zst`).
    Filesystem,
    /// Objects `<S3_PREFIX>/<namespace>/<name>_<uid>.zst` in a bucket of a versitygw
    /// started with the environment (`--object-store-*` flags, credentials in `AWS_*`).
    S3,
}

/// The key prefix of the cores in the S3 backend's bucket.
pub const S3_PREFIX: &str = "cores";

pub struct TestEnv {
    pub cp: ControlPlane,
    pub backend: Backend,
    server: Mutex<ExtensionServer>,
    /// With [`Backend::S3`]: the bucket's server (dropped after the extension server).
    s3: Option<S3Server>,
    _dir: tempfile::TempDir,
}

impl TestEnv {
    /// A private control plane and extension server on the filesystem backend, ended when
    /// the value drops.
    pub fn start(
        cp_opts: controlplane::Options,
        ext_opts: extension::Options,
    ) -> Result<Self, Error> {
        Self::start_on(Backend::Filesystem, cp_opts, ext_opts)
    }

    /// A private control plane and extension server keeping cores on `backend`, ended
    /// when the value drops.
    pub fn start_on(
        backend: Backend,
        cp_opts: controlplane::Options,
        mut ext_opts: extension::Options,
    ) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("coredump-it-")
            .tempdir()
            .map_err(|e| Error::Io("tempdir".into(), e))?;
        register_cleanup(dir.path().to_path_buf());
        let bin_dir = controlplane_bin_dir()?;
        let s3 = match backend {
            Backend::Filesystem => None,
            Backend::S3 => {
                let s3 = S3Server::start_in(&dir.path().join("s3"), Lifetime::Scoped)?;
                ext_opts.args.extend(s3.server_args(S3_PREFIX));
                ext_opts.env.extend(s3.server_env());
                Some(s3)
            }
        };
        let cp = ControlPlane::start(dir.path(), &bin_dir, &cp_opts)?;
        let server = ExtensionServer::start(
            &cp.endpoints,
            "apiserver",
            &workspace_bin("coredump-apiserver")?,
            ext_opts,
        )?;
        Ok(Self {
            cp,
            backend,
            server: Mutex::new(server),
            s3,
            _dir: dir,
        })
    }

    /// The environment shared by all tests of this test binary, with default options.
    pub fn shared() -> &'static TestEnv {
        Self::shared_on(Backend::Filesystem)
    }

    /// The environment on `backend` shared by all tests of this test binary, with default
    /// options.
    pub fn shared_on(backend: Backend) -> &'static TestEnv {
        static FS: OnceLock<TestEnv> = OnceLock::new();
        static S3: OnceLock<TestEnv> = OnceLock::new();
        let cell = match backend {
            Backend::Filesystem => &FS,
            Backend::S3 => &S3,
        };
        cell.get_or_init(|| Self::start_shared_on(backend, Default::default(), Default::default()))
    }

    /// Starts an environment meant to live as long as the test binary (keep it in a
    /// `static`): the kernel kills its processes when the test binary ends in any way
    /// (parent-death signal), and an exit hook ends them and removes their files on a
    /// normal exit. Panics if it cannot start: every test using it would fail anyway.
    pub fn start_shared(cp_opts: controlplane::Options, ext_opts: extension::Options) -> TestEnv {
        Self::start_shared_on(Backend::Filesystem, cp_opts, ext_opts)
    }

    /// [`TestEnv::start_shared`] on `backend`.
    pub fn start_shared_on(
        backend: Backend,
        cp_opts: controlplane::Options,
        ext_opts: extension::Options,
    ) -> TestEnv {
        TestEnv::start_on(backend, cp_opts, ext_opts).unwrap_or_else(|e| {
            panic!("test environment on the {backend:?} backend failed to start: {e}")
        })
    }

    /// The S3 server of a [`Backend::S3`] environment.
    pub fn s3(&self) -> Option<&S3Server> {
        self.s3.as_ref()
    }

    /// The stored cores of namespace `ns`, as the backend holds them, sorted: file names
    /// under `<data-dir>/cores/<ns>/`, or the object keys under `<S3_PREFIX>/<ns>/`
    /// (listed through S3) without that prefix. Both read `<name>_<uid>.zst`.
    pub fn stored_cores(&self, ns: &str) -> Vec<String> {
        match &self.s3 {
            None => {
                let dir = self.server().dir.join("data/cores").join(ns);
                let mut names: Vec<String> = std::fs::read_dir(dir)
                    .map(|d| {
                        d.flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                names.sort();
                names
            }
            Some(s3) => {
                let prefix = format!("{S3_PREFIX}/{ns}/");
                s3.keys(&prefix)
                    .unwrap_or_else(|e| panic!("list {prefix}: {e}"))
                    .iter()
                    .map(|k| k.trim_start_matches(&prefix).to_string())
                    .collect()
            }
        }
    }

    /// The partial uploads of the Coredump with `uid` in `ns` that the backend holds (none
    /// once an upload completed, failed or was aborted): files `<uid>.*` in the filesystem
    /// backend's `.tmp`, or multipart uploads of `<S3_PREFIX>/<ns>/<name>_<uid>.zst` in
    /// progress.
    pub fn partial_uploads(&self, ns: &str, uid: &str) -> Vec<String> {
        let mut out: Vec<String> = match &self.s3 {
            None => {
                let dir = self.server().dir.join("data/cores/.tmp");
                std::fs::read_dir(dir)
                    .map(|d| {
                        d.flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .filter(|n| n.starts_with(&format!("{uid}.")))
                            .collect()
                    })
                    .unwrap_or_default()
            }
            Some(s3) => s3
                .multipart_uploads(&format!("{S3_PREFIX}/{ns}/"))
                .unwrap_or_else(|e| panic!("list multipart uploads: {e}"))
                .into_iter()
                .filter(|k| k.ends_with(&format!("_{uid}.zst")))
                .collect(),
        };
        out.sort();
        out
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
        // SAFETY: atexit only stores the pointer; `cleanup` is a static `extern "C" fn()`
        // (valid for the whole program) that touches only a static Mutex and the file
        // system, and a panic in it aborts instead of unwinding into libc.
        #[allow(unsafe_code)]
        unsafe {
            libc::atexit(cleanup);
        }
    });
}

/// Runs each listed test body `fn name(backend: Backend)` once per backend, as the tests
/// `fs::name` and `s3::name` (so `cargo test -- s3::` runs one backend).
#[macro_export]
macro_rules! on_each_backend {
    ($($name:ident),+ $(,)?) => {
        mod fs {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::env::Backend::Filesystem)
                }
            )+
        }
        mod s3 {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::env::Backend::S3)
                }
            )+
        }
    };
}
