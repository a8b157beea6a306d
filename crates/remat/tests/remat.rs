use lowmem_remat::*;
use std::time::Instant;

/// Small seeded PRNG (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn random_chain(rng: &mut Rng, n: usize, max_size: u64, temps: bool) -> Chain {
    let fwd = (0..n).map(|_| rng.range(1, 10)).collect();
    let bwd = (0..n).map(|_| rng.range(1, 20)).collect();
    let x: Vec<u64> = (0..=n).map(|_| rng.range(1, max_size)).collect();
    let a = (0..n).map(|i| x[i + 1] + rng.range(0, max_size)).collect();
    let c = Chain::new(fwd, bwd, x, a).unwrap();
    if temps {
        let ft = (0..n).map(|_| rng.range(0, 2)).collect();
        let bt = (0..n).map(|_| rng.range(0, 2)).collect();
        c.with_temporaries(ft, bt).unwrap()
    } else {
        c
    }
}

fn hand_chain() -> Chain {
    Chain::new(
        vec![1, 2, 3],
        vec![10, 20, 30],
        vec![2, 3, 4, 5],
        vec![5, 6, 7],
    )
    .unwrap()
}

#[test]
fn simulate_store_all_by_hand() {
    let c = hand_chain();
    // live after F0..F2 recorded: 2+5+6+7 = 20; loss +5 = 25;
    // B2 peak 25 + x2 = 29, then 17; B1 peak 20, then 10; B0 peak 12, then 4.
    assert_eq!(store_all(&c).simulate(&c), Ok((29, 66)));
    let c = c.with_temporaries(vec![1, 1, 1], vec![0, 0, 2]).unwrap();
    assert_eq!(store_all(&c).simulate(&c), Ok((31, 66)));
}

#[test]
fn simulate_checkpointed_by_hand() {
    let c = hand_chain();
    use Op::*;
    // Keep X_2 only: F0∅ F1∅ free X1 | F2all loss B2 | free X2 | F0all F1all B1 B0
    let s = Schedule {
        ops: vec![
            Forward {
                stage: 0,
                record: false,
            }, // 2+3 = 5
            Forward {
                stage: 1,
                record: false,
            }, // peak 9, live 9
            Free { activation: 1 }, // 6
            Forward {
                stage: 2,
                record: true,
            }, // 13
            Loss,                   // 18
            Backward { stage: 2 },  // peak 22, live 18+4-5-7 = 10
            Free { activation: 2 }, // 6
            Forward {
                stage: 0,
                record: true,
            }, // 11
            Forward {
                stage: 1,
                record: true,
            }, // 17
            Backward { stage: 1 },  // peak 20, live 17+3-4-6 = 10
            Backward { stage: 0 },  // peak 12
        ],
    };
    assert_eq!(s.simulate(&c), Ok((22, 1 + 2 + 3 + 1 + 2 + 60)));
}

#[test]
fn simulate_rejects_invalid() {
    let c = hand_chain();
    use Op::*;
    let bad = [
        vec![Forward {
            stage: 1,
            record: false,
        }],
        vec![
            Forward {
                stage: 0,
                record: false,
            },
            Loss,
        ],
        vec![
            Forward {
                stage: 0,
                record: true,
            },
            Forward {
                stage: 1,
                record: true,
            },
            Forward {
                stage: 2,
                record: false,
            },
            Loss,
            Backward { stage: 2 },
        ],
        vec![
            Forward {
                stage: 0,
                record: true,
            },
            Forward {
                stage: 1,
                record: true,
            },
            Forward {
                stage: 2,
                record: true,
            },
            Loss,
            Backward { stage: 2 },
        ],
        vec![Free { activation: 1 }],
        vec![
            Forward {
                stage: 0,
                record: false,
            },
            Forward {
                stage: 0,
                record: false,
            },
        ],
    ];
    for ops in bad {
        assert!(
            Schedule { ops: ops.clone() }.simulate(&c).is_err(),
            "{ops:?}"
        );
    }
}

