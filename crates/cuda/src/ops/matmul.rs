//! numpy MatMul and ONNX Gemm through the device's SGEMM (cuBLAS on the GPU), with the
//! node's planned workspace as the GEMM's scratch.

use lowmem_ir::Op;

use super::{DevCall, OpResult};
use crate::args::Dims;
use crate::device::{Device, Gemm};

pub(super) fn launch(dev: &dyn Device, c: &DevCall) -> OpResult {
    let ws = c.ws.unwrap_or((0, 0));
    match c.op {
        Op::Gemm(a) => {
            let (x, w) = (c.f32_in(0)?, c.f32_in(1)?);
            let (xs, wsh) = (c.shape(0), c.shape(1));
            if xs.len() != 2 || wsh.len() != 2 {
                return Err("Gemm operands are matrices".into());
            }
            let (m, k) = if a.trans_a {
                (xs[1], xs[0])
            } else {
                (xs[0], xs[1])
            };
            let n = if a.trans_b { wsh[0] } else { wsh[1] };
            let y = c.output(0)?;
            let beta = if c.n_inputs() == 3 && a.beta != 0.0 {
                super::movement::expand(dev, c.f32_in(2)?, c.shape(2), y, &[m, n], 4)?;
                a.beta
            } else {
                0.0
            };
            let g = Gemm {
                trans_a: a.trans_a,
                trans_b: a.trans_b,
                m,
                n,
                k,
                alpha: a.alpha,
                a: x,
                lda: xs[1],
                stride_a: 0,
                b: w,
                ldb: wsh[1],
                stride_b: 0,
                beta,
                c: y,
                ldc: n,
                stride_c: 0,
                batch: 1,
                workspace: ws,
            };
            // SAFETY: the operands are the node's planned tensors, of the shapes above.
            Ok(unsafe { dev.gemm(&g) }?)
        }
        Op::MatMul => {
            let (a, b, y) = (c.f32_in(0)?, c.f32_in(1)?, c.output(0)?);
            let (sa, sb) = (c.shape(0), c.shape(1));
            let a2: Vec<usize> = if sa.len() == 1 {
                vec![1, sa[0]]
            } else {
                sa.to_vec()
            };
            let b2: Vec<usize> = if sb.len() == 1 {
                vec![sb[0], 1]
            } else {
                sb.to_vec()
            };
            let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
            let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
            if k != k2 {
                return Err(format!("MatMul inner dimensions {k} and {k2} differ").into());
            }
            let (ab, bb) = (&a2[..a2.len() - 2], &b2[..b2.len() - 2]);
            let r = ab.len().max(bb.len());
            let pad = |s: &[usize]| -> Vec<usize> {
                let mut v = vec![1; r - s.len()];
                v.extend_from_slice(s);
                v
            };
            let (pa, pb) = (pad(ab), pad(bb));
            let mut batch = Vec::with_capacity(r);
            for i in 0..r {
                if pa[i] != pb[i] && pa[i] != 1 && pb[i] != 1 {
                    return Err(
                        format!("MatMul batch dims {ab:?} and {bb:?} do not broadcast").into(),
                    );
                }
                batch.push(if pa[i] == 1 { pb[i] } else { pa[i] });
            }
            let nb: usize = batch.iter().product();
            if nb == 0 || m == 0 || n == 0 {
                return Ok(());
            }
            let one_b = bb.iter().product::<usize>() == 1;
            let mk = (m * k) as i64;
            let kn = (k * n) as i64;
            let mut g = Gemm {
                trans_a: false,
                trans_b: false,
                m,
                n,
                k,
                alpha: 1.0,
                a,
                lda: k,
                stride_a: 0,
                b,
                ldb: n,
                stride_b: 0,
                beta: 0.0,
                c: y,
                ldc: n,
                stride_c: 0,
                batch: 1,
                workspace: ws,
            };
            if one_b && ab.iter().product::<usize>() == nb {
                // B shared by every batch of A: one tall GEMM.
                g.m = nb * m;
                // SAFETY: planned tensors of these shapes.
                return Ok(unsafe { dev.gemm(&g) }?);
            }
            // Batch strides per broadcast dimension (0 where broadcast), merged; one strided
            // batched call per index of the outer merged dimensions.
            let strides = |p: &[usize], per: i64| -> Vec<i64> {
                let mut st = vec![0i64; r];
                let mut acc = per;
                for i in (0..r).rev() {
                    st[i] = if p[i] == 1 { 0 } else { acc };
                    acc *= p[i] as i64;
                }
                st
            };
            let (st_a, st_b) = (strides(&pa, mk), strides(&pb, kn));
            let d = Dims::from_strides(&batch, &st_a, &st_b)?;
            let rank = d.rank.max(1) as usize;
            let inner = d.shape[rank - 1] as usize;
            let outer = nb / inner.max(1);
            g.batch = inner;
            g.stride_a = d.sa[rank - 1] as usize;
            g.stride_b = d.sb[rank - 1] as usize;
            g.stride_c = m * n;
            for o in 0..outer {
                // The outer index's offsets in A, B (elements) and C.
                let (mut rem, mut oa, mut ob) = (o as i64, 0i64, 0i64);
                for i in (0..rank - 1).rev() {
                    let s = d.shape[i];
                    oa += (rem % s) * d.sa[i];
                    ob += (rem % s) * d.sb[i];
                    rem /= s;
                }
                g.a = a + 4 * oa as u64;
                g.b = b + 4 * ob as u64;
                g.c = y + 4 * (o * inner * m * n) as u64;
                // SAFETY: planned tensors of these shapes.
                unsafe { dev.gemm(&g) }?;
            }
            Ok(())
        }
        other => Err(format!("{} is not a GEMM", other.name()).into()),
    }
}
