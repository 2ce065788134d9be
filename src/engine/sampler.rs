//! Token selection: greedy argmax, or seeded sampling from a counter-based RNG so that the draw at
//! step `n` is a pure function of `(seed, n)`.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

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
            return Err(Error::engine("decoder", "the model produced NaN logits"));
        }
        if v > logits[best] {
            best = i;
        }
    }
    Ok(best as u32)
}

/// Token ids by logit, largest first, ties by lower id (the order of `f32::total_cmp`); only the
/// first `top_k` when it is not 0. Sorts packed integer keys (logit order, id) instead of comparing
/// through the logits: the top k are selected and sorted; a whole vocabulary is radix-sorted.
pub(crate) fn by_logit(logits: &[f32], top_k: usize) -> Vec<u32> {
    let mut keys: Vec<u64> = logits
        .iter()
        .enumerate()
        .map(|(id, &v)| {
            // The bits of `v` as an unsigned integer that orders like `total_cmp`.
            let bits = v.to_bits();
            let ascending = if bits >> 31 == 1 { !bits } else { bits | 0x8000_0000 };
            (u64::from(!ascending) << 32) | id as u64
        })
        .collect();
    if top_k > 0 && top_k < keys.len() {
        keys.select_nth_unstable(top_k - 1);
        keys.truncate(top_k);
        keys.sort_unstable();
    } else {
        radix_sort_by_high_half(&mut keys);
    }
    keys.into_iter().map(|k| k as u32).collect()
}

/// Sorts keys whose low 32 bits (the id) already ascend by their high 32 bits, stably: four
/// passes of a byte-wise least-significant-digit radix sort. Equal to sorting the whole keys.
fn radix_sort_by_high_half(keys: &mut Vec<u64>) {
    let mut scratch = vec![0u64; keys.len()];
    for byte in 4..8 {
        let shift = byte * 8;
        let mut starts = [0usize; 257];
        for k in keys.iter() {
            starts[((k >> shift) & 0xff) as usize + 1] += 1;
        }
        if starts[1..].contains(&keys.len()) {
            continue; // every key has the same byte here
        }
        for i in 1..257 {
            starts[i] += starts[i - 1];
        }
        for &k in keys.iter() {
            let bucket = ((k >> shift) & 0xff) as usize;
            scratch[starts[bucket]] = k;
            starts[bucket] += 1;
        }
        std::mem::swap(keys, &mut scratch);
    }
}

/// Picks the next token for decoding step `step` of a request seeded with `seed`.
pub fn select(logits: &[f32], sampling: &Sampling, seed: u64, step: u64) -> Result<u32> {
    if sampling.is_greedy() {
        return argmax(logits);
    }
    argmax(logits)?; // rejects NaN
    let order = by_logit(logits, sampling.top_k);
    let t = f64::from(sampling.temperature);
    let max = f64::from(logits[order[0] as usize]);
    let weights: Vec<f64> = order.iter().map(|&i| ((f64::from(logits[i as usize]) - max) / t).exp()).collect();
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
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    rng.set_stream(step);
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * kept_total;
    let mut acc = 0.0;
    for (i, w) in weights[..keep].iter().enumerate() {
        acc += w;
        if u < acc {
            return Ok(order[i]);
        }
    }
    Ok(order[keep - 1])
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
