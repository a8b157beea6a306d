//! Models built directly with the IR's graph API (no file needed), for benchmarks and tests.

use lowmem_ir::{
    AutoPad, BatchNormAttrs, ConvAttrs, DType, GeluApprox, GemmAttrs, Graph, Op, PoolAttrs,
    ReduceAttrs, SoftmaxAttrs, TensorData, TensorId,
};

/// Deterministic weights: xorshift64 in `[-scale, scale)`.
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        // 24 random bits to [0, 1).
        (x >> 40) as f32 / (1u64 << 24) as f32
    }

    fn uniform(&mut self, n: usize, scale: f32) -> TensorData {
        TensorData::F32(
            (0..n)
                .map(|_| (2.0 * self.next_f32() - 1.0) * scale)
                .collect(),
        )
    }
}

struct Builder {
    g: Graph,
    rng: Rng,
}

impl Builder {
    /// A `[fan_in, ...]`-shaped weight, uniform with scale `1/sqrt(fan_in)`.
    fn random(&mut self, name: &str, shape: Vec<usize>, fan_in: usize) -> TensorId {
        let n = shape.iter().product();
        let data = self.rng.uniform(n, 1.0 / (fan_in as f32).sqrt());
        self.g
            .add_weight(name, shape, data)
            .expect("fresh weight name")
    }

    fn filled(&mut self, name: &str, shape: Vec<usize>, value: f32) -> TensorId {
        let n = shape.iter().product();
        self.g
            .add_weight(name, shape, TensorData::F32(vec![value; n]))
            .expect("fresh weight name")
    }

    fn node(&mut self, name: &str, op: Op, inputs: &[TensorId]) -> TensorId {
        self.g
            .add_node(name, op, inputs, &[name])
            .unwrap_or_else(|e| panic!("building node {name}: {e}"))[0]
    }

    fn layer_norm(&mut self, name: &str, x: TensorId, d: usize) -> TensorId {
        let scale = self.filled(&format!("{name}.scale"), vec![d], 1.0);
        let bias = self.filled(&format!("{name}.bias"), vec![d], 0.0);
        let op = Op::LayerNormalization {
            axis: -1,
            epsilon: 1e-5,
        };
        self.node(name, op, &[x, scale, bias])
    }

    /// `x @ W + b` over the last dimension.
    fn linear(&mut self, name: &str, x: TensorId, d_in: usize, d_out: usize) -> TensorId {
        let w = self.random(&format!("{name}.weight"), vec![d_in, d_out], d_in);
        let b = self.random(&format!("{name}.bias"), vec![d_out], d_in);
        let y = self.node(&format!("{name}.matmul"), Op::MatMul, &[x, w]);
        self.node(name, Op::Add, &[y, b])
    }

    fn reshape(&mut self, name: &str, x: TensorId, shape: Vec<i64>) -> TensorId {
        let op = Op::Reshape {
            shape,
            allowzero: false,
        };
        self.node(name, op, &[x])
    }

    fn transpose(&mut self, name: &str, x: TensorId, perm: Vec<usize>) -> TensorId {
        self.node(name, Op::Transpose { perm: Some(perm) }, &[x])
    }
}

/// A BERT-style (pre-LayerNorm) transformer encoder classifier.
///
/// Input `x`: f32 `[batch, seq, d_model]` (token embeddings). Each of `layers` blocks is
/// LayerNorm, multi-head self-attention (`heads` heads, scaled dot product, dropout 0.1 on the
/// attention probabilities), residual add, LayerNorm, a GELU feed-forward network of width
/// `ffn` with dropout 0.1, residual add. The sequence is then mean-pooled and a Gemm gives the
/// `[batch, classes]` logits. Reshapes keep the batch dimension as `0`, so
/// [`Graph::with_batch`] works. Weights are deterministic pseudo-random, scale
/// `1/sqrt(fan_in)`.
pub fn transformer_encoder(
    layers: usize,
    d_model: usize,
    heads: usize,
    seq: usize,
    ffn: usize,
    classes: usize,
    batch: usize,
) -> Graph {
    transformer_encoder_with(layers, d_model, heads, seq, ffn, classes, batch, None)
}

