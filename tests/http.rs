//! The HTTP front against real clients: the official `openai` Python package (unchanged),
//! `curl`, and hostile raw sockets.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::http::{curl, HttpDaemon, KEY};
use serde_json::Value;

const GENERATION: &str = "SmolLM2-135M-Instruct";
const EMBEDDING: &str = "all-MiniLM-L6-v2";

/// The python of the private venv with `openai` and `prometheus_client` (made from PyPI).
fn python() -> PathBuf {
    common::venv_python("tests/python/requirements.txt")
}

fn f32_bits(line: &str) -> Vec<u64> {
    let values: Vec<f32> = serde_json::from_str(line).unwrap();
    values.iter().map(|v| u64::from(v.to_bits())).collect()
}

#[test]
fn the_openai_package_gets_stctls_answers() {
    let python = python();
    let daemon = HttpDaemon::start("");
    // /health answers 503 while the models load, then 200.
    let codes = daemon.health_until_ready();
    assert_eq!(codes.first(), Some(&503), "{codes:?}");
    assert_eq!(codes.last(), Some(&200));

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_client.py");
    let out =
        Command::new(&python).arg(script).args([&daemon.url("/v1"), KEY, GENERATION, EMBEDDING]).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), daemon.log());
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();

    let chat = daemon.stctl(&["generate", "Name three colors.", "--max-new-tokens", "24"]);
    assert_eq!(got["chat"].as_str().unwrap(), chat.strip_suffix('\n').unwrap());
    assert_eq!(got["chat_stream"], got["chat"], "streamed pieces concatenate to the text");
    assert!(got["chat_stream_pieces"].as_u64().unwrap() > 1, "{got}");
    assert_eq!(got["chat_stream_usage"], got["chat_usage"]);
    let usage: Vec<u64> = serde_json::from_value(got["chat_usage"].clone()).unwrap();
    assert_eq!(usage[0] + usage[1], usage[2]);
    assert!(got["fingerprint"].as_str().unwrap().starts_with("fp_"));
    // The second turn of a conversation reused the whole first prompt (it ends with the
    // assistant's header, where a turn opens: a prefill boundary), as OpenAI's usage and the
    // request log say.
    let cached: Vec<usize> = serde_json::from_value(got["conversation_cached_tokens"].clone()).unwrap();
    assert_eq!(cached[0], 0);
    assert_eq!(cached[1], cached[2], "{cached:?}");
    let log = daemon.log();
    assert!(!log.contains('\u{1b}'), "a log file gets no terminal colours: {log}");
    assert!(log.contains(&format!("prefix_tokens={}", cached[1])), "{log}");

    // Log-probabilities through the OpenAI shapes are stctl's (f32 values printed as f64).
    let stctl_logprobs: Value = serde_json::from_str(&daemon.stctl(&[
        "generate",
        "Name three colors.",
        "--max-new-tokens",
        "8",
        "--json",
        "--logprobs",
        "--top-logprobs",
        "3",
    ]))
    .unwrap();
    let expected: Vec<Value> = stctl_logprobs["logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let top: Vec<&Value> = t["top_logprobs"].as_array().unwrap().iter().map(|a| &a["token"]).collect();
            serde_json::json!([t["token"], t["logprob"], top])
        })
        .collect();
    assert_eq!(expected.len(), 8);
    assert_eq!(got["chat_logprobs"], Value::from(expected), "OpenAI chat logprobs are stctl's");
    assert_eq!(got["chat_stream_logprobs"], got["chat_logprobs"], "a stream carries the same logprobs");

    let sampled =
        daemon.stctl(&["generate", "Tell me a word.", "--temperature", "0.8", "--seed", "7", "--max-new-tokens", "16"]);
    assert_eq!(got["sampled"].as_str().unwrap(), sampled.strip_suffix('\n').unwrap());
    let completion = daemon.stctl(&["generate", "--raw", "The capital of France is", "--max-new-tokens", "12"]);
    assert_eq!(got["completion"].as_str().unwrap(), completion.strip_suffix('\n').unwrap());
    assert_eq!(got["completion_stream"], got["completion"]);

    let embed = daemon.stctl(&["embed", "first text", "second text"]);
    let expected: Vec<Vec<u64>> = embed.lines().map(f32_bits).collect();
    let floats: Vec<Vec<u64>> = serde_json::from_value(got["embeddings_float"].clone()).unwrap();
    assert_eq!(floats, expected, "float embeddings are stctl's bits");
    let base64: Vec<Vec<u64>> = serde_json::from_value(got["embeddings_base64"].clone()).unwrap();
    assert_eq!(base64[0], expected[0], "base64 embeddings are stctl's bits");
    assert_eq!(got["embeddings_dimensions"], 64);
    assert!(got["embeddings_usage"].as_u64().unwrap() > 2);

    assert_eq!(got["models"], serde_json::json!([GENERATION, EMBEDDING]));
    assert_eq!(got["wrong_key"], 401);
    assert_eq!(got["n2"], 400);

    let metrics = &got["metrics"];
    assert_eq!(metrics["steadytext_request_duration_seconds"]["type"], "histogram", "{metrics}");
    let samples = metrics["steadytext_request_duration_seconds"]["samples"].to_string();
    for suffix in ["_bucket", "_sum", "_count"] {
        assert!(samples.contains(suffix), "{samples}");
    }
    assert_eq!(metrics["steadytext_first_piece_seconds"]["type"], "histogram");
    assert_eq!(metrics["steadytext_tokens_generated"]["type"], "counter");
    assert_eq!(metrics["steadytext_cache_hits"]["type"], "counter");
    assert_eq!(metrics["steadytext_cache_misses"]["type"], "counter");
    assert_eq!(metrics["steadytext_queue_depth"]["type"], "gauge");
    assert_eq!(metrics["steadytext_prefix_cache_hits"]["type"], "counter");
    assert_eq!(metrics["steadytext_prefix_cache_bytes"]["type"], "gauge");
}

