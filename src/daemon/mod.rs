//! `steadytextd`: listeners, lifecycle (READY, WATCHDOG, STOPPING, RELOADING), signals and the
//! accept loops. Connection handling is in [`server`], scheduling in [`scheduler`].

pub mod listen;
pub mod metrics;
pub mod notify;
pub mod scheduler;
pub mod server;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::cache::Cache;
use crate::config::Config;
use listen::StdListener;
use scheduler::{Job, Kind, Worker};
use server::Daemon;

/// What the binary decided before the runtime started.
pub struct Options {
    /// The configuration file to re-read on SIGHUP (None: the default search).
    pub config_path: Option<PathBuf>,
    /// The configuration.
    pub config: Config,
    /// Listening sockets.
    pub listeners: Vec<StdListener>,
}

/// Runs the daemon until SIGTERM/SIGINT (or idle exit); returns after draining.
pub async fn run(options: Options) -> Result<()> {
    let config = Arc::new(options.config);
    notify::status("loading models");
    // Loading can exceed TimeoutStartSec on slow disks: ask for more time while it runs.
    notify::extend_timeout(300_000_000);
    let started = std::time::Instant::now();
    let workers = {
        let c = config.clone();
        tokio::task::spawn_blocking(move || -> crate::Result<Vec<Worker>> {
            let g = std::thread::scope(|s| {
                let g = s.spawn(|| Worker::start(Kind::Generation, c.clone()));
                let e = Worker::start(Kind::Embedding, c.clone());
                (g.join(), e)
            });
            match g {
                (Ok(gen), emb) => Ok(vec![gen?, emb?]),
                (Err(_), _) => Err(crate::Error::Cancelled),
            }
        })
        .await
        .context("model loading panicked")?
        .context("cannot load the models")?
    };
    let cache = config.cache.enabled.then(|| {
        let mut cache = Cache::new(&config.cache, Some(daemon_cache_dir(&config)));
        let digests: Vec<String> = workers.iter().map(|w| w.info().digest).collect();
        let keep: Vec<&str> = digests.iter().map(String::as_str).collect();
        cache.load(Some(&keep));
        cache
    });
    let daemon = Daemon::new(config.clone(), workers, cache);
    for w in &daemon.workers {
        let info = w.info();
        tracing::info!(kind = w.kind().as_str(), model = %info.name, digest = %info.digest, "model loaded");
    }
    let mut owned_paths = Vec::new();
    for listener in options.listeners {
        tracing::info!(listener = listener.name(), "listening");
        match listener {
            StdListener::Unix { listener, owned_path, .. } => {
                listener.set_nonblocking(true)?;
                let listener = Arc::new(tokio::net::UnixListener::from_std(listener)?);
                owned_paths.extend(owned_path);
                spawn_accept_loop(&daemon, move || {
                    let l = listener.clone();
                    async move { l.accept().await.map(|(s, _)| s) }
                });
            }
            StdListener::Tcp { listener, .. } => {
                listener.set_nonblocking(true)?;
                let listener = Arc::new(tokio::net::TcpListener::from_std(listener)?);
                spawn_accept_loop(&daemon, move || {
                    let l = listener.clone();
                    async move {
                        let (s, _) = l.accept().await?;
                        s.set_nodelay(true)?;
                        Ok(s)
                    }
                });
            }
        }
    }
    tracing::info!(load_ms = started.elapsed().as_millis() as u64, "ready");
    notify::ready(&daemon.status_line());
    spawn_watchdog(&daemon);
    spawn_status(&daemon);
    spawn_snapshots(&daemon);

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let idle_exit = Duration::from_secs(config.daemon.idle_exit_secs);
    let mut idle_tick = tokio::time::interval(Duration::from_secs(1));
    let why = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => reload(&daemon, options.config_path.clone()).await,
            _ = idle_tick.tick(), if !idle_exit.is_zero() => {
                if daemon.idle_for() >= idle_exit {
                    break "idle";
                }
            }
        }
    };
    let timeout = Duration::from_secs(daemon.config().daemon.shutdown_timeout_secs);
    tracing::info!(
        reason = why,
        in_flight = daemon.metrics.in_flight.load(std::sync::atomic::Ordering::Relaxed),
        "stopping"
    );
    notify::stopping(&format!("stopping ({why}): finishing in-flight requests"));
    daemon.shutdown.cancel();
    daemon.tracker.close();
    if tokio::time::timeout(timeout, daemon.tracker.wait()).await.is_err() {
        tracing::warn!(timeout_secs = timeout.as_secs(), "shutdown timeout: cancelling in-flight requests");
        daemon.abort.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), daemon.tracker.wait()).await;
    }
    snapshot_if_dirty(&daemon).await;
    for path in owned_paths {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!(requests = %daemon.metrics.snapshot()["requests_total"], "stopped");
    Ok(())
}

