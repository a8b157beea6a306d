//! Each kernel against a naive f64 reference on small random shapes.
#![allow(clippy::type_complexity)]

mod common;

use common::*;
use lowmem_exec::kernels::{self, Binary, Unary};
use lowmem_ir::{AutoPad, ConvAttrs, PoolAttrs};
use lowmem_testkit::Rng;

// ---------------------------------------------------------------- convolution

#[allow(clippy::too_many_arguments)]
fn check_conv(
    rng: &mut Rng,
    n: usize,
    c: usize,
    m: usize,
    group: usize,
    spatial: &[usize],
    kernel: &[usize],
    attrs: ConvAttrs,
    bias: bool,
) {
    let mut xs = vec![n, c];
    xs.extend(spatial);
    let mut ws = vec![m, c / group];
    ws.extend(kernel);
    let win = ConvAttrs { group, ..attrs }.window(&xs, &ws).unwrap();
    let x = rng.vec(numel(&xs));
    let w = rng.vec(numel(&ws));
    let b = rng.vec(m);
    let b = bias.then_some(&b[..]);
    let mut out_shape = vec![n, m];
    out_shape.extend(&win.output);
    let mut out = vec![f32::NAN; numel(&out_shape)];
    let mut ws_buf = vec![f32::NAN; kernels::conv_workspace_len(&xs, &ws, &win, group)];
    kernels::conv(
        &x,
        &xs,
        &w,
        &ws,
        b,
        &win,
        group,
        None,
        &mut out,
        &mut ws_buf,
    );
    let want = naive_conv(&to64(&x), &xs, &to64(&w), &ws, b, &win, group);
    assert_close(
        &out,
        &want,
        1e-4,
        &format!("conv x{xs:?} w{ws:?} g{group} {win:?}"),
    );
}

#[test]
fn conv_2d_matches_direct_loops() {
    let mut rng = Rng::new(1);
    // Plain, padded, strided, dilated, asymmetric pads, 1x1, with and without bias.
    let cases: Vec<(
        usize,
        usize,
        usize,
        usize,
        Vec<usize>,
        Vec<usize>,
        ConvAttrs,
    )> = vec![
        (1, 3, 4, 1, vec![5, 6], vec![3, 3], ConvAttrs::default()),
        (
            2,
            3,
            5,
            1,
            vec![7, 6],
            vec![3, 3],
            ConvAttrs {
                pads: vec![1, 1, 1, 1],
                ..Default::default()
            },
        ),
        (
            2,
            4,
            6,
            2,
            vec![9, 8],
            vec![3, 2],
            ConvAttrs {
                strides: vec![2, 3],
                dilations: vec![2, 1],
                pads: vec![0, 2, 1, 1],
                ..Default::default()
            },
        ),
        (
            1,
            6,
            6,
            3,
            vec![5, 5],
            vec![1, 1],
            ConvAttrs {
                strides: vec![2, 2],
                ..Default::default()
            },
        ),
        (3, 8, 4, 1, vec![4, 5], vec![1, 1], ConvAttrs::default()),
        (
            1,
            2,
            3,
            1,
            vec![4, 4],
            vec![1, 1],
            ConvAttrs {
                pads: vec![1, 0, 0, 2],
                ..Default::default()
            },
        ),
        (
            2,
            3,
            2,
            1,
            vec![5, 7],
            vec![4, 3],
            ConvAttrs {
                auto_pad: AutoPad::SameUpper,
                strides: vec![2, 2],
                ..Default::default()
            },
        ),
        (
            1,
            2,
            2,
            1,
            vec![5, 7],
            vec![2, 4],
            ConvAttrs {
                auto_pad: AutoPad::SameLower,
                ..Default::default()
            },
        ),
        (
            1,
            2,
            2,
            1,
            vec![3, 3],
            vec![3, 3],
            ConvAttrs {
                pads: vec![3, 3, 3, 3],
                dilations: vec![2, 2],
                ..Default::default()
            },
        ),
    ];
    for (i, (n, c, m, g, sp, k, a)) in cases.into_iter().enumerate() {
        check_conv(&mut rng, n, c, m, g, &sp, &k, a, i % 2 == 0);
    }
}

