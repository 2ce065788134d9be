//! Continuous batching keeps every answer bit-identical: generations that share decode steps (greedy
//! and seeded sampling, different prompt and output lengths, admitted at scattered step offsets,
//! some cancelled mid-way, some constrained to choices, a regex or a JSON Schema) give exactly the
//! bytes each gives alone, with 1 and 2 threads; a model
//! whose kernels are not batch invariant is found out at load, and its generations take turns
//! (each alone in every step), with the same bytes too.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use steadytext::engine::backend::BatchDecode;
use steadytext::engine::constraint::Constraint;
use steadytext::engine::generate::{ChatMessage, GenerateRequest};
use steadytext::engine::logprobs::LogprobsRequest;
use steadytext::engine::sampler::Sampling;
use steadytext::protocol::GenerateResult;
use steadytext::service::{Admission, Advance, GenerationService, Model};

fn folder(level: u8) -> PathBuf {
    common::fused_models().join(format!("SmolLM2-135M-Instruct-fused-acc{level}"))
}

fn load(level: u8, threads: usize) -> GenerationService {
    let mut config = common::config(threads);
    config.daemon.batch_sequences = 16;
    GenerationService::load(&config, Some(folder(level).to_str().unwrap())).unwrap()
}

const TOPICS: [&str; 8] = [
    "Write a haiku about the sea.",
    "Explain what a KV cache is in one paragraph.",
    "List three prime numbers and say why they are prime.",
    "What is the capital of France? Answer in a full sentence, then add a fun fact about it.",
    "Describe how bread rises, step by step, for a child.",
    "hi",
    "Translate 'good morning, how did you sleep?' into Spanish, French and German.",
    "Summarize the plot of a story about a robot who learns to paint, in four sentences, with a twist.",
];

/// Varied requests: greedy and seeded sampling, short and long prompts and outputs, stop strings,
/// a conversation, a raw completion.
fn requests() -> Vec<GenerateRequest> {
    (0..20)
        .map(|i| {
            let topic = TOPICS[i % TOPICS.len()];
            let sampled = i % 3 != 0;
            GenerateRequest {
                prompt: if i == 7 { String::new() } else { format!("{topic}{}", " Be concise.".repeat(i % 4)) },
                messages: if i == 7 {
                    vec![ChatMessage::new("system", "You are terse."), ChatMessage::new("user", topic)]
                } else {
                    Vec::new()
                },
                raw: i == 11,
                think: false,
                seed: 1000 + i as u64,
                max_new_tokens: 6 + (i * 7) % 40,
                stop: if i % 5 == 4 { vec![".".into()] } else { Vec::new() },
                sampling: if sampled {
                    Sampling {
                        temperature: 0.7 + (i % 4) as f32 * 0.2,
                        top_k: [0, 40][i % 2],
                        top_p: [1.0, 0.9][i % 2],
                    }
                } else {
                    Sampling::default()
                },
                // Structured output in the batch too: choices, a regex, a small JSON Schema.
                constraint: match i {
                    1 | 8 | 15 => Some(Constraint::Choices(vec!["yes".into(), "no".into(), "it depends".into()])),
                    2 | 9 => Some(Constraint::Regex("[A-Za-z ,.]{1,40}".into())),
                    4 | 13 => Some(Constraint::Schema(serde_json::json!({
                        "type": "object", "properties": {"answer": {"type": "string", "maxLength": 20},
                        "sure": {"type": "boolean"}}, "required": ["answer", "sure"], "additionalProperties": false}))),
                    _ => None,
                },
                logprobs: (i % 3 == 0).then(|| LogprobsRequest { top: 5, follow: Vec::new() }),
                tools: None,
            }
        })
        .collect()
}

