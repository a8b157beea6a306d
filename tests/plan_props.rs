//! Property tests of memory planning on random DAGs: every heuristic's plan (both orders,
//! in place or not) passes the independent verifier, its arena is at least the lower bound,
//! and executing inside it gives exactly the unplanned executor's outputs.

use std::sync::Arc;

use lowmem_ir::{DType, Graph, Op, TensorData, TensorId};
use lowmem_plan::{Claim, plan_each, verify_plan};
use lowmem_schedule::Roles;
use proptest::prelude::*;

/// A random DAG over [4, 8] f32 tensors: each node picks an op and earlier tensors.
fn random_dag(choices: &[(u8, u16, u16)], outputs: u16) -> Graph {
    let mut g = Graph::new("dag");
    let x = g.add_input("x", DType::F32, vec![4, 8]).unwrap();
    let w = g
        .add_weight(
            "w",
            vec![8, 8],
            Arc::new(TensorData::F32(
                (0..64)
                    .map(|i| ((i * 7 % 13) as f32 - 6.0) / 10.0)
                    .collect(),
            )),
        )
        .unwrap();
    let mut ts: Vec<TensorId> = vec![x];
    for (k, &(op, a, b)) in choices.iter().enumerate() {
        let a = ts[a as usize % ts.len()];
        let b = ts[b as usize % ts.len()];
        let (op, ins) = match op % 7 {
            0 => (Op::Relu, vec![a]),
            1 => (Op::Sigmoid, vec![a]),
            2 => (Op::Add, vec![a, b]),
            3 => (Op::Mul, vec![a, b]),
            4 => (Op::MatMul, vec![a, w]),
            5 => (Op::Sum, vec![a, b, a]),
            _ => (Op::Tanh, vec![a]),
        };
        let name = format!("t{k}");
        ts.push(g.add_node(format!("n{k}"), op, &ins, &[&name]).unwrap()[0]);
    }
    let n = ts.len();
    let mut outs: Vec<TensorId> = vec![ts[n - 1]];
    if n > 2 && outputs % 2 == 1 {
        outs.push(ts[1 + outputs as usize % (n - 2)]);
    }
    outs.dedup();
    g.set_outputs(outs);
    g
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_heuristic_plan_verifies_and_executes_exactly(
        choices in prop::collection::vec((0u8..7, 0u16..64, 0u16..64), 1..24),
        outputs in 0u16..64,
        in_place in any::<bool>(),
    ) {
        let g = random_dag(&choices, outputs);
        let roles = Roles::inference(&g);
        let x = TensorData::F32((0..32).map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0).collect());
        let expected = lowmem_exec::run(&g, std::slice::from_ref(&x)).unwrap();
        for p in plan_each(&g, &roles, in_place) {
            let claim = Claim { order: &p.order, tensor_offset: p.tensor_offset.as_slice(), workspace: p.workspace.as_slice(), arena_bytes: p.arena_bytes };
            prop_assert!(verify_plan(&g, &roles, &claim).is_ok(), "{}: {:?}", p.heuristics[0].0, verify_plan(&g, &roles, &claim));
            prop_assert!(p.arena_bytes >= p.lower_bound_bytes);
            let layout = lowmem_exec::Layout { order: &p.order, tensor_offset: p.tensor_offset.as_slice(), workspace: p.workspace.as_slice(), arena_bytes: p.arena_bytes };
            let (got, stats) = lowmem_exec::run_planned(&g, &layout, vec![x.clone()]).unwrap();
            prop_assert_eq!(stats.arena_bytes, p.arena_bytes);
            for (a, b) in got.iter().zip(&expected) {
                prop_assert!(a.bit_eq(b), "{}: outputs differ", p.heuristics[0].0);
            }
        }
    }
}
