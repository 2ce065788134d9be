//! Throughput and latency figures: generation tokens/s, embedding sentences/s, and the cost of a
//! daemon round trip against direct (in-process) execution of the same request.
//! Run with `make bench` (or `cargo bench --bench engine`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use steadytext::config::Config;
use steadytext::core::validate::ToRequest;
use steadytext::protocol::{EmbedParams, GenerateParams};
use steadytext::service::{EmbeddingService, GenerationService};

fn config() -> Config {
    let mut c = Config::default();
    c.apply_env(|k| std::env::var(k).ok().filter(|v| !v.is_empty())).expect("environment");
    if std::env::var_os("STEADYTEXT_MODEL_DIR").is_none() {
        c.model_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/models");
    }
    c
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn p(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

struct Rpc {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Rpc {
    fn call(&mut self, line: &str) -> String {
        self.writer.write_all(line.as_bytes()).unwrap();
        self.writer.write_all(b"\n").unwrap();
        loop {
            let mut out = String::new();
            self.reader.read_line(&mut out).unwrap();
            if !out.contains("generate.piece") {
                return out;
            }
        }
    }
}

/// A kept-open HTTP/1.1 connection to the daemon's HTTP front.
struct Http {
    reader: BufReader<std::net::TcpStream>,
    writer: std::net::TcpStream,
    key: String,
}

impl Http {
    /// POSTs `body` to `path`; returns the time to the first body byte and to the whole answer.
    fn post(&mut self, path: &str, body: &str) -> (Duration, Duration) {
        let t = Instant::now();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.key,
            body.len()
        );
        self.writer.write_all(head.as_bytes()).unwrap();
        self.writer.write_all(body.as_bytes()).unwrap();
        let (mut length, mut chunked) = (0usize, false);
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            chunked |= lower.starts_with("transfer-encoding: chunked");
            if line == "\r\n" {
                break;
            }
        }
        let mut first = None;
        if chunked {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size).unwrap();
                first.get_or_insert_with(|| t.elapsed());
                let n = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut chunk = vec![0; n + 2];
                std::io::Read::read_exact(&mut self.reader, &mut chunk).unwrap();
                if n == 0 {
                    break;
                }
            }
        } else {
            let mut answer = vec![0; length];
            std::io::Read::read_exact(&mut self.reader, &mut answer).unwrap();
        }
        let whole = t.elapsed();
        (first.unwrap_or(whole), whole)
    }
}

