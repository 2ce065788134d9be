//! The engine against the reference outputs of independent implementations, and determinism.

mod common;

use steadytext::engine::generate::{ChatMessage, FinishReason, GenerateRequest};
use steadytext::engine::sampler::Sampling;
use steadytext::engine::{load_embedder, load_generator};

fn request(prompt: &str, max_new_tokens: usize) -> GenerateRequest {
    common::greedy_request(prompt, max_new_tokens)
}

#[test]
fn greedy_ids_match_onnxruntime_python_reference() {
    let reference = common::reference("SmolLM2-135M-Instruct/reference_ort.json");
    let (_, mut generator) = load_generator(&common::config(1), "SmolLM2-135M-Instruct").unwrap();
    let cases = reference["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let input_ids: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        assert_eq!(generator.prompt_ids(&request(prompt, 1)).unwrap(), input_ids, "prompt ids for {prompt:?}");
        // The same prompt as a one-message conversation renders to the same tokens.
        let user = ChatMessage::new("user", prompt);
        let chat = GenerateRequest { prompt: String::new(), messages: vec![user], ..request("", 1) };
        assert_eq!(generator.prompt_ids(&chat).unwrap(), input_ids, "chat ids for {prompt:?}");
        let expected: Vec<u32> = serde_json::from_value(case["greedy_ids"].clone()).unwrap();
        let max = case["max_new_tokens"].as_u64().unwrap() as usize;
        let generation = generator.generate(&request(prompt, max)).unwrap();
        assert_eq!(generation.token_ids, expected, "greedy ids for {prompt:?}");
        if let Some(text) = case["greedy_text"].as_str() {
            assert_eq!(generation.text, text, "text for {prompt:?}");
        }
        let expected_reason = if expected.len() < max { FinishReason::Eos } else { FinishReason::Length };
        assert_eq!(generation.finish_reason, expected_reason);
    }
}

#[test]
fn streamed_pieces_concatenate_to_the_text() {
    let (_, mut generator) = load_generator(&common::config(1), "SmolLM2-135M-Instruct").unwrap();
    let req = request("Write one sentence with an emoji and the word café.", 40);
    let whole = generator.generate(&req).unwrap();
    let mut stream = generator.stream(&req).unwrap();
    let pieces: Vec<String> = stream.by_ref().map(Result::unwrap).collect();
    let streamed = stream.finish().unwrap();
    assert!(pieces.len() > 1, "expected several pieces");
    assert_eq!(pieces.concat(), whole.text);
    assert_eq!(streamed, whole);
}

#[test]
fn stop_string_truncates_like_a_cut_of_the_full_text() {
    let (_, mut generator) = load_generator(&common::config(1), "SmolLM2-135M-Instruct").unwrap();
    let full = generator.generate(&request("The capital of France is", 48)).unwrap();
    let cut = "steeped";
    let pos = full.text.find(cut).expect("reference text contains the stop word");
    let mut req = request("The capital of France is", 48);
    req.stop = vec![cut.to_string()];
    let stopped = generator.generate(&req).unwrap();
    assert_eq!(stopped.text, full.text[..pos]);
    assert_eq!(stopped.finish_reason, FinishReason::Stop);
}

#[test]
fn generation_is_identical_across_runs_and_thread_counts() {
    let req = request("Explain determinism in one paragraph.", 32);
    let (_, mut one) = load_generator(&common::config(1), "SmolLM2-135M-Instruct").unwrap();
    let first = one.generate(&req).unwrap();
    assert_eq!(one.generate(&req).unwrap(), first, "repeated run");
    // Thread counts give the same bits (so the engine fingerprint leaves them out).
    for threads in [2, 3, 4, 8] {
        let (_, mut other) = load_generator(&common::config(threads), "SmolLM2-135M-Instruct").unwrap();
        assert_eq!(other.generate(&req).unwrap(), first, "{threads} intra-op threads");
    }
}

#[test]
fn long_prompts_are_fed_in_fixed_chunks_deterministically() {
    use steadytext::engine::prefix::Boundaries;
    let prompt = "The history of the lighthouse, told slowly. ".repeat(130);
    let req = request(&prompt, 8);
    let (_, mut one) = load_generator(&common::config(1), "SmolLM2-135M-Instruct").unwrap();
    let mut stream = one.stream(&req).unwrap();
    let pieces: Vec<String> = stream.by_ref().map(Result::unwrap).collect();
    let first = stream.finish().unwrap();
    let n = first.prompt_tokens;
    assert!(n > 1024, "prompt of {n} tokens");
    // One (empty) piece per prefill call but the last before any text: the watchdog and
    // cancellation see progress. Calls end at the prefill boundaries.
    // The raw prompt holds no end-of-turn token: its calls end on the fixed grid.
    let prefill_calls = Boundaries::default().calls(&vec![0; n], 0).count();
    assert!(prefill_calls > 12, "{prefill_calls} calls for {n} tokens");
    assert!(pieces[..prefill_calls - 1].iter().all(String::is_empty), "{pieces:?}");
    assert_eq!(one.generate(&req).unwrap(), first, "repeated run");
    let (_, mut two) = load_generator(&common::config(2), "SmolLM2-135M-Instruct").unwrap();
    assert_eq!(two.generate(&req).unwrap(), first, "2 intra-op threads");
}

