//! steadytextd started the way systemd starts it, with a test NOTIFY_SOCKET listener.

mod common;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use steadytext::core::validate::ToRequest;
use steadytext::protocol::{codes, EmbedParams, GenerateParams};
use steadytext::service::{EmbeddingService, GenerationService};

use common::Daemon;

const LONG: Duration = Duration::from_secs(60);

/// Direct-mode answer for a generate request, as the protocol's JSON.
fn direct_generate(params: &Value) -> Value {
    let config = common::config(0);
    let mut service = GenerationService::load(&config, None).unwrap();
    let params: GenerateParams = serde_json::from_value(params.clone()).unwrap();
    serde_json::to_value(service.run(&params.to_request(&config).unwrap(), &mut |_| true).unwrap()).unwrap()
}

#[test]
fn lifecycle_ready_watchdog_reload_and_graceful_stop() {
    let mut d = Daemon::socket_activated("", &[("WATCHDOG_USEC", "1000000")]);
    // This connection triggers activation and is made before READY: it waits in the queue.
    let mut early = d.connect();
    let id = early.send("ping", json!({}));
    let pong = early.read();
    assert_eq!(pong["id"], id);
    assert_eq!(pong["result"]["protocol"], 1);
    let ready = d.notify.wait_for("READY=1", 0, LONG);
    assert!(
        d.notify.messages()[..ready].iter().any(|m| m.contains("STATUS=loading models")),
        "{:?}",
        d.notify.messages()
    );

    // Watchdog pings at half of WATCHDOG_USEC while the workers are healthy.
    let first = d.notify.wait_for("WATCHDOG=1", ready, Duration::from_secs(5));
    d.notify.wait_for("WATCHDOG=1", first + 1, Duration::from_secs(5));

    // SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1 again; models unchanged, still serving.
    let before = d.notify.messages().len();
    d.signal(libc::SIGHUP);
    let reloading = d.notify.wait_for("RELOADING=1", before, LONG);
    assert!(d.notify.messages()[reloading].contains("MONOTONIC_USEC="));
    d.notify.wait_for("READY=1", reloading, LONG);
    assert_eq!(early.call("ping", json!({}))["result"]["protocol"], 1);

    // SIGTERM while a stream is in flight: STOPPING=1, and the request still completes.
    let params = json!({"prompt": "Write a long story about a lighthouse keeper.", "max_new_tokens": 64});
    let mut conn = d.connect();
    let id = conn.send("generate_stream", params.clone());
    let first_piece = conn.read();
    assert_eq!(first_piece["method"], "generate.piece");
    let before = d.notify.messages().len();
    d.signal(libc::SIGTERM);
    d.notify.wait_for("STOPPING=1", before, LONG);
    let mut text = first_piece["params"]["text"].as_str().unwrap().to_string();
    let done = loop {
        let msg = conn.read();
        if msg["method"] == "generate.piece" {
            text.push_str(msg["params"]["text"].as_str().unwrap());
        } else {
            break msg;
        }
    };
    assert_eq!(done["id"], id);
    let expected = direct_generate(&params);
    assert_eq!(done["result"]["text"], expected["text"]);
    assert_eq!(done["result"]["token_ids"], expected["token_ids"]);
    assert_eq!(text, expected["text"].as_str().unwrap());
    assert_eq!(d.wait_exit(LONG), Some(0), "log:\n{}", d.log());
}

