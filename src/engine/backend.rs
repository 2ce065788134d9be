//! Inference backends behind two small traits, so CPU, CUDA and test fakes are swappable.
//! Batching and scheduling live outside: a backend only runs the steps it is given.

use std::borrow::Cow;
use std::path::Path;

use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{IoBinding, Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorElementType};

use crate::config::Device;
use crate::error::{Error, Result};

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

/// Fixed session settings; every one of them is part of the determinism contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSettings {
    /// Intra-op threads.
    pub intra_threads: usize,
    /// Execution provider.
    pub device: Device,
    /// CUDA device ordinal.
    pub cuda_device_id: i32,
}

/// Builds an ONNX Runtime session with the project's fixed options.
#[allow(clippy::result_large_err)] // the large error type is ort's own builder error
pub fn build_session(
    env: &ort::environment::Environment,
    onnx: &Path,
    model: &str,
    s: SessionSettings,
) -> Result<Session> {
    let fail = |e: String| {
        Error::model(
            model,
            format!(
                "cannot load {}: {e}; the file is corrupt or not an ONNX model, fetch the model again",
                onnx.display()
            ),
        )
    };
    // Intra-op threads spin (between the many small nodes of a decode step, parking and waking
    // them cost ~35% of decode speed) and keep spinning a bounded moment after a Run() returns,
    // so the next step or sub-batch finds them awake; then they sleep. Measured idle CPU of the
    // daemon over 10 s: 0.5% right after work, 0.1% after that (with
    // `session.force_spinning_stop` = 1: 0.2%, and one-text embeds ~5% slower). Spinning changes
    // no number.
    let configure = |b: SessionBuilder| -> std::result::Result<SessionBuilder, ort::Error<SessionBuilder>> {
        b.with_optimization_level(GraphOptimizationLevel::All)?
            .with_intra_threads(s.intra_threads)?
            .with_inter_threads(1)?
            .with_parallel_execution(false)?
            .with_intra_op_spinning(true)?
            .with_config_entry("session.force_spinning_stop", "0")?
            .with_inter_op_spinning(false)?
            .with_deterministic_compute(true)
    };
    let builder = Session::builder(env).map_err(|e| fail(e.to_string()))?;
    let mut builder = configure(builder).map_err(|e| fail(e.to_string()))?;
    // No arena: ONNX Runtime's CPU arena keeps the peak of every run (a long sequence's KV
    // cache, a large batch's attention scores) for the life of the process; with plain
    // allocations the worker gives that memory back after large jobs (malloc_trim). Decode
    // speed measured the same (40.3-40.9 vs 39.8-40.7 tokens/s, 48 tokens through the daemon).
    if s.device == Device::Cpu {
        builder = builder
            .with_execution_providers([ort::ep::CPU::default().with_arena_allocator(false).build()])
            .map_err(|e| fail(e.to_string()))?;
    }
    if s.device == Device::Cuda {
        let cuda =
            ort::ep::CUDA::default().with_device_id(s.cuda_device_id).with_tf32(false).build().error_on_failure();
        builder = builder
            .with_execution_providers([cuda])
            .map_err(|e| Error::model(model, format!("CUDA execution provider unavailable: {e}; install the CUDA build of ONNX Runtime and CUDA 13 libraries, or set device = \"cpu\"")))?;
    }
    std::fs::File::open(onnx).map_err(|e| Error::io(onnx, e))?;
    builder.commit_from_file(onnx).map_err(|e| fail(e.to_string()))
}

fn inference(model: &str) -> impl Fn(ort::Error) -> Error + '_ {
    move |source| Error::Inference { model: model.to_string(), source }
}

fn i64_tensor(shape: [usize; 2], data: Vec<i64>, model: &str) -> Result<DynValue> {
    Tensor::from_array((shape, data)).map(|t| t.into_dyn()).map_err(inference(model))
}

/// Names and KV geometry of a decoder graph: Hugging Face exports and the onnxruntime-genai
/// layout (GroupQueryAttention) take the same inputs; genai_config.json may rename them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecoderLayout {
    /// Key/value heads.
    pub kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// Past key input name, `%d` standing for the layer.
    pub past_key: String,
    /// Past value input name.
    pub past_value: String,
    /// Present key output name.
    pub present_key: String,
    /// Present value output name.
    pub present_value: String,
}

