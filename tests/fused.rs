//! The fused decoder (onnxruntime-genai layout: GroupQueryAttention, packed QKV, int8-compute
//! MatMulNBits) against the greedy ids Python onnxruntime computed on the same file, in direct and
//! daemon mode, across thread counts and restarts; its fp32-compute twin against the shared model's
//! own reference.

mod common;

use std::path::{Path, PathBuf};

use half::f16;
use serde_json::{json, Value};
use steadytext::engine::generate::GenerateRequest;
use steadytext::engine::load_generator;

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
    common::greedy_request(prompt, max_new_tokens)
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
fn our_kernel_variant_gives_its_recorded_ids_with_1_and_2_threads() {
    // The served graph on our own kernels (`fused-st`: `ai.steadytext` `Int4MatMul` for every
    // MatMulNBits, `GroupQueryAttention` for every attention). Only this engine runs it, so its greedy ids are recorded here
    // (tests/fused/st_greedy_ids.json, computed by the engine: a change to the kernel's numbers
    // changes `kernels::VERSION` and them). The independent checks: the same weights under
    // ONNX Runtime's own int8 rounding and attention choose the same first token for every
    // reference prompt; each operator against ONNX Runtime's (the test below) and a float64
    // reference (beside the kernels).
    let model = common::fused_models().join("SmolLM2-135M-Instruct-fused-st");
    let served = cases(&folder(4).join("reference.json"));
    let recorded: Vec<Vec<u32>> = serde_json::from_str(include_str!("fused/st_greedy_ids.json")).unwrap();
    for threads in [1, 2] {
        let (_, mut generator) = load_generator(&common::config(threads), model.to_str().unwrap()).unwrap();
        let got: Vec<Vec<u32>> = served
            .iter()
            .map(|(prompt, max, _)| generator.generate(&request(prompt, *max)).unwrap().token_ids)
            .collect();
        for ((prompt, _, theirs), ours) in served.iter().zip(&got) {
            assert_eq!(ours[0], theirs[0], "first token of {prompt:?}");
        }
        assert_eq!(got, recorded, "{threads} threads: {}", serde_json::to_string(&got).unwrap());
    }
}

#[test]
fn concurrent_sampled_and_greedy_clients_on_our_kernels_get_the_single_stream_bytes() {
    // Our operators run on the session's own threads, and a batch's rows are sampled on them
    // too: each answer must still be the one the request gets alone.
    let model = common::fused_models().join("SmolLM2-135M-Instruct-fused-st");
    let config = format!("generation_model = {:?}\n[cache]\ngeneration_capacity = 0\n", model.to_str().unwrap());
    let d = common::Daemon::socket_activated(&config, &[]);
    let requests: Vec<Value> = cases(&folder(4).join("reference.json"))
        .into_iter()
        .enumerate()
        .flat_map(|(i, (prompt, _, _))| {
            let greedy = json!({"prompt": prompt.clone(), "max_new_tokens": 40, "seed": i});
            let sampled = json!({"prompt": prompt, "max_new_tokens": 40, "seed": i, "temperature": 0.8, "top_p": 0.95});
            [greedy, sampled]
        })
        .collect();
    let ids = |answer: Value| -> Vec<u32> {
        serde_json::from_value(answer["result"]["token_ids"].clone()).unwrap_or_else(|e| panic!("{answer}: {e}"))
    };
    let alone: Vec<Vec<u32>> = requests.iter().map(|r| ids(d.connect().call("generate", r.clone()))).collect();
    let clients: Vec<_> = requests.iter().map(|r| (r.clone(), d.connect())).collect();
    let threads: Vec<_> = clients
        .into_iter()
        .map(|(request, mut c)| std::thread::spawn(move || ids(c.call("generate_stream", request))))
        .collect();
    for ((thread, want), request) in threads.into_iter().zip(&alone).zip(&requests) {
        assert_eq!(&thread.join().unwrap(), want, "{request}");
    }
}

#[test]
fn onnxruntime_genai_runs_the_fused_folder_to_steadytexts_ids() {
    // onnxruntime-genai (its own ONNX Runtime, 1.32.0) reads genai_config.json and runs its own
    // greedy search: the folder is a real onnxruntime-genai model, and its answers are ours.
    let model = folder(4);
    let (_, mut generator) = load_generator(&common::config(2), model.to_str().unwrap()).unwrap();
    let mut input = Vec::new();
    let mut ours = Vec::new();
    for (prompt, max, _) in cases(&model.join("reference.json")) {
        input.push((generator.prompt_ids(&request(&prompt, max)).unwrap(), max));
        ours.push(generator.generate(&request(&prompt, max)).unwrap().token_ids);
    }
    let theirs = common::genai_ids(&model, &input);
    assert_eq!(theirs, ours);
}

