//! Elementwise kernels through the host shim against the CPU executor, on sizes that are
//! not multiples of the block, empty tensors and ones large enough for many blocks.

mod common;
use common::*;
use lowmem_ir::{ClipAttrs, GeluApprox, Op, TensorData};

const SHAPES: &[&[usize]] = &[&[1], &[7], &[3, 257], &[0, 5], &[2, 3, 4, 5], &[70_001]];

#[test]
fn unary_ops_match_the_cpu() {
    let ops = [
        Op::Relu,
        Op::LeakyRelu { alpha: 0.1 },
        Op::Sigmoid,
        Op::Tanh,
        Op::Erf,
        Op::Gelu {
            approximate: GeluApprox::None,
        },
        Op::Gelu {
            approximate: GeluApprox::Tanh,
        },
        Op::Neg,
        Op::Scale { alpha: -1.5 },
        Op::Clip(ClipAttrs {
            min: Some(-0.5),
            max: Some(0.75),
        }),
        Op::Identity,
    ];
    for (i, op) in ops.iter().enumerate() {
        for s in SHAPES {
            check(op.clone(), &[In::F32(s.to_vec())], 1, i as u64, 1e-6, 1e-6);
        }
    }
    // Sqrt on non-negative values.
    let mut rng = Rng::new(5);
    let x = TensorData::F32(rng.vec_in(1000, 0.0, 9.0));
    check(Op::Sqrt, &[In::Data(vec![1000], x)], 1, 0, 1e-6, 0.0);
}

#[test]
fn unary_gradients_match_the_cpu() {
    let ops = [
        Op::ReluGrad,
        Op::LeakyReluGrad { alpha: 0.2 },
        Op::SigmoidGrad,
        Op::TanhGrad,
        Op::ErfGrad,
        Op::GeluGrad {
            approximate: GeluApprox::None,
        },
        Op::GeluGrad {
            approximate: GeluApprox::Tanh,
        },
        Op::ClipGrad(ClipAttrs {
            min: Some(-0.5),
            max: Some(0.5),
        }),
    ];
    for (i, op) in ops.iter().enumerate() {
        for s in SHAPES {
            check(
                op.clone(),
                &[In::F32(s.to_vec()), In::F32(s.to_vec())],
                1,
                i as u64,
                1e-5,
                1e-6,
            );
        }
    }
    let mut rng = Rng::new(3);
    let v = TensorData::F32(rng.vec_in(300, 0.5, 3.0));
    check(
        Op::SqrtGrad,
        &[In::F32(vec![300]), In::Data(vec![300], v)],
        1,
        1,
        1e-6,
        0.0,
    );
}

#[test]
fn binary_ops_broadcast_like_the_cpu() {
    let pairs: &[(&[usize], &[usize])] = &[
        (&[5], &[5]),
        (&[3, 257], &[257]),
        (&[2, 3, 4], &[3, 1]),
        (&[4, 1, 6], &[1, 5, 1]),
        (
            &[2, 1, 3, 1, 2, 1, 2, 1, 2, 1, 2, 3],
            &[1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 3],
        ),
        (&[], &[3]),
        (&[0, 3], &[3]),
        (&[64, 1000], &[1]),
    ];
    for op in [Op::Add, Op::Sub, Op::Mul, Op::Div] {
        for (i, (a, b)) in pairs.iter().enumerate() {
            check(
                op.clone(),
                &[In::F32(a.to_vec()), In::F32(b.to_vec())],
                1,
                i as u64,
                1e-6,
                1e-6,
            );
        }
    }
    let mut rng = Rng::new(9);
    let a = TensorData::F32(rng.vec_in(24, 0.1, 3.0));
    check(
        Op::Pow,
        &[In::Data(vec![2, 3, 4], a.clone()), In::F32(vec![4])],
        1,
        2,
        1e-5,
        1e-6,
    );
    check(
        Op::PowGrad,
        &[
            In::F32(vec![2, 3, 4]),
            In::Data(vec![2, 3, 4], a),
            In::F32(vec![3, 1]),
        ],
        2,
        4,
        1e-4,
        1e-5,
    );
}

#[test]
fn sum_accumulates_broadcast_inputs() {
    check(
        Op::Sum,
        &[
            In::F32(vec![3, 1]),
            In::F32(vec![3, 4]),
            In::F32(vec![4]),
            In::F32(vec![1]),
        ],
        1,
        3,
        1e-6,
        1e-6,
    );
}

