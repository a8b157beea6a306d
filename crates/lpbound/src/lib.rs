//! A lower bound on the recomputation a training step needs to fit a memory budget: the LP
//! relaxation of Checkmate's node-level rematerialisation MILP (Jain et al., MLSys 2020,
//! `checkmate/core/solvers/strategy_optimal_ilp.py`), over the whole step, solved by HiGHS.
//!
//! lowmem's own schemes choose among schedules over a chain of stages; this bound ranges over
//! every node-level schedule, so it says how far any checkpointing scheme could still go. It
//! is a benchmark figure only: nothing in the compiler depends on it.
//!
//! # The MILP
//!
//! The step's nodes, in the order `π` that lowmem's rewrite runs the original (not
//! recomputed) nodes in ([`node_order`]), are the stages `t = 0..T`. Stage `t` ends by
//! computing node `π[t]` (Checkmate's "frontier advancing": `R[t, π[t]] = 1`); before it, it
//! may recompute forward nodes, in order. Forward nodes (graph index below
//! `backward_start`: the forward pass and the loss) may be recomputed; backward and
//! optimizer nodes run once, at their own stage (so their outputs' memory is a constant per
//! stage and they get no variable). Variables, all binary in the MILP and in `[0, 1]` here:
//!
//! * `R[t, i]`: forward node `i` is recomputed in stage `t` (`t > π⁻¹(i)`);
//! * `S[t, x]`: forward tensor `x` is kept from stage `t - 1` into stage `t`;
//! * `FREE[t, x, k]`: `x` is freed right after node `k` (a reader of `x`, or its producer)
//!   runs in stage `t`;
//! * `A[t, k]`: activation memory before `k` runs in stage `t`, in units of the budget.
//!
//! Constraints, as Checkmate's: a node's inputs are computed in the stage or kept into it
//! (`R[t,j] ≤ R[t,p(x)] + S[t,x]`); a kept tensor was kept or computed the stage before
//! (`S[t+1,x] ≤ S[t,x] + R[t,p(x)]`); memory starts each stage at the kept tensors (plus the
//! backward tensors alive across it, a constant), grows by each computed node's outputs and
//! shrinks by what is freed after it; `FREE[t,x,k] = 1` only if `k` ran and no later node of
//! the stage reads `x` and `x` is not kept into `t + 1` (Checkmate's aggregated hazard
//! inequality, or one inequality per hazard: [`Linearisation`]). Checkmate's other
//! inequality, forcing a free when no hazard is left, is dropped: freeing never costs, so
//! the minimum is the same and the relaxation only gets weaker (still a lower bound).
//! Objective: `Σ flops(i) R[t,i]` (`Graph::node_flops`), reported against the step's forward
//! plus backward FLOPs as `lowmem_compile::remat::Step::overhead` does.
//!
//! Tractability (ResNet-50 has over a thousand nodes, `T²` would be millions of each kind):
//! `R[t,i]` exists only up to the last stage at which node `i`'s outputs can still be read
//! (directly by a backward node, or through forward nodes that can be recomputed later),
//! `S[t,x]` likewise; `FREE` only for a node's inputs and outputs at the stages where the
//! node can run, and not where the stage's own node reads `x` later. Leaving out a variable
//! fixes it at 0 where 0 is what every optimal schedule does (storing or computing what
//! nothing reads later only costs), so the minimum is unchanged.
//!
//! # Why it is a lower bound on lowmem's recomputation
//!
//! Every schedule lowmem produces is a feasible integral point of this MILP at the same
//! budget, measured in the memory model below:
//!
//! * lowmem's rewrite ([`lowmem_remat::rematerialize`]) runs the original nodes in one order
//!   whatever the schedule (the first forward sweep, then each stage's backward nodes in
//!   reverse stage order, other nodes as soon as their inputs exist); recomputing clones run
//!   between two originals, each sweep in forward order, each node at most once per gap.
//!   That order is `π`, taken from the store-all rewrite; each gap is a stage.
//! * A clone reads the newest copy of each value and an older copy is dead by then, so at
//!   most one copy of a value lives: `S` is "a copy lives across the stage boundary".
//! * lowmem's liveness (`lowmem_schedule::Liveness`) keeps a tensor from its write to after
//!   its last reader, inputs and outputs of a node together unless the node overwrites an
//!   input in place (`lowmem_schedule::in_place_capable`, the input dying there), plus each
//!   node's workspace. The model counts exactly that, in place included (the in-place input
//!   is subtracted at its last reader's peak, when it is freed there), except graph outputs
//!   (lowmem keeps them to the end; the model frees them after their last reader, i.e. less
//!   memory). The planned arena is at least the live bytes at every point (fragmentation and
//!   alignment only add).
//!
//! So at a budget `B`, any lowmem schedule whose planned peak (persistent bytes plus the
//! arena) is at most `B` satisfies the model's constraint `activation bytes ≤ B − persistent`
//! at every node, and its recomputed FLOPs are at least the MILP optimum, which is at least
//! this LP's. The bound is for the live-bytes model: it is not a bound for a planner that
//! shares more memory than that (e.g. in place across nodes lowmem does not mark), and it
//! fixes the order of the original nodes to `π` (reordering the step, e.g. the planner's
//! memory-aware order of the unrewritten step, is outside it).
//!
//! The reported figure is the Lagrangian bound from HiGHS's row duals, computed here
//! ([`Bound::recompute_flops`]): valid for any dual vector, so it needs neither an optimal
//! nor an exact solve, and is a bound under a time limit too (weaker).
//!
//! # How tight
//!
//! Valid, but weak on the steps measured: the relaxation smears a recomputation over many
//! stages. On squeezenet at half the peak it keeps ~1% of the first convolution's output
//! across the whole step and recomputes ~1% of the ReLU after it in each of ~120 stages, so
//! `S[t+1,x] ≤ S[t,x] + R[t,p]` rebuilds the 100 MB ReLU output for its backward at the cost
//! of one ReLU (0.05% of the step), where an integral schedule must keep the whole input at
//! some stage (lowmem's `optimal`: +15.8%). The per-hazard linearisation gives the same
//! bound there; HiGHS's MILP found no integral point within minutes on these steps.
//!
//! Without the `highs` feature the crate builds the LP ([`build`]) but [`lower_bound`]
//! returns [`Error::NoSolver`]; CI never builds HiGHS.

