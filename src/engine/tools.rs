//! Tool calling: the tools a request offers, how a model's chat template says a call (its call
//! syntax), the grammar that holds a call to an offered tool and that tool's parameter schema
//! while the model writes it, and the calls read back from the answer.
//!
//! With `tool_choice` `required` or a named tool the grammar holds from the first token. With
//! `auto` the answer is free text until the model writes the syntax's opening tag; from the token
//! that holds the tag the grammar holds (see `Generator`), so a text answer is never constrained
//! and a call is always valid. Everything is a function of the request and the generated tokens,
//! so a call is as deterministic (and cacheable) as any answer.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::engine::constraint::{Constraint, MAX_CONSTRAINT_BYTES};
use crate::error::{Error, Result};

/// Most tools one request may offer (OpenAI's own limit).
pub const MAX_TOOLS: usize = 128;

/// Most calls one answer may hold (with `parallel`): a small model can repeat a call until its
/// budget runs out; the grammar ends the answer after this many.
pub const MAX_CALLS: usize = 8;

/// Longest tool name (OpenAI's rule: letters, digits, `_` and `-`, at most 64).
pub const MAX_TOOL_NAME: usize = 64;

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    /// Its name (letters, digits, `_`, `-`; at most 64).
    pub name: String,
    /// What it does, for the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema of its arguments (an object); absent: no arguments.
    #[serde(default = "no_parameters")]
    pub parameters: Value,
}

fn no_parameters() -> Value {
    json!({"type": "object", "properties": {}})
}

/// Whether and which tools the model may call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model answers in text (the tools are still shown to it).
    None,
    /// Text, or calls once the model opens one (the default).
    #[default]
    Auto,
    /// One or more calls, from the first token.
    Required,
    /// A call of this tool, from the first token.
    Function(String),
}

/// The tools of a request and how they may be used. Part of the answer's identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolUse {
    /// The tools offered.
    pub tools: Vec<Tool>,
    /// Whether and which may be called.
    #[serde(default)]
    pub choice: ToolChoice,
    /// Whether an answer may hold more than one call.
    #[serde(default = "yes")]
    pub parallel: bool,
}

fn yes() -> bool {
    true
}

/// One call the model made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    /// Its id (a hash of the answer and its place in it: the same answer, the same ids).
    pub id: String,
    /// The tool called.
    pub name: String,
    /// Its arguments, a JSON object as text.
    pub arguments: String,
}

impl ToolUse {
    /// Checks names, choice and schemas (size, depth); compiling checks the rest.
    pub fn validate(&self) -> Result<()> {
        let invalid = |m: String| Err(Error::InvalidRequest(m));
        if self.tools.is_empty() {
            return invalid("tools must list at least one tool (or leave tools out)".into());
        }
        if self.tools.len() > MAX_TOOLS {
            return invalid(format!("{} tools offered; at most {MAX_TOOLS} are accepted", self.tools.len()));
        }
        let mut bytes = 0;
        for (i, tool) in self.tools.iter().enumerate() {
            let name_ok = !tool.name.is_empty()
                && tool.name.len() <= MAX_TOOL_NAME
                && tool.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !name_ok {
                return invalid(format!(
                    "tool name {:?} is not 1 to {MAX_TOOL_NAME} letters, digits, '_' or '-'",
                    tool.name
                ));
            }
            if self.tools[..i].iter().any(|t| t.name == tool.name) {
                return invalid(format!("tool {:?} is offered twice", tool.name));
            }
            if tool.parameters.get("type").and_then(Value::as_str) != Some("object") {
                return invalid(format!("the parameters of tool {:?} must be a JSON Schema of type object", tool.name));
            }
            Constraint::schema(tool.parameters.clone()).validate().map_err(|e| match e {
                Error::InvalidRequest(why) => {
                    Error::InvalidRequest(format!("the parameters of tool {:?}: {why}", tool.name))
                }
                other => other,
            })?;
            bytes += tool.parameters.to_string().len() + tool.description.as_ref().map_or(0, String::len);
        }
        if bytes > MAX_CONSTRAINT_BYTES {
            return invalid(format!(
                "the tools' schemas and descriptions are {bytes} bytes; at most {MAX_CONSTRAINT_BYTES} are accepted"
            ));
        }
        if let ToolChoice::Function(name) = &self.choice {
            if !self.tools.iter().any(|t| &t.name == name) {
                return invalid(format!("tool_choice names tool {name:?}, which the request does not offer"));
            }
        }
        Ok(())
    }

