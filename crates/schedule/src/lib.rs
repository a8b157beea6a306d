//! Scheduling and liveness: the execution order of a graph, the role of every tensor, in-place
//! reuse, and each tensor's live range over program points.
//!
//! Program points: step `s` (the s-th node of the order) reads its inputs at point `2s` and
//! writes its outputs at `2s + 1`. A tensor lives over the half-open range `[write, end)`:
//! `end` is one past its last reader's read point (`2s + 1`) when that reader overwrites it in
//! place, and `2s + 2` otherwise, since a kernel that is not in place reads its inputs while
//! it writes its outputs. Tensors whose ranges do not intersect may share bytes.

use lowmem_ir::{Graph, NodeId, Op, TensorId, TensorKind};
use serde::Serialize;

/// What a buffer holds (the `kind` of the plan JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Weight,
    Gradient,
    OptimizerState,
    Activation,
    Workspace,
    Input,
    Output,
}

impl Kind {
    /// Persistent buffers live outside the arena for the whole step.
    pub fn persistent(self) -> bool {
        matches!(
            self,
            Kind::Weight | Kind::Gradient | Kind::OptimizerState | Kind::Input
        )
    }
}

/// The role of every tensor of a graph.
#[derive(Clone, Debug)]
pub struct Roles {
    pub kind: Vec<Kind>,
    /// For a state output updated in place, the state input whose buffer it reuses.
    pub state_alias: Vec<Option<TensorId>>,
}

impl Roles {
    /// A forward (inference) graph: weights and inputs persistent, outputs in the arena.
    pub fn inference(g: &Graph) -> Roles {
        let mut kind: Vec<Kind> = g
            .tensor_ids()
            .map(|t| match g.kind(t) {
                TensorKind::Weight => Kind::Weight,
                TensorKind::Input => Kind::Input,
                TensorKind::Activation => Kind::Activation,
            })
            .collect();
        for &o in &g.outputs {
            if kind[o.index()] == Kind::Activation {
                kind[o.index()] = Kind::Output;
            }
        }
        Roles {
            kind,
            state_alias: vec![None; g.tensors.len()],
        }
    }

    /// A training step: parameters and optimizer/BatchNorm state (inputs and their updated
    /// outputs, which overwrite them in place) and parameter gradients are persistent.
    ///
    /// `state` lists each state tensor as `(input, updated output, is a parameter)`;
    /// parameters are [`Kind::Weight`], other state (optimizer moments, BatchNorm running
    /// statistics) [`Kind::OptimizerState`]. `grads` are the parameter gradients.
    pub fn training_step(
        g: &Graph,
        state: impl IntoIterator<Item = (TensorId, TensorId, bool)>,
        grads: impl IntoIterator<Item = TensorId>,
    ) -> Roles {
        let mut r = Roles::inference(g);
        for (input, output, parameter) in state {
            let k = if parameter {
                Kind::Weight
            } else {
                Kind::OptimizerState
            };
            r.kind[input.index()] = k;
            r.kind[output.index()] = k;
            r.state_alias[output.index()] = Some(input);
        }
        for grad in grads {
            if r.kind[grad.index()] == Kind::Activation {
                r.kind[grad.index()] = Kind::Gradient;
            }
        }
        r
    }
}

/// Whether `node` may write its output over input `k`: elementwise kernels whose output
/// element `i` depends only on element `i` of that input (of the same shape and dtype; views
/// of the same bytes), overwriting their first input as the kernels' in-place forms do.
pub fn in_place_capable(g: &Graph, node: &lowmem_ir::Node, k: usize) -> bool {
    let Some(&out) = node.outputs.first() else {
        return false;
    };
    let (i, o) = (g.tensor(node.inputs[k]), g.tensor(out));
    if i.bytes() != o.bytes()
        || i.dtype != o.dtype
        || node.inputs.iter().filter(|&&t| t == node.inputs[k]).count() > 1
    {
        return false;
    }
    // Views copy bytes unchanged: any shape of the same size.
    if matches!(
        node.op,
        Op::Reshape { .. } | Op::Flatten { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. }
    ) {
        return k == 0;
    }
    if i.shape != o.shape {
        return false;
    }
    match &node.op {
        op if op.is_unary_elementwise() => k == 0,
        Op::Dropout { .. } | Op::DropoutTrain { .. } | Op::DropoutGrad { .. } => {
            k == 0 && node.outputs.len() == 1
        }
        // The kernels' in-place forms overwrite their first input.
        op if op.is_binary_elementwise() || op.is_elementwise_grad() => k == 0,
        Op::Sum => k == 0,
        Op::SgdUpdate { .. } | Op::AdamUpdate { .. } => k == 0,
        _ => false,
    }
}

