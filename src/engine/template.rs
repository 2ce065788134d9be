//! Chat templates (Jinja, as Hugging Face ships them) rendered with minijinja.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use serde_json::Value;

use crate::engine::tools::{CallSyntax, ToolUse};
use crate::engine::types::ChatMessage;
use crate::error::{Error, Result};
use crate::model::ModelFiles;

/// A model's chat template, ready to render a single user turn.
pub struct ChatTemplate {
    env: Option<Environment<'static>>,
    bos_token: String,
    eos_token: String,
    /// Whether the template reads a `tools` variable.
    takes_tools: bool,
    /// Whether the template has a thinking switch (`enable_thinking`).
    takes_thinking: bool,
    /// How it has the model write a tool call, when steadytext knows the syntax.
    call_syntax: Option<CallSyntax>,
}

fn raise_exception(message: String) -> std::result::Result<String, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, message))
}

/// The text of a special-token entry of `tokenizer_config.json` (a string or `{ "content": ... }`).
fn token_text(config: Option<&Value>, key: &str) -> String {
    match config.and_then(|c| c.get(key)) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).unwrap_or_default().to_string(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// Loads `chat_template.jinja`, else `tokenizer_config.json`'s `chat_template`; a model without
    /// one gets the prompt verbatim.
    pub fn load(files: &ModelFiles) -> Result<Self> {
        let tokenizer_config = files.json("tokenizer_config.json")?;
        let path = files.dir.join("chat_template.jinja");
        let source = if path.is_file() {
            Some(std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?)
        } else {
            match tokenizer_config.as_ref().and_then(|c| c.get("chat_template")) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Array(named)) => named
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                _ => None,
            }
        };
        let takes_tools = source.as_deref().is_some_and(|s| s.contains("tools"));
        let takes_thinking = source.as_deref().is_some_and(|s| s.contains("enable_thinking"));
        let call_syntax = source.as_deref().and_then(CallSyntax::of_template);
        let env = match source {
            Some(source) => {
                let mut env = Environment::new();
                minijinja_contrib::add_to_environment(&mut env);
                env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
                env.add_function("raise_exception", raise_exception);
                env.add_template_owned("chat", source)
                    .map_err(|e| Error::model(&files.name, format!("chat template does not parse: {e}")))?;
                Some(env)
            }
            None => None,
        };
        Ok(ChatTemplate {
            env,
            bos_token: token_text(tokenizer_config.as_ref(), "bos_token"),
            eos_token: token_text(tokenizer_config.as_ref(), "eos_token"),
            takes_tools,
            takes_thinking,
            call_syntax,
        })
    }

    /// How the model writes a tool call; an error naming `model` when its template does not
    /// take tools or says calls in a syntax steadytext does not know.
    pub fn call_syntax(&self, model: &str) -> Result<CallSyntax> {
        match (self.takes_tools, self.call_syntax) {
            (true, Some(syntax)) => Ok(syntax),
            (false, _) => Err(Error::InvalidRequest(format!(
                "model {model}'s chat template does not take tools: use a model whose template does (Qwen2.5, \
                 Qwen3, Llama 3.x or another with <tool_call> or {{\"name\": ..., \"parameters\": ...}} calls), or \
                 leave tools out"
            ))),
            (true, None) => Err(Error::InvalidRequest(format!(
                "model {model}'s chat template takes tools in a call syntax steadytext does not know (it knows \
                 <tool_call> calls and Llama 3.x's {{\"name\": ..., \"parameters\": ...}}): leave tools out"
            ))),
        }
    }

    /// No template: prompts are used verbatim (for tests with scripted backends).
    #[cfg(test)]
    pub(crate) fn verbatim() -> Self {
        ChatTemplate {
            env: None,
            bos_token: String::new(),
            eos_token: String::new(),
            takes_tools: false,
            takes_thinking: false,
            call_syntax: None,
        }
    }

    /// Refuses `think` for a model (`model`) whose template has no thinking switch.
    pub fn check_thinking(&self, model: &str, think: bool) -> Result<()> {
        if think && !self.takes_thinking {
            return Err(Error::InvalidRequest(format!(
                "model {model}'s chat template has no thinking switch (enable_thinking): leave think out"
            )));
        }
        Ok(())
    }

    /// Renders one user message with the generation prompt appended (thinking if `think`).
    pub fn render_user(&self, prompt: &str, think: bool) -> Result<String> {
        let Some(env) = &self.env else { return Ok(prompt.to_string()) };
        Self::render_with(env, self, vec![context! { role => "user", content => prompt }], None, think)
    }

    /// Renders a conversation (offering `tools`, if any) with the generation prompt appended
    /// (thinking if `think`); without a template, the turns' texts joined by newlines.
    pub fn render(&self, messages: &[ChatMessage], tools: Option<&ToolUse>, think: bool) -> Result<String> {
        let Some(env) = &self.env else {
            return Ok(messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n"));
        };
        let turns = messages.iter().map(turn).collect();
        Self::render_with(env, self, turns, tools, think)
    }

    fn render_with(
        env: &Environment<'static>,
        tokens: &Self,
        messages: Vec<minijinja::Value>,
        tools: Option<&ToolUse>,
        think: bool,
    ) -> Result<String> {
        let template = env.get_template("chat").map_err(|e| Error::InvalidRequest(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                tools => tools.map(ToolUse::template_tools),
                add_generation_prompt => true,
                enable_thinking => think,
                bos_token => &tokens.bos_token,
                eos_token => &tokens.eos_token,
            })
            .map_err(|e| Error::InvalidRequest(format!("chat template failed: {e}")))
    }
}