/// Runs `requests` through the model's active set: request `i` is admitted at step `arrive[i]`,
/// and cancelled after `cancel_at[i]` steps of its own when that is set. Returns the finished
/// answers by index and the most generations that were active at once.
fn run_concurrently(
    model: &mut GenerationService,
    requests: &[GenerateRequest],
    arrive: &[usize],
    cancel_at: &HashMap<usize, usize>,
) -> (HashMap<usize, GenerateResult>, usize) {
    let mut results = HashMap::new();
    let mut active: HashMap<usize, usize> = HashMap::new(); // index -> admitted at step
    let mut widest = 0;
    let mut step = 0;
    while results.len() + cancel_at.len() < requests.len() {
        for (i, request) in requests.iter().enumerate().filter(|(i, _)| arrive[*i] == step) {
            assert_eq!(model.admit(i as u64, request).unwrap(), Admission::Started);
            active.insert(i, step);
        }
        for (&i, &after) in cancel_at {
            if step >= after && active.get(&i) == Some(&(step - after)) {
                model.cancel(i as u64);
                active.remove(&i);
            }
        }
        widest = widest.max(active.len());
        for (id, advance) in model.step() {
            if let Advance::Done(result) = advance {
                active.remove(&(id as usize));
                results.insert(id as usize, result.unwrap());
            }
        }
        step += 1;
        assert!(step < 10_000, "generations never finished");
    }
    (results, widest)
}

#[test]
fn batched_generations_give_the_bytes_each_gives_alone_with_1_and_2_threads() {
    let requests = requests();
    for threads in [1, 2] {
        let mut model = load(4, threads);
        assert_eq!(model.max_active(), 16, "the fused int8-compute model passes the batch-invariance probe");
        let alone: Vec<GenerateResult> = requests.iter().map(|r| model.generate(r, &mut |_| true).unwrap()).collect();
        // Scattered arrivals (a deterministic pseudo-random schedule), two cancelled mid-way.
        let arrive: Vec<usize> = (0..requests.len()).map(|i| (i * 37 + i * i * 11) % 29).collect();
        let cancel_at = HashMap::from([(3, 4), (10, 1)]);
        let (batched, widest) = run_concurrently(&mut model, &requests, &arrive, &cancel_at);
        assert!(widest >= 8, "at most {widest} generations overlapped: the test did not batch");
        for (i, expected) in alone.iter().enumerate() {
            if cancel_at.contains_key(&i) {
                assert!(!batched.contains_key(&i), "request {i} was cancelled but answered");
                continue;
            }
            let got = &batched[&i];
            // Whole generations: text, ids, finish reason and log-probabilities, bit for bit.
            assert_eq!(
                got.generation, expected.generation,
                "request {i} with {threads} threads: batched answer differs from its answer alone"
            );
            assert_eq!(expected.generation.logprobs.is_some(), i % 3 == 0);
        }
    }
}

#[test]
fn a_generation_waits_while_the_kv_budget_is_spent_and_starts_when_room_comes() {
    let mut config = common::config(2);
    // One row of 64 positions (46 KiB each, 2.9 MiB) fits; two rows (5.8 MiB) do not.
    config.daemon.batch_kv_mb = 4;
    let mut model = GenerationService::load(&config, Some(folder(4).to_str().unwrap())).unwrap();
    let request = |max_new_tokens| GenerateRequest { max_new_tokens, ..requests()[0].clone() };
    assert_eq!(model.admit(1, &request(3)).unwrap(), Admission::Started);
    assert_eq!(model.admit(2, &request(3)).unwrap(), Admission::Later);
    // A generation that could not fit even alone is refused up front, saying why.
    let refused = model.admit(3, &request(200)).unwrap_err().to_string();
    assert!(refused.contains("batch_kv_mb") && refused.contains("max_new_tokens 200"), "{refused}");
    while !model.step().iter().any(|(id, a)| *id == 1 && matches!(a, Advance::Done(Ok(_)))) {}
    assert_eq!(model.admit(2, &request(3)).unwrap(), Admission::Started);
}

#[test]
fn a_model_that_is_not_batch_invariant_runs_its_generations_in_turn_with_the_same_bytes() {
    // The fp32-compute twin: MatMulNBits takes another kernel for one row, so a batched row
    // differs from the row alone; the load-time probe must see it.
    let mut model = load(0, 2);
    assert!(matches!(model.batching(), BatchDecode::OneAtATime(_)), "{:?}", model.batching());
    // A long generation does not hold the others back: they advance in turn, each alone.
    let requests: Vec<GenerateRequest> = requests().into_iter().take(6).collect();
    let alone: Vec<GenerateResult> = requests.iter().map(|r| model.generate(r, &mut |_| true).unwrap()).collect();
    let (together, widest) = run_concurrently(&mut model, &requests, &[0, 0, 1, 2, 3, 5], &HashMap::new());
    assert!(widest >= 4, "at most {widest} generations overlapped");
    for (i, expected) in alone.iter().enumerate() {
        assert_eq!(together[&i].generation, expected.generation, "request {i} differs when taking turns");
    }
}
