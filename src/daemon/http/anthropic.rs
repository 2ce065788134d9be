//! Anthropic's Messages API: `POST /v1/messages` and its token count. The request (system prompt, content blocks,
//! `tool_use` / `tool_result`, tools and `tool_choice`) becomes the same typed `generate` params
//! as a chat completion; the answer comes back as content blocks, streamed with the Messages
//! event types, and errors in Anthropic's shape. Fields that would change an answer and are not
//! served are refused, naming the field; an omitted `temperature` means greedy decoding
//! (steadytext's default), not Anthropic's 1.0.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::body::read_json;
use super::generation::{
    answer_id, event_response, generate_now, route_key, sse, ContentStream, Streaming, CACHE_HEADER, ENGINE_HEADER,
};
use super::run::{event_stream, Event, Ready};
use super::ApiError;
use crate::daemon::methods::generate as methods;
use crate::engine::generate::{ChatMessage, FinishReason};
use crate::engine::tools::{Tool, ToolCall, ToolChoice};
use crate::error::Error;
use crate::protocol::{GenerateParams, GenerateResult, Method, ROUTE_KEY_HEADER};

/// Fields Anthropic clients send that change nothing here; any other unknown field is refused.
const HARMLESS_FIELDS: [&str; 2] = ["metadata", "service_tier"];

/// An error in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}`.
pub(super) struct MessagesError(ApiError);

impl From<ApiError> for MessagesError {
    fn from(e: ApiError) -> Self {
        MessagesError(e)
    }
}

impl From<Error> for MessagesError {
    fn from(e: Error) -> Self {
        MessagesError(e.into())
    }
}

impl MessagesError {
    fn body(&self) -> Value {
        let kind = match self.0.status.as_u16() {
            400 | 422 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 => "overloaded_error",
            _ => "api_error",
        };
        json!({"type": "error", "error": {"type": kind, "message": self.0.message()}})
    }
}

impl IntoResponse for MessagesError {
    fn into_response(self) -> Response {
        let body = self.body();
        let mut response = self.0.into_response();
        *response.body_mut() = Body::from(body.to_string());
        response
    }
}

fn invalid(message: String) -> MessagesError {
    Error::InvalidRequest(message).into()
}

fn unsupported(what: &str) -> MessagesError {
    invalid(format!("{what} is not supported by steadytext"))
}

/// Text, or a list of content blocks.
#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Blocks(Vec<Map<String, Value>>),
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: Content,
}

/// A tool a request offers (only client tools, described by a JSON Schema, are served).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestTool {
    name: String,
    description: Option<String>,
    input_schema: Option<Value>,
    #[serde(rename = "type")]
    kind: Option<String>,
    /// Prompt caching is automatic here (the prefix cache); the marker changes nothing.
    #[serde(rename = "cache_control")]
    _cache_control: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestToolChoice {
    #[serde(rename = "type")]
    kind: String,
    name: Option<String>,
    #[serde(default)]
    disable_parallel_tool_use: bool,
}

