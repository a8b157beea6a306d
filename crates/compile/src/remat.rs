//! Checkpointing a training step under a memory budget (`--remat`, `--budget`,
//! `lowmem frontier`), every figure measured on a real plan.
//!
//! The step's forward pass is cut into a chain of stages ([`lowmem_remat::stages_from`]); a
//! scheme picks a schedule over the chain using the chain's cost model; the schedule is
//! turned into a rewritten step with recompute nodes ([`lowmem_remat::rematerialize`]); and
//! that step is planned in its own order. The planned peak (persistent bytes plus the
//! arena) is what is compared with the budget. The chain model leaves out what every
//! schedule holds (weights, gradients, optimizer state, inputs) and only approximates
//! liveness inside a stage, so `optimal` first offsets the budget by the difference between
//! the planned and the modelled store-all peaks, then tightens by the excess and retries
//! while the real plan is over the budget.

use std::cell::OnceCell;
use std::time::Instant;

use lowmem_autodiff::{GradGraph, TrainingGraph};
use lowmem_ir::{Graph, NodeId, TensorId};
use lowmem_plan::{MemoryPlan, PlanOptions, plan};
use lowmem_remat::{Chain, Schedule, Stage};
use lowmem_schedule::{Kind, Roles};

use crate::{CompileError as Error, human_bytes};

/// Memory slots of the optimal scheme's dynamic programme.
pub const GRANULARITY: usize = 500;

/// Retries of `optimal` when the real plan exceeds the budget.
const TRIES: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Store every activation the backward pass reads.
    None,
    /// Chen et al. 2016, Algorithm 3, threshold searched around `sqrt(x·y/2)`.
    Sqrt,
    /// Chen's recursive scheme, `O(log n)` checkpoints.
    Log,
    /// Griewank's binomial checkpointing with `s` slots.
    Revolve,
    /// The Rotor dynamic programme: least recomputation under the budget.
    Optimal,
}

impl Scheme {
    pub const ALL: [Scheme; 5] = [
        Scheme::None,
        Scheme::Sqrt,
        Scheme::Log,
        Scheme::Revolve,
        Scheme::Optimal,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scheme::None => "none",
            Scheme::Sqrt => "sqrt",
            Scheme::Log => "log",
            Scheme::Revolve => "revolve",
            Scheme::Optimal => "optimal",
        }
    }
}

/// Parses a byte count: plain bytes (`1048576`), binary units (`512MiB`, `4GiB`, `1.5GiB`,
/// also `K`/`M`/`G`/`T`) or decimal ones (`500MB`, `2GB`). Case-insensitive; spaces allowed
/// between number and unit.
pub fn parse_budget(s: &str) -> Result<u64, Error> {
    let bad = |why: &str| {
        Error::Budget(format!(
            "budget '{s}' {why}: give bytes (e.g. 1073741824) or a size such as 512MiB, 4GiB, 2GB"
        ))
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    if num.is_empty() {
        return Err(bad("has no number"));
    }
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(bad(&format!("has an unknown unit '{unit}'"))),
    };
    if let Ok(v) = num.parse::<u64>() {
        return v.checked_mul(mult).ok_or_else(|| bad("overflows 64 bits"));
    }
    let v: f64 = num.parse().map_err(|_| bad("is not a number"))?;
    let bytes = (v * mult as f64).round();
    if !(bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64) {
        return Err(bad("is out of range"));
    }
    Ok(bytes as u64)
}

/// A stage recorded partially: its record keeps part of what its backward reads, and the
/// backward re-runs the rest ([`lowmem_remat::StageOption`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartialRecord {
    pub stage: usize,
    /// Bytes of the record (kept tensors and the stage output).
    pub record_bytes: u64,
    /// Bytes of the full record.
    pub full_record_bytes: u64,
    /// The saved tensors dropped from the record and re-run in the backward.
    pub dropped: Vec<String>,
    /// FLOPs re-run in the backward.
    pub recompute_flops: u64,
    /// The per-stage solver's proven lower bound on those FLOPs at this record size.
    pub lower_bound_flops: u64,
}

