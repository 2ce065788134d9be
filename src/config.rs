//! Configuration: built-in defaults, then one TOML file (see [`Config::load`]), then `STEADYTEXT_*`
//! environment variables; command-line flags are applied last by the binaries.
//! Every environment variable steadytext reads is read here (see [`env`]).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::model::ModelKind;

/// The system-wide configuration file.
pub const SYSTEM_CONFIG: &str = "/etc/steadytext/steadytext.toml";

/// The configuration file's name in a configuration folder.
const CONFIG_FILE: &str = "steadytext.toml";

/// The system daemon's state folder (its `StateDirectory=`).
const SYSTEM_STATE_DIR: &str = "/var/lib/steadytext";

/// Largest key, certificate or credential file read, in bytes.
pub use crate::env::MAX_SECRET_BYTES;

/// Reads a private file (an API key, a TLS private key) after checking that other users can
/// neither read nor change it (as ssh does for private keys): the owner and its group only.
pub(crate) fn read_private_file(path: &Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.permissions().mode() & 0o777;
    if mode & 0o027 != 0 {
        return Err(Error::Config(format!(
            "{} is open to other users (mode {mode:04o}): it holds a secret; `chmod 600` it (or 640 for the \
             daemon's group), or pass it as a systemd credential",
            path.display()
        )));
    }
    read_secret_file(path)
}

