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

/// Whether this CPU has AVX2 and FMA.
pub(super) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// One tile on AVX-512 VNNI; the caller has checked [`has_avx512_vnni`].
pub(super) fn tile_avx512_vnni(tile: &TileView, x: &QuantizedRows, acc: &mut [f32]) {
    check(tile, x, acc);
    assert!(has_avx512_vnni());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has the features (asserted above); `check` asserted every length the
    // function reads and writes through raw pointers.
    unsafe {
        avx512_vnni(tile, x, acc)
    }
}

/// One tile on AVX2 and FMA; the caller has checked [`has_avx2_fma`].
pub(super) fn tile_avx2(tile: &TileView, x: &QuantizedRows, acc: &mut [f32]) {
    check(tile, x, acc);
    assert!(has_avx2_fma());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as in `tile_avx512_vnni`.
    unsafe {
        avx2(tile, x, acc)
    }
}

/// [`quantize_into`] on AVX-512 F/BW; the caller has checked [`has_avx512_vnni`].
pub(super) fn quantize_avx512(x: &[f32], u: &mut [u8], scales: &mut [f32]) {
    assert!(has_avx512_vnni());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has the features (asserted above); the function is safe code.
    unsafe {
        quantize_avx512_copy(x, u, scales)
    }
}

/// [`quantize_into`] on AVX2; the caller has checked [`has_avx2_fma`].
pub(super) fn quantize_avx2(x: &[f32], u: &mut [u8], scales: &mut [f32]) {
    assert!(has_avx2_fma());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as in `quantize_avx512`.
    unsafe {
        quantize_avx2_copy(x, u, scales)
    }
}

/// # Safety
/// The CPU has AVX-512 F and BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_avx512_copy(x: &[f32], u: &mut [u8], scales: &mut [f32]) {
    quantize_into(x, u, scales)
}

/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_avx2_copy(x: &[f32], u: &mut [u8], scales: &mut [f32]) {
    quantize_into(x, u, scales)
}

/// The lengths the vector tiles rely on.
fn check(tile: &TileView, x: &QuantizedRows, acc: &[f32]) {
    let blocks = x.k / BLOCK;
    assert_eq!(x.k % BLOCK, 0);
    assert_eq!(tile.packed.len(), blocks * TILE_BLOCK_BYTES);
    assert_eq!(tile.scales.len(), blocks * TILE);
    assert_eq!(tile.zero_points.len(), blocks * TILE);
    assert_eq!(x.u.len(), x.rows * x.k);
    assert_eq!(x.scales.len(), x.rows * blocks);
    assert_eq!(acc.len(), x.rows * TILE);
}

/// Per block: the 256 packed bytes unpacked once into eight vectors of 16 columns x 4 signed
/// weights `w − zp`, and `c = −128 · Σ (w − zp)` per column; then per row, with the activations
/// as unsigned bytes `u = q + 128`, `dot = c + Σ vpdpbusd(u, w − zp)` (= `Σ q·(w − zp)`) and
/// `acc = fma(dot, s_w · s_x, acc)`.
///
/// # Safety
/// The CPU has AVX-512 F, BW and VNNI; the lengths are those [`check`] asserts.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn avx512_vnni(tile: &TileView, x: &QuantizedRows, acc: &mut [f32]) {
    let blocks = x.k / BLOCK;
    let nibble = _mm512_set1_epi8(0x0f);
    let ones = _mm512_set1_epi8(1);
    for block in 0..blocks {
        let bytes = tile.packed.as_ptr().add(block * TILE_BLOCK_BYTES);
        let zero_points = _mm512_cvtepu8_epi32(_mm_loadu_si128(tile.zero_points.as_ptr().add(block * TILE).cast()));
        let zero_point_bytes = _mm512_mullo_epi32(zero_points, _mm512_set1_epi32(0x0101_0101));
        let mut w = [_mm512_setzero_si512(); 8];
        let mut weight_sum = _mm512_setzero_si512();
        for chunk in 0..4 {
            let v = _mm512_loadu_si512(bytes.add(64 * chunk).cast());
            w[2 * chunk] = _mm512_sub_epi8(_mm512_and_si512(v, nibble), zero_point_bytes);
            w[2 * chunk + 1] = _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16::<4>(v), nibble), zero_point_bytes);
            weight_sum = _mm512_dpbusd_epi32(weight_sum, ones, w[2 * chunk]);
            weight_sum = _mm512_dpbusd_epi32(weight_sum, ones, w[2 * chunk + 1]);
        }
        let offset = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32::<7>(weight_sum));
        let scales = _mm512_loadu_ps(tile.scales.as_ptr().add(block * TILE));
        for row in 0..x.rows {
            let u = x.u.as_ptr().add(row * x.k + block * BLOCK).cast::<i32>();
            // Two independent sums (even and odd quads), added at the end: integers, so exact in
            // any order, and two chains keep the VNNI unit busier than one.
            let mut dots = [offset, _mm512_setzero_si512()];
            for (quad, weights) in w.iter().enumerate() {
                let d = &mut dots[quad % 2];
                *d = _mm512_dpbusd_epi32(*d, _mm512_set1_epi32(u.add(quad).read_unaligned()), *weights);
            }
            let dot = _mm512_add_epi32(dots[0], dots[1]);
            let scale = _mm512_mul_ps(scales, _mm512_set1_ps(*x.scales.get_unchecked(row * blocks + block)));
            let out = acc.as_mut_ptr().add(row * TILE);
            _mm512_storeu_ps(out, _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, _mm512_loadu_ps(out)));
        }
    }
}

