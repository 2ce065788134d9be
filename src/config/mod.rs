//! Configuration: built-in defaults, then one TOML file (see [`Config::load`]), then `STEADYTEXT_*`
//! environment variables; command-line flags are applied last by the binaries. Here the schema
//! and its defaults; reading and checking it in `load`, secret files in `secrets`; every
//! environment variable steadytext reads is read in [`crate::env`].

use std::path::PathBuf;

use serde::Deserialize;

use crate::env;
use crate::model::ModelKind;

mod load;
mod secrets;

pub use crate::env::MAX_SECRET_BYTES;
pub(crate) use secrets::{read_private_file, read_secret_file};

/// The system-wide configuration file.
pub const SYSTEM_CONFIG: &str = "/etc/steadytext/steadytext.toml";

/// The configuration file's name in a configuration folder.
const CONFIG_FILE: &str = "steadytext.toml";

/// The system daemon's state folder (its `StateDirectory=`).
const SYSTEM_STATE_DIR: &str = "/var/lib/steadytext";

/// Which ONNX Runtime execution provider runs the models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The CPU execution provider (default).
    #[default]
    Cpu,
    /// The CUDA execution provider; fails loudly when CUDA is unusable (no silent CPU fallback).
    Cuda,
}

/// The whole configuration, one struct; see `man 5 steadytext.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Folder holding model folders (`STEADYTEXT_MODEL_DIR`); default [`default_model_dir`].
    pub model_dir: PathBuf,
    /// Generation model: a folder name under `model_dir` or a path.
    pub generation_model: String,
    /// Embedding model: a folder name under `model_dir` or a path.
    pub embedding_model: String,
    /// Cross-encoder for `rerank` (a sequence-classification export); empty (the default): rerank
    /// with the generation model's yes/no judgement.
    pub rerank_model: String,
    /// Path of `libonnxruntime.so` (`ORT_DYLIB_PATH`); default the packaged one.
    pub onnxruntime: Option<PathBuf>,
    /// Expected sha256 of the library; "any" disables the check.
    pub onnxruntime_sha256: Option<String>,
    /// Execution provider.
    pub device: Device,
    /// CUDA device ordinal when `device = "cuda"`.
    pub cuda_device_id: i32,
    /// Intra-op threads per session; 0 = one per core, at most 4. Results do not depend on it.
    pub intra_threads: usize,
    /// Seed used when a request names none (`STEADYTEXT_DEFAULT_SEED`).
    pub default_seed: u64,
    /// `max_new_tokens` used when a request names none.
    pub max_new_tokens: usize,
    /// Request limits, enforced in both daemon and direct mode.
    pub limits: Limits,
    /// Daemon settings.
    pub daemon: DaemonConfig,
    /// Result cache settings.
    pub cache: CacheConfig,
    /// How many models stay loaded.
    pub models: ModelsConfig,
    /// The fronts for clients written for other servers (`[compat.*]`).
    pub compat: CompatConfig,
}

/// The fronts for clients written for other servers (`[compat]`).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CompatConfig {
    /// SteadyText's daemon protocol (`[compat.steadytext]`, docs/compat.md).
    pub steadytext: SteadytextCompat,
}

/// SteadyText's daemon protocol (`[compat.steadytext]`): how its SDK's names and defaults map to
/// this daemon's.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SteadytextCompat {
    /// SteadyText model names (`model`, e.g. `qwen3-4b`) to model folders; a name not listed is
    /// taken as a folder name.
    pub model_aliases: std::collections::BTreeMap<String, String>,
    /// SteadyText sizes (`size`: `mini`, `small`, `large`) to model folders.
    pub size_aliases: std::collections::BTreeMap<String, String>,
    /// Length of every `embed` vector: a shorter model's is zero-padded, a longer one's cut and
    /// re-normalized (pg_steadytext declares `vector(1024)`).
    pub embedding_dimensions: usize,
    /// `max_new_tokens` of a `generate` that names none (SteadyText's default, 1024), at most
    /// `limits.max_new_tokens`.
    pub max_new_tokens: usize,
    /// Most connections a SteadyText listener holds (its clients are all 127.0.0.1, so the
    /// per-peer limit does not apply to them).
    pub max_connections: usize,
}

