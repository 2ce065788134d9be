//! The conformance zoo (`tools/zoo/build.sh`): tiny random-weight decoders of Llama 3.2, Qwen2.5,
//! Qwen3, Phi-3, Gemma 3 and SmolLM3, each in the transformers.js layout (plain ops, KV grown by
//! concatenation) and the onnxruntime-genai layout (GroupQueryAttention, shared KV buffer). Every
//! folder is served, renders its family's chat template and tokenizes as Python does, and gives
//! the greedy ids and text of Python onnxruntime's own decode loop on the same file; the genai
//! ones give those bytes when their requests are batched together in the daemon and when a long
//! shared system turn comes from the prefix cache, and onnxruntime-genai's own runner gives those
//! ids.

mod common;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use steadytext::engine::generate::{ChatMessage, GenerateRequest};
use steadytext::engine::load_generator;
use steadytext::engine::prefix::PrefixState;
use steadytext::service::{GenerationService, Model};

const ARCHITECTURES: [&str; 6] = ["llama3", "qwen2", "qwen3", "phi3", "gemma3", "smollm3"];

struct Case {
    prompt: String,
    max_new_tokens: usize,
    input_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
    text: String,
}

fn cases(folder: &Path) -> Vec<Case> {
    let json: Value = serde_json::from_str(&std::fs::read_to_string(folder.join("reference.json")).unwrap()).unwrap();
    let ids = |v: &Value| serde_json::from_value(v.clone()).unwrap();
    json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            prompt: c["prompt"].as_str().unwrap().into(),
            max_new_tokens: c["max_new_tokens"].as_u64().unwrap() as usize,
            input_ids: ids(&c["input_ids"]),
            greedy_ids: ids(&c["greedy_ids"]),
            text: c["text"].as_str().unwrap().into(),
        })
        .collect()
}

fn folders(layouts: &[&str]) -> Vec<PathBuf> {
    let zoo = common::zoo_models();
    let zoo = &zoo;
    ARCHITECTURES.iter().flat_map(|a| layouts.iter().map(move |l| zoo.join(format!("{a}-{l}")))).collect()
}

fn request(case: &Case) -> GenerateRequest {
    common::greedy_request(&case.prompt, case.max_new_tokens)
}

