//! Reranking with a cross-encoder (a sequence-classification export, as text-embeddings-inference
//! serves): the query and a document go through the model together, one pair per run (so a score
//! never depends on the other documents or on padding), and the score is the sigmoid of its one
//! logit. Pairs travel through the embedding path (cache, worker jobs, merging) as one text each,
//! query and document joined by [`PAIR_SEPARATOR`], and come back as one-element vectors.

use tokenizers::{Tokenizer, TruncationParams, TruncationStrategy};

use crate::engine::backend::OnnxClassifier;
use crate::engine::kernels::exp::logistic;
use crate::error::{Error, Result};

/// What `rerank` results name as their prompt version: a cross-encoder takes no prompt.
pub const PROMPT_VERSION: &str = "cross-encoder";

/// Joins a query and a document into one text for the embedding path (NUL: no query holds one).
pub const PAIR_SEPARATOR: char = '\0';

/// The text that carries the pair (`query`, `document`).
pub fn pair_text(query: &str, document: &str) -> String {
    format!("{query}{PAIR_SEPARATOR}{document}")
}

/// The sigmoid of a logit, in f64 (text-embeddings-inference's default for one label).
pub fn sigmoid(logit: f32) -> f32 {
    logistic(f64::from(logit)) as f32
}

/// A loaded cross-encoder.
pub struct CrossEncoder {
    backend: OnnxClassifier,
    tokenizer: Tokenizer,
    model: String,
}

impl CrossEncoder {
    /// Puts the parts together: pairs are cut to `max_tokens` (longest part first).
    pub fn new(backend: OnnxClassifier, mut tokenizer: Tokenizer, max_tokens: usize, model: &str) -> Result<Self> {
        let truncation = TruncationParams {
            max_length: max_tokens,
            strategy: TruncationStrategy::LongestFirst,
            ..Default::default()
        };
        tokenizer
            .with_truncation(Some(truncation))
            .map_err(|e| Error::model(model, format!("cannot set the tokenizer's truncation: {e}")))?;
        Ok(CrossEncoder { backend, tokenizer, model: model.to_string() })
    }

    /// The score of each pair text (see [`pair_text`]), in order: one-element vectors.
    pub fn score_pairs(&mut self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        texts
            .iter()
            .map(|text| {
                let (query, document) = text.split_once(PAIR_SEPARATOR).ok_or_else(|| {
                    Error::InvalidRequest(format!("model {} scores (query, document) pairs", self.model))
                })?;
                let encoding = self
                    .tokenizer
                    .encode((query, document), true)
                    .map_err(|e| Error::InvalidRequest(format!("cannot tokenize a pair: {e}")))?;
                let ids: Vec<i64> = encoding.get_ids().iter().map(|&i| i64::from(i)).collect();
                let types: Vec<i64> = encoding.get_type_ids().iter().map(|&i| i64::from(i)).collect();
                match self.backend.classify(&ids, &types)?.as_slice() {
                    [logit] => Ok(vec![sigmoid(*logit)]),
                    other => Err(Error::model(
                        &self.model,
                        format!("gives {} labels; a reranker gives one score", other.len()),
                    )),
                }
            })
            .collect()
    }
}
