//! `ping`: liveness and versions, answered without touching a model.

use serde::Serialize;

use super::{Call, NoParams};
use crate::error::Result;
use crate::protocol::PROTOCOL_VERSION;

/// Result of `ping`.
#[derive(Serialize)]
pub(crate) struct Pong {
    version: &'static str,
    protocol: u32,
    pid: u32,
}

pub(crate) async fn call(_: &mut Call<'_>, _: NoParams) -> Result<Pong> {
    Ok(Pong { version: env!("CARGO_PKG_VERSION"), protocol: PROTOCOL_VERSION, pid: std::process::id() })
}
