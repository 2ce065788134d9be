//! Model folders in the Hugging Face export layout: finding the files, reading their configs,
//! and the model's identity (a digest of everything that determines its outputs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Files of one model folder, found and checked for presence.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// Display name (the folder name).
    pub name: String,
    /// The model folder.
    pub dir: PathBuf,
    /// The ONNX graph.
    pub onnx: PathBuf,
    /// `tokenizer.json`.
    pub tokenizer: PathBuf,
}

/// What a model does: the kind of request it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Text generation.
    Generation,
    /// Embeddings.
    Embedding,
    /// A cross-encoder for `rerank`.
    Rerank,
}

impl ModelKind {
    /// Lower-case name for logs and status output.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Generation => "generation",
            ModelKind::Embedding => "embedding",
            ModelKind::Rerank => "rerank",
        }
    }

    /// Its name with an article, for messages ("an embedding").
    pub fn with_article(self) -> &'static str {
        match self {
            ModelKind::Generation => "a generation",
            ModelKind::Embedding => "an embedding",
            ModelKind::Rerank => "a rerank",
        }
    }

    /// The alias of the recommended model of this kind (`stctl models pull ALIAS`).
    pub fn recommended_alias(self) -> &'static str {
        match self {
            ModelKind::Generation => "small",
            ModelKind::Embedding => "embed",
            ModelKind::Rerank => "rerank",
        }
    }
}

/// Identity of a loaded model, shown to users and part of every cache key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Folder name.
    pub name: String,
    /// `sha256:...` over weights, tokenizer and configs.
    pub digest: String,
    /// Where it was loaded from.
    pub dir: PathBuf,
}

impl ModelInfo {
    /// Whether a request's `model` field names this model (its folder name or its path).
    pub fn answers_to(&self, requested: &str) -> bool {
        requested == self.name || Some(requested) == self.dir.to_str()
    }
}

/// Configuration files of a model folder (besides the ONNX graph and `tokenizer.json`). Their
/// content, when present, changes the model's outputs: they enter its digest, and `stctl pull`
/// fetches them.
pub const CONFIG_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "modules.json",
    "1_Pooling/config.json",
    "genai_config.json",
];

/// Turns a model name or path into a folder: an existing path is taken as is, otherwise the name
/// is looked up under `model_dir`.
pub fn resolve_dir(model_dir: &Path, name_or_path: &str) -> Result<PathBuf> {
    if name_or_path.is_empty() {
        return Err(Error::Config("empty model name".into()));
    }
    let as_path = Path::new(name_or_path);
    if as_path.is_absolute() || name_or_path.starts_with('.') || as_path.is_dir() {
        return Ok(as_path.to_path_buf());
    }
    let candidate = model_dir.join(name_or_path);
    match std::fs::metadata(&candidate) {
        Ok(meta) if meta.is_dir() => return Ok(candidate),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(permission_denied(name_or_path, &candidate))
        }
        _ => {}
    }
    Err(Error::model(
        name_or_path,
        format!(
            "no such model folder {}; put the model's files there, point STEADYTEXT_MODEL_DIR (or `model_dir` in the config) at the folder holding it, or pass a path",
            candidate.display()
        ),
    ))
}

/// A model folder this user may not read: said as such, with the usual fix.
fn permission_denied(name: &str, dir: &Path) -> Error {
    Error::model(
        name,
        format!(
            "permission denied reading {}; model folders are readable by the steadytext group: join it (`usermod -aG steadytext $USER`, then log in again) or ask its owner",
            dir.display()
        ),
    )
}

impl ModelFiles {
    /// What the folder's configs say the model does: a sentence-transformers layout is an
    /// embedding model (decoders exported as embedders included), an onnxruntime-genai folder a
    /// generation model; else its architecture or family says; None when nothing does.
    pub fn kind(&self) -> Result<Option<ModelKind>> {
        let files = self;
        let sentence_transformers =
            ["1_Pooling/config.json", "sentence_bert_config.json", "modules.json", "config_sentence_transformers.json"];
        if sentence_transformers.iter().any(|f| files.dir.join(f).is_file()) {
            return Ok(Some(ModelKind::Embedding));
        }
        if files.json("genai_config.json")?.is_some() {
            return Ok(Some(ModelKind::Generation));
        }
        Ok(kind_from_config(&files.json("config.json")?.unwrap_or_default()))
    }

