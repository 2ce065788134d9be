//! `steadytextd`: the steadytext worker. Normally started by systemd through
//! `steadytext.socket`; by hand it binds `--listen` addresses (or the configured socket).
#![warn(missing_docs)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

use steadytext::client::Target;
use steadytext::config::Config;
use steadytext::daemon::{self, listen, privileges};
use steadytext::env;

#[derive(Parser)]
#[command(
    name = "steadytextd",
    version,
    about = "Deterministic text generation and embeddings daemon (socket-activated by systemd)"
)]
struct Cli {
    /// Configuration file (default: $STEADYTEXT_CONFIG, else steadytext.toml in systemd's
    /// $CONFIGURATION_DIRECTORY or ~/.config/steadytext/ when present, else
    /// /etc/steadytext/steadytext.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen on unix:PATH or tcp:HOST:PORT (JSON-RPC), http:HOST:PORT or http+unix:PATH (HTTP),
    /// ollama:HOST:PORT or ollama+unix:PATH (Ollama's API), zmq:HOST:PORT (SteadyText's protocol,
    /// loopback only), repeatable, when not socket-activated.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<String>,
    /// Exit after this many seconds without clients (overrides daemon.idle_exit_secs).
    #[arg(long, value_name = "SECS")]
    idle_exit: Option<u64>,
    /// Allow running as root (all capabilities are dropped first).
    #[arg(long)]
    allow_root: bool,
}

/// Logs to the journal when stderr is connected to it (`JOURNAL_STREAM`), as text otherwise.
fn init_logging() {
    let filter = EnvFilter::new(env::log_filter().as_deref().unwrap_or("info,ort=warn"));
    let journal = libsystemd::logging::connected_to_journal()
        .then(|| tracing_journald::layer().ok())
        .flatten()
        .map(|l| l.with_field_prefix(None));
    if let Some(layer) = journal {
        tracing_subscriber::registry().with(filter).with(layer).init();
    } else {
        // Colours for a terminal only: a log file, a pipe or a container's log gets plain text.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let text = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
        tracing_subscriber::registry().with(filter).with(text).init();
    }
}

fn main() -> ExitCode {
    init_logging();
    match start(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("steadytextd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(cli: Cli) -> Result<()> {
    // Everything that edits the environment or process credentials happens before threads exist.
    // SAFETY: no other thread has been started yet.
    let mut listeners = unsafe { listen::from_systemd() }?;
    let mut config = Config::load(cli.config.as_deref()).context("cannot load the configuration")?;
    if let Some(secs) = cli.idle_exit {
        config.daemon.idle_exit_secs = secs;
    }
    if listeners.is_empty() {
        let targets = if cli.listen.is_empty() {
            vec![(listen::Protocol::JsonRpc, Target::Unix(config.daemon.socket.clone()))]
        } else {
            cli.listen.iter().map(|s| listen::parse(s)).collect::<Result<_>>()?
        };
        for (protocol, target) in &targets {
            listeners.push(listen::bind(*protocol, target)?);
        }
    } else if !cli.listen.is_empty() {
        bail!("--listen given but systemd passed sockets; drop --listen or start without socket activation");
    }
    // Sockets are bound and the configuration read; nothing is loaded yet.
    let owned: Vec<&std::path::Path> = listeners.iter().filter_map(listen::StdListener::owned_path).collect();
    privileges::drop_privileges(cli.allow_root, &config.daemon_state_dir(), &owned)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.effective_io_threads())
        .thread_name("steadytextd-io")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(daemon::run(daemon::Options { config_path: cli.config, config, listeners }))
}
