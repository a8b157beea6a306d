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
    /// Per node of the planned graph: forward or backward, stage, recomputation (the plan
    /// page's time axis); `None` draws no bands.
    pub timeline: Option<&'a lowmem_compile::Timeline>,
    /// The source model: names found in it are shown as they are.
    pub source: Option<&'a Graph>,
    /// The step's state (parameters, optimizer state, running statistics), for naming it.
    pub state: &'a [lowmem_compile::StateSlot],
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
    /// The stages recorded partially.
    pub partial: Vec<lowmem_compile::remat::PartialRecord>,
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
            ("partial_records", json!(r.partial)),
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
/// `micro`: per target fraction of the no-remat peak, the micro-batched step's fit
/// (`--microbatch`), or none.
pub fn frontier_json(
    title: &str,
    points: &[Point],
    none: u64,
    min: u64,
    micro: &[(f64, Option<Point>)],
) -> Value {
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
        "microbatched": micro.iter().map(|(frac, p)| json!({
            "fraction": frac,
            "fit": p.as_ref().map(|p| json!({
                "scheme": p.scheme.name(),
                "detail": p.detail,
                "peak_bytes": p.peak,
                "recompute_flops": p.recompute_flops,
                "overhead": p.overhead,
            })),
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

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

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

/// What a buffer holds, as the plan page names it. Finer than [`Kind`], which says where a
/// buffer lives: what a training step's memory goes to is the activations the backward pass
/// reads and the copies recomputation makes, so those are told apart from transient ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Weight,
    Gradient,
    OptimizerState,
    RunningStat,
    Input,
    Saved,
    Activation,
    Recomputed,
    Workspace,
    Output,
}

/// Every role, in the order of their codes in the page data (`kinds`).
const ROLES: [Role; 10] = [
    Role::Weight,
    Role::Gradient,
    Role::OptimizerState,
    Role::RunningStat,
    Role::Input,
    Role::Saved,
    Role::Activation,
    Role::Recomputed,
    Role::Workspace,
    Role::Output,
];

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Weight => "weight",
            Role::Gradient => "gradient",
            Role::OptimizerState => "optimizer state",
            Role::RunningStat => "running statistic",
            Role::Input => "input",
            Role::Saved => "saved activation",
            Role::Activation => "activation",
            Role::Recomputed => "recomputed copy",
            Role::Workspace => "workspace",
            Role::Output => "output",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            Role::Weight => "#9c755f",
            Role::Gradient => "#f28e2b",
            Role::OptimizerState => "#b07aa1",
            Role::RunningStat => "#d7b5d8",
            Role::Input => "#76b7b2",
            Role::Saved => "#2f5f8a",
            Role::Activation => "#8cb7e0",
            Role::Recomputed => "#e15759",
            Role::Workspace => "#edc948",
            Role::Output => "#59a14f",
        }
    }

    fn code(self) -> usize {
        ROLES.iter().position(|&r| r == self).expect("listed")
    }
}

/// `base` and `k` where `name` is `base` + `sep` + the decimal `k`.
fn numbered<'s>(name: &'s str, sep: &str) -> Option<(&'s str, &'s str)> {
    let at = name.rfind(sep)?;
    let k = &name[at + sep.len()..];
    (!k.is_empty() && k.bytes().all(|b| b.is_ascii_digit())).then(|| (&name[..at], k))
}

/// Tensor names as people know them: the source model's names unchanged, and the names
/// that autodiff, checkpointing and the rewrites derive from them (`w.grad`, `x.remat2`,
/// `bn.saved_mean`, `w.adam_m`, a uniquifying `.3`) spelt out, so that a gradient reads
/// "gradient of conv1.w" and a recomputed copy "x (recomputed #2)".
struct Namer<'a> {
    /// The source model's tensor names.
    tensors: std::collections::HashSet<&'a str>,
    /// The planned graph's tensor names.
    planned: std::collections::HashSet<&'a str>,
    /// State tensors: the slot and whether the tensor is its updated value.
    state: std::collections::HashMap<usize, (&'a lowmem_compile::StateSlot, bool)>,
}

