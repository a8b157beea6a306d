//! lowmem's compile stage: a model and its options become one [`CompiledStep`] — the final
//! graph (recompute nodes included), its execution order, the role of every tensor, the
//! arena plan with static offsets (and the persistent block), the rematerialisation record
//! and the cost summary. `lowmem plan` reports it, `run`/`grad`/`train`/`bench` execute it,
//! and [`lmc`] stores it in a file, so what is shown is what runs.

pub mod lmc;
pub mod remat;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lowmem_autodiff::{
    AutodiffError, Loss, Mode, Optimizer, StateKind, gradients_with, training_step_with,
};
use lowmem_ir::{Graph, IrError, TensorData, TensorId};
use lowmem_plan::{Claim, MemoryPlan, PlanOptions, plan, verify_plan};
use lowmem_schedule::Roles;
use thiserror::Error;

pub use remat::{Outcome, Point, Scheme, Step, first_fit, parse_budget, training_roles};

#[derive(Debug, Error)]
pub enum CompileError {
    /// The request does not fit the model (no outputs, wrong input count, unknown output).
    #[error("{0}")]
    Model(String),
    /// A budget no schedule meets, or an unparsable budget; the text names the smallest
    /// feasible budget where there is one.
    #[error("{0}")]
    Budget(String),
    /// Options that do not go together.
    #[error("{0}")]
    Options(String),
    /// A `.lmc` file that cannot be read: truncated, corrupted or of another version.
    #[error("{0}")]
    File(String),
    #[error(transparent)]
    Ir(#[from] IrError),
    #[error(transparent)]
    Autodiff(#[from] AutodiffError),
    /// A step the planner produced fails the independent verifier: a bug, reported as such.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What the step computes.
#[derive(Clone, Debug, PartialEq)]
pub enum Task {
    /// The forward pass (the graph's own inference semantics).
    Inference,
    /// Loss over `output` (default: the first graph output) and the gradient of every
    /// trainable weight, with the graph's inference semantics (`lowmem grad`).
    Gradient { loss: Loss, output: Option<String> },
    /// Forward with training semantics, loss over the first output, backward and the
    /// optimizer update of every trainable weight (`lowmem train`).
    Training { loss: Loss, optimizer: Optimizer },
}

impl Task {
    pub fn name(&self) -> &'static str {
        match self {
            Task::Inference => "inference",
            Task::Gradient { .. } => "gradient",
            Task::Training { .. } => "training",
        }
    }
}

#[derive(Clone, Debug)]
pub struct CompileOptions {
    pub task: Task,
    /// Rewrite the batch dimension to this.
    pub batch: Option<usize>,
    /// Checkpointing scheme (training only); `None` with a budget means `none`.
    pub remat: Option<Scheme>,
    /// Budget of the planned peak (persistent block + arena), in bytes (training only).
    pub budget: Option<u64>,
    /// Keep the activations saved for the backward pass in this 16-bit type (f16 or bf16;
    /// training and gradient steps).
    pub store: Option<lowmem_ir::DType>,
    /// SliceOut at this drop ratio (training steps).
    pub sliceout: Option<f32>,
    /// DropIT at this fraction of each layer input dropped (training and gradient steps).
    pub dropit: Option<f32>,
    /// Run the batch as this many micro-batches, one optimizer update (training and
    /// gradient steps).
    pub microbatch: Option<usize>,
    /// Fuse each Conv/Gemm -> ReLU pair into one op ([`lowmem_rewrite::fuse_epilogues`]).
    /// Off under SliceOut, whose rewrite matches the unfused layers.
    pub fuse: bool,
    pub plan: PlanOptions,
}

impl CompileOptions {
    pub fn new(task: Task) -> CompileOptions {
        CompileOptions {
            task,
            batch: None,
            remat: None,
            budget: None,
            store: None,
            sliceout: None,
            dropit: None,
            microbatch: None,
            fuse: true,
            plan: PlanOptions::default(),
        }
    }
}

/// One place a rewrite changed the step, and what it saved.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RewriteSite {
    /// "store-f16", "store-bf16", ...
    pub kind: String,
    /// The node the rewrite applies at.
    pub node: String,
    pub tensor: String,
    /// Bytes of the tensor no longer held (before planning: the plan's peak shows the net
    /// effect).
    pub bytes_saved: u64,
    /// Why the site saves nothing, where it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

impl RewriteSite {
    fn stored(s: lowmem_autodiff::StoreSite) -> RewriteSite {
        RewriteSite {
            kind: format!("store-{}", s.dtype),
            node: s.node,
            tensor: s.tensor,
            bytes_saved: s.bytes_saved,
            why: None,
        }
    }

    fn sliced(s: &lowmem_autodiff::SliceOutSite) -> RewriteSite {
        RewriteSite {
            kind: format!("sliceout-{}/{}", s.kept, s.units),
            node: s.node.clone(),
            tensor: s.tensor.clone(),
            bytes_saved: s.bytes_saved,
            why: s.why.clone(),
        }
    }

    fn dropped(s: lowmem_autodiff::DropItSite) -> RewriteSite {
        RewriteSite {
            kind: "dropit".into(),
            node: s.node,
            tensor: s.tensor,
            bytes_saved: s.bytes_saved,
            why: s.why,
        }
    }

    fn masked(s: lowmem_autodiff::ReluMaskSite) -> RewriteSite {
        RewriteSite {
            kind: "relu-mask".into(),
            node: s.node,
            tensor: s.tensor,
            bytes_saved: s.bytes_saved,
            why: (s.bytes_saved == 0)
                .then(|| "the ReLU output is still read by another backward node".into()),
        }
    }
}

/// The rewrite sites of a built step, and a warning for each rewrite asked for that found
/// nothing to do.
fn sites_of(
    opts: &CompileOptions,
    sites: &lowmem_autodiff::Sites,
    out: &mut Vec<RewriteSite>,
    warnings: &mut Vec<String>,
) {
    out.extend(sites.sliceout.iter().map(RewriteSite::sliced));
    if opts.sliceout.is_some() && sites.sliceout.is_empty() {
        warnings.push(match sites.sliceout_skipped.first() {
            None => "--rewrite sliceout: the model has no Dropout".into(),
            Some((node, why)) => format!(
                "--rewrite sliceout: no Dropout sits between two weight layers (e.g. '{node}': {why})"
            ),
        });
    }
    if opts.dropit.is_some() {
        let d = &sites.dropit;
        if !d.iter().any(|s| s.why.is_none()) {
            warnings.push(if d.is_empty() {
                "--rewrite dropit: no Gemm, MatMul or Conv computes a weight gradient from an activation".into()
            } else {
                format!(
                    "--rewrite dropit: no site could drop its dense input ({})",
                    d[0].why.as_deref().unwrap_or("")
                )
            });
        }
        out.extend(sites.relu_masks.iter().cloned().map(RewriteSite::masked));
        out.extend(d.iter().cloned().map(RewriteSite::dropped));
    }
    if let Some(to) = opts.store {
        if sites.stored.is_empty() {
            warnings.push(format!(
                "--store {to}: the backward pass reads no f32 activation of rank 2 or more"
            ));
        }
        out.extend(sites.stored.iter().cloned().map(RewriteSite::stored));
    }
}

/// Where the value of each graph input comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputRole {
    /// Input `k` of the forward model (examples).
    Data(usize),
    /// Class indices or regression targets of the loss.
    Labels,
    /// The 1-based step number (dropout masks, Adam's bias correction).
    Step,
    /// State `k` (a weight, an optimizer moment, a BatchNorm running statistic).
    State(usize),
}

/// A tensor carried from one step to the next: read as `input`, written as `output` over
/// the same bytes.
#[derive(Clone, Debug)]
pub struct StateSlot {
    pub name: String,
    pub kind: StateKind,
    pub input: TensorId,
    pub output: TensorId,
    /// The forward model's weight this state belongs to.
    pub of: String,
    /// Its current value (the initial one after compiling).
    pub value: Arc<TensorData>,
}

/// What checkpointing did to the step.
#[derive(Clone, Debug)]
pub struct RematRecord {
    pub scheme: &'static str,
    /// What the scheme chose (threshold, slots, chain budget), for people.
    pub detail: String,
    pub stages: usize,
    /// Names of the stage boundaries held when the loss runs.
    pub checkpoints: Vec<String>,
    pub recomputed_nodes: usize,
    /// The stages recorded partially (checkpointing inside the stage).
    pub partial: Vec<remat::PartialRecord>,
}

/// Per node of a compiled step's graph, where it stands in the step, so that the plan page
/// can mark the forward/backward split, checkpointing stages and recomputation on its time
/// axis. Each vector is empty where unknown (a step read back from an `.lmc` file; `stage`
/// and `recomputed` also for micro-batched steps, which have no stage chain).
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    /// The checkpointing stage a node works for ([`Outcome::node_stage`]).
    pub stage: Vec<Option<u32>>,
    /// Whether a node is a recomputing copy ([`Outcome::recomputed`]).
    pub recomputed: Vec<bool>,
    /// Whether a node runs the forward pass or the loss (a recomputing copy does not); the
    /// other nodes are the backward pass and the update.
    pub forward: Vec<bool>,
}

