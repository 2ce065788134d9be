//! The instruction-set paths of [`super::attention`]: the same functions, compiled once more with
//! AVX-512 F or with AVX2, FMA and F16C enabled (the 16-lane loops become vector instructions),
//! the dot product of two heads written with intrinsics (the compiler vectorizes it two lanes at a
//! time), and the cache's halves widened by the processor's conversion. Fused multiply-adds round
//! once on every path, a half widens exactly, and nothing is reassociated, so the paths give the
//! same bits.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use half::f16;

/// The lane count of attention's fixed summation orders.
pub const LANES: usize = 16;

/// How a path computes attention's dot product of two heads (16 lanes of fused multiply-adds,
/// then a fixed reduction tree) and widens the cache's halves: the compiler splits the portable
/// code's lanes into pairs, so the vector paths write it with intrinsics, the same operations in
/// the same order.
pub(super) trait HeadDot {
    /// The dot product of `q` and `k` (a multiple of 16 values each), bit for bit.
    fn dot(&self, q: &[f32], k: &[f32]) -> f32;

    /// `out[i] = x[i]` as a float (exact), for `x` of a multiple of 16 halves.
    fn widen(&self, x: &[f16], out: &mut [f32]);

    /// `out[i] = x[i]` rounded to the nearest half, ties to even (`f16::from_f32`), for `x` of
    /// a multiple of 16 floats.
    fn narrow(&self, x: &[f32], out: &mut [f16]);

    /// `out[v · stride + j] = dot(q_v, k_j)` for the 16 keys `k_j` (rows of `d` halves in
    /// `keys`) and the vectors `q_v` (rows of `d` in `qs`), bit for bit; `widened` holds at
    /// least `16 d` floats of scratch. Here the keys are widened into it once for all vectors.
    #[inline(always)]
    fn tile_dots(&self, qs: &[f32], keys: &[f16], widened: &mut [f32], out: &mut [f32], stride: usize) {
        let d = keys.len() / LANES;
        let widened = &mut widened[..LANES * d];
        self.widen(keys, widened);
        for (v, q) in qs.chunks_exact(d).enumerate() {
            for (out, k) in out[v * stride..][..LANES].iter_mut().zip(widened.chunks_exact(d)) {
                *out = self.dot(q, k);
            }
        }
    }
}

/// Work that runs on an instruction set: generic code, given that set's [`HeadDot`].
pub(super) trait WithDot {
    /// Runs the work; `#[inline(always)]` in its implementations, so that it is compiled with
    /// the caller's target features.
    fn run(self, dots: &impl HeadDot);
}

