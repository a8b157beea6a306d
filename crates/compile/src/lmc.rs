//! The `.lmc` file: one [`CompiledStep`] on disk (specified in `docs/lmc-format.md`).
//!
//! ```text
//! offset  bytes  field
//! 0       8      magic "LOWMEMC\0"
//! 8       4      format version (u32 LE), [`VERSION`]
//! 12      4      reserved, 0
//! 16      8      header length H (u64 LE)
//! 24      8      data length D (u64 LE)
//! 32      8      FNV-1a 64 of the header and data bytes (u64 LE)
//! 40      H      header: UTF-8 JSON (graph, order, plan, roles, state, record)
//! 40+H    D      data: raw little-endian tensors (weights, optimizer state)
//! ```
//!
//! Tensors in the header refer to data entries `{offset, dtype, len}`; a weight shared by
//! the step and the forward model is stored once. Reading re-validates the graphs and
//! re-verifies the plan with the independent verifier, so a file that decodes but is
//! inconsistent is refused as well as a truncated or corrupted one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lowmem_autodiff::{Loss, Optimizer, StateKind};
use lowmem_ir::{DType, Graph, Node, NodeId, Op, SecondaryMap, TensorData, TensorId};
use lowmem_plan::{MemoryPlan, PlanBuffer};
use lowmem_schedule::{Kind, Roles, StepId};
use serde_json::{Value, json};

use crate::{CompileError, CompiledStep, Costs, InputRole, RematRecord, StateSlot, Task};

pub const MAGIC: &[u8; 8] = b"LOWMEMC\0";
pub const VERSION: u32 = 1;
const PREFIX: usize = 40;

fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The raw data section being written: each distinct tensor once.
#[derive(Default)]
struct DataTable {
    bytes: Vec<u8>,
    entries: Vec<Value>,
    seen: HashMap<*const TensorData, usize>,
}

impl DataTable {
    fn add(&mut self, d: &Arc<TensorData>) -> usize {
        if let Some(&k) = self.seen.get(&Arc::as_ptr(d)) {
            return k;
        }
        let k = self.entries.len();
        let raw = d.to_le_bytes();
        self.entries.push(json!({
            "offset": self.bytes.len(),
            "dtype": d.dtype(),
            "len": d.len(),
        }));
        self.bytes.extend_from_slice(&raw);
        self.seen.insert(Arc::as_ptr(d), k);
        k
    }
}

fn graph_json(g: &Graph, data: &mut DataTable) -> Value {
    let tensors: Vec<Value> = g
        .tensor_ids()
        .map(|t| {
            let tt = g.tensor(t);
            let mut v = json!({"name": tt.name, "dtype": tt.dtype, "shape": tt.shape});
            match &tt.value {
                Some(d) => v["data"] = json!(data.add(d)),
                None if g.inputs.contains(&t) => v["input"] = json!(true),
                None => {}
            }
            v
        })
        .collect();
    let nodes: Vec<Value> = g
        .nodes
        .iter()
        .map(|n| {
            json!({
                "name": n.name,
                "op": serde_json::to_value(&n.op).expect("ops serialise"),
                "inputs": n.inputs.iter().map(|t| t.0).collect::<Vec<_>>(),
                "outputs": n.outputs.iter().map(|t| t.0).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "name": g.name,
        "tensors": tensors,
        "nodes": nodes,
        "inputs": g.inputs.iter().map(|t| t.0).collect::<Vec<_>>(),
        "outputs": g.outputs.iter().map(|t| t.0).collect::<Vec<_>>(),
    })
}

fn loss_name(l: Loss) -> &'static str {
    match l {
        Loss::Sum => "sum",
        Loss::Mean => "mean",
        Loss::Scalar => "scalar",
        Loss::CrossEntropy => "xent",
        Loss::Mse => "mse",
    }
}

fn optimizer_json(o: &Optimizer) -> Value {
    match *o {
        Optimizer::Sgd {
            lr,
            momentum,
            weight_decay,
        } => json!({"kind": "sgd", "lr": lr, "momentum": momentum, "weight_decay": weight_decay}),
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
        } => json!({
            "kind": if matches!(o, Optimizer::AdamW { .. }) { "adamw" } else { "adam" },
            "lr": lr, "beta1": beta1, "beta2": beta2, "epsilon": epsilon,
            "weight_decay": weight_decay,
        }),
    }
}

