//! Elementwise backward kernels, training-mode dropout, Pow's gradient, losses and optimizer
//! updates. Everything is elementwise or reduces in a fixed order, so results do not depend
//! on the thread count or timing.

// The parallel loops' closures take zipped chunk tuples.
#![allow(clippy::type_complexity)]

use rayon::prelude::*;

use super::PAR_ELEMS;
use super::elementwise::expand;

/// Chunk length for the parallel elementwise loops here.
const CHUNK: usize = PAR_ELEMS / 2;

/// The backward of a unary op: `dx = dy * f'(.)`, where `.` is the op's input X or output Y
/// (as each variant says).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryGrad {
    /// Reads Y: `dy` where `y > 0`.
    Relu,
    /// Reads X: `dy` where `x >= 0`, `alpha * dy` where `x < 0` (the forward's branches).
    LeakyRelu(f32),
    /// Reads Y: `dy * y * (1 - y)`.
    Sigmoid,
    /// Reads Y: `dy * (1 - y^2)`.
    Tanh,
    /// Reads Y: `dy * 0.5 / y`.
    Sqrt,
    /// Reads X: `dy * 2/sqrt(pi) * exp(-x^2)`.
    Erf,
    /// Reads X: exact GELU, `0.5 (1 + erf(x/sqrt 2)) + x exp(-x^2/2) / sqrt(2 pi)`.
    Gelu,
    /// Reads X: the derivative of the tanh approximation.
    GeluTanh,
    /// Reads X: `dy` where `min <= x <= max` (ties pass), else 0 (NaN gives 0).
    Clip { min: f32, max: f32 },
}

impl UnaryGrad {
    #[inline]
    pub fn apply(self, dy: f32, v: f32) -> f32 {
        use std::f32::consts::{FRAC_1_SQRT_2, FRAC_2_SQRT_PI};
        match self {
            UnaryGrad::Relu => {
                if v > 0.0 {
                    dy
                } else {
                    0.0
                }
            }
            UnaryGrad::LeakyRelu(a) => {
                if v < 0.0 {
                    a * dy
                } else {
                    dy
                }
            }
            UnaryGrad::Sigmoid => dy * v * (1.0 - v),
            UnaryGrad::Tanh => dy * (1.0 - v * v),
            UnaryGrad::Sqrt => dy * 0.5 / v,
            UnaryGrad::Erf => dy * FRAC_2_SQRT_PI * (-v * v).exp(),
            UnaryGrad::Gelu => {
                // 1/sqrt(2 pi) = FRAC_2_SQRT_PI * FRAC_1_SQRT_2 / 2.
                const INV_SQRT_2PI: f32 = 0.398_942_3;
                let cdf = 0.5 * (1.0 + libm::erff(v * FRAC_1_SQRT_2));
                dy * (cdf + v * INV_SQRT_2PI * (-0.5 * v * v).exp())
            }
            UnaryGrad::GeluTanh => {
                const C: f32 = 0.797_884_6; // sqrt(2/pi)
                const A: f32 = 0.044715;
                let t = (C * (v + A * v * v * v)).tanh();
                dy * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * C * (1.0 + 3.0 * A * v * v))
            }
            UnaryGrad::Clip { min, max } => {
                if v >= min && v <= max {
                    dy
                } else {
                    0.0
                }
            }
        }
    }
}

/// `out[i] = op.apply(dy[i], v[i])`.
pub fn unary_grad(op: UnaryGrad, dy: &[f32], v: &[f32], out: &mut [f32]) {
    assert!(
        dy.len() == v.len() && out.len() == v.len(),
        "unary_grad lengths"
    );
    let go = |((o, dy), v): ((&mut [f32], &[f32]), &[f32])| {
        for ((o, &d), &v) in o.iter_mut().zip(dy).zip(v) {
            *o = op.apply(d, v);
        }
    };
    if out.len() >= PAR_ELEMS {
        out.par_chunks_mut(CHUNK)
            .zip(dy.par_chunks(CHUNK))
            .zip(v.par_chunks(CHUNK))
            .for_each(go);
    } else {
        go(((out, dy), v));
    }
}

