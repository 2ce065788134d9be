//! Inference backends behind two small traits, so CPU, CUDA and test fakes are swappable.
//! Batching and scheduling live outside: a backend only runs the steps it is given.

use std::borrow::Cow;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{IoBinding, Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorElementType};

use crate::config::Device;
use crate::engine::concat_kv::ConcatKv;
use crate::engine::kv_arena::{self, KvArena, KvSlot};
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
    /// Bytes one position of one sequence takes in the KV cache (0 when unknown).
    fn kv_bytes_per_position(&self) -> usize {
        0
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

/// Whether a model's runs repeat their input shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shapes {
    /// An encoder's: batches of a few sizes. ONNX Runtime's memory pattern (one block planned per
    /// input shape, kept) pays off.
    Repeating,
    /// A decoder's: every step has another past length. A memory pattern per shape would be
    /// planned, allocated and kept for each one (measured: a 2,600-token generation's RSS grew by
    /// 1.3 GB with it, stayed flat without it); it is off. It changes no number either way.
    PerStep,
}

/// Builds an ONNX Runtime session with the project's fixed options.
#[allow(clippy::result_large_err)] // the large error type is ort's own builder error
pub fn build_session(
    env: &ort::environment::Environment,
    onnx: &Path,
    model: &str,
    s: SessionSettings,
    shapes: Shapes,
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
            .with_deterministic_compute(true)?
            .with_memory_pattern(shapes == Shapes::Repeating)
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

/// The last position's logits of each of `rows` rows.
fn last_logits(model: &str, outputs: &ort::session::SessionOutputs<'_>, rows: usize) -> Result<Vec<Vec<f32>>> {
    let logits =
        outputs.get("logits").ok_or_else(|| Error::model(model, "decoder ONNX graph has no `logits` output"))?;
    let (shape, data) = logits.try_extract_tensor::<f32>().map_err(inference(model))?;
    let vocab = *shape.last().unwrap_or(&0) as usize;
    let per_row = data.len() / rows.max(1);
    if vocab == 0 || per_row < vocab || per_row * rows != data.len() {
        return Err(Error::model(model, format!("unexpected logits shape {shape:?} for {rows} rows")));
    }
    Ok(data.chunks(per_row).map(|row| row[per_row - vocab..].to_vec()).collect())
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
    /// Which of the optional inputs ([`DECODER_OPTIONAL_INPUTS`]) the graph takes.
    has_position_ids: bool,
    has_num_logits_to_keep: bool,
    has_use_cache_branch: bool,
    /// Graphs that write in place (GroupQueryAttention with `past_present_share_buffer`): every
    /// sequence's KV cache, one row each.
    arena: Option<Arc<Mutex<KvArena>>>,
    /// Whether decode steps of several sequences run as one call (see [`probe_batch_invariance`]).
    batching: BatchDecode,
    /// The last call's binding of arena rows `0..rows`, reused while the arena keeps its buffers
    /// (a step then only rebinds `input_ids` and `attention_mask`).
    bound: Option<BoundRows>,
}

/// An IoBinding of the KV arena's first `rows` rows (and of the logits output).
struct BoundRows {
    binding: IoBinding,
    rows: usize,
    generation: u64,
}

/// Decoder inputs fed when the graph takes them, besides `input_ids`, `attention_mask` and the
/// KV cache: positions (unless RoPE is fused into GroupQueryAttention), the number of positions
/// to compute logits for (always 1: the last), and Optimum's merged-decoder branch flag.
const DECODER_OPTIONAL_INPUTS: &[&str] = &["position_ids", "num_logits_to_keep", "use_cache_branch"];

/// Refuses a graph with an input steadytext does not feed, in one line saying which and why.
fn check_inputs(session: &Session, model: &str, what: &str, fed: &[&str], past: &[&str]) -> Result<()> {
    match session.inputs().iter().map(|i| i.name()).find(|n| !fed.contains(n) && !past.contains(n)) {
        None => Ok(()),
        Some(other) => Err(Error::model(
            model,
            format!(
                "the {what} ONNX graph takes input `{other}`, which steadytext does not feed (it feeds {}{}); use an export without it",
                fed.join(", "),
                if past.is_empty() { "" } else { " and the KV cache" }
            ),
        )),
    }
}

/// The KV cache of one sequence for [`OnnxDecoder`].
pub struct OnnxKv {
    /// Concatenating graphs: the sequence's two sets of buffers.
    concat: Option<ConcatKv>,
    /// Graphs that write in place: the sequence's row in the decoder's arena.
    slot: Option<KvSlot>,
    len: usize,
}

impl OnnxDecoder {
    /// Wraps a session, checking that its inputs follow the decoder contract.
    /// With `share_buffer` (GroupQueryAttention graphs only), past and present share one buffer,
    /// and decode steps are batched if [`probe_batch_invariance`] finds that changes no bit.
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
        let fed: Vec<&str> = ["input_ids", "attention_mask"].iter().chain(DECODER_OPTIONAL_INPUTS).copied().collect();
        check_inputs(&session, model, "decoder", &fed, &past)?;
        let has_position_ids = inputs.contains(&"position_ids");
        let has_num_logits_to_keep = inputs.contains(&"num_logits_to_keep");
        let has_use_cache_branch = inputs.contains(&"use_cache_branch");
        let arena = share_buffer
            .then(|| Arc::new(Mutex::new(KvArena::new(layout.kv_heads, layout.head_dim, 2 * names.len(), context))));
        let mut decoder = OnnxDecoder {
            session,
            model: model.to_string(),
            layout,
            names,
            context,
            has_position_ids,
            has_num_logits_to_keep,
            has_use_cache_branch,
            arena,
            batching: BatchDecode::Batched,
            bound: None,
        };
        decoder.batching = if decoder.arena.is_none() {
            BatchDecode::OneAtATime(
                "its KV cache is concatenated per step (a Hugging Face export): only GroupQueryAttention graphs with \
                 past_present_share_buffer batch"
                    .into(),
            )
        } else {
            match probe_batch_invariance(&mut decoder)? {
                None => BatchDecode::Batched,
                Some(reason) => BatchDecode::OneAtATime(reason),
            }
        };
        Ok(decoder)
    }

    /// The step's `input_ids`, `attention_mask` (right-padded) and, when the graph takes them,
    /// `position_ids`, for rows that hold `past[b]` positions and each feed `tokens[b]` (all of
    /// one length).
    fn step_inputs(&self, past: &[usize], tokens: &[&[u32]]) -> Result<Vec<(&'static str, DynValue)>> {
        let (rows, n) = (tokens.len(), tokens.first().map_or(0, |t| t.len()));
        let total = past.iter().max().copied().unwrap_or(0) + n;
        let ids = tokens.iter().flat_map(|t| t.iter().map(|&id| id as i64)).collect();
        let mask = past.iter().flat_map(|&p| (0..total).map(move |i| i64::from(i < p + n))).collect();
        let mut inputs = vec![
            ("input_ids", i64_tensor([rows, n], ids, &self.model)?),
            ("attention_mask", i64_tensor([rows, total], mask, &self.model)?),
        ];
        if self.has_position_ids {
            let positions = past.iter().flat_map(|&p| p as i64..(p + n) as i64).collect();
            inputs.push(("position_ids", i64_tensor([rows, n], positions, &self.model)?));
        }
        if self.has_num_logits_to_keep {
            let one = Tensor::from_array(([0usize; 0], vec![1i64])).map_err(inference(&self.model))?;
            inputs.push(("num_logits_to_keep", one.into_dyn()));
        }
        if self.has_use_cache_branch {
            let cached = past.iter().any(|&p| p > 0);
            let flag = Tensor::from_array(([1usize], vec![cached])).map_err(inference(&self.model))?;
            inputs.push(("use_cache_branch", flag.into_dyn()));
        }
        Ok(inputs)
    }

    /// One call over the arena rows of `states`, each feeding its `tokens` (all of one length).
    fn forward_shared(&mut self, states: &mut [&mut OnnxKv], tokens: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let model = self.model.clone();
        let arena = self.arena.clone().ok_or_else(|| Error::engine(&model, "no KV arena"))?;
        let ids: Vec<u64> = states.iter_mut().map(|s| OnnxKv::slot(s, &arena).id()).collect();
        let n = tokens.first().map_or(0, |t| t.len());
        let mut a = kv_arena::lock(&arena);
        a.reserve(states.iter().map(|s| s.len).max().unwrap_or(0) + n).map_err(inference(&model))?;
        // Row r of the call is the sequence at `order[r]`.
        let rows = a.gather(&ids);
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| rows[i]);
        if order.iter().enumerate().any(|(r, &i)| rows[i] != r) {
            return Err(Error::engine(&model, "KV arena rows are not contiguous"));
        }
        let past: Vec<usize> = order.iter().map(|&i| states[i].len).collect();
        let row_tokens: Vec<&[u32]> = order.iter().map(|&i| tokens[i]).collect();
        let fresh = |bound: &Option<BoundRows>| {
            bound.as_ref().is_some_and(|b| b.rows == ids.len() && b.generation == a.generation())
        };
        if !fresh(&self.bound) {
            self.bound = None;
            let mut binding = self.session.create_binding().map_err(inference(&model))?;
            let names: Vec<(&str, &str)> = self
                .names
                .iter()
                .flat_map(|n| [(n[0].as_str(), n[2].as_str()), (n[1].as_str(), n[3].as_str())])
                .collect();
            a.bind_rows(&mut binding, &names, 0, ids.len()).map_err(inference(&model))?;
            let cpu = kv_arena::cpu_memory().map_err(inference(&model))?;
            binding.bind_output_to_device("logits", &cpu).map_err(inference(&model))?;
            self.bound = Some(BoundRows { binding, rows: ids.len(), generation: a.generation() });
        }
        let inputs = self.step_inputs(&past, &row_tokens)?;
        let bound = self.bound.as_mut().ok_or_else(|| Error::engine(&model, "no binding"))?;
        for (name, value) in inputs {
            bound.binding.bind_input(name, &value).map_err(inference(&model))?;
        }
        let outputs = self.session.run_binding(&bound.binding).map_err(inference(&model))?;
        let by_row = last_logits(&model, &outputs, ids.len())?;
        let mut logits = vec![Vec::new(); ids.len()];
        for (row, &i) in by_row.into_iter().zip(&order) {
            logits[i] = row;
            states[i].len += n;
            a.set_len(ids[i], states[i].len);
        }
        Ok(logits)
    }

    fn forward_concat(&mut self, state: &mut OnnxKv, tokens: &[u32]) -> Result<Vec<f32>> {
        let n = tokens.len();
        let past = state.len;
        let model = self.model.clone();
        let (heads, dim, kinds) = (self.layout.kv_heads, self.layout.head_dim, 2 * self.names.len());
        let context = self.context;
        let kv = state.concat.get_or_insert_with(|| ConcatKv::new(heads, dim, kinds, context));
        kv.reserve(past, past + n).map_err(inference(&model))?;
        let mut binding = self.session.create_binding().map_err(inference(&model))?;
        let names: Vec<(&str, &str)> =
            self.names.iter().flat_map(|n| [(n[0].as_str(), n[2].as_str()), (n[1].as_str(), n[3].as_str())]).collect();
        kv.bind(&mut binding, &names, past, n).map_err(inference(&model))?;
        for (name, value) in self.step_inputs(&[past], &[tokens])? {
            binding.bind_input(name, &value).map_err(inference(&model))?;
        }
        let cpu = kv_arena::cpu_memory().map_err(inference(&model))?;
        binding.bind_output_to_device("logits", &cpu).map_err(inference(&model))?;
        let outputs = self.session.run_binding(&binding).map_err(inference(&model))?;
        let last = last_logits(&model, &outputs, 1)?.pop().unwrap_or_default();
        drop(outputs);
        kv.flip();
        state.len = past + n;
        Ok(last)
    }
}

