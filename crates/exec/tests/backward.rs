//! Backward kernels against central finite differences of naive f64 forward references,
//! optimizer steps against hand computation, dropout masks, losses and determinism.
#![allow(clippy::type_complexity, clippy::too_many_arguments)]

mod common;

use common::*;
use lowmem_exec::kernels::{self, UnaryGrad};
use lowmem_exec::{ExecError, run};
use lowmem_ir::{AutoPad, ConvAttrs, Graph, Op, PoolAttrs, TensorData};
use lowmem_testkit::Rng;

// ---------------------------------------------------------------- harness

fn dot(a: &[f64], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&a, &b)| a * b as f64).sum()
}

/// Checks the gradient `g` of the scalar `f` at `x` against central differences (step `h`):
/// along random directions, and per coordinate on up to 24 coordinates. Errors are measured
/// against the gradient's scale (`tol` relative).
#[track_caller]
fn check_grad(
    what: &str,
    rng: &mut Rng,
    x: &[f32],
    g: &[f32],
    f: &dyn Fn(&[f64]) -> f64,
    h: f64,
    tol: f64,
) {
    assert_eq!(x.len(), g.len(), "{what}: gradient length");
    let x0 = to64(x);
    let scale = g
        .iter()
        .fold(0f64, |m, &v| m.max((v as f64).abs()))
        .max(1e-8);
    let fd = |d: &[f64]| {
        let p: Vec<f64> = x0.iter().zip(d).map(|(x, d)| x + h * d).collect();
        let m: Vec<f64> = x0.iter().zip(d).map(|(x, d)| x - h * d).collect();
        (f(&p) - f(&m)) / (2.0 * h)
    };
    for k in 0..3 {
        let d: Vec<f64> = (0..x.len()).map(|_| rng.f() as f64).collect();
        let (num, ana) = (fd(&d), dot(&d, g));
        let mag: f64 = d.iter().zip(g).map(|(d, &g)| (d * g as f64).abs()).sum();
        assert!(
            (num - ana).abs() <= tol * (num.abs() + mag + 1e-8),
            "{what}: direction {k}: finite difference {num}, kernel {ana}"
        );
    }
    let coords: Vec<usize> = if x.len() <= 24 {
        (0..x.len()).collect()
    } else {
        (0..24).map(|_| rng.range(0, x.len())).collect()
    };
    let mut e = vec![0f64; x.len()];
    for i in coords {
        e[i] = 1.0;
        let num = fd(&e);
        e[i] = 0.0;
        assert!(
            (num - g[i] as f64).abs() <= tol * (num.abs() + scale),
            "{what}: coordinate {i}: finite difference {num}, kernel {}",
            g[i]
        );
    }
}

/// `sum(y * r)`.
fn inner(y: &[f64], r: &[f32]) -> f64 {
    dot(y, r)
}

const TOL: f64 = 1e-3;

// ---------------------------------------------------------------- convolution

fn check_conv_grad(rng: &mut Rng, xs: &[usize], ws: &[usize], attrs: ConvAttrs) {
    let group = attrs.group;
    let win = attrs.window(xs, ws).unwrap();
    let x = rng.vec(numel(xs));
    let w = rng.vec(numel(ws));
    let mut ys = vec![xs[0], ws[0]];
    ys.extend(&win.output);
    let r = rng.vec(numel(&ys));
    let what = format!("conv x{xs:?} w{ws:?} {attrs:?}");

    let mut dx = vec![f32::NAN; x.len()];
    let mut buf = vec![f32::NAN; kernels::conv_backward_data_workspace_len(xs, ws, &win, group)];
    kernels::conv_backward_data(&r, &w, ws, xs, &win, group, &mut dx, &mut buf);
    let w64 = to64(&w);
    let fx = |xv: &[f64]| inner(&naive_conv(xv, xs, &w64, ws, None, &win, group), &r);
    check_grad(&format!("{what} dX"), rng, &x, &dx, &fx, 1e-3, TOL);

    let mut dw = vec![f32::NAN; w.len()];
    let mut buf = vec![f32::NAN; kernels::conv_backward_filter_workspace_len(xs, ws, &win, group)];
    kernels::conv_backward_filter(&r, &x, xs, ws, &win, group, &mut dw, &mut buf);
    let x64 = to64(&x);
    let fw = |wv: &[f64]| inner(&naive_conv(&x64, xs, wv, ws, None, &win, group), &r);
    check_grad(&format!("{what} dW"), rng, &w, &dw, &fw, 1e-3, TOL);
}

#[test]
fn conv_backward_matches_finite_differences() {
    let mut rng = Rng::new(101);
    let c =
        |strides: Vec<usize>, dilations: Vec<usize>, pads: Vec<usize>, group: usize| ConvAttrs {
            strides,
            dilations,
            pads,
            group,
            ..Default::default()
        };
    let cases: Vec<(Vec<usize>, Vec<usize>, ConvAttrs)> = vec![
        (
            vec![2, 3, 5, 6],
            vec![4, 3, 3, 3],
            c(vec![], vec![], vec![1, 1, 1, 1], 1),
        ),
        (
            vec![2, 4, 9, 8],
            vec![6, 2, 3, 2],
            c(vec![2, 3], vec![2, 1], vec![0, 2, 1, 1], 2),
        ),
        (
            vec![2, 4, 6, 5],
            vec![8, 1, 3, 3],
            c(vec![2, 2], vec![], vec![1, 1, 1, 1], 4),
        ),
        (
            vec![1, 3, 5, 5],
            vec![3, 1, 3, 2],
            c(vec![1, 2], vec![1, 2], vec![2, 0, 0, 1], 3),
        ),
        (
            vec![2, 4, 5, 5],
            vec![6, 4, 1, 1],
            c(vec![], vec![], vec![], 1),
        ),
        (
            vec![1, 6, 5, 5],
            vec![6, 3, 1, 1],
            c(vec![2, 2], vec![], vec![], 2),
        ),
        (
            vec![2, 3, 11],
            vec![4, 3, 3],
            c(vec![2], vec![2], vec![2, 1], 1),
        ),
        (
            vec![1, 2, 10],
            vec![2, 1, 4],
            c(vec![3], vec![], vec![1, 3], 2),
        ),
        (
            vec![1, 2, 4, 5, 4],
            vec![3, 2, 2, 3, 2],
            c(vec![1, 2, 1], vec![], vec![1, 0, 1, 0, 1, 1], 1),
        ),
        (
            vec![1, 2, 7, 6],
            vec![3, 2, 3, 3],
            ConvAttrs {
                strides: vec![2, 2],
                auto_pad: AutoPad::SameUpper,
                ..Default::default()
            },
        ),
        (
            vec![1, 2, 6, 7],
            vec![2, 2, 2, 3],
            ConvAttrs {
                strides: vec![2, 1],
                auto_pad: AutoPad::SameLower,
                ..Default::default()
            },
        ),
    ];
    for (xs, ws, a) in cases {
        check_conv_grad(&mut rng, &xs, &ws, a);
    }
}

