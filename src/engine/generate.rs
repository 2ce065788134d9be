//! Text generation: chat template, tokenization, decoding with a KV cache, streaming of valid
//! UTF-8 pieces, stop strings.

use std::sync::{Arc, Mutex, PoisonError};

use tokenizers::Tokenizer;

use crate::engine::backend::{BatchDecode, DecoderBackend, Step};
use crate::engine::constraint::{Compiler, Guide};
use crate::engine::logprobs::{LogSoftmax, StepLogprobs};
use crate::engine::prefix::{self, Boundaries, PrefixCache, PrefixState, PrefixStats, ReuseRule};
use crate::engine::sampler;
use crate::engine::template::ChatTemplate;
use crate::engine::tools::{CallSyntax, ToolChoice};
use crate::error::{Error, Result};

pub use crate::engine::types::{ChatMessage, FinishReason, GenerateRequest, Generation, CHAT_ROLES, MAX_STOP_STRINGS};

/// Tokens of the prefix-reuse probe run at load (see [`prefix::probe_prefix_reuse`]): past the
/// first prefill boundary (64), so that a prefix is reused.
const PREFIX_PROBE_TOKENS: usize = 100;

/// A generator: one decoder backend with its tokenizer, template and end tokens.
pub struct Generator<B: DecoderBackend> {
    backend: B,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    eos: Vec<u32>,
    model: String,
    constraints: Option<Compiler>,
    /// Where prompts are cut into prefill calls, with the prefix cache or without.
    boundaries: Boundaries,
    /// Cached prompt-prefix KV (None: off, see `prefix_stats`).
    prefix: Option<PrefixCache>,
    prefix_stats: Arc<PrefixStats>,
}

impl<B: DecoderBackend> Generator<B> {
    /// Puts the parts together; `eos` must not be empty.
    pub fn new(backend: B, tokenizer: Tokenizer, template: ChatTemplate, eos: Vec<u32>, model: &str) -> Result<Self> {
        if eos.is_empty() {
            return Err(Error::model(model, "no eos_token_id in config.json or generation_config.json"));
        }
        let prefix_stats = Arc::new(PrefixStats::default());
        prefix::disable(&prefix_stats, "not enabled".into());
        let boundaries = Boundaries::new(eos.clone(), newline_tokens(&tokenizer));
        Ok(Generator {
            backend,
            tokenizer,
            template,
            eos,
            model: model.to_string(),
            constraints: None,
            boundaries,
            prefix: None,
            prefix_stats,
        })
    }

    /// Lets requests carry a constraint, compiled against the tokenizer in `tokenizer_json`.
    pub fn with_constraints(mut self, tokenizer_json: std::path::PathBuf) -> Self {
        self.constraints = Some(Compiler::new(tokenizer_json, self.eos.clone()));
        self
    }

    /// Turns the prefix cache on with a budget of `bytes` (0: off), if the model passes the
    /// prefix-reuse probe; else it stays off, and [`Generator::prefix_stats`] says why.
    pub fn with_prefix_cache(mut self, bytes: usize) -> Result<Self> {
        let stats = Arc::new(PrefixStats::default());
        let off = if bytes == 0 {
            Some("turned off ([cache] prefix_mb = 0)".to_string())
        } else {
            match self.probe_prefix_reuse(PREFIX_PROBE_TOKENS, ReuseRule::EXACT) {
                Ok(None) => None,
                Ok(Some(reason)) => Some(reason),
                Err(e) => Some(format!("the prefix-reuse probe could not run: {e}")),
            }
        };
        match off {
            None => {
                self.prefix =
                    Some(PrefixCache::new(self.backend.kv_rows(), bytes, stats.clone(), self.boundaries.clone()))
            }
            Some(reason) => prefix::disable(&stats, reason),
        }
        self.prefix_stats = stats;
        Ok(self)
    }

    /// Runs the prefix-reuse probe ([`prefix::probe_prefix_reuse`]) on a `tokens`-token prompt,
    /// with the prefix `rule` gives: `None` when reuse changed no bit.
    pub fn probe_prefix_reuse(&mut self, tokens: usize, rule: ReuseRule) -> Result<Option<String>> {
        prefix::probe_prefix_reuse(&mut self.backend, &self.boundaries, tokens, rule)
    }

    /// The prefix cache, when on.
    #[doc(hidden)]
    pub fn prefix_cache_mut(&mut self) -> Option<&mut PrefixCache> {
        self.prefix.as_mut()
    }

    /// The prefix cache's state and counters.
    pub fn prefix_stats(&self) -> &Arc<PrefixStats> {
        &self.prefix_stats
    }