impl Default for SteadytextCompat {
    fn default() -> Self {
        SteadytextCompat {
            model_aliases: Default::default(),
            size_aliases: Default::default(),
            embedding_dimensions: 1024,
            max_new_tokens: 1024,
            max_connections: 256,
        }
    }
}

/// Models loaded on demand (`[models]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// Most models of one kind loaded at once; loading another unloads the least recently used.
    pub max_loaded: usize,
    /// A model no request asked for in this many seconds is unloaded (0: never).
    pub keep_alive_secs: u64,
    /// Most memory the loaded models may take together, in MiB, counted as their weight files'
    /// sizes; loading another unloads the least recently used ones first (0: no budget).
    pub max_memory_mb: u64,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig { max_loaded: 2, keep_alive_secs: 0, max_memory_mb: 0 }
    }
}

/// The result cache (`[cache]`); SteadyText's `STEADYTEXT_*_CACHE_*` variables override it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Whether results are cached at all.
    pub enabled: bool,
    /// Most generation entries.
    pub generation_capacity: usize,
    /// Most generation bytes, in MiB.
    pub generation_max_size_mb: usize,
    /// Most embedding entries.
    pub embedding_capacity: usize,
    /// Most embedding bytes, in MiB.
    pub embedding_max_size_mb: usize,
    /// Seconds between snapshots while entries change (0 = only at shutdown and on request).
    pub snapshot_interval_secs: u64,
    /// Prompt-prefix KV each generation model may keep, in MiB (`STEADYTEXT_PREFIX_CACHE_MB`; 0:
    /// off). Prompts that share their first tokens with an earlier one prefill only the rest; it
    /// changes no answer (see `engine::prefix`). Capped at an eighth of the unit's `MemoryMax=`.
    pub prefix_mb: usize,
    /// Snapshot folder; default `$STATE_DIRECTORY` (systemd) or /var/lib/steadytext for the
    /// daemon, the user's cache folder for `stctl`'s direct mode.
    pub dir: Option<PathBuf>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            generation_capacity: 256,
            generation_max_size_mb: 50,
            embedding_capacity: 512,
            embedding_max_size_mb: 100,
            snapshot_interval_secs: 300,
            prefix_mb: DEFAULT_PREFIX_MB,
            dir: None,
        }
    }
}

/// Default `[cache] prefix_mb`: about 11,000 positions of the 135M SmolLM2 (45 KiB each) or 8,000
/// of a 1B Llama 3.2 (64 KiB each), a few long conversations; 2% of this project's 24 GiB machines.
pub const DEFAULT_PREFIX_MB: usize = 512;

/// Upper bound of `[cache] prefix_mb` (1 TiB; keeps the byte count far from overflow).
pub const MAX_PREFIX_MB: usize = 1 << 20;

/// Upper bound of `daemon.io_threads`.
pub const MAX_IO_THREADS: usize = 64;

/// Upper bound of `daemon.batch_sequences` (each sequence holds its KV cache in memory).
pub const MAX_BATCH_SEQUENCES: usize = 64;

