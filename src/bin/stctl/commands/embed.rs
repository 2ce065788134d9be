//! `stctl embed`.

use std::time::Instant;

use anyhow::Result;
use serde_json::json;

use steadytext::client::Session;
use steadytext::protocol::EmbedParams;

use super::{print_json, read_stdin};
use crate::cli::EmbedArgs;

/// Embeds the texts: one JSON array per line (or one JSON object with `--json`).
pub fn run(session: &Session, args: EmbedArgs) -> Result<()> {
    let texts = match args.texts.as_slice() {
        [] => vec![read_stdin()?],
        [one] if one == "-" => vec![read_stdin()?],
        many => many.to_vec(),
    };
    let params =
        EmbedParams { texts, model: args.model, mode: args.mode, dimensions: args.dimensions, ..Default::default() };
    let started = Instant::now();
    let (result, served) = session.embed(&params)?;
    if args.json {
        let timings = json!({ "total_ms": started.elapsed().as_secs_f64() * 1e3 });
        return print_json(&result, served, [("timings", timings)]);
    }
    for e in &result.embeddings {
        println!("{}", serde_json::to_string(e)?);
    }
    Ok(())
}
