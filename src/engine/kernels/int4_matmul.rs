//! The int4 x int8 matrix product of a decode step: `y = x · Wᵀ` for a few rows `x` (f32,
//! quantized here to int8 per block of 32) and a weight matrix `W` held as ONNX Runtime's
//! `MatMulNBits` holds it (4-bit, blocks of 32 along K, a scale and a zero point per block).
//!
//! Weight stationary: each block of 16 columns x 32 weights is unpacked once (less its zero
//! point) and used for every row. Integer sums are exact, `Σ q·(w − zp)`, whichever instructions
//! form them (AVX-512 VNNI, AVX2, or plain Rust); the float epilogue is the same for every path,
//! per row and column, in block order: `acc = fma(dot, s_w · s_x, acc)`. So the three paths give the same bits, a row
//! gives the same bits alone or in any batch, and any split of the columns over threads gives the
//! same bits.
//!
//! Not on AMX: its `tdpbsud` (tried on a Xeon with AMX-INT8: a block's sums for 16 rows x 16
//! columns in one instruction, stored to memory for the same epilogue) gave the same bits but a
//! slower step than `vpdpbusd` (16 rows 15.1 vs 13.6 ms in the kernel bench): with a scale per
//! block of 32, the float epilogue and the tile store and reload between blocks dominate.

use super::int4_layout::{check_len, quantize_into, TileView, TILE_BLOCK_BYTES};
pub use super::int4_layout::{KernelError, ParallelFor, QuantizedRows, Serial, BLOCK, TILE};
use super::int4_matmul_x86 as x86;

/// The instructions a product runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 F/BW with VNNI (`vpdpbusd` on 16 columns at once).
    Avx512Vnni,
    /// AVX2 with FMA and F16C (`vpmaddubsw` then `vpmaddwd`, 8 columns at once).
    Avx2,
    /// Plain Rust, one column at a time.
    Portable,
}

impl Isa {
    /// The fastest path this CPU has, detected at run time.
    pub fn detect() -> Isa {
        if x86::has_avx512_vnni() {
            Isa::Avx512Vnni
        } else if x86::has_avx2() {
            Isa::Avx2
        } else {
            Isa::Portable
        }
    }

    /// Whether this CPU can run the path.
    pub fn available(self) -> bool {
        match self {
            Isa::Avx512Vnni => x86::has_avx512_vnni(),
            Isa::Avx2 => x86::has_avx2(),
            Isa::Portable => true,
        }
    }
}

/// `x` `[rows, k]` quantized on `isa` (which must be [`Isa::available`]): the bits of
/// [`QuantizedRows::new`], faster.
pub fn quantize(x: &[f32], rows: usize, k: usize, isa: Isa) -> Result<QuantizedRows, KernelError> {
    let mut quantized = QuantizedRows::default();
    requantize(&mut quantized, x, rows, k, isa, &Serial)?;
    Ok(quantized)
}

/// As [`quantize`], into `into`'s buffers (no allocation once they are large enough), the rows
/// split over `parallel`'s threads.
pub fn requantize(
    into: &mut QuantizedRows,
    x: &[f32],
    rows: usize,
    k: usize,
    isa: Isa,
    parallel: &dyn ParallelFor,
) -> Result<(), KernelError> {
    match isa {
        Isa::Avx512Vnni => into.refill(x, rows, k, x86::quantize_avx512, parallel),
        Isa::Avx2 => into.refill(x, rows, k, x86::quantize_avx2, parallel),
        Isa::Portable => into.refill(x, rows, k, quantize_into, parallel),
    }
}

/// A weight matrix `[N, K]` repacked for the kernel: per tile of 16 columns and block of 32
/// along K, 256 bytes in four 64-byte chunks; chunk `c`'s byte `4j + p` holds column `j`'s weight
/// `8c + p` in its low nibble and `8c + 4 + p` in its high one (so that one 32-bit lane holds four
/// consecutive weights of one column, as `vpdpbusd` takes them). Columns past N are zero.
pub struct Int4Matrix {
    k: usize,
    n: usize,
    packed: Vec<u8>,
    /// Per tile and block, 16 weight scales.
    scales: Vec<f32>,
    /// Per tile and block, 16 zero points (0-15).
    zero_points: Vec<u8>,
}

