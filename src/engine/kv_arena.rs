//! The KV cache of every sequence of a shared-buffer decoder (GroupQueryAttention, onnxruntime-genai's
//! `past_present_share_buffer`) in one set of buffers, one row per sequence, so that the decode
//! steps of several sequences run as one model call over rows `0..n`.
//!
//! Per layer and kind (key, value) one tensor `[rows, kv_heads, capacity, head_dim]` of the
//! graph's cache type ([`KvElement`]: float32, or float16 for our attention), allocated by ONNX
//! Runtime and handled here as bytes. A sequence owns a row through a [`KvSlot`]; a batch call
//! first moves its sequences to the first rows ([`KvArena::gather`]), then binds views of those
//! rows as both past and present. Rows and capacity double when needed; when the last sequence
//! leaves, the buffers are freed.

use std::ffi::CString;
use std::sync::{Arc, Mutex, MutexGuard};

use half::f16;
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::IoBinding;
use ort::value::{PrimitiveTensorElementType, Shape, Tensor, TensorElementType, TensorRefMut};
use ort::AsPointer;

use crate::engine::kv_block::{KvBlock, KvPiece};

/// Positions a fresh arena holds per row (doubling when full). Small, so that the reference
/// prompts (about 40 tokens plus 48 new ones) already cross a growth.
const MIN_CAPACITY: usize = 64;

/// The element type of a graph's KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KvElement {
    F32,
    F16,
}

impl KvElement {
    /// The cache type of a graph input of `ty` (None: not one the arena holds).
    pub(crate) fn of(ty: TensorElementType) -> Option<KvElement> {
        match ty {
            TensorElementType::Float32 => Some(KvElement::F32),
            TensorElementType::Float16 => Some(KvElement::F16),
            _ => None,
        }
    }

    /// Bytes per value.
    pub(crate) fn size(self) -> usize {
        match self {
            KvElement::F32 => 4,
            KvElement::F16 => 2,
        }
    }

    /// `bytes` (values of this type) as floats, into `out` (a half widens exactly).
    fn widen(self, bytes: &[u8], out: &mut [f32]) {
        match self {
            KvElement::F32 => {
                for (out, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *out = f32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            KvElement::F16 => {
                for (out, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *out = f16::from_ne_bytes([b[0], b[1]]).to_f32();
                }
            }
        }
    }

    /// `values` as this type, into `out`: exact for floats that [`Self::widen`] made.
    fn narrow(self, values: &[f32], out: &mut [u8]) {
        match self {
            KvElement::F32 => {
                for (v, out) in values.iter().zip(out.chunks_exact_mut(4)) {
                    out.copy_from_slice(&v.to_ne_bytes());
                }
            }
            KvElement::F16 => {
                for (v, out) in values.iter().zip(out.chunks_exact_mut(2)) {
                    out.copy_from_slice(&f16::from_f32(*v).to_ne_bytes());
                }
            }
        }
    }
}

/// One used row: its sequence and how many positions it holds.
#[derive(Debug, Clone, Copy)]
struct Row {
    id: u64,
    len: usize,
}

/// The buffers and which sequence holds which row.
pub(crate) struct KvArena {
    heads: usize,
    dim: usize,
    element: KvElement,
    /// Bytes per position of a head: `dim` values of `element`.
    width: usize,
    /// Buffers: two per layer.
    kinds: usize,
    /// Most positions a row may hold (the model's context).
    context: usize,
    /// The buffers' bytes.
    buffers: Vec<Tensor<u8>>,
    rows: usize,
    capacity: usize,
    used: Vec<Row>,
    next_id: u64,
    /// Changes whenever the buffers are replaced or freed (bindings of older views are stale).
    generation: u64,
}

/// A sequence's claim on a row; dropping it frees the row.
pub(crate) struct KvSlot {
    id: u64,
    arena: Arc<Mutex<KvArena>>,
}

impl Drop for KvSlot {
    fn drop(&mut self) {
        lock(&self.arena).release(self.id);
    }
}

impl KvSlot {
    /// Its sequence id in the arena.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The arena it is a row of.
    pub(crate) fn arena(&self) -> &Arc<Mutex<KvArena>> {
        &self.arena
    }
}

/// Locks the arena (a panic while it was held leaves consistent data: every change is whole).
pub(crate) fn lock(arena: &Mutex<KvArena>) -> MutexGuard<'_, KvArena> {
    arena.lock().unwrap_or_else(|p| p.into_inner())
}

impl KvArena {
    /// An empty arena for `kinds` buffers of `[rows, heads, capacity, dim]` values of `element`.
    pub(crate) fn new(heads: usize, dim: usize, element: KvElement, kinds: usize, context: usize) -> Self {
        KvArena {
            heads,
            dim,
            element,
            width: dim * element.size(),
            kinds,
            context,
            buffers: Vec::new(),
            rows: 0,
            capacity: 0,
            used: Vec::new(),
            next_id: 0,
            generation: 0,
        }
    }

