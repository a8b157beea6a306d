//! The launch code of every op: reads the node's operand addresses (at their planned
//! offsets), shapes and workspace, and launches the kernels of `kernels/` or a GEMM. One
//! function per op family; [`launch_op`] routes each op to its family.

mod conv;
mod elementwise;
mod matmul;
mod movement;
mod norm;
mod pool;
mod reduce;
mod sparse;

use lowmem_exec::NodeIo;
use lowmem_ir::{DType, Op};

use crate::device::Device;
use crate::{CudaError, DevPtr};

/// One node's operands on the device.
pub struct DevCall<'a> {
    pub op: &'a Op,
    pub io: &'a NodeIo<'a>,
    /// Input addresses; `None`: overwritten in place by an output (read it there).
    pub ins: &'a [Option<DevPtr>],
    pub outs: &'a [DevPtr],
    /// Per output: whether it already holds the input it overwrites in place.
    pub aliased: &'a [bool],
    /// The node's planned workspace: address and bytes.
    pub ws: Option<(DevPtr, usize)>,
}

/// A launch-code error, before the node is named.
pub type OpResult = Result<(), OpError>;

#[derive(Debug)]
pub enum OpError {
    Msg(String),
    Device(CudaError),
}

impl From<CudaError> for OpError {
    fn from(e: CudaError) -> OpError {
        OpError::Device(e)
    }
}

impl From<String> for OpError {
    fn from(e: String) -> OpError {
        OpError::Msg(e)
    }
}

impl From<&str> for OpError {
    fn from(e: &str) -> OpError {
        OpError::Msg(e.to_string())
    }
}

impl<'a> DevCall<'a> {
    /// Input `j`'s address: its own, or that of the output that overwrites it in place.
    pub fn input(&self, j: usize) -> Result<DevPtr, OpError> {
        if let Some(Some(p)) = self.ins.get(j) {
            return Ok(*p);
        }
        (0..self.outs.len())
            .find(|&k| self.aliased[k] && self.op.in_place_input(k) == Some(j))
            .map(|k| self.outs[k])
            .ok_or_else(|| OpError::Msg(format!("input {j} has no address")))
    }

    pub fn output(&self, k: usize) -> Result<DevPtr, OpError> {
        self.outs
            .get(k)
            .copied()
            .ok_or_else(|| OpError::Msg(format!("the node has no output {k}")))
    }

    pub fn shape(&self, j: usize) -> &'a [usize] {
        self.io.shapes()[j]
    }

    pub fn out_shape(&self, k: usize) -> &'a [usize] {
        self.io.out_shapes()[k]
    }

    pub fn n_inputs(&self) -> usize {
        self.ins.len()
    }

    /// Checks that input `j` is f32 (the kernels compute in f32).
    pub fn need_f32(&self, j: usize) -> OpResult {
        match self.io.in_dtypes()[j] {
            DType::F32 => Ok(()),
            d => {
                Err(format!("input {j} has dtype {d}; the CUDA kernels compute in f32 only").into())
            }
        }
    }

    /// Input `j`'s f32 address.
    pub fn f32_in(&self, j: usize) -> Result<DevPtr, OpError> {
        self.need_f32(j)?;
        self.input(j)
    }

    /// Makes output `k` hold input `j` (a device copy unless it already does, in place).
    pub fn init(&self, dev: &dyn Device, k: usize, j: usize) -> OpResult {
        if !self.aliased[k] {
            let bytes = lowmem_ir::shape::count(self.shape(j)) * self.io.in_dtypes()[j].size();
            dev.copy(self.output(k)?, self.input(j)?, bytes)?;
        }
        Ok(())
    }

    /// The workspace, at least `bytes` long.
    pub fn workspace(&self, bytes: usize) -> Result<DevPtr, OpError> {
        match self.ws {
            _ if bytes == 0 => Ok(0),
            Some((p, have)) if have >= bytes => Ok(p),
            w => Err(format!(
                "workspace of {} bytes is planned, the kernel needs {bytes}",
                w.map_or(0, |w| w.1)
            )
            .into()),
        }
    }
}

/// Launches `c.op` on `dev`.
pub fn launch_op(dev: &dyn Device, c: &DevCall) -> OpResult {
    launch_body(dev, c)?;
    match c.op.epilogue() {
        // A fused epilogue: the standalone activation's kernel over the output, in place.
        Some(act) => elementwise::epilogue(dev, act, c),
        None => Ok(()),
    }
}

fn launch_body(dev: &dyn Device, c: &DevCall) -> OpResult {
    match c.op {
        Op::MatMul | Op::Gemm(_) => matmul::launch(dev, c),
        Op::Expand { .. } | Op::Slice { .. } | Op::Transpose { .. } | Op::Concat { .. } => {
            movement::launch(dev, c)
        }
        Op::ReduceSum(_)
        | Op::ReduceMean(_)
        | Op::SumTo { .. }
        | Op::GlobalAveragePool
        | Op::GlobalAveragePoolGrad { .. }
        | Op::Softmax(_)
        | Op::LogSoftmax(_)
        | Op::SoftmaxGrad(_)
        | Op::LogSoftmaxGrad(_)
        | Op::SoftmaxCrossEntropy
        | Op::SoftmaxCrossEntropyGrad
        | Op::MseLoss
        | Op::MseLossGrad
        | Op::LayerNormalization { .. }
        | Op::LayerNormGrad { .. }
        | Op::SgdUpdate { .. }
        | Op::AdamUpdate { .. } => reduce::launch(dev, c),
        Op::Conv(_) | Op::ConvBackwardData { .. } | Op::ConvBackwardFilter { .. } => {
            conv::launch(dev, c)
        }
        Op::BatchNormalization(_)
        | Op::BatchNormTrain(_)
        | Op::BatchNormGrad { .. }
        | Op::Lrn(_)
        | Op::LrnGrad(_) => norm::launch(dev, c),
        Op::MaxPool(_) | Op::AveragePool(_) | Op::MaxPoolGrad(_) | Op::AveragePoolGrad { .. } => {
            pool::launch(dev, c)
        }
        Op::SliceWindow { .. }
        | Op::SliceWindowGrad { .. }
        | Op::ReluMask
        | Op::ReluMaskGrad
        | Op::TopK { .. }
        | Op::TopKScatter { .. } => sparse::launch(dev, c),
        // No wildcard: a new op does not compile until it has a CUDA route.
        Op::Identity
        | Op::Reshape { .. }
        | Op::Flatten { .. }
        | Op::Squeeze { .. }
        | Op::Unsqueeze { .. }
        | Op::Dropout { .. }
        | Op::DropoutTrain { .. }
        | Op::DropoutGrad { .. }
        | Op::Relu
        | Op::LeakyRelu { .. }
        | Op::Sigmoid
        | Op::Tanh
        | Op::Erf
        | Op::Gelu { .. }
        | Op::Sqrt
        | Op::Clip(_)
        | Op::Neg
        | Op::Scale { .. }
        | Op::Add
        | Op::Sub
        | Op::Mul
        | Op::Div
        | Op::Pow
        | Op::Sum
        | Op::PowGrad
        | Op::ReluGrad
        | Op::LeakyReluGrad { .. }
        | Op::SigmoidGrad
        | Op::TanhGrad
        | Op::SqrtGrad
        | Op::ErfGrad
        | Op::GeluGrad { .. }
        | Op::ClipGrad(_)
        | Op::Cast { .. } => elementwise::launch(dev, c),
    }
}