/// [`transformer_encoder`] with an optional dropout of this ratio between the feed-forward
/// block's activation and its second linear layer (where SliceOut slices the hidden units).
#[allow(clippy::too_many_arguments)]
pub fn transformer_encoder_with(
    layers: usize,
    d_model: usize,
    heads: usize,
    seq: usize,
    ffn: usize,
    classes: usize,
    batch: usize,
    ffn_hidden_dropout: Option<f32>,
) -> Graph {
    assert!(
        heads > 0 && d_model.is_multiple_of(heads),
        "d_model {d_model} is not a multiple of heads {heads}"
    );
    let dh = d_model / heads;
    let mut b = Builder {
        g: Graph::new(format!(
            "transformer_encoder_l{layers}_d{d_model}_h{heads}_s{seq}"
        )),
        rng: Rng(0x9E37_79B9_7F4A_7C15),
    };
    let mut x =
        b.g.add_input("x", DType::F32, vec![batch, seq, d_model])
            .expect("first tensor");
    let scale = b.filled("attention.scale", vec![], (dh as f32).sqrt());
    let (h, dhi, s) = (heads as i64, dh as i64, seq as i64);
    for l in 0..layers {
        let p = format!("layer{l}");
        let n1 = b.layer_norm(&format!("{p}.ln1"), x, d_model);
        let mut qkv = Vec::new();
        for (which, perm) in [
            ("q", vec![0, 2, 1, 3]),
            ("k", vec![0, 2, 3, 1]),
            ("v", vec![0, 2, 1, 3]),
        ] {
            let y = b.linear(&format!("{p}.{which}"), n1, d_model, d_model);
            let y = b.reshape(&format!("{p}.{which}.heads"), y, vec![0, s, h, dhi]);
            qkv.push(b.transpose(&format!("{p}.{which}.t"), y, perm));
        }
        let scores = b.node(&format!("{p}.scores"), Op::MatMul, &[qkv[0], qkv[1]]);
        let scaled = b.node(&format!("{p}.scaled"), Op::Div, &[scores, scale]);
        let probs = b.node(
            &format!("{p}.softmax"),
            Op::Softmax(SoftmaxAttrs {
                axis: -1,
                legacy: false,
            }),
            &[scaled],
        );
        let probs = b.node(
            &format!("{p}.attn_dropout"),
            Op::Dropout {
                ratio: 0.1,
                seed: 2 * l as u64 + 1,
            },
            &[probs],
        );
        let ctx = b.node(&format!("{p}.context"), Op::MatMul, &[probs, qkv[2]]);
        let ctx = b.transpose(&format!("{p}.context.t"), ctx, vec![0, 2, 1, 3]);
        let ctx = b.reshape(
            &format!("{p}.context.merge"),
            ctx,
            vec![0, s, d_model as i64],
        );
        let o = b.linear(&format!("{p}.out"), ctx, d_model, d_model);
        let res1 = b.node(&format!("{p}.residual1"), Op::Add, &[x, o]);
        let n2 = b.layer_norm(&format!("{p}.ln2"), res1, d_model);
        let f1 = b.linear(&format!("{p}.ffn1"), n2, d_model, ffn);
        let act = b.node(
            &format!("{p}.gelu"),
            Op::Gelu {
                approximate: GeluApprox::None,
            },
            &[f1],
        );
        let act = match ffn_hidden_dropout {
            Some(ratio) => b.node(
                &format!("{p}.ffn_hidden_dropout"),
                Op::Dropout {
                    ratio,
                    seed: 1000 + l as u64,
                },
                &[act],
            ),
            None => act,
        };
        let f2 = b.linear(&format!("{p}.ffn2"), act, ffn, d_model);
        let f2 = b.node(
            &format!("{p}.ffn_dropout"),
            Op::Dropout {
                ratio: 0.1,
                seed: 2 * l as u64 + 2,
            },
            &[f2],
        );
        x = b.node(&format!("{p}.residual2"), Op::Add, &[res1, f2]);
    }
    let pooled = b.node(
        "pool",
        Op::ReduceMean(ReduceAttrs {
            axes: Some(vec![1]),
            keepdims: false,
        }),
        &[x],
    );
    let w = b.random("classifier.weight", vec![d_model, classes], d_model);
    let bias = b.random("classifier.bias", vec![classes], d_model);
    let logits = b.node(
        "classifier",
        Op::Gemm(GemmAttrs::default()),
        &[pooled, w, bias],
    );
    b.g.set_outputs(vec![logits]);
    b.g
}

