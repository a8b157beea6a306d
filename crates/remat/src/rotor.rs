//! The Rotor dynamic programme (Beaumont et al. 2019/2021) for heterogeneous
//! chains, over a discretised memory budget.
//!
//! # Family of schedules
//!
//! The loss is treated as an extra pseudo-stage `n` (no cost, record 0 bytes,
//! its "turn" is the [`Op::Loss`] op, output 0 bytes). A sub-problem
//! `P(s, t, m)` back-propagates stages `s..t` (`t <= n + 1`): on entry `X_s`
//! is available and held by the caller (not counted in `m`) and the gradient
//! `δ_t` is live (counted in `m`); on exit `δ_s` is live. Its peak, relative to
//! what the caller holds, must stay `<= m`. Choices (persistent checkpoints):
//!
//! * `t = s + 1`: F_s^all, B_s (for `s = n`: the loss).
//!   Peak `max(x_t + a_s + ft_s, x_t + a_s + x_s + bt_s)` (`x_n` for the loss).
//! * record: F_s^all; `P(s+1, t, m − a_s)`; B_s.
//!   Peak `max(x_t + a_s + ft_s, a_s + peak(sub), a_s + x_{s+1} + x_s + bt_s)`.
//! * checkpoint `s' ∈ (s, t)`: F_s^∅ … F_{s'−1}^∅ (freeing intermediates),
//!   `P(s', t, m − x_{s'})`, free `X_{s'}`, `P(s, s', m)`. Forward peaks:
//!   `x_t + x_{s+1} + ft_s` and `x_t + x_k + x_{k+1} + ft_k` for `s < k < s'`.
//!
//! The whole schedule is `P(0, n + 1, budget − x_0)`. Store-all, Chen's
//! schemes and Revolve all lie in this family. Memory sizes are rounded **up**
//! to slots of `unit = ceil(budget / granularity)` bytes and the budget down
//! to `floor(budget / unit)` slots, so a plan found is always within the real
//! budget. Time `O(n³·G)`, memory `O(n²·G)` (≈ 9·n²·G bytes) with `G` the number of slots.

use crate::{Chain, Op, Schedule, store_all};

/// The budget is below the smallest peak of any schedule in the family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("memory budget infeasible: at least {min_budget} bytes are needed")]
pub struct InfeasibleError {
    /// Smallest budget (bytes) for which [`optimal`] succeeds.
    pub min_budget: u64,
}

/// "Infeasible" in the tables. Costs stay below it (checked), and any sum of
/// two table entries and a forward cost cannot overflow.
const INF: u64 = 1 << 62;

/// `row[m] = min(row[m], fs + right[m] + left[m])`, recording `k` where it
/// improves. The hot loop of the DP (bound by memory traffic on long chains).
#[inline]
fn relax(row: &mut [u64], drow: &mut [u64], right: &[u64], left: &[u64], fs: u64, k: u64) {
    let n = row.len();
    let (drow, right, left) = (&mut drow[..n], &right[..n], &left[..n]);
    for m in 0..n {
        let c = fs + right[m] + left[m];
        let better = c < row[m];
        row[m] = if better { c } else { row[m] };
        drow[m] = if better { k } else { drow[m] };
    }
}

/// Sizes of the extended chain (pseudo-stage `n` = loss) in some unit.
struct Sizes {
    n: usize,
    /// len n + 2 (x_{n+1} = 0)
    x: Vec<u64>,
    /// len n + 1 (a_n = 0)
    a: Vec<u64>,
    ft: Vec<u64>,
    bt: Vec<u64>,
}

impl Sizes {
    fn new(chain: &Chain, unit: u64) -> Sizes {
        let n = chain.len();
        let q = |v: u64| v.div_ceil(unit);
        let mut x: Vec<u64> = chain.input_bytes.iter().map(|&v| q(v)).collect();
        x.push(0);
        let ext = |v: &[u64]| -> Vec<u64> { v.iter().map(|&v| q(v)).chain([0]).collect() };
        Sizes {
            n,
            x,
            a: ext(&chain.saved_bytes),
            ft: ext(&chain.fwd_tmp),
            bt: ext(&chain.bwd_tmp),
        }
    }

    /// Peak of the single-stage sub-problem `P(s, s + 1)`.
    fn single(&self, s: usize) -> u64 {
        if s == self.n {
            self.x[s]
        } else {
            let (x, a) = (&self.x, &self.a);
            (x[s + 1] + a[s] + self.ft[s]).max(x[s + 1] + a[s] + x[s] + self.bt[s])
        }
    }

    /// Lower bound of `m` for the record choice on `(s, t)`, excluding the sub-problem.
    fn record_need(&self, s: usize, t: usize) -> u64 {
        let (x, a) = (&self.x, &self.a);
        (x[t] + a[s] + self.ft[s]).max(a[s] + x[s + 1] + x[s] + self.bt[s])
    }

