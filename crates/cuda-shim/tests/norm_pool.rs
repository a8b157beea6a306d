//! Batch norm (inference, training, backward), LRN and window pooling (forward and
//! gradients) through the host shim against the CPU executor.

mod common;
use common::*;
use lowmem_ir::{AutoPad, BatchNormAttrs, LrnAttrs, Op, PoolAttrs, TensorData};

/// Shapes whose N * spatial is not a multiple of the statistics block, rank 2 and 5.
const BN_SHAPES: &[&[usize]] = &[
    &[3, 5, 7, 9],
    &[2, 4],
    &[1, 3, 100, 101],
    &[2, 3, 3, 4, 5],
    &[0, 3, 4],
];

fn positive(n: usize, seed: u64) -> TensorData {
    TensorData::F32(Rng::new(seed).vec_in(n, 0.2, 2.0))
}

#[test]
fn batch_norm_inference_matches_the_cpu() {
    for (i, s) in BN_SHAPES.iter().enumerate() {
        let c = s[1];
        let op = Op::BatchNormalization(BatchNormAttrs {
            epsilon: 1e-3,
            momentum: 0.9,
        });
        let ins = [
            In::F32(s.to_vec()),
            In::F32(vec![c]),
            In::F32(vec![c]),
            In::F32(vec![c]),
            In::Data(vec![c], positive(c, i as u64)),
        ];
        check(op, &ins, 1, i as u64, 1e-5, 1e-5);
    }
}

#[test]
fn batch_norm_training_matches_the_cpu() {
    for (i, s) in BN_SHAPES.iter().enumerate() {
        let c = s[1];
        let op = Op::BatchNormTrain(BatchNormAttrs {
            epsilon: 1e-5,
            momentum: 0.8,
        });
        let ins = [
            In::F32(s.to_vec()),
            In::F32(vec![c]),
            In::F32(vec![c]),
            In::F32(vec![c]),
            In::Data(vec![c], positive(c, i as u64)),
        ];
        check(op, &ins, 5, i as u64, 1e-4, 1e-5);
    }
}

#[test]
fn batch_norm_grad_matches_the_cpu() {
    for training in [true, false] {
        for (i, s) in BN_SHAPES.iter().enumerate() {
            let c = s[1];
            let op = Op::BatchNormGrad {
                epsilon: 1e-5,
                training,
            };
            let ins = [
                In::F32(s.to_vec()),
                In::F32(s.to_vec()),
                In::F32(vec![c]),
                In::F32(vec![c]),
                In::Data(vec![c], positive(c, i as u64)),
            ];
            check(op, &ins, 3, i as u64, 1e-4, 1e-4);
        }
    }
}

#[test]
fn lrn_and_its_gradient_match_the_cpu() {
    for (i, size) in [3usize, 5, 4, 1].into_iter().enumerate() {
        for s in [&[2usize, 7, 5, 6][..], &[1, 3, 10], &[3, 2, 1]] {
            let a = LrnAttrs {
                size,
                alpha: 0.3,
                beta: 0.75,
                bias: 1.5,
            };
            check(
                Op::Lrn(a.clone()),
                &[In::F32(s.to_vec())],
                1,
                i as u64,
                1e-5,
                1e-6,
            );
            // Y from the forward, as the training graph passes it.
            let mut rng = Rng::new(i as u64);
            let (g, vals) = one_node(Op::Lrn(a.clone()), &[In::F32(s.to_vec())], 1, &mut rng);
            let (y, _) = run_both(&inference(&g), &vals);
            let ins = [
                In::F32(s.to_vec()),
                In::Data(s.to_vec(), vals[0].clone()),
                In::Data(s.to_vec(), y[0].clone()),
            ];
            check(Op::LrnGrad(a), &ins, 1, i as u64, 1e-4, 1e-5);
        }
    }
}

fn pool(
    k: &[usize],
    strides: &[usize],
    pads: &[usize],
    dil: &[usize],
    ceil: bool,
    include_pad: bool,
) -> PoolAttrs {
    PoolAttrs {
        kernel_shape: k.to_vec(),
        strides: strides.to_vec(),
        dilations: dil.to_vec(),
        pads: pads.to_vec(),
        ceil_mode: ceil,
        count_include_pad: include_pad,
        ..PoolAttrs::default()
    }
}