#[test]
fn protocol_errors_concurrency_and_cancellation() {
    let d = Daemon::socket_activated("", &[]);
    let mut conn = d.connect();

    // Malformed input gets JSON-RPC errors; the same connection keeps being served.
    conn.send_raw(b"this is not json\n");
    assert_eq!(conn.read()["error"]["code"], codes::PARSE_ERROR);
    conn.send_raw(b"{\"jsonrpc\":\"1.0\",\"method\":\"ping\",\"id\":5}\n");
    assert_eq!(conn.read()["error"]["code"], codes::INVALID_REQUEST);
    assert_eq!(conn.call("nope", json!({}))["error"]["code"], codes::METHOD_NOT_FOUND);
    assert_eq!(conn.call("generate", json!({"prompt": "x", "sede": 3}))["error"]["code"], codes::INVALID_PARAMS);
    assert_eq!(
        conn.call("generate", json!({"prompt": "x", "max_new_tokens": 0}))["error"]["code"],
        codes::INVALID_PARAMS
    );
    assert_eq!(conn.call("embed", json!({"texts": []}))["error"]["code"], codes::INVALID_PARAMS);
    let hex = conn.call("embed", json!({"texts": ["x"], "encoding_format": "hex"}));
    assert_eq!(hex["error"]["code"], codes::INVALID_PARAMS, "{hex}");
    assert_eq!(
        conn.call("generate", json!({"prompt": "x", "model": "other"}))["error"]["code"],
        codes::MODEL_NOT_LOADED
    );
    let mut huge = vec![b'x'; steadytext::protocol::MAX_LINE_BYTES + 1];
    huge.push(b'\n');
    conn.send_raw(&huge);
    assert_eq!(conn.read()["error"]["code"], codes::TOO_LARGE);
    assert_eq!(conn.call("ping", json!({}))["result"]["protocol"], 1);

    // 32 concurrent clients mixing generate, stream and embed all get the direct-mode answers.
    let config = common::config(0);
    let mut generator = GenerationService::load(&config, None).unwrap();
    let mut embedder = EmbeddingService::load(&config, None).unwrap();
    let jobs: Vec<(String, Value, Value)> = (0..32)
        .map(|i| match i % 3 {
            0 | 1 => {
                let params =
                    json!({"prompt": format!("Give me fact number {} about the sea.", i % 6), "max_new_tokens": 12});
                let p: GenerateParams = serde_json::from_value(params.clone()).unwrap();
                let request = p.to_request(&config).unwrap();
                let expected = serde_json::to_value(generator.run(&request, &mut |_| true).unwrap()).unwrap();
                (if i % 3 == 0 { "generate" } else { "generate_stream" }.to_string(), params, expected)
            }
            _ => {
                let params = json!({"texts": [format!("sentence {i}"), "shared text"]});
                let p: EmbedParams = serde_json::from_value(params.clone()).unwrap();
                (("embed").to_string(), params, serde_json::to_value(embedder.run(&p.texts).unwrap()).unwrap())
            }
        })
        .collect();
    let d = Arc::new(d);
    let handles: Vec<_> = jobs
        .into_iter()
        .map(|(method, params, expected)| {
            let d = d.clone();
            std::thread::spawn(move || {
                let mut c = d.connect();
                let mut r = c.call(&method, params);
                assert!(r["error"].is_null(), "{method}: {r}");
                // Repeated prompts may be served from the caches.
                common::without_cache_fields(&mut r["result"]);
                let mut expected = expected;
                common::without_cache_fields(&mut expected);
                assert_eq!(r["result"], expected, "{method}");
                if method == "generate_stream" {
                    assert_eq!(
                        r["pieces"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect::<String>(),
                        expected["text"].as_str().unwrap()
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }

    // Embed requests queued together are merged into one encoder run, with the same answers.
    let bursts: Vec<Vec<String>> = (0..12).map(|i| (0..16).map(|j| format!("burst {i} text {j}")).collect()).collect();
    let expected: Vec<Value> = bursts
        .iter()
        .map(|texts| {
            let p = steadytext::protocol::EmbedParams { texts: texts.clone(), ..Default::default() };
            serde_json::to_value(embedder.run(&p.texts).unwrap().embeddings).unwrap()
        })
        .collect();
    let handles: Vec<_> = bursts
        .into_iter()
        .map(|texts| {
            let d = d.clone();
            std::thread::spawn(move || {
                d.connect().call("embed", json!({ "texts": texts }))["result"]["embeddings"].clone()
            })
        })
        .collect();
    for (h, want) in handles.into_iter().zip(expected) {
        assert_eq!(h.join().unwrap(), want);
    }
    // Base64 vectors carry the JSON numbers' exact bits.
    let texts = json!(["burst 3 text 5", "a text asked for in base64 first"]);
    let b64 = conn.call("embed", json!({"texts": texts, "encoding_format": "base64"}))["result"].clone();
    let floats = conn.call("embed", json!({ "texts": texts }))["result"].clone();
    assert_eq!(b64["model_digest"], floats["model_digest"]);
    for (b64, floats) in b64["embeddings"].as_array().unwrap().iter().zip(floats["embeddings"].as_array().unwrap()) {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap()).unwrap();
        let bits: Vec<u32> = bytes.chunks(4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).collect();
        let want: Vec<u32> =
            floats.as_array().unwrap().iter().map(|x| (x.as_f64().unwrap() as f32).to_bits()).collect();
        assert_eq!(bits, want);
    }
    let merged = d.connect().call("status", json!({}))["result"]["models"][1]["merged_requests"].as_u64().unwrap();
    assert!(merged > 0, "no embed requests were merged");

    // A client that hangs up cancels its own generation.
    let mut gone = d.connect();
    gone.send("generate", json!({"prompt": "Count from one to one thousand in words.", "max_new_tokens": 2000}));
    std::thread::sleep(Duration::from_millis(300));
    drop(gone);
    let mut c = d.connect();
    assert!(c.call("generate", json!({"prompt": "hi", "max_new_tokens": 2}))["error"].is_null());
    assert!(d.log().contains("cancelled"), "log:\n{}", d.log());

    let status = c.call("status", json!({}))["result"].clone();
    assert_eq!(status["models"].as_array().unwrap().len(), 2);
    assert!(status["metrics"]["requests_total"].as_u64().unwrap() >= 40);
    assert!(status["metrics"]["rss_bytes"].as_u64().unwrap() > 0);
    let metrics = c.call("metrics", json!({}))["result"].as_str().unwrap().to_string();
    assert!(metrics.contains("steadytext_requests_total{method=\"embed\"}"), "{metrics}");
}

#[test]
fn overload_is_refused_at_once_with_a_retry_hint() {
    let d = Arc::new(Daemon::socket_activated("[daemon]\nqueue_depth = 1\n[cache]\nenabled = false\n", &[]));
    let mut c = d.connect();
    c.call("ping", json!({}));
    // With the cache off, repeated requests are computed again and cache methods say why they fail.
    for _ in 0..2 {
        assert_eq!(c.call("generate", json!({"prompt": "Story", "max_new_tokens": 2}))["result"]["cached"], false);
    }
    let off = c.call("cache.stats", json!({}));
    assert!(off["error"]["message"].as_str().unwrap().contains("enabled = false"), "{off}");
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let d = d.clone();
            std::thread::spawn(move || {
                d.connect().call("generate", json!({"prompt": format!("Story {i}"), "max_new_tokens": 24}))
            })
        })
        .collect();
    let results: Vec<Value> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let overloaded: Vec<&Value> = results.iter().filter(|r| r["error"]["code"] == codes::OVERLOADED).collect();
    assert!(!overloaded.is_empty(), "{results:?}");
    assert!(overloaded.iter().all(|r| r["error"]["data"]["retry_after_ms"].as_u64().unwrap() > 0));
    assert!(overloaded[0]["error"]["message"].as_str().unwrap().contains("retry in"));
    assert!(results.iter().any(|r| r["error"].is_null()), "{results:?}");
}
