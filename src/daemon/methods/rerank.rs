//! `rerank`: by the configured cross-encoder (pairs through the embedding path: cache, merged
//! worker runs), or by the generation model's judgement of each document (see
//! [`crate::engine::rerank`]), each an ordinary generation answered from the cache or by the
//! generation worker. Either way a document's score never depends on the others of the request.

use std::time::Instant;

use super::generate::run;
use super::Call;
use crate::error::Result;
use crate::model::ModelKind;
use crate::protocol::{RerankParams, RerankResult};

pub(crate) async fn call(call: &mut Call<'_>, params: RerankParams) -> Result<RerankResult> {
    let daemon = call.daemon;
    params.validate(&daemon.config().limits)?;
    let result = match params.cross_encoder(&daemon.config()) {
        Some(name) => {
            let worker = daemon.worker(ModelKind::Rerank, Some(name)).await?;
            let info = worker.info();
            let pairs = params.pairs();
            let scored =
                daemon.cache().embed(&info, &pairs, |missing| super::embed::run(call, &worker, missing)).await?;
            RerankResult::from_cross_encoder(scored)?
        }
        None => judged(call, &params).await?,
    };
    call.served.model = result.model.clone();
    call.served.cached = result.cached == params.documents.len();
    Ok(RerankResult { engine_fingerprint: daemon.engine().id.clone(), ..result })
}

/// Each document judged by the generation model.
async fn judged(call: &mut Call<'_>, params: &RerankParams) -> Result<RerankResult> {
    let started = Instant::now();
    let daemon = call.daemon;
    let worker = daemon.worker(ModelKind::Generation, params.model.as_deref()).await?;
    let info = worker.info();
    let mut judgements = Vec::with_capacity(params.documents.len());
    for request in params.judgements() {
        let judged = daemon.cache().generate(&info, &request, || run(call, &worker, request.clone(), false, started));
        judgements.push(judged.await?);
    }
    RerankResult::from_judgements(&judgements)
}