/// [`unary_grad`] in place: `dy[i] = op.apply(dy[i], v[i])`.
pub fn unary_grad_inplace(op: UnaryGrad, dy: &mut [f32], v: &[f32]) {
    assert_eq!(dy.len(), v.len(), "unary_grad lengths");
    let go = |(o, v): (&mut [f32], &[f32])| {
        for (o, &v) in o.iter_mut().zip(v) {
            *o = op.apply(*o, v);
        }
    };
    if dy.len() >= PAR_ELEMS {
        dy.par_chunks_mut(CHUNK)
            .zip(v.par_chunks(CHUNK))
            .for_each(go);
    } else {
        go((dy, v));
    }
}

/// Training dropout (and its backward, which applies the same mask to dY): element `i` is
/// kept, scaled by `1 / (1 - ratio)`, when [`lowmem_ir::dropout_keep`]`(seed, step, i,
/// ratio)`, else zeroed.
pub fn dropout(x: &[f32], ratio: f32, seed: u64, step: u64, out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "dropout lengths");
    let scale = 1.0 / (1.0 - ratio);
    let go = |(ci, (o, x)): (usize, (&mut [f32], &[f32]))| {
        let base = ci * CHUNK;
        for (j, (o, &x)) in o.iter_mut().zip(x).enumerate() {
            let keep = lowmem_ir::dropout_keep(seed, step, (base + j) as u64, ratio);
            *o = if keep { x * scale } else { 0.0 };
        }
    };
    if x.len() >= PAR_ELEMS {
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .enumerate()
            .for_each(go);
    } else {
        out.chunks_mut(CHUNK)
            .zip(x.chunks(CHUNK))
            .enumerate()
            .for_each(go);
    }
}

/// [`dropout`] in place.
pub fn dropout_inplace(buf: &mut [f32], ratio: f32, seed: u64, step: u64) {
    let scale = 1.0 / (1.0 - ratio);
    let go = |(ci, o): (usize, &mut [f32])| {
        let base = ci * CHUNK;
        for (j, o) in o.iter_mut().enumerate() {
            let keep = lowmem_ir::dropout_keep(seed, step, (base + j) as u64, ratio);
            *o = if keep { *o * scale } else { 0.0 };
        }
    };
    if buf.len() >= PAR_ELEMS {
        buf.par_chunks_mut(CHUNK).enumerate().for_each(go);
    } else {
        buf.chunks_mut(CHUNK).enumerate().for_each(go);
    }
}

/// The gradients of `A ^ B` (numpy broadcasting), both of `out_shape` (the caller sums them
/// down): `da = dy * b * a^(b-1)` (0 where `b == 0`), `db = dy * a^b * ln a` (0 where
/// `a == 0` and `b >= 0`, as PyTorch; NaN for negative `a`).
#[allow(clippy::too_many_arguments)]
pub fn pow_grad(
    dy: &[f32],
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    da: &mut [f32],
    db: &mut [f32],
    out_shape: &[usize],
) {
    assert!(
        dy.len() == da.len() && dy.len() == db.len(),
        "pow_grad lengths"
    );
    expand(a, a_shape, da, out_shape);
    expand(b, b_shape, db, out_shape);
    let go = |((ga, gb), dy): ((&mut [f32], &mut [f32]), &[f32])| {
        for ((ga, gb), &d) in ga.iter_mut().zip(gb.iter_mut()).zip(dy) {
            let (av, bv) = (*ga, *gb);
            *ga = if bv == 0.0 {
                0.0
            } else {
                d * bv * av.powf(bv - 1.0)
            };
            *gb = if av == 0.0 && bv >= 0.0 {
                0.0
            } else {
                d * av.powf(bv) * av.ln()
            };
        }
    };
    if dy.len() >= PAR_ELEMS {
        da.par_chunks_mut(CHUNK)
            .zip(db.par_chunks_mut(CHUNK))
            .zip(dy.par_chunks(CHUNK))
            .for_each(go);
    } else {
        go(((da, db), dy));
    }
}

fn check_labels(labels: &[i64], c: usize) -> Result<(), String> {
    match labels
        .iter()
        .enumerate()
        .find(|&(_, &l)| l < 0 || l as u64 >= c as u64)
    {
        Some((i, l)) => Err(format!("label {l} (row {i}) is outside 0..{c}")),
        None => Ok(()),
    }
}

/// Per row: max and log-sum-exp (f64).
fn row_lse(row: &[f32]) -> (f64, f64) {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
    (m, m + s.ln())
}

