//! Scheduling and liveness: the execution order of a graph, the role of every tensor, in-place
//! reuse, and each tensor's live range over program points.
//!
//! Program points: step `s` (the s-th node of the order) reads its inputs at point `2s` and
//! writes its outputs at `2s + 1`. A tensor lives over the half-open range `[write, end)`:
//! `end` is one past its last reader's read point (`2s + 1`) when that reader overwrites it in
//! place, and `2s + 2` otherwise, since a kernel that is not in place reads its inputs while
//! it writes its outputs. Tensors whose ranges do not intersect may share bytes.

use lowmem_ir::{Graph, NodeId, SecondaryMap, TensorId, TensorKind};
use serde::Serialize;

lowmem_ir::define_index!(
    /// A position in a schedule: the node `order[s]` runs at step `s`.
    pub struct StepId;
);

lowmem_ir::define_index!(
    /// A program point: step `s` reads its inputs at point `2s` and writes its outputs at
    /// `2s + 1`.
    pub struct ProgPoint;
);

impl StepId {
    /// The point at which this step reads its inputs (`2s`).
    pub fn read(self) -> ProgPoint {
        ProgPoint(2 * self.0)
    }
    /// The point at which this step writes its outputs (`2s + 1`).
    pub fn write(self) -> ProgPoint {
        ProgPoint(2 * self.0 + 1)
    }
    /// The first point after this step (`2s + 2`, the next step's read).
    pub fn after(self) -> ProgPoint {
        ProgPoint(2 * self.0 + 2)
    }
    /// The points of the whole step, `[2s, 2s + 2)` (where its workspace lives).
    pub fn span(self) -> LiveRange {
        LiveRange::new(self.read(), self.after())
    }
}

impl ProgPoint {
    /// The step this point belongs to.
    pub fn step(self) -> StepId {
        StepId(self.0 / 2)
    }
}

/// A half-open range of program points `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LiveRange {
    pub start: ProgPoint,
    pub end: ProgPoint,
}

impl LiveRange {
    pub fn new(start: ProgPoint, end: ProgPoint) -> LiveRange {
        LiveRange { start, end }
    }
    /// Whether the range holds no point.
    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }
    /// Whether `p` lies in the range.
    pub fn contains(&self, p: ProgPoint) -> bool {
        self.start <= p && p < self.end
    }
    /// Whether two ranges share a point.
    pub fn overlaps(&self, other: &LiveRange) -> bool {
        self.start < other.end && other.start < self.end
    }
    /// The smallest range holding both.
    pub fn union(&self, other: &LiveRange) -> LiveRange {
        LiveRange::new(self.start.min(other.start), self.end.max(other.end))
    }
}

impl From<(u32, u32)> for LiveRange {
    fn from((start, end): (u32, u32)) -> LiveRange {
        LiveRange::new(ProgPoint(start), ProgPoint(end))
    }
}

impl std::fmt::Display for LiveRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

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
    /// What each tensor holds; the default (for tensors past the end) is
    /// [`Kind::Activation`].
    pub kind: SecondaryMap<TensorId, Kind>,
    /// For a state output updated in place, the state input whose buffer it reuses.
    pub state_alias: SecondaryMap<TensorId, Option<TensorId>>,
}

