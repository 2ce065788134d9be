//! steadytext: deterministic text generation and embeddings on ONNX Runtime, served by a
//! systemd-native daemon (`steadytextd`) and used through `stctl`.
//!
//! The modules the binaries and the integration tests use are public; the rest is `pub(crate)`.
#![warn(missing_docs)]

pub(crate) mod auth;
pub mod cache;
pub mod client;
pub mod config;
pub mod core;
pub mod daemon;
pub mod direct;
pub mod engine;
pub mod env;
pub(crate) mod error;
pub(crate) mod fsutil;
pub mod hub;
pub mod model;
pub(crate) mod onnx_proto;
pub mod protocol;
pub(crate) mod runtime;
pub mod service;
pub mod store;
pub(crate) mod tls;
pub(crate) mod version;

#[cfg(test)]
mod layering;

pub use error::{Error, Result};
