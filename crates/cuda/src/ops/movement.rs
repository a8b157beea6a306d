//! Expand, Slice, Transpose and Concat as strided copies (kernels/movement.cu), on elements
//! of any width.

use lowmem_ir::Op;
use lowmem_ir::shape::axis as norm_axis;

use super::{DevCall, OpResult};
use crate::DevPtr;
use crate::args::{Arg, Dims, call, grid_1d};
use crate::device::Device;

fn contiguous(shape: &[usize]) -> Vec<i64> {
    let mut st = vec![0i64; shape.len()];
    let mut acc = 1i64;
    for (s, &d) in st.iter_mut().zip(shape).rev() {
        *s = acc;
        acc *= d as i64;
    }
    st
}

/// Copies the view `d` (source strides `sa`, destination strides `sb`) of `width`-byte
/// elements.
fn copy(dev: &dyn Device, src: DevPtr, dst: DevPtr, d: Dims, width: usize) -> OpResult {
    let name = match width {
        1 => "lm_copy_1",
        2 => "lm_copy_2",
        4 => "lm_copy_4",
        8 => "lm_copy_8",
        w => return Err(format!("no copy kernel for {w}-byte elements").into()),
    };
    let n = d.n as usize;
    if n == 0 {
        return Ok(());
    }
    let args = [Arg::Ptr(src), Arg::Ptr(dst), Arg::Dims(Box::new(d))];
    Ok(call(dev, name, grid_1d(n), &args)?)
}

/// `src` of shape `from` broadcast into `dst` of shape `to`.
pub(super) fn expand(
    dev: &dyn Device,
    src: DevPtr,
    from: &[usize],
    dst: DevPtr,
    to: &[usize],
    width: usize,
) -> OpResult {
    let d = Dims::broadcast(to, from, to)?;
    copy(dev, src, dst, d, width)
}

pub(super) fn launch(dev: &dyn Device, c: &DevCall) -> OpResult {
    let dt = c.io.in_dtypes()[0];
    if c.io.out_dtypes()[0] != dt {
        return Err("the output's dtype differs from the input's".into());
    }
    let w = dt.size();
    let (x, y) = (c.input(0)?, c.output(0)?);
    let (s0, so) = (c.shape(0), c.out_shape(0));
    match c.op {
        Op::Expand { .. } => expand(dev, x, s0, y, so, w),
        Op::Slice { axis, start, .. } => {
            let st = contiguous(s0);
            let base =
                x + (*start as u64) * (st.get(*axis).copied().unwrap_or(0) as u64) * w as u64;
            let d = Dims::from_strides(so, &st, &contiguous(so))?;
            copy(dev, base, y, d, w)
        }
        Op::Transpose { perm } => {
            let r = s0.len();
            let p: Vec<usize> = match perm {
                Some(q) if q.len() == r => q.clone(),
                Some(q) => return Err(format!("perm {q:?} does not fit rank {r}").into()),
                None => (0..r).rev().collect(),
            };
            let st = contiguous(s0);
            let sa: Vec<i64> = p.iter().map(|&i| st[i]).collect();
            let d = Dims::from_strides(so, &sa, &contiguous(so))?;
            copy(dev, x, y, d, w)
        }
        Op::Concat { axis } => {
            let ax = norm_axis(*axis, s0.len()).ok_or("axis out of range")?;
            let ost = contiguous(so);
            let mut at = 0usize;
            for j in 0..c.n_inputs() {
                if c.io.in_dtypes()[j] != dt {
                    return Err(format!(
                        "input {j} has dtype {} but input 0 has {dt}",
                        c.io.in_dtypes()[j]
                    )
                    .into());
                }
                let sj = c.shape(j);
                let dst = y + (at as u64) * (ost[ax] as u64) * w as u64;
                let d = Dims::from_strides(sj, &contiguous(sj), &ost)?;
                copy(dev, c.input(j)?, dst, d, w)?;
                at += sj[ax];
            }
            Ok(())
        }
        other => Err(format!("{} is not a data-movement op", other.name()).into()),
    }
}
