//! ReduceSum / ReduceMean over any set of axes (f64 accumulation).

use super::{Dims, f64_scratch, f64_scratch_len, next_index, strides};

/// Workspace (f32 elements) [`reduce`] and [`sum_to`] need for `n_out` output elements (their
/// f64 accumulators).
pub fn reduce_workspace_len(n_out: usize) -> usize {
    f64_scratch_len(n_out)
}

/// Sums (or averages, with `mean`) `x` over `axes` (normalised, distinct). `out` has the
/// non-reduced elements in order (the keepdims and non-keepdims layouts are the same). An
/// empty reduction gives 0 for a sum and NaN for a mean. `ws`: at least
/// [`reduce_workspace_len`]`(out.len())` elements (the f64 accumulators).
pub fn reduce(
    x: &[f32],
    x_shape: &[usize],
    axes: &[usize],
    mean: bool,
    out: &mut [f32],
    ws: &mut [f32],
) {
    let r = x_shape.len();
    assert_eq!(
        x.len(),
        x_shape.iter().product::<usize>(),
        "reduce input length"
    );
    let mut kept = Dims::new();
    for (i, &d) in x_shape.iter().enumerate() {
        kept.push(if axes.contains(&i) { 1 } else { d });
    }
    let n_out: usize = kept.iter().product();
    assert_eq!(out.len(), n_out, "reduce output length");
    let n_red: usize = axes.iter().map(|&a| x_shape[a]).product();
    let (acc, _) = f64_scratch(ws, n_out);
    acc.fill(0.0);
    if !x.is_empty() {
        // Walk x in order; the accumulator index uses strides zeroed on reduced axes.
        let ks = strides(&kept);
        let mut dims = Dims::new();
        let mut so = Dims::new();
        for i in 0..r {
            let (d, s) = (x_shape[i], if axes.contains(&i) { 0 } else { ks[i] });
            if d == 1 {
                continue;
            }
            if let Some(j) = dims.len().checked_sub(1)
                && so[j] == s * d
            {
                dims[j] *= d;
                so[j] = s;
                continue;
            }
            dims.push(d);
            so.push(s);
        }
        let (inner, step) = match (dims.pop(), so.pop()) {
            (Some(d), Some(s)) => (d, s),
            _ => (1, 0),
        };
        let mut idx = Dims::filled(dims.len(), 0);
        let mut i = 0;
        loop {
            let o: usize = idx.iter().zip(&so).map(|(i, s)| i * s).sum();
            let run = &x[i..i + inner];
            if step == 0 {
                acc[o] += run.iter().map(|&v| v as f64).sum::<f64>();
            } else {
                for (a, &v) in acc[o..o + inner].iter_mut().zip(run) {
                    *a += v as f64;
                }
            }
            i += inner;
            if !next_index(&mut idx, &dims) {
                break;
            }
        }
    }
    for (o, &mut a) in out.iter_mut().zip(acc) {
        *o = if mean {
            (a / n_red as f64) as f32
        } else {
            a as f32
        };
    }
}

/// The adjoint of broadcasting `out_shape` to `x_shape` (numpy rules): sums `x` over the
/// dimensions broadcasting added (leading) or stretched (size 1 in `out_shape`). f64
/// accumulation in a fixed order. `ws`: at least [`reduce_workspace_len`]`(out.len())`.
pub fn sum_to(x: &[f32], x_shape: &[usize], out: &mut [f32], out_shape: &[usize], ws: &mut [f32]) {
    let r = x_shape.len();
    assert!(
        out_shape.len() <= r,
        "sum_to: target rank exceeds input rank"
    );
    let pad = r - out_shape.len();
    let mut axes = Dims::new();
    for i in 0..r {
        let red = i < pad || {
            let d = out_shape[i - pad];
            assert!(
                d == x_shape[i] || d == 1,
                "sum_to: {out_shape:?} does not broadcast to {x_shape:?}"
            );
            d == 1 && x_shape[i] != 1
        };
        if red {
            axes.push(i);
        }
    }
    reduce(x, x_shape, &axes, false, out, ws);
}
