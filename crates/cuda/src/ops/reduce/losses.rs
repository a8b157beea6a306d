//! SoftmaxCrossEntropy, MseLoss and their gradients (kernels/losses.cu).

use lowmem_ir::shape::count;
use lowmem_ir::{DType, Op};

use super::{one_block, row_launch};
use crate::args::{Arg, call, grid_1d};
use crate::device::Device;
use crate::ops::{DevCall, OpResult};

pub(super) fn launch(dev: &dyn Device, c: &DevCall) -> OpResult {
    let y = c.output(0)?;
    match c.op {
        Op::SoftmaxCrossEntropy | Op::SoftmaxCrossEntropyGrad => {
            // The gradient's inputs are dloss, logits, labels; the loss's logits, labels.
            let off = usize::from(matches!(c.op, Op::SoftmaxCrossEntropyGrad));
            let &[n, k] = c.shape(off) else {
                return Err(format!("logits {:?} are not [N, C]", c.shape(off)).into());
            };
            if c.io.in_dtypes()[off + 1] != DType::I64 {
                return Err(format!(
                    "labels have dtype {}, expected i64",
                    c.io.in_dtypes()[off + 1]
                )
                .into());
            }
            let (logits, labels) = (c.f32_in(off)?, c.input(off + 1)?);
            if off == 0 {
                let args = [
                    Arg::Ptr(logits),
                    Arg::Ptr(labels),
                    Arg::Ptr(y),
                    Arg::I64(n as i64),
                    Arg::I64(k as i64),
                ];
                return Ok(call(dev, "lm_xent_loss", one_block(32 * n), &args)?);
            }
            if n * k == 0 {
                return Ok(());
            }
            let (dims, warp_rows) = row_launch(n, k);
            let args = [
                Arg::Ptr(c.f32_in(0)?),
                Arg::Ptr(logits),
                Arg::Ptr(labels),
                Arg::Ptr(y),
                Arg::I64(n as i64),
                Arg::I64(k as i64),
                Arg::I32(warp_rows),
            ];
            Ok(call(dev, "lm_xent_grad", dims, &args)?)
        }
        Op::MseLoss => {
            let n = count(c.shape(0));
            let args = [
                Arg::Ptr(c.f32_in(0)?),
                Arg::Ptr(c.f32_in(1)?),
                Arg::Ptr(y),
                Arg::I64(n as i64),
            ];
            Ok(call(dev, "lm_mse_loss", one_block(n), &args)?)
        }
        Op::MseLossGrad => {
            let n = count(c.shape(1));
            if n == 0 {
                return Ok(());
            }
            let args = [
                Arg::Ptr(c.f32_in(0)?),
                Arg::Ptr(c.f32_in(1)?),
                Arg::Ptr(c.f32_in(2)?),
                Arg::Ptr(y),
                Arg::I64(n as i64),
            ];
            Ok(call(dev, "lm_mse_grad", grid_1d(n), &args)?)
        }
        op => Err(format!("{} is not a loss", op.name()).into()),
    }
}
