//! Every op's gradient against central finite differences of the forward pass.
//!
//! Each case is a tiny graph whose float inputs are all random weights; the loss is
//! `sum(op(...) * R)` for a random cotangent R (so ops whose plain sum is constant, such as
//! Softmax, are still tested), reduced in f64. Every weight coordinate is checked.

use std::sync::Arc;

use lowmem_autodiff::{Loss, Mode, gradients};
use lowmem_ir::{
    AutoPad, BatchNormAttrs, ClipAttrs, ConvAttrs, DType, GeluApprox, GemmAttrs, Graph, LrnAttrs,
    Op, PoolAttrs, ReduceAttrs, SoftmaxAttrs, TensorData, TensorId,
};
use lowmem_testkit::Rng;

/// A case under construction: weights with random values, then one op, then `* R`.
struct Case {
    g: Graph,
    rng: Rng,
    k: usize,
}

impl Case {
    fn new(seed: u64) -> Case {
        Case {
            g: Graph::new("case"),
            rng: Rng::new(seed),
            k: 0,
        }
    }
    /// A random weight with values in [lo, hi].
    fn w(&mut self, shape: &[usize], lo: f32, hi: f32) -> TensorId {
        self.k += 1;
        let n = shape.iter().product();
        let v = self.rng.vec_in(n, lo, hi);
        self.g
            .add_weight(
                format!("w{}", self.k),
                shape.to_vec(),
                Arc::new(TensorData::F32(v)),
            )
            .unwrap()
    }
    fn n(&mut self, x: &[usize]) -> TensorId {
        self.w(x, -1.0, 1.0)
    }
    /// Distinct values spread evenly over [lo, hi] in random order: no two within the finite
    /// difference step of each other or of a grid point, so max-pool windows have no near-ties
    /// and kinks (Relu at 0, Clip at its bounds) are not straddled.
    fn distinct(&mut self, shape: &[usize], lo: f32, hi: f32) -> TensorId {
        self.k += 1;
        let n: usize = shape.iter().product();
        let mut v: Vec<f32> = (0..n)
            .map(|k| lo + (hi - lo) * (k as f32 + 0.5) / n as f32)
            .collect();
        self.rng.shuffle(&mut v);
        self.g
            .add_weight(
                format!("w{}", self.k),
                shape.to_vec(),
                Arc::new(TensorData::F32(v)),
            )
            .unwrap()
    }
    fn op(&mut self, op: Op, ins: &[TensorId]) -> TensorId {
        self.k += 1;
        let name = format!("t{}", self.k);
        self.g
            .add_node(format!("n{}", self.k), op, ins, &[&name])
            .unwrap()[0]
    }
}

/// Loss in f64 from the forward pass.
fn loss_of(g: &Graph, out: TensorId, loss: Loss, labels: Option<&[i64]>) -> f64 {
    let mut g = g.clone();
    g.set_outputs(vec![out]);
    let y = lowmem_exec::run(&g, &[]).unwrap().remove(0).to_f64();
    match loss {
        Loss::Sum => y.iter().sum(),
        Loss::CrossEntropy => {
            let labels = labels.unwrap();
            let c = y.len() / labels.len();
            labels
                .iter()
                .enumerate()
                .map(|(i, &l)| {
                    let row = &y[i * c..(i + 1) * c];
                    let m = row.iter().cloned().fold(f64::MIN, f64::max);
                    let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
                    lse - row[l as usize]
                })
                .sum::<f64>()
                / labels.len() as f64
        }
        _ => unreachable!(),
    }
}

/// Checks d loss(out) / d w for every float weight against central differences.
fn check_with(
    mut case: Case,
    out: TensorId,
    loss: Loss,
    labels: Option<Vec<i64>>,
    eps: f32,
    what: &str,
) {
    let out = if loss == Loss::Sum {
        let shape = case.g.tensor(out).shape.clone();
        let r = case.n(&shape);
        case.op(Op::Mul, &[out, r])
    } else {
        out
    };
    let g = case.g;
    let wrt: Vec<TensorId> = g
        .weights()
        .filter(|&w| g.tensor(w).dtype == DType::F32)
        .collect();
    let gg =
        gradients(&g, out, loss, &wrt, Mode::Inference).unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut inputs = Vec::new();
    if let Some(l) = &gg.labels {
        assert_eq!(gg.graph.inputs, vec![*l]);
        inputs.push(TensorData::I64(labels.clone().unwrap()));
    }
    let outs = lowmem_exec::run(&gg.graph, &inputs).unwrap_or_else(|e| panic!("{what}: {e}"));
    let analytic_loss = outs[0].to_f64()[0];
    let fd_loss = loss_of(&g, out, loss, labels.as_deref());
    assert!(
        (analytic_loss - fd_loss).abs() <= 1e-4 * (1.0 + fd_loss.abs()),
        "{what}: loss {analytic_loss} vs {fd_loss}"
    );
    compare_fd(
        &g,
        &wrt,
        &outs[1..],
        eps,
        |gp| loss_of(gp, out, loss, labels.as_deref()),
        what,
    );
}

