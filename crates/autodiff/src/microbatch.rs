//! Micro-batching (Sohoni et al., arXiv 1904.10631): one static step runs `K` micro-batches
//! of `B / K` examples one after the other, each forward, loss and backward pass in turn,
//! summing the weight gradients, and then one optimizer update.
//!
//! The step is built for one micro-batch (the *body*: forward, loss and backward at batch
//! `B / K`, with every other rewrite applied) and then unrolled `K` times in program order:
//! copy `m` reads rows `[m B/K, (m+1) B/K)` of each data input and of the labels (a
//! [`Op::Slice`]), shares the weights, the step number and the constants, and adds its
//! gradients to the running sums. The loss seed of a mean loss is `1 / K`, so the sums are
//! the full batch's gradients; the reported loss is the mean of the micro-batch losses.
//!
//! - BatchNorm normalises each micro-batch with its own statistics (as data-parallel
//!   training without synchronised BatchNorm does), and the running statistics are updated
//!   once per micro-batch, in order: copy `m` reads what copy `m - 1` wrote.
//! - Dropout draws a distinct mask per micro-batch (its seed is mixed with `m`); SliceOut's
//!   window is the step's, the same in every micro-batch (each copy gathers its own weight
//!   windows, which then live only while that micro-batch runs).

use std::collections::HashMap;

use lowmem_ir::{Graph, NodeId, Op, TensorId};

use crate::AutodiffError;

/// A body graph and the roles of its tensors.
pub(crate) struct Body {
    pub g: Graph,
    pub loss: TensorId,
    pub labels: Option<TensorId>,
    /// Per-example inputs (sliced per micro-batch).
    pub data: Vec<TensorId>,
    /// (weight or state input, its gradient).
    pub grads: Vec<(TensorId, TensorId)>,
    /// (running statistic input, its updated output), chained across micro-batches.
    pub chained: Vec<(TensorId, TensorId)>,
    /// Per node: part of the forward pass or loss.
    pub forward: Vec<bool>,
    pub backward_of: Vec<Option<NodeId>>,
}

/// The unrolled step.
pub(crate) struct Unrolled {
    pub g: Graph,
    /// The mean (or sum) of the micro-batch losses.
    pub loss: TensorId,
    pub labels: Option<TensorId>,
    pub data: Vec<TensorId>,
    /// (shared input, summed gradient), in the body's order.
    pub grads: Vec<(TensorId, TensorId)>,
    /// (running statistic input, last micro-batch's output).
    pub chained: Vec<(TensorId, TensorId)>,
    pub backward_of: Vec<Option<NodeId>>,
    /// Per node: part of a forward pass or loss (for the FLOP split).
    pub forward: Vec<bool>,
    /// Per gradient: micro-batch 0's gradient and each running sum after it, in order (each
    /// sum can overwrite the one before: one buffer per gradient).
    pub chains: Vec<Vec<TensorId>>,
}

