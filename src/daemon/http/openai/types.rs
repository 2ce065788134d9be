//! OpenAI's request shapes, parsed and turned into the daemon's typed params: fields steadytext
//! cannot honour are refused, never ignored. One deviation: an omitted `temperature` means greedy
//! decoding (steadytext's default), not OpenAI's 1.0.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::super::error::ApiError;
use crate::engine::generate::ChatMessage;
use crate::error::Error;
use crate::protocol::GenerateParams;

/// Fields OpenAI clients send that change nothing here; any other unknown field is refused.
const HARMLESS_FIELDS: [&str; 4] = ["user", "store", "metadata", "service_tier"];

/// A string or a list of strings.
#[derive(Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(super) fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// A message's content: text, or a list of parts of which only text parts are served.
#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct Message {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The fields chat and completion requests share, in OpenAI's names.
#[derive(Deserialize)]
pub(super) struct Common {
    model: String,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    seed: Option<u64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    stop: Option<OneOrMany>,
    #[serde(default)]
    pub(super) stream: bool,
    stream_options: Option<StreamOptions>,
    n: Option<u32>,
    logprobs: Option<Value>,
    top_logprobs: Option<u32>,
    response_format: Option<Value>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    logit_bias: Option<Map<String, Value>>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// `POST /v1/chat/completions` body.
#[derive(Deserialize)]
pub(super) struct ChatRequest {
    pub(super) messages: Vec<Message>,
    #[serde(flatten)]
    pub(super) common: Common,
}

/// `POST /v1/completions` body.
#[derive(Deserialize)]
pub(super) struct CompletionRequest {
    pub(super) prompt: OneOrMany,
    #[serde(default)]
    pub(super) echo: bool,
    pub(super) suffix: Option<String>,
    #[serde(flatten)]
    pub(super) common: Common,
}

/// `POST /v1/embeddings` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EmbeddingsRequest {
    pub(super) input: OneOrMany,
    pub(super) model: String,
    pub(super) encoding_format: Option<String>,
    pub(super) dimensions: Option<usize>,
    #[serde(rename = "user")]
    _user: Option<String>,
}

pub(super) fn unsupported(what: &str) -> ApiError {
    Error::InvalidRequest(format!("{what} is not supported by steadytext")).into()
}

fn refuse_unknown(other: &Map<String, Value>) -> Result<(), ApiError> {
    match other.keys().find(|k| !HARMLESS_FIELDS.contains(&k.as_str())) {
        Some(field) => Err(unsupported(&format!("the field {field:?}"))),
        None => Ok(()),
    }
}

impl Common {
    /// The daemon's params for this request (prompt or messages filled in by the caller).
    pub(super) fn params(&self) -> Result<GenerateParams, ApiError> {
        refuse_unknown(&self.other)?;
        // A number past f32's range reads as infinity here: refused, never taken as "not given".
        let floats = [
            ("temperature", self.temperature),
            ("top_p", self.top_p),
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ];
        if let Some((name, _)) = floats.iter().find(|(_, v)| v.is_some_and(|v| !v.is_finite())) {
            return Err(Error::InvalidRequest(format!("{name} is out of range (it must be a finite number)")).into());
        }
        if self.n.unwrap_or(1) != 1 {
            return Err(unsupported("n other than 1"));
        }
        // Chat says `logprobs: true` and `top_logprobs: N`; completions say `logprobs: N`.
        let (logprobs, top_logprobs) = match (&self.logprobs, self.top_logprobs) {
            (None | Some(Value::Null) | Some(Value::Bool(false)), None) => (false, None),
            (None | Some(Value::Null) | Some(Value::Bool(false)), Some(_)) => {
                return Err(Error::InvalidRequest("top_logprobs needs logprobs: true".into()).into())
            }
            (Some(Value::Bool(true)), top) => (true, top.map(|n| n as usize)),
            (Some(Value::Number(n)), None) => match n.as_u64() {
                Some(n) => (true, Some(n as usize)),
                None => return Err(Error::InvalidRequest("logprobs must be true, false or a count".into()).into()),
            },
            _ => return Err(Error::InvalidRequest("logprobs must be true, false or a count".into()).into()),
        };
        // OpenAI's structured output: a JSON Schema (json_schema.schema), or any JSON object.
        let schema = match self.response_format.as_ref().map(|f| (f["type"].as_str(), f)) {
            None | Some((Some("text"), _)) => None,
            Some((Some("json_object"), _)) => Some(json!({"type": "object"})),
            Some((Some("json_schema"), f)) => match f["json_schema"].get("schema") {
                Some(schema) => Some(schema.clone()),
                None => {
                    return Err(
                        Error::InvalidRequest("response_format json_schema needs json_schema.schema".into()).into()
                    )
                }
            },
            Some(_) => return Err(unsupported("a response_format type other than text, json_object or json_schema")),
        };
        if self.presence_penalty.unwrap_or(0.0) != 0.0 || self.frequency_penalty.unwrap_or(0.0) != 0.0 {
            return Err(unsupported("a presence or frequency penalty"));
        }
        if self.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
            return Err(unsupported("logit_bias"));
        }
        Ok(GenerateParams {
            seed: self.seed,
            max_new_tokens: self.max_completion_tokens.or(self.max_tokens),
            stop: self.stop.clone().map(OneOrMany::into_vec).unwrap_or_default(),
            temperature: self.temperature,
            top_p: self.top_p,
            model: Some(self.model.clone()),
            schema,
            logprobs,
            top_logprobs,
            ..Default::default()
        })
    }

    pub(super) fn include_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }
}

impl Message {
    pub(super) fn into_chat(self) -> Result<ChatMessage, ApiError> {
        let role = if self.role == "developer" { "system".to_string() } else { self.role };
        let content = match self.content {
            None => String::new(),
            Some(Content::Text(text)) => text,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => return Err(unsupported(&format!("a content part of type {kind:?}"))),
                    }
                }
                text
            }
        };
        Ok(ChatMessage { role, content })
    }
}