impl Timeline {
    /// The names of the forward (and loss) nodes of a step built with its nodes
    /// `..backward_start` running the forward pass.
    fn forward_names(g: &Graph, backward_start: usize) -> HashSet<String> {
        g.nodes[..backward_start.min(g.nodes.len())]
            .iter()
            .map(|n| n.name.clone())
            .collect()
    }

    /// The timeline of `planned`: a node runs the forward pass when `flags` (per node of
    /// `planned`, for micro-batched steps) says so, or when its name is in `names` (the
    /// forward nodes of the step before checkpointing, whose rewrite keeps their names); a
    /// recomputing node does not.
    fn of(
        names: &HashSet<String>,
        flags: Option<&[bool]>,
        planned: &Graph,
        stage: Vec<Option<u32>>,
        recomputed: Vec<bool>,
    ) -> Timeline {
        let forward = planned
            .nodes
            .iter()
            .enumerate()
            .map(|(v, n)| {
                !recomputed.get(v).copied().unwrap_or(false)
                    && (flags.is_some_and(|f| f.get(v).copied().unwrap_or(false))
                        || names.contains(n.name.as_str()))
            })
            .collect();
        Timeline {
            stage,
            recomputed,
            forward,
        }
    }
}

/// FLOPs of the step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Costs {
    /// Forward pass and loss (recomputation excluded).
    pub forward_flops: u64,
    /// Backward pass and optimizer update.
    pub backward_flops: u64,
    /// Forward work done again by rematerialisation.
    pub recompute_flops: u64,
}

