//! `stctl`'s connection to the daemon: JSON-RPC 2.0 lines over a Unix or TCP stream.

use std::io::{BufRead, BufReader, Read as _, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod fleet;
mod render;
mod session;

pub use fleet::{rank, Fleet, FleetError, Refusal};
pub use render::{render_cache_stats, render_status};
pub use session::{Served, Session, SessionError, SessionSettings};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use crate::env::ClientEnv;
use crate::protocol::{
    codes, AuthParams, Authenticated, Method, Piece, Request, Response, RpcError, PIECE_NOTIFICATION, ROUTE_KEY_HEADER,
};

/// Where the daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A Unix stream socket.
    Unix(PathBuf),
    /// A TCP address `host:port`.
    Tcp(String),
    /// A TCP address `host:port` spoken to over TLS; the certificate must name `host`.
    Tls(String),
    /// The HTTP front at a base URL (`http://host:port`): JSON-RPC over `POST /v1/rpc`.
    Http(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
            Target::Tcp(a) => write!(f, "tcp:{a}"),
            Target::Tls(a) => write!(f, "tls:{a}"),
            Target::Http(url) => f.write_str(url),
        }
    }
}

impl Target {
    /// Parses `unix:PATH`, `tcp:HOST:PORT`, `tls:HOST:PORT`, or a bare path.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(Target::Unix(PathBuf::from(p)));
        }
        for (scheme, make) in [("tcp:", Target::Tcp as fn(String) -> Target), ("tls:", Target::Tls)] {
            if let Some(a) = s.strip_prefix(scheme) {
                if !a.contains(':') {
                    return Err(format!("{s:?}: a TCP address needs a port, as in {scheme}127.0.0.1:5557"));
                }
                return Ok(make(a.to_string()));
            }
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            return Ok(Target::Http(s.trim_end_matches('/').to_string()));
        }
        if s.starts_with('/') || s.starts_with('.') {
            return Ok(Target::Unix(PathBuf::from(s)));
        }
        Err(format!(
            "{s:?} is not unix:PATH, tcp:HOST:PORT, tls:HOST:PORT, http://HOST:PORT or an absolute socket path"
        ))
    }

    /// Whether the daemon wants the API key on this connection (TCP, with or without TLS).
    fn is_tcp(&self) -> bool {
        matches!(self, Target::Tcp(_) | Target::Tls(_))
    }
}

/// Failure of a daemon call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon could be reached (the caller may fall back to direct mode).
    #[error("cannot reach the daemon at {target}: {cause}{}", permission_hint(.cause))]
    Unreachable {
        /// The address tried.
        target: String,
        /// Why (shown in the message, so not chained again).
        cause: std::io::Error,
    },
    /// The connection broke or the daemon answered something that is not the protocol.
    #[error("daemon connection failed: {0}")]
    Protocol(String),
    /// The daemon answered with an error.
    #[error("{}", .0.message)]
    Rpc(RpcError),
    /// TLS could not be set up, or the daemon's certificate was not trusted.
    #[error("TLS: {0}")]
    Tls(String),
    /// No line of the answer came within the read timeout (the request may still be running).
    #[error("no answer from the daemon within {0} s; raise --timeout or see `journalctl -u steadytext`")]
    Timeout(u64),
}

impl ClientError {
    /// Whether direct mode can serve this call instead.
    pub fn allows_fallback(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Rpc(e) => e.code == codes::MODEL_NOT_LOADED,
            ClientError::Protocol(_) | ClientError::Tls(_) | ClientError::Timeout(_) => false,
        }
    }
}

fn permission_hint(cause: &std::io::Error) -> &'static str {
    if cause.kind() == std::io::ErrorKind::PermissionDenied {
        " (only members of the steadytext group may use the socket: `usermod -aG steadytext $USER`, then log in again)"
    } else {
        ""
    }
}

trait Stream: std::io::Read + Write + Send {}
impl<T: std::io::Read + Write + Send> Stream for T {}

