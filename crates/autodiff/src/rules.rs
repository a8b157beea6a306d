//! The gradient of every op: given the gradients of a node's outputs, the gradient
//! contribution to each of its inputs, as IR nodes. Rules read forward tensors (inputs or
//! outputs of the node) directly; `Builder::saved` lists them afterwards.

use lowmem_ir::{ConvAttrs, Node, NodeId, Op, ReduceAttrs, TensorId, reshape_target};

use crate::AutodiffError;
use crate::builder::Builder;

type Grads = Vec<Option<TensorId>>;

fn no_grad(node: &Node, why: &str) -> AutodiffError {
    AutodiffError::NoGradient {
        node: node.name.clone(),
        op: node.op.name().to_string(),
        why: why.to_string(),
    }
}

/// Sums `g` down to `shape` where broadcasting stretched it.
fn sum_to(
    b: &mut Builder,
    hint: &str,
    g: TensorId,
    shape: &[usize],
) -> Result<TensorId, AutodiffError> {
    if b.g.tensor(g).shape == shape {
        return Ok(g);
    }
    b.emit1(
        hint,
        Op::SumTo {
            shape: shape.to_vec(),
        },
        &[g],
    )
}

fn reshape(
    b: &mut Builder,
    hint: &str,
    g: TensorId,
    shape: &[usize],
) -> Result<TensorId, AutodiffError> {
    if b.g.tensor(g).shape == shape {
        return Ok(g);
    }
    b.emit1(
        hint,
        Op::Reshape {
            shape: shape.iter().map(|&d| d as i64).collect(),
            allowzero: true,
        },
        &[g],
    )
}

/// Swaps the last two axes.
fn transpose_last2(b: &mut Builder, hint: &str, t: TensorId) -> Result<TensorId, AutodiffError> {
    let r = b.g.tensor(t).shape.len();
    let mut perm: Vec<usize> = (0..r).collect();
    perm.swap(r - 2, r - 1);
    b.emit1(hint, Op::Transpose { perm: Some(perm) }, &[t])
}

