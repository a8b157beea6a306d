//! The checked instruction table of a [`CompiledStep`]: every tensor's place (arena or
//! persistent block, offset, length) and, per step of the order, where the node reads and
//! writes and its workspace. Built once and checked against the graph (offsets inside their
//! block and aligned, the order topological, in-place writes only over inputs that die
//! there, no write over bytes that a step reads or that are read later); every backend (the
//! CPU executor, the CUDA backend) runs the same table, so the plan governs execution on
//! each.

use lowmem_compile::{CompiledStep, StateSlot};
use lowmem_ir::{Node, TensorData, TensorId};

use crate::dispatch::{alias_input, may_alias, workspace_len};
use crate::{ExecError, NodeIo, node_err, prepare};

/// Most inputs one node may have here (slices are gathered on the stack).
pub const MAX_INPUTS: usize = 64;
/// Most outputs one node may have here.
pub const MAX_OUTPUTS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    Arena,
    Persistent,
}

/// Where a tensor's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pub place: Place,
    pub off: usize,
    pub len: usize,
}

impl Loc {
    pub fn overlaps(self, o: Loc) -> bool {
        self.place == o.place
            && self.len > 0
            && o.len > 0
            && self.off < o.off + o.len
            && o.off < self.off + self.len
    }
}

/// One step of the order, resolved.
pub struct Instr<'s> {
    pub node: &'s Node,
    /// The node's operand dtypes and shapes, its resolved window and workspace.
    pub io: NodeIo<'s>,
    /// `None`: overwritten in place by an output (read through it).
    pub ins: Vec<Option<Loc>>,
    pub outs: Vec<Loc>,
    /// Per output: whether it is placed over the input it overwrites in place.
    pub aliased: Vec<bool>,
    pub ws: Option<Loc>,
}

/// A compiled step's checked instruction table.
pub struct Program<'s> {
    /// Every tensor's place, by tensor index.
    pub loc: Vec<Loc>,
    /// The order's steps, resolved.
    pub instrs: Vec<Instr<'s>>,
}

impl<'s> Program<'s> {
    /// Resolves and checks `step`'s plan against its graph.
    pub fn new(step: &'s CompiledStep) -> Result<Program<'s>, ExecError> {
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

        Ok(Program { loc, instrs })
    }
}

/// Checks that `data` fits graph input `k` of `step` (dtype and element count): what every
/// backend's `set_input` accepts.
pub fn check_input(step: &CompiledStep, k: usize, data: &TensorData) -> Result<(), ExecError> {
    let g = &step.graph;
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
    Ok(())
}

/// Checks that a state slot's value fits its tensor: what every backend's `load_state`
/// accepts.
pub fn check_state(step: &CompiledStep, s: &StateSlot) -> Result<(), ExecError> {
    let t = step.graph.tensor(s.input);
    if s.value.dtype() != t.dtype || s.value.len() != t.numel() {
        return Err(ExecError::Input {
            name: t.name.clone(),
            msg: format!("state holds {} {} values", s.value.len(), s.value.dtype()),
        });
    }
    Ok(())
}
