//! The clean-up rules.
//!
//! Each rule is a function from one e-node (and its class) to the terms it equals. The
//! payload arithmetic these rules need (composing permutations, resolving reshape targets,
//! multiplying scales, checking that broadcasting leaves a shape alone) is out of reach of
//! egg's pattern language, so a [`Rule`] is both the searcher and the applier of an egg
//! [`Rewrite`]: the search reports classes where the function finds something, the apply
//! re-runs it and adds the results.
//!
//! Every result is typed with [`Op::infer`] before it is added and must have its class's dtype
//! and shape, so a rule with a wrong side condition adds nothing rather than corrupting the
//! e-graph. Floating-point note: folding scales reassociates products (`a * (b * x)` becomes
//! `(a * b) * x`), equal up to rounding.

use egg::{Applier, Id, PatternAst, Rewrite, SearchMatches, Searcher, Subst, Symbol, Var};
use lowmem_ir::{GemmAttrs, Op};

use crate::lang::{EG, OpKey, Outs, Term, infer_term};

/// What a matched e-node equals.
#[derive(Clone, Debug)]
pub enum Rhs {
    /// An existing class (`Identity(x) = x`).
    Class(Id),
    /// A new term over existing classes.
    Node(Term),
    /// `outer` with child `slot` replaced by the class of the new term `inner`.
    Nest {
        inner: Term,
        outer: Term,
        slot: usize,
    },
}

type Find = fn(&EG, Id, &Term) -> Vec<Rhs>;

/// A named rewrite over payloads: see the module documentation.
#[derive(Clone, Copy)]
pub struct Rule {
    pub name: &'static str,
    pub doc: &'static str,
    find: Find,
}

/// Every rule, in the order the report lists them.
pub const RULES: &[Rule] = &[
    Rule {
        name: "transpose-transpose",
        doc: "Transpose(Transpose(x, q), p) = Transpose(x, q∘p); an identity permutation is x",
        find: transpose,
    },
    Rule {
        name: "reshape-chain",
        doc: "a chain of Reshape/Flatten/Squeeze/Unsqueeze is one Reshape; to x's own shape it is x",
        find: reshape_chain,
    },
    Rule {
        name: "identity",
        doc: "Identity(x) = x",
        find: identity,
    },
    Rule {
        name: "mul-ones",
        doc: "Mul(x, ones) = x when broadcasting keeps x's shape",
        find: mul_ones,
    },
    Rule {
        name: "add-zeros",
        doc: "Add(x, zeros) = Sub(x, zeros) = x when broadcasting keeps x's shape",
        find: add_zeros,
    },
    Rule {
        name: "scale-one",
        doc: "Scale{1}(x) = x",
        find: scale_one,
    },
    Rule {
        name: "neg-neg",
        doc: "Neg(Neg(x)) = x",
        find: neg_neg,
    },
    Rule {
        name: "scale-scale",
        doc: "Scale{a}(Scale{b}(x)) = Scale{ab}(x); Neg counts as Scale{-1}",
        find: scale_scale,
    },
    Rule {
        name: "scale-matmul",
        doc: "MatMul(Scale{s}(a), b) = Scale{s}(MatMul(a, b)) = MatMul(a, Scale{s}(b)) (either operand); 2-D: Gemm{alpha: s}(a, b)",
        find: scale_matmul,
    },
    Rule {
        name: "scale-gemm",
        doc: "Gemm{alpha}(Scale{s}(a), b, c) = Gemm{alpha s}(a, b, c); Scale{s}(Gemm{alpha, beta}) = Gemm{alpha s, beta s}",
        find: scale_gemm,
    },
];

impl Rule {
    pub fn rewrite(self) -> Rewrite<Term, crate::lang::TensorInfo> {
        Rewrite::new(self.name, self, self).expect("rules bind no variables")
    }

