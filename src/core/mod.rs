//! The use cases, once for every transport: JSON-RPC methods, the HTTP routes and direct mode
//! each translate their wire into typed params, call [`Core`], and translate its typed result
//! back. Every call does the same steps in the same order: validate (before any model is looked
//! up) -> resolve the model -> the shared cache (which computes only what it lacks, identical
//! requests in flight once) -> the [`Runner`] -> build the result and stamp the engine
//! fingerprint, once. The runner is the daemon's model workers or direct mode's in-process models.

pub mod rerank;
pub mod validate;

use std::future::Future;
use std::pin::Pin;

use crate::cache::SharedCache;
use crate::engine::generate::GenerateRequest;
use crate::error::{Error, Result};
use crate::model::{ModelInfo, ModelKind};
use crate::protocol::{
    CacheClearParams, CacheStats, Cleared, CountResult, DetokenizeParams, DetokenizeResult, EmbedParams, EmbedResult,
    GenerateParams, GenerateResult, RerankParams, RerankResult, SnapshotInfo, TokenizeParams, TokenizeResult,
};
use validate::RequestSettings;

/// A future a [`PieceSink`] returns (boxed: sinks are used as trait objects).
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = std::io::Result<()>> + Send + 'a>>;

/// Where the pieces of a streamed answer go, and how a request learns that its client left:
/// a JSON-RPC connection, an HTTP response body, direct mode's terminal.
pub trait PieceSink: Send {
    /// Sends one piece; fails when the client stopped reading (the request is then cancelled).
    fn piece(&mut self, text: String) -> SinkFuture<'_>;
    /// Whether a piece could not be delivered.
    fn is_broken(&self) -> bool;
    /// Whether the client has gone.
    fn peer_gone(&self) -> bool;
    /// The model that answers, once it is known (before any piece). A sink that wraps another
    /// passes it on.
    fn model(&mut self, info: &ModelInfo) {
        let _ = info;
    }
}

/// A sink for answers that are not streamed, whose client cannot leave (direct mode, tests).
pub struct NoSink;

impl PieceSink for NoSink {
    fn piece(&mut self, _: String) -> SinkFuture<'_> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn is_broken(&self) -> bool {
        false
    }

    fn peer_gone(&self) -> bool {
        false
    }
}

/// Runs validated work on loaded models.
pub trait Runner: Sync {
    /// A model resolved for requests (a worker, an in-process model).
    type Model: Send + Sync;

    /// The model of `kind` a request names (None: the configured one), loaded if it must be.
    fn model(&self, kind: ModelKind, name: Option<&str>) -> impl Future<Output = Result<Self::Model>> + Send;

    /// Its identity (what cache keys and results name).
    fn info(&self, model: &Self::Model) -> ModelInfo;

    /// Generates; with `stream`, pieces go to `sink` as they come. Gives up when the client leaves.
    fn generate(
        &self,
        model: &Self::Model,
        request: GenerateRequest,
        sink: &mut dyn PieceSink,
        stream: bool,
    ) -> impl Future<Output = Result<GenerateResult>> + Send;

    /// Embeds (or, on a cross-encoder, scores pair texts). Gives up when the client leaves.
    fn embed(
        &self,
        model: &Self::Model,
        texts: Vec<String>,
        sink: &mut dyn PieceSink,
    ) -> impl Future<Output = Result<EmbedResult>> + Send;
}

/// The typed use cases over one runner and cache.
pub struct Core<'a, R: Runner> {
    runner: R,
    cache: &'a SharedCache,
    settings: RequestSettings,
    engine: &'a str,
}

impl<'a, R: Runner> Core<'a, R> {
    /// The use cases over `runner` and `cache`, for requests checked against `settings`, whose
    /// answers belong to the engine fingerprint `engine`.
    pub fn new(runner: R, cache: &'a SharedCache, settings: RequestSettings, engine: &'a str) -> Self {
        Core { runner, cache, settings, engine }
    }

    /// The runner.
    pub fn runner(&self) -> &R {
        &self.runner
    }

    /// Generates (with `stream`, pieces go to `sink`; a cached answer is one piece).
    pub async fn generate(
        &self,
        params: &GenerateParams,
        sink: &mut dyn PieceSink,
        stream: bool,
    ) -> Result<GenerateResult> {
        let request = validate::generate(params, &self.settings)?;
        let model = self.runner.model(ModelKind::Generation, params.model.as_deref()).await?;
        let info = self.runner.info(&model);
        sink.model(&info);
        let (model, run, reborrowed) = (&model, request.clone(), &mut *sink);
        let result =
            self.cache.generate(&info, &request, move || self.runner.generate(model, run, reborrowed, stream)).await?;
        if result.cached && stream && !result.generation.text.is_empty() {
            let _ = sink.piece(result.generation.text.clone()).await;
        }
        Ok(GenerateResult { engine_fingerprint: self.engine.to_string(), ..result })
    }

    /// Counts the prompt tokens a generation of `params` would have (template and tools
    /// applied; validated as `generate` is), without running the model.
    pub async fn count_tokens(&self, params: &GenerateParams) -> Result<CountResult> {
        let request = validate::generate(params, &self.settings)?;
        let model = self.runner.model(ModelKind::Generation, params.model.as_deref()).await?;
        let info = self.runner.info(&model);
        let counted = info.clone();
        let prompt_tokens =
            blocking(&info, "counting tokens", move || crate::engine::prompt_token_count(&counted, &request)).await?;
        Ok(CountResult { prompt_tokens, model: info.name, model_digest: info.digest })
    }

