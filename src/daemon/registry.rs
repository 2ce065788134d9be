//! The model registry: every loaded model's worker, found by kind and by the name a request
//! gives. It can hold several models per kind; today's configuration starts one of each.

use std::sync::Arc;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::protocol::ModelKind;

use super::scheduler::{Loader, Worker};

/// Loaded models, in load order.
pub(crate) struct Registry {
    workers: Vec<Worker>,
}

impl Registry {
    /// Starts one worker per configured model, loading them in parallel.
    pub(crate) fn start(config: &Arc<Config>, loader: &Loader) -> Result<Self> {
        let kinds = [ModelKind::Generation, ModelKind::Embedding];
        let workers = std::thread::scope(|s| {
            let handles: Vec<_> =
                kinds.map(|kind| s.spawn(move || Worker::start(kind, config.clone(), loader.clone()))).into();
            handles.into_iter().map(|h| h.join().unwrap_or(Err(Error::ShuttingDown))).collect::<Result<Vec<_>>>()
        })?;
        Ok(Registry { workers })
    }

    /// Every worker.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Worker> {
        self.workers.iter()
    }

    /// The worker for a request of `kind` naming `requested` (None: the first model of that kind).
    pub(crate) fn get(&self, kind: ModelKind, requested: Option<&str>) -> Result<&Worker> {
        let mut of_kind = self.workers.iter().filter(|w| w.kind() == kind);
        match requested {
            None => of_kind.next().ok_or_else(|| Error::ModelNotLoaded(format!("(any {} model)", kind.as_str()))),
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
        let registry = Registry::start(&Arc::new(Config::default()), &loader(Fake::new)).unwrap();
        assert_eq!(registry.get(ModelKind::Embedding, None).unwrap().info().name, "fake-embedding");
        assert_eq!(registry.get(ModelKind::Generation, Some("fake-generation")).unwrap().kind(), ModelKind::Generation);
        assert_eq!(registry.get(ModelKind::Generation, Some("/fake")).unwrap().kind(), ModelKind::Generation);
        assert!(matches!(registry.get(ModelKind::Generation, Some("fake-embedding")), Err(Error::ModelNotLoaded(_))));
        assert_eq!(registry.iter().count(), 2);
    }
}
