//! Direct mode: what `stctl` does when no daemon answers. Same engine and same cache format as
//! the daemon, with a per-user snapshot folder (`~/.cache/steadytext`).

use std::path::PathBuf;

use crate::cache::{Cache, EmbedPlan};
use crate::config::Config;
use crate::engine::ModelInfo;
use crate::error::Result;
use crate::model::{self, ModelFiles};
use crate::protocol::{EmbedParams, EmbedResult, GenerateParams, GenerateResult};
use crate::service::{EmbeddingService, GenerationService};

/// The per-user cache folder: `[cache] dir`, else `$XDG_CACHE_HOME/steadytext` (`~/.cache/steadytext`).
pub fn user_cache_dir(config: &Config) -> Option<PathBuf> {
    config.cache.dir.clone().or_else(|| dirs::cache_dir().map(|d| d.join("steadytext")))
}

/// The user's cache, loaded from its newest snapshot (None when caching is off).
pub fn user_cache(config: &Config) -> Option<Cache> {
    if !config.cache.enabled {
        return None;
    }
    let mut cache = Cache::new(&config.cache, user_cache_dir(config));
    cache.load(None);
    Some(cache)
}

/// A model's identity without loading it (for cache lookups).
fn identity(config: &Config, name: &str) -> Result<ModelInfo> {
    let dir = model::resolve_dir(&config.model_dir, name)?;
    let files = ModelFiles::discover(&dir)?;
    Ok(ModelInfo { name: files.name.clone(), digest: files.digest()?, dir })
}

fn persist(cache: Option<&mut Cache>) {
    if let Some(c) = cache.filter(|c| c.is_dirty()) {
        if let Err(e) = c.snapshot() {
            tracing::warn!(error = %e, "cannot write the per-user cache snapshot");
        }
    }
}

/// Generates in-process; a cached answer is served without loading the model.
pub fn generate(
    config: &Config,
    params: &GenerateParams,
    on_piece: &mut dyn FnMut(&str) -> bool,
) -> Result<GenerateResult> {
    let request = params.to_request(config)?;
    let info = identity(config, params.model.as_deref().unwrap_or(&config.generation_model))?;
    let mut cache = user_cache(config);
    if let Some(hit) = cache.as_mut().and_then(|c| c.lookup_generation(&info, &request)) {
        if !hit.text.is_empty() {
            on_piece(&hit.text);
        }
        return Ok(hit);
    }
    let result = GenerationService::load(config, params.model.as_deref())?.run(config, params, on_piece)?;
    if let Some(c) = cache.as_mut() {
        c.store_generation(&request, &result);
    }
    persist(cache.as_mut());
    Ok(result)
}

/// Embeds in-process; only texts missing from the cache load and run the model.
pub fn embed(config: &Config, params: &EmbedParams) -> Result<EmbedResult> {
    params.validate(&config.limits)?;
    let info = identity(config, params.model.as_deref().unwrap_or(&config.embedding_model))?;
    let mut cache = user_cache(config);
    let plan = EmbedPlan::new(cache.as_mut(), &info.digest, &params.texts);
    let computed = if plan.is_complete() {
        Vec::new()
    } else {
        let missing = EmbedParams { texts: plan.missing.clone(), model: params.model.clone() };
        EmbeddingService::load(config, params.model.as_deref())?.run(config, &missing)?.embeddings
    };
    let embeddings = plan.complete(computed, cache.as_mut(), &info.digest, &params.texts);
    persist(cache.as_mut());
    Ok(EmbedResult { embeddings, model: info.name, model_digest: info.digest })
}
