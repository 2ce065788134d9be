//! Typed errors of the library. Every message says what happened and what to do about it.

use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the engine, the models and the runtime loader can report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ONNX Runtime shared library could not be found or loaded.
    #[error("ONNX Runtime library not usable at {path}: {reason}; run `packaging/fetch-onnxruntime.sh` or set `onnxruntime` in the config / ORT_DYLIB_PATH to libonnxruntime.so.{version}", version = crate::runtime::ORT_VERSION)]
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
    /// The request itself is invalid (bad parameter, prompt too long...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
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
    /// The request names a model this process has not loaded.
    #[error(
        "model {0} is not loaded here; configure it as the daemon's model, or use direct mode (stctl --no-daemon)"
    )]
    ModelNotLoaded(String),
    /// The work was cancelled (client gone, shutdown).
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// Builds a [`Error::Model`] for the model `model`.
    pub fn model(model: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        Error::Model { model: model.to_string(), reason: reason.into() }
    }

    /// Builds an [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
