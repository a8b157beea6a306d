//! lowmem's rewrite stage: equality saturation over the IR with egg.
//!
//! [`simplify`] turns a [`Graph`] into an e-graph ([`Term`]s typed by [`TensorInfo`]), runs
//! the clean-up [`RULES`] to a bounded fixpoint, and extracts the cheapest equivalent graph by
//! DAG cost ([`extract_dag`]). Hashconsing merges identical deterministic computations on the
//! way in, so common-subexpression elimination needs no rule.
//!
//! What other stages rely on: graph inputs, weights, graph outputs and the tensors the caller
//! lists in `keep` survive under their names (so names stay a stable interface); random,
//! stateful and multi-output ops are never rewritten or merged ([`lang::is_opaque`]); the
//! result validates, computes the same outputs (up to floating-point reassociation in scale
//! folding) and keeps the source order of the nodes it keeps.

mod emit;
pub mod extract;
pub mod fuse;
pub mod lang;
pub mod rules;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use egg::{Id, Runner, SimpleScheduler, StopReason};
use lowmem_ir::{Graph, IrError, TensorId};
use thiserror::Error;

pub use extract::{Choice, extract_dag};
pub use fuse::{Fused, fuse_epilogues};
pub use lang::{Data, EG, Leaf, OpKey, Out, TensorInfo, Term};
pub use rules::{RULES, Rule};

/// The report's name for nodes merged by hashconsing when the graph is loaded.
pub const CSE: &str = "cse";

/// How many e-nodes of `g`'s e-graph (before any rewriting) each rule matches, and how many
/// nodes hashconsing merges ([`CSE`]): what the clean-up would find in `g`. A match is a
/// candidate: the type check that guards every rewrite (e.g. that broadcasting by ones keeps
/// the shape) happens when it is applied.
pub fn census(g: &Graph) -> Result<Vec<Applied>, RewriteError> {
    let loaded = load(g)?;
    let eg = &loaded.egraph;
    let mut out = vec![Applied {
        rule: CSE,
        count: loaded.merged,
    }];
    for r in RULES {
        let count = eg
            .classes()
            .map(|c| c.nodes.iter().filter(|n| r.matches(eg, c.id, n)).count())
            .sum();
        out.push(Applied {
            rule: r.name,
            count,
        });
    }
    Ok(out)
}

/// Bounds on the saturation run, and which rules to use.
#[derive(Clone, Debug)]
pub struct Options {
    pub iter_limit: usize,
    /// E-nodes; the run stops after the iteration that exceeds it.
    pub node_limit: usize,
    pub time_limit: Duration,
    /// Rule names to run (`None`: every rule in [`RULES`]).
    pub rules: Option<Vec<String>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            iter_limit: 16,
            node_limit: 1_000_000,
            time_limit: Duration::from_secs(20),
            rules: None,
        }
    }
}

impl Options {
    /// Only the named rules (tests and ablations).
    pub fn only(rules: &[&str]) -> Options {
        Options {
            rules: Some(rules.iter().map(|r| r.to_string()).collect()),
            ..Options::default()
        }
    }
}

/// How often a rule added a new equality.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub rule: &'static str,
    pub count: usize,
}

/// Size and cost of one run, for reports.
#[derive(Clone, Debug)]
pub struct Stats {
    pub iterations: usize,
    /// Why saturation stopped (`Saturated` when no rule had anything left to add).
    pub stop_reason: String,
    pub egraph_nodes: usize,
    pub egraph_classes: usize,
    /// [`graph_cost`] of the source and the result.
    pub cost_before: u64,
    pub cost_after: u64,
    pub time: Duration,
}

#[derive(Clone, Debug)]
pub struct Simplified {
    pub graph: Graph,
    /// Source tensor -> result tensor holding the same value, for every source tensor whose
    /// value the result still materialises (always: inputs, weights, outputs, `keep`).
    pub tensor_map: HashMap<TensorId, TensorId>,
    /// Nodes merged by hashconsing ([`CSE`]), then the rules that added an equality, in
    /// [`RULES`] order.
    pub report: Vec<Applied>,
    pub stats: Stats,
}

#[derive(Debug, Error)]
pub enum RewriteError {
    #[error("the source graph is invalid: {0}")]
    Invalid(IrError),
    #[error("unknown rule '{0}' (rules: {known})", known = RULES.iter().map(|r| r.name).collect::<Vec<_>>().join(", "))]
    UnknownRule(String),
    #[error("tensor {0:?} to keep is not in the graph")]
    UnknownKeep(TensorId),
    #[error("no acyclic term for tensor '{0}'")]
    NoTerm(String),
    #[error("rebuilding node '{node}' ({op}): {source}")]
    Rebuild {
        node: String,
        op: &'static str,
        source: IrError,
    },
    #[error("the rewritten graph is invalid: {0}")]
    Result(IrError),
}

/// The cost extraction minimises, per e-node: its output bytes (activation memory, the
/// resource lowmem plans for) plus its FLOPs, plus 1 so that free nodes still count.
pub fn node_cost(eg: &EG, class: Id, t: &Term) -> u64 {
    match t {
        Term::Leaf(_) | Term::Proj(..) => 1,
        Term::Op(key, kids) => {
            let outs = &eg[class].data.outs;
            let bytes: usize = outs
                .iter()
                .map(|(d, s)| d.size() * s.iter().product::<usize>())
                .sum();
            let ins: Vec<&[usize]> = kids
                .iter()
                .map(|&k| eg[k].data.outs.first().map_or(&[][..], |o| &o.1[..]))
                .collect();
            let out_shapes: Vec<&[usize]> = outs.iter().map(|o| &o.1[..]).collect();
            1 + bytes as u64 + key.op.flops(&ins, &out_shapes)
        }
    }
}