use std::time::{Duration, Instant};

use lowmem_autodiff::TrainingGraph;
use lowmem_ir::{Graph, NodeId, TensorId};
use lowmem_schedule::{Kind, Roles, in_place_capable};

/// Why no bound could be computed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The crate was built without its solver.
    #[error(
        "lowmem-lpbound was built without HiGHS: rebuild with the `highs` feature, e.g. \
         `cargo bench --bench lpbound --features lp` (needs `apt-get install -y cmake g++ \
         libclang-dev`)"
    )]
    NoSolver,
    /// The budget does not cover what the step holds throughout.
    #[error(
        "budget {budget} bytes is at most the persistent bytes {persistent} (weights, \
         gradients, optimizer state, inputs): no room for any activation"
    )]
    BelowPersistent { budget: u64, persistent: u64 },
    /// A byte or index count overflowed.
    #[error("size overflow: {0}")]
    Overflow(&'static str),
    /// HiGHS failed or returned no usable solution.
    #[error("HiGHS: {0}")]
    Solver(String),
}

/// How `FREE[t,x,k] ≤ "no hazard"` is linearised. Both have the same integral points.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Linearisation {
    /// Checkmate's one inequality `h·(1 − FREE) ≥ Σ hazards` (`h` = number of hazards).
    #[default]
    Checkmate,
    /// One inequality `FREE + hazard ≤ 1` per hazard: more rows, a tighter (higher) bound.
    PerHazard,
}

/// Solver settings.
#[derive(Clone, Debug)]
pub struct Options {
    pub time_limit: Duration,
    pub threads: u32,
    /// HiGHS's `solver` option: `"choose"`, `"simplex"`, `"ipm"` or `"pdlp"`.
    pub solver: &'static str,
    pub linearisation: Linearisation,
    /// Solve the MILP itself (`R`, `S`, `FREE` binary) instead of its relaxation, to see the
    /// relaxation's gap on small steps; the bound is then HiGHS's MIP dual bound.
    pub integral: bool,
    /// HiGHS's log on stdout.
    pub verbose: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            time_limit: Duration::from_secs(600),
            threads: 1,
            solver: "choose",
            linearisation: Linearisation::Checkmate,
            integral: false,
            verbose: false,
        }
    }
}

/// What HiGHS reported.
#[derive(Clone, Debug, PartialEq)]
pub enum Status {
    Optimal,
    /// No schedule of the model fits: the bound is infinite.
    Infeasible,
    /// Stopped at the time limit: the bound is the Lagrangian bound of the duals so far.
    TimeLimit,
    Other(String),
}

