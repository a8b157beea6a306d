//! Record options inside a stage (Rockmate's two levels): which of the tensors a stage's
//! backward reads the recording forward keeps, the others being recomputed inside the
//! backward from the stage input and the kept tensors.
//!
//! # The problem of one stage
//!
//! The *candidates* are the stage's saved tensors other than its output (the output is the
//! next stage's input and always stays). Dropping a set `D` of them makes the backward re-run
//! the stage nodes that produce `D` from what is available: the stage input, the kept
//! candidates, the output, and tensors of no stage's main path (weights, side tensors). A
//! tensor neither kept nor an input is recomputed in turn (the closure). The cost `c(D)` is
//! the FLOPs of the re-run nodes; it grows with `D`. For a record size `L`, the option at
//! that level minimises `c(D)` subject to `bytes(kept) + bytes(output) <= L`.
//!
//! Recomputation happens late: each re-run node runs right before the first backward node
//! that needs it (directly or through another re-run node), so recomputed tensors live only
//! while the backward still reads them. The backward's transient memory is followed along
//! that sequence: the live copies, the re-run nodes' workspace, and the internal gradients
//! and backward workspace of the full record's model at the position being
//! back-propagated (never below the full record's temporary).
//!
//! # The solver
//!
//! A depth-first branch and bound over the candidates, largest first: drop or keep each.
//! A branch is cut when its kept bytes exceed the level, or when its lower bound is within
//! the relative gap of the best option found. The lower bound of a partial choice is
//! `c(D)` for what it already drops (monotone), and when more must be dropped, at least
//! `c({j})` for the cheapest undecided `j` (dropping `j` costs no less than dropping it
//! alone). The search starts from dropping every candidate, a feasible answer at every level
//! that costs at most a whole recomputation of the stage (today's stage-level choice), so an
//! option is never worse than that. A time limit stops the search; the lower bound then
//! proven (the smallest bound of a branch left open) is kept with the option, so every
//! option states how far from that level's optimum it can be. Stages with the same nodes,
//! shapes and saved tensors (the layers of a transformer, the blocks of a ResNet stage) are
//! solved once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lowmem_ir::{Graph, NodeId, TensorId};

use crate::stages::{StageModel, stage_models};
use crate::{Chain, RecordOption, RematError, Stage};

/// One record option of a stage (option `k + 1` of the chain for `options[i][k]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageOption {
    /// Its sizes and cost in the chain model.
    pub record: RecordOption,
    /// The saved tensors the record drops.
    pub dropped: Vec<TensorId>,
    /// The recomputation inside the backward: per backward node, the stage nodes re-run
    /// right before it, in order.
    pub recompute: Vec<(NodeId, Vec<NodeId>)>,
    /// The solver's proven lower bound on the recompute cost at this option's level.
    pub lower_bound: u64,
}

/// How the options of one stage were found.
#[derive(Clone, Debug, PartialEq)]
pub struct StageSolve {
    /// Nodes of the stage.
    pub nodes: usize,
    /// Candidates (saved tensors that may be dropped).
    pub candidates: usize,
    /// Options kept (beyond the full record).
    pub options: usize,
    /// Branch-and-bound nodes explored.
    pub explored: u64,
    /// Seconds spent (0 when `same_as` is set).
    pub seconds: f64,
    /// Largest relative gap `(cost − bound) / cost` over the options (0: all optimal).
    pub gap: f64,
    /// Whether the time limit stopped a search.
    pub timed_out: bool,
    /// An earlier identical stage whose solution this one reuses.
    pub same_as: Option<usize>,
}

/// Limits of the per-stage solver.
#[derive(Clone, Copy, Debug)]
pub struct SolveLimits {
    /// Memory levels per stage, between the smallest record and the full one.
    pub levels: usize,
    /// Relative gap at which a level's search stops.
    pub rel_gap: f64,
    /// Time limit of the search of one stage (all levels).
    pub time_per_stage: Duration,
}

impl Default for SolveLimits {
    fn default() -> Self {
        SolveLimits {
            levels: 6,
            rel_gap: 0.01,
            time_per_stage: Duration::from_millis(500),
        }
    }
}

