//! Reverse-mode automatic differentiation over the lowmem IR.
//!
//! [`gradients`] and [`training_step`] build one static graph holding the forward pass, the
//! loss, the backward pass and (for training) the optimizer update. Backward ops are ordinary
//! IR ops, so every later stage (liveness, memory planning, checkpointing) sees the whole
//! step. The forward tensors that the backward pass reads are listed in one place
//! (`saved`): those are what checkpointing recomputes, DropIT sparsifies and low-precision
//! storage compresses.

mod builder;
mod dropit;
mod microbatch;
mod rules;
mod sliceout;
mod store;

pub use dropit::{DropItSite, ReluMaskSite};
pub use sliceout::SliceOutSite;
pub use store::StoreSite;

use std::collections::HashMap;
use std::sync::Arc;

use lowmem_ir::{DType, Graph, IrError, NodeId, Op, TensorData, TensorId, TensorKind};
use thiserror::Error;

use builder::Builder;

/// How the chosen output becomes a scalar loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Sum of every element.
    Sum,
    /// Mean of every element.
    Mean,
    /// The output is already a scalar (one element).
    Scalar,
    /// Softmax cross-entropy against integer labels (`labels`, i64 `[N]`), mean over the
    /// batch. The output is read as logits `[N, C, 1...]`; when it is produced by a Softmax
    /// over the classes, the loss is taken from that Softmax's input instead, which is the
    /// same value (the cross-entropy of the output probabilities) computed stably.
    CrossEntropy,
    /// Mean squared error against `labels` of the output's shape.
    Mse,
}

/// Forward semantics of BatchNormalization and Dropout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// As in the file: running statistics, no dropout.
    Inference,
    /// Batch statistics (running statistics updated) and active dropout.
    Training,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Optimizer {
    Sgd {
        lr: f32,
        momentum: f32,
        weight_decay: f32,
    },
    Adam {
        lr: f32,
        beta1: f32,
        beta2: f32,
        epsilon: f32,
        weight_decay: f32,
    },
    AdamW {
        lr: f32,
        beta1: f32,
        beta2: f32,
        epsilon: f32,
        weight_decay: f32,
    },
}