/// Reads a key or certificate file of at most [`MAX_SECRET_BYTES`].
pub(crate) fn read_secret_file(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_SECRET_BYTES + 1), &mut text)
        .map_err(|e| Error::io(path, e))?;
    if text.len() as u64 > MAX_SECRET_BYTES {
        return Err(Error::Config(format!("{} is larger than {MAX_SECRET_BYTES} bytes", path.display())));
    }
    Ok(text)
}

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
            dir: None,
        }
    }
}

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
    pub stream_buffer: usize,
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
            stream_buffer: 16,
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

    /// Loads the configuration: `path` if given (must exist), else `STEADYTEXT_CONFIG`, else the
    /// first present of `steadytext.toml` in systemd's `CONFIGURATION_DIRECTORY`, the user's
    /// `$XDG_CONFIG_HOME/steadytext/steadytext.toml` and the system file; then applies the
    /// environment.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let explicit = path.map(Path::to_path_buf).or_else(|| env::get("STEADYTEXT_CONFIG").map(PathBuf::from));
        let mut config = match explicit.or_else(Self::found_file) {
            Some(p) => Self::from_file(&p)?,
            None => Config::default(),
        };
        config.apply_env(env::get)?;
        config.prefer_pulled_defaults();
        Ok(config)
    }

    /// A fresh install has only what `stctl models pull small|embed|rerank` put there: where a
    /// kind's model is the built-in default and its folder is absent, the recommended model's
    /// folder (named after its alias) is the default when present.
    fn prefer_pulled_defaults(&mut self) {
        let builtin = Config::default();
        let dir = self.model_dir.clone();
        let absent = |name: &str| name.is_empty() || !dir.join(name).is_dir();
        let slots = [
            (&mut self.generation_model, builtin.generation_model, ModelKind::Generation.recommended_alias()),
            (&mut self.embedding_model, builtin.embedding_model, ModelKind::Embedding.recommended_alias()),
            (&mut self.rerank_model, builtin.rerank_model, ModelKind::Rerank.recommended_alias()),
        ];
        for (slot, default, alias) in slots {
            if *slot == default && absent(&default) && dir.join(alias).is_dir() {
                *slot = alias.to_string();
            }
        }
    }

    /// The configuration file [`Config::load`] reads when none is named.
    fn found_file() -> Option<PathBuf> {
        let service = env::configuration_directory().map(|d| d.join(CONFIG_FILE));
        let user = dirs::config_dir().map(|d| d.join("steadytext").join(CONFIG_FILE));
        service.into_iter().chain(user).chain([PathBuf::from(SYSTEM_CONFIG)]).find(|p| p.exists())
    }

    /// Parses one TOML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Parses TOML text; unknown keys are errors.
    pub fn from_toml(text: &str) -> Result<Self> {
        let config: Config = toml::from_str(text).map_err(|e| Error::Config(e.to_string().trim().to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Applies `STEADYTEXT_*` variables and `ORT_DYLIB_PATH`, read through `get`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<()> {
        if let Some(v) = get("STEADYTEXT_MODEL_DIR") {
            self.model_dir = PathBuf::from(v);
        }
        if let Some(v) = get("STEADYTEXT_GENERATION_MODEL") {
            self.generation_model = v;
        }
        if let Some(v) = get("STEADYTEXT_EMBEDDING_MODEL") {
            self.embedding_model = v;
        }
        if let Some(v) = get("STEADYTEXT_RERANK_MODEL") {
            self.rerank_model = v;
        }
        let files = [
            ("STEADYTEXT_API_KEY_FILE", &mut self.daemon.api_key_file),
            ("STEADYTEXT_TLS_CERT_FILE", &mut self.daemon.tls_cert_file),
            ("STEADYTEXT_TLS_KEY_FILE", &mut self.daemon.tls_key_file),
        ];
        for (key, slot) in files {
            if let Some(v) = get(key) {
                *slot = Some(PathBuf::from(v));
            }
        }
        if let Some(v) = get("ORT_DYLIB_PATH") {
            self.onnxruntime = Some(PathBuf::from(v));
        }
        if let Some(v) = get("STEADYTEXT_DEFAULT_SEED") {
            self.default_seed = parse_env("STEADYTEXT_DEFAULT_SEED", &v)?;
        }
        if let Some(v) = get("STEADYTEXT_MAX_NEW_TOKENS") {
            self.max_new_tokens = parse_env("STEADYTEXT_MAX_NEW_TOKENS", &v)?;
        }
        let cache_vars: [(&str, &mut usize); 4] = [
            ("STEADYTEXT_GENERATION_CACHE_CAPACITY", &mut self.cache.generation_capacity),
            ("STEADYTEXT_GENERATION_CACHE_MAX_SIZE_MB", &mut self.cache.generation_max_size_mb),
            ("STEADYTEXT_EMBEDDING_CACHE_CAPACITY", &mut self.cache.embedding_capacity),
            ("STEADYTEXT_EMBEDDING_CACHE_MAX_SIZE_MB", &mut self.cache.embedding_max_size_mb),
        ];
        for (key, slot) in cache_vars {
            if let Some(v) = get(key) {
                *slot = parse_env(key, &v)?;
            }
        }
        if let Some(v) = get("STEADYTEXT_DEVICE") {
            self.device = match v.as_str() {
                "cpu" => Device::Cpu,
                "cuda" => Device::Cuda,
                other => return Err(Error::Config(format!("STEADYTEXT_DEVICE={other:?} is not one of cpu, cuda"))),
            };
        }
        self.validate()
    }

    /// Checks value ranges.
    pub fn validate(&self) -> Result<()> {
        if self.models.max_loaded == 0 {
            return Err(Error::Config("[models] max_loaded must be at least 1".into()));
        }
        if self.max_new_tokens == 0 {
            return Err(Error::Config("max_new_tokens must be at least 1".into()));
        }
        if self.max_new_tokens > self.limits.max_new_tokens {
            return Err(Error::Config(format!(
                "max_new_tokens = {} exceeds limits.max_new_tokens = {}",
                self.max_new_tokens, self.limits.max_new_tokens
            )));
        }
        let d = &self.daemon;
        let counts = [
            d.queue_depth,
            d.max_connections,
            d.max_connections_per_peer,
            d.max_unauthenticated,
            d.max_receiving_mb,
            d.stream_buffer,
        ];
        if counts.contains(&0) || d.send_timeout_secs == 0 || d.line_timeout_secs == 0 || d.auth_timeout_secs == 0 {
            return Err(Error::Config(
                "daemon.queue_depth, max_connections, max_connections_per_peer, max_unauthenticated, max_receiving_mb, \
                 stream_buffer, \
                 send_timeout_secs, line_timeout_secs and auth_timeout_secs must be at least 1"
                    .into(),
            ));
        }
        if d.batch_kv_mb == 0 {
            return Err(Error::Config("daemon.batch_kv_mb must be at least 1".into()));
        }
        if !(1..=MAX_BATCH_SEQUENCES).contains(&d.batch_sequences) {
            return Err(Error::Config(format!(
                "daemon.batch_sequences = {} is out of range 1..={MAX_BATCH_SEQUENCES}",
                d.batch_sequences
            )));
        }
        if self.limits.max_batch == 0 || self.limits.max_input_bytes == 0 {
            return Err(Error::Config("limits must be at least 1".into()));
        }
        if self.intra_threads > 256 {
            return Err(Error::Config(format!("intra_threads = {} is out of range 0..=256", self.intra_threads)));
        }
        Ok(())
    }

    /// The number of intra-op threads to use.
    pub fn effective_intra_threads(&self) -> usize {
        match self.intra_threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4),
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

pub use crate::env;

fn parse_env<T: std::str::FromStr>(key: &str, value: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    value.trim().parse().map_err(|e| Error::Config(format!("{key}={value:?} is invalid: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packaged_default_file_parses_to_the_defaults() {
        let c = Config::from_toml(include_str!("../packaging/steadytext.toml")).unwrap();
        assert_eq!(c.model_dir, Config::default().model_dir);
        assert_eq!(c.cache, CacheConfig::default());
        assert_eq!(c.daemon, DaemonConfig::default());
    }

    #[test]
    fn a_fresh_install_defaults_to_the_recommended_models_it_pulled() {
        let dir = tempfile::tempdir().unwrap();
        let settle = |c: Config| {
            let mut c = Config { model_dir: dir.path().to_path_buf(), ..c };
            c.prefer_pulled_defaults();
            (c.generation_model, c.embedding_model, c.rerank_model)
        };
        let builtin = Config::default();
        let none = (builtin.generation_model.clone(), builtin.embedding_model.clone(), String::new());
        assert_eq!(
            settle(Config::default()),
            none,
            "nothing pulled: the built-in names stay (and say what is missing)"
        );
        for alias in ["small", "embed", "rerank"] {
            std::fs::create_dir(dir.path().join(alias)).unwrap();
        }
        assert_eq!(settle(Config::default()), ("small".into(), "embed".into(), "rerank".into()));
        std::fs::create_dir(dir.path().join(&builtin.generation_model)).unwrap();
        assert_eq!(settle(Config::default()).0, builtin.generation_model, "the built-in model, when there, stays");
        let chosen = Config { embedding_model: "mine".into(), rerank_model: "theirs".into(), ..Config::default() };
        assert_eq!(
            settle(chosen),
            (builtin.generation_model, "mine".into(), "theirs".into()),
            "a configured name stays"
        );
    }

    #[test]
    fn unknown_key_is_rejected() {
        let err = Config::from_toml("model_dirr = \"/x\"").unwrap_err().to_string();
        assert!(err.contains("model_dirr"), "{err}");
    }

    #[test]
    fn env_overrides_file() {
        let mut c = Config::from_toml("default_seed = 7\nmodel_dir = \"/a\"").unwrap();
        assert_eq!(c.default_seed, 7);
        c.apply_env(|k| (k == "STEADYTEXT_DEFAULT_SEED").then(|| "9".to_string())).unwrap();
        assert_eq!(c.default_seed, 9);
        assert_eq!(c.model_dir, PathBuf::from("/a"));
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let mut c = Config::default();
        let err = c.apply_env(|k| (k == "STEADYTEXT_DEFAULT_SEED").then(|| "x".to_string())).unwrap_err();
        assert!(err.to_string().contains("STEADYTEXT_DEFAULT_SEED"));
    }
}