impl DecoderLayout {
    /// The Hugging Face export's names (`past_key_values.%d.key`, `present.%d.key`...).
    pub fn hugging_face(kv_heads: usize, head_dim: usize) -> Self {
        DecoderLayout {
            kv_heads,
            head_dim,
            past_key: "past_key_values.%d.key".into(),
            past_value: "past_key_values.%d.value".into(),
            present_key: "present.%d.key".into(),
            present_value: "present.%d.value".into(),
        }
    }

    fn name(pattern: &str, layer: usize) -> String {
        pattern.replace("%d", &layer.to_string())
    }
}

/// Positions the first shared KV buffer of a sequence holds (it doubles when full). Small, so
/// that the reference prompts (about 40 tokens plus 48 new ones) already cross a growth.
const MIN_KV_CAPACITY: usize = 64;

/// The last position's logits.
fn last_logits(model: &str, outputs: &ort::session::SessionOutputs<'_>) -> Result<Vec<f32>> {
    let logits =
        outputs.get("logits").ok_or_else(|| Error::model(model, "decoder ONNX graph has no `logits` output"))?;
    let (shape, data) = logits.try_extract_tensor::<f32>().map_err(inference(model))?;
    let vocab = *shape.last().unwrap_or(&0) as usize;
    if vocab == 0 || data.len() < vocab {
        return Err(Error::model(model, format!("unexpected logits shape {shape:?}")));
    }
    Ok(data[data.len() - vocab..].to_vec())
}

/// A decoder-only ONNX graph with `input_ids`, `attention_mask`, optional `position_ids`, and a
/// past/present KV pair per layer `[batch, kv_heads, seq, head_dim]`: a Hugging Face export or the
/// onnxruntime-genai layout (GroupQueryAttention, which derives positions from the mask).
pub struct OnnxDecoder {
    session: Session,
    model: String,
    layout: DecoderLayout,
    /// Per layer: past key, past value, present key, present value names.
    names: Vec<[String; 4]>,
    context: usize,
    has_position_ids: bool,
    share_buffer: bool,
}

/// The KV cache of one sequence for [`OnnxDecoder`].
pub struct OnnxKv {
    /// Concatenating graphs: the last run's present values, fed back as the next past.
    past: Vec<(DynValue, DynValue)>,
    /// Graphs that write in place: one buffer per layer and kind, bound as past and present.
    shared: Option<SharedKv>,
    len: usize,
}

/// KV buffers `[1, kv_heads, capacity, head_dim]` that GroupQueryAttention reads as past and
/// writes as present (onnxruntime-genai's `past_present_share_buffer`): a step writes only its new
/// positions instead of copying the whole cache into a new present tensor.
struct SharedKv {
    binding: IoBinding,
    buffers: Vec<Tensor<f32>>,
    capacity: usize,
}

impl OnnxDecoder {
    /// Wraps a session, checking that its inputs follow the decoder contract.
    /// With `share_buffer` (GroupQueryAttention graphs only), past and present share one buffer.
    pub fn new(
        session: Session,
        model: &str,
        layout: DecoderLayout,
        context: usize,
        share_buffer: bool,
    ) -> Result<Self> {
        let inputs: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        for required in ["input_ids", "attention_mask"] {
            if !inputs.contains(&required) {
                return Err(Error::model(model, format!("decoder ONNX graph has no `{required}` input")));
            }
        }
        let names: Vec<[String; 4]> = (0..)
            .map(|i| {
                [&layout.past_key, &layout.past_value, &layout.present_key, &layout.present_value]
                    .map(|p| DecoderLayout::name(p, i))
            })
            .take_while(|n| inputs.contains(&n[0].as_str()))
            .collect();
        if names.is_empty() {
            return Err(Error::model(
                model,
                format!(
                    "decoder ONNX graph has no {} input; export it with KV cache (`--task text-generation-with-past`)",
                    DecoderLayout::name(&layout.past_key, 0)
                ),
            ));
        }
        let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        if let Some(missing) = names.iter().flat_map(|n| &n[2..]).find(|n| !outputs.contains(&n.as_str())) {
            return Err(Error::model(model, format!("decoder ONNX graph has no `{missing}` output")));
        }
        let past: Vec<&str> = names.iter().flat_map(|n| [n[0].as_str(), n[1].as_str()]).collect();
        for input in session.inputs().iter().filter(|i| past.contains(&i.name())) {
            if input.dtype().tensor_type() != Some(TensorElementType::Float32) {
                return Err(Error::model(
                    model,
                    format!("input {} is not float32; only float32 KV caches are supported", input.name()),
                ));
            }
        }
        let has_position_ids = inputs.contains(&"position_ids");
        Ok(OnnxDecoder { session, model: model.to_string(), layout, names, context, has_position_ids, share_buffer })
    }

