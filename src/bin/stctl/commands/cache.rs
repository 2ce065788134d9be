//! `stctl cache stats|clear|snapshot`: the daemon's cache, or the per-user one in direct mode.

use anyhow::Result;

use steadytext::client::{render_cache_stats, Session};
use steadytext::protocol::CacheClearParams;

use crate::cli::CacheCommand;

/// Runs a cache command.
pub fn run(session: &Session, command: CacheCommand) -> Result<()> {
    match command {
        CacheCommand::Stats { json } => {
            let (stats, served) = session.cache_stats()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                print!("{}", render_cache_stats(&stats, served.as_str()));
            }
        }
        CacheCommand::Clear { which } => {
            let (cleared, _) = session.cache_clear(&CacheClearParams { cache: which })?;
            println!("{}", serde_json::to_string_pretty(&cleared)?);
        }
        CacheCommand::Snapshot => {
            let (written, _) = session.cache_snapshot()?;
            println!("{}", serde_json::to_string_pretty(&written)?);
        }
    }
    Ok(())
}
