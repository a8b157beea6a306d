//! The memory rewrites' kernels (kernels/sparse.cu) through the host shim against the CPU
//! executor. They only move and select data, so every result must be bit for bit the CPU's.

mod common;
use common::*;
use lowmem_ir::{DType, Graph, Op, TensorData, window_start};

/// Asserts bitwise equality (f32 compared by bits, so NaN and -0.0 count).
fn assert_bits(what: &str, want: &[TensorData], got: &[TensorData]) {
    assert_eq!(want.len(), got.len(), "{what}: outputs");
    for (k, (w, g)) in want.iter().zip(got).enumerate() {
        match (w, g) {
            (TensorData::F32(w), TensorData::F32(g)) => {
                assert_eq!(w.len(), g.len(), "{what}, output {k}: length");
                for (i, (a, b)) in w.iter().zip(g).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{what}, output {k}, element {i}: CPU {a}, CUDA kernel {b}"
                    );
                }
            }
            _ => assert_eq!(w, g, "{what}, output {k}"),
        }
    }
}

/// Runs a one-node graph both ways and compares bit for bit.
fn check_bits(what: &str, op: Op, ins: &[In], n_out: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let (g, vals) = one_node(op, ins, n_out, &mut rng);
    let (want, got) = run_both(&inference(&g), &vals);
    assert_bits(what, &want, &got);
}

/// (shape of X, axis, window size) for SliceWindow.
const WINDOWS: &[(&[usize], usize, usize)] = &[
    (&[10], 0, 3),
    (&[10], 0, 10),
    (&[7], 0, 1),
    (&[4, 7, 3], 1, 5),
    (&[4, 7, 3], 0, 4),
    (&[4, 7, 3], 2, 2),
    (&[2, 3, 4, 5], 3, 4),
    (&[2, 3, 4, 5], 0, 1),
    (&[3, 1000], 1, 999),
    (&[257, 6, 2], 1, 3),
    (&[0, 5], 1, 2),
];

const STEPS: &[i64] = &[0, 1, 2, 3, 5, 7, 11, 1 << 40, -3];

#[test]
fn slice_window_matches_the_cpu() {
    let seed = 0x5EED;
    let mut wraps = 0;
    for (case, &(shape, axis, size)) in WINDOWS.iter().enumerate() {
        let n = shape[axis];
        for &step in STEPS {
            if window_start(seed, step as u64, n) + size > n {
                wraps += 1;
            }
            let op = Op::SliceWindow { axis, size, seed };
            let ins = [In::F32(shape.to_vec()), In::Data(vec![], i64s(vec![step]))];
            let what = format!("SliceWindow {shape:?} axis {axis} size {size} step {step}");
            check_bits(&what, op, &ins, 1, case as u64);
        }
    }
    assert!(wraps > 10, "only {wraps} windows wrap around");
}

#[test]
fn slice_window_grad_matches_the_cpu() {
    let seed = 77;
    let mut wraps = 0;
    for (case, &(shape, axis, k)) in WINDOWS.iter().enumerate() {
        let n = shape[axis];
        let mut dy = shape.to_vec();
        dy[axis] = k;
        for &step in STEPS {
            if window_start(seed, step as u64, n) + k > n {
                wraps += 1;
            }
            let op = Op::SliceWindowGrad {
                axis,
                size: n,
                seed,
            };
            let ins = [In::F32(dy.clone()), In::Data(vec![], i64s(vec![step]))];
            let what = format!("SliceWindowGrad {dy:?} axis {axis} to {n} step {step}");
            check_bits(&what, op, &ins, 1, case as u64);
        }
    }
    assert!(wraps > 10, "only {wraps} windows wrap around");
}

/// Values for ReLU masks: positives, negatives, both zeros, NaN and infinities.
fn mask_input(n: usize, rng: &mut Rng) -> TensorData {
    let special = [0.0, -0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e-38];
    TensorData::F32(
        (0..n)
            .map(|_| match rng.below(10) {
                0 => special[rng.range(0, special.len())],
                1..=3 => 0.0,
                _ => rng.uniform(-2.0, 2.0),
            })
            .collect(),
    )
}

const MASK_SHAPES: &[&[usize]] = &[&[1], &[7], &[8], &[9], &[1000], &[70_001], &[3, 5, 7], &[0]];

#[test]
fn relu_mask_matches_the_cpu() {
    let mut rng = Rng::new(3);
    for s in MASK_SHAPES {
        let n = s.iter().product();
        let y = mask_input(n, &mut rng);
        check_bits(
            &format!("ReluMask {s:?}"),
            Op::ReluMask,
            &[In::Data(s.to_vec(), y)],
            1,
            0,
        );
    }
}

fn random_mask(n: usize, rng: &mut Rng) -> TensorData {
    TensorData::U8((0..n.div_ceil(8)).map(|_| rng.next_u64() as u8).collect())
}

#[test]
fn relu_mask_grad_matches_the_cpu() {
    let mut rng = Rng::new(4);
    for s in MASK_SHAPES {
        let n: usize = s.iter().product();
        let dy = mask_input(n, &mut rng);
        let mask = random_mask(n, &mut rng);
        check_bits(
            &format!("ReluMaskGrad {s:?}"),
            Op::ReluMaskGrad,
            &[
                In::Data(s.to_vec(), dy),
                In::Data(vec![n.div_ceil(8)], mask),
            ],
            1,
            0,
        );
    }
}