/// A residual MLP: `x [batch, width]`, then `blocks` blocks of
/// `x + Dropout(Relu(BatchNorm(Gemm(x))))`, then a Gemm to `classes` logits. Small enough to
/// train bit-exactly in tests; every block is one checkpointing stage.
pub fn residual_mlp(blocks: usize, width: usize, classes: usize, batch: usize) -> Graph {
    let mut b = Builder {
        g: Graph::new(format!("residual_mlp_b{blocks}_w{width}")),
        rng: Rng(0x2545_F491_4F6C_DD1D),
    };
    let mut x =
        b.g.add_input("x", DType::F32, vec![batch, width])
            .expect("first tensor");
    for k in 0..blocks {
        let p = format!("block{k}");
        let w = b.random(&format!("{p}.weight"), vec![width, width], width);
        let bias = b.random(&format!("{p}.bias"), vec![width], width);
        let h = b.node(
            &format!("{p}.gemm"),
            Op::Gemm(GemmAttrs::default()),
            &[x, w, bias],
        );
        let h = b.batch_norm(&format!("{p}.bn"), h, width);
        let h = b.node(&format!("{p}.relu"), Op::Relu, &[h]);
        let h = b.node(
            &format!("{p}.dropout"),
            Op::Dropout {
                ratio: 0.2,
                seed: k as u64 + 1,
            },
            &[h],
        );
        x = b.node(&format!("{p}.residual"), Op::Add, &[x, h]);
    }
    let w = b.random("classifier.weight", vec![width, classes], width);
    let bias = b.random("classifier.bias", vec![classes], width);
    let logits = b.node("classifier", Op::Gemm(GemmAttrs::default()), &[x, w, bias]);
    b.g.set_outputs(vec![logits]);
    b.g
}

/// A bottleneck ResNet (He et al. 2016) for `image`x`image` RGB input: a 7x7/2 stem
/// convolution and 3x3/2 max pool, then four stages of `blocks[i]` bottleneck blocks (1x1,
/// 3x3, 1x1 convolutions with BatchNorm and Relu, a projection shortcut in each stage's first
/// block; widths 64-128-256-512, expansion 4, stride 2 from the second stage), global average
/// pooling and a Gemm to `classes`. `[3, 4, 6, 3]` is ResNet-50; `[3, 8, 319, 3]` has 333
/// blocks, 1001 weighted layers (Chen et al.'s 1000-layer experiment at ImageNet scale).
pub fn resnet(blocks: [usize; 4], image: usize, classes: usize, batch: usize) -> Graph {
    let depth = 3 * blocks.iter().sum::<usize>() + 2;
    let mut b = Builder {
        g: Graph::new(format!("resnet{depth}")),
        rng: Rng(0x5851_F42D_4C95_7F2D),
    };
    let x =
        b.g.add_input("x", DType::F32, vec![batch, 3, image, image])
            .expect("first tensor");
    let mut h = b.conv_bn("stem", x, 3, 64, 7, 2, true);
    h = b.node(
        "stem.pool",
        Op::MaxPool(PoolAttrs {
            kernel_shape: vec![3, 3],
            strides: vec![2, 2],
            pads: vec![1, 1, 1, 1],
            ..PoolAttrs::default()
        }),
        &[h],
    );
    let mut c_in = 64;
    for (s, &n) in blocks.iter().enumerate() {
        let mid = 64 << s;
        let out = 4 * mid;
        for k in 0..n {
            let p = format!("stage{}.block{k}", s + 1);
            let stride = if k == 0 && s > 0 { 2 } else { 1 };
            let a = b.conv_bn(&format!("{p}.conv1"), h, c_in, mid, 1, 1, true);
            let a = b.conv_bn(&format!("{p}.conv2"), a, mid, mid, 3, stride, true);
            let a = b.conv_bn(&format!("{p}.conv3"), a, mid, out, 1, 1, false);
            let skip = if k == 0 {
                b.conv_bn(&format!("{p}.shortcut"), h, c_in, out, 1, stride, false)
            } else {
                h
            };
            let sum = b.node(&format!("{p}.add"), Op::Add, &[a, skip]);
            h = b.node(&format!("{p}.relu"), Op::Relu, &[sum]);
            c_in = out;
        }
    }
    let pooled = b.node("pool", Op::GlobalAveragePool, &[h]);
    let flat = b.node("flatten", Op::Flatten { axis: 1 }, &[pooled]);
    let w = b.random("fc.weight", vec![c_in, classes], c_in);
    let bias = b.random("fc.bias", vec![classes], c_in);
    let logits = b.node("fc", Op::Gemm(GemmAttrs::default()), &[flat, w, bias]);
    b.g.set_outputs(vec![logits]);
    b.g
}

