//! Helpers shared by the integration tests: the shared models and a config pointing at them.
#![allow(dead_code)]

pub mod http;

use std::path::PathBuf;

use steadytext::config::Config;

/// `../shared/models` (or `STEADYTEXT_MODEL_DIR`).
pub fn models_dir() -> PathBuf {
    std::env::var_os("STEADYTEXT_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/models"))
}

/// A config for the shared models with `threads` intra-op threads.
pub fn config(threads: usize) -> Config {
    let mut c = Config::default();
    c.apply_env(|k| std::env::var(k).ok().filter(|v| !v.is_empty())).expect("test environment");
    c.model_dir = models_dir();
    c.intra_threads = threads;
    c
}

/// The fused (onnxruntime-genai layout) decoders built from the shared model by
/// `tools/fused-decoder/build.sh` (once; cached outside git): the folder holding
/// `SmolLM2-135M-Instruct-fused-acc4` and `-acc0`.
pub fn fused_models() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        built("tools/fused-decoder/build.sh", ("STEADYTEXT_SHARED_MODEL", models_dir().join("SmolLM2-135M-Instruct")))
    })
    .clone()
}

/// The fused form of the shared encoder built by `tools/fused-encoder/build.sh` (once; cached
/// outside git): the folder holding `all-MiniLM-L6-v2-fused`.
pub fn fused_encoder_models() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        built("tools/fused-encoder/build.sh", ("STEADYTEXT_SHARED_MODEL", models_dir().join("all-MiniLM-L6-v2")))
    })
    .clone()
}

/// The tiny random-weight cross-encoder built by `tools/cross-encoder/build.sh` (once; cached
/// outside git): its model folder.
pub fn cross_encoder_model() -> PathBuf {
    let tokenizer = models_dir().join("all-MiniLM-L6-v2/tokenizer.json");
    built("tools/cross-encoder/build.sh", ("STEADYTEXT_SHARED_TOKENIZER", tokenizer)).join("tiny-cross-encoder")
}

/// Links every entry of the folder `from` into the existing folder `into`, but those named in
/// `except` (a model folder made from another with some files of its own).
pub fn link_entries(from: &std::path::Path, into: &std::path::Path, except: &[&str]) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if !except.iter().any(|e| entry.file_name() == *e) {
            std::os::unix::fs::symlink(entry.path(), into.join(entry.file_name())).unwrap();
        }
    }
}

/// A copy of the genai model folder `source` named `name` (its files linked) whose
/// genai_config.json is `edit`ed; the temporary folder holding it comes with it.
pub fn genai_variant(
    source: &std::path::Path,
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join(name);
    std::fs::create_dir(&folder).unwrap();
    link_entries(source, &folder, &["genai_config.json"]);
    let mut genai: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("genai_config.json")).unwrap()).unwrap();
    edit(&mut genai);
    std::fs::write(folder.join("genai_config.json"), genai.to_string()).unwrap();
    (dir, folder)
}

/// A greedy generation request for `prompt` (the chat template applies), at most
/// `max_new_tokens`, with the default seed.
pub fn greedy_request(prompt: &str, max_new_tokens: usize) -> steadytext::engine::generate::GenerateRequest {
    steadytext::engine::generate::GenerateRequest {
        prompt: prompt.into(),
        messages: Vec::new(),
        raw: false,
        think: false,
        seed: 42,
        max_new_tokens,
        stop: vec![],
        sampling: steadytext::engine::sampler::Sampling::default(),
        constraint: None,
        logprobs: None,
        tools: None,
    }
}

