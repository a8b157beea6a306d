//! The memory rewrites' ops (kernels/sparse.cu): SliceWindow and its adjoint, ReluMask and
//! ReluMaskGrad, TopK (a radix select, then an ordered compaction) and TopKScatter.

use lowmem_ir::scratch::{TOPK_CHUNK, TOPK_STATE, topk_workspace_len};
use lowmem_ir::shape::count;
use lowmem_ir::{DType, Op};

use super::{DevCall, OpResult};
use crate::DevPtr;
use crate::args::{Arg, BLOCK, call, grid_1d};
use crate::device::{Device, LaunchDims};

/// Threads of `lm_topk_scan`'s one block (the kernel's `LM_TOPK_SCAN`).
const SCAN_BLOCK: u32 = 1024;

/// Most blocks of a `lm_topk_hist` pass: each adds its 256 bins to the global histogram,
/// so more blocks only add atomics (the grid-stride loop covers any `n`).
const HIST_BLOCKS: usize = 1024;

/// Threads per block of the one-thread-per-chunk kernels (small blocks spread the few
/// chunks over more multiprocessors).
const CHUNK_BLOCK: u32 = 64;

/// The step input (an i64 scalar on the device).
fn step(c: &DevCall, j: usize) -> Result<DevPtr, super::OpError> {
    if c.io.in_dtypes()[j] != DType::I64 || count(c.shape(j)) != 1 {
        return Err(format!("input {j} must be an i64 scalar (the step)").into());
    }
    c.input(j)
}

/// `(outer, units, inner)` of `shape` around `axis`.
fn around(shape: &[usize], axis: usize) -> Result<(usize, usize, usize), String> {
    if axis >= shape.len() {
        return Err(format!("axis {axis} is out of range for {shape:?}"));
    }
    Ok((
        count(&shape[..axis]),
        shape[axis],
        count(&shape[axis + 1..]),
    ))
}

pub(super) fn launch(dev: &dyn Device, c: &DevCall) -> OpResult {
    match c.op {
        Op::SliceWindow { axis, seed, .. } | Op::SliceWindowGrad { axis, seed, .. } => {
            let (x, s, y) = (c.f32_in(0)?, step(c, 1)?, c.output(0)?);
            let (_, n, inner) = around(c.shape(0), *axis)?;
            let (_, m, _) = around(c.out_shape(0), *axis)?;
            let total = count(c.out_shape(0));
            // The window of k units within the axis of n units.
            let (name, n, k) = match c.op {
                Op::SliceWindow { .. } => ("lm_slice_window", n, m),
                _ => ("lm_slice_window_grad", m, n),
            };
            let args = [
                Arg::Ptr(x),
                Arg::Ptr(y),
                Arg::I64(total as i64),
                Arg::I64(n as i64),
                Arg::I64(k as i64),
                Arg::I64(inner as i64),
                Arg::U64(*seed),
                Arg::Ptr(s),
            ];
            Ok(call(dev, name, grid_1d(total), &args)?)
        }
        Op::ReluMask => {
            let (y, mask) = (c.f32_in(0)?, c.output(0)?);
            let n = count(c.shape(0));
            let bytes = n.div_ceil(8);
            let args = [
                Arg::Ptr(y),
                Arg::Ptr(mask),
                Arg::I64(n as i64),
                Arg::I64(bytes as i64),
            ];
            Ok(call(dev, "lm_relu_mask", grid_1d(bytes), &args)?)
        }
        Op::ReluMaskGrad => {
            // dx may overwrite dy in place (then `f32_in(0)` is dx's address).
            let (dy, mask, dx) = (c.f32_in(0)?, c.input(1)?, c.output(0)?);
            if c.io.in_dtypes()[1] != DType::U8 {
                return Err(format!("mask has dtype {}, expected u8", c.io.in_dtypes()[1]).into());
            }
            let n = count(c.shape(0));
            let args = [
                Arg::Ptr(dy),
                Arg::Ptr(mask),
                Arg::Ptr(dx),
                Arg::I64(n as i64),
            ];
            Ok(call(dev, "lm_relu_mask_grad", grid_1d(n), &args)?)
        }
        Op::TopK { k } => topk(dev, c, *k),
        Op::TopKScatter { .. } => {
            let (values, y) = (c.f32_in(0)?, c.output(0)?);
            if c.io.in_dtypes()[1] != DType::I32 {
                return Err(
                    format!("indices have dtype {}, expected i32", c.io.in_dtypes()[1]).into(),
                );
            }
            let (k, n) = (count(c.shape(0)), count(c.out_shape(0)));
            dev.fill(y, 0, 4 * n)?;
            let args = [
                Arg::Ptr(values),
                Arg::Ptr(c.input(1)?),
                Arg::Ptr(y),
                Arg::I64(k as i64),
                Arg::I64(n as i64),
            ];
            Ok(call(dev, "lm_topk_scatter", grid_1d(k), &args)?)
        }
        _ => Err(format!("{} is not a rewrite op", c.op.name()).into()),
    }
}

