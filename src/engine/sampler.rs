//! Token selection: greedy argmax, or seeded sampling from a counter-based RNG so that the draw at
//! step `n` is a pure function of `(seed, n)`.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::engine::kernels::exp::exp_below_zero_in_place;
use crate::engine::kernels::int4_matmul::Isa;
use crate::error::{Error, Result};

/// Decoding parameters beyond greedy. `temperature == 0` means greedy (the default).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Sampling {
    /// Softmax temperature; 0 = greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 = all.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p`; 0 or 1 = all.
    pub top_p: f32,
}

impl Sampling {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 || self.temperature > 100.0 {
            return Err(Error::InvalidRequest(format!("temperature {} is outside 0..=100", self.temperature)));
        }
        if !self.top_p.is_finite() || !(0.0..=1.0).contains(&self.top_p) {
            return Err(Error::InvalidRequest(format!("top_p {} is outside 0..=1", self.top_p)));
        }
        Ok(())
    }

    /// Whether this is plain greedy decoding.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// Index of the largest logit; the first one on ties. NaN logits are an error.
pub fn argmax(logits: &[f32]) -> Result<u32> {
    let mut best = 0usize;
    for (i, &v) in logits.iter().enumerate() {
        if v.is_nan() {
            return Err(nan_logits());
        }
        if v > logits[best] {
            best = i;
        }
    }
    Ok(best as u32)
}

fn nan_logits() -> Error {
    Error::engine("decoder", "the model produced NaN logits")
}

/// Token ids by logit, largest first, ties by lower id (the order of `f32::total_cmp`); only the
/// first `top` when it is not 0. Sorts packed integer keys (rank key, id) instead of comparing
/// through the logits.
pub(crate) fn by_logit(logits: &[f32], top: usize) -> Vec<u32> {
    let mut keys: Vec<u64> =
        logits.iter().enumerate().map(|(id, &v)| (u64::from(rank_key(v)) << 32) | id as u64).collect();
    if top > 0 && top < keys.len() {
        keys.select_nth_unstable(top - 1);
        keys.truncate(top);
    }
    keys.sort_unstable();
    keys.into_iter().map(|k| k as u32).collect()
}

/// `v` as an unsigned integer that orders largest first as `f32::total_cmp` orders (two logits
/// have one key exactly when their bits are equal).
fn rank_key(v: f32) -> u32 {
    let bits = v.to_bits();
    !(if bits >> 31 == 1 { !bits } else { bits | 0x8000_0000 })
}

/// The logit whose [`rank_key`] is `key`.
fn logit_of(key: u32) -> f32 {
    let ascending = !key;
    f32::from_bits(if ascending >> 31 == 1 { ascending & 0x7fff_ffff } else { !ascending })
}

/// The rank keys of `logits` in order (largest logit first); only the first `top` when it is
/// not 0. Keys without ids, half the bytes to sort: which token holds a position is looked up
/// for the drawn position only ([`Weights::token_at`]).
fn ranked(logits: &[f32], top: usize) -> Vec<u32> {
    let mut keys: Vec<u32> = logits.iter().map(|&v| rank_key(v)).collect();
    if top > 0 && top < keys.len() {
        keys.select_nth_unstable(top - 1);
        keys.truncate(top);
        keys.sort_unstable();
        return keys;
    }
    radix_sort(keys)
}

/// Bits of each digit of [`radix_sort`]: three digits (11 + 11 + 10) cover a key, and the counts
/// of all three fit the L1 cache.
const DIGIT_BITS: usize = 11;

/// Sorts `keys` by a least-significant-digit radix sort whose counts are all taken in one pass;
/// a digit every key shares is skipped.
fn radix_sort(mut keys: Vec<u32>) -> Vec<u32> {
    let buckets = 1 << DIGIT_BITS;
    let digits = 32_usize.div_ceil(DIGIT_BITS);
    let digit = |key: u32, d: usize| (key >> (DIGIT_BITS * d)) as usize & (buckets - 1);
    let mut counts = vec![0u32; digits * buckets];
    for &key in &keys {
        for d in 0..digits {
            counts[d * buckets + digit(key, d)] += 1;
        }
    }
    let mut scratch = vec![0u32; keys.len()];
    for (d, counts) in counts.chunks_exact_mut(buckets).enumerate() {
        if counts.iter().any(|&c| c as usize == keys.len()) {
            continue; // every key has this digit
        }
        let mut start = 0;
        for c in counts.iter_mut() {
            (start, *c) = (start + *c, start);
        }
        for &key in &keys {
            let at = &mut counts[digit(key, d)];
            scratch[*at as usize] = key;
            *at += 1;
        }
        std::mem::swap(&mut keys, &mut scratch);
    }
    keys
}

