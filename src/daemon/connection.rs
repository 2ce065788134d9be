//! One client connection: JSON-RPC framing (one request per line, bounded), the connection's
//! budgets and authentication, dispatch to [`methods`], responses and stream pieces written
//! under a send deadline.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use crate::core::{PieceSink, SinkFuture};
use crate::error::Error;
use crate::protocol::wire::{self, null_id, Decoded, Incoming, Refused, Reply};
use crate::protocol::{Method, MAX_LINE_BYTES};

use super::admission::{ListenerBudget, PendingTicket, ReceiveBudget, Received, Slots};
use super::call::Call;
use super::methods;
use super::peer::Peer;
use super::state::Daemon;

/// Longest line read before a TCP connection has authenticated (its `auth` request).
const MAX_AUTH_LINE_BYTES: usize = 4096;

/// The first request a TCP client must send.
const AUTH_FIRST: &str = "on a TCP connection the first request must be \
    {\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"auth\",\"params\":{\"key\":\"...\"}} with the daemon's API key \
    (stctl sends it from STEADYTEXT_API_KEY or --api-key-file); the connection is closed";

/// Serves one accepted connection of `peer` on a listener with `budget` until the client leaves,
/// idles too long, or shutdown begins. `stream` yields the connection once it is set up (a TLS
/// handshake). A Unix connection takes its slots (see [`super::admission`]) at once; a TCP one
/// waits among the unauthenticated, must send `auth` first within `auth_timeout_secs` (its
/// handshake included), and takes its slots then.
pub(crate) fn spawn<S, F>(daemon: &Arc<Daemon>, budget: ListenerBudget, stream: F, peer: Peer)
where
    S: AsyncRead + AsyncWrite + AsRawFd + Send + Unpin + 'static,
    F: std::future::Future<Output = std::io::Result<S>> + Send + 'static,
{
    let d = daemon.clone();
    daemon.track(async move {
        let _open = d.metrics().connection();
        d.touch();
        let mut session = match peer.is_tcp() {
            true => Session { peer, budget, stage: Stage::Pending(d.admission().pending()) },
            false => {
                let admitted = d.admission().admit(&budget, &peer, d.metrics().connections());
                Session {
                    peer,
                    budget,
                    stage: admitted.map_or_else(Stage::Refused, |_slots| Stage::Admitted { _slots }),
                }
            }
        };
        let setup = Duration::from_secs(d.config().daemon.line_timeout_secs);
        let stream = tokio::select! {
            stream = tokio::time::timeout(setup, stream) => match stream {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return tracing::debug!(?peer, error = %e, "connection setup failed"),
                Err(_) => return tracing::debug!(?peer, "connection setup timed out"),
            },
            _ = session.expired() => return tracing::debug!(?peer, "connection closed before it was set up"),
        };
        let fd = stream.as_raw_fd();
        let (read, write) = tokio::io::split(stream);
        let deadline = Duration::from_secs(d.config().daemon.send_timeout_secs);
        let mut out = Out::new(Box::new(write), fd, peer.is_tcp(), deadline);
        if let Stage::Refused(error) = &session.stage {
            tracing::debug!(?peer, error = %error, "connection refused");
            let _ = out.send(&Reply::error(null_id(), error)).await;
            out.close_politely(&mut BufReader::new(read)).await;
        } else {
            serve(&d, BufReader::new(read), &mut out, &mut session).await;
        }
        d.touch();
    });
}

