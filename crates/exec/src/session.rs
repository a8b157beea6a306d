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
use crate::dispatch::{alias_input, exec_op, may_alias, workspace_len};
use crate::storage::{data_bytes, data_from_bytes};
use crate::{ExecError, NodeIo, node_err, prepare};

/// Most inputs one node may have here (slices are gathered on the stack).
pub const MAX_INPUTS: usize = 64;
/// Most outputs one node may have here.
pub const MAX_OUTPUTS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Arena,
    Persistent,
}

/// Where a tensor's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Loc {
    place: Place,
    off: usize,
    len: usize,
}

impl Loc {
    fn overlaps(self, o: Loc) -> bool {
        self.place == o.place
            && self.len > 0
            && o.len > 0
            && self.off < o.off + o.len
            && o.off < self.off + self.len
    }
}

/// One step of the order, resolved.
struct Instr<'s> {
    node: &'s Node,
    io: NodeIo<'s>,
    /// `None`: overwritten in place by an output (read through it).
    ins: Vec<Option<Loc>>,
    outs: Vec<Loc>,
    aliased: Vec<bool>,
    ws: Option<Loc>,
}

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
        let g = &step.graph;
        let p = &step.plan;
        let (nt, nn) = (g.tensors.len(), g.nodes.len());
        let lerr = |msg: String| ExecError::Layout(msg);
        if p.tensor_offset.len() != nt || p.persistent_offset.len() != nt {
            return Err(lerr(format!(
                "{} arena and {} persistent offsets for {nt} tensors",
                p.tensor_offset.len(),
                p.persistent_offset.len()
            )));
        }
        if p.order.len() != nn || p.workspace.len() != nn {
            return Err(lerr(format!(
                "order of {} nodes and {} workspaces for {nn} nodes",
                p.order.len(),
                p.workspace.len()
            )));
        }
        // Every tensor's place, inside its block and aligned to its dtype.
        let mut loc = Vec::with_capacity(nt);
        for (i, t) in g.tensors.iter().enumerate() {
            let terr = |msg: String| ExecError::Tensor {
                name: t.name.clone(),
                msg,
            };
            let ti = TensorId(i as u32);
            let (place, off, size) = match (p.tensor_offset[ti], p.persistent_offset[ti]) {
                (Some(o), None) => (Place::Arena, o, p.arena_bytes),
                (None, Some(o)) => (Place::Persistent, o, p.persistent_bytes),
                (Some(_), Some(_)) => {
                    return Err(terr("has both an arena and a persistent offset".into()));
                }
                (None, None) => return Err(terr("has no offset in the plan".into())),
            };
            if t.value.is_some() && place == Place::Arena {
                return Err(terr(
                    "is a weight, but the plan puts it in the arena".into(),
                ));
            }
            let bytes = t.bytes() as u64;
            if off.checked_add(bytes).is_none_or(|e| e > size) {
                return Err(terr(format!(
                    "offset {off} + {bytes} bytes is past the {} of {size} bytes",
                    if place == Place::Arena {
                        "arena"
                    } else {
                        "persistent block"
                    }
                )));
            }
            if !off.is_multiple_of(t.dtype.size() as u64) {
                return Err(terr(format!(
                    "offset {off} is not aligned to its dtype {}",
                    t.dtype
                )));
            }
            if t.shape.len() > crate::kernels::MAX_RANK {
                return Err(terr(format!(
                    "rank {} is above the executor's limit of {}",
                    t.shape.len(),
                    crate::kernels::MAX_RANK
                )));
            }
            loc.push(Loc {
                place,
                off: off as usize,
                len: bytes as usize,
            });
        }
        // Persistent tensors never share bytes, except a state output with its input.
        let mut spans: Vec<(usize, usize, usize)> = (0..nt)
            .filter(|&i| {
                loc[i].place == Place::Persistent
                    && step.roles.state_alias[TensorId(i as u32)].is_none()
            })
            .map(|i| (loc[i].off, loc[i].len, i))
            .collect();
        spans.sort_unstable();
        for w in spans.windows(2) {
            let ((a_off, a_len, a), (b_off, _, b)) = (w[0], w[1]);
            if a_len > 0 && a_off + a_len > b_off {
                return Err(lerr(format!(
                    "persistent tensors '{}' and '{}' overlap at byte {b_off}",
                    g.tensors[a].name, g.tensors[b].name
                )));
            }
        }
        for (i, a) in step.roles.state_alias.values().enumerate() {
            if let Some(a) = a
                && loc[i] != loc[a.index()]
            {
                return Err(lerr(format!(
                    "state output '{}' is not placed over its input '{}'",
                    g.tensors[i].name,
                    g.tensor(*a).name
                )));
            }
        }

        // The order: every node once, each reading only what exists by then.
        let mut seen = vec![false; nn];
        let mut last = vec![None::<usize>; nt];
        for (s, &n) in p.order.iter().enumerate() {
            match seen.get_mut(n.index()) {
                Some(v) if !*v => *v = true,
                Some(_) => return Err(lerr(format!("node {} is ordered twice", g.node(n).name))),
                None => return Err(lerr(format!("order names {n:?}, which does not exist"))),
            }
            let node = g.node(n);
            for &t in node.inputs.iter().chain(&node.outputs) {
                last[t.index()] = Some(s);
            }
        }
        let kept = |t: usize| g.outputs.iter().any(|o| o.index() == t);
        let mut written: Vec<bool> = (0..nt)
            .map(|i| {
                loc[i].place == Place::Persistent
                    && step.graph.kind(TensorId(i as u32)) != lowmem_ir::TensorKind::Activation
            })
            .collect();
        let mut live: Vec<usize> = Vec::new();
        let mut instrs = Vec::with_capacity(nn);
        for (s, &n) in p.order.iter().enumerate() {
            let node = g.node(n);
            let nerr = node_err(node);
            if node.inputs.len() > MAX_INPUTS || node.outputs.len() > MAX_OUTPUTS {
                return Err(nerr(format!(
                    "{} inputs and {} outputs; the arena executor takes at most {MAX_INPUTS} and {MAX_OUTPUTS}",
                    node.inputs.len(),
                    node.outputs.len()
                )));
            }
            let io = prepare(g, node).map_err(&nerr)?;
            for &t in &node.inputs {
                if !written[t.index()] {
                    return Err(nerr(format!(
                        "reads tensor '{}', which has no value here (not an input, weight or earlier output in the order)",
                        g.tensor(t).name
                    )));
                }
            }
            let dies = |t: usize| last[t] == Some(s) && !kept(t);
            let once = |t: usize| node.inputs.iter().filter(|u| u.index() == t).count() == 1;
            let mut aliased = vec![false; node.outputs.len()];
            for (k, &o) in node.outputs.iter().enumerate() {
                let Some(j) = alias_input(&node.op, k) else {
                    continue;
                };
                let Some(&t) = node.inputs.get(j) else {
                    continue;
                };
                let (oi, ti) = (o.index(), t.index());
                if loc[oi] == loc[ti] && loc[oi].len > 0 {
                    // A state input dies at its update even when it is a graph output's
                    // bytes: the output is the update.
                    let state_update = step.roles.state_alias[o] == Some(t);
                    if !((dies(ti) || (state_update && last[ti] == Some(s)))
                        && once(ti)
                        && may_alias(&node.op, io.input(j), io.output(k)))
                    {
                        return Err(nerr(format!(
                            "the plan puts output '{}' over input '{}', which it cannot overwrite in place here{}",
                            g.tensors[oi].name,
                            g.tensors[ti].name,
                            if state_update {
                                " (the state is read after its update: tied weights?)"
                            } else {
                                ""
                            }
                        )));
                    }
                    aliased[k] = true;
                }
            }
            let in_place: Vec<bool> = (0..node.inputs.len())
                .map(|j| {
                    (0..aliased.len()).any(|k| aliased[k] && alias_input(&node.op, k) == Some(j))
                })
                .collect();
            let need = workspace_len(&node.op, &io.shapes).map_err(&nerr)? * 4;
            let ws = match p.workspace.as_slice()[s] {
                Some((off, bytes)) if bytes as usize >= need => {
                    if off.checked_add(bytes).is_none_or(|e| e > p.arena_bytes)
                        || !off.is_multiple_of(8)
                    {
                        return Err(nerr(format!(
                            "workspace at offset {off} + {bytes} bytes is past the arena of {} bytes or misaligned",
                            p.arena_bytes
                        )));
                    }
                    Some(Loc {
                        place: Place::Arena,
                        off: off as usize,
                        len: need,
                    })
                }
                _ if need == 0 => None,
                w => {
                    return Err(nerr(format!(
                        "workspace of {} bytes is planned, the kernel needs {need} bytes",
                        w.map_or(0, |w| w.1)
                    )));
                }
            };
            // What this step writes must not touch what it reads or what is read later.
            let reads: Vec<(Loc, usize)> = node
                .inputs
                .iter()
                .zip(&in_place)
                .filter(|&(_, &ip)| !ip)
                .map(|(&t, _)| (loc[t.index()], t.index()))
                .collect();
            let mut writes: Vec<(Loc, String)> = node
                .outputs
                .iter()
                .zip(&aliased)
                .map(|(&o, _)| (loc[o.index()], format!("output '{}'", g.tensor(o).name)))
                .collect();
            if let Some(w) = ws {
                writes.push((w, "the workspace".into()));
            }
            for (a, (wa, what_a)) in writes.iter().enumerate() {
                for (wb, what_b) in &writes[a + 1..] {
                    if wa.overlaps(*wb) {
                        return Err(nerr(format!("the plan overlaps {what_a} and {what_b}")));
                    }
                }
                for &(r, t) in &reads {
                    if wa.overlaps(r) {
                        return Err(nerr(format!(
                            "the plan overlaps {what_a} with input '{}', which the kernel reads while it writes",
                            g.tensors[t].name
                        )));
                    }
                }
                for &t in &live {
                    let input = node.inputs.iter().any(|u| u.index() == t);
                    if !input && wa.overlaps(loc[t]) {
                        return Err(nerr(format!(
                            "the plan writes {what_a} over tensor '{}', which is read later",
                            g.tensors[t].name
                        )));
                    }
                }
            }
            for &o in &node.outputs {
                written[o.index()] = true;
                if loc[o.index()].place == Place::Arena {
                    live.push(o.index());
                }
            }
            live.retain(|&t| last[t].is_some_and(|l| l > s) || kept(t));
            instrs.push(Instr {
                node,
                ins: node
                    .inputs
                    .iter()
                    .zip(&in_place)
                    .map(|(&t, &ip)| (!ip).then_some(loc[t.index()]))
                    .collect(),
                outs: node.outputs.iter().map(|&o| loc[o.index()]).collect(),
                aliased,
                ws,
                io,
            });
        }
        for &o in &g.outputs {
            if !written[o.index()] {
                return Err(ExecError::Tensor {
                    name: g.tensor(o).name.clone(),
                    msg: "graph output is never written".into(),
                });
            }
        }

        // The checks' scratch goes before the blocks come, so that a measurement started by
        // the hook sees the blocks alone.
        drop((spans, seen, last, written, live));
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
            let t = step.graph.tensor(s.input);
            if s.value.dtype() != t.dtype || s.value.len() != t.numel() {
                return Err(ExecError::Input {
                    name: t.name.clone(),
                    msg: format!("state holds {} {} values", s.value.len(), s.value.dtype()),
                });
            }
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
        let g = &self.step.graph;
        let t = g.tensor(g.inputs[k]);
        if data.dtype() != t.dtype || data.len() != t.numel() {
            return Err(ExecError::Input {
                name: t.name.clone(),
                msg: format!(
                    "expected {} {:?} ({} elements), got {} {}",
                    t.dtype,
                    t.shape,
                    t.numel(),
                    data.len(),
                    data.dtype()
                ),
            });
        }
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