#[test]
fn dropout_masks_are_the_cpus_bit_for_bit() {
    for (n, ratio) in [(1usize, 0.5f32), (1000, 0.1), (70_001, 0.5), (0, 0.3)] {
        for step in [1i64, 7, 1 << 40] {
            for op in [
                Op::DropoutTrain { ratio, seed: 42 },
                Op::DropoutGrad {
                    ratio,
                    seed: 0xDEAD_BEEF,
                },
            ] {
                let mut rng = Rng::new(n as u64);
                let (g, vals) = one_node(
                    op,
                    &[In::F32(vec![n]), In::Data(vec![], i64s(vec![step]))],
                    1,
                    &mut rng,
                );
                let (want, got) = run_both(&inference(&g), &vals);
                assert_eq!(want, got, "n {n}, ratio {ratio}, step {step}");
            }
        }
    }
}

#[test]
fn reshapes_and_inference_dropout_copy() {
    check(
        Op::Reshape {
            shape: vec![6, -1],
            allowzero: false,
        },
        &[In::F32(vec![2, 3, 4])],
        1,
        1,
        0.0,
        0.0,
    );
    check(
        Op::Flatten { axis: 1 },
        &[In::F32(vec![2, 3, 4])],
        1,
        1,
        0.0,
        0.0,
    );
    check(
        Op::Dropout {
            ratio: 0.5,
            seed: 0,
        },
        &[In::F32(vec![33])],
        2,
        1,
        0.0,
        0.0,
    );
}

/// f32 <-> f16/bf16 conversions are bit for bit the CPU's (the `half` crate's): rounding
/// ties to even, subnormals, overflow to infinity, NaN payloads.
#[test]
fn casts_convert_bit_for_bit() {
    use lowmem_ir::DType;
    let mut v: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        65504.0,
        65520.0,
        1e6,
        -1e6,
        6.1e-5,
        5.96e-8,
        2.98e-8,
        1e-10,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::from_bits(0x7F80_0001),
        f32::from_bits(0xFFC1_2345),
        f32::from_bits(0x3F80_2000),
        f32::from_bits(0x3F80_1000),
        f32::from_bits(0x3F80_1800),
        f32::from_bits(0x3F80_8000),
        f32::from_bits(0x3F81_8000),
        f32::from_bits(0x3F80_8001),
        f32::MIN_POSITIVE,
        f32::MAX,
        3.0e38,
    ];
    let mut rng = Rng::new(1);
    v.extend((0..5000).map(|_| f32::from_bits(rng.next_u64() as u32)));
    v.extend(rng.vec_in(3000, -70000.0, 70000.0));
    v.extend(rng.vec_in(3000, -1e-4, 1e-4));
    let n = v.len();
    for to in [DType::F16, DType::BF16] {
        let (g, vals) = one_node(
            Op::Cast { to },
            &[In::Data(vec![n], TensorData::F32(v.clone()))],
            1,
            &mut rng,
        );
        let (want, got) = run_both(&inference(&g), &vals);
        let bits = |d: &TensorData| -> Vec<u16> {
            match d {
                TensorData::F16(x) => x.iter().map(|h| h.to_bits()).collect(),
                TensorData::BF16(x) => x.iter().map(|h| h.to_bits()).collect(),
                _ => panic!("not 16-bit"),
            }
        };
        let (w, gt) = (bits(&want[0]), bits(&got[0]));
        for i in 0..n {
            assert_eq!(
                w[i],
                gt[i],
                "{to}: {} ({:#010x}): CPU {:#06x}, CUDA kernel {:#06x}",
                v[i],
                v[i].to_bits(),
                w[i],
                gt[i]
            );
        }
        // And back: every 16-bit pattern widens as on the CPU.
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let half = match to {
            DType::F16 => TensorData::F16(all.iter().map(|&b| half::f16::from_bits(b)).collect()),
            _ => TensorData::BF16(all.iter().map(|&b| half::bf16::from_bits(b)).collect()),
        };
        let (g, vals) = one_node(
            Op::Cast { to: DType::F32 },
            &[In::Data(vec![all.len()], half)],
            1,
            &mut rng,
        );
        let (want, got) = run_both(&inference(&g), &vals);
        let (TensorData::F32(w), TensorData::F32(gt)) = (&want[0], &got[0]) else {
            panic!()
        };
        for (i, (a, b)) in w.iter().zip(gt).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{to} {i:#06x} to f32: CPU {a}, CUDA kernel {b}"
            );
        }
    }
}
