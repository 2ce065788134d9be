//! Causal attention with GroupQueryAttention's inputs (packed QKV, query heads sharing a KV head,
//! rotary embedding from cos/sin caches, the KV cache `[rows, kv_heads, capacity, head_dim]`
//! written in place, in half precision), computed one query at a time: a query's output is a function of its own
//! q, its position and the cache's keys and values up to that position, and nothing else. So it
//! does not depend on the other rows of a batch, on how a prompt is cut into calls (a 1-token
//! chunk gives the bits of one whole call), on threads, or on the instruction set; and a key or
//! value is the same whether a prompt or a decode step wrote it.
//!
//! The cache holds keys (rotated) and values rounded to IEEE half precision (to nearest, ties to
//! even), as llama.cpp's default cache does: a decode step of a batch reads every row's cache
//! whole, so half the bytes is about half the time once the rows' caches outgrow the processor's
//! caches. Everything else is float32; a half widens to float32 exactly.
//!
//! Per query head (`q` rotated, times the scale): `s_j = dot(q, k_j)` for every `j <= position`,
//! `p_j = exp(s_j - max s)` (0 below `max - 30`), `out = (Σ_j p_j v_j) / Σ_j p_j`, with these fixed
//! orders: a dot product is 16 lanes of fused multiply-adds along the head (lane `l` takes
//! elements `l, l + 16, ...`) summed by [`reduce`]; `Σ p_j` is 16 lanes (`j mod 16`) summed by
//! [`reduce`]; `Σ p_j v_j` runs over `j` in order, a fused multiply-add per element. The code is
//! written on 16-lane arrays; the instruction-set paths compile the same functions with other
//! target features and write the dot products with intrinsics (`attention_x86`), and fused
//! multiply-adds round once everywhere, so every path gives the same bits. On this machine a
//! decode step of 16 rows at 250 positions reads 92 MB of half-precision cache in about 5.7 ms
//! (`make bench`). A prompt's queries go in blocks of 16 that share each load of a key (each
//! query's operations unchanged), and a query's heads share each load of a value, which makes a
//! long prompt's attention bound by arithmetic rather than by reading the cache once per query.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::{Mutex, PoisonError};

use half::f16;

pub use super::attention_x86::LANES;
use super::attention_x86::{on_avx2, on_avx512, HeadDot, WithDot};
use super::int4_layout::{check_len, KernelError, ParallelFor};
use super::int4_matmul::Isa;

/// Queries per task: a prompt's queries are split in blocks of this many over the threads.
const QUERY_BLOCK: usize = 16;

/// Scores below the row's maximum by more than this weigh exactly 0: `e^-30` is under f32's
/// resolution of a sum that holds `e^0 = 1` (2^-24), and no product with them can be subnormal.
const CUTOFF: f32 = -30.0;

/// The heads of one attention layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionHeads {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    scale: f32,
}

impl AttentionHeads {
    /// `heads` query heads in groups sharing each of `kv_heads` KV heads, `head_dim` a multiple of
    /// [`LANES`]; scores times `scale` (`None`: `1 / sqrt(head_dim)`).
    pub fn new(heads: usize, kv_heads: usize, head_dim: usize, scale: Option<f32>) -> Result<Self, KernelError> {
        if kv_heads == 0 || heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(KernelError::Heads { heads, kv_heads });
        }
        if head_dim == 0 || !head_dim.is_multiple_of(2 * LANES) {
            return Err(KernelError::HeadDim(head_dim));
        }
        let scale = scale.unwrap_or(1.0 / (head_dim as f32).sqrt());
        Ok(AttentionHeads { heads, kv_heads, head_dim, scale })
    }

    /// Query heads per KV head.
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// One token's packed q, k and v.
    pub fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    /// One token's output.
    pub fn out_width(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// One call's new tokens.
pub struct AttentionInput<'a> {
    /// `[rows, seq, qkv_width]`.
    pub qkv: &'a [f32],
    /// Tokens per row.
    pub seq: usize,
    /// Per row, the positions already in the cache (the row's tokens take the next ones).
    pub past: &'a [usize],
    /// Per row, how many of its `seq` tokens are real; the rest are padding (their output is 0,
    /// their keys and values are not written).
    pub valid: &'a [usize],
    /// `[positions, head_dim / 2]`: the rotary embedding's cosines and sines by position.
    pub cos: &'a [f32],
    /// As `cos`.
    pub sin: &'a [f32],
}

/// A KV cache `[rows, kv_heads, capacity, head_dim]`, keys and values in half precision.
pub struct KvCache<'a> {
    /// Keys (after the rotary embedding).
    pub keys: &'a mut [f16],
    /// Values.
    pub values: &'a mut [f16],
    /// Positions per row and head.
    pub capacity: usize,
}

