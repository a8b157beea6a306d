//! Convolutions: im2col / col2im (kernels/im2col.cu) and the device's SGEMM, one image and
//! one group at a time in the CPU executor's order and workspace layout (the plan reserves
//! `lowmem_ir::scratch::conv_workspace_len` on both backends: the columns, then GEMM
//! scratch); pointwise convolutions as GEMMs straight on the tensors; depthwise ones by
//! direct kernels (kernels/conv_direct.cu).

use lowmem_ir::{Op, Window};

use super::{DevCall, OpError, OpResult};
use crate::DevPtr;
use crate::args::{Arg, BLOCK, Dims, MAX_RANK, call, grid_1d};
use crate::device::{Device, Gemm, LaunchDims};

pub(super) use lowmem_exec::kernels::{ConvDims, Geo};

/// The window's geometry (the CPU kernels' [`Geo`]), checked against the kernels' 32-bit
/// indexing of planes and windows.
pub(super) fn geo(win: &Window) -> Result<Geo, OpError> {
    let g = Geo::try_new(win)?;
    check_geo(&g)?;
    Ok(g)
}

fn check_geo(g: &Geo) -> Result<(), OpError> {
    let big = [g.ksize(), g.isize(), g.osize()]
        .into_iter()
        .chain(g.k.iter().zip(&g.d).map(|(k, d)| k * d))
        .chain(g.pb.iter().chain(&g.pe).chain(&g.s).copied())
        .any(|v| v > i32::MAX as usize / 4);
    if big {
        return Err("window too large for the 32-bit indexing of the kernels".into());
    }
    Ok(())
}

/// The window as the kernels take it (see kernels/im2col.cu): kernel, strides, dilations
/// and pad_begin in `shape`; input, output and pad_end in `sa`.
pub(super) fn geo_dims(g: &Geo) -> Dims {
    let mut d = Dims {
        rank: 3,
        pad: 0,
        n: 0,
        shape: [0; MAX_RANK],
        sa: [0; MAX_RANK],
        sb: [0; MAX_RANK],
    };
    for a in 0..3 {
        d.shape[a] = g.k[a] as i64;
        d.shape[3 + a] = g.s[a] as i64;
        d.shape[6 + a] = g.d[a] as i64;
        d.shape[9 + a] = g.pb[a] as i64;
        d.sa[a] = g.i[a] as i64;
        d.sa[3 + a] = g.o[a] as i64;
        d.sa[6 + a] = g.pe[a] as i64;
    }
    d
}

/// The node's window, resolved ahead by the executor.
pub(super) fn window<'a>(c: &DevCall<'a>) -> Result<&'a Window, OpError> {
    c.io.window()
        .ok_or_else(|| OpError::from(format!("{} has no resolved window", c.op.name())))
}

/// A conv's sizes: the CPU kernels' [`ConvDims`] (batch `n`, channels `c` in and `m` out,
/// per group `cg` and `mg`, kernel taps `kk`, output and input positions `p`, `isz`),
/// checked for the kernels' 32-bit indexing, with the group count and whether the
/// convolution runs depthwise.
struct Sizes {
    d: ConvDims,
    group: usize,
    depthwise: bool,
}

impl std::ops::Deref for Sizes {
    type Target = ConvDims;
    fn deref(&self) -> &ConvDims {
        &self.d
    }
}

impl Sizes {
    fn new(x: &[usize], w: &[usize], win: &Window, group: usize) -> Result<Sizes, OpError> {
        let d = ConvDims::try_new(x, w, win, group)?;
        check_geo(&d.g)?;
        // The im2col kernels index one group's columns and planes with ints.
        if d.cg * d.kk * d.p > i32::MAX as usize || d.c * d.isz > i32::MAX as usize {
            return Err("convolution too large for the 32-bit indexing of im2col".into());
        }
        Ok(Sizes {
            d,
            group,
            depthwise: lowmem_ir::scratch::conv_is_depthwise(x, w, group),
        })
    }

    /// Columns (f32) one group's im2col needs: none for pointwise convolutions.
    fn cols(&self) -> usize {
        if self.g.pointwise() {
            0
        } else {
            self.cg * self.kk * self.p
        }
    }
}

/// The planned workspace split into the columns (`cols` floats) and the GEMM's scratch.
fn split_ws(c: &DevCall, cols: usize) -> Result<(DevPtr, (DevPtr, usize)), OpError> {
    let col = c.workspace(4 * cols)?;
    let rest = match c.ws {
        Some((p, bytes)) => (p + 4 * cols as u64, bytes - 4 * cols),
        None => (0, 0),
    };
    Ok((col, rest))
}

