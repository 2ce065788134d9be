//! SteadyText's daemon protocol, for its unchanged Python SDK (and pg_steadytext through it):
//! ZMTP ([`super::zmtp`]) as a REP peer, SteadyText's JSON (`{"method", "params", "id"}` in,
//! `{"id", "result", "error"}` out) and its methods translated to the daemon's (`generate`,
//! `generate_iter` with an `ACK` per token, `embed`, `rerank`, `ping`; `shutdown` refused). The
//! mapping follows `../shared/reference/steadytext-wire.md` (section 6) and `docs/compat.md`.
//! Every call runs the daemon's method through [`Call`]: logged, counted and cached as any other.
//!
//! The SDK can send neither a key nor TLS, so the listener is loopback only and any local user
//! can use it (as with SteadyText's own daemon). Its clients are all 127.0.0.1: the listener has
//! its own connection budget (`[compat.steadytext] max_connections`) and no per-peer one.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, BufStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::admission::{ListenerBudget, Received};
use super::call::{Call, Whole};
use super::methods::generate as methods;
use super::peer::{self, Peer};
use super::state::Daemon;
use super::zmtp;
use crate::config::SteadytextCompat;
use crate::core::{PieceSink, SinkFuture};
use crate::error::Error;
use crate::protocol::{EmbedParams, GenerateParams, Method, RerankParams, MAX_LINE_BYTES};

/// SteadyText's `eos_string` meaning "the model's own end".
const EOS_SENTINEL: &str = "[EOS]";
/// The token that ends a `generate_iter` stream.
const STREAM_END: &str = "##STREAM_END##";
/// What the SDK sends for the next token of a stream.
const ACK: &[u8] = b"ACK";
/// Time to complete the greeting and the handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// SteadyText's sampling above temperature 0 (`utils.get_sampling_params_with_temperature`,
/// per the reference note; its `min_p = 0.05` has no equivalent here).
const SAMPLED_TOP_K: usize = 40;
const SAMPLED_TOP_P: f32 = 0.95;

/// Serves one connection of a SteadyText listener with `budget`.
pub(crate) fn spawn<S, F>(daemon: &Arc<Daemon>, budget: ListenerBudget, stream: F, peer: Peer)
where
    S: AsyncRead + AsyncWrite + AsRawFd + Send + Unpin + 'static,
    F: std::future::Future<Output = std::io::Result<S>> + Send + 'static,
{
    let d = daemon.clone();
    daemon.track(async move {
        let _open = d.metrics().connection();
        d.touch();
        let admitted = d.admission().admit_to_listener(&budget, d.metrics().connections());
        let Ok(Ok(stream)) = tokio::time::timeout(HANDSHAKE, stream).await else { return };
        let fd = stream.as_raw_fd();
        let mut io = BufStream::new(stream);
        let greeted = tokio::time::timeout(HANDSHAKE, async {
            zmtp::greet(&mut io).await?;
            zmtp::handshake(&mut io).await
        });
        match greeted.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return tracing::debug!(?peer, error = %e, "SteadyText connection refused"),
            Err(_) => return tracing::debug!(?peer, "SteadyText handshake timed out"),
        }
        let mut connection = Connection { daemon: d.clone(), io, fd, peer };
        match admitted {
            Ok(_slot) => connection.serve().await,
            Err(error) => connection.refuse(&error).await,
        }
        d.touch();
    });
}

/// A received message: its envelope (the REQ delimiter), its body, and the bytes it holds from
/// the receive budget until it is answered.
struct Message {
    envelope: Vec<Vec<u8>>,
    body: Vec<u8>,
    _held: Received,
}

/// What to do after an answer.
enum Next {
    /// Read the next request.
    Read,
    /// This message arrived instead of an `ACK`: it is the next request.
    Handle(Message),
    /// Close the connection.
    Close,
}

struct Connection<S> {
    daemon: Arc<Daemon>,
    io: BufStream<S>,
    fd: RawFd,
    peer: Peer,
}

