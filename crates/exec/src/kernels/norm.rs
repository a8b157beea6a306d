//! Normalisations: batch norm (inference), layer norm, LRN, softmax / log-softmax.

use rayon::prelude::*;

use super::PAR_ELEMS;

/// Inference BatchNormalization over `x [N, C, ...]`:
/// `y = (x - mean) * scale / sqrt(var + eps) + bias`, per channel.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm(
    x: &[f32],
    x_shape: &[usize],
    scale: &[f32],
    bias: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    assert!(x_shape.len() >= 2, "batch_norm input rank");
    let c = x_shape[1];
    let sp: usize = x_shape[2..].iter().product();
    assert_eq!(x.len(), x_shape.iter().product::<usize>());
    assert_eq!(out.len(), x.len());
    assert!(scale.len() == c && bias.len() == c && mean.len() == c && var.len() == c);
    if x.is_empty() {
        return;
    }
    let go = |(i, (o, x)): (usize, (&mut [f32], &[f32]))| {
        let ch = i % c;
        let a = scale[ch] / (var[ch] + eps).sqrt();
        let (m, b) = (mean[ch], bias[ch]);
        for (o, &x) in o.iter_mut().zip(x) {
            *o = (x - m) * a + b;
        }
    };
    if sp == 0 {
        return;
    }
    if x.len() >= PAR_ELEMS {
        out.par_chunks_mut(sp)
            .zip(x.par_chunks(sp))
            .enumerate()
            .for_each(go);
    } else {
        out.chunks_mut(sp)
            .zip(x.chunks(sp))
            .enumerate()
            .for_each(go);
    }
}

/// Workspace (f32 elements) [`layer_norm`] needs: `scale` (and `bias`, `with_bias`)
/// broadcast over the normalised dims `x_shape[axis..]`.
pub fn layer_norm_workspace_len(x_shape: &[usize], axis: usize, with_bias: bool) -> usize {
    (1 + with_bias as usize) * x_shape[axis.min(x_shape.len())..].iter().product::<usize>()
}

/// LayerNormalization over dims `axis..` of `x`: biased variance, f64 statistics;
/// `scale` (and `bias`) broadcast to `x_shape[axis..]`. `ws`: at least
/// [`layer_norm_workspace_len`] elements.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm(
    x: &[f32],
    x_shape: &[usize],
    axis: usize,
    scale: &[f32],
    scale_shape: &[usize],
    bias: Option<(&[f32], &[usize])>,
    eps: f32,
    out: &mut [f32],
    ws: &mut [f32],
) {
    assert!(axis < x_shape.len().max(1), "layer_norm axis");
    let norm = &x_shape[axis..];
    let inner: usize = norm.iter().product();
    assert_eq!(x.len(), x_shape.iter().product::<usize>());
    assert_eq!(out.len(), x.len());
    if x.is_empty() || inner == 0 {
        return;
    }
    assert!(
        ws.len() >= (1 + bias.is_some() as usize) * inner,
        "layer_norm workspace too small"
    );
    let (sc, rest) = ws.split_at_mut(inner);
    super::expand(scale, scale_shape, sc, norm);
    let sc = &*sc;
    let bi = bias.map(|(b, s)| {
        let e = &mut rest[..inner];
        super::expand(b, s, e, norm);
        &*e
    });
    let go = |(o, x): (&mut [f32], &[f32])| {
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / inner as f64;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / inner as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for (j, (o, &v)) in o.iter_mut().zip(x).enumerate() {
            let n = ((v as f64 - mean) * inv) as f32;
            *o = n * sc[j] + bi.as_ref().map_or(0.0, |b| b[j]);
        }
    };
    if x.len() >= PAR_ELEMS {
        out.par_chunks_mut(inner)
            .zip(x.par_chunks(inner))
            .for_each(go);
    } else {
        out.chunks_mut(inner).zip(x.chunks(inner)).for_each(go);
    }
}