impl Costs {
    /// Recomputation as a fraction of forward + backward.
    pub fn overhead(&self) -> f64 {
        self.recompute_flops as f64 / (self.forward_flops + self.backward_flops).max(1) as f64
    }
}

/// One compiled step: everything an executor needs, and every figure a report shows.
#[derive(Clone, Debug)]
pub struct CompiledStep {
    /// The model's name.
    pub model: String,
    pub task: Task,
    pub batch: usize,
    /// The step's graph: for training, `outputs = [loss, state outputs...]`; for gradients,
    /// `[loss, gradients...]`; for inference, the model's outputs.
    pub graph: Graph,
    pub roles: Roles,
    pub plan: MemoryPlan,
    /// Per graph input (in `graph.inputs` order): where its value comes from.
    pub inputs: Vec<InputRole>,
    pub state: Vec<StateSlot>,
    /// Gradient task: (weight name, gradient tensor) in `graph.outputs[1..]` order.
    pub grads: Vec<(String, TensorId)>,
    /// The forward model at `batch`, sharing its weights with `state`: evaluation and
    /// export read it (with the trained state written back).
    pub forward: Graph,
    pub budget: Option<u64>,
    pub remat: Option<RematRecord>,
    /// Every rewrite site (`--store`, `--rewrite`), applied or (with `why`) left alone.
    pub rewrites: Vec<RewriteSite>,
    /// Rewrites asked for that found no site, one line each, naming the flag.
    pub warnings: Vec<String>,
    pub costs: Costs,
    /// Per node of `graph`: forward or backward, stage, recomputation (for reports).
    pub timeline: Timeline,
    /// Time spent planning (model loading and graph building excluded).
    pub planning_time: Duration,
}

