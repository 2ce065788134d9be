//! The unsafe parts of [`super::int4_matmul`]: its AVX-512 VNNI and AVX2 tiles, and the split of
//! one output matrix's columns over threads. Every path computes, per row and column, the same
//! exact integer sum and the same float operations in the same order as the portable tile.

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::int4_layout::{quantize_into, ParallelFor, QuantizedRows, TileView, BLOCK, TILE, TILE_BLOCK_BYTES};

/// Whether this CPU has AVX-512 F, BW and VNNI.
pub(super) fn has_avx512_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether this CPU has AVX2 with FMA and F16C (attention's half-precision cache; every CPU
/// with AVX2 has F16C).
pub(super) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Rows the AVX-512 path computes at once, their sums and outputs held in registers (eight
/// weight vectors, eight sums and eight outputs: 24 of the 32 registers).
const ROW_GROUP: usize = 8;

/// One tile, every row, written through `out`, on AVX-512 VNNI; the caller has checked
/// [`has_avx512_vnni`].
pub(super) fn tile_avx512_vnni(tile: &TileView, x: &QuantizedRows, index: usize, out: &mut ColumnWriter) {
    check(tile, x);
    assert!(has_avx512_vnni());
    let mut first = 0;
    while first < x.rows {
        let rows = (x.rows - first).min(ROW_GROUP);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has the features (asserted above); `check` asserted every length the
        // function reads through raw pointers, and `first + rows <= x.rows`.
        unsafe {
            match rows {
                8 => avx512_vnni::<8>(tile, x, first, index, out),
                7 => avx512_vnni::<7>(tile, x, first, index, out),
                6 => avx512_vnni::<6>(tile, x, first, index, out),
                5 => avx512_vnni::<5>(tile, x, first, index, out),
                4 => avx512_vnni::<4>(tile, x, first, index, out),
                3 => avx512_vnni::<3>(tile, x, first, index, out),
                2 => avx512_vnni::<2>(tile, x, first, index, out),
                _ => avx512_vnni::<1>(tile, x, first, index, out),
            }
        }
        first += rows;
    }
}

/// One tile on AVX2 and FMA; the caller has checked [`has_avx2`].
pub(super) fn tile_avx2(tile: &TileView, x: &QuantizedRows, acc: &mut [f32]) {
    check(tile, x);
    assert_eq!(acc.len(), x.rows * TILE);
    assert!(has_avx2());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as in `tile_avx512_vnni`.
    unsafe {
        avx2(tile, x, acc)
    }
}

/// [`quantize_into`] on AVX-512 F/BW; the caller has checked [`has_avx512_vnni`].
pub(super) fn quantize_avx512(x: &[f32], q: &mut [i8], sums: &mut [i32], scales: &mut [f32]) {
    assert!(has_avx512_vnni());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has the features (asserted above); the function asserts the lengths its
    // loads and stores rely on.
    unsafe {
        quantize_avx512_blocks(x, q, sums, scales)
    }
}

/// [`quantize_into`] on AVX2; the caller has checked [`has_avx2`].
pub(super) fn quantize_avx2(x: &[f32], q: &mut [i8], sums: &mut [i32], scales: &mut [f32]) {
    assert!(has_avx2());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has the features (asserted above); the function is safe code.
    unsafe {
        quantize_avx2_copy(x, q, sums, scales)
    }
}

/// [`quantize_into`] a block of 32 at a time in two vectors: `vmaxps` returns its second
/// operand when either is NaN, so `max(|v|, lanes)` is the portable `lanes.max(|v|)`; the
/// products `v · 127 / max` are those of the portable code, clamped, converted to integers
/// rounding half to even (the portable code's rounding) and NaN set to 0 by a mask; the
/// integer sum is exact in any order.
///
/// # Safety
/// The CPU has AVX-512 F and BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_avx512_blocks(x: &[f32], q: &mut [i8], sums: &mut [i32], scales: &mut [f32]) {
    let blocks = x.len() / BLOCK;
    assert!(x.len() == blocks * BLOCK && q.len() == x.len() && sums.len() == blocks && scales.len() == blocks);
    let magnitude = _mm512_set1_epi32(0x7fff_ffff);
    let abs = |v: __m512| _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), magnitude));
    let (low, high) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
    for block in 0..blocks {
        let at = block * BLOCK;
        let halves = [_mm512_loadu_ps(x.as_ptr().add(at)), _mm512_loadu_ps(x.as_ptr().add(at + 16))];
        let lanes = _mm512_max_ps(abs(halves[1]), _mm512_max_ps(abs(halves[0]), _mm512_setzero_ps()));
        let max = _mm512_reduce_max_ps(lanes);
        let inverse = _mm512_set1_ps(if max > 0.0 { 127.0 / max } else { 0.0 });
        let mut sum = _mm512_setzero_si512();
        for (half, v) in halves.into_iter().enumerate() {
            let r = _mm512_mul_ps(v, inverse);
            let number = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(r, r);
            let clamped = _mm512_min_ps(_mm512_max_ps(r, low), high);
            let n =
                _mm512_maskz_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(number, clamped);
            sum = _mm512_add_epi32(sum, n);
            _mm_storeu_si128(q.as_mut_ptr().add(at + 16 * half).cast(), _mm512_cvtepi32_epi8(n));
        }
        sums[block] = _mm512_reduce_add_epi32(sum);
        scales[block] = max / 127.0;
    }
}