    /// Claims a row for a new, empty sequence.
    pub(crate) fn claim(arena: &Arc<Mutex<KvArena>>) -> KvSlot {
        let mut a = lock(arena);
        let id = a.next_id;
        a.next_id += 1;
        a.used.push(Row { id, len: 0 });
        KvSlot { id, arena: arena.clone() }
    }

    fn row_of(&self, id: u64) -> Option<usize> {
        self.used.iter().position(|r| r.id == id)
    }

    /// Identifies the current buffers: views bound under another generation point at freed memory.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Records that the sequence now holds `len` positions.
    pub(crate) fn set_len(&mut self, id: u64, len: usize) {
        if let Some(r) = self.row_of(id) {
            self.used[r].len = len;
        }
    }

    /// Frees a sequence's row: the last row moves into it, so used rows stay `0..n`.
    fn release(&mut self, id: u64) {
        let Some(row) = self.row_of(id) else { return };
        let last = self.used.len() - 1;
        if row != last && !self.buffers.is_empty() {
            self.copy_row(last, row, self.used[last].len);
        }
        self.used.swap_remove(row);
        if self.used.is_empty() {
            // Nothing left: give the memory back (the next sequence starts small again).
            self.buffers.clear();
            self.rows = 0;
            self.capacity = 0;
            self.generation += 1;
        }
    }

    /// Copies the first `len` positions of row `from` over row `to`, in every buffer.
    fn copy_row(&mut self, from: usize, to: usize, len: usize) {
        let (heads, cap, width) = (self.heads, self.capacity, self.width);
        for buffer in &mut self.buffers {
            let data = buffer.extract_tensor_mut().1;
            for h in 0..heads {
                let src = (from * heads + h) * cap * width;
                let dst = (to * heads + h) * cap * width;
                data.copy_within(src..src + len * width, dst);
            }
        }
    }

    /// Swaps rows `a` and `b` (their first `len` positions each) and their owners.
    fn swap_rows(&mut self, a: usize, b: usize) {
        let (heads, cap, width) = (self.heads, self.capacity, self.width);
        let (la, lb) = (self.used[a].len, self.used[b].len);
        let mut scratch = vec![0u8; la.max(lb) * width];
        for buffer in &mut self.buffers {
            let data = buffer.extract_tensor_mut().1;
            for h in 0..heads {
                let pa = (a * heads + h) * cap * width;
                let pb = (b * heads + h) * cap * width;
                scratch[..la * width].copy_from_slice(&data[pa..pa + la * width]);
                data.copy_within(pb..pb + lb * width, pa);
                data[pb..pb + la * width].copy_from_slice(&scratch[..la * width]);
            }
        }
        self.used.swap(a, b);
    }

    /// Moves the sequences `ids` to rows `0..ids.len()` (in whatever order needs fewest moves:
    /// usually none) and returns each one's row, in the order of `ids`.
    pub(crate) fn gather(&mut self, ids: &[u64]) -> Vec<usize> {
        let k = ids.len();
        for row in 0..k.min(self.used.len()) {
            if ids.contains(&self.used[row].id) {
                continue;
            }
            if let Some(from) = (k..self.used.len()).find(|&r| ids.contains(&self.used[r].id)) {
                self.swap_rows(row, from);
            }
        }
        ids.iter().map(|id| self.row_of(*id).unwrap_or(usize::MAX)).collect()
    }