#[test]
fn conv_depthwise_and_grouped() {
    let mut rng = Rng::new(2);
    for (c, m, g) in [(4, 4, 4), (3, 6, 3), (8, 8, 4), (6, 4, 2)] {
        for bias in [false, true] {
            check_conv(
                &mut rng,
                2,
                c,
                m,
                g,
                &[6, 7],
                &[3, 3],
                ConvAttrs {
                    pads: vec![1, 0, 2, 1],
                    strides: vec![1, 2],
                    dilations: vec![1, 2],
                    ..Default::default()
                },
                bias,
            );
        }
    }
}

#[test]
fn conv_1d_and_3d() {
    let mut rng = Rng::new(3);
    check_conv(
        &mut rng,
        2,
        3,
        4,
        1,
        &[11],
        &[3],
        ConvAttrs {
            pads: vec![2, 1],
            strides: vec![2],
            dilations: vec![2],
            ..Default::default()
        },
        true,
    );
    check_conv(
        &mut rng,
        1,
        4,
        4,
        4,
        &[9],
        &[5],
        ConvAttrs::default(),
        false,
    );
    check_conv(&mut rng, 1, 4, 6, 2, &[8], &[1], ConvAttrs::default(), true);
    check_conv(
        &mut rng,
        1,
        2,
        3,
        1,
        &[4, 5, 6],
        &[2, 3, 2],
        ConvAttrs {
            pads: vec![1, 0, 1, 0, 1, 1],
            strides: vec![1, 2, 2],
            ..Default::default()
        },
        true,
    );
}

#[test]
fn conv_random_configs() {
    let mut rng = Rng::new(4);
    for _ in 0..60 {
        let r = rng.range(1, 3);
        let g = [1, 1, 2, 3][rng.range(0, 4)];
        let c = g * rng.range(1, 4);
        let m = g * rng.range(1, 4);
        let kernel: Vec<usize> = (0..r).map(|_| rng.range(1, 4)).collect();
        let dil: Vec<usize> = (0..r).map(|_| rng.range(1, 3)).collect();
        let strides: Vec<usize> = (0..r).map(|_| rng.range(1, 4)).collect();
        let pads: Vec<usize> = (0..2 * r).map(|_| rng.range(0, 3)).collect();
        let spatial: Vec<usize> = (0..r)
            .map(|d| (kernel[d] - 1) * dil[d] + 1 + rng.range(0, 6))
            .collect();
        let attrs = ConvAttrs {
            strides,
            dilations: dil,
            pads,
            ..Default::default()
        };
        let bias = rng.bool();
        check_conv(&mut rng, rng_n(r), c, m, g, &spatial, &kernel, attrs, bias);
    }
}

fn rng_n(r: usize) -> usize {
    1 + r % 2
}

// ---------------------------------------------------------------- matmul / gemm

fn naive_matmul(a: &[f32], ash: &[usize], b: &[f32], bsh: &[usize]) -> (Vec<f64>, Vec<usize>) {
    let a2: Vec<usize> = if ash.len() == 1 {
        vec![1, ash[0]]
    } else {
        ash.to_vec()
    };
    let b2: Vec<usize> = if bsh.len() == 1 {
        vec![bsh[0], 1]
    } else {
        bsh.to_vec()
    };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let n = b2[b2.len() - 1];
    let (ab, bb) = (&a2[..a2.len() - 2], &b2[..b2.len() - 2]);
    let batch = lowmem_ir::shape::broadcast(ab, bb).unwrap();
    let mut out = Vec::new();
    for bi in indices(&batch) {
        let pick = |s: &[usize]| -> Vec<usize> {
            let pad = batch.len() - s.len();
            (0..s.len())
                .map(|i| if s[i] == 1 { 0 } else { bi[pad + i] })
                .collect()
        };
        let (ia, ib) = (pick(ab), pick(bb));
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0f64;
                for p in 0..k {
                    let mut xa = ia.clone();
                    xa.extend([i, p]);
                    let mut xb = ib.clone();
                    xb.extend([p, j]);
                    acc += a[offset(&xa, &a2)] as f64 * b[offset(&xb, &b2)] as f64;
                }
                out.push(acc);
            }
        }
    }
    let mut shape = batch;
    if ash.len() > 1 {
        shape.push(m);
    }
    if bsh.len() > 1 {
        shape.push(n);
    }
    (out, shape)
}