impl<S: AsyncRead + AsyncWrite + Send + Unpin> Connection<S> {
    /// Requests until the client leaves, breaks the protocol, idles out or shutdown begins (a
    /// request in flight is answered first).
    async fn serve(&mut self) {
        let mut pending = None;
        loop {
            let message = match pending.take() {
                Some(message) => message,
                None => match self.receive(None).await {
                    Some(message) => message,
                    None => break,
                },
            };
            match self.answer(message).await {
                Next::Read => {}
                Next::Handle(message) => pending = Some(message),
                Next::Close => break,
            }
        }
    }

    /// Over the connection limit: the first request is answered with the error, then the
    /// connection closes (the SDK raises it, rather than waiting for its timeout).
    async fn refuse(&mut self, error: &Error) {
        if let Some(message) = self.receive(None).await {
            let _ = self.reply(&message, &Value::Null, Err(error.to_string())).await;
        }
    }

    /// The next message: waited for up to `within` (None: the idle timeout; shutdown ends the
    /// wait), then read whole within the line timeout. None when the connection must close.
    async fn receive(&mut self, within: Option<Duration>) -> Option<Message> {
        let config = self.daemon.config();
        let idle = within.or_else(|| {
            (config.daemon.idle_timeout_secs > 0).then(|| Duration::from_secs(config.daemon.idle_timeout_secs))
        });
        let waited = async {
            match idle {
                Some(limit) => tokio::time::timeout(limit, zmtp::readable(&mut self.io)).await.ok()?.ok(),
                None => zmtp::readable(&mut self.io).await.ok(),
            }
        };
        tokio::select! {
            ready = waited => ready?,
            _ = self.daemon.shutdown().cancelled(), if within.is_none() => return None,
        }
        let mut held = Received::default();
        let budget = self.daemon.receive_budget().clone();
        let line = Duration::from_secs(config.daemon.line_timeout_secs);
        let read = zmtp::read_message(&mut self.io, MAX_LINE_BYTES, |bytes| budget.hold(&mut held, bytes));
        let frames = match tokio::time::timeout(line, read).await {
            Ok(Ok(frames)) => frames,
            Ok(Err(e)) => {
                tracing::debug!(peer = ?self.peer, error = %e, "SteadyText connection closed");
                return None;
            }
            Err(_) => return None,
        };
        // REQ's envelope: the frames up to the empty delimiter; the body is the one frame after.
        let split = frames.iter().position(Vec::is_empty).map_or(0, |i| i + 1);
        if frames.len() != split + 1 {
            tracing::debug!(peer = ?self.peer, frames = frames.len(), "a SteadyText message of other than one body");
            return None;
        }
        let mut frames = frames;
        let body = frames.pop().unwrap_or_default();
        Some(Message { envelope: frames, body, _held: held })
    }

    /// Sends SteadyText's reply to `message`; false when the client did not take it in time.
    async fn reply(&mut self, message: &Message, id: &Value, result: Result<Value, String>) -> bool {
        let (result, error) = match result {
            Ok(result) => (result, Value::Null),
            Err(error) => (Value::Null, Value::String(error)),
        };
        let body = json!({"id": id, "result": result, "error": error}).to_string();
        let mut frames: Vec<&[u8]> = message.envelope.iter().map(Vec::as_slice).collect();
        frames.push(body.as_bytes());
        let deadline = Duration::from_secs(self.daemon.config().daemon.send_timeout_secs);
        matches!(tokio::time::timeout(deadline, zmtp::write_message(&mut self.io, &frames)).await, Ok(Ok(())))
    }

    async fn answer(&mut self, message: Message) -> Next {
        let request: Request = match serde_json::from_slice(&message.body) {
            Ok(request) => request,
            Err(e) => {
                let error = format!("the request is not SteadyText's JSON ({{\"method\", \"params\", \"id\"}}): {e}");
                return self.then(&message, &Value::Null, Err(error)).await;
            }
        };
        let id = request.id.clone();
        let result = match request.method.as_str() {
            "ping" => Ok(json!("pong")),
            "shutdown" => Err("shutdown is not served over SteadyText's protocol: stop the daemon with \
                               `systemctl stop steadytext`"
                .to_string()),
            "generate" => self.generate(request.params).await,
            "generate_iter" => return self.generate_iter(message, id, request.params).await,
            "embed" => self.embed(request.params).await,
            "rerank" => self.rerank(request.params).await,
            other => Err(format!("Unknown method: {other}")),
        };
        self.then(&message, &id, result).await
    }