/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_avx2_copy(x: &[f32], q: &mut [i8], sums: &mut [i32], scales: &mut [f32]) {
    quantize_into(x, q, sums, scales)
}

/// The lengths the vector tiles rely on.
fn check(tile: &TileView, x: &QuantizedRows) {
    let blocks = x.k / BLOCK;
    assert_eq!(x.k % BLOCK, 0);
    assert_eq!(tile.packed.len(), blocks * TILE_BLOCK_BYTES);
    assert_eq!(tile.scales.len(), blocks * TILE);
    assert_eq!(tile.zero_points.len(), blocks * TILE);
    assert_eq!(x.q.len(), x.rows * x.k);
    assert_eq!(x.sums.len(), x.rows * blocks);
    assert_eq!(x.scales.len(), x.rows * blocks);
}

/// Rows `first..first + R` of one tile. Per block: the 256 packed bytes unpacked once into eight
/// vectors of 16 columns x 4 weights `w` (0-15, the unsigned side of `vpdpbusd`), then per row
/// `dot = Σ vpdpbusd(w, q) − zp · Σ q` (= `Σ q·(w − zp)`, exact) and
/// `acc = fma(dot, s_w · s_x, acc)`; the rows' sums and outputs stay in registers, each row's
/// `vpdpbusd`s interleaved with the other rows' (R independent chains).
///
/// # Safety
/// The CPU has AVX-512 F, BW and VNNI; the lengths are those [`check`] asserts;
/// `first + R <= x.rows`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn avx512_vnni<const R: usize>(
    tile: &TileView,
    x: &QuantizedRows,
    first: usize,
    index: usize,
    out: &mut ColumnWriter,
) {
    let blocks = x.k / BLOCK;
    let nibble = _mm512_set1_epi8(0x0f);
    let mut acc = [_mm512_setzero_ps(); R];
    for block in 0..blocks {
        let bytes = tile.packed.as_ptr().add(block * TILE_BLOCK_BYTES);
        let mut w = [_mm512_setzero_si512(); 8];
        for chunk in 0..4 {
            let v = _mm512_loadu_si512(bytes.add(64 * chunk).cast());
            w[2 * chunk] = _mm512_and_si512(v, nibble);
            w[2 * chunk + 1] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nibble);
        }
        let mut dots = [_mm512_setzero_si512(); R];
        for (quad, weights) in w.iter().enumerate() {
            for (row, dot) in dots.iter_mut().enumerate() {
                let q = x.q.as_ptr().add((first + row) * x.k + block * BLOCK).cast::<i32>().add(quad);
                *dot = _mm512_dpbusd_epi32(*dot, *weights, _mm512_set1_epi32(q.read_unaligned()));
            }
        }
        // Zero points as 32-bit lanes whose high halves are 0: `vpmaddwd` with `Σ q` (|Σ q| <=
        // 4,064 fits 16 bits, the low half of its 32 bits) gives `zp · Σ q + 0 · high half`,
        // exactly; so the sum is broadcast from memory as it is.
        let zero_points = _mm512_cvtepu8_epi32(_mm_loadu_si128(tile.zero_points.as_ptr().add(block * TILE).cast()));
        let scales = _mm512_loadu_ps(tile.scales.as_ptr().add(block * TILE));
        for (row, (dot, acc)) in dots.iter().zip(&mut acc).enumerate() {
            let at = (first + row) * blocks + block;
            let sum = _mm512_set1_epi32(*x.sums.get_unchecked(at));
            let dot = _mm512_sub_epi32(*dot, _mm512_madd_epi16(zero_points, sum));
            let scale = _mm512_mul_ps(scales, _mm512_set1_ps(*x.scales.get_unchecked(at)));
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, *acc);
        }
    }
    for (row, acc) in acc.iter().enumerate() {
        let mut values = [0f32; TILE];
        _mm512_storeu_ps(values.as_mut_ptr(), *acc);
        out.write(first + row, index, &values);
    }
}