impl Builder {
    /// BatchNormalization with scale 1, bias 0, mean 0, variance 1.
    fn batch_norm(&mut self, name: &str, x: TensorId, c: usize) -> TensorId {
        let scale = self.filled(&format!("{name}.scale"), vec![c], 1.0);
        let bias = self.filled(&format!("{name}.bias"), vec![c], 0.0);
        let mean = self.filled(&format!("{name}.mean"), vec![c], 0.0);
        let var = self.filled(&format!("{name}.var"), vec![c], 1.0);
        self.node(
            name,
            Op::BatchNormalization(BatchNormAttrs::default()),
            &[x, scale, bias, mean, var],
        )
    }

    /// A bias-free `k`x`k` convolution ("same" padding), BatchNorm, and optionally Relu.
    #[allow(clippy::too_many_arguments)]
    fn conv_bn(
        &mut self,
        name: &str,
        x: TensorId,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        relu: bool,
    ) -> TensorId {
        let w = self.random(
            &format!("{name}.weight"),
            vec![c_out, c_in, k, k],
            c_in * k * k,
        );
        let y = self.node(
            name,
            Op::Conv(ConvAttrs {
                kernel_shape: vec![k, k],
                strides: vec![stride, stride],
                pads: vec![k / 2; 4],
                auto_pad: AutoPad::NotSet,
                ..ConvAttrs::default()
            }),
            &[x, w],
        );
        let y = self.batch_norm(&format!("{name}.bn"), y, c_out);
        if relu {
            self.node(&format!("{name}.relu"), Op::Relu, &[y])
        } else {
            y
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lowmem_autodiff::{Loss, Optimizer, training_step};

    #[test]
    fn tiny_encoder_validates_runs_and_trains() {
        let g = transformer_encoder(2, 8, 2, 4, 16, 3, 2);
        g.validate().expect("valid graph");
        let out = g.outputs[0];
        assert_eq!(g.tensor(out).shape, vec![2, 3]);

        let x = TensorData::F32((0..2 * 4 * 8).map(|i| (i as f32 * 0.37).sin()).collect());
        let y = lowmem_exec::run(&g, &[x]).expect("runs");
        let logits = y[0].to_f32();
        assert_eq!(logits.len(), 6);
        assert!(logits.iter().all(|v| v.is_finite()), "{logits:?}");
        assert!(logits.iter().any(|&v| v != 0.0), "{logits:?}");

        let g8 = g.with_batch(8).expect("batch rewrite");
        assert_eq!(g8.tensor(g8.outputs[0]).shape, vec![8, 3]);

        let sgd = Optimizer::Sgd {
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 0.0,
        };
        let tg = training_step(&g, out, Loss::CrossEntropy, &sgd).expect("training step");
        tg.graph.validate().expect("valid training graph");
        assert!(tg.labels.is_some());
        assert_eq!(tg.grads.len(), g.trainable_weights().len());
    }
}
