//! Loaded models as the scheduler and direct mode see them: validated requests in, protocol
//! results out. [`Model`] is the small trait a worker drives (ONNX services here, scripted fakes
//! in tests), so both modes give the same bytes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::config::Config;
use crate::engine::backend::{BatchDecode, OnnxKv};
use crate::engine::cross_encoder::CrossEncoder;
use crate::engine::fingerprint::fingerprint;
use crate::engine::generate::{GenerateRequest, Sequence};
use crate::engine::prefix::{PrefixState, PrefixStats};
use crate::engine::{load_cross_encoder, load_embedder, load_generator, OnnxEmbedder, OnnxGenerator};
use crate::error::{Error, Result};
use crate::model::ModelInfo;
use crate::model::ModelKind;
use crate::protocol::{EmbedResult, GenerateResult};

/// Whether a generation could start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// It is active.
    Started,
    /// Not now: the active ones leave it no room (their KV caches' memory budget); try again
    /// when one of them has finished.
    Later,
}

/// What a scheduler step did to one active generation.
pub enum Advance {
    /// Text it released (may be empty: the step produced no whole character yet, or fed a prompt
    /// chunk).
    Piece(String),
    /// It ended (after its last piece): the answer, or why it failed.
    Done(Result<GenerateResult>),
}

/// One loaded model, driven by one worker thread.
pub trait Model: Send {
    /// What it serves.
    fn kind(&self) -> ModelKind;
    /// Its identity.
    fn info(&self) -> &ModelInfo;
    /// Most generations it keeps active at once (1: one at a time).
    fn max_active(&self) -> usize {
        1
    }
    /// Starts generation `id` (the caller's unique number) among the active ones, if there is
    /// room; a model with no active generation always takes one.
    fn admit(&mut self, id: u64, request: &GenerateRequest) -> Result<Admission> {
        let _ = (id, request);
        Err(Error::InvalidRequest(format!("model {} does not generate text", self.info().name)))
    }
    /// Advances the active generations by one scheduler step; returns what happened to each one
    /// it touched, in order (a piece before its end).
    fn step(&mut self) -> Vec<(u64, Advance)> {
        Vec::new()
    }
    /// Drops active generation `id` (cancelled).
    fn cancel(&mut self, id: u64) {
        let _ = id;
    }
    /// Runs one generation alone to its end, calling `on_piece` after every step with the text it
    /// released (often empty); `on_piece` returning false cancels it.
    fn generate(
        &mut self,
        request: &GenerateRequest,
        on_piece: &mut dyn FnMut(&str) -> bool,
    ) -> Result<GenerateResult> {
        const ALONE: u64 = 0;
        if self.admit(ALONE, request)? != Admission::Started {
            return Err(Error::engine(&self.info().name, "an idle model refused a generation"));
        }
        loop {
            for (_, advance) in self.step() {
                match advance {
                    Advance::Piece(text) if !on_piece(&text) => {
                        self.cancel(ALONE);
                        return Err(Error::Cancelled);
                    }
                    Advance::Piece(_) => {}
                    Advance::Done(result) => return result,
                }
            }
        }
    }
    /// Its prefix cache's state and counters (generation models).
    fn prefix_stats(&self) -> Option<Arc<PrefixStats>> {
        None
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
        ModelKind::Rerank => Box::new(CrossEncoderService::load(config, name)?),
    })
}

/// Bytes of a KV arena holding `sequences` rows of up to `positions` positions: rows and
/// capacity both grow by doubling (capacity from 64), so this is what the arena may reach.
fn kv_arena_bytes(sequences: usize, positions: usize, per_position: usize) -> usize {
    sequences.next_power_of_two().saturating_mul(positions.max(64).next_power_of_two()).saturating_mul(per_position)
}

/// The bytes one generation model's KV caches may take together: `[daemon] batch_kv_mb`, and at
/// most half of the memory the process's cgroup allows (systemd's `MemoryMax=`), so that a request
/// the budget admits cannot get the daemon killed; one that cannot fit is refused up front.
fn kv_budget(batch_kv_mb: usize, model: &str) -> usize {
    let configured = batch_kv_mb.saturating_mul(1 << 20);
    match crate::fsutil::cgroup_memory_max() {
        Some(max) if (max / 2) < configured as u64 => {
            let budget = (max / 2) as usize;
            tracing::info!(
                model,
                batch_kv_mb,
                memory_max_mb = max >> 20,
                kv_budget_mb = budget >> 20,
                "KV cache budget capped at half the unit's MemoryMax"
            );
            budget
        }
        _ => configured,
    }
}

