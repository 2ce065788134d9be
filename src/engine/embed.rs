//! Embeddings: tokenize, truncate, run the encoder, pool as the model says, L2-normalize.
//! Each row is computed only from its own tokens, so a text's vector does not depend on its batch.

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::engine::backend::EncoderBackend;
use crate::error::{Error, Result};
use crate::model::ModelInfo;

/// Texts sent to the encoder in one run.
pub const ENCODER_CHUNK: usize = 32;

/// Texts longer than this (bytes) are cut to the words truncation keeps before tokenizing.
const LONG_TEXT_BYTES: usize = 4096;

/// The fixed cost of one encoder run, in padded tokens' worth of work (measured order of
/// magnitude on MiniLM-L6: a run's setup costs about what a few hundred tokens do).
const RUN_COST_TOKENS: usize = 256;

/// Splits texts sorted by token count (`lengths`, ascending) into encoder runs of at most
/// `max_rows` consecutive texts, with the least total work: each run pads its rows to its longest
/// one, and each run costs [`RUN_COST_TOKENS`] more (dynamic programming over the split points).
fn plan_runs(lengths: &[usize], max_rows: usize) -> Vec<std::ops::Range<usize>> {
    let n = lengths.len();
    // best[j]: (least cost of the first j texts, start of the last run).
    let mut best = vec![(0usize, 0usize); n + 1];
    for j in 1..=n {
        let longest = lengths[j - 1].max(1);
        best[j] = (j.saturating_sub(max_rows)..j)
            .map(|i| (best[i].0 + RUN_COST_TOKENS + (j - i) * longest, i))
            .min()
            .unwrap_or((0, 0));
    }
    let mut runs = Vec::new();
    let mut end = n;
    while end > 0 {
        let start = best[end].1;
        runs.push(start..end);
        end = start;
    }
    runs.reverse();
    runs
}

/// How token vectors become one sentence vector (`1_Pooling/config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over real tokens.
    Mean,
    /// The first token (`[CLS]`).
    Cls,
    /// Element-wise max over real tokens.
    Max,
    /// The last real token (decoder embedders).
    LastToken,
    /// Sum over real tokens divided by the square root of their count.
    MeanSqrtLen,
}

impl Pooling {
    /// Reads the pooling mode from a sentence-transformers pooling config; mean when absent.
    pub fn from_config(model: &str, config: Option<&Value>) -> Result<Self> {
        let Some(config) = config else { return Ok(Pooling::Mean) };
        let on = |key: &str| config.get(key).and_then(Value::as_bool).unwrap_or(false);
        let modes = [
            ("pooling_mode_mean_tokens", Pooling::Mean),
            ("pooling_mode_cls_token", Pooling::Cls),
            ("pooling_mode_max_tokens", Pooling::Max),
            ("pooling_mode_lasttoken", Pooling::LastToken),
            ("pooling_mode_mean_sqrt_len_tokens", Pooling::MeanSqrtLen),
        ];
        let chosen: Vec<Pooling> = modes.iter().filter(|(k, _)| on(k)).map(|(_, p)| *p).collect();
        match chosen.as_slice() {
            [one] => Ok(*one),
            [] => Err(Error::model(model, "1_Pooling/config.json enables no pooling mode")),
            _ => Err(Error::model(
                model,
                "1_Pooling/config.json enables several pooling modes; concatenated pooling is not supported",
            )),
        }
    }

    /// Pools `len` token vectors of size `dim` laid out row-major in `tokens`.
    pub fn pool(self, tokens: &[f32], len: usize, dim: usize) -> Vec<f32> {
        let rows = || tokens[..len * dim].chunks_exact(dim);
        match self {
            Pooling::Cls => tokens[..dim].to_vec(),
            Pooling::LastToken => tokens[(len - 1) * dim..len * dim].to_vec(),
            Pooling::Max => {
                let mut out = vec![f32::NEG_INFINITY; dim];
                for row in rows() {
                    for (o, v) in out.iter_mut().zip(row) {
                        *o = o.max(*v);
                    }
                }
                out
            }
            Pooling::Mean | Pooling::MeanSqrtLen => {
                let mut sum = vec![0f32; dim];
                for row in rows() {
                    for (s, v) in sum.iter_mut().zip(row) {
                        *s += v;
                    }
                }
                let div = if self == Pooling::Mean { len as f32 } else { (len as f32).sqrt() };
                sum.iter().map(|s| s / div).collect()
            }
        }
    }
}

/// The prompts of an embedding model, the sentence-transformers convention: `prompts` (name ->
/// text put before each input) and `default_prompt_name` of `config_sentence_transformers.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prompts {
    named: std::collections::BTreeMap<String, String>,
    default: Option<String>,
}

