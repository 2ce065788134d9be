//! The unsafe part of [`super::exp`]: its loop compiled for AVX-512 and for AVX2 (the same safe
//! code, handed in by the caller and inlined here; LLVM vectorizes it without changing any
//! operation's order or rounding).

use super::int4_matmul_x86::{has_avx2, has_avx512_vnni};

/// `body(xs)` compiled for AVX-512 F; the caller has checked [`has_avx512_vnni`].
pub(super) fn on_avx512(xs: &mut [f64], body: impl Fn(&mut [f64])) {
    assert!(has_avx512_vnni());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has the features (asserted above); `body` is safe code.
    unsafe {
        avx512_copy(xs, body)
    }
}

/// `body(xs)` compiled for AVX2 and FMA; the caller has checked [`has_avx2`].
pub(super) fn on_avx2(xs: &mut [f64], body: impl Fn(&mut [f64])) {
    assert!(has_avx2());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as in `on_avx512`.
    unsafe {
        avx2_copy(xs, body)
    }
}

/// # Safety
/// The CPU has AVX-512 F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn avx512_copy(xs: &mut [f64], body: impl Fn(&mut [f64])) {
    body(xs)
}

/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_copy(xs: &mut [f64], body: impl Fn(&mut [f64])) {
    body(xs)
}
