//! LP lower bound on recomputation: `cargo bench --bench lpbound --features lp [NAME...]
//! [--time-limit SECONDS] [--per-hazard] [--solver simplex|ipm|pdlp|choose] [--milp] [--verbose]`.
//!
//! For a 2-layer encoder (hidden 64, sequence 16, batch 2), squeezenet, resnet50 and a
//! BERT-base-like encoder (batch 32; the ONNX models from `data/models/`, fetched by
//! `scripts/test.sh`), at 50% and 25% of the planned peak without rematerialisation (or the
//! persistent bytes plus 50%/25% of the arena where the persistent bytes alone exceed that):
//! the Checkmate LP bound on the overhead (`lowmem_lpbound`) beside lowmem's `optimal`
//! schedule at the same budget, the solve time and the LP's size. `--milp` solves the MILP itself
//! (small steps; its MIP dual bound under the time limit) to show the relaxation's gap. Nothing is asserted; the
//! bound is valid for the live-bytes memory model (see the crate docs). With no names, all
//! but `bert_base` run (its LP is the largest; name it to run it).

use std::path::Path;
use std::time::{Duration, Instant};

use lowmem::autodiff::{Loss, Optimizer, TrainingGraph, training_step};
use lowmem::inspect::human_bytes;
use lowmem::ir::Graph;
use lowmem::plan::PlanOptions;
use lowmem::remat::{Scheme, Step, training_roles};
use lowmem_lpbound::{Linearisation, Options, lower_bound, no_remat_peak, node_order};

fn step_of(g: &Graph) -> TrainingGraph {
    let sgd = Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.0,
    };
    training_step(g, g.outputs[0], Loss::CrossEntropy, &sgd).expect("training step")
}

fn run(name: &str, g: &Graph, opts: &Options) {
    let t = Instant::now();
    let tg = step_of(g);
    let roles = training_roles(&tg);
    let plan_opts = PlanOptions {
        search_time: Duration::ZERO,
        ..PlanOptions::default()
    };
    let step = Step::new(&tg, plan_opts).expect("stages");
    let none = step.none().peak();
    let (w, gr, o, i) = step.persistent();
    let persistent = w + gr + o + i;
    let order = node_order(&tg);
    let model_peak = no_remat_peak(&tg, &roles, &order).expect("model peak");
    println!(
        "{name}: {} nodes ({} forward), no-remat planned peak {} (persistent {}), \
         live-bytes model peak {} (set up in {:.1} s)",
        tg.graph.nodes.len(),
        tg.backward_start,
        human_bytes(none),
        human_bytes(persistent),
        human_bytes(model_peak),
        t.elapsed().as_secs_f64()
    );
    for frac in [0.5, 0.25] {
        let mut budget = (none as f64 * frac) as u64;
        let mut how = format!("{:.0}% of peak", 100.0 * frac);
        if budget <= persistent {
            budget = persistent + ((none - persistent) as f64 * frac) as u64;
            how = format!("persistent + {:.0}% of arena", 100.0 * frac);
        }
        let real = match step.run(Scheme::Optimal, Some(budget)) {
            Ok(o) => format!("+{:.2}%", 100.0 * step.overhead(o.recompute_flops)),
            Err(_) => "infeasible".into(),
        };
        match lower_bound(&tg, &roles, budget, opts) {
            Ok(b) => println!(
                "  budget {} ({how}): LP bound {} [{:?}, LP objective {}], lowmem optimal {real}; \
                 build {:.1} s, solve {:.1} s; {} variables, {} constraints, {} nonzeros",
                human_bytes(budget),
                b.overhead
                    .map_or("none".into(), |v| format!("+{:.2}%", 100.0 * v)),
                b.status,
                b.lp_objective
                    .map_or("-".into(), |v| format!("{:.3}%", 100.0 * v)),
                b.build_seconds,
                b.solve_seconds,
                b.variables,
                b.constraints,
                b.nonzeros
            ),
            Err(e) => println!(
                "  budget {} ({how}): {e}; lowmem optimal {real}",
                human_bytes(budget)
            ),
        }
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut opts = Options {
        time_limit: Duration::from_secs(600),
        threads: 2,
        ..Options::default()
    };
    let mut names = Vec::new();
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--time-limit" => {
                let s: f64 = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--time-limit SECONDS");
                opts.time_limit = Duration::from_secs_f64(s);
            }
            "--per-hazard" => opts.linearisation = Linearisation::PerHazard,
            "--solver" => {
                opts.solver = match it.next().map(String::as_str) {
                    Some("simplex") => "simplex",
                    Some("ipm") => "ipm",
                    Some("pdlp") => "pdlp",
                    Some("choose") => "choose",
                    s => panic!("--solver simplex|ipm|pdlp|choose, not {s:?}"),
                }
            }
            "--verbose" => opts.verbose = true,
            "--milp" => opts.integral = true,
            s if s.starts_with("--") => {} // cargo bench's own flags
            s => names.push(s.to_string()),
        }
    }
    let want = |s: &str| {
        if names.is_empty() {
            s != "bert_base"
        } else {
            names.iter().any(|n| n == s)
        }
    };
    if want("encoder") {
        let g = lowmem::models::transformer_encoder(2, 64, 4, 16, 256, 2, 2);
        run("encoder (2 layers, hidden 64, seq 16, batch 2)", &g, &opts);
    }
    for m in ["squeezenet", "resnet50"] {
        if want(m) {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("data/models")
                .join(format!("{m}.onnx"));
            match lowmem::model::load(&path, Some(32)) {
                Ok(g) => run(&format!("{m} (batch 32)"), &g, &opts),
                Err(e) => println!("{m}: skipped ({e})"),
            }
        }
    }
    if want("bert_base") {
        let g = lowmem::models::transformer_encoder(12, 768, 12, 128, 3072, 2, 32);
        run("bert_base (encoder, seq 128, batch 32)", &g, &opts);
    }
}
