//! Executing a [`CompiledStep`] inside its plan: one arena of exactly `arena_bytes` and one
//! persistent block of `persistent_bytes` (weights, inputs, gradients, optimizer state),
//! each allocated once when the executor is built. Every tensor is a view at its planned
//! offset; a state output overwrites its state input, so the next step reads the update.
//!
//! Building the executor checks the plan against the graph once (offsets inside their
//! block and aligned, the order topological, in-place writes only over inputs that die
//! there, no write over bytes that a step reads or that are read later); running a step
//! then only makes slices and calls the kernels, and allocates nothing.

use lowmem_compile::{CompiledStep, InputRole};
use lowmem_ir::{DType, Node, TensorData, TensorId};

use crate::block::Block;
use crate::dispatch::exec_op;
use crate::program::{
    Instr, Loc, MAX_INPUTS, MAX_OUTPUTS, Place, Program, check_input, check_state,
};
use crate::storage::{data_bytes, data_from_bytes};
use crate::{ExecError, node_err};

/// A compiled step ready to run in its arena.
pub struct Executor<'s> {
    step: &'s CompiledStep,
    arena: Block,
    persistent: Block,
    loc: Vec<Loc>,
    instrs: Vec<Instr<'s>>,
}

impl<'s> Executor<'s> {
    /// Allocates the arena and the persistent block, checks the plan, and loads the
    /// weights and the step's current state.
    pub fn new(step: &'s CompiledStep) -> Result<Executor<'s>, ExecError> {
        Executor::with_hook(step, || {})
    }

    /// [`Executor::new`], calling `before_blocks` once the plan is checked and the
    /// instruction table built, just before the arena and the persistent block are
    /// allocated (a measurement of the step's tensor memory starts there).
    pub fn with_hook(
        step: &'s CompiledStep,
        before_blocks: impl FnOnce(),
    ) -> Result<Executor<'s>, ExecError> {
        let Program { loc, instrs } = Program::new(step)?;
        let (g, p) = (&step.graph, &step.plan);
        // The checks' scratch is gone before the blocks come, so that a measurement started
        // by the hook sees the blocks alone.
        before_blocks();
        let arena = Block::new(p.arena_bytes, "arena")?;
        let persistent = Block::new(p.persistent_bytes, "persistent block")?;
        let mut ex = Executor {
            step,
            arena,
            persistent,
            loc,
            instrs,
        };
        for (i, t) in g.tensors.iter().enumerate() {
            if let Some(v) = &t.value {
                ex.bytes_mut(i).copy_from_slice(data_bytes(v));
            }
        }
        ex.load_state()?;
        Ok(ex)
    }

