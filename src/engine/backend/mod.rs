//! Inference backends behind two small traits, so CPU, CUDA and test fakes are swappable.
//! Batching and scheduling live outside: a backend only runs the steps it is given. The ONNX
//! Runtime backends: a decoder ([`OnnxDecoder`]), an encoder ([`OnnxEncoder`]) and a cross-encoder
//! ([`OnnxClassifier`]), each in its file; [`build_session`] gives them their fixed options.

use std::ops::Range;

use crate::engine::kernels::int4_matmul::ParallelFor;
use crate::engine::kv_block::{KvBlock, KvPiece};
use crate::error::{Error, Result};

mod arena;
pub mod encoder_fusion;
mod onnx_classifier;
mod onnx_decoder;
mod onnx_encoder;
mod session;

pub use onnx_classifier::OnnxClassifier;
pub use onnx_decoder::{DecoderLayout, OnnxDecoder, OnnxKv};
pub use onnx_encoder::OnnxEncoder;
pub use session::{build_session, SessionSettings, Shapes};

/// One sequence's step in a decoder batch: feed `tokens` after what `state` already holds.
pub struct Step<'a, S> {
    /// The sequence's cache, updated in place.
    pub state: &'a mut S,
    /// New tokens: the whole prompt for a prefill, one token for a decode step.
    pub tokens: &'a [u32],
}