/// What every task of a call reads.
struct Call<'a> {
    heads: AttentionHeads,
    input: &'a AttentionInput<'a>,
    keys: &'a [f16],
    values: &'a [f16],
    capacity: usize,
    blocks: usize,
}

impl AttentionHeads {
    /// Writes the call's keys and values into `cache`, then each query's output into `out`
    /// (`[rows, seq, out_width]`), queries split over `threads`.
    pub fn run(
        &self,
        input: &AttentionInput,
        cache: KvCache,
        out: &mut [f32],
        isa: Isa,
        threads: &dyn ParallelFor,
    ) -> Result<(), KernelError> {
        let rows = input.past.len();
        let (d, seq) = (self.head_dim, input.seq);
        check_len("qkv", input.qkv.len(), rows * seq * self.qkv_width())?;
        check_len("valid", input.valid.len(), rows)?;
        check_len("out", out.len(), rows * seq * self.out_width())?;
        let per_cache = rows * self.kv_heads * cache.capacity * d;
        check_len("keys", cache.keys.len(), per_cache)?;
        check_len("values", cache.values.len(), per_cache)?;
        let positions = input.cos.len() / (d / 2);
        check_len("cos", input.cos.len(), positions * (d / 2))?;
        check_len("sin", input.sin.len(), positions * (d / 2))?;
        for (&past, &valid) in input.past.iter().zip(input.valid) {
            let end = past + valid;
            if valid > seq || end > cache.capacity || end > positions {
                return Err(KernelError::Positions { end, capacity: cache.capacity.min(positions) });
            }
        }
        if rows == 0 || seq == 0 {
            return Ok(());
        }
        on_isa(isa, WriteKv { heads: self, input, keys: cache.keys, values: cache.values, capacity: cache.capacity });
        let blocks = seq.div_ceil(QUERY_BLOCK);
        let call =
            Call { heads: *self, input, keys: cache.keys, values: cache.values, capacity: cache.capacity, blocks };
        // One share per (row, token, KV head): the outputs of that KV head's query heads.
        let shares: Vec<Mutex<&mut [f32]>> = out.chunks_mut(self.group() * d).map(Mutex::new).collect();
        threads.run(rows * self.kv_heads * blocks, &|task| on_isa(isa, Attend { call: &call, task, shares: &shares }));
        Ok(())
    }
}

/// Runs `work` on `isa` (which the caller has checked the CPU has).
pub(super) fn on_isa(isa: Isa, work: impl WithDot) {
    match isa {
        Isa::Avx512Vnni => on_avx512(work),
        Isa::Avx2 => on_avx2(work),
        Isa::Portable => work.run(&PortableDot),
    }
}

/// Writing a call's keys and values into the cache.
struct WriteKv<'a> {
    heads: &'a AttentionHeads,
    input: &'a AttentionInput<'a>,
    keys: &'a mut [f16],
    values: &'a mut [f16],
    capacity: usize,
}

impl WithDot for WriteKv<'_> {
    #[inline(always)]
    fn run(self, dots: &impl HeadDot) {
        write_kv(self.heads, self.input, self.keys, self.values, self.capacity, dots)
    }
}

/// One task of a call's queries.
struct Attend<'a> {
    call: &'a Call<'a>,
    task: usize,
    shares: &'a [Mutex<&'a mut [f32]>],
}

impl WithDot for Attend<'_> {
    #[inline(always)]
    fn run(self, dots: &impl HeadDot) {
        attend(self.call, self.task, self.shares, dots)
    }
}

/// Writes every row's valid tokens' keys (rotated) and values into the cache, rounded to half.
#[inline(always)]
fn write_kv(
    h: &AttentionHeads,
    input: &AttentionInput,
    keys: &mut [f16],
    values: &mut [f16],
    capacity: usize,
    dots: &impl HeadDot,
) {
    let d = h.head_dim;
    let mut rotated = vec![0f32; d];
    for (row, (&past, &valid)) in input.past.iter().zip(input.valid).enumerate() {
        for i in 0..valid {
            let token = &input.qkv[(row * input.seq + i) * h.qkv_width()..][..h.qkv_width()];
            let (cos, sin) = rotary(input, past + i, d);
            for kv in 0..h.kv_heads {
                let at = ((row * h.kv_heads + kv) * capacity + past + i) * d;
                rotate(&token[(h.heads + kv) * d..][..d], cos, sin, 1.0, &mut rotated);
                dots.narrow(&rotated, &mut keys[at..at + d]);
                dots.narrow(&token[(h.heads + h.kv_heads + kv) * d..][..d], &mut values[at..at + d]);
            }
        }
    }
}

/// The cos and sin rows of `position`.
#[inline(always)]
fn rotary<'a>(input: &AttentionInput<'a>, position: usize, d: usize) -> (&'a [f32], &'a [f32]) {
    let half = d / 2;
    (&input.cos[position * half..][..half], &input.sin[position * half..][..half])
}