#[derive(Debug, Error)]
pub enum AutodiffError {
    #[error("node '{node}' ({op}): no gradient: {why}")]
    NoGradient {
        node: String,
        op: String,
        why: String,
    },
    #[error("loss: {0}")]
    Loss(String),
    #[error("tensor '{0}' is not a float weight of the graph, so it has no gradient")]
    NotAWeight(String),
    #[error(transparent)]
    Ir(#[from] IrError),
    /// An option the rewrite cannot apply.
    #[error("{0}")]
    Options(String),
}

/// Forward, loss and backward of a graph.
#[derive(Clone, Debug)]
pub struct GradGraph {
    /// `outputs = [loss, gradient of each requested tensor, in order]`.
    pub graph: Graph,
    pub loss: TensorId,
    /// Graph input `labels` (CrossEntropy: i64 `[N]`; Mse: the output's dtype and shape).
    pub labels: Option<TensorId>,
    /// Graph input `step` (i64 scalar), present when training-mode Dropout needs it.
    pub step: Option<TensorId>,
    /// (weight, its gradient), in the requested order.
    pub grads: Vec<(TensorId, TensorId)>,
    /// Forward activations read by the backward pass, in first-read order.
    pub saved: Vec<TensorId>,
    /// Nodes `..backward_start` are the forward pass and loss; the rest the backward pass
    /// (micro-batched steps interleave them: see `forward`).
    pub backward_start: usize,
    /// Per node: the forward node whose gradient rule emitted it (`None` for forward nodes,
    /// final weight-gradient sums and optimizer updates). Checkpointing runs a stage's
    /// backward nodes with the stage.
    pub backward_of: Vec<Option<NodeId>>,
    /// Per node, for a micro-batched step (`None` otherwise): a forward or loss node.
    pub forward: Option<Vec<bool>>,
    /// What the rewrites of [`StepOptions`] did.
    pub sites: Sites,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateKind {
    Parameter,
    Momentum,
    FirstMoment,
    SecondMoment,
    RunningMean,
    RunningVar,
}

/// A tensor carried from one step to the next: read as graph input `input`, written as
/// graph output `output`.
#[derive(Clone, Debug)]
pub struct State {
    pub name: String,
    pub kind: StateKind,
    pub input: TensorId,
    pub output: TensorId,
    pub init: Arc<TensorData>,
    /// The weight this state belongs to (the weight itself for a parameter).
    pub of: String,
}

/// One whole training step.
#[derive(Clone, Debug)]
pub struct TrainingGraph {
    /// `outputs = [loss, state[0].output, state[1].output, ...]`.
    pub graph: Graph,
    pub loss: TensorId,
    /// The forward graph's inputs (same names).
    pub data: Vec<TensorId>,
    pub labels: Option<TensorId>,
    /// Graph input `step`: i64 scalar, the 1-based step number.
    pub step: TensorId,
    pub state: Vec<State>,
    pub saved: Vec<TensorId>,
    pub grads: Vec<(TensorId, TensorId)>,
    pub backward_start: usize,
    /// As [`GradGraph::backward_of`].
    pub backward_of: Vec<Option<NodeId>>,
    /// As [`GradGraph::forward`].
    pub forward: Option<Vec<bool>>,
    /// What the rewrites of [`StepOptions`] did.
    pub sites: Sites,
    /// Micro-batched: per gradient, micro-batch 0's gradient and each running sum after it
    /// (the last is the gradient in `grads`). Each sum may overwrite the previous one, so the
    /// planner keeps one buffer per gradient, as without micro-batches.
    pub accumulate: Vec<Vec<TensorId>>,
}

/// Rewrites applied while a step is built, in pipeline order: SliceOut while the forward
/// pass is replayed, then DropIT and 16-bit storage on the forward + backward body, then
/// micro-batching unrolls the body.
#[derive(Clone, Debug, Default)]
pub struct StepOptions {
    /// SliceOut at this drop ratio ([`sliceout`]), in `(0, 1)` (training only).
    pub sliceout: Option<f32>,
    /// DropIT at this fraction of each layer input dropped ([`dropit`]), in `(0, 1)`.
    pub dropit: Option<f32>,
    /// Keep the saved activations in this 16-bit type ([`store`]).
    pub store: Option<DType>,
    /// Run the batch as this many micro-batches ([`microbatch`]).
    pub microbatch: Option<usize>,
}

/// Every site the rewrites of [`StepOptions`] found.
#[derive(Clone, Debug, Default)]
pub struct Sites {
    pub sliceout: Vec<SliceOutSite>,
    /// Dropouts SliceOut left dense: (node, why).
    pub sliceout_skipped: Vec<(String, String)>,
    pub dropit: Vec<DropItSite>,
    pub relu_masks: Vec<ReluMaskSite>,
    pub stored: Vec<StoreSite>,
}

/// What a step is built from, common to [`gradients_with`] and [`training_step_with`].
#[derive(Clone, Debug)]
struct Built {
    g: Graph,
    loss: TensorId,
    labels: Option<TensorId>,
    step: Option<TensorId>,
    data: Vec<TensorId>,
    grads: Vec<(TensorId, TensorId)>,
    saved: Vec<TensorId>,
    backward_start: usize,
    backward_of: Vec<Option<NodeId>>,
    forward: Option<Vec<bool>>,
    /// (running statistic input, output, forward weight, kind).
    running: Vec<(TensorId, TensorId, TensorId, StateKind)>,
    sites: Sites,
    /// Micro-batched: per gradient, its chain of running sums.
    chains: Vec<Vec<TensorId>>,
}

/// Builds forward, loss and backward of `forward` (the body, at `B / K` under
/// micro-batching), applies the body rewrites and unrolls. `wrt`: the weights differentiated
/// (forward tensors); `as_input`: weights that become graph inputs.
#[allow(clippy::too_many_arguments)]
fn build(
    forward: &Graph,
    output: TensorId,
    loss: Loss,
    wrt: &[TensorId],
    mode: Mode,
    as_input: &HashMap<TensorId, StateKind>,
    opts: &StepOptions,
    name: &str,
    unroll: bool,
) -> Result<(Built, Vec<TensorId>), AutodiffError> {
    let k = opts.microbatch.unwrap_or(1);
    let body_fwd;
    let (fwd, output) = if k > 1 {
        let batch = forward.batch().unwrap_or(1);
        if !batch.is_multiple_of(k) {
            return Err(AutodiffError::Options(format!(
                "--microbatch {k} does not divide the batch {batch}"
            )));
        }
        body_fwd = forward.with_batch(batch / k)?;
        let out = body_fwd
            .tensor_id(&forward.tensor(output).name)
            .ok_or_else(|| AutodiffError::Loss("the output vanished at the micro-batch".into()))?;
        (&body_fwd, out)
    } else {
        (forward, output)
    };
    let mut b = Builder::new(fwd, mode, name);
    let mut sites = Sites::default();
    if let Some(p) = opts.sliceout {
        if !(p > 0.0 && p < 1.0) {
            return Err(AutodiffError::Options(format!(
                "sliceout={p}: the drop ratio must be in (0, 1)"
            )));
        }
        if mode == Mode::Training {
            let (plan, found, skipped) = sliceout::find(fwd, p);
            b.slice = plan;
            sites.sliceout = found;
            sites.sliceout_skipped = skipped;
        }
    }
    let (loss_in, fused) = builder::loss_input(fwd, output, loss)?;
    b.replay(fwd, loss_in, as_input)?;
    if mode == Mode::Training {
        b.step_input()?;
    }
    let (loss_t, labels) = b.loss(fwd, loss_in, fused, loss)?;
    let backward_start = b.g.nodes.len();
    // Weights the loss does not reach are left out (training) or get zero gradients.
    let reached: Vec<TensorId> = wrt
        .iter()
        .copied()
        .filter(|&w| mode == Mode::Inference || b.is_mapped(w))
        .collect();
    let params: Vec<TensorId> = reached.iter().map(|&w| b.map(w)).collect();
    let mean = !matches!(loss, Loss::Sum);
    let seed = if mean { 1.0 / k as f32 } else { 1.0 };
    let grads = b.backward(loss_t, &params, seed)?;
    let saved = b.saved(backward_start);
    let data: Vec<TensorId> = fwd.inputs.iter().map(|&i| b.map(i)).collect();
    let mut backward_of = std::mem::take(&mut b.backward_of);
    backward_of.resize(b.g.nodes.len(), None);
    let mut built = Built {
        loss: loss_t,
        labels,
        step: b.step,
        data,
        grads,
        saved,
        backward_start,
        backward_of,
        forward: None,
        running: b
            .running_stats
            .iter()
            .map(|&(w, i, o, kind)| (i, o, w, kind))
            .collect(),
        sites,
        chains: Vec::new(),
        g: b.g,
    };
    if let Some(gamma) = opts.dropit {
        let (d, r) = dropit::dropit(
            &mut built.g,
            &mut built.saved,
            &mut built.backward_start,
            &mut built.backward_of,
            gamma,
        )?;
        built.sites.dropit = d;
        built.sites.relu_masks = r;
    }
    if let Some(to) = opts.store {
        built.sites.stored = store::store_saved(
            &mut built.g,
            &mut built.saved,
            &mut built.backward_start,
            &mut built.backward_of,
            to,
        )?;
    }
    if k > 1 && unroll {
        unroll_built(&mut built, k, mean, None)?;
    }
    Ok((built, reached))
}

/// Unrolls a built body `k` times ([`microbatch`]); `graph`: the body's graph rewritten
/// after it was built (rematerialised: original tensors keep their ids, the node order is
/// the execution order), replacing `built.g`.
fn unroll_built(
    built: &mut Built,
    k: usize,
    mean: bool,
    graph: Option<Graph>,
) -> Result<(), AutodiffError> {
    let backward_start = if graph.is_some() {
        0
    } else {
        built.backward_start
    };
    let (g, backward_of, forward) = match graph {
        Some(g) => {
            // The rewrite keeps node names and reorders: the forward nodes are those named
            // as the body's (recomputing copies are recomputation, not forward work).
            let names: std::collections::HashSet<&str> = built.g.nodes[..built.backward_start]
                .iter()
                .map(|n| n.name.as_str())
                .collect();
            let forward = g
                .nodes
                .iter()
                .map(|n| names.contains(n.name.as_str()))
                .collect();
            let n = g.nodes.len();
            (g, vec![None; n], forward)
        }
        None => {
            let forward = (0..built.g.nodes.len())
                .map(|v| v < built.backward_start)
                .collect();
            (
                std::mem::replace(&mut built.g, Graph::new("")),
                std::mem::take(&mut built.backward_of),
                forward,
            )
        }
    };
    let body = microbatch::Body {
        loss: built.loss,
        labels: built.labels,
        data: built.data.clone(),
        grads: built.grads.clone(),
        chained: built.running.iter().map(|r| (r.0, r.1)).collect(),
        forward,
        backward_of,
        g,
    };
    let u = microbatch::unroll(&body, k, mean)?;
    let id = |t: TensorId| {
        u.g.tensor_id(&body.g.tensor(t).name)
            .expect("shared tensors keep their names")
    };
    built.step = built.step.map(id);
    built.running = built
        .running
        .iter()
        .zip(&u.chained)
        .map(|(r, &(i, o))| (i, o, r.2, r.3))
        .collect();
    built.loss = u.loss;
    built.labels = u.labels;
    built.data = u.data;
    built.grads = u.grads;
    built.backward_of = u.backward_of;
    built.forward = Some(u.forward);
    built.saved = Vec::new();
    built.backward_start = backward_start;
    built.chains = u.chains;
    built.g = u.g;
    Ok(())
}

/// Gradients of `loss(output)` with respect to the weights `wrt` of `forward`.
pub fn gradients(
    forward: &Graph,
    output: TensorId,
    loss: Loss,
    wrt: &[TensorId],
    mode: Mode,
) -> Result<GradGraph, AutodiffError> {
    gradients_with(forward, output, loss, wrt, mode, &StepOptions::default())
}

/// [`gradients`] with the rewrites of `opts`.
pub fn gradients_with(
    forward: &Graph,
    output: TensorId,
    loss: Loss,
    wrt: &[TensorId],
    mode: Mode,
    opts: &StepOptions,
) -> Result<GradGraph, AutodiffError> {
    for &w in wrt {
        let t = forward.tensor(w);
        if forward.kind(w) != TensorKind::Weight || !t.dtype.is_float() {
            return Err(AutodiffError::NotAWeight(t.name.clone()));
        }
    }
    let name = format!("{}.grad", forward.name);
    let (mut b, _) = build(
        forward,
        output,
        loss,
        wrt,
        mode,
        &HashMap::new(),
        opts,
        &name,
        true,
    )?;
    let mut outputs = vec![b.loss];
    outputs.extend(b.grads.iter().map(|&(_, g)| g));
    b.g.set_outputs(outputs);
    b.g.validate()?;
    Ok(GradGraph {
        graph: b.g,
        loss: b.loss,
        labels: b.labels,
        step: b.step,
        grads: b.grads,
        saved: b.saved,
        backward_start: b.backward_start,
        backward_of: b.backward_of,
        forward: b.forward,
        sites: b.sites,
    })
}

/// One training step of `forward`: training semantics, `loss(output)`, gradients of every
/// trainable weight, and the optimizer update. Trainable weights, optimizer moments and
/// BatchNorm running statistics become [`State`].
pub fn training_step(
    forward: &Graph,
    output: TensorId,
    loss: Loss,
    optimizer: &Optimizer,
) -> Result<TrainingGraph, AutodiffError> {
    training_step_with(forward, output, loss, optimizer, &StepOptions::default())
}

/// [`training_step`] with the rewrites of `opts`.
pub fn training_step_with(
    forward: &Graph,
    output: TensorId,
    loss: Loss,
    optimizer: &Optimizer,
    opts: &StepOptions,
) -> Result<TrainingGraph, AutodiffError> {
    training_body(forward, output, loss, opts)?.finish(forward, optimizer, None)
}

/// A training step's forward + backward body before micro-batches are unrolled and the
/// optimizer is attached (see [`training_body`]).
#[derive(Clone, Debug)]
pub struct TrainingBody {
    /// The body as a gradient step (at batch `B / K` under micro-batching): outputs are the
    /// loss, the parameters' gradients and the updated BatchNorm running statistics.
    pub graph: GradGraph,
    built: Built,
    reached: Vec<TensorId>,
    microbatch: usize,
    mean: bool,
}

/// The body of [`training_step_with`]: forward, loss and backward with the rewrites of
/// `opts` applied but micro-batches not yet unrolled, so a later stage (checkpointing) can
/// rewrite it before [`TrainingBody::finish`] unrolls it and attaches the optimizer.
pub fn training_body(
    forward: &Graph,
    output: TensorId,
    loss: Loss,
    opts: &StepOptions,
) -> Result<TrainingBody, AutodiffError> {
    let trainable = forward.trainable_weights();
    // Trainable weights and BatchNorm statistics become inputs carried between steps.
    let mut as_input: HashMap<TensorId, StateKind> = trainable
        .iter()
        .map(|&w| (w, StateKind::Parameter))
        .collect();
    for n in &forward.nodes {
        if let Op::BatchNormalization(_) = n.op {
            for (k, kind) in [(3, StateKind::RunningMean), (4, StateKind::RunningVar)] {
                if forward.kind(n.inputs[k]) == TensorKind::Weight {
                    as_input.entry(n.inputs[k]).or_insert(kind);
                }
            }
        }
    }
    let name = format!("{}.train", forward.name);
    let (built, reached) = build(
        forward,
        output,
        loss,
        &trainable,
        Mode::Training,
        &as_input,
        opts,
        &name,
        false,
    )?;
    let mut g = built.g.clone();
    let mut outputs = vec![built.loss];
    outputs.extend(built.grads.iter().map(|&(_, g)| g));
    outputs.extend(built.running.iter().map(|r| r.1));
    g.set_outputs(outputs);
    Ok(TrainingBody {
        graph: GradGraph {
            graph: g,
            loss: built.loss,
            labels: built.labels,
            step: built.step,
            grads: built.grads.clone(),
            saved: built.saved.clone(),
            backward_start: built.backward_start,
            backward_of: built.backward_of.clone(),
            forward: None,
            sites: built.sites.clone(),
        },
        built,
        reached,
        microbatch: opts.microbatch.unwrap_or(1),
        mean: !matches!(loss, Loss::Sum),
    })
}

impl TrainingBody {
    /// Micro-batches of the body.
    pub fn microbatches(&self) -> usize {
        self.microbatch
    }

