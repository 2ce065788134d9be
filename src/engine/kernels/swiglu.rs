//! A Llama layer's gated activation, what the graph's `Split`, `Sigmoid` and two `Mul`s compute
//! from the gate/up product: `out = silu(gate) · up` with `silu(g) = g · σ(g)`, `gate` the first
//! half of each row and `up` the second. `σ(g) = 1 / (1 + e^-|g|)` for `g >= 0` and
//! `e^-|g| / (1 + e^-|g|)` below, with attention's `exp` (0 below -30, where `σ` rounds to 0 or 1
//! anyway); the products in that order. Element by element, in 16-lane loops compiled for each
//! instruction set with only operations that round the same on every path, so a value's bits
//! depend on its own gate and up only. The call runs on the calling thread (a row of a small
//! model's layer is a few thousand values).

use super::attention::{exp_weight, on_isa};
use super::attention_x86::{HeadDot, WithDot};
use super::int4_layout::{check_len, KernelError};
use super::int4_matmul::Isa;

/// The lanes of the element loop.
const LANES: usize = 16;

/// `out [rows, width] = silu(gate) · up` of `gate_up [rows, 2 · width]`, on `isa` (which the
/// caller has checked the CPU has).
pub fn swiglu(gate_up: &[f32], width: usize, out: &mut [f32], isa: Isa) -> Result<(), KernelError> {
    if width == 0 {
        return Err(KernelError::Length { what: "gate_up's last dimension", got: 0, want: 2 });
    }
    let rows = gate_up.len() / (2 * width);
    check_len("gate_up", gate_up.len(), rows * 2 * width)?;
    check_len("output", out.len(), rows * width)?;
    on_isa(isa, Rows { gate_up, width, out });
    Ok(())
}

/// Every row of a call.
struct Rows<'a> {
    gate_up: &'a [f32],
    width: usize,
    out: &'a mut [f32],
}

impl WithDot for Rows<'_> {
    #[inline(always)]
    fn run(self, _: &impl HeadDot) {
        for (row, out) in self.gate_up.chunks_exact(2 * self.width).zip(self.out.chunks_exact_mut(self.width)) {
            let (gate, up) = row.split_at(self.width);
            let mut outs = out.chunks_exact_mut(LANES);
            let (mut gates, mut ups) = (gate.chunks_exact(LANES), up.chunks_exact(LANES));
            for ((out, g), u) in (&mut outs).zip(&mut gates).zip(&mut ups) {
                for l in 0..LANES {
                    out[l] = silu_times(g[l], u[l]);
                }
            }
            let rest = outs.into_remainder().iter_mut().zip(gates.remainder().iter().zip(ups.remainder()));
            for (out, (&g, &u)) in rest {
                *out = silu_times(g, u);
            }
        }
    }
}

/// `g · σ(g) · up`.
#[inline(always)]
fn silu_times(g: f32, up: f32) -> f32 {
    let e = exp_weight(-g.abs());
    let sigma = if g >= 0.0 { 1.0 } else { e } / (1.0 + e);
    g * sigma * up
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kernels::test_values as values;

    const PATHS: [Isa; 3] = [Isa::Avx512Vnni, Isa::Avx2, Isa::Portable];

    #[test]
    fn every_path_gives_the_same_bits_close_to_a_float64_reference() {
        for (rows, width, scale) in [(1, 1536, 8.0), (17, 40, 40.0), (3, 7, 1.0), (2, 16, 0.001)] {
            let gate_up = values(rows as u64, rows * 2 * width, scale);
            let mut want = vec![f32::NAN; rows * width];
            swiglu(&gate_up, width, &mut want, Isa::Portable).unwrap();
            for row in 0..rows {
                for i in 0..width {
                    let (g, u) = (gate_up[row * 2 * width + i] as f64, gate_up[row * 2 * width + width + i] as f64);
                    let reference = g / (1.0 + (-g).exp()) * u;
                    let got = want[row * width + i] as f64;
                    // exp within 2 ulps, then three roundings; a gate below -30 gives 0 (|g e^g| < 3e-12).
                    let bound = 1e-6 * reference.abs() + 3e-12 * u.abs();
                    assert!((got - reference).abs() <= bound, "silu({g}) * {u}: {got} vs {reference}");
                }
            }
            for isa in PATHS.into_iter().filter(|i| i.available()) {
                let mut got = vec![f32::NAN; rows * width];
                swiglu(&gate_up, width, &mut got, isa).unwrap();
                assert!(got == want, "{isa:?} {rows}x{width}: other bits");
            }
        }
    }

    #[test]
    fn shapes_that_do_not_fit_are_refused() {
        let err = swiglu(&[0.0; 10], 3, &mut [0.0; 3], Isa::Portable).unwrap_err();
        assert_eq!(err, KernelError::Length { what: "gate_up", got: 10, want: 6 });
        let err = swiglu(&[0.0; 12], 3, &mut [0.0; 3], Isa::Portable).unwrap_err();
        assert_eq!(err, KernelError::Length { what: "output", got: 3, want: 6 });
    }
}
