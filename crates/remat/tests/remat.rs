use lowmem_remat::*;
use std::time::Instant;

use lowmem_testkit::Rng;

fn random_chain(rng: &mut Rng, n: usize, max_size: u64, temps: bool) -> Chain {
    let fwd = (0..n).map(|_| rng.range_u64(1, 11)).collect();
    let bwd = (0..n).map(|_| rng.range_u64(1, 21)).collect();
    let x: Vec<u64> = (0..=n).map(|_| rng.range_u64(1, max_size + 1)).collect();
    let a = (0..n)
        .map(|i| x[i + 1] + rng.range_u64(0, max_size + 1))
        .collect();
    let c = Chain::new(fwd, bwd, x, a).unwrap();
    if temps {
        let ft = (0..n).map(|_| rng.range_u64(0, 3)).collect();
        let bt = (0..n).map(|_| rng.range_u64(0, 3)).collect();
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
    use Action::*;
    // Keep X_2 only: F0∅ F1∅ free X1 | F2all loss B2 | free X2 | F0all F1all B1 B0
    let s = Schedule::new(vec![
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
    ]);
    assert_eq!(s.simulate(&c), Ok((22, 1 + 2 + 3 + 1 + 2 + 60)));
}

#[test]
fn simulate_rejects_invalid() {
    let c = hand_chain();
    use Action::*;
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
        assert!(Schedule::new(ops.clone()).simulate(&c).is_err(), "{ops:?}");
    }
}

/// An incremental simulator, independent of `Schedule::simulate` and of the
/// DP: applies ops one at a time to a live state (same semantics as the crate
/// docs) and undoes them in reverse order, tracking peak and compute.
struct IncSim<'a> {
    c: &'a Chain,
    x_live: Vec<bool>,
    r_live: Vec<bool>,
    grad: Option<usize>,
    live: u64,
    peak: u64,
    compute: u64,
    /// Applied ops with the peak before each.
    stack: Vec<(Action, u64)>,
}

impl<'a> IncSim<'a> {
    fn new(c: &'a Chain) -> Self {
        let n = c.len();
        let mut x_live = vec![false; n + 1];
        x_live[0] = true;
        IncSim {
            c,
            x_live,
            r_live: vec![false; n],
            grad: None,
            live: c.input_bytes[0],
            peak: c.input_bytes[0],
            compute: 0,
            stack: Vec::new(),
        }
    }

    fn avail(&self, j: usize) -> bool {
        self.x_live[j] || (j > 0 && self.r_live[j - 1])
    }

    /// Applies `op`, panicking if it is invalid.
    fn push(&mut self, op: Action) {
        let c = self.c;
        let n = c.len();
        let x = &c.input_bytes;
        self.stack.push((op, self.peak));
        match op {
            Action::Forward { stage: i, record } => {
                assert!(self.avail(i), "{op:?}: input not available");
                self.compute += c.fwd[i];
                if record {
                    assert!(!self.r_live[i]);
                    self.peak = self.peak.max(self.live + c.saved_bytes[i] + c.fwd_tmp[i]);
                    self.r_live[i] = true;
                    self.live += c.saved_bytes[i];
                } else {
                    assert!(!self.x_live[i + 1]);
                    self.peak = self.peak.max(self.live + x[i + 1] + c.fwd_tmp[i]);
                    self.x_live[i + 1] = true;
                    self.live += x[i + 1];
                }
            }
            Action::Loss => {
                assert!(self.grad.is_none() && self.avail(n));
                self.live += x[n];
                self.peak = self.peak.max(self.live);
                self.grad = Some(n);
            }
            Action::Backward { stage: i } => {
                assert!(self.grad == Some(i + 1) && self.r_live[i] && self.avail(i));
                self.peak = self.peak.max(self.live + x[i] + c.bwd_tmp[i]);
                self.live = self.live + x[i] - x[i + 1] - c.saved_bytes[i];
                self.r_live[i] = false;
                self.grad = Some(i);
                self.compute += c.bwd[i];
            }
            Action::Free { activation: j } => {
                assert!(self.x_live[j]);
                self.x_live[j] = false;
                self.live -= x[j];
            }
        }
    }

