//! Unary and broadcasting binary elementwise kernels.

use rayon::prelude::*;

use super::{Dims, PAR_ELEMS, next_index, strides, unravel};

/// Unary elementwise ops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Unary {
    Relu,
    LeakyRelu(f32),
    Sigmoid,
    Tanh,
    Erf,
    /// `0.5 x (1 + erf(x / sqrt 2))`.
    Gelu,
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
    GeluTanh,
    Sqrt,
    /// Clamp to `[min, max]`; NaN stays NaN.
    Clip {
        min: f32,
        max: f32,
    },
    Identity,
    /// `-x`.
    Neg,
    /// `alpha * x`.
    Scale(f32),
}

impl Unary {
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Unary::Relu => {
                if x < 0.0 {
                    0.0
                } else {
                    x
                }
            }
            Unary::LeakyRelu(a) => {
                if x < 0.0 {
                    a * x
                } else {
                    x
                }
            }
            Unary::Sigmoid => {
                // Stable on both tails.
                if x >= 0.0 {
                    1.0 / (1.0 + (-x).exp())
                } else {
                    let e = x.exp();
                    e / (1.0 + e)
                }
            }
            Unary::Tanh => x.tanh(),
            Unary::Erf => libm::erff(x),
            Unary::Gelu => 0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)),
            Unary::GeluTanh => {
                const C: f32 = 0.797_884_6; // sqrt(2/pi)
                0.5 * x * (1.0 + (C * (x + 0.044715 * x * x * x)).tanh())
            }
            Unary::Sqrt => x.sqrt(),
            Unary::Clip { min, max } => {
                if x < min {
                    min
                } else if x > max {
                    max
                } else {
                    x
                }
            }
            Unary::Identity => x,
            Unary::Neg => -x,
            Unary::Scale(a) => a * x,
        }
    }
}

macro_rules! dispatch_unary {
    ($op:expr, $f:ident, $($args:expr),*) => {
        match $op {
            Unary::Relu => $f(|x| Unary::Relu.apply(x), $($args),*),
            Unary::LeakyRelu(a) => $f(move |x| Unary::LeakyRelu(a).apply(x), $($args),*),
            Unary::Sigmoid => $f(|x| Unary::Sigmoid.apply(x), $($args),*),
            Unary::Tanh => $f(|x| Unary::Tanh.apply(x), $($args),*),
            Unary::Erf => $f(|x| Unary::Erf.apply(x), $($args),*),
            Unary::Gelu => $f(|x| Unary::Gelu.apply(x), $($args),*),
            Unary::GeluTanh => $f(|x| Unary::GeluTanh.apply(x), $($args),*),
            Unary::Sqrt => $f(|x| Unary::Sqrt.apply(x), $($args),*),
            Unary::Clip { min, max } => $f(move |x| Unary::Clip { min, max }.apply(x), $($args),*),
            Unary::Identity => $f(|x| x, $($args),*),
            Unary::Neg => $f(|x: f32| -x, $($args),*),
            Unary::Scale(a) => $f(move |x| a * x, $($args),*),
        }
    };
}

fn unary_with<F: Fn(f32) -> f32 + Sync>(f: F, x: &[f32], out: &mut [f32]) {
    let go = |(o, x): (&mut [f32], &[f32])| {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = f(x);
        }
    };
    if x.len() >= PAR_ELEMS {
        out.par_chunks_mut(PAR_ELEMS / 2)
            .zip(x.par_chunks(PAR_ELEMS / 2))
            .for_each(go);
    } else {
        go((out, x));
    }
}

fn unary_inplace_with<F: Fn(f32) -> f32 + Sync>(f: F, buf: &mut [f32]) {
    let go = |o: &mut [f32]| {
        for o in o.iter_mut() {
            *o = f(*o);
        }
    };
    if buf.len() >= PAR_ELEMS {
        buf.par_chunks_mut(PAR_ELEMS / 2).for_each(go);
    } else {
        go(buf);
    }
}

/// `out[i] = op(x[i])`.
pub fn unary(op: Unary, x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "unary lengths");
    dispatch_unary!(op, unary_with, x, out)
}

