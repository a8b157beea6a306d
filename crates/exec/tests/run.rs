//! The graph executor: end-to-end small graphs, dtype flow, memory reuse and bad input.

mod common;

use std::sync::Arc;

use common::*;
use lowmem_exec::{ExecError, kernels, run};
use lowmem_ir::{
    ClipAttrs, ConvAttrs, DType, GemmAttrs, Graph, Op, PoolAttrs, ReduceAttrs, SoftmaxAttrs,
    TensorData,
};
use lowmem_testkit::Rng;

fn f32s(t: &TensorData) -> &[f32] {
    match t {
        TensorData::F32(v) => v,
        other => panic!("expected f32, got {}", other.dtype()),
    }
}

/// conv -> relu -> maxpool -> flatten -> gemm -> softmax, checked against the kernels.
#[test]
fn small_cnn_matches_kernel_composition() {
    let mut rng = Rng::new(1);
    let mut g = Graph::new("cnn");
    let x = g.add_input("x", DType::F32, vec![2, 3, 8, 8]).unwrap();
    let wv = rng.vec(4 * 3 * 9);
    let bv = rng.vec(4);
    let fcv = rng.vec(10 * 64);
    let w = g
        .add_weight("w", vec![4, 3, 3, 3], TensorData::F32(wv.clone()))
        .unwrap();
    let b = g
        .add_weight("b", vec![4], TensorData::F32(bv.clone()))
        .unwrap();
    let fc = g
        .add_weight("fc", vec![10, 64], TensorData::F32(fcv.clone()))
        .unwrap();
    let conv = ConvAttrs {
        pads: vec![1, 1, 1, 1],
        ..Default::default()
    };
    let c = g
        .add_node("conv", Op::Conv(conv.clone()), &[x, w, b], &["c"])
        .unwrap()[0];
    let r = g.add_node("relu", Op::Relu, &[c], &["r"]).unwrap()[0];
    let pool = PoolAttrs {
        kernel_shape: vec![2, 2],
        strides: vec![2, 2],
        ..Default::default()
    };
    let p = g
        .add_node("pool", Op::MaxPool(pool.clone()), &[r], &["p"])
        .unwrap()[0];
    let f = g
        .add_node("flat", Op::Flatten { axis: 1 }, &[p], &["f"])
        .unwrap()[0];
    let gm = GemmAttrs {
        trans_b: true,
        ..Default::default()
    };
    let y = g.add_node("fc", Op::Gemm(gm), &[f, fc], &["y"]).unwrap()[0];
    let s = g
        .add_node("sm", Op::Softmax(SoftmaxAttrs::default()), &[y], &["s"])
        .unwrap()[0];
    g.set_outputs(vec![s, r]);
    g.validate().unwrap();

    let xv = rng.vec(2 * 3 * 64);
    let outs = run(&g, &[TensorData::F32(xv.clone())]).unwrap();
    assert_eq!(outs.len(), 2);

    let win = conv.window(&[2, 3, 8, 8], &[4, 3, 3, 3]).unwrap();
    let mut cv = vec![0.0; 2 * 4 * 64];
    let mut ws = vec![0.0; kernels::conv_workspace_len(&[2, 3, 8, 8], &[4, 3, 3, 3], &win, 1)];
    kernels::conv(
        &xv,
        &[2, 3, 8, 8],
        &wv,
        &[4, 3, 3, 3],
        Some(&bv),
        &win,
        1,
        None,
        &mut cv,
        &mut ws,
    );
    kernels::unary_inplace(kernels::Unary::Relu, &mut cv);
    assert_eq!(f32s(&outs[1]), &cv[..]);
    let pw = pool.window(&[2, 4, 8, 8]).unwrap();
    let mut pv = vec![0.0; 2 * 64];
    kernels::max_pool(&cv, &[2, 4, 8, 8], &pw, &mut pv);
    let mut yv = vec![0.0; 20];
    kernels::gemm(
        &pv,
        &[2, 64],
        &fcv,
        &[10, 64],
        None,
        1.0,
        1.0,
        false,
        true,
        &mut yv,
        &mut vec![0.0; kernels::sgemm_workspace_len(2, 10, 64)],
    );
    let mut sv = vec![0.0; 20];
    kernels::softmax(&yv, &[2, 10], 1, false, false, &mut sv);
    assert_eq!(f32s(&outs[0]), &sv[..]);
}