    /// A copy of positions `range` of sequence `id` (None: it holds no row or not those positions).
    pub(crate) fn read(&self, id: u64, range: std::ops::Range<usize>) -> Option<KvBlock> {
        let row = self.row_of(id).filter(|&r| range.end <= self.used[r].len)?;
        let (heads, cap, width) = (self.heads, self.capacity, self.width);
        let mut block = KvBlock::zeroed(self.kinds * heads, range.len(), self.dim);
        for (k, buffer) in self.buffers.iter().enumerate() {
            let data = buffer.extract_tensor().1;
            for h in 0..heads {
                let src = (row * heads + h) * cap * width;
                self.element.widen(
                    &data[src + range.start * width..src + range.end * width],
                    block.row_mut(self.kinds * heads, k * heads + h, 0..range.len()),
                );
            }
        }
        Some(block)
    }

    /// Writes `pieces` in order as the first positions of the empty sequence `id`, making room.
    pub(crate) fn write(&mut self, id: u64, pieces: &[KvPiece<'_>]) -> ort::Result<()> {
        let total: usize = pieces.iter().map(|p| p.range.1 - p.range.0).sum();
        self.reserve(total)?;
        let Some(row) = self.row_of(id) else { return Ok(()) };
        let (heads, cap, width, rows) = (self.heads, self.capacity, self.width, self.kinds * self.heads);
        for (k, buffer) in self.buffers.iter_mut().enumerate() {
            let data = buffer.extract_tensor_mut().1;
            for h in 0..heads {
                let mut at = (row * heads + h) * cap * width;
                for piece in pieces {
                    let (a, b) = piece.range;
                    self.element
                        .narrow(piece.block.row(rows, k * heads + h, a..b), &mut data[at..at + (b - a) * width]);
                    at += (b - a) * width;
                }
            }
        }
        self.set_len(id, total);
        Ok(())
    }

    /// Makes room for every used row and `positions` positions per row (both doubling; capacity
    /// capped at the context). Existing rows keep their data.
    pub(crate) fn reserve(&mut self, positions: usize) -> ort::Result<()> {
        let rows_needed = self.used.len();
        if rows_needed <= self.rows && positions <= self.capacity {
            return Ok(());
        }
        let rows = if rows_needed <= self.rows { self.rows } else { rows_needed.next_power_of_two() };
        let capacity = if positions <= self.capacity {
            self.capacity
        } else {
            (self.capacity * 2).max(positions).max(MIN_CAPACITY).min(self.context.max(positions))
        };
        let (heads, width) = (self.heads, self.width);
        let mut buffers = Vec::with_capacity(self.kinds);
        for k in 0..self.kinds {
            // Allocated by ONNX Runtime (outputs can only be bound to such tensors), zeroed.
            let mut buffer = Tensor::<u8>::new(&Allocator::default(), [rows, heads, capacity, width])?;
            let data = buffer.extract_tensor_mut().1;
            data.fill(0);
            if let Some(old) = self.buffers.get(k) {
                let from = old.extract_tensor().1;
                for (r, row) in self.used.iter().enumerate().filter(|(r, _)| *r < self.rows) {
                    for h in 0..heads {
                        let src = (r * heads + h) * self.capacity * width;
                        let dst = (r * heads + h) * capacity * width;
                        data[dst..dst + row.len * width].copy_from_slice(&from[src..src + row.len * width]);
                    }
                }
            }
            buffers.push(buffer);
        }
        self.buffers = buffers;
        self.rows = rows;
        self.capacity = capacity;
        self.generation += 1;
        Ok(())
    }

    /// Binds rows `first..first + n` of every buffer as both the past input and the present
    /// output named by `names` (one `(input, output)` pair per buffer, in buffer order).
    pub(crate) fn bind_rows(
        &mut self,
        binding: &mut IoBinding,
        names: &[(&str, &str)],
        first: usize,
        n: usize,
    ) -> ort::Result<()> {
        let (heads, cap, width) = (self.heads, self.capacity, self.width);
        let (info, shape) = (cpu_memory()?, Shape::new([n as i64, heads as i64, cap as i64, self.dim as i64]));
        for (buffer, (input, output)) in self.buffers.iter_mut().zip(names) {
            let data = buffer.extract_tensor_mut().1;
            let rows = &mut data[first * heads * cap * width..(first + n) * heads * cap * width];
            match self.element {
                KvElement::F32 => bind_view::<f32>(binding, (input, output), rows, &info, &shape)?,
                KvElement::F16 => bind_view::<f16>(binding, (input, output), rows, &info, &shape)?,
            }
        }
        Ok(())
    }
}

/// Binds `rows` (bytes of a buffer, values of `T` of `shape`) as both the past input and the
/// present output named.
fn bind_view<T: PrimitiveTensorElementType + std::fmt::Debug>(
    binding: &mut IoBinding,
    (input, output): (&str, &str),
    rows: &mut [u8],
    info: &MemoryInfo<'static>,
    shape: &Shape,
) -> ort::Result<()> {
    // SAFETY: the view covers `rows`, a slice of a buffer that outlives the binding's use: the
    // caller runs the binding while it holds `&mut` the arena (no reallocation meanwhile); ONNX
    // Runtime's allocator aligns a buffer for any element type, and a row starts at a multiple of
    // `heads x capacity x dim` values.
    let view: TensorRefMut<'_, T> =
        unsafe { TensorRefMut::from_raw(info.clone(), rows.as_mut_ptr().cast(), shape.clone())? };
    bind_input_in_place(binding, input, &view)?;
    binding.bind_output(output, view)
}

/// Memory of the CPU device, where the arena's buffers and the logits output live.
pub(crate) fn cpu_memory() -> ort::Result<MemoryInfo<'static>> {
    MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::Default)
}

