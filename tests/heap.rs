//! Measured memory of the compiled step, with a counting global allocator: after warm-up a
//! training step allocates nothing, and the heap held while steps run is the planned peak.

use lowmem::compile::{CompileOptions, CompiledStep, Scheme, Step, Task, compile};
use lowmem::exec::heap::CountingAlloc;
use lowmem::exec::train::{BatchSource, Labels, NoProbe, StepProbe, Trainer};
use lowmem_autodiff::{Loss, Optimizer};
use lowmem_ir::Graph;

#[global_allocator]
static HEAP: CountingAlloc = CountingAlloc::new();

/// The counts are global: the tests of this binary take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Synthetic(usize);

impl BatchSource for Synthetic {
    fn fill(&mut self, x: &mut [f32], labels: Option<Labels<'_>>) -> Result<(), String> {
        self.0 += 1;
        for (i, v) in x.iter_mut().enumerate() {
            *v = ((i * 7919 + self.0 * 104_729) % 1000) as f32 / 500.0 - 1.0;
        }
        if let Some(Labels::Classes(y)) = labels {
            for (r, y) in y.iter_mut().enumerate() {
                *y = ((r + self.0) % 10) as i64;
            }
        }
        Ok(())
    }
}

fn step(g: &Graph, batch: usize, scheme: Option<Scheme>, budget: Option<u64>) -> CompiledStep {
    let mut o = CompileOptions::new(Task::Training {
        loss: Loss::CrossEntropy,
        optimizer: Optimizer::Adam {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.0,
        },
    });
    o.batch = Some(batch);
    o.remat = scheme;
    o.budget = budget;
    o.plan.search_time = std::time::Duration::ZERO;
    compile(g, &o).unwrap()
}

/// Heap allocations on every thread while `steps` steps run, after `warm` steps.
/// The loop runs on a thread of the kernels' pool ([`lowmem::exec::in_pool`]), as
/// `lowmem train` runs it.
fn allocations(s: &CompiledStep, warm: usize, steps: usize) -> u64 {
    let mut t = Trainer::new(s).unwrap();
    let mut src = Synthetic(0);
    lowmem::exec::in_pool(|| {
        for _ in 0..warm {
            t.step(&mut src, &mut NoProbe).unwrap();
        }
        let a0 = HEAP.allocations();
        for _ in 0..steps {
            t.step(&mut src, &mut NoProbe).unwrap();
        }
        HEAP.allocations() - a0
    })
}

/// After one warm-up step (which starts the thread pool), a training step allocates no heap
/// memory on any thread: every tensor and every kernel's scratch lives in the arena or the
/// persistent block. Models cover Gemm/Conv/BatchNorm/Dropout/pooling/Concat/LayerNorm/
/// Softmax/MatMul, large enough that kernels split work across threads, with and without
/// checkpointing.
#[test]
fn a_training_step_allocates_nothing_after_warm_up() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    lowmem::exec::start_threads();
    let cases: Vec<(&str, Graph, usize)> = vec![
        (
            "digits_dropout",
            lowmem_testkit::load_example("digits_dropout"),
            64,
        ),
        ("digits_cnn", lowmem_testkit::load_example("digits_cnn"), 64),
        ("tiny_cnn", lowmem_testkit::load_example("tiny_cnn"), 8),
        (
            "squeezenet",
            lowmem_testkit::load_model("squeezenet", None),
            2,
        ),
    ];
    for (name, g, batch) in &cases {
        for scheme in [None, Some(Scheme::Sqrt)] {
            let s = step(g, *batch, scheme, None);
            let n = allocations(&s, 1, 3);
            assert_eq!(n, 0, "{name} ({scheme:?}): {n} allocations in 3 steps");
        }
    }
}

/// The heap held while steps run, measured from just before the executor allocates its
/// blocks, is the planned peak (persistent block + arena) and so within the budget, on every
/// zoo model at batch 2 (one step; optimal checkpointing under a budget).
#[test]
fn measured_peak_is_the_planned_peak_on_the_zoo() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    lowmem::exec::start_threads();
    struct Probe {
        base: usize,
        peak: usize,
    }
    impl StepProbe for Probe {
        fn before_blocks(&mut self) {
            self.base = HEAP.live();
        }
        fn before(&mut self) {
            HEAP.reset_peak();
        }
        fn after(&mut self) {
            self.peak = self.peak.max(HEAP.peak());
        }
    }
    let dir = lowmem_testkit::data_dir().join("models");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .into_string()
                .ok()?
                .strip_suffix(".onnx")
                .map(String::from)
        })
        .collect();
    names.sort();
    assert!(names.len() >= 9, "{names:?}");
    for name in &names {
        let g = lowmem_testkit::load_model(name, None);
        let none = step(&g, 2, None, None);
        let Task::Training { optimizer, .. } = &none.task else {
            unreachable!()
        };
        let tg = lowmem_autodiff::training_step(
            &none.forward,
            none.forward.outputs[0],
            Loss::CrossEntropy,
            optimizer,
        )
        .unwrap();
        let opts = lowmem_plan::PlanOptions {
            search_time: std::time::Duration::ZERO,
            ..Default::default()
        };
        // 3/4 of the arena, or the smallest feasible budget where that is below it (vgg19
        // is mostly weights).
        let min = Step::new(&tg, opts).unwrap().min_feasible().unwrap();
        let budget = (none.plan.persistent_bytes + none.plan.arena_bytes * 3 / 4).max(min);
        drop((none, tg));
        for (s, budget) in [
            (step(&g, 2, None, None), None),
            (
                step(&g, 2, Some(Scheme::Optimal), Some(budget)),
                Some(budget),
            ),
        ] {
            let mut p = Probe { base: 0, peak: 0 };
            let mut t = Trainer::with_hook(&s, || p.before_blocks()).unwrap();
            lowmem::exec::in_pool(|| t.step(&mut Synthetic(0), &mut p).unwrap());
            drop(t);
            let measured = (p.peak - p.base) as u64;
            let planned = s.planned_peak_bytes();
            eprintln!("{name}: budget {budget:?} planned {planned} measured {measured}");
            // Nothing but the two blocks is allocated, so the measurement is exact.
            assert_eq!(measured, planned, "{name}: measured against planned");
            if let Some(b) = budget {
                assert!(measured <= b, "{name}: measured {measured} > budget {b}");
            }
        }
    }
}
