//! Checkpointing benchmark: `cargo bench --bench remat [deep] [zoo] [dp] [dp2000] [twolevel] [NAME...]`.
//!
//! * `deep`: Chen et al.'s experiment in the planner: a 1001-layer bottleneck ResNet
//!   (`[3, 8, 319, 3]` blocks) at ImageNet scale, batch 32 — the planned peak without
//!   rematerialisation, with `sqrt`, `log`, `revolve` and `optimal` (at the sqrt peak and at
//!   the smallest feasible budget), their overheads, and the time each scheme takes (the
//!   schedule alone, and with the rewrite and the real plan).
//! * `zoo`: resnet50, inception_v1, vgg19 (`data/models/`, fetched by `scripts/test.sh`) and
//!   a BERT-base-like encoder at batch 32: the frontier of every scheme, and where each
//!   first fits 50% and 25% of the no-remat peak, with its overhead.
//! * `dp`: the optimal dynamic programme alone on a heterogeneous chain (random ResNet-like
//!   stages, nothing shared, u64 costs) at compile's granularity: seconds per number of
//!   stages (100, 200, 500, 1000; `dp2000` adds 2000) and budget (min + 0.1/0.3/0.6 ×
//!   (store-all − min)), in one table.
//!
//! * `twolevel`: whole-stage checkpointing (today's `optimal` without record options) against
//!   the two-level scheme (record options inside the stages, [`lowmem::remat::Step::inner`])
//!   on the zoo and the encoders: per budget (50% and 25% of the no-remat peak, or
//!   persistent + that share of the arena where persistent state alone exceeds it, and each
//!   scheme's smallest feasible), the overhead of each, and the per-stage solver's time and
//!   gap.
//!
//! Every figure in `deep`, `zoo` and `twolevel` is a real plan of the rewritten training
//! step (SGD with momentum,
//! softmax cross-entropy). Nothing is asserted: read the ratios.

use std::path::Path;
use std::time::Instant;

use lowmem::autodiff::{Loss, Optimizer, TrainingGraph, training_step};
use lowmem::inspect::human_bytes;
use lowmem::ir::Graph;
use lowmem::plan::PlanOptions;
use lowmem::remat::{GRANULARITY, Outcome, Scheme, Step, first_fit};

const BATCH: usize = 32;

fn step_of(g: &Graph) -> TrainingGraph {
    let sgd = Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.0,
    };
    training_step(g, g.outputs[0], Loss::CrossEntropy, &sgd).expect("training step")
}

fn opts() -> PlanOptions {
    PlanOptions {
        search_time: std::time::Duration::ZERO,
        ..PlanOptions::default()
    }
}

fn row(step: &Step, o: &Outcome, none: u64, secs: f64) {
    println!(
        "  {:<8} {:>11} {:>7.1}% {:>8.1}% {:>8.2} s  {}",
        o.scheme.name(),
        human_bytes(o.peak()),
        100.0 * o.peak() as f64 / none as f64,
        100.0 * step.overhead(o.recompute_flops),
        secs,
        o.detail
    );
}

