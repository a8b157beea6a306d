//! Reductions, softmax, layer norm, losses and optimizer steps through the host shim against
//! the CPU executor: rows of 1, 7, 257, 1000 and 5000 elements, strided axes, empty
//! dimensions, broadcasting parameters and invalid labels.

mod common;
use common::*;
use lowmem_ir::{Op, ReduceAttrs, SoftmaxAttrs, TensorData};

fn reduce_attrs(axes: Option<Vec<i64>>, keepdims: bool) -> ReduceAttrs {
    ReduceAttrs { axes, keepdims }
}

#[test]
fn reduce_sum_and_mean_over_any_axes() {
    let cases: &[(&[usize], Option<&[i64]>)] = &[
        (&[7], None),
        (&[1], Some(&[0])),
        (&[70_001], Some(&[0])),
        (&[3, 257], Some(&[1])),
        (&[3, 257], Some(&[0])),
        (&[1000, 5], Some(&[0])),
        (&[4, 5000], Some(&[-1])),
        (&[2, 3, 4, 5], Some(&[1, 3])),
        (&[2, 3, 4, 5], Some(&[0, 2])),
        (&[2, 3, 4, 5], Some(&[3, 0, 1])),
        (&[2, 3, 4, 5], Some(&[])),
        (&[2, 1, 4, 1, 3], Some(&[1, 2])),
        (&[5, 1, 64, 33], Some(&[0, 2])),
        (&[0, 5], Some(&[0])),
        (&[0, 5], Some(&[1])),
        (&[3, 0, 2], Some(&[1])),
        (&[], None),
    ];
    for (i, (shape, axes)) in cases.iter().enumerate() {
        for keepdims in [true, false] {
            let a = reduce_attrs(axes.map(|a| a.to_vec()), keepdims);
            for op in [Op::ReduceSum(a.clone()), Op::ReduceMean(a)] {
                check(op, &[In::F32(shape.to_vec())], 1, i as u64, 1e-6, 1e-6);
            }
        }
    }
}

#[test]
fn sum_to_reverses_broadcasting() {
    let cases: &[(&[usize], &[usize])] = &[
        (&[64, 100], &[100]),
        (&[64, 100], &[64, 1]),
        (&[8, 16, 7, 7], &[1, 16, 1, 1]),
        (&[8, 16, 7, 7], &[16, 1, 1]),
        (&[3, 257], &[1]),
        (&[3, 257], &[]),
        (&[2, 3, 4], &[2, 3, 4]),
        (&[1, 5], &[5]),
        (&[0, 5], &[5]),
    ];
    for (i, (from, to)) in cases.iter().enumerate() {
        check(
            Op::SumTo { shape: to.to_vec() },
            &[In::F32(from.to_vec())],
            1,
            i as u64,
            1e-6,
            1e-6,
        );
    }
}

#[test]
fn global_average_pool_and_its_gradient() {
    let shapes: &[&[usize]] = &[
        &[2, 3, 5, 5],
        &[1, 7, 1],
        &[4, 8, 16, 16],
        &[2, 2, 3, 4, 5],
        &[2, 3, 0],
    ];
    for (i, s) in shapes.iter().enumerate() {
        check(
            Op::GlobalAveragePool,
            &[In::F32(s.to_vec())],
            1,
            i as u64,
            1e-6,
            1e-6,
        );
        let mut dy = s[..2].to_vec();
        dy.extend(std::iter::repeat_n(1, s.len() - 2));
        let op = Op::GlobalAveragePoolGrad {
            input_shape: s.to_vec(),
        };
        check(op, &[In::F32(dy)], 1, i as u64, 1e-6, 0.0);
    }
}

const SOFTMAX_SHAPES: &[(&[usize], i64)] = &[
    (&[1, 1], -1),
    (&[3, 7], -1),
    (&[5, 257], 1),
    (&[64, 1000], -1),
    (&[300, 33], -1),
    (&[2, 5000], -1),
    (&[3, 4, 5], 1),
    (&[3, 4, 5], 0),
    (&[4, 1000, 3], 1),
    (&[2, 50, 70], 1),
    (&[0, 5], -1),
    (&[7], 0),
];