/// Modes every embedding model answers to: a model without such a prompt puts nothing before
/// the text (its query and passage vectors are the same).
pub const MODES: [&str; 2] = ["query", "passage"];

impl Prompts {
    /// The prompts of the model `info`, read from its folder once per model digest (the file is
    /// part of the digest, so a changed file is read again) and shared afterwards: requests do no
    /// file I/O for them.
    pub fn of(info: &crate::model::ModelInfo) -> Result<std::sync::Arc<Self>> {
        use std::collections::HashMap;
        use std::sync::{Arc, Mutex, OnceLock};
        static READ: OnceLock<Mutex<HashMap<String, Arc<Prompts>>>> = OnceLock::new();
        let read = READ.get_or_init(Default::default);
        if let Some(prompts) = read.lock().unwrap_or_else(|p| p.into_inner()).get(&info.digest) {
            return Ok(prompts.clone());
        }
        let prompts = Arc::new(Self::read(&info.name, &info.dir)?);
        read.lock().unwrap_or_else(|p| p.into_inner()).insert(info.digest.clone(), prompts.clone());
        Ok(prompts)
    }

    /// Reads them from the model folder `dir` (none when the file or its fields are absent).
    pub fn read(model: &str, dir: &std::path::Path) -> Result<Self> {
        let path = dir.join("config_sentence_transformers.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Prompts::default()),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let json: Value =
            serde_json::from_str(&text).map_err(|e| Error::model(model, format!("{}: {e}", path.display())))?;
        let named = match json.get("prompts") {
            None | Some(Value::Null) => Default::default(),
            Some(p) => serde_json::from_value(p.clone()).map_err(|e| {
                Error::model(model, format!("{}: prompts must map names to texts: {e}", path.display()))
            })?,
        };
        let default = json.get("default_prompt_name").and_then(Value::as_str).map(str::to_string);
        Ok(Prompts { named, default })
    }

    /// The text put before each input for `mode` (None: the model's default prompt, if any).
    pub fn prefix(&self, model: &str, mode: Option<&str>) -> Result<&str> {
        let Some(name) = mode.or(self.default.as_deref()) else { return Ok("") };
        match self.named.get(name) {
            Some(prompt) => Ok(prompt),
            None if MODES.contains(&name) => Ok(""),
            None => {
                let known: Vec<&str> = MODES.iter().copied().chain(self.named.keys().map(String::as_str)).collect();
                Err(Error::InvalidRequest(format!(
                    "model {model} has no prompt named {name:?}; modes: {}",
                    known.join(", ")
                )))
            }
        }
    }
}

/// Keeps the first `dimensions` of a unit vector and scales them back to unit length
/// (Matryoshka truncation).
pub fn truncate(v: &mut Vec<f32>, dimensions: usize) -> Result<()> {
    if dimensions == 0 || dimensions > v.len() {
        return Err(Error::InvalidRequest(format!(
            "dimensions must be between 1 and the model's {} dimensions",
            v.len()
        )));
    }
    v.truncate(dimensions);
    l2_normalize(v);
    Ok(())
}

/// Scales `v` to unit L2 norm (a zero vector stays zero).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    let norm = norm.max(1e-12) as f32;
    v.iter_mut().for_each(|x| *x /= norm);
}

/// Whether no token of `tokenizer` can span whitespace: its normalizer only maps characters
/// (never removes or replaces spaces) and its pre-tokenizer splits at whitespace. Then the tokens
/// of a text's first words are the first tokens of the text, and a long text can be cut before
/// tokenizing without changing what truncation keeps.
fn splits_at_whitespace(tokenizer: &Tokenizer) -> bool {
    fn types(v: &Value) -> Vec<&Value> {
        match v.get("type").and_then(Value::as_str) {
            Some("Sequence") => v
                .get("pretokenizers")
                .or_else(|| v.get("normalizers"))
                .and_then(Value::as_array)
                .map(|a| a.iter().flat_map(types).collect())
                .unwrap_or_default(),
            _ => vec![v],
        }
    }
    let safe_normalizer = match tokenizer.get_normalizer().map(serde_json::to_value) {
        None => true,
        Some(Ok(n)) => types(&n).iter().all(|n| {
            matches!(
                n.get("type").and_then(Value::as_str),
                Some("BertNormalizer" | "Lowercase" | "NFC" | "NFD" | "NFKC" | "NFKD" | "StripAccents" | "Strip")
            )
        }),
        Some(Err(_)) => false,
    };
    let splitting = match tokenizer.get_pre_tokenizer().map(serde_json::to_value) {
        Some(Ok(p)) => types(&p).iter().any(|p| match p.get("type").and_then(Value::as_str) {
            Some("BertPreTokenizer" | "Whitespace" | "WhitespaceSplit") => true,
            Some("ByteLevel") => p.get("use_regex").and_then(Value::as_bool).unwrap_or(true),
            Some("Metaspace") => p.get("split").and_then(Value::as_bool).unwrap_or(true),
            _ => false,
        }),
        _ => false,
    };
    safe_normalizer && splitting
}

