//! Typed errors of the library, one enum for every layer below the binaries. Every message says
//! what happened and what to do about it. The JSON-RPC code of each variant is chosen in exactly
//! one place: `impl From<&Error> for RpcError` in [`crate::protocol`].

use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the engine, the models, the cache, the daemon and the runtime loader can report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- the request ---
    /// The request itself is invalid (bad parameter, prompt too long...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The request breaks one of the rules of `crate::core::validate`.
    #[error("invalid request: {0}")]
    Validation(#[from] ValidationError),
    /// The request line is not JSON.
    #[error("not valid JSON: {0}")]
    Parse(String),
    /// Valid JSON, but not a JSON-RPC 2.0 request.
    #[error("{0}")]
    NotJsonRpc(String),
    /// The method does not exist.
    #[error("unknown method {name:?}; methods: {known}")]
    UnknownMethod {
        /// What the client asked for.
        name: String,
        /// The methods this daemon serves, comma-separated.
        known: String,
    },
    /// A request line longer than the protocol allows.
    #[error("request line over {limit} bytes; send less per request")]
    LineTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// The request names a model this process has not loaded.
    #[error(
        "model {0} is not loaded here; configure it as the daemon's model, or use direct mode (stctl --no-daemon)"
    )]
    ModelNotLoaded(String),
    /// The request names a model the daemon does not have: no folder of that name under its
    /// model folder (a request never names a path).
    #[error("model {name:?} not found: {reason}")]
    ModelNotFound {
        /// The name as the request gave it.
        name: String,
        /// What is wrong with it and what to do.
        reason: String,
    },
    /// The request names a model of another kind (an embedding model asked to generate...).
    #[error("model {name} is {is} model; this request needs {wanted} model: name one (see `stctl models list`) or leave the model out for the configured one")]
    WrongModelKind {
        /// The model's name.
        name: String,
        /// What it is (`a generation`, `an embedding`, `a rerank`).
        is: &'static str,
        /// What the request needs.
        wanted: &'static str,
    },
    /// The configured model of a kind failed to load when the daemon started.
    #[error(
        "the {kind} model {name} could not be loaded: {reason}; install the recommended one (`stctl models pull \
         {recommended}`) or another (`stctl models pull OWNER/NAME`) and reload the daemon (`systemctl reload steadytext`)"
    )]
    ModelUnavailable {
        /// `generation`, `embedding` or `rerank`.
        kind: &'static str,
        /// The alias of the recommended model of that kind.
        recommended: &'static str,
        /// The configured model name.
        name: String,
        /// Why loading failed.
        reason: String,
    },
    /// A constrained output did not finish matching its constraint within its budget (the request
    /// was valid; the model did not get there).
    #[error("output incomplete: {0}")]
    OutputIncomplete(String),
    /// A TCP client did not present the API key first, or presented a wrong one.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// An admin method was called by a client that is not an admin.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A request line was started but not finished in time.
    #[error("request line not finished within {secs} s; the connection is closed")]
    LineTimeout {
        /// The limit.
        secs: u64,
    },
    /// A cache method was called on a daemon whose cache is off.
    #[error("the cache is disabled in this daemon's configuration ([cache] enabled = false)")]
    CacheDisabled,

    // --- load and scheduling ---
    /// A model's queue is full.
    #[error("daemon overloaded: {queued} {kind} requests already queued; retry in {retry_after_ms} ms")]
    Overloaded {
        /// Which model kind.
        kind: &'static str,
        /// Jobs already waiting.
        queued: usize,
        /// When a retry is likely to be accepted.
        retry_after_ms: u64,
    },
    /// Every connection slot is taken, or every slot this peer may have.
    #[error("too many connections ({open} open, {limit}); retry in a second")]
    TooManyConnections {
        /// Connections open now (in all, or of this peer).
        open: usize,
        /// Which limit: `max_connections` or `max_connections_per_peer`.
        limit: &'static str,
    },
    /// The daemon is stopping, or its worker has stopped.
    #[error("the worker has stopped; the daemon is shutting down")]
    ShuttingDown,
    /// The work was cancelled (client gone, shutdown timeout).
    #[error("request cancelled (client gone or daemon stopping)")]
    Cancelled,

    // --- the engine ---
    /// The ONNX Runtime shared library could not be found or loaded.
    #[error("ONNX Runtime library not usable at {path}: {reason}; run `packaging/fetch-onnxruntime.sh` or set `onnxruntime` in the config / ORT_DYLIB_PATH to libonnxruntime.so.{version}", version = crate::version::ORT_VERSION)]
    Runtime {
        /// The library path that was tried.
        path: PathBuf,
        /// Why it failed.
        reason: String,
    },
    /// A model folder or one of its files is missing or malformed.
    #[error("model {model}: {reason}")]
    Model {
        /// The model folder (or name) concerned.
        model: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// ONNX Runtime failed while running a model.
    #[error("inference failed in model {model}: {source}")]
    Inference {
        /// The model that failed.
        model: String,
        /// The runtime's error.
        #[source]
        source: ort::Error,
    },
    /// The engine produced something it cannot use (NaN logits, undecodable tokens).
    #[error("engine fault in model {model}: {reason}; see `journalctl -u steadytext` and report it")]
    Engine {
        /// The model concerned.
        model: String,
        /// What went wrong.
        reason: String,
    },

    // --- files and the outside world ---
    /// The configuration file or an environment variable is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// An I/O error with the file it concerns.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A cache snapshot could not be written or read.
    #[error("cache snapshot: {0}")]
    Snapshot(String),
    /// A Hugging Face Hub download failed.
    #[error("hub: {repo}: {reason}")]
    Hub {
        /// The repository concerned.
        repo: String,
        /// What went wrong and what to do.
        reason: String,
    },
}

