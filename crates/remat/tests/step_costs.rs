//! The chain's backward costs come from the real backward nodes of a training step
//! (`TrainingGraph::backward_of`), not from a copy of autodiff's gradient rules: the tensors
//! the stages' backwards read are exactly the step's saved set, every backward node emitted
//! for a stage node is costed once, and `chain_with` (which differentiates the stages
//! itself) agrees with `chain_of_step` on the step's own backward.

use std::collections::BTreeSet;
use std::path::Path;

use lowmem_autodiff::{Loss, Optimizer, StateKind, TrainingGraph, training_step};
use lowmem_ir::{
    BatchNormAttrs, ConvAttrs, DType, GemmAttrs, Graph, Op, PoolAttrs, TensorData, TensorId,
};
use lowmem_remat::{
    RematError, chain_of_step, chain_with, stage_backward_reads, stage_of, stages_from,
};

fn weight(g: &mut Graph, name: &str, shape: Vec<usize>) -> TensorId {
    let n = shape.iter().product();
    g.add_weight(name, shape, TensorData::F32(vec![0.01; n]))
        .unwrap()
}

fn node(g: &mut Graph, name: &str, op: Op, ins: &[TensorId]) -> TensorId {
    g.add_node(name, op, ins, &[name]).unwrap()[0]
}

/// Residual MLP: `h + Gemm(Relu(Gemm(h)))` blocks, then a Gemm classifier.
fn mlp() -> Graph {
    let mut g = Graph::new("mlp");
    let mut h = g.add_input("x", DType::F32, vec![4, 8]).unwrap();
    let gemm = Op::Gemm(GemmAttrs::default());
    for b in 0..3 {
        let w1 = weight(&mut g, &format!("w1_{b}"), vec![8, 8]);
        let b1 = weight(&mut g, &format!("b1_{b}"), vec![8]);
        let w2 = weight(&mut g, &format!("w2_{b}"), vec![8, 8]);
        let a = node(&mut g, &format!("fc1_{b}"), gemm.clone(), &[h, w1, b1]);
        let r = node(&mut g, &format!("relu_{b}"), Op::Relu, &[a]);
        let c = node(&mut g, &format!("fc2_{b}"), Op::MatMul, &[r, w2]);
        h = node(&mut g, &format!("add_{b}"), Op::Add, &[c, h]);
    }
    let wc = weight(&mut g, "wc", vec![8, 3]);
    let bc = weight(&mut g, "bc", vec![3]);
    let y = node(&mut g, "logits", gemm, &[h, wc, bc]);
    g.set_outputs(vec![y]);
    g
}

/// Conv -> BatchNorm -> Relu -> MaxPool twice, then Flatten and a Gemm classifier.
fn cnn() -> Graph {
    let mut g = Graph::new("cnn");
    let mut h = g.add_input("x", DType::F32, vec![2, 3, 8, 8]).unwrap();
    let conv = Op::Conv(ConvAttrs {
        pads: vec![1, 1, 1, 1],
        ..Default::default()
    });
    let pool = Op::MaxPool(PoolAttrs {
        kernel_shape: vec![2, 2],
        strides: vec![2, 2],
        ..Default::default()
    });
    for (k, (c_in, c_out)) in [(3, 4), (4, 6)].into_iter().enumerate() {
        let w = weight(&mut g, &format!("w{k}"), vec![c_out, c_in, 3, 3]);
        let bn: Vec<TensorId> = ["scale", "bias", "mean", "var"]
            .iter()
            .map(|p| weight(&mut g, &format!("bn{k}.{p}"), vec![c_out]))
            .collect();
        let y = node(&mut g, &format!("conv{k}"), conv.clone(), &[h, w]);
        let z = node(
            &mut g,
            &format!("bn{k}"),
            Op::BatchNormalization(BatchNormAttrs::default()),
            &[y, bn[0], bn[1], bn[2], bn[3]],
        );
        let r = node(&mut g, &format!("relu{k}"), Op::Relu, &[z]);
        h = node(&mut g, &format!("pool{k}"), pool.clone(), &[r]);
    }
    let f = node(&mut g, "flat", Op::Flatten { axis: 1 }, &[h]);
    let wc = weight(&mut g, "wc", vec![6 * 2 * 2, 5]);
    let bc = weight(&mut g, "bc", vec![5]);
    let y = node(
        &mut g,
        "logits",
        Op::Gemm(GemmAttrs::default()),
        &[f, wc, bc],
    );
    g.set_outputs(vec![y]);
    g
}

