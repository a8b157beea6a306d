//! Max and average pooling over 1- to 3-D windows; global average pooling.

use lowmem_ir::Window;
use rayon::prelude::*;

use super::PAR_ELEMS;
use super::conv::Geo;

/// Per output position along one dim: first input index (may be "negative", as
/// `start + pb`), valid kernel taps `[k_lo, k_hi)`, and the padded-window count.
struct Taps {
    k_lo: usize,
    k_hi: usize,
    /// Input index of tap k_lo.
    first: usize,
    /// Taps inside the padded input (AveragePool with count_include_pad).
    padded: usize,
}

/// The taps of output position `o` along `dim`.
#[inline]
fn taps(g: &Geo, dim: usize, o: usize) -> Taps {
    {
        let (s, d, pb, n, k) = (g.s[dim], g.d[dim], g.pb[dim], g.i[dim], g.k[dim]);
        let start = o * s; // in padded coordinates
        // tap t reads padded index start + t*d; valid when pb <= that < pb + n.
        let k_lo = if pb > start {
            (pb - start).div_ceil(d)
        } else {
            0
        }
        .min(k);
        let k_hi = if pb + n > start {
            ((pb + n - 1 - start) / d + 1).min(k)
        } else {
            0
        }
        .max(k_lo);
        let padded_end = n + pb + g.pe[dim];
        let padded = (0..k).filter(|t| start + t * d < padded_end).count();
        Taps {
            k_lo,
            k_hi,
            first: (start + k_lo * d).saturating_sub(pb),
            padded,
        }
    }
}

fn pool_planes(
    x: &[f32],
    x_shape: &[usize],
    win: &Window,
    out: &mut [f32],
    f: impl Fn(&[f32], &Geo, [&Taps; 3]) -> f32 + Sync,
) {
    assert_eq!(x_shape.len(), win.kernel.len() + 2, "pool input rank");
    let g = Geo::new(win);
    let planes = x_shape[0] * x_shape[1];
    let (isz, osz) = (g.isize(), g.osize());
    assert_eq!(x.len(), planes * isz, "pool input length");
    assert_eq!(out.len(), planes * osz, "pool output length");
    if out.is_empty() {
        return;
    }
    let plane = |(o, xp): (&mut [f32], &[f32])| {
        let mut i = 0;
        for o0 in 0..g.o[0] {
            let t0 = taps(&g, 0, o0);
            for o1 in 0..g.o[1] {
                let t1 = taps(&g, 1, o1);
                for o2 in 0..g.o[2] {
                    o[i] = f(xp, &g, [&t0, &t1, &taps(&g, 2, o2)]);
                    i += 1;
                }
            }
        }
    };
    if out.len() * g.ksize() >= PAR_ELEMS {
        out.par_chunks_mut(osz)
            .zip(x.par_chunks(isz.max(1)))
            .for_each(plane);
    } else {
        out.chunks_mut(osz)
            .zip(x.chunks(isz.max(1)))
            .for_each(plane);
    }
}

/// ONNX MaxPool: `x [N, C, spatial...]`, `win` from [`lowmem_ir::PoolAttrs::window`], `out
/// [N, C, win.output...]`. Padding never wins; a window with no input element yields
/// `f32::MIN` (onnxruntime's initial value); NaN inputs are skipped like onnxruntime's `>`.
pub fn max_pool(x: &[f32], x_shape: &[usize], win: &Window, out: &mut [f32]) {
    pool_planes(x, x_shape, win, out, |xp, g, [t0, t1, t2]| {
        let mut m = f32::MIN;
        for a in 0..t0.k_hi - t0.k_lo {
            let i0 = t0.first + a * g.d[0];
            for b in 0..t1.k_hi - t1.k_lo {
                let i1 = t1.first + b * g.d[1];
                let row = (i0 * g.i[1] + i1) * g.i[2] + t2.first;
                for c in 0..t2.k_hi - t2.k_lo {
                    let v = xp[row + c * g.d[2]];
                    if v > m {
                        m = v;
                    }
                }
            }
        }
        m
    })
}