fn deep() {
    let t = Instant::now();
    let g = lowmem::models::resnet([3, 8, 319, 3], 224, 1000, BATCH);
    let tg = step_of(&g);
    println!(
        "{}: {} forward nodes, {} training-step nodes, {} parameters (built in {:.1} s)",
        g.name,
        g.nodes.len(),
        tg.graph.nodes.len(),
        g.trainable_weights()
            .iter()
            .map(|&w| g.tensor(w).numel())
            .sum::<usize>(),
        t.elapsed().as_secs_f64()
    );
    drop(g);
    let t = Instant::now();
    let step = Step::new(&tg, opts()).expect("stages");
    let n = step.stages.len();
    println!(
        "  {n} stages (cut and costed in {:.2} s)",
        t.elapsed().as_secs_f64()
    );
    let c = &step.chain;
    let time = |f: &dyn Fn() -> lowmem::rematerialize::Schedule| {
        let t = Instant::now();
        let s = f();
        (s, t.elapsed().as_secs_f64())
    };
    let (_, t_sqrt) = time(&|| lowmem::rematerialize::chen_sqrt_best(c));
    let (_, t_log) = time(&|| lowmem::rematerialize::log_scheme(c));
    let slots = (n as f64).sqrt().ceil() as usize;
    let (_, t_rev) = time(&|| lowmem::rematerialize::revolve(n, slots));
    println!(
        "  schedule only: sqrt (all thresholds) {:.3} s, log {:.3} s, revolve({slots}) {:.3} s",
        t_sqrt, t_log, t_rev
    );
    println!(
        "  {:<8} {:>11} {:>8} {:>9} {:>10}  detail",
        "scheme", "peak", "of none", "overhead", "time"
    );
    let t = Instant::now();
    let none = step.run(Scheme::None, None).expect("none");
    let none_peak = none.peak();
    row(&step, &none, none_peak, t.elapsed().as_secs_f64());
    drop(none);
    let mut sqrt_peak = 0;
    for scheme in [Scheme::Sqrt, Scheme::Log, Scheme::Revolve] {
        let t = Instant::now();
        let o = step.run(scheme, None).expect("scheme");
        if scheme == Scheme::Sqrt {
            sqrt_peak = o.peak();
        }
        row(&step, &o, none_peak, t.elapsed().as_secs_f64());
    }
    let t = Instant::now();
    let m = lowmem::rematerialize::min_peak_budget(c);
    let top = lowmem::rematerialize::store_all(c).simulate(c).unwrap().0;
    let (_, t_dp) = time(&|| {
        lowmem::rematerialize::optimal(c, m + (top - m) / 4, GRANULARITY).expect("feasible")
    });
    println!(
        "  optimal DP alone ({n} stages, {GRANULARITY} slots): {t_dp:.2} s (measured after {:.2} s of setup)",
        t.elapsed().as_secs_f64() - t_dp
    );
    for (label, b) in [
        ("at the sqrt peak", sqrt_peak),
        ("at 50% of none", none_peak / 2),
        ("at 25% of none", none_peak / 4),
        ("at 15% of none", none_peak * 15 / 100),
    ] {
        let t = Instant::now();
        match step.run(Scheme::Optimal, Some(b)) {
            Ok(o) => {
                print!("  [{label}] ");
                row(&step, &o, none_peak, t.elapsed().as_secs_f64());
            }
            Err(e) => println!("  [{label}] optimal: {e}"),
        }
    }
    let t = Instant::now();
    let min = step.min_feasible().expect("min");
    println!(
        "  smallest feasible budget: {} ({:.1}% of none), found in {:.2} s",
        human_bytes(min),
        100.0 * min as f64 / none_peak as f64,
        t.elapsed().as_secs_f64()
    );
    if let Ok(o) = step.run(Scheme::Optimal, Some(min)) {
        print!("  [at the smallest feasible] ");
        row(&step, &o, none_peak, 0.0);
    }
}

fn frontier(name: &str, g: &Graph) {
    let tg = step_of(g);
    let step = Step::new(&tg, opts()).expect("stages");
    let (pts, secs) = step.frontier(16).expect("frontier");
    let none = pts
        .iter()
        .find(|p| p.scheme == Scheme::None)
        .expect("none point")
        .peak;
    let min = step.min_feasible().expect("min");
    println!(
        "{name} (batch {BATCH}): {} stages, no remat {}, smallest feasible {} ({:.1}%), {} points planned in {secs:.1} s",
        step.stages.len(),
        human_bytes(none),
        human_bytes(min),
        100.0 * min as f64 / none as f64,
        pts.len()
    );
    for frac in [0.5, 0.25] {
        let target = (none as f64 * frac) as u64;
        print!("  fits {:>2.0}%:", 100.0 * frac);
        for s in Scheme::ALL {
            match first_fit(&pts, s, target) {
                Some(p) => print!(
                    "  {} {} +{:.1}%",
                    s.name(),
                    human_bytes(p.peak),
                    100.0 * p.overhead
                ),
                None => print!("  {} -", s.name()),
            }
        }
        println!();
    }
}

/// `optimal` at `budget`: (planned peak, overhead) or `None` when it does not fit.
fn at(step: &Step, budget: u64) -> Option<(u64, f64)> {
    step.run(Scheme::Optimal, Some(budget))
        .ok()
        .map(|o| (o.peak(), step.overhead(o.recompute_flops)))
}