    /// Undoes the last applied op.
    fn pop(&mut self) {
        let c = self.c;
        let x = &c.input_bytes;
        let (op, peak) = self.stack.pop().expect("an op to undo");
        self.peak = peak;
        match op {
            Action::Forward { stage: i, record } => {
                self.compute -= c.fwd[i];
                if record {
                    self.r_live[i] = false;
                    self.live -= c.saved_bytes[i];
                } else {
                    self.x_live[i + 1] = false;
                    self.live -= x[i + 1];
                }
            }
            Action::Loss => {
                self.live -= x[c.len()];
                self.grad = None;
            }
            Action::Backward { stage: i } => {
                self.live = self.live + x[i + 1] + c.saved_bytes[i] - x[i];
                self.r_live[i] = true;
                self.grad = Some(i + 1);
                self.compute -= c.bwd[i];
            }
            Action::Free { activation: j } => {
                self.x_live[j] = true;
                self.live += x[j];
            }
        }
    }

    fn ops(&self) -> Vec<Action> {
        self.stack.iter().map(|&(op, _)| op).collect()
    }
}

/// Walks every schedule of the persistent family (see the `rotor` docs) for
/// the extended segment `(s, t)` on the simulator, calling `k` after each
/// completed sub-schedule (the ops stay applied during the call).
fn walk(s: usize, t: usize, n: usize, sim: &mut IncSim, k: &mut dyn FnMut(&mut IncSim)) {
    if s == n {
        sim.push(Action::Loss);
        k(sim);
        sim.pop();
        return;
    }
    if t == s + 1 {
        sim.push(Action::Forward {
            stage: s,
            record: true,
        });
        sim.push(Action::Backward { stage: s });
        k(sim);
        sim.pop();
        sim.pop();
        return;
    }
    // record s
    sim.push(Action::Forward {
        stage: s,
        record: true,
    });
    walk(s + 1, t, n, sim, &mut |sim: &mut IncSim| {
        sim.push(Action::Backward { stage: s });
        k(sim);
        sim.pop();
    });
    sim.pop();
    // checkpoint sp: advance, right part, free X_sp, left part
    for sp in s + 1..t {
        let mut pushed = 0;
        for j in s..sp {
            sim.push(Action::Forward {
                stage: j,
                record: false,
            });
            pushed += 1;
            if j > s {
                sim.push(Action::Free { activation: j });
                pushed += 1;
            }
        }
        walk(sp, t, n, sim, &mut |sim: &mut IncSim| {
            sim.push(Action::Free { activation: sp });
            walk(s, sp, n, sim, &mut *k);
            sim.pop();
        });
        for _ in 0..pushed {
            sim.pop();
        }
    }
}

/// Brute force over the family: `best[p]` = the smallest compute of a
/// schedule with peak exactly `p` (`None` if none), and the number of
/// schedules. With `check`, every schedule is also run through
/// `Schedule::simulate`, which must agree with the incremental simulator.
fn brute_force(c: &Chain, check: bool) -> (Vec<Option<u64>>, u64) {
    let n = c.len();
    let mut best = Vec::new();
    let mut count = 0u64;
    let mut sim = IncSim::new(c);
    walk(0, n + 1, n, &mut sim, &mut |sim: &mut IncSim| {
        assert_eq!(sim.grad, Some(0));
        count += 1;
        let p = sim.peak as usize;
        if p >= best.len() {
            best.resize(p + 1, None);
        }
        best[p] = Some(best[p].map_or(sim.compute, |b: u64| b.min(sim.compute)));
        if check {
            let sched = Schedule::new(sim.ops());
            assert_eq!(sched.simulate(c), Ok((sim.peak, sim.compute)), "{sched:?}");
        }
    });
    (best, count)
}

/// Large Schröder numbers: the size of the family for `n` stages.
const FAMILY_SIZE: [u64; 13] = [
    1, 2, 6, 22, 90, 394, 1806, 8558, 41586, 206098, 1037718, 5293446, 27297738,
];

