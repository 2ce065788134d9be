//! The model registry: the loaded models' workers, found by kind and by the name a request gives.
//! The configured models load at start, in parallel, each in its own thread, while the daemon
//! already serves: a request waits only for the model it needs. A request naming another model
//! folder under `model_dir` loads it on demand (its requests wait; the other models serve on).
//! At most `[models] max_loaded` models of a kind stay loaded: the least recently used one is
//! unloaded when another must load, and a model idle for `[models] keep_alive_secs` is unloaded
//! (its worker ends once its last request is answered, and its memory goes back to the system).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::{Config, ModelsConfig};
use crate::error::{Error, Result};
use crate::model::ModelKind;
use crate::protocol::UnavailableModel;

use super::scheduler::{Loader, Worker};

/// How long a request for a model that has no room yet waits for one (models loading or in use
/// to be done) before it is refused as overload.
const ROOM_WAIT: Duration = Duration::from_secs(120);

/// How often a request waiting for room looks again.
const ROOM_POLL: Duration = Duration::from_millis(25);

/// Whether a model may load now.
enum Room {
    /// Yes (models in the way were unloaded).
    Made,
    /// Not yet: the models in the way are loading or in use.
    Wait,
}

/// Where one model's loading stands.
#[derive(Clone)]
enum Slot {
    Loading,
    Ready(Arc<Worker>),
    Failed(UnavailableModel),
}

/// One model of the registry.
struct Entry {
    kind: ModelKind,
    /// The name it is loaded by (the configured name, or the folder name a request gave).
    name: String,
    /// Its folder, as resolved (requests naming the folder or its path find it).
    dir: PathBuf,
    slot: watch::Sender<Slot>,
    last_used: Instant,
    /// Its weight files' bytes: what it takes in memory, about.
    bytes: u64,
    /// Whether it is its kind's configured model (a reload may name another).
    configured: bool,
}

impl Entry {
    fn ready(&self) -> Option<Arc<Worker>> {
        match &*self.slot.borrow() {
            Slot::Ready(w) => Some(w.clone()),
            _ => None,
        }
    }

    /// Whether it holds a model, or will (it counts against `max_loaded`).
    fn is_live(&self) -> bool {
        !matches!(*self.slot.borrow(), Slot::Failed(_))
    }

    /// For the configured model of its kind: takes the name `config` gives that kind now.
    fn follow(&mut self, config: &Config) {
        let now = config.model_name(self.kind);
        if self.configured && !now.is_empty() && now != self.name {
            self.name = now.to_string();
            self.dir = folder_key(config, now).unwrap_or_else(|_| PathBuf::from(now));
            self.bytes = weight_bytes(&self.dir);
        }
    }

    /// Whether requests hold its worker now (the registry's reference aside).
    fn in_use(&self) -> bool {
        self.ready().is_some_and(|w| Arc::strong_count(&w) > 2)
    }
}

/// The models, loaded and loading.
pub(crate) struct Registry {
    entries: Mutex<Vec<Entry>>,
    loader: Loader,
}

/// A model that could not be loaded, logged.
fn failed(kind: ModelKind, name: &str, reason: String) -> Slot {
    tracing::error!(kind = kind.as_str(), model = %name, error = %reason, "model not loaded; serving without it");
    Slot::Failed(UnavailableModel { kind, name: name.to_string(), reason })
}

/// Loads the model `name` of `kind` in its own thread and publishes the outcome in `slot`.
fn spawn_load(kind: ModelKind, name: &str, config: &Config, loader: &Loader, slot: &watch::Sender<Slot>) {
    slot.send_replace(Slot::Loading);
    let shared = Arc::new(config.for_model(kind, name));
    let (loader, tx, name) = (loader.clone(), slot.clone(), name.to_string());
    let load = move || {
        let started = Instant::now();
        let outcome = match Worker::start(kind, shared, loader) {
            Ok(worker) => {
                let info = worker.info();
                let load_ms = started.elapsed().as_secs_f64() * 1e3;
                tracing::info!(kind = kind.as_str(), model = %info.name, digest = %info.digest, load_ms, "model loaded");
                Slot::Ready(Arc::new(worker))
            }
            Err(e) => failed(kind, &name, e.to_string()),
        };
        tx.send_replace(outcome);
    };
    if let Err(e) = std::thread::Builder::new().name(format!("{}-loader", kind.as_str())).spawn(load) {
        slot.send_replace(failed(kind, "", e.to_string()));
    }
}

