//! `run_planned`: a whole step inside one arena gives `run`'s results bit for bit, on layouts
//! built here (a bump layout and a greedy first-fit over live ranges with in-place reuse).

use lowmem_autodiff::{Loss, Mode, Optimizer, gradients, step_value, training_step};
use lowmem_exec::{ArenaStats, ExecError, Layout, run, run_planned};
use lowmem_ir::{DType, Graph, NodeId, Op, TensorData, TensorId};
use lowmem_testkit::{Rng, load_example, load_model};

const ALIGN: u64 = 256;

fn example_names() -> Vec<String> {
    let names = lowmem_testkit::example_names();
    assert!(names.len() >= 4, "{names:?}");
    names
}

/// Deterministic inputs: f32 in [-1, 1), an i64 scalar is the step (1), other i64 are class
/// labels below 4.
fn inputs_for(g: &Graph, seed: u64) -> Vec<TensorData> {
    let mut rng = Rng::new(seed);
    g.inputs
        .iter()
        .map(|&i| {
            let t = g.tensor(i);
            match t.dtype {
                DType::F32 => TensorData::F32(rng.vec(t.numel())),
                DType::I64 if t.numel() == 1 => step_value(1),
                DType::I64 => TensorData::I64((0..t.numel()).map(|k| (k * 3 % 4) as i64).collect()),
                d => panic!("no test data for {d}"),
            }
        })
        .collect()
}

/// Which tensors live in the arena: produced by a node and not persistent.
fn arena_tensors(g: &Graph, persistent: &[TensorId]) -> Vec<bool> {
    let mut produced = vec![false; g.tensors.len()];
    for n in &g.nodes {
        for &o in &n.outputs {
            produced[o.index()] = true;
        }
    }
    (0..g.tensors.len())
        .map(|t| produced[t] && !persistent.iter().any(|p| p.index() == t))
        .collect()
}

fn workspace_bytes(g: &Graph, n: NodeId) -> u64 {
    g.node_workspace_bytes(g.node(n)) as u64
}

/// An owned [`Layout`].
struct Plan {
    order: Vec<NodeId>,
    offset: Vec<Option<u64>>,
    workspace: Vec<Option<(u64, u64)>>,
    arena_bytes: u64,
}

impl Plan {
    fn layout(&self) -> Layout<'_> {
        Layout {
            order: &self.order,
            tensor_offset: &self.offset,
            workspace: &self.workspace,
            arena_bytes: self.arena_bytes,
        }
    }
}

fn align(x: u64) -> u64 {
    x.div_ceil(ALIGN) * ALIGN
}

/// Every arena tensor and workspace at its own offset.
fn bump(g: &Graph, order: Vec<NodeId>, arena: &[bool]) -> Plan {
    let mut top = 0;
    let mut offset = vec![None; g.tensors.len()];
    for (t, o) in offset.iter_mut().enumerate() {
        if arena[t] {
            *o = Some(top);
            top = align(top + g.tensors[t].bytes() as u64);
        }
    }
    let workspace = order
        .iter()
        .map(|&n| {
            let b = workspace_bytes(g, n);
            (b > 0).then(|| {
                let w = (top, b);
                top = align(top + b);
                w
            })
        })
        .collect();
    Plan {
        order,
        offset,
        workspace,
        arena_bytes: top,
    }
}

/// Whether output 0 of `node` may take input 0's bytes (an elementwise op or a view).
fn in_place_op(g: &Graph, node: &lowmem_ir::Node) -> bool {
    let (Some(&i), [o]) = (node.inputs.first(), &node.outputs[..]) else {
        return false;
    };
    let (ti, to) = (g.tensor(i), g.tensor(*o));
    let view = matches!(
        node.op,
        Op::Reshape { .. } | Op::Flatten { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. }
    );
    let elementwise = node.op.is_unary_elementwise()
        || node.op.is_binary_elementwise()
        || node.op.is_elementwise_grad();
    (view || elementwise)
        && ti.dtype == to.dtype
        && ti.bytes() == to.bytes()
        && (view || ti.shape == to.shape)
        && node.inputs.iter().filter(|&&t| t == i).count() == 1
}

