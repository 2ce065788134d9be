//! What each `stctl` command does: build typed params from its arguments, have the session serve
//! them, print the result.

use std::io::{Read, Write};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use steadytext::client::Served;

pub mod cache;
pub mod daemon;
pub mod embed;
pub mod generate;
pub mod models;
pub mod rerank;

/// All of standard input.
fn read_stdin() -> Result<String> {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).context("cannot read standard input")?;
    Ok(s)
}

/// Prints a streamed piece at once.
fn print_piece(text: &str) {
    if text.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Prints `result` as one JSON line with `"mode"` (which side served it) and `extra` fields.
fn print_json(
    result: &impl Serialize,
    served: Served,
    extra: impl IntoIterator<Item = (&'static str, Value)>,
) -> Result<()> {
    let mut v = serde_json::to_value(result)?;
    v["mode"] = served.as_str().into();
    for (key, value) in extra {
        v[key] = value;
    }
    println!("{}", serde_json::to_string(&v)?);
    Ok(())
}
