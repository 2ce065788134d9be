//! `ping`: liveness and versions, answered without touching a model.

use crate::protocol::{NoParams, Pong, PROTOCOL_VERSION};

pub(crate) fn call(_: NoParams) -> Pong {
    Pong { version: env!("CARGO_PKG_VERSION").into(), protocol: PROTOCOL_VERSION, pid: std::process::id() }
}
