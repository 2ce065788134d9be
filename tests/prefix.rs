//! The prefix cache never changes an answer: multi-turn conversations whose history grows past
//! 4,000 tokens, requests sharing a long system prompt, structured output, logprobs, seeded
//! sampling and rerank judgements give, with the cache, exactly the bytes (text, ids, every
//! logprob) a model without it gives: run alone and 8 at a time, with 1 and 2 threads, and on a
//! budget so small that blocks are evicted all along. Breaking the rule that keeps it exact (a
//! prefix that ends off a prefill boundary, a 1-token call after it) is caught; the prefix-reuse
//! probe holds at 3,000 tokens.

mod common;

use std::path::{Path, PathBuf};

use steadytext::engine::constraint::Constraint;
use steadytext::engine::generate::{ChatMessage, GenerateRequest, Generation};
use steadytext::engine::logprobs::LogprobsRequest;
use steadytext::engine::prefix::{boundary_at_or_below, PrefixState, ReuseRule};
use steadytext::engine::rerank;
use steadytext::engine::sampler::Sampling;
use steadytext::service::{Admission, Advance, GenerationService, Model};

fn fused() -> PathBuf {
    common::fused_models().join("SmolLM2-135M-Instruct-fused-acc4")
}

fn load(folder: &Path, threads: usize, prefix_mb: usize) -> GenerationService {
    let mut config = common::config(threads);
    config.daemon.batch_sequences = 8;
    config.cache.prefix_mb = prefix_mb;
    GenerationService::load(&config, Some(folder.to_str().unwrap())).unwrap()
}

/// `words` words of deterministic filler text (a linear congruential generator over a word list).
fn text(seed: u64, words: usize) -> String {
    const WORDS: [&str; 16] = [
        "river", "stone", "ledger", "quiet", "machine", "north", "paper", "seven", "harbor", "cloud", "invoice",
        "garden", "signal", "copper", "window", "market",
    ];
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..words)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            WORDS[(x >> 60) as usize]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn message(role: &str, content: String) -> ChatMessage {
    ChatMessage::new(role, content)
}

fn chat(messages: Vec<ChatMessage>, max_new_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: String::new(),
        messages,
        raw: false,
        think: false,
        seed: 7,
        max_new_tokens,
        stop: Vec::new(),
        sampling: Sampling::default(),
        constraint: None,
        logprobs: None,
        tools: None,
    }
}

/// Turn `n`'s request of a conversation whose earlier answers are `answers` (its user turns are
/// long: the history passes 4,000 tokens by the eighth turn).
fn turn(n: usize, answers: &[String], user_words: usize) -> GenerateRequest {
    let mut messages = vec![message("system", "You are a careful assistant. Answer in one short sentence.".into())];
    for t in 0..=n {
        messages.push(message(
            "user",
            format!("Notes {t}: {}. What is the first word of these notes?", text(t as u64, user_words)),
        ));
        if let Some(answer) = answers.get(t).filter(|_| t < n) {
            messages.push(message("assistant", answer.clone()));
        }
    }
    let mut request = chat(messages, 16);
    // Every other turn reports its logprobs, so a changed logit cannot hide behind the argmax.
    request.logprobs = (n % 2 == 1).then(|| LogprobsRequest { top: 3, follow: Vec::new() });
    request
}

/// Requests sharing a long system prompt: plain, logprobs, seeded sampling, a JSON Schema, a
/// regex, an exact repeat; then rerank judgements of one query.
fn shared_prompt_requests() -> Vec<GenerateRequest> {
    let system = format!("You answer questions about this document. Document: {}", text(99, 250));
    let ask = |q: &str| chat(vec![message("system", system.clone()), message("user", q.into())], 24);
    let mut requests = vec![ask("Which word comes first?"), ask("Is the document about rivers? Say why.")];
    let mut logprobs = ask("Name one word that appears twice.");
    logprobs.logprobs = Some(LogprobsRequest { top: 5, follow: vec!["yes".into(), "no".into()] });
    requests.push(logprobs);
    let mut sampled = ask("Write a title for the document.");
    sampled.sampling = Sampling { temperature: 0.9, top_k: 40, top_p: 0.95 };
    sampled.seed = 1234;
    requests.push(sampled);
    let mut schema = ask("Give the first word and the number of words as JSON.");
    schema.constraint = Some(Constraint::Schema(serde_json::json!({
        "type": "object", "properties": {"first": {"type": "string", "maxLength": 12}, "count": {"type": "integer"}},
        "required": ["first", "count"], "additionalProperties": false})));
    schema.max_new_tokens = 60;
    requests.push(schema);
    let mut regex = ask("Answer yes or no: is it long?");
    regex.constraint = Some(Constraint::Regex("(yes|no), [a-z ]{1,20}".into()));
    requests.push(regex);
    requests.push(ask("Which word comes first?"));
    let query = "Which document talks about copper in the harbor?";
    requests.extend((0..6).map(|d| rerank::judgement(query, &text(200 + d, 40 + 10 * d as usize))));
    requests
}

