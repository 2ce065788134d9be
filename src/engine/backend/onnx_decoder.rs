//! The decoder backend: a causal language model's ONNX graph, run a step at a time.

use std::sync::{Arc, Mutex};

use ort::session::{IoBinding, Session};
use ort::value::{DynValue, Tensor, TensorElementType};

use crate::engine::concat_kv::ConcatKv;
use crate::engine::kernels::int4_matmul::ParallelFor;
use crate::engine::kernels::spin_pool::SpinPool;
use crate::engine::kv_arena::{self, KvArena, KvElement, KvSlot};
use crate::engine::kv_block::{KvBlock, KvPiece};
use crate::error::{Error, Result};

use super::session::{check_inputs, i64_tensor, inference};
use super::{probe_batch_invariance, BatchDecode, DecoderBackend, Step};

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
    /// The threads of the session's own operators (see `kernels::spin_pool`).
    threads: Arc<SpinPool>,
    model: String,
    layout: DecoderLayout,
    /// Per layer: past key, past value, present key, present value names.
    names: Vec<[String; 4]>,
    context: usize,
    /// Which of the optional inputs ([`DECODER_OPTIONAL_INPUTS`]) the graph takes.
    has_position_ids: bool,
    has_cache_position: bool,
    has_num_logits_to_keep: bool,
    has_use_cache_branch: bool,
    /// Graphs that write in place (GroupQueryAttention with `past_present_share_buffer`): every
    /// sequence's KV cache, one row each.
    arena: Option<Arc<Mutex<KvArena>>>,
    /// The KV cache's element type.
    element: KvElement,
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
/// KV cache: positions (unless RoPE is fused into GroupQueryAttention), the positions of the
/// call's tokens in the cache (`cache_position`, one `[seq]` vector for the whole call: newer
/// transformers exports), the number of positions to compute logits for (always 1: the last),
/// and Optimum's merged-decoder branch flag.
const DECODER_OPTIONAL_INPUTS: &[&str] = &["position_ids", "cache_position", "num_logits_to_keep", "use_cache_branch"];

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
        threads: Arc<SpinPool>,
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
        let logits = session.outputs().iter().find(|o| o.name() == "logits").map(|o| o.dtype().tensor_type());
        if let Some(ty) = logits.filter(|&ty| ty != Some(TensorElementType::Float32)) {
            return Err(Error::model(
                model,
                format!("decoder ONNX graph's logits are {ty:?}, not float32 (a GPU variant?): pull a CPU variant"),
            ));
        }
        let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        if let Some(missing) = names.iter().flat_map(|n| &n[2..]).find(|n| !outputs.contains(&n.as_str())) {
            return Err(Error::model(model, format!("decoder ONNX graph has no `{missing}` output")));
        }
        let past: Vec<&str> = names.iter().flat_map(|n| [n[0].as_str(), n[1].as_str()]).collect();
        // float32, or float16 in a shared buffer (our attention's cache; GPU variants, float16
        // throughout, were refused by their logits above); one type for every layer.
        let mut element = None;
        for input in session.inputs().iter().filter(|i| past.contains(&i.name())) {
            let ty = input.dtype().tensor_type();
            let this = ty.and_then(KvElement::of).filter(|&e| e == KvElement::F32 || share_buffer);
            if this.is_none() || element.is_some_and(|e| Some(e) != this) {
                return Err(Error::model(
                    model,
                    format!(
                        "input {} is {ty:?}; KV caches are float32, or float16 with past_present_share_buffer, one \
                         type for every layer",
                        input.name()
                    ),
                ));
            }
            element = this;
        }
        let element = element.unwrap_or(KvElement::F32);
        let fed: Vec<&str> = ["input_ids", "attention_mask"].iter().chain(DECODER_OPTIONAL_INPUTS).copied().collect();
        check_inputs(&session, model, "decoder", &fed, &past)?;
        let has_position_ids = inputs.contains(&"position_ids");
        let has_cache_position = inputs.contains(&"cache_position");
        let has_num_logits_to_keep = inputs.contains(&"num_logits_to_keep");
        let has_use_cache_branch = inputs.contains(&"use_cache_branch");
        let arena = share_buffer.then(|| {
            Arc::new(Mutex::new(KvArena::new(layout.kv_heads, layout.head_dim, element, 2 * names.len(), context)))
        });
        let mut decoder = OnnxDecoder {
            session,
            threads,
            model: model.to_string(),
            layout,
            names,
            context,
            has_position_ids,
            has_cache_position,
            has_num_logits_to_keep,
            has_use_cache_branch,
            arena,
            element,
            batching: BatchDecode::Batched,
            bound: None,
        };
        decoder.batching = if decoder.has_cache_position {
            BatchDecode::OneAtATime("its `cache_position` input is one vector for the whole batch".into())
        } else if decoder.arena.is_none() {
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
        if self.has_cache_position {
            let p = past.first().copied().unwrap_or(0);
            if past.iter().any(|&q| q != p) {
                return Err(Error::engine(
                    &self.model,
                    "rows of different lengths in one call of a cache_position graph",
                ));
            }
            let positions: Vec<i64> = (p as i64..(p + n) as i64).collect();
            let tensor = Tensor::from_array(([n], positions)).map_err(inference(&self.model))?;
            inputs.push(("cache_position", tensor.into_dyn()));
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
            self.bound = Some(BoundRows { binding, rows: ids.len(), generation: a.generation() });
        }
        let inputs = self.step_inputs(&past, &row_tokens)?;
        let bound = self.bound.as_mut().ok_or_else(|| Error::engine(&model, "no binding"))?;
        for (name, value) in inputs {
            bound.binding.bind_input(name, &value).map_err(inference(&model))?;
        }
        // Bound afresh each call: ONNX Runtime keeps the last run's logits in the binding, and a
        // graph that returns every position's logits (onnxruntime-genai's exports) changes shape.
        let cpu = kv_arena::cpu_memory().map_err(inference(&model))?;
        bound.binding.bind_output_to_device("logits", &cpu).map_err(inference(&model))?;
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

    fn kv_rows(&self) -> usize {
        2 * self.names.len() * self.layout.kv_heads
    }

    fn read_kv(&self, state: &OnnxKv, range: std::ops::Range<usize>) -> Result<KvBlock> {
        let missing = || Error::engine(&self.model, format!("the sequence holds no KV for positions {range:?}"));
        if range.end > state.len {
            return Err(missing());
        }
        match (&state.slot, &state.concat) {
            (Some(slot), _) => kv_arena::lock(slot.arena()).read(slot.id(), range.clone()).ok_or_else(missing),
            (None, Some(concat)) => Ok(concat.read(state.len, range)),
            (None, None) => Err(missing()),
        }
    }

    fn load_kv(&mut self, state: &mut OnnxKv, pieces: &[KvPiece<'_>]) -> Result<()> {
        if state.len > 0 {
            return Err(Error::engine(&self.model, "cached KV can only start a sequence"));
        }
        let total = pieces.iter().map(|p| p.range.1 - p.range.0).sum();
        match &self.arena {
            Some(arena) => {
                let id = OnnxKv::slot(state, arena).id();
                kv_arena::lock(arena).write(id, pieces).map_err(inference(&self.model))?;
            }
            None => {
                let (heads, dim, kinds) = (self.layout.kv_heads, self.layout.head_dim, 2 * self.names.len());
                let kv = state.concat.get_or_insert_with(|| ConcatKv::new(heads, dim, kinds, self.context));
                kv.write(pieces).map_err(inference(&self.model))?;
            }
        }
        state.len = total;
        Ok(())
    }

    fn batching(&self) -> BatchDecode {
        self.batching.clone()
    }

    fn threads(&self) -> Option<&dyn ParallelFor> {
        Some(&*self.threads)
    }

    fn kv_bytes_per_position(&self) -> usize {
        // A concatenating graph's cache is two sets of buffers (see ConcatKv).
        let sets = if self.arena.is_some() { 1 } else { 2 };
        sets * 2 * self.names.len() * self.layout.kv_heads * self.layout.head_dim * self.element.size()
    }
}
