//! The `agent` mode (the DaemonSet): installs the capture handler, keeps
//! `optout.json` current from its pod and namespace watches, delivers every
//! complete spool entry to the server and counts what was dropped.
//!
//! The spool is polled (every `poll_interval`, 100 ms by default): a readdir
//! of `cores/` is cheap, and polling cannot miss an entry (inotify queue
//! overflow, entries left from before a restart, filesystems without
//! inotify). Beside the poll, inotify on `cores/` ([`crate::wakeup`]) starts
//! a round as soon as capture moves an entry in, so a crash does not wait
//! for the next poll (BENCHMARKS.md: the poll interval was most of
//! crash → Stored).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::{field, info, warn, Instrument};

use crate::analysis::sandbox::{self, SandboxOptions};
use crate::analysis::ANALYSIS_FILE;
use crate::config::{CaptureConfig, ConfigError};
use crate::deliver::{self, DeliverError, Delivered, ServerClient, ServerOptions};
use crate::events::{self, Recorder};
use crate::install::{self, InstallError, InstallOptions, PatternLock, PidfdMode, Sysctls};
use crate::metrics::{self, Metrics};
use crate::pods::{self, SharedIndex};
use crate::spool::{DropReason, Spool, SpoolEntry, SpoolError, CORE_FILE};
use crate::wakeup::Wakeup;

/// First wait after a failed delivery; doubled per failure up to
/// `max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// The delivery loop's backoff while the server cannot take anything: doubles from
/// [`FIRST_BACKOFF`] per failure up to `max`, gone after a success. A `max` below the
/// first step is honoured (every wait is `max`): `Duration::clamp` with a floor above
/// its ceiling panics, which a small `--max-backoff` made the agent do at the first
/// failed delivery. Pure: the caller draws the jitter.
#[derive(Clone, Copy, Debug)]
struct Backoff {
    current: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Self {
            current: Duration::ZERO,
            max,
        }
    }

    /// The wait after one more failure, times `jitter` (0.8..1.2 in the agent).
    fn failed(&mut self, jitter: f64) -> Duration {
        self.current = self
            .current
            .saturating_mul(2)
            .max(FIRST_BACKOFF)
            .min(self.max);
        self.current.mul_f64(jitter)
    }

    fn succeeded(&mut self) {
        self.current = Duration::ZERO;
    }
}

/// The wait before a core the server refused (a race, 409) is tried again, after
/// `refusals` in a row: doubling per refusal, at most `max`.
fn refusal_wait(refusals: u32, max: Duration) -> Duration {
    FIRST_BACKOFF.saturating_mul(1 << refusals.min(16)).min(max)
}
/// How often an entry waiting for its pod is looked at again.
const ATTRIBUTION_RETRY: Duration = Duration::from_secs(1);
/// Drop records handled per pass, so a burst cannot stall delivery.
const DROPS_PER_PASS: usize = 1000;
const STALE_TMP_EVERY: Duration = Duration::from_secs(60);
/// Time the watches and the metrics server get to stop.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Kubernetes client: {0}")]
    Kube(String),
    #[error("server client: {0}")]
    Client(#[from] deliver::ClientError),
    #[error("background task: {0}")]
    Task(String),
}

/// Installing our core_pattern.
#[derive(Debug, Clone)]
pub struct InstallSettings {
    /// Copy this binary there and name it in the pattern (a path on the
    /// host, mounted at the same path in the agent's container); None uses
    /// this binary where it is.
    pub handler_path: Option<PathBuf>,
    pub pipe_limit: u32,
    pub pidfd: PidfdMode,
}

#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub node_name: String,
    pub spool: PathBuf,
    pub server: ServerOptions,
    /// None: in-cluster configuration (or $KUBECONFIG).
    pub kubeconfig: Option<PathBuf>,
    /// None (`--no-install`): someone else manages core_pattern.
    pub install: Option<InstallSettings>,
    pub metrics_addr: SocketAddr,
    pub poll_interval: Duration,
    /// How long a core waits for its pod to appear in the index.
    pub pod_wait: Duration,
    pub max_backoff: Duration,
    /// Written to `capture.json` at start.
    pub capture: CaptureConfig,
    /// None (`--no-analysis`): Coredumps carry no `spec.analysis`.
    pub analysis: Option<AnalysisSettings>,
}

