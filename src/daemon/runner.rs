//! The daemon's [`Runner`]: validated work queued on the model workers ([`super::scheduler`]),
//! answers awaited while watching the client (a hang-up, a stalled stream or the shutdown
//! timeout cancels the work).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::core::{PieceSink, Runner};
use crate::engine::generate::GenerateRequest;
use crate::error::{Error, Result};
use crate::model::{ModelInfo, ModelKind};
use crate::protocol::{EmbedResult, GenerateResult};

use super::scheduler::{Job, Worker};
use super::state::Daemon;

/// The model workers of `daemon`.
pub(crate) struct WorkerRunner<'a> {
    /// Shared state.
    pub(crate) daemon: &'a Daemon,
}

impl Runner for WorkerRunner<'_> {
    type Model = Arc<Worker>;

    async fn model(&self, kind: ModelKind, name: Option<&str>) -> Result<Arc<Worker>> {
        self.daemon.worker(kind, name).await
    }

    fn info(&self, worker: &Arc<Worker>) -> ModelInfo {
        worker.info()
    }

    async fn generate(
        &self,
        worker: &Arc<Worker>,
        request: GenerateRequest,
        sink: &mut dyn PieceSink,
        stream: bool,
    ) -> Result<GenerateResult> {
        let cancel = self.daemon.abort_token();
        let (reply_tx, mut reply) = oneshot::channel();
        let (piece_tx, mut pieces) = mpsc::unbounded_channel();
        let job = Job::Generate {
            request: Box::new(request),
            pieces: stream.then_some(piece_tx),
            cancel: cancel.clone(),
            reply: reply_tx,
        };
        self.daemon.submit(worker, job)?;
        let _cancel_on_drop = cancel.clone().drop_guard();
        let poll = self.daemon.peer_poll().watch();
        let result = loop {
            tokio::select! {
                biased;
                r = &mut reply => break r,
                Some(text) = pieces.recv(), if stream && !sink.is_broken() => {
                    if let Err(e) = sink.piece(text).await {
                        tracing::warn!(error = %e, "cancelling a generation whose client stopped reading");
                        cancel.cancel();
                    }
                }
                _ = poll.tick() => if sink.peer_gone() { cancel.cancel(); },
            }
        };
        while let Ok(text) = pieces.try_recv() {
            if sink.piece(text).await.is_err() {
                break;
            }
        }
        let result = result.map_err(|_| Error::ShuttingDown)??;
        self.daemon.metrics().record_tokens(result.generation.token_ids.len());
        Ok(result)
    }

    async fn embed(&self, worker: &Arc<Worker>, texts: Vec<String>, sink: &mut dyn PieceSink) -> Result<EmbedResult> {
        let (reply, mut answer) = oneshot::channel();
        self.daemon.submit(worker, Job::Embed { texts, reply })?;
        let poll = self.daemon.peer_poll().watch();
        loop {
            tokio::select! {
                r = &mut answer => return r.map_err(|_| Error::ShuttingDown)?,
                _ = poll.tick() => if sink.peer_gone() { return Err(Error::Cancelled) },
            }
        }
    }
}
