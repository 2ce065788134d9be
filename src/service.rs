//! Loaded models as the scheduler and direct mode see them: validated requests in, protocol
//! results out. [`Model`] is the small trait a worker drives (ONNX services here, scripted fakes
//! in tests), so both modes give the same bytes.

use crate::config::Config;
use crate::engine::fingerprint::fingerprint;
use crate::engine::generate::GenerateRequest;
use crate::engine::{load_embedder, load_generator, ModelInfo, OnnxEmbedder, OnnxGenerator};
use crate::error::{Error, Result};
use crate::protocol::{EmbedResult, GenerateResult, ModelKind};

/// One loaded model, driven by one worker thread.
pub trait Model: Send {
    /// What it serves.
    fn kind(&self) -> ModelKind;
    /// Its identity.
    fn info(&self) -> &ModelInfo;
    /// Runs a generation, calling `on_piece` after every model call with the text it released
    /// (often empty); `on_piece` returning false cancels it.
    fn generate(
        &mut self,
        request: &GenerateRequest,
        on_piece: &mut dyn FnMut(&str) -> bool,
    ) -> Result<GenerateResult> {
        let _ = (request, on_piece);
        Err(Error::InvalidRequest(format!("model {} does not generate text", self.info().name)))
    }
    /// Embeds a batch; one vector per text, in order.
    fn embed(&mut self, texts: &[String]) -> Result<EmbedResult> {
        let _ = texts;
        Err(Error::InvalidRequest(format!("model {} does not embed", self.info().name)))
    }
}

/// Loads the model of `kind` named `name` (default: the configured one of that kind).
pub fn load(kind: ModelKind, config: &Config, name: Option<&str>) -> Result<Box<dyn Model>> {
    Ok(match kind {
        ModelKind::Generation => Box::new(GenerationService::load(config, name)?),
        ModelKind::Embedding => Box::new(EmbeddingService::load(config, name)?),
    })
}

/// The configured model name of `kind`.
pub fn configured(kind: ModelKind, config: &Config) -> &str {
    match kind {
        ModelKind::Generation => &config.generation_model,
        ModelKind::Embedding => &config.embedding_model,
    }
}

/// Checks that a request's `model` (if any) names the model `info`.
pub fn check_model(requested: Option<&str>, info: &ModelInfo) -> Result<()> {
    match requested {
        Some(name) if !info.answers_to(name) => Err(Error::ModelNotLoaded(name.to_string())),
        _ => Ok(()),
    }
}

/// A loaded generation model.
pub struct GenerationService {
    info: ModelInfo,
    generator: OnnxGenerator,
    engine: String,
}

impl GenerationService {
    /// Loads `name` (default: the configured generation model).
    pub fn load(config: &Config, name: Option<&str>) -> Result<Self> {
        let (info, generator) = load_generator(config, name.unwrap_or(&config.generation_model))?;
        Ok(GenerationService { info, generator, engine: fingerprint(config)?.id })
    }

    /// Runs a validated generation (see [`Model::generate`]).
    pub fn run(&mut self, request: &GenerateRequest, on_piece: &mut dyn FnMut(&str) -> bool) -> Result<GenerateResult> {
        let mut stream = self.generator.stream(request)?;
        for piece in stream.by_ref() {
            if !on_piece(&piece?) {
                return Err(Error::Cancelled);
            }
        }
        Ok(GenerateResult {
            generation: stream.finish()?,
            model: self.info.name.clone(),
            model_digest: self.info.digest.clone(),
            cached: false,
            engine_fingerprint: self.engine.clone(),
        })
    }
}

impl Model for GenerationService {
    fn kind(&self) -> ModelKind {
        ModelKind::Generation
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn generate(
        &mut self,
        request: &GenerateRequest,
        on_piece: &mut dyn FnMut(&str) -> bool,
    ) -> Result<GenerateResult> {
        self.run(request, on_piece)
    }
}

/// A loaded embedding model.
pub struct EmbeddingService {
    info: ModelInfo,
    embedder: OnnxEmbedder,
    engine: String,
}

impl EmbeddingService {
    /// Loads `name` (default: the configured embedding model).
    pub fn load(config: &Config, name: Option<&str>) -> Result<Self> {
        let (info, embedder) = load_embedder(config, name.unwrap_or(&config.embedding_model))?;
        Ok(EmbeddingService { info, embedder, engine: fingerprint(config)?.id })
    }

    /// Embeds a validated batch (see [`Model::embed`]).
    pub fn run(&mut self, texts: &[String]) -> Result<EmbedResult> {
        Ok(EmbedResult {
            embeddings: self.embedder.embed(texts)?,
            model: self.info.name.clone(),
            model_digest: self.info.digest.clone(),
            engine_fingerprint: self.engine.clone(),
        })
    }
}

impl Model for EmbeddingService {
    fn kind(&self) -> ModelKind {
        ModelKind::Embedding
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn embed(&mut self, texts: &[String]) -> Result<EmbedResult> {
        self.run(texts)
    }
}
