//! Ollama's API (`/api/*`), served on listeners of its own (`steadytext-ollama.socket`,
//! `--listen ollama:HOST:PORT`), so that clients written for Ollama work with a change of
//! address. Each route translates Ollama's shape into the daemon's typed params and runs the same
//! method as the JSON-RPC listeners: the same request gives `stctl`'s bytes. What steadytext cannot
//! honour is refused with the reason, never ignored (`docs/compat.md` lists it); errors are
//! Ollama's `{"error": "..."}`.

use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;

use super::body::read_json;
use super::generation::{route_key, ContentStream, Streaming, ENGINE_HEADER};
use super::openai::types::RequestTool;
use super::run::{event_stream, Event, Ready};
use super::{ApiError, Front};
use crate::daemon::methods::generate as methods;
use crate::engine::generate::{ChatMessage, FinishReason};
use crate::engine::tools::ToolCall;
use crate::error::Error;
use crate::model::{ModelFiles, ModelKind};
use crate::protocol::{EmbedParams, GenerateParams, GenerateResult, Method, ROUTE_KEY_HEADER};

/// Options that tune how Ollama runs a model, not what it answers: accepted and left alone.
const RUNTIME_OPTIONS: [&str; 14] = [
    "num_ctx",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "low_vram",
    "use_mmap",
    "use_mlock",
    "numa",
    "num_thread",
    "vocab_only",
    "f16_kv",
    "logits_all",
    "embedding_only",
    "num_keep",
];

/// Sampling options steadytext does not have, with the value that leaves sampling unchanged
/// (accepted at it, refused otherwise); `repeat_last_n`, `mirostat_tau`, `mirostat_eta` and
/// `penalize_newline` matter only when one of these is set.
const NEUTRAL_OPTIONS: [(&str, f64); 7] = [
    ("repeat_penalty", 1.0),
    ("presence_penalty", 0.0),
    ("frequency_penalty", 0.0),
    ("mirostat", 0.0),
    ("tfs_z", 1.0),
    ("typical_p", 1.0),
    ("min_p", 0.0),
];

/// Options that matter only beside a neutral one above.
const DEPENDENT_OPTIONS: [&str; 4] = ["repeat_last_n", "mirostat_tau", "mirostat_eta", "penalize_newline"];

/// The routes of an Ollama listener.
pub(super) fn router(front: Arc<Front>) -> Router {
    Router::new()
        .route("/", get(running))
        .route("/api/version", get(version))
        .route("/api/generate", post(generate))
        .route("/api/chat", post(chat))
        .route("/api/embed", post(embed))
        .route("/api/embeddings", post(embeddings))
        .route("/api/tags", get(tags))
        .route("/api/show", post(show))
        .route("/api/ps", get(ps))
        .route("/api/pull", post(model_store))
        .route("/api/push", post(model_store))
        .route("/api/create", post(model_store))
        .route("/api/delete", axum::routing::delete(model_store))
        .route("/api/copy", post(model_store))
        .route("/api/blobs/{digest}", post(model_store).head(model_store))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such route of Ollama's API; see docs/compat.md")
        })
        .layer(axum::middleware::map_response(ollama_errors))
        .with_state(front)
}

/// Every error in Ollama's shape, `{"error": "what happened and what to do"}`, whichever part of
/// the front made it (the key check, the body limits, a handler).
async fn ollama_errors(response: Response) -> Response {
    let is_json = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes() == b"application/json");
    if !(response.status().is_client_error() || response.status().is_server_error()) || !is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let error: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let message = match &error["error"] {
        Value::String(message) => message.clone(),
        other => other["message"].as_str().map_or_else(|| String::from_utf8_lossy(&bytes).into_owned(), str::to_owned),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(json!({ "error": message }).to_string()))
}

/// `GET /` (and `HEAD`): what Ollama's server answers there (its gin routes reply "Ollama is
/// running" to `GET /` and `HEAD /`), which clients check to find a server (no key).
async fn running() -> &'static str {
    "Ollama is running"
}

