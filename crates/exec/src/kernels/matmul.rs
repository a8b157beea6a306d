//! Matrix products through the `gemm` crate.

use gemm::Parallelism;
use lowmem_ir::shape::count;
use rayon::prelude::*;

use super::{Dims, strides, unravel};

/// Multiply-adds above which one GEMM is split over the rayon pool.
const PAR_MACS: usize = 1 << 18;

fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    if m.saturating_mul(n).saturating_mul(k) >= PAR_MACS && rayon::current_num_threads() > 1 {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    }
}

/// BLAS-style `c = alpha * op(a) * op(b) + beta * c` on contiguous row-major matrices.
///
/// `a` is `m x k` (`k x m` when `trans_a`), `b` is `k x n` (`n x k` when `trans_b`), `c` is
/// `m x n`. With `beta == 0` the old contents of `c` are not read (NaNs there do not leak).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    trans_a: bool,
    b: &[f32],
    trans_b: bool,
    beta: f32,
    c: &mut [f32],
) {
    assert!(
        a.len() >= m * k,
        "sgemm: a has {} < {m}x{k} elements",
        a.len()
    );
    assert!(
        b.len() >= k * n,
        "sgemm: b has {} < {k}x{n} elements",
        b.len()
    );
    assert!(
        c.len() >= m * n,
        "sgemm: c has {} < {m}x{n} elements",
        c.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    let (a_rs, a_cs) = if trans_a {
        (1, m as isize)
    } else {
        (k as isize, 1)
    };
    let (b_rs, b_cs) = if trans_b {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    // SAFETY: the asserts above bound every access: a, b and c are read/written only at
    // offsets below m*k, k*n and m*n for the strides given; c is uniquely borrowed.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            beta != 0.0,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            // gemm computes dst = alpha * dst + beta * lhs * rhs.
            beta,
            alpha,
            false,
            false,
            false,
            parallelism(m, n, k),
        )
    }
}

/// numpy `matmul` (ONNX MatMul): batched with broadcast batch dimensions; a 1-D `a` is a row
/// vector and a 1-D `b` a column vector, their axis removed from the output. `out` has
/// [`lowmem_ir::Op::infer`]'s output shape.
pub fn matmul(a: &[f32], a_shape: &[usize], b: &[f32], b_shape: &[usize], out: &mut [f32]) {
    assert!(
        !a_shape.is_empty() && !b_shape.is_empty(),
        "matmul of a scalar"
    );
    let a2 = if a_shape.len() == 1 {
        Dims::from_slice(&[1, a_shape[0]])
    } else {
        Dims::from_slice(a_shape)
    };
    let b2 = if b_shape.len() == 1 {
        Dims::from_slice(&[b_shape[0], 1])
    } else {
        Dims::from_slice(b_shape)
    };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    assert_eq!(k, k2, "matmul inner dimensions");
    let (ab, bb) = (&a2[..a2.len() - 2], &b2[..b2.len() - 2]);
    // The broadcast batch shape (numpy rules).
    let r = ab.len().max(bb.len());
    let mut batch = Dims::new();
    for i in 0..r {
        let da = if i + ab.len() >= r {
            ab[i + ab.len() - r]
        } else {
            1
        };
        let db = if i + bb.len() >= r {
            bb[i + bb.len() - r]
        } else {
            1
        };
        assert!(
            da == db || da == 1 || db == 1,
            "matmul batch dims {ab:?} and {bb:?} do not broadcast"
        );
        batch.push(if da == 1 { db } else { da });
    }
    let nb = count(&batch);
    assert_eq!(a.len(), count(&a2));
    assert_eq!(b.len(), count(&b2));
    assert_eq!(out.len(), nb * m * n);
    if nb == 0 || m == 0 || n == 0 {
        return;
    }
    // b shared by every batch and a not broadcast: one tall GEMM.
    if count(bb) == 1 && count(ab) == nb {
        sgemm(nb * m, n, k, 1.0, a, false, b, false, 0.0, out);
        return;
    }
    // Batch strides of a and b (in matrices), 0 on broadcast dims.
    let bstr = |s: &[usize]| -> Dims {
        let st = strides(s);
        let pad = r - s.len();
        let mut o = Dims::new();
        for i in 0..r {
            o.push(if i < pad || s[i - pad] == 1 {
                0
            } else {
                st[i - pad]
            });
        }
        o
    };
    let (sa, sb) = (bstr(ab), bstr(bb));
    // Batch `bi`'s matrix offsets into a and b.
    let offsets = |bi: usize| -> (usize, usize) {
        let mut idx = Dims::filled(r, 0);
        unravel(bi, &batch, &mut idx);
        let oa: usize = idx.iter().zip(sa.iter()).map(|(i, s)| i * s).sum();
        let ob: usize = idx.iter().zip(sb.iter()).map(|(i, s)| i * s).sum();
        (oa * m * k, ob * k * n)
    };
    let one = |(bi, c): (usize, &mut [f32])| {
        let (oa, ob) = offsets(bi);
        sgemm(m, n, k, 1.0, &a[oa..], false, &b[ob..], false, 0.0, c);
    };
    if m * n * k < PAR_MACS && nb > 1 {
        out.par_chunks_mut(m * n).enumerate().for_each(one);
    } else {
        out.chunks_mut(m * n).enumerate().for_each(one);
    }
}

/// ONNX Gemm: `out = alpha * op(a) * op(b) + beta * c`, `a`/`b` matrices, `c` optional and
/// unidirectionally broadcast to `[M, N]`.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    c: Option<(&[f32], &[usize])>,
    alpha: f32,
    beta: f32,
    trans_a: bool,
    trans_b: bool,
    out: &mut [f32],
) {
    assert!(
        a_shape.len() == 2 && b_shape.len() == 2,
        "gemm operands are matrices"
    );
    let (m, k) = if trans_a {
        (a_shape[1], a_shape[0])
    } else {
        (a_shape[0], a_shape[1])
    };
    let n = if trans_b { b_shape[0] } else { b_shape[1] };
    let beta = match c {
        Some((c, cs)) if beta != 0.0 => {
            super::expand(c, cs, out, &[m, n]);
            beta
        }
        _ => 0.0,
    };
    sgemm(m, n, k, alpha, a, trans_a, b, trans_b, beta, out);
}
