//! Whole compiled steps through the CUDA backend on the host shim against the CPU
//! executor: training steps of the example models (every op of their forward, backward and
//! update, with and without checkpointing), gradient steps, and a zoo model's forward pass.

mod common;
use common::*;
use lowmem_compile::remat::Scheme;
use lowmem_compile::{CompileOptions, CompiledStep, InputRole, Task, compile};
use lowmem_cuda::CudaExecutor;
use lowmem_cuda_shim::HostShim;
use lowmem_exec::Executor;
use lowmem_ir::TensorData;
use lowmem_testkit::{load_example, try_data_dir};

fn sgd() -> Task {
    Task::Training {
        loss: lowmem_autodiff::Loss::CrossEntropy,
        optimizer: lowmem_autodiff::Optimizer::Sgd {
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 1e-4,
        },
    }
}

fn adam() -> Task {
    Task::Training {
        loss: lowmem_autodiff::Loss::CrossEntropy,
        optimizer: lowmem_autodiff::Optimizer::AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.01,
        },
    }
}

/// One batch for every input of `step` (data in [-1, 1], class labels in range).
fn batch(step: &CompiledStep, rng: &mut Rng) -> Vec<Option<TensorData>> {
    let g = &step.graph;
    let f = &step.forward;
    let classes = f.tensor(f.outputs[0]).shape.get(1).copied().unwrap_or(2);
    step.inputs
        .iter()
        .enumerate()
        .map(|(k, role)| {
            let t = g.tensor(g.inputs[k]);
            match role {
                InputRole::Data(_) => Some(TensorData::F32(rng.vec_in(t.numel(), -1.0, 1.0))),
                InputRole::Labels => Some(TensorData::I64(
                    (0..t.numel())
                        .map(|_| rng.below(classes as u64) as i64)
                        .collect(),
                )),
                _ => None,
            }
        })
        .collect()
}

/// Runs `steps` steps on both backends with the same batches; compares the loss of every
/// step and the state at the end.
fn train_both(step: &CompiledStep, steps: u64, rtol: f32) {
    let mut cpu = Executor::new(step).unwrap();
    let shim = HostShim::new();
    let mut dev = CudaExecutor::new(step, &shim).unwrap();
    let mut rng = Rng::new(11);
    for s in 1..=steps {
        for (k, v) in batch(step, &mut rng).into_iter().enumerate() {
            if let Some(v) = v {
                cpu.set_input(k, &v).unwrap();
                dev.set_input(k, &v).unwrap();
            }
        }
        cpu.set_step(s).unwrap();
        dev.set_step(s).unwrap();
        cpu.run().unwrap();
        dev.run().unwrap_or_else(|e| panic!("{}: {e}", step.model));
        let (a, b) = (cpu.loss(), dev.loss().unwrap());
        assert!(
            (a - b).abs() <= rtol * a.abs() + 1e-5,
            "{} step {s}: loss CPU {a}, CUDA kernels {b}",
            step.model
        );
    }
    for (i, (a, b)) in cpu
        .state_values()
        .iter()
        .zip(dev.state_values().unwrap())
        .enumerate()
    {
        let name = &step.graph.tensor(step.state[i].input).name;
        if step.rewrites.is_empty() {
            assert_close(
                &format!("{}: state {name}", step.model),
                a,
                &b,
                20.0 * rtol,
                1e-4,
            );
        } else {
            // 16-bit storage: elements may land on neighbouring 16-bit values; the tensor
            // as a whole stays close.
            let (err, norm) = lowmem_testkit::l2_distance(a, &b);
            let rel = err / norm.max(1e-15);
            assert!(
                rel <= 1e-2,
                "{}: state {name}: relative L2 error {rel:.2e}",
                step.model
            );
        }
    }
    assert!(shim.launches() > 0);
}

fn compiled(name: &str, task: Task, batch: usize, remat: Option<Scheme>) -> CompiledStep {
    compiled_store(name, task, batch, remat, None)
}

