//! Background tasks, from READY until the drain is done: the watchdog ping (withheld while a
//! worker is stuck), systemd's STATUS= line, periodic cache snapshots, keep-alive unloading.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::notify;
use super::state::Daemon;

/// Starts every background task; they end once `stopped` is cancelled.
pub(crate) fn spawn_all(tasks: &TaskTracker, daemon: &Arc<Daemon>, stopped: &CancellationToken) {
    spawn_watchdog(tasks, daemon, stopped);
    spawn_status(tasks, daemon, stopped);
    spawn_snapshots(tasks, daemon, stopped);
    spawn_keep_alive(tasks, daemon, stopped);
}

/// Runs `tick` every `period` until `stopped`.
fn every<F>(tasks: &TaskTracker, stopped: &CancellationToken, period: Duration, mut tick: F)
where
    F: FnMut() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + 'static,
{
    let stopped = stopped.clone();
    tasks.spawn(async move {
        let mut interval = tokio::time::interval(period);
        interval.tick().await;
        loop {
            tokio::select! {
                _ = stopped.cancelled() => break,
                _ = interval.tick() => tick().await,
            }
        }
    });
}

/// Pings the watchdog at half its period, only while every worker shows progress.
fn spawn_watchdog(tasks: &TaskTracker, daemon: &Arc<Daemon>, stopped: &CancellationToken) {
    if sd_notify::watchdog_enabled().is_none() {
        return;
    }
    let half = notify::stall_limit();
    notify::watchdog();
    let d = daemon.clone();
    every(tasks, stopped, half, move || {
        match d.registry().stalled_worker(half) {
            None => notify::watchdog(),
            Some(w) => tracing::error!(
                kind = w.kind().as_str(),
                stalled_ms = w.since_heartbeat().as_millis() as u64,
                "worker shows no progress; withholding the watchdog ping"
            ),
        }
        Box::pin(async {})
    });
}

/// Writes a cache snapshot (off the async threads) when entries changed since the last one.
pub(crate) async fn snapshot_if_dirty(daemon: &Arc<Daemon>) {
    let d = daemon.clone();
    match tokio::task::spawn_blocking(move || d.cache().snapshot_if_dirty()).await {
        Ok(Ok(Some(info))) => tracing::info!(path = %info.path.display(), bytes = info.bytes, "cache snapshot written"),
        Ok(Ok(None)) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "cannot write the cache snapshot"),
        Err(e) => tracing::error!(error = %e, "snapshot task failed"),
    }
}

/// Writes a snapshot every `snapshot_interval_secs` while the cache changes.
fn spawn_snapshots(tasks: &TaskTracker, daemon: &Arc<Daemon>, stopped: &CancellationToken) {
    let secs = daemon.config().cache.snapshot_interval_secs;
    if secs == 0 || !daemon.cache().is_enabled() {
        return;
    }
    let d = daemon.clone();
    every(tasks, stopped, Duration::from_secs(secs), move || {
        let d = d.clone();
        Box::pin(async move { snapshot_if_dirty(&d).await })
    });
}

/// Unloads models idle for `[models] keep_alive_secs` (read anew each time: a reload applies).
fn spawn_keep_alive(tasks: &TaskTracker, daemon: &Arc<Daemon>, stopped: &CancellationToken) {
    let d = daemon.clone();
    every(tasks, stopped, Duration::from_secs(1), move || {
        let keep_alive = d.config().models.keep_alive_secs;
        if keep_alive > 0 {
            d.registry().unload_idle(Duration::from_secs(keep_alive));
        }
        Box::pin(async {})
    });
}

/// Keeps systemd's STATUS= line current.
fn spawn_status(tasks: &TaskTracker, daemon: &Arc<Daemon>, stopped: &CancellationToken) {
    let d = daemon.clone();
    let mut last = String::new();
    every(tasks, stopped, Duration::from_secs(1), move || {
        let line = d.status_line();
        if line != last {
            notify::status(&line);
            last = line;
        }
        Box::pin(async {})
    });
}