/// `buf[i] = op(buf[i])`.
pub fn unary_inplace(op: Unary, buf: &mut [f32]) {
    dispatch_unary!(op, unary_inplace_with, buf)
}

/// Binary elementwise ops (numpy broadcasting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

impl Binary {
    #[inline]
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            Binary::Add => a + b,
            Binary::Sub => a - b,
            Binary::Mul => a * b,
            Binary::Div => a / b,
            Binary::Pow => a.powf(b),
        }
    }
}

/// A broadcast iteration: outer dims walked by odometer, then contiguous runs of `inner`
/// outputs reading `a` and `b` with steps 0 or 1.
struct Plan {
    outer: Dims,
    sa: Dims,
    sb: Dims,
    inner: usize,
    step_a: usize,
    step_b: usize,
}

/// Strides of `s` (right-aligned to `out`'s rank) with 0 on broadcast dims.
fn bstrides(s: &[usize], out: &[usize]) -> Dims {
    let r = out.len();
    assert!(s.len() <= r, "operand rank exceeds output rank");
    let st = strides(s);
    let pad = r - s.len();
    let mut b = Dims::new();
    for i in 0..r {
        b.push(if i < pad {
            0
        } else {
            let d = s[i - pad];
            assert!(
                d == out[i] || d == 1,
                "shape {s:?} does not broadcast to {out:?}"
            );
            if d == 1 { 0 } else { st[i - pad] }
        });
    }
    b
}

impl Plan {
    fn new(out: &[usize], a: &[usize], b: &[usize]) -> Plan {
        let (fa, fb) = (bstrides(a, out), bstrides(b, out));
        // Drop size-1 dims, then merge neighbours whose strides chain for both operands.
        let mut dims = Dims::new();
        let mut sa = Dims::new();
        let mut sb = Dims::new();
        for i in 0..out.len() {
            if out[i] == 1 {
                continue;
            }
            if !dims.is_empty() {
                let j = dims.len() - 1;
                if sa[j] == fa[i] * out[i] && sb[j] == fb[i] * out[i] {
                    dims[j] *= out[i];
                    sa[j] = fa[i];
                    sb[j] = fb[i];
                    continue;
                }
            }
            dims.push(out[i]);
            sa.push(fa[i]);
            sb.push(fb[i]);
        }
        let (inner, step_a, step_b) = match dims.pop() {
            Some(d) => (d, sa.pop().unwrap_or(0), sb.pop().unwrap_or(0)),
            None => (1, 0, 0),
        };
        Plan {
            outer: dims,
            sa,
            sb,
            inner,
            step_a,
            step_b,
        }
    }

    fn outer_count(&self) -> usize {
        self.outer.iter().product()
    }

    /// Calls `f(run, a_off, b_off)` for `count` runs from outer position `start`.
    fn for_runs(&self, start: usize, count: usize, mut f: impl FnMut(usize, usize, usize)) {
        if count == 0 {
            return;
        }
        let mut idx = Dims::filled(self.outer.len(), 0);
        unravel(start, &self.outer, &mut idx);
        let off = |idx: &[usize], s: &[usize]| idx.iter().zip(s).map(|(i, s)| i * s).sum::<usize>();
        for r in 0..count {
            f(r, off(&idx, &self.sa), off(&idx, &self.sb));
            next_index(&mut idx, &self.outer);
        }
    }
}

#[inline]
fn run_kernel<F: Fn(f32, f32) -> f32>(
    f: &F,
    o: &mut [f32],
    a: &[f32],
    sa: usize,
    b: &[f32],
    sb: usize,
) {
    let n = o.len();
    match (sa, sb) {
        (1, 1) => {
            for ((o, &a), &b) in o.iter_mut().zip(&a[..n]).zip(&b[..n]) {
                *o = f(a, b);
            }
        }
        (0, 1) => {
            let a = a[0];
            for (o, &b) in o.iter_mut().zip(&b[..n]) {
                *o = f(a, b);
            }
        }
        (1, 0) => {
            let b = b[0];
            for (o, &a) in o.iter_mut().zip(&a[..n]) {
                *o = f(a, b);
            }
        }
        _ => o.fill(f(a[0], b[0])),
    }
}

