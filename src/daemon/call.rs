//! One request as the daemon serves it, whatever its transport: who sent it, where its stream
//! pieces go, what it served (for its log line), and the one place that logs it and counts it.

use std::time::Instant;

use crate::core::{Core, PieceSink, SinkFuture};
use crate::error::Result;
use crate::model::ModelInfo;
use crate::protocol::Method;

use super::peer::Peer;
use super::runner::WorkerRunner;
use super::state::Daemon;

/// What a request served, for its log line.
#[derive(Default)]
pub(crate) struct Served {
    /// The model that answered.
    pub(crate) model: String,
    /// Whether the answer came from the cache.
    pub(crate) cached: bool,
    /// Prompt tokens whose KV came from the prefix cache (the journal's `PREFIX_TOKENS`).
    pub(crate) prefix_tokens: usize,
}

/// One request in progress.
pub(crate) struct Call<'a> {
    /// Shared state.
    pub(crate) daemon: &'a Daemon,
    /// Where stream pieces go (the first one's latency is recorded).
    pub(crate) sink: FirstPiece<'a>,
    /// Who sent the request.
    pub(crate) peer: Peer,
    /// Filled in by the method.
    pub(crate) served: Served,
    request_id: u64,
}

impl<'a> Call<'a> {
    /// A request of `peer` that arrived now, its pieces going to `out`.
    pub(crate) fn new(daemon: &'a Daemon, out: &'a mut dyn PieceSink, peer: Peer) -> Self {
        let sink = FirstPiece { inner: out, daemon, started: Instant::now(), sent: false };
        Call { daemon, sink, peer, served: Served::default(), request_id: daemon.next_request_id() }
    }

    /// The use cases, over the daemon's workers and cache.
    pub(crate) fn core(&self) -> Core<'a, WorkerRunner<'a>> {
        let daemon = self.daemon;
        Core::new(WorkerRunner { daemon }, daemon.cache(), (&*daemon.config()).into(), &daemon.engine().id)
    }

    /// Logs the request (at info, or debug for cache hits and quiet methods) and counts it.
    pub(crate) fn finish<T>(&self, method: Option<Method>, result: &Result<T>) {
        let Served { model, cached, prefix_tokens } = &self.served;
        let (request_id, elapsed) = (self.request_id, self.sink.started.elapsed());
        let duration_ms = elapsed.as_secs_f64() * 1e3;
        let name = method.map_or("(unknown)", Method::name);
        match result {
            Ok(_) if *cached || method.is_some_and(Method::is_quiet) => {
                tracing::debug!(request_id, method = name, duration_ms, cached, model, prefix_tokens, "request served")
            }
            Ok(_) => {
                tracing::info!(request_id, method = name, duration_ms, cached, model, prefix_tokens, "request served")
            }
            Err(e) => tracing::warn!(request_id, method = name, duration_ms, error = %e, "request failed"),
        }
        self.daemon.metrics().record(method, elapsed, result.is_ok());
    }
}

/// A sink that records when its request's first piece left.
pub(crate) struct FirstPiece<'a> {
    inner: &'a mut dyn PieceSink,
    daemon: &'a Daemon,
    started: Instant,
    sent: bool,
}

impl PieceSink for FirstPiece<'_> {
    fn piece(&mut self, text: String) -> SinkFuture<'_> {
        if !std::mem::replace(&mut self.sent, true) {
            self.daemon.metrics().record_first_piece(self.started.elapsed());
        }
        self.inner.piece(text)
    }

    fn is_broken(&self) -> bool {
        self.inner.is_broken()
    }

    fn peer_gone(&self) -> bool {
        self.inner.peer_gone()
    }

    fn model(&mut self, info: &ModelInfo) {
        self.inner.model(info);
    }
}

/// The sink of a request answered whole (no pieces); `gone` says whether its client hung up,
/// which cancels the request.
pub(crate) struct Whole<F>(pub(crate) F);

impl<F: Fn() -> bool + Send> PieceSink for Whole<F> {
    fn piece(&mut self, _: String) -> SinkFuture<'_> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn is_broken(&self) -> bool {
        false
    }

    fn peer_gone(&self) -> bool {
        (self.0)()
    }
}
