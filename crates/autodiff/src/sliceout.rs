//! SliceOut (Notin et al., arXiv 2007.10909): where training-mode dropout sits between two
//! weight layers, keep a contiguous window of units instead of random ones, so both layers
//! run as smaller dense products.
//!
//! A site is `P1 -> [activation] -> Dropout -> P2` where P1 and P2 are both linear (`Gemm`,
//! or `MatMul` with an optional bias `Add`) or both convolutions (group 1), their weights are
//! trainable, and each intermediate tensor has one reader. At step `t` the site keeps the
//! `k = round((1 - p) n)` units `[s, s + k)` (indices mod `n`, so the window wraps around the
//! end and every unit is kept equally often), `s = window_start(seed, t, n)`, hashed from
//! the same counter as dropout's masks. The rewrite happens while the training step replays
//! the forward pass:
//!
//! - P1's weight (output units: Gemm `B` columns, or rows under `transB`; Conv output
//!   channels) and its bias are read through [`Op::SliceWindow`], so P1 writes `k` units;
//! - the activation runs on the `k` units; the dropout becomes `Scale(1 / (1 - p))`;
//! - P2's weight is read through the same window on its input units.
//!
//! Autodiff then differentiates the window itself ([`Op::SliceWindowGrad`]): each weight's
//! gradient is dense with zeros outside the window. The optimizer update is the ordinary
//! dense one, so the step equals a dense step whose dropout mask is the window: plain SGD
//! leaves the dropped units untouched; momentum and Adam keep decaying the dropped units'
//! moments and move them by their momentum, exactly as they would under dropout's zero
//! gradient (weight decay also applies to every unit). The evaluation graph is the model as
//! given (dropout is the identity there).

use std::collections::HashMap;

use lowmem_ir::{Graph, NodeId, Op, TensorId};

/// One rewritten dropout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceOutSite {
    /// The Dropout node.
    pub node: String,
    /// Its output (before the rewrite).
    pub tensor: String,
    pub units: usize,
    pub kept: usize,
    /// Activation bytes no longer computed or held, less the weight windows' copies.
    pub bytes_saved: u64,
    /// Why the site saves nothing, when it does not.
    pub why: Option<String>,
}

/// A slice of one node input during replay.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cut {
    pub axis: usize,
    pub kept: usize,
    pub seed: u64,
}

/// What the replay changes.
#[derive(Clone, Debug, Default)]
pub(crate) struct SlicePlan {
    /// (forward node, input index) -> the windows it reads through, applied in order (a
    /// layer between two sites has its weight cut on both axes).
    pub inputs: HashMap<(usize, usize), Vec<Cut>>,
    /// Dropout node -> its scale `1 / (1 - p)`.
    pub scales: HashMap<usize, f32>,
}

fn single_reader(g: &Graph, consumers: &[Vec<NodeId>], t: TensorId) -> Option<NodeId> {
    match consumers[t.index()].as_slice() {
        [c] if !g.outputs.contains(&t) => Some(*c),
        _ => None,
    }
}

/// Elementwise activations a unit slice commutes with.
fn is_activation(op: &Op) -> bool {
    matches!(
        op,
        Op::Relu | Op::LeakyRelu { .. } | Op::Sigmoid | Op::Tanh | Op::Erf | Op::Gelu { .. }
    )
}

/// A matched site: the (node, input) cuts with their axes, the activations that shrink, the
/// unit count and the second layer.
type Match = (Vec<((usize, usize), usize)>, Vec<TensorId>, usize, usize);

/// The layer kind a site's two ends share.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Linear,
    Conv,
}

