//! Conversion and extraction: opaque ops, names, `keep`, order, DAG cost, errors.

mod common;

use common::{check, input, op, ops};
use egg::{CostFunction, EGraph, Extractor, Id, Language, SymbolLang};
use lowmem_ir::{BatchNormAttrs, DType, Graph, Op, TensorData};
use lowmem_rewrite::{Options, RewriteError, extract_dag, simplify};

#[test]
fn random_ops_never_merge() {
    let mut g = Graph::new("drop");
    let x = input(&mut g, "x", &[64]);
    let step = g.add_input("step", DType::I64, vec![1]).unwrap();
    let d = Op::DropoutTrain {
        ratio: 0.5,
        seed: 3,
    };
    let a = op(&mut g, "a", d.clone(), &[x, step]);
    let b = op(&mut g, "b", d, &[x, step]);
    let y = op(&mut g, "y", Op::Sub, &[a, b]);
    g.set_outputs(vec![y]);
    let s = check(&g, &[]);
    assert_eq!(ops(&s.graph), ["DropoutTrain", "DropoutTrain", "Sub"]);
}

#[test]
fn multi_output_ops_stay_whole_and_keep_their_output_names() {
    let mut g = Graph::new("bn");
    let x = input(&mut g, "x", &[2, 3, 4, 4]);
    let p: Vec<_> = ["scale", "bias", "mean", "var"]
        .iter()
        .map(|n| input(&mut g, n, &[3]))
        .collect();
    let mut ins = vec![x];
    ins.extend(&p);
    let outs = g
        .add_node(
            "bn",
            Op::BatchNormTrain(BatchNormAttrs::default()),
            &ins,
            &["y", "saved_mean", "saved_invstd", "new_mean", "new_var"],
        )
        .unwrap();
    let i = op(&mut g, "i", Op::Identity, &[outs[0]]);
    let r = op(&mut g, "r", Op::Relu, &[i]);
    g.set_outputs(vec![r, outs[3]]);
    let s = simplify(&g, &[], &Options::default()).unwrap();
    s.graph.validate().unwrap();
    assert_eq!(ops(&s.graph), ["BatchNormTrain", "Relu"]);
    let names: Vec<&str> = s.graph.nodes[0]
        .outputs
        .iter()
        .map(|&t| s.graph.tensor(t).name.as_str())
        .collect();
    assert_eq!(
        names,
        ["y", "saved_mean", "saved_invstd", "new_mean", "new_var"]
    );
    assert_eq!(s.graph.nodes[0].name, "bn");
    assert_eq!(s.tensor_map[&outs[1]], s.graph.nodes[0].outputs[1]);
}

#[test]
fn kept_tensors_survive_by_name() {
    let mut g = Graph::new("keep");
    let x = input(&mut g, "x", &[4]);
    let a = op(&mut g, "a", Op::Neg, &[x]);
    let b = op(&mut g, "b", Op::Neg, &[a]); // = x
    let c = op(&mut g, "c", Op::Relu, &[b]);
    let d = op(&mut g, "d", Op::Relu, &[x]); // = c
    g.set_outputs(vec![c, d]);

    // Without keep, b and a disappear; c and d are one value under two output names.
    let s = check(&g, &[]);
    assert!(!s.tensor_map.contains_key(&a));
    assert_eq!(ops(&s.graph), ["Relu", "Identity"]);
    let out_names: Vec<&str> = s
        .graph
        .outputs
        .iter()
        .map(|&t| s.graph.tensor(t).name.as_str())
        .collect();
    assert_eq!(out_names, ["c", "d"]);

    // Keeping a materialises it under its name; b equals the input x, so it is an alias.
    let s = simplify(&g, &[a, b], &Options::default()).unwrap();
    s.graph.validate().unwrap();
    common::same_outputs(&g, &s.graph, 0.0);
    for t in [a, b] {
        let new = s.tensor_map[&t];
        assert_eq!(s.graph.tensor(new).name, g.tensor(t).name);
    }
    assert_eq!(ops(&s.graph), ["Identity", "Neg", "Relu", "Identity"]);
}