/// The bytes of the weights in the model folder `dir` (0 when it cannot be read).
fn weight_bytes(dir: &std::path::Path) -> u64 {
    crate::model::ModelFiles::discover(dir).map(|f| f.weight_bytes()).unwrap_or(0)
}

/// A model folder's key: its resolved path (canonical when it exists).
fn folder_key(config: &Config, name: &str) -> Result<PathBuf> {
    let dir = crate::model::resolve_dir(&config.model_dir, name)?;
    Ok(dir.canonicalize().unwrap_or(dir))
}

/// Refuses what cannot be a model's name: empty, `.`, `..`, a NUL, surrounding white space.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('\0') || name.trim() != name {
        return Err(Error::InvalidRequest(format!(
            "{name:?} is not a model name: give the name of a model folder (`stctl models list` shows them), or \
             leave the model out for the configured one"
        )));
    }
    Ok(())
}

/// The folder of a model a request names that is not a configured one: a folder directly under
/// `model_dir`, by its name (a request never points the daemon at another path, a relative one
/// included; configured models may be paths).
pub(crate) fn requested_dir(config: &Config, name: &str) -> Result<PathBuf> {
    check_name(name)?;
    let not_found = |reason: String| Error::ModelNotFound { name: name.to_string(), reason };
    if name.starts_with('.') || name.contains('/') {
        return Err(not_found(
            "a request names a model by its folder's name under the daemon's model folder, never by a path".into(),
        ));
    }
    let dir = config.model_dir.join(name);
    match std::fs::metadata(&dir) {
        Ok(meta) if meta.is_dir() => Ok(dir.canonicalize().unwrap_or(dir)),
        // A folder this user may not read is said as such (resolve_dir words it).
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => folder_key(config, name),
        _ => Err(not_found(
            "the daemon has no model folder of that name; `stctl models list` shows what it has, `stctl models pull` \
             fetches more"
                .into(),
        )),
    }
}