/// The greedy ids onnxruntime-genai 0.18.0 (`tools/fused-decoder/genai_ids.py`, its own ONNX
/// Runtime and greedy search, an independent runner of the layout) gives for each
/// `(prompt ids, max_new_tokens)` on the genai model folder `model`.
pub fn genai_ids(model: &std::path::Path, cases: &[(Vec<u32>, usize)]) -> Vec<Vec<u32>> {
    let python = venv_python("tools/fused-decoder/genai-requirements.txt");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/fused-decoder/genai_ids.py");
    let input: Vec<serde_json::Value> =
        cases.iter().map(|(ids, max)| serde_json::json!({"input_ids": ids, "max_new_tokens": max})).collect();
    let mut child = Command::new(python)
        .arg(script)
        .arg(model)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    serde_json::to_writer(child.stdin.take().unwrap(), &input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "genai_ids.py on {}: {}", model.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The conformance zoo built by `tools/zoo/build.sh` (once; cached outside git): the folder
/// holding one model folder per architecture and layout (`llama3-hf`, `llama3-genai`, ...), each
/// with the reference.json Python onnxruntime computed on it.
pub fn zoo_models() -> PathBuf {
    built("tools/zoo/build.sh", ("STEADYTEXT_SHARED_MODEL", models_dir().join("SmolLM2-135M-Instruct")))
}

/// Runs a fixture build script of the checkout with one variable set; the folder it prints.
fn built(script: &str, (key, value): (&str, PathBuf)) -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(script);
    let out = std::process::Command::new(&script)
        .env(key, value)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    assert!(out.status.success(), "{} failed:\n{}", script.display(), String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A model folder of links to the shared models, and three models whose chat templates take
/// tools: `SmolLM2-135M-tools` (the shared SmolLM2 with the ChatML template
/// `tests/tools/chatml_tools.jinja`, Hermes `<tool_call>` calls; the model's own template takes
/// no tools), `SmolLM2-135M-fused-tools` (the fused acc4 model with the same template) and
/// `SmolLM2-135M-llama-tools` (the shared SmolLM2 with `tests/tools/llama3_tools.jinja`, Llama
/// 3.x's JSON calls). Made in a fresh temporary folder; the models are linked, not copied.
pub fn tool_models() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let shared = models_dir().canonicalize().unwrap();
    link_entries(&shared, dir.path(), &[]);
    let smollm = shared.join("SmolLM2-135M-Instruct");
    let fused = fused_models().join("SmolLM2-135M-Instruct-fused-acc4");
    for (name, model, template) in [
        ("SmolLM2-135M-tools", &smollm, "chatml_tools.jinja"),
        ("SmolLM2-135M-fused-tools", &fused, "chatml_tools.jinja"),
        ("SmolLM2-135M-llama-tools", &smollm, "llama3_tools.jinja"),
    ] {
        let folder = dir.path().join(name);
        std::fs::create_dir(&folder).unwrap();
        link_entries(model, &folder, &["chat_template.jinja"]);
        let template = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tools").join(template);
        std::fs::copy(template, folder.join("chat_template.jinja")).unwrap();
    }
    dir
}

/// The python of a private venv holding the requirements file `requirements` (a path in the
/// checkout), made from PyPI once by `tools/venv.sh`.
pub fn venv_python(requirements: &str) -> PathBuf {
    venv_python_with(requirements, &[])
}

/// [`venv_python`], with `no_deps` packages installed without their dependencies (name them in
/// the requirements file too, so that its hash changes with them).
pub fn venv_python_with(requirements: &str, no_deps: &[&str]) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(root.join("tools/venv.sh"))
        .arg(root.join(requirements))
        .args(no_deps)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "cannot make the venv for {requirements} (PyPI reachable?)");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Writes a file only its owner may read (as the daemon wants its API key and TLS key).
pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// Drops the fields of a result that say what caches served it (`cached`, `prefix_tokens`):
/// they depend on what earlier requests left, the answer itself does not.
pub fn without_cache_fields(result: &mut serde_json::Value) {
    if let Some(fields) = result.as_object_mut() {
        fields.remove("cached");
        fields.remove("prefix_tokens");
    }
}

/// Parses a JSON file of the shared models.
pub fn reference(path: &str) -> serde_json::Value {
    let p = models_dir().join(path);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The environment every spawned steadytext process gets: library and models of the checkout.
pub fn command(bin: &str) -> Command {
    let mut c = Command::new(bin);
    c.env("STEADYTEXT_MODEL_DIR", models_dir());
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        c.env("ORT_DYLIB_PATH", PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".ort/libonnxruntime.so"));
    }
    // Direct mode's per-user cache goes to a folder of this test process, not the real home.
    c.env("XDG_CACHE_HOME", std::env::temp_dir().join(format!("steadytext-test-cache-{}", std::process::id())));
    c.env_remove("STEADYTEXT_SOCKET").env_remove("STEADYTEXT_DISABLE_DAEMON").env_remove("NOTIFY_SOCKET");
    c
}

/// PEM texts of a fresh test CA, and of a certificate for `localhost` / 127.0.0.1 it signed with
/// that certificate's key: (ca, cert, key).
pub fn test_pki() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // Distinct names: OpenSSL (curl) takes a leaf whose issuer equals its subject as self-signed.
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "steadytext test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// A TCP port of 127.0.0.1 that nothing listens on right now, below the kernel's ephemeral range
/// (`ip_local_port_range`, from 32768 by default), so no client socket of a parallel test can
/// hold it (a port the kernel picks for a probe socket can be any client's next source port), and
/// never the same port twice in one test process.
pub fn free_port() -> u16 {
    static NEXT: Mutex<u16> = Mutex::new(0);
    let mut next = NEXT.lock().unwrap_or_else(|p| p.into_inner());
    if *next == 0 {
        // Test binaries run one after another; a pid-spread start keeps reruns apart too.
        *next = 20_000 + (std::process::id() % 400) as u16 * 30;
    }
    loop {
        let port = *next;
        *next = if port >= 32_000 { 20_000 } else { port + 1 };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Extra daemon flags needed when the tests run as root (CI does).
pub fn root_flags() -> Vec<&'static str> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        vec!["--allow-root"]
    } else {
        vec![]
    }
}

