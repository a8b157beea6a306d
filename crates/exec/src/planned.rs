//! Execution inside one planned arena: every tensor with an offset lives in a single
//! allocation of `arena_bytes`, and so does every step's kernel workspace.

use lowmem_ir::{Graph, NodeId, TensorData};

use crate::block::Block;
use crate::dispatch::{alias_input, exec_op, may_alias, workspace_len};
use crate::storage::{Store, data_bytes, data_from_bytes};
use crate::{ExecError, check_inputs, last_uses, node_err, prepare};

/// Where a step's tensors and workspaces live (what a memory plan decides).
#[derive(Clone, Copy, Debug)]
pub struct Layout<'a> {
    /// The execution order: every node of the graph once, in a topological order.
    pub order: &'a [NodeId],
    /// Per tensor: its byte offset in the arena; `None` = outside it (weights, graph
    /// inputs, persistent tensors such as gradients and updated state).
    pub tensor_offset: &'a [Option<u64>],
    /// Per step (position in `order`): the `(offset, bytes)` of its kernel workspace.
    pub workspace: &'a [Option<(u64, u64)>],
    pub arena_bytes: u64,
}

/// What [`run_planned`] allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArenaStats {
    /// Bytes allocated for the arena (once).
    pub arena_bytes: u64,
    /// Tensors allocated outside the arena during the step: outputs without an offset that
    /// could not take over a dying outside input in place (gradients, BatchNorm running
    /// statistics, state updates whose old value is still read later).
    pub outside_allocs: usize,
}

/// A byte range of the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    off: usize,
    len: usize,
}

impl Span {
    fn overlaps(self, o: Span) -> bool {
        self.len > 0 && o.len > 0 && self.off < o.off + o.len && o.off < self.off + self.len
    }
}

