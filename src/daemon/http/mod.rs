//! The HTTP front (hyper + axum on the daemon's runtime): OpenAI-compatible routes in
//! [`openai`], health, Prometheus metrics, and steadytext's own methods as JSON-RPC over HTTP
//! (`POST /v1/rpc`). Every route runs the same methods as the JSON-RPC listeners (same
//! validation, cache, log lines and metrics), so the answers are the same bytes.
//!
//! The front starts before the models load and answers 503 until they are, and again once
//! shutdown begins. Over TCP every route but `/health` needs `Authorization: Bearer KEY`.

mod openai;

use std::convert::Infallible;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, State};
use axum::http::{header, request::Parts, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admission::{Admission, ListenerBudget, PendingTicket, Received, Slots};
use super::connection::{null_id, Served};
use super::deadline_io::DeadlineIo;
use super::methods::{self, Call, Sink};
use super::peer::Peer;
use super::registry::stall_limit;
use super::state::Daemon;
use crate::config::Config;
use crate::error::Error;
use crate::protocol::{RpcError, MAX_LINE_BYTES};

/// Largest request head (request line and headers) a client may send.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Largest request body, the same bound as a JSON-RPC line.
const MAX_BODY_BYTES: usize = MAX_LINE_BYTES;

/// Stream events buffered per request before the sender waits for the client.
const EVENTS_BUFFERED: usize = 64;

/// The HTTP front's shared state.
pub(crate) struct Front {
    daemon: OnceLock<Arc<Daemon>>,
    config: Arc<Config>,
    admission: Arc<Admission>,
    shutdown: CancellationToken,
    connections: TaskTracker,
}

/// One HTTP connection, as its requests see it.
pub(crate) struct Connection {
    peer: Peer,
    budget: ListenerBudget,
    stage: Mutex<Stage>,
    /// The socket (a duplicate of the connection's descriptor, so that it stays the same socket
    /// for as long as a request asks), to learn that a TCP client hung up.
    socket: Option<OwnedFd>,
    /// Cancelled when the connection must close after its current answer.
    closing: CancellationToken,
}

/// Where an HTTP connection stands with the budgets (see [`super::admission`]).
enum Stage {
    /// A TCP connection whose requests have not presented the key yet.
    Pending(PendingTicket),
    /// Requests may run.
    Admitted {
        /// Held for as long as the connection is open.
        _slots: Slots,
    },
}

impl Connection {
    /// Completes when a connection still waiting for a key must close (never otherwise).
    async fn expired(&self) {
        let pending = match &*self.stage.lock().unwrap_or_else(|p| p.into_inner()) {
            Stage::Pending(ticket) => Some(ticket.expiry()),
            Stage::Admitted { .. } => None,
        };
        match pending {
            Some(expiry) => {
                expiry.await;
            }
            None => std::future::pending().await,
        }
    }

    /// A request presented the right key: the connection takes its slots (once).
    fn authenticate(&self, admission: &Admission, open: usize) -> Result<(), Error> {
        let mut stage = self.stage.lock().unwrap_or_else(|p| p.into_inner());
        if let Stage::Pending(_) = &*stage {
            *stage = Stage::Admitted { _slots: admission.admit(&self.budget, &self.peer, open)? };
        }
        Ok(())
    }

    /// Whether a TCP client hung up (or shut its sending side: see [`super::connection::peer_hung_up`]).
    pub(crate) fn hung_up(&self) -> bool {
        self.socket.as_ref().is_some_and(|fd| super::connection::peer_hung_up(fd.as_raw_fd(), true))
    }
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

    /// Serves one accepted connection of a listener with `budget`: `setup` (a TLS handshake or
    /// nothing), then HTTP/1.1 with bounded heads and a deadline on every write, until the client
    /// leaves or shutdown. A Unix connection takes its slots at once; a TCP one waits among the
    /// unauthenticated until a request presents the key (see [`super::admission`]).
    pub(crate) fn spawn_connection<S, F>(self: &Arc<Self>, setup: F, peer: Peer, budget: ListenerBudget)
    where
        S: AsyncRead + AsyncWrite + AsRawFd + Send + Unpin + 'static,
        F: std::future::Future<Output = std::io::Result<S>> + Send + 'static,
    {
        let front = self.clone();
        self.connections.spawn(async move {
            let daemon = front.daemon.get().cloned();
            let _open = daemon.as_ref().map(|d| d.metrics().connection());
            let open = daemon.as_ref().map_or(0, |d| d.metrics().connections());
            let stage = match peer.is_tcp() {
                true => Ok(Stage::Pending(front.admission.pending())),
                false => front.admission.admit(&budget, &peer, open).map(|_slots| Stage::Admitted { _slots }),
            };
            let timeout = Duration::from_secs(front.config.daemon.line_timeout_secs);
            let setup = async {
                match &stage {
                    Ok(Stage::Pending(ticket)) => tokio::select! {
                        stream = tokio::time::timeout(timeout, setup) => stream.ok()?.ok(),
                        _ = ticket.expiry() => None,
                    },
                    _ => tokio::time::timeout(timeout, setup).await.ok()?.ok(),
                }
            };
            let Some(mut stream) = setup.await else { return };
            let stage = match stage {
                Ok(stage) => stage,
                Err(refusal) => return refuse(&mut stream, ApiError::from(refusal)).await,
            };
            let socket = match peer.is_tcp() {
                true => rustix_dup(stream.as_raw_fd()),
                false => None,
            };
            let connection = Arc::new(Connection {
                peer,
                budget,
                stage: Mutex::new(stage),
                socket,
                closing: CancellationToken::new(),
            });
            if let Some(d) = &daemon {
                d.touch();
            }
            let router = router(front.clone());
            let state = connection.clone();
            let service = hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(state.clone());
                let router = router.clone();
                async move { Ok::<_, Infallible>(tower::ServiceExt::oneshot(router, request).await.into_response()) }
            });
            let send_timeout = Duration::from_secs(front.config.daemon.send_timeout_secs);
            let io = hyper_util::rt::TokioIo::new(DeadlineIo::new(stream, send_timeout));
            let mut builder = hyper::server::conn::http1::Builder::new();
            // The header read timeout also closes a connection idle between requests.
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(timeout)
                .max_header_size(MAX_HEAD_BYTES)
                .max_buf_size(MAX_HEAD_BYTES.max(8192) * 2);
            let served = builder.serve_connection(io, service);
            tokio::pin!(served);
            let mut draining = false;
            loop {
                tokio::select! {
                    _ = served.as_mut() => break,
                    // Not authenticated in time, or another took its place: closed at once.
                    _ = connection.expired() => break,
                    _ = front.shutdown.cancelled(), if !draining => {
                        draining = true;
                        served.as_mut().graceful_shutdown();
                    }
                    _ = connection.closing.cancelled(), if !draining => {
                        draining = true;
                        served.as_mut().graceful_shutdown();
                    }
                }
            }
            if let Some(d) = &daemon {
                d.touch();
            }
        });
    }
}

