//! One client connection: JSON-RPC framing (one request per line, bounded), dispatch to
//! [`methods`], responses and stream pieces written under a send deadline, and the request log.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use crate::error::Error;
use crate::protocol::{Piece, Request, Response, RpcError, MAX_LINE_BYTES, PIECE_NOTIFICATION};

use super::methods::{self, Call};
use super::state::Daemon;

/// Serves one accepted connection until the client leaves or shutdown begins.
pub(crate) fn spawn<S>(daemon: &Arc<Daemon>, stream: S)
where
    S: AsyncRead + AsyncWrite + AsRawFd + Send + Unpin + 'static,
{
    let d = daemon.clone();
    daemon.track(async move {
        let _open = d.metrics().connection();
        d.touch();
        let fd = stream.as_raw_fd();
        let (read, write) = tokio::io::split(stream);
        let mut out = Out::new(Box::new(write), fd, Duration::from_secs(d.config().daemon.send_timeout_secs));
        match d.connection_slot() {
            Some(_slot) => serve(&d, BufReader::new(read), &mut out).await,
            None => {
                let error = Error::TooManyConnections { open: d.metrics().connections() };
                let _ = out.send(&Response::err(Value::Null, RpcError::from(&error))).await;
            }
        }
        d.touch();
    });
}

async fn serve<R: AsyncRead + Unpin>(daemon: &Daemon, mut reader: BufReader<R>, out: &mut Out) {
    loop {
        let line = tokio::select! {
            _ = daemon.shutdown().cancelled() => break,
            line = read_line(&mut reader) => line,
        };
        let response = match line {
            Ok(Line::Eof) | Err(_) => break,
            Ok(Line::TooLong) => {
                Some(Response::err(Value::Null, RpcError::from(&Error::LineTooLong { limit: MAX_LINE_BYTES })))
            }
            Ok(Line::Text(bytes)) => {
                let _busy = daemon.metrics().request();
                handle(daemon, &bytes, out).await
            }
        };
        if let Some(response) = response {
            if out.send(&response).await.is_err() {
                break;
            }
        }
        if out.is_broken() {
            break;
        }
    }
}

/// What a method served, for the request's log line.
#[derive(Default)]
pub(crate) struct Served {
    /// The model that answered.
    pub(crate) model: String,
    /// Whether the answer came from the cache.
    pub(crate) cached: bool,
}

/// Handles one request line; `None` for notifications (no id), which get no response.
async fn handle(daemon: &Daemon, line: &[u8], out: &mut Out) -> Option<Response> {
    let started = Instant::now();
    let value: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return Some(Response::err(Value::Null, RpcError::from(&Error::Parse(e.to_string())))),
    };
    let id = value.get("id").cloned().unwrap_or(Value::Null);
    let request = match serde_json::from_value::<Request>(value) {
        Ok(r) if r.jsonrpc == "2.0" => r,
        Ok(_) => return Some(Response::err(id, Error::NotJsonRpc("jsonrpc must be \"2.0\"".into()).into())),
        Err(e) => {
            let error = Error::NotJsonRpc(format!("not a JSON-RPC 2.0 request: {e}"));
            return Some(Response::err(id, error.into()));
        }
    };
    let request_id = daemon.next_request_id();
    let mut call = Call { daemon, id: &id, out, served: Served::default() };
    let result = methods::dispatch(&mut call, &request.method, request.params).await;
    let Served { model, cached } = call.served;
    let duration_ms = started.elapsed().as_secs_f64() * 1e3;
    let method = &request.method;
    match &result {
        Ok(_) => tracing::info!(request_id, method = %method, duration_ms, cached, model, "request served"),
        Err(e) => tracing::warn!(request_id, method = %method, duration_ms, error = %e, "request failed"),
    }
    daemon.metrics().record(method, started.elapsed(), result.is_ok());
    request.id.as_ref()?;
    Some(match result {
        Ok(v) => Response::ok(id, v),
        Err(e) => Response::err(id, e.into()),
    })
}

/// The writing side of a connection. Every write has a deadline: a client that leaves its
/// answers unread that long is cut off (the connection closes), so it can only stall itself.
pub(crate) struct Out {
    write: Box<dyn AsyncWrite + Send + Unpin>,
    fd: RawFd,
    deadline: Duration,
    broken: bool,
}

impl Out {
    fn new(write: Box<dyn AsyncWrite + Send + Unpin>, fd: RawFd, deadline: Duration) -> Self {
        Out { write, fd, deadline, broken: false }
    }

    /// Writes one JSON line; fails on an I/O error or when the deadline passes.
    pub(crate) async fn send<T: Serialize>(&mut self, value: &T) -> std::io::Result<()> {
        if self.broken {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        let mut bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
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

    /// Sends a `generate.piece` notification for the request `id`.
    pub(crate) async fn piece(&mut self, id: &Value, text: String) -> std::io::Result<()> {
        self.send(&json!({ "jsonrpc": "2.0", "method": PIECE_NOTIFICATION, "params": Piece { id: id.clone(), text } }))
            .await
    }

    /// Whether a write failed or timed out (the connection is then closed).
    pub(crate) fn is_broken(&self) -> bool {
        self.broken
    }

    /// Whether the peer has fully closed the connection (POLLHUP), without reading from it.
    pub(crate) fn peer_gone(&self) -> bool {
        let mut pfd = libc::pollfd { fd: self.fd, events: 0, revents: 0 };
        // SAFETY: one valid pollfd, zero timeout; fd belongs to this live connection.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n > 0 && pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0
    }
}

/// One line read from a connection.
enum Line {
    Text(Vec<u8>),
    TooLong,
    Eof,
}

/// Reads one `\n`-terminated line of at most [`MAX_LINE_BYTES`]; a longer one is skipped whole.
async fn read_line<R: AsyncBufReadExt + Unpin>(reader: &mut R) -> std::io::Result<Line> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buf = reader.fill_buf().await?;
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
            if line.len() + chunk.len() > MAX_LINE_BYTES {
                too_long = true;
                line = Vec::new();
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

    #[tokio::test]
    async fn lines_are_split_and_limited() {
        let big = vec![b'x'; MAX_LINE_BYTES + 10];
        let mut input = b"{\"a\":1}\n\n  \n".to_vec();
        input.extend_from_slice(&big);
        input.extend_from_slice(b"\nlast");
        let mut reader = BufReader::new(&input[..]);
        assert!(matches!(read_line(&mut reader).await.unwrap(), Line::Text(t) if t == b"{\"a\":1}"));
        assert!(matches!(read_line(&mut reader).await.unwrap(), Line::TooLong));
        assert!(matches!(read_line(&mut reader).await.unwrap(), Line::Text(t) if t == b"last"));
        assert!(matches!(read_line(&mut reader).await.unwrap(), Line::Eof));
    }

    #[tokio::test]
    async fn a_write_nobody_reads_fails_at_its_deadline() {
        let (near, _far) = tokio::io::duplex(64);
        let mut out = Out::new(Box::new(near), -1, Duration::from_millis(50));
        let started = Instant::now();
        let err = out.piece(&json!(1), "x".repeat(1000)).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(out.is_broken());
    }
}