    /// Whether the prefix cache serves (else why not).
    pub fn prefix_state(&self) -> PrefixState {
        self.prefix_stats.state()
    }

    /// Bytes one position of one sequence takes in the backend's KV cache.
    pub fn kv_bytes_per_position(&self) -> usize {
        self.backend.kv_bytes_per_position()
    }

    /// How the backend runs the decode steps of several sequences.
    pub fn batching(&self) -> BatchDecode {
        self.backend.batching()
    }

    /// Renders (unless raw) and tokenizes the request's prompt or conversation.
    pub fn prompt_ids(&self, request: &GenerateRequest) -> Result<Vec<u32>> {
        prompt_ids(&self.model, &self.template, &self.tokenizer, request)
    }

    /// Starts a generation: a sequence to [`Generator::advance`] until it is finished.
    /// The request must have passed [`GenerateRequest::validate`] (the protocol edge does it).
    pub fn start(&self, request: &GenerateRequest) -> Result<Sequence<B::State>> {
        let prompt = self.prompt_ids(request)?;
        let context = self.backend.context_length();
        if prompt.len() >= context {
            return Err(Error::InvalidRequest(format!(
                "the prompt is {} tokens after templating; model {} holds at most {} (prompt plus output): shorten the prompt",
                prompt.len(),
                self.model,
                context
            )));
        }
        let mut guide = match (&request.constraint, &self.constraints) {
            (None, _) => None,
            (Some(c), Some(compiler)) => Some(compiler.compile(c)?),
            (Some(_), None) => {
                return Err(Error::InvalidRequest(format!("model {} cannot constrain its output", self.model)))
            }
        };
        let calls = match &request.tools {
            None => None,
            Some(tools) => {
                let syntax = self.template.call_syntax(&self.model)?;
                match (&tools.choice, &self.constraints) {
                    (ToolChoice::None, _) => None,
                    (choice, Some(compiler)) => {
                        // Compiled now even when it waits for the model to open a call: a
                        // schema that does not compile is refused before any model work.
                        let compiled = compiler.compile_tools(&syntax.grammar(tools, ""))?;
                        let waiting = *choice == ToolChoice::Auto;
                        if !waiting {
                            guide = Some(compiled);
                        }
                        Some(CallWatch {
                            syntax,
                            waiting,
                            bytes: Vec::new(),
                            starts: Vec::new(),
                            opened_at: 0,
                            last_close: None,
                            longest: 0,
                        })
                    }
                    (_, None) => {
                        return Err(Error::InvalidRequest(format!(
                            "model {} cannot constrain its output, so it cannot hold tool calls to their schemas",
                            self.model
                        )))
                    }
                }
            }
        };
        let follow = match &request.logprobs {
            Some(l) => l.follow_ids(&self.tokenizer)?,
            None => Vec::new(),
        };
        Ok(Sequence {
            logprobs: request.logprobs.as_ref().map(|_| Vec::new()),
            follow,
            guide,
            calls,
            failure: None,
            request: request.clone(),
            state: self.backend.new_state(),
            pending_input: prompt.clone(),
            prompt,
            fed: 0,
            prefix_tokens: 0,
            looked_up: false,
            ids: Vec::new(),
            detok: Detokenizer::default(),
            held: String::new(),
            text: String::new(),
            finish: None,
        })
    }

    /// Runs one model call for each of `sequences` (none finished): the next prompt chunk of
    /// those still prefilling, the next token of the others (the backend may run those decode
    /// steps as one call; a sequence's result never depends on the others). Returns the text each
    /// released, in order (often empty).
    pub fn advance(&mut self, sequences: &mut [&mut Sequence<B::State>]) -> Result<Vec<String>> {
        for s in sequences.iter_mut().filter(|s| !s.looked_up) {
            self.take_prefix(s);
        }
        // Prompt calls end at the prefill boundaries (see `engine::prefix`), whatever was cached.
        let takes: Vec<usize> = sequences
            .iter()
            .map(|s| {
                if s.fed < s.prompt.len() {
                    self.boundaries.chunk_len(&s.prompt, s.fed)
                } else {
                    s.pending_input.len()
                }
            })
            .collect();
        let mut steps: Vec<Step<'_, B::State>> = sequences
            .iter_mut()
            .zip(&takes)
            .map(|(s, &take)| Step { state: &mut s.state, tokens: &s.pending_input[..take] })
            .collect();
        let logits = self.backend.forward(&mut steps)?;
        drop(steps);
        if logits.len() != sequences.len() {
            return Err(Error::model(&self.model, "backend returned logits for another number of sequences"));
        }
        for (s, &take) in sequences.iter_mut().zip(&takes) {
            if s.fed < s.prompt.len() {
                self.keep_prefix(s, take);
            }
        }
        // Each sequence's token is chosen on the backend's threads (masks and sampling are a
        // row's own work: the same token whichever thread chooses it), then the rest in order.
        let calls: Vec<Mutex<Called<'_, B::State>>> = sequences
            .iter_mut()
            .zip(takes)
            .zip(logits)
            .map(|((s, take), logits)| Mutex::new(Called { sequence: s, take, logits, choice: None }))
            .collect();
        let choose_one = |i: usize| {
            let mut guard = calls[i].lock().unwrap_or_else(PoisonError::into_inner);
            let call = &mut *guard;
            call.choice = Some(choose(call.sequence, call.take, std::mem::take(&mut call.logits)));
        };
        match self.backend.threads() {
            Some(threads) => threads.run(calls.len(), &choose_one),
            None => (0..calls.len()).for_each(choose_one),
        }
        calls
            .into_iter()
            .map(|call| {
                let call = call.into_inner().unwrap_or_else(PoisonError::into_inner);
                self.after_choice(call.sequence, call.choice.expect("every sequence was chosen"))
            })
            .collect()
    }

