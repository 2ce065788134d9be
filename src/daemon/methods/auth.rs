//! `auth`: presents the API key. On TCP it must be the first request (the connection layer
//! closes a connection that sends anything else first, or a wrong key); on a Unix socket, whose
//! file permissions guard it, it is accepted and changes nothing.

use serde::{Deserialize, Serialize};

use super::Call;
use crate::error::{Error, Result};

/// Params of `auth`. Never logged.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Auth {
    key: String,
}

/// Result of `auth`.
#[derive(Serialize)]
pub(crate) struct Authenticated {
    authenticated: bool,
}

pub(crate) async fn call(call: &mut Call<'_>, params: Auth) -> Result<Authenticated> {
    match call.daemon.api_key() {
        Some(key) if !key.verify(&params.key) => {
            Err(Error::Unauthorized("wrong API key; the connection is closed".into()))
        }
        _ => Ok(Authenticated { authenticated: true }),
    }
}