/// Every coordinate of each weight in `wrt`: the analytic gradient `grads[k]` against central
/// differences of `loss` with step `eps`.
fn compare_fd(
    g: &Graph,
    wrt: &[TensorId],
    grads: &[TensorData],
    eps: f32,
    loss: impl Fn(&Graph) -> f64,
    what: &str,
) {
    for (k, &w) in wrt.iter().enumerate() {
        let grad = grads[k].to_f64();
        let base = g.tensor(w).value.clone().unwrap().to_f32();
        for i in 0..base.len() {
            let probe = |delta: f32| {
                let mut gp = g.clone();
                let mut v = base.clone();
                v[i] += delta;
                gp.tensors[w.index()].value = Some(Arc::new(TensorData::F32(v)));
                loss(&gp)
            };
            let fd = (probe(eps) - probe(-eps)) / (2.0 * eps as f64);
            let tol = 5e-3 + 2e-2 * fd.abs().max(grad[i].abs());
            assert!(
                (grad[i] - fd).abs() <= tol,
                "{what}: d/d {}[{i}] analytic {} vs finite difference {fd}",
                g.tensor(w).name,
                grad[i]
            );
        }
    }
}

fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn check(case: Case, out: TensorId, what: &str) {
    check_with(case, out, Loss::Sum, None, 5e-3, what);
}

macro_rules! unary {
    ($($name:ident: $op:expr, $lo:expr, $hi:expr;)*) => {$(
        #[test]
        fn $name() {
            let mut c = Case::new(seed_of(stringify!($name)));
            let x = c.distinct(&[2, 3, 4], $lo, $hi);
            let y = c.op($op, &[x]);
            check(c, y, stringify!($name));
        }
    )*};
}

unary! {
    relu: Op::Relu, -1.0, 1.0;
    leaky_relu: Op::LeakyRelu { alpha: 0.1 }, -1.0, 1.0;
    sigmoid: Op::Sigmoid, -2.0, 2.0;
    tanh: Op::Tanh, -2.0, 2.0;
    erf: Op::Erf, -2.0, 2.0;
    gelu: Op::Gelu { approximate: GeluApprox::None }, -2.0, 2.0;
    gelu_tanh: Op::Gelu { approximate: GeluApprox::Tanh }, -2.0, 2.0;
    sqrt: Op::Sqrt, 0.5, 2.0;
    clip: Op::Clip(ClipAttrs { min: Some(-0.5), max: Some(0.6) }), -1.0, 1.0;
    identity: Op::Identity, -1.0, 1.0;
    dropout_inference: Op::Dropout { ratio: 0.3, seed: 1 }, -1.0, 1.0;
    softmax_last: Op::Softmax(SoftmaxAttrs { axis: -1, legacy: false }), -2.0, 2.0;
    softmax_axis1: Op::Softmax(SoftmaxAttrs { axis: 1, legacy: false }), -2.0, 2.0;
    softmax_legacy: Op::Softmax(SoftmaxAttrs { axis: 1, legacy: true }), -2.0, 2.0;
    log_softmax: Op::LogSoftmax(SoftmaxAttrs { axis: -1, legacy: false }), -2.0, 2.0;
    log_softmax_legacy: Op::LogSoftmax(SoftmaxAttrs { axis: 1, legacy: true }), -2.0, 2.0;
    reshape: Op::Reshape { shape: vec![4, -1], allowzero: false }, -1.0, 1.0;
    flatten: Op::Flatten { axis: 2 }, -1.0, 1.0;
    transpose: Op::Transpose { perm: Some(vec![2, 0, 1]) }, -1.0, 1.0;
    unsqueeze: Op::Unsqueeze { axes: vec![0, -1] }, -1.0, 1.0;
    reduce_sum: Op::ReduceSum(ReduceAttrs { axes: Some(vec![1]), keepdims: false }), -1.0, 1.0;
    reduce_mean_all: Op::ReduceMean(ReduceAttrs { axes: None, keepdims: false }), -1.0, 1.0;
    reduce_mean_keep: Op::ReduceMean(ReduceAttrs { axes: Some(vec![0, -1]), keepdims: true }), -1.0, 1.0;
    reduce_sum_keepdims: Op::ReduceSum(ReduceAttrs { axes: Some(vec![2]), keepdims: true }), -1.0, 1.0;
}

