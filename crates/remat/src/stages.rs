//! Cutting a forward graph into a chain of stages, and the [`Chain`] cost model of those stages.
//!
//! # Cut points
//!
//! The *primary input* is the first graph input (in `Graph::inputs` order) that `output`
//! depends on. A node is *on the main path* when it is needed for `output` and depends on the
//! primary input; every other needed node is a *side node* (it computes from weights and
//! secondary inputs only, e.g. a transformer's attention-mask preprocessing): side tensors are
//! treated like weights — they are not on paths, never cut, and live for the whole step.
//!
//! A tensor `t` is a *cut point* when every path from the primary input to `output` passes
//! through it. [`cut_points`] finds them in one topological sweep over the main-path nodes:
//! a tensor is *open* once produced while it still has an unvisited (distinct) main-path
//! consumer; a multi-use tensor stays open until its last consumer has run (a residual skip
//! keeps the block input open until the `Add`). After node `v` runs, its output `t` is a cut
//! iff `t` is then the only open tensor. (In any topological order, when `t` dominates the
//! output all of its ancestors have run and none of its descendants, and any edge from an
//! ancestor to a descendant would be a path avoiding `t`; so the open set is exactly `{t}`;
//! conversely every path crosses the open set.) The primary input and `output` are cuts.
//!
//! # Stages
//!
//! Consecutive cut points bound a *raw* stage. [`stages`] then merges every raw stage that
//! has no *heavy* node (`Conv`, `Gemm`, `MatMul`) into the previous stage (into the next one
//! for a leading light stage), so a `Conv -> BN -> Relu` or a residual block's trailing
//! `Add -> Relu` form one stage with their convolution. Side nodes join the earliest stage
//! that consumes their outputs. Every needed node is in exactly one stage; stages and the
//! nodes inside them are in topological (node) order.
//!
//! Where a model has few cut points the stages are simply fewer and larger: an Inception
//! module (branches joined by a `Concat`) is one stage; a DenseNet whose layers each
//! concatenate *all* earlier feature maps keeps them open, so a whole dense block would be
//! one stage (the zoo's densenet121 concatenates incrementally, `x_{k+1} = Concat(x_k,
//! f(x_k))`, so there each dense layer is a stage). Zoo counts: resnet50 18 (stem, 16
//! bottleneck blocks, classifier), inception_v1 13, densenet121 63.
//!
//! # Cost model ([`chain_of_step`], [`chain`])
//!
//! "Requires a gradient" follows autodiff: the parameters (a training step's parameter
//! inputs; for [`chain`] the trainable weights, [`Graph::trainable_weights`]) require one,
//! and so does every float output of a node with such an input.
//!
//! The backward of a stage is not modelled from the gradient rules: it is the set of the
//! step's real backward nodes whose `backward_of` (as `lowmem_autodiff::TrainingGraph::
//! backward_of`: the forward node whose gradient rule emitted them) is a node of the stage.
//! That includes the sums of a multi-use tensor's gradient parts, which autodiff emits with
//! the rule of the tensor's producer. [`chain_of_step`] takes a step's backward as it is;
//! [`chain_with`] and [`chain`] have `lowmem-autodiff` build one for the stages (loss: the
//! sum of the last stage's output).
//!
//! * `fwd[i]`: Σ [`Graph::node_flops`] of the stage's nodes.
//! * `bwd[i]`: Σ [`Graph::node_flops`] of the stage's backward nodes.
//! * `input_bytes[i]`: bytes of stage `i`'s input; `input_bytes[n]`: bytes of `output`.
//! * `saved_bytes[i]`: bytes of the set of tensors produced by stage `i`'s main-path nodes
//!   that the stage's backward nodes read ([`stage_backward_reads`]), plus the stage output
//!   (so `a_i >= x_{i+1}`). The stage input, weights, graph inputs and side tensors are
//!   not counted (the chain model holds `X_i` separately; the rest is live all along).
//! * `fwd_tmp[i]`: each main-path tensor the stage produces is live from its producer to its
//!   last consumer in the stage (the stage output: to the stage's end); at node `v` the
//!   transient is `workspace(v)` ([`Op::workspace_bytes`]) plus the bytes live at `v`.
//!   `plain` = max over `v` of that; `record` = the same without tensors of the record.
//!   `fwd_tmp = max(record, plain - x_{i+1})`, so both the recording forward
//!   (`a_i + fwd_tmp`) and the plain one (`x_{i+1} + fwd_tmp`) bound the real peak.
//!   No in-place execution is assumed.
//! * `bwd_tmp[i]`: gradients of the stage's internal tensors (produced in the stage, consumed
//!   in the stage, not the output, requiring a gradient): the gradient of `t` is live, in
//!   the reverse sweep, from the backward of its last consumer to that of its producer. At
//!   node `v` the transient is the largest [`Op::workspace_bytes`] of the backward nodes of
//!   `v` (im2col columns of `ConvBackwardData`/`ConvBackwardFilter`, `LayerNormGrad`'s
//!   statistics; they run one at a time) plus the live
//!   internal gradients; `bwd_tmp` is the maximum over `v`. Weight gradients (optimizer
//!   state) and the record being freed during the backward are not modelled.