/// `GET /api/version`: steadytext's version.
async fn version(_ready: Ready) -> Response {
    axum::Json(json!({ "version": env!("CARGO_PKG_VERSION") })).into_response()
}

/// `/api/pull`, `/api/push`, `/api/create`, `/api/delete`, `/api/copy`, `/api/blobs`: refused.
async fn model_store(_ready: Ready) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "steadytextd does not change its models over Ollama's API: its model folder is read-only to the daemon. \
         Fetch, list and remove models on the host with `stctl models pull REPO`, `stctl models list` and \
         `stctl models rm NAME` (see docs/compat.md)",
    )
}

fn invalid(message: impl Into<String>) -> ApiError {
    Error::InvalidRequest(message.into()).into()
}

/// Now, as Ollama writes times (RFC 3339, UTC, nanoseconds).
fn now() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

/// `options`, `format`, `keep_alive`, `think`, `logprobs` and `images`: what `/api/generate`
/// and `/api/chat` share.
#[derive(Deserialize)]
struct Shared {
    model: String,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    format: Option<Value>,
    #[serde(default)]
    options: Option<Map<String, Value>>,
    #[serde(default)]
    keep_alive: Option<Value>,
    #[serde(default)]
    think: Option<Value>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<u64>,
    /// Fields of no route: refused by name.
    #[serde(flatten)]
    other: Map<String, Value>,
}

impl Shared {
    /// The params these fields set (the prompt or messages are the caller's).
    fn params(&self) -> Result<GenerateParams, ApiError> {
        if let Some(field) = self.other.keys().next() {
            return Err(invalid(format!("{field} is not a field of this route (see docs/compat.md)")));
        }
        if self.model.is_empty() {
            return Err(invalid("model is required: name a model folder (GET /api/tags lists them)"));
        }
        let think = match &self.think {
            None | Some(Value::Null | Value::Bool(false)) => false,
            Some(Value::Bool(true)) => true,
            Some(_) => {
                return Err(invalid(
                    "think takes true or false here (levels such as \"high\" are gpt-oss's); the thinking text stays in the answer",
                ))
            }
        };
        if self.logprobs == Some(true) || self.top_logprobs.is_some() {
            return Err(invalid(
                "logprobs are not served on Ollama's API; ask /v1/chat/completions or stctl generate --logprobs",
            ));
        }
        keep_alive(self.keep_alive.as_ref())?;
        let mut params = GenerateParams { model: Some(self.model.clone()), think, ..Default::default() };
        params.schema = match &self.format {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) if s == "json" => Some(json!({"type": "object"})),
            Some(schema @ Value::Object(_)) => Some(schema.clone()),
            Some(other) => return Err(invalid(format!("format {other} is not \"json\" or a JSON Schema object"))),
        };
        options(&mut params, self.options.as_ref())?;
        Ok(params)
    }

    /// Ollama streams unless told not to.
    fn streams(&self) -> bool {
        self.stream.unwrap_or(true)
    }

    /// Whether `keep_alive` asks to unload the model now (0).
    fn unloads(&self) -> bool {
        matches!(keep_alive(self.keep_alive.as_ref()), Ok(Some(d)) if d.is_zero())
    }
}

/// Ollama's `keep_alive`: seconds, or a duration such as "5m"; negative means forever (None).
/// The daemon's `[models] keep_alive_secs` governs unloading; only 0 (unload now) acts.
fn keep_alive(value: Option<&Value>) -> Result<Option<Duration>, ApiError> {
    let bad = |v: &Value| invalid(format!("keep_alive {v} is not a number of seconds or a duration such as \"5m\""));
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(s) if s < 0.0 => Ok(None),
            Some(s) if s.is_finite() && s < 1e12 => Ok(Some(Duration::from_secs_f64(s))),
            _ => Err(bad(value.unwrap_or(&Value::Null))),
        },
        Some(v @ Value::String(s)) => match s.trim() {
            t if t.starts_with('-') => Ok(None),
            "0" => Ok(Some(Duration::ZERO)),
            t => humantime::parse_duration(t).map(Some).map_err(|_| bad(v)),
        },
        Some(other) => Err(bad(other)),
    }
}