/// A planned step (with or without rematerialisation) and its figures.
#[derive(Debug)]
pub struct Outcome {
    pub scheme: Scheme,
    /// What the scheme chose (threshold, slots, chain budget), for people.
    pub detail: String,
    pub budget: Option<u64>,
    pub graph: Graph,
    pub roles: Roles,
    pub plan: MemoryPlan,
    /// Names of the stage boundaries held when the loss runs.
    pub checkpoints: Vec<String>,
    pub recomputed_nodes: usize,
    pub recompute_flops: u64,
    /// The schedule over the stages (`None` for the unrewritten step).
    pub schedule: Option<Schedule>,
    /// Per node of `graph`: the stage it works for (forward, recomputation or backward),
    /// `None` for nodes tied to no stage (loss, optimizer). Empty where the step has no
    /// stage chain (micro-batched).
    pub node_stage: Vec<Option<u32>>,
    /// Per node of `graph`: whether it recomputes a forward node (empty as `node_stage`).
    pub recomputed: Vec<bool>,
    /// The stages the schedule records partially.
    pub partial: Vec<PartialRecord>,
}

impl Outcome {
    pub fn peak(&self) -> u64 {
        self.plan.peak_bytes()
    }
}

/// The roles of a training step's tensors: parameters, optimizer state and BatchNorm
/// statistics (updated in place) and parameter gradients are persistent.
pub fn training_roles(tg: &TrainingGraph) -> Roles {
    let mut roles = Roles::training_step(
        &tg.graph,
        tg.state.iter().map(|s| {
            (
                s.input,
                s.output,
                s.kind == lowmem_autodiff::StateKind::Parameter,
            )
        }),
        tg.grads.iter().map(|&(_, g)| g),
    );
    // Micro-batched: each gradient's running sums overwrite one another in its persistent
    // buffer (from micro-batch 0's gradient on), as in-place state updates do.
    for chain in &tg.accumulate {
        if chain
            .iter()
            .any(|&t| roles.kind[t] != Kind::Activation && roles.kind[t] != Kind::Gradient)
        {
            continue;
        }
        for w in chain.windows(2) {
            roles.kind[w[0]] = Kind::Gradient;
            roles.kind[w[1]] = Kind::Gradient;
            roles.state_alias[w[1]] = Some(w[0]);
        }
    }
    roles
}

/// FLOPs of the forward and loss nodes (those before `backward_start`, or those `forward`
/// marks in a micro-batched step) and of the rest.
pub(crate) fn split_flops(
    g: &Graph,
    backward_start: usize,
    forward: Option<&[bool]>,
) -> (u64, u64) {
    let (mut fwd, mut bwd) = (0u64, 0u64);
    for (v, node) in g.nodes.iter().enumerate() {
        let f = g.node_flops(node);
        let is_fwd = match forward {
            Some(m) => m.get(v).copied().unwrap_or(false),
            None => v < backward_start,
        };
        if is_fwd {
            fwd = fwd.saturating_add(f);
        } else {
            bwd = bwd.saturating_add(f);
        }
    }
    (fwd, bwd)
}

/// A frontier point.
#[derive(Clone, Debug)]
pub struct Point {
    pub scheme: Scheme,
    pub detail: String,
    pub peak: u64,
    pub recompute_flops: u64,
    pub overhead: f64,
    pub checkpoints: usize,
}

/// A training (or gradient) step cut into stages, ready to be rematerialised and planned.
pub struct Step<'a> {
    pub graph: &'a Graph,
    /// Per node, the forward node whose gradient rule emitted it.
    pub backward_of: &'a [Option<NodeId>],
    pub roles: Roles,
    pub stages: Vec<Stage>,
    pub chain: Chain,
    /// FLOPs of the forward pass and loss (nodes before `backward_start`).
    pub forward_flops: u64,
    /// FLOPs of the backward pass and the optimizer update.
    pub backward_flops: u64,
    pub opts: PlanOptions,
    /// Whether `optimal` may record stages partially (record options inside the stages);
    /// `false` keeps to whole-stage checkpointing, for comparison.
    pub node_level: bool,
    /// The tensors that require a gradient.
    params: Vec<TensorId>,
    /// The chain with record options inside the stages (solved on first use).
    inner: OnceCell<Result<lowmem_remat::InnerOptions, String>>,
    none: OnceCell<(u64, u64)>,
    min_feasible: OnceCell<(u64, Option<Schedule>)>,
}

