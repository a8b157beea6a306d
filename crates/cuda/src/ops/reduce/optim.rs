//! SgdUpdate and AdamUpdate (kernels/optim.cu): each kernel reads the inputs and writes the
//! outputs, which may be the same memory (in place), so no copy precedes it.

use lowmem_ir::shape::count;
use lowmem_ir::{DType, Op};

use crate::args::{Arg, call, grid_1d};
use crate::device::Device;
use crate::ops::{DevCall, OpResult};

pub(super) fn launch(dev: &dyn Device, c: &DevCall) -> OpResult {
    let n = count(c.shape(0));
    match *c.op {
        Op::SgdUpdate {
            lr,
            momentum,
            weight_decay,
        } => {
            let with_v = momentum != 0.0;
            if c.outs.len() != 1 + usize::from(with_v) {
                return Err(format!("SgdUpdate cannot produce {} outputs", c.outs.len()).into());
            }
            let (v_in, v) = if with_v {
                (c.f32_in(2)?, c.output(1)?)
            } else {
                (0, 0)
            };
            let (w_in, g, w) = (c.f32_in(0)?, c.f32_in(1)?, c.output(0)?);
            if n == 0 {
                return Ok(());
            }
            let args = [
                Arg::Ptr(w_in),
                Arg::Ptr(g),
                Arg::Ptr(v_in),
                Arg::Ptr(w),
                Arg::Ptr(v),
                Arg::I64(n as i64),
                Arg::F32(lr),
                Arg::F32(momentum),
                Arg::F32(weight_decay),
                Arg::I32(with_v as i32),
            ];
            Ok(call(dev, "lm_sgd", grid_1d(n), &args)?)
        }
        Op::AdamUpdate {
            lr,
            beta1,
            beta2,
            epsilon,
            weight_decay,
            decoupled,
        } => {
            if c.io.in_dtypes()[4] != DType::I64 || count(c.shape(4)) != 1 {
                return Err("input 4 must be an i64 scalar (the step)".into());
            }
            if c.outs.len() != 3 {
                return Err(format!("AdamUpdate cannot produce {} outputs", c.outs.len()).into());
            }
            let ins = [c.f32_in(0)?, c.f32_in(1)?, c.f32_in(2)?, c.f32_in(3)?];
            if n == 0 {
                return Ok(());
            }
            let args = [
                Arg::Ptr(ins[0]),
                Arg::Ptr(ins[1]),
                Arg::Ptr(ins[2]),
                Arg::Ptr(ins[3]),
                Arg::Ptr(c.input(4)?),
                Arg::Ptr(c.output(0)?),
                Arg::Ptr(c.output(1)?),
                Arg::Ptr(c.output(2)?),
                Arg::I64(n as i64),
                Arg::F32(lr),
                Arg::F32(beta1),
                Arg::F32(beta2),
                Arg::F32(epsilon),
                Arg::F32(weight_decay),
                Arg::I32(decoupled as i32),
            ];
            Ok(call(dev, "lm_adam", grid_1d(n), &args)?)
        }
        ref op => Err(format!("{} is not an optimizer step", op.name()).into()),
    }
}
