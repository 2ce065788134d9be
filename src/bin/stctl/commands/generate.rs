//! `stctl generate`.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use steadytext::client::Session;
use steadytext::engine::tools::{Tool, ToolChoice};
use steadytext::protocol::GenerateParams;

use super::{print_json, print_piece, read_stdin};
use crate::cli::GenerateArgs;

/// `--schema`'s value: JSON text, or a file holding it.
fn read_schema(arg: &str) -> Result<Value> {
    let text = if arg.trim_start().starts_with('{') {
        arg.to_string()
    } else {
        std::fs::read_to_string(arg).with_context(|| format!("cannot read the schema file {arg}"))?
    };
    serde_json::from_str(&text).with_context(|| format!("the schema {arg:?} is not JSON"))
}

/// `--grammar`'s file.
fn read_grammar(file: &Path) -> Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("cannot read the grammar {}", file.display()))
}

/// `--tools`' file: a list of tools, each in steadytext's shape or OpenAI's.
fn read_tools(file: &Path) -> Result<Vec<Tool>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read the tools {}", file.display()))?;
    let list: Vec<Value> =
        serde_json::from_str(&text).with_context(|| format!("{} is not a JSON list of tools", file.display()))?;
    list.into_iter()
        .enumerate()
        .map(|(i, tool)| {
            let tool = match tool.get("type").and_then(Value::as_str) {
                Some("function") => tool.get("function").cloned().unwrap_or_default(),
                _ => tool,
            };
            serde_json::from_value(tool).with_context(|| format!("tool {i} of {} is not a tool", file.display()))
        })
        .collect()
}

/// `--tool-choice`: a mode, else the name of a tool.
fn tool_choice(arg: &str) -> ToolChoice {
    match arg {
        "auto" => ToolChoice::Auto,
        "none" => ToolChoice::None,
        "required" => ToolChoice::Required,
        name => ToolChoice::Function(name.to_string()),
    }
}

/// Generates for the prompt, streaming the text to stdout (or printing one JSON object).
pub fn run(session: &Session, args: GenerateArgs) -> Result<()> {
    let prompt = match args.prompt.as_deref() {
        None | Some("-") => read_stdin()?,
        Some(p) => p.to_string(),
    };
    let params = GenerateParams {
        prompt,
        seed: args.seed,
        max_new_tokens: args.max_new_tokens,
        stop: args.stop,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        model: args.model,
        raw: args.raw,
        think: args.think,
        messages: Vec::new(),
        schema: args.schema.as_deref().map(read_schema).transpose()?,
        regex: args.regex,
        choices: args.choices,
        grammar: args.grammar.as_deref().map(read_grammar).transpose()?,
        logprobs: args.logprobs,
        top_logprobs: args.top_logprobs,
        tools: args.tools.as_deref().map(read_tools).transpose()?.unwrap_or_default(),
        tool_choice: args.tool_choice.as_deref().map(tool_choice),
        parallel_tool_calls: args.no_parallel_tool_calls.then_some(false),
    };
    let started = Instant::now();
    // With tools the answer prints once done: its text, then each call as a JSON line.
    let stream = !args.json && params.tools.is_empty();
    let (result, served) = session.generate(&params, stream, &mut print_piece)?;
    if !args.json {
        if !stream {
            print!("{}", result.generation.content());
        }
        println!();
        for call in &result.generation.tool_calls {
            println!("{}", serde_json::to_string(call)?);
        }
        return Ok(());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let timings = json!({
        "total_ms": elapsed * 1e3,
        "tokens_per_second": result.generation.token_ids.len() as f64 / elapsed.max(1e-9),
    });
    print_json(&result, served, [("timings", timings)])
}