#[test]
fn every_elementwise_and_shape_op_runs() {
    let mut rng = Rng::new(2);
    let mut g = Graph::new("misc");
    let x = g.add_input("x", DType::F32, vec![2, 3, 4]).unwrap();
    let v = g.add_input("v", DType::F32, vec![4]).unwrap();
    let a = g.add_node("add", Op::Add, &[x, v], &["a"]).unwrap()[0];
    let m = g.add_node("mul", Op::Mul, &[a, a], &["m"]).unwrap()[0];
    let q = g.add_node("sqrt", Op::Sqrt, &[m], &["q"]).unwrap()[0];
    let cl = g
        .add_node(
            "clip",
            Op::Clip(ClipAttrs {
                min: Some(0.1),
                max: None,
            }),
            &[q],
            &["cl"],
        )
        .unwrap()[0];
    let t = g
        .add_node(
            "tr",
            Op::Transpose {
                perm: Some(vec![2, 0, 1]),
            },
            &[cl],
            &["t"],
        )
        .unwrap()[0];
    let rs = g
        .add_node(
            "rs",
            Op::Reshape {
                shape: vec![4, -1],
                allowzero: false,
            },
            &[t],
            &["rs"],
        )
        .unwrap()[0];
    let un = g
        .add_node("un", Op::Unsqueeze { axes: vec![0] }, &[rs], &["un"])
        .unwrap()[0];
    let sq = g
        .add_node("sq", Op::Squeeze { axes: None }, &[un], &["sq"])
        .unwrap()[0];
    let cc = g
        .add_node("cat", Op::Concat { axis: 1 }, &[sq, rs], &["cc"])
        .unwrap()[0];
    let rd = g
        .add_node(
            "mean",
            Op::ReduceMean(ReduceAttrs {
                axes: Some(vec![-1]),
                keepdims: false,
            }),
            &[cc],
            &["rd"],
        )
        .unwrap()[0];
    let outs = g
        .add_node(
            "drop",
            Op::Dropout {
                ratio: 0.5,
                seed: 0,
            },
            &[rd],
            &["dy", "mask"],
        )
        .unwrap();
    let sm = g
        .add_node("sum", Op::Sum, &[outs[0], v, rd], &["sm"])
        .unwrap()[0];
    g.set_outputs(vec![sm, outs[1], cc, x]);
    g.validate().unwrap();
    let (xv, vv) = (rng.vec(24), rng.vec(4));
    let o = run(
        &g,
        &[TensorData::F32(xv.clone()), TensorData::F32(vv.clone())],
    )
    .unwrap();
    assert_eq!(o[1], TensorData::Bool(vec![true; 4]));
    assert_eq!(o[3], TensorData::F32(xv.clone()));
    // Reference by hand.
    let cl: Vec<f32> = (0..24)
        .map(|i| ((xv[i] + vv[i % 4]) * (xv[i] + vv[i % 4])).sqrt().max(0.1))
        .collect();
    // t[k, i, j] = cl[i, j, k]; rows of rs = k.
    let mut rd = [0f64; 4];
    for k in 0..4 {
        let row: Vec<f32> = (0..6).map(|ij| cl[ij * 4 + k]).collect();
        rd[k] = 2.0 * row.iter().map(|&v| v as f64).sum::<f64>() / 12.0;
        assert_eq!(&f32s(&o[2])[k * 12..k * 12 + 6], &row[..]);
    }
    let want: Vec<f64> = (0..4).map(|k| 2.0 * rd[k] + vv[k] as f64).collect();
    assert_close(f32s(&o[0]), &want, 1e-6, "sum");
}

#[test]
fn other_dtypes_flow_through_data_movement() {
    let mut g = Graph::new("ints");
    let x = g.add_input("x", DType::I64, vec![2, 3]).unwrap();
    let k = g
        .add_weight("k", vec![2, 1], TensorData::I64(vec![7, 8]))
        .unwrap();
    let t = g
        .add_node("t", Op::Transpose { perm: None }, &[x], &["t"])
        .unwrap()[0];
    let r = g
        .add_node(
            "r",
            Op::Reshape {
                shape: vec![2, 3],
                allowzero: false,
            },
            &[t],
            &["r"],
        )
        .unwrap()[0];
    let c = g
        .add_node("c", Op::Concat { axis: -1 }, &[r, k], &["c"])
        .unwrap()[0];
    let f = g
        .add_node("f", Op::Flatten { axis: 0 }, &[c], &["f"])
        .unwrap()[0];
    let i = g.add_node("i", Op::Identity, &[f], &["i"]).unwrap()[0];
    g.set_outputs(vec![i, k, i]);
    let o = run(&g, &[TensorData::I64(vec![1, 2, 3, 4, 5, 6])]).unwrap();
    let want = TensorData::I64(vec![1, 4, 2, 7, 5, 3, 6, 8]);
    assert_eq!(o, vec![want.clone(), TensorData::I64(vec![7, 8]), want]);
}

#[test]
fn f32_only_kernel_on_other_dtype_is_an_error_naming_the_node() {
    let mut g = Graph::new("bad");
    let x = g.add_input("x", DType::I64, vec![3]).unwrap();
    let r = g.add_node("my_relu", Op::Relu, &[x], &["r"]).unwrap()[0];
    let a = g.add_node("my_add", Op::Add, &[r, r], &["a"]).unwrap()[0];
    g.set_outputs(vec![a]);
    let e = run(&g, &[TensorData::I64(vec![1, -2, 3])]).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ExecError::Node { .. }), "{msg}");
    assert!(
        msg.contains("my_relu") && msg.contains("Relu") && msg.contains("i64"),
        "{msg}"
    );
}

