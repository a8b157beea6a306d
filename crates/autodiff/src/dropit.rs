//! DropIT (Chen et al., arXiv 2202.13808): a layer's weight gradient `dW = f(X, dY)` is
//! computed from the top-k of `|X|` instead of the dense `X`, so the forward pass keeps only
//! the k largest-magnitude values (f32) and their flat indices (i32) between the forward and
//! the backward pass. `dX` is exact: it needs only `W` and `dY`.
//!
//! Sites are the `Gemm`, `MatMul` and `Conv` nodes whose first input `X` is an f32
//! activation and whose second is not computed (a weight or carried parameter). One
//! [`Op::TopK`] follows `X`'s producer; each backward node of such a site that reads `X` reads
//! instead a dense [`Op::TopKScatter`] placed right before it (a short-lived tensor in the
//! plan). `k = max(1, round((1 - gamma) numel))`, one global top-k per tensor.
//!
//! The dense `X` can only go if nothing else in the backward pass reads it. The known trap is
//! ReLU, whose backward reads its output, the next layer's `X`: so ReLU's backward reads a
//! 1-bit mask instead ([`Op::ReluMask`], [`Op::ReluMaskGrad`]: exact). Dropout's backward
//! already regenerates its mask from (seed, step) and reads nothing. Where another backward
//! node still reads `X` (a BatchNorm or pooling backward, a residual's other branch), the site
//! is left dense and reported with that reader.

use std::collections::HashSet;

use lowmem_ir::{DType, Graph, Node, NodeId, Op, TensorId};

use crate::AutodiffError;
use crate::store::fresh;

/// One DropIT site (rewritten or not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropItSite {
    /// The layer (forward node).
    pub node: String,
    /// Its input `X`.
    pub tensor: String,
    /// Elements kept of `numel`.
    pub kept: usize,
    pub numel: usize,
    /// Bytes no longer held between the forward and the backward pass (0 when not rewritten).
    pub bytes_saved: u64,
    /// Why the site is left dense.
    pub why: Option<String>,
}

/// A ReLU whose backward now reads a bit mask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReluMaskSite {
    pub node: String,
    pub tensor: String,
    /// f32 bytes of the output less the mask's, when the mask frees the output (else 0).
    pub bytes_saved: u64,
}

/// What to insert: after forward node `after`, or before backward node `before`.
enum Insert {
    After(usize, Node),
    Before(usize, Node, Option<NodeId>),
}

