//! Shape inference for the ops that only training graphs hold: training-mode forward ops,
//! backward ops, losses and optimizer updates (specified beside their `Op` variants).

use crate::DType;
use crate::op::{Infer, Op, same_dtype, want_float, want_inputs};
use crate::shape::{broadcast, count};

fn want_shape(
    inputs: &[(DType, &[usize])],
    i: usize,
    shape: &[usize],
    what: &str,
) -> Result<(), String> {
    if inputs[i].1 != shape {
        return Err(format!(
            "{what} has shape {:?}, expected {shape:?}",
            inputs[i].1
        ));
    }
    Ok(())
}

fn want_step(inputs: &[(DType, &[usize])], i: usize) -> Result<(), String> {
    match inputs[i] {
        (DType::I64, s) if count(s) == 1 => Ok(()),
        (d, s) => Err(format!("step must be an i64 scalar, got {d} {s:?}")),
    }
}

impl Op {
    /// `None` for ops that are not training-only (inferred in `Op::infer`).
    pub(crate) fn infer_training(
        &self,
        inputs: &[(DType, &[usize])],
        n_out: usize,
    ) -> Option<Infer> {
        let r = match self {
            Op::SumTo { shape } => (|| {
                want_inputs(inputs.len(), 1, 1)?;
                if broadcast(shape, inputs[0].1).as_deref() != Some(inputs[0].1) {
                    return Err(format!(
                        "shape {shape:?} does not broadcast to the input {:?}",
                        inputs[0].1
                    ));
                }
                Ok(vec![(inputs[0].0, shape.clone())])
            })(),
            Op::Expand { shape } => (|| {
                want_inputs(inputs.len(), 1, 1)?;
                if broadcast(inputs[0].1, shape).as_deref() != Some(&shape[..]) {
                    return Err(format!(
                        "input {:?} does not broadcast to {shape:?}",
                        inputs[0].1
                    ));
                }
                Ok(vec![(inputs[0].0, shape.clone())])
            })(),
            Op::Slice { axis, start, end } => (|| {
                want_inputs(inputs.len(), 1, 1)?;
                let s = inputs[0].1;
                if *axis >= s.len() || start > end || *end > s[*axis] {
                    return Err(format!(
                        "slice {start}..{end} of axis {axis} is out of range for {s:?}"
                    ));
                }
                let mut out = s.to_vec();
                out[*axis] = end - start;
                Ok(vec![(inputs[0].0, out)])
            })(),
            Op::BatchNormTrain(_) => (|| {
                want_inputs(inputs.len(), 5, 5)?;
                want_float(inputs)?;
                let x = inputs[0].1;
                if x.len() < 2 {
                    return Err(format!("input must have rank >= 2, got {x:?}"));
                }
                for (i, name) in ["scale", "bias", "running_mean", "running_var"]
                    .iter()
                    .enumerate()
                {
                    want_shape(inputs, i + 1, &[x[1]], name)?;
                }
                let c = (inputs[0].0, vec![x[1]]);
                Ok(vec![
                    (inputs[0].0, x.to_vec()),
                    c.clone(),
                    c.clone(),
                    c.clone(),
                    c,
                ])
            })(),
            Op::DropoutTrain { ratio, .. } | Op::DropoutGrad { ratio, .. } => (|| {
                want_inputs(inputs.len(), 2, 2)?;
                want_float(&inputs[..1])?;
                want_step(inputs, 1)?;
                if !(0.0..1.0).contains(ratio) {
                    return Err(format!("ratio {ratio} is not in [0, 1)"));
                }
                Ok(vec![(inputs[0].0, inputs[0].1.to_vec())])
            })(),
            Op::SliceWindow { axis, size, .. } | Op::SliceWindowGrad { axis, size, .. } => (|| {
                want_inputs(inputs.len(), 2, 2)?;
                want_step(inputs, 1)?;
                let x = inputs[0].1;
                if *axis >= x.len() {
                    return Err(format!("axis {axis} is out of range for {x:?}"));
                }
                let (k, n) = match self {
                    Op::SliceWindow { .. } => (*size, x[*axis]),
                    _ => (x[*axis], *size),
                };
                if k == 0 || k > n {
                    return Err(format!(
                        "a window of {k} units does not fit axis {axis} of {n} units"
                    ));
                }
                let mut out = x.to_vec();
                out[*axis] = *size;
                Ok(vec![(inputs[0].0, out)])
            })(
            ),
            Op::ReluMask => (|| {
                want_inputs(inputs.len(), 1, 1)?;
                want_float(inputs)?;
                Ok(vec![(DType::U8, vec![count(inputs[0].1).div_ceil(8)])])
            })(),
            Op::ReluMaskGrad => (|| {
                want_inputs(inputs.len(), 2, 2)?;
                want_float(&inputs[..1])?;
                let bytes = count(inputs[0].1).div_ceil(8);
                if inputs[1].0 != DType::U8 || inputs[1].1 != [bytes] {
                    return Err(format!(
                        "mask is {} {:?}, expected u8 [{bytes}] for dY {:?}",
                        inputs[1].0, inputs[1].1, inputs[0].1
                    ));
                }
                Ok(vec![(inputs[0].0, inputs[0].1.to_vec())])
            })(),
            Op::TopK { k } => (|| {
                want_inputs(inputs.len(), 1, 1)?;
                if inputs[0].0 != DType::F32 {
                    return Err(format!("input is {}, expected f32", inputs[0].0));
                }
                let n = count(inputs[0].1);
                if *k == 0 || *k > n || n > i32::MAX as usize {
                    return Err(format!(
                        "keeps {k} of {n} elements (needs 1 <= k <= n < 2^31)"
                    ));
                }
                Ok(vec![(DType::F32, vec![*k]), (DType::I32, vec![*k])])
            })(),
            Op::TopKScatter { shape } => (|| {
                want_inputs(inputs.len(), 2, 2)?;
                let k = inputs[0].1.iter().product::<usize>();
                if inputs[0].0 != DType::F32 || inputs[0].1.len() != 1 {
                    return Err(format!(
                        "values are {} {:?}, expected f32 [k]",
                        inputs[0].0, inputs[0].1
                    ));
                }
                if inputs[1].0 != DType::I32 || inputs[1].1 != [k] {
                    return Err(format!(
                        "indices are {} {:?}, expected i32 [{k}]",
                        inputs[1].0, inputs[1].1
                    ));
                }
                if k > count(shape) {
                    return Err(format!("{k} values do not fit shape {shape:?}"));
                }
                Ok(vec![(DType::F32, shape.clone())])
            })(),
            Op::ConvBackwardData { conv, input_shape } => (|| {
                want_inputs(inputs.len(), 2, 2)?;
                let d = same_dtype(inputs)?;
                let y = Op::Conv(conv.clone()).infer(&[(d, input_shape), inputs[1]], 1)?;
                want_shape(inputs, 0, &y[0].1, "dY")?;
                Ok(vec![(d, input_shape.clone())])
            })(),
            Op::ConvBackwardFilter { conv, weight_shape } => (|| {
                want_inputs(inputs.len(), 2, 2)?;
                let d = same_dtype(inputs)?;
                let y = Op::Conv(conv.clone()).infer(&[inputs[1], (d, weight_shape)], 1)?;
                want_shape(inputs, 0, &y[0].1, "dY")?;
                Ok(vec![(d, weight_shape.clone())])
            })(),
            Op::MaxPoolGrad(p) => (|| {
                want_inputs(inputs.len(), 2, 2)?;
                let d = same_dtype(inputs)?;
                let y = Op::MaxPool(p.clone()).infer(&inputs[1..], 1)?;
                want_shape(inputs, 0, &y[0].1, "dY")?;
                Ok(vec![(d, inputs[1].1.to_vec())])
            })(),
            Op::AveragePoolGrad { pool, input_shape } => (|| {
                want_inputs(inputs.len(), 1, 1)?;
                let y = Op::AveragePool(pool.clone()).infer(&[(inputs[0].0, input_shape)], 1)?;
                want_shape(inputs, 0, &y[0].1, "dY")?;
                Ok(vec![(inputs[0].0, input_shape.clone())])
            })(),
            Op::GlobalAveragePoolGrad { input_shape } => (|| {
                want_inputs(inputs.len(), 1, 1)?;
                let y = Op::GlobalAveragePool.infer(&[(inputs[0].0, input_shape)], 1)?;
                want_shape(inputs, 0, &y[0].1, "dY")?;
                Ok(vec![(inputs[0].0, input_shape.clone())])
            })(),
            Op::BatchNormGrad { .. } => (|| {
                want_inputs(inputs.len(), 5, 5)?;
                want_float(inputs)?;
                let x = inputs[1].1;
                want_shape(inputs, 0, x, "dY")?;
                if x.len() < 2 {
                    return Err(format!("input must have rank >= 2, got {x:?}"));
                }
                for (i, name) in ["scale", "mean", "variance"].iter().enumerate() {
                    want_shape(inputs, i + 2, &[x[1]], name)?;
                }
                let c = (inputs[0].0, vec![x[1]]);
                Ok(vec![(inputs[0].0, x.to_vec()), c.clone(), c])
            })(),
            Op::LayerNormGrad { axis, epsilon } => (|| {
                want_inputs(inputs.len(), 3, 3)?;
                want_shape(inputs, 0, inputs[1].1, "dY")?;
                Op::LayerNormalization {
                    axis: *axis,
                    epsilon: *epsilon,
                }
                .infer(&inputs[1..], 1)?;
                let sc = (inputs[2].0, inputs[2].1.to_vec());
                Ok(vec![(inputs[0].0, inputs[1].1.to_vec()), sc.clone(), sc])
            })(),
            Op::LrnGrad(_) => (|| {
                want_inputs(inputs.len(), 3, 3)?;
                want_float(inputs)?;
                want_shape(inputs, 0, inputs[1].1, "dY")?;
                want_shape(inputs, 2, inputs[1].1, "Y")?;
                Ok(vec![(inputs[0].0, inputs[1].1.to_vec())])
            })(),
            Op::SoftmaxGrad(_) | Op::LogSoftmaxGrad(_) => (|| {
                want_inputs(inputs.len(), 2, 2)?;
                want_float(inputs)?;
                want_shape(inputs, 0, inputs[1].1, "dY")?;
                Ok(vec![(inputs[0].0, inputs[1].1.to_vec())])
            })(),
            _ if self.is_elementwise_grad() => (|| {
                want_inputs(inputs.len(), 2, 2)?;
                let d = same_dtype(inputs)?;
                want_float(inputs)?;
                want_shape(inputs, 0, inputs[1].1, "dY")?;
                Ok(vec![(d, inputs[1].1.to_vec())])
            })(),
            Op::PowGrad => (|| {
                want_inputs(inputs.len(), 3, 3)?;
                let d = same_dtype(inputs)?;
                let s = broadcast(inputs[1].1, inputs[2].1).ok_or_else(|| {
                    format!(
                        "shapes {:?} and {:?} do not broadcast",
                        inputs[1].1, inputs[2].1
                    )
                })?;
                want_shape(inputs, 0, &s, "dY")?;
                Ok(vec![(d, s.clone()), (d, s)])
            })(),
            Op::SoftmaxCrossEntropy | Op::SoftmaxCrossEntropyGrad => (|| {
                let off = matches!(self, Op::SoftmaxCrossEntropyGrad) as usize;
                want_inputs(inputs.len(), 2 + off, 2 + off)?;
                let (logits, labels) = (inputs[off], inputs[off + 1]);
                if !logits.0.is_float() || logits.1.len() != 2 {
                    return Err(format!(
                        "logits must be a float [N, C] matrix, got {} {:?}",
                        logits.0, logits.1
                    ));
                }
                if labels.0 != DType::I64 || labels.1 != [logits.1[0]] {
                    return Err(format!(
                        "labels must be i64 [{}], got {} {:?}",
                        logits.1[0], labels.0, labels.1
                    ));
                }
                if off == 1 {
                    want_shape(inputs, 0, &[], "dLoss")?;
                    return Ok(vec![(logits.0, logits.1.to_vec())]);
                }
                Ok(vec![(logits.0, vec![])])
            })(),
            Op::MseLoss | Op::MseLossGrad => (|| {
                let off = matches!(self, Op::MseLossGrad) as usize;
                want_inputs(inputs.len(), 2 + off, 2 + off)?;
                let d = same_dtype(&inputs[off..])?;
                want_float(inputs)?;
                want_shape(inputs, off + 1, inputs[off].1, "target")?;
                if off == 1 {
                    want_shape(inputs, 0, &[], "dLoss")?;
                    return Ok(vec![(d, inputs[1].1.to_vec())]);
                }
                Ok(vec![(d, vec![])])
            })(),
            Op::SgdUpdate { momentum, .. } => (|| {
                let with_v = *momentum != 0.0;
                let n = 2 + with_v as usize;
                want_inputs(inputs.len(), n, n)?;
                if n_out != n - 1 {
                    return Err(format!(
                        "declares {n_out} outputs, expected {} (momentum {momentum})",
                        n - 1
                    ));
                }
                let d = same_dtype(inputs)?;
                want_float(inputs)?;
                for i in 1..n {
                    want_shape(
                        inputs,
                        i,
                        inputs[0].1,
                        if i == 1 { "gradient" } else { "velocity" },
                    )?;
                }
                Ok(vec![(d, inputs[0].1.to_vec()); n - 1])
            })(),
            Op::AdamUpdate { .. } => (|| {
                want_inputs(inputs.len(), 5, 5)?;
                let d = same_dtype(&inputs[..4])?;
                want_float(&inputs[..4])?;
                for (i, name) in ["gradient", "first moment", "second moment"]
                    .iter()
                    .enumerate()
                {
                    want_shape(inputs, i + 1, inputs[0].1, name)?;
                }
                want_step(inputs, 4)?;
                Ok(vec![(d, inputs[0].1.to_vec()); 3])
            })(),
            _ => return None,
        };
        Some(r)
    }
}