/// Ollama's `options` onto `params`: seed and sampling, `num_predict`, `stop`; runtime options
/// accepted and left alone; sampling steadytext lacks refused unless neutral.
fn options(params: &mut GenerateParams, options: Option<&Map<String, Value>>) -> Result<(), ApiError> {
    let Some(options) = options else { return Ok(()) };
    for (name, value) in options {
        let number = || value.as_f64().filter(|v| v.is_finite());
        let wrong = |what: &str| invalid(format!("options.{name} must be {what}, not {value}"));
        match name.as_str() {
            _ if value.is_null() => {}
            "seed" => params.seed = Some(value.as_u64().ok_or_else(|| wrong("a seed from 0 to 2^64-1"))?),
            "temperature" => params.temperature = Some(number().ok_or_else(|| wrong("a number"))? as f32),
            "top_p" => params.top_p = Some(number().ok_or_else(|| wrong("a number"))? as f32),
            "top_k" => match value.as_u64().ok_or_else(|| wrong("a count of 0 or more"))? {
                0 => params.top_k = None,
                k => params.top_k = Some(usize::try_from(k).map_err(|_| wrong("a smaller count"))?),
            },
            "num_predict" => match value.as_i64().ok_or_else(|| wrong("a count, or -1 for no limit"))? {
                -1 | -2 => params.max_new_tokens = None,
                n if n >= 1 => params.max_new_tokens = Some(usize::try_from(n).map_err(|_| wrong("a smaller count"))?),
                _ => return Err(wrong("at least 1, or -1 for the daemon's limit")),
            },
            "stop" => {
                params.stop = serde_json::from_value(value.clone()).map_err(|_| wrong("a list of strings"))?;
            }
            _ if RUNTIME_OPTIONS.contains(&name.as_str()) || DEPENDENT_OPTIONS.contains(&name.as_str()) => {}
            _ => match NEUTRAL_OPTIONS.iter().find(|(n, _)| n == name) {
                Some((_, neutral)) if number() == Some(*neutral) => {}
                Some((_, neutral)) => {
                    return Err(invalid(format!(
                        "options.{name} {value} is not served: steadytext samples without it; leave it out or set \
                         it to {neutral}"
                    )))
                }
                None => return Err(invalid(format!("options.{name} is not an option steadytext knows"))),
            },
        }
    }
    Ok(())
}

/// `POST /api/generate` body (unknown fields land in [`Shared::other`]).
#[derive(Deserialize)]
struct GenerateRequest {
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    context: Option<Vec<i64>>,
    #[serde(default)]
    raw: Option<bool>,
    #[serde(default)]
    images: Option<Vec<Value>>,
    #[serde(flatten)]
    shared: Shared,
}

/// `POST /api/generate`: the prompt through the model's chat template (with `system` as its
/// system turn), or verbatim with `raw`. An empty prompt loads the model (or with
/// `keep_alive: 0` unloads it), as Ollama does.
async fn generate(ready: Ready, body: Body) -> Result<Response, ApiError> {
    let request: GenerateRequest = read_json(body, &ready.daemon).await?;
    let refused = [
        ("suffix", request.suffix.as_ref().is_some_and(|s| !s.is_empty())),
        ("template", request.template.as_ref().is_some_and(|s| !s.is_empty())),
        ("context", request.context.as_ref().is_some_and(|c| !c.is_empty())),
        ("images", request.images.as_ref().is_some_and(|i| !i.is_empty())),
    ];
    if let Some((field, _)) = refused.iter().find(|(_, set)| *set) {
        return Err(invalid(format!(
            "{field} is not served by steadytext: the model folder's own chat template reads the prompt (send a \
             conversation to /api/chat instead of context; text only)"
        )));
    }
    let mut params = request.shared.params()?;
    let prompt = request.prompt.unwrap_or_default();
    let system = request.system.filter(|s| !s.is_empty());
    if prompt.is_empty() && system.is_none() {
        return load(&ready, &request.shared, Shape::Generate).await;
    }
    if request.raw == Some(true) {
        if system.is_some() {
            return Err(invalid("system is not read with raw: true; write it into the prompt"));
        }
        (params.prompt, params.raw) = (prompt, true);
    } else {
        match system {
            Some(system) => {
                params.messages = vec![ChatMessage::new("system", system), ChatMessage::new("user", prompt)]
            }
            None => params.prompt = prompt,
        }
    }
    answer(ready, params, request.shared.streams(), Shape::Generate).await
}

