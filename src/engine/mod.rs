//! The inference engine: loading models from their folders into generators and embedders.

pub mod backend;
mod concat_kv;
pub mod constraint;
pub mod cross_encoder;
pub mod embed;
pub mod fingerprint;
pub mod generate;
pub mod kernels;
mod kv_arena;
pub mod kv_block;
pub mod logprobs;
pub mod prefix;
pub mod rerank;
pub mod sampler;
pub(crate) mod template;
pub mod tools;
pub mod types;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::config::Config;
use crate::engine::kernels::spin_pool::SpinPool;
use crate::error::{Error, Result};
use crate::model::{self, ModelFiles, ModelInfo};
use backend::{build_session, DecoderLayout, OnnxClassifier, OnnxDecoder, OnnxEncoder, SessionSettings, Shapes};
use cross_encoder::CrossEncoder;
use embed::{Embedder, Pooling};
use generate::Generator;
use template::ChatTemplate;

/// A generator over ONNX Runtime.
pub type OnnxGenerator = Generator<OnnxDecoder>;
/// An embedder over ONNX Runtime.
pub type OnnxEmbedder = Embedder<OnnxEncoder>;

/// The model files, digest and session settings shared by both model kinds.
struct Loaded {
    files: ModelFiles,
    info: ModelInfo,
    /// `config.json` (Hugging Face layout); `Null` when absent.
    config_json: serde_json::Value,
    /// `genai_config.json` (onnxruntime-genai layout); `Null` when absent.
    genai_json: serde_json::Value,
    session: ort::session::Session,
    /// The threads of the session's own operators.
    threads: Arc<SpinPool>,
    tokenizer: Tokenizer,
}

fn load_common(config: &Config, name: &str, shapes: Shapes) -> Result<Loaded> {
    // The tokenizer's own thread pool (rayon) would spin beside ONNX Runtime's intra-op threads
    // on the same cores: a one-text embed's model run took ~0.7 ms longer after a batch
    // tokenization (4.4 vs 3.7 ms on MiniLM, 2 cores). Tokenizing is a small part of the work;
    // it runs on the calling thread. (Ids do not depend on it.)
    tokenizers::utils::parallelism::set_parallelism(false);
    let dir = model::resolve_dir(&config.model_dir, name)?;
    let files = ModelFiles::discover(&dir)?;
    let genai_json = files.json("genai_config.json")?.unwrap_or_default();
    let config_json = match files.json("config.json")? {
        Some(json) => json,
        None if !genai_json.is_null() => serde_json::Value::Null,
        None => {
            return Err(Error::model(
                &files.name,
                format!("{} has no config.json; copy the model's config.json there", dir.display()),
            ))
        }
    };
    let tokenizer = load_tokenizer(&files)?;
    let digest = files.digest()?;
    let (session, threads) = session(config, &files.onnx, None, &files.name, shapes)?;
    let info = ModelInfo { name: files.name.clone(), digest, dir };
    Ok(Loaded { files, info, config_json, genai_json, session, threads, tokenizer })
}

/// An ONNX Runtime session of the file `onnx` (or of `rewritten`, its graph rewritten; named
/// `name` in errors) with the configured runtime, threads and device, and the engine's fixed
/// options and operators, with the threads of those operators.
pub fn session(
    config: &Config,
    onnx: &Path,
    rewritten: Option<&[u8]>,
    name: &str,
    shapes: Shapes,
) -> Result<(ort::session::Session, Arc<SpinPool>)> {
    let env = crate::runtime::environment(&crate::runtime::RuntimeSpec::from_config(config))?;
    let settings = SessionSettings {
        intra_threads: config.effective_intra_threads(),
        device: config.device,
        cuda_device_id: config.cuda_device_id,
    };
    build_session(env, onnx, rewritten, name, settings, shapes)
}

/// A folder's tokenizer as its model uses it: no padding, no truncation.
fn load_tokenizer(files: &ModelFiles) -> Result<Tokenizer> {
    let mut tokenizer = Tokenizer::from_file(&files.tokenizer)
        .map_err(|e| Error::model(&files.name, format!("{} does not load: {e}", files.tokenizer.display())))?;
    tokenizer.with_padding(None);
    tokenizer.with_truncation(None).map_err(|e| Error::model(&files.name, format!("cannot clear truncation: {e}")))?;
    Ok(tokenizer)
}

/// What is read once per model for work done beside it (counting tokens), by folder and
/// digest: a model replaced in its folder is read again. One entry per model folder.
pub(crate) struct PerModel<T> {
    loaded: std::sync::OnceLock<std::sync::Mutex<ByModel<T>>>,
}