/// Picks the next token for decoding step `step` of a request seeded with `seed`.
pub fn select(logits: &[f32], sampling: &Sampling, seed: u64, step: u64) -> Result<u32> {
    if sampling.is_greedy() {
        return argmax(logits);
    }
    let weights = Weights::new(logits, sampling)?;
    Ok(weights.token_at(logits, weights.draw(seed, step)))
}

/// A weight's exponent (a logit less the largest, over the temperature) below which the weight
/// moves no sum: `e^-40` ≈ 4.2e-18 is less than half an ulp of any float64 of at least 0.5
/// (2^-54 ≈ 5.6e-17), and every sum a draw takes reaches 1 (the largest logit's weight,
/// `e^0`, exactly 1) or, as a running share of the total, about 1 by the time such weights come.
const NEGLIGIBLE: f64 = -40.0;

/// Ranked keys above which they are sorted by [`radix_sort`] (below, a comparison sort is
/// quicker).
const RADIX_FROM: usize = 4096;

/// What a sampled draw picks from: the rank keys in logit order with their weights
/// `exp((logit - max) / t)`, and the sum of the kept weights, every sum taken in logit order in
/// float64 (tied logits have equal weights, so no sum depends on the order among them). Without
/// `top_k`, only the keys whose weights can move a sum are ranked ([`NEGLIGIBLE`]): the rest
/// come after them in the order and leave every sum, and so every draw, as a full ranking gives.
#[derive(Debug)]
struct Weights {
    ranked: Vec<u32>,
    weights: Vec<f64>,
    /// Positions in the order: `ranked`'s, or every logit's when the negligible ones were left
    /// out.
    positions: usize,
    kept: usize,
    kept_total: f64,
}

