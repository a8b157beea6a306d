use std::time::Duration;

use lowmem_plan::{
    Buffer, best_fit_heap, greedy_by_breadth, greedy_by_size, lower_bound, pack, read_csv, verify,
    write_csv,
};
use lowmem_testkit::Rng;
use proptest::prelude::*;

fn buf(lower: u64, upper: u64, size: u64) -> Buffer {
    Buffer { lower, upper, size }
}

/// Exact optimum for tiny instances: every placement order decoded with "lowest feasible
/// (aligned) offset". Sorting any optimal packing by offset gives an order whose decoding puts
/// every buffer at or below its offset there, so the minimum over all orders is optimal.
fn optimum(bufs: &[Buffer], align: u64) -> u64 {
    fn first_fit(bufs: &[Buffer], order: &[usize], align: u64) -> u64 {
        let mut offs = vec![0u64; bufs.len()];
        let mut placed: Vec<usize> = Vec::new();
        let mut height = 0;
        for &i in order {
            let b = bufs[i];
            if b.size == 0 || b.lower >= b.upper {
                continue;
            }
            let mut o = 0;
            loop {
                let clash = placed.iter().find(|&&j| {
                    bufs[j].overlaps_in_time(&b)
                        && offs[j] < o + b.size
                        && o < offs[j] + bufs[j].size
                });
                match clash {
                    Some(&j) => o = (offs[j] + bufs[j].size).div_ceil(align) * align,
                    None => break,
                }
            }
            offs[i] = o;
            height = height.max(o + b.size);
            placed.push(i);
        }
        height
    }
    fn rec(
        bufs: &[Buffer],
        order: &mut Vec<usize>,
        used: &mut Vec<bool>,
        align: u64,
        best: &mut u64,
    ) {
        if order.len() == bufs.len() {
            *best = (*best).min(first_fit(bufs, order, align));
            return;
        }
        for i in 0..bufs.len() {
            if !used[i] {
                used[i] = true;
                order.push(i);
                rec(bufs, order, used, align, best);
                order.pop();
                used[i] = false;
            }
        }
    }
    let mut best = u64::MAX;
    rec(
        bufs,
        &mut Vec::new(),
        &mut vec![false; bufs.len()],
        align,
        &mut best,
    );
    best
}

fn instance(max_n: usize, horizon: u64, max_size: u64) -> impl Strategy<Value = Vec<Buffer>> {
    prop::collection::vec((0..horizon, 0..horizon, 0..=max_size), 0..=max_n).prop_map(|v| {
        v.into_iter()
            .map(|(a, b, s)| buf(a.min(b), a.max(b) + u64::from(a == b && s % 3 != 0), s))
            .collect()
    })
}

#[test]
fn verify_accepts_good_and_rejects_bad() {
    let bufs = [buf(0, 10, 100), buf(5, 15, 50), buf(10, 20, 100)];
    // Buffer 2 starts when buffer 0 ends: half-open ranges may share bytes.
    assert_eq!(verify(&bufs, &[0, 100, 0], 1), Ok(150));
    assert_eq!(verify(&bufs, &[0, 256, 0], 256), Ok(306));
    let err = verify(&bufs, &[0, 99, 0], 1).unwrap_err().to_string();
    assert!(
        err.contains("buffer 0") && err.contains("buffer 1"),
        "{err}"
    );
    assert!(
        err.contains("[0, 100)") && err.contains("[99, 149)"),
        "{err}"
    );
    let err = verify(&bufs, &[0, 100, 120], 1).unwrap_err().to_string();
    assert!(
        err.contains("buffer 1") && err.contains("buffer 2"),
        "{err}"
    );
    let err = verify(&bufs, &[0, 100, 0], 256).unwrap_err().to_string();
    assert!(
        err.contains("buffer 1") && err.contains("multiple of 256"),
        "{err}"
    );
    // Zero-size and empty-range buffers never clash.
    let bufs = [buf(0, 10, 100), buf(3, 3, 100), buf(0, 10, 0)];
    assert_eq!(verify(&bufs, &[0, 0, 50], 1), Ok(100));
    // Offsets that overflow are an error, not a panic.
    assert!(verify(&[buf(0, 1, 10)], &[u64::MAX - 5], 1).is_err());
    assert!(verify(&[buf(0, 1, 10)], &[], 1).is_err());
}

#[test]
fn huge_values_do_not_panic() {
    let bufs = [
        buf(0, u64::MAX, u64::MAX / 2),
        buf(1, 5, u64::MAX / 2),
        buf(2, 3, u64::MAX / 2),
    ];
    assert_eq!(lower_bound(&bufs), u64::MAX);
    for p in [
        greedy_by_size(&bufs, 256),
        greedy_by_breadth(&bufs, 256),
        best_fit_heap(&bufs, 256),
    ] {
        let _ = verify(&bufs, &p.offsets, 256);
    }
    let p = pack(&bufs, 256, Duration::from_millis(50));
    assert_eq!(p.offsets.len(), 3);
}

