//! `/v1/embeddings`, `/v1/models` and `/v1/models/{id}`.

use axum::body::Body;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::super::body::read_json;
use super::super::run::Ready;
use super::super::ApiError;
use super::types::EmbeddingsRequest;
use super::{CACHE_HEADER, ENGINE_HEADER};
use crate::cache::embedding_route_key;
use crate::daemon::methods::generate as methods;
use crate::error::Error;
use crate::model::{ModelFiles, ModelKind};
use crate::protocol::{base64_vector, EmbedParams, Method, ROUTE_KEY_HEADER};

/// `POST /v1/embeddings`: float or base64 (little-endian f32) vectors; `dimensions` keeps the
/// first N components and re-normalizes them (Matryoshka truncation).
pub(in super::super) async fn embeddings(ready: Ready, body: Body) -> Result<Response, ApiError> {
    let request: EmbeddingsRequest = read_json(body, &ready.daemon).await?;
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(Error::InvalidRequest(format!("encoding_format {other:?} is not float or base64")).into())
        }
    };
    let texts = request.input.into_vec();
    let route = embedding_route_key(Some(&request.model), None, &texts);
    let params = EmbedParams {
        texts,
        model: Some(request.model),
        mode: None,
        dimensions: request.dimensions,
        ..Default::default()
    };
    let count = params.texts.len();
    let (result, tokens) =
        ready.run(Method::Embed, |call| Box::pin(methods::embed_counting(call, params, true))).await?;
    let mut data = Vec::with_capacity(result.embeddings.len());
    for (index, vector) in result.embeddings.into_iter().enumerate() {
        let embedding = if base64 { Value::String(base64_vector(&vector)) } else { json!(vector) };
        data.push(json!({"object": "embedding", "index": index, "embedding": embedding}));
    }
    let body = axum::Json(json!({
        "object": "list", "data": data, "model": result.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }));
    let cached = match result.cached {
        0 => "miss",
        n if n == count => "hit",
        _ => "partial",
    };
    let headers = [
        (ENGINE_HEADER, ready.daemon.engine().id.clone()),
        (CACHE_HEADER, cached.to_string()),
        (ROUTE_KEY_HEADER, route),
    ];
    Ok((headers, body).into_response())
}

/// A model in OpenAI's shape (`digest` absent for a folder not loaded: it is not hashed here).
fn model(name: &str, kind: ModelKind, digest: Option<&str>) -> Value {
    json!({"id": name, "object": "model", "created": 0, "owned_by": "steadytext", "kind": kind.as_str(),
           "digest": digest})
}

/// `GET /v1/models`: the loaded models.
pub(in super::super) async fn models(ready: Ready) -> Response {
    let workers = ready.daemon.registry().workers();
    let data: Vec<Value> = workers.iter().map(|w| model(&w.info().name, w.kind(), Some(&w.info().digest))).collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// `GET /v1/models/{id}`: a loaded model, or a model folder the daemon would load for it; 404
/// otherwise.
pub(in super::super) async fn model_by_id(ready: Ready, Path(id): Path<String>) -> Result<Response, ApiError> {
    let workers = ready.daemon.registry().workers();
    if let Some(w) = workers.iter().find(|w| w.info().answers_to(&id)) {
        return Ok(axum::Json(model(&w.info().name, w.kind(), Some(&w.info().digest))).into_response());
    }
    let config = ready.daemon.config();
    let dir = crate::daemon::registry::requested_dir(&config, &id)?;
    let kind = ModelFiles::discover(&dir).and_then(|files| files.kind())?;
    let kind = kind.ok_or_else(|| Error::ModelNotFound {
        name: id.clone(),
        reason: "its folder's configs do not say what the model does".into(),
    })?;
    Ok(axum::Json(model(&id, kind, None)).into_response())
}
