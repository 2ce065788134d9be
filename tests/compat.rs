//! Clients written for other servers, unchanged, against steadytextd: the official `ollama`
//! package on the Ollama API (configured only by `OLLAMA_HOST` and `OLLAMA_API_KEY`), and curl on
//! the rerank and tokenize routes in Jina's, Cohere's, text-embeddings-inference's and
//! llama-server's shapes. Each answer is the bytes `stctl` or the JSON-RPC method gives for the
//! same request. One daemon serves every check.

mod common;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;

use common::http::{curl, HttpDaemon, KEY};
use common::Conn;
use serde_json::{json, Value};

const GENERATION: &str = "SmolLM2-135M-Instruct";
const EMBEDDING: &str = "all-MiniLM-L6-v2";

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
    let daemon = HttpDaemon::start("");
    daemon.health_until_ready();
    ollama_package(&daemon, &python);
    rerank_routes(&daemon);
    tokenize_routes(&daemon);
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
