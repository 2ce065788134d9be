//! The engine's request and answer vocabulary: what to generate (a conversation or a prompt and
//! how to decode it) and what came out. The chat template, the generator, the cache and the
//! protocol all speak it; it depends on nothing but the constraint, sampling and logprobs types.

use serde::{Deserialize, Serialize};

use crate::engine::constraint::Constraint;
use crate::engine::logprobs::{LogprobsRequest, StepLogprobs};
use crate::engine::sampler::Sampling;
use crate::engine::tools::{CallSyntax, ToolCall, ToolChoice, ToolUse};
use crate::error::{Error, Result};

/// Most stop strings one request may carry.
pub const MAX_STOP_STRINGS: usize = 16;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text of the turn (of a `tool` turn: the call's output).
    pub content: String,
    /// An assistant turn's tool calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// A `tool` turn: the id of the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A turn of `role` saying `content`.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into(), tool_calls: Vec::new(), tool_call_id: None }
    }

    /// Bytes of text it carries (role, content, calls), for the request size limits.
    pub fn text_len(&self) -> usize {
        let calls: usize = self.tool_calls.iter().map(|c| c.id.len() + c.name.len() + c.arguments.len()).sum();
        self.role.len() + self.content.len() + calls + self.tool_call_id.as_ref().map_or(0, String::len)
    }
}

/// Roles a chat message may have.
pub const CHAT_ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// What to generate. Every field is part of the answer's identity (fields at their default are
/// left out of the serialized form, so adding one keeps the keys of older requests).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// The user prompt (the chat template wraps it); empty when `messages` is given.
    pub prompt: String,
    /// A whole conversation for the chat template, instead of `prompt`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<ChatMessage>,
    /// Use `prompt` verbatim, without the chat template (a plain completion).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub raw: bool,
    /// Let a model whose chat template has a thinking switch (`enable_thinking`, Qwen3's) think
    /// before it answers; off by default (the template is rendered with `enable_thinking` false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub think: bool,
    /// Seed; greedy decoding ignores it, sampling is keyed by it.
    pub seed: u64,
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// Generation stops before the first occurrence of any of these strings.
    pub stop: Vec<String>,
    /// Sampling parameters (greedy by default).
    pub sampling: Sampling,
    /// What the output must match (structured output), if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraint: Option<Constraint>,
    /// Log-probabilities to report with each generated token, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<LogprobsRequest>,
    /// Tools the model may call, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<ToolUse>,
}

impl GenerateRequest {
    /// Checks the request's own limits.
    pub fn validate(&self) -> Result<()> {
        if self.max_new_tokens == 0 {
            return Err(Error::InvalidRequest("max_new_tokens must be at least 1".into()));
        }
        if self.stop.len() > MAX_STOP_STRINGS {
            return Err(Error::InvalidRequest(format!("at most {MAX_STOP_STRINGS} stop strings")));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(Error::InvalidRequest("stop strings must not be empty".into()));
        }
        if self.raw && self.think {
            return Err(Error::InvalidRequest(
                "think switches the chat template's thinking on, and raw prompts skip the template: drop one".into(),
            ));
        }
        if !self.messages.is_empty() && (!self.prompt.is_empty() || self.raw) {
            return Err(Error::InvalidRequest(
                "give either prompt or messages, not both (messages are never raw)".into(),
            ));
        }
        if let Some(m) = self.messages.iter().find(|m| !CHAT_ROLES.contains(&m.role.as_str())) {
            return Err(Error::InvalidRequest(format!(
                "message role {:?} is not one of {}",
                m.role,
                CHAT_ROLES.join(", ")
            )));
        }
        if let Some(c) = &self.constraint {
            c.validate()?;
        }
        if let Some(m) = self.messages.iter().find(|m| !m.tool_calls.is_empty() && m.role != "assistant") {
            return Err(Error::InvalidRequest(format!("a {} message cannot carry tool calls", m.role)));
        }
        if let Some(tools) = &self.tools {
            tools.validate()?;
            if self.raw {
                return Err(Error::InvalidRequest(
                    "tools need the chat template: a raw prompt cannot offer them".into(),
                ));
            }
            if let (Some(c), false) = (&self.constraint, tools.choice == ToolChoice::None) {
                return Err(Error::InvalidRequest(format!(
                    "a {} constraint (response format) with tool calls is not supported: leave one out, or set \
                     tool_choice to none",
                    c.kind()
                )));
            }
        }
        if let Some(l) = &self.logprobs {
            l.validate()?;
        }
        self.sampling.validate()
    }
}

impl Generation {
    /// Reads the tool calls the text ends with (written in `syntax`) into `tool_calls`, ending
    /// it with [`FinishReason::ToolCalls`] when it holds any.
    pub fn read_tool_calls(&mut self, syntax: CallSyntax) {
        if let Some((_, calls)) = syntax.parse(&self.text, self.prompt_tokens, &self.token_ids) {
            if !calls.is_empty() {
                self.tool_calls = calls;
                self.finish_reason = FinishReason::ToolCalls;
            }
        }
    }

    /// The text before its tool calls (all of it when it has none).
    pub fn content(&self) -> &str {
        match self.tool_calls.is_empty() {
            true => &self.text,
            false => CallSyntax::of_answer(&self.text)
                .and_then(|s| self.text.find(s.opening()))
                .map_or(&self.text, |at| self.text[..at].trim_end()),
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// `max_new_tokens` was reached.
    Length,
    /// A stop string was found.
    Stop,
    /// The model's context window is full.
    Context,
    /// The answer ends with tool calls.
    ToolCalls,
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// The generated text (without the end token or stop string).
    pub text: String,
    /// Generated token ids, the end token excluded.
    pub token_ids: Vec<u32>,
    /// Tokens in the templated prompt.
    pub prompt_tokens: usize,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// One entry per generated token (as `token_ids`), when the request asked for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<StepLogprobs>>,
    /// The tool calls the answer ends with (`text` holds them as the model wrote them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}
