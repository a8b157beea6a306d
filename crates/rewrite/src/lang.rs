//! The e-graph language over lowmem ops, and the analysis that types its e-classes.
//!
//! One e-node kind carries the whole [`Op`] as its payload rather than one kind per op: the
//! IR's op table stays the single definition of every op, and a new op needs no change here.
//! Rules inspect payloads in code (see `rules.rs`), which egg's pattern language could not do
//! anyway: composing permutations, multiplying scales and resolving reshape targets are
//! arithmetic on attributes.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::Arc;

use egg::{Analysis, DidMerge, EGraph, Id, define_language};
use lowmem_ir::{DType, Graph, Op, TensorId};

/// An [`Op`] as an e-node payload.
///
/// `Op` holds `f32` attributes and so has no `Eq`, `Hash` or `Ord`; the key compares the op's
/// `Debug` form, which prints every float in its shortest round-tripping form, so two keys are
/// equal exactly when the ops are.
///
/// Shared (`Arc`) because e-nodes are cloned freely (hashcons, class node lists, rules), and
/// an op's attributes are vectors.
#[derive(Clone, Debug)]
pub struct OpKey {
    pub op: Arc<Op>,
    /// Outputs the node declares. Part of the identity: `Dropout` with and without its mask
    /// output are different nodes.
    pub n_out: usize,
    /// `Some(index of the IR node)` for an opaque op. Hashconsing would otherwise merge two
    /// applications of a random or stateful op to the same inputs, so every instance gets its
    /// own key, and no rule matches it.
    pub opaque: Option<u32>,
    repr: Arc<str>,
}

impl OpKey {
    /// A deterministic single-output op: equal keys over equal children are the same value.
    pub fn new(op: Op) -> OpKey {
        OpKey::with(op, 1, None)
    }

    fn with(op: Op, n_out: usize, opaque: Option<u32>) -> OpKey {
        let repr = format!("{op:?}").into();
        OpKey {
            op: Arc::new(op),
            n_out,
            opaque,
            repr,
        }
    }

    /// The key of IR node `index`: opaque when [`is_opaque`] says so.
    pub fn of_node(op: Op, n_out: usize, index: usize) -> OpKey {
        let opaque = is_opaque(&op, n_out).then_some(index as u32);
        OpKey::with(op, n_out, opaque)
    }

    /// The op when rules may look at it (not opaque).
    pub fn transparent(&self) -> Option<&Op> {
        self.opaque.is_none().then_some(&self.op)
    }
}

/// Ops the rewriter never touches and never merges: randomness (dropout masks and SliceOut
/// windows come from a seed and the step), optimizer and statistics updates, and every multi-output op (its
/// outputs are read through [`Term::Proj`], which keeps the node whole).
pub fn is_opaque(op: &Op, n_out: usize) -> bool {
    n_out > 1
        || matches!(
            op,
            Op::Dropout { .. }
                | Op::DropoutTrain { .. }
                | Op::DropoutGrad { .. }
                | Op::SliceWindow { .. }
                | Op::SliceWindowGrad { .. }
                | Op::BatchNormTrain(_)
                | Op::SgdUpdate { .. }
                | Op::AdamUpdate { .. }
        )
}

impl PartialEq for OpKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for OpKey {}
impl Hash for OpKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (&self.repr, self.n_out, self.opaque).hash(state);
    }
}
impl PartialOrd for OpKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OpKey {
    fn cmp(&self, other: &Self) -> Ordering {
        (&self.repr, self.n_out, self.opaque).cmp(&(&other.repr, other.n_out, other.opaque))
    }
}
impl fmt::Display for OpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.opaque {
            Some(i) => write!(f, "{}#{i}", self.op.name()),
            None => f.write_str(self.op.name()),
        }
    }
}
/// Keys come from the IR, never from text; `define_language!` requires the impl.
impl FromStr for OpKey {
    type Err = &'static str;
    fn from_str(_: &str) -> Result<Self, Self::Err> {
        Err("op keys are built from IR ops, not parsed")
    }
}

/// A graph input or weight of the source graph, by its [`TensorId`] there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Leaf(pub u32);

impl Leaf {
    pub fn tensor(self) -> TensorId {
        TensorId::new(self.0 as usize)
    }
}
impl fmt::Display for Leaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}
impl FromStr for Leaf {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix('t').unwrap_or(s).parse().map(Leaf)
    }
}

/// Output `k` of a multi-output node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Out(pub usize);

impl fmt::Display for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "out{}", self.0)
    }
}
impl FromStr for Out {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix("out").unwrap_or(s).parse().map(Out)
    }
}

define_language! {
    /// A term over lowmem ops. An e-class of a single-output op is one tensor; the e-class of
    /// a multi-output op is the tuple of its outputs, read through `Proj`.
    pub enum Term {
        Op(OpKey, Vec<Id>),
        Proj(Out, [Id; 1]),
        Leaf(Leaf),
    }
}

/// What the analysis knows of a source-graph leaf.
#[derive(Clone, Debug)]
pub struct LeafInfo {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub konst: Option<f64>,
}

