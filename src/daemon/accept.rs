//! The listeners: what serves each one's connections (JSON-RPC or HTTP), their accept loops (each
//! listener with its own connection budget), TLS on TCP, and the refusal of TCP listeners the
//! daemon cannot guard.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use super::admission::ListenerBudget;
use super::listen::{Protocol, Socket, StdListener};
use super::peer::Peer;
use super::state::Daemon;
use super::{connection, http, sdk};

/// What serves a listener's connections.
#[derive(Clone)]
pub(crate) enum Server {
    /// JSON-RPC lines.
    Rpc(Arc<Daemon>),
    /// The HTTP front, speaking one API.
    Http(Arc<http::Front>, http::Api),
    /// SteadyText's daemon protocol.
    Sdk(Arc<Daemon>),
}

impl Server {
    /// Serves one accepted connection of a listener with `budget` once `setup` (a TLS handshake
    /// or nothing) gives it.
    fn spawn<S, F>(&self, setup: F, peer: Peer, budget: ListenerBudget)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + std::os::fd::AsRawFd + Send + Unpin + 'static,
        F: std::future::Future<Output = std::io::Result<S>> + Send + 'static,
    {
        match self {
            Server::Rpc(daemon) => connection::spawn(daemon, budget, setup, peer),
            Server::Http(front, api) => front.spawn_connection(setup, peer, budget, *api),
            Server::Sdk(daemon) => sdk::spawn(daemon, budget, setup, peer),
        }
    }

    /// Cancelled when accepting must stop.
    fn shutdown(&self) -> CancellationToken {
        match self {
            Server::Rpc(daemon) | Server::Sdk(daemon) => daemon.shutdown().clone(),
            Server::Http(front, _) => front.shutdown().clone(),
        }
    }
}

/// Starts an accept loop per listener (TCP ones speak TLS when `tls` is set); returns the
/// socket files to remove at exit.
pub(crate) fn listen(
    server: &Server,
    listeners: Vec<StdListener>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    max_connections: usize,
) -> Result<Vec<PathBuf>> {
    let mut owned_paths = Vec::new();
    for listener in listeners {
        // SteadyText's SDK cannot speak TLS: its listeners are loopback only, in clear text.
        let tls = tls.clone().filter(|_| listener.is_tcp() && listener.protocol != Protocol::Zmtp);
        let server = &(server.clone(), ListenerBudget::new(max_connections));
        tracing::info!(listener = %listener.name, tls = tls.is_some(), "listening");
        owned_paths.extend(listener.owned_path);
        match listener.socket {
            Socket::Unix(listener) => {
                listener.set_nonblocking(true)?;
                let listener = Arc::new(tokio::net::UnixListener::from_std(listener)?);
                spawn_accept_loop(server, move || {
                    let l = listener.clone();
                    async move { unix_peer(l.accept().await?.0) }
                });
            }
            Socket::Tcp(listener) => {
                listener.set_nonblocking(true)?;
                let listener = Arc::new(tokio::net::TcpListener::from_std(listener)?);
                let accept = move || {
                    let l = listener.clone();
                    async move {
                        let (s, addr) = l.accept().await?;
                        s.set_nodelay(true)?;
                        Ok((s, Peer::Remote(addr.ip())))
                    }
                };
                match tls {
                    None => spawn_accept_loop(server, move || {
                        let accepted = accept();
                        async move { accepted.await.map(|(s, peer)| (std::future::ready(Ok(s)), peer)) }
                    }),
                    Some(acceptor) => spawn_accept_loop(server, move || {
                        let (accepted, acceptor) = (accept(), acceptor.clone());
                        async move { accepted.await.map(|(s, peer)| (acceptor.accept(s), peer)) }
                    }),
                }
            }
        }
    }
    Ok(owned_paths)
}

/// Refuses TCP listeners the daemon cannot guard: without an API key, or on a non-loopback
/// address without TLS (keys and answers would cross the network in clear text).
pub(crate) fn check_tcp_listeners(listeners: &[StdListener], have_key: bool, have_tls: bool) -> Result<()> {
    for StdListener { socket, name, protocol, .. } in listeners {
        let Socket::Tcp(listener) = socket else { continue };
        let addr = listener.local_addr().with_context(|| format!("listener {name}"))?;
        if *protocol == Protocol::Zmtp {
            // Its SDK sends neither a key nor TLS: loopback only, any local user may use it.
            if !addr.ip().is_loopback() {
                anyhow::bail!(
                    "refusing to serve SteadyText's protocol on {addr} ({name}): its SDK can send neither a key nor TLS, \
                     so it is served on a loopback address only (127.0.0.1:5555)"
                );
            }
            continue;
        }
        if !addr.ip().is_loopback() && !have_tls {
            anyhow::bail!(
                "refusing to serve JSON-RPC on {addr} ({name}) in clear text: it is not a loopback address; \
                 configure TLS ([daemon] tls_cert_file and tls_key_file, or the credentials tls-cert and tls-key) \
                 or listen on 127.0.0.1 or ::1"
            );
        }
        if !have_key {
            anyhow::bail!(
                "the TCP listener {addr} ({name}) needs an API key: write one (`openssl rand -hex 32`) to a file readable \
                 only by the daemon and name it in [daemon] api_key_file or STEADYTEXT_API_KEY_FILE, or pass it as the \
                 systemd credential `api-key` (LoadCredential=api-key:FILE)"
            );
        }
    }
    Ok(())
}

/// A Unix connection (ready at once) with its peer's credentials.
pub(crate) fn unix_peer(
    stream: tokio::net::UnixStream,
) -> std::io::Result<(std::future::Ready<std::io::Result<tokio::net::UnixStream>>, Peer)> {
    let peer = Peer::of_unix(&stream).ok_or_else(|| std::io::Error::other("no peer credentials"))?;
    Ok((std::future::ready(Ok(stream)), peer))
}

/// Accepts connections until shutdown begins; each one is set up (`Setup`: a TLS handshake or
/// nothing) and served by its own task.
pub(crate) fn spawn_accept_loop<S, Setup, F, Fut>((server, budget): &(Server, ListenerBudget), mut accept: F)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + std::os::fd::AsRawFd + Send + Unpin + 'static,
    Setup: std::future::Future<Output = std::io::Result<S>> + Send + 'static,
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<(Setup, Peer)>> + Send,
{
    let (server, budget) = (server.clone(), budget.clone());
    let shutdown = server.shutdown();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = accept() => match r {
                    Ok((stream, peer)) => server.spawn(stream, peer, budget.clone()),
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    });
}