/// Finds the SliceOut sites of `fwd` at drop ratio `p` (which replaces each site's own
/// dropout ratio). Returns the replay plan, the sites, and the dropouts left dense with why.
pub(crate) fn find(fwd: &Graph, p: f32) -> (SlicePlan, Vec<SliceOutSite>, Vec<(String, String)>) {
    let producers = fwd.producers();
    let consumers = fwd.consumers();
    let trainable = fwd.trainable_weights();
    let is_param = |t: TensorId| trainable.contains(&t);
    let mut plan = SlicePlan::default();
    let mut sites = Vec::new();
    let mut skipped = Vec::new();
    let mut site_cuts = Vec::new();
    for (d, node) in fwd.nodes.iter().enumerate() {
        let Op::Dropout { seed, .. } = node.op else {
            continue;
        };
        let skip = |why: &str| (node.name.clone(), why.to_string());
        let r = (|| -> Result<Match, String> {
            if node.outputs.len() != 1 {
                return Err("the dropout's mask output is read".into());
            }
            let dout = node.outputs[0];
            let a = node.inputs[0];
            single_reader(fwd, &consumers, a).ok_or("its input has other readers")?;
            let mut acts = vec![a, dout];
            let mut h = a;
            if let Some(act) = producers[a.index()] {
                let an = fwd.node(act);
                if is_activation(&an.op) && an.inputs.len() == 1 {
                    h = an.inputs[0];
                    single_reader(fwd, &consumers, h)
                        .ok_or("the activation's input has other readers")?;
                    acts.push(h);
                }
            }
            let p1 = producers[h.index()].ok_or("it does not follow a layer")?;
            let n1 = fwd.node(p1);
            let mut cuts: Vec<((usize, usize), usize)> = Vec::new();
            let hs = &fwd.tensor(h).shape;
            let (kind, units) = match &n1.op {
                Op::Gemm(a) if is_param(n1.inputs[1]) => {
                    let n = hs[1];
                    cuts.push(((p1.index(), 1), if a.trans_b { 0 } else { 1 }));
                    if let Some(&c) = n1.inputs.get(2) {
                        let cs = &fwd.tensor(c).shape;
                        match cs.as_slice() {
                            [m] if *m == n => cuts.push(((p1.index(), 2), 0)),
                            [1, m] if *m == n => cuts.push(((p1.index(), 2), 1)),
                            s if s.iter().product::<usize>() == 1 => {}
                            _ => return Err("the first layer's bias is not per unit".into()),
                        }
                    }
                    (Kind::Linear, n)
                }
                Op::Conv(c) if c.group == 1 && is_param(n1.inputs[1]) => {
                    cuts.push(((p1.index(), 1), 0));
                    if n1.inputs.len() == 3 {
                        cuts.push(((p1.index(), 2), 0));
                    }
                    (Kind::Conv, hs[1])
                }
                Op::MatMul | Op::Add => {
                    // MatMul(X, W) or Add(MatMul(X, W), b) with b per unit.
                    let n = *hs.last().ok_or("the layer output is a scalar")?;
                    let mm = if matches!(n1.op, Op::Add) && n1.inputs.len() == 2 {
                        let bias = n1
                            .inputs
                            .iter()
                            .position(|&i| is_param(i))
                            .ok_or("it does not follow a layer")?;
                        let m = n1.inputs[1 - bias];
                        let bs = &fwd.tensor(n1.inputs[bias]).shape;
                        if bs.last() != Some(&n) || bs.iter().product::<usize>() != n {
                            return Err("the first layer's bias is not per unit".into());
                        }
                        cuts.push(((p1.index(), bias), bs.len() - 1));
                        single_reader(fwd, &consumers, m)
                            .ok_or("the layer output has other readers")?;
                        acts.push(m);
                        producers[m.index()].ok_or("it does not follow a layer")?
                    } else {
                        p1
                    };
                    let mn = fwd.node(mm);
                    let w = mn.inputs[1];
                    if !matches!(mn.op, Op::MatMul)
                        || !is_param(w)
                        || fwd.tensor(w).shape.len() != 2
                    {
                        return Err("it does not follow a layer with a weight matrix".into());
                    }
                    cuts.push(((mm.index(), 1), 1));
                    (Kind::Linear, n)
                }
                _ => {
                    return Err(
                        "it does not follow a Gemm, MatMul or Conv with a trainable weight".into(),
                    );
                }
            };
            let p2 =
                single_reader(fwd, &consumers, dout).ok_or("its output has several readers")?;
            let n2 = fwd.node(p2);
            if n2.inputs.first() != Some(&dout) || n2.inputs.len() < 2 || !is_param(n2.inputs[1]) {
                return Err("it does not feed a layer's input with a trainable weight".into());
            }
            let axis2 = match (&n2.op, kind) {
                (Op::Gemm(a), Kind::Linear) if !a.trans_a => {
                    if a.trans_b {
                        1
                    } else {
                        0
                    }
                }
                (Op::MatMul, Kind::Linear) if fwd.tensor(n2.inputs[1]).shape.len() == 2 => 0,
                (Op::Conv(c), Kind::Conv) if c.group == 1 => 1,
                _ => {
                    return Err(
                        "it does not feed a layer of the same kind (Gemm/MatMul or Conv, group 1)"
                            .into(),
                    );
                }
            };
            cuts.push(((p2.index(), 1), axis2));
            Ok((cuts, acts, units, p2.index()))
        })();
        let (cuts, acts, n, _) = match r {
            Ok(x) => x,
            Err(why) => {
                skipped.push(skip(&why));
                continue;
            }
        };
        let k = ((1.0 - p as f64) * n as f64).round() as usize;
        if k == 0 || k >= n {
            skipped.push(skip(&format!(
                "keeping round((1 - {p}) * {n}) = {k} of {n} units is not a slice"
            )));
            continue;
        }
        // As DropoutTrain: distinct sites get distinct windows even under one file seed.
        let seed = seed ^ (d as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let saved: u64 = acts
            .iter()
            .map(|&t| fwd.tensor(t).bytes() as u64 / n as u64 * (n - k) as u64)
            .sum();
        for &(at, axis) in &cuts {
            plan.inputs.entry(at).or_default().push(Cut {
                axis,
                kept: k,
                seed,
            });
        }
        plan.scales.insert(d, 1.0 / (1.0 - p));
        sites.push(SliceOutSite {
            node: node.name.clone(),
            tensor: fwd.tensor(node.outputs[0]).name.clone(),
            units: n,
            kept: k,
            bytes_saved: saved,
            why: None,
        });
        site_cuts.push(cuts.iter().map(|c| c.0).collect::<Vec<_>>());
    }
    // The weight windows live from the forward to the backward pass (the layers' dX reads
    // them): each window's bytes (cut on every axis it is cut on), shared among its sites.
    for (site, keys) in sites.iter_mut().zip(&site_cuts) {
        let windows: u64 = keys
            .iter()
            .map(|&(v, i)| {
                let t = fwd.node(NodeId(v as u32)).inputs[i];
                let shape = &fwd.tensor(t).shape;
                let cuts = &plan.inputs[&(v, i)];
                let kept: f64 = cuts
                    .iter()
                    .map(|c| c.kept as f64 / shape[c.axis] as f64)
                    .product();
                (fwd.tensor(t).bytes() as f64 * kept / cuts.len() as f64) as u64
            })
            .sum();
        let saved = site.bytes_saved;
        site.bytes_saved = saved.saturating_sub(windows);
        if windows >= saved {
            site.why = Some(format!(
                "the weight windows ({windows} bytes) outweigh the activations saved ({saved} bytes) at this batch"
            ));
        }
    }
    (plan, sites, skipped)
}
