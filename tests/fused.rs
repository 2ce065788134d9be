//! The fused decoder (onnxruntime-genai layout: GroupQueryAttention, packed QKV, int8-compute
//! MatMulNBits) against the greedy ids Python onnxruntime computed on the same file, in direct and
//! daemon mode, across thread counts and restarts; its fp32-compute twin against the shared model's
//! own reference.

mod common;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use steadytext::engine::generate::GenerateRequest;
use steadytext::engine::load_generator;
use steadytext::engine::sampler::Sampling;

fn folder(level: u8) -> PathBuf {
    common::fused_models().join(format!("SmolLM2-135M-Instruct-fused-acc{level}"))
}

/// (prompt, max_new_tokens, greedy ids) of a reference file.
fn cases(reference: &Path) -> Vec<(String, usize, Vec<u32>)> {
    let json: Value = serde_json::from_str(&std::fs::read_to_string(reference).unwrap()).unwrap();
    let cases = json["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    cases
        .iter()
        .map(|c| {
            let ids = serde_json::from_value(c["greedy_ids"].clone()).unwrap();
            (c["prompt"].as_str().unwrap().to_string(), c["max_new_tokens"].as_u64().unwrap() as usize, ids)
        })
        .collect()
}

fn request(prompt: &str, max_new_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.into(),
        messages: Vec::new(),
        raw: false,
        seed: 0,
        max_new_tokens,
        stop: vec![],
        sampling: Sampling::default(),
    }
}

fn assert_direct(model: &Path, reference: &Path, threads: usize) {
    let (info, mut generator) = load_generator(&common::config(threads), model.to_str().unwrap()).unwrap();
    for (prompt, max, expected) in cases(reference) {
        let got = generator.generate(&request(&prompt, max)).unwrap().token_ids;
        assert_eq!(got, expected, "{} with {threads} threads, prompt {prompt:?}", info.name);
    }
}

#[test]
fn fp32_twin_gives_the_shared_models_reference_ids() {
    // Proves the re-assembled graph right: same weights, fp32 compute, same greedy ids as the
    // shared (plain torch export) model's Python onnxruntime reference.
    let shared_reference = common::models_dir().join("SmolLM2-135M-Instruct/reference_ort.json");
    assert_direct(&folder(0), &shared_reference, 1);
}

#[test]
fn served_fused_model_gives_its_python_reference_ids_with_1_and_2_threads() {
    let model = folder(4);
    for threads in [1, 2] {
        assert_direct(&model, &model.join("reference.json"), threads);
    }
    // int8 compute is a different model: it must not quietly equal the fp32 one everywhere.
    let fp32 = cases(&folder(0).join("reference.json"));
    assert_ne!(cases(&model.join("reference.json")), fp32);
}

#[test]
fn daemon_serves_the_fused_model_like_direct_mode_across_restarts() {
    let model = folder(4);
    let config = format!("generation_model = {:?}\n[cache]\ngeneration_capacity = 0\n", model.to_str().unwrap());
    for restart in 0..2 {
        let d = common::Daemon::socket_activated(&config, &[]);
        let mut c = d.connect();
        for (prompt, max, expected) in cases(&model.join("reference.json")) {
            let answer = c.call("generate", json!({"prompt": prompt, "max_new_tokens": max}));
            let got: Vec<u32> = serde_json::from_value(answer["result"]["token_ids"].clone())
                .unwrap_or_else(|e| panic!("{answer}: {e}"));
            assert_eq!(got, expected, "daemon run {restart}, prompt {prompt:?}");
        }
    }
}
