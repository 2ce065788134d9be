//! `/tokenize` and `/detokenize` in llama-server's shapes, over the `tokenize` and `detokenize`
//! methods (the generation model's tokenizer; `model` picks another generation model).

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::read_json;
use super::run::Ready;
use super::ApiError;
use crate::daemon::methods::generate as methods;
use crate::error::Error;
use crate::protocol::{DetokenizeParams, Method, TokenizeParams};

/// llama-server's `/tokenize` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenizeRequest {
    content: String,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    add_special: bool,
    #[serde(default)]
    parse_special: Option<bool>,
    #[serde(default)]
    with_pieces: bool,
}

/// llama-server's `/detokenize` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetokenizeRequest {
    tokens: Vec<u32>,
    #[serde(default)]
    model: Option<String>,
}

/// `POST /tokenize`: `{"tokens": [ids]}`, or with `with_pieces` `[{"id", "piece"}]`.
pub(super) async fn tokenize(ready: Ready, body: Body) -> Result<Response, ApiError> {
    let request: TokenizeRequest = read_json(body, &ready.daemon).await?;
    if request.parse_special == Some(false) {
        return Err(Error::InvalidRequest(
            "parse_special: false is not served: special tokens written in the text are read as special tokens, as \
             the model's tokenizer does; leave parse_special out"
                .into(),
        )
        .into());
    }
    let params = TokenizeParams {
        text: request.content,
        model: request.model,
        add_special: request.add_special,
        with_pieces: request.with_pieces,
    };
    let result = ready.run(Method::Tokenize, |call| Box::pin(methods::tokenize(call, params))).await?;
    let tokens: Vec<Value> = match result.pieces {
        Some(pieces) => result.tokens.iter().zip(pieces).map(|(id, piece)| json!({"id": id, "piece": piece})).collect(),
        None => result.tokens.iter().map(|id| json!(id)).collect(),
    };
    Ok(axum::Json(json!({"tokens": tokens})).into_response())
}

/// `POST /detokenize`: `{"content": text}`.
pub(super) async fn detokenize(ready: Ready, body: Body) -> Result<Response, ApiError> {
    let request: DetokenizeRequest = read_json(body, &ready.daemon).await?;
    let params = DetokenizeParams { tokens: request.tokens, model: request.model };
    let result = ready.run(Method::Detokenize, |call| Box::pin(methods::detokenize(call, params))).await?;
    Ok(axum::Json(json!({"content": result.text})).into_response())
}
