//! The instruction-set paths of [`super::attention`]: the same functions, compiled once more with
//! AVX-512 F or with AVX2 and FMA enabled (the 16-lane loops become vector instructions). Fused
//! multiply-adds round once on every path and nothing is reassociated, so the paths give the
//! same bits; calling a path is the only unsafe part.

use std::sync::Mutex;

use super::attention::{attend_body, write_kv_body, AttentionHeads, AttentionInput, Call};
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
        _ => attend_body(call, task, shares),
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
    attend_body(call, task, shares)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn attend_avx2(call: &Call, task: usize, shares: &[Mutex<&mut [f32]>]) {
    attend_body(call, task, shares)
}
