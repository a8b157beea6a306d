//! One home for scratch sizes: every kernel that needs scratch runs with exactly
//! `Op::workspace_bytes` of planned workspace (giving `run`'s results bit for bit), refuses
//! 4 bytes less, and `kernel_workspace_bytes` agrees; ops whose kernels need none plan none.

mod common;

use common::numel;
use lowmem_exec::{Layout, kernels, run, run_planned};
use lowmem_ir::{
    ConvAttrs, DType, GemmAttrs, Graph, LrnAttrs, Op, ReduceAttrs, SoftmaxAttrs, TensorData,
};

/// Deterministic test values in [-1, 1).
fn data(n: usize, seed: u64) -> Vec<f32> {
    lowmem_testkit::Rng::new(seed).vec(n)
}

/// A one-node graph of `op` over f32 inputs of `shapes`.
fn single(op: Op, shapes: &[Vec<usize>], n_out: usize) -> Graph {
    let mut g = Graph::new("one");
    let ins: Vec<_> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| g.add_input(format!("x{i}"), DType::F32, s.clone()).unwrap())
        .collect();
    let names: Vec<String> = (0..n_out).map(|k| format!("y{k}")).collect();
    let names: Vec<&str> = names.iter().map(|s| &s[..]).collect();
    let outs = g.add_node("op", op, &ins, &names).unwrap();
    g.set_outputs(outs);
    g
}

/// Runs `g`'s single node with a planned workspace of `bytes` (every tensor outside the arena).
fn planned(g: &Graph, inputs: &[TensorData], bytes: u64) -> Result<Vec<TensorData>, String> {
    let order = vec![g.node_ids().next().unwrap()];
    let offset = vec![None; g.tensors.len()];
    let ws = vec![(bytes > 0).then_some((0, bytes))];
    let layout = Layout {
        order: &order,
        tensor_offset: &offset,
        workspace: &ws,
        arena_bytes: bytes,
    };
    run_planned(g, &layout, inputs.to_vec())
        .map(|(o, _)| o)
        .map_err(|e| e.to_string())
}

fn bits(t: &[TensorData]) -> Vec<Vec<u32>> {
    t.iter()
        .map(|t| match t {
            TensorData::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
            other => panic!("expected f32, got {}", other.dtype()),
        })
        .collect()
}

/// Checks `op` over `shapes`; returns its workspace bytes.
fn check(what: &str, op: Op, shapes: &[Vec<usize>], n_out: usize) -> u64 {
    let g = single(op, shapes, n_out);
    let node = &g.nodes[0];
    let ins = g.shapes(&node.inputs);
    let bytes = g.node_workspace_bytes(node) as u64;
    assert_eq!(
        lowmem_exec::kernel_workspace_bytes(&node.op, &ins).unwrap() as u64,
        bytes,
        "{what}"
    );
    let inputs: Vec<TensorData> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| TensorData::F32(data(numel(s), bytes ^ i as u64)))
        .collect();
    let want = run(&g, &inputs).unwrap_or_else(|e| panic!("{what}: {e}"));
    let got = planned(&g, &inputs, bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(bits(&got), bits(&want), "{what}: planned differs from run");
    if bytes >= 4 {
        let e = planned(&g, &inputs, bytes - 4).expect_err(what);
        assert!(e.contains("workspace"), "{what}: {e}");
    }
    bytes
}

