//! Epilogue fusion: an activation that alone reads a Conv's or Gemm's output becomes that
//! op's epilogue ([`lowmem_ir::Activation`]), applied inside its kernel.
//!
//! The pre-activation then never becomes a tensor: one buffer and one pass over memory
//! fewer per fused pair, in the forward pass and, since the fused op's gradient reads only
//! its output (the activation's rule on the output, then the op's own rule), in the
//! training step built from it. Outputs are bitwise those of the unfused graph: the kernels
//! apply the same activation to the same values.
//!
//! A plain pass over the graph rather than an e-graph rule: the condition is about uses
//! (the pre-activation has one reader and is not a graph output), which egg's patterns do
//! not see, and there is one way to fuse each pair, so there is nothing to extract.

use lowmem_ir::{Activation, Graph, IrError, Node, TensorId};

/// What [`fuse_epilogues`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fused {
    /// Names of the producers that took an epilogue, with the activation node each absorbed.
    pub pairs: Vec<(String, String)>,
}

/// Fuses every `Conv`/`Gemm -> activation` pair whose intermediate is read by the activation
/// only and is not a graph output. Tensor names of everything that survives are kept (the
/// fused op writes the activation's output tensor), and so are node names; the removed
/// tensors are the pre-activations.
pub fn fuse_epilogues(g: &Graph) -> Result<(Graph, Fused), IrError> {
    let consumers = g.consumers();
    let producers = g.producers();
    let is_output = |t: TensorId| g.outputs.contains(&t);
    // absorbed[r]: activation node r is folded into its producer; epilogue[p]: p's new output.
    let mut absorbed = vec![false; g.nodes.len()];
    let mut epilogue: Vec<Option<(Activation, TensorId)>> = vec![None; g.nodes.len()];
    let mut fused = Fused::default();
    for (r, node) in g.nodes.iter().enumerate() {
        let Some(act) = Activation::of(&node.op) else {
            continue;
        };
        let (&[z], &[y]) = (&node.inputs[..], &node.outputs[..]) else {
            continue;
        };
        let Some(p) = producers[z.index()].map(|p| p.index()) else {
            continue;
        };
        let prod = &g.nodes[p];
        let fusable = matches!(prod.op, lowmem_ir::Op::Conv(_) | lowmem_ir::Op::Gemm(_))
            && prod.op.epilogue().is_none()
            && epilogue[p].is_none()
            && prod.outputs.len() == 1
            && consumers[z.index()].len() == 1
            && !is_output(z)
            && g.tensor(z).dtype == g.tensor(y).dtype
            && g.tensor(z).shape == g.tensor(y).shape;
        if fusable {
            absorbed[r] = true;
            epilogue[p] = Some((act, y));
            fused.pairs.push((prod.name.clone(), node.name.clone()));
        }
    }
    if fused.pairs.is_empty() {
        return Ok((g.clone(), fused));
    }
    // Rebuild without the pre-activations, tensors in their original order.
    let mut dropped = vec![false; g.tensors.len()];
    for (p, e) in epilogue.iter().enumerate() {
        if e.is_some() {
            dropped[g.nodes[p].outputs[0].index()] = true;
        }
    }
    let mut out = Graph::new(g.name.clone());
    let mut map: Vec<Option<TensorId>> = vec![None; g.tensors.len()];
    for (i, t) in g.tensors.iter().enumerate() {
        if dropped[i] {
            continue;
        }
        map[i] = Some(match &t.value {
            Some(v) => out.add_weight(t.name.clone(), t.shape.clone(), v.clone())?,
            None => out.add_activation(t.name.clone(), t.dtype, t.shape.clone())?,
        });
    }
    let m = |t: TensorId| map[t.index()].expect("a kept tensor");
    for (i, node) in g.nodes.iter().enumerate() {
        if absorbed[i] {
            continue;
        }
        let (op, outputs) = match epilogue[i] {
            Some((act, y)) => (node.op.with_epilogue(Some(act)), vec![m(y)]),
            None => (
                node.op.clone(),
                node.outputs.iter().map(|&t| m(t)).collect(),
            ),
        };
        out.nodes.push(Node {
            name: node.name.clone(),
            op,
            inputs: node.inputs.iter().map(|&t| m(t)).collect(),
            outputs,
        });
    }
    out.inputs = g.inputs.iter().map(|&t| m(t)).collect();
    out.set_outputs(g.outputs.iter().map(|&t| m(t)).collect());
    out.validate()?;
    Ok((out, fused))
}