/// `out = rotate(x) * scale` (the rotary embedding on halves: `x1 cos - x2 sin`,
/// `x2 cos + x1 sin`), written as zipped slices so that it vectorizes.
#[inline(always)]
fn rotate(x: &[f32], cos: &[f32], sin: &[f32], scale: f32, out: &mut [f32]) {
    let half = x.len() / 2;
    let (x1, x2) = x.split_at(half);
    let (out1, out2) = out[..2 * half].split_at_mut(half);
    let (cos, sin) = (&cos[..half], &sin[..half]);
    for ((((o1, o2), x1), x2), (cos, sin)) in out1.iter_mut().zip(out2).zip(x1).zip(x2).zip(cos.iter().zip(sin)) {
        *o1 = x1.mul_add(*cos, -(x2 * sin)) * scale;
        *o2 = x2.mul_add(*cos, x1 * sin) * scale;
    }
}

/// A thread's buffers for [`attend`], kept between calls.
#[derive(Default)]
struct Scratch {
    /// The block's rotated, scaled queries, `[query, group head, head_dim]`.
    q: Vec<f32>,
    /// Their scores, then weights, one row of `most` per query head.
    p: Vec<f32>,
    /// Their weighted sums of values.
    sums: Vec<f32>,
    /// Their sums of weights.
    totals: Vec<f32>,
    /// Keys of the cache widened to floats, once for all the block's queries.
    widened: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Task `task` of `call`: one row's queries of one block for the query heads of one KV head.
/// The block's queries share every load of a key: keys 16 at a time for all their dot products
/// ([`HeadDot::tile_dots`]); then each query's heads share every load of a value, widened in
/// registers for their weighted sums ([`weighted_sums_of_heads`]). Each query's operations and
/// their order are those of a query alone, so the bits are too.
#[inline(always)]
fn attend(call: &Call, task: usize, shares: &[Mutex<&mut [f32]>], dots: &impl HeadDot) {
    let h = &call.heads;
    let (d, group, input) = (h.head_dim, h.group(), call.input);
    let block = task % call.blocks;
    let kv = (task / call.blocks) % h.kv_heads;
    let row = task / call.blocks / h.kv_heads;
    let (past, valid) = (input.past[row], input.valid[row]);
    let cache = (row * h.kv_heads + kv) * call.capacity * d;
    let share =
        |i: usize| shares[(row * input.seq + i) * h.kv_heads + kv].lock().unwrap_or_else(PoisonError::into_inner);
    let first = block * QUERY_BLOCK;
    let end = (first + QUERY_BLOCK).min(input.seq);
    let real = valid.clamp(first, end);
    for i in real..end {
        share(i).fill(0.0);
    }
    let queries = real - first;
    if queries == 0 {
        return;
    }
    // Query `n` of the block (token `first + n`) sees keys `0..keys(n)`; `most` is the last's.
    let keys = |n: usize| past + first + n + 1;
    let most = keys(queries - 1);
    let vectors = queries * group;
    // Taken out and put back (not borrowed in a closure, which would be compiled without this
    // path's target features).
    let mut scratch = SCRATCH.take();
    {
        let Scratch { q, p, sums, totals, widened } = &mut scratch;
        q.resize(vectors * d, 0.0);
        p.resize(vectors * most, 0.0);
        sums.resize(vectors * d, 0.0);
        totals.resize(vectors, 0.0);
        widened.resize(LANES * d, 0.0);
        for n in 0..queries {
            let token = &input.qkv[(row * input.seq + first + n) * h.qkv_width()..][..h.qkv_width()];
            let (cos, sin) = rotary(input, keys(n) - 1, d);
            for g in 0..group {
                let head = kv * group + g;
                let q = &mut q[(n * group + g) * d..][..d];
                rotate(&token[head * d..][..d], cos, sin, h.scale, q);
            }
        }
        // Scores: whole tiles of 16 keys for every query that sees all of a tile, then the rest
        // one key at a time.
        for tile in (0..most / LANES).map(|t| t * LANES) {
            // The queries that see all of the tile are the last ones of the block.
            let from = (0..queries).find(|&n| keys(n) >= tile + LANES).map_or(vectors, |n| n * group);
            let tile_keys = &call.keys[cache + tile * d..][..LANES * d];
            dots.tile_dots(&q[from * d..vectors * d], tile_keys, widened, &mut p[from * most + tile..], most);
        }
        for v in 0..vectors {
            let seen = keys(v / group);
            let q = &q[v * d..][..d];
            for j in seen / LANES * LANES..seen {
                let key = &mut widened[..d];
                dots.widen(&call.keys[cache + j * d..][..d], key);
                p[v * most + j] = dots.dot(q, key);
            }
            totals[v] = softmax_weights(&mut p[v * most..][..seen]);
        }
        for n in 0..queries {
            let values = Values { p, most, values: &call.values[cache..cache + keys(n) * d], d };
            weighted_sums_of_heads(dots, values, n * group..(n + 1) * group, sums);
        }
        for n in 0..queries {
            let mut out = share(first + n);
            for (g, out) in out.chunks_mut(d).enumerate() {
                let v = n * group + g;
                for (out, sum) in out.iter_mut().zip(&sums[v * d..][..d]) {
                    *out = sum / totals[v];
                }
            }
        }
    }
    SCRATCH.set(scratch);
}

/// Weights and values of one query's weighted sums: `p` holds a row of `most` weights per vector,
/// `values` a row of `d` per key the query sees.
#[derive(Clone, Copy)]
struct Values<'a> {
    p: &'a [f32],
    most: usize,
    values: &'a [f16],
    d: usize,
}

