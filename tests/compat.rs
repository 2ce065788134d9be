//! Clients written for other servers, unchanged, against steadytextd: the official `ollama`
//! package on the Ollama API (configured only by `OLLAMA_HOST` and `OLLAMA_API_KEY`), SteadyText's
//! own SDK on its ZeroMQ protocol (configured only by `STEADYTEXT_DAEMON_*`), hostile and crowded
//! pyzmq clients, and curl on the rerank and tokenize routes in Jina's, Cohere's,
//! text-embeddings-inference's and llama-server's shapes. Each answer is the bytes `stctl` or the
//! JSON-RPC method gives for the same request. One daemon serves every check.

mod common;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;

use common::http::{curl, HttpDaemon, KEY};
use common::Conn;
use serde_json::{json, Value};

const GENERATION: &str = "SmolLM2-135M-Instruct";
const EMBEDDING: &str = "all-MiniLM-L6-v2";
/// The SteadyText listener's connection cap in this test (250 clients are tried).
const SDK_CONNECTIONS: usize = 220;

fn f32_bits(values: &Value) -> Vec<u32> {
    let values: Vec<f32> = serde_json::from_value(values.clone()).unwrap();
    values.iter().map(|v| v.to_bits()).collect()
}

/// stctl's text answer, without its final newline.
fn stctl_text(daemon: &HttpDaemon, args: &[&str]) -> String {
    daemon.stctl(args).strip_suffix('\n').unwrap().to_string()
}

