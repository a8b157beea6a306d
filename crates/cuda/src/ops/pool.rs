//! Max and average pooling and their gradients (kernels/pool.cu), one thread per output
//! (forward) or per input element (gradients, gathered: no atomics).

use lowmem_ir::Op;
use lowmem_ir::shape::count;

use super::conv::{geo, geo_dims, window};
use super::{DevCall, OpResult};
use crate::args::{Arg, call, grid_1d};
use crate::device::Device;

pub(super) fn launch(dev: &dyn Device, c: &DevCall) -> OpResult {
    let g = geo(window(c)?)?;
    let dims = || Arg::Dims(Box::new(geo_dims(&g)));
    match c.op {
        Op::MaxPool(_) | Op::AveragePool(_) => {
            let n = count(c.out_shape(0));
            if n == 0 {
                return Ok(());
            }
            let (x, y) = (c.f32_in(0)?, c.output(0)?);
            let mut args = vec![Arg::Ptr(x), Arg::Ptr(y), Arg::I64(n as i64), dims()];
            let name = match c.op {
                Op::AveragePool(a) => {
                    args.push(Arg::I32(a.count_include_pad as i32));
                    "lm_avgpool"
                }
                _ => "lm_maxpool",
            };
            Ok(call(dev, name, grid_1d(n), &args)?)
        }
        Op::MaxPoolGrad(_) => {
            let n = count(c.out_shape(0));
            if n == 0 {
                return Ok(());
            }
            let (dy, x, dx) = (c.f32_in(0)?, c.f32_in(1)?, c.output(0)?);
            let args = [
                Arg::Ptr(dy),
                Arg::Ptr(x),
                Arg::Ptr(dx),
                Arg::I64(n as i64),
                dims(),
            ];
            Ok(call(dev, "lm_maxpool_grad", grid_1d(n), &args)?)
        }
        Op::AveragePoolGrad { pool, .. } => {
            let n = count(c.out_shape(0));
            if n == 0 {
                return Ok(());
            }
            let (dy, dx) = (c.f32_in(0)?, c.output(0)?);
            let args = [
                Arg::Ptr(dy),
                Arg::Ptr(dx),
                Arg::I64(n as i64),
                dims(),
                Arg::I32(pool.count_include_pad as i32),
            ];
            Ok(call(dev, "lm_avgpool_grad", grid_1d(n), &args)?)
        }
        other => Err(format!("{} is not a pooling op", other.name()).into()),
    }
}
