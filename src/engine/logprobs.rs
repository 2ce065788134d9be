//! Log-probabilities of generated tokens: the log-softmax of the model's raw logits (before any
//! constraint mask, temperature, top-k or top-p), with the most likely alternatives. Computed per
//! sequence from its own logits row, so they are as batch-invariant as the logits themselves.

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::engine::kernels::int4_matmul::Isa;
use crate::engine::kernels::ln::log_sum_exp;
use crate::engine::sampler;
use crate::error::{Error, Result};

/// Most alternatives one token may report (`top_logprobs`), as OpenAI allows.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Most extra tokens whose log-probabilities a request may follow.
pub const MAX_FOLLOWED_TOKENS: usize = 8;

/// What log-probabilities a generation reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogprobsRequest {
    /// How many most likely alternatives each generated token reports (0..=20).
    pub top: usize,
    /// Tokens whose log-probabilities every step reports as well (each string's first token),
    /// whether chosen or not: scoring, as `rerank` does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub follow: Vec<String>,
}

impl LogprobsRequest {
    /// Checks the limits.
    pub fn validate(&self) -> Result<()> {
        if self.top > MAX_TOP_LOGPROBS {
            return Err(Error::InvalidRequest(format!(
                "top_logprobs {} is over the limit of {MAX_TOP_LOGPROBS}",
                self.top
            )));
        }
        if self.follow.len() > MAX_FOLLOWED_TOKENS || self.follow.iter().any(String::is_empty) {
            return Err(Error::InvalidRequest(format!("at most {MAX_FOLLOWED_TOKENS} followed tokens, none empty")));
        }
        Ok(())
    }

    /// The token ids of `follow` under `tokenizer` (each string's first token).
    pub fn follow_ids(&self, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
        self.follow
            .iter()
            .map(|text| {
                let encoding = tokenizer
                    .encode(text.as_str(), false)
                    .map_err(|e| Error::InvalidRequest(format!("cannot tokenize {text:?}: {e}")))?;
                encoding
                    .get_ids()
                    .first()
                    .copied()
                    .ok_or_else(|| Error::InvalidRequest(format!("{text:?} has no tokens")))
            })
            .collect()
    }
}

/// One token and its log-probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TokenLogprob {
    /// Token id.
    pub token_id: u32,
    /// The token alone, decoded (a piece of a multi-byte character shows as U+FFFD).
    pub token: String,
    /// Natural log of its probability.
    pub logprob: f32,
}

/// The log-probabilities of one generated token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct StepLogprobs {
    /// The token chosen.
    #[serde(flatten)]
    pub chosen: TokenLogprob,
    /// The most likely tokens, best first (ties by lower id).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_logprobs: Vec<TokenLogprob>,
    /// The followed tokens (request order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub followed: Vec<TokenLogprob>,
}

/// The log-softmax of one logits row.
pub struct LogSoftmax<'a> {
    logits: &'a [f32],
    /// log(sum(exp(logits))), in f64.
    log_sum_exp: f64,
}

impl<'a> LogSoftmax<'a> {
    /// Over `logits` (NaN-free: the sampler has rejected NaN rows before this is used).
    pub fn new(logits: &'a [f32]) -> Self {
        let log_sum_exp = log_sum_exp(logits.iter().map(|&v| f64::from(v)), Isa::detect());
        LogSoftmax { logits, log_sum_exp }
    }

    /// Token `id`'s log-probability, decoded with `tokenizer`.
    pub fn token(&self, tokenizer: &Tokenizer, id: u32) -> Result<TokenLogprob> {
        let token = tokenizer
            .decode(&[id], false)
            .map_err(|e| Error::engine("decoder", format!("cannot decode token {id}: {e}")))?;
        let logprob = (f64::from(self.logits[id as usize]) - self.log_sum_exp) as f32;
        Ok(TokenLogprob { token_id: id, token, logprob })
    }

    /// What `request` asks about the step that chose `chosen`.
    pub fn step(
        &self,
        tokenizer: &Tokenizer,
        request: &LogprobsRequest,
        follow: &[u32],
        chosen: u32,
    ) -> Result<StepLogprobs> {
        let top = match request.top {
            0 => Vec::new(),
            n => sampler::by_logit(self.logits, n),
        };
        Ok(StepLogprobs {
            chosen: self.token(tokenizer, chosen)?,
            top_logprobs: top.into_iter().map(|id| self.token(tokenizer, id)).collect::<Result<_>>()?,
            followed: follow.iter().map(|&id| self.token(tokenizer, id)).collect::<Result<_>>()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_sums_to_one_and_keeps_order() {
        let logits = [2.0f32, -1.0, 0.5, 2.0, f32::NEG_INFINITY];
        let ls = LogSoftmax::new(&logits);
        let probs: Vec<f64> = logits.iter().map(|&v| (f64::from(v) - ls.log_sum_exp).exp()).collect();
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(probs[4], 0.0);
        // Shifting every logit leaves log-probabilities unchanged.
        let shifted: Vec<f32> = logits.iter().map(|v| v + 1000.0).collect();
        let ls2 = LogSoftmax::new(&shifted);
        for (a, b) in logits.iter().zip(&shifted) {
            let (a, b) = (f64::from(*a) - ls.log_sum_exp, f64::from(*b) - ls2.log_sum_exp);
            assert!(a == b || (a - b).abs() < 1e-9, "{a} {b}");
        }
    }

    #[test]
    fn limits() {
        assert!(LogprobsRequest { top: 20, follow: vec![] }.validate().is_ok());
        assert!(LogprobsRequest { top: 21, follow: vec![] }.validate().is_err());
        assert!(LogprobsRequest { top: 0, follow: vec![String::new()] }.validate().is_err());
    }
}
