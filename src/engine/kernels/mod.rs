//! Our own decode kernels, the int4 x int8 matrix product and causal attention (and the `exp` and
//! `ln` of the sampler, log-probabilities and scores), written so that a row's result cannot
//! depend on the other rows of a batch: every output element is computed by one thread, from its
//! own row only, by the same sequence of operations whatever the batch, the thread count or the
//! instruction set. Unsafe code stays in the `*_x86` files.

/// Our kernels' versions, in the engine fingerprint: change one with any change to its numbers.
/// `scores-1`: log-probabilities, rerank judgements' and cross-encoders' scores by this `exp` and
/// `ln` (before it, the C library's). `attention-2`: the KV cache in half precision (before it,
/// float32).
pub const VERSION: &str = "int4-matmul-1 attention-2 exp-1 ln-1 scores-1";

pub mod attention;
mod attention_x86;
pub mod exp;
mod exp_x86;
mod int4_layout;
pub mod int4_matmul;
mod int4_matmul_x86;
pub mod ln;
pub mod ort_op;
pub mod rms_norm;
pub mod spin_pool;
pub mod swiglu;

/// `n` values of a fixed pseudo-random sequence (xorshift) in about [-scale, scale], for the
/// kernels' tests.
#[cfg(test)]
fn test_values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state % 20_001) as f32 / 10_000.0 - 1.0) * scale
        })
        .collect()
}