#[test]
fn kernels_run_in_exactly_their_planned_workspace() {
    let conv = |pads: usize, strides: usize, group: usize| ConvAttrs {
        pads: vec![pads; 4],
        strides: vec![strides; 2],
        group,
        ..Default::default()
    };
    let convs = [
        ("3x3", conv(1, 1, 1), vec![2, 4, 9, 9], vec![6, 4, 3, 3]),
        ("strided", conv(0, 2, 2), vec![1, 4, 8, 8], vec![6, 2, 3, 3]),
        (
            "pointwise",
            conv(0, 1, 1),
            vec![2, 5, 6, 6],
            vec![7, 5, 1, 1],
        ),
        (
            "depthwise",
            conv(1, 1, 4),
            vec![2, 4, 6, 6],
            vec![4, 1, 3, 3],
        ),
        (
            "big",
            conv(1, 1, 1),
            vec![2, 32, 20, 20],
            vec![64, 32, 3, 3],
        ),
    ];
    for (name, a, xs, ws) in convs {
        let ys = Op::Conv(a.clone())
            .infer(&[(DType::F32, &xs), (DType::F32, &ws)], 1)
            .unwrap()[0]
            .1
            .clone();
        let b = check(
            &format!("conv {name}"),
            Op::Conv(a.clone()),
            &[xs.clone(), ws.clone()],
            1,
        );
        if name == "depthwise" {
            assert_eq!(b, 0, "conv {name}: direct loops need no workspace");
        }
        check(
            &format!("conv data {name}"),
            Op::ConvBackwardData {
                conv: a.clone(),
                input_shape: xs.clone(),
            },
            &[ys.clone(), ws.clone()],
            1,
        );
        check(
            &format!("conv filter {name}"),
            Op::ConvBackwardFilter {
                conv: a.clone(),
                weight_shape: ws.clone(),
            },
            &[ys.clone(), xs.clone()],
            1,
        );
    }
    for (a, b) in [
        (vec![5, 7], vec![7, 3]),
        (vec![7], vec![7, 3]),
        (vec![5, 7], vec![7]),
        (vec![2, 3, 5, 7], vec![7, 4]),
        (vec![2, 1, 5, 7], vec![3, 7, 4]),
        (vec![300, 70], vec![70, 40]),
        (vec![8, 64, 64], vec![8, 64, 64]),
    ] {
        check(&format!("matmul {a:?} {b:?}"), Op::MatMul, &[a, b], 1);
    }
    for (ta, tb) in [(false, false), (true, true)] {
        let g = GemmAttrs {
            trans_a: ta,
            trans_b: tb,
            ..Default::default()
        };
        check(
            &format!("gemm {ta} {tb}"),
            Op::Gemm(g),
            &[vec![6, 6], vec![6, 6], vec![6]],
            1,
        );
    }
    for (xs, ss, axis) in [
        (vec![2, 3, 4], vec![3, 4], 1),
        (vec![2, 3, 4], vec![1, 4], 1),
        (vec![2, 3, 4], vec![4], -1),
    ] {
        let ln = Op::LayerNormalization {
            axis,
            epsilon: 1e-5,
        };
        check(
            &format!("layernorm {xs:?} {ss:?}"),
            ln.clone(),
            &[xs.clone(), ss.clone()],
            1,
        );
        check(
            &format!("layernorm bias {xs:?} {ss:?}"),
            ln,
            &[xs.clone(), ss.clone(), ss.clone()],
            1,
        );
        check(
            &format!("layernorm grad {xs:?} {ss:?}"),
            Op::LayerNormGrad {
                axis,
                epsilon: 1e-5,
            },
            &[xs.clone(), xs.clone(), ss.clone()],
            3,
        );
    }
    for axes in [None, Some(vec![1]), Some(vec![0, -1]), Some(vec![])] {
        for op in [
            Op::ReduceSum(ReduceAttrs {
                axes: axes.clone(),
                keepdims: true,
            }),
            Op::ReduceMean(ReduceAttrs {
                axes: axes.clone(),
                keepdims: false,
            }),
        ] {
            let b = check(&format!("{} {axes:?}", op.name()), op, &[vec![2, 3, 4]], 1);
            assert!(b > 0);
        }
    }
    check(
        "sum_to",
        Op::SumTo { shape: vec![3, 1] },
        &[vec![2, 3, 4]],
        1,
    );
    // Kernels with stack scratch only.
    for (op, shapes) in [
        (
            Op::Softmax(SoftmaxAttrs::default()),
            vec![vec![3, 50], vec![]],
        ),
        (
            Op::LogSoftmax(SoftmaxAttrs::default()),
            vec![vec![3, 50], vec![]],
        ),
        (
            Op::Lrn(LrnAttrs {
                size: 3,
                alpha: 1e-4,
                beta: 0.75,
                bias: 1.0,
            }),
            vec![vec![2, 5, 300], vec![]],
        ),
        (Op::MseLoss, vec![vec![70000], vec![70000]]),
    ] {
        let shapes: Vec<Vec<usize>> = shapes.into_iter().filter(|s| !s.is_empty()).collect();
        let b = check(op.name(), op, &shapes, 1);
        assert_eq!(b, 0);
    }
    // The kernels' own size functions agree with the planned formulas.
    let a = ConvAttrs {
        pads: vec![1; 4],
        ..Default::default()
    };
    let win = a.window(&[2, 4, 9, 9], &[6, 4, 3, 3]).unwrap();
    assert_eq!(
        kernels::conv_workspace_len(&[2, 4, 9, 9], &[6, 4, 3, 3], &win, 1) * 4,
        Op::Conv(a).workspace_bytes(&[&[2, 4, 9, 9], &[6, 4, 3, 3]], &[])
    );
}

#[test]
fn ranks_above_max_rank_are_errors_not_panics() {
    let s = vec![1; kernels::MAX_RANK + 1];
    let g = single(Op::Add, &[s.clone(), s.clone()], 1);
    let x = TensorData::F32(vec![1.0]);
    let e = run(&g, &[x.clone(), x]).unwrap_err().to_string();
    assert!(e.contains("maximum rank"), "{e}");
}
