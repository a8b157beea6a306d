//! Convolution backward: the data gradient (GEMM + col2im, the adjoint of im2col) and the
//! filter gradient (im2col + GEMM, summed over the batch in order); direct kernels for
//! depthwise. Deterministic: every output element is accumulated in a fixed order.

use lowmem_ir::Window;
use lowmem_ir::scratch::ConvPass;
use rayon::prelude::*;

use super::PAR_ELEMS;
// The backward passes unfold the same columns as the forward convolution.
use super::conv::{ConvDims, Geo, depthwise, im2col_geo};
use super::sgemm::{sgemm, sgemm_workspace_len};

/// Workspace (f32 elements) [`conv_backward_data`] needs.
pub fn conv_backward_data_workspace_len(
    x_shape: &[usize],
    w_shape: &[usize],
    win: &Window,
    group: usize,
) -> usize {
    lowmem_ir::scratch::conv_workspace_len(x_shape, w_shape, win, group, ConvPass::BackwardData)
}

/// Workspace (f32 elements) [`conv_backward_filter`] needs.
pub fn conv_backward_filter_workspace_len(
    x_shape: &[usize],
    w_shape: &[usize],
    win: &Window,
    group: usize,
) -> usize {
    lowmem_ir::scratch::conv_workspace_len(x_shape, w_shape, win, group, ConvPass::BackwardFilter)
}

/// The adjoint of [`super::im2col`]: adds the `[channels * K, P]` column matrix `col` back
/// into `channels` input planes `x` (contiguous); entries that im2col read from padding are
/// dropped. Parallel over channels, each plane accumulated in a fixed order.
pub fn col2im(col: &[f32], channels: usize, win: &Window, x: &mut [f32]) {
    col2im_geo(col, channels, &Geo::new(win), x)
}

fn col2im_geo(col: &[f32], channels: usize, g: &Geo, x: &mut [f32]) {
    let (kk, p, isz) = (g.ksize(), g.osize(), g.isize());
    assert!(x.len() >= channels * isz && col.len() >= channels * kk * p);
    if isz == 0 || p == 0 || channels == 0 {
        return;
    }
    let x = &mut x[..channels * isz];
    let (o1, o2) = (g.o[1], g.o[2]);
    let plane = |(c, xp): (usize, &mut [f32])| {
        for ki in 0..kk {
            let row = &col[(c * kk + ki) * p..(c * kk + ki + 1) * p];
            let (k0, k1, k2) = (ki / (g.k[1] * g.k[2]), (ki / g.k[2]) % g.k[1], ki % g.k[2]);
            let (d_lo, d_hi) = g.valid(0, k0);
            let (h_lo, h_hi) = g.valid(1, k1);
            let (w_lo, w_hi) = g.valid(2, k2);
            if w_hi == w_lo {
                continue;
            }
            for od in d_lo..d_hi {
                let id = od * g.s[0] + k0 * g.d[0] - g.pb[0];
                for oh in h_lo..h_hi {
                    let ih = oh * g.s[1] + k1 * g.d[1] - g.pb[1];
                    let iw0 = (id * g.i[1] + ih) * g.i[2] + w_lo * g.s[2] + k2 * g.d[2] - g.pb[2];
                    let src = &row[(od * o1 + oh) * o2 + w_lo..(od * o1 + oh) * o2 + w_hi];
                    if g.s[2] == 1 {
                        for (xv, &v) in xp[iw0..iw0 + src.len()].iter_mut().zip(src) {
                            *xv += v;
                        }
                    } else {
                        for (j, &v) in src.iter().enumerate() {
                            xp[iw0 + j * g.s[2]] += v;
                        }
                    }
                }
            }
        }
    };
    if channels * kk * p >= PAR_ELEMS && channels > 1 {
        x.par_chunks_mut(isz).enumerate().for_each(plane);
    } else {
        x.chunks_mut(isz).enumerate().for_each(plane);
    }
}

