//! A compiled step on a [`Device`]: the CPU executor's checked instruction table
//! ([`Program`]), with one device allocation for the arena and one for the persistent
//! block; every tensor is a view at its planned offset.

use lowmem_compile::{CompiledStep, InputRole};
use lowmem_exec::storage::{data_bytes, data_from_bytes};
use lowmem_exec::{Loc, Place, Program};
use lowmem_ir::{DType, Node, TensorData, TensorId};

use crate::device::Device;
use crate::ops::{DevCall, OpError, launch_op};
use crate::{CudaError, DevPtr};

/// One device allocation, freed on drop.
struct DevBlock<'d> {
    dev: &'d dyn Device,
    ptr: DevPtr,
    len: usize,
}

impl<'d> DevBlock<'d> {
    fn new(dev: &'d dyn Device, len: u64, what: &str) -> Result<DevBlock<'d>, CudaError> {
        let len = usize::try_from(len).map_err(|_| CudaError::OutOfMemory {
            what: what.into(),
            bytes: usize::MAX,
            free: 0,
            total: 0,
        })?;
        let ptr = if len == 0 {
            0
        } else {
            dev.alloc(len).map_err(|e| name_oom(e, what))?
        };
        Ok(DevBlock { dev, ptr, len })
    }
}

fn name_oom(e: CudaError, what: &str) -> CudaError {
    match e {
        CudaError::OutOfMemory {
            bytes, free, total, ..
        } => CudaError::OutOfMemory {
            what: what.into(),
            bytes,
            free,
            total,
        },
        e => e,
    }
}

impl Drop for DevBlock<'_> {
    fn drop(&mut self) {
        if self.len > 0 {
            self.dev.free(self.ptr);
        }
    }
}

/// A compiled step ready to run in its arena on a device.
pub struct CudaExecutor<'s, 'd> {
    step: &'s CompiledStep,
    dev: &'d dyn Device,
    program: Program<'s>,
    arena: DevBlock<'d>,
    persistent: DevBlock<'d>,
}

impl<'s, 'd> CudaExecutor<'s, 'd> {
    /// Checks the plan, allocates the arena and the persistent block on `dev`, and loads
    /// the weights and the step's state.
    pub fn new(step: &'s CompiledStep, dev: &'d dyn Device) -> Result<Self, CudaError> {
        let program = Program::new(step)?;
        let p = &step.plan;
        let persistent = DevBlock::new(dev, p.persistent_bytes, "the persistent block")?;
        let arena = DevBlock::new(dev, p.arena_bytes, "the arena")?;
        let mut ex = CudaExecutor {
            step,
            dev,
            program,
            arena,
            persistent,
        };
        for (i, t) in step.graph.tensors.iter().enumerate() {
            if let Some(v) = &t.value {
                ex.write(i, data_bytes(v))?;
            }
        }
        ex.load_state()?;
        Ok(ex)
    }

