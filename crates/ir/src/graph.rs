use std::collections::HashMap;
use std::sync::Arc;

use crate::{DType, IrError, Op, TensorData, shape};

crate::define_index!(
    /// Index of a tensor in [`Graph::tensors`].
    pub struct TensorId;
);

crate::define_index!(
    /// Index of a node in [`Graph::nodes`], which is also its position in the topological order.
    pub struct NodeId;
);

#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Constant contents: set for weights (initializers), `None` for inputs and activations.
    /// Shared so that rewriting a graph does not copy its weights.
    pub value: Option<Arc<TensorData>>,
}

impl Tensor {
    pub fn numel(&self) -> usize {
        shape::count(&self.shape)
    }
    /// Size in bytes (checked when the tensor was created).
    pub fn bytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }
}

/// What role a tensor plays in the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    Input,
    Weight,
    Activation,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<TensorId>,
    pub outputs: Vec<TensorId>,
}

/// A static computation graph in topological order.
///
/// Invariants (established by the builder methods, re-checked by [`Graph::validate`]): every node
/// reads only inputs, weights and outputs of earlier nodes; every tensor has one definition; every
/// tensor's dtype and shape are those inferred from its producer.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    pub tensors: Vec<Tensor>,
    pub nodes: Vec<Node>,
    pub inputs: Vec<TensorId>,
    pub outputs: Vec<TensorId>,
    names: HashMap<String, TensorId>,
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Graph {
        Graph {
            name: name.into(),
            ..Graph::default()
        }
    }

    pub fn tensor(&self, id: TensorId) -> &Tensor {
        &self.tensors[id.index()]
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.index()]
    }

    pub fn tensor_id(&self, name: &str) -> Option<TensorId> {
        self.names.get(name).copied()
    }

    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        (0..self.nodes.len() as u32).map(NodeId)
    }

    pub fn tensor_ids(&self) -> impl Iterator<Item = TensorId> + '_ {
        (0..self.tensors.len() as u32).map(TensorId)
    }

    pub fn kind(&self, id: TensorId) -> TensorKind {
        if self.tensor(id).value.is_some() {
            TensorKind::Weight
        } else if self.inputs.contains(&id) {
            TensorKind::Input
        } else {
            TensorKind::Activation
        }
    }

    /// The weights (tensors with constant contents), in definition order.
    pub fn weights(&self) -> impl Iterator<Item = TensorId> + '_ {
        self.tensor_ids()
            .filter(|&t| self.tensor(t).value.is_some())
    }

    fn new_tensor(&mut self, t: Tensor) -> Result<TensorId, IrError> {
        if self.names.contains_key(&t.name) {
            return Err(IrError::DuplicateTensor(t.name));
        }
        let id = TensorId(
            u32::try_from(self.tensors.len())
                .map_err(|_| IrError::Invalid("more than 2^32 tensors".into()))?,
        );
        self.names.insert(t.name.clone(), id);
        self.tensors.push(t);
        Ok(id)
    }

    /// Appends a tensor that a node pushed by the caller onto `nodes` will produce (graph
    /// rewrites that reorder or clone nodes); [`Graph::validate`] re-checks the result.
    pub fn add_activation(
        &mut self,
        name: impl Into<String>,
        dtype: DType,
        shape: Vec<usize>,
    ) -> Result<TensorId, IrError> {
        let name = name.into();
        shape::bytes(&shape, dtype.size(), &name)?;
        self.new_tensor(Tensor {
            name,
            dtype,
            shape,
            value: None,
        })
    }

    pub fn add_input(
        &mut self,
        name: impl Into<String>,
        dtype: DType,
        shape: Vec<usize>,
    ) -> Result<TensorId, IrError> {
        let name = name.into();
        shape::bytes(&shape, dtype.size(), &name)?;
        let id = self.new_tensor(Tensor {
            name,
            dtype,
            shape,
            value: None,
        })?;
        self.inputs.push(id);
        Ok(id)
    }

    pub fn add_weight(
        &mut self,
        name: impl Into<String>,
        shape: Vec<usize>,
        data: impl Into<Arc<TensorData>>,
    ) -> Result<TensorId, IrError> {
        let name = name.into();
        let data = data.into();
        let n = shape::numel(&shape, &name)?;
        shape::bytes(&shape, data.dtype().size(), &name)?;
        if data.len() != n {
            return Err(IrError::tensor(
                &name,
                format!(
                    "shape {shape:?} holds {n} elements but the data has {}",
                    data.len()
                ),
            ));
        }
        self.new_tensor(Tensor {
            name,
            dtype: data.dtype(),
            shape,
            value: Some(data),
        })
    }

    /// Appends a node; infers its outputs' dtypes and shapes from its inputs.
    pub fn add_node(
        &mut self,
        name: impl Into<String>,
        op: Op,
        inputs: &[TensorId],
        outputs: &[&str],
    ) -> Result<Vec<TensorId>, IrError> {
        let name = name.into();
        if let Some(bad) = inputs.iter().find(|t| t.index() >= self.tensors.len()) {
            return Err(IrError::node(
                &name,
                op.name(),
                format!("input {bad:?} does not exist"),
            ));
        }
        let infos: Vec<(DType, &[usize])> = inputs
            .iter()
            .map(|&t| (self.tensor(t).dtype, &self.tensor(t).shape[..]))
            .collect();
        let inferred = op
            .infer(&infos, outputs.len())
            .map_err(|m| IrError::node(&name, op.name(), m))?;
        let mut ids = Vec::with_capacity(outputs.len());
        for (out, (dtype, shp)) in outputs.iter().zip(inferred) {
            shape::bytes(&shp, dtype.size(), out)?;
            ids.push(self.new_tensor(Tensor {
                name: out.to_string(),
                dtype,
                shape: shp,
                value: None,
            })?);
        }
        self.nodes.push(Node {
            name,
            op,
            inputs: inputs.to_vec(),
            outputs: ids.clone(),
        });
        Ok(ids)
    }

    /// Renames a tensor; the new name must be unused.
    pub fn rename(&mut self, t: TensorId, name: impl Into<String>) -> Result<(), IrError> {
        let name = name.into();
        if self.names.contains_key(&name) {
            return Err(IrError::DuplicateTensor(name));
        }
        let old = std::mem::replace(&mut self.tensors[t.index()].name, name.clone());
        self.names.remove(&old);
        self.names.insert(name, t);
        Ok(())
    }

    pub fn set_outputs(&mut self, outputs: Vec<TensorId>) {
        self.outputs = outputs;
    }

    /// The node that defines each tensor (`None` for inputs and weights).
    pub fn producers(&self) -> Vec<Option<NodeId>> {
        let mut p = vec![None; self.tensors.len()];
        for id in self.node_ids() {
            for &o in &self.node(id).outputs {
                p[o.index()] = Some(id);
            }
        }
        p
    }

    /// The nodes that read each tensor, in order (a node reading twice appears twice).
    pub fn consumers(&self) -> Vec<Vec<NodeId>> {
        let mut c = vec![Vec::new(); self.tensors.len()];
        for id in self.node_ids() {
            for &i in &self.node(id).inputs {
                c[i.index()].push(id);
            }
        }
        c
    }

    /// Re-infers every activation's dtype and shape in node order, after inputs or attributes
    /// changed (e.g. a new batch size).
    pub fn reinfer(&mut self) -> Result<(), IrError> {
        for n in 0..self.nodes.len() {
            let node = &self.nodes[n];
            let infos: Vec<(DType, &[usize])> = node
                .inputs
                .iter()
                .map(|&t| {
                    (
                        self.tensors[t.index()].dtype,
                        &self.tensors[t.index()].shape[..],
                    )
                })
                .collect();
            let inferred = node
                .op
                .infer(&infos, node.outputs.len())
                .map_err(|m| IrError::node(&node.name, node.op.name(), m))?;
            let outs = node.outputs.clone();
            for (o, (dtype, shp)) in outs.into_iter().zip(inferred) {
                let t = &mut self.tensors[o.index()];
                shape::bytes(&shp, dtype.size(), &t.name)?;
                t.dtype = dtype;
                t.shape = shp;
            }
        }
        Ok(())
    }

    /// The nodes of a dependency cycle (each reads an output of the one before it, the first
    /// an output of the last), if the nodes' data dependencies are cyclic.
    pub fn find_cycle(&self) -> Option<Vec<NodeId>> {
        let nt = self.tensors.len();
        let mut producer: Vec<Option<u32>> = vec![None; nt];
        for (v, node) in self.nodes.iter().enumerate() {
            for &o in node.outputs.iter().filter(|o| o.index() < nt) {
                producer[o.index()] = Some(v as u32);
            }
        }
        let edges = self.nodes.iter().enumerate().flat_map(|(v, node)| {
            let producer = &producer;
            node.inputs
                .iter()
                .filter_map(move |i| producer.get(i.index()).copied().flatten())
                .map(move |p| (p, v as u32))
        });
        find_cycle(self.nodes.len(), edges)
            .map(|c| c.into_iter().map(|v| NodeId(v as u32)).collect())
    }

    /// Re-derives every invariant independently of how the graph was built.
    pub fn validate(&self) -> Result<(), IrError> {
        let nt = self.tensors.len();
        let mut defined = vec![false; nt];
        let mut names = HashMap::new();
        for (i, t) in self.tensors.iter().enumerate() {
            if names.insert(t.name.as_str(), i).is_some() {
                return Err(IrError::DuplicateTensor(t.name.clone()));
            }
            if let Some(v) = &t.value {
                let n = shape::numel(&t.shape, &t.name)?;
                if v.len() != n || v.dtype() != t.dtype {
                    return Err(IrError::tensor(
                        &t.name,
                        format!(
                            "declared {} {:?} but holds {} {} values",
                            t.dtype,
                            t.shape,
                            v.len(),
                            v.dtype()
                        ),
                    ));
                }
                defined[i] = true;
            }
        }
        for &i in &self.inputs {
            let t = self
                .tensors
                .get(i.index())
                .ok_or_else(|| IrError::Invalid(format!("graph input {i:?} does not exist")))?;
            if defined[i.index()] {
                return Err(IrError::tensor(
                    &t.name,
                    "is both a graph input and a weight or listed twice",
                ));
            }
            defined[i.index()] = true;
        }
        for node in &self.nodes {
            let op = node.op.name();
            let mut infos = Vec::with_capacity(node.inputs.len());
            for &i in &node.inputs {
                let t = self.tensors.get(i.index()).ok_or_else(|| {
                    IrError::node(&node.name, op, format!("input {i:?} does not exist"))
                })?;
                if !defined[i.index()] {
                    if let Some(cycle) = self.find_cycle() {
                        return Err(IrError::Cycle(
                            cycle
                                .into_iter()
                                .map(|v| self.node(v).name.clone())
                                .collect(),
                        ));
                    }
                    return Err(IrError::UnknownTensor {
                        node: node.name.clone(),
                        tensor: t.name.clone(),
                    });
                }
                infos.push((t.dtype, &t.shape[..]));
            }
            let inferred = node
                .op
                .infer(&infos, node.outputs.len())
                .map_err(|m| IrError::node(&node.name, op, m))?;
            for (&o, (dtype, shp)) in node.outputs.iter().zip(inferred) {
                let t = self.tensors.get(o.index()).ok_or_else(|| {
                    IrError::node(&node.name, op, format!("output {o:?} does not exist"))
                })?;
                if std::mem::replace(&mut defined[o.index()], true) {
                    return Err(IrError::DuplicateTensor(t.name.clone()));
                }
                if t.dtype != dtype || t.shape != shp {
                    return Err(IrError::node(
                        &node.name,
                        op,
                        format!(
                            "output '{}' is declared {} {:?} but infers to {} {:?}",
                            t.name, t.dtype, t.shape, dtype, shp
                        ),
                    ));
                }
            }
        }
        for &o in &self.outputs {
            match self.tensors.get(o.index()) {
                Some(_) if defined[o.index()] => {}
                Some(t) => return Err(IrError::UnknownOutput(t.name.clone())),
                None => {
                    return Err(IrError::Invalid(format!(
                        "graph output {o:?} does not exist"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Float weights that training updates: every float weight except BatchNormalization's
    /// running statistics (inputs 3 and 4), which are statistics, not parameters.
    pub fn trainable_weights(&self) -> Vec<TensorId> {
        let mut stats = vec![false; self.tensors.len()];
        let mut other_use = vec![false; self.tensors.len()];
        for n in &self.nodes {
            for (k, &i) in n.inputs.iter().enumerate() {
                if matches!(n.op, Op::BatchNormalization(_)) && k >= 3 {
                    stats[i.index()] = true;
                } else {
                    other_use[i.index()] = true;
                }
            }
        }
        self.weights()
            .filter(|&t| {
                self.tensor(t).dtype.is_float() && (!stats[t.index()] || other_use[t.index()])
            })
            .collect()
    }

    /// Element count and bytes of a set of tensors.
    pub fn totals(&self, ts: impl IntoIterator<Item = TensorId>) -> (usize, usize) {
        ts.into_iter().fold((0, 0), |(n, b), t| {
            (n + self.tensor(t).numel(), b + self.tensor(t).bytes())
        })
    }

    /// FLOPs of one execution of the graph (see [`Op::flops`] for the counting rules).
    pub fn flops(&self) -> u64 {
        self.nodes.iter().map(|n| self.node_flops(n)).sum()
    }

    /// [`Op::flops`] of one node of this graph, from its tensors' shapes.
    pub fn node_flops(&self, n: &Node) -> u64 {
        n.op.flops(&self.shapes(&n.inputs), &self.shapes(&n.outputs))
    }

    /// The scratch bytes node `n`'s kernel needs ([`Op::workspace_bytes`] over its shapes).
    pub fn node_workspace_bytes(&self, n: &Node) -> usize {
        n.op.workspace_bytes(&self.shapes(&n.inputs), &self.shapes(&n.outputs))
    }

    /// The shapes of `ts`.
    pub fn shapes(&self, ts: &[TensorId]) -> Vec<&[usize]> {
        ts.iter().map(|&t| &self.tensor(t).shape[..]).collect()
    }
}

/// A cycle among `n` nodes with dependency edges `(from, to)` (`to` reads an output of `from`),
/// if there is one: the strongly connected components (Tarjan) that hold more than one node or
/// a self-loop contain every node on a cycle; the first such component (lowest node) gives the
/// result, its shortest cycle through its lowest node, in edge order from that node.
pub(crate) fn find_cycle(
    n: usize,
    edges: impl IntoIterator<Item = (u32, u32)>,
) -> Option<Vec<usize>> {
    use petgraph::graph::{DiGraph, NodeIndex};
    let mut dg: DiGraph<(), (), u32> = DiGraph::with_capacity(n, 0);
    for _ in 0..n {
        dg.add_node(());
    }
    for (a, b) in edges {
        if (a as usize) < n && (b as usize) < n {
            dg.add_edge(NodeIndex::new(a as usize), NodeIndex::new(b as usize), ());
        }
    }
    let scc = petgraph::algo::tarjan_scc(&dg)
        .into_iter()
        .filter(|c| c.len() > 1 || dg.contains_edge(c[0], c[0]))
        .min_by_key(|c| c.iter().min().copied())?;
    let start = *scc.iter().min().expect("a component is not empty");
    if scc.len() == 1 {
        return Some(vec![start.index()]);
    }
    // Breadth-first search inside the component from `start` back to `start`.
    let members: std::collections::HashSet<NodeIndex> = scc.iter().copied().collect();
    let inside = |v: NodeIndex| members.contains(&v);
    let mut parent: std::collections::HashMap<NodeIndex, NodeIndex> = Default::default();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for w in dg.neighbors(v) {
            if w == start {
                let mut cycle = vec![v.index()];
                let mut at = v;
                while at != start {
                    at = parent[&at];
                    cycle.push(at.index());
                }
                cycle.reverse();
                return Some(cycle);
            }
            if inside(w) && !parent.contains_key(&w) {
                parent.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    unreachable!("a strongly connected component has a cycle through each of its nodes")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// x -> a -> b -> c -> d, then c's input rewired to d's output: b -> c -> d -> b... with
    /// a self-contained cycle c -> d -> c.
    #[test]
    fn validate_names_every_node_of_a_cycle() {
        let mut g = Graph::new("cyc");
        let x = g.add_input("x", DType::F32, vec![2, 3]).unwrap();
        let a = g.add_node("n_a", Op::Relu, &[x], &["a"]).unwrap()[0];
        let b = g.add_node("n_b", Op::Relu, &[a], &["b"]).unwrap()[0];
        let c = g.add_node("n_c", Op::Relu, &[b], &["c"]).unwrap()[0];
        let d = g.add_node("n_d", Op::Relu, &[c], &["d"]).unwrap()[0];
        let e = g.add_node("n_e", Op::Relu, &[d], &["e"]).unwrap()[0];
        g.set_outputs(vec![e]);
        assert!(g.validate().is_ok());
        assert_eq!(g.find_cycle(), None);
        // n_b now reads n_d's output: n_b -> n_c -> n_d -> n_b.
        g.nodes[1].inputs = vec![d];
        assert_eq!(g.find_cycle(), Some(vec![NodeId(1), NodeId(2), NodeId(3)]));
        let err = g.validate().unwrap_err();
        assert_eq!(
            err,
            IrError::Cycle(vec!["n_b".into(), "n_c".into(), "n_d".into()])
        );
        let msg = err.to_string();
        assert!(msg.contains("'n_b' -> 'n_c' -> 'n_d' -> 'n_b'"), "{msg}");
        // A node reading its own output.
        g.nodes[1].inputs = vec![a];
        g.nodes[4].inputs = vec![e];
        assert_eq!(g.find_cycle(), Some(vec![NodeId(4)]));
        assert_eq!(g.validate(), Err(IrError::Cycle(vec!["n_e".into()])));
        // Misordered but acyclic: still an unknown tensor, not a cycle.
        g.nodes[4].inputs = vec![d];
        g.nodes.swap(3, 4);
        assert_eq!(g.find_cycle(), None);
        assert!(matches!(g.validate(), Err(IrError::UnknownTensor { .. })));
    }

    #[test]
    fn find_cycle_picks_the_shortest_cycle_through_the_lowest_node() {
        // 0 -> 1 -> 2 -> 0 and 0 -> 3 -> 4 -> 1: one component {0..4}.
        let edges = [(0, 1), (1, 2), (2, 0), (0, 3), (3, 4), (4, 1), (5, 5)];
        assert_eq!(find_cycle(6, edges), Some(vec![0, 1, 2]));
        assert_eq!(find_cycle(3, [(0, 1), (1, 2)]), None);
        assert_eq!(find_cycle(0, []), None);
    }
}
