//! Rewrite benchmark: `cargo bench --bench rewrites [time] [NAME...]`.
//!
//! For the digits classifiers, ResNet-50 and a BERT-base-like encoder at batch 32, each
//! technique alone and combined with checkpointing: the planned peak of the whole training
//! step, the arena (activations and temporaries: what the techniques shrink), the smallest
//! feasible budget of checkpointing (the least-memory schedule lowmem finds), and with
//! `time` the CPU step time (median of 3 runs after one warm-up, in the planned arena).
//! Nothing is asserted: read the ratios. Published figures for comparison: Sohoni et al.
//! (16-bit storage with micro-batching and checkpointing: WideResNet-28-2 up to 60.7x less
//! memory at 0.4% accuracy); DropIT (gamma 0.9, about 20% of GPU memory on ViT); SliceOut
//! (CIFAR-100 CNN 27.8% less memory and 33.3% faster; LM1B Transformer 9% and 8.4%).
//! `bert-ffn` is the encoder with a dropout of 0.1 inside each feed-forward block, where
//! SliceOut slices; ResNet-50 has no dropout, so SliceOut finds no site there.

use std::time::Instant;

use lowmem::autodiff::{Loss, Optimizer, StepOptions};
use lowmem::compile::remat::Scheme;
use lowmem::compile::{CompileOptions, CompiledStep, InputRole, Task, compile};
use lowmem::exec::Executor;
use lowmem::inspect::human_bytes;
use lowmem::ir::{DType, Graph, TensorData};

const BATCH: usize = 32;

/// A model built on demand (the large ones take seconds).
type Build = Box<dyn Fn() -> Graph>;

fn sgd() -> Optimizer {
    Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.0,
    }
}

/// One technique (or combination): the step options, and the scheme.
#[derive(Clone, Default)]
struct Tech {
    opts: StepOptions,
    remat: Option<Scheme>,
}

fn compiled(g: &Graph, t: &Tech) -> Option<CompiledStep> {
    let mut o = CompileOptions::new(Task::Training {
        loss: Loss::CrossEntropy,
        optimizer: sgd(),
    });
    o.store = t.opts.store;
    o.sliceout = t.opts.sliceout;
    o.dropit = t.opts.dropit;
    o.microbatch = t.opts.microbatch;
    o.remat = t.remat;
    o.plan.search_time = std::time::Duration::ZERO;
    match compile(g, &o) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("  ({e})");
            None
        }
    }
}

/// The smallest feasible budget of the training step with `opts` applied.
fn min_budget(g: &Graph, opts: &StepOptions) -> u64 {
    let tg =
        lowmem::autodiff::training_step_with(g, g.outputs[0], Loss::CrossEntropy, &sgd(), opts)
            .expect("training step");
    let popts = lowmem::plan::PlanOptions {
        search_time: std::time::Duration::ZERO,
        ..Default::default()
    };
    let step = lowmem::compile::Step::new(&tg, popts).expect("step");
    step.min_feasible().expect("min feasible")
}