    /// Before a sequence's first call: loads the longest cached prefix of its prompt (leaving
    /// [`prefix::MIN_PREFILL`] tokens or more to prefill, ending at a prefill boundary).
    fn take_prefix(&mut self, s: &mut Sequence<B::State>) {
        s.looked_up = true;
        let Some(cache) = &mut self.prefix else { return };
        let hit = cache.lookup(&s.prompt);
        if hit.tokens == 0 {
            return;
        }
        match self.backend.load_kv(&mut s.state, &hit.pieces) {
            Ok(()) => {
                s.fed = hit.tokens;
                s.prefix_tokens = hit.tokens;
                s.pending_input.drain(..hit.tokens);
            }
            // The sequence is still empty: it prefills its whole prompt instead.
            Err(e) => tracing::warn!(model = %self.model, error = %e, "a cached prompt prefix could not be loaded"),
        }
    }

    /// After a prefill call of `take` tokens: records them as fed, and their KV in the prefix
    /// cache when the call ran from a boundary to the next (a partial last call is not the call a
    /// longer prompt makes there).
    fn keep_prefix(&mut self, s: &mut Sequence<B::State>, take: usize) {
        let start = s.fed;
        s.fed += take;
        let Some(cache) = &mut self.prefix else { return };
        if cache.rule().aligned && s.fed != self.boundaries.next(&s.prompt, start) {
            return;
        }
        match self.backend.read_kv(&s.state, start..s.fed) {
            Ok(kv) => cache.insert(&s.prompt[..s.fed], start, kv),
            Err(e) => tracing::warn!(model = %self.model, error = %e, "a prompt chunk's KV could not be cached"),
        }
    }

    /// A sequence's part after its token was chosen (see [`choose`]).
    fn after_choice(&self, s: &mut Sequence<B::State>, choice: Choice) -> Result<String> {
        let (token, logits, raw) = match choice {
            Choice::Prompt => return Ok(String::new()),
            Choice::Failed(message) => return Ok(message),
            Choice::Token { token, logits, raw } => (token?, logits, raw),
        };
        if self.eos.contains(&token) {
            s.finish = Some(FinishReason::Eos);
            return s.release_rest(&self.tokenizer);
        }
        if let Some(Err(e)) = s.guide.as_mut().map(|g| g.consume(token)) {
            return Ok(s.fail(e));
        }
        let token = match self.watch_for_call(s, token, &logits) {
            Ok(token) => token,
            Err(e) => return Ok(s.fail(e)),
        };
        if let (Some(raw), Some(request), Some(steps)) = (raw, &s.request.logprobs, &mut s.logprobs) {
            steps.push(LogSoftmax::new(&raw).step(&self.tokenizer, request, &s.follow, token)?);
        }
        s.ids.push(token);
        s.pending_input = vec![token];
        let mut out = String::new();
        if let Some(piece) = s.detok.next(&self.tokenizer, &s.ids)? {
            out = s.push_text(&piece);
        }
        if s.finish.is_none() {
            if s.guide.as_ref().is_some_and(Guide::is_stopped) || s.calls_end_here() {
                s.finish = Some(FinishReason::Stop);
            } else if s.ids.len() >= s.request.max_new_tokens {
                s.finish = Some(FinishReason::Length);
            } else if s.prompt.len() + s.ids.len() >= self.backend.context_length() {
                s.finish = Some(FinishReason::Context);
            }
            if s.finish.is_some() {
                out.push_str(&s.release_rest(&self.tokenizer)?);
            }
        }
        Ok(out)
    }

