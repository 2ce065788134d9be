//! Request bodies: bounded in size and time, their bytes held from the daemon's receive budget
//! while they arrive.

use axum::body::Body;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::super::admission::Received;
use super::super::state::Daemon;
use super::error::ApiError;
use super::MAX_BODY_BYTES;
use crate::error::Error;

/// Reads a JSON body (see [`read_body`]).
pub(crate) async fn read_json<T: DeserializeOwned>(body: Body, daemon: &Daemon) -> Result<T, ApiError> {
    let bytes = read_body(body, daemon).await?;
    serde_json::from_slice(&bytes).map_err(|e| Error::InvalidRequest(format!("invalid JSON body: {e}")).into())
}

/// Reads a body of at most [`MAX_BODY_BYTES`] within the line timeout, its bytes held from the
/// daemon's receive budget while it arrives.
pub(crate) async fn read_body(body: Body, daemon: &Daemon) -> Result<Vec<u8>, ApiError> {
    use futures_util::StreamExt;
    let timeout = std::time::Duration::from_secs(daemon.config().daemon.line_timeout_secs);
    let mut held = Received::default();
    let mut bytes = Vec::new();
    let mut stream = body.into_data_stream();
    let received = tokio::time::timeout(timeout, async {
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, &format!("broken request body: {e}")))?;
            if bytes.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("the request body is over {MAX_BODY_BYTES} bytes; split the request"),
                ));
            }
            if !daemon.receive_budget().hold(&mut held, bytes.len() + chunk.len()) {
                let busy =
                    Error::Overloaded { kind: "request", queued: daemon.metrics().in_flight(), retry_after_ms: 1000 };
                return Err(busy.into());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(())
    })
    .await;
    match received {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                &format!("the request body did not arrive within {} s", timeout.as_secs()),
            ))
        }
        Ok(result) => result?,
    }
    Ok(bytes)
}
