//! Connection handling: reads request lines, enforces limits, dispatches methods to the
//! scheduler's workers and writes responses. The server loop owns shutdown and drains work.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::{Cache, EmbedPlan, SnapshotInfo};
use crate::config::Config;
use crate::daemon::metrics::{prometheus, Metrics};
use crate::daemon::scheduler::{Job, Kind, SubmitError, Worker};
use crate::error::Error;
use crate::protocol::{
    codes, EmbedParams, EmbedResult, GenerateParams, Piece, Request, Response, RpcError, MAX_LINE_BYTES,
    PIECE_NOTIFICATION, PROTOCOL_VERSION,
};
use crate::service::check_model;

/// How often a waiting request checks whether its client hung up.
const PEER_POLL: Duration = Duration::from_millis(50);

/// State shared by every connection.
pub struct Daemon {
    /// The configuration in force (replaced on reload).
    pub config: RwLock<Arc<Config>>,
    /// Generation worker, then embedding worker.
    pub workers: Vec<Worker>,
    /// Counters.
    pub metrics: Metrics,
    /// Cancelled when shutdown begins: stop accepting and reading new requests.
    pub shutdown: CancellationToken,
    /// Cancelled when the shutdown timeout expires: abort in-flight work.
    pub abort: CancellationToken,
    /// Tracks connection tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// The shared result cache (None when disabled).
    pub cache: Option<Mutex<Cache>>,
    connection_slots: Arc<Semaphore>,
    last_activity: Mutex<Instant>,
    next_request: AtomicU64,
}