/// A chain with record options, and how they were found.
#[derive(Clone, Debug)]
pub struct InnerOptions {
    /// The chain of [`crate::chain_of_step`] with every stage's options.
    pub chain: Chain,
    /// Per stage, its options (`chain.options[i][k]` is `options[i][k].record`).
    pub options: Vec<Vec<StageOption>>,
    /// Per stage, the solve.
    pub solves: Vec<StageSolve>,
}

/// The cost model of `stages` of the training step `g` ([`crate::chain_of_step`]) with
/// record options inside each stage (see the module docs).
pub fn chain_with_options(
    g: &Graph,
    backward_of: &[Option<NodeId>],
    stages: &[Stage],
    params: &[TensorId],
    limits: SolveLimits,
) -> Result<InnerOptions, RematError> {
    let (chain, models) = stage_models(g, backward_of, stages, params)?;
    let mut options = Vec::with_capacity(stages.len());
    let mut solves: Vec<StageSolve> = Vec::with_capacity(stages.len());
    // Solved drop sets (candidate positions) per stage shape, with the stage solved.
    let mut solved: HashMap<String, (usize, DropSets)> = HashMap::new();
    for (i, (st, model)) in stages.iter().zip(&models).enumerate() {
        let ctx = Ctx::new(g, st, model);
        let key = ctx.key(g, st);
        let (sets, solve) = match solved.get(&key) {
            Some((j, sets)) => {
                let mut solve: StageSolve = solves[*j].clone();
                solve.same_as = Some(*j);
                solve.seconds = 0.0;
                solve.explored = 0;
                (sets.clone(), solve)
            }
            None => {
                let (sets, solve) = ctx.solve(limits);
                solved.insert(key, (i, sets.clone()));
                (sets, solve)
            }
        };
        let mut opts: Vec<StageOption> = sets
            .iter()
            .map(|(set, lb)| ctx.option(g, &chain, i, set, *lb))
            .collect();
        // Keep the options no other one (or the full record) dominates.
        let full = chain.record(i, 0);
        let dominated = |a: &RecordOption, b: &RecordOption| {
            b.saved_bytes <= a.saved_bytes
                && b.fwd_tmp <= a.fwd_tmp
                && b.bwd_tmp <= a.bwd_tmp
                && b.recompute <= a.recompute
        };
        let mut keep: Vec<StageOption> = Vec::new();
        opts.sort_by_key(|o| (o.record.saved_bytes, o.record.recompute));
        for o in opts {
            if dominated(&o.record, &full) || keep.iter().any(|k| dominated(&o.record, &k.record)) {
                continue;
            }
            keep.push(o);
        }
        let solve = StageSolve {
            options: keep.len(),
            ..solve
        };
        options.push(keep);
        solves.push(solve);
    }
    let chain = chain.with_options(
        options
            .iter()
            .map(|o| o.iter().map(|s| s.record).collect())
            .collect(),
    )?;
    Ok(InnerOptions {
        chain,
        options,
        solves,
    })
}

/// Drop sets (candidate indices) with their proven lower bounds.
type DropSets = Vec<(Vec<usize>, u64)>;

/// One stage's forward, as the solver sees it.
struct Ctx<'a> {
    stage: &'a Stage,
    model: &'a StageModel,
    /// Position in the stage of the producer of each main tensor the stage produces.
    pos_of: HashMap<TensorId, usize>,
    /// Per position: FLOPs, and the main inputs (producer position, tensor).
    flops: Vec<u64>,
    deps: Vec<Vec<(usize, TensorId)>>,
    /// Candidates: (tensor, bytes, producer position), largest first.
    cands: Vec<(TensorId, u64, usize)>,
    /// The candidate index of each candidate tensor.
    cand_of: HashMap<TensorId, usize>,
    output_bytes: u64,
}

