//! Rewriting the batch dimension of a graph.

use crate::{Graph, IrError, Op};

impl Graph {
    /// The batch size: dimension 0 of the first graph input (`None` without inputs or for a
    /// scalar input), the dimension [`Graph::with_batch`] rewrites.
    pub fn batch(&self) -> Option<usize> {
        self.inputs
            .first()
            .and_then(|&i| self.tensor(i).shape.first().copied())
    }

    /// A copy of the graph with batch size `n`: dimension 0 of every graph input, and of every
    /// Reshape target that carries it, is set to `n`. The batch is tracked from the inputs
    /// through the graph; a node that moves or mixes it (a reshape folding it into another
    /// dimension, a concat or reduction over it, a transpose moving it) is an error naming the
    /// node, as are weights whose shape would have to follow the batch.
    pub fn with_batch(&self, n: usize) -> Result<Graph, IrError> {
        let err = |msg: String| IrError::Batch { batch: n, msg };
        if n == 0 {
            return Err(err("the batch must be positive".into()));
        }
        let Some(&first) = self.inputs.first() else {
            return Err(err("the graph has no inputs".into()));
        };
        let old = *self
            .tensor(first)
            .shape
            .first()
            .ok_or_else(|| err("graph inputs are scalars".into()))?;
        let mut g = self.clone();
        // carries[t]: tensor t has the batch as dimension 0.
        let mut carries = vec![false; g.tensors.len()];
        for &i in &g.inputs {
            let t = &mut g.tensors[i.index()];
            if t.shape.first() != Some(&old) {
                return Err(err(format!(
                    "graph input '{}' has shape {:?}, whose first dimension is not the batch {old}",
                    t.name, t.shape
                )));
            }
            t.shape[0] = n;
            carries[i.index()] = true;
        }
        let producers = self.producers();
        for node in &mut g.nodes {
            let ins: Vec<bool> = node.inputs.iter().map(|t| carries[t.index()]).collect();
            if !ins.iter().any(|&c| c) {
                continue;
            }
            let (node_name, op_name) = (node.name.clone(), node.op.name());
            let moved = |why: &str| err(format!("node '{node_name}' ({op_name}) {why}"));
            let keeps = match &mut node.op {
                Op::Reshape { shape, allowzero } => match shape.first().copied() {
                    Some(0) if !*allowzero => true,
                    Some(-1) if shape[1..].iter().all(|&d| d > 0 || (d == 0 && !*allowzero)) => {
                        true
                    }
                    Some(d) if d == old as i64 => {
                        shape[0] = n as i64;
                        true
                    }
                    _ => {
                        return Err(moved(&format!(
                            "reshapes to {shape:?}, which folds the batch into another dimension"
                        )));
                    }
                },
                Op::Transpose { perm } => match perm {
                    Some(p) if p.first() == Some(&0) => true,
                    _ => return Err(moved("moves the batch dimension")),
                },
                Op::Concat { axis } | Op::Flatten { axis }
                    if *axis == 0 || *axis == -(self.tensor(node.inputs[0]).shape.len() as i64) =>
                {
                    return Err(moved("works across the batch dimension"));
                }
                Op::ReduceMean(a) | Op::ReduceSum(a) => match &a.axes {
                    Some(ax)
                        if !ax.iter().any(|&x| {
                            x == 0 || x == -(self.tensor(node.inputs[0]).shape.len() as i64)
                        }) =>
                    {
                        true
                    }
                    _ => return Err(moved("reduces over the batch dimension")),
                },
                Op::Squeeze { axes } => match axes {
                    Some(ax) if !ax.contains(&0) => true,
                    _ => return Err(moved("squeezes the batch dimension")),
                },
                Op::Unsqueeze { axes } if axes.contains(&0) => {
                    return Err(moved("inserts a dimension before the batch"));
                }
                Op::MatMul | Op::Gemm(_) if !ins[0] => {
                    return Err(moved("takes the batch in its second operand"));
                }
                Op::Gemm(a) if a.trans_a => return Err(moved("transposes the batch dimension")),
                _ => true,
            };
            // A batch-carrying input broadcast against a weight or other tensor of full rank
            // whose dimension 0 is the old batch would need that tensor rewritten too. Only
            // broadcasting operands count: a Conv or BatchNorm weight whose first dimension
            // happens to equal the batch is not batched.
            let broadcasts = |k: usize| match &node.op {
                op if op.is_binary_elementwise() || matches!(op, Op::Sum) => true,
                Op::Gemm(_) => k == 2,
                Op::MatMul => self.tensors[node.inputs[k].index()].shape.len() >= 3,
                _ => false,
            };
            for (k, &t) in node.inputs.iter().enumerate() {
                let tt = &self.tensors[t.index()];
                if !ins[k]
                    && broadcasts(k)
                    && producers[t.index()].is_none()
                    && tt.value.is_some()
                    && old != 1
                    && tt.shape.first() == Some(&old)
                    && tt.shape.len() == self.tensor(node.outputs[0]).shape.len()
                {
                    return Err(moved(&format!(
                        "combines the batch with weight '{}' of shape {:?}",
                        tt.name, tt.shape
                    )));
                }
            }
            if keeps {
                for &o in &node.outputs {
                    carries[o.index()] = true;
                }
            }
        }
        g.reinfer().map_err(|e| err(e.to_string()))?;
        for &o in &g.outputs {
            let t = g.tensor(o);
            if !carries[o.index()] && t.value.is_none() {
                return Err(err(format!(
                    "graph output '{}' does not carry the batch",
                    t.name
                )));
            }
        }
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use crate::{DType, Graph, Op, TensorData};

    fn net(reshape: Vec<i64>) -> Graph {
        let mut g = Graph::new("b");
        let x = g.add_input("x", DType::F32, vec![1, 2, 3]).unwrap();
        let w = g
            .add_weight("w", vec![6, 4], TensorData::F32(vec![0.0; 24]))
            .unwrap();
        let r = g
            .add_node(
                "r",
                Op::Reshape {
                    shape: reshape,
                    allowzero: false,
                },
                &[x],
                &["r"],
            )
            .unwrap();
        let y = g.add_node("mm", Op::MatMul, &[r[0], w], &["y"]).unwrap();
        g.set_outputs(y);
        g
    }

    #[test]
    fn rewrites_inputs_and_batch_carrying_reshapes() {
        for target in [vec![1, 6], vec![-1, 6], vec![0, -1]] {
            let g = net(target.clone()).with_batch(4).unwrap();
            assert_eq!(g.tensor(g.outputs[0]).shape, vec![4, 4], "{target:?}");
        }
    }

    #[test]
    fn reshapes_that_fold_the_batch_are_refused_by_name() {
        let mut g = Graph::new("b");
        let x = g.add_input("x", DType::F32, vec![1, 2, 3]).unwrap();
        let r = g
            .add_node(
                "flat",
                Op::Reshape {
                    shape: vec![6],
                    allowzero: false,
                },
                &[x],
                &["r"],
            )
            .unwrap();
        g.set_outputs(r);
        let e = g.with_batch(4).unwrap_err().to_string();
        assert!(e.contains("node 'flat' (Reshape)"), "{e}");
    }
}
