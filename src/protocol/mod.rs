//! The wire protocol between `stctl` and `steadytextd`: JSON-RPC 2.0, one JSON object per line
//! (NDJSON) over a Unix or TCP stream. See `docs/protocol.md` for the full description.

mod status;
pub mod wire;

pub use status::{
    CacheKindStats, CacheStats, Histogram, Latency, MetricsSnapshot, ModelStatus, SnapshotInfo, Status,
    UnavailableModel, HISTOGRAM_BOUNDS,
};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::{Config, Limits};
use crate::engine::constraint::Constraint;
use crate::engine::generate::{ChatMessage, GenerateRequest, Generation};
use crate::engine::logprobs::LogprobsRequest;
use crate::engine::sampler::Sampling;
use crate::engine::{cross_encoder, rerank};
use crate::error::{Error, Result};

/// HTTP header holding a request's route key (`crate::cache::generation_route_key`): `stctl`
/// sends it, the HTTP front answers with it, a load balancer hashes on it.
pub const ROUTE_KEY_HEADER: &str = "X-Steadytext-Route-Key";
/// Version of the method set and payloads below; reported by `ping` and `status`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line the daemon reads, in bytes.
pub const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;

/// Most requests in one JSON-RPC batch (an array on one line).
pub const MAX_BATCH_REQUESTS: usize = 256;

/// JSON-RPC error codes used by the daemon.
pub mod codes {
    /// The line is not valid JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Valid JSON but not a JSON-RPC 2.0 request.
    pub const INVALID_REQUEST: i64 = -32600;
    /// Unknown method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Parameters do not fit the method.
    pub const INVALID_PARAMS: i64 = -32602;
    /// The engine failed.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// The queue is full; `data.retry_after_ms` says when to retry.
    pub const OVERLOADED: i64 = -32000;
    /// The named model is not loaded by this daemon.
    pub const MODEL_NOT_LOADED: i64 = -32001;
    /// The daemon is shutting down.
    pub const SHUTTING_DOWN: i64 = -32002;
    /// The request line is longer than [`super::MAX_LINE_BYTES`].
    pub const TOO_LARGE: i64 = -32003;
    /// A TCP connection did not authenticate first (or used a wrong key); it is closed.
    pub const UNAUTHORIZED: i64 = -32004;
    /// An admin method called by a client that is not root or in the admin group.
    pub const FORBIDDEN: i64 = -32005;
    /// A constrained output did not match its constraint before its budget (max_new_tokens, the
    /// context) ran out.
    pub const OUTPUT_INCOMPLETE: i64 = -32006;
}

/// A JSON-RPC request (or, without `id`, a notification).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Must be "2.0".
    pub jsonrpc: String,
    /// The method name.
    pub method: String,
    /// Method parameters.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub params: Value,
    /// Request id, echoed in the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcError {
    /// One of [`codes`].
    pub code: i64,
    /// What happened and what to do.
    pub message: String,
    /// Extra machine-readable detail (`retry_after_ms` for overload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    /// An error without data.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError { code, message: message.into(), data: None }
    }
}

/// The one mapping from the library's errors to JSON-RPC codes.
impl From<&Error> for RpcError {
    fn from(e: &Error) -> Self {
        let code = match e {
            Error::Parse(_) => codes::PARSE_ERROR,
            Error::NotJsonRpc(_) => codes::INVALID_REQUEST,
            Error::UnknownMethod { .. } => codes::METHOD_NOT_FOUND,
            Error::InvalidRequest(_) | Error::CacheDisabled | Error::WrongModelKind { .. } => codes::INVALID_PARAMS,
            Error::LineTooLong { .. } => codes::TOO_LARGE,
            Error::Unauthorized(_) => codes::UNAUTHORIZED,
            Error::Forbidden(_) => codes::FORBIDDEN,
            Error::OutputIncomplete(_) => codes::OUTPUT_INCOMPLETE,
            Error::LineTimeout { .. } => codes::INVALID_REQUEST,
            Error::ModelNotLoaded(_) | Error::ModelNotFound { .. } | Error::ModelUnavailable { .. } => {
                codes::MODEL_NOT_LOADED
            }
            Error::Overloaded { .. } | Error::TooManyConnections { .. } => codes::OVERLOADED,
            Error::ShuttingDown | Error::Cancelled => codes::SHUTTING_DOWN,
            Error::Runtime { .. }
            | Error::Model { .. }
            | Error::Inference { .. }
            | Error::Engine { .. }
            | Error::Config(_)
            | Error::Io { .. }
            | Error::Snapshot(_)
            | Error::Hub { .. } => codes::INTERNAL_ERROR,
        };
        let data = match e {
            Error::Overloaded { retry_after_ms, .. } => Some(json!({ "retry_after_ms": retry_after_ms })),
            Error::TooManyConnections { .. } => Some(json!({ "retry_after_ms": 1000 })),
            _ => None,
        };
        RpcError { code, message: e.to_string(), data }
    }
}

