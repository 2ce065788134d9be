//! Our kernels as ONNX Runtime custom operators, in the domain [`DOMAIN`]: `Int4MatMul` takes
//! `MatMulNBits`' inputs and attributes (4 bits, blocks of 32) and runs [`Int4Matrix`], its
//! weights repacked once, when the session creates the kernel; `GroupQueryAttention` takes the
//! inputs and attributes of ONNX Runtime's operator of that name (packed QKV, rotary embedding,
//! non-interleaved), its KV cache in half precision (`float16` past and present), and runs
//! [`AttentionHeads`]. Both split their work over the session's
//! [`SpinPool`]. `SkipSimplifiedLayerNormalization` (ONNX Runtime's inputs and attributes, no
//! bias) runs [`SkipRmsNorm`], and `SwiGlu` (the gate/up product in, `silu(gate) · up` out)
//! runs [`swiglu`], both on the calling thread.

use std::cell::Cell;
use std::sync::Arc;

use half::f16;
use ort::operator::{ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput};
use ort::value::{DynTensorValueType, TensorElementType};

use super::attention::{AttentionHeads, AttentionInput, KvCache};
use super::int4_matmul::{requantize, Int4Matrix, Isa, QuantizedRows, BLOCK};
use super::rms_norm::SkipRmsNorm;
use super::spin_pool::SpinPool;
use super::swiglu::swiglu;

/// The custom domain a graph names to use our operators.
pub const DOMAIN: &str = "ai.steadytext";

/// Our operators, their work split over `pool`.
pub fn domain(pool: Arc<SpinPool>) -> ort::Result<OperatorDomain> {
    OperatorDomain::new(DOMAIN)?
        .add(Int4MatMul { pool: pool.clone() })?
        .add(GroupQueryAttention { pool })?
        .add(SkipSimplifiedLayerNormalization)?
        .add(SwiGlu)
}

/// `Y = A · Bᵀ` with `B` as `MatMulNBits` holds it.
struct Int4MatMul {
    pool: Arc<SpinPool>,
}

impl Operator for Int4MatMul {
    type Kernel<'attr> = Int4MatMulKernel;

    fn name(&self) -> &str {
        "Int4MatMul"
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::required(TensorElementType::Uint8),
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::optional(TensorElementType::Uint8),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, ctx: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        let attr = |name: &str| {
            ctx.get::<i64>(name)
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| ort::Error::new(format!("Int4MatMul needs a non-negative attribute {name}")))
        };
        let (k, n) = (attr("K")?, attr("N")?);
        if attr("bits")? != 4 || attr("block_size")? != BLOCK {
            return Err(ort::Error::new(format!("Int4MatMul takes 4 bits in blocks of {BLOCK}")));
        }
        let constant = |idx: usize| ctx.constant_input::<DynTensorValueType>(idx);
        let (qweight, scales) = (constant(1)?, constant(2)?);
        let zero_points = if ctx.inputs()?.len() > 3 { Some(constant(3)?) } else { None };
        let zero_points = match &zero_points {
            Some(z) => Some(z.try_extract_tensor::<u8>()?.1),
            None => None,
        };
        let matrix = Int4Matrix::from_matmul_nbits(
            k,
            n,
            qweight.try_extract_tensor::<u8>()?.1,
            scales.try_extract_tensor::<f32>()?.1,
            zero_points,
        )
        .map_err(|e| ort::Error::new(format!("Int4MatMul: {e}")))?;
        Ok(Int4MatMulKernel { matrix, isa: Isa::detect(), pool: self.pool.clone() })
    }
}

struct Int4MatMulKernel {
    matrix: Int4Matrix,
    isa: Isa,
    pool: Arc<SpinPool>,
}

