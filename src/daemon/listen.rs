//! Listening sockets: handed over by systemd (socket activation) or bound by hand
//! (`--listen unix:PATH` / `--listen tcp:ADDR`).

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::client::Target;

/// A listening socket, still in blocking std form.
pub enum StdListener {
    /// A Unix stream socket; `path` is set when we bound it and must remove it at exit.
    Unix {
        /// The socket.
        listener: std::os::unix::net::UnixListener,
        /// Name for logs.
        name: String,
        /// The path we bound, removed at exit.
        owned_path: Option<PathBuf>,
    },
    /// A TCP socket.
    Tcp {
        /// The socket.
        listener: std::net::TcpListener,
        /// Name for logs.
        name: String,
    },
}

impl StdListener {
    /// The socket file this process bound (and removes at exit), if any.
    pub fn owned_path(&self) -> Option<&Path> {
        match self {
            StdListener::Unix { owned_path, .. } => owned_path.as_deref(),
            StdListener::Tcp { .. } => None,
        }
    }

    /// Whether this is a TCP socket.
    pub fn is_tcp(&self) -> bool {
        matches!(self, StdListener::Tcp { .. })
    }

    /// A name for logs: the systemd FileDescriptorName or the address.
    pub fn name(&self) -> &str {
        match self {
            StdListener::Unix { name, .. } | StdListener::Tcp { name, .. } => name,
        }
    }
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
        match domain {
            libc::AF_UNIX => out.push(StdListener::Unix { listener: owned.into(), name, owned_path: None }),
            libc::AF_INET | libc::AF_INET6 => out.push(StdListener::Tcp { listener: owned.into(), name }),
            other => bail!("passed socket {name} has unsupported address family {other}"),
        }
    }
    Ok(out)
}

/// Binds `target` by hand.
pub fn bind(target: &Target) -> Result<StdListener> {
    match target {
        Target::Unix(path) => bind_unix(path),
        Target::Tcp(addr) => {
            let listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on tcp:{addr} (is another daemon serving it?)"))?;
            Ok(StdListener::Tcp { listener, name: format!("tcp:{addr}") })
        }
        Target::Tls(addr) => bail!(
            "--listen tls:{addr}: listen with tcp:{addr}; TCP listeners speak TLS when [daemon] tls_cert_file and \
             tls_key_file (or the credentials tls-cert and tls-key) are set"
        ),
    }
}

fn bind_unix(path: &Path) -> Result<StdListener> {
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
    Ok(StdListener::Unix { listener, name: format!("unix:{}", path.display()), owned_path: Some(path.to_path_buf()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_symlinks_and_live_sockets_and_removes_stale_ones() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&sock, &link).unwrap();
        let err = bind(&Target::Unix(link)).err().unwrap().to_string();
        assert!(err.contains("symbolic link"), "{err}");

        let live = bind(&Target::Unix(sock.clone())).unwrap();
        let err = bind(&Target::Unix(sock.clone())).err().unwrap().to_string();
        assert!(err.contains("live daemon"), "{err}");
        drop(live); // leaves a stale socket file behind
        assert!(sock.exists());
        bind(&Target::Unix(sock.clone())).expect("stale socket is replaced");

        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"x").unwrap();
        assert!(bind(&Target::Unix(plain)).is_err());
    }
}