/// The bytes one generation model's prefix cache may hold: `[cache] prefix_mb`, and at most an
/// eighth of the memory the process's cgroup allows.
fn prefix_budget(prefix_mb: usize) -> usize {
    let configured = prefix_mb.saturating_mul(1 << 20);
    match crate::fsutil::cgroup_memory_max() {
        Some(max) => configured.min((max / 8) as usize),
        None => configured,
    }
}

/// A loaded generation model and its active generations.
pub struct GenerationService {
    info: ModelInfo,
    generator: OnnxGenerator,
    engine: String,
    max_active: usize,
    /// Most bytes the active generations' KV caches may take together (one alone may exceed it).
    kv_budget: usize,
    /// Active generations in arrival order.
    active: Vec<(u64, Sequence<OnnxKv>)>,
}

impl GenerationService {
    /// Loads `name` (default: the configured generation model).
    pub fn load(config: &Config, name: Option<&str>) -> Result<Self> {
        let (info, generator) = load_generator(config, name.unwrap_or(&config.generation_model))?;
        let generator = generator.with_prefix_cache(prefix_budget(config.cache.prefix_mb))?;
        match generator.prefix_state() {
            PrefixState::On => {
                let budget_mb = generator.prefix_stats().budget_bytes.load(Ordering::Relaxed) >> 20;
                tracing::info!(model = %info.name, budget_mb, "prompt prefixes are cached (prefix-reuse probe passed)");
            }
            PrefixState::Off(reason) => tracing::info!(model = %info.name, %reason, "prompt prefixes are not cached"),
        }
        // Either way up to batch_sequences generations are in progress together, so that a long
        // one never holds the others back: batched, their decode steps are one model call; else
        // each step runs every one of them alone, in turn (the same bits as alone).
        match generator.batching() {
            BatchDecode::Batched => {
                tracing::info!(model = %info.name, sequences = config.daemon.batch_sequences, "decode steps of concurrent generations run as one model call (batch-invariance probe passed)");
            }
            BatchDecode::OneAtATime(reason) => {
                tracing::info!(model = %info.name, %reason, sequences = config.daemon.batch_sequences, "concurrent generations take turns, one model call each per step");
            }
        }
        let max_active = config.daemon.batch_sequences;
        let kv_budget = kv_budget(config.daemon.batch_kv_mb, &info.name);
        Ok(GenerationService {
            info,
            generator,
            engine: fingerprint(config)?.id,
            max_active,
            kv_budget,
            active: Vec::new(),
        })
    }

    /// Whether its prefix cache serves (else why not).
    pub fn prefix_state(&self) -> PrefixState {
        self.generator.prefix_state()
    }

    /// How its decode steps run when several generations are in progress.
    pub fn batching(&self) -> BatchDecode {
        self.generator.batching()
    }

    /// Runs a validated generation alone (see [`Model::generate`]).
    pub fn run(&mut self, request: &GenerateRequest, on_piece: &mut dyn FnMut(&str) -> bool) -> Result<GenerateResult> {
        self.generate(request, on_piece)
    }

    fn result(&self, sequence: Sequence<OnnxKv>) -> Result<GenerateResult> {
        let prefix_tokens = sequence.prefix_tokens();
        Ok(GenerateResult {
            prefix_tokens,
            generation: sequence.finish()?,
            model: self.info.name.clone(),
            model_digest: self.info.digest.clone(),
            cached: false,
            engine_fingerprint: self.engine.clone(),
        })
    }

    /// One model call for the active generations whose ids `chosen` says; records what each
    /// released.
    fn advance(&mut self, chosen: impl Fn(u64) -> bool, events: &mut Vec<(u64, Advance)>) {
        let (ids, mut sequences): (Vec<u64>, Vec<&mut Sequence<OnnxKv>>) =
            self.active.iter_mut().filter(|(id, _)| chosen(*id)).map(|(id, s)| (*id, s)).unzip();
        if ids.is_empty() {
            return;
        }
        match self.generator.advance(&mut sequences) {
            Ok(pieces) => events.extend(ids.into_iter().zip(pieces).map(|(id, p)| (id, Advance::Piece(p)))),
            Err(e) => {
                // Every generation of the failed call ends with the error (the first gets the
                // error itself, the others its message).
                let failed = ids;
                self.active.retain(|(id, _)| !failed.contains(id));
                let reason = e.to_string();
                let mut error = Some(e);
                for id in failed {
                    let e = error.take().unwrap_or_else(|| Error::engine(&self.info.name, reason.clone()));
                    events.push((id, Advance::Done(Err(e))));
                }
            }
        }
    }
}

