//! `steadytextd`: listeners, lifecycle (READY, WATCHDOG, STOPPING, RELOADING), signals and the
//! accept loops. The server loop owns shutdown. Connections are in [`connection`], each method
//! in its own file under `methods/`, scheduling in [`scheduler`], shared state in `state`.

mod admission;
mod connection;
mod deadline_io;
mod http;
pub mod listen;
mod methods;
pub mod metrics;
mod notify;
mod peer;
pub mod privileges;
mod registry;
mod scheduler;
mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::ApiKey;
use crate::cache::{Cache, SharedCache};
use crate::config::Config;
use admission::ListenerBudget;
use listen::{Protocol, Socket, StdListener};
use peer::Peer;
use registry::Registry;
use scheduler::Loader;
use state::Daemon;

pub use methods::NAMES as METHODS;

/// Requests (and jobs) larger than this many bytes leave memory behind that is worth giving back.
const LARGE_REQUEST_BYTES: usize = 1 << 20;

/// Returns freed heap memory to the system (glibc keeps it in its arenas otherwise).
fn release_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

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
    let api_key = ApiKey::load(config.daemon.api_key_file.as_deref()).context("cannot read the API key")?;
    let tls = crate::tls::server_config(config.daemon.tls_cert_file.as_deref(), config.daemon.tls_key_file.as_deref())
        .context("cannot set up TLS")?
        .map(tokio_rustls::TlsAcceptor::from);
    check_tcp_listeners(&options.listeners, api_key.is_some(), tls.is_some())?;
    let started = std::time::Instant::now();
    // Signals are ours from the start: a stop asked for while the models load is honoured at
    // once (the socket files are removed), a SIGHUP waits until READY.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    // The HTTP front answers from the start (503 while loading).
    let admission = Arc::new(admission::Admission::new(&config.daemon));
    let front = http::Front::new(config.clone(), admission.clone());
    let (web, rpc): (Vec<_>, Vec<_>) = options.listeners.into_iter().partition(|l| l.protocol == Protocol::Http);
    let max_connections = config.daemon.max_connections;
    let mut owned_paths = listen(&Server::Http(front.clone()), web, tls.clone(), max_connections)?;
    // JSON-RPC serves while the models load: a request waits only for the models of its kind.
    let daemon = start(config.clone(), api_key, options.config_path.clone(), admission)?;
    owned_paths.extend(listen(&Server::Rpc(daemon.clone()), rpc, tls, max_connections)?);
    let stopped_while_loading = tokio::select! {
        _ = daemon.registry().settled() => None,
        _ = term.recv() => Some("SIGTERM"),
        _ = int.recv() => Some("SIGINT"),
    };
    // Background tasks run until `stopped` (after the drain and the last snapshot).
    let stopped = CancellationToken::new();
    let background = TaskTracker::new();
    let why = match stopped_while_loading {
        Some(why) => why,
        None => {
            prune_cache(&daemon);
            front.serve(daemon.clone());
            tracing::info!(load_ms = started.elapsed().as_millis() as u64, "ready");
            notify::ready(&daemon.status_line());
            spawn_watchdog(&background, &daemon, &stopped);
            spawn_status(&background, &daemon, &stopped);
            spawn_snapshots(&background, &daemon, &stopped);
            spawn_keep_alive(&background, &daemon, &stopped);
            let idle_exit = Duration::from_secs(config.daemon.idle_exit_secs);
            let mut idle_tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = term.recv() => break "SIGTERM",
                    _ = int.recv() => break "SIGINT",
                    _ = hup.recv() => {
                        // Logged inside; the previous configuration stays in force on failure.
                        let _ = reload(&daemon).await;
                    }
                    _ = idle_tick.tick(), if !idle_exit.is_zero() => {
                        if daemon.idle_for() >= idle_exit {
                            break "idle";
                        }
                    }
                }
            }
        }
    };
    drain(&daemon, &front, why).await;
    stopped.cancel();
    background.close();
    background.wait().await;
    for path in owned_paths {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!(requests = daemon.metrics().requests_total(), "stopped");
    Ok(())
}