/// `POST /v1/messages` body.
#[derive(Deserialize)]
struct MessagesRequest {
    model: String,
    /// Required by `/v1/messages`; the token count takes none.
    max_tokens: Option<usize>,
    messages: Vec<Message>,
    system: Option<Content>,
    #[serde(default)]
    stop_sequences: Vec<String>,
    #[serde(default)]
    stream: bool,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    tools: Option<Vec<RequestTool>>,
    tool_choice: Option<RequestToolChoice>,
    thinking: Option<Value>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

impl MessagesRequest {
    /// The daemon's params: the conversation (system prompt first), the tools, the sampling.
    fn params(self) -> Result<GenerateParams, MessagesError> {
        if let Some(field) = self.other.keys().find(|k| !HARMLESS_FIELDS.contains(&k.as_str())) {
            return Err(unsupported(&format!("the field {field:?}")));
        }
        if self.thinking.as_ref().is_some_and(|t| t["type"] != "disabled") {
            return Err(unsupported("thinking (extended thinking)"));
        }
        for (name, value) in [("temperature", self.temperature), ("top_p", self.top_p)] {
            if value.is_some_and(|v| !v.is_finite()) {
                return Err(invalid(format!("{name} is out of range (it must be a finite number)")));
            }
        }
        if self.messages.is_empty() {
            return Err(invalid("messages must hold at least one message".into()));
        }
        let mut messages = Vec::new();
        if let Some(system) = self.system {
            let text = text_of(system, "system")?;
            messages.push(ChatMessage::new("system", &text));
        }
        for message in self.messages {
            into_chat(message, &mut messages)?;
        }
        let tools = match self.tools {
            Some(tools) if tools.is_empty() => None,
            tools => tools,
        };
        let tools = tools.unwrap_or_default().into_iter().map(RequestTool::into_tool).collect::<Result<_, _>>()?;
        let (tool_choice, parallel_tool_calls) = match self.tool_choice {
            None => (None, None),
            Some(choice) => {
                let parallel = Some(!choice.disable_parallel_tool_use);
                let choice = match (choice.kind.as_str(), choice.name) {
                    ("auto", None) => ToolChoice::Auto,
                    ("any", None) => ToolChoice::Required,
                    ("none", None) => ToolChoice::None,
                    ("tool", Some(name)) => ToolChoice::Function(name),
                    ("tool", None) => return Err(invalid("tool_choice of type tool needs its name".into())),
                    (kind, _) => {
                        return Err(invalid(format!(
                            "tool_choice of type {kind:?} (it must be auto, any, tool or none; name only with tool)"
                        )))
                    }
                };
                (Some(choice), parallel)
            }
        };
        Ok(GenerateParams {
            messages,
            max_new_tokens: self.max_tokens,
            stop: self.stop_sequences,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            model: Some(self.model),
            tools,
            tool_choice,
            parallel_tool_calls,
            ..Default::default()
        })
    }
}

impl RequestTool {
    fn into_tool(self) -> Result<Tool, MessagesError> {
        match self.kind.as_deref() {
            None | Some("custom") => Ok(Tool {
                name: self.name,
                description: self.description,
                parameters: self.input_schema.ok_or_else(|| invalid("a tool needs its input_schema".into()))?,
            }),
            Some(kind) => Err(unsupported(&format!("a tool of type {kind:?} (only client tools are served)"))),
        }
    }
}

/// The text of a `system` prompt or a `tool_result`'s content: a string, or text blocks.
fn text_of(content: Content, field: &str) -> Result<String, MessagesError> {
    match content {
        Content::Text(text) => Ok(text),
        Content::Blocks(blocks) => {
            let mut text = String::new();
            for block in blocks {
                match (block.get("type").and_then(Value::as_str), block.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    (kind, _) => {
                        return Err(unsupported(&format!("a {field} block of type {}", kind.unwrap_or("(none)"))))
                    }
                }
            }
            Ok(text)
        }
    }
}

/// One message of Anthropic's as the chat template's turns: a user message's `tool_result`
/// blocks become tool turns (before its text), an assistant's `tool_use` blocks its calls.
fn into_chat(message: Message, turns: &mut Vec<ChatMessage>) -> Result<(), MessagesError> {
    let role = match message.role.as_str() {
        "user" | "assistant" => message.role,
        other => return Err(invalid(format!("message role {other:?} (it must be user or assistant)"))),
    };
    let blocks = match message.content {
        Content::Text(text) => {
            turns.push(ChatMessage::new(&role, &text));
            return Ok(());
        }
        Content::Blocks(blocks) => blocks,
    };
    let mut turn = ChatMessage::new(&role, "");
    for mut block in blocks {
        let kind = block.get("type").and_then(Value::as_str).unwrap_or("(none)").to_string();
        match (role.as_str(), kind.as_str()) {
            (_, "text") => match block.get("text").and_then(Value::as_str) {
                Some(text) => turn.content.push_str(text),
                None => return Err(invalid("a text block needs its text".into())),
            },
            ("assistant", "tool_use") => {
                let field = |name: &str| block.get(name).and_then(Value::as_str).map(str::to_string);
                let (Some(id), Some(name)) = (field("id"), field("name")) else {
                    return Err(invalid("a tool_use block needs its id and name".into()));
                };
                let input = block.remove("input").unwrap_or_else(|| json!({}));
                turn.tool_calls.push(ToolCall { id, name, arguments: input.to_string() });
            }
            ("user", "tool_result") => {
                let Some(id) = block.get("tool_use_id").and_then(Value::as_str).map(str::to_string) else {
                    return Err(invalid("a tool_result block needs its tool_use_id".into()));
                };
                let content = match block.remove("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(content) => text_of(
                        serde_json::from_value(content)
                            .map_err(|_| invalid("a tool_result's content must be text or text blocks".into()))?,
                        "tool_result content",
                    )?,
                };
                // The model sees that the call failed, as the tool wrote it.
                let content = match block.get("is_error").and_then(Value::as_bool) {
                    Some(true) => format!("Error: {content}"),
                    _ => content,
                };
                let mut result = ChatMessage::new("tool", &content);
                result.tool_call_id = Some(id);
                turns.push(result);
            }
            (_, kind) => return Err(unsupported(&format!("a content block of type {kind:?} in a {role} message"))),
        }
    }
    if !turn.content.is_empty() || !turn.tool_calls.is_empty() {
        turns.push(turn);
    }
    Ok(())
}

