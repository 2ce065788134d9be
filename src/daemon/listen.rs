//! Listening sockets: handed over by systemd (socket activation) or bound by hand
//! (`--listen unix:PATH`, `tcp:ADDR`, `http:ADDR`, `ollama:ADDR`...).

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::client::Target;

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// JSON-RPC lines (`docs/protocol.md`).
    JsonRpc,
    /// HTTP: the OpenAI-compatible front.
    Http,
    /// HTTP: Ollama's API.
    Ollama,
    /// ZMTP: SteadyText's daemon protocol (its Python SDK).
    Zmtp,
}

impl Protocol {
    /// The protocol of a socket systemd passed, from its `FileDescriptorName=`: names starting
    /// with `http` are HTTP, with `ollama` Ollama's API, with `zmq` SteadyText's protocol.
    fn of_fd_name(name: &str) -> Self {
        if name.starts_with("http") {
            Protocol::Http
        } else if name.starts_with("ollama") {
            Protocol::Ollama
        } else if name.starts_with("zmq") {
            Protocol::Zmtp
        } else {
            Protocol::JsonRpc
        }
    }

    /// The scheme of its `--listen` addresses (`http:`, `ollama:`; `+unix:` after it for a
    /// Unix socket), None for JSON-RPC.
    fn scheme(self) -> Option<&'static str> {
        match self {
            Protocol::JsonRpc => None,
            Protocol::Http => Some("http"),
            Protocol::Ollama => Some("ollama"),
            Protocol::Zmtp => Some("zmq"),
        }
    }
}

/// A listening socket, still in blocking std form.
pub enum Socket {
    /// A Unix stream socket.
    Unix(std::os::unix::net::UnixListener),
    /// A TCP socket.
    Tcp(std::net::TcpListener),
}

/// A listening socket with what it speaks.
pub struct StdListener {
    /// The socket.
    pub socket: Socket,
    /// What it speaks.
    pub protocol: Protocol,
    /// Name for logs: the systemd FileDescriptorName or the address.
    pub name: String,
    /// The socket file this process bound (removed at exit).
    pub owned_path: Option<PathBuf>,
}

impl StdListener {
    /// The socket file this process bound (and removes at exit), if any.
    pub fn owned_path(&self) -> Option<&Path> {
        self.owned_path.as_deref()
    }

    /// Whether this is a TCP socket.
    pub fn is_tcp(&self) -> bool {
        matches!(self.socket, Socket::Tcp(_))
    }
}

/// Parses a `--listen` address: `unix:PATH`, `tcp:HOST:PORT` (JSON-RPC), `http:HOST:PORT` or
/// `http+unix:PATH` (HTTP), `ollama:HOST:PORT` or `ollama+unix:PATH` (Ollama's API), `zmq:HOST:PORT`
/// (SteadyText's protocol: TCP only, as its SDK connects).
pub fn parse(spec: &str) -> Result<(Protocol, Target)> {
    for protocol in [Protocol::Http, Protocol::Ollama, Protocol::Zmtp] {
        let Some(scheme) = protocol.scheme() else { continue };
        if let Some(path) = spec.strip_prefix(scheme).and_then(|s| s.strip_prefix("+unix:")) {
            if protocol == Protocol::Zmtp {
                bail!("{spec:?}: SteadyText's SDK connects over TCP only; listen on zmq:127.0.0.1:5555");
            }
            return Ok((protocol, Target::Unix(PathBuf::from(path))));
        }
        if let Some(addr) = spec.strip_prefix(scheme).and_then(|s| s.strip_prefix(':')) {
            let addr = addr.trim_start_matches("//");
            if !addr.contains(':') {
                bail!("{spec:?}: an address of {scheme} needs a port, as in {scheme}:127.0.0.1:5558");
            }
            return Ok((protocol, Target::Tcp(addr.to_string())));
        }
    }
    let target = Target::parse(spec).map_err(anyhow::Error::msg)?;
    Ok((Protocol::JsonRpc, target))
}

fn socket_domain(fd: RawFd) -> std::io::Result<i32> {
    let mut domain: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: fd is a descriptor passed by systemd; getsockopt writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_DOMAIN, (&mut domain as *mut libc::c_int).cast(), &mut len)
    };
    if rc == 0 {
        Ok(domain)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Takes the sockets passed by systemd (`LISTEN_FDS`, `LISTEN_FDNAMES`) and unsets the variables.
///
/// # Safety
/// Edits the environment: call it before any other thread exists.
pub unsafe fn from_systemd() -> Result<Vec<StdListener>> {
    // SAFETY: the caller guarantees that no other thread runs yet.
    let fds =
        unsafe { sd_notify::listen_fds_with_names_and_unset_env() }.context("invalid LISTEN_FDS / LISTEN_FDNAMES")?;
    let mut out = Vec::new();
    for (fd, name) in fds {
        let domain = socket_domain(fd).with_context(|| format!("passed fd {fd} ({name}) is not a socket"))?;
        // SAFETY: systemd passed us ownership of this descriptor.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let socket = match domain {
            libc::AF_UNIX => Socket::Unix(owned.into()),
            libc::AF_INET | libc::AF_INET6 => Socket::Tcp(owned.into()),
            other => bail!("passed socket {name} has unsupported address family {other}"),
        };
        out.push(StdListener { socket, protocol: Protocol::of_fd_name(&name), name, owned_path: None });
    }
    Ok(out)
}

