//! lowmem's CPU reference executor: runs a [`Graph`] on f32 data.
//!
//! This is the oracle the later stages (autodiff, memory planning, rematerialisation) are
//! checked against, so each op follows its ONNX definition exactly as [`lowmem_ir::Op`]
//! normalises it. Compute is f32; tensors of other dtypes can flow through the data-movement
//! ops (Identity, Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Concat, Expand, Slice),
//! Dropout's mask, training steps and class labels (i64).
//! The kernels are exposed in [`kernels`] as plain functions writing into caller-provided
//! slices.

pub mod kernels;

use std::borrow::Cow;

use kernels::{Binary, Unary, UnaryGrad};
use lowmem_ir::shape::{axis as norm_axis, count};
use lowmem_ir::{DType, Graph, Op, TensorData};
use thiserror::Error;

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
}

/// A tensor's contents during a run: borrowed (graph inputs, weights) or owned (activations).
type Val<'a> = Cow<'a, TensorData>;

/// Runs `graph` on `inputs` (in `graph.inputs` order) and returns its outputs in
/// `graph.outputs` order. Each activation is freed after its last consumer; weights are read
/// from [`lowmem_ir::Tensor::value`] without copying.
pub fn run(graph: &Graph, inputs: &[TensorData]) -> Result<Vec<TensorData>, ExecError> {
    if inputs.len() != graph.inputs.len() {
        return Err(ExecError::InputCount {
            graph: graph.name.clone(),
            expected: graph.inputs.len(),
            got: inputs.len(),
            names: graph
                .inputs
                .iter()
                .map(|&t| format!("'{}'", graph.tensor(t).name))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let nt = graph.tensors.len();
    let mut vals: Vec<Option<Val>> = vec![None; nt];
    for (t, v) in graph.tensors.iter().zip(vals.iter_mut()) {
        if let Some(w) = &t.value {
            *v = Some(Cow::Borrowed(&**w));
        }
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
        vals[id.index()] = Some(Cow::Borrowed(data));
    }

    // Last reader of each tensor; graph outputs are kept to the end.
    const KEEP: usize = usize::MAX;
    let mut last = vec![0usize; nt];
    for (i, node) in graph.nodes.iter().enumerate() {
        for &t in node.inputs.iter().chain(&node.outputs) {
            if let Some(l) = last.get_mut(t.index()) {
                *l = i;
            }
        }
    }
    for &o in &graph.outputs {
        if let Some(l) = last.get_mut(o.index()) {
            *l = KEEP;
        }
    }

    for (i, node) in graph.nodes.iter().enumerate() {
        let op = node.op.name();
        let nerr = |msg: String| ExecError::Node {
            node: node.name.clone(),
            op: op.to_string(),
            msg,
        };
        let mut shapes: Vec<&[usize]> = Vec::with_capacity(node.inputs.len());
        for &t in &node.inputs {
            let tensor = graph
                .tensors
                .get(t.index())
                .ok_or_else(|| nerr(format!("input {t:?} does not exist")))?;
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
            shapes.push(&tensor.shape);
        }
        // Re-infer so that every kernel gets consistent shapes.
        let infos: Vec<(DType, &[usize])> = node
            .inputs
            .iter()
            .zip(&shapes)
            .map(|(&t, s)| (graph.tensor(t).dtype, *s))
            .collect();
        let inferred = node.op.infer(&infos, node.outputs.len()).map_err(nerr)?;
        for (&o, (d, s)) in node.outputs.iter().zip(&inferred) {
            let t = graph
                .tensors
                .get(o.index())
                .ok_or_else(|| nerr(format!("output {o:?} does not exist")))?;
            if t.dtype != *d || t.shape != *s {
                return Err(nerr(format!(
                    "output '{}' is declared {} {:?} but infers to {d} {s:?}",
                    t.name, t.dtype, t.shape
                )));
            }
        }
        let out_shapes: Vec<&[usize]> = inferred.iter().map(|(_, s)| &s[..]).collect();

        // An owned input 0 read for the last time (and only once here) can be reused.
        let t0 = node.inputs.first().copied();
        let reusable = t0.is_some_and(|t0| {
            last[t0.index()] == i
                && matches!(vals[t0.index()], Some(Cow::Owned(_)))
                && node.inputs.iter().filter(|&&t| t == t0).count() == 1
        });
        let taken = match (reusable && reuses_input(&node.op), t0) {
            (true, Some(t0)) => vals[t0.index()].take().map(Cow::into_owned),
            _ => None,
        };
        // A taken input 0 reads as an empty placeholder: kernels get it through `taken`.
        let ins: Vec<&TensorData> = node
            .inputs
            .iter()
            .enumerate()
            .map(|(k, &t)| match vals[t.index()].as_deref() {
                Some(v) => Ok(v),
                None if k == 0 && taken.is_some() => Ok(&TAKEN),
                None => Err(nerr(format!(
                    "input '{}' has no value (freed too early)",
                    graph.tensor(t).name
                ))),
            })
            .collect::<Result<_, _>>()?;
        let outs = exec_node(&node.op, &ins, &shapes, &out_shapes, taken).map_err(nerr)?;
        drop(ins);
        if outs.len() != node.outputs.len() {
            return Err(nerr(format!(
                "produced {} outputs, the node declares {}",
                outs.len(),
                node.outputs.len()
            )));
        }
        for (&o, v) in node.outputs.iter().zip(outs) {
            vals[o.index()] = Some(Cow::Owned(v));
        }
        for &t in node.inputs.iter().chain(&node.outputs) {
            if last[t.index()] == i {
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
        let v = if again {
            vals[o.index()].as_deref().cloned()
        } else {
            vals[o.index()].take().map(Cow::into_owned)
        };
        results.push(v.ok_or_else(|| ExecError::Tensor {
            name: t.name.clone(),
            msg: "graph output has no value".into(),
        })?);
    }
    Ok(results)
}

/// Ops that can take over their first input's buffer when it dies.
fn reuses_input(op: &Op) -> bool {
    op.is_unary_elementwise()
        || op.is_elementwise_grad()
        || matches!(
            op,
            Op::Reshape { .. }
                | Op::Flatten { .. }
                | Op::Squeeze { .. }
                | Op::Unsqueeze { .. }
                | Op::Dropout { .. }
                | Op::DropoutTrain { .. }
                | Op::DropoutGrad { .. }
                | Op::SgdUpdate { .. }
                | Op::AdamUpdate { .. }
        )
}

/// The i64 scalar input `i` (a training step).
fn i64_scalar(v: &TensorData, i: usize) -> Result<i64, String> {
    match v {
        TensorData::I64(x) if x.len() == 1 => Ok(x[0]),
        other => Err(format!(
            "input {i} must be an i64 scalar, got {} with {} elements",
            other.dtype(),
            other.len()
        )),
    }
}

fn i64s(v: &TensorData, i: usize) -> Result<&[i64], String> {
    match v {
        TensorData::I64(x) => Ok(x),
        other => Err(format!(
            "input {i} has dtype {}, expected i64",
            other.dtype()
        )),
    }
}

fn f32s(v: &TensorData, what: usize) -> Result<&[f32], String> {
    match v {
        TensorData::F32(x) => Ok(x),
        other => Err(format!(
            "input {what} has dtype {}; this executor computes in f32 only",
            other.dtype()
        )),
    }
}

/// Stands in for an input whose buffer was taken for in-place reuse.
static TAKEN: TensorData = TensorData::F32(Vec::new());

/// Runs one op on its input values. `taken`, if given, is input 0's buffer, which the op may
/// reuse (it is already out of the value table).
fn exec_node(
    op: &Op,
    ins: &[&TensorData],
    shapes: &[&[usize]],
    out_shapes: &[&[usize]],
    taken: Option<TensorData>,
) -> Result<Vec<TensorData>, String> {
    let input0 = |taken: Option<TensorData>| -> TensorData {
        match taken {
            Some(t) => t,
            None => ins[0].clone(),
        }
    };
    let x = |i: usize| f32s(ins[i], i);
    let out_len = out_shapes.first().map_or(0, |s| count(s));
    let alloc = || vec![0f32; out_len];
    let one = |v: Vec<f32>| Ok(vec![TensorData::F32(v)]);
    // Unary f32 ops: in place on a taken buffer.
    let unary = |u: Unary, taken: Option<TensorData>| -> Result<Vec<TensorData>, String> {
        match taken {
            Some(TensorData::F32(mut v)) => {
                kernels::unary_inplace(u, &mut v);
                one(v)
            }
            Some(other) => Err(format!(
                "input 0 has dtype {}; this executor computes in f32 only",
                other.dtype()
            )),
            None => {
                let mut o = alloc();
                kernels::unary(u, x(0)?, &mut o);
                one(o)
            }
        }
    };
    // Input 0 as an owned f32 buffer (the taken one, else a copy), for in-place kernels.
    let own0 = |taken: Option<TensorData>| -> Result<Vec<f32>, String> {
        match taken {
            Some(TensorData::F32(v)) => Ok(v),
            Some(other) => Err(format!(
                "input 0 has dtype {}; this executor computes in f32 only",
                other.dtype()
            )),
            None => Ok(x(0)?.to_vec()),
        }
    };
    let vec_of = |s: &[usize]| vec![0f32; count(s)];
    match op {
        Op::Identity => Ok(vec![input0(taken)]),
        Op::Neg => unary(Unary::Neg, taken),
        Op::Scale { alpha } => unary(Unary::Scale(*alpha), taken),
        Op::SumTo { .. } => {
            let mut o = alloc();
            kernels::sum_to(x(0)?, shapes[0], &mut o, out_shapes[0]);
            one(o)
        }
        Op::Expand { .. } => {
            macro_rules! go {
                ($($var:ident),*) => {
                    match ins[0] {
                        $(TensorData::$var(v) => {
                            let mut o = vec![Default::default(); out_len];
                            kernels::expand(v, shapes[0], &mut o, out_shapes[0]);
                            TensorData::$var(o)
                        })*
                    }
                };
            }
            Ok(vec![go!(F32, F16, BF16, F64, I64, I32, I8, U8, Bool)])
        }
        Op::Slice { axis, start, end } => {
            macro_rules! go {
                ($($var:ident),*) => {
                    match ins[0] {
                        $(TensorData::$var(v) => {
                            let mut o = vec![Default::default(); out_len];
                            kernels::slice(v, shapes[0], *axis, *start, *end, &mut o);
                            TensorData::$var(o)
                        })*
                    }
                };
            }
            Ok(vec![go!(F32, F16, BF16, F64, I64, I32, I8, U8, Bool)])
        }
        Op::BatchNormTrain(a) => {
            let c = shapes[0][1];
            let mut y = alloc();
            let mut st: Vec<Vec<f32>> = (0..4).map(|_| vec![0f32; c]).collect();
            let [m, inv, rm, rv] = &mut st[..] else {
                unreachable!()
            };
            kernels::batch_norm_train(
                x(0)?,
                shapes[0],
                x(1)?,
                x(2)?,
                x(3)?,
                x(4)?,
                a.epsilon,
                a.momentum,
                &mut y,
                m,
                inv,
                rm,
                rv,
            );
            Ok(std::iter::once(y).chain(st).map(TensorData::F32).collect())
        }
        Op::DropoutTrain { ratio, seed } | Op::DropoutGrad { ratio, seed } => {
            let step = i64_scalar(ins[1], 1)? as u64;
            let mut v = own0(taken)?;
            kernels::dropout_inplace(&mut v, *ratio, *seed, step);
            one(v)
        }
        Op::ConvBackwardData { conv, input_shape } => {
            let win = conv.window(input_shape, shapes[1])?;
            check_spatial(win.kernel.len())?;
            let mut ws = vec![
                0f32;
                kernels::conv_backward_data_workspace_len(
                    input_shape,
                    shapes[1],
                    &win,
                    conv.group
                )
            ];
            let mut o = alloc();
            kernels::conv_backward_data(
                x(0)?,
                x(1)?,
                shapes[1],
                input_shape,
                &win,
                conv.group,
                &mut o,
                &mut ws,
            );
            one(o)
        }
        Op::ConvBackwardFilter { conv, weight_shape } => {
            let win = conv.window(shapes[1], weight_shape)?;
            check_spatial(win.kernel.len())?;
            let mut ws = vec![
                0f32;
                kernels::conv_backward_filter_workspace_len(
                    shapes[1],
                    weight_shape,
                    &win,
                    conv.group
                )
            ];
            let mut o = alloc();
            kernels::conv_backward_filter(
                x(0)?,
                x(1)?,
                shapes[1],
                weight_shape,
                &win,
                conv.group,
                &mut o,
                &mut ws,
            );
            one(o)
        }
        Op::MaxPoolGrad(a) => {
            let win = a.window(shapes[1])?;
            check_spatial(win.kernel.len())?;
            let mut o = alloc();
            kernels::max_pool_grad(x(0)?, x(1)?, shapes[1], &win, &mut o);
            one(o)
        }
        Op::AveragePoolGrad { pool, input_shape } => {
            let win = pool.window(input_shape)?;
            check_spatial(win.kernel.len())?;
            let mut o = alloc();
            kernels::avg_pool_grad(x(0)?, input_shape, &win, pool.count_include_pad, &mut o);
            one(o)
        }
        Op::GlobalAveragePoolGrad { input_shape } => {
            let mut o = alloc();
            kernels::global_avg_pool_grad(x(0)?, input_shape, &mut o);
            one(o)
        }
        Op::BatchNormGrad { epsilon, training } => {
            let c = shapes[1][1];
            let (mut dx, mut ds, mut db) = (alloc(), vec![0f32; c], vec![0f32; c]);
            kernels::batch_norm_grad(
                x(0)?,
                x(1)?,
                shapes[1],
                x(2)?,
                x(3)?,
                x(4)?,
                *epsilon,
                *training,
                &mut dx,
                &mut ds,
                &mut db,
            );
            Ok(vec![
                TensorData::F32(dx),
                TensorData::F32(ds),
                TensorData::F32(db),
            ])
        }
        Op::LayerNormGrad { axis, epsilon } => {
            let ax = norm_axis(*axis, shapes[1].len()).ok_or("axis out of range")?;
            let mut ws = vec![0f32; kernels::layer_norm_grad_workspace_len(shapes[1], ax)];
            let (mut dx, mut ds, mut db) = (alloc(), vec_of(shapes[2]), vec_of(shapes[2]));
            kernels::layer_norm_grad(
                x(0)?,
                x(1)?,
                shapes[1],
                ax,
                x(2)?,
                shapes[2],
                *epsilon,
                &mut dx,
                &mut ds,
                &mut db,
                &mut ws,
            );
            Ok(vec![
                TensorData::F32(dx),
                TensorData::F32(ds),
                TensorData::F32(db),
            ])
        }
        Op::LrnGrad(a) => {
            if a.size == 0 {
                return Err("LRN size must be positive".into());
            }
            let mut o = alloc();
            kernels::lrn_grad(
                x(0)?,
                x(1)?,
                x(2)?,
                shapes[1],
                a.size,
                a.alpha,
                a.beta,
                a.bias,
                &mut o,
            );
            one(o)
        }
        Op::SoftmaxGrad(a) | Op::LogSoftmaxGrad(a) => {
            let ax = norm_axis(a.axis, shapes[1].len()).ok_or("axis out of range")?;
            let mut o = alloc();
            kernels::softmax_grad(
                x(0)?,
                x(1)?,
                shapes[1],
                ax,
                a.legacy,
                matches!(op, Op::LogSoftmaxGrad(_)),
                &mut o,
            );
            one(o)
        }
        Op::ReluGrad
        | Op::LeakyReluGrad { .. }
        | Op::SigmoidGrad
        | Op::TanhGrad
        | Op::SqrtGrad
        | Op::ErfGrad
        | Op::GeluGrad { .. }
        | Op::ClipGrad(_) => {
            let g = match op {
                Op::ReluGrad => UnaryGrad::Relu,
                Op::LeakyReluGrad { alpha } => UnaryGrad::LeakyRelu(*alpha),
                Op::SigmoidGrad => UnaryGrad::Sigmoid,
                Op::TanhGrad => UnaryGrad::Tanh,
                Op::SqrtGrad => UnaryGrad::Sqrt,
                Op::ErfGrad => UnaryGrad::Erf,
                Op::GeluGrad { approximate } if *approximate == Default::default() => {
                    UnaryGrad::Gelu
                }
                Op::GeluGrad { .. } => UnaryGrad::GeluTanh,
                Op::ClipGrad(c) => UnaryGrad::Clip {
                    min: c.min.unwrap_or(f32::MIN),
                    max: c.max.unwrap_or(f32::MAX),
                },
                _ => unreachable!(),
            };
            let mut dy = own0(taken)?;
            kernels::unary_grad_inplace(g, &mut dy, x(1)?);
            one(dy)
        }
        Op::PowGrad => {
            let (mut da, mut db) = (alloc(), alloc());
            kernels::pow_grad(
                x(0)?,
                x(1)?,
                shapes[1],
                x(2)?,
                shapes[2],
                &mut da,
                &mut db,
                out_shapes[0],
            );
            Ok(vec![TensorData::F32(da), TensorData::F32(db)])
        }
        Op::SoftmaxCrossEntropy => {
            let (n, c) = (shapes[0][0], shapes[0][1]);
            let mut o = alloc();
            kernels::softmax_cross_entropy(x(0)?, n, c, i64s(ins[1], 1)?, &mut o)?;
            one(o)
        }
        Op::SoftmaxCrossEntropyGrad => {
            let (n, c) = (shapes[1][0], shapes[1][1]);
            let mut o = alloc();
            kernels::softmax_cross_entropy_grad(x(0)?[0], x(1)?, n, c, i64s(ins[2], 2)?, &mut o)?;
            one(o)
        }
        Op::MseLoss => {
            let mut o = alloc();
            kernels::mse_loss(x(0)?, x(1)?, &mut o);
            one(o)
        }
        Op::MseLossGrad => {
            let mut o = alloc();
            kernels::mse_loss_grad(x(0)?[0], x(1)?, x(2)?, &mut o);
            one(o)
        }
        Op::SgdUpdate {
            lr,
            momentum,
            weight_decay,
        } => {
            let mut w = own0(taken)?;
            let mut v = if *momentum != 0.0 {
                Some(x(2)?.to_vec())
            } else {
                None
            };
            kernels::sgd_update(
                &mut w,
                x(1)?,
                v.as_deref_mut(),
                *lr,
                *momentum,
                *weight_decay,
            );
            Ok(std::iter::once(w).chain(v).map(TensorData::F32).collect())
        }
        Op::AdamUpdate {
            lr,
            beta1,
            beta2,
            epsilon,
            weight_decay,
            decoupled,
        } => {
            let step = i64_scalar(ins[4], 4)?;
            if step < 1 {
                return Err(format!("step {step} is not a 1-based Adam step"));
            }
            let mut w = own0(taken)?;
            let (mut m, mut v) = (x(2)?.to_vec(), x(3)?.to_vec());
            let p = kernels::AdamParams {
                lr: *lr,
                beta1: *beta1,
                beta2: *beta2,
                epsilon: *epsilon,
                weight_decay: *weight_decay,
                decoupled: *decoupled,
            };
            kernels::adam_update(&mut w, x(1)?, &mut m, &mut v, step, &p);
            Ok(vec![
                TensorData::F32(w),
                TensorData::F32(m),
                TensorData::F32(v),
            ])
        }
        Op::Reshape { .. } | Op::Flatten { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } => {
            Ok(vec![input0(taken)])
        }
        Op::Dropout { .. } => {
            let y = input0(taken);
            let mut out = vec![y];
            if out_shapes.len() == 2 {
                out.push(TensorData::Bool(vec![true; count(out_shapes[1])]));
            }
            Ok(out)
        }
        Op::Relu => unary(Unary::Relu, taken),
        Op::LeakyRelu { alpha } => unary(Unary::LeakyRelu(*alpha), taken),
        Op::Sigmoid => unary(Unary::Sigmoid, taken),
        Op::Tanh => unary(Unary::Tanh, taken),
        Op::Erf => unary(Unary::Erf, taken),
        Op::Gelu { approximate } => unary(
            // GeluApprox is None (the default) or Tanh.
            if *approximate == Default::default() {
                Unary::Gelu
            } else {
                Unary::GeluTanh
            },
            taken,
        ),
        Op::Sqrt => unary(Unary::Sqrt, taken),
        Op::Clip(c) => unary(
            Unary::Clip {
                min: c.min.unwrap_or(f32::MIN),
                max: c.max.unwrap_or(f32::MAX),
            },
            taken,
        ),
        Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Pow => {
            let b = match op {
                Op::Add => Binary::Add,
                Op::Sub => Binary::Sub,
                Op::Mul => Binary::Mul,
                Op::Div => Binary::Div,
                _ => Binary::Pow,
            };
            let mut o = alloc();
            kernels::binary(b, x(0)?, shapes[0], x(1)?, shapes[1], &mut o, out_shapes[0]);
            one(o)
        }
        Op::Sum => {
            let xs = (0..ins.len())
                .map(|i| Ok((x(i)?, shapes[i])))
                .collect::<Result<Vec<_>, String>>()?;
            let mut o = alloc();
            kernels::sum(&xs, &mut o, out_shapes[0]);
            one(o)
        }
        Op::Conv(a) => {
            let win = a.window(shapes[0], shapes[1])?;
            check_spatial(win.kernel.len())?;
            let bias = if ins.len() == 3 { Some(x(2)?) } else { None };
            let mut ws =
                vec![0f32; kernels::conv_workspace_len(shapes[0], shapes[1], &win, a.group)];
            let mut o = alloc();
            kernels::conv(
                x(0)?,
                shapes[0],
                x(1)?,
                shapes[1],
                bias,
                &win,
                a.group,
                &mut o,
                &mut ws,
            );
            one(o)
        }
        Op::BatchNormalization(a) => {
            let mut o = alloc();
            kernels::batch_norm(
                x(0)?,
                shapes[0],
                x(1)?,
                x(2)?,
                x(3)?,
                x(4)?,
                a.epsilon,
                &mut o,
            );
            one(o)
        }
        Op::MatMul => {
            let mut o = alloc();
            kernels::matmul(x(0)?, shapes[0], x(1)?, shapes[1], &mut o);
            one(o)
        }
        Op::Gemm(a) => {
            let c = if ins.len() == 3 {
                Some((x(2)?, shapes[2]))
            } else {
                None
            };
            let mut o = alloc();
            kernels::gemm(
                x(0)?,
                shapes[0],
                x(1)?,
                shapes[1],
                c,
                a.alpha,
                a.beta,
                a.trans_a,
                a.trans_b,
                &mut o,
            );
            one(o)
        }
        Op::MaxPool(a) | Op::AveragePool(a) => {
            let win = a.window(shapes[0])?;
            check_spatial(win.kernel.len())?;
            let mut o = alloc();
            if matches!(op, Op::MaxPool(_)) {
                kernels::max_pool(x(0)?, shapes[0], &win, &mut o);
            } else {
                kernels::avg_pool(x(0)?, shapes[0], &win, a.count_include_pad, &mut o);
            }
            one(o)
        }
        Op::GlobalAveragePool => {
            let mut o = alloc();
            kernels::global_avg_pool(x(0)?, shapes[0], &mut o);
            one(o)
        }
        Op::Lrn(a) => {
            let mut o = alloc();
            kernels::lrn(x(0)?, shapes[0], a.size, a.alpha, a.beta, a.bias, &mut o);
            one(o)
        }
        Op::Softmax(a) | Op::LogSoftmax(a) => {
            let ax = norm_axis(a.axis, shapes[0].len()).ok_or("axis out of range")?;
            let mut o = alloc();
            kernels::softmax(
                x(0)?,
                shapes[0],
                ax,
                a.legacy,
                matches!(op, Op::LogSoftmax(_)),
                &mut o,
            );
            one(o)
        }
        Op::LayerNormalization { axis, epsilon } => {
            let ax = norm_axis(*axis, shapes[0].len()).ok_or("axis out of range")?;
            let bias = if ins.len() == 3 {
                Some((x(2)?, shapes[2]))
            } else {
                None
            };
            let mut o = alloc();
            kernels::layer_norm(
                x(0)?,
                shapes[0],
                ax,
                x(1)?,
                shapes[1],
                bias,
                *epsilon,
                &mut o,
            );
            one(o)
        }
        Op::ReduceMean(a) | Op::ReduceSum(a) => {
            let r = shapes[0].len();
            let axes = match &a.axes {
                None => (0..r).collect(),
                Some(ax) => norm_axes(ax, r)?,
            };
            let mut o = alloc();
            kernels::reduce(
                x(0)?,
                shapes[0],
                &axes,
                matches!(op, Op::ReduceMean(_)),
                &mut o,
            );
            one(o)
        }
        Op::Transpose { perm } => {
            let r = shapes[0].len();
            let p: Vec<usize> = perm.clone().unwrap_or_else(|| (0..r).rev().collect());
            macro_rules! go {
                ($($var:ident),*) => {
                    match ins[0] {
                        $(TensorData::$var(v) => {
                            let mut o = v.clone();
                            kernels::transpose(v, shapes[0], &p, &mut o);
                            TensorData::$var(o)
                        })*
                    }
                };
            }
            Ok(vec![go!(F32, F16, BF16, F64, I64, I32, I8, U8, Bool)])
        }
        Op::Concat { axis } => {
            let ax = norm_axis(*axis, shapes[0].len()).ok_or("axis out of range")?;
            concat_any(ins, shapes, ax).map(|v| vec![v])
        }
    }
    .and_then(|outs: Vec<TensorData>| {
        for (o, s) in outs.iter().zip(out_shapes) {
            if o.len() != count(s) {
                return Err(format!(
                    "kernel produced {} elements for shape {s:?}",
                    o.len()
                ));
            }
        }
        Ok(outs)
    })
}

fn norm_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>, String> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let n = norm_axis(a, rank)
            .ok_or_else(|| format!("axis {a} is out of range for rank {rank}"))?;
        if out.contains(&n) {
            return Err(format!("axis {a} is repeated"));
        }
        out.push(n);
    }
    Ok(out)
}

fn check_spatial(r: usize) -> Result<(), String> {
    if (1..=kernels::MAX_SPATIAL_RANK).contains(&r) {
        Ok(())
    } else {
        Err(format!(
            "{r}-D windows are not supported (1-D to {}-D are)",
            kernels::MAX_SPATIAL_RANK
        ))
    }
}

fn concat_any(ins: &[&TensorData], shapes: &[&[usize]], axis: usize) -> Result<TensorData, String> {
    macro_rules! go {
        ($($var:ident),*) => {
            match ins[0] {
                $(TensorData::$var(_) => {
                    let parts = ins
                        .iter()
                        .zip(shapes)
                        .enumerate()
                        .map(|(i, (v, s))| match v {
                            TensorData::$var(x) => Ok((&x[..], *s)),
                            other => Err(format!("input {i} has dtype {} but input 0 has {}", other.dtype(), ins[0].dtype())),
                        })
                        .collect::<Result<Vec<_>, String>>()?;
                    let total = parts.iter().map(|(x, _)| x.len()).sum();
                    let mut out = vec![Default::default(); total];
                    kernels::concat(&parts, axis, &mut out);
                    Ok(TensorData::$var(out))
                })*
            }
        };
    }
    go!(F32, F16, BF16, F64, I64, I32, I8, U8, Bool)
}
