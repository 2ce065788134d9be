//! The data of [`super::int4_matmul`] that its vector paths (`int4_matmul_x86`) share: block and
//! tile sizes, quantized rows, one tile's weights, the threads a product runs on, its errors.

use std::sync::{Mutex, PoisonError};

/// Weights (and activations) per quantization block along K: `MatMulNBits`' `block_size` this
/// kernel takes (the fused decoders are built with 32).
pub const BLOCK: usize = 32;
/// Output columns per tile: one 512-bit vector of i32 or f32 lanes.
pub const TILE: usize = 16;
/// Bytes of one tile's block of packed weights (16 columns x 32 nibbles).
pub(super) const TILE_BLOCK_BYTES: usize = TILE * BLOCK / 2;

/// Threads to run a product's shares of columns on: ONNX Runtime's pool inside a session, a
/// pool of the caller's elsewhere (the kernel brings none of its own).
pub trait ParallelFor {
    /// How many threads (the columns are split into as many shares).
    fn threads(&self) -> usize;
    /// Runs `task(i)` once for each `i` in `0..tasks`, possibly at the same time, and returns
    /// when all have.
    fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync));
}

/// Runs every task on the calling thread, in order.
pub struct Serial;

impl ParallelFor for Serial {
    fn threads(&self) -> usize {
        1
    }

    fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        (0..tasks).for_each(task)
    }
}

/// A shape or a buffer that does not fit the kernel.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    /// K must be a whole number of blocks.
    #[error("K = {0} is not a multiple of the kernel's block of {BLOCK}")]
    UnevenK(usize),
    /// Query heads come in equal groups per KV head.
    #[error("{heads} query heads do not share {kv_heads} KV heads evenly")]
    Heads {
        /// Query heads.
        heads: usize,
        /// KV heads.
        kv_heads: usize,
    },
    /// The attention kernel takes heads of a multiple of 32 values (two rotary halves of 16 lanes).
    #[error("a head of {0} values is not a multiple of 32")]
    HeadDim(usize),
    /// A row's tokens go past the KV cache or the rotary tables.
    #[error("tokens up to position {end} do not fit a cache and rotary tables of {capacity} positions")]
    Positions {
        /// One past the last position.
        end: usize,
        /// The positions there are.
        capacity: usize,
    },
    /// A buffer has another length than its shape gives.
    #[error("{what} holds {got} values where the shape needs {want}")]
    Length {
        /// The buffer.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The length its shape gives.
        want: usize,
    },
}

/// `Ok` when the buffer `what` has the length its shape gives.
pub(super) fn check_len(what: &'static str, got: usize, want: usize) -> Result<(), KernelError> {
    if got == want {
        Ok(())
    } else {
        Err(KernelError::Length { what, got, want })
    }
}

/// One tile's weights: per block, 256 packed bytes, 16 scales, 16 zero points.
pub(super) struct TileView<'a> {
    pub packed: &'a [u8],
    pub scales: &'a [f32],
    pub zero_points: &'a [u8],
}

/// Rows of activations quantized per block of 32: `q = round(x · 127 / max|x|)` (half to even),
/// held as signed bytes, with the block's scale `max|x| / 127` and its sum `Σ q` (which takes a
/// block's zero point out of the products: `Σ q·(w − zp) = Σ q·w − zp · Σ q`).
#[derive(Default)]
pub struct QuantizedRows {
    pub(super) rows: usize,
    pub(super) k: usize,
    /// `[rows, K]`: `q`.
    pub(super) q: Vec<i8>,
    /// `[rows, K/32]`: `Σ q` of each block (at most 32 · 127 in size).
    pub(super) sums: Vec<i32>,
    /// `[rows, K/32]`.
    pub(super) scales: Vec<f32>,
}

impl QuantizedRows {
    /// `x` `[rows, k]` (row-major) quantized.
    pub fn new(x: &[f32], rows: usize, k: usize) -> Result<Self, KernelError> {
        let mut quantized = QuantizedRows::default();
        quantized.refill(x, rows, k, quantize_into, &Serial)?;
        Ok(quantized)
    }