impl Daemon {
    /// Wraps loaded workers.
    pub fn new(config: Arc<Config>, workers: Vec<Worker>, cache: Option<Cache>) -> Arc<Self> {
        Arc::new(Daemon {
            connection_slots: Arc::new(Semaphore::new(config.daemon.max_connections)),
            config: RwLock::new(config),
            workers,
            metrics: Metrics::default(),
            shutdown: CancellationToken::new(),
            abort: CancellationToken::new(),
            tracker: TaskTracker::new(),
            cache: cache.map(Mutex::new),
            last_activity: Mutex::new(Instant::now()),
            next_request: AtomicU64::new(1),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn worker(&self, kind: Kind) -> &Worker {
        self.workers.iter().find(|w| w.kind() == kind).expect("both workers are always started")
    }

    /// Runs `f` on the cache, if caching is on.
    pub fn with_cache<R>(&self, f: impl FnOnce(&mut Cache) -> R) -> Option<R> {
        self.lock_cache().map(|mut c| f(&mut c))
    }

    fn lock_cache(&self) -> Option<MutexGuard<'_, Cache>> {
        self.cache.as_ref().map(|c| c.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Writes a snapshot of the cache (the file write happens outside the lock).
    pub fn snapshot_cache(&self) -> crate::Result<Option<SnapshotInfo>> {
        let taken = self.with_cache(Cache::begin_snapshot).flatten();
        Cache::write_snapshot(taken, |done| {
            self.with_cache(|c| c.finish_snapshot(done));
        })
    }

    fn touch(&self) {
        *self.last_activity.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Time without any connection open, or zero while one is.
    pub fn idle_for(&self) -> Duration {
        if self.metrics.connections.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        self.last_activity.lock().unwrap_or_else(|p| p.into_inner()).elapsed()
    }

    /// The `status` result.
    pub fn status(&self) -> Value {
        let models: Vec<Value> = self
            .workers
            .iter()
            .map(|w| {
                let info = w.info();
                json!({
                    "kind": w.kind().as_str(),
                    "name": info.name,
                    "digest": info.digest,
                    "dir": info.dir,
                    "queue_depth": w.queued(),
                    "merged_requests": w.merged(),
                })
            })
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "protocol": PROTOCOL_VERSION,
            "pid": std::process::id(),
            "models": models,
            "metrics": self.metrics.snapshot(),
            "cache": self.with_cache(|c| c.stats()),
        })
    }

    /// A one-line summary for systemd's STATUS=.
    pub fn status_line(&self) -> String {
        let m = &self.metrics;
        format!(
            "serving: {} requests, {} in flight, {} connections, queues {}",
            m.snapshot()["requests_total"],
            m.in_flight.load(Ordering::Relaxed),
            m.connections.load(Ordering::Relaxed),
            self.workers.iter().map(|w| format!("{}={}", w.kind().as_str(), w.queued())).collect::<Vec<_>>().join(" ")
        )
    }

    /// Serves one accepted connection until the client leaves or shutdown begins.
    pub fn spawn_connection<S>(self: &Arc<Self>, stream: S)
    where
        S: AsyncRead + AsyncWrite + AsRawFd + Send + Unpin + 'static,
    {
        let daemon = self.clone();
        self.tracker.spawn(async move {
            let permit = daemon.connection_slots.clone().try_acquire_owned();
            daemon.metrics.connections.fetch_add(1, Ordering::Relaxed);
            daemon.touch();
            let mut stream = stream;
            match permit {
                Ok(_permit) => daemon.clone().connection(stream).await,
                Err(_) => {
                    let error = RpcError::new(codes::OVERLOADED, "too many connections; retry in a second");
                    let _ = write_json(&mut stream, &Response::err(Value::Null, error)).await;
                }
            }
            daemon.metrics.connections.fetch_sub(1, Ordering::Relaxed);
            daemon.touch();
        });
    }

    async fn connection<S>(self: Arc<Self>, stream: S)
    where
        S: AsyncRead + AsyncWrite + AsRawFd + Send + Unpin + 'static,
    {
        let fd = stream.as_raw_fd();
        let (read, mut write) = tokio::io::split(stream);
        let mut reader = BufReader::new(read);
        loop {
            let line = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                line = read_line(&mut reader) => line,
            };
            let response = match line {
                Ok(Line::Eof) | Err(_) => break,
                Ok(Line::TooLong) => Some(Response::err(
                    Value::Null,
                    RpcError::new(
                        codes::TOO_LARGE,
                        format!("request line over {MAX_LINE_BYTES} bytes; send less per request"),
                    ),
                )),
                Ok(Line::Text(bytes)) => {
                    self.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
                    let r = self.handle(&bytes, &mut write, fd).await;
                    self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
                    r
                }
            };
            if let Some(response) = response {
                if write_json(&mut write, &response).await.is_err() {
                    break;
                }
            }
        }
    }

    /// Handles one request line; `None` for notifications (no id), which get no response.
    async fn handle<W: AsyncWrite + Unpin>(&self, line: &[u8], write: &mut W, fd: RawFd) -> Option<Response> {
        let started = Instant::now();
        let value: Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => {
                return Some(Response::err(
                    Value::Null,
                    RpcError::new(codes::PARSE_ERROR, format!("not valid JSON: {e}")),
                ))
            }
        };
        let id = value.get("id").cloned().unwrap_or(Value::Null);
        let request = match serde_json::from_value::<Request>(value) {
            Ok(r) if r.jsonrpc == "2.0" => r,
            Ok(_) => return Some(Response::err(id, RpcError::new(codes::INVALID_REQUEST, "jsonrpc must be \"2.0\""))),
            Err(e) => {
                return Some(Response::err(
                    id,
                    RpcError::new(codes::INVALID_REQUEST, format!("not a JSON-RPC 2.0 request: {e}")),
                ))
            }
        };
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let result = match request.method.as_str() {
            "ping" => Ok(json!({ "version": env!("CARGO_PKG_VERSION"), "protocol": PROTOCOL_VERSION, "pid": std::process::id() })),
            "status" => Ok(self.status()),
            "metrics" => Ok(Value::String(prometheus(&self.status()))),
            "generate" => self.generate(request.params, None::<&mut W>, &id, fd).await,
            "generate_stream" => self.generate(request.params, Some(write), &id, fd).await,
            "embed" => self.embed(request.params, fd).await,
            "cache.stats" => self.with_cache(|c| c.stats()).ok_or_else(cache_off),
            "cache.clear" => self.cache_clear(request.params),
            "cache.snapshot" => match self.snapshot_cache() {
                Ok(Some(info)) => Ok(json!(info)),
                Ok(None) => Err(cache_off()),
                Err(e) => Err(RpcError::new(codes::INTERNAL_ERROR, format!("cannot write the snapshot: {e}"))),
            },
            other => Err(RpcError::new(
                codes::METHOD_NOT_FOUND,
                format!("unknown method {other:?}; methods: ping, status, metrics, generate, generate_stream, embed, cache.stats, cache.clear, cache.snapshot"),
            )),
        };
        let elapsed = started.elapsed();
        let model = result.as_ref().ok().and_then(|v| v.get("model")).and_then(Value::as_str).unwrap_or("");
        let cached = result.as_ref().ok().and_then(|v| v.get("cached")).and_then(Value::as_bool).unwrap_or(false);
        match &result {
            Ok(_) => {
                tracing::info!(request_id, method = %request.method, duration_ms = elapsed.as_secs_f64() * 1e3, cached, model, "request served")
            }
            Err(e) => {
                tracing::warn!(request_id, method = %request.method, duration_ms = elapsed.as_secs_f64() * 1e3, code = e.code, error = %e.message, "request failed")
            }
        }
        self.metrics.record(&request.method, elapsed, result.is_ok());
        request.id.as_ref()?;
        Some(match result {
            Ok(v) => Response::ok(id, v),
            Err(e) => Response::err(id, e),
        })
    }

    fn submit(&self, kind: Kind, job: Job) -> Result<(), RpcError> {
        match self.worker(kind).submit(job) {
            Ok(()) => Ok(()),
            Err(SubmitError::Overloaded { queued }) => {
                self.metrics.record_overload();
                let retry =
                    (self.metrics.mean_latency_ms() * (queued as f64 + 1.0)).clamp(50.0, 60_000.0).round() as u64;
                Err(RpcError {
                    code: codes::OVERLOADED,
                    message: format!(
                        "daemon overloaded: {queued} {} requests already queued; retry in {retry} ms",
                        kind.as_str()
                    ),
                    data: Some(json!({ "retry_after_ms": retry })),
                })
            }
            Err(SubmitError::Stopped) => {
                Err(RpcError::new(codes::SHUTTING_DOWN, "the worker has stopped; the daemon is shutting down"))
            }
        }
    }

    fn cache_clear(&self, params: Value) -> Result<Value, RpcError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Clear {
            #[serde(default)]
            cache: Option<String>,
        }
        let p: Clear = parse_params(if params.is_null() { json!({}) } else { params })?;
        match self.with_cache(|c| c.clear(p.cache.as_deref())) {
            None => Err(cache_off()),
            Some(Err(e)) => Err(RpcError::new(codes::INVALID_PARAMS, e)),
            Some(Ok(())) => Ok(json!({ "cleared": p.cache.unwrap_or_else(|| "all".into()) })),
        }
    }