/// ONNX LRN across channels of `x [N, C, ...]`:
/// `y = x / (bias + alpha / size * sum_{c' in [c - floor((size-1)/2), c + ceil((size-1)/2)]} x[c']^2)^beta`.
#[allow(clippy::too_many_arguments)]
pub fn lrn(
    x: &[f32],
    x_shape: &[usize],
    size: usize,
    alpha: f32,
    beta: f32,
    bias: f32,
    out: &mut [f32],
) {
    assert!(x_shape.len() >= 2 && size > 0);
    let c = x_shape[1];
    let sp: usize = x_shape[2..].iter().product();
    assert_eq!(x.len(), x_shape.iter().product::<usize>());
    assert_eq!(out.len(), x.len());
    if x.is_empty() {
        return;
    }
    let (lo, hi) = ((size - 1) / 2, (size - 1).div_ceil(2));
    let k = alpha / size as f32;
    // Squared sums over a stack buffer of ROW positions at a time (each position's sum
    // is accumulated over the window's channels in channel order).
    const ROW: usize = 256;
    let go = |(i, o): (usize, &mut [f32])| {
        let (n, ch) = (i / c, i % c);
        let img = &x[n * c * sp..(n + 1) * c * sp];
        for (bi, o) in o.chunks_mut(ROW).enumerate() {
            let j0 = bi * ROW;
            let len = o.len();
            let mut sq = [0f32; ROW];
            let sq = &mut sq[..len];
            for cc in ch.saturating_sub(lo)..(ch + hi + 1).min(c) {
                let row = &img[cc * sp + j0..cc * sp + j0 + len];
                for (s, &v) in sq.iter_mut().zip(row) {
                    *s += v * v;
                }
            }
            let xr = &img[ch * sp + j0..ch * sp + j0 + len];
            for ((o, &v), &s) in o.iter_mut().zip(xr).zip(&*sq) {
                *o = v / (bias + k * s).powf(beta);
            }
        }
    };
    if x.len() * size >= PAR_ELEMS {
        out.par_chunks_mut(sp).enumerate().for_each(go);
    } else {
        out.chunks_mut(sp).enumerate().for_each(go);
    }
}

/// Softmax (or log-softmax with `log`) of `x` along `axis`. With `legacy` (ONNX opset < 13)
/// `x` is viewed as `[prod(dims[..axis]), prod(dims[axis..])]` and each row normalised.
/// Numerically stable (max subtracted; sums in f64).
pub fn softmax(
    x: &[f32],
    x_shape: &[usize],
    axis: usize,
    legacy: bool,
    log: bool,
    out: &mut [f32],
) {
    assert_eq!(x.len(), x_shape.iter().product::<usize>());
    assert_eq!(out.len(), x.len());
    if x.is_empty() {
        return;
    }
    let r = x_shape.len();
    assert!(axis < r.max(1), "softmax axis");
    let (len, inner) = if r == 0 {
        (1, 1)
    } else if legacy {
        (x_shape[axis..].iter().product(), 1)
    } else {
        (x_shape[axis], x_shape[axis + 1..].iter().product())
    };
    let block = len * inner;
    let go = |(o, x): (&mut [f32], &[f32])| {
        for j in 0..inner {
            let at = |i: usize| i * inner + j;
            let mut m = f32::NEG_INFINITY;
            for i in 0..len {
                m = m.max(x[at(i)]);
            }
            let mut s = 0f64;
            for i in 0..len {
                s += ((x[at(i)] - m) as f64).exp();
            }
            if log {
                let ls = s.ln();
                for i in 0..len {
                    o[at(i)] = ((x[at(i)] - m) as f64 - ls) as f32;
                }
            } else {
                for i in 0..len {
                    o[at(i)] = (((x[at(i)] - m) as f64).exp() / s) as f32;
                }
            }
        }
    };
    if x.len() >= PAR_ELEMS && x.len() > block {
        out.par_chunks_mut(block)
            .zip(x.par_chunks(block))
            .for_each(go);
    } else {
        out.chunks_mut(block).zip(x.chunks(block)).for_each(go);
    }
}
