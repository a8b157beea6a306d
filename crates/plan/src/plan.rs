//! A whole memory plan for a graph: schedule, liveness, in-place groups, one arena with
//! static offsets, and the figures people compare (arena against lower bound).

use std::time::Duration;

use lowmem_ir::{Graph, NodeId, SecondaryMap, TensorId};
use lowmem_schedule::{
    Kind, LiveRange, Liveness, ProgPoint, Roles, StepId, memory_aware_order, program_order,
    sink_state_updates,
};

use crate::pack::{self, Buffer, BufferId, Packing};

/// Arena offsets and buffer sizes are multiples of this.
pub const ALIGN: u64 = 256;

/// Offsets in the persistent block are multiples of this (a cache line; every dtype's size
/// divides it).
pub const PERSISTENT_ALIGN: u64 = 64;

fn aligned(b: u64) -> u64 {
    b.div_ceil(ALIGN) * ALIGN
}

/// One buffer of the plan (a tensor, an in-place group member, or a step's workspace).
#[derive(Clone, Debug)]
pub struct PlanBuffer {
    /// The tensor, or `None` for a workspace.
    pub tensor: Option<TensorId>,
    pub name: String,
    pub bytes: u64,
    /// Byte offset in the arena; `None` for buffers kept outside it.
    pub offset: Option<u64>,
    pub start: u32,
    pub end: u32,
    pub kind: Kind,
    /// In-place reuse: the tensor whose bytes this one overwrites.
    pub shares: Option<TensorId>,
    /// For workspaces: the step they belong to.
    pub step: Option<StepId>,
}

impl PlanBuffer {
    /// The program points `[start, end)` the buffer lives over.
    pub fn live(&self) -> LiveRange {
        LiveRange::from((self.start, self.end))
    }
}

#[derive(Clone, Debug)]
pub struct MemoryPlan {
    pub order: Vec<NodeId>,
    pub buffers: Vec<PlanBuffer>,
    /// Arena offset per tensor (`None` outside the arena).
    pub tensor_offset: SecondaryMap<TensorId, Option<u64>>,
    /// Arena offset and bytes of each step's workspace.
    pub workspace: SecondaryMap<StepId, Option<(u64, u64)>>,
    pub arena_bytes: u64,
    pub lower_bound_bytes: u64,
    pub naive_bytes: u64,
    /// Bytes of the persistent block: every persistent tensor at its own offset (a state
    /// output shares its state input's), each aligned to [`PERSISTENT_ALIGN`].
    pub persistent_bytes: u64,
    /// Offset per tensor in the persistent block (`None` for arena tensors).
    pub persistent_offset: SecondaryMap<TensorId, Option<u64>>,
    pub planner: String,
    pub order_kind: &'static str,
    /// Arena bytes reached by every heuristic tried, for comparison.
    pub heuristics: Vec<(String, u64)>,
}

impl MemoryPlan {
    pub fn peak_bytes(&self) -> u64 {
        self.persistent_bytes + self.arena_bytes
    }
}

#[derive(Clone, Debug)]
pub struct PlanOptions {
    pub in_place: bool,
    /// Time for the improving search after the heuristics (zero: heuristics only).
    pub search_time: Duration,
    /// Plan the graph's own node order only. A rematerialised step's order places each
    /// recomputation just before the backward that needs it; reordering would undo that.
    pub fixed_order: bool,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            in_place: true,
            search_time: Duration::from_millis(200),
            fixed_order: false,
        }
    }
}

/// The packing problem of one order: one buffer per in-place group and per workspace.
#[derive(Clone)]
struct Problem {
    live: Liveness,
    bufs: Vec<Buffer>,
    /// Which packing buffer holds each tensor / workspace.
    of_tensor: SecondaryMap<TensorId, Option<BufferId>>,
    of_step: SecondaryMap<StepId, Option<BufferId>>,
}

