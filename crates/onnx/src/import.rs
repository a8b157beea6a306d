//! The import driver: graph inputs, initializers, one pass over the nodes, outputs.
//!
//! Constants (initializers, `Constant`s, folded results) are kept aside and only become graph
//! weights when a remaining op or a graph output reads them, so unused initializers and
//! shape-arithmetic intermediates never reach the IR. Nodes that no graph output depends on are
//! skipped altogether.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};

use lowmem_ir::{DType, Graph, TensorId};

use crate::node::NodeCtx;
use crate::pb::{
    self, tensor_shape_proto::dimension::Value as Dim, type_proto::Value as TypeValue,
};
use crate::tensor::{self, Const};
use crate::{ImportError, MAX_OPSET, MIN_OPSET, fold, ops};

/// Named values during import: graph tensors live in `graph`, constants in `consts` (a
/// constant that has been materialised as a weight is in both).
pub(crate) struct Env {
    pub graph: Graph,
    consts: HashMap<String, Const>,
    /// Bytes that folding may still allocate, of `fold_limit`.
    fold_budget: Cell<usize>,
    fold_limit: usize,
}

impl Env {
    /// Takes `bytes` from the fold budget, or `None` (taking nothing) if they do not fit.
    pub fn take_fold_budget(&self, bytes: usize) -> Option<()> {
        let left = self.fold_budget.get().checked_sub(bytes)?;
        self.fold_budget.set(left);
        Some(())
    }

    pub fn fold_budget_left(&self) -> usize {
        self.fold_budget.get()
    }

    pub fn fold_limit(&self) -> usize {
        self.fold_limit
    }

    pub fn try_constant(&self, name: &str) -> Option<&Const> {
        self.consts.get(name)
    }

    fn check_defined(&self, ctx: &NodeCtx, name: &str) -> Result<(), ImportError> {
        if self.consts.contains_key(name) || self.graph.tensor_id(name).is_some() {
            Ok(())
        } else {
            Err(ctx.error(format!(
                "reads '{name}', which no graph input, initializer or earlier node defines"
            )))
        }
    }

    /// Input `i` of the node as a constant: `None` when the optional input is absent, an
    /// error when it is computed from graph inputs.
    pub fn constant(
        &self,
        ctx: &NodeCtx,
        i: usize,
        what: &str,
    ) -> Result<Option<&Const>, ImportError> {
        let Some(name) = ctx.input(i) else {
            return Ok(None);
        };
        self.check_defined(ctx, name)?;
        self.consts
            .get(name)
            .map(Some)
            .ok_or_else(|| ImportError::NotConstant {
                node: ctx.label.clone(),
                op_type: ctx.op_type().to_string(),
                input: name.to_string(),
                what: what.to_string(),
            })
    }

    pub fn dtype_shape(
        &self,
        ctx: &NodeCtx,
        name: &str,
    ) -> Result<(DType, Vec<usize>), ImportError> {
        self.check_defined(ctx, name)?;
        Ok(match self.consts.get(name) {
            Some(c) => (c.dtype, c.shape.clone()),
            None => {
                let t = self
                    .graph
                    .tensor(self.graph.tensor_id(name).expect("checked"));
                (t.dtype, t.shape.clone())
            }
        })
    }

    /// The graph tensor for `name`, adding a constant as a weight on first use.
    fn materialize(&mut self, name: &str) -> Result<Option<TensorId>, ImportError> {
        if let Some(id) = self.graph.tensor_id(name) {
            return Ok(Some(id));
        }
        match self.consts.get(name) {
            Some(c) => Ok(Some(self.graph.add_weight(
                name,
                c.shape.clone(),
                c.data.clone(),
            )?)),
            None => Ok(None),
        }
    }

    fn define(&mut self, ctx: &NodeCtx, name: &str, c: Const) -> Result<(), ImportError> {
        if self.consts.contains_key(name) || self.graph.tensor_id(name).is_some() {
            return Err(ctx.error(format!("output '{name}' is already defined")));
        }
        self.consts.insert(name.to_string(), c);
        Ok(())
    }
}

fn is_default_domain(d: &str) -> bool {
    d.is_empty() || d == "ai.onnx"
}

