//! Errors in OpenAI's shape, with the HTTP status of each of the daemon's errors.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::error::Error;
use crate::protocol::RpcError;

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    message: String,
    kind: &'static str,
    code: Option<String>,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: &str) -> Self {
        let kind = match status.as_u16() {
            401 => "authentication_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        };
        ApiError { status, message: message.to_string(), kind, code: None, retry_after_secs: None }
    }

    pub(crate) fn internal(message: &str) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    pub(crate) fn kind(mut self, kind: &'static str) -> Self {
        self.kind = kind;
        self
    }

    pub(crate) fn code(mut self, code: &str) -> Self {
        self.code = Some(code.to_string());
        self
    }

    pub(crate) fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// What happened and what to do.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": null, "code": self.code}})
    }
}

/// The HTTP status of each of the daemon's errors: the one mapping (JSON-RPC has its own, in
/// [`crate::protocol`]).
fn http_status(e: &Error) -> StatusCode {
    match e {
        Error::InvalidRequest(_)
        | Error::Validation(_)
        | Error::Parse(_)
        | Error::NotJsonRpc(_)
        | Error::CacheDisabled
        | Error::WrongModelKind { .. }
        | Error::LineTimeout { .. } => StatusCode::BAD_REQUEST,
        Error::UnknownMethod { .. } | Error::ModelNotFound { .. } => StatusCode::NOT_FOUND,
        Error::LineTooLong { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::OutputIncomplete(_) => StatusCode::UNPROCESSABLE_ENTITY,
        Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::Overloaded { .. } | Error::TooManyConnections { .. } => StatusCode::TOO_MANY_REQUESTS,
        Error::ModelNotLoaded(_) | Error::ModelUnavailable { .. } | Error::ShuttingDown | Error::Cancelled => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Error::Runtime { .. }
        | Error::Model { .. }
        | Error::Inference { .. }
        | Error::Engine { .. }
        | Error::Config(_)
        | Error::Io { .. }
        | Error::Snapshot(_)
        | Error::Hub { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = http_status(&e);
        let rpc = RpcError::from(&e);
        let code = match e {
            Error::ModelNotFound { .. } => "model_not_found".to_string(),
            Error::OutputIncomplete(_) => "output_incomplete".to_string(),
            _ => rpc.code.to_string(),
        };
        let retry_ms = rpc.data.as_ref().and_then(|d| d["retry_after_ms"].as_u64());
        let mut error = ApiError::new(status, &rpc.message).code(&code);
        error.retry_after_secs = retry_ms.map(|ms| ms.div_ceil(1000).max(1));
        error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_errors_map_to_http_statuses_in_openais_shape() {
        let overloaded = Error::Overloaded { kind: "generation", queued: 64, retry_after_ms: 1500 };
        let response = ApiError::from(overloaded).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        let cases = [
            (Error::InvalidRequest("x".into()), StatusCode::BAD_REQUEST, "invalid_request_error"),
            (Error::Unauthorized("x".into()), StatusCode::UNAUTHORIZED, "authentication_error"),
            (Error::LineTooLong { limit: 1 }, StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error"),
            (Error::ShuttingDown, StatusCode::SERVICE_UNAVAILABLE, "server_error"),
            (Error::ModelNotLoaded("m".into()), StatusCode::SERVICE_UNAVAILABLE, "server_error"),
            (
                Error::ModelNotFound { name: "../m".into(), reason: "x".into() },
                StatusCode::NOT_FOUND,
                "invalid_request_error",
            ),
            (
                Error::WrongModelKind { name: "m".into(), is: "an embedding", wanted: "a generation" },
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
            ),
        ];
        for (error, status, kind) in cases {
            let message = error.to_string();
            let api = ApiError::from(error);
            assert_eq!((api.status, api.kind), (status, kind), "{message}");
            assert_eq!(api.body()["error"]["message"], message);
        }
    }
}