/// Anthropic's `stop_reason` and `stop_sequence` for an answer to `stops` (an answer without
/// calls stops early only at a stop string). The stop string is named when the request gave one;
/// with several, which one is not recorded (the text excludes it), and `stop_sequence` is null.
fn stop_reason(result: &GenerateResult, stops: &[String]) -> (&'static str, Option<String>) {
    match result.generation.finish_reason {
        FinishReason::Length | FinishReason::Context => ("max_tokens", None),
        FinishReason::ToolCalls => ("tool_use", None),
        FinishReason::Stop if !stops.is_empty() => ("stop_sequence", (stops.len() == 1).then(|| stops[0].clone())),
        FinishReason::Eos | FinishReason::Stop => ("end_turn", None),
    }
}

fn usage(result: &GenerateResult) -> Value {
    let prompt = result.generation.prompt_tokens;
    let cached = if result.cached { prompt } else { result.prefix_tokens };
    json!({"input_tokens": prompt, "output_tokens": result.generation.token_ids.len(),
           "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0})
}

/// A call as a `tool_use` block (`input` empty when streamed: its JSON follows as deltas).
fn tool_use(call: &ToolCall, streamed: bool) -> Value {
    let input = match streamed {
        true => json!({}),
        false => serde_json::from_str(&call.arguments).unwrap_or_else(|_| json!({})),
    };
    json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input})
}

/// `POST /v1/messages`.
pub(super) async fn messages(ready: Result<Ready, ApiError>, body: Body) -> Result<Response, MessagesError> {
    let ready = ready?;
    let request: MessagesRequest = read_json(body, &ready.daemon).await?;
    if request.max_tokens.is_none() {
        return Err(invalid("max_tokens is required (the most tokens the answer may have)".into()));
    }
    let stream = request.stream;
    let params = request.params()?;
    let id = answer_id("msg_", &params)?;
    let route = route_key(&ready, &params);
    let stops = params.stop.clone();
    let mut content = ContentStream::for_params(&params);
    let engine = ready.daemon.engine().id.clone();
    if !stream {
        let result = generate_now(&ready, params).await?;
        let generation = &result.generation;
        let text = generation.content();
        let mut blocks = Vec::new();
        if !text.is_empty() || generation.tool_calls.is_empty() {
            blocks.push(json!({"type": "text", "text": text}));
        }
        blocks.extend(generation.tool_calls.iter().map(|c| tool_use(c, false)));
        let (reason, sequence) = stop_reason(&result, &stops);
        let body = axum::Json(json!({
            "id": id, "type": "message", "role": "assistant", "model": result.model, "content": blocks,
            "stop_reason": reason, "stop_sequence": sequence, "usage": usage(&result),
        }));
        let cached = if result.cached { "hit" } else { "miss" };
        let headers = [(ENGINE_HEADER, engine), (CACHE_HEADER, cached.to_string()), (ROUTE_KEY_HEADER, route)];
        return Ok((headers, body).into_response());
    }
    let Streaming { info, first, events, .. } = Streaming::start(&ready, params).await?;
    let start = json!({"type": "message_start", "message": {
        "id": id, "type": "message", "role": "assistant", "model": info.name, "content": [],
        "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": 0, "output_tokens": 0}}});
    let mut pending = Some(vec![sse(Some("message_start"), &start)]);
    let (mut blocks, mut text_open) = (0, false);
    let body = event_stream(Some(first), events, move |event| {
        let mut frames = pending.take().unwrap_or_default();
        let open_text = |frames: &mut Vec<_>, open: &mut bool| {
            if !*open {
                *open = true;
                let block = json!({"type": "content_block_start", "index": 0,
                                   "content_block": {"type": "text", "text": ""}});
                frames.push(sse(Some("content_block_start"), &block));
            }
        };
        let text_delta = |text: String| {
            sse(
                Some("content_block_delta"),
                &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
            )
        };
        match event {
            Event::Model(_) => {}
            Event::Piece(piece) => {
                let shown = content.piece(&piece);
                if !shown.is_empty() {
                    open_text(&mut frames, &mut text_open);
                    frames.push(text_delta(shown));
                }
            }
            Event::Done(Ok(result)) => {
                let generation = &result.generation;
                let rest = content.finish(generation.content());
                if !rest.is_empty() || (!text_open && generation.tool_calls.is_empty()) {
                    open_text(&mut frames, &mut text_open);
                }
                if !rest.is_empty() {
                    frames.push(text_delta(rest));
                }
                if text_open {
                    frames.push(sse(Some("content_block_stop"), &json!({"type": "content_block_stop", "index": 0})));
                    blocks = 1;
                }
                for call in &generation.tool_calls {
                    let index = blocks;
                    blocks += 1;
                    let start =
                        json!({"type": "content_block_start", "index": index, "content_block": tool_use(call, true)});
                    frames.push(sse(Some("content_block_start"), &start));
                    let delta = json!({"type": "content_block_delta", "index": index,
                                       "delta": {"type": "input_json_delta", "partial_json": call.arguments}});
                    frames.push(sse(Some("content_block_delta"), &delta));
                    frames
                        .push(sse(Some("content_block_stop"), &json!({"type": "content_block_stop", "index": index})));
                }
                let (reason, sequence) = stop_reason(&result, &stops);
                let delta = json!({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
                                   "usage": usage(&result)});
                frames.push(sse(Some("message_delta"), &delta));
                frames.push(sse(Some("message_stop"), &json!({"type": "message_stop"})));
            }
            Event::Done(Err(error)) => frames.push(sse(Some("error"), &MessagesError(error.into()).body())),
        }
        frames
    });
    Ok(event_response(engine, route, body))
}