impl<'a> Namer<'a> {
    fn new(
        g: &'a Graph,
        source: Option<&'a Graph>,
        state: &'a [lowmem_compile::StateSlot],
    ) -> Namer<'a> {
        let mut st = std::collections::HashMap::new();
        for s in state {
            st.insert(s.output.index(), (s, true));
            st.insert(s.input.index(), (s, false));
        }
        Namer {
            tensors: source
                .map(|g| g.tensors.iter().map(|t| t.name.as_str()).collect())
                .unwrap_or_default(),
            planned: g.tensors.iter().map(|t| t.name.as_str()).collect(),
            state: st,
        }
    }

    fn tensor(&self, g: &Graph, t: lowmem_ir::TensorId) -> String {
        if let Some(&(s, updated)) = self.state.get(&t.index()) {
            use lowmem_autodiff::StateKind as S;
            let base = match s.kind {
                S::Parameter | S::RunningMean | S::RunningVar => s.of.clone(),
                S::Momentum => format!("momentum of {}", s.of),
                S::FirstMoment => format!("Adam first moment of {}", s.of),
                S::SecondMoment => format!("Adam second moment of {}", s.of),
            };
            return if updated {
                format!("{base} (updated)")
            } else {
                base
            };
        }
        self.name(&g.tensor(t).name)
    }

    fn name(&self, raw: &str) -> String {
        let mut notes = Vec::new();
        let mut core = raw;
        while !self.tensors.contains(core) {
            if let Some((base, k)) = numbered(core, ".remat") {
                notes.push(format!("recomputed #{k}"));
                core = base;
            } else if let Some((base, m)) = numbered(core, ".mb") {
                let m: usize = m.parse().unwrap_or(0);
                notes.push(format!("micro-batch {}", m + 1));
                core = base;
            } else {
                break;
            }
        }
        let mut out = self.core(core, 0);
        for n in notes.iter().rev() {
            let _ = write!(out, " ({n})");
        }
        out
    }

    fn core(&self, name: &str, depth: usize) -> String {
        if depth > 6 || self.tensors.contains(name) {
            return name.to_string();
        }
        let inner = |base: &str| self.core(base, depth + 1);
        if let Some(base) = name.strip_suffix(".grad") {
            // `w.grad` is the gradient of the tensor `w`; `n.grad` of a node `n` (the loss)
            // is what its backward computes.
            return if self.planned.contains(base) {
                format!("gradient of {}", inner(base))
            } else {
                format!("gradient at {base}")
            };
        }
        const SUFFIXES: [(&str, &str, &str); 15] = [
            (".saved_mean", "saved mean of ", ""),
            (".saved_invstd", "saved 1/std of ", ""),
            (".running_mean_next", "running mean of ", " (updated)"),
            (".running_var_next", "running variance of ", " (updated)"),
            (".seed", "gradient seed of ", ""),
            (".bf16", "", " (stored in bf16)"),
            (".f16", "", " (stored in f16)"),
            (".restored", "", " (restored to f32)"),
            (".relu_mask", "ReLU mask of ", ""),
            (".topk_values", "top-k values of ", ""),
            (".topk_indices", "top-k indices of ", ""),
            (".sparse", "", " (scattered back from top-k)"),
            (".window", "window of ", ""),
            (".mask", "mask of ", ""),
            (".sum", "", " (running sum)"),
        ];
        for (suffix, before, after) in SUFFIXES {
            if let Some(base) = name.strip_suffix(suffix) {
                return format!("{before}{}{after}", inner(base));
            }
        }
        // A uniquifying counter (`fc.grad.3`, `loss.1`).
        if let Some((base, _)) = numbered(name, ".") {
            return inner(base);
        }
        name.to_string()
    }
}

/// Per node of the planned graph: its phase on the time axis (page data `nodes`).
const FORWARD: u8 = 0;
const RECOMPUTE: u8 = 1;
const BACKWARD: u8 = 2;

