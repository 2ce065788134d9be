//! Direct mode: what `stctl` does when no daemon answers. Same engine and the same cache routine
//! as the daemon ([`SharedCache`]), with a per-user snapshot folder (`~/.cache/steadytext`).

use std::future::Future;
use std::path::PathBuf;

use crate::cache::{Cache, SharedCache};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::ModelInfo;
use crate::model::{self, ModelFiles};
use crate::protocol::{EmbedParams, EmbedResult, GenerateParams, GenerateResult, RerankParams, RerankResult};
use crate::service::{CrossEncoderService, EmbeddingService, GenerationService};

/// The per-user cache folder: `[cache] dir`, else `$XDG_CACHE_HOME/steadytext` (`~/.cache/steadytext`).
pub fn user_cache_dir(config: &Config) -> Option<PathBuf> {
    config.cache.dir.clone().or_else(|| dirs::cache_dir().map(|d| d.join("steadytext")))
}

/// The user's cache, loaded from its newest snapshot (None when caching is off).
pub fn user_cache(config: &Config) -> Option<Cache> {
    if !config.cache.enabled {
        return None;
    }
    let engine = match crate::engine::fingerprint::fingerprint(config) {
        Ok(engine) => engine,
        Err(e) => {
            tracing::warn!(error = %e, "cannot fingerprint the engine; running without the cache");
            return None;
        }
    };
    let mut cache = Cache::new(&config.cache, user_cache_dir(config), engine);
    cache.load();
    Some(cache)
}

/// A model's identity without loading it (for cache lookups).
fn identity(config: &Config, name: &str) -> Result<ModelInfo> {
    let dir = model::resolve_dir(&config.model_dir, name)?;
    let files = ModelFiles::discover(&dir)?;
    Ok(ModelInfo { name: files.name.clone(), digest: files.digest()?, dir })
}

/// Runs one of the cache routines to completion on this thread.
fn block_on<T>(work: impl Future<Output = Result<T>>) -> Result<T> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().build().map_err(|e| Error::io("the in-process runtime", e))?;
    runtime.block_on(work)
}

fn persist(cache: &SharedCache) {
    if let Err(e) = cache.snapshot_if_dirty() {
        tracing::warn!(error = %e, "cannot write the per-user cache snapshot");
    }
}

/// Generates in-process; a cached answer is served (as one piece) without loading the model.
pub fn generate(
    config: &Config,
    params: &GenerateParams,
    on_piece: &mut dyn FnMut(&str) -> bool,
) -> Result<GenerateResult> {
    let request = params.to_request(config)?;
    let info = identity(config, params.model.as_deref().unwrap_or(&config.generation_model))?;
    let cache = SharedCache::new(user_cache(config));
    let result = block_on(cache.generate(&info, &request, || async {
        GenerationService::load(config, params.model.as_deref())?.run(&request, &mut *on_piece)
    }))?;
    if result.cached && !result.generation.text.is_empty() {
        on_piece(&result.generation.text);
    }
    persist(&cache);
    Ok(GenerateResult { engine_fingerprint: engine_id(config), ..result })
}

/// The engine fingerprint's id for answers (empty when it cannot be computed).
fn engine_id(config: &Config) -> String {
    crate::engine::fingerprint::fingerprint(config).map(|f| f.id).unwrap_or_default()
}

/// Embeds in-process; only texts missing from the cache load and run the model.
pub fn embed(config: &Config, params: &EmbedParams) -> Result<EmbedResult> {
    params.validate(&config.limits)?;
    let info = identity(config, params.model.as_deref().unwrap_or(&config.embedding_model))?;
    let texts = params.model_texts(&info)?;
    let cache = SharedCache::new(user_cache(config));
    let mut result = block_on(cache.embed(&info, &texts, |missing| async move {
        EmbeddingService::load(config, params.model.as_deref())?.run(&missing)
    }))?;
    persist(&cache);
    params.shape(&mut result)?;
    Ok(EmbedResult { engine_fingerprint: engine_id(config), ..result })
}

/// Reranks in-process: by the configured cross-encoder, or by each document's judgement by the
/// generation model; scores from the cache, the model loaded once on the first one missing.
pub fn rerank(config: &Config, params: &RerankParams) -> Result<RerankResult> {
    params.validate(&config.limits)?;
    let cache = SharedCache::new(user_cache(config));
    let result = match params.cross_encoder(config) {
        Some(name) => {
            let info = identity(config, name)?;
            let scored = block_on(cache.embed(&info, &params.pairs(), |missing| async move {
                CrossEncoderService::load(config, Some(name))?.run(&missing)
            }))?;
            RerankResult::from_cross_encoder(scored)?
        }
        None => {
            let info = identity(config, params.model.as_deref().unwrap_or(&config.generation_model))?;
            let mut service: Option<GenerationService> = None;
            let mut judgements = Vec::with_capacity(params.documents.len());
            for request in &params.judgements() {
                judgements.push(block_on(cache.generate(&info, request, || async {
                    let service = match &mut service {
                        Some(s) => s,
                        empty => empty.insert(GenerationService::load(config, params.model.as_deref())?),
                    };
                    service.run(request, &mut |_| true)
                }))?);
            }
            RerankResult::from_judgements(&judgements)?
        }
    };
    persist(&cache);
    Ok(RerankResult { engine_fingerprint: engine_id(config), ..result })
}