fn binary_with<F: Fn(f32, f32) -> f32 + Sync>(
    f: F,
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    out: &mut [f32],
    out_shape: &[usize],
) {
    let total: usize = out_shape.iter().product();
    assert_eq!(out.len(), total, "binary output length");
    assert_eq!(
        a.len(),
        a_shape.iter().product::<usize>(),
        "binary a length"
    );
    assert_eq!(
        b.len(),
        b_shape.iter().product::<usize>(),
        "binary b length"
    );
    if total == 0 {
        return;
    }
    if a_shape == b_shape {
        assert_eq!(a.len(), total);
        let go = |((o, a), b): ((&mut [f32], &[f32]), &[f32])| run_kernel(&f, o, a, 1, b, 1);
        if total >= PAR_ELEMS {
            let c = PAR_ELEMS / 2;
            out.par_chunks_mut(c)
                .zip(a.par_chunks(c))
                .zip(b.par_chunks(c))
                .for_each(go);
        } else {
            go(((out, a), b));
        }
        return;
    }
    let plan = Plan::new(out_shape, a_shape, b_shape);
    let inner = plan.inner;
    let runs = plan.outer_count();
    let chunk = |(ci, o): (usize, &mut [f32]), per: usize| {
        plan.for_runs(ci * per, o.len() / inner, |r, oa, ob| {
            run_kernel(
                &f,
                &mut o[r * inner..(r + 1) * inner],
                &a[oa..],
                plan.step_a,
                &b[ob..],
                plan.step_b,
            )
        })
    };
    if total >= PAR_ELEMS && runs > 1 {
        let per = (PAR_ELEMS / 2 / inner).clamp(1, runs);
        out.par_chunks_mut(per * inner)
            .enumerate()
            .for_each(|c| chunk(c, per));
    } else {
        chunk((0, out), runs);
    }
}

macro_rules! dispatch_binary {
    ($op:expr, $f:ident, $($args:expr),*) => {
        match $op {
            Binary::Add => $f(|a, b| a + b, $($args),*),
            Binary::Sub => $f(|a, b| a - b, $($args),*),
            Binary::Mul => $f(|a, b| a * b, $($args),*),
            Binary::Div => $f(|a, b| a / b, $($args),*),
            Binary::Pow => $f(|a: f32, b| a.powf(b), $($args),*),
        }
    };
}

/// `out = op(a, b)` with numpy broadcasting; `out_shape` is the broadcast shape.
pub fn binary(
    op: Binary,
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    out: &mut [f32],
    out_shape: &[usize],
) {
    dispatch_binary!(op, binary_with, a, a_shape, b, b_shape, out, out_shape)
}

fn binary_inplace_with<F: Fn(f32, f32) -> f32 + Sync>(
    f: F,
    acc: &mut [f32],
    acc_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
) {
    let total: usize = acc_shape.iter().product();
    assert_eq!(acc.len(), total, "binary_inplace length");
    assert_eq!(
        b.len(),
        b_shape.iter().product::<usize>(),
        "binary_inplace b length"
    );
    if total == 0 {
        return;
    }
    let plan = Plan::new(acc_shape, acc_shape, b_shape);
    let inner = plan.inner;
    let runs = plan.outer_count();
    let g = |a: f32, b: f32| f(a, b);
    let chunk = |(ci, o): (usize, &mut [f32]), per: usize| {
        plan.for_runs(ci * per, o.len() / inner, |r, _, ob| {
            let run = &mut o[r * inner..(r + 1) * inner];
            if plan.step_b == 1 {
                for (x, &y) in run.iter_mut().zip(&b[ob..ob + inner]) {
                    *x = g(*x, y);
                }
            } else {
                let y = b[ob];
                for x in run.iter_mut() {
                    *x = g(*x, y);
                }
            }
        })
    };
    if total >= PAR_ELEMS && runs > 1 {
        let per = (PAR_ELEMS / 2 / inner).clamp(1, runs);
        acc.par_chunks_mut(per * inner)
            .enumerate()
            .for_each(|c| chunk(c, per));
    } else {
        chunk((0, acc), runs);
    }
}