    /// The tools a call may name under the choice.
    fn callable(&self) -> impl Iterator<Item = &Tool> {
        self.tools.iter().filter(|t| match &self.choice {
            ToolChoice::Function(name) => &t.name == name,
            _ => true,
        })
    }

    /// The tools as chat templates take them (Hugging Face's convention, OpenAI's shape).
    pub fn template_tools(&self) -> Vec<Value> {
        self.tools
            .iter()
            .map(|t| {
                let mut function = json!({"name": t.name});
                if let Some(d) = &t.description {
                    function["description"] = d.clone().into();
                }
                function["parameters"] = t.parameters.clone();
                json!({"type": "function", "function": function})
            })
            .collect()
    }
}

/// How a chat template has the model write a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallSyntax {
    /// `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>` (Hermes style, as the
    /// templates of Qwen2.5 and Qwen3 ask for); several calls one after the other.
    Hermes,
    /// A bare JSON object `{"name": ..., "parameters": {...}}`, as the templates of Llama 3.1,
    /// 3.2 and 3.3 ask for custom tools ("Respond in the format {"name": function name,
    /// "parameters": dictionary of argument name and its value}"); one call per answer (those
    /// templates refuse an assistant turn with more).
    LlamaJson,
}

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
/// How a Llama 3.x call begins (its JSON object's first key).
const LLAMA_OPEN: &str = "{\"name\"";

impl CallSyntax {
    /// Every syntax steadytext knows.
    pub const ALL: [CallSyntax; 2] = [CallSyntax::Hermes, CallSyntax::LlamaJson];

    /// The syntax a chat template's source asks the model for, if steadytext knows it: Hermes
    /// tags, else Llama 3.x's JSON (the template writes a call's `"parameters": ` after its
    /// `{"name": `).
    pub fn of_template(source: &str) -> Option<Self> {
        if source.contains(HERMES_OPEN) {
            Some(CallSyntax::Hermes)
        } else if source.contains("{\"name\": ") && source.contains("\"parameters\": ") {
            Some(CallSyntax::LlamaJson)
        } else {
            None
        }
    }

