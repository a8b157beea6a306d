//! Clear errors for what has no gradient or no loss.

use std::sync::Arc;

use lowmem_autodiff::{Loss, Mode, gradients};
use lowmem_ir::{ConvAttrs, DType, Graph, Op, TensorData};

fn w(g: &mut Graph, name: &str, shape: &[usize]) -> lowmem_ir::TensorId {
    let n = shape.iter().product();
    g.add_weight(
        name,
        shape.to_vec(),
        Arc::new(TensorData::F32(vec![0.5; n])),
    )
    .unwrap()
}

#[test]
fn an_op_without_gradient_is_named() {
    // A backward op in a forward graph (as a JSON file may hold) has no gradient rule.
    let mut g = Graph::new("g");
    let dy = w(&mut g, "dy", &[1, 1, 3, 3]);
    let k = w(&mut g, "k", &[1, 1, 2, 2]);
    let conv = ConvAttrs {
        kernel_shape: vec![2, 2],
        ..Default::default()
    };
    let y = g
        .add_node(
            "cbd",
            Op::ConvBackwardData {
                conv,
                input_shape: vec![1, 1, 4, 4],
            },
            &[dy, k],
            &["dx"],
        )
        .unwrap()[0];
    g.set_outputs(vec![y]);
    let e = gradients(&g, y, Loss::Sum, &[k], Mode::Inference)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("node 'cbd' (ConvBackwardData)") && e.contains("no gradient"),
        "{e}"
    );
}

#[test]
fn loss_errors_name_the_tensor() {
    let mut g = Graph::new("g");
    let x = g.add_input("x", DType::F32, vec![2, 3]).unwrap();
    let a = w(&mut g, "a", &[3, 4]);
    let y = g.add_node("mm", Op::MatMul, &[x, a], &["y"]).unwrap()[0];
    g.set_outputs(vec![y]);
    // Not a scalar.
    let e = gradients(&g, y, Loss::Scalar, &[a], Mode::Inference)
        .unwrap_err()
        .to_string();
    assert!(e.contains("'y'") && e.contains("not a scalar"), "{e}");
    // A graph input is not an output of the graph.
    let e = gradients(&g, x, Loss::Sum, &[a], Mode::Inference)
        .unwrap_err()
        .to_string();
    assert!(e.contains("'x'") && e.contains("not an output"), "{e}");
    // Differentiating something that is not a weight.
    let e = gradients(&g, y, Loss::Sum, &[x], Mode::Inference)
        .unwrap_err()
        .to_string();
    assert!(e.contains("'x'") && e.contains("not a float weight"), "{e}");
    // Cross-entropy needs [N, C] logits.
    let r = g
        .add_node(
            "r",
            Op::Reshape {
                shape: vec![8],
                allowzero: false,
            },
            &[y],
            &["flat"],
        )
        .unwrap()[0];
    g.set_outputs(vec![r]);
    let e = gradients(&g, r, Loss::CrossEntropy, &[a], Mode::Inference)
        .unwrap_err()
        .to_string();
    assert!(e.contains("'flat'") && e.contains("[N, C]"), "{e}");
}