    /// Replies, then reads on (or closes when the reply could not be sent).
    async fn then(&mut self, message: &Message, id: &Value, result: Result<Value, String>) -> Next {
        match self.reply(message, id, result).await {
            true => Next::Read,
            false => Next::Close,
        }
    }

    /// Runs `work` as `method` (logged and counted), cancelled when the client hangs up.
    async fn run<T, F>(&mut self, method: Method, work: F) -> Result<T, String>
    where
        F: for<'c, 'd> FnOnce(&'c mut Call<'d>) -> super::http::Work<'c, T>,
    {
        let fd = self.fd;
        let mut sink = Whole(move || peer::hung_up(fd, true));
        let mut call = Call::new(&self.daemon, &mut sink, self.peer);
        let result = work(&mut call).await;
        call.finish(Some(method), &result);
        result.map_err(|e| e.to_string())
    }

    async fn generate(&mut self, params: Value) -> Result<Value, String> {
        let request: SdkGenerate = parse(params)?;
        let config = self.daemon.config();
        let Some(params) = request.params(&config.compat.steadytext, config.limits.max_new_tokens)? else {
            return Ok(Value::Null);
        };
        let result = self.run(Method::Generate, |call| Box::pin(methods::generate(call, params, false))).await?;
        let generation = result.generation;
        let mut text = python_strip(&generation.text).to_string();
        if request.schema.is_some() || request.response_format.is_some() {
            text = format!("<json-output>{text}</json-output>");
        }
        Ok(match request.return_logprobs {
            true => json!({"text": text, "logprobs": generation.logprobs}),
            false => Value::String(text),
        })
    }

    /// `generate_iter`: one token per reply, each after the client's `ACK`, then the end
    /// marker. The generation runs ahead (its pieces wait here, at most `max_new_tokens`); a
    /// message other than `ACK` cancels it and is the next request; no `ACK` within
    /// `send_timeout_secs` cancels it and closes the connection.
    async fn generate_iter(&mut self, message: Message, id: Value, params: Value) -> Next {
        let config = self.daemon.config();
        let prepared = parse::<SdkGenerate>(params).and_then(|request| {
            let params = request.params(&config.compat.steadytext, config.limits.max_new_tokens)?;
            Ok(params.map(|params| (params, request.include_logprobs)))
        });
        let (params, with_logprobs) = match prepared {
            Ok(Some(prepared)) => prepared,
            Ok(None) => return self.then(&message, &id, Ok(json!({ "token": STREAM_END }))).await,
            Err(error) => return self.then(&message, &id, Err(error)).await,
        };
        let (events, mut tokens) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let (daemon, peer, stop) = (self.daemon.clone(), self.peer, cancel.clone());
        self.daemon.track(async move {
            let mut sink = Tokens { events: events.clone(), cancel: stop, streamed: !with_logprobs };
            let mut call = Call::new(&daemon, &mut sink, peer);
            let method = if with_logprobs { Method::Generate } else { Method::GenerateStream };
            let result = methods::generate(&mut call, params, !with_logprobs).await;
            call.finish(Some(method), &result);
            drop(call);
            let end = match result {
                Ok(result) if with_logprobs => {
                    for step in result.generation.logprobs.unwrap_or_default() {
                        let _ = events.send(Token::Next(json!({"token": step.chosen.token, "logprobs": step})));
                    }
                    Token::End
                }
                Ok(_) => Token::End,
                Err(e) => Token::Failed(e.to_string()),
            };
            let _ = events.send(end);
        });
        let _cancel_on_exit = cancel.clone().drop_guard();
        let ack_within = Some(Duration::from_secs(config.daemon.send_timeout_secs));
        loop {
            let token = tokens.recv().await.unwrap_or_else(|| Token::Failed("the generation ended early".into()));
            let result = match token {
                Token::Next(token) => Ok(json!({ "token": token })),
                Token::End => return self.then(&message, &id, Ok(json!({ "token": STREAM_END }))).await,
                Token::Failed(error) => return self.then(&message, &id, Err(error)).await,
            };
            if !self.reply(&message, &id, result).await {
                return Next::Close;
            }
            match self.receive(ack_within).await {
                Some(next) if next.body == ACK => {}
                Some(next) => return Next::Handle(next),
                None => return Next::Close,
            }
        }
    }

