//! Turning a chain [`Schedule`] into a real rematerialised step: one graph whose node order
//! is the execution order, with the recomputations as cloned nodes.
//!
//! # Rewrite
//!
//! The input is a whole step (forward, loss, backward, optimizer update; nodes in a
//! topological order) with, per node, the forward node whose gradient rule emitted it
//! (`backward_of`), and its [`Stage`]s. The schedule's ops are walked in order:
//!
//! * The first `Forward` of stage `i` runs the stage's original nodes: the first sweep
//!   computes every stage once, and every stateful side effect (BatchNorm running
//!   statistics, which are step outputs) stays on those originals, so it happens once.
//! * Every later `Forward` of stage `i` clones the stage's main-path nodes (those depending on
//!   the stage input; nodes computing from weights alone are not cloned, their outputs stay
//!   live) into fresh tensors. Reads are redirected to the newest copy of each forward
//!   tensor, so the clones read the kept checkpoint or the previous clone, and everything
//!   after reads the clones. Recomputing is exact: every kernel is deterministic, and
//!   `DropoutTrain` draws its mask from `(seed, step, index)`, so a clone reproduces it.
//! * `Backward { i }` runs the backward nodes emitted for the nodes of stage `i`, reading the
//!   newest copies, i.e. those of the last recording forward.
//! * Every other node (final gradient sums, optimizer updates, anything not tied to a stage)
//!   runs as soon as its inputs exist, so a parameter is updated right after its gradient is
//!   complete.
//!
//! `Free` ops need no node: a copy dies after its last reader, which the liveness analysis
//! of the planner sees. Cloned nodes whose outputs nobody reads (a plain recompute of a stage
//! whose intermediates are not needed) are removed. The memory a schedule really takes is
//! the planned peak of the rewritten graph, planned in its own node order.

use lowmem_ir::{Graph, Node, NodeId, Tensor, TensorId};

use crate::{Action, RematError, Schedule, Stage, stage_of};

/// A rematerialised step.
#[derive(Clone, Debug)]
pub struct Remat {
    /// The step; its node order is the execution order. Tensors of the original graph keep
    /// their ids; recomputed copies are appended.
    pub graph: Graph,
    /// Number of cloned (recomputing) nodes.
    pub recomputed_nodes: usize,
    /// Σ [`lowmem_ir::Op::flops`] of the cloned nodes.
    pub recompute_flops: u64,
    /// Per node of `graph`: the stage it works for (a forward, recomputing or backward node
    /// of that stage; `None` for the loss, optimizer and other nodes tied to no stage).
    pub stage: Vec<Option<u32>>,
    /// Per node of `graph`: whether it is a recomputing copy.
    pub recomputed: Vec<bool>,
}

/// The stage boundaries `j` (in `1..n`) whose tensor `X_j` is held when the loss runs: the
/// checkpoints the first sweep keeps (inside records or alone).
pub fn checkpoints(schedule: &Schedule, n: usize) -> Vec<usize> {
    let mut x = vec![false; n + 1];
    let mut r = vec![false; n];
    for op in &schedule.ops {
        match *op {
            Action::Forward { stage, record } if stage < n => {
                if record {
                    r[stage] = true;
                } else {
                    x[stage + 1] = true;
                }
            }
            Action::Free { activation } if activation <= n => x[activation] = false,
            Action::Backward { stage } if stage < n => r[stage] = false,
            Action::Loss => return (1..n).filter(|&j| x[j] || r[j - 1]).collect(),
            _ => {}
        }
    }
    Vec::new()
}

/// Where a node of the original graph runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Item {
    Node(usize),
    /// A recomputing forward of a stage: its main-path nodes.
    Clone(usize),
    /// Inside the backward of a stage recorded with option `o`, the nodes re-run before
    /// backward node `u`: `(stage, option, entry of its recompute plan)`.
    Rerun(usize, usize, usize),
}

/// Rewrites the step `g` for `schedule` over `stages` (see the module docs). Errors when
/// the schedule does not run every stage forward and backward once, or `backward_of` does
/// not match the graph.
pub fn rematerialize(
    g: &Graph,
    backward_of: &[Option<NodeId>],
    stages: &[Stage],
    schedule: &Schedule,
) -> Result<Remat, RematError> {
    rematerialize_with(g, backward_of, stages, &[], schedule)
}

