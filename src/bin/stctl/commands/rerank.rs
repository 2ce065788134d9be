//! `stctl rerank`.

use anyhow::Result;

use steadytext::client::Session;
use steadytext::protocol::RerankParams;

use super::{print_json, read_stdin};
use crate::cli::RerankArgs;

/// Scores the documents against the query and prints them best first (score, index, document).
pub fn run(session: &Session, args: RerankArgs) -> Result<()> {
    let documents = match args.documents.as_slice() {
        [] => read_stdin()?.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect(),
        many => many.to_vec(),
    };
    let params = RerankParams { query: args.query, documents, model: args.model };
    let (result, served) = session.rerank(&params)?;
    if args.json {
        return print_json(&result, served, []);
    }
    for &i in &result.order {
        println!("{:.6}\t{i}\t{}", result.scores[i], params.documents[i]);
    }
    Ok(())
}
