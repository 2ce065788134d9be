//! `cache.stats`, `cache.clear` and `cache.snapshot`.

use serde::{Deserialize, Serialize};

use super::{Call, NoParams};
use crate::error::{Error, Result};
use crate::protocol::{CacheStats, SnapshotInfo};

pub(crate) async fn stats(call: &mut Call<'_>, _: NoParams) -> Result<CacheStats> {
    call.daemon.cache().stats()
}

/// Params of `cache.clear`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Clear {
    /// `generation`, `embedding`, or absent for both.
    #[serde(default)]
    cache: Option<String>,
}

/// Result of `cache.clear`.
#[derive(Serialize)]
pub(crate) struct Cleared {
    cleared: String,
}

pub(crate) async fn clear(call: &mut Call<'_>, params: Clear) -> Result<Cleared> {
    call.daemon.require_admin(&call.peer, "cache.clear")?;
    call.daemon.cache().clear(params.cache.as_deref())?;
    Ok(Cleared { cleared: params.cache.unwrap_or_else(|| "all".into()) })
}

pub(crate) async fn snapshot(call: &mut Call<'_>, _: NoParams) -> Result<SnapshotInfo> {
    call.daemon.require_admin(&call.peer, "cache.snapshot")?;
    let cache = call.daemon.cache();
    if !cache.is_enabled() {
        return Err(Error::CacheDisabled);
    }
    let written = tokio::task::block_in_place(|| cache.snapshot())?;
    written.ok_or(Error::CacheDisabled)
}