    /// Finds the files of the model folder `dir`.
    pub fn discover(dir: &Path) -> Result<Self> {
        let name =
            dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| dir.display().to_string());
        match std::fs::read_dir(dir) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Err(permission_denied(&name, dir)),
            Err(_) => return Err(Error::model(&name, format!("{} is not a folder", dir.display()))),
        }
        let onnx = match genai_decoder_file(dir, &name)? {
            Some(file) => file,
            None => find_onnx(dir, &name)?,
        };
        let tokenizer = dir.join("tokenizer.json");
        if !tokenizer.is_file() {
            return Err(Error::model(
                &name,
                format!("{} is missing; copy the model's tokenizer.json there", tokenizer.display()),
            ));
        }
        Ok(ModelFiles { name, dir: dir.to_path_buf(), onnx, tokenizer })
    }

    /// Reads a JSON file of the folder, `None` when absent.
    pub fn json(&self, relative: &str) -> Result<Option<Value>> {
        let path = self.dir.join(relative);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::model(&self.name, format!("{} is not valid JSON: {e}", path.display())))
    }

    /// The ONNX graph and its external data files: those the graph names (beside it, under any
    /// name), and any file named like one (`model.onnx_data`, `model.onnx.data`...).
    fn weight_files(&self) -> Vec<PathBuf> {
        let Some(parent) = self.onnx.parent() else { return vec![self.onnx.clone()] };
        let stem = self.onnx.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let mut extra: Vec<PathBuf> = std::fs::read_dir(parent)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        let f = p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                        f != stem && f.starts_with(&stem) && (f.contains("_data") || f.contains(".data"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        // An unreadable graph adds nothing here: loading it reports the error.
        extra.extend(crate::onnx_proto::external_data(&self.onnx).unwrap_or_default().iter().map(|l| parent.join(l)));
        extra.sort();
        extra.dedup();
        let mut files = vec![self.onnx.clone()];
        files.extend(extra);
        files
    }

    /// Bytes of its weight files on disk: what loading it takes in memory, about.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_files().iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum()
    }

    /// Every file the digest covers: the weights, the tokenizer and the config files present.
    pub fn digested_files(&self) -> Vec<PathBuf> {
        let mut files = self.weight_files();
        files.push(self.tokenizer.clone());
        files.extend(CONFIG_FILES.iter().map(|f| self.dir.join(f)).filter(|p| p.is_file()));
        files
    }

    /// The model's identity: `sha256:` + hex digest over the weights, the tokenizer and every
    /// config file that shapes its outputs (names, sizes and contents, in a fixed order).
    pub fn digest(&self) -> Result<String> {
        let mut manifest = Sha256::new();
        let files = self.digested_files();
        for path in files {
            let rel = path.strip_prefix(&self.dir).unwrap_or(&path).to_string_lossy().into_owned();
            let (len, hash) = hash_file(&path)?;
            manifest.update(format!("{rel}\0{len}\0{hash}\n").as_bytes());
        }
        Ok(format!("sha256:{}", hex::encode(manifest.finalize())))
    }
}

/// The part of a `config.json` that describes the decoder: its `text_config` when it nests one
/// (multimodal families such as Gemma 3 and Qwen2.5-VL), else the whole file.
pub fn decoder_config(config: &Value) -> &Value {
    config.get("text_config").filter(|t| t.is_object()).unwrap_or(config)
}