    /// `x` quantized into these rows' buffers (grown when they are short, never zeroed first) by
    /// `quantize` ([`quantize_into`] or a function of the same bits for an instruction set), the
    /// rows split over `parallel`'s threads (a block's bits depend on its own values only).
    pub(super) fn refill(
        &mut self,
        x: &[f32],
        rows: usize,
        k: usize,
        quantize: impl Fn(&[f32], &mut [i8], &mut [i32], &mut [f32]) + Sync,
        parallel: &dyn ParallelFor,
    ) -> Result<(), KernelError> {
        if !k.is_multiple_of(BLOCK) {
            return Err(KernelError::UnevenK(k));
        }
        check_len("x", x.len(), rows * k)?;
        let blocks = k / BLOCK;
        self.q.resize(rows * k, 0);
        self.sums.resize(rows * blocks, 0);
        self.scales.resize(rows * blocks, 0.0);
        (self.rows, self.k) = (rows, k);
        if rows * blocks == 0 {
            return Ok(());
        }
        let per_share = rows.div_ceil(parallel.threads().clamp(1, rows));
        let shares: Vec<Mutex<_>> = (self.q.chunks_mut(per_share * k))
            .zip(self.sums.chunks_mut(per_share * blocks))
            .zip(self.scales.chunks_mut(per_share * blocks))
            .map(Mutex::new)
            .collect();
        parallel.run(shares.len(), &|share| {
            let mut part = shares[share].lock().unwrap_or_else(PoisonError::into_inner);
            let ((q, sums), scales) = &mut *part;
            let from = share * per_share * k;
            quantize(&x[from..from + q.len()], q, sums, scales);
        });
        Ok(())
    }

    /// How many rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The bytes its buffers hold (what keeping them between calls costs).
    pub fn capacity_bytes(&self) -> usize {
        self.q.capacity() + 4 * (self.sums.capacity() + self.scales.capacity())
    }
}

/// Quantizes `x` block by block into `q`, `sums` and `scales` (lengths `x.len()`, `x.len() / 32`
/// and `x.len() / 32`).
/// Written on arrays of 16 lanes so that the instruction-set copies vectorize it; `max|x|` is
/// exact in any order (NaN ignored), so every copy gives the same bits.
#[inline(always)]
pub(super) fn quantize_into(x: &[f32], q: &mut [i8], sums: &mut [i32], scales: &mut [f32]) {
    let blocks = x.chunks_exact(BLOCK).zip(q.chunks_exact_mut(BLOCK));
    for (((values, quantized), sum), scale) in blocks.zip(sums).zip(scales) {
        let mut lanes = [0f32; 16];
        for half in values.chunks_exact(16) {
            for (lane, v) in lanes.iter_mut().zip(half) {
                *lane = lane.max(v.abs());
            }
        }
        let max = lanes.iter().fold(0f32, |m, &v| m.max(v));
        let inverse = if max > 0.0 { 127.0 / max } else { 0.0 };
        for (v, out) in values.iter().zip(quantized.iter_mut()) {
            // `r` rounded half to even is the low byte of `r + 1.5 * 2^23`'s bits: that sum lies
            // in [2^23, 2^24), where floats are the integers and the mantissa is the sum less
            // 2^23 (whose low byte, as 1.5 * 2^23's, is 0). No `f32::round` (a libm call on
            // baseline x86-64) and no float-to-int conversion, so the copies vectorize. NaN (a
            // NaN or infinite row) gives 0.
            let r = (v * inverse).clamp(-127.0, 127.0);
            let rounded = (r + ROUNDER).to_bits() as u8 as i8;
            *out = if r.is_nan() { 0 } else { rounded };
        }
        *sum = quantized.iter().map(|&q| i32::from(q)).sum();
        *scale = max / 127.0;
    }
}

/// 1.5 * 2^23: adding it leaves no fraction bits in an f32 of magnitude below 2^22.
const ROUNDER: f32 = 12_582_912.0;