fn state_kind_name(k: StateKind) -> &'static str {
    match k {
        StateKind::Parameter => "parameter",
        StateKind::Momentum => "momentum",
        StateKind::FirstMoment => "first_moment",
        StateKind::SecondMoment => "second_moment",
        StateKind::RunningMean => "running_mean",
        StateKind::RunningVar => "running_var",
    }
}

fn kind_name(k: Kind) -> String {
    serde_json::to_value(k)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

const KINDS: [Kind; 7] = [
    Kind::Weight,
    Kind::Gradient,
    Kind::OptimizerState,
    Kind::Activation,
    Kind::Workspace,
    Kind::Input,
    Kind::Output,
];

fn plan_json(p: &MemoryPlan) -> Value {
    json!({
        "order": p.order.iter().map(|n| n.0).collect::<Vec<_>>(),
        "tensor_offset": p.tensor_offset.as_slice(),
        "persistent_offset": p.persistent_offset.as_slice(),
        "workspace": p.workspace.as_slice(),
        "arena_bytes": p.arena_bytes,
        "lower_bound_bytes": p.lower_bound_bytes,
        "naive_bytes": p.naive_bytes,
        "persistent_bytes": p.persistent_bytes,
        "planner": p.planner,
        "order_kind": p.order_kind,
        "heuristics": p.heuristics,
        "buffers": p.buffers.iter().map(|b| json!({
            "tensor": b.tensor.map(|t| t.0),
            "name": b.name,
            "bytes": b.bytes,
            "offset": b.offset,
            "start": b.start,
            "end": b.end,
            "kind": kind_name(b.kind),
            "shares": b.shares.map(|t| t.0),
            "step": b.step.map(|s| s.0),
        })).collect::<Vec<_>>(),
    })
}

/// Encodes `step` (with its current state) as the bytes of a `.lmc` file.
pub fn to_bytes(step: &CompiledStep) -> Vec<u8> {
    let mut data = DataTable::default();
    let graph = graph_json(&step.graph, &mut data);
    let forward = graph_json(&step.forward, &mut data);
    let task = match &step.task {
        Task::Inference => json!({"kind": "inference"}),
        Task::Gradient { loss, output } => {
            json!({"kind": "gradient", "loss": loss_name(*loss), "output": output})
        }
        Task::Training { loss, optimizer } => json!({
            "kind": "training", "loss": loss_name(*loss), "optimizer": optimizer_json(optimizer)
        }),
    };
    let state: Vec<Value> = step
        .state
        .iter()
        .map(|s| {
            json!({
                "name": s.name, "kind": state_kind_name(s.kind), "input": s.input.0,
                "output": s.output.0, "of": s.of, "data": data.add(&s.value),
            })
        })
        .collect();
    let inputs: Vec<Value> = step
        .inputs
        .iter()
        .map(|r| match *r {
            InputRole::Data(k) => json!({"data": k}),
            InputRole::Labels => json!("labels"),
            InputRole::Step => json!("step"),
            InputRole::State(k) => json!({"state": k}),
        })
        .collect();
    let header = json!({
        "format": "lowmem-compiled-step",
        "version": VERSION,
        "model": step.model,
        "task": task,
        "batch": step.batch,
        "graph": graph,
        "forward": forward,
        "roles": {
            "kind": step.roles.kind.values().map(|&k| kind_name(k)).collect::<Vec<_>>(),
            "state_alias": step.roles.state_alias.values().map(|a| a.map(|t| t.0)).collect::<Vec<_>>(),
        },
        "plan": plan_json(&step.plan),
        "inputs": inputs,
        "state": state,
        "grads": step.grads.iter().map(|(n, t)| json!([n, t.0])).collect::<Vec<_>>(),
        "budget": step.budget,
        "remat": step.remat.as_ref().map(|r| json!({
            "scheme": r.scheme, "detail": r.detail, "stages": r.stages,
            "checkpoints": r.checkpoints, "recomputed_nodes": r.recomputed_nodes,
            "partial": r.partial,
        })),
        "rewrites": step.rewrites,
        "costs": {
            "forward_flops": step.costs.forward_flops,
            "backward_flops": step.costs.backward_flops,
            "recompute_flops": step.costs.recompute_flops,
        },
        "planning_seconds": step.planning_time.as_secs_f64(),
        "data": data.entries,
    });
    let header = serde_json::to_vec(&header).expect("the header serialises");
    let mut out = Vec::with_capacity(PREFIX + header.len() + data.bytes.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&(data.bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(&fnv1a(&[&header, &data.bytes]).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&data.bytes);
    out
}

fn bad(msg: impl Into<String>) -> CompileError {
    CompileError::File(msg.into())
}

/// A JSON value with the path that reached it, for errors that name the field.
#[derive(Clone, Copy)]
struct J<'a> {
    v: &'a Value,
    path: &'a str,
}

impl<'a> J<'a> {
    fn get(&self, key: &'a str) -> Result<J<'a>, CompileError> {
        self.v
            .get(key)
            .map(|v| J { v, path: key })
            .ok_or_else(|| bad(format!("header: '{}' has no field '{key}'", self.path)))
    }
    fn opt(&self, key: &'a str) -> Option<J<'a>> {
        self.v
            .get(key)
            .filter(|v| !v.is_null())
            .map(|v| J { v, path: key })
    }
    fn u64(&self) -> Result<u64, CompileError> {
        self.v.as_u64().ok_or_else(|| {
            bad(format!(
                "header: '{}' is not an unsigned integer",
                self.path
            ))
        })
    }
    fn usize(&self) -> Result<usize, CompileError> {
        usize::try_from(self.u64()?)
            .map_err(|_| bad(format!("header: '{}' is out of range", self.path)))
    }
    fn u32(&self) -> Result<u32, CompileError> {
        u32::try_from(self.u64()?)
            .map_err(|_| bad(format!("header: '{}' is out of range", self.path)))
    }
    fn f32(&self) -> Result<f32, CompileError> {
        self.v
            .as_f64()
            .map(|x| x as f32)
            .ok_or_else(|| bad(format!("header: '{}' is not a number", self.path)))
    }
    fn str(&self) -> Result<&'a str, CompileError> {
        self.v
            .as_str()
            .ok_or_else(|| bad(format!("header: '{}' is not a string", self.path)))
    }
    fn arr(&self) -> Result<impl Iterator<Item = J<'a>> + 'a, CompileError> {
        let path = self.path;
        self.v
            .as_array()
            .map(|a| a.iter().map(move |v| J { v, path }))
            .ok_or_else(|| bad(format!("header: '{}' is not an array", self.path)))
    }
    fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, CompileError> {
        serde_json::from_value(self.v.clone())
            .map_err(|e| bad(format!("header: '{}': {e}", self.path)))
    }
}

fn tensor_id(j: J, nt: usize) -> Result<TensorId, CompileError> {
    let i = j.u32()?;
    if i as usize >= nt {
        return Err(bad(format!(
            "header: '{}' names tensor {i}, the graph has {nt}",
            j.path
        )));
    }
    Ok(TensorId(i))
}

fn read_graph(j: J, data: &[Arc<TensorData>]) -> Result<Graph, CompileError> {
    let mut g = Graph::new(j.get("name")?.str()?);
    for t in j.get("tensors")?.arr()? {
        let name = t.get("name")?.str()?;
        let dtype: DType = t.get("dtype")?.parse()?;
        let shape: Vec<usize> = t.get("shape")?.parse()?;
        if let Some(d) = t.opt("data") {
            let d = data
                .get(d.usize()?)
                .ok_or_else(|| bad(format!("tensor '{name}' names a missing data entry")))?;
            if d.dtype() != dtype {
                return Err(bad(format!(
                    "tensor '{name}' is {dtype} but its data is {}",
                    d.dtype()
                )));
            }
            g.add_weight(name, shape, d.clone())?;
        } else if t.opt("input").is_some() {
            g.add_input(name, dtype, shape)?;
        } else {
            g.add_activation(name, dtype, shape)?;
        }
    }
    let nt = g.tensors.len();
    let ids = |j: J| -> Result<Vec<TensorId>, CompileError> {
        j.arr()?.map(|t| tensor_id(t, nt)).collect()
    };
    for n in j.get("nodes")?.arr()? {
        let op: Op = n.get("op")?.parse()?;
        g.nodes.push(Node {
            name: n.get("name")?.str()?.to_string(),
            op,
            inputs: ids(n.get("inputs")?)?,
            outputs: ids(n.get("outputs")?)?,
        });
    }
    g.inputs = ids(j.get("inputs")?)?;
    g.outputs = ids(j.get("outputs")?)?;
    g.validate()?;
    Ok(g)
}

fn read_loss(j: J) -> Result<Loss, CompileError> {
    Ok(match j.str()? {
        "sum" => Loss::Sum,
        "mean" => Loss::Mean,
        "scalar" => Loss::Scalar,
        "xent" => Loss::CrossEntropy,
        "mse" => Loss::Mse,
        other => return Err(bad(format!("header: unknown loss '{other}'"))),
    })
}

fn read_optimizer(j: J) -> Result<Optimizer, CompileError> {
    let f = |k| j.get(k)?.f32();
    Ok(match j.get("kind")?.str()? {
        "sgd" => Optimizer::Sgd {
            lr: f("lr")?,
            momentum: f("momentum")?,
            weight_decay: f("weight_decay")?,
        },
        "adam" => Optimizer::Adam {
            lr: f("lr")?,
            beta1: f("beta1")?,
            beta2: f("beta2")?,
            epsilon: f("epsilon")?,
            weight_decay: f("weight_decay")?,
        },
        "adamw" => Optimizer::AdamW {
            lr: f("lr")?,
            beta1: f("beta1")?,
            beta2: f("beta2")?,
            epsilon: f("epsilon")?,
            weight_decay: f("weight_decay")?,
        },
        other => return Err(bad(format!("header: unknown optimizer '{other}'"))),
    })
}

fn read_kind(j: J) -> Result<Kind, CompileError> {
    let s = j.str()?;
    KINDS
        .into_iter()
        .find(|&k| kind_name(k) == s)
        .ok_or_else(|| bad(format!("header: unknown buffer kind '{s}'")))
}

fn read_state_kind(j: J) -> Result<StateKind, CompileError> {
    let s = j.str()?;
    [
        StateKind::Parameter,
        StateKind::Momentum,
        StateKind::FirstMoment,
        StateKind::SecondMoment,
        StateKind::RunningMean,
        StateKind::RunningVar,
    ]
    .into_iter()
    .find(|&k| state_kind_name(k) == s)
    .ok_or_else(|| bad(format!("header: unknown state kind '{s}'")))
}

fn read_plan(j: J, g: &Graph) -> Result<MemoryPlan, CompileError> {
    let nt = g.tensors.len();
    let order: Vec<NodeId> = j
        .get("order")?
        .arr()?
        .map(|n| n.u32().map(NodeId))
        .collect::<Result<_, _>>()?;
    let tensor_offset: Vec<Option<u64>> = j.get("tensor_offset")?.parse()?;
    let persistent_offset: Vec<Option<u64>> = j.get("persistent_offset")?.parse()?;
    let workspace: Vec<Option<(u64, u64)>> = j.get("workspace")?.parse()?;
    if tensor_offset.len() != nt || persistent_offset.len() != nt {
        return Err(bad(format!(
            "header: the plan has {} arena and {} persistent offsets for {nt} tensors",
            tensor_offset.len(),
            persistent_offset.len()
        )));
    }
    if order.len() != g.nodes.len() || workspace.len() != g.nodes.len() {
        return Err(bad(format!(
            "header: the plan orders {} nodes with {} workspaces; the graph has {}",
            order.len(),
            workspace.len(),
            g.nodes.len()
        )));
    }
    let mut buffers = Vec::new();
    for b in j.get("buffers")?.arr()? {
        buffers.push(PlanBuffer {
            tensor: b.opt("tensor").map(|t| tensor_id(t, nt)).transpose()?,
            name: b.get("name")?.str()?.to_string(),
            bytes: b.get("bytes")?.u64()?,
            offset: b.opt("offset").map(|o| o.u64()).transpose()?,
            start: b.get("start")?.u32()?,
            end: b.get("end")?.u32()?,
            kind: read_kind(b.get("kind")?)?,
            shares: b.opt("shares").map(|t| tensor_id(t, nt)).transpose()?,
            step: b.opt("step").map(|s| s.u32().map(StepId)).transpose()?,
        });
    }
    let order_kind = match j.get("order_kind")?.str()? {
        "program" => "program",
        "memory-aware" => "memory-aware",
        other => return Err(bad(format!("header: unknown order kind '{other}'"))),
    };
    Ok(MemoryPlan {
        order,
        buffers,
        tensor_offset: SecondaryMap::from_vec(tensor_offset, None),
        workspace: SecondaryMap::from_vec(workspace, None),
        arena_bytes: j.get("arena_bytes")?.u64()?,
        lower_bound_bytes: j.get("lower_bound_bytes")?.u64()?,
        naive_bytes: j.get("naive_bytes")?.u64()?,
        persistent_bytes: j.get("persistent_bytes")?.u64()?,
        persistent_offset: SecondaryMap::from_vec(persistent_offset, None),
        planner: j.get("planner")?.str()?.to_string(),
        order_kind,
        heuristics: j.get("heuristics")?.parse()?,
    })
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes a `.lmc` file. Every failure is a [`CompileError::File`] (or the IR's own error
/// for a graph that decodes but does not validate) naming what is wrong; nothing panics.
pub fn from_bytes(bytes: &[u8]) -> Result<CompiledStep, CompileError> {
    if bytes.len() < 8 || &bytes[..8] != MAGIC {
        return Err(bad(
            "not a lowmem compiled step (.lmc): the file does not start with LOWMEMC",
        ));
    }
    if bytes.len() < PREFIX {
        return Err(bad(format!(
            "truncated: {} bytes, shorter than the {PREFIX}-byte prefix",
            bytes.len()
        )));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(bad(format!(
            "format version {version}; this build reads version {VERSION} (compile the model again)"
        )));
    }
    let (h, d) = (le_u64(bytes, 16), le_u64(bytes, 24));
    let want = (PREFIX as u64)
        .checked_add(h)
        .and_then(|x| x.checked_add(d));
    match want {
        Some(w) if w == bytes.len() as u64 => {}
        Some(w) if w > bytes.len() as u64 => {
            return Err(bad(format!(
                "truncated: the prefix announces {w} bytes, the file has {}",
                bytes.len()
            )));
        }
        _ => {
            return Err(bad(format!(
                "corrupted: the prefix announces a {h}-byte header and {d} bytes of data, the file has {} bytes",
                bytes.len()
            )));
        }
    }
    let header = &bytes[PREFIX..PREFIX + h as usize];
    let raw = &bytes[PREFIX + h as usize..];
    let sum = le_u64(bytes, 32);
    if fnv1a(&[header, raw]) != sum {
        return Err(bad(
            "corrupted: the checksum of the header and data does not match",
        ));
    }
    let v: Value = serde_json::from_slice(header)
        .map_err(|e| bad(format!("corrupted: the header is not JSON: {e}")))?;
    let root = J {
        v: &v,
        path: "header",
    };
    if root.get("format")?.str()? != "lowmem-compiled-step" {
        return Err(bad("header: format is not 'lowmem-compiled-step'"));
    }
    let mut data = Vec::new();
    for e in root.get("data")?.arr()? {
        let (off, dtype, len) = (
            e.get("offset")?.usize()?,
            e.get("dtype")?.parse::<DType>()?,
            e.get("len")?.usize()?,
        );
        let end = len
            .checked_mul(dtype.size())
            .and_then(|b| b.checked_add(off))
            .filter(|&end| end <= raw.len())
            .ok_or_else(|| {
                bad(format!(
                    "data entry at byte {off} ({len} {dtype}) runs past the {} bytes of data",
                    raw.len()
                ))
            })?;
        let t = TensorData::from_le_bytes(dtype, &raw[off..end])
            .ok_or_else(|| bad(format!("data entry at byte {off} does not decode")))?;
        data.push(Arc::new(t));
    }
    let graph = read_graph(root.get("graph")?, &data)?;
    let forward = read_graph(root.get("forward")?, &data)?;
    let nt = graph.tensors.len();
    let t = root.get("task")?;
    let task = match t.get("kind")?.str()? {
        "inference" => Task::Inference,
        "gradient" => Task::Gradient {
            loss: read_loss(t.get("loss")?)?,
            output: t
                .opt("output")
                .map(|o| o.str().map(String::from))
                .transpose()?,
        },
        "training" => Task::Training {
            loss: read_loss(t.get("loss")?)?,
            optimizer: read_optimizer(t.get("optimizer")?)?,
        },
        other => return Err(bad(format!("header: unknown task '{other}'"))),
    };
    let roles_j = root.get("roles")?;
    let kind: Vec<Kind> = roles_j
        .get("kind")?
        .arr()?
        .map(read_kind)
        .collect::<Result<_, _>>()?;
    let state_alias: Vec<Option<TensorId>> = roles_j
        .get("state_alias")?
        .arr()?
        .map(|a| {
            if a.v.is_null() {
                Ok(None)
            } else {
                tensor_id(a, nt).map(Some)
            }
        })
        .collect::<Result<_, _>>()?;
    if kind.len() != nt || state_alias.len() != nt {
        return Err(bad(format!(
            "header: roles for {} tensors, the graph has {nt}",
            kind.len()
        )));
    }
    let roles = Roles {
        kind: SecondaryMap::from_vec(kind, Kind::Activation),
        state_alias: SecondaryMap::from_vec(state_alias, None),
    };
    let plan = read_plan(root.get("plan")?, &graph)?;
    let inputs: Vec<InputRole> = root
        .get("inputs")?
        .arr()?
        .map(|r| match (r.v.as_str(), r.opt("data"), r.opt("state")) {
            (Some("labels"), _, _) => Ok(InputRole::Labels),
            (Some("step"), _, _) => Ok(InputRole::Step),
            (None, Some(k), None) => k.usize().map(InputRole::Data),
            (None, None, Some(k)) => k.usize().map(InputRole::State),
            _ => Err(bad(
                "header: an input role is not data, labels, step or state",
            )),
        })
        .collect::<Result<_, _>>()?;
    if inputs.len() != graph.inputs.len() {
        return Err(bad(format!(
            "header: {} input roles for {} graph inputs",
            inputs.len(),
            graph.inputs.len()
        )));
    }
    let mut state = Vec::new();
    for s in root.get("state")?.arr()? {
        let input = tensor_id(s.get("input")?, nt)?;
        let output = tensor_id(s.get("output")?, nt)?;
        let value = data
            .get(s.get("data")?.usize()?)
            .ok_or_else(|| bad("header: a state names a missing data entry"))?
            .clone();
        let it = graph.tensor(input);
        if it.dtype != value.dtype() || it.numel() != value.len() {
            return Err(bad(format!(
                "state '{}': its data does not fit {} {:?}",
                it.name, it.dtype, it.shape
            )));
        }
        state.push(StateSlot {
            name: s.get("name")?.str()?.to_string(),
            kind: read_state_kind(s.get("kind")?)?,
            input,
            output,
            of: s.get("of")?.str()?.to_string(),
            value,
        });
    }
    for r in &inputs {
        match *r {
            InputRole::State(k) if k >= state.len() => {
                return Err(bad(format!("header: input role names state {k}")));
            }
            InputRole::Data(k) if k >= forward.inputs.len() => {
                return Err(bad(format!("header: input role names data input {k}")));
            }
            _ => {}
        }
    }
    let grads = root
        .get("grads")?
        .arr()?
        .map(|p| {
            let pair: (String, u32) = p.parse()?;
            tensor_id(
                J {
                    v: &json!(pair.1),
                    path: "grads",
                },
                nt,
            )
            .map(|t| (pair.0, t))
        })
        .collect::<Result<_, _>>()?;
    let remat = root
        .opt("remat")
        .map(|r| -> Result<RematRecord, CompileError> {
            let scheme = r.get("scheme")?.str()?;
            Ok(RematRecord {
                scheme: crate::Scheme::ALL
                    .into_iter()
                    .map(crate::Scheme::name)
                    .find(|&n| n == scheme)
                    .ok_or_else(|| bad(format!("header: unknown scheme '{scheme}'")))?,
                detail: r.get("detail")?.str()?.to_string(),
                stages: r.get("stages")?.usize()?,
                checkpoints: r.get("checkpoints")?.parse()?,
                recomputed_nodes: r.get("recomputed_nodes")?.usize()?,
                partial: r
                    .opt("partial")
                    .map(|p| p.parse())
                    .transpose()?
                    .unwrap_or_default(),
            })
        })
        .transpose()?;
    let c = root.get("costs")?;
    let step = CompiledStep {
        model: root.get("model")?.str()?.to_string(),
        task,
        batch: root.get("batch")?.usize()?,
        graph,
        roles,
        plan,
        inputs,
        state,
        grads,
        forward,
        budget: root.opt("budget").map(|b| b.u64()).transpose()?,
        remat,
        rewrites: root
            .opt("rewrites")
            .map(|r| r.parse())
            .transpose()?
            .unwrap_or_default(),
        warnings: Vec::new(),
        timeline: crate::Timeline::default(),
        costs: Costs {
            forward_flops: c.get("forward_flops")?.u64()?,
            backward_flops: c.get("backward_flops")?.u64()?,
            recompute_flops: c.get("recompute_flops")?.u64()?,
        },
        planning_time: Duration::from_secs_f64(
            root.opt("planning_seconds")
                .and_then(|s| s.v.as_f64())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .unwrap_or(0.0),
        ),
    };
    step.verify()
        .map_err(|e| bad(format!("the stored plan does not verify: {e}")))?;
    Ok(step)
}

/// Writes `step` to `path`.
pub fn write(step: &CompiledStep, path: &std::path::Path) -> std::io::Result<()> {
    std::fs::write(path, to_bytes(step))
}

/// Reads a `.lmc` file.
pub fn read(path: &std::path::Path) -> Result<CompiledStep, CompileError> {
    let bytes = std::fs::read(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    from_bytes(&bytes).map_err(|e| match e {
        CompileError::File(m) => bad(format!("{}: {m}", path.display())),
        e => bad(format!("{}: {e}", path.display())),
    })
}
