//! `lowmem plan` and `lowmem pack`.

use std::path::Path;
use std::time::{Duration, Instant};

use lowmem_autodiff::{Loss, Optimizer, StepOptions, training_step_with};
use lowmem_compile::{CompileOptions, CompiledStep, Task};
use lowmem_plan::{MemoryPlan, PlanOptions};
use lowmem_schedule::Roles;

use crate::inspect::{grouped, human_bytes};
use crate::remat::{Point, Scheme, Step, first_fit};
use crate::report::{PlanMeta, RematInfo, frontier_html, frontier_json, plan_html, plan_json};
use crate::{Error, model};

pub struct PlanRequest {
    pub train: bool,
    pub batch: Option<usize>,
    pub loss: Loss,
    pub optimizer: Optimizer,
    pub in_place: bool,
    pub search: Duration,
    /// Checkpointing scheme (training only); `None` with a budget means `none`.
    pub remat: Option<Scheme>,
    /// Budget of the planned peak in bytes (training only).
    pub budget: Option<u64>,
    /// `--store f16|bf16`: saved activations in 16 bits.
    pub store: Option<lowmem_ir::DType>,
    /// `--rewrite sliceout=P`.
    pub sliceout: Option<f32>,
    /// `--rewrite dropit=GAMMA`.
    pub dropit: Option<f32>,
    /// `--microbatch K`.
    pub microbatch: Option<usize>,
    /// Epilogue fusion (off with `--no-fuse`).
    pub fuse: bool,
}

impl PlanRequest {
    /// The compile options this request stands for.
    pub fn options(&self) -> CompileOptions {
        let task = if self.train {
            Task::Training {
                loss: self.loss,
                optimizer: self.optimizer.clone(),
            }
        } else {
            Task::Inference
        };
        CompileOptions {
            task,
            batch: self.batch,
            remat: self.remat,
            budget: self.budget,
            store: self.store,
            sliceout: self.sliceout,
            dropit: self.dropit,
            microbatch: self.microbatch,
            fuse: self.fuse,
            plan: plan_options(self),
        }
    }
}

fn plan_options(req: &PlanRequest) -> PlanOptions {
    PlanOptions {
        in_place: req.in_place,
        search_time: req.search,
        fixed_order: false,
    }
}

/// Compiles `model` as `req` asks (the step `lowmem plan` shows and `train`/`run` execute).
pub fn compile_model(model: &Path, req: &PlanRequest) -> Result<CompiledStep, Error> {
    if (req.remat.is_some() || req.budget.is_some()) && !req.train {
        return Err(Error::Usage(
            "--remat and --budget apply to a training step: add --train".into(),
        ));
    }
    let given: Vec<&str> = [
        (req.store.is_some(), "--store"),
        (req.sliceout.is_some() || req.dropit.is_some(), "--rewrite"),
        (req.microbatch.is_some(), "--microbatch"),
    ]
    .iter()
    .filter(|f| f.0)
    .map(|f| f.1)
    .collect();
    if !given.is_empty() && !req.train {
        return Err(Error::Usage(format!(
            "{} {} to a training step: add --train",
            given.join(" and "),
            if given.len() == 1 { "applies" } else { "apply" }
        )));
    }
    let g = model::load(model, None)?;
    crate::compile_step(&g, &req.options())
}

/// The graph to plan (forward, or a whole training step), its roles, its plan, and the time
/// the planning took (model loading and graph building excluded).
pub fn make_plan(
    model: &Path,
    req: &PlanRequest,
) -> Result<(lowmem_ir::Graph, Roles, MemoryPlan, Duration), Error> {
    let s = compile_model(model, req)?;
    Ok((s.graph, s.roles, s.plan, s.planning_time))
}

pub fn verify(graph: &lowmem_ir::Graph, roles: &Roles, p: &MemoryPlan) -> Result<(), Error> {
    lowmem_compile::verify(graph, roles, p).map_err(|e| Error::Internal(e.to_string()))
}

/// What `lowmem plan` reports of a compiled step's checkpointing.
pub fn remat_info(s: &CompiledStep) -> Option<RematInfo> {
    s.remat.as_ref().map(|r| RematInfo {
        scheme: r.scheme,
        detail: r.detail.clone(),
        budget: s.budget,
        stages: r.stages,
        checkpoints: r.checkpoints.clone(),
        recomputed_nodes: r.recomputed_nodes,
        partial: r.partial.clone(),
        forward_flops: s.costs.forward_flops,
        backward_flops: s.costs.backward_flops,
        recompute_flops: s.costs.recompute_flops,
        overhead: s.costs.overhead(),
    })
}

pub fn plan_cmd(
    model: &Path,
    req: &PlanRequest,
    json: Option<&Path>,
    html: Option<&Path>,
    check: bool,
) -> Result<(), Error> {
    let step = compile_model(model, req)?;
    report_step(&step, &model.display().to_string(), json, html, check)
}