/// col2im is im2col's adjoint.
#[test]
fn col2im_is_the_adjoint_of_im2col() {
    let mut rng = Rng::new(102);
    let xs = [1, 2, 6, 7];
    let ws = [1, 2, 3, 2];
    let win = ConvAttrs {
        strides: vec![2, 1],
        dilations: vec![1, 2],
        pads: vec![1, 0, 2, 1],
        ..Default::default()
    }
    .window(&xs, &ws)
    .unwrap();
    let x = rng.vec(numel(&xs));
    let n = 2 * win.kernel_size() * win.output_size();
    let cr = rng.vec(n);
    let mut col = vec![0.0; n];
    kernels::im2col(&x, 2, &win, &mut col);
    let mut back = vec![0.0; x.len()];
    kernels::col2im(&cr, 2, &win, &mut back);
    let a: f64 = col
        .iter()
        .zip(&cr)
        .map(|(&a, &b)| a as f64 * b as f64)
        .sum();
    let b: f64 = x
        .iter()
        .zip(&back)
        .map(|(&a, &b)| a as f64 * b as f64)
        .sum();
    assert!((a - b).abs() < 1e-5 * (1.0 + a.abs()), "{a} vs {b}");
}

// ---------------------------------------------------------------- pooling

/// Distinct values (no ties) in [-1, 1), shuffled.
fn distinct(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n).map(|i| i as f32 / n as f32 * 2.0 - 1.0).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.range(0, i + 1));
    }
    v
}

fn check_pool_grad(rng: &mut Rng, xs: &[usize], attrs: PoolAttrs) {
    let win = attrs.window(xs).unwrap();
    let mut ys = xs[..2].to_vec();
    ys.extend(&win.output);
    let r = rng.vec(numel(&ys));
    let what = format!("pool {xs:?} {attrs:?}");
    let x = distinct(rng, numel(xs));
    let mut dx = vec![f32::NAN; x.len()];
    kernels::max_pool_grad(&r, &x, xs, &win, &mut dx);
    let f = |xv: &[f64]| inner(&naive_pool(xv, xs, &win, true, false), &r);
    check_grad(&format!("max{what}"), rng, &x, &dx, &f, 1e-6, TOL);
    if win.dilations.iter().all(|&d| d == 1) {
        for inc in [false, true] {
            kernels::avg_pool_grad(&r, xs, &win, inc, &mut dx);
            let f = |xv: &[f64]| inner(&naive_pool(xv, xs, &win, false, inc), &r);
            check_grad(&format!("avg{what} inc={inc}"), rng, &x, &dx, &f, 1e-3, TOL);
        }
    }
}

#[test]
fn pool_backward_matches_finite_differences() {
    let mut rng = Rng::new(103);
    let p = |k: Vec<usize>, s: Vec<usize>, pads: Vec<usize>, ceil: bool| PoolAttrs {
        kernel_shape: k,
        strides: s,
        pads,
        ceil_mode: ceil,
        ..Default::default()
    };
    check_pool_grad(
        &mut rng,
        &[2, 2, 6, 6],
        p(vec![2, 2], vec![2, 2], vec![], false),
    );
    check_pool_grad(
        &mut rng,
        &[1, 2, 7, 7],
        p(vec![3, 3], vec![1, 1], vec![1, 1, 1, 1], false),
    );
    check_pool_grad(
        &mut rng,
        &[1, 2, 7, 8],
        p(vec![3, 3], vec![2, 2], vec![0, 1, 1, 0], true),
    );
    check_pool_grad(
        &mut rng,
        &[1, 1, 6, 6],
        p(vec![2, 2], vec![2, 2], vec![0, 0, 1, 1], true),
    );
    check_pool_grad(&mut rng, &[2, 3, 10], p(vec![3], vec![2], vec![1, 2], true));
    check_pool_grad(
        &mut rng,
        &[1, 2, 4, 5, 6],
        p(vec![2, 3, 2], vec![2, 1, 2], vec![1, 0, 1, 0, 1, 1], true),
    );
    check_pool_grad(
        &mut rng,
        &[1, 2, 9, 9],
        PoolAttrs {
            kernel_shape: vec![3, 2],
            dilations: vec![2, 3],
            pads: vec![1, 2, 1, 0],
            strides: vec![2, 1],
            ceil_mode: true,
            ..Default::default()
        },
    );
    check_pool_grad(
        &mut rng,
        &[1, 2, 7, 6],
        PoolAttrs {
            kernel_shape: vec![3, 3],
            auto_pad: AutoPad::SameUpper,
            strides: vec![2, 2],
            ..Default::default()
        },
    );
    for _ in 0..12 {
        let r = rng.range(1, 4);
        let k: Vec<usize> = (0..r).map(|_| rng.range(1, 4)).collect();
        let pads: Vec<usize> = (0..2 * r).map(|i| rng.range(0, k[i % r])).collect();
        let s: Vec<usize> = (0..r).map(|_| rng.range(1, 4)).collect();
        let mut xs = vec![rng.range(1, 3), rng.range(1, 3)];
        xs.extend((0..r).map(|d| k[d] + rng.range(0, 4)));
        let ceil = rng.bool();
        check_pool_grad(&mut rng, &xs, p(k, s, pads, ceil));
    }
}

