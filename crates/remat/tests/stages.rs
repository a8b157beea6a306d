use lowmem_autodiff::{Loss, Mode, gradients};
use lowmem_ir::{ConvAttrs, DType, GemmAttrs, Graph, NodeId, Op, TensorData, TensorId};
use lowmem_remat::{Stage, chain, cut_points, min_peak_budget, optimal, stages};

fn weight(g: &mut Graph, name: &str, shape: Vec<usize>) -> TensorId {
    let n = shape.iter().product();
    g.add_weight(name, shape, TensorData::zeros(DType::F32, n))
        .unwrap()
}

fn node(g: &mut Graph, name: &str, op: Op, ins: &[TensorId]) -> TensorId {
    g.add_node(name, op, ins, &[name]).unwrap()[0]
}

/// x -> [Gemm, Relu, Gemm, Add(skip)] x `blocks`; returns the graph and each block's output.
fn residual_mlp(n: usize, d: usize, blocks: usize) -> (Graph, TensorId, Vec<TensorId>) {
    let mut g = Graph::new("mlp");
    let x = g.add_input("x", DType::F32, vec![n, d]).unwrap();
    let mut h = x;
    let mut outs = Vec::new();
    for b in 0..blocks {
        let w1 = weight(&mut g, &format!("w1_{b}"), vec![d, d]);
        let b1 = weight(&mut g, &format!("b1_{b}"), vec![d]);
        let w2 = weight(&mut g, &format!("w2_{b}"), vec![d, d]);
        let b2 = weight(&mut g, &format!("b2_{b}"), vec![d]);
        let gemm = Op::Gemm(GemmAttrs::default());
        let a = node(&mut g, &format!("fc1_{b}"), gemm.clone(), &[h, w1, b1]);
        let r = node(&mut g, &format!("relu_{b}"), Op::Relu, &[a]);
        let c = node(&mut g, &format!("fc2_{b}"), gemm, &[r, w2, b2]);
        h = node(&mut g, &format!("add_{b}"), Op::Add, &[c, h]);
        outs.push(h);
    }
    g.set_outputs(vec![h]);
    (g, x, outs)
}

fn check_partition(g: &Graph, st: &[Stage]) {
    let mut seen = vec![0; g.nodes.len()];
    let mut prev: Option<NodeId> = None;
    for s in st {
        for &n in &s.nodes {
            seen[n.index()] += 1;
            assert!(prev.is_none_or(|p| p < n), "stage order is topological");
            prev = Some(n);
        }
    }
    assert!(seen.iter().all(|&k| k <= 1), "a node is in two stages");
    for w in st.windows(2) {
        assert_eq!(
            w[0].output, w[1].input,
            "consecutive stages share a boundary"
        );
    }
}

#[test]
fn residual_mlp_has_one_stage_per_block_with_hand_counted_costs() {
    let (n, d) = (4usize, 8usize);
    let (g, x, outs) = residual_mlp(n, d, 3);
    let out = outs[2];
    assert_eq!(cut_points(&g, out), vec![x, outs[0], outs[1], outs[2]]);
    let st = stages(&g, out);
    assert_eq!(st.len(), 3);
    check_partition(&g, &st);
    for (b, s) in st.iter().enumerate() {
        assert_eq!(s.input, if b == 0 { x } else { outs[b - 1] });
        assert_eq!(s.output, outs[b]);
        let want: Vec<NodeId> = (4 * b..4 * b + 4).map(|k| NodeId(k as u32)).collect();
        assert_eq!(s.nodes, want);
    }
    let c = chain(&g, &st);
    let (n, d) = (n as u64, d as u64);
    // Per Gemm with bias: 2*N*D*D multiply-adds + 2*N*D for beta*C + add; Relu, Add: N*D.
    let fwd = 2 * (2 * n * d * d + 2 * n * d) + 2 * n * d;
    assert_eq!(c.fwd, vec![fwd; 3]);
    assert_eq!(c.fwd.iter().sum::<u64>(), g.flops());
    // Backward per Gemm: dA and dB 2*N*D*D each, dBias a SumTo of N*D; ReluGrad N*D; Add 0.
    // Block 0's first Gemm has no dA (x is a graph input, it needs no gradient). The output
    // of blocks 0 and 1 is read twice (the next fc1 and the next skip Add): autodiff sums its
    // two gradient parts (N*D) with the gradient rule of its producer, so in that block.
    let bwd = 2 * (4 * n * d * d + n * d) + n * d;
    assert_eq!(c.bwd, vec![bwd - 2 * n * d * d + n * d, bwd + n * d, bwd]);
    let act = n * d * 4;
    assert_eq!(c.input_bytes, vec![act; 4]);
    // Record: the Relu output (read by ReluGrad and by fc2's dW) and the block output.
    assert_eq!(c.saved_bytes, vec![2 * act; 3]);
    // Forward: fc1's output is the only transient outside the record, next to a Gemm's
    // workspace (the executor's GEMM packing buffers).
    let gemm_ws = Op::Gemm(GemmAttrs::default())
        .workspace_bytes(&[&[4, 8], &[8, 8], &[8]], &[&[4, 8]]) as u64;
    assert_eq!(c.fwd_tmp, vec![act + gemm_ws; 3]);
    // Backward: dRelu and dFc1 (or dFc2 and dRelu) live together, next to the largest
    // workspace of a Gemm's backward ops (dA = dY W^T, dW = X^T dY, the bias SumTo).
    let g = |trans_a, trans_b| {
        Op::Gemm(GemmAttrs {
            beta: 0.0,
            trans_a,
            trans_b,
            ..Default::default()
        })
    };
    let back_ws = [
        g(false, true).workspace_bytes(&[&[4, 8], &[8, 8]], &[&[4, 8]]),
        g(true, false).workspace_bytes(&[&[4, 8], &[4, 8]], &[&[8, 8]]),
        Op::SumTo { shape: vec![8] }.workspace_bytes(&[&[4, 8]], &[&[8]]),
    ]
    .into_iter()
    .max()
    .unwrap() as u64;
    assert_eq!(c.bwd_tmp, vec![2 * act + back_ws; 3]);
    let budget = min_peak_budget(&c);
    let s = optimal(&c, budget, 100).expect("the minimal budget is feasible");
    assert!(s.simulate(&c).unwrap().0 <= budget);
}

