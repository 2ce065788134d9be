//! A rerank's result from its parts: each document's judgement by the generation model (see
//! [`crate::engine::rerank`]) or a cross-encoder's scores. A document's score never depends on the
//! others of the request.

use crate::engine::{cross_encoder, rerank};
use crate::error::{Error, Result};
use crate::protocol::{EmbedResult, GenerateResult, RerankResult};

/// Gathers the judgements of the documents, in order.
pub fn from_judgements(judgements: &[GenerateResult]) -> Result<RerankResult> {
    let first = judgements.first().ok_or_else(|| Error::InvalidRequest("no documents".into()))?;
    let scores = judgements.iter().map(|j| rerank::score(&j.generation)).collect::<Result<Vec<f32>>>()?;
    Ok(RerankResult {
        order: rerank::order(&scores),
        scores,
        model: first.model.clone(),
        model_digest: first.model_digest.clone(),
        prompt_version: rerank::PROMPT_VERSION.into(),
        engine_fingerprint: String::new(),
        cached: judgements.iter().filter(|j| j.cached).count(),
    })
}

/// A cross-encoder's scores (one-element vectors, in document order).
pub fn from_cross_encoder(result: EmbedResult) -> Result<RerankResult> {
    let scores = result
        .embeddings
        .iter()
        .map(|v| match v.as_slice() {
            [score] => Ok(*score),
            _ => Err(Error::engine(&result.model, "a cross-encoder gave other than one score per pair")),
        })
        .collect::<Result<Vec<f32>>>()?;
    Ok(RerankResult {
        order: rerank::order(&scores),
        scores,
        model: result.model,
        model_digest: result.model_digest,
        prompt_version: cross_encoder::PROMPT_VERSION.into(),
        engine_fingerprint: String::new(),
        cached: result.cached,
    })
}
