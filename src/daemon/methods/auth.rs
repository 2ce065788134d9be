//! `auth`: presents the API key. On TCP it must be the first request (the connection layer
//! closes a connection that sends anything else first, or a wrong key); on a Unix socket, whose
//! file permissions guard it, it is accepted and changes nothing.

use crate::error::{Error, Result};
use crate::protocol::{AuthParams, Authenticated};

use super::Call;

pub(crate) fn call(call: &Call<'_>, params: AuthParams) -> Result<Authenticated> {
    match call.daemon.api_key() {
        Some(key) if !key.verify(&params.key) => {
            Err(Error::Unauthorized("wrong API key; the connection is closed".into()))
        }
        _ => Ok(Authenticated { authenticated: true }),
    }
}