/// Enumerates every schedule of the persistent family (see `rotor` docs) for
/// the extended segment `(s, t)`, calling `k` on each completed op list.
fn enumerate(s: usize, t: usize, n: usize, ops: &mut Vec<Op>, k: &mut dyn FnMut(&mut Vec<Op>)) {
    if s == n {
        ops.push(Op::Loss);
        k(ops);
        ops.pop();
        return;
    }
    if t == s + 1 {
        ops.push(Op::Forward {
            stage: s,
            record: true,
        });
        ops.push(Op::Backward { stage: s });
        k(ops);
        ops.truncate(ops.len() - 2);
        return;
    }
    ops.push(Op::Forward {
        stage: s,
        record: true,
    });
    enumerate(s + 1, t, n, ops, &mut |ops: &mut Vec<Op>| {
        ops.push(Op::Backward { stage: s });
        k(ops);
        ops.pop();
    });
    ops.pop();
    for sp in s + 1..t {
        let len = ops.len();
        for j in s..sp {
            ops.push(Op::Forward {
                stage: j,
                record: false,
            });
            if j > s {
                ops.push(Op::Free { activation: j });
            }
        }
        enumerate(sp, t, n, ops, &mut |ops: &mut Vec<Op>| {
            ops.push(Op::Free { activation: sp });
            enumerate(s, sp, n, ops, &mut *k);
            ops.pop();
        });
        ops.truncate(len);
    }
}

/// (peak, compute) of every schedule of the family, simulated.
fn all_family(c: &Chain) -> Vec<(u64, u64)> {
    let n = c.len();
    let mut out = Vec::new();
    let mut ops = Vec::new();
    let mut sched = Schedule::default();
    enumerate(0, n + 1, n, &mut ops, &mut |ops: &mut Vec<Op>| {
        sched.ops.clone_from(ops);
        out.push(sched.simulate(c).expect("family schedules are valid"));
    });
    out
}

fn check_against_brute(c: &Chain) {
    let fam = all_family(c);
    let min_peak = fam.iter().map(|p| p.0).min().unwrap();
    let max_peak = fam.iter().map(|p| p.0).max().unwrap();
    assert_eq!(min_peak_budget(c), min_peak);
    let err = optimal(c, min_peak - 1, 1000).unwrap_err();
    assert_eq!(err.min_budget, min_peak);
    for budget in min_peak..=max_peak + 1 {
        let brute = fam
            .iter()
            .filter(|p| p.0 <= budget)
            .map(|p| p.1)
            .min()
            .unwrap();
        // granularity >= budget: unit = 1 byte, no rounding
        let s = optimal(c, budget, budget as usize).unwrap();
        let (peak, compute) = s.simulate(c).unwrap();
        assert!(peak <= budget, "peak {peak} > budget {budget}");
        assert_eq!(compute, brute, "budget {budget}, chain {c:?}");
    }
}

#[test]
fn optimal_matches_brute_force_small() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    // Family sizes (large Schröder numbers): n = 7 -> 8558 schedules.
    for n in 1..=7 {
        for trial in 0..6 {
            let c = random_chain(&mut rng, n, 6, trial % 2 == 1);
            check_against_brute(&c);
        }
    }
}

#[test]
fn optimal_matches_brute_force_large() {
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    // n = 9: 206 098 schedules each.
    for trial in 0..2 {
        let c = random_chain(&mut rng, 9, 5, trial == 1);
        check_against_brute(&c);
    }
}

#[test]
fn revolve_closed_form() {
    assert_eq!(revolve_forward_count(1000, 10), 3636);
    assert_eq!(revolve_forward_count(1000, 20), 2747);
    assert_eq!(revolve_forward_count(1000, 32), 2405);
    // against the recursion t(l, s) = min_j j + t(l-j, s-1) + t(j, s)
    let (lmax, smax) = (40usize, 6usize);
    let mut t = vec![vec![0u64; smax + 1]; lmax + 1];
    for l in 2..=lmax {
        t[l][1] = (l * (l - 1) / 2) as u64;
        for s in 2..=smax {
            t[l][s] = (1..l)
                .map(|j| j as u64 + t[l - j][s - 1] + t[j][s])
                .min()
                .unwrap();
        }
    }
    for (l, row) in t.iter().enumerate().skip(1) {
        for (s, &want) in row.iter().enumerate().skip(1) {
            assert_eq!(
                revolve_forward_count(l as u64, s as u64),
                want,
                "l={l} s={s}"
            );
        }
    }
}

