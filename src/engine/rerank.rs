//! Reranking with a generation model (SteadyText's method): each document is judged on its own by
//! one chat prompt that asks whether it answers the query, and its score is the probability the
//! model gives "yes" against "no" for its first answer token. One generation per document keeps a
//! score independent of the other documents of a request (a decoder whose attention leaks padding
//! would change with batch neighbours), and makes each one an ordinary cached generation: its
//! request, hence its cache key, holds the query, the document, the prompt (so its version) and
//! the model digest. The query closes the system turn, so that all of a query's judgements share
//! that whole turn and the user turn's header, which end on a prefill boundary (see
//! `engine::prefix`): the prefix cache gives each judgement after the first the instructions and
//! the query, and it prefills the document and the assistant's header only.

use crate::engine::constraint::Constraint;
use crate::engine::generate::{ChatMessage, GenerateRequest, Generation};
use crate::engine::kernels::exp::logistic;
use crate::engine::kernels::int4_matmul::Isa;
use crate::engine::kernels::ln::log_sum_exp;
use crate::engine::logprobs::LogprobsRequest;
use crate::engine::sampler::Sampling;
use crate::error::{Error, Result};

/// The version of the prompt below; change it with the prompt.
pub const PROMPT_VERSION: &str = "yes-no-v2";

/// The instructions that open the system turn of every judgement.
pub const INSTRUCTIONS: &str = "You judge search results. Answer \"yes\" if the document answers the query or is \
     about what the query asks, and \"no\" if it is about something else. Answer with one word: yes or no.";

/// Tokens counted as "yes", then as "no" (the first token of each).
const YES: [&str; 2] = ["yes", "Yes"];
const NO: [&str; 2] = ["no", "No"];

/// Tokens the answer may take: enough for "yes" or "no" even when a tokenizer spells them in
/// pieces.
const ANSWER_TOKENS: usize = 4;

/// The system turn for `query`.
pub fn system_prompt(query: &str) -> String {
    format!("{INSTRUCTIONS}\nQuery: {query}")
}

/// The user turn for `document`.
pub fn user_prompt(document: &str) -> String {
    format!("Document: {document}\nDoes the document answer the query?")
}

/// The generation that judges `document` for `query`: greedy, the answer held to "yes" or "no"
/// (so the end token cannot come first), with the log-probabilities of both spellings.
pub fn judgement(query: &str, document: &str) -> GenerateRequest {
    GenerateRequest {
        prompt: String::new(),
        messages: vec![
            ChatMessage::new("system", system_prompt(query)),
            ChatMessage::new("user", user_prompt(document)),
        ],
        raw: false,
        think: false,
        seed: 0,
        max_new_tokens: ANSWER_TOKENS,
        stop: Vec::new(),
        sampling: Sampling::default(),
        constraint: Some(Constraint::Choices(vec!["yes".into(), "no".into()])),
        logprobs: Some(LogprobsRequest { top: 0, follow: YES.iter().chain(&NO).map(|s| s.to_string()).collect() }),
        tools: None,
    }
}

/// The score of a finished [`judgement`]: P(yes) / (P(yes) + P(no)) at its first answer token,
/// from the raw logits (before the answer was held to yes or no).
pub fn score(generation: &Generation) -> Result<f32> {
    let followed = generation
        .logprobs
        .as_ref()
        .and_then(|steps| steps.first())
        .map(|step| &step.followed)
        .filter(|f| f.len() == YES.len() + NO.len())
        .ok_or_else(|| Error::engine("rerank", "the judgement has no log-probabilities"))?;
    let log_sum = |lps: &[f64]| log_sum_exp(lps.iter().copied(), Isa::Portable);
    let (yes, no): (Vec<f64>, Vec<f64>) = (
        followed[..YES.len()].iter().map(|t| f64::from(t.logprob)).collect(),
        followed[YES.len()..].iter().map(|t| f64::from(t.logprob)).collect(),
    );
    // sigmoid(log P(yes) - log P(no)).
    let margin = log_sum(&yes) - log_sum(&no);
    Ok(logistic(margin) as f32)
}

/// Document indexes by score, best first (ties by input order).
pub fn order(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::generate::FinishReason;
    use crate::engine::logprobs::{StepLogprobs, TokenLogprob};

    fn judged(yes: f32, no: f32) -> Generation {
        let t = |logprob| TokenLogprob { token_id: 0, token: String::new(), logprob };
        Generation {
            text: "yes".into(),
            token_ids: vec![0],
            prompt_tokens: 1,
            finish_reason: FinishReason::Stop,
            logprobs: Some(vec![StepLogprobs {
                chosen: t(yes),
                top_logprobs: Vec::new(),
                followed: vec![t(yes), t(f32::NEG_INFINITY), t(no), t(f32::NEG_INFINITY)],
            }]),
            tool_calls: Vec::new(),
        }
    }

    #[test]
    fn the_score_is_yes_against_no() {
        assert_eq!(score(&judged(-1.0, -1.0)).unwrap(), 0.5);
        let likely = score(&judged((0.8f32).ln(), (0.1f32).ln())).unwrap();
        assert!((likely - 0.8 / 0.9).abs() < 1e-6, "{likely}");
        assert!(score(&Generation { logprobs: None, ..judged(0.0, 0.0) }).is_err());
        assert_eq!(order(&[0.2, 0.9, 0.2, 0.5]), vec![1, 3, 0, 2]);
    }

    #[test]
    fn the_judgement_names_query_document_and_prompt() {
        let a = judgement("q", "d");
        assert!(a.messages[0].content.ends_with("\nQuery: q"), "the query closes the system turn");
        assert!(a.messages[1].content.starts_with("Document: d\n"));
        assert_eq!(a.messages[0], judgement("q", "e").messages[0], "one query's judgements share the system turn");
        assert_ne!(a, judgement("q", "e"));
        a.validate().unwrap();
    }
}