impl<'a> Ctx<'a> {
    fn new(g: &Graph, stage: &'a Stage, model: &'a StageModel) -> Ctx<'a> {
        let mut pos_of = HashMap::new();
        for &(p, _, _, t) in &model.fwd_live {
            pos_of.insert(t, p);
        }
        let flops = stage
            .nodes
            .iter()
            .map(|&v| g.node_flops(g.node(v)))
            .collect();
        let deps = stage
            .nodes
            .iter()
            .map(|&v| {
                let mut d: Vec<(usize, TensorId)> = g
                    .node(v)
                    .inputs
                    .iter()
                    .filter_map(|t| pos_of.get(t).map(|&q| (q, *t)))
                    .collect();
                d.sort_unstable();
                d.dedup();
                d
            })
            .collect();
        let mut cands: Vec<(TensorId, u64, usize)> = model
            .record
            .iter()
            .filter(|&&t| t != stage.output)
            .filter_map(|&t| pos_of.get(&t).map(|&p| (t, g.tensor(t).bytes() as u64, p)))
            .collect();
        cands.sort_by_key(|c| (std::cmp::Reverse(c.1), c.0));
        let cand_of = cands.iter().enumerate().map(|(j, c)| (c.0, j)).collect();
        Ctx {
            cand_of,
            stage,
            model,
            pos_of,
            flops,
            deps,
            cands,
            output_bytes: g.tensor(stage.output).bytes() as u64,
        }
    }

    /// A structural key: identical stages have identical keys.
    fn key(&self, g: &Graph, st: &Stage) -> String {
        use std::fmt::Write;
        let mut k = String::new();
        for (p, &v) in st.nodes.iter().enumerate() {
            let node = g.node(v);
            // Dropout seeds differ between layers and change no cost.
            let op = format!("{:?}", node.op);
            let op = match op.find("seed: ") {
                Some(at) => {
                    let end = op[at + 6..]
                        .find(|c: char| !c.is_ascii_digit())
                        .map_or(op.len(), |e| at + 6 + e);
                    format!("{}{}", &op[..at], &op[end..])
                }
                None => op,
            };
            let _ = write!(k, "{op}(");
            for t in &node.inputs {
                match self.pos_of.get(t) {
                    Some(q) => {
                        let o = g.node(st.nodes[*q]).outputs.iter().position(|x| x == t);
                        let _ = write!(k, "@{}.{},", p - q, o.unwrap_or(0));
                    }
                    None if *t == st.input => k.push_str("in,"),
                    None => {
                        let _ = write!(k, "{:?},", g.tensor(*t).shape);
                    }
                }
            }
            for t in &node.outputs {
                let _ = write!(k, "{:?}{:?};", g.tensor(*t).dtype, g.tensor(*t).shape);
            }
            k.push(')');
        }
        for c in &self.cands {
            let _ = write!(k, "|{}:{}", c.2, c.1);
        }
        k
    }

    /// Whether the backward has `t` (a main tensor of the stage) without re-running its
    /// producer.
    fn available(&self, t: TensorId, dropped: &[bool]) -> bool {
        t == self.stage.output || self.cand_of.get(&t).is_some_and(|&j| !dropped[j])
    }

    /// The positions re-run when the candidates marked in `dropped` are dropped.
    fn closure(&self, dropped: &[bool], rerun: &mut Vec<bool>) {
        rerun.clear();
        rerun.resize(self.flops.len(), false);
        let mut stack: Vec<usize> = self
            .cands
            .iter()
            .zip(dropped)
            .filter(|(_, d)| **d)
            .map(|(c, _)| c.2)
            .collect();
        while let Some(p) = stack.pop() {
            if rerun[p] {
                continue;
            }
            rerun[p] = true;
            for &(q, t) in &self.deps[p] {
                if !rerun[q] && !self.available(t, dropped) {
                    stack.push(q);
                }
            }
        }
    }

    fn cost(&self, dropped: &[bool], rerun: &mut Vec<bool>) -> u64 {
        self.closure(dropped, rerun);
        rerun
            .iter()
            .zip(&self.flops)
            .filter(|(r, _)| **r)
            .map(|(_, f)| *f)
            .sum()
    }

    /// Branch and bound at each level; returns the distinct drop sets (candidate indices)
    /// with their proven lower bounds.
    fn solve(&self, limits: SolveLimits) -> (DropSets, StageSolve) {
        let t0 = Instant::now();
        let k = self.cands.len();
        let total: u64 = self.cands.iter().map(|c| c.1).sum();
        let mut out: DropSets = Vec::new();
        let mut solve = StageSolve {
            nodes: self.flops.len(),
            candidates: k,
            options: 0,
            explored: 0,
            seconds: 0.0,
            gap: 0.0,
            timed_out: false,
            same_as: None,
        };
        if k == 0 {
            return (out, solve);
        }
        let deadline = t0 + limits.time_per_stage;
        let mut rerun = Vec::new();
        // Cost of dropping each candidate alone (a lower bound of any set containing it).
        let single: Vec<u64> = (0..k)
            .map(|j| {
                let mut d = vec![false; k];
                d[j] = true;
                self.cost(&d, &mut rerun)
            })
            .collect();
        let levels = limits.levels.max(1);
        // Kept-candidate bytes allowed: from 0 (drop all) up to below the full record, and
        // the level of dropping every candidate that is cheap to recompute alone (pointwise
        // ops, dropout from its seed: at most 1% of the stage's forward), as PyTorch's
        // min-cut partitioner does.
        let mut caps: Vec<u64> = (0..levels)
            .map(|lv| total * lv as u64 / levels as u64)
            .collect();
        let stage_flops: u64 = self.flops.iter().sum();
        let cheap: u64 = (0..k)
            .filter(|&j| single[j].saturating_mul(100) <= stage_flops)
            .map(|j| self.cands[j].1)
            .sum();
        if cheap > 0 {
            caps.push(total - cheap);
        }
        for cap in caps {
            let mut bb = Bb {
                ctx: self,
                cap,
                single: &single,
                gap: limits.rel_gap,
                deadline,
                best: {
                    let all = vec![true; k];
                    (self.cost(&all, &mut rerun), all)
                },
                dual: u64::MAX,
                explored: 0,
                timed_out: false,
                rerun: Vec::new(),
            };
            let mut dropped = vec![false; k];
            bb.dfs(0, &mut dropped, 0, total);
            let (cost, set) = bb.best;
            let lb = bb.dual.min(cost);
            solve.explored += bb.explored;
            solve.timed_out |= bb.timed_out;
            if cost > 0 {
                solve.gap = solve.gap.max((cost - lb) as f64 / cost as f64);
            }
            let idx: Vec<usize> = (0..k).filter(|&j| set[j]).collect();
            match out.iter_mut().find(|(s, _)| *s == idx) {
                Some(o) => o.1 = o.1.max(lb),
                None => out.push((idx, lb)),
            }
        }
        solve.seconds = t0.elapsed().as_secs_f64();
        (out, solve)
    }

    /// The option dropping the candidates `set` of stage `i`: its record, recomputation
    /// plan and sizes.
    fn option(&self, g: &Graph, chain: &Chain, i: usize, set: &[usize], lb: u64) -> StageOption {
        let k = self.cands.len();
        let mut dropped = vec![false; k];
        for &j in set {
            dropped[j] = true;
        }
        let mut rerun = Vec::new();
        let cost = self.cost(&dropped, &mut rerun);
        let dropped_t: Vec<TensorId> = set.iter().map(|&j| self.cands[j].0).collect();
        let kept_bytes: u64 = (0..k)
            .filter(|&j| !dropped[j])
            .map(|j| self.cands[j].1)
            .sum();
        let saved = kept_bytes + self.output_bytes;
        let is_kept = |t: TensorId| self.available(t, &dropped);
        let fwd_tmp = self.model.fwd_tmp(self.output_bytes, &is_kept);
        // The recomputation: each re-run position right before the first backward node
        // that needs it.
        let mut done = vec![false; self.flops.len()];
        let mut plan: Vec<(NodeId, Vec<NodeId>)> = Vec::new();
        // Events for the memory of the copies: (sequence position, kind).
        let mut seq: Vec<Seq> = Vec::new();
        for &(u, q) in &self.model.backward {
            let mut group = Vec::new();
            let mut stack: Vec<usize> = g
                .node(u)
                .inputs
                .iter()
                .filter(|&&t| !self.available(t, &dropped))
                .filter_map(|t| self.pos_of.get(t).copied())
                .filter(|&p| !done[p])
                .collect();
            while let Some(p) = stack.pop() {
                if done[p] {
                    continue;
                }
                debug_assert!(rerun[p], "the closure re-runs what the backward needs");
                done[p] = true;
                group.push(p);
                stack.extend(
                    self.deps[p]
                        .iter()
                        .filter(|&&(q, t)| !done[q] && !self.available(t, &dropped))
                        .map(|&(q, _)| q),
                );
            }
            group.sort_unstable();
            for &p in &group {
                seq.push(Seq::Rerun(p, q));
            }
            seq.push(Seq::Backward(u, q));
            if !group.is_empty() {
                plan.push((u, group.iter().map(|&p| self.stage.nodes[p]).collect()));
            }
        }
        // Peak of the live copies: a copy lives from its re-run to its last reader.
        let mut last = vec![0usize; self.flops.len()];
        let mut at = vec![usize::MAX; self.flops.len()];
        for (s, e) in seq.iter().enumerate() {
            let v = match *e {
                Seq::Rerun(p, _) => {
                    at[p] = s;
                    last[p] = last[p].max(s);
                    self.stage.nodes[p]
                }
                Seq::Backward(u, _) => u,
            };
            for t in &g.node(v).inputs {
                if let Some(&q) = self.pos_of.get(t)
                    && at[q] != usize::MAX
                {
                    last[q] = last[q].max(s);
                }
            }
        }
        let out_bytes = |p: usize| -> u64 {
            g.node(self.stage.nodes[p])
                .outputs
                .iter()
                .map(|&t| g.tensor(t).bytes() as u64)
                .sum()
        };
        // The backward's temporary as the full record's (internal gradients and the
        // backward's workspace at each position of the sweep), with the live copies and the
        // re-run nodes' workspace where they are.
        let mut bt = chain.bwd_tmp[i];
        for (s, e) in seq.iter().enumerate() {
            let live: u64 = (0..self.flops.len())
                .filter(|&p| at[p] != usize::MAX && at[p] <= s && s <= last[p])
                .map(out_bytes)
                .sum();
            let (q, ws) = match *e {
                Seq::Rerun(p, q) => (q, self.model.ws_f[p]),
                Seq::Backward(_, q) => (q, self.model.ws_b[q]),
            };
            bt = bt.max(live + ws + self.model.grads_live(q));
        }
        StageOption {
            record: RecordOption {
                saved_bytes: saved,
                fwd_tmp,
                bwd_tmp: bt,
                recompute: cost,
            },
            dropped: dropped_t,
            recompute: plan,
            lower_bound: lb.min(cost),
        }
    }
}

