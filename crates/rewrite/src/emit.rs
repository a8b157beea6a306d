//! From the saturated e-graph back to a [`Graph`].
//!
//! Names are the interface between stages, so the result keeps them: every input, weight,
//! output and `keep` tensor under its own name (an `Identity` gives a second name to a value
//! when rewriting made two kept tensors equal), other tensors under the name of a source
//! tensor of their class when there is one. Nodes come out in source order where they existed
//! (a priority topological order), new nodes right after their last input.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use egg::{Id, Language};
use lowmem_ir::{Graph, Op, TensorId};

use crate::extract::{Choice, extract_dag};
use crate::lang::{EG, Out, Term};
use crate::{RewriteError, node_cost};

pub(crate) struct Emitted {
    pub graph: Graph,
    pub tensor_map: HashMap<TensorId, TensorId>,
}

/// Unique names: reserved ones are handed out only by [`Names::exact`].
#[derive(Default)]
struct Names {
    used: HashSet<String>,
}

impl Names {
    fn claim(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut i = 1;
        while !self.used.insert(name.clone()) {
            name = format!("{base}.rw{i}");
            i += 1;
        }
        name
    }
}

pub(crate) fn emit(
    old: &Graph,
    eg: &EG,
    tensor_class: &[Option<Id>],
    node_class: &[Id],
    keep: &[TensorId],
) -> Result<Emitted, RewriteError> {
    let is_leaf = |t: TensorId| eg.analysis.leaves[t.index()].is_some();
    let class_of = |t: TensorId| tensor_class[t.index()].map(|c| eg.find(c));
    let mut g = Graph::new(old.name.clone());
    let mut tensor_map: HashMap<TensorId, TensorId> = HashMap::new();
    let bad = RewriteError::Result;

    // Every input and weight survives, even if nothing reads it any more.
    for t in old.weights() {
        let s = old.tensor(t);
        let v = s.value.clone().expect("weights have values");
        tensor_map.insert(t, g.add_weight(&s.name, s.shape.clone(), v).map_err(bad)?);
    }
    for &t in &old.inputs {
        let s = old.tensor(t);
        tensor_map.insert(
            t,
            g.add_input(&s.name, s.dtype, s.shape.clone())
                .map_err(bad)?,
        );
    }

    let mut kept: Vec<TensorId> = Vec::new();
    let mut kept_set: HashSet<TensorId> = HashSet::new();
    for &t in old.outputs.iter().chain(keep) {
        if !is_leaf(t) && kept_set.insert(t) {
            kept.push(t);
        }
    }
    let roots: Vec<Id> = kept
        .iter()
        .map(|&t| class_of(t).expect("validated"))
        .collect();
    let choice: Choice = extract_dag(eg, &roots, node_cost).map_err(|r| {
        let t = kept[roots.iter().position(|&x| x == r).unwrap_or(0)];
        RewriteError::NoTerm(old.tensor(t).name.clone())
    })?;
    let chosen = |c: Id| choice.get(eg, c);

    // Source tensors per class, in source order.
    let mut owners: HashMap<Id, Vec<TensorId>> = HashMap::new();
    for t in old.tensor_ids().filter(|&t| !is_leaf(t)) {
        if let Some(c) = class_of(t) {
            owners.entry(c).or_default().push(t);
        }
    }
    let producers = old.producers();

    // Post-order over the chosen terms (children before parents).
    let mut order: Vec<Id> = Vec::new();
    let mut state: HashMap<Id, bool> = HashMap::new();
    let mut stack: Vec<(Id, bool)> = roots.iter().rev().map(|&r| (r, false)).collect();
    while let Some((c, done)) = stack.pop() {
        if done {
            state.insert(c, true);
            order.push(c);
            continue;
        }
        if state.contains_key(&c) {
            continue;
        }
        state.insert(c, false);
        stack.push((c, true));
        for &k in chosen(c).children().iter().rev() {
            let k = eg.find(k);
            if !state.contains_key(&k) {
                stack.push((k, false));
            }
        }
    }
    let needed: HashSet<Id> = order.iter().copied().collect();

    // The class whose node defines the value of class `c` (None: a leaf).
    let emitter = |c: Id| -> Option<Id> {
        match chosen(c) {
            Term::Leaf(_) => None,
            Term::Proj(_, [t]) => Some(eg.find(*t)),
            Term::Op(..) => Some(c),
        }
    };
    let mut prio: HashMap<Id, (usize, usize)> = HashMap::new();
    let mut deps: HashMap<Id, Vec<Id>> = HashMap::new();
    for (seq, &c) in order.iter().enumerate() {
        let Term::Op(key, kids) = chosen(c) else {
            continue;
        };
        let mut ds: Vec<Id> = kids.iter().filter_map(|&k| emitter(eg.find(k))).collect();
        ds.sort_unstable();
        ds.dedup();
        let source = key.opaque.map(|i| i as usize).or_else(|| {
            owners
                .get(&c)
                .into_iter()
                .flatten()
                .filter_map(|t| producers[t.index()].map(|n| n.index()))
                .min()
        });
        let p = source.unwrap_or_else(|| ds.iter().map(|d| prio[d].0).max().unwrap_or(0));
        prio.insert(c, (p, seq));
        deps.insert(c, ds);
    }

    let mut names = Names::default();
    for t in old
        .tensor_ids()
        .filter(|&t| is_leaf(t) || kept_set.contains(&t))
    {
        names.used.insert(old.tensor(t).name.clone());
    }
    let mut node_names = Names::default();
    let mut value: HashMap<Id, TensorId> = HashMap::new();
    let mut tuple_outs: HashMap<Id, Vec<TensorId>> = HashMap::new();
    let mut kept_new: HashMap<TensorId, TensorId> = HashMap::new();

    // The source tensor whose name class c's value takes when no kept tensor claims it: the
    // one the chosen e-node itself computed in the source if any (so an untouched node keeps
    // its tensor and node names), else the first.
    let origin = |c: Id| -> Option<TensorId> {
        let own = owners.get(&c)?;
        let same = |t: &&TensorId| {
            let Some(n) = producers[t.index()] else {
                return false;
            };
            let n = old.node(n);
            let Term::Op(key, kids) = chosen(c) else {
                return false;
            };
            n.outputs.len() == 1
                && *key.op == n.op
                && key.opaque.is_none()
                && n.inputs.len() == kids.len()
                && n.inputs
                    .iter()
                    .zip(kids)
                    .all(|(&i, &k)| class_of(i) == Some(eg.find(k)))
        };
        own.iter().find(same).or(own.first()).copied()
    };
    // The name of class c's value: a kept source name first, then the origin's.
    let class_name = |c: Id, names: &mut Names, kept_first: &mut Option<TensorId>| -> String {
        let own = owners.get(&c).map_or(&[][..], |v| &v[..]);
        if let Some(&t) = own.iter().find(|t| kept_set.contains(t)) {
            *kept_first = Some(t);
            return old.tensor(t).name.clone();
        }
        match origin(c) {
            Some(t) => names.claim(&old.tensor(t).name),
            None => names.claim("rw"),
        }
    };
    // Kept source tensors of class c not yet named get an Identity of its value.
    let alias = |c: Id,
                 g: &mut Graph,
                 value: &HashMap<Id, TensorId>,
                 kept_new: &mut HashMap<TensorId, TensorId>,
                 node_names: &mut Names|
     -> Result<(), RewriteError> {
        for &t in owners.get(&c).into_iter().flatten() {
            if kept_set.contains(&t) && !kept_new.contains_key(&t) {
                let name = &old.tensor(t).name;
                let node = node_names.claim(&format!("{name}.alias"));
                let id = g
                    .add_node(&node, Op::Identity, &[value[&c]], &[name])
                    .map_err(|e| RewriteError::Rebuild {
                        node,
                        op: "Identity",
                        source: e,
                    })?[0];
                kept_new.insert(t, id);
            }
        }
        Ok(())
    };

    for &c in &order {
        if let Term::Leaf(l) = chosen(c) {
            value.insert(c, tensor_map[&l.tensor()]);
            alias(c, &mut g, &value, &mut kept_new, &mut node_names)?;
        }
    }

    // Kahn's algorithm, smallest (source position, post-order) first.
    let mut indeg: HashMap<Id, usize> = HashMap::new();
    let mut users: HashMap<Id, Vec<Id>> = HashMap::new();
    for (&c, ds) in &deps {
        indeg.insert(c, ds.len());
        for &d in ds {
            users.entry(d).or_default().push(c);
        }
    }
    let mut ready: BinaryHeap<Reverse<((usize, usize), Id)>> = indeg
        .iter()
        .filter(|&(_, &n)| n == 0)
        .map(|(&c, _)| Reverse((prio[&c], c)))
        .collect();
    while let Some(Reverse((_, c))) = ready.pop() {
        let Term::Op(key, kids) = chosen(c) else {
            unreachable!("only op classes are scheduled")
        };
        let inputs: Vec<TensorId> = kids.iter().map(|&k| value[&eg.find(k)]).collect();
        let source_node = key
            .opaque
            .map(|i| i as usize)
            .or_else(|| producers[origin(c)?.index()].map(|n| n.index()));
        let node = match source_node {
            Some(n) => node_names.claim(&old.nodes[n].name),
            None => node_names.claim("rw"),
        };
        // Output names, and the projection class each output defines.
        let mut outs: Vec<(String, Option<Id>, Option<TensorId>)> = Vec::new();
        if key.n_out == 1 {
            let mut first = None;
            outs.push((class_name(c, &mut names, &mut first), Some(c), first));
        } else {
            for k in 0..key.n_out {
                let p = eg
                    .lookup(Term::Proj(Out(k), [c]))
                    .filter(|p| needed.contains(p) && matches!(chosen(*p), Term::Proj(..)));
                let mut first = None;
                let name = match p {
                    Some(p) => class_name(p, &mut names, &mut first),
                    None => {
                        let src = key.opaque.map(|i| old.nodes[i as usize].outputs[k]);
                        names.claim(&src.map_or("rw".into(), |t| old.tensor(t).name.clone()))
                    }
                };
                outs.push((name, p, first));
            }
        }
        let out_names: Vec<&str> = outs.iter().map(|o| o.0.as_str()).collect();
        let ids = g
            .add_node(&node, (*key.op).clone(), &inputs, &out_names)
            .map_err(|e| RewriteError::Rebuild {
                node: node.clone(),
                op: key.op.name(),
                source: e,
            })?;
        for ((_, class, first), &id) in outs.iter().zip(&ids) {
            if let Some(t) = first {
                kept_new.insert(*t, id);
            }
            if let Some(p) = class {
                value.insert(*p, id);
                alias(*p, &mut g, &value, &mut kept_new, &mut node_names)?;
            }
        }
        if key.n_out > 1 {
            tuple_outs.insert(c, ids);
        }
        for &u in users.get(&c).into_iter().flatten() {
            let n = indeg.get_mut(&u).expect("every user has an in-degree");
            *n -= 1;
            if *n == 0 {
                ready.push(Reverse((prio[&u], u)));
            }
        }
    }

    g.set_outputs(
        old.outputs
            .iter()
            .map(|t| {
                tensor_map
                    .get(t)
                    .or(kept_new.get(t))
                    .copied()
                    .expect("outputs are roots")
            })
            .collect(),
    );
    for t in old.tensor_ids().filter(|&t| !is_leaf(t)) {
        let direct = kept_new
            .get(&t)
            .or_else(|| class_of(t).and_then(|c| value.get(&c)))
            .copied();
        let via_tuple = || {
            let n = producers[t.index()]?.index();
            let k = old.nodes[n].outputs.iter().position(|&o| o == t)?;
            tuple_outs.get(&eg.find(node_class[n]))?.get(k).copied()
        };
        if let Some(id) = direct.or_else(via_tuple) {
            tensor_map.insert(t, id);
        }
    }
    Ok(Emitted {
        graph: g,
        tensor_map,
    })
}