macro_rules! binary {
    ($($name:ident: $op:expr, $a:expr, $b:expr, $lo:expr, $hi:expr;)*) => {$(
        #[test]
        fn $name() {
            let mut c = Case::new(seed_of(stringify!($name)));
            let a = c.w(&$a, $lo, $hi);
            let b = c.w(&$b, $lo, $hi);
            let y = c.op($op, &[a, b]);
            check(c, y, stringify!($name));
        }
    )*};
}

binary! {
    add_broadcast: Op::Add, [2, 3, 4], [4], -1.0, 1.0;
    sub_broadcast_both: Op::Sub, [2, 1, 4], [3, 1], -1.0, 1.0;
    mul_scalar: Op::Mul, [2, 3], [], -1.0, 1.0;
    div_broadcast: Op::Div, [2, 3, 4], [3, 1], 0.5, 1.5;
    pow_broadcast: Op::Pow, [2, 3], [3], 0.5, 1.5;
    matmul_2d: Op::MatMul, [3, 4], [4, 5], -1.0, 1.0;
    matmul_batched_broadcast: Op::MatMul, [2, 1, 3, 4], [3, 4, 2], -1.0, 1.0;
    matmul_vec_mat: Op::MatMul, [4], [4, 3], -1.0, 1.0;
    matmul_mat_vec: Op::MatMul, [3, 4], [4], -1.0, 1.0;
}

#[test]
fn sum_three_with_broadcast() {
    let mut c = Case::new(1);
    let a = c.n(&[2, 3]);
    let b = c.n(&[3]);
    let d = c.n(&[2, 1]);
    let y = c.op(Op::Sum, &[a, b, d]);
    check(c, y, "sum");
}

#[test]
fn tensor_used_twice_sums_its_gradients() {
    let mut c = Case::new(2);
    let a = c.n(&[3, 3]);
    let s = c.op(Op::Sigmoid, &[a]);
    let y = c.op(Op::Mul, &[s, a]);
    let z = c.op(Op::MatMul, &[y, s]);
    check(c, z, "reuse");
}

#[test]
fn gemm_all_transposes_and_c_shapes() {
    for (ta, tb, cs, alpha, beta) in [
        (false, false, vec![3, 5], 1.0, 1.0),
        (true, false, vec![5], 0.5, 2.0),
        (false, true, vec![1, 5], 1.5, 0.5),
        (true, true, vec![], 1.0, 1.0),
    ] {
        // Plain, and with a fused ReLU epilogue.
        for activation in [None, Some(lowmem_ir::Activation::Relu)] {
            let mut c = Case::new(3);
            let a = c.n(&if ta { [4, 3] } else { [3, 4] });
            let b = c.n(&if tb { [5, 4] } else { [4, 5] });
            let cc = c.n(&cs);
            let y = c.op(
                Op::Gemm(GemmAttrs {
                    alpha,
                    beta,
                    trans_a: ta,
                    trans_b: tb,
                    activation,
                }),
                &[a, b, cc],
            );
            check(
                c,
                y,
                &format!("gemm ta={ta} tb={tb} c={cs:?} {activation:?}"),
            );
        }
    }
}

