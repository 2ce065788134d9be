//! One HTTP connection: its budgets (a TCP connection waits among the unauthenticated until a
//! request presents the key, see [`super::super::admission`]), bounded heads, a deadline on
//! every write, graceful close at shutdown.

use std::convert::Infallible;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::Request;
use axum::response::IntoResponse;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::super::admission::{ListenerBudget, PendingTicket, Slots};
use super::super::deadline_io::DeadlineIo;
use super::super::peer::{self, Peer};
use super::error::ApiError;
use super::{Api, Front, MAX_HEAD_BYTES};

/// One HTTP connection, as its requests see it.
pub(crate) struct Connection {
    peer: Peer,
    budget: ListenerBudget,
    stage: Mutex<Stage>,
    /// The socket (a duplicate of the connection's descriptor, so that it stays the same socket
    /// for as long as a request asks), to learn that a TCP client hung up.
    socket: Option<OwnedFd>,
    /// Cancelled when the connection must close after its current answer.
    closing: CancellationToken,
    /// Cancelled when a request presented the key (the deadline to authenticate no longer holds).
    admitted: CancellationToken,
}

/// Where an HTTP connection stands with the budgets (see [`super::super::admission`]).
enum Stage {
    /// A TCP connection whose requests have not presented the key yet.
    Pending(PendingTicket),
    /// Requests may run.
    Admitted {
        /// Held for as long as the connection is open.
        _slots: Slots,
    },
}

impl Connection {
    /// Completes when a connection still waiting for a key must close (never otherwise, and
    /// never once a request has presented the key, even if this was awaited before).
    async fn expired(&self) {
        let pending = match &*self.stage.lock().unwrap_or_else(|p| p.into_inner()) {
            Stage::Pending(ticket) => Some(ticket.expiry()),
            Stage::Admitted { .. } => None,
        };
        match pending {
            Some(expiry) => tokio::select! {
                _ = expiry => {}
                _ = self.admitted.cancelled() => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// A request presented the right key: the connection takes its slots (once).
    pub(crate) fn authenticate(&self, front: &Front, open: usize) -> Result<(), ApiError> {
        let mut stage = self.stage.lock().unwrap_or_else(|p| p.into_inner());
        if let Stage::Pending(_) = &*stage {
            match front.admission.admit(&self.budget, &self.peer, open) {
                Ok(_slots) => {
                    *stage = Stage::Admitted { _slots };
                    self.admitted.cancel();
                }
                Err(refused) => {
                    // Over a limit: this answer is the connection's last.
                    self.closing.cancel();
                    return Err(refused.into());
                }
            }
        }
        Ok(())
    }

    /// Who is on the other end.
    pub(crate) fn peer(&self) -> Peer {
        self.peer
    }

    /// Whether a TCP client hung up (or shut its sending side: see [`peer::hung_up`]).
    pub(crate) fn hung_up(&self) -> bool {
        self.socket.as_ref().is_some_and(|fd| peer::hung_up(fd.as_raw_fd(), true))
    }
}

impl Front {
    /// Serves one accepted connection of a listener with `budget`, speaking `api`: `setup` (a TLS handshake or
    /// nothing), then HTTP/1.1 with bounded heads and a deadline on every write, until the client
    /// leaves or shutdown. A Unix connection takes its slots at once; a TCP one waits among the
    /// unauthenticated until a request presents the key (see [`super::admission`]).
    pub(crate) fn spawn_connection<S, F>(self: &Arc<Self>, setup: F, peer: Peer, budget: ListenerBudget, api: Api)
    where
        S: AsyncRead + AsyncWrite + AsRawFd + Send + Unpin + 'static,
        F: std::future::Future<Output = std::io::Result<S>> + Send + 'static,
    {
        let front = self.clone();
        self.connections.spawn(async move {
            let daemon = front.daemon.get().cloned();
            let _open = daemon.as_ref().map(|d| d.metrics().connection());
            let open = daemon.as_ref().map_or(0, |d| d.metrics().connections());
            let stage = match peer.is_tcp() {
                true => Ok(Stage::Pending(front.admission.pending())),
                false => front.admission.admit(&budget, &peer, open).map(|_slots| Stage::Admitted { _slots }),
            };
            let timeout = Duration::from_secs(front.config.daemon.line_timeout_secs);
            let setup = async {
                match &stage {
                    Ok(Stage::Pending(ticket)) => tokio::select! {
                        stream = tokio::time::timeout(timeout, setup) => stream.ok()?.ok(),
                        _ = ticket.expiry() => None,
                    },
                    _ => tokio::time::timeout(timeout, setup).await.ok()?.ok(),
                }
            };
            let Some(mut stream) = setup.await else { return };
            let stage = match stage {
                Ok(stage) => stage,
                Err(refusal) => return refuse(&mut stream, ApiError::from(refusal)).await,
            };
            let socket = match peer.is_tcp() {
                true => dup(stream.as_raw_fd()),
                false => None,
            };
            let connection = Arc::new(Connection {
                peer,
                budget,
                stage: Mutex::new(stage),
                socket,
                closing: CancellationToken::new(),
                admitted: CancellationToken::new(),
            });
            if let Some(d) = &daemon {
                d.touch();
            }
            let router = api.router(front.clone());
            let state = connection.clone();
            let service = hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(state.clone());
                let router = router.clone();
                async move { Ok::<_, Infallible>(tower::ServiceExt::oneshot(router, request).await.into_response()) }
            });
            let send_timeout = Duration::from_secs(front.config.daemon.send_timeout_secs);
            let io = hyper_util::rt::TokioIo::new(DeadlineIo::new(stream, send_timeout));
            let mut builder = hyper::server::conn::http1::Builder::new();
            // The header read timeout also closes a connection idle between requests.
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(timeout)
                .max_header_size(MAX_HEAD_BYTES)
                .max_buf_size(MAX_HEAD_BYTES.max(8192) * 2);
            let served = builder.serve_connection(io, service);
            tokio::pin!(served);
            let mut draining = false;
            loop {
                tokio::select! {
                    _ = served.as_mut() => break,
                    // Not authenticated in time, or another took its place: closed at once.
                    _ = connection.expired() => break,
                    _ = front.shutdown.cancelled(), if !draining => {
                        draining = true;
                        served.as_mut().graceful_shutdown();
                    }
                    _ = connection.closing.cancelled(), if !draining => {
                        draining = true;
                        served.as_mut().graceful_shutdown();
                    }
                }
            }
            if let Some(d) = &daemon {
                d.touch();
            }
        });
    }
}

/// A duplicate of the descriptor `fd` (None if the process has none left).
fn dup(fd: std::os::fd::RawFd) -> Option<OwnedFd> {
    // SAFETY: `fd` is the live socket of the connection being set up; borrowing it for the call
    // does not outlive it, and `try_clone_to_owned` makes a new descriptor that we own.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }.try_clone_to_owned().ok()
}

/// Answers a connection over the limits with one response, then closes it.
async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, error: ApiError) {
    let body = error.body().to_string();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        error.status.as_u16(),
        error.status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}