/// `sums[v] = Σ_j w_vj v_j` for the `vectors` (one query's heads) and every key `j` it sees: 64
/// values of the head at a time (then 32), up to four vectors at a time ([`weighted_sums`]).
#[inline(always)]
fn weighted_sums_of_heads(dots: &impl HeadDot, at: Values, vectors: Range<usize>, sums: &mut [f32]) {
    let mut offset = 0;
    while offset < at.d {
        let whole = offset + 4 * LANES <= at.d;
        for first in vectors.clone().step_by(4) {
            match (whole, vectors.end - first) {
                (true, 1) => weighted_sums::<4, 1>(dots, at, first, offset, sums),
                (true, 2) => weighted_sums::<4, 2>(dots, at, first, offset, sums),
                (true, 3) => weighted_sums::<4, 3>(dots, at, first, offset, sums),
                (true, _) => weighted_sums::<4, 4>(dots, at, first, offset, sums),
                (false, 1) => weighted_sums::<2, 1>(dots, at, first, offset, sums),
                (false, 2) => weighted_sums::<2, 2>(dots, at, first, offset, sums),
                (false, 3) => weighted_sums::<2, 3>(dots, at, first, offset, sums),
                (false, _) => weighted_sums::<2, 4>(dots, at, first, offset, sums),
            }
        }
        offset += if whole { 4 * LANES } else { 2 * LANES };
    }
}

/// `sums[v][i] = Σ_j w_vj v_j[i]` for the `G` vectors `v` from `first`, by fused multiply-adds in
/// `j` order from 0, for the `N` x 16 values `i` from `offset`: the sums held in registers, each
/// value widened once for the `G` vectors.
#[inline(always)]
fn weighted_sums<const N: usize, const G: usize>(
    dots: &impl HeadDot,
    at: Values,
    first: usize,
    offset: usize,
    sums: &mut [f32],
) {
    let Values { p, most, values, d } = at;
    let seen = values.len() / d;
    let weights: [&[f32]; G] = std::array::from_fn(|g| &p[(first + g) * most..][..seen]);
    let mut acc = [[[0f32; LANES]; N]; G];
    let mut wide = [[0f32; LANES]; N];
    for (j, v) in values.chunks_exact(d).enumerate() {
        for (c, wide) in wide.iter_mut().enumerate() {
            dots.widen(&v[offset + c * LANES..][..LANES], wide);
        }
        for (acc, weights) in acc.iter_mut().zip(&weights) {
            let w = weights[j];
            for (acc, wide) in acc.iter_mut().zip(&wide) {
                for l in 0..LANES {
                    acc[l] = w.mul_add(wide[l], acc[l]);
                }
            }
        }
    }
    for (g, acc) in acc.iter().enumerate() {
        let sum = &mut sums[(first + g) * d + offset..][..N * LANES];
        for (sum, acc) in sum.chunks_exact_mut(LANES).zip(acc) {
            sum.copy_from_slice(acc);
        }
    }
}

/// `dot(q, k)` (`q` and `k` of a multiple of 16 values): lane `l` sums `q[l + 16c] k[l + 16c]` over `c` by fused multiply-adds, then [`reduce`].
#[inline(always)]
fn dot(q: &[f32], k: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    for (q, k) in q.chunks_exact(LANES).zip(k.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] = q[l].mul_add(k[l], acc[l]);
        }
    }
    reduce(acc)
}

/// [`dot`] itself, what the vector paths' intrinsics compute bit for bit.
struct PortableDot;

impl HeadDot for PortableDot {
    #[inline(always)]
    fn dot(&self, q: &[f32], k: &[f32]) -> f32 {
        dot(q, k)
    }

    #[inline(always)]
    fn widen(&self, x: &[f16], out: &mut [f32]) {
        for (out, x) in out.iter_mut().zip(x) {
            *out = x.to_f32();
        }
    }

    #[inline(always)]
    fn narrow(&self, x: &[f32], out: &mut [f16]) {
        for (out, x) in out.iter_mut().zip(x) {
            *out = f16::from_f32(*x);
        }
    }
}

