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

/// Where one configured model's loading stands.
#[derive(Clone)]
enum Slot {
    Loading,
    Ready(Arc<Worker>),
    Failed(UnavailableModel),
}

/// The configured models, in configuration order.
pub(crate) struct Registry {
    slots: Vec<(ModelKind, watch::Receiver<Slot>)>,
}

impl Registry {
    /// Starts loading one worker per configured model, each in its own thread, and returns at
    /// once. A model that fails to load is logged and recorded; the daemon serves the others (a
    /// fresh install without models still starts, and answers with the reason instead of
    /// crash-looping).
    pub(crate) fn start(config: &Arc<Config>, loader: &Loader) -> Self {
        let slots = [ModelKind::Generation, ModelKind::Embedding]
            .into_iter()
            .map(|kind| {
                let (tx, rx) = watch::channel(Slot::Loading);
                let (shared, loader) = (config.clone(), loader.clone());
                let load = move || {
                    let slot = match Worker::start(kind, shared.clone(), loader) {
                        Ok(worker) => {
                            let info = worker.info();
                            tracing::info!(kind = kind.as_str(), model = %info.name, digest = %info.digest, "model loaded");
                            Slot::Ready(Arc::new(worker))
                        }
                        Err(e) => {
                            let name = crate::service::configured(kind, &shared).to_string();
                            tracing::error!(kind = kind.as_str(), model = %name, error = %e, "model not loaded; serving without it");
                            Slot::Failed(UnavailableModel { kind, name, reason: e.to_string() })
                        }
                    };
                    let _ = tx.send(slot);
                };
                if let Err(e) = std::thread::Builder::new().name(format!("{}-loader", kind.as_str())).spawn(load) {
                    let name = crate::service::configured(kind, config).to_string();
                    let failed = Slot::Failed(UnavailableModel { kind, name, reason: e.to_string() });
                    return (kind, watch::channel(failed).1);
                }
                (kind, rx)
            })
            .collect();
        Registry { slots }
    }

    /// Waits until every model has loaded or failed to.
    pub(crate) async fn settled(&self) {
        for (_, rx) in &self.slots {
            let _ = rx.clone().wait_for(|s| !matches!(s, Slot::Loading)).await;
        }
    }

    /// Configured models that failed to load.
    pub(crate) fn unavailable(&self) -> Vec<UnavailableModel> {
        self.slots
            .iter()
            .filter_map(|(_, rx)| match &*rx.borrow() {
                Slot::Failed(u) => Some(u.clone()),
                _ => None,
            })
            .collect()
    }

    /// Kinds of the models still loading.
    pub(crate) fn loading(&self) -> Vec<ModelKind> {
        self.slots.iter().filter(|(_, rx)| matches!(*rx.borrow(), Slot::Loading)).map(|(kind, _)| *kind).collect()
    }

    /// Every loaded worker.
    pub(crate) fn workers(&self) -> Vec<Arc<Worker>> {
        self.slots
            .iter()
            .filter_map(|(_, rx)| match &*rx.borrow() {
                Slot::Ready(w) => Some(w.clone()),
                _ => None,
            })
            .collect()
    }

    /// The worker for a request of `kind` naming `requested` (None: the first model of that
    /// kind), once the models of that kind have finished loading.
    pub(crate) async fn get(&self, kind: ModelKind, requested: Option<&str>) -> Result<Arc<Worker>> {
        let mut settled = Vec::new();
        for (_, rx) in self.slots.iter().filter(|(k, _)| *k == kind) {
            let mut rx = rx.clone();
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
        assert_eq!(registry.workers().len(), 2);
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
            ModelKind::Generation => loader(Fake::new)(kind, config),
        });
        let registry = Registry::start(&Arc::new(Config::default()), &failing);
        registry.settled().await;
        assert_eq!(registry.workers().len(), 1);
        assert!(registry.get(ModelKind::Generation, None).await.is_ok());
        let error = registry.get(ModelKind::Embedding, None).await.err().unwrap().to_string();
        assert!(error.contains("could not be loaded") && error.contains("no such model folder"), "{error}");
        assert!(error.contains("stctl pull"), "{error}");
        assert_eq!(registry.unavailable()[0].kind, ModelKind::Embedding);
    }
}
