//! `status` (models, counters, latencies, cache figures) and `metrics` (the same as Prometheus
//! text).

use crate::daemon::metrics::prometheus;
use crate::protocol::{NoParams, Status};

use super::Call;

pub(crate) fn status(call: &Call<'_>, _: NoParams) -> Status {
    call.daemon.status()
}

pub(crate) fn metrics(call: &Call<'_>, _: NoParams) -> String {
    prometheus(&call.daemon.status())
}
