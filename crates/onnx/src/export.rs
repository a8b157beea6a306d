//! ONNX export: a lowmem inference [`Graph`] -> serialised `ModelProto`.
//!
//! The model imports the default domain at opset 17 (20 when a Gelu needs it), IR version 8.
//! Weights become initializers (`raw_data`); attributes that ONNX takes as constant inputs
//! (Reshape's shape, Squeeze/Unsqueeze/ReduceSum axes, Clip's bounds, ...) become extra
//! initializers named after their node. Training-only ops (the autodiff and optimizer ops) have
//! no ONNX form and are an [`ExportError`] naming the node.

use std::collections::HashSet;

use lowmem_ir::{AutoPad, DType, Graph, Op, PoolAttrs, SoftmaxAttrs, TensorData, shape::axis};
use prost::Message;
use thiserror::Error;

use crate::pb;
use crate::pb::attribute_proto::AttributeType;
use crate::pb::tensor_shape_proto::{Dimension, dimension};
use crate::pb::type_proto;
use crate::tensor::dtype_to_onnx;

/// The default-domain opset of exported models without Gelu.
pub const EXPORT_OPSET: i64 = 17;
/// The opset used when the graph has a Gelu (defined from opset 20).
pub const EXPORT_OPSET_GELU: i64 = 20;
/// The ONNX IR version written.
pub const EXPORT_IR_VERSION: i64 = 8;

/// Why a graph could not be exported.
#[derive(Debug, Error)]
pub enum ExportError {
    #[error(
        "node {node}: {op} is a training-only op and has no ONNX form; export the forward graph"
    )]
    TrainingOp { node: String, op: String },
    #[error("node {node} ({op}): {msg}")]
    Unsupported {
        node: String,
        op: String,
        msg: String,
    },
}

fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn attr_float(name: &str, v: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: impl IntoIterator<Item = i64>) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.into_iter().collect(),
        ..Default::default()
    }
}

fn attr_str(name: &str, v: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(v.as_bytes().to_vec()),
        ..Default::default()
    }
}