#[test]
fn matmul_numpy_semantics() {
    let mut rng = Rng::new(5);
    let cases: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![3, 4], vec![4, 5]),
        (vec![4], vec![4]),
        (vec![4], vec![4, 3]),
        (vec![3, 4], vec![4]),
        (vec![5], vec![2, 5, 3]),
        (vec![2, 3, 5], vec![5]),
        (vec![2, 1, 4, 5], vec![3, 5, 6]),
        (vec![2, 3, 4], vec![4, 2]),
        (vec![4, 3], vec![2, 3, 5]),
        (vec![1, 3, 4], vec![2, 4, 2]),
        (vec![2, 3, 0], vec![0, 4]),
        (vec![70, 80], vec![80, 90]),
        (vec![3, 70, 64], vec![3, 64, 50]),
    ];
    for (ash, bsh) in cases {
        let a = rng.vec(numel(&ash));
        let b = rng.vec(numel(&bsh));
        let (want, shape) = naive_matmul(&a, &ash, &b, &bsh);
        assert_eq!(
            shape,
            lowmem_ir::Op::MatMul
                .infer(
                    &[(lowmem_ir::DType::F32, &ash), (lowmem_ir::DType::F32, &bsh)],
                    1
                )
                .unwrap()[0]
                .1
        );
        let mut out = vec![f32::NAN; want.len()];
        let mut ws = vec![f32::NAN; kernels::matmul_workspace_len(&ash, &bsh)];
        kernels::matmul(&a, &ash, &b, &bsh, &mut out, &mut ws);
        assert_close(&out, &want, 1e-4, &format!("matmul {ash:?} x {bsh:?}"));
    }
}

#[test]
fn gemm_transposes_alpha_beta_and_c_broadcast() {
    let mut rng = Rng::new(6);
    let (m, k, n) = (5, 7, 4);
    for ta in [false, true] {
        for tb in [false, true] {
            for cs in [
                None,
                Some(vec![]),
                Some(vec![n]),
                Some(vec![m, 1]),
                Some(vec![1, n]),
                Some(vec![m, n]),
            ] {
                let (alpha, beta) = (0.5 + rng.f(), rng.f());
                let ash = if ta { vec![k, m] } else { vec![m, k] };
                let bsh = if tb { vec![n, k] } else { vec![k, n] };
                let a = rng.vec(m * k);
                let b = rng.vec(k * n);
                let c = cs.as_ref().map(|s| rng.vec(numel(s)));
                let mut want = vec![0f64; m * n];
                for i in 0..m {
                    for j in 0..n {
                        let mut acc = 0f64;
                        for p in 0..k {
                            let av = if ta { a[p * m + i] } else { a[i * k + p] };
                            let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                            acc += av as f64 * bv as f64;
                        }
                        let cv = match (&c, &cs) {
                            (Some(c), Some(s)) => {
                                let ci = match s.len() {
                                    0 => 0,
                                    1 => j,
                                    _ => {
                                        (if s[0] == 1 { 0 } else { i }) * s[1]
                                            + if s[1] == 1 { 0 } else { j }
                                    }
                                };
                                c[ci] as f64
                            }
                            _ => 0.0,
                        };
                        want[i * n + j] = alpha as f64 * acc + beta as f64 * cv;
                    }
                }
                let mut out = vec![f32::NAN; m * n];
                let cref = c.as_deref().zip(cs.as_deref());
                let mut ws = vec![f32::NAN; kernels::sgemm_workspace_len(m, n, k)];
                kernels::gemm(
                    &a, &ash, &b, &bsh, cref, alpha, beta, ta, tb, &mut out, &mut ws,
                );
                assert_close(&out, &want, 1e-5, &format!("gemm ta={ta} tb={tb} c={cs:?}"));
            }
        }
    }
    // beta = 0 ignores C even if it holds NaN.
    let mut out = vec![f32::NAN; 4];
    kernels::gemm(
        &[1.0; 4],
        &[2, 2],
        &[1.0; 4],
        &[2, 2],
        Some((&[f32::NAN], &[])),
        1.0,
        0.0,
        false,
        false,
        &mut out,
        &mut vec![f32::NAN; kernels::sgemm_workspace_len(2, 2, 2)],
    );
    assert_eq!(out, vec![2.0; 4]);
}

// ---------------------------------------------------------------- pooling