fn compiled_store(
    name: &str,
    task: Task,
    batch: usize,
    remat: Option<Scheme>,
    store: Option<lowmem_ir::DType>,
) -> CompiledStep {
    let g = load_example(name);
    let mut o = CompileOptions::new(task);
    o.batch = Some(batch);
    o.remat = remat;
    o.store = store;
    compile(&g, &o).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn example_models_train_like_the_cpu() {
    for name in ["digits_mlp", "digits_cnn", "digits_dropout", "tiny_cnn"] {
        // tiny_cnn's convolution biases feed BatchNorm, which cancels them: their true
        // gradient is 0 and the computed one rounding noise, which Adam's normalised step
        // turns into full-size updates of either sign. SGD keeps that noise small.
        let second = if name == "tiny_cnn" { sgd() } else { adam() };
        for (task, remat) in [(sgd(), None), (second, Some(Scheme::Sqrt))] {
            train_both(&compiled(name, task, 8, remat), 5, 1e-4);
        }
    }
}

/// `--store`: the 16-bit casts of saved activations run on the device as on the CPU. A
/// value that the two backends' GEMMs sum in different orders can round to neighbouring
/// 16-bit values (2^-8 apart in bf16), so the tolerance is wider than for f32 steps.
#[test]
fn stored_activation_steps_train_like_the_cpu() {
    for name in ["digits_cnn", "digits_dropout", "tiny_cnn"] {
        for to in [lowmem_ir::DType::BF16, lowmem_ir::DType::F16] {
            train_both(
                &compiled_store(name, sgd(), 8, Some(Scheme::Sqrt), Some(to)),
                3,
                5e-4,
            );
        }
    }
}

#[test]
fn gradient_steps_match_the_cpu() {
    for name in ["digits_cnn", "tiny_cnn", "mlp", "encoder_block"] {
        let task = Task::Gradient {
            loss: lowmem_autodiff::Loss::Sum,
            output: None,
        };
        let g = load_example(name);
        let step = compile(&g, &CompileOptions::new(task)).unwrap();
        let mut rng = Rng::new(3);
        let inputs: Vec<TensorData> = batch(&step, &mut rng)
            .into_iter()
            .map(|v| v.unwrap_or(TensorData::I64(vec![1])))
            .collect();
        let (want, got) = run_both(&step, &inputs);
        for (k, (w, gt)) in want.iter().zip(&got).enumerate() {
            assert_close(&format!("{name} output {k}"), w, gt, 1e-3, 1e-4);
        }
    }
}

/// Zoo models' forward passes and gradient steps at batch 1 (the shim runs each thread as
/// a fiber, so block reductions cost it far more than a GPU: the larger cases are in
/// [`more_zoo_models_match_the_cpu`], run with `--ignored`).
#[test]
fn zoo_models_match_the_cpu() {
    zoo(
        &["squeezenet", "shufflenet", "inception_v1", "resnet50"],
        &["squeezenet"],
    );
}

#[test]
#[ignore = "about a minute on the shim: cargo test -p lowmem-cuda-shim --test steps -- --ignored"]
fn more_zoo_models_match_the_cpu() {
    zoo(
        &["inception_v2", "densenet121"],
        &["shufflenet", "inception_v1"],
    );
}

fn zoo(forward: &[&str], gradient: &[&str]) {
    if try_data_dir().is_none() {
        eprintln!("skipped: no data/ (scripts/fetch_data.py and scripts/make_refs.py make it)");
        return;
    }
    for &name in forward {
        let t = std::time::Instant::now();
        let g = lowmem_testkit::load_model(name, Some(1));
        let step = compile(&g, &CompileOptions::new(Task::Inference)).unwrap();
        let mut rng = Rng::new(5);
        let x = TensorData::F32(rng.vec_in(g.tensor(g.inputs[0]).numel(), 0.0, 1.0));
        let (want, got) = run_both(&step, &[x]);
        assert_close(name, &want[0], &got[0], 1e-3, 1e-4);
        eprintln!("{name} forward: {:.1} s", t.elapsed().as_secs_f64());
    }
    for &name in gradient {
        let t = std::time::Instant::now();
        let mut g = lowmem_testkit::load_model(name, Some(1));
        // The loss reads the logits: a sum over softmax probabilities is the constant 1,
        // whose gradients are rounding noise.
        let out = g.outputs[0];
        let logits = g
            .nodes
            .iter()
            .find(|n| n.outputs.contains(&out) && matches!(n.op, lowmem_ir::Op::Softmax(_)))
            .map_or(out, |n| n.inputs[0]);
        g.set_outputs(vec![logits]);
        let task = Task::Gradient {
            loss: lowmem_autodiff::Loss::Sum,
            output: Some(g.tensor(logits).name.clone()),
        };
        let step = compile(&g, &CompileOptions::new(task)).unwrap();
        let mut rng = Rng::new(6);
        let x = TensorData::F32(rng.vec_in(g.tensor(g.inputs[0]).numel(), 0.0, 1.0));
        let (want, got) = run_both(&step, &[x]);
        for (k, (w, gt)) in want.iter().zip(&got).enumerate() {
            let (err, norm) = lowmem_testkit::l2_distance(w, gt);
            let (w, gt) = (w.to_f64(), gt.to_f64());
            assert!(
                err <= 1e-3 * norm.max(1e-12),
                "{name} gradient output {k} ({}): relative L2 error {:.3e}; CPU {:?}.., CUDA kernels {:?}..",
                step.graph.tensor(step.graph.outputs[k]).name,
                err / norm.max(1e-15),
                &w[..w.len().min(4)],
                &gt[..gt.len().min(4)]
            );
        }
        eprintln!("{name} gradient: {:.1} s", t.elapsed().as_secs_f64());
    }
}

/// `--rewrite` and `--microbatch`: SliceOut's windows, DropIT's top-k and scatter, ReLU's
/// bit masks and the unrolled micro-batches run on the device as on the CPU (also under
/// checkpointing). DropIT selects by magnitude, so values the two backends round apart can
/// trade places at the threshold: the tolerance is wider than for plain f32 steps.
#[test]
fn rewritten_steps_train_like_the_cpu() {
    let step = |name: &str, batch, f: &dyn Fn(&mut CompileOptions)| {
        let mut o = CompileOptions::new(sgd());
        o.batch = Some(batch);
        f(&mut o);
        compile(&load_example(name), &o).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    train_both(
        &step("digits_dropout", 8, &|o| {
            o.sliceout = Some(0.5);
            o.dropit = Some(0.9);
        }),
        3,
        1e-3,
    );
    train_both(
        &step("digits_cnn", 8, &|o| {
            o.dropit = Some(0.8);
            o.remat = Some(Scheme::Sqrt);
        }),
        3,
        1e-3,
    );
    train_both(
        &step("tiny_cnn", 8, &|o| {
            o.microbatch = Some(2);
            o.dropit = Some(0.5);
        }),
        3,
        1e-3,
    );
}