#[test]
fn maxpool_grad_goes_to_the_first_maximum_and_never_to_padding() {
    // Ties: every window holds equal values; only the first in scan order gets dy.
    let xs = [1, 1, 2, 3];
    let win = PoolAttrs {
        kernel_shape: vec![2, 2],
        pads: vec![1, 1, 1, 1],
        ..Default::default()
    }
    .window(&xs)
    .unwrap();
    let x = vec![-5.0f32; 6];
    let dy = vec![1.0f32; win.output_size()];
    let mut dx = vec![0.0; 6];
    kernels::max_pool_grad(&dy, &x, &xs, &win, &mut dx);
    // Output windows 3x4; each picks the first valid element of its window.
    let mut want = [0.0f32; 6];
    for oh in 0..3usize {
        for ow in 0..4usize {
            let (h, w) = (oh.saturating_sub(1), ow.saturating_sub(1));
            want[h * 3 + w] += 1.0;
        }
    }
    assert_eq!(dx, want);
}

#[test]
fn global_average_pool_grad() {
    let mut rng = Rng::new(104);
    let xs = [2, 3, 4, 5];
    let x = rng.vec(numel(&xs));
    let r = rng.vec(6);
    let mut dx = vec![0.0; x.len()];
    kernels::global_avg_pool_grad(&r, &xs, &mut dx);
    let f = |xv: &[f64]| {
        let y: Vec<f64> = xv
            .chunks(20)
            .map(|c| c.iter().sum::<f64>() / 20.0)
            .collect();
        inner(&y, &r)
    };
    check_grad("gap", &mut rng, &x, &dx, &f, 1e-3, TOL);
}

// ---------------------------------------------------------------- normalisations

fn lrn64(x: &[f64], xs: &[usize], size: usize, alpha: f64, beta: f64, bias: f64) -> Vec<f64> {
    let c = xs[1] as i64;
    let (lo, hi) = (((size - 1) / 2) as i64, (size as i64) / 2);
    indices(xs)
        .iter()
        .map(|idx| {
            let ch = idx[1] as i64;
            let mut sq = 0f64;
            for cc in (ch - lo).max(0)..=(ch + hi).min(c - 1) {
                let mut j = idx.clone();
                j[1] = cc as usize;
                sq += x[offset(&j, xs)].powi(2);
            }
            x[offset(idx, xs)] / (bias + alpha / size as f64 * sq).powf(beta)
        })
        .collect()
}

#[test]
fn lrn_backward() {
    let mut rng = Rng::new(105);
    for size in [1, 2, 3, 4, 5] {
        let xs = [2, 6, 2, 2];
        let x: Vec<f32> = rng.vec(numel(&xs)).iter().map(|v| v * 3.0).collect();
        let r = rng.vec(x.len());
        let (alpha, beta, bias) = (0.5f32, 0.75f32, 1.5f32);
        let mut y = vec![0.0; x.len()];
        kernels::lrn(&x, &xs, size, alpha, beta, bias, &mut y);
        let mut dx = vec![0.0; x.len()];
        kernels::lrn_grad(&r, &x, &y, &xs, size, alpha, beta, bias, &mut dx);
        let f = |xv: &[f64]| {
            inner(
                &lrn64(xv, &xs, size, alpha as f64, beta as f64, bias as f64),
                &r,
            )
        };
        check_grad(
            &format!("lrn size {size}"),
            &mut rng,
            &x,
            &dx,
            &f,
            1e-4,
            TOL,
        );
    }
}

fn softmax64(x: &[f64], xs: &[usize], axis: usize, legacy: bool, log: bool) -> Vec<f64> {
    let group = |i: &[usize]| -> Vec<usize> {
        if legacy {
            i[..axis].to_vec()
        } else {
            let mut g = i.to_vec();
            g[axis] = usize::MAX;
            g
        }
    };
    let all = indices(xs);
    all.iter()
        .map(|i| {
            let gi = group(i);
            let s: f64 = all
                .iter()
                .filter(|j| group(j) == gi)
                .map(|j| x[offset(j, xs)].exp())
                .sum();
            let v = x[offset(i, xs)];
            if log { v - s.ln() } else { v.exp() / s }
        })
        .collect()
}

#[test]
fn softmax_backward_legacy_and_per_axis() {
    let mut rng = Rng::new(106);
    let xs = [2, 3, 4];
    let x: Vec<f32> = rng.vec(24).iter().map(|v| v * 3.0).collect();
    for axis in 0..3 {
        for legacy in [false, true] {
            for log in [false, true] {
                let r = rng.vec(24);
                let mut y = vec![0.0; 24];
                kernels::softmax(&x, &xs, axis, legacy, log, &mut y);
                let mut dx = vec![0.0; 24];
                kernels::softmax_grad(&r, &y, &xs, axis, legacy, log, &mut dx);
                let f = |xv: &[f64]| inner(&softmax64(xv, &xs, axis, legacy, log), &r);
                let what = format!("softmax axis {axis} legacy {legacy} log {log}");
                check_grad(&what, &mut rng, &x, &dx, &f, 1e-4, TOL);
            }
        }
    }
}

fn layer_norm64(
    x: &[f64],
    xs: &[usize],
    axis: usize,
    sc: &[f64],
    bi: &[f64],
    ss: &[usize],
    eps: f64,
) -> Vec<f64> {
    let norm = &xs[axis..];
    let inner_n: usize = numel(norm);
    let pad = norm.len() - ss.len();
    let nidx = indices(norm);
    let mut out = vec![];
    for row in x.chunks(inner_n) {
        let mean = row.iter().sum::<f64>() / inner_n as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / inner_n as f64;
        for (j, &v) in row.iter().enumerate() {
            let si: Vec<usize> = (0..ss.len())
                .map(|d| if ss[d] == 1 { 0 } else { nidx[j][pad + d] })
                .collect();
            let o = offset(&si, ss);
            out.push((v - mean) / (var + eps).sqrt() * sc[o] + bi[o]);
        }
    }
    out
}