/// Runs `requests` through the model's active set, all admitted at once (8 at a time: the rest
/// wait in order), to their ends; answers in request order.
fn run_together(model: &mut GenerationService, requests: &[GenerateRequest]) -> Vec<Generation> {
    let mut results: Vec<Option<Generation>> = vec![None; requests.len()];
    let mut next = 0;
    while results.iter().any(Option::is_none) {
        while next < requests.len() {
            match model.admit(next as u64, &requests[next]).unwrap() {
                Admission::Started => next += 1,
                Admission::Later => break,
            }
        }
        for (id, advance) in model.step() {
            if let Advance::Done(result) = advance {
                results[id as usize] = Some(result.unwrap().generation);
            }
        }
    }
    results.into_iter().map(Option::unwrap).collect()
}

fn run_alone(model: &mut GenerationService, requests: &[GenerateRequest]) -> Vec<(Generation, usize)> {
    requests
        .iter()
        .map(|r| {
            let result = model.generate(r, &mut |_| true).unwrap();
            (result.generation, result.prefix_tokens)
        })
        .collect()
}

fn assert_same(label: &str, expected: &[Generation], got: &[Generation]) {
    for (i, (e, g)) in expected.iter().zip(got).enumerate() {
        assert_eq!(e, g, "{label}: request {i} changed with the prefix cache");
    }
}

fn prefix_stat(model: &GenerationService, pick: fn(&steadytext::engine::prefix::PrefixStats) -> u64) -> u64 {
    pick(&model.prefix_stats().expect("a generation model"))
}

#[test]
fn conversations_and_shared_prompts_give_the_same_bytes_with_the_prefix_cache() {
    use std::sync::atomic::Ordering::Relaxed;
    let folder = fused();
    // The reference: no prefix cache, one thread, one request at a time. The conversation is
    // played turn by turn (each turn's answer goes into the next turn's history).
    let mut reference = load(&folder, 1, 0);
    assert!(matches!(reference.prefix_state(), PrefixState::Off(r) if r.contains("prefix_mb = 0")));
    let mut answers: Vec<String> = Vec::new();
    let mut conversation = Vec::new();
    let mut expected = Vec::new();
    for n in 0..8 {
        let request = turn(n, &answers, 470);
        let (generation, reused) = run_alone(&mut reference, std::slice::from_ref(&request)).remove(0);
        assert_eq!(reused, 0);
        answers.push(generation.text.clone());
        conversation.push(request);
        expected.push(generation);
    }
    let longest = expected.last().unwrap().prompt_tokens;
    assert!(longest > 4000, "the history reached only {longest} tokens");
    let shared = shared_prompt_requests();
    expected.extend(run_alone(&mut reference, &shared).into_iter().map(|(g, _)| g));
    drop(reference);
    let all: Vec<GenerateRequest> = conversation.iter().chain(&shared).cloned().collect();

    // Alone, one thread: every turn after the first takes the previous turn's prompt from the cache.
    let mut cached = load(&folder, 1, 512);
    assert_eq!(cached.prefix_state(), PrefixState::On, "the fused model passes the prefix-reuse probe");
    let got = run_alone(&mut cached, &all);
    for n in 1..8 {
        let previous = got[n - 1].0.prompt_tokens;
        let whole_calls = boundary_at_or_below(previous);
        assert!(got[n].1 >= whole_calls, "turn {n} reused {} of the previous prompt's {previous} tokens", got[n].1);
    }
    let repeat = got[14].0.prompt_tokens;
    let back_off = got[14].1;
    assert!(
        back_off >= boundary_at_or_below(repeat - 2) && back_off <= repeat - 2,
        "an exact repeat backs off to a boundary: {back_off} of {repeat}"
    );
    assert!(got[9..15].iter().all(|(_, reused)| *reused > 250), "requests sharing the system prompt reuse it");
    assert!(got[16..].iter().all(|(_, reused)| *reused > 50), "rerank judgements share the instructions and query");
    assert_same("alone, 1 thread", &expected, &got.into_iter().map(|(g, _)| g).collect::<Vec<_>>());
    assert!(prefix_stat(&cached, |s| s.tokens_reused.load(Relaxed)) > 10_000);
    drop(cached);

    // Eight at a time, two threads (every turn of the conversation at once: its answers are known).
    let mut together = load(&folder, 2, 512);
    assert_same("8 at a time, 2 threads", &expected, &run_together(&mut together, &all));
    assert!(prefix_stat(&together, |s| s.hits.load(Relaxed)) >= 10);
    drop(together);

    // A budget of 40 MiB (about 900 positions): blocks are evicted all along.
    let mut tiny = load(&folder, 2, 40);
    assert_same("8 at a time, 40 MiB", &expected, &run_together(&mut tiny, &all));
    assert!(prefix_stat(&tiny, |s| s.evictions.load(Relaxed)) > 0, "the tiny budget evicted nothing");
    assert!(prefix_stat(&tiny, |s| s.bytes.load(Relaxed)) <= 40 << 20);
    assert!(prefix_stat(&tiny, |s| s.hits.load(Relaxed)) > 0);
}