/// Binds `target` by hand, to speak `protocol`.
pub fn bind(protocol: Protocol, target: &Target) -> Result<StdListener> {
    match target {
        Target::Unix(path) => {
            let (listener, name) = bind_unix(path)?;
            let name = match protocol.scheme() {
                Some(scheme) => format!("{scheme}+{name}"),
                None => name,
            };
            Ok(StdListener { socket: Socket::Unix(listener), protocol, name, owned_path: Some(path.to_path_buf()) })
        }
        Target::Tcp(addr) => {
            let listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on tcp:{addr} (is another daemon serving it?)"))?;
            let name = format!("{}:{addr}", protocol.scheme().unwrap_or("tcp"));
            Ok(StdListener { socket: Socket::Tcp(listener), protocol, name, owned_path: None })
        }
        Target::Http(url) => bail!("--listen {url}: write http:HOST:PORT"),
        Target::Tls(addr) => bail!(
            "--listen tls:{addr}: listen with tcp:{addr}; TCP listeners speak TLS when [daemon] tls_cert_file and \
             tls_key_file (or the credentials tls-cert and tls-key) are set"
        ),
    }
}

fn bind_unix(path: &Path) -> Result<(std::os::unix::net::UnixListener, String)> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            bail!("refusing to listen on {}: it is a symbolic link; remove it or choose another path", path.display())
        }
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!("{} is already served by a live daemon; stop it first or choose another path", path.display());
            }
            std::fs::remove_file(path).with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
            tracing::info!(path = %path.display(), "removed a stale socket file");
        }
        Ok(_) => bail!("refusing to listen on {}: a file that is not a socket is there", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
    let listener =
        std::os::unix::net::UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set permissions of {}", path.display()))?;
    Ok((listener, format!("unix:{}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_name_their_protocol() {
        let parsed = |s: &str| parse(s).map(|(p, t)| (p, format!("{t:?}"))).map_err(|e| e.to_string());
        assert_eq!(parsed("ollama:127.0.0.1:11434").unwrap().0, Protocol::Ollama);
        assert_eq!(parsed("ollama+unix:/run/o.sock").unwrap().0, Protocol::Ollama);
        assert_eq!(parsed("http:127.0.0.1:5558").unwrap().0, Protocol::Http);
        assert_eq!(parsed("http+unix:/run/h.sock").unwrap().0, Protocol::Http);
        assert_eq!(parsed("tcp:127.0.0.1:5557").unwrap().0, Protocol::JsonRpc);
        assert!(parsed("ollama:localhost").unwrap_err().contains("needs a port"));
        assert_eq!(parsed("zmq:127.0.0.1:5555").unwrap().0, Protocol::Zmtp);
        assert!(parsed("zmq+unix:/run/z.sock").unwrap_err().contains("TCP only"));
        assert_eq!(Protocol::of_fd_name("zmq"), Protocol::Zmtp);
        assert_eq!(Protocol::of_fd_name("ollama"), Protocol::Ollama);
        assert_eq!(Protocol::of_fd_name("http"), Protocol::Http);
        assert_eq!(Protocol::of_fd_name("steadytext"), Protocol::JsonRpc);
    }

    #[test]
    fn refuses_symlinks_and_live_sockets_and_removes_stale_ones() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&sock, &link).unwrap();
        let err = bind(Protocol::JsonRpc, &Target::Unix(link)).err().unwrap().to_string();
        assert!(err.contains("symbolic link"), "{err}");

        let live = bind(Protocol::JsonRpc, &Target::Unix(sock.clone())).unwrap();
        let err = bind(Protocol::JsonRpc, &Target::Unix(sock.clone())).err().unwrap().to_string();
        assert!(err.contains("live daemon"), "{err}");
        drop(live); // leaves a stale socket file behind
        assert!(sock.exists());
        bind(Protocol::JsonRpc, &Target::Unix(sock.clone())).expect("stale socket is replaced");

        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"x").unwrap();
        assert!(bind(Protocol::JsonRpc, &Target::Unix(plain)).is_err());
    }
}
