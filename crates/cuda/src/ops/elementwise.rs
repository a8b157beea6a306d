//! Elementwise ops, their gradients, Sum, PowGrad and dropout (kernels/elementwise.cu).

use lowmem_ir::shape::count;
use lowmem_ir::{Activation, DType, GeluApprox, Op};

use super::{DevCall, OpResult};
use crate::DevPtr;
use crate::args::{Arg, Dims, call, grid_1d};
use crate::device::Device;

/// `lm_unary`'s op codes.
fn unary_code(op: &Op) -> Option<(i32, f32, f32)> {
    Some(match op {
        Op::Relu => (0, 0.0, 0.0),
        Op::LeakyRelu { alpha } => (1, *alpha, 0.0),
        Op::Sigmoid => (2, 0.0, 0.0),
        Op::Tanh => (3, 0.0, 0.0),
        Op::Erf => (4, 0.0, 0.0),
        Op::Gelu { approximate } if *approximate == GeluApprox::None => (5, 0.0, 0.0),
        Op::Gelu { .. } => (6, 0.0, 0.0),
        Op::Sqrt => (7, 0.0, 0.0),
        Op::Clip(a) => (8, a.min.unwrap_or(f32::MIN), a.max.unwrap_or(f32::MAX)),
        Op::Neg => (9, 0.0, 0.0),
        Op::Scale { alpha } => (10, *alpha, 0.0),
        _ => return None,
    })
}

/// Applies `act` (the standalone op's kernel) in place over output 0 of `c`.
pub(super) fn epilogue(dev: &dyn Device, act: Activation, c: &DevCall) -> OpResult {
    let code =
        unary_code(&act.op()).ok_or_else(|| format!("no kernel for the {act:?} epilogue"))?;
    let y = c.output(0)?;
    unary(dev, code, y, y, count(c.out_shape(0)))
}

/// `lm_unary` with op `code` over `n` elements from `x` into `y` (which may be `x`).
fn unary(
    dev: &dyn Device,
    (code, p0, p1): (i32, f32, f32),
    x: DevPtr,
    y: DevPtr,
    n: usize,
) -> OpResult {
    let args = [
        Arg::Ptr(x),
        Arg::Ptr(y),
        Arg::I64(n as i64),
        Arg::I32(code),
        Arg::F32(p0),
        Arg::F32(p1),
    ];
    Ok(call(dev, "lm_unary", grid_1d(n), &args)?)
}

/// `lm_unary_grad`'s op codes.
fn grad_code(op: &Op) -> Option<(i32, f32, f32)> {
    Some(match op {
        Op::ReluGrad => (0, 0.0, 0.0),
        Op::LeakyReluGrad { alpha } => (1, *alpha, 0.0),
        Op::SigmoidGrad => (2, 0.0, 0.0),
        Op::TanhGrad => (3, 0.0, 0.0),
        Op::SqrtGrad => (4, 0.0, 0.0),
        Op::ErfGrad => (5, 0.0, 0.0),
        Op::GeluGrad { approximate } if *approximate == GeluApprox::None => (6, 0.0, 0.0),
        Op::GeluGrad { .. } => (7, 0.0, 0.0),
        Op::ClipGrad(a) => (8, a.min.unwrap_or(f32::MIN), a.max.unwrap_or(f32::MAX)),
        _ => return None,
    })
}

fn binary_code(op: &Op) -> Option<i32> {
    Some(match op {
        Op::Add => 0,
        Op::Sub => 1,
        Op::Mul => 2,
        Op::Div => 3,
        Op::Pow => 4,
        _ => return None,
    })
}

