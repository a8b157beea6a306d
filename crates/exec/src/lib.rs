//! lowmem's CPU reference executor: runs a [`Graph`] on f32 data.
//!
//! This is the oracle the later stages (autodiff, memory planning, rematerialisation) are
//! checked against, so each op follows its ONNX definition exactly as [`lowmem_ir::Op`]
//! normalises it. Compute is f32; tensors of other dtypes can flow through the data-movement
//! ops (Identity, Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Concat, Expand, Slice),
//! Dropout's mask, training steps and class labels (i64).
//! The kernels are exposed in [`kernels`] as plain functions writing into caller-provided
//! slices.

mod block;
mod dispatch;
pub mod heap;
pub mod kernels;
pub mod peak;
mod planned;
pub mod program;
mod session;
pub mod storage;
pub mod train;

use dispatch::{OpCall, alias_input, exec_op, may_alias, workspace_len};
use lowmem_ir::{DType, Graph, Node, NodeId, Op, TensorData, TensorId};
use storage::{Store, data_bytes, data_from_bytes};
use thiserror::Error;

pub use planned::{ArenaStats, Layout, run_planned};
pub use program::{Instr, Loc, MAX_INPUTS, MAX_OUTPUTS, Place, Program, check_input, check_state};
pub use session::Executor;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum ExecError {
    #[error("graph '{graph}' takes {expected} inputs ({names}), got {got}")]
    InputCount {
        graph: String,
        expected: usize,
        got: usize,
        names: String,
    },
    #[error("input '{name}': {msg}")]
    Input { name: String, msg: String },
    #[error("node '{node}' ({op}): {msg}")]
    Node {
        node: String,
        op: String,
        msg: String,
    },
    #[error("tensor '{name}': {msg}")]
    Tensor { name: String, msg: String },
    #[error("layout: {0}")]
    Layout(String),
}

/// A tensor's contents during [`run`]: borrowed (graph inputs, weights) or owned (activations).
enum Val<'a> {
    Ref(&'a TensorData),
    Own(Store),
}

impl Val<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Val::Ref(d) => data_bytes(d),
            Val::Own(s) => s.bytes(),
        }
    }
    fn dtype(&self) -> DType {
        match self {
            Val::Ref(d) => d.dtype(),
            Val::Own(s) => s.dtype(),
        }
    }
    fn len(&self) -> usize {
        match self {
            Val::Ref(d) => d.len(),
            Val::Own(s) => s.len(),
        }
    }
}