fn repo(rel: &str) -> Option<String> {
    let p = format!("{}/../../{rel}", env!("CARGO_MANIFEST_DIR"));
    if Path::new(&p).exists() {
        Some(p)
    } else {
        eprintln!("skipping {rel}: {p} is absent");
        None
    }
}

fn step(f: &Graph) -> TrainingGraph {
    let sgd = Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.0,
    };
    training_step(f, f.outputs[0], Loss::CrossEntropy, &sgd).unwrap()
}

/// Checks the step's saved set, the backward FLOPs and `chain_with` against `chain_of_step`.
fn check(name: &str, f: &Graph) {
    let tg = step(f);
    let g = &tg.graph;
    let st = stages_from(g, tg.data[0], tg.loss);
    assert!(!st.is_empty(), "{name}: stages");
    let params: Vec<TensorId> = tg
        .state
        .iter()
        .filter(|s| s.kind == StateKind::Parameter)
        .map(|s| s.input)
        .collect();

    // The saved set. `TrainingGraph::saved` is every forward activation a backward node
    // reads; the stages' reads are those of the backward nodes emitted for stage nodes.
    // Restricting `saved` to tensors produced by stage nodes loses nothing here: the stages
    // end at the loss, so every forward node of the step (loss included) is in a stage, and
    // the backward nodes tied to no stage (final weight-gradient sums, optimizer updates)
    // read gradients, parameters and optimizer state, never forward activations.
    let reads = stage_backward_reads(g, &tg.backward_of, &st).unwrap();
    let union: BTreeSet<TensorId> = reads.iter().flatten().copied().collect();
    let producers = g.producers();
    let of = stage_of(&st, g.nodes.len());
    let in_stages = |t: &TensorId| producers[t.index()].is_some_and(|p| of[p.index()].is_some());
    let saved: BTreeSet<TensorId> = tg.saved.iter().copied().filter(in_stages).collect();
    assert_eq!(
        union, saved,
        "{name}: the stages' backward reads are the saved set"
    );
    assert_eq!(
        saved.len(),
        tg.saved.len(),
        "{name}: every saved tensor comes from a stage"
    );

    // Backward FLOPs: the stages' backward nodes, each once; the rest of the backward pass
    // (weight-gradient sums, optimizer updates) is tied to no stage.
    let c = chain_of_step(g, &tg.backward_of, &st, &params).unwrap();
    let (mut staged, mut total) = (0u64, 0u64);
    for (v, n) in g.nodes.iter().enumerate().skip(tg.backward_start) {
        let flops = g.node_flops(n);
        total += flops;
        if tg.backward_of[v].is_some_and(|f| of[f.index()].is_some()) {
            staged += flops;
        }
    }
    assert_eq!(c.bwd.iter().sum::<u64>(), staged, "{name}: Σ bwd");
    assert!(staged <= total && staged > 0, "{name}: {staged} of {total}");
    let fwd: u64 = g.nodes[..tg.backward_start]
        .iter()
        .map(|n| g.node_flops(n))
        .sum();
    assert_eq!(c.fwd.iter().sum::<u64>(), fwd, "{name}: Σ fwd");

    // `chain_with` rebuilds the stages' backward with autodiff: the same costs.
    assert_eq!(chain_with(g, &st, &params), c, "{name}: chain_with");
    eprintln!(
        "{name}: {} stages, {} saved tensors, bwd {staged} of {total} backward FLOPs",
        st.len(),
        saved.len()
    );
}

#[test]
fn tiny_mlp_and_cnn() {
    check("mlp", &mlp());
    check("cnn", &cnn());
}

#[test]
fn digits_cnn() {
    let Some(p) = repo("ir/examples/digits_cnn.json") else {
        return;
    };
    let f = lowmem_ir::json::from_json(&std::fs::read_to_string(p).unwrap()).unwrap();
    check("digits_cnn", &f);
}

#[test]
fn squeezenet() {
    let Some(p) = repo("data/models/squeezenet.onnx") else {
        return;
    };
    check("squeezenet", &lowmem_onnx::load(Path::new(&p)).unwrap());
}

#[test]
fn chain_of_step_rejects_mismatched_inputs() {
    let tg = step(&mlp());
    let g = &tg.graph;
    let st = stages_from(g, tg.data[0], tg.loss);
    assert_eq!(
        chain_of_step(g, &tg.backward_of[1..], &st, &[]),
        Err(RematError::BackwardOfLength {
            entries: g.nodes.len() - 1,
            nodes: g.nodes.len()
        })
    );
    assert_eq!(
        chain_of_step(g, &tg.backward_of, &[], &[]),
        Err(RematError::NoStages)
    );
}