    fn empty_kv(&self) -> Result<DynValue> {
        Tensor::from_array(([1usize, self.layout.kv_heads, 0, self.layout.head_dim], Vec::<f32>::new()))
            .map(|t| t.into_dyn())
            .map_err(inference(&self.model))
    }

    /// The step's `input_ids`, `attention_mask` and (when the graph takes them) `position_ids`.
    fn step_inputs(&self, past: usize, tokens: &[u32]) -> Result<Vec<(&'static str, DynValue)>> {
        let n = tokens.len();
        let mut inputs = vec![
            ("input_ids", i64_tensor([1, n], tokens.iter().map(|&t| t as i64).collect(), &self.model)?),
            ("attention_mask", i64_tensor([1, past + n], vec![1; past + n], &self.model)?),
        ];
        if self.has_position_ids {
            inputs.push(("position_ids", i64_tensor([1, n], (past as i64..(past + n) as i64).collect(), &self.model)?));
        }
        Ok(inputs)
    }

    /// Makes room for `needed` positions in the shared buffers: new buffers (doubling, capped at
    /// the context) with the first `state.len` positions copied over, bound as past and present.
    fn reserve_shared(&self, state: &mut OnnxKv, needed: usize) -> Result<()> {
        if state.shared.as_ref().is_some_and(|s| s.capacity >= needed) {
            return Ok(());
        }
        let model = &self.model;
        let old = state.shared.take();
        let capacity =
            old.as_ref().map_or(0, |s| s.capacity * 2).max(needed).max(MIN_KV_CAPACITY).min(self.context.max(needed));
        let (heads, dim, len) = (self.layout.kv_heads, self.layout.head_dim, state.len);
        let mut binding = self.session.create_binding().map_err(inference(model))?;
        let cpu = ort::memory::MemoryInfo::new(
            ort::memory::AllocationDevice::CPU,
            0,
            ort::memory::AllocatorType::Device,
            ort::memory::MemoryType::Default,
        )
        .map_err(inference(model))?;
        binding.bind_output_to_device("logits", &cpu).map_err(inference(model))?;
        let mut buffers = Vec::with_capacity(2 * self.names.len());
        for (i, names) in self.names.iter().flat_map(|n| [(&n[0], &n[2]), (&n[1], &n[3])]).enumerate() {
            // Allocated by ONNX Runtime (outputs can only be bound to such tensors), zeroed.
            let mut buffer = Tensor::<f32>::new(&ort::memory::Allocator::default(), [1, heads, capacity, dim])
                .map_err(inference(model))?;
            let data = buffer.extract_tensor_mut().1;
            data.fill(0.0);
            if let Some(old) = &old {
                let from = old.buffers[i].extract_tensor().1;
                for h in 0..heads {
                    let (src, dst) = (h * old.capacity * dim, h * capacity * dim);
                    data[dst..dst + len * dim].copy_from_slice(&from[src..src + len * dim]);
                }
            }
            binding.bind_input(names.0.as_str(), &buffer).map_err(inference(model))?;
            binding.bind_output(names.1.as_str(), &mut buffer).map_err(inference(model))?;
            buffers.push(buffer);
        }
        state.shared = Some(SharedKv { binding, buffers, capacity });
        Ok(())
    }