/// Runs `work` compiled for AVX-512 F.
pub(super) fn on_avx512(work: impl WithDot) {
    #[cfg(target_arch = "x86_64")]
    {
        assert!(is_x86_feature_detected!("avx512f"), "the CPU has no AVX-512 F");
        // SAFETY: the CPU has AVX-512 F (asserted above); the function is safe code otherwise.
        unsafe { avx512(work) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = work;
        panic!("AVX-512 on a CPU that is not x86-64");
    }
}

/// Runs `work` compiled for AVX2, FMA and F16C.
pub(super) fn on_avx2(work: impl WithDot) {
    #[cfg(target_arch = "x86_64")]
    {
        assert!(super::int4_matmul_x86::has_avx2(), "the CPU has no AVX2, FMA and F16C");
        // SAFETY: the CPU has AVX2, FMA and F16C (asserted above); the function is safe code
        // otherwise.
        unsafe { avx2(work) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = work;
        panic!("AVX2 on a CPU that is not x86-64");
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn avx512(work: impl WithDot) {
    work.run(&Avx512Dot(()))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn avx2(work: impl WithDot) {
    work.run(&Avx2Dot(()))
}

/// Proof that the CPU has AVX-512 F: made only inside `avx512`.
#[cfg(target_arch = "x86_64")]
struct Avx512Dot(());

#[cfg(target_arch = "x86_64")]
impl HeadDot for Avx512Dot {
    #[inline(always)]
    fn dot(&self, q: &[f32], k: &[f32]) -> f32 {
        assert!(q.len() == k.len() && q.len().is_multiple_of(LANES));
        // SAFETY: an `Avx512Dot` exists only where the CPU has AVX-512 F; every load reads 16
        // values at `16c` with `16c + 16 <= len` (asserted above).
        unsafe {
            let mut acc = _mm512_setzero_ps();
            for c in (0..q.len()).step_by(LANES) {
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(q.as_ptr().add(c)), _mm512_loadu_ps(k.as_ptr().add(c)), acc);
            }
            let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc)));
            reduce8(_mm256_add_ps(_mm512_castps512_ps256(acc), high))
        }
    }

    #[inline(always)]
    fn widen(&self, x: &[f16], out: &mut [f32]) {
        assert!(x.len().is_multiple_of(LANES) && out.len() >= x.len());
        for c in (0..x.len()).step_by(LANES) {
            // SAFETY: an `Avx512Dot` exists only where the CPU has AVX-512 F; the load reads
            // `x[c..c + 16]` and the store writes `out[c..c + 16]`, `c + 16 <= x.len() <=
            // out.len()` (asserted above).
            unsafe {
                let wide = _mm512_cvtph_ps(_mm256_loadu_si256(x.as_ptr().add(c).cast()));
                _mm512_storeu_ps(out.as_mut_ptr().add(c), wide);
            }
        }
    }

    #[inline(always)]
    fn narrow(&self, x: &[f32], out: &mut [f16]) {
        assert!(x.len().is_multiple_of(LANES) && out.len() >= x.len());
        for c in (0..x.len()).step_by(LANES) {
            // SAFETY: an `Avx512Dot` exists only where the CPU has AVX-512 F; the load reads
            // `x[c..c + 16]` and the store writes `out[c..c + 16]`, `c + 16 <= x.len() <=
            // out.len()` (asserted above).
            unsafe {
                let half = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm512_loadu_ps(x.as_ptr().add(c)));
                _mm256_storeu_si256(out.as_mut_ptr().add(c).cast(), half);
            }
        }
    }

    /// Keys widened in registers, four at a time for up to three vectors (twelve sums of 16
    /// lanes, each key's lanes as in `dot`), then each key's reduction as `reduce` takes it
    /// ([`reduce4`]).
    #[inline(always)]
    fn tile_dots(&self, qs: &[f32], keys: &[f16], _: &mut [f32], out: &mut [f32], stride: usize) {
        let d = keys.len() / LANES;
        let vectors = qs.len() / d;
        assert!(d.is_multiple_of(LANES) && keys.len() == LANES * d && qs.len() == vectors * d);
        assert!(vectors == 0 || out.len() >= (vectors - 1) * stride + LANES);
        let mut first = 0;
        while first < vectors {
            let (qs, out) = (&qs[first * d..], &mut out[first * stride..]);
            // SAFETY: an `Avx512Dot` exists only where the CPU has AVX-512 F; `dots4` reads
            // `V` rows of `d` from `qs`, 16 of `d` from `keys` and writes `V` rows of 16 at
            // `stride` in `out`, all in bounds (asserted above, `first + V <= vectors`).
            unsafe {
                match vectors - first {
                    1 => dots4::<1>(qs, keys, d, out, stride),
                    2 => dots4::<2>(qs, keys, d, out, stride),
                    _ => dots4::<3>(qs, keys, d, out, stride),
                }
            }
            first += (vectors - first).min(3);
        }
    }
}

/// The 16 keys' dot products with `V` vectors, four keys at a time: each key chunk of 16 halves
/// widened once for the `V` vectors.
///
/// # Safety
/// The CPU has AVX-512 F; `qs` holds `V` rows of `d`, `keys` 16 rows of `d`, `out` `V` rows
/// of 16 at `stride`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dots4<const V: usize>(qs: &[f32], keys: &[f16], d: usize, out: &mut [f32], stride: usize) {
    let (qs, keys, out) = (qs.as_ptr(), keys.as_ptr(), out.as_mut_ptr());
    for four in 0..LANES / 4 {
        let mut acc = [[_mm512_setzero_ps(); 4]; V];
        for c in (0..d).step_by(LANES) {
            for j in 0..4 {
                let key = _mm512_cvtph_ps(_mm256_loadu_si256(keys.add((4 * four + j) * d + c).cast()));
                for (v, acc) in acc.iter_mut().enumerate() {
                    acc[j] = _mm512_fmadd_ps(_mm512_loadu_ps(qs.add(v * d + c)), key, acc[j]);
                }
            }
        }
        for (v, acc) in acc.iter().enumerate() {
            _mm_storeu_ps(out.add(v * stride + 4 * four), reduce4(acc));
        }
    }
}