    async fn embed(&mut self, params: Value) -> Result<Value, String> {
        let request: SdkEmbed = parse(params)?;
        if request.unsafe_mode {
            return Err("unsafe_mode (remote models) is not served by steadytextd; leave it false".into());
        }
        let config = self.daemon.config();
        let settings = &config.compat.steadytext;
        let texts: Vec<String> = request.text_input.into_vec().into_iter().filter(|t| !t.trim().is_empty()).collect();
        if texts.is_empty() {
            return Ok(json!(vec![0.0f32; settings.embedding_dimensions]));
        }
        let model = request.model.map(|m| settings.model_aliases.get(&m).cloned().unwrap_or(m));
        let mode = Some(request.mode.unwrap_or_else(|| "query".into()));
        let params = EmbedParams { texts, model, mode, dimensions: None, ..Default::default() };
        let result = self.run(Method::Embed, |call| Box::pin(methods::embed(call, params))).await?;
        let vector = one_vector(result.embeddings, settings.embedding_dimensions).map_err(|e| e.to_string())?;
        Ok(json!(vector))
    }

    async fn rerank(&mut self, params: Value) -> Result<Value, String> {
        let request: SdkRerank = parse(params)?;
        let documents = request.documents.into_vec();
        if documents.is_empty() {
            return Ok(json!([]));
        }
        if request.task.as_deref().is_some_and(|task| task != DEFAULT_TASK) {
            tracing::debug!("a SteadyText rerank task is not read: steadytextd's judgement prompt is fixed");
        }
        // Over the batch limit in chunks: a document's score never depends on the others.
        let chunk = self.daemon.config().limits.max_batch.max(1);
        let mut scores = Vec::with_capacity(documents.len());
        for part in documents.chunks(chunk) {
            let params = RerankParams { query: request.query.clone(), documents: part.to_vec(), model: None };
            scores.extend(self.run(Method::Rerank, |call| Box::pin(methods::rerank(call, params))).await?.scores);
        }
        let order = crate::engine::rerank::order(&scores);
        Ok(match request.return_scores {
            true => order.iter().map(|&i| json!([documents[i], scores[i]])).collect(),
            false => order.iter().map(|&i| json!(documents[i])).collect(),
        })
    }
}

/// SteadyText's request.
#[derive(Deserialize)]
struct Request {
    method: String,
    #[serde(default)]
    params: Value,
    #[serde(default)]
    id: Value,
}

fn parse<T: serde::de::DeserializeOwned>(params: Value) -> Result<T, String> {
    serde_json::from_value(params).map_err(|e| format!("invalid params: {e}"))
}

/// A string or a list of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(text) => vec![text],
            OneOrMany::Many(texts) => texts,
        }
    }
}

/// `generate` and `generate_iter` params, as the SDK sends them (every key, null for its
/// defaults).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SdkGenerate {
    prompt: String,
    #[serde(default)]
    return_logprobs: bool,
    #[serde(default)]
    include_logprobs: bool,
    #[serde(default)]
    eos_string: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    model_repo: Option<String>,
    #[serde(default)]
    model_filename: Option<String>,
    #[serde(default)]
    size: Option<String>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    max_new_tokens: Option<usize>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    schema: Option<Value>,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    choices: Option<Vec<String>>,
    #[serde(default)]
    unsafe_mode: bool,
    /// A Pydantic class cannot cross the wire; the SDK always sends false.
    #[serde(default, rename = "return_pydantic")]
    _return_pydantic: bool,
    #[serde(default)]
    options: Option<Value>,
}