/// The nodes in program order.
pub fn program_order(g: &Graph) -> Vec<NodeId> {
    g.node_ids().collect()
}

/// A memory-aware topological order: list scheduling that runs, among ready nodes, the one
/// that frees the most bytes net of what it allocates (ties to program order). Priorities
/// are computed when a node becomes ready (lazily refreshed), so it runs in O(n log n).
pub fn memory_aware_order(g: &Graph, roles: &Roles) -> Vec<NodeId> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let n = g.nodes.len();
    let producers = g.producers();
    let consumers = g.consumers();
    let mut remaining_readers: Vec<usize> = consumers.iter().map(Vec::len).collect();
    let mut missing = vec![0usize; n];
    for (i, node) in g.nodes.iter().enumerate() {
        let mut preds: Vec<NodeId> = node
            .inputs
            .iter()
            .filter_map(|t| producers[t.index()])
            .collect();
        preds.sort();
        preds.dedup();
        missing[i] = preds.len();
    }
    let arena = |t: TensorId| !roles.kind[t.index()].persistent();
    let delta = |i: usize, left: &[usize]| -> i64 {
        let node = &g.nodes[i];
        let alloc: i64 = node
            .outputs
            .iter()
            .filter(|&&t| arena(t))
            .map(|&t| g.tensor(t).bytes() as i64)
            .sum();
        let mut freed = 0i64;
        let mut seen = Vec::new();
        for &t in &node.inputs {
            if arena(t) && !seen.contains(&t) && !g.outputs.contains(&t) {
                seen.push(t);
                let reads = node.inputs.iter().filter(|&&u| u == t).count();
                if left[t.index()] == reads {
                    freed += g.tensor(t).bytes() as i64;
                }
            }
        }
        alloc - freed
    };
    let mut heap: BinaryHeap<Reverse<(i64, usize)>> = (0..n)
        .filter(|&i| missing[i] == 0)
        .map(|i| Reverse((delta(i, &remaining_readers), i)))
        .collect();
    let mut done = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse((d, i))) = heap.pop() {
        if done[i] {
            continue;
        }
        let fresh = delta(i, &remaining_readers);
        if fresh != d {
            heap.push(Reverse((fresh, i)));
            continue;
        }
        done[i] = true;
        order.push(NodeId(i as u32));
        for &t in &g.nodes[i].inputs {
            remaining_readers[t.index()] -= 1;
        }
        let mut succ: Vec<NodeId> = g.nodes[i]
            .outputs
            .iter()
            .flat_map(|t| consumers[t.index()].iter().copied())
            .collect();
        succ.sort();
        succ.dedup();
        for s in succ {
            missing[s.index()] -= 1;
            if missing[s.index()] == 0 {
                heap.push(Reverse((delta(s.index(), &remaining_readers), s.index())));
            }
        }
    }
    debug_assert_eq!(order.len(), n);
    order
}

/// Live ranges and in-place groups of the arena tensors under an order.
#[derive(Clone, Debug)]
pub struct Liveness {
    pub order: Vec<NodeId>,
    /// Step of each node in `order`.
    pub step: Vec<u32>,
    /// `[start, end)` per tensor, `None` for persistent tensors (and unused inputs).
    pub range: Vec<Option<(u32, u32)>>,
    /// In-place reuse: the tensor whose buffer this one overwrites (its group's root).
    pub shares: Vec<Option<TensorId>>,
    /// Workspace bytes of each step.
    pub workspace: Vec<usize>,
}

