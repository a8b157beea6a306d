//! The compiled step end to end: training inside the planned arena (every checkpointing
//! scheme) gives bitwise the weights of the unplanned executor; a `.lmc` file trains to
//! bitwise the same weights as the model it came from; bad `.lmc` files get clear errors.

mod common;

use std::sync::Arc;

use lowmem::compile::{CompileOptions, CompiledStep, InputRole, Scheme, Task, compile, lmc};
use lowmem::exec::train::{BatchSource, Labels, NoProbe, Trainer};
use lowmem_autodiff::{Loss, Optimizer};
use lowmem_ir::{Graph, TensorData};

fn sgd() -> Optimizer {
    Optimizer::Sgd {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 1e-4,
    }
}

fn example(name: &str) -> Graph {
    let path = format!("{}/ir/examples/{name}.json", env!("CARGO_MANIFEST_DIR"));
    lowmem_ir::json::from_json(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Deterministic batches: `x` depends on (step, i); labels cycle through the classes.
struct Synthetic {
    step: usize,
    classes: usize,
}

impl BatchSource for Synthetic {
    fn fill(&mut self, x: &mut [f32], labels: Option<Labels<'_>>) -> Result<(), String> {
        self.step += 1;
        for (i, v) in x.iter_mut().enumerate() {
            *v = ((i * 7919 + self.step * 104_729) % 1000) as f32 / 500.0 - 1.0;
        }
        if let Some(Labels::Classes(y)) = labels {
            for (r, y) in y.iter_mut().enumerate() {
                *y = ((r + self.step) % self.classes) as i64;
            }
        }
        Ok(())
    }
}

fn training(
    model: &Graph,
    batch: usize,
    scheme: Option<Scheme>,
    budget: Option<u64>,
) -> CompiledStep {
    let mut o = CompileOptions::new(Task::Training {
        loss: Loss::CrossEntropy,
        optimizer: sgd(),
    });
    o.batch = Some(batch);
    o.remat = scheme;
    o.budget = budget;
    o.plan.search_time = std::time::Duration::ZERO;
    compile(model, &o).unwrap_or_else(|e| panic!("{scheme:?} {budget:?}: {e}"))
}

/// Trains `steps` steps inside the arena; returns (losses, final state).
fn in_arena(step: &CompiledStep, steps: usize, classes: usize) -> (Vec<f32>, Vec<Arc<TensorData>>) {
    let mut t = Trainer::new(step).expect("executor");
    let mut src = Synthetic { step: 0, classes };
    let losses = (0..steps)
        .map(|_| t.step(&mut src, &mut NoProbe).expect("step"))
        .collect();
    (losses, t.state())
}

/// The same steps on the unplanned reference executor, one allocation per tensor.
fn reference(
    step: &CompiledStep,
    steps: usize,
    classes: usize,
) -> (Vec<f32>, Vec<Arc<TensorData>>) {
    let g = &step.graph;
    let mut state: Vec<TensorData> = step.state.iter().map(|s| (*s.value).clone()).collect();
    let mut src = Synthetic { step: 0, classes };
    let mut losses = Vec::new();
    for k in 1..=steps {
        let data = step
            .inputs
            .iter()
            .position(|r| matches!(r, InputRole::Data(_)))
            .unwrap();
        let mut x = vec![0f32; g.tensor(g.inputs[data]).numel()];
        let lk = step
            .inputs
            .iter()
            .position(|r| *r == InputRole::Labels)
            .unwrap();
        let mut y = vec![0i64; g.tensor(g.inputs[lk]).numel()];
        src.fill(&mut x, Some(Labels::Classes(&mut y))).unwrap();
        let inputs: Vec<TensorData> = step
            .inputs
            .iter()
            .map(|r| match *r {
                InputRole::Data(_) => TensorData::F32(x.clone()),
                InputRole::Labels => TensorData::I64(y.clone()),
                InputRole::Step => TensorData::I64(vec![k as i64]),
                InputRole::State(s) => state[s].clone(),
            })
            .collect();
        let mut outs = lowmem_exec::run(g, &inputs).expect("run").into_iter();
        losses.push(outs.next().unwrap().to_f32()[0]);
        state = outs.collect();
    }
    (losses, state.into_iter().map(Arc::new).collect())
}

fn assert_bitwise(
    what: &str,
    a: &(Vec<f32>, Vec<Arc<TensorData>>),
    b: &(Vec<f32>, Vec<Arc<TensorData>>),
) {
    for (k, (x, y)) in a.0.iter().zip(&b.0).enumerate() {
        assert_eq!(
            x.to_bits(),
            y.to_bits(),
            "{what}: loss of step {} differs",
            k + 1
        );
    }
    assert_eq!(a.1.len(), b.1.len());
    for (k, (x, y)) in a.1.iter().zip(&b.1).enumerate() {
        assert!(x.bit_eq(y), "{what}: state {k} differs");
    }
}

/// Every scheme (and optimal under budgets between the smallest feasible and the peak)
/// trains bitwise as the unplanned executor for 20 steps.
fn schemes_train_bitwise(model: &Graph, batch: usize, steps: usize, classes: usize) {
    let none = training(model, batch, None, None);
    let want = reference(&none, steps, classes);
    assert_bitwise("none", &in_arena(&none, steps, classes), &want);
    let peak = none.planned_peak_bytes();
    for s in [Scheme::None, Scheme::Sqrt, Scheme::Log, Scheme::Revolve] {
        let c = training(model, batch, Some(s), None);
        c.verify().unwrap();
        assert_bitwise(s.name(), &in_arena(&c, steps, classes), &want);
    }
    let floor = {
        let mut o = CompileOptions::new(Task::Training {
            loss: Loss::CrossEntropy,
            optimizer: sgd(),
        });
        o.batch = Some(batch);
        let err = compile(model, &{
            o.remat = Some(Scheme::Optimal);
            o.budget = Some(1);
            o
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("smallest feasible budget"), "{err}");
        none.plan.persistent_bytes
    };
    for budget in [
        peak,
        floor + (peak - floor) * 3 / 4,
        floor + (peak - floor) / 2,
    ] {
        let Ok(c) = std::panic::catch_unwind(|| {
            training(model, batch, Some(Scheme::Optimal), Some(budget))
        }) else {
            continue; // below the smallest feasible budget of this model
        };
        assert!(c.planned_peak_bytes() <= budget);
        assert_bitwise(
            &format!("optimal @ {budget}"),
            &in_arena(&c, steps, classes),
            &want,
        );
    }
}

#[test]
fn digits_models_train_bitwise_in_the_arena_under_every_scheme() {
    for name in ["digits_mlp", "digits_cnn", "digits_dropout"] {
        schemes_train_bitwise(&example(name), 8, 20, 10);
    }
}

#[test]
fn squeezenet_trains_bitwise_in_the_arena() {
    let path = lowmem_testkit::data_dir().join("models/squeezenet.onnx");
    let g = lowmem_onnx::import_model(&std::fs::read(path).unwrap(), "squeezenet").unwrap();
    let none = training(&g, 2, None, None);
    let want = reference(&none, 20, 1000);
    assert_bitwise("none", &in_arena(&none, 20, 1000), &want);
    for s in [Scheme::Sqrt, Scheme::Revolve] {
        let c = training(&g, 2, Some(s), None);
        assert!(
            c.remat.as_ref().unwrap().recomputed_nodes > 0,
            "{} recomputes",
            s.name()
        );
        assert_bitwise(s.name(), &in_arena(&c, 20, 1000), &want);
    }
    let half = none.plan.persistent_bytes + none.plan.arena_bytes / 2;
    let c = training(&g, 2, Some(Scheme::Optimal), Some(half));
    assert!(c.planned_peak_bytes() <= half);
    assert_bitwise("optimal", &in_arena(&c, 20, 1000), &want);
}

#[test]
fn a_compiled_file_trains_as_the_model_it_came_from() {
    let g = example("digits_dropout");
    let c = training(&g, 16, Some(Scheme::Sqrt), None);
    let bytes = lmc::to_bytes(&c);
    let back = lmc::from_bytes(&bytes).expect("round trip");
    assert_eq!(back.plan.order, c.plan.order);
    assert_eq!(back.plan.arena_bytes, c.plan.arena_bytes);
    assert_eq!(back.graph.nodes.len(), c.graph.nodes.len());
    assert_bitwise("from .lmc", &in_arena(&back, 20, 10), &in_arena(&c, 20, 10));
    // The trained state survives a second round trip.
    let mut trained = back.clone();
    for (s, v) in trained.state.iter_mut().zip(in_arena(&back, 5, 10).1) {
        s.value = v;
    }
    let again = lmc::from_bytes(&lmc::to_bytes(&trained)).unwrap();
    for (a, b) in again.state.iter().zip(&trained.state) {
        assert!(a.value.bit_eq(&b.value), "state {}", a.name);
    }
}

#[test]
fn bad_compiled_files_get_clear_errors() {
    let c = training(&example("digits_mlp"), 4, None, None);
    let good = lmc::to_bytes(&c);
    let err = |b: &[u8]| lmc::from_bytes(b).map(|_| ()).unwrap_err().to_string();
    let e = err(&good[..good.len() - 10]);
    assert!(e.contains("truncated"), "{e}");
    let e = err(&good[..20]);
    assert!(e.contains("truncated"), "{e}");
    let e = err(b"PK\x03\x04 this is a zip, not a step");
    assert!(e.contains("not a lowmem compiled step"), "{e}");
    let e = err(&[]);
    assert!(e.contains("not a lowmem compiled step"), "{e}");
    let mut v = good.clone();
    v[8] = 9;
    let e = err(&v);
    assert!(
        e.contains("version 9") && e.contains("reads version 1"),
        "{e}"
    );
    let mut v = good.clone();
    let mid = v.len() / 2;
    v[mid] ^= 0x40;
    let e = err(&v);
    assert!(e.contains("checksum"), "{e}");
    let mut v = good.clone();
    v[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = err(&v);
    assert!(e.contains("corrupted") || e.contains("truncated"), "{e}");
}

#[test]
fn inference_and_gradient_steps_run_in_their_arena() {
    let g = example("mlp");
    let x = common::read_pb(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ir/examples/mlp.x.pb"),
    );
    let want = lowmem_exec::run(&g, std::slice::from_ref(&x.data)).unwrap();
    let c = compile(&g, &CompileOptions::new(Task::Inference)).unwrap();
    let mut ex = lowmem::exec::Executor::new(&c).unwrap();
    ex.set_input(0, &x.data).unwrap();
    ex.run().unwrap();
    for (a, b) in ex.outputs().iter().zip(&want) {
        assert!(a.bit_eq(b));
    }
    // Running twice gives the same outputs (the arena is reused, not re-zeroed).
    ex.run().unwrap();
    for (a, b) in ex.outputs().iter().zip(&want) {
        assert!(a.bit_eq(b));
    }
}

/// The acceptance run: an ONNX digits classifier with Dropout layers compiled with
/// `--remat optimal` under B = persistent + half the arena of the no-remat plan, then trained
/// from the `.lmc` file: the measured peak stays within B and the accuracy is that of
/// training without a budget (here bitwise the same training).
#[test]
fn compile_then_train_under_half_the_arena() {
    let dir = std::env::temp_dir().join(format!("lowmem-accept-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let onnx = dir.join("digits_dropout.onnx");
    std::fs::write(
        &onnx,
        lowmem_onnx::export_model(&example("digits_dropout")).unwrap(),
    )
    .unwrap();
    let g = lowmem_onnx::import_model(&std::fs::read(&onnx).unwrap(), "digits_dropout").unwrap();
    let mut o = CompileOptions::new(Task::Training {
        loss: Loss::CrossEntropy,
        optimizer: Optimizer::Sgd {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
        },
    });
    o.batch = Some(32);
    let none = compile(&g, &o).unwrap();
    let budget = none.plan.persistent_bytes + none.plan.arena_bytes / 2;
    let cli = lowmem_testkit::lowmem_cli!();
    let (onnx_s, lmc, out) = (
        onnx.display().to_string(),
        dir.join("s.lmc").display().to_string(),
        dir.join("trained.onnx").display().to_string(),
    );
    let b = budget.to_string();
    cli.ok(&[
        "compile", &onnx_s, "--train", "--batch", "32", "--remat", "optimal", "--budget", &b, "-o",
        &lmc,
    ]);
    let json = |s: String| -> serde_json::Value {
        serde_json::from_str(s.lines().last().unwrap()).unwrap_or_else(|e| panic!("{e}: {s}"))
    };
    let steps = "300";
    let with = json(cli.ok(&[
        "train", &lmc, "--data", "digits", "--steps", steps, "--json", "--out", &out,
    ]));
    let without = json(cli.ok(&[
        "train", &onnx_s, "--batch", "32", "--data", "digits", "--steps", steps, "--json", "--out",
        &out,
    ]));
    let measured = with["measured_peak_bytes"].as_u64().unwrap();
    assert_eq!(with["budget_bytes"].as_u64(), Some(budget));
    assert_eq!(with["remat"], "optimal");
    assert!(measured <= budget, "measured {measured} > budget {budget}");
    assert_eq!(measured, with["planned_peak_bytes"].as_u64().unwrap());
    assert!(with["planned_peak_bytes"].as_u64() < without["planned_peak_bytes"].as_u64());
    let (a, b) = (
        with["test_accuracy"].as_f64().unwrap(),
        without["test_accuracy"].as_f64().unwrap(),
    );
    assert!(
        (a - b).abs() <= 0.01,
        "accuracy {a} with the budget, {b} without"
    );
    // It trains: at lr 0.1 with momentum 0.9 the end point depends on every bit (seeds
    // 0-3 end at 0.87-0.93 after 300 steps).
    assert!(b > 0.85, "accuracy {b}");
    for k in ["model", "steps", "final_loss", "steps_per_second"] {
        assert!(!with[k].is_null(), "{k} missing: {with}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Checkpointing a gradient step (`lowmem grad --remat`) leaves the loss and every
/// gradient bitwise unchanged, and recomputes.
#[test]
fn gradient_steps_rematerialise_bitwise() {
    let cases = [
        (example("digits_cnn"), 8usize, Loss::Sum),
        (
            lowmem_testkit::load_model("squeezenet", None),
            1,
            Loss::Mean,
        ),
    ];
    for (g, batch, loss) in cases {
        let run = |scheme: Option<Scheme>, budget: Option<u64>| {
            let mut o = CompileOptions::new(Task::Gradient { loss, output: None });
            o.batch = Some(batch);
            o.remat = scheme;
            o.budget = budget;
            o.plan.search_time = std::time::Duration::ZERO;
            let c = compile(&g, &o).unwrap();
            let mut ex = lowmem::exec::Executor::new(&c).unwrap();
            for (k, r) in c.inputs.iter().enumerate() {
                if let InputRole::Data(_) = r {
                    let n = c.graph.tensor(c.graph.inputs[k]).numel();
                    let x = (0..n)
                        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                        .collect();
                    ex.set_input(k, &TensorData::F32(x)).unwrap();
                }
            }
            ex.set_step(1).unwrap();
            ex.run().unwrap();
            (ex.outputs(), c.planned_peak_bytes(), c.remat.clone())
        };
        let (want, _, _) = run(None, None);
        let mut sqrt_peak = 0;
        for scheme in [Scheme::Sqrt, Scheme::Log] {
            let (got, p, r) = run(Some(scheme), None);
            if scheme == Scheme::Sqrt {
                sqrt_peak = p;
            }
            assert!(
                r.unwrap().recomputed_nodes > 0,
                "{}: recomputes",
                scheme.name()
            );
            for (k, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(a.bit_eq(b), "{}: output {k} differs", scheme.name());
            }
        }
        // Optimal under sqrt's peak (a budget some schedule meets).
        let (got, p, _) = run(Some(Scheme::Optimal), Some(sqrt_peak));
        assert!(p <= sqrt_peak);
        for (a, b) in got.iter().zip(&want) {
            assert!(a.bit_eq(b), "optimal");
        }
    }
}