/// [`node_cost`] summed over a graph's nodes: comparable before and after a rewrite.
pub fn graph_cost(g: &Graph) -> u64 {
    g.nodes
        .iter()
        .map(|n| {
            let bytes: usize = n.outputs.iter().map(|&o| g.tensor(o).bytes()).sum();
            1 + bytes as u64 + g.node_flops(n)
        })
        .sum()
}

/// The rules `opts` selects.
fn selected(opts: &Options) -> Result<Vec<Rule>, RewriteError> {
    match &opts.rules {
        None => Ok(RULES.to_vec()),
        Some(names) => names
            .iter()
            .map(|n| {
                RULES
                    .iter()
                    .find(|r| r.name == n)
                    .copied()
                    .ok_or_else(|| RewriteError::UnknownRule(n.clone()))
            })
            .collect(),
    }
}

/// The source graph in an e-graph: the class of each source tensor (`None` for a tensor no
/// node defines), and the class of each source node (its tuple for multi-output nodes).
pub struct Loaded {
    pub egraph: EG,
    pub tensor_class: Vec<Option<Id>>,
    pub node_class: Vec<Id>,
    /// Source nodes that hashconsing merged into an earlier identical node (CSE).
    pub merged: usize,
}

/// Loads a validated graph into an e-graph.
pub fn load(g: &Graph) -> Result<Loaded, RewriteError> {
    g.validate().map_err(RewriteError::Invalid)?;
    let mut eg = EG::new(TensorInfo::of_graph(g));
    let mut class: Vec<Option<Id>> = vec![None; g.tensors.len()];
    for (i, leaf) in eg.analysis.leaves.clone().iter().enumerate() {
        if leaf.is_some() {
            class[i] = Some(eg.add(Term::Leaf(Leaf(i as u32))));
        }
    }
    let mut node_class = Vec::with_capacity(g.nodes.len());
    let mut merged = 0;
    for (i, n) in g.nodes.iter().enumerate() {
        // Validation guarantees every input is defined earlier.
        let kids: Vec<Id> = n
            .inputs
            .iter()
            .map(|t| class[t.index()].expect("validated"))
            .collect();
        let key = OpKey::of_node(n.op.clone(), n.outputs.len(), i);
        let term = Term::Op(key, kids);
        merged += eg.lookup(term.clone()).is_some() as usize;
        let id = eg.add(term);
        node_class.push(id);
        if n.outputs.len() == 1 {
            class[n.outputs[0].index()] = Some(id);
        } else {
            for (k, o) in n.outputs.iter().enumerate() {
                class[o.index()] = Some(eg.add(Term::Proj(Out(k), [id])));
            }
        }
    }
    eg.rebuild();
    Ok(Loaded {
        egraph: eg,
        tensor_class: class,
        node_class,
        merged,
    })
}

/// Simplifies `g` with the clean-up rules and DAG-cost extraction. Inputs, weights, outputs
/// and `keep` keep their names; see the crate documentation for the guarantees.
pub fn simplify(g: &Graph, keep: &[TensorId], opts: &Options) -> Result<Simplified, RewriteError> {
    let start = Instant::now();
    if let Some(&k) = keep.iter().find(|k| k.index() >= g.tensors.len()) {
        return Err(RewriteError::UnknownKeep(k));
    }
    let rules = selected(opts)?;
    let loaded = load(g)?;
    let rewrites: Vec<_> = rules.iter().map(|r| r.rewrite()).collect();
    let runner = Runner::default()
        .with_egraph(loaded.egraph)
        .with_scheduler(SimpleScheduler)
        .with_iter_limit(opts.iter_limit)
        .with_node_limit(opts.node_limit)
        .with_time_limit(opts.time_limit)
        .run(&rewrites);

    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for it in &runner.iterations {
        for (name, &n) in &it.applied {
            if let Some(i) = RULES.iter().position(|r| r.name == name.as_str()) {
                *counts.entry(i).or_default() += n;
            }
        }
    }
    let mut report: Vec<Applied> = (loaded.merged > 0)
        .then_some(Applied {
            rule: CSE,
            count: loaded.merged,
        })
        .into_iter()
        .collect();
    report.extend(
        counts
            .into_iter()
            .filter(|&(_, n)| n > 0)
            .map(|(i, count)| Applied {
                rule: RULES[i].name,
                count,
            }),
    );
    let stop_reason = match &runner.stop_reason {
        Some(StopReason::Saturated) | None => "saturated".to_string(),
        Some(r) => format!("{r:?}"),
    };
    let eg = runner.egraph;
    let emitted = emit::emit(g, &eg, &loaded.tensor_class, &loaded.node_class, keep)?;
    emitted.graph.validate().map_err(RewriteError::Result)?;
    let stats = Stats {
        iterations: runner.iterations.len(),
        stop_reason,
        egraph_nodes: eg.total_number_of_nodes(),
        egraph_classes: eg.number_of_classes(),
        cost_before: graph_cost(g),
        cost_after: graph_cost(&emitted.graph),
        time: start.elapsed(),
    };
    Ok(Simplified {
        graph: emitted.graph,
        tensor_map: emitted.tensor_map,
        report,
        stats,
    })
}
