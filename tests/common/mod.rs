//! Helpers shared by the integration tests: the shared models and a config pointing at them.
#![allow(dead_code)]

use std::path::PathBuf;

use steadytext::config::Config;

/// `../shared/models` (or `STEADYTEXT_MODEL_DIR`).
pub fn models_dir() -> PathBuf {
    std::env::var_os("STEADYTEXT_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/models"))
}

/// A config for the shared models with `threads` intra-op threads.
pub fn config(threads: usize) -> Config {
    let mut c = Config::default();
    c.apply_env(|k| std::env::var(k).ok().filter(|v| !v.is_empty())).expect("test environment");
    c.model_dir = models_dir();
    c.intra_threads = threads;
    c
}

/// Parses a JSON file of the shared models.
pub fn reference(path: &str) -> serde_json::Value {
    let p = models_dir().join(path);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}
