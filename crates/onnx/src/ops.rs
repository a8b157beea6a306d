//! ONNX op -> lowmem [`Op`], resolved per opset.
//!
//! ONNX moved many attributes to inputs over time (Squeeze's axes, Clip's bounds, Dropout's
//! ratio, ...) and changed some defaults (Softmax's axis). Here both forms become the same
//! attribute, so the IR op has one meaning whatever opset the model imports.

use lowmem_ir::{
    AutoPad, BatchNormAttrs, ClipAttrs, ConvAttrs, GemmAttrs, LrnAttrs, Op, PoolAttrs, ReduceAttrs,
    SoftmaxAttrs,
};

use crate::ImportError;
use crate::import::Env;
use crate::node::NodeCtx;
use crate::tensor::Const;

/// A mapped node: the IR op and the ONNX names of its data inputs, in IR order.
pub(crate) struct Mapped<'a> {
    pub op: Op,
    pub inputs: Vec<&'a str>,
}

/// The opset that introduced an op, for ops newer than the oldest opset accepted.
fn since(op_type: &str) -> i64 {
    match op_type {
        "Gelu" => 20,
        "LayerNormalization" => 17,
        "Erf" | "ConstantOfShape" => 9,
        _ => 1,
    }
}

pub(crate) fn unsupported(ctx: &NodeCtx, domain: &str, opset: String, note: &str) -> ImportError {
    ImportError::UnsupportedOp {
        op_type: ctx.op_type().to_string(),
        node: ctx.label.clone(),
        domain: if domain.is_empty() { "ai.onnx" } else { domain }.to_string(),
        opset,
        note: if note.is_empty() {
            String::new()
        } else {
            format!(": {note}")
        },
    }
}

/// Checks that a node uses only ops defined at the model's opset.
pub(crate) fn check_since(ctx: &NodeCtx) -> Result<(), ImportError> {
    let s = since(ctx.op_type());
    if ctx.opset < s {
        return Err(unsupported(
            ctx,
            "",
            ctx.opset.to_string(),
            &format!("{} is defined from opset {s}", ctx.op_type()),
        ));
    }
    Ok(())
}

fn auto_pad(ctx: &NodeCtx) -> Result<AutoPad, ImportError> {
    Ok(match ctx.string("auto_pad")?.unwrap_or("NOTSET") {
        "NOTSET" | "" => AutoPad::NotSet,
        "SAME_UPPER" => AutoPad::SameUpper,
        "SAME_LOWER" => AutoPad::SameLower,
        "VALID" => AutoPad::Valid,
        other => return Err(ctx.bad_attr("auto_pad", format!("unknown value '{other}'"))),
    })
}

fn pool_attrs(ctx: &NodeCtx) -> Result<PoolAttrs, ImportError> {
    let kernel_shape = ctx.usizes("kernel_shape")?;
    if kernel_shape.is_empty() {
        return Err(ctx.bad_attr("kernel_shape", "is required"));
    }
    Ok(PoolAttrs {
        kernel_shape,
        strides: ctx.usizes("strides")?,
        dilations: ctx.usizes("dilations")?,
        pads: ctx.usizes("pads")?,
        auto_pad: auto_pad(ctx)?,
        ceil_mode: ctx.flag("ceil_mode", false)?,
        count_include_pad: ctx.flag("count_include_pad", false)?,
    })
}

/// A scalar (or one-element) constant input as f32.
fn scalar(ctx: &NodeCtx, c: &Const, what: &str) -> Result<f32, ImportError> {
    match c.data.to_f64()[..] {
        [x] => Ok(x as f32),
        _ => Err(ctx.error(format!("{what} must be a scalar, got shape {:?}", c.shape))),
    }
}

fn int_list(ctx: &NodeCtx, c: &Const, what: &str) -> Result<Vec<i64>, ImportError> {
    c.ints()
        .ok_or_else(|| ctx.error(format!("{what} must be an integer tensor, got {}", c.dtype)))
}

/// Every input, all required (no empty names).
fn all_inputs<'a>(ctx: &NodeCtx<'a>) -> Result<Vec<&'a str>, ImportError> {
    (0..ctx.proto.input.len())
        .map(|i| ctx.required(i))
        .collect()
}