/// `POST /v1/messages/count_tokens`: the prompt tokens of a Messages request (system, messages
/// and tools as the model's template renders them), without running the model.
pub(super) async fn count_tokens(ready: Result<Ready, ApiError>, body: Body) -> Result<Response, MessagesError> {
    let ready = ready?;
    let request: MessagesRequest = read_json(body, &ready.daemon).await?;
    let params = request.params()?;
    let counted = ready.run(Method::CountTokens, |call| Box::pin(methods::count_tokens(call, params))).await?;
    Ok(axum::Json(json!({"input_tokens": counted.prompt_tokens})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    fn params(body: Value) -> Result<GenerateParams, MessagesError> {
        serde_json::from_value::<MessagesRequest>(body).expect("parses").params()
    }

    #[test]
    fn a_conversation_with_tools_becomes_the_chat_templates_turns() {
        let params = params(json!({
            "model": "m", "max_tokens": 64, "system": [{"type": "text", "text": "Be brief."}],
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "21 C"}]},
                    {"type": "text", "text": "And tomorrow?", "cache_control": {"type": "ephemeral"}}]},
            ],
        }))
        .unwrap_or_else(|e| panic!("{}", e.body()));
        let roles: Vec<_> = params.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool", "user"]);
        assert_eq!(params.messages[0].content, "Be brief.");
        assert_eq!(params.messages[2].tool_calls[0].arguments, r#"{"city":"Paris"}"#);
        assert_eq!(params.messages[3].tool_call_id.as_deref(), Some("toolu_1"));
        assert_eq!(params.messages[3].content, "21 C");
        assert_eq!((params.tool_choice, params.parallel_tool_calls), (Some(ToolChoice::Required), Some(false)));
        assert_eq!(params.max_new_tokens, Some(64));
    }

    #[test]
    fn what_is_not_served_is_refused_naming_it() {
        let base = |extra: Value| {
            let mut body = json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
            body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            body
        };
        let image = json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]});
        let cases = [
            (image, "\"image\""),
            (json!({"thinking": {"type": "enabled", "budget_tokens": 1024}}), "thinking"),
            (json!({"mcp_servers": []}), "mcp_servers"),
            (json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}), "web_search"),
            (json!({"tool_choice": {"type": "tool"}}), "needs its name"),
            (json!({"messages": [{"role": "system", "content": "x"}]}), "role"),
        ];
        for (extra, named) in cases {
            let error = params(base(extra.clone())).err().unwrap_or_else(|| panic!("{extra} was accepted"));
            assert_eq!(error.0.status, StatusCode::BAD_REQUEST);
            let body = error.body();
            assert_eq!(body["error"]["type"], "invalid_request_error");
            assert!(body["error"]["message"].as_str().unwrap().contains(named), "{body}");
        }
        assert!(params(base(json!({"metadata": {"user_id": "u"}}))).is_ok());
    }
}