#[test]
fn csv_round_trip_and_errors() {
    let text = "id,lower,upper,size\n0,0,10,100\n\nx,5,15,50\n";
    let rows = read_csv(text).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1], ("x".to_string(), buf(5, 15, 50)));
    let ids: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let bufs: Vec<Buffer> = rows.iter().map(|r| r.1).collect();
    let out = write_csv(&ids, &bufs, &[0, 100]);
    assert_eq!(
        out,
        "id,lower,upper,size,offset\n0,0,10,100,0\nx,5,15,50,100\n"
    );
    assert_eq!(read_csv(&out).unwrap(), rows);
    assert!(
        read_csv("id,lower,upper,size\n0,10,5,1\n")
            .unwrap_err()
            .to_string()
            .contains("line 2")
    );
    assert!(
        read_csv("id,lower,upper,size\n0,1,5\n")
            .unwrap_err()
            .to_string()
            .contains("line 2")
    );
    assert!(
        read_csv("id,lower,upper,size\n0,1,5,z\n")
            .unwrap_err()
            .to_string()
            .contains("line 2")
    );
    assert!(
        read_csv("a,b\n")
            .unwrap_err()
            .to_string()
            .contains("line 1")
    );
}

#[test]
fn tiny_instances_reach_the_optimum() {
    // Deterministic pseudo-random tiny instances; also reports the heuristics' mean gap.
    let mut rng = Rng::new(1);
    let mut next = |m: u64| rng.below(m);
    let names = [
        "greedy-by-size",
        "greedy-by-breadth",
        "best-fit-heap",
        "pack",
    ];
    let mut ratio_sum = [0f64; 4];
    let mut optimal = [0usize; 4];
    let trials = 300;
    for t in 0..trials {
        let n = 2 + (t % 6) as usize; // 2..=7 buffers
        let bufs: Vec<Buffer> = (0..n)
            .map(|_| {
                let a = next(8);
                buf(a, a + 1 + next(5), 1 + next(9))
            })
            .collect();
        let align = if t % 5 == 0 { 4 } else { 1 };
        let opt = optimum(&bufs, align);
        let results = [
            greedy_by_size(&bufs, align),
            greedy_by_breadth(&bufs, align),
            best_fit_heap(&bufs, align),
            pack(&bufs, align, Duration::from_secs(10)),
        ];
        for (k, p) in results.iter().enumerate() {
            assert_eq!(
                verify(&bufs, &p.offsets, align),
                Ok(p.height),
                "{} {bufs:?}",
                names[k]
            );
            assert!(
                p.height >= opt,
                "{} beats the optimum on {bufs:?}",
                names[k]
            );
            ratio_sum[k] += p.height as f64 / opt as f64;
            optimal[k] += usize::from(p.height == opt);
        }
        if align == 1 {
            assert_eq!(results[3].height, opt, "pack is not optimal on {bufs:?}");
        } else {
            // Sizes are padded to the alignment in the search: within one alignment unit.
            assert!(
                results[3].height < opt + align,
                "pack {} vs {opt} on {bufs:?}",
                results[3].height
            );
        }
    }
    for k in 0..4 {
        println!(
            "{:>18}: mean height / optimum {:.4}, optimal in {}/{trials}",
            names[k],
            ratio_sum[k] / trials as f64,
            optimal[k]
        );
    }
}

#[test]
fn pack_on_minimalloc_a() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/benchmarks/minimalloc/A.csv"
    );
    let Ok(text) = std::fs::read_to_string(path) else {
        eprintln!("skipping: {path} not found");
        return;
    };
    let bufs: Vec<Buffer> = read_csv(&text).unwrap().into_iter().map(|r| r.1).collect();
    let greedy = greedy_by_size(&bufs, 1);
    let p = pack(&bufs, 1, Duration::from_secs(2));
    assert_eq!(verify(&bufs, &p.offsets, 1), Ok(p.height));
    assert!(p.height <= greedy.height);
    assert!(p.height >= lower_bound(&bufs));
}

#[test]
#[ignore = "timing: run with --release -- --ignored --nocapture"]
fn greedy_scales_to_100k_buffers() {
    let mut rng = Rng::new(12345);
    let mut next = |m: u64| rng.below(m);
    let bufs: Vec<Buffer> = (0..100_000)
        .map(|_| {
            let a = next(1_000_000);
            buf(a, a + 1 + next(2_000), 1 + next(1 << 20))
        })
        .collect();
    for f in [greedy_by_size, greedy_by_breadth, best_fit_heap] {
        let t = std::time::Instant::now();
        let p = f(&bufs, 256);
        let el = t.elapsed();
        let tv = std::time::Instant::now();
        assert_eq!(verify(&bufs, &p.offsets, 256), Ok(p.height));
        println!(
            "{}: {:.3} s, height / lower bound {:.4}, verify {:.3} s",
            p.heuristic,
            el.as_secs_f64(),
            p.height as f64 / lower_bound(&bufs) as f64,
            tv.elapsed().as_secs_f64()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn every_method_is_valid(bufs in instance(40, 50, 300), align_pow in 0u32..4) {
        let align = 1u64 << (2 * align_pow);
        let lb = lower_bound(&bufs);
        let results = [
            greedy_by_size(&bufs, align),
            greedy_by_breadth(&bufs, align),
            best_fit_heap(&bufs, align),
            pack(&bufs, align, Duration::from_millis(20)),
        ];
        for p in &results {
            prop_assert_eq!(verify(&bufs, &p.offsets, align), Ok(p.height), "{}", p.heuristic);
            prop_assert!(p.height >= lb);
        }
        prop_assert!(results[3].height <= results[0].height);
    }
}
