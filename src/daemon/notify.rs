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
