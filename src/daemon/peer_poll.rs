//! One clock for every request that waits on a model worker while watching its client.
//!
//! A timer per request (each wait polling its client every [`PEER_POLL`]) slowed one-text embeds
//! on 2 cores (2-8% in paired runs): registering a timer earlier than the runtime's next one wakes
//! the thread parked in the I/O driver to re-arm it, and a dropped timer does not disarm it, so
//! that thread woke again 50 ms after each request, in the middle of a later model run,
//! preempting one of ONNX Runtime's threads (both cores were the model's). Measured with
//! `perf sched`: ~1 timer wake-up per request. One ticker, running while anyone waits (and a
//! while after), wakes every waiter each period instead: at most one wake-up per period.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// How often a request waiting on a worker checks whether its client hung up.
pub(crate) const PEER_POLL: Duration = Duration::from_millis(50);

/// Periods the ticker keeps running with nobody waiting before it stops (a steady stream of
/// short requests keeps it running: a restart per request would bring the wake-ups back).
const LINGER_TICKS: u32 = 20;

/// The shared clock; [`PeerPoll::watch`] registers a waiter.
#[derive(Default)]
pub(crate) struct PeerPoll {
    waiting: AtomicUsize,
    running: AtomicBool,
    tick: Notify,
}

impl PeerPoll {
    /// Registers a waiter for as long as the guard lives, starting the ticker if it is stopped.
    /// Needs a Tokio runtime.
    pub(crate) fn watch(self: &Arc<Self>) -> Watching {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        if !self.running.swap(true, Ordering::SeqCst) {
            tokio::spawn(self.clone().run());
        }
        Watching(self.clone())
    }

    /// Ticks every [`PEER_POLL`] until nobody has waited for [`LINGER_TICKS`] periods. Exactly
    /// one runs at a time: a waiter that arrives as it stops either sees it running or starts the
    /// next, and it checks for such a waiter after saying it stopped.
    async fn run(self: Arc<Self>) {
        let mut interval = tokio::time::interval(PEER_POLL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            let mut idle = 0;
            while idle < LINGER_TICKS {
                interval.tick().await;
                self.tick.notify_waiters();
                idle = if self.waiting.load(Ordering::SeqCst) == 0 { idle + 1 } else { 0 };
            }
            self.running.store(false, Ordering::SeqCst);
            if self.waiting.load(Ordering::SeqCst) == 0 || self.running.swap(true, Ordering::SeqCst) {
                return;
            }
        }
    }
}

/// A registered waiter.
pub(crate) struct Watching(Arc<PeerPoll>);

impl Watching {
    /// Completes at the clock's next tick (create it anew after each).
    pub(crate) fn tick(&self) -> Notified<'_> {
        self.0.tick.notified()
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generous: only a stopped clock misses it.
    const SOON: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn waiters_tick_and_the_ticker_stops_after_lingering_then_restarts() {
        let poll = Arc::new(PeerPoll::default());
        let (a, b) = (poll.watch(), poll.watch());
        for _ in 0..3 {
            let both = async { tokio::join!(a.tick(), b.tick()) };
            tokio::time::timeout(SOON, both).await.expect("every waiter wakes each period");
        }
        drop((a, b));
        assert!(poll.running.load(Ordering::SeqCst));
        tokio::time::sleep(PEER_POLL * (LINGER_TICKS + 4)).await;
        assert!(!poll.running.load(Ordering::SeqCst), "nobody waits: the ticker stopped");
        assert_eq!(Arc::strong_count(&poll), 1, "and its task ended");
        let c = poll.watch();
        tokio::time::timeout(SOON, c.tick()).await.expect("a new waiter starts it again");
    }

    #[tokio::test]
    async fn one_ticker_serves_a_stream_of_short_waits() {
        let poll = Arc::new(PeerPoll::default());
        for _ in 0..100 {
            let w = poll.watch();
            tokio::time::sleep(Duration::from_millis(3)).await;
            drop(w);
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert!(Arc::strong_count(&poll) <= 2, "one ticker task at a time holds the clock");
        }
        assert!(poll.running.load(Ordering::SeqCst), "still running between short waits");
    }
}
