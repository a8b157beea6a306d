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
//! # Cost model ([`chain`])
//!
//! "Requires a gradient" follows autodiff: the trainable weights
//! ([`Graph::trainable_weights`]) require one, and so does every float output of a node
//! with such an input. A node's backward runs iff one of its inputs requires a gradient.
//!
//! * `fwd[i]`: Σ [`Op::flops`] of the stage's nodes.
//! * `bwd[i]`: Σ over nodes of [`backward_flops`]: the [`Op::flops`] of the backward ops
//!   that `lowmem-autodiff`'s rules emit for the inputs that need a gradient (e.g. a `Conv`
//!   costs its forward multiply-adds once for dX and once for dW, plus dY's element count
//!   for the bias; a `Relu` costs one per element). Reshapes and transposes of the MatMul
//!   rule and broadcast reductions of MatMul are not counted.
//! * `input_bytes[i]`: bytes of stage `i`'s input; `input_bytes[n]`: bytes of `output`.
//! * `saved_bytes[i]`: bytes of the set of tensors produced by stage `i`'s main-path nodes
//!   that the backward of its nodes reads ([`backward_reads`]), plus the stage output
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
//!   node `v` the transient is the backward workspace of `v` (the [`Op::workspace_bytes`] of
//!   the backward ops autodiff emits: im2col columns and GEMM packing of
//!   `ConvBackwardData`/`ConvBackwardFilter`, GEMM packing of Gemm/MatMul's gradient
//!   products, `SumTo` accumulators, `LayerNormGrad`'s statistics) plus the live
//!   internal gradients; `bwd_tmp` is the maximum over `v`. Weight gradients (optimizer
//!   state) and the record being freed during the backward are not modelled.

use lowmem_ir::{ConvAttrs, DType, GemmAttrs, Graph, NodeId, Op, TensorId, shape::count};

use crate::Chain;

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
    let mut stage_of = vec![usize::MAX; g.nodes.len()];
    let mut s = 0;
    for (n, slot) in stage_of.iter_mut().enumerate() {
        if is_main(g, &p, n) {
            while merged[s].last < n {
                s += 1;
            }
            *slot = s;
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
                .map(|c| stage_of[c.index()])
                .min()
                .expect("a needed side node has a needed consumer");
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
        if s != usize::MAX {
            out[s].nodes.push(NodeId(n as u32));
        }
    }
    out
}

/// The forward tensors that the backward of `op` reads, as `(input indices, output indices)`,
/// given which inputs need a gradient (`needs[k]`). Mirrors the rules in
/// `crates/autodiff/src/rules.rs` (keep the two in step): e.g. `Relu` reads its output,
/// `Conv` reads X for dW and W for dX, inference `BatchNormalization` reads X, scale, mean
/// and variance, training `BatchNormTrain` reads X, scale and its saved mean/invstd outputs.
pub fn backward_reads(op: &Op, needs: &[bool]) -> (Vec<usize>, Vec<usize>) {
    let need = |k: usize| needs.get(k).copied().unwrap_or(false);
    // For `A op B` whose dA reads B and dB reads A (Mul, MatMul, Gemm, Conv).
    let cross = || {
        let mut v = Vec::new();
        if need(1) {
            v.push(0);
        }
        if need(0) {
            v.push(1);
        }
        v
    };
    match op {
        Op::Relu | Op::Sigmoid | Op::Tanh | Op::Sqrt | Op::Softmax(_) | Op::LogSoftmax(_) => {
            (vec![], vec![0])
        }
        Op::LeakyRelu { .. } | Op::Erf | Op::Gelu { .. } | Op::Clip(_) | Op::MaxPool(_) => {
            (vec![0], vec![])
        }
        Op::DropoutTrain { .. } => (vec![1], vec![]),
        Op::Mul | Op::MatMul | Op::Gemm(_) | Op::Conv(_) => (cross(), vec![]),
        Op::Div => {
            let ins = if need(0) || need(1) { vec![1] } else { vec![] };
            (ins, if need(1) { vec![0] } else { vec![] })
        }
        Op::Pow => (vec![0, 1], vec![]),
        Op::BatchNormalization(_) => (vec![0, 1, 3, 4], vec![]),
        Op::BatchNormTrain(_) => (vec![0, 1], vec![1, 2]),
        Op::LayerNormalization { .. } => (vec![0, 1], vec![]),
        Op::Lrn(_) => (vec![0], vec![0]),
        Op::SoftmaxCrossEntropy | Op::MseLoss => (vec![0, 1], vec![]),
        _ => (vec![], vec![]),
    }
}