impl Weights {
    fn new(logits: &[f32], sampling: &Sampling) -> Result<Self> {
        if logits.iter().any(|v| v.is_nan()) {
            return Err(nan_logits());
        }
        let t = f64::from(sampling.temperature);
        let top_k = sampling.top_k > 0 && sampling.top_k < logits.len();
        let largest = logits.iter().map(|&v| rank_key(v)).min().ok_or_else(|| Error::engine("decoder", "no logits"))?;
        let max = f64::from(logit_of(largest));
        let (ranked, positions) = if top_k || !max.is_finite() {
            let ranked = ranked(logits, sampling.top_k);
            let positions = ranked.len();
            (ranked, positions)
        } else {
            let mut keys: Vec<u32> =
                logits.iter().filter(|&&v| (f64::from(v) - max) / t >= NEGLIGIBLE).map(|&v| rank_key(v)).collect();
            if keys.len() > RADIX_FROM {
                keys = radix_sort(keys);
            } else {
                keys.sort_unstable();
            }
            (keys, logits.len())
        };
        let mut weights: Vec<f64> = ranked.iter().map(|&key| (f64::from(logit_of(key)) - max) / t).collect();
        exp_below_zero_in_place(&mut weights, Isa::detect());
        let total = weights.iter().fold(0.0, |sum, w| sum + w);
        let mut kept = positions;
        if sampling.top_p > 0.0 && sampling.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, w) in weights.iter().enumerate() {
                acc += w / total;
                if acc >= f64::from(sampling.top_p) {
                    kept = i + 1;
                    break;
                }
            }
        }
        let kept_total = match kept >= weights.len() {
            true => total,
            false => weights[..kept].iter().fold(0.0, |sum, w| sum + w),
        };
        Ok(Weights { ranked, weights, positions, kept, kept_total })
    }

    /// The position drawn at step `step` of the ChaCha20 stream seeded with `seed`.
    fn draw(&self, seed: u64, step: u64) -> usize {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        rng.set_stream(step);
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * self.kept_total;
        let mut acc = 0.0;
        for (i, w) in self.weights[..self.kept.min(self.weights.len())].iter().enumerate() {
            acc += w;
            if u < acc {
                return i;
            }
        }
        self.kept - 1
    }

    /// The token at position `i` of the logit order (ties by lower id): of the tokens whose
    /// logit has the key at `i`, the one whose rank by id is `i`'s distance from the key's first
    /// position. Past the ranked keys (a draw that passed every weight) only the last position
    /// can come: the last id of the smallest logit.
    fn token_at(&self, logits: &[f32], i: usize) -> u32 {
        if i >= self.ranked.len() {
            debug_assert_eq!(i, self.positions - 1);
            let smallest = logits.iter().map(|&v| rank_key(v)).max();
            let id = logits.iter().rposition(|&v| Some(rank_key(v)) == smallest);
            return id.expect("some logit is the smallest") as u32;
        }
        let key = self.ranked[i];
        let rank = i - self.ranked.partition_point(|&k| k < key);
        let id = logits.iter().enumerate().filter(|&(_, &v)| rank_key(v) == key).nth(rank).map(|(id, _)| id);
        id.expect("a ranked key is some logit's") as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_first_of_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]).unwrap(), 1);
        assert!(argmax(&[1.0, f32::NAN]).is_err());
    }

    #[test]
    fn sampling_is_a_function_of_seed_and_step() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37 % 11) as f32) * 0.3).collect();
        let s = Sampling { temperature: 1.0, top_k: 0, top_p: 0.0 };
        let a: Vec<u32> = (0..50).map(|step| select(&logits, &s, 7, step).unwrap()).collect();
        let b: Vec<u32> = (0..50).rev().map(|step| select(&logits, &s, 7, step).unwrap()).collect();
        assert_eq!(a, b.into_iter().rev().collect::<Vec<_>>());
        let c: Vec<u32> = (0..50).map(|step| select(&logits, &s, 8, step).unwrap()).collect();
        assert_ne!(a, c, "another seed should draw differently");
    }

    #[test]
    fn the_logit_order_is_total_cmp_descending_with_ties_by_id() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        for round in 0..50 {
            // Few distinct values (many ties), both zeros, infinities, subnormals.
            let pool = [0.0, -0.0, 1.5, -1.5, f32::INFINITY, f32::NEG_INFINITY, 1e-42, -1e-42, 7.25, -3.0];
            let logits: Vec<f32> = (0..500 + round)
                .map(|_| {
                    let r = rng.next_u32();
                    if r % 3 == 0 {
                        pool[(r as usize / 3) % pool.len()]
                    } else {
                        (r as f32 / u32::MAX as f32 - 0.5) * 40.0
                    }
                })
                .collect();
            let mut expected: Vec<u32> = (0..logits.len() as u32).collect();
            expected.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
            assert_eq!(by_logit(&logits, 0), expected);
            for k in [1, 7, 40, logits.len()] {
                assert_eq!(by_logit(&logits, k), expected[..k]);
            }
        }
    }

    /// The sampler as first written (but for `exp`: the C library's then, ours, one value at a
    /// time, now): ids ordered by comparing the logits, the weights collected, then summed by
    /// `Iterator::sum`. Returns the kept weights, their sum, and the draw of step
    /// 0 for each of `seeds`.
    fn sampler_as_first_written(logits: &[f32], sampling: &Sampling, seeds: &[u64]) -> (Vec<f64>, f64, Vec<u32>) {
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
        if sampling.top_k > 0 {
            order.truncate(sampling.top_k);
        }
        let t = f64::from(sampling.temperature);
        let max = f64::from(logits[order[0] as usize]);
        let exp = crate::engine::kernels::exp::exp_below_zero;
        let weights: Vec<f64> = order.iter().map(|&i| exp((f64::from(logits[i as usize]) - max) / t)).collect();
        let total: f64 = weights.iter().sum();
        let mut keep = weights.len();
        if sampling.top_p > 0.0 && sampling.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, w) in weights.iter().enumerate() {
                acc += w / total;
                if acc >= f64::from(sampling.top_p) {
                    keep = i + 1;
                    break;
                }
            }
        }
        let kept_total: f64 = weights[..keep].iter().sum();
        let draw = |seed: u64| {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            rng.set_stream(0);
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * kept_total;
            let mut acc = 0.0;
            for (i, w) in weights[..keep].iter().enumerate() {
                acc += w;
                if u < acc {
                    return order[i];
                }
            }
            order[keep - 1]
        };
        (weights[..keep].to_vec(), kept_total, seeds.iter().map(|&seed| draw(seed)).collect())
    }

    #[test]
    fn sampling_weighs_as_the_first_sampler_did() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        for round in 0..36 {
            // A vocabulary's size and spread of logits, with runs of ties (rounded to 1/8), or a
            // small one with a few values; some with −∞ logits (a masked vocabulary).
            let (n, scale) = if round % 3 == 0 { (37 + round, 4.0) } else { (49_152, 30.0) };
            let mut logits: Vec<f32> = (0..n)
                .map(|_| {
                    let v = (rng.next_u32() as f32 / u32::MAX as f32 - 0.8) * scale;
                    if round % 2 == 0 {
                        (v * 8.0).round() / 8.0
                    } else {
                        v
                    }
                })
                .collect();
            if round % 7 == 3 {
                logits.iter_mut().step_by(3).for_each(|v| *v = f32::NEG_INFINITY);
            }
            let sampling = Sampling {
                temperature: [0.3, 0.8, 1.0, 2.5, 100.0][round % 5] as f32,
                top_k: [0, 0, 50, 1][round % 4] * usize::from(round % 5 != 0),
                top_p: [0.0, 0.95, 0.5, 1.0, 0.999, 1.0 - 1e-12][round % 6],
            };
            let seeds: Vec<u64> = (0..64).map(|_| rng.next_u64()).collect();
            let (weights, kept_total, draws) = sampler_as_first_written(&logits, &sampling, &seeds);
            let ours = Weights::new(&logits, &sampling).unwrap();
            // The same kept positions; the weights ranked are the first ones, and those left out
            // are all negligible.
            assert_eq!(ours.kept, weights.len(), "round {round}");
            let ranked = ours.weights.len().min(ours.kept);
            let bits = |w: &[f64], total: f64| (total.to_bits(), w.iter().map(|w| w.to_bits()).collect::<Vec<_>>());
            assert_eq!(
                bits(&ours.weights[..ranked], ours.kept_total),
                bits(&weights[..ranked], kept_total),
                "round {round}"
            );
            assert!(weights[ranked..].iter().all(|&w| w < NEGLIGIBLE.exp() * 1.01), "round {round}");
            let ours: Vec<u32> = seeds.iter().map(|&seed| select(&logits, &sampling, seed, 0).unwrap()).collect();
            assert_eq!(ours, draws, "round {round}");
        }
        let mut with_nan = vec![0.5f32; 100];
        with_nan[60] = -f32::NAN;
        assert!(select(&with_nan, &Sampling { temperature: 1.0, top_k: 0, top_p: 0.0 }, 1, 0).is_err());
    }

    #[test]
    fn a_draw_past_every_kept_weight_is_the_last_position_of_the_order() {
        // The draw's fallback (a uniform rounded up to the kept total): with the negligible
        // weights left out, the last position still names the smallest logit's last id.
        let logits = [0.5, -30.0, 2.0, -30.0, 1.0, -29.0];
        let sampling = Sampling { temperature: 0.5, top_k: 0, top_p: 0.0 };
        let weights = Weights::new(&logits, &sampling).unwrap();
        assert_eq!((weights.ranked.len(), weights.positions, weights.kept), (3, 6, 6));
        assert_eq!(weights.token_at(&logits, 5), *by_logit(&logits, 0).last().unwrap());
        assert_eq!(weights.token_at(&logits, 5), 3);
    }

    #[test]
    fn a_rank_key_gives_back_its_logit() {
        let specials =
            [0.0, -0.0, 1e-42, -1e-42, f32::MIN_POSITIVE, f32::MAX, f32::MIN, f32::INFINITY, f32::NEG_INFINITY];
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        for v in specials.into_iter().chain((0..10_000).map(|_| f32::from_bits(rng.next_u32())).filter(|v| !v.is_nan()))
        {
            assert_eq!(logit_of(rank_key(v)).to_bits(), v.to_bits(), "{v}");
        }
    }

    #[test]
    fn top_k_one_is_greedy() {
        let logits = [0.1, 2.0, 1.9, 0.0];
        let s = Sampling { temperature: 5.0, top_k: 1, top_p: 0.0 };
        for step in 0..20 {
            assert_eq!(select(&logits, &s, 1, step).unwrap(), 1);
        }
    }

    #[test]
    fn bad_parameters_are_rejected() {
        assert!(Sampling { temperature: -1.0, ..Default::default() }.validate().is_err());
        assert!(Sampling { top_p: 1.5, ..Default::default() }.validate().is_err());
    }
}
