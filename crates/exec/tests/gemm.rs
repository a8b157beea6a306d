//! Our SGEMM against an f64 reference (every transpose, alpha/beta, edge tiles, several depth
//! and column blocks), its determinism across thread counts, and (ignored) a speed
//! comparison with the `gemm` crate.

mod common;

use lowmem_exec::kernels;
use lowmem_testkit::Rng;

#[allow(clippy::too_many_arguments)]
fn reference(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    ta: bool,
    b: &[f32],
    tb: bool,
    beta: f32,
    c: &[f32],
) -> Vec<f64> {
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for p in 0..k {
                let av = if ta { a[p * m + i] } else { a[i * k + p] };
                let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                s += av as f64 * bv as f64;
            }
            let cv = if beta == 0.0 {
                0.0
            } else {
                c[i * n + j] as f64
            };
            out[i * n + j] = alpha as f64 * s + beta as f64 * cv;
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn ours(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    ta: bool,
    b: &[f32],
    tb: bool,
    beta: f32,
    c: &mut [f32],
) {
    let mut ws = vec![f32::NAN; kernels::sgemm_workspace_len(m, n, k)];
    kernels::sgemm(m, n, k, alpha, a, ta, b, tb, beta, c, &mut ws);
}

#[test]
fn sgemm_matches_reference() {
    let mut rng = Rng::new(7);
    let sizes = [
        (1, 1, 1),
        (3, 5, 7),
        (7, 33, 2),
        (17, 31, 300),
        (97, 70, 65),
        (9, 2100, 3),
        (130, 40, 600),
        (5, 3, 0),
    ];
    for &(m, n, k) in &sizes {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            for (alpha, beta) in [(1.0, 0.0), (0.5, 1.0), (-2.0, 0.25)] {
                let a = rng.vec(m * k);
                let b = rng.vec(k * n);
                let c0: Vec<f32> = if beta == 0.0 {
                    vec![f32::NAN; m * n]
                } else {
                    rng.vec(m * n)
                };
                let want = reference(m, n, k, alpha, &a, ta, &b, tb, beta, &c0);
                let mut c = c0.clone();
                ours(m, n, k, alpha, &a, ta, &b, tb, beta, &mut c);
                let tol = 1e-5 * (k as f64).sqrt().max(1.0);
                for (i, (&g, &w)) in c.iter().zip(&want).enumerate() {
                    assert!(
                        (g as f64 - w).abs() <= tol * (1.0 + w.abs()),
                        "{m}x{n}x{k} ta={ta} tb={tb} alpha={alpha} beta={beta} [{i}]: {g} vs {w}"
                    );
                }
            }
        }
    }
}

#[test]
fn sgemm_is_deterministic_across_thread_counts() {
    let mut rng = Rng::new(11);
    for &(m, n, k) in &[(300, 300, 300), (64, 2500, 100), (1000, 64, 576)] {
        let a = rng.vec(m * k);
        let b = rng.vec(k * n);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut c = vec![0.0; m * n];
            pool.install(|| ours(m, n, k, 1.0, &a, false, &b, false, 0.0, &mut c));
            c
        };
        let one = run(1);
        for t in [2, 3, 8] {
            let got = run(t);
            assert!(
                one.iter()
                    .zip(&got)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{m}x{n}x{k}: {t} threads differ from 1"
            );
        }
    }
}

/// `cargo test --release -p lowmem-exec --test gemm -- --ignored --nocapture`: GFLOP/s of
/// our SGEMM and the `gemm` crate, single-threaded and on the whole pool.
#[test]
#[ignore]
fn sgemm_speed_vs_gemm_crate() {
    use std::time::Instant;
    let mut rng = Rng::new(3);
    let sizes = [
        (256, 256, 256),
        (1024, 1024, 1024),
        (64, 4096, 576),
        (3136, 64, 576),
    ];
    let time = |f: &mut dyn FnMut()| {
        f();
        let mut best = f64::MAX;
        let mut total = 0.0;
        while total < 1.0 {
            let t = Instant::now();
            f();
            let s = t.elapsed().as_secs_f64();
            best = best.min(s);
            total += s;
        }
        best
    };
    for threads in [1, rayon::current_num_threads()] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for &(m, n, k) in &sizes {
            let a = rng.vec(m * k);
            let b = rng.vec(k * n);
            let mut c = vec![0.0; m * n];
            let mut ws = vec![0.0; kernels::sgemm_workspace_len(m, n, k)];
            let flops = 2.0 * (m * n * k) as f64;
            let t_ours = pool.install(|| {
                time(&mut || {
                    kernels::sgemm(m, n, k, 1.0, &a, false, &b, false, 0.0, &mut c, &mut ws)
                })
            });
            let par = if threads > 1 {
                gemm::Parallelism::Rayon(0)
            } else {
                gemm::Parallelism::None
            };
            let t_crate = pool.install(|| {
                time(&mut || unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        c.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        a.as_ptr(),
                        1,
                        k as isize,
                        b.as_ptr(),
                        1,
                        n as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        par,
                    )
                })
            });
            println!(
                "threads {threads} {m}x{n}x{k}: ours {:.1} GFLOP/s, gemm crate {:.1} GFLOP/s, ratio {:.2}",
                flops / t_ours / 1e9,
                flops / t_crate / 1e9,
                t_crate / t_ours
            );
        }
    }
}
