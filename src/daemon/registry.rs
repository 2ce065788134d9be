//! The model registry: every loaded model's worker, found by kind and by the name a request
//! gives. It can hold several models per kind; today's configuration starts one of each.

use std::sync::Arc;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::protocol::{ModelKind, UnavailableModel};

use super::scheduler::{Loader, Worker};

/// Loaded models, in load order, and the configured ones that failed to load.
pub(crate) struct Registry {
    workers: Vec<Worker>,
    unavailable: Vec<UnavailableModel>,
}

impl Registry {
    /// Starts one worker per configured model, loading them in parallel. A model that fails to
    /// load is logged and recorded; the daemon serves the others (a fresh install without
    /// models still starts, and answers with the reason instead of crash-looping).
    pub(crate) fn start(config: &Arc<Config>, loader: &Loader) -> Self {
        let kinds = [ModelKind::Generation, ModelKind::Embedding];
        let started: Vec<(ModelKind, Result<Worker>)> = std::thread::scope(|s| {
            let handles: Vec<_> =
                kinds.map(|kind| s.spawn(move || Worker::start(kind, config.clone(), loader.clone()))).into();
            kinds
                .into_iter()
                .zip(handles)
                .map(|(kind, h)| (kind, h.join().unwrap_or(Err(Error::ShuttingDown))))
                .collect()
        });
        let mut registry = Registry { workers: Vec::new(), unavailable: Vec::new() };
        for (kind, worker) in started {
            match worker {
                Ok(worker) => registry.workers.push(worker),
                Err(e) => {
                    let name = crate::service::configured(kind, config).to_string();
                    tracing::error!(kind = kind.as_str(), model = %name, error = %e, "model not loaded; serving without it");
                    registry.unavailable.push(UnavailableModel { kind, name, reason: e.to_string() });
                }
            }
        }
        registry
    }

    /// Configured models that failed to load.
    pub(crate) fn unavailable(&self) -> &[UnavailableModel] {
        &self.unavailable
    }

    /// Every worker.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Worker> {
        self.workers.iter()
    }

    /// The worker for a request of `kind` naming `requested` (None: the first model of that kind).
    pub(crate) fn get(&self, kind: ModelKind, requested: Option<&str>) -> Result<&Worker> {
        let mut of_kind = self.workers.iter().filter(|w| w.kind() == kind);
        let failed = || {
            self.unavailable.iter().find(|u| u.kind == kind).map(|u| Error::ModelUnavailable {
                kind: kind.as_str(),
                name: u.name.clone(),
                reason: u.reason.clone(),
            })
        };
        match requested {
            None => of_kind.next().ok_or_else(|| {
                failed().unwrap_or_else(|| Error::ModelNotLoaded(format!("(any {} model)", kind.as_str())))
            }),
            Some(name) => of_kind.find(|w| w.answers_to(name)).ok_or_else(|| Error::ModelNotLoaded(name.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::scheduler::tests::{loader, Fake};

    #[test]
    fn requests_find_their_model_by_kind_and_name() {
        let registry = Registry::start(&Arc::new(Config::default()), &loader(Fake::new));
        assert_eq!(registry.get(ModelKind::Embedding, None).unwrap().info().name, "fake-embedding");
        assert_eq!(registry.get(ModelKind::Generation, Some("fake-generation")).unwrap().kind(), ModelKind::Generation);
        assert_eq!(registry.get(ModelKind::Generation, Some("/fake")).unwrap().kind(), ModelKind::Generation);
        assert!(matches!(registry.get(ModelKind::Generation, Some("fake-embedding")), Err(Error::ModelNotLoaded(_))));
        assert_eq!(registry.iter().count(), 2);
    }

    #[test]
    fn a_model_that_fails_to_load_is_reported_and_the_others_serve() {
        let failing: Loader = Arc::new(|kind, config: &Config| match kind {
            ModelKind::Embedding => Err(Error::model("all-MiniLM-L6-v2", "no such model folder")),
            ModelKind::Generation => loader(Fake::new)(kind, config),
        });
        let registry = Registry::start(&Arc::new(Config::default()), &failing);
        assert_eq!(registry.iter().count(), 1);
        assert!(registry.get(ModelKind::Generation, None).is_ok());
        let error = registry.get(ModelKind::Embedding, None).err().unwrap().to_string();
        assert!(error.contains("could not be loaded") && error.contains("no such model folder"), "{error}");
        assert!(error.contains("stctl pull"), "{error}");
        assert_eq!(registry.unavailable()[0].kind, ModelKind::Embedding);
    }
}
