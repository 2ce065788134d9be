//! `stctl`: generate text and embeddings with steadytext, through the daemon when one is
//! reachable and in-process otherwise.
#![warn(missing_docs)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use steadytext::cache::{self, SharedCache};
use steadytext::client::{target_from_env, Client, ClientError, ClientOptions, Fleet, FleetError, Target};
use steadytext::config::Config;
use steadytext::core::validate::ToRequest;
use steadytext::core::{PieceSink, SinkFuture};
use steadytext::direct;
use steadytext::engine::rerank;
use steadytext::protocol::{
    CacheKind, CacheStats, EmbedParams, EmbedResult, GenerateParams, GenerateResult, RerankParams, RerankResult, SnapshotInfo,
    Status,
};

#[derive(Parser)]
#[command(name = "stctl", version, about = "Deterministic text generation and embeddings (steadytext client)")]
struct Cli {
    /// Configuration file (default: $STEADYTEXT_CONFIG, else ~/.config/steadytext/steadytext.toml
    /// when present, else /etc/steadytext/steadytext.toml).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Daemon address: unix:PATH, tcp:HOST:PORT, tls:HOST:PORT, http(s)://HOST:PORT (default:
    /// $STEADYTEXT_SOCKET, else your own daemon's $XDG_RUNTIME_DIR/steadytext/steadytext.sock when
    /// it listens, else the configured socket). Repeat it for a fleet of identical daemons:
    /// each request goes to the one its route key picks and on to the next on failure.
    #[arg(long, global = true, value_name = "ADDR")]
    socket: Vec<String>,
    /// With several --socket: use only daemons with this engine fingerprint (default: the one
    /// most of them report).
    #[arg(long, global = true, value_name = "ID")]
    fingerprint: Option<String>,
    /// With several --socket: run the model in-process when no daemon can answer (off by default:
    /// a fleet's client is rarely where the models are).
    #[arg(long, global = true, conflicts_with = "daemon_only")]
    fallback_direct: bool,
    /// Never run models in-process: fail when the daemon is unreachable.
    #[arg(long, global = true, conflicts_with = "no_daemon")]
    daemon_only: bool,
    /// Always run models in-process (also STEADYTEXT_DISABLE_DAEMON=1).
    #[arg(long, global = true)]
    no_daemon: bool,
    /// Say on stderr which mode served the request.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// File holding the API key for a daemon over TCP (default: $STEADYTEXT_API_KEY).
    #[arg(long, global = true, value_name = "FILE")]
    api_key_file: Option<PathBuf>,
    /// PEM CA certificates to check a TLS daemon's certificate with (default: $STEADYTEXT_CA_FILE,
    /// else the system's store).
    #[arg(long, global = true, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Seconds to wait for each line of the daemon's answer.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 600)]
    timeout: u64,
    /// Seconds to wait for a TCP connection.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 5)]
    connect_timeout: u64,
    /// Times a request refused as overloaded is retried (after the daemon's retry hint).
    #[arg(long, global = true, value_name = "N", default_value_t = 3)]
    retries: u32,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text for a prompt (from the argument, or stdin when absent or "-").
    Generate(GenerateArgs),
    /// Embed texts (arguments, or one text from stdin when absent or "-").
    Embed(EmbedArgs),
    /// Score documents against a query with the generation model, best first (documents from the
    /// arguments, or one per line from stdin when none are given).
    Rerank(RerankArgs),
    /// Show the daemon's status.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the daemon's metrics in the Prometheus text format.
    Metrics,
    /// Check that the daemon answers.
    Ping,
    /// Make the daemon re-read its configuration and pick up new or changed model folders (what
    /// SIGHUP does), and wait until it is done (admins: root, the daemon's user, admin_group).
    Reload,
    /// Download a model folder from the Hugging Face Hub (same as `stctl models pull`).
    Pull(PullArgs),
    /// Manage the model folder: list, pull, verify, remove, import.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Inspect or manage the result cache (the daemon's, or the per-user one in direct mode).
    #[command(subcommand)]
    Cache(CacheCommand),
}

