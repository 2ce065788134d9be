//! State shared by every connection, behind a small API: configuration, models, cache, counters
//! and the shutdown tokens.

use crate::engine::fingerprint::Fingerprint;
use crate::engine::prefix::{PrefixState, PrefixStats};
use crate::model::ModelKind;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::ApiKey;
use crate::cache::SharedCache;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::protocol::{ModelStatus, PrefixCacheStatus, Status, PROTOCOL_VERSION};

use super::admission::Admission;
use super::metrics::Metrics;
use super::peer::Peer;
use super::peer_poll::PeerPoll;
use super::registry::Registry;
use super::scheduler::{Job, Worker};

/// The daemon's shared state.
pub(crate) struct Daemon {
    config: RwLock<Arc<Config>>,
    registry: Registry,
    metrics: Metrics,
    cache: SharedCache,
    api_key: RwLock<Option<Arc<ApiKey>>>,
    shutdown: CancellationToken,
    abort: CancellationToken,
    tracker: TaskTracker,
    admission: Arc<Admission>,
    admin_gid: Option<u32>,
    last_activity: Mutex<Instant>,
    next_request: AtomicU64,
    engine: Fingerprint,
    /// The configuration file a reload re-reads (None: the default search).
    config_path: Option<std::path::PathBuf>,
    /// Held while a reload runs: SIGHUP and the `reload` method take turns.
    reloading: tokio::sync::Mutex<()>,
    /// The clock of requests waiting on a worker.
    peer_poll: Arc<PeerPoll>,
}

impl Daemon {
    /// Wraps loaded models, the cache and the API key for TCP clients.
    pub(crate) fn new(
        config: Arc<Config>,
        registry: Registry,
        cache: SharedCache,
        api_key: Option<ApiKey>,
        engine: Fingerprint,
        config_path: Option<std::path::PathBuf>,
        admission: Arc<Admission>,
    ) -> Arc<Self> {
        Arc::new(Daemon {
            admission,
            admin_gid: config.daemon.admin_group.as_deref().and_then(super::peer::group_id),
            config: RwLock::new(config),
            registry,
            metrics: Metrics::default(),
            cache,
            api_key: RwLock::new(api_key.map(Arc::new)),
            shutdown: CancellationToken::new(),
            abort: CancellationToken::new(),
            tracker: TaskTracker::new(),
            last_activity: Mutex::new(Instant::now()),
            next_request: AtomicU64::new(1),
            engine,
            config_path,
            reloading: tokio::sync::Mutex::new(()),
            peer_poll: Arc::default(),
        })
    }

    /// The configuration file a reload re-reads.
    pub(crate) fn config_path(&self) -> Option<&std::path::Path> {
        self.config_path.as_deref()
    }

