//! `stctl`: generate text and embeddings with steadytext, through the daemon when one is
//! reachable and in-process otherwise.
#![warn(missing_docs)]

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;

use steadytext::client::{target_from_env, ClientOptions, Session, SessionSettings, Target};
use steadytext::config::Config;

mod cli;
mod commands;

use cli::{Cli, Command, ModelsCommand};

/// The session `cli` asks for: configuration, daemon address(es), key, deadlines and the
/// direct-mode policy.
fn session(cli: &Cli) -> Result<Session> {
    let config = Config::load(cli.config.as_deref()).context("cannot load the configuration")?;
    let env = steadytext::env::client();
    let targets = match cli.socket.as_slice() {
        [] => vec![target_from_env(&env, &config.daemon.socket).map_err(anyhow::Error::msg)?],
        many => many.iter().map(|s| Target::parse(s).map_err(anyhow::Error::msg)).collect::<Result<_>>()?,
    };
    let api_key = match &cli.api_key_file {
        Some(file) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the API key file {}", file.display()))?
                .trim()
                .to_string(),
        ),
        None => env.api_key.clone(),
    };
    if cli.daemon_only && env.disable_daemon {
        bail!("--daemon-only conflicts with STEADYTEXT_DISABLE_DAEMON; unset one of them");
    }
    let settings = SessionSettings {
        targets,
        client: ClientOptions {
            api_key,
            ca_file: cli.ca_file.clone().or(env.ca_file.clone()),
            connect_timeout: Duration::from_secs(cli.connect_timeout),
            read_timeout: Duration::from_secs(cli.timeout.max(1)),
            retries: cli.retries,
            ..ClientOptions::default()
        },
        fingerprint: cli.fingerprint.clone(),
        daemon_only: cli.daemon_only,
        no_daemon: cli.no_daemon || env.disable_daemon,
        // A fleet's client is rarely where the models are: it falls back only when asked.
        fallback_direct: cli.fallback_direct || cli.socket.len() < 2,
        verbose: cli.verbose,
    };
    Ok(Session::new(config, settings))
}

fn run(cli: Cli) -> Result<()> {
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory;
        clap_complete::generate(shell, &mut Cli::command(), "stctl", &mut std::io::stdout());
        return Ok(());
    }
    let session = session(&cli)?;
    match cli.command {
        Command::Generate(args) => commands::generate::run(&session, args),
        Command::Embed(args) => commands::embed::run(&session, args),
        Command::Rerank(args) => commands::rerank::run(&session, args),
        Command::Status { json } => commands::daemon::status(&session, json),
        Command::Reload => commands::daemon::reload(&session),
        Command::Metrics => commands::daemon::metrics(&session),
        Command::Ping => commands::daemon::ping(&session),
        Command::Cache(command) => commands::cache::run(&session, command),
        Command::Pull(args) | Command::Models(ModelsCommand::Pull(args)) => commands::models::pull(&session, args),
        Command::Models(command) => commands::models::run(&session, command),
        Command::Completions { .. } => Ok(()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Direct mode compiles constraints and masks with them on this thread: it gets the stack the
    // daemon's generation workers have.
    let worker = std::thread::Builder::new()
        .name("stctl".into())
        .stack_size(steadytext::engine::constraint::STACK_BYTES)
        .spawn(move || run(cli));
    match worker.map_err(anyhow::Error::from).and_then(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stctl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