impl OnnxKv {
    /// The sequence's arena row, claimed on first use.
    fn slot<'s>(state: &'s mut OnnxKv, arena: &Arc<Mutex<KvArena>>) -> &'s KvSlot {
        state.slot.get_or_insert_with(|| KvArena::claim(arena))
    }
}

impl DecoderBackend for OnnxDecoder {
    type State = OnnxKv;

    fn new_state(&self) -> OnnxKv {
        OnnxKv { concat: None, slot: None, len: 0 }
    }

    fn forward(&mut self, batch: &mut [Step<'_, OnnxKv>]) -> Result<Vec<Vec<f32>>> {
        if self.arena.is_none() {
            return batch.iter_mut().map(|step| self.forward_concat(step.state, step.tokens)).collect();
        }
        // Decode steps (one token after a prefill) run as one call when batching is on; prompt
        // chunks always run alone.
        let count = batch.len();
        let batched = self.batching == BatchDecode::Batched;
        let (mut together, mut alone): (Vec<_>, Vec<_>) =
            batch.iter_mut().enumerate().partition(|(_, step)| batched && step.tokens.len() == 1 && step.state.len > 0);
        if together.len() == 1 {
            alone.append(&mut together);
        }
        let mut logits: Vec<Option<Vec<f32>>> = vec![None; count];
        for (i, step) in alone {
            logits[i] = self.forward_shared(&mut [&mut *step.state], &[step.tokens])?.pop();
        }
        if !together.is_empty() {
            let tokens: Vec<&[u32]> = together.iter().map(|(_, s)| s.tokens).collect();
            let index: Vec<usize> = together.iter().map(|(i, _)| *i).collect();
            let mut states: Vec<&mut OnnxKv> = together.into_iter().map(|(_, s)| &mut *s.state).collect();
            for (i, row) in index.into_iter().zip(self.forward_shared(&mut states, &tokens)?) {
                logits[i] = Some(row);
            }
        }
        logits.into_iter().map(|l| l.ok_or_else(|| Error::engine(&self.model, "a step got no logits"))).collect()
    }

    fn context_length(&self) -> usize {
        self.context
    }

    fn batching(&self) -> BatchDecode {
        self.batching.clone()
    }

    fn kv_bytes_per_position(&self) -> usize {
        // A concatenating graph's cache is two sets of buffers (see ConcatKv).
        let sets = if self.arena.is_some() { 1 } else { 2 };
        sets * 2 * self.names.len() * self.layout.kv_heads * self.layout.head_dim * std::mem::size_of::<f32>()
    }
}

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
        Ok(OnnxEncoder { session, model: model.to_string(), has_token_type_ids, has_position_ids, empty_past })
    }
}

