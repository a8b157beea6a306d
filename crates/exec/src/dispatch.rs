//! The one implementation of each op's semantics, shared by [`crate::run`] and
//! [`crate::run_planned`]: it reads its inputs as byte slices, writes every output into a
//! caller-provided byte slice and takes its scratch from a caller-provided workspace. It
//! allocates no tensor.

use bytemuck::Pod;
use lowmem_ir::shape::{axis as norm_axis, count};
use lowmem_ir::{DType, Op, Window};

use crate::kernels::{self, Binary, Unary, UnaryGrad};

/// One op's operands.
pub(crate) struct OpCall<'a> {
    pub op: &'a Op,
    pub in_dtypes: &'a [DType],
    /// Input bytes. An input that an output overwrites in place (see `aliased`) is empty
    /// here: its values are in that output.
    pub ins: &'a [&'a [u8]],
    pub shapes: &'a [&'a [usize]],
    pub out_dtypes: &'a [DType],
    pub out_shapes: &'a [&'a [usize]],
    /// Per output `k`: whether it already holds input [`alias_input`]`(op, k)`, which the op
    /// then overwrites in place.
    pub aliased: &'a [bool],
    /// The op's resolved sliding window (convolutions, pooling), when resolved ahead.
    pub window: Option<&'a Window>,
    /// The workspace the kernel needs (f32 elements), when computed ahead.
    pub ws_len: Option<usize>,
}

/// The input that output `k` of `op` overwrites in place ([`Op::in_place_input`]).
pub(crate) fn alias_input(op: &Op, k: usize) -> Option<usize> {
    op.in_place_input(k)
}

/// [`Op::may_overwrite`].
pub(crate) fn may_alias(op: &Op, inp: (DType, &[usize]), out: (DType, &[usize])) -> bool {
    op.may_overwrite(inp, out)
}

/// Workspace (f32 elements) the kernel of `op` needs for input shapes `shapes`: what
/// [`Op::workspace_bytes`] plans (the one home of every kernel's scratch formula). Errors on
/// shapes the kernels cannot run: a bad convolution window or a rank above
/// [`kernels::MAX_RANK`].
pub(crate) fn workspace_len(op: &Op, shapes: &[&[usize]]) -> Result<usize, String> {
    if let Some(s) = shapes.iter().find(|s| s.len() > kernels::MAX_RANK) {
        return Err(format!(
            "rank {} ({s:?}) exceeds the executor's maximum rank {}",
            s.len(),
            kernels::MAX_RANK
        ));
    }
    match op {
        Op::Expand { shape } if shape.len() > kernels::MAX_RANK => {
            return Err(format!(
                "rank {} exceeds the executor's maximum rank {}",
                shape.len(),
                kernels::MAX_RANK
            ));
        }
        Op::Conv(a) => check_spatial(a.window(shapes[0], shapes[1])?.kernel.len())?,
        Op::ConvBackwardData { conv, input_shape } => {
            check_spatial(conv.window(input_shape, shapes[1])?.kernel.len())?
        }
        Op::ConvBackwardFilter { conv, weight_shape } => {
            check_spatial(conv.window(shapes[1], weight_shape)?.kernel.len())?
        }
        Op::LayerNormGrad { axis, .. } => {
            norm_axis(*axis, shapes[1].len()).ok_or("axis out of range")?;
        }
        _ => {}
    }
    Ok(op.workspace_bytes(shapes, &[]).div_ceil(4))
}

fn cast<T: Pod>(b: &[u8]) -> Result<&[T], String> {
    bytemuck::try_cast_slice(b).map_err(|e| format!("storage cannot hold its dtype: {e:?}"))
}

fn cast_mut<T: Pod>(b: &mut [u8]) -> Result<&mut [T], String> {
    bytemuck::try_cast_slice_mut(b).map_err(|e| format!("storage cannot hold its dtype: {e:?}"))
}

/// The sliding window a node's op resolves to, if it has one (resolved once ahead of
/// execution by the arena executor).
pub(crate) fn node_window(op: &Op, shapes: &[&[usize]]) -> Option<Window> {
    match op {
        Op::Conv(a) => a.window(shapes.first()?, shapes.get(1)?).ok(),
        Op::ConvBackwardData { conv, input_shape } => conv.window(input_shape, shapes.get(1)?).ok(),
        Op::ConvBackwardFilter { conv, weight_shape } => {
            conv.window(shapes.get(1)?, weight_shape).ok()
        }
        Op::MaxPoolGrad(a) => a.window(shapes.get(1)?).ok(),
        Op::AveragePoolGrad { pool, input_shape } => pool.window(input_shape).ok(),
        Op::MaxPool(a) | Op::AveragePool(a) => a.window(shapes.first()?).ok(),
        _ => None,
    }
}

