//! Batch norm (kernels/batchnorm.cu: inference, training, backward) and LRN
//! (kernels/lrn.cu). Per-channel statistics take one block per channel.

use lowmem_ir::Op;
use lowmem_ir::shape::count;

use super::{DevCall, OpResult};
use crate::args::{Arg, call, grid_1d};
use crate::device::{Device, LaunchDims};

/// Threads per statistics block (one block per channel).
const STATS_BLOCK: u32 = 512;

/// `[N, C, spatial...]` as `(N, C, spatial size)`.
fn ncs(shape: &[usize]) -> Result<(usize, usize, usize), String> {
    if shape.len() < 2 {
        return Err(format!("expects [N, C, ...], got {shape:?}"));
    }
    Ok((shape[0], shape[1], count(&shape[2..])))
}

fn per_channel(c: usize) -> LaunchDims {
    LaunchDims::new([c as u32, 1, 1], [STATS_BLOCK, 1, 1])
}

pub(super) fn launch(dev: &dyn Device, c: &DevCall) -> OpResult {
    match c.op {
        Op::BatchNormalization(a) => {
            let (n, ch, sp) = ncs(c.shape(0))?;
            let total = n * ch * sp;
            if total == 0 {
                return Ok(());
            }
            let mut args = vec![Arg::Ptr(c.f32_in(0)?)];
            for j in 1..5 {
                args.push(Arg::Ptr(c.f32_in(j)?));
            }
            args.extend([
                Arg::Ptr(c.output(0)?),
                Arg::I64(total as i64),
                Arg::I64(sp as i64),
                Arg::I32(ch as i32),
                Arg::F32(a.epsilon),
                Arg::I32(0),
            ]);
            Ok(call(dev, "lm_bn_affine", grid_1d(total), &args)?)
        }
        Op::BatchNormTrain(a) => {
            let (n, ch, sp) = ncs(c.shape(0))?;
            // The running statistics are updated in place (outputs 3 and 4 over inputs 3
            // and 4, or copies of them).
            c.init(dev, 3, 3)?;
            c.init(dev, 4, 4)?;
            if ch == 0 {
                return Ok(());
            }
            let (x, y) = (c.f32_in(0)?, c.output(0)?);
            let (mean, inv) = (c.output(1)?, c.output(2)?);
            let stats = [
                Arg::Ptr(x),
                Arg::Ptr(mean),
                Arg::Ptr(inv),
                Arg::Ptr(c.output(3)?),
                Arg::Ptr(c.output(4)?),
                Arg::I32(n as i32),
                Arg::I64(sp as i64),
                Arg::I32(ch as i32),
                Arg::F32(a.epsilon),
                Arg::F32(a.momentum),
            ];
            call(dev, "lm_bn_train_stats", per_channel(ch), &stats)?;
            let total = n * ch * sp;
            if total == 0 {
                return Ok(());
            }
            let args = [
                Arg::Ptr(x),
                Arg::Ptr(c.f32_in(1)?),
                Arg::Ptr(c.f32_in(2)?),
                Arg::Ptr(mean),
                Arg::Ptr(inv),
                Arg::Ptr(y),
                Arg::I64(total as i64),
                Arg::I64(sp as i64),
                Arg::I32(ch as i32),
                Arg::F32(a.epsilon),
                Arg::I32(1),
            ];
            Ok(call(dev, "lm_bn_affine", grid_1d(total), &args)?)
        }
        Op::BatchNormGrad { epsilon, training } => {
            let (n, ch, sp) = ncs(c.shape(1))?;
            if ch == 0 {
                return Ok(());
            }
            let (dy, x, scale) = (c.f32_in(0)?, c.f32_in(1)?, c.f32_in(2)?);
            let (mean, v) = (c.f32_in(3)?, c.f32_in(4)?);
            let (dx, ds, db) = (c.output(0)?, c.output(1)?, c.output(2)?);
            let sums = [
                Arg::Ptr(dy),
                Arg::Ptr(x),
                Arg::Ptr(mean),
                Arg::Ptr(v),
                Arg::Ptr(ds),
                Arg::Ptr(db),
                Arg::I32(n as i32),
                Arg::I64(sp as i64),
                Arg::I32(ch as i32),
                Arg::F32(*epsilon),
                Arg::I32(*training as i32),
            ];
            call(dev, "lm_bn_grad_sums", per_channel(ch), &sums)?;
            let total = n * ch * sp;
            if total == 0 {
                return Ok(());
            }
            let args = [
                Arg::Ptr(dy),
                Arg::Ptr(x),
                Arg::Ptr(scale),
                Arg::Ptr(mean),
                Arg::Ptr(v),
                Arg::Ptr(ds),
                Arg::Ptr(db),
                Arg::Ptr(dx),
                Arg::I64(total as i64),
                Arg::I64(sp as i64),
                Arg::I32(ch as i32),
                Arg::F32(*epsilon),
                Arg::I32(*training as i32),
            ];
            Ok(call(dev, "lm_bn_grad_dx", grid_1d(total), &args)?)
        }
        Op::Lrn(a) | Op::LrnGrad(a) => {
            if a.size == 0 {
                return Err("LRN size must be positive".into());
            }
            let grad = matches!(c.op, Op::LrnGrad(_));
            let xj = usize::from(grad);
            let (n, ch, sp) = ncs(c.shape(xj))?;
            let total = n * ch * sp;
            if total == 0 {
                return Ok(());
            }
            let mut args = Vec::with_capacity(12);
            if grad {
                args.push(Arg::Ptr(c.f32_in(0)?));
            }
            args.push(Arg::Ptr(c.f32_in(xj)?));
            if grad {
                args.push(Arg::Ptr(c.f32_in(2)?));
            }
            args.extend([
                Arg::Ptr(c.output(0)?),
                Arg::I64(total as i64),
                Arg::I64(sp as i64),
                Arg::I32(ch as i32),
                Arg::I32(((a.size - 1) / 2) as i32),
                Arg::I32((a.size - 1).div_ceil(2) as i32),
                Arg::F32(a.alpha / a.size as f32),
                Arg::F32(a.beta),
                Arg::F32(a.bias),
            ]);
            let name = if grad { "lm_lrn_grad" } else { "lm_lrn" };
            Ok(call(dev, name, grid_1d(total), &args)?)
        }
        other => Err(format!("{} is not a normalization", other.name()).into()),
    }
}
