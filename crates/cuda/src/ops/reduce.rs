//! Reductions, softmax, layer norm, losses and optimizer updates: one submodule per kernel
//! file (kernels/reduce.cu, softmax.cu, layernorm.cu, losses.cu, optim.cu).

mod layernorm;
mod losses;
mod optim;
mod softmax;
mod sum;

use lowmem_ir::Op;

use super::{DevCall, OpResult};
use crate::device::{Device, LaunchDims};

pub(super) fn launch(dev: &dyn Device, c: &DevCall) -> OpResult {
    match c.op {
        Op::ReduceSum(_)
        | Op::ReduceMean(_)
        | Op::SumTo { .. }
        | Op::GlobalAveragePool
        | Op::GlobalAveragePoolGrad { .. } => sum::launch(dev, c),
        Op::Softmax(_) | Op::LogSoftmax(_) | Op::SoftmaxGrad(_) | Op::LogSoftmaxGrad(_) => {
            softmax::launch(dev, c)
        }
        Op::LayerNormalization { .. } | Op::LayerNormGrad { .. } => layernorm::launch(dev, c),
        Op::SoftmaxCrossEntropy | Op::SoftmaxCrossEntropyGrad | Op::MseLoss | Op::MseLossGrad => {
            losses::launch(dev, c)
        }
        Op::SgdUpdate { .. } | Op::AdamUpdate { .. } => optim::launch(dev, c),
        op => Err(format!("{} is not a reduction", op.name()).into()),
    }
}

/// Most blocks a grid-stride launch takes.
const MAX_GRID: usize = 1 << 16;

/// How the row kernels (softmax, layer norm, cross-entropy gradient) cover `rows` rows of
/// `len` elements: a warp per row for short rows when there are many (8 rows a block), else
/// a block per row, wider for longer rows. Returns the launch and the kernels' `warp_rows`.
fn row_launch(rows: usize, len: usize) -> (LaunchDims, i32) {
    if len <= 1024 && rows >= 256 {
        let grid = rows.div_ceil(8).clamp(1, MAX_GRID) as u32;
        return (LaunchDims::new([grid, 1, 1], [256, 1, 1]), 1);
    }
    let threads = match len {
        0..=2048 => 128,
        2049..=8192 => 256,
        8193..=32768 => 512,
        _ => 1024,
    };
    let grid = rows.clamp(1, MAX_GRID) as u32;
    (LaunchDims::new([grid, 1, 1], [threads, 1, 1]), 0)
}

/// A single block of at most 1024 threads, a multiple of 32, enough for `n` elements.
fn one_block(n: usize) -> LaunchDims {
    let t = n.div_ceil(32).clamp(1, 32) as u32 * 32;
    LaunchDims::new([1, 1, 1], [t, 1, 1])
}
