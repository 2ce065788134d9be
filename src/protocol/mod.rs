//! The wire protocol between `stctl` and `steadytextd`: JSON-RPC 2.0, one JSON object per line
//! (NDJSON) over a Unix or TCP stream. Wire types only: the envelope and its error codes here, the
//! methods in [`Method`], their params and results; what they mean is in `crate::core`. See
//! `docs/protocol.md` for the full description.

mod method;
mod params;
mod results;
mod status;
pub mod wire;

pub use method::Method;
pub use params::{
    AuthParams, CacheClearParams, CacheKind, DetokenizeParams, EmbedParams, GenerateParams, NoParams, RerankParams,
    TokenizeParams, VectorEncoding,
};
pub use results::{
    base64_vector, Authenticated, Cleared, CountResult, DetokenizeResult, EmbedResult, GenerateResult, Pong, Reloaded,
    RerankResult, TokenizeResult,
};
pub use status::{
    CacheKindStats, CacheStats, Histogram, Latency, MetricsSnapshot, ModelStatus, PrefixCacheStatus, SnapshotInfo,
    Status, UnavailableModel, HISTOGRAM_BOUNDS,
};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::Error;

/// HTTP header holding a request's route key (`crate::cache::generation_route_key`): `stctl`
/// sends it, the HTTP front answers with it, a load balancer hashes on it.
pub const ROUTE_KEY_HEADER: &str = "X-Steadytext-Route-Key";
/// Version of the method set and payloads below; reported by `ping` and `status`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line the daemon reads, in bytes.
pub const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;

/// Most requests in one JSON-RPC batch (an array on one line).
pub const MAX_BATCH_REQUESTS: usize = 256;

/// JSON-RPC error codes used by the daemon.
pub mod codes {
    /// The line is not valid JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Valid JSON but not a JSON-RPC 2.0 request.
    pub const INVALID_REQUEST: i64 = -32600;
    /// Unknown method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Parameters do not fit the method.
    pub const INVALID_PARAMS: i64 = -32602;
    /// The engine failed.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// The queue is full; `data.retry_after_ms` says when to retry.
    pub const OVERLOADED: i64 = -32000;
    /// The named model is not loaded by this daemon.
    pub const MODEL_NOT_LOADED: i64 = -32001;
    /// The daemon is shutting down.
    pub const SHUTTING_DOWN: i64 = -32002;
    /// The request line is longer than [`super::MAX_LINE_BYTES`].
    pub const TOO_LARGE: i64 = -32003;
    /// A TCP connection did not authenticate first (or used a wrong key); it is closed.
    pub const UNAUTHORIZED: i64 = -32004;
    /// An admin method called by a client that is not root or in the admin group.
    pub const FORBIDDEN: i64 = -32005;
    /// A constrained output did not match its constraint before its budget (max_new_tokens, the
    /// context) ran out.
    pub const OUTPUT_INCOMPLETE: i64 = -32006;
}

/// A JSON-RPC request (or, without `id`, a notification).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Must be "2.0".
    pub jsonrpc: String,
    /// The method name.
    pub method: String,
    /// Method parameters.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub params: Value,
    /// Request id, echoed in the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcError {
    /// One of [`codes`].
    pub code: i64,
    /// What happened and what to do.
    pub message: String,
    /// Extra machine-readable detail (`retry_after_ms` for overload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    /// An error without data.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError { code, message: message.into(), data: None }
    }
}

/// The one mapping from the library's errors to JSON-RPC codes.
impl From<&Error> for RpcError {
    fn from(e: &Error) -> Self {
        let code = match e {
            Error::Parse(_) => codes::PARSE_ERROR,
            Error::NotJsonRpc(_) => codes::INVALID_REQUEST,
            Error::UnknownMethod { .. } => codes::METHOD_NOT_FOUND,
            Error::InvalidRequest(_) | Error::Validation(_) | Error::CacheDisabled | Error::WrongModelKind { .. } => {
                codes::INVALID_PARAMS
            }
            Error::LineTooLong { .. } => codes::TOO_LARGE,
            Error::Unauthorized(_) => codes::UNAUTHORIZED,
            Error::Forbidden(_) => codes::FORBIDDEN,
            Error::OutputIncomplete(_) => codes::OUTPUT_INCOMPLETE,
            Error::LineTimeout { .. } => codes::INVALID_REQUEST,
            Error::ModelNotLoaded(_) | Error::ModelNotFound { .. } | Error::ModelUnavailable { .. } => {
                codes::MODEL_NOT_LOADED
            }
            Error::Overloaded { .. } | Error::TooManyConnections { .. } => codes::OVERLOADED,
            Error::ShuttingDown | Error::Cancelled => codes::SHUTTING_DOWN,
            Error::Runtime { .. }
            | Error::Model { .. }
            | Error::Inference { .. }
            | Error::Engine { .. }
            | Error::Config(_)
            | Error::Io { .. }
            | Error::Snapshot(_)
            | Error::Hub { .. } => codes::INTERNAL_ERROR,
        };
        let data = match e {
            Error::Overloaded { retry_after_ms, .. } => Some(json!({ "retry_after_ms": retry_after_ms })),
            Error::TooManyConnections { .. } => Some(json!({ "retry_after_ms": 1000 })),
            _ => None,
        };
        RpcError { code, message: e.to_string(), data }
    }
}

impl From<Error> for RpcError {
    fn from(e: Error) -> Self {
        RpcError::from(&e)
    }
}

/// A JSON-RPC response line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    /// Always "2.0".
    pub jsonrpc: String,
    /// The result, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The error, on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
    /// The request's id (null when it could not be read).
    pub id: Value,
}

/// Method name of the streaming notifications sent during `generate_stream`.
pub const PIECE_NOTIFICATION: &str = "generate.piece";

/// Parameters of a `generate.piece` notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Piece {
    /// The id of the `generate_stream` request it belongs to.
    pub id: Value,
    /// The next text piece (whole UTF-8 characters).
    pub text: String,
}