/// Runs `graph` on `inputs` (in `graph.inputs` order, taken by value) with every tensor
/// that `layout` gives an offset inside ONE allocation of `layout.arena_bytes`, and every
/// step's kernel scratch in its planned workspace there. The results are those of
/// [`crate::run`], bit for bit (both go through the same per-op code).
///
/// Tensors without an offset that a node produces are allocated outside the arena
/// ([`ArenaStats::outside_allocs`]), except that an output may take over the storage of the
/// input its kernel overwrites in place (see below). Graph outputs are returned as owned
/// data (copied out of the arena).
///
/// In place: when output `k`'s in-place input (input 0 for elementwise ops, views, Dropout
/// and the optimizer updates; the velocity / moments for the updated optimizer state) has
/// the same offset and size, the kernel overwrites it; the layout must only do so where
/// that input dies at this step. An output without an offset over such an input without an
/// offset (a parameter or moment passed in `inputs`) that dies here is written into the
/// caller's buffer, which is then returned as the output (state updated in place).
///
/// Errors, never panics, on a layout that does not fit: an offset or workspace past the
/// arena or misaligned for its dtype, an offset on a graph input or weight, an order that is
/// not a topological order of all nodes, a workspace smaller than the kernel needs, and
/// ranges that a step reads and writes at once (or a write over a tensor that is still to be
/// read) overlapping. The per-step disjointness check is also what makes the arena's raw
/// slices sound: within a step, every mutable slice is disjoint from every other slice.
pub fn run_planned(
    graph: &Graph,
    layout: &Layout,
    inputs: Vec<TensorData>,
) -> Result<(Vec<TensorData>, ArenaStats), ExecError> {
    check_inputs(graph, &inputs)?;
    let (nt, nn) = (graph.tensors.len(), graph.nodes.len());
    let lerr = |msg: String| ExecError::Layout(msg);
    if layout.tensor_offset.len() != nt {
        return Err(lerr(format!(
            "{} tensor offsets for {nt} tensors",
            layout.tensor_offset.len()
        )));
    }
    if layout.order.len() != nn || layout.workspace.len() != nn {
        return Err(lerr(format!(
            "order of {} nodes and {} workspaces for {nn} nodes",
            layout.order.len(),
            layout.workspace.len()
        )));
    }
    let mut seen = vec![false; nn];
    for &n in layout.order {
        match seen.get_mut(n.index()) {
            Some(s) if !*s => *s = true,
            Some(_) => {
                return Err(lerr(format!(
                    "node {} is ordered twice",
                    graph.node(n).name
                )));
            }
            None => return Err(lerr(format!("order names {n:?}, which does not exist"))),
        }
    }
    let arena_len = usize::try_from(layout.arena_bytes)
        .map_err(|_| lerr(format!("arena of {} bytes", layout.arena_bytes)))?;

    // Where each arena tensor lives, checked against the arena.
    let mut span: Vec<Option<Span>> = vec![None; nt];
    for (i, (t, off)) in graph.tensors.iter().zip(layout.tensor_offset).enumerate() {
        let Some(off) = *off else { continue };
        let terr = |msg: String| ExecError::Tensor {
            name: t.name.clone(),
            msg,
        };
        if t.value.is_some() || graph.inputs.iter().any(|u| u.index() == i) {
            return Err(terr(format!(
                "has arena offset {off}, but weights and graph inputs live outside the arena"
            )));
        }
        let bytes = t.bytes() as u64;
        if off
            .checked_add(bytes)
            .is_none_or(|e| e > layout.arena_bytes)
        {
            return Err(terr(format!(
                "offset {off} + {bytes} bytes is past the arena of {} bytes",
                layout.arena_bytes
            )));
        }
        if !off.is_multiple_of(t.dtype.size() as u64) {
            return Err(terr(format!(
                "offset {off} is not aligned to its dtype {}",
                t.dtype
            )));
        }
        span[i] = Some(Span {
            off: off as usize,
            len: bytes as usize,
        });
    }
    let mut ws_span: Vec<Option<Span>> = vec![None; nn];
    for (s, (&n, ws)) in layout.order.iter().zip(layout.workspace).enumerate() {
        let Some((off, bytes)) = *ws else { continue };
        let nerr = node_err(graph.node(n));
        if off
            .checked_add(bytes)
            .is_none_or(|e| e > layout.arena_bytes)
        {
            return Err(nerr(format!(
                "workspace at offset {off} + {bytes} bytes is past the arena of {} bytes",
                layout.arena_bytes
            )));
        }
        if !off.is_multiple_of(4) {
            return Err(nerr(format!(
                "workspace offset {off} is not 4-byte aligned"
            )));
        }
        ws_span[s] = Some(Span {
            off: off as usize,
            len: bytes as usize,
        });
    }

    let arena = Block::new(arena_len as u64, "arena")?;
    let base = arena.ptr.as_ptr();
    let last = last_uses(graph, layout.order);
    let mut outside: Vec<Option<Store>> = (0..nt).map(|_| None).collect();
    for (&id, data) in graph.inputs.iter().zip(inputs) {
        outside[id.index()] = Some(Store::Data(data));
    }
    let mut written = vec![false; nt];
    // Arena tensors holding a value still to be read.
    let mut live: Vec<usize> = Vec::new();
    let mut outside_allocs = 0usize;
    let name = |t: usize| graph.tensors[t].name.as_str();

    for (s, &n) in layout.order.iter().enumerate() {
        let node = graph.node(n);
        let nerr = node_err(node);
        let io = prepare(graph, node).map_err(&nerr)?;
        for &t in &node.inputs {
            let ti = t.index();
            let ok = match span[ti] {
                Some(_) => written[ti],
                None => graph.tensors[ti].value.is_some() || outside[ti].is_some(),
            };
            if !ok {
                return Err(nerr(format!(
                    "reads tensor '{}', which has no value here (not an input, weight or earlier output in the order)",
                    name(ti)
                )));
            }
        }
        let once = |t: usize| node.inputs.iter().filter(|u| u.index() == t).count() == 1;
        // Which outputs overwrite an input in place.
        let mut aliased = vec![false; node.outputs.len()];
        let mut taken: Vec<Option<Store>> = node.outputs.iter().map(|_| None).collect();
        for (k, &o) in node.outputs.iter().enumerate() {
            let oi = o.index();
            let j = alias_input(&node.op, k);
            let src = j.and_then(|j| node.inputs.get(j).map(|t| (j, t.index())));
            let fits = |j: usize, ti: usize| {
                last[ti] == Some(s) && once(ti) && may_alias(&node.op, io.input(j), io.output(k))
            };
            match (span[oi], src) {
                (Some(os), Some((j, ti))) if span[ti] == Some(os) && os.len > 0 => {
                    if !fits(j, ti) {
                        return Err(nerr(format!(
                            "the layout puts output '{}' over input '{}', which it cannot overwrite in place here",
                            name(oi),
                            name(ti)
                        )));
                    }
                    aliased[k] = true;
                }
                (None, Some((j, ti)))
                    if span[ti].is_none()
                        && fits(j, ti)
                        && outside[ti].as_ref().is_some_and(Store::writable) =>
                {
                    taken[k] = outside[ti].take();
                    aliased[k] = true;
                }
                _ => {}
            }
        }
        // Outputs outside the arena.
        let mut stores: Vec<Option<Store>> = Vec::with_capacity(node.outputs.len());
        for (k, (&o, t)) in node.outputs.iter().zip(taken).enumerate() {
            stores.push(match (t, span[o.index()]) {
                (Some(st), _) => Some(st),
                (None, Some(_)) => None,
                (None, None) => {
                    outside_allocs += 1;
                    let (d, shape) = io.output(k);
                    Some(Store::alloc(d, lowmem_ir::shape::count(shape)))
                }
            });
        }
        // Inputs overwritten in place are read through their output, not as slices.
        let in_place: Vec<bool> = (0..node.inputs.len())
            .map(|j| (0..aliased.len()).any(|k| aliased[k] && alias_input(&node.op, k) == Some(j)))
            .collect();
        // The arena ranges this step touches: inputs (read), outputs and workspace (written).
        let reads: Vec<(Span, usize)> = node
            .inputs
            .iter()
            .zip(&in_place)
            .filter_map(|(&t, &ip)| span[t.index()].filter(|_| !ip).map(|sp| (sp, t.index())))
            .collect();
        let mut writes: Vec<(Span, String)> = Vec::new();
        for &o in &node.outputs {
            if let Some(sp) = span[o.index()] {
                writes.push((sp, format!("output '{}'", name(o.index()))));
            }
        }
        let need = workspace_len(&node.op, &io.shapes).map_err(&nerr)?;
        let ws = match ws_span[s] {
            Some(w) if w.len >= need * 4 => Span {
                off: w.off,
                len: need * 4,
            },
            _ if need == 0 => Span { off: 0, len: 0 },
            w => {
                return Err(nerr(format!(
                    "workspace of {} bytes is planned, the kernel needs {} bytes",
                    w.map_or(0, |w| w.len),
                    need * 4
                )));
            }
        };
        writes.push((ws, "the workspace".into()));
        for (a, (wa, what_a)) in writes.iter().enumerate() {
            for (wb, what_b) in &writes[a + 1..] {
                if wa.overlaps(*wb) {
                    return Err(nerr(format!("the layout overlaps {what_a} and {what_b}")));
                }
            }
            for &(r, t) in &reads {
                if wa.overlaps(r) {
                    return Err(nerr(format!(
                        "the layout overlaps {what_a} with input '{}', which the kernel reads while it writes",
                        name(t)
                    )));
                }
            }
            for &t in &live {
                // This step's own inputs are checked above (or overwritten in place).
                let input = node.inputs.iter().any(|u| u.index() == t);
                if !input && span[t].is_some_and(|sp| wa.overlaps(sp)) {
                    return Err(nerr(format!(
                        "the layout writes {what_a} over tensor '{}', which is read later",
                        name(t)
                    )));
                }
            }
        }

        {
            // SAFETY: every span lies inside the arena (checked above), and within this
            // step every written span (outputs, workspace) is disjoint from every other span
            // made into a slice here (checked above), so no mutable slice aliases another
            // slice. An in-place input is not made into a slice: its bytes are the output's.
            // The slices do not outlive this block, and the arena outlives the loop.
            let arena_slice =
                |sp: Span| unsafe { std::slice::from_raw_parts(base.add(sp.off), sp.len) };
            let arena_slice_mut =
                |sp: Span| unsafe { std::slice::from_raw_parts_mut(base.add(sp.off), sp.len) };
            let ins: Vec<&[u8]> = node
                .inputs
                .iter()
                .enumerate()
                .map(|(j, &t)| {
                    let ti = t.index();
                    match (span[ti], &graph.tensors[ti].value, &outside[ti]) {
                        _ if in_place[j] => &[][..],
                        (Some(sp), _, _) => arena_slice(sp),
                        (None, Some(w), _) => data_bytes(w),
                        (None, None, Some(st)) => st.bytes(),
                        (None, None, None) => unreachable!("inputs were checked to have values"),
                    }
                })
                .collect();
            let mut outs: Vec<&mut [u8]> = Vec::with_capacity(node.outputs.len());
            for (&o, st) in node.outputs.iter().zip(stores.iter_mut()) {
                outs.push(match (span[o.index()], st) {
                    (Some(sp), _) => arena_slice_mut(sp),
                    (None, Some(st)) => st
                        .bytes_mut()
                        .ok_or_else(|| nerr("unwritable output".into()))?,
                    (None, None) => unreachable!("outputs without an offset have a store"),
                });
            }
            let ws_bytes = arena_slice_mut(ws);
            let ws_f32: &mut [f32] = if ws_bytes.is_empty() {
                &mut []
            } else {
                bytemuck::try_cast_slice_mut(ws_bytes)
                    .map_err(|e| nerr(format!("workspace: {e:?}")))?
            };
            exec_op(&io.call(&node.op, &ins, &aliased), &mut outs, ws_f32).map_err(&nerr)?;
        }

        for (&o, st) in node.outputs.iter().zip(stores) {
            let oi = o.index();
            written[oi] = true;
            if let Some(st) = st {
                outside[oi] = Some(st);
            } else if last[oi].is_none_or(|l| l > s) {
                live.push(oi);
            }
        }
        for &t in node.inputs.iter().chain(&node.outputs) {
            if last[t.index()] == Some(s) {
                outside[t.index()] = None;
            }
        }
        live.retain(|&t| last[t].is_none_or(|l| l > s));
    }

    let mut results = Vec::with_capacity(graph.outputs.len());
    for (j, &o) in graph.outputs.iter().enumerate() {
        let t = graph
            .tensors
            .get(o.index())
            .ok_or_else(|| ExecError::Tensor {
                name: format!("{o:?}"),
                msg: "graph output does not exist".into(),
            })?;
        let again = graph.outputs[j + 1..].contains(&o);
        let oi = o.index();
        let v = if let Some(sp) = span[oi] {
            // SAFETY: inside the arena (checked); no mutable slice exists any more.
            let b = unsafe { std::slice::from_raw_parts(base.add(sp.off), sp.len) };
            written[oi].then(|| data_from_bytes(t.dtype, b))
        } else if let Some(w) = &t.value {
            Some((**w).clone())
        } else if again {
            outside[oi]
                .as_ref()
                .map(|st| data_from_bytes(st.dtype(), st.bytes()))
        } else {
            outside[oi].take().map(Store::into_data)
        };
        results.push(v.ok_or_else(|| ExecError::Tensor {
            name: t.name.clone(),
            msg: "graph output has no value".into(),
        })?);
    }
    drop(arena);
    Ok((
        results,
        ArenaStats {
            arena_bytes: layout.arena_bytes,
            outside_allocs,
        },
    ))
}