/// Greedy first-fit over live ranges (steps `def..=last use`), in-place outputs sharing
/// their dying input 0's block. Returns the plan and how many outputs were placed in place.
fn first_fit(g: &Graph, order: Vec<NodeId>, arena: &[bool]) -> (Plan, usize) {
    let nt = g.tensors.len();
    let end = order.len();
    let mut def = vec![0usize; nt];
    let mut last = vec![0usize; nt];
    for (s, &n) in order.iter().enumerate() {
        let node = g.node(n);
        for &i in &node.inputs {
            last[i.index()] = s;
        }
        for &o in &node.outputs {
            def[o.index()] = s;
            last[o.index()] = s;
        }
    }
    for &o in &g.outputs {
        last[o.index()] = end;
    }
    // Blocks: (start, end, bytes, members); workspaces are blocks of one step.
    let mut block_of = vec![usize::MAX; nt];
    let mut blocks: Vec<(usize, usize, u64, Vec<usize>)> = Vec::new();
    let mut shared = 0;
    let mut ws_block = vec![None; order.len()];
    for (s, &n) in order.iter().enumerate() {
        let node = g.node(n);
        for (k, &o) in node.outputs.iter().enumerate() {
            let o = o.index();
            if !arena[o] {
                continue;
            }
            let i = node.inputs.first().map(|t| t.index());
            if let Some(i) =
                i.filter(|&i| k == 0 && arena[i] && last[i] == s && in_place_op(g, node))
            {
                let b = block_of[i];
                blocks[b].1 = last[o];
                blocks[b].3.push(o);
                block_of[o] = b;
                shared += 1;
            } else {
                block_of[o] = blocks.len();
                blocks.push((s, last[o], g.tensors[o].bytes() as u64, vec![o]));
            }
        }
        let w = workspace_bytes(g, n);
        if w > 0 {
            ws_block[s] = Some(blocks.len());
            blocks.push((s, s, w, vec![]));
        }
    }
    let mut ids: Vec<usize> = (0..blocks.len()).collect();
    ids.sort_by_key(|&b| (blocks[b].0, std::cmp::Reverse(blocks[b].2)));
    let mut placed: Vec<(usize, u64)> = Vec::new();
    let mut at = vec![0u64; blocks.len()];
    let mut top = 0;
    for b in ids {
        let (s, e, bytes, _) = blocks[b];
        let mut busy: Vec<(u64, u64)> = placed
            .iter()
            .filter(|&&(p, _)| blocks[p].0 <= e && s <= blocks[p].1)
            .map(|&(p, off)| (off, off + blocks[p].2))
            .collect();
        busy.sort();
        let mut off = 0;
        for (lo, hi) in busy {
            if off + bytes <= lo || bytes == 0 {
                break;
            }
            off = off.max(align(hi));
        }
        at[b] = off;
        placed.push((b, off));
        top = top.max(align(off + bytes));
    }
    let offset = (0..nt).map(|t| arena[t].then(|| at[block_of[t]])).collect();
    let workspace = ws_block
        .iter()
        .map(|b| b.map(|b: usize| (at[b], blocks[b].2)))
        .collect();
    let plan = Plan {
        order,
        offset,
        workspace,
        arena_bytes: top,
    };
    (plan, shared)
}

/// A different topological order: Kahn's algorithm taking the latest ready node first.
fn lifo_order(g: &Graph) -> Vec<NodeId> {
    let producers = g.producers();
    let consumers = g.consumers();
    let mut missing: Vec<usize> = g
        .nodes
        .iter()
        .map(|n| {
            let mut p: Vec<_> = n
                .inputs
                .iter()
                .filter_map(|t| producers[t.index()])
                .collect();
            p.sort();
            p.dedup();
            p.len()
        })
        .collect();
    let mut ready: Vec<NodeId> = g.node_ids().filter(|n| missing[n.index()] == 0).collect();
    let mut order = Vec::new();
    while let Some(n) = ready.pop() {
        order.push(n);
        let mut next: Vec<NodeId> = g
            .node(n)
            .outputs
            .iter()
            .flat_map(|o| consumers[o.index()].iter().copied())
            .collect();
        next.sort();
        next.dedup();
        for c in next {
            missing[c.index()] -= 1;
            if missing[c.index()] == 0 {
                ready.push(c);
            }
        }
    }
    assert_eq!(order.len(), g.nodes.len());
    order
}

/// Runs `g` unplanned and under both layouts in two orders; asserts bit-identical outputs.
/// Returns the stats of the first-fit layout in program order.
fn check(what: &str, g: &Graph, persistent: &[TensorId], inputs: &[TensorData]) -> ArenaStats {
    let want = run(g, inputs).unwrap_or_else(|e| panic!("{what}: {e}"));
    let arena = arena_tensors(g, persistent);
    // The planned workspace is exactly what the kernels need.
    for node in &g.nodes {
        let ins: Vec<&[usize]> = node
            .inputs
            .iter()
            .map(|&t| &g.tensor(t).shape[..])
            .collect();
        let outs: Vec<&[usize]> = node
            .outputs
            .iter()
            .map(|&t| &g.tensor(t).shape[..])
            .collect();
        assert_eq!(
            lowmem_exec::kernel_workspace_bytes(&node.op, &ins).unwrap(),
            node.op.workspace_bytes(&ins, &outs),
            "{what}: workspace of {}",
            node.name
        );
    }
    let mut stats = None;
    for order in [g.node_ids().collect::<Vec<_>>(), lifo_order(g)] {
        let (ff, shared) = first_fit(g, order.clone(), &arena);
        let b = bump(g, order, &arena);
        assert!(ff.arena_bytes <= b.arena_bytes, "{what}");
        for (kind, plan) in [("bump", &b), ("first-fit", &ff)] {
            let (got, st) = run_planned(g, &plan.layout(), inputs.to_vec())
                .unwrap_or_else(|e| panic!("{what} ({kind}): {e}"));
            assert_eq!(st.arena_bytes, plan.arena_bytes, "{what} ({kind})");
            assert_eq!(got.len(), want.len());
            for (k, (a, w)) in got.iter().zip(&want).enumerate() {
                assert!(a.bit_eq(w), "{what} ({kind}): output {k} differs");
            }
            if stats.is_none() && kind == "first-fit" {
                stats = Some((st, shared));
            }
        }
    }
    let (st, shared) = stats.unwrap();
    eprintln!("{what}: {st:?}, {shared} outputs in place");
    st
}

