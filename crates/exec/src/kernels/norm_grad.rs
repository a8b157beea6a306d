//! Training-mode batch norm and the normalisations' backward kernels (batch norm, layer
//! norm, LRN, softmax / log-softmax). Statistics and reductions are f64, each accumulated
//! sequentially in a fixed order (parallelism only over independent outputs).

// The parallel loops' closures take zipped chunk tuples.
#![allow(clippy::type_complexity)]

use rayon::prelude::*;

use super::PAR_ELEMS;
use super::elementwise::expand;
use super::reduce::{reduce_workspace_len, sum_to};

/// Per-channel statistics of `x [N, C, sp]`: `f(ch, plane iterator)`.
fn channel_planes(
    x: &[f32],
    n: usize,
    c: usize,
    sp: usize,
    ch: usize,
) -> impl Iterator<Item = &[f32]> {
    (0..n).map(move |b| &x[(b * c + ch) * sp..(b * c + ch + 1) * sp])
}

/// Training BatchNormalization over `x [N, C, ...]` with batch statistics (over N and the
/// spatial dims, f64, population variance): `y = (x - mean) * invstd * scale + bias` with the
/// f32 `saved_mean` and `saved_invstd = 1 / sqrt(var + eps)` it also writes, and the running
/// statistics updated in place to `r * momentum + batch * (1 - momentum)` (f32).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train(
    x: &[f32],
    x_shape: &[usize],
    scale: &[f32],
    bias: &[f32],
    eps: f32,
    momentum: f32,
    y: &mut [f32],
    saved_mean: &mut [f32],
    saved_invstd: &mut [f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
) {
    assert!(x_shape.len() >= 2, "batch_norm_train input rank");
    let (n, c) = (x_shape[0], x_shape[1]);
    let sp: usize = x_shape[2..].iter().product();
    assert_eq!(x.len(), n * c * sp, "batch_norm_train input length");
    assert_eq!(y.len(), x.len(), "batch_norm_train output length");
    for v in [scale, bias] {
        assert_eq!(v.len(), c, "batch_norm_train per-channel length");
    }
    for v in [&*saved_mean, &*saved_invstd, &*running_mean, &*running_var] {
        assert_eq!(v.len(), c, "batch_norm_train per-channel output length");
    }
    let cnt = (n * sp) as f64;
    let stats =
        |(ch, (((sm, si), rm), rv)): (usize, (((&mut f32, &mut f32), &mut f32), &mut f32))| {
            let mut s = 0f64;
            for p in channel_planes(x, n, c, sp, ch) {
                s += p.iter().map(|&v| v as f64).sum::<f64>();
            }
            let mean = s / cnt;
            let mut q = 0f64;
            for p in channel_planes(x, n, c, sp, ch) {
                q += p.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>();
            }
            let var = q / cnt;
            *sm = mean as f32;
            *si = (1.0 / (var + eps as f64).sqrt()) as f32;
            *rm = *rm * momentum + (mean as f32) * (1.0 - momentum);
            *rv = *rv * momentum + (var as f32) * (1.0 - momentum);
        };
    let outs = saved_mean
        .iter_mut()
        .zip(saved_invstd.iter_mut())
        .zip(running_mean.iter_mut())
        .zip(running_var.iter_mut());
    if x.len() >= PAR_ELEMS && c > 1 {
        saved_mean
            .par_iter_mut()
            .zip(saved_invstd.par_iter_mut())
            .zip(running_mean.par_iter_mut())
            .zip(running_var.par_iter_mut())
            .enumerate()
            .for_each(stats);
    } else {
        outs.enumerate().for_each(stats);
    }
    if sp == 0 || x.is_empty() {
        return;
    }
    let (mean, inv) = (&*saved_mean, &*saved_invstd);
    let go = |(i, (o, x)): (usize, (&mut [f32], &[f32]))| {
        let ch = i % c;
        let a = scale[ch] * inv[ch];
        let (m, b) = (mean[ch], bias[ch]);
        for (o, &x) in o.iter_mut().zip(x) {
            *o = (x - m) * a + b;
        }
    };
    if x.len() >= PAR_ELEMS {
        y.par_chunks_mut(sp)
            .zip(x.par_chunks(sp))
            .enumerate()
            .for_each(go);
    } else {
        y.chunks_mut(sp).zip(x.chunks(sp)).enumerate().for_each(go);
    }
}

