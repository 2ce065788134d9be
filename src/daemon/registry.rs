//! The model registry: every configured model's worker, found by kind and by the name a request
//! gives. Models load in parallel, each in its own thread, while the daemon already serves: a
//! request waits for the models of its kind to finish loading, so one that loads fast (an
//! embedder) answers before a slow one (a large decoder) is ready.

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::protocol::{ModelKind, UnavailableModel};

use super::scheduler::{Loader, Worker};

/// How long a worker may show no progress before the daemon counts it as stuck (the watchdog
/// ping is withheld, `/health/live` answers 503): half the systemd watchdog period when there is
/// one, else 30 s (what the shipped unit's `WatchdogSec=60` gives). A decode step, a prompt chunk
/// or an embedding batch each beat; an idle worker beats every half second.
pub(crate) fn stall_limit() -> std::time::Duration {
    sd_notify::watchdog_enabled().map_or(std::time::Duration::from_secs(30), |period| period / 2)
}

/// Where one configured model's loading stands.
#[derive(Clone)]
enum Slot {
    Loading,
    Ready(Arc<Worker>),
    Failed(UnavailableModel),
}

/// The configured models, in configuration order.
pub(crate) struct Registry {
    slots: Vec<(ModelKind, watch::Sender<Slot>)>,
    loader: Loader,
}

/// A model that could not be loaded, logged.
fn failed(kind: ModelKind, config: &Config, reason: String) -> Slot {
    let name = crate::service::configured(kind, config).to_string();
    tracing::error!(kind = kind.as_str(), model = %name, error = %reason, "model not loaded; serving without it");
    Slot::Failed(UnavailableModel { kind, name, reason })
}

/// Loads the model of `kind` in its own thread and publishes the outcome in `slot`.
fn spawn_load(kind: ModelKind, config: &Arc<Config>, loader: &Loader, slot: &watch::Sender<Slot>) {
    slot.send_replace(Slot::Loading);
    let (shared, loader, tx) = (config.clone(), loader.clone(), slot.clone());
    let load = move || {
        let outcome = match Worker::start(kind, shared.clone(), loader) {
            Ok(worker) => {
                let info = worker.info();
                tracing::info!(kind = kind.as_str(), model = %info.name, digest = %info.digest, "model loaded");
                Slot::Ready(Arc::new(worker))
            }
            Err(e) => failed(kind, &shared, e.to_string()),
        };
        tx.send_replace(outcome);
    };
    if let Err(e) = std::thread::Builder::new().name(format!("{}-loader", kind.as_str())).spawn(load) {
        slot.send_replace(failed(kind, config, e.to_string()));
    }
}

impl Registry {
    /// Starts loading one worker per configured model, each in its own thread, and returns at
    /// once. A model that fails to load is logged and recorded; the daemon serves the others (a
    /// fresh install without models still starts, and answers with the reason instead of
    /// crash-looping).
    pub(crate) fn start(config: &Arc<Config>, loader: &Loader) -> Self {
        // A cross-encoder is optional: its slot exists only when one is configured.
        let slots = [ModelKind::Generation, ModelKind::Embedding, ModelKind::Rerank]
            .into_iter()
            .filter(|&kind| kind != ModelKind::Rerank || !config.rerank_model.is_empty())
            .map(|kind| {
                let (slot, _) = watch::channel(Slot::Loading);
                spawn_load(kind, config, loader, &slot);
                (kind, slot)
            })
            .collect();
        Registry { slots, loader: loader.clone() }
    }

    /// Tries again to load the models that failed to (SIGHUP: a model pulled since, or a
    /// corrected configuration), with `config`.
    pub(crate) fn retry_failed(&self, config: &Arc<Config>) {
        for (kind, slot) in &self.slots {
            if matches!(*slot.borrow(), Slot::Failed(_)) {
                spawn_load(*kind, config, &self.loader, slot);
            }
        }
    }

    /// Waits until every model has loaded or failed to.
    pub(crate) async fn settled(&self) {
        for (_, slot) in &self.slots {
            let _ = slot.subscribe().wait_for(|s| !matches!(s, Slot::Loading)).await;
        }
    }

    /// What `pick` takes from each slot as it stands now.
    fn each<T>(&self, pick: impl Fn(ModelKind, &Slot) -> Option<T>) -> Vec<T> {
        self.slots.iter().filter_map(|(kind, slot)| pick(*kind, &slot.borrow())).collect()
    }

