//! OpenAI-compatible routes: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings` and
//! `/v1/models`. Requests become the daemon's own `generate`, `generate_stream` and `embed`
//! calls; fields steadytext cannot honour are refused, never ignored. One deviation: an
//! omitted `temperature` means greedy decoding (steadytext's default), not OpenAI's 1.0.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::{event_stream, read_json, ApiError, Event, Ready};
use crate::cache::{embedding_route_key, generation_route_key};
use crate::engine::generate::{ChatMessage, FinishReason};
use crate::engine::logprobs::TokenLogprob;
use crate::error::Error;
use crate::model::ModelKind;
use crate::protocol::{EmbedResult, GenerateParams, GenerateResult, ROUTE_KEY_HEADER};

/// Response header naming the engine fingerprint of the answer (equal on every replica that
/// gives the same bytes).
const ENGINE_HEADER: &str = "x-steadytext-engine";

/// Response header saying whether an answer came from the cache (`hit` or `miss`; `partial` when
/// only some of an embedding request's inputs did).
const CACHE_HEADER: &str = "x-steadytext-cache";

/// Fields OpenAI clients send that change nothing here; any other unknown field is refused.
const HARMLESS_FIELDS: [&str; 4] = ["user", "store", "metadata", "service_tier"];

/// A string or a list of strings.
#[derive(Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
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
struct Message {
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
struct Common {
    model: String,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    seed: Option<u64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    stop: Option<OneOrMany>,
    #[serde(default)]
    stream: bool,
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
struct ChatRequest {
    messages: Vec<Message>,
    #[serde(flatten)]
    common: Common,
}

/// `POST /v1/completions` body.
#[derive(Deserialize)]
struct CompletionRequest {
    prompt: OneOrMany,
    #[serde(default)]
    echo: bool,
    suffix: Option<String>,
    #[serde(flatten)]
    common: Common,
}

/// `POST /v1/embeddings` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddingsRequest {
    input: OneOrMany,
    model: String,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
    #[serde(rename = "user")]
    _user: Option<String>,
}

fn unsupported(what: &str) -> ApiError {
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
    fn params(&self) -> Result<GenerateParams, ApiError> {
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

    fn include_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }
}

impl Message {
    fn into_chat(self) -> Result<ChatMessage, ApiError> {
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

/// Whether a response is a chat completion or a plain completion.
#[derive(Clone, Copy)]
enum Flavor {
    Chat,
    Completion,
}

/// `POST /v1/chat/completions`.
pub(super) async fn chat_completions(ready: Ready, body: Body) -> Result<Response, ApiError> {
    let request: ChatRequest = read_json(body, &ready.daemon).await?;
    let mut params = request.common.params()?;
    params.messages = request.messages.into_iter().map(Message::into_chat).collect::<Result<_, _>>()?;
    if params.messages.is_empty() {
        return Err(Error::InvalidRequest("messages must hold at least one message".into()).into());
    }
    generate(ready, params, &request.common, Flavor::Chat).await
}

/// `POST /v1/completions`: the prompt verbatim, without the chat template.
pub(super) async fn completions(ready: Ready, body: Body) -> Result<Response, ApiError> {
    let request: CompletionRequest = read_json(body, &ready.daemon).await?;
    if request.echo || request.suffix.is_some() {
        return Err(unsupported("echo or suffix"));
    }
    let mut params = request.common.params()?;
    let mut prompts = request.prompt.into_vec();
    if prompts.len() != 1 {
        return Err(unsupported("a prompt list of other than one prompt"));
    }
    params.prompt = prompts.remove(0);
    params.raw = true;
    generate(ready, params, &request.common, Flavor::Completion).await
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
    }
}

fn usage(result: &GenerateResult) -> Value {
    let (prompt, completion) = (result.generation.prompt_tokens, result.generation.token_ids.len());
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// OpenAI's `system_fingerprint` of a model's answers: its digest and the engine fingerprint.
fn fingerprint(ready: &Ready, model_digest: &str) -> String {
    let digest = Sha256::digest(format!("{model_digest}|{}", ready.daemon.engine().id));
    format!("fp_{}", &hex::encode(digest)[..16])
}

async fn generate(ready: Ready, params: GenerateParams, common: &Common, flavor: Flavor) -> Result<Response, ApiError> {
    let prefix = match flavor {
        Flavor::Chat => "chatcmpl",
        Flavor::Completion => "cmpl",
    };
    let value = serde_json::to_value(&params).map_err(|e| ApiError::internal(&e.to_string()))?;
    let id = format!("{prefix}-{}", &hex::encode(Sha256::digest(value.to_string()))[..24]);
    // Params that do not normalize are refused by the call below, which says why.
    let route = params
        .to_request(&ready.daemon.config())
        .map(|r| generation_route_key(params.model.as_deref(), &r))
        .unwrap_or_default();
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if !common.stream {
        let result: GenerateResult = ready.call("generate", value).await?;
        let identity = Identity {
            id,
            created,
            model: result.model.clone(),
            fingerprint: fingerprint(&ready, &result.model_digest),
        };
        let reason = finish_reason(result.generation.finish_reason);
        let logprobs = logprobs(&result, flavor);
        let choice = match flavor {
            Flavor::Chat => json!({"index": 0, "message": {"role": "assistant", "content": result.generation.text},
                                   "logprobs": logprobs, "finish_reason": reason}),
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
    let mut events = ready.start("generate_stream", value);
    let first = events.recv().await.ok_or_else(|| ApiError::internal("the request ended without a result"))?;
    if let Event::Done(Err(error)) = first {
        return Err(error.into());
    }
    let worker = ready.daemon.worker(ModelKind::Generation, params.model.as_deref()).await?;
    let info = worker.info();
    let identity = Identity { id, created, model: info.name.clone(), fingerprint: fingerprint(&ready, &info.digest) };
    let include_usage = common.include_usage();
    let mut opened = false;
    let frames = event_stream(Some(first), events, move |event| {
        let mut frames = Vec::new();
        if !opened {
            opened = true;
            if let Flavor::Chat = flavor {
                frames.push(chunk(&identity, flavor, json!({"role": "assistant", "content": ""}), None));
            }
        }
        match event {
            Event::Piece(text) => frames.push(chunk(&identity, flavor, json!({"content": text}), None)),
            Event::Done(Ok(result)) => match serde_json::from_value::<GenerateResult>(result) {
                Ok(result) => {
                    let reason = finish_reason(result.generation.finish_reason);
                    let mut last = chunk_value(&identity, flavor, json!({}), Some(reason));
                    last["choices"][0]["logprobs"] = logprobs(&result, flavor);
                    frames.push(sse(&last));
                    if include_usage {
                        frames.push(sse(
                            &json!({"id": identity.id, "object": object(flavor), "created": identity.created,
                            "model": identity.model, "system_fingerprint": identity.fingerprint, "choices": [],
                            "usage": usage(&result)}),
                        ));
                    }
                    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
                }
                Err(e) => frames.push(sse(&ApiError::internal(&e.to_string()).body())),
            },
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

/// `POST /v1/embeddings`: float or base64 (little-endian f32) vectors; `dimensions` keeps the
/// first N components and re-normalizes them (Matryoshka truncation).
pub(super) async fn embeddings(ready: Ready, body: Body) -> Result<Response, ApiError> {
    let request: EmbeddingsRequest = read_json(body, &ready.daemon).await?;
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(Error::InvalidRequest(format!("encoding_format {other:?} is not float or base64")).into())
        }
    };
    let texts = request.input.into_vec();
    let route = embedding_route_key(Some(&request.model), None, &texts);
    let params = json!({"texts": texts, "model": request.model, "dimensions": request.dimensions});
    let result: EmbedResult = ready.call("embed", params).await?;
    let mut data = Vec::with_capacity(result.embeddings.len());
    for (index, vector) in result.embeddings.into_iter().enumerate() {
        let embedding = if base64 {
            let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        } else {
            json!(vector)
        };
        data.push(json!({"object": "embedding", "index": index, "embedding": embedding}));
    }
    let worker = ready.daemon.worker(ModelKind::Embedding, Some(&result.model)).await?;
    let tokens = token_count(&worker.info().dir, &texts).map_err(ApiError::from)?;
    let body = axum::Json(json!({
        "object": "list", "data": data, "model": result.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }));
    let cached = match result.cached {
        0 => "miss",
        n if n == texts.len() => "hit",
        _ => "partial",
    };
    let headers = [
        (ENGINE_HEADER, ready.daemon.engine().id.clone()),
        (CACHE_HEADER, cached.to_string()),
        (ROUTE_KEY_HEADER, route),
    ];
    Ok((headers, body).into_response())
}

/// Longest text prefix counted for `usage`, in bytes: embedding models read a few hundred
/// tokens at most, and counting must not tokenize megabytes.
const COUNTED_BYTES: usize = 16 * 1024;

/// Tokens of `texts` under the model's tokenizer (with its own truncation), for `usage`.
fn token_count(dir: &Path, texts: &[String]) -> crate::error::Result<usize> {
    static TOKENIZERS: OnceLock<Mutex<HashMap<PathBuf, Arc<tokenizers::Tokenizer>>>> = OnceLock::new();
    let tokenizer = {
        let mut map = TOKENIZERS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
        match map.get(dir) {
            Some(t) => t.clone(),
            None => {
                let path = dir.join("tokenizer.json");
                let mut t = tokenizers::Tokenizer::from_file(&path)
                    .map_err(|e| Error::model(dir.display().to_string(), format!("tokenizer.json: {e}")))?;
                t.with_padding(None);
                map.insert(dir.to_path_buf(), Arc::new(t));
                map[dir].clone()
            }
        }
    };
    let mut total = 0;
    for text in texts {
        let mut end = text.len().min(COUNTED_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let encoding = tokenizer
            .encode(&text[..end], true)
            .map_err(|e| Error::InvalidRequest(format!("cannot tokenize an input: {e}")))?;
        total += encoding.get_ids().len();
    }
    Ok(total)
}

/// `GET /v1/models`: the loaded models.
pub(super) async fn models(ready: Ready) -> Response {
    let data: Vec<Value> = ready
        .daemon
        .registry()
        .workers()
        .iter()
        .map(|w| {
            let info = w.info();
            json!({"id": info.name, "object": "model", "created": 0, "owned_by": "steadytext",
                   "kind": w.kind().as_str(), "digest": info.digest})
        })
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}