#[test]
fn revolve_schedule_counts() {
    for &(l, s) in &[
        (1000usize, 10usize),
        (1000, 20),
        (1000, 32),
        (1, 1),
        (7, 1),
        (17, 3),
        (64, 5),
        (10, 20),
    ] {
        let c = Chain::unit(l);
        let st = revolve(l, s).simulate_detailed(&c).unwrap();
        assert_eq!(
            st.forwards_plain,
            revolve_forward_count(l as u64, s as u64),
            "l={l} s={s}"
        );
        assert_eq!(st.forwards_recorded, l as u64);
        // at most s checkpoints plus the current boundary
        assert!(
            st.max_live_activations <= s + 1,
            "l={l} s={s}: {}",
            st.max_live_activations
        );
    }
}

#[test]
fn classic_schemes_are_valid() {
    let mut rng = Rng(42);
    for n in [1usize, 2, 3, 10, 37] {
        let c = random_chain(&mut rng, n, 8, true);
        for s in [
            store_all(&c),
            chen_sqrt_best(&c),
            chen_sqrt(&c, 10),
            log_scheme(&c),
        ] {
            s.simulate(&c).unwrap();
        }
    }
    let c = Chain::unit(64);
    let st = log_scheme(&c).simulate_detailed(&c).unwrap();
    assert!(st.max_live_activations <= 8, "{st:?}");
    assert_eq!(st.forwards_plain, 64 * 6 / 2);
}

#[test]
fn optimal_beats_classic_schemes() {
    let mut rng = Rng(7);
    for trial in 0..12 {
        let n = 6 + trial * 2;
        let c = random_chain(&mut rng, n, 8, trial % 3 == 0);
        let mut scheds = vec![store_all(&c), chen_sqrt_best(&c), log_scheme(&c)];
        for b in [4, 8, 16, 32] {
            scheds.push(chen_sqrt(&c, b));
        }
        for s in scheds {
            let (peak, compute) = s.simulate(&c).unwrap();
            let o = optimal(&c, peak, peak as usize).unwrap();
            let (op, oc) = o.simulate(&c).unwrap();
            assert!(
                op <= peak && oc <= compute,
                "n={n}: optimal ({op},{oc}) vs ({peak},{compute})"
            );
        }
    }
    // equal unit costs: optimal matches Revolve's forward count at Revolve's peak
    let l = 60;
    let c = Chain::unit(l);
    for s in 1..=8 {
        let (peak, compute) = revolve(l, s).simulate(&c).unwrap();
        let o = optimal(&c, peak, peak as usize).unwrap();
        let (op, oc) = o.simulate(&c).unwrap();
        assert!(
            op <= peak && oc <= compute,
            "s={s}: ({op},{oc}) vs ({peak},{compute})"
        );
    }
}

#[test]
fn infeasible_budget_reports_minimum() {
    let mut rng = Rng(99);
    for n in [3usize, 12, 40] {
        let c = random_chain(&mut rng, n, 50, true);
        let min = min_peak_budget(&c);
        for g in [4usize, 16, 1000] {
            let e = optimal(&c, min - 1, g).unwrap_err();
            assert_eq!(e.min_budget, min);
            let s = optimal(&c, e.min_budget, g).unwrap();
            assert!(s.simulate(&c).unwrap().0 <= min);
        }
    }
}

#[test]
fn thousand_stage_unit_chain() {
    let n = 1000;
    let c = Chain::unit(n);
    let t = Instant::now();
    let s = chen_sqrt_best(&c);
    let (sp, sc) = s.simulate(&c).unwrap();
    let t_sqrt = t.elapsed();
    let t = Instant::now();
    let r = revolve(n, 32);
    let (rp, rc) = r.simulate(&c).unwrap();
    let t_rev = t.elapsed();
    assert!(sp < 100 && rp < 100, "sqrt {sp}, revolve {rp}");
    eprintln!(
        "sqrt: peak {sp} compute {sc} in {t_sqrt:?}; revolve(32): peak {rp} compute {rc} in {t_rev:?}"
    );
    // The O(n³·G) DP is too slow for 1000 stages in the unoptimised test
    // profile (release: see examples/timing.rs); check 150 stages here.
    let n = 150;
    let c = Chain::unit(n);
    let (rp, rc) = revolve(n, 6).simulate(&c).unwrap();
    let t = Instant::now();
    let o = optimal(&c, rp, rp as usize).unwrap();
    let (op, oc) = o.simulate(&c).unwrap();
    eprintln!(
        "optimal(150 stages, budget {rp}): peak {op} compute {oc} (revolve {rc}) in {:?}",
        t.elapsed()
    );
    assert!(op <= rp && oc <= rc);
}
