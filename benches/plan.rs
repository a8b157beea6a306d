//! Memory-planning benchmark: `cargo bench --bench plan [NAME...]`.
//!
//! For every zoo model (`data/ref/<name>/model.onnx`, made by `scripts/test.sh`) and a
//! BERT-base-like transformer encoder built in code, at batch 32, plans the whole training
//! step (softmax cross-entropy, SGD with momentum) and the forward pass alone, and prints the
//! naive, lower-bound and arena bytes, the arena / lower bound ratio of every heuristic the
//! planner tried, the persistent bytes, the planning time (`lowmem_plan::plan` only) and
//! whether the plan verifies. Names on the command line restrict the models.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use lowmem::autodiff::{Loss, Optimizer, training_step};
use lowmem::ir::Graph;
use lowmem::models::transformer_encoder;
use lowmem::plan::{MemoryPlan, PlanOptions, plan};
use lowmem::planning::verify;
use lowmem::schedule::Roles;

const BATCH: usize = 32;
const ZOO: [&str; 9] = [
    "alexnet",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "resnet50",
    "shufflenet",
    "squeezenet",
    "vgg19",
    "zfnet512",
];
const BERT: &str = "bert_base";

struct Row {
    model: String,
    plan: MemoryPlan,
    took: Duration,
    verified: Result<(), String>,
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1024.0 * 1024.0))
}

fn ratio(b: u64, lb: u64) -> f64 {
    b as f64 / lb.max(1) as f64
}

fn plan_one(name: &str, graph: Graph, roles: Roles) -> Row {
    let t = Instant::now();
    let p = plan(&graph, &roles, &PlanOptions::default());
    let took = t.elapsed();
    let verified = verify(&graph, &roles, &p).map_err(|e| e.to_string());
    Row {
        model: name.to_string(),
        plan: p,
        took,
        verified,
    }
}

fn print_table(title: &str, rows: &[Row]) {
    println!("\n## {title} (batch {BATCH}; MiB = 2^20 bytes)\n");
    println!(
        "| model | naive MiB | lower bound MiB | arena MiB | arena/LB | persistent MiB | planner (order) | plan ms | verified |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|---:|---|");
    for r in rows {
        let p = &r.plan;
        println!(
            "| {} | {} | {} | {} | {:.4} | {} | {} ({}) | {:.1} | {} |",
            r.model,
            mib(p.naive_bytes),
            mib(p.lower_bound_bytes),
            mib(p.arena_bytes),
            ratio(p.arena_bytes, p.lower_bound_bytes),
            mib(p.persistent_bytes),
            p.planner,
            p.order_kind,
            r.took.as_secs_f64() * 1e3,
            match &r.verified {
                Ok(()) => "yes".to_string(),
                Err(e) => format!("NO: {e}"),
            }
        );
    }
    // Every heuristic tried, as arena / lower bound of the chosen order.
    let mut cols: Vec<String> = Vec::new();
    for r in rows {
        for (h, _) in &r.plan.heuristics {
            if !cols.contains(h) {
                cols.push(h.clone());
            }
        }
    }
    println!("\n{title}: arena / lower bound of each heuristic tried\n");
    print!("| model |");
    for c in &cols {
        print!(" {c} |");
    }
    println!();
    print!("|---|");
    for _ in &cols {
        print!("---:|");
    }
    println!();
    for r in rows {
        let by: BTreeMap<&str, u64> = r
            .plan
            .heuristics
            .iter()
            .map(|(h, b)| (h.as_str(), *b))
            .collect();
        print!("| {} |", r.model);
        for c in &cols {
            match by.get(c.as_str()) {
                Some(&b) => print!(" {:.4} |", ratio(b, r.plan.lower_bound_bytes)),
                None => print!(" - |"),
            }
        }
        println!();
    }
    println!("\n{title}: arena bytes of each heuristic tried\n");
    for r in rows {
        let cells: Vec<String> = r
            .plan
            .heuristics
            .iter()
            .map(|(h, b)| format!("{h} {b}"))
            .collect();
        println!(
            "- {}: naive {}, lower bound {}, arena {}; {}",
            r.model,
            r.plan.naive_bytes,
            r.plan.lower_bound_bytes,
            r.plan.arena_bytes,
            cells.join(", ")
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; other arguments pick models.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let sgd = Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.0,
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/ref");
    let mut models: Vec<(String, Graph)> = Vec::new();
    if root.is_dir() {
        for name in ZOO.iter().filter(|n| wanted(n)) {
            let path = root.join(name).join("model.onnx");
            if !path.exists() {
                println!("note: {} is missing; skipping {name}", path.display());
                continue;
            }
            match lowmem::model::load(&path, Some(BATCH)) {
                Ok(g) => models.push((name.to_string(), g)),
                Err(e) => println!("note: {name}: {e}; skipping"),
            }
        }
    } else {
        println!(
            "note: {} is absent (run scripts/test.sh to fetch the zoo); planning only {BERT}",
            root.display()
        );
    }
    if wanted(BERT) {
        // BERT-base: 12 layers, d_model 768, 12 heads, sequence 128, FFN 3072, 2 classes.
        models.push((
            BERT.to_string(),
            transformer_encoder(12, 768, 12, 128, 3072, 2, BATCH),
        ));
    }

    let mut train = Vec::new();
    let mut infer = Vec::new();
    for (name, forward) in &models {
        let out = forward.outputs[0];
        match training_step(forward, out, Loss::CrossEntropy, &sgd) {
            Ok(tg) => {
                let roles = lowmem::compile::training_roles(&tg);
                train.push(plan_one(name, tg.graph, roles));
            }
            Err(e) => println!("note: {name}: no training step: {e}"),
        }
        let roles = Roles::inference(forward);
        infer.push(plan_one(name, forward.clone(), roles));
        eprintln!("planned {name}");
    }
    print_table("Training step", &train);
    print_table("Inference", &infer);

    let mut bad = Vec::new();
    for (mode, rows) in [("training", &train), ("inference", &infer)] {
        for r in rows.iter() {
            let q = ratio(r.plan.arena_bytes, r.plan.lower_bound_bytes);
            if q > 1.02 {
                bad.push(format!("{} {mode} ({q:.4})", r.model));
            }
            if r.verified.is_err() {
                bad.push(format!("{} {mode} does not verify", r.model));
            }
        }
    }
    if bad.is_empty() {
        println!("\nevery plan verifies and is within 1.02x of its lower bound");
    } else {
        println!(
            "\nabove 1.02x of the lower bound or unverified: {}",
            bad.join("; ")
        );
    }
}