fn main() {
    let config = config();
    println!(
        "steadytext benchmark ({} intra-op threads, {} cores)",
        config.effective_intra_threads(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );

    // Generation throughput.
    let t = Instant::now();
    let mut generator = GenerationService::load(&config, None).expect("generation model");
    println!("generation model load: {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    let prompts = [
        "Write a story about a lighthouse keeper.",
        "Explain how a compiler works.",
        "List ten facts about the ocean.",
    ];
    let mut tokens = 0usize;
    let t = Instant::now();
    for prompt in prompts {
        let params = GenerateParams { prompt: prompt.into(), max_new_tokens: Some(128), ..Default::default() };
        tokens +=
            generator.run(&params.to_request(&config).unwrap(), &mut |_| true).unwrap().generation.token_ids.len();
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "generate: {tokens} tokens in {secs:.2} s = {:.1} tokens/s (greedy, prefill included)",
        tokens as f64 / secs
    );

    // Embedding throughput.
    let mut embedder = EmbeddingService::load(&config, None).expect("embedding model");
    let texts: Vec<String> =
        (0..256).map(|i| format!("Sentence number {i} about deterministic embeddings and systemd services.")).collect();
    let t = Instant::now();
    for chunk in texts.chunks(64) {
        embedder.run(chunk).unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "embed: {} sentences in {secs:.2} s = {:.1} sentences/s (batches of 64)",
        texts.len(),
        texts.len() as f64 / secs
    );
    let t = Instant::now();
    for text in &texts[..64] {
        embedder.run(std::slice::from_ref(text)).unwrap();
    }
    println!("embed: {:.1} sentences/s one at a time", 64.0 / t.elapsed().as_secs_f64());

    // Daemon round trip against direct execution, same requests.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bench.sock");
    let http_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let key = "bench-key-0123456789abcdef".to_string();
    std::fs::write(dir.path().join("api-key"), &key).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_steadytextd"));
    cmd.arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .arg("--listen")
        .arg(format!("http:127.0.0.1:{http_port}"))
        .env("STEADYTEXT_API_KEY_FILE", dir.path().join("api-key"))
        .env("STEADYTEXT_MODEL_DIR", &config.model_dir)
        .env("STATE_DIRECTORY", dir.path())
        .stderr(Stdio::null());
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.arg("--allow-root");
    }
    let mut daemon = cmd.spawn().expect("steadytextd");
    while !socket.exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = UnixStream::connect(&socket).unwrap();
    let mut rpc = Rpc { reader: BufReader::new(s.try_clone().unwrap()), writer: s };
    rpc.call(r#"{"jsonrpc":"2.0","method":"ping","id":0}"#); // waits for READY
    let pings: Vec<f64> = (0..500)
        .map(|_| {
            let t = Instant::now();
            rpc.call(r#"{"jsonrpc":"2.0","method":"ping","id":1}"#);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    println!(
        "daemon ping round trip: p50 {:.3} ms, p99 {:.3} ms (kept-open Unix socket)",
        p(&pings, 0.5),
        p(&pings, 0.99)
    );
    // Uncached round trips: every request is new to the cache (another text; another seed, which
    // greedy decoding ignores, so the work is the same), against the same work in-process.
    let via_daemon = median(
        (0..200)
            .map(|i| {
                let line =
                    format!(r#"{{"jsonrpc":"2.0","method":"embed","params":{{"texts":["hello world {i}"]}},"id":2}}"#);
                let t = Instant::now();
                rpc.call(&line);
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    let direct = median(
        (0..200)
            .map(|i| {
                let params = EmbedParams { texts: vec![format!("hello world {i}")], ..Default::default() };
                let t = Instant::now();
                embedder.run(&params.texts).unwrap();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    println!(
        "embed 1 text, uncached: daemon {via_daemon:.3} ms vs direct {direct:.3} ms median (round-trip cost {:.3} ms)",
        via_daemon - direct
    );
    let via_daemon = median((0..20).map(|i| {
        let line = format!(r#"{{"jsonrpc":"2.0","method":"generate","params":{{"prompt":"Say hi.","max_new_tokens":8,"seed":{i}}},"id":3}}"#);
        let t = Instant::now();
        rpc.call(&line);
        t.elapsed().as_secs_f64() * 1e3
    }).collect());
    let gp = GenerateParams { prompt: "Say hi.".into(), max_new_tokens: Some(8), ..Default::default() }
        .to_request(&config)
        .unwrap();
    let direct = median(
        (0..20)
            .map(|_| {
                let t = Instant::now();
                generator.run(&gp, &mut |_| true).unwrap();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    println!("generate 8 tokens, uncached: daemon {via_daemon:.2} ms vs direct {direct:.2} ms median (round-trip cost {:.2} ms)", via_daemon - direct);
    let embed_line = r#"{"jsonrpc":"2.0","method":"embed","params":{"texts":["hello world 0"]},"id":2}"#;
    let cold = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_stctl"))
        .args(["--no-daemon", "embed", "hello world"])
        .env("STEADYTEXT_MODEL_DIR", &config.model_dir)
        .env("XDG_CACHE_HOME", dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    println!("stctl direct mode, whole process (load + embed): {:.0} ms", cold.elapsed().as_secs_f64() * 1e3);
    let warm = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_stctl"))
        .args(["--daemon-only", "--socket", &format!("unix:{}", socket.display()), "embed", "hello world"])
        .output()
        .unwrap();
    assert!(out.status.success());
    println!("stctl via daemon, whole process: {:.1} ms", warm.elapsed().as_secs_f64() * 1e3);
    // Cached requests through the daemon (the first call fills the cache).
    let cached_line =
        r#"{"jsonrpc":"2.0","method":"generate","params":{"prompt":"Cached prompt.","max_new_tokens":16},"id":4}"#;
    rpc.call(cached_line);
    let cached: Vec<f64> = (0..2000)
        .map(|_| {
            let t = Instant::now();
            rpc.call(cached_line);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    println!(
        "cached generate through the daemon: p50 {:.3} ms, p99 {:.3} ms (goal: p50 < 1 ms)",
        p(&cached, 0.5),
        p(&cached, 0.99)
    );
    // The same cached generation through the HTTP front (kept-open connection, loopback TCP).
    let s = std::net::TcpStream::connect(("127.0.0.1", http_port)).unwrap();
    s.set_nodelay(true).unwrap();
    let mut http = Http { reader: BufReader::new(s.try_clone().unwrap()), writer: s, key };
    let completion = r#"{"model":"SmolLM2-135M-Instruct","prompt":"Cached prompt.","max_tokens":16}"#;
    let rpc_body = cached_line;
    http.post("/v1/completions", completion);
    for (route, body) in [("/v1/rpc", rpc_body), ("/v1/completions", completion)] {
        let times: Vec<f64> = (0..2000).map(|_| http.post(route, body).1.as_secs_f64() * 1e3).collect();
        println!(
            "cached generate through HTTP {route}: p50 {:.3} ms, p99 {:.3} ms (same answer as the JSON-RPC line above)",
            p(&times, 0.5),
            p(&times, 0.99)
        );
    }
    // Streamed chat completions, uncached: time to the first server-sent event against the
    // first piece over JSON-RPC.
    let first_event: Vec<f64> = (0..10)
        .map(|i| {
            let body = format!(
                r#"{{"model":"SmolLM2-135M-Instruct","messages":[{{"role":"user","content":"HTTP stream {i}"}}],"max_tokens":8,"stream":true}}"#
            );
            http.post("/v1/chat/completions", &body).0.as_secs_f64() * 1e3
        })
        .collect();
    let first_piece: Vec<f64> = (0..10)
        .map(|i| {
            let line = format!(
                r#"{{"jsonrpc":"2.0","method":"generate_stream","params":{{"prompt":"RPC stream {i}","max_new_tokens":8}},"id":9}}"#
            );
            let t = Instant::now();
            rpc.writer.write_all(line.as_bytes()).unwrap();
            rpc.writer.write_all(b"\n").unwrap();
            let mut first = None;
            loop {
                let mut out = String::new();
                rpc.reader.read_line(&mut out).unwrap();
                first.get_or_insert_with(|| t.elapsed().as_secs_f64() * 1e3);
                if !out.contains("generate.piece") {
                    break;
                }
            }
            first.unwrap()
        })
        .collect();
    println!(
        "streamed generation, first byte: HTTP server-sent events {:.2} ms vs JSON-RPC first piece {:.2} ms median (uncached, 8 tokens)",
        median(first_event),
        median(first_piece)
    );
    let embed_cached: Vec<f64> = (0..2000)
        .map(|_| {
            let t = Instant::now();
            rpc.call(embed_line);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    println!(
        "cached embed through the daemon: p50 {:.3} ms, p99 {:.3} ms",
        p(&embed_cached, 0.5),
        p(&embed_cached, 0.99)
    );
    // Concurrent single-text embed requests: the worker merges what is queued into one run.
    let clients = 8;
    let per_client = 40;
    let t = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let s = UnixStream::connect(&socket).unwrap();
                let mut rpc = Rpc { reader: BufReader::new(s.try_clone().unwrap()), writer: s };
                for i in 0..per_client {
                    rpc.call(&format!(r#"{{"jsonrpc":"2.0","method":"embed","params":{{"texts":["client {c} sentence {i} about deterministic services"]}},"id":5}}"#));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let n = (clients * per_client) as f64;
    println!("embed via daemon, {clients} concurrent clients sending single texts: {:.1} sentences/s (requests merged into shared encoder runs)", n / t.elapsed().as_secs_f64());
    let _ = daemon.kill();
    let _ = daemon.wait();

    snapshot_load(&config);
}

/// Load time of a 100,000-entry snapshot (goal: under 100 ms).
fn snapshot_load(config: &Config) {
    use std::sync::Arc;
    use steadytext::cache::{generation_key, Cache, Stored};
    use steadytext::engine::generate::{FinishReason, GenerateRequest, Generation};
    let dir = tempfile::tempdir().unwrap();
    let mut cache_config = config.cache.clone();
    cache_config.generation_capacity = 100_000;
    cache_config.generation_max_size_mb = 1024;
    let mut cache = Cache::new(
        &cache_config,
        Some(dir.path().to_path_buf()),
        steadytext::engine::fingerprint::fingerprint(config).unwrap(),
    );
    let digest: Arc<str> = Arc::from("sha256:bench");
    for i in 0..100_000u32 {
        let request = GenerateRequest {
            prompt: format!("prompt {i}"),
            messages: Vec::new(),
            raw: false,
            think: false,
            seed: 42,
            max_new_tokens: 32,
            stop: vec![],
            sampling: Default::default(),
            constraint: None,
            logprobs: None,
            tools: None,
        };
        let generation = Generation {
            text: format!("A cached answer number {i}, about as long as a short sentence or two of output."),
            token_ids: (0..24).map(|t| t + i).collect(),
            prompt_tokens: 30,
            finish_reason: FinishReason::Length,
            logprobs: None,
            tool_calls: Vec::new(),
        };
        let value = Stored { model_digest: digest.clone(), value: generation };
        cache.put_generation(generation_key(&digest, &request), value);
    }
    let t = Instant::now();
    let info = cache.snapshot().unwrap().unwrap();
    println!(
        "snapshot write: 100000 entries, {:.1} MiB in {:.0} ms",
        info.bytes as f64 / 1048576.0,
        t.elapsed().as_secs_f64() * 1e3
    );
    let times: Vec<f64> = (0..5)
        .map(|_| {
            let mut fresh = Cache::new(
                &cache_config,
                Some(dir.path().to_path_buf()),
                steadytext::engine::fingerprint::fingerprint(config).unwrap(),
            );
            let t = Instant::now();
            assert_eq!(fresh.load(), 100_000);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    println!(
        "snapshot load: 100000 entries in {:.1} ms median (validate + rebuild maps; goal < 100 ms)",
        median(times)
    );
}
