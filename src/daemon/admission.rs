//! Who may hold a connection. Three budgets, so that no kind of client can take what another
//! needs:
//! - each listener has its own `max_connections` (TCP clients never take the Unix socket's);
//! - each peer (a user on a Unix socket, an address on TCP) may hold `max_connections_per_peer`
//!   of the connections that may send requests;
//! - a TCP connection that has not presented the API key yet holds neither: it waits in a pool
//!   of its own (`max_unauthenticated`, all TCP listeners together), must authenticate within
//!   `auth_timeout_secs`, and when the pool is full the oldest waiting connection is closed to
//!   make room, so a flood of keyless connections delays an honest client by its own round trip
//!   at most, and never locks it out.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::DaemonConfig;
use crate::error::{Error, Result};

use super::peer::{Peer, PeerSlot, PeerTable};

/// The memory every request being received may take together (`max_receiving_mb`): a JSON-RPC
/// line or an HTTP body holds its bytes from the budget while it arrives and until it is handled,
/// so connections that each send most of a large request and stop cannot bloat the daemon.
#[derive(Clone)]
pub(crate) struct ReceiveBudget(Arc<Semaphore>);

/// Bytes one request holds from the [`ReceiveBudget`] (given back on drop).
#[derive(Default)]
pub(crate) struct Received {
    permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
}

impl ReceiveBudget {
    /// A budget of `mb` MiB.
    pub(crate) fn new(mb: usize) -> Self {
        ReceiveBudget(Arc::new(Semaphore::new(mb.saturating_mul(1024).min(Semaphore::MAX_PERMITS))))
    }

    /// Grows what `held` holds to `bytes` (rounded up to KiB); false when the budget cannot.
    pub(crate) fn hold(&self, held: &mut Received, bytes: usize) -> bool {
        let (have, want) = (held.bytes.div_ceil(1024), bytes.div_ceil(1024));
        if want > have {
            let Ok(more) = self.0.clone().try_acquire_many_owned((want - have).min(u32::MAX as usize) as u32) else {
                return false;
            };
            match &mut held.permit {
                Some(permit) => permit.merge(more),
                None => held.permit = Some(more),
            }
        }
        held.bytes = held.bytes.max(bytes);
        true
    }
}

/// One listener's connection budget (`max_connections`).
#[derive(Clone)]
pub(crate) struct ListenerBudget(Arc<Semaphore>);

impl ListenerBudget {
    /// A budget of `max` connections.
    pub(crate) fn new(max: usize) -> Self {
        ListenerBudget(Arc::new(Semaphore::new(max)))
    }
}

/// The connection budgets of the daemon.
pub(crate) struct Admission {
    receive: ReceiveBudget,
    pending: Arc<Mutex<PendingPool>>,
    peers: PeerTable,
    per_peer: usize,
    auth_timeout: Duration,
}

/// TCP connections waiting to authenticate, oldest first.
struct PendingPool {
    capacity: usize,
    next_id: u64,
    waiting: VecDeque<(u64, CancellationToken)>,
}

/// A connection that may send requests: its listener slot and its peer's.
pub(crate) struct Slots {
    _listener: OwnedSemaphorePermit,
    _peer: PeerSlot,
}

/// A TCP connection's place among those waiting to authenticate; it leaves the pool on drop.
pub(crate) struct PendingTicket {
    pool: Arc<Mutex<PendingPool>>,
    id: u64,
    evicted: CancellationToken,
    deadline: tokio::time::Instant,
    timeout: Duration,
}

impl PendingTicket {
    /// Completes when the connection must close: another took its place, or its time to
    /// authenticate is up. Says which. (It borrows nothing: the ticket may be elsewhere by then.)
    pub(crate) fn expiry(&self) -> impl std::future::Future<Output = Error> + Send + 'static {
        let (evicted, deadline, timeout) = (self.evicted.clone(), self.deadline, self.timeout);
        async move {
            tokio::select! {
                _ = evicted.cancelled() => Error::Unauthorized(
                    "too many connections are waiting to authenticate; this one waited longest and is closed".into(),
                ),
                _ = tokio::time::sleep_until(deadline) => Error::Unauthorized(format!(
                    "no API key within {} s of connecting; the connection is closed",
                    timeout.as_secs()
                )),
            }
        }
    }
}

impl Drop for PendingTicket {
    fn drop(&mut self) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.waiting.retain(|(id, _)| *id != self.id);
    }
}

impl Admission {
    /// The budgets `config` sets.
    pub(crate) fn new(config: &DaemonConfig) -> Self {
        Admission {
            receive: ReceiveBudget::new(config.max_receiving_mb),
            pending: Arc::new(Mutex::new(PendingPool {
                capacity: config.max_unauthenticated,
                next_id: 0,
                waiting: VecDeque::new(),
            })),
            peers: PeerTable::default(),
            per_peer: config.max_connections_per_peer,
            auth_timeout: Duration::from_secs(config.auth_timeout_secs),
        }
    }

