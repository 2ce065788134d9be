//! ZMTP 3.x, the part a REP peer of the NULL mechanism needs (the 64-byte greeting, READY,
//! frames and multipart messages, PING answered with PONG), written here rather than taken from
//! a crate: `zeromq` 0.7 has no message size limit and cannot answer PING, and `zmq` builds the
//! C++ libzmq and is unmaintained (../shared/reference/steadytext-wire.md, section 5). Sizes are
//! checked before anything is allocated; deadlines are the caller's.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes of a greeting.
const GREETING_LEN: usize = 64;
/// Frame flags.
const MORE: u8 = 0x01;
const LONG: u8 = 0x02;
const COMMAND: u8 = 0x04;
/// Largest command body read (READY's properties, PING's context).
const MAX_COMMAND_BYTES: u64 = 4096;
/// Most frames in one message (REQ sends two: the empty delimiter and the body).
const MAX_FRAMES: usize = 16;

/// What went wrong on a ZMTP connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ZmtpError {
    /// The peer does not speak ZMTP 3 with the NULL mechanism.
    #[error("not a ZMTP 3 peer with the NULL mechanism: {0}")]
    Greeting(String),
    /// The handshake broke a rule (wrong socket type, no READY).
    #[error("ZMTP handshake refused: {0}")]
    Handshake(String),
    /// A message over the size limit, or over what may be received now.
    #[error("a message of {size} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// Its announced size so far.
        size: u64,
        /// The limit.
        limit: usize,
    },
    /// A message of more frames than a request has.
    #[error("a message of more than {MAX_FRAMES} frames")]
    TooManyFrames,
    /// The peer sent a command this side does not know, or ERROR.
    #[error("the peer sent the command {0:?}")]
    Command(String),
    /// The connection failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A ZMTP connection's byte stream.
pub(crate) trait Stream: tokio::io::AsyncBufRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncBufRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// Sends this side's greeting (ZMTP 3.1, NULL, not as-server) and checks the peer's: byte 0
/// `0xFF`, byte 9 `0x7F`, major version 3 or more, mechanism NULL. The signature's bytes 1 to 8
/// are not checked: libzmq sends `0x01` in byte 8.
pub(crate) async fn greet(io: &mut impl Stream) -> Result<(), ZmtpError> {
    let mut ours = [0u8; GREETING_LEN];
    ours[0] = 0xFF;
    ours[9] = 0x7F;
    (ours[10], ours[11]) = (3, 1);
    ours[12..16].copy_from_slice(b"NULL");
    io.write_all(&ours).await?;
    io.flush().await?;
    // The first byte decides: another protocol is refused before 64 bytes of it are awaited.
    let mut theirs = [0u8; GREETING_LEN];
    io.read_exact(&mut theirs[..1]).await?;
    if theirs[0] != 0xFF {
        return Err(ZmtpError::Greeting(format!("the first byte is {:#04x}, not 0xff", theirs[0])));
    }
    io.read_exact(&mut theirs[1..]).await?;
    if theirs[9] != 0x7F {
        return Err(ZmtpError::Greeting("byte 9 of the signature is not 0x7f".into()));
    }
    if theirs[10] < 3 {
        return Err(ZmtpError::Greeting(format!("version {}.{} (3.0 or later is needed)", theirs[10], theirs[11])));
    }
    let mechanism = &theirs[12..32];
    if mechanism != b"NULL\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0" {
        let name = String::from_utf8_lossy(mechanism).trim_end_matches('\0').to_string();
        return Err(ZmtpError::Greeting(format!("mechanism {name:?} (only NULL is served)")));
    }
    Ok(())
}

/// The NULL mechanism's handshake as a REP socket: READY with `Socket-Type: REP` sent, the peer's
/// READY read; a REQ or DEALER peer is accepted.
pub(crate) async fn handshake(io: &mut impl Stream) -> Result<(), ZmtpError> {
    let mut ready = vec![5u8];
    ready.extend_from_slice(b"READY");
    ready.push(11);
    ready.extend_from_slice(b"Socket-Type");
    ready.extend_from_slice(&3u32.to_be_bytes());
    ready.extend_from_slice(b"REP");
    write_frame(io, COMMAND, &ready).await?;
    io.flush().await?;
    let (flags, size) = read_header(io).await?;
    if flags & COMMAND == 0 {
        return Err(ZmtpError::Handshake("the peer sent a message before READY".into()));
    }
    let body = read_body(io, size, MAX_COMMAND_BYTES as usize).await?;
    let (name, properties) = command(&body)?;
    if name != b"READY" {
        return Err(ZmtpError::Handshake(format!("{:?} instead of READY", String::from_utf8_lossy(name))));
    }
    match property(properties, b"Socket-Type") {
        Some(b"REQ") | Some(b"DEALER") => Ok(()),
        Some(other) => Err(ZmtpError::Handshake(format!(
            "a {} socket cannot talk to a REP socket (use REQ or DEALER)",
            String::from_utf8_lossy(other)
        ))),
        None => Err(ZmtpError::Handshake("READY names no Socket-Type".into())),
    }
}

