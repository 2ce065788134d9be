//! `stctl`'s command line.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

use steadytext::protocol::CacheKind;

#[derive(Parser)]
#[command(name = "stctl", version, about = "Deterministic text generation and embeddings (steadytext client)")]
pub struct Cli {
    /// Configuration file (default: $STEADYTEXT_CONFIG, else ~/.config/steadytext/steadytext.toml
    /// when present, else /etc/steadytext/steadytext.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Daemon address: unix:PATH, tcp:HOST:PORT, tls:HOST:PORT, http(s)://HOST:PORT (default:
    /// $STEADYTEXT_SOCKET, else your own daemon's $XDG_RUNTIME_DIR/steadytext/steadytext.sock when
    /// it listens, else the configured socket). Repeat it for a fleet of identical daemons:
    /// each request goes to the one its route key picks and on to the next on failure.
    #[arg(long, global = true, value_name = "ADDR")]
    pub socket: Vec<String>,
    /// With several --socket: use only daemons with this engine fingerprint (default: the one
    /// most of them report).
    #[arg(long, global = true, value_name = "ID")]
    pub fingerprint: Option<String>,
    /// With several --socket: run the model in-process when no daemon can answer (off by default:
    /// a fleet's client is rarely where the models are).
    #[arg(long, global = true, conflicts_with = "daemon_only")]
    pub fallback_direct: bool,
    /// Never run models in-process: fail when the daemon is unreachable.
    #[arg(long, global = true, conflicts_with = "no_daemon")]
    pub daemon_only: bool,
    /// Always run models in-process (also STEADYTEXT_DISABLE_DAEMON=1).
    #[arg(long, global = true)]
    pub no_daemon: bool,
    /// Say on stderr which mode served the request.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// File holding the API key for a daemon over TCP (default: $STEADYTEXT_API_KEY).
    #[arg(long, global = true, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// PEM CA certificates to check a TLS daemon's certificate with (default: $STEADYTEXT_CA_FILE,
    /// else the system's store).
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Seconds to wait for each line of the daemon's answer.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 600)]
    pub timeout: u64,
    /// Seconds to wait for a TCP connection.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 5)]
    pub connect_timeout: u64,
    /// Times a request refused as overloaded is retried (after the daemon's retry hint).
    #[arg(long, global = true, value_name = "N", default_value_t = 3)]
    pub retries: u32,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
pub struct RerankArgs {
    /// What the documents are judged against.
    pub query: String,
    /// The documents.
    pub documents: Vec<String>,
    /// Generation model (name under the model folder, or a path).
    #[arg(long)]
    pub model: Option<String>,
    /// Print the JSON result (scores in input order, the order, model digest).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct PullArgs {
    /// Repository, as owner/name, or a recommended model: small, large, embed, rerank
    /// (`stctl models pull --list` shows what each is).
    #[arg(required_unless_present = "list")]
    pub repo: Option<String>,
    /// Branch, tag or commit (default: main; a recommended model's pinned commit).
    #[arg(long)]
    pub revision: Option<String>,
    /// ONNX file to take (default: model.onnx, else the CPU variant: onnx/model.onnx,
    /// onnx/model_q4.onnx, onnx/model_int8.onnx, onnx/model_quantized.onnx...). One in a
    /// subfolder with a genai_config.json pulls that subfolder as the model folder.
    #[arg(long)]
    pub onnx_file: Option<String>,
    /// List the recommended models and what each is pinned to, and pull nothing.
    #[arg(long)]
    pub list: bool,
    /// Where to put it (default: the configured model folder).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum ModelsCommand {
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
pub enum CacheCommand {
    /// Entries, bytes, hits, misses, hit rate, last snapshot.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove cached results.
    Clear {
        /// Which cache; both when absent.
        #[arg(value_parser = cache_kind())]
        which: Option<CacheKind>,
    },
    /// Write a snapshot now.
    Snapshot,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// The prompt.
    pub prompt: Option<String>,
    /// Seed (default 42, or STEADYTEXT_DEFAULT_SEED).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Most tokens to generate (default 512).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Generation model (name under the model folder, or a path).
    #[arg(long)]
    pub model: Option<String>,
    /// Stop before this string (repeatable).
    #[arg(long = "stop", value_name = "TEXT")]
    pub stop: Vec<String>,
    /// Sampling temperature (0 = greedy, the default).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Top-k for sampling.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Top-p for sampling.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Print a JSON object with the text, token ids, model digest and timings.
    #[arg(long)]
    pub json: bool,
    /// Use the prompt verbatim, without the model's chat template (a plain completion).
    #[arg(long)]
    pub raw: bool,
    /// Let a model whose chat template has a thinking switch (Qwen3's) think before it answers
    /// (off by default).
    #[arg(long, conflicts_with = "raw")]
    pub think: bool,
    /// The answer is JSON valid against this JSON Schema (a file, or the schema itself).
    #[arg(long, value_name = "FILE|JSON", group = "constraint")]
    pub schema: Option<String>,
    /// The answer matches this regular expression.
    #[arg(long, value_name = "RE", group = "constraint")]
    pub regex: Option<String>,
    /// The answer is exactly one of these (comma-separated).
    #[arg(long, value_name = "A,B,...", value_delimiter = ',', group = "constraint")]
    pub choices: Option<Vec<String>>,
    /// The answer is a string of this Lark grammar (a file).
    #[arg(long, value_name = "FILE", group = "constraint")]
    pub grammar: Option<PathBuf>,
    /// Report each token's log-probability (in the --json output).
    #[arg(long, requires = "json")]
    pub logprobs: bool,
    /// With --logprobs: also the N most likely tokens at each step (at most 20).
    #[arg(long, value_name = "N", requires = "logprobs")]
    pub top_logprobs: Option<usize>,
    /// Functions the model may call: a JSON file holding a list of tools (`{"name",
    /// "description", "parameters"}`, or OpenAI's `{"type": "function", "function": {...}}`).
    /// Calls print as one JSON line each after the text.
    #[arg(long, value_name = "FILE")]
    pub tools: Option<PathBuf>,
    /// With --tools: auto (default), none, required, or the name of the tool to call.
    #[arg(long, value_name = "CHOICE", requires = "tools")]
    pub tool_choice: Option<String>,
    /// With --tools: at most one call per answer.
    #[arg(long, requires = "tools")]
    pub no_parallel_tool_calls: bool,
}

#[derive(Args)]
pub struct EmbedArgs {
    /// Texts to embed.
    pub texts: Vec<String>,
    /// Embedding model (name under the model folder, or a path).
    #[arg(long)]
    pub model: Option<String>,
    /// Print a JSON object with the vectors, model digest and timings.
    #[arg(long)]
    pub json: bool,
    /// `query`, `passage`, or another prompt name of the model (its prompt goes before each text).
    #[arg(long)]
    pub mode: Option<String>,
    /// Keep this many leading dimensions, re-normalized (Matryoshka models).
    #[arg(long, value_name = "N")]
    pub dimensions: Option<usize>,
}

/// `generation` or `embedding`.
fn cache_kind() -> impl TypedValueParser<Value = CacheKind> {
    PossibleValuesParser::new(["generation", "embedding"]).map(|s| {
        if s == "generation" {
            CacheKind::Generation
        } else {
            CacheKind::Embedding
        }
    })
}