/// FLOPs ([`Op::flops`] rules) of the backward ops that autodiff emits for one node, given
/// input and output shapes and which inputs need a gradient. See the module docs.
pub fn backward_flops(op: &Op, ins: &[&[usize]], outs: &[&[usize]], needs: &[bool]) -> u64 {
    let need = |k: usize| needs.get(k).copied().unwrap_or(false);
    if !needs.iter().any(|&b| b) || outs.is_empty() {
        return 0;
    }
    let out = count(outs[0]) as u64;
    // `SumTo` of a dY-shaped gradient down to input k's shape (skipped when equal).
    let sum_to = |k: usize| if ins[k] != outs[0] { out } else { 0 };
    let each = |f: &dyn Fn(usize) -> u64| (0..ins.len()).filter(|&k| need(k)).map(f).sum();
    match op {
        Op::Identity | Op::Dropout { .. } => 0,
        Op::Neg
        | Op::Scale { .. }
        | Op::Relu
        | Op::Sigmoid
        | Op::Tanh
        | Op::Sqrt
        | Op::LeakyRelu { .. }
        | Op::Clip(_)
        | Op::DropoutTrain { .. } => out,
        Op::Erf | Op::Gelu { .. } => 10 * out,
        Op::Add | Op::Sum => each(&sum_to),
        Op::Sub => each(&|k| sum_to(k) + if k == 1 { out } else { 0 }),
        Op::Mul => each(&|k| out + sum_to(k)),
        Op::Div => each(&|k| if k == 0 { out } else { 3 * out } + sum_to(k)),
        Op::Pow => 6 * out + each(&sum_to),
        Op::MatMul => {
            let fwd = op.flops(ins, outs);
            fwd * (u64::from(need(0)) + u64::from(need(1)))
        }
        Op::Gemm(a) => {
            let GemmAttrs { trans_a, beta, .. } = a;
            let k = if *trans_a { ins[0][0] } else { ins[0][1] } as u64;
            let mm = 2 * out * k * (u64::from(need(0)) + u64::from(need(1)));
            let c = if ins.len() == 3 && need(2) {
                (if *beta == 1.0 { 0 } else { out }) + sum_to(2)
            } else {
                0
            };
            mm + c
        }
        Op::Conv(_) => {
            let w = ins[1];
            let per_out = (w[1] * count(&w[2..])) as u64;
            2 * out * per_out * (u64::from(need(0)) + u64::from(need(1)))
                + if ins.len() == 3 && need(2) { out } else { 0 }
        }
        Op::BatchNormalization(_) | Op::BatchNormTrain(_) => 8 * out,
        Op::LayerNormalization { .. } => 10 * out,
        Op::MaxPool(a) | Op::AveragePool(a) => out * count(&a.kernel_shape) as u64,
        Op::GlobalAveragePool => count(ins[0]) as u64,
        Op::Lrn(a) => out * (a.size as u64 + 6),
        Op::Softmax(_) | Op::LogSoftmax(_) => 3 * out,
        Op::ReduceMean(_) => out,
        Op::Expand { .. } if ins[0] != outs[0] => out,
        Op::SoftmaxCrossEntropy | Op::MseLoss => {
            4 * ins.iter().map(|s| count(s) as u64).max().unwrap_or(0)
        }
        _ => 0,
    }
}

