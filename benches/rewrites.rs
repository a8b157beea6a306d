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
//! (CIFAR-100 CNN 27.8% less memory, 33.3% faster). Only `--store` exists so far.

use std::time::Instant;

use lowmem::autodiff::{Loss, Optimizer};
use lowmem::compile::remat::Scheme;
use lowmem::compile::{CompileOptions, CompiledStep, InputRole, Task, compile};
use lowmem::exec::Executor;
use lowmem::inspect::human_bytes;
use lowmem::ir::{DType, Graph, TensorData};

const BATCH: usize = 32;

/// A model built on demand (the large ones take seconds).
type Build = Box<dyn Fn() -> Graph>;

fn compiled(g: &Graph, store: Option<DType>, remat: Option<Scheme>) -> CompiledStep {
    let mut o = CompileOptions::new(Task::Training {
        loss: Loss::CrossEntropy,
        optimizer: Optimizer::Sgd {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
        },
    });
    o.store = store;
    o.remat = remat;
    o.plan.search_time = std::time::Duration::ZERO;
    compile(g, &o).expect("compile")
}

/// The smallest feasible budget of the training step, with `store` applied.
fn min_budget(g: &Graph, store: Option<DType>) -> u64 {
    let sgd = Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.0,
    };
    let mut tg = lowmem::autodiff::training_step(g, g.outputs[0], Loss::CrossEntropy, &sgd)
        .expect("training step");
    if let Some(d) = store {
        tg.store_saved(d).expect("store");
    }
    let opts = lowmem::plan::PlanOptions {
        search_time: std::time::Duration::ZERO,
        ..Default::default()
    };
    let step = lowmem::compile::Step::new(&tg, opts).expect("step");
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
            "bert-base",
            Box::new(|| lowmem::models::transformer_encoder(12, 768, 12, 128, 3072, 2, BATCH)),
        ),
    ];
    println!(
        "{:<15} {:<22} {:>12} {:>12} {:>8} {:>10}",
        "model", "technique", "peak", "arena", "arena %", "step"
    );
    for (name, build) in &models {
        if !names.is_empty() && !names.iter().any(|n| n == name) {
            continue;
        }
        let g = build();
        let mut base = 0u64;
        for (label, store, remat) in [
            ("none", None, None),
            ("store bf16", Some(DType::BF16), None),
            ("remat sqrt", None, Some(Scheme::Sqrt)),
            ("store bf16 + sqrt", Some(DType::BF16), Some(Scheme::Sqrt)),
        ] {
            let s = compiled(&g, store, remat);
            if label == "none" {
                base = s.plan.arena_bytes;
            }
            let t = if time {
                format!("{:.3} s", step_time(&s))
            } else {
                "-".into()
            };
            println!(
                "{:<15} {:<22} {:>12} {:>12} {:>7.1}% {:>10}",
                name,
                label,
                human_bytes(s.planned_peak_bytes()),
                human_bytes(s.plan.arena_bytes),
                100.0 * s.plan.arena_bytes as f64 / base.max(1) as f64,
                t
            );
        }
        for (label, store) in [
            ("min budget", None),
            ("min budget, store bf16", Some(DType::BF16)),
        ] {
            println!(
                "{:<15} {:<22} {:>12}",
                name,
                label,
                human_bytes(min_budget(&g, store))
            );
        }
    }
}
