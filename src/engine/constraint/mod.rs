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

/// Keywords whose value is a map of subschemas.
const SCHEMA_MAPS: [&str; 5] = ["properties", "patternProperties", "$defs", "definitions", "dependentSchemas"];
/// Keywords whose value is a subschema (or, for `items`, a list of them).
const SCHEMA_VALUES: [&str; 12] = [
    "items",
    "additionalItems",
    "additionalProperties",
    "contains",
    "not",
    "if",
    "then",
    "else",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
    "prefixItems",
];
/// Keywords that combine an object schema with others: an object holding one is not closed (the
/// others may add properties).
const COMBINERS: [&str; 9] = [
    "allOf",
    "anyOf",
    "oneOf",
    "$ref",
    "$dynamicRef",
    "if",
    "dependentSchemas",
    "patternProperties",
    "unevaluatedProperties",
];

/// The largest integer JSON carries between programs without loss (RFC 8259, section 6: IEEE
/// 754 doubles hold integers up to 2^53 - 1 exactly).
const JSON_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// Bounds what a schema leaves unbounded where a small model would otherwise write until its
/// budget runs out, each a narrowing, so every answer stays valid against the schema as given,
/// and each undone by saying otherwise in the schema:
/// - an object that lists `properties` and says nothing of others is closed
///   (`additionalProperties: false`), as OpenAI's structured outputs do; objects combined with
///   others (`allOf`, `$ref` beside `properties`...) and the parts of an `allOf` are left open;
/// - an array of enum values without `maxItems` holds at most as many items as the enum has
///   values (a list without repeats could not be longer);
/// - an integer without bounds stays within JSON's interoperable range, +-(2^53 - 1).
fn bound_schema(schema: &mut serde_json::Value, partial: bool, level: usize) {
    let serde_json::Value::Object(map) = schema else { return };
    if level > MAX_CONSTRAINT_DEPTH {
        return;
    }
    let lists_properties = map.get("properties").is_some_and(|p| p.as_object().is_some_and(|p| !p.is_empty()));
    let combined = COMBINERS.iter().any(|k| map.contains_key(*k));
    if lists_properties && !partial && !combined && !map.contains_key("additionalProperties") {
        map.insert("additionalProperties".into(), serde_json::Value::Bool(false));
    }
    let enum_items = map.get("items").and_then(|i| i.get("enum")).and_then(|e| e.as_array()).map(Vec::len);
    if let Some(values) = enum_items.filter(|_| !map.contains_key("maxItems") && !map.contains_key("contains")) {
        map.insert("maxItems".into(), values.into());
    }
    if map.get("type").and_then(|t| t.as_str()) == Some("integer") {
        if !map.contains_key("maximum") && !map.contains_key("exclusiveMaximum") {
            map.insert("maximum".into(), JSON_SAFE_INTEGER.into());
        }
        if !map.contains_key("minimum") && !map.contains_key("exclusiveMinimum") {
            map.insert("minimum".into(), (-JSON_SAFE_INTEGER).into());
        }
    }
    for (key, value) in map.iter_mut() {
        match (key.as_str(), value) {
            (k, serde_json::Value::Object(children)) if SCHEMA_MAPS.contains(&k) => {
                children.values_mut().for_each(|c| bound_schema(c, false, level + 1))
            }
            ("allOf", serde_json::Value::Array(parts)) => {
                parts.iter_mut().for_each(|p| bound_schema(p, true, level + 1))
            }
            ("anyOf" | "oneOf", serde_json::Value::Array(branches)) => {
                branches.iter_mut().for_each(|b| bound_schema(b, lists_properties, level + 1))
            }
            (k, value) if SCHEMA_VALUES.contains(&k) => match value {
                serde_json::Value::Array(items) => items.iter_mut().for_each(|i| bound_schema(i, false, level + 1)),
                other => bound_schema(other, false, level + 1),
            },
            _ => {}
        }
    }
}

impl Constraint {
    /// A JSON Schema constraint, bounded where a small model would not stop (see
    /// [`bound_schema`]): the normalized form the cache keys, so a schema and its bounded
    /// spelling are one answer.
    pub fn schema(mut schema: serde_json::Value) -> Self {
        bound_schema(&mut schema, false, 0);
        Constraint::Schema(schema)
    }

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
        self.compile_grammar(constraint.grammar(), &format!("the {} constraint", constraint.kind()))
    }

    /// Compiles the Lark grammar of a request's tool calls (see `engine::tools`).
    pub fn compile_tools(&self, lark: &str) -> Result<Guide> {
        self.compile_grammar(TopLevelGrammar::from_lark(lark.to_string()), "a tool's parameter schema")
    }

    /// The bytes of token `id` (as the constraint engine reads them).
    pub fn token_bytes(&self, id: u32) -> Result<Vec<u8>> {
        Ok(self.factory()?.tok_env().tok_trie().decode(&[id]))
    }

    fn compile_grammar(&self, grammar: TopLevelGrammar, what: &str) -> Result<Guide> {
        let factory = self.factory()?;
        let refused = |e: &dyn std::fmt::Display| Error::InvalidRequest(format!("{what} does not compile: {e}"));
        let compiled = catch_unwind(AssertUnwindSafe(|| factory.create_parser(grammar)))
            .map_err(|panic| refused(&panic_message(&panic)))?;
        let matcher = Matcher::new(Ok(compiled.map_err(|e| refused(&e))?));
        if let Some(e) = matcher.get_error() {
            return Err(refused(&e));
        }
        Ok(Guide { matcher })
    }
}