impl<'a> OpCall<'a> {
    /// The resolved window: the one computed ahead, or `resolve()` now.
    fn window(
        &self,
        resolve: impl FnOnce() -> Result<Window, String>,
    ) -> Result<std::borrow::Cow<'a, Window>, String> {
        match self.window {
            Some(w) => Ok(std::borrow::Cow::Borrowed(w)),
            None => resolve().map(std::borrow::Cow::Owned),
        }
    }

    fn need_f32(&self, i: usize) -> Result<(), String> {
        match self.in_dtypes[i] {
            DType::F32 => Ok(()),
            d => Err(format!(
                "input {i} has dtype {d}; this executor computes in f32 only"
            )),
        }
    }

    /// Input `i`'s bytes, checked against its shape.
    fn raw(&self, i: usize) -> Result<&'a [u8], String> {
        let b = self.ins[i];
        let want = count(self.shapes[i]) * self.in_dtypes[i].size();
        if b.len() != want {
            return Err(format!(
                "input {i} holds {} bytes, its shape {:?} needs {want} (overwritten in place?)",
                b.len(),
                self.shapes[i]
            ));
        }
        Ok(b)
    }

    fn f32(&self, i: usize) -> Result<&'a [f32], String> {
        self.need_f32(i)?;
        cast(self.raw(i)?)
    }

    fn i64s(&self, i: usize) -> Result<&'a [i64], String> {
        match self.in_dtypes[i] {
            DType::I64 => cast(self.raw(i)?),
            d => Err(format!("input {i} has dtype {d}, expected i64")),
        }
    }

    /// The i64 scalar input `i` (a training step).
    fn i64_scalar(&self, i: usize) -> Result<i64, String> {
        match self.i64s(i) {
            Ok([x]) => Ok(*x),
            _ => Err(format!(
                "input {i} must be an i64 scalar, got {} with {} elements",
                self.in_dtypes[i],
                count(self.shapes[i])
            )),
        }
    }

    /// Makes output `k` hold input `j`'s bytes (a no-op when it already does, in place).
    fn init(&self, outs: &mut [&mut [u8]], k: usize, j: usize) -> Result<(), String> {
        if !self.aliased[k] {
            let src = self.raw(j)?;
            let dst = &mut *outs[k];
            if dst.len() != src.len() {
                return Err(format!(
                    "output {k} has {} bytes, input {j} {}",
                    dst.len(),
                    src.len()
                ));
            }
            dst.copy_from_slice(src);
        }
        Ok(())
    }

    /// Output `k` as f32, checked against its shape.
    fn f32_out<'o>(&self, k: usize, o: &'o mut [u8]) -> Result<&'o mut [f32], String> {
        let d = self.out_dtypes[k];
        if d != DType::F32 {
            return Err(format!(
                "output {k} has dtype {d}; this executor computes in f32 only"
            ));
        }
        let o: &mut [f32] = cast_mut(o)?;
        if o.len() != count(self.out_shapes[k]) {
            return Err(format!(
                "output {k} holds {} values, its shape {:?} needs {}",
                o.len(),
                self.out_shapes[k],
                count(self.out_shapes[k])
            ));
        }
        Ok(o)
    }

    /// The single f32 output.
    fn out1<'o>(&self, outs: &'o mut [&mut [u8]]) -> Result<&'o mut [f32], String> {
        match outs.first_mut() {
            Some(o) => self.f32_out(0, o),
            None => Err("the node has no output".into()),
        }
    }

    fn unary(&self, u: Unary, outs: &mut [&mut [u8]]) -> Result<(), String> {
        self.need_f32(0)?;
        if self.aliased[0] {
            kernels::unary_inplace(u, self.out1(outs)?);
        } else {
            let x = self.f32(0)?;
            kernels::unary(u, x, self.out1(outs)?);
        }
        Ok(())
    }
}