    /// The text that opens a call.
    pub fn opening(self) -> &'static str {
        match self {
            CallSyntax::Hermes => HERMES_OPEN,
            CallSyntax::LlamaJson => LLAMA_OPEN,
        }
    }

    /// The text that closes a call written after another one may follow; None for a syntax of
    /// one call per answer (its grammar ends the answer).
    fn closing(self) -> Option<&'static str> {
        match self {
            CallSyntax::Hermes => Some(HERMES_CLOSE),
            CallSyntax::LlamaJson => None,
        }
    }

    /// The key of a call's arguments.
    fn arguments_key(self) -> &'static str {
        match self {
            CallSyntax::Hermes => "arguments",
            CallSyntax::LlamaJson => "parameters",
        }
    }

    /// A Lark grammar (llguidance's dialect) of an answer that is `before` (text the model
    /// already wrote in the token that opens the call; empty when calls hold from the start),
    /// then one call of a callable tool, or several with `parallel` where the syntax allows.
    /// Each call's arguments are held to its tool's schema, bounded as structured output's are
    /// (closed objects...).
    pub fn grammar(self, tools: &ToolUse, before: &str) -> String {
        let key = self.arguments_key();
        let branches: Vec<Value> = tools
            .callable()
            .map(|t| {
                let Constraint::Schema(arguments) = Constraint::schema(t.parameters.clone()) else {
                    unreachable!("Constraint::schema gives a schema")
                };
                json!({"type": "object", "properties": {"name": {"const": t.name}, key: arguments},
                       "required": ["name", key], "additionalProperties": false})
            })
            .collect();
        let call = json!({
            "x-guidance": {"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "},
            "anyOf": branches,
        });
        let lit = |s: &str| Value::from(s).to_string();
        let before = if before.is_empty() { String::new() } else { format!("{} ", lit(before)) };
        match self {
            CallSyntax::Hermes => {
                let more =
                    if tools.parallel { format!(r#" ("\n" call){{0,{}}}"#, MAX_CALLS - 1) } else { String::new() };
                format!(
                    "start: {before}call{more}\ncall: {open} \"\\n\" body \"\\n\" {close}\nbody: %json {call}\n",
                    open = lit(HERMES_OPEN),
                    close = lit(HERMES_CLOSE),
                )
            }
            CallSyntax::LlamaJson => format!("start: {before}call\ncall: %json {call}\n"),
        }
    }

    /// Where the first call starts and each whole call's (name, arguments) as written; None
    /// when the text holds no whole call or a call that does not read.
    fn calls(self, text: &str) -> Option<(usize, Vec<(String, String)>)> {
        let start = text.find(self.opening())?;
        let read = |json: &str| -> Option<(String, String)> {
            let call: Value = serde_json::Deserializer::from_str(json).into_iter::<Value>().next()?.ok()?;
            let (Some(name), Some(arguments)) = (call["name"].as_str(), call.get(self.arguments_key())) else {
                return None;
            };
            Some((name.to_string(), arguments.to_string()))
        };
        let mut calls = Vec::new();
        match self.closing() {
            Some(closing) => {
                let mut rest = &text[start..];
                while let Some(open) = rest.find(self.opening()) {
                    let after = &rest[open + self.opening().len()..];
                    let Some(close) = after.find(closing) else { break };
                    calls.push(read(after[..close].trim())?);
                    rest = &after[close + closing.len()..];
                }
            }
            None => calls.push(read(&text[start..])?),
        }
        (!calls.is_empty()).then_some((start, calls))
    }

    /// Whether the text ends with a whole call after which another may follow.
    pub fn ends_with_call(self, text: &str) -> bool {
        self.closing().is_some_and(|closing| text.trim_end().ends_with(closing))
    }

    /// Whether the text ends with a call that repeats an earlier one of the same answer (a
    /// small model can repeat its call until its budget runs out; the answer ends there).
    pub fn ends_with_repeat(self, text: &str) -> bool {
        if !self.ends_with_call(text) {
            return false;
        }
        match self.calls(text) {
            Some((_, calls)) => calls.split_last().is_some_and(|(last, earlier)| earlier.contains(last)),
            None => false,
        }
    }

    /// Splits an answer into its text before the first call and the calls it holds (a call
    /// repeating an earlier one, same tool and arguments, is that call); None when it holds no
    /// whole call. `prompt_tokens` and `token_ids` make the call ids (the same answer to the
    /// same prompt length, the same ids; another turn of a conversation, other ids).
    pub fn parse(self, text: &str, prompt_tokens: usize, token_ids: &[u32]) -> Option<(String, Vec<ToolCall>)> {
        let (start, written) = self.calls(text)?;
        let mut calls: Vec<ToolCall> = Vec::new();
        for (name, arguments) in written {
            if !calls.iter().any(|c| c.name == name && c.arguments == arguments) {
                let id = call_id(prompt_tokens, token_ids, calls.len());
                calls.push(ToolCall { id, name, arguments });
            }
        }
        Some((text[..start].trim_end().to_string(), calls))
    }

    /// The syntax of an answer's calls, known from an answer that holds calls (for answers read
    /// back from a cache snapshot): the first syntax whose whole call it holds.
    pub fn of_answer(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.calls(text).is_some())
    }
}