    pub fn step(&self) -> &'s CompiledStep {
        self.step
    }

    /// Bytes held: (persistent block, arena).
    pub fn held_bytes(&self) -> (usize, usize) {
        (self.persistent.len, self.arena.len)
    }

    fn ptr(&self, l: Loc) -> *mut u8 {
        let base = match l.place {
            Place::Arena => self.arena.ptr.as_ptr(),
            Place::Persistent => self.persistent.ptr.as_ptr(),
        };
        // SAFETY: every Loc was checked to lie inside its block.
        unsafe { base.add(l.off) }
    }

    /// The bytes of tensor `t` (valid once written).
    pub fn bytes(&self, t: usize) -> &[u8] {
        let l = self.loc[t];
        // SAFETY: inside the block (checked); `&self` excludes writers.
        unsafe { std::slice::from_raw_parts(self.ptr(l), l.len) }
    }

    fn bytes_mut(&mut self, t: usize) -> &mut [u8] {
        let l = self.loc[t];
        // SAFETY: inside the block (checked); `&mut self` makes this the only slice.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(l), l.len) }
    }

    /// Writes the step's state values (weights, moments, running statistics) into their
    /// persistent slots.
    pub fn load_state(&mut self) -> Result<(), ExecError> {
        let step = self.step;
        for s in &step.state {
            check_state(step, s)?;
            self.bytes_mut(s.input.index())
                .copy_from_slice(data_bytes(&s.value));
        }
        Ok(())
    }

    /// Graph input `k`'s bytes, to be written before [`Executor::run`].
    pub fn input_mut(&mut self, k: usize) -> &mut [u8] {
        let t = self.step.graph.inputs[k];
        self.bytes_mut(t.index())
    }

    /// Graph inputs `a` and `b` (distinct) at once, e.g. a batch's examples and labels.
    pub fn input_pair_mut(
        &mut self,
        a: usize,
        b: Option<usize>,
    ) -> Result<(&mut [u8], Option<&mut [u8]>), ExecError> {
        let g = &self.step.graph;
        let la = self.loc[g.inputs[a].index()];
        let lb = b.map(|b| self.loc[g.inputs[b].index()]);
        if let Some(lb) = lb
            && la.overlaps(lb)
        {
            return Err(ExecError::Layout(format!(
                "inputs '{}' and '{}' overlap",
                g.tensor(g.inputs[a]).name,
                g.tensor(g.inputs[b.unwrap_or(a)]).name
            )));
        }
        // SAFETY: both inside their block (checked when built) and disjoint (checked
        // above); `&mut self` excludes every other slice.
        unsafe {
            Ok((
                std::slice::from_raw_parts_mut(self.ptr(la), la.len),
                lb.map(|l| std::slice::from_raw_parts_mut(self.ptr(l), l.len)),
            ))
        }
    }

    /// Graph input `k` as f32 values.
    pub fn input_f32(&mut self, k: usize) -> Result<&mut [f32], ExecError> {
        self.input_as(k)
    }

    /// Graph input `k` as i64 values.
    pub fn input_i64(&mut self, k: usize) -> Result<&mut [i64], ExecError> {
        self.input_as(k)
    }

    fn input_as<T: bytemuck::Pod>(&mut self, k: usize) -> Result<&mut [T], ExecError> {
        let l = self.loc[self.step.graph.inputs[k].index()];
        // SAFETY: inside its block (checked when built); `&mut self` makes it the only slice.
        let b = unsafe { std::slice::from_raw_parts_mut(self.ptr(l), l.len) };
        bytemuck::try_cast_slice_mut(b).map_err(|e| ExecError::Input {
            name: self.input_name(k),
            msg: format!("not {} storage: {e:?}", std::any::type_name::<T>()),
        })
    }

    fn input_name(&self, k: usize) -> String {
        let g = &self.step.graph;
        g.tensor(g.inputs[k]).name.clone()
    }

    /// Copies `data` into graph input `k`, checking its dtype and size.
    pub fn set_input(&mut self, k: usize, data: &TensorData) -> Result<(), ExecError> {
        check_input(self.step, k, data)?;
        self.input_mut(k).copy_from_slice(data_bytes(data));
        Ok(())
    }

    /// Sets the `step` input (1-based), where the graph has one.
    pub fn set_step(&mut self, step: u64) -> Result<(), ExecError> {
        if let Some(k) = self.step.inputs.iter().position(|r| *r == InputRole::Step) {
            self.input_i64(k)?[0] = step as i64;
        }
        Ok(())
    }

    /// Runs every step of the order once. Allocates nothing.
    pub fn run(&mut self) -> Result<(), ExecError> {
        self.run_observed(|_| {})
    }

    /// [`Executor::run`], calling `after` with each node once it has run (for measuring
    /// per node).
    pub fn run_observed(&mut self, mut after: impl FnMut(&Node)) -> Result<(), ExecError> {
        for ins in &self.instrs {
            let mut ibuf: [&[u8]; MAX_INPUTS] = [&[]; MAX_INPUTS];
            for (slot, l) in ibuf.iter_mut().zip(&ins.ins) {
                if let Some(l) = *l {
                    // SAFETY: inside its block; within this step no written span overlaps
                    // a read span (checked when the executor was built).
                    *slot = unsafe { std::slice::from_raw_parts(self.ptr(l), l.len) };
                }
            }
            let mut obuf: [&mut [u8]; MAX_OUTPUTS] = Default::default();
            for (slot, l) in obuf.iter_mut().zip(&ins.outs) {
                // SAFETY: as above; written spans are pairwise disjoint.
                *slot = unsafe { std::slice::from_raw_parts_mut(self.ptr(*l), l.len) };
            }
            let ws: &mut [f32] = match ins.ws {
                // SAFETY: as above; the workspace is disjoint from every other span here,
                // and arena offsets are 256-byte aligned.
                Some(l) => unsafe {
                    std::slice::from_raw_parts_mut(self.ptr(l).cast::<f32>(), l.len / 4)
                },
                None => &mut [],
            };
            let n = ins.ins.len();
            let m = ins.outs.len();
            exec_op(
                &ins.io.call(&ins.node.op, &ibuf[..n], &ins.aliased),
                &mut obuf[..m],
                ws,
            )
            .map_err(node_err(ins.node))?;
            after(ins.node);
        }
        Ok(())
    }

    /// Tensor `t`'s value (allocates; for reading results after a step).
    pub fn read(&self, t: TensorId) -> TensorData {
        data_from_bytes(self.step.graph.tensor(t).dtype, self.bytes(t.index()))
    }

    /// The graph outputs' values.
    pub fn outputs(&self) -> Vec<TensorData> {
        self.step
            .graph
            .outputs
            .iter()
            .map(|&o| self.read(o))
            .collect()
    }

    /// The scalar loss (first output) of a training or gradient step, without allocating.
    pub fn loss(&self) -> f32 {
        let g = &self.step.graph;
        match g.outputs.first() {
            Some(&o) if g.tensor(o).dtype == DType::F32 && g.tensor(o).numel() >= 1 => {
                let b = self.bytes(o.index());
                f32::from_ne_bytes([b[0], b[1], b[2], b[3]])
            }
            _ => f32::NAN,
        }
    }

    /// The current state values, in `step.state` order.
    pub fn state_values(&self) -> Vec<TensorData> {
        self.step.state.iter().map(|s| self.read(s.input)).collect()
    }
}