    /// Whether the rule finds anything to rewrite `node` (of class `class`) to.
    pub fn matches(&self, eg: &EG, class: Id, node: &Term) -> bool {
        !self.results(eg, class, node).is_empty()
    }

    /// What `node` of class `class` equals (`build` types and checks each result).
    fn results(&self, eg: &EG, class: Id, node: &Term) -> Vec<Rhs> {
        (self.find)(eg, class, node)
    }
}

impl Searcher<Term, crate::lang::TensorInfo> for Rule {
    fn search_eclass_with_limit(
        &self,
        eg: &EG,
        eclass: Id,
        limit: usize,
    ) -> Option<SearchMatches<'_, Term>> {
        let hit = limit > 0
            && eg[eclass]
                .nodes
                .iter()
                .any(|n| !self.results(eg, eclass, n).is_empty());
        // One empty substitution per class: the applier rewrites every matching node of it.
        hit.then(|| SearchMatches {
            eclass,
            substs: vec![Subst::default()],
            ast: None,
        })
    }

    fn vars(&self) -> Vec<Var> {
        Vec::new()
    }
}

impl Applier<Term, crate::lang::TensorInfo> for Rule {
    fn apply_one(
        &self,
        eg: &mut EG,
        eclass: Id,
        _subst: &Subst,
        _ast: Option<&PatternAst<Term>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        let eclass = eg.find(eclass);
        let nodes = eg[eclass].nodes.clone();
        let want = eg[eclass].data.outs.clone();
        let mut changed = Vec::new();
        for n in &nodes {
            for rhs in self.results(eg, eclass, n) {
                if let Some(id) = build(eg, rhs, &want)
                    && eg.union(eclass, id)
                {
                    changed.push(id);
                }
            }
        }
        changed
    }
}

/// Adds `rhs` if it types to `want`.
fn build(eg: &mut EG, rhs: Rhs, want: &Outs) -> Option<Id> {
    let typed = |eg: &EG, t: &Term| infer_term(eg, t).ok();
    match rhs {
        Rhs::Class(id) => (&eg[id].data.outs == want).then_some(id),
        Rhs::Node(t) => (typed(eg, &t).as_ref() == Some(want)).then(|| eg.add(t)),
        Rhs::Nest {
            inner,
            mut outer,
            slot,
        } => {
            typed(eg, &inner)?;
            let inner = eg.add(inner);
            outer.children_mut_slot(slot, inner);
            (typed(eg, &outer).as_ref() == Some(want)).then(|| eg.add(outer))
        }
    }
}

impl Term {
    fn children_mut_slot(&mut self, slot: usize, id: Id) {
        if let Term::Op(_, kids) = self {
            kids[slot] = id;
        }
    }
}

/// The op and children of a node rules may rewrite.
fn op_of(t: &Term) -> Option<(&Op, &[Id])> {
    match t {
        Term::Op(key, kids) => Some((key.transparent()?, kids)),
        _ => None,
    }
}

fn node(op: Op, kids: Vec<Id>) -> Term {
    Term::Op(OpKey::new(op), kids)
}

fn shape(eg: &EG, id: Id) -> &[usize] {
    eg[id].data.outs.first().map_or(&[], |o| &o.1[..])
}

/// The nodes of class `id` that are `Op`s rules may rewrite.
fn ops_in(eg: &EG, id: Id) -> impl Iterator<Item = (&Op, &[Id])> {
    eg[id].nodes.iter().filter_map(op_of)
}

fn resolve_perm(perm: &Option<Vec<usize>>, rank: usize) -> Vec<usize> {
    perm.clone().unwrap_or_else(|| (0..rank).rev().collect())
}

fn is_identity(p: &[usize]) -> bool {
    p.iter().enumerate().all(|(i, &j)| i == j)
}