/// A duplicate of the descriptor `fd` (None if the process has none left).
fn rustix_dup(fd: std::os::fd::RawFd) -> Option<OwnedFd> {
    // SAFETY: `fd` is the live socket of the connection being set up; borrowing it for the call
    // does not outlive it, and `try_clone_to_owned` makes a new descriptor that we own.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }.try_clone_to_owned().ok()
}

/// Answers a connection over the limits with one response, then closes it.
async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, error: ApiError) {
    let body = error.body().to_string();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        error.status.as_u16(),
        error.status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

fn router(front: Arc<Front>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/health/ready", get(health))
        .route("/health/live", get(live))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(openai::models))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
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

/// `GET /metrics`: the Prometheus text of the `metrics` method.
async fn metrics(ready: Ready) -> Result<Response, ApiError> {
    let text: String = ready.call("metrics", Value::Null).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}

/// `GET /v1/cache/stats`: the `cache.stats` method.
async fn cache_stats(ready: Ready) -> Result<Response, ApiError> {
    let stats: Value = ready.call("cache.stats", Value::Null).await?;
    Ok(axum::Json(stats).into_response())
}

/// `POST /v1/rpc`: one JSON-RPC request in the body; the answer is NDJSON: a streaming
/// method's `generate.piece` notifications, then the response line, as on the socket.
async fn rpc(ready: Ready, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(body, &ready.daemon).await?;
    let request = crate::protocol::wire::decode_one(&bytes).map_err(|(_, error)| ApiError::from(error))?;
    // The id is echoed as it was sent, byte for byte (as on the sockets).
    let id = request.id.unwrap_or(null_id()).to_owned();
    let events = ready.start(&request.method, request.params);
    // Lines are put together around the raw id: a Value would rewrite it (1e30 as 1e+30).
    let frames = event_stream(None, events, move |event| {
        let id = id.get();
        let line = match event {
            Event::Piece(text) => format!(
                "{{\"jsonrpc\":\"2.0\",\"method\":\"{}\",\"params\":{{\"id\":{id},\"text\":{}}}}}",
                crate::protocol::PIECE_NOTIFICATION,
                Value::String(text)
            ),
            Event::Done(Ok(result)) => format!("{{\"jsonrpc\":\"2.0\",\"result\":{result},\"id\":{id}}}"),
            Event::Done(Err(error)) => {
                format!("{{\"jsonrpc\":\"2.0\",\"error\":{},\"id\":{id}}}", json!(RpcError::from(&error)))
            }
        };
        vec![Bytes::from(line + "\n")]
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(frames)).into_response())
}

/// What a running method sends to its HTTP response.
pub(crate) enum Event {
    /// A stream piece.
    Piece(String),
    /// The method's result.
    Done(Result<Value, Error>),
}

/// The [`Sink`] of a method run for an HTTP request: pieces go to its response body through a
/// bounded channel; a client that leaves them unread for `send_timeout_secs`, or hangs up,
/// cancels the request.
pub(crate) struct BodySink {
    events: mpsc::Sender<Event>,
    deadline: Duration,
    broken: bool,
    connection: Arc<Connection>,
}

impl BodySink {
    /// Queues a piece for the response body.
    pub(crate) async fn piece(&mut self, text: String) -> std::io::Result<()> {
        if self.broken {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        let sent = tokio::time::timeout(self.deadline, self.events.send(Event::Piece(text))).await;
        self.broken = !matches!(sent, Ok(Ok(())));
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(std::io::ErrorKind::BrokenPipe.into()),
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the HTTP client stopped reading")),
        }
    }

    /// Whether a piece could not be delivered.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken
    }

    /// Whether the response (and so the client) is gone: the response was dropped, or a TCP
    /// client hung up (a request it pipelined is not run for nobody).
    pub(crate) fn is_closed(&self) -> bool {
        self.events.is_closed() || self.connection.hung_up()
    }
}

