//! Embeddings: tokenize, truncate, run the encoder, pool as the model says, L2-normalize.
//! Each row is computed only from its own tokens, so a text's vector does not depend on its batch.

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::engine::backend::EncoderBackend;
use crate::error::{Error, Result};

/// Texts sent to the encoder in one run.
pub const ENCODER_CHUNK: usize = 32;

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

/// Scales `v` to unit L2 norm (a zero vector stays zero).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    let norm = norm.max(1e-12) as f32;
    v.iter_mut().for_each(|x| *x /= norm);
}

/// An embedder: one encoder backend with its tokenizer and pooling.
pub struct Embedder<B: EncoderBackend> {
    backend: B,
    tokenizer: Tokenizer,
    pooling: Pooling,
    pad_id: i64,
}

impl<B: EncoderBackend> Embedder<B> {
    /// Puts the parts together. `tokenizer` must have padding off; truncation is applied here.
    pub fn new(backend: B, mut tokenizer: Tokenizer, pooling: Pooling, max_tokens: usize, pad_id: i64) -> Result<Self> {
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams { max_length: max_tokens, ..Default::default() }))
            .map_err(|e| Error::model("encoder", format!("cannot set truncation: {e}")))?;
        Ok(Embedder { backend, tokenizer, pooling, pad_id })
    }

    /// Embeds each text; the result has one unit-length vector per text, in order.
    pub fn embed(&mut self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(ENCODER_CHUNK) {
            out.extend(self.embed_chunk(chunk)?);
        }
        Ok(out)
    }

    fn embed_chunk(&mut self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::InvalidRequest(format!("cannot tokenize: {e}")))?;
        let seq = encodings.iter().map(|e| e.get_ids().len()).max().unwrap_or(0).max(1);
        let batch = encodings.len();
        let mut ids = vec![self.pad_id; batch * seq];
        let mut mask = vec![0i64; batch * seq];
        for (row, enc) in encodings.iter().enumerate() {
            for (col, &id) in enc.get_ids().iter().enumerate() {
                ids[row * seq + col] = i64::from(id);
                mask[row * seq + col] = 1;
            }
        }
        let hidden = self.backend.encode(&ids, &mask, batch, seq)?;
        Ok(encodings
            .iter()
            .enumerate()
            .map(|(row, enc)| {
                let len = enc.get_ids().len().max(1);
                let start = row * hidden.seq * hidden.dim;
                let mut v = self.pooling.pool(&hidden.data[start..start + hidden.seq * hidden.dim], len, hidden.dim);
                l2_normalize(&mut v);
                v
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn normalize_gives_unit_length() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
    }
}