/// The bound at one budget.
#[derive(Clone, Debug)]
pub struct Bound {
    pub status: Status,
    /// Lower bound on the recomputed FLOPs of any schedule that fits (`None`: no valid
    /// dual; `f64::INFINITY`: none fits).
    pub recompute_flops: Option<f64>,
    /// `recompute_flops` / (forward + backward FLOPs of the step).
    pub overhead: Option<f64>,
    /// The LP's objective as HiGHS reports it, as overhead (optimal: equals `overhead` up to
    /// tolerances; otherwise not a bound).
    pub lp_objective: Option<f64>,
    pub budget_bytes: u64,
    /// `budget_bytes` less the persistent bytes.
    pub activation_budget: u64,
    pub build_seconds: f64,
    pub solve_seconds: f64,
    pub variables: usize,
    pub constraints: usize,
    pub nonzeros: usize,
}

/// The LP in row form: columns have bounds `[0, upper]`.
#[derive(Clone, Debug, Default)]
pub struct Lp {
    /// Objective per column: FLOPs / step FLOPs, so the objective is the overhead.
    pub cost: Vec<f64>,
    pub upper: Vec<f64>,
    pub row_lo: Vec<f64>,
    pub row_hi: Vec<f64>,
    /// Row `r`'s entries are `entries[row_start[r]..row_start[r + 1]]`.
    pub row_start: Vec<usize>,
    pub entries: Vec<(u32, f64)>,
    /// Forward + backward FLOPs of the step.
    pub step_flops: u64,
    /// Persistent bytes (outside the budgeted activations).
    pub persistent: u64,
    /// Number of `R` columns (the first ones).
    pub recompute_columns: usize,
    /// Per column: binary in the MILP (`R`, `S`, `FREE`; not the memory levels `A`).
    pub binary: Vec<bool>,
}

impl Lp {
    pub fn rows(&self) -> usize {
        self.row_lo.len()
    }

    fn col(&mut self, cost: f64, upper: f64) -> Result<u32, Error> {
        let c = u32::try_from(self.cost.len()).map_err(|_| Error::Overflow("columns"))?;
        self.cost.push(cost);
        self.upper.push(upper);
        self.binary.push(true);
        Ok(c)
    }

    fn row(&mut self, lo: f64, hi: f64, terms: &[(u32, f64)]) {
        if self.row_start.is_empty() {
            self.row_start.push(0);
        }
        self.row_lo.push(lo);
        self.row_hi.push(hi);
        self.entries
            .extend(terms.iter().copied().filter(|&(_, v)| v != 0.0));
        self.row_start.push(self.entries.len());
    }

    /// The Lagrangian bound `min_{0 ≤ x ≤ u} cᵀx − yᵀ(Ax − b)` for row duals `y`, each
    /// projected onto the sign its row's finite bounds allow: valid for any `y`.
    pub fn lagrangian(&self, y: &[f64]) -> f64 {
        let mut d = self.cost.clone();
        let mut v = 0.0;
        for (r, &yr) in y.iter().enumerate().take(self.rows()) {
            let mut yr = yr;
            if self.row_lo[r] == f64::NEG_INFINITY {
                yr = yr.min(0.0);
            }
            if self.row_hi[r] == f64::INFINITY {
                yr = yr.max(0.0);
            }
            if yr == 0.0 {
                continue;
            }
            v += if yr > 0.0 {
                yr * self.row_lo[r]
            } else {
                yr * self.row_hi[r]
            };
            for &(c, a) in &self.entries[self.row_start[r]..self.row_start[r + 1]] {
                d[c as usize] -= yr * a;
            }
        }
        v + d
            .iter()
            .zip(&self.upper)
            .map(|(&dj, &u)| dj.min(0.0) * u)
            .sum::<f64>()
    }

    /// Whether the point `x` meets every row and bound within `tol`.
    pub fn feasible(&self, x: &[f64], tol: f64) -> Result<(), String> {
        for (c, (&v, &u)) in x.iter().zip(&self.upper).enumerate() {
            if v < -tol || v > u + tol {
                return Err(format!("column {c} = {v} outside [0, {u}]"));
            }
        }
        for r in 0..self.rows() {
            let s: f64 = self.entries[self.row_start[r]..self.row_start[r + 1]]
                .iter()
                .map(|&(c, a)| a * x[c as usize])
                .sum();
            if s < self.row_lo[r] - tol || s > self.row_hi[r] + tol {
                return Err(format!(
                    "row {r}: {s} outside [{}, {}]",
                    self.row_lo[r], self.row_hi[r]
                ));
            }
        }
        Ok(())
    }
}