impl Liveness {
    pub fn new(g: &Graph, roles: &Roles, order: Vec<NodeId>, in_place: bool) -> Liveness {
        let nt = g.tensors.len();
        let mut step = vec![0u32; g.nodes.len()];
        for (s, &n) in order.iter().enumerate() {
            step[n.index()] = s as u32;
        }
        let last_step = order.len().saturating_sub(1) as u32;
        let mut last_read: Vec<Option<u32>> = vec![None; nt];
        let mut def: Vec<Option<u32>> = vec![None; nt];
        for (s, &n) in order.iter().enumerate() {
            let node = g.node(n);
            for &i in &node.inputs {
                last_read[i.index()] =
                    Some(last_read[i.index()].map_or(s as u32, |x| x.max(s as u32)));
            }
            for &o in &node.outputs {
                def[o.index()] = Some(s as u32);
            }
        }
        let arena = |t: TensorId| !roles.kind[t.index()].persistent();
        let mut range: Vec<Option<(u32, u32)>> = vec![None; nt];
        for t in g.tensor_ids() {
            if !arena(t) {
                continue;
            }
            let Some(d) = def[t.index()] else { continue };
            let end = if g.outputs.contains(&t) {
                2 * last_step + 2
            } else {
                last_read[t.index()].map_or(2 * d + 2, |r| 2 * r + 2)
            };
            range[t.index()] = Some((2 * d + 1, end.max(2 * d + 2)));
        }
        let mut shares: Vec<Option<TensorId>> = vec![None; nt];
        if in_place {
            for (s, &n) in order.iter().enumerate() {
                let node = g.node(n);
                let Some(&out) = node.outputs.first() else {
                    continue;
                };
                if !arena(out) || node.outputs.len() != 1 {
                    continue;
                }
                for k in 0..node.inputs.len() {
                    let i = node.inputs[k];
                    let dies_here =
                        last_read[i.index()] == Some(s as u32) && !g.outputs.contains(&i);
                    if arena(i)
                        && range[i.index()].is_some()
                        && dies_here
                        && in_place_capable(g, node, k)
                    {
                        // The input ends at this step's read; the output takes its bytes.
                        let (a, _) = range[i.index()].expect("checked");
                        range[i.index()] = Some((a, 2 * s as u32 + 1));
                        shares[out.index()] = Some(shares[i.index()].unwrap_or(i));
                        break;
                    }
                }
            }
        }
        let workspace = order
            .iter()
            .map(|&n| {
                let node = g.node(n);
                let ins: Vec<&[usize]> = node
                    .inputs
                    .iter()
                    .map(|&t| &g.tensor(t).shape[..])
                    .collect();
                let outs: Vec<&[usize]> = node
                    .outputs
                    .iter()
                    .map(|&t| &g.tensor(t).shape[..])
                    .collect();
                node.op.workspace_bytes(&ins, &outs)
            })
            .collect();
        Liveness {
            order,
            step,
            range,
            shares,
            workspace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lowmem_ir::{DType, TensorData};
    use std::sync::Arc;

    fn chain() -> Graph {
        let mut g = Graph::new("c");
        let x = g.add_input("x", DType::F32, vec![4, 8]).unwrap();
        let w = g
            .add_weight("w", vec![8, 8], Arc::new(TensorData::F32(vec![0.0; 64])))
            .unwrap();
        let a = g.add_node("mm", Op::MatMul, &[x, w], &["a"]).unwrap()[0];
        let b = g.add_node("relu", Op::Relu, &[a], &["b"]).unwrap()[0];
        let c = g.add_node("mm2", Op::MatMul, &[b, w], &["c"]).unwrap()[0];
        g.set_outputs(vec![c]);
        g
    }

    #[test]
    fn ranges_follow_program_points_and_relu_runs_in_place() {
        let g = chain();
        let roles = Roles::inference(&g);
        let l = Liveness::new(&g, &roles, program_order(&g), true);
        let id = |n: &str| g.tensor_id(n).unwrap();
        // a: written at 1, read by relu at step 1 in place -> ends at 3.
        assert_eq!(l.range[id("a").index()], Some((1, 3)));
        assert_eq!(l.shares[id("b").index()], Some(id("a")));
        // b: written at 3, read by mm2 (not in place) at step 2 -> ends at 6.
        assert_eq!(l.range[id("b").index()], Some((3, 6)));
        // c: graph output, to the end.
        assert_eq!(l.range[id("c").index()], Some((5, 6)));
        assert_eq!(l.range[id("x").index()], None);
        let l = Liveness::new(&g, &roles, program_order(&g), false);
        assert_eq!(l.range[id("a").index()], Some((1, 4)));
        assert_eq!(l.shares[id("b").index()], None);
    }

    #[test]
    fn memory_aware_order_is_topological() {
        let g = chain();
        let o = memory_aware_order(&g, &Roles::inference(&g));
        assert_eq!(o, program_order(&g));
    }
}