impl Int4Matrix {
    /// `MatMulNBits`' initializers (`bits` 4, `block_size` 32): `qweight` `[N, K/32, 16]` (two
    /// weights a byte, the even one low), `scales` `[N, K/32]`, `zero_points` `[N, ceil(K/64)]`
    /// (two blocks a byte, the even one low) or none (8 each).
    pub fn from_matmul_nbits(
        k: usize,
        n: usize,
        qweight: &[u8],
        scales: &[f32],
        zero_points: Option<&[u8]>,
    ) -> Result<Self, KernelError> {
        if !k.is_multiple_of(BLOCK) {
            return Err(KernelError::UnevenK(k));
        }
        let blocks = k / BLOCK;
        check_len("qweight", qweight.len(), n * blocks * BLOCK / 2)?;
        check_len("scales", scales.len(), n * blocks)?;
        let zp_stride = blocks.div_ceil(2);
        if let Some(zp) = zero_points {
            check_len("zero_points", zp.len(), n * zp_stride)?;
        }
        let weight = |col: usize, kk: usize| {
            let byte = qweight[col * k / 2 + kk / 2];
            if kk.is_multiple_of(2) {
                byte & 0x0f
            } else {
                byte >> 4
            }
        };
        let zero_point = |col: usize, block: usize| match zero_points {
            Some(zp) => {
                let byte = zp[col * zp_stride + block / 2];
                if block.is_multiple_of(2) {
                    byte & 0x0f
                } else {
                    byte >> 4
                }
            }
            None => 8,
        };
        let tiles = n.div_ceil(TILE);
        let mut packed = vec![0u8; tiles * blocks * TILE_BLOCK_BYTES];
        let mut tile_scales = vec![0f32; tiles * blocks * TILE];
        let mut tile_zero_points = vec![0u8; tiles * blocks * TILE];
        for tile in 0..tiles {
            for block in 0..blocks {
                let at = tile * blocks + block;
                let bytes = &mut packed[at * TILE_BLOCK_BYTES..(at + 1) * TILE_BLOCK_BYTES];
                for lane in 0..TILE.min(n - tile * TILE) {
                    let col = tile * TILE + lane;
                    tile_scales[at * TILE + lane] = scales[col * blocks + block];
                    tile_zero_points[at * TILE + lane] = zero_point(col, block);
                    for chunk in 0..4 {
                        for p in 0..4 {
                            let low = weight(col, block * BLOCK + 8 * chunk + p);
                            let high = weight(col, block * BLOCK + 8 * chunk + 4 + p);
                            bytes[chunk * 64 + 4 * lane + p] = low | (high << 4);
                        }
                    }
                }
            }
        }
        Ok(Int4Matrix { k, n, packed, scales: tile_scales, zero_points: tile_zero_points })
    }

    /// K, the input width.
    pub fn k(&self) -> usize {
        self.k
    }

    /// N, the output width.
    pub fn n(&self) -> usize {
        self.n
    }

    fn blocks(&self) -> usize {
        self.k / BLOCK
    }

    /// `out` `[rows, N]` = `x` · Wᵀ on `isa` (which must be [`Isa::available`]), the column
    /// tiles split over `parallel`'s threads.
    pub fn matmul(
        &self,
        x: &QuantizedRows,
        out: &mut [f32],
        isa: Isa,
        parallel: &dyn ParallelFor,
    ) -> Result<(), KernelError> {
        check_len("x's row width", x.k, self.k)?;
        check_len("out", out.len(), x.rows * self.n)?;
        assert!(isa.available(), "{isa:?} is not available on this CPU");
        x86::split_columns(out, x.rows, self.n, parallel, |writer| self.tiles_into(x, writer, isa));
        Ok(())
    }