/// A causal language model that runs prefill and decode steps.
pub trait DecoderBackend: Send {
    /// Per-sequence state (the KV cache).
    type State: Send;
    /// A fresh, empty state.
    fn new_state(&self) -> Self::State;
    /// Runs one step for every sequence of the batch and returns, per sequence, the logits of its
    /// last new position. A sequence's result never depends on the others in the batch.
    fn forward(&mut self, batch: &mut [Step<'_, Self::State>]) -> Result<Vec<Vec<f32>>>;
    /// Number of positions the model can attend to.
    fn context_length(&self) -> usize;
    /// Bytes one position of one sequence takes in the KV cache (0 when unknown).
    fn kv_bytes_per_position(&self) -> usize {
        0
    }
    /// Rows of its KV cache per position (layers x key/value x heads), for [`KvBlock`]s.
    fn kv_rows(&self) -> usize {
        0
    }
    /// A copy of the KV of positions `range` of a sequence (for the prefix cache).
    fn read_kv(&self, state: &Self::State, range: Range<usize>) -> Result<KvBlock> {
        let _ = (state, range);
        Err(Error::engine("decoder", "this backend cannot copy its KV cache"))
    }
    /// Fills an empty sequence with cached KV: `pieces` in order become its positions `0..n`.
    fn load_kv(&mut self, state: &mut Self::State, pieces: &[KvPiece<'_>]) -> Result<()> {
        let _ = (state, pieces);
        Err(Error::engine("decoder", "this backend cannot copy its KV cache"))
    }
    /// The threads its model calls run on, for work beside them (the sampler's rows), when it
    /// has its own.
    fn threads(&self) -> Option<&dyn ParallelFor> {
        None
    }
    /// Whether [`DecoderBackend::forward`] runs the decode steps of several sequences as one call.
    fn batching(&self) -> BatchDecode {
        BatchDecode::OneAtATime("the backend runs one sequence per call".into())
    }
}

/// How a decoder runs the decode steps of several sequences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchDecode {
    /// As one model call; checked to give each sequence the bits it gets alone.
    Batched,
    /// One sequence per call, for the reason given.
    OneAtATime(String),
}

/// Prompts of the batch-invariance probe (token ids valid in any real vocabulary), of different
/// lengths so that rows hold different pasts.
const PROBE_PROMPTS: [&[u32]; 3] =
    [&[101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112, 113], &[201, 202, 203, 204, 205], &[301]];

/// Tokens each probe sequence is fed after its prompt, one decode step each.
const PROBE_FOLLOW: [u32; 4] = [41, 42, 43, 44];

/// Checks, on the model itself, that a decode step run for several sequences in one call gives
/// each sequence bit for bit the logits it gets alone: three sequences of different lengths, four
/// decode steps alone (batch of 1), then the same steps batched by three and by two. Returns
/// `None` when every row matched, else what differed. (It catches kernels that take another path
/// for one row, such as MatMulNBits without int8 compute, and attention that reads padding.)
pub fn probe_batch_invariance<B: DecoderBackend>(backend: &mut B) -> Result<Option<String>> {
    let mut alone: Vec<Vec<Vec<f32>>> = Vec::new();
    for prompt in PROBE_PROMPTS {
        let mut state = backend.new_state();
        backend.forward(&mut [Step { state: &mut state, tokens: prompt }])?;
        let mut rows = Vec::new();
        for token in PROBE_FOLLOW {
            rows.extend(backend.forward(&mut [Step { state: &mut state, tokens: &[token] }])?);
        }
        alone.push(rows);
    }
    for width in [3, 2] {
        let mut states: Vec<B::State> = PROBE_PROMPTS[..width].iter().map(|_| backend.new_state()).collect();
        for (state, prompt) in states.iter_mut().zip(PROBE_PROMPTS) {
            backend.forward(&mut [Step { state, tokens: prompt }])?;
        }
        for (step, token) in PROBE_FOLLOW.iter().enumerate() {
            let tokens = [*token];
            let mut batch: Vec<Step<'_, B::State>> =
                states.iter_mut().map(|state| Step { state, tokens: &tokens }).collect();
            for (seq, row) in backend.forward(&mut batch)?.iter().enumerate() {
                let expected = &alone[seq][step];
                if row != expected {
                    let diff = row.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    return Ok(Some(format!(
                        "a probe decode step batched by {width} differs from the same step alone (by up to {diff:.2e}); \
                         int8-compute MatMulNBits (accuracy_level 4) and GroupQueryAttention make a graph batch invariant"
                    )));
                }
            }
        }
    }
    Ok(None)
}

/// Token-level hidden states of an encoder for a right-padded batch.
pub struct Hidden {
    /// `[batch * seq * dim]`, row-major.
    pub data: Vec<f32>,
    /// Padded sequence length.
    pub seq: usize,
    /// Hidden size.
    pub dim: usize,
}

/// An encoder (BERT-like) model.
pub trait EncoderBackend: Send {
    /// Runs a right-padded batch: `ids` and `mask` are `[batch * seq]`.
    fn encode(&mut self, ids: &[i64], mask: &[i64], batch: usize, seq: usize) -> Result<Hidden>;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoder whose logits are a function of a sequence's own tokens, plus `leak` times the
    /// width of the batch it ran in (a kernel that takes another path for one row).
    struct Fake {
        leak: f32,
    }

    impl DecoderBackend for Fake {
        type State = Vec<u32>;

        fn new_state(&self) -> Vec<u32> {
            Vec::new()
        }

        fn forward(&mut self, batch: &mut [Step<'_, Vec<u32>>]) -> Result<Vec<Vec<f32>>> {
            let width = batch.len() as f32;
            Ok(batch
                .iter_mut()
                .map(|step| {
                    step.state.extend_from_slice(step.tokens);
                    let sum: u32 = step.state.iter().sum();
                    vec![sum as f32, step.state.len() as f32 + self.leak * width]
                })
                .collect())
        }

        fn context_length(&self) -> usize {
            64
        }
    }

    #[test]
    fn the_probe_passes_a_backend_whose_rows_do_not_see_each_other() {
        assert_eq!(probe_batch_invariance(&mut Fake { leak: 0.0 }).unwrap(), None);
    }

    #[test]
    fn the_probe_names_the_batch_width_that_changed_a_row() {
        let found = probe_batch_invariance(&mut Fake { leak: 1e-3 }).unwrap().expect("a leaking backend is caught");
        assert!(found.contains("batched by 3"), "{found}");
        assert!(found.contains("1.00e-3") || found.contains("2.00e-3"), "{found}");
    }
}
