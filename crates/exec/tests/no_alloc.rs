//! The kernels allocate nothing: each runs over caller-provided outputs and workspace under a
//! counting allocator (allocations made by this thread; sizes below the parallel thresholds,
//! so that rayon's own queues stay out of the count).

use lowmem_exec::heap::CountingAlloc;
use lowmem_exec::kernels::{self, Binary, Unary};
use lowmem_ir::ConvAttrs;

#[global_allocator]
static A: CountingAlloc = CountingAlloc::new();

/// Deterministic test values in [-1, 1).
fn data(n: usize, seed: u64) -> Vec<f32> {
    lowmem_testkit::Rng::new(seed).vec(n)
}

/// Allocations `f` makes on this thread.
fn allocs(f: impl FnOnce()) -> usize {
    let (before, _) = A.tracked();
    A.track();
    f();
    A.untrack();
    (A.tracked().0 - before) as usize
}

#[test]
fn kernels_do_not_allocate() {
    let x = data(2 * 4 * 9 * 9, 1);
    let xs = [2, 4, 9, 9];
    let w = data(6 * 4 * 3 * 3, 2);
    let wsh = [6, 4, 3, 3];
    let a = ConvAttrs {
        pads: vec![1; 4],
        ..Default::default()
    };
    let win = a.window(&xs, &wsh).unwrap();
    let mut y = vec![0.0; 2 * 6 * 81];
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; w.len()];
    let mut ws = vec![0.0; 1 << 20];
    let v = data(9, 3);
    let mut o = vec![0.0; x.len()];
    let mut small = vec![0.0; 512];
    let pwin = lowmem_ir::PoolAttrs {
        kernel_shape: vec![3, 3],
        ..Default::default()
    }
    .window(&xs)
    .unwrap();
    let mut mm = vec![0.0; 3 * 5 * 7];
    let (ma, mb) = (data(3 * 5 * 6, 4), data(6 * 7, 5));
    let n = allocs(|| {
        kernels::conv(&x, &xs, &w, &wsh, None, &win, 1, None, &mut y, &mut ws);
        kernels::conv_backward_data(&y, &w, &wsh, &xs, &win, 1, &mut dx, &mut ws);
        kernels::conv_backward_filter(&y, &x, &xs, &wsh, &win, 1, &mut dw, &mut ws);
        kernels::matmul(&ma, &[3, 5, 6], &mb, &[6, 7], &mut mm, &mut ws);
        kernels::matmul(&ma, &[3, 1, 5, 6], &mb, &[1, 6, 7], &mut mm, &mut ws);
        kernels::binary(Binary::Add, &x, &xs, &v, &[9], &mut o, &xs);
        kernels::binary_inplace(Binary::Mul, &mut o, &xs, &v, &[1, 9]);
        kernels::unary(Unary::Gelu, &x, &mut o);
        kernels::expand(&v, &[9], &mut o, &xs);
        kernels::transpose(&x, &xs, &[0, 2, 3, 1], &mut o);
        kernels::reduce(&x, &xs, &[1, 3], true, &mut small[..18], &mut ws);
        kernels::sum_to(&x, &xs, &mut small[..4], &[4, 1, 1], &mut ws);
        kernels::softmax(&x, &xs, 1, false, true, &mut o);
        kernels::lrn(&x, &xs, 3, 1e-4, 0.75, 1.0, &mut o);
        kernels::layer_norm(
            &x,
            &xs,
            2,
            &v,
            &[9],
            Some((&v, &[9])),
            1e-5,
            &mut o,
            &mut ws,
        );
        kernels::max_pool(&x, &xs, &pwin, &mut small[..2 * 4 * 49]);
        kernels::mse_loss(&x, &dx, &mut small[..1]);
    });
    assert_eq!(n, 0, "the kernels allocated {n} times");
    // The counter sees allocations.
    assert_eq!(allocs(|| drop(std::hint::black_box(vec![0u8; 16]))), 1);
}
