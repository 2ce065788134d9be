//! Structured output: a request's constraint (a JSON Schema, a regular expression, a list of
//! choices or a Lark grammar), compiled by llguidance (the structured-output engine of llama.cpp,
//! vLLM and SGLang) against the model's tokenizer into a matcher that, before each token is
//! chosen, masks every token that cannot continue a valid output. Greedy argmax and seeded
//! sampling then choose among the rest, so the answer is still a pure function of the request.

mod depth;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Most choices one request may list.
pub const MAX_CHOICES: usize = 256;

/// Most bytes of a constraint's text (schema, regex, grammar, choices together).
pub const MAX_CONSTRAINT_BYTES: usize = 64 * 1024;

pub use depth::MAX_DEPTH as MAX_CONSTRAINT_DEPTH;

/// Stack of every thread that compiles constraints or masks tokens with them (the generation
/// workers, direct mode's generation thread). Constraints nest at most [`MAX_CONSTRAINT_DEPTH`]
/// deep, 40 times less than what was measured to fit in it (see [`depth`]); only the pages a
/// thread touches take memory.
pub const STACK_BYTES: usize = 64 << 20;

/// What the output must match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Constraint {
    /// A JSON document valid against this JSON Schema.
    Schema(serde_json::Value),
    /// A string matching this regular expression (whole output).
    Regex(String),
    /// Exactly one of these strings.
    Choices(Vec<String>),
    /// A string of this Lark grammar (llguidance's dialect).
    Grammar(String),
}

impl Constraint {
    /// Checks sizes and nesting depth (compiling checks the rest).
    pub fn validate(&self) -> Result<()> {
        let bytes = match self {
            Constraint::Schema(s) => s.to_string().len(),
            Constraint::Regex(r) | Constraint::Grammar(r) => r.len(),
            Constraint::Choices(c) => c.iter().map(String::len).sum(),
        };
        if bytes > MAX_CONSTRAINT_BYTES {
            return Err(Error::InvalidRequest(format!(
                "the constraint is {bytes} bytes; at most {MAX_CONSTRAINT_BYTES} are accepted"
            )));
        }
        let (depth, counting) = match self {
            Constraint::Schema(s) => (depth::schema_depth(s), "$ref chains and nested subschemas"),
            Constraint::Grammar(g) => {
                (depth::grammar_depth(g), "chains of rules and terminals naming each other, and brackets")
            }
            Constraint::Regex(r) => {
                // A regex that matches no text at all would fail only after the prompt's model
                // work; regex-syntax knows it from the pattern alone (and bounds its nesting).
                let hir = regex_syntax::Parser::new()
                    .parse(r)
                    .map_err(|e| Error::InvalidRequest(format!("the regex {r:?} does not compile: {e}")))?;
                if hir.properties().minimum_len().is_none() {
                    return Err(Error::InvalidRequest(format!("the regex {r:?} matches no text at all")));
                }
                (Ok(0), "")
            }
            Constraint::Choices(c) => {
                if c.is_empty() || c.len() > MAX_CHOICES {
                    return Err(Error::InvalidRequest(format!("choices must list 1 to {MAX_CHOICES} strings")));
                }
                if c.iter().any(String::is_empty) {
                    return Err(Error::InvalidRequest("choices must not be empty strings".into()));
                }
                (Ok(0), "")
            }
        };
        if depth.is_err() {
            return Err(Error::InvalidRequest(format!(
                "the {} constraint nests more than {MAX_CONSTRAINT_DEPTH} levels deep (counting {counting}); \
                 flatten it",
                self.kind()
            )));
        }
        Ok(())
    }

