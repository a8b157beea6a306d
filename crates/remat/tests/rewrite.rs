//! The rewrite on its own: a schedule over a training step's stages becomes a graph whose
//! order is the schedule's, with one clone per recomputed node, reads redirected to the
//! newest copies, and outputs bitwise equal to the step's.

use lowmem_autodiff::{Loss, Optimizer, training_step};
use lowmem_ir::{DType, GemmAttrs, Graph, Op, TensorData, TensorId};
use lowmem_remat::{
    Action, Schedule, chain_with, checkpoints, log_scheme, rematerialize, rematerialize_with,
    revolve, stages_from, store_all,
};
use lowmem_testkit::Rng;

/// `blocks` blocks of `h + Relu(Gemm(h))`, then a Gemm classifier; pseudo-random weights.
fn model(blocks: usize, d: usize) -> Graph {
    let mut g = Graph::new("blocks");
    let mut h = g.add_input("x", DType::F32, vec![4, d]).unwrap();
    let mut rng = Rng::new(1);
    let mut w = |g: &mut Graph, name: &str, shape: Vec<usize>| -> TensorId {
        let n: usize = shape.iter().product();
        g.add_weight(name, shape, TensorData::F32(rng.vec_in(n, -0.1, 0.1)))
            .unwrap()
    };
    for b in 0..blocks {
        let (wt, bias) = (
            w(&mut g, &format!("w{b}"), vec![d, d]),
            w(&mut g, &format!("b{b}"), vec![d]),
        );
        let a = g
            .add_node(
                format!("fc{b}"),
                Op::Gemm(GemmAttrs::default()),
                &[h, wt, bias],
                &[&format!("fc{b}")],
            )
            .unwrap()[0];
        let r = g
            .add_node(format!("relu{b}"), Op::Relu, &[a], &[&format!("relu{b}")])
            .unwrap()[0];
        h = g
            .add_node(format!("add{b}"), Op::Add, &[h, r], &[&format!("add{b}")])
            .unwrap()[0];
    }
    let (wt, bias) = (w(&mut g, "wc", vec![d, 3]), w(&mut g, "bc", vec![3]));
    let y = g
        .add_node(
            "logits",
            Op::Gemm(GemmAttrs::default()),
            &[h, wt, bias],
            &["logits"],
        )
        .unwrap()[0];
    g.set_outputs(vec![y]);
    g
}

fn inputs(g: &Graph, tg: &lowmem_autodiff::TrainingGraph) -> Vec<TensorData> {
    g.inputs
        .iter()
        .map(|&i| {
            if i == tg.data[0] {
                TensorData::F32(
                    (0..g.tensor(i).numel())
                        .map(|k| (k as f32 * 0.37).sin())
                        .collect(),
                )
            } else if Some(i) == tg.labels {
                TensorData::I64(vec![0, 1, 2, 1])
            } else if i == tg.step {
                TensorData::I64(vec![1])
            } else {
                let s = tg.state.iter().find(|s| s.input == i).expect("state input");
                (*s.init).clone()
            }
        })
        .collect()
}

#[test]
fn schedules_become_equivalent_graphs_in_schedule_order() {
    let f = model(6, 8);
    let sgd = Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.0,
    };
    let tg = training_step(&f, f.outputs[0], Loss::CrossEntropy, &sgd).unwrap();
    let g = &tg.graph;
    let st = stages_from(g, tg.data[0], tg.loss);
    assert_eq!(st.len(), 7, "six blocks and the classifier (with the loss)");
    let params: Vec<TensorId> = tg.state.iter().map(|s| s.input).collect();
    let c = chain_with(g, &st, &params);
    let want = lowmem_exec::run(g, &inputs(g, &tg)).unwrap();
    let per_stage: Vec<usize> = st.iter().map(|s| s.nodes.len()).collect();
    for sched in [
        store_all(&c),
        log_scheme(&c),
        revolve(st.len(), 2),
        revolve(st.len(), 1),
    ] {
        let r = rematerialize(g, &tg.backward_of, &st, &sched).unwrap();
        r.graph.validate().unwrap();
        // One clone per node of each forward after a stage's first, less the clones whose
        // outputs nobody reads (here at most a recording recompute's final Add: the stage
        // output, when the next stage's copy is not needed again).
        let mut seen = vec![0usize; st.len()];
        let (mut clones, mut recomputes) = (0, 0);
        for op in &sched.ops {
            if let Action::Forward { stage, .. } = *op {
                if seen[stage] > 0 {
                    clones += per_stage[stage];
                    recomputes += 1;
                }
                seen[stage] += 1;
            }
        }
        assert!(
            r.recomputed_nodes <= clones && r.recomputed_nodes + recomputes >= clones,
            "{} clones for {clones} nodes in {recomputes} recomputes",
            r.recomputed_nodes
        );
        assert_eq!(r.graph.nodes.len(), g.nodes.len() + r.recomputed_nodes);
        // The original forward pass runs first; every clone comes after the loss.
        let loss_at = r
            .graph
            .nodes
            .iter()
            .position(|n| n.outputs.contains(&tg.loss))
            .unwrap();
        for (k, n) in r.graph.nodes.iter().enumerate() {
            if n.name.contains(".remat") {
                assert!(k > loss_at, "{} runs before the loss", n.name);
            }
        }
        let got = lowmem_exec::run(&r.graph, &inputs(&r.graph, &tg)).unwrap();
        assert_eq!(got.len(), want.len());
        for (a, b) in want.iter().zip(&got) {
            assert!(a.bit_eq(b), "outputs differ under {sched:?}");
        }
    }
}

#[test]
fn checkpoints_are_the_boundaries_held_at_the_loss() {
    let n = 6;
    let c = lowmem_remat::Chain::unit(n);
    assert_eq!(checkpoints(&store_all(&c), n), vec![1, 2, 3, 4, 5]);
    assert!(checkpoints(&revolve(n, 1), n).len() <= 1);
    let s = lowmem_remat::chen_sqrt(&c, 2);
    let ck = checkpoints(&s, n);
    assert!(!ck.is_empty() && ck.len() < n - 1, "{ck:?}");
}

#[test]
fn malformed_schedules_are_rejected() {
    let f = model(2, 4);
    let sgd = Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.0,
        weight_decay: 0.0,
    };
    let tg = training_step(&f, f.outputs[0], Loss::CrossEntropy, &sgd).unwrap();
    let st = stages_from(&tg.graph, tg.data[0], tg.loss);
    let missing = Schedule::new(vec![Action::Forward {
        stage: 0,
        record: true,
    }]);
    let e = rematerialize(&tg.graph, &tg.backward_of, &st, &missing).unwrap_err();
    assert!(e.to_string().contains("never runs backward"), "{e}");
    let early = Schedule::new(vec![Action::Backward { stage: 0 }]);
    let e = rematerialize(&tg.graph, &tg.backward_of, &st, &early).unwrap_err();
    assert!(e.to_string().contains("before forward"), "{e}");
    let e = rematerialize(
        &tg.graph,
        &tg.backward_of[1..],
        &st,
        &store_all(&chain_with(&tg.graph, &st, &[])),
    )
    .unwrap_err();
    assert!(e.to_string().contains("backward_of"), "{e}");
    // A record option the stage does not have is named.
    let mut s = store_all(&chain_with(&tg.graph, &st, &[]));
    s.options = vec![0; st.len()];
    s.options[0] = 3;
    let e = rematerialize_with(&tg.graph, &tg.backward_of, &st, &[], &s).unwrap_err();
    assert!(
        e.to_string().contains("stage 0 has no record option 3"),
        "{e}"
    );
}