/// `text` up to its `words`-th whitespace-separated word (the whole text when it has fewer).
fn first_words(text: &str, words: usize) -> &str {
    let mut seen = 0;
    let mut in_word = false;
    for (i, c) in text.char_indices() {
        if !c.is_whitespace() {
            in_word = true;
        } else if std::mem::take(&mut in_word) {
            seen += 1;
            if seen == words {
                return &text[..i];
            }
        }
    }
    text
}

/// The part of `text` that truncation keeps, found without tokenizing all of it: whole words,
/// doubling their number until the truncated prefix overflows (so the cut falls inside it).
/// `tokenizer` must truncate at `max_tokens` and split at whitespace ([`splits_at_whitespace`]).
fn usable_prefix<'t>(tokenizer: &Tokenizer, text: &'t str, max_tokens: usize) -> Result<&'t str> {
    let mut words = max_tokens.max(1);
    loop {
        let prefix = first_words(text, words);
        if prefix.len() == text.len() {
            return Ok(text);
        }
        let encoding =
            tokenizer.encode(prefix, true).map_err(|e| Error::InvalidRequest(format!("cannot tokenize: {e}")))?;
        if !encoding.get_overflowing().is_empty() {
            return Ok(prefix);
        }
        words = words.saturating_mul(2);
    }
}

/// An embedder: one encoder backend with its tokenizer and pooling.
pub struct Embedder<B: EncoderBackend> {
    backend: B,
    tokenizer: Tokenizer,
    pooling: Pooling,
    pad_id: i64,
    max_tokens: usize,
    /// Whether long texts may be cut before tokenizing ([`usable_prefix`]).
    cut_long_texts: bool,
}

impl<B: EncoderBackend> Embedder<B> {
    /// Puts the parts together. `tokenizer` must have padding off; truncation is applied here.
    pub fn new(backend: B, mut tokenizer: Tokenizer, pooling: Pooling, max_tokens: usize, pad_id: i64) -> Result<Self> {
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams { max_length: max_tokens, ..Default::default() }))
            .map_err(|e| Error::model("encoder", format!("cannot set truncation: {e}")))?;
        let cut_long_texts = splits_at_whitespace(&tokenizer);
        Ok(Embedder { backend, tokenizer, pooling, pad_id, max_tokens, cut_long_texts })
    }

    /// Embeds each text; the result has one unit-length vector per text, in order.
    pub fn embed(&mut self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let inputs: Vec<&str> = texts
            .iter()
            .map(|t| match self.cut_long_texts && t.len() > LONG_TEXT_BYTES {
                true => usable_prefix(&self.tokenizer, t, self.max_tokens),
                false => Ok(t.as_str()),
            })
            .collect::<Result<_>>()?;
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| Error::InvalidRequest(format!("cannot tokenize: {e}")))?;
        // Length-aware batching: encoder runs take texts in order of token count, so a run pads
        // to a length near its texts' own (attention cost grows with the square of it). A row's
        // vector does not depend on its batch or padding, so the order changes no bit.
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());
        let lengths: Vec<usize> = order.iter().map(|&i| encodings[i].get_ids().len()).collect();
        let mut out = vec![Vec::new(); encodings.len()];
        for run in plan_runs(&lengths, ENCODER_CHUNK) {
            let chunk = &order[run];
            let rows: Vec<&[u32]> = chunk.iter().map(|&i| encodings[i].get_ids()).collect();
            for (&i, v) in chunk.iter().zip(self.encode_rows(&rows)?) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// Runs one right-padded encoder batch of token rows and pools each row.
    fn encode_rows(&mut self, rows: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let seq = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
        let batch = rows.len();
        let mut ids = vec![self.pad_id; batch * seq];
        let mut mask = vec![0i64; batch * seq];
        for (row, tokens) in rows.iter().enumerate() {
            for (col, &id) in tokens.iter().enumerate() {
                ids[row * seq + col] = i64::from(id);
                mask[row * seq + col] = 1;
            }
        }
        let hidden = self.backend.encode(&ids, &mask, batch, seq)?;
        Ok(rows
            .iter()
            .enumerate()
            .map(|(row, tokens)| {
                let len = tokens.len().max(1);
                let start = row * hidden.seq * hidden.dim;
                let mut v = self.pooling.pool(&hidden.data[start..start + hidden.seq * hidden.dim], len, hidden.dim);
                l2_normalize(&mut v);
                v
            })
            .collect())
    }
}