#[test]
fn examples_match_run_bit_for_bit() {
    for name in example_names() {
        let g = load_example(&name);
        let inputs = inputs_for(&g, 7);
        let st = check(&name, &g, &[], &inputs);
        assert_eq!(st.outside_allocs, 0, "{name}");
    }
}

fn tiny_cnn(batch: usize) -> Graph {
    load_model("tiny_cnn", Some(batch))
}

#[test]
fn training_steps_match_run_and_update_state_in_place() {
    let g = tiny_cnn(4);
    for opt in [
        Optimizer::Sgd {
            lr: 0.2,
            momentum: 0.9,
            weight_decay: 1e-4,
        },
        Optimizer::Sgd {
            lr: 0.2,
            momentum: 0.0,
            weight_decay: 0.0,
        },
        Optimizer::Adam {
            lr: 2e-2,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.0,
        },
    ] {
        let tg = training_step(&g, g.outputs[0], Loss::CrossEntropy, &opt).unwrap();
        let gr = &tg.graph;
        let mut inputs = inputs_for(gr, 3);
        for (k, &i) in gr.inputs.iter().enumerate() {
            if let Some(s) = tg.state.iter().find(|s| s.input == i) {
                inputs[k] = (*s.init).clone();
            } else if i == tg.step {
                inputs[k] = step_value(2);
            }
        }
        let mut persistent: Vec<TensorId> = tg.state.iter().map(|s| s.output).collect();
        persistent.extend(tg.grads.iter().map(|&(_, g)| g));
        let st = check(&format!("tiny_cnn step {opt:?}"), gr, &persistent, &inputs);
        // Gradients are allocated outside; parameters, optimizer moments and the BatchNorm
        // running statistics are updated in the caller's buffers.
        let running = tg
            .state
            .iter()
            .filter(|s| {
                s.kind.eq(&lowmem_autodiff::StateKind::RunningMean)
                    || s.kind == lowmem_autodiff::StateKind::RunningVar
            })
            .count();
        assert_eq!(running, 2);
        assert_eq!(st.outside_allocs, tg.grads.len(), "{opt:?}");
    }
}

#[test]
fn gradient_graphs_match_run() {
    let g = load_example("encoder_block");
    let gg = gradients(
        &g,
        g.outputs[0],
        Loss::Sum,
        &g.trainable_weights(),
        Mode::Training,
    )
    .unwrap();
    let grads: Vec<TensorId> = gg.grads.iter().map(|&(_, g)| g).collect();
    let st = check(
        "encoder_block grads",
        &gg.graph,
        &grads,
        &inputs_for(&gg.graph, 11),
    );
    assert_eq!(st.outside_allocs, grads.len());

    let g = tiny_cnn(2);
    let gg = gradients(
        &g,
        g.outputs[0],
        Loss::CrossEntropy,
        &g.trainable_weights(),
        Mode::Training,
    )
    .unwrap();
    let grads: Vec<TensorId> = gg.grads.iter().map(|&(_, g)| g).collect();
    check(
        "tiny_cnn grads",
        &gg.graph,
        &grads,
        &inputs_for(&gg.graph, 5),
    );
}