impl Registry {
    /// Starts loading one worker per configured model, each in its own thread, and returns at
    /// once. A model that fails to load is logged and recorded; the daemon serves the others (a
    /// fresh install without models still starts, and answers with the reason instead of
    /// crash-looping).
    pub(crate) fn start(config: &Arc<Config>, loader: &Loader) -> Self {
        // A cross-encoder is optional: it loads only when one is configured.
        let entries = [ModelKind::Generation, ModelKind::Embedding, ModelKind::Rerank]
            .into_iter()
            .filter(|&kind| kind != ModelKind::Rerank || !config.rerank_model.is_empty())
            .map(|kind| {
                let name = config.model_name(kind).to_string();
                let dir = folder_key(config, &name).unwrap_or_else(|_| PathBuf::from(&name));
                let (slot, _) = watch::channel(Slot::Loading);
                spawn_load(kind, &name, config, loader, &slot);
                let bytes = weight_bytes(&dir);
                Entry { kind, name, dir, slot, last_used: Instant::now(), bytes, configured: true }
            })
            .collect();
        Registry { entries: Mutex::new(entries), loader: loader.clone() }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tries again to load the models that failed to (SIGHUP: a model pulled since, or a
    /// corrected configuration), with `config`.
    pub(crate) fn retry_failed(&self, config: &Arc<Config>) {
        for e in self.entries().iter_mut().filter(|e| !e.is_live()) {
            e.follow(config);
            spawn_load(e.kind, &e.name, config, &self.loader, &e.slot);
        }
    }

    /// Every loaded worker with the configuration it is to be reloaded with (SIGHUP): `config`
    /// with the worker's model as its kind's model. A configured model follows the configuration
    /// (a newly configured one replaces it in its worker); the others keep their names.
    pub(crate) fn reloadable(&self, config: &Config) -> Vec<(Arc<Worker>, Arc<Config>)> {
        self.entries()
            .iter_mut()
            .filter_map(|e| {
                let worker = e.ready()?;
                e.follow(config);
                Some((worker, Arc::new(config.for_model(e.kind, &e.name))))
            })
            .collect()
    }

    /// Waits until every model has loaded or failed to.
    pub(crate) async fn settled(&self) {
        let receivers: Vec<_> = self.entries().iter().map(|e| e.slot.subscribe()).collect();
        for mut rx in receivers {
            let _ = rx.wait_for(|s| !matches!(s, Slot::Loading)).await;
        }
    }

    /// What `pick` takes from each entry as it stands now.
    fn each<T>(&self, pick: impl Fn(&Entry, &Slot) -> Option<T>) -> Vec<T> {
        self.entries().iter().filter_map(|e| pick(e, &e.slot.borrow())).collect()
    }

    /// Models that failed to load.
    pub(crate) fn unavailable(&self) -> Vec<UnavailableModel> {
        self.each(|_, slot| match slot {
            Slot::Failed(u) => Some(u.clone()),
            _ => None,
        })
    }

    /// Kinds of the models still loading.
    pub(crate) fn loading(&self) -> Vec<ModelKind> {
        self.each(|e, slot| matches!(slot, Slot::Loading).then_some(e.kind))
    }

    /// Every loaded worker.
    pub(crate) fn workers(&self) -> Vec<Arc<Worker>> {
        self.each(|e, _| e.ready())
    }

    /// Every loaded worker and how long since a request last asked for it.
    pub(crate) fn workers_with_idle(&self) -> Vec<(Arc<Worker>, Duration)> {
        self.each(|e, _| Some((e.ready()?, e.last_used.elapsed())))
    }

    /// A worker that has shown no progress for longer than `limit` (see `notify::stall_limit`).
    pub(crate) fn stalled_worker(&self, limit: std::time::Duration) -> Option<Arc<Worker>> {
        self.workers().into_iter().find(|w| w.since_heartbeat() > limit)
    }

    /// Unloads the models no request has asked for in `keep_alive` (none in use); returns their
    /// names.
    pub(crate) fn unload_idle(&self, keep_alive: Duration) -> Vec<String> {
        let mut entries = self.entries();
        let idle = |e: &Entry| e.ready().is_some() && !e.in_use() && e.last_used.elapsed() >= keep_alive;
        let names: Vec<String> = entries.iter().filter(|e| idle(e)).map(|e| e.name.clone()).collect();
        for name in &names {
            tracing::info!(model = %name, keep_alive_secs = keep_alive.as_secs(), "unloading an idle model");
        }
        entries.retain(|e| !idle(e));
        names
    }

    /// Unloads the model `name` now, unless a request holds it (Ollama's `keep_alive: 0`);
    /// whether it was loaded and is gone. A later request loads it again.
    pub(crate) fn unload(&self, name: &str) -> bool {
        let mut entries = self.entries();
        let idle = |e: &Entry| e.ready().is_some_and(|w| w.info().answers_to(name)) && !e.in_use();
        let before = entries.len();
        entries.retain(|e| !idle(e));
        let unloaded = entries.len() < before;
        if unloaded {
            tracing::info!(model = %name, "unloading a model on request");
        }
        unloaded
    }

    /// Makes room for one more model of `kind` taking `bytes`: while `max_loaded` models of its
    /// kind are loaded or loading, or the loaded and loading models and it would exceed
    /// `max_memory_mb`, unloads the least recently used model no request holds (of its kind for
    /// the count, of any kind for memory). [`Room::Wait`] when every model in the way is loading
    /// or in use (loads in flight count: they will take their memory); an error when it alone
    /// exceeds the budget.
    fn make_room(
        entries: &mut Vec<Entry>,
        kind: ModelKind,
        name: &str,
        bytes: u64,
        limits: &ModelsConfig,
    ) -> Result<Room> {
        let budget = limits.max_memory_mb.saturating_mul(1 << 20);
        if budget > 0 && bytes > budget {
            return Err(Error::model(
                name,
                format!(
                    "its weights take {} MiB, over [models] max_memory_mb = {}: raise it or use a smaller model",
                    bytes >> 20,
                    limits.max_memory_mb
                ),
            ));
        }
        loop {
            let live = entries.iter().filter(|e| e.kind == kind && e.is_live()).count();
            let used: u64 = entries.iter().filter(|e| e.is_live()).map(|e| e.bytes).sum();
            let over_count = live >= limits.max_loaded.max(1);
            let over_memory = budget > 0 && used + bytes > budget;
            if !over_count && !over_memory {
                return Ok(Room::Made);
            }
            let victim = entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.ready().is_some() && !e.in_use() && (e.kind == kind || !over_count))
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i);
            let Some(i) = victim else { return Ok(Room::Wait) };
            let e = entries.remove(i);
            let why = if over_count { "max_loaded" } else { "max_memory_mb" };
            tracing::info!(kind = e.kind.as_str(), model = %e.name, limit = why, "unloading the least recently used model to load another");
        }
    }

