//! steadytext: deterministic text generation and embeddings on ONNX Runtime, served by a
//! systemd-native daemon (`steadytextd`) and used through `stctl`.

pub mod config;
pub mod engine;
pub mod error;
pub mod model;
pub mod runtime;

pub use error::{Error, Result};