    /// With tool choice `auto`, until the model opens a call: whether `token`, chosen from
    /// `logits` for the next position, completes the call syntax's opening; then the tools'
    /// grammar holds the rest of the answer, fed from the token where the opening began (with the
    /// text of that token before it). When `token` also carries bytes after the opening that no
    /// call can have (a token `></` that closes `<tool_call` and goes on), the grammar chooses
    /// this position's token again from the same logits, as the sampler would have under it.
    /// Returns the token to take. Everything is a function of the logits and the tokens so far.
    fn watch_for_call(
        &self,
        s: &mut Sequence<B::State>,
        token: u32,
        logits: &[f32],
    ) -> std::result::Result<u32, String> {
        let (Some(watch), Some(compiler), Some(tools)) = (&mut s.calls, &self.constraints, &s.request.tools) else {
            return Ok(token);
        };
        if !watch.waiting {
            return Ok(token);
        }
        watch.starts.push(watch.bytes.len());
        let piece = compiler.token_bytes(token).map_err(|e| e.to_string())?;
        let opening = watch.syntax.opening().as_bytes();
        let from = watch.bytes.len().saturating_sub(opening.len() - 1);
        watch.bytes.extend_from_slice(&piece);
        let Some(at) = watch.bytes[from..].windows(opening.len()).position(|w| w == opening).map(|i| i + from) else {
            return Ok(token);
        };
        // Token `first` (of the answer's tokens, this one being the last) holds the opening's start.
        let first = watch.starts.iter().rposition(|&start| start <= at).expect("the first token starts at 0");
        let before = std::str::from_utf8(&watch.bytes[watch.starts[first]..at]).map_err(|_| {
            "the model opened a tool call inside a character; it cannot be held to the tools".to_string()
        })?;
        let grammar = watch.syntax.grammar(tools, before);
        let held = || -> std::result::Result<Guide, String> {
            let mut guide = compiler.compile_tools(&grammar).map_err(|e| e.to_string())?;
            for &id in &s.ids[first.min(s.ids.len())..] {
                guide.consume(id)?;
            }
            Ok(guide)
        };
        let mut guide = held()?;
        let token = match guide.consume(token) {
            Ok(()) => token,
            Err(_) => {
                guide = held()?;
                let mut masked = logits.to_vec();
                guide.mask(&mut masked)?;
                let again = sampler::select(&masked, &s.request.sampling, s.request.seed, s.ids.len() as u64)
                    .map_err(|e| e.to_string())?;
                guide.consume(again)?;
                again
            }
        };
        let watch = s.calls.as_mut().expect("watched above");
        watch.waiting = false;
        watch.opened_at = first;
        watch.bytes = Vec::new();
        watch.starts = Vec::new();
        s.guide = Some(guide);
        Ok(token)
    }

    /// Starts a generation as a stream of text pieces (one sequence alone).
    pub fn stream(&mut self, request: &GenerateRequest) -> Result<GenerationStream<'_, B>> {
        let sequence = self.start(request)?;
        Ok(GenerationStream { generator: self, sequence, failed: false })
    }

    /// Runs a whole generation.
    pub fn generate(&mut self, request: &GenerateRequest) -> Result<Generation> {
        let mut stream = self.stream(request)?;
        for piece in stream.by_ref() {
            piece?;
        }
        stream.finish()
    }
}

/// The ids of `tokenizer`'s tokens whose text ends with a newline (where a chat turn's header
/// ends, see [`Boundaries`]).
fn newline_tokens(tokenizer: &Tokenizer) -> Vec<u32> {
    let ids = 0..tokenizer.get_vocab_size(true) as u32;
    ids.filter(|&id| tokenizer.decode(&[id], false).is_ok_and(|text| text.ends_with('\n'))).collect()
}

/// Turns a growing list of token ids into text pieces that are always whole UTF-8 characters
/// (byte-level BPE can split one character over several tokens).
#[derive(Default)]
struct Detokenizer {
    prefix_offset: usize,
    read_offset: usize,
}

impl Detokenizer {
    fn decode(tokenizer: &Tokenizer, ids: &[u32]) -> Result<String> {
        tokenizer.decode(ids, true).map_err(|e| Error::engine("decoder", format!("cannot decode tokens: {e}")))
    }

