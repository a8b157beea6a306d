//! Each clean-up rule on its own: a small graph before, the node list after, and both graphs
//! run on the same random inputs.

mod common;

use common::{check, filled, fired, input, op, ops};
use lowmem_ir::{GemmAttrs, Graph, Op};

fn transpose(p: &[usize]) -> Op {
    Op::Transpose {
        perm: Some(p.to_vec()),
    }
}

fn reshape(s: &[i64]) -> Op {
    Op::Reshape {
        shape: s.to_vec(),
        allowzero: false,
    }
}

#[test]
fn transposes_compose() {
    let mut g = Graph::new("t");
    let x = input(&mut g, "x", &[2, 3, 4]);
    let a = op(&mut g, "a", transpose(&[1, 2, 0]), &[x]);
    let b = op(&mut g, "b", transpose(&[1, 0, 2]), &[a]);
    let y = op(&mut g, "y", Op::Relu, &[b]);
    g.set_outputs(vec![y]);
    let s = check(&g, &["transpose-transpose"]);
    assert_eq!(ops(&s.graph), ["Transpose", "Relu"]);
    assert_eq!(s.graph.nodes[0].op, transpose(&[2, 1, 0]));
    assert_eq!(s.graph.nodes[0].inputs, [s.tensor_map[&x]]);
    assert_eq!(fired(&s, "transpose-transpose"), 1);
}

#[test]
fn inverse_transposes_cancel() {
    let mut g = Graph::new("t");
    let x = input(&mut g, "x", &[2, 3, 4]);
    let a = op(&mut g, "a", transpose(&[1, 2, 0]), &[x]);
    let b = op(&mut g, "b", transpose(&[2, 0, 1]), &[a]);
    // The identity permutation alone is x too.
    let c = op(&mut g, "c", transpose(&[0, 1, 2]), &[b]);
    let y = op(&mut g, "y", Op::Relu, &[c]);
    g.set_outputs(vec![y]);
    let s = check(&g, &["transpose-transpose"]);
    assert_eq!(ops(&s.graph), ["Relu"]);
    assert_eq!(s.graph.nodes[0].inputs, [s.tensor_map[&x]]);
}

#[test]
fn reshape_chains_collapse() {
    let mut g = Graph::new("r");
    let x = input(&mut g, "x", &[2, 1, 3, 4]);
    let a = op(&mut g, "a", Op::Squeeze { axes: None }, &[x]); // [2, 3, 4]
    let b = op(&mut g, "b", reshape(&[6, -1]), &[a]); // [6, 4]
    let c = op(&mut g, "c", Op::Unsqueeze { axes: vec![0] }, &[b]); // [1, 6, 4]
    let d = op(&mut g, "d", Op::Flatten { axis: 2 }, &[c]); // [6, 4]
    let y = op(&mut g, "y", Op::Relu, &[d]);
    g.set_outputs(vec![y]);
    let s = check(&g, &["reshape-chain"]);
    assert_eq!(ops(&s.graph), ["Reshape", "Relu"]);
    assert_eq!(
        s.graph.nodes[0].op,
        Op::Reshape {
            shape: vec![6, 4],
            allowzero: true
        }
    );
    assert_eq!(s.graph.nodes[0].inputs, [s.tensor_map[&x]]);
}

#[test]
fn reshape_to_own_shape_is_dropped() {
    let mut g = Graph::new("r");
    let x = input(&mut g, "x", &[2, 3, 4]);
    let a = op(&mut g, "a", reshape(&[24]), &[x]);
    let b = op(&mut g, "b", reshape(&[2, 3, 4]), &[a]);
    let c = op(&mut g, "c", reshape(&[0, 0, 4]), &[b]);
    let y = op(&mut g, "y", Op::Relu, &[c]);
    g.set_outputs(vec![y]);
    let s = check(&g, &["reshape-chain"]);
    assert_eq!(ops(&s.graph), ["Relu"]);
}