#[test]
fn conv_pads_strides_dilations_groups_bias() {
    let cases: Vec<(Vec<usize>, Vec<usize>, ConvAttrs, bool)> = vec![
        (
            vec![2, 2, 5, 5],
            vec![3, 2, 3, 3],
            ConvAttrs {
                pads: vec![1, 1, 1, 1],
                ..Default::default()
            },
            true,
        ),
        (
            vec![1, 2, 6, 5],
            vec![2, 2, 3, 2],
            ConvAttrs {
                strides: vec![2, 1],
                pads: vec![0, 1, 2, 0],
                ..Default::default()
            },
            false,
        ),
        (
            vec![1, 4, 6, 6],
            vec![4, 2, 2, 2],
            ConvAttrs {
                dilations: vec![2, 2],
                group: 2,
                activation: Some(lowmem_ir::Activation::Relu),
                ..Default::default()
            },
            true,
        ),
        (
            vec![1, 3, 5, 5],
            vec![3, 1, 3, 3],
            ConvAttrs {
                group: 3,
                auto_pad: AutoPad::SameUpper,
                strides: vec![2, 2],
                ..Default::default()
            },
            false,
        ),
        (
            vec![2, 2, 7],
            vec![3, 2, 3],
            ConvAttrs {
                strides: vec![2],
                pads: vec![1, 1],
                ..Default::default()
            },
            true,
        ),
    ];
    for (xs, ws, attrs, bias) in cases {
        let mut c = Case::new(4);
        let x = c.n(&xs);
        let w = c.n(&ws);
        let mut ins = vec![x, w];
        if bias {
            ins.push(c.n(&[ws[0]]));
        }
        let y = c.op(Op::Conv(attrs.clone()), &ins);
        check(c, y, &format!("conv {xs:?} {ws:?} {attrs:?}"));
    }
}

#[test]
fn pooling() {
    let pools = [
        (
            "max pads ceil",
            true,
            PoolAttrs {
                kernel_shape: vec![3, 3],
                strides: vec![2, 2],
                pads: vec![1, 1, 1, 1],
                ceil_mode: true,
                ..Default::default()
            },
        ),
        (
            "max dilated",
            true,
            PoolAttrs {
                kernel_shape: vec![2, 2],
                dilations: vec![2, 2],
                ..Default::default()
            },
        ),
        (
            "avg excl pad",
            false,
            PoolAttrs {
                kernel_shape: vec![3, 3],
                strides: vec![2, 2],
                pads: vec![1, 1, 1, 1],
                ..Default::default()
            },
        ),
        (
            "avg incl pad ceil",
            false,
            PoolAttrs {
                kernel_shape: vec![2, 2],
                strides: vec![2, 2],
                pads: vec![0, 0, 1, 1],
                ceil_mode: true,
                count_include_pad: true,
                ..Default::default()
            },
        ),
    ];
    for (what, max, p) in pools {
        let mut c = Case::new(5);
        let x = c.distinct(&[1, 2, 6, 7], -1.0, 1.0);
        let y = c.op(
            if max {
                Op::MaxPool(p)
            } else {
                Op::AveragePool(p)
            },
            &[x],
        );
        check(c, y, what);
    }
    let mut c = Case::new(6);
    let x = c.n(&[2, 3, 4, 5]);
    let y = c.op(Op::GlobalAveragePool, &[x]);
    check(c, y, "global average pool");
}

#[test]
fn lrn() {
    let mut c = Case::new(7);
    let x = c.n(&[1, 5, 3, 3]);
    let y = c.op(
        Op::Lrn(LrnAttrs {
            size: 3,
            alpha: 0.5,
            beta: 0.75,
            bias: 1.0,
        }),
        &[x],
    );
    check(c, y, "lrn");
}

#[test]
fn batch_norm_inference() {
    let mut c = Case::new(8);
    let x = c.n(&[2, 3, 2, 2]);
    let s = c.w(&[3], 0.5, 1.5);
    let b = c.n(&[3]);
    let m = c.n(&[3]);
    let v = c.w(&[3], 0.5, 1.5);
    let y = c.op(
        Op::BatchNormalization(BatchNormAttrs::default()),
        &[x, s, b, m, v],
    );
    // Mean and variance are statistics, not differentiated: check the others only.
    let r = c.n(&[2, 3, 2, 2]);
    let out = c.op(Op::Mul, &[y, r]);
    let g = c.g.clone();
    let wrt = vec![x, s, b];
    let gg = gradients(&g, out, Loss::Sum, &wrt, Mode::Inference).unwrap();
    let outs = lowmem_exec::run(&gg.graph, &[]).unwrap();
    compare_fd(
        &g,
        &wrt,
        &outs[1..],
        5e-3,
        |gp| loss_of(gp, out, Loss::Sum, None),
        "batch norm",
    );
    let all: Vec<TensorId> = vec![x, s, b, m, v];
    let err = gradients(&g, out, Loss::Sum, &all, Mode::Inference)
        .unwrap_err()
        .to_string();
    assert!(err.contains("statistics"), "{err}");
}