fn two_level(name: &str, g: &Graph) {
    let tg = step_of(g);
    let mut stage = Step::new(&tg, opts()).expect("stages");
    stage.node_level = false;
    let two = Step::new(&tg, opts()).expect("stages");
    let t = Instant::now();
    let inner = two.inner().expect("record options");
    let solve_secs = t.elapsed().as_secs_f64();
    let none = two.none().peak();
    let (w, gr, o, i) = two.persistent();
    let fixed = w + gr + o + i;
    let solved: Vec<_> = inner
        .solves
        .iter()
        .filter(|s| s.same_as.is_none())
        .collect();
    let max_stage = solved.iter().map(|s| s.seconds).fold(0.0, f64::max);
    let gap = solved.iter().map(|s| s.gap).fold(0.0, f64::max);
    let options: usize = inner.options.iter().map(Vec::len).sum();
    println!(
        "{name} (batch {}): {} stages ({} distinct solved, {options} options, largest \
         {} candidates), solver {:.3} s in all, {:.4} s for the slowest stage, largest gap \
         {:.2}%{}",
        g.batch().unwrap_or(0),
        two.stages.len(),
        solved.len(),
        solved.iter().map(|s| s.candidates).max().unwrap_or(0),
        solve_secs,
        max_stage,
        100.0 * gap,
        if solved.iter().any(|s| s.timed_out) {
            " (time limit reached)"
        } else {
            ""
        }
    );
    println!(
        "  no remat {}, persistent {} ({:.1}%)",
        human_bytes(none),
        human_bytes(fixed),
        100.0 * fixed as f64 / none as f64
    );
    let min_stage = stage.min_feasible().expect("min");
    let min_two = two.min_feasible().expect("min");
    let mut budgets: Vec<(String, u64)> = Vec::new();
    for frac in [0.5, 0.25] {
        let b = (none as f64 * frac) as u64;
        if fixed > b {
            let b = fixed + ((none - fixed) as f64 * frac) as u64;
            budgets.push((format!("persistent + {:.0}% arena", 100.0 * frac), b));
        } else {
            budgets.push((format!("{:.0}% of no remat", 100.0 * frac), b));
        }
    }
    budgets.push(("smallest, whole stages".into(), min_stage));
    budgets.push(("smallest, two-level".into(), min_two));
    println!(
        "  {:<26} {:>11} {:>20} {:>20}",
        "budget", "", "whole stages", "two-level"
    );
    let cell = |r: Option<(u64, f64)>| match r {
        Some((p, ov)) => format!("{} +{:.1}%", human_bytes(p), 100.0 * ov),
        None => "does not fit".into(),
    };
    for (label, b) in budgets {
        println!(
            "  {label:<26} {:>11} {:>20} {:>20}",
            human_bytes(b),
            cell(at(&stage, b)),
            cell(at(&two, b))
        );
    }
}

/// The heterogeneous chain of [`lowmem_testkit::resnet_like`] from `seed` (that of
/// `crates/remat/examples/timing.rs`).
fn resnet_like(n: usize, seed: u64) -> lowmem::rematerialize::Chain {
    let k = lowmem_testkit::resnet_like(&mut lowmem_testkit::Rng::new(seed), n);
    lowmem::rematerialize::Chain::new(k.fwd, k.bwd, k.input_bytes, k.saved_bytes)
        .and_then(|c| c.with_temporaries(k.fwd_tmp, k.bwd_tmp))
        .expect("valid chain")
}

/// Scaling of the optimal DP: stages × budgets, seconds, at [`GRANULARITY`].
fn dp_scaling(sizes: &[usize]) {
    use lowmem::rematerialize::{min_peak_budget, optimal, store_all};
    let fracs = [0.1f64, 0.3, 0.6];
    println!(
        "optimal DP alone, heterogeneous chain, {GRANULARITY} slots ({} threads): seconds",
        std::thread::available_parallelism().map_or(1, |p| p.get())
    );
    print!("  {:>6}", "stages");
    for f in fracs {
        print!("  {:>9}", format!("min+{f}"));
    }
    println!();
    for &n in sizes {
        let c = resnet_like(n, 0x5eed_1234_abcd_0001);
        let min = min_peak_budget(&c);
        let (top, _) = store_all(&c).simulate(&c).expect("store-all");
        print!("  {n:>6}");
        for f in fracs {
            let budget = min + ((top - min) as f64 * f) as u64;
            let t = Instant::now();
            let s = optimal(&c, budget, GRANULARITY).expect("feasible");
            let secs = t.elapsed().as_secs_f64();
            assert!(s.simulate(&c).expect("valid").0 <= budget);
            print!("  {secs:>9.2}");
        }
        println!();
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    if want("dp") || want("dp2000") {
        let mut sizes = vec![100, 200, 500, 1000];
        if args.iter().any(|a| a == "dp2000") {
            sizes.push(2000);
        }
        dp_scaling(&sizes);
    }
    if want("deep") {
        deep();
    }
    let zoo = ["resnet50", "inception_v1", "vgg19"];
    for m in zoo {
        if want("zoo") || want(m) {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("data/models")
                .join(format!("{m}.onnx"));
            match lowmem::model::load(&path, Some(BATCH)) {
                Ok(g) => frontier(m, &g),
                Err(e) => println!("{m}: skipped ({e})"),
            }
        }
    }
    if args.iter().any(|a| a == "twolevel") {
        for m in [
            "resnet50",
            "inception_v1",
            "vgg19",
            "squeezenet",
            "densenet121",
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("data/models")
                .join(format!("{m}.onnx"));
            match lowmem::model::load(&path, Some(BATCH)) {
                Ok(g) => two_level(m, &g),
                Err(e) => println!("{m}: skipped ({e})"),
            }
        }
        let g = lowmem::models::transformer_encoder(2, 64, 4, 16, 256, 2, 2);
        two_level("encoder 2 layers, hidden 64, seq 16", &g);
        let g = lowmem::models::transformer_encoder(12, 768, 12, 128, 3072, 2, BATCH);
        two_level("bert_base (encoder, seq 128)", &g);
        return;
    }
    if want("zoo") || want("bert_base") {
        let g = lowmem::models::transformer_encoder(12, 768, 12, 128, 3072, 2, BATCH);
        frontier("bert_base (encoder, seq 128)", &g);
    }
}