/// How the agent analyzes each core before delivering it (see `analysis`).
#[derive(Debug, Clone)]
pub struct AnalysisSettings {
    pub sandbox: SandboxOptions,
    /// Where the kubelet keeps container logs (`/var/log/pods`); None
    /// (`--no-log-tail`): no log tail is read.
    pub log_root: Option<PathBuf>,
}

/// Our pattern is installed while this lives; dropping it (also when
/// unwinding) puts the previous one back and releases the lock.
struct Installed {
    spool: PathBuf,
    // Held for the agent's life: tests and scripts that follow the lock
    // protocol must not swap core_pattern under a running agent.
    _lock: PatternLock,
}

impl Drop for Installed {
    fn drop(&mut self) {
        match install::restore(
            &Sysctls::default(),
            &self.spool,
            &install::RestoreMode::if_ours(),
        ) {
            Ok(out) => info!(?out, "core_pattern restore"),
            Err(e) => warn!(error = %e, "restoring core_pattern"),
        }
    }
}

/// Copies this binary to `to` (via a temporary name, so a handler the
/// kernel is running right now is never overwritten in place), durably: the
/// kernel may run it right after a reboot.
fn copy_self(to: &Path) -> Result<(), AgentError> {
    let io = |what: String| move |source| AgentError::Io { what, source };
    let me = std::env::current_exe().map_err(io("finding this binary".into()))?;
    if me.canonicalize().ok() == to.canonicalize().ok() {
        return Ok(());
    }
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("mkdir {}", dir.display())))?;
    }
    let mut tmp = coredump_durable::AtomicFile::create(to, 0o755).map_err(|e| AgentError::Io {
        what: format!("create {}", e.path().display()),
        source: e.into_io(),
    })?;
    let copy_err = io(format!("copy to {}", tmp.temp_path().display()));
    std::fs::File::open(&me)
        .and_then(|mut src| std::io::copy(&mut src, tmp.file_mut()))
        .map_err(copy_err)?;
    // Not subject to the umask, as the kernel must be able to run it.
    tmp.file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(io(format!("chmod {}", tmp.temp_path().display())))?;
    tmp.commit().map_err(|e| AgentError::Io {
        what: format!("{} {}", e.op(), e.path().display()),
        source: e.into_io(),
    })
}

/// Installs the handler; `standing_by` is called if another agent holds the
/// pattern and this one waits to succeed it (see
/// [`install::SUCCESSOR_LOCK_PATH`]).
fn install_handler(
    spool: &Path,
    s: &InstallSettings,
    standing_by: impl FnOnce(),
) -> Result<Installed, AgentError> {
    let handler = match &s.handler_path {
        Some(p) => {
            copy_self(p)?;
            p.clone()
        }
        None => std::env::current_exe().map_err(|source| AgentError::Io {
            what: "finding this binary".into(),
            source,
        })?,
    };
    let opts = InstallOptions {
        handler,
        spool: spool.to_path_buf(),
        pipe_limit: s.pipe_limit,
        pidfd: s.pidfd,
    };
    // Fail on a too-long pattern before waiting for anyone's lock.
    install::pattern_for(&opts)?;
    info!(
        lock = install::PATTERN_LOCK_PATH,
        "taking the core_pattern lock"
    );
    let lock = PatternLock::acquire_or_succeed(
        Path::new(install::PATTERN_LOCK_PATH),
        Path::new(install::SUCCESSOR_LOCK_PATH),
        || {
            info!("another agent holds core_pattern; standing by to take it over when it stops");
            standing_by();
        },
    )?;
    let state = install::install(&Sysctls::default(), &opts)?;
    info!(
        pattern = state.installed_pattern,
        previous = state.previous_pattern,
        "capture handler installed"
    );
    Ok(Installed {
        spool: spool.to_path_buf(),
        _lock: lock,
    })
}

async fn kube_client(kubeconfig: Option<&Path>) -> Result<kube::Client, AgentError> {
    let err = |e: &dyn std::fmt::Display| AgentError::Kube(e.to_string());
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| err(&e))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| err(&e))?
        }
        None => kube::Config::infer().await.map_err(|e| err(&e))?,
    };
    kube::Client::try_from(config).map_err(|e| err(&e))
}