#[test]
fn identity_is_dropped() {
    let mut g = Graph::new("i");
    let x = input(&mut g, "x", &[3]);
    let a = op(&mut g, "a", Op::Identity, &[x]);
    let y = op(&mut g, "y", Op::Relu, &[a]);
    g.set_outputs(vec![y]);
    let s = check(&g, &["identity"]);
    assert_eq!(ops(&s.graph), ["Relu"]);
}

#[test]
fn mul_by_ones_only_when_broadcasting_keeps_the_shape() {
    let mut g = Graph::new("m");
    let x = input(&mut g, "x", &[3, 4]);
    let ones_row = filled(&mut g, "ones_row", &[4], 1.0);
    let a = op(&mut g, "a", Op::Mul, &[ones_row, x]);
    let y = op(&mut g, "y", Op::Relu, &[a]);
    // x2 broadcast up to ones_big's shape: not x2.
    let x2 = input(&mut g, "x2", &[4]);
    let ones_big = filled(&mut g, "ones_big", &[3, 4], 1.0);
    let z = op(&mut g, "z", Op::Mul, &[x2, ones_big]);
    // Not ones.
    let twos = filled(&mut g, "twos", &[4], 2.0);
    let w = op(&mut g, "w", Op::Mul, &[x, twos]);
    g.set_outputs(vec![y, z, w]);
    let s = check(&g, &["mul-ones"]);
    assert_eq!(ops(&s.graph), ["Relu", "Mul", "Mul"]);
    assert_eq!(fired(&s, "mul-ones"), 1);
}

#[test]
fn adding_zeros_is_dropped() {
    let mut g = Graph::new("a");
    let x = input(&mut g, "x", &[3, 4]);
    let zeros = filled(&mut g, "zeros", &[1, 4], 0.0);
    let a = op(&mut g, "a", Op::Add, &[zeros, x]);
    let b = op(&mut g, "b", Op::Sub, &[a, zeros]);
    let y = op(&mut g, "y", Op::Relu, &[b]);
    // 0 - x is -x, not x.
    let z = op(&mut g, "z", Op::Sub, &[zeros, x]);
    g.set_outputs(vec![y, z]);
    let s = check(&g, &["add-zeros"]);
    assert_eq!(ops(&s.graph), ["Relu", "Sub"]);
    assert_eq!(s.graph.nodes[0].inputs, [s.tensor_map[&x]]);
}

#[test]
fn scale_by_one_is_dropped() {
    let mut g = Graph::new("s");
    let x = input(&mut g, "x", &[5]);
    let a = op(&mut g, "a", Op::Scale { alpha: 1.0 }, &[x]);
    let y = op(&mut g, "y", Op::Relu, &[a]);
    let z = op(&mut g, "z", Op::Scale { alpha: 2.0 }, &[x]);
    g.set_outputs(vec![y, z]);
    let s = check(&g, &["scale-one"]);
    assert_eq!(ops(&s.graph), ["Relu", "Scale"]);
}

#[test]
fn double_negation_is_dropped() {
    let mut g = Graph::new("n");
    let x = input(&mut g, "x", &[5]);
    let a = op(&mut g, "a", Op::Neg, &[x]);
    let b = op(&mut g, "b", Op::Neg, &[a]);
    let y = op(&mut g, "y", Op::Relu, &[b]);
    g.set_outputs(vec![y]);
    let s = check(&g, &["neg-neg"]);
    assert_eq!(ops(&s.graph), ["Relu"]);
}

#[test]
fn scales_multiply() {
    let mut g = Graph::new("s");
    let x = input(&mut g, "x", &[5]);
    let a = op(&mut g, "a", Op::Scale { alpha: 2.0 }, &[x]);
    let b = op(&mut g, "b", Op::Scale { alpha: 3.0 }, &[a]);
    let c = op(&mut g, "c", Op::Neg, &[x]);
    let d = op(&mut g, "d", Op::Scale { alpha: 0.5 }, &[c]);
    g.set_outputs(vec![b, d]);
    let s = check(&g, &["scale-scale"]);
    let got: Vec<Op> = s.graph.nodes.iter().map(|n| n.op.clone()).collect();
    assert_eq!(
        got,
        [Op::Scale { alpha: 6.0 }, Op::Scale { alpha: -0.5 }],
        "each reads x: {:?}",
        s.graph.nodes
    );
    assert!(s.graph.nodes.iter().all(|n| n.inputs == [s.tensor_map[&x]]));
}