/// How a client talks to the daemon: key, deadlines, retries.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The API key, sent as the first request over TCP.
    pub api_key: Option<String>,
    /// PEM certificates a TLS daemon's certificate must chain to (None: the system's store).
    pub ca_file: Option<PathBuf>,
    /// Longest wait for a TCP connection.
    pub connect_timeout: Duration,
    /// Longest wait for any line of an answer (a streamed generation sends one per piece).
    pub read_timeout: Duration,
    /// How often a call refused as overloaded is tried again, each time after the daemon's
    /// `retry_after_ms` (at most [`MAX_RETRY_WAIT`]).
    pub retries: u32,
    /// How long an HTTP request answered 503 while the daemon loads its models is sent again
    /// (a fleet sets zero and tries the next endpoint instead).
    pub loading_patience: Duration,
}

/// The longest single wait between retries, whatever the daemon suggests.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(10);

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            api_key: None,
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(600),
            retries: 3,
            loading_patience: Duration::from_secs(600),
        }
    }
}

/// How a client reaches the daemon.
enum Transport {
    /// One JSON-RPC connection.
    Stream(BufReader<Box<dyn Stream>>),
    /// The HTTP front: one `POST /v1/rpc` per request; `answer` is the body being read.
    Http { agent: Box<ureq::Agent>, url: String, answer: Option<BufReader<Box<dyn std::io::Read + Send>>> },
}

/// One open connection; requests on it are answered in order.
pub struct Client {
    transport: Transport,
    next_id: u64,
    options: ClientOptions,
    /// Sent with HTTP requests as [`ROUTE_KEY_HEADER`], for load balancers.
    route_key: Option<String>,
    /// Stream pieces passed on so far (a fleet fails over only before the first).
    pieces: u64,
}

fn unreachable(target: &Target, cause: std::io::Error) -> ClientError {
    ClientError::Unreachable { target: target.to_string(), cause }
}

impl Client {
    /// Connects to `target` with default options.
    pub fn connect(target: &Target) -> Result<Self, ClientError> {
        Self::connect_with(target, ClientOptions::default())
    }

    /// Connects to `target`; over TCP, authenticates with `options.api_key` first.
    pub fn connect_with(target: &Target, options: ClientOptions) -> Result<Self, ClientError> {
        let deadline = Some(options.read_timeout);
        if let Target::Http(base) = target {
            let mut tls = ureq::tls::TlsConfig::builder();
            if let Some(file) = &options.ca_file {
                let certs = crate::tls::ca_certificates(file).map_err(|e| ClientError::Tls(e.to_string()))?;
                let certs: Vec<_> = certs.iter().map(|c| ureq::tls::Certificate::from_der(c).to_owned()).collect();
                tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
            }
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .tls_config(tls.build())
                .http_status_as_error(false)
                .timeout_connect(Some(options.connect_timeout))
                .timeout_recv_body(deadline)
                .timeout_recv_response(deadline)
                .user_agent(concat!("stctl/", env!("CARGO_PKG_VERSION")))
                .build()
                .into();
            let transport = Transport::Http { agent: Box::new(agent), url: format!("{base}/v1/rpc"), answer: None };
            return Ok(Client { transport, next_id: 1, options, route_key: None, pieces: 0 });
        }
        let stream: Box<dyn Stream> = match target {
            Target::Unix(path) => {
                let s = UnixStream::connect(path).map_err(|e| unreachable(target, e))?;
                s.set_read_timeout(deadline).and(s.set_write_timeout(deadline)).map_err(|e| unreachable(target, e))?;
                Box::new(s)
            }
            Target::Http(_) => unreachable!("handled above"),
            Target::Tcp(addr) | Target::Tls(addr) => {
                let s = connect_tcp(addr, options.connect_timeout).map_err(|e| unreachable(target, e))?;
                s.set_nodelay(true).ok();
                s.set_read_timeout(deadline).and(s.set_write_timeout(deadline)).map_err(|e| unreachable(target, e))?;
                match target {
                    Target::Tls(_) => Box::new(tls_session(addr, options.ca_file.as_deref(), s)?),
                    _ => Box::new(s),
                }
            }
        };
        let key = options.api_key.clone();
        let mut client = Client {
            transport: Transport::Stream(BufReader::new(stream)),
            next_id: 1,
            options,
            route_key: None,
            pieces: 0,
        };
        if let (true, Some(key)) = (target.is_tcp(), key) {
            let _: Authenticated = client.request(Method::Auth, &AuthParams { key: key.clone() })?;
        }
        Ok(client)
    }