/// The order in which lowmem's rewrite runs the step's original nodes: that of the
/// store-all schedule's rewritten step (every schedule's rewrite keeps it). Falls back to
/// the graph's order where the step has no stage chain.
pub fn node_order(tg: &TrainingGraph) -> Vec<NodeId> {
    let program: Vec<NodeId> = tg.graph.node_ids().collect();
    let opts = lowmem_plan::PlanOptions::default();
    let Ok(step) = lowmem_compile::remat::Step::new(tg, opts) else {
        return program;
    };
    let schedule = lowmem_remat::store_all(&step.chain);
    let Ok(r) = lowmem_remat::rematerialize(&tg.graph, &tg.backward_of, &step.stages, &schedule)
    else {
        return program;
    };
    originals_order(&tg.graph, &r.graph, &r.recomputed).unwrap_or(program)
}

/// The original nodes of `g` in the order a rewritten step `rg` runs them (identified by
/// their first output, which keeps its id), or `None` if that is not a permutation of `g`'s.
pub fn originals_order(g: &Graph, rg: &Graph, recomputed: &[bool]) -> Option<Vec<NodeId>> {
    let producers = g.producers();
    let mut seen = vec![false; g.nodes.len()];
    let mut order = Vec::with_capacity(g.nodes.len());
    for (i, n) in rg.nodes.iter().enumerate() {
        if recomputed.get(i).copied().unwrap_or(false) {
            continue;
        }
        let &o = n.outputs.first()?;
        let v = (*producers.get(o.index())?)?;
        if std::mem::replace(&mut seen[v.index()], true) || g.node(v).name != n.name {
            return None;
        }
        order.push(v);
    }
    (order.len() == g.nodes.len()).then_some(order)
}

/// Persistent bytes as `Step::persistent` counts them (state outputs updated in place share
/// their input's buffer and are not counted twice).
pub fn persistent_bytes(g: &Graph, roles: &Roles) -> Result<u64, Error> {
    let mut sum = 0u64;
    for t in g.tensor_ids() {
        if roles.state_alias[t].is_none() && roles.kind[t].persistent() {
            sum = sum
                .checked_add(g.tensor(t).bytes() as u64)
                .ok_or(Error::Overflow("persistent bytes"))?;
        }
    }
    Ok(sum)
}

/// What the model needs of a step, per node and tensor, in stage (`π`) positions.
struct Facts<'g> {
    g: &'g Graph,
    order: Vec<NodeId>,
    pos: Vec<usize>,
    recomputable: Vec<bool>,
    /// Activation bytes (0 for persistent tensors).
    mem: Vec<u64>,
    producer: Vec<Option<NodeId>>,
    consumers: Vec<Vec<NodeId>>,
    /// Forward tensor: an activation produced by a recomputable node.
    forward: Vec<bool>,
    /// Per recomputable node: the last stage at which running it can matter.
    horizon: Vec<usize>,
    /// Per forward tensor: the last stage at which it can be read.
    t_horizon: Vec<usize>,
    /// Per tensor: stage of its last reader (backward tensors' lifetime).
    last_read: Vec<Option<usize>>,
    /// Per node: arena output bytes, workspace bytes.
    out_bytes: Vec<u64>,
    ws_bytes: Vec<u64>,
    /// Per node: the input it may overwrite in place (lowmem's rule), if any.
    in_place: Vec<Option<TensorId>>,
}

impl<'g> Facts<'g> {
    fn new(tg: &'g TrainingGraph, roles: &Roles, order: Vec<NodeId>) -> Result<Self, Error> {
        let g = &tg.graph;
        let (nn, nt) = (g.nodes.len(), g.tensors.len());
        let mut pos = vec![0; nn];
        for (s, &v) in order.iter().enumerate() {
            pos[v.index()] = s;
        }
        let recomputable: Vec<bool> = (0..nn).map(|v| v < tg.backward_start).collect();
        let arena = |t: TensorId| !roles.kind[t].persistent() && roles.kind[t] != Kind::Workspace;
        let mem: Vec<u64> = g
            .tensor_ids()
            .map(|t| {
                if arena(t) {
                    g.tensor(t).bytes() as u64
                } else {
                    0
                }
            })
            .collect();
        let producer = g.producers();
        let consumers = g.consumers();
        let forward: Vec<bool> = g
            .tensor_ids()
            .map(|t| arena(t) && producer[t.index()].is_some_and(|p| recomputable[p.index()]))
            .collect();
        let mut last_read = vec![None; nt];
        for (t, cs) in consumers.iter().enumerate() {
            last_read[t] = cs.iter().map(|c| pos[c.index()]).max();
        }
        let mut horizon = vec![0; nn];
        let mut t_horizon = vec![0; nt];
        for &v in order.iter().rev() {
            if !recomputable[v.index()] {
                continue;
            }
            let mut h = pos[v.index()];
            for &x in &g.node(v).outputs {
                if !forward[x.index()] {
                    continue;
                }
                let hx = consumers[x.index()]
                    .iter()
                    .map(|c| {
                        if recomputable[c.index()] {
                            horizon[c.index()]
                        } else {
                            pos[c.index()]
                        }
                    })
                    .max()
                    .unwrap_or(pos[v.index()]);
                t_horizon[x.index()] = hx;
                h = h.max(hx);
            }
            horizon[v.index()] = h;
        }
        let mut out_bytes = vec![0u64; nn];
        let mut ws_bytes = vec![0u64; nn];
        let mut in_place = vec![None; nn];
        for v in g.node_ids() {
            let node = g.node(v);
            let mut o = 0u64;
            for &x in &node.outputs {
                o = o
                    .checked_add(mem[x.index()])
                    .ok_or(Error::Overflow("node output bytes"))?;
            }
            out_bytes[v.index()] = o;
            ws_bytes[v.index()] = g.node_workspace_bytes(node) as u64;
            if node.outputs.len() == 1 && arena(node.outputs[0]) {
                in_place[v.index()] = (0..node.inputs.len())
                    .find(|&k| {
                        let i = node.inputs[k];
                        arena(i) && !g.outputs.contains(&i) && in_place_capable(g, node, k)
                    })
                    .map(|k| node.inputs[k]);
            }
        }
        Ok(Facts {
            g,
            order,
            pos,
            recomputable,
            mem,
            producer,
            consumers,
            forward,
            horizon,
            t_horizon,
            last_read,
            out_bytes,
            ws_bytes,
            in_place,
        })
    }