/// Accepts connections until shutdown begins; each one is served by its own task.
fn spawn_accept_loop<S, F, Fut>(daemon: &Arc<Daemon>, mut accept: F)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + std::os::fd::AsRawFd + Send + Unpin + 'static,
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<S>> + Send,
{
    let d = daemon.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = d.shutdown.cancelled() => break,
                r = accept() => match r {
                    Ok(stream) => d.spawn_connection(stream),
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    });
}

/// SIGHUP: re-read the configuration and reload models whose files or names changed.
async fn reload(daemon: &Arc<Daemon>, config_path: Option<PathBuf>) {
    notify::reloading();
    tracing::info!("reloading configuration");
    let outcome = async {
        let config = Arc::new(Config::load(config_path.as_deref())?);
        for worker in &daemon.workers {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let job = Job::Reload { config: config.clone(), reply: tx };
            if worker.submit_blocking(job).is_err() {
                return Err(crate::Error::Cancelled);
            }
            match rx.await.map_err(|_| crate::Error::Cancelled)?? {
                Some(info) => {
                    tracing::info!(kind = worker.kind().as_str(), model = %info.name, digest = %info.digest, "model reloaded");
                    worker.set_info(info);
                }
                None => tracing::info!(kind = worker.kind().as_str(), "model unchanged"),
            }
        }
        *daemon.config.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok::<_, crate::Error>(())
    }
    .await;
    if let Err(e) = outcome {
        tracing::error!(error = %e, "reload failed; keeping the previous configuration and models");
    }
    notify::ready(&daemon.status_line());
}

/// Pings the watchdog at half its period, only while every worker shows progress.
fn spawn_watchdog(daemon: &Arc<Daemon>) {
    let Some(period) = sd_notify::watchdog_enabled() else { return };
    let half = period / 2;
    let d = daemon.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(half);
        loop {
            tick.tick().await;
            match d.workers.iter().find(|w| w.since_heartbeat() > half) {
                None => notify::watchdog(),
                Some(w) => tracing::error!(
                    kind = w.kind().as_str(),
                    stalled_ms = w.since_heartbeat().as_millis() as u64,
                    "worker shows no progress; withholding the watchdog ping"
                ),
            }
        }
    });
}

/// Where the daemon keeps cache snapshots: `[cache] dir`, else systemd's `STATE_DIRECTORY`,
/// else /var/lib/steadytext.
fn daemon_cache_dir(config: &Config) -> PathBuf {
    config
        .cache
        .dir
        .clone()
        .or_else(|| {
            std::env::var("STATE_DIRECTORY")
                .ok()
                .and_then(|v| v.split(':').next().filter(|s| !s.is_empty()).map(PathBuf::from))
        })
        .unwrap_or_else(|| PathBuf::from("/var/lib/steadytext"))
}

/// Writes a cache snapshot (off the async threads) when entries changed since the last one.
async fn snapshot_if_dirty(daemon: &Arc<Daemon>) {
    if !daemon.with_cache(|c| c.is_dirty()).unwrap_or(false) {
        return;
    }
    let d = daemon.clone();
    match tokio::task::spawn_blocking(move || d.snapshot_cache()).await {
        Ok(Ok(Some(info))) => tracing::info!(path = %info.path.display(), bytes = info.bytes, "cache snapshot written"),
        Ok(Ok(None)) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "cannot write the cache snapshot"),
        Err(e) => tracing::error!(error = %e, "snapshot task failed"),
    }
}

/// Writes a snapshot every `snapshot_interval_secs` while the cache changes.
fn spawn_snapshots(daemon: &Arc<Daemon>) {
    let secs = daemon.config().cache.snapshot_interval_secs;
    if secs == 0 || daemon.cache.is_none() {
        return;
    }
    let d = daemon.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(secs));
        tick.tick().await;
        loop {
            tick.tick().await;
            snapshot_if_dirty(&d).await;
        }
    });
}

/// Keeps systemd's STATUS= line current.
fn spawn_status(daemon: &Arc<Daemon>) {
    let d = daemon.clone();
    tokio::spawn(async move {
        let mut last = String::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let line = d.status_line();
            if line != last {
                notify::status(&line);
                last = line;
            }
        }
    });
}
