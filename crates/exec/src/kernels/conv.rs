//! N-d convolution (1-, 2- and 3-D): im2col + GEMM per group, a direct kernel for depthwise.

use lowmem_ir::Window;
use lowmem_ir::scratch::ConvPass;
use rayon::prelude::*;

use super::PAR_ELEMS;
use super::elementwise::{Unary, unary_inplace};
use super::sgemm::{sgemm, sgemm_workspace_len};

/// Spatial ranks the convolution and pooling kernels support (1-D to 3-D).
pub const MAX_SPATIAL_RANK: usize = 3;

/// A window padded to three spatial dims (leading dims of size 1): the geometry every
/// convolution and pooling kernel (CPU and CUDA) indexes with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geo {
    pub k: [usize; 3],
    pub s: [usize; 3],
    pub d: [usize; 3],
    pub pb: [usize; 3],
    pub pe: [usize; 3],
    pub i: [usize; 3],
    pub o: [usize; 3],
}

impl Geo {
    /// Panics on a window of a rank other than 1 to [`MAX_SPATIAL_RANK`] (the executor
    /// checks ranks ahead); see [`Geo::try_new`].
    pub fn new(win: &Window) -> Geo {
        Geo::try_new(win).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_new(win: &Window) -> Result<Geo, String> {
        let r = win.kernel.len();
        if !(1..=MAX_SPATIAL_RANK).contains(&r) {
            return Err(format!("{r}-D windows are not supported"));
        }
        let off = 3 - r;
        let pad = |v: &[usize], fill: usize| {
            let mut a = [fill; 3];
            a[off..].copy_from_slice(v);
            a
        };
        Ok(Geo {
            k: pad(&win.kernel, 1),
            s: pad(&win.strides, 1),
            d: pad(&win.dilations, 1),
            pb: pad(&win.pad_begin, 0),
            pe: pad(&win.pad_end, 0),
            i: pad(&win.input, 1),
            o: pad(&win.output, 1),
        })
    }
    pub fn ksize(&self) -> usize {
        self.k.iter().product()
    }
    pub fn isize(&self) -> usize {
        self.i.iter().product()
    }
    pub fn osize(&self) -> usize {
        self.o.iter().product()
    }
    /// A 1x1 convolution reading its input as is.
    pub fn pointwise(&self) -> bool {
        self.k == [1; 3] && self.s == [1; 3] && self.pb == [0; 3] && self.o == self.i
    }
    /// Range `[lo, hi)` of outputs along `dim` whose input index with kernel offset `kk` is
    /// inside the (unpadded) input.
    #[inline]
    pub fn valid(&self, dim: usize, kk: usize) -> (usize, usize) {
        valid_range(
            self.o[dim],
            self.s[dim],
            kk * self.d[dim],
            self.pb[dim],
            self.i[dim],
        )
    }
}

/// Outputs `o in [lo, hi)` with `o * s + koff - pb` in `[0, n)`.
#[inline]
pub(crate) fn valid_range(
    out: usize,
    s: usize,
    koff: usize,
    pb: usize,
    n: usize,
) -> (usize, usize) {
    let lo = if pb > koff {
        (pb - koff).div_ceil(s)
    } else {
        0
    }
    .min(out);
    let hi = if n + pb > koff {
        (n - 1 + pb - koff) / s + 1
    } else {
        0
    }
    .min(out);
    (lo, hi.max(lo))
}

/// The sizes every convolution kernel (forward and both backward passes, CPU and CUDA)
/// works with: channels per group (`cg` in, `mg` out), batch `n`, channels `c` and `m`,
/// kernel, output and input spatial sizes `kk`, `p`, `isz`.
#[derive(Clone, Debug)]
pub struct ConvDims {
    pub g: Geo,
    pub cg: usize,
    pub mg: usize,
    pub n: usize,
    pub c: usize,
    pub m: usize,
    pub kk: usize,
    pub p: usize,
    pub isz: usize,
}

impl ConvDims {
    /// Panics where [`ConvDims::try_new`] errs (the executor checks shapes ahead).
    pub fn new(x_shape: &[usize], w_shape: &[usize], win: &Window, group: usize) -> ConvDims {
        ConvDims::try_new(x_shape, w_shape, win, group).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_new(
        x_shape: &[usize],
        w_shape: &[usize],
        win: &Window,
        group: usize,
    ) -> Result<ConvDims, String> {
        let g = Geo::try_new(win)?;
        if x_shape.len() != win.kernel.len() + 2 || w_shape.len() != x_shape.len() {
            return Err(format!(
                "conv shapes {x_shape:?} and {w_shape:?} do not fit the window"
            ));
        }
        if group == 0
            || !x_shape[1].is_multiple_of(group)
            || !w_shape[0].is_multiple_of(group)
            || w_shape[1] * group != x_shape[1]
        {
            return Err(format!(
                "conv group {group} does not fit {x_shape:?} and {w_shape:?}"
            ));
        }
        let (kk, p, isz) = (g.ksize(), g.osize(), g.isize());
        Ok(ConvDims {
            g,
            cg: x_shape[1] / group,
            mg: w_shape[0] / group,
            n: x_shape[0],
            c: x_shape[1],
            m: w_shape[0],
            kk,
            p,
            isz,
        })
    }
}

pub(crate) use lowmem_ir::scratch::conv_is_depthwise as depthwise;

/// Workspace (f32 elements) [`conv`] needs for these shapes and window: the im2col columns
/// (none for pointwise convolutions), then the GEMM's packing buffers.
pub fn conv_workspace_len(
    x_shape: &[usize],
    w_shape: &[usize],
    win: &Window,
    group: usize,
) -> usize {
    lowmem_ir::scratch::conv_workspace_len(x_shape, w_shape, win, group, ConvPass::Forward)
}

/// Unfolds `channels` input planes (`x`, contiguous) into the `[channels * K, P]` column
/// matrix (`K` kernel positions, `P` output positions; padding reads as zero).
pub fn im2col(x: &[f32], channels: usize, win: &Window, col: &mut [f32]) {
    im2col_geo(x, channels, &Geo::new(win), col)
}

pub(crate) fn im2col_geo(x: &[f32], channels: usize, g: &Geo, col: &mut [f32]) {
    let (kk, p, isz) = (g.ksize(), g.osize(), g.isize());
    assert!(x.len() >= channels * isz && col.len() >= channels * kk * p);
    let col = &mut col[..channels * kk * p];
    let row = |(r, row): (usize, &mut [f32])| {
        let (c, ki) = (r / kk, r % kk);
        let (k0, k1, k2) = (ki / (g.k[1] * g.k[2]), (ki / g.k[2]) % g.k[1], ki % g.k[2]);
        let plane = &x[c * isz..(c + 1) * isz];
        let (d_lo, d_hi) = g.valid(0, k0);
        let (h_lo, h_hi) = g.valid(1, k1);
        let (w_lo, w_hi) = g.valid(2, k2);
        let (o1, o2) = (g.o[1], g.o[2]);
        for (od, rowd) in row.chunks_mut(o1 * o2).enumerate() {
            if od < d_lo || od >= d_hi {
                rowd.fill(0.0);
                continue;
            }
            let id = od * g.s[0] + k0 * g.d[0] - g.pb[0];
            for (oh, seg) in rowd.chunks_mut(o2).enumerate() {
                if oh < h_lo || oh >= h_hi {
                    seg.fill(0.0);
                    continue;
                }
                let ih = oh * g.s[1] + k1 * g.d[1] - g.pb[1];
                let base = (id * g.i[1] + ih) * g.i[2];
                seg[..w_lo].fill(0.0);
                seg[w_hi..].fill(0.0);
                if w_hi > w_lo {
                    let iw0 = base + w_lo * g.s[2] + k2 * g.d[2] - g.pb[2];
                    let dst = &mut seg[w_lo..w_hi];
                    if g.s[2] == 1 {
                        dst.copy_from_slice(&plane[iw0..iw0 + dst.len()]);
                    } else {
                        for (j, v) in dst.iter_mut().enumerate() {
                            *v = plane[iw0 + j * g.s[2]];
                        }
                    }
                }
            }
        }
    };
    if col.len() >= PAR_ELEMS && p > 0 {
        col.par_chunks_mut(p).enumerate().for_each(row);
    } else if p > 0 {
        col.chunks_mut(p).enumerate().for_each(row);
    }
}

/// ONNX Conv: `x [N, C, spatial...]`, `w [M, C/group, kernel...]`, optional `bias [M]`, `win`
/// from [`lowmem_ir::ConvAttrs::window`]; `out [N, M, win.output...]`; `workspace` at least
/// [`conv_workspace_len`] elements. `epilogue`, if any, is applied to each image's output
/// block while it is in cache (a fused activation).
#[allow(clippy::too_many_arguments)]
pub fn conv(
    x: &[f32],
    x_shape: &[usize],
    w: &[f32],
    w_shape: &[usize],
    bias: Option<&[f32]>,
    win: &Window,
    group: usize,
    epilogue: Option<Unary>,
    out: &mut [f32],
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
    assert_eq!(x.len(), n * c * isz, "conv input length");
    assert_eq!(w.len(), m * cg * kk, "conv weight length");
    assert_eq!(out.len(), n * m * p, "conv output length");
    if let Some(b) = bias {
        assert_eq!(b.len(), m, "conv bias length");
    }
    if out.is_empty() {
        return;
    }
    if depthwise(x_shape, w_shape, group) {
        depthwise_direct(x, w, bias, &g, c, m / group, out);
        if let Some(u) = epilogue {
            unary_inplace(u, out);
        }
        return;
    }
    let pointwise = g.pointwise();
    let cols = if pointwise { 0 } else { cg * kk * p };
    let gk = if pointwise { cg } else { cg * kk };
    assert!(
        workspace.len() >= cols + sgemm_workspace_len(mg, p, gk),
        "conv workspace too small"
    );
    let (colbuf, gws) = workspace.split_at_mut(cols);
    for b in 0..n {
        for gi in 0..group {
            let xg = &x[(b * c + gi * cg) * isz..(b * c + (gi + 1) * cg) * isz];
            let og = &mut out[(b * m + gi * mg) * p..(b * m + (gi + 1) * mg) * p];
            let wg = &w[gi * mg * cg * kk..(gi + 1) * mg * cg * kk];
            let beta = match bias {
                Some(bias) => {
                    for (row, &bv) in og.chunks_mut(p).zip(&bias[gi * mg..(gi + 1) * mg]) {
                        row.fill(bv);
                    }
                    1.0
                }
                None => 0.0,
            };
            if pointwise {
                sgemm(mg, p, cg, 1.0, wg, false, xg, false, beta, og, gws);
            } else {
                im2col_geo(xg, cg, &g, colbuf);
                sgemm(mg, p, cg * kk, 1.0, wg, false, colbuf, false, beta, og, gws);
            }
            if let Some(u) = epilogue {
                unary_inplace(u, og);
            }
        }
    }
}

/// One input channel per group: direct loops, parallel over output planes.
fn depthwise_direct(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    g: &Geo,
    c: usize,
    mg: usize,
    out: &mut [f32],
) {
    let (kk, p, isz) = (g.ksize(), g.osize(), g.isize());
    let m = c * mg;
    let plane = |(idx, o): (usize, &mut [f32])| {
        let (b, mo) = (idx / m, idx % m);
        let ci = mo / mg;
        let xp = &x[(b * c + ci) * isz..(b * c + ci + 1) * isz];
        let wk = &w[mo * kk..(mo + 1) * kk];
        o.fill(bias.map_or(0.0, |b| b[mo]));
        for (ki, &wv) in wk.iter().enumerate() {
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
                    let base = (id * g.i[1] + ih) * g.i[2] + w_lo * g.s[2] + k2 * g.d[2] - g.pb[2];
                    let orow = &mut o
                        [(od * g.o[1] + oh) * g.o[2] + w_lo..(od * g.o[1] + oh) * g.o[2] + w_hi];
                    if g.s[2] == 1 {
                        for (ov, &xv) in orow.iter_mut().zip(&xp[base..base + (w_hi - w_lo)]) {
                            *ov += wv * xv;
                        }
                    } else {
                        for (j, ov) in orow.iter_mut().enumerate() {
                            *ov += wv * xp[base + j * g.s[2]];
                        }
                    }
                }
            }
        }
    };
    if out.len() * kk >= PAR_ELEMS {
        out.par_chunks_mut(p).enumerate().for_each(plane);
    } else {
        out.chunks_mut(p).enumerate().for_each(plane);
    }
}
