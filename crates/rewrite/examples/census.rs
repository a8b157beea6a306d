//! What the clean-up finds and removes in training steps: `cargo run -p lowmem-rewrite
//! --example census [model ...]` (default: the examples in `ir/examples`, then resnet50 from
//! the model zoo at batch 2 when the data directory exists). Each step is also timed with
//! redundant work added after every node (`common::with_noise`), where every rule fires.

use std::time::Instant;

#[path = "../tests/common/mod.rs"]
mod common;

use lowmem_autodiff::{Loss, Optimizer, training_step};
use lowmem_ir::Graph;
use lowmem_rewrite::{Options, census, simplify};

fn training_graph(forward: &Graph) -> Graph {
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
    training_step(forward, out, loss, &opt)
        .expect("training step")
        .graph
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut graphs: Vec<(String, Graph)> = Vec::new();
    if args.is_empty() {
        for name in lowmem_testkit::example_names() {
            graphs.push((name.clone(), lowmem_testkit::load_example(&name)));
        }
        if lowmem_testkit::try_data_dir().is_some() {
            graphs.push((
                "resnet50".into(),
                lowmem_testkit::load_model("resnet50", Some(2)),
            ));
        }
    } else {
        for name in args {
            let g = lowmem_testkit::load_model(&name, Some(2));
            graphs.push((name, g));
        }
    }
    for (name, forward) in graphs {
        let fwd: Vec<String> = census(&forward)
            .expect("census")
            .iter()
            .filter(|a| a.count > 0)
            .map(|a| format!("{} {}", a.rule, a.count))
            .collect();
        println!(
            "{name} forward ({} nodes) matches: {fwd:?}",
            forward.nodes.len()
        );
        let g = training_graph(&forward);
        let before = census(&g).expect("census");
        let t = Instant::now();
        let s = simplify(&g, &[], &Options::default()).expect("simplify");
        let took = t.elapsed();
        let after = census(&s.graph).expect("census");
        println!(
            "{name}: {} -> {} nodes, cost {} -> {}, e-graph {} nodes / {} classes, {} iterations ({}), simplify {:.3} s",
            g.nodes.len(),
            s.graph.nodes.len(),
            s.stats.cost_before,
            s.stats.cost_after,
            s.stats.egraph_nodes,
            s.stats.egraph_classes,
            s.stats.iterations,
            s.stats.stop_reason,
            took.as_secs_f64()
        );
        for (b, a) in before.iter().zip(&after) {
            if b.count + a.count > 0 {
                let fired = s
                    .report
                    .iter()
                    .find(|x| x.rule == b.rule)
                    .map_or(0, |x| x.count);
                println!(
                    "  {:<20} matches before {:>5}, after {:>5}; equalities added {:>5}",
                    b.rule, b.count, a.count, fired
                );
            }
        }

        let noisy = common::with_noise(&s.graph);
        let t = Instant::now();
        let n = simplify(&noisy, &[], &Options::default()).expect("simplify");
        println!(
            "  with noise: {} -> {} nodes, e-graph {} nodes / {} classes, {} iterations ({}), simplify {:.3} s",
            noisy.nodes.len(),
            n.graph.nodes.len(),
            n.stats.egraph_nodes,
            n.stats.egraph_classes,
            n.stats.iterations,
            n.stats.stop_reason,
            t.elapsed().as_secs_f64()
        );
    }
}