/// ONNX AveragePool. `count_include_pad: false` divides by the number of input elements in
/// the window; `true` by the window's extent clipped to the padded input (so with ceil_mode
/// the part beyond the end padding never counts, as onnxruntime and PyTorch do).
pub fn avg_pool(
    x: &[f32],
    x_shape: &[usize],
    win: &Window,
    count_include_pad: bool,
    out: &mut [f32],
) {
    pool_planes(x, x_shape, win, out, |xp, g, [t0, t1, t2]| {
        let mut s = 0.0f32;
        for a in 0..t0.k_hi - t0.k_lo {
            let i0 = t0.first + a * g.d[0];
            for b in 0..t1.k_hi - t1.k_lo {
                let i1 = t1.first + b * g.d[1];
                let row = (i0 * g.i[1] + i1) * g.i[2] + t2.first;
                for c in 0..t2.k_hi - t2.k_lo {
                    s += xp[row + c * g.d[2]];
                }
            }
        }
        let n = if count_include_pad {
            t0.padded * t1.padded * t2.padded
        } else {
            (t0.k_hi - t0.k_lo) * (t1.k_hi - t1.k_lo) * (t2.k_hi - t2.k_lo)
        };
        if n == 0 { 0.0 } else { s / n as f32 }
    })
}

/// ONNX GlobalAveragePool: the mean of each `[n, c]` plane (f64 accumulation).
pub fn global_avg_pool(x: &[f32], x_shape: &[usize], out: &mut [f32]) {
    assert!(x_shape.len() >= 2);
    let planes = x_shape[0] * x_shape[1];
    let isz: usize = x_shape[2..].iter().product();
    assert_eq!(x.len(), planes * isz);
    assert_eq!(out.len(), planes);
    if isz == 0 {
        out.fill(f32::NAN);
        return;
    }
    let f = |(o, xp): (&mut f32, &[f32])| {
        *o = (xp.iter().map(|&v| v as f64).sum::<f64>() / isz as f64) as f32;
    };
    if x.len() >= PAR_ELEMS {
        out.par_iter_mut().zip(x.par_chunks(isz)).for_each(f);
    } else {
        out.iter_mut().zip(x.chunks(isz)).for_each(f);
    }
}

/// Backward of the window pools: per `[n, c]` plane (parallel over planes), `f(dxp, xp, dy,
/// taps)` adds output element's gradient `dy` into the plane `dxp` (zeroed first); windows are
/// visited in output order, so overlapping windows accumulate deterministically.
fn pool_grad_planes(
    dy: &[f32],
    x: Option<&[f32]>,
    x_shape: &[usize],
    win: &Window,
    dx: &mut [f32],
    f: impl Fn(&mut [f32], &[f32], f32, &Geo, [&Taps; 3]) + Sync,
) {
    assert_eq!(x_shape.len(), win.kernel.len() + 2, "pool input rank");
    let g = Geo::new(win);
    let planes = x_shape[0] * x_shape[1];
    let (isz, osz) = (g.isize(), g.osize());
    assert_eq!(dx.len(), planes * isz, "pool grad dx length");
    assert_eq!(dy.len(), planes * osz, "pool grad dy length");
    if let Some(x) = x {
        assert_eq!(x.len(), planes * isz, "pool grad x length");
    }
    if dx.is_empty() {
        return;
    }
    let plane = |(pi, dxp): (usize, &mut [f32])| {
        dxp.fill(0.0);
        let xp = x.map_or(&[][..], |x| &x[pi * isz..(pi + 1) * isz]);
        let dyp = &dy[pi * osz..(pi + 1) * osz];
        let mut i = 0;
        for o0 in 0..g.o[0] {
            let t0 = taps(&g, 0, o0);
            for o1 in 0..g.o[1] {
                let t1 = taps(&g, 1, o1);
                for o2 in 0..g.o[2] {
                    f(dxp, xp, dyp[i], &g, [&t0, &t1, &taps(&g, 2, o2)]);
                    i += 1;
                }
            }
        }
    };
    if dy.len() * g.ksize() >= PAR_ELEMS {
        dx.par_chunks_mut(isz).enumerate().for_each(plane);
    } else {
        dx.chunks_mut(isz).enumerate().for_each(plane);
    }
}