#[derive(Args)]
struct RerankArgs {
    /// What the documents are judged against.
    query: String,
    /// The documents.
    documents: Vec<String>,
    /// Generation model (name under the model folder, or a path).
    #[arg(long)]
    model: Option<String>,
    /// Print the JSON result (scores in input order, the order, model digest).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct PullArgs {
    /// Repository, as owner/name, or a recommended model: small, large, embed, rerank
    /// (`stctl models pull --list` shows what each is).
    #[arg(required_unless_present = "list")]
    repo: Option<String>,
    /// Branch, tag or commit (default: main; a recommended model's pinned commit).
    #[arg(long)]
    revision: Option<String>,
    /// ONNX file to take (default: model.onnx, else the CPU variant: onnx/model.onnx,
    /// onnx/model_q4.onnx, onnx/model_int8.onnx, onnx/model_quantized.onnx...). One in a
    /// subfolder with a genai_config.json pulls that subfolder as the model folder.
    #[arg(long)]
    onnx_file: Option<String>,
    /// List the recommended models and what each is pinned to, and pull nothing.
    #[arg(long)]
    list: bool,
    /// Where to put it (default: the configured model folder).
    #[arg(long)]
    model_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Every model folder: task, size, digest, source, whether it is a default and loaded.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The model folder (default: the configured one).
        #[arg(long)]
        model_dir: Option<PathBuf>,
    },
    /// Download a model folder from the Hugging Face Hub (HF_ENDPOINT, HF_TOKEN).
    Pull(PullArgs),
    /// Re-hash a model's files (all models when no name is given) against its manifest.
    Verify {
        /// Model folder name.
        name: Option<String>,
        /// The model folder (default: the configured one).
        #[arg(long)]
        model_dir: Option<PathBuf>,
    },
    /// Remove a model folder; refused while the daemon serves it, unless --force.
    Rm {
        /// Model folder name.
        name: String,
        /// Remove it even while the daemon serves it.
        #[arg(long)]
        force: bool,
        /// The model folder (default: the configured one).
        #[arg(long)]
        model_dir: Option<PathBuf>,
    },
    /// Copy a local model folder in (offline installs), checking its layout first.
    Import {
        /// The folder to copy.
        dir: PathBuf,
        /// Name in the model folder (default: the folder's own name).
        #[arg(long)]
        name: Option<String>,
        /// The model folder (default: the configured one).
        #[arg(long)]
        model_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Entries, bytes, hits, misses, hit rate, last snapshot.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove cached results.
    Clear {
        /// Which cache; both when absent.
        #[arg(value_parser = ["generation", "embedding"])]
        which: Option<String>,
    },
    /// Write a snapshot now.
    Snapshot,
}

#[derive(Args)]
struct GenerateArgs {
    /// The prompt.
    prompt: Option<String>,
    /// Seed (default 42, or STEADYTEXT_DEFAULT_SEED).
    #[arg(long)]
    seed: Option<u64>,
    /// Most tokens to generate (default 512).
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Generation model (name under the model folder, or a path).
    #[arg(long)]
    model: Option<String>,
    /// Stop before this string (repeatable).
    #[arg(long = "stop", value_name = "TEXT")]
    stop: Vec<String>,
    /// Sampling temperature (0 = greedy, the default).
    #[arg(long)]
    temperature: Option<f32>,
    /// Top-k for sampling.
    #[arg(long)]
    top_k: Option<usize>,
    /// Top-p for sampling.
    #[arg(long)]
    top_p: Option<f32>,
    /// Print a JSON object with the text, token ids, model digest and timings.
    #[arg(long)]
    json: bool,
    /// Use the prompt verbatim, without the model's chat template (a plain completion).
    #[arg(long)]
    raw: bool,
    /// The answer is JSON valid against this JSON Schema (a file, or the schema itself).
    #[arg(long, value_name = "FILE|JSON", group = "constraint")]
    schema: Option<String>,
    /// The answer matches this regular expression.
    #[arg(long, value_name = "RE", group = "constraint")]
    regex: Option<String>,
    /// The answer is exactly one of these (comma-separated).
    #[arg(long, value_name = "A,B,...", value_delimiter = ',', group = "constraint")]
    choices: Option<Vec<String>>,
    /// The answer is a string of this Lark grammar (a file).
    #[arg(long, value_name = "FILE", group = "constraint")]
    grammar: Option<PathBuf>,
    /// Report each token's log-probability (in the --json output).
    #[arg(long, requires = "json")]
    logprobs: bool,
    /// With --logprobs: also the N most likely tokens at each step (at most 20).
    #[arg(long, value_name = "N", requires = "logprobs")]
    top_logprobs: Option<usize>,
}

