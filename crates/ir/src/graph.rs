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
        let shapes = |ts: &[TensorId]| -> Vec<&[usize]> {
            ts.iter().map(|&t| &self.tensor(t).shape[..]).collect()
        };
        n.op.flops(&shapes(&n.inputs), &shapes(&n.outputs))
    }
}
