//! Classic schedules: store-all, Chen et al. 2016 (sqrt and recursive log),
//! and Griewank & Walther's binomial checkpointing (Revolve).

use crate::{Action, Chain, Schedule, advance, youturn};

/// No rematerialisation: record every stage, then run every backward.
pub fn store_all(chain: &Chain) -> Schedule {
    let n = chain.len();
    let mut ops = Vec::with_capacity(2 * n + 1);
    for i in 0..n {
        ops.push(Action::Forward {
            stage: i,
            record: true,
        });
    }
    ops.push(Action::Loss);
    for i in (0..n).rev() {
        ops.push(Action::Backward { stage: i });
    }
    Schedule::new(ops)
}

/// Schedule that keeps the boundaries `ckpts` (sorted, each in `1..n`) as
/// checkpoints: one plain forward sweep up to the last checkpoint, then for
/// each segment from the last: recompute it recording, and run its backwards.
pub(crate) fn segments_schedule(n: usize, ckpts: &[usize]) -> Schedule {
    let mut bounds = vec![0];
    bounds.extend(ckpts.iter().copied().filter(|&k| k > 0 && k < n));
    bounds.dedup();
    let mut ops = Vec::new();
    for w in bounds.windows(2) {
        advance(&mut ops, w[0], w[1]);
    }
    bounds.push(n);
    for j in (0..bounds.len() - 1).rev() {
        let (s, e) = (bounds[j], bounds[j + 1]);
        for i in s..e {
            ops.push(Action::Forward {
                stage: i,
                record: true,
            });
        }
        if e == n {
            ops.push(Action::Loss);
        }
        for i in (s..e).rev() {
            ops.push(Action::Backward { stage: i });
        }
        if s > 0 {
            ops.push(Action::Free { activation: s });
        }
    }
    Schedule::new(ops)
}

/// Chen et al. 2016, Algorithm 3 with threshold `b` bytes: walk the stages
/// adding each record size `a_i` to a running segment size; when it exceeds
/// `b`, the stage's output `X_{i+1}` becomes a checkpoint and the running size
/// restarts at 0. Segments are recomputed (recording) before their backward.
pub fn chen_sqrt(chain: &Chain, b: u64) -> Schedule {
    let n = chain.len();
    let mut ckpts = Vec::new();
    let mut temp = 0u64;
    for i in 0..n {
        temp = temp.saturating_add(chain.saved_bytes[i]);
        if temp > b && i + 1 < n {
            ckpts.push(i + 1);
            temp = 0;
        }
    }
    segments_schedule(n, &ckpts)
}

/// The thresholds `b` Chen searches: around `sqrt(x·y/2)` with `x` the mean boundary size
/// and `y` the total record size (a grid of factors `2^(k/4)`, `k = -12..=12`), plus a
/// geometric grid over `[min a_i, Σ a_i]`; sorted, distinct.
pub fn chen_sqrt_thresholds(chain: &Chain) -> Vec<u64> {
    let n = chain.len();
    let total: u64 = chain.saved_bytes.iter().sum();
    let mean_x = chain.input_bytes.iter().sum::<u64>() as f64 / (n + 1) as f64;
    let est = (mean_x * total as f64 / 2.0).sqrt();
    let mut cands: Vec<u64> = (-12..=12)
        .map(|k| (est * 2f64.powf(k as f64 / 4.0)) as u64)
        .collect();
    let lo = (*chain.saved_bytes.iter().min().unwrap_or(&1)).max(1) as f64;
    let hi = (total.max(1)) as f64;
    for k in 0..=32 {
        cands.push((lo * (hi / lo).powf(k as f64 / 32.0)) as u64);
    }
    cands.sort_unstable();
    cands.dedup();
    cands
}

/// [`chen_sqrt`] over [`chen_sqrt_thresholds`]: the plan with the lowest simulated peak
/// (ties: lowest compute).
pub fn chen_sqrt_best(chain: &Chain) -> Schedule {
    let mut best: Option<((u64, u64), Schedule)> = None;
    for b in chen_sqrt_thresholds(chain) {
        let s = chen_sqrt(chain, b);
        let key = s.simulate(chain).expect("chen_sqrt schedule is valid");
        if best.as_ref().is_none_or(|(k, _)| key < *k) {
            best = Some((key, s));
        }
    }
    best.expect("at least one candidate").1
}

