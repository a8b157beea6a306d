//! lowmem's SGEMM beside the `gemm` crate on the GEMM shapes of ResNet-50 (batch 1, as its
//! convolutions run them: out channels x output pixels x in channels * kernel) and a
//! BERT-style layer, side by side in one run, both on all threads:
//! `cargo run --release -p lowmem-exec --example sgemm_vs_gemm`. Best of 5 per shape; the
//! last line is the ratio of the summed times (below 1: ours is faster).
use std::time::Instant;

fn main() {
    let shapes = [
        (64usize, 12544usize, 147usize),
        (64, 3136, 576),
        (256, 3136, 64),
        (64, 3136, 256),
        (128, 784, 1152),
        (512, 784, 128),
        (256, 196, 2304),
        (1024, 196, 256),
        (512, 49, 4608),
        (2048, 49, 512),
        (2304, 128, 768),
        (768, 1024, 3072),
    ];
    let mut total = [0f64; 2];
    for &(m, n, k) in &shapes {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut c = vec![0f32; m * n];
        let mut ws = vec![0f32; lowmem_exec::kernels::sgemm_workspace_len(m, n, k)];
        let reps = (4e8 / (2.0 * (m * n * k) as f64)).max(3.0) as usize;
        let (mut ours, mut theirs) = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..reps {
                lowmem_exec::kernels::sgemm(
                    m, n, k, 1.0, &a, false, &b, false, 0.0, &mut c, &mut ws,
                );
            }
            ours = ours.min(t.elapsed().as_secs_f64() / reps as f64);
            let t = Instant::now();
            for _ in 0..reps {
                // SAFETY: row-major m x k, k x n and m x n buffers of those sizes.
                unsafe {
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
                        0.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        gemm::Parallelism::Rayon(0),
                    )
                }
            }
            theirs = theirs.min(t.elapsed().as_secs_f64() / reps as f64);
        }
        let gf = 2.0 * (m * n * k) as f64 / 1e9;
        total[0] += ours;
        total[1] += theirs;
        println!(
            "{m:>5} x {n:>6} x {k:>5}: lowmem {:>6.1} GFLOP/s, gemm {:>6.1} GFLOP/s, time ratio {:.2}",
            gf / ours,
            gf / theirs,
            ours / theirs
        );
    }
    println!("summed time ratio {:.2}", total[0] / total[1]);
}