#[test]
fn the_shared_hugging_face_layout_model_gives_the_same_bytes_with_the_prefix_cache() {
    let folder = common::models_dir().join("SmolLM2-135M-Instruct");
    let mut answers = Vec::new();
    let mut conversation = Vec::new();
    let mut reference = load(&folder, 1, 0);
    let mut expected = Vec::new();
    for n in 0..4 {
        let request = turn(n, &answers, 120);
        let (generation, _) = run_alone(&mut reference, std::slice::from_ref(&request)).remove(0);
        answers.push(generation.text.clone());
        conversation.push(request);
        expected.push(generation);
    }
    drop(reference);
    let mut cached = load(&folder, 2, 512);
    assert_eq!(cached.prefix_state(), PrefixState::On, "the shared model passes the prefix-reuse probe");
    let got = run_alone(&mut cached, &conversation);
    assert!(got[3].1 > 300, "turn 4 reused only {} tokens", got[3].1);
    assert_same("shared model", &expected, &got.into_iter().map(|(g, _)| g).collect::<Vec<_>>());
}

#[test]
fn a_one_token_chunk_after_a_cached_prefix_is_caught() {
    let config = common::config(2);
    let (_, generator) = steadytext::engine::load_generator(&config, fused().to_str().unwrap()).unwrap();
    let mut generator = generator.with_prefix_cache(64 << 20).unwrap();
    // The probe holds at several thousand tokens (chunks of 128 cut after a cached prefix), and
    // fails when a 1-token chunk follows the prefix.
    assert_eq!(generator.probe_prefix_reuse(3000, ReuseRule::EXACT).unwrap(), None);
    let loose = ReuseRule { min_prefill: 1, aligned: false };
    let broken = generator.probe_prefix_reuse(100, loose).unwrap().expect("a 1-token chunk changes the bits");
    assert!(broken.contains("other logits") || broken.contains("another KV"), "{broken}");
    // The same through generations: an exact repeat with the rule kept gives the same logprobs;
    // with lookups leaving one token off a boundary it does not.
    let mut request = turn(0, &[], 60);
    request.logprobs = Some(LogprobsRequest { top: 5, follow: Vec::new() });
    let first = generator.generate(&request).unwrap();
    assert_eq!(generator.generate(&request).unwrap(), first);
    // The loose rule keeps the partial last call too, so the next repeat takes all but one token.
    generator.prefix_cache_mut().unwrap().set_rule(loose);
    generator.generate(&request).unwrap();
    assert_ne!(generator.generate(&request).unwrap(), first, "the broken rule went unnoticed");
}