#[test]
fn layer_norm_backward() {
    let mut rng = Rng::new(107);
    let xs = [2, 3, 4];
    let eps = 1e-5f32;
    for (axis, ss) in [
        (1usize, vec![3usize, 4]),
        (1, vec![4]),
        (1, vec![3, 1]),
        (2, vec![4]),
        (0, vec![1]),
    ] {
        let x = rng.vec(24);
        let sc = rng.vec(numel(&ss));
        let bi = rng.vec(numel(&ss));
        let r = rng.vec(24);
        let mut ws = vec![f32::NAN; kernels::layer_norm_grad_workspace_len(&xs, axis, numel(&ss))];
        let (mut dx, mut ds, mut db) = (vec![0.0; 24], vec![0.0; sc.len()], vec![0.0; sc.len()]);
        kernels::layer_norm_grad(
            &r, &x, &xs, axis, &sc, &ss, eps, &mut dx, &mut ds, &mut db, &mut ws,
        );
        let e = eps as f64;
        let (x64, s64, b64) = (to64(&x), to64(&sc), to64(&bi));
        let what = format!("layernorm axis {axis} scale {ss:?}");
        let f = |v: &[f64]| inner(&layer_norm64(v, &xs, axis, &s64, &b64, &ss, e), &r);
        check_grad(&format!("{what} dX"), &mut rng, &x, &dx, &f, 1e-4, TOL);
        let f = |v: &[f64]| inner(&layer_norm64(&x64, &xs, axis, v, &b64, &ss, e), &r);
        check_grad(&format!("{what} dScale"), &mut rng, &sc, &ds, &f, 1e-4, TOL);
        let f = |v: &[f64]| inner(&layer_norm64(&x64, &xs, axis, &s64, v, &ss, e), &r);
        check_grad(&format!("{what} dBias"), &mut rng, &bi, &db, &f, 1e-4, TOL);
    }
}

/// Batch norm in f64; `stats: None` uses the batch statistics of `x`.
fn batch_norm64(
    x: &[f64],
    xs: &[usize],
    sc: &[f64],
    bi: &[f64],
    stats: Option<(&[f64], &[f64])>,
    eps: f64,
) -> Vec<f64> {
    let (n, c) = (xs[0], xs[1]);
    let sp: usize = numel(&xs[2..]);
    let at = |b: usize, ch: usize, s: usize| (b * c + ch) * sp + s;
    let mut out = vec![0f64; x.len()];
    for ch in 0..c {
        let (mean, var) = match stats {
            Some((m, v)) => (m[ch], v[ch]),
            None => {
                let vals: Vec<f64> = (0..n)
                    .flat_map(|b| (0..sp).map(move |s| (b, s)))
                    .map(|(b, s)| x[at(b, ch, s)])
                    .collect();
                let m = vals.iter().sum::<f64>() / vals.len() as f64;
                (
                    m,
                    vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / vals.len() as f64,
                )
            }
        };
        for b in 0..n {
            for s in 0..sp {
                out[at(b, ch, s)] = (x[at(b, ch, s)] - mean) / (var + eps).sqrt() * sc[ch] + bi[ch];
            }
        }
    }
    out
}

#[test]
fn batch_norm_train_and_backward() {
    let mut rng = Rng::new(108);
    let eps = 1e-5f32;
    for xs in [vec![3usize, 2, 2, 3], vec![4, 3], vec![2, 2, 5]] {
        let c = xs[1];
        let x = rng.vec(numel(&xs));
        let (sc, bi, rm) = (rng.vec(c), rng.vec(c), rng.vec(c));
        let rv: Vec<f32> = rng.vec(c).iter().map(|v| v.abs() + 0.5).collect();
        let r = rng.vec(x.len());
        let e = eps as f64;
        let (x64, s64, b64) = (to64(&x), to64(&sc), to64(&bi));

        // Training forward: Y, saved stats, running-stat update.
        let mom = 0.9f32;
        let mut y = vec![0.0; x.len()];
        let mut st = vec![vec![0.0f32; c]; 4];
        let [m, inv, nrm, nrv] = &mut st[..] else {
            unreachable!()
        };
        nrm.copy_from_slice(&rm);
        nrv.copy_from_slice(&rv);
        kernels::batch_norm_train(&x, &xs, &sc, &bi, eps, mom, &mut y, m, inv, nrm, nrv);
        assert_close(
            &y,
            &batch_norm64(&x64, &xs, &s64, &b64, None, e),
            1e-5,
            "bn train Y",
        );
        let sp = numel(&xs[2..]);
        for ch in 0..c {
            let vals: Vec<f64> = (0..xs[0])
                .flat_map(|b| (0..sp).map(move |s| (b * c + ch) * sp + s))
                .map(|i| x64[i])
                .collect();
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
            assert_close(&[m[ch]], &[mean], 1e-6, "saved mean");
            assert_close(&[inv[ch]], &[1.0 / (var + e).sqrt()], 1e-6, "saved invstd");
            let want_rm = rm[ch] as f64 * 0.9 + mean * (1.0 - 0.9f32 as f64);
            let want_rv = rv[ch] as f64 * 0.9 + var * (1.0 - 0.9f32 as f64);
            assert_close(&[nrm[ch]], &[want_rm], 1e-6, "running mean");
            assert_close(&[nrv[ch]], &[want_rv], 1e-6, "running var");
        }

        // Training backward.
        let (mut dx, mut ds, mut db) = (vec![0.0; x.len()], vec![0.0; c], vec![0.0; c]);
        kernels::batch_norm_grad(
            &r, &x, &xs, &sc, m, inv, eps, true, &mut dx, &mut ds, &mut db,
        );
        let what = format!("bn train {xs:?}");
        let f = |v: &[f64]| inner(&batch_norm64(v, &xs, &s64, &b64, None, e), &r);
        check_grad(&format!("{what} dX"), &mut rng, &x, &dx, &f, 1e-4, TOL);
        let f = |v: &[f64]| inner(&batch_norm64(&x64, &xs, v, &b64, None, e), &r);
        check_grad(&format!("{what} dScale"), &mut rng, &sc, &ds, &f, 1e-4, TOL);
        let f = |v: &[f64]| inner(&batch_norm64(&x64, &xs, &s64, v, None, e), &r);
        check_grad(&format!("{what} dBias"), &mut rng, &bi, &db, &f, 1e-4, TOL);

        // Inference backward: running statistics are constants.
        kernels::batch_norm_grad(
            &r, &x, &xs, &sc, &rm, &rv, eps, false, &mut dx, &mut ds, &mut db,
        );
        let (rm64, rv64) = (to64(&rm), to64(&rv));
        let st = Some((&rm64[..], &rv64[..]));
        let what = format!("bn inference {xs:?}");
        let f = |v: &[f64]| inner(&batch_norm64(v, &xs, &s64, &b64, st, e), &r);
        check_grad(&format!("{what} dX"), &mut rng, &x, &dx, &f, 1e-4, TOL);
        let f = |v: &[f64]| inner(&batch_norm64(&x64, &xs, v, &b64, st, e), &r);
        check_grad(&format!("{what} dScale"), &mut rng, &sc, &ds, &f, 1e-4, TOL);
        let f = |v: &[f64]| inner(&batch_norm64(&x64, &xs, &s64, v, st, e), &r);
        check_grad(&format!("{what} dBias"), &mut rng, &bi, &db, &f, 1e-4, TOL);
    }
}

