//! The op table: every op's attributes, shape inference and FLOP count, defined once.
//!
//! Attributes are normalised at import (ONNX inputs that must be constant, such as Reshape's
//! shape or Squeeze's axes, become attributes; opset-dependent defaults are resolved), so an op
//! here has one meaning whatever opset it came from. `ir/README.md` specifies each op.

use serde::{Deserialize, Serialize};

use crate::DType;
use crate::shape::{axis as norm_axis, broadcast, count};

/// How a convolution or pooling window pads its input (ONNX `auto_pad`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoPad {
    /// Use the explicit `pads`.
    #[default]
    NotSet,
    /// Output size ceil(in / stride); the extra pad goes at the end.
    SameUpper,
    /// Output size ceil(in / stride); the extra pad goes at the start.
    SameLower,
    /// No padding.
    Valid,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}
fn one_f32() -> f32 {
    1.0
}
fn is_one_f32(v: &f32) -> bool {
    *v == 1.0
}
fn yes() -> bool {
    true
}
fn is_true(v: &bool) -> bool {
    *v
}

/// FLOPs of an epilogue over `outputs`: the standalone activation's own count.
fn epilogue_flops(act: Option<Activation>, outputs: &[&[usize]]) -> u64 {
    act.map_or(0, |a| a.op().flops(outputs, outputs))
}

/// Convolution attributes. Empty vectors mean the ONNX defaults (strides and dilations 1,
/// pads 0, kernel from the weight's shape).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConvAttrs {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernel_shape: Vec<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub strides: Vec<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dilations: Vec<usize>,
    /// `[begin_0, begin_1, ..., end_0, end_1, ...]`, as ONNX.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pads: Vec<usize>,
    #[serde(skip_serializing_if = "is_default")]
    pub auto_pad: AutoPad,
    #[serde(skip_serializing_if = "is_one")]
    pub group: usize,
    /// Epilogue: applied to each output element in the kernel, after the bias (a fused
    /// `Conv -> Relu`: the pre-activation never becomes a tensor).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activation: Option<Activation>,
}
fn is_one(v: &usize) -> bool {
    *v == 1
}
impl Default for ConvAttrs {
    fn default() -> Self {
        ConvAttrs {
            kernel_shape: vec![],
            strides: vec![],
            dilations: vec![],
            pads: vec![],
            auto_pad: AutoPad::NotSet,
            group: 1,
            activation: None,
        }
    }
}

/// An activation fused into the epilogue of a Conv or Gemm (see `lowmem_rewrite::fuse`).
/// Its semantics, FLOPs and gradient are those of the standalone op ([`Activation::op`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    Relu,
}

impl Activation {
    /// The standalone op this epilogue stands for.
    pub fn op(self) -> Op {
        match self {
            Activation::Relu => Op::Relu,
        }
    }

    /// The activation of a standalone op, if it has an epilogue form.
    pub fn of(op: &Op) -> Option<Activation> {
        match op {
            Op::Relu => Some(Activation::Relu),
            _ => None,
        }
    }
}

/// Pooling attributes (MaxPool and AveragePool).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PoolAttrs {
    pub kernel_shape: Vec<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub strides: Vec<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dilations: Vec<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pads: Vec<usize>,
    #[serde(skip_serializing_if = "is_default")]
    pub auto_pad: AutoPad,
    #[serde(skip_serializing_if = "is_default")]
    pub ceil_mode: bool,
    /// AveragePool only: divide by the full window, padding included.
    #[serde(skip_serializing_if = "is_default")]
    pub count_include_pad: bool,
}

/// A resolved sliding window over the spatial dimensions: per dimension, kernel extent,
/// stride, dilation, padding before and after, input and output size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    pub pad_begin: Vec<usize>,
    pub pad_end: Vec<usize>,
    pub input: Vec<usize>,
    pub output: Vec<usize>,
}

impl Window {
    /// Resolves a window over `input` spatial dims. `ceil_mode` follows PyTorch/onnxruntime: a
    /// last window that would start inside the end padding is dropped.
    pub fn resolve(
        input: &[usize],
        kernel: &[usize],
        strides: &[usize],
        dilations: &[usize],
        pads: &[usize],
        auto_pad: AutoPad,
        ceil_mode: bool,
    ) -> Result<Window, String> {
        let r = input.len();
        let or_ones = |v: &[usize], what: &str| -> Result<Vec<usize>, String> {
            match v.len() {
                0 => Ok(vec![1; r]),
                n if n == r => {
                    if v.contains(&0) {
                        Err(format!("{what} must be positive, got {v:?}"))
                    } else {
                        Ok(v.to_vec())
                    }
                }
                n => Err(format!("{what} has {n} entries for {r} spatial dimensions")),
            }
        };
        if kernel.len() != r {
            return Err(format!(
                "kernel_shape has {} entries for {r} spatial dimensions",
                kernel.len()
            ));
        }
        if kernel.contains(&0) {
            return Err(format!("kernel_shape must be positive, got {kernel:?}"));
        }
        let strides = or_ones(strides, "strides")?;
        let dilations = or_ones(dilations, "dilations")?;
        let (mut pad_begin, mut pad_end) = match pads.len() {
            0 => (vec![0; r], vec![0; r]),
            n if n == 2 * r => (pads[..r].to_vec(), pads[r..].to_vec()),
            n => return Err(format!("pads has {n} entries, expected {}", 2 * r)),
        };
        let mut output = vec![0; r];
        for d in 0..r {
            let extent = (kernel[d] - 1)
                .checked_mul(dilations[d])
                .and_then(|x| x.checked_add(1))
                .ok_or("window extent overflows")?;
            match auto_pad {
                AutoPad::SameUpper | AutoPad::SameLower => {
                    let out = input[d].div_ceil(strides[d]);
                    let need = ((out.max(1) - 1) * strides[d] + extent).saturating_sub(input[d]);
                    let small = need / 2;
                    let (b, e) = if auto_pad == AutoPad::SameUpper {
                        (small, need - small)
                    } else {
                        (need - small, small)
                    };
                    pad_begin[d] = b;
                    pad_end[d] = e;
                    output[d] = out;
                }
                AutoPad::Valid | AutoPad::NotSet => {
                    if auto_pad == AutoPad::Valid {
                        pad_begin[d] = 0;
                        pad_end[d] = 0;
                    }
                    let padded = input[d] + pad_begin[d] + pad_end[d];
                    if padded < extent {
                        return Err(format!(
                            "window of extent {extent} does not fit spatial dimension {d} of size {} (padded {padded})",
                            input[d]
                        ));
                    }
                    let span = padded - extent;
                    let mut out = if ceil_mode {
                        span.div_ceil(strides[d])
                    } else {
                        span / strides[d]
                    } + 1;
                    if ceil_mode && (out - 1) * strides[d] >= input[d] + pad_begin[d] {
                        out -= 1;
                    }
                    output[d] = out;
                }
            }
        }
        Ok(Window {
            kernel: kernel.to_vec(),
            strides,
            dilations,
            pad_begin,
            pad_end,
            input: input.to_vec(),
            output,
        })
    }