/// [`rematerialize`] where stages may be recorded with one of their `options` (as
/// [`crate::chain_with_options`] found them; `schedule.options` picks): the backward of such
/// a stage re-runs the option's nodes right before the backward nodes that need them, and
/// reads those copies. Errors as [`rematerialize`], and when the schedule picks an option a
/// stage does not have.
pub fn rematerialize_with(
    g: &Graph,
    backward_of: &[Option<NodeId>],
    stages: &[Stage],
    options: &[Vec<crate::StageOption>],
    schedule: &Schedule,
) -> Result<Remat, RematError> {
    let n = stages.len();
    let nn = g.nodes.len();
    if backward_of.len() != nn {
        return Err(RematError::BackwardOfLength {
            entries: backward_of.len(),
            nodes: nn,
        });
    }
    if n == 0 {
        return Err(RematError::NoStages);
    }
    let stage_of = stage_of(stages, nn);
    // Main-path tensors: depending on the first stage's input.
    let mut main_t = vec![false; g.tensors.len()];
    main_t[stages[0].input.index()] = true;
    let mut main_n = vec![false; nn];
    for (v, node) in g.nodes.iter().enumerate() {
        if stage_of[v].is_some() && node.inputs.iter().any(|t| main_t[t.index()]) {
            main_n[v] = true;
            for o in &node.outputs {
                main_t[o.index()] = true;
            }
        }
    }
    // Slot 0: before the schedule; slot p + 1: schedule op p.
    let slots = schedule.ops.len() + 1;
    let mut items: Vec<Vec<Item>> = vec![Vec::new(); slots];
    // Per stage: the slot of its first forward and of its backward.
    let mut first_fwd: Vec<Option<usize>> = vec![None; n];
    let mut bwd: Vec<Option<usize>> = vec![None; n];
    for (p, op) in schedule.ops.iter().enumerate() {
        match *op {
            Action::Forward { stage, .. } if stage < n => {
                if first_fwd[stage].is_none() {
                    first_fwd[stage] = Some(p + 1);
                } else {
                    items[p + 1].push(Item::Clone(stage));
                }
            }
            Action::Backward { stage } if stage < n => {
                if bwd[stage].is_some() {
                    return Err(RematError::BackwardTwice { stage });
                }
                if first_fwd[stage].is_none() {
                    return Err(RematError::BackwardBeforeForward { stage });
                }
                bwd[stage] = Some(p + 1);
            }
            Action::Forward { stage, .. } | Action::Backward { stage } => {
                return Err(RematError::StageOutOfRange { index: p, stage, n });
            }
            _ => {}
        }
    }
    let Some(bwd) = bwd.iter().copied().collect::<Option<Vec<usize>>>() else {
        let i = bwd
            .iter()
            .position(Option::is_none)
            .expect("some stage is missing");
        return Err(RematError::NeverBackward { stage: i });
    };
    // Every stage ran backward, so forward before it.
    let first_fwd: Vec<usize> = first_fwd
        .into_iter()
        .map(|f| f.expect("a stage runs forward before its backward"))
        .collect();
    let producers = g.producers();
    let mut slot_of = vec![0usize; nn];
    for v in 0..nn {
        let ready = g.nodes[v]
            .inputs
            .iter()
            .filter_map(|t| producers[t.index()])
            .map(|q| slot_of[q.index()])
            .max()
            .unwrap_or(0);
        let want = match (stage_of[v], backward_of[v]) {
            (Some(s), _) => first_fwd[s.index()],
            (None, Some(f)) => stage_of[f.index()].map_or(0, |s| bwd[s.index()]),
            (None, None) => 0,
        };
        slot_of[v] = want.max(ready);
        items[slot_of[v]].push(Item::Node(v));
    }
    // Re-runs inside the backward of stages recorded with an option: in the slot of the
    // backward node they precede.
    for i in 0..n {
        let o = schedule.option(i);
        if o == 0 {
            continue;
        }
        let opt = options
            .get(i)
            .and_then(|os| os.get(o - 1))
            .ok_or(RematError::NoOption {
                stage: i,
                option: o,
            })?;
        for (k, (u, _)) in opt.recompute.iter().enumerate() {
            items[slot_of[u.index()]].push(Item::Rerun(i, o, k));
        }
    }
    // A clone marker sorts before nodes that landed in its slot (none in practice); re-runs
    // right before their backward node.
    for list in &mut items {
        list.sort_by_key(|it| match *it {
            Item::Clone(_) => (0, 0, 0),
            Item::Rerun(i, o, k) => (1, options[i][o - 1].recompute[k].0.index(), 0),
            Item::Node(v) => (1, v, 1),
        });
    }

    // Clone tensors get ids from `base` on, in creation order (renumbered at the end).
    let base = g.tensors.len();
    let mut extra: Vec<Tensor> = Vec::new();
    let mut emitted: Vec<Node> = Vec::with_capacity(nn);
    let mut cur: Vec<TensorId> = g.tensor_ids().collect();
    let mut copies = vec![0usize; n];
    let mut is_clone = Vec::with_capacity(nn);
    let works_for = crate::works_for(stages, backward_of);
    let mut node_stage: Vec<Option<u32>> = Vec::with_capacity(nn);
    let remap = |cur: &[TensorId], ts: &[TensorId]| -> Vec<TensorId> {
        ts.iter().map(|t| cur[t.index()]).collect()
    };
    for list in &items {
        for it in list {
            match *it {
                Item::Node(v) => {
                    let node = &g.nodes[v];
                    emitted.push(Node {
                        name: node.name.clone(),
                        op: node.op.clone(),
                        inputs: remap(&cur, &node.inputs),
                        outputs: node.outputs.clone(),
                    });
                    is_clone.push(false);
                    node_stage.push(works_for[v].map(|s| s.0));
                }
                Item::Clone(_) | Item::Rerun(..) => {
                    let (i, list): (usize, &[NodeId]) = match *it {
                        Item::Clone(i) => (i, &stages[i].nodes),
                        Item::Rerun(i, o, k) => (i, &options[i][o - 1].recompute[k].1),
                        Item::Node(_) => unreachable!(),
                    };
                    if !matches!(*it, Item::Rerun(_, _, k) if k > 0) {
                        copies[i] += 1;
                    }
                    let k = copies[i];
                    for &v in list {
                        if !main_n[v.index()] {
                            continue;
                        }
                        let node = g.node(v);
                        let mut inputs = remap(&cur, &node.inputs);
                        if let (lowmem_ir::Op::BatchNormTrain(_), [.., rm, rv]) =
                            (&node.op, &node.outputs[..])
                        {
                            // A recomputed BatchNorm's running statistics are never read
                            // (the original's update is the step's), and the original
                            // updates them in place: the clone reads the updated values,
                            // which it may, instead of the inputs they overwrote.
                            inputs[3] = *rm;
                            inputs[4] = *rv;
                        }
                        let mut outputs = Vec::with_capacity(node.outputs.len());
                        for &o in &node.outputs {
                            let t = g.tensor(o);
                            let id = TensorId(
                                u32::try_from(base + extra.len())
                                    .map_err(|_| RematError::TooManyTensors)?,
                            );
                            let mut name = format!("{}.remat{k}", t.name);
                            if g.tensor_id(&name).is_some() {
                                name = format!("{}.remat{k}.{}", t.name, id.0);
                            }
                            extra.push(Tensor {
                                name,
                                dtype: t.dtype,
                                shape: t.shape.clone(),
                                value: None,
                            });
                            cur[o.index()] = id;
                            cur.push(id);
                            outputs.push(id);
                        }
                        emitted.push(Node {
                            name: format!("{}.remat{k}", node.name),
                            op: node.op.clone(),
                            inputs,
                            outputs,
                        });
                        is_clone.push(true);
                        node_stage.push(Some(i as u32));
                    }
                }
            }
        }
    }
    // Drop clones nobody reads (reverse sweep: a clone read only by dead clones is dead).
    let mut read = vec![false; base + extra.len()];
    for &o in &g.outputs {
        read[o.index()] = true;
    }
    let mut keep = vec![true; emitted.len()];
    for (v, node) in emitted.iter().enumerate().rev() {
        if is_clone[v] && !node.outputs.iter().any(|o| read[o.index()]) {
            keep[v] = false;
            continue;
        }
        for i in &node.inputs {
            read[i.index()] = true;
        }
    }
    let mut graph = g.clone();
    let mut new_id: Vec<Option<TensorId>> = (0..base + extra.len())
        .map(|t| (t < base).then_some(TensorId(t as u32)))
        .collect();
    let mut recomputed_nodes = 0;
    let mut recompute_flops = 0u64;
    let mut nodes = Vec::with_capacity(emitted.len());
    let mut stage = Vec::with_capacity(emitted.len());
    let mut recomputed = Vec::with_capacity(emitted.len());
    for (v, mut node) in emitted.into_iter().enumerate() {
        if !keep[v] {
            continue;
        }
        stage.push(node_stage[v]);
        recomputed.push(is_clone[v]);
        for t in node.inputs.iter_mut() {
            *t = new_id[t.index()].expect("kept nodes read kept tensors");
        }
        if is_clone[v] {
            recomputed_nodes += 1;
            for o in node.outputs.iter_mut() {
                let t = &extra[o.index() - base];
                let id = graph.add_activation(t.name.clone(), t.dtype, t.shape.clone())?;
                new_id[o.index()] = Some(id);
                *o = id;
            }
            recompute_flops = recompute_flops.saturating_add(graph.node_flops(&node));
        }
        nodes.push(node);
    }
    graph.nodes = nodes;
    Ok(Remat {
        graph,
        recomputed_nodes,
        recompute_flops,
        stage,
        recomputed,
    })
}
