//! The machine's peak f32 throughput, measured: every pool thread runs independent fused
//! multiply-add chains in the widest vectors the CPU has, for a fixed number of rounds. What
//! `lowmem bench` reports a step's GFLOP/s against.

use std::time::Instant;

/// Independent accumulators per thread: enough to cover the FMA latency on both ports.
const CHAINS: usize = 16;

/// Measured peak GFLOP/s (a fused multiply-add counts 2) of the rayon pool, and the vector
/// width used (f32 lanes).
pub fn peak_gflops() -> (f64, usize) {
    let rounds = 20_000_000usize;
    let threads = rayon::current_num_threads().max(1);
    let lanes = lanes();
    // Warm up (clocks, pool), then the best of three.
    run(rounds / 10);
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        run(rounds);
        best = best.min(t.elapsed().as_secs_f64());
    }
    let flops = (threads * rounds * CHAINS * lanes * 2) as f64;
    (flops / best / 1e9, lanes)
}

fn lanes() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return 16;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return 8;
        }
    }
    1
}

/// `rounds` on every pool thread at once.
fn run(rounds: usize) {
    rayon::broadcast(|_| std::hint::black_box(chains(std::hint::black_box(rounds))));
}

fn chains(rounds: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { chains_avx512(rounds) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { chains_avx2(rounds) };
        }
    }
    let mut acc = [0f32; CHAINS];
    for _ in 0..rounds {
        for a in acc.iter_mut() {
            *a = a.mul_add(0.999_999, 1e-6);
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn chains_avx512(rounds: usize) -> f32 {
    use std::arch::x86_64::*;
    let (m, c) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-6));
    let mut acc = [_mm512_setzero_ps(); CHAINS];
    for _ in 0..rounds {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, m, c);
        }
    }
    let mut s = _mm512_setzero_ps();
    for a in acc {
        s = _mm512_add_ps(s, a);
    }
    _mm512_reduce_add_ps(s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn chains_avx2(rounds: usize) -> f32 {
    use std::arch::x86_64::*;
    let (m, c) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-6));
    let mut acc = [_mm256_setzero_ps(); CHAINS];
    for _ in 0..rounds {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, m, c);
        }
    }
    let mut s = _mm256_setzero_ps();
    for a in acc {
        s = _mm256_add_ps(s, a);
    }
    let mut out = [0f32; 8];
    // SAFETY: `out` holds 8 floats.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
    out.iter().sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_peak_is_positive_and_counts_the_lanes() {
        let (g, lanes) = super::peak_gflops();
        assert!(g > 0.0 && g.is_finite());
        assert!([1, 8, 16].contains(&lanes));
    }
}