// ---------------------------------------------------------------- elementwise

#[test]
fn elementwise_grads() {
    let mut rng = Rng::new(109);
    let s2 = std::f64::consts::SQRT_2;
    let c = (2.0 / std::f64::consts::PI).sqrt();
    // (grad op, forward in f64, reads Y (forward in f32 via the kernel) else X, input range)
    let cases: Vec<(
        UnaryGrad,
        Box<dyn Fn(f64) -> f64>,
        Option<kernels::Unary>,
        f32,
    )> = vec![
        (
            UnaryGrad::Relu,
            Box::new(|v: f64| v.max(0.0)),
            Some(kernels::Unary::Relu),
            3.0,
        ),
        (
            UnaryGrad::LeakyRelu(0.1),
            Box::new(|v: f64| if v < 0.0 { 0.1f32 as f64 * v } else { v }),
            None,
            3.0,
        ),
        (
            UnaryGrad::Sigmoid,
            Box::new(|v: f64| 1.0 / (1.0 + (-v).exp())),
            Some(kernels::Unary::Sigmoid),
            6.0,
        ),
        (
            UnaryGrad::Tanh,
            Box::new(|v: f64| v.tanh()),
            Some(kernels::Unary::Tanh),
            3.0,
        ),
        (
            UnaryGrad::Sqrt,
            Box::new(|v: f64| v.abs().sqrt()),
            Some(kernels::Unary::Sqrt),
            3.0,
        ),
        (UnaryGrad::Erf, Box::new(libm::erf), None, 3.0),
        (
            UnaryGrad::Gelu,
            Box::new(move |v: f64| 0.5 * v * (1.0 + libm::erf(v / s2))),
            None,
            4.0,
        ),
        (
            UnaryGrad::GeluTanh,
            Box::new(move |v: f64| 0.5 * v * (1.0 + (c * (v + 0.044715 * v.powi(3))).tanh())),
            None,
            4.0,
        ),
        (
            UnaryGrad::Clip {
                min: -1.0,
                max: 0.5,
            },
            Box::new(|v: f64| v.clamp(-1.0, 0.5)),
            None,
            2.0,
        ),
    ];
    for (op, f, fwd, range) in cases {
        let mut x: Vec<f32> = rng.vec(300).iter().map(|v| v * range).collect();
        // Keep away from kinks (0, the clip bounds) and sqrt's domain edge.
        for v in x.iter_mut() {
            if op == UnaryGrad::Sqrt {
                *v = v.abs() + 0.1;
            }
            for k in [0.0, -1.0, 0.5] {
                if (*v - k).abs() < 1e-2 {
                    *v = k + 0.05;
                }
            }
        }
        let dy = rng.vec(300);
        let v = match fwd {
            Some(u) => {
                let mut y = vec![0.0; x.len()];
                kernels::unary(u, &x, &mut y);
                y
            }
            None => x.clone(),
        };
        let mut dx = vec![0.0; x.len()];
        kernels::unary_grad(op, &dy, &v, &mut dx);
        let h = 1e-5;
        let want: Vec<f64> = x
            .iter()
            .zip(&dy)
            .map(|(&x, &d)| d as f64 * (f(x as f64 + h) - f(x as f64 - h)) / (2.0 * h))
            .collect();
        assert_close(&dx, &want, 1e-4, &format!("{op:?}"));
        let mut buf = dy.clone();
        kernels::unary_grad_inplace(op, &mut buf, &v);
        assert_eq!(buf, dx, "{op:?} in place");
    }
    // Clip ties pass the gradient; outside and NaN give 0.
    let mut o = [0.0f32; 4];
    kernels::unary_grad(
        UnaryGrad::Clip {
            min: -1.0,
            max: 1.0,
        },
        &[2.0; 4],
        &[-1.0, 1.0, 1.5, f32::NAN],
        &mut o,
    );
    assert_eq!(o, [2.0, 2.0, 0.0, 0.0]);
}

fn pow64(a: &[f64], ash: &[usize], b: &[f64], bsh: &[usize], os: &[usize]) -> Vec<f64> {
    let at = |v: &[f64], s: &[usize], idx: &[usize]| {
        let pad = idx.len() - s.len();
        let i: Vec<usize> = (0..s.len())
            .map(|d| if s[d] == 1 { 0 } else { idx[pad + d] })
            .collect();
        v[offset(&i, s)]
    };
    indices(os)
        .iter()
        .map(|i| at(a, ash, i).powf(at(b, bsh, i)))
        .collect()
}

