//! `generate` and `generate_stream`: validated once here, answered from the cache or by the
//! generation worker; stream pieces are written as `generate.piece` notifications.

use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::{Call, PEER_POLL};
use crate::daemon::scheduler::{Job, Worker};
use crate::engine::generate::GenerateRequest;
use crate::error::{Error, Result};
use crate::model::ModelKind;
use crate::protocol::{GenerateParams, GenerateResult};

pub(crate) async fn call(call: &mut Call<'_>, params: GenerateParams) -> Result<GenerateResult> {
    generate(call, params, false).await
}

pub(crate) async fn call_stream(call: &mut Call<'_>, params: GenerateParams) -> Result<GenerateResult> {
    generate(call, params, true).await
}

async fn generate(call: &mut Call<'_>, params: GenerateParams, stream: bool) -> Result<GenerateResult> {
    let started = Instant::now();
    let daemon = call.daemon;
    let worker = daemon.worker(ModelKind::Generation, params.model.as_deref()).await?;
    let request = params.to_request(&daemon.config())?;
    let info = worker.info();
    let result =
        daemon.cache().generate(&info, &request, || run(call, &worker, request.clone(), stream, started)).await?;
    if result.cached && stream && !result.generation.text.is_empty() {
        daemon.metrics().record_first_piece(started.elapsed());
        let _ = call.out.piece(call.id, result.generation.text.clone()).await;
    }
    call.served.model = result.model.clone();
    call.served.cached = result.cached;
    Ok(GenerateResult { engine_fingerprint: daemon.engine().id.clone(), ..result })
}

/// Runs `request` on the worker, forwarding its pieces; cancels it when the client hangs up,
/// stops reading, or the daemon's shutdown timeout expires.
pub(super) async fn run(
    call: &mut Call<'_>,
    worker: &Worker,
    request: GenerateRequest,
    stream: bool,
    started: Instant,
) -> Result<GenerateResult> {
    let cancel = call.daemon.abort_token();
    let (reply_tx, mut reply) = oneshot::channel();
    let (piece_tx, mut pieces) = mpsc::unbounded_channel();
    let job = Job::Generate {
        request: Box::new(request),
        pieces: stream.then_some(piece_tx),
        cancel: cancel.clone(),
        reply: reply_tx,
    };
    call.daemon.submit(worker, job)?;
    let _cancel_on_drop = cancel.clone().drop_guard();
    let mut poll = tokio::time::interval(PEER_POLL);
    let mut first = true;
    let result = loop {
        tokio::select! {
            biased;
            r = &mut reply => break r,
            Some(text) = pieces.recv(), if stream && !call.out.is_broken() => {
                if std::mem::take(&mut first) {
                    call.daemon.metrics().record_first_piece(started.elapsed());
                }
                if let Err(e) = call.out.piece(call.id, text).await {
                    tracing::warn!(error = %e, "cancelling a generation whose client stopped reading");
                    cancel.cancel();
                }
            }
            _ = poll.tick() => if call.out.peer_gone() { cancel.cancel(); },
        }
    };
    while let Ok(text) = pieces.try_recv() {
        if call.out.piece(call.id, text).await.is_err() {
            break;
        }
    }
    let result = result.map_err(|_| Error::ShuttingDown)??;
    call.daemon.metrics().record_tokens(result.generation.token_ids.len());
    Ok(result)
}