    /// Its name in messages and requests.
    pub fn kind(&self) -> &'static str {
        match self {
            Constraint::Schema(_) => "schema",
            Constraint::Regex(_) => "regex",
            Constraint::Choices(_) => "choices",
            Constraint::Grammar(_) => "grammar",
        }
    }

    fn grammar(&self) -> TopLevelGrammar {
        match self {
            Constraint::Schema(schema) => {
                // No free whitespace (a small model can fill its whole budget with newlines
                // between tokens), one space after separators as `json.dumps` writes; a schema's
                // own `x-guidance` options win.
                let mut schema = schema.clone();
                if let Some(object) = schema.as_object_mut() {
                    object.entry("x-guidance").or_insert_with(|| {
                        serde_json::json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
                    });
                }
                TopLevelGrammar::from_json_schema(schema)
            }
            Constraint::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Constraint::Choices(choices) => {
                let alternatives: Vec<String> = choices.iter().map(|c| regex_syntax::escape(c)).collect();
                TopLevelGrammar::from_regex(&alternatives.join("|"))
            }
            Constraint::Grammar(lark) => TopLevelGrammar::from_lark(lark.clone()),
        }
    }
}

/// Compiles constraints for one model's tokenizer. The token trie is built on the first
/// constrained request (it takes a moment for a large vocabulary), then shared.
pub struct Compiler {
    tokenizer_json: PathBuf,
    eos: Vec<u32>,
    factory: OnceLock<std::result::Result<Arc<ParserFactory>, String>>,
}

impl Compiler {
    /// A compiler for the tokenizer in `tokenizer_json`, whose generations end with any of `eos`.
    pub fn new(tokenizer_json: PathBuf, eos: Vec<u32>) -> Self {
        Compiler { tokenizer_json, eos, factory: OnceLock::new() }
    }

    fn factory(&self) -> Result<Arc<ParserFactory>> {
        let built = self.factory.get_or_init(|| {
            let mut tokenizer = toktrie_hf_tokenizers::ByteTokenizer::from_file(&self.tokenizer_json)
                .map_err(|e| format!("cannot read {} for constraints: {e}", self.tokenizer_json.display()))?;
            let vocab = tokenizer.tokrx_info().vocab_size;
            let eos: Vec<u32> = self.eos.iter().copied().filter(|&t| t < vocab).collect();
            if eos.is_empty() {
                return Err("no end token of the model is in its tokenizer's vocabulary".to_string());
            }
            tokenizer.set_eos_tokens(&eos);
            let env = tokenizer.into_tok_env(None).map_err(|e| e.to_string())?;
            let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
            factory.quiet();
            Ok(Arc::new(factory))
        });
        built.clone().map_err(|e| Error::engine("constraints", e))
    }

    /// Compiles `constraint`; an invalid or unsupported one is a request error with the
    /// compiler's message.
    pub fn compile(&self, constraint: &Constraint) -> Result<Guide> {
        let factory = self.factory()?;
        let refused = |e: &dyn std::fmt::Display| {
            Error::InvalidRequest(format!("the {} constraint does not compile: {e}", constraint.kind()))
        };
        let compiled = catch_unwind(AssertUnwindSafe(|| factory.create_parser(constraint.grammar())))
            .map_err(|panic| refused(&panic_message(&panic)))?;
        let matcher = Matcher::new(Ok(compiled.map_err(|e| refused(&e))?));
        if let Some(e) = matcher.get_error() {
            return Err(refused(&e));
        }
        Ok(Guide { matcher })
    }
}

/// What a caught panic said (llguidance panicking on an input is that input's failure, not the
/// worker's).
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
    format!("the constraint engine failed on it ({})", text.unwrap_or_else(|| "no message".into()))
}

/// One sequence's constraint in progress.
pub struct Guide {
    matcher: Matcher,
}

impl Guide {
    fn failed(&self, what: &str, e: impl std::fmt::Display) -> String {
        let why = self.matcher.get_error().unwrap_or_else(|| e.to_string());
        if why.contains("NoExtension") {
            return "no token of this model can continue the answer: the constraint admits no text this model's \
                    tokens can spell"
                .into();
        }
        // llguidance appends its parser state; the first line says what happened.
        format!("the constraint failed while {what}: {}", why.lines().next().unwrap_or_default())
    }