/// TopK: four radix-select passes of 8 bits over the magnitude keys (histogram, then one
/// block picks the digit), then count, scan and place per chunk of `TOPK_CHUNK` elements,
/// all in the planned workspace of `topk_workspace_len(n)` u32 slots.
fn topk(dev: &dyn Device, c: &DevCall, k: usize) -> OpResult {
    let x = c.f32_in(0)?;
    let (values, indices) = (c.output(0)?, c.output(1)?);
    let n = count(c.shape(0));
    if k == 0 || k > n || n > i32::MAX as usize {
        return Err(format!("keeps {k} of {n} elements (needs 1 <= k <= n < 2^31)").into());
    }
    let ws = c.workspace(4 * topk_workspace_len(n))?;
    let chunks = n.div_ceil(TOPK_CHUNK);
    // The histogram and the state start at zero.
    dev.fill(ws, 0, 4 * TOPK_STATE)?;
    let hist = LaunchDims::new(
        [
            n.div_ceil(BLOCK as usize).clamp(1, HIST_BLOCKS) as u32,
            1,
            1,
        ],
        [256, 1, 1],
    );
    let one_block = LaunchDims::new([1, 1, 1], [256, 1, 1]);
    for pass in 0..4 {
        let shift = 24 - 8 * pass;
        let args = [
            Arg::Ptr(x),
            Arg::I64(n as i64),
            Arg::Ptr(ws),
            Arg::I32(shift),
        ];
        call(dev, "lm_topk_hist", hist, &args)?;
        let args = [
            Arg::Ptr(ws),
            Arg::I32(shift),
            Arg::I32(k as i32),
            Arg::I32((pass == 0) as i32),
        ];
        call(dev, "lm_topk_select", one_block, &args)?;
    }
    let per_chunk = [
        Arg::Ptr(x),
        Arg::I64(n as i64),
        Arg::Ptr(ws),
        Arg::I64(chunks as i64),
    ];
    let per_chunk_dims = LaunchDims::new(
        [
            chunks.div_ceil(CHUNK_BLOCK as usize).clamp(1, 1 << 16) as u32,
            1,
            1,
        ],
        [CHUNK_BLOCK, 1, 1],
    );
    call(dev, "lm_topk_count", per_chunk_dims, &per_chunk)?;
    let args = [Arg::Ptr(ws), Arg::I64(chunks as i64)];
    let scan = LaunchDims::new([1, 1, 1], [SCAN_BLOCK, 1, 1]);
    call(dev, "lm_topk_scan", scan, &args)?;
    let args = [
        Arg::Ptr(x),
        Arg::I64(n as i64),
        Arg::Ptr(ws),
        Arg::I64(chunks as i64),
        Arg::Ptr(values),
        Arg::Ptr(indices),
    ];
    Ok(call(dev, "lm_topk_place", per_chunk_dims, &args)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels' copies of the workspace layout and block size match the Rust side's.
    #[test]
    fn kernel_constants_match() {
        let (_, src) = crate::source::FILES
            .iter()
            .find(|(f, _)| *f == "sparse")
            .unwrap();
        for line in [
            format!("#define LM_TOPK_CHUNK {TOPK_CHUNK}\n"),
            format!("#define LM_TOPK_STATE {TOPK_STATE}\n"),
            format!("#define LM_TOPK_SCAN {SCAN_BLOCK}\n"),
        ] {
            assert!(src.contains(&line), "kernels/sparse.cu lacks {line:?}");
        }
    }
}
