//! Rerank with the generation model's yes/no judgement: on a labeled set of 24 queries (each with
//! one answering document among three that share its words) it must beat a word-overlap
//! baseline in MRR; a document's score is the same bits whatever else shares the request, in the
//! daemon and in direct mode, and from the cache; bad requests are clear errors.

mod common;

use std::collections::HashSet;

use serde_json::{json, Value};
use steadytext::protocol::{codes, RerankParams};

use common::Daemon;

struct Labeled {
    query: String,
    documents: Vec<String>,
    relevant: usize,
}

fn labeled() -> Vec<Labeled> {
    let cases: Vec<Value> = serde_json::from_str(include_str!("rerank/labeled.json")).unwrap();
    cases
        .into_iter()
        .map(|c| Labeled {
            query: c["query"].as_str().unwrap().into(),
            documents: serde_json::from_value(c["documents"].clone()).unwrap(),
            relevant: c["relevant"].as_u64().unwrap() as usize,
        })
        .collect()
}

fn words(text: &str) -> HashSet<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

/// The baseline: the share of the query's words found in the document.
fn overlap(query: &str, document: &str) -> f32 {
    let q = words(query);
    q.intersection(&words(document)).count() as f32 / q.len().max(1) as f32
}

/// Rank (1-based) of the relevant document under `scores` (ties by input order, as `order`).
fn rank(scores: &[f32], relevant: usize) -> usize {
    let order = steadytext::engine::rerank::order(scores);
    order.iter().position(|&i| i == relevant).unwrap() + 1
}

/// (MRR, top-1 accuracy) of per-query scores.
fn quality(set: &[Labeled], scores: &[Vec<f32>]) -> (f64, f64) {
    let ranks: Vec<usize> = set.iter().zip(scores).map(|(l, s)| rank(s, l.relevant)).collect();
    let n = ranks.len() as f64;
    (ranks.iter().map(|&r| 1.0 / r as f64).sum::<f64>() / n, ranks.iter().filter(|&&r| r == 1).count() as f64 / n)
}

fn bits(scores: &Value) -> Vec<u32> {
    scores.as_array().unwrap().iter().map(|s| (s.as_f64().unwrap() as f32).to_bits()).collect()
}

#[test]
fn rerank_beats_word_overlap_and_scores_do_not_depend_on_the_other_documents() {
    let set = labeled();
    assert!(set.len() >= 20);
    let d = Daemon::socket_activated("", &[]);
    let mut conn = d.connect();
    let answers: Vec<Value> = set
        .iter()
        .map(|l| {
            let answer = conn.call("rerank", json!({"query": l.query, "documents": l.documents}));
            assert!(answer["error"].is_null(), "{}: {answer}", l.query);
            answer["result"].clone()
        })
        .collect();
    let model_scores: Vec<Vec<f32>> = answers
        .iter()
        .map(|a| a["scores"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap() as f32).collect())
        .collect();
    let baseline: Vec<Vec<f32>> =
        set.iter().map(|l| l.documents.iter().map(|d| overlap(&l.query, d)).collect()).collect();
    let (mrr, top1) = quality(&set, &model_scores);
    let (base_mrr, base_top1) = quality(&set, &baseline);
    eprintln!(
        "rerank on {} queries: yes/no judgement MRR {mrr:.3}, top-1 {top1:.3}; word overlap MRR {base_mrr:.3}, top-1 {base_top1:.3}",
        set.len()
    );
    assert!(mrr > base_mrr, "the model ({mrr:.3}) must beat word overlap ({base_mrr:.3}) in MRR");
    for (l, a) in set.iter().zip(&answers) {
        let scores = &a["scores"];
        assert_eq!(scores.as_array().unwrap().len(), l.documents.len());
        assert!(scores.as_array().unwrap().iter().all(|s| (0.0..=1.0).contains(&s.as_f64().unwrap())));
        let order: Vec<usize> = serde_json::from_value(a["order"].clone()).unwrap();
        let expected =
            steadytext::engine::rerank::order(&bits(scores).iter().map(|b| f32::from_bits(*b)).collect::<Vec<_>>());
        assert_eq!(order, expected);
        assert_eq!(a["prompt_version"], steadytext::engine::rerank::PROMPT_VERSION);
    }

    // Each document alone, and the documents reversed: the same bits per document.
    for (l, a) in set.iter().zip(&answers).take(4) {
        let full = bits(&a["scores"]);
        for (i, doc) in l.documents.iter().enumerate() {
            let alone = conn.call("rerank", json!({"query": l.query, "documents": [doc]}))["result"].clone();
            assert_eq!(bits(&alone["scores"]), vec![full[i]], "{}: document {i} alone", l.query);
            assert_eq!(alone["cached"], 1, "a document's judgement is cached on its own");
        }
        let reversed: Vec<&String> = l.documents.iter().rev().collect();
        let back = conn.call("rerank", json!({"query": l.query, "documents": reversed}))["result"].clone();
        let mut back_bits = bits(&back["scores"]);
        back_bits.reverse();
        assert_eq!(back_bits, full, "{}: reversed documents", l.query);
    }
    // With a new document among them: the others keep their bits.
    let l = &set[0];
    let mut more = l.documents.clone();
    more.insert(1, "An unrelated sentence about the weather in Oslo.".into());
    let with_new = conn.call("rerank", json!({"query": l.query, "documents": more}))["result"].clone();
    let mut with_new_bits = bits(&with_new["scores"]);
    with_new_bits.remove(1);
    assert_eq!(with_new_bits, bits(&answers[0]["scores"]));
    assert_eq!(with_new["cached"], l.documents.len());

    // Bad requests: clear errors, and the daemon serves on.
    for (bad, says) in [
        (json!({"query": "q", "documents": []}), "documents must hold at least one"),
        (json!({"query": " ", "documents": ["d"]}), "give a query"),
        (json!({"documents": ["d"]}), "query"),
        (json!({"query": "q", "documents": ["d"], "model": "no-such-model"}), "no-such-model"),
    ] {
        let answer = conn.call("rerank", bad.clone());
        assert!(answer["error"]["code"].as_i64().is_some(), "{bad}: {answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains(says), "{bad}: {answer}");
    }
    assert_eq!(conn.call("rerank", json!({"query": "q", "documents": []}))["error"]["code"], codes::INVALID_PARAMS);
    assert!(conn.call("ping", json!({}))["error"].is_null());

    // Direct mode (its own empty cache): the same bits.
    let cache = tempfile::tempdir().unwrap();
    let mut config = common::config(0);
    config.cache.dir = Some(cache.path().to_path_buf());
    for (l, a) in set.iter().zip(&answers).take(6) {
        let params = RerankParams { query: l.query.clone(), documents: l.documents.clone(), model: None };
        let direct = steadytext::direct::rerank(&config, &params).unwrap();
        assert_eq!(direct.cached, 0);
        let direct_bits: Vec<u32> = direct.scores.iter().map(|s| s.to_bits()).collect();
        assert_eq!(direct_bits, bits(&a["scores"]), "{}: direct mode differs from the daemon", l.query);
    }
}

/// Python onnxruntime's logits for `documents` against `query` (tools/cross-encoder/score.py).
fn python_logits(model: &std::path::Path, query: &str, documents: &[String]) -> Vec<f32> {
    let python = common::venv_python("tools/cross-encoder/requirements.txt");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/cross-encoder/score.py");
    let mut child = std::process::Command::new(python)
        .arg(script)
        .arg(model)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let request = json!({"query": query, "documents": documents}).to_string();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), request.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "score.py failed");
    let logits: Vec<f64> = serde_json::from_slice(&out.stdout).unwrap();
    logits.into_iter().map(|l| l as f32).collect()
}