/// The data gradient of [`super::conv`] (a transposed convolution): `dy [N, M, win.output...]`,
/// `w [M, C/group, kernel...]` -> `dx` of `x_shape [N, C, spatial...]`, with `win` =
/// `ConvAttrs::window(x_shape, w_shape)`. Per batch element and group, `col = W_g^T dY_g`
/// (GEMM) then [`col2im`]. `workspace` at least [`conv_backward_data_workspace_len`].
#[allow(clippy::too_many_arguments)]
pub fn conv_backward_data(
    dy: &[f32],
    w: &[f32],
    w_shape: &[usize],
    x_shape: &[usize],
    win: &Window,
    group: usize,
    dx: &mut [f32],
    workspace: &mut [f32],
) {
    let ConvDims {
        g,
        cg,
        mg,
        n,
        c,
        m,
        kk,
        p,
        isz,
    } = ConvDims::new(x_shape, w_shape, win, group);
    assert_eq!(dx.len(), n * c * isz, "conv_backward_data dx length");
    assert_eq!(w.len(), m * cg * kk, "conv_backward_data weight length");
    assert_eq!(dy.len(), n * m * p, "conv_backward_data dy length");
    if dx.is_empty() {
        return;
    }
    if depthwise(x_shape, w_shape, group) {
        return depthwise_data(dy, w, &g, c, mg, dx);
    }
    let pointwise = g.pointwise();
    let cols = if pointwise { 0 } else { cg * kk * p };
    let gm = if pointwise { cg } else { cg * kk };
    assert!(
        workspace.len() >= cols + sgemm_workspace_len(gm, p, mg),
        "conv_backward_data workspace too small"
    );
    let (col, gws) = workspace.split_at_mut(cols);
    if !pointwise {
        dx.fill(0.0);
    }
    for b in 0..n {
        for gi in 0..group {
            let dyg = &dy[(b * m + gi * mg) * p..(b * m + (gi + 1) * mg) * p];
            let dxg = &mut dx[(b * c + gi * cg) * isz..(b * c + (gi + 1) * cg) * isz];
            let wg = &w[gi * mg * cg * kk..(gi + 1) * mg * cg * kk];
            if pointwise {
                sgemm(cg, p, mg, 1.0, wg, true, dyg, false, 0.0, dxg, gws);
            } else {
                sgemm(cg * kk, p, mg, 1.0, wg, true, dyg, false, 0.0, col, gws);
                col2im_geo(col, cg, &g, dxg);
            }
        }
    }
}

/// Calls `f(input offset, output offset, len, input step)` for every run of kernel tap `ki`.
#[inline]
fn tap_runs(g: &Geo, ki: usize, mut f: impl FnMut(usize, usize, usize)) {
    let (k0, k1, k2) = (ki / (g.k[1] * g.k[2]), (ki / g.k[2]) % g.k[1], ki % g.k[2]);
    let (d_lo, d_hi) = g.valid(0, k0);
    let (h_lo, h_hi) = g.valid(1, k1);
    let (w_lo, w_hi) = g.valid(2, k2);
    if w_hi == w_lo {
        return;
    }
    for od in d_lo..d_hi {
        let id = od * g.s[0] + k0 * g.d[0] - g.pb[0];
        for oh in h_lo..h_hi {
            let ih = oh * g.s[1] + k1 * g.d[1] - g.pb[1];
            let base = (id * g.i[1] + ih) * g.i[2] + w_lo * g.s[2] + k2 * g.d[2] - g.pb[2];
            f(base, (od * g.o[1] + oh) * g.o[2] + w_lo, w_hi - w_lo);
        }
    }
}

/// Depthwise data gradient: parallel over input planes.
fn depthwise_data(dy: &[f32], w: &[f32], g: &Geo, c: usize, mg: usize, dx: &mut [f32]) {
    let (kk, p, isz) = (g.ksize(), g.osize(), g.isize());
    let m = c * mg;
    let s2 = g.s[2];
    let plane = |(idx, xp): (usize, &mut [f32])| {
        let (b, ci) = (idx / c, idx % c);
        xp.fill(0.0);
        for mo in ci * mg..(ci + 1) * mg {
            let dyp = &dy[(b * m + mo) * p..(b * m + mo + 1) * p];
            for (ki, &wv) in w[mo * kk..(mo + 1) * kk].iter().enumerate() {
                tap_runs(g, ki, |xi, oi, len| {
                    for (j, &d) in dyp[oi..oi + len].iter().enumerate() {
                        xp[xi + j * s2] += wv * d;
                    }
                });
            }
        }
    };
    if dx.len() * kk * mg >= PAR_ELEMS {
        dx.par_chunks_mut(isz).enumerate().for_each(plane);
    } else {
        dx.chunks_mut(isz).enumerate().for_each(plane);
    }
}