    /// The new text that `ids` (all ids so far) completes, if any.
    fn next(&mut self, tokenizer: &Tokenizer, ids: &[u32]) -> Result<Option<String>> {
        let prefix = Self::decode(tokenizer, &ids[self.prefix_offset..self.read_offset])?;
        let full = Self::decode(tokenizer, &ids[self.prefix_offset..])?;
        if full.len() <= prefix.len() || full.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        if full.starts_with(&prefix) {
            self.prefix_offset = self.read_offset;
            self.read_offset = ids.len();
            return Ok(Some(full[prefix.len()..].to_string()));
        }
        // The text already sent no longer begins the window's text: a byte-fallback decoder
        // (SentencePiece-style vocabularies) turns a whole run of byte tokens into replacement
        // characters once a later byte makes the run invalid. What was sent stands; the new
        // tokens are decoded on their own (they begin with that byte token, so no leading space
        // is stripped).
        if self.prefix_offset < self.read_offset {
            self.prefix_offset = self.read_offset;
            return self.next(tokenizer, ids);
        }
        Ok(None)
    }

    /// Whatever is left undecided at the end (possibly with replacement characters).
    fn flush(&mut self, tokenizer: &Tokenizer, ids: &[u32]) -> Result<Option<String>> {
        if self.read_offset >= ids.len() {
            return Ok(None);
        }
        let prefix = Self::decode(tokenizer, &ids[self.prefix_offset..self.read_offset])?;
        let full = Self::decode(tokenizer, &ids[self.prefix_offset..])?;
        let rest = match full.strip_prefix(&prefix) {
            Some(rest) => rest.to_string(),
            // As in `next`: the sent text stands, the rest is decoded on its own.
            None => Self::decode(tokenizer, &ids[self.read_offset..])?,
        };
        self.read_offset = ids.len();
        Ok(Some(rest).filter(|s| !s.is_empty()))
    }
}

/// A request's prompt or conversation rendered by `template` (unless raw) and tokenized; `think`
/// refused when the template of `model` has no thinking switch.
pub(crate) fn prompt_ids(
    model: &str,
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
    request: &GenerateRequest,
) -> Result<Vec<u32>> {
    let think = request.think;
    template.check_thinking(model, think)?;
    let text = if request.raw {
        request.prompt.clone()
    } else if request.messages.is_empty() && request.tools.is_none() {
        template.render_user(&request.prompt, think)?
    } else if request.messages.is_empty() {
        template.render(&[ChatMessage::new("user", request.prompt.as_str())], request.tools.as_ref(), think)?
    } else {
        template.render(&request.messages, request.tools.as_ref(), think)?
    };
    let encoding =
        tokenizer.encode(text, false).map_err(|e| Error::InvalidRequest(format!("cannot tokenize the prompt: {e}")))?;
    Ok(encoding.get_ids().to_vec())
}

/// Length of the longest suffix of `text` that is a proper prefix of some stop string.
fn held_back_len(text: &str, stops: &[String]) -> usize {
    let mut best = 0;
    for stop in stops {
        for (i, _) in stop.char_indices().skip(1) {
            if i > best && text.ends_with(&stop[..i]) {
                best = i;
            }
        }
    }
    best
}

/// A generation's tool calls: its model's call syntax and, until a call opens (choice `auto`),
/// the bytes of the tokens generated so far (where each starts), to find the opening in.
struct CallWatch {
    syntax: CallSyntax,
    waiting: bool,
    bytes: Vec<u8>,
    starts: Vec<usize>,
    /// Generated tokens before the first call.
    opened_at: usize,
    /// Generated tokens when the last call closed.
    last_close: Option<usize>,
    /// Tokens of the longest call so far.
    longest: usize,
}

/// A sequence after a model call that consumed `take` of its pending tokens and gave `logits`,
/// and its [`Choice`] once made.
struct Called<'a, S> {
    sequence: &'a mut Sequence<S>,
    take: usize,
    logits: Vec<f32>,
    choice: Option<Choice>,
}

/// What a model call gave a sequence, before the rest of its step.
enum Choice {
    /// More of its prompt to feed: the call's logits are not needed.
    Prompt,
    /// Its constraint failed (the message shown so far: none).
    Failed(String),
    /// The next token, from `logits` (masked by its constraint); `raw` the logits before the
    /// mask, when it reports log-probabilities.
    Token { token: Result<u32>, logits: Vec<f32>, raw: Option<Vec<f32>> },
}