fn check_pool(rng: &mut Rng, xs: &[usize], attrs: PoolAttrs) {
    let win = attrs.window(xs).unwrap();
    let x = rng.vec(numel(xs));
    let mut os = xs[..2].to_vec();
    os.extend(&win.output);
    let mut out = vec![f32::NAN; numel(&os)];
    kernels::max_pool(&x, xs, &win, &mut out);
    assert_close(
        &out,
        &naive_pool(&to64(&x), xs, &win, true, false),
        0.0,
        &format!("maxpool {xs:?} {attrs:?}"),
    );
    if win.dilations.iter().all(|&d| d == 1) {
        for inc in [false, true] {
            kernels::avg_pool(&x, xs, &win, inc, &mut out);
            assert_close(
                &out,
                &naive_pool(&to64(&x), xs, &win, false, inc),
                1e-6,
                &format!("avgpool inc={inc} {xs:?} {attrs:?}"),
            );
        }
    }
}

#[test]
fn pooling_padding_ceil_mode_and_count_include_pad() {
    let mut rng = Rng::new(7);
    let p = |k: Vec<usize>, s: Vec<usize>, pads: Vec<usize>, ceil: bool| PoolAttrs {
        kernel_shape: k,
        strides: s,
        pads,
        ceil_mode: ceil,
        ..Default::default()
    };
    check_pool(
        &mut rng,
        &[2, 3, 8, 8],
        p(vec![2, 2], vec![2, 2], vec![], false),
    );
    check_pool(
        &mut rng,
        &[1, 2, 7, 7],
        p(vec![3, 3], vec![2, 2], vec![1, 1, 1, 1], false),
    );
    check_pool(
        &mut rng,
        &[1, 2, 7, 8],
        p(vec![3, 3], vec![2, 2], vec![0, 1, 1, 0], true),
    );
    check_pool(
        &mut rng,
        &[1, 1, 6, 6],
        p(vec![2, 2], vec![2, 2], vec![0, 0, 1, 1], true),
    );
    check_pool(
        &mut rng,
        &[1, 2, 112, 9],
        p(vec![3, 3], vec![2, 2], vec![], true),
    );
    check_pool(
        &mut rng,
        &[1, 2, 5, 6],
        p(vec![3, 2], vec![1, 3], vec![2, 1, 2, 1], true),
    );
    check_pool(&mut rng, &[2, 3, 10], p(vec![3], vec![2], vec![1, 2], true));
    check_pool(
        &mut rng,
        &[1, 2, 4, 5, 6],
        p(vec![2, 3, 2], vec![2, 1, 2], vec![1, 0, 1, 0, 1, 1], true),
    );
    check_pool(
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
    check_pool(
        &mut rng,
        &[1, 2, 7, 6],
        PoolAttrs {
            kernel_shape: vec![3, 3],
            auto_pad: AutoPad::SameUpper,
            strides: vec![2, 2],
            ..Default::default()
        },
    );
    for _ in 0..40 {
        let r = rng.range(1, 4);
        let k: Vec<usize> = (0..r).map(|_| rng.range(1, 4)).collect();
        let pads: Vec<usize> = (0..2 * r).map(|i| rng.range(0, k[i % r])).collect();
        let s: Vec<usize> = (0..r).map(|_| rng.range(1, 4)).collect();
        let mut xs = vec![rng.range(1, 3), rng.range(1, 4)];
        xs.extend((0..r).map(|d| k[d] + rng.range(0, 6)));
        let ceil = rng.bool();
        check_pool(&mut rng, &xs, p(k, s, pads, ceil));
    }
}

#[test]
fn maxpool_padding_never_wins() {
    let x = vec![-5.0f32; 9];
    let win = PoolAttrs {
        kernel_shape: vec![3, 3],
        pads: vec![1, 1, 1, 1],
        ..Default::default()
    }
    .window(&[1, 1, 3, 3])
    .unwrap();
    let mut out = vec![0.0; 9];
    kernels::max_pool(&x, &[1, 1, 3, 3], &win, &mut out);
    assert_eq!(out, vec![-5.0; 9]);
}

#[test]
fn global_average_pool() {
    let mut rng = Rng::new(8);
    let xs = [2, 3, 4, 5];
    let x = rng.vec(numel(&xs));
    let mut out = vec![0.0; 6];
    kernels::global_avg_pool(&x, &xs, &mut out);
    let want: Vec<f64> = x
        .chunks(20)
        .map(|c| c.iter().map(|&v| v as f64).sum::<f64>() / 20.0)
        .collect();
    assert_close(&out, &want, 1e-6, "gap");
}

// ---------------------------------------------------------------- LRN, norms, softmax

#[test]
fn lrn_matches_onnx_formula() {
    let mut rng = Rng::new(9);
    for size in [1, 2, 3, 4, 5] {
        let xs = [2, 6, 3, 2];
        let x = rng.vec(numel(&xs));
        let (alpha, beta, bias) = (1e-2f32, 0.75f32, 2.0f32);
        let mut out = vec![0.0; x.len()];
        kernels::lrn(&x, &xs, size, alpha, beta, bias, &mut out);
        let c = xs[1] as i64;
        let (lo, hi) = (((size - 1) / 2) as i64, (size as i64 - 1 + 1) / 2);
        let want: Vec<f64> = indices(&xs)
            .iter()
            .map(|idx| {
                let ch = idx[1] as i64;
                let mut sq = 0f64;
                for cc in (ch - lo).max(0)..=(ch + hi).min(c - 1) {
                    let mut j = idx.clone();
                    j[1] = cc as usize;
                    sq += (x[offset(&j, &xs)] as f64).powi(2);
                }
                x[offset(idx, &xs)] as f64
                    / (bias as f64 + alpha as f64 / size as f64 * sq).powf(beta as f64)
            })
            .collect();
        assert_close(&out, &want, 1e-6, &format!("lrn size {size}"));
    }
}

#[test]
fn batch_norm_inference() {
    let mut rng = Rng::new(10);
    let xs = [2, 3, 2, 3];
    let x = rng.vec(numel(&xs));
    let (s, b, m) = (rng.vec(3), rng.vec(3), rng.vec(3));
    let v: Vec<f32> = rng.vec(3).iter().map(|v| v.abs() + 0.1).collect();
    let mut out = vec![0.0; x.len()];
    kernels::batch_norm(&x, &xs, &s, &b, &m, &v, 1e-5, &mut out);
    let want: Vec<f64> = indices(&xs)
        .iter()
        .map(|i| {
            let c = i[1];
            (x[offset(i, &xs)] as f64 - m[c] as f64) / (v[c] as f64 + 1e-5f32 as f64).sqrt()
                * s[c] as f64
                + b[c] as f64
        })
        .collect();
    assert_close(&out, &want, 1e-5, "batchnorm");
}

#[test]
fn layer_norm_with_broadcast_scale() {
    let mut rng = Rng::new(11);
    let xs = [2, 3, 4];
    let x = rng.vec(24);
    for (axis, ss) in [
        (2usize, vec![4usize]),
        (1, vec![3, 4]),
        (1, vec![4]),
        (0, vec![1]),
    ] {
        let sc = rng.vec(numel(&ss));
        let bi = rng.vec(numel(&ss));
        let mut out = vec![0.0; 24];
        kernels::layer_norm(
            &x,
            &xs,
            axis,
            &sc,
            &ss,
            Some((&bi, &ss)),
            1e-5,
            &mut out,
            &mut vec![f32::NAN; kernels::layer_norm_workspace_len(&xs, axis, true)],
        );
        let inner: usize = xs[axis..].iter().product();
        let norm = &xs[axis..];
        let mut want = vec![];
        for row in x.chunks(inner) {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / inner as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / inner as f64;
            for (j, &v) in row.iter().enumerate() {
                let jidx = &indices(norm)[j];
                let pad = norm.len() - ss.len();
                let si: Vec<usize> = (0..ss.len())
                    .map(|d| if ss[d] == 1 { 0 } else { jidx[pad + d] })
                    .collect();
                let o = offset(&si, &ss);
                want.push((v as f64 - mean) / (var + 1e-5).sqrt() * sc[o] as f64 + bi[o] as f64);
            }
        }
        assert_close(&out, &want, 1e-5, &format!("layernorm axis {axis}"));
    }
}

#[test]
fn softmax_legacy_and_per_axis() {
    let mut rng = Rng::new(12);
    let xs = [2, 3, 4];
    let x: Vec<f32> = rng.vec(24).iter().map(|v| v * 30.0).collect();
    for axis in 0..3 {
        for legacy in [false, true] {
            for log in [false, true] {
                let mut out = vec![0.0; 24];
                kernels::softmax(&x, &xs, axis, legacy, log, &mut out);
                // Group elements: legacy rows are contiguous blocks; else lines along axis.
                let group = |i: &[usize]| -> Vec<usize> {
                    if legacy {
                        i[..axis].to_vec()
                    } else {
                        let mut g = i.to_vec();
                        g[axis] = usize::MAX;
                        g
                    }
                };
                let all = indices(&xs);
                let want: Vec<f64> = all
                    .iter()
                    .map(|i| {
                        let gi = group(i);
                        let members: Vec<f64> = all
                            .iter()
                            .filter(|j| group(j) == gi)
                            .map(|j| x[offset(j, &xs)] as f64)
                            .collect();
                        let m = members.iter().cloned().fold(f64::MIN, f64::max);
                        let s: f64 = members.iter().map(|v| (v - m).exp()).sum();
                        let v = x[offset(i, &xs)] as f64;
                        if log {
                            v - m - s.ln()
                        } else {
                            (v - m).exp() / s
                        }
                    })
                    .collect();
                assert_close(
                    &out,
                    &want,
                    1e-5,
                    &format!("softmax axis {axis} legacy {legacy} log {log}"),
                );
            }
        }
    }
}

#[test]
fn reduce_sum_and_mean() {
    let mut rng = Rng::new(13);
    let xs = [2, 3, 1, 4];
    let x = rng.vec(24);
    for axes in [
        vec![],
        vec![0],
        vec![1],
        vec![3],
        vec![0, 2],
        vec![1, 3],
        vec![0, 1, 2, 3],
        vec![0, 3],
    ] {
        let axes = if axes.is_empty() {
            vec![0, 1, 2, 3]
        } else {
            axes
        };
        let ks: Vec<usize> = (0..4)
            .map(|i| if axes.contains(&i) { 1 } else { xs[i] })
            .collect();
        for mean in [false, true] {
            let mut want = vec![0f64; numel(&ks)];
            for i in indices(&xs) {
                let k: Vec<usize> = (0..4)
                    .map(|d| if axes.contains(&d) { 0 } else { i[d] })
                    .collect();
                want[offset(&k, &ks)] += x[offset(&i, &xs)] as f64;
            }
            let nred: usize = axes.iter().map(|&a| xs[a]).product();
            if mean {
                want.iter_mut().for_each(|w| *w /= nred as f64);
            }
            let mut out = vec![0.0; want.len()];
            let mut ws = vec![f32::NAN; kernels::reduce_workspace_len(out.len())];
            kernels::reduce(&x, &xs, &axes, mean, &mut out, &mut ws);
            assert_close(&out, &want, 1e-6, &format!("reduce {axes:?} mean {mean}"));
        }
    }
}

// ---------------------------------------------------------------- elementwise

fn naive_binary(
    op: Binary,
    a: &[f32],
    ash: &[usize],
    b: &[f32],
    bsh: &[usize],
) -> (Vec<f64>, Vec<usize>) {
    let os = lowmem_ir::shape::broadcast(ash, bsh).unwrap();
    let at = |s: &[usize], idx: &[usize]| -> usize {
        let pad = os.len() - s.len();
        let i: Vec<usize> = (0..s.len())
            .map(|d| if s[d] == 1 { 0 } else { idx[pad + d] })
            .collect();
        offset(&i, s)
    };
    let out = indices(&os)
        .iter()
        .map(|i| {
            let (x, y) = (a[at(ash, i)] as f64, b[at(bsh, i)] as f64);
            match op {
                Binary::Add => x + y,
                Binary::Sub => x - y,
                Binary::Mul => x * y,
                Binary::Div => x / y,
                Binary::Pow => x.powf(y),
            }
        })
        .collect();
    (out, os)
}

#[test]
fn binary_broadcasting_edge_cases() {
    let mut rng = Rng::new(14);
    let cases: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![2, 3], vec![2, 3]),
        (vec![], vec![]),
        (vec![], vec![3, 2]),
        (vec![3, 2], vec![]),
        (vec![1], vec![4, 5]),
        (vec![2, 1, 4, 1], vec![3, 1, 5]),
        (vec![3, 1, 5], vec![2, 1, 4, 1]),
        (vec![2, 3, 4, 5], vec![5]),
        (vec![2, 3, 4, 5], vec![3, 1, 1]),
        (vec![2, 3, 4, 5], vec![1, 3, 1, 1]),
        (vec![1, 3, 1, 1], vec![2, 3, 4, 5]),
        (vec![4, 1], vec![1, 4]),
        (vec![2, 1, 3], vec![2, 4, 3]),
        (vec![2, 0, 3], vec![1, 3]),
        (vec![64, 3, 16, 16], vec![3, 1, 1]),
        (vec![64, 3, 16, 16], vec![64, 3, 16, 16]),
        (vec![8, 128, 64], vec![64]),
    ];
    for (ash, bsh) in cases {
        for op in [
            Binary::Add,
            Binary::Sub,
            Binary::Mul,
            Binary::Div,
            Binary::Pow,
        ] {
            let a: Vec<f32> = rng
                .vec(numel(&ash))
                .iter()
                .map(|v| if op == Binary::Pow { v.abs() + 0.1 } else { *v })
                .collect();
            let b: Vec<f32> = rng
                .vec(numel(&bsh))
                .iter()
                .map(|v| if op == Binary::Div { v + 2.0 } else { *v })
                .collect();
            let (want, os) = naive_binary(op, &a, &ash, &b, &bsh);
            let mut out = vec![f32::NAN; want.len()];
            kernels::binary(op, &a, &ash, &b, &bsh, &mut out, &os);
            assert_close(&out, &want, 1e-6, &format!("{op:?} {ash:?} {bsh:?}"));
            if os == ash {
                let mut acc = a.clone();
                kernels::binary_inplace(op, &mut acc, &ash, &b, &bsh);
                assert_close(
                    &acc,
                    &want,
                    1e-6,
                    &format!("{op:?} inplace {ash:?} {bsh:?}"),
                );
            }
        }
    }
}

