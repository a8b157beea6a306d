//! MiniMalloc "challenging" instances A..K: lower bound, heuristics and `pack` side by side.
//!
//! `cargo bench -p lowmem-plan --bench minimalloc`. Reads `../shared/benchmarks/minimalloc/`
//! relative to the repository root and skips what is absent. `LOWMEM_PACK_SECONDS` overrides
//! the 10 s time limit; `LOWMEM_PACK_ONLY=AB` restricts the instances.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use lowmem_plan::{
    Buffer, best_fit_heap, greedy_by_breadth, greedy_by_size, lower_bound, pack, read_csv, verify,
};

fn main() {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/benchmarks/minimalloc");
    if !dir.is_dir() {
        println!("skipping: {} not found", dir.display());
        return;
    }
    let seconds: f64 = std::env::var("LOWMEM_PACK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    let only = std::env::var("LOWMEM_PACK_ONLY").unwrap_or_default();
    println!(
        "| inst | bufs | lower bound | by-size height | by-size | by-breadth | bf-heap | pack | pack time | pack method |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for name in 'A'..='K' {
        if !only.is_empty() && !only.contains(name) {
            continue;
        }
        let path = dir.join(format!("{name}.csv"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            println!("| {name} | (absent) |");
            continue;
        };
        let bufs: Vec<Buffer> = read_csv(&text)
            .expect("valid csv")
            .into_iter()
            .map(|(_, b)| b)
            .collect();
        let lb = lower_bound(&bufs);
        let ratio = |h: u64| h as f64 / lb as f64;
        let size = greedy_by_size(&bufs, 1);
        let breadth = greedy_by_breadth(&bufs, 1);
        let heap = best_fit_heap(&bufs, 1);
        for p in [&size, &breadth, &heap] {
            assert_eq!(
                verify(&bufs, &p.offsets, 1),
                Ok(p.height),
                "{name} {}",
                p.heuristic
            );
        }
        let t = Instant::now();
        let packed = pack(&bufs, 1, Duration::from_secs_f64(seconds));
        let elapsed = t.elapsed();
        assert_eq!(
            verify(&bufs, &packed.offsets, 1),
            Ok(packed.height),
            "{name} pack"
        );
        println!(
            "| {name} | {} | {lb} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.3} s | {} |",
            bufs.len(),
            size.height,
            ratio(size.height),
            ratio(breadth.height),
            ratio(heap.height),
            ratio(packed.height),
            elapsed.as_secs_f64(),
            packed.heuristic
        );
    }
}