#[test]
fn keys_limits_and_slow_clients() {
    let daemon = HttpDaemon::start("[daemon]\nline_timeout_secs = 2\nauth_timeout_secs = 1\n");
    // stctl waits out the loading (503 with Retry-After) as a JSON-RPC client waits in the queue.
    while curl(&[&daemon.url("/health")]).0 == 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let early = daemon.stctl_at(&daemon.url(""), &["ping"], &[("STEADYTEXT_API_KEY", KEY)]);
    assert!(early.status.success(), "{}", String::from_utf8_lossy(&early.stderr));
    let bearer = format!("Authorization: Bearer {KEY}");
    // No key or a wrong one: 401 in OpenAI's error shape; /health needs none.
    let (code, body) = curl(&[&daemon.url("/v1/models")]);
    assert_eq!(code, 401, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("Bearer"), "{body}");
    let (code, _) = curl(&["-H", "Authorization: Bearer wrong-key-0123456789abcdef", &daemon.url("/v1/models")]);
    assert_eq!(code, 401);
    assert_eq!(curl(&["-H", &bearer, &daemon.url("/v1/models")]).0, 200);
    // A body over the limit: 413, and the daemon goes on serving.
    let big = daemon.dir.path().join("big.json");
    std::fs::write(&big, format!("{{\"input\": \"{}\", \"model\": \"{EMBEDDING}\"}}", "a".repeat(9 << 20))).unwrap();
    let (code, body) =
        curl(&["-H", &bearer, "--data-binary", &format!("@{}", big.display()), &daemon.url("/v1/embeddings")]);
    assert_eq!(code, 413, "{body}");
    // Malformed JSON, unknown fields and routes: clear 400 / 404 errors.
    let (code, body) = curl(&["-H", &bearer, "-d", "{not json", &daemon.url("/v1/chat/completions")]);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("invalid JSON body"), "{body}");
    let unknown = format!(r#"{{"model":"{GENERATION}","messages":[{{"role":"user","content":"x"}}],"tools":[]}}"#);
    let (code, body) = curl(&["-H", &bearer, "-d", &unknown, &daemon.url("/v1/chat/completions")]);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("tools"), "{body}");
    assert_eq!(curl(&["-H", &bearer, &daemon.url("/v2/nothing")]).0, 404);
    let wrong_model = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}"#;
    let (code, body) = curl(&["-H", &bearer, "-d", wrong_model, &daemon.url("/v1/chat/completions")]);
    assert!(code == 400 || code == 404 || code == 503, "{code} {body}");
    assert!(body.contains("gpt-4o"), "{body}");

    // A kept-alive connection that presented the key outlives the deadline to authenticate
    // (auth_timeout_secs): its next request is answered. It was closed at the deadline, a request
    // in flight dropped without an answer, when the daemon had begun waiting for its key before
    // the first request came (hence the moment before it).
    let mut kept = TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let request = format!("GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n");
    for _ in 0..2 {
        kept.write_all(request.as_bytes()).unwrap();
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\r\n\r\n") {
            assert_eq!(kept.read(&mut byte).unwrap(), 1, "closed: {}", String::from_utf8_lossy(&answer));
            answer.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&answer).to_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let length = head.split("content-length: ").nth(1).and_then(|l| l.split("\r\n").next()).unwrap();
        kept.read_exact(&mut vec![0u8; length.parse().unwrap()]).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
    }
    // A client that sends its headers byte by byte and then stalls is cut off after
    // line_timeout_secs; others are served meanwhile.
    let mut slow = TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " {
        slow.write_all(&[*byte]).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    assert_eq!(curl(&[&daemon.url("/health")]).0, 200, "another client is served meanwhile");
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    let held = started.elapsed();
    assert!(held < Duration::from_secs(10), "the stalled client was held {held:?}");
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"), "{}", String::from_utf8_lossy(&rest));
    // stctl speaks to the HTTP front too (POST /v1/rpc), with the same answers and errors.
    let base = daemon.url("");
    let over_http =
        daemon.stctl_at(&base, &["generate", "Say hi.", "--max-new-tokens", "8"], &[("STEADYTEXT_API_KEY", KEY)]);
    assert!(over_http.status.success(), "{}", String::from_utf8_lossy(&over_http.stderr));
    assert_eq!(
        String::from_utf8(over_http.stdout).unwrap(),
        daemon.stctl(&["generate", "Say hi.", "--max-new-tokens", "8"])
    );
    let embed_http = daemon.stctl_at(&base, &["embed", "one", "two"], &[("STEADYTEXT_API_KEY", KEY)]);
    assert_eq!(String::from_utf8(embed_http.stdout).unwrap(), daemon.stctl(&["embed", "one", "two"]));
    let refused = daemon.stctl_at(&base, &["ping"], &[]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("HTTP 401") && stderr.lines().count() == 1, "{stderr}");
    // Probes, and the headers a load balancer can use: the engine and whether it was a cache hit.
    assert_eq!(curl(&[&daemon.url("/health/live")]).0, 200);
    assert_eq!(curl(&[&daemon.url("/health/ready")]).0, 200);
    let status: Value = serde_json::from_str(&daemon.stctl(&["status", "--json"])).unwrap();
    let engine = status["engine_fingerprint"].as_str().unwrap().to_string();
    assert_eq!(engine.len(), 16, "{status}");
    let completion = format!(r#"{{"model":"{GENERATION}","prompt":"Headers.","max_tokens":3}}"#);
    for expected in ["miss", "hit"] {
        let (code, head) =
            curl(&["-H", &bearer, "-d", &completion, "-D", "-", "-o", "/dev/null", &daemon.url("/v1/completions")]);
        assert_eq!(code, 200, "{head}");
        assert!(head.contains(&format!("x-steadytext-engine: {engine}")), "{head}");
        assert!(head.contains(&format!("x-steadytext-cache: {expected}")), "{head}");
    }
    // Over JSON-RPC-over-HTTP, steadytext's own methods answer too.
    let rpc = r#"{"jsonrpc":"2.0","id":"a","method":"ping"}"#;
    let (code, body) = curl(&["-H", &bearer, "-d", rpc, &daemon.url("/v1/rpc")]);
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(answer["id"], "a");
    assert_eq!(answer["result"]["protocol"], 1);
}

#[test]
fn https_with_the_daemons_certificate() {
    let (pki, config) = common::http::tls_files();
    let daemon = HttpDaemon::start(&config);
    let base = format!("https://localhost:{}", daemon.port);
    let ca = pki.path().join("ca.pem");
    let ca_arg = ca.to_str().unwrap();
    daemon.health_over(&base, ca_arg);
    let keyed = [("STEADYTEXT_API_KEY", KEY)];
    let answer = daemon.stctl_at(&base, &["--ca-file", ca_arg, "embed", "over https"], &keyed);
    assert!(answer.status.success(), "{}", String::from_utf8_lossy(&answer.stderr));
    assert_eq!(String::from_utf8(answer.stdout).unwrap(), daemon.stctl(&["embed", "over https"]));
    // Without the CA the certificate is not trusted.
    let refused = daemon.stctl_at(&base, &["ping"], &keyed);
    assert!(!refused.status.success());
    // Clear-text HTTP on the TLS port gets no HTTP answer.
    assert_ne!(curl(&[&daemon.url("/health")]).0, 200);
}
