//! Plans people can read: the versioned plan JSON (`docs/plan-format.md`) and a
//! self-contained HTML page with the arena drawn as rectangles over time.

use std::fmt::Write;

use lowmem_ir::Graph;
use lowmem_plan::{MemoryPlan, PlanBuffer};
use lowmem_schedule::Kind;
use serde_json::{Value, json};

use crate::inspect::human_bytes;
use crate::remat::{Point, Scheme};

pub const PLAN_FORMAT: &str = "lowmem-plan";
pub const PLAN_VERSION: u32 = 1;

/// What the plan was made of (model file, batch, training or inference).
pub struct PlanMeta<'a> {
    pub model: &'a str,
    pub batch: usize,
    pub train: bool,
    /// The checkpointing applied, when `--remat` or `--budget` was given.
    pub remat: Option<&'a RematInfo>,
    /// The rewrite sites applied (`--store`, ...).
    pub rewrites: &'a [lowmem_compile::RewriteSite],
}

/// What checkpointing did to a planned training step (plan JSON fields).
#[derive(Clone, Debug)]
pub struct RematInfo {
    pub scheme: &'static str,
    pub detail: String,
    pub budget: Option<u64>,
    pub stages: usize,
    /// Stage boundaries held when the loss runs.
    pub checkpoints: Vec<String>,
    pub recomputed_nodes: usize,
    pub forward_flops: u64,
    pub backward_flops: u64,
    pub recompute_flops: u64,
    /// `recompute_flops / (forward_flops + backward_flops)`.
    pub overhead: f64,
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Weight => "weight",
        Kind::Gradient => "gradient",
        Kind::OptimizerState => "optimizer_state",
        Kind::Activation => "activation",
        Kind::Workspace => "workspace",
        Kind::Input => "input",
        Kind::Output => "output",
    }
}

fn ratio(p: &MemoryPlan) -> f64 {
    if p.lower_bound_bytes == 0 {
        1.0
    } else {
        p.arena_bytes as f64 / p.lower_bound_bytes as f64
    }
}

pub fn plan_json(g: &Graph, p: &MemoryPlan, meta: &PlanMeta) -> Value {
    let name_of = |b: &PlanBuffer| b.name.clone();
    let mut v = json!({
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "model": meta.model,
        "batch": meta.batch,
        "train": meta.train,
        "schedule": p.order.iter().enumerate().map(|(s, &n)| json!({"step": s, "node": g.node(n).name, "op": g.node(n).op.name()})).collect::<Vec<_>>(),
        "buffers": p.buffers.iter().map(|b| json!({
            "tensor": name_of(b),
            "bytes": b.bytes,
            "offset": b.offset,
            "start": b.start,
            "end": b.end,
            "kind": kind_name(b.kind),
            "shares": b.shares.map(|t| g.tensor(t).name.clone()),
        })).collect::<Vec<_>>(),
        "arena_bytes": p.arena_bytes,
        "lower_bound_bytes": p.lower_bound_bytes,
        "arena_over_lower_bound": ratio(p),
        "naive_bytes": p.naive_bytes,
        "persistent_bytes": p.persistent_bytes,
        "peak_bytes": p.peak_bytes(),
        "planner": p.planner,
        "order": p.order_kind,
        "heuristics": p.heuristics.iter().map(|(h, b)| json!({"planner": h, "arena_bytes": b})).collect::<Vec<_>>(),
    });
    if let Some(obj) = v.as_object_mut() {
        obj.insert("rewrites".into(), json!(meta.rewrites));
    }
    if let (Some(r), Some(obj)) = (meta.remat, v.as_object_mut()) {
        for (k, val) in [
            ("remat", json!(r.scheme)),
            ("remat_detail", json!(r.detail)),
            ("budget_bytes", json!(r.budget)),
            ("stages", json!(r.stages)),
            ("checkpoints", json!(r.checkpoints)),
            ("recomputed_nodes", json!(r.recomputed_nodes)),
            ("forward_flops", json!(r.forward_flops)),
            ("backward_flops", json!(r.backward_flops)),
            ("recompute_flops", json!(r.recompute_flops)),
            ("overhead", json!(r.overhead)),
        ] {
            obj.insert(k.into(), val);
        }
    }
    v
}