/// As [`avx512_vnni`], eight columns at a time: `vpmaddubsw` (pairs of u8 x i8 products, at
/// most 2·255·15 = 7,650, so never saturated) then `vpmaddwd` by ones give the same sums of four.
///
/// # Safety
/// The CPU has AVX2 and FMA; the lengths are those [`check`] asserts.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2(tile: &TileView, x: &QuantizedRows, acc: &mut [f32]) {
    let blocks = x.k / BLOCK;
    let nibble = _mm256_set1_epi8(0x0f);
    let ones8 = _mm256_set1_epi8(1);
    let ones16 = _mm256_set1_epi16(1);
    let sum4 = |u: __m256i, w: __m256i| _mm256_madd_epi16(_mm256_maddubs_epi16(u, w), ones16);
    for block in 0..blocks {
        let bytes = tile.packed.as_ptr().add(block * TILE_BLOCK_BYTES);
        for half in 0..2 {
            let lanes = block * TILE + 8 * half;
            let zero_points = _mm256_cvtepu8_epi32(_mm_loadl_epi64(tile.zero_points.as_ptr().add(lanes).cast()));
            let zero_point_bytes = _mm256_mullo_epi32(zero_points, _mm256_set1_epi32(0x0101_0101));
            let mut w = [_mm256_setzero_si256(); 8];
            let mut weight_sum = _mm256_setzero_si256();
            for chunk in 0..4 {
                let v = _mm256_loadu_si256(bytes.add(64 * chunk + 32 * half).cast());
                w[2 * chunk] = _mm256_sub_epi8(_mm256_and_si256(v, nibble), zero_point_bytes);
                w[2 * chunk + 1] =
                    _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16::<4>(v), nibble), zero_point_bytes);
                weight_sum = _mm256_add_epi32(weight_sum, sum4(ones8, w[2 * chunk]));
                weight_sum = _mm256_add_epi32(weight_sum, sum4(ones8, w[2 * chunk + 1]));
            }
            let offset = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<7>(weight_sum));
            let scales = _mm256_loadu_ps(tile.scales.as_ptr().add(lanes));
            for row in 0..x.rows {
                let u = x.u.as_ptr().add(row * x.k + block * BLOCK).cast::<i32>();
                let mut dots = [offset, _mm256_setzero_si256()];
                for (quad, weights) in w.iter().enumerate() {
                    let d = &mut dots[quad % 2];
                    *d = _mm256_add_epi32(*d, sum4(_mm256_set1_epi32(u.add(quad).read_unaligned()), *weights));
                }
                let dot = _mm256_add_epi32(dots[0], dots[1]);
                let scale = _mm256_mul_ps(scales, _mm256_set1_ps(*x.scales.get_unchecked(row * blocks + block)));
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