/// `optimal` against brute force on every budget from one below the minimum
/// peak to one above the largest peak of the family, with 1-byte slots.
fn check_against_brute(c: &Chain, check_sim: bool) {
    let n = c.len();
    let (best, count) = brute_force(c, check_sim);
    assert_eq!(count, FAMILY_SIZE[n]);
    let min_peak = best.iter().position(Option::is_some).unwrap() as u64;
    let max_peak = best.iter().rposition(Option::is_some).unwrap() as u64;
    assert_eq!(min_peak_budget(c), min_peak);
    let err = optimal(c, min_peak - 1, 1000).unwrap_err();
    assert_eq!(err.min_budget, min_peak);
    let mut brute: Option<u64> = None;
    for budget in min_peak..=max_peak + 1 {
        if let Some(&Some(v)) = best.get(budget as usize) {
            brute = Some(brute.map_or(v, |b| b.min(v)));
        }
        // granularity >= budget: unit = 1 byte, no rounding
        let s = optimal(c, budget, budget as usize).unwrap();
        let (peak, compute) = s.simulate(c).unwrap();
        assert!(peak <= budget, "peak {peak} > budget {budget}");
        assert_eq!(Some(compute), brute, "budget {budget}, chain {c:?}");
    }
}

#[test]
fn incremental_simulator_matches_simulate() {
    let mut rng = Rng::new(0x0bad_cafe_1234_5678);
    for (n, &size) in FAMILY_SIZE.iter().enumerate().take(8).skip(1) {
        for trial in 0..3 {
            let c = random_chain(&mut rng, n, 6, trial != 0);
            let (_, count) = brute_force(&c, true);
            assert_eq!(count, size);
        }
    }
}

#[test]
fn optimal_matches_brute_force_small() {
    let mut rng = Rng::new(0x1234_5678_9abc_def1);
    for n in 1..=9 {
        for trial in 0..6 {
            let c = random_chain(&mut rng, n, 6, trial % 2 == 1);
            check_against_brute(&c, false);
        }
    }
}

#[test]
fn optimal_matches_brute_force_10_to_12() {
    // The acceptance criterion: chains of up to 12 stages with random costs
    // (27 297 738 schedules for n = 12), every budget of the family's range.
    let mut rng = Rng::new(0xdead_beef_cafe_f00d);
    for (n, trials) in [(10, 3), (11, 2), (12, 2)] {
        for trial in 0..trials {
            let c = random_chain(&mut rng, n, 5, trial % 2 == 1);
            check_against_brute(&c, false);
        }
    }
}

#[test]
fn optimal_matches_brute_force_large_costs() {
    // Costs of the order of real FLOP counts exercise the 64-bit tables; a
    // common factor of the forward costs exercises their gcd scaling.
    let mut rng = Rng::new(0x5151_2323_abab_0101);
    for n in [3usize, 6, 8, 9] {
        for trial in 0..3 {
            let mut c = random_chain(&mut rng, n, 6, trial != 1);
            for i in 0..n {
                c.fwd[i] = match trial {
                    0 => rng.range_u64(1_000_000_000, 4_000_000_001),
                    1 => rng.range_u64(1, 41) << 20,
                    _ => rng.range_u64(0, 4),
                };
                c.bwd[i] = 2 * c.fwd[i] + rng.range_u64(0, 1001);
            }
            check_against_brute(&c, false);
        }
    }
}

/// The chain with every size rounded up to `unit`-byte slots (the DP's view).
fn rounded(c: &Chain, unit: u64) -> Chain {
    let q = |v: &Vec<u64>| v.iter().map(|&b| b.div_ceil(unit)).collect::<Vec<u64>>();
    Chain::new(
        c.fwd.clone(),
        c.bwd.clone(),
        q(&c.input_bytes),
        q(&c.saved_bytes),
    )
    .and_then(|r| r.with_temporaries(q(&c.fwd_tmp), q(&c.bwd_tmp)))
    .unwrap()
}

#[test]
fn optimal_is_exact_for_the_discretised_problem() {
    // With coarse slots, `optimal` equals brute force over the family on the
    // rounded chain and the rounded-down budget.
    let mut rng = Rng::new(0x7777_1111_2222_3333);
    for trial in 0..8 {
        let n = 6 + trial % 4;
        let c = random_chain(&mut rng, n, 200, trial % 2 == 1);
        let lo = min_peak_budget(&c);
        let (hi, _) = store_all(&c).simulate(&c).unwrap();
        for g in [5usize, 12, 30] {
            for step in 0..6 {
                let budget = lo + (hi - lo) * step / 6;
                let s = optimal(&c, budget, g).unwrap();
                let (peak, compute) = s.simulate(&c).unwrap();
                assert!(peak <= budget);
                let unit = budget.div_ceil(g as u64);
                let r = rounded(&c, unit);
                let slots = budget / unit;
                let (best, _) = brute_force(&r, false);
                let brute = best[..=(slots as usize).min(best.len() - 1)]
                    .iter()
                    .flatten()
                    .min()
                    .copied();
                if let Some(brute) = brute {
                    assert_eq!(compute, brute, "g {g}, budget {budget}, chain {c:?}");
                    let (rp, rc) = s.simulate(&r).unwrap();
                    assert!(rp <= slots && rc == compute);
                }
            }
        }
    }
}

