//! `stctl` as a user runs it: exact output, direct vs daemon bytes, and one-line errors.

mod common;

use std::io::Write;
use std::process::{Output, Stdio};

use common::{command, Daemon};
use serde_json::Value;

fn stctl(args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
    let mut cmd = command(env!("CARGO_BIN_EXE_stctl"));
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// Asserts a clean failure: non-zero exit, one line on stderr containing `needle`, no panic.
fn assert_clean_error(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "should fail");
    assert_eq!(err.trim_end().lines().count(), 1, "one line expected: {err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn generate_prints_exactly_the_text_and_a_newline() {
    let reference = common::reference("SmolLM2-135M-Instruct/reference_ort.json");
    let case = &reference["cases"][0];
    let expected = format!("{}\n", case["greedy_text"].as_str().unwrap());
    let prompt = case["prompt"].as_str().unwrap();
    let out = stctl(&["--no-daemon", "generate", prompt, "--max-new-tokens", "48"], None, &[]);
    assert_eq!(stdout(&out), expected);
    let from_stdin = stctl(&["--no-daemon", "generate", "--max-new-tokens", "48"], Some(prompt), &[]);
    assert_eq!(stdout(&from_stdin), expected);
    let json: serde_json::Value = serde_json::from_str(&stdout(&stctl(
        &["--no-daemon", "generate", prompt, "--max-new-tokens", "48", "--json"],
        None,
        &[],
    )))
    .unwrap();
    assert_eq!(json["token_ids"], case["greedy_ids"]);
    assert!(json["model_digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(json["mode"], "direct");
}

#[test]
fn daemon_and_direct_mode_give_the_same_bytes() {
    let d = Daemon::socket_activated("", &[]);
    let socket = d.socket.to_str().unwrap();
    let via = |args: &[&str]| {
        let mut a = vec!["--daemon-only", "--socket", socket];
        a.extend_from_slice(args);
        stdout(&stctl(&a, None, &[]))
    };
    let direct = |args: &[&str]| {
        let mut a = vec!["--socket", socket];
        a.extend_from_slice(args);
        stdout(&stctl(&a, None, &[("STEADYTEXT_DISABLE_DAEMON", "1")]))
    };
    for args in [
        &["generate", "Tell me about bees.", "--max-new-tokens", "40"][..],
        &["generate", "Ünïcödé: write 漢字 and an emoji", "--max-new-tokens", "30", "--seed", "7"][..],
        &["generate", "Sample a poem", "--max-new-tokens", "20", "--temperature", "0.8", "--top-k", "40"][..],
        &["embed", "hello world", "a second text"][..],
    ] {
        assert_eq!(via(args), direct(args), "{args:?}");
    }
    // Both modes name the same engine fingerprint, the one `status` shows.
    let json = |text: String| serde_json::from_str::<serde_json::Value>(&text).unwrap();
    let daemon_answer = json(via(&["generate", "Tell me about bees.", "--max-new-tokens", "40", "--json"]));
    let direct_answer = json(direct(&["generate", "Tell me about bees.", "--max-new-tokens", "40", "--json"]));
    let status = json(via(&["status", "--json"]));
    assert_eq!(daemon_answer["engine_fingerprint"], status["engine_fingerprint"]);
    assert_eq!(direct_answer["engine_fingerprint"], status["engine_fingerprint"]);
    assert_eq!(status["engine_fingerprint"].as_str().unwrap().len(), 16);
    assert_eq!(json(via(&["embed", "x", "--json"]))["engine_fingerprint"], status["engine_fingerprint"]);
    // Embedding floats survive the wire bit for bit.
    let line = via(&["embed", "bits"]);
    let v: Vec<f32> = serde_json::from_str(line.trim()).unwrap();
    let mut embedder = steadytext::service::EmbeddingService::load(&common::config(0), None).unwrap();
    let params = steadytext::protocol::EmbedParams { texts: vec!["bits".into()], ..Default::default() };
    let local = embedder.run(&params.texts).unwrap().embeddings.remove(0);
    assert_eq!(
        v.iter().map(|f| f.to_bits()).collect::<Vec<_>>(),
        local.iter().map(|f| f.to_bits()).collect::<Vec<_>>()
    );
    let verbose = stctl(&["--socket", socket, "-v", "ping"], None, &[]);
    assert!(stdout(&verbose).starts_with("pong"));
}

#[test]
fn falls_back_to_direct_mode_unless_told_not_to() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.sock");
    let m = missing.to_str().unwrap();
    let out = stctl(&["--socket", m, "-v", "embed", "x"], None, &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("falling back to direct mode"));
    assert!(stdout(&out).starts_with('['));
    let out = stctl(&["--socket", m, "--daemon-only", "embed", "x"], None, &[]);
    assert_clean_error(&out, "--daemon-only");
}

#[test]
fn user_errors_are_one_clear_line() {
    let out = stctl(&["--no-daemon", "generate", "hi"], None, &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")]);
    assert_clean_error(&out, "/nonexistent/libonnxruntime.so");
    assert_clean_error(&out, "fetch-onnxruntime.sh");

    let out = stctl(&["--no-daemon", "generate", "hi", "--model", "no-such-model"], None, &[]);
    assert_clean_error(&out, "STEADYTEXT_MODEL_DIR");

    // A model folder whose model.onnx is garbage.
    let dir = tempfile::tempdir().unwrap();
    let src = common::models_dir().join("SmolLM2-135M-Instruct");
    for f in ["tokenizer.json", "config.json", "generation_config.json", "tokenizer_config.json", "chat_template.jinja"]
    {
        std::os::unix::fs::symlink(src.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("model.onnx"), b"\x08\x07garbage that is not protobuf").unwrap();
    let out = stctl(&["--no-daemon", "generate", "hi", "--model", dir.path().to_str().unwrap()], None, &[]);
    assert_clean_error(&out, "corrupt");

    let long_prompt = "word ".repeat(9000);
    let out = stctl(&["--no-daemon", "generate", "--max-new-tokens", "4"], Some(&long_prompt), &[]);
    assert_clean_error(&out, "shorten the prompt");

    let out = stctl(&["--no-daemon", "generate", "hi", "--temperature=-1"], None, &[]);
    assert_clean_error(&out, "temperature");

    let out = stctl(&["--no-daemon", "generate", "hi"], None, &[("STEADYTEXT_DEFAULT_SEED", "abc")]);
    assert_clean_error(&out, "STEADYTEXT_DEFAULT_SEED");
}

#[test]
fn tcp_listener_and_idle_exit() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let port = common::free_port();
    let key_file = dir.path().join("api-key");
    common::write_private(&key_file, "test-key-0123456789abcdef\n");
    let mut daemon = command(env!("CARGO_BIN_EXE_steadytextd"))
        .env("STEADYTEXT_API_KEY_FILE", &key_file)
        .args(common::root_flags())
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--listen")
        .arg(format!("tcp:127.0.0.1:{port}"))
        .args(["--idle-exit", "2"])
        .env("STATE_DIRECTORY", dir.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let port = port.to_string();
    let tcp = [
        ("STEADYTEXT_DAEMON_HOST", "127.0.0.1"),
        ("STEADYTEXT_DAEMON_PORT", port.as_str()),
        ("STEADYTEXT_API_KEY", "test-key-0123456789abcdef"),
    ];
    let mut out = None;
    for _ in 0..100 {
        let o = stctl(&["--daemon-only", "embed", "over tcp"], None, &tcp);
        if o.status.success() {
            out = Some(o);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let via_tcp = stdout(&out.expect("the daemon answers over TCP"));
    let via_unix =
        stdout(&stctl(&["--daemon-only", "--socket", sock.to_str().unwrap(), "embed", "over tcp"], None, &[]));
    assert_eq!(via_tcp, via_unix);
    // No client for 2 seconds: the daemon exits cleanly and removes the socket it bound.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = daemon.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "no idle exit");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(status.success());
    assert!(!sock.exists());
}

/// Starts a daemon on a Unix socket and a TCP port with the given key file; returns it, the
/// socket and the port.
fn tcp_daemon(
    dir: &std::path::Path,
    key_file: Option<&std::path::Path>,
    host: &str,
    env: &[(&str, &std::path::Path)],
) -> (std::process::Child, u16) {
    let port = common::free_port();
    let mut cmd = command(env!("CARGO_BIN_EXE_steadytextd"));
    cmd.envs(env.iter().copied());
    if let Some(key) = key_file {
        cmd.env("STEADYTEXT_API_KEY_FILE", key);
    }
    let child = cmd
        .args(common::root_flags())
        .arg("--listen")
        .arg(format!("unix:{}", dir.join("s.sock").display()))
        .arg("--listen")
        .arg(format!("tcp:{host}:{port}"))
        .env("STATE_DIRECTORY", dir)
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    (child, port)
}

/// Sends `lines` on a new TCP connection; reads answers until the daemon closes it or `most`
/// have come.
fn tcp_lines(port: u16, lines: &[&[u8]], most: usize) -> Vec<Value> {
    use std::io::{BufRead, Write};
    let mut s = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    };
    s.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
    for line in lines {
        let _ = s.write_all(line);
    }
    std::io::BufReader::new(s)
        .lines()
        .map_while(Result::ok)
        .take(most)
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect()
}

#[test]
fn tcp_needs_the_api_key_first_and_refuses_http() {
    use steadytext::protocol::codes;
    let dir = tempfile::tempdir().unwrap();
    // Without a key, or on a non-loopback address, the daemon refuses to start.
    let (mut no_key, _) = tcp_daemon(dir.path(), None, "127.0.0.1", &[]);
    assert!(!no_key.wait().unwrap().success());
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    assert!(log.contains("needs an API key") && log.contains("api_key_file"), "{log}");
    let key_file = dir.path().join("api-key");
    common::write_private(&key_file, "right-key-0123456789abcdef\n");
    let (mut public, _) = tcp_daemon(dir.path(), Some(&key_file), "0.0.0.0", &[]);
    assert!(!public.wait().unwrap().success());
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    assert!(log.contains("not a loopback address"), "{log}");

    let (mut daemon, port) = tcp_daemon(dir.path(), Some(&key_file), "127.0.0.1", &[]);
    let ping = b"{\"jsonrpc\":\"2.0\",\"method\":\"ping\",\"id\":1}\n";
    // Anything before auth: unauthorized, and the connection is closed (the ping never runs).
    let answers = tcp_lines(port, &[ping, ping], 9);
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0]["error"]["code"], codes::UNAUTHORIZED);
    assert!(answers[0]["error"]["message"].as_str().unwrap().contains("STEADYTEXT_API_KEY"));
    // A wrong key: the same.
    let wrong =
        b"{\"jsonrpc\":\"2.0\",\"method\":\"auth\",\"params\":{\"key\":\"wrong-key-0123456789abcdef\"},\"id\":1}\n";
    let answers = tcp_lines(port, &[wrong, ping], 9);
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0]["error"]["code"], codes::UNAUTHORIZED);
    // The right key: then requests are served on that connection.
    let right =
        b"{\"jsonrpc\":\"2.0\",\"method\":\"auth\",\"params\":{\"key\":\"right-key-0123456789abcdef\"},\"id\":1}\n";
    let answers = tcp_lines(port, &[right, b"{\"jsonrpc\":\"2.0\",\"method\":\"ping\",\"id\":2}\n"], 2);
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert_eq!(answers[1]["result"]["protocol"], 1);
    // What a web page can make a browser send: refused at the request line, the body never runs.
    let clear = b"{\"jsonrpc\":\"2.0\",\"method\":\"cache.clear\",\"id\":9}\n";
    let answers = tcp_lines(port, &[b"POST / HTTP/1.1\r\nContent-Type: text/plain\r\n\r\n", right, clear], 9);
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0]["error"]["code"], codes::INVALID_REQUEST);
    let status = stdout(&stctl(
        &["--daemon-only", "--socket", dir.path().join("s.sock").to_str().unwrap(), "status", "--json"],
        None,
        &[],
    ));
    assert!(!status.contains("cache.clear"), "the HTTP body ran: {status}");
    // stctl sends the key from STEADYTEXT_API_KEY; without it, the daemon's reason is shown.
    let port = port.to_string();
    let tcp = [("STEADYTEXT_DAEMON_HOST", "127.0.0.1"), ("STEADYTEXT_DAEMON_PORT", port.as_str())];
    let refused = stctl(&["--daemon-only", "ping"], None, &tcp);
    assert_clean_error(&refused, "unauthorized");
    let with_key = [tcp[0], tcp[1], ("STEADYTEXT_API_KEY", "right-key-0123456789abcdef")];
    assert!(stctl(&["--daemon-only", "ping"], None, &with_key).status.success());
    let _ = daemon.kill();
    let _ = daemon.wait();
}