/// Where a JSON text cut short was still open: the innermost open container or string, as a path
/// (`$.tags[2]`, `$.description`), or None when nothing was opened.
pub fn open_json_path(text: &str) -> Option<String> {
    enum Frame {
        Object { key: Option<String>, expecting_key: bool },
        Array { index: usize },
    }
    let mut stack: Vec<Frame> = Vec::new();
    let (mut in_string, mut escaped, mut string) = (false, false, String::new());
    for c in text.chars() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    in_string = false;
                    if let Some(Frame::Object { key, expecting_key: true }) = stack.last_mut() {
                        *key = Some(std::mem::take(&mut string));
                    }
                }
                (false, c) => string.push(c),
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                string.clear();
            }
            '{' => stack.push(Frame::Object { key: None, expecting_key: true }),
            '[' => stack.push(Frame::Array { index: 0 }),
            '}' | ']' => {
                stack.pop();
            }
            ':' => {
                if let Some(Frame::Object { expecting_key, .. }) = stack.last_mut() {
                    *expecting_key = false;
                }
            }
            ',' => match stack.last_mut() {
                Some(Frame::Object { expecting_key, .. }) => *expecting_key = true,
                Some(Frame::Array { index }) => *index += 1,
                None => {}
            },
            _ => {}
        }
    }
    if stack.is_empty() && !in_string {
        return None;
    }
    let mut path = String::from("$");
    for frame in &stack {
        match frame {
            Frame::Object { key: Some(key), expecting_key: false } => path.push_str(&format!(".{key}")),
            Frame::Object { .. } => {}
            Frame::Array { index } => path.push_str(&format!("[{index}]")),
        }
    }
    Some(path)
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
    fn the_open_part_of_a_cut_json_text_is_named() {
        assert_eq!(
            open_json_path(r#"{"tags": ["red", "blue"], "description": "I'm equipped with"#).as_deref(),
            Some("$.description")
        );
        assert_eq!(open_json_path(r#"{"tags": ["red", "blue", "#).as_deref(), Some("$.tags[2]"));
        assert_eq!(open_json_path(r#"{"a": {"b": [1, {"c": "x\"y"#).as_deref(), Some("$.a.b[1].c"));
        assert_eq!(open_json_path(r#"{"a": 1}"#), None);
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
        // Objects that list properties are closed; open ones by request, combined ones, and the
        // parts of an allOf are left as they are; const values are data, not schemas.
        let closed = Constraint::schema(serde_json::json!({
            "type": "object",
            "properties": {"tags": {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "integer"}}}},
                           "open": {"type": "object", "properties": {"a": {}}, "additionalProperties": true},
                           "both": {"allOf": [{"properties": {"x": {}}}, {"properties": {"y": {}}}]},
                           "fixed": {"const": {"properties": {"p": 1}}}},
            "$defs": {"d": {"properties": {"q": {}}}},
        }));
        let Constraint::Schema(s) = closed else { panic!() };
        assert_eq!(s["additionalProperties"], false);
        assert_eq!(s["properties"]["tags"]["items"]["additionalProperties"], false);
        assert_eq!(s["properties"]["open"]["additionalProperties"], true);
        assert!(s["properties"]["both"]["allOf"][0].get("additionalProperties").is_none());
        assert!(s["properties"]["fixed"]["const"].get("additionalProperties").is_none());
        assert_eq!(s["$defs"]["d"]["additionalProperties"], false);
        let Constraint::Schema(s) = Constraint::schema(serde_json::json!({"type": "object", "properties": {
            "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}},
            "long": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 9},
            "n": {"type": "integer"}, "m": {"type": "integer", "minimum": 0}}}))
        else {
            panic!()
        };
        assert_eq!(s["properties"]["tags"]["maxItems"], 3, "as many items as enum values");
        assert_eq!(s["properties"]["long"]["maxItems"], 9, "a bound given wins");
        assert_eq!(
            (s["properties"]["n"]["minimum"].as_i64(), s["properties"]["n"]["maximum"].as_i64()),
            (Some(-JSON_SAFE_INTEGER), Some(JSON_SAFE_INTEGER))
        );
        assert_eq!(
            (s["properties"]["m"]["minimum"].as_i64(), s["properties"]["m"]["maximum"].as_i64()),
            (Some(0), Some(JSON_SAFE_INTEGER))
        );
        assert_eq!(
            Constraint::schema(serde_json::json!({"type": "object"})),
            Constraint::Schema(serde_json::json!({"type": "object"})),
            "any object stays any object"
        );
        assert!(Constraint::Regex("a".repeat(MAX_CONSTRAINT_BYTES + 1)).validate().is_err());
    }
}