/// Starts loading the models (in parallel, each in its own thread), with the cache filled from
/// its newest snapshot (every model's entries: which models load is known only later).
fn start(
    config: Arc<Config>,
    api_key: Option<ApiKey>,
    config_path: Option<PathBuf>,
    admission: Arc<admission::Admission>,
) -> Result<Arc<Daemon>> {
    notify::status("loading models");
    // Loading can exceed TimeoutStartSec on slow disks: ask for more time while it runs.
    notify::extend_timeout(300_000_000);
    let loader: Loader = Arc::new(|kind, config: &Config| crate::service::load(kind, config, None));
    let registry = Registry::start(&config, &loader);
    let engine = crate::engine::fingerprint::fingerprint(&config).context("cannot fingerprint the engine")?;
    tracing::info!(fingerprint = %engine.id, engine = %engine.summary, "engine");
    let cache = SharedCache::new(config.cache.enabled.then(|| {
        // Earlier builds of the system unit kept snapshots in its state folder, which holds the
        // group-readable models now; snapshots have their own 0700 cache folder.
        if let (None, Some(state)) = (&config.cache.dir, crate::config::env::state_directory()) {
            let moved = crate::cache::snapshot::adopt(&state, &config.daemon_state_dir());
            if moved > 0 {
                tracing::info!(moved, from = %state.display(), "cache snapshots moved to the cache folder");
            }
        }
        let mut cache = Cache::new(&config.cache, Some(config.daemon_state_dir()), engine.clone());
        cache.load();
        cache
    }));
    Ok(Daemon::new(config, registry, cache, api_key, engine, config_path, admission))
}

/// Once every model has loaded, drops the cached answers of models neither loaded nor installed
/// under `model_dir` (an installed model's answers are kept whether or not it is loaded: a
/// request may load it). Nothing is dropped while a model is missing (its answers are its own once
/// it is back) or an installed folder's digest is unknown without hashing it (no manifest).
fn prune_cache(daemon: &Daemon) {
    let registry = daemon.registry();
    if !registry.unavailable().is_empty() {
        return;
    }
    let workers = registry.workers();
    let mut digests: Vec<String> = workers.iter().map(|w| w.info().digest).collect();
    let loaded: Vec<std::path::PathBuf> = workers.iter().map(|w| w.info().dir).collect();
    let model_dir = daemon.config().model_dir.clone();
    for folder in std::fs::read_dir(&model_dir).into_iter().flatten().flatten() {
        let dir = folder.path();
        if !dir.is_dir() || folder.file_name().to_string_lossy().starts_with('.') || loaded.contains(&dir) {
            continue;
        }
        match crate::store::recorded_digest(&dir) {
            Some(digest) => digests.push(digest),
            None => return,
        }
    }
    let keep: Vec<&str> = digests.iter().map(String::as_str).collect();
    daemon.cache().with(|cache| cache.retain_models(&keep));
}

/// What serves a listener's connections.
#[derive(Clone)]
enum Server {
    /// JSON-RPC lines.
    Rpc(Arc<Daemon>),
    /// The HTTP front.
    Http(Arc<http::Front>),
}

impl Server {
    /// Serves one accepted connection of a listener with `budget` once `setup` (a TLS handshake
    /// or nothing) gives it.
    fn spawn<S, F>(&self, setup: F, peer: Peer, budget: ListenerBudget)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + std::os::fd::AsRawFd + Send + Unpin + 'static,
        F: std::future::Future<Output = std::io::Result<S>> + Send + 'static,
    {
        match self {
            Server::Rpc(daemon) => connection::spawn(daemon, budget, setup, peer),
            Server::Http(front) => front.spawn_connection(setup, peer, budget),
        }
    }

    /// Cancelled when accepting must stop.
    fn shutdown(&self) -> CancellationToken {
        match self {
            Server::Rpc(daemon) => daemon.shutdown().clone(),
            Server::Http(front) => front.shutdown().clone(),
        }
    }
}

