//! Record options (Rockmate's scheme): the DP against brute force over the family of
//! persistent schedules times every choice of option per stage.

use lowmem_remat::*;
use lowmem_testkit::Rng;

/// A random chain whose stages offer up to `max_opts` extra record options: smaller records
/// and forward temporaries, larger backward temporaries, extra backward cost.
fn chain_with_options(rng: &mut Rng, n: usize, max_opts: u64, big_costs: bool) -> Chain {
    let fwd: Vec<u64> = (0..n)
        .map(|_| {
            if big_costs {
                rng.range_u64(1_000_000_000, 4_000_000_001)
            } else {
                rng.range_u64(1, 11)
            }
        })
        .collect();
    let bwd = fwd.iter().map(|&f| 2 * f + rng.range_u64(0, 5)).collect();
    let x: Vec<u64> = (0..=n).map(|_| rng.range_u64(1, 7)).collect();
    let a: Vec<u64> = (0..n).map(|i| x[i + 1] + rng.range_u64(2, 9)).collect();
    let ft: Vec<u64> = (0..n).map(|_| rng.range_u64(0, 3)).collect();
    let bt: Vec<u64> = (0..n).map(|_| rng.range_u64(0, 3)).collect();
    let options = (0..n)
        .map(|i| {
            (0..rng.range_u64(0, max_opts + 1))
                .map(|_| {
                    let saved = rng.range_u64(x[i + 1], a[i] + 1);
                    RecordOption {
                        saved_bytes: saved,
                        fwd_tmp: ft[i],
                        bwd_tmp: bt[i] + rng.range_u64(0, a[i] - saved + 2),
                        recompute: if big_costs {
                            rng.range_u64(1, fwd[i] / 2)
                        } else {
                            rng.range_u64(1, 6)
                        },
                    }
                })
                .collect()
        })
        .collect();
    Chain::new(fwd, bwd, x, a)
        .and_then(|c| c.with_temporaries(ft, bt))
        .and_then(|c| c.with_options(options))
        .unwrap()
}

/// Every schedule of the persistent family (see the `rotor` docs) for segment `(s, t)`,
/// as op lists.
fn family(s: usize, t: usize, n: usize) -> Vec<Vec<Action>> {
    if s == n {
        return vec![vec![Action::Loss]];
    }
    let rec = Action::Forward {
        stage: s,
        record: true,
    };
    let back = Action::Backward { stage: s };
    if t == s + 1 {
        return vec![vec![rec, back]];
    }
    let mut out = Vec::new();
    for sub in family(s + 1, t, n) {
        let mut ops = vec![rec];
        ops.extend(sub);
        ops.push(back);
        out.push(ops);
    }
    for sp in s + 1..t {
        let mut adv = Vec::new();
        for j in s..sp {
            adv.push(Action::Forward {
                stage: j,
                record: false,
            });
            if j > s {
                adv.push(Action::Free { activation: j });
            }
        }
        let lefts = family(s, sp, n);
        for right in family(sp, t, n) {
            for left in &lefts {
                let mut ops = adv.clone();
                ops.extend(right.iter().copied());
                ops.push(Action::Free { activation: sp });
                ops.extend(left.iter().copied());
                out.push(ops);
            }
        }
    }
    out
}

/// `best[p]`: the least compute of a schedule with options whose peak is `p`.
fn brute_force(c: &Chain) -> Vec<Option<u64>> {
    let n = c.len();
    let mut best: Vec<Option<u64>> = Vec::new();
    let fam = family(0, n + 1, n);
    let mut opts = vec![0usize; n];
    loop {
        for ops in &fam {
            let s = Schedule {
                ops: ops.clone(),
                options: opts.clone(),
            };
            let (p, k) = s.simulate(c).unwrap();
            let p = p as usize;
            if p >= best.len() {
                best.resize(p + 1, None);
            }
            best[p] = Some(best[p].map_or(k, |b| b.min(k)));
        }
        // next option assignment (odometer)
        let mut i = 0;
        while i < n {
            opts[i] += 1;
            if opts[i] < c.option_count(i) {
                break;
            }
            opts[i] = 0;
            i += 1;
        }
        if i == n {
            return best;
        }
    }
}

fn check(c: &Chain) {
    let best = brute_force(c);
    let min_peak = best.iter().position(Option::is_some).unwrap() as u64;
    let max_peak = best.iter().rposition(Option::is_some).unwrap() as u64;
    assert_eq!(min_peak_budget(c), min_peak, "{c:?}");
    assert_eq!(
        optimal(c, min_peak - 1, 1000).unwrap_err().min_budget,
        min_peak
    );
    let mut brute: Option<u64> = None;
    for budget in min_peak..=max_peak + 1 {
        if let Some(&Some(v)) = best.get(budget as usize) {
            brute = Some(brute.map_or(v, |b| b.min(v)));
        }
        let s = optimal(c, budget, budget as usize).unwrap();
        let (peak, compute) = s.simulate(c).unwrap();
        assert!(peak <= budget, "peak {peak} > budget {budget}");
        assert_eq!(Some(compute), brute, "budget {budget}, chain {c:?}");
    }
}

#[test]
fn optimal_with_options_matches_brute_force() {
    let mut rng = Rng::new(0x0971_0a5e_b00c_2023);
    for n in 1..=5 {
        for trial in 0..8 {
            let c = chain_with_options(&mut rng, n, if n <= 3 { 3 } else { 2 }, trial % 4 == 3);
            check(&c);
        }
    }
}

#[test]
fn options_lower_the_least_peak() {
    // Stage 0, the larger record, can shrink from 10 to 3 bytes at a cost of 4.
    let c = Chain::new(vec![5, 5], vec![10, 10], vec![1, 1, 1], vec![10, 2])
        .and_then(|c| {
            c.with_options(vec![
                vec![RecordOption {
                    saved_bytes: 3,
                    fwd_tmp: 0,
                    bwd_tmp: 2,
                    recompute: 4,
                }],
                vec![],
            ])
        })
        .unwrap();
    let plain = Chain {
        options: vec![vec![], vec![]],
        ..c.clone()
    };
    assert!(min_peak_budget(&c) < min_peak_budget(&plain));
    let s = optimal(&c, min_peak_budget(&c), 1000).unwrap();
    assert_eq!(s.option(0), 1);
    check(&c);
}