/// Inputs `0..n`, with optional ones from `first_optional` on dropped when absent. An absent
/// optional input followed by a present one cannot be expressed in the IR.
fn inputs_upto<'a>(
    ctx: &NodeCtx<'a>,
    n: usize,
    first_optional: usize,
) -> Result<Vec<&'a str>, ImportError> {
    if ctx.proto.input.len() > n {
        return Err(ctx.error(format!(
            "has {} inputs, at most {n} expected",
            ctx.proto.input.len()
        )));
    }
    let mut v = Vec::new();
    for i in 0..n {
        match ctx.input(i) {
            Some(x) => {
                if v.len() != i {
                    return Err(ctx.error(format!(
                        "input {i} is given but an earlier optional input is absent"
                    )));
                }
                v.push(x);
            }
            None if i < first_optional => {
                return Err(ctx.error(format!("required input {i} is missing")));
            }
            None => {}
        }
    }
    Ok(v)
}

/// The opset-specific legacy broadcast of Add/Sub/Mul/Div/Pow (opset < 7).
fn no_legacy_broadcast(ctx: &NodeCtx) -> Result<(), ImportError> {
    if ctx.opset < 7 {
        if ctx.int_or("broadcast", 0)? != 0 {
            return Err(ctx.bad_attr(
                "broadcast",
                "legacy (opset < 7) broadcasting is not supported",
            ));
        }
        if ctx.has_attr("axis") {
            return Err(ctx.bad_attr("axis", "legacy (opset < 7) broadcasting is not supported"));
        }
    }
    Ok(())
}