/// Runs `graph` on `inputs` (in `graph.inputs` order) and returns its outputs in
/// `graph.outputs` order. Each activation is freed after its last consumer, and an op whose
/// kernel has an in-place form overwrites its dying first input (see [`run_planned`] for the
/// same semantics inside one planned arena); weights are read from
/// [`lowmem_ir::Tensor::value`] without copying.
pub fn run(graph: &Graph, inputs: &[TensorData]) -> Result<Vec<TensorData>, ExecError> {
    check_inputs(graph, inputs)?;
    let nt = graph.tensors.len();
    let mut vals: Vec<Option<Val>> = (0..nt).map(|_| None).collect();
    for (t, v) in graph.tensors.iter().zip(vals.iter_mut()) {
        if let Some(w) = &t.value {
            *v = Some(Val::Ref(w));
        }
    }
    for (&id, data) in graph.inputs.iter().zip(inputs) {
        vals[id.index()] = Some(Val::Ref(data));
    }
    let order: Vec<NodeId> = graph.node_ids().collect();
    let last = last_uses(graph, &order);

    for (i, node) in graph.nodes.iter().enumerate() {
        let nerr = node_err(node);
        let io = prepare(graph, node).map_err(&nerr)?;
        for &t in &node.inputs {
            let tensor = graph.tensor(t);
            match &vals[t.index()] {
                None => {
                    return Err(nerr(format!(
                        "reads tensor '{}', which has no value (not an input, weight or earlier output)",
                        tensor.name
                    )));
                }
                Some(v) if v.dtype() != tensor.dtype || v.len() != tensor.numel() => {
                    return Err(nerr(format!(
                        "tensor '{}' is declared {} {:?} but holds {} {} values",
                        tensor.name,
                        tensor.dtype,
                        tensor.shape,
                        v.len(),
                        v.dtype()
                    )));
                }
                Some(_) => {}
            }
        }
        // An owned input read for the last time (and only once here) becomes the output its
        // kernel overwrites in place.
        let mut taken: Vec<Option<Store>> = node.outputs.iter().map(|_| None).collect();
        for (k, slot) in taken.iter_mut().enumerate() {
            let Some(j) = alias_input(&node.op, k) else {
                continue;
            };
            let Some(&t) = node.inputs.get(j) else {
                continue;
            };
            if last[t.index()] == Some(i)
                && node.inputs.iter().filter(|&&u| u == t).count() == 1
                && may_alias(&node.op, io.input(j), io.output(k))
                && matches!(&vals[t.index()], Some(Val::Own(s)) if s.writable())
                && let Some(Val::Own(s)) = vals[t.index()].take()
            {
                *slot = Some(s);
            }
        }
        let aliased: Vec<bool> = taken.iter().map(Option::is_some).collect();
        let mut stores: Vec<Store> = taken
            .into_iter()
            .zip(&node.outputs)
            .map(|(s, &o)| {
                let t = graph.tensor(o);
                s.unwrap_or_else(|| Store::alloc(t.dtype, t.numel()))
            })
            .collect();
        {
            let ins: Vec<&[u8]> = node
                .inputs
                .iter()
                .map(|&t| vals[t.index()].as_ref().map_or(&[][..], Val::bytes))
                .collect();
            let mut outs: Vec<&mut [u8]> = stores
                .iter_mut()
                .map(|s| {
                    s.bytes_mut()
                        .ok_or_else(|| nerr("unwritable output".into()))
                })
                .collect::<Result<_, _>>()?;
            // f64-backed so that kernels find their f64 accumulators 8-byte aligned.
            let need = workspace_len(&node.op, &io.shapes).map_err(&nerr)?;
            let mut ws = vec![0f64; need.div_ceil(2)];
            let ws: &mut [f32] = &mut bytemuck::cast_slice_mut(&mut ws[..])[..need];
            exec_op(&io.call(&node.op, &ins, &aliased), &mut outs, ws).map_err(&nerr)?;
        }
        for (&o, s) in node.outputs.iter().zip(stores) {
            vals[o.index()] = Some(Val::Own(s));
        }
        for &t in node.inputs.iter().chain(&node.outputs) {
            if last[t.index()] == Some(i) {
                vals[t.index()] = None;
            }
        }
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
        let v = match vals[o.index()].take() {
            Some(Val::Own(s)) if again => {
                let d = data_from_bytes(s.dtype(), s.bytes());
                vals[o.index()] = Some(Val::Own(s));
                Some(d)
            }
            Some(Val::Own(s)) => Some(s.into_data()),
            Some(Val::Ref(d)) => {
                vals[o.index()] = Some(Val::Ref(d));
                Some(d.clone())
            }
            None => None,
        };
        results.push(v.ok_or_else(|| ExecError::Tensor {
            name: t.name.clone(),
            msg: "graph output has no value".into(),
        })?);
    }
    Ok(results)
}

/// The scratch bytes this executor's kernel for `op` needs with input shapes `inputs` (what
/// [`Op::workspace_bytes`] plans as the step's workspace).
pub fn kernel_workspace_bytes(op: &Op, inputs: &[&[usize]]) -> Result<usize, String> {
    Ok(workspace_len(op, inputs)? * 4)
}

/// Starts the kernels' thread pool now (it is started lazily by the first parallel kernel),
/// so that its one-time allocations fall outside a measured step; returns its size.
pub fn start_threads() -> usize {
    // Every thread of the pool runs a job once (each registers with the work-stealing
    // queues' memory reclamation on its first steal), and the caller enters the pool once
    // (its side of the hand-off): the pool's own one-time allocations are all made here.
    rayon::broadcast(|_| ());
    in_pool(|| {
        use rayon::prelude::*;
        (0..1 << 12).into_par_iter().for_each(|i| {
            std::hint::black_box(i);
        });
    });
    rayon::current_num_threads()
}

/// Runs `f` on a thread of the kernels' pool. Parallel kernels called from outside the pool
/// hand each job to it through a shared queue, which allocates a block now and then (one
/// per 63 jobs); from inside, jobs go to the thread's own deque and nothing is allocated.
/// Run a whole training loop in one call for steps that allocate nothing.
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

