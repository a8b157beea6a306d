//! The training loop's step on a device: the next batch is written into host staging
//! buffers (allocated once), uploaded into the step's input slots, the step number set,
//! and the step queued inside its arena; the state stays on the device, updated in place.

use std::sync::Arc;

use lowmem_compile::CompiledStep;
use lowmem_exec::train::{BatchSource, Labels, StepProbe};
use lowmem_ir::{DType, TensorData};

use crate::device::Device;
use crate::{CudaError, CudaExecutor};

/// A training step run step after step on a device.
pub struct CudaTrainer<'s, 'd> {
    ex: CudaExecutor<'s, 'd>,
    data: usize,
    labels: Option<(usize, DType)>,
    x: Vec<f32>,
    classes: Vec<i64>,
    targets: Vec<f32>,
    steps: u64,
}

fn input_err(step: &CompiledStep, k: usize, msg: String) -> CudaError {
    let g = &step.graph;
    CudaError::Exec(lowmem_exec::ExecError::Input {
        name: g.tensor(g.inputs[k]).name.clone(),
        msg,
    })
}

impl<'s, 'd> CudaTrainer<'s, 'd> {
    /// Builds the executor of `step` on `dev`; `step` must be a training step with one f32
    /// data input.
    pub fn new(step: &'s CompiledStep, dev: &'d dyn Device) -> Result<Self, CudaError> {
        let (data, labels) = lowmem_exec::train::batch_inputs(step)?;
        let g = &step.graph;
        let xt = g.tensor(g.inputs[data]);
        let labels = labels.map(|k| (k, g.tensor(g.inputs[k]).dtype));
        let n_labels = labels.map_or(0, |(k, _)| g.tensor(g.inputs[k]).numel());
        Ok(CudaTrainer {
            ex: CudaExecutor::new(step, dev)?,
            data,
            labels,
            x: vec![0.0; xt.numel()],
            classes: vec![
                0;
                if matches!(labels, Some((_, DType::I64))) {
                    n_labels
                } else {
                    0
                }
            ],
            targets: vec![
                0.0;
                if matches!(labels, Some((_, DType::I64))) {
                    0
                } else {
                    n_labels
                }
            ],
            steps: 0,
        })
    }

    /// Queues one step on the next batch of `source`. The loss is not read (that would
    /// wait for the device): see [`Self::loss`].
    pub fn step(
        &mut self,
        source: &mut dyn BatchSource,
        probe: &mut dyn StepProbe,
    ) -> Result<(), CudaError> {
        self.steps += 1;
        probe.before();
        let step = self.ex.step();
        let l = match self.labels {
            Some((_, DType::I64)) => Some(Labels::Classes(&mut self.classes)),
            Some(_) => Some(Labels::Targets(&mut self.targets)),
            None => None,
        };
        source
            .fill(&mut self.x, l)
            .map_err(|m| input_err(step, self.data, m))?;
        self.ex
            .set_input_bytes(self.data, bytemuck::cast_slice(&self.x))?;
        if let Some((k, d)) = self.labels {
            let bytes: &[u8] = if d == DType::I64 {
                bytemuck::cast_slice(&self.classes)
            } else {
                bytemuck::cast_slice(&self.targets)
            };
            self.ex.set_input_bytes(k, bytes)?;
        }
        self.ex.set_step(self.steps)?;
        let r = self.ex.run();
        probe.after();
        r
    }

    /// The last step's loss (waits for the device).
    pub fn loss(&self) -> Result<f32, CudaError> {
        self.ex.loss()
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    pub fn executor(&self) -> &CudaExecutor<'s, 'd> {
        &self.ex
    }

    /// The current state values, in `step.state` order (waits for the device).
    pub fn state(&self) -> Result<Vec<Arc<TensorData>>, CudaError> {
        Ok(self.ex.state_values()?.into_iter().map(Arc::new).collect())
    }
}