impl Roles {
    /// A forward (inference) graph: weights and inputs persistent, outputs in the arena.
    pub fn inference(g: &Graph) -> Roles {
        let mut kind = SecondaryMap::with_default(Kind::Activation);
        kind.resize(g.tensors.len());
        for t in g.tensor_ids() {
            kind[t] = match g.kind(t) {
                TensorKind::Weight => Kind::Weight,
                TensorKind::Input => Kind::Input,
                TensorKind::Activation => Kind::Activation,
            };
        }
        for &o in &g.outputs {
            if kind[o] == Kind::Activation {
                kind[o] = Kind::Output;
            }
        }
        Roles {
            kind,
            state_alias: SecondaryMap::with_len(g.tensors.len()),
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
            r.kind[input] = k;
            r.kind[output] = k;
            r.state_alias[output] = Some(input);
        }
        for grad in grads {
            if r.kind[grad] == Kind::Activation {
                r.kind[grad] = Kind::Gradient;
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
    node.op.in_place_input(0) == Some(k)
        && node.inputs.iter().filter(|&&t| t == node.inputs[k]).count() == 1
        && node
            .op
            .may_overwrite((i.dtype, &i.shape), (o.dtype, &o.shape))
}

/// The nodes in program order.
pub fn program_order(g: &Graph) -> Vec<NodeId> {
    g.node_ids().collect()
}

/// Moves each node that updates state in place (an output with a `state_alias`) to just
/// after the last reader of that state's input, so the update never overwrites a value
/// still to be read (an anti-dependence that the data edges do not carry: an optimizer
/// update may be ready before the input gradient that reads the same weight). Nodes whose
/// outputs other nodes read are left where they are.
pub fn sink_state_updates(g: &Graph, roles: &Roles, order: Vec<NodeId>) -> Vec<NodeId> {
    let consumers = g.consumers();
    let mut pos: SecondaryMap<NodeId, usize> = SecondaryMap::with_len(g.nodes.len());
    for (i, &n) in order.iter().enumerate() {
        pos[n] = i;
    }
    // (position to follow, node) for each update to move.
    let mut moves: Vec<(usize, NodeId)> = Vec::new();
    for &n in &order {
        let node = g.node(n);
        if node
            .outputs
            .iter()
            .any(|&o| !consumers[o.index()].is_empty())
        {
            continue;
        }
        let after = node
            .outputs
            .iter()
            .filter_map(|&o| roles.state_alias[o])
            .flat_map(|input| consumers[input.index()].iter())
            .filter(|&&r| r != n)
            .map(|&r| pos[r])
            .max();
        if let Some(a) = after.filter(|&a| a > pos[n]) {
            moves.push((a, n));
        }
    }
    if moves.is_empty() {
        return order;
    }
    let moved: std::collections::HashSet<NodeId> = moves.iter().map(|&(_, n)| n).collect();
    moves.sort_by_key(|&(a, n)| (a, pos[n]));
    let mut out = Vec::with_capacity(order.len());
    let mut m = moves.iter().peekable();
    for (i, &n) in order.iter().enumerate() {
        if !moved.contains(&n) {
            out.push(n);
        }
        while let Some(&&(a, u)) = m.peek() {
            if a != i {
                break;
            }
            out.push(u);
            m.next();
        }
    }
    out
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
    let mut remaining_readers: SecondaryMap<TensorId, usize> =
        SecondaryMap::from_vec(consumers.iter().map(Vec::len).collect(), 0);
    let mut missing: SecondaryMap<NodeId, usize> = SecondaryMap::with_len(n);
    for v in g.node_ids() {
        let mut preds: Vec<NodeId> = g
            .node(v)
            .inputs
            .iter()
            .filter_map(|t| producers[t.index()])
            .collect();
        preds.sort();
        preds.dedup();
        missing[v] = preds.len();
    }
    let arena = |t: TensorId| !roles.kind[t].persistent();
    let delta = |v: NodeId, left: &SecondaryMap<TensorId, usize>| -> i64 {
        let node = g.node(v);
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
                if left[t] == reads {
                    freed += g.tensor(t).bytes() as i64;
                }
            }
        }
        alloc - freed
    };
    let mut heap: BinaryHeap<Reverse<(i64, NodeId)>> = g
        .node_ids()
        .filter(|&v| missing[v] == 0)
        .map(|v| Reverse((delta(v, &remaining_readers), v)))
        .collect();
    let mut done: SecondaryMap<NodeId, bool> = SecondaryMap::with_len(n);
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse((d, v))) = heap.pop() {
        if done[v] {
            continue;
        }
        let fresh = delta(v, &remaining_readers);
        if fresh != d {
            heap.push(Reverse((fresh, v)));
            continue;
        }
        done[v] = true;
        order.push(v);
        for &t in &g.node(v).inputs {
            remaining_readers[t] -= 1;
        }
        let mut succ: Vec<NodeId> = g
            .node(v)
            .outputs
            .iter()
            .flat_map(|t| consumers[t.index()].iter().copied())
            .collect();
        succ.sort();
        succ.dedup();
        for s in succ {
            missing[s] -= 1;
            if missing[s] == 0 {
                heap.push(Reverse((delta(s, &remaining_readers), s)));
            }
        }
    }
    debug_assert_eq!(order.len(), n);
    order
}

/// Live ranges and in-place groups of the arena tensors under an order.
#[derive(Clone, Debug)]
pub struct Liveness {
    /// The node run at each step.
    pub order: Vec<NodeId>,
    /// Step of each node in `order` (`None` for nodes the order leaves out).
    pub step: SecondaryMap<NodeId, Option<StepId>>,
    /// Live range per tensor, `None` for persistent tensors (and unused inputs).
    pub range: SecondaryMap<TensorId, Option<LiveRange>>,
    /// In-place reuse: the tensor whose buffer this one overwrites (its group's root).
    pub shares: SecondaryMap<TensorId, Option<TensorId>>,
    /// Workspace bytes of each step.
    pub workspace: SecondaryMap<StepId, usize>,
}

