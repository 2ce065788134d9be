//! `generate`, `generate_stream`, `embed`, `rerank`, `count_tokens`, `tokenize` and `detokenize`: the [`crate::core`] use cases over the
//! daemon's workers; a stream's pieces go out as `generate.piece` notifications.

use crate::error::Result;
use crate::protocol::{
    CountResult, DetokenizeParams, DetokenizeResult, EmbedParams, EmbedResult, GenerateParams, GenerateResult,
    RerankParams, RerankResult, TokenizeParams, TokenizeResult,
};

use super::Call;

pub(crate) async fn generate(call: &mut Call<'_>, params: GenerateParams, stream: bool) -> Result<GenerateResult> {
    let result = call.core().generate(&params, &mut call.sink, stream).await?;
    call.served.model.clone_from(&result.model);
    call.served.cached = result.cached;
    call.served.prefix_tokens = result.prefix_tokens;
    Ok(result)
}

pub(crate) async fn embed(call: &mut Call<'_>, params: EmbedParams) -> Result<EmbedResult> {
    Ok(embed_counting(call, params, false).await?.0)
}

/// `embed`, and with `count` the texts' tokens (for OpenAI's usage figures).
pub(crate) async fn embed_counting(
    call: &mut Call<'_>,
    params: EmbedParams,
    count: bool,
) -> Result<(EmbedResult, usize)> {
    let (result, tokens) = call.core().embed_counting(&params, &mut call.sink, count).await?;
    call.served.model.clone_from(&result.model);
    Ok((result, tokens))
}

pub(crate) async fn rerank(call: &mut Call<'_>, params: RerankParams) -> Result<RerankResult> {
    let result = call.core().rerank(&params, &mut call.sink).await?;
    call.served.model.clone_from(&result.model);
    call.served.cached = result.cached == params.documents.len();
    Ok(result)
}

pub(crate) async fn count_tokens(call: &mut Call<'_>, params: GenerateParams) -> Result<CountResult> {
    let result = call.core().count_tokens(&params).await?;
    call.served.model.clone_from(&result.model);
    Ok(result)
}

pub(crate) async fn tokenize(call: &mut Call<'_>, params: TokenizeParams) -> Result<TokenizeResult> {
    let result = call.core().tokenize(&params).await?;
    call.served.model.clone_from(&result.model);
    Ok(result)
}

pub(crate) async fn detokenize(call: &mut Call<'_>, params: DetokenizeParams) -> Result<DetokenizeResult> {
    let result = call.core().detokenize(&params).await?;
    call.served.model.clone_from(&result.model);
    Ok(result)
}
