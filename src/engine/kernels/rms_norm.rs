//! The residual add and RMS norm of a Llama layer, ONNX Runtime's
//! `SkipSimplifiedLayerNormalization` (no bias): per row, `sum = input + skip`, then
//! `out = sum · (1 / sqrt(Σ sum² / width + epsilon)) · gamma`. The squares are summed in 16 lanes
//! (lane `l` takes elements `l, l + 16, ...`) reduced by one fixed tree, so a row's bits depend on
//! its own values only; the code is plain Rust compiled once (no instruction-set paths), so the
//! bits are the same everywhere. A row is a few hundred to a few thousand values: the whole call
//! runs on the calling thread (a hand-off to other threads would cost more than the work).

use super::int4_layout::{check_len, KernelError};

/// The lanes of the sum of squares.
const LANES: usize = 16;

/// One call's rows: `input`, `skip` and the outputs `[rows, width]`, `gamma` `[width]`.
pub struct SkipRmsNorm<'a> {
    /// The layer's output (a product's).
    pub input: &'a [f32],
    /// The residual stream.
    pub skip: &'a [f32],
    /// The norm's gain.
    pub gamma: &'a [f32],
    /// Added to the mean square.
    pub epsilon: f32,
}

impl SkipRmsNorm<'_> {
    /// Writes each row's norm into `out` and, given, its `input + skip` into `sum`.
    pub fn run(&self, out: &mut [f32], mut sum: Option<&mut [f32]>) -> Result<(), KernelError> {
        let width = self.gamma.len();
        if width == 0 {
            return Err(KernelError::Length { what: "gamma", got: 0, want: 1 });
        }
        let rows = self.input.len() / width;
        check_len("input", self.input.len(), rows * width)?;
        check_len("skip", self.skip.len(), rows * width)?;
        check_len("output", out.len(), rows * width)?;
        if let Some(sum) = &sum {
            check_len("input_skip_bias_sum", sum.len(), rows * width)?;
        }
        let mut row_sum = vec![0f32; width];
        for row in 0..rows {
            let span = row * width..(row + 1) * width;
            for ((s, x), k) in row_sum.iter_mut().zip(&self.input[span.clone()]).zip(&self.skip[span.clone()]) {
                *s = x + k;
            }
            let inverse = 1.0 / (mean_square(&row_sum) + self.epsilon).sqrt();
            for ((o, s), g) in out[span.clone()].iter_mut().zip(&row_sum).zip(self.gamma) {
                *o = s * inverse * g;
            }
            if let Some(sum) = sum.as_deref_mut() {
                sum[span].copy_from_slice(&row_sum);
            }
        }
        Ok(())
    }
}

/// `Σ x² / len`, the squares summed in [`LANES`] lanes, then halves added lane-wise (16 -> 8 -> 4
/// -> 2 -> 1).
fn mean_square(x: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for chunk in &mut chunks {
        for l in 0..LANES {
            lanes[l] += chunk[l] * chunk[l];
        }
    }
    for (lane, v) in lanes.iter_mut().zip(chunks.remainder()) {
        *lane += v * v;
    }
    let mut n = LANES;
    while n > 1 {
        n /= 2;
        for l in 0..n {
            lanes[l] += lanes[l + n];
        }
    }
    lanes[0] / x.len() as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kernels::test_values as values;

    #[test]
    fn rows_match_a_float64_reference() {
        for (rows, width, scale) in [(1, 576, 1.0), (3, 17, 30.0), (17, 1536, 0.01), (2, 16, 1.0)] {
            let (input, skip) = (values(1, rows * width, scale), values(2, rows * width, scale));
            let gamma = values(3, width, 2.0);
            let norm = SkipRmsNorm { input: &input, skip: &skip, gamma: &gamma, epsilon: 1e-5 };
            let (mut out, mut sum) = (vec![f32::NAN; rows * width], vec![f32::NAN; rows * width]);
            norm.run(&mut out, Some(&mut sum)).unwrap();
            for row in 0..rows {
                let s: Vec<f64> =
                    (0..width).map(|i| input[row * width + i] as f64 + skip[row * width + i] as f64).collect();
                let inverse = 1.0 / (s.iter().map(|v| v * v).sum::<f64>() / width as f64 + 1e-5).sqrt();
                for i in 0..width {
                    let want = s[i] * inverse * gamma[i] as f64;
                    let got = out[row * width + i] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                        "{rows}x{width} [{row}, {i}]: {got} vs {want}"
                    );
                    assert_eq!(sum[row * width + i], input[row * width + i] + skip[row * width + i]);
                }
            }
        }
    }

    #[test]
    fn a_row_gets_the_same_bits_alone_as_in_any_batch() {
        let (rows, width) = (17, 576);
        let (input, skip, gamma) = (values(4, rows * width, 3.0), values(5, rows * width, 3.0), values(6, width, 1.0));
        let mut all = vec![0f32; rows * width];
        SkipRmsNorm { input: &input, skip: &skip, gamma: &gamma, epsilon: 1e-5 }.run(&mut all, None).unwrap();
        for row in 0..rows {
            let span = row * width..(row + 1) * width;
            let mut alone = vec![0f32; width];
            let norm =
                SkipRmsNorm { input: &input[span.clone()], skip: &skip[span.clone()], gamma: &gamma, epsilon: 1e-5 };
            norm.run(&mut alone, None).unwrap();
            assert!(alone == all[span], "row {row}");
        }
    }

    #[test]
    fn lengths_that_do_not_fit_are_refused() {
        let (x, gamma) = (vec![1f32; 10], vec![1f32; 4]);
        let norm = SkipRmsNorm { input: &x, skip: &x, gamma: &gamma, epsilon: 1e-5 };
        let err = norm.run(&mut [0f32; 10], None).unwrap_err();
        assert_eq!(err, KernelError::Length { what: "input", got: 10, want: 8 });
        let norm = SkipRmsNorm { input: &x[..8], skip: &x, gamma: &gamma, epsilon: 1e-5 };
        assert_eq!(norm.run(&mut [0f32; 8], None).unwrap_err(), KernelError::Length { what: "skip", got: 10, want: 8 });
    }
}