/// Chen's recursive scheme: checkpoint the middle boundary, recurse on the
/// right half, free it, recurse on the left half. `O(log n)` checkpoints,
/// `O(n log n)` forward cost.
pub fn log_scheme(chain: &Chain) -> Schedule {
    fn rec(ops: &mut Vec<Action>, c: usize, e: usize, n: usize) {
        if e - c == 1 {
            youturn(ops, c, n);
            return;
        }
        let m = c + (e - c) / 2;
        advance(ops, c, m);
        rec(ops, m, e, n);
        ops.push(Action::Free { activation: m });
        rec(ops, c, m, n);
    }
    let n = chain.len();
    let mut ops = Vec::new();
    rec(&mut ops, 0, n, n);
    Schedule::new(ops)
}

/// Binomial checkpointing closed form (Griewank 1992): the minimal number of
/// forward **advances** (non-recording forwards F^∅) needed to reverse `l`
/// steps with `s` checkpoint slots, the slot holding `X_0` included. The
/// initial sweep's advances are counted; each stage's single recording
/// forward (its "turn", done right before its backward) is not.
/// With `β(s, r) = C(s + r, s)` and `r` such that `β(s, r-1) < l <= β(s, r)`:
/// `t(l, s) = r·l − β(s + 1, r − 1) = r·l − C(s + r, s + 1)`.
/// E.g. `t(1000, 10) = 3636`, `t(1000, 20) = 2747`, `t(1000, 32) = 2405`.
/// Panics if `s == 0` (and `l > 0`).
pub fn revolve_forward_count(l: u64, s: u64) -> u64 {
    if l <= 1 {
        return 0;
    }
    assert!(s >= 1, "revolve needs at least one checkpoint slot");
    if s == 1 {
        return l * (l - 1) / 2;
    }
    // beta = C(s + r, s)
    let (s128, l128) = (s as u128, l as u128);
    let mut r: u128 = 0;
    let mut beta: u128 = 1;
    while beta < l128 {
        r += 1;
        beta = beta * (s128 + r) / r;
    }
    // C(s + r, s + 1) = C(s + r, s) * r / (s + 1)
    let c = beta * r / (s128 + 1);
    (r * l128 - c) as u64
}

/// Griewank–Walther binomial checkpointing (Revolve) for `chain_len` stages
/// and `slots` checkpoint slots (the one holding `X_0` included); optimal
/// number of advances for equal unit costs (see [`revolve_forward_count`]).
/// At most `slots` boundaries are held as checkpoints, plus the current one.
/// Panics if `chain_len == 0` or `slots == 0`.
pub fn revolve(chain_len: usize, slots: usize) -> Schedule {
    assert!(chain_len > 0, "empty chain");
    assert!(slots > 0, "revolve needs at least one checkpoint slot");
    fn rec(ops: &mut Vec<Action>, c: usize, e: usize, s: usize, n: usize) {
        let l = e - c;
        if l == 1 {
            youturn(ops, c, n);
            return;
        }
        if s == 1 {
            for i in (c..e).rev() {
                advance(ops, c, i);
                youturn(ops, i, n);
                if i > c {
                    ops.push(Action::Free { activation: i });
                }
            }
            return;
        }
        let target = revolve_forward_count(l as u64, s as u64);
        let mut best = (u64::MAX, 1);
        for j in 1..l {
            let t = j as u64
                + revolve_forward_count((l - j) as u64, (s - 1) as u64)
                + revolve_forward_count(j as u64, s as u64);
            if t < best.0 {
                best = (t, j);
                if t == target {
                    break;
                }
            }
        }
        debug_assert_eq!(
            best.0, target,
            "closed form is the optimum of the recursion"
        );
        let m = c + best.1;
        advance(ops, c, m);
        rec(ops, m, e, s - 1, n);
        ops.push(Action::Free { activation: m });
        rec(ops, c, m, s, n);
    }
    let mut ops = Vec::new();
    rec(&mut ops, 0, chain_len, slots, chain_len);
    Schedule::new(ops)
}