impl<'a> Step<'a> {
    /// Cuts `tg`'s forward pass into stages, from its first data input to the loss.
    pub fn new(tg: &'a TrainingGraph, opts: PlanOptions) -> Result<Step<'a>, Error> {
        Step::from_parts(
            &tg.graph,
            &tg.data,
            tg.loss,
            &tg.backward_of,
            tg.backward_start,
            &tg.grads,
            training_roles(tg),
            opts,
        )
    }

    /// A gradient step (`lowmem grad`: loss and weight gradients, no update) cut into
    /// stages; `data` are its data inputs.
    pub fn for_gradients(
        gg: &'a GradGraph,
        data: &[TensorId],
        opts: PlanOptions,
    ) -> Result<Step<'a>, Error> {
        let roles = Roles::training_step(&gg.graph, [], gg.grads.iter().map(|&(_, g)| g));
        Step::from_parts(
            &gg.graph,
            data,
            gg.loss,
            &gg.backward_of,
            gg.backward_start,
            &gg.grads,
            roles,
            opts,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn from_parts(
        g: &'a Graph,
        data: &[TensorId],
        loss: TensorId,
        backward_of: &'a [Option<NodeId>],
        backward_start: usize,
        grads: &[(TensorId, TensorId)],
        roles: Roles,
        opts: PlanOptions,
    ) -> Result<Step<'a>, Error> {
        let stages = data
            .iter()
            .map(|&d| lowmem_remat::stages_from(g, d, loss))
            .find(|s| !s.is_empty())
            .ok_or_else(|| {
                Error::Model("checkpointing: the loss depends on no data input".into())
            })?;
        // The tensors that require a gradient: the weights being differentiated.
        let params: Vec<TensorId> = grads.iter().map(|&(w, _)| w).collect();
        let chain = lowmem_remat::chain_of_step(g, backward_of, &stages, &params)
            .map_err(|e| Error::Internal(format!("the chain's cost model: {e}")))?;
        let (fwd, bwd) = split_flops(g, backward_start, None);
        Ok(Step {
            graph: g,
            backward_of,
            roles,
            stages,
            chain,
            forward_flops: fwd,
            backward_flops: bwd,
            opts,
            node_level: true,
            params,
            inner: OnceCell::new(),
            none: OnceCell::new(),
            min_feasible: OnceCell::new(),
        })
    }

    /// The chain with record options inside each stage, and how they were solved: what
    /// `optimal` works on.
    pub fn inner(&self) -> Result<&lowmem_remat::InnerOptions, Error> {
        self.inner
            .get_or_init(|| {
                if !self.node_level {
                    return Ok(lowmem_remat::InnerOptions {
                        chain: self.chain.clone(),
                        options: vec![Vec::new(); self.stages.len()],
                        solves: Vec::new(),
                    });
                }
                lowmem_remat::chain_with_options(
                    self.graph,
                    self.backward_of,
                    &self.stages,
                    &self.params,
                    lowmem_remat::SolveLimits::default(),
                )
                .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| Error::Internal(format!("the stages' record options: {e}")))
    }

    pub fn overhead(&self, recompute_flops: u64) -> f64 {
        recompute_flops as f64 / (self.forward_flops + self.backward_flops).max(1) as f64
    }

    pub fn point(&self, o: &Outcome) -> Point {
        Point {
            scheme: o.scheme,
            detail: o.detail.clone(),
            peak: o.peak(),
            recompute_flops: o.recompute_flops,
            overhead: self.overhead(o.recompute_flops),
            checkpoints: o.checkpoints.len(),
        }
    }

    fn boundary_names(&self, js: &[usize]) -> Vec<String> {
        js.iter()
            .map(|&j| self.graph.tensor(self.stages[j].input).name.clone())
            .collect()
    }

    /// The step as built, planned with the planner's free choice of order.
    pub fn none(&self) -> Outcome {
        let p = plan(self.graph, &self.roles, &self.opts);
        let _ = self.none.set((
            p.peak_bytes(),
            self.chain_peak(&lowmem_remat::store_all(&self.chain)),
        ));
        let n = self.stages.len();
        Outcome {
            scheme: Scheme::None,
            detail: format!("{n} stages, all activations kept"),
            budget: None,
            graph: self.graph.clone(),
            roles: self.roles.clone(),
            plan: p,
            checkpoints: self.boundary_names(&(1..n).collect::<Vec<_>>()),
            recomputed_nodes: 0,
            recompute_flops: 0,
            schedule: None,
            node_stage: self.node_stages(),
            recomputed: vec![false; self.graph.nodes.len()],
            partial: Vec::new(),
        }
    }

    /// Per node of the step as built: the stage of a forward node, or of the forward node
    /// whose gradient rule emitted a backward node.
    fn node_stages(&self) -> Vec<Option<u32>> {
        lowmem_remat::works_for(&self.stages, self.backward_of)
            .into_iter()
            .map(|s| s.map(|s| s.0))
            .collect()
    }

    /// (planned peak, modelled peak) of the step without rematerialisation.
    fn none_peaks(&self) -> (u64, u64) {
        if let Some(&v) = self.none.get() {
            return v;
        }
        let _ = self.none();
        *self.none.get().expect("set by none()")
    }

    fn chain_peak(&self, s: &Schedule) -> u64 {
        s.simulate(&self.chain)
            .expect("schemes produce valid schedules")
            .0
    }

    /// Rewrites the step for `schedule` and plans it in its own order.
    pub fn realise(
        &self,
        scheme: Scheme,
        schedule: Schedule,
        detail: String,
    ) -> Result<Outcome, Error> {
        let options: &[Vec<lowmem_remat::StageOption>] = if schedule.options.iter().any(|&o| o > 0)
        {
            &self.inner()?.options
        } else {
            &[]
        };
        let r = lowmem_remat::rematerialize_with(
            self.graph,
            self.backward_of,
            &self.stages,
            options,
            &schedule,
        )
        .map_err(|e| Error::Internal(format!("rematerialisation: {e}")))?;
        let mut roles = self.roles.clone();
        roles.kind.resize(r.graph.tensors.len()); // new tensors: Kind::Activation
        roles.state_alias.resize(r.graph.tensors.len());
        let opts = PlanOptions {
            fixed_order: true,
            ..self.opts.clone()
        };
        let p = plan(&r.graph, &roles, &opts);
        let ck = lowmem_remat::checkpoints(&schedule, self.stages.len());
        let partial: Vec<PartialRecord> = (0..self.stages.len())
            .filter_map(|i| match schedule.option(i) {
                0 => None,
                o => options
                    .get(i)
                    .and_then(|os| os.get(o - 1))
                    .map(|opt| PartialRecord {
                        stage: i,
                        record_bytes: opt.record.saved_bytes,
                        full_record_bytes: self.chain.saved_bytes[i],
                        dropped: opt
                            .dropped
                            .iter()
                            .map(|&t| self.graph.tensor(t).name.clone())
                            .collect(),
                        recompute_flops: opt.record.recompute,
                        lower_bound_flops: opt.lower_bound,
                    }),
            })
            .collect();
        let detail = if partial.is_empty() {
            detail
        } else {
            format!(
                "{detail}; {} of {} stages recorded partially ({} saved tensors recomputed in \
                 the backward)",
                partial.len(),
                self.stages.len(),
                partial.iter().map(|o| o.dropped.len()).sum::<usize>()
            )
        };
        Ok(Outcome {
            scheme,
            detail,
            budget: None,
            graph: r.graph,
            roles,
            plan: p,
            checkpoints: self.boundary_names(&ck),
            recomputed_nodes: r.recomputed_nodes,
            recompute_flops: r.recompute_flops,
            schedule: Some(schedule),
            node_stage: r.stage,
            recomputed: r.recomputed,
            partial,
        })
    }

    /// Chen's sqrt scheme for each threshold, the `keep` lowest modelled peaks, planned;
    /// sorted by planned peak (ties: less recomputation).
    pub fn sqrt_candidates(&self, keep: usize) -> Result<Vec<Outcome>, Error> {
        let mut cands: Vec<(u64, u64, u64, Schedule)> = Vec::new();
        for b in lowmem_remat::chen_sqrt_thresholds(&self.chain) {
            let s = lowmem_remat::chen_sqrt(&self.chain, b);
            let (p, c) = s.simulate(&self.chain).expect("valid");
            if !cands.iter().any(|k| k.3 == s) {
                cands.push((p, c, b, s));
            }
        }
        cands.sort_by_key(|k| (k.0, k.1));
        cands.truncate(keep.max(1));
        let mut out = Vec::new();
        for (_, _, b, s) in cands {
            let segs = lowmem_remat::checkpoints(&s, self.stages.len()).len() + 1;
            out.push(self.realise(
                Scheme::Sqrt,
                s,
                format!("threshold {}, {segs} segments", human_bytes(b)),
            )?);
        }
        out.sort_by_key(|o| (o.peak(), o.recompute_flops));
        Ok(out)
    }

    pub fn log(&self) -> Result<Outcome, Error> {
        let s = lowmem_remat::log_scheme(&self.chain);
        self.realise(Scheme::Log, s, "recursive halving".into())
    }

    pub fn revolve(&self, slots: usize) -> Result<Outcome, Error> {
        let s = lowmem_remat::revolve(self.stages.len(), slots);
        self.realise(Scheme::Revolve, s, format!("{slots} slots"))
    }

    /// The optimal schedule whose real plan fits `budget`: the DP under the budget less the
    /// model's offset; where the real plan is over, the chain budget is bisected between
    /// the chain's minimum and that first try for the largest one whose plan fits.
    fn optimal_within(&self, budget: u64) -> Result<Option<Outcome>, Error> {
        let (planned, modelled) = self.none_peaks();
        let offset = planned.saturating_sub(modelled);
        let chain = &self.inner()?.chain;
        let chain_min = lowmem_remat::min_peak_budget(chain);
        let mut tries = 0;
        let mut attempt = |cb: u64| -> Result<Outcome, Error> {
            tries += 1;
            let s = lowmem_remat::optimal(chain, cb, GRANULARITY)
                .expect("at least the chain's minimum");
            self.realise(
                Scheme::Optimal,
                s,
                format!("chain budget {}, try {tries}", human_bytes(cb)),
            )
        };
        let top = self.chain_peak(&lowmem_remat::store_all(&self.chain));
        // Search the chain budget whose real plan fits with the least recomputation: `lo`
        // fits (or is the chain's minimum), `hi` does not (or is the store-all peak). The
        // next try moves by the real plan's slack or excess (the model is off by a roughly
        // constant amount nearby), falling back to bisection when that leaves the bracket.
        let (mut lo, mut hi) = (chain_min, top);
        let mut best: Option<Outcome> = None;
        let mut cb = budget.saturating_sub(offset).clamp(chain_min, top);
        let resolution = (top / 1000).max(1);
        for _ in 0..TRIES {
            let o = attempt(cb)?;
            let peak = o.peak();
            if peak <= budget {
                lo = lo.max(cb);
                if best
                    .as_ref()
                    .is_none_or(|b| o.recompute_flops < b.recompute_flops)
                {
                    best = Some(o);
                }
            } else {
                hi = hi.min(cb);
            }
            if hi <= lo + resolution || (peak <= budget && budget - peak <= resolution) {
                break;
            }
            let step = if peak <= budget {
                cb.saturating_add(budget - peak)
            } else {
                cb.saturating_sub(peak - budget)
            };
            cb = if step > lo && step < hi {
                step
            } else {
                lo + (hi - lo) / 2
            };
        }
        if best.is_none() {
            let o = attempt(chain_min)?;
            if o.peak() <= budget {
                best = Some(o);
            }
        }
        if best.is_none() {
            let (min, s) = self.min_schedule()?;
            if min <= budget {
                let detail = "the least-memory schedule".to_string();
                best = Some(match s {
                    Some(s) => self.realise(Scheme::Optimal, s, detail)?,
                    None => self.none(),
                });
            }
        }
        Ok(best)
    }

    /// The planned peak of the least-memory schedule lowmem finds (the smallest feasible
    /// budget), and that schedule (`None`: the step without rematerialisation).
    fn min_schedule(&self) -> Result<(u64, Option<Schedule>), Error> {
        if let Some(v) = self.min_feasible.get() {
            return Ok(v.clone());
        }
        let chain = &self.inner()?.chain;
        let m = lowmem_remat::min_peak_budget(chain);
        let mut best = (self.none_peaks().0, None);
        let cands = [
            lowmem_remat::optimal(chain, m, GRANULARITY).expect("the minimum budget is feasible"),
            lowmem_remat::revolve(self.stages.len(), 1),
        ];
        for s in cands {
            let p = self
                .realise(Scheme::Optimal, s.clone(), String::new())?
                .peak();
            if p < best.0 {
                best = (p, Some(s));
            }
        }
        let _ = self.min_feasible.set(best.clone());
        Ok(best)
    }

    /// The smallest feasible budget: the planned peak of the least-memory schedule found.
    pub fn min_feasible(&self) -> Result<u64, Error> {
        Ok(self.min_schedule()?.0)
    }

    /// What every schedule holds: (weights, gradients, optimizer state, inputs) bytes.
    pub fn persistent(&self) -> (u64, u64, u64, u64) {
        let g = &self.graph;
        let mut v = (0, 0, 0, 0);
        for t in g.tensor_ids() {
            if self.roles.state_alias[t].is_some() {
                continue;
            }
            let b = g.tensor(t).bytes() as u64;
            match self.roles.kind[t] {
                Kind::Weight => v.0 += b,
                Kind::Gradient => v.1 += b,
                Kind::OptimizerState => v.2 += b,
                Kind::Input => v.3 += b,
                _ => {}
            }
        }
        v
    }

    fn too_small(&self, budget: u64, scheme: Scheme, best: Option<u64>) -> Result<Error, Error> {
        let (w, gr, o, i) = self.persistent();
        let fixed = w + gr + o + i;
        let min = self.min_feasible()?;
        let b = |v: u64| format!("{} ({v} bytes)", human_bytes(v));
        Ok(Error::Budget(if budget < fixed {
            format!(
                "budget {} is below what the step holds throughout: weights {}, gradients {}, \
                 optimizer state {}, inputs {} = {}; the smallest feasible budget is {}",
                b(budget),
                human_bytes(w),
                human_bytes(gr),
                human_bytes(o),
                human_bytes(i),
                b(fixed),
                b(min)
            )
        } else {
            let reached = best.map_or(String::new(), |p| {
                format!(" (its lowest planned peak is {})", b(p))
            });
            format!(
                "budget {}: no '{}' schedule fits{reached}; the smallest feasible budget is {}{}",
                b(budget),
                scheme.name(),
                b(min),
                if scheme == Scheme::Optimal {
                    String::new()
                } else {
                    " (with --remat optimal)".into()
                }
            )
        }))
    }

    /// Plans the step with `scheme` under `budget`. Without a budget: `none`, `sqrt` (lowest
    /// planned peak over Chen's thresholds), `log`, and `revolve` with `ceil(sqrt(n))` slots;
    /// `optimal` needs one. With a budget: `sqrt` keeps the least recomputation among the
    /// thresholds that fit, `revolve` the most slots that fit, `optimal` the least
    /// recomputation the dynamic programme finds under it.
    pub fn run(&self, scheme: Scheme, budget: Option<u64>) -> Result<Outcome, Error> {
        let n = self.stages.len();
        let (w, gr, o, i) = self.persistent();
        if let Some(b) = budget
            && b < w + gr + o + i
        {
            return Err(self.too_small(b, scheme, None)?);
        }
        let mut out = match (scheme, budget) {
            (Scheme::None, _) => self.none(),
            (Scheme::Sqrt, None) => self.sqrt_candidates(8)?.swap_remove(0),
            (Scheme::Sqrt, Some(b)) => {
                let c = self.sqrt_candidates(8)?;
                let lowest = c[0].peak();
                match c
                    .into_iter()
                    .filter(|o| o.peak() <= b)
                    .min_by_key(|o| (o.recompute_flops, o.peak()))
                {
                    Some(o) => o,
                    None => return Err(self.too_small(b, scheme, Some(lowest))?),
                }
            }
            (Scheme::Log, _) => self.log()?,
            (Scheme::Revolve, None) => self.revolve((n as f64).sqrt().ceil() as usize)?,
            (Scheme::Revolve, Some(b)) => {
                // Most slots (least recomputation) whose plan fits; peaks grow with slots.
                // Few slots mean long rewritten graphs (about n²/2s recomputed stages), so
                // they are planned only when the search gets there.
                let (mut lo, mut hi) = (0usize, n.max(1)); // lo fits (0: none known)
                let mut best: Option<Outcome> = None;
                while lo < hi {
                    let mid = (lo + hi).div_ceil(2);
                    let o = self.revolve(mid)?;
                    if o.peak() <= b {
                        lo = mid;
                        best = Some(o);
                    } else {
                        hi = mid - 1;
                    }
                }
                match best {
                    Some(o) => o,
                    None => return Err(self.too_small(b, scheme, None)?),
                }
            }
            (Scheme::Optimal, None) => {
                let (planned, _) = self.none_peaks();
                return Err(Error::Budget(format!(
                    "--remat optimal needs --budget: the step peaks at {} without \
                     rematerialisation; the smallest feasible budget is {}",
                    human_bytes(planned),
                    human_bytes(self.min_feasible()?)
                )));
            }
            (Scheme::Optimal, Some(b)) => {
                if self.none_peaks().0 <= b {
                    let mut o = self.none();
                    o.scheme = Scheme::Optimal;
                    o.detail = "the budget holds every activation: nothing recomputed".into();
                    o
                } else {
                    // The classic schedules lie in the DP's family; where the chain model's
                    // error makes the DP's pick miss on the real plan, one of them may fit
                    // with less recomputation, and then it is the answer.
                    let mut cands: Vec<Outcome> = self.optimal_within(b)?.into_iter().collect();
                    cands.extend(self.sqrt_candidates(8)?);
                    cands.push(self.log()?);
                    if let Ok(o) = self.run(Scheme::Revolve, Some(b)) {
                        cands.push(o);
                    }
                    match cands
                        .into_iter()
                        .filter(|o| o.peak() <= b)
                        .min_by_key(|o| (o.recompute_flops, o.peak()))
                    {
                        Some(mut o) => {
                            if o.scheme != Scheme::Optimal {
                                o.detail = format!(
                                    "{} schedule ({}), verified best on the real plan",
                                    o.scheme.name(),
                                    o.detail
                                );
                                o.scheme = Scheme::Optimal;
                            }
                            o
                        }
                        None => return Err(self.too_small(b, scheme, None)?),
                    }
                }
            }
        };
        if let Some(b) = budget
            && out.peak() > b
        {
            return Err(self.too_small(b, scheme, Some(out.peak()))?);
        }
        out.budget = budget;
        Ok(out)
    }

    /// Peak against overhead for every scheme: `none`, Chen's thresholds, `log`, Revolve
    /// over a range of slots, and `optimal` at `levels` budgets from the smallest feasible
    /// to the no-rematerialisation peak, and at 50% and 25% of that peak where feasible.
    pub fn frontier(&self, levels: usize) -> Result<(Vec<Point>, f64), Error> {
        let t = Instant::now();
        let n = self.stages.len();
        let none = self.none();
        let top = none.peak();
        let mut pts = vec![self.point(&none)];
        drop(none);
        for o in self.sqrt_candidates(12)? {
            pts.push(self.point(&o));
        }
        pts.push(self.point(&self.log()?));
        let mut s = 1usize;
        let mut seen = Vec::new();
        while s <= n {
            let o = self.revolve(s)?;
            if !seen.contains(&o.recompute_flops) {
                seen.push(o.recompute_flops);
                pts.push(self.point(&o));
            }
            s = if s < 4 { s + 1 } else { s * 3 / 2 };
        }
        let lo = self.min_feasible()?;
        let levels = levels.max(2);
        let mut budgets: Vec<u64> = (0..levels)
            .map(|k| lo + (top - lo.min(top)) * k as u64 / (levels - 1) as u64)
            .collect();
        // The budgets people ask about: half and a quarter of the peak without remat.
        budgets.extend([top / 2, top / 4].into_iter().filter(|&b| b >= lo));
        for b in budgets {
            if let Ok(o) = self.run(Scheme::Optimal, Some(b)) {
                let mut p = self.point(&o);
                p.detail = format!("budget {}", human_bytes(b));
                pts.push(p);
            }
        }
        Ok((pts, t.elapsed().as_secs_f64()))
    }
}

/// For each scheme, the frontier point with the least overhead among those whose peak is at
/// most `target`.
pub fn first_fit(points: &[Point], scheme: Scheme, target: u64) -> Option<&Point> {
    points
        .iter()
        .filter(|p| p.scheme == scheme && p.peak <= target)
        .min_by(|a, b| a.overhead.total_cmp(&b.overhead).then(a.peak.cmp(&b.peak)))
}