#[test]
fn every_architecture_and_layout_gives_python_onnxruntimes_ids_and_text() {
    for folder in folders(&["hf", "genai"]) {
        let (info, mut generator) = load_generator(&common::config(2), folder.to_str().unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", folder.display()));
        let cases = cases(&folder);
        assert_eq!(cases.len(), 3, "{}", info.name);
        for case in cases {
            let what = format!("{}, prompt {:?}", info.name, case.prompt);
            // The family's chat template and tokenizer, as jinja2 and Python tokenizers gave them.
            assert_eq!(generator.prompt_ids(&request(&case)).unwrap(), case.input_ids, "{what}");
            let answer = generator.generate(&request(&case)).unwrap();
            assert_eq!(answer.token_ids, case.greedy_ids, "{what}");
            assert_eq!(answer.text, case.text, "{what}");
        }
    }
}

#[test]
fn genai_layouts_batched_together_give_their_single_stream_bytes() {
    // One daemon serves the six genai models; every case of every model is sent at once, twice
    // over (36 streams, up to 6 batched per model).
    let zoo = common::zoo_models();
    let config = "generation_model = \"llama3-genai\"\nembedding_model = \"\"\n[cache]\ngeneration_capacity = 0\n\
                  [models]\nmax_loaded = 6\n";
    let d = common::Daemon::socket_activated(config, &[("STEADYTEXT_MODEL_DIR", zoo.to_str().unwrap())]);
    let work: Vec<(String, Case)> = folders(&["genai"])
        .iter()
        .flat_map(|f| {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            cases(f).into_iter().chain(cases(f)).map(move |c| (name.clone(), c))
        })
        .collect();
    let threads: Vec<_> = work
        .into_iter()
        .map(|(model, case)| {
            let mut c = d.connect();
            std::thread::spawn(move || {
                let params = json!({"model": model, "prompt": case.prompt, "max_new_tokens": case.max_new_tokens});
                let answer = c.call("generate_stream", params);
                let got: Vec<u32> = serde_json::from_value(answer["result"]["token_ids"].clone())
                    .unwrap_or_else(|e| panic!("{model}: {answer}: {e}"));
                assert_eq!(got, case.greedy_ids, "{model}, prompt {:?}", case.prompt);
                assert_eq!(answer["result"]["text"], json!(case.text), "{model}, prompt {:?}", case.prompt);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let status = d.connect().call("status", json!({}));
    let batched: Vec<_> = status["result"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["kind"] == "generation")
        .map(|m| (m["name"].clone(), m["batch_sequences"].clone()))
        .collect();
    assert_eq!(batched.len(), 6, "{status}");
    assert!(batched.iter().all(|(_, b)| b.as_u64() > Some(1)), "every genai model batches: {batched:?}");
}

#[test]
fn the_prefix_cache_gives_every_genai_architecture_the_same_bytes() {
    // A long system turn shared by three requests: with the prefix cache the later ones take its
    // KV (the load-time probe must pass on every architecture, sliding layers included), and
    // every answer is the one a model without the cache gives.
    let system = ["river stone ledger quiet machine north paper seven harbor cloud"; 24].join(" ");
    let requests: Vec<GenerateRequest> = ["Say hi.", "Name a colour.", "Count to three."]
        .iter()
        .map(|user| GenerateRequest {
            prompt: String::new(),
            messages: vec![ChatMessage::new("system", system.clone()), ChatMessage::new("user", user.to_string())],
            ..common::greedy_request("", 16)
        })
        .collect();
    for folder in folders(&["genai"]) {
        let load = |prefix_mb| {
            let mut config = common::config(2);
            config.cache.prefix_mb = prefix_mb;
            GenerationService::load(&config, Some(folder.to_str().unwrap())).unwrap()
        };
        let (mut plain, mut cached) = (load(0), load(64));
        let state = cached.prefix_stats().unwrap().state();
        assert!(matches!(state, PrefixState::On), "{}: {state:?}", folder.display());
        for (i, request) in requests.iter().enumerate() {
            let expected = plain.generate(request, &mut |_| true).unwrap();
            let got = cached.generate(request, &mut |_| true).unwrap();
            assert_eq!(got.generation, expected.generation, "{}, request {i}", folder.display());
            assert_eq!(
                got.prefix_tokens > 0,
                i > 0,
                "{}, request {i}: {} tokens reused",
                folder.display(),
                got.prefix_tokens
            );
        }
    }
}

#[test]
fn onnxruntime_genai_runs_every_genai_folder_to_the_same_ids() {
    // onnxruntime-genai 0.18.0 (its own ONNX Runtime and greedy search) reads each folder's
    // genai_config.json: the folders are real onnxruntime-genai models, Gemma 3's sliding layers
    // included, and their answers are the reference's (which steadytext gives, test above).
    for folder in folders(&["genai"]) {
        let cases = cases(&folder);
        let input: Vec<(Vec<u32>, usize)> = cases.iter().map(|c| (c.input_ids.clone(), c.max_new_tokens)).collect();
        let theirs = common::genai_ids(&folder, &input);
        let ours: Vec<Vec<u32>> = cases.into_iter().map(|c| c.greedy_ids).collect();
        assert_eq!(theirs, ours, "{}", folder.display());
    }
}

#[test]
fn a_genai_folder_with_a_windowed_kv_cache_is_refused_naming_the_field() {
    // What onnxruntime-genai 0.16+ writes for Gemma 3's sliding layers: the same graph, and a
    // genai_config.json whose decoder keeps windowed buffers.
    let (_dir, folder) =
        common::genai_variant(&common::zoo_models().join("gemma3-genai"), "gemma3-windowed", |genai| {
            genai["model"]["decoder"]["sliding_window"] =
                json!({"window_size": 16, "slide_key_value_cache": false, "layers": [0, 1, 2, 3, 4]});
        });
    let err = load_generator(&common::config(1), folder.to_str().unwrap()).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("model.decoder.sliding_window") && err.contains("windowed KV cache"), "{err}");
}