/// Starts an accept loop per listener (TCP ones speak TLS when `tls` is set); returns the
/// socket files to remove at exit.
fn listen(
    server: &Server,
    listeners: Vec<StdListener>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    max_connections: usize,
) -> Result<Vec<PathBuf>> {
    let mut owned_paths = Vec::new();
    for listener in listeners {
        let tls = tls.clone().filter(|_| listener.is_tcp());
        let server = &(server.clone(), ListenerBudget::new(max_connections));
        tracing::info!(listener = %listener.name, tls = tls.is_some(), "listening");
        owned_paths.extend(listener.owned_path);
        match listener.socket {
            Socket::Unix(listener) => {
                listener.set_nonblocking(true)?;
                let listener = Arc::new(tokio::net::UnixListener::from_std(listener)?);
                spawn_accept_loop(server, move || {
                    let l = listener.clone();
                    async move { unix_peer(l.accept().await?.0) }
                });
            }
            Socket::Tcp(listener) => {
                listener.set_nonblocking(true)?;
                let listener = Arc::new(tokio::net::TcpListener::from_std(listener)?);
                let accept = move || {
                    let l = listener.clone();
                    async move {
                        let (s, addr) = l.accept().await?;
                        s.set_nodelay(true)?;
                        Ok((s, Peer::Remote(addr.ip())))
                    }
                };
                match tls {
                    None => spawn_accept_loop(server, move || {
                        let accepted = accept();
                        async move { accepted.await.map(|(s, peer)| (std::future::ready(Ok(s)), peer)) }
                    }),
                    Some(acceptor) => spawn_accept_loop(server, move || {
                        let (accepted, acceptor) = (accept(), acceptor.clone());
                        async move { accepted.await.map(|(s, peer)| (acceptor.accept(s), peer)) }
                    }),
                }
            }
        }
    }
    Ok(owned_paths)
}

/// Shutdown: no new requests, in-flight ones finish (or are aborted after the timeout), then
/// the last snapshot.
async fn drain(daemon: &Arc<Daemon>, front: &http::Front, why: &str) {
    let timeout = Duration::from_secs(daemon.config().daemon.shutdown_timeout_secs);
    tracing::info!(reason = why, in_flight = daemon.metrics().in_flight(), "stopping");
    notify::stopping(&format!("stopping ({why}): finishing in-flight requests"));
    daemon.begin_shutdown();
    front.begin_shutdown();
    let drained = async {
        daemon.drained().await;
        front.drained().await;
    };
    if tokio::time::timeout(timeout, drained).await.is_err() {
        tracing::warn!(timeout_secs = timeout.as_secs(), "shutdown timeout: cancelling in-flight requests");
        daemon.abort();
        let _ = tokio::time::timeout(Duration::from_secs(5), daemon.drained()).await;
    }
    snapshot_if_dirty(daemon).await;
}

/// Refuses TCP listeners the daemon cannot guard: without an API key, or on a non-loopback
/// address without TLS (keys and answers would cross the network in clear text).
fn check_tcp_listeners(listeners: &[StdListener], have_key: bool, have_tls: bool) -> Result<()> {
    for StdListener { socket, name, .. } in listeners {
        let Socket::Tcp(listener) = socket else { continue };
        let addr = listener.local_addr().with_context(|| format!("listener {name}"))?;
        if !addr.ip().is_loopback() && !have_tls {
            anyhow::bail!(
                "refusing to serve JSON-RPC on {addr} ({name}) in clear text: it is not a loopback address; \
                 configure TLS ([daemon] tls_cert_file and tls_key_file, or the credentials tls-cert and tls-key) \
                 or listen on 127.0.0.1 or ::1"
            );
        }
        if !have_key {
            anyhow::bail!(
                "the TCP listener {addr} ({name}) needs an API key: write one (`openssl rand -hex 32`) to a file readable \
                 only by the daemon and name it in [daemon] api_key_file or STEADYTEXT_API_KEY_FILE, or pass it as the \
                 systemd credential `api-key` (LoadCredential=api-key:FILE)"
            );
        }
    }
    Ok(())
}