/// A request that may be served: the daemon is loaded and not stopping, and a TCP client
/// presented the API key.
pub(crate) struct Ready {
    daemon: Arc<Daemon>,
    connection: Arc<Connection>,
}

impl FromRequestParts<Arc<Front>> for Ready {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, front: &Arc<Front>) -> Result<Self, ApiError> {
        let daemon = front.ready()?.clone();
        let connection =
            parts.extensions.get::<Arc<Connection>>().cloned().ok_or_else(|| ApiError::internal("no connection"))?;
        if connection.peer.is_tcp() {
            let given = parts
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            let valid = match (daemon.api_key(), given) {
                (Some(key), Some(given)) => key.verify(given.trim()),
                _ => false,
            };
            if !valid {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong API key: send `Authorization: Bearer KEY` with the daemon's key",
                )
                .kind("invalid_request_error")
                .code("invalid_api_key"));
            }
            if let Err(refused) = connection.authenticate(&front.admission, daemon.metrics().connections()) {
                connection.closing.cancel();
                return Err(refused.into());
            }
        }
        Ok(Ready { daemon, connection })
    }
}

impl Ready {
    /// Runs `method` in its own task (tracked for the drain); its pieces and then its result
    /// arrive as events. The method is cancelled when the receiver is dropped.
    fn start(&self, method: &str, params: Value) -> mpsc::Receiver<Event> {
        let (events, receiver) = mpsc::channel(EVENTS_BUFFERED);
        let deadline = Duration::from_secs(self.daemon.config().daemon.send_timeout_secs);
        let (daemon, connection, method) = (self.daemon.clone(), self.connection.clone(), method.to_string());
        self.daemon.track(async move {
            let started = Instant::now();
            let _busy = daemon.metrics().request();
            let peer = connection.peer;
            let mut sink = BodySink { events: events.clone(), deadline, broken: false, connection };
            let mut call =
                Call { daemon: &daemon, id: null_id(), out: Sink::Body(&mut sink), peer, served: Served::default() };
            let result = methods::run(&mut call, &method, params, started).await;
            let done = Event::Done(result);
            let _ = tokio::time::timeout(deadline, events.send(done)).await;
        });
        receiver
    }

