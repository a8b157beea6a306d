//! Whole training steps from autodiff: simplified, still valid, same loss and new state.

mod common;

use lowmem_autodiff::{Loss, Optimizer, training_step};
use lowmem_ir::Graph;
use lowmem_rewrite::{Options, census, simplify};

pub fn training_graph(forward: &Graph) -> Graph {
    let out = forward.outputs[0];
    let loss = if forward.tensor(out).shape.len() == 2 {
        Loss::CrossEntropy
    } else {
        Loss::Mean
    };
    let opt = Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 1e-4,
    };
    training_step(forward, out, loss, &opt).unwrap().graph
}

#[test]
fn example_training_steps_simplify_to_the_same_step() {
    for name in lowmem_testkit::example_names() {
        let g = training_graph(&lowmem_testkit::load_example(&name));
        let s = simplify(&g, &[], &Options::default()).unwrap();
        s.graph.validate().unwrap();
        common::same_outputs(&g, &s.graph, 1e-4);
        assert_eq!(s.stats.stop_reason, "saturated", "{name}");
        assert!(s.stats.cost_after <= s.stats.cost_before, "{name}");
        assert!(s.graph.nodes.len() <= g.nodes.len(), "{name}");
        // The clean-up leaves nothing for the rules to find (CSE included).
        let after = census(&s.graph).unwrap();
        assert!(after.iter().all(|a| a.count == 0), "{name}: left {after:?}");
        println!(
            "{name}: {} -> {} nodes, {:?}",
            g.nodes.len(),
            s.graph.nodes.len(),
            s.report
        );
    }
}

#[test]
fn the_encoder_block_step_loses_its_transpose_pairs_and_duplicates() {
    let g = training_graph(&lowmem_testkit::load_example("encoder_block"));
    let before = census(&g).unwrap();
    let count = |c: &[lowmem_rewrite::Applied], r: &str| {
        c.iter().find(|a| a.rule == r).map_or(0, |a| a.count)
    };
    assert!(count(&before, "transpose-transpose") > 0, "{before:?}");
    assert!(count(&before, "cse") > 0, "{before:?}");
    let s = simplify(&g, &[], &Options::default()).unwrap();
    assert!(s.graph.nodes.len() < g.nodes.len());
    assert!(s.stats.cost_after < s.stats.cost_before);
    // No Transpose reads a Transpose any more: the backward pass's transposes of qt, kt and vt
    // now read qh, kh and vh.
    let producers = s.graph.producers();
    let is_transpose = |n: &lowmem_ir::Node| matches!(n.op, lowmem_ir::Op::Transpose { .. });
    for n in s.graph.nodes.iter().filter(|n| is_transpose(n)) {
        let p = producers[n.inputs[0].index()].map(|p| s.graph.node(p));
        assert!(!p.is_some_and(is_transpose), "{} reads a transpose", n.name);
    }
}

#[test]
fn noise_added_to_training_steps_is_removed_again() {
    for name in ["tiny_cnn", "encoder_block", "digits_dropout"] {
        let clean = simplify(
            &training_graph(&lowmem_testkit::load_example(name)),
            &[],
            &Options::default(),
        )
        .unwrap()
        .graph;
        let noisy = common::with_noise(&clean);
        assert!(noisy.nodes.len() > clean.nodes.len() * 2);
        let s = simplify(&noisy, &[], &Options::default()).unwrap();
        s.graph.validate().unwrap();
        common::same_outputs(&noisy, &s.graph, 1e-4);
        // Back to the clean step, op for op. (Names may differ: a noise node that computes the
        // same value as a clean one, e.g. Neg(x) before a Neg(x) of the clean step, is as good
        // a source of a name.)
        assert_eq!(common::ops(&s.graph), common::ops(&clean), "{name}");
        assert_eq!(s.stats.cost_after, lowmem_rewrite::graph_cost(&clean));
    }
}