    /// Sends a request and returns its id.
    fn send(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = json!(self.next_id);
        self.next_id += 1;
        let req = Request { jsonrpc: "2.0".into(), method: method.into(), params, id: Some(id.clone()) };
        let mut line = serde_json::to_vec(&req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        let stream = match &mut self.transport {
            Transport::Stream(stream) => stream,
            Transport::Http { agent, url, answer } => {
                let patience = self.options.loading_patience.min(self.options.read_timeout);
                let headers = Headers { key: self.options.api_key.as_deref(), route_key: self.route_key.as_deref() };
                *answer = Some(post(agent, url, headers, &line, patience)?);
                return Ok(id);
            }
        };
        let writer = stream.get_mut();
        if let Err(e) = writer.write_all(&line).and_then(|()| writer.flush()) {
            // A daemon that refused the connection said why before closing it: show that.
            if let Ok(answer) = self.read_line() {
                if let Err(refusal @ ClientError::Rpc(_)) = Self::finish::<Value>(answer) {
                    return Err(refusal);
                }
            }
            if let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
                return Err(ClientError::Tls(format!("{tls}{}", tls_hint(tls))));
            }
            return Err(ClientError::Protocol(format!("sending: {e}")));
        }
        Ok(id)
    }

    fn read_line(&mut self) -> Result<Value, ClientError> {
        let mut line = String::new();
        let closed =
            || ClientError::Protocol("the daemon closed the connection (see `journalctl -u steadytext`)".into());
        let timeout = self.options.read_timeout.as_secs();
        let reader: &mut dyn BufRead = match &mut self.transport {
            Transport::Stream(stream) => stream,
            Transport::Http { answer: Some(answer), .. } => answer,
            Transport::Http { answer: None, .. } => return Err(closed()),
        };
        let n = reader.read_line(&mut line).map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionReset => closed(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ClientError::Timeout(timeout),
            _ => ClientError::Protocol(format!("reading: {e}")),
        })?;
        if n == 0 {
            return Err(closed());
        }
        if line.as_bytes().starts_with(&[0x15, 0x03]) {
            return Err(ClientError::Protocol(
                "the daemon answered with a TLS alert: this port speaks TLS, use tls:HOST:PORT".into(),
            ));
        }
        serde_json::from_str(&line).map_err(|e| ClientError::Protocol(format!("unreadable answer: {e}")))
    }

    fn finish<R: DeserializeOwned>(response: Value) -> Result<R, ClientError> {
        let response: Response = serde_json::from_value(response).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if let Some(error) = response.error {
            return Err(ClientError::Rpc(error));
        }
        serde_json::from_value(response.result.unwrap_or(Value::Null))
            .map_err(|e| ClientError::Protocol(format!("unexpected result: {e}")))
    }

    /// Sets the route key sent with the next HTTP requests (`stctl` computes it per request, see
    /// [`crate::cache::generation_route_key`]); a load balancer in front of replicas hashes on it.
    pub fn set_route_key(&mut self, route_key: Option<String>) {
        self.route_key = route_key;
    }

    /// Stream pieces passed on by this connection's calls so far.
    pub fn pieces_delivered(&self) -> u64 {
        self.pieces
    }

    /// Calls `method` and waits for its result.
    pub fn request<P: Serialize, R: DeserializeOwned>(&mut self, method: Method, params: &P) -> Result<R, ClientError> {
        self.request_streaming(method, params, &mut |_| {})
    }

    /// Calls `method`, passing each `generate.piece` notification's text to `on_piece`. A call
    /// refused as overloaded is tried again after the daemon's `retry_after_ms`, up to
    /// `options.retries` times (no piece has been sent then).
    pub fn request_streaming<P: Serialize, R: DeserializeOwned>(
        &mut self,
        method: Method,
        params: &P,
        on_piece: &mut dyn FnMut(&str),
    ) -> Result<R, ClientError> {
        let params = serde_json::to_value(params).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let mut tries = 0;
        loop {
            match self.call_once(method.name(), params.clone(), on_piece) {
                Err(ClientError::Rpc(e)) if e.code == codes::OVERLOADED && tries < self.options.retries => {
                    tries += 1;
                    let hint = e.data.as_ref().and_then(|d| d["retry_after_ms"].as_u64()).unwrap_or(100);
                    std::thread::sleep(Duration::from_millis(hint).min(MAX_RETRY_WAIT));
                }
                Err(ClientError::Rpc(mut e)) if e.code == codes::OVERLOADED => {
                    e.message = format!("{} (gave up after {tries} retries)", e.message);
                    return Err(ClientError::Rpc(e));
                }
                other => return other,
            }
        }
    }

    fn call_once<R: DeserializeOwned>(
        &mut self,
        method: &str,
        params: Value,
        on_piece: &mut dyn FnMut(&str),
    ) -> Result<R, ClientError> {
        let id = self.send(method, params)?;
        loop {
            let msg = self.read_line()?;
            if msg.get("method").and_then(Value::as_str) == Some(PIECE_NOTIFICATION) {
                let piece: Piece =
                    serde_json::from_value(msg["params"].clone()).map_err(|e| ClientError::Protocol(e.to_string()))?;
                if piece.id == id {
                    self.pieces += 1;
                    on_piece(&piece.text);
                }
                continue;
            }
            // An error with a null id is about this connection (refused, closed): it is ours too.
            let connection_error = msg.get("id") == Some(&Value::Null) && msg.get("error").is_some();
            if msg.get("id") == Some(&id) || connection_error {
                return Self::finish(msg);
            }
        }
    }
}