/// Softmax cross-entropy: `out[0]` = the mean over the `n` rows of `logits [n, c]` of
/// `-log softmax(row)[label]` (f64, rows in order). A label outside `0..c` is an error (the
/// message names it); nothing is written then.
pub fn softmax_cross_entropy(
    logits: &[f32],
    n: usize,
    c: usize,
    labels: &[i64],
    out: &mut [f32],
) -> Result<(), String> {
    assert!(
        logits.len() == n * c && labels.len() == n && out.len() == 1,
        "softmax_cross_entropy lengths"
    );
    check_labels(labels, c)?;
    let mut total = 0f64;
    if c > 0 {
        for (row, &l) in logits.chunks(c).zip(labels) {
            let (_, lse) = row_lse(row);
            total += lse - row[l as usize] as f64;
        }
    }
    out[0] = (total / n as f64) as f32;
    Ok(())
}

/// The gradient of [`softmax_cross_entropy`]: `out = dloss * (softmax(row) - onehot(label)) /
/// n`. Labels are checked as there.
pub fn softmax_cross_entropy_grad(
    dloss: f32,
    logits: &[f32],
    n: usize,
    c: usize,
    labels: &[i64],
    out: &mut [f32],
) -> Result<(), String> {
    assert!(
        logits.len() == n * c && labels.len() == n && out.len() == n * c,
        "softmax_cross_entropy_grad lengths"
    );
    check_labels(labels, c)?;
    if c == 0 {
        return Ok(());
    }
    let k = dloss as f64 / n as f64;
    let go = |((o, row), &l): ((&mut [f32], &[f32]), &i64)| {
        let (_, lse) = row_lse(row);
        for (j, (o, &v)) in o.iter_mut().zip(row).enumerate() {
            let p = (v as f64 - lse).exp() - (j as i64 == l) as u8 as f64;
            *o = (p * k) as f32;
        }
    };
    if logits.len() >= PAR_ELEMS {
        out.par_chunks_mut(c)
            .zip(logits.par_chunks(c))
            .zip(labels.par_iter())
            .for_each(go);
    } else {
        out.chunks_mut(c)
            .zip(logits.chunks(c))
            .zip(labels)
            .for_each(go);
    }
    Ok(())
}

/// Mean squared error: `out[0] = mean((p - t)^2)`, f64 partial sums over fixed chunks added in
/// order (deterministic whatever the thread count).
pub fn mse_loss(p: &[f32], t: &[f32], out: &mut [f32]) {
    assert!(p.len() == t.len() && out.len() == 1, "mse_loss lengths");
    let part = |(p, t): (&[f32], &[f32])| -> f64 {
        p.iter()
            .zip(t)
            .map(|(&p, &t)| {
                let d = p as f64 - t as f64;
                d * d
            })
            .sum()
    };
    // The partial sums of BATCH chunks at a time in a stack buffer, added in chunk order.
    const BATCH: usize = 64;
    let mut total: Option<f64> = None;
    for (p, t) in p.chunks(CHUNK * BATCH).zip(t.chunks(CHUNK * BATCH)) {
        let mut parts = [0f64; BATCH];
        let parts = &mut parts[..p.len().div_ceil(CHUNK)];
        let go = |(s, (p, t)): (&mut f64, (&[f32], &[f32]))| *s = part((p, t));
        if p.len() >= PAR_ELEMS {
            parts
                .par_iter_mut()
                .zip(p.par_chunks(CHUNK).zip(t.par_chunks(CHUNK)))
                .for_each(go);
        } else {
            parts
                .iter_mut()
                .zip(p.chunks(CHUNK).zip(t.chunks(CHUNK)))
                .for_each(go);
        }
        // `Iterator::sum` order: left to right (its start value, +-0, adds exactly to the
        // first part, a sum of squares).
        for &v in parts.iter() {
            total = Some(total.map_or(v, |s| s + v));
        }
    }
    // An empty input: the sum of no parts.
    let sum = total.unwrap_or_else(|| std::iter::empty::<f64>().sum());
    out[0] = (sum / p.len() as f64) as f32;
}