/// Four keys' 16-lane sums reduced as `reduce` does each: halves of 8 (two keys a vector),
/// halves of 4 (one key per 128-bit block), `[c0 + c2, c1 + c3]`, then their sum; key `j`'s
/// result in lane `j`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn reduce4(a: &[__m512; 4]) -> __m128 {
    // SAFETY: AVX-512 F (the only caller runs with it); register operations only.
    unsafe {
        let pair = |x: __m512, y: __m512| {
            _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(x, y), _mm512_shuffle_f32x4::<0xEE>(x, y))
        };
        let (b0, b1) = (pair(a[0], a[1]), pair(a[2], a[3]));
        // Block m: key m's b[l] + b[l + 4].
        let c = _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(b0, b1), _mm512_shuffle_f32x4::<0xDD>(b0, b1));
        // Per block: [c0 + c2, c1 + c3, ...].
        let e = _mm512_add_ps(_mm512_shuffle_ps::<0x44>(c, c), _mm512_shuffle_ps::<0xEE>(c, c));
        // Lane 0 of each block: e0 + e1.
        let sum = _mm512_add_ps(e, _mm512_shuffle_ps::<0xB1>(e, e));
        _mm512_castps512_ps128(_mm512_permutexvar_ps(
            _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
            sum,
        ))
    }
}

/// Proof that the CPU has AVX2 and FMA: made only inside `avx2`.
#[cfg(target_arch = "x86_64")]
struct Avx2Dot(());

#[cfg(target_arch = "x86_64")]
impl HeadDot for Avx2Dot {
    #[inline(always)]
    fn dot(&self, q: &[f32], k: &[f32]) -> f32 {
        assert!(q.len() == k.len() && q.len().is_multiple_of(LANES));
        // SAFETY: an `Avx2Dot` exists only where the CPU has AVX2 and FMA; every load reads 8
        // values at `16c` or `16c + 8` with `16c + 16 <= len` (asserted above).
        unsafe {
            let (mut low, mut high) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for c in (0..q.len()).step_by(LANES) {
                let (q, k) = (q.as_ptr().add(c), k.as_ptr().add(c));
                low = _mm256_fmadd_ps(_mm256_loadu_ps(q), _mm256_loadu_ps(k), low);
                high = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(8)), _mm256_loadu_ps(k.add(8)), high);
            }
            reduce8(_mm256_add_ps(low, high))
        }
    }

    #[inline(always)]
    fn widen(&self, x: &[f16], out: &mut [f32]) {
        assert!(x.len().is_multiple_of(8) && out.len() >= x.len());
        for c in (0..x.len()).step_by(8) {
            // SAFETY: an `Avx2Dot` exists only where the CPU has AVX2, FMA and F16C; the load
            // reads `x[c..c + 8]` and the store writes `out[c..c + 8]`, `c + 8 <= x.len() <=
            // out.len()` (asserted above).
            unsafe {
                let wide = _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().add(c).cast()));
                _mm256_storeu_ps(out.as_mut_ptr().add(c), wide);
            }
        }
    }

    #[inline(always)]
    fn narrow(&self, x: &[f32], out: &mut [f16]) {
        assert!(x.len().is_multiple_of(8) && out.len() >= x.len());
        for c in (0..x.len()).step_by(8) {
            // SAFETY: an `Avx2Dot` exists only where the CPU has AVX2, FMA and F16C; the load
            // reads `x[c..c + 8]` and the store writes `out[c..c + 8]`, `c + 8 <= x.len() <=
            // out.len()` (asserted above).
            unsafe {
                let half = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(x.as_ptr().add(c)));
                _mm_storeu_si128(out.as_mut_ptr().add(c).cast(), half);
            }
        }
    }
}

/// Attention's `reduce` from its second stage: `b[l] = a[l] + a[l + 8]` given, then
/// `c[l] = b[l] + b[l + 4]`, `[c0 + c2, c1 + c3]`, and their sum.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn reduce8(b: __m256) -> f32 {
    // SAFETY: AVX (all paths that call this have AVX2); register operations only.
    unsafe {
        let c = _mm_add_ps(_mm256_castps256_ps128(b), _mm256_extractf128_ps::<1>(b));
        let e = _mm_add_ps(c, _mm_movehl_ps(c, c));
        _mm_cvtss_f32(_mm_add_ss(e, _mm_movehdup_ps(e)))
    }
}