/// The filter gradient of [`super::conv`]: `dy [N, M, win.output...]`, `x [N, C, spatial...]`
/// -> `dw` of `w_shape [M, C/group, kernel...]`: per group `dW_g = sum_b dY_g col(X_g)^T`
/// (batch elements added in order). `workspace` at least
/// [`conv_backward_filter_workspace_len`].
#[allow(clippy::too_many_arguments)]
pub fn conv_backward_filter(
    dy: &[f32],
    x: &[f32],
    x_shape: &[usize],
    w_shape: &[usize],
    win: &Window,
    group: usize,
    dw: &mut [f32],
    workspace: &mut [f32],
) {
    let ConvDims {
        g,
        cg,
        mg,
        n,
        c,
        m,
        kk,
        p,
        isz,
    } = ConvDims::new(x_shape, w_shape, win, group);
    assert_eq!(x.len(), n * c * isz, "conv_backward_filter x length");
    assert_eq!(dw.len(), m * cg * kk, "conv_backward_filter dw length");
    assert_eq!(dy.len(), n * m * p, "conv_backward_filter dy length");
    if dw.is_empty() {
        return;
    }
    if n == 0 || p == 0 {
        dw.fill(0.0);
        return;
    }
    if depthwise(x_shape, w_shape, group) {
        return depthwise_filter(dy, x, &g, n, c, mg, dw);
    }
    let pointwise = g.pointwise();
    let cols = if pointwise { 0 } else { cg * kk * p };
    let gn = if pointwise { cg } else { cg * kk };
    assert!(
        workspace.len() >= cols + sgemm_workspace_len(mg, gn, p),
        "conv_backward_filter workspace too small"
    );
    let (col, gws) = workspace.split_at_mut(cols);
    for b in 0..n {
        let beta = if b == 0 { 0.0 } else { 1.0 };
        for gi in 0..group {
            let dyg = &dy[(b * m + gi * mg) * p..(b * m + (gi + 1) * mg) * p];
            let xg = &x[(b * c + gi * cg) * isz..(b * c + (gi + 1) * cg) * isz];
            let dwg = &mut dw[gi * mg * cg * kk..(gi + 1) * mg * cg * kk];
            if pointwise {
                sgemm(mg, cg, p, 1.0, dyg, false, xg, true, beta, dwg, gws);
            } else {
                im2col_geo(xg, cg, &g, col);
                sgemm(mg, cg * kk, p, 1.0, dyg, false, col, true, beta, dwg, gws);
            }
        }
    }
}

/// Depthwise filter gradient: parallel over output channels, f64 sums in a fixed order.
fn depthwise_filter(dy: &[f32], x: &[f32], g: &Geo, n: usize, c: usize, mg: usize, dw: &mut [f32]) {
    let (kk, p, isz) = (g.ksize(), g.osize(), g.isize());
    let m = c * mg;
    let s2 = g.s[2];
    let filt = |(mo, wk): (usize, &mut [f32])| {
        let ci = mo / mg;
        for (ki, wv) in wk.iter_mut().enumerate() {
            let mut acc = 0f64;
            for b in 0..n {
                let dyp = &dy[(b * m + mo) * p..(b * m + mo + 1) * p];
                let xp = &x[(b * c + ci) * isz..(b * c + ci + 1) * isz];
                tap_runs(g, ki, |xi, oi, len| {
                    let mut s = 0f32;
                    for (j, &d) in dyp[oi..oi + len].iter().enumerate() {
                        s += d * xp[xi + j * s2];
                    }
                    acc += s as f64;
                });
            }
            *wv = acc as f32;
        }
    };
    if dy.len() * kk >= PAR_ELEMS {
        dw.par_chunks_mut(kk).enumerate().for_each(filt);
    } else {
        dw.chunks_mut(kk).enumerate().for_each(filt);
    }
}