/// Entries by model folder and digest.
type ByModel<T> = HashMap<(PathBuf, String), Arc<T>>;

impl<T> PerModel<T> {
    pub(crate) const fn new() -> Self {
        PerModel { loaded: std::sync::OnceLock::new() }
    }

    /// `info`'s entry, made by `load` the first time.
    pub(crate) fn get(&self, info: &ModelInfo, load: impl FnOnce() -> Result<T>) -> Result<Arc<T>> {
        let mut loaded = self.loaded.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
        let key = (info.dir.clone(), info.digest.clone());
        if let Some(entry) = loaded.get(&key) {
            return Ok(entry.clone());
        }
        loaded.retain(|(dir, _), _| *dir != info.dir);
        let entry = Arc::new(load()?);
        loaded.insert(key, entry.clone());
        Ok(entry)
    }
}

/// Tokens of a generation request's prompt as the model would read it (its chat template
/// renders the conversation and tools), counted without running the model: the token-count
/// routes. Equal to the answer's `prompt_tokens`.
pub fn prompt_token_count(info: &ModelInfo, request: &generate::GenerateRequest) -> Result<usize> {
    static PROMPTS: PerModel<(ChatTemplate, Tokenizer)> = PerModel::new();
    let prompt = PROMPTS.get(info, || {
        let files = ModelFiles::discover(&info.dir)?;
        Ok((ChatTemplate::load(&files)?, load_tokenizer(&files)?))
    })?;
    Ok(generate::prompt_ids(&info.name, &prompt.0, &prompt.1, request)?.len())
}

/// A folder's tokenizer, read once (for work beside the model: tokenize, detokenize).
fn tokenizer(info: &ModelInfo) -> Result<Arc<Tokenizer>> {
    static TOKENIZERS: PerModel<Tokenizer> = PerModel::new();
    TOKENIZERS.get(info, || load_tokenizer(&ModelFiles::discover(&info.dir)?))
}

/// `text`'s token ids under `info`'s tokenizer (with its special tokens when `add_special`),
/// and with `with_pieces` each token's text alone.
pub fn tokenize(info: &ModelInfo, text: &str, add_special: bool, with_pieces: bool) -> Result<TokenizedText> {
    let tokenizer = tokenizer(info)?;
    let encoding = tokenizer
        .encode(text, add_special)
        .map_err(|e| Error::engine(&info.name, format!("tokenizing failed: {e}")))?;
    let ids = encoding.get_ids().to_vec();
    let pieces = match with_pieces {
        true => Some(ids.iter().map(|&id| decode(&tokenizer, info, &[id])).collect::<Result<Vec<_>>>()?),
        false => None,
    };
    Ok(TokenizedText { ids, pieces })
}

/// A text's token ids (and each one's text, when asked for).
pub struct TokenizedText {
    /// The ids.
    pub ids: Vec<u32>,
    /// Each id's text alone.
    pub pieces: Option<Vec<String>>,
}

/// The text of `ids` under `info`'s tokenizer, special tokens included; an id outside the
/// vocabulary is the caller's mistake.
pub fn detokenize(info: &ModelInfo, ids: &[u32]) -> Result<String> {
    let tokenizer = tokenizer(info)?;
    let size = tokenizer.get_vocab_size(true);
    if let Some(id) = ids.iter().find(|&&id| id as usize >= size) {
        return Err(Error::InvalidRequest(format!(
            "token id {id} is not in the vocabulary of {} ({size} tokens, ids 0 to {})",
            info.name,
            size - 1
        )));
    }
    decode(&tokenizer, info, ids)
}

fn decode(tokenizer: &Tokenizer, info: &ModelInfo, ids: &[u32]) -> Result<String> {
    tokenizer.decode(ids, false).map_err(|e| Error::engine(&info.name, format!("detokenizing failed: {e}")))
}

/// What a decoder's configs say about its shape and ends, from `genai_config.json`
/// (onnxruntime-genai layout) when the folder has one, else from `config.json`.
#[derive(Debug)]
struct DecoderConfig {
    layout: DecoderLayout,
    context: usize,
    eos: Vec<u32>,
    /// Past and present share one buffer (`search.past_present_share_buffer` of genai_config.json).
    share_buffer: bool,
}

impl DecoderConfig {
    fn read(l: &Loaded) -> Result<Self> {
        let generation = l.files.json("generation_config.json")?;
        Self::from_json(&l.files.name, &l.config_json, &l.genai_json, generation.as_ref())
    }