/// A plain (unbatched) GEMM.
#[allow(clippy::too_many_arguments)]
fn gemm(
    (m, n, k): (usize, usize, usize),
    (a, lda, trans_a): (DevPtr, usize, bool),
    (b, ldb, trans_b): (DevPtr, usize, bool),
    beta: f32,
    (cp, ldc): (DevPtr, usize),
    workspace: (DevPtr, usize),
) -> Gemm {
    Gemm {
        trans_a,
        trans_b,
        m,
        n,
        k,
        alpha: 1.0,
        a,
        lda,
        stride_a: 0,
        b,
        ldb,
        stride_b: 0,
        beta,
        c: cp,
        ldc,
        stride_c: 0,
        batch: 1,
        workspace,
    }
}

fn f(addr: DevPtr, elems: usize) -> DevPtr {
    addr + 4 * elems as u64
}

pub(super) fn launch(dev: &dyn Device, c: &DevCall) -> OpResult {
    let win = window(c)?;
    match c.op {
        Op::Conv(a) => {
            let s = Sizes::new(c.shape(0), c.shape(1), win, a.group)?;
            let bias = if c.n_inputs() == 3 {
                Some(c.f32_in(2)?)
            } else {
                None
            };
            forward(dev, c, &s, c.f32_in(0)?, c.f32_in(1)?, bias)
        }
        Op::ConvBackwardData { conv, input_shape } => {
            let s = Sizes::new(input_shape, c.shape(1), win, conv.group)?;
            backward_data(dev, c, &s, c.f32_in(0)?, c.f32_in(1)?)
        }
        Op::ConvBackwardFilter { conv, weight_shape } => {
            let s = Sizes::new(c.shape(1), weight_shape, win, conv.group)?;
            backward_filter(dev, c, &s, c.f32_in(0)?, c.f32_in(1)?)
        }
        other => Err(format!("{} is not a convolution", other.name()).into()),
    }
}

fn forward(
    dev: &dyn Device,
    c: &DevCall,
    s: &Sizes,
    x: DevPtr,
    w: DevPtr,
    bias: Option<DevPtr>,
) -> OpResult {
    let y = c.output(0)?;
    let total = s.n * s.m * s.p;
    if total == 0 {
        return Ok(());
    }
    if s.depthwise {
        let args = [
            Arg::Ptr(x),
            Arg::Ptr(w),
            Arg::Ptr(bias.unwrap_or(0)),
            Arg::Ptr(y),
            Arg::I64(total as i64),
            Arg::I32(s.c as i32),
            Arg::I32(s.mg as i32),
            Arg::Dims(Box::new(geo_dims(&s.g))),
        ];
        return Ok(call(dev, "lm_dw_conv", grid_1d(total), &args)?);
    }
    // Bias first, then the products added onto it (beta = 1), as the CPU does.
    let beta = match bias {
        Some(b) => {
            let args = [
                Arg::Ptr(y),
                Arg::Ptr(b),
                Arg::I64(total as i64),
                Arg::I32(s.m as i32),
                Arg::I32(s.p as i32),
            ];
            call(dev, "lm_conv_fill_bias", grid_1d(total), &args)?;
            1.0
        }
        None => 0.0,
    };
    let cols = s.cols();
    let (col, gws) = split_ws(c, cols)?;
    let (cg, mg, kk, p) = (s.cg, s.mg, s.kk, s.p);
    for gi in 0..s.group {
        let wg = f(w, gi * mg * cg * kk);
        if cols == 0 {
            // Y_g = W_g X_g for every image in one strided batched GEMM.
            let mut g = gemm(
                (mg, p, cg),
                (wg, cg, false),
                (f(x, gi * cg * s.isz), p, false),
                beta,
                (f(y, gi * mg * p), p),
                gws,
            );
            g.batch = s.n;
            g.stride_b = s.c * s.isz;
            g.stride_c = s.m * p;
            // SAFETY: planned tensors of the shapes above.
            unsafe { dev.gemm(&g) }?;
            continue;
        }
        for b in 0..s.n {
            let xg = f(x, (b * s.c + gi * cg) * s.isz);
            im2col(dev, xg, cg, &s.g, col)?;
            let g = gemm(
                (mg, p, cg * kk),
                (wg, cg * kk, false),
                (col, p, false),
                beta,
                (f(y, (b * s.m + gi * mg) * p), p),
                gws,
            );
            // SAFETY: planned tensors and the planned columns.
            unsafe { dev.gemm(&g) }?;
        }
    }
    Ok(())
}

