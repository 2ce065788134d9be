//! OpenAI's Responses API, stateless: `POST /v1/responses` and its token count. `instructions` and `input` (a string,
//! or messages, function calls and their outputs) become the same typed `generate` params as a
//! chat completion; the answer comes back as output items (a message, then one `function_call`
//! per call), streamed with the Responses event types. Nothing is stored: `store: true`,
//! `previous_response_id` and `conversation` are refused with that reason.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::super::body::read_json;
use super::super::generation::{
    answer_id, event_response, generate_now, route_key, sse, ContentStream, Streaming, CACHE_HEADER, ENGINE_HEADER,
};
use super::super::run::{event_stream, Event, Ready};
use super::super::ApiError;
use super::types::{tool_choice, unsupported};
use crate::daemon::methods::generate as methods;
use crate::engine::generate::{ChatMessage, FinishReason};
use crate::engine::tools::{Tool, ToolCall};
use crate::error::Error;
use crate::protocol::{GenerateParams, GenerateResult, Method, ROUTE_KEY_HEADER};

/// Fields clients send that change nothing here (with any value); any other unknown field is
/// refused.
const HARMLESS_FIELDS: [&str; 5] = ["user", "metadata", "service_tier", "prompt_cache_key", "safety_identifier"];

fn invalid(message: String) -> ApiError {
    Error::InvalidRequest(message).into()
}

/// `input`: a string (one user message) or a list of items.
#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    Text(String),
    Items(Vec<Map<String, Value>>),
}

/// A function tool a request offers, in the Responses API's flat shape.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestTool {
    #[serde(rename = "type")]
    kind: String,
    name: Option<String>,
    description: Option<String>,
    parameters: Option<Value>,
    /// Calls are always held to the schema here; `strict` changes nothing.
    strict: Option<bool>,
}