/// Scratch bytes of the backward ops of one node (the largest, as they run one at a time).
fn backward_workspace(op: &Op, ins: &[&[usize]], outs: &[&[usize]], needs: &[bool]) -> usize {
    let need = |k: usize| needs.get(k).copied().unwrap_or(false);
    match op {
        Op::Conv(c) => {
            let (x, w, dy) = (ins[0], ins[1], outs[0]);
            let conv = ConvAttrs {
                kernel_shape: w[2..].to_vec(),
                ..c.clone()
            };
            let data = Op::ConvBackwardData {
                conv: conv.clone(),
                input_shape: x.to_vec(),
            };
            let filter = Op::ConvBackwardFilter {
                conv,
                weight_shape: w.to_vec(),
            };
            let a = if need(0) {
                data.workspace_bytes(&[dy, w], &[x])
            } else {
                0
            };
            let b = if need(1) {
                filter.workspace_bytes(&[dy, x], &[w])
            } else {
                0
            };
            a.max(b)
        }
        Op::Gemm(a) => {
            // The products autodiff emits (lowmem-autodiff's Gemm rule) and the bias SumTo.
            let (xa, xb, dy) = (ins[0], ins[1], outs[0]);
            let g = |trans_a, trans_b| {
                Op::Gemm(GemmAttrs {
                    alpha: a.alpha,
                    beta: 0.0,
                    trans_a,
                    trans_b,
                })
            };
            let da = match (need(0), a.trans_a) {
                (false, _) => 0,
                (true, true) => g(a.trans_b, true).workspace_bytes(&[xb, dy], &[xa]),
                (true, false) => g(false, !a.trans_b).workspace_bytes(&[dy, xb], &[xa]),
            };
            let db = match (need(1), a.trans_b) {
                (false, _) => 0,
                (true, true) => g(true, a.trans_a).workspace_bytes(&[dy, xa], &[xb]),
                (true, false) => g(!a.trans_a, false).workspace_bytes(&[xa, dy], &[xb]),
            };
            let dc = match ins.get(2) {
                Some(&cs) if need(2) && cs != dy => {
                    Op::SumTo { shape: cs.to_vec() }.workspace_bytes(&[dy], &[cs])
                }
                _ => 0,
            };
            da.max(db).max(dc)
        }
        Op::MatMul if ins[0].len() >= 2 && ins[1].len() >= 2 => {
            // dA = dY x B^T and dB = A^T x dY over the batched operands, then SumTo down to
            // a broadcast operand's shape (lowmem-autodiff's MatMul rule).
            let (sa, sb, dy) = (ins[0], ins[1], outs[0]);
            let t2 = |s: &[usize]| {
                let mut t = s.to_vec();
                let r = t.len();
                t.swap(r - 2, r - 1);
                t
            };
            let prod = |x: &[usize], y: &[usize], want: &[usize]| -> usize {
                let mm = Op::MatMul.workspace_bytes(&[x, y], &[]);
                let out = Op::MatMul.infer(&[(DType::F32, x), (DType::F32, y)], 1);
                let sum = match out.as_deref() {
                    Ok([(_, o)]) if o[..] != *want => Op::SumTo {
                        shape: want.to_vec(),
                    }
                    .workspace_bytes(&[o], &[want]),
                    _ => 0,
                };
                mm.max(sum)
            };
            let da = if need(0) { prod(dy, &t2(sb), sa) } else { 0 };
            let db = if need(1) { prod(&t2(sa), dy, sb) } else { 0 };
            da.max(db)
        }
        Op::LayerNormalization { axis, epsilon } if needs.iter().any(|&b| b) => Op::LayerNormGrad {
            axis: *axis,
            epsilon: *epsilon,
        }
        .workspace_bytes(&[outs[0], ins[0], ins[1]], outs),
        _ => 0,
    }
}

/// The cost model of `stages` (from [`stages`]) as a [`Chain`]; see the module docs for the
/// rules. Panics if `stages` is empty.
pub fn chain(g: &Graph, stages: &[Stage]) -> Chain {
    chain_with(g, stages, &g.trainable_weights())
}