/// `--schema`'s value: JSON text, or a file holding it.
fn read_schema(arg: &str) -> Result<Value> {
    let text = if arg.trim_start().starts_with('{') {
        arg.to_string()
    } else {
        std::fs::read_to_string(arg).with_context(|| format!("cannot read the schema file {arg}"))?
    };
    serde_json::from_str(&text).with_context(|| format!("the schema {arg:?} is not JSON"))
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum EmbedFormat {
    /// One JSON array of floats per text, one per line.
    Json,
}

#[derive(Args)]
struct EmbedArgs {
    /// Texts to embed.
    texts: Vec<String>,
    /// Embedding model (name under the model folder, or a path).
    #[arg(long)]
    model: Option<String>,
    /// Output format of the vectors.
    #[arg(long, value_enum, default_value = "json")]
    format: EmbedFormat,
    /// Print a JSON object with the vectors, model digest and timings.
    #[arg(long)]
    json: bool,
    /// `query`, `passage`, or another prompt name of the model (its prompt goes before each text).
    #[arg(long)]
    mode: Option<String>,
    /// Keep this many leading dimensions, re-normalized (Matryoshka models).
    #[arg(long, value_name = "N")]
    dimensions: Option<usize>,
}

/// How a command is served.
enum Mode {
    Daemon(Box<Fleet>),
    Direct,
}

struct Ctx {
    config: Config,
    targets: Vec<Target>,
    client: ClientOptions,
    fingerprint: Option<String>,
    daemon_only: bool,
    no_daemon: bool,
    fallback_direct: bool,
    verbose: bool,
}

impl Ctx {
    fn new(cli: &Cli) -> Result<Self> {
        let config = Config::load(cli.config.as_deref()).context("cannot load the configuration")?;
        let env = steadytext::config::env::client();
        let targets = match cli.socket.as_slice() {
            [] => vec![target_from_env(&env, &config.daemon.socket).map_err(anyhow::Error::msg)?],
            many => many.iter().map(|s| Target::parse(s).map_err(anyhow::Error::msg)).collect::<Result<_>>()?,
        };
        let disabled = env.disable_daemon;
        let api_key = match &cli.api_key_file {
            Some(file) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read the API key file {}", file.display()))?
                    .trim()
                    .to_string(),
            ),
            None => env.api_key.clone(),
        };
        let client = ClientOptions {
            api_key,
            ca_file: cli.ca_file.clone().or(env.ca_file.clone()),
            connect_timeout: Duration::from_secs(cli.connect_timeout),
            read_timeout: Duration::from_secs(cli.timeout.max(1)),
            retries: cli.retries,
            ..ClientOptions::default()
        };
        if cli.daemon_only && disabled {
            bail!("--daemon-only conflicts with STEADYTEXT_DISABLE_DAEMON; unset one of them");
        }
        Ok(Ctx {
            config,
            targets,
            client,
            fingerprint: cli.fingerprint.clone(),
            daemon_only: cli.daemon_only,
            no_daemon: cli.no_daemon || disabled,
            fallback_direct: cli.fallback_direct || cli.socket.len() < 2,
            verbose: cli.verbose,
        })
    }

    fn note(&self, msg: impl std::fmt::Display) {
        if self.verbose {
            eprintln!("stctl: {msg}");
        }
    }

    fn targets(&self) -> String {
        self.targets.iter().map(Target::to_string).collect::<Vec<_>>().join(", ")
    }

    /// Opens the daemon (or fleet), saying which endpoints it refused.
    fn fleet(&self) -> Result<Fleet, FleetError> {
        let fleet = Fleet::connect(&self.targets, self.client.clone(), self.fingerprint.as_deref())?;
        for r in fleet.refused() {
            eprintln!("stctl: warning: not using {}: {}", r.target, r.reason);
        }
        Ok(fleet)
    }

    /// Whether `e` lets direct mode serve the request.
    fn may_fall_back(&self, e: &FleetError) -> bool {
        e.allows_fallback() && !self.daemon_only && self.fallback_direct
    }

    /// Why direct mode cannot stand in for daemons with `fingerprint`, if it cannot.
    fn check_direct(&self, fingerprint: Option<&str>) -> Result<()> {
        let Some(fleet) = fingerprint else { return Ok(()) };
        let here = steadytext::engine::fingerprint::fingerprint(&self.config)?;
        if here.id != fleet {
            bail!(
                "direct mode's engine fingerprint {} ({}) is not the daemons' {fleet}: its answers could differ in bits",
                here.id,
                here.summary
            );
        }
        Ok(())
    }

    /// Connects to the daemon(s), or decides on direct mode.
    fn mode(&self) -> Result<Mode> {
        if self.no_daemon {
            self.note("direct mode (daemon disabled)");
            return Ok(Mode::Direct);
        }
        match self.fleet() {
            Ok(fleet) => {
                self.note(format_args!("using the daemon at {}", self.targets()));
                Ok(Mode::Daemon(Box::new(fleet)))
            }
            Err(e) if e.allows_fallback() && self.daemon_only => Err(anyhow::Error::new(e).context(
                "--daemon-only: no daemon (start it with `systemctl start steadytext.socket`, or drop --daemon-only)",
            )),
            // A daemon that is there but refuses us (key, certificate) is an error, not a reason
            // to run the model here.
            Err(e) if !self.may_fall_back(&e) => Err(e.into()),
            Err(e) => {
                self.note(format_args!("{e}; falling back to direct mode"));
                self.check_direct(self.fingerprint.as_deref())?;
                Ok(Mode::Direct)
            }
        }
    }

    /// Asks the daemon `method` (without parameters): what only the daemon can answer.
    fn ask<R: serde::de::DeserializeOwned>(&self, method: &str) -> Result<R> {
        let mut fleet = self.fleet().map_err(|e| match e {
            e if e.allows_fallback() => {
                anyhow::Error::new(e).context("no daemon to ask; start it with `systemctl start steadytext.socket`")
            }
            other => other.into(),
        })?;
        Ok(fleet.call(None, |c| c.call(method, &json!({})))?)
    }

    /// Runs `daemon_call` on the daemon the route key picks, or `direct` when falling back is
    /// allowed.
    fn serve<R>(
        &self,
        route_key: Option<&str>,
        mut daemon_call: impl FnMut(&mut Client) -> Result<R, ClientError>,
        direct: impl FnOnce() -> Result<R>,
    ) -> Result<(R, &'static str)> {
        if let Mode::Daemon(mut fleet) = self.mode()? {
            match fleet.call(route_key, &mut daemon_call) {
                Ok(r) => {
                    if let Some(t) = fleet.answered_by() {
                        self.note(format_args!("answered by {t}"));
                    }
                    return Ok((r, "daemon"));
                }
                Err(e) if self.may_fall_back(&e) => {
                    self.note(format_args!("{e}; falling back to direct mode"));
                    self.check_direct(fleet.fingerprint())?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok((direct()?, "direct"))
    }
}

fn read_stdin() -> Result<String> {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).context("cannot read standard input")?;
    Ok(s)
}

/// Direct mode's pieces, printed as they come when streaming.
struct Printer {
    stream: bool,
}

impl PieceSink for Printer {
    fn piece(&mut self, text: String) -> SinkFuture<'_> {
        if self.stream {
            print_piece(&text);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn is_broken(&self) -> bool {
        false
    }

    fn peer_gone(&self) -> bool {
        false
    }
}

fn print_piece(text: &str) {
    if text.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn generate(ctx: &Ctx, args: GenerateArgs) -> Result<()> {
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
        messages: Vec::new(),
        schema: args.schema.as_deref().map(read_schema).transpose()?,
        regex: args.regex,
        choices: args.choices,
        grammar: match &args.grammar {
            Some(file) => Some(
                std::fs::read_to_string(file).with_context(|| format!("cannot read the grammar {}", file.display()))?,
            ),
            None => None,
        },
        logprobs: args.logprobs,
        top_logprobs: args.top_logprobs,
    };
    let started = Instant::now();
    let stream = !args.json;
    let mut on_piece = |t: &str| {
        if stream {
            print_piece(t);
        }
    };
    let method = if stream { "generate_stream" } else { "generate" };
    let route_key =
        params.to_request(&ctx.config).ok().map(|r| cache::generation_route_key(params.model.as_deref(), &r));
    let (result, mode): (GenerateResult, _) = ctx.serve(
        route_key.as_deref(),
        |c| c.call_streaming(method, &params, &mut on_piece),
        || {
            Ok(direct::generate(&ctx.config, &params, &mut Printer { stream })?)
        },
    )?;
    if args.json {
        let elapsed = started.elapsed().as_secs_f64();
        let mut v = serde_json::to_value(&result)?;
        v["mode"] = json!(mode);
        v["timings"] = json!({
            "total_ms": elapsed * 1e3,
            "tokens_per_second": result.generation.token_ids.len() as f64 / elapsed.max(1e-9),
        });
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!();
    }
    Ok(())
}

fn rerank(ctx: &Ctx, args: RerankArgs) -> Result<()> {
    let documents = match args.documents.as_slice() {
        [] => read_stdin()?.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect(),
        many => many.to_vec(),
    };
    let params = RerankParams { query: args.query, documents, model: args.model };
    // A fleet routes a rerank by its query: the same query finds its documents' judgements.
    let route_key = cache::generation_route_key(params.model.as_deref(), &rerank::judgement(&params.query, ""));
    let (result, mode): (RerankResult, _) =
        ctx.serve(Some(&route_key), |c| c.call("rerank", &params), || Ok(direct::rerank(&ctx.config, &params)?))?;
    if args.json {
        let mut v = serde_json::to_value(&result)?;
        v["mode"] = json!(mode);
        println!("{}", serde_json::to_string(&v)?);
    } else {
        for &i in &result.order {
            println!("{:.6}\t{i}\t{}", result.scores[i], params.documents[i]);
        }
    }
    Ok(())
}

fn embed(ctx: &Ctx, args: EmbedArgs) -> Result<()> {
    let texts = match args.texts.as_slice() {
        [] => vec![read_stdin()?],
        [one] if one == "-" => vec![read_stdin()?],
        many => many.to_vec(),
    };
    let params = EmbedParams { texts, model: args.model, mode: args.mode, dimensions: args.dimensions };
    let started = Instant::now();
    let route_key = cache::embedding_route_key(params.model.as_deref(), params.mode.as_deref(), &params.texts);
    let (result, mode): (EmbedResult, _) =
        ctx.serve(Some(&route_key), |c| c.call("embed", &params), || Ok(direct::embed(&ctx.config, &params)?))?;
    if args.json {
        let mut v = serde_json::to_value(&result)?;
        v["mode"] = json!(mode);
        v["timings"] = json!({ "total_ms": started.elapsed().as_secs_f64() * 1e3 });
        println!("{}", serde_json::to_string(&v)?);
    } else {
        match args.format {
            EmbedFormat::Json => {
                for e in &result.embeddings {
                    println!("{}", serde_json::to_string(e)?);
                }
            }
        }
    }
    Ok(())
}

/// The per-user cache of direct mode.
fn user_cache(ctx: &Ctx) -> SharedCache {
    SharedCache::new(direct::user_cache(&ctx.config))
}

fn cache(ctx: &Ctx, command: CacheCommand) -> Result<()> {
    match command {
        CacheCommand::Stats { json } => {
            let (stats, mode): (CacheStats, _) =
                ctx.serve(None, |c| c.call("cache.stats", &json!({})), || Ok(user_cache(ctx).stats()?))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                print!("{}", render_cache_stats(&stats, mode));
            }
        }
        CacheCommand::Clear { which } => {
            let (cleared, _): (Value, _) = ctx.serve(
                None,
                |c| c.call("cache.clear", &json!({ "cache": which })),
                || {
                    let cache = user_cache(ctx);
                    let kind = match which.as_deref() {
                        Some("generation") => Some(CacheKind::Generation),
                        Some(_) => Some(CacheKind::Embedding),
                        None => None,
                    };
                    cache.clear(kind)?;
                    cache.snapshot()?;
                    Ok(json!({ "cleared": which.as_deref().unwrap_or("all") }))
                },
            )?;
            println!("{}", serde_json::to_string_pretty(&cleared)?);
        }
        CacheCommand::Snapshot => {
            let (written, _): (Option<SnapshotInfo>, _) =
                ctx.serve(None, |c| c.call("cache.snapshot", &json!({})), || Ok(user_cache(ctx).snapshot()?))?;
            println!("{}", serde_json::to_string_pretty(&written)?);
        }
    }
    Ok(())
}

fn render_cache_stats(s: &CacheStats, mode: &str) -> String {
    let dir = s.dir.as_ref().map(|d| format!(" in {}", d.display())).unwrap_or_default();
    let mut out = format!("cache ({mode}){dir}\n");
    for (kind, c) in [("generation", &s.generation), ("embedding", &s.embedding)] {
        out.push_str(&format!(
            "{kind:<11} {} entries, {:.1} KiB, {} hits, {} misses, hit rate {:.1}%, {} evictions\n",
            c.entries,
            c.bytes as f64 / 1024.0,
            c.hits,
            c.misses,
            c.hit_rate * 100.0,
            c.evictions
        ));
    }
    match &s.last_snapshot {
        Some(snap) => out.push_str(&format!(
            "snapshot    {} ({} bytes, created {} ms after the epoch)\n",
            snap.path.display(),
            snap.bytes,
            snap.created_unix_ms
        )),
        None => out.push_str("snapshot    none yet\n"),
    }
    out
}

fn run(cli: Cli) -> Result<()> {
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory;
        clap_complete::generate(shell, &mut Cli::command(), "stctl", &mut std::io::stdout());
        return Ok(());
    }
    let ctx = Ctx::new(&cli)?;
    match cli.command {
        Command::Generate(args) => generate(&ctx, args),
        Command::Embed(args) => embed(&ctx, args),
        Command::Rerank(args) => rerank(&ctx, args),
        Command::Status { json } => {
            let status: Status = ctx.ask("status")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", steadytext::daemon::metrics::render_text(&status));
            }
            Ok(())
        }
        Command::Reload => {
            let reloaded: Value = ctx.ask("reload")?;
            println!("reloaded: {}", reloaded["status"].as_str().unwrap_or("?"));
            Ok(())
        }
        Command::Metrics => {
            let metrics: String = ctx.ask("metrics")?;
            print!("{metrics}");
            Ok(())
        }
        Command::Cache(command) => cache(&ctx, command),
        Command::Completions { .. } => Ok(()),
        Command::Pull(args) | Command::Models(ModelsCommand::Pull(args)) => pull(&ctx, args),
        Command::Models(command) => models(&ctx, command),
        Command::Ping => {
            let started = Instant::now();
            let pong: Value = ctx.ask("ping")?;
            println!(
                "pong from steadytextd {} (protocol {}) in {:.3} ms",
                pong["version"].as_str().unwrap_or("?"),
                pong["protocol"],
                started.elapsed().as_secs_f64() * 1e3
            );
            Ok(())
        }
    }
}

