//! Whole training steps: state layout, optimizers, running statistics and determinism.

use lowmem_autodiff::{Loss, Optimizer, StateKind, TrainingGraph, step_value, training_step};
use lowmem_ir::{Graph, TensorData};

fn tiny_cnn(batch: usize) -> Graph {
    lowmem_testkit::load_model("tiny_cnn", Some(batch))
}

/// Runs `steps` steps on one fixed batch; returns the losses and the final state.
fn train(
    tg: &TrainingGraph,
    x: &TensorData,
    labels: &[i64],
    steps: u64,
) -> (Vec<f32>, Vec<TensorData>) {
    let mut state: Vec<TensorData> = tg.initial_state().iter().map(|s| (**s).clone()).collect();
    let mut losses = Vec::new();
    for step in 1..=steps {
        let inputs: Vec<TensorData> = tg
            .graph
            .inputs
            .iter()
            .map(|&i| {
                if Some(i) == tg.labels {
                    TensorData::I64(labels.to_vec())
                } else if i == tg.step {
                    step_value(step)
                } else if let Some(k) = tg.state.iter().position(|s| s.input == i) {
                    state[k].clone()
                } else {
                    assert_eq!(tg.data, vec![i]);
                    x.clone()
                }
            })
            .collect();
        let mut out = lowmem_exec::run(&tg.graph, &inputs).unwrap();
        losses.push(out[0].to_f32()[0]);
        state = out.split_off(1);
    }
    (losses, state)
}

fn batch() -> (TensorData, Vec<i64>) {
    let x: Vec<f32> = (0..4 * 64)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    (TensorData::F32(x), vec![1, 7, 3, 7])
}

#[test]
fn state_layout_matches_the_graph() {
    let g = tiny_cnn(4);
    let opt = Optimizer::Adam {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-8,
        weight_decay: 0.0,
    };
    let tg = training_step(&g, g.outputs[0], Loss::CrossEntropy, &opt).unwrap();
    let params = tg
        .state
        .iter()
        .filter(|s| s.kind == StateKind::Parameter)
        .count();
    assert_eq!(params, g.trainable_weights().len());
    assert_eq!(
        tg.state
            .iter()
            .filter(|s| s.kind == StateKind::FirstMoment)
            .count(),
        params
    );
    assert_eq!(
        tg.state
            .iter()
            .filter(|s| matches!(s.kind, StateKind::RunningMean | StateKind::RunningVar))
            .count(),
        2
    );
    assert_eq!(tg.graph.outputs.len(), 1 + tg.state.len());
    for (k, s) in tg.state.iter().enumerate() {
        assert_eq!(tg.graph.outputs[1 + k], s.output);
        assert_eq!(
            tg.graph.tensor(s.input).shape,
            tg.graph.tensor(s.output).shape,
            "{}",
            s.name
        );
    }
    // The backward pass reads forward activations; they are listed once each.
    assert!(!tg.saved.is_empty());
    let mut sorted = tg.saved.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), tg.saved.len());
}

#[test]
fn optimizers_lower_the_loss_and_update_running_statistics() {
    let g = tiny_cnn(4);
    let (x, labels) = batch();
    for opt in [
        Optimizer::Sgd {
            lr: 0.2,
            momentum: 0.9,
            weight_decay: 1e-4,
        },
        Optimizer::Sgd {
            lr: 0.2,
            momentum: 0.0,
            weight_decay: 0.0,
        },
        Optimizer::Adam {
            lr: 2e-2,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.0,
        },
        Optimizer::AdamW {
            lr: 2e-2,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 1e-2,
        },
    ] {
        let tg = training_step(&g, g.outputs[0], Loss::CrossEntropy, &opt).unwrap();
        let (losses, state) = train(&tg, &x, &labels, 30);
        assert!(losses[29] < 0.5 * losses[0], "{opt:?}: {losses:?}");
        let k = tg
            .state
            .iter()
            .position(|s| s.kind == StateKind::RunningMean)
            .unwrap();
        assert!(
            !state[k].bit_eq(&tg.state[k].init),
            "{opt:?}: running mean unchanged"
        );
    }
}

#[test]
fn training_is_bitwise_deterministic() {
    let g = tiny_cnn(4);
    let (x, labels) = batch();
    let opt = Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.0,
    };
    let tg = training_step(&g, g.outputs[0], Loss::CrossEntropy, &opt).unwrap();
    let (l1, s1) = train(&tg, &x, &labels, 5);
    let (l2, s2) = train(&tg, &x, &labels, 5);
    assert_eq!(l1, l2);
    assert!(s1.iter().zip(&s2).all(|(a, b)| a.bit_eq(b)));
}