fn scheme_colour(s: Scheme) -> &'static str {
    match s {
        Scheme::None => "#333333",
        Scheme::Sqrt => "#4e79a7",
        Scheme::Log => "#e15759",
        Scheme::Revolve => "#f28e2b",
        Scheme::Optimal => "#59a14f",
    }
}

/// The frontier points as JSON (`lowmem frontier --json`).
pub fn frontier_json(title: &str, points: &[Point], none: u64, min: u64) -> Value {
    json!({
        "format": "lowmem-frontier",
        "version": 1,
        "model": title,
        "no_remat_peak_bytes": none,
        "min_feasible_bytes": min,
        "points": points.iter().map(|p| json!({
            "scheme": p.scheme.name(),
            "detail": p.detail,
            "peak_bytes": p.peak,
            "recompute_flops": p.recompute_flops,
            "overhead": p.overhead,
            "checkpoints": p.checkpoints,
        })).collect::<Vec<_>>(),
    })
}

/// An HTML page with the frontier (peak bytes against recompute overhead) as SVG: one
/// colour per scheme, each scheme's Pareto points joined, 50% and 25% of the peak without
/// rematerialisation marked.
pub fn frontier_html(title: &str, points: &[Point], none: u64, min: u64) -> String {
    let (w, h, left, top) = (820.0, 440.0, 80.0, 20.0);
    let max_o = points
        .iter()
        .map(|p| p.overhead)
        .fold(0.0f64, f64::max)
        .max(0.01)
        * 1.08;
    let max_b = points.iter().map(|p| p.peak).max().unwrap_or(1).max(1) as f64 * 1.05;
    let x = |b: f64| left + b / max_b * w;
    let y = |o: f64| top + h - o / max_o * h;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="11"><rect x="{left}" y="{top}" width="{w}" height="{h}" fill="#fafafa" stroke="#999"/>"##,
        w + left + 160.0,
        h + top + 50.0
    );
    for (frac, label) in [(1.0, "no remat"), (0.5, "50%"), (0.25, "25%")] {
        let bx = x(none as f64 * frac);
        let _ = write!(
            svg,
            r##"<line x1="{bx:.1}" x2="{bx:.1}" y1="{top}" y2="{}" stroke="#bbb" stroke-dasharray="4,3"/><text x="{:.1}" y="{}" fill="#777">{label}</text>"##,
            top + h,
            bx + 3.0,
            top + 12.0
        );
    }
    let mx = x(min as f64);
    let _ = write!(
        svg,
        r##"<line x1="{mx:.1}" x2="{mx:.1}" y1="{top}" y2="{}" stroke="#d62728" stroke-dasharray="2,2"/><text x="{:.1}" y="{}" fill="#d62728">smallest feasible</text>"##,
        top + h,
        mx + 3.0,
        top + 26.0
    );
    for (k, s) in Scheme::ALL.iter().enumerate() {
        let mut pts: Vec<&Point> = points.iter().filter(|p| p.scheme == *s).collect();
        pts.sort_by(|a, b| a.peak.cmp(&b.peak).then(a.overhead.total_cmp(&b.overhead)));
        // The scheme's Pareto front: points no other of its points beats on both axes.
        let mut front: Vec<&Point> = Vec::new();
        for p in &pts {
            if front.last().is_none_or(|q| p.overhead < q.overhead) {
                front.push(p);
            }
        }
        if front.len() > 1 {
            let line: Vec<String> = front
                .iter()
                .map(|p| format!("{:.1},{:.1}", x(p.peak as f64), y(p.overhead)))
                .collect();
            let _ = write!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.5"/>"#,
                line.join(" "),
                scheme_colour(*s)
            );
        }
        for p in &pts {
            let _ = write!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{}"><title>{}: peak {}, overhead {:.1}% ({})</title></circle>"#,
                x(p.peak as f64),
                y(p.overhead),
                scheme_colour(*s),
                s.name(),
                human_bytes(p.peak),
                100.0 * p.overhead,
                esc(&p.detail)
            );
        }
        let ly = top + 14.0 + 18.0 * k as f64;
        let _ = write!(
            svg,
            r#"<circle cx="{:.1}" cy="{ly:.1}" r="4" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            left + w + 20.0,
            scheme_colour(*s),
            left + w + 30.0,
            ly + 4.0,
            s.name()
        );
    }
    for f in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let _ = write!(
            svg,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{:.0}%</text><text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            left - 5.0,
            y(max_o * f) + 4.0,
            100.0 * max_o * f,
            x(max_b * f),
            top + h + 16.0,
            human_bytes((max_b * f) as u64)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">planned peak of the training step</text><text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">recompute FLOPs / (forward + backward)</text></svg>"#,
        left + w / 2.0,
        top + h + 40.0,
        top + h / 2.0,
        top + h / 2.0
    );
    let mut rows = String::new();
    for p in points {
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{:.1}%</td><td>{:.1}%</td><td>{}</td></tr>",
            p.scheme.name(),
            human_bytes(p.peak),
            100.0 * p.peak as f64 / none.max(1) as f64,
            100.0 * p.overhead,
            esc(&p.detail)
        );
    }
    format!(
        r#"<!DOCTYPE html><html><head><meta charset="utf-8"><title>lowmem frontier: {t}</title><style>body{{font-family:sans-serif;margin:20px}}table{{border-collapse:collapse}}td,th{{padding:2px 10px;border-bottom:1px solid #ddd;text-align:right}}</style></head><body><h1>Memory against recomputation: {t}</h1><p>Every point is a real plan of the rewritten training step. Without rematerialisation the step peaks at {none}; the smallest feasible budget is {min}.</p>{svg}<table><tr><th>scheme</th><th>peak</th><th>of no remat</th><th>overhead</th><th>detail</th></tr>{rows}</table></body></html>"#,
        t = esc(title),
        none = human_bytes(none),
        min = human_bytes(min),
    )
}

