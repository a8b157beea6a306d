//! Constant folding at import.
//!
//! Two kinds of nodes are evaluated here. Constant *generators* (`Constant`, `ConstantOfShape`,
//! `Shape`, `Gather`, `Slice`, `Cast`) have no lowmem op, so they must fold or the import fails.
//! Mapped ops whose inputs are all constant (shape arithmetic: `Concat`, `Unsqueeze`, `Add`,
//! ...) fold opportunistically so that shape tensors reach Reshape/Squeeze as constants and
//! weights stored as `ConstantOfShape` (the zoo's "light" models) become ordinary weights.
//! Every result size is checked before it is allocated.

use half::{bf16, f16};
use lowmem_ir::{DType, Op, TensorData, shape};

use crate::ImportError;
use crate::import::Env;
use crate::node::NodeCtx;
use crate::ops::Mapped;
use crate::tensor::{self, Const};

/// Typed access to [`TensorData`] so that data movement is written once for every dtype.
trait Elem: Copy {
    fn slice(d: &TensorData) -> Option<&[Self]>;
    fn wrap(v: Vec<Self>) -> TensorData;
}

macro_rules! elem {
    ($($t:ty => $v:ident),*) => {$(
        impl Elem for $t {
            fn slice(d: &TensorData) -> Option<&[Self]> {
                match d {
                    TensorData::$v(x) => Some(x),
                    _ => None,
                }
            }
            fn wrap(v: Vec<Self>) -> TensorData {
                TensorData::$v(v)
            }
        }
    )*};
}
elem!(f32 => F32, f16 => F16, bf16 => BF16, f64 => F64, i64 => I64, i32 => I32, i8 => I8,
      u8 => U8, bool => Bool);

/// Runs `$body` with `$T` bound to the element type of `$dtype`.
macro_rules! with_elem {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $T = f32;
                $body
            }
            DType::F16 => {
                type $T = f16;
                $body
            }
            DType::BF16 => {
                type $T = bf16;
                $body
            }
            DType::F64 => {
                type $T = f64;
                $body
            }
            DType::I64 => {
                type $T = i64;
                $body
            }
            DType::I32 => {
                type $T = i32;
                $body
            }
            DType::I8 => {
                type $T = i8;
                $body
            }
            DType::U8 => {
                type $T = u8;
                $body
            }
            DType::Bool => {
                type $T = bool;
                $body
            }
        }
    };
}

/// Checks that a result of `shape` and `dtype` fits in what is left of the import's fold
/// budget (see [`crate::MAX_FOLD_BYTES`]) and takes it from the budget; returns its length.
/// `scratch` is the working memory per element the fold needs besides the result (index
/// vectors, f64 copies).
fn out_len(
    ctx: &NodeCtx,
    env: &Env,
    shape: &[usize],
    dtype: DType,
    scratch: usize,
) -> Result<usize, ImportError> {
    let n = shape::numel(shape, "result").ok();
    let cost = n.and_then(|n| n.checked_mul(dtype.size() + scratch));
    match cost.and_then(|c| env.take_fold_budget(c)) {
        Some(()) => Ok(n.unwrap_or(0)),
        None => Err(ctx.error(format!(
            "folding would create a {dtype} tensor of shape {shape:?}, over the limit on \
             memory for folded constants ({} MiB left of {} MiB)",
            env.fold_budget_left() >> 20,
            env.fold_limit() >> 20
        ))),
    }
}

/// Gathers elements by flat index (indices are computed from validated shapes).
fn take(data: &TensorData, idx: &[usize]) -> Option<TensorData> {
    fn go<T: Elem>(d: &TensorData, idx: &[usize]) -> Option<TensorData> {
        let v = T::slice(d)?;
        let out = idx
            .iter()
            .map(|&i| v.get(i).copied())
            .collect::<Option<Vec<T>>>()?;
        Some(T::wrap(out))
    }
    with_elem!(data.dtype(), T => go::<T>(data, idx))
}

fn fill(
    ctx: &NodeCtx,
    env: &Env,
    value: &TensorData,
    shape: &[usize],
) -> Result<TensorData, ImportError> {
    fn go<T: Elem>(value: &TensorData, n: usize) -> Option<TensorData> {
        let x = *T::slice(value)?.first()?;
        let mut v = Vec::new();
        v.try_reserve_exact(n).ok()?;
        v.resize(n, x);
        Some(T::wrap(v))
    }
    let n = out_len(ctx, env, shape, value.dtype(), 0)?;
    with_elem!(value.dtype(), T => go::<T>(value, n))
        .ok_or_else(|| ctx.error(format!("cannot allocate a tensor of shape {shape:?}")))
}

