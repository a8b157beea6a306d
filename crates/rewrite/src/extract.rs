//! Extraction by DAG cost.
//!
//! egg's `Extractor` minimises tree cost: a subterm used by two parents is paid twice, so it
//! will pick a private copy of a cheap computation over reusing a shared one. A training graph
//! is all sharing (the backward pass reads the forward activations), so the cost here is the
//! sum over the *distinct* chosen e-nodes.
//!
//! Minimum DAG-cost extraction is NP-hard; this is a heuristic with these guarantees:
//! - the choice is acyclic and covers every root (or an error names the root);
//! - it starts from the tree-cost optimum (a fixpoint, as egg's `Extractor`);
//! - it then switches single e-classes to other e-nodes while that strictly lowers the DAG
//!   cost, so the result is never worse than the tree-cost choice measured as a DAG, and is a
//!   local optimum under single-class switches (within [`MAX_PASSES`] passes).

use std::collections::{HashMap, HashSet};

use egg::{Analysis, EGraph, Id, Language};

/// Improvement passes over the reachable classes; each pass that improves nothing ends it.
pub const MAX_PASSES: usize = 4;

/// The chosen e-node (index into the class's `nodes`) per canonical class id.
#[derive(Clone, Debug)]
pub struct Choice {
    pub node: HashMap<Id, usize>,
    /// Sum of the costs of the distinct chosen e-nodes reachable from the roots.
    pub dag_cost: u64,
}

impl Choice {
    /// The chosen e-node of `class`.
    pub fn get<'a, L: Language, N: Analysis<L>>(&self, eg: &'a EGraph<L, N>, class: Id) -> &'a L {
        let c = eg.find(class);
        &eg[c].nodes[self.node[&c]]
    }
}

/// Chooses one e-node per class reachable from `roots`, minimising the summed `cost` of the
/// distinct chosen e-nodes (see the module documentation). `cost(egraph, class, node)` is
/// taken as at least 1 so that every cycle has positive cost. Returns the first root with no
/// acyclic term as the error.
pub fn extract_dag<L, N, F>(eg: &EGraph<L, N>, roots: &[Id], cost: F) -> Result<Choice, Id>
where
    L: Language,
    N: Analysis<L>,
    F: Fn(&EGraph<L, N>, Id, &L) -> u64,
{
    let roots: Vec<Id> = roots.iter().map(|&r| eg.find(r)).collect();
    let mut classes: Vec<Id> = eg.classes().map(|c| c.id).collect();
    classes.sort_unstable();
    let costs: HashMap<Id, Vec<u64>> = classes
        .iter()
        .map(|&c| {
            let v = eg[c].nodes.iter().map(|n| cost(eg, c, n).max(1)).collect();
            (c, v)
        })
        .collect();

    // Tree-cost fixpoint. f64: tree costs grow exponentially with sharing depth.
    let mut best: HashMap<Id, (f64, usize)> = HashMap::new();
    loop {
        let mut changed = false;
        for &c in &classes {
            for (i, n) in eg[c].nodes.iter().enumerate() {
                let kids: Option<f64> = n
                    .children()
                    .iter()
                    .map(|&k| best.get(&eg.find(k)).map(|b| b.0))
                    .sum();
                let Some(kids) = kids else { continue };
                let total = costs[&c][i] as f64 + kids;
                if best.get(&c).is_none_or(|b| total < b.0) {
                    best.insert(c, (total, i));
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    if let Some(&r) = roots.iter().find(|r| !best.contains_key(r)) {
        return Err(r);
    }
    let mut choice: HashMap<Id, usize> = best.iter().map(|(&c, &(_, i))| (c, i)).collect();
    let extractable = |n: &L| n.children().iter().all(|&k| best.contains_key(&eg.find(k)));

    let mut current = dag_cost(eg, &roots, &choice, &costs).ok_or(roots[0])?;
    for _ in 0..MAX_PASSES {
        let mut improved = false;
        let mut reachable: Vec<Id> = reach(eg, &roots, &choice).into_iter().collect();
        reachable.sort_unstable();
        for c in reachable {
            let nodes = &eg[c].nodes;
            if nodes.len() < 2 {
                continue;
            }
            for (i, n) in nodes.iter().enumerate() {
                let was = choice[&c];
                if i == was || !extractable(n) || reaches(eg, n.children(), c, &choice) {
                    continue;
                }
                choice.insert(c, i);
                match dag_cost(eg, &roots, &choice, &costs) {
                    Some(v) if v < current => {
                        current = v;
                        improved = true;
                    }
                    _ => {
                        choice.insert(c, was);
                    }
                }
            }
        }
        if !improved {
            break;
        }
    }
    Ok(Choice {
        node: choice,
        dag_cost: current,
    })
}

/// The classes reachable from `roots` through chosen e-nodes.
fn reach<L: Language, N: Analysis<L>>(
    eg: &EGraph<L, N>,
    roots: &[Id],
    choice: &HashMap<Id, usize>,
) -> HashSet<Id> {
    let mut seen: HashSet<Id> = HashSet::new();
    let mut stack: Vec<Id> = roots.to_vec();
    while let Some(c) = stack.pop() {
        if !seen.insert(c) {
            continue;
        }
        let n = &eg[c].nodes[choice[&c]];
        stack.extend(n.children().iter().map(|&k| eg.find(k)));
    }
    seen
}

/// Whether `target` is reachable from `from` through chosen e-nodes (choosing a node with
/// such a child would close a cycle).
fn reaches<L: Language, N: Analysis<L>>(
    eg: &EGraph<L, N>,
    from: &[Id],
    target: Id,
    choice: &HashMap<Id, usize>,
) -> bool {
    let from: Vec<Id> = from.iter().map(|&k| eg.find(k)).collect();
    reach(eg, &from, choice).contains(&target)
}

/// The DAG cost of `choice`, or `None` if it is cyclic.
fn dag_cost<L: Language, N: Analysis<L>>(
    eg: &EGraph<L, N>,
    roots: &[Id],
    choice: &HashMap<Id, usize>,
    costs: &HashMap<Id, Vec<u64>>,
) -> Option<u64> {
    // Iterative DFS with colours: grey on the stack, black done.
    #[derive(Clone, Copy, PartialEq)]
    enum Colour {
        Grey,
        Black,
    }
    let mut colour: HashMap<Id, Colour> = HashMap::new();
    let mut total = 0u64;
    for &r in roots {
        let mut stack: Vec<(Id, bool)> = vec![(r, false)];
        while let Some((c, done)) = stack.pop() {
            if done {
                colour.insert(c, Colour::Black);
                continue;
            }
            match colour.get(&c) {
                Some(Colour::Black) => continue,
                Some(Colour::Grey) => return None,
                None => {}
            }
            colour.insert(c, Colour::Grey);
            let i = choice[&c];
            total = total.saturating_add(costs[&c][i]);
            stack.push((c, true));
            for &k in eg[c].nodes[i].children() {
                let k = eg.find(k);
                match colour.get(&k) {
                    Some(Colour::Grey) => return None,
                    Some(Colour::Black) => {}
                    None => stack.push((k, false)),
                }
            }
        }
    }
    Some(total)
}