    /// Configured models that failed to load.
    pub(crate) fn unavailable(&self) -> Vec<UnavailableModel> {
        self.each(|_, slot| match slot {
            Slot::Failed(u) => Some(u.clone()),
            _ => None,
        })
    }

    /// Kinds of the models still loading.
    pub(crate) fn loading(&self) -> Vec<ModelKind> {
        self.each(|kind, slot| matches!(slot, Slot::Loading).then_some(kind))
    }

    /// Every loaded worker.
    pub(crate) fn workers(&self) -> Vec<Arc<Worker>> {
        self.each(|_, slot| match slot {
            Slot::Ready(w) => Some(w.clone()),
            _ => None,
        })
    }

    /// A worker that has shown no progress for longer than `limit` (see [`stall_limit`]).
    pub(crate) fn stalled_worker(&self, limit: std::time::Duration) -> Option<Arc<Worker>> {
        self.workers().into_iter().find(|w| w.since_heartbeat() > limit)
    }

    /// The worker for a request of `kind` naming `requested` (None: the first model of that
    /// kind), once the models of that kind have finished loading.
    pub(crate) async fn get(&self, kind: ModelKind, requested: Option<&str>) -> Result<Arc<Worker>> {
        let mut settled = Vec::new();
        for (_, slot) in self.slots.iter().filter(|(k, _)| *k == kind) {
            let mut rx = slot.subscribe();
            let slot = rx.wait_for(|s| !matches!(s, Slot::Loading)).await.map_err(|_| Error::ShuttingDown)?.clone();
            settled.push(slot);
        }
        let mut ready = settled.iter().filter_map(|s| match s {
            Slot::Ready(w) => Some(w),
            _ => None,
        });
        let failed = || {
            settled.iter().find_map(|s| match s {
                Slot::Failed(u) => Some(Error::ModelUnavailable {
                    kind: kind.as_str(),
                    name: u.name.clone(),
                    reason: u.reason.clone(),
                }),
                _ => None,
            })
        };
        match requested {
            None => ready.next().cloned().ok_or_else(|| {
                failed().unwrap_or_else(|| Error::ModelNotLoaded(format!("(any {} model)", kind.as_str())))
            }),
            Some(name) => {
                ready.find(|w| w.answers_to(name)).cloned().ok_or_else(|| Error::ModelNotLoaded(name.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::scheduler::tests::{loader, Fake};

    #[tokio::test]
    async fn requests_find_their_model_by_kind_and_name() {
        let registry = Registry::start(&Arc::new(Config::default()), &loader(Fake::new));
        assert_eq!(registry.get(ModelKind::Embedding, None).await.unwrap().info().name, "fake-embedding");
        let named = registry.get(ModelKind::Generation, Some("fake-generation")).await.unwrap();
        assert_eq!(named.kind(), ModelKind::Generation);
        assert_eq!(registry.get(ModelKind::Generation, Some("/fake")).await.unwrap().kind(), ModelKind::Generation);
        let wrong = registry.get(ModelKind::Generation, Some("fake-embedding")).await;
        assert!(matches!(wrong, Err(Error::ModelNotLoaded(_))));
        assert_eq!(registry.workers().len(), 2, "no cross-encoder slot unless one is configured");
        assert!(registry.get(ModelKind::Rerank, None).await.is_err());
        let with_reranker = Config { rerank_model: "reranker".into(), ..Config::default() };
        let registry = Registry::start(&Arc::new(with_reranker), &loader(Fake::new));
        assert_eq!(registry.get(ModelKind::Rerank, None).await.unwrap().info().name, "fake-rerank");
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
        let registry = Registry::start(&Arc::new(Config::default()), &slow);
        assert_eq!(registry.get(ModelKind::Embedding, None).await.unwrap().kind(), ModelKind::Embedding);
        assert_eq!(registry.loading(), vec![ModelKind::Generation]);
        // A generation request waits for its model, then is served.
        let waiting = registry.get(ModelKind::Generation, None);
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
        let registry = Registry::start(&Arc::new(Config::default()), &failing);
        registry.settled().await;
        assert_eq!(registry.workers().len(), 1);
        assert!(registry.get(ModelKind::Generation, None).await.is_ok());
        let error = registry.get(ModelKind::Embedding, None).await.err().unwrap().to_string();
        assert!(error.contains("could not be loaded") && error.contains("no such model folder"), "{error}");
        assert!(error.contains("stctl models pull"), "{error}");
        assert_eq!(registry.unavailable()[0].kind, ModelKind::Embedding);
    }
}