/// Weights up to this many elements are scanned for a uniform value; larger ones are
/// parameters, never all-ones or all-zeros in practice, and scanning them would cost time.
pub const CONST_SCAN_LIMIT: usize = 1 << 16;

/// Types every e-class, and tracks uniform constants.
///
/// The types come from [`Op::infer`], so the shape rules keep their one home in the IR; rules
/// use them to check that every rewrite preserves its class's dtype and shape.
#[derive(Debug, Default)]
pub struct TensorInfo {
    /// Indexed by source [`TensorId`]: `Some` for graph inputs and weights.
    pub leaves: Vec<Option<LeafInfo>>,
}

impl TensorInfo {
    pub fn of_graph(g: &Graph) -> TensorInfo {
        let mut leaves: Vec<Option<LeafInfo>> = vec![None; g.tensors.len()];
        let inputs: std::collections::HashSet<TensorId> = g.inputs.iter().copied().collect();
        let is_input = |i: usize| inputs.contains(&TensorId::new(i));
        for (i, t) in g.tensors.iter().enumerate() {
            if t.value.is_none() && !is_input(i) {
                continue;
            }
            let konst = t.value.as_ref().and_then(|v| {
                if v.len() > CONST_SCAN_LIMIT || v.is_empty() {
                    return None;
                }
                let vals = v.to_f64();
                vals.iter().all(|&x| x == vals[0]).then_some(vals[0])
            });
            leaves[i] = Some(LeafInfo {
                dtype: t.dtype,
                shape: t.shape.clone(),
                konst,
            });
        }
        TensorInfo { leaves }
    }
}

/// The dtype and shape of each output (one for a tensor; `n_out` for a tuple).
pub type Outs = Vec<(DType, Vec<usize>)>;

#[derive(Clone, Debug, PartialEq)]
pub struct Data {
    /// Empty only if a term failed to type, which the rules rule out by checking before they
    /// add a term and conversion rules out by validating the source graph.
    pub outs: Outs,
    /// `Some(v)`: every element equals `v`.
    pub konst: Option<f64>,
}

pub type EG = EGraph<Term, TensorInfo>;

/// The outputs of `t` given its children's classes.
pub fn infer_term(eg: &EG, t: &Term) -> Result<Outs, String> {
    match t {
        Term::Leaf(l) => eg
            .analysis
            .leaves
            .get(l.0 as usize)
            .and_then(|x| x.as_ref())
            .map(|x| vec![(x.dtype, x.shape.clone())])
            .ok_or_else(|| format!("{l} is not a graph input or weight")),
        Term::Proj(Out(k), [c]) => eg[*c]
            .data
            .outs
            .get(*k)
            .map(|o| vec![o.clone()])
            .ok_or_else(|| format!("the tuple has no output {k}")),
        Term::Op(key, kids) => {
            let mut ins = Vec::with_capacity(kids.len());
            for &k in kids {
                match &eg[k].data.outs[..] {
                    [(d, s)] => ins.push((*d, &s[..])),
                    _ => return Err("an input is not a single tensor".into()),
                }
            }
            key.op.infer(&ins, key.n_out)
        }
    }
}

/// Uniform values survive ops that only move or scale data.
fn konst_of(eg: &EG, t: &Term) -> Option<f64> {
    match t {
        Term::Leaf(l) => eg.analysis.leaves.get(l.0 as usize)?.as_ref()?.konst,
        Term::Proj(..) => None,
        Term::Op(key, kids) => {
            let [k] = kids[..] else { return None };
            let v = eg[k].data.konst?;
            match key.transparent()? {
                Op::Reshape { .. }
                | Op::Flatten { .. }
                | Op::Squeeze { .. }
                | Op::Unsqueeze { .. }
                | Op::Transpose { .. }
                | Op::Expand { .. }
                | Op::Identity => Some(v),
                Op::Neg => Some(-v),
                Op::Scale { alpha } => Some(v * *alpha as f64),
                _ => None,
            }
        }
    }
}

impl Analysis<Term> for TensorInfo {
    type Data = Data;

    fn make(egraph: &mut EG, enode: &Term, _id: Id) -> Data {
        let eg: &EG = egraph;
        let outs = infer_term(eg, enode).unwrap_or_else(|e| {
            debug_assert!(false, "untyped term {enode}: {e}");
            Vec::new()
        });
        Data {
            outs,
            konst: konst_of(eg, enode),
        }
    }

    fn merge(&mut self, a: &mut Data, b: Data) -> DidMerge {
        debug_assert!(
            a.outs == b.outs || a.outs.is_empty() || b.outs.is_empty(),
            "merged classes of different types: {:?} and {:?}",
            a.outs,
            b.outs
        );
        let mut changed_a = false;
        if a.outs.is_empty() && !b.outs.is_empty() {
            a.outs = b.outs.clone();
            changed_a = true;
        }
        if a.konst.is_none() && b.konst.is_some() {
            a.konst = b.konst;
            changed_a = true;
        }
        DidMerge(changed_a, a.konst != b.konst || a.outs != b.outs)
    }
}