/// (input shape, attributes without count_include_pad).
fn pool_cases() -> Vec<(Vec<usize>, PoolAttrs)> {
    let same = PoolAttrs {
        auto_pad: AutoPad::SameUpper,
        ..pool(&[3, 3], &[2, 2], &[], &[], false, false)
    };
    vec![
        (
            vec![3, 4, 13, 13],
            pool(&[3, 3], &[2, 2], &[1, 1, 1, 1], &[], false, false),
        ),
        (
            vec![1, 3, 9, 9],
            pool(&[2, 2], &[2, 2], &[], &[], true, false),
        ),
        (
            vec![2, 2, 10, 11],
            pool(&[3, 3], &[2, 2], &[0, 1, 1, 0], &[], true, false),
        ),
        (
            vec![1, 3, 12, 12],
            pool(&[2, 2], &[1, 1], &[1, 1, 1, 1], &[2, 2], false, false),
        ),
        (
            vec![2, 3, 8, 8],
            pool(&[3, 3], &[3, 3], &[1, 1, 1, 1], &[], true, false),
        ),
        (vec![3, 2, 17], pool(&[3], &[2], &[1, 1], &[], true, false)),
        (
            vec![1, 2, 5, 6, 7],
            pool(
                &[2, 3, 2],
                &[2, 2, 2],
                &[0, 1, 1, 1, 1, 0],
                &[],
                true,
                false,
            ),
        ),
        (
            vec![1, 2, 7, 7],
            pool(&[7, 7], &[1, 1], &[], &[], false, false),
        ),
        (vec![1, 3, 10, 10], same),
    ]
}

fn pooled(x: &[usize], a: &PoolAttrs) -> Vec<usize> {
    let win = a.window(x).unwrap();
    let mut y = x[..2].to_vec();
    y.extend_from_slice(&win.output);
    y
}

/// Values from a small set (ties everywhere) with some NaNs.
fn ties(n: usize, seed: u64) -> TensorData {
    let mut rng = Rng::new(seed);
    TensorData::F32(
        rng.vec_in(n, 0.0, 3.0)
            .into_iter()
            .enumerate()
            .map(|(i, v)| if i % 17 == 5 { f32::NAN } else { v.floor() })
            .collect(),
    )
}

#[test]
fn max_pool_and_its_gradient_match_the_cpu() {
    for (i, (x, a)) in pool_cases().into_iter().enumerate() {
        let n: usize = x.iter().product();
        check(
            Op::MaxPool(a.clone()),
            &[In::F32(x.clone())],
            1,
            i as u64,
            0.0,
            0.0,
        );
        check(
            Op::MaxPool(a.clone()),
            &[In::Data(x.clone(), ties(n, i as u64))],
            1,
            i as u64,
            0.0,
            0.0,
        );
        let y = pooled(&x, &a);
        check(
            Op::MaxPoolGrad(a.clone()),
            &[In::F32(y.clone()), In::F32(x.clone())],
            1,
            i as u64,
            1e-6,
            1e-6,
        );
        let ins = [In::F32(y), In::Data(x.clone(), ties(n, i as u64))];
        check(Op::MaxPoolGrad(a), &ins, 1, i as u64, 1e-6, 1e-6);
    }
}

#[test]
fn average_pool_and_its_gradient_match_the_cpu() {
    for include_pad in [false, true] {
        // AveragePool has no dilations.
        let cases = pool_cases()
            .into_iter()
            .filter(|(_, a)| a.dilations.is_empty());
        for (i, (x, a)) in cases.enumerate() {
            let a = PoolAttrs {
                count_include_pad: include_pad,
                ..a
            };
            check(
                Op::AveragePool(a.clone()),
                &[In::F32(x.clone())],
                1,
                i as u64,
                1e-6,
                1e-6,
            );
            let op = Op::AveragePoolGrad {
                pool: a.clone(),
                input_shape: x.clone(),
            };
            check(op, &[In::F32(pooled(&x, &a))], 1, i as u64, 1e-6, 1e-6);
        }
    }
}