    /// Distinct forward inputs of `v`.
    fn forward_inputs(&self, v: NodeId) -> Vec<TensorId> {
        let mut xs: Vec<TensorId> = self
            .g
            .node(v)
            .inputs
            .iter()
            .copied()
            .filter(|x| self.forward[x.index()])
            .collect();
        xs.sort();
        xs.dedup();
        xs
    }

    /// Bytes of non-recomputable activations alive across the start of each stage (produced
    /// before it, last read in it or later): a constant of every stage.
    fn carried_constants(&self) -> Result<Vec<u64>, Error> {
        let t_count = self.order.len();
        let mut diff = vec![0i128; t_count + 1];
        for (x, &m) in self.mem.iter().enumerate() {
            if m == 0 || self.forward[x] {
                continue;
            }
            let (Some(p), Some(last)) = (self.producer[x], self.last_read[x]) else {
                continue;
            };
            let from = self.pos[p.index()] + 1;
            if last >= from {
                diff[from] += i128::from(m);
                diff[last + 1] -= i128::from(m);
            }
        }
        let mut out = Vec::with_capacity(t_count);
        let mut acc = 0i128;
        for d in diff.iter().take(t_count) {
            acc += d;
            out.push(u64::try_from(acc).map_err(|_| Error::Overflow("carried bytes"))?);
        }
        Ok(out)
    }
}

/// The activation peak of the step without recomputation in the model (persistent bytes
/// included): at or above it the bound is 0 (the store-all schedule is a feasible point).
pub fn no_remat_peak(tg: &TrainingGraph, roles: &Roles, order: &[NodeId]) -> Result<u64, Error> {
    let f = Facts::new(tg, roles, order.to_vec())?;
    let carried = f.carried_constants()?;
    let mut peak = 0u64;
    for (t, &v) in f.order.iter().enumerate() {
        // Forward tensors produced before t and read at t or later.
        let mut live = carried[t];
        for (x, &m) in f.mem.iter().enumerate() {
            if f.forward[x]
                && let (Some(p), Some(last)) = (f.producer[x], f.last_read[x])
                && f.pos[p.index()] < t
                && last >= t
            {
                live = live.checked_add(m).ok_or(Error::Overflow("live bytes"))?;
            }
        }
        let freed_in_place = f.in_place[v.index()]
            .filter(|x| f.last_read[x.index()] == Some(t))
            .map_or(0, |x| f.mem[x.index()].min(f.out_bytes[v.index()]));
        let p = live
            .checked_add(f.out_bytes[v.index()] + f.ws_bytes[v.index()])
            .ok_or(Error::Overflow("peak"))?
            - freed_in_place;
        peak = peak.max(p);
    }
    peak.checked_add(persistent_bytes(&tg.graph, roles)?)
        .ok_or(Error::Overflow("peak"))
}