/// Runs until `shutdown` is cancelled, then restores core_pattern.
pub async fn run(opts: AgentOptions, shutdown: CancellationToken) -> Result<(), AgentError> {
    let spool = Spool::new(&opts.spool);
    spool.ensure_layout()?;
    opts.capture.store(&spool.config_path())?;
    let metrics = Metrics::new()?;
    let listener = metrics::bind(opts.metrics_addr)
        .await
        .map_err(|source| AgentError::Io {
            what: format!("binding {}", opts.metrics_addr),
            source,
        })?;
    let client = kube_client(opts.kubeconfig.as_deref()).await?;
    let server = ServerClient::new(&opts.server)?;

    // The watches and /readyz run while the agent waits for the pattern, so
    // that a successor in a rolling update becomes Ready (and the old agent
    // is stopped) while the old one still holds it.
    let cancel = shutdown.child_token();
    let index = SharedIndex::new();
    let mut tasks = start_background(&opts, &client, &index, &spool, &metrics, listener, &cancel);
    // Last of the start-up steps that can fail, so a bad flag never leaves
    // our pattern behind.
    let installed = match opts.install.clone() {
        Some(s) => {
            let root = opts.spool.clone();
            let m = metrics.clone();
            let done = tokio::task::spawn_blocking(move || {
                install_handler(&root, &s, || m.set_pattern_held())
            });
            tokio::select! {
                r = done => Some(r.map_err(|e| AgentError::Task(e.to_string()))??),
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
        None => None,
    };
    metrics.set_pattern_held();

    info!(
        node = opts.node_name,
        spool = %opts.spool.display(),
        server = opts.server.url,
        "agent running"
    );
    let mut d = Deliverer {
        recorder: Recorder::new(client, &opts.node_name),
        node: opts.node_name.clone(),
        pod_wait: opts.pod_wait,
        analysis: opts.analysis.clone(),
        stale_tmp_age: Duration::from_secs(2 * opts.capture.deadline_seconds + 60),
        spool,
        index,
        server,
        metrics,
        entries: HashMap::new(),
        backoff: Backoff::new(opts.max_backoff),
        paused_until: None,
        last_stale_sweep: None,
    };
    d.run(opts.poll_interval, &shutdown).await;
    cancel.cancel();
    let stop = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(STOP_GRACE, stop).await.is_err() {
        tasks.abort_all();
    }
    if let Some(i) = installed {
        let _ = tokio::task::spawn_blocking(move || drop(i)).await;
    }
    info!("agent stopped");
    Ok(())
}

/// The pod and namespace watches, `optout.json` and the metrics server;
/// stopped by `cancel` (or aborted when the set is dropped).
fn start_background(
    opts: &AgentOptions,
    client: &kube::Client,
    index: &SharedIndex,
    spool: &Spool,
    metrics: &Metrics,
    listener: tokio::net::TcpListener,
    cancel: &CancellationToken,
) -> tokio::task::JoinSet<()> {
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(pods::watch_pods(
        client.clone(),
        opts.node_name.clone(),
        index.clone(),
        cancel.clone(),
    ));
    tasks.spawn(pods::watch_namespaces(
        client.clone(),
        index.clone(),
        cancel.clone(),
    ));
    tasks.spawn(keep_optout(
        index.clone(),
        spool.clone(),
        metrics.clone(),
        cancel.clone(),
    ));
    let (m, c) = (metrics.clone(), cancel.clone());
    tasks.spawn(async move {
        if let Err(e) = metrics::serve(listener, m, c).await {
            warn!(error = %e, "metrics server stopped");
        }
    });
    tasks
}

/// Rewrites `optout.json` whenever the opt-out set changes, once the
/// watches have listed everything (an early, empty file would let opted-out
/// pods' cores through). Marks the index synced after the first write.
async fn keep_optout(
    index: SharedIndex,
    spool: Spool,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut written = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = index.changed.notified() => {}
        }
        let (synced, optout) = {
            let ix = index.lock();
            (ix.synced(), ix.optout())
        };
        if !synced || written.as_ref() == Some(&optout) {
            continue;
        }
        let path = spool.optout_path();
        let o = optout.clone();
        match tokio::task::spawn_blocking(move || o.store(&path)).await {
            Ok(Ok(())) => {
                info!(pods = optout.pod_uids.len(), "optout.json updated");
                written = Some(optout);
                metrics.set_synced();
            }
            // Tried again on the next change; the capture side keeps using
            // the previous file meanwhile.
            Ok(Err(e)) => warn!(error = %e, "writing optout.json"),
            Err(e) => warn!(error = %e, "writing optout.json"),
        }
    }
}

struct EntryState {
    first_seen: Instant,
    next_attempt: Instant,
    /// Refusals of this core in a row, for its own backoff.
    refusals: u32,
}