/// The elementwise kernel of a unary op (a standalone node or a fused epilogue's op).
fn unary_of(op: &Op) -> Option<Unary> {
    Some(match op {
        Op::Neg => Unary::Neg,
        Op::Scale { alpha } => Unary::Scale(*alpha),
        Op::Relu => Unary::Relu,
        Op::LeakyRelu { alpha } => Unary::LeakyRelu(*alpha),
        Op::Sigmoid => Unary::Sigmoid,
        Op::Tanh => Unary::Tanh,
        Op::Erf => Unary::Erf,
        // GeluApprox is None (the default) or Tanh.
        Op::Gelu { approximate } if *approximate == Default::default() => Unary::Gelu,
        Op::Gelu { .. } => Unary::GeluTanh,
        Op::Sqrt => Unary::Sqrt,
        Op::Clip(a) => Unary::Clip {
            min: a.min.unwrap_or(f32::MIN),
            max: a.max.unwrap_or(f32::MAX),
        },
        _ => return None,
    })
}

/// The kernel of a fused epilogue: its standalone op's.
fn epilogue(act: lowmem_ir::Activation) -> Result<Unary, String> {
    unary_of(&act.op()).ok_or_else(|| format!("no kernel for the {act:?} epilogue"))
}

fn bad_outputs(op: &Op, n: usize) -> String {
    format!("{} cannot produce {n} outputs", op.name())
}

