//! ReduceSum, ReduceMean, SumTo and GlobalAveragePool as one strided sum (`lm_reduce`), and
//! GlobalAveragePool's gradient.

use lowmem_ir::Op;
use lowmem_ir::shape::{axis as norm_axis, count};

use super::MAX_GRID;
use crate::DevPtr;
use crate::args::{Arg, Dims, call};
use crate::device::Device;
use crate::device::LaunchDims;
use crate::ops::{DevCall, OpResult};

pub(super) fn launch(dev: &dyn Device, c: &DevCall) -> OpResult {
    let shape = c.shape(0);
    let r = shape.len();
    let (x, y) = (c.f32_in(0)?, c.output(0)?);
    match c.op {
        Op::ReduceSum(a) | Op::ReduceMean(a) => {
            let mut red = vec![a.axes.is_none(); r];
            for &v in a.axes.iter().flatten() {
                let i = norm_axis(v, r)
                    .ok_or_else(|| format!("axis {v} is out of range for rank {r}"))?;
                if red[i] {
                    return Err(format!("axis {v} is repeated").into());
                }
                red[i] = true;
            }
            reduce(dev, x, shape, &red, matches!(c.op, Op::ReduceMean(_)), y)
        }
        Op::SumTo { shape: to } => {
            let pad = r
                .checked_sub(to.len())
                .ok_or_else(|| format!("{to:?} has a higher rank than the input {shape:?}"))?;
            let red: Vec<bool> = (0..r)
                .map(|i| i < pad || (to[i - pad] == 1 && shape[i] != 1))
                .collect();
            reduce(dev, x, shape, &red, false, y)
        }
        Op::GlobalAveragePool => {
            let red: Vec<bool> = (0..r).map(|i| i >= 2).collect();
            reduce(dev, x, shape, &red, true, y)
        }
        Op::GlobalAveragePoolGrad { input_shape } => {
            if input_shape.len() < 2 {
                return Err(format!("input shape {input_shape:?} has no [N, C]").into());
            }
            let planes = input_shape[0] * input_shape[1];
            let plane = count(&input_shape[2..]);
            if planes == 0 || plane == 0 {
                return Ok(());
            }
            let gx = plane.div_ceil(256).clamp(1, 1024) as u32;
            let gy = planes.clamp(1, 65535) as u32;
            let args = [
                Arg::Ptr(x),
                Arg::Ptr(y),
                Arg::I64(planes as i64),
                Arg::I64(plane as i64),
            ];
            Ok(call(
                dev,
                "lm_reduce_gap_grad",
                LaunchDims::new([gx, gy, 1], [256, 1, 1]),
                &args,
            )?)
        }
        op => Err(format!("{} is not a sum", op.name()).into()),
    }
}

/// `y` = the sum (or mean) of `x` of `shape` over the dims flagged in `red`; `y` holds the
/// kept dims in order. Adjacent dims of the same kind are merged and size-1 dims dropped,
/// so e.g. a conv bias gradient [N, C, H, W] -> [C] is (reduce N, keep C, reduce H*W).
pub(super) fn reduce(
    dev: &dyn Device,
    x: DevPtr,
    shape: &[usize],
    red: &[bool],
    mean: bool,
    y: DevPtr,
) -> OpResult {
    let n_out: usize = shape
        .iter()
        .zip(red)
        .filter(|(_, r)| !**r)
        .map(|(d, _)| *d)
        .product();
    if n_out == 0 {
        return Ok(());
    }
    // Runs of (reduced, size, stride of the innermost dim), outermost first.
    let mut runs: Vec<(bool, usize, i64)> = Vec::new();
    let mut stride = 1i64;
    for (&d, &rd) in shape.iter().zip(red).rev() {
        if d != 1 {
            match runs.last_mut() {
                Some(last) if last.0 == rd => last.1 *= d,
                _ => runs.push((rd, d, stride)),
            }
        }
        stride *= d as i64;
    }
    runs.reverse();
    let inner_reduced = runs.last().is_some_and(|r| r.0);
    let kept: Vec<&(bool, usize, i64)> = runs.iter().filter(|r| !r.0).collect();
    let mut reduced: Vec<&(bool, usize, i64)> = runs.iter().filter(|r| r.0).collect();
    let (len, step) = reduced.pop().map_or((1, 0), |r| (r.1, r.2));
    let view = |rs: &[&(bool, usize, i64)]| -> Result<Dims, String> {
        let s: Vec<usize> = rs.iter().map(|r| r.1).collect();
        let st: Vec<i64> = rs.iter().map(|r| r.2).collect();
        Dims::from_strides(&s, &st, &vec![0; s.len()])
    };
    let (kd, rd) = (view(&kept)?, view(&reduced)?);
    let nq: usize = reduced.iter().map(|r| r.1).product();
    let n_red = nq * len;
    // Block (bx, by): by lanes of the reduction per output, bx outputs side by side. With the
    // reduced run innermost the lanes read consecutive elements; with a kept run innermost
    // up to 32 consecutive outputs do. Few outputs get 1024 threads, many 256.
    let shape_for = |threads: usize| -> (usize, usize) {
        if inner_reduced || kept.is_empty() {
            let by = n_red.next_power_of_two().min(threads);
            (threads / by, by)
        } else {
            let bx = kept.last().map_or(1, |k| k.1).next_power_of_two().min(32);
            (bx, (threads / bx).min(n_red.next_power_of_two()))
        }
    };
    let (mut bx, mut by) = shape_for(256);
    if n_out.div_ceil(bx) < 128 {
        (bx, by) = shape_for(1024);
    }
    let grid = n_out.div_ceil(bx).clamp(1, MAX_GRID) as u32;
    let args = [
        Arg::Ptr(x),
        Arg::Ptr(y),
        Arg::Dims(Box::new(kd)),
        Arg::Dims(Box::new(rd)),
        Arg::I64(n_out as i64),
        Arg::I64(nq as i64),
        Arg::I64(len as i64),
        Arg::I64(step),
        Arg::I32(mean as i32),
    ];
    Ok(call(
        dev,
        "lm_reduce",
        LaunchDims::new([grid, 1, 1], [bx as u32, by as u32, 1]),
        &args,
    )?)
}