#[test]
fn pow_grad_and_sum_to() {
    let mut rng = Rng::new(110);
    let (ash, bsh, os) = ([2usize, 3, 1], [3usize, 4], [2usize, 3, 4]);
    let a: Vec<f32> = rng.vec(6).iter().map(|v| v.abs() + 0.2).collect();
    let b = rng.vec(12).iter().map(|v| v * 2.0).collect::<Vec<_>>();
    let r = rng.vec(24);
    let (mut da, mut db) = (vec![0.0; 24], vec![0.0; 24]);
    kernels::pow_grad(&r, &a, &ash, &b, &bsh, &mut da, &mut db, &os);
    let (mut ga, mut gb) = (vec![0.0; 6], vec![0.0; 12]);
    kernels::sum_to(&da, &os, &mut ga, &ash, &mut rws(6));
    kernels::sum_to(&db, &os, &mut gb, &bsh, &mut rws(12));
    let (a64, b64) = (to64(&a), to64(&b));
    let f = |v: &[f64]| inner(&pow64(v, &ash, &b64, &bsh, &os), &r);
    check_grad("pow dA", &mut rng, &a, &ga, &f, 1e-5, TOL);
    let f = |v: &[f64]| inner(&pow64(&a64, &ash, v, &bsh, &os), &r);
    check_grad("pow dB", &mut rng, &b, &gb, &f, 1e-5, TOL);
    // 0^b with b >= 0 has dB 0 (not NaN); b == 0 has dA 0.
    let (mut da, mut db) = (vec![9.0; 2], vec![9.0; 2]);
    kernels::pow_grad(
        &[1.0, 1.0],
        &[0.0, 0.0],
        &[2],
        &[2.0, 0.0],
        &[2],
        &mut da,
        &mut db,
        &[2],
    );
    assert_eq!((da, db), (vec![0.0, 0.0], vec![0.0, 0.0]));
}

#[test]
fn expand_sum_to_slice_adjoint() {
    let mut rng = Rng::new(111);
    for (xs, os) in [
        (vec![3usize, 1], vec![2usize, 3, 4]),
        (vec![1, 4], vec![3, 4]),
        (vec![], vec![2, 2]),
        (vec![2, 1, 3], vec![2, 5, 3]),
        (vec![2, 3], vec![2, 3]),
    ] {
        let x = rng.vec(numel(&xs));
        let r = rng.vec(numel(&os));
        let mut g = vec![0.0; x.len()];
        kernels::sum_to(&r, &os, &mut g, &xs, &mut rws(x.len()));
        let f = |v: &[f64]| {
            let mut e = vec![0f64; numel(&os)];
            kernels::expand(v, &xs, &mut e, &os);
            inner(&e, &r)
        };
        check_grad(
            &format!("expand {xs:?} -> {os:?}"),
            &mut rng,
            &x,
            &g,
            &f,
            1e-3,
            TOL,
        );
    }
    let x: Vec<i64> = (0..24).collect();
    let mut o = vec![0; 8];
    kernels::slice(&x, &[2, 3, 4], 1, 1, 2, &mut o);
    assert_eq!(o, vec![4, 5, 6, 7, 16, 17, 18, 19]);
    let mut o = vec![0; 12];
    kernels::slice(&x, &[2, 3, 4], 2, 1, 3, &mut o);
    assert_eq!(o, vec![1, 2, 5, 6, 9, 10, 13, 14, 17, 18, 21, 22]);
}

// ---------------------------------------------------------------- losses

fn xent64(l: &[f64], n: usize, c: usize, labels: &[i64]) -> f64 {
    let mut t = 0.0;
    for (row, &y) in l.chunks(c).zip(labels) {
        let s: f64 = row.iter().map(|v| v.exp()).sum();
        t += s.ln() - row[y as usize];
    }
    t / n as f64
}

#[test]
fn losses_and_their_gradients() {
    let mut rng = Rng::new(112);
    let (n, c) = (4, 5);
    let logits: Vec<f32> = rng.vec(n * c).iter().map(|v| v * 4.0).collect();
    let labels = [0i64, 4, 2, 2];
    let mut loss = [0.0f32];
    kernels::softmax_cross_entropy(&logits, n, c, &labels, &mut loss).unwrap();
    assert_close(
        &loss,
        &[xent64(&to64(&logits), n, c, &labels)],
        1e-6,
        "xent",
    );
    let mut g = vec![0.0; n * c];
    kernels::softmax_cross_entropy_grad(0.7, &logits, n, c, &labels, &mut g).unwrap();
    let f = |v: &[f64]| 0.7f32 as f64 * xent64(v, n, c, &labels);
    check_grad("xent grad", &mut rng, &logits, &g, &f, 1e-4, TOL);
    let e = kernels::softmax_cross_entropy(&logits, n, c, &[0, 5, 1, 1], &mut loss).unwrap_err();
    assert!(e.contains("label 5"), "{e}");
    let e = kernels::softmax_cross_entropy_grad(1.0, &logits, n, c, &[0, 1, -1, 1], &mut g)
        .unwrap_err();
    assert!(e.contains("label -1"), "{e}");

    let p = rng.vec(12);
    let t = rng.vec(12);
    let mut l = [0.0f32];
    kernels::mse_loss(&p, &t, &mut l);
    let mse = |p: &[f64], t: &[f64]| {
        p.iter().zip(t).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / p.len() as f64
    };
    assert_close(&l, &[mse(&to64(&p), &to64(&t))], 1e-6, "mse");
    let mut g = vec![0.0; 12];
    kernels::mse_loss_grad(1.3, &p, &t, &mut g);
    let t64 = to64(&t);
    let f = |v: &[f64]| 1.3f32 as f64 * mse(v, &t64);
    check_grad("mse grad", &mut rng, &p, &g, &f, 1e-4, TOL);
}