impl CompiledStep {
    /// Persistent block + arena: the bytes an executor holds while the step runs.
    pub fn planned_peak_bytes(&self) -> u64 {
        self.plan.peak_bytes()
    }

    /// Re-checks the plan with the independent verifier.
    pub fn verify(&self) -> Result<(), CompileError> {
        verify(&self.graph, &self.roles, &self.plan)
    }

    /// The loss tensor (training and gradient tasks).
    pub fn loss(&self) -> Option<TensorId> {
        match self.task {
            Task::Inference => None,
            _ => self.graph.outputs.first().copied(),
        }
    }

    /// The forward model carrying the current state (trained weights and running
    /// statistics) as its weights, at batch `batch` (`None`: the compiled batch).
    pub fn trained_forward(&self, batch: Option<usize>) -> Result<Graph, CompileError> {
        let mut g = self.forward.clone();
        for s in &self.state {
            if !matches!(
                s.kind,
                StateKind::Parameter | StateKind::RunningMean | StateKind::RunningVar
            ) {
                continue;
            }
            let id = g.tensor_id(&s.of).ok_or_else(|| {
                CompileError::Model(format!("the model has no weight '{}'", s.of))
            })?;
            let t = &mut g.tensors[id.index()];
            if t.value.is_none() || t.dtype != s.value.dtype() || t.numel() != s.value.len() {
                return Err(CompileError::Model(format!(
                    "weight '{}' {} {:?} cannot take the state '{}'",
                    s.of, t.dtype, t.shape, s.name
                )));
            }
            t.value = Some(s.value.clone());
        }
        match batch {
            Some(n) if n != self.batch => Ok(g.with_batch(n)?),
            _ => Ok(g),
        }
    }
}

/// Checks a plan with the independent verifier.
pub fn verify(graph: &Graph, roles: &Roles, p: &MemoryPlan) -> Result<(), CompileError> {
    let claim = Claim {
        order: &p.order,
        tensor_offset: p.tensor_offset.as_slice(),
        workspace: p.workspace.as_slice(),
        arena_bytes: p.arena_bytes,
    };
    verify_plan(graph, roles, &claim)
        .map_err(|e| CompileError::Internal(format!("the plan does not verify: {e}")))
}

/// The model's first output, or the one named `name`; an unknown name is an error listing
/// the outputs.
pub fn output_of(g: &Graph, name: Option<&str>) -> Result<TensorId, CompileError> {
    match name {
        None => g
            .outputs
            .first()
            .copied()
            .ok_or_else(|| CompileError::Model("the model has no outputs".into())),
        Some(n) => g
            .outputs
            .iter()
            .copied()
            .find(|&o| g.tensor(o).name == n)
            .ok_or_else(|| {
                let names: Vec<&str> = g
                    .outputs
                    .iter()
                    .map(|&o| g.tensor(o).name.as_str())
                    .collect();
                CompileError::Model(format!(
                    "the model has no output '{n}' (its outputs: {})",
                    names.join(", ")
                ))
            }),
    }
}

fn batch_of(g: &Graph) -> usize {
    g.batch().unwrap_or(1)
}

/// Compiles `model` (its batch rewritten to `opts.batch`) into one step.
/// The forward graph as every step built from `opts` sees it: with epilogue fusion
/// ([`CompileOptions::fuse`]) unless SliceOut, which matches the unfused layers, is asked for.
pub fn fused_forward(forward: Graph, opts: &CompileOptions) -> Result<Graph, CompileError> {
    Ok(if opts.fuse && opts.sliceout.is_none() {
        lowmem_rewrite::fuse_epilogues(&forward)?.0
    } else {
        forward
    })
}

