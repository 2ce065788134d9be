//! `rerank`: one judgement per document (see [`crate::engine::rerank`]), each an ordinary
//! generation answered from the cache or by the generation worker, so a document's score never
//! depends on the others of the request.

use std::time::Instant;

use super::generate::run;
use super::Call;
use crate::error::Result;
use crate::protocol::{ModelKind, RerankParams, RerankResult};

pub(crate) async fn call(call: &mut Call<'_>, params: RerankParams) -> Result<RerankResult> {
    let started = Instant::now();
    let daemon = call.daemon;
    let worker = daemon.worker(ModelKind::Generation, params.model.as_deref()).await?;
    let requests = params.requests(&daemon.config())?;
    let info = worker.info();
    let mut judgements = Vec::with_capacity(requests.len());
    for request in requests {
        let judged = daemon.cache().generate(&info, &request, || run(call, &worker, request.clone(), false, started));
        judgements.push(judged.await?);
    }
    let result = RerankResult::from_judgements(&judgements)?;
    call.served.model = result.model.clone();
    call.served.cached = result.cached == judgements.len();
    Ok(RerankResult { engine_fingerprint: daemon.engine().id.clone(), ..result })
}