impl From<Error> for RpcError {
    fn from(e: Error) -> Self {
        RpcError::from(&e)
    }
}

/// A JSON-RPC response line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    /// Always "2.0".
    pub jsonrpc: String,
    /// The result, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The error, on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
    /// The request's id (null when it could not be read).
    pub id: Value,
}

impl Response {
    /// A success response.
    pub fn ok(id: Value, result: Value) -> Self {
        Response { jsonrpc: "2.0".into(), result: Some(result), error: None, id }
    }

    /// An error response.
    pub fn err(id: Value, error: RpcError) -> Self {
        Response { jsonrpc: "2.0".into(), result: None, error: Some(error), id }
    }
}

/// Method name of the streaming notifications sent during `generate_stream`.
pub const PIECE_NOTIFICATION: &str = "generate.piece";

/// Parameters of a `generate.piece` notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Piece {
    /// The id of the `generate_stream` request it belongs to.
    pub id: Value,
    /// The next text piece (whole UTF-8 characters).
    pub text: String,
}

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
}

impl GenerateParams {
    /// The one constraint among `schema`, `regex`, `choices` and `grammar`, if any.
    fn constraint(&self) -> Result<Option<Constraint>> {
        let given = [
            ("schema", self.schema.is_some()),
            ("regex", self.regex.is_some()),
            ("choices", self.choices.is_some()),
            ("grammar", self.grammar.is_some()),
        ];
        let mut set = given.iter().filter(|(_, is_set)| *is_set).map(|(name, _)| *name);
        if let (Some(first), Some(second)) = (set.next(), set.next()) {
            return Err(Error::InvalidRequest(format!("give one constraint, not both {first} and {second}")));
        }
        Ok(if let Some(schema) = &self.schema {
            Some(Constraint::schema(schema.clone()))
        } else if let Some(regex) = &self.regex {
            Some(Constraint::Regex(regex.clone()))
        } else if let Some(choices) = &self.choices {
            Some(Constraint::Choices(choices.clone()))
        } else {
            self.grammar.clone().map(Constraint::Grammar)
        })
    }

    /// The log-probabilities asked for, if any.
    fn logprobs(&self) -> Result<Option<LogprobsRequest>> {
        match (self.logprobs, self.top_logprobs) {
            (false, Some(_)) => Err(Error::InvalidRequest("top_logprobs needs logprobs: true".into())),
            (false, None) => Ok(None),
            (true, top) => Ok(Some(LogprobsRequest { top: top.unwrap_or(0), follow: Vec::new() })),
        }
    }