pub fn compile(model: &Graph, opts: &CompileOptions) -> Result<CompiledStep, CompileError> {
    let forward = match opts.batch {
        Some(n) => model.clone().with_batch(n)?,
        None => model.clone(),
    };
    let forward = fused_forward(forward, opts)?;
    let batch = batch_of(&forward);
    let remat_asked = opts.remat.is_some() || opts.budget.is_some();
    if remat_asked && opts.task == Task::Inference {
        return Err(CompileError::Options(
            "--remat and --budget apply to a training or gradient step".into(),
        ));
    }
    if opts.store.is_some() && opts.task == Task::Inference {
        return Err(CompileError::Options(
            "--store applies to a training or gradient step (it stores what the backward pass reads)".into(),
        ));
    }
    if (opts.dropit.is_some() || opts.sliceout.is_some()) && opts.task == Task::Inference {
        return Err(CompileError::Options(
            "--rewrite applies to a training or gradient step".into(),
        ));
    }
    if let Some(k) = opts.microbatch {
        if opts.task == Task::Inference {
            return Err(CompileError::Options(
                "--microbatch applies to a training or gradient step".into(),
            ));
        }
        if k == 0 || !batch.is_multiple_of(k) {
            return Err(CompileError::Options(format!(
                "--microbatch {k} does not divide the batch {batch}"
            )));
        }
    }
    let step_opts = lowmem_autodiff::StepOptions {
        sliceout: opts.sliceout,
        dropit: opts.dropit,
        store: opts.store,
        microbatch: opts.microbatch.filter(|&k| k > 1),
    };
    let mut warnings = Vec::new();
    let data_role = |g: &Graph, i: TensorId| {
        forward
            .inputs
            .iter()
            .position(|&f| forward.tensor(f).name == g.tensor(i).name)
    };
    match &opts.task {
        Task::Inference => {
            let roles = Roles::inference(&forward);
            let t = Instant::now();
            let p = plan(&forward, &roles, &opts.plan);
            let planning_time = t.elapsed();
            let inputs = (0..forward.inputs.len()).map(InputRole::Data).collect();
            let graph_nodes = forward.nodes.len();
            Ok(CompiledStep {
                model: model.name.clone(),
                task: opts.task.clone(),
                batch,
                costs: Costs {
                    forward_flops: forward.flops(),
                    ..Costs::default()
                },
                graph: forward.clone(),
                roles,
                plan: p,
                inputs,
                state: Vec::new(),
                grads: Vec::new(),
                forward,
                budget: None,
                remat: None,
                rewrites: Vec::new(),
                warnings: Vec::new(),
                timeline: Timeline {
                    forward: vec![true; graph_nodes],
                    ..Timeline::default()
                },
                planning_time,
            })
        }
        Task::Gradient { loss, output } => {
            let out = output_of(&forward, output.as_deref())?;
            let wrt = forward.trainable_weights();
            if wrt.is_empty() {
                return Err(CompileError::Model(
                    "the model has no trainable weights".into(),
                ));
            }
            let gg = gradients_with(&forward, out, *loss, &wrt, Mode::Inference, &step_opts)?;
            let mut rewrites = Vec::new();
            if opts.sliceout.is_some() {
                warnings.push(
                    "--rewrite sliceout: a gradient step runs dropout as the identity, so there is nothing to slice"
                        .into(),
                );
            }
            sites_of(
                &CompileOptions {
                    sliceout: None,
                    ..opts.clone()
                },
                &gg.sites,
                &mut rewrites,
                &mut warnings,
            );
            let inputs = gg
                .graph
                .inputs
                .iter()
                .map(|&i| {
                    if Some(i) == gg.labels {
                        Ok(InputRole::Labels)
                    } else if Some(i) == gg.step {
                        Ok(InputRole::Step)
                    } else {
                        data_role(&gg.graph, i).map(InputRole::Data).ok_or_else(|| {
                            CompileError::Internal(format!(
                                "the gradient graph has an unexpected input '{}'",
                                gg.graph.tensor(i).name
                            ))
                        })
                    }
                })
                .collect::<Result<_, _>>()?;
            let t = Instant::now();
            let (graph, roles, p, remat, costs, timeline) = if remat_asked {
                let data: Vec<TensorId> = gg
                    .graph
                    .inputs
                    .iter()
                    .copied()
                    .filter(|&i| data_role(&gg.graph, i).is_some())
                    .collect();
                let step = Step::for_gradients(&gg, &data, opts.plan.clone())?;
                let o = step.run(opts.remat.unwrap_or(Scheme::None), opts.budget)?;
                let (record, costs) = record_of(&step, &o);
                let timeline = Timeline::of(
                    &Timeline::forward_names(&gg.graph, gg.backward_start),
                    gg.forward.as_deref(),
                    &o.graph,
                    o.node_stage,
                    o.recomputed,
                );
                (o.graph, o.roles, o.plan, Some(record), costs, timeline)
            } else {
                let roles = Roles::inference(&gg.graph);
                let p = plan(&gg.graph, &roles, &opts.plan);
                let (fwd, bwd) =
                    remat::split_flops(&gg.graph, gg.backward_start, gg.forward.as_deref());
                let costs = Costs {
                    forward_flops: fwd,
                    backward_flops: bwd,
                    recompute_flops: 0,
                };
                let names = match gg.forward {
                    Some(_) => HashSet::new(),
                    None => Timeline::forward_names(&gg.graph, gg.backward_start),
                };
                let timeline = Timeline::of(
                    &names,
                    gg.forward.as_deref(),
                    &gg.graph,
                    Vec::new(),
                    Vec::new(),
                );
                (gg.graph.clone(), roles, p, None, costs, timeline)
            };
            let planning_time = t.elapsed();
            let grads = gg
                .grads
                .iter()
                .map(|&(w, g)| (gg.graph.tensor(w).name.clone(), g))
                .collect();
            Ok(CompiledStep {
                model: model.name.clone(),
                task: opts.task.clone(),
                batch,
                graph,
                roles,
                plan: p,
                inputs,
                state: Vec::new(),
                grads,
                forward,
                budget: opts.budget,
                remat,
                rewrites,
                warnings: warnings.clone(),
                costs,
                timeline,
                planning_time,
            })
        }
        Task::Training { loss, optimizer } => {
            let out = output_of(&forward, None)?;
            let t = Instant::now();
            let k = opts.microbatch.unwrap_or(1);
            let mut checkpointed = None;
            let tg = if k > 1 && remat_asked {
                let body = lowmem_autodiff::training_body(&forward, out, *loss, &step_opts)?;
                let (tg, o, record, costs) =
                    checkpointed_microbatches(&forward, body, optimizer, opts)?;
                checkpointed = Some((o, Some(record), costs));
                tg
            } else {
                training_step_with(&forward, out, *loss, optimizer, &step_opts)?
            };
            let mut rewrites = Vec::new();
            sites_of(opts, &tg.sites, &mut rewrites, &mut warnings);
            let (o, remat, costs) = if let Some(c) = checkpointed {
                c
            } else if tg.forward.is_some() {
                // Micro-batched: no stage chain (K forward passes); the planner's free
                // choice of order over the step as built.
                let roles = remat::training_roles(&tg);
                let p = plan(&tg.graph, &roles, &opts.plan);
                let (fwd, bwd) =
                    remat::split_flops(&tg.graph, tg.backward_start, tg.forward.as_deref());
                let o = Outcome {
                    scheme: Scheme::None,
                    detail: format!("{} micro-batches", opts.microbatch.unwrap_or(1)),
                    budget: None,
                    graph: tg.graph.clone(),
                    roles,
                    plan: p,
                    checkpoints: Vec::new(),
                    recomputed_nodes: 0,
                    recompute_flops: 0,
                    schedule: None,
                    node_stage: Vec::new(),
                    recomputed: Vec::new(),
                    partial: Vec::new(),
                };
                let costs = Costs {
                    forward_flops: fwd,
                    backward_flops: bwd,
                    recompute_flops: 0,
                };
                (o, None, costs)
            } else {
                let step = Step::new(&tg, opts.plan.clone())?;
                let o = if remat_asked {
                    step.run(opts.remat.unwrap_or(Scheme::None), opts.budget)?
                } else {
                    // No checkpointing asked for: the planner's free choice of order.
                    step.none()
                };
                let (record, costs) = record_of(&step, &o);
                (o, remat_asked.then_some(record), costs)
            };
            let planning_time = t.elapsed();
            let names = match tg.forward {
                Some(_) => HashSet::new(),
                None => Timeline::forward_names(&tg.graph, tg.backward_start),
            };
            let timeline = Timeline::of(
                &names,
                tg.forward.as_deref(),
                &o.graph,
                o.node_stage,
                o.recomputed,
            );
            let state_of = |i: TensorId| tg.state.iter().position(|s| s.input == i);
            let inputs = o
                .graph
                .inputs
                .iter()
                .map(|&i| {
                    if let Some(k) = state_of(i) {
                        Ok(InputRole::State(k))
                    } else if Some(i) == tg.labels {
                        Ok(InputRole::Labels)
                    } else if i == tg.step {
                        Ok(InputRole::Step)
                    } else if let Some(k) = tg.data.iter().position(|&d| d == i) {
                        Ok(InputRole::Data(k))
                    } else {
                        Err(CompileError::Internal(format!(
                            "training graph input '{}' is neither data, labels, step nor state",
                            o.graph.tensor(i).name
                        )))
                    }
                })
                .collect::<Result<_, _>>()?;
            let state = tg
                .state
                .iter()
                .map(|s| StateSlot {
                    name: s.name.clone(),
                    kind: s.kind,
                    input: s.input,
                    output: s.output,
                    of: s.of.clone(),
                    value: s.init.clone(),
                })
                .collect();
            Ok(CompiledStep {
                model: model.name.clone(),
                task: opts.task.clone(),
                batch,
                graph: o.graph,
                roles: o.roles,
                plan: o.plan,
                inputs,
                state,
                grads: Vec::new(),
                forward,
                budget: opts.budget,
                remat,
                rewrites,
                warnings: warnings.clone(),
                costs,
                timeline,
                planning_time,
            })
        }
    }
}