/// BatchNormalization backward: `dy`, `x [N, C, ...]`, `scale`, `mean`, `v` -> `dx`,
/// `dscale = sum(dy * xhat)`, `dbias = sum(dy)` (per channel, f64). With `training`, `v` is
/// the saved inverse standard deviation and mean/invstd are the batch statistics of `x`:
/// `dx = scale * invstd / M * (M dy - sum(dy) - xhat sum(dy xhat))` (`M = N * spatial`).
/// Otherwise `mean`/`v` are the running mean/variance (constants): `dx = dy * scale /
/// sqrt(v + eps)`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_grad(
    dy: &[f32],
    x: &[f32],
    x_shape: &[usize],
    scale: &[f32],
    mean: &[f32],
    v: &[f32],
    eps: f32,
    training: bool,
    dx: &mut [f32],
    dscale: &mut [f32],
    dbias: &mut [f32],
) {
    assert!(x_shape.len() >= 2, "batch_norm_grad input rank");
    let (n, c) = (x_shape[0], x_shape[1]);
    let sp: usize = x_shape[2..].iter().product();
    assert_eq!(x.len(), n * c * sp, "batch_norm_grad input length");
    assert!(
        dy.len() == x.len() && dx.len() == x.len(),
        "batch_norm_grad lengths"
    );
    for s in [scale, mean, v, &*dscale, &*dbias] {
        assert_eq!(s.len(), c, "batch_norm_grad per-channel length");
    }
    let invstd = |ch: usize| -> f64 {
        if training {
            v[ch] as f64
        } else {
            1.0 / (v[ch] as f64 + eps as f64).sqrt()
        }
    };
    let sums = |(ch, (ds, db)): (usize, (&mut f32, &mut f32))| {
        let (m, inv) = (mean[ch] as f64, invstd(ch));
        let (mut sdy, mut sdyx) = (0f64, 0f64);
        for (dp, xp) in channel_planes(dy, n, c, sp, ch).zip(channel_planes(x, n, c, sp, ch)) {
            for (&d, &xv) in dp.iter().zip(xp) {
                sdy += d as f64;
                sdyx += d as f64 * (xv as f64 - m) * inv;
            }
        }
        *ds = sdyx as f32;
        *db = sdy as f32;
    };
    if x.len() >= PAR_ELEMS && c > 1 {
        dscale
            .par_iter_mut()
            .zip(dbias.par_iter_mut())
            .enumerate()
            .for_each(sums);
    } else {
        dscale
            .iter_mut()
            .zip(dbias.iter_mut())
            .enumerate()
            .for_each(sums);
    }
    if sp == 0 || x.is_empty() {
        return;
    }
    let big_m = (n * sp) as f64;
    let (dsc, dbi) = (&*dscale, &*dbias);
    let go = |(i, ((o, d), x)): (usize, ((&mut [f32], &[f32]), &[f32]))| {
        let ch = i % c;
        let (m, inv, g) = (mean[ch] as f64, invstd(ch), scale[ch] as f64);
        if training {
            let (sdy, sdyx) = (dbi[ch] as f64, dsc[ch] as f64);
            let k = g * inv / big_m;
            for ((o, &d), &xv) in o.iter_mut().zip(d).zip(x) {
                let xhat = (xv as f64 - m) * inv;
                *o = (k * (big_m * d as f64 - sdy - xhat * sdyx)) as f32;
            }
        } else {
            let k = g * inv;
            for (o, &d) in o.iter_mut().zip(d) {
                *o = (d as f64 * k) as f32;
            }
        }
    };
    if x.len() >= PAR_ELEMS {
        dx.par_chunks_mut(sp)
            .zip(dy.par_chunks(sp))
            .zip(x.par_chunks(sp))
            .enumerate()
            .for_each(go);
    } else {
        dx.chunks_mut(sp)
            .zip(dy.chunks(sp))
            .zip(x.chunks(sp))
            .enumerate()
            .for_each(go);
    }
}

/// Workspace (f32 elements) [`layer_norm_grad`] needs with a `scale` of `scale_len`
/// elements: three vectors over the normalised dims, two statistics per row and, when `scale`
/// broadcasts (has fewer elements than the normalised dims), f64 accumulators for summing
/// the parameter gradients down to its shape.
pub fn layer_norm_grad_workspace_len(x_shape: &[usize], axis: usize, scale_len: usize) -> usize {
    let inner: usize = x_shape[axis..].iter().product();
    let outer: usize = x_shape[..axis].iter().product();
    let sum = if scale_len == inner {
        0
    } else {
        reduce_workspace_len(scale_len)
    };
    3 * inner + 2 * outer + sum
}