/// Unrolls `body` `k` times; `mean`: the loss is a mean over examples (the reported loss is
/// then the mean of the micro-batch losses, else their sum).
pub(crate) fn unroll(body: &Body, k: usize, mean: bool) -> Result<Unrolled, AutodiffError> {
    let b = &body.g;
    let mut g = Graph::new(b.name.clone());
    let mut shared: HashMap<TensorId, TensorId> = HashMap::new();
    // Full-batch inputs for the sliced ones, shared inputs and constants for the rest.
    let sliced: Vec<TensorId> = body.data.iter().copied().chain(body.labels).collect();
    let mut full: HashMap<TensorId, TensorId> = HashMap::new();
    for &i in &b.inputs {
        let t = b.tensor(i);
        if sliced.contains(&i) {
            let mut shape = t.shape.clone();
            shape[0] = shape[0].checked_mul(k).ok_or_else(|| {
                AutodiffError::Options(format!("the batch of '{}' overflows", t.name))
            })?;
            full.insert(i, g.add_input(t.name.clone(), t.dtype, shape)?);
        } else {
            shared.insert(i, g.add_input(t.name.clone(), t.dtype, t.shape.clone())?);
        }
    }
    for w in b.weights() {
        let t = b.tensor(w);
        let v = t.value.clone().expect("weights have values");
        shared.insert(w, g.add_weight(t.name.clone(), t.shape.clone(), v)?);
    }
    let rows = |i: TensorId| b.tensor(i).shape[0];
    let mut backward_of = Vec::new();
    let mut forward = Vec::new();
    let mut sums: Vec<Option<TensorId>> = vec![None; body.grads.len()];
    let mut chains: Vec<Vec<TensorId>> = vec![Vec::new(); body.grads.len()];
    let mut losses = Vec::with_capacity(k);
    let mut prev: HashMap<TensorId, TensorId> = HashMap::new();
    let suffix = |name: &str, m: usize| {
        if m == 0 {
            name.to_string()
        } else {
            format!("{name}.mb{m}")
        }
    };
    for m in 0..k {
        let mut map: HashMap<TensorId, TensorId> = shared.clone();
        for (&c_in, &out) in &prev {
            map.insert(c_in, out);
        }
        for &i in &sliced {
            let n = rows(i);
            let name = format!("{}.mb{m}", b.tensor(i).name);
            let op = Op::Slice {
                axis: 0,
                start: m * n,
                end: (m + 1) * n,
            };
            let ids = g.add_node(name.clone(), op, &[full[&i]], &[name.as_str()])?;
            map.insert(i, ids[0]);
            backward_of.push(None);
            forward.push(true);
        }
        // Body node -> its copy's node index (forward nodes precede their backward).
        let mut at = vec![0usize; b.nodes.len()];
        // Body gradient tensor -> its position in `body.grads`.
        let grad_of: HashMap<TensorId, usize> = body
            .grads
            .iter()
            .enumerate()
            .map(|(j, &(_, gr))| (gr, j))
            .collect();
        for (v, node) in b.nodes.iter().enumerate() {
            let ins: Vec<TensorId> = node.inputs.iter().map(|i| map[i]).collect();
            let outs: Vec<String> = node
                .outputs
                .iter()
                .map(|&o| suffix(&b.tensor(o).name, m))
                .collect();
            let outs: Vec<&str> = outs.iter().map(String::as_str).collect();
            let mix = (m as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
            let op = match &node.op {
                Op::DropoutTrain { ratio, seed } => Op::DropoutTrain {
                    ratio: *ratio,
                    seed: seed ^ mix,
                },
                Op::DropoutGrad { ratio, seed } => Op::DropoutGrad {
                    ratio: *ratio,
                    seed: seed ^ mix,
                },
                op => op.clone(),
            };
            at[v] = g.nodes.len();
            let ids = g.add_node(suffix(&node.name, m), op, &ins, &outs)?;
            for (&o, &id) in node.outputs.iter().zip(&ids) {
                map.insert(o, id);
            }
            backward_of.push(
                body.backward_of
                    .get(v)
                    .copied()
                    .flatten()
                    .map(|f| NodeId(at[f.index()] as u32)),
            );
            forward.push(body.forward[v]);
            // Each gradient joins its running sum as soon as it exists, so a micro-batch's
            // gradients are never all live at once.
            for &o in &node.outputs {
                let Some(&j) = grad_of.get(&o) else { continue };
                let gm = map[&o];
                sums[j] = Some(match sums[j] {
                    None => {
                        chains[j].push(gm);
                        gm
                    }
                    Some(acc) => {
                        let name = format!("{}.sum{m}", b.tensor(o).name);
                        let ids =
                            g.add_node(name.clone(), Op::Add, &[acc, gm], &[name.as_str()])?;
                        backward_of.push(None);
                        forward.push(false);
                        chains[j].push(ids[0]);
                        ids[0]
                    }
                });
            }
        }
        losses.push(map[&body.loss]);
        // Gradients that are not computed (a weight the loss does not read: a constant).
        for (j, &(_, gr)) in body.grads.iter().enumerate() {
            if sums[j].is_none() {
                sums[j] = Some(map[&gr]);
            }
        }
        prev = body
            .chained
            .iter()
            .map(|&(c_in, c_out)| (c_in, map[&c_out]))
            .collect();
    }
    let total = {
        let name = "loss.total".to_string();
        let ids = g.add_node(name.clone(), Op::Sum, &losses, &[name.as_str()])?;
        backward_of.push(None);
        forward.push(true);
        ids[0]
    };
    let loss = if mean {
        let name = "loss.mean".to_string();
        let ids = g.add_node(
            name.clone(),
            Op::Scale {
                alpha: 1.0 / k as f32,
            },
            &[total],
            &[name.as_str()],
        )?;
        backward_of.push(None);
        forward.push(true);
        ids[0]
    } else {
        total
    };
    let grads = body
        .grads
        .iter()
        .zip(sums)
        .map(|(&(w, _), s)| (shared[&w], s.expect("k >= 1")))
        .collect();
    let chained = body
        .chained
        .iter()
        .map(|&(c_in, _)| (shared[&c_in], prev[&c_in]))
        .collect();
    Ok(Unrolled {
        loss,
        labels: body.labels.map(|l| full[&l]),
        data: body.data.iter().map(|d| full[d]).collect(),
        grads,
        chained,
        backward_of,
        forward,
        chains,
        g,
    })
}