/// Collects sd_notify datagrams sent to a socket in a temporary folder.
pub struct NotifyListener {
    /// The socket path to pass as NOTIFY_SOCKET.
    pub path: PathBuf,
    messages: Arc<Mutex<Vec<String>>>,
}

impl NotifyListener {
    /// Binds the socket and starts collecting.
    pub fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let m = messages.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = sock.recv(&mut buf) {
                m.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        NotifyListener { path, messages }
    }

    /// All datagrams so far.
    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits until a datagram after index `from` contains `needle`; returns its index.
    pub fn wait_for(&self, needle: &str, from: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) =
                self.messages().iter().enumerate().skip(from).find(|(_, m)| m.contains(needle)).map(|(i, _)| i)
            {
                return i;
            }
            assert!(Instant::now() < deadline, "no {needle:?} within {timeout:?}; got {:?}", self.messages());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A running daemon, killed on drop.
pub struct Daemon {
    /// The process (systemd-socket-activate exec()s into steadytextd, same pid).
    pub child: Child,
    /// Its Unix socket.
    pub socket: PathBuf,
    /// Its stderr log file.
    pub log: PathBuf,
    /// sd_notify messages.
    pub notify: NotifyListener,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts steadytextd the way systemd does: `systemd-socket-activate` holds the socket and
    /// execs the daemon on the first connection, with LISTEN_FDS/LISTEN_FDNAMES and NOTIFY_SOCKET.
    pub fn socket_activated(config_toml: &str, extra_env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        Self::socket_activated_in(dir, &state, config_toml, extra_env)
    }

    /// Like [`Daemon::socket_activated`], with the cache snapshots in `state` (which may outlive it).
    pub fn socket_activated_in(
        dir: tempfile::TempDir,
        state: &Path,
        config_toml: &str,
        extra_env: &[(&str, &str)],
    ) -> Self {
        let socket = dir.path().join("steadytext.sock");
        let notify = NotifyListener::bind(dir.path());
        let config = dir.path().join("steadytext.toml");
        std::fs::write(&config, config_toml).unwrap();
        let log = dir.path().join("daemon.log");
        let mut cmd = command("systemd-socket-activate");
        cmd.arg("-l").arg(&socket).arg("--fdname=unix");
        // systemd-socket-activate passes on only the variables named with -E, like systemd does.
        let ort = std::env::var_os("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".ort/libonnxruntime.so"));
        let mut env = vec![
            ("ORT_DYLIB_PATH".to_string(), ort.display().to_string()),
            ("STEADYTEXT_MODEL_DIR".to_string(), models_dir().display().to_string()),
            ("NOTIFY_SOCKET".to_string(), notify.path.display().to_string()),
            ("STATE_DIRECTORY".to_string(), state.display().to_string()),
        ];
        env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        for (k, v) in env {
            cmd.arg(format!("--setenv={k}={v}"));
        }
        cmd.arg(env!("CARGO_BIN_EXE_steadytextd")).arg("--config").arg(&config);
        cmd.args(root_flags());
        cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().expect("systemd-socket-activate (package systemd) must be installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "socket never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
        Daemon { child, socket, log, notify, _dir: dir }
    }

    /// Opens a connection. systemd-socket-activate binds the socket file before it listens on
    /// it: a refusal in between is retried.
    pub fn connect(&self) -> Conn {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match UnixStream::connect(&self.socket) {
                Ok(s) => return Conn::new(s),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("cannot connect to {}: {e}", self.socket.display()),
            }
        }
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit and returns its status code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "daemon did not exit; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw JSON-RPC connection for tests.
pub struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next: u64,
}

impl Conn {
    /// Wraps a connected stream.
    pub fn new(s: UnixStream) -> Self {
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        Conn { reader: BufReader::new(s.try_clone().unwrap()), writer: s, next: 1 }
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// Sends raw bytes to a daemon that may have closed the connection.
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// Reads one line as it came; None when the daemon closed the connection.
    pub fn read_raw(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(line),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(e) => panic!("reading from the daemon: {e}"),
        }
    }

    /// Reads one JSON line.
    pub fn read(&mut self) -> Value {
        let mut line = String::new();
        assert!(self.reader.read_line(&mut line).unwrap() > 0, "connection closed");
        serde_json::from_str(&line).unwrap()
    }

    /// Sends a request, returns its id.
    pub fn send(&mut self, method: &str, params: Value) -> Value {
        let id = json!(self.next);
        self.next += 1;
        let line = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id});
        self.send_raw(format!("{line}\n").as_bytes());
        id
    }

    /// Calls and returns the whole response (pieces of a stream are collected into "pieces").
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params);
        let mut pieces = Vec::new();
        loop {
            let msg = self.read();
            if msg["method"] == "generate.piece" {
                pieces.push(msg["params"]["text"].as_str().unwrap().to_string());
                continue;
            }
            assert_eq!(msg["id"], id);
            let mut msg = msg;
            msg["pieces"] = json!(pieces);
            return msg;
        }
    }
}
