//! OpenAI-compatible routes: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings` and
//! `/v1/models`. Each parses OpenAI's shape ([`types`]) into the daemon's typed params, runs the
//! same use case as the JSON-RPC method ([`crate::core`], through the method's own function), and
//! shapes the typed result as OpenAI does.

mod embeddings;
mod types;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::run::{event_stream, Event, Ready};
use super::{body::read_json, ApiError};
use crate::cache::generation_route_key;
use crate::core::validate;
use crate::daemon::methods::generate as methods;
use crate::engine::generate::FinishReason;
use crate::engine::logprobs::TokenLogprob;
use crate::engine::tools::{CallSyntax, ToolChoice};
use crate::error::Error;
use crate::protocol::{wire, GenerateParams, GenerateResult, Method, ROUTE_KEY_HEADER};
use types::{ChatRequest, CompletionRequest};

pub(super) use embeddings::{embeddings, models};

/// Response header naming the engine fingerprint of the answer (equal on every replica that
/// gives the same bytes).
const ENGINE_HEADER: &str = "x-steadytext-engine";

/// Response header saying whether an answer came from the cache (`hit` or `miss`; `partial` when
/// only some of an embedding request's inputs did).
const CACHE_HEADER: &str = "x-steadytext-cache";

/// Whether a response is a chat completion or a plain completion.
#[derive(Clone, Copy)]
enum Flavor {
    Chat,
    Completion,
}

/// `POST /v1/chat/completions`.
pub(super) async fn chat_completions(ready: Ready, body: Body) -> Result<Response, ApiError> {
    let request: ChatRequest = read_json(body, &ready.daemon).await?;
    let (stream, include_usage) = (request.common.stream, request.common.include_usage());
    let params = request.params()?;
    if params.messages.is_empty() {
        return Err(Error::InvalidRequest("messages must hold at least one message".into()).into());
    }
    generate(ready, params, stream, include_usage, Flavor::Chat).await
}

/// `POST /v1/completions`: the prompt verbatim, without the chat template.
pub(super) async fn completions(ready: Ready, body: Body) -> Result<Response, ApiError> {
    let request: CompletionRequest = read_json(body, &ready.daemon).await?;
    if request.echo || request.suffix.is_some() {
        return Err(types::unsupported("echo or suffix"));
    }
    let mut params = request.common.params()?;
    let mut prompts = request.prompt.into_vec();
    if prompts.len() != 1 {
        return Err(types::unsupported("a prompt list of other than one prompt"));
    }
    params.prompt = prompts.remove(0);
    params.raw = true;
    let (stream, include_usage) = (request.common.stream, request.common.include_usage());
    generate(ready, params, stream, include_usage, Flavor::Completion).await
}

/// What identifies one answer in OpenAI's fields.
struct Identity {
    id: String,
    created: u64,
    model: String,
    fingerprint: String,
}

fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Eos | FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::Context => "length",
        FinishReason::ToolCalls => "tool_calls",
    }
}

/// OpenAI's usage figures; `cached_tokens` counts the prompt tokens not prefilled for this answer
/// (the prefix cache's, or all of them for an answer from the result cache).
fn usage(result: &GenerateResult) -> Value {
    let (prompt, completion) = (result.generation.prompt_tokens, result.generation.token_ids.len());
    let cached = if result.cached { prompt } else { result.prefix_tokens };
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
           "prompt_tokens_details": {"cached_tokens": cached}})
}

/// OpenAI's `system_fingerprint` of a model's answers: its digest and the engine fingerprint.
fn fingerprint(ready: &Ready, model_digest: &str) -> String {
    let digest = Sha256::digest(format!("{model_digest}|{}", ready.daemon.engine().id));
    format!("fp_{}", &hex::encode(digest)[..16])
}

/// The answer's `id`: a hash of the params in the wire's JSON form (the form ids have always been
/// made from, so a request keeps its id), under `prefix`.
fn answer_id(prefix: &str, params: &GenerateParams) -> Result<String, ApiError> {
    let text = wire::encode(params).map_err(|e| ApiError::internal(&e.to_string()))?;
    Ok(format!("{prefix}-{}", &hex::encode(Sha256::digest(text.get()))[..24]))
}