pub(crate) fn from_f64(v: &[f64], dtype: DType) -> TensorData {
    match dtype {
        DType::F32 => TensorData::F32(v.iter().map(|&x| x as f32).collect()),
        DType::F16 => TensorData::F16(v.iter().map(|&x| f16::from_f64(x)).collect()),
        DType::BF16 => TensorData::BF16(v.iter().map(|&x| bf16::from_f64(x)).collect()),
        DType::F64 => TensorData::F64(v.to_vec()),
        DType::I64 => TensorData::I64(v.iter().map(|&x| x as i64).collect()),
        DType::I32 => TensorData::I32(v.iter().map(|&x| x as i32).collect()),
        DType::I8 => TensorData::I8(v.iter().map(|&x| x as i8).collect()),
        DType::U8 => TensorData::U8(v.iter().map(|&x| x as u8).collect()),
        DType::Bool => TensorData::Bool(v.iter().map(|&x| x != 0.0).collect()),
    }
}

pub(crate) fn from_i64(v: &[i64], dtype: DType) -> TensorData {
    match dtype {
        DType::I64 => TensorData::I64(v.to_vec()),
        DType::I32 => TensorData::I32(v.iter().map(|&x| x as i32).collect()),
        DType::I8 => TensorData::I8(v.iter().map(|&x| x as i8).collect()),
        DType::U8 => TensorData::U8(v.iter().map(|&x| x as u8).collect()),
        DType::Bool => TensorData::Bool(v.iter().map(|&x| x != 0).collect()),
        _ => from_f64(&v.iter().map(|&x| x as f64).collect::<Vec<_>>(), dtype),
    }
}

/// ONNX Cast: integers convert exactly between integer types, everything else via f64.
fn cast(data: &TensorData, to: DType) -> TensorData {
    match data.as_i64() {
        Some(ints) if !to.is_float() => from_i64(&ints, to),
        _ => from_f64(&data.to_f64(), to),
    }
}

/// Row-major strides with checked products (shapes here are already validated).
fn strides(shape: &[usize]) -> Vec<usize> {
    shape::strides(shape)
}

/// For each element of `out` (row-major), the flat index of the element of `inp` it reads
/// under numpy broadcasting.
fn broadcast_indices(inp: &[usize], out: &[usize]) -> Vec<usize> {
    let r = out.len();
    let st = strides(inp);
    let mut bst = vec![0; r];
    for (k, (&d, &s)) in inp.iter().zip(&st).enumerate() {
        bst[r - inp.len() + k] = if d == 1 { 0 } else { s };
    }
    odometer(out, |idx| idx.iter().zip(&bst).map(|(i, s)| i * s).sum())
}

