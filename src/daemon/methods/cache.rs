//! `cache.stats`, `cache.clear` and `cache.snapshot` (the last two for admins: see
//! [`crate::protocol::Method::is_admin`]).

use crate::error::{Error, Result};
use crate::protocol::{CacheClearParams, CacheStats, Cleared, NoParams, SnapshotInfo};

use super::Call;

pub(crate) fn stats(call: &Call<'_>, _: NoParams) -> Result<CacheStats> {
    call.core().cache_stats()
}

pub(crate) fn clear(call: &Call<'_>, params: CacheClearParams) -> Result<Cleared> {
    call.core().cache_clear(&params)
}

pub(crate) fn snapshot(call: &Call<'_>, _: NoParams) -> Result<SnapshotInfo> {
    if !call.daemon.cache().is_enabled() {
        return Err(Error::CacheDisabled);
    }
    tokio::task::block_in_place(|| call.core().cache_snapshot())?.ok_or(Error::CacheDisabled)
}