    fn forward_shared(&mut self, state: &mut OnnxKv, tokens: &[u32]) -> Result<Vec<f32>> {
        self.reserve_shared(state, state.len + tokens.len())?;
        let inputs = self.step_inputs(state.len, tokens)?;
        let shared = state.shared.as_mut().ok_or_else(|| Error::engine(&self.model, "no KV buffers"))?;
        for (name, value) in &inputs {
            shared.binding.bind_input(*name, value).map_err(inference(&self.model))?;
        }
        let outputs = self.session.run_binding(&shared.binding).map_err(inference(&self.model))?;
        let last = last_logits(&self.model, &outputs)?;
        drop(outputs);
        state.len += tokens.len();
        Ok(last)
    }

    fn forward_one(&mut self, state: &mut OnnxKv, tokens: &[u32]) -> Result<Vec<f32>> {
        if self.share_buffer {
            return self.forward_shared(state, tokens);
        }
        let n = tokens.len();
        let past = state.len;
        let model = self.model.clone();
        let mut inputs: Vec<(Cow<'static, str>, SessionInputValue<'static>)> =
            self.step_inputs(past, tokens)?.into_iter().map(|(name, value)| (name.into(), value.into())).collect();
        let mut past_values = std::mem::take(&mut state.past);
        if past_values.is_empty() {
            for _ in 0..self.names.len() {
                past_values.push((self.empty_kv()?, self.empty_kv()?));
            }
        }
        for ((k, v), [key, value, ..]) in past_values.into_iter().zip(&self.names) {
            inputs.push((key.clone().into(), k.into()));
            inputs.push((value.clone().into(), v.into()));
        }
        let mut outputs = self.session.run(inputs).map_err(inference(&model))?;
        let last = last_logits(&self.model, &outputs)?;
        let mut present = Vec::with_capacity(self.names.len());
        for [.., key, value] in &self.names {
            let missing = |name: &str| Error::model(&model, format!("decoder ONNX graph has no `{name}` output"));
            let k = outputs.remove(key.as_str()).ok_or_else(|| missing(key))?;
            let v = outputs.remove(value.as_str()).ok_or_else(|| missing(value))?;
            present.push((k, v));
        }
        state.past = present;
        state.len = past + n;
        Ok(last)
    }
}

impl DecoderBackend for OnnxDecoder {
    type State = OnnxKv;

    fn new_state(&self) -> OnnxKv {
        OnnxKv { past: Vec::new(), shared: None, len: 0 }
    }

    fn forward(&mut self, batch: &mut [Step<'_, OnnxKv>]) -> Result<Vec<Vec<f32>>> {
        // Each sequence runs alone: bit-identical to an unbatched run by construction.
        batch.iter_mut().map(|step| self.forward_one(step.state, step.tokens)).collect()
    }

    fn context_length(&self) -> usize {
        self.context
    }
}

/// An encoder ONNX export with `input_ids`, `attention_mask` and optional `token_type_ids`.
pub struct OnnxEncoder {
    session: Session,
    model: String,
    has_token_type_ids: bool,
}

impl OnnxEncoder {
    /// Wraps a session, checking its inputs.
    pub fn new(session: Session, model: &str) -> Result<Self> {
        let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        for required in ["input_ids", "attention_mask"] {
            if !names.contains(&required) {
                return Err(Error::model(model, format!("encoder ONNX graph has no `{required}` input")));
            }
        }
        let has_token_type_ids = names.contains(&"token_type_ids");
        Ok(OnnxEncoder { session, model: model.to_string(), has_token_type_ids })
    }
}

impl EncoderBackend for OnnxEncoder {
    fn encode(&mut self, ids: &[i64], mask: &[i64], batch: usize, seq: usize) -> Result<Hidden> {
        let model = self.model.clone();
        let mut inputs: Vec<(Cow<'static, str>, SessionInputValue<'static>)> = vec![
            ("input_ids".into(), i64_tensor([batch, seq], ids.to_vec(), &model)?.into()),
            ("attention_mask".into(), i64_tensor([batch, seq], mask.to_vec(), &model)?.into()),
        ];
        if self.has_token_type_ids {
            inputs.push(("token_type_ids".into(), i64_tensor([batch, seq], vec![0; batch * seq], &model)?.into()));
        }
        let outputs = self.session.run(inputs).map_err(inference(&model))?;
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