/// Settings of `steadytextd` (and where `stctl` looks for it).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// The Unix socket (`STEADYTEXT_SOCKET`); systemd's socket unit uses the same path.
    pub socket: PathBuf,
    /// Requests that may wait per model before new ones are refused as overload.
    pub queue_depth: usize,
    /// Most generations of one model in progress together: their decode steps run as one model
    /// call when the model passes the batch-invariance probe (bit-identical answers either way).
    /// 1 runs one generation at a time.
    pub batch_sequences: usize,
    /// Most MiB the KV caches of one model's concurrent generations may take together; a
    /// generation that would pass it waits until others finish; one that could not fit alone is
    /// refused up front. At most half the cgroup's `memory.max` (systemd's `MemoryMax=`).
    pub batch_kv_mb: usize,
    /// Threads that serve connections (parse, answer, stream), 0 = a quarter of the cores, 1 to
    /// 4 ([`Config::effective_io_threads`]). The models run on threads of their own.
    pub io_threads: usize,
    /// Seconds in-flight requests get to finish after SIGTERM.
    pub shutdown_timeout_secs: u64,
    /// Exit after this many seconds without clients (0 = never); systemd re-activates on demand.
    pub idle_exit_secs: u64,
    /// Most connections served at once by each listener.
    pub max_connections: usize,
    /// Most connections of one user (Unix socket) or one address (TCP, once authenticated).
    pub max_connections_per_peer: usize,
    /// Most TCP connections waiting to present the API key, all TCP listeners together; when
    /// they are that many, the one that waited longest is closed for a newcomer. They take none
    /// of `max_connections` and `max_connections_per_peer`.
    pub max_unauthenticated: usize,
    /// Seconds a TCP connection has to present the API key (its TLS handshake included).
    pub auth_timeout_secs: u64,
    /// Most MiB the requests being received (JSON-RPC lines, HTTP bodies) may take together; a
    /// request that would pass it is refused as overload.
    pub max_receiving_mb: usize,
    /// Seconds a connection may wait between requests before it is closed (0 = no limit).
    pub idle_timeout_secs: u64,
    /// Seconds a client has to finish a request line once it has started it.
    pub line_timeout_secs: u64,
    /// Group whose members may run admin methods (`cache.clear`, `cache.snapshot`) besides root.
    pub admin_group: Option<String>,
    /// Accepted for old configuration files and ignored: a request's stream pieces are buffered
    /// whole (bounded by its `max_new_tokens`), so generation never waits for a client.
    #[serde(rename = "stream_buffer")]
    pub ignored_stream_buffer: Option<serde::de::IgnoredAny>,
    /// Seconds a client may leave an answer or a stream piece unread; then its request is
    /// cancelled and its connection closed (a stalled reader stalls only itself).
    pub send_timeout_secs: u64,
    /// File holding the API key TCP clients must present (`STEADYTEXT_API_KEY_FILE`); the
    /// systemd credential `api-key` takes precedence. Required when a TCP listener is used.
    pub api_key_file: Option<PathBuf>,
    /// PEM certificate chain served on TCP listeners (`STEADYTEXT_TLS_CERT_FILE`); the systemd
    /// credential `tls-cert` takes precedence. With it, every TCP listener speaks TLS, and
    /// non-loopback addresses are allowed.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file` (`STEADYTEXT_TLS_KEY_FILE`; credential `tls-key`).
    pub tls_key_file: Option<PathBuf>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            socket: PathBuf::from("/run/steadytext/steadytext.sock"),
            queue_depth: 64,
            batch_sequences: 16,
            batch_kv_mb: 1024,
            io_threads: 0,
            shutdown_timeout_secs: 30,
            idle_exit_secs: 0,
            max_connections: 256,
            max_connections_per_peer: 64,
            max_unauthenticated: 64,
            auth_timeout_secs: 10,
            max_receiving_mb: 64,
            idle_timeout_secs: 300,
            line_timeout_secs: 30,
            admin_group: None,
            ignored_stream_buffer: None,
            send_timeout_secs: 30,
            api_key_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

/// The models folder when none is configured: `models` in systemd's `STATE_DIRECTORY` (the system
/// unit's /var/lib/steadytext), else for users but root `$XDG_STATE_HOME/steadytext/models`
/// (`~/.local/state/steadytext/models`: the per-user daemon's and the user's direct mode) once it
/// exists, else /var/lib/steadytext/models (readable by the steadytext group: a member's direct
/// mode serves the system's models).
pub fn default_model_dir() -> PathBuf {
    let system = || PathBuf::from(SYSTEM_STATE_DIR).join("models");
    if let Some(state) = env::state_directory() {
        return state.join("models");
    }
    dirs::state_dir()
        .filter(|_| crate::fsutil::euid() != 0)
        .map(|d| d.join("steadytext").join("models"))
        .filter(|user| user.is_dir())
        .unwrap_or_else(system)
}

