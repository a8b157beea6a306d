//! `lowmem plan` and `lowmem pack`.

use std::path::Path;
use std::time::{Duration, Instant};

use lowmem_autodiff::{Loss, Optimizer, training_step};
use lowmem_plan::{Claim, MemoryPlan, PlanOptions, plan, verify_plan};
use lowmem_schedule::Roles;

use crate::inspect::{grouped, human_bytes};
use crate::remat::{Scheme, Step, first_fit};
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
}

/// The graph to plan (forward, or a whole training step), its roles, its plan, and the time
/// the planning took (model loading and graph building excluded).
pub fn make_plan(
    model: &Path,
    req: &PlanRequest,
) -> Result<(lowmem_ir::Graph, Roles, MemoryPlan, Duration), Error> {
    let (g, roles, p, took, _) = make_plan_remat(model, req)?;
    Ok((g, roles, p, took))
}

fn plan_options(req: &PlanRequest) -> PlanOptions {
    PlanOptions {
        in_place: req.in_place,
        search_time: req.search,
        fixed_order: false,
    }
}

fn training_graph(
    model: &Path,
    req: &PlanRequest,
) -> Result<lowmem_autodiff::TrainingGraph, Error> {
    let forward = model::load(model, req.batch)?;
    let out = *forward
        .outputs
        .first()
        .ok_or_else(|| Error::Usage("the model has no outputs".into()))?;
    Ok(training_step(&forward, out, req.loss, &req.optimizer)?)
}

/// [`make_plan`], rematerialising the training step when `req` asks for a scheme or budget.
pub fn make_plan_remat(
    model: &Path,
    req: &PlanRequest,
) -> Result<
    (
        lowmem_ir::Graph,
        Roles,
        MemoryPlan,
        Duration,
        Option<RematInfo>,
    ),
    Error,
> {
    if req.remat.is_some() || req.budget.is_some() {
        if !req.train {
            return Err(Error::Usage(
                "--remat and --budget apply to a training step: add --train".into(),
            ));
        }
        let tg = training_graph(model, req)?;
        let t = Instant::now();
        let step = Step::new(&tg, plan_options(req))?;
        let o = step.run(req.remat.unwrap_or(Scheme::None), req.budget)?;
        let took = t.elapsed();
        let info = RematInfo {
            scheme: o.scheme.name(),
            detail: o.detail.clone(),
            budget: req.budget,
            stages: step.stages.len(),
            checkpoints: o.checkpoints.clone(),
            recomputed_nodes: o.recomputed_nodes,
            forward_flops: step.forward_flops,
            backward_flops: step.backward_flops,
            recompute_flops: o.recompute_flops,
            overhead: step.overhead(o.recompute_flops),
        };
        return Ok((o.graph, o.roles, o.plan, took, Some(info)));
    }
    let forward = model::load(model, req.batch)?;
    let (graph, roles) = if req.train {
        let out = *forward
            .outputs
            .first()
            .ok_or_else(|| Error::Usage("the model has no outputs".into()))?;
        let tg = training_step(&forward, out, req.loss, &req.optimizer)?;
        let roles = Roles::training_step(
            &tg.graph,
            tg.state.iter().map(|s| {
                (
                    s.input,
                    s.output,
                    s.kind == lowmem_autodiff::StateKind::Parameter,
                )
            }),
            tg.grads.iter().map(|&(_, g)| g),
        );
        (tg.graph, roles)
    } else {
        let roles = Roles::inference(&forward);
        (forward, roles)
    };
    let t = Instant::now();
    let p = plan(&graph, &roles, &plan_options(req));
    Ok((graph, roles, p, t.elapsed(), None))
}

pub fn verify(graph: &lowmem_ir::Graph, roles: &Roles, p: &MemoryPlan) -> Result<(), Error> {
    let claim = Claim {
        order: &p.order,
        tensor_offset: p.tensor_offset.as_slice(),
        workspace: p.workspace.as_slice(),
        arena_bytes: p.arena_bytes,
    };
    verify_plan(graph, roles, &claim)
        .map_err(|e| Error::Usage(format!("the plan does not verify: {e}")))
}

pub fn plan_cmd(
    model: &Path,
    req: &PlanRequest,
    json: Option<&Path>,
    html: Option<&Path>,
    check: bool,
) -> Result<(), Error> {
    let (graph, roles, p, took, remat) = make_plan_remat(model, req)?;
    let batch = graph
        .inputs
        .first()
        .and_then(|&i| graph.tensor(i).shape.first().copied())
        .unwrap_or(1);
    let meta = PlanMeta {
        model: &model.display().to_string(),
        batch,
        train: req.train,
        remat: remat.as_ref(),
    };
    println!(
        "{} ({}, batch {batch}): {} steps, {} tensors",
        graph.name,
        if req.train {
            "training step"
        } else {
            "inference"
        },
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
        verify(&graph, &roles, &p)?;
        println!(
            "  verified: no two live buffers overlap ({:.1} ms)",
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    if let Some(path) = json {
        write_file(
            path,
            serde_json::to_string_pretty(&plan_json(&graph, &p, &meta)).expect("plans serialise"),
        )?;
    }
    if let Some(path) = html {
        write_file(path, plan_html(&graph, &p, &meta))?;
    }
    Ok(())
}

fn write_file(path: &Path, text: String) -> Result<(), Error> {
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
    let tg = training_graph(model, req)?;
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
    for frac in [0.5, 0.25] {
        let target = (none as f64 * frac) as u64;
        print!("  fits {:.0}% ({}):", frac * 100.0, human_bytes(target));
        for s in Scheme::ALL {
            match first_fit(&points, s, target) {
                Some(p) => print!("  {} {:.1}%", s.name(), 100.0 * p.overhead),
                None => print!("  {} -", s.name()),
            }
        }
        println!();
    }
    let title = format!("{} (batch {batch})", tg.graph.name);
    if let Some(path) = json {
        write_file(
            path,
            serde_json::to_string_pretty(&frontier_json(&title, &points, none, min))
                .expect("points serialise"),
        )?;
    }
    if let Some(path) = html {
        write_file(path, frontier_html(&title, &points, none, min))?;
    }
    Ok(())
}

pub fn pack_cmd(file: &Path, out: Option<&Path>, time_limit: f64, align: u64) -> Result<(), Error> {
    let text = std::fs::read_to_string(file).map_err(|source| Error::Io {
        path: file.display().to_string(),
        source,
    })?;
    let rows = lowmem_plan::read_csv(&text)
        .map_err(|e| Error::Usage(format!("{}: {e}", file.display())))?;
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
        .map_err(|e| Error::Usage(format!("internal error: the packing does not verify: {e}")))?;
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
