//! The cross-encoder backend: a sequence-classification ONNX graph.

use std::borrow::Cow;

use ort::session::{RunOptions, Session, SessionInputValue};

use crate::error::{Error, Result};

use super::session::{bert_inputs, i64_tensor, inference, run_in_arena, shrinking_run_options};

/// A sequence-classification graph (a cross-encoder): `input_ids`, `attention_mask` and optional
/// `token_type_ids` in, `logits` `[batch, labels]` out.
pub struct OnnxClassifier {
    session: Session,
    model: String,
    has_token_type_ids: bool,
    /// Run options that give the CPU arena's free memory back at the end of a run.
    shrink: RunOptions,
}

impl OnnxClassifier {
    /// Wraps a session, checking its inputs and output.
    pub fn new(session: Session, model: &str) -> Result<Self> {
        let has_token_type_ids = bert_inputs(&session, model, "cross-encoder", &[], &[])?;
        if !session.outputs().iter().any(|o| o.name() == "logits") {
            return Err(Error::model(model, "cross-encoder ONNX graph has no `logits` output"));
        }
        let shrink = shrinking_run_options().map_err(inference(model))?;
        Ok(OnnxClassifier { session, model: model.to_string(), has_token_type_ids, shrink })
    }

    /// The logits of one sequence (its ids, and the segment of each: 0 query, 1 document).
    pub fn classify(&mut self, ids: &[i64], type_ids: &[i64]) -> Result<Vec<f32>> {
        let model = self.model.clone();
        let n = ids.len();
        let mut inputs: Vec<(Cow<'static, str>, SessionInputValue<'static>)> = vec![
            ("input_ids".into(), i64_tensor([1, n], ids.to_vec(), &model)?.into()),
            ("attention_mask".into(), i64_tensor([1, n], vec![1; n], &model)?.into()),
        ];
        if self.has_token_type_ids {
            inputs.push(("token_type_ids".into(), i64_tensor([1, n], type_ids.to_vec(), &model)?.into()));
        }
        let outputs = run_in_arena(&mut self.session, &self.shrink, inputs, n).map_err(inference(&model))?;
        let (shape, data) = outputs["logits"].try_extract_tensor::<f32>().map_err(inference(&model))?;
        if shape.len() != 2 || shape[0] != 1 {
            return Err(Error::model(&model, format!("unexpected logits shape {shape:?}")));
        }
        Ok(data.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::backend::session::shared_minilm;

    #[test]
    fn an_encoder_without_logits_is_not_taken_for_a_cross_encoder() {
        let err = OnnxClassifier::new(shared_minilm(), "minilm").map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("no `logits` output"), "{err}");
    }
}
