//! Every method's params, as they arrive: serde types, unknown fields refused. Defaults, limits
//! and normalization are `crate::core::validate`'s.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::tools::{Tool, ToolChoice};
use crate::engine::types::ChatMessage;

/// Parameters of `generate` and `generate_stream`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GenerateParams {
    /// The user prompt (or `messages`).
    #[serde(default)]
    pub prompt: String,
    /// A conversation (`role`: system, user or assistant; `content`), rendered by the model's
    /// chat template, instead of `prompt`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<ChatMessage>,
    /// Use `prompt` verbatim, without the chat template.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub raw: bool,
    /// Let a model with a thinking switch in its chat template (Qwen3's `enable_thinking`) think
    /// first (default off; refused for a model without one).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub think: bool,
    /// Seed (default: the configured default seed, 42).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Most tokens to generate (default: configured, 512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_new_tokens: Option<usize>,
    /// Stop strings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Sampling temperature; 0 (default) = greedy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Top-k for sampling; 0 = off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    /// Top-p for sampling; 0 or 1 = off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Model name; default the configured generation model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Structured output: the answer is a JSON document valid against this JSON Schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// Structured output: the answer matches this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Structured output: the answer is exactly one of these strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<String>>,
    /// Structured output: the answer is a string of this Lark grammar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grammar: Option<String>,
    /// Report each generated token's log-probability (log-softmax of the raw logits).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub logprobs: bool,
    /// With `logprobs`: also the N most likely tokens at each step (N <= 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<usize>,
    /// Functions the model may call (`name`, `description`, `parameters` as a JSON Schema);
    /// the model's chat template must take tools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Tool>,
    /// With `tools`: `auto` (default), `none`, `required`, or `{"function": NAME}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// With `tools`: whether an answer may hold several calls (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
}

/// Parameters of `embed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EmbedParams {
    /// Texts to embed.
    pub texts: Vec<String>,
    /// Model name; default the configured embedding model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `query`, `passage`, or another prompt name of the model: its prompt goes before each text
    /// (default: the model's default prompt, if any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Keep this many leading dimensions, re-normalized (Matryoshka models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<usize>,
    /// How the vectors are written: JSON numbers (default) or base64.
    #[serde(default, skip_serializing_if = "VectorEncoding::is_float")]
    pub encoding_format: VectorEncoding,
}

/// How `embed` writes its vectors (OpenAI's `encoding_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VectorEncoding {
    /// JSON numbers, each an f32 written with the digits the wire always had.
    #[default]
    Float,
    /// Each vector one string, [`crate::protocol::base64_vector`].
    Base64,
}

impl VectorEncoding {
    fn is_float(&self) -> bool {
        *self == VectorEncoding::Float
    }
}

/// Parameters of `rerank`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RerankParams {
    /// What the documents are judged against.
    pub query: String,
    /// The documents to score.
    pub documents: Vec<String>,
    /// Generation model name; default the configured generation model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// Params of `tokenize`: a text as the generation model's tokenizer splits it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TokenizeParams {
    /// The text, verbatim (no chat template).
    pub text: String,
    /// Generation model (folder name); the default one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Whether the tokenizer adds its special tokens (a BOS, for models that have one).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub add_special: bool,
    /// Whether the result carries each token's text.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub with_pieces: bool,
}

/// Params of `detokenize`: token ids back to text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeParams {
    /// Token ids of the model's vocabulary.
    pub tokens: Vec<u32>,
    /// Generation model (folder name); the default one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// Params of `auth`. Never logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthParams {
    /// The daemon's API key.
    pub key: String,
}

/// Which result cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheKind {
    /// Generations.
    Generation,
    /// Embeddings (and cross-encoder scores).
    Embedding,
}

impl CacheKind {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            CacheKind::Generation => "generation",
            CacheKind::Embedding => "embedding",
        }
    }
}

/// Params of `cache.clear`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheClearParams {
    /// One cache, or absent for both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheKind>,
}

/// Params of the methods that take none: absent, or an empty object (anything else given is
/// ignored, as before version 1 had them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoParams {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_params_are_rejected() {
        let err = serde_json::from_str::<GenerateParams>(r#"{"prompt":"x","sede":1}"#).unwrap_err();
        assert!(err.to_string().contains("sede"));
    }
}
