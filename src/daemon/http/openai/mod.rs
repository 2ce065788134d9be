//! OpenAI-compatible routes: `/v1/chat/completions`, `/v1/completions`, `/v1/responses`
//! ([`responses`]), `/v1/embeddings` and `/v1/models`. Each parses OpenAI's shape ([`types`])
//! into the daemon's typed params, runs the same use case as the JSON-RPC method
//! ([`crate::core`], through the method's own function), and shapes the typed result as OpenAI
//! does.

mod embeddings;
mod responses;
pub(super) mod types;

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::generation::{
    answer_id, event_response, generate_now, route_key, sse, ContentStream, Streaming, CACHE_HEADER, ENGINE_HEADER,
};
use super::run::{event_stream, Event, Ready};
use super::{body::read_json, ApiError};
use crate::engine::generate::FinishReason;
use crate::engine::logprobs::TokenLogprob;
use crate::error::Error;
use crate::protocol::{GenerateParams, GenerateResult, ROUTE_KEY_HEADER};
use types::{ChatRequest, CompletionRequest};

pub(super) use embeddings::{embeddings, model_by_id, models};
pub(super) use responses::{input_tokens, responses};

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

async fn generate(
    ready: Ready,
    params: GenerateParams,
    stream: bool,
    include_usage: bool,
    flavor: Flavor,
) -> Result<Response, ApiError> {
    let prefix = match flavor {
        Flavor::Chat => "chatcmpl-",
        Flavor::Completion => "cmpl-",
    };
    let id = answer_id(prefix, &params)?;
    let route = route_key(&ready, &params);
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let content = ContentStream::for_params(&params);
    if !stream {
        let result = generate_now(&ready, params).await?;
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
    let Streaming { info, first, events, .. } = Streaming::start(&ready, params).await?;
    let identity = Identity { id, created, model: info.name.clone(), fingerprint: fingerprint(&ready, &info.digest) };
    let mut opened = false;
    let mut content = content;
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
                frames.push(sse(None, &last));
                if include_usage {
                    frames.push(sse(
                        None,
                        &json!({"id": identity.id, "object": object(flavor), "created": identity.created,
                        "model": identity.model, "system_fingerprint": identity.fingerprint, "choices": [],
                        "usage": usage(&result)}),
                    ));
                }
                frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
            }
            Event::Done(Err(error)) => frames.push(sse(None, &ApiError::from(error).body())),
        }
        frames
    });
    let engine = ready.daemon.engine().id.clone();
    Ok(event_response(engine, route, frames))
}

fn object(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::Chat => "chat.completion.chunk",
        Flavor::Completion => "text_completion",
    }
}

/// One server-sent event of a streamed answer.
fn chunk(identity: &Identity, flavor: Flavor, delta: Value, reason: Option<&str>) -> Bytes {
    sse(None, &chunk_value(identity, flavor, delta, reason))
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