/// Headers of a request to the HTTP front.
#[derive(Clone, Copy)]
struct Headers<'a> {
    key: Option<&'a str>,
    route_key: Option<&'a str>,
}

/// Sends one JSON-RPC line to the HTTP front; returns the answer's body (NDJSON), or the
/// front's refusal (key, size) as the matching JSON-RPC error. While the daemon loads its models
/// (503 with `Retry-After`) the request is sent again, for at most `patience`: a JSON-RPC client
/// waits in the socket's queue the same way.
fn post(
    agent: &ureq::Agent,
    url: &str,
    headers: Headers<'_>,
    line: &[u8],
    patience: Duration,
) -> Result<BufReader<Box<dyn std::io::Read + Send>>, ClientError> {
    let started = std::time::Instant::now();
    let response = loop {
        let mut request = agent.post(url).header("Content-Type", "application/json");
        if let Some(key) = headers.key {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        if let Some(route_key) = headers.route_key {
            request = request.header(ROUTE_KEY_HEADER, route_key);
        }
        let response = request.send(line).map_err(|e| ClientError::Unreachable {
            target: url.to_string(),
            cause: std::io::Error::new(std::io::ErrorKind::ConnectionRefused, e.to_string()),
        })?;
        let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        match retry_after {
            Some(secs) if response.status() == 503 && started.elapsed() < patience => {
                std::thread::sleep(Duration::from_secs(secs).min(MAX_RETRY_WAIT))
            }
            _ => break response,
        }
    };
    let status = response.status().as_u16();
    let body = response.into_body();
    if status == 200 {
        return Ok(BufReader::new(Box::new(body.into_reader())));
    }
    let error: Value = serde_json::from_reader(body.into_reader().take(1 << 20)).unwrap_or_default();
    let message = error["error"]["message"].as_str().unwrap_or("no message").to_string();
    let code = match (error["error"]["code"].as_str().and_then(|c| c.parse().ok()), status) {
        (Some(code), _) => code,
        (None, 401) => codes::UNAUTHORIZED,
        (None, 413) => codes::TOO_LARGE,
        (None, 429) => codes::OVERLOADED,
        (None, 503) => codes::SHUTTING_DOWN,
        (None, _) => codes::INTERNAL_ERROR,
    };
    Err(ClientError::Rpc(RpcError { code, message: format!("HTTP {status}: {message}"), data: None }))
}

/// What to do about a refused daemon certificate.
fn tls_hint(error: &rustls::Error) -> &'static str {
    use rustls::CertificateError::*;
    match error {
        rustls::Error::InvalidCertificate(UnknownIssuer | BadSignature | Other(_)) => {
            "; pass the CA certificate that signed the daemon's certificate (or a self-signed certificate made \
             with basicConstraints CA:FALSE) with --ca-file or STEADYTEXT_CA_FILE"
        }
        rustls::Error::InvalidCertificate(NotValidForName | NotValidForNameContext { .. }) => {
            "; connect with a host name the certificate names (tls:HOST:PORT)"
        }
        _ => "",
    }
}