/// `POST /v1/responses` body.
#[derive(Deserialize)]
struct ResponsesRequest {
    model: String,
    input: Input,
    instructions: Option<String>,
    tools: Option<Vec<RequestTool>>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    text: Option<Value>,
    max_output_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
    store: Option<bool>,
    previous_response_id: Option<String>,
    conversation: Option<Value>,
    truncation: Option<String>,
    reasoning: Option<Value>,
    include: Option<Vec<String>>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// What the answer echoes of its request, in the request's own terms.
struct Echo {
    instructions: Option<String>,
    max_output_tokens: Option<usize>,
    parallel_tool_calls: bool,
    temperature: Option<f32>,
    top_p: Option<f32>,
    text: Value,
    tool_choice: Value,
    tools: Value,
}

impl ResponsesRequest {
    /// The daemon's params, and what the answer echoes.
    fn params(self) -> Result<(GenerateParams, Echo), ApiError> {
        if let Some(field) = self.other.keys().find(|k| !HARMLESS_FIELDS.contains(&k.as_str())) {
            return Err(unsupported(&format!("the field {field:?}")));
        }
        let stateless = "steadytext stores no responses: send the whole conversation in input";
        if self.store == Some(true) {
            return Err(invalid(format!("store: true is refused; {stateless} (store: false)")));
        }
        if self.previous_response_id.is_some() {
            return Err(invalid(format!("previous_response_id is refused; {stateless}")));
        }
        if self.conversation.is_some() {
            return Err(invalid(format!("conversation is refused; {stateless}")));
        }
        if self.truncation.as_deref().is_some_and(|t| t != "disabled") {
            return Err(unsupported("truncation other than disabled"));
        }
        if self.reasoning.as_ref().is_some_and(|r| !r.is_null() && r.get("effort").is_some_and(|e| !e.is_null())) {
            return Err(unsupported("reasoning effort"));
        }
        if let Some(what) = self.include.as_ref().and_then(|i| i.first()) {
            return Err(unsupported(&format!("include {what:?}")));
        }
        for (name, value) in [("temperature", self.temperature), ("top_p", self.top_p)] {
            if value.is_some_and(|v| !v.is_finite()) {
                return Err(invalid(format!("{name} is out of range (it must be a finite number)")));
            }
        }
        let mut messages = Vec::new();
        if let Some(instructions) = &self.instructions {
            messages.push(ChatMessage::new("system", instructions.as_str()));
        }
        match self.input {
            Input::Text(text) => messages.push(ChatMessage::new("user", text)),
            Input::Items(items) => {
                for item in items {
                    add_item(item, &mut messages)?;
                }
            }
        }
        if messages.iter().all(|m| m.role == "system") {
            return Err(invalid("input must hold at least one message".into()));
        }
        let schema = match self.text.as_ref().and_then(|t| t.get("format")).map(|f| (f["type"].as_str(), f)) {
            None | Some((Some("text"), _)) => None,
            Some((Some("json_object"), _)) => Some(json!({"type": "object"})),
            Some((Some("json_schema"), f)) => match f.get("schema") {
                Some(schema) => Some(schema.clone()),
                None => return Err(invalid("text.format json_schema needs its schema".into())),
            },
            Some(_) => return Err(unsupported("a text.format type other than text, json_object or json_schema")),
        };
        let request_tools = match self.tools {
            Some(tools) if tools.is_empty() => None,
            tools => tools,
        };
        let tools_echo = json!(request_tools.as_ref().map(|t| t.iter().map(RequestTool::echo).collect::<Vec<_>>()));
        let tools =
            request_tools.unwrap_or_default().into_iter().map(RequestTool::into_tool).collect::<Result<_, _>>()?;
        let tool_choice = self.tool_choice.as_ref().map(tool_choice).transpose()?;
        let echo = Echo {
            instructions: self.instructions,
            max_output_tokens: self.max_output_tokens,
            parallel_tool_calls: self.parallel_tool_calls.unwrap_or(true),
            temperature: self.temperature,
            top_p: self.top_p,
            text: json!({"format": self.text.as_ref().and_then(|t| t.get("format")).cloned()
                .unwrap_or_else(|| json!({"type": "text"}))}),
            tool_choice: self.tool_choice.unwrap_or_else(|| json!("auto")),
            tools: if tools_echo.is_null() { json!([]) } else { tools_echo },
        };
        let params = GenerateParams {
            messages,
            seed: self.seed,
            max_new_tokens: self.max_output_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            model: Some(self.model),
            schema,
            tools,
            tool_choice,
            parallel_tool_calls: self.parallel_tool_calls,
            ..Default::default()
        };
        Ok((params, echo))
    }
}

impl RequestTool {
    fn into_tool(self) -> Result<Tool, ApiError> {
        match (self.kind.as_str(), self.name) {
            ("function", Some(name)) => Ok(Tool {
                name,
                description: self.description,
                parameters: self.parameters.unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            }),
            ("function", None) => Err(invalid("a function tool needs its name".into())),
            (kind, _) => Err(unsupported(&format!("a tool of type {kind:?} (only function tools are served)"))),
        }
    }