    /// The columns of the writer's tiles.
    fn tiles_into(&self, x: &QuantizedRows, mut out: x86::ColumnWriter, isa: Isa) {
        let blocks = self.blocks();
        let mut acc = vec![0f32; if isa == Isa::Avx512Vnni { 0 } else { x.rows * TILE }];
        for tile in out.tiles() {
            let (first, end) = (tile * blocks, (tile + 1) * blocks);
            let view = TileView {
                packed: &self.packed[first * TILE_BLOCK_BYTES..end * TILE_BLOCK_BYTES],
                scales: &self.scales[first * TILE..end * TILE],
                zero_points: &self.zero_points[first * TILE..end * TILE],
            };
            if isa == Isa::Avx512Vnni {
                x86::tile_avx512_vnni(&view, x, tile, &mut out);
                continue;
            }
            acc.fill(0.0);
            match isa {
                Isa::Avx2 => x86::tile_avx2(&view, x, &mut acc),
                _ => tile_portable(&view, x, &mut acc),
            }
            for (row, values) in acc.chunks_exact(TILE).enumerate() {
                out.write(row, tile, values.try_into().expect("TILE values"));
            }
        }
    }
}

/// One tile in plain Rust: the reference the vector paths must match bit for bit.
fn tile_portable(tile: &TileView, x: &QuantizedRows, acc: &mut [f32]) {
    let blocks = x.k / BLOCK;
    for block in 0..blocks {
        let bytes = &tile.packed[block * TILE_BLOCK_BYTES..(block + 1) * TILE_BLOCK_BYTES];
        for row in 0..x.rows {
            let q = &x.q[row * x.k + block * BLOCK..][..BLOCK];
            let q = |i: usize| i32::from(q[i]);
            let scale = x.scales[row * blocks + block];
            for lane in 0..TILE {
                let zero_point = i32::from(tile.zero_points[block * TILE + lane]);
                let mut dot = 0i32;
                for chunk in 0..4 {
                    for p in 0..4 {
                        let byte = bytes[chunk * 64 + 4 * lane + p];
                        dot += (i32::from(byte & 0x0f) - zero_point) * q(8 * chunk + p);
                        dot += (i32::from(byte >> 4) - zero_point) * q(8 * chunk + 4 + p);
                    }
                }
                let a = &mut acc[row * TILE + lane];
                *a = (dot as f32).mul_add(tile.scales[block * TILE + lane] * scale, *a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};

    fn uniform(rng: &mut ChaCha8Rng, low: f32, high: f32) -> f32 {
        low + (high - low) * (rng.next_u32() >> 8) as f32 / (1 << 24) as f32
    }

    /// A random `MatMulNBits` matrix: (qweight, scales, zero points).
    fn random_weights(rng: &mut ChaCha8Rng, k: usize, n: usize) -> (Vec<u8>, Vec<f32>, Vec<u8>) {
        let blocks = k / BLOCK;
        let qweight = (0..n * k / 2).map(|_| rng.next_u32() as u8).collect();
        let scales = (0..n * blocks).map(|_| uniform(rng, 0.001, 0.05)).collect();
        let zero_points = (0..n * blocks.div_ceil(2)).map(|_| rng.next_u32() as u8).collect();
        (qweight, scales, zero_points)
    }

    fn random_rows(rng: &mut ChaCha8Rng, rows: usize, k: usize) -> Vec<f32> {
        (0..rows * k).map(|_| uniform(rng, -3.0, 3.0)).collect()
    }

    /// `x · Wᵀ` in f64 from the unpacked weights and the unquantized rows.
    fn reference(k: usize, n: usize, (qw, sc, zp): &(Vec<u8>, Vec<f32>, Vec<u8>), x: &[f32], rows: usize) -> Vec<f64> {
        let blocks = k / BLOCK;
        let mut out = vec![0f64; rows * n];
        for col in 0..n {
            for kk in 0..k {
                let byte = qw[col * k / 2 + kk / 2];
                let w = if kk.is_multiple_of(2) { byte & 0x0f } else { byte >> 4 };
                let block = kk / BLOCK;
                let zb = zp[col * blocks.div_ceil(2) + block / 2];
                let z = if block.is_multiple_of(2) { zb & 0x0f } else { zb >> 4 };
                let weight = (f64::from(w) - f64::from(z)) * f64::from(sc[col * blocks + block]);
                for row in 0..rows {
                    out[row * n + col] += weight * f64::from(x[row * k + kk]);
                }
            }
        }
        out
    }

    /// Scoped threads, one per task (the tests' runner).
    struct Spawned(usize);

    impl ParallelFor for Spawned {
        fn threads(&self) -> usize {
            self.0
        }

        fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
            std::thread::scope(|scope| {
                for i in 0..tasks {
                    scope.spawn(move || task(i));
                }
            });
        }
    }

    fn product(m: &Int4Matrix, x: &[f32], rows: usize, isa: Isa, threads: usize) -> Vec<f32> {
        let q = quantize(x, rows, m.k(), isa).unwrap();
        let mut out = vec![f32::NAN; rows * m.n()];
        m.matmul(&q, &mut out, isa, &Spawned(threads)).unwrap();
        out
    }

    fn paths() -> Vec<Isa> {
        [Isa::Avx512Vnni, Isa::Avx2, Isa::Portable].into_iter().filter(|i| i.available()).collect()
    }

    #[test]
    fn every_path_matches_the_float64_reference_within_the_quantization_error() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (k, n, rows) = (256, 40, 3);
        let w = random_weights(&mut rng, k, n);
        let m = Int4Matrix::from_matmul_nbits(k, n, &w.0, &w.1, Some(&w.2)).unwrap();
        let x = random_rows(&mut rng, rows, k);
        let want = reference(k, n, &w, &x, rows);
        let scale = want.iter().fold(0f64, |a, v| a.max(v.abs()));
        for isa in paths() {
            let got = product(&m, &x, rows, isa, 1);
            let worst = got.iter().zip(&want).map(|(g, w)| (f64::from(*g) - w).abs()).fold(0f64, f64::max);
            // int8 activations: each product is off by at most half a step (max|x| / 254) times
            // |w - zp| <= 15 times the weight scale; the sums here stay within 1% of the largest
            // output.
            assert!(worst < 0.01 * scale, "{isa:?}: worst error {worst} against outputs up to {scale}");
        }
    }

    /// Per output, the most the kernel may differ from the float64 product: each activation is
    /// off by at most half its block's step (`max|x| / 127 / 2`), times `|w − zp| · s_w`; plus
    /// 1e-5 of the sum of |terms| for the f32 epilogue.
    fn bound(k: usize, n: usize, (qw, sc, zp): &(Vec<u8>, Vec<f32>, Vec<u8>), x: &[f32], rows: usize) -> Vec<f64> {
        let blocks = k / BLOCK;
        let mut out = vec![0f64; rows * n];
        for row in 0..rows {
            for block in 0..blocks {
                let values = &x[row * k + block * BLOCK..][..BLOCK];
                let step = f64::from(values.iter().fold(0f32, |m, v| m.max(v.abs()))) / 127.0;
                for col in 0..n {
                    let zb = zp[col * blocks.div_ceil(2) + block / 2];
                    let z = f64::from(if block.is_multiple_of(2) { zb & 0x0f } else { zb >> 4 });
                    let scale = f64::from(sc[col * blocks + block]);
                    for (i, v) in values.iter().enumerate() {
                        let kk = block * BLOCK + i;
                        let byte = qw[col * k / 2 + kk / 2];
                        let w = f64::from(if kk.is_multiple_of(2) { byte & 0x0f } else { byte >> 4 });
                        let weight = (w - z).abs() * scale;
                        out[row * n + col] += weight * (step / 2.0 + 1e-5 * f64::from(v.abs()));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn random_shapes_and_values_agree_across_paths_and_hold_to_the_rounding_bound() {
        // Fuzz-style, 150 draws: K 32-768, N 1-70, rows 1-17, threads 1-3, zero points given or
        // not, activations from 1e-3 to 300 in size, some blocks all zero. Activations quantize
        // to within half a step; every path gives the portable path's bits; the portable path
        // stays within `bound` of the float64 product.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let draw = |rng: &mut ChaCha8Rng, below: usize| rng.next_u32() as usize % below;
        for case in 0..150 {
            let (k, n, rows, threads) = (
                BLOCK * (1 + draw(&mut rng, 24)),
                1 + draw(&mut rng, 70),
                1 + draw(&mut rng, 17),
                1 + draw(&mut rng, 3),
            );
            let mut w = random_weights(&mut rng, k, n);
            let given = case % 3 != 0;
            if !given {
                w.2.fill(0x88);
            }
            let m = Int4Matrix::from_matmul_nbits(k, n, &w.0, &w.1, given.then_some(&w.2[..])).unwrap();
            let size = [1e-3f32, 1.0, 300.0][case % 3];
            let mut x: Vec<f32> = (0..rows * k).map(|_| size * uniform(&mut rng, -1.0, 1.0)).collect();
            if case % 5 == 0 {
                x[..BLOCK].fill(0.0);
            }
            // Each activation comes back from its byte within half its block's step, and a
            // block's largest reaches ±127.
            let quantized = QuantizedRows::new(&x, rows, k).unwrap();
            for (block, (values, bytes)) in x.chunks_exact(BLOCK).zip(quantized.q.chunks_exact(BLOCK)).enumerate() {
                let step = quantized.scales[block];
                let q: Vec<i32> = bytes.iter().map(|q| i32::from(*q)).collect();
                assert_eq!(quantized.sums[block], q.iter().sum::<i32>(), "case {case}: block {block}'s sum");
                assert!(
                    step == 0.0 || q.iter().any(|q| q.abs() == 127),
                    "case {case}: block {block} never reaches 127"
                );
                for (v, q) in values.iter().zip(&q) {
                    let error = (f64::from(*v) - f64::from(*q) * f64::from(step)).abs();
                    assert!(
                        error <= f64::from(step) * 0.500_001,
                        "case {case}: {v} came back {error} off, step {step}"
                    );
                }
            }
            let portable = product(&m, &x, rows, Isa::Portable, threads);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            for isa in paths() {
                let got = product(&m, &x, rows, isa, threads);
                assert_eq!(
                    bits(&got),
                    bits(&portable),
                    "case {case}: {isa:?}, k {k}, n {n}, {rows} rows, {threads} threads"
                );
            }
            let (want, most) = (reference(k, n, &w, &x, rows), bound(k, n, &w, &x, rows));
            for (i, (got, want)) in portable.iter().zip(&want).enumerate() {
                let error = (f64::from(*got) - want).abs();
                assert!(error <= most[i] + 1e-30, "case {case}: output {i} off by {error}, bound {}", most[i]);
            }
        }
    }

    #[test]
    fn every_path_thread_count_and_batch_gives_the_same_bits() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        // N not a multiple of 16 (a part tile), rows 1-17.
        for (k, n) in [(64, 37), (576, 960), (96, 16)] {
            let w = random_weights(&mut rng, k, n);
            let m = Int4Matrix::from_matmul_nbits(k, n, &w.0, &w.1, Some(&w.2)).unwrap();
            let x = random_rows(&mut rng, 17, k);
            let whole = product(&m, &x, 17, Isa::Portable, 1);
            for isa in paths() {
                for rows in [1, 2, 5, 8, 16, 17] {
                    for threads in [1, 2, 3] {
                        // The last `rows` rows, as a batch of their own.
                        let got = product(&m, &x[(17 - rows) * k..], rows, isa, threads);
                        assert_eq!(
                            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            whole[(17 - rows) * n..].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            "{isa:?}, k {k}, n {n}, {rows} rows, {threads} threads"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_path_quantizes_as_the_scalar_formula_does() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut x = random_rows(&mut rng, 3, 8 * BLOCK);
        // Blocks of: all zeros; ties at .5 after scaling (127 sets the scale to 1); a NaN; an
        // infinity; subnormals and -0; tiny and huge magnitudes.
        x[..BLOCK].fill(0.0);
        for (i, v) in x[BLOCK..2 * BLOCK].iter_mut().enumerate() {
            *v = if i == 0 { 127.0 } else { i as f32 - 15.5 };
        }
        x[2 * BLOCK + 5] = f32::NAN;
        x[3 * BLOCK + 9] = f32::NEG_INFINITY;
        for (i, v) in x[4 * BLOCK..5 * BLOCK].iter_mut().enumerate() {
            *v = if i % 2 == 0 { f32::from_bits(i as u32 + 1) } else { -0.0 };
        }
        x[5 * BLOCK..6 * BLOCK].iter_mut().for_each(|v| *v *= 1e-30);
        x[6 * BLOCK..7 * BLOCK].iter_mut().for_each(|v| *v *= 1e30);
        // The formula, one value at a time: max |x| in order (NaN ignored), round half to even.
        let (mut want_q, mut want_sums, mut want_scales) = (Vec::new(), Vec::new(), Vec::new());
        for block in x.chunks_exact(BLOCK) {
            let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let inverse = if max > 0.0 { 127.0 / max } else { 0.0 };
            let mut sum = 0;
            for v in block {
                let r = (v * inverse).clamp(-127.0, 127.0).round_ties_even() as i8;
                want_q.push(r);
                sum += i32::from(r);
            }
            want_sums.push(sum);
            want_scales.push(max / 127.0);
        }
        let bits = |s: &[f32]| s.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for isa in paths() {
            let q = quantize(&x, 3, 8 * BLOCK, isa).unwrap();
            assert_eq!(q.q, want_q, "{isa:?}");
            assert_eq!(q.sums, want_sums, "{isa:?}");
            assert_eq!(bits(&q.scales), bits(&want_scales), "{isa:?}");
            // The rows split over threads, into buffers a larger call left (reused as they are).
            let mut reused = quantize(&vec![1.0; 5 * 8 * BLOCK], 5, 8 * BLOCK, isa).unwrap();
            for threads in 1..=4 {
                requantize(&mut reused, &x, 3, 8 * BLOCK, isa, &Spawned(threads)).unwrap();
                assert_eq!(reused.q[..3 * 8 * BLOCK], want_q, "{isa:?}, {threads} threads");
                assert_eq!(reused.sums[..3 * 8], want_sums, "{isa:?}, {threads} threads");
                assert_eq!(bits(&reused.scales[..3 * 8]), bits(&want_scales), "{isa:?}, {threads} threads");
                assert_eq!(reused.rows(), 3);
            }
        }
        assert!(quantize(&x[..100], 1, 100, Isa::Portable).is_err());
    }

    #[test]
    fn absent_zero_points_are_eight() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (k, n) = (64, 16);
        let (qw, sc, _) = random_weights(&mut rng, k, n);
        let eights = vec![0x88u8; n];
        let x = random_rows(&mut rng, 2, k);
        let with = Int4Matrix::from_matmul_nbits(k, n, &qw, &sc, Some(&eights)).unwrap();
        let without = Int4Matrix::from_matmul_nbits(k, n, &qw, &sc, None).unwrap();
        assert_eq!(product(&with, &x, 2, Isa::Portable, 1), product(&without, &x, 2, Isa::Portable, 1));
    }

    #[test]
    fn shapes_that_do_not_fit_are_refused() {
        assert_eq!(
            Int4Matrix::from_matmul_nbits(48, 16, &[0; 384], &[0.0; 32], None).err(),
            Some(KernelError::UnevenK(48))
        );
        assert!(matches!(
            Int4Matrix::from_matmul_nbits(64, 16, &[0; 10], &[0.0; 32], None),
            Err(KernelError::Length { what: "qweight", .. })
        ));
        let m = Int4Matrix::from_matmul_nbits(64, 16, &[0; 512], &[0.0; 32], None).unwrap();
        let x = QuantizedRows::new(&[0.0; 128], 2, 64).unwrap();
        assert!(m.matmul(&x, &mut [0.0; 31], Isa::Portable, &Spawned(1)).is_err());
        assert!(QuantizedRows::new(&[0.0; 100], 2, 64).is_err());
    }

    /// Runs task 0 for every index: a second writer of the same columns, were it not refused.
    struct Repeating;

    impl ParallelFor for Repeating {
        fn threads(&self) -> usize {
            2
        }

        fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
            (0..tasks).for_each(|_| task(0));
        }
    }

    #[test]
    #[should_panic(expected = "ran twice")]
    fn a_runner_that_repeats_a_share_is_refused() {
        let m = Int4Matrix::from_matmul_nbits(64, 32, &[0; 1024], &[0.0; 64], None).unwrap();
        let x = QuantizedRows::new(&[0.0; 64], 1, 64).unwrap();
        let _ = m.matmul(&x, &mut [0.0; 32], Isa::Portable, &Repeating);
    }

    #[test]
    fn a_zero_row_gives_zeros() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let w = random_weights(&mut rng, 64, 20);
        let m = Int4Matrix::from_matmul_nbits(64, 20, &w.0, &w.1, Some(&w.2)).unwrap();
        for isa in paths() {
            assert!(product(&m, &[0.0; 64], 1, isa, 2).iter().all(|v| *v == 0.0), "{isa:?}");
        }
    }
}