/// A TLS session over `tcp` to `addr` (`host:port`), checking the certificate against `ca_file`
/// (or the system's store) and the host name. The handshake runs with the first request.
fn tls_session(
    addr: &str,
    ca_file: Option<&Path>,
    tcp: TcpStream,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, ClientError> {
    let config = crate::tls::client_config(ca_file).map_err(|e| ClientError::Tls(e.to_string()))?;
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = rustls_pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| ClientError::Tls(format!("{host:?} is not a host name or address: {e}")))?;
    let session = rustls::ClientConnection::new(config, name).map_err(|e| ClientError::Tls(e.to_string()))?;
    Ok(rustls::StreamOwned::new(session, tcp))
}

/// Connects to the first address of `addr` that answers within `timeout`.
fn connect_tcp(addr: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, format!("{addr} resolves to no address"));
    for a in std::net::ToSocketAddrs::to_socket_addrs(addr)? {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The daemon address from the environment ([`crate::env::client`]):
/// `STEADYTEXT_DAEMON_HOST`/`_PORT` for TCP, else `STEADYTEXT_SOCKET`, else the per-user daemon's
/// socket when one is there, else `system_socket`.
pub fn target_from_env(env: &ClientEnv, system_socket: &Path) -> Result<Target, String> {
    if env.host.is_some() || env.port.is_some() {
        let port: u16 = env
            .port
            .as_deref()
            .unwrap_or("5557")
            .parse()
            .map_err(|_| "STEADYTEXT_DAEMON_PORT must be a port number (1-65535)".to_string())?;
        return Ok(Target::Tcp(format!("{}:{port}", env.host.as_deref().unwrap_or("127.0.0.1"))));
    }
    match &env.socket {
        Some(s) => Target::parse(s).map_err(|e| format!("STEADYTEXT_SOCKET: {e}")),
        None => {
            let user = env.user_socket.as_deref().filter(|p| is_socket(p));
            Ok(Target::Unix(user.unwrap_or(system_socket).to_path_buf()))
        }
    }
}

/// Whether `path` is a Unix socket (a listening per-user daemon; `RemoveOnStop=` takes it away).
fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_daemon_socket_comes_before_the_system_one_only_when_it_listens() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("steadytext/steadytext.sock");
        let system = Path::new("/run/steadytext/steadytext.sock");
        let env = ClientEnv { user_socket: Some(user.clone()), ..ClientEnv::default() };
        let unix = |p: &Path| Ok(Target::Unix(p.to_path_buf()));
        assert_eq!(target_from_env(&env, system), unix(system), "no user daemon");
        std::fs::create_dir_all(user.parent().unwrap()).unwrap();
        std::fs::write(&user, b"").unwrap();
        assert_eq!(target_from_env(&env, system), unix(system), "a plain file is no daemon");
        std::fs::remove_file(&user).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(&user).unwrap();
        assert_eq!(target_from_env(&env, system), unix(&user));
        let named = ClientEnv { socket: Some("unix:/elsewhere.sock".into()), ..env.clone() };
        assert_eq!(target_from_env(&named, system), unix(Path::new("/elsewhere.sock")), "STEADYTEXT_SOCKET wins");
        let unset = ClientEnv { user_socket: None, ..env };
        assert_eq!(target_from_env(&unset, system), unix(system), "no XDG_RUNTIME_DIR");
    }
}