/// Builds the LP for `tg` (nodes in `order`) at `budget_bytes` (the whole step's, persistent
/// bytes included).
pub fn build(
    tg: &TrainingGraph,
    roles: &Roles,
    order: &[NodeId],
    budget_bytes: u64,
    lin: Linearisation,
) -> Result<Lp, Error> {
    let f = Facts::new(tg, roles, order.to_vec())?;
    let g = f.g;
    let persistent = persistent_bytes(g, roles)?;
    if budget_bytes <= persistent {
        return Err(Error::BelowPersistent {
            budget: budget_bytes,
            persistent,
        });
    }
    let unit = (budget_bytes - persistent) as f64;
    let m = |b: u64| b as f64 / unit;
    let mut step_flops = 0u64;
    for n in &g.nodes {
        step_flops = step_flops.saturating_add(g.node_flops(n));
    }
    let total = step_flops.max(1) as f64;
    let t_count = f.order.len();
    let mut lp = Lp {
        step_flops,
        persistent,
        ..Lp::default()
    };

    // R columns: recomputable node i at stages pos(i)+1 ..= horizon(i).
    let mut r_base = vec![u32::MAX; g.nodes.len()];
    let mut runnable: Vec<Vec<NodeId>> = vec![Vec::new(); t_count];
    for &v in &f.order {
        let i = v.index();
        if !f.recomputable[i] || f.horizon[i] <= f.pos[i] {
            continue;
        }
        let cost = g.node_flops(g.node(v)) as f64 / total;
        r_base[i] = lp.cost.len() as u32;
        for stage in &mut runnable[f.pos[i] + 1..=f.horizon[i]] {
            lp.col(cost, 1.0)?;
            stage.push(v);
        }
    }
    lp.recompute_columns = lp.cost.len();
    // R[t, v] as (column or the constant 1 for the stage's own node).
    let r_of = |v: NodeId, t: usize| -> Option<u32> {
        let i = v.index();
        (f.recomputable[i] && t > f.pos[i] && t <= f.horizon[i])
            .then(|| r_base[i] + (t - f.pos[i] - 1) as u32)
    };
    // S columns: forward tensor x at stages pos(p)+1 ..= t_horizon(x).
    let mut s_base = vec![u32::MAX; g.tensors.len()];
    let mut kept: Vec<Vec<TensorId>> = vec![Vec::new(); t_count];
    for x in g.tensor_ids() {
        if !f.forward[x.index()] {
            continue;
        }
        let p = f.pos[f.producer[x.index()].expect("forward").index()];
        if f.t_horizon[x.index()] <= p {
            continue;
        }
        s_base[x.index()] = lp.cost.len() as u32;
        for stage in &mut kept[p + 1..=f.t_horizon[x.index()]] {
            lp.col(0.0, 1.0)?;
            stage.push(x);
        }
    }
    let s_of = |x: TensorId, t: usize| -> Option<u32> {
        if !f.forward[x.index()] {
            return None;
        }
        let p = f.pos[f.producer[x.index()]?.index()];
        (t > p && t <= f.t_horizon[x.index()]).then(|| s_base[x.index()] + (t - p - 1) as u32)
    };
    // Keeping: S[t+1,x] ≤ S[t,x] + R[t,p(x)] (S[p+1,x] ≤ 1 holds trivially).
    for x in g.tensor_ids() {
        if s_base[x.index()] == u32::MAX {
            continue;
        }
        let p = f.producer[x.index()].expect("forward");
        for t in f.pos[p.index()] + 1..f.t_horizon[x.index()] {
            let mut terms = vec![(s_of(x, t + 1).expect("in range"), 1.0)];
            terms.push((s_of(x, t).expect("in range"), -1.0));
            if let Some(r) = r_of(p, t) {
                terms.push((r, -1.0));
            }
            lp.row(f64::NEG_INFINITY, 0.0, &terms);
        }
    }

    let carried = f.carried_constants()?;
    let mut terms: Vec<(u32, f64)> = Vec::new();
    for (t, &own) in f.order.iter().enumerate() {
        let seq: Vec<(NodeId, Option<u32>)> = runnable[t]
            .iter()
            .map(|&k| (k, r_of(k, t)))
            .chain(std::iter::once((own, None)))
            .collect();
        let reads_later = |x: TensorId, k: NodeId| -> Vec<Option<u32>> {
            f.consumers[x.index()]
                .iter()
                .filter(|&&j| f.pos[j.index()] > f.pos[k.index()] && f.pos[j.index()] <= t)
                .filter_map(|&j| {
                    if j == own {
                        Some(None)
                    } else {
                        r_of(j, t).map(Some)
                    }
                })
                .collect()
        };
        // Memory before the first node: the carried constant and the kept tensors.
        let mut a_const = m(carried[t]);
        let mut a_terms: Vec<(u32, f64)> = kept[t]
            .iter()
            .map(|&x| (s_of(x, t).expect("kept"), m(f.mem[x.index()])))
            .collect();
        for (idx, &(k, rk)) in seq.iter().enumerate() {
            // Dependencies: every forward input computed in the stage or kept into it.
            for x in f.forward_inputs(k) {
                let p = f.producer[x.index()].expect("forward");
                terms.clear();
                let mut lo_const = 0.0;
                match rk {
                    Some(c) => terms.push((c, 1.0)),
                    None => lo_const = 1.0,
                }
                if let Some(r) = r_of(p, t) {
                    terms.push((r, -1.0));
                }
                if let Some(s) = s_of(x, t) {
                    terms.push((s, -1.0));
                }
                lp.row(f64::NEG_INFINITY, -lo_const, &terms);
            }
            // Frees after k: its forward inputs and outputs with no hazard left.
            let mut frees: Vec<(u32, f64)> = Vec::new();
            let mut in_place_col: Option<(u32, f64)> = None;
            let mut const_freed_in_place = 0.0;
            let out_of_k: Vec<TensorId> = g
                .node(k)
                .outputs
                .iter()
                .copied()
                .filter(|x| f.forward[x.index()])
                .collect();
            for x in f.forward_inputs(k).into_iter().chain(out_of_k) {
                let later = reads_later(x, k);
                if later.contains(&None) {
                    continue; // the stage's own node reads x later: never freed here
                }
                let keep = s_of(x, t + 1);
                let mut hazards: Vec<(u32, f64)> =
                    later.iter().map(|c| (c.expect("col"), 1.0)).collect();
                if let Some(s) = keep {
                    hazards.push((s, 1.0));
                }
                let col = lp.col(0.0, 1.0)?;
                // hazard "k did not run": 1 − R[t,k].
                match lin {
                    Linearisation::Checkmate => {
                        let h = hazards.len() + usize::from(rk.is_some());
                        if h > 0 {
                            // h·FREE + Σ hazards (− R[t,k]) ≤ h − (1 if R[t,k] is a column)
                            terms.clear();
                            terms.push((col, h as f64));
                            terms.extend(hazards.iter().copied());
                            let mut hi = h as f64;
                            if let Some(c) = rk {
                                terms.push((c, -1.0));
                                hi -= 1.0;
                            }
                            lp.row(f64::NEG_INFINITY, hi, &terms);
                        }
                    }
                    Linearisation::PerHazard => {
                        for &(c, _) in &hazards {
                            lp.row(f64::NEG_INFINITY, 1.0, &[(col, 1.0), (c, 1.0)]);
                        }
                        if let Some(c) = rk {
                            lp.row(f64::NEG_INFINITY, 0.0, &[(col, 1.0), (c, -1.0)]);
                        }
                    }
                }
                let mx = m(f.mem[x.index()]);
                frees.push((col, mx));
                if f.in_place[k.index()] == Some(x) {
                    in_place_col = Some((col, mx.min(m(f.out_bytes[k.index()]))));
                }
            }
            if rk.is_none()
                && let Some(x) = f.in_place[k.index()]
                && !f.forward[x.index()]
                && f.last_read[x.index()] == Some(t)
            {
                const_freed_in_place = m(f.mem[x.index()].min(f.out_bytes[k.index()]));
            }
            // Peak while k runs: A + R·(outputs + workspace) − in-place input ≤ 1.
            let alloc = m(f.out_bytes[k.index()]) + m(f.ws_bytes[k.index()]);
            terms.clear();
            terms.extend(a_terms.iter().copied());
            let mut hi = 1.0 - a_const;
            match rk {
                Some(c) => terms.push((c, alloc)),
                None => hi -= alloc - const_freed_in_place,
            }
            if let Some((c, b)) = in_place_col {
                terms.push((c, -b));
            }
            lp.row(f64::NEG_INFINITY, hi, &terms);
            if idx + 1 == seq.len() {
                break;
            }
            // A_next = A + R·outputs − Σ freed.
            let next = lp.col(0.0, 1.0)?;
            lp.binary[next as usize] = false;
            terms.clear();
            terms.push((next, 1.0));
            terms.extend(a_terms.iter().map(|&(c, v)| (c, -v)));
            let rhs = a_const;
            let c = rk.expect("only the last node is the stage's own");
            terms.push((c, -m(f.out_bytes[k.index()])));
            terms.extend(frees.iter().copied());
            lp.row(rhs, rhs, &terms);
            a_const = 0.0;
            a_terms = vec![(next, 1.0)];
        }
    }
    Ok(lp)
}