/// LayerNormalization backward over dims `axis..` of `x` (statistics recomputed from `x` as
/// [`super::layer_norm`] does): `dy`, `x`, `scale` (broadcasting to `x_shape[axis..]`) ->
/// `dx`, and `dscale = sum(dy * xhat)`, `dbias = sum(dy)` of `scale_shape` (summed over the
/// rows and the dims `scale` broadcasts over; f64, fixed order). `workspace` at least
/// [`layer_norm_grad_workspace_len`].
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_grad(
    dy: &[f32],
    x: &[f32],
    x_shape: &[usize],
    axis: usize,
    scale: &[f32],
    scale_shape: &[usize],
    eps: f32,
    dx: &mut [f32],
    dscale: &mut [f32],
    dbias: &mut [f32],
    workspace: &mut [f32],
) {
    assert!(axis < x_shape.len().max(1), "layer_norm_grad axis");
    let norm = &x_shape[axis..];
    let inner: usize = norm.iter().product();
    let outer: usize = x_shape[..axis].iter().product();
    assert_eq!(x.len(), outer * inner, "layer_norm_grad input length");
    assert!(
        dy.len() == x.len() && dx.len() == x.len(),
        "layer_norm_grad lengths"
    );
    assert!(
        dscale.len() == scale.len() && dbias.len() == scale.len(),
        "layer_norm_grad dscale/dbias length"
    );
    assert!(
        workspace.len() >= layer_norm_grad_workspace_len(x_shape, axis, scale.len()),
        "layer_norm_grad workspace too small"
    );
    let (sc, rest) = workspace.split_at_mut(inner);
    let (gsum, rest) = rest.split_at_mut(inner);
    let (bsum, rest) = rest.split_at_mut(inner);
    let (stats, acc) = rest.split_at_mut(2 * outer);
    if x.is_empty() || inner == 0 {
        dscale.fill(0.0);
        dbias.fill(0.0);
        return;
    }
    expand(scale, scale_shape, sc, norm);
    let sc = &*sc;
    let d = inner as f64;
    // dx per row (independent rows).
    let row = |((o, st), (dy, x)): ((&mut [f32], &mut [f32]), (&[f32], &[f32]))| {
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / d;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d;
        let inv = 1.0 / (var + eps as f64).sqrt();
        let (mut s1, mut s2) = (0f64, 0f64);
        for ((&g, &xv), &s) in dy.iter().zip(x).zip(sc) {
            let dxh = g as f64 * s as f64;
            s1 += dxh;
            s2 += dxh * (xv as f64 - mean) * inv;
        }
        for (((o, &g), &xv), &s) in o.iter_mut().zip(dy).zip(x).zip(sc) {
            let xhat = (xv as f64 - mean) * inv;
            *o = (inv / d * (d * g as f64 * s as f64 - s1 - xhat * s2)) as f32;
        }
        st[0] = mean as f32;
        st[1] = inv as f32;
    };
    if x.len() >= PAR_ELEMS && outer > 1 {
        dx.par_chunks_mut(inner)
            .zip(stats.par_chunks_mut(2))
            .zip(dy.par_chunks(inner).zip(x.par_chunks(inner)))
            .for_each(row);
    } else {
        dx.chunks_mut(inner)
            .zip(stats.chunks_mut(2))
            .zip(dy.chunks(inner).zip(x.chunks(inner)))
            .for_each(row);
    }
    // Column sums over the rows, in row order.
    const BLOCK: usize = 64;
    let stats = &*stats;
    let cols = |(bi, (gs, bs)): (usize, (&mut [f32], &mut [f32]))| {
        let j0 = bi * BLOCK;
        let (mut ga, mut ba) = ([0f64; BLOCK], [0f64; BLOCK]);
        for r in 0..outer {
            let (mean, inv) = (stats[2 * r] as f64, stats[2 * r + 1] as f64);
            let base = r * inner + j0;
            for k in 0..gs.len() {
                let g = dy[base + k] as f64;
                ga[k] += g * (x[base + k] as f64 - mean) * inv;
                ba[k] += g;
            }
        }
        for k in 0..gs.len() {
            gs[k] = ga[k] as f32;
            bs[k] = ba[k] as f32;
        }
    };
    if x.len() >= PAR_ELEMS && inner > BLOCK {
        gsum.par_chunks_mut(BLOCK)
            .zip(bsum.par_chunks_mut(BLOCK))
            .enumerate()
            .for_each(cols);
    } else {
        gsum.chunks_mut(BLOCK)
            .zip(bsum.chunks_mut(BLOCK))
            .enumerate()
            .for_each(cols);
    }
    if scale.len() == inner {
        // Nothing to sum over: what `sum_to` gives (its f64 accumulators start at +0).
        for (d, &g) in dscale.iter_mut().zip(&*gsum) {
            *d = g + 0.0;
        }
        for (d, &b) in dbias.iter_mut().zip(&*bsum) {
            *d = b + 0.0;
        }
    } else {
        sum_to(gsum, norm, dscale, scale_shape, acc);
        sum_to(bsum, norm, dbias, scale_shape, acc);
    }
}