    /// The memory budget of requests being received.
    pub(crate) fn receive(&self) -> &ReceiveBudget {
        &self.receive
    }

    /// A place for a TCP connection that has yet to authenticate; when the pool is full, the
    /// oldest waiting connection is told to close.
    pub(crate) fn pending(&self) -> PendingTicket {
        let mut pool = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        while pool.waiting.len() >= pool.capacity.max(1) {
            if let Some((_, oldest)) = pool.waiting.pop_front() {
                oldest.cancel();
            }
        }
        let id = pool.next_id;
        pool.next_id += 1;
        let evicted = CancellationToken::new();
        pool.waiting.push_back((id, evicted.clone()));
        let deadline = tokio::time::Instant::now() + self.auth_timeout;
        PendingTicket { pool: self.pending.clone(), id, evicted, deadline, timeout: self.auth_timeout }
    }

    /// A slot of `listener` alone, for a listener whose clients are all one peer (SteadyText's
    /// SDK, always from 127.0.0.1): its own `max_connections` is its only budget.
    pub(crate) fn admit_to_listener(&self, listener: &ListenerBudget, open: usize) -> Result<OwnedSemaphorePermit> {
        listener.0.clone().try_acquire_owned().map_err(|_| Error::TooManyConnections { open, limit: "max_connections" })
    }

    /// Slots for a connection of `peer` that may send requests (a Unix one at once, a TCP one
    /// once it has authenticated): one of its listener's, one of its peer's. `open` is the
    /// number of connections open now, for the message.
    pub(crate) fn admit(&self, listener: &ListenerBudget, peer: &Peer, open: usize) -> Result<Slots> {
        let listener = listener
            .0
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::TooManyConnections { open, limit: "max_connections" })?;
        let peer = self
            .peers
            .admit(peer, self.per_peer)
            .map_err(|open| Error::TooManyConnections { open, limit: "max_connections_per_peer" })?;
        Ok(Slots { _listener: listener, _peer: peer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pending: usize, per_peer: usize) -> DaemonConfig {
        DaemonConfig { max_unauthenticated: pending, max_connections_per_peer: per_peer, ..Default::default() }
    }

    #[tokio::test]
    async fn a_full_pending_pool_closes_its_oldest_and_admits_the_newcomer() {
        let admission = Admission::new(&config(2, 8));
        let first = admission.pending();
        let second = admission.pending();
        let third = admission.pending();
        let why = tokio::time::timeout(Duration::from_secs(1), first.expiry()).await.expect("the oldest is closed");
        assert!(why.to_string().contains("waited longest"), "{why}");
        assert!(!second.evicted.is_cancelled() && !third.evicted.is_cancelled());
        drop(second);
        let _fourth = admission.pending();
        assert!(!third.evicted.is_cancelled(), "a freed place is taken without closing anyone");
    }

    #[tokio::test]
    async fn a_connection_that_never_authenticates_is_told_when_its_time_is_up() {
        let admission = Admission { auth_timeout: Duration::from_millis(50), ..Admission::new(&config(4, 8)) };
        let ticket = admission.pending();
        let why = ticket.expiry().await;
        assert!(why.to_string().contains("within"), "{why}");
    }

    #[test]
    fn requests_being_received_share_one_memory_budget() {
        let budget = ReceiveBudget::new(1);
        let (mut a, mut b) = (Received::default(), Received::default());
        assert!(budget.hold(&mut a, 600 << 10));
        assert!(budget.hold(&mut a, 700 << 10), "growing within the budget");
        assert!(!budget.hold(&mut b, 400 << 10), "1 MiB in all");
        drop(a);
        assert!(budget.hold(&mut b, 1 << 20), "a handled request gives its bytes back");
    }

    #[test]
    fn listeners_and_peers_have_their_own_budgets() {
        let admission = Admission::new(&config(4, 2));
        let (unix, tcp) = (ListenerBudget::new(1), ListenerBudget::new(8));
        let alice = Peer::Local { uid: 1000, gid: 1000 };
        let remote = Peer::Remote("127.0.0.1".parse().unwrap());
        let _a = admission.admit(&unix, &alice, 0).unwrap();
        let full = admission.admit(&unix, &alice, 1).err().unwrap().to_string();
        assert!(full.contains("max_connections"), "{full}");
        let _r1 = admission.admit(&tcp, &remote, 0).unwrap();
        let _r2 = admission.admit(&tcp, &remote, 0).unwrap();
        let mine = admission.admit(&tcp, &remote, 2).err().unwrap().to_string();
        assert!(mine.contains("max_connections_per_peer"), "{mine}");
    }
}