fn transpose(eg: &EG, _class: Id, t: &Term) -> Vec<Rhs> {
    let Some((Op::Transpose { perm }, &[y])) = op_of(t) else {
        return Vec::new();
    };
    let rank = shape(eg, y).len();
    let p = resolve_perm(perm, rank);
    let mut out = Vec::new();
    if is_identity(&p) {
        out.push(Rhs::Class(y));
    }
    for (op, kids) in ops_in(eg, y) {
        if let (Op::Transpose { perm: q }, &[x]) = (op, kids) {
            // Output axis i of the outer transpose is axis p[i] of y, which is axis q[p[i]] of x.
            let q = resolve_perm(q, rank);
            let r: Vec<usize> = p.iter().map(|&i| q[i]).collect();
            out.push(if is_identity(&r) {
                Rhs::Class(x)
            } else {
                Rhs::Node(node(Op::Transpose { perm: Some(r) }, vec![x]))
            });
        }
    }
    out
}

/// Ops that reinterpret row-major data under a new shape without moving it.
fn is_reshape_like(op: &Op) -> bool {
    matches!(
        op,
        Op::Reshape { .. } | Op::Flatten { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. }
    )
}

fn reshape_to(target: &[usize], x: Id) -> Term {
    // Resolved dimensions with `allowzero`: a 0 is a real empty dimension, never "copy".
    node(
        Op::Reshape {
            shape: target.iter().map(|&d| d as i64).collect(),
            allowzero: true,
        },
        vec![x],
    )
}

fn reshape_chain(eg: &EG, class: Id, t: &Term) -> Vec<Rhs> {
    let Some((op, &[y])) = op_of(t) else {
        return Vec::new();
    };
    if !is_reshape_like(op) {
        return Vec::new();
    }
    let target = shape(eg, class);
    let mut out = Vec::new();
    if shape(eg, y) == target {
        out.push(Rhs::Class(y));
    }
    for (op, kids) in ops_in(eg, y) {
        if let &[x] = kids
            && is_reshape_like(op)
        {
            out.push(if shape(eg, x) == target {
                Rhs::Class(x)
            } else {
                Rhs::Node(reshape_to(target, x))
            });
        }
    }
    out
}

fn identity(_eg: &EG, _class: Id, t: &Term) -> Vec<Rhs> {
    match op_of(t) {
        Some((Op::Identity, &[x])) => vec![Rhs::Class(x)],
        _ => Vec::new(),
    }
}

/// `x` if `c` is the uniform constant `v` (the caller's rule; `build` checks that the
/// broadcast result keeps x's shape and dtype).
fn drop_const(eg: &EG, x: Id, c: Id, v: f64) -> Option<Rhs> {
    (eg[c].data.konst == Some(v)).then_some(Rhs::Class(x))
}

fn mul_ones(eg: &EG, _class: Id, t: &Term) -> Vec<Rhs> {
    match op_of(t) {
        Some((Op::Mul, &[a, b])) => [(a, b), (b, a)]
            .into_iter()
            .filter_map(|(x, c)| drop_const(eg, x, c, 1.0))
            .collect(),
        _ => Vec::new(),
    }
}

fn add_zeros(eg: &EG, _class: Id, t: &Term) -> Vec<Rhs> {
    match op_of(t) {
        Some((Op::Add, &[a, b])) => [(a, b), (b, a)]
            .into_iter()
            .filter_map(|(x, c)| drop_const(eg, x, c, 0.0))
            .collect(),
        Some((Op::Sub, &[a, b])) => drop_const(eg, a, b, 0.0).into_iter().collect(),
        _ => Vec::new(),
    }
}

fn scale_one(_eg: &EG, _class: Id, t: &Term) -> Vec<Rhs> {
    match op_of(t) {
        Some((Op::Scale { alpha }, &[x])) if *alpha == 1.0 => vec![Rhs::Class(x)],
        _ => Vec::new(),
    }
}