#[test]
fn bad_layouts_are_errors() {
    let g = tiny_cnn(2);
    let inputs = inputs_for(&g, 1);
    let arena = arena_tensors(&g, &[]);
    let order: Vec<NodeId> = g.node_ids().collect();
    let good = bump(&g, order.clone(), &arena);

    // An offset past the arena names the tensor.
    let t = (0..g.tensors.len()).rev().find(|&t| arena[t]).unwrap();
    let mut p = bump(&g, order.clone(), &arena);
    p.offset[t] = Some(p.arena_bytes);
    let e = run_planned(&g, &p.layout(), inputs.clone()).unwrap_err();
    assert!(matches!(e, ExecError::Tensor { .. }), "{e}");
    assert!(
        e.to_string().contains(&g.tensors[t].name) && e.to_string().contains("past the arena"),
        "{e}"
    );

    // Everything at offset 0: an output over the input its kernel reads.
    let mut p = bump(&g, order.clone(), &arena);
    for o in p.offset.iter_mut().flatten() {
        *o = 0;
    }
    let e = run_planned(&g, &p.layout(), inputs.clone())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("overlaps") || e.contains("cannot overwrite"),
        "{e}"
    );

    // A workspace smaller than the kernel needs.
    let mut p = bump(&g, order.clone(), &arena);
    let s = p
        .workspace
        .iter()
        .position(Option::is_some)
        .expect("a conv with im2col");
    p.workspace[s] = p.workspace[s].map(|(o, b)| (o, b - 4));
    let e = run_planned(&g, &p.layout(), inputs.clone())
        .unwrap_err()
        .to_string();
    assert!(e.contains("workspace"), "{e}");

    // A workspace past the arena, an order that is not topological, an offset on an input.
    let mut p = bump(&g, order.clone(), &arena);
    p.workspace[s] = Some((p.arena_bytes, 8));
    assert!(run_planned(&g, &p.layout(), inputs.clone()).is_err());
    let mut p = bump(&g, order.iter().rev().copied().collect(), &arena);
    p.workspace = good.workspace.iter().rev().copied().collect();
    let e = run_planned(&g, &p.layout(), inputs.clone())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no value"), "{e}");
    let mut p = bump(&g, order.clone(), &arena);
    p.offset[g.inputs[0].index()] = Some(0);
    let e = run_planned(&g, &p.layout(), inputs.clone())
        .unwrap_err()
        .to_string();
    assert!(e.contains(&g.tensor(g.inputs[0]).name), "{e}");

    // A write over a tensor that is still to be read (a residual in encoder_block).
    let eg = load_example("encoder_block");
    let earena = arena_tensors(&eg, &[]);
    let eorder: Vec<NodeId> = eg.node_ids().collect();
    let consumers = eg.consumers();
    let (t, u) = eg
        .tensor_ids()
        .filter(|t| earena[t.index()])
        .find_map(|t| {
            let readers = &consumers[t.index()];
            let def = eg.producers()[t.index()]?.index();
            let last = readers.iter().map(|n| n.index()).max()?;
            // A node strictly between that does not read `t`: its output overwrites `t`.
            (def + 1..last)
                .find(|&s| !eg.nodes[s].inputs.contains(&t))
                .map(|s| (t, eg.nodes[s].outputs[0]))
        })
        .expect("a tensor live across another node");
    let mut p = bump(&eg, eorder, &earena);
    p.offset[u.index()] = p.offset[t.index()];
    let e = run_planned(&eg, &p.layout(), inputs_for(&eg, 2))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("read later") && e.contains(&eg.tensor(t).name),
        "{e}"
    );

    // The good layout still runs.
    let (out, st) = run_planned(&g, &good.layout(), inputs.clone()).unwrap();
    assert!(out[0].bit_eq(&run(&g, &inputs).unwrap()[0]));
    assert_eq!(st.arena_bytes, good.arena_bytes);
}

#[test]
fn any_dtype_lives_in_the_arena() {
    // i64 and bool tensors flow through data-movement ops inside the arena.
    let mut g = Graph::new("dtypes");
    let a = g.add_input("a", DType::I64, vec![2, 3]).unwrap();
    let m = g.add_input("m", DType::Bool, vec![3, 2]).unwrap();
    let h = g.add_input("h", DType::F16, vec![4]).unwrap();
    let t = g
        .add_node("t", Op::Transpose { perm: None }, &[a], &["t"])
        .unwrap()[0];
    let r = g
        .add_node(
            "r",
            Op::Reshape {
                shape: vec![6],
                allowzero: false,
            },
            &[t],
            &["r"],
        )
        .unwrap()[0];
    let mt = g
        .add_node("mt", Op::Transpose { perm: None }, &[m], &["mt"])
        .unwrap()[0];
    let c = g
        .add_node("c", Op::Concat { axis: 0 }, &[mt, mt], &["c"])
        .unwrap()[0];
    let hs = g
        .add_node(
            "hs",
            Op::Slice {
                axis: 0,
                start: 1,
                end: 3,
            },
            &[h],
            &["hs"],
        )
        .unwrap()[0];
    g.set_outputs(vec![r, c, hs]);
    let inputs = vec![
        TensorData::I64(vec![1, -2, 3, 4, 5, -6]),
        TensorData::Bool(vec![true, false, false, true, true, true]),
        TensorData::F16(
            (0..4)
                .map(|i| half::f16::from_f32(i as f32 + 0.5))
                .collect(),
        ),
    ];
    check("dtypes", &g, &[], &inputs);
}
