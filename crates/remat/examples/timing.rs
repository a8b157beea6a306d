//! Planning times on 1000-stage chains (a unit chain and a heterogeneous one
//! resembling a deep ResNet):
//! `cargo run --release -p lowmem-remat --example timing [n]`.
//!
//! `... --example timing scaling [G] [n...]`: the optimal DP on the
//! heterogeneous chain at `G` slots (default 500) for each number of stages
//! (default 100 200 500 1000), at the budgets min + 0.1/0.3/0.6 × (store-all −
//! min): a table of seconds.
use lowmem_remat::*;
use std::time::Instant;

use lowmem_testkit::Rng;

/// The heterogeneous chain of [`lowmem_testkit::resnet_like`] from `seed`.
fn resnet_like(n: usize, seed: u64) -> Chain {
    let k = lowmem_testkit::resnet_like(&mut Rng::new(seed), n);
    Chain::new(k.fwd, k.bwd, k.input_bytes, k.saved_bytes)
        .and_then(|c| c.with_temporaries(k.fwd_tmp, k.bwd_tmp))
        .expect("valid chain")
}

fn time_optimal(c: &Chain) {
    let t = Instant::now();
    let min = min_peak_budget(c);
    let t_min = t.elapsed();
    let (sa_peak, sa_compute) = store_all(c).simulate(c).unwrap();
    println!("  min_peak_budget {min} in {t_min:?}; store-all peak {sa_peak} compute {sa_compute}");
    for frac in [0.1f64, 0.3, 0.6] {
        let budget = min + ((sa_peak - min) as f64 * frac) as u64;
        for g in [100usize, 200, 500] {
            let t = Instant::now();
            let o = optimal(c, budget, g).unwrap();
            let el = t.elapsed();
            let (p, k) = o.simulate(c).unwrap();
            assert!(p <= budget);
            println!(
                "  optimal(budget {budget} = min + {frac} (store-all - min), g={g}): peak {p} compute {k} (+{:.2}%) in {el:?}",
                (k - sa_compute) as f64 * 100.0 / sa_compute as f64
            );
        }
    }
}

/// Seconds of [`optimal`] on [`resnet_like`] chains: stages × budgets.
fn scaling(g: usize, sizes: &[usize]) {
    let fracs = [0.1f64, 0.3, 0.6];
    println!("optimal DP, heterogeneous (ResNet-like) chain, G = {g} slots: seconds");
    print!("  {:>6}", "stages");
    for f in fracs {
        print!("  {:>9}", format!("min+{f}"));
    }
    println!();
    for &n in sizes {
        let c = resnet_like(n, 0x5eed_1234_abcd_0001);
        let min = min_peak_budget(&c);
        let (sa_peak, _) = store_all(&c).simulate(&c).unwrap();
        print!("  {n:>6}");
        for f in fracs {
            let budget = min + ((sa_peak - min) as f64 * f) as u64;
            let t = Instant::now();
            let o = optimal(&c, budget, g).unwrap();
            let el = t.elapsed().as_secs_f64();
            assert!(o.simulate(&c).unwrap().0 <= budget);
            print!("  {el:>9.2}");
        }
        println!();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("scaling") {
        let g = args.get(1).map_or(500, |s| s.parse().expect("G"));
        let sizes: Vec<usize> = args.iter().skip(2).map(|s| s.parse().expect("n")).collect();
        let sizes = if sizes.is_empty() {
            vec![100, 200, 500, 1000]
        } else {
            sizes
        };
        scaling(g, &sizes);
        return;
    }
    let n: usize = std::env::args().nth(1).map_or(1000, |s| s.parse().unwrap());
    let c = Chain::unit(n);
    println!("unit chain, {n} stages");
    let t = Instant::now();
    let s = chen_sqrt_best(&c);
    let (p, k) = s.simulate(&c).unwrap();
    println!(
        "  chen_sqrt_best: peak {p} compute {k} in {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    let s = log_scheme(&c);
    let (p, k) = s.simulate(&c).unwrap();
    println!("  log_scheme: peak {p} compute {k} in {:?}", t.elapsed());
    for slots in [10usize, 32] {
        let t = Instant::now();
        let s = revolve(n, slots);
        let st = s.simulate_detailed(&c).unwrap();
        println!(
            "  revolve({slots}): peak {} compute {} advances {} in {:?}",
            st.peak_bytes,
            st.compute,
            st.forwards_plain,
            t.elapsed()
        );
        let t = Instant::now();
        let o = optimal(&c, st.peak_bytes, st.peak_bytes as usize).unwrap();
        let (p, k) = o.simulate(&c).unwrap();
        println!(
            "    optimal(budget {}, exact): peak {p} compute {k} in {:?}",
            st.peak_bytes,
            t.elapsed()
        );
    }
    time_optimal(&c);
    let c = resnet_like(n, 0x5eed_1234_abcd_0001);
    println!("heterogeneous (ResNet-like) chain, {n} stages");
    time_optimal(&c);
}