/// A command's name and data.
fn command(body: &[u8]) -> Result<(&[u8], &[u8]), ZmtpError> {
    let len = *body.first().ok_or_else(|| ZmtpError::Handshake("an empty command".into()))? as usize;
    let name = body.get(1..1 + len).ok_or_else(|| ZmtpError::Handshake("a command shorter than its name".into()))?;
    Ok((name, &body[1 + len..]))
}

/// The value of a READY property.
fn property<'a>(mut properties: &'a [u8], wanted: &[u8]) -> Option<&'a [u8]> {
    while let Some(&len) = properties.first() {
        let name = properties.get(1..1 + len as usize)?;
        let rest = &properties[1 + len as usize..];
        let size = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let value = rest.get(4..4 + size)?;
        if name.eq_ignore_ascii_case(wanted) {
            return Some(value);
        }
        properties = &rest[4 + size..];
    }
    None
}

async fn read_header(io: &mut impl Stream) -> Result<(u8, u64), ZmtpError> {
    let flags = io.read_u8().await?;
    let size = if flags & LONG != 0 { io.read_u64().await? } else { u64::from(io.read_u8().await?) };
    Ok((flags, size))
}

async fn read_body(io: &mut impl Stream, size: u64, limit: usize) -> Result<Vec<u8>, ZmtpError> {
    if size > limit as u64 {
        return Err(ZmtpError::TooLarge { size, limit });
    }
    let mut body = vec![0u8; size as usize];
    io.read_exact(&mut body).await?;
    Ok(body)
}

async fn write_frame(io: &mut impl Stream, flags: u8, body: &[u8]) -> std::io::Result<()> {
    if body.len() > 255 {
        io.write_u8(flags | LONG).await?;
        io.write_u64(body.len() as u64).await?;
    } else {
        io.write_u8(flags).await?;
        io.write_u8(body.len() as u8).await?;
    }
    io.write_all(body).await
}

/// Waits until the peer sends something (or closes: then the read that follows fails).
pub(crate) async fn readable(io: &mut impl Stream) -> std::io::Result<()> {
    use tokio::io::AsyncBufReadExt;
    io.fill_buf().await.map(|_| ())
}

/// Reads one message (its frames), answering PING with PONG on the way. `reserve(total)` is
/// asked before the bytes of each frame are allocated, with the message's size so far; false
/// refuses the message. The message is at most `limit` bytes.
pub(crate) async fn read_message(
    io: &mut impl Stream,
    limit: usize,
    mut reserve: impl FnMut(usize) -> bool,
) -> Result<Vec<Vec<u8>>, ZmtpError> {
    let mut frames = Vec::new();
    let mut total = 0u64;
    loop {
        let (flags, size) = read_header(io).await?;
        if flags & COMMAND != 0 {
            let body = read_body(io, size, MAX_COMMAND_BYTES as usize).await?;
            let (name, data) = command(&body)?;
            match name {
                // PING: TTL (2 bytes), then a context of up to 16 bytes the PONG carries back.
                b"PING" => {
                    let context = data.get(2..).unwrap_or_default();
                    let mut pong = vec![4u8];
                    pong.extend_from_slice(b"PONG");
                    pong.extend_from_slice(&context[..context.len().min(16)]);
                    write_frame(io, COMMAND, &pong).await?;
                    io.flush().await?;
                }
                b"PONG" => {}
                other => return Err(ZmtpError::Command(String::from_utf8_lossy(other).into_owned())),
            }
            continue;
        }
        total += size;
        if total > limit as u64 || !reserve(total as usize) {
            return Err(ZmtpError::TooLarge { size: total, limit });
        }
        if frames.len() == MAX_FRAMES {
            return Err(ZmtpError::TooManyFrames);
        }
        frames.push(read_body(io, size, limit).await?);
        if flags & MORE == 0 {
            return Ok(frames);
        }
    }
}

