//! Our kernels as ONNX Runtime custom operators, in the domain [`DOMAIN`]: `Int4MatMul` takes
//! `MatMulNBits`' inputs and attributes (4 bits, blocks of 32) and runs [`Int4Matrix`] on the
//! session's intra-op threads. Its weights are repacked once, when the session creates the kernel.

use ort::operator::{ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput};
use ort::value::{DynTensorValueType, TensorElementType};

use super::int4_matmul::{Int4Matrix, Isa, ParallelFor, QuantizedRows, BLOCK};

/// The custom domain a graph names to use our operators.
pub const DOMAIN: &str = "ai.steadytext";

/// Our operators, for a session of `threads` intra-op threads.
pub fn domain(threads: usize) -> ort::Result<OperatorDomain> {
    OperatorDomain::new(DOMAIN)?.add(Int4MatMul { threads: threads.max(1) })
}

/// `Y = A · Bᵀ` with `B` as `MatMulNBits` holds it.
struct Int4MatMul {
    threads: usize,
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
        Ok(Int4MatMulKernel { matrix, isa: Isa::detect(), threads: self.threads })
    }
}

struct Int4MatMulKernel {
    matrix: Int4Matrix,
    isa: Isa,
    threads: usize,
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
        let x = QuantizedRows::new(a, rows, k).map_err(|e| ort::Error::new(format!("Int4MatMul: {e}")))?;
        let mut output = ctx.output(0, out_shape)?.ok_or_else(|| ort::Error::new("Int4MatMul: no output Y"))?;
        let (_, y) = output.try_extract_tensor_mut::<f32>()?;
        let threads = SessionThreads { ctx, threads: self.threads };
        self.matrix.matmul(&x, y, self.isa, &threads).map_err(|e| ort::Error::new(format!("Int4MatMul: {e}")))
    }
}

/// The session's intra-op thread pool.
struct SessionThreads<'a> {
    ctx: &'a ComputeContext,
    threads: usize,
}

impl ParallelFor for SessionThreads<'_> {
    fn threads(&self) -> usize {
        self.threads
    }

    fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        self.ctx.par_for(tasks, tasks, task).expect("ONNX Runtime's parallel for");
    }
}