pub(super) fn launch(dev: &dyn Device, c: &DevCall) -> OpResult {
    let op = c.op;
    let n = count(c.out_shape(0));
    if let Some(code) = unary_code(op) {
        return unary(dev, code, c.f32_in(0)?, c.output(0)?, n);
    }
    if let Some((code, p0, p1)) = grad_code(op) {
        // Inputs: dy, then the value the derivative reads (X or Y); dx may overwrite dy.
        let (dy, v, dx) = (c.f32_in(0)?, c.f32_in(1)?, c.output(0)?);
        let args = [
            Arg::Ptr(dy),
            Arg::Ptr(v),
            Arg::Ptr(dx),
            Arg::I64(n as i64),
            Arg::I32(code),
            Arg::F32(p0),
            Arg::F32(p1),
        ];
        return Ok(call(dev, "lm_unary_grad", grid_1d(n), &args)?);
    }
    if let Some(code) = binary_code(op) {
        let (a, b, y) = (c.f32_in(0)?, c.f32_in(1)?, c.output(0)?);
        let (sa, sb, so) = (c.shape(0), c.shape(1), c.out_shape(0));
        if sa == so && sb == so {
            let args = [
                Arg::Ptr(a),
                Arg::Ptr(b),
                Arg::Ptr(y),
                Arg::I64(n as i64),
                Arg::I32(code),
            ];
            return Ok(call(dev, "lm_binary_flat", grid_1d(n), &args)?);
        }
        let d = Dims::broadcast(so, sa, sb)?;
        let args = [
            Arg::Ptr(a),
            Arg::Ptr(b),
            Arg::Ptr(y),
            Arg::Dims(Box::new(d)),
            Arg::I32(code),
        ];
        return Ok(call(dev, "lm_binary", grid_1d(n), &args)?);
    }
    match op {
        Op::Cast { .. } => {
            let code = |d: DType| match d {
                DType::F32 => Ok(0),
                DType::F16 => Ok(1),
                DType::BF16 => Ok(2),
                d => Err(format!("Cast of {d}: only f32, f16 and bf16 convert")),
            };
            let (from, to) = (code(c.io.in_dtypes()[0])?, code(c.io.out_dtypes()[0])?);
            let args = [
                Arg::Ptr(c.input(0)?),
                Arg::Ptr(c.output(0)?),
                Arg::I64(n as i64),
                Arg::I32(from),
                Arg::I32(to),
            ];
            Ok(call(dev, "lm_cast", grid_1d(n), &args)?)
        }
        Op::Identity
        | Op::Reshape { .. }
        | Op::Flatten { .. }
        | Op::Squeeze { .. }
        | Op::Unsqueeze { .. } => c.init(dev, 0, 0),
        Op::Dropout { .. } => {
            // Inference: the identity, and an all-true mask.
            c.init(dev, 0, 0)?;
            if c.outs.len() > 1 {
                if c.io.out_dtypes()[1] != DType::Bool {
                    return Err(
                        format!("mask has dtype {}, expected bool", c.io.out_dtypes()[1]).into(),
                    );
                }
                dev.fill(c.output(1)?, 1, count(c.out_shape(1)))?;
            }
            Ok(())
        }
        Op::DropoutTrain { ratio, seed } | Op::DropoutGrad { ratio, seed } => {
            let (x, step, y) = (c.f32_in(0)?, c.input(1)?, c.output(0)?);
            if c.io.in_dtypes()[1] != DType::I64 || count(c.shape(1)) != 1 {
                return Err("input 1 must be an i64 scalar (the step)".into());
            }
            let args = [
                Arg::Ptr(x),
                Arg::Ptr(y),
                Arg::I64(n as i64),
                Arg::F32(*ratio),
                Arg::U64(*seed),
                Arg::Ptr(step),
            ];
            Ok(call(dev, "lm_dropout", grid_1d(n), &args)?)
        }
        Op::Sum => {
            // Input 0 broadcast to the output, then `+=` each other input, in order.
            c.need_f32(0)?;
            let (y, so) = (c.output(0)?, c.out_shape(0));
            if !c.aliased[0] {
                super::movement::expand(dev, c.input(0)?, c.shape(0), y, so, 4)?;
            }
            for j in 1..c.n_inputs() {
                let d = Dims::broadcast(so, so, c.shape(j))?;
                let args = [Arg::Ptr(y), Arg::Ptr(c.f32_in(j)?), Arg::Dims(Box::new(d))];
                call(dev, "lm_accumulate", grid_1d(n), &args)?;
            }
            Ok(())
        }
        Op::PowGrad => {
            let (dy, a, b) = (c.f32_in(0)?, c.f32_in(1)?, c.f32_in(2)?);
            let (da, db) = (c.output(0)?, c.output(1)?);
            let d = Dims::broadcast(c.out_shape(0), c.shape(1), c.shape(2))?;
            let args = [
                Arg::Ptr(dy),
                Arg::Ptr(a),
                Arg::Ptr(b),
                Arg::Ptr(da),
                Arg::Ptr(db),
                Arg::Dims(Box::new(d)),
            ];
            Ok(call(dev, "lm_pow_grad", grid_1d(n), &args)?)
        }
        _ => Err(format!("{} is not elementwise", op.name()).into()),
    }
}