enum Step {
    /// Delivered or dropped: the local entry is gone.
    Done,
    /// Look again after this long (waiting for the pod index).
    Later(Duration),
    /// The server cannot take anything now: back off.
    Retry(DeliverError),
    /// This core met a race (409): back off for it alone.
    Refused(String),
}

struct Deliverer {
    spool: Spool,
    index: SharedIndex,
    server: ServerClient,
    recorder: Recorder,
    metrics: Metrics,
    node: String,
    pod_wait: Duration,
    analysis: Option<AnalysisSettings>,
    stale_tmp_age: Duration,
    entries: HashMap<String, EntryState>,
    backoff: Backoff,
    paused_until: Option<Instant>,
    last_stale_sweep: Option<Instant>,
}

impl Deliverer {
    async fn run(&mut self, poll: Duration, shutdown: &CancellationToken) {
        let wakeup = match Wakeup::new(&self.spool.cores_dir()) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(error = %e, "no inotify on the spool; polling only");
                None
            }
        };
        let woken = || async {
            match &wakeup {
                Some(w) => w.changed().await,
                None => std::future::pending().await,
            }
        };
        loop {
            let ids = self.housekeeping().await;
            self.track(&ids);
            for id in ids {
                let now = Instant::now();
                if self.paused_until.is_some_and(|t| now < t) {
                    break;
                }
                let due = self.entries.get(&id).is_some_and(|s| s.next_attempt <= now);
                if !due {
                    continue;
                }
                let step = tokio::select! {
                    s = self.process(&id) => s,
                    // An upload in flight is abandoned: the object stays
                    // Pending and the next agent finishes it.
                    _ = shutdown.cancelled() => return,
                };
                self.after(&id, step);
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = woken() => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Counts and clears drop records, updates the gauges, sweeps stale
    /// temporary files; returns the complete entries, oldest first.
    async fn housekeeping(&mut self) -> Vec<String> {
        let spool = self.spool.clone();
        let metrics = self.metrics.clone();
        let sweep = self
            .last_stale_sweep
            .is_none_or(|t| t.elapsed() >= STALE_TMP_EVERY);
        if sweep {
            self.last_stale_sweep = Some(Instant::now());
        }
        let stale_age = self.stale_tmp_age;
        let work = tokio::task::spawn_blocking(move || {
            count_drops(&spool, &metrics);
            if sweep {
                match spool.remove_stale_tmp(stale_age) {
                    Ok(0) => {}
                    Ok(n) => info!(removed = n, "removed abandoned captures from tmp/"),
                    Err(e) => warn!(error = %e, "sweeping tmp/"),
                }
            }
            match spool.total_bytes() {
                Ok(b) => metrics
                    .spool_bytes
                    .set(i64::try_from(b).unwrap_or(i64::MAX)),
                Err(e) => warn!(error = %e, "measuring the spool"),
            }
            let ids = spool.list_entries().unwrap_or_else(|e| {
                warn!(error = %e, "listing the spool");
                Vec::new()
            });
            metrics
                .spool_entries
                .set(i64::try_from(ids.len()).unwrap_or(i64::MAX));
            ids
        });
        work.await.unwrap_or_default()
    }

    fn track(&mut self, ids: &[String]) {
        let now = Instant::now();
        for id in ids {
            self.entries.entry(id.clone()).or_insert_with(|| {
                self.metrics.captured.inc();
                EntryState {
                    first_seen: now,
                    next_attempt: now,
                    refusals: 0,
                }
            });
        }
        if self.entries.len() > ids.len() {
            self.entries.retain(|id, _| ids.contains(id));
        }
    }

    fn after(&mut self, id: &str, step: Step) {
        let now = Instant::now();
        match step {
            Step::Done => {
                self.entries.remove(id);
                self.backoff.succeeded();
                self.paused_until = None;
            }
            Step::Later(d) => {
                if let Some(s) = self.entries.get_mut(id) {
                    s.next_attempt = now + d;
                }
            }
            Step::Refused(e) => {
                self.metrics.delivery_retries.inc();
                if let Some(s) = self.entries.get_mut(id) {
                    s.refusals = s.refusals.saturating_add(1);
                    let wait = refusal_wait(s.refusals, self.backoff.max);
                    s.next_attempt = now + wait;
                    warn!(entry = id, error = e, retry_in = ?wait, "the server cannot take the core yet; the core stays in the spool");
                }
            }
            Step::Retry(e) => {
                self.metrics.delivery_retries.inc();
                // ±20 % so a fleet of agents does not come back in step.
                let wait = self.backoff.failed(rand::rng().random_range(0.8..1.2));
                warn!(entry = id, error = %e, retry_in = ?wait, "delivery failed; the core stays in the spool");
                self.paused_until = Some(now + wait);
            }
        }
    }

    /// Drops an entry the agent cannot deliver.
    fn discard(&self, id: &str, reason: DropReason, detail: &str) -> Step {
        warn!(
            entry = id,
            reason = reason.as_str(),
            detail,
            "core not delivered"
        );
        self.metrics.dropped(reason);
        if let Err(e) = self.spool.delete_entry(id) {
            warn!(entry = id, error = %e, "deleting the spool entry");
        }
        Step::Done
    }

    async fn process(&self, id: &str) -> Step {
        let span = tracing::info_span!(
            "core",
            entry = id,
            namespace = field::Empty,
            pod = field::Empty,
            container = field::Empty,
            coredump = field::Empty,
        );
        self.process_inner(id, &span).instrument(span.clone()).await
    }

    async fn process_inner(&self, id: &str, span: &tracing::Span) -> Step {
        let entry = match self.spool.read_entry(id) {
            Ok(e) => e,
            Err(e) => return self.discard(id, DropReason::EntryUnreadable, &e.to_string()),
        };
        let Some(pod_uid) = entry.crash.pod_uid.clone() else {
            return self.discard(id, DropReason::PodUnknown, "no pod UID in the metadata");
        };
        // Capture files only container cgroups; an entry without an ID (an
        // older handler's, from a pod-level cgroup) names no container.
        let Some(container_id) = entry.crash.container_id.clone() else {
            return self.discard(
                id,
                DropReason::ContainerUnknown,
                "no container ID in the metadata",
            );
        };
        let now = Instant::now();
        let (attr, synced_at) = {
            let ix = self.index.lock();
            (ix.lookup(&pod_uid, Some(&container_id)), ix.synced_at())
        };
        // Time waited counts from when the index could have known the pod.
        let Some(synced_at) = synced_at else {
            return Step::Later(ATTRIBUTION_RETRY);
        };
        let first_seen = self.entries.get(id).map_or(now, |s| s.first_seen);
        let waited = now.saturating_duration_since(first_seen.max(synced_at));
        let attr = match place(attr, &pod_uid, waited, self.pod_wait) {
            Placement::Deliver(a) => a,
            Placement::Wait => return Step::Later(ATTRIBUTION_RETRY),
            Placement::Drop(reason, detail) => return self.discard(id, reason, &detail),
        };
        span.record("namespace", attr.namespace.as_str());
        span.record("pod", attr.pod_name.as_str());
        if let Some(c) = &attr.container_name {
            span.record("container", c.as_str());
        }
        let core = match self.spool.entry_dir(id) {
            Ok(d) => d.join(CORE_FILE),
            Err(e) => return self.discard(id, DropReason::EntryUnreadable, &e.to_string()),
        };
        let analysis = self.analysis_of(id, &entry, &attr).await;
        let result = deliver::deliver(
            &self.server,
            &entry,
            &core,
            &attr,
            &self.node,
            analysis.as_ref(),
        )
        .await;
        let fate = match result {
            Ok(d) => d,
            Err(e) => {
                let refusals = self.entries.get(id).map_or(0, |s| s.refusals);
                return match after_failure(&e, attr.deleted, refusals) {
                    Failure::PauseAll => Step::Retry(e),
                    Failure::RetryCore => Step::Refused(e.to_string()),
                    Failure::Drop(reason) => self.discard(id, reason, &e.to_string()),
                };
            }
        };
        let container = deliver::container_name(&attr);
        match &fate {
            Delivered::Stored { name, uploaded } => {
                span.record("coredump", name.as_str());
                self.metrics.uploaded.inc();
                info!(
                    coredump = name,
                    uploaded,
                    raw_bytes = entry.raw_size,
                    stored_bytes = entry.stored_size,
                    since_dump_s = since_dump(&entry),
                    "core delivered"
                );
                if let Err(e) = self.spool.delete_entry(id) {
                    warn!(error = %e, "deleting the delivered spool entry");
                }
                self.event(&entry, &attr, &container, name, events::Fate::Stored)
                    .await;
            }
            Delivered::Rejected { name, message } => {
                span.record("coredump", name.as_str());
                self.discard(id, DropReason::QuotaExceeded, message);
                self.event(
                    &entry,
                    &attr,
                    &container,
                    name,
                    events::Fate::Rejected(message),
                )
                .await;
            }
        }
        Step::Done
    }

    /// The entry's analysis: computed once in the sandboxed child, then kept in
    /// the entry (`analysis.json`) for later attempts. A failed analysis is an
    /// analysis too (`state: Failed`), and the core is delivered either way.
    async fn analysis_of(
        &self,
        id: &str,
        entry: &SpoolEntry,
        attr: &pods::Attribution,
    ) -> Option<coredump_openapi::types::CrashAnalysis> {
        let settings = self.analysis.as_ref()?;
        let dir = self.spool.entry_dir(id).ok()?;
        let kept = dir.join(ANALYSIS_FILE);
        if let Ok(b) = crate::spool::read_bounded(&kept, 1 << 20) {
            if let Ok(a) = serde_json::from_slice(&b) {
                return Some(a);
            }
        }
        let log_file = settings.log_root.as_deref().and_then(|root| {
            let container = attr.container_name.as_deref()?;
            let d = crate::logtail::container_dir(
                root,
                &attr.namespace,
                &attr.pod_name,
                &attr.pod_uid,
                container,
            )?;
            let dumped = std::time::UNIX_EPOCH + Duration::from_secs(entry.crash.dump_time);
            crate::logtail::pick_file(&d, dumped)
        });
        let cache = crate::buildid::cache_dir(self.spool.root());
        let (a, took) =
            sandbox::run(&settings.sandbox, entry, &dir, &cache, log_file.as_deref()).await;
        info!(
            state = ?a.state,
            cause = a.cause.map(|c| c.as_str()),
            signature = a.signature.as_deref(),
            error = a.error.as_deref(),
            millis = took.as_millis() as u64,
            "core analyzed"
        );
        match serde_json::to_vec(&a) {
            Ok(b) => {
                if let Err(e) = coredump_durable::write_atomic(&kept, &b, 0o600) {
                    warn!(error = %e, "keeping the analysis");
                }
            }
            Err(e) => warn!(error = %e, "encoding the analysis"),
        }
        Some(a)
    }

    async fn event(
        &self,
        entry: &SpoolEntry,
        attr: &pods::Attribution,
        container: &str,
        name: &str,
        fate: events::Fate<'_>,
    ) {
        let rec = self
            .recorder
            .core_dumped(entry, attr, container, name, fate);
        if tokio::time::timeout(Duration::from_secs(10), rec)
            .await
            .is_err()
        {
            warn!("recording the CoreDumped event timed out");
        }
    }
}

/// How often one core may meet a 409 race before it is given up.
const MAX_BUSY_RETRIES: u32 = 8;

/// What a failed delivery leads to.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The server cannot take anything now: pause all delivery.
    PauseAll,
    /// Retry this core alone, after its own backoff.
    RetryCore,
    /// Never retried: the core is dropped with this reason.
    Drop(DropReason),
}

