//! The encoder backend: a BERT-like ONNX graph (or a decoder exported as an embedder).

use std::borrow::Cow;

use ort::session::{RunOptions, Session, SessionInputValue};
use ort::value::{Tensor, TensorElementType};

use crate::error::{Error, Result};

use super::session::{bert_inputs, i64_tensor, inference, run_in_arena, shrinking_run_options};
use super::{EncoderBackend, Hidden};

/// An encoder ONNX export with `input_ids`, `attention_mask` and optional `token_type_ids`; or a
/// decoder exported as an embedder (Qwen3-Embedding's ONNX form): `position_ids` and an empty KV
/// cache (`past_key_values.*`, float32, heads and head size from the graph) are fed when it takes them.
pub struct OnnxEncoder {
    session: Session,
    model: String,
    has_token_type_ids: bool,
    has_position_ids: bool,
    /// Past KV inputs to feed empty: name, heads, head size.
    empty_past: Vec<(String, usize, usize)>,
    /// Run options that give the CPU arena's free memory back at the end of a run.
    shrink: RunOptions,
}

impl OnnxEncoder {
    /// Wraps a session, checking its inputs.
    pub fn new(session: Session, model: &str) -> Result<Self> {
        let names: Vec<String> = session.inputs().iter().map(|i| i.name().to_string()).collect();
        let mut empty_past = Vec::new();
        for input in session.inputs().iter().filter(|i| i.name().starts_with("past_key_values.")) {
            let dtype = input.dtype();
            let dims: Vec<i64> = dtype.tensor_shape().map(|s| s.iter().copied().collect()).unwrap_or_default();
            if dtype.tensor_type() != Some(TensorElementType::Float32) || dims.len() != 4 || dims[1] < 1 || dims[3] < 1
            {
                return Err(Error::model(
                    model,
                    format!("input {} is not a float32 [batch, heads, past, head_dim] KV cache with fixed heads and head size", input.name()),
                ));
            }
            empty_past.push((input.name().to_string(), dims[1] as usize, dims[3] as usize));
        }
        let past: Vec<&str> = empty_past.iter().map(|(n, ..)| n.as_str()).collect();
        let has_token_type_ids = bert_inputs(&session, model, "encoder", &["position_ids"], &past)?;
        let has_position_ids = names.iter().any(|n| n == "position_ids");
        let shrink = shrinking_run_options().map_err(inference(model))?;
        Ok(OnnxEncoder { session, model: model.to_string(), has_token_type_ids, has_position_ids, empty_past, shrink })
    }
}

/// How far a rewritten graph's hidden state may be from the export's, relative to 1 + |value|:
/// fp32 rounding of another summation order (2e-6 measured on MiniLM), with margin; a graph that
/// computes something else (another mask, another head split) is off by far more.
const REWRITE_TOLERANCE: f32 = 1e-4;

impl OnnxEncoder {
    /// Whether the graph takes an (empty) KV cache: a decoder exported as an embedder.
    pub fn takes_past(&self) -> bool {
        !self.empty_past.is_empty()
    }

    /// Whether this encoder (a rewritten form of `export`) gives `export`'s hidden states on a
    /// probe batch (two rows of other lengths, one padded) within [`REWRITE_TOLERANCE`], and the
    /// padded row the same bits in the batch as alone.
    pub fn agrees_with(&mut self, export: &mut OnnxEncoder) -> Result<bool> {
        const SEQ: usize = 7;
        const LENGTHS: [usize; 2] = [SEQ, 4];
        let (mut ids, mut mask) = (vec![0i64; 2 * SEQ], vec![0i64; 2 * SEQ]);
        for (row, &len) in LENGTHS.iter().enumerate() {
            for col in 0..len {
                // Ids in 1000..1500: inside any BERT-like vocabulary, none repeated in a row.
                ids[row * SEQ + col] = 1000 + ((row * SEQ + col) * 37 % 500) as i64;
                mask[row * SEQ + col] = 1;
            }
        }
        let got = self.encode(&ids, &mask, 2, SEQ)?;
        let expected = export.encode(&ids, &mask, 2, SEQ)?;
        if got.dim != expected.dim {
            return Ok(false);
        }
        let dim = got.dim;
        for (row, &len) in LENGTHS.iter().enumerate() {
            let at = row * SEQ * dim..(row * SEQ + len) * dim;
            let close = got.data[at.clone()]
                .iter()
                .zip(&expected.data[at])
                .all(|(a, b)| (a - b).abs() <= REWRITE_TOLERANCE * (1.0 + b.abs()));
            if !close {
                return Ok(false);
            }
        }
        let (len, start) = (LENGTHS[1], SEQ);
        let alone = self.encode(&ids[start..start + len], &mask[start..start + len], 1, len)?;
        Ok(alone.data[..] == got.data[start * dim..(start + len) * dim])
    }

