//! Our own float64 `exp`, for the sampler's weights, log-probabilities and scores: the same bits
//! on every instruction set and every C library (glibc's `exp` has an FMA and a generic variant
//! that differ by one ulp on some inputs, and another C library may differ more), and eight or
//! four at a time where the CPU has AVX-512 or AVX2 (the sampler takes 49,152 of them a sampled
//! row: glibc's scalar calls were about a third of its time).
//!
//! Cody and Waite's reduction with fdlibm's constants, then a Taylor polynomial: `x = k·ln 2 + r`
//! with `k` the nearest integer to `x / ln 2` and `|r| <= ln 2 / 2`, `e^r` by Horner's rule to
//! degree 13 (the remainder, `r^14 / 14!` ≈ 4e-18, is below half an ulp), times `2^k` built in
//! the exponent bits. Every operation is an IEEE-754 add, multiply, fused multiply-add or integer
//! operation, written once in [`exp_below_zero`] and compiled by LLVM for each instruction set
//! without changing its order, so every path gives the same bits (tested); they are within two
//! ulps of the C library's `exp` (tested).

use super::int4_matmul::Isa;

/// ln 2's leading bits (the low 21 of the significand zero, so `k · LN2_HI` is exact) and the
/// rest: fdlibm's `ln2HI[0]` and `ln2LO[0]` (`e_exp.c`, 6.93147180369123816490e-01 and
/// 1.90821492927058770002e-10). The test below checks that they sum to ln 2.
pub(super) const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
pub(super) const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
/// Adding 1.5 · 2^52 rounds a float64 of magnitude below 2^51 to the nearest integer (ties to
/// even) and leaves that integer in the low bits of the sum.
const ROUND: f64 = 6_755_399_441_055_744.0;
/// Below this `e^x` is under 2^-1022 (the least normal float64): it is taken as 0. Such a
/// weight is less than 1e-308 of the largest (1), so it changes no sum and is never drawn.
const LEAST: f64 = -708.0;

/// `e^x` for `x <= 0` (a logit minus the largest, over a temperature), 0 below −708 and for
/// −∞; never NaN for a number (the caller has refused NaN).
#[inline(always)]
pub fn exp_below_zero(x: f64) -> f64 {
    let shifted = x * std::f64::consts::LOG2_E + ROUND;
    let k = shifted - ROUND;
    let r = (-k).mul_add(LN2_HI, x);
    let r = (-k).mul_add(LN2_LO, r);
    let mut p: f64 = 1.0 / 6_227_020_800.0; // 1/13!
    for c in [
        1.0 / 479_001_600.0, // 1/12!
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p.mul_add(r, c);
    }
    // k is in −1021..=0 here, so k + 1023 is a normal exponent; the shift drops the rest of the
    // sum's bits.
    let scale = f64::from_bits(shifted.to_bits().wrapping_add(1023) << 52);
    if x >= LEAST {
        p * scale
    } else {
        0.0
    }
}

/// The logistic function `1 / (1 + e^−x)` (a score from a logit or a log-odds), by `e` of
/// non-positive numbers only: `1 / (1 + e^−x)` for `x >= 0`, `e^x / (1 + e^x)` below; NaN for
/// NaN.
pub fn logistic(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let e = exp_below_zero(-x.abs());
    if x >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    }
}

/// Each `x` of `xs` (all `<= 0`) replaced by [`exp_below_zero`]`(x)`, on `isa`'s vectors.
pub fn exp_below_zero_in_place(xs: &mut [f64], isa: Isa) {
    match isa {
        Isa::Avx512Vnni => super::exp_x86::on_avx512(xs, exp_all),
        Isa::Avx2 => super::exp_x86::on_avx2(xs, exp_all),
        Isa::Portable => exp_all(xs),
    }
}

/// The loop every path compiles.
#[inline(always)]
fn exp_all(xs: &mut [f64]) {
    for x in xs {
        *x = exp_below_zero(*x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};

    fn inputs() -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut xs: Vec<f64> = (0..200_000)
            .map(|i| {
                let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                match i % 4 {
                    0 => -u * 800.0,
                    1 => -u * 40.0,
                    2 => -u,
                    _ => -u * 1e-6,
                }
            })
            .collect();
        xs.extend([0.0, -0.0, -1e-300, -5e-324, -0.5 * std::f64::consts::LN_2, -std::f64::consts::LN_2]);
        xs.extend([-707.9, -708.0, -708.1, -745.2, -1e300, f64::NEG_INFINITY, f64::MIN]);
        xs
    }

    fn ulps(a: f64, b: f64) -> u64 {
        a.to_bits().abs_diff(b.to_bits())
    }

    #[test]
    fn the_split_of_ln2_sums_to_ln2() {
        assert_eq!(LN2_HI + LN2_LO, std::f64::consts::LN_2);
        assert_eq!(LN2_HI.to_bits() & ((1 << 21) - 1), 0);
    }

    #[test]
    fn every_path_gives_the_same_bits() {
        let xs = inputs();
        let mut portable = xs.clone();
        exp_below_zero_in_place(&mut portable, Isa::Portable);
        for isa in [Isa::Avx512Vnni, Isa::Avx2].into_iter().filter(|isa| isa.available()) {
            // Odd lengths and offsets: the vector loops' tails.
            for skip in [0, 1, 3] {
                let mut v = xs[skip..].to_vec();
                exp_below_zero_in_place(&mut v, isa);
                let same = v.iter().zip(&portable[skip..]).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{isa:?} differs from the portable path");
            }
        }
    }

    #[test]
    fn within_two_ulps_of_the_c_library() {
        let xs = inputs();
        let mut ours = xs.clone();
        exp_below_zero_in_place(&mut ours, Isa::detect());
        let mut worst = 0;
        for (&x, &e) in xs.iter().zip(&ours) {
            if x >= LEAST {
                worst = worst.max(ulps(e, x.exp()));
            } else {
                assert_eq!(e, 0.0, "e^{x}");
            }
        }
        assert!(worst <= 2, "{worst} ulps from the C library's exp");
        assert_eq!(exp_below_zero(0.0), 1.0);
        assert_eq!(exp_below_zero(-0.0), 1.0);
        assert!(exp_below_zero(LEAST).is_normal(), "the least input kept gives a normal number");
    }

    #[test]
    fn the_logistic_function_is_close_to_the_plain_formula_on_both_sides() {
        for x in [0.0, 1e-9, 0.5, 3.0, 20.0, 40.0, 800.0] {
            assert!((logistic(x) + logistic(-x) - 1.0).abs() <= 2.0 * f64::EPSILON, "{x}");
            for x in [x, -x] {
                let plain = 1.0 / (1.0 + (-x).exp());
                assert!((logistic(x) - plain).abs() <= 4.0 * f64::EPSILON * plain, "{x}: {} vs {plain}", logistic(x));
            }
        }
        assert_eq!(logistic(0.0), 0.5);
        assert_eq!(logistic(f64::INFINITY), 1.0);
        assert_eq!(logistic(f64::NEG_INFINITY), 0.0);
        assert!(logistic(f64::NAN).is_nan());
    }
}