/// As [`avx512_vnni`], eight columns at a time and every row's output through `acc`:
/// `vpmaddubsw` (pairs of u8 x i8 products, at most 2·15·127 = 3,810, so never saturated) then
/// `vpmaddwd` by ones give the same sums of four.
///
/// # Safety
/// The CPU has AVX2 and FMA; the lengths are those [`check`] asserts, `acc` is `[rows, 16]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2(tile: &TileView, x: &QuantizedRows, acc: &mut [f32]) {
    let blocks = x.k / BLOCK;
    let nibble = _mm256_set1_epi8(0x0f);
    let ones16 = _mm256_set1_epi16(1);
    let sum4 = |w: __m256i, q: __m256i| _mm256_madd_epi16(_mm256_maddubs_epi16(w, q), ones16);
    for block in 0..blocks {
        let bytes = tile.packed.as_ptr().add(block * TILE_BLOCK_BYTES);
        for half in 0..2 {
            let lanes = block * TILE + 8 * half;
            let zero_points = _mm256_cvtepu8_epi32(_mm_loadl_epi64(tile.zero_points.as_ptr().add(lanes).cast()));
            let mut w = [_mm256_setzero_si256(); 8];
            for chunk in 0..4 {
                let v = _mm256_loadu_si256(bytes.add(64 * chunk + 32 * half).cast());
                w[2 * chunk] = _mm256_and_si256(v, nibble);
                w[2 * chunk + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), nibble);
            }
            let scales = _mm256_loadu_ps(tile.scales.as_ptr().add(lanes));
            for row in 0..x.rows {
                let q = x.q.as_ptr().add(row * x.k + block * BLOCK).cast::<i32>();
                let mut dots = [_mm256_setzero_si256(); 2];
                for (quad, weights) in w.iter().enumerate() {
                    let d = &mut dots[quad % 2];
                    *d = _mm256_add_epi32(*d, sum4(*weights, _mm256_set1_epi32(q.add(quad).read_unaligned())));
                }
                let at = row * blocks + block;
                let sum = _mm256_set1_epi32(*x.sums.get_unchecked(at));
                let dot = _mm256_sub_epi32(_mm256_add_epi32(dots[0], dots[1]), _mm256_madd_epi16(zero_points, sum));
                let scale = _mm256_mul_ps(scales, _mm256_set1_ps(*x.scales.get_unchecked(at)));
                let out = acc.as_mut_ptr().add(row * TILE + 8 * half);
                _mm256_storeu_ps(out, _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, _mm256_loadu_ps(out)));
            }
        }
    }
}

/// The columns of one `[rows, n]` output that one thread may write: the tiles of its range.
pub(super) struct ColumnWriter<'a> {
    out: *mut f32,
    rows: usize,
    n: usize,
    tiles: Range<usize>,
    _out: PhantomData<&'a mut [f32]>,
}

impl ColumnWriter<'_> {
    /// This writer's tiles.
    pub(super) fn tiles(&self) -> Range<usize> {
        self.tiles.clone()
    }

    /// One row of `tile` (its columns below `n`) into `row`.
    #[inline(always)]
    pub(super) fn write(&mut self, row: usize, tile: usize, values: &[f32; TILE]) {
        let start = tile * TILE;
        assert!(self.tiles.contains(&tile) && row < self.rows);
        let width = TILE.min(self.n - start);
        // SAFETY: in bounds (row < rows, start + width <= n) and in this writer's tiles only.
        unsafe {
            let at = self.out.add(row * self.n + start);
            if width == TILE {
                at.cast::<[f32; TILE]>().write_unaligned(*values);
            } else {
                std::ptr::copy_nonoverlapping(values.as_ptr(), at, width);
            }
        }
    }
}

/// Runs `work` on `parallel`'s threads, once per share of the `n.div_ceil(16)` column tiles of
/// `out` (`[rows, n]`), each with a writer of that share only. Each share is claimed once: a
/// runner that calls a task twice gets a panic, not a second writer of the same columns; one
/// that skips a task, too (its columns would be left unwritten).
pub(super) fn split_columns(
    out: &mut [f32],
    rows: usize,
    n: usize,
    parallel: &dyn ParallelFor,
    work: impl Fn(ColumnWriter) + Sync,
) {
    assert_eq!(out.len(), rows * n);
    let tiles = n.div_ceil(TILE);
    let shares = parallel.threads().clamp(1, tiles.max(1));
    let claimed: Vec<AtomicBool> = (0..shares).map(|_| AtomicBool::new(false)).collect();
    let out = SendPtr(out.as_mut_ptr());
    parallel.run(shares, &|share| {
        assert!(!claimed[share].swap(true, Ordering::AcqRel), "share {share} of the columns ran twice");
        work(ColumnWriter {
            out: out.get(),
            rows,
            n,
            tiles: share * tiles / shares..(share + 1) * tiles / shares,
            _out: PhantomData,
        })
    });
    assert!(claimed.iter().all(|c| c.load(Ordering::Acquire)), "a share of the columns never ran");
}

/// The output's address, shared with the pool's threads.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);

// SAFETY: only read, to make each share's `ColumnWriter`, whose writes are disjoint (above).
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}