/// The packing buffer of a live range of `bytes` bytes.
fn buffer(r: LiveRange, bytes: u64) -> Buffer {
    Buffer {
        lower: r.start.0 as u64,
        upper: r.end.0 as u64,
        size: aligned(bytes),
    }
}

fn problem(g: &Graph, roles: &Roles, order: Vec<NodeId>, in_place: bool) -> Problem {
    let live = Liveness::new(g, roles, order, in_place);
    let mut bufs: Vec<Buffer> = Vec::new();
    let mut of_tensor: SecondaryMap<TensorId, Option<BufferId>> =
        SecondaryMap::with_len(g.tensors.len());
    // Roots first: a member may have a smaller id than its root (a backward node writing
    // in place over a tensor recomputed after it was created).
    let roots = g.tensor_ids().filter(|&t| live.shares[t].is_none());
    let members = g.tensor_ids().filter(|&t| live.shares[t].is_some());
    for t in roots.chain(members) {
        let Some(r) = live.range[t] else {
            continue;
        };
        match live.shares[t] {
            Some(root) => {
                let b = of_tensor[root].expect("a group root is placed before its members");
                let buf: &mut Buffer = &mut bufs[b.index()];
                buf.lower = buf.lower.min(r.start.0 as u64);
                buf.upper = buf.upper.max(r.end.0 as u64);
                of_tensor[t] = Some(b);
            }
            None => {
                of_tensor[t] = Some(BufferId::new(bufs.len()));
                bufs.push(buffer(r, g.tensor(t).bytes() as u64));
            }
        }
    }
    let mut of_step = SecondaryMap::with_len(live.order.len());
    for (s, &w) in live.workspace.iter() {
        if w > 0 {
            of_step[s] = Some(BufferId::new(bufs.len()));
            bufs.push(buffer(s.span(), w as u64));
        }
    }
    Problem {
        live,
        bufs,
        of_tensor,
        of_step,
    }
}

/// Plans `g`. Both orders (program and memory-aware) are scheduled, the one with the lower
/// lower bound first; heuristics run cheapest first and stop as soon as one reaches the
/// lower bound (the common case on real graphs); otherwise the improving search runs on the
/// best placement's order for `search_time`.
pub fn plan(g: &Graph, roles: &Roles, opts: &PlanOptions) -> MemoryPlan {
    let mut problems = problems(g, roles, opts.in_place, opts.fixed_order);
    problems.sort_by_key(|(_, lb, _)| *lb);
    let floor = problems[0].1;
    let mut heuristics = Vec::new();
    let mut best: Option<(usize, Packing)> = None;
    'search: for (k, (p, _, kind)) in problems.iter().enumerate() {
        for h in HEURISTICS {
            let packing = h(&p.bufs, ALIGN);
            heuristics.push((
                format!("{} ({kind} order)", packing.heuristic),
                packing.height,
            ));
            if best.as_ref().is_none_or(|(_, b)| packing.height < b.height) {
                best = Some((k, packing));
            }
            if best.as_ref().is_some_and(|(_, b)| b.height <= floor) {
                break 'search;
            }
        }
    }
    let (k, mut packing) = best.expect("at least one heuristic ran");
    let (p, lb, order_kind) = problems.swap_remove(k);
    if packing.height > lb && !opts.search_time.is_zero() {
        let searched = pack::pack(&p.bufs, ALIGN, opts.search_time);
        if searched.height < packing.height {
            heuristics.push((
                format!("{} ({order_kind} order)", searched.heuristic),
                searched.height,
            ));
            packing = searched;
        }
    }
    assemble(g, roles, p, packing, order_kind, lb, heuristics)
}

/// The offset-assignment heuristics, cheapest first.
const HEURISTICS: [fn(&[Buffer], u64) -> Packing; 3] = [
    pack::best_fit_heap,
    pack::greedy_by_size,
    pack::greedy_by_breadth,
];