#[test]
fn conv_chain_has_one_stage_per_conv_and_relu() {
    let mut g = Graph::new("convs");
    let x = g.add_input("x", DType::F32, vec![1, 3, 8, 8]).unwrap();
    let conv = Op::Conv(ConvAttrs {
        pads: vec![1, 1, 1, 1],
        ..Default::default()
    });
    let mut h = x;
    let mut outs = Vec::new();
    for k in 0..4 {
        let c_in = if k == 0 { 3 } else { 4 };
        let w = weight(&mut g, &format!("w{k}"), vec![4, c_in, 3, 3]);
        let y = node(&mut g, &format!("conv{k}"), conv.clone(), &[h, w]);
        h = node(&mut g, &format!("relu{k}"), Op::Relu, &[y]);
        outs.push(h);
    }
    g.set_outputs(vec![h]);
    // Every tensor of a plain chain is a cut point; light stages (the Relus) merge back.
    assert_eq!(cut_points(&g, h).len(), 9);
    let st = stages(&g, h);
    assert_eq!(st.len(), 4);
    check_partition(&g, &st);
    for (k, s) in st.iter().enumerate() {
        assert_eq!(s.output, outs[k]);
        assert_eq!(
            s.nodes,
            vec![NodeId(2 * k as u32), NodeId(2 * k as u32 + 1)]
        );
    }
    let c = chain(&g, &st);
    assert_eq!(c.fwd.iter().sum::<u64>(), g.flops());
    let act = 4 * 8 * 8 * 4u64;
    // Conv's dW reads its input (the stage input, held by the chain model); Relu reads its
    // output: the record is the output only.
    assert_eq!(c.saved_bytes, vec![act; 4]);
    assert!(c.fwd_tmp.iter().all(|&t| t >= act), "conv output + im2col");
    // Relu's backward reads its output (autodiff's rule, as the cost model now uses it).
    let gg = gradients(&g, h, Loss::Sum, &g.trainable_weights(), Mode::Inference).unwrap();
    for k in 0..4 {
        let relu = gg.graph.tensor_id(&format!("relu{k}")).unwrap();
        assert!(gg.saved.contains(&relu), "relu{k} is read by the backward");
    }
}

/// Loads a zoo model if present (relative to the repository root).
fn zoo(name: &str) -> Option<Graph> {
    let p = lowmem_testkit::zoo_path(name);
    if !p.exists() {
        eprintln!("skipping {name}: {} is absent", p.display());
        return None;
    }
    Some(lowmem_testkit::load(&p, None))
}

fn zoo_stages(name: &str) -> Option<(Graph, Vec<Stage>)> {
    let g = zoo(name)?;
    let out = g.outputs[0];
    let st = stages(&g, out);
    check_partition(&g, &st);
    let covered: usize = st.iter().map(|s| s.nodes.len()).sum();
    assert_eq!(covered, g.nodes.len(), "{name}: every node is in a stage");
    assert_eq!(st.last().unwrap().output, out);
    let c = chain(&g, &st);
    assert_eq!(
        c.fwd.iter().sum::<u64>(),
        g.flops(),
        "{name}: Σ fwd = graph FLOPs"
    );
    eprintln!(
        "{name}: {} stages, {} cut points, nodes per stage {:?}",
        st.len(),
        cut_points(&g, out).len(),
        st.iter().map(|s| s.nodes.len()).collect::<Vec<_>>()
    );
    Some((g, st))
}

#[test]
fn resnet50_stages_are_its_residual_blocks() {
    let Some((_, st)) = zoo_stages("resnet50") else {
        return;
    };
    // Stem (conv, bn, relu, maxpool), 16 bottleneck blocks (each with its Add and Relu),
    // the classifier Gemm (GlobalAveragePool and Flatten join the last block).
    assert_eq!(st.len(), 18);
}

#[test]
fn inception_and_densenet_stages() {
    // Inception v1: a module's branches join at a Concat, so each module is one stage.
    if let Some((_, st)) = zoo_stages("inception_v1") {
        assert_eq!(st.len(), 13);
    }
    // DenseNet-121 as exported concatenates incrementally (x_{k+1} = Concat(x_k, f(x_k))),
    // so each of its 58 dense layers is a stage, plus the stem, 3 transitions and the head.
    if let Some((_, st)) = zoo_stages("densenet121") {
        assert_eq!(st.len(), 63);
    }
}