fn call_id(prompt_tokens: usize, token_ids: &[u32], index: usize) -> String {
    let mut hash = Sha256::new();
    hash.update((prompt_tokens as u64).to_le_bytes());
    token_ids.iter().for_each(|t| hash.update(t.to_le_bytes()));
    hash.update((index as u64).to_le_bytes());
    format!("call_{}", &hex::encode(hash.finalize())[..24])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> ToolUse {
        ToolUse {
            tools: vec![Tool {
                name: "get_weather".into(),
                description: Some("Weather in a city".into()),
                parameters: json!({"type": "object", "properties": {"city": {"type": "string"},
                                   "unit": {"enum": ["c", "f"]}}, "required": ["city"]}),
            }],
            choice: ToolChoice::Auto,
            parallel: false,
        }
    }

    #[test]
    fn tool_sets_are_checked() {
        assert!(weather().validate().is_ok());
        let mut bad = weather();
        bad.tools[0].name = "get weather".into();
        assert!(bad.validate().unwrap_err().to_string().contains("letters, digits"));
        let mut twice = weather();
        twice.tools.push(twice.tools[0].clone());
        assert!(twice.validate().unwrap_err().to_string().contains("twice"));
        let mut unnamed = weather();
        unnamed.choice = ToolChoice::Function("send_mail".into());
        assert!(unnamed.validate().unwrap_err().to_string().contains("send_mail"));
        let mut not_object = weather();
        not_object.tools[0].parameters = json!({"type": "string"});
        assert!(not_object.validate().unwrap_err().to_string().contains("type object"));
        let wire: ToolUse =
            serde_json::from_value(json!({"tools": [{"name": "f"}], "choice": {"function": "f"}})).unwrap();
        assert_eq!((wire.choice, wire.parallel), (ToolChoice::Function("f".into()), true));
        assert_eq!(wire.tools[0].parameters, no_parameters());
    }

    #[test]
    fn calls_are_read_back_with_stable_distinct_ids() {
        let text = "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\", \"unit\": \"c\"}}\n</tool_call>";
        let (content, calls) = CallSyntax::Hermes.parse(text, 40, &[1, 2, 3]).unwrap();
        assert_eq!(content, "Let me look.");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1].arguments, r#"{"city":"Rome","unit":"c"}"#, "arguments keep the model's order");
        assert_ne!(calls[0].id, calls[1].id);
        let (_, again) = CallSyntax::Hermes.parse(text, 40, &[1, 2, 3]).unwrap();
        assert_eq!(calls, again);
        let (_, next_turn) = CallSyntax::Hermes.parse(text, 41, &[1, 2, 3]).unwrap();
        assert!(!CallSyntax::Hermes.ends_with_repeat(text));
        let repeated = format!(
            "{text}\n<tool_call>\n{{\"name\": \"get_weather\", \"arguments\": {{\"city\": \"Paris\"}}}}\n</tool_call>"
        );
        assert!(CallSyntax::Hermes.ends_with_repeat(&repeated));
        assert_eq!(CallSyntax::Hermes.parse(&repeated, 40, &[1, 2, 3]).unwrap().1, calls, "a repeat is the same call");
        assert_ne!(calls[0].id, next_turn[0].id, "another prompt, other ids");
        assert!(CallSyntax::Hermes.parse("no call here", 1, &[]).is_none());
        assert!(CallSyntax::Hermes.parse("<tool_call>\n{\"name\": ", 1, &[]).is_none(), "a cut call is no call");
    }

    #[test]
    fn llama_calls_are_one_bare_json_object_with_parameters() {
        // The tool parts of Llama 3.x's template: the instruction and how a call in the history is written.
        let source = r#"{{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
            {{- '{"name": "' + tool_call.name + '", ' }}{{- '"parameters": ' }}{{- tool_call.arguments | tojson }}"#;
        assert_eq!(CallSyntax::of_template(source), Some(CallSyntax::LlamaJson));
        assert_eq!(CallSyntax::of_template("{{ tools }} <tool_call> \"parameters\": "), Some(CallSyntax::Hermes));
        assert_eq!(CallSyntax::of_template("{{ tools | tojson }}"), None);

        let text = r#"{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}"#;
        let (content, calls) = CallSyntax::LlamaJson.parse(text, 40, &[1, 2]).unwrap();
        assert_eq!(content, "");
        assert_eq!(
            (calls[0].name.as_str(), calls[0].arguments.as_str()),
            ("get_weather", r#"{"city":"Paris","unit":"c"}"#)
        );
        assert_eq!(CallSyntax::of_answer(text), Some(CallSyntax::LlamaJson));
        assert_eq!(CallSyntax::of_answer(r#"{"name": "x"} is JSON"#), None, "no parameters, no call");
        assert!(CallSyntax::LlamaJson.parse(r#"{"name": "get_weather", "parameters": {"ci"#, 1, &[]).is_none());
        assert!(!CallSyntax::LlamaJson.ends_with_call(text), "one call per answer: the grammar ends it");

        let mut tools = weather();
        tools.parallel = true;
        let g = CallSyntax::LlamaJson.grammar(&tools, "Sure. ");
        assert!(g.starts_with("start: \"Sure. \" call\ncall: %json "), "{g}");
        assert!(g.contains(r#""parameters":{"#) && g.contains(r#""required":["name","parameters"]"#), "{g}");
        assert!(!g.contains("call ("), "no second call even with parallel: {g}");
    }

    #[test]
    fn the_grammar_names_the_callable_tools_and_their_schemas() {
        let mut tools = weather();
        tools.tools.push(Tool { name: "noop".into(), description: None, parameters: no_parameters() });
        let g = CallSyntax::Hermes.grammar(&tools, " ");
        assert!(g.starts_with("start: \" \" call\n"), "{g}");
        assert!(g.contains(r#""const":"noop""#) && g.contains(r#""additionalProperties":false"#), "{g}");
        tools.choice = ToolChoice::Function("noop".into());
        tools.parallel = true;
        let g = CallSyntax::Hermes.grammar(&tools, "");
        assert!(!g.contains("get_weather") && g.contains(r#"call ("\n" call){0,7}"#), "{g}");
    }
}