/// What a `config.json` says the model does: its architecture, else its family (its
/// `text_config`'s when the top level names none we know); None when neither says.
pub fn kind_from_config(config: &Value) -> Option<ModelKind> {
    let architectures: Vec<String> =
        config.get("architectures").and_then(|a| serde_json::from_value(a.clone()).ok()).unwrap_or_default();
    let by_architecture = architectures.iter().find_map(|a| {
        if a.ends_with("ForCausalLM") || a.ends_with("LMHeadModel") {
            Some(ModelKind::Generation)
        } else if a.ends_with("ForSequenceClassification") {
            Some(ModelKind::Rerank)
        } else if a.ends_with("Model") {
            Some(ModelKind::Embedding)
        } else {
            None
        }
    });
    // Exports without `architectures` still name their family.
    let by_family = config.get("model_type").and_then(|t| t.as_str()).and_then(|t| {
        const DECODERS: &[&str] = &[
            "llama",
            "mistral",
            "qwen2",
            "qwen3",
            "phi",
            "phi3",
            "gemma",
            "gemma2",
            "gemma3",
            "gemma3_text",
            "granite",
            "olmo",
            "smollm3",
        ];
        const ENCODERS: &[&str] =
            &["bert", "roberta", "xlm-roberta", "mpnet", "distilbert", "nomic_bert", "modernbert"];
        if DECODERS.contains(&t) {
            Some(ModelKind::Generation)
        } else if ENCODERS.contains(&t) {
            Some(ModelKind::Embedding)
        } else {
            None
        }
    });
    let nested = || match decoder_config(config) {
        text if !std::ptr::eq(text, config) => kind_from_config(text),
        _ => None,
    };
    by_architecture.or(by_family).or_else(nested)
}

/// Why steadytext cannot serve an onnxruntime-genai folder whose `genai_config.json` is `genai`:
/// sliding-window layers with a windowed KV cache (Gemma 2/3, gpt-oss), which steadytext does
/// not manage. None when nothing in it says so.
pub fn genai_windowed(genai: &Value) -> Option<String> {
    let window = genai.pointer("/model/decoder/sliding_window").filter(|w| !w.is_null())?;
    Some(format!(
        "genai_config.json sets model.decoder.sliding_window ({window}): its sliding layers keep a windowed KV cache, which steadytext does not manage (it gives every layer a full-length buffer); use an export without sliding-window layers"
    ))
}

/// The decoder file `genai_config.json` names (onnxruntime-genai layout), if the folder has one.
fn genai_decoder_file(dir: &Path, name: &str) -> Result<Option<PathBuf>> {
    let path = dir.join("genai_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| Error::model(name, format!("{} is not valid JSON: {e}", path.display())))?;
    let Some(file) = json.pointer("/model/decoder/filename").and_then(Value::as_str) else {
        return Ok(None);
    };
    let relative = Path::new(file);
    if relative.is_absolute() || relative.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err(Error::model(
            name,
            format!("{}: model.decoder.filename {file:?} must be a file inside the model folder", path.display()),
        ));
    }
    let onnx = dir.join(relative);
    if !onnx.is_file() {
        return Err(Error::model(
            name,
            format!("{} names {file:?} as the decoder, but {} is missing", path.display(), onnx.display()),
        ));
    }
    Ok(Some(onnx))
}