/// The fixed sum of 16 lanes: halves added lane-wise (16 -> 8 -> 4 -> 2), then the last two.
#[inline(always)]
fn reduce(a: [f32; LANES]) -> f32 {
    let mut b = [0f32; 8];
    for l in 0..8 {
        b[l] = a[l] + a[l + 8];
    }
    let c = [b[0] + b[4], b[1] + b[5], b[2] + b[6], b[3] + b[7]];
    let e = [c[0] + c[2], c[1] + c[3]];
    e[0] + e[1]
}

/// Replaces scores by their weights `exp(s - max)` (0 below [`CUTOFF`]); returns their sum.
#[inline(always)]
fn softmax_weights(s: &mut [f32]) -> f32 {
    let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = [0f32; LANES];
    let mut chunks = s.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for l in 0..LANES {
            chunk[l] = exp_weight(chunk[l] - max);
            sum[l] += chunk[l];
        }
    }
    for (l, x) in chunks.into_remainder().iter_mut().enumerate() {
        *x = exp_weight(*x - max);
        sum[l] += *x;
    }
    reduce(sum)
}

/// `e^x` for `x <= 0`, 0 below [`CUTOFF`]: `x = n ln2 + r` (Cody and Waite's split of ln 2),
/// `e^r` by its Taylor series to degree 7 (|r| <= ln2 / 2: error under 1.1e-8 relative), times
/// `2^n` built in the exponent bits. Only operations that round the same on every path.
#[inline(always)]
pub(super) fn exp_weight(x: f32) -> f32 {
    // Adding 1.5 * 2^23 rounds a float of magnitude < 2^22 to an integer, half to even.
    const ROUND: f32 = 12_582_912.0;
    // ln 2 = LN2_HI + LN2_LO; LN2_HI has 9 significant bits, so n * LN2_HI is exact for |n| < 2^15.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = (std::f64::consts::LN_2 - 0.693_359_375) as f32;
    const C: [f32; 8] = [1.0, 1.0, 0.5, 1.0 / 6.0, 1.0 / 24.0, 1.0 / 120.0, 1.0 / 720.0, 1.0 / 5040.0];
    let clamped = if x < CUTOFF { CUTOFF } else { x };
    let t = clamped * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, clamped));
    let mut poly = C[7];
    for c in C[..7].iter().rev() {
        poly = poly.mul_add(r, *c);
    }
    let exponent = (t.to_bits() as i32 - ROUND.to_bits() as i32 + 127) as u32;
    let e = poly * f32::from_bits(exponent << 23);
    if x < CUTOFF {
        0.0
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The tests' random numbers.
    struct Random(ChaCha8Rng);

    impl Random {
        fn new(seed: u64) -> Self {
            Random(ChaCha8Rng::seed_from_u64(seed))
        }

        /// Uniform in [-1, 1).
        fn symmetric(&mut self) -> f32 {
            (self.0.next_u32() >> 8) as f32 / (1 << 23) as f32 - 1.0
        }

        /// Uniform in 0..n.
        fn below(&mut self, n: usize) -> usize {
            self.0.next_u32() as usize % n
        }
    }

    /// `threads` scoped threads taking the tasks in turn, as ONNX Runtime's pool does.
    struct Workers(usize);

    impl ParallelFor for Workers {
        fn threads(&self) -> usize {
            self.0
        }

        fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
            let next = AtomicUsize::new(0);
            std::thread::scope(|scope| {
                for _ in 0..self.0 {
                    scope.spawn(|| loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= tasks {
                            break;
                        }
                        task(i);
                    });
                }
            });
        }
    }

    const PATHS: [Isa; 3] = [Isa::Avx512Vnni, Isa::Avx2, Isa::Portable];

    #[derive(Clone)]
    /// A random layer's inputs: `rows` rows of `seq` tokens after `past[r]` positions of cache
    /// (filled by earlier calls of the kernel itself).
    struct Case {
        heads: AttentionHeads,
        qkv: Vec<f32>,
        cos: Vec<f32>,
        sin: Vec<f32>,
        past: Vec<usize>,
        seq: usize,
        capacity: usize,
        /// The cache as it stands before the call.
        keys: Vec<f16>,
        values: Vec<f16>,
    }

    impl Case {
        fn new(rng: &mut Random, heads: AttentionHeads, past: Vec<usize>, seq: usize, size: f32) -> Case {
            let rows = past.len();
            let capacity = past.iter().max().unwrap() + seq + 3;
            let half = heads.head_dim / 2;
            let (mut cos, mut sin) = (Vec::new(), Vec::new());
            for position in 0..capacity {
                for i in 0..half {
                    let angle = position as f64 / 10_000f64.powf(2.0 * i as f64 / heads.head_dim as f64);
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
            let per_cache = rows * heads.kv_heads * capacity * heads.head_dim;
            let mut random = |n: usize| (0..n).map(|_| rng.symmetric() * size).collect::<Vec<f32>>();
            let qkv = random(rows * seq * heads.qkv_width());
            let half = |x: Vec<f32>| x.into_iter().map(f16::from_f32).collect::<Vec<f16>>();
            let (keys, values) = (half(random(per_cache)), half(random(per_cache)));
            Case { heads, qkv, cos, sin, past, seq, capacity, keys, values }
        }

        fn rows(&self) -> usize {
            self.past.len()
        }

        /// The kernel's output and cache after the call, on `isa` with `threads`.
        fn run(&self, isa: Isa, threads: usize) -> (Vec<f32>, Vec<f16>, Vec<f16>) {
            let valid = vec![self.seq; self.rows()];
            self.run_rows(isa, threads, &self.qkv, &self.past, &valid, self.seq)
        }

        fn run_rows(
            &self,
            isa: Isa,
            threads: usize,
            qkv: &[f32],
            past: &[usize],
            valid: &[usize],
            seq: usize,
        ) -> (Vec<f32>, Vec<f16>, Vec<f16>) {
            let (mut keys, mut values) = (self.keys.clone(), self.values.clone());
            let mut out = vec![f32::NAN; past.len() * seq * self.heads.out_width()];
            let input = AttentionInput { qkv, seq, past, valid, cos: &self.cos, sin: &self.sin };
            let cache = KvCache { keys: &mut keys, values: &mut values, capacity: self.capacity };
            self.heads.run(&input, cache, &mut out, isa, &Workers(threads)).unwrap();
            (out, keys, values)
        }

        /// Row `row`'s output, in float64 from the same inputs and the cache `keys` and
        /// `values` the call left (checked to be the call's keys, rotated, and values, each
        /// rounded to the nearest half).
        fn reference(&self, row: usize, keys: &[f16], values: &[f16]) -> Vec<f64> {
            let h = &self.heads;
            let (d, half, group) = (h.head_dim, h.head_dim / 2, h.group());
            let rotate = |x: &[f32], position: usize| -> Vec<f64> {
                let (c, s) = (&self.cos[position * half..][..half], &self.sin[position * half..][..half]);
                let mut r = vec![0f64; d];
                for i in 0..half {
                    let (a, b, c, s) = (x[i] as f64, x[i + half] as f64, c[i] as f64, s[i] as f64);
                    r[i] = a * c - b * s;
                    r[i + half] = b * c + a * s;
                }
                r
            };
            let token = |i: usize| &self.qkv[(row * self.seq + i) * h.qkv_width()..][..h.qkv_width()];
            let past = self.past[row];
            let mut out = Vec::new();
            for i in 0..self.seq {
                for head in 0..h.heads {
                    let kv = head / group;
                    let q = rotate(&token(i)[head * d..][..d], past + i);
                    let (mut ks, mut vs) = (Vec::new(), Vec::new());
                    for j in 0..=past + i {
                        let at = ((row * h.kv_heads + kv) * self.capacity + j) * d;
                        let (k, v) = (&keys[at..at + d], &values[at..at + d]);
                        if j < past {
                            assert!(k == &self.keys[at..at + d] && v == &self.values[at..at + d], "the past moved");
                        } else {
                            let t = token(j - past);
                            let rotated = rotate(&t[(h.heads + kv) * d..][..d], j);
                            let given = t[(h.heads + h.kv_heads + kv) * d..][..d].iter().map(|&x| x as f64);
                            for (got, want) in k.iter().zip(rotated).chain(v.iter().zip(given)) {
                                // Half an ulp of a half (11 significant bits), a little over for the
                                // float32 rotation, or half the smallest subnormal.
                                let bound = (want.abs() * 2f64.powi(-11) * (1.0 + 1e-4)).max(2f64.powi(-25));
                                assert!((got.to_f64() - want).abs() <= bound, "cached {got} for {want}");
                            }
                        }
                        ks.push(k.iter().map(|&x| x.to_f64()).collect::<Vec<_>>());
                        vs.push(v.iter().map(|&x| x.to_f64()).collect::<Vec<_>>());
                    }
                    let s: Vec<f64> =
                        ks.iter().map(|k| q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() * h.scale as f64).collect();
                    let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let w: Vec<f64> = s.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = w.iter().sum();
                    for e in 0..d {
                        out.push(w.iter().zip(&vs).map(|(w, v)| w * v[e]).sum::<f64>() / total);
                    }
                }
            }
            out
        }
    }

    fn heads(heads: usize, kv_heads: usize, head_dim: usize) -> AttentionHeads {
        AttentionHeads::new(heads, kv_heads, head_dim, None).unwrap()
    }

    /// The largest |got - want| over the largest |want| of a row.
    fn worst_relative(got: &[f32], want: &[f64]) -> f64 {
        let scale = want.iter().map(|w| w.abs()).fold(1e-30, f64::max);
        got.iter().zip(want).map(|(&g, w)| (g as f64 - w).abs()).fold(0.0, f64::max) / scale
    }

    #[test]
    fn every_path_matches_a_float64_reference() {
        let mut rng = Random::new(7);
        for (h, past, seq, size) in [
            (heads(9, 3, 64), vec![0, 5, 40], 1, 1.0),
            (heads(9, 3, 64), vec![0, 17], 33, 0.5),
            (heads(5, 1, 32), vec![3, 0, 1], 6, 2.0),
            (heads(4, 4, 128), vec![2], 20, 1.0),
            (heads(2, 1, 64), vec![4_000], 1, 1.0),
        ] {
            let case = Case::new(&mut rng, h, past, seq, size);
            for isa in PATHS.into_iter().filter(|i| i.available()) {
                let (out, keys, values) = case.run(isa, 2);
                let width = seq * h.out_width();
                for row in 0..case.rows() {
                    let err = worst_relative(&out[row * width..][..width], &case.reference(row, &keys, &values));
                    assert!(err < 2e-5, "{isa:?} {h:?} row {row}: relative error {err:e}");
                }
            }
        }
    }

    #[test]
    fn a_row_gets_the_same_bits_alone_in_any_batch_with_any_threads_and_path() {
        let mut rng = Random::new(11);
        let h = heads(9, 3, 64);
        for (past, seq) in [(vec![0, 3, 250, 1, 7, 2, 9, 0, 30, 4, 5, 6, 100, 8, 1, 2, 64], 1), (vec![5, 0, 12], 18)] {
            let case = Case::new(&mut rng, h, past, seq, 1.0);
            let (want, want_keys, want_values) = case.run(Isa::Portable, 1);
            let width = seq * h.out_width();
            for isa in PATHS.into_iter().filter(|i| i.available()) {
                for threads in [1, 2, 3] {
                    let got = case.run(isa, threads);
                    assert!(got.0 == want, "{isa:?} x {threads} threads: another output");
                    assert!(got.1 == want_keys && got.2 == want_values, "{isa:?} x {threads}: another cache");
                }
                // Each row alone, as a batch of one in its own cache row 0.
                for row in 0..case.rows() {
                    let per_row = h.kv_heads * case.capacity * h.head_dim;
                    let alone = Case {
                        keys: case.keys[row * per_row..][..per_row].to_vec(),
                        values: case.values[row * per_row..][..per_row].to_vec(),
                        qkv: case.qkv[row * seq * h.qkv_width()..][..seq * h.qkv_width()].to_vec(),
                        past: vec![case.past[row]],
                        ..case.clone()
                    };
                    let (out, keys, _) = alone.run(isa, 2);
                    assert!(out == want[row * width..][..width], "{isa:?} row {row} alone: other bits");
                    assert!(keys == want_keys[row * per_row..][..per_row], "{isa:?} row {row} alone: other keys");
                }
            }
        }
    }

    #[test]
    fn a_prompt_cut_into_any_chunks_gives_the_bits_of_one_call() {
        let mut rng = Random::new(13);
        let h = heads(6, 2, 64);
        let seq = 37;
        let case = Case::new(&mut rng, h, vec![0], seq, 1.0);
        let (want, want_keys, want_values) = case.run(Isa::Portable, 2);
        let (w, qw) = (h.out_width(), h.qkv_width());
        for cut in [1, 2, 5, 16, 17] {
            for isa in PATHS.into_iter().filter(|i| i.available()) {
                let mut state = case.clone();
                let mut out = Vec::new();
                for start in (0..seq).step_by(cut) {
                    let n = cut.min(seq - start);
                    let qkv = &case.qkv[start * qw..(start + n) * qw];
                    let (o, keys, values) = state.run_rows(isa, 2, qkv, &[start], &[n], n);
                    out.extend(o);
                    state.keys = keys;
                    state.values = values;
                }
                assert!(out == want && out.len() == seq * w, "{isa:?}, chunks of {cut}: other bits");
                assert!(
                    state.keys == want_keys && state.values == want_values,
                    "{isa:?}, chunks of {cut}: other cache"
                );
            }
        }
    }

    #[test]
    fn padding_tokens_give_zeros_and_write_nothing() {
        let mut rng = Random::new(17);
        let h = heads(4, 2, 32);
        let case = Case::new(&mut rng, h, vec![0, 0], 5, 1.0);
        let (out, keys, _) = case.run_rows(Isa::Portable, 1, &case.qkv, &[0, 0], &[5, 2], 5);
        let (full, full_keys, _) = case.run(Isa::Portable, 1);
        let width = 5 * h.out_width();
        assert_eq!(out[..width], full[..width]);
        assert_eq!(out[width..width + 2 * h.out_width()], full[width..width + 2 * h.out_width()]);
        assert!(out[width + 2 * h.out_width()..].iter().all(|&x| x == 0.0));
        let per_row = h.kv_heads * case.capacity * h.head_dim;
        assert_eq!(keys[..per_row], full_keys[..per_row]);
        let d = h.head_dim;
        for kv in 0..h.kv_heads {
            let at = per_row + kv * case.capacity * d;
            assert_eq!(keys[at..at + 2 * d], full_keys[at..at + 2 * d], "the valid tokens' keys");
            assert_eq!(keys[at + 2 * d..at + case.capacity * d], case.keys[at + 2 * d..at + case.capacity * d]);
        }
    }

    #[test]
    fn shapes_and_positions_that_do_not_fit_are_refused() {
        assert_eq!(AttentionHeads::new(9, 2, 64, None), Err(KernelError::Heads { heads: 9, kv_heads: 2 }));
        assert_eq!(AttentionHeads::new(4, 2, 24, None), Err(KernelError::HeadDim(24)));
        let mut rng = Random::new(19);
        let h = heads(2, 1, 32);
        let case = Case::new(&mut rng, h, vec![4], 2, 1.0);
        let (mut keys, mut values) = (case.keys.clone(), case.values.clone());
        let mut out = vec![0.0; 2 * h.out_width()];
        let past = [case.capacity - 1];
        let input = AttentionInput { qkv: &case.qkv, seq: 2, past: &past, valid: &[2], cos: &case.cos, sin: &case.sin };
        let cache = KvCache { keys: &mut keys, values: &mut values, capacity: case.capacity };
        let err = h.run(&input, cache, &mut out, Isa::Portable, &Workers(1)).unwrap_err();
        assert_eq!(err, KernelError::Positions { end: case.capacity + 1, capacity: case.capacity });
    }

    /// The cache's rounding on one path: `narrow` of the given floats.
    struct Narrow<'a>(&'a [f32], &'a mut [f16]);

    impl WithDot for Narrow<'_> {
        fn run(self, dots: &impl HeadDot) {
            dots.narrow(self.0, self.1)
        }
    }

    #[test]
    fn every_path_rounds_to_half_as_from_f32() {
        let mut rng = Random::new(29);
        // Ties between halves (above 1, at the subnormals' edge), the largest half and the tie
        // past it, overflow, subnormal halves, underflow, signed zeros, infinities, NaNs.
        let mut x = vec![1.0 + 2f32.powi(-11), 1.0 + 3.0 * 2f32.powi(-11), 65_504.0, 65_520.0, 1e6, -1e6];
        x.extend([6e-8, 2f32.powi(-25), 3.0 * 2f32.powi(-26), 1e-10, 0.0, -0.0]);
        x.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN, f32::from_bits(0x7fa0_0001)]);
        x.extend((0..47).map(|_| rng.symmetric() * 70_000.0 * rng.symmetric().powi(8)));
        let want: Vec<u16> = x.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
        for isa in PATHS.into_iter().filter(|i| i.available()) {
            let mut out = vec![f16::ZERO; x.len()];
            on_isa(isa, Narrow(&x, &mut out));
            assert_eq!(out.iter().map(|h| h.to_bits()).collect::<Vec<_>>(), want, "{isa:?}");
        }
    }

    #[test]
    fn exp_weight_is_within_two_ulps_of_the_exponential() {
        let mut x = 0.0f32;
        while x > CUTOFF {
            let want = (x as f64).exp();
            let got = exp_weight(x) as f64;
            assert!((got - want).abs() <= 2.0 * f64::from(f32::EPSILON) * want, "e^{x}: {got} vs {want}");
            x -= 0.001_37;
        }
        assert_eq!(exp_weight(0.0), 1.0);
        assert_eq!(exp_weight(-31.0), 0.0);
    }

    #[test]
    fn fuzz_random_shapes_match_the_reference_and_the_portable_bits() {
        let mut rng = Random::new(23);
        for draw in 0..60 {
            let kv_heads = 1 + rng.below(3);
            let group = 1 + rng.below(4);
            let head_dim = 32 * (1 + rng.below(3));
            let h = heads(kv_heads * group, kv_heads, head_dim);
            let rows = 1 + rng.below(17);
            let seq = if rng.below(2) == 0 { 1 } else { 1 + rng.below(20) };
            let longest = if rng.below(4) == 0 { 600 } else { 40 };
            let past = (0..rows).map(|_| rng.below(longest)).collect();
            let size = [0.01, 1.0, 8.0][rng.below(3)];
            let case = Case::new(&mut rng, h, past, seq, size);
            let (want, keys, values) = case.run(Isa::Portable, 1);
            let width = seq * h.out_width();
            let row = rng.below(rows);
            let err = worst_relative(&want[row * width..][..width], &case.reference(row, &keys, &values));
            assert!(err < 5e-5, "draw {draw} {h:?} seq {seq}: relative error {err:e}");
            for isa in PATHS.into_iter().filter(|i| i.available()) {
                assert!(case.run(isa, 1 + draw % 3).0 == want, "draw {draw}: {isa:?} gives other bits");
            }
        }
    }
}
