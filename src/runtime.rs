//! Locating, verifying and loading the ONNX Runtime shared library, once per process.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;

use crate::error::{Error, Result};

pub use crate::version::{INSTALLED_LIBRARY, ORT_VERSION, PINNED_SHA256};

/// How the library file is chosen and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSpec {
    /// Path of `libonnxruntime.so`.
    pub library: PathBuf,
    /// Expected sha256 of that file; `None` skips the check (explicit opt-out only).
    pub sha256: Option<String>,
}

impl RuntimeSpec {
    /// The library `config` names (`onnxruntime`, `onnxruntime_sha256`), else the defaults.
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self::resolve(config.onnxruntime.as_deref(), config.onnxruntime_sha256.as_deref())
    }

    /// Picks the library: configured path, then `ORT_DYLIB_PATH`, then the installed default.
    pub fn resolve(configured: Option<&Path>, configured_sha256: Option<&str>) -> Self {
        let library = configured
            .map(Path::to_path_buf)
            .or_else(crate::env::ort_dylib_path)
            .unwrap_or_else(|| PathBuf::from(INSTALLED_LIBRARY));
        let sha256 = match configured_sha256 {
            Some("any") => None,
            Some(other) => Some(other.to_ascii_lowercase()),
            None => Some(PINNED_SHA256.to_string()),
        };
        RuntimeSpec { library, sha256 }
    }
}

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
static LOADED_FROM: Mutex<Option<RuntimeSpec>> = Mutex::new(None);

/// Loads ONNX Runtime from `spec` (first call only) and returns the process-wide environment.
///
/// A later call naming another library is an error: a process can hold only one ONNX Runtime.
pub fn environment(spec: &RuntimeSpec) -> Result<&'static Environment> {
    let mut loaded = LOADED_FROM.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(env) = ENVIRONMENT.get() {
        if loaded.as_ref().is_some_and(|l| l.library != spec.library) {
            return Err(runtime_error(
                spec,
                "another ONNX Runtime library is already loaded in this process; restart to switch",
            ));
        }
        return Ok(env);
    }
    verify_file(spec)?;
    let builder = ort::init_from(&spec.library).map_err(|e| runtime_error(spec, e.to_string()))?;
    let env = builder.with_name("steadytext").build().map_err(|e| runtime_error(spec, e.to_string()))?;
    *loaded = Some(spec.clone());
    Ok(ENVIRONMENT.get_or_init(|| env))
}

fn runtime_error(spec: &RuntimeSpec, reason: impl Into<String>) -> Error {
    Error::Runtime { path: spec.library.clone(), reason: reason.into() }
}

fn verify_file(spec: &RuntimeSpec) -> Result<()> {
    std::fs::File::open(&spec.library).map_err(|e| runtime_error(spec, format!("cannot open: {e}")))?;
    let Some(expected) = &spec.sha256 else { return Ok(()) };
    let (_, actual) =
        crate::fsutil::sha256_file(&spec.library).map_err(|e| runtime_error(spec, format!("cannot read: {e}")))?;
    if &actual != expected {
        return Err(runtime_error(
            spec,
            format!("sha256 is {actual}, expected {expected} (a different build; set `onnxruntime_sha256` in the config to its sha256, or \"any\", to accept it)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_names_path_and_fix() {
        let spec = RuntimeSpec { library: "/nonexistent/libonnxruntime.so".into(), sha256: None };
        let msg = verify_file(&spec).unwrap_err().to_string();
        assert!(msg.contains("/nonexistent/libonnxruntime.so"), "{msg}");
        assert!(msg.contains("fetch-onnxruntime.sh"), "{msg}");
    }

    #[test]
    fn wrong_hash_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libonnxruntime.so");
        std::fs::write(&lib, b"not a library").unwrap();
        let spec = RuntimeSpec { library: lib, sha256: Some(PINNED_SHA256.into()) };
        let msg = verify_file(&spec).unwrap_err().to_string();
        assert!(msg.contains("sha256 is"), "{msg}");
    }

    #[test]
    fn any_disables_the_pin() {
        let spec = RuntimeSpec::resolve(Some(Path::new("/x.so")), Some("any"));
        assert_eq!(spec.sha256, None);
        assert_eq!(spec.library, PathBuf::from("/x.so"));
    }
}