/// A sequence's choice after a model call that consumed `take` of its pending tokens: its
/// constraint's mask and the sampler, a function of its own logits, request and step.
fn choose<S>(s: &mut Sequence<S>, take: usize, mut logits: Vec<f32>) -> Choice {
    if take < s.pending_input.len() {
        s.pending_input.drain(..take);
        return Choice::Prompt;
    }
    // Log-probabilities come from the raw logits, before the constraint's mask.
    let raw = s.logprobs.is_some().then(|| logits.clone());
    if let Some(guide) = &mut s.guide {
        if let Err(e) = guide.mask(&mut logits) {
            return Choice::Failed(s.fail(e));
        }
    }
    let token = sampler::select(&logits, &s.request.sampling, s.request.seed, s.ids.len() as u64);
    Choice::Token { token, logits, raw }
}

/// One generation in progress: its request, KV state and text so far. Advanced by
/// [`Generator::advance`], alone or with others.
pub struct Sequence<S> {
    request: GenerateRequest,
    state: S,
    /// Tokens to feed next: the rest of the prompt, then the last sampled token.
    pending_input: Vec<u32>,
    /// The prompt's tokens (the prefix cache's key).
    prompt: Vec<u32>,
    /// Prompt tokens in its KV cache (taken from the prefix cache or prefilled).
    fed: usize,
    /// Prompt tokens taken from the prefix cache.
    prefix_tokens: usize,
    /// Whether the prefix cache was asked (before its first call).
    looked_up: bool,
    ids: Vec<u32>,
    detok: Detokenizer,
    held: String,
    text: String,
    finish: Option<FinishReason>,
    /// The constraint in progress (a tool call's grammar too).
    guide: Option<Guide>,
    /// Tool calling: the call syntax, and whether a call was opened yet.
    calls: Option<CallWatch>,
    /// Why it failed on its own (its constraint), ending it; the others of its batch go on.
    failure: Option<String>,
    /// Log-probabilities so far, when the request asks for them.
    logprobs: Option<Vec<StepLogprobs>>,
    /// Token ids whose log-probabilities every step reports.
    follow: Vec<u32>,
}

impl<S> Sequence<S> {
    /// Whether it has ended (end token, length, context or a stop string).
    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }

    /// Whether prompt tokens are still to be fed (its next call is a prompt chunk).
    pub fn is_prefilling(&self) -> bool {
        self.ids.is_empty() && !self.pending_input.is_empty() && self.finish.is_none()
    }

    /// Tokens of its prompt (after the template).
    pub fn prompt_tokens(&self) -> usize {
        self.prompt.len()
    }

    /// Prompt tokens whose KV came from the prefix cache.
    pub fn prefix_tokens(&self) -> usize {
        self.prefix_tokens
    }

    /// Most positions its KV cache may reach: the prompt plus every token it may generate.
    pub fn max_positions(&self) -> usize {
        self.prompt.len() + self.request.max_new_tokens
    }

    /// The finished generation; an error if it was not run to its end.
    pub fn finish(mut self) -> Result<Generation> {
        let finish_reason = self.finish.ok_or(Error::Cancelled)?;
        if let Some(e) = self.failure {
            return Err(Error::InvalidRequest(e));
        }
        if let Some(guide) = &mut self.guide {
            if !guide.is_accepting() {
                let why = match finish_reason {
                    FinishReason::Length => format!("max_new_tokens ({}) ran out", self.request.max_new_tokens),
                    FinishReason::Context => "the model's context filled up".into(),
                    FinishReason::Stop => "a stop string cut it".into(),
                    FinishReason::Eos => "the model ended it".into(),
                    FinishReason::ToolCalls => "its calls ended".into(),
                };
                let calling = self.calls.as_ref().is_some_and(|c| !c.waiting);
                let kind =
                    if calling { "tool call" } else { self.request.constraint.as_ref().map_or("", |c| c.kind()) };
                let open = match (kind, crate::engine::constraint::open_json_path(&self.text)) {
                    ("schema", Some(path)) => format!(" ({path} never closed)"),
                    _ => String::new(),
                };
                return Err(Error::OutputIncomplete(format!(
                    "{why} before the output matched the {kind} constraint{open} (finish_reason: {}); raise \
                     max_new_tokens or tighten the constraint. The output so far: {:?}",
                    serde_json::to_value(finish_reason)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    self.text
                )));
            }
        }
        let mut generation = Generation {
            text: self.text,
            token_ids: self.ids,
            prompt_tokens: self.prompt.len(),
            finish_reason,
            logprobs: self.logprobs,
            tool_calls: Vec::new(),
        };
        if let Some(CallWatch { syntax, waiting: false, .. }) = self.calls {
            generation.read_tool_calls(syntax);
        }
        Ok(generation)
    }

    /// Whether the answer ends after the tool call that just closed: when it repeats an earlier
    /// call of the answer, or when what is left of `max_new_tokens` could not hold another call
    /// as long as the longest so far (so a further call is never begun only to be cut short).
    fn calls_end_here(&mut self) -> bool {
        let Some(watch) = self.calls.as_mut().filter(|w| !w.waiting) else { return false };
        let text = format!("{}{}", self.text, self.held);
        // A call closed where the grammar could end: the closing tag written inside a call's
        // string argument is not the call's end.
        if !watch.syntax.ends_with_call(&text) || !self.guide.as_mut().is_some_and(Guide::is_accepting) {
            return false;
        }
        let written = self.ids.len();
        watch.longest = watch.longest.max(written - watch.last_close.unwrap_or(watch.opened_at));
        watch.last_close = Some(written);
        watch.syntax.ends_with_repeat(&text) || self.request.max_new_tokens - written < watch.longest
    }

    /// Ends it with `error` (its own failure); nothing more is released.
    fn fail(&mut self, error: String) -> String {
        self.failure = Some(error);
        self.finish = Some(FinishReason::Stop);
        String::new()
    }

    /// Adds decoded text, applying stop strings; returns what may be shown now.
    fn push_text(&mut self, piece: &str) -> String {
        self.held.push_str(piece);
        let stops = &self.request.stop;
        if let Some(pos) = stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.held.truncate(pos);
            self.finish = Some(FinishReason::Stop);
            return self.take_held(self.held.len());
        }
        let keep = held_back_len(&self.held, stops);
        self.take_held(self.held.len() - keep)
    }

    fn take_held(&mut self, upto: usize) -> String {
        let out: String = self.held.drain(..upto).collect();
        self.text.push_str(&out);
        out
    }

    /// At the end: flush the detokenizer and any text held back for stop strings.
    fn release_rest(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        let mut out = String::new();
        if let Some(tail) = self.detok.flush(tokenizer, &self.ids)? {
            let finish = self.finish;
            out = self.push_text(&tail);
            if self.finish != Some(FinishReason::Stop) {
                self.finish = finish;
            }
        }
        if self.finish != Some(FinishReason::Stop) {
            out.push_str(&self.take_held(self.held.len()));
        }
        Ok(out)
    }
}