    /// Runs a method that does not stream and returns its typed result.
    async fn call<R: DeserializeOwned>(&self, method: &str, params: Value) -> Result<R, ApiError> {
        let mut events = self.start(method, params);
        loop {
            match events.recv().await {
                Some(Event::Piece(_)) => continue,
                Some(Event::Done(result)) => {
                    return serde_json::from_value(result?).map_err(|e| ApiError::internal(&e.to_string()))
                }
                None => return Err(ApiError::internal("the request ended without a result")),
            }
        }
    }
}

/// The response body of a running method: `first` (an event already taken) and then each
/// event mapped to frames by `frame`, ending after its result.
fn event_stream<F>(
    first: Option<Event>,
    events: mpsc::Receiver<Event>,
    frame: F,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send
where
    F: FnMut(Event) -> Vec<Bytes> + Send + 'static,
{
    use futures_util::StreamExt;
    futures_util::stream::unfold((first, events, frame, false), |(first, mut events, mut frame, done)| async move {
        if done {
            return None;
        }
        let event = match first {
            Some(event) => event,
            None => events.recv().await?,
        };
        let last = matches!(event, Event::Done(_));
        let frames = futures_util::stream::iter(frame(event).into_iter().map(Ok));
        Some((frames, (None, events, frame, last)))
    })
    .flatten()
}

/// Reads a JSON body (see [`read_body`]).
async fn read_json<T: DeserializeOwned>(body: Body, daemon: &Daemon) -> Result<T, ApiError> {
    let bytes = read_body(body, daemon).await?;
    serde_json::from_slice(&bytes).map_err(|e| Error::InvalidRequest(format!("invalid JSON body: {e}")).into())
}

/// Reads a body of at most [`MAX_BODY_BYTES`] within the line timeout, its bytes held from the
/// daemon's receive budget while it arrives.
async fn read_body(body: Body, daemon: &Daemon) -> Result<Vec<u8>, ApiError> {
    use futures_util::StreamExt;
    let timeout = Duration::from_secs(daemon.config().daemon.line_timeout_secs);
    let mut held = Received::default();
    let mut bytes = Vec::new();
    let mut stream = body.into_data_stream();
    let received = tokio::time::timeout(timeout, async {
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, &format!("broken request body: {e}")))?;
            if bytes.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("the request body is over {MAX_BODY_BYTES} bytes; split the request"),
                ));
            }
            if !daemon.receive_budget().hold(&mut held, bytes.len() + chunk.len()) {
                let busy =
                    Error::Overloaded { kind: "request", queued: daemon.metrics().in_flight(), retry_after_ms: 1000 };
                return Err(busy.into());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(())
    })
    .await;
    match received {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                &format!("the request body did not arrive within {} s", timeout.as_secs()),
            ))
        }
        Ok(result) => result?,
    }
    Ok(bytes)
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    code: Option<String>,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: &str) -> Self {
        let kind = match status.as_u16() {
            401 => "authentication_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        };
        ApiError { status, message: message.to_string(), kind, code: None, retry_after_secs: None }
    }

    fn internal(message: &str) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    fn kind(mut self, kind: &'static str) -> Self {
        self.kind = kind;
        self
    }

    fn code(mut self, code: &str) -> Self {
        self.code = Some(code.to_string());
        self
    }

    fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": null, "code": self.code}})
    }
}