/// A message of `/api/chat`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    role: String,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    images: Option<Vec<Value>>,
    #[serde(default)]
    tool_calls: Option<Vec<MessageToolCall>>,
    /// A tool turn's tool (the template reads turns in order; the name changes nothing).
    #[serde(default, rename = "tool_name")]
    _tool_name: Option<String>,
}

/// A call in a conversation's history, in Ollama's shape (arguments an object).
#[derive(Deserialize)]
struct MessageToolCall {
    function: MessageFunction,
}

#[derive(Deserialize)]
struct MessageFunction {
    name: String,
    #[serde(default)]
    arguments: Map<String, Value>,
}

impl Message {
    fn into_chat(self) -> Result<ChatMessage, ApiError> {
        if self.images.as_ref().is_some_and(|i| !i.is_empty()) {
            return Err(invalid("images are not served by steadytext (text models only)"));
        }
        if self.thinking.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(invalid("thinking is not served by steadytext: leave it out of the messages"));
        }
        if !matches!(self.role.as_str(), "system" | "user" | "assistant" | "tool") {
            return Err(invalid(format!("role {:?} is not system, user, assistant or tool", self.role)));
        }
        let mut message = ChatMessage::new(&self.role, self.content.unwrap_or_default());
        // Ollama's calls carry no ids; the template sees them in order.
        for (i, call) in self.tool_calls.unwrap_or_default().into_iter().enumerate() {
            let arguments = Value::Object(call.function.arguments).to_string();
            message.tool_calls.push(ToolCall { id: format!("call_{i}"), name: call.function.name, arguments });
        }
        Ok(message)
    }
}

/// `POST /api/chat` body (unknown fields land in [`Shared::other`]).
#[derive(Deserialize)]
struct ChatRequest {
    #[serde(default)]
    messages: Vec<Message>,
    #[serde(default)]
    tools: Option<Vec<RequestTool>>,
    #[serde(flatten)]
    shared: Shared,
}

/// `POST /api/chat`: a conversation (with tools, calls and their results). No messages loads
/// the model (or with `keep_alive: 0` unloads it).
async fn chat(ready: Ready, body: Body) -> Result<Response, ApiError> {
    let request: ChatRequest = read_json(body, &ready.daemon).await?;
    let mut params = request.shared.params()?;
    if request.messages.is_empty() {
        return load(&ready, &request.shared, Shape::Chat).await;
    }
    params.messages = request.messages.into_iter().map(Message::into_chat).collect::<Result<_, _>>()?;
    params.tools =
        request.tools.unwrap_or_default().into_iter().map(RequestTool::into_tool).collect::<Result<_, _>>()?;
    answer(ready, params, request.shared.streams(), Shape::Chat).await
}

/// Which answer shape a generation route speaks.
#[derive(Clone, Copy)]
enum Shape {
    /// `/api/generate`: `response`.
    Generate,
    /// `/api/chat`: `message`.
    Chat,
}

impl Shape {
    /// One line of the answer: `text` so far (a piece, or the rest at the end) and, at the end,
    /// the calls.
    fn line(self, model: &str, text: String, calls: Option<&[ToolCall]>, done: bool) -> Map<String, Value> {
        let mut line = Map::new();
        line.insert("model".into(), model.into());
        line.insert("created_at".into(), now().into());
        match self {
            Shape::Generate => {
                line.insert("response".into(), text.into());
            }
            Shape::Chat => {
                let mut message = json!({"role": "assistant", "content": text});
                if let Some(calls) = calls.filter(|c| !c.is_empty()) {
                    message["tool_calls"] = calls.iter().map(tool_call).collect();
                }
                line.insert("message".into(), message);
            }
        }
        line.insert("done".into(), done.into());
        line
    }
}