/// The data the plan page's script reads, embedded once (`docs/plan-format.md`, "Plan
/// page"): tooltips are built from it on hover, which keeps a page of thousands of
/// buffers small.
pub fn page_data(g: &Graph, p: &MemoryPlan, meta: &PlanMeta) -> Value {
    let namer = Namer::new(g, meta.source, meta.state);
    let tl = meta.timeline;
    let n = g.nodes.len();
    let flag = |v: &Option<Vec<bool>>, i: usize| v.as_ref().and_then(|f| f.get(i).copied());
    let forward = tl.map(|t| t.forward.clone()).filter(|f| f.len() == n);
    let recomputed: Vec<bool> = match tl.map(|t| &t.recomputed).filter(|r| r.len() == n) {
        Some(r) => r.clone(),
        // Unknown (micro-batched steps): recomputing nodes are named `<node>.remat<k>`.
        None => g
            .nodes
            .iter()
            .map(|node| {
                let mut s = node.name.as_str();
                while let Some((base, _)) = numbered(s, ".mb") {
                    s = base;
                }
                numbered(s, ".remat").is_some()
            })
            .collect(),
    };
    let forward = forward.map(|f| {
        f.into_iter()
            .zip(&recomputed)
            .map(|(f, &r)| f && !r)
            .collect::<Vec<bool>>()
    });
    let stage = |v: usize| tl.and_then(|t| t.stage.get(v).copied().flatten());
    let phase = |v: usize| {
        if recomputed[v] {
            Some(RECOMPUTE)
        } else {
            flag(&forward, v).map(|f| if f { FORWARD } else { BACKWARD })
        }
    };
    let mut pos = vec![usize::MAX; n];
    for (s, &v) in p.order.iter().enumerate() {
        pos[v.index()] = s;
    }
    let producers = g.producers();
    let mut last_read = vec![None::<usize>; g.tensors.len()];
    for (v, node) in g.nodes.iter().enumerate() {
        for t in &node.inputs {
            let l = &mut last_read[t.index()];
            *l = Some(l.map_or(pos[v], |l| l.max(pos[v])));
        }
    }
    let mut read_by_backward = vec![false; g.tensors.len()];
    for (v, node) in g.nodes.iter().enumerate() {
        if flag(&forward, v) == Some(false) {
            for t in &node.inputs {
                read_by_backward[t.index()] = true;
            }
        }
    }
    let role = |b: &PlanBuffer| -> Role {
        let Some(t) = b.tensor else {
            return Role::Workspace;
        };
        match b.kind {
            Kind::Weight => Role::Weight,
            Kind::Gradient => Role::Gradient,
            Kind::OptimizerState => {
                use lowmem_autodiff::StateKind as S;
                let stat = meta.state.iter().any(|s| {
                    (s.input == t || s.output == t)
                        && matches!(s.kind, S::RunningMean | S::RunningVar)
                });
                if stat {
                    Role::RunningStat
                } else {
                    Role::OptimizerState
                }
            }
            Kind::Input => Role::Input,
            Kind::Output => Role::Output,
            Kind::Workspace => Role::Workspace,
            Kind::Activation => {
                let made_by = producers[t.index()].map(|v| v.index());
                if made_by.is_some_and(|v| recomputed[v]) {
                    return Role::Recomputed;
                }
                // Saved: made by the forward pass, read by the backward pass (a recomputing
                // node reading a checkpoint counts: it runs for the backward pass).
                let made_forward = made_by.is_some_and(|v| flag(&forward, v) == Some(true));
                if made_forward && read_by_backward[t.index()] {
                    Role::Saved
                } else {
                    Role::Activation
                }
            }
        }
    };
    let mut buffer_of = vec![None::<usize>; g.tensors.len()];
    for (i, b) in p.buffers.iter().enumerate() {
        if let Some(t) = b.tensor {
            buffer_of[t.index()] = Some(i);
        }
    }
    let buffers: Vec<Value> = p
        .buffers
        .iter()
        .map(|b| {
            let (shown, made, last) = match (b.tensor, b.step) {
                (Some(t), _) => (
                    namer.tensor(g, t),
                    producers[t.index()].map(|v| pos[v.index()]),
                    last_read[t.index()],
                ),
                (None, Some(s)) => {
                    let node = &g.node(p.order[s.index()]).name;
                    (
                        format!("workspace of {node}"),
                        Some(s.index()),
                        Some(s.index()),
                    )
                }
                (None, None) => (b.name.clone(), None, None),
            };
            let display = (shown != b.name).then_some(shown);
            let persistent = b.tensor.and_then(|t| p.persistent_offset[t]);
            json!([
                b.name,
                display,
                role(b).code(),
                b.bytes,
                b.offset,
                persistent,
                b.start,
                b.end,
                made,
                last,
                b.shares.and_then(|t| buffer_of[t.index()]),
            ])
        })
        .collect();
    let nodes: Vec<Value> = p
        .order
        .iter()
        .map(|&v| {
            let node = g.node(v);
            json!([
                node.name,
                node.op.name(),
                stage(v.index()),
                phase(v.index())
            ])
        })
        .collect();
    // Runs of consecutive steps with the same stage and phase (a stage's forward, its
    // recomputation, its backward), as program-point ranges.
    let mut bands: Vec<(usize, usize, Option<u32>, u8)> = Vec::new();
    for (s, &v) in p.order.iter().enumerate() {
        let Some(ph) = phase(v.index()) else { continue };
        let st = stage(v.index());
        match bands.last_mut() {
            Some(last) if last.1 == 2 * s && last.2 == st && last.3 == ph => last.1 = 2 * s + 2,
            _ => bands.push((2 * s, 2 * s + 2, st, ph)),
        }
    }
    json!({
        "points": 2 * p.order.len(),
        "arena_scale": arena_scale(p),
        "persistent_bytes": p.persistent_bytes,
        "kinds": ROLES.iter().map(|r| r.name()).collect::<Vec<_>>(),
        "colours": ROLES.iter().map(|r| r.colour()).collect::<Vec<_>>(),
        "nodes": nodes,
        "buffers": buffers,
        "bands": bands.iter().map(|&(a, b, st, ph)| json!([a, b, st, ph])).collect::<Vec<_>>(),
    })
}

