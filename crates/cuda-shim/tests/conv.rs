//! Convolutions (forward, data and filter gradients) through the host shim against the CPU
//! executor: im2col + GEMM with padding, strides, dilations and asymmetric pads, pointwise
//! GEMMs, groups, depthwise direct kernels, 1-D and 3-D windows, batch 1 and 3.

mod common;
use common::*;
use lowmem_ir::{AutoPad, ConvAttrs, Op};

struct Case {
    x: Vec<usize>,
    w: Vec<usize>,
    a: ConvAttrs,
}

fn case(
    x: &[usize],
    w: &[usize],
    strides: &[usize],
    pads: &[usize],
    dil: &[usize],
    group: usize,
) -> Case {
    Case {
        x: x.to_vec(),
        w: w.to_vec(),
        a: ConvAttrs {
            strides: strides.to_vec(),
            pads: pads.to_vec(),
            dilations: dil.to_vec(),
            group,
            ..ConvAttrs::default()
        },
    }
}

fn cases() -> Vec<Case> {
    let same = Case {
        x: vec![1, 3, 10, 10],
        w: vec![4, 3, 3, 3],
        a: ConvAttrs {
            strides: vec![2, 2],
            auto_pad: AutoPad::SameUpper,
            ..ConvAttrs::default()
        },
    };
    vec![
        // 3x3, pad 1, stride 1 and 2.
        case(&[1, 3, 9, 11], &[4, 3, 3, 3], &[], &[1, 1, 1, 1], &[], 1),
        case(
            &[3, 4, 13, 13],
            &[6, 4, 3, 3],
            &[2, 2],
            &[1, 1, 1, 1],
            &[],
            1,
        ),
        // 7x7 stride 2 (a stem).
        case(
            &[1, 3, 23, 23],
            &[8, 3, 7, 7],
            &[2, 2],
            &[3, 3, 3, 3],
            &[],
            1,
        ),
        // Pointwise, and 1x1 with stride 2 (not pointwise: columns).
        case(&[3, 8, 7, 9], &[5, 8, 1, 1], &[], &[], &[], 1),
        case(&[2, 4, 9, 9], &[3, 4, 1, 1], &[2, 2], &[], &[], 1),
        // 5x5, dilation, asymmetric pads.
        case(&[2, 2, 12, 10], &[3, 2, 5, 5], &[], &[2, 2, 2, 2], &[], 1),
        case(
            &[1, 3, 15, 15],
            &[4, 3, 3, 3],
            &[],
            &[2, 2, 2, 2],
            &[2, 2],
            1,
        ),
        case(
            &[2, 3, 10, 9],
            &[4, 3, 3, 3],
            &[1, 2],
            &[0, 1, 2, 1],
            &[],
            1,
        ),
        // Groups: im2col and pointwise.
        case(&[3, 4, 9, 9], &[6, 2, 3, 3], &[], &[1, 1, 1, 1], &[], 2),
        case(&[2, 4, 5, 5], &[6, 2, 1, 1], &[], &[], &[], 2),
        // Depthwise: stride 2, channel multiplier 2 with dilation and asymmetric pads, 1-D.
        case(
            &[3, 6, 11, 11],
            &[6, 1, 3, 3],
            &[2, 2],
            &[1, 1, 1, 1],
            &[],
            6,
        ),
        case(&[2, 4, 9, 9], &[8, 1, 3, 3], &[], &[2, 1, 2, 0], &[2, 2], 4),
        case(&[3, 5, 17], &[5, 1, 5], &[2], &[2, 2], &[], 5),
        // Depthwise with more output positions per image than the filter kernel's block.
        case(&[2, 3, 20, 20], &[3, 1, 3, 3], &[], &[1, 1, 1, 1], &[], 3),
        // 1-D and 3-D.
        case(&[3, 5, 31], &[4, 5, 3], &[2], &[1, 1], &[], 1),
        case(
            &[1, 2, 5, 6, 7],
            &[3, 2, 3, 3, 3],
            &[],
            &[1, 1, 1, 1, 1, 1],
            &[],
            1,
        ),
        // Large enough for the CPU's SGEMM to pack (GEMM workspace after the columns).
        case(
            &[1, 16, 32, 32],
            &[32, 16, 3, 3],
            &[],
            &[1, 1, 1, 1],
            &[],
            1,
        ),
        same,
    ]
}

fn y_shape(c: &Case) -> Vec<usize> {
    let win = c.a.window(&c.x, &c.w).unwrap();
    let mut y = vec![c.x[0], c.w[0]];
    y.extend_from_slice(&win.output);
    y
}

#[test]
fn conv_forward_matches_the_cpu() {
    for (i, c) in cases().into_iter().enumerate() {
        let op = Op::Conv(c.a.clone());
        check(
            op.clone(),
            &[In::F32(c.x.clone()), In::F32(c.w.clone())],
            1,
            i as u64,
            1e-4,
            2e-4,
        );
        let bias = In::F32(vec![c.w[0]]);
        check(
            op,
            &[In::F32(c.x.clone()), In::F32(c.w.clone()), bias],
            1,
            i as u64,
            1e-4,
            2e-4,
        );
    }
}

#[test]
fn conv_backward_data_matches_the_cpu() {
    for (i, c) in cases().into_iter().enumerate() {
        let op = Op::ConvBackwardData {
            conv: c.a.clone(),
            input_shape: c.x.clone(),
        };
        check(
            op,
            &[In::F32(y_shape(&c)), In::F32(c.w.clone())],
            1,
            i as u64,
            1e-4,
            2e-4,
        );
    }
}

#[test]
fn conv_backward_filter_matches_the_cpu() {
    for (i, c) in cases().into_iter().enumerate() {
        let op = Op::ConvBackwardFilter {
            conv: c.a.clone(),
            weight_shape: c.w.clone(),
        };
        check(
            op,
            &[In::F32(y_shape(&c)), In::F32(c.x.clone())],
            1,
            i as u64,
            1e-4,
            5e-4,
        );
    }
}

#[test]
fn empty_batches_give_empty_or_zero_results() {
    let c = case(&[0, 3, 8, 8], &[4, 3, 3, 3], &[], &[1, 1, 1, 1], &[], 1);
    check(
        Op::Conv(c.a.clone()),
        &[In::F32(c.x.clone()), In::F32(c.w.clone())],
        1,
        0,
        0.0,
        0.0,
    );
    let op = Op::ConvBackwardFilter {
        conv: c.a.clone(),
        weight_shape: c.w.clone(),
    };
    check(
        op,
        &[In::F32(y_shape(&c)), In::F32(c.x.clone())],
        1,
        0,
        0.0,
        0.0,
    );
}