impl Kernel for Int4MatMulKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let input = ctx.input(0)?.ok_or_else(|| ort::Error::new("Int4MatMul: no input A"))?;
        let (shape, a) = input.try_extract_tensor::<f32>()?;
        let k = self.matrix.k();
        let rows = a.len() / k.max(1);
        let mut out_shape = shape.to_vec();
        match out_shape.last_mut() {
            Some(last) if *last as usize == k => *last = self.matrix.n() as i64,
            _ => return Err(ort::Error::new(format!("Int4MatMul: A's last dimension is not K = {k}"))),
        }
        let mut output = ctx.output(0, out_shape)?.ok_or_else(|| ort::Error::new("Int4MatMul: no output Y"))?;
        let (_, y) = output.try_extract_tensor_mut::<f32>()?;
        let mut x = QUANTIZED.take();
        let done = requantize(&mut x, a, rows, k, self.isa, &*self.pool)
            .and_then(|()| self.matrix.matmul(&x, y, self.isa, &*self.pool));
        if x.capacity_bytes() <= KEEP_QUANTIZED_BYTES {
            QUANTIZED.set(x);
        }
        done.map_err(|e| ort::Error::new(format!("Int4MatMul: {e}")))
    }
}

/// The most bytes of quantized rows a thread keeps between products: a decode batch's rows
/// (16 rows of 1,536 take 30 KiB), not a long prompt's.
const KEEP_QUANTIZED_BYTES: usize = 256 * 1024;

thread_local! {
    /// The calling thread's buffers for a product's quantized rows, reused by every product.
    static QUANTIZED: Cell<QuantizedRows> = Cell::new(QuantizedRows::default());
}

/// Causal attention as ONNX Runtime's `GroupQueryAttention` computes it, query by query, on a
/// half-precision KV cache.
struct GroupQueryAttention {
    pool: Arc<SpinPool>,
}

impl Operator for GroupQueryAttention {
    type Kernel<'attr> = AttentionKernel;

    fn name(&self) -> &str {
        "GroupQueryAttention"
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        let float = || OperatorInput::required(TensorElementType::Float32);
        let int = || OperatorInput::required(TensorElementType::Int32);
        let half = || OperatorInput::required(TensorElementType::Float16);
        [
            float(),
            OperatorInput::optional(TensorElementType::Float32),
            OperatorInput::optional(TensorElementType::Float32),
            half(),
            half(),
            int(),
            int(),
            float(),
            float(),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [TensorElementType::Float32, TensorElementType::Float16, TensorElementType::Float16]
            .map(OperatorOutput::required)
    }

    fn create_kernel<'attr>(&self, ctx: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        let fail = |what: String| ort::Error::new(format!("GroupQueryAttention ({DOMAIN}): {what}"));
        let int = |name: &str| ctx.get::<i64>(name);
        let count = |name: &str| {
            int(name).and_then(|v| usize::try_from(v).ok()).ok_or_else(|| fail(format!("needs a positive {name}")))
        };
        let (heads, kv_heads) = (count("num_heads")?, count("kv_num_heads")?);
        for (name, want, default) in [("do_rotary", 1, 0), ("rotary_interleaved", 0, 0), ("local_window_size", -1, -1)]
        {
            if int(name).unwrap_or(default) != want {
                return Err(fail(format!("takes {name} = {want} only")));
            }
        }
        if ctx.get::<f32>("softcap").unwrap_or(0.0) != 0.0 {
            return Err(fail("takes softcap = 0 only".into()));
        }
        let scale = ctx.get::<f32>("scale").filter(|&s| s != 0.0);
        Ok(AttentionKernel { heads, kv_heads, scale, isa: Isa::detect(), pool: self.pool.clone() })
    }
}

struct AttentionKernel {
    heads: usize,
    kv_heads: usize,
    /// `None`: 1 / sqrt(head size).
    scale: Option<f32>,
    isa: Isa,
    pool: Arc<SpinPool>,
}

