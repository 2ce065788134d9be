//! Reading the configuration: the file, then the environment, then the checks.

use std::path::{Path, PathBuf};

use crate::env;
use crate::error::{Error, Result};
use crate::model::ModelKind;

use super::{Config, Device, CONFIG_FILE, MAX_BATCH_SEQUENCES, MAX_IO_THREADS, MAX_PREFIX_MB, SYSTEM_CONFIG};

impl Config {
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
        let cache_vars: [(&str, &mut usize); 5] = [
            ("STEADYTEXT_PREFIX_CACHE_MB", &mut self.cache.prefix_mb),
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
        let counts =
            [d.queue_depth, d.max_connections, d.max_connections_per_peer, d.max_unauthenticated, d.max_receiving_mb];
        if counts.contains(&0) || d.send_timeout_secs == 0 || d.line_timeout_secs == 0 || d.auth_timeout_secs == 0 {
            return Err(Error::Config(
                "daemon.queue_depth, max_connections, max_connections_per_peer, max_unauthenticated, max_receiving_mb, \
                 send_timeout_secs, line_timeout_secs and auth_timeout_secs must be at least 1"
                    .into(),
            ));
        }
        if d.io_threads > MAX_IO_THREADS {
            return Err(Error::Config(format!(
                "daemon.io_threads = {} is out of range 0..={MAX_IO_THREADS} (0 = a quarter of the cores)",
                d.io_threads
            )));
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
        if self.cache.prefix_mb > MAX_PREFIX_MB {
            return Err(Error::Config(format!(
                "[cache] prefix_mb = {} is out of range 0..={MAX_PREFIX_MB}",
                self.cache.prefix_mb
            )));
        }
        let sdk = &self.compat.steadytext;
        if !(1..=65_536).contains(&sdk.embedding_dimensions) || sdk.max_new_tokens == 0 || sdk.max_connections == 0 {
            return Err(Error::Config(
                "[compat.steadytext] embedding_dimensions (at most 65536), max_new_tokens and max_connections must be \
                 at least 1"
                    .into(),
            ));
        }
        if let Some((name, _)) = sdk.model_aliases.iter().chain(&sdk.size_aliases).find(|(_, folder)| folder.is_empty())
        {
            return Err(Error::Config(format!("[compat.steadytext] alias {name:?} names no model folder")));
        }
        if self.intra_threads > 256 {
            return Err(Error::Config(format!("intra_threads = {} is out of range 0..=256", self.intra_threads)));
        }
        Ok(())
    }
}

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