/// The LP bound on the recomputation overhead of `tg` at `budget_bytes` (the whole step's
/// planned-peak budget, persistent bytes included; roles as `lowmem_compile::remat::
/// training_roles`).
pub fn lower_bound(
    tg: &TrainingGraph,
    roles: &Roles,
    budget_bytes: u64,
    opts: &Options,
) -> Result<Bound, Error> {
    let t0 = Instant::now();
    let order = node_order(tg);
    let lp = build(tg, roles, &order, budget_bytes, opts.linearisation)?;
    let build_seconds = t0.elapsed().as_secs_f64();
    let mut b = Bound {
        status: Status::Other("not solved".into()),
        recompute_flops: None,
        overhead: None,
        lp_objective: None,
        budget_bytes,
        activation_budget: budget_bytes - lp.persistent,
        build_seconds,
        solve_seconds: 0.0,
        variables: lp.cost.len(),
        constraints: lp.rows(),
        nonzeros: lp.entries.len(),
    };
    let t1 = Instant::now();
    let (status, objective, duals, mip_bound) = solve(&lp, opts)?;
    b.solve_seconds = t1.elapsed().as_secs_f64();
    b.lp_objective = objective;
    let step = lp.step_flops.max(1) as f64;
    match status {
        Status::Infeasible => {
            b.overhead = Some(f64::INFINITY);
            b.recompute_flops = Some(f64::INFINITY);
        }
        _ if opts.integral => {
            if let Some(v) = mip_bound {
                b.overhead = Some(v.max(0.0));
                b.recompute_flops = Some(v.max(0.0) * step);
            }
        }
        _ => {
            if let Some(y) = duals {
                let neg: Vec<f64> = y.iter().map(|v| -v).collect();
                // Any dual vector gives a bound; HiGHS's sign convention is either.
                let ov = lp.lagrangian(&y).max(lp.lagrangian(&neg)).max(0.0);
                b.overhead = Some(ov);
                b.recompute_flops = Some(ov * step);
            }
        }
    }
    b.status = status;
    Ok(b)
}

