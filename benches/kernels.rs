//! Our kernels on one decode step, beside ONNX Runtime's in make bench's ceiling table. The int4 x
//! int8 kernel on the shapes of the fused model's `MatMulNBits` nodes (each product quantizing its
//! input rows, as `MatMulNBits` does at int8 compute, into one reused buffer as our operator
//! does), under "int4_kernel"; our attention on its GroupQueryAttention layers (one call per
//! layer, each layer its own KV buffer), under "attention_kernel". The shapes, rows, past lengths
//! and thread count come from bench/ceiling.py's JSON. Weights and activations are random: the
//! time does not depend on their values. Timed as ceiling.py times: three warm-up steps, then the
//! fastest of three rounds.
//!
//!     cargo bench --bench kernels -- CEILING_JSON

use std::time::Instant;

use anyhow::{Context, Result};
use half::f16;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde_json::{json, Value};
use steadytext::engine::kernels::attention::{AttentionHeads, AttentionInput, KvCache};
use steadytext::engine::kernels::int4_matmul::{requantize, Int4Matrix, Isa, ParallelFor, QuantizedRows, BLOCK};

/// A rayon pool as the kernel's threads; the steps run inside it, as a model's nodes run on the
/// session's threads (between products the other threads are still awake, not parked).
struct Pool(rayon::ThreadPool);

impl ParallelFor for Pool {
    fn threads(&self) -> usize {
        self.0.current_num_threads()
    }

    fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        self.0.scope(|scope| {
            for i in 1..tasks {
                scope.spawn(move |_| task(i));
            }
            task(0);
        });
    }
}

const ROUNDS: usize = 3;
const STEPS: usize = 30;

fn random_matrix(rng: &mut ChaCha8Rng, k: usize, n: usize) -> Result<Int4Matrix> {
    let mut bytes = |len: usize| (0..len).map(|_| rng.next_u32() as u8).collect::<Vec<u8>>();
    let (qweight, zero_points) = (bytes(n * k / 2), bytes(n * (k / BLOCK).div_ceil(2)));
    let scales = vec![0.01f32; n * k / BLOCK];
    Ok(Int4Matrix::from_matmul_nbits(k, n, &qweight, &scales, Some(&zero_points))?)
}

/// The fastest round of `step`'s milliseconds, after three warm-up steps.
fn best_ms(mut step: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..3 {
        step()?;
    }
    let mut best = f64::INFINITY;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..STEPS {
            step()?;
        }
        best = best.min(start.elapsed().as_secs_f64() * 1e3 / STEPS as f64);
    }
    Ok(best)
}

/// The fastest round's milliseconds per decode step (every product once) of `rows` rows.
fn step_ms(matrices: &[Int4Matrix], rows: usize, isa: Isa, pool: &Pool) -> Result<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(rows as u64);
    let inputs: Vec<Vec<f32>> = matrices
        .iter()
        .map(|m| (0..rows * m.k()).map(|_| (rng.next_u32() % 2001) as f32 / 1000.0 - 1.0).collect())
        .collect();
    let mut outputs: Vec<Vec<f32>> = matrices.iter().map(|m| vec![0f32; rows * m.n()]).collect();
    let mut quantized = QuantizedRows::default();
    best_ms(|| {
        pool.0.install(|| {
            for ((m, x), out) in matrices.iter().zip(&inputs).zip(&mut outputs) {
                requantize(&mut quantized, x, rows, m.k(), isa, pool)?;
                m.matmul(&quantized, out, isa, pool)?;
            }
            Ok(())
        })
    })
}

/// The fused model's attention layers as ceiling.py describes them.
#[derive(serde::Deserialize)]
struct AttentionShape {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    layers: usize,
    capacity: usize,
}

/// Milliseconds per decode step of our attention on every layer, `rows` rows each `past` long.
fn attention_ms(shape: &AttentionShape, rows: usize, past: usize, isa: Isa, pool: &Pool) -> Result<f64> {
    let heads = AttentionHeads::new(shape.heads, shape.kv_heads, shape.head_dim, None)?;
    let mut rng = ChaCha8Rng::seed_from_u64(past as u64);
    let mut random = |n: usize| (0..n).map(|_| (rng.next_u32() % 2001) as f32 / 10_000.0 - 0.1).collect::<Vec<f32>>();
    let per_cache = rows * shape.kv_heads * shape.capacity * shape.head_dim;
    let mut half = |n: usize| random(n).into_iter().map(f16::from_f32).collect::<Vec<f16>>();
    let mut caches: Vec<(Vec<f16>, Vec<f16>)> = (0..shape.layers).map(|_| (half(per_cache), half(per_cache))).collect();
    let qkv = random(rows * heads.qkv_width());
    let rotary = random((past + 1) * shape.head_dim / 2);
    let mut out = vec![0f32; rows * heads.out_width()];
    let (pasts, valid) = (vec![past; rows], vec![1; rows]);
    let input = AttentionInput { qkv: &qkv, seq: 1, past: &pasts, valid: &valid, cos: &rotary, sin: &rotary };
    best_ms(|| {
        pool.0.install(|| {
            for (keys, values) in &mut caches {
                let cache = KvCache { keys, values, capacity: shape.capacity };
                heads.run(&input, cache, &mut out, isa, pool)?;
            }
            Ok(())
        })
    })
}

fn main() -> Result<()> {
    let path = std::env::args().skip(1).find(|a| a != "--bench").context("usage: kernels CEILING_JSON")?;
    let mut ceiling: Value = serde_json::from_slice(&std::fs::read(&path).with_context(|| format!("reading {path}"))?)?;
    let shapes: Vec<(usize, usize)> =
        serde_json::from_value(ceiling["matmul_shapes"].clone()).context("the ceiling JSON has no matmul_shapes")?;
    let threads = ceiling["threads"].as_u64().context("the ceiling JSON has no threads")? as usize;
    let rows: Vec<usize> = ceiling["table"]
        .as_array()
        .context("the ceiling JSON has no table")?
        .iter()
        .map(|r| r["rows"].as_u64().map(|n| n as usize).context("a table row without rows"))
        .collect::<Result<_>>()?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let matrices = shapes.iter().map(|&(k, n)| random_matrix(&mut rng, k, n)).collect::<Result<Vec<_>>>()?;
    let pool = Pool(rayon::ThreadPoolBuilder::new().num_threads(threads).build()?);
    let isa = Isa::detect();
    let mut table = Vec::new();
    for &n in &rows {
        let ms = step_ms(&matrices, n, isa, &pool)?;
        eprintln!("int4 x int8 kernel ({isa:?}, {threads} threads), {n} rows: {ms:.2} ms per step");
        table.push(json!({"rows": n, "ms": ms}));
    }
    ceiling["int4_kernel"] = json!({"isa": format!("{isa:?}"), "table": table});
    let shape: AttentionShape =
        serde_json::from_value(ceiling["attention"].clone()).context("the ceiling JSON has no attention shape")?;
    let pasts: Vec<usize> =
        serde_json::from_value(ceiling["pasts"].clone()).context("the ceiling JSON has no pasts")?;
    let mut table = Vec::new();
    for &n in &rows {
        let mut row = json!({"rows": n});
        for &past in &pasts {
            let ms = attention_ms(&shape, n, past, isa, &pool)?;
            eprintln!("attention ({isa:?}, {threads} threads), {n} rows after {past}: {ms:.2} ms per step");
            row[format!("ms_past_{past}")] = json!(ms);
        }
        table.push(row);
    }
    ceiling["attention_kernel"] = json!({"isa": format!("{isa:?}"), "table": table});
    let tmp = format!("{path}.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&ceiling)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}