#[test]
fn seeded_sampling_is_reproducible_and_seed_dependent() {
    let (_, mut generator) = load_generator(&common::config(1), "SmolLM2-135M-Instruct").unwrap();
    let mut req = request("Tell me a story about a robot.", 24);
    req.sampling = Sampling { temperature: 1.0, top_k: 50, top_p: 0.95 };
    let a = generator.generate(&req).unwrap();
    assert_eq!(generator.generate(&req).unwrap(), a);
    let others: Vec<_> =
        (1..4u64).map(|seed| generator.generate(&GenerateRequest { seed, ..req.clone() }).unwrap().token_ids).collect();
    assert!(others.iter().any(|ids| *ids != a.token_ids), "different seeds all gave the same sample");
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * y).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// The shared encoder and its fused form (`tools/fused-encoder`): the config naming the folder
/// each is in, and its name.
fn encoders() -> [(steadytext::config::Config, &'static str); 2] {
    let mut fused = common::config(1);
    fused.model_dir = common::fused_encoder_models();
    [(common::config(1), "all-MiniLM-L6-v2"), (fused, "all-MiniLM-L6-v2-fused")]
}

#[test]
fn embeddings_match_sentence_transformers() {
    let reference = common::reference("all-MiniLM-L6-v2/reference_sentence_transformers.json");
    let cases = reference["cases"].as_array().unwrap();
    let texts: Vec<String> = cases.iter().map(|c| c["text"].as_str().unwrap().to_string()).collect();
    for (config, name) in encoders() {
        let (_, mut embedder) = load_embedder(&config, name).unwrap();
        let vectors = embedder.embed(&texts).unwrap();
        for (case, v) in cases.iter().zip(&vectors) {
            let expected: Vec<f64> = serde_json::from_value(case["embedding"].clone()).unwrap();
            assert_eq!(v.len(), expected.len());
            let c = cosine(v, &expected);
            assert!(c >= 0.9999999, "{name}: cosine {c} for {:?}", case["text"]);
        }
    }
}

#[test]
fn the_load_time_fusion_gives_the_bits_of_the_fused_encoder_tool() {
    // The published export is fused as it loads (engine::backend::encoder_fusion, Rust); the tool's
    // folder was fused by tools/fused-encoder (Python, onnx): one graph, two implementations.
    let texts: Vec<String> = ["Hello world", "a", "determinism ".repeat(60).as_str(), "Ünïcödé 🚀 漢字"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let [(shared, a), (tool, b)] = encoders();
    let from_export = load_embedder(&shared, a).unwrap().1.embed(&texts).unwrap();
    assert_eq!(from_export, load_embedder(&tool, b).unwrap().1.embed(&texts).unwrap());
}

#[test]
fn embeddings_do_not_depend_on_batch_or_threads() {
    let texts: Vec<String> = [
        "short",
        "a somewhat longer sentence about deterministic embeddings",
        "",
        "Ünïcödé text with emoji 🚀 and CJK 漢字",
        &"long input ".repeat(200),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (config, name) in encoders() {
        let (_, mut one) = load_embedder(&config, name).unwrap();
        let alone: Vec<Vec<f32>> =
            texts.iter().map(|t| one.embed(std::slice::from_ref(t)).unwrap().remove(0)).collect();
        assert_eq!(one.embed(&texts).unwrap(), alone, "{name}: whole batch");
        let reversed: Vec<String> = texts.iter().rev().cloned().collect();
        let mut back = one.embed(&reversed).unwrap();
        back.reverse();
        assert_eq!(back, alone, "{name}: reversed batch");
        assert_eq!(one.embed(&texts[1..3]).unwrap(), alone[1..3].to_vec(), "{name}: sub-batch");
        // More texts than one encoder run takes, lengths mixed: runs are formed by token count, and
        // every vector still comes back in its text's place, equal to the text embedded alone.
        let many: Vec<String> = (0..41).map(|i| format!("text {i} ") + &"word ".repeat((i * 7919) % 53)).collect();
        let many_alone: Vec<Vec<f32>> =
            many.iter().map(|t| one.embed(std::slice::from_ref(t)).unwrap().remove(0)).collect();
        assert_eq!(one.embed(&many).unwrap(), many_alone, "{name}: 41 texts of mixed length");
        for threads in [2, 3, 4, 8] {
            let (_, mut other) =
                load_embedder(&steadytext::config::Config { intra_threads: threads, ..config.clone() }, name).unwrap();
            assert_eq!(other.embed(&texts).unwrap(), alone, "{name}: {threads} intra-op threads");
        }
    }
}