pub(crate) fn gradient(
    b: &mut Builder,
    _id: NodeId,
    node: &Node,
    dys: &[Option<TensorId>],
    needs: &[bool],
) -> Result<Grads, AutodiffError> {
    let h = format!("{}.grad", node.name);
    let h = h.as_str();
    let x = |i: usize| node.inputs[i];
    let y = node.outputs[0];
    let shape = |b: &Builder, t: TensorId| b.g.tensor(t).shape.clone();
    let Some(dy) = dys[0] else {
        // Only auxiliary outputs (statistics, masks) have gradients: they are not
        // differentiable quantities of the step.
        return Err(no_grad(
            node,
            "gradient flows only into an auxiliary output",
        ));
    };
    if let Some(act) = node.op.epilogue() {
        // The activation's own rule on the fused output, then the op's rule without it. The
        // pre-activation never existed as a tensor: only activations whose gradient reads
        // the output alone are fused (`lowmem_rewrite::fuse`).
        let act_node = Node {
            name: node.name.clone(),
            op: act.op(),
            inputs: vec![y],
            outputs: vec![y],
        };
        let dz = gradient(b, _id, &act_node, dys, &[true])?[0];
        let bare = Node {
            op: node.op.with_epilogue(None),
            ..node.clone()
        };
        let mut dys = dys.to_vec();
        dys[0] = dz;
        return gradient(b, _id, &bare, &dys, needs);
    }
    let n_in = node.inputs.len();
    let mut out: Grads = vec![None; n_in];
    match &node.op {
        Op::Identity | Op::Dropout { .. } => out[0] = Some(dy),
        Op::Neg => out[0] = Some(b.emit1(h, Op::Neg, &[dy])?),
        // The gradient flows back in the input's type.
        Op::Cast { .. } => {
            let to = b.g.tensor(node.inputs[0]).dtype;
            out[0] = Some(b.emit1(h, Op::Cast { to }, &[dy])?)
        }
        Op::Scale { alpha } => out[0] = Some(b.emit1(h, Op::Scale { alpha: *alpha }, &[dy])?),
        Op::Relu => out[0] = Some(b.emit1(h, Op::ReluGrad, &[dy, y])?),
        Op::Sigmoid => out[0] = Some(b.emit1(h, Op::SigmoidGrad, &[dy, y])?),
        Op::Tanh => out[0] = Some(b.emit1(h, Op::TanhGrad, &[dy, y])?),
        Op::Sqrt => out[0] = Some(b.emit1(h, Op::SqrtGrad, &[dy, y])?),
        Op::LeakyRelu { alpha } => {
            out[0] = Some(b.emit1(h, Op::LeakyReluGrad { alpha: *alpha }, &[dy, x(0)])?)
        }
        Op::Erf => out[0] = Some(b.emit1(h, Op::ErfGrad, &[dy, x(0)])?),
        Op::Gelu { approximate } => {
            out[0] = Some(b.emit1(
                h,
                Op::GeluGrad {
                    approximate: *approximate,
                },
                &[dy, x(0)],
            )?)
        }
        Op::Clip(a) => out[0] = Some(b.emit1(h, Op::ClipGrad(a.clone()), &[dy, x(0)])?),
        Op::DropoutTrain { ratio, seed } => {
            out[0] = Some(b.emit1(
                h,
                Op::DropoutGrad {
                    ratio: *ratio,
                    seed: *seed,
                },
                &[dy, x(1)],
            )?)
        }
        Op::Add | Op::Sub | Op::Sum => {
            for i in 0..n_in {
                if needs[i] {
                    let s = shape(b, x(i));
                    let mut g = if matches!(node.op, Op::Sub) && i == 1 {
                        b.emit1(h, Op::Neg, &[dy])?
                    } else {
                        dy
                    };
                    g = sum_to(b, h, g, &s)?;
                    out[i] = Some(g);
                }
            }
        }
        Op::Mul => {
            for i in 0..2 {
                if needs[i] {
                    let p = b.emit1(h, Op::Mul, &[dy, x(1 - i)])?;
                    let s = shape(b, x(i));
                    out[i] = Some(sum_to(b, h, p, &s)?);
                }
            }
        }
        Op::Div => {
            if needs[0] {
                let q = b.emit1(h, Op::Div, &[dy, x(1)])?;
                let s = shape(b, x(0));
                out[0] = Some(sum_to(b, h, q, &s)?);
            }
            if needs[1] {
                // d(a/b)/db = -(a/b)/b = -y/b.
                let p = b.emit1(h, Op::Mul, &[dy, y])?;
                let q = b.emit1(h, Op::Div, &[p, x(1)])?;
                let n = b.emit1(h, Op::Neg, &[q])?;
                let s = shape(b, x(1));
                out[1] = Some(sum_to(b, h, n, &s)?);
            }
        }
        Op::Pow => {
            let g = b.emit(h, Op::PowGrad, &[dy, x(0), x(1)], 2)?;
            for i in 0..2 {
                if needs[i] {
                    let s = shape(b, x(i));
                    out[i] = Some(sum_to(b, h, g[i], &s)?);
                }
            }
        }
        Op::MatMul => {
            let (sa, sb) = (shape(b, x(0)), shape(b, x(1)));
            // Promote 1-D operands as numpy does, so both sides are batched matrices.
            let a2: Vec<usize> = if sa.len() == 1 {
                vec![1, sa[0]]
            } else {
                sa.clone()
            };
            let b2: Vec<usize> = if sb.len() == 1 {
                vec![sb[0], 1]
            } else {
                sb.clone()
            };
            let mut y2 = lowmem_ir::matmul_shape(&a2, &b2).map_err(|e| no_grad(node, &e))?;
            if y2.len() < 2 {
                y2 = vec![1, 1];
            }
            let dy2 = reshape(b, h, dy, &y2)?;
            if needs[0] {
                let bb = reshape(b, h, x(1), &b2)?;
                let bt = transpose_last2(b, h, bb)?;
                let da = b.emit1(h, Op::MatMul, &[dy2, bt])?;
                let da = sum_to(b, h, da, &a2)?;
                out[0] = Some(reshape(b, h, da, &sa)?);
            }
            if needs[1] && b2.len() == 2 && a2.len() > 2 {
                // A weight shared by every batch row (`[.., K] x [K, N]`): one GEMM over
                // the flattened rows, `dB = A^T dY`, instead of a per-batch product as large
                // as the batch summed afterwards.
                let rows: usize = a2[..a2.len() - 1].iter().product();
                let af = reshape(b, h, x(0), &[rows, a2[a2.len() - 1]])?;
                let dyf = reshape(b, h, dy2, &[rows, b2[1]])?;
                let gemm = Op::Gemm(lowmem_ir::GemmAttrs {
                    alpha: 1.0,
                    beta: 0.0,
                    trans_a: true,
                    trans_b: false,
                    activation: None,
                });
                let db = b.emit1(h, gemm, &[af, dyf])?;
                out[1] = Some(reshape(b, h, db, &sb)?);
            } else if needs[1] {
                let aa = reshape(b, h, x(0), &a2)?;
                let at = transpose_last2(b, h, aa)?;
                let db = b.emit1(h, Op::MatMul, &[at, dy2])?;
                let db = sum_to(b, h, db, &b2)?;
                out[1] = Some(reshape(b, h, db, &sb)?);
            }
        }
        Op::Gemm(a) => {
            use lowmem_ir::GemmAttrs;
            let g = |trans_a, trans_b| {
                Op::Gemm(GemmAttrs {
                    alpha: a.alpha,
                    beta: 0.0,
                    trans_a,
                    trans_b,
                    activation: None,
                })
            };
            if needs[0] {
                out[0] = Some(if a.trans_a {
                    b.emit1(h, g(a.trans_b, true), &[x(1), dy])?
                } else {
                    b.emit1(h, g(false, !a.trans_b), &[dy, x(1)])?
                });
            }
            if needs[1] {
                out[1] = Some(if a.trans_b {
                    b.emit1(h, g(true, a.trans_a), &[dy, x(0)])?
                } else {
                    b.emit1(h, g(!a.trans_a, false), &[x(0), dy])?
                });
            }
            if n_in == 3 && needs[2] {
                let s = if a.beta == 1.0 {
                    dy
                } else {
                    b.emit1(h, Op::Scale { alpha: a.beta }, &[dy])?
                };
                let cs = shape(b, x(2));
                out[2] = Some(sum_to(b, h, s, &cs)?);
            }
        }
        Op::Conv(c) => {
            let (xs, ws) = (shape(b, x(0)), shape(b, x(1)));
            let conv = ConvAttrs {
                kernel_shape: ws[2..].to_vec(),
                ..c.clone()
            };
            if needs[0] {
                out[0] = Some(b.emit1(
                    h,
                    Op::ConvBackwardData {
                        conv: conv.clone(),
                        input_shape: xs.clone(),
                    },
                    &[dy, x(1)],
                )?);
            }
            if needs[1] {
                out[1] = Some(b.emit1(
                    h,
                    Op::ConvBackwardFilter {
                        conv,
                        weight_shape: ws.clone(),
                    },
                    &[dy, x(0)],
                )?);
            }
            if n_in == 3 && needs[2] {
                let axes: Vec<i64> = std::iter::once(0).chain(2..xs.len() as i64).collect();
                out[2] = Some(b.emit1(
                    h,
                    Op::ReduceSum(ReduceAttrs {
                        axes: Some(axes),
                        keepdims: false,
                    }),
                    &[dy],
                )?);
            }
        }
        Op::BatchNormalization(a) | Op::BatchNormTrain(a) => {
            if needs[3] || needs[4] {
                return Err(no_grad(
                    node,
                    "the mean and variance inputs are statistics; they have no gradient",
                ));
            }
            let training = matches!(node.op, Op::BatchNormTrain(_));
            let (m, v) = if training {
                (node.outputs[1], node.outputs[2])
            } else {
                (x(3), x(4))
            };
            let g = b.emit(
                h,
                Op::BatchNormGrad {
                    epsilon: a.epsilon,
                    training,
                },
                &[dy, x(0), x(1), m, v],
                3,
            )?;
            out[0] = Some(g[0]);
            out[1] = Some(g[1]);
            out[2] = Some(g[2]);
        }
        Op::LayerNormalization { axis, epsilon } => {
            let g = b.emit(
                h,
                Op::LayerNormGrad {
                    axis: *axis,
                    epsilon: *epsilon,
                },
                &[dy, x(0), x(1)],
                3,
            )?;
            out[0] = Some(g[0]);
            out[1] = Some(g[1]);
            if n_in == 3 {
                let s = shape(b, x(2));
                out[2] = Some(reshape(b, h, g[2], &s)?);
            }
        }
        Op::MaxPool(p) => out[0] = Some(b.emit1(h, Op::MaxPoolGrad(p.clone()), &[dy, x(0)])?),
        Op::AveragePool(p) => {
            let xs = shape(b, x(0));
            out[0] = Some(b.emit1(
                h,
                Op::AveragePoolGrad {
                    pool: p.clone(),
                    input_shape: xs,
                },
                &[dy],
            )?)
        }
        Op::GlobalAveragePool => {
            let xs = shape(b, x(0));
            out[0] = Some(b.emit1(h, Op::GlobalAveragePoolGrad { input_shape: xs }, &[dy])?)
        }
        Op::Lrn(a) => out[0] = Some(b.emit1(h, Op::LrnGrad(a.clone()), &[dy, x(0), y])?),
        Op::Softmax(a) => out[0] = Some(b.emit1(h, Op::SoftmaxGrad(a.clone()), &[dy, y])?),
        Op::LogSoftmax(a) => out[0] = Some(b.emit1(h, Op::LogSoftmaxGrad(a.clone()), &[dy, y])?),
        Op::Concat { axis } => {
            let r = shape(b, y).len() as i64;
            let ax = (if *axis < 0 { axis + r } else { *axis }) as usize;
            let mut start = 0;
            for i in 0..n_in {
                let len = shape(b, x(i))[ax];
                if needs[i] {
                    out[i] = Some(b.emit1(
                        h,
                        Op::Slice {
                            axis: ax,
                            start,
                            end: start + len,
                        },
                        &[dy],
                    )?);
                }
                start += len;
            }
        }
        Op::Reshape { .. } | Op::Flatten { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } => {
            let xs = shape(b, x(0));
            out[0] = Some(reshape(b, h, dy, &xs)?);
        }
        Op::Transpose { perm } => {
            let r = shape(b, x(0)).len();
            let p: Vec<usize> = perm.clone().unwrap_or_else(|| (0..r).rev().collect());
            let mut inv = vec![0; r];
            for (i, &pi) in p.iter().enumerate() {
                inv[pi] = i;
            }
            out[0] = Some(b.emit1(h, Op::Transpose { perm: Some(inv) }, &[dy])?);
        }
        Op::ReduceSum(a) | Op::ReduceMean(a) => {
            let xs = shape(b, x(0));
            let axes = match &a.axes {
                None => (0..xs.len()).collect(),
                Some(ax) => lowmem_ir::norm_axes(ax, xs.len()).map_err(|e| no_grad(node, &e))?,
            };
            let kept: Vec<usize> = xs
                .iter()
                .enumerate()
                .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
                .collect();
            let mut g = reshape(b, h, dy, &kept)?;
            if matches!(node.op, Op::ReduceMean(_)) {
                let n: usize = axes.iter().map(|&i| xs[i]).product();
                g = b.emit1(
                    h,
                    Op::Scale {
                        alpha: 1.0 / n.max(1) as f32,
                    },
                    &[g],
                )?;
            }
            out[0] = Some(if kept == xs {
                g
            } else {
                b.emit1(h, Op::Expand { shape: xs }, &[g])?
            });
        }
        Op::SliceWindow { axis, seed, .. } => {
            let n = shape(b, x(0))[*axis];
            out[0] = Some(b.emit1(
                h,
                Op::SliceWindowGrad {
                    axis: *axis,
                    size: n,
                    seed: *seed,
                },
                &[dy, x(1)],
            )?);
        }
        Op::Expand { .. } => {
            let xs = shape(b, x(0));
            out[0] = Some(sum_to(b, h, dy, &xs)?);
        }
        Op::SumTo { .. } => {
            let xs = shape(b, x(0));
            out[0] = Some(b.emit1(h, Op::Expand { shape: xs }, &[dy])?);
        }
        Op::Slice { axis, start, end } => {
            // Zero-pad back: concat zeros before and after.
            let xs = shape(b, x(0));
            let mut parts = Vec::new();
            for (lo, hi) in [(0, *start), (*end, xs[*axis])] {
                if hi > lo {
                    let mut s = xs.clone();
                    s[*axis] = hi - lo;
                    let n = s.iter().product();
                    let dt = b.g.tensor(dy).dtype;
                    parts.push((
                        lo,
                        b.constant(
                            &format!("{h}.zeros"),
                            s,
                            lowmem_ir::TensorData::zeros(dt, n),
                        )?,
                    ));
                }
            }
            let mut ins = Vec::new();
            if let Some(p) = parts.iter().find(|p| p.0 == 0) {
                ins.push(p.1);
            }
            ins.push(dy);
            if let Some(p) = parts.iter().find(|p| p.0 != 0) {
                ins.push(p.1);
            }
            out[0] = Some(if ins.len() == 1 {
                dy
            } else {
                b.emit1(h, Op::Concat { axis: *axis as i64 }, &ins)?
            });
        }
        Op::SoftmaxCrossEntropy => {
            out[0] = Some(b.emit1(h, Op::SoftmaxCrossEntropyGrad, &[dy, x(0), x(1)])?);
        }
        Op::MseLoss => {
            out[0] = Some(b.emit1(h, Op::MseLossGrad, &[dy, x(0), x(1)])?);
            if needs[1] {
                return Err(no_grad(
                    node,
                    "the target of a loss is data, not differentiated",
                ));
            }
        }
        op => {
            return Err(no_grad(
                node,
                &format!(
                    "{} has no gradient rule (it is a backward, loss-gradient or update op)",
                    op.name()
                ),
            ));
        }
    }
    // Sanity: the reshape helper is exact for all rules above.
    let _ = reshape_target;
    Ok(out)
}
