//! Requests from the wire into the values the engine runs: defaults applied, limits checked, one
//! form per meaning (a single user turn is its prompt), before any model is looked up. One error
//! type, [`ValidationError`], one variant per rule (text-generation-inference's `validation.rs`
//! has this shape).

use crate::config::{Config, Limits};
use crate::engine::constraint::Constraint;
use crate::engine::generate::GenerateRequest;
use crate::engine::logprobs::LogprobsRequest;
use crate::engine::sampler::Sampling;
use crate::engine::tools::ToolUse;
use crate::engine::types::ChatMessage;
use crate::engine::{cross_encoder, embed, rerank};
pub use crate::error::ValidationError;
use crate::error::{Error, Result};
use crate::model::ModelInfo;
use crate::protocol::{DetokenizeParams, EmbedParams, EmbedResult, GenerateParams, RerankParams, TokenizeParams};

/// What requests are checked against and filled in with: the narrow part of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSettings {
    /// Sizes and counts.
    pub limits: Limits,
    /// The seed of a request that names none.
    pub default_seed: u64,
    /// `max_new_tokens` of a request that names none.
    pub max_new_tokens: usize,
    /// The configured cross-encoder (empty: rerank by the generation model's judgement).
    pub rerank_model: String,
}

impl From<&Config> for RequestSettings {
    fn from(config: &Config) -> Self {
        RequestSettings {
            limits: config.limits.clone(),
            default_seed: config.default_seed,
            max_new_tokens: config.max_new_tokens,
            rerank_model: config.rerank_model.clone(),
        }
    }
}

fn check_len(limits: &Limits, what: &'static str, len: usize) -> Result<(), ValidationError> {
    match len > limits.max_input_bytes {
        true => Err(ValidationError::TooLong { what, len, limit: limits.max_input_bytes }),
        false => Ok(()),
    }
}

/// `count` items of one request: at least one, at most `max_batch`.
fn check_batch(limits: &Limits, what: &'static str, count: usize) -> Result<(), ValidationError> {
    if count == 0 {
        return Err(ValidationError::Empty { what });
    }
    match count > limits.max_batch {
        true => Err(ValidationError::TooMany { what, count, limit: limits.max_batch }),
        false => Ok(()),
    }
}

/// The one constraint among `schema`, `regex`, `choices` and `grammar`, if any.
fn constraint(params: &GenerateParams) -> Result<Option<Constraint>, ValidationError> {
    let given = [
        ("schema", params.schema.is_some()),
        ("regex", params.regex.is_some()),
        ("choices", params.choices.is_some()),
        ("grammar", params.grammar.is_some()),
    ];
    let mut set = given.iter().filter(|(_, is_set)| *is_set).map(|(name, _)| *name);
    if let (Some(first), Some(second)) = (set.next(), set.next()) {
        return Err(ValidationError::TwoConstraints { first, second });
    }
    Ok(if let Some(schema) = &params.schema {
        Some(Constraint::schema(schema.clone()))
    } else if let Some(regex) = &params.regex {
        Some(Constraint::Regex(regex.clone()))
    } else if let Some(choices) = &params.choices {
        Some(Constraint::Choices(choices.clone()))
    } else {
        params.grammar.clone().map(Constraint::Grammar)
    })
}

/// The log-probabilities asked for, if any.
fn logprobs(params: &GenerateParams) -> Result<Option<LogprobsRequest>, ValidationError> {
    match (params.logprobs, params.top_logprobs) {
        (false, Some(_)) => Err(ValidationError::TopLogprobsAlone),
        (false, None) => Ok(None),
        (true, top) => Ok(Some(LogprobsRequest { top: top.unwrap_or(0), follow: Vec::new() })),
    }
}

/// A generation's params into the engine's request: defaults, limits, normal form.
pub fn generate(params: &GenerateParams, settings: &RequestSettings) -> Result<GenerateRequest> {
    let limits = &settings.limits;
    if params.prompt.is_empty() && params.messages.is_empty() {
        return Err(ValidationError::NoPrompt.into());
    }
    check_len(limits, "prompt", params.prompt.len())?;
    let conversation: usize = params.messages.iter().map(ChatMessage::text_len).sum();
    check_len(limits, "the messages", conversation)?;
    let max_new_tokens = params.max_new_tokens.unwrap_or(settings.max_new_tokens);
    if max_new_tokens > limits.max_new_tokens {
        return Err(ValidationError::TooManyNewTokens { asked: max_new_tokens, limit: limits.max_new_tokens }.into());
    }
    for s in &params.stop {
        check_len(limits, "stop string", s.len())?;
    }
    // A conversation of one user turn is that prompt (it renders the same): one cache entry.
    let (prompt, messages) = match params.messages.as_slice() {
        [only] if only.role == "user" && params.prompt.is_empty() => (only.content.clone(), Vec::new()),
        _ => (params.prompt.clone(), params.messages.clone()),
    };
    let request = GenerateRequest {
        prompt,
        messages,
        raw: params.raw,
        think: params.think,
        seed: params.seed.unwrap_or(settings.default_seed),
        max_new_tokens,
        stop: params.stop.clone(),
        sampling: Sampling {
            temperature: params.temperature.unwrap_or(0.0),
            top_k: params.top_k.unwrap_or(0),
            top_p: params.top_p.unwrap_or(0.0),
        },
        constraint: constraint(params)?,
        logprobs: logprobs(params)?,
        tools: tools(params)?,
    };
    request.validate()?;
    Ok(request)
}

