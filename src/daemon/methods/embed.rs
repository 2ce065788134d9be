//! `embed`: validated here, the mode's prompt put before each text; cached vectors are reused and
//! only the missing texts go to the embedding worker (which merges queued requests into one model
//! run); `dimensions` truncates the vectors last.

use tokio::sync::oneshot;

use super::{Call, PEER_POLL};
use crate::daemon::scheduler::{Job, Worker};
use crate::error::{Error, Result};
use crate::model::ModelKind;
use crate::protocol::{EmbedParams, EmbedResult};

pub(crate) async fn call(call: &mut Call<'_>, params: EmbedParams) -> Result<EmbedResult> {
    let daemon = call.daemon;
    let worker = daemon.worker(ModelKind::Embedding, params.model.as_deref()).await?;
    params.validate(&daemon.config().limits)?;
    let info = worker.info();
    let texts = params.model_texts(&info)?;
    let mut result = daemon.cache().embed(&info, &texts, |missing| run(call, &worker, missing)).await?;
    params.shape(&mut result)?;
    result.engine_fingerprint = daemon.engine().id.clone();
    call.served.model = result.model.clone();
    Ok(result)
}

/// Runs `texts` on the worker (an embedding model, or a cross-encoder's pairs); gives up when the
/// client hangs up.
pub(super) async fn run(call: &mut Call<'_>, worker: &Worker, texts: Vec<String>) -> Result<EmbedResult> {
    let (reply, mut answer) = oneshot::channel();
    call.daemon.submit(worker, Job::Embed { texts, reply })?;
    let mut poll = tokio::time::interval(PEER_POLL);
    loop {
        tokio::select! {
            r = &mut answer => return r.map_err(|_| Error::ShuttingDown)?,
            _ = poll.tick() => if call.out.peer_gone() { return Err(Error::Cancelled) },
        }
    }
}