/// Longest text prefix counted for `usage`, in bytes: embedding models read a few hundred
/// tokens at most, and counting must not tokenize megabytes.
const COUNTED_BYTES: usize = 16 * 1024;

/// Tokens of `texts` under the model's tokenizer (with its own truncation), for `usage`.
pub fn token_count(info: &ModelInfo, texts: &[String]) -> Result<usize> {
    static TOKENIZERS: super::PerModel<Tokenizer> = super::PerModel::new();
    let tokenizer = TOKENIZERS.get(info, || {
        let path = info.dir.join("tokenizer.json");
        let mut t = Tokenizer::from_file(&path)
            .map_err(|e| Error::model(info.dir.display().to_string(), format!("tokenizer.json: {e}")))?;
        t.with_padding(None);
        Ok(t)
    })?;
    let mut total = 0;
    for text in texts {
        let mut end = text.len().min(COUNTED_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let encoding = tokenizer
            .encode(&text[..end], true)
            .map_err(|e| Error::InvalidRequest(format!("cannot tokenize an input: {e}")))?;
        total += encoding.get_ids().len();
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_group_texts_of_similar_length() {
        // Short texts together, long ones together; no run above the row cap; all covered once.
        let lengths = [3, 4, 4, 5, 6, 7, 150, 160, 170];
        let runs = plan_runs(&lengths, 4);
        assert_eq!(runs, vec![0..3, 3..6, 6..9]);
        assert_eq!(plan_runs(&lengths, 32), vec![0..6, 6..9]);
        // Equal lengths: one run as large as allowed.
        assert_eq!(plan_runs(&[10; 70], 32), vec![0..6, 6..38, 38..70]);
        assert!(plan_runs(&[], 32).is_empty());
    }

    #[test]
    fn pooling_modes() {
        let t = [1.0, 2.0, 3.0, 6.0, 100.0, 100.0];
        assert_eq!(Pooling::Mean.pool(&t, 2, 2), vec![2.0, 4.0]);
        assert_eq!(Pooling::Cls.pool(&t, 2, 2), vec![1.0, 2.0]);
        assert_eq!(Pooling::Max.pool(&t, 2, 2), vec![3.0, 6.0]);
        assert_eq!(Pooling::LastToken.pool(&t, 2, 2), vec![3.0, 6.0]);
    }

    #[test]
    fn pooling_config_is_read() {
        let cfg = serde_json::json!({"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false});
        assert_eq!(Pooling::from_config("m", Some(&cfg)).unwrap(), Pooling::Cls);
        let none = serde_json::json!({});
        assert!(Pooling::from_config("m", Some(&none)).is_err());
    }

    /// The shared MiniLM tokenizer, truncating at 256 as the embedder does.
    fn minilm() -> Tokenizer {
        let dir = std::env::var_os("STEADYTEXT_MODEL_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/models"));
        let mut t = Tokenizer::from_file(dir.join("all-MiniLM-L6-v2/tokenizer.json")).unwrap();
        t.with_padding(None);
        t.with_truncation(Some(tokenizers::TruncationParams { max_length: 256, ..Default::default() })).unwrap();
        t
    }

    #[test]
    fn cutting_long_texts_first_gives_the_same_tokens() {
        let t = minilm();
        assert!(splits_at_whitespace(&t));
        let long_word = "x".repeat(5000);
        let texts = [
            "word ".repeat(60_000),
            format!("{long_word} {long_word} tail ").repeat(20),
            "日本語のテキスト、".repeat(20_000),
            "a,b.c;d!e?f ".repeat(20_000),
            "\u{7}\u{1} ".repeat(5000) + &"real words here ".repeat(500),
            "  \t\n  spaced   out\u{a0}text\u{3000}ideo ".repeat(10_000),
            "short text".to_string(),
        ];
        for text in &texts {
            let prefix = usable_prefix(&t, text, 256).unwrap();
            let full = t.encode(text.as_str(), true).unwrap();
            let cut = t.encode(prefix, true).unwrap();
            assert_eq!(cut.get_ids(), full.get_ids(), "{:?}...", &text[..40.min(text.len())]);
            assert!(prefix.len() <= text.len());
        }
        assert!(usable_prefix(&t, &texts[0], 256).unwrap().len() < 10_000, "a long text is cut");
    }

    #[test]
    fn normalize_gives_unit_length() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
    }
}
