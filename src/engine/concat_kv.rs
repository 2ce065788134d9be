//! The KV cache of one sequence of a concatenating decoder (a Hugging Face export, whose graph
//! writes `present = concat(past, new)` every step) in two sets of buffers that take turns: a
//! step reads its past from one set and ONNX Runtime writes the present straight into the other
//! (bound outputs), so no step allocates. Letting ONNX Runtime allocate every step's present
//! instead cost a fresh buffer of the whole cache per layer and step: on the shared SmolLM2 a
//! 2,600-token generation's RSS grew to 1.3 GB (the allocator's churn) and its decode speed fell
//! from 28 to 10 tokens/s.
//!
//! A tensor `[1, heads, len, dim]` is contiguous, so each buffer is a flat run of floats of which
//! a step uses the first `heads * len * dim`; buffers grow by doubling (copying the past once).

use ort::memory::Allocator;
use ort::session::IoBinding;
use ort::value::{Shape, Tensor, TensorRefMut};

use super::kv_arena::{bind_input_in_place, cpu_memory};
use super::kv_block::{KvBlock, KvPiece};

/// Positions a fresh cache holds (doubling when full).
const MIN_CAPACITY: usize = 64;

/// Two sets of buffers, one per layer and kind (key, value) each.
pub(crate) struct ConcatKv {
    /// Most positions it may hold (the model's context).
    context: usize,
    heads: usize,
    dim: usize,
    kinds: usize,
    capacity: usize,
    sets: [Vec<Tensor<f32>>; 2],
    /// Which set holds the past.
    current: usize,
}

impl ConcatKv {
    /// An empty cache for `kinds` tensors of `[1, heads, len, dim]`, of up to `context` positions.
    pub(crate) fn new(heads: usize, dim: usize, kinds: usize, context: usize) -> Self {
        ConcatKv { context, heads, dim, kinds, capacity: 0, sets: [Vec::new(), Vec::new()], current: 0 }
    }

    /// Makes room for `positions` positions, keeping the `len` the past holds.
    pub(crate) fn reserve(&mut self, len: usize, positions: usize) -> ort::Result<()> {
        if positions <= self.capacity {
            return Ok(());
        }
        let capacity = (self.capacity * 2).max(MIN_CAPACITY).min(self.context).max(positions);
        let floats = self.heads * capacity * self.dim;
        let mut sets: [Vec<Tensor<f32>>; 2] = [Vec::with_capacity(self.kinds), Vec::with_capacity(self.kinds)];
        for set in &mut sets {
            for _ in 0..self.kinds {
                // Allocated by ONNX Runtime: outputs can only be bound to such tensors.
                set.push(Tensor::<f32>::new(&Allocator::default(), [floats])?);
            }
        }
        let used = self.heads * len * self.dim;
        for (old, new) in self.sets[self.current].iter().zip(&mut sets[0]) {
            new.extract_tensor_mut().1[..used].copy_from_slice(&old.extract_tensor().1[..used]);
        }
        self.sets = sets;
        self.current = 0;
        self.capacity = capacity;
        Ok(())
    }

    /// Binds the past (`len` positions, from the current set) as the inputs and the present
    /// (`len + n` positions, into the other set) as the outputs named by `names`: one
    /// `(input, output)` pair per kind, in order. Call [`ConcatKv::flip`] after the run.
    pub(crate) fn bind(
        &mut self,
        binding: &mut IoBinding,
        names: &[(&str, &str)],
        len: usize,
        n: usize,
    ) -> ort::Result<()> {
        let info = cpu_memory()?;
        let (heads, dim) = (self.heads as i64, self.dim as i64);
        let [a, b] = &mut self.sets;
        let (past, present) = if self.current == 0 { (a, b) } else { (b, a) };
        for ((past, present), (input, output)) in past.iter_mut().zip(present.iter_mut()).zip(names) {
            let past_data = past.extract_tensor_mut().1;
            // SAFETY: the view covers the first `heads * len * dim` floats of a buffer of
            // `heads * capacity * dim` (capacity >= len + n, see `reserve`) that outlives the run:
            // the caller runs the binding while it holds `&mut self`.
            let past_view: TensorRefMut<'_, f32> = unsafe {
                TensorRefMut::from_raw(
                    info.clone(),
                    past_data.as_mut_ptr().cast(),
                    Shape::new([1, heads, len as i64, dim]),
                )?
            };
            bind_input_in_place(binding, input, &past_view)?;
            let present_data = present.extract_tensor_mut().1;
            // SAFETY: as above, for the first `heads * (len + n) * dim` floats of the other set.
            let present_view: TensorRefMut<'_, f32> = unsafe {
                TensorRefMut::from_raw(
                    info.clone(),
                    present_data.as_mut_ptr().cast(),
                    Shape::new([1, heads, (len + n) as i64, dim]),
                )?
            };
            binding.bind_output(*output, present_view)?;
        }
        Ok(())
    }

    /// A copy of positions `range` of the past, which holds `len` positions.
    pub(crate) fn read(&self, len: usize, range: std::ops::Range<usize>) -> KvBlock {
        let (heads, dim, rows) = (self.heads, self.dim, self.kinds * self.heads);
        let mut block = KvBlock::zeroed(rows, range.len(), dim);
        for (k, buffer) in self.sets[self.current].iter().enumerate() {
            let data = buffer.extract_tensor().1;
            for h in 0..heads {
                let src = h * len * dim;
                block
                    .row_mut(rows, k * heads + h, 0..range.len())
                    .copy_from_slice(&data[src + range.start * dim..src + range.end * dim]);
            }
        }
        block
    }

    /// Makes `pieces`, in order, the past of an empty cache; returns its length.
    pub(crate) fn write(&mut self, pieces: &[KvPiece<'_>]) -> ort::Result<usize> {
        let total: usize = pieces.iter().map(|p| p.range.1 - p.range.0).sum();
        self.reserve(0, total)?;
        let (heads, dim, rows) = (self.heads, self.dim, self.kinds * self.heads);
        for (k, buffer) in self.sets[self.current].iter_mut().enumerate() {
            let data = buffer.extract_tensor_mut().1;
            for h in 0..heads {
                let mut at = h * total * dim;
                for piece in pieces {
                    let (a, b) = piece.range;
                    data[at..at + (b - a) * dim].copy_from_slice(piece.block.row(rows, k * heads + h, a..b));
                    at += (b - a) * dim;
                }
            }
        }
        Ok(total)
    }

    /// After a run: the present just written is the next step's past.
    pub(crate) fn flip(&mut self) {
        self.current = 1 - self.current;
    }
}
