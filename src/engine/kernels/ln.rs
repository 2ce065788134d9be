//! Our own float64 natural logarithm, and the log of a sum of exponentials built on it and on
//! [`super::exp`]: log-probabilities and scores are answers, so they must not depend on the C
//! library (glibc's `log` and `exp` have per-CPU variants, and another C library may round
//! otherwise).
//!
//! fdlibm's reduction (`e_log.c`): `x = 2^k · (1 + f)` with `√2/2 < 1 + f <= √2`,
//! `s = f / (2 + f)`, and `ln(1 + f) = f − (hfsq − s · (hfsq + R))` with `hfsq = f²/2`, an
//! identity of real numbers when `R` is `ln(1 + f) / s − 2` (the check: `s · (2 + f) = f`). Here
//! `R` is the series of `2 · atanh(s) / s − 2 = Σ 2 s^(2n) / (2n + 1)`, `n = 1..=10`, by
//! Horner's rule in `s²` (no minimax constants: `|s| <= 0.1716`, so the first term left out,
//! `2 s^23 / 23`, is under 1e-18 of the result). Plain IEEE-754 adds, multiplies and one divide,
//! no fused multiply-add: the same bits on every CPU and compiler target (tested against the C
//! library: within one ulp).

use super::exp::{exp_below_zero_in_place, LN2_HI, LN2_LO};
use super::int4_matmul::Isa;

/// 2^54, to scale a subnormal input into the normal range.
const TWO_54: f64 = 18_014_398_509_481_984.0;

/// `ln x`: NaN for NaN and negative numbers, −∞ for ±0, +∞ for +∞.
pub fn ln(x: f64) -> f64 {
    if x.is_nan() || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 {
        return f64::NEG_INFINITY;
    }
    if x == f64::INFINITY {
        return x;
    }
    let (x, mut k) = if x.is_normal() { (x, 0i64) } else { (x * TWO_54, -54) };
    let bits = x.to_bits();
    k += ((bits >> 52) & 0x7ff) as i64 - 1023;
    // The significand with the exponent of 1: m in [1, 2); halved (exactly) above √2.
    let mut m = f64::from_bits((bits & ((1 << 52) - 1)) | (1023 << 52));
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        k += 1;
    }
    let f = m - 1.0; // exact (Sterbenz)
    let s = f / (2.0 + f);
    let z = s * s;
    let mut r = 2.0 / 21.0;
    for n in (1..=9).rev() {
        r = r * z + 2.0 / f64::from(2 * n + 1);
    }
    let r = r * z;
    let hfsq = 0.5 * f * f;
    let k = k as f64;
    k * LN2_HI - ((hfsq - (s * (hfsq + r) + k * LN2_LO)) - f)
}

/// Lanes of [`log_sum_exp`]'s sum: value `i` is added to lane `i % LANES`, in order, and the
/// lanes are added pairwise at the end (a fixed order, so the same bits whatever the vectors).
const LANES: usize = 8;

/// `ln Σ e^v` over `values` (finite or −∞, not all −∞): the largest plus the log of the
/// exponentials' sum below it, on `isa`'s vectors (the same bits on each).
pub fn log_sum_exp(values: impl Iterator<Item = f64> + Clone, isa: Isa) -> f64 {
    let max = values.clone().fold(f64::NEG_INFINITY, f64::max);
    const CHUNK: usize = 64 * LANES;
    let mut buffer = [0f64; CHUNK];
    let mut lanes = [0f64; LANES];
    let mut values = values.peekable();
    while values.peek().is_some() {
        let mut len = 0;
        for (slot, v) in buffer.iter_mut().zip(values.by_ref()) {
            *slot = v - max;
            len += 1;
        }
        // The tail of the last chunk: e^−∞ = 0 adds nothing.
        buffer[len..].fill(f64::NEG_INFINITY);
        exp_below_zero_in_place(&mut buffer, isa);
        for group in buffer.chunks_exact(LANES) {
            for (lane, e) in lanes.iter_mut().zip(group) {
                *lane += e;
            }
        }
    }
    let [a, b, c, d, e, f, g, h] = lanes;
    max + ln(((a + b) + (c + d)) + ((e + f) + (g + h)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};

    #[test]
    fn within_one_ulp_of_the_c_library() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut worst = 0;
        let mut check = |x: f64| {
            let (ours, libm) = (ln(x), x.ln());
            worst = worst.max(ours.to_bits().abs_diff(libm.to_bits()));
            assert_eq!(ours.is_sign_negative(), libm.is_sign_negative(), "ln {x}: {ours} vs {libm}");
        };
        for i in 0..400_000 {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            check(match i % 4 {
                0 => 1.0 + u * 49_151.0,                                         // a softmax's sums
                1 => 0.5 + 1.5 * u,                                              // around 1, both sides of √2/2 and √2
                2 => f64::from_bits(rng.next_u64() >> 1).max(f64::MIN_POSITIVE), // any positive
                _ => 1.0 + (u - 0.5) * 1e-6,                                     // next to 1 (f near 0)
            });
        }
        for x in [f64::MIN_POSITIVE, 5e-324, 1e-310, f64::MAX, std::f64::consts::SQRT_2, 0.5, 2.0, 1024.0] {
            check(x);
        }
        assert!(worst <= 1, "{worst} ulps from the C library's ln");
    }

    #[test]
    fn exact_and_special_values() {
        assert_eq!(ln(1.0).to_bits(), 0f64.to_bits());
        assert_eq!(ln(2.0), std::f64::consts::LN_2);
        assert_eq!(ln(0.0), f64::NEG_INFINITY);
        assert_eq!(ln(-0.0), f64::NEG_INFINITY);
        assert_eq!(ln(f64::INFINITY), f64::INFINITY);
        assert!(ln(-1.0).is_nan() && ln(f64::NAN).is_nan() && ln(f64::NEG_INFINITY).is_nan());
    }

    #[test]
    fn log_sum_exp_is_the_same_bits_on_every_path_and_close_to_the_plain_formula() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        // A vocabulary's logits (past one chunk, with a tail), one −∞ among them.
        let mut logits: Vec<f64> = (0..49_157).map(|_| (rng.next_u32() % 20_000) as f64 / 1000.0 - 10.0).collect();
        logits[77] = f64::NEG_INFINITY;
        let portable = log_sum_exp(logits.iter().copied(), Isa::Portable);
        for isa in [Isa::Avx512Vnni, Isa::Avx2].into_iter().filter(|isa| isa.available()) {
            assert_eq!(log_sum_exp(logits.iter().copied(), isa).to_bits(), portable.to_bits(), "{isa:?}");
        }
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let plain = max + logits.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        assert!((portable - plain).abs() <= 1e-12 * plain.abs(), "{portable} vs {plain}");
        assert_eq!(log_sum_exp([3.0].into_iter(), Isa::Portable), 3.0);
        assert_eq!(log_sum_exp([0.0, f64::NEG_INFINITY].into_iter(), Isa::Portable), 0.0);
    }
}