#[test]
fn tls_lets_remote_addresses_in_with_a_checked_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        common::write_private(&path, text);
        path
    };
    let (ca, cert, key) = common::test_pki();
    let (ca, cert, key) = (write("ca.pem", &ca), write("cert.pem", &cert), write("key.pem", &key));
    let api_key = write("api-key", "right-key-0123456789abcdef\n");
    let other_ca = write("other-ca.pem", &common::test_pki().0);
    let daemon_log = || std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    // Misconfigured TLS stops the start with the reason: a certificate without its key, files swapped.
    let (mut alone, _) = tcp_daemon(dir.path(), Some(&api_key), "0.0.0.0", &[("STEADYTEXT_TLS_CERT_FILE", &cert)]);
    assert!(!alone.wait().unwrap().success());
    assert!(daemon_log().contains("both a certificate and its key"), "{}", daemon_log());
    let swapped = [("STEADYTEXT_TLS_CERT_FILE", key.as_path()), ("STEADYTEXT_TLS_KEY_FILE", cert.as_path())];
    let (mut swapped, _) = tcp_daemon(dir.path(), Some(&api_key), "0.0.0.0", &swapped);
    assert!(!swapped.wait().unwrap().success());
    assert!(daemon_log().contains("no PEM certificate"), "{}", daemon_log());

    // With a certificate, a non-loopback address is served, over TLS only.
    let config = write("steadytext.toml", "[daemon]\nline_timeout_secs = 2\n");
    let tls = [
        ("STEADYTEXT_TLS_CERT_FILE", cert.as_path()),
        ("STEADYTEXT_TLS_KEY_FILE", key.as_path()),
        ("STEADYTEXT_CONFIG", config.as_path()),
    ];
    let (mut daemon, port) = tcp_daemon(dir.path(), Some(&api_key), "0.0.0.0", &tls);
    let addr = format!("tls:localhost:{port}");
    let ca_arg = ca.to_str().unwrap();
    let keyed = [("STEADYTEXT_API_KEY", "right-key-0123456789abcdef")];
    let embed = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["--daemon-only", "--socket", &addr];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["embed", "over tls"]);
        stctl(&args, None, env)
    };
    let mut answered = None;
    for _ in 0..150 {
        let o = embed(&["--ca-file", ca_arg], &keyed);
        if o.status.success() {
            answered = Some(o);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let via_tls = stdout(&answered.unwrap_or_else(|| panic!("no answer over TLS: {}", daemon_log())));
    let unix = dir.path().join("s.sock");
    let via_unix =
        stdout(&stctl(&["--daemon-only", "--socket", unix.to_str().unwrap(), "embed", "over tls"], None, &[]));
    assert_eq!(via_tls, via_unix);
    // The CA can also come from the environment.
    assert!(embed(&[], &[keyed[0], ("STEADYTEXT_CA_FILE", ca_arg)]).status.success());
    // A certificate from another CA is refused, saying how to trust the right one.
    assert_clean_error(&embed(&["--ca-file", other_ca.to_str().unwrap()], &keyed), "--ca-file");
    // TLS does not replace the key.
    assert_clean_error(&embed(&["--ca-file", ca_arg], &[]), "unauthorized");
    // Clear-text JSON-RPC on the TLS port is never run or answered.
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    plain.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    std::io::Write::write_all(&mut plain, b"{\"jsonrpc\":\"2.0\",\"method\":\"ping\",\"id\":1}\n").unwrap();
    let mut reply = Vec::new();
    let _ = std::io::Read::read_to_end(&mut plain, &mut reply);
    assert!(!String::from_utf8_lossy(&reply).contains("jsonrpc"), "answered in clear text: {reply:?}");
    // A client that never starts its handshake is cut off after line_timeout_secs.
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    silent.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let started = std::time::Instant::now();
    let closed = std::io::Read::read(&mut silent, &mut [0u8; 64]);
    assert!(matches!(closed, Ok(0)) || closed.is_err(), "{closed:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "held for {:?}", started.elapsed());
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// steadytextd started by hand on the Unix socket `sock`, state and log (`daemon.log`) in `dir`.
fn unix_daemon(dir: &std::path::Path, sock: &std::path::Path, env: &[(&str, &str)]) -> std::process::Child {
    command(env!("CARGO_BIN_EXE_steadytextd"))
        .args(common::root_flags())
        .args(["--listen", &format!("unix:{}", sock.display())])
        .envs(env.iter().copied())
        .env("STATE_DIRECTORY", dir)
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
        .spawn()
        .unwrap()
}

#[test]
fn a_missing_model_is_reported_the_other_one_serves_and_sighup_loads_it_once_installed() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    // A model folder with the generation model only; the embedding model is installed later.
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    std::os::unix::fs::symlink(
        common::models_dir().join("SmolLM2-135M-Instruct"),
        models.join("SmolLM2-135M-Instruct"),
    )
    .unwrap();
    let models_arg = models.to_str().unwrap();
    let mut daemon = unix_daemon(
        dir.path(),
        &sock,
        &[("STEADYTEXT_MODEL_DIR", models_arg), ("STEADYTEXT_EMBEDDING_MODEL", "not-installed")],
    );
    let socket = ["--daemon-only", "--socket", sock.to_str().unwrap()];
    fn with<'a>(socket: &[&'a str], args: &[&'a str]) -> Vec<&'a str> {
        [socket, args].concat()
    }
    let mut ping = None;
    for _ in 0..150 {
        let o = stctl(&with(&socket, &["ping"]), None, &[]);
        if o.status.success() {
            ping = Some(o);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(ping.is_some(), "the daemon did not start without its embedding model");
    // The model it has serves; the missing one answers with the reason and what to do.
    assert!(stctl(&with(&socket, &["generate", "hi", "--max-new-tokens", "4"]), None, &[]).status.success());
    let embed = stctl(&with(&socket, &["embed", "x"]), None, &[]);
    assert_clean_error(&embed, "could not be loaded");
    let err = String::from_utf8_lossy(&embed.stderr);
    assert!(err.contains("not-installed") && err.contains("stctl models pull"), "{err}");
    let status = stdout(&stctl(&with(&socket, &["status"]), None, &[]));
    assert!(status.contains("unavailable: embedding not-installed"), "{status}");
    // Installed later (as `stctl models pull` would), SIGHUP loads it and it serves.
    std::os::unix::fs::symlink(common::models_dir().join("all-MiniLM-L6-v2"), models.join("not-installed")).unwrap();
    // SAFETY: kill has no memory preconditions; the pid is our child's.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGHUP) };
    let mut served = None;
    for _ in 0..150 {
        let o = stctl(&with(&socket, &["embed", "x"]), None, &[]);
        if o.status.success() {
            served = Some(o);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(served.is_some(), "SIGHUP did not load the model installed since");
    let status = stdout(&stctl(&with(&socket, &["status"]), None, &[]));
    assert!(!status.contains("unavailable"), "{status}");
    let _ = daemon.kill();
    let _ = daemon.wait();
}

#[test]
fn a_stop_while_models_load_is_clean() {
    // JSON-RPC answers while the models load; a SIGTERM then stops the daemon at once, cleanly
    // (exit 0, socket file removed), instead of killing it mid-load.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let mut daemon = unix_daemon(dir.path(), &sock, &[]);
    let socket = ["--daemon-only", "--socket", sock.to_str().unwrap(), "status", "--json"];
    let mut loading = None;
    for _ in 0..300 {
        let o = stctl(&socket, None, &[]);
        if o.status.success() {
            loading = Some(serde_json::from_slice::<Value>(&o.stdout).unwrap());
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let status = loading.expect("the daemon answered status while loading");
    // SAFETY: kill has no memory preconditions; the pid is our child's.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().unwrap().success(), "{}", std::fs::read_to_string(dir.path().join("daemon.log")).unwrap());
    assert!(!sock.exists(), "the socket file was left behind");
    // The decoder takes over a second to load: the status above was taken while it did.
    assert!(status["loading"].as_array().is_some_and(|l| !l.is_empty()), "{status}");
}