/// Sends one message of `frames` and flushes it.
pub(crate) async fn write_message(io: &mut impl Stream, frames: &[&[u8]]) -> std::io::Result<()> {
    for (i, frame) in frames.iter().enumerate() {
        let flags = if i + 1 < frames.len() { MORE } else { 0 };
        write_frame(io, flags, frame).await?;
    }
    io.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufStream;

    /// A peer's greeting as libzmq 4.3 sends it (version 3.1, NULL; byte 8 is 0x01).
    fn libzmq_greeting() -> Vec<u8> {
        let mut g = vec![0xFF, 0, 0, 0, 0, 0, 0, 0, 1, 0x7F, 3, 1];
        g.extend_from_slice(b"NULL");
        g.resize(64, 0);
        g
    }

    fn ready(socket_type: &[u8]) -> Vec<u8> {
        let mut body = vec![5u8];
        body.extend_from_slice(b"READY");
        body.push(11);
        body.extend_from_slice(b"Socket-Type");
        body.extend_from_slice(&(socket_type.len() as u32).to_be_bytes());
        body.extend_from_slice(socket_type);
        body.push(8);
        body.extend_from_slice(b"Identity");
        body.extend_from_slice(&0u32.to_be_bytes());
        let mut frame = vec![COMMAND, body.len() as u8];
        frame.extend(body);
        frame
    }

    async fn talk(peer_sends: Vec<u8>) -> (Result<Vec<Vec<u8>>, ZmtpError>, Vec<u8>) {
        let (server, mut client) = tokio::io::duplex(1 << 20);
        client.write_all(&peer_sends).await.unwrap();
        client.shutdown().await.unwrap();
        let mut io = BufStream::new(server);
        let result = async {
            greet(&mut io).await?;
            handshake(&mut io).await?;
            read_message(&mut io, 1024, |_| true).await
        }
        .await;
        drop(io);
        let mut sent = Vec::new();
        client.read_to_end(&mut sent).await.unwrap();
        (result, sent)
    }

    #[tokio::test]
    async fn a_req_peer_is_greeted_and_its_message_read_with_pings_answered() {
        let mut peer = libzmq_greeting();
        peer.extend(ready(b"REQ"));
        peer.extend([COMMAND, 9, 4, b'P', b'I', b'N', b'G', 0, 10, b'h', b'i']);
        peer.extend([MORE, 0]);
        peer.extend([LONG, 0, 0, 0, 0, 0, 0, 1, 0]);
        peer.extend(vec![b'x'; 256]);
        let (message, sent) = talk(peer).await;
        let message = message.unwrap();
        assert_eq!(message.len(), 2);
        assert_eq!((message[0].len(), message[1].len()), (0, 256));
        assert_eq!(&sent[..12], &[0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0x7F, 3, 1]);
        let pong = [COMMAND, 7, 4, b'P', b'O', b'N', b'G', b'h', b'i'];
        assert!(sent.windows(pong.len()).any(|w| w == pong), "PING is answered with its context");
    }

    #[tokio::test]
    async fn wrong_greetings_socket_types_and_sizes_are_refused() {
        let (http, _) = talk(b"GET / HTTP/1.1\r\n\r\n".to_vec()).await;
        assert!(matches!(http, Err(ZmtpError::Greeting(_))), "{http:?}");
        let mut plain = libzmq_greeting();
        plain[12..17].copy_from_slice(b"PLAIN");
        assert!(matches!(talk(plain).await.0, Err(ZmtpError::Greeting(m)) if m.contains("PLAIN")));
        let mut old = libzmq_greeting();
        old[10] = 2;
        assert!(matches!(talk(old).await.0, Err(ZmtpError::Greeting(m)) if m.contains("version 2")));
        let mut sub = libzmq_greeting();
        sub.extend(ready(b"SUB"));
        assert!(matches!(talk(sub).await.0, Err(ZmtpError::Handshake(m)) if m.contains("SUB")));
        // 2^62 bytes announced: refused before anything is allocated.
        let mut huge = libzmq_greeting();
        huge.extend(ready(b"REQ"));
        huge.extend([LONG, 0x40, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(talk(huge).await.0, Err(ZmtpError::TooLarge { .. })));
    }
}
