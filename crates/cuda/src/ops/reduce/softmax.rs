//! Softmax, LogSoftmax and their gradients (kernels/softmax.cu).

use lowmem_ir::Op;
use lowmem_ir::shape::{axis as norm_axis, count};

use super::row_launch;
use crate::args::{Arg, call, grid_1d};
use crate::device::Device;
use crate::ops::{DevCall, OpResult};

pub(super) fn launch(dev: &dyn Device, c: &DevCall) -> OpResult {
    let (a, mode, grad) = match c.op {
        Op::Softmax(a) => (a, 0, false),
        Op::LogSoftmax(a) => (a, 1, false),
        Op::SoftmaxGrad(a) => (a, 2, true),
        Op::LogSoftmaxGrad(a) => (a, 3, true),
        op => return Err(format!("{} is not a softmax", op.name()).into()),
    };
    // Forward: x. Gradients: dy, then the forward's output y (whose shape this is).
    let shape = c.shape(usize::from(grad));
    let r = shape.len();
    let ax = norm_axis(a.axis, r)
        .ok_or_else(|| format!("axis {} is out of range for rank {r}", a.axis))?;
    let n = count(shape);
    if n == 0 {
        return Ok(());
    }
    let (len, inner) = if a.legacy {
        (count(&shape[ax..]), 1)
    } else {
        (shape[ax], count(&shape[ax + 1..]))
    };
    let rows = n / len;
    let (x, y) = (c.f32_in(0)?, c.output(0)?);
    let b = if grad { c.f32_in(1)? } else { x };
    let mut args = vec![
        Arg::Ptr(x),
        Arg::Ptr(b),
        Arg::Ptr(y),
        Arg::I64(rows as i64),
        Arg::I64(len as i64),
        Arg::I64(inner as i64),
        Arg::I32(mode),
    ];
    if inner > 1 && rows >= 2048 {
        // Strided rows, many of them: a thread per row reads coalesced runs along j.
        return Ok(call(dev, "lm_softmax_cols", grid_1d(rows), &args)?);
    }
    let (dims, warp_rows) = row_launch(rows, len);
    args.push(Arg::I32(warp_rows));
    Ok(call(dev, "lm_softmax_rows", dims, &args)?)
}