impl OnnxEncoder {
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

/// Checks that a `what` graph (encoder, cross-encoder) takes `input_ids` and `attention_mask`,
/// and nothing but those, `token_type_ids`, the `optional` inputs and the `past` cache; whether
/// it takes `token_type_ids`.
fn bert_inputs(session: &Session, model: &str, what: &str, optional: &[&str], past: &[&str]) -> Result<bool> {
    let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
    for required in ["input_ids", "attention_mask"] {
        if !names.contains(&required) {
            return Err(Error::model(model, format!("{what} ONNX graph has no `{required}` input")));
        }
    }
    let fed: Vec<&str> = ["input_ids", "attention_mask", "token_type_ids"].iter().chain(optional).copied().collect();
    check_inputs(session, model, what, &fed, past)?;
    Ok(names.contains(&"token_type_ids"))
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

/// A sequence-classification graph (a cross-encoder): `input_ids`, `attention_mask` and optional
/// `token_type_ids` in, `logits` `[batch, labels]` out.
pub struct OnnxClassifier {
    session: Session,
    model: String,
    has_token_type_ids: bool,
}

impl OnnxClassifier {
    /// Wraps a session, checking its inputs and output.
    pub fn new(session: Session, model: &str) -> Result<Self> {
        let has_token_type_ids = bert_inputs(&session, model, "cross-encoder", &[], &[])?;
        if !session.outputs().iter().any(|o| o.name() == "logits") {
            return Err(Error::model(model, "cross-encoder ONNX graph has no `logits` output"));
        }
        Ok(OnnxClassifier { session, model: model.to_string(), has_token_type_ids })
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
        let outputs = self.session.run(inputs).map_err(inference(&model))?;
        let (shape, data) = outputs["logits"].try_extract_tensor::<f32>().map_err(inference(&model))?;
        if shape.len() != 2 || shape[0] != 1 {
            return Err(Error::model(&model, format!("unexpected logits shape {shape:?}")));
        }
        Ok(data.to_vec())
    }
}