/// The steps of `order` with their nodes.
pub fn steps(order: &[NodeId]) -> impl DoubleEndedIterator<Item = (StepId, NodeId)> + '_ {
    order.iter().enumerate().map(|(s, &n)| (StepId::new(s), n))
}

impl Liveness {
    pub fn new(g: &Graph, roles: &Roles, order: Vec<NodeId>, in_place: bool) -> Liveness {
        let nt = g.tensors.len();
        let mut step = SecondaryMap::with_len(g.nodes.len());
        for (s, n) in steps(&order) {
            step[n] = Some(s);
        }
        let last_step = StepId::new(order.len().saturating_sub(1));
        let mut last_read: SecondaryMap<TensorId, Option<StepId>> = SecondaryMap::with_len(nt);
        let mut def: SecondaryMap<TensorId, Option<StepId>> = SecondaryMap::with_len(nt);
        for (s, n) in steps(&order) {
            let node = g.node(n);
            for &i in &node.inputs {
                last_read[i] = Some(last_read[i].map_or(s, |x| x.max(s)));
            }
            for &o in &node.outputs {
                def[o] = Some(s);
            }
        }
        let arena = |t: TensorId| !roles.kind[t].persistent();
        let mut range: SecondaryMap<TensorId, Option<LiveRange>> = SecondaryMap::with_len(nt);
        for t in g.tensor_ids() {
            if !arena(t) {
                continue;
            }
            let Some(d) = def[t] else { continue };
            let end = if g.outputs.contains(&t) {
                last_step.after()
            } else {
                last_read[t].map_or(d.after(), StepId::after)
            };
            range[t] = Some(LiveRange::new(d.write(), end.max(d.after())));
        }
        let mut shares: SecondaryMap<TensorId, Option<TensorId>> = SecondaryMap::with_len(nt);
        if in_place {
            for (s, n) in steps(&order) {
                let node = g.node(n);
                let Some(&out) = node.outputs.first() else {
                    continue;
                };
                if !arena(out) || node.outputs.len() != 1 {
                    continue;
                }
                for k in 0..node.inputs.len() {
                    let i = node.inputs[k];
                    let dies_here = last_read[i] == Some(s) && !g.outputs.contains(&i);
                    if arena(i) && range[i].is_some() && dies_here && in_place_capable(g, node, k) {
                        // The input ends at this step's read; the output takes its bytes.
                        let r = range[i].expect("checked");
                        range[i] = Some(LiveRange::new(r.start, s.write()));
                        shares[out] = Some(shares[i].unwrap_or(i));
                        break;
                    }
                }
            }
        }
        let workspace = SecondaryMap::from_vec(
            order
                .iter()
                .map(|&n| g.node_workspace_bytes(g.node(n)))
                .collect(),
            0,
        );
        Liveness {
            order,
            step,
            range,
            shares,
            workspace,
        }
    }

    /// The steps of the order with their nodes.
    pub fn steps(&self) -> impl DoubleEndedIterator<Item = (StepId, NodeId)> + '_ {
        steps(&self.order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lowmem_ir::{DType, Op, TensorData};
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
        let range = |r: (u32, u32)| Some(LiveRange::from(r));
        // a: written at 1, read by relu at step 1 in place -> ends at 3.
        assert_eq!(l.range[id("a")], range((1, 3)));
        assert_eq!(l.shares[id("b")], Some(id("a")));
        // b: written at 3, read by mm2 (not in place) at step 2 -> ends at 6.
        assert_eq!(l.range[id("b")], range((3, 6)));
        // c: graph output, to the end.
        assert_eq!(l.range[id("c")], range((5, 6)));
        assert_eq!(l.range[id("x")], None);
        assert_eq!(l.step[NodeId(2)], Some(StepId(2)));
        assert_eq!(StepId(1).write(), ProgPoint(3));
        assert_eq!(ProgPoint(3).step(), StepId(1));
        let l = Liveness::new(&g, &roles, program_order(&g), false);
        assert_eq!(l.range[id("a")], range((1, 4)));
        assert_eq!(l.shares[id("b")], None);
    }

    #[test]
    fn memory_aware_order_is_topological() {
        let g = chain();
        let o = memory_aware_order(&g, &Roles::inference(&g));
        assert_eq!(o, program_order(&g));
    }
}
