//! The instruction-set paths of [`super::attention`]: the same functions, compiled once more with
//! AVX-512 F or with AVX2 and FMA enabled (the 16-lane loops become vector instructions), and the
//! dot product of two heads written with intrinsics (the compiler vectorizes it two lanes at a
//! time). Fused multiply-adds round once on every path and nothing is reassociated, so the paths
//! give the same bits.

use std::sync::Mutex;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::attention::{attend_body, write_kv_body, AttentionHeads, AttentionInput, Call, HeadDot, PortableDot, LANES};
use super::int4_matmul::Isa;

/// Writes the call's keys and values into the cache on `isa`.
pub(super) fn write_kv(
    isa: Isa,
    h: &AttentionHeads,
    input: &AttentionInput,
    keys: &mut [f32],
    values: &mut [f32],
    capacity: usize,
) {
    assert!(isa.available(), "{isa:?} is not available on this CPU");
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 F (Isa::Avx512Vnni implies it; asserted above); the
        // function is safe code otherwise.
        Isa::Avx512Vnni => unsafe { write_kv_avx512(h, input, keys, values, capacity) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (asserted above); safe code otherwise.
        Isa::Avx2 => unsafe { write_kv_avx2(h, input, keys, values, capacity) },
        _ => write_kv_body(h, input, keys, values, capacity),
    }
}

/// Runs task `task` of `call` on `isa`.
pub(super) fn attend(isa: Isa, call: &Call, task: usize, shares: &[Mutex<&mut [f32]>]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `write_kv`, called first for the same call, asserted the CPU has the features;
        // the function is safe code otherwise.
        Isa::Avx512Vnni => unsafe { attend_avx512(call, task, shares) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { attend_avx2(call, task, shares) },
        _ => attend_body(call, task, shares, &PortableDot),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn write_kv_avx512(h: &AttentionHeads, input: &AttentionInput, keys: &mut [f32], values: &mut [f32], capacity: usize) {
    write_kv_body(h, input, keys, values, capacity)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn write_kv_avx2(h: &AttentionHeads, input: &AttentionInput, keys: &mut [f32], values: &mut [f32], capacity: usize) {
    write_kv_body(h, input, keys, values, capacity)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn attend_avx512(call: &Call, task: usize, shares: &[Mutex<&mut [f32]>]) {
    attend_body(call, task, shares, &Avx512Dot(()))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn attend_avx2(call: &Call, task: usize, shares: &[Mutex<&mut [f32]>]) {
    attend_body(call, task, shares, &Avx2Dot(()))
}

/// Proof that the CPU has AVX-512 F: made only inside `attend_avx512`.
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
}

/// Proof that the CPU has AVX2 and FMA: made only inside `attend_avx2`.
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
}

/// [`super::attention`]'s `reduce` from its second stage: `b[l] = a[l] + a[l + 8]` given, then
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