    pub fn step(&self) -> &'s CompiledStep {
        self.step
    }

    pub fn device(&self) -> &'d dyn Device {
        self.dev
    }

    /// Device bytes held: (persistent block, arena).
    pub fn held_bytes(&self) -> (usize, usize) {
        (self.persistent.len, self.arena.len)
    }

    fn addr(&self, l: Loc) -> DevPtr {
        let base = match l.place {
            Place::Arena => self.arena.ptr,
            Place::Persistent => self.persistent.ptr,
        };
        base + l.off as u64
    }

    fn write(&mut self, t: usize, bytes: &[u8]) -> Result<(), CudaError> {
        let l = self.program.loc[t];
        if bytes.len() != l.len {
            let name = &self.step.graph.tensors[t].name;
            return Err(CudaError::Exec(lowmem_exec::ExecError::Tensor {
                name: name.clone(),
                msg: format!("{} bytes written to a tensor of {}", bytes.len(), l.len),
            }));
        }
        if l.len > 0 {
            self.dev.upload(self.addr(l), bytes)?;
        }
        Ok(())
    }

    /// Writes the step's state values (weights, moments, running statistics).
    pub fn load_state(&mut self) -> Result<(), CudaError> {
        let step = self.step;
        for s in &step.state {
            lowmem_exec::check_state(step, s)?;
            self.write(s.input.index(), data_bytes(&s.value))?;
        }
        Ok(())
    }

    /// Copies `data` into graph input `k`, checking its dtype and size.
    pub fn set_input(&mut self, k: usize, data: &TensorData) -> Result<(), CudaError> {
        lowmem_exec::check_input(self.step, k, data)?;
        self.write(self.step.graph.inputs[k].index(), data_bytes(data))
    }

    /// Writes graph input `k` from raw bytes (its dtype's native layout).
    pub fn set_input_bytes(&mut self, k: usize, bytes: &[u8]) -> Result<(), CudaError> {
        let t = self.step.graph.inputs[k];
        self.write(t.index(), bytes)
    }

    /// Sets the `step` input (1-based), where the graph has one.
    pub fn set_step(&mut self, step: u64) -> Result<(), CudaError> {
        if let Some(k) = self.step.inputs.iter().position(|r| *r == InputRole::Step) {
            self.set_input_bytes(k, &(step as i64).to_ne_bytes())?;
        }
        Ok(())
    }

    /// Queues every step of the order once (asynchronous on a GPU; [`Self::read`] and
    /// [`Device::synchronize`] wait).
    pub fn run(&mut self) -> Result<(), CudaError> {
        self.run_observed(|_| {})
    }

    /// [`Self::run`], calling `after` with each node once it is queued.
    pub fn run_observed(&mut self, mut after: impl FnMut(&Node)) -> Result<(), CudaError> {
        let mut ins: Vec<Option<DevPtr>> = Vec::with_capacity(16);
        let mut outs: Vec<DevPtr> = Vec::with_capacity(8);
        for instr in &self.program.instrs {
            ins.clear();
            ins.extend(instr.ins.iter().map(|l| l.map(|l| self.addr(l))));
            outs.clear();
            outs.extend(instr.outs.iter().map(|&l| self.addr(l)));
            let call = DevCall {
                op: &instr.node.op,
                io: &instr.io,
                ins: &ins,
                outs: &outs,
                aliased: &instr.aliased,
                ws: instr.ws.map(|l| (self.addr(l), l.len)),
            };
            launch_op(self.dev, &call).map_err(|e| match e {
                OpError::Msg(msg) => CudaError::Node {
                    node: instr.node.name.clone(),
                    op: instr.node.op.name().to_string(),
                    msg,
                },
                OpError::Device(e) => CudaError::Node {
                    node: instr.node.name.clone(),
                    op: instr.node.op.name().to_string(),
                    msg: e.to_string(),
                },
            })?;
            after(instr.node);
        }
        Ok(())
    }

    /// Tensor `t`'s value (waits for the device).
    pub fn read(&self, t: TensorId) -> Result<TensorData, CudaError> {
        let l = self.program.loc[t.index()];
        let mut buf = vec![0u8; l.len];
        if l.len > 0 {
            self.dev.download(self.addr(l), &mut buf)?;
        }
        Ok(data_from_bytes(self.step.graph.tensor(t).dtype, &buf))
    }

    /// The graph outputs' values.
    pub fn outputs(&self) -> Result<Vec<TensorData>, CudaError> {
        self.step
            .graph
            .outputs
            .iter()
            .map(|&o| self.read(o))
            .collect()
    }

    /// The scalar loss (first output) of a training or gradient step.
    pub fn loss(&self) -> Result<f32, CudaError> {
        let g = &self.step.graph;
        match g.outputs.first() {
            Some(&o) if g.tensor(o).dtype == DType::F32 && g.tensor(o).numel() >= 1 => {
                let mut b = [0u8; 4];
                self.dev
                    .download(self.addr(self.program.loc[o.index()]), &mut b)?;
                Ok(f32::from_ne_bytes(b))
            }
            _ => Ok(f32::NAN),
        }
    }

    /// The current state values, in `step.state` order.
    pub fn state_values(&self) -> Result<Vec<TensorData>, CudaError> {
        self.step.state.iter().map(|s| self.read(s.input)).collect()
    }
}