/// A Unix connection (ready at once) with its peer's credentials.
fn unix_peer(
    stream: tokio::net::UnixStream,
) -> std::io::Result<(std::future::Ready<std::io::Result<tokio::net::UnixStream>>, Peer)> {
    let peer = Peer::of_unix(&stream).ok_or_else(|| std::io::Error::other("no peer credentials"))?;
    Ok((std::future::ready(Ok(stream)), peer))
}

/// Accepts connections until shutdown begins; each one is set up (`Setup`: a TLS handshake or
/// nothing) and served by its own task.
fn spawn_accept_loop<S, Setup, F, Fut>((server, budget): &(Server, ListenerBudget), mut accept: F)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + std::os::fd::AsRawFd + Send + Unpin + 'static,
    Setup: std::future::Future<Output = std::io::Result<S>> + Send + 'static,
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<(Setup, Peer)>> + Send,
{
    let (server, budget) = (server.clone(), budget.clone());
    let shutdown = server.shutdown();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = accept() => match r {
                    Ok((stream, peer)) => server.spawn(stream, peer, budget.clone()),
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    });
}

/// SIGHUP and the `reload` method: re-read the configuration, load models that had failed to,
/// and reload models whose files or names changed; one reload at a time. On failure the previous
/// configuration and models stay in force.
pub(crate) async fn reload(daemon: &Daemon) -> crate::error::Result<()> {
    let _turn = daemon.reload_turn().await;
    notify::reloading();
    tracing::info!("reloading configuration");
    let outcome = async {
        let config = Arc::new(Config::load(daemon.config_path())?);
        if let Some(key) = ApiKey::load(config.daemon.api_key_file.as_deref())? {
            daemon.set_api_key(key);
        }
        daemon.registry().settled().await;
        // Models that failed to load are tried again (pulled since, or configured anew).
        daemon.registry().retry_failed(&config);
        daemon.registry().settled().await;
        for (worker, config) in daemon.registry().reloadable(&config) {
            match worker.reload(config).await? {
                Some(info) => {
                    tracing::info!(kind = worker.kind().as_str(), model = %info.name, digest = %info.digest, "model reloaded")
                }
                None => tracing::info!(kind = worker.kind().as_str(), "model unchanged"),
            }
        }
        daemon.set_config(config);
        Ok::<_, crate::Error>(())
    }
    .await;
    if let Err(e) = &outcome {
        tracing::error!(error = %e, "reload failed; keeping the previous configuration and models");
    }
    notify::ready(&daemon.status_line());
    outcome
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
    let half = registry::stall_limit();
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
async fn snapshot_if_dirty(daemon: &Arc<Daemon>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::scheduler::tests::{loader, Fake};
    use serde_json::{json, Value};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    /// A daemon of fake models listening on a Unix socket in `dir`.
    async fn fake_daemon(dir: &std::path::Path, config: Config) -> (Arc<Daemon>, PathBuf) {
        fake_daemon_of(dir, config, Duration::from_millis(1)).await
    }

    /// [`fake_daemon`] whose model steps take `step`.
    async fn fake_daemon_of(dir: &std::path::Path, config: Config, step: Duration) -> (Arc<Daemon>, PathBuf) {
        let config = Arc::new(config);
        let registry =
            Registry::start(&config, &loader(move |k| Fake { pieces: vec!["ab".into(); 4000], step, ..Fake::new(k) }));
        let admission = Arc::new(admission::Admission::new(&config.daemon));
        let budget = ListenerBudget::new(config.daemon.max_connections);
        let engine = crate::cache::tests::test_engine();
        let daemon = Daemon::new(config, registry, SharedCache::new(None), None, engine, None, admission);
        daemon.registry().settled().await;
        let path = dir.join("d.sock");
        let listener = Arc::new(tokio::net::UnixListener::bind(&path).unwrap());
        spawn_accept_loop(&(Server::Rpc(daemon.clone()), budget), move || {
            let l = listener.clone();
            async move { unix_peer(l.accept().await?.0) }
        });
        (daemon, path)
    }

    async fn call(path: &std::path::Path, line: Value) -> Value {
        let mut s = tokio::net::UnixStream::connect(path).await.unwrap();
        s.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        let mut reader = BufReader::new(s);
        loop {
            let mut answer = String::new();
            reader.read_line(&mut answer).await.unwrap();
            let v: Value = serde_json::from_str(&answer).unwrap();
            if v.get("id").is_some() {
                return v;
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_never_reads_its_stream_stalls_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.daemon.send_timeout_secs = 1;
        config.limits.max_new_tokens = 4000;
        let (daemon, path) = fake_daemon(dir.path(), config).await;
        // 4000 pieces of ~70 bytes each overflow the socket buffers of a client that never reads.
        let mut stalled = tokio::net::UnixStream::connect(&path).await.unwrap();
        let request = json!({"jsonrpc": "2.0", "id": 1, "method": "generate_stream",
                             "params": {"prompt": "p", "max_new_tokens": 4000}});
        stalled.write_all(format!("{request}\n").as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Others are served meanwhile, and the worker keeps beating.
        let started = std::time::Instant::now();
        let answer = call(
            &path,
            json!({"jsonrpc": "2.0", "id": 2, "method": "generate",
                                        "params": {"prompt": "q", "max_new_tokens": 2}}),
        )
        .await;
        assert_eq!(answer["result"]["text"], "abab", "{answer}");
        assert!(started.elapsed() < Duration::from_secs(5), "an honest client waited {:?}", started.elapsed());
        let worker = daemon.worker(crate::model::ModelKind::Generation, None).await.unwrap();
        assert!(worker.since_heartbeat() < Duration::from_secs(1));
        // The stalled connection is cut off at its send deadline.
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            while daemon.metrics().connections() > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(closed.is_ok(), "the stalled connection was never closed");
        drop(stalled);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_stuck_in_a_model_call_fails_liveness_until_it_moves_again() {
        let dir = tempfile::tempdir().unwrap();
        let (daemon, path) = fake_daemon_of(dir.path(), Config::default(), Duration::from_millis(1500)).await;
        let config = Arc::new(Config::default());
        let front = http::Front::new(config.clone(), Arc::new(admission::Admission::new(&config.daemon)));
        front.serve(daemon.clone());
        let limit = Duration::from_millis(500);
        assert_eq!(http::liveness(&front, limit).status(), 200, "an idle worker is alive");
        let worker = daemon.worker(crate::model::ModelKind::Generation, None).await.unwrap();
        let request = tokio::spawn(async move {
            let line = json!({"jsonrpc": "2.0", "id": 1, "method": "generate",
                              "params": {"prompt": "p", "max_new_tokens": 1}});
            call(&path, line).await
        });
        let mut stuck = false;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if http::liveness(&front, limit).status() == 503 {
                stuck = true;
                break;
            }
        }
        assert!(stuck, "a 1.5 s model step never counted as stuck after {limit:?}");
        let answer = request.await.unwrap();
        assert_eq!(answer["result"]["text"], "ab", "{answer}");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(worker.since_heartbeat() < limit);
        assert_eq!(http::liveness(&front, limit).status(), 200, "alive again once the step ended");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn methods_answer_through_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let (_daemon, path) = fake_daemon(dir.path(), Config::default()).await;
        let status = call(&path, json!({"jsonrpc": "2.0", "id": 1, "method": "status"})).await;
        let status: crate::protocol::Status = serde_json::from_value(status["result"].clone()).unwrap();
        assert_eq!(status.models.len(), 2);
        let unknown = call(&path, json!({"jsonrpc": "2.0", "id": 2, "method": "nope"})).await;
        let message = unknown["error"]["message"].as_str().unwrap();
        assert!(METHODS.iter().all(|m| message.contains(m)), "{message}");
        let off = call(&path, json!({"jsonrpc": "2.0", "id": 3, "method": "cache.stats"})).await;
        assert_eq!(off["error"]["code"], crate::protocol::codes::INVALID_PARAMS);
        let embed =
            call(&path, json!({"jsonrpc": "2.0", "id": 4, "method": "embed", "params": {"texts": ["abc"]}})).await;
        assert_eq!(embed["result"]["embeddings"][0][0], 3.0);
    }
}