    /// Peak of the plain forward of stage `k` inside the checkpoint choice on `(s, t)`.
    fn fwd_peak(&self, s: usize, t: usize, k: usize) -> u64 {
        let x = &self.x;
        x[t] + if k > s { x[k] } else { 0 } + x[k + 1] + self.ft[k]
    }
}

#[inline]
fn idx(s: usize, t: usize) -> usize {
    t * (t - 1) / 2 + s
}

/// Minimum-peak DP over the family: per pair `(s, t)`, the smallest peak and
/// the choice (0 = record, `k > 0` = checkpoint at `s + k`). `O(n³)`.
fn min_peak_table(z: &Sizes) -> (Vec<u64>, Vec<u32>) {
    let nn = z.n + 1;
    let mut pk = vec![INF; idx(0, nn + 1)];
    let mut ch = vec![0u32; idx(0, nn + 1)];
    for len in 1..=nn {
        for s in 0..=nn - len {
            let t = s + len;
            if len == 1 {
                pk[idx(s, t)] = z.single(s);
                continue;
            }
            let mut best = z.record_need(s, t).max(z.a[s] + pk[idx(s + 1, t)]);
            let mut choice = 0u32;
            let mut fp = 0u64;
            for sp in s + 1..t {
                fp = fp.max(z.fwd_peak(s, t, sp - 1));
                if fp >= best {
                    break;
                }
                let p = fp.max(z.x[sp] + pk[idx(sp, t)]).max(pk[idx(s, sp)]);
                if p < best {
                    best = p;
                    choice = (sp - s) as u32;
                }
            }
            pk[idx(s, t)] = best;
            ch[idx(s, t)] = choice;
        }
    }
    (pk, ch)
}

/// Emits the schedule of sub-problem `(s, t)` given a choice function.
fn emit(
    ops: &mut Vec<Op>,
    n: usize,
    s: usize,
    t: usize,
    m: u64,
    choice: &dyn Fn(usize, usize, u64) -> usize,
    z: &Sizes,
) {
    if s == n {
        ops.push(Op::Loss);
        return;
    }
    if t == s + 1 {
        ops.push(Op::Forward {
            stage: s,
            record: true,
        });
        ops.push(Op::Backward { stage: s });
        return;
    }
    let k = choice(s, t, m);
    if k == 0 {
        ops.push(Op::Forward {
            stage: s,
            record: true,
        });
        emit(ops, n, s + 1, t, m - z.a[s], choice, z);
        ops.push(Op::Backward { stage: s });
    } else {
        let sp = s + k;
        crate::advance(ops, s, sp);
        emit(ops, n, sp, t, m - z.x[sp], choice, z);
        ops.push(Op::Free { activation: sp });
        emit(ops, n, s, sp, m, choice, z);
    }
}

/// Smallest budget (bytes) of any schedule in the family: the budget below
/// which [`optimal`] returns [`InfeasibleError`]. `O(n³)`.
pub fn min_peak_budget(chain: &Chain) -> u64 {
    let z = Sizes::new(chain, 1);
    let (pk, _) = min_peak_table(&z);
    z.x[0] + pk[idx(0, z.n + 1)]
}

fn min_peak_schedule(chain: &Chain) -> Schedule {
    let z = Sizes::new(chain, 1);
    let (_, ch) = min_peak_table(&z);
    let mut ops = Vec::new();
    let choice = |s: usize, t: usize, _m: u64| ch[idx(s, t)] as usize;
    // m is only used for bookkeeping here; any large value works.
    emit(&mut ops, z.n, 0, z.n + 1, u64::MAX / 2, &choice, &z);
    Schedule { ops }
}