/// Runs `c.op`, writing output `k` into `outs[k]`, with scratch `ws` (at least
/// [`workspace_len`] elements).
pub(crate) fn exec_op(c: &OpCall, outs: &mut [&mut [u8]], ws: &mut [f32]) -> Result<(), String> {
    let op = c.op;
    let shapes = c.shapes;
    let os = c.out_shapes;
    let x = |i: usize| c.f32(i);
    let need = match c.ws_len {
        Some(n) => n,
        None => workspace_len(op, shapes)?,
    };
    if ws.len() < need {
        return Err(format!(
            "workspace of {} bytes is too small: the kernel needs {} bytes",
            ws.len() * 4,
            need * 4
        ));
    }
    let ws = &mut ws[..need];
    match op {
        Op::Identity
        | Op::Reshape { .. }
        | Op::Flatten { .. }
        | Op::Squeeze { .. }
        | Op::Unsqueeze { .. } => c.init(outs, 0, 0)?,
        Op::Dropout { .. } => {
            // Inference: the identity, and an all-true mask.
            c.init(outs, 0, 0)?;
            if let Some(mask) = outs.get_mut(1) {
                if c.out_dtypes[1] != DType::Bool {
                    return Err(format!("mask has dtype {}, expected bool", c.out_dtypes[1]));
                }
                mask.fill(1);
            }
        }
        Op::Cast { .. } => {
            let float = |d: DType| match d {
                DType::F32 => Ok(kernels::Float::F32),
                DType::F16 => Ok(kernels::Float::F16),
                DType::BF16 => Ok(kernels::Float::BF16),
                d => Err(format!("Cast of {d}: only f32, f16 and bf16 convert")),
            };
            let (from, to) = (float(c.in_dtypes[0])?, float(c.out_dtypes[0])?);
            let src = c.raw(0)?;
            let dst = outs.first_mut().ok_or("the node has no output")?;
            if dst.len() / c.out_dtypes[0].size() != src.len() / c.in_dtypes[0].size() {
                return Err("Cast: input and output hold different element counts".into());
            }
            kernels::cast(src, from, dst, to);
        }
        Op::Neg
        | Op::Scale { .. }
        | Op::Relu
        | Op::LeakyRelu { .. }
        | Op::Sigmoid
        | Op::Tanh
        | Op::Erf
        | Op::Gelu { .. }
        | Op::Sqrt
        | Op::Clip(_) => c.unary(unary_of(op).ok_or("not a unary op")?, outs)?,
        Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Pow => {
            let b = match op {
                Op::Add => Binary::Add,
                Op::Sub => Binary::Sub,
                Op::Mul => Binary::Mul,
                Op::Div => Binary::Div,
                _ => Binary::Pow,
            };
            c.need_f32(0)?;
            let rhs = x(1)?;
            if c.aliased[0] {
                kernels::binary_inplace(b, c.out1(outs)?, os[0], rhs, shapes[1]);
            } else {
                let lhs = x(0)?;
                kernels::binary(b, lhs, shapes[0], rhs, shapes[1], c.out1(outs)?, os[0]);
            }
        }
        Op::Sum => {
            c.need_f32(0)?;
            let o = c.out1(outs)?;
            // Input 0 (broadcast to the output), then `+=` each other input, in order.
            if !c.aliased[0] {
                kernels::expand(x(0)?, shapes[0], o, os[0]);
            }
            for (i, &s) in shapes.iter().enumerate().take(c.ins.len()).skip(1) {
                kernels::binary_inplace(Binary::Add, o, os[0], x(i)?, s);
            }
        }
        Op::SumTo { .. } => kernels::sum_to(x(0)?, shapes[0], c.out1(outs)?, os[0], ws),
        Op::Expand { .. } | Op::Slice { .. } | Op::Transpose { .. } | Op::Concat { .. } => {
            let out = outs.first_mut().ok_or("the node has no output")?;
            match c.in_dtypes[0].size() {
                1 => movement::<u8>(c, out)?,
                2 => movement::<u16>(c, out)?,
                4 => movement::<u32>(c, out)?,
                _ => movement::<u64>(c, out)?,
            }
        }
        Op::BatchNormTrain(a) => {
            // The running statistics are updated in place (outputs 3 and 4 over inputs 3
            // and 4, or copies of them).
            c.init(outs, 3, 3)?;
            c.init(outs, 4, 4)?;
            let [y, m, inv, rm, rv] = outs else {
                return Err(bad_outputs(op, outs.len()));
            };
            kernels::batch_norm_train(
                x(0)?,
                shapes[0],
                x(1)?,
                x(2)?,
                a.epsilon,
                a.momentum,
                c.f32_out(0, y)?,
                c.f32_out(1, m)?,
                c.f32_out(2, inv)?,
                c.f32_out(3, rm)?,
                c.f32_out(4, rv)?,
            );
        }
        Op::DropoutTrain { ratio, seed } | Op::DropoutGrad { ratio, seed } => {
            c.need_f32(0)?;
            let step = c.i64_scalar(1)? as u64;
            c.init(outs, 0, 0)?;
            kernels::dropout_inplace(c.out1(outs)?, *ratio, *seed, step);
        }
        Op::SliceWindow { axis, seed, .. } => {
            let step = c.i64_scalar(1)? as u64;
            kernels::slice_window(x(0)?, shapes[0], *axis, *seed, step, c.out1(outs)?);
        }
        Op::SliceWindowGrad { axis, size, seed } => {
            let step = c.i64_scalar(1)? as u64;
            let dx = c.out1(outs)?;
            kernels::slice_window_grad(x(0)?, shapes[0], *axis, *size, *seed, step, dx);
        }
        Op::ReluMask => {
            let o = outs.first_mut().ok_or("the node has no output")?;
            kernels::relu_mask(x(0)?, o);
        }
        Op::ReluMaskGrad => {
            let mask = c.raw(1)?;
            c.init(outs, 0, 0)?;
            kernels::relu_mask_grad_inplace(c.out1(outs)?, mask);
        }
        Op::TopK { k } => {
            let [values, indices] = outs else {
                return Err(bad_outputs(op, outs.len()));
            };
            let indices: &mut [i32] = cast_mut(indices)?;
            if indices.len() != *k {
                return Err(format!("indices hold {} of {k}", indices.len()));
            }
            kernels::topk(x(0)?, c.f32_out(0, values)?, indices);
        }
        Op::TopKScatter { .. } => {
            let idx: &[i32] = match c.in_dtypes[1] {
                DType::I32 => cast(c.raw(1)?)?,
                d => return Err(format!("indices have dtype {d}, expected i32")),
            };
            kernels::topk_scatter(x(0)?, idx, c.out1(outs)?)?;
        }
        Op::ConvBackwardData { conv, input_shape } => {
            let win = c.window(|| conv.window(input_shape, shapes[1]))?;
            kernels::conv_backward_data(
                x(0)?,
                x(1)?,
                shapes[1],
                input_shape,
                &win,
                conv.group,
                c.out1(outs)?,
                ws,
            );
        }
        Op::ConvBackwardFilter { conv, weight_shape } => {
            let win = c.window(|| conv.window(shapes[1], weight_shape))?;
            kernels::conv_backward_filter(
                x(0)?,
                x(1)?,
                shapes[1],
                weight_shape,
                &win,
                conv.group,
                c.out1(outs)?,
                ws,
            );
        }
        Op::MaxPoolGrad(a) => {
            let win = c.window(|| a.window(shapes[1]))?;
            check_spatial(win.kernel.len())?;
            kernels::max_pool_grad(x(0)?, x(1)?, shapes[1], &win, c.out1(outs)?);
        }
        Op::AveragePoolGrad { pool, input_shape } => {
            let win = c.window(|| pool.window(input_shape))?;
            check_spatial(win.kernel.len())?;
            let o = c.out1(outs)?;
            kernels::avg_pool_grad(x(0)?, input_shape, &win, pool.count_include_pad, o);
        }
        Op::GlobalAveragePoolGrad { input_shape } => {
            kernels::global_avg_pool_grad(x(0)?, input_shape, c.out1(outs)?);
        }
        Op::BatchNormGrad { epsilon, training } => {
            let [dx, ds, db] = outs else {
                return Err(bad_outputs(op, outs.len()));
            };
            let (dx, ds, db) = (c.f32_out(0, dx)?, c.f32_out(1, ds)?, c.f32_out(2, db)?);
            kernels::batch_norm_grad(
                x(0)?,
                x(1)?,
                shapes[1],
                x(2)?,
                x(3)?,
                x(4)?,
                *epsilon,
                *training,
                dx,
                ds,
                db,
            );
        }
        Op::LayerNormGrad { axis, epsilon } => {
            let ax = norm_axis(*axis, shapes[1].len()).ok_or("axis out of range")?;
            let [dx, ds, db] = outs else {
                return Err(bad_outputs(op, outs.len()));
            };
            let (dx, ds, db) = (c.f32_out(0, dx)?, c.f32_out(1, ds)?, c.f32_out(2, db)?);
            kernels::layer_norm_grad(
                x(0)?,
                x(1)?,
                shapes[1],
                ax,
                x(2)?,
                shapes[2],
                *epsilon,
                dx,
                ds,
                db,
                ws,
            );
        }
        Op::LrnGrad(a) => {
            if a.size == 0 {
                return Err("LRN size must be positive".into());
            }
            kernels::lrn_grad(
                x(0)?,
                x(1)?,
                x(2)?,
                shapes[1],
                a.size,
                a.alpha,
                a.beta,
                a.bias,
                c.out1(outs)?,
            );
        }
        Op::SoftmaxGrad(a) | Op::LogSoftmaxGrad(a) => {
            let ax = norm_axis(a.axis, shapes[1].len()).ok_or("axis out of range")?;
            kernels::softmax_grad(
                x(0)?,
                x(1)?,
                shapes[1],
                ax,
                a.legacy,
                matches!(op, Op::LogSoftmaxGrad(_)),
                c.out1(outs)?,
            );
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
                Op::ClipGrad(a) => UnaryGrad::Clip {
                    min: a.min.unwrap_or(f32::MIN),
                    max: a.max.unwrap_or(f32::MAX),
                },
                _ => unreachable!(),
            };
            c.need_f32(0)?;
            let v = x(1)?;
            c.init(outs, 0, 0)?;
            kernels::unary_grad_inplace(g, c.out1(outs)?, v);
        }
        Op::PowGrad => {
            let [da, db] = outs else {
                return Err(bad_outputs(op, outs.len()));
            };
            let (da, db) = (c.f32_out(0, da)?, c.f32_out(1, db)?);
            kernels::pow_grad(x(0)?, x(1)?, shapes[1], x(2)?, shapes[2], da, db, os[0]);
        }
        Op::SoftmaxCrossEntropy => {
            let (n, k) = (shapes[0][0], shapes[0][1]);
            kernels::softmax_cross_entropy(x(0)?, n, k, c.i64s(1)?, c.out1(outs)?)?;
        }
        Op::SoftmaxCrossEntropyGrad => {
            let (n, k) = (shapes[1][0], shapes[1][1]);
            let dl = x(0)?.first().copied().ok_or("empty loss gradient")?;
            kernels::softmax_cross_entropy_grad(dl, x(1)?, n, k, c.i64s(2)?, c.out1(outs)?)?;
        }
        Op::MseLoss => kernels::mse_loss(x(0)?, x(1)?, c.out1(outs)?),
        Op::MseLossGrad => {
            let dl = x(0)?.first().copied().ok_or("empty loss gradient")?;
            kernels::mse_loss_grad(dl, x(1)?, x(2)?, c.out1(outs)?);
        }
        Op::SgdUpdate {
            lr,
            momentum,
            weight_decay,
        } => {
            c.need_f32(0)?;
            let g = x(1)?;
            let with_v = *momentum != 0.0;
            if outs.len() != 1 + usize::from(with_v) {
                return Err(bad_outputs(op, outs.len()));
            }
            c.init(outs, 0, 0)?;
            if with_v {
                c.need_f32(2)?;
                c.init(outs, 1, 2)?;
            }
            let (w, v) = match outs {
                [w] => (c.f32_out(0, w)?, None),
                [w, v] => (c.f32_out(0, w)?, Some(c.f32_out(1, v)?)),
                _ => return Err(bad_outputs(op, outs.len())),
            };
            kernels::sgd_update(w, g, v, *lr, *momentum, *weight_decay);
        }
        Op::AdamUpdate {
            lr,
            beta1,
            beta2,
            epsilon,
            weight_decay,
            decoupled,
        } => {
            let step = c.i64_scalar(4)?;
            if step < 1 {
                return Err(format!("step {step} is not a 1-based Adam step"));
            }
            c.need_f32(0)?;
            let g = x(1)?;
            for (k, j) in [(0, 0), (1, 2), (2, 3)] {
                c.need_f32(j)?;
                c.init(outs, k, j)?;
            }
            let [w, m, v] = outs else {
                return Err(bad_outputs(op, outs.len()));
            };
            let (w, m, v) = (c.f32_out(0, w)?, c.f32_out(1, m)?, c.f32_out(2, v)?);
            let p = kernels::AdamParams {
                lr: *lr,
                beta1: *beta1,
                beta2: *beta2,
                epsilon: *epsilon,
                weight_decay: *weight_decay,
                decoupled: *decoupled,
            };
            kernels::adam_update(w, g, m, v, step, &p);
        }
        Op::Conv(a) => {
            let win = c.window(|| a.window(shapes[0], shapes[1]))?;
            let bias = if c.ins.len() == 3 { Some(x(2)?) } else { None };
            kernels::conv(
                x(0)?,
                shapes[0],
                x(1)?,
                shapes[1],
                bias,
                &win,
                a.group,
                a.activation.map(epilogue).transpose()?,
                c.out1(outs)?,
                ws,
            );
        }
        Op::BatchNormalization(a) => {
            kernels::batch_norm(
                x(0)?,
                shapes[0],
                x(1)?,
                x(2)?,
                x(3)?,
                x(4)?,
                a.epsilon,
                c.out1(outs)?,
            );
        }
        Op::MatMul => kernels::matmul(x(0)?, shapes[0], x(1)?, shapes[1], c.out1(outs)?, ws),
        Op::Gemm(a) => {
            let bias = if c.ins.len() == 3 {
                Some((x(2)?, shapes[2]))
            } else {
                None
            };
            kernels::gemm(
                x(0)?,
                shapes[0],
                x(1)?,
                shapes[1],
                bias,
                a.alpha,
                a.beta,
                a.trans_a,
                a.trans_b,
                c.out1(outs)?,
                ws,
            );
            if let Some(act) = a.activation {
                kernels::unary_inplace(epilogue(act)?, c.out1(outs)?);
            }
        }
        Op::MaxPool(a) | Op::AveragePool(a) => {
            let win = c.window(|| a.window(shapes[0]))?;
            check_spatial(win.kernel.len())?;
            let o = c.out1(outs)?;
            if matches!(op, Op::MaxPool(_)) {
                kernels::max_pool(x(0)?, shapes[0], &win, o);
            } else {
                kernels::avg_pool(x(0)?, shapes[0], &win, a.count_include_pad, o);
            }
        }
        Op::GlobalAveragePool => kernels::global_avg_pool(x(0)?, shapes[0], c.out1(outs)?),
        Op::Lrn(a) => {
            let o = c.out1(outs)?;
            kernels::lrn(x(0)?, shapes[0], a.size, a.alpha, a.beta, a.bias, o);
        }
        Op::Softmax(a) | Op::LogSoftmax(a) => {
            let ax = norm_axis(a.axis, shapes[0].len()).ok_or("axis out of range")?;
            kernels::softmax(
                x(0)?,
                shapes[0],
                ax,
                a.legacy,
                matches!(op, Op::LogSoftmax(_)),
                c.out1(outs)?,
            );
        }
        Op::LayerNormalization { axis, epsilon } => {
            let ax = norm_axis(*axis, shapes[0].len()).ok_or("axis out of range")?;
            let bias = if c.ins.len() == 3 {
                Some((x(2)?, shapes[2]))
            } else {
                None
            };
            kernels::layer_norm(
                x(0)?,
                shapes[0],
                ax,
                x(1)?,
                shapes[1],
                bias,
                *epsilon,
                c.out1(outs)?,
                ws,
            );
        }
        Op::ReduceMean(a) | Op::ReduceSum(a) => {
            let r = shapes[0].len();
            if r > kernels::MAX_RANK {
                return Err(format!("rank {r} is above {}", kernels::MAX_RANK));
            }
            let mut axes = [0usize; kernels::MAX_RANK];
            let na = match &a.axes {
                None => {
                    axes[..r].iter_mut().enumerate().for_each(|(i, v)| *v = i);
                    r
                }
                Some(ax) => norm_axes(ax, r, &mut axes)?,
            };
            kernels::reduce(
                x(0)?,
                shapes[0],
                &axes[..na],
                matches!(op, Op::ReduceMean(_)),
                c.out1(outs)?,
                ws,
            );
        }
    }
    Ok(())
}