/// A call as Ollama writes it: arguments an object.
fn tool_call(call: &ToolCall) -> Value {
    let arguments: Value = serde_json::from_str(&call.arguments).unwrap_or_else(|_| json!({}));
    json!({"function": {"name": call.name, "arguments": arguments}})
}

/// Loads (or unloads, with `keep_alive: 0`) the model an empty request names.
async fn load(ready: &Ready, shared: &Shared, shape: Shape) -> Result<Response, ApiError> {
    shared.params()?;
    let reason = if shared.unloads() {
        ready.daemon.registry().unload(&shared.model);
        "unload"
    } else {
        let config = ready.daemon.config();
        ready.daemon.registry().get(ModelKind::Generation, Some(&shared.model), &config).await?;
        "load"
    };
    let mut line = shape.line(&shared.model, String::new(), None, true);
    line.insert("done_reason".into(), reason.into());
    Ok(axum::Json(line).into_response())
}

/// What Ollama reports about an answer: why it ended, its token counts and durations (in ns,
/// measured here: loading is until the model was known, the prompt until the first piece).
fn figures(line: &mut Map<String, Value>, result: &GenerateResult, started: Instant, stream: &Timing) {
    let done = Instant::now();
    let ns = |d: Duration| d.as_nanos() as u64;
    let reason = match result.generation.finish_reason {
        FinishReason::Length | FinishReason::Context => "length",
        FinishReason::Eos | FinishReason::Stop | FinishReason::ToolCalls => "stop",
    };
    line.insert("done_reason".into(), reason.into());
    line.insert("total_duration".into(), ns(done - started).into());
    line.insert("load_duration".into(), ns(stream.model_at - started).into());
    line.insert("prompt_eval_count".into(), result.generation.prompt_tokens.into());
    line.insert("prompt_eval_duration".into(), ns(stream.first_at - stream.model_at).into());
    line.insert("eval_count".into(), result.generation.token_ids.len().into());
    line.insert("eval_duration".into(), ns(done - stream.first_at).into());
}

/// When a streamed generation knew its model and got its first event.
struct Timing {
    model_at: Instant,
    first_at: Instant,
}

/// Runs a generation and answers in `shape`: NDJSON lines as pieces come (`stream`), or one
/// object. Both run it as a stream, to measure Ollama's durations; the bytes are the same.
async fn answer(ready: Ready, params: GenerateParams, stream: bool, shape: Shape) -> Result<Response, ApiError> {
    let started = Instant::now();
    let route = route_key(&ready, &params);
    let mut content = ContentStream::for_params(&params);
    let engine = ready.daemon.engine().id.clone();
    let headers = [(ENGINE_HEADER, engine), (ROUTE_KEY_HEADER, route)];
    let Streaming { info, first, mut events, model_at, first_at } = Streaming::start(&ready, params).await?;
    let timing = Timing { model_at, first_at };
    let model = info.name;
    if !stream {
        let mut event = first;
        let result = loop {
            match event {
                Event::Done(result) => break result?,
                _ => event = events.recv().await.ok_or_else(|| ApiError::internal("the answer ended early"))?,
            }
        };
        let generation = &result.generation;
        let mut line = shape.line(&model, generation.content().to_string(), Some(&generation.tool_calls), true);
        figures(&mut line, &result, started, &timing);
        return Ok((headers, axum::Json(line)).into_response());
    }
    let body = event_stream(Some(first), events, move |event| {
        let line = match event {
            Event::Model(_) => return Vec::new(),
            Event::Piece(piece) => {
                let shown = match shape {
                    Shape::Generate => piece,
                    Shape::Chat => content.piece(&piece),
                };
                if shown.is_empty() {
                    return Vec::new();
                }
                Value::Object(shape.line(&model, shown, None, false))
            }
            Event::Done(Ok(result)) => {
                let generation = &result.generation;
                let rest = match shape {
                    Shape::Generate => String::new(),
                    Shape::Chat => content.finish(generation.content()),
                };
                let mut line = shape.line(&model, rest, Some(&generation.tool_calls), true);
                figures(&mut line, &result, started, &timing);
                Value::Object(line)
            }
            Event::Done(Err(error)) => json!({ "error": ApiError::from(error).message() }),
        };
        vec![Bytes::from(format!("{line}\n"))]
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], headers, Body::from_stream(body)).into_response())
}