/// A chat answer's tool calls in OpenAI's shape (`index` for stream deltas).
fn tool_calls(result: &GenerateResult, indexed: bool) -> Vec<Value> {
    let calls = result.generation.tool_calls.iter().enumerate();
    calls
        .map(|(i, c)| {
            let mut call = json!({"id": c.id, "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}});
            if indexed {
                call["index"] = i.into();
            }
            call
        })
        .collect()
}

/// A chat answer's message: its text (null when it only calls tools) and its calls.
fn message(result: &GenerateResult) -> Value {
    let generation = &result.generation;
    if generation.tool_calls.is_empty() {
        return json!({"role": "assistant", "content": generation.text});
    }
    let content = Some(generation.content()).filter(|c| !c.is_empty());
    json!({"role": "assistant", "content": content, "tool_calls": tool_calls(result, false)})
}

/// The content of a streamed chat answer, as it grows: text that may still turn out to open a
/// tool call (trailing blanks, a part of the opening tag) is held back until it is known, so the
/// pieces add up to the message's `content` and never show call markup.
#[derive(Default)]
struct ContentStream {
    text: String,
    shown: usize,
    opening: Option<&'static str>,
}

impl ContentStream {
    fn new(opening: Option<&'static str>) -> Self {
        ContentStream { opening, ..Default::default() }
    }

    /// What of `piece` (and what it held) may be shown now.
    fn piece(&mut self, piece: &str) -> String {
        self.text.push_str(piece);
        let Some(opening) = self.opening else { return self.show(self.text.len()) };
        let visible = match self.text.find(opening) {
            Some(at) => self.text[..at].trim_end().len(),
            None => {
                let partial = (1..opening.len()).rev().find(|&n| self.text.ends_with(&opening[..n])).unwrap_or(0);
                self.text[..self.text.len() - partial].trim_end().len()
            }
        };
        self.show(visible)
    }

    /// At the end: the rest of the final content.
    fn finish(&mut self, content: &str) -> String {
        content.get(self.shown..).unwrap_or_default().to_string()
    }

    fn show(&mut self, upto: usize) -> String {
        let out = self.text.get(self.shown..upto.max(self.shown)).unwrap_or_default().to_string();
        self.shown = self.shown.max(upto);
        out
    }
}

async fn generate(
    ready: Ready,
    params: GenerateParams,
    stream: bool,
    include_usage: bool,
    flavor: Flavor,
) -> Result<Response, ApiError> {
    let prefix = match flavor {
        Flavor::Chat => "chatcmpl",
        Flavor::Completion => "cmpl",
    };
    let id = answer_id(prefix, &params)?;
    // Params that do not normalize are refused by the call below, which says why.
    let route = validate::generate(&params, &(&*ready.daemon.config()).into())
        .map(|r| generation_route_key(params.model.as_deref(), &r))
        .unwrap_or_default();
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // The one call syntax steadytext knows (the request is refused if the model's is another).
    let may_call = !params.tools.is_empty() && params.tool_choice != Some(ToolChoice::None);
    let opening = may_call.then(|| CallSyntax::Hermes.opening());
    if !stream {
        let result = ready.run(Method::Generate, |call| Box::pin(methods::generate(call, params, false))).await?;
        let identity = Identity {
            id,
            created,
            model: result.model.clone(),
            fingerprint: fingerprint(&ready, &result.model_digest),
        };
        let reason = finish_reason(result.generation.finish_reason);
        let logprobs = logprobs(&result, flavor);
        let choice = match flavor {
            Flavor::Chat => {
                json!({"index": 0, "message": message(&result), "logprobs": logprobs, "finish_reason": reason})
            }
            Flavor::Completion => {
                json!({"index": 0, "text": result.generation.text, "logprobs": logprobs, "finish_reason": reason})
            }
        };
        let object = match flavor {
            Flavor::Chat => "chat.completion",
            Flavor::Completion => "text_completion",
        };
        let body = axum::Json(json!({
            "id": identity.id, "object": object, "created": identity.created, "model": identity.model,
            "system_fingerprint": identity.fingerprint, "choices": [choice], "usage": usage(&result),
        }));
        let cached = if result.cached { "hit" } else { "miss" };
        let headers = [
            (ENGINE_HEADER, ready.daemon.engine().id.clone()),
            (CACHE_HEADER, cached.to_string()),
            (ROUTE_KEY_HEADER, route),
        ];
        return Ok((headers, body).into_response());
    }
    // Streaming: errors found before the first piece (bad params, overload) get their own
    // status; later ones arrive as an error event.
    let mut events =
        ready.spawn(Some(Method::GenerateStream), move |call| Box::pin(methods::generate(call, params, true)));
    let mut model = None;
    let first = loop {
        match events.recv().await.ok_or_else(|| ApiError::internal("the request ended without a result"))? {
            Event::Model(info) => model = Some(info),
            Event::Done(Err(error)) => return Err(error.into()),
            event => break event,
        }
    };
    let info = model.ok_or_else(|| ApiError::internal("the answer named no model"))?;
    let identity = Identity { id, created, model: info.name.clone(), fingerprint: fingerprint(&ready, &info.digest) };
    let mut opened = false;
    let mut content = ContentStream::new(opening);
    let frames = event_stream(Some(first), events, move |event| {
        let mut frames = Vec::new();
        if !opened {
            opened = true;
            if let Flavor::Chat = flavor {
                frames.push(chunk(&identity, flavor, json!({"role": "assistant", "content": ""}), None));
            }
        }
        match event {
            Event::Model(_) => {}
            Event::Piece(text) => {
                let shown = content.piece(&text);
                if !shown.is_empty() {
                    frames.push(chunk(&identity, flavor, json!({"content": shown}), None));
                }
            }
            Event::Done(Ok(result)) => {
                let rest = content.finish(result.generation.content());
                if !rest.is_empty() {
                    frames.push(chunk(&identity, flavor, json!({"content": rest}), None));
                }
                if !result.generation.tool_calls.is_empty() {
                    frames.push(chunk(&identity, flavor, json!({"tool_calls": tool_calls(&result, true)}), None));
                }
                let reason = finish_reason(result.generation.finish_reason);
                let mut last = chunk_value(&identity, flavor, json!({}), Some(reason));
                last["choices"][0]["logprobs"] = logprobs(&result, flavor);
                frames.push(sse(&last));
                if include_usage {
                    frames.push(sse(&json!({"id": identity.id, "object": object(flavor), "created": identity.created,
                        "model": identity.model, "system_fingerprint": identity.fingerprint, "choices": [],
                        "usage": usage(&result)})));
                }
                frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
            }
            Event::Done(Err(error)) => frames.push(sse(&ApiError::from(error).body())),
        }
        frames
    });
    let engine = ready.daemon.engine().id.clone();
    let headers = [
        (header::CONTENT_TYPE.as_str(), "text/event-stream".to_string()),
        (ENGINE_HEADER, engine),
        (ROUTE_KEY_HEADER, route),
    ];
    Ok(([(header::CACHE_CONTROL, "no-cache")], headers, Body::from_stream(frames)).into_response())
}

fn object(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::Chat => "chat.completion.chunk",
        Flavor::Completion => "text_completion",
    }
}

fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// One server-sent event of a streamed answer.
fn chunk(identity: &Identity, flavor: Flavor, delta: Value, reason: Option<&str>) -> Bytes {
    sse(&chunk_value(identity, flavor, delta, reason))
}

fn chunk_value(identity: &Identity, flavor: Flavor, delta: Value, reason: Option<&str>) -> Value {
    let choice = match flavor {
        Flavor::Chat => json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": reason}),
        Flavor::Completion => json!({"index": 0, "text": delta["content"].as_str().unwrap_or(""),
                                     "logprobs": null, "finish_reason": reason}),
    };
    json!({"id": identity.id, "object": object(flavor), "created": identity.created, "model": identity.model,
           "system_fingerprint": identity.fingerprint, "choices": [choice]})
}

/// A choice's `logprobs` in OpenAI's shape for `flavor` (null when none were asked for). A
/// stream carries them all in its last chunk.
fn logprobs(result: &GenerateResult, flavor: Flavor) -> Value {
    let Some(steps) = &result.generation.logprobs else { return Value::Null };
    match flavor {
        Flavor::Chat => {
            let entry = |t: &TokenLogprob| json!({"token": t.token, "logprob": t.logprob, "bytes": null});
            let content: Vec<Value> = steps
                .iter()
                .map(|s| {
                    let mut e = entry(&s.chosen);
                    e["top_logprobs"] = s.top_logprobs.iter().map(entry).collect();
                    e
                })
                .collect();
            json!({"content": content})
        }
        Flavor::Completion => json!({
            "tokens": steps.iter().map(|s| &s.chosen.token).collect::<Vec<_>>(),
            "token_logprobs": steps.iter().map(|s| s.chosen.logprob).collect::<Vec<_>>(),
            "top_logprobs": steps
                .iter()
                .map(|s| s.top_logprobs.iter().map(|t| (t.token.clone(), json!(t.logprob))).collect::<Map<_, _>>())
                .collect::<Vec<_>>(),
        }),
    }
}