fn step_time(s: &CompiledStep) -> f64 {
    let mut ex = Executor::new(s).expect("executor");
    for (k, role) in s.inputs.iter().enumerate() {
        let t = s.graph.tensor(s.graph.inputs[k]);
        match role {
            InputRole::Data(_) => ex
                .set_input(k, &TensorData::F32(vec![0.5; t.numel()]))
                .expect("input"),
            InputRole::Step => ex.set_step(1).expect("step"),
            _ => {}
        }
    }
    ex.run().expect("run");
    let mut v: Vec<f64> = (0..3)
        .map(|_| {
            let t = Instant::now();
            ex.run().expect("run");
            t.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[1]
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let time = args.iter().any(|a| a == "time");
    let names: Vec<&String> = args.iter().filter(|a| *a != "time").collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let load_json = |n: &str| {
        let text =
            std::fs::read_to_string(root.join(format!("ir/examples/{n}.json"))).expect("example");
        lowmem::ir::json::from_json(&text)
            .expect("json")
            .with_batch(BATCH)
            .expect("batch")
    };
    let models: Vec<(&str, Build)> = vec![
        (
            "digits_dropout",
            Box::new(move || load_json("digits_dropout")),
        ),
        ("digits_cnn", Box::new(move || load_json("digits_cnn"))),
        (
            "resnet50",
            Box::new(|| lowmem::models::resnet([3, 4, 6, 3], 224, 1000, BATCH)),
        ),
        (
            "bert-ffn",
            Box::new(|| {
                lowmem::models::transformer_encoder_with(
                    12,
                    768,
                    12,
                    128,
                    3072,
                    2,
                    BATCH,
                    Some(0.1),
                )
            }),
        ),
    ];
    let opts = |sliceout, dropit, store, microbatch| StepOptions {
        sliceout,
        dropit,
        store,
        microbatch,
    };
    let all = opts(Some(0.5), Some(0.9), Some(DType::BF16), None);
    let techniques: Vec<(&str, Tech)> = vec![
        ("none", Tech::default()),
        (
            "sliceout 0.5",
            Tech {
                opts: opts(Some(0.5), None, None, None),
                remat: None,
            },
        ),
        (
            "dropit 0.9",
            Tech {
                opts: opts(None, Some(0.9), None, None),
                remat: None,
            },
        ),
        (
            "store bf16",
            Tech {
                opts: opts(None, None, Some(DType::BF16), None),
                remat: None,
            },
        ),
        (
            "microbatch 4",
            Tech {
                opts: opts(None, None, None, Some(4)),
                remat: None,
            },
        ),
        (
            "all but microbatch",
            Tech {
                opts: all.clone(),
                remat: None,
            },
        ),
        (
            "all + microbatch 4",
            Tech {
                opts: opts(Some(0.5), Some(0.9), Some(DType::BF16), Some(4)),
                remat: None,
            },
        ),
        (
            "remat sqrt",
            Tech {
                opts: StepOptions::default(),
                remat: Some(Scheme::Sqrt),
            },
        ),
        (
            "all + remat sqrt",
            Tech {
                opts: all.clone(),
                remat: Some(Scheme::Sqrt),
            },
        ),
        (
            "all + mb 4 + sqrt",
            Tech {
                opts: opts(Some(0.5), Some(0.9), Some(DType::BF16), Some(4)),
                remat: Some(Scheme::Sqrt),
            },
        ),
    ];
    println!(
        "{:<15} {:<20} {:>12} {:>12} {:>8} {:>6} {:>10}",
        "model", "technique", "peak", "arena", "arena %", "sites", "step"
    );
    for (name, build) in &models {
        if !names.is_empty() && !names.iter().any(|n| n == name) {
            continue;
        }
        let g = build();
        let mut base = (0u64, 0f64);
        for (label, tech) in &techniques {
            let Some(s) = compiled(&g, tech) else {
                continue;
            };
            let secs = if time { step_time(&s) } else { 0.0 };
            if *label == "none" {
                base = (s.plan.arena_bytes, secs);
            }
            let t = if time {
                format!("{secs:.3} s ({:.2}x)", secs / base.1.max(1e-9))
            } else {
                "-".into()
            };
            let applied = s.rewrites.iter().filter(|r| r.bytes_saved > 0).count();
            println!(
                "{:<15} {:<20} {:>12} {:>12} {:>7.1}% {:>6} {:>10}",
                name,
                label,
                human_bytes(s.planned_peak_bytes()),
                human_bytes(s.plan.arena_bytes),
                100.0 * s.plan.arena_bytes as f64 / base.0.max(1) as f64,
                applied,
                t
            );
        }
        for (label, o) in [
            ("min budget", StepOptions::default()),
            ("min budget, all", all.clone()),
        ] {
            println!(
                "{:<15} {:<20} {:>12}",
                name,
                label,
                human_bytes(min_budget(&g, &o))
            );
        }
    }
}