/// Prints a compiled step's plan and writes its JSON and HTML.
pub fn report_step(
    step: &CompiledStep,
    model: &str,
    json: Option<&Path>,
    html: Option<&Path>,
    check: bool,
) -> Result<(), Error> {
    let (graph, roles, p, took) = (&step.graph, &step.roles, &step.plan, step.planning_time);
    let remat = remat_info(step);
    let batch = step.batch;
    let train = matches!(step.task, Task::Training { .. });
    let meta = PlanMeta {
        model,
        batch,
        train,
        remat: remat.as_ref(),
        rewrites: &step.rewrites,
        timeline: Some(&step.timeline),
        source: Some(&step.forward),
        state: &step.state,
    };
    println!(
        "{} ({}, batch {batch}): {} steps, {} tensors",
        graph.name,
        if train { "training step" } else { "inference" },
        p.order.len(),
        graph.tensors.len()
    );
    println!(
        "  arena        {:>12}  ({} bytes)",
        human_bytes(p.arena_bytes),
        p.arena_bytes
    );
    println!(
        "  lower bound  {:>12}  ({} bytes)  arena / lower bound = {:.4}",
        human_bytes(p.lower_bound_bytes),
        p.lower_bound_bytes,
        p.arena_bytes as f64 / p.lower_bound_bytes.max(1) as f64
    );
    println!("  naive        {:>12}", human_bytes(p.naive_bytes));
    println!("  persistent   {:>12}", human_bytes(p.persistent_bytes));
    println!("  peak         {:>12}", human_bytes(p.peak_bytes()));
    println!(
        "  planner      {} ({} order), planned in {:.1} ms",
        p.planner,
        p.order_kind,
        took.as_secs_f64() * 1e3
    );
    for (h, b) in &p.heuristics {
        println!(
            "    {h:<44} {:.4}",
            *b as f64 / p.lower_bound_bytes.max(1) as f64
        );
    }
    if !step.rewrites.is_empty() {
        let saved: u64 = step.rewrites.iter().map(|r| r.bytes_saved).sum();
        let mut kinds: Vec<&str> = step.rewrites.iter().map(|r| r.kind.as_str()).collect();
        kinds.dedup();
        println!(
            "  rewrites     {} sites ({}), {} of saved tensors fewer",
            step.rewrites.len(),
            kinds.join(", "),
            human_bytes(saved)
        );
    }
    if let Some(r) = &remat {
        println!(
            "  remat        {} ({}), {} stages, checkpoints: {}",
            r.scheme,
            r.detail,
            r.stages,
            r.checkpoints.len()
        );
        if let Some(b) = r.budget {
            println!("  budget       {:>12}  ({b} bytes)", human_bytes(b));
        }
        println!(
            "  recompute    {} nodes, {} FLOPs = {:.1}% of forward + backward ({} + {})",
            r.recomputed_nodes,
            grouped(r.recompute_flops),
            100.0 * r.overhead,
            grouped(r.forward_flops),
            grouped(r.backward_flops)
        );
    }
    if check {
        let t = Instant::now();
        verify(graph, roles, p)?;
        println!(
            "  verified: no two live buffers overlap ({:.1} ms)",
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    if let Some(path) = json {
        write_file(
            path,
            serde_json::to_string_pretty(&plan_json(graph, p, &meta)).expect("plans serialise"),
        )?;
    }
    if let Some(path) = html {
        write_file(path, plan_html(graph, p, &meta))?;
    }
    Ok(())
}

pub fn write_file(path: &Path, text: String) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

/// `lowmem frontier`: every scheme's points, the first fit at 50% and 25% of the peak
/// without rematerialisation, and optionally JSON and an HTML page with the plot.
pub fn frontier_cmd(
    model: &Path,
    req: &PlanRequest,
    levels: usize,
    json: Option<&Path>,
    html: Option<&Path>,
) -> Result<(), Error> {
    let forward = lowmem_compile::fused_forward(model::load(model, req.batch)?, &req.options())?;
    let out = *forward
        .outputs
        .first()
        .ok_or_else(|| Error::Model("the model has no outputs".into()))?;
    // The rewrites apply before checkpointing, so each point is the rewritten step's.
    let rewrites = StepOptions {
        sliceout: req.sliceout,
        dropit: req.dropit,
        store: req.store,
        microbatch: None,
    };
    let tg = training_step_with(&forward, out, req.loss, &req.optimizer, &rewrites)?;
    let step = Step::new(&tg, plan_options(req))?;
    let (points, secs) = step.frontier(levels)?;
    let none = points
        .iter()
        .find(|p| p.scheme == Scheme::None)
        .expect("the frontier has the no-remat point")
        .peak;
    let batch = tg
        .graph
        .tensor(tg.data[0])
        .shape
        .first()
        .copied()
        .unwrap_or(1);
    println!(
        "{} (training step, batch {batch}): {} stages, {} points in {secs:.1} s",
        tg.graph.name,
        step.stages.len(),
        points.len()
    );
    println!(
        "  {:<8} {:>12} {:>9} {:>10}  detail",
        "scheme", "peak", "of none", "overhead"
    );
    for p in &points {
        println!(
            "  {:<8} {:>12} {:>8.1}% {:>9.1}%  {}",
            p.scheme.name(),
            human_bytes(p.peak),
            100.0 * p.peak as f64 / none as f64,
            100.0 * p.overhead,
            p.detail
        );
    }
    let min = step.min_feasible()?;
    println!(
        "  no remat: {}; smallest feasible budget: {} ({:.1}%)",
        human_bytes(none),
        human_bytes(min),
        100.0 * min as f64 / none as f64
    );
    let mut micro = Vec::new();
    for frac in [0.5, 0.25] {
        let target = (none as f64 * frac) as u64;
        print!("  fits {:.0}% ({}):", frac * 100.0, human_bytes(target));
        for s in Scheme::ALL {
            match first_fit(&points, s, target) {
                Some(p) => print!("  {} {:.1}%", s.name(), 100.0 * p.overhead),
                None => print!("  {} -", s.name()),
            }
        }
        if let Some(k) = req.microbatch {
            let p = microbatched_fit(&forward, req, k, target)?;
            match &p {
                Some(p) => print!(
                    "  | {k} micro-batches: {} {:.1}% (peak {})",
                    p.scheme.name(),
                    100.0 * p.overhead,
                    human_bytes(p.peak)
                ),
                None => print!("  | {k} micro-batches: -"),
            }
            micro.push((frac, p));
        }
        println!();
    }
    if let Some(k) = req.microbatch {
        let bn = forward
            .nodes
            .iter()
            .any(|n| matches!(n.op, lowmem_ir::Op::BatchNormalization(_)));
        println!(
            "  (micro-batches: each target compiled as `plan --microbatch {k} --remat optimal --budget`{})",
            if bn {
                "; BatchNorm then normalises each micro-batch by its own statistics"
            } else {
                ""
            }
        );
    }
    let title = format!("{} (batch {batch})", tg.graph.name);
    if let Some(path) = json {
        write_file(
            path,
            serde_json::to_string_pretty(&frontier_json(&title, &points, none, min, &micro))
                .expect("points serialise"),
        )?;
    }
    if let Some(path) = html {
        write_file(path, frontier_html(&title, &points, none, min))?;
    }
    Ok(())
}

/// The micro-batched step under `--remat optimal` at `target` (the whole step's peak),
/// compiled and planned as `lowmem plan` does; `None` when no body schedule fits.
fn microbatched_fit(
    forward: &lowmem_ir::Graph,
    req: &PlanRequest,
    k: usize,
    target: u64,
) -> Result<Option<Point>, Error> {
    let mut opts = req.options();
    opts.microbatch = Some(k);
    opts.remat = Some(Scheme::Optimal);
    opts.budget = Some(target);
    match crate::compile_step(forward, &opts) {
        Ok(s) => {
            let r = s.remat.as_ref();
            Ok(Some(Point {
                scheme: r
                    .and_then(|r| Scheme::ALL.into_iter().find(|x| x.name() == r.scheme))
                    .unwrap_or(Scheme::None),
                detail: r.map_or_else(String::new, |r| r.detail.clone()),
                peak: s.plan.peak_bytes(),
                recompute_flops: s.costs.recompute_flops,
                overhead: s.costs.overhead(),
                checkpoints: r.map_or(0, |r| r.checkpoints.len()),
            }))
        }
        Err(Error::Compile(lowmem_compile::CompileError::Budget(_))) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn pack_cmd(file: &Path, out: Option<&Path>, time_limit: f64, align: u64) -> Result<(), Error> {
    let text = std::fs::read_to_string(file).map_err(|source| Error::Io {
        path: file.display().to_string(),
        source,
    })?;
    let rows = lowmem_plan::read_csv(&text)
        .map_err(|e| Error::Data(format!("{}: {e}", file.display())))?;
    if !(time_limit.is_finite() && time_limit >= 0.0) {
        return Err(Error::Usage(format!(
            "--time-limit {time_limit} is not a number of seconds"
        )));
    }
    if align == 0 {
        return Err(Error::Usage("--align must be positive".into()));
    }
    let (ids, bufs): (Vec<String>, Vec<lowmem_plan::Buffer>) = rows.into_iter().unzip();
    let lb = lowmem_plan::lower_bound(&bufs);
    let t = Instant::now();
    let p = lowmem_plan::pack(&bufs, align, Duration::from_secs_f64(time_limit));
    let took = t.elapsed();
    let height = lowmem_plan::verify(&bufs, &p.offsets, align)
        .map_err(|e| Error::Internal(format!("the packing does not verify: {e}")))?;
    println!("{}: {} buffers", file.display(), bufs.len());
    println!(
        "height {height}, lower bound {lb}, ratio {:.4} ({}, {:.3} s)",
        height as f64 / lb.max(1) as f64,
        p.heuristic,
        took.as_secs_f64()
    );
    if let Some(out) = out {
        write_file(out, lowmem_plan::write_csv(&ids, &bufs, &p.offsets))?;
    }
    Ok(())
}
