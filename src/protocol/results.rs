//! Every method's result, as it goes out.

use serde::{Deserialize, Serialize};

use crate::engine::types::Generation;

/// Result of `generate` / `generate_stream`: the engine's [`Generation`] (flattened on the
/// wire) with the model's identity. Engine, cache and protocol share this one shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateResult {
    /// What the engine produced.
    #[serde(flatten)]
    pub generation: Generation,
    /// Model name.
    pub model: String,
    /// Model digest.
    pub model_digest: String,
    /// Whether the answer came from the cache.
    #[serde(default)]
    pub cached: bool,
    /// Prompt tokens whose KV the prefix cache held (they were not prefilled again); the answer
    /// is the same bytes either way.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub prefix_tokens: usize,
    /// The engine fingerprint the answer belongs to (`status`'s `engine_fingerprint`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub engine_fingerprint: String,
}

/// Result of `count_tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountResult {
    /// Tokens of the prompt as the model reads it (template and tools applied): the
    /// `prompt_tokens` a generation of the same params reports.
    pub prompt_tokens: usize,
    /// Model name.
    pub model: String,
    /// Model digest.
    pub model_digest: String,
}

/// Result of `tokenize`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizeResult {
    /// The text's token ids.
    pub tokens: Vec<u32>,
    /// Each token's text, when asked for (`with_pieces`): what `detokenize` makes of it alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pieces: Option<Vec<String>>,
    /// Model name.
    pub model: String,
    /// Model digest.
    pub model_digest: String,
}

/// Result of `detokenize`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetokenizeResult {
    /// The ids' text (special tokens included, as the model wrote them).
    pub text: String,
    /// Model name.
    pub model: String,
    /// Model digest.
    pub model_digest: String,
}

/// Result of `embed`: vectors as JSON numbers, or (`V` = `String`) as base64.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedResult<V = Vec<f32>> {
    /// One unit vector per text, in order. Floats round-trip exactly through JSON.
    pub embeddings: Vec<V>,
    /// Model name.
    pub model: String,
    /// Model digest.
    pub model_digest: String,
    /// The engine fingerprint the vectors belong to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub engine_fingerprint: String,
    /// How many of the texts were answered from the cache.
    #[serde(default)]
    pub cached: usize,
}

impl EmbedResult {
    /// The same result with each vector as [`base64_vector`].
    pub fn into_base64(self) -> EmbedResult<String> {
        let EmbedResult { embeddings, model, model_digest, engine_fingerprint, cached } = self;
        let embeddings = embeddings.iter().map(|v| base64_vector(v)).collect();
        EmbedResult { embeddings, model, model_digest, engine_fingerprint, cached }
    }
}

/// A vector as the base64 of its little-endian f32 bytes (OpenAI's `encoding_format: "base64"`):
/// the exact bits, a quarter of the JSON numbers' size, and no float parsing for the client.
pub fn base64_vector(vector: &[f32]) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Result of `rerank`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankResult {
    /// One score in 0..=1 per document, in input order: P(yes) / (P(yes) + P(no)).
    pub scores: Vec<f32>,
    /// Document indexes, best first (ties by input order).
    pub order: Vec<usize>,
    /// Model name.
    pub model: String,
    /// Model digest.
    pub model_digest: String,
    /// The judging prompt's version ([`rerank::PROMPT_VERSION`]).
    pub prompt_version: String,
    /// The engine fingerprint the scores belong to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub engine_fingerprint: String,
    /// How many of the documents were scored from the cache.
    #[serde(default)]
    pub cached: usize,
}

/// Result of `ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The daemon's version.
    pub version: String,
    /// [`super::PROTOCOL_VERSION`].
    pub protocol: u32,
    /// Its process id.
    pub pid: u32,
}

/// Result of `auth`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authenticated {
    /// Always true (a wrong key is an error).
    pub authenticated: bool,
}

/// Result of `reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloaded {
    /// The status line after the reload (what `STATUS=` says).
    pub status: String,
}

/// Result of `cache.clear`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cleared {
    /// `generation`, `embedding` or `all`.
    pub cleared: String,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_round_trip_bit_exactly() {
        let mut x: u32 = 0x1234_5678;
        let values: Vec<f32> = (0..20_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                f32::from_bits(x)
            })
            .filter(|f| f.is_finite())
            .collect();
        let result = EmbedResult {
            embeddings: vec![values.clone()],
            model: "m".into(),
            model_digest: "d".into(),
            engine_fingerprint: String::new(),
            cached: 0,
        };
        let line = serde_json::to_string(&result).unwrap();
        let back: EmbedResult = serde_json::from_str(&line).unwrap();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.embeddings[0]), bits(&values));
    }

    #[test]
    fn base64_vectors_are_little_endian_float32_bytes() {
        // 1.0 is 00 00 80 3f, -0.0 is 00 00 00 80.
        assert_eq!(base64_vector(&[1.0, -0.0]), "AACAPwAAAIA=");
        let result = EmbedResult {
            embeddings: vec![vec![1.0], vec![]],
            model: "m".into(),
            model_digest: "d".into(),
            engine_fingerprint: "e".into(),
            cached: 1,
        };
        let line = serde_json::to_string(&result.into_base64()).unwrap();
        assert_eq!(
            line,
            r#"{"embeddings":["AACAPw==",""],"model":"m","model_digest":"d","engine_fingerprint":"e","cached":1}"#
        );
    }
}
