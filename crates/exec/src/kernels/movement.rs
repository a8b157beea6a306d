//! Data movement for any element type: transpose and concat.

use super::{Dims, next_index, strides};

/// General N-d transpose: `out` dimension `i` is `x` dimension `perm[i]`.
pub fn transpose<T: Copy>(x: &[T], x_shape: &[usize], perm: &[usize], out: &mut [T]) {
    let r = x_shape.len();
    assert_eq!(perm.len(), r, "transpose perm rank");
    assert_eq!(
        x.len(),
        x_shape.iter().product::<usize>(),
        "transpose input length"
    );
    assert_eq!(out.len(), x.len(), "transpose output length");
    if x.is_empty() {
        return;
    }
    let xs = strides(x_shape);
    // Output dims with their input strides; drop size 1, merge chains.
    let mut dims = Dims::new();
    let mut st = Dims::new();
    for &p in perm {
        let (d, s) = (x_shape[p], xs[p]);
        if d == 1 {
            continue;
        }
        if let Some(j) = dims.len().checked_sub(1)
            && st[j] == s * d
        {
            dims[j] *= d;
            st[j] = s;
            continue;
        }
        dims.push(d);
        st.push(s);
    }
    let (inner, step) = match (dims.pop(), st.pop()) {
        (Some(d), Some(s)) => (d, s),
        _ => (1, 1),
    };
    let mut idx = Dims::filled(dims.len(), 0);
    let mut o = 0;
    loop {
        let base: usize = idx.iter().zip(&st).map(|(i, s)| i * s).sum();
        let run = &mut out[o..o + inner];
        if step == 1 {
            run.copy_from_slice(&x[base..base + inner]);
        } else {
            for (j, v) in run.iter_mut().enumerate() {
                *v = x[base + j * step];
            }
        }
        o += inner;
        if !next_index(&mut idx, &dims) {
            break;
        }
    }
}

/// Concatenates `inputs` (data, shape) along `axis` into `out`.
pub fn concat<T: Copy>(inputs: &[(&[T], &[usize])], axis: usize, out: &mut [T]) {
    assert!(!inputs.is_empty(), "concat of no inputs");
    let s0 = inputs[0].1;
    assert!(axis < s0.len(), "concat axis");
    let outer: usize = s0[..axis].iter().product();
    let inner: usize = s0[axis + 1..].iter().product();
    let total: usize = inputs
        .iter()
        .map(|(x, s)| {
            assert_eq!(x.len(), s.iter().product::<usize>(), "concat input length");
            x.len()
        })
        .sum();
    assert_eq!(out.len(), total, "concat output length");
    let mut o = 0;
    for i in 0..outer {
        for (x, s) in inputs {
            let n = s[axis] * inner;
            out[o..o + n].copy_from_slice(&x[i * n..(i + 1) * n]);
            o += n;
        }
    }
}

/// Elements `start..end` of `x` along `axis`, any element type.
pub fn slice<T: Copy>(
    x: &[T],
    x_shape: &[usize],
    axis: usize,
    start: usize,
    end: usize,
    out: &mut [T],
) {
    assert!(axis < x_shape.len(), "slice axis");
    assert!(start <= end && end <= x_shape[axis], "slice range");
    assert_eq!(
        x.len(),
        x_shape.iter().product::<usize>(),
        "slice input length"
    );
    let outer: usize = x_shape[..axis].iter().product();
    let inner: usize = x_shape[axis + 1..].iter().product();
    let (n, m) = (x_shape[axis] * inner, (end - start) * inner);
    assert_eq!(out.len(), outer * m, "slice output length");
    if m == 0 {
        return;
    }
    for (o, xi) in out.chunks_mut(m).zip(x.chunks(n)) {
        o.copy_from_slice(&xi[start * inner..end * inner]);
    }
}
