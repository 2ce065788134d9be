//! Direct mode: what `stctl` does when no daemon answers. The same [`Core`] as the daemon, run by
//! models loaded in this process (each once, and only when the cache lacks an answer), with a
//! per-user snapshot folder (`~/.cache/steadytext`).

use std::collections::hash_map::{Entry, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;

use futures_util::FutureExt;

use crate::cache::{Cache, SharedCache};
use crate::config::Config;
use crate::core::{Core, NoSink, PieceSink, Runner};
use crate::engine::generate::GenerateRequest;
use crate::error::{Error, Result};
use crate::model::{self, ModelFiles, ModelInfo, ModelKind};
use crate::protocol::{EmbedParams, EmbedResult, GenerateResult, RerankParams, RerankResult};
use crate::service::{self, Model};

/// The user's cache (when caching is on and the engine can be fingerprinted) and the engine's id.
fn user_cache(config: &Config) -> (SharedCache, String) {
    let engine = crate::engine::fingerprint::fingerprint(config)
        .inspect_err(|e| tracing::warn!(error = %e, "cannot fingerprint the engine; running without the cache"))
        .ok();
    let id = engine.as_ref().map(|f| f.id.clone()).unwrap_or_default();
    (SharedCache::new(engine.filter(|_| config.cache.enabled).map(|e| Cache::for_user(&config.cache, e))), id)
}

/// Models loaded in this process on first use, by kind and folder.
pub struct LocalRunner<'a> {
    config: &'a Config,
    loaded: Mutex<HashMap<(ModelKind, PathBuf), Box<dyn Model>>>,
}

impl Runner for LocalRunner<'_> {
    type Model = (ModelKind, ModelInfo);

    /// The identity only (the cache may hold the answer: nothing is loaded yet).
    async fn model(&self, kind: ModelKind, name: Option<&str>) -> Result<Self::Model> {
        let dir = model::resolve_dir(&self.config.model_dir, name.unwrap_or(self.config.model_name(kind)))?;
        let files = ModelFiles::discover(&dir)?;
        Ok((kind, ModelInfo { name: files.name.clone(), digest: files.digest()?, dir }))
    }

    fn info(&self, (_, info): &Self::Model) -> ModelInfo {
        info.clone()
    }

    async fn generate(
        &self,
        m: &Self::Model,
        request: GenerateRequest,
        sink: &mut dyn PieceSink,
        stream: bool,
    ) -> Result<GenerateResult> {
        // Direct mode's sinks deliver at once: each piece's future is ready.
        let mut on_piece = |text: &str| !stream || sink.piece(text.into()).now_or_never().is_none_or(|r| r.is_ok());
        self.with(m, |model| model.generate(&request, &mut on_piece))
    }

    async fn embed(&self, m: &Self::Model, texts: Vec<String>, _: &mut dyn PieceSink) -> Result<EmbedResult> {
        self.with(m, |model| model.embed(&texts))
    }
}

impl LocalRunner<'_> {
    /// Runs `f` on the model `m`, loading it first if it is not loaded.
    fn with<T>(&self, (kind, info): &(ModelKind, ModelInfo), f: impl FnOnce(&mut dyn Model) -> Result<T>) -> Result<T> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let model = match loaded.entry((*kind, info.dir.clone())) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(service::load(*kind, self.config, Some(&info.dir.display().to_string()))?),
        };
        f(model.as_mut())
    }
}

/// Runs `use_case` on a [`Core`] of in-process models and the user's cache, then snapshots it.
pub fn run<T>(config: &Config, use_case: impl AsyncFnOnce(&Core<'_, LocalRunner<'_>>) -> Result<T>) -> Result<T> {
    let (cache, engine) = user_cache(config);
    let core = Core::new(LocalRunner { config, loaded: Mutex::default() }, &cache, config.into(), &engine);
    let runtime = tokio::runtime::Builder::new_current_thread().build().map_err(|e| Error::io("tokio", e))?;
    let result = runtime.block_on(use_case(&core));
    if let Err(e) = cache.snapshot_if_dirty() {
        tracing::warn!(error = %e, "cannot write the per-user cache snapshot");
    }
    result
}

/// Embeds in-process; only texts missing from the cache load and run the model.
pub fn embed(config: &Config, params: &EmbedParams) -> Result<EmbedResult> {
    run(config, async |core| core.embed(params, &mut NoSink).await)
}

/// Reranks in-process (see [`Core::rerank`]).
pub fn rerank(config: &Config, params: &RerankParams) -> Result<RerankResult> {
    run(config, async |core| core.rerank(params, &mut NoSink).await)
}
