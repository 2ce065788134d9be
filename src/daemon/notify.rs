//! Messages to the service manager (`sd_notify`); all are no-ops outside systemd.

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// `READY=1` with a status line: models are loaded and requests are served.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STATUS=...`: a one-line summary of what the daemon does now.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// `RELOADING=1` with `MONOTONIC_USEC` (required by `Type=notify-reload`).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now, NotifyState::Status("reloading configuration")]),
        Err(e) => tracing::warn!(error = %e, "cannot read CLOCK_MONOTONIC for RELOADING=1"),
    }
}

/// `STOPPING=1`.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// `WATCHDOG=1`.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// `EXTEND_TIMEOUT_USEC=...`, so a long model load does not hit `TimeoutStartSec`.
pub fn extend_timeout(usec: u32) {
    send(&[NotifyState::ExtendTimeoutUsec(usec)]);
}

/// How long a worker may show no progress before the daemon counts it as stuck (the watchdog
/// ping is withheld, `/health/live` answers 503): half the systemd watchdog period when there is
/// one, else 30 s (what the shipped unit's `WatchdogSec=60` gives). A decode step, a prompt chunk
/// or an embedding batch each beat; an idle worker beats every half second.
pub(crate) fn stall_limit() -> std::time::Duration {
    sd_notify::watchdog_enabled().map_or(std::time::Duration::from_secs(30), |period| period / 2)
}