#[test]
fn a_configured_cross_encoder_scores_bit_for_bit_like_python_onnxruntime() {
    let model = common::cross_encoder_model();
    let config = format!("rerank_model = {:?}\n", model.display().to_string());
    let d = Daemon::socket_activated(&config, &[]);
    let mut conn = d.connect();
    let long = "a very long document about many unrelated things ".repeat(40);
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("what is a cat", vec!["a cat is an animal".into(), "stocks fell today".into(), long.clone()]),
        ("capital of France?", labeled()[0].documents.clone()),
        ("ünïcödé query", vec!["日本語の文書".into(), "x".into()]),
    ];
    for (query, documents) in &cases {
        let answer = conn.call("rerank", json!({"query": query, "documents": documents}));
        assert!(answer["error"].is_null(), "{answer}");
        let result = &answer["result"];
        assert_eq!(result["prompt_version"], "cross-encoder");
        assert_eq!(result["model"], "tiny-cross-encoder");
        let expected: Vec<u32> = python_logits(&model, query, documents)
            .into_iter()
            .map(|l| steadytext::engine::cross_encoder::sigmoid(l).to_bits())
            .collect();
        assert_eq!(bits(&result["scores"]), expected, "{query}: the daemon differs from Python onnxruntime");
        // Each document alone gives the same bits, from the cache.
        for (i, doc) in documents.iter().enumerate() {
            let alone = conn.call("rerank", json!({"query": query, "documents": [doc]}))["result"].clone();
            assert_eq!((bits(&alone["scores"]), alone["cached"].clone()), (vec![expected[i]], json!(1)));
        }
        // Direct mode (its own empty cache): the same bits.
        let cache = tempfile::tempdir().unwrap();
        let mut direct_config = common::config(0);
        direct_config.rerank_model = model.display().to_string();
        direct_config.cache.dir = Some(cache.path().to_path_buf());
        let params = RerankParams { query: query.to_string(), documents: documents.clone(), model: None };
        let direct = steadytext::direct::rerank(&direct_config, &params).unwrap();
        assert_eq!(direct.scores.iter().map(|s| s.to_bits()).collect::<Vec<_>>(), expected, "{query}: direct mode");
    }
    // Naming the generation model still reranks by its judgement.
    let judged = conn.call("rerank", json!({"query": "q", "documents": ["d"], "model": "SmolLM2-135M-Instruct"}));
    assert_eq!(judged["result"]["prompt_version"], steadytext::engine::rerank::PROMPT_VERSION, "{judged}");
    let nul = conn.call("rerank", json!({"query": "a\u{0}b", "documents": ["d"]}));
    assert!(nul["error"]["message"].as_str().unwrap().contains("NUL"), "{nul}");
}