/// Decides from a delivery error, whether the pod is deleted and how often
/// this core was refused in a row. Pure, so the policy is tested as a
/// table: only transient trouble and a bounded number of 409 races are
/// retried; refusals (403) and invalid requests end at once.
fn after_failure(e: &DeliverError, pod_deleted: bool, refusals: u32) -> Failure {
    match e {
        DeliverError::Transient(_) => Failure::PauseAll,
        DeliverError::Busy(_) if refusals < MAX_BUSY_RETRIES => Failure::RetryCore,
        DeliverError::Busy(_) => Failure::Drop(DropReason::Conflict),
        // The server's node restriction refuses pods it cannot find.
        DeliverError::Forbidden(_) if pod_deleted => Failure::Drop(DropReason::PodUnknown),
        DeliverError::Forbidden(_) => Failure::Drop(DropReason::Forbidden),
        DeliverError::Invalid(_) => Failure::Drop(DropReason::Invalid),
        DeliverError::Local(_) => Failure::Drop(DropReason::EntryUnreadable),
    }
}

/// Where a core goes once its pod has been looked up.
#[derive(Debug, PartialEq)]
enum Placement {
    Deliver(pods::Attribution),
    /// Look again later: the watch may not have caught up with the kubelet.
    Wait,
    Drop(DropReason, String),
}