/// ReluMaskGrad over a dying intermediate runs in place (dX in dY's bytes).
#[test]
fn relu_mask_grad_runs_in_place() {
    let mut rng = Rng::new(5);
    for n in [9usize, 1000, 70_001] {
        let mut g = Graph::new("t");
        let x = g.add_input("x", DType::F32, vec![n]).unwrap();
        let m = g.add_input("m", DType::U8, vec![n.div_ceil(8)]).unwrap();
        let dy = g.add_node("neg", Op::Neg, &[x], &["dy"]).unwrap()[0];
        let dx = g
            .add_node("grad", Op::ReluMaskGrad, &[dy, m], &["dx"])
            .unwrap()[0];
        let y = g.add_node("neg2", Op::Neg, &[dx], &["y"]).unwrap();
        g.set_outputs(y);
        let step = inference(&g);
        let shared =
            step.plan.buffers.iter().any(|b| {
                b.name == "dx" && b.shares.is_some_and(|t| step.graph.tensor(t).name == "dy")
            });
        assert!(shared, "n {n}: dx is not planned in dy's bytes");
        let vals = [mask_input(n, &mut rng), random_mask(n, &mut rng)];
        let (want, got) = run_both(&step, &vals);
        assert_bits(&format!("in-place ReluMaskGrad [{n}]"), &want, &got);
    }
}

/// TopK inputs of `n` elements, by kind: uniform, ReLU-like (over 90% zeros of both signs,
/// so the threshold is often 0), few repeated values of both signs, and negatives with
/// infinities and NaNs.
fn topk_input(kind: usize, n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n)
        .map(|_| match kind {
            0 => rng.uniform(-2.0, 2.0),
            1 => match rng.below(100) {
                0..=91 if rng.bool() => 0.0,
                0..=91 => -0.0,
                _ => rng.uniform(0.0, 3.0),
            },
            2 => {
                let v = [0.5f32, 1.0, 1.5, 2.0, 0.25][rng.range(0, 5)];
                if rng.bool() { v } else { -v }
            }
            _ => match rng.below(50) {
                0 => f32::NAN,
                1 => f32::INFINITY,
                2 => f32::NEG_INFINITY,
                3 => -f32::NAN,
                _ => rng.uniform(-5.0, 0.0),
            },
        })
        .collect()
}

#[test]
fn topk_matches_the_cpu() {
    let mut rng = Rng::new(6);
    for n in [1usize, 255, 256, 257, 70_001] {
        let mut ks = vec![1, (n / 10).max(1), n];
        ks.dedup();
        for kind in 0..4 {
            let x = TensorData::F32(topk_input(kind, n, &mut rng));
            for &k in &ks {
                check_bits(
                    &format!("TopK k {k} of {n}, input kind {kind}"),
                    Op::TopK { k },
                    &[In::Data(vec![n], x.clone())],
                    2,
                    0,
                );
            }
        }
    }
}

/// More chunks than the scan's 1024 threads (several chunks per thread), on a 2-D input.
#[test]
fn topk_over_many_chunks_matches_the_cpu() {
    let mut rng = Rng::new(7);
    let shape = vec![3, 100_003];
    let n = 300_009;
    for kind in [0, 1] {
        let x = TensorData::F32(topk_input(kind, n, &mut rng));
        for k in [n / 10, n / 2 + 1] {
            check_bits(
                &format!("TopK k {k} of {shape:?}, input kind {kind}"),
                Op::TopK { k },
                &[In::Data(shape.clone(), x.clone())],
                2,
                0,
            );
        }
    }
}

#[test]
fn topk_scatter_matches_the_cpu() {
    let mut rng = Rng::new(8);
    for (shape, k) in [
        (vec![1], 1),
        (vec![3, 5, 7], 10),
        (vec![3, 5, 7], 105),
        (vec![70_001], 7000),
        (vec![4, 4], 0),
    ] {
        let total: usize = shape.iter().product();
        let mut idx: Vec<i32> = (0..total as i32).collect();
        rng.shuffle(&mut idx);
        idx.truncate(k);
        let values = TensorData::F32(rng.vec_in(k, -2.0, 2.0));
        check_bits(
            &format!("TopKScatter {k} into {shape:?}"),
            Op::TopKScatter {
                shape: shape.clone(),
            },
            &[
                In::Data(vec![k], values),
                In::Data(vec![k], TensorData::I32(idx)),
            ],
            1,
            0,
        );
    }
}

/// TopK then TopKScatter in one step: the dense tensor keeps exactly the top k.
#[test]
fn topk_round_trip_matches_the_cpu() {
    let mut rng = Rng::new(9);
    for (shape, k) in [(vec![16, 33], 50), (vec![70_001], 7000)] {
        let n: usize = shape.iter().product();
        let mut g = Graph::new("t");
        let x = g.add_input("x", DType::F32, shape.clone()).unwrap();
        let vi = g
            .add_node("topk", Op::TopK { k }, &[x], &["v", "i"])
            .unwrap();
        let y = g
            .add_node("scatter", Op::TopKScatter { shape }, &vi, &["y"])
            .unwrap();
        let mut outs = vi.clone();
        outs.extend(y);
        g.set_outputs(outs);
        let vals = [TensorData::F32(topk_input(1, n, &mut rng))];
        let (want, got) = run_both(&inference(&g), &vals);
        assert_bits(&format!("TopK round trip of {n}"), &want, &got);
    }
}