fn usizes(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

fn tensor_proto(name: &str, shape: &[usize], data: &TensorData) -> pb::TensorProto {
    pb::TensorProto {
        dims: usizes(shape),
        data_type: Some(dtype_to_onnx(data.dtype()) as i32),
        name: Some(name.to_string()),
        raw_data: Some(data.to_le_bytes()),
        ..Default::default()
    }
}

fn value_info(name: &str, dtype: DType, shape: &[usize]) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(pb::TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(dtype_to_onnx(dtype) as i32),
                shape: Some(pb::TensorShapeProto {
                    dim: shape
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(dimension::Value::DimValue(d as i64)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn auto_pad_str(p: AutoPad) -> &'static str {
    match p {
        AutoPad::NotSet => "NOTSET",
        AutoPad::SameUpper => "SAME_UPPER",
        AutoPad::SameLower => "SAME_LOWER",
        AutoPad::Valid => "VALID",
    }
}

/// Builds the GraphProto's nodes and the initializers they need, with fresh names.
struct Builder {
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    names: HashSet<String>,
}

impl Builder {
    /// A name not used by any tensor yet, based on `base`.
    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while self.names.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.names.insert(name.clone());
        name
    }

    /// A constant initializer input; returns its name.
    fn constant(&mut self, base: &str, shape: &[usize], data: TensorData) -> String {
        let name = self.fresh(base);
        self.initializers.push(tensor_proto(&name, shape, &data));
        name
    }

    fn ints(&mut self, base: &str, v: &[i64]) -> String {
        self.constant(base, &[v.len()], TensorData::I64(v.to_vec()))
    }

    fn node(
        &mut self,
        name: &str,
        op_type: &str,
        inputs: Vec<String>,
        outputs: Vec<String>,
        attribute: Vec<pb::AttributeProto>,
    ) {
        self.nodes.push(pb::NodeProto {
            input: inputs,
            output: outputs,
            name: Some(name.to_string()),
            op_type: Some(op_type.to_string()),
            attribute,
            ..Default::default()
        });
    }
}

fn pool_attrs(p: &PoolAttrs, average: bool) -> Vec<pb::AttributeProto> {
    let mut a = vec![attr_ints("kernel_shape", usizes(&p.kernel_shape))];
    if !p.strides.is_empty() {
        a.push(attr_ints("strides", usizes(&p.strides)));
    }
    if !average && !p.dilations.is_empty() {
        a.push(attr_ints("dilations", usizes(&p.dilations)));
    }
    if !p.pads.is_empty() && p.auto_pad == AutoPad::NotSet {
        a.push(attr_ints("pads", usizes(&p.pads)));
    }
    if p.auto_pad != AutoPad::NotSet {
        a.push(attr_str("auto_pad", auto_pad_str(p.auto_pad)));
    }
    if p.ceil_mode {
        a.push(attr_int("ceil_mode", 1));
    }
    if average && p.count_include_pad {
        a.push(attr_int("count_include_pad", 1));
    }
    a
}

/// Whether a legacy (opset < 13) Softmax over `shape` at `axis` means the same as the modern
/// one at `axis`: only when `axis` is the last dimension.
fn legacy_is_modern(a: &SoftmaxAttrs, rank: usize) -> bool {
    !a.legacy || axis(a.axis, rank) == Some(rank.saturating_sub(1))
}

/// Serialises an inference graph as an ONNX `ModelProto`.
pub fn export_model(graph: &Graph) -> Result<Vec<u8>, ExportError> {
    let uses_gelu = graph.nodes.iter().any(|n| matches!(n.op, Op::Gelu { .. }));
    let opset = if uses_gelu {
        EXPORT_OPSET_GELU
    } else {
        EXPORT_OPSET
    };
    let mut b = Builder {
        nodes: Vec::with_capacity(graph.nodes.len()),
        initializers: Vec::new(),
        names: graph.tensors.iter().map(|t| t.name.clone()).collect(),
    };
    for t in &graph.tensors {
        if let Some(v) = &t.value {
            b.initializers.push(tensor_proto(&t.name, &t.shape, v));
        }
    }

    for n in &graph.nodes {
        let ins: Vec<String> = n
            .inputs
            .iter()
            .map(|&t| graph.tensor(t).name.clone())
            .collect();
        let outs: Vec<String> = n
            .outputs
            .iter()
            .map(|&t| graph.tensor(t).name.clone())
            .collect();
        let in_shape = |k: usize| -> &[usize] { &graph.tensor(n.inputs[k]).shape };
        let in_dtype = |k: usize| graph.tensor(n.inputs[k]).dtype;
        let unsupported = |msg: String| ExportError::Unsupported {
            node: n.name.clone(),
            op: n.op.name().to_string(),
            msg,
        };
        let name = n.name.as_str();
        let simple = |op_type: &str| op_type.to_string();
        let (op_type, inputs, attrs): (String, Vec<String>, Vec<pb::AttributeProto>) = match &n.op {
            Op::Conv(c) => {
                let mut a = Vec::new();
                if !c.kernel_shape.is_empty() {
                    a.push(attr_ints("kernel_shape", usizes(&c.kernel_shape)));
                }
                if !c.strides.is_empty() {
                    a.push(attr_ints("strides", usizes(&c.strides)));
                }
                if !c.dilations.is_empty() {
                    a.push(attr_ints("dilations", usizes(&c.dilations)));
                }
                if !c.pads.is_empty() && c.auto_pad == AutoPad::NotSet {
                    a.push(attr_ints("pads", usizes(&c.pads)));
                }
                if c.auto_pad != AutoPad::NotSet {
                    a.push(attr_str("auto_pad", auto_pad_str(c.auto_pad)));
                }
                if c.group != 1 {
                    a.push(attr_int("group", c.group as i64));
                }
                (simple("Conv"), ins, a)
            }
            Op::BatchNormalization(a) => (
                simple("BatchNormalization"),
                ins,
                vec![
                    attr_float("epsilon", a.epsilon),
                    attr_float("momentum", a.momentum),
                ],
            ),
            Op::Relu => (simple("Relu"), ins, vec![]),
            Op::LeakyRelu { alpha } => {
                (simple("LeakyRelu"), ins, vec![attr_float("alpha", *alpha)])
            }
            Op::Sigmoid => (simple("Sigmoid"), ins, vec![]),
            Op::Tanh => (simple("Tanh"), ins, vec![]),
            Op::Erf => (simple("Erf"), ins, vec![]),
            Op::Sqrt => (simple("Sqrt"), ins, vec![]),
            Op::Neg => (simple("Neg"), ins, vec![]),
            Op::Identity => (simple("Identity"), ins, vec![]),
            Op::Cast { to } => (
                simple("Cast"),
                ins,
                vec![attr_int("to", crate::tensor::dtype_to_onnx(*to) as i64)],
            ),
            Op::GlobalAveragePool => (simple("GlobalAveragePool"), ins, vec![]),
            Op::Gelu { approximate } => {
                let mode = match approximate {
                    lowmem_ir::GeluApprox::None => "none",
                    lowmem_ir::GeluApprox::Tanh => "tanh",
                };
                (simple("Gelu"), ins, vec![attr_str("approximate", mode)])
            }
            Op::Add => (simple("Add"), ins, vec![]),
            Op::Sub => (simple("Sub"), ins, vec![]),
            Op::Mul => (simple("Mul"), ins, vec![]),
            Op::Div => (simple("Div"), ins, vec![]),
            Op::Pow => (simple("Pow"), ins, vec![]),
            Op::Sum => (simple("Sum"), ins, vec![]),
            Op::MatMul => (simple("MatMul"), ins, vec![]),
            Op::Gemm(g) => {
                let mut a = Vec::new();
                if g.alpha != 1.0 {
                    a.push(attr_float("alpha", g.alpha));
                }
                if g.beta != 1.0 {
                    a.push(attr_float("beta", g.beta));
                }
                if g.trans_a {
                    a.push(attr_int("transA", 1));
                }
                if g.trans_b {
                    a.push(attr_int("transB", 1));
                }
                (simple("Gemm"), ins, a)
            }
            Op::MaxPool(p) => (simple("MaxPool"), ins, pool_attrs(p, false)),
            Op::AveragePool(p) => {
                if p.dilations.iter().any(|&d| d != 1) {
                    return Err(unsupported(format!(
                        "dilations {:?} need AveragePool from opset 19",
                        p.dilations
                    )));
                }
                (simple("AveragePool"), ins, pool_attrs(p, true))
            }
            Op::Lrn(l) => (
                simple("LRN"),
                ins,
                vec![
                    attr_int("size", l.size as i64),
                    attr_float("alpha", l.alpha),
                    attr_float("beta", l.beta),
                    attr_float("bias", l.bias),
                ],
            ),
            Op::Concat { axis } => (simple("Concat"), ins, vec![attr_int("axis", *axis)]),
            Op::Reshape { shape, allowzero } => {
                let s = b.ints(&format!("{name}/shape"), shape);
                let a = if *allowzero {
                    vec![attr_int("allowzero", 1)]
                } else {
                    vec![]
                };
                (simple("Reshape"), vec![ins[0].clone(), s], a)
            }
            Op::Flatten { axis } => (simple("Flatten"), ins, vec![attr_int("axis", *axis)]),
            Op::Transpose { perm } => {
                let a = match perm {
                    Some(p) => vec![attr_ints("perm", usizes(p))],
                    None => vec![],
                };
                (simple("Transpose"), ins, a)
            }
            Op::Squeeze { axes } => {
                let mut i = vec![ins[0].clone()];
                if let Some(ax) = axes {
                    i.push(b.ints(&format!("{name}/axes"), ax));
                }
                (simple("Squeeze"), i, vec![])
            }
            Op::Unsqueeze { axes } => {
                let ax = b.ints(&format!("{name}/axes"), axes);
                (simple("Unsqueeze"), vec![ins[0].clone(), ax], vec![])
            }
            Op::Softmax(a) | Op::LogSoftmax(a) => {
                let op_type = if matches!(n.op, Op::Softmax(_)) {
                    "Softmax"
                } else {
                    "LogSoftmax"
                };
                let shape = in_shape(0);
                if legacy_is_modern(a, shape.len()) {
                    (simple(op_type), ins, vec![attr_int("axis", a.axis)])
                } else {
                    // Legacy: normalise over the flattened dims `axis..`, as a 2-D softmax.
                    let flat = b.fresh(&format!("{name}/flat"));
                    b.node(
                        &format!("{name}/flatten"),
                        "Flatten",
                        vec![ins[0].clone()],
                        vec![flat.clone()],
                        vec![attr_int("axis", a.axis)],
                    );
                    let normed = b.fresh(&format!("{name}/normed"));
                    b.node(
                        &format!("{name}/softmax"),
                        op_type,
                        vec![flat],
                        vec![normed.clone()],
                        vec![attr_int("axis", -1)],
                    );
                    let s = b.ints(&format!("{name}/shape"), &usizes(shape));
                    ("Reshape".to_string(), vec![normed, s], vec![])
                }
            }
            Op::LayerNormalization { axis, epsilon } => (
                simple("LayerNormalization"),
                ins,
                vec![attr_int("axis", *axis), attr_float("epsilon", *epsilon)],
            ),
            Op::ReduceMean(r) | Op::ReduceSum(r) => {
                let sum = matches!(n.op, Op::ReduceSum(_));
                let mut a = vec![attr_int("keepdims", r.keepdims as i64)];
                let mut i = vec![ins[0].clone()];
                if let Some(ax) = &r.axes {
                    // ReduceSum takes axes as an input from opset 13, ReduceMean from 18.
                    if sum || opset >= 18 {
                        i.push(b.ints(&format!("{name}/axes"), ax));
                    } else {
                        a.push(attr_ints("axes", ax.iter().copied()));
                    }
                }
                let op_type = if sum { "ReduceSum" } else { "ReduceMean" };
                (simple(op_type), i, a)
            }
            Op::Dropout { ratio, seed } => {
                let r = b.constant(
                    &format!("{name}/ratio"),
                    &[],
                    TensorData::filled(in_dtype(0), 1, *ratio as f64),
                );
                let a = if *seed != 0 {
                    vec![attr_int("seed", *seed as i64)]
                } else {
                    vec![]
                };
                (simple("Dropout"), vec![ins[0].clone(), r], a)
            }
            Op::Clip(c) => {
                let dt = in_dtype(0);
                let mut bound = |v: Option<f32>, what: &str| match v {
                    Some(m) => b.constant(
                        &format!("{name}/{what}"),
                        &[],
                        TensorData::filled(dt, 1, m as f64),
                    ),
                    None => String::new(),
                };
                let mut i = vec![ins[0].clone(), bound(c.min, "min"), bound(c.max, "max")];
                while i.last().is_some_and(String::is_empty) {
                    i.pop();
                }
                (simple("Clip"), i, vec![])
            }
            Op::Scale { alpha } => {
                let s = b.constant(
                    &format!("{name}/alpha"),
                    &[],
                    TensorData::filled(in_dtype(0), 1, *alpha as f64),
                );
                (simple("Mul"), vec![ins[0].clone(), s], vec![])
            }
            Op::SumTo { shape } => {
                // ReduceSum (keepdims) over the broadcast axes, then Reshape to `shape`.
                let x = in_shape(0);
                let lead = x.len() - shape.len();
                let axes: Vec<i64> = (0..x.len())
                    .filter(|&d| d < lead || (shape[d - lead] == 1 && x[d] != 1))
                    .map(|d| d as i64)
                    .collect();
                let summed = if axes.is_empty() {
                    ins[0].clone()
                } else {
                    let ax = b.ints(&format!("{name}/axes"), &axes);
                    let out = b.fresh(&format!("{name}/summed"));
                    b.node(
                        &format!("{name}/reduce"),
                        "ReduceSum",
                        vec![ins[0].clone(), ax],
                        vec![out.clone()],
                        vec![attr_int("keepdims", 1)],
                    );
                    out
                };
                let s = b.ints(&format!("{name}/shape"), &usizes(shape));
                (simple("Reshape"), vec![summed, s], vec![])
            }
            Op::Expand { shape } => {
                let s = b.ints(&format!("{name}/shape"), &usizes(shape));
                (simple("Expand"), vec![ins[0].clone(), s], vec![])
            }
            Op::Slice { axis, start, end } => {
                let st = b.ints(&format!("{name}/starts"), &[*start as i64]);
                let en = b.ints(&format!("{name}/ends"), &[*end as i64]);
                let ax = b.ints(&format!("{name}/axes"), &[*axis as i64]);
                (simple("Slice"), vec![ins[0].clone(), st, en, ax], vec![])
            }
            other => {
                return Err(ExportError::TrainingOp {
                    node: n.name.clone(),
                    op: other.name().to_string(),
                });
            }
        };
        // A fused epilogue is the standalone op in ONNX: `Conv -> Relu` through an
        // intermediate named after the output.
        match n.op.epilogue() {
            None => b.node(name, &op_type, inputs, outs, attrs),
            Some(act) => {
                let pre = format!("{}.pre_{}", outs[0], act.op().name().to_lowercase());
                b.node(name, &op_type, inputs, vec![pre.clone()], attrs);
                let act_name = format!("{name}.{}", act.op().name().to_lowercase());
                b.node(&act_name, act.op().name(), vec![pre], outs, vec![]);
            }
        }
    }

    let input = graph
        .inputs
        .iter()
        .map(|&i| {
            let t = graph.tensor(i);
            value_info(&t.name, t.dtype, &t.shape)
        })
        .collect();
    let output = graph
        .outputs
        .iter()
        .map(|&i| {
            let t = graph.tensor(i);
            value_info(&t.name, t.dtype, &t.shape)
        })
        .collect();
    let model = pb::ModelProto {
        ir_version: Some(EXPORT_IR_VERSION),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        producer_name: Some("lowmem".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(pb::GraphProto {
            node: b.nodes,
            name: Some(graph.name.clone()),
            initializer: b.initializers,
            input,
            output,
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(model.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lowmem_ir::{ClipAttrs, ReduceAttrs};

    fn round_trip(g: &Graph) -> Graph {
        let bytes = export_model(g).unwrap();
        crate::import_model(&bytes, &g.name).unwrap()
    }

    #[test]
    fn constant_inputs_fold_back_to_attributes() {
        let mut g = Graph::new("t");
        let x = g.add_input("x", DType::F32, vec![2, 3, 4]).unwrap();
        let y = g
            .add_node(
                "r",
                Op::Reshape {
                    shape: vec![2, -1],
                    allowzero: false,
                },
                &[x],
                &["y"],
            )
            .unwrap()[0];
        let z = g
            .add_node(
                "c",
                Op::Clip(ClipAttrs {
                    min: None,
                    max: Some(0.5),
                }),
                &[y],
                &["z"],
            )
            .unwrap()[0];
        let s = g
            .add_node(
                "s",
                Op::ReduceSum(ReduceAttrs {
                    axes: Some(vec![1]),
                    keepdims: false,
                }),
                &[z],
                &["s"],
            )
            .unwrap()[0];
        let u = g
            .add_node("u", Op::Unsqueeze { axes: vec![0] }, &[s], &["u"])
            .unwrap()[0];
        let m = g
            .add_node(
                "m",
                Op::Softmax(SoftmaxAttrs {
                    axis: 0,
                    legacy: true,
                }),
                &[u],
                &["m"],
            )
            .unwrap()[0];
        g.set_outputs(vec![m]);
        let back = round_trip(&g);
        let ops: Vec<&str> = back.nodes.iter().map(|n| n.op.name()).collect();
        assert_eq!(
            ops,
            [
                "Reshape",
                "Clip",
                "ReduceSum",
                "Unsqueeze",
                "Flatten",
                "Softmax",
                "Reshape"
            ]
        );
        assert_eq!(back.nodes[1].op, g.nodes[1].op);
        assert_eq!(back.nodes[2].op, g.nodes[2].op);
        assert_eq!(back.tensor(back.outputs[0]).shape, vec![1, 2]);
        assert_eq!(back.weights().count(), 0);
    }

    #[test]
    fn training_ops_are_refused() {
        let mut g = Graph::new("t");
        let x = g.add_input("x", DType::F32, vec![4, 3]).unwrap();
        let l = g.add_input("labels", DType::I64, vec![4]).unwrap();
        let y = g
            .add_node("xent", Op::SoftmaxCrossEntropy, &[x, l], &["loss"])
            .unwrap()[0];
        g.set_outputs(vec![y]);
        let e = export_model(&g).unwrap_err().to_string();
        assert!(
            e.contains("xent") && e.contains("SoftmaxCrossEntropy"),
            "{e}"
        );
    }
}