/// Decides from the index's answer (`attr`) and how long the core has
/// waited. Pure, so every branch is tested. A core is delivered only under
/// a pod whose status names its container; anything else waits for the
/// watch up to `pod_wait` and is then dropped, never filed under the pod.
fn place(
    attr: Option<pods::Attribution>,
    pod_uid: &str,
    waited: Duration,
    pod_wait: Duration,
) -> Placement {
    let patient = waited < pod_wait;
    match attr {
        None if patient => Placement::Wait,
        None => Placement::Drop(
            DropReason::PodUnknown,
            format!("pod {pod_uid} not on this node after {waited:?}"),
        ),
        // Second line of the opt-out: the label may have come after the
        // capture (or before optout.json caught up). Before the container
        // check: privacy first.
        Some(a) if a.opted_out => {
            Placement::Drop(DropReason::OptedOut, "pod or namespace opted out".into())
        }
        Some(a) if a.container_name.is_some() => Placement::Deliver(a),
        // The status does not name the container (yet): the watch lags
        // behind the kubelet, unless the pod is gone (its last status is
        // all there will be).
        Some(a) if patient && !a.deleted => Placement::Wait,
        Some(a) => Placement::Drop(
            DropReason::ContainerUnknown,
            format!(
                "the status of pod {}/{} names no container with this core's container ID",
                a.namespace, a.pod_name
            ),
        ),
    }
}

