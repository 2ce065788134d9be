//! `reload`: what SIGHUP does (re-read the configuration, load models pulled or configured since,
//! reload changed ones), answered once it is done: `systemctl reload` waits for it this way
//! (`ExecReload=stctl reload`) on systemd before 253, which does not wait for `READY=1`.

use crate::error::Result;
use crate::protocol::{NoParams, Reloaded};

use super::super::state::Daemon;

pub(crate) async fn call(daemon: &Daemon, _: NoParams) -> Result<Reloaded> {
    crate::daemon::reload::reload(daemon).await?;
    Ok(Reloaded { status: daemon.status_line() })
}
