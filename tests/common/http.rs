//! A hand-run daemon with an HTTP front on a TCP port, Ollama's API and SteadyText's protocol on
//! others (and its JSON-RPC socket), and curl.

use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use super::command;

/// The API key every [`HttpDaemon`] requires of TCP clients.
pub const KEY: &str = "http-test-key-0123456789abcdef";

/// A daemon with a JSON-RPC Unix socket and an HTTP TCP listener.
pub struct HttpDaemon {
    /// The daemon process.
    pub child: Child,
    /// Its HTTP port on 127.0.0.1.
    pub port: u16,
    /// Its port for Ollama's API on 127.0.0.1.
    pub ollama: u16,
    /// Its port for SteadyText's protocol on 127.0.0.1.
    pub zmq: u16,
    /// Its JSON-RPC Unix socket.
    pub socket: PathBuf,
    /// Its JSON-RPC TCP port on 127.0.0.1 (0: none).
    pub tcp: u16,
    /// Its folder (config, key, log, state).
    pub dir: tempfile::TempDir,
}

impl Drop for HttpDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl HttpDaemon {
    /// Starts it with `config` (TOML) and returns at once: the models are still loading.
    /// A port taken between `free_port`'s probe and the daemon's bind (by a process outside the
    /// test) is replaced by another.
    pub fn start(config: &str) -> Self {
        Self::start_listening(config, false)
    }

    /// [`HttpDaemon::start`], also listening for JSON-RPC on a TCP port when `tcp` is set.
    pub fn start_listening(config: &str, tcp: bool) -> Self {
        Self::start_with(config, tcp, &[])
    }

    /// [`HttpDaemon::start_listening`] with these environment variables set for the daemon.
    pub fn start_with(config: &str, tcp: bool, env: &[(&str, &std::ffi::OsStr)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        super::write_private(&dir.path().join("api-key"), &format!("{KEY}\n"));
        std::fs::write(dir.path().join("steadytext.toml"), config).unwrap();
        let socket = dir.path().join("s.sock");
        let log = dir.path().join("daemon.log");
        for _ in 0..5 {
            let (port, ollama, zmq) = (super::free_port(), super::free_port(), super::free_port());
            let tcp_port = if tcp { super::free_port() } else { 0 };
            let tcp_listen: Vec<String> =
                if tcp { vec!["--listen".into(), format!("tcp:127.0.0.1:{tcp_port}")] } else { Vec::new() };
            let mut child = command(env!("CARGO_BIN_EXE_steadytextd"))
                .args(super::root_flags())
                .args(["--listen", &format!("unix:{}", socket.display())])
                .args(["--listen", &format!("http:127.0.0.1:{port}")])
                .args(["--listen", &format!("ollama:127.0.0.1:{ollama}")])
                .args(["--listen", &format!("zmq:127.0.0.1:{zmq}")])
                .args(&tcp_listen)
                .env("STEADYTEXT_API_KEY_FILE", dir.path().join("api-key"))
                .env("STEADYTEXT_CONFIG", dir.path().join("steadytext.toml"))
                .env("STATE_DIRECTORY", dir.path())
                .envs(env.iter().copied())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            // Listeners are bound before the models load: a lost port shows within moments.
            let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
            while std::time::Instant::now() < deadline && child.try_wait().unwrap().is_none() {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let lost = child.try_wait().unwrap().is_some()
                && std::fs::read_to_string(&log).unwrap_or_default().contains("Address already in use");
            if !lost {
                return HttpDaemon { child, port, ollama, zmq, socket, tcp: tcp_port, dir };
            }
        }
        panic!("no free port after 5 tries: {}", std::fs::read_to_string(&log).unwrap_or_default());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The address of its Ollama API, as `OLLAMA_HOST` takes it.
    pub fn ollama_host(&self) -> String {
        format!("http://127.0.0.1:{}", self.ollama)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// The status codes of `/health` from the first answer until it is 200.
    pub fn health_until_ready(&self) -> Vec<u16> {
        self.health_over(&self.url(""), "")
    }

    /// [`HttpDaemon::health_until_ready`] at `base`, trusting `ca` (a file; "" for none).
    pub fn health_over(&self, base: &str, ca: &str) -> Vec<u16> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut codes = Vec::new();
        let url = format!("{base}/health");
        while Instant::now() < deadline {
            let (code, _) = if ca.is_empty() { curl(&[&url]) } else { curl(&["--cacert", ca, &url]) };
            if code != 0 {
                codes.push(code);
            }
            if code == 200 {
                return codes;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("never healthy: {codes:?}\n{}", self.log());
    }

    /// `stctl --daemon-only ARGS` over the JSON-RPC socket; its stdout.
    pub fn stctl(&self, args: &[&str]) -> String {
        let socket = self.socket.to_str().unwrap().to_string();
        let out = self.stctl_at(&socket, args, &[]);
        assert!(out.status.success(), "stctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// `stctl --daemon-only --socket ADDRESS ARGS` with `env`.
    pub fn stctl_at(&self, address: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        command(env!("CARGO_BIN_EXE_stctl"))
            .args(["--daemon-only", "--socket", address])
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }
}

/// A folder with a fresh test CA (`ca.pem`) and a certificate for localhost it signed
/// (`cert.pem`, `key.pem`), and the daemon configuration that serves TLS with them.
pub fn tls_files() -> (tempfile::TempDir, String) {
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = super::test_pki();
    for (name, text) in [("ca.pem", &ca), ("cert.pem", &cert), ("key.pem", &key)] {
        super::write_private(&pki.path().join(name), text);
    }
    let config = format!(
        "[daemon]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        pki.path().join("cert.pem").display(),
        pki.path().join("key.pem").display()
    );
    (pki, config)
}

/// `POST url` with the JSON `body` and the test key: the HTTP status and the body.
pub fn post_json(url: &str, body: &serde_json::Value) -> (u16, String) {
    let auth = format!("Authorization: Bearer {KEY}");
    curl(&["-H", &auth, "-H", "Content-Type: application/json", "-d", &body.to_string(), url])
}

/// `curl -s ARGS`: the HTTP status (0: no answer) and the body.
pub fn curl(args: &[&str]) -> (u16, String) {
    let out: Output =
        Command::new("curl").args(["-s", "-m", "30", "-w", "\n%{http_code}"]).args(args).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}