#[test]
fn shared_kv_buffers_give_the_ids_of_a_concatenated_cache_over_long_runs() {
    // The same graph run with a growing cache concatenated by ONNX Runtime (a copy of the folder
    // whose genai_config.json turns past_present_share_buffer off): a long prompt fed in chunks
    // and 600 new tokens cross several buffer growths; every id must agree.
    let model = folder(4);
    let (_copy, concat) = common::genai_variant(&model, "concatenating", |genai| {
        assert_eq!(genai["search"]["past_present_share_buffer"], true);
        genai["search"]["past_present_share_buffer"] = json!(false);
    });
    let prompt = (1..400).map(|i| i.to_string()).collect::<Vec<_>>().join(", ") + ",";
    let long = GenerateRequest { raw: true, ..request(&prompt, 600) };
    let ids = |folder: &Path| {
        let (_, mut generator) = load_generator(&common::config(2), folder.to_str().unwrap()).unwrap();
        assert!(generator.prompt_ids(&long).unwrap().len() > 1000, "the prompt spans several prefill chunks");
        generator.generate(&long).unwrap().token_ids
    };
    let shared = ids(&model);
    assert!(shared.len() > 300, "a long generation ({} tokens)", shared.len());
    assert_eq!(shared, ids(&concat));
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

#[test]
fn concurrent_daemon_clients_get_the_single_stream_bytes_and_status_shows_batching() {
    let model = folder(4);
    let config = format!("generation_model = {:?}\n[cache]\ngeneration_capacity = 0\n", model.to_str().unwrap());
    let d = common::Daemon::socket_activated(&config, &[]);
    // Every reference case from its own connection at once, twice over (12 concurrent streams).
    let cases = cases(&model.join("reference.json"));
    let clients: Vec<_> = cases.iter().chain(&cases).map(|case| (case.clone(), d.connect())).collect();
    let threads: Vec<_> = clients
        .into_iter()
        .map(|((prompt, max, expected), mut c)| {
            std::thread::spawn(move || {
                let answer = c.call("generate_stream", json!({"prompt": prompt, "max_new_tokens": max}));
                let got: Vec<u32> = serde_json::from_value(answer["result"]["token_ids"].clone())
                    .unwrap_or_else(|e| panic!("{answer}: {e}"));
                assert_eq!(got, expected, "concurrent client, prompt {prompt:?}");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Both models loaded now (the embedder after its first request).
    d.connect().call("embed", json!({"texts": ["loaded"]}));
    let status = d.connect().call("status", json!({}));
    let batch = |kind: &str| {
        status["result"]["models"].as_array().unwrap().iter().find(|m| m["kind"] == kind).unwrap()["batch_sequences"]
            .clone()
    };
    assert_eq!((batch("generation"), batch("embedding")), (json!(16), json!(1)), "{status}");
}

/// One-node models of ONNX Runtime's `GroupQueryAttention` (`com.microsoft`, a float32 cache) and
/// of ours (`ai.steadytext`, a float16 cache), same attributes (9 query heads on 3 KV heads of 64,
/// rotary, the default scale), written by Python's `onnx` into `dir`.
fn attention_layer_models(dir: &Path) -> [PathBuf; 2] {
    let python = common::venv_python("tools/cross-encoder/requirements.txt");
    let script = r#"
import sys
from onnx import TensorProto, helper, save
F, I = TensorProto.FLOAT, TensorProto.INT32
for domain, kv, path in zip(("com.microsoft", "ai.steadytext"), (F, TensorProto.FLOAT16), sys.argv[1:]):
    inputs = [helper.make_tensor_value_info(n, t, s) for n, t, s in [
        ("query", F, ["b", "s", 960]), ("past_key", kv, ["b", 3, "p", 64]), ("past_value", kv, ["b", 3, "p", 64]),
        ("seqlens_k", I, ["b"]), ("total_sequence_length", I, [1]), ("cos_cache", F, ["m", 32]),
        ("sin_cache", F, ["m", 32])]]
    outputs = [helper.make_tensor_value_info(n, t, None)
               for n, t in (("output", F), ("present_key", kv), ("present_value", kv))]
    node = helper.make_node("GroupQueryAttention", ["query", "", "", "past_key", "past_value", "seqlens_k",
                            "total_sequence_length", "cos_cache", "sin_cache"], ["output", "present_key", "present_value"],
                            domain=domain, num_heads=9, kv_num_heads=3, do_rotary=1)
    graph = helper.make_graph([node], "attention", inputs, outputs)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)]), path)
"#;
    let paths = [dir.join("ort.onnx"), dir.join("st.onnx")];
    let out = std::process::Command::new(python).args(["-c", script]).args(&paths).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    paths
}

#[test]
fn our_attention_operator_computes_what_onnxruntimes_computes() {
    use ort::value::Tensor;
    use steadytext::engine::backend::Shapes;

    let dir = tempfile::tempdir().unwrap();
    let [mut theirs, mut ours] = attention_layer_models(dir.path()).map(|path| {
        steadytext::engine::session(&common::config(2), &path, None, "attention", Shapes::PerStep).unwrap().0
    });
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut random = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % 20_001) as f32 / 10_000.0 - 1.0
            })
            .collect()
    };
    let positions = 64;
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for p in 0..positions {
        for i in 0..32 {
            let angle = p as f64 / 10_000f64.powf(i as f64 / 32.0);
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    // (tokens per row, past buffer length, each row's positions before the call, each row's real
    // tokens): a right-padded first prompt, a chunk after cached positions (ONNX Runtime takes
    // one row then), decode steps.
    let scenarios: [(usize, usize, Vec<usize>, Vec<usize>); 4] = [
        (7, 0, vec![0, 0], vec![7, 4]),
        (5, 20, vec![12], vec![5]),
        (1, 40, vec![5, 39, 17], vec![1, 1, 1]),
        (1, 64, vec![63], vec![1]),
    ];
    for (seq, buffer, past, valid) in scenarios {
        let rows = past.len();
        let total = past.iter().zip(&valid).map(|(p, v)| p + v).max().unwrap() as i32;
        let total = if buffer == 0 { seq as i32 } else { total };
        let query = random(rows * seq * 960);
        // The past in half precision (ours holds it so; ONNX Runtime gets the same values widened).
        let mut half = |n: usize| random(n).into_iter().map(f16::from_f32).collect::<Vec<f16>>();
        let (past_key, past_value) = (half(rows * 3 * buffer * 64), half(rows * 3 * buffer * 64));
        let widen = |v: &[f16]| v.iter().map(|x| x.to_f32()).collect::<Vec<f32>>();
        let seqlens: Vec<i32> = past.iter().zip(&valid).map(|(p, v)| (p + v) as i32 - 1).collect();
        let run = |session: &mut ort::session::Session, in_half: bool| -> Vec<(Vec<i64>, Vec<f32>)> {
            let shape = [rows, 3, buffer, 64];
            let cache = |v: &[f16]| -> ort::value::DynValue {
                if in_half {
                    Tensor::from_array((shape, v.to_vec())).unwrap().into_dyn()
                } else {
                    Tensor::from_array((shape, widen(v))).unwrap().into_dyn()
                }
            };
            let outputs = session
                .run(ort::inputs![
                    "query" => Tensor::from_array(([rows, seq, 960], query.clone())).unwrap(),
                    "past_key" => cache(&past_key),
                    "past_value" => cache(&past_value),
                    "seqlens_k" => Tensor::from_array(([rows], seqlens.clone())).unwrap(),
                    "total_sequence_length" => Tensor::from_array(([1], vec![total])).unwrap(),
                    "cos_cache" => Tensor::from_array(([positions, 32], cos.clone())).unwrap(),
                    "sin_cache" => Tensor::from_array(([positions, 32], sin.clone())).unwrap(),
                ])
                .unwrap();
            ["output", "present_key", "present_value"]
                .map(|name| match outputs[name].try_extract_tensor::<f32>() {
                    Ok((shape, data)) => (shape.to_vec(), data.to_vec()),
                    Err(_) => {
                        let (shape, data) = outputs[name].try_extract_tensor::<f16>().unwrap();
                        (shape.to_vec(), widen(data))
                    }
                })
                .to_vec()
        };
        let (want, got) = (run(&mut theirs, false), run(&mut ours, true));
        let what = format!("{seq} tokens after {past:?}");
        for (name, (w, g)) in ["output", "present_key", "present_value"].iter().zip(want.iter().zip(&got)) {
            assert_eq!(w.0, g.0, "{what}: {name}'s shape");
        }
        // The real tokens' outputs, and every written position of the caches.
        let largest = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
        let mut worst = [0f32; 3];
        for row in 0..rows {
            for i in 0..valid[row] {
                let at = (row * seq + i) * 576;
                let (w, g) = (&want[0].1[at..at + 576], &got[0].1[at..at + 576]);
                worst[0] = worst[0].max(w.iter().zip(g).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) / largest(w));
            }
            let capacity = want[1].0[2] as usize;
            for kind in 1..3 {
                for kv in 0..3 {
                    let at = (row * 3 + kv) * capacity * 64;
                    let end = at + (past[row] + valid[row]) * 64;
                    let (w, g) = (&want[kind].1[at..end], &got[kind].1[at..end]);
                    let diff = w.iter().zip(g).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                    worst[kind] = worst[kind].max(diff / largest(w).max(1e-30));
                }
            }
        }
        // Ours rounds the call's keys and values to half precision (half an ulp: 2^-11 of the
        // value), and attends over them.
        let bounds = [2e-3, 2f32.powi(-11), 2f32.powi(-11)];
        assert!(
            worst.iter().zip(bounds).all(|(&e, b)| e <= b),
            "{what}: relative differences {worst:?} (output, keys, values)"
        );
        eprintln!("{what}: relative differences {worst:?} (output, keys, values)");
    }
}