    /// `params.text`'s token ids under the generation model's tokenizer (no template).
    pub async fn tokenize(&self, params: &TokenizeParams) -> Result<TokenizeResult> {
        validate::tokenize(params, &self.settings.limits)?;
        let info = self.tokenizer_model(params.model.as_deref()).await?;
        let (counted, params) = (info.clone(), params.clone());
        let tokenized = blocking(&info, "tokenizing", move || {
            crate::engine::tokenize(&counted, &params.text, params.add_special, params.with_pieces)
        })
        .await?;
        Ok(TokenizeResult {
            tokens: tokenized.ids,
            pieces: tokenized.pieces,
            model: info.name,
            model_digest: info.digest,
        })
    }

    /// The text of `params.tokens` under the generation model's tokenizer.
    pub async fn detokenize(&self, params: &DetokenizeParams) -> Result<DetokenizeResult> {
        validate::detokenize(params, &self.settings.limits)?;
        let info = self.tokenizer_model(params.model.as_deref()).await?;
        let (read, ids) = (info.clone(), params.tokens.clone());
        let text = blocking(&info, "detokenizing", move || crate::engine::detokenize(&read, &ids)).await?;
        Ok(DetokenizeResult { text, model: info.name, model_digest: info.digest })
    }

    /// The generation model whose tokenizer a request names (the default one when none).
    async fn tokenizer_model(&self, requested: Option<&str>) -> Result<ModelInfo> {
        let model = self.runner.model(ModelKind::Generation, requested).await?;
        Ok(self.runner.info(&model))
    }

    /// Embeds: cached vectors reused, the missing texts run on the model; `dimensions` last.
    pub async fn embed(&self, params: &EmbedParams, sink: &mut dyn PieceSink) -> Result<EmbedResult> {
        Ok(self.embed_counting(params, sink, false).await?.0)
    }

    /// [`Core::embed`], and with `count` the tokens of the texts under the model's tokenizer
    /// (for usage figures; 0 without).
    pub async fn embed_counting(
        &self,
        params: &EmbedParams,
        sink: &mut dyn PieceSink,
        count: bool,
    ) -> Result<(EmbedResult, usize)> {
        let valid = validate::embed(params, &self.settings.limits)?;
        let model = self.runner.model(ModelKind::Embedding, valid.model.as_deref()).await?;
        let info = self.runner.info(&model);
        let texts = valid.model_texts(&info)?;
        let tokens = if count { crate::engine::embed::token_count(&info, &params.texts)? } else { 0 };
        let model = &model;
        let mut result =
            self.cache.embed(&info, &texts, move |missing| self.runner.embed(model, missing, sink)).await?;
        valid.shape(&mut result)?;
        Ok((EmbedResult { engine_fingerprint: self.engine.to_string(), ..result }, tokens))
    }

    /// Reranks: by the configured cross-encoder (pairs through the embedding path), or by each
    /// document's judgement by the generation model (each an ordinary, cached generation).
    pub async fn rerank(&self, params: &RerankParams, sink: &mut dyn PieceSink) -> Result<RerankResult> {
        let valid = validate::rerank(params, &self.settings.limits)?;
        let result = match valid.cross_encoder(&self.settings.rerank_model) {
            Some(name) => {
                let model = self.runner.model(ModelKind::Rerank, Some(name)).await?;
                let info = self.runner.info(&model);
                let (model, reborrowed) = (&model, &mut *sink);
                let pairs = valid.pairs();
                let scored =
                    self.cache.embed(&info, &pairs, move |missing| self.runner.embed(model, missing, reborrowed));
                rerank::from_cross_encoder(scored.await?)?
            }
            None => {
                let model = self.runner.model(ModelKind::Generation, valid.model.as_deref()).await?;
                let info = self.runner.info(&model);
                let mut judgements = Vec::with_capacity(valid.len());
                for request in valid.judgements() {
                    let (model, reborrowed, judged) = (&model, &mut *sink, request.clone());
                    let compute = move || self.runner.generate(model, judged, reborrowed, false);
                    judgements.push(self.cache.generate(&info, &request, compute).await?);
                }
                rerank::from_judgements(&judgements)?
            }
        };
        Ok(RerankResult { engine_fingerprint: self.engine.to_string(), ..result })
    }

    /// The cache's figures.
    pub fn cache_stats(&self) -> Result<CacheStats> {
        self.cache.stats()
    }

    /// Empties one cache or both.
    pub fn cache_clear(&self, params: &CacheClearParams) -> Result<Cleared> {
        self.cache.clear(params.cache)?;
        let cleared = params.cache.map_or("all", |c| c.name());
        Ok(Cleared { cleared: cleared.into() })
    }

    /// Writes a snapshot now.
    pub fn cache_snapshot(&self) -> Result<Option<SnapshotInfo>> {
        self.cache.snapshot()
    }
}

/// Runs tokenizer work (`what`, for the error) on the blocking pool: it reads files and takes
/// CPU time the runtime's threads must not.
async fn blocking<T: Send + 'static>(
    info: &ModelInfo,
    what: &str,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(|e| Error::engine(&info.name, format!("{what} failed: {e}")))?
}