async fn serve<R: AsyncRead + Unpin>(daemon: &Daemon, mut reader: BufReader<R>, out: &mut Out, session: &mut Session) {
    let config = daemon.config();
    let mut limits = LineLimits {
        idle: (config.daemon.idle_timeout_secs > 0).then(|| Duration::from_secs(config.daemon.idle_timeout_secs)),
        line: Duration::from_secs(config.daemon.line_timeout_secs),
        max_bytes: MAX_LINE_BYTES,
    };
    loop {
        // Before the key, only the small `auth` line is read.
        limits.max_bytes = if session.is_admitted() { MAX_LINE_BYTES } else { MAX_AUTH_LINE_BYTES };
        let mut held = Received::default();
        let line = tokio::select! {
            _ = daemon.shutdown().cancelled() => break,
            why = session.expired() => {
                let _ = out.send(&Reply::error(null_id(), &why)).await;
                out.close_politely(&mut reader).await;
                break;
            }
            line = read_line(&mut reader, &limits, daemon.receive_budget(), &mut held) => line,
        };
        // Lines a client sent before it hung up are not run: nobody would read the answers.
        if out.peer_gone() {
            break;
        }
        let written = match line {
            Ok(Line::Eof) | Err(_) | Ok(Line::Idle) => break,
            Ok(Line::Unfinished) => {
                let _ = out.send(&Reply::error(null_id(), &Error::LineTimeout { secs: limits.line.as_secs() })).await;
                out.close_politely(&mut reader).await;
                break;
            }
            Ok(Line::TooLong) if !session.is_admitted() => {
                let _ = out.send(&Reply::error(null_id(), &Error::Unauthorized(AUTH_FIRST.into()))).await;
                out.close_politely(&mut reader).await;
                break;
            }
            Ok(Line::TooLong) => {
                out.send(&Reply::error(null_id(), &Error::LineTooLong { limit: MAX_LINE_BYTES })).await
            }
            Ok(Line::Busy) => {
                let _ = out
                    .send(&Reply::error(
                        null_id(),
                        &Error::Overloaded {
                            kind: "request",
                            queued: daemon.metrics().in_flight(),
                            retry_after_ms: 1000,
                        },
                    ))
                    .await;
                out.close_politely(&mut reader).await;
                break;
            }
            Ok(Line::Text(bytes)) if looks_like_http(&bytes) => {
                let error = Error::NotJsonRpc(
                    "this is steadytext's JSON-RPC port (one JSON object per line), not HTTP; closing the connection"
                        .into(),
                );
                let _ = out.send(&Reply::error(null_id(), &error)).await;
                out.close_politely(&mut reader).await;
                break;
            }
            Ok(Line::Text(bytes)) => {
                let _busy = daemon.metrics().request();
                let written = match handle_line(daemon, &bytes, out, session).await {
                    Some(reply) => out.send_raw(reply).await,
                    None => Ok(()),
                };
                if bytes.len() > super::memory::LARGE_REQUEST_BYTES {
                    drop(bytes);
                    super::memory::release_memory();
                }
                if !session.is_admitted() {
                    out.close_politely(&mut reader).await;
                    break;
                }
                written
            }
        };
        if written.is_err() || out.is_broken() {
            break;
        }
    }
}

/// Whether a line is an HTTP request line (a browser or curl pointed at this port): it is
/// refused before any header or body line can run as a request.
fn looks_like_http(line: &[u8]) -> bool {
    const METHODS: [&[u8]; 9] =
        [b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE "];
    let line = line.trim_ascii();
    METHODS.iter().any(|m| line.starts_with(m)) || line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0")
}

/// What a connection has established.
pub(crate) struct Session {
    /// Who the client is.
    pub(crate) peer: Peer,
    /// Its listener's budget (a TCP connection takes a slot of it once authenticated).
    budget: ListenerBudget,
    stage: Stage,
}

/// Where a connection stands with the budgets.
enum Stage {
    /// A TCP connection that has not authenticated yet.
    Pending(PendingTicket),
    /// Requests may run.
    Admitted {
        /// Held for as long as the connection is open.
        _slots: Slots,
    },
    /// Over a limit: it gets this error and is closed.
    Refused(Error),
}

impl Session {
    /// Whether requests may run: on Unix sockets at once, after `auth` on TCP.
    fn is_admitted(&self) -> bool {
        matches!(self.stage, Stage::Admitted { .. })
    }

    /// Completes when a connection still waiting to authenticate must close (never otherwise).
    async fn expired(&self) -> Error {
        match &self.stage {
            Stage::Pending(ticket) => ticket.expiry().await,
            _ => std::future::pending().await,
        }
    }

    /// After a correct key: takes the connection's slots.
    fn authenticate(&mut self, daemon: &Daemon) -> Result<(), Error> {
        if let Stage::Pending(_) = self.stage {
            let slots = daemon.admission().admit(&self.budget, &self.peer, daemon.metrics().connections())?;
            self.stage = Stage::Admitted { _slots: slots };
        }
        Ok(())
    }
}

/// Handles one line: a request, or a batch (a JSON array of requests, answered by one array of
/// the responses, notifications left out). Returns the serialized answer, if any.
async fn handle_line(daemon: &Daemon, line: &[u8], out: &mut Out, session: &mut Session) -> Option<Vec<u8>> {
    match wire::decode(line) {
        Decoded::One(request) => handle(daemon, request, out, session).await.map(|r| encode(&r)),
        Decoded::BadBatch(error) => Some(encode(&Reply::error(null_id(), &error))),
        Decoded::Batch(requests) => {
            let mut replies = Vec::new();
            for request in requests {
                if let Some(reply) = handle(daemon, request, out, session).await {
                    replies.push(reply);
                }
            }
            (!replies.is_empty()).then(|| encode(&replies))
        }
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// Handles one decoded request; `None` for notifications (no id), which get no response.
async fn handle<'l>(
    daemon: &Daemon,
    request: Result<Incoming<'l>, Refused<'l>>,
    out: &mut Out,
    session: &mut Session,
) -> Option<Reply<'l>> {
    let request = match request {
        Ok(request) => request,
        Err((id, error)) => return Some(Reply::error(id.unwrap_or(null_id()), &error)),
    };
    let id = request.id;
    let auth = request.method == Method::Auth.name();
    if !session.is_admitted() && !auth {
        return Some(Reply::error(id.unwrap_or(null_id()), &Error::Unauthorized(AUTH_FIRST.into())));
    }
    let mut sink = LineSink { out, id: id.unwrap_or(null_id()) };
    let mut call = Call::new(daemon, &mut sink, session.peer);
    let mut result = methods::run(&mut call, &request.method, request.params).await;
    if auth && result.is_ok() {
        if let Err(refused) = session.authenticate(daemon) {
            result = Err(refused);
        }
    }
    Some(Reply::new(id.or((!session.is_admitted()).then(null_id))?, result))
}

/// A request's stream pieces, as `generate.piece` notifications on its connection.
struct LineSink<'a> {
    out: &'a mut Out,
    id: &'a RawValue,
}