fn colour(k: Kind) -> &'static str {
    match k {
        Kind::Activation => "#4e79a7",
        Kind::Output => "#59a14f",
        Kind::Workspace => "#e15759",
        Kind::Gradient => "#f28e2b",
        Kind::OptimizerState => "#b07aa1",
        Kind::Weight => "#9c755f",
        Kind::Input => "#76b7b2",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One self-contained HTML page: the arena (offset against program point, one rectangle per
/// buffer, coloured by kind, hover names it), the live-bytes curve against the lower bound,
/// and the largest tensors.
/// The rewrite sites as an HTML section (empty when none applied).
fn rewrites_html(sites: &[lowmem_compile::RewriteSite]) -> String {
    if sites.is_empty() {
        return String::new();
    }
    let total: u64 = sites.iter().map(|r| r.bytes_saved).sum();
    let rows: String = sites
        .iter()
        .map(|r| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&r.node),
                esc(&r.tensor),
                esc(&r.kind),
                human_bytes(r.bytes_saved),
                esc(r.why.as_deref().unwrap_or(""))
            )
        })
        .collect();
    format!(
        "<h2>Rewrites ({} sites, {} of saved tensors fewer)</h2>\n<table><tr><th>node</th><th>tensor</th><th>kind</th><th>bytes saved</th><th>why none</th></tr>{rows}</table>\n",
        sites.len(),
        human_bytes(total)
    )
}

