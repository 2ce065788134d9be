//! `metrics`: the status as Prometheus text exposition format.

use super::{Call, NoParams};
use crate::daemon::metrics::prometheus;
use crate::error::Result;

pub(crate) async fn call(call: &mut Call<'_>, _: NoParams) -> Result<String> {
    Ok(prometheus(&call.daemon.status()))
}