    /// Unrolls the micro-batches and attaches `optimizer`: the whole step. `rewritten`: the
    /// body's graph as a later stage rewrote it (checkpointing; original tensors keep their
    /// ids and the node order is the execution order), used instead of the body as built.
    pub fn finish(
        self,
        forward: &Graph,
        optimizer: &Optimizer,
        rewritten: Option<Graph>,
    ) -> Result<TrainingGraph, AutodiffError> {
        let TrainingBody {
            mut built,
            reached,
            microbatch: k,
            mean,
            ..
        } = self;
        if k > 1 {
            unroll_built(&mut built, k, mean, rewritten)?;
        } else if let Some(g) = rewritten {
            built.backward_of = vec![None; g.nodes.len()];
            built.g = g;
        }
        attach_optimizer(forward, built, &reached, optimizer)
    }
}

/// Attaches `optimizer`'s update of every reached weight (and the BatchNorm statistics as
/// state) to a built step.
fn attach_optimizer(
    forward: &Graph,
    built: Built,
    reached: &[TensorId],
    optimizer: &Optimizer,
) -> Result<TrainingGraph, AutodiffError> {
    let Built {
        g,
        loss: loss_t,
        labels,
        step,
        data,
        grads,
        saved,
        backward_start,
        mut backward_of,
        forward: fwd_mask,
        running,
        sites,
        chains,
    } = built;
    let step = step.expect("a training step has a step input");
    let mut b = Builder::over(g);
    let mut state = Vec::new();
    let init = |w: TensorId| {
        forward
            .tensor(w)
            .value
            .clone()
            .expect("weights have values")
    };
    let zeros = |w: TensorId| {
        let t = forward.tensor(w);
        Arc::new(TensorData::zeros(t.dtype, t.numel()))
    };
    for (&w, &(p, gr)) in reached.iter().zip(&grads) {
        let name = forward.tensor(w).name.clone();
        let shape = forward.tensor(w).shape.clone();
        let dtype = forward.tensor(w).dtype;
        let moment = |b: &mut Builder, suffix: &str| -> Result<TensorId, AutodiffError> {
            let n = b.fresh(&format!("{name}.{suffix}"));
            Ok(b.g.add_input(n, dtype, shape.clone())?)
        };
        let mut push = |kind, input, output, init, name: String| {
            state.push(State {
                name,
                kind,
                input,
                output,
                init,
                of: forward.tensor(w).name.clone(),
            })
        };
        match *optimizer {
            Optimizer::Sgd {
                lr,
                momentum,
                weight_decay,
            } => {
                let op = Op::SgdUpdate {
                    lr,
                    momentum,
                    weight_decay,
                };
                if momentum != 0.0 {
                    let v = moment(&mut b, "momentum")?;
                    let o = b.emit(&format!("{name}.update"), op, &[p, gr, v], 2)?;
                    push(StateKind::Parameter, p, o[0], init(w), name.clone());
                    push(
                        StateKind::Momentum,
                        v,
                        o[1],
                        zeros(w),
                        b.g.tensor(v).name.clone(),
                    );
                } else {
                    let o = b.emit(&format!("{name}.update"), op, &[p, gr], 1)?;
                    push(StateKind::Parameter, p, o[0], init(w), name.clone());
                }
            }
            Optimizer::Adam {
                lr,
                beta1,
                beta2,
                epsilon,
                weight_decay,
            }
            | Optimizer::AdamW {
                lr,
                beta1,
                beta2,
                epsilon,
                weight_decay,
            } => {
                let decoupled = matches!(optimizer, Optimizer::AdamW { .. });
                let op = Op::AdamUpdate {
                    lr,
                    beta1,
                    beta2,
                    epsilon,
                    weight_decay,
                    decoupled,
                };
                let m = moment(&mut b, "adam_m")?;
                let v = moment(&mut b, "adam_v")?;
                let o = b.emit(&format!("{name}.update"), op, &[p, gr, m, v, step], 3)?;
                push(StateKind::Parameter, p, o[0], init(w), name.clone());
                push(
                    StateKind::FirstMoment,
                    m,
                    o[1],
                    zeros(w),
                    b.g.tensor(m).name.clone(),
                );
                push(
                    StateKind::SecondMoment,
                    v,
                    o[2],
                    zeros(w),
                    b.g.tensor(v).name.clone(),
                );
            }
        }
    }
    for &(input, output, w, kind) in &running {
        let name = forward.tensor(w).name.clone();
        state.push(State {
            name: name.clone(),
            kind,
            input,
            output,
            init: init(w),
            of: name,
        });
    }
    let mut outputs = vec![loss_t];
    outputs.extend(state.iter().map(|s| s.output));
    b.g.set_outputs(outputs);
    b.g.validate()?;
    backward_of.resize(b.g.nodes.len(), None);
    let forward_mask = fwd_mask.map(|mut f| {
        f.resize(b.g.nodes.len(), false);
        f
    });
    Ok(TrainingGraph {
        graph: b.g,
        loss: loss_t,
        data,
        labels,
        step,
        state,
        saved,
        grads,
        backward_start,
        backward_of,
        forward: forward_mask,
        sites,
        accumulate: chains,
    })
}

impl TrainingGraph {
    /// The initial values of the state inputs, in `state` order.
    pub fn initial_state(&self) -> Vec<Arc<TensorData>> {
        self.state.iter().map(|s| s.init.clone()).collect()
    }
}

/// The step input's value.
pub fn step_value(step: u64) -> TensorData {
    TensorData::I64(vec![step as i64])
}

/// The dtype of the labels a loss needs, if any.
pub fn labels_dtype(loss: Loss, output_dtype: DType) -> Option<DType> {
    match loss {
        Loss::CrossEntropy => Some(DType::I64),
        Loss::Mse => Some(output_dtype),
        _ => None,
    }
}