/// A micro-batched training step with checkpointing: the body (one micro-batch's forward
/// and backward) is checkpointed as a gradient step, then unrolled `K` times in its
/// checkpointed order, with the optimizer attached. Under `--budget`, the body's budget is
/// searched: the largest one whose unrolled step (gradient sums, optimizer state and the
/// full-batch inputs around the body) fits.
fn checkpointed_microbatches(
    forward: &Graph,
    body: lowmem_autodiff::TrainingBody,
    optimizer: &Optimizer,
    opts: &CompileOptions,
) -> Result<(lowmem_autodiff::TrainingGraph, Outcome, RematRecord, Costs), CompileError> {
    let k = body.microbatches() as u64;
    let gg = &body.graph;
    let data: Vec<TensorId> = gg
        .graph
        .inputs
        .iter()
        .copied()
        .filter(|&i| {
            forward
                .inputs
                .iter()
                .any(|&f| forward.tensor(f).name == gg.graph.tensor(i).name)
        })
        .collect();
    let step = Step::for_gradients(gg, &data, opts.plan.clone())?;
    let fixed = PlanOptions {
        fixed_order: true,
        ..opts.plan.clone()
    };
    let unrolled = |o: &Outcome| -> Result<
        (lowmem_autodiff::TrainingGraph, Roles, MemoryPlan),
        CompileError,
    > {
        let tg = body
            .clone()
            .finish(forward, optimizer, Some(o.graph.clone()))?;
        let roles = remat::training_roles(&tg);
        let p = plan(&tg.graph, &roles, &fixed);
        Ok((tg, roles, p))
    };
    let scheme = opts.remat.unwrap_or(Scheme::None);
    type Fit = (Outcome, lowmem_autodiff::TrainingGraph, Roles, MemoryPlan);
    // The body checkpointed under `bb`, unrolled and planned (`None`: no schedule fits `bb`).
    let probe = |bb: Option<u64>| -> Result<Option<Fit>, CompileError> {
        match step.run(scheme, bb) {
            Ok(o) => {
                let (tg, roles, p) = unrolled(&o)?;
                Ok(Some((o, tg, roles, p)))
            }
            Err(CompileError::Budget(_)) => Ok(None),
            Err(e) => Err(e),
        }
    };
    let chosen = match opts.budget {
        None => probe(None)?.expect("no budget, no budget error"),
        Some(b) => {
            // The unrolled step's peak grows with the body's budget: search the largest body
            // budget whose unrolled step fits.
            let fits = |f: &Option<Fit>| f.as_ref().is_some_and(|f| f.3.peak_bytes() <= b);
            let (mut lo, mut hi) = (step.min_feasible()?, step.none().peak());
            let top = probe(Some(hi))?;
            if fits(&top) {
                top.expect("fits")
            } else {
                let mut bottom = probe(Some(lo))?;
                if !fits(&bottom) {
                    // The body's least-memory schedule is not always the unrolled step's:
                    // the classic schemes place the gradients differently. Take the fitting
                    // one with the least recomputation.
                    let mut least = bottom.as_ref().map_or(u64::MAX, |f| f.3.peak_bytes());
                    let mut alt: Option<Fit> = None;
                    for sch in [Scheme::Sqrt, Scheme::Log] {
                        let Ok(o) = step.run(sch, None) else { continue };
                        let (tg, roles, p) = unrolled(&o)?;
                        least = least.min(p.peak_bytes());
                        if p.peak_bytes() <= b
                            && alt
                                .as_ref()
                                .is_none_or(|a| o.recompute_flops < a.0.recompute_flops)
                        {
                            alt = Some((o, tg, roles, p));
                        }
                    }
                    match alt {
                        Some(a) => bottom = Some(a),
                        None => {
                            return Err(CompileError::Budget(format!(
                                "budget {}: {k} micro-batches with checkpointing need at least {} (each micro-batch checkpointed to its smallest feasible step, {})",
                                human_bytes(b),
                                human_bytes(least),
                                human_bytes(lo)
                            )));
                        }
                    }
                }
                let mut best = bottom.expect("fits");
                for _ in 0..8 {
                    if hi <= lo + 1 {
                        break;
                    }
                    let mid = lo + (hi - lo) / 2;
                    let f = probe(Some(mid))?;
                    if fits(&f) {
                        best = f.expect("fits");
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                best
            }
        }
    };
    let (o, tg, roles, p) = chosen;
    let (mut record, body_costs) = record_of(&step, &o);
    record.detail = format!("{} per micro-batch, {k} micro-batches", record.detail);
    let costs = Costs {
        forward_flops: body_costs.forward_flops.saturating_mul(k),
        backward_flops: body_costs.backward_flops.saturating_mul(k),
        recompute_flops: body_costs.recompute_flops.saturating_mul(k),
    };
    let outcome = Outcome {
        graph: tg.graph.clone(),
        roles,
        plan: p,
        recomputed_nodes: o.recomputed_nodes * k as usize,
        recompute_flops: costs.recompute_flops,
        // The unrolled step has no stage chain of its own.
        node_stage: Vec::new(),
        recomputed: Vec::new(),
        ..o
    };
    Ok((tg, outcome, record, costs))
}

/// What checkpointing did to `step` (its outcome `o`), and the step's costs.
fn record_of(step: &Step, o: &Outcome) -> (RematRecord, Costs) {
    let record = RematRecord {
        scheme: o.scheme.name(),
        detail: o.detail.clone(),
        stages: step.stages.len(),
        checkpoints: o.checkpoints.clone(),
        recomputed_nodes: o.recomputed_nodes,
        partial: o.partial.clone(),
    };
    let costs = Costs {
        forward_flops: step.forward_flops,
        backward_flops: step.backward_flops,
        recompute_flops: o.recompute_flops,
    };
    (record, costs)
}

/// Bytes in human units (binary prefixes).
pub fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", U[i])
    }
}