/// Applies DropIT at `gamma` to a forward + backward graph (nodes `..backward_start` are the
/// forward pass). Updates `saved`, `backward_start` and `backward_of`.
pub(crate) fn dropit(
    g: &mut Graph,
    saved: &mut Vec<TensorId>,
    backward_start: &mut usize,
    backward_of: &mut Vec<Option<NodeId>>,
    gamma: f32,
) -> Result<(Vec<DropItSite>, Vec<ReluMaskSite>), AutodiffError> {
    if !(gamma > 0.0 && gamma < 1.0) {
        return Err(AutodiffError::Options(format!(
            "dropit={gamma}: the fraction dropped must be in (0, 1)"
        )));
    }
    let bs = *backward_start;
    let producers = g.producers();
    let consumers = g.consumers();
    let fwd_made = |t: TensorId| producers[t.index()].is_some_and(|p| p.index() < bs);
    let mut names: HashSet<String> = g.tensors.iter().map(|t| t.name.clone()).collect();
    let mut node_names: HashSet<String> = g.nodes.iter().map(|n| n.name.clone()).collect();
    let mut inserts: Vec<Insert> = Vec::new();
    // Backward node -> (input position, replacement).
    let mut replace: Vec<(usize, usize, TensorId)> = Vec::new();
    // Backward nodes whose op becomes ReluMaskGrad.
    let mut to_mask: Vec<usize> = Vec::new();

    // ReLU backward from bits.
    let mut relu_sites = Vec::new();
    let mut masked: Vec<(TensorId, TensorId)> = Vec::new();
    for r in bs..g.nodes.len() {
        let node = &g.nodes[r];
        if !matches!(node.op, Op::ReluGrad) {
            continue;
        }
        let y = node.inputs[1];
        if !fwd_made(y) || g.tensor(y).dtype != DType::F32 {
            continue;
        }
        let m = match masked.iter().find(|p| p.0 == y) {
            Some(p) => p.1,
            None => {
                let name = fresh(format!("{}.relu_mask", g.tensor(y).name), &mut names);
                let bytes = g.tensor(y).numel().div_ceil(8);
                let m = g.add_activation(name, DType::U8, vec![bytes])?;
                let p = producers[y.index()].expect("forward-made").index();
                inserts.push(Insert::After(
                    p,
                    Node {
                        name: fresh(format!("{}.mask", g.nodes[p].name), &mut node_names),
                        op: Op::ReluMask,
                        inputs: vec![y],
                        outputs: vec![m],
                    },
                ));
                masked.push((y, m));
                m
            }
        };
        to_mask.push(r);
        replace.push((r, 1, m));
    }

    // The layers and the backward nodes of each that read its X.
    // A weight, or SliceOut's window of one: not computed from the step's data.
    let weightlike = |mut t: TensorId| loop {
        match producers[t.index()] {
            None => return true,
            Some(p) if matches!(g.nodes[p.index()].op, Op::SliceWindow { .. }) => {
                t = g.nodes[p.index()].inputs[0]
            }
            Some(_) => return false,
        }
    };
    let site_node: Vec<bool> = g
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            i < bs
                && matches!(n.op, Op::Gemm(_) | Op::MatMul | Op::Conv(_))
                && n.inputs.len() >= 2
                && weightlike(n.inputs[1])
                && g.tensor(n.inputs[0]).dtype == DType::F32
        })
        .collect();
    let mut sites = Vec::new();
    let mut done: HashSet<TensorId> = HashSet::new();
    for f in 0..bs {
        if !site_node[f] {
            continue;
        }
        let node = &g.nodes[f];
        let x = node.inputs[0];
        // Backward readers of X other than the ReLU masks' replacements.
        let readers: Vec<usize> = consumers[x.index()]
            .iter()
            .map(|c| c.index())
            .filter(|&c| c >= bs && !to_mask.contains(&c))
            .collect();
        let own: Vec<usize> = readers
            .iter()
            .copied()
            .filter(|&r| backward_of.get(r).copied().flatten() == Some(NodeId(f as u32)))
            .collect();
        if own.is_empty() {
            // A frozen weight: the backward pass computes no dW here.
            continue;
        }
        let t = g.tensor(x);
        let numel = t.numel();
        let kept = (((1.0 - gamma as f64) * numel as f64).round() as usize).clamp(1, numel);
        let mut site = DropItSite {
            node: node.name.clone(),
            tensor: t.name.clone(),
            kept,
            numel,
            bytes_saved: 0,
            why: None,
        };
        if !fwd_made(x) {
            site.why = Some("X is a graph input, held for the whole step".into());
            sites.push(site);
            continue;
        }
        if numel > i32::MAX as usize {
            site.why = Some("X has 2^31 elements or more (indices are i32)".into());
            sites.push(site);
            continue;
        }
        // Every backward reader must be a weight-gradient reader of some site on X.
        let foreign = readers.iter().copied().find(|&r| {
            let of = backward_of.get(r).copied().flatten();
            !of.is_some_and(|o| site_node[o.index()] && g.nodes[o.index()].inputs[0] == x)
        });
        if let Some(r) = foreign {
            let of = backward_of.get(r).copied().flatten();
            site.why = Some(match of {
                Some(o) => format!(
                    "X is also read by the backward of '{}' ({})",
                    g.nodes[o.index()].name,
                    g.nodes[o.index()].op.name()
                ),
                None => format!(
                    "X is also read by '{}' ({})",
                    g.nodes[r].name,
                    g.nodes[r].op.name()
                ),
            });
            sites.push(site);
            continue;
        }
        if !done.insert(x) {
            // Compressed already for another layer reading the same X.
            site.why = Some("X is compressed once, at its first layer".into());
            sites.push(site);
            continue;
        }
        let vname = fresh(format!("{}.topk_values", t.name), &mut names);
        let iname = fresh(format!("{}.topk_indices", t.name), &mut names);
        let shape = t.shape.clone();
        let v = g.add_activation(vname, DType::F32, vec![kept])?;
        let i = g.add_activation(iname, DType::I32, vec![kept])?;
        let p = producers[x.index()].expect("forward-made").index();
        inserts.push(Insert::After(
            p,
            Node {
                name: fresh(format!("{}.topk", g.tensor(x).name), &mut node_names),
                op: Op::TopK { k: kept },
                inputs: vec![x],
                outputs: vec![v, i],
            },
        ));
        for &r in &readers {
            let dname = fresh(format!("{}.sparse", g.tensor(x).name), &mut names);
            let d = g.add_activation(dname, DType::F32, shape.clone())?;
            inserts.push(Insert::Before(
                r,
                Node {
                    name: fresh(format!("{}.scatter", g.tensor(x).name), &mut node_names),
                    op: Op::TopKScatter {
                        shape: shape.clone(),
                    },
                    inputs: vec![v, i],
                    outputs: vec![d],
                },
                backward_of.get(r).copied().flatten(),
            ));
            for (pos, &inp) in g.nodes[r].inputs.iter().enumerate() {
                if inp == x {
                    replace.push((r, pos, d));
                }
            }
        }
        site.bytes_saved = (numel as u64 * 4).saturating_sub(kept as u64 * 8);
        sites.push(site);
    }

    // Apply: replacements, op changes, then the inserted nodes in order.
    for &(r, pos, t) in &replace {
        g.nodes[r].inputs[pos] = t;
    }
    for &r in &to_mask {
        g.nodes[r].op = Op::ReluMaskGrad;
    }
    let n = g.nodes.len();
    let old = std::mem::take(&mut g.nodes);
    let mut after: Vec<Vec<Node>> = vec![Vec::new(); n];
    let mut before: Vec<Vec<(Node, Option<NodeId>)>> = vec![Vec::new(); n];
    for ins in inserts {
        match ins {
            Insert::After(p, node) => after[p].push(node),
            Insert::Before(r, node, of) => before[r].push((node, of)),
        }
    }
    let mut nodes = Vec::with_capacity(n);
    let mut new_index = vec![0usize; n];
    let mut of_old: Vec<Option<NodeId>> = Vec::with_capacity(n);
    for (i, node) in old.into_iter().enumerate() {
        if i == bs {
            *backward_start = nodes.len();
        }
        for (b, of) in before[i].drain(..) {
            nodes.push(b);
            of_old.push(of);
        }
        new_index[i] = nodes.len();
        nodes.push(node);
        of_old.push(backward_of.get(i).copied().flatten());
        for a in after[i].drain(..) {
            nodes.push(a);
            of_old.push(None);
        }
    }
    g.nodes = nodes;
    *backward_of = of_old
        .into_iter()
        .map(|o| o.map(|f| NodeId(new_index[f.index()] as u32)))
        .collect();

    // What the backward pass reads from the forward pass now.
    let bs = *backward_start;
    *saved = crate::builder::saved_of(g, bs);
    let producers = g.producers();
    let consumers = g.consumers();
    for (y, m) in &masked {
        let freed = !consumers[y.index()].iter().any(|c| c.index() >= bs);
        let p = producers[y.index()].expect("forward-made");
        relu_sites.push(ReluMaskSite {
            node: g.node(p).name.clone(),
            tensor: g.tensor(*y).name.clone(),
            bytes_saved: if freed {
                (g.tensor(*y).bytes() - g.tensor(*m).bytes()) as u64
            } else {
                0
            },
        });
    }
    g.validate()?;
    Ok((sites, relu_sites))
}