    /// The configuration the folder's JSON files give: `genai` (genai_config.json, `Null` when
    /// absent) wins; else `config` (config.json), whose decoder fields may sit in `text_config`
    /// (multimodal families such as Gemma 3 nest them there). Each refusal names the field.
    fn from_json(m: &str, config: &Value, genai: &Value, generation: Option<&Value>) -> Result<Self> {
        let mut eos = model::token_ids(generation.and_then(|g| g.get("eos_token_id")));
        if let Some(genai_model) = genai.get("model") {
            let field = |json: &Value, key: &str| {
                json.get(key)
                    .and_then(Value::as_u64)
                    .map(|v| v as usize)
                    .ok_or_else(|| Error::model(m, format!("genai_config.json lacks the integer field `{key}`")))
            };
            let decoder = genai_model.get("decoder").cloned().unwrap_or_default();
            if let Some(why) = model::genai_windowed(genai) {
                return Err(Error::model(m, why));
            }
            let inputs = decoder.get("inputs").cloned().unwrap_or_default();
            let outputs = decoder.get("outputs").cloned().unwrap_or_default();
            let name = |side: &Value, key: &str, default: String| {
                side.get(key).and_then(Value::as_str).map(str::to_string).unwrap_or(default)
            };
            let hf =
                DecoderLayout::hugging_face(field(&decoder, "num_key_value_heads")?, field(&decoder, "head_size")?);
            let layout = DecoderLayout {
                past_key: name(&inputs, "past_key_names", hf.past_key.clone()),
                past_value: name(&inputs, "past_value_names", hf.past_value.clone()),
                present_key: name(&outputs, "present_key_names", hf.present_key.clone()),
                present_value: name(&outputs, "present_value_names", hf.present_value.clone()),
                ..hf
            };
            model::push_new_ids(&mut eos, genai_model.get("eos_token_id"));
            let share_buffer =
                genai.pointer("/search/past_present_share_buffer").and_then(Value::as_bool).unwrap_or(false);
            return Ok(DecoderConfig { layout, context: field(genai_model, "context_length")?, eos, share_buffer });
        }
        let c = model::decoder_config(config);
        let heads = model::usize_field(m, c, "num_attention_heads")?;
        let kv_heads = c.get("num_key_value_heads").and_then(Value::as_u64).map(|v| v as usize).unwrap_or(heads);
        let head_dim = match c.get("head_dim").and_then(Value::as_u64) {
            Some(d) => d as usize,
            None => model::usize_field(m, c, "hidden_size")? / heads.max(1),
        };
        model::push_new_ids(&mut eos, config.get("eos_token_id"));
        model::push_new_ids(&mut eos, c.get("eos_token_id"));
        Ok(DecoderConfig {
            layout: DecoderLayout::hugging_face(kv_heads, head_dim),
            context: model::usize_field(m, c, "max_position_embeddings")?,
            eos,
            share_buffer: false,
        })
    }
}

/// Loads a generation model by name (under `config.model_dir`) or path.
pub fn load_generator(config: &Config, name: &str) -> Result<(ModelInfo, OnnxGenerator)> {
    let l = load_common(config, name, Shapes::PerStep)?;
    let m = l.files.name.as_str();
    let d = DecoderConfig::read(&l)?;
    let backend = OnnxDecoder::new(l.session, l.threads, m, d.layout, d.context, d.share_buffer)?;
    let template = ChatTemplate::load(&l.files)?;
    let generator =
        Generator::new(backend, l.tokenizer, template, d.eos, m)?.with_constraints(l.files.tokenizer.clone());
    Ok((l.info, generator))
}

/// Loads an embedding model by name (under `config.model_dir`) or path.
pub fn load_embedder(config: &Config, name: &str) -> Result<(ModelInfo, OnnxEmbedder)> {
    let l = load_common(config, name, Shapes::Repeating)?;
    let m = l.files.name.as_str();
    let pooling = Pooling::from_config(m, l.files.json("1_Pooling/config.json")?.as_ref())?;
    let max_tokens = l
        .files
        .json("sentence_bert_config.json")?
        .and_then(|c| c.get("max_seq_length").and_then(|v| v.as_u64()))
        .or_else(|| l.config_json.get("max_position_embeddings").and_then(|v| v.as_u64()))
        .unwrap_or(512) as usize;
    let pad_id = l.config_json.get("pad_token_id").and_then(|v| v.as_i64()).unwrap_or(0);
    let backend = fused_or_export(config, &l.files, OnnxEncoder::new(l.session, m)?)?;
    let embedder = Embedder::new(backend, l.tokenizer, pooling, max_tokens, pad_id)?;
    Ok((l.info, embedder))
}

/// Largest export (graph and external data) whose attention is fused at load: the fusion holds
/// the files, their rewrite and both sessions at once. (Encoders are ~20-600 MB; larger ones keep
/// their own graph.)
const MAX_FUSED_BYTES: u64 = 1 << 30;