/// Minimum total compute schedule (Rotor DP) under `budget_bytes`, memory
/// discretised into `granularity` slots (see the module docs).
///
/// If the budget reaches the store-all peak, returns [`store_all`]. If the
/// budget is below [`min_peak_budget`], returns [`InfeasibleError`]. If the
/// budget is feasible but rounding to slots makes the discretised problem
/// infeasible, returns the minimum-peak schedule (valid, within budget, not
/// necessarily compute-optimal). Panics on an invalid chain or more than
/// 65 534 stages.
pub fn optimal(
    chain: &Chain,
    budget_bytes: u64,
    granularity: usize,
) -> Result<Schedule, InfeasibleError> {
    chain.validate().expect("valid chain");
    let n = chain.len();
    assert!(n < u16::MAX as usize, "chain too long");
    let sa = store_all(chain);
    let (sa_peak, _) = sa.simulate(chain).expect("store_all is valid");
    if budget_bytes >= sa_peak {
        return Ok(sa);
    }
    let g = granularity.max(1) as u64;
    let unit = budget_bytes.div_ceil(g).max(1);
    let z = Sizes::new(chain, unit);
    let slots = budget_bytes / unit;
    let nn = n + 1;
    let (pk, _) = min_peak_table(&z);
    let m0 = match slots.checked_sub(z.x[0]) {
        Some(m0) if pk[idx(0, nn)] <= m0 => m0,
        _ => {
            let min_budget = min_peak_budget(chain);
            if budget_bytes < min_budget {
                return Err(InfeasibleError { min_budget });
            }
            return Ok(min_peak_schedule(chain));
        }
    };
    let fwd_total: u64 = chain.fwd.iter().sum();
    let bwd_total: u64 = chain.bwd.iter().sum();
    let worst = (fwd_total as u128) * (n as u128 + 1) + bwd_total as u128;
    assert!(
        worst < INF as u128,
        "costs too large for the DP (must stay below 2^62)"
    );
    let w = m0 as usize + 1;
    let mut fsum = vec![0u64; nn + 1];
    let mut bsum = vec![0u64; nn + 1];
    for i in 0..n {
        fsum[i + 1] = fsum[i] + chain.fwd[i];
        bsum[i + 1] = bsum[i] + chain.bwd[i];
    }
    fsum[nn] = fsum[n];
    bsum[nn] = bsum[n];
    let npairs = idx(0, nn + 1);
    // Costs in two layouts so that the split loop streams through memory:
    // `cost` is t-major (rows (s', t) for consecutive s' are adjacent) and
    // `cost_s` is s-major (rows (s, s') for consecutive s' are adjacent).
    let mut cost = vec![INF; npairs * w];
    let mut cost_s = vec![INF; npairs * w];
    let sidx = |s: usize, t: usize| s * nn - s * s.saturating_sub(1) / 2 + (t - s - 1);
    let mut dec = vec![0u16; npairs * w];
    let mut row = vec![INF; w];
    let mut drow = vec![0u64; w];
    // t ascending, s descending: (s', t) rows for s' > s and (s, s') rows for
    // s' < t are ready; the t-major block of t stays in cache.
    for t in 1..=nn {
        for s in (0..t).rev() {
            let len = t - s;
            let base = fsum[t] - fsum[s] + bsum[t] - bsum[s];
            let lo = pk[idx(s, t)];
            if lo >= w as u64 {
                continue; // infeasible for every m
            }
            let lo = lo as usize;
            row.fill(INF);
            drow.fill(0);
            if len == 1 {
                row[lo..].fill(base);
            } else {
                // record s
                let a = z.a[s] as usize;
                let need = (z.record_need(s, t) as usize).max(a);
                let sub = &cost[idx(s + 1, t) * w..][..w];
                let fb = chain.fwd[s] + chain.bwd[s];
                for m in need..w {
                    row[m] = (fb + sub[m - a]).min(INF);
                }
                // memory from which nothing beats the base cost
                let mut hi = row.iter().position(|&c| c == base).unwrap_or(w);
                let mut fp = 0u64;
                for sp in s + 1..t {
                    fp = fp.max(z.fwd_peak(s, t, sp - 1));
                    let fs = fsum[sp] - fsum[s];
                    // every checkpoint choice from here on costs at least
                    // base + fs: entries at the top already that cheap are final
                    while hi > lo && row[hi - 1] <= base + fs {
                        hi -= 1;
                    }
                    if fp as usize >= hi {
                        break;
                    }
                    let xs = z.x[sp] as usize;
                    let start = (fp as usize).max(xs + pk[idx(sp, t)] as usize).max(lo);
                    if start >= hi {
                        continue;
                    }
                    let right = &cost[idx(sp, t) * w..][start - xs..hi - xs];
                    let left = &cost_s[sidx(s, sp) * w..][start..hi];
                    relax(
                        &mut row[start..hi],
                        &mut drow[start..hi],
                        right,
                        left,
                        fs,
                        (sp - s) as u64,
                    );
                }
            }
            let o = idx(s, t) * w;
            for c in row.iter_mut() {
                *c = (*c).min(INF);
            }
            cost[o..o + w].copy_from_slice(&row);
            let o2 = sidx(s, t) * w;
            cost_s[o2..o2 + w].copy_from_slice(&row);
            for (d, &k) in dec[o..o + w].iter_mut().zip(&drow) {
                *d = k as u16;
            }
        }
    }
    debug_assert!(cost[idx(0, nn) * w + m0 as usize] < INF);
    let choice = |s: usize, t: usize, m: u64| dec[idx(s, t) * w + m as usize] as usize;
    let mut ops = Vec::new();
    emit(&mut ops, n, 0, nn, m0, &choice, &z);
    Ok(Schedule { ops })
}