impl Kernel for AttentionKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let fail = |what: String| ort::Error::new(format!("GroupQueryAttention ({DOMAIN}): {what}"));
        let input = |idx: usize, name: &str| ctx.input(idx)?.ok_or_else(|| fail(format!("no {name}")));
        if ctx.input(1)?.is_some() || ctx.input(2)?.is_some() {
            return Err(fail("takes q, k and v packed in the query input only".into()));
        }
        let query = input(0, "query")?;
        let (qshape, qkv) = query.try_extract_tensor::<f32>()?;
        let &[rows, seq, width] = &qshape[..] else {
            return Err(fail(format!("query of shape {qshape:?}, not [batch, sequence, width]")));
        };
        let (rows, seq, width) = (rows as usize, seq as usize, width as usize);
        let head_dim = width / (self.heads + 2 * self.kv_heads);
        let heads =
            AttentionHeads::new(self.heads, self.kv_heads, head_dim, self.scale).map_err(|e| fail(e.to_string()))?;
        if heads.qkv_width() != width {
            return Err(fail(format!("a query width of {width} is not (heads + 2 kv heads) x head size")));
        }
        let seqlens = input(5, "seqlens_k")?;
        let (_, seqlens) = seqlens.try_extract_tensor::<i32>()?;
        let total = input(6, "total_sequence_length")?;
        let total = total.try_extract_tensor::<i32>()?.1.first().copied().unwrap_or(0);
        let (cos, sin) = (input(7, "cos_cache")?, input(8, "sin_cache")?);
        let (cos, sin) = (cos.try_extract_tensor::<f32>()?.1, sin.try_extract_tensor::<f32>()?.1);
        let (past_key, past_value) = (input(3, "past_key")?, input(4, "past_value")?);
        let (kshape, past_keys) = past_key.try_extract_tensor::<f16>()?;
        let want = [rows, self.kv_heads, kshape.get(2).copied().unwrap_or(0) as usize, head_dim];
        if kshape.iter().map(|&x| x as usize).ne(want) || seqlens.len() != rows || total < 0 {
            return Err(fail(format!(
                "past_key {kshape:?}, seqlens_k of {} and total {total} do not fit the query",
                seqlens.len()
            )));
        }
        // A first prompt (its length is the total) may be right-padded; later calls are not.
        let first = total as usize == seq;
        let mut past = Vec::with_capacity(rows);
        let mut valid = Vec::with_capacity(rows);
        for &s in seqlens {
            let length = usize::try_from(i64::from(s) + 1).map_err(|_| fail(format!("seqlens_k holds {s}")))?;
            let (p, v) = if first {
                (0, length.min(seq))
            } else {
                (length.checked_sub(seq).ok_or_else(|| fail(format!("seqlens_k {s} is shorter than the call")))?, seq)
            };
            past.push(p);
            valid.push(v);
        }
        let past_capacity = want[2];
        let capacity = past_capacity.max(total as usize);
        let present_shape = [rows, self.kv_heads, capacity, head_dim].map(|x| x as i64);
        let (past_keys_at, past_values) = (past_keys.as_ptr(), past_value.try_extract_tensor::<f16>()?.1);
        let mut present_key = ctx.output(1, present_shape)?.ok_or_else(|| fail("no present_key".into()))?;
        let mut present_value = ctx.output(2, present_shape)?.ok_or_else(|| fail("no present_value".into()))?;
        let keys = present_key.try_extract_tensor_mut::<f16>()?.1;
        let values = present_value.try_extract_tensor_mut::<f16>()?.1;
        // ONNX Runtime gives the past's own buffer when past and present share it (the engine's
        // KV arena); otherwise the past is copied in first.
        if keys.as_ptr() != past_keys_at {
            if past.iter().any(|&p| p > past_capacity) {
                return Err(fail(format!("seqlens_k go past the {past_capacity} positions of past_key")));
            }
            let layout = CacheLayout { kv_heads: self.kv_heads, head_dim, from: past_capacity, to: capacity };
            layout.copy_past(past_keys, keys, &past);
            layout.copy_past(past_values, values, &past);
        }
        let mut output =
            ctx.output(0, [rows, seq, heads.out_width()].map(|x| x as i64))?.ok_or_else(|| fail("no output".into()))?;
        let out = output.try_extract_tensor_mut::<f32>()?.1;
        let call = AttentionInput { qkv, seq, past: &past, valid: &valid, cos, sin };
        heads
            .run(&call, KvCache { keys, values, capacity }, out, self.isa, &*self.pool)
            .map_err(|e| fail(e.to_string()))
    }
}

/// The residual add and RMS norm as ONNX Runtime's `SkipSimplifiedLayerNormalization` computes
/// them, without its optional bias.
struct SkipSimplifiedLayerNormalization;

impl Operator for SkipSimplifiedLayerNormalization {
    type Kernel<'attr> = NormKernel;

    fn name(&self) -> &str {
        "SkipSimplifiedLayerNormalization"
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        let float = || OperatorInput::required(TensorElementType::Float32);
        [float(), float(), float(), OperatorInput::optional(TensorElementType::Float32)]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        let optional = || OperatorOutput::optional(TensorElementType::Float32);
        [OperatorOutput::required(TensorElementType::Float32), optional(), optional(), optional()]
    }