fn neg_neg(eg: &EG, _class: Id, t: &Term) -> Vec<Rhs> {
    let Some((Op::Neg, &[y])) = op_of(t) else {
        return Vec::new();
    };
    ops_in(eg, y)
        .filter_map(|(op, kids)| match (op, kids) {
            (Op::Neg, &[x]) => Some(Rhs::Class(x)),
            _ => None,
        })
        .collect()
}

/// The factor of a Scale or Neg node, with its operand.
fn as_scale(op: &Op, kids: &[Id]) -> Option<(f32, Id)> {
    match (op, kids) {
        (Op::Scale { alpha }, &[x]) => Some((*alpha, x)),
        (Op::Neg, &[x]) => Some((-1.0, x)),
        _ => None,
    }
}

fn scale_scale(eg: &EG, _class: Id, t: &Term) -> Vec<Rhs> {
    let Some((outer, &[y])) = op_of(t) else {
        return Vec::new();
    };
    let Some((a, _)) = as_scale(outer, &[y]) else {
        return Vec::new();
    };
    ops_in(eg, y)
        // Neg(Neg(x)) is neg-neg's.
        .filter(|(inner, _)| !matches!((outer, inner), (Op::Neg, Op::Neg)))
        .filter_map(|(op, kids)| as_scale(op, kids))
        .map(|(b, x)| Rhs::Node(node(Op::Scale { alpha: a * b }, vec![x])))
        .collect()
}

fn scale_matmul(eg: &EG, _class: Id, t: &Term) -> Vec<Rhs> {
    let Some((Op::MatMul, &[a, b])) = op_of(t) else {
        return Vec::new();
    };
    let two_d = shape(eg, a).len() == 2 && shape(eg, b).len() == 2;
    let mut out = Vec::new();
    for (i, operand) in [a, b].into_iter().enumerate() {
        let other = [a, b][1 - i];
        for (op, kids) in ops_in(eg, operand) {
            let (Op::Scale { alpha: s }, &[u]) = (op, kids) else {
                continue;
            };
            let mut plain = vec![a, b];
            plain[i] = u;
            // Scale on the output.
            out.push(Rhs::Nest {
                inner: node(Op::MatMul, plain.clone()),
                outer: node(Op::Scale { alpha: *s }, vec![Id::from(0)]),
                slot: 0,
            });
            // Scale on the other operand; extraction keeps whichever side is cheaper.
            out.push(Rhs::Nest {
                inner: node(Op::Scale { alpha: *s }, vec![other]),
                outer: node(Op::MatMul, plain.clone()),
                slot: 1 - i,
            });
            if two_d {
                out.push(Rhs::Node(node(
                    Op::Gemm(GemmAttrs {
                        alpha: *s,
                        beta: 0.0,
                        trans_a: false,
                        trans_b: false,
                        activation: None,
                    }),
                    plain,
                )));
            }
        }
    }
    out
}

fn scale_gemm(eg: &EG, _class: Id, t: &Term) -> Vec<Rhs> {
    let mut out = Vec::new();
    match op_of(t) {
        Some((Op::Gemm(g), kids)) => {
            for i in 0..2 {
                for (op, ks) in ops_in(eg, kids[i]) {
                    if let (Op::Scale { alpha: s }, &[u]) = (op, ks) {
                        let mut plain = kids.to_vec();
                        plain[i] = u;
                        let attrs = GemmAttrs {
                            alpha: g.alpha * s,
                            ..g.clone()
                        };
                        out.push(Rhs::Node(node(Op::Gemm(attrs), plain)));
                    }
                }
            }
        }
        Some((Op::Scale { alpha: s }, &[y])) => {
            for (op, kids) in ops_in(eg, y) {
                if let Op::Gemm(g) = op {
                    let attrs = GemmAttrs {
                        alpha: g.alpha * s,
                        beta: g.beta * s,
                        ..g.clone()
                    };
                    out.push(Rhs::Node(node(Op::Gemm(attrs), kids.to_vec())));
                }
            }
        }
        _ => {}
    }
    out
}
