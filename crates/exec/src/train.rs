//! The training loop over a compiled training step: each step writes the next batch into
//! the step's input slots, sets the step number and runs the step inside its arena; the
//! state (weights, moments, running statistics) is updated in place in the persistent
//! block. Nothing here allocates once the executor is built.

use std::sync::Arc;

use lowmem_compile::{CompiledStep, InputRole, Task};
use lowmem_ir::{DType, TensorData};

use crate::{ExecError, Executor};

/// Where a batch's labels go: class indices, or targets (one-hot rows for a regression
/// loss such as mse).
pub enum Labels<'a> {
    Classes(&'a mut [i64]),
    Targets(&'a mut [f32]),
}

/// A source of training batches.
pub trait BatchSource {
    /// Writes the next batch: examples into `x` (the data input's elements) and, where the
    /// loss has labels, into `labels`. An error names what does not fit.
    fn fill(&mut self, x: &mut [f32], labels: Option<Labels<'_>>) -> Result<(), String>;
}

/// Hooks around each step's execution (e.g. measuring the heap while it runs).
pub trait StepProbe {
    fn before(&mut self) {}
    fn after(&mut self) {}
    /// Called once the executor's instruction table is built, before its arena and
    /// persistent block are allocated.
    fn before_blocks(&mut self) {}
}

/// No hooks.
pub struct NoProbe;
impl StepProbe for NoProbe {}

/// A training step's data input (it must have exactly one, f32) and its labels input, if
/// any: the slots a trainer writes each batch into, on any backend.
pub fn batch_inputs(step: &CompiledStep) -> Result<(usize, Option<usize>), ExecError> {
    if !matches!(step.task, Task::Training { .. }) {
        return Err(ExecError::Layout(format!(
            "the compiled step is a {} step, not a training step",
            step.task.name()
        )));
    }
    let mut data_inputs =
        (0..step.inputs.len()).filter(|&k| matches!(step.inputs[k], InputRole::Data(_)));
    let (Some(data), None) = (data_inputs.next(), data_inputs.next()) else {
        return Err(ExecError::Layout(format!(
            "training needs a model with one data input; this one has {}",
            step.inputs
                .iter()
                .filter(|r| matches!(r, InputRole::Data(_)))
                .count()
        )));
    };
    let g = &step.graph;
    if g.tensor(g.inputs[data]).dtype != DType::F32 {
        return Err(ExecError::Input {
            name: g.tensor(g.inputs[data]).name.clone(),
            msg: "the data input must be f32".into(),
        });
    }
    let labels = step.inputs.iter().position(|r| *r == InputRole::Labels);
    Ok((data, labels))
}

/// A training step being run, step after step.
pub struct Trainer<'s> {
    ex: Executor<'s>,
    data: usize,
    labels: Option<usize>,
    steps: u64,
}

impl<'s> Trainer<'s> {
    /// Builds the executor of `step`, which must be a training step with one f32 data input.
    pub fn new(step: &'s CompiledStep) -> Result<Trainer<'s>, ExecError> {
        Trainer::with_hook(step, || {})
    }

    /// [`Trainer::new`] with [`Executor::with_hook`]'s hook.
    pub fn with_hook(
        step: &'s CompiledStep,
        before_blocks: impl FnOnce(),
    ) -> Result<Trainer<'s>, ExecError> {
        let (data, labels) = batch_inputs(step)?;
        Ok(Trainer {
            ex: Executor::with_hook(step, before_blocks)?,
            data,
            labels,
            steps: 0,
        })
    }

    /// Runs one step on the next batch of `source`; returns its loss.
    pub fn step(
        &mut self,
        source: &mut dyn BatchSource,
        probe: &mut dyn StepProbe,
    ) -> Result<f32, ExecError> {
        self.steps += 1;
        let g = &self.ex.step().graph;
        let input_err = |k: usize, msg: String| ExecError::Input {
            name: g.tensor(g.inputs[k]).name.clone(),
            msg,
        };
        probe.before();
        let (data, labels) = (self.data, self.labels);
        // The data and label slots are disjoint tensors of the persistent block.
        let (x, l) = self.ex.input_pair_mut(data, labels)?;
        let x: &mut [f32] =
            bytemuck::try_cast_slice_mut(x).map_err(|e| input_err(data, format!("{e:?}")))?;
        let l = match (labels, l) {
            (Some(k), Some(b)) => Some(match g.tensor(g.inputs[k]).dtype {
                DType::I64 => Labels::Classes(
                    bytemuck::try_cast_slice_mut(b).map_err(|e| input_err(k, format!("{e:?}")))?,
                ),
                _ => Labels::Targets(
                    bytemuck::try_cast_slice_mut(b).map_err(|e| input_err(k, format!("{e:?}")))?,
                ),
            }),
            _ => None,
        };
        source.fill(x, l).map_err(|m| input_err(data, m))?;
        self.ex.set_step(self.steps)?;
        let r = self.ex.run();
        probe.after();
        r?;
        Ok(self.ex.loss())
    }

    /// Steps run so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    pub fn executor(&self) -> &Executor<'s> {
        &self.ex
    }

    /// The current state values, in `step.state` order.
    pub fn state(&self) -> Vec<Arc<TensorData>> {
        self.ex.state_values().into_iter().map(Arc::new).collect()
    }
}