use std::sync::Arc;

use lowmem_autodiff::{AutodiffError, Loss, Mode};
use lowmem_ir::{Graph, NodeId, Op, TensorData, TensorId};

use crate::{Chain, RematError, StageId};

/// A stage of a chain: the nodes between two cut points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stage {
    /// The stage's nodes, in topological order.
    pub nodes: Vec<NodeId>,
    /// The boundary tensor entering the stage (the primary graph input for stage 0).
    pub input: TensorId,
    /// The boundary tensor leaving the stage (`output` for the last stage).
    pub output: TensorId,
}

/// Which nodes are needed for `output` and which depend on the primary input.
struct Paths {
    primary: TensorId,
    /// Per node: needed for `output`.
    needed: Vec<bool>,
    /// Per tensor: depends on the primary input (through needed nodes).
    dep: Vec<bool>,
}

fn paths(g: &Graph, output: TensorId, primary: Option<TensorId>) -> Option<Paths> {
    let mut t_needed = vec![false; g.tensors.len()];
    t_needed[output.index()] = true;
    let mut needed = vec![false; g.nodes.len()];
    for (n, node) in g.nodes.iter().enumerate().rev() {
        if node.outputs.iter().any(|o| t_needed[o.index()]) {
            needed[n] = true;
            for i in &node.inputs {
                t_needed[i.index()] = true;
            }
        }
    }
    let primary = match primary {
        Some(p) if t_needed[p.index()] => p,
        Some(_) => return None,
        None => *g
            .inputs
            .iter()
            .find(|i| t_needed[i.index()] && g.tensor(**i).value.is_none())?,
    };
    let mut dep = vec![false; g.tensors.len()];
    dep[primary.index()] = true;
    for (n, node) in g.nodes.iter().enumerate() {
        if needed[n] && node.inputs.iter().any(|i| dep[i.index()]) {
            for o in &node.outputs {
                dep[o.index()] = true;
            }
        }
    }
    if primary == output || !dep[output.index()] {
        return None;
    }
    Some(Paths {
        primary,
        needed,
        dep,
    })
}

fn is_main(g: &Graph, p: &Paths, n: usize) -> bool {
    p.needed[n] && g.nodes[n].inputs.iter().any(|i| p.dep[i.index()])
}

/// The cut points of the forward graph towards `output` (see the module docs), in
/// topological order: the primary input first, `output` last. Empty when `output` depends on
/// no graph input or is one.
pub fn cut_points(g: &Graph, output: TensorId) -> Vec<TensorId> {
    match paths(g, output, None) {
        Some(p) => raw_cuts(g, &p, output).0,
        None => Vec::new(),
    }
}