fn pull(ctx: &Ctx, args: PullArgs) -> Result<()> {
    let Some(repo) = args.repo.filter(|_| !args.list) else {
        for a in steadytext::hub::ALIASES {
            println!("{:8} {}@{} {}\n         {}", a.name, a.repo, a.revision, a.onnx_file, a.about);
        }
        return Ok(());
    };
    let model_dir = args.model_dir.as_deref().unwrap_or(&ctx.config.model_dir);
    let mut pull = steadytext::hub::Pull::new(&repo, model_dir)?;
    steadytext::store::check_writable(model_dir)?;
    if let Some(revision) = args.revision {
        pull.revision = revision;
    }
    if let Some(onnx_file) = args.onnx_file {
        pull.onnx_file = Some(onnx_file);
    }
    let progress = indicatif::MultiProgress::new();
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let dest = pull.run(&progress)?;
    let digest = steadytext::model::ModelFiles::discover(&dest)?.digest()?;
    println!("{} ({digest})", dest.display());
    Ok(())
}

/// The folders of the models the daemon has loaded; None when no daemon runs.
fn loaded_dirs(ctx: &Ctx) -> Result<Option<Vec<PathBuf>>> {
    let status: Status = match Client::connect_with(&ctx.targets[0], ctx.client.clone()) {
        Ok(mut client) => client.call("status", &json!({}))?,
        Err(ClientError::Unreachable { .. }) => return Ok(None),
        Err(e) => return Err(anyhow::Error::new(e).context("cannot ask the daemon which models it serves")),
    };
    Ok(Some(status.models.iter().map(|m| m.dir.canonicalize().unwrap_or(m.dir.clone())).collect()))
}