/// Seconds from the dump to now, for the delivery log line.
fn since_dump(entry: &SpoolEntry) -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs().saturating_sub(entry.crash.dump_time))
        .unwrap_or(0)
}

/// Counts the capture side's drop records into the metrics, logs each, and
/// deletes it (capture stops writing records at `maxDropRecords`, so they
/// must not pile up).
fn count_drops(spool: &Spool, metrics: &Metrics) {
    let ids = match spool.list_drops() {
        Ok(ids) => ids,
        Err(e) => {
            warn!(error = %e, "listing drop records");
            return;
        }
    };
    for id in ids.into_iter().take(DROPS_PER_PASS) {
        match spool.read_drop(&id) {
            Ok(r) => {
                metrics.dropped(r.reason);
                info!(
                    record = id,
                    reason = r.reason.as_str(),
                    detail = r.detail,
                    pod_uid = r.crash.pod_uid.as_deref().unwrap_or(""),
                    host_pid = r.crash.host_pid,
                    signal = r.crash.signal,
                    forwarded_to = r.forwarded_to.as_deref().unwrap_or(""),
                    "crash not captured"
                );
            }
            Err(e) => {
                metrics.dropped(DropReason::CaptureFailed);
                warn!(record = id, error = %e, "unreadable drop record");
            }
        }
        if let Err(e) = spool.delete_drop(&id) {
            warn!(record = id, error = %e, "deleting a drop record");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{refusal_wait, Backoff, FIRST_BACKOFF};

    #[test]
    fn the_backoff_doubles_to_its_ceiling_and_resets_after_a_success() {
        let secs = |s: f64| std::time::Duration::from_secs_f64(s);
        let mut b = Backoff::new(secs(30.0));
        let waits: Vec<_> = (0..9).map(|_| b.failed(1.0)).collect();
        assert_eq!(
            waits,
            [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0].map(secs)
        );
        assert_eq!(b.failed(0.8), secs(24.0));
        b.succeeded();
        assert_eq!(b.failed(1.2), secs(0.6));
    }

    #[test]
    fn a_ceiling_below_the_first_step_is_every_wait() {
        // Duration::clamp(500ms, 100ms) panicked here.
        let mut b = Backoff::new(std::time::Duration::from_millis(100));
        for _ in 0..3 {
            assert_eq!(b.failed(1.0), std::time::Duration::from_millis(100));
        }
        assert_eq!(b.failed(0.5), std::time::Duration::from_millis(50));
        assert_eq!(
            refusal_wait(3, std::time::Duration::from_millis(100)),
            std::time::Duration::from_millis(100)
        );
    }

    #[test]
    fn refused_cores_wait_twice_as_long_per_refusal_up_to_the_ceiling() {
        let max = std::time::Duration::from_secs(30);
        assert_eq!(refusal_wait(1, max), FIRST_BACKOFF * 2);
        assert_eq!(refusal_wait(4, max), FIRST_BACKOFF * 16);
        assert_eq!(refusal_wait(6, max), max);
        assert_eq!(refusal_wait(u32::MAX, max), max);
    }

    use super::*;
    use crate::spool::{CrashInfo, DropRecord, HandlerStats, FORMAT_VERSION};

    #[test]
    fn drop_records_are_counted_once_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path());
        spool.ensure_layout().unwrap();
        let rec = |reason| DropRecord {
            format_version: FORMAT_VERSION,
            id: "1700000000-1".into(),
            reason,
            detail: String::new(),
            crash: CrashInfo::default(),
            forwarded_to: None,
            forward_exit_status: None,
            raw_bytes_read: 0,
            handler: HandlerStats::default(),
        };
        for r in [
            DropReason::RateLimited,
            DropReason::RateLimited,
            DropReason::OptedOut,
        ] {
            spool.write_drop(&rec(r)).unwrap();
        }
        std::fs::write(spool.dropped_dir().join("1700000001-1.json"), "{broken").unwrap();
        let m = Metrics::new().unwrap();
        count_drops(&spool, &m);
        count_drops(&spool, &m);
        assert_eq!(m.dropped_count(DropReason::RateLimited), 2);
        assert_eq!(m.dropped_count(DropReason::OptedOut), 1);
        assert_eq!(m.dropped_count(DropReason::CaptureFailed), 1);
        assert!(spool.list_drops().unwrap().is_empty());
    }

    fn attribution(container: Option<&str>) -> pods::Attribution {
        pods::Attribution {
            pod_name: "web-0".into(),
            namespace: "shop".into(),
            pod_uid: "u".into(),
            container_name: container.map(Into::into),
            container_id: container.map(|_| format!("containerd://{}", "a".repeat(64))),
            image: None,
            opted_out: false,
            spec_containers: vec!["app".into()],
            deleted: false,
        }
    }

    #[test]
    fn cores_go_only_to_containers_the_pod_status_names() {
        let wait = Duration::from_secs(60);
        let early = Duration::from_secs(1);
        let late = Duration::from_secs(61);
        assert_eq!(place(None, "u", early, wait), Placement::Wait);
        assert!(matches!(
            place(None, "u", late, wait),
            Placement::Drop(DropReason::PodUnknown, _)
        ));
        let named = attribution(Some("app"));
        assert_eq!(
            place(Some(named.clone()), "u", early, wait),
            Placement::Deliver(named)
        );
        // Known pod, container ID not in its status: wait for the watch,
        // then drop. Never the pod's only container, never "unknown".
        let unnamed = attribution(None);
        assert_eq!(
            place(Some(unnamed.clone()), "u", early, wait),
            Placement::Wait
        );
        assert!(matches!(
            place(Some(unnamed.clone()), "u", late, wait),
            Placement::Drop(DropReason::ContainerUnknown, _)
        ));
        let gone = pods::Attribution {
            deleted: true,
            ..unnamed
        };
        assert!(matches!(
            place(Some(gone), "u", early, wait),
            Placement::Drop(DropReason::ContainerUnknown, _)
        ));
        let quiet = pods::Attribution {
            opted_out: true,
            ..attribution(None)
        };
        assert!(matches!(
            place(Some(quiet), "u", early, wait),
            Placement::Drop(DropReason::OptedOut, _)
        ));
    }

    #[test]
    fn refusals_end_and_only_races_and_outages_are_retried() {
        let t = || DeliverError::Transient("503".into());
        let busy = || DeliverError::Busy("409".into());
        let forbidden = || DeliverError::Forbidden("403".into());
        assert_eq!(after_failure(&t(), false, 100), Failure::PauseAll);
        assert_eq!(after_failure(&busy(), false, 0), Failure::RetryCore);
        assert_eq!(
            after_failure(&busy(), false, MAX_BUSY_RETRIES - 1),
            Failure::RetryCore
        );
        assert_eq!(
            after_failure(&busy(), false, MAX_BUSY_RETRIES),
            Failure::Drop(DropReason::Conflict)
        );
        // 403 is final at once: no retry loop.
        assert_eq!(
            after_failure(&forbidden(), false, 0),
            Failure::Drop(DropReason::Forbidden)
        );
        assert_eq!(
            after_failure(&forbidden(), true, 0),
            Failure::Drop(DropReason::PodUnknown)
        );
        assert_eq!(
            after_failure(&DeliverError::Invalid("422".into()), false, 0),
            Failure::Drop(DropReason::Invalid)
        );
        assert_eq!(
            after_failure(&DeliverError::Local("gone".into()), false, 0),
            Failure::Drop(DropReason::EntryUnreadable)
        );
    }

    #[test]
    fn copy_self_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let to = dir.path().join("bin/h");
        copy_self(&to).unwrap();
        copy_self(&to).unwrap();
        let meta = std::fs::metadata(&to).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o755
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("bin")).unwrap().count(),
            1
        );
    }
}