    /// A decoder embeds each (right-padded) row alone, unpadded, so that a text embeds the same
    /// alone or in company by construction: nothing bounds what padding does to a decoder graph's
    /// bits (left padding moved the shared SmolLM2's by 5e-5; right padding left the test's pair
    /// unchanged, which is an observation, not a guarantee).
    fn encode_rows_alone(&mut self, ids: &[i64], mask: &[i64], batch: usize, seq: usize) -> Result<Hidden> {
        let mut data = Vec::new();
        let mut dim = 0;
        for b in 0..batch {
            let row = b * seq..(b + 1) * seq;
            let len = mask[row.clone()].iter().take_while(|&&m| m == 1).count().max(1);
            let alone = self.encode(&ids[row.start..row.start + len], &mask[row.start..row.start + len], 1, len)?;
            dim = alone.dim;
            data.resize(batch * seq * dim, 0.0);
            data[b * seq * dim..(b * seq + len) * dim].copy_from_slice(&alone.data);
        }
        Ok(Hidden { data, seq, dim })
    }
}

impl EncoderBackend for OnnxEncoder {
    fn encode(&mut self, ids: &[i64], mask: &[i64], batch: usize, seq: usize) -> Result<Hidden> {
        if !self.empty_past.is_empty() && batch > 1 {
            return self.encode_rows_alone(ids, mask, batch, seq);
        }
        let model = self.model.clone();
        let mut inputs: Vec<(Cow<'static, str>, SessionInputValue<'static>)> = vec![
            ("input_ids".into(), i64_tensor([batch, seq], ids.to_vec(), &model)?.into()),
            ("attention_mask".into(), i64_tensor([batch, seq], mask.to_vec(), &model)?.into()),
        ];
        if self.has_token_type_ids {
            inputs.push(("token_type_ids".into(), i64_tensor([batch, seq], vec![0; batch * seq], &model)?.into()));
        }
        if self.has_position_ids {
            let positions = (0..batch).flat_map(|_| 0..seq as i64).collect();
            inputs.push(("position_ids".into(), i64_tensor([batch, seq], positions, &model)?.into()));
        }
        for (name, heads, head_dim) in &self.empty_past {
            let empty =
                Tensor::from_array(([batch, *heads, 0, *head_dim], Vec::<f32>::new())).map_err(inference(&model))?;
            inputs.push((name.clone().into(), empty.into_dyn().into()));
        }
        let outputs = run_in_arena(&mut self.session, &self.shrink, inputs, batch * seq).map_err(inference(&model))?;
        let hidden = outputs
            .get("last_hidden_state")
            .or_else(|| outputs.get("token_embeddings"))
            .ok_or_else(|| Error::model(&model, "encoder ONNX graph has no `last_hidden_state` output"))?;
        let (shape, data) = hidden.try_extract_tensor::<f32>().map_err(inference(&model))?;
        if shape.len() != 3 || shape[0] as usize != batch || shape[1] as usize != seq {
            return Err(Error::model(&model, format!("unexpected hidden state shape {shape:?}")));
        }
        Ok(Hidden { data: data.to_vec(), seq, dim: shape[2] as usize })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::backend::encoder_fusion;
    use crate::engine::backend::session::{shared_minilm, shared_minilm_path, shared_minilm_session};

    #[test]
    fn a_rewritten_graph_agrees_only_when_it_computes_the_exports_numbers() {
        let path = shared_minilm_path();
        let (fused, _) = encoder_fusion::fuse(&std::fs::read(&path).unwrap(), path.parent().unwrap()).unwrap();
        let mut export = OnnxEncoder::new(shared_minilm(), "minilm").unwrap();
        let mut good = OnnxEncoder::new(shared_minilm_session(Some(&fused)), "minilm").unwrap();
        assert!(good.agrees_with(&mut export).unwrap());
        // The same graph with each attention's scale 10% off: close to the export, not its numbers.
        let mut off = fused.clone();
        let key = b"\x0a\x05scale\x15";
        let at: Vec<usize> = (0..off.len() - key.len()).filter(|&i| &off[i..i + key.len()] == key).collect();
        assert_eq!(at.len(), 6, "one scale per fused attention");
        for i in at {
            let p = i + key.len();
            let scale = f32::from_le_bytes(off[p..p + 4].try_into().unwrap()) * 1.1;
            off[p..p + 4].copy_from_slice(&scale.to_le_bytes());
        }
        let mut bad = OnnxEncoder::new(shared_minilm_session(Some(&off)), "minilm").unwrap();
        assert!(!bad.agrees_with(&mut export).unwrap());
    }

    #[test]
    fn a_padded_batch_gives_each_position_its_hidden_state() {
        let mut encoder = OnnxEncoder::new(shared_minilm(), "minilm").unwrap();
        // [CLS] hello world [SEP], and [CLS] hello [SEP] right-padded to 4.
        let ids = [101, 7592, 2088, 102, 101, 7592, 102, 0];
        let mask = [1, 1, 1, 1, 1, 1, 1, 0];
        let hidden = encoder.encode(&ids, &mask, 2, 4).unwrap();
        assert_eq!((hidden.seq, hidden.dim, hidden.data.len()), (4, 384, 2 * 4 * 384));
        assert!(hidden.data.iter().all(|v| v.is_finite()));
        let err = encoder.encode(&ids, &mask, 2, 3).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("minilm"), "a shape mismatch is the model's error: {err}");
    }
}
