//! `status`: models, counters, latencies and cache figures.

use super::{Call, NoParams};
use crate::error::Result;
use crate::protocol::Status;

pub(crate) async fn call(call: &mut Call<'_>, _: NoParams) -> Result<Status> {
    Ok(call.daemon.status())
}
