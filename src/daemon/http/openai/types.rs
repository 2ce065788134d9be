//! OpenAI's request shapes, parsed and turned into the daemon's typed params: fields steadytext
//! cannot honour are refused, never ignored. One deviation: an omitted `temperature` means greedy
//! decoding (steadytext's default), not OpenAI's 1.0.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::super::error::ApiError;
use crate::engine::generate::ChatMessage;
use crate::engine::tools::{Tool, ToolCall, ToolChoice};
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
    /// An assistant turn's calls.
    #[serde(default)]
    tool_calls: Vec<MessageToolCall>,
    /// A tool turn: the call it answers.
    #[serde(default)]
    tool_call_id: Option<String>,
}

/// A call in a conversation's history, in OpenAI's shape.
#[derive(Deserialize)]
struct MessageToolCall {
    id: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    function: FunctionCall,
}

#[derive(Deserialize)]
struct FunctionCall {
    name: String,
    arguments: String,
}

/// A tool a request offers, in OpenAI's shape (only function tools are served).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in super::super) struct RequestTool {
    #[serde(rename = "type")]
    kind: String,
    function: Option<FunctionTool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionTool {
    name: String,
    description: Option<String>,
    parameters: Option<Value>,
    /// Calls are always held to the schema here; `strict` changes nothing.
    #[serde(rename = "strict")]
    _strict: Option<bool>,
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
    pub(super) tools: Option<Vec<RequestTool>>,
    pub(super) tool_choice: Option<Value>,
    pub(super) parallel_tool_calls: Option<bool>,
    #[serde(flatten)]
    pub(super) common: Common,
}

impl ChatRequest {
    /// The daemon's params: the common fields, the conversation and the tools.
    pub(super) fn params(self) -> Result<GenerateParams, ApiError> {
        let mut params = self.common.params()?;
        params.messages = self.messages.into_iter().map(Message::into_chat).collect::<Result<_, _>>()?;
        let tools = match self.tools {
            Some(tools) if tools.is_empty() => {
                return Err(
                    Error::InvalidRequest("tools must list at least one tool (or leave tools out)".into()).into()
                )
            }
            tools => tools.unwrap_or_default(),
        };
        params.tools = tools.into_iter().map(RequestTool::into_tool).collect::<Result<_, _>>()?;
        params.tool_choice = self.tool_choice.map(|c| tool_choice(&c)).transpose()?;
        params.parallel_tool_calls = self.parallel_tool_calls;
        Ok(params)
    }
}

/// OpenAI's `tool_choice`: `none`, `auto`, `required`, or a function: `{"type": "function",
/// "function": {"name": ...}}` (chat completions) or `{"type": "function", "name": ...}` (Responses).
pub(super) fn tool_choice(choice: &Value) -> Result<ToolChoice, ApiError> {
    match choice {
        Value::String(s) if s == "none" => Ok(ToolChoice::None),
        Value::String(s) if s == "auto" => Ok(ToolChoice::Auto),
        Value::String(s) if s == "required" => Ok(ToolChoice::Required),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o.get("function").and_then(|f| f.get("name")).or_else(|| o.get("name"));
            match name.and_then(Value::as_str) {
                Some(name) => Ok(ToolChoice::Function(name.to_string())),
                None => {
                    Err(Error::InvalidRequest("tool_choice of type function needs the function's name".into()).into())
                }
            }
        }
        _ => Err(unsupported(&format!(
            "tool_choice {choice} (it must be none, auto, required or {{\"type\": \"function\", ...}})"
        ))),
    }
}

impl RequestTool {
    pub(in super::super) fn into_tool(self) -> Result<Tool, ApiError> {
        match (self.kind.as_str(), self.function) {
            ("function", Some(f)) => Ok(Tool {
                name: f.name,
                description: f.description,
                parameters: f.parameters.unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            }),
            ("function", None) => Err(Error::InvalidRequest("a function tool needs its function".into()).into()),
            (kind, _) => Err(unsupported(&format!("a tool of type {kind:?} (only function tools are served)"))),
        }
    }
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
        let tool_calls = self
            .tool_calls
            .into_iter()
            .map(|c| match c.kind.as_deref() {
                None | Some("function") => {
                    Ok(ToolCall { id: c.id, name: c.function.name, arguments: c.function.arguments })
                }
                Some(kind) => Err(unsupported(&format!("a tool call of type {kind:?} in messages"))),
            })
            .collect::<Result<_, _>>()?;
        Ok(ChatMessage { role, content, tool_calls, tool_call_id: self.tool_call_id })
    }
}