    /// The slot of the model `name` of `kind`: found, or its load started; None when there is no
    /// room for it yet (see [`Registry::make_room`]).
    fn find_or_load(
        &self,
        kind: ModelKind,
        name: &str,
        configured: &str,
        config: &Config,
    ) -> Result<Option<watch::Receiver<Slot>>> {
        let mut entries = self.entries();
        let key = if name == configured { folder_key(config, name) } else { requested_dir(config, name) };
        let names = |e: &Entry| {
            e.name == name || key.as_ref().is_ok_and(|k| *k == e.dir) || e.ready().is_some_and(|w| w.answers_to(name))
        };
        if let Some(e) = entries.iter_mut().find(|e| e.kind == kind && names(e)) {
            e.last_used = Instant::now();
            return Ok(Some(e.slot.subscribe()));
        }
        let wrong = |is: ModelKind| Error::WrongModelKind {
            name: name.to_string(),
            is: is.with_article(),
            wanted: kind.with_article(),
        };
        if let Some(other) = entries.iter().find(|e| e.kind != kind && names(e)) {
            return Err(wrong(other.kind));
        }
        let dir = match key {
            Ok(dir) => dir,
            Err(Error::Model { reason, .. }) => return Err(Error::ModelNotFound { name: name.to_string(), reason }),
            Err(e) => return Err(e),
        };
        let detected = crate::model::ModelFiles::discover(&dir).ok().and_then(|f| f.kind().ok().flatten());
        if let Some(is) = detected.filter(|&is| is != kind) {
            return Err(wrong(is));
        }
        let bytes = weight_bytes(&dir);
        if let Room::Wait = Self::make_room(&mut entries, kind, name, bytes, &config.models)? {
            return Ok(None);
        }
        let (slot, rx) = watch::channel(Slot::Loading);
        tracing::info!(kind = kind.as_str(), model = %name, "loading a model a request names");
        spawn_load(kind, name, config, &self.loader, &slot);
        let last_used = Instant::now();
        let configured = name == configured;
        entries.push(Entry { kind, name: name.to_string(), dir, slot, last_used, bytes, configured });
        Ok(Some(rx))
    }