/// The backward of a stage recorded partially: re-runs and backward nodes, each with the
/// position (in the stage) whose backward is under way.
#[derive(Clone, Copy)]
enum Seq {
    Rerun(usize, usize),
    Backward(NodeId, usize),
}

/// The branch and bound of one level.
struct Bb<'c> {
    ctx: &'c Ctx<'c>,
    /// Kept candidate bytes allowed.
    cap: u64,
    single: &'c [u64],
    gap: f64,
    deadline: Instant,
    /// Best (cost, dropped) found.
    best: (u64, Vec<bool>),
    /// Smallest lower bound of a branch cut by the gap or left open by the time limit.
    dual: u64,
    explored: u64,
    timed_out: bool,
    rerun: Vec<bool>,
}

impl Bb<'_> {
    /// Decides candidates `j..`; `kept` bytes are kept among `..j`, `open` bytes undecided.
    fn dfs(&mut self, j: usize, dropped: &mut Vec<bool>, kept: u64, open: u64) {
        if kept > self.cap {
            return;
        }
        self.explored += 1;
        let base = self.ctx.cost(dropped, &mut self.rerun);
        let need_more = kept + open > self.cap;
        let lb = if need_more {
            let cheapest = (j..dropped.len())
                .map(|q| self.single[q])
                .min()
                .unwrap_or(u64::MAX);
            base.max(cheapest)
        } else {
            base
        };
        if lb >= self.best.0 {
            return;
        }
        if (lb as f64) * (1.0 + self.gap) >= self.best.0 as f64 {
            self.dual = self.dual.min(lb);
            return;
        }
        if !need_more {
            // Keep every undecided candidate: the cheapest completion.
            self.best = (base, dropped.clone());
            return;
        }
        if self.timed_out || (self.explored.is_multiple_of(256) && Instant::now() > self.deadline) {
            self.timed_out = true;
            self.dual = self.dual.min(lb);
            return;
        }
        let b = self.ctx.cands[j].1;
        dropped[j] = true;
        self.dfs(j + 1, dropped, kept, open - b);
        dropped[j] = false;
        self.dfs(j + 1, dropped, kept + b, open - b);
    }
}