/// A string or a list of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<String>),
}

/// `POST /api/embed` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedRequest {
    model: String,
    input: Input,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    dimensions: Option<usize>,
    #[serde(default)]
    options: Option<Map<String, Value>>,
    #[serde(default)]
    keep_alive: Option<Value>,
}

/// `POST /api/embeddings` body (Ollama's older route).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddingsRequest {
    model: String,
    #[serde(default)]
    prompt: String,
    #[serde(default)]
    options: Option<Map<String, Value>>,
    #[serde(default)]
    keep_alive: Option<Value>,
}

/// Embeds `texts` with the model `model`; the vectors and the texts' tokens.
async fn embed_texts(
    ready: &Ready,
    model: String,
    texts: Vec<String>,
    dimensions: Option<usize>,
    options: Option<&Map<String, Value>>,
    keep: Option<&Value>,
) -> Result<(crate::protocol::EmbedResult, usize), ApiError> {
    if model.is_empty() {
        return Err(invalid("model is required: name an embedding model folder (GET /api/tags lists them)"));
    }
    keep_alive(keep)?;
    let mut ignored = GenerateParams::default();
    self::options(&mut ignored, options)?;
    let params = EmbedParams { texts, model: Some(model), mode: None, dimensions, ..Default::default() };
    ready.run(Method::Embed, |call| Box::pin(methods::embed_counting(call, params, true))).await
}

/// `POST /api/embed`: vectors as `/v1/embeddings` gives them.
async fn embed(ready: Ready, body: Body) -> Result<Response, ApiError> {
    let started = Instant::now();
    let request: EmbedRequest = read_json(body, &ready.daemon).await?;
    if request.truncate == Some(false) {
        return Err(invalid(
            "truncate: false is not served: a text longer than the model reads is cut as its tokenizer configuration \
             says (sentence-transformers' rule); leave truncate out",
        ));
    }
    let texts = match request.input {
        Input::One(text) => vec![text],
        Input::Many(texts) => texts,
    };
    let (model, options, keep) = (request.model, request.options, request.keep_alive);
    let (result, tokens) =
        embed_texts(&ready, model, texts, request.dimensions, options.as_ref(), keep.as_ref()).await?;
    let total = started.elapsed().as_nanos() as u64;
    Ok(axum::Json(json!({"model": result.model, "embeddings": result.embeddings, "total_duration": total,
                         "load_duration": 0, "prompt_eval_count": tokens}))
    .into_response())
}

/// `POST /api/embeddings`: one vector.
async fn embeddings(ready: Ready, body: Body) -> Result<Response, ApiError> {
    let request: EmbeddingsRequest = read_json(body, &ready.daemon).await?;
    let (model, options, keep) = (request.model, request.options, request.keep_alive);
    let (mut result, _) =
        embed_texts(&ready, model, vec![request.prompt], None, options.as_ref(), keep.as_ref()).await?;
    Ok(axum::Json(json!({"embedding": result.embeddings.pop().unwrap_or_default()})).into_response())
}

/// A model folder as Ollama lists it.
struct Listed {
    name: String,
    kind: Option<ModelKind>,
    size: u64,
    digest: Option<String>,
    modified: Option<SystemTime>,
    family: String,
}

impl Listed {
    /// Ollama's `details`.
    fn details(&self) -> Value {
        json!({"parent_model": "", "format": "onnx", "family": self.family, "families": [self.family],
               "parameter_size": "", "quantization_level": ""})
    }

    /// Ollama's digest: bare hex.
    fn digest(&self) -> String {
        self.digest.as_deref().map(|d| d.trim_start_matches("sha256:").to_string()).unwrap_or_default()
    }