impl Model for GenerationService {
    fn kind(&self) -> ModelKind {
        ModelKind::Generation
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn max_active(&self) -> usize {
        self.max_active
    }

    fn admit(&mut self, id: u64, request: &GenerateRequest) -> Result<Admission> {
        let sequence = self.generator.start(request)?;
        let per_position = self.generator.kv_bytes_per_position();
        let alone = kv_arena_bytes(1, sequence.max_positions(), per_position);
        if alone > self.kv_budget {
            return Err(Error::InvalidRequest(format!(
                "this generation needs up to {} MiB of KV cache ({} prompt tokens + max_new_tokens {}), over this \
                 server's {} MiB ([daemon] batch_kv_mb): lower max_new_tokens or shorten the prompt",
                alone >> 20,
                sequence.prompt_tokens(),
                request.max_new_tokens,
                self.kv_budget >> 20
            )));
        }
        if !self.active.is_empty() {
            let positions =
                self.active.iter().map(|(_, s)| s.max_positions()).fold(sequence.max_positions(), usize::max);
            let bytes = kv_arena_bytes(self.active.len() + 1, positions, per_position);
            if bytes > self.kv_budget {
                return Ok(Admission::Later);
            }
        }
        self.active.push((id, sequence));
        Ok(Admission::Started)
    }

    /// One prompt chunk of the oldest generation still prefilling (alone, so a long prompt
    /// delays the others by one chunk at most), then one decode step for every generation past
    /// its prompt, as one call.
    fn step(&mut self) -> Vec<(u64, Advance)> {
        let mut events = Vec::new();
        let decoding: Vec<u64> = self.active.iter().filter(|(_, s)| !s.is_prefilling()).map(|(id, _)| *id).collect();
        if let Some(prefilling) = self.active.iter().find(|(_, s)| s.is_prefilling()).map(|(id, _)| *id) {
            self.advance(|id| id == prefilling, &mut events);
        }
        self.advance(|id| decoding.contains(&id), &mut events);
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].1.is_finished() {
                let (id, sequence) = self.active.remove(i);
                events.push((id, Advance::Done(self.result(sequence))));
            } else {
                i += 1;
            }
        }
        events
    }

    fn cancel(&mut self, id: u64) {
        self.active.retain(|(active, _)| *active != id);
    }

    fn prefix_stats(&self) -> Option<Arc<PrefixStats>> {
        Some(self.generator.prefix_stats().clone())
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
            cached: 0,
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

/// A loaded cross-encoder: scores (query, document) pairs that come as texts through the
/// embedding path ([`crate::engine::cross_encoder::pair_text`]).
pub struct CrossEncoderService {
    info: ModelInfo,
    encoder: CrossEncoder,
    engine: String,
}

impl CrossEncoderService {
    /// Loads `name` (default: the configured rerank model).
    pub fn load(config: &Config, name: Option<&str>) -> Result<Self> {
        let name = name.unwrap_or(&config.rerank_model);
        if name.is_empty() {
            return Err(Error::InvalidRequest("no rerank_model is configured".into()));
        }
        let (info, encoder) = load_cross_encoder(config, name)?;
        Ok(CrossEncoderService { info, encoder, engine: fingerprint(config)?.id })
    }

    /// Scores pair texts; one one-element vector per pair, in order.
    pub fn run(&mut self, pairs: &[String]) -> Result<EmbedResult> {
        Ok(EmbedResult {
            embeddings: self.encoder.score_pairs(pairs)?,
            model: self.info.name.clone(),
            model_digest: self.info.digest.clone(),
            engine_fingerprint: self.engine.clone(),
            cached: 0,
        })
    }
}

impl Model for CrossEncoderService {
    fn kind(&self) -> ModelKind {
        ModelKind::Rerank
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn embed(&mut self, pairs: &[String]) -> Result<EmbedResult> {
        self.run(pairs)
    }
}