impl PieceSink for LineSink<'_> {
    fn piece(&mut self, text: String) -> SinkFuture<'_> {
        Box::pin(self.out.send_raw(wire::piece(self.id, &text)))
    }

    fn is_broken(&self) -> bool {
        self.out.is_broken()
    }

    fn peer_gone(&self) -> bool {
        self.out.peer_gone()
    }
}

/// The writing side of a connection. Every write has a deadline: a client that leaves its
/// answers unread that long is cut off (the connection closes), so it can only stall itself.
pub(crate) struct Out {
    write: Box<dyn AsyncWrite + Send + Unpin>,
    fd: RawFd,
    tcp: bool,
    deadline: Duration,
    broken: bool,
}

impl Out {
    fn new(write: Box<dyn AsyncWrite + Send + Unpin>, fd: RawFd, tcp: bool, deadline: Duration) -> Self {
        Out { write, fd, tcp, deadline, broken: false }
    }

    /// Writes one JSON line; fails on an I/O error or when the deadline passes.
    pub(crate) async fn send<T: Serialize>(&mut self, value: &T) -> std::io::Result<()> {
        self.send_raw(serde_json::to_vec(value).map_err(std::io::Error::other)?).await
    }

    /// Writes one already encoded JSON value as a line (see [`Out::send`]).
    pub(crate) async fn send_raw(&mut self, mut bytes: Vec<u8>) -> std::io::Result<()> {
        if self.broken {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        bytes.push(b'\n');
        let write = async {
            self.write.write_all(&bytes).await?;
            self.write.flush().await
        };
        let outcome = match tokio::time::timeout(self.deadline, write).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client read nothing for {} s", self.deadline.as_secs_f64()),
            )),
        };
        self.broken = outcome.is_err();
        outcome
    }

    /// Closes a connection after an error answer so that the client can read that answer: shuts
    /// the sending side, then reads and discards what the client still sends (a socket closed
    /// with unread input is reset, and a reset can discard the answer on its way), for at most
    /// [`LINGER`] and [`LINGER_BYTES`].
    pub(crate) async fn close_politely<R: AsyncRead + Unpin>(&mut self, reader: &mut R) {
        let _ = tokio::time::timeout(LINGER, self.write.shutdown()).await;
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        let _ = tokio::time::timeout(LINGER, async {
            while drained < LINGER_BYTES {
                match tokio::io::AsyncReadExt::read(reader, &mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        })
        .await;
        self.broken = true;
    }

    /// Whether a write failed or timed out (the connection is then closed).
    pub(crate) fn is_broken(&self) -> bool {
        self.broken
    }

    /// Whether the peer has closed the connection, without reading from it. On a Unix socket a
    /// full close is exact (POLLHUP; a client that only shuts down its sending side, like
    /// `echo ... | socat`, still gets its answers). Over TCP a closed client is indistinguishable
    /// from one that shut down sending, so its FIN (POLLRDHUP) counts as gone.
    pub(crate) fn peer_gone(&self) -> bool {
        super::peer::hung_up(self.fd, self.tcp)
    }
}

/// How long, and how many bytes, a connection closed on an error still reads its client's input.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 64 * 1024;

/// One line read from a connection.
enum Line {
    Text(Vec<u8>),
    TooLong,
    Eof,
    /// No request began within the idle limit.
    Idle,
    /// A request began but was not finished within the line limit.
    Unfinished,
    /// The lines being received by every connection took the whole [`ReceiveBudget`].
    Busy,
}

/// How long a connection may wait before a request, take to send one, and how long it may be.
struct LineLimits {
    idle: Option<Duration>,
    line: Duration,
    max_bytes: usize,
}

/// Reads one `\n`-terminated line of at most `limits.max_bytes`; a longer one is skipped whole.
/// The first byte must come within `limits.idle`, the rest within `limits.line` of it. The
/// line's bytes are held from `budget` in `held` as they arrive.
async fn read_line<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    limits: &LineLimits,
    budget: &ReceiveBudget,
    held: &mut Received,
) -> std::io::Result<Line> {
    let mut line = Vec::new();
    let mut too_long = false;
    let mut deadline = limits.idle.map(|idle| tokio::time::Instant::now() + idle);
    loop {
        let fill = reader.fill_buf();
        let buf = match deadline {
            None => fill.await?,
            Some(at) => match tokio::time::timeout_at(at, fill).await {
                Ok(buf) => buf?,
                Err(_) if line.is_empty() && !too_long => return Ok(Line::Idle),
                Err(_) => return Ok(Line::Unfinished),
            },
        };
        if !buf.is_empty() && line.is_empty() && !too_long && !buf.iter().all(u8::is_ascii_whitespace) {
            deadline = Some(tokio::time::Instant::now() + limits.line);
        }
        if buf.is_empty() {
            return Ok(match (line.is_empty(), too_long) {
                (_, true) => Line::TooLong,
                (true, false) => Line::Eof,
                (false, false) => Line::Text(line),
            });
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], i + 1),
            None => (buf, buf.len()),
        };
        let found = done > chunk.len();
        if !too_long {
            if line.len() + chunk.len() > limits.max_bytes {
                too_long = true;
                line = Vec::new();
            } else if !budget.hold(held, line.len() + chunk.len()) {
                return Ok(Line::Busy);
            } else {
                line.extend_from_slice(chunk);
            }
        }
        reader.consume(done);
        if found {
            if too_long {
                return Ok(Line::TooLong);
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                line.clear();
                continue;
            }
            return Ok(Line::Text(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn lines_are_split_and_limited() {
        let big = vec![b'x'; MAX_LINE_BYTES + 10];
        let mut input = b"{\"a\":1}\n\n  \n".to_vec();
        input.extend_from_slice(&big);
        input.extend_from_slice(b"\nlast");
        let mut reader = BufReader::new(&input[..]);
        let limits = LineLimits { idle: None, line: Duration::from_secs(5), max_bytes: MAX_LINE_BYTES };
        let budget = ReceiveBudget::new(64);
        let mut read = async || read_line(&mut reader, &limits, &budget, &mut Received::default()).await.unwrap();
        assert!(matches!(read().await, Line::Text(t) if t == b"{\"a\":1}"));
        assert!(matches!(read().await, Line::TooLong));
        assert!(matches!(read().await, Line::Text(t) if t == b"last"));
        assert!(matches!(read().await, Line::Eof));
    }

    #[tokio::test]
    async fn idle_and_unfinished_lines_time_out() {
        let limits =
            LineLimits { idle: Some(Duration::from_millis(50)), line: Duration::from_millis(50), max_bytes: 1024 };
        let (mut client, server) = tokio::io::duplex(1024);
        let mut reader = BufReader::new(server);
        let budget = ReceiveBudget::new(1);
        let mut held = Received::default();
        assert!(matches!(read_line(&mut reader, &limits, &budget, &mut held).await.unwrap(), Line::Idle));
        client.write_all(b"{\"jsonrpc\"").await.unwrap();
        let started = Instant::now();
        assert!(matches!(read_line(&mut reader, &limits, &budget, &mut held).await.unwrap(), Line::Unfinished));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_write_nobody_reads_fails_at_its_deadline() {
        let (near, _far) = tokio::io::duplex(64);
        let mut out = Out::new(Box::new(near), -1, false, Duration::from_millis(50));
        let started = Instant::now();
        let err = out.send_raw(wire::piece(null_id(), &"x".repeat(1000))).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(out.is_broken());
    }
}