/// Band classes by phase (`FORWARD`, `RECOMPUTE`, `BACKWARD`) and stage parity, so that
/// neighbouring stages differ in shade; steps tied to no stage (loss, optimizer update)
/// get their phase's grey.
fn band_class(stage: Option<u32>, phase: u8) -> &'static str {
    match (phase, stage.map(|s| s % 2)) {
        (RECOMPUTE, _) => "br",
        (FORWARD, Some(0)) => "bf0",
        (FORWARD, Some(_)) => "bf1",
        (FORWARD, None) => "bfn",
        (_, Some(0)) => "bb0",
        (_, Some(_)) => "bb1",
        (_, None) => "bbn",
    }
}

const PAGE_CSS: &str = r#"body{font-family:sans-serif;margin:20px}
table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}
.sw{display:inline-block;width:12px;height:12px;vertical-align:middle}
#zoom button{min-width:28px}
#zoom{margin:6px 0}
#plot{user-select:none}
.zx rect,.pz rect{vector-effect:non-scaling-stroke}
rect.b{stroke:#fff;stroke-width:.3;fill-opacity:.85}
rect.b:hover,rect.hl{stroke:#000;stroke-width:1.5;fill-opacity:1}
.bf0{fill:#e3edf8}.bf1{fill:#c9dcf0}.bfn{fill:#e6e6e6}
.bb0{fill:#fcebd7}.bb1{fill:#f7d3a8}.bbn{fill:#cfcfcf}.br{fill:#e15759}
#bg rect{fill-opacity:.45}#bg .bfn,#bg .bbn{fill:#efefef}#bg .br{fill:#f6c1c1}
#tip{position:fixed;display:none;background:#fff;border:1px solid #888;padding:6px 8px;font-size:12px;box-shadow:2px 2px 6px rgba(0,0,0,.25);max-width:560px;pointer-events:none;z-index:2}
#tip.pinned{pointer-events:auto;border-color:#000}
#tip table td,#tip table th{border:none;padding:1px 6px 1px 0;text-align:left;vertical-align:top}
#tip th{color:#555;font-weight:normal;white-space:nowrap}
#sel{position:absolute;display:none;background:rgba(78,121,167,.2);border:1px solid #4e79a7;pointer-events:none}
"#;

/// The page's script: tooltips built from the embedded data on hover (a click pins one),
/// and zoom on the time axis (wheel, drag a range, buttons) by changing the `viewBox` of
/// every time-aligned SVG (`svg.zx`). The location hash `#zoom=A,B&b=I` opens the page
/// zoomed to program points `[A, B)` with buffer `I`'s tooltip pinned.
const PAGE_JS: &str = r##"(function(){
var D=JSON.parse(document.getElementById('plan-data').textContent);
var P=Math.max(D.points,1),L=80,W=1000,TY=+document.getElementById('xt').getAttribute('data-y');
var tip=document.getElementById('tip'),sel=document.getElementById('sel'),plot=document.getElementById('plot');
var arena=document.getElementById('arena'),zs=document.querySelectorAll('svg.zx');
var v0=0,v1=P,pinned=false,hl=null,drag=null,dragged=false;
var PH=['forward','recomputation','backward'];
function hb(b){var u=['B','KiB','MiB','GiB','TiB'],v=b,i=0;while(v>=1024&&i<4){v/=1024;i++;}return i?v.toFixed(2)+' '+u[i]:b+' B';}
function esc(s){return String(s).replace(/[&<>"]/g,function(c){return {'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c];});}
function nodeText(s){var n=D.nodes[s];return 'step '+s+': <b>'+esc(n[0])+'</b> ('+esc(n[1])+')'+(n[3]==null?'':', '+(n[2]==null?'':'stage '+n[2]+' ')+PH[n[3]]);}
function bufHtml(i){var b=D.buffers[i],k=b[2],ws=D.kinds[k]=='workspace',h='<div><b>'+esc(b[1]||b[0])+'</b></div><table>';
function row(a,c){h+='<tr><th>'+a+'</th><td>'+c+'</td></tr>';}
if(b[1])row('tensor',esc(b[0]));
row('kind','<span class="sw" style="background:'+D.colours[k]+'"></span> '+D.kinds[k]);
row('size',hb(b[3])+' ('+b[3].toLocaleString('en')+' bytes)');
if(ws)row('scratch of',nodeText(b[8]));
else row('produced by',b[8]==null?'no node (held for the whole step)':nodeText(b[8]));
if(!ws)row('last read by',b[9]==null?'no node':nodeText(b[9]));
row('live','program points ['+b[6]+', '+b[7]+'), steps '+(b[6]>>1)+' to '+((Math.max(b[7],1)-1)>>1));
row('offset',b[4]!=null?'arena, '+b[4].toLocaleString('en'):b[5]!=null?'persistent block, '+b[5].toLocaleString('en'):'outside the arena');
if(b[10]!=null)row('overwrites',esc(D.buffers[b[10]][1]||D.buffers[b[10]][0])+' (in place)');
return h+'</table>';}
function bandHtml(j){var b=D.bands[j],s0=b[0]>>1,s1=(b[1]>>1)-1;
return '<div><b>'+(b[2]==null?'no stage':'stage '+b[2])+', '+PH[b[3]]+'</b></div><div>steps '+s0+' to '+s1+' (program points ['+b[0]+', '+b[1]+'))</div><div>from '+nodeText(s0)+'</div><div>to '+nodeText(s1)+'</div>';}
function htmlOf(t){if(!t||!t.getAttribute)return null;var i=t.getAttribute('data-i'),j=t.getAttribute('data-b');
return i!=null?bufHtml(+i):j!=null?bandHtml(+j):null;}
function place(x,y){var r=tip.getBoundingClientRect(),px=x+14,py=y+14;
if(px+r.width>innerWidth)px=Math.max(0,x-r.width-14);if(py+r.height>innerHeight)py=Math.max(0,y-r.height-14);
tip.style.left=px+'px';tip.style.top=py+'px';}
function mark(t){if(hl)hl.classList.remove('hl');hl=t&&t.getAttribute&&t.getAttribute('data-i')!=null?t:null;if(hl)hl.classList.add('hl');}
function show(t,x,y){var h=htmlOf(t);if(h==null){tip.style.display='none';mark(null);return false;}
tip.innerHTML=h;tip.style.display='block';mark(t);place(x,y);return true;}
function pin(t,x,y){pinned=show(t,x,y);tip.classList.toggle('pinned',pinned);}
function toPt(x){var r=arena.getBoundingClientRect();return v0+(x-r.left)/r.width*(v1-v0);}
function ticks(){var raw=(v1-v0)/10,p=Math.pow(10,Math.floor(Math.log10(Math.max(raw,1e-9)))),st=p;
[1,2,5,10].some(function(m){st=m*p;return st>=raw;});st=Math.max(1,st);var s='';
for(var t=Math.ceil(v0/st)*st;t<=v1;t+=st){var x=(L+(t-v0)/(v1-v0)*W).toFixed(1);
s+='<line x1="'+x+'" x2="'+x+'" y1="'+(TY-12)+'" y2="'+(TY-8)+'" stroke="#555"/><text x="'+x+'" y="'+TY+'" text-anchor="middle">'+t+'</text>';}
document.getElementById('xt').innerHTML=s;}
function draw(){var a='',q='',S=D.arena_scale,T=Math.max(D.persistent_bytes,1);
D.buffers.forEach(function(b,i){var c='<rect class="b k'+b[2]+'" data-i="'+i+'" ';
if(b[4]!=null)a+=c+'x="'+b[6]+'" width="'+Math.max(b[7]-b[6],1)+'" y="'+(1000-(b[4]+b[3])/S*1000).toFixed(1)+'" height="'+Math.max(b[3]/S*1000,1).toFixed(1)+'"/>';
else if(b[5]!=null&&b[10]==null)q+=c+'x="0" width="'+P+'" y="'+(1000-(b[5]+b[3])/T*1000).toFixed(1)+'" height="'+Math.max(b[3]/T*1000,1).toFixed(1)+'"/>';});
document.getElementById('bufs').innerHTML=a;var pb=document.getElementById('pbufs');if(pb)pb.innerHTML=q;}
draw();
function setView(a,b){if(!(b-a>=4)){var c=(a+b)/2;a=c-2;b=c+2;}
if(b-a>=P){a=0;b=P;}else if(a<0){b-=a;a=0;}else if(b>P){a-=b-P;b=P;}
v0=a;v1=b;zs.forEach(function(s){var vb=s.getAttribute('viewBox').split(' ');s.setAttribute('viewBox',a+' 0 '+(b-a)+' '+vb[3]);});
ticks();document.getElementById('range').textContent='program points ['+Math.round(a)+', '+Math.round(b)+') of '+P+(a==0&&b==P?'':' (zoomed '+(P/(b-a)).toFixed(1)+'x)');}
document.querySelectorAll('#zoom button').forEach(function(btn){btn.addEventListener('click',function(){
var z=btn.getAttribute('data-z'),w=v1-v0,c=(v0+v1)/2;
if(z=='in')setView(c-w/4,c+w/4);else if(z=='out')setView(c-w,c+w);
else if(z=='left')setView(v0-w/2,v1-w/2);else if(z=='right')setView(v0+w/2,v1+w/2);else setView(0,P);});});
arena.addEventListener('wheel',function(e){e.preventDefault();var c=toPt(e.clientX),k=e.deltaY<0?0.8:1.25;
setView(c-(c-v0)*k,c+(v1-c)*k);},{passive:false});
arena.addEventListener('mousedown',function(e){if(e.button!=0)return;drag=e.clientX;dragged=false;e.preventDefault();});
document.addEventListener('mousemove',function(e){if(drag!=null){if(Math.abs(e.clientX-drag)>4){dragged=true;
var r=arena.getBoundingClientRect(),pr=plot.getBoundingClientRect();
sel.style.display='block';sel.style.left=(Math.min(drag,e.clientX)-pr.left)+'px';sel.style.width=Math.abs(e.clientX-drag)+'px';
sel.style.top=(r.top-pr.top)+'px';sel.style.height=r.height+'px';}return;}
if(!pinned)show(e.target,e.clientX,e.clientY);});
document.addEventListener('mouseup',function(e){if(drag==null)return;var a=drag;drag=null;sel.style.display='none';
if(dragged){var p=toPt(a),q=toPt(e.clientX);setView(Math.min(p,q),Math.max(p,q));}});
document.addEventListener('click',function(e){if(dragged){dragged=false;return;}if(tip.contains(e.target))return;pin(e.target,e.clientX,e.clientY);});
var hs={};location.hash.slice(1).split('&').forEach(function(kv){var p=kv.split('=');if(p.length==2)hs[p[0]]=p[1];});
if(hs.zoom){var z=hs.zoom.split(',').map(Number);setView(z[0],z[1]);}else setView(0,P);
if(hs.b!=null){var t=document.querySelector('[data-i="'+(+hs.b)+'"]');
if(t){var r=t.getBoundingClientRect();pin(t,r.left+r.width/2,r.top+r.height/2);}
else{tip.innerHTML=bufHtml(+hs.b);tip.style.display='block';tip.classList.add('pinned');pinned=true;place(L,100);}}
})();"##;

/// Bytes per pixel row of the arena drawing: the arena, with headroom so the lower-bound
/// line stays visible when they are equal.
fn arena_scale(p: &MemoryPlan) -> f64 {
    (p.arena_bytes.max(1) as f64).max(p.lower_bound_bytes as f64) * 1.06
}

/// One self-contained HTML page (no external resources): the arena (offset against program
/// point, one rectangle per buffer, coloured by what it holds), the persistent block, the
/// live-bytes curve against the lower bound, the checkpointing stages and recomputation
/// on the time axis, zoom on that axis, and a tooltip per buffer built from one embedded
/// JSON object ([`page_data`]) rather than per-rectangle text.
pub fn plan_html(g: &Graph, p: &MemoryPlan, meta: &PlanMeta) -> String {
    let data = page_data(g, p, meta);
    let points = (2 * p.order.len()).max(1);
    let pts = points as f64;
    let scale = arena_scale(p);
    // Drawing units: the time-aligned SVGs map program points to x and 0..1000 to y.
    let (w, left, top, ah) = (1000.0, 80.0, 10.0, 400.0);
    let y = |b: f64| 1000.0 - b / scale * 1000.0;
    let nested = |id: &str, class: &str, ypx: f64, hpx: f64, vh: f64| {
        format!(
            r#"<svg id="{id}" class="{class}" x="{left}" y="{ypx}" width="{w}" height="{hpx}" viewBox="0 0 {points} {vh}" preserveAspectRatio="none">"#
        )
    };
    let bands = data["bands"].as_array().cloned().unwrap_or_default();
    let band = |v: &Value| -> (u64, u64, Option<u32>, u8) {
        (
            v[0].as_u64().unwrap_or(0),
            v[1].as_u64().unwrap_or(0),
            v[2].as_u64().map(|s| s as u32),
            v[3].as_u64().unwrap_or(0) as u8,
        )
    };
    // Bands are worth drawing where the step has more than one phase or any stage.
    let staged = bands
        .iter()
        .any(|b| band(b).2.is_some() || band(b).3 != FORWARD);
    let recomputing: Vec<(u64, u64)> = bands
        .iter()
        .map(band)
        .filter(|b| b.3 == RECOMPUTE)
        .map(|b| (b.0, b.1))
        .collect();

    let mut svg = String::new();
    svg.push_str(&nested("arena", "zx", top, ah, 1000.0));
    let _ = write!(
        svg,
        r##"<rect x="0" y="0" width="{points}" height="1000" fill="#fafafa"/>"##
    );
    if staged {
        svg.push_str(r#"<g id="bg">"#);
        for (j, b) in bands.iter().map(band).enumerate() {
            let _ = write!(
                svg,
                r#"<rect x="{}" y="0" width="{}" height="1000" class="{}" data-b="{j}"/>"#,
                b.0,
                b.1 - b.0,
                band_class(b.2, b.3)
            );
        }
        svg.push_str("</g>");
    }
    let role_of: Vec<usize> = data["buffers"]
        .as_array()
        .map(|bs| {
            bs.iter()
                .map(|b| b[2].as_u64().unwrap_or(0) as usize)
                .collect()
        })
        .unwrap_or_default();
    // The buffers: drawn by the script from the page data.
    svg.push_str(r#"<g id="bufs"></g>"#);
    // Live bytes per program point (aligned as planned) and the lower bound.
    let mut live = vec![0u64; points + 1];
    for b in p.buffers.iter().filter(|b| b.offset.is_some()) {
        for v in &mut live[b.start as usize..(b.end as usize).min(points)] {
            *v += b.bytes.div_ceil(256) * 256;
        }
    }
    let path: Vec<String> = live
        .iter()
        .enumerate()
        .map(|(i, &v)| format!("{i},{:.1}", y(v as f64)))
        .collect();
    let _ = write!(
        svg,
        r#"<polyline points="{}" fill="none" stroke="black" stroke-width="1.2" vector-effect="non-scaling-stroke" pointer-events="none"/>"#,
        path.join(" ")
    );
    let lb = y(p.lower_bound_bytes as f64);
    let _ = write!(
        svg,
        r##"<line x1="0" x2="{points}" y1="{lb:.1}" y2="{lb:.1}" stroke="#d62728" stroke-dasharray="5,3" vector-effect="non-scaling-stroke" pointer-events="none"/>"##
    );
    // Where the last arena buffer dies: what follows (the optimizer updates) runs outside it.
    let last_arena_use = p
        .buffers
        .iter()
        .filter(|b| b.offset.is_some())
        .map(|b| b.end)
        .max();
    if let Some(last) = last_arena_use.filter(|&l| (l as f64) < pts * 0.98) {
        let _ = write!(
            svg,
            r##"<line x1="{last}" x2="{last}" y1="0" y2="1000" stroke="#888" stroke-dasharray="2,3" vector-effect="non-scaling-stroke" pointer-events="none"/>"##
        );
    }
    svg.push_str("</svg>");
    let mut yb = top + ah + 4.0;
    if staged {
        svg.push_str(&nested("stages", "zx", yb, 12.0, 1.0));
        for (j, b) in bands.iter().map(band).enumerate() {
            let _ = write!(
                svg,
                r#"<rect x="{}" y="0" width="{}" height="1" class="{}" data-b="{j}"/>"#,
                b.0,
                b.1 - b.0,
                band_class(b.2, b.3)
            );
        }
        svg.push_str("</svg>");
        let _ = write!(
            svg,
            r#"<text x="{}" y="{:.0}" text-anchor="end">stages</text>"#,
            left - 5.0,
            yb + 10.0
        );
        yb += 14.0;
    }
    if !recomputing.is_empty() {
        svg.push_str(&nested("recompute", "zx", yb, 8.0, 1.0));
        for (a, b) in &recomputing {
            let _ = write!(
                svg,
                r#"<rect x="{a}" y="0" width="{}" height="1" class="br"/>"#,
                b - a
            );
        }
        svg.push_str("</svg>");
        let _ = write!(
            svg,
            r#"<text x="{}" y="{:.0}" text-anchor="end">recompute</text>"#,
            left - 5.0,
            yb + 8.0
        );
        yb += 10.0;
    }
    let ty = yb + 20.0;
    let _ = write!(svg, r#"<g id="xt" data-y="{ty:.0}"></g>"#);
    let _ = write!(
        svg,
        r#"<text x="{}" y="{:.0}" text-anchor="middle">program point (step s reads at 2s, writes at 2s+1)</text>"#,
        left + w / 2.0,
        ty + 16.0
    );
    for f in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let _ = write!(
            svg,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 5.0,
            top + ah - f * ah + 4.0,
            human_bytes((scale * f) as u64)
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{}" y="{:.1}" text-anchor="end" fill="#d62728">lower bound</text>"##,
        left + w - 4.0,
        top + lb / 1000.0 * ah - 4.0
    );
    // The persistent block: held for the whole step, so drawn once, unzoomed, to its own
    // scale. A state output updated in place shares its input's bytes and is not redrawn.
    let mut yend = ty + 26.0;
    let held = p
        .buffers
        .iter()
        .any(|b| b.tensor.is_some_and(|t| p.persistent_offset[t].is_some()));
    if held {
        let total = p.persistent_bytes.max(1) as f64;
        let (py, ph) = (yend + 14.0, 90.0);
        let _ = write!(
            svg,
            r#"<text x="{left}" y="{:.0}">persistent block (weights, gradients, optimizer state, inputs; held for the whole step): {}</text>"#,
            py - 4.0,
            human_bytes(p.persistent_bytes)
        );
        let _ = write!(
            svg,
            r##"<svg id="persistent" class="pz" x="{left}" y="{py:.0}" width="{w}" height="{ph}" viewBox="0 0 {points} 1000" preserveAspectRatio="none"><rect x="0" y="0" width="{points}" height="1000" fill="#fafafa"/>"##
        );
        svg.push_str(r#"<g id="pbufs"></g>"#);
        svg.push_str("</svg>");
        for f in [0.0, 1.0] {
            let _ = write!(
                svg,
                r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                left - 5.0,
                py + ph - f * ph + 4.0,
                human_bytes((total * f) as u64)
            );
        }
        yend = py + ph + 10.0;
    }
    let svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{yend:.0}" font-family="sans-serif" font-size="11">{svg}</svg>"#,
        w + left + 20.0
    );

    let kinds: String = ROLES
        .iter()
        .map(|r| format!(".k{}{{fill:{}}}", r.code(), r.colour()))
        .collect();
    let mut largest: Vec<(usize, &PlanBuffer)> = p
        .buffers
        .iter()
        .enumerate()
        .filter(|(_, b)| b.offset.is_some())
        .collect();
    largest.sort_by_key(|(_, b)| std::cmp::Reverse(b.bytes));
    let shown = |i: usize| {
        let b = &data["buffers"][i];
        b[1].as_str()
            .or(b[0].as_str())
            .unwrap_or_default()
            .to_string()
    };
    let mut rows = String::new();
    for &(i, b) in largest.iter().take(25) {
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>[{}, {})</td></tr>",
            esc(&shown(i)),
            ROLES[role_of[i]].name(),
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
    let swatch = |c: &str| format!(r#"<span class="sw" style="background:{c}"></span>"#);
    let present: std::collections::BTreeSet<usize> = role_of.iter().copied().collect();
    let mut legend: String = ROLES
        .iter()
        .filter(|r| present.contains(&r.code()))
        .map(|r| format!("{} {} &nbsp; ", swatch(r.colour()), r.name()))
        .collect();
    legend
        .push_str("&mdash; live bytes &nbsp; <span style=\"color:#d62728\">- - lower bound</span>");
    let mut axis_legend = String::new();
    if staged {
        let has = |c: &str| {
            bands
                .iter()
                .map(band)
                .any(|b| band_class(b.2, b.3).starts_with(c))
        };
        for (c, label, colour) in [
            (
                "bf",
                "forward of a stage (shades alternate by stage)",
                "#c9dcf0",
            ),
            ("bb", "backward of a stage", "#f7d3a8"),
            ("br", "recomputation", "#e15759"),
        ] {
            if has(c) {
                let _ = write!(axis_legend, "{} {label} &nbsp; ", swatch(colour));
            }
        }
        axis_legend.push_str(&format!(
            "{} no stage (loss, optimizer update) &nbsp; ",
            swatch("#cfcfcf")
        ));
        axis_legend = format!("<p>time axis: {axis_legend}</p>");
    }
    // `<` escaped so the JSON cannot close its script element.
    let embedded = data.to_string().replace('<', "\\u003c");
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>lowmem plan: {model}</title>
<style>{PAGE_CSS}{kinds}</style></head><body>
<h1>Memory plan: {model}</h1>
<p>batch {batch}, {mode}; {nodes} steps; planner <b>{planner}</b> ({order} order){remat}</p>
<p>arena <b>{arena}</b>, lower bound {lb} (ratio <b>{ratio:.4}</b>); persistent {pers}; peak {peak}; naive {naive}</p>
<p>{legend}</p>
{axis_legend}<div id="zoom"><button data-z="in" title="zoom in">+</button> <button data-z="out" title="zoom out">&minus;</button> <button data-z="left" title="pan left">&larr;</button> <button data-z="right" title="pan right">&rarr;</button> <button data-z="reset">reset</button> <span id="range"></span> &nbsp; <small>wheel over the arena zooms, dragging selects a range; hover a buffer for its details, click to pin them</small></div>
<div id="plot" style="position:relative">{svg}<div id="sel"></div></div>
<div id="tip"></div>
<h2>Largest arena buffers</h2>
<table><tr><th>tensor</th><th>kind</th><th>bytes</th><th>offset</th><th>live</th></tr>{rows}</table>
<h2>Persistent memory (outside the arena)</h2>
<table><tr><th>kind</th><th>buffers</th><th>bytes</th></tr>{persistent}</table>
{rewrites}<script type="application/json" id="plan-data">{embedded}</script>
<script>{PAGE_JS}</script>
</body></html>
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
        remat = meta.remat.map_or(String::new(), |r| format!(
            "; checkpointing <b>{}</b> ({}), {} stages, {} recompute nodes",
            r.scheme,
            esc(&r.detail),
            r.stages,
            r.recomputed_nodes
        )),
        arena = human_bytes(p.arena_bytes),
        lb = human_bytes(p.lower_bound_bytes),
        ratio = ratio(p),
        pers = human_bytes(p.persistent_bytes),
        peak = human_bytes(p.peak_bytes()),
        naive = human_bytes(p.naive_bytes),
    )
}
