//! `steadytextd`'s lifecycle: start (models loading while the listeners already answer), READY,
//! signals (SIGHUP reloads, SIGTERM drains), STOPPING and the last snapshot; [`run`] reads as that
//! timeline. The listeners and their accept loops are in [`accept`], connections in `connection`
//! (JSON-RPC) and `http`, the methods in `methods` over [`crate::core`] (through `runner`),
//! scheduling in `scheduler`, shared state in `state`, background tasks in `tasks`.

mod accept;
mod admission;
mod call;
mod connection;
mod deadline_io;
mod http;
pub mod listen;
mod memory;
mod methods;
mod metrics;
mod notify;
mod peer;
mod peer_poll;
pub mod privileges;
mod registry;
mod reload;
mod runner;
mod scheduler;
mod sdk;
mod state;
mod tasks;
mod zmtp;

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
use accept::{check_tcp_listeners, listen, Server};
use listen::{Protocol, StdListener};
use registry::Registry;
use scheduler::Loader;
use state::Daemon;

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
    let is_web = |l: &StdListener| matches!(l.protocol, Protocol::Http | Protocol::Ollama);
    let (web, rpc): (Vec<_>, Vec<_>) = options.listeners.into_iter().partition(is_web);
    let (ollama, web): (Vec<_>, Vec<_>) = web.into_iter().partition(|l| l.protocol == Protocol::Ollama);
    let max_connections = config.daemon.max_connections;
    let mut owned_paths = listen(&Server::Http(front.clone(), http::Api::Main), web, tls.clone(), max_connections)?;
    owned_paths.extend(listen(&Server::Http(front.clone(), http::Api::Ollama), ollama, tls.clone(), max_connections)?);
    // JSON-RPC serves while the models load: a request waits only for the models of its kind.
    let daemon = start(config.clone(), api_key, options.config_path.clone(), admission)?;
    let (sdk, rpc): (Vec<_>, Vec<_>) = rpc.into_iter().partition(|l| l.protocol == Protocol::Zmtp);
    owned_paths.extend(listen(&Server::Rpc(daemon.clone()), rpc, tls.clone(), max_connections)?);
    let sdk_connections = config.compat.steadytext.max_connections;
    owned_paths.extend(listen(&Server::Sdk(daemon.clone()), sdk, tls, sdk_connections)?);
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
            tasks::spawn_all(&background, &daemon, &stopped);
            let idle_exit = Duration::from_secs(config.daemon.idle_exit_secs);
            let mut idle_tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = term.recv() => break "SIGTERM",
                    _ = int.recv() => break "SIGINT",
                    _ = hup.recv() => {
                        // Logged inside; the previous configuration stays in force on failure.
                        let _ = reload::reload(&daemon).await;
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
        if let (None, Some(state)) = (&config.cache.dir, crate::env::state_directory()) {
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
    tasks::snapshot_if_dirty(daemon).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::admission::ListenerBudget;
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
        accept::spawn_accept_loop(&(Server::Rpc(daemon.clone()), budget), move || {
            let l = listener.clone();
            async move { accept::unix_peer(l.accept().await?.0) }
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
        assert!(crate::protocol::Method::ALL.iter().all(|m| message.contains(m.name())), "{message}");
        let off = call(&path, json!({"jsonrpc": "2.0", "id": 3, "method": "cache.stats"})).await;
        assert_eq!(off["error"]["code"], crate::protocol::codes::INVALID_PARAMS);
        let embed =
            call(&path, json!({"jsonrpc": "2.0", "id": 4, "method": "embed", "params": {"texts": ["abc"]}})).await;
        assert_eq!(embed["result"]["embeddings"][0][0], 3.0);
    }
}
