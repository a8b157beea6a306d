//! petgraph as an independent oracle for the cut points: on random DAGs with a single source
//! (the input `x`) and a single sink (the output), a tensor is a cut point exactly when it
//! dominates the sink in the tensor graph rooted at `x` (every `x` → sink path crosses it;
//! `x` and the sink dominate it trivially and are cut points by definition).

use std::collections::BTreeSet;

use lowmem_ir::{DType, Graph, Op, TensorId};
use lowmem_remat::{cut_points, stages_from};
use petgraph::algo::dominators::simple_fast;
use petgraph::graph::{DiGraph, NodeIndex};
use proptest::prelude::*;

/// A random DAG of `[2, 2]` tensors. Node `k` reads one or two of the tensors before it
/// (`x` is tensor 0; node `j`'s output, tensor `j + 1`), as a `Relu`, an `Add` or a `MatMul`
/// (only `MatMul`, heavy, when `all_heavy`: a unary one squares its input). The tensors that
/// nobody reads are then folded into one sink by a chain of `MatMul`s.
fn random_dag(spec: &[(usize, usize, u8)], all_heavy: bool) -> (Graph, TensorId, TensorId) {
    let mut g = Graph::new("dag");
    let x = g.add_input("x", DType::F32, vec![2, 2]).unwrap();
    let mut ts = vec![x];
    let mut read = vec![false];
    fn add(g: &mut Graph, ts: &mut Vec<TensorId>, read: &mut Vec<bool>, op: Op, ins: &[usize]) {
        let name = format!("t{}", ts.len());
        let ids: Vec<TensorId> = ins.iter().map(|&i| ts[i]).collect();
        for &i in ins {
            read[i] = true;
        }
        read.push(false);
        let t = g.add_node(name.clone(), op, &ids, &[&name]).unwrap()[0];
        ts.push(t);
    }
    for &(a, b, kind) in spec {
        let (a, b) = (a % ts.len(), b % ts.len());
        match (kind % 4, all_heavy) {
            (0, false) => add(&mut g, &mut ts, &mut read, Op::Relu, &[a]),
            (0, true) => add(&mut g, &mut ts, &mut read, Op::MatMul, &[a, a]),
            (1, false) => add(&mut g, &mut ts, &mut read, Op::Add, &[a, b]),
            _ => add(&mut g, &mut ts, &mut read, Op::MatMul, &[a, b]),
        }
    }
    let dangling: Vec<usize> = (0..ts.len()).filter(|&i| !read[i]).collect();
    let mut sink = dangling[0];
    for &d in &dangling[1..] {
        add(&mut g, &mut ts, &mut read, Op::MatMul, &[sink, d]);
        sink = ts.len() - 1;
    }
    let sink = ts[sink];
    g.set_outputs(vec![sink]);
    (g, x, sink)
}

/// The tensors that dominate `sink` from `x` in the graph with an edge from each node input
/// to its output, by petgraph's Cooper–Harvey–Kennedy algorithm.
fn dominators(g: &Graph, x: TensorId, sink: TensorId) -> BTreeSet<TensorId> {
    let mut pg: DiGraph<TensorId, ()> = DiGraph::new();
    let v: Vec<NodeIndex> = g.tensor_ids().map(|t| pg.add_node(t)).collect();
    for n in &g.nodes {
        for i in &n.inputs {
            for o in &n.outputs {
                pg.add_edge(v[i.index()], v[o.index()], ());
            }
        }
    }
    simple_fast(&pg, v[x.index()])
        .dominators(v[sink.index()])
        .expect("the sink is reachable from x")
        .map(|d| pg[d])
        .collect()
}

fn check(spec: &[(usize, usize, u8)], all_heavy: bool) {
    let (g, x, sink) = random_dag(spec, all_heavy);
    let doms = dominators(&g, x, sink);
    let cuts = cut_points(&g, sink);
    assert_eq!(cuts.first(), Some(&x));
    assert_eq!(cuts.last(), Some(&sink));
    assert!(cuts.windows(2).all(|w| w[0] < w[1]), "topological order");
    let cut_set: BTreeSet<TensorId> = cuts.iter().copied().collect();
    assert_eq!(cut_set, doms, "cut points = dominators of the sink");

    // Stages: bounded by cut points, covering every node once. With only heavy nodes no
    // stage merges, so the boundaries are all the cut points.
    let st = stages_from(&g, x, sink);
    assert_eq!(st[0].input, x);
    assert_eq!(st.last().unwrap().output, sink);
    let mut bounds = vec![x];
    bounds.extend(st.iter().map(|s| s.output));
    for w in st.windows(2) {
        assert_eq!(w[0].output, w[1].input);
    }
    assert!(
        bounds.iter().all(|b| doms.contains(b)),
        "boundaries dominate"
    );
    if all_heavy {
        assert_eq!(bounds, cuts, "all-heavy stages end at every cut point");
    }
    let covered: usize = st.iter().map(|s| s.nodes.len()).sum();
    assert_eq!(covered, g.nodes.len(), "every node in one stage");
}

proptest! {
    #[test]
    fn cut_points_are_the_dominators_of_the_sink(
        spec in prop::collection::vec((0usize..64, 0usize..64, 0u8..4), 1..40),
        all_heavy in any::<bool>(),
    ) {
        check(&spec, all_heavy);
    }
}

#[test]
fn residual_and_diamond_by_hand() {
    // x -> t1 = Relu(x) -> t2 = Add(t1, x) -> t3 = Relu(t2): the skip hides t1, so the
    // cut points are x, t2, t3.
    let (g, x, sink) = random_dag(&[(0, 0, 0), (1, 0, 1), (2, 2, 0)], false);
    assert_eq!(cut_points(&g, sink).len(), 3);
    assert_eq!(dominators(&g, x, sink).len(), 3);
    check(&[(0, 0, 0), (1, 0, 1), (2, 2, 0)], false);
    // A diamond that never rejoins before two dangling tensors meet at the sink.
    check(&[(0, 0, 2), (0, 0, 2), (1, 2, 1)], true);
}