fn models(ctx: &Ctx, command: ModelsCommand) -> Result<()> {
    use steadytext::store;
    let folder = |model_dir: Option<PathBuf>| model_dir.unwrap_or_else(|| ctx.config.model_dir.clone());
    match command {
        ModelsCommand::Pull(args) => pull(ctx, args),
        ModelsCommand::List { json, model_dir } => {
            let dir = folder(model_dir);
            let listed = store::list(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
            let loaded = loaded_dirs(ctx).unwrap_or(None).unwrap_or_default();
            let defaults = [&ctx.config.generation_model, &ctx.config.embedding_model, &ctx.config.rerank_model];
            let rows: Vec<(store::Listed, bool, bool)> = listed
                .into_iter()
                .map(|l| {
                    let is_default = defaults.iter().any(|d| **d == l.name || Path::new(d.as_str()) == l.dir);
                    let is_loaded = loaded.contains(&l.dir.canonicalize().unwrap_or(l.dir.clone()));
                    (l, is_default, is_loaded)
                })
                .collect();
            if json {
                let out: Vec<Value> = rows
                    .iter()
                    .map(|(l, d, ld)| {
                        let mut v = serde_json::to_value(l).unwrap_or_default();
                        v["default"] = json!(d);
                        v["loaded"] = json!(ld);
                        v
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&out)?);
                return Ok(());
            }
            println!("{:<32} {:<10} {:>9}  {:<19} {:<7} SOURCE", "NAME", "TASK", "SIZE", "DIGEST", "STATE");
            for (l, is_default, is_loaded) in rows {
                let task = l.task.map(|t| format!("{t:?}").to_lowercase()).unwrap_or_else(|| "?".into());
                let digest: String =
                    l.digest.as_deref().map(|d| d.chars().take(19).collect()).unwrap_or_else(|| "-".into());
                let state = match (is_default, is_loaded) {
                    (_, true) => "loaded",
                    (true, false) => "default",
                    _ => "",
                };
                let source =
                    l.problem.map(|p| format!("unusable: {p}")).or(l.source).unwrap_or_else(|| "(by hand)".into());
                println!(
                    "{:<32} {:<10} {:>8.1}M  {:<19} {:<7} {source}",
                    l.name,
                    task,
                    l.size as f64 / 1048576.0,
                    digest,
                    state
                );
            }
            Ok(())
        }
        ModelsCommand::Verify { name, model_dir } => {
            let dir = folder(model_dir);
            let targets: Vec<PathBuf> = match name {
                Some(n) => vec![dir.join(n)],
                None => store::list(&dir)?.into_iter().map(|l| l.dir).collect(),
            };
            let mut damaged = 0;
            for target in targets {
                let v = store::verify(&target)?;
                if !v.has_manifest {
                    println!("{}: no manifest (not pulled or imported by stctl); nothing to check against", v.name);
                } else if v.changed.is_empty() {
                    println!("{}: ok", v.name);
                } else {
                    damaged += 1;
                    println!("{}: CHANGED since it was recorded: {}", v.name, v.changed.join(", "));
                }
            }
            if damaged > 0 {
                bail!("{damaged} model(s) changed on disk; pull or import them again (`stctl models rm NAME` first)");
            }
            Ok(())
        }
        ModelsCommand::Rm { name, force, model_dir } => {
            let target = folder(model_dir).join(&name);
            if !target.is_dir() {
                bail!("no model folder {}", target.display());
            }
            store::check_writable(target.parent().unwrap_or(&target))?;
            let canonical = target.canonicalize().unwrap_or(target.clone());
            let served = match loaded_dirs(ctx) {
                Ok(loaded) => loaded.unwrap_or_default().contains(&canonical),
                Err(e) if force => {
                    eprintln!("stctl: {e:#}; removing anyway (--force)");
                    false
                }
                Err(e) => return Err(e.context("pass --force to remove it without asking")),
            };
            if served && !force {
                bail!("the daemon serves {name}; configure another model and reload it (`systemctl reload steadytext`), or pass --force");
            }
            store::remove(&target)?;
            println!("removed {}", target.display());
            Ok(())
        }
        ModelsCommand::Import { dir, name, model_dir } => {
            let name = match name {
                Some(n) => n,
                None => dir
                    .canonicalize()
                    .with_context(|| format!("no folder {}", dir.display()))?
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .context("give the model a name with --name")?,
            };
            let dest = store::import(&dir, &folder(model_dir), &name)?;
            let digest = steadytext::model::ModelFiles::discover(&dest)?.digest()?;
            println!("{} ({digest})", dest.display());
            Ok(())
        }
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