/// A plain `O(n³·G)` implementation of the recurrence of the `rotor` docs
/// (minimum compute of `P(0, n + 1, ·)` with sizes in `unit`-byte slots), to
/// cross-check the optimised DP (windows, filter, shared rows, threads) on
/// chains too long for brute force. `None` if infeasible.
fn reference_dp(c: &Chain, budget: u64, granularity: usize) -> Option<u64> {
    let n = c.len();
    let nn = n + 1;
    let unit = budget.div_ceil(granularity as u64).max(1);
    let q = |v: u64| v.div_ceil(unit);
    let mut x: Vec<u64> = c.input_bytes.iter().map(|&v| q(v)).collect();
    x.push(0);
    let ext = |v: &[u64]| -> Vec<u64> { v.iter().map(|&v| q(v)).chain([0]).collect() };
    let (a, ft, bt) = (ext(&c.saved_bytes), ext(&c.fwd_tmp), ext(&c.bwd_tmp));
    let mut fwd = c.fwd.clone();
    fwd.push(0);
    let mut bwd = c.bwd.clone();
    bwd.push(0);
    let m0 = (budget / unit).checked_sub(x[0])? as usize;
    let w = m0 + 1;
    const INF: u64 = u64::MAX / 4;
    let id = |s: usize, t: usize| (s * (nn + 1) + t) * w;
    let mut cost = vec![INF; (nn + 1) * (nn + 1) * w];
    for len in 1..=nn {
        for s in 0..=nn - len {
            let t = s + len;
            for m in 0..w {
                let mu = m as u64;
                let mut best = INF;
                if len == 1 {
                    let peak = if s == n {
                        x[s]
                    } else {
                        (x[t] + a[s] + ft[s]).max(x[t] + a[s] + x[s] + bt[s])
                    };
                    if peak <= mu {
                        best = fwd[s] + bwd[s];
                    }
                } else {
                    let need = (x[t] + a[s] + ft[s]).max(a[s] + x[s + 1] + x[s] + bt[s]);
                    if need <= mu {
                        let sub = cost[id(s + 1, t) + m - a[s] as usize];
                        best = best.min(fwd[s] + bwd[s] + sub);
                    }
                    let mut fp = 0;
                    let mut fs = 0;
                    for sp in s + 1..t {
                        let k = sp - 1;
                        fp = fp.max(x[t] + if k > s { x[k] } else { 0 } + x[k + 1] + ft[k]);
                        fs += fwd[k];
                        if fp <= mu && x[sp] <= mu {
                            let r = cost[id(sp, t) + m - x[sp] as usize];
                            let l = cost[id(s, sp) + m];
                            best = best.min(fs + r + l);
                        }
                    }
                }
                cost[id(s, t) + m] = best.min(INF);
            }
        }
    }
    let v = cost[id(0, nn) + m0];
    (v < INF).then_some(v)
}

/// A chain of repeated blocks (three stage kinds, a transition every 20
/// stages), like a ResNet: many identical sub-chains.
fn repeated_chain(rng: &mut Rng, n: usize, big: bool) -> Chain {
    let kinds: Vec<(u64, u64, u64, u64)> = (0..3)
        .map(|_| {
            let f = if big {
                rng.range_u64(1_000_000_000, 4_000_000_001)
            } else {
                rng.range_u64(1, 11)
            };
            (f, 2 * f, rng.range_u64(2, 9), rng.range_u64(1, 4))
        })
        .collect();
    let mut x = vec![4u64];
    let (mut fwd, mut bwd, mut a, mut tmp) = (vec![], vec![], vec![], vec![]);
    for i in 0..n {
        let (f, b, ar, tm) = kinds[i % 3];
        let xo = if i % 20 == 19 {
            3 + (i / 20 % 3) as u64
        } else {
            x[i]
        };
        fwd.push(f);
        bwd.push(b);
        a.push(xo + ar);
        tmp.push(tm);
        x.push(xo);
    }
    Chain::new(fwd, bwd, x, a)
        .and_then(|c| c.with_temporaries(tmp.clone(), tmp))
        .unwrap()
}