/// `acc = op(acc, b)` in place, `b` broadcast to `acc_shape`.
pub fn binary_inplace(
    op: Binary,
    acc: &mut [f32],
    acc_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
) {
    dispatch_binary!(op, binary_inplace_with, acc, acc_shape, b, b_shape)
}

/// Broadcasts `x` to `out_shape` (numpy rules), any element type.
pub fn expand<T: Copy + Send + Sync>(
    x: &[T],
    x_shape: &[usize],
    out: &mut [T],
    out_shape: &[usize],
) {
    let total: usize = out_shape.iter().product();
    assert_eq!(out.len(), total, "expand output length");
    assert_eq!(
        x.len(),
        x_shape.iter().product::<usize>(),
        "expand input length"
    );
    if total == 0 {
        return;
    }
    let plan = Plan::new(out_shape, x_shape, x_shape);
    let inner = plan.inner;
    plan.for_runs(0, plan.outer_count(), |r, oa, _| {
        let run = &mut out[r * inner..(r + 1) * inner];
        if plan.step_a == 1 {
            run.copy_from_slice(&x[oa..oa + inner]);
        } else {
            run.fill(x[oa]);
        }
    });
}

/// ONNX Sum: `out` = the broadcast sum of every input (left to right).
pub fn sum(inputs: &[(&[f32], &[usize])], out: &mut [f32], out_shape: &[usize]) {
    assert!(!inputs.is_empty(), "Sum of no inputs");
    expand(inputs[0].0, inputs[0].1, out, out_shape);
    for (x, s) in &inputs[1..] {
        binary_inplace(Binary::Add, out, out_shape, x, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_merges_channel_broadcast() {
        let p = Plan::new(&[2, 3, 4, 5], &[2, 3, 4, 5], &[3, 1, 1]);
        assert_eq!(p.inner, 20);
        assert_eq!((p.step_a, p.step_b), (1, 0));
        assert_eq!(&p.outer[..], [2, 3]);
    }
}

/// A float storage type of [`cast`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Float {
    F32,
    F16,
    BF16,
}

/// Converts `src` (elements of `from`) into `dst` (elements of `to`), rounding to nearest
/// even; NaN stays NaN, out-of-range values become infinities (IEEE conversion, as
/// `half` and the CUDA kernels do).
pub fn cast(src: &[u8], from: Float, dst: &mut [u8], to: Float) {
    use half::{bf16, f16};
    let size = |f: Float| if f == Float::F32 { 4 } else { 2 };
    let (sf, st) = (size(from), size(to));
    let n = src.len() / sf;
    assert_eq!(dst.len(), n * st, "cast lengths");
    // Element by element (the `half` crate's scalar conversions, which the CUDA kernel
    // matches bit for bit), the dtype pair dispatched once per chunk, chunks in parallel.
    let go = |(d, s): (&mut [u8], &[u8])| {
        let read = |i: usize| -> f32 {
            match from {
                Float::F32 => {
                    f32::from_ne_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]])
                }
                Float::F16 => f16::from_ne_bytes([s[2 * i], s[2 * i + 1]]).to_f32(),
                Float::BF16 => bf16::from_ne_bytes([s[2 * i], s[2 * i + 1]]).to_f32(),
            }
        };
        let m = s.len() / sf;
        match to {
            Float::F32 => {
                for (i, o) in d.chunks_exact_mut(4).enumerate().take(m) {
                    o.copy_from_slice(&read(i).to_ne_bytes());
                }
            }
            Float::F16 => {
                for (i, o) in d.chunks_exact_mut(2).enumerate().take(m) {
                    o.copy_from_slice(&f16::from_f32(read(i)).to_ne_bytes());
                }
            }
            Float::BF16 => {
                for (i, o) in d.chunks_exact_mut(2).enumerate().take(m) {
                    o.copy_from_slice(&bf16::from_f32(read(i)).to_ne_bytes());
                }
            }
        }
    };
    const ELEMS: usize = PAR_ELEMS / 2;
    if n >= PAR_ELEMS {
        dst.par_chunks_mut(ELEMS * st)
            .zip(src.par_chunks(ELEMS * sf))
            .for_each(go);
    } else {
        go((dst, src));
    }
}