/// The cut points and, per cut after the first, the index of the node producing it.
fn raw_cuts(g: &Graph, p: &Paths, output: TensorId) -> (Vec<TensorId>, Vec<usize>) {
    let mut remaining = vec![0u32; g.tensors.len()];
    for n in 0..g.nodes.len() {
        if is_main(g, p, n) {
            for t in distinct(&g.nodes[n].inputs) {
                remaining[t.index()] += 1;
            }
        }
    }
    let mut open = usize::from(remaining[p.primary.index()] > 0);
    let mut cuts = vec![p.primary];
    let mut at = Vec::new();
    for n in 0..g.nodes.len() {
        if !is_main(g, p, n) {
            continue;
        }
        let node = &g.nodes[n];
        for t in distinct(&node.inputs) {
            if p.dep[t.index()] {
                remaining[t.index()] -= 1;
                if remaining[t.index()] == 0 {
                    open -= 1;
                }
            }
        }
        let mut opened = None;
        for &o in &node.outputs {
            if o == output {
                cuts.push(o);
                at.push(n);
                return (cuts, at);
            }
            if remaining[o.index()] > 0 {
                open += 1;
                opened = Some(o);
            }
        }
        if open == 1
            && let Some(o) = opened
        {
            cuts.push(o);
            at.push(n);
        }
    }
    unreachable!("the output's producer is a main-path node")
}