/// The packing problem and its lower bound under each order the planner considers.
fn problems(
    g: &Graph,
    roles: &Roles,
    in_place: bool,
    fixed_order: bool,
) -> Vec<(Problem, u64, &'static str)> {
    let mut orders = vec![("program", sink_state_updates(g, roles, program_order(g)))];
    if !fixed_order {
        orders.push((
            "memory-aware",
            sink_state_updates(g, roles, memory_aware_order(g, roles)),
        ));
    }
    orders
        .into_iter()
        .map(|(kind, order)| {
            let p = problem(g, roles, order, in_place);
            let lb = pack::lower_bound(&p.bufs);
            (p, lb, kind)
        })
        .collect()
}

/// One plan per order and heuristic (no search), for comparing them and checking each.
pub fn plan_each(g: &Graph, roles: &Roles, in_place: bool) -> Vec<MemoryPlan> {
    let mut out = Vec::new();
    for (p, lb, order_kind) in problems(g, roles, in_place, false) {
        for h in HEURISTICS {
            let packing = h(&p.bufs, ALIGN);
            let tried = vec![(
                format!("{} ({order_kind} order)", packing.heuristic),
                packing.height,
            )];
            out.push(assemble(
                g,
                roles,
                p.clone(),
                packing,
                order_kind,
                lb,
                tried,
            ));
        }
    }
    out
}

fn assemble(
    g: &Graph,
    roles: &Roles,
    p: Problem,
    packing: Packing,
    order_kind: &'static str,
    lb: u64,
    heuristics: Vec<(String, u64)>,
) -> MemoryPlan {
    let mut buffers = Vec::new();
    let mut tensor_offset: SecondaryMap<TensorId, Option<u64>> =
        SecondaryMap::with_len(g.tensors.len());
    let mut persistent = 0u64;
    let mut persistent_offset: SecondaryMap<TensorId, Option<u64>> =
        SecondaryMap::with_len(g.tensors.len());
    let mut naive = 0u64;
    let whole = LiveRange::new(ProgPoint(0), ProgPoint(2 * p.live.order.len() as u32));
    for t in g.tensor_ids() {
        let tt = g.tensor(t);
        naive += tt.bytes() as u64;
        let kind = roles.kind[t];
        let offset = p.of_tensor[t].map(|b| packing.offsets[b.index()]);
        tensor_offset[t] = offset;
        let live = p.live.range[t].unwrap_or(whole);
        if kind.persistent() && roles.state_alias[t].is_none() {
            persistent_offset[t] = Some(persistent);
            persistent += (tt.bytes() as u64).div_ceil(PERSISTENT_ALIGN) * PERSISTENT_ALIGN;
        }
        buffers.push(PlanBuffer {
            tensor: Some(t),
            name: tt.name.clone(),
            bytes: tt.bytes() as u64,
            offset,
            start: live.start.0,
            end: live.end.0,
            kind,
            shares: p.live.shares[t].or(roles.state_alias[t]),
            step: None,
        });
    }
    // A state output lives in its state input's bytes.
    for t in g.tensor_ids() {
        if let Some(a) = roles.state_alias[t] {
            persistent_offset[t] = persistent_offset[a];
        }
    }
    let mut workspace = SecondaryMap::with_len(p.live.order.len());
    for (s, b) in p.of_step.iter() {
        if let Some(b) = *b {
            let bytes = p.live.workspace[s] as u64;
            let offset = packing.offsets[b.index()];
            workspace[s] = Some((offset, bytes));
            buffers.push(PlanBuffer {
                tensor: None,
                name: format!("workspace of {}", g.node(p.live.order[s.index()]).name),
                bytes,
                offset: Some(offset),
                start: s.read().0,
                end: s.after().0,
                kind: Kind::Workspace,
                shares: None,
                step: Some(s),
            });
            naive += bytes;
        }
    }
    MemoryPlan {
        order: p.live.order,
        buffers,
        tensor_offset,
        workspace,
        arena_bytes: packing.height,
        lower_bound_bytes: lb,
        naive_bytes: naive,
        persistent_bytes: persistent,
        persistent_offset,
        planner: packing.heuristic.to_string(),
        order_kind,
        heuristics,
    }
}
