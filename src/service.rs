//! Request execution shared by the daemon's workers and `stctl`'s direct mode, so that both give
//! the same bytes: protocol parameters in, protocol results out.

use crate::config::Config;
use crate::engine::{load_embedder, load_generator, ModelInfo, OnnxEmbedder, OnnxGenerator};
use crate::error::{Error, Result};
use crate::protocol::{EmbedParams, EmbedResult, GenerateParams, GenerateResult};

/// Checks that a request's `model` (if any) names the loaded model.
pub fn check_model(requested: Option<&str>, info: &ModelInfo) -> Result<()> {
    match requested {
        Some(name) if name != info.name && Some(name) != info.dir.to_str() => {
            Err(Error::ModelNotLoaded(name.to_string()))
        }
        _ => Ok(()),
    }
}

/// A loaded generation model.
pub struct GenerationService {
    info: ModelInfo,
    generator: OnnxGenerator,
}

impl GenerationService {
    /// Loads `name` (default: the configured generation model).
    pub fn load(config: &Config, name: Option<&str>) -> Result<Self> {
        let (info, generator) = load_generator(config, name.unwrap_or(&config.generation_model))?;
        Ok(GenerationService { info, generator })
    }

    /// The model's identity.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Runs a generation, calling `on_piece` after every model call with the text it released
    /// (often empty); `on_piece` returning false cancels the generation (the client went away).
    pub fn run(
        &mut self,
        config: &Config,
        params: &GenerateParams,
        on_piece: &mut dyn FnMut(&str) -> bool,
    ) -> Result<GenerateResult> {
        check_model(params.model.as_deref(), &self.info)?;
        let request = params.to_request(config)?;
        let mut stream = self.generator.stream(&request)?;
        for piece in stream.by_ref() {
            if !on_piece(&piece?) {
                return Err(Error::Cancelled);
            }
        }
        let generation = stream.finish()?;
        Ok(GenerateResult {
            text: generation.text,
            token_ids: generation.token_ids,
            prompt_tokens: generation.prompt_tokens,
            finish_reason: generation.finish_reason,
            model: self.info.name.clone(),
            model_digest: self.info.digest.clone(),
            cached: false,
        })
    }
}

/// A loaded embedding model.
pub struct EmbeddingService {
    info: ModelInfo,
    embedder: OnnxEmbedder,
}

impl EmbeddingService {
    /// Loads `name` (default: the configured embedding model).
    pub fn load(config: &Config, name: Option<&str>) -> Result<Self> {
        let (info, embedder) = load_embedder(config, name.unwrap_or(&config.embedding_model))?;
        Ok(EmbeddingService { info, embedder })
    }

    /// The model's identity.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Embeds a batch.
    pub fn run(&mut self, config: &Config, params: &EmbedParams) -> Result<EmbedResult> {
        self.run_many(config, std::slice::from_ref(params)).pop().expect("one result per request")
    }

    /// Embeds several requests in one model run (a text's vector does not depend on its batch);
    /// each request is validated on its own and gets its own result.
    pub fn run_many(&mut self, config: &Config, requests: &[EmbedParams]) -> Vec<Result<EmbedResult>> {
        let checks: Vec<Result<()>> = requests
            .iter()
            .map(|p| check_model(p.model.as_deref(), &self.info).and_then(|()| p.validate(&config.limits)))
            .collect();
        let texts: Vec<String> = requests
            .iter()
            .zip(&checks)
            .filter(|(_, c)| c.is_ok())
            .flat_map(|(p, _)| p.texts.iter().cloned())
            .collect();
        let mut vectors = match self.embedder.embed(&texts) {
            Ok(v) => v.into_iter(),
            Err(e) => {
                let reason = e.to_string();
                return checks.into_iter().map(|c| c.and(Err(Error::model(&self.info.name, reason.clone())))).collect();
            }
        };
        requests
            .iter()
            .zip(checks)
            .map(|(p, check)| {
                check.map(|()| EmbedResult {
                    embeddings: vectors.by_ref().take(p.texts.len()).collect(),
                    model: self.info.name.clone(),
                    model_digest: self.info.digest.clone(),
                })
            })
            .collect()
    }
}