    fn modified_at(&self) -> String {
        humantime::format_rfc3339_seconds(self.modified.unwrap_or(SystemTime::UNIX_EPOCH)).to_string()
    }
}

/// The daemon's model folders (servable ones), the digests of loaded models filled in (others
/// are not hashed for a listing).
async fn listing(ready: &Ready) -> Result<Vec<Listed>, ApiError> {
    let model_dir = ready.daemon.config().model_dir.clone();
    let loaded: Vec<_> = ready.daemon.registry().workers().iter().map(|w| w.info()).collect();
    let listed = tokio::task::spawn_blocking(move || -> crate::error::Result<Vec<Listed>> {
        let folders = crate::store::list_unhashed(&model_dir)?;
        Ok(folders
            .into_iter()
            .filter(|f| f.problem.is_none() && f.task.is_some())
            .map(|f| {
                let family = ModelFiles::discover(&f.dir)
                    .ok()
                    .and_then(|files| files.json("config.json").ok().flatten())
                    .and_then(|config| config["model_type"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                let digest = loaded.iter().find(|i| i.name == f.name).map(|i| i.digest.clone()).or(f.digest);
                let modified = std::fs::metadata(&f.dir).and_then(|m| m.modified()).ok();
                Listed { name: f.name, kind: f.task, size: f.size, digest, modified, family }
            })
            .collect())
    });
    Ok(listed.await.map_err(|e| ApiError::internal(&format!("listing models failed: {e}")))??)
}

/// `GET /api/tags`: the model folders.
async fn tags(ready: Ready) -> Result<Response, ApiError> {
    let models: Vec<Value> = listing(&ready)
        .await?
        .iter()
        .map(|m| {
            json!({"name": m.name, "model": m.name, "modified_at": m.modified_at(), "size": m.size,
                   "digest": m.digest(), "details": m.details()})
        })
        .collect();
    Ok(axum::Json(json!({ "models": models })).into_response())
}

/// `GET /api/ps`: the loaded models (`expires_at` when `[models] keep_alive_secs` unloads them).
async fn ps(ready: Ready) -> Result<Response, ApiError> {
    let listed = listing(&ready).await?;
    let keep_alive = ready.daemon.config().models.keep_alive_secs;
    let models: Vec<Value> = ready
        .daemon
        .registry()
        .workers_with_idle()
        .iter()
        .filter_map(|(worker, idle)| {
            let info = worker.info();
            let m = listed.iter().find(|m| m.name == info.name)?;
            let mut entry = json!({"name": m.name, "model": m.name, "size": m.size, "size_vram": 0,
                                   "digest": m.digest(), "details": m.details()});
            if keep_alive > 0 {
                let left = Duration::from_secs(keep_alive).saturating_sub(*idle);
                entry["expires_at"] = humantime::format_rfc3339_seconds(SystemTime::now() + left).to_string().into();
            }
            Some(entry)
        })
        .collect();
    Ok(axum::Json(json!({ "models": models })).into_response())
}

/// `POST /api/show` body (`name` is Ollama's older field).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShowRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    name: Option<String>,
    /// Ollama's verbose listing adds tokenizer tables; the answer is the same without.
    #[serde(default, rename = "verbose")]
    _verbose: Option<bool>,
}

/// `POST /api/show`: a model folder's details and capabilities.
async fn show(ready: Ready, body: Body) -> Result<Response, ApiError> {
    let request: ShowRequest = read_json(body, &ready.daemon).await?;
    let name = request.model.or(request.name).unwrap_or_default();
    let config = ready.daemon.config();
    crate::daemon::registry::requested_dir(&config, &name)?;
    let listed = listing(&ready).await?;
    let m = listed.into_iter().find(|m| m.name == name).ok_or_else(|| Error::ModelNotFound {
        name: name.clone(),
        reason: "its folder's configs do not say what the model does".into(),
    })?;
    let capabilities: &[&str] = match m.kind {
        Some(ModelKind::Generation) => &["completion", "tools"],
        Some(ModelKind::Embedding) => &["embedding"],
        Some(ModelKind::Rerank) | None => &[],
    };
    let model_info = json!({"general.architecture": m.family, "steadytext.digest": m.digest,
                            "steadytext.kind": m.kind.map(ModelKind::as_str)});
    Ok(axum::Json(json!({"modelfile": "", "parameters": "", "template": "", "details": m.details(),
                         "model_info": model_info, "capabilities": capabilities,
                         "modified_at": m.modified_at()}))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generate_request(body: Value) -> Result<GenerateParams, ApiError> {
        serde_json::from_value::<GenerateRequest>(body).map_err(|e| invalid(e.to_string()))?.shared.params()
    }

    #[test]
    fn options_map_to_params_and_unservable_ones_are_refused_by_name() {
        let params = generate_request(json!({"model": "m", "prompt": "hi", "format": "json", "options": {
            "seed": 7, "temperature": 0.5, "top_k": 0, "top_p": 0.9, "num_predict": 12, "stop": ["\n"],
            "num_ctx": 4096, "repeat_penalty": 1.0, "repeat_last_n": 64}}))
        .unwrap();
        assert_eq!(
            (params.seed, params.temperature, params.top_k, params.top_p),
            (Some(7), Some(0.5), None, Some(0.9))
        );
        assert_eq!((params.max_new_tokens, params.stop.as_slice()), (Some(12), ["\n".to_string()].as_slice()));
        assert_eq!(params.schema, Some(json!({"type": "object"})));
        assert_eq!(
            generate_request(json!({"model": "m", "options": {"num_predict": -1}})).unwrap().max_new_tokens,
            None
        );
        let refused = |body: Value| generate_request(body).unwrap_err().message().to_string();
        assert!(refused(json!({"model": "m", "options": {"repeat_penalty": 1.1}})).contains("repeat_penalty"));
        assert!(refused(json!({"model": "m", "options": {"mirostat": 2}})).contains("mirostat"));
        assert!(refused(json!({"model": "m", "options": {"tempreature": 1}})).contains("tempreature"));
        assert!(refused(json!({"model": "m", "options": {"seed": -1}})).contains("seed"));
        assert!(refused(json!({"model": "m", "options": {"num_predict": 0}})).contains("num_predict"));
        assert!(refused(json!({"model": "m", "prompt": "x", "sufix": "y"})).contains("sufix"));
        assert!(refused(json!({"model": "m", "format": "yaml"})).contains("format"));
        assert!(refused(json!({"model": "m", "think": "high"})).contains("think"));
        assert!(generate_request(json!({"model": "m", "think": true})).unwrap().think);
        assert!(!generate_request(json!({"model": "m", "think": false})).unwrap().think);
        assert!(refused(json!({"model": ""})).contains("model is required"));
    }

    #[test]
    fn keep_alive_reads_seconds_durations_and_forever() {
        let read = |v: Value| keep_alive(Some(&v)).map_err(|e| e.message().to_string());
        assert_eq!(read(json!(0)), Ok(Some(Duration::ZERO)));
        assert_eq!(read(json!("0")), Ok(Some(Duration::ZERO)));
        assert_eq!(read(json!("5m")), Ok(Some(Duration::from_secs(300))));
        assert_eq!(read(json!(30)), Ok(Some(Duration::from_secs(30))));
        assert_eq!(read(json!(-1)), Ok(None));
        assert_eq!(read(json!("-1m")), Ok(None));
        assert!(read(json!("soon")).unwrap_err().contains("keep_alive"));
        assert!(read(json!(1e300)).unwrap_err().contains("keep_alive"));
    }

    #[test]
    fn chat_history_calls_become_the_daemons_calls() {
        let message: Message = serde_json::from_value(json!({"role": "assistant", "content": "",
            "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}))
        .unwrap();
        let chat = message.into_chat().unwrap();
        assert_eq!((chat.tool_calls[0].name.as_str(), chat.tool_calls[0].arguments.as_str()), ("f", r#"{"a":1}"#));
        let image: Message =
            serde_json::from_value(json!({"role": "user", "content": "x", "images": ["aGk="]})).unwrap();
        assert!(image.into_chat().unwrap_err().message().contains("images"));
    }
}