/// One turn as chat templates take it (Hugging Face's convention): an assistant's calls as
/// `tool_calls` of `{id, type, function: {name, arguments}}`, the arguments an object (templates
/// write them with `tojson`); a tool turn with its `tool_call_id`.
fn turn(m: &ChatMessage) -> minijinja::Value {
    let calls: Vec<Value> = m
        .tool_calls
        .iter()
        .map(|c| {
            let arguments = serde_json::from_str::<Value>(&c.arguments).unwrap_or_else(|_| c.arguments.clone().into());
            serde_json::json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": arguments}})
        })
        .collect();
    match (calls.is_empty(), &m.tool_call_id) {
        (true, None) => context! { role => &m.role, content => &m.content },
        (true, Some(id)) => context! { role => &m.role, content => &m.content, tool_call_id => id },
        (false, _) => context! { role => &m.role, content => &m.content, tool_calls => calls },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A template of `source` in a folder of its own.
    fn template(source: &str) -> ChatTemplate {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("chat_template.jinja"), source).unwrap();
        let files = ModelFiles {
            name: "m".into(),
            dir: dir.path().to_path_buf(),
            onnx: dir.path().join("model.onnx"),
            tokenizer: dir.path().join("tokenizer.json"),
        };
        ChatTemplate::load(&files).unwrap()
    }

    #[test]
    fn thinking_is_off_unless_asked_and_refused_where_the_template_has_no_switch() {
        // The shape of Qwen3's generation prompt: an empty think block when thinking is off.
        let switch = template(
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
             {% if add_generation_prompt %}<|im_start|>assistant\n\
             {% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}",
        );
        let off = switch.render_user("hi", false).unwrap();
        let on = switch.render_user("hi", true).unwrap();
        assert!(off.ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"), "{off:?}");
        assert!(on.ends_with("<|im_start|>assistant\n"), "{on:?}");
        assert!(switch.check_thinking("m", true).is_ok());

        let plain = template("{% for m in messages %}{{ m.content }}{% endfor %}");
        assert!(plain.check_thinking("m", false).is_ok());
        let err = plain.check_thinking("m", true).unwrap_err().to_string();
        assert!(err.contains("no thinking switch") && err.contains("model m"), "{err}");
    }

    #[test]
    fn templates_cannot_read_the_clock() {
        // Llama 3.2's template dates its system turn with strftime_now when it is defined, else
        // with a fixed date: a prompt must never depend on the day it is rendered.
        let dated =
            template("{% if strftime_now is defined %}{{ strftime_now('%d %b %Y') }}{% else %}fixed{% endif %}");
        assert_eq!(dated.render_user("hi", false).unwrap(), "fixed");
    }
}
