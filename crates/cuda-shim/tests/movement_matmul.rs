//! Data movement (any element width) and the GEMM ops (through the device's SGEMM) against
//! the CPU executor.

mod common;
use common::*;
use lowmem_ir::{GemmAttrs, Op, TensorData};

#[test]
fn transpose_slice_expand_concat_match_the_cpu() {
    check(
        Op::Transpose {
            perm: Some(vec![0, 2, 3, 1]),
        },
        &[In::F32(vec![2, 3, 5, 7])],
        1,
        1,
        0.0,
        0.0,
    );
    check(
        Op::Transpose { perm: None },
        &[In::F32(vec![4, 257])],
        1,
        2,
        0.0,
        0.0,
    );
    check(
        Op::Transpose {
            perm: Some(vec![1, 0, 2]),
        },
        &[In::F32(vec![0, 3, 2])],
        1,
        2,
        0.0,
        0.0,
    );
    check(
        Op::Slice {
            axis: 1,
            start: 2,
            end: 5,
        },
        &[In::F32(vec![3, 7, 4])],
        1,
        3,
        0.0,
        0.0,
    );
    check(
        Op::Slice {
            axis: 0,
            start: 1,
            end: 1,
        },
        &[In::F32(vec![3, 4])],
        1,
        3,
        0.0,
        0.0,
    );
    check(
        Op::Expand {
            shape: vec![2, 3, 4],
        },
        &[In::F32(vec![3, 1])],
        1,
        4,
        0.0,
        0.0,
    );
    check(
        Op::Concat { axis: 1 },
        &[
            In::F32(vec![2, 3, 4]),
            In::F32(vec![2, 1, 4]),
            In::F32(vec![2, 5, 4]),
        ],
        1,
        5,
        0.0,
        0.0,
    );
    check(
        Op::Concat { axis: -1 },
        &[In::F32(vec![3, 2]), In::F32(vec![3, 0])],
        1,
        5,
        0.0,
        0.0,
    );
    // Other widths: i64 (8 bytes), bool (1 byte).
    let i = TensorData::I64((0..24).map(|v| v * 1_000_000_007).collect());
    check(
        Op::Transpose {
            perm: Some(vec![2, 0, 1]),
        },
        &[In::Data(vec![2, 3, 4], i.clone())],
        1,
        6,
        0.0,
        0.0,
    );
    check(
        Op::Concat { axis: 0 },
        &[
            In::Data(vec![2, 3, 4], i.clone()),
            In::Data(vec![2, 3, 4], i),
        ],
        1,
        6,
        0.0,
        0.0,
    );
    let b = TensorData::Bool((0..30).map(|v| v % 3 == 0).collect());
    check(
        Op::Slice {
            axis: 1,
            start: 1,
            end: 4,
        },
        &[In::Data(vec![5, 6], b)],
        1,
        7,
        0.0,
        0.0,
    );
}

#[test]
fn matmul_batches_and_broadcasts_like_numpy() {
    let cases: &[(&[usize], &[usize])] = &[
        (&[7], &[7]),
        (&[5, 7], &[7]),
        (&[7], &[7, 3]),
        (&[33, 65], &[65, 17]),
        (&[2, 3, 5, 7], &[7, 4]),
        (&[2, 3, 5, 7], &[3, 7, 4]),
        (&[2, 1, 5, 7], &[1, 3, 7, 4]),
        (&[4, 5, 7], &[1, 7, 4]),
        (&[0, 5, 7], &[7, 2]),
    ];
    for (i, (a, b)) in cases.iter().enumerate() {
        check(
            Op::MatMul,
            &[In::F32(a.to_vec()), In::F32(b.to_vec())],
            1,
            i as u64,
            1e-5,
            1e-5,
        );
    }
}

#[test]
fn gemm_transposes_scales_and_adds_bias() {
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let a = if ta { vec![9, 6] } else { vec![6, 9] };
        let b = if tb { vec![5, 9] } else { vec![9, 5] };
        for bias in [None, Some(vec![5]), Some(vec![6, 1]), Some(vec![6, 5])] {
            // With and without a fused ReLU epilogue.
            for activation in [None, Some(lowmem_ir::Activation::Relu)] {
                let attrs = GemmAttrs {
                    alpha: 0.5,
                    beta: 2.0,
                    trans_a: ta,
                    trans_b: tb,
                    activation,
                };
                let mut ins = vec![In::F32(a.clone()), In::F32(b.clone())];
                if let Some(s) = bias.clone() {
                    ins.push(In::F32(s));
                }
                check(Op::Gemm(attrs), &ins, 1, 3, 1e-5, 1e-5);
            }
        }
    }
}