    fn echo(&self) -> Value {
        json!({"type": self.kind, "name": self.name, "description": self.description,
               "parameters": self.parameters, "strict": self.strict.unwrap_or(true)})
    }
}

/// The text of a message's content or a call's output: a string, or text parts.
fn text_of(content: &Value, what: &str) -> Result<String, ApiError> {
    match content {
        Value::String(text) => Ok(text.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for part in parts {
                match (part["type"].as_str(), part["text"].as_str()) {
                    (Some("input_text" | "output_text" | "text"), Some(t)) => text.push_str(t),
                    (kind, _) => {
                        return Err(unsupported(&format!("a {what} part of type {:?}", kind.unwrap_or("(none)"))))
                    }
                }
            }
            Ok(text)
        }
        _ => Err(invalid(format!("a {what} must be a string or a list of text parts"))),
    }
}

/// One input item as the chat template's turns: a message, a function call (joined to the
/// assistant turn before it) or a call's output (a tool turn).
fn add_item(item: Map<String, Value>, turns: &mut Vec<ChatMessage>) -> Result<(), ApiError> {
    let field = |name: &str| item.get(name).and_then(Value::as_str).map(str::to_string);
    let kind = field("type").unwrap_or_else(|| "message".into());
    match kind.as_str() {
        "message" => {
            let role = field("role");
            let role = match role.as_deref() {
                Some("developer" | "system") => "system",
                Some(role @ ("user" | "assistant")) => role,
                other => {
                    return Err(invalid(format!(
                        "an input message's role {other:?} (user, assistant, system or developer)"
                    )))
                }
            };
            let content = item.get("content").ok_or_else(|| invalid("an input message needs its content".into()))?;
            turns.push(ChatMessage::new(role, text_of(content, "message content")?));
        }
        "function_call" => {
            let (Some(id), Some(name), Some(arguments)) = (field("call_id"), field("name"), field("arguments")) else {
                return Err(invalid("a function_call item needs call_id, name and arguments".into()));
            };
            let call = ToolCall { id, name, arguments };
            match turns.last_mut() {
                Some(turn) if turn.role == "assistant" => turn.tool_calls.push(call),
                _ => {
                    let mut turn = ChatMessage::new("assistant", "");
                    turn.tool_calls.push(call);
                    turns.push(turn);
                }
            }
        }
        "function_call_output" => {
            let Some(id) = field("call_id") else {
                return Err(invalid("a function_call_output item needs its call_id".into()));
            };
            let output = item.get("output").ok_or_else(|| invalid("a function_call_output needs its output".into()))?;
            let mut turn = ChatMessage::new("tool", text_of(output, "function_call_output")?);
            turn.tool_call_id = Some(id);
            turns.push(turn);
        }
        kind => return Err(unsupported(&format!("an input item of type {kind:?}"))),
    }
    Ok(())
}

/// An answer's output items: its message (when it has text, or no call), then its calls.
fn output(result: &GenerateResult, message_id: &str) -> Vec<Value> {
    let generation = &result.generation;
    let mut items = Vec::new();
    let text = generation.content();
    if !text.is_empty() || generation.tool_calls.is_empty() {
        items.push(message_item(message_id, text, "completed"));
    }
    items.extend(generation.tool_calls.iter().map(|c| call_item(c, &c.arguments, "completed")));
    items
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    let content = if status == "completed" { vec![text_part(text)] } else { Vec::new() };
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
}

/// A call as a `function_call` item (`id` from the call's id, `call_id` the call's id).
fn call_item(call: &ToolCall, arguments: &str, status: &str) -> Value {
    let id = format!("fc_{}", call.id.trim_start_matches("call_"));
    json!({"type": "function_call", "id": id, "call_id": call.id, "name": call.name,
           "arguments": arguments, "status": status})
}

/// A response object: `status` and `output`, with its usage once done.
fn response(
    id: &str,
    created: u64,
    model: &str,
    echo: &Echo,
    result: Option<&GenerateResult>,
    message_id: &str,
) -> Value {
    let (status, incomplete, items, usage) = match result {
        None => ("in_progress", Value::Null, Vec::new(), Value::Null),
        Some(result) => {
            let generation = &result.generation;
            let prompt = generation.prompt_tokens;
            let completion = generation.token_ids.len();
            let cached = if result.cached { prompt } else { result.prefix_tokens };
            let usage = json!({"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
                               "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
                               "total_tokens": prompt + completion});
            match generation.finish_reason {
                FinishReason::Length | FinishReason::Context => {
                    ("incomplete", json!({"reason": "max_output_tokens"}), output(result, message_id), usage)
                }
                _ => ("completed", Value::Null, output(result, message_id), usage),
            }
        }
    };
    json!({
        "id": id, "object": "response", "created_at": created, "status": status, "error": null,
        "incomplete_details": incomplete, "instructions": echo.instructions,
        "max_output_tokens": echo.max_output_tokens, "model": model, "output": items,
        "parallel_tool_calls": echo.parallel_tool_calls, "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null}, "store": false, "temperature": echo.temperature,
        "text": echo.text, "tool_choice": echo.tool_choice, "tools": echo.tools, "top_p": echo.top_p,
        "truncation": "disabled", "usage": usage, "metadata": {},
    })
}

/// Server-sent events of a Responses stream, numbered in order.
struct Events {
    next: u64,
}

impl Events {
    fn push(&mut self, frames: &mut Vec<axum::body::Bytes>, kind: &str, mut data: Value) {
        data["type"] = kind.into();
        data["sequence_number"] = self.next.into();
        self.next += 1;
        frames.push(sse(Some(kind), &data));
    }
}

/// `POST /v1/responses`.
pub(in super::super) async fn responses(ready: Ready, body: Body) -> Result<Response, ApiError> {
    let request: ResponsesRequest = read_json(body, &ready.daemon).await?;
    let stream = request.stream;
    let (params, echo) = request.params()?;
    let id = answer_id("resp_", &params)?;
    let message_id = format!("msg_{}", id.trim_start_matches("resp_"));
    let route = route_key(&ready, &params);
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut content = ContentStream::for_params(&params);
    let engine = ready.daemon.engine().id.clone();
    if !stream {
        let result = generate_now(&ready, params).await?;
        let body = axum::Json(response(&id, created, &result.model, &echo, Some(&result), &message_id));
        let cached = if result.cached { "hit" } else { "miss" };
        let headers = [(ENGINE_HEADER, engine), (CACHE_HEADER, cached.to_string()), (ROUTE_KEY_HEADER, route)];
        return Ok((headers, body).into_response());
    }
    let Streaming { info, first, events, .. } = Streaming::start(&ready, params).await?;
    let model = info.name;
    let mut numbered = Events { next: 0 };
    let mut opening = Vec::new();
    let started = response(&id, created, &model, &echo, None, &message_id);
    numbered.push(&mut opening, "response.created", json!({"response": started}));
    numbered.push(&mut opening, "response.in_progress", json!({"response": started}));
    let mut pending = Some(opening);
    let mut text_open = false;
    let body = event_stream(Some(first), events, move |event| {
        let mut frames = pending.take().unwrap_or_default();
        let item = |frames: &mut Vec<_>, numbered: &mut Events, open: &mut bool| {
            if !*open {
                *open = true;
                let added = json!({"output_index": 0, "item": message_item(&message_id, "", "in_progress")});
                numbered.push(frames, "response.output_item.added", added);
                let part = json!({"item_id": message_id, "output_index": 0, "content_index": 0,
                                  "part": {"type": "output_text", "text": "", "annotations": []}});
                numbered.push(frames, "response.content_part.added", part);
            }
        };
        let delta = |text: String| json!({"item_id": message_id, "output_index": 0, "content_index": 0, "delta": text, "logprobs": []});
        match event {
            Event::Model(_) => {}
            Event::Piece(piece) => {
                let shown = content.piece(&piece);
                if !shown.is_empty() {
                    item(&mut frames, &mut numbered, &mut text_open);
                    numbered.push(&mut frames, "response.output_text.delta", delta(shown));
                }
            }
            Event::Done(Ok(result)) => {
                let generation = &result.generation;
                let rest = content.finish(generation.content());
                if !rest.is_empty() || (!text_open && generation.tool_calls.is_empty()) {
                    item(&mut frames, &mut numbered, &mut text_open);
                }
                if !rest.is_empty() {
                    numbered.push(&mut frames, "response.output_text.delta", delta(rest));
                }
                let mut index = 0;
                if text_open {
                    let text = generation.content();
                    let at = json!({"item_id": message_id, "output_index": 0, "content_index": 0});
                    let mut done = at.clone();
                    done["text"] = text.into();
                    done["logprobs"] = json!([]);
                    numbered.push(&mut frames, "response.output_text.done", done);
                    let mut part = at;
                    part["part"] = text_part(text);
                    numbered.push(&mut frames, "response.content_part.done", part);
                    let item = json!({"output_index": 0, "item": message_item(&message_id, text, "completed")});
                    numbered.push(&mut frames, "response.output_item.done", item);
                    index = 1;
                }
                for call in &generation.tool_calls {
                    let added = call_item(call, "", "in_progress");
                    let item_id = added["id"].clone();
                    numbered.push(
                        &mut frames,
                        "response.output_item.added",
                        json!({"output_index": index, "item": added}),
                    );
                    let at = json!({"item_id": item_id, "output_index": index});
                    let mut delta = at.clone();
                    delta["delta"] = call.arguments.as_str().into();
                    numbered.push(&mut frames, "response.function_call_arguments.delta", delta);
                    let mut done = at;
                    done["name"] = call.name.as_str().into();
                    done["arguments"] = call.arguments.as_str().into();
                    numbered.push(&mut frames, "response.function_call_arguments.done", done);
                    let item = json!({"output_index": index, "item": call_item(call, &call.arguments, "completed")});
                    numbered.push(&mut frames, "response.output_item.done", item);
                    index += 1;
                }
                let whole = response(&id, created, &model, &echo, Some(&result), &message_id);
                let kind = if whole["status"] == "incomplete" { "response.incomplete" } else { "response.completed" };
                numbered.push(&mut frames, kind, json!({"response": whole}));
            }
            Event::Done(Err(error)) => {
                let error = ApiError::from(error).body()["error"].clone();
                numbered.push(
                    &mut frames,
                    "error",
                    json!({"code": error["code"], "message": error["message"], "param": null}),
                );
            }
        }
        frames
    });
    Ok(event_response(engine, route, body))
}

/// `POST /v1/responses/input_tokens`: the prompt tokens of a Responses request (instructions,
/// input and tools as the model's template renders them), without running the model.
pub(in super::super) async fn input_tokens(ready: Ready, body: Body) -> Result<Response, ApiError> {
    let request: ResponsesRequest = read_json(body, &ready.daemon).await?;
    let (params, _) = request.params()?;
    let counted = ready.run(Method::CountTokens, |call| Box::pin(methods::count_tokens(call, params))).await?;
    Ok(axum::Json(json!({"object": "response.input_tokens", "input_tokens": counted.prompt_tokens})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::tools::ToolChoice;

    fn params(body: Value) -> Result<GenerateParams, ApiError> {
        serde_json::from_value::<ResponsesRequest>(body).expect("parses").params().map(|(p, _)| p)
    }

    #[test]
    fn input_items_become_the_chat_templates_turns() {
        let params = params(json!({
            "model": "m", "instructions": "Be brief.", "max_output_tokens": 32,
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
            "input": [
                {"role": "user", "content": "Weather in Paris?"},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "21 C"},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "And tomorrow?"}]},
            ],
        }))
        .unwrap_or_else(|e| panic!("{}", e.body()));
        let roles: Vec<_> = params.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool", "user"]);
        assert_eq!(params.messages[2].tool_calls[0].name, "get_weather");
        assert_eq!(params.messages[3].tool_call_id.as_deref(), Some("call_1"));
        assert_eq!(params.messages[4].content, "And tomorrow?");
        assert_eq!(params.tool_choice, Some(ToolChoice::Function("get_weather".into())));
        assert_eq!((params.max_new_tokens, params.schema), (Some(32), Some(json!({"type": "object"}))));
    }

    #[test]
    fn what_needs_state_or_is_not_served_is_refused_naming_it() {
        let base = |extra: Value| {
            let mut body = json!({"model": "m", "input": "hi"});
            body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            body
        };
        let cases = [
            (json!({"previous_response_id": "resp_1"}), "previous_response_id"),
            (json!({"store": true}), "store"),
            (json!({"conversation": "conv_1"}), "conversation"),
            (
                json!({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]}),
                "input_image",
            ),
            (json!({"tools": [{"type": "web_search"}]}), "web_search"),
            (json!({"background": true}), "background"),
            (json!({"input": [{"type": "reasoning", "summary": []}]}), "reasoning"),
        ];
        for (extra, named) in cases {
            let error = params(base(extra.clone())).err().unwrap_or_else(|| panic!("{extra} was accepted"));
            assert_eq!(error.status.as_u16(), 400);
            assert!(error.message().contains(named), "{}", error.message());
        }
        assert!(params(base(json!({"store": false, "metadata": {}, "truncation": "disabled"}))).is_ok());
    }
}
