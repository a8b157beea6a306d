//! Planning time on a synthetic 100,000-node graph (residual chains with skips of varying
//! length). Run in release: `cargo test --release -p lowmem-plan --test scale -- --ignored
//! --nocapture`. Prints the time; asserts only correctness.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lowmem_ir::{DType, Graph, Op, TensorData};
use lowmem_plan::{Claim, PlanOptions, plan, verify_plan};
use lowmem_schedule::Roles;

fn synthetic(n: usize) -> Graph {
    let mut g = Graph::new("synthetic");
    let x = g.add_input("x", DType::F32, vec![16, 64]).unwrap();
    let _ = g
        .add_weight("unused", vec![1], Arc::new(TensorData::F32(vec![0.0])))
        .unwrap();
    let mut ts = vec![x];
    for i in 0..n {
        let a = ts[ts.len() - 1];
        // Skips of 2..=40 steps back, varying sizes through Concat-free elementwise ops.
        let skip = ts[ts.len().saturating_sub(2 + (i * 7919) % 39)];
        let (op, ins) = if i % 3 == 0 {
            (Op::Add, vec![a, skip])
        } else if i % 3 == 1 {
            (Op::Relu, vec![a])
        } else {
            (Op::Mul, vec![a, skip])
        };
        ts.push(
            g.add_node(format!("n{i}"), op, &ins, &[&format!("t{i}")])
                .unwrap()[0],
        );
    }
    g.set_outputs(vec![*ts.last().unwrap()]);
    g
}

#[test]
#[ignore]
fn plans_100k_nodes() {
    let g = synthetic(100_000);
    let roles = Roles::inference(&g);
    let t = Instant::now();
    let p = plan(
        &g,
        &roles,
        &PlanOptions {
            in_place: true,
            search_time: Duration::ZERO,
            fixed_order: false,
        },
    );
    let took = t.elapsed();
    println!(
        "100k nodes: planned in {:.3} s; arena {} lower bound {} ({})",
        took.as_secs_f64(),
        p.arena_bytes,
        p.lower_bound_bytes,
        p.planner
    );
    let t = Instant::now();
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
    println!("verified in {:.3} s", t.elapsed().as_secs_f64());
}

#[test]
#[ignore]
fn where_the_time_goes() {
    use lowmem_plan::{Buffer, best_fit_heap, greedy_by_breadth, greedy_by_size, lower_bound};
    use lowmem_schedule::{Liveness, memory_aware_order, program_order};
    let g = synthetic(100_000);
    let roles = Roles::inference(&g);
    let t = Instant::now();
    let o1 = program_order(&g);
    println!("program order {:.3}", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let _o2 = memory_aware_order(&g, &roles);
    println!("memory-aware order {:.3}", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let l = Liveness::new(&g, &roles, o1, true);
    println!("liveness {:.3}", t.elapsed().as_secs_f64());
    let bufs: Vec<Buffer> = l
        .range
        .values()
        .flatten()
        .map(|r| Buffer {
            lower: r.start.0 as u64,
            upper: r.end.0 as u64,
            size: 4096,
        })
        .collect();
    let t = Instant::now();
    lower_bound(&bufs);
    println!("lower bound {:.3}", t.elapsed().as_secs_f64());
    for (name, f) in [
        (
            "by size",
            greedy_by_size as fn(&[Buffer], u64) -> lowmem_plan::Packing,
        ),
        ("by breadth", greedy_by_breadth),
        ("bf heap", best_fit_heap),
    ] {
        let t = Instant::now();
        f(&bufs, 256);
        println!("{name} {:.3}", t.elapsed().as_secs_f64());
    }
}