    /// Sets the logit of every token the constraint forbids next to negative infinity.
    pub fn mask(&mut self, logits: &mut [f32]) -> std::result::Result<(), String> {
        let allowed = catch_unwind(AssertUnwindSafe(|| self.matcher.compute_mask()))
            .map_err(|panic| panic_message(&panic))?
            .map_err(|e| self.failed("computing the token mask", e))?;
        if allowed.is_zero() {
            return Err("the constraint allows no token here".into());
        }
        for (id, logit) in logits.iter_mut().enumerate() {
            if id >= allowed.len() || !allowed.is_allowed(id as u32) {
                *logit = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Advances past the chosen `token`.
    pub fn consume(&mut self, token: u32) -> std::result::Result<(), String> {
        catch_unwind(AssertUnwindSafe(|| self.matcher.consume_token(token)))
            .map_err(|panic| panic_message(&panic))?
            .map_err(|e| self.failed("taking a token", e))
    }

    /// Whether the output is complete and nothing may follow it.
    pub fn is_stopped(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// Whether the output so far is a complete match (it could end here).
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiler() -> Option<Compiler> {
        let dir = std::env::var("STEADYTEXT_MODEL_DIR").map(PathBuf::from).unwrap_or("../shared/models".into());
        let tokenizer = dir.join("SmolLM2-135M-Instruct/tokenizer.json");
        tokenizer.exists().then(|| Compiler::new(tokenizer, vec![2]))
    }

    /// Feeds the text's tokens through the guide, checking each against the mask.
    fn accepts(guide: &mut Guide, tokenizer: &tokenizers::Tokenizer, text: &str) -> bool {
        let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
        for id in ids {
            let mut logits = vec![0.0f32; 49152];
            if guide.mask(&mut logits).is_err() || logits[id as usize] == f32::NEG_INFINITY {
                return false;
            }
            guide.consume(id).unwrap();
        }
        guide.is_accepting()
    }

    #[test]
    fn masks_follow_the_constraint_and_bad_constraints_are_request_errors() {
        let Some(c) = compiler() else { panic!("the shared SmolLM2 tokenizer is missing (STEADYTEXT_MODEL_DIR)") };
        let dir = c.tokenizer_json.clone();
        let tokenizer = tokenizers::Tokenizer::from_file(&dir).unwrap();
        let choices = Constraint::Choices(vec!["yes".into(), "no".into()]);
        assert!(accepts(&mut c.compile(&choices).unwrap(), &tokenizer, "yes"));
        assert!(!accepts(&mut c.compile(&choices).unwrap(), &tokenizer, "maybe"));
        let schema = Constraint::Schema(serde_json::json!({
            "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
            "additionalProperties": false}));
        assert!(accepts(&mut c.compile(&schema).unwrap(), &tokenizer, r#"{"n": 12}"#));
        assert!(!accepts(&mut c.compile(&schema).unwrap(), &tokenizer, "{\n\"n\": 12}"), "no free whitespace");
        assert!(!accepts(&mut c.compile(&schema).unwrap(), &tokenizer, r#"{"n": "x"}"#));
        let mut guide = c.compile(&Constraint::Regex("[0-9]{3}".into())).unwrap();
        assert!(accepts(&mut guide, &tokenizer, "123") && guide.is_stopped(), "three digits and nothing more");
        for bad in [Constraint::Regex("(".into()), Constraint::Grammar("start: nothing_defined".into())] {
            match c.compile(&bad) {
                Err(Error::InvalidRequest(m)) => assert!(m.contains("does not compile"), "{m}"),
                other => panic!("{bad:?} compiled: {:?}", other.err()),
            }
        }
        assert!(Constraint::Choices(vec![]).validate().is_err());
        assert!(Constraint::Regex("a".repeat(MAX_CONSTRAINT_BYTES + 1)).validate().is_err());
    }
}
