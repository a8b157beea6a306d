//! Random checkpointing chains for benchmarks and tests.

use crate::Rng;

/// The costs and sizes of a chain of `lowmem_remat::Chain` (the kit does not depend on it),
/// field by field.
pub struct ChainCosts {
    pub fwd: Vec<u64>,
    pub bwd: Vec<u64>,
    pub input_bytes: Vec<u64>,
    pub saved_bytes: Vec<u64>,
    pub fwd_tmp: Vec<u64>,
    pub bwd_tmp: Vec<u64>,
}

/// `n` random stages of the order of a deep ResNet's: forward 1e9..4e9 FLOPs, backward
/// about twice that, boundaries 1e7..1e8 bytes, records 3..6 times the input, temporaries
/// about the input size. No two stages alike (no DP row is shared) and the costs need u64.
pub fn resnet_like(rng: &mut Rng, n: usize) -> ChainCosts {
    let fwd: Vec<u64> = (0..n)
        .map(|_| rng.range_u64(1_000_000_000, 4_000_000_001))
        .collect();
    let bwd = fwd
        .iter()
        .map(|&f| f * 2 + rng.range_u64(0, f / 4 + 1))
        .collect();
    let x: Vec<u64> = (0..=n)
        .map(|_| rng.range_u64(10_000_000, 100_000_001))
        .collect();
    let saved_bytes = (0..n)
        .map(|i| x[i + 1].max(x[i] * rng.range_u64(30, 61) / 10))
        .collect();
    let fwd_tmp = (0..n).map(|i| x[i] * rng.range_u64(5, 16) / 10).collect();
    let bwd_tmp = (0..n).map(|i| x[i] * rng.range_u64(5, 16) / 10).collect();
    ChainCosts {
        fwd,
        bwd,
        input_bytes: x,
        saved_bytes,
        fwd_tmp,
        bwd_tmp,
    }
}
