//! Planning times on a 1000-stage unit chain: `cargo run --release -p lowmem-remat --example timing`.
use lowmem_remat::*;
use std::time::Instant;

fn main() {
    let n: usize = std::env::args().nth(1).map_or(1000, |s| s.parse().unwrap());
    let c = Chain::unit(n);
    let t = Instant::now();
    let s = chen_sqrt_best(&c);
    let (p, k) = s.simulate(&c).unwrap();
    println!("chen_sqrt_best: peak {p} compute {k} in {:?}", t.elapsed());
    let t = Instant::now();
    let s = log_scheme(&c);
    let (p, k) = s.simulate(&c).unwrap();
    println!("log_scheme: peak {p} compute {k} in {:?}", t.elapsed());
    for slots in [10usize, 20, 32] {
        let t = Instant::now();
        let s = revolve(n, slots);
        let st = s.simulate_detailed(&c).unwrap();
        println!(
            "revolve({slots}): peak {} compute {} advances {} in {:?}",
            st.peak_bytes,
            st.compute,
            st.forwards_plain,
            t.elapsed()
        );
        for g in [16usize, 32, 64] {
            let t = Instant::now();
            let o = optimal(&c, st.peak_bytes, g).unwrap();
            let (p, k) = o.simulate(&c).unwrap();
            println!(
                "  optimal(budget {}, g={g}): peak {p} compute {k} in {:?}",
                st.peak_bytes,
                t.elapsed()
            );
        }
    }
    let t = Instant::now();
    let m = min_peak_budget(&c);
    println!("min_peak_budget: {m} in {:?}", t.elapsed());
}