/// [`chain`] with the tensors that require a gradient given: in a training step the
/// parameters are state inputs, not weights.
pub fn chain_with(g: &Graph, stages: &[Stage], trainable: &[TensorId]) -> Chain {
    assert!(!stages.is_empty(), "a chain needs at least one stage");
    let nt = g.tensors.len();
    let bytes = |t: TensorId| g.tensor(t).bytes() as u64;
    let shapes =
        |ts: &[TensorId]| -> Vec<&[usize]> { ts.iter().map(|&t| &g.tensor(t).shape[..]).collect() };
    // Requires-gradient flags and main-path (depends on the first stage's input) flags.
    let mut requires = vec![false; nt];
    for w in trainable {
        requires[w.index()] = true;
    }
    let mut stage_of = vec![usize::MAX; g.nodes.len()];
    for (s, st) in stages.iter().enumerate() {
        for n in &st.nodes {
            stage_of[n.index()] = s;
        }
    }
    let mut dep = vec![false; nt];
    dep[stages[0].input.index()] = true;
    for (n, node) in g.nodes.iter().enumerate() {
        if stage_of[n] == usize::MAX {
            continue;
        }
        let req = node.inputs.iter().any(|i| requires[i.index()]);
        let d = node.inputs.iter().any(|i| dep[i.index()]);
        for &o in &node.outputs {
            requires[o.index()] = req && g.tensor(o).dtype.is_float();
            dep[o.index()] = d;
        }
    }
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
    };
    c.input_bytes.push(bytes(stages[n - 1].output));
    let mut in_record = vec![false; nt];
    for (i, st) in stages.iter().enumerate() {
        let pos = |node: NodeId| st.nodes.binary_search(&node).ok();
        let mut record = vec![st.output];
        let mut ws_f = Vec::with_capacity(st.nodes.len());
        let mut ws_b = Vec::with_capacity(st.nodes.len());
        for &id in &st.nodes {
            let node = g.node(id);
            let (ins, outs) = (shapes(&node.inputs), shapes(&node.outputs));
            let needs: Vec<bool> = node.inputs.iter().map(|t| requires[t.index()]).collect();
            c.fwd[i] += node.op.flops(&ins, &outs);
            c.bwd[i] += backward_flops(&node.op, &ins, &outs, &needs);
            ws_f.push(node.op.workspace_bytes(&ins, &outs) as u64);
            ws_b.push(backward_workspace(&node.op, &ins, &outs, &needs) as u64);
            if !needs.iter().any(|&b| b) {
                continue;
            }
            let (ri, ro) = backward_reads(&node.op, &needs);
            let read = ri
                .iter()
                .filter_map(|&k| node.inputs.get(k))
                .chain(ro.iter().filter_map(|&k| node.outputs.get(k)));
            for &t in read {
                let produced_here = producers[t.index()].is_some_and(|q| stage_of[q.index()] == i);
                if produced_here && dep[t.index()] && t != st.input {
                    record.push(t);
                }
            }
        }
        record.sort_unstable();
        record.dedup();
        c.saved_bytes[i] = record.iter().map(|&t| bytes(t)).sum();
        for &t in &record {
            in_record[t.index()] = true;
        }
        // Live intervals (positions in the stage) of the main tensors the stage produces.
        let last = st.nodes.len().saturating_sub(1);
        let mut fwd_live = Vec::new(); // (from, to, bytes, in record)
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
                fwd_live.push((p, to, bytes(o), in_record[o.index()]));
                if o != st.output && use_end > p && requires[o.index()] {
                    grads.push((p, use_end, bytes(o)));
                }
            }
        }
        let (mut plain, mut rec, mut bt) = (0u64, 0u64, 0u64);
        for p in 0..st.nodes.len() {
            let live = fwd_live.iter().filter(|l| l.0 <= p && p <= l.1);
            let all: u64 = live.clone().map(|l| l.2).sum();
            let non_rec: u64 = live.filter(|l| !l.3).map(|l| l.2).sum();
            plain = plain.max(ws_f[p] + all);
            rec = rec.max(ws_f[p] + non_rec);
            let g_live: u64 = grads
                .iter()
                .filter(|l| l.0 <= p && p <= l.1)
                .map(|l| l.2)
                .sum();
            bt = bt.max(ws_b[p] + g_live);
        }
        c.fwd_tmp[i] = rec.max(plain.saturating_sub(c.input_bytes[i + 1]));
        c.bwd_tmp[i] = bt;
    }
    c.validate().expect("stage costs form a valid chain");
    c
}