    /// The worker for a request of `kind` naming `requested` (None: the configured model of that
    /// kind), once it has loaded; a model folder not loaded yet is loaded now (see the module).
    pub(crate) async fn get(&self, kind: ModelKind, requested: Option<&str>, config: &Config) -> Result<Arc<Worker>> {
        let configured = config.model_name(kind);
        if let Some(name) = requested {
            check_name(name)?;
        }
        let name = requested.unwrap_or(configured);
        if name.is_empty() {
            return Err(Error::ModelNotLoaded(format!("(any {} model)", kind.as_str())));
        }
        let waiting_since = Instant::now();
        let mut rx = loop {
            match self.find_or_load(kind, name, configured, config)? {
                Some(rx) => break rx,
                None if waiting_since.elapsed() > ROOM_WAIT => {
                    return Err(Error::Overloaded { kind: kind.as_str(), queued: 0, retry_after_ms: 5_000 })
                }
                None => tokio::time::sleep(ROOM_POLL).await,
            }
        };
        let slot = rx.wait_for(|s| !matches!(s, Slot::Loading)).await.map_err(|_| Error::ShuttingDown)?.clone();
        match slot {
            Slot::Ready(w) => Ok(w),
            Slot::Failed(u) => Err(Error::ModelUnavailable {
                kind: kind.as_str(),
                recommended: kind.recommended_alias(),
                name: u.name,
                reason: u.reason,
            }),
            Slot::Loading => Err(Error::ShuttingDown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::scheduler::tests::{loader, Fake};

    #[tokio::test]
    async fn requests_find_their_model_by_kind_and_name() {
        let config = Config::default();
        let registry = Registry::start(&Arc::new(Config::default()), &loader(Fake::new));
        assert_eq!(registry.get(ModelKind::Embedding, None, &config).await.unwrap().info().name, "fake-embedding");
        // The name a worker answers to besides its folder's is known once it has loaded.
        registry.get(ModelKind::Generation, None, &config).await.unwrap();
        let named = registry.get(ModelKind::Generation, Some("fake-generation"), &config).await.unwrap();
        assert_eq!(named.kind(), ModelKind::Generation);
        assert_eq!(
            registry.get(ModelKind::Generation, Some("/fake"), &config).await.unwrap().kind(),
            ModelKind::Generation
        );
        let wrong = registry.get(ModelKind::Generation, Some("fake-embedding"), &config).await;
        assert!(matches!(wrong, Err(Error::WrongModelKind { .. })), "{:?}", wrong.err());
        assert_eq!(registry.workers().len(), 2, "no cross-encoder slot unless one is configured");
        assert!(registry.get(ModelKind::Rerank, None, &config).await.is_err());
        let config = Config { rerank_model: "reranker".into(), ..Config::default() };
        let registry = Registry::start(&Arc::new(config.clone()), &loader(Fake::new));
        assert_eq!(registry.get(ModelKind::Rerank, None, &config).await.unwrap().info().name, "fake-rerank");
    }

    #[tokio::test]
    async fn a_fast_model_serves_while_a_slow_one_loads() {
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = std::sync::Mutex::new(gate);
        let slow: Loader = Arc::new(move |kind, config: &Config| {
            if kind == ModelKind::Generation {
                let _ = gate.lock().unwrap().recv();
            }
            loader(Fake::new)(kind, config)
        });
        let config = Config::default();
        let registry = Registry::start(&Arc::new(Config::default()), &slow);
        assert_eq!(registry.get(ModelKind::Embedding, None, &config).await.unwrap().kind(), ModelKind::Embedding);
        assert_eq!(registry.loading(), vec![ModelKind::Generation]);
        // A generation request waits for its model, then is served.
        let waiting = registry.get(ModelKind::Generation, None, &config);
        tokio::pin!(waiting);
        assert!(tokio::time::timeout(std::time::Duration::from_millis(50), &mut waiting).await.is_err());
        release.send(()).unwrap();
        assert_eq!(waiting.await.unwrap().kind(), ModelKind::Generation);
        registry.settled().await;
        assert!(registry.loading().is_empty());
    }

    #[tokio::test]
    async fn a_model_that_fails_to_load_is_reported_and_the_others_serve() {
        let failing: Loader = Arc::new(|kind, config: &Config| match kind {
            ModelKind::Embedding => Err(Error::model("all-MiniLM-L6-v2", "no such model folder")),
            _ => loader(Fake::new)(kind, config),
        });
        let config = Config::default();
        let registry = Registry::start(&Arc::new(Config::default()), &failing);
        registry.settled().await;
        assert_eq!(registry.workers().len(), 1);
        assert!(registry.get(ModelKind::Generation, None, &config).await.is_ok());
        let error = registry.get(ModelKind::Embedding, None, &config).await.err().unwrap().to_string();
        assert!(error.contains("could not be loaded") && error.contains("no such model folder"), "{error}");
        assert!(error.contains("stctl models pull embed"), "{error}");
        assert_eq!(registry.unavailable()[0].kind, ModelKind::Embedding);
    }

    /// A loader whose fakes are named after the model the configuration gives their kind;
    /// `loads` counts the loads.
    fn named_loader(loads: Arc<std::sync::atomic::AtomicUsize>) -> Loader {
        Arc::new(move |kind, config: &Config| {
            loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(30));
            let mut fake = Fake::new(kind);
            fake.info.name = config.model_name(kind).to_string();
            fake.info.dir = config.model_dir.join(&fake.info.name);
            Ok(Box::new(fake) as Box<dyn crate::service::Model>)
        })
    }

    fn loaded(registry: &Registry) -> Vec<String> {
        let mut names: Vec<String> =
            registry.workers().iter().filter(|w| w.kind() == ModelKind::Generation).map(|w| w.info().name).collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn named_models_load_on_demand_and_the_least_recently_used_one_leaves() {
        let dir = tempfile::tempdir().unwrap();
        for m in ["a", "b", "c"] {
            std::fs::create_dir(dir.path().join(m)).unwrap();
        }
        let config = Config {
            model_dir: dir.path().into(),
            generation_model: "a".into(),
            models: crate::config::ModelsConfig { max_loaded: 2, ..Default::default() },
            ..Config::default()
        };
        let loads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let registry = Registry::start(&Arc::new(config.clone()), &named_loader(loads.clone()));
        let name = |w: Arc<Worker>| w.info().name;
        let get = |model: Option<&'static str>| registry.get(ModelKind::Generation, model, &config);
        assert_eq!(name(get(None).await.unwrap()), "a");
        assert_eq!(name(get(Some("b")).await.unwrap()), "b");
        assert_eq!(loaded(&registry), ["a", "b"]);
        let path = dir.path().join("b").display().to_string();
        let by_path = registry.get(ModelKind::Generation, Some(&path), &config).await.unwrap();
        assert_eq!(name(by_path), "b", "the folder's path finds the model loaded by its name");
        let unloaded_path = dir.path().join("c").display().to_string();
        let refused = registry.get(ModelKind::Generation, Some(&unloaded_path), &config).await;
        assert!(matches!(refused, Err(Error::ModelNotFound { .. })), "a path is never loaded on a request's say");
        assert_eq!(name(get(Some("a")).await.unwrap()), "a");
        // c must load: b is the least recently used.
        assert_eq!(name(get(Some("c")).await.unwrap()), "c");
        assert_eq!(loaded(&registry), ["a", "c"]);
        assert_eq!(name(get(Some("b")).await.unwrap()), "b");
        assert_eq!(loaded(&registry), ["b", "c"]);
        // The configured model is loaded again when asked for.
        assert_eq!(name(get(None).await.unwrap()), "a");
        assert_eq!(loaded(&registry), ["a", "b"]);
        // Requests never point the daemon at other paths, nor at missing folders.
        let cwd = std::env::current_dir().unwrap();
        let relative = cwd
            .read_dir()
            .unwrap()
            .flatten()
            .find(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'))
            .unwrap();
        let relative = relative.file_name().into_string().unwrap();
        for bad in ["/etc", "../a", "missing", ".hidden", relative.as_str()] {
            let refused = registry.get(ModelKind::Generation, Some(bad), &config).await;
            assert!(matches!(refused, Err(Error::ModelNotFound { .. })), "{bad}");
        }
        for bad in ["", ".", "..", "a\0b", " a"] {
            let refused = registry.get(ModelKind::Generation, Some(bad), &config).await;
            assert!(matches!(refused, Err(Error::InvalidRequest(_))), "{bad:?}");
        }
        // Concurrent requests for a model being loaded all wait for the one load.
        let before = loads.load(std::sync::atomic::Ordering::SeqCst);
        let all = futures_util::future::join_all((0..5).map(|_| get(Some("c")))).await;
        let workers: Vec<Arc<Worker>> = all.into_iter().map(Result::unwrap).collect();
        assert!(workers.iter().all(|w| Arc::ptr_eq(w, &workers[0]) && w.info().name == "c"));
        assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), before + 1);
        // keep_alive: an idle model leaves, one a request holds stays.
        let held = workers[0].clone();
        drop(workers);
        assert_eq!(registry.unload_idle(Duration::ZERO), ["all-MiniLM-L6-v2", "a"], "the idle embedder too");
        assert_eq!(loaded(&registry), ["c"]);
        drop(held);
        assert_eq!(registry.unload_idle(Duration::ZERO), ["c"]);
        assert!(loaded(&registry).is_empty());
    }

    /// A fake that counts the models alive (loaded and not yet dropped) in `alive`, and the most
    /// ever alive at once in `most`.
    struct Counted {
        fake: Fake,
        alive: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.alive.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl crate::service::Model for Counted {
        fn kind(&self) -> ModelKind {
            self.fake.kind
        }
        fn info(&self) -> &crate::model::ModelInfo {
            &self.fake.info
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn models_requested_at_once_never_pass_max_loaded() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let dir = tempfile::tempdir().unwrap();
        let names = ["m1", "m2", "m3", "m4", "m5"];
        for m in names {
            std::fs::create_dir(dir.path().join(m)).unwrap();
        }
        let config = Config {
            model_dir: dir.path().into(),
            generation_model: "m1".into(),
            embedding_model: "none".into(),
            models: crate::config::ModelsConfig { max_loaded: 2, ..Default::default() },
            ..Config::default()
        };
        let (alive, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, m) = (alive.clone(), most.clone());
        let loader: Loader = Arc::new(move |kind, config: &Config| {
            let now = a.fetch_add(1, SeqCst) + 1;
            m.fetch_max(now, SeqCst);
            std::thread::sleep(Duration::from_millis(100));
            let mut fake = Fake::new(kind);
            fake.info.name = config.model_name(kind).to_string();
            fake.info.dir = config.model_dir.join(&fake.info.name);
            Ok(Box::new(Counted { fake, alive: a.clone() }) as Box<dyn crate::service::Model>)
        });
        let registry = Arc::new(Registry::start(&Arc::new(config.clone()), &loader));
        registry.settled().await;
        let requests = names.into_iter().chain(names.into_iter().rev()).map(|name| {
            let (registry, config) = (registry.clone(), config.clone());
            tokio::spawn(async move {
                let worker = registry.get(ModelKind::Generation, Some(name), &config).await.unwrap();
                assert_eq!(worker.info().name, name);
                tokio::time::sleep(Duration::from_millis(30)).await;
            })
        });
        for r in futures_util::future::join_all(requests).await {
            r.unwrap();
        }
        let generation_models = |n: usize| n.saturating_sub(1); // the embedding slot's fake is alive too
        assert!(
            generation_models(most.load(SeqCst)) <= 2,
            "{} generation models were alive at once",
            most.load(SeqCst) - 1
        );
        assert!(loaded(&registry).len() <= 2);
    }

    #[tokio::test]
    async fn a_memory_budget_unloads_the_least_recently_used_and_refuses_what_cannot_fit() {
        let dir = tempfile::tempdir().unwrap();
        for (name, mib) in [("small", 1), ("big", 3), ("small2", 1), ("huge", 10)] {
            let folder = dir.path().join(name);
            std::fs::create_dir(&folder).unwrap();
            std::fs::File::create(folder.join("model.onnx")).unwrap().set_len(mib << 20).unwrap();
            std::fs::write(folder.join("tokenizer.json"), "{}").unwrap();
        }
        let config = Config {
            model_dir: dir.path().into(),
            generation_model: "small".into(),
            embedding_model: "none".into(),
            models: crate::config::ModelsConfig { max_loaded: 5, keep_alive_secs: 0, max_memory_mb: 4 },
            ..Config::default()
        };
        let loads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let registry = Registry::start(&Arc::new(config.clone()), &named_loader(loads));
        let get = |model: &'static str| registry.get(ModelKind::Generation, Some(model), &config);
        get("small").await.unwrap();
        get("big").await.unwrap();
        assert_eq!(loaded(&registry), ["big", "small"], "1 + 3 MiB fit in 4");
        get("small2").await.unwrap();
        assert_eq!(loaded(&registry), ["big", "small2"], "the least recently used made room");
        let refused = get("huge").await.err().unwrap().to_string();
        assert!(refused.contains("max_memory_mb = 4"), "{refused}");
        assert_eq!(loaded(&registry), ["big", "small2"], "a model that cannot fit unloads nothing");
    }

    #[tokio::test]
    async fn a_reload_gives_the_configured_model_the_new_name_and_the_others_their_own() {
        let dir = tempfile::tempdir().unwrap();
        for m in ["a", "b", "c"] {
            std::fs::create_dir(dir.path().join(m)).unwrap();
        }
        let config = Config { model_dir: dir.path().into(), generation_model: "a".into(), ..Config::default() };
        let loads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let registry = Registry::start(&Arc::new(config.clone()), &named_loader(loads));
        registry.get(ModelKind::Generation, Some("c"), &config).await.unwrap();
        registry.settled().await;
        let renamed = Config { generation_model: "b".into(), ..config.clone() };
        let mut names: Vec<String> = registry
            .reloadable(&renamed)
            .into_iter()
            .filter(|(w, _)| w.kind() == ModelKind::Generation)
            .map(|(_, c)| c.generation_model.clone())
            .collect();
        names.sort();
        assert_eq!(names, ["b", "c"], "the configured model follows the configuration; c keeps its name");
    }
}