/// Binds `view` as an input without the copy ort makes of borrowed tensors: GroupQueryAttention
/// detects a shared buffer by past and present having the same address.
pub(crate) fn bind_input_in_place<T: PrimitiveTensorElementType + std::fmt::Debug>(
    binding: &mut IoBinding,
    name: &str,
    view: &TensorRefMut<'_, T>,
) -> ort::Result<()> {
    let name = CString::new(name).map_err(|e| ort::Error::new(e.to_string()))?;
    // SAFETY: both pointers are live ONNX Runtime objects; ONNX Runtime keeps its own reference to
    // the value, whose data (the arena buffer) outlives the run (see `bind_rows`).
    unsafe { ort::Error::result_from_status((ort::api().BindInput)(binding.ptr_mut(), name.as_ptr(), view.ptr())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recognisable value, exact in half precision (an integer below 2^11).
    fn value(id: u64, k: usize, h: usize, i: usize) -> f32 {
        (id as usize * 512 + k * 256 + h * 64 + i) as f32
    }

    /// Writes `len` positions of recognisable values for `id` into its row.
    fn fill(a: &mut KvArena, id: u64, len: usize) {
        let row = a.row_of(id).unwrap();
        let (heads, cap, dim, width, element) = (a.heads, a.capacity, a.dim, a.width, a.element);
        for (k, buffer) in a.buffers.iter_mut().enumerate() {
            let data = buffer.extract_tensor_mut().1;
            for h in 0..heads {
                let values: Vec<f32> = (0..len * dim).map(|i| value(id, k, h, i)).collect();
                let at = (row * heads + h) * cap * width;
                element.narrow(&values, &mut data[at..at + len * width]);
            }
        }
        a.set_len(id, len);
    }

    fn check(a: &KvArena, id: u64) {
        let row = a.row_of(id).unwrap();
        let len = a.used[row].len;
        let block = a.read(id, 0..len).unwrap();
        for k in 0..a.kinds {
            for h in 0..a.heads {
                let got = block.row(a.kinds * a.heads, k * a.heads + h, 0..len);
                let want: Vec<f32> = (0..len * a.dim).map(|i| value(id, k, h, i)).collect();
                assert_eq!(got, want, "sequence {id} kind {k} head {h}");
            }
        }
    }

    #[test]
    fn rows_keep_their_data_through_growth_gather_and_release() {
        for element in [KvElement::F32, KvElement::F16] {
            rows_keep_their_data(element);
        }
    }

    fn rows_keep_their_data(element: KvElement) {
        let arena = Arc::new(Mutex::new(KvArena::new(2, 3, element, 2, 1024)));
        let slots: Vec<KvSlot> = (0..3).map(|_| KvArena::claim(&arena)).collect();
        {
            let mut a = lock(&arena);
            a.reserve(10).unwrap();
            assert_eq!((a.rows, a.capacity), (4, MIN_CAPACITY));
            for (s, len) in slots.iter().zip([5, 10, 7]) {
                fill(&mut a, s.id(), len);
            }
            a.reserve(100).unwrap();
            assert_eq!(a.capacity, 128, "doubled");
            let rows = a.gather(&[slots[2].id(), slots[0].id()]);
            assert_eq!(rows, [1, 0], "one swap: sequence 0 stays in row 0, sequence 2 takes row 1");
            assert_eq!(a.gather(&[slots[0].id(), slots[2].id()]), [0, 1], "already in place: no move");
            for s in &slots {
                check(&a, s.id());
            }
        }
        let mut slots = slots.into_iter();
        let first = slots.next().unwrap();
        let rest: Vec<KvSlot> = slots.collect();
        drop(first);
        {
            let a = lock(&arena);
            assert_eq!(a.used.len(), 2);
            for s in &rest {
                check(&a, s.id());
            }
        }
        drop(rest);
        let a = lock(&arena);
        assert!(a.buffers.is_empty() && a.used.is_empty(), "the last release frees the memory");
    }

    /// The bytes of positions `0..len` of `id`'s row, every buffer and head.
    fn row_bytes(a: &KvArena, id: u64, len: usize) -> Vec<u8> {
        let row = a.row_of(id).unwrap();
        let mut bytes = Vec::new();
        for buffer in &a.buffers {
            for h in 0..a.heads {
                let at = (row * a.heads + h) * a.capacity * a.width;
                bytes.extend_from_slice(&buffer.extract_tensor().1[at..at + len * a.width]);
            }
        }
        bytes
    }

    #[test]
    fn a_copy_read_out_loads_back_to_the_same_bytes() {
        // What the prefix cache does with a row: read it out as floats, load it into another.
        for element in [KvElement::F32, KvElement::F16] {
            let arena = Arc::new(Mutex::new(KvArena::new(2, 3, element, 2, 1024)));
            let (from, to) = (KvArena::claim(&arena), KvArena::claim(&arena));
            let mut a = lock(&arena);
            let len = 9;
            a.reserve(len).unwrap();
            let row = a.row_of(from.id()).unwrap();
            let mut state = 0x2545_F491_4F6C_DD1Du64;
            let (heads, cap, width) = (a.heads, a.capacity, a.width);
            for buffer in &mut a.buffers {
                let data = buffer.extract_tensor_mut().1;
                for h in 0..heads {
                    let at = (row * heads + h) * cap * width;
                    for value in data[at..at + len * width].chunks_exact_mut(element.size()) {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        // Any finite value, subnormals included: exponent bits not all ones.
                        let bits = state & if element == KvElement::F16 { 0xBBFF } else { 0xBF7F_FFFF };
                        value.copy_from_slice(&bits.to_ne_bytes()[..element.size()]);
                    }
                }
            }
            a.set_len(from.id(), len);
            let block = a.read(from.id(), 0..len).unwrap();
            a.write(to.id(), &[KvPiece { block: &block, range: (0, len) }]).unwrap();
            assert_eq!(row_bytes(&a, to.id(), len), row_bytes(&a, from.id(), len), "{element:?}");
        }
    }
}