    async fn generate<W: AsyncWrite + Unpin>(
        &self,
        params: Value,
        mut stream_to: Option<&mut W>,
        id: &Value,
        fd: RawFd,
    ) -> Result<Value, RpcError> {
        let params: GenerateParams = parse_params(params)?;
        let info = self.worker(Kind::Generation).info();
        check_model(params.model.as_deref(), &info).map_err(|e| RpcError::from(&e))?;
        let request = params.to_request(&self.config()).map_err(|e| RpcError::from(&e))?;
        if let Some(hit) = self.with_cache(|c| c.lookup_generation(&info, &request)).flatten() {
            if let Some(w) = stream_to.as_deref_mut() {
                if !hit.text.is_empty() {
                    let _ = write_piece(w, id, hit.text.clone()).await;
                }
            }
            return serde_json::to_value(hit).map_err(|e| RpcError::new(codes::INTERNAL_ERROR, e.to_string()));
        }
        let cancel = self.abort.child_token();
        let (reply_tx, mut reply) = oneshot::channel();
        let (piece_tx, mut pieces) = mpsc::channel(self.config().daemon.stream_buffer);
        let streaming = stream_to.is_some();
        let job =
            Job::Generate { params, pieces: streaming.then_some(piece_tx), cancel: cancel.clone(), reply: reply_tx };
        self.submit(Kind::Generation, job)?;
        let _cancel_on_drop = cancel.clone().drop_guard();
        let mut out = stream_to;
        let mut poll = tokio::time::interval(PEER_POLL);
        let result = loop {
            tokio::select! {
                biased;
                r = &mut reply => break r,
                Some(text) = pieces.recv(), if streaming => {
                    if let Some(w) = out.as_deref_mut() {
                        if write_piece(w, id, text).await.is_err() {
                            cancel.cancel();
                        }
                    }
                }
                _ = poll.tick() => if peer_gone(fd) { cancel.cancel(); },
            }
        };
        if let Some(w) = out {
            while let Ok(text) = pieces.try_recv() {
                let _ = write_piece(w, id, text).await;
            }
        }
        if let Ok(Ok(fresh)) = &result {
            self.with_cache(|c| c.store_generation(&request, fresh));
        }
        finish(result)
    }