fn graph_run(
    op: Op,
    ins: Vec<(&str, TensorData, Vec<usize>)>,
    n_out: usize,
) -> Result<Vec<TensorData>, ExecError> {
    let mut g = Graph::new("t");
    let mut ids = vec![];
    let mut vals = vec![];
    for (name, v, s) in ins {
        ids.push(g.add_input(name, v.dtype(), s).unwrap());
        vals.push(v);
    }
    let names: Vec<String> = (0..n_out).map(|i| format!("o{i}")).collect();
    let names: Vec<&str> = names.iter().map(|s| &s[..]).collect();
    let outs = g.add_node("node", op, &ids, &names).unwrap();
    g.set_outputs(outs);
    run(&g, &vals)
}

fn f32s(t: &TensorData) -> &[f32] {
    match t {
        TensorData::F32(v) => v,
        other => panic!("expected f32, got {}", other.dtype()),
    }
}

#[test]
fn bad_label_is_an_error_naming_node_and_label() {
    let ins = vec![
        ("logits", TensorData::F32(vec![0.0; 6]), vec![2, 3]),
        ("labels", TensorData::I64(vec![1, 3]), vec![2]),
    ];
    let e = graph_run(Op::SoftmaxCrossEntropy, ins, 1).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ExecError::Node { .. }), "{msg}");
    assert!(msg.contains("node") && msg.contains("label 3"), "{msg}");
    let ins = vec![
        ("logits", TensorData::F32(vec![0.0; 6]), vec![2, 3]),
        ("labels", TensorData::I64(vec![1, 2]), vec![2]),
    ];
    let out = graph_run(Op::SoftmaxCrossEntropy, ins, 1).unwrap();
    assert_close(f32s(&out[0]), &[3f64.ln()], 1e-6, "uniform xent");
}

// ---------------------------------------------------------------- optimizers

#[test]
fn sgd_step_by_hand() {
    let (w, g, v) = (
        vec![1.0f32, -2.0, 0.5],
        vec![0.1f32, 0.2, -0.3],
        vec![0.5f32, 0.0, -1.0],
    );
    let (lr, mom, wd) = (0.1f32, 0.9f32, 0.01f32);
    let (mut w1, mut v1) = (w.clone(), v.clone());
    kernels::sgd_update(&mut w1, &g, Some(&mut v1), lr, mom, wd);
    for i in 0..3 {
        let gg = g[i] + wd * w[i];
        let vv = mom * v[i] + gg;
        assert_eq!(v1[i], vv);
        assert_eq!(w1[i], w[i] - lr * vv);
    }
    assert_close(
        &w1[..1],
        &[1.0 - 0.1 * (0.9 * 0.5 + 0.1 + 0.01)],
        1e-6,
        "sgd w0",
    );
    let mut w2 = w.clone();
    kernels::sgd_update(&mut w2, &g, None, lr, 0.0, wd);
    assert_close(
        &w2,
        &[
            1.0 - 0.1 * 0.11,
            -2.0 - 0.1 * (0.2 - 0.02),
            0.5 - 0.1 * (-0.3 + 0.005),
        ],
        1e-6,
        "sgd plain",
    );
    // Through run: momentum 0 has one output, momentum has two.
    let op = Op::SgdUpdate {
        lr,
        momentum: 0.0,
        weight_decay: wd,
    };
    let ins = vec![
        ("w", TensorData::F32(w.clone()), vec![3]),
        ("g", TensorData::F32(g.clone()), vec![3]),
    ];
    assert_eq!(f32s(&graph_run(op, ins, 1).unwrap()[0]), &w2[..]);
    let op = Op::SgdUpdate {
        lr,
        momentum: mom,
        weight_decay: wd,
    };
    let ins = vec![
        ("w", TensorData::F32(w), vec![3]),
        ("g", TensorData::F32(g), vec![3]),
        ("v", TensorData::F32(v), vec![3]),
    ];
    let out = graph_run(op, ins, 2).unwrap();
    assert_eq!((f32s(&out[0]), f32s(&out[1])), (&w1[..], &v1[..]));
}

#[test]
fn adam_step_by_hand() {
    let (w, g) = (vec![1.0f32, -2.0, 0.5], vec![0.1f32, 0.2, -0.3]);
    let (m, v) = (vec![0.01f32, -0.02, 0.0], vec![0.001f32, 0.002, 0.0]);
    for decoupled in [false, true] {
        let p = kernels::AdamParams {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.1,
            decoupled,
        };
        let t = 3i64;
        let (mut w1, mut m1, mut v1) = (w.clone(), m.clone(), v.clone());
        kernels::adam_update(&mut w1, &g, &mut m1, &mut v1, t, &p);
        let mut want_w = vec![];
        for i in 0..3 {
            let (wi, wd) = (w[i] as f64, p.weight_decay as f64);
            let gi = g[i] as f64 + if decoupled { 0.0 } else { wd * wi };
            let (b1, b2) = (p.beta1 as f64, p.beta2 as f64);
            let mi = b1 * m[i] as f64 + (1.0 - b1) * gi;
            let vi = b2 * v[i] as f64 + (1.0 - b2) * gi * gi;
            let mh = mi / (1.0 - b1.powi(3));
            let vh = vi / (1.0 - b2.powi(3));
            let dec = if decoupled { wd * wi } else { 0.0 };
            want_w.push(wi - p.lr as f64 * (mh / (vh.sqrt() + p.epsilon as f64) + dec));
            assert_close(&m1[i..i + 1], &[mi], 1e-6, "adam m");
            assert_close(&v1[i..i + 1], &[vi], 1e-6, "adam v");
        }
        assert_close(&w1, &want_w, 1e-6, &format!("adam w decoupled={decoupled}"));
        let op = Op::AdamUpdate {
            lr: p.lr,
            beta1: p.beta1,
            beta2: p.beta2,
            epsilon: p.epsilon,
            weight_decay: p.weight_decay,
            decoupled,
        };
        let ins = |step: i64| {
            vec![
                ("w", TensorData::F32(w.clone()), vec![3]),
                ("g", TensorData::F32(g.clone()), vec![3]),
                ("m", TensorData::F32(m.clone()), vec![3]),
                ("v", TensorData::F32(v.clone()), vec![3]),
                ("step", TensorData::I64(vec![step]), vec![]),
            ]
        };
        let out = graph_run(op.clone(), ins(3), 3).unwrap();
        assert_eq!(f32s(&out[0]), &w1[..]);
        assert_eq!(f32s(&out[1]), &m1[..]);
        assert_eq!(f32s(&out[2]), &v1[..]);
        let e = graph_run(op, ins(0), 3).unwrap_err();
        assert!(e.to_string().contains("step 0"), "{e}");
    }
}

