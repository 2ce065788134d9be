//! The HTTP front (hyper + axum on the daemon's runtime): OpenAI-compatible routes in
//! [`openai`], Anthropic's Messages API in [`anthropic`], rerank and tokenize routes in other
//! servers' shapes, Ollama's API on listeners of its own ([`ollama`]), health, Prometheus metrics, and steadytext's own methods as JSON-RPC over HTTP
//! (`POST /v1/rpc`). Every route calls the same typed core as the JSON-RPC listeners (same
//! validation, cache, log lines and metrics), so the answers are the same bytes. A route is a
//! handler in its own file and one line in [`router`].
//!
//! The front starts before the models load and answers 503 until they are, and again once
//! shutdown begins. Over TCP every route but `/health` needs the API key: `Authorization: Bearer KEY` or
//! `x-api-key: KEY` (Anthropic's clients send the latter).

mod anthropic;
mod body;
mod conn;
mod error;
mod generation;
mod ollama;
mod openai;
mod rerank;
mod run;
mod tokens;

use std::sync::{Arc, OnceLock};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admission::Admission;
use super::methods;
use super::notify::stall_limit;
use super::state::Daemon;
use crate::config::Config;
use crate::error::Error;
use crate::protocol::wire::{self, Reply};
use crate::protocol::{Method, MAX_LINE_BYTES};
pub(crate) use error::ApiError;
pub(crate) use run::Work;
use run::{event_stream, Event, Ready};

/// Largest request head (request line and headers) a client may send.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Largest request body, the same bound as a JSON-RPC line.
const MAX_BODY_BYTES: usize = MAX_LINE_BYTES;

/// The HTTP front's shared state.
pub(crate) struct Front {
    daemon: OnceLock<Arc<Daemon>>,
    config: Arc<Config>,
    admission: Arc<Admission>,
    shutdown: CancellationToken,
    connections: TaskTracker,
}

impl Front {
    /// A front that answers 503 until [`Front::serve`] hands it the loaded daemon.
    pub(crate) fn new(config: Arc<Config>, admission: Arc<Admission>) -> Arc<Self> {
        Arc::new(Front {
            daemon: OnceLock::new(),
            config,
            admission,
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
        })
    }

    /// The models are loaded: requests are served from now on.
    pub(crate) fn serve(&self, daemon: Arc<Daemon>) {
        let _ = self.daemon.set(daemon);
    }

    /// Shutdown began: `/health` says so, idle connections close, new ones are not accepted.
    pub(crate) fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Cancelled when shutdown begins.
    pub(crate) fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Waits until every HTTP connection has closed.
    pub(crate) async fn drained(&self) {
        self.connections.close();
        self.connections.wait().await;
    }

    /// The daemon, when it serves: not while loading or stopping.
    fn ready(&self) -> Result<&Arc<Daemon>, ApiError> {
        if self.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown.into());
        }
        self.daemon.get().ok_or_else(|| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the daemon is loading its models; try again shortly")
                .retry_after(1)
        })
    }
}

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    /// OpenAI's, Anthropic's, the rerank and tokenize routes, `/v1/rpc`, health and metrics.
    Main,
    /// Ollama's `/api/*` ([`ollama`]).
    Ollama,
}

impl Api {
    fn router(self, front: Arc<Front>) -> Router {
        match self {
            Api::Main => router(front),
            Api::Ollama => ollama::router(front),
        }
    }
}

fn router(front: Arc<Front>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/health/ready", get(health))
        .route("/health/live", get(live))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{id}", get(openai::model_by_id))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/responses", post(openai::responses))
        .route("/v1/responses/input_tokens", post(openai::input_tokens))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route("/v1/rerank", post(rerank::v1_rerank))
        .route("/rerank", post(rerank::rerank))
        .route("/tokenize", post(tokens::tokenize))
        .route("/detokenize", post(tokens::detokenize))
        .route("/v1/rpc", post(rpc))
        .route("/v1/cache/stats", get(cache_stats))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such route; see docs/http.md").kind("not_found")
        })
        .with_state(front)
}

/// `GET /health` and `/health/ready`: 200 while serving, 503 while loading or stopping (no key
/// needed).
async fn health(State(front): State<Arc<Front>>) -> Response {
    let (status, state) = if front.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping")
    } else if front.daemon.get().is_none() {
        (StatusCode::SERVICE_UNAVAILABLE, "loading")
    } else {
        (StatusCode::OK, "ok")
    };
    (status, axum::Json(json!({ "status": state }))).into_response()
}

/// `GET /health/live`: 200 while the process answers and no worker is stuck (a model call
/// showing no progress for [`stall_limit`], the rule the systemd watchdog follows); 503 then, so
/// an orchestrator restarts the replica as systemd would. Loading and draining are alive.
async fn live(State(front): State<Arc<Front>>) -> Response {
    liveness(&front, stall_limit())
}

/// `/health/live`'s answer with workers stuck after `limit`.
pub(crate) fn liveness(front: &Front, limit: std::time::Duration) -> Response {
    match front.daemon.get().and_then(|d| d.registry().stalled_worker(limit)) {
        None => (StatusCode::OK, axum::Json(json!({ "status": "alive" }))).into_response(),
        Some(w) => {
            let stalled_ms = w.since_heartbeat().as_millis() as u64;
            let body = json!({ "status": "stalled", "model_kind": w.kind().as_str(), "stalled_ms": stalled_ms });
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
        }
    }
}

/// `GET /metrics`: the `metrics` method's Prometheus text.
async fn metrics(ready: Ready) -> Result<Response, ApiError> {
    let text = ready
        .run(Method::Metrics, |call| Box::pin(async move { Ok(super::metrics::prometheus(&call.daemon.status())) }))
        .await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}

/// `GET /v1/cache/stats`: the `cache.stats` method.
async fn cache_stats(ready: Ready) -> Result<Response, ApiError> {
    let stats = ready.run(Method::CacheStats, |call| Box::pin(async move { call.core().cache_stats() })).await?;
    Ok(axum::Json(stats).into_response())
}

/// `POST /v1/rpc`: one JSON-RPC request in the body; the answer is NDJSON: a streaming
/// method's `generate.piece` notifications, then the response line, as on the socket (the same
/// encoder; the id echoed byte for byte).
async fn rpc(ready: Ready, body: Body) -> Result<Response, ApiError> {
    let bytes = body::read_body(body, &ready.daemon).await?;
    let request = wire::decode_one(&bytes).map_err(|(_, error)| ApiError::from(error))?;
    let id = request.id.unwrap_or(wire::null_id()).to_owned();
    let (name, params) = (request.method, request.params);
    let events = ready.spawn(None, move |call| Box::pin(async move { methods::run(call, &name, params).await }));
    let frames = event_stream(None, events, move |event| {
        let mut line = match event {
            Event::Model(_) => return Vec::new(),
            Event::Piece(text) => wire::piece(&id, &text),
            Event::Done(result) => Reply::new(&id, result).to_vec(),
        };
        line.push(b'\n');
        vec![Bytes::from(line)]
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(frames)).into_response())
}
