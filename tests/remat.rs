//! Checkpointing end to end: every scheme's rewritten step, run in its planned arena, trains
//! to bitwise the same weights (and BatchNorm running statistics) as the step without
//! rematerialisation, and its plan verifies and fits the budget.

use lowmem::remat::{Outcome, Scheme, Step, parse_budget};
use lowmem_autodiff::{Loss, Optimizer, TrainingGraph, training_step};
use lowmem_exec::{Layout, run, run_planned};
use lowmem_ir::{Graph, TensorData};
use lowmem_plan::PlanOptions;
use lowmem_testkit::{load_model, lowmem_cli, model_path};

fn sgd() -> Optimizer {
    Optimizer::Sgd {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 1e-4,
    }
}

fn opts() -> PlanOptions {
    PlanOptions {
        search_time: std::time::Duration::ZERO,
        ..PlanOptions::default()
    }
}

/// Deterministic data: `x` of the data input's shape, labels in `0..classes`.
fn batch(tg: &TrainingGraph, step: usize, classes: usize) -> (TensorData, TensorData) {
    let xt = tg.graph.tensor(tg.data[0]);
    let n = xt.numel();
    let x = (0..n)
        .map(|i| ((i * 7919 + step * 104_729) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let rows = xt.shape[0];
    let y = (0..rows).map(|r| ((r + step) % classes) as i64).collect();
    (TensorData::F32(x), TensorData::I64(y))
}

/// Runs `steps` training steps of `graph` (the step `tg` or its rewrite, with the same
/// inputs), planned when `outcome` is given; returns the losses and the final state.
fn train(
    tg: &TrainingGraph,
    graph: &Graph,
    outcome: Option<&Outcome>,
    steps: usize,
    classes: usize,
) -> (Vec<TensorData>, Vec<TensorData>) {
    let mut state: Vec<TensorData> = tg.state.iter().map(|s| (*s.init).clone()).collect();
    let mut losses = Vec::new();
    for step in 1..=steps {
        let (x, y) = batch(tg, step, classes);
        let inputs: Vec<TensorData> = graph
            .inputs
            .iter()
            .map(|&i| {
                if i == tg.data[0] {
                    x.clone()
                } else if Some(i) == tg.labels {
                    y.clone()
                } else if i == tg.step {
                    TensorData::I64(vec![step as i64])
                } else {
                    let k = tg.state.iter().position(|s| s.input == i).expect("state");
                    state[k].clone()
                }
            })
            .collect();
        let outs = match outcome {
            Some(o) => {
                let p = &o.plan;
                let layout = Layout {
                    order: &p.order,
                    tensor_offset: p.tensor_offset.as_slice(),
                    workspace: p.workspace.as_slice(),
                    arena_bytes: p.arena_bytes,
                };
                run_planned(graph, &layout, inputs).expect("planned run").0
            }
            None => run(graph, &inputs).expect("run"),
        };
        let mut outs = outs.into_iter();
        losses.push(outs.next().expect("loss"));
        state = outs.collect();
    }
    (losses, state)
}

/// Trains 3 steps with and without `scheme`; returns the number of recompute nodes.
fn check_scheme(
    tg: &TrainingGraph,
    step: &Step,
    scheme: Scheme,
    budget: Option<u64>,
    n: usize,
) -> usize {
    let o = step
        .run(scheme, budget)
        .unwrap_or_else(|e| panic!("{}: {e}", scheme.name()));
    if let Some(b) = budget {
        assert!(
            o.peak() <= b,
            "{}: peak {} > budget {b}",
            scheme.name(),
            o.peak()
        );
    }
    lowmem::planning::verify(&o.graph, &o.roles, &o.plan)
        .unwrap_or_else(|e| panic!("{}: {e}", scheme.name()));
    o.graph.validate().expect("valid rewritten graph");
    let (want_l, want_s) = train(tg, &tg.graph, None, 3, n);
    let (got_l, got_s) = train(tg, &o.graph, Some(&o), 3, n);
    for (k, (a, b)) in want_l.iter().zip(&got_l).enumerate() {
        assert!(
            a.bit_eq(b),
            "{}: loss of step {} differs",
            scheme.name(),
            k + 1
        );
    }
    for (s, (a, b)) in tg.state.iter().zip(want_s.iter().zip(&got_s)) {
        assert!(
            a.bit_eq(b),
            "{}: state '{}' differs after 3 steps",
            scheme.name(),
            s.name
        );
    }
    o.recomputed_nodes
}

#[test]
fn residual_mlp_trains_bitwise_identically_under_every_scheme() {
    let classes = 4;
    let g = lowmem::models::residual_mlp(8, 32, classes, 16);
    let tg = training_step(&g, g.outputs[0], Loss::CrossEntropy, &sgd()).unwrap();
    let step = Step::new(&tg, opts()).unwrap();
    assert_eq!(step.stages.len(), 9, "8 blocks and the classifier");
    let none = step.run(Scheme::None, None).unwrap();
    let min = step.min_feasible().unwrap();
    assert!(min < none.peak(), "min {min} vs none {}", none.peak());
    for scheme in [Scheme::None, Scheme::Sqrt, Scheme::Log, Scheme::Revolve] {
        check_scheme(&tg, &step, scheme, None, classes);
    }
    let mid = min + (none.peak() - min) / 2;
    check_scheme(&tg, &step, Scheme::Optimal, Some(mid), classes);
    check_scheme(&tg, &step, Scheme::Optimal, Some(min), classes);
    check_scheme(&tg, &step, Scheme::Revolve, Some(mid), classes);
    // Recomputation happens and buys memory.
    let log = step.run(Scheme::Log, None).unwrap();
    assert!(log.recomputed_nodes > 0 && log.recompute_flops > 0);
    assert!(log.peak() < none.peak());
    // BatchNorm running statistics are step outputs of the original nodes only.
    let bn_updates = log
        .graph
        .nodes
        .iter()
        .filter(|n| matches!(n.op, lowmem_ir::Op::BatchNormTrain(_)))
        .count();
    assert!(
        bn_updates > 8,
        "recomputed BatchNorms are present ({bn_updates})"
    );
}

#[test]
fn squeezenet_trains_bitwise_identically_with_rematerialisation() {
    let g = load_model("squeezenet", Some(1));
    let tg = training_step(&g, g.outputs[0], Loss::CrossEntropy, &sgd()).unwrap();
    let step = Step::new(&tg, opts()).unwrap();
    assert!(step.stages.len() >= 8, "{} stages", step.stages.len());
    let classes = 1000;
    let none = step.run(Scheme::None, None).unwrap();
    let min = step.min_feasible().unwrap();
    let mid = min + (none.peak() - min) / 2;
    assert!(check_scheme(&tg, &step, Scheme::Sqrt, None, classes) > 0);
    assert!(check_scheme(&tg, &step, Scheme::Optimal, Some(mid), classes) > 0);
}

/// A real model with BatchNorm and residual blocks: the running statistics are updated once
/// per step, by the original nodes, however often a block is recomputed.
#[test]
fn resnet50_trains_bitwise_identically_with_rematerialisation() {
    let g = load_model("resnet50", Some(2));
    let tg = training_step(&g, g.outputs[0], Loss::CrossEntropy, &sgd()).unwrap();
    let step = Step::new(&tg, opts()).unwrap();
    assert_eq!(step.stages.len(), 18);
    let none = step.run(Scheme::None, None).unwrap();
    let min = step.min_feasible().unwrap();
    let r = check_scheme(
        &tg,
        &step,
        Scheme::Optimal,
        Some(min + (none.peak() - min) / 3),
        1000,
    );
    assert!(r > 0, "nothing recomputed");
    // The smallest feasible budget: stages recorded partially, re-run in the backward.
    let o = step.run(Scheme::Optimal, Some(min)).unwrap();
    assert!(
        o.schedule
            .as_ref()
            .is_some_and(|s| s.options.iter().any(|&k| k > 0)),
        "{}",
        o.detail
    );
    check_scheme(&tg, &step, Scheme::Optimal, Some(min), 1000);
}

#[test]
fn budgets_parse_and_bad_ones_are_named() {
    assert_eq!(parse_budget("4GiB").unwrap(), 4 << 30);
    assert_eq!(parse_budget("512MiB").unwrap(), 512 << 20);
    assert_eq!(parse_budget("1048576").unwrap(), 1 << 20);
    assert_eq!(parse_budget("2 GB").unwrap(), 2_000_000_000);
    assert_eq!(parse_budget("1.5gib").unwrap(), 3 << 29);
    for bad in [
        "",
        "GiB",
        "12XB",
        "1.2.3MiB",
        "-5",
        "99999999999999999999TiB",
    ] {
        let e = parse_budget(bad).unwrap_err().to_string();
        assert!(e.contains("budget"), "{bad}: {e}");
    }
}

#[test]
fn too_small_budgets_say_why_and_the_minimum() {
    let g = lowmem::models::residual_mlp(6, 32, 4, 16);
    let tg = training_step(&g, g.outputs[0], Loss::CrossEntropy, &sgd()).unwrap();
    let step = Step::new(&tg, opts()).unwrap();
    let min = step.min_feasible().unwrap();
    let (w, gr, o, i) = step.persistent();
    let fixed = w + gr + o + i;
    // Below what every step holds.
    let e = step
        .run(Scheme::Optimal, Some(fixed - 1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("weights") && e.contains("gradients"), "{e}");
    assert!(e.contains(&format!("{min} bytes")), "{e}");
    // Above that but below the smallest schedule.
    for scheme in [Scheme::Optimal, Scheme::Sqrt, Scheme::Revolve, Scheme::None] {
        let e = step.run(scheme, Some(min - 1)).unwrap_err().to_string();
        assert!(e.contains("smallest feasible budget is"), "{e}");
        assert!(e.contains(&format!("{min} bytes")), "{e}");
    }
    // The minimum itself fits.
    assert!(step.run(Scheme::Optimal, Some(min)).unwrap().peak() <= min);
    // Optimal without a budget asks for one.
    let e = step.run(Scheme::Optimal, None).unwrap_err().to_string();
    assert!(e.contains("--budget"), "{e}");
}

/// At every classic schedule's planned peak, `optimal` fits with no more recomputation.
#[test]
fn optimal_is_never_worse_than_sqrt_log_or_revolve() {
    let g = load_model("resnet50", Some(32));
    let tg = training_step(&g, g.outputs[0], Loss::CrossEntropy, &sgd()).unwrap();
    let step = Step::new(&tg, opts()).unwrap();
    let mut classic = step.sqrt_candidates(12).unwrap();
    for s in [1, 2, 3, 4, 6, 9, 13, 18] {
        classic.push(step.revolve(s).unwrap());
    }
    classic.push(step.log().unwrap());
    for c in &classic {
        let o = step.run(Scheme::Optimal, Some(c.peak())).unwrap();
        assert!(
            o.peak() <= c.peak() && o.recompute_flops <= c.recompute_flops,
            "{} ({}): peak {} recompute {}; optimal: peak {} recompute {} ({})",
            c.scheme.name(),
            c.detail,
            c.peak(),
            c.recompute_flops,
            o.peak(),
            o.recompute_flops,
            o.detail
        );
    }
}

#[test]
fn plan_cli_reports_remat_fields_and_frontier_plots() {
    let dir = std::env::temp_dir().join(format!("lowmem-remat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = model_path("squeezenet");
    let model = model.to_str().unwrap();
    let json = dir.join("plan.json");
    let base = ["plan", model, "--train", "--batch", "4", "--search-ms", "0"];
    let cli = lowmem_cli!();
    cli.ok(&[
        &base[..],
        &["--remat", "none", "--json", json.to_str().unwrap()],
    ]
    .concat());
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let none_peak = v["peak_bytes"].as_u64().unwrap();
    assert_eq!(v["remat"], "none");
    assert_eq!(v["recomputed_nodes"], 0);
    let budget = (none_peak * 3 / 4).to_string();
    let stdout = cli.ok(&[
        &base[..],
        &[
            "--remat",
            "optimal",
            "--budget",
            &budget,
            "--verify",
            "--json",
            json.to_str().unwrap(),
        ],
    ]
    .concat());
    assert!(stdout.contains("verified"), "{stdout}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["remat"], "optimal");
    assert_eq!(v["budget_bytes"].as_u64(), Some(none_peak * 3 / 4));
    assert!(v["peak_bytes"].as_u64().unwrap() <= none_peak * 3 / 4);
    assert!(v["recomputed_nodes"].as_u64().unwrap() > 0);
    let (f, b, r) = (
        v["forward_flops"].as_u64().unwrap(),
        v["backward_flops"].as_u64().unwrap(),
        v["recompute_flops"].as_u64().unwrap(),
    );
    assert!(r > 0 && r <= f, "recompute {r} of forward {f}");
    let overhead = v["overhead"].as_f64().unwrap();
    assert!((overhead - r as f64 / (f + b) as f64).abs() < 1e-12);
    let ck = v["checkpoints"].as_array().unwrap();
    assert!(!ck.is_empty() && ck.len() < v["stages"].as_u64().unwrap() as usize);
    // Every checkpoint names a tensor of the plan.
    let names: Vec<&str> = v["buffers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["tensor"].as_str())
        .collect();
    for c in ck {
        assert!(names.contains(&c.as_str().unwrap()), "{c}");
    }
    // Stages recorded partially: smaller records, re-run FLOPs within the step's recompute
    // and at least the solver's bound, dropped tensors named as in the plan.
    let partial = v["partial_records"].as_array().expect("partial_records");
    let mut rerun = 0;
    for p in partial {
        let n = |k: &str| p[k].as_u64().unwrap();
        assert!(n("record_bytes") < n("full_record_bytes"), "{p}");
        assert!(n("lower_bound_flops") <= n("recompute_flops"), "{p}");
        rerun += n("recompute_flops");
        for d in p["dropped"].as_array().unwrap() {
            assert!(names.contains(&d.as_str().unwrap()), "{d}");
        }
    }
    assert!(rerun <= r, "{rerun} > {r}");
    // The recomputed nodes appear in the schedule.
    let remat_steps = v["schedule"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["node"].as_str().unwrap().contains(".remat"))
        .count();
    assert_eq!(remat_steps as u64, v["recomputed_nodes"].as_u64().unwrap());

    // Frontier: a table with every scheme and an HTML page with an SVG plot.
    let html = dir.join("frontier.html");
    let fj = dir.join("frontier.json");
    let stdout = cli.ok(&[
        "frontier",
        model,
        "--train",
        "--batch",
        "4",
        "--levels",
        "6",
        "--html",
        html.to_str().unwrap(),
        "--json",
        fj.to_str().unwrap(),
    ]);
    for s in [
        "none", "sqrt", "log", "revolve", "optimal", "fits 50%", "fits 25%",
    ] {
        assert!(stdout.contains(s), "{s} missing: {stdout}");
    }
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && page.contains("<polyline") && page.contains("optimal"));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&fj).unwrap()).unwrap();
    let pts = v["points"].as_array().unwrap();
    assert!(pts.len() >= 8);
    assert!(pts.iter().any(|p| p["scheme"] == "optimal"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn plan_cli_budget_errors_are_clear() {
    let model = model_path("squeezenet");
    let model = model.to_str().unwrap();
    let cli = lowmem_cli!();
    let fails = |args: &[&str], needles: &[&str]| {
        cli.fails(args, needles);
    };
    fails(
        &[
            "plan", model, "--train", "--remat", "optimal", "--budget", "lots",
        ],
        &["budget 'lots'", "512MiB"],
    );
    fails(&["plan", model, "--remat", "sqrt"], &["--train"]);
    fails(
        &[
            "plan", model, "--train", "--batch", "4", "--remat", "optimal", "--budget", "1MiB",
        ],
        &[
            "weights",
            "gradients",
            "optimizer state",
            "smallest feasible budget",
        ],
    );
    fails(
        &[
            "plan", model, "--train", "--batch", "4", "--remat", "optimal",
        ],
        &["--budget", "smallest feasible budget"],
    );
}

/// The two-level scheme (record options inside the stages): a 2-layer BERT-style encoder
/// (hidden 64, seq 16, batch 2) fits persistent state plus half of its activation arena, its
/// least peak is below what whole-stage checkpointing reaches, and it trains bitwise
/// identically.
#[test]
fn encoder_fits_half_its_arena_with_options_inside_stages() {
    let classes = 2;
    let g = lowmem::models::transformer_encoder(2, 64, 4, 16, 256, classes, 2);
    let tg = training_step(&g, g.outputs[0], Loss::CrossEntropy, &sgd()).unwrap();
    let step = Step::new(&tg, opts()).unwrap();
    let none = step.run(Scheme::None, None).unwrap();
    let (w, gr, o, i) = step.persistent();
    let fixed = w + gr + o + i;
    let budget = fixed + (none.peak() - fixed) / 2;
    let out = step.run(Scheme::Optimal, Some(budget)).unwrap();
    assert!(out.peak() <= budget, "{} > {budget}", out.peak());
    let sched = out.schedule.as_ref().expect("a rewritten step");
    assert!(
        sched.options.iter().any(|&o| o > 0),
        "some stage is recorded with an option: {:?}",
        sched.options
    );
    // The least peak over whole-stage schedules (the DP's least-memory one, Revolve with
    // one slot, the log scheme), planned, against the two-level one.
    let stage_level = [
        lowmem_remat::optimal(&step.chain, lowmem_remat::min_peak_budget(&step.chain), 500)
            .unwrap(),
        lowmem_remat::revolve(step.stages.len(), 1),
        lowmem_remat::log_scheme(&step.chain),
    ]
    .into_iter()
    .map(|s| {
        step.realise(Scheme::Optimal, s, String::new())
            .unwrap()
            .peak()
    })
    .min()
    .unwrap();
    let two_level = step.min_feasible().unwrap();
    assert!(
        two_level < stage_level,
        "two-level {two_level} vs stage-level {stage_level}"
    );
    check_scheme(&tg, &step, Scheme::Optimal, Some(budget), classes);
    check_scheme(&tg, &step, Scheme::Optimal, Some(two_level), classes);
}

/// Cheap-op recomputation: among the attention stage's record options is one that drops the
/// dropout's output (regenerated from its seed) and re-runs only cheap pointwise nodes, at a
/// small fraction of the stage's forward cost.
#[test]
fn attention_options_recompute_dropout_instead_of_saving_it() {
    let g = lowmem::models::transformer_encoder(2, 64, 4, 16, 256, 2, 2);
    let tg = training_step(&g, g.outputs[0], Loss::CrossEntropy, &sgd()).unwrap();
    let step = Step::new(&tg, opts()).unwrap();
    let inner = step.inner().unwrap();
    let gr = &tg.graph;
    let node = |name: &str| gr.nodes.iter().position(|n| n.name == name).unwrap();
    let dropout_out = gr.nodes[node("layer0.attn_dropout")].outputs[0];
    let stage = step
        .stages
        .iter()
        .position(|s| {
            s.nodes
                .iter()
                .any(|v| v.index() == node("layer0.attn_dropout"))
        })
        .unwrap();
    let cheap = inner.options[stage]
        .iter()
        .filter(|o| o.dropped.contains(&dropout_out))
        .min_by_key(|o| o.record.recompute)
        .expect("an option drops the dropout output");
    assert!(
        cheap.record.recompute * 100 < step.chain.fwd[stage],
        "recompute {} vs stage forward {}",
        cheap.record.recompute,
        step.chain.fwd[stage]
    );
    for (_, rerun) in &cheap.recompute {
        for v in rerun {
            assert!(
                !matches!(
                    gr.node(*v).op,
                    lowmem_ir::Op::MatMul | lowmem_ir::Op::Gemm(_)
                ),
                "re-runs {}",
                gr.node(*v).name
            );
        }
    }
    assert!(cheap.record.saved_bytes < step.chain.saved_bytes[stage]);
    // Every option states a proven bound no larger than its cost.
    for o in inner.options.iter().flatten() {
        assert!(o.lower_bound <= o.record.recompute);
    }
}

/// `frontier --microbatch K`: a target no scheme reaches on the whole batch is reached by
/// the micro-batched step, whose reported peak is that of `plan` at the target (verified;
/// the frontier plans without the improving search).
#[test]
fn frontier_reports_the_micro_batched_fit() {
    let cli = lowmem_cli!();
    let dir = std::env::temp_dir().join(format!("lowmem-frontier-mb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fj = dir.join("frontier.json");
    let model = "ir/examples/tiny_cnn.json";
    let stdout = cli.ok(&[
        "frontier",
        model,
        "--batch",
        "64",
        "--levels",
        "6",
        "--microbatch",
        "4",
        "--json",
        fj.to_str().unwrap(),
    ]);
    assert!(stdout.contains("| 4 micro-batches: optimal"), "{stdout}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&fj).unwrap()).unwrap();
    let none = v["no_remat_peak_bytes"].as_u64().unwrap();
    let half = (none as f64 * 0.5) as u64;
    // No scheme fits half on the whole batch.
    let min = v["min_feasible_bytes"].as_u64().unwrap();
    assert!(min > half, "{min} <= {half}");
    let fit = &v["microbatched"][0];
    assert_eq!(fit["fraction"], 0.5);
    let peak = fit["fit"]["peak_bytes"].as_u64().unwrap();
    assert!(peak <= half, "{peak} > {half}");
    let plan = dir.join("plan.json");
    cli.ok(&[
        "plan",
        model,
        "--train",
        "--batch",
        "64",
        "--microbatch",
        "4",
        "--remat",
        "optimal",
        "--budget",
        &half.to_string(),
        "--verify",
        "--search-ms",
        "0",
        "--json",
        plan.to_str().unwrap(),
    ]);
    let p: serde_json::Value = serde_json::from_slice(&std::fs::read(&plan).unwrap()).unwrap();
    assert_eq!(p["peak_bytes"].as_u64(), Some(peak), "{}", p["peak_bytes"]);
    std::fs::remove_dir_all(&dir).ok();
}