#[test]
fn sum_is_nary_broadcasting() {
    let mut rng = Rng::new(15);
    let shapes = [vec![3, 1], vec![2, 1, 4], vec![4], vec![]];
    let xs: Vec<Vec<f32>> = shapes.iter().map(|s| rng.vec(numel(s))).collect();
    let os = vec![2, 3, 4];
    let mut want = vec![0f64; 24];
    for (x, s) in xs.iter().zip(&shapes) {
        let zeros = vec![0f32; 24];
        let (w, _) = naive_binary(Binary::Add, &zeros, &os, x, s);
        want.iter_mut().zip(w).for_each(|(a, b)| *a += b);
    }
    let ins: Vec<(&[f32], &[usize])> = xs
        .iter()
        .zip(&shapes)
        .map(|(x, s)| (&x[..], &s[..]))
        .collect();
    let mut out = vec![f32::NAN; 24];
    kernels::sum(&ins, &mut out, &os);
    assert_close(&out, &want, 1e-6, "sum");
}

#[test]
fn unary_ops() {
    let mut rng = Rng::new(16);
    let x: Vec<f32> = (0..2000)
        .map(|_| rng.f() * 8.0)
        .chain([0.0, -0.0, 100.0, -100.0, 1e-8])
        .collect();
    let s2 = std::f64::consts::SQRT_2;
    let ops: Vec<(Unary, Box<dyn Fn(f64) -> f64>, f64)> = vec![
        (Unary::Relu, Box::new(|v: f64| v.max(0.0)), 0.0),
        (
            Unary::LeakyRelu(0.1),
            Box::new(|v: f64| if v < 0.0 { 0.1f32 as f64 * v } else { v }),
            1e-7,
        ),
        (
            Unary::Sigmoid,
            Box::new(|v: f64| 1.0 / (1.0 + (-v).exp())),
            1e-6,
        ),
        (Unary::Tanh, Box::new(|v: f64| v.tanh()), 1e-6),
        (Unary::Erf, Box::new(libm::erf), 1e-6),
        (
            Unary::Gelu,
            Box::new(move |v: f64| 0.5 * v * (1.0 + libm::erf(v / s2))),
            1e-6,
        ),
        (
            Unary::GeluTanh,
            Box::new(|v: f64| {
                0.5 * v
                    * (1.0
                        + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh())
            }),
            1e-6,
        ),
        (Unary::Sqrt, Box::new(|v: f64| v.sqrt()), 1e-6),
        (
            Unary::Clip {
                min: -1.0,
                max: 2.0,
            },
            Box::new(|v: f64| v.clamp(-1.0, 2.0)),
            0.0,
        ),
        (Unary::Identity, Box::new(|v: f64| v), 0.0),
    ];
    for (op, f, tol) in ops {
        let want: Vec<f64> = x.iter().map(|&v| f(v as f64)).collect();
        let mut out = vec![0.0; x.len()];
        kernels::unary(op, &x, &mut out);
        assert_close(&out, &want, tol, &format!("{op:?}"));
        let mut buf = x.clone();
        kernels::unary_inplace(op, &mut buf);
        assert_eq!(
            buf.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
    let mut o = [0.0f32];
    kernels::unary(Unary::Relu, &[f32::NAN], &mut o);
    assert!(o[0].is_nan(), "relu propagates NaN");
}

// ---------------------------------------------------------------- movement

#[test]
fn transpose_and_concat() {
    let mut rng = Rng::new(17);
    let xs = [2, 3, 1, 4, 5];
    let x: Vec<i64> = (0..numel(&xs) as i64).collect();
    for _ in 0..20 {
        let mut perm: Vec<usize> = (0..5).collect();
        for i in (1..5).rev() {
            perm.swap(i, rng.range(0, i + 1));
        }
        let os: Vec<usize> = perm.iter().map(|&p| xs[p]).collect();
        let mut out = vec![0i64; x.len()];
        kernels::transpose(&x, &xs, &perm, &mut out);
        for (o, oi) in indices(&os).iter().enumerate() {
            let mut xi = vec![0; 5];
            for (d, &p) in perm.iter().enumerate() {
                xi[p] = oi[d];
            }
            assert_eq!(out[o], x[offset(&xi, &xs)], "perm {perm:?}");
        }
    }
    let a: Vec<u8> = (0..12).collect();
    let b: Vec<u8> = (100..106).collect();
    let mut out = vec![0u8; 18];
    kernels::concat(&[(&a, &[2, 2, 3]), (&b, &[2, 1, 3])], 1, &mut out);
    assert_eq!(
        out,
        vec![
            0, 1, 2, 3, 4, 5, 100, 101, 102, 6, 7, 8, 9, 10, 11, 103, 104, 105
        ]
    );
}

// ---------------------------------------------------------------- timing

fn time_conv(name: &str, xs: &[usize], ws: &[usize], pads: Vec<usize>) {
    let mut rng = Rng::new(99);
    let x = rng.vec(numel(xs));
    let w = rng.vec(numel(ws));
    let win = ConvAttrs {
        pads,
        ..Default::default()
    }
    .window(xs, ws)
    .unwrap();
    let mut os = vec![xs[0], ws[0]];
    os.extend(&win.output);
    let mut out = vec![0.0; numel(&os)];
    let mut ws_buf = vec![0.0; kernels::conv_workspace_len(xs, ws, &win, 1)];
    let flops = 2.0 * numel(&os) as f64 * (ws[1] * ws[2] * ws[3]) as f64;
    kernels::conv(&x, xs, &w, ws, None, &win, 1, None, &mut out, &mut ws_buf);
    let reps = 20;
    let t = std::time::Instant::now();
    for _ in 0..reps {
        kernels::conv(&x, xs, &w, ws, None, &win, 1, None, &mut out, &mut ws_buf);
    }
    let dt = t.elapsed().as_secs_f64() / reps as f64;
    println!(
        "{name}: {:.3} ms, {:.1} GFLOP/s ({} rayon threads)",
        dt * 1e3,
        flops / dt / 1e9,
        rayon::current_num_threads()
    );
}

#[test]
#[ignore]
fn conv_throughput() {
    time_conv(
        "3x3 64->64 @56x56",
        &[1, 64, 56, 56],
        &[64, 64, 3, 3],
        vec![1, 1, 1, 1],
    );
    time_conv(
        "1x1 256->64 @56x56",
        &[1, 256, 56, 56],
        &[64, 256, 1, 1],
        vec![],
    );
    time_conv(
        "3x3 64->64 @56x56 N=4",
        &[4, 64, 56, 56],
        &[64, 64, 3, 3],
        vec![1, 1, 1, 1],
    );
}
