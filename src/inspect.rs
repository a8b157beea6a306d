//! `lowmem inspect`: what a model is made of.

use std::collections::BTreeMap;
use std::fmt::Write;

use lowmem_ir::Graph;

pub use lowmem_compile::human_bytes;

/// Counts with thousands separators.
pub fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn flops(f: u64) -> String {
    match f {
        f if f >= 1_000_000_000 => format!("{:.3} GFLOP", f as f64 / 1e9),
        f if f >= 1_000_000 => format!("{:.3} MFLOP", f as f64 / 1e6),
        f => format!("{f} FLOP"),
    }
}

/// The report printed by `lowmem inspect`.
pub fn report(g: &Graph, verbose: bool) -> String {
    let mut s = String::new();
    let decl = |t: lowmem_ir::TensorId| {
        let t = g.tensor(t);
        format!("{} {} {:?}", t.name, t.dtype, t.shape)
    };
    let _ = writeln!(s, "model: {}", g.name);
    let _ = writeln!(s, "inputs:");
    for &i in &g.inputs {
        let _ = writeln!(s, "  {}", decl(i));
    }
    let _ = writeln!(s, "outputs:");
    for &o in &g.outputs {
        let _ = writeln!(s, "  {}", decl(o));
    }
    let mut hist: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &g.nodes {
        *hist.entry(n.op.name()).or_default() += 1;
    }
    let mut hist: Vec<_> = hist.into_iter().collect();
    hist.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let _ = writeln!(s, "nodes: {}", g.nodes.len());
    let _ = writeln!(s, "ops:");
    for (op, n) in hist {
        let _ = writeln!(s, "  {op:<20} {n}");
    }
    let trainable = g.trainable_weights();
    let (params, bytes) = g.totals(trainable.iter().copied());
    let (all, all_bytes) = g.totals(g.weights());
    let _ = writeln!(
        s,
        "parameters: {} ({})",
        grouped(params as u64),
        human_bytes(bytes as u64)
    );
    let _ = writeln!(
        s,
        "other constants (BatchNorm statistics, shape data): {} ({})",
        grouped((all - params) as u64),
        human_bytes((all_bytes - bytes) as u64)
    );
    let _ = writeln!(
        s,
        "forward FLOPs: {} ({})",
        grouped(g.flops()),
        flops(g.flops())
    );
    let act: u64 = g
        .tensor_ids()
        .filter(|&t| g.kind(t) == lowmem_ir::TensorKind::Activation)
        .map(|t| g.tensor(t).bytes() as u64)
        .sum();
    let _ = writeln!(s, "activation bytes (all, unplanned): {}", human_bytes(act));
    if verbose {
        let _ = writeln!(s, "tensors:");
        let producers = g.producers();
        for t in g.tensor_ids() {
            let tt = g.tensor(t);
            let role = match (g.kind(t), producers[t.index()]) {
                (lowmem_ir::TensorKind::Activation, Some(n)) => {
                    format!("from {} ({})", g.node(n).name, g.node(n).op.name())
                }
                (k, _) => format!("{k:?}").to_lowercase(),
            };
            let _ = writeln!(
                s,
                "  {:<40} {:<5} {:<22} {:>12}  {role}",
                tt.name,
                tt.dtype.name(),
                format!("{:?}", tt.shape),
                tt.bytes()
            );
        }
    }
    s
}