fn distinct(ts: &[TensorId]) -> Vec<TensorId> {
    let mut v = ts.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

fn heavy(op: &Op) -> bool {
    matches!(op, Op::Conv(_) | Op::Gemm(_) | Op::MatMul)
}

/// Cuts the forward graph into stages towards `output` (see the module docs). Empty when
/// `output` depends on no graph input or is one.
pub fn stages(g: &Graph, output: TensorId) -> Vec<Stage> {
    stages_inner(g, output, None)
}

/// [`stages`] with an explicit primary input: in a training step, the data input (parameters
/// are graph inputs there too). Empty when `output` does not depend on `primary`.
pub fn stages_from(g: &Graph, primary: TensorId, output: TensorId) -> Vec<Stage> {
    stages_inner(g, output, Some(primary))
}

fn stages_inner(g: &Graph, output: TensorId, primary: Option<TensorId>) -> Vec<Stage> {
    let Some(p) = paths(g, output, primary) else {
        return Vec::new();
    };
    let (cuts, at) = raw_cuts(g, &p, output);
    // Raw stages: (first node, last node) ranges over the main nodes, merged when light.
    struct Raw {
        last: usize,
        input: TensorId,
        output: TensorId,
        heavy: bool,
    }
    let mut merged: Vec<Raw> = Vec::new();
    let mut start = 0;
    for (k, &end) in at.iter().enumerate() {
        let hv = (start..=end).any(|n| is_main(g, &p, n) && heavy(&g.nodes[n].op));
        let r = Raw {
            last: end,
            input: cuts[k],
            output: cuts[k + 1],
            heavy: hv,
        };
        match merged.last_mut() {
            Some(prev) if !hv => {
                prev.last = r.last;
                prev.output = r.output;
            }
            _ => merged.push(r),
        }
        start = end + 1;
    }
    if merged.len() > 1 && !merged[0].heavy {
        let first = merged.remove(0);
        merged[0].input = first.input;
    }
    // Assign nodes: main nodes by position, side nodes to their earliest consuming stage.
    let mut stage_of: Vec<Option<usize>> = vec![None; g.nodes.len()];
    let mut s = 0;
    for (n, slot) in stage_of.iter_mut().enumerate() {
        if is_main(g, &p, n) {
            while merged[s].last < n {
                s += 1;
            }
            *slot = Some(s);
        }
    }
    let consumers = g.consumers();
    for n in (0..g.nodes.len()).rev() {
        if p.needed[n] && !is_main(g, &p, n) {
            stage_of[n] = g.nodes[n]
                .outputs
                .iter()
                .flat_map(|o| &consumers[o.index()])
                .filter(|c| p.needed[c.index()])
                .map(|c| stage_of[c.index()].expect("needed nodes after a side node are staged"))
                .min();
            assert!(
                stage_of[n].is_some(),
                "a needed side node has a needed consumer"
            );
        }
    }
    // A node that keeps a stage's tensor in a compact form for the backward pass (`--store`'s
    // 16-bit Cast, DropIT's top-k, ReLU's bit mask) is not needed for the output but belongs
    // to the stage of what it stores: recomputing the stage recomputes it, and the stage's
    // record holds the compact copy.
    let producers = g.producers();
    for n in 0..g.nodes.len() {
        if stage_of[n].is_none() && g.nodes[n].op.is_saved_form() {
            let q = g.nodes[n].inputs.first().and_then(|i| producers[i.index()]);
            stage_of[n] = q.and_then(|q| stage_of[q.index()]);
        }
    }
    let mut out: Vec<Stage> = merged
        .iter()
        .map(|r| Stage {
            nodes: Vec::new(),
            input: r.input,
            output: r.output,
        })
        .collect();
    for (n, &s) in stage_of.iter().enumerate() {
        if let Some(s) = s {
            out[s].nodes.push(NodeId(n as u32));
        }
    }
    out
}

/// Per node of a graph with `nodes` nodes: the stage it belongs to, if any.
pub fn stage_of(stages: &[Stage], nodes: usize) -> Vec<Option<StageId>> {
    let mut of = vec![None; nodes];
    for (i, st) in stages.iter().enumerate() {
        let id = StageId(u32::try_from(i).expect("fewer than 2^32 stages"));
        for n in &st.nodes {
            of[n.index()] = Some(id);
        }
    }
    of
}

/// Per node of a step (`backward_of` has one entry per node): the stage it works for, its
/// own for a stage node, that of the forward node whose gradient rule emitted it for a
/// backward node; `None` for nodes tied to no stage (loss, optimizer).
pub fn works_for(stages: &[Stage], backward_of: &[Option<NodeId>]) -> Vec<Option<StageId>> {
    let of = stage_of(stages, backward_of.len());
    (0..backward_of.len())
        .map(|v| of[v].or_else(|| backward_of[v].and_then(|f| of[f.index()])))
        .collect()
}

/// The backward nodes of a step emitted for each node of `stages`: per node of `g`, the
/// nodes `u` with `backward_of[u]` that node (empty for nodes outside the stages).
fn backward_nodes(
    g: &Graph,
    backward_of: &[Option<NodeId>],
    stage_of: &[Option<StageId>],
) -> Vec<Vec<NodeId>> {
    let mut by = vec![Vec::new(); g.nodes.len()];
    for (u, f) in backward_of.iter().enumerate() {
        if let Some(f) = *f
            && stage_of[f.index()].is_some()
        {
            by[f.index()].push(NodeId(u as u32));
        }
    }
    by
}

/// Per stage: the forward tensors (outputs of stage nodes, of any stage) that the stage's
/// backward reads, i.e. the inputs of the backward nodes `u` of the step whose
/// `backward_of[u]` is a node of the stage; sorted, distinct. Their union over the stages is
/// the step's saved set (`lowmem_autodiff::TrainingGraph::saved`) restricted to tensors
/// produced by stage nodes. Errors when `backward_of` does not have one entry per node.
pub fn stage_backward_reads(
    g: &Graph,
    backward_of: &[Option<NodeId>],
    stages: &[Stage],
) -> Result<Vec<Vec<TensorId>>, RematError> {
    if backward_of.len() != g.nodes.len() {
        return Err(RematError::BackwardOfLength {
            entries: backward_of.len(),
            nodes: g.nodes.len(),
        });
    }
    let stage_of = stage_of(stages, g.nodes.len());
    let by = backward_nodes(g, backward_of, &stage_of);
    let producers = g.producers();
    Ok(stages
        .iter()
        .map(|st| {
            let mut reads: Vec<TensorId> = st
                .nodes
                .iter()
                .flat_map(|v| &by[v.index()])
                .flat_map(|&u| &g.node(u).inputs)
                .copied()
                .filter(|t| producers[t.index()].is_some_and(|q| stage_of[q.index()].is_some()))
                .collect();
            reads.sort_unstable();
            reads.dedup();
            reads
        })
        .collect())
}

/// The cost model of `stages` (from [`stages`]) of a forward graph as a [`Chain`], every
/// trainable weight ([`Graph::trainable_weights`]) requiring a gradient: [`chain_with`].
/// Panics if `stages` is empty.
pub fn chain(g: &Graph, stages: &[Stage]) -> Chain {
    chain_with(g, stages, &g.trainable_weights())
}

/// [`chain`] with the tensors that require a gradient given (in a training step the
/// parameters are state inputs, not weights). `g` is a forward graph or a whole training
/// step; the backward costs are those of the backward nodes that `lowmem-autodiff` emits
/// for the stages, with the sum of the last stage's output as the loss and `trainable` as
/// the weights differentiated (a training step's own backward nodes are not used: with a
/// step's `backward_of` at hand, [`chain_of_step`] costs its real backward directly and
/// builds nothing). Panics if `stages` is empty, or if autodiff has no gradient rule for
/// a stage node.
pub fn chain_with(g: &Graph, stages: &[Stage], trainable: &[TensorId]) -> Chain {
    assert!(!stages.is_empty(), "a chain needs at least one stage");
    let out = stages[stages.len() - 1].output;
    // The forward graph to differentiate: `g` towards `out`, `trainable` turned into weights
    // (their values are not read: only shapes matter to the cost model).
    let mut f = g.clone();
    f.outputs = vec![out];
    for &t in trainable {
        let tensor = &mut f.tensors[t.index()];
        if tensor.value.is_none() {
            tensor.value = Some(Arc::new(TensorData::zeros(tensor.dtype, tensor.numel())));
        }
    }
    let tensors = &f.tensors;
    f.inputs.retain(|i| tensors[i.index()].value.is_none());
    // The nodes autodiff replays (those `out` needs, in order) and the tensors it reaches.
    let producers = f.producers();
    let mut seen = vec![false; f.tensors.len()];
    let mut needed = vec![false; f.nodes.len()];
    let mut stack = vec![out];
    while let Some(t) = stack.pop() {
        if std::mem::replace(&mut seen[t.index()], true) {
            continue;
        }
        if let Some(n) = producers[t.index()] {
            needed[n.index()] = true;
            stack.extend(f.node(n).inputs.iter().copied());
        }
    }
    let wrt: Vec<TensorId> = trainable
        .iter()
        .copied()
        .filter(|&t| seen[t.index()] && f.tensor(t).dtype.is_float())
        .collect();
    let no_backward = || {
        chain_of_step(g, &vec![None; g.nodes.len()], stages, &[])
            .expect("stage costs form a valid chain")
    };
    if wrt.is_empty() {
        return no_backward();
    }
    let gg = match lowmem_autodiff::gradients(&f, out, Loss::Sum, &wrt, Mode::Inference) {
        Ok(gg) => gg,
        // No stage output depends on a weight being differentiated: no backward.
        Err(AutodiffError::Loss(_)) => return no_backward(),
        Err(e) => panic!("chain_with: differentiating the stages: {e}"),
    };
    // The replay emits the needed nodes first, in order, and keeps tensor names.
    let mut node_map = vec![None; f.nodes.len()];
    for (j, n) in (0..f.nodes.len()).filter(|&n| needed[n]).enumerate() {
        assert_eq!(
            gg.graph.nodes[j].name, f.nodes[n].name,
            "autodiff replays the forward nodes in order"
        );
        node_map[n] = Some(NodeId(j as u32));
    }
    let tmap = |t: TensorId| {
        gg.graph
            .tensor_id(&g.tensor(t).name)
            .expect("autodiff keeps tensor names")
    };
    let mapped: Vec<Stage> = stages
        .iter()
        .map(|s| Stage {
            nodes: s
                .nodes
                .iter()
                .map(|n| node_map[n.index()].expect("stage nodes are needed for the output"))
                .collect(),
            input: tmap(s.input),
            output: tmap(s.output),
        })
        .collect();
    let params: Vec<TensorId> = wrt.iter().map(|&t| tmap(t)).collect();
    chain_of_step(&gg.graph, &gg.backward_of, &mapped, &params)
        .expect("stage costs form a valid chain")
}

/// The cost model of `stages` of the training step `g` (see the module docs), costing each
/// stage's backward from the step's real backward nodes: `backward_of` (as
/// `lowmem_autodiff::TrainingGraph::backward_of`) gives, per node, the forward node whose
/// gradient rule emitted it. `params`: the tensors that require a gradient (the step's
/// parameter inputs). Errors when `stages` is empty or `backward_of` does not have one
/// entry per node.
pub fn chain_of_step(
    g: &Graph,
    backward_of: &[Option<NodeId>],
    stages: &[Stage],
    params: &[TensorId],
) -> Result<Chain, RematError> {
    stage_models(g, backward_of, stages, params).map(|(c, _)| c)
}

/// What the cost model knows of a stage's forward, for costing other records of it
/// ([`crate::inner`]).
pub(crate) struct StageModel {
    /// The full record: the saved tensors the stage produces, and its output; sorted.
    pub record: Vec<TensorId>,
    /// The main-path tensors the stage produces: (producer position, last position live,
    /// bytes, tensor), positions in `Stage::nodes`.
    pub fwd_live: Vec<(usize, usize, u64, TensorId)>,
    /// Workspace bytes of each node of the stage.
    pub ws_f: Vec<u64>,
    /// Per node of the stage, the largest workspace of its backward nodes.
    pub ws_b: Vec<u64>,
    /// Internal gradients: (producer position, last consumer position, bytes); live in the
    /// reverse sweep while it is between the two.
    pub grads: Vec<(usize, usize, u64)>,
    /// The step's backward nodes emitted for the stage's nodes, in node order, with the
    /// position of the node they were emitted for.
    pub backward: Vec<(NodeId, usize)>,
}

impl StageModel {
    /// Bytes of internal gradients live while the backward of position `q` runs.
    pub fn grads_live(&self, q: usize) -> u64 {
        self.grads
            .iter()
            .filter(|l| l.0 <= q && q <= l.1)
            .map(|l| l.2)
            .sum()
    }

    /// The forward temporary (see the module docs) when the record is what `kept` holds.
    pub fn fwd_tmp(&self, output_bytes: u64, kept: &dyn Fn(TensorId) -> bool) -> u64 {
        let (mut plain, mut rec) = (0u64, 0u64);
        for p in 0..self.ws_f.len() {
            let live = self.fwd_live.iter().filter(|l| l.0 <= p && p <= l.1);
            let all: u64 = live.clone().map(|l| l.2).sum();
            let non_rec: u64 = live.filter(|l| !kept(l.3)).map(|l| l.2).sum();
            plain = plain.max(self.ws_f[p] + all);
            rec = rec.max(self.ws_f[p] + non_rec);
        }
        rec.max(plain.saturating_sub(output_bytes))
    }
}

/// [`chain_of_step`] and each stage's [`StageModel`].
pub(crate) fn stage_models(
    g: &Graph,
    backward_of: &[Option<NodeId>],
    stages: &[Stage],
    params: &[TensorId],
) -> Result<(Chain, Vec<StageModel>), RematError> {
    if stages.is_empty() {
        return Err(RematError::NoStages);
    }
    let reads = stage_backward_reads(g, backward_of, stages)?;
    let nt = g.tensors.len();
    let bytes = |t: TensorId| g.tensor(t).bytes() as u64;
    let shapes =
        |ts: &[TensorId]| -> Vec<&[usize]> { ts.iter().map(|&t| &g.tensor(t).shape[..]).collect() };
    // Requires-gradient flags and main-path (depends on the first stage's input) flags.
    let mut requires = vec![false; nt];
    for w in params {
        requires[w.index()] = true;
    }
    let stage_of = stage_of(stages, g.nodes.len());
    let mut dep = vec![false; nt];
    dep[stages[0].input.index()] = true;
    for (n, node) in g.nodes.iter().enumerate() {
        if stage_of[n].is_none() {
            continue;
        }
        let req = node.inputs.iter().any(|i| requires[i.index()]);
        let d = node.inputs.iter().any(|i| dep[i.index()]);
        for &o in &node.outputs {
            requires[o.index()] = req && g.tensor(o).dtype.is_float();
            dep[o.index()] = d;
        }
    }
    let by = backward_nodes(g, backward_of, &stage_of);
    let consumers = g.consumers();
    let producers = g.producers();
    let n = stages.len();
    let mut c = Chain {
        fwd: vec![0; n],
        bwd: vec![0; n],
        input_bytes: stages.iter().map(|s| bytes(s.input)).collect(),
        saved_bytes: vec![0; n],
        fwd_tmp: vec![0; n],
        bwd_tmp: vec![0; n],
        options: vec![Vec::new(); n],
    };
    c.input_bytes.push(bytes(stages[n - 1].output));
    let mut models = Vec::with_capacity(n);
    for (i, st) in stages.iter().enumerate() {
        let sid = StageId(i as u32);
        let pos = |node: NodeId| st.nodes.binary_search(&node).ok();
        let mut ws_f = Vec::with_capacity(st.nodes.len());
        let mut ws_b = Vec::with_capacity(st.nodes.len());
        for &id in &st.nodes {
            let node = g.node(id);
            c.fwd[i] = c.fwd[i].saturating_add(g.node_flops(node));
            ws_f.push(
                node.op
                    .workspace_bytes(&shapes(&node.inputs), &shapes(&node.outputs))
                    as u64,
            );
            // The backward nodes of `id` run one at a time: the largest workspace counts.
            let mut ws = 0u64;
            for &u in &by[id.index()] {
                let b = g.node(u);
                c.bwd[i] = c.bwd[i].saturating_add(g.node_flops(b));
                ws = ws.max(b.op.workspace_bytes(&shapes(&b.inputs), &shapes(&b.outputs)) as u64);
            }
            ws_b.push(ws);
        }
        // The record: what the stage's backward reads of the main-path tensors the stage
        // produces, and the output.
        let mut record: Vec<TensorId> = reads[i]
            .iter()
            .copied()
            .filter(|&t| {
                producers[t.index()].is_some_and(|q| stage_of[q.index()] == Some(sid))
                    && dep[t.index()]
                    && t != st.input
            })
            .collect();
        record.push(st.output);
        record.sort_unstable();
        record.dedup();
        c.saved_bytes[i] = record.iter().map(|&t| bytes(t)).sum();
        // Live intervals (positions in the stage) of the main tensors the stage produces.
        let last = st.nodes.len().saturating_sub(1);
        let mut fwd_live = Vec::new(); // (from, to, bytes, tensor)
        let mut grads = Vec::new(); // (from, to, bytes)
        for (p, &id) in st.nodes.iter().enumerate() {
            for &o in &g.node(id).outputs {
                if !dep[o.index()] {
                    continue;
                }
                let use_end = consumers[o.index()]
                    .iter()
                    .filter_map(|&c| pos(c))
                    .max()
                    .unwrap_or(p);
                let to = if o == st.output { last } else { use_end };
                fwd_live.push((p, to, bytes(o), o));
                if o != st.output && use_end > p && requires[o.index()] {
                    grads.push((p, use_end, bytes(o)));
                }
            }
        }
        let mut backward: Vec<(NodeId, usize)> = st
            .nodes
            .iter()
            .enumerate()
            .flat_map(|(p, v)| by[v.index()].iter().map(move |&u| (u, p)))
            .collect();
        backward.sort_unstable();
        let model = StageModel {
            record,
            fwd_live,
            ws_f,
            ws_b,
            grads,
            backward,
        };
        c.bwd_tmp[i] = (0..st.nodes.len())
            .map(|p| model.ws_b[p] + model.grads_live(p))
            .max()
            .unwrap_or(0);
        c.fwd_tmp[i] = model.fwd_tmp(c.input_bytes[i + 1], &|t| {
            model.record.binary_search(&t).is_ok()
        });
        models.push(model);
    }
    c.validate()?;
    Ok((c, models))
}