#[test]
fn softmax_and_log_softmax_match_the_cpu() {
    for (i, &(shape, axis)) in SOFTMAX_SHAPES.iter().enumerate() {
        for legacy in [false, true] {
            let a = SoftmaxAttrs { axis, legacy };
            for op in [Op::Softmax(a.clone()), Op::LogSoftmax(a)] {
                check(op, &[In::F32(shape.to_vec())], 1, i as u64, 2e-5, 1e-6);
            }
        }
    }
}

#[test]
fn softmax_gradients_match_the_cpu() {
    for (i, &(shape, axis)) in SOFTMAX_SHAPES.iter().enumerate() {
        for legacy in [false, true] {
            let a = SoftmaxAttrs { axis, legacy };
            // y: a softmax output (values in (0, 1)) or a log-softmax one (negative).
            let n = shape.iter().product();
            let mut rng = Rng::new(i as u64 + 100);
            let y = TensorData::F32(rng.vec_in(n, 0.0, 1.0));
            let ly = TensorData::F32(rng.vec_in(n, -5.0, 0.0));
            let ins = |y: TensorData| [In::F32(shape.to_vec()), In::Data(shape.to_vec(), y)];
            check(Op::SoftmaxGrad(a.clone()), &ins(y), 1, i as u64, 1e-5, 1e-5);
            check(Op::LogSoftmaxGrad(a), &ins(ly), 1, i as u64, 1e-5, 1e-5);
        }
    }
}

fn labels(n: usize, k: usize, seed: u64) -> TensorData {
    let mut rng = Rng::new(seed);
    i64s(
        rng.vec_in(n, 0.0, k as f32)
            .iter()
            .map(|&v| (v as i64).min(k as i64 - 1))
            .collect(),
    )
}

#[test]
fn softmax_cross_entropy_and_its_gradient() {
    for (i, &(n, k)) in [
        (1usize, 1usize),
        (4, 7),
        (64, 1000),
        (300, 10),
        (3, 5000),
        (1, 2000),
        (0, 3),
    ]
    .iter()
    .enumerate()
    {
        let l = labels(n, k, i as u64);
        check(
            Op::SoftmaxCrossEntropy,
            &[In::F32(vec![n, k]), In::Data(vec![n], l.clone())],
            1,
            i as u64,
            1e-5,
            1e-6,
        );
        check(
            Op::SoftmaxCrossEntropyGrad,
            &[In::F32(vec![]), In::F32(vec![n, k]), In::Data(vec![n], l)],
            1,
            i as u64,
            1e-5,
            1e-6,
        );
    }
}

#[test]
fn an_invalid_label_makes_the_loss_nan() {
    // The CPU executor refuses the step; the device cannot report, so it poisons the loss.
    let mut rng = Rng::new(1);
    let (g, vals) = one_node(
        Op::SoftmaxCrossEntropy,
        &[In::F32(vec![3, 4]), In::Data(vec![3], i64s(vec![0, 4, 1]))],
        1,
        &mut rng,
    );
    let step = inference(&g);
    let shim = lowmem_cuda_shim::HostShim::new();
    let mut gpu = lowmem_cuda::CudaExecutor::new(&step, &shim).unwrap();
    for (k, v) in vals.iter().enumerate() {
        gpu.set_input(k, v).unwrap();
    }
    gpu.run().unwrap();
    match &gpu.outputs().unwrap()[0] {
        TensorData::F32(v) => assert!(v[0].is_nan(), "loss {v:?}"),
        d => panic!("loss dtype {}", d.dtype()),
    }
}

#[test]
fn mse_loss_and_its_gradient() {
    for (i, s) in [
        vec![1usize],
        vec![7],
        vec![3, 257],
        vec![70_001],
        vec![0, 4],
    ]
    .iter()
    .enumerate()
    {
        check(
            Op::MseLoss,
            &[In::F32(s.clone()), In::F32(s.clone())],
            1,
            i as u64,
            1e-6,
            1e-7,
        );
        check(
            Op::MseLossGrad,
            &[In::F32(vec![]), In::F32(s.clone()), In::F32(s.clone())],
            1,
            i as u64,
            1e-6,
            1e-7,
        );
    }
}