#[test]
fn layer_norm_axes_and_bias() {
    for (axis, bias) in [(-1i64, true), (1, false), (1, true)] {
        let mut c = Case::new(9);
        let x = c.n(&[2, 3, 4]);
        let sshape: Vec<usize> = if axis == -1 { vec![4] } else { vec![3, 4] };
        let s = c.w(&sshape, 0.5, 1.5);
        let mut ins = vec![x, s];
        if bias {
            ins.push(c.n(&sshape));
        }
        let y = c.op(
            Op::LayerNormalization {
                axis,
                epsilon: 1e-5,
            },
            &ins,
        );
        check(c, y, &format!("layer norm axis {axis} bias {bias}"));
    }
}

#[test]
fn concat_squeeze_and_slicing_paths() {
    let mut c = Case::new(10);
    let a = c.n(&[2, 1, 3]);
    let b = c.n(&[2, 2, 3]);
    let y = c.op(Op::Concat { axis: 1 }, &[a, b]);
    let z = c.op(Op::Tanh, &[y]);
    check(c, z, "concat");
    let mut c = Case::new(11);
    let a = c.n(&[2, 1, 3]);
    let y = c.op(
        Op::Squeeze {
            axes: Some(vec![1]),
        },
        &[a],
    );
    check(c, y, "squeeze");
}

#[test]
fn cross_entropy_fuses_softmax_and_matches_fd() {
    // Logits directly.
    let mut c = Case::new(12);
    let x = c.n(&[3, 5]);
    let w = c.n(&[5, 4]);
    let y = c.op(Op::MatMul, &[x, w]);
    check_with(
        c,
        y,
        Loss::CrossEntropy,
        Some(vec![0, 3, 1]),
        5e-3,
        "xent logits",
    );
    // A Softmax output: the loss is the cross-entropy of the probabilities.
    let mut c = Case::new(13);
    let x = c.n(&[2, 4]);
    let p = c.op(
        Op::Softmax(SoftmaxAttrs {
            axis: 1,
            legacy: true,
        }),
        &[x],
    );
    let gg = gradients(&c.g, p, Loss::CrossEntropy, &[x], Mode::Inference).unwrap();
    assert!(
        !gg.graph
            .nodes
            .iter()
            .any(|n| matches!(n.op, Op::Softmax(_))),
        "the softmax is fused into the loss"
    );
    let out = lowmem_exec::run(&gg.graph, &[TensorData::I64(vec![2, 0])]).unwrap();
    let mut g = c.g.clone();
    g.set_outputs(vec![p]);
    let probs = lowmem_exec::run(&g, &[]).unwrap()[0].to_f64();
    let expected = -(probs[2].ln() + probs[4].ln()) / 2.0;
    assert!((out[0].to_f64()[0] - expected).abs() < 1e-5);
}

#[test]
fn training_mode_batch_norm_and_dropout() {
    let mut c = Case::new(14);
    let x = c.n(&[4, 2, 3]);
    let s = c.w(&[2], 0.5, 1.5);
    let b = c.n(&[2]);
    let m = c.n(&[2]);
    let v = c.w(&[2], 0.5, 1.5);
    let y = c.op(
        Op::BatchNormalization(BatchNormAttrs::default()),
        &[x, s, b, m, v],
    );
    let d = c.op(
        Op::Dropout {
            ratio: 0.25,
            seed: 3,
        },
        &[y],
    );
    let r = c.n(&[4, 2, 3]);
    let out = c.op(Op::Mul, &[d, r]);
    let g = c.g;
    let wrt = vec![x, s, b];
    let gg = gradients(&g, out, Loss::Sum, &wrt, Mode::Training).unwrap();
    assert!(
        gg.graph
            .nodes
            .iter()
            .any(|n| matches!(n.op, Op::BatchNormTrain(_)))
    );
    let step = gg.step.expect("training dropout reads the step");
    assert_eq!(gg.graph.inputs, vec![step]);
    let run = |g: &Graph| lowmem_exec::run(g, &[TensorData::I64(vec![5])]).unwrap();
    let outs = run(&gg.graph);
    // Finite differences of the training-mode loss itself (same step, so the same mask).
    let loss_only = |g: &Graph| {
        let gg = gradients(g, out, Loss::Sum, &[x], Mode::Training).unwrap();
        run(&gg.graph)[0].to_f64()[0]
    };
    compare_fd(
        &g,
        &wrt,
        &outs[1..],
        5e-3,
        loss_only,
        "training batch norm and dropout",
    );
}