/// The request's tools and how they may be used (None without tools).
fn tools(params: &GenerateParams) -> Result<Option<ToolUse>> {
    if params.tools.is_empty() {
        if params.tool_choice.is_some() || params.parallel_tool_calls.is_some() {
            return Err(Error::InvalidRequest("tool_choice and parallel_tool_calls need tools".into()));
        }
        return Ok(None);
    }
    Ok(Some(ToolUse {
        tools: params.tools.clone(),
        choice: params.tool_choice.clone().unwrap_or_default(),
        parallel: params.parallel_tool_calls.unwrap_or(true),
    }))
}

/// The engine's request for a generation's params under `config` (what the daemon and direct
/// mode run; for tests and tools that hold a whole configuration).
pub trait ToRequest {
    /// See [`generate`].
    fn to_request(&self, config: &Config) -> Result<GenerateRequest>;
}

impl ToRequest for GenerateParams {
    fn to_request(&self, config: &Config) -> Result<GenerateRequest> {
        generate(self, &RequestSettings::from(config))
    }
}

/// An embedding request that passed the limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidEmbed {
    texts: Vec<String>,
    /// The model named (None: the configured one).
    pub model: Option<String>,
    mode: Option<String>,
    dimensions: Option<usize>,
}

/// An embedding's params checked against the limits.
pub fn embed(params: &EmbedParams, limits: &Limits) -> Result<ValidEmbed> {
    check_batch(limits, "texts", params.texts.len())?;
    params.texts.iter().try_for_each(|t| check_len(limits, "text", t.len()))?;
    Ok(ValidEmbed {
        texts: params.texts.clone(),
        model: params.model.clone(),
        mode: params.mode.clone(),
        dimensions: params.dimensions,
    })
}

impl ValidEmbed {
    /// The texts as the model embeds them: each after the prompt of its mode (see
    /// [`embed::Prompts`]). The cache keys these, so every mode has its own entries.
    pub fn model_texts(&self, info: &ModelInfo) -> Result<Vec<String>> {
        let prompts = embed::Prompts::of(info)?;
        let prefix = prompts.prefix(&info.name, self.mode.as_deref())?;
        Ok(self.texts.iter().map(|t| format!("{prefix}{t}")).collect())
    }

    /// Applies `dimensions` to the vectors of a result.
    pub fn shape(&self, result: &mut EmbedResult) -> Result<()> {
        if let Some(n) = self.dimensions {
            for v in &mut result.embeddings {
                embed::truncate(v, n)?;
            }
        }
        Ok(())
    }
}

/// A rerank request that passed the limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidRerank {
    query: String,
    documents: Vec<String>,
    /// The generation model named (None: the configured one).
    pub model: Option<String>,
}

/// A rerank's params checked against the limits.
pub fn rerank(params: &RerankParams, limits: &Limits) -> Result<ValidRerank> {
    if params.query.trim().is_empty() {
        return Err(ValidationError::NoQuery.into());
    }
    if params.query.contains(cross_encoder::PAIR_SEPARATOR) {
        return Err(ValidationError::NulInQuery.into());
    }
    check_batch(limits, "documents", params.documents.len())?;
    check_len(limits, "query", params.query.len())?;
    params.documents.iter().try_for_each(|d| check_len(limits, "document", d.len()))?;
    Ok(ValidRerank { query: params.query.clone(), documents: params.documents.clone(), model: params.model.clone() })
}

/// A `tokenize` request: its text within the size limit.
pub fn tokenize(params: &TokenizeParams, limits: &Limits) -> Result<(), ValidationError> {
    check_len(limits, "text", params.text.len())
}

/// A `detokenize` request: no more ids than a text of the size limit could give.
pub fn detokenize(params: &DetokenizeParams, limits: &Limits) -> Result<(), ValidationError> {
    match params.tokens.len() > limits.max_input_bytes {
        true => {
            Err(ValidationError::TooMany { what: "tokens", count: params.tokens.len(), limit: limits.max_input_bytes })
        }
        false => Ok(()),
    }
}

impl ValidRerank {
    /// The configured cross-encoder `configured`, when this request goes to it: it names none
    /// and one is configured, or it names that one (by its configured name or folder name).
    pub fn cross_encoder<'a>(&'a self, configured: &'a str) -> Option<&'a str> {
        if configured.is_empty() {
            return None;
        }
        let folder = std::path::Path::new(configured).file_name().and_then(|n| n.to_str());
        match self.model.as_deref() {
            None => Some(configured),
            Some(m) if m == configured || Some(m) == folder => Some(configured),
            Some(_) => None,
        }
    }