/// Checks the graph inputs' count, dtypes and sizes.
fn check_inputs(graph: &Graph, inputs: &[TensorData]) -> Result<(), ExecError> {
    if inputs.len() != graph.inputs.len() {
        return Err(ExecError::InputCount {
            graph: graph.name.clone(),
            expected: graph.inputs.len(),
            got: inputs.len(),
            names: graph
                .inputs
                .iter()
                .map(|&t| match graph.tensors.get(t.index()) {
                    Some(t) => format!("'{}'", t.name),
                    None => format!("{t:?}"),
                })
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    for (&id, data) in graph.inputs.iter().zip(inputs) {
        let t = graph
            .tensors
            .get(id.index())
            .ok_or_else(|| ExecError::Tensor {
                name: format!("{id:?}"),
                msg: "graph input does not exist".into(),
            })?;
        let err = |msg: String| ExecError::Input {
            name: t.name.clone(),
            msg,
        };
        if data.dtype() != t.dtype {
            return Err(err(format!(
                "expected dtype {}, got {}",
                t.dtype,
                data.dtype()
            )));
        }
        if data.len() != t.numel() {
            return Err(err(format!(
                "expected {} elements (shape {:?}), got {}",
                t.numel(),
                t.shape,
                data.len()
            )));
        }
    }
    Ok(())
}

/// Per tensor: the position in `order` of its last use, after which it dies; `None` for
/// graph outputs (kept to the end) and tensors no step uses.
fn last_uses(graph: &Graph, order: &[NodeId]) -> Vec<Option<usize>> {
    let mut last = vec![None; graph.tensors.len()];
    for (s, &n) in order.iter().enumerate() {
        let node = graph.node(n);
        for &t in node.inputs.iter().chain(&node.outputs) {
            if let Some(l) = last.get_mut(t.index()) {
                *l = Some(s);
            }
        }
    }
    for &o in &graph.outputs {
        if let Some(l) = last.get_mut(o.index()) {
            *l = None;
        }
    }
    last
}

fn node_err(node: &Node) -> impl Fn(String) -> ExecError + '_ {
    move |msg| ExecError::Node {
        node: node.name.clone(),
        op: node.op.name().to_string(),
        msg,
    }
}

/// A node's operand dtypes and shapes, checked against the graph.
pub struct NodeIo<'g> {
    in_dtypes: Vec<DType>,
    shapes: Vec<&'g [usize]>,
    out_dtypes: Vec<DType>,
    out_shapes: Vec<&'g [usize]>,
    /// Resolved ahead: the sliding window and the kernel's workspace (f32 elements).
    window: Option<lowmem_ir::Window>,
    ws_len: Option<usize>,
}

impl<'g> NodeIo<'g> {
    pub fn in_dtypes(&self) -> &[DType] {
        &self.in_dtypes
    }
    pub fn shapes(&self) -> &[&'g [usize]] {
        &self.shapes
    }
    pub fn out_dtypes(&self) -> &[DType] {
        &self.out_dtypes
    }
    pub fn out_shapes(&self) -> &[&'g [usize]] {
        &self.out_shapes
    }
    /// The sliding window (convolutions, pooling), resolved ahead.
    pub fn window(&self) -> Option<&lowmem_ir::Window> {
        self.window.as_ref()
    }
    fn input(&self, j: usize) -> (DType, &[usize]) {
        (self.in_dtypes[j], self.shapes[j])
    }
    fn output(&self, k: usize) -> (DType, &[usize]) {
        (self.out_dtypes[k], self.out_shapes[k])
    }
    fn call<'a>(&'a self, op: &'a Op, ins: &'a [&'a [u8]], aliased: &'a [bool]) -> OpCall<'a> {
        OpCall {
            op,
            in_dtypes: &self.in_dtypes,
            ins,
            shapes: &self.shapes,
            out_dtypes: &self.out_dtypes,
            out_shapes: &self.out_shapes,
            aliased,
            window: self.window.as_ref(),
            ws_len: self.ws_len,
        }
    }
}

/// Looks up `node`'s operands and re-infers its outputs, so that every kernel gets
/// consistent shapes.
fn prepare<'g>(graph: &'g Graph, node: &Node) -> Result<NodeIo<'g>, String> {
    let tensor = |t: TensorId, what: &str| {
        graph
            .tensors
            .get(t.index())
            .ok_or_else(|| format!("{what} {t:?} does not exist"))
    };
    let ins = node
        .inputs
        .iter()
        .map(|&t| tensor(t, "input"))
        .collect::<Result<Vec<_>, _>>()?;
    let infos: Vec<(DType, &[usize])> = ins.iter().map(|t| (t.dtype, &t.shape[..])).collect();
    let inferred = node.op.infer(&infos, node.outputs.len())?;
    let mut out_dtypes = Vec::with_capacity(node.outputs.len());
    let mut out_shapes = Vec::with_capacity(node.outputs.len());
    for (&o, (d, s)) in node.outputs.iter().zip(&inferred) {
        let t = tensor(o, "output")?;
        if t.dtype != *d || t.shape != *s {
            return Err(format!(
                "output '{}' is declared {} {:?} but infers to {d} {s:?}",
                t.name, t.dtype, t.shape
            ));
        }
        out_dtypes.push(t.dtype);
        out_shapes.push(&t.shape[..]);
    }
    if out_shapes.len() != node.outputs.len() {
        return Err(format!(
            "infers {} outputs, the node declares {}",
            inferred.len(),
            node.outputs.len()
        ));
    }
    let shapes: Vec<&[usize]> = infos.iter().map(|(_, s)| *s).collect();
    Ok(NodeIo {
        in_dtypes: infos.iter().map(|(d, _)| *d).collect(),
        window: dispatch::node_window(&node.op, &shapes),
        ws_len: workspace_len(&node.op, &shapes).ok(),
        shapes,
        out_dtypes,
        out_shapes,
    })
}