/// The encoder whose attention [`backend::encoder_fusion`] fused, when the CPU runs it, the graph
/// has the expected shape and the fused session agrees with `export` (the folder's own graph) on a
/// probe batch; else `export`. The fused form is 5-19% faster on one-text embeds (MiniLM) and its
/// bits are its own (the engine fingerprint names the fusion).
fn fused_or_export(config: &Config, files: &ModelFiles, mut export: OnnxEncoder) -> Result<OnnxEncoder> {
    if config.device != crate::config::Device::Cpu || export.takes_past() || files.weight_bytes() > MAX_FUSED_BYTES {
        return Ok(export);
    }
    let bytes = std::fs::read(&files.onnx).map_err(|e| Error::io(&files.onnx, e))?;
    let folder = files.onnx.parent().unwrap_or(Path::new("."));
    let Some((fused_bytes, layers)) = backend::encoder_fusion::fuse(&bytes, folder) else {
        return Ok(export);
    };
    drop(bytes);
    // Whatever goes wrong with the fused form, the export serves: the fusion only ever saves time.
    let checked = session(config, &files.onnx, Some(&fused_bytes), &files.name, Shapes::Repeating)
        .and_then(|(s, _)| OnnxEncoder::new(s, &files.name))
        .and_then(|mut fused| Ok(fused.agrees_with(&mut export)?.then_some(fused)));
    match checked {
        Ok(Some(fused)) => {
            tracing::debug!(model = %files.name, layers, "encoder attention fused");
            Ok(fused)
        }
        Ok(None) => {
            tracing::warn!(model = %files.name, "the fused encoder graph disagreed with the export on a probe batch; serving the export's own graph");
            Ok(export)
        }
        Err(e) => {
            tracing::warn!(model = %files.name, error = %e, "the fused encoder graph did not load or run; serving the export's own graph");
            Ok(export)
        }
    }
}

/// Loads a cross-encoder (sequence-classification export with one label) by name or path.
pub fn load_cross_encoder(config: &Config, name: &str) -> Result<(ModelInfo, CrossEncoder)> {
    let l = load_common(config, name, Shapes::Repeating)?;
    let m = l.files.name.as_str();
    let max_tokens = l.config_json.get("max_position_embeddings").and_then(|v| v.as_u64()).unwrap_or(512) as usize;
    let backend = OnnxClassifier::new(l.session, m)?;
    Ok((l.info, CrossEncoder::new(backend, l.tokenizer, max_tokens, m)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decoder_fields_nested_in_text_config_are_read() {
        // Gemma 3's multimodal config.json: the decoder's fields under text_config, ends at both levels.
        let config = json!({
            "architectures": ["Gemma3ForConditionalGeneration"], "eos_token_id": [1, 106],
            "text_config": {"model_type": "gemma3_text", "num_attention_heads": 4, "num_key_value_heads": 1,
                            "head_dim": 256, "hidden_size": 640, "max_position_embeddings": 32768, "eos_token_id": 1}
        });
        let d = DecoderConfig::from_json("gemma", &config, &Value::Null, None).unwrap();
        assert_eq!((d.layout.kv_heads, d.layout.head_dim, d.context), (1, 256, 32768));
        assert_eq!(d.eos, [1, 106]);
        let flat = json!({"num_attention_heads": 9, "hidden_size": 576, "max_position_embeddings": 8192});
        let d = DecoderConfig::from_json("smol", &flat, &Value::Null, None).unwrap();
        assert_eq!((d.layout.kv_heads, d.layout.head_dim, d.context), (9, 64, 8192));
        let err = DecoderConfig::from_json("x", &json!({"text_config": {}}), &Value::Null, None).unwrap_err();
        assert!(err.to_string().contains("`num_attention_heads`"), "{err}");
    }

    #[test]
    fn a_genai_folder_with_windowed_layers_is_refused_naming_the_field() {
        let genai = |decoder: Value| json!({"model": {"context_length": 4096, "decoder": decoder}, "search": {"past_present_share_buffer": true}});
        let plain = json!({"num_key_value_heads": 1, "head_size": 256});
        let d = DecoderConfig::from_json("g", &Value::Null, &genai(plain.clone()), None).unwrap();
        assert!(d.share_buffer && d.context == 4096);
        let mut windowed = plain;
        windowed["sliding_window"] = json!({"window_size": 512, "slide_key_value_cache": false, "layers": [0, 1]});
        let err = DecoderConfig::from_json("g", &Value::Null, &genai(windowed), None).unwrap_err().to_string();
        assert!(err.contains("model.decoder.sliding_window") && err.contains("\"window_size\":512"), "{err}");
    }
}