/// LRN backward (the exact derivative of [`super::lrn`]): `dy`, `x`, `y = lrn(x)` -> `dx`.
/// With `S_c = bias + alpha/size * sum_{c' in win(c)} x_{c'}^2`:
/// `dx_j = dy_j S_j^-beta - 2 beta alpha/size x_j sum_{c: j in win(c)} dy_c y_c / S_c`.
#[allow(clippy::too_many_arguments)]
pub fn lrn_grad(
    dy: &[f32],
    x: &[f32],
    y: &[f32],
    x_shape: &[usize],
    size: usize,
    alpha: f32,
    beta: f32,
    bias: f32,
    dx: &mut [f32],
) {
    assert!(x_shape.len() >= 2 && size > 0);
    let c = x_shape[1];
    let sp: usize = x_shape[2..].iter().product();
    assert_eq!(x.len(), x_shape.iter().product::<usize>());
    assert!(dy.len() == x.len() && y.len() == x.len() && dx.len() == x.len());
    if x.is_empty() {
        return;
    }
    let (lo, hi) = ((size - 1) / 2, (size - 1).div_ceil(2));
    let k = alpha as f64 / size as f64;
    let (beta, bias) = (beta as f64, bias as f64);
    let go = |(i, o): (usize, &mut [f32])| {
        let (n, j) = (i / c, i % c);
        let at = |ch: usize, s: usize| (n * c + ch) * sp + s;
        // S_ch at spatial position s.
        let big_s = |ch: usize, s: usize| -> f64 {
            let mut q = 0f64;
            for cc in ch.saturating_sub(lo)..(ch + hi + 1).min(c) {
                let v = x[at(cc, s)] as f64;
                q += v * v;
            }
            bias + k * q
        };
        for (s, o) in o.iter_mut().enumerate() {
            let mut acc = 0f64;
            // Channels whose window [ch - lo, ch + hi] holds j.
            for ch in j.saturating_sub(hi)..(j + lo + 1).min(c) {
                acc += dy[at(ch, s)] as f64 * y[at(ch, s)] as f64 / big_s(ch, s);
            }
            let xj = x[at(j, s)] as f64;
            *o = (dy[at(j, s)] as f64 * big_s(j, s).powf(-beta) - 2.0 * beta * k * xj * acc) as f32;
        }
    };
    if x.len() * size * size >= PAR_ELEMS {
        dx.par_chunks_mut(sp).enumerate().for_each(go);
    } else {
        dx.chunks_mut(sp).enumerate().for_each(go);
    }
}

/// Softmax (or, with `log`, log-softmax) backward from the forward's output `y`, grouping
/// elements exactly as [`super::softmax`] (`axis`, `legacy`): softmax `dx = y (dy -
/// sum(dy y))`; log-softmax `dx = dy - exp(y) sum(dy)` (f64 sums).
pub fn softmax_grad(
    dy: &[f32],
    y: &[f32],
    shape: &[usize],
    axis: usize,
    legacy: bool,
    log: bool,
    dx: &mut [f32],
) {
    assert_eq!(y.len(), shape.iter().product::<usize>());
    assert!(dy.len() == y.len() && dx.len() == y.len());
    if y.is_empty() {
        return;
    }
    let r = shape.len();
    assert!(axis < r.max(1), "softmax_grad axis");
    let (len, inner) = if r == 0 {
        (1, 1)
    } else if legacy {
        (shape[axis..].iter().product(), 1)
    } else {
        (shape[axis], shape[axis + 1..].iter().product())
    };
    let block = len * inner;
    let go = |((o, d), y): ((&mut [f32], &[f32]), &[f32])| {
        for j in 0..inner {
            let at = |i: usize| i * inner + j;
            let mut s = 0f64;
            if log {
                for i in 0..len {
                    s += d[at(i)] as f64;
                }
                for i in 0..len {
                    o[at(i)] = (d[at(i)] as f64 - (y[at(i)] as f64).exp() * s) as f32;
                }
            } else {
                for i in 0..len {
                    s += d[at(i)] as f64 * y[at(i)] as f64;
                }
                for i in 0..len {
                    o[at(i)] = (y[at(i)] as f64 * (d[at(i)] as f64 - s)) as f32;
                }
            }
        }
    };
    if y.len() >= PAR_ELEMS && y.len() > block {
        dx.par_chunks_mut(block)
            .zip(dy.par_chunks(block))
            .zip(y.par_chunks(block))
            .for_each(go);
    } else {
        dx.chunks_mut(block)
            .zip(dy.chunks(block))
            .zip(y.chunks(block))
            .for_each(go);
    }
}