#[test]
fn bad_inputs_name_the_tensor() {
    let mut g = Graph::new("g");
    let x = g.add_input("image", DType::F32, vec![2, 3]).unwrap();
    let y = g.add_node("id", Op::Identity, &[x], &["y"]).unwrap()[0];
    g.set_outputs(vec![y]);
    let e = run(&g, &[]).unwrap_err().to_string();
    assert!(
        e.contains("image") && e.contains("1 inputs") && e.contains("got 0"),
        "{e}"
    );
    let e = run(&g, &[TensorData::F64(vec![0.0; 6])])
        .unwrap_err()
        .to_string();
    assert!(e.contains("'image'") && e.contains("dtype"), "{e}");
    let e = run(&g, &[TensorData::F32(vec![0.0; 5])])
        .unwrap_err()
        .to_string();
    assert!(e.contains("'image'") && e.contains("6 elements"), "{e}");
    let e = run(
        &g,
        &[TensorData::F32(vec![0.0; 6]), TensorData::F32(vec![])],
    )
    .unwrap_err();
    assert!(matches!(
        e,
        ExecError::InputCount {
            expected: 1,
            got: 2,
            ..
        }
    ));
}

#[test]
fn weights_are_borrowed_not_copied_and_inputs_survive() {
    // A graph whose output is the weight itself and a chain reusing buffers in place.
    let mut g = Graph::new("w");
    let data = Arc::new(TensorData::F32(vec![1.0, -2.0, 3.0]));
    let w = g.add_weight("w", vec![3], data.clone()).unwrap();
    let x = g.add_input("x", DType::F32, vec![3]).unwrap();
    let a = g.add_node("a", Op::Add, &[x, w], &["a"]).unwrap()[0];
    let r = g.add_node("r", Op::Relu, &[a], &["r"]).unwrap()[0];
    let s = g.add_node("s", Op::Sigmoid, &[r], &["s"]).unwrap()[0];
    let l = g
        .add_node("l", Op::LeakyRelu { alpha: 0.5 }, &[x], &["l"])
        .unwrap()[0];
    g.set_outputs(vec![s, w, l, r]);
    let xin = TensorData::F32(vec![0.5, 0.5, -4.0]);
    let o = run(&g, std::slice::from_ref(&xin)).unwrap();
    assert_eq!(
        Arc::strong_count(&data),
        2,
        "the executor holds no copy of the weight Arc"
    );
    assert_eq!(o[1], *data);
    assert_eq!(o[3], TensorData::F32(vec![1.5, 0.0, 0.0]));
    let sig = |v: f32| 1.0 / (1.0 + (-v).exp());
    assert_eq!(o[0], TensorData::F32(vec![sig(1.5), 0.5, 0.5]));
    assert_eq!(o[2], TensorData::F32(vec![0.5, 0.5, -2.0]));
}

#[test]
fn matmul_layernorm_gelu_block() {
    let mut rng = Rng::new(3);
    let mut g = Graph::new("tf");
    let x = g.add_input("x", DType::F32, vec![2, 5, 8]).unwrap();
    let w = g
        .add_weight("w", vec![8, 8], TensorData::F32(rng.vec(64)))
        .unwrap();
    let sc = g
        .add_weight("sc", vec![8], TensorData::F32(rng.vec(8)))
        .unwrap();
    let bi = g
        .add_weight("bi", vec![8], TensorData::F32(rng.vec(8)))
        .unwrap();
    let m = g.add_node("mm", Op::MatMul, &[x, w], &["m"]).unwrap()[0];
    let ln = g
        .add_node(
            "ln",
            Op::LayerNormalization {
                axis: -1,
                epsilon: 1e-5,
            },
            &[m, sc, bi],
            &["ln"],
        )
        .unwrap()[0];
    let ge = g
        .add_node(
            "gelu",
            Op::Gelu {
                approximate: Default::default(),
            },
            &[ln],
            &["ge"],
        )
        .unwrap()[0];
    let ls = g
        .add_node(
            "lsm",
            Op::LogSoftmax(SoftmaxAttrs {
                axis: 1,
                legacy: true,
            }),
            &[ge],
            &["ls"],
        )
        .unwrap()[0];
    let rs = g
        .add_node(
            "rsum",
            Op::ReduceSum(ReduceAttrs {
                axes: None,
                keepdims: true,
            }),
            &[ls],
            &["rs"],
        )
        .unwrap()[0];
    g.set_outputs(vec![rs, ls]);
    let o = run(&g, &[TensorData::F32(rng.vec(80))]).unwrap();
    // Legacy log-softmax over the 40 trailing elements: each row's exp sums to 1.
    for row in f32s(&o[1]).chunks(40) {
        let s: f64 = row.iter().map(|&v| (v as f64).exp()).sum();
        assert!((s - 1.0).abs() < 1e-5, "{s}");
    }
    let total: f64 = f32s(&o[1]).iter().map(|&v| v as f64).sum();
    assert_close(f32s(&o[0]), &[total], 1e-6, "reduce all");
}