/// Maps a node to an IR op. `n_out` is the number of outputs the graph uses (trailing unused
/// optional outputs already dropped).
pub(crate) fn map<'a>(
    ctx: &NodeCtx<'a>,
    env: &Env,
    n_out: usize,
) -> Result<Mapped<'a>, ImportError> {
    let op_type = ctx.op_type();
    let one_output = |what: &str| {
        if n_out > 1 {
            Err(ctx.error(format!("only output 0 is supported; {what} is used")))
        } else {
            Ok(())
        }
    };
    let unary = |op: Op| -> Result<Mapped<'a>, ImportError> {
        Ok(Mapped {
            op,
            inputs: inputs_upto(ctx, 1, 1)?,
        })
    };
    let op = match op_type {
        "Relu" => return unary(Op::Relu),
        "Sigmoid" => return unary(Op::Sigmoid),
        "Tanh" => return unary(Op::Tanh),
        "Erf" => return unary(Op::Erf),
        "Sqrt" => return unary(Op::Sqrt),
        "Identity" => return unary(Op::Identity),
        "GlobalAveragePool" => return unary(Op::GlobalAveragePool),
        "LeakyRelu" => {
            return unary(Op::LeakyRelu {
                alpha: ctx.float_or("alpha", 0.01)?,
            });
        }
        "Gelu" => {
            let mode = ctx.string("approximate")?.unwrap_or("none");
            if !matches!(mode, "none" | "tanh") {
                return Err(ctx.bad_attr("approximate", format!("unknown value '{mode}'")));
            }
            // lowmem-ir does not re-export `GeluApprox`; its serde names are the ONNX
            // spellings, so deserialise the value by inference instead of naming the type.
            let de = serde::de::value::StrDeserializer::<serde::de::value::Error>::new(mode);
            let approximate = serde::Deserialize::deserialize(de)
                .map_err(|e| ctx.bad_attr("approximate", e.to_string()))?;
            return unary(Op::Gelu { approximate });
        }
        "Add" | "Sub" | "Mul" | "Div" | "Pow" => {
            no_legacy_broadcast(ctx)?;
            let op = match op_type {
                "Add" => Op::Add,
                "Sub" => Op::Sub,
                "Mul" => Op::Mul,
                "Div" => Op::Div,
                _ => Op::Pow,
            };
            return Ok(Mapped {
                op,
                inputs: inputs_upto(ctx, 2, 2)?,
            });
        }
        "Sum" => {
            return Ok(Mapped {
                op: Op::Sum,
                inputs: all_inputs(ctx)?,
            });
        }
        "MatMul" => {
            return Ok(Mapped {
                op: Op::MatMul,
                inputs: inputs_upto(ctx, 2, 2)?,
            });
        }
        "Conv" => {
            let group = ctx.int_or("group", 1)?;
            let group = usize::try_from(group)
                .ok()
                .filter(|&g| g > 0)
                .ok_or_else(|| ctx.bad_attr("group", format!("must be positive, got {group}")))?;
            let op = Op::Conv(ConvAttrs {
                kernel_shape: ctx.usizes("kernel_shape")?,
                strides: ctx.usizes("strides")?,
                dilations: ctx.usizes("dilations")?,
                pads: ctx.usizes("pads")?,
                auto_pad: auto_pad(ctx)?,
                group,
                activation: None,
            });
            return Ok(Mapped {
                op,
                inputs: inputs_upto(ctx, 3, 2)?,
            });
        }
        "BatchNormalization" => {
            // Older opsets could describe training; only inference maps to the IR op.
            if ctx.has_attr("spatial") && !ctx.flag("spatial", true)? {
                return Err(ctx.bad_attr(
                    "spatial",
                    "spatial=0 (per-activation statistics) is not supported",
                ));
            }
            if ctx.has_attr("is_test") && !ctx.flag("is_test", true)? {
                return Err(ctx.bad_attr("is_test", "training mode (is_test=0) is not supported"));
            }
            if ctx.flag("training_mode", false)? {
                return Err(ctx.bad_attr("training_mode", "training mode is not supported"));
            }
            one_output("a running-statistics output")?;
            let op = Op::BatchNormalization(BatchNormAttrs {
                epsilon: ctx.float_or("epsilon", 1e-5)?,
                momentum: ctx.float_or("momentum", 0.9)?,
            });
            return Ok(Mapped {
                op,
                inputs: inputs_upto(ctx, 5, 5)?,
            });
        }
        "Gemm" => {
            let op = Op::Gemm(GemmAttrs {
                alpha: ctx.float_or("alpha", 1.0)?,
                beta: ctx.float_or("beta", 1.0)?,
                trans_a: ctx.flag("transA", false)?,
                trans_b: ctx.flag("transB", false)?,
                activation: None,
            });
            return Ok(Mapped {
                op,
                inputs: inputs_upto(ctx, 3, 2)?,
            });
        }
        "MaxPool" => {
            if ctx.int_or("storage_order", 0)? != 0 {
                return Err(ctx.bad_attr("storage_order", "only row-major (0) is supported"));
            }
            one_output("the Indices output")?;
            let mut a = pool_attrs(ctx)?;
            a.count_include_pad = false;
            Op::MaxPool(a)
        }
        "AveragePool" => Op::AveragePool(pool_attrs(ctx)?),
        "LRN" => {
            let size = ctx
                .int("size")?
                .ok_or_else(|| ctx.bad_attr("size", "is required"))?;
            let size = usize::try_from(size)
                .ok()
                .filter(|&s| s > 0)
                .ok_or_else(|| ctx.bad_attr("size", format!("must be positive, got {size}")))?;
            Op::Lrn(LrnAttrs {
                size,
                alpha: ctx.float_or("alpha", 1e-4)?,
                beta: ctx.float_or("beta", 0.75)?,
                bias: ctx.float_or("bias", 1.0)?,
            })
        }
        "Concat" => {
            let axis = ctx
                .int("axis")?
                .ok_or_else(|| ctx.bad_attr("axis", "is required"))?;
            return Ok(Mapped {
                op: Op::Concat { axis },
                inputs: all_inputs(ctx)?,
            });
        }
        "Reshape" => {
            let shape = env
                .constant(ctx, 1, "shape")?
                .ok_or_else(|| ctx.error("required input 1 (shape) is missing"))?;
            let shape = int_list(ctx, shape, "shape")?;
            let allowzero = ctx.opset >= 14 && ctx.flag("allowzero", false)?;
            return Ok(Mapped {
                op: Op::Reshape { shape, allowzero },
                inputs: vec![ctx.required(0)?],
            });
        }
        "Flatten" => Op::Flatten {
            axis: ctx.int_or("axis", 1)?,
        },
        "Transpose" => {
            let perm = match ctx.ints("perm")? {
                None => None,
                Some(_) => Some(ctx.usizes("perm")?),
            };
            Op::Transpose { perm }
        }
        "Squeeze" | "Unsqueeze" => {
            let axes = if ctx.opset < 13 {
                ctx.ints("axes")?.map(<[i64]>::to_vec)
            } else {
                env.constant(ctx, 1, "axes")?
                    .map(|c| int_list(ctx, c, "axes"))
                    .transpose()?
            };
            let op = if op_type == "Squeeze" {
                Op::Squeeze { axes }
            } else {
                Op::Unsqueeze {
                    axes: axes.ok_or_else(|| ctx.error("axes are required"))?,
                }
            };
            return Ok(Mapped {
                op,
                inputs: vec![ctx.required(0)?],
            });
        }
        "Softmax" | "LogSoftmax" => {
            // Before opset 13 the input was flattened to 2-D at `axis` (default 1).
            let legacy = ctx.opset < 13;
            let a = SoftmaxAttrs {
                axis: ctx.int_or("axis", if legacy { 1 } else { -1 })?,
                legacy,
            };
            if op_type == "Softmax" {
                Op::Softmax(a)
            } else {
                Op::LogSoftmax(a)
            }
        }
        "LayerNormalization" => {
            one_output("the Mean or InvStdDev output")?;
            return Ok(Mapped {
                op: Op::LayerNormalization {
                    axis: ctx.int_or("axis", -1)?,
                    epsilon: ctx.float_or("epsilon", 1e-5)?,
                },
                inputs: inputs_upto(ctx, 3, 2)?,
            });
        }
        "ReduceMean" | "ReduceSum" => {
            let axes_input_from = if op_type == "ReduceSum" { 13 } else { 18 };
            let keepdims = ctx.flag("keepdims", true)?;
            let axes = if ctx.opset < axes_input_from {
                ctx.ints("axes")?.map(<[i64]>::to_vec)
            } else {
                let axes = env
                    .constant(ctx, 1, "axes")?
                    .map(|c| int_list(ctx, c, "axes"))
                    .transpose()?;
                if axes.as_ref().is_none_or(Vec::is_empty)
                    && ctx.flag("noop_with_empty_axes", false)?
                {
                    return unary(Op::Identity);
                }
                axes
            };
            // An empty axes list reduces every axis, as an absent one does.
            let a = ReduceAttrs {
                axes: axes.filter(|a| !a.is_empty()),
                keepdims,
            };
            let op = if op_type == "ReduceSum" {
                Op::ReduceSum(a)
            } else {
                Op::ReduceMean(a)
            };
            return Ok(Mapped {
                op,
                inputs: vec![ctx.required(0)?],
            });
        }
        "Dropout" => {
            let ratio = if ctx.opset < 12 {
                ctx.float_or("ratio", 0.5)?
            } else {
                let training = env
                    .constant(ctx, 2, "training_mode")?
                    .is_some_and(|t| t.data.to_f64().iter().any(|&x| x != 0.0));
                if training {
                    return Err(ctx.error("training_mode=true is not supported"));
                }
                match env.constant(ctx, 1, "ratio")? {
                    Some(c) => scalar(ctx, c, "ratio")?,
                    None => 0.5,
                }
            };
            return Ok(Mapped {
                op: Op::Dropout {
                    ratio,
                    seed: ctx.int_or("seed", 0)? as u64,
                },
                inputs: vec![ctx.required(0)?],
            });
        }
        "Clip" => {
            let (min, max) = if ctx.opset < 11 {
                (ctx.float("min")?, ctx.float("max")?)
            } else {
                let bound = |i, what| -> Result<Option<f32>, ImportError> {
                    env.constant(ctx, i, what)?
                        .map(|c| scalar(ctx, c, what))
                        .transpose()
                };
                (bound(1, "min")?, bound(2, "max")?)
            };
            return Ok(Mapped {
                op: Op::Clip(ClipAttrs { min, max }),
                inputs: vec![ctx.required(0)?],
            });
        }
        "Cast" => {
            // A Cast of a constant folds; one of a computed tensor maps to Identity when a
            // no-op, to Cast between f32, f16 and bf16.
            let x = ctx.required(0)?;
            let (from, _) = env.dtype_shape(ctx, x)?;
            let to_code = ctx.int_or("to", 0)? as i32;
            let to = crate::tensor::dtype_from_onnx(to_code);
            let float = |d: lowmem_ir::DType| {
                use lowmem_ir::DType::{BF16, F16, F32};
                matches!(d, F32 | F16 | BF16)
            };
            match to {
                Some(t) if t == from => Op::Identity,
                Some(t) if float(t) && float(from) => Op::Cast { to: t },
                _ => {
                    return Err(ctx.error(format!(
                        "Cast of computed tensor '{x}' from {from} to {} is not supported (only casts of constants fold, and casts between f32, f16 and bf16)",
                        crate::tensor::onnx_dtype_name(to_code)
                    )));
                }
            }
        }
        _ => return Err(unsupported(ctx, "", ctx.opset.to_string(), "")),
    };
    Ok(Mapped {
        op,
        inputs: inputs_upto(ctx, 1, 1)?,
    })
}