#[test]
fn untouched_graphs_come_back_in_source_order_with_source_names() {
    let mut g = Graph::new("mlp");
    let x = input(&mut g, "x", &[2, 8]);
    let w1 = g
        .add_weight("w1", vec![8, 4], TensorData::F32(vec![0.1; 32]))
        .unwrap();
    let w2 = g
        .add_weight("w2", vec![4, 3], TensorData::F32(vec![-0.2; 12]))
        .unwrap();
    let h = op(&mut g, "h", Op::MatMul, &[x, w1]);
    let r = op(&mut g, "r", Op::Relu, &[h]);
    let y = op(&mut g, "y", Op::MatMul, &[r, w2]);
    let z = op(&mut g, "z", Op::Sigmoid, &[h]);
    g.set_outputs(vec![y, z]);
    let s = check(&g, &[]);
    let before: Vec<(&str, &str)> = g
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.op.name()))
        .collect();
    let after: Vec<(&str, &str)> = s
        .graph
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.op.name()))
        .collect();
    assert_eq!(before, after);
    assert_eq!(s.stats.cost_before, s.stats.cost_after);
    assert!(s.report.is_empty());
}

#[test]
fn errors_name_what_is_wrong() {
    let mut g = Graph::new("e");
    let x = input(&mut g, "x", &[4]);
    let y = op(&mut g, "y", Op::Relu, &[x]);
    g.set_outputs(vec![y]);
    let e = simplify(&g, &[], &Options::only(&["no-such-rule"])).unwrap_err();
    assert!(matches!(e, RewriteError::UnknownRule(ref r) if r == "no-such-rule"));
    assert!(e.to_string().contains("neg-neg"), "{e}");
    let bad = lowmem_ir::TensorId::new(99);
    assert!(matches!(
        simplify(&g, &[bad], &Options::default()),
        Err(RewriteError::UnknownKeep(t)) if t == bad
    ));
    // A node whose declared output disagrees with inference: named in the error.
    g.tensors[y.index()].shape = vec![5];
    let e = simplify(&g, &[], &Options::default()).unwrap_err();
    assert!(e.to_string().contains("'y'"), "{e}");
}

/// Costs for the extraction tests: `big` is expensive, `cheap` mid-priced, the rest 1.
fn symbol_cost(n: &SymbolLang) -> u64 {
    match n.op.as_str() {
        "big" => 100,
        "alt" => 50,
        _ => 1,
    }
}

struct Tree;
impl CostFunction<SymbolLang> for Tree {
    type Cost = u64;
    fn cost<C: FnMut(Id) -> u64>(&mut self, n: &SymbolLang, mut costs: C) -> u64 {
        n.fold(symbol_cost(n), |acc, k| acc + costs(k))
    }
}

#[test]
fn dag_extraction_counts_a_shared_subterm_once() {
    // root = f(a, h(s)) with s = big(x) shared; a is either g(s) or alt(x).
    let mut eg: EGraph<SymbolLang, ()> = EGraph::default();
    let x = eg.add(SymbolLang::leaf("x"));
    let s = eg.add(SymbolLang::new("big", vec![x]));
    let h = eg.add(SymbolLang::new("h", vec![s]));
    let via_s = eg.add(SymbolLang::new("g", vec![s]));
    let alt = eg.add(SymbolLang::new("alt", vec![x]));
    eg.union(via_s, alt);
    eg.rebuild();
    let root = eg.add(SymbolLang::new("f", vec![via_s, h]));
    eg.rebuild();

    // Tree cost pays for s twice under g, so it picks alt: 51 against 102.
    let (tree_cost, tree_expr) = Extractor::new(&eg, Tree).find_best(root);
    assert_eq!(tree_cost, 1 + 51 + 102);
    assert!(tree_expr.to_string().contains("alt"), "{tree_expr}");

    // As a DAG, s is paid once: f + g + h + big + x = 104 against f + alt + h + big + x = 153.
    let choice = extract_dag(&eg, &[root], |_, _, n| symbol_cost(n)).unwrap();
    assert_eq!(choice.dag_cost, 104);
    assert_eq!(choice.get(&eg, via_s).op.as_str(), "g");
}

#[test]
fn dag_extraction_never_closes_a_cycle() {
    // a = inc(b) and b = dec(a) are equal, and a is also the leaf y: the only acyclic choice
    // for the root is through y.
    let mut eg: EGraph<SymbolLang, ()> = EGraph::default();
    let y = eg.add(SymbolLang::leaf("y"));
    let a = eg.add(SymbolLang::new("alt", vec![y]));
    let b = eg.add(SymbolLang::new("dec", vec![a]));
    let c = eg.add(SymbolLang::new("inc", vec![b]));
    eg.union(a, c);
    eg.rebuild();
    let root = eg.add(SymbolLang::new("f", vec![a, b]));
    eg.rebuild();
    let choice = extract_dag(&eg, &[root], |_, _, n| symbol_cost(n)).unwrap();
    // f + alt + y + dec: inc(b) would loop through b = dec(a).
    assert_eq!(choice.dag_cost, 1 + 50 + 1 + 1);
    assert_eq!(choice.get(&eg, a).op.as_str(), "alt");
}
