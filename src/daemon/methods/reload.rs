//! `reload`: what SIGHUP does (re-read the configuration, load models pulled or configured since,
//! reload changed ones), answered once it is done: `systemctl reload` waits for it this way
//! (`ExecReload=stctl reload`) on systemd before 253, which does not wait for `READY=1`.

use serde::Serialize;

use super::{Call, NoParams};
use crate::error::Result;

/// Result of `reload`.
#[derive(Serialize)]
pub(crate) struct Reloaded {
    /// The status line after the reload (what `STATUS=` says).
    status: String,
}

pub(crate) async fn call(call: &mut Call<'_>, _: NoParams) -> Result<Reloaded> {
    call.daemon.require_admin(&call.peer, "reload")?;
    crate::daemon::reload(call.daemon).await?;
    Ok(Reloaded { status: call.daemon.status_line() })
}
