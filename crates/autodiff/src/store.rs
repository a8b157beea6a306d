//! Compressed saved activations (Sohoni et al., "Low-Memory Neural Network Training"): every
//! f32 activation the backward pass reads is kept in 16 bits between its forward use and
//! its backward use. Compute stays f32: a Cast to f16/bf16 follows the producer in the
//! forward pass (the f32 tensor then dies after its last forward reader), and a Cast back
//! to f32 feeds the backward readers. Both casts are ordinary planned nodes and tensors, so
//! the plan shows the saving in bytes.

use std::collections::HashSet;

use lowmem_ir::{DType, Graph, Node, NodeId, Op, TensorId, TensorKind};

use crate::AutodiffError;

/// One activation stored in 16 bits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreSite {
    /// The activation (its f32 name).
    pub tensor: String,
    /// The forward node producing it.
    pub node: String,
    pub dtype: DType,
    /// Bytes no longer held between the forward and the backward use.
    pub bytes_saved: u64,
}

/// A name starting with `base` that is not in `taken` (which then holds it).
pub(crate) fn fresh(base: String, taken: &mut HashSet<String>) -> String {
    let mut name = base.clone();
    let mut k = 1;
    while !taken.insert(name.clone()) {
        name = format!("{base}.{k}");
        k += 1;
    }
    name
}

/// Rewrites a forward + backward graph (`nodes[..backward_start]` forward) so that each
/// f32 activation of rank >= 2 in `saved` crosses to the backward pass as `to`. Updates
/// `saved`, `backward_start` and `backward_of` (node indices shift).
pub(crate) fn store_saved(
    g: &mut Graph,
    saved: &mut [TensorId],
    backward_start: &mut usize,
    backward_of: &mut Vec<Option<NodeId>>,
    to: DType,
) -> Result<Vec<StoreSite>, AutodiffError> {
    if !matches!(to, DType::F16 | DType::BF16) {
        return Err(AutodiffError::Options(format!(
            "saved activations are stored as f16 or bf16, not {to}"
        )));
    }
    let n = g.nodes.len();
    let bs = *backward_start;
    let producers = g.producers();
    let consumers = g.consumers();
    // The activations to store, in `saved` order.
    let sites: Vec<TensorId> = saved
        .iter()
        .copied()
        .filter(|&s| {
            let t = g.tensor(s);
            t.dtype == DType::F32
                && t.shape.len() >= 2
                && g.kind(s) == TensorKind::Activation
                && producers[s.index()].is_some_and(|p| p.index() < bs)
                && consumers[s.index()].iter().any(|c| c.index() >= bs)
        })
        .collect();
    if sites.is_empty() {
        return Ok(Vec::new());
    }
    // Tensor and node names are separate namespaces.
    let mut names: HashSet<String> = g.tensors.iter().map(|t| t.name.clone()).collect();
    let mut node_names: HashSet<String> = g.nodes.iter().map(|n| n.name.clone()).collect();
    let suffix = if to == DType::F16 { "f16" } else { "bf16" };
    // Per site: (activation, 16-bit copy, restored f32).
    let mut pairs = Vec::with_capacity(sites.len());
    let mut out_sites = Vec::with_capacity(sites.len());
    for &s in &sites {
        let (name, shape) = (g.tensor(s).name.clone(), g.tensor(s).shape.clone());
        let lo_name = fresh(format!("{name}.{suffix}"), &mut names);
        let hi_name = fresh(format!("{name}.restored"), &mut names);
        let lo = g.add_activation(lo_name, to, shape.clone())?;
        let hi = g.add_activation(hi_name, DType::F32, shape)?;
        let producer = producers[s.index()].expect("filtered on a producer");
        out_sites.push(StoreSite {
            tensor: name,
            node: g.node(producer).name.clone(),
            dtype: to,
            bytes_saved: g.tensor(s).numel() as u64 * (4 - to.size()) as u64,
        });
        pairs.push((s, lo, hi));
    }
    let old = std::mem::take(&mut g.nodes);
    let mut nodes: Vec<Node> = Vec::with_capacity(n + 2 * pairs.len());
    // Old index -> new index; and per new node, its backward_of in old indices.
    let mut new_index = vec![0usize; n];
    let mut of_old: Vec<Option<NodeId>> = Vec::with_capacity(n + 2 * pairs.len());
    let restored = |t: TensorId| pairs.iter().find(|p| p.0 == t).map(|p| p.2);
    let mut restored_yet = vec![false; pairs.len()];
    for (i, mut node) in old.into_iter().enumerate() {
        if i == bs {
            *backward_start = nodes.len();
        }
        if i >= bs {
            // Each restore right before the first backward node that reads it, so the f32
            // copy lives no longer than the original backward use needs.
            for (k, &(s, lo, hi)) in pairs.iter().enumerate() {
                if restored_yet[k] || !node.inputs.contains(&s) {
                    continue;
                }
                restored_yet[k] = true;
                of_old.push(backward_of.get(i).copied().flatten());
                nodes.push(Node {
                    name: fresh(format!("{}.restore", g.tensor(s).name), &mut node_names),
                    op: Op::Cast { to: DType::F32 },
                    inputs: vec![lo],
                    outputs: vec![hi],
                });
            }
        }
        if i >= bs {
            for t in node.inputs.iter_mut() {
                if let Some(h) = restored(*t) {
                    *t = h;
                }
            }
        }
        new_index[i] = nodes.len();
        of_old.push(backward_of.get(i).copied().flatten());
        let produced: Vec<(TensorId, TensorId)> = pairs
            .iter()
            .filter(|p| i < bs && node.outputs.contains(&p.0))
            .map(|p| (p.0, p.1))
            .collect();
        nodes.push(node);
        for (s, lo) in produced {
            of_old.push(None);
            nodes.push(Node {
                name: fresh(format!("{}.store", g.tensor(s).name), &mut node_names),
                op: Op::Cast { to },
                inputs: vec![s],
                outputs: vec![lo],
            });
        }
    }
    g.nodes = nodes;
    *backward_of = of_old
        .into_iter()
        .map(|o| o.map(|f| NodeId(new_index[f.index()] as u32)))
        .collect();
    for s in saved.iter_mut() {
        if let Some(p) = pairs.iter().find(|p| p.0 == *s) {
            *s = p.1;
        }
    }
    g.validate()?;
    Ok(out_sites)
}