/// The data-movement ops on elements of `T`'s width (bit patterns are copied unchanged, so
/// one instance serves every dtype of that width).
fn movement<T: Pod + Send + Sync>(c: &OpCall, out: &mut [u8]) -> Result<(), String> {
    let inp = |i: usize| -> Result<&[T], String> {
        if c.in_dtypes[i] != c.in_dtypes[0] {
            return Err(format!(
                "input {i} has dtype {} but input 0 has {}",
                c.in_dtypes[i], c.in_dtypes[0]
            ));
        }
        cast(c.raw(i)?)
    };
    if c.out_dtypes.first() != Some(&c.in_dtypes[0]) {
        return Err("the output's dtype differs from the input's".into());
    }
    let out: &mut [T] = cast_mut(out)?;
    let (s0, os0) = (c.shapes[0], c.out_shapes[0]);
    if out.len() != count(os0) {
        return Err(format!(
            "output holds {} elements, shape {os0:?}",
            out.len()
        ));
    }
    match c.op {
        Op::Expand { .. } => kernels::expand(inp(0)?, s0, out, os0),
        Op::Slice { axis, start, end } => kernels::slice(inp(0)?, s0, *axis, *start, *end, out),
        Op::Transpose { perm } => {
            let r = s0.len();
            if r > kernels::MAX_RANK {
                return Err(format!("rank {r} is above {}", kernels::MAX_RANK));
            }
            let mut p = [0usize; kernels::MAX_RANK];
            match perm {
                Some(q) if q.len() == r => p[..r].copy_from_slice(q),
                Some(q) => return Err(format!("perm {q:?} does not fit rank {r}")),
                None => p[..r]
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, v)| *v = r - 1 - i),
            }
            kernels::transpose(inp(0)?, s0, &p[..r], out);
        }
        Op::Concat { axis } => {
            let ax = norm_axis(*axis, s0.len()).ok_or("axis out of range")?;
            const MAX_PARTS: usize = crate::program::MAX_INPUTS;
            let n = c.ins.len();
            if n > MAX_PARTS {
                return Err(format!("{n} parts; Concat takes at most {MAX_PARTS}"));
            }
            let mut parts: [(&[T], &[usize]); MAX_PARTS] = [(&[], &[]); MAX_PARTS];
            for (i, slot) in parts[..n].iter_mut().enumerate() {
                *slot = (inp(i)?, c.shapes[i]);
            }
            kernels::concat(&parts[..n], ax, out);
        }
        other => return Err(format!("{} is not a data-movement op", other.name())),
    }
    Ok(())
}

/// Normalises `axes` into `out`; returns how many.
fn norm_axes(axes: &[i64], rank: usize, out: &mut [usize]) -> Result<usize, String> {
    if axes.len() > out.len() {
        return Err(format!("{} axes for rank {rank}", axes.len()));
    }
    for (k, &a) in axes.iter().enumerate() {
        let n = norm_axis(a, rank)
            .ok_or_else(|| format!("axis {a} is out of range for rank {rank}"))?;
        if out[..k].contains(&n) {
            return Err(format!("axis {a} is repeated"));
        }
        out[k] = n;
    }
    Ok(axes.len())
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
