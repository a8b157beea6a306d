//! LayerNormalization and LayerNormGrad (kernels/layernorm.cu), in the workspace the CPU
//! reference plans: broadcast scale/bias expanded to the normalised dims; for the gradient
//! also the per-row statistics and the column sums before they are summed to the scale's
//! shape.

use lowmem_ir::Op;
use lowmem_ir::shape::{axis as norm_axis, count};

use super::{MAX_GRID, row_launch, sum};
use crate::DevPtr;
use crate::args::{Arg, Dims, call, grid_1d};
use crate::device::Device;
use crate::device::LaunchDims;
use crate::ops::{DevCall, OpError, OpResult};

/// Input `j` (broadcasting to `norm`) as `inner` contiguous values: itself when it already
/// has them, else expanded into the workspace's `slot`-th vector of `inner` floats.
fn expanded(
    dev: &dyn Device,
    c: &DevCall,
    j: usize,
    norm: &[usize],
    slot: usize,
) -> Result<DevPtr, OpError> {
    let (p, s) = (c.f32_in(j)?, c.shape(j));
    let inner = count(norm);
    if count(s) == inner {
        return Ok(p);
    }
    let ws = c.workspace(4 * inner * (slot + 1))? + (4 * inner * slot) as u64;
    let d = Dims::broadcast(norm, s, s)?;
    call(
        dev,
        "lm_ln_expand",
        grid_1d(inner),
        &[Arg::Ptr(p), Arg::Ptr(ws), Arg::Dims(Box::new(d))],
    )?;
    Ok(ws)
}

pub(super) fn launch(dev: &dyn Device, c: &DevCall) -> OpResult {
    match *c.op {
        Op::LayerNormalization { axis, epsilon } => {
            let x = c.shape(0);
            let ax = norm_axis(axis, x.len()).ok_or("axis out of range")?;
            let (norm, inner) = (&x[ax..], count(&x[ax..]));
            let rows = count(&x[..ax]);
            let has_bias = c.n_inputs() == 3;
            if rows * inner == 0 {
                return Ok(());
            }
            let scale = expanded(dev, c, 1, norm, 0)?;
            let bias = if has_bias {
                expanded(dev, c, 2, norm, 1)?
            } else {
                0
            };
            let (dims, warp_rows) = row_launch(rows, inner);
            let args = [
                Arg::Ptr(c.f32_in(0)?),
                Arg::Ptr(scale),
                Arg::Ptr(bias),
                Arg::Ptr(c.output(0)?),
                Arg::I64(rows as i64),
                Arg::I64(inner as i64),
                Arg::F32(epsilon),
                Arg::I32(has_bias as i32),
                Arg::I32(warp_rows),
            ];
            Ok(call(dev, "lm_ln_fwd", dims, &args)?)
        }
        Op::LayerNormGrad { axis, epsilon } => {
            let x = c.shape(1);
            let ax = norm_axis(axis, x.len()).ok_or("axis out of range")?;
            let (norm, inner) = (&x[ax..], count(&x[ax..]));
            let rows = count(&x[..ax]);
            let s_shape = c.shape(2);
            let n_scale = count(s_shape);
            let (dx, ds, db) = (c.output(0)?, c.output(1)?, c.output(2)?);
            if rows * inner == 0 {
                dev.fill(ds, 0, 4 * n_scale)?;
                dev.fill(db, 0, 4 * n_scale)?;
                return Ok(());
            }
            // Workspace: scale expanded [inner], column sums [inner] x 2, stats [2 * rows].
            let ws = c.workspace(4 * (3 * inner + 2 * rows))?;
            let at = |k: usize| ws + 4 * k as u64;
            let scale = expanded(dev, c, 2, norm, 0)?;
            let stats = at(3 * inner);
            let (dims_r, warp_rows) = row_launch(rows, inner);
            let args = [
                Arg::Ptr(c.f32_in(0)?),
                Arg::Ptr(c.f32_in(1)?),
                Arg::Ptr(scale),
                Arg::Ptr(dx),
                Arg::Ptr(stats),
                Arg::I64(rows as i64),
                Arg::I64(inner as i64),
                Arg::F32(epsilon),
                Arg::I32(warp_rows),
            ];
            call(dev, "lm_ln_grad_rows", dims_r, &args)?;
            let full = n_scale == inner;
            let (gs, bs) = if full {
                (ds, db)
            } else {
                (at(inner), at(2 * inner))
            };
            // Block (32 columns, by row lanes); few column blocks get more lanes.
            let bx = inner.next_power_of_two().min(32);
            let blocks = inner.div_ceil(bx);
            let threads = if blocks < 128 { 1024 } else { 256 };
            let by = (threads / bx).min(rows.next_power_of_two());
            let args = [
                Arg::Ptr(c.f32_in(0)?),
                Arg::Ptr(c.f32_in(1)?),
                Arg::Ptr(stats),
                Arg::Ptr(gs),
                Arg::Ptr(bs),
                Arg::I64(rows as i64),
                Arg::I64(inner as i64),
            ];
            let grid = blocks.clamp(1, MAX_GRID) as u32;
            call(
                dev,
                "lm_ln_grad_cols",
                LaunchDims::new([grid, 1, 1], [bx as u32, by as u32, 1]),
                &args,
            )?;
            if !full {
                // Sum the column sums down to the scale's shape, as SumTo does.
                let pad = norm.len() - s_shape.len();
                let red: Vec<bool> = (0..norm.len())
                    .map(|i| i < pad || (s_shape[i - pad] == 1 && norm[i] != 1))
                    .collect();
                sum::reduce(dev, gs, norm, &red, false, ds)?;
                sum::reduce(dev, bs, norm, &red, false, db)?;
            }
            Ok(())
        }
        ref op => Err(format!("{} is not a layer norm", op.name()).into()),
    }
}