/// Calls `f` with every multi-index of `shape` in row-major order.
fn odometer(shape: &[usize], mut f: impl FnMut(&[usize]) -> usize) -> Vec<usize> {
    let n = shape::count(shape);
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0; shape.len()];
    for _ in 0..n {
        out.push(f(&idx));
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

/// The integer values of a constant used as shape data (axes, indices, dims).
fn ints(ctx: &NodeCtx, c: &Const, what: &str) -> Result<Vec<i64>, ImportError> {
    c.ints()
        .ok_or_else(|| ctx.error(format!("{what} must be an integer tensor, got {}", c.dtype)))
}

fn norm_axis(ctx: &NodeCtx, axis: i64, rank: usize) -> Result<usize, ImportError> {
    shape::axis(axis, rank)
        .ok_or_else(|| ctx.error(format!("axis {axis} is out of range for rank {rank}")))
}

/// Evaluates a constant generator. `None` when the node is not one (or is a Cast of a
/// non-constant, which the op mapping turns into Identity when it is a no-op).
pub(crate) fn generate(ctx: &NodeCtx, env: &Env) -> Result<Option<Const>, ImportError> {
    Ok(Some(match ctx.op_type() {
        "Constant" => constant(ctx)?,
        "ConstantOfShape" => {
            let c = env
                .constant(ctx, 0, "shape")?
                .ok_or_else(|| ctx.error("missing input"))?;
            let dims = ints(ctx, c, "shape")?;
            let shape = dims
                .iter()
                .map(|&d| {
                    usize::try_from(d)
                        .map_err(|_| ctx.error(format!("negative dimension in {dims:?}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let value = match ctx.tensor("value")? {
                None => TensorData::F32(vec![0.0]),
                Some(t) => {
                    let (_, v) = tensor::from_proto(&mut t.clone())?;
                    if v.data.len() != 1 {
                        return Err(ctx.bad_attr("value", "must hold exactly one element"));
                    }
                    (*v.data).clone()
                }
            };
            Const::new(shape.clone(), fill(ctx, env, &value, &shape)?)
        }
        "Shape" => {
            let (_, s) = env.dtype_shape(ctx, ctx.required(0)?)?;
            let r = s.len() as i64;
            // Opset 15 start/end: negative counts from the back; out of range clamps.
            let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let start = clamp(ctx.int_or("start", 0)?);
            let end = clamp(ctx.int_or("end", r)?).max(start);
            let dims: Vec<i64> = s[start..end].iter().map(|&d| d as i64).collect();
            Const::new(vec![dims.len()], TensorData::I64(dims))
        }
        "Gather" => {
            let data = env
                .constant(ctx, 0, "data")?
                .ok_or_else(|| ctx.error("missing data"))?;
            let ic = env
                .constant(ctx, 1, "indices")?
                .ok_or_else(|| ctx.error("missing indices"))?;
            let idx = ints(ctx, ic, "indices")?;
            let axis = norm_axis(ctx, ctx.int_or("axis", 0)?, data.shape.len())?;
            let dim = data.shape[axis];
            let outer = shape::count(&data.shape[..axis]);
            let inner = shape::count(&data.shape[axis + 1..]);
            let mut out_shape = data.shape[..axis].to_vec();
            out_shape.extend(&ic.shape);
            out_shape.extend(&data.shape[axis + 1..]);
            out_len(ctx, env, &out_shape, data.dtype, 8)?;
            let idx = idx
                .iter()
                .map(|&i| {
                    let j = if i < 0 { i + dim as i64 } else { i };
                    usize::try_from(j).ok().filter(|&j| j < dim).ok_or_else(|| {
                        ctx.error(format!(
                            "index {i} is out of range for axis {axis} of size {dim}"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut flat = Vec::with_capacity(outer * idx.len() * inner);
            for o in 0..outer {
                for &j in &idx {
                    let base = (o * dim + j) * inner;
                    flat.extend(base..base + inner);
                }
            }
            let d = take(&data.data, &flat).ok_or_else(|| ctx.error("internal: gather index"))?;
            Const::new(out_shape, d)
        }
        "Slice" => slice(ctx, env)?,
        "Cast" => {
            let to = ctx
                .int("to")?
                .ok_or_else(|| ctx.bad_attr("to", "is required"))?;
            let dtype = tensor::dtype_from_onnx(to as i32).ok_or_else(|| {
                ImportError::UnsupportedDtype {
                    what: format!("node {} (Cast) attribute 'to'", ctx.label),
                    dtype: tensor::onnx_dtype_name(to as i32),
                }
            })?;
            match env.try_constant(ctx.required(0)?) {
                Some(c) => {
                    out_len(ctx, env, &c.shape, dtype, 8)?;
                    Const::new(c.shape.clone(), cast(&c.data, dtype))
                }
                None => return Ok(None),
            }
        }
        _ => return Ok(None),
    }))
}

fn constant(ctx: &NodeCtx) -> Result<Const, ImportError> {
    if let Some(t) = ctx.tensor("value")? {
        return Ok(tensor::from_proto(&mut t.clone())?.1);
    }
    if let Some(v) = ctx.float("value_float")? {
        return Ok(Const::new(vec![], TensorData::F32(vec![v])));
    }
    if let Some(v) = ctx.floats("value_floats")? {
        return Ok(Const::new(vec![v.len()], TensorData::F32(v.to_vec())));
    }
    if let Some(v) = ctx.int("value_int")? {
        return Ok(Const::new(vec![], TensorData::I64(vec![v])));
    }
    if let Some(v) = ctx.ints("value_ints")? {
        return Ok(Const::new(vec![v.len()], TensorData::I64(v.to_vec())));
    }
    for a in ["sparse_value", "value_string", "value_strings"] {
        if ctx.has_attr(a) {
            return Err(ctx.bad_attr(a, "is not supported (sparse and string constants)"));
        }
    }
    Err(ctx.error("has no value attribute"))
}

/// Slice: `starts`/`ends`/`axes` attributes before opset 10, inputs (with `steps`) after.
fn slice(ctx: &NodeCtx, env: &Env) -> Result<Const, ImportError> {
    let data = env
        .constant(ctx, 0, "data")?
        .ok_or_else(|| ctx.error("missing data"))?;
    let rank = data.shape.len();
    let list = |i: usize, attr: &str| -> Result<Option<Vec<i64>>, ImportError> {
        if ctx.opset < 10 {
            return Ok(ctx.ints(attr)?.map(<[i64]>::to_vec));
        }
        env.constant(ctx, i, attr)?
            .map(|c| ints(ctx, c, attr))
            .transpose()
    };
    let starts = list(1, "starts")?.ok_or_else(|| ctx.error("starts is required"))?;
    let ends = list(2, "ends")?.ok_or_else(|| ctx.error("ends is required"))?;
    let axes = list(3, "axes")?.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = if ctx.opset < 10 {
        None
    } else {
        list(4, "steps")?
    }
    .unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(ctx.error("starts, ends, axes and steps must have the same length"));
    }
    let mut begin = vec![0i128; rank];
    let mut step = vec![1i128; rank];
    let mut out_shape = data.shape.clone();
    let mut seen = vec![false; rank];
    for k in 0..starts.len() {
        let a = norm_axis(ctx, axes[k], rank)?;
        if std::mem::replace(&mut seen[a], true) {
            return Err(ctx.error(format!("axis {} is repeated", axes[k])));
        }
        let (d, st) = (data.shape[a] as i128, steps[k] as i128);
        if st == 0 {
            return Err(ctx.error("steps must be non-zero"));
        }
        let wrap = |v: i64| if v < 0 { v as i128 + d } else { v as i128 };
        let (s, e) = (wrap(starts[k]), wrap(ends[k]));
        let (s, n) = if d == 0 {
            (0, 0)
        } else if st > 0 {
            let (s, e) = (s.clamp(0, d), e.clamp(0, d));
            (s, if e > s { (e - s + st - 1) / st } else { 0 })
        } else {
            let (s, e) = (s.clamp(0, d - 1), e.clamp(-1, d - 1));
            (s, if s > e { (s - e - st - 1) / -st } else { 0 })
        };
        begin[a] = s;
        step[a] = st;
        out_shape[a] = n as usize;
    }
    out_len(ctx, env, &out_shape, data.dtype, 8)?;
    let st = strides(&data.shape);
    let flat = odometer(&out_shape, |idx| {
        (0..rank)
            .map(|d| (begin[d] + idx[d] as i128 * step[d]) as usize * st[d])
            .sum()
    });
    let d = take(&data.data, &flat).ok_or_else(|| ctx.error("internal: slice index"))?;
    Ok(Const::new(out_shape, d))
}

/// Folds a mapped op whose inputs are all constant, if it is one of the folded kinds.
pub(crate) fn fold(ctx: &NodeCtx, m: &Mapped, env: &Env) -> Result<Option<Const>, ImportError> {
    let foldable = matches!(
        m.op,
        Op::Reshape { .. }
            | Op::Squeeze { .. }
            | Op::Unsqueeze { .. }
            | Op::Flatten { .. }
            | Op::Identity
            | Op::Concat { .. }
            | Op::Add
            | Op::Sub
            | Op::Mul
            | Op::Div
    );
    if !foldable {
        return Ok(None);
    }
    let Some(ins) = m
        .inputs
        .iter()
        .map(|n| env.try_constant(n))
        .collect::<Option<Vec<&Const>>>()
    else {
        return Ok(None);
    };
    let infos: Vec<(DType, &[usize])> = ins.iter().map(|c| (c.dtype, &c.shape[..])).collect();
    let (_, out_shape) =
        m.op.infer(&infos, 1)
            .map_err(|msg| ctx.error(msg))?
            .into_iter()
            .next()
            .ok_or_else(|| ctx.error("no output"))?;
    let dtype = ins[0].dtype;
    let data = match &m.op {
        // Views: same elements, new shape; the data is shared, not copied.
        Op::Reshape { .. }
        | Op::Squeeze { .. }
        | Op::Unsqueeze { .. }
        | Op::Flatten { .. }
        | Op::Identity => {
            return Ok(Some(Const {
                dtype,
                shape: out_shape,
                data: ins[0].data.clone(),
            }));
        }
        Op::Concat { axis } => {
            // Indices, and the inputs joined back to back.
            out_len(ctx, env, &out_shape, dtype, 8 + dtype.size())?;
            let ax = norm_axis(ctx, *axis, out_shape.len())?;
            let outer = shape::count(&out_shape[..ax]);
            let total = shape::count(&out_shape);
            let mut flat = Vec::with_capacity(total);
            let mut offsets = Vec::with_capacity(ins.len());
            let mut off = 0;
            for c in &ins {
                offsets.push(off);
                off += c.data.len();
            }
            for o in 0..outer {
                for (c, &base) in ins.iter().zip(&offsets) {
                    let chunk = shape::count(&c.shape[ax..]);
                    flat.extend(base + o * chunk..base + (o + 1) * chunk);
                }
            }
            let joined =
                concat_all(&ins).ok_or_else(|| ctx.error("inputs have different dtypes"))?;
            take(&joined, &flat).ok_or_else(|| ctx.error("internal: concat index"))?
        }
        op => {
            // Two index vectors, f64 (or i64) copies of the inputs, the unrounded result.
            out_len(ctx, env, &out_shape, dtype, 40)?;
            binary(ctx, op, ins[0], ins[1], &out_shape)?
        }
    };
    Ok(Some(Const::new(out_shape, data)))
}

/// The inputs' elements back to back (Concat then reorders them by index).
fn concat_all(ins: &[&Const]) -> Option<TensorData> {
    fn go<T: Elem>(ins: &[&Const]) -> Option<TensorData> {
        let mut v = Vec::new();
        for c in ins {
            v.extend_from_slice(T::slice(&c.data)?);
        }
        Some(T::wrap(v))
    }
    with_elem!(ins.first()?.dtype, T => go::<T>(ins))
}

fn binary(
    ctx: &NodeCtx,
    op: &Op,
    a: &Const,
    b: &Const,
    out: &[usize],
) -> Result<TensorData, ImportError> {
    let ia = broadcast_indices(&a.shape, out);
    let ib = broadcast_indices(&b.shape, out);
    let dtype = a.dtype;
    if dtype.is_float() {
        let (av, bv) = (a.data.to_f64(), b.data.to_f64());
        let f = |x: f64, y: f64| match op {
            Op::Add => x + y,
            Op::Sub => x - y,
            Op::Mul => x * y,
            _ => x / y,
        };
        // f64 then round: exact for one +-*/ of f32/f16/bf16 operands.
        let r: Vec<f64> = ia.iter().zip(&ib).map(|(&i, &j)| f(av[i], bv[j])).collect();
        return Ok(from_f64(&r, dtype));
    }
    let (Some(av), Some(bv)) = (a.ints(), b.ints()) else {
        return Err(ctx.error(format!("cannot fold arithmetic on {dtype}")));
    };
    if dtype == DType::Bool {
        return Err(ctx.error("arithmetic on bool tensors is not defined"));
    }
    let r = ia
        .iter()
        .zip(&ib)
        .map(|(&i, &j)| {
            let (x, y) = (av[i], bv[j]);
            match op {
                Op::Add => x.checked_add(y),
                Op::Sub => x.checked_sub(y),
                Op::Mul => x.checked_mul(y),
                _ => x.checked_div(y),
            }
            .ok_or_else(|| {
                ctx.error(format!(
                    "integer overflow or division by zero folding {x} and {y}"
                ))
            })
        })
        .collect::<Result<Vec<i64>, _>>()?;
    Ok(from_i64(&r, dtype))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_index_maps() {
        assert_eq!(broadcast_indices(&[3], &[2, 3]), vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(broadcast_indices(&[2, 1], &[2, 3]), vec![0, 0, 0, 1, 1, 1]);
        assert_eq!(broadcast_indices(&[], &[2]), vec![0, 0]);
    }

    #[test]
    fn casts() {
        let d = TensorData::I64(vec![1, -2, 1 << 40]);
        assert_eq!(cast(&d, DType::I32), TensorData::I32(vec![1, -2, 0]));
        assert_eq!(
            cast(&d, DType::F32),
            TensorData::F32(vec![1.0, -2.0, (1u64 << 40) as f32])
        );
        assert_eq!(
            cast(&TensorData::F32(vec![2.7, -0.0]), DType::Bool),
            TensorData::Bool(vec![true, false])
        );
    }
}