/// (status, objective, row duals, MIP dual bound).
type Solved = (Status, Option<f64>, Option<Vec<f64>>, Option<f64>);

#[cfg(not(feature = "highs"))]
fn solve(_: &Lp, _: &Options) -> Result<Solved, Error> {
    Err(Error::NoSolver)
}

#[cfg(feature = "highs")]
fn solve(lp: &Lp, opts: &Options) -> Result<Solved, Error> {
    use highs::{HighsModelStatus as H, RowProblem, Sense};
    let mut pb = RowProblem::default();
    let cols: Vec<highs::Col> = (0..lp.cost.len())
        .map(|j| {
            let int = opts.integral && lp.binary[j];
            pb.add_column_with_integrality(lp.cost[j], 0.0..=lp.upper[j], int)
        })
        .collect();
    for r in 0..lp.rows() {
        let row = lp.entries[lp.row_start[r]..lp.row_start[r + 1]]
            .iter()
            .map(|&(c, v)| (cols[c as usize], v));
        let (lo, hi) = (lp.row_lo[r], lp.row_hi[r]);
        if lo == f64::NEG_INFINITY {
            pb.add_row(..=hi, row);
        } else {
            pb.add_row(lo..=hi, row);
        }
    }
    let mut model = pb.optimise(Sense::Minimise);
    if !opts.verbose {
        model.make_quiet();
    }
    let set = |model: &mut highs::Model, k: &str, v: &str| {
        model
            .try_set_option(k, v)
            .map_err(|e| Error::Solver(format!("option {k}={v}: {e:?}")))
    };
    set(&mut model, "solver", opts.solver)?;
    model
        .try_set_option("time_limit", opts.time_limit.as_secs_f64())
        .map_err(|e| Error::Solver(format!("time_limit: {e:?}")))?;
    model
        .try_set_option("threads", opts.threads.max(1) as i32)
        .map_err(|e| Error::Solver(format!("threads: {e:?}")))?;
    let solved = model
        .try_solve()
        .map_err(|e| Error::Solver(format!("solve: {e:?}")))?;
    let status = match solved.status() {
        H::Optimal => Status::Optimal,
        H::Infeasible => Status::Infeasible,
        H::ReachedTimeLimit => Status::TimeLimit,
        s => Status::Other(format!("{s:?}")),
    };
    let obj = solved.objective_value();
    let obj = obj.is_finite().then_some(obj);
    if opts.integral {
        // The MIP dual bound is the bound; no row duals.
        let dual = solved
            .double_info_value(c"mip_dual_bound")
            .ok()
            .filter(|v| v.is_finite());
        return Ok((status, obj, None, dual));
    }
    let sol = solved.get_solution();
    let duals = sol.dual_rows();
    let duals =
        (duals.len() == lp.rows() && duals.iter().all(|v| v.is_finite())).then(|| duals.to_vec());
    Ok((status, obj, duals, None))
}