/// The HTTP status of each of the daemon's errors: the one mapping (JSON-RPC has its own, in
/// [`crate::protocol`]).
fn http_status(e: &Error) -> StatusCode {
    match e {
        Error::InvalidRequest(_)
        | Error::Parse(_)
        | Error::NotJsonRpc(_)
        | Error::CacheDisabled
        | Error::WrongModelKind { .. }
        | Error::LineTimeout { .. } => StatusCode::BAD_REQUEST,
        Error::UnknownMethod { .. } | Error::ModelNotFound { .. } => StatusCode::NOT_FOUND,
        Error::LineTooLong { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::OutputIncomplete(_) => StatusCode::UNPROCESSABLE_ENTITY,
        Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::Overloaded { .. } | Error::TooManyConnections { .. } => StatusCode::TOO_MANY_REQUESTS,
        Error::ModelNotLoaded(_) | Error::ModelUnavailable { .. } | Error::ShuttingDown | Error::Cancelled => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Error::Runtime { .. }
        | Error::Model { .. }
        | Error::Inference { .. }
        | Error::Engine { .. }
        | Error::Config(_)
        | Error::Io { .. }
        | Error::Snapshot(_)
        | Error::Hub { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = http_status(&e);
        let rpc = RpcError::from(&e);
        let code = match e {
            Error::ModelNotFound { .. } => "model_not_found".to_string(),
            Error::OutputIncomplete(_) => "output_incomplete".to_string(),
            _ => rpc.code.to_string(),
        };
        let retry_ms = rpc.data.as_ref().and_then(|d| d["retry_after_ms"].as_u64());
        let mut error = ApiError::new(status, &rpc.message).code(&code);
        error.retry_after_secs = retry_ms.map(|ms| ms.div_ceil(1000).max(1));
        error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_errors_map_to_http_statuses_in_openais_shape() {
        let overloaded = Error::Overloaded { kind: "generation", queued: 64, retry_after_ms: 1500 };
        let response = ApiError::from(overloaded).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        let cases = [
            (Error::InvalidRequest("x".into()), StatusCode::BAD_REQUEST, "invalid_request_error"),
            (Error::Unauthorized("x".into()), StatusCode::UNAUTHORIZED, "authentication_error"),
            (Error::LineTooLong { limit: 1 }, StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error"),
            (Error::ShuttingDown, StatusCode::SERVICE_UNAVAILABLE, "server_error"),
            (Error::ModelNotLoaded("m".into()), StatusCode::SERVICE_UNAVAILABLE, "server_error"),
            (
                Error::ModelNotFound { name: "../m".into(), reason: "x".into() },
                StatusCode::NOT_FOUND,
                "invalid_request_error",
            ),
            (
                Error::WrongModelKind { name: "m".into(), is: "an embedding", wanted: "a generation" },
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
            ),
        ];
        for (error, status, kind) in cases {
            let message = error.to_string();
            let api = ApiError::from(error);
            assert_eq!((api.status, api.kind), (status, kind), "{message}");
            assert_eq!(api.body()["error"]["message"], message);
        }
    }
}
