//! Shared helpers: build small graphs, simplify, and check the result against the source by
//! running both.

#![allow(dead_code)]

use lowmem_ir::{DType, Graph, Op, TensorData, TensorId};
use lowmem_rewrite::{Options, Simplified, simplify};
use lowmem_testkit::Rng;

pub fn input(g: &mut Graph, name: &str, shape: &[usize]) -> TensorId {
    g.add_input(name, DType::F32, shape.to_vec()).unwrap()
}

pub fn filled(g: &mut Graph, name: &str, shape: &[usize], v: f32) -> TensorId {
    let n = shape.iter().product();
    g.add_weight(name, shape.to_vec(), TensorData::F32(vec![v; n]))
        .unwrap()
}

pub fn op(g: &mut Graph, name: &str, op: Op, inputs: &[TensorId]) -> TensorId {
    g.add_node(name, op, inputs, &[name]).unwrap()[0]
}

/// The ops of `g`, in order.
pub fn ops(g: &Graph) -> Vec<&'static str> {
    g.nodes.iter().map(|n| n.op.name()).collect()
}

/// Random inputs: floats in [-1, 1); integers 1 (a valid step and class label).
pub fn random_inputs(g: &Graph, seed: u64) -> Vec<TensorData> {
    let mut rng = Rng::new(seed);
    g.inputs
        .iter()
        .map(|&i| {
            let t = g.tensor(i);
            match t.dtype {
                DType::F32 => TensorData::F32(rng.vec_in(t.numel(), -1.0, 1.0)),
                d => TensorData::filled(d, t.numel(), 1.0),
            }
        })
        .collect()
}

/// Runs both graphs on the same random inputs and compares every output.
pub fn same_outputs(a: &Graph, b: &Graph, tol: f64) {
    assert_eq!(a.inputs.len(), b.inputs.len());
    for (&x, &y) in a.inputs.iter().zip(&b.inputs) {
        assert_eq!(
            a.tensor(x).name,
            b.tensor(y).name,
            "inputs keep their order"
        );
    }
    let inputs = random_inputs(a, 7);
    let ra = lowmem_exec::run(a, &inputs).unwrap();
    let rb = lowmem_exec::run(b, &inputs).unwrap();
    assert_eq!(ra.len(), rb.len());
    for (k, (x, y)) in ra.iter().zip(&rb).enumerate() {
        let (x, y) = (x.to_f64(), y.to_f64());
        assert_eq!(x.len(), y.len());
        for (i, (p, q)) in x.iter().zip(&y).enumerate() {
            assert!(
                (p - q).abs() <= tol * (1.0 + p.abs().max(q.abs())),
                "output {k} ('{}') element {i}: {p} vs {q}",
                a.tensor(a.outputs[k]).name
            );
        }
    }
}

/// Simplifies with the named rules (all when empty), checks validity, names and values.
pub fn check(g: &Graph, rules: &[&str]) -> Simplified {
    let opts = if rules.is_empty() {
        Options::default()
    } else {
        Options::only(rules)
    };
    let s = simplify(g, &[], &opts).unwrap();
    s.graph.validate().unwrap();
    for (&a, &b) in g.outputs.iter().zip(&s.graph.outputs) {
        assert_eq!(
            g.tensor(a).name,
            s.graph.tensor(b).name,
            "outputs keep names"
        );
    }
    same_outputs(g, &s.graph, 1e-5);
    s
}

/// How often `rule` fired.
pub fn fired(s: &Simplified, rule: &str) -> usize {
    s.report
        .iter()
        .find(|a| a.rule == rule)
        .map_or(0, |a| a.count)
}

/// `g` with redundant work after every single-output node (in turn: an Identity, a double
/// negation, a reshape to the same shape followed by a scale by one), read by the node's
/// consumers instead of its output: what the clean-up must remove again.
pub fn with_noise(g: &Graph) -> Graph {
    let mut out = Graph::new(g.name.clone());
    let mut map: Vec<Option<TensorId>> = vec![None; g.tensors.len()];
    for t in g.weights() {
        let s = g.tensor(t);
        map[t.index()] = Some(
            out.add_weight(&s.name, s.shape.clone(), s.value.clone().unwrap())
                .unwrap(),
        );
    }
    for &t in &g.inputs {
        let s = g.tensor(t);
        map[t.index()] = Some(out.add_input(&s.name, s.dtype, s.shape.clone()).unwrap());
    }
    let mut direct = map.clone();
    for (i, n) in g.nodes.iter().enumerate() {
        let ins: Vec<TensorId> = n.inputs.iter().map(|t| map[t.index()].unwrap()).collect();
        let names: Vec<&str> = n
            .outputs
            .iter()
            .map(|&t| g.tensor(t).name.as_str())
            .collect();
        let outs = out.add_node(&n.name, n.op.clone(), &ins, &names).unwrap();
        for (&o, &new) in n.outputs.iter().zip(&outs) {
            map[o.index()] = Some(new);
            direct[o.index()] = Some(new);
        }
        let [o] = n.outputs[..] else { continue };
        if !out.tensor(outs[0]).dtype.is_float() {
            continue;
        }
        let base = format!("{}.noise", g.tensor(o).name);
        let chain: Vec<Op> = match i % 3 {
            0 => vec![Op::Identity],
            1 => vec![Op::Neg, Op::Neg],
            _ => vec![
                Op::Reshape {
                    shape: out
                        .tensor(outs[0])
                        .shape
                        .iter()
                        .map(|&d| d as i64)
                        .collect(),
                    allowzero: true,
                },
                Op::Scale { alpha: 1.0 },
            ],
        };
        let mut t = outs[0];
        for (k, op) in chain.into_iter().enumerate() {
            let name = format!("{base}{k}");
            t = out.add_node(&name, op, &[t], &[&name]).unwrap()[0];
        }
        map[o.index()] = Some(t);
    }
    out.set_outputs(
        g.outputs
            .iter()
            .map(|t| direct[t.index()].unwrap())
            .collect(),
    );
    out.validate().unwrap();
    out
}