    /// Applies defaults and limits, giving the engine's request.
    pub fn to_request(&self, config: &Config) -> Result<GenerateRequest> {
        if self.prompt.is_empty() && self.messages.is_empty() {
            return Err(Error::InvalidRequest("give a prompt (or messages)".into()));
        }
        check_input(&config.limits, "prompt", &self.prompt)?;
        let conversation: usize = self.messages.iter().map(|m| m.content.len() + m.role.len()).sum();
        check_input_len(&config.limits, "the messages", conversation)?;
        let max_new_tokens = self.max_new_tokens.unwrap_or(config.max_new_tokens);
        if max_new_tokens > config.limits.max_new_tokens {
            return Err(Error::InvalidRequest(format!(
                "max_new_tokens {max_new_tokens} is over this server's limit of {}",
                config.limits.max_new_tokens
            )));
        }
        for s in &self.stop {
            check_input(&config.limits, "stop string", s)?;
        }
        // A conversation of one user turn is that prompt (it renders the same): one cache entry.
        let (prompt, messages) = match self.messages.as_slice() {
            [only] if only.role == "user" && self.prompt.is_empty() => (only.content.clone(), Vec::new()),
            _ => (self.prompt.clone(), self.messages.clone()),
        };
        let request = GenerateRequest {
            prompt,
            messages,
            raw: self.raw,
            seed: self.seed.unwrap_or(config.default_seed),
            max_new_tokens,
            stop: self.stop.clone(),
            sampling: Sampling {
                temperature: self.temperature.unwrap_or(0.0),
                top_k: self.top_k.unwrap_or(0),
                top_p: self.top_p.unwrap_or(0.0),
            },
            constraint: self.constraint()?,
            logprobs: self.logprobs()?,
        };
        request.validate()?;
        Ok(request)
    }
}

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
    /// The engine fingerprint the answer belongs to (`status`'s `engine_fingerprint`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub engine_fingerprint: String,
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
}

impl EmbedParams {
    /// The texts as the model embeds them: each after the prompt of `mode` (see
    /// [`crate::engine::embed::Prompts`]). The cache keys these, so every mode has its own entries.
    pub fn model_texts(&self, info: &crate::model::ModelInfo) -> Result<Vec<String>> {
        let prompts = crate::engine::embed::Prompts::of(info)?;
        let prefix = prompts.prefix(&info.name, self.mode.as_deref())?;
        Ok(self.texts.iter().map(|t| format!("{prefix}{t}")).collect())
    }

    /// Applies `dimensions` to the vectors of a result.
    pub fn shape(&self, result: &mut EmbedResult) -> Result<()> {
        if let Some(n) = self.dimensions {
            for v in &mut result.embeddings {
                crate::engine::embed::truncate(v, n)?;
            }
        }
        Ok(())
    }

    /// Checks the batch against the limits.
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        check_batch(limits, "texts", self.texts.len())?;
        self.texts.iter().try_for_each(|t| check_input(limits, "text", t))
    }
}

/// Result of `embed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedResult {
    /// One unit vector per text, in order. Floats round-trip exactly through JSON.
    pub embeddings: Vec<Vec<f32>>,
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

impl RerankParams {
    /// Checks the request against the limits.
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        if self.query.trim().is_empty() {
            return Err(Error::InvalidRequest("give a query".into()));
        }
        if self.query.contains(cross_encoder::PAIR_SEPARATOR) {
            return Err(Error::InvalidRequest("the query must not contain NUL characters".into()));
        }
        check_batch(limits, "documents", self.documents.len())?;
        check_input(limits, "query", &self.query)?;
        self.documents.iter().try_for_each(|d| check_input(limits, "document", d))
    }

    /// The configured cross-encoder, when this request goes to it: it names none and one is
    /// configured, or it names that one (by its configured name or folder name).
    pub fn cross_encoder<'a>(&'a self, config: &'a Config) -> Option<&'a str> {
        let configured = config.rerank_model.as_str();
        if configured.is_empty() {
            return None;
        }
        let folder = std::path::Path::new(configured).file_name().and_then(|n| n.to_str());
        match self.model.as_deref() {
            None => Some(configured),
            Some(m) if m == configured || Some(m) == folder => Some(configured),
            Some(_) => None,
        }
    }

    /// One judgement (a generation) per document, in order, for the generation model.
    pub fn judgements(&self) -> Vec<GenerateRequest> {
        self.documents.iter().map(|d| rerank::judgement(&self.query, d)).collect()
    }

    /// One pair text per document, in order, for a cross-encoder.
    pub fn pairs(&self) -> Vec<String> {
        self.documents.iter().map(|d| cross_encoder::pair_text(&self.query, d)).collect()
    }
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

impl RerankResult {
    /// Gathers the judgements of the documents, in order.
    pub fn from_judgements(judgements: &[GenerateResult]) -> Result<Self> {
        let first = judgements.first().ok_or_else(|| Error::InvalidRequest("no documents".into()))?;
        let scores = judgements.iter().map(|j| rerank::score(&j.generation)).collect::<Result<Vec<f32>>>()?;
        Ok(RerankResult {
            order: rerank::order(&scores),
            scores,
            model: first.model.clone(),
            model_digest: first.model_digest.clone(),
            prompt_version: rerank::PROMPT_VERSION.into(),
            engine_fingerprint: first.engine_fingerprint.clone(),
            cached: judgements.iter().filter(|j| j.cached).count(),
        })
    }