fn im2col(dev: &dyn Device, x: DevPtr, channels: usize, g: &Geo, col: DevPtr) -> OpResult {
    let n = channels * g.ksize() * g.osize();
    let args = [
        Arg::Ptr(x),
        Arg::Ptr(col),
        Arg::I32(channels as i32),
        Arg::Dims(Box::new(geo_dims(g))),
    ];
    Ok(call(dev, "lm_im2col", grid_1d(n), &args)?)
}

fn backward_data(dev: &dyn Device, c: &DevCall, s: &Sizes, dy: DevPtr, w: DevPtr) -> OpResult {
    let dx = c.output(0)?;
    let total = s.n * s.c * s.isz;
    if total == 0 {
        return Ok(());
    }
    if s.depthwise {
        let args = [
            Arg::Ptr(dy),
            Arg::Ptr(w),
            Arg::Ptr(dx),
            Arg::I64(total as i64),
            Arg::I32(s.c as i32),
            Arg::I32(s.mg as i32),
            Arg::Dims(Box::new(geo_dims(&s.g))),
        ];
        return Ok(call(dev, "lm_dw_data", grid_1d(total), &args)?);
    }
    let cols = s.cols();
    let (col, gws) = split_ws(c, cols)?;
    let (cg, mg, kk, p) = (s.cg, s.mg, s.kk, s.p);
    for gi in 0..s.group {
        let wg = f(w, gi * mg * cg * kk);
        if cols == 0 {
            // dX_g = W_g^T dY_g for every image in one strided batched GEMM.
            let mut g = gemm(
                (cg, p, mg),
                (wg, cg, true),
                (f(dy, gi * mg * p), p, false),
                0.0,
                (f(dx, gi * cg * s.isz), s.isz),
                gws,
            );
            g.batch = s.n;
            g.stride_b = s.m * p;
            g.stride_c = s.c * s.isz;
            // SAFETY: planned tensors of the shapes above.
            unsafe { dev.gemm(&g) }?;
            continue;
        }
        for b in 0..s.n {
            let g = gemm(
                (cg * kk, p, mg),
                (wg, cg * kk, true),
                (f(dy, (b * s.m + gi * mg) * p), p, false),
                0.0,
                (col, p),
                gws,
            );
            // SAFETY: planned tensors and the planned columns.
            unsafe { dev.gemm(&g) }?;
            let args = [
                Arg::Ptr(col),
                Arg::Ptr(f(dx, (b * s.c + gi * cg) * s.isz)),
                Arg::I32(cg as i32),
                Arg::Dims(Box::new(geo_dims(&s.g))),
            ];
            call(dev, "lm_col2im", grid_1d(cg * s.isz), &args)?;
        }
    }
    Ok(())
}

fn backward_filter(dev: &dyn Device, c: &DevCall, s: &Sizes, dy: DevPtr, x: DevPtr) -> OpResult {
    let dw = c.output(0)?;
    let total = s.m * s.cg * s.kk;
    if total == 0 {
        return Ok(());
    }
    if s.n == 0 || s.p == 0 {
        return Ok(dev.fill(dw, 0, 4 * total)?);
    }
    if s.depthwise {
        let args = [
            Arg::Ptr(dy),
            Arg::Ptr(x),
            Arg::Ptr(dw),
            Arg::I32(s.n as i32),
            Arg::I32(s.c as i32),
            Arg::I32(s.mg as i32),
            Arg::Dims(Box::new(geo_dims(&s.g))),
        ];
        let dims = LaunchDims::new([total as u32, 1, 1], [BLOCK, 1, 1]);
        return Ok(call(dev, "lm_dw_filter", dims, &args)?);
    }
    let cols = s.cols();
    let (col, gws) = split_ws(c, cols)?;
    let (cg, mg, kk, p) = (s.cg, s.mg, s.kk, s.p);
    let gk = if cols == 0 { cg } else { cg * kk };
    // dW_g = sum_b dY_g col(X_g)^T, images added in order (beta = 1 after the first).
    for b in 0..s.n {
        let beta = if b == 0 { 0.0 } else { 1.0 };
        for gi in 0..s.group {
            let xg = f(x, (b * s.c + gi * cg) * s.isz);
            let src = if cols == 0 {
                xg
            } else {
                im2col(dev, xg, cg, &s.g, col)?;
                col
            };
            let g = gemm(
                (mg, gk, p),
                (f(dy, (b * s.m + gi * mg) * p), p, false),
                (src, p, true),
                beta,
                (f(dw, gi * mg * gk), gk),
                gws,
            );
            // SAFETY: planned tensors and the planned columns.
            unsafe { dev.gemm(&g) }?;
        }
    }
    Ok(())
}
