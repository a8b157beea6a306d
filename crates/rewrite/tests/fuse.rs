//! Epilogue fusion: which pairs fuse, names kept, outputs and gradients bitwise those of the
//! unfused graph, on hand-built graphs and the zoo.

mod common;

use common::{input, op, ops, random_inputs};
use lowmem_autodiff::{Loss, Mode, gradients};
use lowmem_ir::{Activation, ConvAttrs, GemmAttrs, Graph, Op};
use lowmem_rewrite::fuse_epilogues;
use lowmem_testkit::{Rng, load_model, try_data_dir};

/// Runs both graphs on the same inputs; every output must be bitwise equal.
fn bitwise(a: &Graph, b: &Graph) {
    let inputs = random_inputs(a, 11);
    let ra = lowmem_exec::run(a, &inputs).unwrap();
    let rb = lowmem_exec::run(b, &inputs).unwrap();
    assert_eq!(ra.len(), rb.len());
    for (k, (x, y)) in ra.iter().zip(&rb).enumerate() {
        assert!(
            x == y,
            "output {k} ('{}') differs",
            a.tensor(a.outputs[k]).name
        );
    }
}

fn weight(g: &mut Graph, rng: &mut Rng, name: &str, shape: &[usize]) -> lowmem_ir::TensorId {
    let n = shape.iter().product();
    g.add_weight(
        name,
        shape.to_vec(),
        lowmem_ir::TensorData::F32(rng.vec_in(n, -0.5, 0.5)),
    )
    .unwrap()
}

#[test]
fn conv_and_gemm_take_their_relu_and_names_survive() {
    let mut rng = Rng::new(1);
    let mut g = Graph::new("net");
    let x = input(&mut g, "x", &[2, 3, 6, 6]);
    let w = weight(&mut g, &mut rng, "w", &[4, 3, 3, 3]);
    let b = weight(&mut g, &mut rng, "b", &[4]);
    let c = op(&mut g, "conv", Op::Conv(ConvAttrs::default()), &[x, w, b]);
    let r = op(&mut g, "relu", Op::Relu, &[c]);
    let f = op(&mut g, "flat", Op::Flatten { axis: 1 }, &[r]);
    let w2 = weight(&mut g, &mut rng, "w2", &[64, 5]);
    let m = op(&mut g, "fc", Op::Gemm(GemmAttrs::default()), &[f, w2]);
    let y = op(&mut g, "out", Op::Relu, &[m]);
    g.set_outputs(vec![y]);
    let (h, fused) = fuse_epilogues(&g).unwrap();
    assert_eq!(
        fused.pairs,
        [
            ("conv".to_string(), "relu".to_string()),
            ("fc".to_string(), "out".to_string())
        ]
    );
    assert_eq!(ops(&h), ["Conv", "Flatten", "Gemm"]);
    assert_eq!(h.nodes[0].op.epilogue(), Some(Activation::Relu));
    // The fused ops write the activations' tensors; the pre-activations are gone.
    assert_eq!(h.tensor(h.nodes[0].outputs[0]).name, "relu");
    assert_eq!(h.tensor(h.outputs[0]).name, "out");
    assert!(h.tensor_id("conv").is_none() && h.tensor_id("fc").is_none());
    assert_eq!(h.tensors.len(), g.tensors.len() - 2);
    bitwise(&g, &h);
    // FLOPs are kept: the epilogue counts as the activation did.
    assert_eq!(g.flops(), h.flops());
}

#[test]
fn a_pre_activation_read_elsewhere_or_returned_is_not_fused() {
    let mut rng = Rng::new(2);
    let mut g = Graph::new("net");
    let x = input(&mut g, "x", &[3, 4]);
    let w = weight(&mut g, &mut rng, "w", &[4, 4]);
    // Read by the ReLU and by an Add: stays.
    let a = op(&mut g, "a", Op::Gemm(GemmAttrs::default()), &[x, w]);
    let ra = op(&mut g, "ra", Op::Relu, &[a]);
    let s = op(&mut g, "s", Op::Add, &[ra, a]);
    // A graph output: stays.
    let b = op(&mut g, "b", Op::Gemm(GemmAttrs::default()), &[s, w]);
    let rb = op(&mut g, "rb", Op::Relu, &[b]);
    // Not a Conv or Gemm: stays.
    let m = op(&mut g, "m", Op::MatMul, &[rb, w]);
    let rm = op(&mut g, "rm", Op::Relu, &[m]);
    g.set_outputs(vec![rm, b]);
    let (h, fused) = fuse_epilogues(&g).unwrap();
    assert!(fused.pairs.is_empty(), "{:?}", fused.pairs);
    assert_eq!(ops(&h), ops(&g));
}

#[test]
fn fused_gradients_are_bitwise_the_unfused_ones() {
    let mut rng = Rng::new(3);
    let mut g = Graph::new("net");
    let x = input(&mut g, "x", &[2, 3, 6, 6]);
    let w = weight(&mut g, &mut rng, "w", &[4, 3, 3, 3]);
    let c = op(&mut g, "conv", Op::Conv(ConvAttrs::default()), &[x, w]);
    let r = op(&mut g, "relu", Op::Relu, &[c]);
    let f = op(&mut g, "flat", Op::Flatten { axis: 1 }, &[r]);
    let w2 = weight(&mut g, &mut rng, "w2", &[64, 5]);
    let b2 = weight(&mut g, &mut rng, "b2", &[5]);
    let m = op(&mut g, "fc", Op::Gemm(GemmAttrs::default()), &[f, w2, b2]);
    let y = op(&mut g, "out", Op::Relu, &[m]);
    g.set_outputs(vec![y]);
    let (h, fused) = fuse_epilogues(&g).unwrap();
    assert_eq!(fused.pairs.len(), 2);
    let grads = |g: &Graph| {
        let out = g.outputs[0];
        let wrt = g.trainable_weights();
        gradients(g, out, Loss::Sum, &wrt, Mode::Inference)
            .unwrap()
            .graph
    };
    let (gg, gh) = (grads(&g), grads(&h));
    // The ReLU's backward reads its output in both; the fused step has the two
    // pre-activations fewer.
    assert_eq!(gg.tensors.len(), gh.tensors.len() + 2);
    bitwise(&gg, &gh);
}

#[test]
fn zoo_graphs_fuse_and_compute_the_same_outputs() {
    if try_data_dir().is_none() {
        eprintln!("skipped: data/ is missing (scripts/test.sh makes it)");
        return;
    }
    // Pairs expected in each (every Conv/Gemm followed by a ReLU it alone feeds).
    for (name, pairs) in [("squeezenet", 26), ("vgg19", 18), ("alexnet", 7)] {
        let g = load_model(name, Some(1));
        let (h, fused) = fuse_epilogues(&g).unwrap();
        assert_eq!(fused.pairs.len(), pairs, "{name}");
        assert_eq!(h.nodes.len(), g.nodes.len() - pairs, "{name}");
        if name == "squeezenet" {
            bitwise(&g, &h);
        }
    }
}