/// The gradient of [`max_pool`]: `dy [N, C, win.output...]`, `x [N, C, spatial...]` -> `dx`
/// (x's shape). Each `dy` goes to the first maximum of its window in scan order (the element
/// [`max_pool`] returns; padding is never selected); overlapping windows accumulate. A window
/// whose every element is NaN passes no gradient.
pub fn max_pool_grad(dy: &[f32], x: &[f32], x_shape: &[usize], win: &Window, dx: &mut [f32]) {
    pool_grad_planes(
        dy,
        Some(x),
        x_shape,
        win,
        dx,
        |dxp, xp, d, g, [t0, t1, t2]| {
            let mut m = f32::MIN;
            let mut arg = None;
            for a in 0..t0.k_hi - t0.k_lo {
                let i0 = t0.first + a * g.d[0];
                for b in 0..t1.k_hi - t1.k_lo {
                    let i1 = t1.first + b * g.d[1];
                    let row = (i0 * g.i[1] + i1) * g.i[2] + t2.first;
                    for c in 0..t2.k_hi - t2.k_lo {
                        let j = row + c * g.d[2];
                        let v = xp[j];
                        if v > m || (arg.is_none() && v == m) {
                            m = v;
                            arg = Some(j);
                        }
                    }
                }
            }
            if let Some(j) = arg {
                dxp[j] += d;
            }
        },
    )
}

/// The gradient of [`avg_pool`] (its exact adjoint: the same divisor rules): `dy [N, C,
/// win.output...]` -> `dx` of `x_shape`.
pub fn avg_pool_grad(
    dy: &[f32],
    x_shape: &[usize],
    win: &Window,
    count_include_pad: bool,
    dx: &mut [f32],
) {
    pool_grad_planes(dy, None, x_shape, win, dx, |dxp, _, d, g, [t0, t1, t2]| {
        let n = if count_include_pad {
            t0.padded * t1.padded * t2.padded
        } else {
            (t0.k_hi - t0.k_lo) * (t1.k_hi - t1.k_lo) * (t2.k_hi - t2.k_lo)
        };
        if n == 0 {
            return;
        }
        let v = d / n as f32;
        for a in 0..t0.k_hi - t0.k_lo {
            let i0 = t0.first + a * g.d[0];
            for b in 0..t1.k_hi - t1.k_lo {
                let i1 = t1.first + b * g.d[1];
                let row = (i0 * g.i[1] + i1) * g.i[2] + t2.first;
                for c in 0..t2.k_hi - t2.k_lo {
                    dxp[row + c * g.d[2]] += v;
                }
            }
        }
    })
}

/// The gradient of [`global_avg_pool`]: `dy [N, C, 1...]` -> `dx` of `x_shape`, each plane
/// filled with `dy / plane size`.
pub fn global_avg_pool_grad(dy: &[f32], x_shape: &[usize], dx: &mut [f32]) {
    assert!(x_shape.len() >= 2);
    let planes = x_shape[0] * x_shape[1];
    let isz: usize = x_shape[2..].iter().product();
    assert_eq!(dy.len(), planes, "global_avg_pool_grad dy length");
    assert_eq!(dx.len(), planes * isz, "global_avg_pool_grad dx length");
    if isz == 0 {
        return;
    }
    let f = |(o, &d): (&mut [f32], &f32)| o.fill(d / isz as f32);
    if dx.len() >= PAR_ELEMS {
        dx.par_chunks_mut(isz).zip(dy.par_iter()).for_each(f);
    } else {
        dx.chunks_mut(isz).zip(dy).for_each(f);
    }
}