/// The static shape of a graph input, or an error naming the first dynamic dimension.
fn input_type(vi: &pb::ValueInfoProto) -> Result<(DType, Vec<usize>), ImportError> {
    let name = vi.name();
    let Some(TypeValue::TensorType(t)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(ImportError::Invalid(format!(
            "graph input '{name}' is not a tensor"
        )));
    };
    let dtype =
        tensor::dtype_from_onnx(t.elem_type()).ok_or_else(|| ImportError::UnsupportedDtype {
            what: format!("graph input '{name}'"),
            dtype: tensor::onnx_dtype_name(t.elem_type()),
        })?;
    let Some(shape) = &t.shape else {
        return Err(ImportError::Invalid(format!(
            "graph input '{name}' has no shape; lowmem needs static shapes"
        )));
    };
    let dims = shape
        .dim
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let dynamic = |what: String| ImportError::DynamicDim {
                input: name.to_string(),
                dim: i,
                what,
            };
            match &d.value {
                Some(Dim::DimValue(v)) => {
                    usize::try_from(*v).map_err(|_| dynamic(format!("negative ({v})")))
                }
                Some(Dim::DimParam(p)) => Err(dynamic(format!("symbolic ('{p}')"))),
                None => Err(dynamic("unknown".into())),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((dtype, dims))
}

pub(crate) fn import(
    model: pb::ModelProto,
    name: &str,
    max_fold_bytes: usize,
) -> Result<Graph, ImportError> {
    let mut opsets: HashMap<String, i64> = HashMap::new();
    for o in &model.opset_import {
        let d = if is_default_domain(o.domain()) {
            ""
        } else {
            o.domain()
        };
        opsets.insert(d.to_string(), o.version());
    }
    let opset = *opsets.get("").ok_or_else(|| {
        ImportError::Invalid("the model imports no opset for the default ONNX domain".into())
    })?;
    if !(MIN_OPSET..=MAX_OPSET).contains(&opset) {
        return Err(ImportError::UnsupportedOpset {
            domain: "ai.onnx".into(),
            version: opset,
        });
    }
    let mut g = model
        .graph
        .ok_or_else(|| ImportError::Invalid("the model has no graph".into()))?;
    if let Some(s) = g.sparse_initializer.first() {
        let n = s.values.as_ref().map_or("?", |v| v.name());
        return Err(ImportError::BadTensor {
            name: n.to_string(),
            msg: "sparse initializers are not supported".into(),
        });
    }

    let mut env = Env {
        graph: Graph::new(name),
        consts: HashMap::new(),
        fold_budget: Cell::new(max_fold_bytes),
        fold_limit: max_fold_bytes,
    };
    for mut t in std::mem::take(&mut g.initializer) {
        let (tname, c) = tensor::from_proto(&mut t)?;
        if tname.is_empty() {
            return Err(ImportError::Invalid("an initializer has no name".into()));
        }
        if env.consts.insert(tname.clone(), c).is_some() {
            return Err(ImportError::Invalid(format!(
                "initializer '{tname}' is defined twice"
            )));
        }
    }
    // IR version 3 lists every initializer among the inputs too; those are weights.
    for vi in &g.input {
        if env.consts.contains_key(vi.name()) {
            continue;
        }
        let (dtype, shape) = input_type(vi)?;
        env.graph.add_input(vi.name(), dtype, shape)?;
    }

    // Liveness, backwards from the graph outputs.
    let mut used: HashSet<&str> = g.output.iter().map(|o| o.name()).collect();
    let mut live = vec![false; g.node.len()];
    for (i, n) in g.node.iter().enumerate().rev() {
        if n.output.iter().any(|o| used.contains(o.as_str())) {
            live[i] = true;
            used.extend(n.input.iter().map(String::as_str));
        }
    }

    let mut node_names: HashSet<String> = HashSet::new();
    for (i, n) in g.node.iter().enumerate() {
        if !live[i] {
            continue;
        }
        let domain = n.domain();
        let node_opset = if is_default_domain(domain) {
            Some(opset)
        } else {
            opsets.get(domain).copied()
        };
        let ctx = NodeCtx::new(n, i, node_opset.unwrap_or(0));
        if !is_default_domain(domain) {
            let v = node_opset.map_or("not imported".to_string(), |v| v.to_string());
            return Err(ops::unsupported(
                &ctx,
                domain,
                v,
                "only the default ONNX domain is supported",
            ));
        }
        ops::check_since(&ctx)?;
        // Trailing outputs nothing reads (optional outputs such as Dropout's mask) are dropped.
        let n_out = n
            .output
            .iter()
            .rposition(|o| !o.is_empty() && used.contains(o.as_str()))
            .map_or(0, |k| k + 1);

        if let Some(c) = fold::generate(&ctx, &env)? {
            let out = n
                .output
                .first()
                .ok_or_else(|| ctx.error("has no outputs"))?;
            env.define(&ctx, out, c)?;
            continue;
        }
        let mapped = ops::map(&ctx, &env, n_out)?;
        for x in &mapped.inputs {
            env.check_defined(&ctx, x)?;
        }
        let folded = if n_out == 1 {
            fold::fold(&ctx, &mapped, &env)?
        } else {
            None
        };
        if let Some(c) = folded {
            env.define(&ctx, &n.output[0], c)?;
            continue;
        }
        let mut ids = Vec::with_capacity(mapped.inputs.len());
        for x in &mapped.inputs {
            ids.push(env.materialize(x)?.expect("checked above"));
        }
        let mut node_name = match n.name() {
            "" => format!("{}_{i}", n.op_type()),
            s => s.to_string(),
        };
        if node_names.contains(&node_name) {
            node_name = format!("{node_name}_{i}");
        }
        node_names.insert(node_name.clone());
        let outs: Vec<String> = n.output[..n_out]
            .iter()
            .enumerate()
            .map(|(k, o)| {
                if o.is_empty() {
                    format!("{node_name}:{k}")
                } else {
                    o.clone()
                }
            })
            .collect();
        let outs: Vec<&str> = outs.iter().map(String::as_str).collect();
        env.graph.add_node(node_name, mapped.op, &ids, &outs)?;
    }

    let mut outputs = Vec::with_capacity(g.output.len());
    for o in &g.output {
        let id = env.materialize(o.name())?.ok_or_else(|| {
            ImportError::Invalid(format!(
                "graph output '{}' is not produced by any input, initializer or node",
                o.name()
            ))
        })?;
        outputs.push(id);
    }
    env.graph.set_outputs(outputs);
    Ok(env.graph)
}