impl SdkGenerate {
    /// The daemon's params (None for an empty or blank prompt: SteadyText answers null).
    fn params(&self, settings: &SteadytextCompat, limit: usize) -> Result<Option<GenerateParams>, String> {
        if self.unsafe_mode {
            return Err("unsafe_mode (remote models) is not served by steadytextd; leave it false".into());
        }
        if self.options.as_ref().is_some_and(|o| !o.is_null()) {
            return Err("options (for remote models) are not served by steadytextd; leave them out".into());
        }
        if self.model_repo.is_some() || self.model_filename.is_some() {
            return Err("model_repo and model_filename (GGUF files) are not served by steadytextd: name a model \
                        folder with model, or map a name to one in [compat.steadytext] model_aliases"
                .into());
        }
        if self.prompt.trim().is_empty() {
            return Ok(None);
        }
        let model = match (&self.model, &self.size) {
            (Some(model), _) => Some(settings.model_aliases.get(model).unwrap_or(model).clone()),
            (None, Some(size)) => Some(settings.size_aliases.get(size).cloned().ok_or_else(|| {
                format!("size {size:?} is not mapped to a model folder: add it to [compat.steadytext] size_aliases")
            })?),
            (None, None) => None,
        };
        let (temperature, top_k, top_p) = match self.temperature {
            None | Some(0.0) => (None, None, None),
            Some(t) if t > 0.0 && t.is_finite() && t <= f64::from(f32::MAX) => {
                (Some(t as f32), Some(SAMPLED_TOP_K), Some(SAMPLED_TOP_P))
            }
            Some(t) => return Err(format!("temperature {t} is out of range (0 or more)")),
        };
        let schema = match (&self.schema, &self.response_format) {
            (Some(schema), _) => Some(schema.clone()),
            (None, Some(format)) if format["type"] == "json_object" => Some(json!({"type": "object"})),
            (None, Some(format)) if format.is_null() => None,
            (None, Some(format)) => {
                return Err(format!("response_format {format} is not {{\"type\": \"json_object\"}}"))
            }
            (None, None) => None,
        };
        let stop = self.eos_string.iter().filter(|eos| *eos != EOS_SENTINEL).cloned().collect();
        Ok(Some(GenerateParams {
            prompt: self.prompt.clone(),
            seed: self.seed,
            max_new_tokens: Some(self.max_new_tokens.unwrap_or(settings.max_new_tokens.min(limit))),
            stop,
            temperature,
            top_k,
            top_p,
            model,
            schema,
            regex: self.regex.clone(),
            choices: self.choices.clone(),
            logprobs: self.return_logprobs || self.include_logprobs,
            ..Default::default()
        }))
    }
}

/// `embed` params.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SdkEmbed {
    text_input: OneOrMany,
    /// Embeddings do not depend on a seed.
    #[serde(default, rename = "seed")]
    _seed: Option<Value>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    unsafe_mode: bool,
    #[serde(default)]
    mode: Option<String>,
}

/// SteadyText's default rerank task (its reranker prompt; steadytextd's judgement prompt is
/// fixed, so another task is not read).
const DEFAULT_TASK: &str = "Given a web search query, retrieve relevant passages that answer the query";

/// `rerank` params.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SdkRerank {
    query: String,
    documents: OneOrMany,
    #[serde(default)]
    task: Option<String>,
    #[serde(default = "yes")]
    return_scores: bool,
    /// Scores do not depend on a seed.
    #[serde(default, rename = "seed")]
    _seed: Option<Value>,
}

fn yes() -> bool {
    true
}

/// SteadyText's one vector for its texts: the vector of one text as the model gives it; of
/// several, their mean, L2-normalized (f32 arithmetic, in order); then `dimensions` long (zeros
/// added, or cut and re-normalized).
fn one_vector(vectors: Vec<Vec<f32>>, dimensions: usize) -> crate::error::Result<Vec<f32>> {
    let count = vectors.len();
    let mut vectors = vectors.into_iter();
    let mut vector = vectors.next().unwrap_or_default();
    if count > 1 {
        for other in vectors {
            vector.iter_mut().zip(other).for_each(|(a, b)| *a += b);
        }
        vector.iter_mut().for_each(|a| *a /= count as f32);
        let norm = vector.iter().map(|a| a * a).sum::<f32>().sqrt();
        if norm > 0.0 {
            vector.iter_mut().for_each(|a| *a /= norm);
        }
    }
    if vector.len() > dimensions {
        crate::engine::embed::truncate(&mut vector, dimensions)?;
    }
    vector.resize(dimensions, 0.0);
    Ok(vector)
}