pub fn plan_html(g: &Graph, p: &MemoryPlan, meta: &PlanMeta) -> String {
    let points = (2 * p.order.len()).max(1) as f64;
    let arena = p.arena_bytes.max(1) as f64;
    // Headroom above the arena, so the lower-bound line stays visible when they are equal.
    let scale = arena.max(p.lower_bound_bytes as f64) * 1.06;
    let (w, h, left, top) = (1000.0, 420.0, 70.0, 20.0);
    let x = |pt: f64| left + pt / points * w;
    let y = |b: f64| top + h - b / scale * h;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="11">"#,
        w + left + 20.0,
        h + top + 40.0
    );
    let _ = write!(
        svg,
        r##"<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="#fafafa" stroke="#999"/>"##
    );
    for b in p.buffers.iter().filter(|b| b.offset.is_some()) {
        let o = b.offset.unwrap_or(0) as f64;
        let (x0, x1) = (x(b.start as f64), x(b.end as f64));
        let (y0, y1) = (y(o + b.bytes as f64), y(o));
        let shares = b
            .shares
            .map(|t| format!(", overwrites {}", g.tensor(t).name))
            .unwrap_or_default();
        let _ = write!(
            svg,
            r#"<rect x="{x0:.2}" y="{y0:.2}" width="{:.2}" height="{:.2}" fill="{}" fill-opacity="0.8" stroke="white" stroke-width="0.3"><title>{} ({}, {}, offset {}, live [{}, {}){})</title></rect>"#,
            (x1 - x0).max(0.5),
            (y1 - y0).max(0.5),
            colour(b.kind),
            esc(&b.name),
            kind_name(b.kind),
            human_bytes(b.bytes),
            b.offset.unwrap_or(0),
            b.start,
            b.end,
            esc(&shares)
        );
    }
    // Live bytes per program point (aligned as planned) and the lower bound.
    let mut live = vec![0u64; points as usize + 1];
    for b in p.buffers.iter().filter(|b| b.offset.is_some()) {
        for v in &mut live[b.start as usize..(b.end as usize).min(points as usize)] {
            *v += b.bytes.div_ceil(256) * 256;
        }
    }
    let path: Vec<String> = live
        .iter()
        .enumerate()
        .map(|(i, &v)| format!("{:.2},{:.2}", x(i as f64), y(v as f64)))
        .collect();
    let _ = write!(
        svg,
        r#"<polyline points="{}" fill="none" stroke="black" stroke-width="1.2"><title>live bytes</title></polyline>"#,
        path.join(" ")
    );
    let lb = y(p.lower_bound_bytes as f64);
    let _ = write!(
        svg,
        r##"<line x1="{left}" x2="{}" y1="{lb:.2}" y2="{lb:.2}" stroke="#d62728" stroke-dasharray="5,3"><title>lower bound {}</title></line>"##,
        left + w,
        human_bytes(p.lower_bound_bytes)
    );
    let _ = write!(
        svg,
        r##"<text x="{}" y="{:.2}" text-anchor="end" fill="#d62728">lower bound</text>"##,
        left + w - 4.0,
        lb - 4.0
    );
    // Where the last arena buffer dies: what follows (the optimizer updates) runs outside it.
    let last_arena_use = p
        .buffers
        .iter()
        .filter(|b| b.offset.is_some())
        .map(|b| b.end)
        .max();
    if let Some(last) = last_arena_use.filter(|&l| (l as f64) < points * 0.98) {
        let lx = x(last as f64);
        let _ = write!(
            svg,
            r##"<line x1="{lx:.2}" x2="{lx:.2}" y1="{top}" y2="{}" stroke="#888" stroke-dasharray="2,3"/><text x="{:.2}" y="{}" fill="#555">later steps use no arena memory</text>"##,
            top + h,
            lx + 6.0,
            top + 16.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">program point (step s reads at 2s, writes at 2s+1)</text>"#,
        left + w / 2.0,
        top + h + 30.0
    );
    for f in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let _ = write!(
            svg,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 5.0,
            y(scale * f) + 4.0,
            human_bytes((scale * f) as u64)
        );
    }
    svg.push_str("</svg>");

    let mut largest: Vec<&PlanBuffer> = p.buffers.iter().filter(|b| b.offset.is_some()).collect();
    largest.sort_by_key(|b| std::cmp::Reverse(b.bytes));
    let mut rows = String::new();
    for b in largest.iter().take(25) {
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>[{}, {})</td></tr>",
            esc(&b.name),
            kind_name(b.kind),
            human_bytes(b.bytes),
            b.offset.map_or("outside".into(), |o| o.to_string()),
            b.start,
            b.end
        );
    }
    // Persistent memory (outside the arena) by kind; state updated in place counts once.
    let mut persistent = String::new();
    for k in [
        Kind::Weight,
        Kind::Gradient,
        Kind::OptimizerState,
        Kind::Input,
    ] {
        let of_kind = p
            .buffers
            .iter()
            .filter(|b| b.kind == k && b.offset.is_none() && b.shares.is_none());
        let (n, bytes) = of_kind.fold((0, 0), |(n, s), b| (n + 1, s + b.bytes));
        if n > 0 {
            let _ = write!(
                persistent,
                "<tr><td>{}</td><td>{n}</td><td>{}</td></tr>",
                kind_name(k).replace('_', " "),
                human_bytes(bytes)
            );
        }
    }
    let drawn: std::collections::BTreeSet<&str> = p
        .buffers
        .iter()
        .filter(|b| b.offset.is_some())
        .map(|b| kind_name(b.kind))
        .collect();
    let swatch = |c: &str| {
        format!(
            r#"<span style="display:inline-block;width:12px;height:12px;background:{c}"></span>"#
        )
    };
    let mut legend: String = [
        Kind::Activation,
        Kind::Output,
        Kind::Workspace,
        Kind::Gradient,
        Kind::OptimizerState,
        Kind::Weight,
        Kind::Input,
    ]
    .iter()
    .filter(|&&k| drawn.contains(kind_name(k)))
    .map(|&k| {
        format!(
            "{} {} &nbsp; ",
            swatch(colour(k)),
            kind_name(k).replace('_', " ")
        )
    })
    .collect();
    legend
        .push_str("&mdash; live bytes &nbsp; <span style=\"color:#d62728\">- - lower bound</span>");
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>lowmem plan: {model}</title>
<style>body{{font-family:sans-serif;margin:20px}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}} td:first-child,th:first-child{{text-align:left}}</style></head><body>
<h1>Memory plan: {model}</h1>
<p>batch {batch}, {mode}; {nodes} steps; planner <b>{planner}</b> ({order} order)</p>
<p>arena <b>{arena}</b>, lower bound {lb} (ratio <b>{ratio:.4}</b>); persistent {pers}; peak {peak}; naive {naive}</p>
<p>{legend}</p>
{svg}
<h2>Largest arena buffers</h2>
<table><tr><th>tensor</th><th>kind</th><th>bytes</th><th>offset</th><th>live</th></tr>{rows}</table>
<h2>Persistent memory (outside the arena)</h2>
<table><tr><th>kind</th><th>buffers</th><th>bytes</th></tr>{persistent}</table>
{rewrites}</body></html>
"#,
        rewrites = rewrites_html(meta.rewrites),
        model = esc(meta.model),
        batch = meta.batch,
        mode = if meta.train {
            "training step"
        } else {
            "inference"
        },
        nodes = p.order.len(),
        planner = esc(&p.planner),
        order = p.order_kind,
        arena = human_bytes(p.arena_bytes),
        lb = human_bytes(p.lower_bound_bytes),
        ratio = ratio(p),
        pers = human_bytes(p.persistent_bytes),
        peak = human_bytes(p.peak_bytes()),
        naive = human_bytes(p.naive_bytes),
    )
}