    async fn embed(&self, params: Value, fd: RawFd) -> Result<Value, RpcError> {
        let params: EmbedParams = parse_params(params)?;
        let info = self.worker(Kind::Embedding).info();
        check_model(params.model.as_deref(), &info).map_err(|e| RpcError::from(&e))?;
        params.validate(&self.config().limits).map_err(|e| RpcError::from(&e))?;
        let plan = EmbedPlan::new(self.lock_cache().as_deref_mut(), &info.digest, &params.texts);
        if plan.is_complete() {
            let embeddings = plan.complete(Vec::new(), None, &info.digest, &params.texts);
            return Ok(json!(EmbedResult { embeddings, model: info.name, model_digest: info.digest }));
        }
        let job_params = EmbedParams { texts: plan.missing.clone(), model: params.model.clone() };
        let (reply_tx, mut reply) = oneshot::channel();
        self.submit(Kind::Embedding, Job::Embed { params: job_params, reply: reply_tx })?;
        let mut poll = tokio::time::interval(PEER_POLL);
        let result = loop {
            tokio::select! {
                r = &mut reply => break r,
                _ = poll.tick() => if peer_gone(fd) { return Err(RpcError::new(codes::INTERNAL_ERROR, "client went away")); },
            }
        };
        let result = result.map(|r| {
            r.map(|fresh| {
                let embeddings = plan.complete(
                    fresh.embeddings,
                    self.lock_cache().as_deref_mut(),
                    &fresh.model_digest,
                    &params.texts,
                );
                EmbedResult { embeddings, ..fresh }
            })
        });
        finish(result)
    }
}

fn cache_off() -> RpcError {
    RpcError::new(
        codes::INVALID_PARAMS,
        "the cache is disabled in this daemon's configuration ([cache] enabled = false)",
    )
}

fn parse_params<T: DeserializeOwned>(params: Value) -> Result<T, RpcError> {
    serde_json::from_value(params).map_err(|e| RpcError::new(codes::INVALID_PARAMS, format!("invalid params: {e}")))
}

fn finish<T: serde::Serialize>(result: Result<crate::Result<T>, oneshot::error::RecvError>) -> Result<Value, RpcError> {
    match result {
        Ok(Ok(v)) => serde_json::to_value(v).map_err(|e| RpcError::new(codes::INTERNAL_ERROR, e.to_string())),
        Ok(Err(Error::Cancelled)) => {
            Err(RpcError::new(codes::SHUTTING_DOWN, "request cancelled (client gone or daemon stopping)"))
        }
        Ok(Err(e)) => Err(RpcError::from(&e)),
        Err(_) => Err(RpcError::new(
            codes::INTERNAL_ERROR,
            "the worker stopped before answering; see `journalctl -u steadytext`",
        )),
    }
}

/// Whether the peer has fully closed the connection (POLLHUP), without reading from it.
fn peer_gone(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd { fd, events: 0, revents: 0 };
    // SAFETY: one valid pollfd, zero timeout; fd belongs to a live connection.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

/// One line read from a connection.
enum Line {
    Text(Vec<u8>),
    TooLong,
    Eof,
}

/// Reads one `\n`-terminated line of at most [`MAX_LINE_BYTES`]; a longer one is skipped whole.
async fn read_line<R: AsyncBufReadExt + Unpin>(reader: &mut R) -> std::io::Result<Line> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(if line.is_empty() && !too_long {
                Line::Eof
            } else if too_long {
                Line::TooLong
            } else {
                Line::Text(line)
            });
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], i + 1),
            None => (buf, buf.len()),
        };
        let found = done > chunk.len();
        if !too_long {
            if line.len() + chunk.len() > MAX_LINE_BYTES {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        reader.consume(done);
        if found {
            if too_long {
                return Ok(Line::TooLong);
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                line.clear();
                continue;
            }
            return Ok(Line::Text(line));
        }
    }
}

async fn write_json<W: AsyncWrite + Unpin, T: serde::Serialize>(w: &mut W, value: &T) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    w.write_all(&bytes).await?;
    w.flush().await
}

async fn write_piece<W: AsyncWrite + Unpin>(w: &mut W, id: &Value, text: String) -> std::io::Result<()> {
    let note = json!({ "jsonrpc": "2.0", "method": PIECE_NOTIFICATION, "params": Piece { id: id.clone(), text } });
    write_json(w, &note).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_split_and_limited() {
        let big = vec![b'x'; MAX_LINE_BYTES + 10];
        let mut input = b"{\"a\":1}\n\n  \n".to_vec();
        input.extend_from_slice(&big);
        input.extend_from_slice(b"\nlast");
        let mut reader = BufReader::new(&input[..]);
        assert!(matches!(read_line(&mut reader).await.unwrap(), Line::Text(t) if t == b"{\"a\":1}"));
        assert!(matches!(read_line(&mut reader).await.unwrap(), Line::TooLong));
        assert!(matches!(read_line(&mut reader).await.unwrap(), Line::Text(t) if t == b"last"));
        assert!(matches!(read_line(&mut reader).await.unwrap(), Line::Eof));
    }
}