/// Python's `str.strip()`: Unicode white space and the separators U+001C to U+001F.
fn python_strip(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// What a `generate_iter` generation sends its connection.
enum Token {
    /// The next token (a piece, or with logprobs `{"token", "logprobs"}`).
    Next(Value),
    /// Done.
    End,
    /// Failed, with the reason.
    Failed(String),
}

/// The sink of a `generate_iter` generation: pieces to the connection; a cancelled stream (the
/// client moved on or left) stops it.
struct Tokens {
    events: mpsc::UnboundedSender<Token>,
    cancel: CancellationToken,
    streamed: bool,
}

impl PieceSink for Tokens {
    fn piece(&mut self, text: String) -> SinkFuture<'_> {
        let sent = match self.cancel.is_cancelled() {
            true => Err(std::io::ErrorKind::BrokenPipe.into()),
            false if !self.streamed || text.is_empty() => Ok(()),
            false => {
                self.events.send(Token::Next(Value::String(text))).map_err(|_| std::io::ErrorKind::BrokenPipe.into())
            }
        };
        Box::pin(std::future::ready(sent))
    }

    fn is_broken(&self) -> bool {
        self.cancel.is_cancelled()
    }

    fn peer_gone(&self) -> bool {
        self.cancel.is_cancelled() || self.events.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdk_generate(extra: Value) -> Result<Option<GenerateParams>, String> {
        let mut body = json!({"prompt": "Hi", "return_logprobs": false, "eos_string": "[EOS]", "model": null,
            "model_repo": null, "model_filename": null, "size": null, "seed": 42, "temperature": 0.0,
            "max_new_tokens": null, "response_format": null, "schema": null, "regex": null, "choices": null,
            "unsafe_mode": false, "return_pydantic": false, "options": null});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let settings = SteadytextCompat {
            size_aliases: [("small".to_string(), "SmolLM2".to_string())].into(),
            model_aliases: [("qwen3-4b".to_string(), "Qwen3-4B".to_string())].into(),
            ..Default::default()
        };
        parse::<SdkGenerate>(body)?.params(&settings, 512)
    }

    #[test]
    fn the_sdks_generate_maps_to_the_daemons_params() {
        let params = sdk_generate(json!({})).unwrap().unwrap();
        assert_eq!((params.seed, params.max_new_tokens, params.temperature), (Some(42), Some(512), None));
        assert!(params.stop.is_empty() && params.model.is_none());
        let sampled = sdk_generate(json!({"temperature": 0.7, "eos_string": "END", "size": "small"})).unwrap().unwrap();
        assert_eq!((sampled.temperature, sampled.top_k, sampled.top_p), (Some(0.7), Some(40), Some(0.95)));
        assert_eq!((sampled.stop, sampled.model), (vec!["END".to_string()], Some("SmolLM2".to_string())));
        let aliased = sdk_generate(json!({"model": "qwen3-4b", "response_format": {"type": "json_object"}}));
        let aliased = aliased.unwrap().unwrap();
        assert_eq!((aliased.model.as_deref(), aliased.schema), (Some("Qwen3-4B"), Some(json!({"type": "object"}))));
        assert_eq!(sdk_generate(json!({"prompt": "  "})), Ok(None), "a blank prompt answers null");
        for (extra, needle) in [
            (json!({"unsafe_mode": true}), "unsafe_mode"),
            (json!({"model_repo": "a/b"}), "model_repo"),
            (json!({"size": "large"}), "size_aliases"),
            (json!({"temperature": -1.0}), "temperature"),
            (json!({"options": {"x": 1}}), "options"),
            (json!({"sede": 1}), "sede"),
        ] {
            assert!(sdk_generate(extra.clone()).unwrap_err().contains(needle), "{extra}");
        }
    }

    #[test]
    fn one_vector_is_the_model_s_or_the_normalized_mean_at_the_configured_length() {
        let one = one_vector(vec![vec![0.6, 0.8]], 4).unwrap();
        assert_eq!(one, [0.6, 0.8, 0.0, 0.0], "one text: its vector, zero-padded");
        let mean = one_vector(vec![vec![1.0, 0.0], vec![0.0, 1.0]], 2).unwrap();
        assert!((mean[0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-7 && mean[0] == mean[1]);
        let cut = one_vector(vec![vec![0.6, 0.0, 0.8]], 1).unwrap();
        assert_eq!(cut, [1.0], "cut and re-normalized");
        assert_eq!(python_strip("\u{1f} text \n"), "text");
    }
}