#[test]
fn layer_norm_with_and_without_bias() {
    let cases: &[(&[usize], i64, &[usize])] = &[
        (&[1, 1], -1, &[1]),
        (&[3, 7], -1, &[7]),
        (&[5, 257], 1, &[257]),
        (&[300, 64], -1, &[64]),
        (&[2, 5000], -1, &[5000]),
        (&[4, 6, 8], 1, &[6, 8]),
        (&[4, 6, 8], 1, &[8]),
        (&[4, 6, 8], 1, &[6, 1]),
        (&[4, 6, 8], -1, &[1]),
        (&[4, 6, 8], 0, &[6, 8]),
        (&[0, 8], -1, &[8]),
    ];
    for (i, &(x, axis, s)) in cases.iter().enumerate() {
        let op = Op::LayerNormalization {
            axis,
            epsilon: 1e-5,
        };
        check(
            op.clone(),
            &[In::F32(x.to_vec()), In::F32(s.to_vec())],
            1,
            i as u64,
            1e-5,
            1e-5,
        );
        let ins = [
            In::F32(x.to_vec()),
            In::F32(s.to_vec()),
            In::F32(s.to_vec()),
        ];
        check(op, &ins, 1, i as u64, 1e-5, 1e-5);
    }
}

#[test]
fn layer_norm_gradient_and_parameter_sums() {
    let cases: &[(&[usize], i64, &[usize])] = &[
        (&[1, 1], -1, &[1]),
        (&[3, 7], -1, &[7]),
        (&[5, 257], 1, &[257]),
        (&[1000, 16], -1, &[16]),
        (&[2, 5000], -1, &[5000]),
        (&[4, 6, 8], 1, &[6, 8]),
        (&[4, 6, 8], 1, &[8]),
        (&[4, 6, 8], 1, &[6, 1]),
        (&[4, 6, 8], -1, &[1]),
        (&[0, 8], -1, &[8]),
        (&[3, 0], -1, &[1]),
    ];
    for (i, &(x, axis, s)) in cases.iter().enumerate() {
        let op = Op::LayerNormGrad {
            axis,
            epsilon: 1e-5,
        };
        let ins = [
            In::F32(x.to_vec()),
            In::F32(x.to_vec()),
            In::F32(s.to_vec()),
        ];
        check(op, &ins, 3, i as u64, 1e-4, 1e-5);
    }
}

#[test]
fn sgd_with_and_without_momentum() {
    for (i, n) in [1usize, 7, 1000, 70_001, 0].into_iter().enumerate() {
        for (lr, wd) in [(0.1f32, 0.0f32), (0.01, 1e-2)] {
            let op = Op::SgdUpdate {
                lr,
                momentum: 0.0,
                weight_decay: wd,
            };
            check(
                op,
                &[In::F32(vec![n]), In::F32(vec![n])],
                1,
                i as u64,
                1e-6,
                1e-7,
            );
            let op = Op::SgdUpdate {
                lr,
                momentum: 0.9,
                weight_decay: wd,
            };
            let ins = [In::F32(vec![n]), In::F32(vec![n]), In::F32(vec![n])];
            check(op, &ins, 2, i as u64, 1e-6, 1e-7);
        }
    }
}

#[test]
fn adam_with_coupled_and_decoupled_decay() {
    for (i, n) in [1usize, 7, 1000, 70_001, 0].into_iter().enumerate() {
        for (wd, decoupled) in [(0.0f32, false), (0.01, false), (0.01, true)] {
            for step in [1i64, 2, 1000, 1 << 40] {
                let op = Op::AdamUpdate {
                    lr: 1e-3,
                    beta1: 0.9,
                    beta2: 0.999,
                    epsilon: 1e-8,
                    weight_decay: wd,
                    decoupled,
                };
                // v must be non-negative.
                let mut rng = Rng::new(i as u64);
                let v = TensorData::F32(rng.vec_in(n, 0.0, 2.0));
                let ins = [
                    In::F32(vec![n]),
                    In::F32(vec![n]),
                    In::F32(vec![n]),
                    In::Data(vec![n], v),
                    In::Data(vec![], i64s(vec![step])),
                ];
                check(op, &ins, 3, i as u64, 1e-5, 1e-7);
            }
        }
    }
}

#[test]
fn grids_past_their_clamp_loop_over_the_rest() {
    // 70,000 planes: more than the 65,535 grid rows of the gradient's launch.
    let op = Op::GlobalAveragePoolGrad {
        input_shape: vec![70_000, 1, 2],
    };
    check(op, &[In::F32(vec![70_000, 1, 1])], 1, 4, 1e-6, 0.0);
}