/// `curl` POST of `body` as JSON with the key to `path`: the status and the parsed answer.
fn post(daemon: &HttpDaemon, path: &str, body: &Value) -> (u16, Value) {
    let auth = format!("Authorization: Bearer {KEY}");
    let (code, text) =
        curl(&["-H", &auth, "-H", "content-type: application/json", "-d", &body.to_string(), &daemon.url(path)]);
    (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[test]
fn clients_of_ollama_and_other_servers_get_steadytexts_answers() {
    let python = common::venv_python("tests/python/requirements.txt");
    let sdk_python = common::venv_python_with("tests/python/sdk-requirements.txt", &["steadytext==2025.11.25"]);
    let daemon = HttpDaemon::start(&format!("[compat.steadytext]\nmax_connections = {SDK_CONNECTIONS}\n"));
    daemon.health_until_ready();
    ollama_package(&daemon, &python);
    rerank_routes(&daemon);
    tokenize_routes(&daemon);
    steadytext_sdk(&daemon, &sdk_python);
    hostile_zmq_clients(&daemon, &sdk_python);
}

fn ollama_package(daemon: &HttpDaemon, python: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/ollama_client.py");
    let out = Command::new(python)
        .arg(script)
        .args([GENERATION, EMBEDDING])
        .env("OLLAMA_HOST", daemon.ollama_host())
        .env("OLLAMA_API_KEY", KEY)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), daemon.log());
    let mut got: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Vectors apart, so that a failure prints the rest readably.
    let vectors_got: Vec<Value> = ["embed", "embed_one", "embeddings"].map(|k| got[k].take()).into();

    let colors = stctl_text(daemon, &["generate", "Name three colors.", "--seed", "7", "--max-new-tokens", "24"]);
    assert_eq!(got["generate"], colors.as_str(), "{got}");
    assert_eq!(got["generate_stream"], got["generate"], "streamed lines add up to the answer");
    assert!(got["generate_stream_lines"].as_u64().unwrap() > 2, "{got}");
    let done = &got["generate_done"];
    assert_eq!((&done[0], &done[1]), (&json!(true), &json!("length")), "{got}");
    assert_eq!(done[2], 24);
    assert!(done[3].as_u64().unwrap() > 4, "{got}");
    assert_eq!(got["generate_stream_last"], json!([true, "length", 24]));
    let durations: Vec<u64> = serde_json::from_value(got["generate_durations"].clone()).unwrap();
    assert!(durations[0] > 0 && durations[1..].iter().sum::<u64>() <= durations[0], "{durations:?}");
    let sampled = stctl_text(
        daemon,
        &["generate", "Tell me a word.", "--temperature", "0.8", "--seed", "7", "--max-new-tokens", "16"],
    );
    assert_eq!(got["sampled"], sampled.as_str());
    let raw = stctl_text(daemon, &["generate", "--raw", "The capital of France is", "--max-new-tokens", "12"]);
    assert_eq!(got["raw"], raw.as_str());
    // One user turn is its prompt: /api/chat gives /api/generate's answer.
    assert_eq!(got["chat"], colors.as_str());
    assert_eq!(got["chat_stream"], colors.as_str());
    let schema = r#"{"type":"object","properties":{"color":{"type":"string","enum":["red","green","blue"]}},"required":["color"],"additionalProperties":false}"#;
    let picked = stctl_text(daemon, &["generate", "Pick a color.", "--schema", schema, "--max-new-tokens", "32"]);
    assert_eq!(got["structured"], picked.as_str());
    assert_eq!(got["structured_stream"], picked.as_str());
    let color: Value = serde_json::from_str(&picked).unwrap();
    assert!(["red", "green", "blue"].contains(&color["color"].as_str().unwrap()), "{picked}");

    let vectors: Vec<Value> = daemon
        .stctl(&["embed", "first text", "second text"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (i, vector) in vectors.iter().enumerate() {
        assert_eq!(f32_bits(&vectors_got[0][i]), f32_bits(vector), "/api/embed gives stctl's bits");
    }
    assert_eq!(f32_bits(&vectors_got[1][0]), f32_bits(&vectors[0]));
    assert_eq!(f32_bits(&vectors_got[2]), f32_bits(&vectors[0]), "/api/embeddings too");
    assert!(got["embed_count"].as_u64().unwrap() >= 4, "{got}");

    assert_eq!(got["list"], json!([[GENERATION, true, 64], [EMBEDDING, true, 64]]), "loaded models have digests");
    assert_eq!(got["show"], json!([["completion", "tools"], "onnx"]));
    assert_eq!(got["ps"], json!([GENERATION, EMBEDDING]));
    assert_eq!(got["load"], json!([true, "load"]));
    assert_eq!(got["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(got["running"], "Ollama is running");
    let refused = |case: &str, status: u16, needle: &str| {
        assert_eq!(got[case][0], status, "{case}: {got}");
        assert!(got[case][1].as_str().unwrap().contains(needle), "{case}: {got}");
    };
    refused("pull", 403, "stctl models pull");
    refused("unknown_model", 404, "no-such-model");
    refused("penalty", 400, "repeat_penalty");
    refused("wrong_kind", 400, GENERATION);
    refused("think", 400, "no thinking switch");
    refused("wrong_key", 401, "API key");
}

fn rerank_routes(daemon: &HttpDaemon) {
    let query = "How do plants make food?";
    let documents: Vec<String> = (0..20)
        .map(|i| match i % 4 {
            0 => format!("Photosynthesis turns light, water and carbon dioxide into sugar (note {i})."),
            1 => format!("The train to the coast leaves at {i} past the hour."),
            2 => format!("Leaves hold chlorophyll, which captures sunlight for the plant ({i})."),
            _ => format!("A recipe for bread needs flour, water and {i} grams of salt."),
        })
        .collect();
    let mut conn = Conn::new(UnixStream::connect(&daemon.socket).unwrap());
    let method = conn.call("rerank", json!({"query": query, "documents": documents}))["result"].clone();
    let scores = f32_bits(&method["scores"]);
    let order: Vec<usize> = serde_json::from_value(method["order"].clone()).unwrap();

    let (code, jina) = post(
        daemon,
        "/v1/rerank",
        &json!({"query": query, "documents": documents, "top_n": 5,
                                                          "return_documents": true}),
    );
    assert_eq!(code, 200, "{jina}");
    let results = jina["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    for (result, &i) in results.iter().zip(&order) {
        assert_eq!(result["index"], i);
        assert_eq!(f32_bits(&json!([result["relevance_score"]])), [scores[i]], "the method's score bits");
        assert_eq!(result["document"]["text"], documents[i].as_str());
    }
    // Cohere's document objects, on /rerank: the same ranking.
    let objects: Vec<Value> = documents.iter().map(|d| json!({"text": d})).collect();
    let (_, cohere) = post(daemon, "/rerank", &json!({"query": query, "documents": objects, "top_n": 5}));
    let indices = |v: &Value, key: &str| -> Vec<Value> {
        v[key].as_array().unwrap().iter().map(|r| r["index"].clone()).collect()
    };
    assert_eq!(indices(&cohere, "results"), indices(&jina, "results"));
    // text-embeddings-inference's shape: every text, ranked.
    let (code, tei) = post(daemon, "/rerank", &json!({"query": query, "texts": documents, "return_text": true}));
    assert_eq!(code, 200, "{tei}");
    let ranks = tei.as_array().unwrap();
    assert_eq!(ranks.len(), 20);
    for (rank, &i) in ranks.iter().zip(&order) {
        assert_eq!((&rank["index"], &rank["text"]), (&json!(i), &json!(documents[i])));
        assert_eq!(f32_bits(&json!([rank["score"]])), [scores[i]]);
    }
    let (code, raw) = post(daemon, "/rerank", &json!({"query": query, "texts": ["a"], "raw_scores": true}));
    assert_eq!(code, 400, "{raw}");
    assert!(raw["error"]["message"].as_str().unwrap().contains("raw_scores"), "{raw}");
}

fn tokenize_routes(daemon: &HttpDaemon) {
    let text = "Déjà vu: steadytext <|im_start|> tokens, 123!";
    let (code, tokens) = post(daemon, "/tokenize", &json!({"content": text}));
    assert_eq!(code, 200, "{tokens}");
    let ids = tokens["tokens"].clone();
    assert!(ids.as_array().unwrap().len() > 8, "{tokens}");
    let (_, back) = post(daemon, "/detokenize", &json!({"tokens": ids}));
    assert_eq!(back["content"], text, "tokenize then detokenize gives the text back");
    let (_, pieces) = post(daemon, "/tokenize", &json!({"content": "Hello world", "with_pieces": true}));
    let pieces = pieces["tokens"].as_array().unwrap();
    assert_eq!(pieces.iter().map(|p| p["piece"].as_str().unwrap()).collect::<String>(), "Hello world");
    assert!(pieces.iter().all(|p| p["id"].is_u64()));
    // The same ids as the JSON-RPC method.
    let mut conn = Conn::new(UnixStream::connect(&daemon.socket).unwrap());
    assert_eq!(conn.call("tokenize", json!({"text": text}))["result"]["tokens"], ids);
    let (code, wrong) = post(daemon, "/detokenize", &json!({"tokens": [1, 4_000_000]}));
    assert_eq!(code, 400);
    assert!(wrong["error"]["message"].as_str().unwrap().contains("4000000"), "{wrong}");
    // A model by its id.
    let (code, model) =
        curl(&["-H", &format!("Authorization: Bearer {KEY}"), &daemon.url(&format!("/v1/models/{GENERATION}"))]);
    assert_eq!(code, 200, "{model}");
    assert_eq!(serde_json::from_str::<Value>(&model).unwrap()["kind"], "generation");
    let (code, _) = curl(&["-H", &format!("Authorization: Bearer {KEY}"), &daemon.url("/v1/models/no-such-model")]);
    assert_eq!(code, 404);
}

fn steadytext_sdk(daemon: &HttpDaemon, python: &Path) {
    let home = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/sdk_client.py");
    let stub = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/stub");
    let served_before = model_requests(daemon);
    let out = Command::new(python)
        .arg(script)
        .env("STEADYTEXT_DAEMON_HOST", "127.0.0.1")
        .env("STEADYTEXT_DAEMON_PORT", daemon.zmq.to_string())
        .env("STEADYTEXT_DAEMON_TIMEOUT_MS", "120000")
        .env("STEADYTEXT_ALLOW_MODEL_DOWNLOADS", "false")
        .env("STEADYTEXT_SKIP_MODEL_LOAD", "1")
        .env("PYTHONPATH", stub)
        .env("HOME", home.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), daemon.log());
    // No fallback: the daemon counted each of the SDK's nine model calls (and the stub llama_cpp,
    // which raises when used, never ran; a fallback's None, zero vector or word-overlap scores
    // would not match below).
    assert_eq!(model_requests(daemon) - served_before, 9, "{}", daemon.log());
    let mut got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let vectors_got: Vec<Value> = ["embed", "embed_list"].map(|k| got[k].take()).into();

    // generate: the text stripped, as SteadyText's generate returns it.
    let colors = stctl_text(daemon, &["generate", "Name three colors.", "--seed", "42", "--max-new-tokens", "24"]);
    assert_eq!(got["generate"], colors.trim(), "{got}");
    let logprobs: Value = serde_json::from_str(&daemon.stctl(&[
        "generate",
        "Name three colors.",
        "--seed",
        "42",
        "--max-new-tokens",
        "8",
        "--json",
        "--logprobs",
    ]))
    .unwrap();
    assert_eq!(got["generate_logprobs"]["text"], logprobs["text"].as_str().unwrap().trim());
    assert_eq!(got["generate_logprobs"]["logprobs"], logprobs["logprobs"], "stctl's log-probabilities");
    let schema = r#"{"type":"object","properties":{"color":{"type":"string","enum":["red","green","blue"]}},"required":["color"],"additionalProperties":false}"#;
    let picked = stctl_text(daemon, &["generate", "Pick a color.", "--schema", schema, "--max-new-tokens", "32"]);
    assert_eq!(got["generate_schema"], format!("<json-output>{picked}</json-output>"), "SteadyText's JSON wrapping");
    let choice = stctl_text(daemon, &["generate", "Is the sky blue?", "--choices", "yes,no", "--max-new-tokens", "8"]);
    assert_eq!(got["generate_choices"], choice.as_str());
    // generate_iter: a token per ACK; together stctl's text (a stream is not stripped).
    let animals = stctl_text(daemon, &["generate", "Name three animals.", "--max-new-tokens", "24"]);
    let tokens: Vec<String> = serde_json::from_value(got["generate_iter"].clone()).unwrap();
    assert!(tokens.len() > 5, "{tokens:?}");
    assert_eq!(tokens.concat(), animals);

    // embed: one text is stctl's vector, zero-padded to 1024; a list is the normalized mean.
    let vectors: Vec<Value> = daemon
        .stctl(&["embed", "first text", "second text"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let embedded = f32_bits(&vectors_got[0]);
    assert_eq!(embedded.len(), 1024);
    assert_eq!(embedded[..384], f32_bits(&vectors[0])[..], "stctl's bits");
    assert!(embedded[384..].iter().all(|&b| b == 0), "zero-padded");
    let (a, b): (Vec<f32>, Vec<f32>) =
        (serde_json::from_value(vectors[0].clone()).unwrap(), serde_json::from_value(vectors[1].clone()).unwrap());
    let mean: Vec<f32> = a.iter().zip(&b).map(|(x, y)| (x + y) / 2.0).collect();
    let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt();
    let expected: Vec<u32> = mean.iter().map(|x| (x / norm).to_bits()).collect();
    assert_eq!(f32_bits(&vectors_got[1])[..384], expected[..], "the normalized mean of stctl's vectors");

    // rerank: the method's scores, best first.
    let documents = [
        "Photosynthesis turns light into sugar in leaves.",
        "The train leaves at noon.",
        "Chlorophyll captures sunlight for the plant.",
        "Bread needs flour and water.",
    ];
    let mut conn = Conn::new(UnixStream::connect(&daemon.socket).unwrap());
    let method =
        conn.call("rerank", json!({"query": "How do plants make food?", "documents": documents}))["result"].clone();
    let order: Vec<usize> = serde_json::from_value(method["order"].clone()).unwrap();
    let scores = f32_bits(&method["scores"]);
    let ranked = got["rerank"].as_array().unwrap();
    for (pair, &i) in ranked.iter().zip(&order) {
        assert_eq!(pair[0], documents[i]);
        assert_eq!(f32_bits(&json!([pair[1]])), [scores[i]], "the method's score bits");
    }
    let in_order: Vec<&str> = order.iter().map(|&i| documents[i]).collect();
    assert_eq!(got["rerank_documents"], json!(in_order));
    assert!(got["model_repo"].as_str().unwrap().contains("model_repo"), "{got}");
}

/// Requests of the model methods (generate, generate_stream, embed, rerank) the daemon counted.
fn model_requests(daemon: &HttpDaemon) -> u64 {
    let mut conn = Conn::new(UnixStream::connect(&daemon.socket).unwrap());
    let metrics = conn.call("metrics", json!({}))["result"].as_str().unwrap().to_string();
    ["generate", "generate_stream", "embed", "rerank"]
        .iter()
        .filter_map(|m| {
            let prefix = format!("steadytext_requests_total{{method=\"{m}\"}} ");
            metrics.lines().find_map(|l| l.strip_prefix(&prefix)).map(|n| n.parse::<u64>().unwrap())
        })
        .sum()
}

fn hostile_zmq_clients(daemon: &HttpDaemon, python: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/zmq_hostile.py");
    let out = Command::new(python).arg(script).arg(daemon.zmq.to_string()).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), daemon.log());
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Another protocol's greeting: the daemon's own greeting (64 bytes), then it closes.
    assert_eq!(got["http_greeting"], json!([64, true]), "{got}");
    // A PUB socket: greeting and READY, then closed. A frame of 2^40 bytes: closed unread.
    assert_eq!(got["pub_socket"][1], true, "{got}");
    assert_eq!(got["huge_frame"][1], true, "{got}");
    for after in ["http_then_honest", "huge_then_honest", "lazy_then_honest", "crowd_then_honest"] {
        assert_eq!(got[after], true, "{after}: {got}");
    }
    // 250 clients against a cap of 220 (one more held by the client that never reads): the rest
    // are told, none waits for a timeout.
    let (pongs, refused) = (got["crowd_pongs"].as_u64().unwrap(), got["crowd_refused"].as_u64().unwrap());
    assert_eq!(pongs + refused, 250, "{got}");
    assert!(pongs >= 200 && refused >= 1, "{got}");
    assert!(got["crowd_refusal"].as_str().unwrap().contains("too many connections"), "{got}");
    assert_eq!(got["stream_left"], json!([["token"], {"id": "p", "result": "pong", "error": null}]), "{got}");
    assert!(got["not_json"]["error"].as_str().unwrap().contains("not SteadyText's JSON"), "{got}");
    assert_eq!(got["unknown"], json!({"id": "t", "result": null, "error": "Unknown method: status"}));
    assert!(got["shutdown"]["error"].as_str().unwrap().contains("systemctl stop steadytext"), "{got}");
}