#[test]
fn optimal_matches_reference_dp_on_long_chains() {
    let mut rng = Rng::new(0x1357_9bdf_0246_8ace);
    let mut chains = Vec::new();
    for (n, big) in [(90usize, false), (130, true), (150, false)] {
        let mut c = random_chain(&mut rng, n, 20, true);
        if big {
            for i in 0..n {
                c.fwd[i] = rng.range_u64(1_000_000_000, 4_000_000_001);
            }
        }
        chains.push(c);
        chains.push(repeated_chain(&mut rng, n, big));
    }
    for c in &chains {
        let lo = min_peak_budget(c);
        let (hi, _) = store_all(c).simulate(c).unwrap();
        for g in [24usize, 60] {
            for frac in [0.02, 0.1, 0.3, 0.7] {
                let budget = lo + ((hi - lo) as f64 * frac) as u64;
                let (peak, compute) = optimal(c, budget, g).unwrap().simulate(c).unwrap();
                assert!(peak <= budget);
                if let Some(want) = reference_dp(c, budget, g) {
                    assert_eq!(compute, want, "n {}, g {g}, budget {budget}", c.len());
                }
            }
        }
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
    let mut rng = Rng::new(42);
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
    let mut rng = Rng::new(7);
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
    let mut rng = Rng::new(99);
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
    // The DP on the full chain: at Revolve's peak (exact, 1-byte slots) and
    // at a third of the store-all peak with 500 slots.
    for (budget, g) in [(rp, 500usize), (334, 500)] {
        let t = Instant::now();
        let o = optimal(&c, budget, g).unwrap();
        let el = t.elapsed();
        let (op, oc) = o.simulate(&c).unwrap();
        eprintln!("optimal(1000 stages, budget {budget}, g {g}): peak {op} compute {oc} in {el:?}");
        assert!(op <= budget);
        assert!(oc <= rc);
    }
    let (op, oc) = optimal(&c, rp, 500).unwrap().simulate(&c).unwrap();
    assert!(
        op <= rp && oc < rc,
        "optimal ({op}, {oc}) vs revolve ({rp}, {rc})"
    );
}

/// The heterogeneous chain of [`lowmem_testkit::resnet_like`]: no two stages alike, so no
/// row is shared, and the costs need u64 rows.
fn resnet_like(rng: &mut Rng, n: usize) -> Chain {
    let k = lowmem_testkit::resnet_like(rng, n);
    Chain::new(k.fwd, k.bwd, k.input_bytes, k.saved_bytes)
        .and_then(|c| c.with_temporaries(k.fwd_tmp, k.bwd_tmp))
        .unwrap()
}

#[test]
fn optimal_matches_reference_dp_on_heterogeneous_chains() {
    // Long enough for the threaded sweep (>= 64 stages), at the granularities
    // of compile (block widths 4 to 16 of the filter), u64 and u32 costs.
    let mut rng = Rng::new(0x2468_ace0_1357_9bdf);
    for (n, gs, small_costs) in [
        (70usize, [100usize, 500], false),
        (110, [100, 200], false),
        (90, [150, 320], true),
    ] {
        let mut c = resnet_like(&mut rng, n);
        if small_costs {
            for f in c.fwd.iter_mut() {
                *f = rng.range_u64(1, 50);
            }
        }
        let lo = min_peak_budget(&c);
        let (hi, _) = store_all(&c).simulate(&c).unwrap();
        for g in gs {
            for frac in [0.01, 0.1, 0.3, 0.6] {
                let budget = lo + ((hi - lo) as f64 * frac) as u64;
                let (peak, compute) = optimal(&c, budget, g).unwrap().simulate(&c).unwrap();
                assert!(peak <= budget);
                if let Some(want) = reference_dp(&c, budget, g) {
                    assert_eq!(compute, want, "n {n}, g {g}, frac {frac}");
                }
            }
        }
    }
}