impl Op {
    /// Scratch bytes the reference kernels (lowmem-exec) need while running this op, planned
    /// as the step's workspace: the one home of these formulas (the executor checks and
    /// slices its kernels' workspace by them). `inputs` and `outputs` are shapes; every
    /// formula reads only `inputs` and the attributes.
    ///
    /// - Conv and its backward ops: im2col columns and GEMM packing buffers.
    /// - MatMul, Gemm: GEMM packing buffers ([`crate::scratch`]).
    /// - LayerNormalization: scale (and bias) broadcast over the normalised dims.
    /// - LayerNormGrad: three vectors over the normalised dims, two statistics per row, and
    ///   f64 accumulators for a broadcasting scale's gradients.
    /// - ReduceSum / ReduceMean / SumTo: one f64 accumulator per output element.
    /// - TopK: [`crate::scratch::topk_workspace_len`].
    ///
    /// f64 accumulators take `2 * n + 1` f32 slots (one spare to align to 8 bytes).
    pub fn workspace_bytes(&self, inputs: &[&[usize]], outputs: &[&[usize]]) -> usize {
        let f64s = |n: usize| 2 * n + 1;
        use crate::scratch::{ConvPass, conv_workspace_len, matmul_workspace_len};
        let conv = |conv: &crate::ConvAttrs, x: &[usize], w: &[usize], pass| -> usize {
            let Ok(win) = conv.window(x, w) else { return 0 };
            conv_workspace_len(x, w, &win, conv.group, pass) * 4
        };
        match self {
            Op::Conv(c) => conv(c, inputs[0], inputs[1], ConvPass::Forward),
            Op::ConvBackwardData {
                conv: c,
                input_shape,
            } => conv(c, input_shape, inputs[1], ConvPass::BackwardData),
            Op::ConvBackwardFilter {
                conv: c,
                weight_shape,
            } => conv(c, inputs[1], weight_shape, ConvPass::BackwardFilter),
            Op::MatMul => matmul_workspace_len(inputs[0], inputs[1]) * 4,
            Op::TopK { .. } => {
                crate::scratch::topk_workspace_len(crate::shape::count(inputs[0])) * 4
            }
            Op::Gemm(a) => {
                let (x, w) = (inputs[0], inputs[1]);
                if x.len() != 2 || w.len() != 2 {
                    return 0;
                }
                let (m, k) = if a.trans_a {
                    (x[1], x[0])
                } else {
                    (x[0], x[1])
                };
                let n = if a.trans_b { w[0] } else { w[1] };
                crate::scratch::sgemm_workspace_len(m, n, k) * 4
            }
            Op::LayerNormGrad { axis, .. } => {
                let x = inputs[1];
                let ax = crate::shape::axis(*axis, x.len()).unwrap_or(0);
                let (inner, n_scale) = (count(&x[ax..]), count(inputs[2]));
                let sum = if n_scale == inner { 0 } else { f64s(n_scale) };
                (3 * inner + 2 * count(&x[..ax]) + sum) * 4
            }
            Op::LayerNormalization { axis, .. } => {
                let x = inputs[0];
                let ax = crate::shape::axis(*axis, x.len()).unwrap_or(0);
                inputs.len().min(3).saturating_sub(1) * count(&x[ax..]) * 4
            }
            Op::ReduceSum(a) | Op::ReduceMean(a) => {
                let x = inputs[0];
                let reduced = |i: usize| match &a.axes {
                    None => true,
                    Some(ax) => ax
                        .iter()
                        .any(|&v| crate::shape::axis(v, x.len()) == Some(i)),
                };
                let n_out: usize = (0..x.len())
                    .map(|i| if reduced(i) { 1 } else { x[i] })
                    .product();
                f64s(n_out) * 4
            }
            Op::SumTo { shape } => f64s(count(shape)) * 4,
            _ => {
                let _ = outputs;
                0
            }
        }
    }
}