/// Bounds on what one request may ask for.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest prompt or text, in bytes.
    pub max_input_bytes: usize,
    /// Largest `max_new_tokens` a request may name.
    pub max_new_tokens: usize,
    /// Most texts in one embed request.
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_input_bytes: 256 * 1024, max_new_tokens: 4096, max_batch: 256 }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            model_dir: default_model_dir(),
            generation_model: "SmolLM2-135M-Instruct".into(),
            embedding_model: "all-MiniLM-L6-v2".into(),
            rerank_model: String::new(),
            onnxruntime: None,
            onnxruntime_sha256: None,
            device: Device::Cpu,
            cuda_device_id: 0,
            intra_threads: 0,
            default_seed: 42,
            max_new_tokens: 512,
            limits: Limits::default(),
            daemon: DaemonConfig::default(),
            cache: CacheConfig::default(),
            models: ModelsConfig::default(),
            compat: CompatConfig::default(),
        }
    }
}

impl Config {
    /// The configured model of `kind` (a folder name under `model_dir`, or a path; empty: none).
    pub fn model_name(&self, kind: ModelKind) -> &str {
        match kind {
            ModelKind::Generation => &self.generation_model,
            ModelKind::Embedding => &self.embedding_model,
            ModelKind::Rerank => &self.rerank_model,
        }
    }

    /// This configuration with `name` as the model of `kind` (how a model loaded on a request's
    /// say is loaded and reloaded).
    pub fn for_model(&self, kind: crate::model::ModelKind, name: &str) -> Config {
        let mut config = self.clone();
        let slot = match kind {
            ModelKind::Generation => &mut config.generation_model,
            ModelKind::Embedding => &mut config.embedding_model,
            ModelKind::Rerank => &mut config.rerank_model,
        };
        *slot = name.to_string();
        config
    }

    /// The number of intra-op threads to use.
    pub fn effective_intra_threads(&self) -> usize {
        match self.intra_threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4),
            n => n,
        }
    }

    /// The daemon's connection threads. By default a quarter of the cores, 1 to 4: connection work
    /// is light next to a model's, and on a small machine every thread that wakes beside a model
    /// run preempts one of its intra-op threads (on 2 cores, a second connection thread was woken
    /// by Tokio to look for work whenever the first one got some; `perf sched` showed it
    /// preempting the model's threads).
    pub fn effective_io_threads(&self) -> usize {
        match self.daemon.io_threads {
            0 => (std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) / 4).clamp(1, 4),
            n => n,
        }
    }

    /// Where the daemon keeps cache snapshots: `[cache] dir`, else systemd's `CACHE_DIRECTORY`
    /// (the user unit's), else its `STATE_DIRECTORY` (the system unit's), else /var/lib/steadytext.
    pub fn daemon_state_dir(&self) -> PathBuf {
        self.cache
            .dir
            .clone()
            .or_else(env::cache_directory)
            .or_else(env::state_directory)
            .unwrap_or_else(|| PathBuf::from(SYSTEM_STATE_DIR))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packaged_default_file_parses_to_the_defaults() {
        let c = Config::from_toml(include_str!("../../packaging/steadytext.toml")).unwrap();
        assert_eq!(c.model_dir, Config::default().model_dir);
        assert_eq!(c.cache, CacheConfig::default());
        assert_eq!(c.daemon, DaemonConfig::default());
    }

    #[test]
    fn io_threads_default_to_a_quarter_of_the_cores_and_are_bounded() {
        let c = Config::from_toml("[daemon]\nio_threads = 3").unwrap();
        assert_eq!(c.effective_io_threads(), 3);
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(Config::default().effective_io_threads(), (cores / 4).clamp(1, 4));
        let err = Config::from_toml("[daemon]\nio_threads = 65").unwrap_err().to_string();
        assert!(err.contains("daemon.io_threads = 65 is out of range 0..=64"), "{err}");
    }

    #[test]
    fn an_old_file_with_stream_buffer_still_loads() {
        let c = Config::from_toml("[daemon]\nstream_buffer = 0\nqueue_depth = 3").unwrap();
        assert_eq!(c.daemon.queue_depth, 3);
    }
}