/// A generation run alone; iterate it for text pieces (one per model call, empty when a call
/// released no text), then call [`GenerationStream::finish`].
pub struct GenerationStream<'g, B: DecoderBackend> {
    generator: &'g mut Generator<B>,
    sequence: Sequence<B::State>,
    failed: bool,
}

impl<B: DecoderBackend> GenerationStream<'_, B> {
    /// The finished generation; an error if the stream was not run to its end.
    pub fn finish(self) -> Result<Generation> {
        self.sequence.finish()
    }
}

impl<B: DecoderBackend> Iterator for GenerationStream<'_, B> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        if self.sequence.is_finished() || self.failed {
            return None;
        }
        let step = self.generator.advance(&mut [&mut self.sequence]).map(|mut pieces| pieces.pop().unwrap_or_default());
        self.failed = step.is_err();
        Some(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::sampler::Sampling;

    #[test]
    fn holds_back_partial_stop_strings() {
        let stops = vec!["<END>".to_string()];
        assert_eq!(held_back_len("hello <E", &stops), 2);
        assert_eq!(held_back_len("hello", &stops), 0);
        assert_eq!(held_back_len("a<EN", &stops), 3);
    }

    /// The end-of-sequence token of [`byte_tokenizer`].
    const EOS: u32 = 256;

    /// A byte-level tokenizer whose token `b` is the byte `b` (GPT-2's byte-to-character map),
    /// plus `<eos>` = 256: one character may take several tokens, as with real BPE models.
    fn byte_tokenizer() -> Tokenizer {
        let mut bytes: Vec<u32> =
            ('!' as u32..='~' as u32).chain('¡' as u32..='¬' as u32).chain('®' as u32..='ÿ' as u32).collect();
        let mut chars = bytes.clone();
        for b in 0..256 {
            if !bytes.contains(&b) {
                bytes.push(b);
                chars.push(256 + chars.len() as u32 - 188);
            }
        }
        let vocab: serde_json::Map<String, serde_json::Value> = bytes
            .iter()
            .zip(&chars)
            .map(|(b, c)| (char::from_u32(*c).unwrap().to_string(), serde_json::json!(b)))
            .collect();
        let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        let spec = serde_json::json!({
            "version": "1.0",
            "added_tokens": [{"id": EOS, "content": "<eos>", "single_word": false, "lstrip": false, "rstrip": false,
                              "normalized": false, "special": true}],
            "pre_tokenizer": byte_level,
            "decoder": byte_level,
            "model": {"type": "BPE", "vocab": vocab, "merges": []},
        });
        Tokenizer::from_bytes(serde_json::to_vec(&spec).unwrap()).unwrap()
    }

    /// A decoder that puts all probability on the next token of a script.
    struct Scripted {
        script: Vec<u32>,
        context: usize,
    }

    /// Per sequence: tokens fed so far, and the prompt's length.
    #[derive(Default)]
    struct Fed {
        total: usize,
        prompt: Option<usize>,
    }

    impl DecoderBackend for Scripted {
        type State = Fed;

        fn new_state(&self) -> Fed {
            Fed::default()
        }

        fn forward(&mut self, batch: &mut [Step<'_, Fed>]) -> Result<Vec<Vec<f32>>> {
            Ok(batch
                .iter_mut()
                .map(|step| {
                    step.state.total += step.tokens.len();
                    let prompt = *step.state.prompt.get_or_insert(step.tokens.len());
                    let next = self.script.get(step.state.total - prompt).copied().unwrap_or(EOS);
                    let mut logits = vec![0.0; EOS as usize + 1];
                    logits[next as usize] = 1.0;
                    logits
                })
                .collect())
        }

        fn context_length(&self) -> usize {
            self.context
        }
    }

    fn generator(text: &str, then_eos: bool, context: usize) -> Generator<Scripted> {
        let mut script: Vec<u32> = text.bytes().map(u32::from).collect();
        if !then_eos {
            script.extend(std::iter::repeat_n(u32::from(b'.'), 1000));
        }
        Generator::new(Scripted { script, context }, byte_tokenizer(), ChatTemplate::verbatim(), vec![EOS], "scripted")
            .unwrap()
    }

    fn run(g: &mut Generator<Scripted>, max_new_tokens: usize, stop: &[&str]) -> (Vec<String>, Generation) {
        let request = GenerateRequest {
            prompt: "prompt".into(),
            messages: Vec::new(),
            raw: false,
            think: false,
            seed: 0,
            max_new_tokens,
            stop: stop.iter().map(|s| s.to_string()).collect(),
            sampling: Sampling::default(),
            constraint: None,
            logprobs: None,
            tools: None,
        };
        let mut stream = g.stream(&request).unwrap();
        let pieces: Vec<String> = stream.by_ref().map(|p| p.unwrap()).filter(|p| !p.is_empty()).collect();
        (pieces, stream.finish().unwrap())
    }

    #[test]
    fn pieces_are_whole_characters_and_add_up_to_the_text() {
        let text = "héllo wörld, 日本 🎉!";
        let (pieces, generation) = run(&mut generator(text, true, 4096), 100, &[]);
        assert_eq!(generation.text, text);
        assert_eq!(pieces.concat(), text);
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
        assert_eq!(generation.finish_reason, FinishReason::Eos);
        assert_eq!(generation.token_ids.len(), text.len(), "one token per byte, the end token excluded");
    }

    #[test]
    fn stop_strings_cut_the_text_even_across_tokens() {
        let (pieces, generation) = run(&mut generator("hello <END> more", true, 4096), 100, &["<END>", "zz"]);
        assert_eq!(generation.text, "hello ");
        assert_eq!(pieces.concat(), "hello ");
        assert_eq!(generation.finish_reason, FinishReason::Stop);
        // A partial stop string at the very end is released, not swallowed.
        let (_, generation) = run(&mut generator("ends with <EN", true, 4096), 100, &["<END>"]);
        assert_eq!((generation.text.as_str(), generation.finish_reason), ("ends with <EN", FinishReason::Eos));
    }

    #[test]
    fn length_and_context_end_a_generation() {
        let (_, generation) = run(&mut generator("abc", false, 4096), 5, &[]);
        assert_eq!((generation.text.as_str(), generation.finish_reason), ("abc..", FinishReason::Length));
        // "prompt" is 6 tokens; a context of 10 leaves room for 4.
        let (_, generation) = run(&mut generator("abcdefgh", false, 10), 100, &[]);
        assert_eq!((generation.text.as_str(), generation.finish_reason), ("abcd", FinishReason::Context));
    }

    #[test]
    fn a_prompt_that_fills_the_context_is_refused() {
        let mut g = generator("x", true, 6);
        let request = GenerateRequest {
            prompt: "prompt".into(),
            messages: Vec::new(),
            raw: false,
            think: false,
            seed: 0,
            max_new_tokens: 4,
            stop: vec![],
            sampling: Sampling::default(),
            constraint: None,
            logprobs: None,
            tools: None,
        };
        assert!(matches!(g.stream(&request), Err(Error::InvalidRequest(m)) if m.contains("shorten the prompt")));
    }
}