/// The gradient of [`mse_loss`]: `out = (dloss * 2 / numel) * (p - t)` (f32).
pub fn mse_loss_grad(dloss: f32, p: &[f32], t: &[f32], out: &mut [f32]) {
    assert!(
        p.len() == t.len() && out.len() == p.len(),
        "mse_loss_grad lengths"
    );
    let k = dloss * 2.0 / p.len() as f32;
    let go = |((o, p), t): ((&mut [f32], &[f32]), &[f32])| {
        for ((o, &p), &t) in o.iter_mut().zip(p).zip(t) {
            *o = k * (p - t);
        }
    };
    if p.len() >= PAR_ELEMS {
        out.par_chunks_mut(CHUNK)
            .zip(p.par_chunks(CHUNK))
            .zip(t.par_chunks(CHUNK))
            .for_each(go);
    } else {
        go(((out, p), t));
    }
}

/// PyTorch's SGD step in place: `g' = g + weight_decay * w; v = momentum * v + g';
/// w -= lr * v` (f32, in this order). `v` is required exactly when `momentum != 0`; without
/// it `w -= lr * g'`.
pub fn sgd_update(
    w: &mut [f32],
    g: &[f32],
    v: Option<&mut [f32]>,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
) {
    assert_eq!(w.len(), g.len(), "sgd_update lengths");
    let par = w.len() >= PAR_ELEMS;
    match v {
        Some(v) => {
            assert_eq!(v.len(), w.len(), "sgd_update velocity length");
            let go = |((w, v), g): ((&mut [f32], &mut [f32]), &[f32])| {
                for ((w, v), &g) in w.iter_mut().zip(v.iter_mut()).zip(g) {
                    let g = g + weight_decay * *w;
                    *v = momentum * *v + g;
                    *w -= lr * *v;
                }
            };
            if par {
                w.par_chunks_mut(CHUNK)
                    .zip(v.par_chunks_mut(CHUNK))
                    .zip(g.par_chunks(CHUNK))
                    .for_each(go);
            } else {
                go(((w, v), g));
            }
        }
        None => {
            assert!(momentum == 0.0, "sgd_update with momentum needs a velocity");
            let go = |(w, g): (&mut [f32], &[f32])| {
                for (w, &g) in w.iter_mut().zip(g) {
                    let g = g + weight_decay * *w;
                    *w -= lr * g;
                }
            };
            if par {
                w.par_chunks_mut(CHUNK)
                    .zip(g.par_chunks(CHUNK))
                    .for_each(go);
            } else {
                go((w, g));
            }
        }
    }
}

/// Adam's hyper-parameters (see [`adam_update`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamParams {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub epsilon: f32,
    pub weight_decay: f32,
    /// AdamW: decay `w` directly instead of adding `weight_decay * w` to the gradient.
    pub decoupled: bool,
}

/// One Adam step in place at the 1-based `step` (panics below 1), f32 in this order:
/// `g' = g + wd*w` (unless decoupled); `m = b1*m + (1-b1)*g'`; `v = b2*v + (1-b2)*g'^2`;
/// `mhat = m / (1 - b1^t)`; `vhat = v / (1 - b2^t)`;
/// `w -= lr * (mhat / (sqrt(vhat) + eps) + (decoupled ? wd*w : 0))`.
pub fn adam_update(
    w: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    step: i64,
    p: &AdamParams,
) {
    assert!(step >= 1, "adam_update step {step} < 1");
    assert!(
        g.len() == w.len() && m.len() == w.len() && v.len() == w.len(),
        "adam_update lengths"
    );
    let t = step.min(i32::MAX as i64) as i32;
    let bc1 = 1.0 - p.beta1.powi(t);
    let bc2 = 1.0 - p.beta2.powi(t);
    let p = *p;
    let go = |(((w, m), v), g): (((&mut [f32], &mut [f32]), &mut [f32]), &[f32])| {
        for (((w, m), v), &g) in w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
            let g = if p.decoupled {
                g
            } else {
                g + p.weight_decay * *w
            };
            *m = p.beta1 * *m + (1.0 - p.beta1) * g;
            *v = p.beta2 * *v + (1.0 - p.beta2) * g * g;
            let mhat = *m / bc1;
            let vhat = *v / bc2;
            let decay = if p.decoupled {
                p.weight_decay * *w
            } else {
                0.0
            };
            *w -= p.lr * (mhat / (vhat.sqrt() + p.epsilon) + decay);
        }
    };
    if w.len() >= PAR_ELEMS {
        w.par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(go);
    } else {
        go((((w, m), v), g));
    }
}
