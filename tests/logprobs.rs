//! Log-probabilities: the daemon's against log_softmax of logits computed independently by Python
//! onnxruntime over the same prompt ids (within 1e-5; the greedy choice is the top-1), the same
//! bits in direct mode with 1 and 2 threads, from the cache and after a restart; bad requests are
//! clear errors and the daemon serves on.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use steadytext::core::validate::ToRequest;
use steadytext::protocol::{codes, GenerateParams};
use steadytext::service::GenerationService;

use common::Daemon;

const TOP: usize = 5;
const TOKENS: usize = 12;

/// The reference prompts (with their independently tokenized ids), greedy, then two of them
/// sampled with a seed.
fn cases() -> Vec<(Value, Vec<u32>)> {
    let reference = common::reference("SmolLM2-135M-Instruct/reference_ort.json");
    let prompts: Vec<(String, Vec<u32>)> = reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["prompt"].as_str().unwrap().to_string(), serde_json::from_value(c["input_ids"].clone()).unwrap()))
        .collect();
    let base = |p: &str| json!({"prompt": p, "max_new_tokens": TOKENS, "logprobs": true, "top_logprobs": TOP});
    let mut cases: Vec<(Value, Vec<u32>)> = prompts.iter().map(|(p, ids)| (base(p), ids.clone())).collect();
    for (p, ids) in &prompts[..2] {
        let mut sampled = base(p);
        sampled["temperature"] = json!(0.9);
        sampled["seed"] = json!(7);
        cases.push((sampled, ids.clone()));
    }
    cases
}

/// Python onnxruntime's log-probabilities for each case's prompt ids and generated ids.
fn python_reference(cases: &[(Value, Vec<u32>)], answers: &[Value]) -> Vec<Value> {
    let python = common::venv_python("tools/fused-decoder/requirements.txt");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/logprobs/reference.py");
    let input: Vec<Value> = cases
        .iter()
        .zip(answers)
        .map(|((_, ids), a)| json!({"prompt_ids": ids, "token_ids": a["token_ids"], "top": TOP}))
        .collect();
    let mut child = std::process::Command::new(python)
        .arg(script)
        .arg(common::models_dir().join("SmolLM2-135M-Instruct"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(json!(input).to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "reference.py failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn as_f64(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn logprobs_match_python_onnxruntime_and_are_the_same_bits_everywhere() {
    let state = tempfile::tempdir().unwrap();
    let cases = cases();
    let answers: Vec<Value> = {
        let mut d = Daemon::socket_activated_in(tempfile::tempdir().unwrap(), state.path(), "", &[]);
        let mut conn = d.connect();
        let answers: Vec<Value> = cases
            .iter()
            .map(|(params, _)| {
                let answer = conn.call("generate", params.clone());
                assert!(answer["error"].is_null(), "{params}: {answer}");
                answer["result"].clone()
            })
            .collect();
        // From the cache: the same bits, marked cached; without logprobs another entry.
        for ((params, _), fresh) in cases.iter().zip(&answers) {
            let again = conn.call("generate", params.clone())["result"].clone();
            assert_eq!(again["cached"], true);
            assert_eq!(again["logprobs"], fresh["logprobs"]);
        }
        let plain = conn.call("generate", json!({"prompt": cases[0].0["prompt"], "max_new_tokens": TOKENS}));
        assert_eq!((plain["result"]["cached"].clone(), plain["result"].get("logprobs")), (json!(false), None));
        // Bad requests: clear errors, and the daemon serves on.
        for (bad, says) in [
            (json!({"prompt": "x", "logprobs": true, "top_logprobs": 21}), "top_logprobs 21 is over the limit of 20"),
            (json!({"prompt": "x", "top_logprobs": 3}), "top_logprobs needs logprobs: true"),
            (json!({"prompt": "x", "logprobs": "yes"}), "expected a boolean"),
        ] {
            let answer = conn.call("generate", bad.clone());
            assert_eq!(answer["error"]["code"], codes::INVALID_PARAMS, "{bad}: {answer}");
            assert!(answer["error"]["message"].as_str().unwrap().contains(says), "{bad}: {answer}");
        }
        assert!(conn.call("ping", json!({}))["error"].is_null());
        d.signal(libc::SIGTERM);
        assert_eq!(d.wait_exit(Duration::from_secs(60)), Some(0));
        answers
    };

    // After a restart, from the snapshot: the same bits.
    {
        let d = Daemon::socket_activated_in(tempfile::tempdir().unwrap(), state.path(), "", &[]);
        let mut conn = d.connect();
        for ((params, _), fresh) in cases.iter().zip(&answers) {
            let again = conn.call("generate", params.clone())["result"].clone();
            assert_eq!(again["cached"], true, "{params}");
            assert_eq!(again["logprobs"], fresh["logprobs"], "{params}: after a restart");
        }
    }

    // Direct mode, 1 and 2 threads: the same bits.
    for threads in [1, 2] {
        let config = common::config(threads);
        let mut service = GenerationService::load(&config, None).unwrap();
        for ((params, _), daemon) in cases.iter().zip(&answers) {
            let request =
                serde_json::from_value::<GenerateParams>(params.clone()).unwrap().to_request(&config).unwrap();
            let direct = service.run(&request, &mut |_| true).unwrap();
            let direct = serde_json::to_value(&direct.generation).unwrap();
            assert_eq!(direct["logprobs"], daemon["logprobs"], "{params}: direct mode with {threads} threads");
        }
    }

    // Against Python onnxruntime.
    let reference = python_reference(&cases, &answers);
    let mut worst = 0f64;
    for (((params, ids), answer), expected) in cases.iter().zip(&answers).zip(&reference) {
        assert_eq!(answer["prompt_tokens"], json!(ids.len()), "{params}");
        let steps = answer["logprobs"].as_array().unwrap();
        let token_ids = answer["token_ids"].as_array().unwrap();
        assert_eq!(steps.len(), token_ids.len(), "{params}: one entry per token");
        let greedy = params.get("temperature").is_none();
        for (i, (step, python)) in steps.iter().zip(expected["logprobs"].as_array().unwrap()).enumerate() {
            assert_eq!(step["token_id"], token_ids[i]);
            let chosen = as_f64(&step["logprob"]);
            worst = worst.max((chosen - as_f64(&python[0])).abs());
            assert!((chosen - as_f64(&python[0])).abs() <= 1e-5, "{params} step {i}: {chosen} vs {}", python[0]);
            let top = step["top_logprobs"].as_array().unwrap();
            let python_top = python[1].as_array().unwrap();
            assert_eq!(top.len(), TOP);
            for (ours, theirs) in top.iter().zip(python_top) {
                assert_eq!(ours["token_id"], theirs[0], "{params} step {i}: top tokens differ");
                let d = (as_f64(&ours["logprob"]) - as_f64(&theirs[1])).abs();
                worst = worst.max(d);
                assert!(d <= 1e-5, "{params} step {i}: {ours} vs {theirs}");
            }
            if greedy {
                assert_eq!(
                    top[0]["token_id"], step["token_id"],
                    "{params} step {i}: greedy took another than the top-1"
                );
                assert_eq!(top[0]["logprob"], step["logprob"]);
            }
        }
    }
    eprintln!("largest difference from Python onnxruntime: {worst:e}");
}
