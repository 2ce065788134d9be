//! Rerank in other servers' shapes: `/v1/rerank` (Jina's and Cohere's, which llama-server and
//! vLLM serve too) and `/rerank` (the same, or text-embeddings-inference's when the body says
//! `texts`). Both run the `rerank` method, so scores and order are its bits.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::read_json;
use super::run::Ready;
use super::ApiError;
use crate::daemon::methods::generate as methods;
use crate::error::Error;
use crate::protocol::{Method, RerankParams, RerankResult};

/// A document: its text, or Cohere's and Jina's `{"text": ...}` object.
#[derive(Deserialize)]
#[serde(untagged)]
enum Document {
    Text(String),
    Object { text: String },
}

/// Jina's and Cohere's request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JinaRequest {
    #[serde(default)]
    model: Option<String>,
    query: String,
    documents: Vec<Document>,
    #[serde(default)]
    top_n: Option<usize>,
    #[serde(default)]
    return_documents: bool,
}

/// text-embeddings-inference's request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TeiRequest {
    #[serde(default)]
    model: Option<String>,
    query: String,
    texts: Vec<String>,
    #[serde(default)]
    raw_scores: bool,
    #[serde(default)]
    return_text: bool,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Option<String>,
}

/// `POST /v1/rerank`: Jina's and Cohere's shape.
pub(super) async fn v1_rerank(ready: Ready, body: Body) -> Result<Response, ApiError> {
    let request: JinaRequest = read_json(body, &ready.daemon).await?;
    jina(ready, request).await
}

/// `POST /rerank`: text-embeddings-inference's shape when the body has `texts`, else Jina's.
pub(super) async fn rerank(ready: Ready, body: Body) -> Result<Response, ApiError> {
    let value: Value = read_json(body, &ready.daemon).await?;
    let invalid = |e: serde_json::Error| ApiError::from(Error::InvalidRequest(format!("invalid rerank request: {e}")));
    if value.get("texts").is_some() {
        tei(ready, serde_json::from_value(value).map_err(invalid)?).await
    } else {
        jina(ready, serde_json::from_value(value).map_err(invalid)?).await
    }
}

async fn run(ready: &Ready, params: RerankParams) -> Result<RerankResult, ApiError> {
    ready.run(Method::Rerank, |call| Box::pin(methods::rerank(call, params))).await
}

/// The first `top_n` of the method's order (all when absent).
fn ranked(result: &RerankResult, top_n: Option<usize>) -> Result<&[usize], ApiError> {
    match top_n {
        Some(0) => {
            Err(Error::InvalidRequest("top_n must be at least 1 (or left out for every document)".into()).into())
        }
        Some(n) => Ok(&result.order[..n.min(result.order.len())]),
        None => Ok(&result.order),
    }
}

async fn jina(ready: Ready, request: JinaRequest) -> Result<Response, ApiError> {
    let documents: Vec<String> = request
        .documents
        .into_iter()
        .map(|d| match d {
            Document::Text(text) | Document::Object { text } => text,
        })
        .collect();
    let params = RerankParams { query: request.query, documents, model: request.model };
    let result = run(&ready, params.clone()).await?;
    let results: Vec<Value> = ranked(&result, request.top_n)?
        .iter()
        .map(|&i| {
            let mut entry = json!({"index": i, "relevance_score": result.scores[i]});
            if request.return_documents {
                entry["document"] = json!({"text": params.documents[i]});
            }
            entry
        })
        .collect();
    Ok(axum::Json(json!({"object": "list", "model": result.model, "results": results})).into_response())
}

async fn tei(ready: Ready, request: TeiRequest) -> Result<Response, ApiError> {
    if request.raw_scores {
        return Err(Error::InvalidRequest(
            "raw_scores: true is not served: steadytext's scores are the sigmoid of the model's logit \
             (text-embeddings-inference's default); leave raw_scores out"
                .into(),
        )
        .into());
    }
    if request.truncate == Some(true) || request.truncation_direction.is_some() {
        return Err(Error::InvalidRequest(
            "truncate and truncation_direction are not served: a text is read as the model's tokenizer configuration \
             says; leave them out"
                .into(),
        )
        .into());
    }
    let params = RerankParams { query: request.query, documents: request.texts, model: request.model };
    let result = run(&ready, params.clone()).await?;
    let ranks: Vec<Value> = result
        .order
        .iter()
        .map(|&i| {
            let mut entry = json!({"index": i, "score": result.scores[i]});
            if request.return_text {
                entry["text"] = json!(params.documents[i]);
            }
            entry
        })
        .collect();
    Ok(axum::Json(ranks).into_response())
}