    /// Waits for a running reload to finish; the guard keeps others out.
    pub(crate) async fn reload_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.reloading.lock().await
    }

    /// The engine fingerprint of every answer.
    pub(crate) fn engine(&self) -> &Fingerprint {
        &self.engine
    }

    /// The configuration in force.
    pub(crate) fn config(&self) -> Arc<Config> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts a reloaded configuration in force.
    pub(crate) fn set_config(&self, config: Arc<Config>) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
    }

    /// The API key TCP clients must present, if one is configured.
    pub(crate) fn api_key(&self) -> Option<Arc<ApiKey>> {
        self.api_key.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts a re-read API key in force.
    pub(crate) fn set_api_key(&self, key: ApiKey) {
        *self.api_key.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(key));
    }

    /// The loaded models.
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The counters.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The result cache.
    pub(crate) fn cache(&self) -> &SharedCache {
        &self.cache
    }

    /// Cancelled when shutdown begins: stop accepting and reading new requests.
    pub(crate) fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// The clock a request waiting on a worker watches its client by.
    pub(crate) fn peer_poll(&self) -> &Arc<PeerPoll> {
        &self.peer_poll
    }

    /// A token cancelled when the shutdown timeout expires: in-flight work is aborted.
    pub(crate) fn abort_token(&self) -> CancellationToken {
        self.abort.child_token()
    }

    /// Begins shutdown: no new connections or requests.
    pub(crate) fn begin_shutdown(&self) {
        self.shutdown.cancel();
        self.tracker.close();
    }

    /// Aborts in-flight work (the shutdown timeout expired).
    pub(crate) fn abort(&self) {
        self.abort.cancel();
    }

    /// Waits until every connection task has ended.
    pub(crate) async fn drained(&self) {
        self.tracker.wait().await
    }

    /// Tracks a connection task so shutdown can wait for it.
    pub(crate) fn track<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// The connection budgets.
    pub(crate) fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The memory budget of requests being received.
    pub(crate) fn receive_budget(&self) -> &super::admission::ReceiveBudget {
        self.admission.receive()
    }

    /// Refuses admin methods to peers that are not root, the daemon's user or the admin group.
    pub(crate) fn require_admin(&self, peer: &Peer, method: &str) -> Result<()> {
        if peer.is_admin(self.admin_gid) {
            return Ok(());
        }
        Err(Error::Forbidden(format!(
            "{method} is for root or members of the admin group ([daemon] admin_group); ask an administrator"
        )))
    }

    /// A fresh id for log lines.
    pub(crate) fn next_request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    /// Notes client activity (for idle exit).
    pub(crate) fn touch(&self) {
        *self.last_activity.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Time without any connection open, or zero while one is.
    pub(crate) fn idle_for(&self) -> Duration {
        if self.metrics.connections() > 0 {
            return Duration::ZERO;
        }
        self.last_activity.lock().unwrap_or_else(|p| p.into_inner()).elapsed()
    }

    /// Queues `job` on `worker`; a full queue is an [`Error::Overloaded`] with a retry hint.
    pub(crate) fn submit(&self, worker: &Worker, job: Job) -> Result<()> {
        match worker.submit(job) {
            Ok(()) => Ok(()),
            Err((_, Some(queued))) => {
                self.metrics.record_overload();
                let retry = (self.metrics.mean_latency_ms() * (queued as f64 + 1.0)).clamp(50.0, 60_000.0).round();
                Err(Error::Overloaded { kind: worker.kind().as_str(), queued, retry_after_ms: retry as u64 })
            }
            Err((_, None)) => Err(Error::ShuttingDown),
        }
    }

    /// The `status` result.
    pub(crate) fn status(&self) -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: PROTOCOL_VERSION,
            pid: std::process::id(),
            models: self
                .registry
                .workers_with_idle()
                .iter()
                .map(|(w, idle)| {
                    let info = w.info();
                    ModelStatus {
                        kind: w.kind(),
                        name: info.name,
                        digest: info.digest,
                        dir: info.dir,
                        queue_depth: w.queued(),
                        merged_requests: w.merged(),
                        batch_sequences: w.max_active(),
                        idle_seconds: idle.as_secs_f64(),
                        prefix_cache: w.prefix_stats().map(|p| prefix_status(&p)),
                    }
                })
                .collect(),
            unavailable: self.registry.unavailable(),
            loading: self.registry.loading(),
            engine_fingerprint: self.engine.id.clone(),
            engine: self.engine.summary.clone(),
            metrics: self.metrics.snapshot(),
            cache: self.cache.stats().ok(),
        }
    }

    /// A one-line summary for systemd's STATUS=, from counters only (cheap every second).
    pub(crate) fn status_line(&self) -> String {
        let m = &self.metrics;
        let queues: Vec<String> =
            self.registry.workers().iter().map(|w| format!("{}={}", w.kind().as_str(), w.queued())).collect();
        let loading: String =
            self.registry.loading().iter().map(|k| format!("loading the {} model; ", k.as_str())).collect();
        let missing: String = self
            .registry
            .unavailable()
            .iter()
            .map(|u| format!("no {} model ({} could not be loaded); ", u.kind.as_str(), u.name))
            .collect();
        format!(
            "{loading}{missing}serving: {} requests, {} in flight, {} connections, queues {}",
            m.requests_total(),
            m.in_flight(),
            m.connections(),
            queues.join(" ")
        )
    }

    /// The worker serving a request of `kind` for `model` (waiting while that kind loads).
    pub(crate) async fn worker(&self, kind: ModelKind, model: Option<&str>) -> Result<Arc<Worker>> {
        self.registry.get(kind, model, &self.config()).await
    }
}

/// A model's prefix cache as `status` shows it.
fn prefix_status(stats: &PrefixStats) -> PrefixCacheStatus {
    let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let off_reason = match stats.state() {
        PrefixState::On => None,
        PrefixState::Off(reason) => Some(reason),
    };
    PrefixCacheStatus {
        enabled: off_reason.is_none(),
        off_reason,
        budget_bytes: count(&stats.budget_bytes),
        bytes: count(&stats.bytes),
        hits: count(&stats.hits),
        misses: count(&stats.misses),
        tokens_reused: count(&stats.tokens_reused),
        tokens_prefilled: count(&stats.tokens_prefilled),
        evictions: count(&stats.evictions),
    }
}