    /// One judgement (a generation) per document, in order, for the generation model.
    pub fn judgements(&self) -> Vec<GenerateRequest> {
        self.documents.iter().map(|d| rerank::judgement(&self.query, d)).collect()
    }

    /// One pair text per document, in order, for a cross-encoder.
    pub fn pairs(&self) -> Vec<String> {
        self.documents.iter().map(|d| cross_encoder::pair_text(&self.query, d)).collect()
    }

    /// How many documents.
    pub fn len(&self) -> usize {
        self.documents.len()
    }

    /// Whether there are none (never, once valid).
    pub fn is_empty(&self) -> bool {
        self.documents.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::generate::ChatMessage;
    use crate::error::Error;

    #[test]
    fn limits_are_enforced() {
        let config = Config::default();
        let p = GenerateParams { prompt: "x".into(), max_new_tokens: Some(1_000_000), ..Default::default() };
        assert!(p.to_request(&config).is_err());
        let e = EmbedParams { texts: vec![String::new(); 1000], ..Default::default() };
        assert!(embed(&e, &config.limits).is_err());
        assert!(embed(&EmbedParams::default(), &config.limits).is_err());
    }

    #[test]
    fn conversations_are_checked_and_one_user_turn_is_its_prompt() {
        let config = Config::default();
        let turn = |role: &str, content: &str| ChatMessage::new(role, content);
        let one = GenerateParams { messages: vec![turn("user", "hi")], ..Default::default() };
        let plain = GenerateParams { prompt: "hi".into(), ..Default::default() };
        assert_eq!(one.to_request(&config).unwrap(), plain.to_request(&config).unwrap());
        let two =
            GenerateParams { messages: vec![turn("system", "be brief"), turn("user", "hi")], ..Default::default() };
        let request = two.to_request(&config).unwrap();
        assert_eq!((request.prompt.as_str(), request.messages.len()), ("", 2));
        assert_ne!(
            crate::cache::generation_key("d", &request),
            crate::cache::generation_key("d", &plain.to_request(&config).unwrap())
        );
        let bad_role =
            GenerateParams { messages: vec![turn("function", "x"), turn("user", "y")], ..Default::default() };
        assert!(bad_role.to_request(&config).unwrap_err().to_string().contains("role"));
        let both = GenerateParams { prompt: "p".into(), ..two.clone() };
        assert!(both.to_request(&config).unwrap_err().to_string().contains("not both"));
        assert!(GenerateParams::default().to_request(&config).unwrap_err().to_string().contains("prompt"));
        // raw is part of the answer's identity.
        let raw = GenerateParams { raw: true, ..plain.clone() }.to_request(&config).unwrap();
        assert_ne!(
            crate::cache::generation_key("d", &raw),
            crate::cache::generation_key("d", &plain.to_request(&config).unwrap())
        );
        // So is think; it means nothing to a raw prompt.
        let think = GenerateParams { think: true, ..plain.clone() }.to_request(&config).unwrap();
        assert_ne!(
            crate::cache::generation_key("d", &think),
            crate::cache::generation_key("d", &plain.to_request(&config).unwrap())
        );
        let err = GenerateParams { think: true, raw: true, ..plain.clone() }.to_request(&config).unwrap_err();
        assert!(err.to_string().contains("drop one"), "{err}");
    }

    #[test]
    fn defaults_come_from_config() {
        let config = Config { default_seed: 7, ..Default::default() };
        let r = GenerateParams { prompt: "x".into(), ..Default::default() }.to_request(&config).unwrap();
        assert_eq!((r.seed, r.max_new_tokens), (7, 512));
    }

    #[test]
    fn each_rule_has_its_own_error_with_the_words_clients_saw() {
        let limits = Limits { max_input_bytes: 4, max_new_tokens: 8, max_batch: 2 };
        let settings =
            RequestSettings { limits: limits.clone(), default_seed: 1, max_new_tokens: 4, rerank_model: String::new() };
        let refused = |p: GenerateParams| match generate(&p, &settings) {
            Err(Error::Validation(e)) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refused(GenerateParams { prompt: "12345".into(), ..Default::default() }),
            ValidationError::TooLong { what: "prompt", len: 5, limit: 4 }
        );
        let two = GenerateParams {
            prompt: "x".into(),
            regex: Some("a".into()),
            grammar: Some("b".into()),
            ..Default::default()
        };
        assert_eq!(refused(two).to_string(), "give one constraint, not both regex and grammar");
        let many = RerankParams { query: "q".into(), documents: vec!["a".into(); 3], model: None };
        assert!(matches!(rerank(&many, &limits), Err(Error::Validation(ValidationError::TooMany { count: 3, .. }))));
        let nul = RerankParams { query: "q\0".into(), documents: vec!["a".into()], model: None };
        assert!(matches!(rerank(&nul, &limits), Err(Error::Validation(ValidationError::NulInQuery))));
    }
}