    /// A cross-encoder's scores (one-element vectors, in document order).
    pub fn from_cross_encoder(result: EmbedResult) -> Result<Self> {
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
            engine_fingerprint: result.engine_fingerprint,
            cached: result.cached,
        })
    }
}

/// `count` items (`texts`, `documents`) of one request: at least one, at most `max_batch`.
fn check_batch(limits: &Limits, what: &str, count: usize) -> Result<()> {
    if count == 0 {
        return Err(Error::InvalidRequest(format!("{what} must hold at least one item")));
    }
    if count > limits.max_batch {
        return Err(Error::InvalidRequest(format!(
            "{count} {what} in one request; this server's limit is {}: split the request",
            limits.max_batch
        )));
    }
    Ok(())
}

fn check_input(limits: &Limits, what: &str, text: &str) -> Result<()> {
    check_input_len(limits, what, text.len())
}

fn check_input_len(limits: &Limits, what: &str, len: usize) -> Result<()> {
    if len > limits.max_input_bytes {
        return Err(Error::InvalidRequest(format!(
            "{what} is {len} bytes; this server's limit is {} bytes",
            limits.max_input_bytes
        )));
    }
    Ok(())
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
    fn unknown_params_are_rejected() {
        let err = serde_json::from_str::<GenerateParams>(r#"{"prompt":"x","sede":1}"#).unwrap_err();
        assert!(err.to_string().contains("sede"));
    }

    #[test]
    fn limits_are_enforced() {
        let config = Config::default();
        let p = GenerateParams { prompt: "x".into(), max_new_tokens: Some(1_000_000), ..Default::default() };
        assert!(p.to_request(&config).is_err());
        let e = EmbedParams { texts: vec![String::new(); 1000], ..Default::default() };
        assert!(e.validate(&config.limits).is_err());
        assert!(EmbedParams::default().validate(&config.limits).is_err());
    }

    #[test]
    fn conversations_are_checked_and_one_user_turn_is_its_prompt() {
        let config = Config::default();
        let turn = |role: &str, content: &str| ChatMessage { role: role.into(), content: content.into() };
        let one = GenerateParams { messages: vec![turn("user", "hi")], ..Default::default() };
        let plain = GenerateParams { prompt: "hi".into(), ..Default::default() };
        assert_eq!(one.to_request(&config).unwrap(), plain.to_request(&config).unwrap());
        let two =
            GenerateParams { messages: vec![turn("system", "be brief"), turn("user", "hi")], ..Default::default() };
        let request = two.to_request(&config).unwrap();
        assert_eq!((request.prompt.as_str(), request.messages.len()), ("", 2));
        assert_ne!(
            crate::cache::generation_key("d", &request),
            crate::cache::generation_key("d", &plain.to_request(&config).unwrap())
        );
        let bad_role = GenerateParams { messages: vec![turn("tool", "x"), turn("user", "y")], ..Default::default() };
        assert!(bad_role.to_request(&config).unwrap_err().to_string().contains("role"));
        let both = GenerateParams { prompt: "p".into(), ..two.clone() };
        assert!(both.to_request(&config).unwrap_err().to_string().contains("not both"));
        assert!(GenerateParams::default().to_request(&config).unwrap_err().to_string().contains("prompt"));
        // raw is part of the answer's identity.
        let raw = GenerateParams { raw: true, ..plain.clone() }.to_request(&config).unwrap();
        assert_ne!(
            crate::cache::generation_key("d", &raw),
            crate::cache::generation_key("d", &plain.to_request(&config).unwrap())
        );
    }

    #[test]
    fn defaults_come_from_config() {
        let config = Config { default_seed: 7, ..Default::default() };
        let r = GenerateParams { prompt: "x".into(), ..Default::default() }.to_request(&config).unwrap();
        assert_eq!((r.seed, r.max_new_tokens), (7, 512));
    }
}
