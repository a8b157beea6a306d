//! Models built directly with the IR's graph API (no file needed), for benchmarks and tests.

use lowmem_ir::{
    DType, GeluApprox, GemmAttrs, Graph, Op, ReduceAttrs, SoftmaxAttrs, TensorData, TensorId,
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
