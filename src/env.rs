//! The environment, read in this one place (every `STEADYTEXT_*` variable, systemd's folders and
//! credentials, the client's daemon address). Empty variables count as unset. A leaf: it imports
//! only the error type.

use std::path::PathBuf;

/// Largest key, certificate or credential file read, in bytes.
pub const MAX_SECRET_BYTES: u64 = 1 << 20;

/// Reads `key`; empty counts as unset.
pub fn get(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// The systemd credential `name` (`LoadCredential=name:FILE`, read from
/// `$CREDENTIALS_DIRECTORY`); None when the service has no such credential.
pub fn credential(name: &str) -> crate::error::Result<Option<String>> {
    let Ok(loader) = libsystemd::credentials::CredentialsLoader::open() else { return Ok(None) };
    let Ok(file) = loader.get(name) else { return Ok(None) };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_SECRET_BYTES), &mut text)
        .map_err(|e| crate::error::Error::Config(format!("cannot read the credential {name}: {e}")))?;
    Ok(Some(text))
}

/// `ORT_DYLIB_PATH`: the ONNX Runtime library to load.
pub fn ort_dylib_path() -> Option<PathBuf> {
    get("ORT_DYLIB_PATH").map(PathBuf::from)
}

/// The first folder of systemd's `STATE_DIRECTORY`.
pub fn state_directory() -> Option<PathBuf> {
    first_folder("STATE_DIRECTORY")
}

/// The first folder of systemd's `CACHE_DIRECTORY`.
pub fn cache_directory() -> Option<PathBuf> {
    first_folder("CACHE_DIRECTORY")
}

/// The first folder of systemd's `CONFIGURATION_DIRECTORY`.
pub fn configuration_directory() -> Option<PathBuf> {
    first_folder("CONFIGURATION_DIRECTORY")
}

/// The first of the `:`-separated folders systemd passes in `key`.
fn first_folder(key: &str) -> Option<PathBuf> {
    get(key).and_then(|v| v.split(':').next().filter(|s| !s.is_empty()).map(PathBuf::from))
}

/// The per-user daemon's socket, `$XDG_RUNTIME_DIR/steadytext/steadytext.sock` (the user
/// unit's `%t/steadytext/steadytext.sock`).
pub fn user_socket() -> Option<PathBuf> {
    get("XDG_RUNTIME_DIR").map(|d| PathBuf::from(d).join("steadytext/steadytext.sock"))
}

/// `STEADYTEXT_LOG`: the daemon's log filter.
pub fn log_filter() -> Option<String> {
    get("STEADYTEXT_LOG")
}

/// How `stctl` finds the daemon, from `STEADYTEXT_DAEMON_HOST`/`_PORT`, `STEADYTEXT_SOCKET`,
/// `STEADYTEXT_DISABLE_DAEMON` and `XDG_RUNTIME_DIR`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientEnv {
    /// `STEADYTEXT_DAEMON_HOST`.
    pub host: Option<String>,
    /// `STEADYTEXT_DAEMON_PORT`.
    pub port: Option<String>,
    /// `STEADYTEXT_SOCKET`.
    pub socket: Option<String>,
    /// `STEADYTEXT_DISABLE_DAEMON` set to anything but `0`.
    pub disable_daemon: bool,
    /// `STEADYTEXT_API_KEY`: the key sent to a daemon over TCP.
    pub api_key: Option<String>,
    /// `STEADYTEXT_CA_FILE`: the PEM certificates that a TLS daemon's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// The per-user daemon's socket path ([`user_socket`]), whether or not one listens there.
    pub user_socket: Option<PathBuf>,
}

/// Reads [`ClientEnv`].
pub fn client() -> ClientEnv {
    ClientEnv {
        host: get("STEADYTEXT_DAEMON_HOST"),
        port: get("STEADYTEXT_DAEMON_PORT"),
        socket: get("STEADYTEXT_SOCKET"),
        disable_daemon: get("STEADYTEXT_DISABLE_DAEMON").is_some_and(|v| v != "0"),
        api_key: get("STEADYTEXT_API_KEY"),
        ca_file: get("STEADYTEXT_CA_FILE").map(PathBuf::from),
        user_socket: user_socket(),
    }
}

/// `HF_ENDPOINT` (a Hub mirror) and `HF_TOKEN` (for gated repositories).
pub fn hub() -> (Option<String>, Option<String>) {
    (get("HF_ENDPOINT"), get("HF_TOKEN"))
}