    pub fn kernel_size(&self) -> usize {
        count(&self.kernel)
    }
    pub fn output_size(&self) -> usize {
        count(&self.output)
    }
}

impl ConvAttrs {
    /// The window of this convolution for an input of shape `[N, C, spatial...]` and a weight
    /// of shape `[M, C/group, kernel...]`.
    pub fn window(&self, x: &[usize], w: &[usize]) -> Result<Window, String> {
        if x.len() < 3 || w.len() != x.len() {
            return Err(format!(
                "expects X [N, C, spatial...] and W of the same rank, got {x:?} and {w:?}"
            ));
        }
        let kernel = if self.kernel_shape.is_empty() {
            &w[2..]
        } else {
            &self.kernel_shape[..]
        };
        if kernel != &w[2..] {
            return Err(format!(
                "kernel_shape {kernel:?} disagrees with weight shape {w:?}"
            ));
        }
        Window::resolve(
            &x[2..],
            kernel,
            &self.strides,
            &self.dilations,
            &self.pads,
            self.auto_pad,
            false,
        )
    }
}

impl PoolAttrs {
    pub fn window(&self, x: &[usize]) -> Result<Window, String> {
        if x.len() < 3 {
            return Err(format!("expects [N, C, spatial...], got {x:?}"));
        }
        Window::resolve(
            &x[2..],
            &self.kernel_shape,
            &self.strides,
            &self.dilations,
            &self.pads,
            self.auto_pad,
            self.ceil_mode,
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BatchNormAttrs {
    pub epsilon: f32,
    pub momentum: f32,
}
impl Default for BatchNormAttrs {
    fn default() -> Self {
        BatchNormAttrs {
            epsilon: 1e-5,
            momentum: 0.9,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GemmAttrs {
    #[serde(skip_serializing_if = "is_one_f32")]
    pub alpha: f32,
    #[serde(skip_serializing_if = "is_one_f32")]
    pub beta: f32,
    #[serde(skip_serializing_if = "is_default")]
    pub trans_a: bool,
    #[serde(skip_serializing_if = "is_default")]
    pub trans_b: bool,
    /// Epilogue, as [`ConvAttrs::activation`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activation: Option<Activation>,
}
impl Default for GemmAttrs {
    fn default() -> Self {
        GemmAttrs {
            alpha: 1.0,
            beta: 1.0,
            trans_a: false,
            trans_b: false,
            activation: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LrnAttrs {
    pub size: usize,
    pub alpha: f32,
    pub beta: f32,
    #[serde(default = "one_f32")]
    pub bias: f32,
}
impl Default for LrnAttrs {
    fn default() -> Self {
        LrnAttrs {
            size: 1,
            alpha: 1e-4,
            beta: 0.75,
            bias: 1.0,
        }
    }
}

/// Softmax/LogSoftmax. `legacy` is the opset < 13 meaning: the input is viewed as a matrix
/// `[prod(dims[..axis]), prod(dims[axis..])]` and normalised per row; otherwise per `axis`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SoftmaxAttrs {
    pub axis: i64,
    #[serde(skip_serializing_if = "is_default")]
    pub legacy: bool,
}
impl Default for SoftmaxAttrs {
    fn default() -> Self {
        SoftmaxAttrs {
            axis: -1,
            legacy: false,
        }
    }
}

/// ReduceMean/ReduceSum. `axes: None` reduces every axis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReduceAttrs {
    pub axes: Option<Vec<i64>>,
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub keepdims: bool,
}
impl Default for ReduceAttrs {
    fn default() -> Self {
        ReduceAttrs {
            axes: None,
            keepdims: true,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipAttrs {
    pub min: Option<f32>,
    pub max: Option<f32>,
}

/// The ops. Serialised adjacently tagged: `{"op": "Conv", "attrs": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", content = "attrs")]
pub enum Op {
    /// `Y = conv(X, W) + B`; inputs X `[N, C, ...]`, W `[M, C/group, k...]`, optional B `[M]`.
    Conv(ConvAttrs),
    /// Inference batch norm; inputs X, scale, bias, mean, var (each `[C]`).
    BatchNormalization(BatchNormAttrs),
    Relu,
    LeakyRelu {
        alpha: f32,
    },
    Sigmoid,
    Tanh,
    Erf,
    /// `approximate: "none"` uses erf; `"tanh"` the tanh approximation.
    Gelu {
        #[serde(default)]
        approximate: GeluApprox,
    },
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Sqrt,
    /// Elementwise sum of one or more inputs, with broadcasting.
    Sum,
    /// numpy `matmul`: batched, broadcasting, 1-D operands promoted and their axis removed.
    MatMul,
    /// `alpha * A' B' + beta * C`, C optional and unidirectionally broadcast to `[M, N]`.
    Gemm(GemmAttrs),
    MaxPool(PoolAttrs),
    AveragePool(PoolAttrs),
    GlobalAveragePool,
    Lrn(LrnAttrs),
    Concat {
        axis: i64,
    },
    /// Static target shape; `0` copies the input dimension (unless `allowzero`), `-1` infers one.
    Reshape {
        shape: Vec<i64>,
        #[serde(default, skip_serializing_if = "is_default")]
        allowzero: bool,
    },
    Flatten {
        axis: i64,
    },
    /// `perm: None` reverses the axes.
    Transpose {
        #[serde(default)]
        perm: Option<Vec<usize>>,
    },
    /// `axes: None` removes every dimension of size 1.
    Squeeze {
        #[serde(default)]
        axes: Option<Vec<i64>>,
    },
    Unsqueeze {
        axes: Vec<i64>,
    },
    Softmax(SoftmaxAttrs),
    LogSoftmax(SoftmaxAttrs),
    /// Normalises over dims `axis..`; inputs X, scale, optional bias (shape `dims[axis..]`).
    LayerNormalization {
        axis: i64,
        epsilon: f32,
    },
    ReduceMean(ReduceAttrs),
    ReduceSum(ReduceAttrs),
    /// Identity at inference; outputs Y and optionally the (all-true) mask.
    Dropout {
        ratio: f32,
        #[serde(default)]
        seed: u64,
    },
    Clip(ClipAttrs),
    /// X converted to float type `to` (round to nearest even): storage in 16 bits of a
    /// tensor that is computed and used in f32.
    Cast {
        to: DType,
    },
    Identity,
    /// `-x`.
    Neg,
    /// `alpha * x`.
    Scale {
        alpha: f32,
    },
    /// Sums X over the dimensions that numpy broadcasting added or stretched, so that the
    /// result has `shape`: the adjoint of broadcasting `shape` to X's shape.
    SumTo {
        shape: Vec<usize>,
    },
    /// Broadcasts X to `shape` (numpy rules).
    Expand {
        shape: Vec<usize>,
    },
    /// Elements `start..end` of X along `axis`.
    Slice {
        axis: usize,
        start: usize,
        end: usize,
    },

    // Training-mode forward ops.
    /// Batch norm with batch statistics. Inputs X, scale, bias, running_mean, running_var;
    /// outputs Y, saved_mean, saved_invstd (per channel, for the backward pass), and the
    /// updated running_mean and running_var (`r * momentum + batch * (1 - momentum)`,
    /// population variance, as ONNX).
    BatchNormTrain(BatchNormAttrs),
    /// Active dropout. Inputs X, step (i64 scalar). Element i is zeroed when
    /// [`dropout_keep`]`(seed, step, i, ratio)` is false, kept ones are scaled by
    /// `1 / (1 - ratio)`. No mask is stored: the backward pass and any recomputation
    /// regenerate it from (seed, step).
    DropoutTrain {
        ratio: f32,
        seed: u64,
    },

    // Backward ops. `dY` is the gradient of the op's output.
    /// dY, W -> dX (of shape `input_shape`): the transposed convolution.
    ConvBackwardData {
        conv: ConvAttrs,
        input_shape: Vec<usize>,
    },
    /// dY, X -> dW (of shape `weight_shape`).
    ConvBackwardFilter {
        conv: ConvAttrs,
        weight_shape: Vec<usize>,
    },
    /// dY, X -> dX: each dY goes to the first maximum of its window in X.
    MaxPoolGrad(PoolAttrs),
    /// dY -> dX (of shape `input_shape`).
    AveragePoolGrad {
        pool: PoolAttrs,
        input_shape: Vec<usize>,
    },
    /// dY -> dX (of shape `input_shape`): dY spread evenly over each spatial map.
    GlobalAveragePoolGrad {
        input_shape: Vec<usize>,
    },
    /// dY, X, scale, mean, v -> dX, dScale, dBias. `training`: v is the saved inverse standard
    /// deviation of [`Op::BatchNormTrain`] and the statistics depend on X; otherwise mean and
    /// v are the running mean and variance (constants).
    BatchNormGrad {
        epsilon: f32,
        training: bool,
    },
    /// dY, X, scale -> dX, dScale, dBias (statistics recomputed from X).
    LayerNormGrad {
        axis: i64,
        epsilon: f32,
    },
    /// dY, X, Y -> dX.
    LrnGrad(LrnAttrs),
    /// dY, Y -> dX.
    SoftmaxGrad(SoftmaxAttrs),
    /// dY, Y -> dX.
    LogSoftmaxGrad(SoftmaxAttrs),
    /// dY, Y -> dX (reads the output, so Relu may overwrite its input).
    ReluGrad,
    /// dY, X -> dX.
    LeakyReluGrad {
        alpha: f32,
    },
    /// dY, Y -> dX.
    SigmoidGrad,
    /// dY, Y -> dX.
    TanhGrad,
    /// dY, Y -> dX.
    SqrtGrad,
    /// dY, X -> dX.
    ErfGrad,
    /// dY, X -> dX.
    GeluGrad {
        #[serde(default)]
        approximate: GeluApprox,
    },
    /// dY, X -> dX: dY where min < x < max (ties pass the gradient, as PyTorch), else 0.
    ClipGrad(ClipAttrs),
    /// dY, A, B -> dA, dB of `A ^ B`, both of the broadcast shape (the caller sums them down).
    PowGrad,
    /// dY, step -> dX: dY through the mask of the [`Op::DropoutTrain`] with the same seed.
    DropoutGrad {
        ratio: f32,
        seed: u64,
    },

    // Rewrite ops (lowmem's rewrite stage inserts them; see `lowmem_autodiff`).
    /// SliceOut's unit slice. Inputs X, step (i64 scalar): `size` consecutive entries of X
    /// along `axis`, starting at [`window_start`]`(seed, step, n)` and wrapping around the
    /// end (so every unit is kept equally often): `Y[.., j, ..] = X[.., (s + j) % n, ..]`.
    SliceWindow {
        axis: usize,
        size: usize,
        seed: u64,
    },
    /// The adjoint of [`Op::SliceWindow`]. Inputs dY, step: dX with `size` (the full `n`)
    /// entries along `axis`, dY scattered to the window of the same seed, zeros elsewhere.
    SliceWindowGrad {
        axis: usize,
        size: usize,
        seed: u64,
    },
    /// ReLU's output as a bit mask: Y (f32) -> u8 `[ceil(numel / 8)]`, bit `i % 8` (least
    /// significant first) of byte `i / 8` set iff `y[i] > 0`. ReLU's backward needs only this.
    ReluMask,
    /// dY, mask -> dX: dY where the [`Op::ReluMask`] bit is set, else 0.
    ReluMaskGrad,
    /// DropIT's compression: X (f32) -> values (f32 `[k]`), indices (i32 `[k]`): the `k`
    /// elements of largest magnitude (ties to the lower index), in index order.
    TopK {
        k: usize,
    },
    /// values `[k]`, indices (i32 `[k]`) -> a dense tensor of `shape`: each value at its
    /// flat index, zeros elsewhere (the inverse of [`Op::TopK`] on what it kept).
    TopKScatter {
        shape: Vec<usize>,
    },

    // Losses (scalar outputs).
    /// logits `[N, C]`, labels (i64 `[N]`, in `0..C`) -> mean over N of
    /// `-log softmax(logits)[label]`.
    SoftmaxCrossEntropy,
    /// dLoss, logits, labels -> dLogits.
    SoftmaxCrossEntropyGrad,
    /// prediction, target (same shape) -> mean of the squared differences.
    MseLoss,
    /// dLoss, prediction, target -> dPrediction.
    MseLossGrad,

    // Optimizer updates (the planner may run them in place).
    /// W, G, [V] -> W', [V']: `g += weight_decay * w; v = momentum * v + g; w -= lr * v`
    /// (PyTorch's SGD; with momentum 0 there is no V).
    SgdUpdate {
        lr: f32,
        momentum: f32,
        weight_decay: f32,
    },
    /// W, G, M, V, step -> W', M', V': Adam with bias correction at the 1-based `step`;
    /// `decoupled` is AdamW (`w -= lr * weight_decay * w`), otherwise weight decay is added to
    /// the gradient (L2).
    AdamUpdate {
        lr: f32,
        beta1: f32,
        beta2: f32,
        epsilon: f32,
        weight_decay: f32,
        decoupled: bool,
    },
}

/// Whether element `i` survives [`Op::DropoutTrain`] at `step`: a counter-based hash, so any
/// recomputation or backward pass regenerates the same mask from (seed, step) alone.
pub fn dropout_keep(seed: u64, step: u64, i: u64, ratio: f32) -> bool {
    ((mix(seed, step, i) >> 40) as f32) / ((1u64 << 24) as f32) >= ratio
}

/// The first unit of [`Op::SliceWindow`]'s window over `n` units at `step`: the dropout hash
/// at the counter `u64::MAX` (which no element index reaches), reduced mod `n`.
pub fn window_start(seed: u64, step: u64, n: usize) -> usize {
    (mix(seed, step, u64::MAX) % (n.max(1) as u64)) as usize
}

/// splitmix64 of the counter `(seed, step, i)`.
fn mix(seed: u64, step: u64, i: u64) -> u64 {
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(step.wrapping_mul(0xD1B5_4A32_D192_ED03))
        .wrapping_add(i.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GeluApprox {
    #[default]
    None,
    Tanh,
}

pub(crate) type Infer = Result<Vec<(DType, Vec<usize>)>, String>;

pub(crate) fn want_inputs(got: usize, lo: usize, hi: usize) -> Result<(), String> {
    if got < lo || got > hi {
        if lo == hi {
            Err(format!("expects {lo} inputs, got {got}"))
        } else {
            Err(format!("expects {lo} to {hi} inputs, got {got}"))
        }
    } else {
        Ok(())
    }
}

pub(crate) fn want_float(inputs: &[(DType, &[usize])]) -> Result<(), String> {
    match inputs.iter().position(|(d, _)| !d.is_float()) {
        Some(i) => Err(format!(
            "input {i} has dtype {}, expected a float type",
            inputs[i].0
        )),
        None => Ok(()),
    }
}

pub(crate) fn same_dtype(inputs: &[(DType, &[usize])]) -> Result<DType, String> {
    let d = inputs[0].0;
    match inputs.iter().position(|(x, _)| *x != d) {
        Some(i) => Err(format!(
            "input {i} has dtype {} but input 0 has {d}",
            inputs[i].0
        )),
        None => Ok(d),
    }
}

/// Normalises a list of axes against `rank`, rejecting duplicates.
pub fn norm_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>, String> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let n = norm_axis(a, rank)
            .ok_or_else(|| format!("axis {a} is out of range for rank {rank}"))?;
        if out.contains(&n) {
            return Err(format!("axis {a} is repeated"));
        }
        out.push(n);
    }
    Ok(out)
}

/// Resolves a Reshape target against the input shape.
pub fn reshape_target(
    input: &[usize],
    target: &[i64],
    allowzero: bool,
) -> Result<Vec<usize>, String> {
    let total = count(input);
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &d) in target.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            -1 => return Err(format!("shape {target:?} has more than one -1")),
            0 if !allowzero => out.push(*input.get(i).ok_or_else(|| {
                format!("shape {target:?} copies dimension {i} (0) that the input {input:?} lacks")
            })?),
            d if d < 0 => return Err(format!("shape {target:?} has a negative dimension {d}")),
            d => out.push(d as usize),
        }
    }
    let known = out
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("target size overflows")?;
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!(
                "cannot reshape {input:?} ({total} elements) to {target:?}"
            ));
        }
        out[i] = total / known;
    } else if known != total {
        return Err(format!(
            "cannot reshape {input:?} ({total} elements) to {target:?} ({known} elements)"
        ));
    }
    Ok(out)
}

/// numpy matmul shape rule.
pub fn matmul_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    if a.is_empty() || b.is_empty() {
        return Err("MatMul operands must have rank >= 1".into());
    }
    let a2: Vec<usize> = if a.len() == 1 {
        vec![1, a[0]]
    } else {
        a.to_vec()
    };
    let b2: Vec<usize> = if b.len() == 1 {
        vec![b[0], 1]
    } else {
        b.to_vec()
    };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    if k != k2 {
        return Err(format!("inner dimensions differ: {a:?} x {b:?}"));
    }
    let batch = broadcast(&a2[..a2.len() - 2], &b2[..b2.len() - 2])
        .ok_or_else(|| format!("batch dimensions of {a:?} and {b:?} do not broadcast"))?;
    let mut out = batch;
    if a.len() > 1 {
        out.push(m);
    }
    if b.len() > 1 {
        out.push(n);
    }
    Ok(out)
}

impl Op {
    /// The ONNX-style name of the op.
    /// The activation fused into this op's epilogue (Conv and Gemm), if any.
    pub fn epilogue(&self) -> Option<Activation> {
        match self {
            Op::Conv(c) => c.activation,
            Op::Gemm(g) => g.activation,
            _ => None,
        }
    }

    /// This op with `act` as its epilogue (`None` removes it); ops without an epilogue
    /// form are returned unchanged.
    pub fn with_epilogue(&self, act: Option<Activation>) -> Op {
        match self {
            Op::Conv(c) => Op::Conv(ConvAttrs {
                activation: act,
                ..c.clone()
            }),
            Op::Gemm(g) => Op::Gemm(GemmAttrs {
                activation: act,
                ..g.clone()
            }),
            op => op.clone(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Op::Conv(_) => "Conv",
            Op::BatchNormalization(_) => "BatchNormalization",
            Op::Relu => "Relu",
            Op::LeakyRelu { .. } => "LeakyRelu",
            Op::Sigmoid => "Sigmoid",
            Op::Tanh => "Tanh",
            Op::Erf => "Erf",
            Op::Gelu { .. } => "Gelu",
            Op::Add => "Add",
            Op::Sub => "Sub",
            Op::Mul => "Mul",
            Op::Div => "Div",
            Op::Pow => "Pow",
            Op::Sqrt => "Sqrt",
            Op::Sum => "Sum",
            Op::MatMul => "MatMul",
            Op::Gemm(_) => "Gemm",
            Op::MaxPool(_) => "MaxPool",
            Op::AveragePool(_) => "AveragePool",
            Op::GlobalAveragePool => "GlobalAveragePool",
            Op::Lrn(_) => "LRN",
            Op::Concat { .. } => "Concat",
            Op::Reshape { .. } => "Reshape",
            Op::Flatten { .. } => "Flatten",
            Op::Transpose { .. } => "Transpose",
            Op::Squeeze { .. } => "Squeeze",
            Op::Unsqueeze { .. } => "Unsqueeze",
            Op::Softmax(_) => "Softmax",
            Op::LogSoftmax(_) => "LogSoftmax",
            Op::LayerNormalization { .. } => "LayerNormalization",
            Op::ReduceMean(_) => "ReduceMean",
            Op::ReduceSum(_) => "ReduceSum",
            Op::Dropout { .. } => "Dropout",
            Op::Clip(_) => "Clip",
            Op::Identity => "Identity",
            Op::Cast { .. } => "Cast",
            Op::Neg => "Neg",
            Op::Scale { .. } => "Scale",
            Op::SumTo { .. } => "SumTo",
            Op::Expand { .. } => "Expand",
            Op::Slice { .. } => "Slice",
            Op::BatchNormTrain(_) => "BatchNormTrain",
            Op::DropoutTrain { .. } => "DropoutTrain",
            Op::ConvBackwardData { .. } => "ConvBackwardData",
            Op::ConvBackwardFilter { .. } => "ConvBackwardFilter",
            Op::MaxPoolGrad(_) => "MaxPoolGrad",
            Op::AveragePoolGrad { .. } => "AveragePoolGrad",
            Op::GlobalAveragePoolGrad { .. } => "GlobalAveragePoolGrad",
            Op::BatchNormGrad { .. } => "BatchNormGrad",
            Op::LayerNormGrad { .. } => "LayerNormGrad",
            Op::LrnGrad(_) => "LrnGrad",
            Op::SoftmaxGrad(_) => "SoftmaxGrad",
            Op::LogSoftmaxGrad(_) => "LogSoftmaxGrad",
            Op::ReluGrad => "ReluGrad",
            Op::LeakyReluGrad { .. } => "LeakyReluGrad",
            Op::SigmoidGrad => "SigmoidGrad",
            Op::TanhGrad => "TanhGrad",
            Op::SqrtGrad => "SqrtGrad",
            Op::ErfGrad => "ErfGrad",
            Op::GeluGrad { .. } => "GeluGrad",
            Op::ClipGrad(_) => "ClipGrad",
            Op::PowGrad => "PowGrad",
            Op::DropoutGrad { .. } => "DropoutGrad",
            Op::SliceWindow { .. } => "SliceWindow",
            Op::SliceWindowGrad { .. } => "SliceWindowGrad",
            Op::ReluMask => "ReluMask",
            Op::ReluMaskGrad => "ReluMaskGrad",
            Op::TopK { .. } => "TopK",
            Op::TopKScatter { .. } => "TopKScatter",
            Op::SoftmaxCrossEntropy => "SoftmaxCrossEntropy",
            Op::SoftmaxCrossEntropyGrad => "SoftmaxCrossEntropyGrad",
            Op::MseLoss => "MseLoss",
            Op::MseLossGrad => "MseLossGrad",
            Op::SgdUpdate { .. } => "SgdUpdate",
            Op::AdamUpdate { .. } => "AdamUpdate",
        }
    }

    /// Elementwise ops with one input whose output has the input's shape.
    pub fn is_unary_elementwise(&self) -> bool {
        matches!(
            self,
            Op::Relu
                | Op::LeakyRelu { .. }
                | Op::Sigmoid
                | Op::Tanh
                | Op::Erf
                | Op::Gelu { .. }
                | Op::Sqrt
                | Op::Clip(_)
                | Op::Identity
                | Op::Neg
                | Op::Scale { .. }
        )
    }

    /// Backward ops whose inputs are (dY, a forward tensor) and whose output has dY's shape.
    pub fn is_elementwise_grad(&self) -> bool {
        matches!(
            self,
            Op::ReluGrad
                | Op::LeakyReluGrad { .. }
                | Op::SigmoidGrad
                | Op::TanhGrad
                | Op::SqrtGrad
                | Op::ErfGrad
                | Op::GeluGrad { .. }
                | Op::ClipGrad(_)
        )
    }

    /// Ops that keep a forward tensor in a compact form for the backward pass (a 16-bit
    /// Cast, [`Op::ReluMask`], [`Op::TopK`]): checkpointing keeps them with the stage of the
    /// tensor they store.
    pub fn is_saved_form(&self) -> bool {
        match self {
            Op::Cast { to } => *to != DType::F32,
            Op::ReluMask | Op::TopK { .. } => true,
            _ => false,
        }
    }

    pub fn is_binary_elementwise(&self) -> bool {
        matches!(self, Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Pow)
    }

    /// Infers output dtypes and shapes from input dtypes and shapes. `n_out` is the number of
    /// outputs the node declares. Errors are messages; the caller names the node.
    pub fn infer(&self, inputs: &[(DType, &[usize])], n_out: usize) -> Infer {
        let (min_out, max_out) = match self {
            Op::Dropout { .. } => (1, 2),
            Op::BatchNormTrain(_) => (5, 5),
            Op::BatchNormGrad { .. } | Op::LayerNormGrad { .. } => (3, 3),
            Op::PowGrad | Op::TopK { .. } => (2, 2),
            Op::SgdUpdate { .. } => (1, 2),
            Op::AdamUpdate { .. } => (3, 3),
            _ => (1, 1),
        };
        if n_out < min_out || n_out > max_out {
            return Err(format!(
                "declares {n_out} outputs; {} has {}",
                self.name(),
                if min_out == max_out {
                    format!("{max_out}")
                } else {
                    format!("{min_out} to {max_out}")
                }
            ));
        }
        if let Some(r) = self.infer_training(inputs, n_out) {
            return r;
        }
        let shape = |i: usize| inputs[i].1;
        let one = |d: DType, s: Vec<usize>| Ok(vec![(d, s)]);
        match self {
            _ if self.is_unary_elementwise() => {
                want_inputs(inputs.len(), 1, 1)?;
                if !matches!(self, Op::Identity | Op::Relu) {
                    want_float(inputs)?;
                }
                one(inputs[0].0, shape(0).to_vec())
            }
            Op::Cast { to } => {
                want_inputs(inputs.len(), 1, 1)?;
                want_float(inputs)?;
                if !matches!(to, DType::F32 | DType::F16 | DType::BF16) {
                    return Err(format!(
                        "casts to {to}: only f32, f16 and bf16 are supported"
                    ));
                }
                one(*to, shape(0).to_vec())
            }
            _ if self.is_binary_elementwise() => {
                want_inputs(inputs.len(), 2, 2)?;
                let d = same_dtype(inputs)?;
                let s = broadcast(shape(0), shape(1)).ok_or_else(|| {
                    format!("shapes {:?} and {:?} do not broadcast", shape(0), shape(1))
                })?;
                one(d, s)
            }
            Op::Sum => {
                want_inputs(inputs.len(), 1, usize::MAX)?;
                let d = same_dtype(inputs)?;
                let mut s = shape(0).to_vec();
                for (i, (_, si)) in inputs.iter().enumerate().skip(1) {
                    s = broadcast(&s, si).ok_or_else(|| {
                        format!("input {i} shape {si:?} does not broadcast with {s:?}")
                    })?;
                }
                one(d, s)
            }
            Op::Conv(a) => {
                want_inputs(inputs.len(), 2, 3)?;
                want_float(inputs)?;
                let d = same_dtype(inputs)?;
                let (x, w) = (shape(0), shape(1));
                let win = a.window(x, w)?;
                let g = a.group;
                if g == 0 || x[1] % g != 0 || w[0] % g != 0 {
                    return Err(format!(
                        "group {g} does not divide input channels {} and output channels {}",
                        x[1], w[0]
                    ));
                }
                if w[1] * g != x[1] {
                    return Err(format!(
                        "weight {w:?} expects {} input channels per group {g}, input {x:?} has {}",
                        w[1], x[1]
                    ));
                }
                if inputs.len() == 3 && shape(2) != [w[0]] {
                    return Err(format!("bias shape {:?} should be [{}]", shape(2), w[0]));
                }
                let mut out = vec![x[0], w[0]];
                out.extend(win.output);
                one(d, out)
            }
            Op::BatchNormalization(_) => {
                want_inputs(inputs.len(), 5, 5)?;
                want_float(inputs)?;
                let x = shape(0);
                if x.len() < 2 {
                    return Err(format!("input must have rank >= 2, got {x:?}"));
                }
                for (i, name) in ["scale", "bias", "mean", "var"].iter().enumerate() {
                    if shape(i + 1) != [x[1]] {
                        return Err(format!(
                            "{name} has shape {:?}, expected [{}]",
                            shape(i + 1),
                            x[1]
                        ));
                    }
                }
                one(inputs[0].0, x.to_vec())
            }
            Op::MatMul => {
                want_inputs(inputs.len(), 2, 2)?;
                let d = same_dtype(inputs)?;
                one(d, matmul_shape(shape(0), shape(1))?)
            }
            Op::Gemm(a) => {
                want_inputs(inputs.len(), 2, 3)?;
                let d = same_dtype(inputs)?;
                let (sa, sb) = (shape(0), shape(1));
                if sa.len() != 2 || sb.len() != 2 {
                    return Err(format!("A and B must be matrices, got {sa:?} and {sb:?}"));
                }
                let (m, k) = if a.trans_a {
                    (sa[1], sa[0])
                } else {
                    (sa[0], sa[1])
                };
                let (k2, n) = if a.trans_b {
                    (sb[1], sb[0])
                } else {
                    (sb[0], sb[1])
                };
                if k != k2 {
                    return Err(format!(
                        "inner dimensions differ: A {sa:?} (trans_a={}) and B {sb:?} (trans_b={})",
                        a.trans_a, a.trans_b
                    ));
                }
                if inputs.len() == 3 {
                    let c = shape(2);
                    if c.len() > 2 || broadcast(c, &[m, n]).as_deref() != Some(&[m, n][..]) {
                        return Err(format!("C shape {c:?} does not broadcast to [{m}, {n}]"));
                    }
                }
                one(d, vec![m, n])
            }
            Op::MaxPool(a) | Op::AveragePool(a) => {
                want_inputs(inputs.len(), 1, 1)?;
                want_float(inputs)?;
                let x = shape(0);
                let win = a.window(x)?;
                if matches!(self, Op::AveragePool(_)) && win.dilations.iter().any(|&d| d != 1) {
                    return Err("AveragePool with dilations is not supported".into());
                }
                let mut out = x[..2].to_vec();
                out.extend(win.output);
                one(inputs[0].0, out)
            }
            Op::GlobalAveragePool => {
                want_inputs(inputs.len(), 1, 1)?;
                want_float(inputs)?;
                let x = shape(0);
                if x.len() < 3 {
                    return Err(format!("expects [N, C, spatial...], got {x:?}"));
                }
                let mut out = x[..2].to_vec();
                out.extend(std::iter::repeat_n(1, x.len() - 2));
                one(inputs[0].0, out)
            }
            Op::Lrn(a) => {
                want_inputs(inputs.len(), 1, 1)?;
                want_float(inputs)?;
                if a.size == 0 {
                    return Err("size must be positive".into());
                }
                if shape(0).len() < 3 {
                    return Err(format!("expects [N, C, spatial...], got {:?}", shape(0)));
                }
                one(inputs[0].0, shape(0).to_vec())
            }
            Op::Concat { axis } => {
                want_inputs(inputs.len(), 1, usize::MAX)?;
                let d = same_dtype(inputs)?;
                let s0 = shape(0);
                let ax = norm_axis(*axis, s0.len())
                    .ok_or_else(|| format!("axis {axis} is out of range for rank {}", s0.len()))?;
                let mut out = s0.to_vec();
                for (i, (_, s)) in inputs.iter().enumerate().skip(1) {
                    if s.len() != s0.len() || (0..s.len()).any(|j| j != ax && s[j] != s0[j]) {
                        return Err(format!(
                            "input {i} shape {s:?} does not match input 0 shape {s0:?} off axis {ax}"
                        ));
                    }
                    out[ax] = out[ax].checked_add(s[ax]).ok_or("size overflows")?;
                }
                one(d, out)
            }
            Op::Reshape {
                shape: target,
                allowzero,
            } => {
                want_inputs(inputs.len(), 1, 1)?;
                one(inputs[0].0, reshape_target(shape(0), target, *allowzero)?)
            }
            Op::Flatten { axis } => {
                want_inputs(inputs.len(), 1, 1)?;
                let s = shape(0);
                let r = s.len();
                let ax = if *axis < 0 { *axis + r as i64 } else { *axis };
                if ax < 0 || ax > r as i64 {
                    return Err(format!("axis {axis} is out of range for rank {r}"));
                }
                let ax = ax as usize;
                one(inputs[0].0, vec![count(&s[..ax]), count(&s[ax..])])
            }
            Op::Transpose { perm } => {
                want_inputs(inputs.len(), 1, 1)?;
                let s = shape(0);
                let p: Vec<usize> = perm.clone().unwrap_or_else(|| (0..s.len()).rev().collect());
                let mut seen = vec![false; s.len()];
                if p.len() != s.len()
                    || p.iter()
                        .any(|&i| i >= s.len() || std::mem::replace(&mut seen[i], true))
                {
                    return Err(format!(
                        "perm {p:?} is not a permutation of rank {}",
                        s.len()
                    ));
                }
                one(inputs[0].0, p.iter().map(|&i| s[i]).collect())
            }
            Op::Squeeze { axes } => {
                want_inputs(inputs.len(), 1, 1)?;
                let s = shape(0);
                let out = match axes {
                    None => s.iter().copied().filter(|&d| d != 1).collect(),
                    Some(ax) => {
                        let ax = norm_axes(ax, s.len())?;
                        if let Some(&a) = ax.iter().find(|&&a| s[a] != 1) {
                            return Err(format!(
                                "cannot squeeze axis {a} of size {} in {s:?}",
                                s[a]
                            ));
                        }
                        s.iter()
                            .enumerate()
                            .filter(|(i, _)| !ax.contains(i))
                            .map(|(_, &d)| d)
                            .collect()
                    }
                };
                one(inputs[0].0, out)
            }
            Op::Unsqueeze { axes } => {
                want_inputs(inputs.len(), 1, 1)?;
                let s = shape(0);
                let r = s.len() + axes.len();
                let ax = norm_axes(axes, r)?;
                let mut it = s.iter();
                let out = (0..r)
                    .map(|i| {
                        if ax.contains(&i) {
                            1
                        } else {
                            *it.next().expect("rank adds up")
                        }
                    })
                    .collect();
                one(inputs[0].0, out)
            }
            Op::Softmax(a) | Op::LogSoftmax(a) => {
                want_inputs(inputs.len(), 1, 1)?;
                want_float(inputs)?;
                let s = shape(0);
                norm_axis(a.axis, s.len()).ok_or_else(|| {
                    format!("axis {} is out of range for rank {}", a.axis, s.len())
                })?;
                one(inputs[0].0, s.to_vec())
            }
            Op::LayerNormalization { axis, .. } => {
                want_inputs(inputs.len(), 2, 3)?;
                want_float(inputs)?;
                let s = shape(0);
                let ax = norm_axis(*axis, s.len())
                    .ok_or_else(|| format!("axis {axis} is out of range for rank {}", s.len()))?;
                for i in 1..inputs.len() {
                    if broadcast(shape(i), &s[ax..]).as_deref() != Some(&s[ax..]) {
                        return Err(format!(
                            "input {i} shape {:?} does not broadcast to the normalised dims {:?}",
                            shape(i),
                            &s[ax..]
                        ));
                    }
                }
                one(inputs[0].0, s.to_vec())
            }
            Op::ReduceMean(a) | Op::ReduceSum(a) => {
                want_inputs(inputs.len(), 1, 1)?;
                let s = shape(0);
                let ax = match &a.axes {
                    None => (0..s.len()).collect(),
                    Some(ax) => norm_axes(ax, s.len())?,
                };
                let out = s
                    .iter()
                    .enumerate()
                    .filter_map(|(i, &d)| match (ax.contains(&i), a.keepdims) {
                        (false, _) => Some(d),
                        (true, true) => Some(1),
                        (true, false) => None,
                    })
                    .collect();
                one(inputs[0].0, out)
            }
            Op::Dropout { ratio, .. } => {
                want_inputs(inputs.len(), 1, 1)?;
                want_float(inputs)?;
                if !(0.0..1.0).contains(ratio) {
                    return Err(format!("ratio {ratio} is not in [0, 1)"));
                }
                let mut out = vec![(inputs[0].0, shape(0).to_vec())];
                if n_out == 2 {
                    out.push((DType::Bool, shape(0).to_vec()));
                }
                Ok(out)
            }
            _ => unreachable!("every op is matched above"),
        }
    }

    /// FLOPs of one execution. Counting rules: a multiply-add is 2; every other elementwise
    /// arithmetic operation, comparison or transcendental function is 1 per output element;
    /// data movement (Reshape, Transpose, Concat, ...) is 0.
    pub fn flops(&self, inputs: &[&[usize]], outputs: &[&[usize]]) -> u64 {
        let out = outputs.first().map(|s| count(s) as u64).unwrap_or(0);
        let inp = inputs.first().map(|s| count(s) as u64).unwrap_or(0);
        match self {
            Op::Conv(a) => {
                let w = inputs[1];
                let per_out = (w[1] * count(&w[2..])) as u64;
                2 * out * per_out
                    + if inputs.len() == 3 { out } else { 0 }
                    + epilogue_flops(a.activation, outputs)
            }
            Op::Gemm(a) => {
                let k = if a.trans_a {
                    inputs[0][0]
                } else {
                    inputs[0][1]
                } as u64;
                2 * out * k
                    + if inputs.len() == 3 { 2 * out } else { 0 }
                    + epilogue_flops(a.activation, outputs)
            }
            Op::MatMul => {
                let a = inputs[0];
                2 * out * a[a.len() - 1] as u64
            }
            Op::MaxPool(a) | Op::AveragePool(a) => out * count(&a.kernel_shape) as u64,
            Op::GlobalAveragePool => inp,
            Op::Lrn(a) => out * (a.size as u64 + 3),
            Op::BatchNormalization(_) => 2 * out,
            Op::Softmax(_) | Op::LogSoftmax(_) => 4 * out,
            Op::LayerNormalization { .. } => 8 * out,
            Op::Gelu { .. } => 8 * out,
            Op::Sum => out * (inputs.len() as u64 - 1),
            Op::ReduceMean(_) | Op::ReduceSum(_) => inp,
            Op::Cast { .. } => out,
            Op::Reshape { .. }
            | Op::Flatten { .. }
            | Op::Transpose { .. }
            | Op::Squeeze { .. }
            | Op::Unsqueeze { .. }
            | Op::Concat { .. }
            | Op::Identity
            | Op::Dropout { .. }
            | Op::Expand { .. }
            | Op::Slice { .. } => 0,
            Op::ConvBackwardData { .. } | Op::ConvBackwardFilter { .. } => {
                // The same multiply-adds as the forward convolution (dY has its output's shape).
                let (dy, w) = match self {
                    Op::ConvBackwardData { .. } => (inputs[0], inputs[1]),
                    Op::ConvBackwardFilter { weight_shape, .. } => (inputs[0], &weight_shape[..]),
                    _ => unreachable!(),
                };
                2 * count(dy) as u64 * (w[1] * count(&w[2..])) as u64
            }
            Op::MaxPoolGrad(a) => count(inputs[0]) as u64 * count(&a.kernel_shape) as u64,
            Op::AveragePoolGrad { pool, .. } => {
                count(inputs[0]) as u64 * count(&pool.kernel_shape) as u64
            }
            Op::BatchNormTrain(_) => 6 * out,
            Op::BatchNormGrad { .. } => 8 * out,
            Op::LayerNormGrad { .. } => 10 * out,
            Op::LrnGrad(a) => out * (a.size as u64 + 6),
            Op::SoftmaxGrad(_) | Op::LogSoftmaxGrad(_) => 3 * out,
            Op::GeluGrad { .. } | Op::ErfGrad => 10 * out,
            Op::PowGrad => 6 * out,
            Op::SumTo { .. } => inp,
            Op::TopK { .. } => 4 * inp,
            Op::SoftmaxCrossEntropy
            | Op::SoftmaxCrossEntropyGrad
            | Op::MseLoss
            | Op::MseLossGrad => 4 * inputs.iter().map(|s| count(s) as u64).max().unwrap_or(0),
            Op::SgdUpdate { .. } => 4 * out,
            Op::AdamUpdate { .. } => 12 * out,
            _ => out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &[usize]) -> (DType, &[usize]) {
        (DType::F32, s)
    }

    #[test]
    fn conv_shapes_with_padding_stride_dilation_groups() {
        let op = Op::Conv(ConvAttrs {
            pads: vec![1, 1, 1, 1],
            strides: vec![2, 2],
            ..Default::default()
        });
        let out = op
            .infer(&[f(&[1, 3, 224, 224]), f(&[64, 3, 3, 3])], 1)
            .unwrap();
        assert_eq!(out[0].1, vec![1, 64, 112, 112]);
        let op = Op::Conv(ConvAttrs {
            dilations: vec![2, 2],
            group: 2,
            ..Default::default()
        });
        let out = op
            .infer(&[f(&[1, 4, 10, 10]), f(&[6, 2, 3, 3])], 1)
            .unwrap();
        assert_eq!(out[0].1, vec![1, 6, 6, 6]);
        let bad = op.infer(&[f(&[1, 4, 10, 10]), f(&[6, 4, 3, 3])], 1);
        assert!(bad.unwrap_err().contains("input channels"));
    }

    #[test]
    fn same_padding_splits_odd_pads_by_mode() {
        let w = Window::resolve(&[5], &[4], &[1], &[], &[], AutoPad::SameUpper, false).unwrap();
        assert_eq!((w.pad_begin[0], w.pad_end[0], w.output[0]), (1, 2, 5));
        let w = Window::resolve(&[5], &[4], &[1], &[], &[], AutoPad::SameLower, false).unwrap();
        assert_eq!((w.pad_begin[0], w.pad_end[0], w.output[0]), (2, 1, 5));
        let w = Window::resolve(&[7], &[3], &[2], &[], &[], AutoPad::Valid, false).unwrap();
        assert_eq!(w.output[0], 3);
    }

    #[test]
    fn ceil_mode_drops_a_window_starting_in_padding() {
        // 6 wide, kernel 2, stride 2, pad end 1: ceil gives 4 windows, the last starts at 6 (pad).
        let w = Window::resolve(&[6], &[2], &[2], &[], &[0, 1], AutoPad::NotSet, true).unwrap();
        assert_eq!(w.output[0], 3);
        let w = Window::resolve(&[112], &[3], &[2], &[], &[], AutoPad::NotSet, true).unwrap();
        assert_eq!(w.output[0], 56);
    }

    #[test]
    fn matmul_follows_numpy() {
        assert_eq!(
            matmul_shape(&[2, 1, 4, 5], &[3, 5, 6]).unwrap(),
            vec![2, 3, 4, 6]
        );
        assert_eq!(matmul_shape(&[5], &[5, 6]).unwrap(), vec![6]);
        assert_eq!(matmul_shape(&[4, 5], &[5]).unwrap(), vec![4]);
        assert!(matmul_shape(&[4, 5], &[4]).is_err());
    }

    #[test]
    fn reshape_zero_and_minus_one() {
        assert_eq!(
            reshape_target(&[2, 3, 4], &[0, -1], false).unwrap(),
            vec![2, 12]
        );
        assert_eq!(
            reshape_target(&[2, 3, 4], &[-1, 0], false).unwrap(),
            vec![8, 3]
        );
        assert!(reshape_target(&[2, 3, 4], &[5, -1], false).is_err());
        assert!(reshape_target(&[2, 3, 4], &[-1, -1], false).is_err());
    }

    #[test]
    fn squeeze_unsqueeze_flatten_reduce() {
        let sq = Op::Squeeze {
            axes: Some(vec![-1]),
        };
        assert_eq!(sq.infer(&[f(&[2, 3, 1])], 1).unwrap()[0].1, vec![2, 3]);
        assert!(sq.infer(&[f(&[2, 3, 4])], 1).is_err());
        let un = Op::Unsqueeze { axes: vec![0, -1] };
        assert_eq!(un.infer(&[f(&[2, 3])], 1).unwrap()[0].1, vec![1, 2, 3, 1]);
        let fl = Op::Flatten { axis: 0 };
        assert_eq!(fl.infer(&[f(&[2, 3, 4])], 1).unwrap()[0].1, vec![1, 24]);
        let r = Op::ReduceSum(ReduceAttrs {
            axes: Some(vec![1, -1]),
            keepdims: false,
        });
        assert_eq!(r.infer(&[f(&[2, 3, 4])], 1).unwrap()[0].1, vec![2]);
    }

    #[test]
    fn dtype_mismatch_is_reported() {
        let err = Op::Add
            .infer(&[f(&[2]), (DType::I64, &[2])], 1)
            .unwrap_err();
        assert!(err.contains("dtype"), "{err}");
    }

    #[test]
    fn conv_flops_match_hand_count() {
        // 1x1 output channel, 3x3 kernel over 2 channels, 4x4 output: 4*4*(2*9)*2 = 576.
        let op = Op::Conv(ConvAttrs::default());
        assert_eq!(
            op.flops(&[&[1, 2, 6, 6], &[1, 2, 3, 3]], &[&[1, 1, 4, 4]]),
            576
        );
    }
}