// ---------------------------------------------------------------- dropout

#[test]
fn dropout_train_and_grad_share_the_mask() {
    let n = 20000;
    let ratio = 0.3f32;
    let x = vec![1.0f32; n];
    let run_op = |op: Op, step: i64| {
        let ins = vec![
            ("x", TensorData::F32(x.clone()), vec![n]),
            ("step", TensorData::I64(vec![step]), vec![]),
        ];
        f32s(&graph_run(op, ins, 1).unwrap()[0]).to_vec()
    };
    let y = run_op(Op::DropoutTrain { ratio, seed: 7 }, 5);
    let dx = run_op(Op::DropoutGrad { ratio, seed: 7 }, 5);
    assert_eq!(y, dx, "same mask and scale");
    let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
    assert!((kept - 0.7).abs() < 0.02, "kept fraction {kept}");
    assert!(y.iter().all(|&v| v == 0.0 || v == 1.0 / (1.0 - ratio)));
    let other = run_op(Op::DropoutTrain { ratio, seed: 7 }, 6);
    let differ = y.iter().zip(&other).filter(|(a, b)| a != b).count();
    assert!(
        differ > n / 10,
        "a new step draws a new mask ({differ} differ)"
    );
    let other_seed = run_op(Op::DropoutTrain { ratio, seed: 8 }, 5);
    assert_ne!(y, other_seed);
    for (i, &v) in y.iter().enumerate() {
        assert_eq!(v != 0.0, lowmem_ir::dropout_keep(7, 5, i as u64, ratio));
    }
    // Ratio 0 keeps everything unscaled; the in-place and copying kernels agree.
    let mut buf = x.clone();
    kernels::dropout_inplace(&mut buf, 0.0, 1, 1);
    assert_eq!(buf, x);
    let r: Vec<f32> = Rng::new(3).vec(n);
    let mut a = vec![0.0; n];
    kernels::dropout(&r, 0.5, 9, 2, &mut a);
    let mut b = r.clone();
    kernels::dropout_inplace(&mut b, 0.5, 9, 2);
    assert_eq!(a, b);
}

// ---------------------------------------------------------------- determinism

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|v| v.to_bits()).collect()
}

/// Large enough to take the parallel paths: one thread and the full pool give identical bits.
#[test]
fn parallel_backward_is_deterministic() {
    let mut rng = Rng::new(113);
    let xs = [4, 16, 24, 24];
    let ws = [16, 8, 3, 3];
    let attrs = ConvAttrs {
        pads: vec![1, 1, 1, 1],
        group: 2,
        ..Default::default()
    };
    let win = attrs.window(&xs, &ws).unwrap();
    let x = rng.vec(numel(&xs));
    let w = rng.vec(numel(&ws));
    let dy = rng.vec(4 * 16 * 576);
    let sc = rng.vec(16);
    let compute = || {
        let mut out = vec![];
        let mut dx = vec![0.0; x.len()];
        let mut buf = vec![0.0; kernels::conv_backward_data_workspace_len(&xs, &ws, &win, 2)];
        kernels::conv_backward_data(&dy, &w, &ws, &xs, &win, 2, &mut dx, &mut buf);
        out.push(bits(&dx));
        let mut dw = vec![0.0; w.len()];
        let mut buf = vec![0.0; kernels::conv_backward_filter_workspace_len(&xs, &ws, &win, 2)];
        kernels::conv_backward_filter(&dy, &x, &xs, &ws, &win, 2, &mut dw, &mut buf);
        out.push(bits(&dw));
        let (mut ds, mut db) = (vec![0.0; 16], vec![0.0; 16]);
        let (m, v) = (vec![0.1; 16], vec![2.0; 16]);
        kernels::batch_norm_grad(
            &x, &x, &xs, &sc, &m, &v, 1e-5, true, &mut dx, &mut ds, &mut db,
        );
        out.extend([bits(&dx), bits(&ds), bits(&db)]);
        let ls = [4, 16, 576];
        let mut ws = vec![0.0; kernels::layer_norm_grad_workspace_len(&ls, 1, 576)];
        let (mut gs, mut gb) = (vec![0.0; 576], vec![0.0; 576]);
        let mut lx = vec![0.0; x.len()];
        kernels::layer_norm_grad(
            &x,
            &dx,
            &ls,
            1,
            &x[..576],
            &[576],
            1e-5,
            &mut lx,
            &mut gs,
            &mut gb,
            &mut ws,
        );
        out.extend([bits(&lx), bits(&gs), bits(&gb)]);
        let mut mp = vec![0.0; x.len()];
        let pw = PoolAttrs {
            kernel_shape: vec![3, 3],
            pads: vec![1, 1, 1, 1],
            ..Default::default()
        }
        .window(&xs)
        .unwrap();
        kernels::max_pool_grad(&x, &dx, &xs, &pw, &mut mp);
        out.push(bits(&mp));
        let mut l = [0.0];
        kernels::mse_loss(&x, &dx, &mut l);
        out.push(bits(&l));
        out
    };
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(compute);
    let many = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap()
        .install(compute);
    assert!(one == many, "results depend on the thread count");
    assert!(compute() == many);
}

/// Workspace for [`kernels::reduce`] / [`kernels::sum_to`] with `n` outputs.
fn rws(n: usize) -> Vec<f32> {
    vec![f32::NAN; kernels::reduce_workspace_len(n)]
}