fn find_onnx(dir: &Path, name: &str) -> Result<PathBuf> {
    for candidate in ["model.onnx", "onnx/model.onnx"] {
        let p = dir.join(candidate);
        if p.is_file() {
            return Ok(p);
        }
    }
    let onnx_dir = dir.join("onnx");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&onnx_dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let f = p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                    f.starts_with("model") && f.ends_with(".onnx")
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::model(
            name,
            format!(
                "no model.onnx in {} (nor onnx/model*.onnx); copy the ONNX export of the model there",
                dir.display()
            ),
        )),
        _ => Err(Error::model(
            name,
            format!(
                "several ONNX files in {}: {}; keep one, or link the wanted one as model.onnx",
                onnx_dir.display(),
                found.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// A file's length and sha256, remembered per (path, length, mtime, inode) within the process:
/// loading a model after computing its identity (direct mode, reload checks) hashes it once.
fn hash_file(path: &Path) -> Result<(u64, String)> {
    use std::os::unix::fs::MetadataExt;
    type Memo = Mutex<HashMap<(PathBuf, u64, i64, i64, u64), (u64, String)>>;
    static MEMO: OnceLock<Memo> = OnceLock::new();
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let key = (path.to_path_buf(), meta.len(), meta.mtime(), meta.mtime_nsec(), meta.ino());
    let memo = MEMO.get_or_init(Memo::default);
    if let Some(hit) = memo.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(hit.clone());
    }
    let hashed = crate::fsutil::sha256_file(path).map_err(|e| Error::io(path, e))?;
    memo.lock().unwrap_or_else(|p| p.into_inner()).insert(key, hashed.clone());
    Ok(hashed)
}

/// A `u32` or list of `u32` from a JSON value (`eos_token_id` may be either).
pub fn token_ids(value: Option<&Value>) -> Vec<u32> {
    match value {
        Some(Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
        Some(Value::Array(items)) => items.iter().filter_map(|v| v.as_u64()).map(|v| v as u32).collect(),
        _ => Vec::new(),
    }
}

/// Appends the ids of `value` (see [`token_ids`]) that `ids` does not hold yet.
pub fn push_new_ids(ids: &mut Vec<u32>, value: Option<&Value>) {
    for id in token_ids(value) {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
}

/// A required unsigned integer field of a config JSON.
pub fn usize_field(model: &str, json: &Value, key: &str) -> Result<usize> {
    json.get(key)
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .ok_or_else(|| Error::model(model, format!("config.json lacks the integer field `{key}`")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, f.as_bytes()).unwrap();
        }
        dir
    }

    #[test]
    fn finds_onnx_in_subfolder() {
        let dir = folder(&["onnx/model_quantized.onnx", "tokenizer.json"]);
        let files = ModelFiles::discover(dir.path()).unwrap();
        assert!(files.onnx.ends_with("onnx/model_quantized.onnx"));
    }

    #[test]
    fn missing_tokenizer_is_named() {
        let dir = folder(&["model.onnx"]);
        let err = ModelFiles::discover(dir.path()).unwrap_err().to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
    }

    #[test]
    fn ambiguous_onnx_is_an_error() {
        let dir = folder(&["onnx/model_a.onnx", "onnx/model_b.onnx", "tokenizer.json"]);
        let err = ModelFiles::discover(dir.path()).unwrap_err().to_string();
        assert!(err.contains("several ONNX files"), "{err}");
    }

    #[test]
    fn digest_changes_with_any_digested_file() {
        let dir = folder(&["model.onnx", "tokenizer.json", "model.onnx_data"]);
        let files = ModelFiles::discover(dir.path()).unwrap();
        let a = files.digest().unwrap();
        assert_eq!(a, files.digest().unwrap());
        std::fs::write(dir.path().join("model.onnx_data"), b"other").unwrap();
        let b = files.digest().unwrap();
        assert_ne!(a, b);
        std::fs::write(dir.path().join("chat_template.jinja"), b"{{x}}").unwrap();
        assert_ne!(b, files.digest().unwrap());
    }

    #[test]
    fn genai_config_names_the_decoder_file_inside_the_folder() {
        let dir = folder(&["decoder/phi-int4.onnx", "model.onnx", "tokenizer.json"]);
        let config = |file: &str| {
            let json = serde_json::json!({"model": {"decoder": {"filename": file}}});
            std::fs::write(dir.path().join("genai_config.json"), json.to_string()).unwrap();
        };
        config("decoder/phi-int4.onnx");
        assert!(ModelFiles::discover(dir.path()).unwrap().onnx.ends_with("decoder/phi-int4.onnx"));
        config("../outside.onnx");
        let err = ModelFiles::discover(dir.path()).unwrap_err().to_string();
        assert!(err.contains("inside the model folder"), "{err}");
        config("gone.onnx");
        let err = ModelFiles::discover(dir.path()).unwrap_err().to_string();
        assert!(err.contains("gone.onnx") && err.contains("missing"), "{err}");
    }

    #[test]
    fn a_multimodal_config_is_known_by_its_text_config() {
        let config = serde_json::json!({
            "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3_vlm",
            "text_config": {"model_type": "gemma3_text"}
        });
        assert_eq!(kind_from_config(&config), Some(ModelKind::Generation));
        assert_eq!(kind_from_config(&serde_json::json!({"model_type": "gemma3_vlm"})), None);
    }

    #[test]
    fn unknown_name_says_how_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve_dir(dir.path(), "nope").unwrap_err().to_string();
        assert!(err.contains("STEADYTEXT_MODEL_DIR"), "{err}");
    }
}
