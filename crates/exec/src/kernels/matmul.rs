//! numpy MatMul and ONNX Gemm over our SGEMM ([`super::sgemm`]).

use lowmem_ir::scratch::{matmul_plan, sgemm_workspace_len};
use lowmem_ir::shape::count;
use rayon::prelude::*;

use super::sgemm::sgemm;
use super::{Dims, strides, unravel};

pub use lowmem_ir::scratch::matmul_workspace_len;

/// numpy `matmul` (ONNX MatMul): batched with broadcast batch dimensions; a 1-D `a` is a row
/// vector and a 1-D `b` a column vector, their axis removed from the output. `out` has
/// [`lowmem_ir::Op::infer`]'s output shape. `ws`: at least [`matmul_workspace_len`]
/// elements.
pub fn matmul(
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    out: &mut [f32],
    ws: &mut [f32],
) {
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
    let Some([_, _, _, gemms, groups]) = matmul_plan(a_shape, b_shape) else {
        unreachable!("matmul shapes checked above")
    };
    // b shared by every batch and a not broadcast: one tall GEMM.
    if gemms == 1 {
        sgemm(nb * m, n, k, 1.0, a, false, b, false, 0.0, out, ws);
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
    // Batches in `groups` contiguous groups (in parallel when more than one), each with its
    // own GEMM workspace.
    let wl = sgemm_workspace_len(m, n, k);
    assert!(ws.len() >= groups * wl, "matmul workspace too small");
    let per = nb.div_ceil(groups);
    let group = |(gi, (c, ws)): (usize, (&mut [f32], &mut [f32]))| {
        for (j, c) in c.chunks_mut(m * n).enumerate() {
            let (oa, ob) = offsets(gi * per + j);
            sgemm(m, n, k, 1.0, &a[oa..], false, &b[ob..], false, 0.0, c, ws);
        }
    };
    let ws = &mut ws[..groups * wl];
    // (wl == 0: k == 0, nothing worth splitting.)
    if groups > 1 && wl > 0 {
        out.par_chunks_mut(per * m * n)
            .zip(ws.par_chunks_mut(wl))
            .enumerate()
            .for_each(group);
    } else {
        group((0, (out, ws)));
    }
}

/// ONNX Gemm: `out = alpha * op(a) * op(b) + beta * c`, `a`/`b` matrices, `c` optional and
/// unidirectionally broadcast to `[M, N]`. `ws`: at least [`sgemm_workspace_len`]`(M, N, K)`.
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
    ws: &mut [f32],
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
    sgemm(m, n, k, alpha, a, trans_a, b, trans_b, beta, out, ws);
}