    fn create_kernel<'attr>(&self, ctx: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        let fail = |what: &str| ort::Error::new(format!("SkipSimplifiedLayerNormalization ({DOMAIN}) {what}"));
        // No default: the graph says which epsilon its weights were trained with.
        let epsilon = ctx.get::<f32>("epsilon").ok_or_else(|| fail("needs its epsilon attribute"))?;
        if ctx.inputs()?.len() > 3 {
            return Err(fail("takes no bias"));
        }
        Ok(NormKernel { epsilon })
    }
}

struct NormKernel {
    epsilon: f32,
}

impl Kernel for NormKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let fail = |what: String| ort::Error::new(format!("SkipSimplifiedLayerNormalization ({DOMAIN}): {what}"));
        let input = |idx: usize, name: &str| ctx.input(idx)?.ok_or_else(|| fail(format!("no {name}")));
        let (x, skip, gamma) = (input(0, "input")?, input(1, "skip")?, input(2, "gamma")?);
        let (shape, x) = x.try_extract_tensor::<f32>()?;
        let (skip, gamma) = (skip.try_extract_tensor::<f32>()?.1, gamma.try_extract_tensor::<f32>()?.1);
        if shape.last().map(|&w| w as usize) != Some(gamma.len()) {
            return Err(fail(format!("input {shape:?} does not end in gamma's {} values", gamma.len())));
        }
        let norm = SkipRmsNorm { input: x, skip, gamma, epsilon: self.epsilon };
        let mut output = ctx.output(0, shape.to_vec())?.ok_or_else(|| fail("no output".into()))?;
        let out = output.try_extract_tensor_mut::<f32>()?.1;
        let mut sum = ctx.output(3, shape.to_vec())?;
        let sum = match &mut sum {
            Some(sum) => Some(sum.try_extract_tensor_mut::<f32>()?.1),
            None => None,
        };
        norm.run(out, sum).map_err(|e| fail(e.to_string()))
    }
}

/// A Llama layer's gated activation: `[..., 2 · width]` gate and up in, `[..., width]` out.
struct SwiGlu;

impl Operator for SwiGlu {
    type Kernel<'attr> = SwiGluKernel;

    fn name(&self) -> &str {
        "SwiGlu"
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [OperatorInput::required(TensorElementType::Float32)]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, _: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        Ok(SwiGluKernel { isa: Isa::detect() })
    }
}

struct SwiGluKernel {
    isa: Isa,
}

impl Kernel for SwiGluKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let fail = |what: String| ort::Error::new(format!("SwiGlu ({DOMAIN}): {what}"));
        let input = ctx.input(0)?.ok_or_else(|| fail("no input".into()))?;
        let (shape, gate_up) = input.try_extract_tensor::<f32>()?;
        let mut out_shape = shape.to_vec();
        let width = match out_shape.last_mut() {
            Some(last) if *last > 0 && *last % 2 == 0 => {
                *last /= 2;
                *last as usize
            }
            _ => return Err(fail(format!("input {shape:?} does not end in an even, non-zero width"))),
        };
        let mut output = ctx.output(0, out_shape)?.ok_or_else(|| fail("no output".into()))?;
        let out = output.try_extract_tensor_mut::<f32>()?.1;
        swiglu(gate_up, width, out, self.isa).map_err(|e| fail(e.to_string()))
    }
}

/// Two KV caches' shapes: `[rows, kv_heads, from or to, head_dim]`.
struct CacheLayout {
    kv_heads: usize,
    head_dim: usize,
    from: usize,
    to: usize,
}

impl CacheLayout {
    /// Copies each row's first `past[row]` positions of every head.
    fn copy_past(&self, from: &[f16], to: &mut [f16], past: &[usize]) {
        let d = self.head_dim;
        for (row, &p) in past.iter().enumerate() {
            for kv in 0..self.kv_heads {
                let (src, dst) = ((row * self.kv_heads + kv) * self.from * d, (row * self.kv_heads + kv) * self.to * d);
                to[dst..dst + p * d].copy_from_slice(&from[src..src + p * d]);
            }
        }
    }
}