impl Error {
    /// Builds a [`Error::Model`] for the model `model`.
    pub fn model(model: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        Error::Model { model: model.to_string(), reason: reason.into() }
    }

    /// Builds an [`Error::Engine`] fault of the model `model`.
    pub fn engine(model: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        Error::Engine { model: model.to_string(), reason: reason.into() }
    }

    /// Builds an [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// Why a request is refused before any model work (the rules of `crate::core::validate`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// Neither a prompt nor messages.
    #[error("give a prompt (or messages)")]
    NoPrompt,
    /// A text over `limits.max_input_bytes`.
    #[error("{what} is {len} bytes; this server's limit is {limit} bytes")]
    TooLong {
        /// Which text.
        what: &'static str,
        /// Its bytes.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// `max_new_tokens` over `limits.max_new_tokens`.
    #[error("max_new_tokens {asked} is over this server's limit of {limit}")]
    TooManyNewTokens {
        /// What the request asked for.
        asked: usize,
        /// The limit.
        limit: usize,
    },
    /// Two of `schema`, `regex`, `choices`, `grammar`.
    #[error("give one constraint, not both {first} and {second}")]
    TwoConstraints {
        /// The first one given.
        first: &'static str,
        /// The second one.
        second: &'static str,
    },
    /// `top_logprobs` without `logprobs`.
    #[error("top_logprobs needs logprobs: true")]
    TopLogprobsAlone,
    /// An empty list of texts or documents.
    #[error("{what} must hold at least one item")]
    Empty {
        /// `texts` or `documents`.
        what: &'static str,
    },
    /// More texts or documents than `limits.max_batch`.
    #[error("{count} {what} in one request; this server's limit is {limit}: split the request")]
    TooMany {
        /// `texts` or `documents`.
        what: &'static str,
        /// How many were given.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A rerank without a query.
    #[error("give a query")]
    NoQuery,
    /// A query with the pair separator in it.
    #[error("the query must not contain NUL characters")]
    NulInQuery,
}
