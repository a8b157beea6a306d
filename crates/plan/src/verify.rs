//! An independent checker of memory plans (in the spirit of regalloc2's checker): it
//! re-derives every tensor's live range from the graph and the order alone, and proves that
//! no two buffers live at the same program point share a byte, that every read comes after
//! its producer's write, and that persistent tensors stay out of the arena. Given SSA values
//! and one writer per buffer, disjointness of simultaneously live buffers is exactly what
//! makes every read see its producer's data.
//!
//! The only fact taken from elsewhere is which kernels may write their output over an input
//! (`lowmem_schedule::in_place_capable`); such a pair is accepted only at identical offsets.

use std::collections::BTreeMap;

use lowmem_ir::{Graph, NodeId, SecondaryMap, TensorId};
use lowmem_schedule::{LiveRange, ProgPoint, Roles, StepId, in_place_capable, steps};

use crate::error::{Held, Occupant, VerifyError};
use crate::plan::ALIGN;

/// A plan as claimed by a planner.
pub struct Claim<'a> {
    pub order: &'a [NodeId],
    pub tensor_offset: &'a [Option<u64>],
    pub workspace: &'a [Option<(u64, u64)>],
    pub arena_bytes: u64,
}

pub fn verify_plan(g: &Graph, roles: &Roles, c: &Claim) -> Result<(), VerifyError> {
    let n = g.nodes.len();
    if c.order.len() != n || c.tensor_offset.len() != g.tensors.len() {
        return Err(VerifyError::Coverage {
            order: c.order.len(),
            nodes: n,
            offsets: c.tensor_offset.len(),
            tensors: g.tensors.len(),
        });
    }
    let mut step_of: SecondaryMap<NodeId, Option<StepId>> = SecondaryMap::with_len(n);
    for (s, node) in steps(c.order) {
        if node.index() >= n || step_of[node].is_some() {
            return Err(VerifyError::Order(node));
        }
        step_of[node] = Some(s);
    }
    // Definitions and reads, re-derived.
    let nt = g.tensors.len();
    let mut def: SecondaryMap<TensorId, Option<StepId>> = SecondaryMap::with_len(nt);
    for (s, node) in steps(c.order) {
        for &o in &g.node(node).outputs {
            def[o] = Some(s);
        }
    }
    let mut last_read: SecondaryMap<TensorId, Option<StepId>> = SecondaryMap::with_len(nt);
    for (s, node) in steps(c.order) {
        for &i in &g.node(node).inputs {
            let t = g.tensor(i);
            let external = t.value.is_some() || g.inputs.contains(&i);
            match def[i] {
                Some(d) if d < s => {}
                None if external => {}
                _ => {
                    return Err(VerifyError::ReadBeforeWrite {
                        node: g.node(node).name.clone(),
                        step: s,
                        tensor: i,
                        name: t.name.clone(),
                    });
                }
            }
            last_read[i] = Some(last_read[i].map_or(s, |r| r.max(s)));
        }
    }
    // Placement rules per tensor.
    let last = ProgPoint(2 * n as u32);
    let mut intervals: Vec<(LiveRange, u64, u64, Occupant)> = Vec::new(); // (live, offset, bytes, what)
    for t in g.tensor_ids() {
        let tt = g.tensor(t);
        let persistent = roles.kind[t].persistent() || roles.state_alias[t].is_some();
        match (persistent, c.tensor_offset[t.index()]) {
            (true, Some(o)) => {
                return Err(VerifyError::Persistent {
                    kind: roles.kind[t],
                    tensor: t,
                    name: tt.name.clone(),
                    offset: o,
                });
            }
            (true, None) => continue,
            (false, None) if def[t].is_some() => {
                return Err(VerifyError::NoOffset {
                    tensor: t,
                    name: tt.name.clone(),
                });
            }
            (false, None) => continue,
            (false, Some(o)) => {
                let bytes = tt.bytes() as u64;
                if o % ALIGN != 0 {
                    return Err(VerifyError::Misaligned {
                        tensor: t,
                        name: tt.name.clone(),
                        offset: o,
                    });
                }
                if o.checked_add(bytes).is_none_or(|e| e > c.arena_bytes) {
                    return Err(VerifyError::PastArena {
                        tensor: t,
                        name: tt.name.clone(),
                        offset: o,
                        bytes,
                        arena: c.arena_bytes,
                    });
                }
                let d = def[t].ok_or_else(|| VerifyError::NoProducer {
                    tensor: t,
                    name: tt.name.clone(),
                })?;
                let mut end = if g.outputs.contains(&t) {
                    last
                } else {
                    last_read[t].map_or(d.after(), StepId::after)
                };
                // An input overwritten in place by its last reader ends at that read.
                if let Some(r) = last_read[t].filter(|_| !g.outputs.contains(&t)) {
                    let node = g.node(c.order[r.index()]);
                    let overwritten = node.outputs.first().is_some_and(|&out| {
                        c.tensor_offset[out.index()] == Some(o)
                            && g.tensor(out).bytes() as u64 == bytes
                    });
                    if overwritten
                        && node
                            .inputs
                            .iter()
                            .enumerate()
                            .any(|(k, &i)| i == t && in_place_capable(g, node, k))
                    {
                        end = r.write();
                    }
                }
                intervals.push((
                    LiveRange::new(d.write(), end.max(d.after())),
                    o,
                    bytes,
                    Occupant::Tensor {
                        tensor: t,
                        name: tt.name.clone(),
                    },
                ));
            }
        }
    }
    for (s, w) in c.workspace.iter().enumerate() {
        let s = StepId::new(s);
        if let Some((o, bytes)) = *w {
            if o % ALIGN != 0 || o.checked_add(bytes).is_none_or(|e| e > c.arena_bytes) {
                return Err(VerifyError::Workspace {
                    step: s,
                    offset: o,
                    bytes,
                    arena: c.arena_bytes,
                });
            }
            intervals.push((s.span(), o, bytes, Occupant::Workspace { step: s }));
        }
    }
    // Sweep over time, keeping the live buffers' byte ranges in an ordered map: live ranges
    // must be disjoint, so each arrival is checked against its neighbours only.
    intervals.sort_by_key(|iv| (iv.0.start, iv.1));
    let mut live: BTreeMap<u64, (u64, usize)> = BTreeMap::new(); // offset -> (end byte, interval)
    let mut heap: std::collections::BinaryHeap<std::cmp::Reverse<(ProgPoint, usize)>> =
        std::collections::BinaryHeap::new();
    for (k, iv) in intervals.iter().enumerate() {
        while let Some(&std::cmp::Reverse((end, j))) = heap.peek() {
            if end > iv.0.start {
                break;
            }
            heap.pop();
            live.remove(&intervals[j].1);
        }
        let (lo, hi) = (iv.1, iv.1 + iv.2);
        if iv.2 == 0 {
            continue;
        }
        let clash = live
            .range(..hi)
            .next_back()
            .filter(|(_, (e, _))| *e > lo)
            .or_else(|| live.range(lo..hi).next());
        if let Some((&o, &(e, j))) = clash {
            let other = &intervals[j];
            return Err(VerifyError::Overlap(
                Box::new(Held {
                    what: iv.3.clone(),
                    bytes: (lo, hi),
                    live: iv.0,
                }),
                Box::new(Held {
                    what: other.3.clone(),
                    bytes: (o, e),
                    live: other.0,
                }),
            ));
        }
        live.insert(lo, (hi, k));
        heap.push(std::cmp::Reverse((iv.0.end, k)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use lowmem_ir::{DType, Graph, Op, TensorData};
    use lowmem_schedule::Roles;

    use super::*;
    use crate::{PlanOptions, plan};

    /// x -> mm(w) -> a -> relu -> b -> mm(w) -> c
    fn chain() -> Graph {
        let mut g = Graph::new("c");
        let x = g.add_input("x", DType::F32, vec![4, 64]).unwrap();
        let w = g
            .add_weight(
                "w",
                vec![64, 64],
                Arc::new(TensorData::F32(vec![0.0; 4096])),
            )
            .unwrap();
        let a = g.add_node("mm", Op::MatMul, &[x, w], &["a"]).unwrap()[0];
        let b = g.add_node("relu", Op::Relu, &[a], &["b"]).unwrap()[0];
        let c = g.add_node("mm2", Op::MatMul, &[b, w], &["c"]).unwrap()[0];
        g.set_outputs(vec![c]);
        g
    }

    fn claim_ok(
        g: &Graph,
        roles: &Roles,
        order: &[NodeId],
        offs: &[Option<u64>],
        arena: u64,
    ) -> Result<(), String> {
        check(g, roles, order, offs, arena).map_err(|e| e.to_string())
    }

    fn check(
        g: &Graph,
        roles: &Roles,
        order: &[NodeId],
        offs: &[Option<u64>],
        arena: u64,
    ) -> Result<(), VerifyError> {
        verify_plan(
            g,
            roles,
            &Claim {
                order,
                tensor_offset: offs,
                workspace: &vec![None; order.len()],
                arena_bytes: arena,
            },
        )
    }

    #[test]
    fn planner_output_verifies_and_relu_overwrites_its_input() {
        let g = chain();
        let roles = Roles::inference(&g);
        let p = plan(&g, &roles, &PlanOptions::default());
        verify_plan(
            &g,
            &roles,
            &Claim {
                order: &p.order,
                tensor_offset: p.tensor_offset.as_slice(),
                workspace: p.workspace.as_slice(),
                arena_bytes: p.arena_bytes,
            },
        )
        .unwrap();
        let id = |n: &str| g.tensor_id(n).unwrap();
        assert_eq!(p.tensor_offset[id("a")], p.tensor_offset[id("b")]);
        assert_eq!(p.arena_bytes, p.lower_bound_bytes);
    }

    #[test]
    fn rejects_overlap_read_before_write_and_weights_in_the_arena() {
        let g = chain();
        let roles = Roles::inference(&g);
        let order: Vec<NodeId> = g.node_ids().collect();
        let id = |n: &str| g.tensor_id(n).unwrap().index();
        let mut offs = vec![None; g.tensors.len()];
        offs[id("a")] = Some(0);
        offs[id("b")] = Some(1024);
        offs[id("c")] = Some(0);
        claim_ok(&g, &roles, &order, &offs, 2048).unwrap();
        // b is still being read by mm2 while mm2 writes c: they may not share bytes.
        offs[id("c")] = Some(1024);
        let e = claim_ok(&g, &roles, &order, &offs, 2048).unwrap_err();
        assert!(
            e.contains("'c'") && e.contains("'b'") && e.contains("overlaps"),
            "{e}"
        );
        match check(&g, &roles, &order, &offs, 2048) {
            Err(VerifyError::Overlap(a, b)) => {
                let names = [&a.what, &b.what].map(|w| match w {
                    Occupant::Tensor { tensor, .. } => Some(*tensor),
                    Occupant::Workspace { .. } => None,
                });
                assert!(names.contains(&g.tensor_id("b")) && names.contains(&g.tensor_id("c")));
                assert_eq!(a.bytes, (1024, 2048));
            }
            other => panic!("expected an overlap, got {other:?}"),
        }
        // Partial overlap with an in-place capable reader is still an overlap.
        offs[id("c")] = Some(0);
        offs[id("b")] = Some(256);
        let e = claim_ok(&g, &roles, &order, &offs, 2048).unwrap_err();
        assert!(e.contains("overlaps"), "{e}");
        offs[id("b")] = Some(1024);
        // Reading before writing.
        let backwards: Vec<NodeId> = order.iter().rev().copied().collect();
        let e = claim_ok(&g, &roles, &backwards, &offs, 2048).unwrap_err();
        assert!(e.contains("read before write"), "{e}");
        // A weight in the arena.
        offs[id("w")] = Some(1536);
        let e = claim_ok(&g, &roles, &order, &offs, 2048 + 16384).unwrap_err();
        assert!(e.contains("'w'") && e.contains("outside"), "{e}");
        offs[id("w")] = None;
        // Misaligned and out-of-bounds offsets.
        offs[id("a")] = Some(8);
        assert!(
            claim_ok(&g, &roles, &order, &offs, 4096)
                .unwrap_err()
                .contains("aligned")
        );
        offs[id("a")] = Some(0);
        assert!(
            claim_ok(&g, &roles, &order, &offs, 1024)
                .unwrap_err()
                .contains("past the arena")
        );
    }
}