#[test]
fn scale_folds_into_a_2d_matmul_as_gemm() {
    let mut g = Graph::new("mm");
    let a = input(&mut g, "a", &[3, 4]);
    let b = input(&mut g, "b", &[4, 5]);
    let sa = op(&mut g, "sa", Op::Scale { alpha: 2.0 }, &[a]);
    let y = op(&mut g, "y", Op::MatMul, &[sa, b]);
    g.set_outputs(vec![y]);
    let s = check(&g, &["scale-matmul"]);
    assert_eq!(ops(&s.graph), ["Gemm"]);
    let Op::Gemm(attrs) = &s.graph.nodes[0].op else {
        unreachable!()
    };
    assert_eq!(attrs.alpha, 2.0);
}

#[test]
fn scale_moves_to_the_cheapest_side_of_a_batched_matmul() {
    let mut g = Graph::new("mm");
    let a = input(&mut g, "a", &[2, 64, 32]);
    let b = input(&mut g, "b", &[32, 2]);
    let sa = op(&mut g, "sa", Op::Scale { alpha: 0.5 }, &[a]);
    let y = op(&mut g, "y", Op::MatMul, &[sa, b]);
    g.set_outputs(vec![y]);
    let s = check(&g, &["scale-matmul"]);
    // b (64 elements) is smaller than a (4096) and the output (256).
    assert_eq!(ops(&s.graph), ["Scale", "MatMul"]);
    assert_eq!(s.graph.nodes[0].inputs, [s.tensor_map[&b]]);
    assert!(s.stats.cost_after < s.stats.cost_before);
}

#[test]
fn scale_folds_into_gemm_alpha_and_beta() {
    let mut g = Graph::new("gemm");
    let a = input(&mut g, "a", &[3, 4]);
    let b = input(&mut g, "b", &[5, 4]);
    let c = input(&mut g, "c", &[5]);
    let sb = op(&mut g, "sb", Op::Scale { alpha: 3.0 }, &[b]);
    let attrs = GemmAttrs {
        alpha: 0.5,
        beta: 2.0,
        trans_a: false,
        trans_b: true,
        activation: None,
    };
    let y = op(&mut g, "y", Op::Gemm(attrs.clone()), &[a, sb, c]);
    let z = op(&mut g, "z", Op::Scale { alpha: -1.0 }, &[y]);
    g.set_outputs(vec![z]);
    let s = check(&g, &["scale-gemm"]);
    assert_eq!(ops(&s.graph), ["Gemm"]);
    assert_eq!(
        s.graph.nodes[0].op,
        Op::Gemm(GemmAttrs {
            alpha: -1.5,
            beta: -2.0,
            ..attrs
        })
    );
}

#[test]
fn identical_deterministic_nodes_merge() {
    let mut g = Graph::new("cse");
    let x = input(&mut g, "x", &[4]);
    let a = op(&mut g, "a", Op::Relu, &[x]);
    let b = op(&mut g, "b", Op::Relu, &[x]);
    let c = op(&mut g, "c", Op::Scale { alpha: 2.0 }, &[a]);
    let d = op(&mut g, "d", Op::Scale { alpha: 2.0 }, &[b]);
    let y = op(&mut g, "y", Op::Add, &[c, d]);
    g.set_outputs(vec![y]);
    let s = check(&g, &["identity"]);
    assert_eq!(ops(&s.graph), ["Relu", "Scale", "Add"]);
    assert_eq!(fired(&s, "cse"), 2);
    // Both merged tensors map to the survivor.
    assert_eq!(s.tensor_map[&a], s.tensor_map[&b]);
    assert_eq!(s.graph.tensor(s.tensor_map[&a]).name, "a");
}
