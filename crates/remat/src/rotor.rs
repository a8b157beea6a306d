//! The Rotor dynamic programme (Beaumont et al. 2019/2021) for heterogeneous
//! chains, over a discretised memory budget.
//!
//! # Family of schedules
//!
//! The loss is treated as an extra pseudo-stage `n` (no cost, record 0 bytes,
//! its "turn" is the [`Action::Loss`] op, output 0 bytes). A sub-problem
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
//! With record options (see the crate docs) the record choice and the single-stage case
//! take the best option `o` of stage `s`: `a_s`, `ft_s`, `bt_s` become the option's, and the
//! option's recompute cost is added (the extra cost below). Only the record branch grows,
//! by the number of options; the checkpoint splits, where the time goes, do not.
//!
//! The whole schedule is `P(0, n + 1, budget − x_0)`. Store-all, Chen's
//! schemes and Revolve all lie in this family. Memory sizes are rounded **up**
//! to slots of `unit = ceil(budget / granularity)` bytes and the budget down
//! to `floor(budget / unit)` slots, so a plan found is always within the real
//! budget.
//!
//! # The programme
//!
//! Every backward runs once, so the DP minimises the *extra* compute
//! `e(s, t, m)` (recomputed forwards; compute = `e` + Σ fwd + Σ bwd). With
//! `fs(s, s')` the forward cost of stages `s..s'`:
//!
//! `e(s, t, m) = min( min_o r_s^o + e(s+1, t, m − a_s^o),  min_{s'} fs(s, s') + e(s', t, m − x_{s'}) + e(s, s', m) )`
//!
//! (`r_s^o`: option `o`'s recompute cost, 0 for the full record)
//!
//! over `G` slots (`m < G`) and the `~n²/2` pairs `(s, t)`: `O(n³·G)` work in
//! the worst case. What makes long chains tractable, all exact:
//!
//! * **Windows.** A row `e(s, t, ·)` is non-increasing in `m`, infinite below
//!   the pair's smallest peak and 0 from the memory where the whole segment
//!   can be recorded; only the window in between is stored. There is no
//!   decision table: [`optimal`] re-derives each choice of the final schedule
//!   from the rows (`O(n)` per emitted sub-problem).
//! * **Shared rows.** Two pairs whose sub-chains are identical (stage by
//!   stage: slot sizes and forward cost; and the end boundary) have the same
//!   row; it is computed and stored once. Chains of repeated blocks (a unit
//!   chain, the blocks of a ResNet stage) then need `O(n)` rows, not `O(n²)`.
//! * **Block filter.** Slots are cut into blocks (4 to 16 slots). For each pair
//!   and block, the row's value at the block's last slot is kept, rounded
//!   down to 29 bits, in two transposed tables (one contiguous along `s'`
//!   for the left parts `(s, s')`, one for the right parts `(s', t)`). Both
//!   parts of a split are non-increasing in `m`, so their sum at the block's
//!   last slot bounds the split from below over the whole block; the split is
//!   evaluated on the block only if that bound is below the pair's current
//!   value at the block's first slot, an upper bound of the optimum over the
//!   block. Per pair: the bounds of all splits on all blocks (streamed), the
//!   split of smallest bound relaxed first on each block, then the splits
//!   that pass the filter, over runs of consecutive blocks, prefetched.
//! * **u32 costs**, in units of the gcd `g` of the forward costs, when the
//!   largest possible extra cost fits (`(n + 2) · Σ fwd / g < 2^30`), else u64.
//! * **Order and threads.** Rows `s` are processed in bands of 16 swept
//!   over `t`, for cache reuse, one band per thread, each band following the
//!   band above it column by column (see `Dp::run`).
//!
//! The filter prunes most of the `O(n³·G)` split evaluations but not all
//! (near-optimal splits survive), and the rows are the memory: `≤ n²/2 · G`
//! entries of 4 or 8 bytes (far fewer with shared rows), plus the filter
//! tables (`n² · G / block` u32). On x86-64 the pair computation is compiled
//! a second time with AVX2 and chosen at run time (`Dp::compute_dispatch`).
//! Measured on 1000-stage chains, two cores (`examples/timing.rs`): a unit
//! chain (shared rows, u32) 0.1–0.4 s and under 200 MB at `G` up to 500; a
//! chain of random heterogeneous stages (u64, nothing shared) 8–12 s and
//! 0.5 GB at `G = 100`, 13–16 s at `G = 200`, 17–27 s and 1.5–1.9 GB at
//! `G = 500`. Where that time goes (heterogeneous, 1000 stages): at
//! `G = 100` (blocks of 4) 4.0·10⁹ bound sums in the filter and 1.8·10⁸
//! surviving runs relaxing 4.3·10⁹ slots (about 86 splits per slot, a
//! quarter of the plain `n³·G/6`); at `G = 500` (blocks of 16) 5.5–5.7·10⁹
//! bound sums and 1.8–2.0·10⁸ runs relaxing 1.4–1.9·10¹⁰ slots. The time
//! follows the number of runs (each reads two rows scattered in memory)
//! more than the arithmetic: AVX2 gains about 10%, blocks of 8 instead of
//! 16 at `G = 500` halve the relaxed slots for twice the bound sums at the
//! same time, and relaxing only the slots of a block where the row is still
//! above the split's bound cuts the relaxed slots by 40% but multiplies the
//! runs by 5 and doubles the time. Scaling at `G = 500` (`timing scaling`,
//! two cores shared with other jobs, so slow and noisy): 100 stages 0.06–0.14 s,
//! 200 stages 0.5–0.9 s, 500 stages 8–15 s; `~n³` from 200 stages on.

use crate::{Action, Chain, Schedule, store_all};
use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The budget is below the smallest peak of any schedule in the family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("memory budget infeasible: at least {min_budget} bytes are needed")]
pub struct InfeasibleError {
    /// Smallest budget (bytes) for which [`optimal`] succeeds.
    pub min_budget: u64,
}

/// "Infeasible" in the min-peak table.
const INF: u64 = 1 << 62;

/// Rows `s` per band of the sweep in `Dp::run`.
const BAND: usize = 16;
/// Block width (slots) of the split filter: about `G / 32`, within
/// `[MIN_BLOCK, MAX_BLOCK]`.
const MIN_BLOCK: usize = 4;
const MAX_BLOCK: usize = 16;

/// Filter tables: finite bounds are `< QFIN`, infinite ones are `QINF`, so
/// the sum of two entries stays below `2^31`.
const QFIN: u32 = 1 << 29;
const QINF: u32 = 1 << 30;

/// Cost type of the DP rows. `INF` marks "infeasible"; every finite value
/// (and every forward-cost sum) is below it, and `3 · INF` does not overflow,
/// so `fs + l + r` never wraps and is `>= INF` exactly when a part is.
trait Cost: Copy + Ord + Default + Send + Sync + std::fmt::Debug + 'static {
    const INF: Self;
    fn from_u64(v: u64) -> Self;
    fn to_u64(self) -> u64;
    fn add(self, o: Self) -> Self;
}

impl Cost for u32 {
    const INF: u32 = 1 << 30;
    #[inline]
    fn from_u64(v: u64) -> u32 {
        v.min(Self::INF as u64) as u32
    }
    #[inline]
    fn to_u64(self) -> u64 {
        self as u64
    }
    #[inline]
    fn add(self, o: u32) -> u32 {
        self + o
    }
}

impl Cost for u64 {
    const INF: u64 = INF;
    #[inline]
    fn from_u64(v: u64) -> u64 {
        v.min(Self::INF)
    }
    #[inline]
    fn to_u64(self) -> u64 {
        self
    }
    #[inline]
    fn add(self, o: u64) -> u64 {
        self + o
    }
}

/// A record option of a stage in slots, and its extra cost in the DP's cost unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Rec {
    a: u64,
    ft: u64,
    bt: u64,
    cost: u64,
}

/// Sizes of the extended chain (pseudo-stage `n` = loss) in some unit.
struct Sizes {
    n: usize,
    /// len n + 2 (x_{n+1} = 0)
    x: Vec<u64>,
    /// Forward temporaries of the plain forward, len n + 1.
    ft: Vec<u64>,
    /// Record options per stage (option 0: the full record), len n + 1 (the loss: one
    /// empty record).
    rec: Vec<Vec<Rec>>,
}

impl Sizes {
    fn new(chain: &Chain, unit: u64) -> Sizes {
        let n = chain.len();
        let q = |v: u64| v.div_ceil(unit);
        let mut x: Vec<u64> = chain.input_bytes.iter().map(|&v| q(v)).collect();
        x.push(0);
        let mut rec: Vec<Vec<Rec>> = (0..n)
            .map(|i| {
                (0..chain.option_count(i))
                    .map(|o| {
                        let r = chain.record(i, o);
                        Rec {
                            a: q(r.saved_bytes),
                            ft: q(r.fwd_tmp),
                            bt: q(r.bwd_tmp),
                            cost: r.recompute,
                        }
                    })
                    .collect()
            })
            .collect();
        rec.push(vec![Rec {
            a: 0,
            ft: 0,
            bt: 0,
            cost: 0,
        }]);
        Sizes {
            n,
            x,
            ft: chain.fwd_tmp.iter().map(|&v| q(v)).chain([0]).collect(),
            rec,
        }
    }

    /// Peak of the single-stage sub-problem `P(s, s + 1)` with record option `o`.
    fn single_with(&self, s: usize, o: usize) -> u64 {
        if s == self.n {
            self.x[s]
        } else {
            let (x, r) = (&self.x, &self.rec[s][o]);
            (x[s + 1] + r.a + r.ft).max(x[s + 1] + r.a + x[s] + r.bt)
        }
    }

    /// The smallest peak of the single-stage sub-problem `P(s, s + 1)` and its option.
    fn single(&self, s: usize) -> (u64, usize) {
        (0..self.rec[s].len())
            .map(|o| (self.single_with(s, o), o))
            .min()
            .expect("every stage has its full record")
    }

    /// Lower bound of `m` for the record choice with option `o` on `(s, t)`, excluding the
    /// sub-problem.
    fn record_need(&self, s: usize, t: usize, o: usize) -> u64 {
        let (x, r) = (&self.x, &self.rec[s][o]);
        (x[t] + r.a + r.ft).max(r.a + x[s + 1] + x[s] + r.bt)
    }

    /// Peak of the plain forward of stage `k` inside the checkpoint choice on `(s, t)`.
    fn fwd_peak(&self, s: usize, t: usize, k: usize) -> u64 {
        let x = &self.x;
        x[t] + if k > s { x[k] } else { 0 } + x[k + 1] + self.ft[k]
    }

    /// `fp[j]` = the smallest `m` for which the forwards of the checkpoint
    /// choice `s' = s + j` on `(s, t)` fit (`j >= 1`; `fp[0]` unused).
    fn fwd_peaks(&self, s: usize, t: usize, fp: &mut Vec<u64>) {
        fp.clear();
        fp.push(0);
        let mut p = 0;
        for sp in s + 1..t {
            p = p.max(self.fwd_peak(s, t, sp - 1));
            fp.push(p);
        }
    }
}

#[inline]
fn idx(s: usize, t: usize) -> usize {
    t * (t - 1) / 2 + s
}

/// Minimum-peak DP over the family: per pair `(s, t)`, the smallest peak and
/// the choice (`(0, o)` = record with option `o`, `(k > 0, _)` = checkpoint at `s + k`).
/// `O(n³)` time in the worst case, `O(n²)` memory. Pairs are visited with `s` descending
/// and `t` ascending so that both operands of the split loop are contiguous.
fn min_peak_table(z: &Sizes) -> (Vec<u64>, Vec<(u32, u16)>) {
    let nn = z.n + 1;
    let np = idx(0, nn + 1);
    // `pk` is t-major (column t = pairs (·, t), contiguous); `pk_s` holds
    // row s (pairs (s, ·)).
    let mut pk = vec![INF; np];
    let mut ch = vec![(0u32, 0u16); np];
    let mut pk_s = Vec::with_capacity(nn);
    let mut g = Vec::with_capacity(nn);
    for s in (0..nn).rev() {
        pk_s.clear();
        // forward peak of stage k = s + j, without the x_t term
        g.clear();
        for k in s..nn.min(z.n) {
            g.push(if k > s { z.x[k] } else { 0 } + z.x[k + 1] + z.ft[k]);
        }
        for t in s + 1..=nn {
            let (best, choice) = if t == s + 1 {
                let (p, o) = z.single(s);
                (p, (0, o as u16))
            } else {
                let (mut best, mut choice) = (INF, (0u32, 0u16));
                for (o, r) in z.rec[s].iter().enumerate() {
                    let p = z.record_need(s, t, o).max(r.a + pk[idx(s + 1, t)]);
                    if p < best {
                        (best, choice) = (p, (0, o as u16));
                    }
                }
                let col = &pk[idx(0, t)..idx(0, t) + t];
                let mut fp = 0u64;
                for sp in s + 1..t {
                    fp = fp.max(z.x[t] + g[sp - 1 - s]);
                    if fp >= best {
                        break;
                    }
                    let p = fp.max(z.x[sp] + col[sp]).max(pk_s[sp - s - 1]);
                    if p < best {
                        best = p;
                        choice = ((sp - s) as u32, 0);
                    }
                }
                (best, choice)
            };
            pk[idx(s, t)] = best;
            ch[idx(s, t)] = choice;
            pk_s.push(best);
        }
    }
    (pk, ch)
}

/// A choice of sub-problem `(s, t)` at some memory: `(0, o)` records stage `s` with
/// option `o`, `(k, _)` with `k > 0` checkpoints at `s + k`.
type Choice<'c> = &'c dyn Fn(usize, usize, u64) -> (usize, usize);

/// Emits the schedule of sub-problem `(s, t)` given a choice function.
fn emit(sched: &mut Schedule, n: usize, s: usize, t: usize, m: u64, choice: Choice, z: &Sizes) {
    if s == n {
        sched.ops.push(Action::Loss);
        return;
    }
    let (k, o) = choice(s, t, m);
    if k == 0 {
        sched.ops.push(Action::Forward {
            stage: s,
            record: true,
        });
        sched.options[s] = o;
        if t > s + 1 {
            emit(sched, n, s + 1, t, m - z.rec[s][o].a, choice, z);
        }
        sched.ops.push(Action::Backward { stage: s });
    } else {
        let sp = s + k;
        crate::advance(&mut sched.ops, s, sp);
        emit(sched, n, sp, t, m - z.x[sp], choice, z);
        sched.ops.push(Action::Free { activation: sp });
        emit(sched, n, s, sp, m, choice, z);
    }
}

/// An empty schedule with room for each stage's record option.
fn blank(n: usize) -> Schedule {
    Schedule {
        ops: Vec::new(),
        options: vec![0; n],
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
    let mut sched = blank(z.n);
    let choice = |s: usize, t: usize, _m: u64| {
        let (k, o) = ch[idx(s, t)];
        (k as usize, o as usize)
    };
    // m is only used for bookkeeping here; any large value works.
    emit(&mut sched, z.n, 0, z.n + 1, u64::MAX / 2, &choice, &z);
    sched
}

/// One stored row `e(s, t, ·)`: `INF` below `lo`, `vals[m − lo]` on
/// `[lo, zero)`, 0 from `zero` on.
struct Row<T> {
    lo: usize,
    zero: usize,
    vals: Box<[T]>,
}

impl<T: Cost> Row<T> {
    #[inline]
    fn get(&self, m: usize) -> T {
        if m < self.lo {
            T::INF
        } else if m >= self.zero {
            T::default()
        } else {
            self.vals[m - self.lo]
        }
    }
}

/// Where a row's values are, for the tables of [`Dp`] (a [`Row`] without
/// ownership: `vals` is `len` values from slot `lo`, 0 after).
struct RowRef<T> {
    ptr: *const T,
    lo: u32,
    len: u32,
}

impl<T> Clone for RowRef<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for RowRef<T> {}

// SAFETY: a `RowRef` is a shared view of an immutable row, like `&[T]`.
unsafe impl<T: Sync> Send for RowRef<T> {}

impl<T> RowRef<T> {
    const NONE: RowRef<T> = RowRef {
        ptr: std::ptr::null(),
        lo: 0,
        len: 0,
    };

    fn new(r: &Row<T>) -> Self {
        RowRef {
            ptr: r.vals.as_ptr(),
            lo: r.lo as u32,
            len: r.vals.len() as u32,
        }
    }
}

/// A checkpoint choice `s'` of a pair `(s, t)`: its left row `(s, s')`
/// (`ll`, `lv`: first slot and values, 0 after), right row `(s', t)` (`rl`,
/// `rv`), `x_{s'}`, the first slot where it is defined and `fs(s, s')`.
struct Split<'r, T> {
    ll: usize,
    lv: &'r [T],
    rl: usize,
    rv: &'r [T],
    x: usize,
    start: usize,
    fs: T,
}

/// Prefetches the values [`relax`] reads on `[m1, m2)`.
#[inline(always)]
fn prefetch<T: Cost>(sp: &Split<'_, T>, m1: usize, m2: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let m1 = m1.max(sp.start);
        let sz = std::mem::size_of::<T>();
        let touch = |vals: &[T], from: usize, to: usize| {
            let to = to.min(vals.len());
            let mut i = from;
            while i < to {
                // SAFETY: prefetching an in-bounds address has no effect on memory.
                unsafe { _mm_prefetch(vals.as_ptr().add(i) as *const i8, _MM_HINT_T0) };
                i += 64 / sz;
            }
        };
        if m1 < m2 {
            let x = sp.x;
            touch(sp.lv, m1.saturating_sub(sp.ll), m2.saturating_sub(sp.ll));
            touch(
                sp.rv,
                (m1 - x).saturating_sub(sp.rl),
                (m2 - x).saturating_sub(sp.rl),
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (sp, m1, m2);
}

/// `row[m − off] = min(row[m − off], fs + l[m] + r[m − x])` on `[m1, m2)`.
#[inline(always)]
fn relax<T: Cost>(row: &mut [T], off: usize, sp: &Split<'_, T>, m1: usize, m2: usize) {
    let mut m = m1.max(sp.start);
    let (ll, lv, rl, rv, x, fs) = (sp.ll, sp.lv, sp.rl, sp.rv, sp.x, sp.fs);
    let lend = ll + lv.len();
    let rend = rl + rv.len() + x;
    while m < m2 {
        // segment [m, e) where each side is either stored values or zero
        let le = if m < lend { lend } else { usize::MAX };
        let re = if m < rend { rend } else { usize::MAX };
        let e = m2.min(le).min(re);
        let dst = &mut row[m - off..e - off];
        match (m < lend, m < rend) {
            (true, true) => {
                let ls = &lv[m - ll..e - ll];
                let rs = &rv[m - x - rl..e - x - rl];
                for ((d, &a), &b) in dst.iter_mut().zip(ls).zip(rs) {
                    let c = fs.add(a).add(b);
                    if c < *d {
                        *d = c;
                    }
                }
            }
            (true, false) => {
                for (d, &a) in dst.iter_mut().zip(&lv[m - ll..e - ll]) {
                    let c = fs.add(a);
                    if c < *d {
                        *d = c;
                    }
                }
            }
            (false, true) => {
                for (d, &b) in dst.iter_mut().zip(&rv[m - x - rl..e - x - rl]) {
                    let c = fs.add(b);
                    if c < *d {
                        *d = c;
                    }
                }
            }
            (false, false) => {
                for d in dst.iter_mut() {
                    if fs < *d {
                        *d = fs;
                    }
                }
            }
        }
        m = e;
    }
}

/// A table written by several threads, each place once, before any read of
/// it; reads are ordered after the write by the band protocol of
/// [`Dp::run`] (a release/acquire pair on the band's progress).
struct SharedTable<V> {
    cells: Box<[UnsafeCell<V>]>,
}

// SAFETY: see the type's docs: no place is written while it is read, and a
// place is written by one thread only.
unsafe impl<V: Send> Sync for SharedTable<V> {}

impl<V: Copy> SharedTable<V> {
    fn new(len: usize, v: V) -> Self {
        SharedTable {
            cells: (0..len).map(|_| UnsafeCell::new(v)).collect(),
        }
    }

    /// # Safety
    /// No other thread reads or writes place `i` concurrently.
    #[inline]
    unsafe fn write(&self, i: usize, v: V) {
        // SAFETY: exclusive access to place `i` (caller's contract).
        unsafe { *self.cells[i].get() = v }
    }

    /// # Safety
    /// No thread writes `range` while the slice lives.
    #[inline]
    unsafe fn slice(&self, range: std::ops::Range<usize>) -> &[V] {
        let cells = &self.cells[range];
        // SAFETY: `UnsafeCell<V>` has the layout of `V`; no concurrent writes
        // (caller's contract).
        unsafe { std::slice::from_raw_parts(cells.as_ptr() as *const V, cells.len()) }
    }
}

/// Per-thread buffers of [`Dp::compute`].
#[derive(Default)]
struct Scratch<T> {
    row: Vec<T>,
    fp: Vec<u64>,
    v: Vec<u32>,
    guess: Vec<Option<usize>>,
    masks: Vec<u64>,
    runs: Vec<(u32, u32, u32)>,
}

/// Discretised problem and its DP tables.
struct Dp<'a, T> {
    z: &'a Sizes,
    nn: usize,
    /// Slots `0..w` (`w = m0 + 1`).
    w: usize,
    /// Block width of the filter, and number of blocks.
    block: usize,
    nblocks: usize,
    /// Forward-cost prefix sums divided by the gcd of the forward costs.
    fsum: Vec<u64>,
    /// Right shift of the filter tables.
    shift: u32,
    /// Row id of each pair `idx(s, t)`; pairs with identical sub-chains
    /// share their row.
    class: Vec<Option<u32>>,
    rows: Vec<OnceLock<Row<T>>>,
    /// The row of each pair, column `t` contiguous (at `idx(s, t)`) and row
    /// `s` contiguous (at `sl_off[s] / nblocks + t − s − 1`).
    ref_t: SharedTable<RowRef<T>>,
    ref_s: SharedTable<RowRef<T>>,
    /// Left table: for row `s`, block `k`, split `s'`:
    /// `q(e(s, s', end_k) + fs(s, s'))` at `sl_off[s] + k·(nn − s) + (s' − s − 1)`.
    sl: SharedTable<u32>,
    sl_off: Vec<usize>,
    /// Right table: for column `t`, block `k`, split `s'`:
    /// `q(e(s', t, end_k − x_{s'}))` at `sr_off[t] + k·t + s'`.
    sr: SharedTable<u32>,
    sr_off: Vec<usize>,
    /// Whether the CPU has AVX2 (see `Dp::compute_dispatch`).
    avx2: bool,
}

impl<'a, T: Cost> Dp<'a, T> {
    fn new(z: &'a Sizes, w: usize, fsum: Vec<u64>, bound: u64) -> Self {
        let nn = z.n + 1;
        let block = (w / 32).clamp(MIN_BLOCK, MAX_BLOCK);
        let nblocks = w.div_ceil(block);
        let bits = 64 - bound.leading_zeros();
        let shift = bits.saturating_sub(29);
        let mut sl_off = vec![0usize; nn + 1];
        for s in 0..nn {
            sl_off[s + 1] = sl_off[s] + (nn - s) * nblocks;
        }
        let mut sr_off = vec![0usize; nn + 2];
        for t in 1..=nn {
            sr_off[t + 1] = sr_off[t] + t * nblocks;
        }
        let mut dp = Dp {
            z,
            nn,
            w,
            block,
            nblocks,
            fsum,
            shift,
            class: vec![None; idx(0, nn + 1)],
            rows: Vec::new(),
            ref_t: SharedTable::new(idx(0, nn + 1), RowRef::NONE),
            ref_s: SharedTable::new(sl_off[nn] / nblocks, RowRef::NONE),
            sl: SharedTable::new(sl_off[nn], QINF),
            sl_off,
            sr: SharedTable::new(sr_off[nn + 1], QINF),
            sr_off,
            #[cfg(target_arch = "x86_64")]
            avx2: std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            avx2: false,
        };
        dp.classes();
        dp
    }

    /// Assigns a row id to each pair: one per distinct sub-chain (stage by
    /// stage: slot sizes and forward cost; and the end boundary).
    fn classes(&mut self) {
        let z = self.z;
        let (n, nn) = (z.n, self.nn);
        // The forward cost is `None` for the loss pseudo-stage.
        // (x_s, plain forward temporary, record options, forward cost) of a stage.
        type StageKey<'k> = (u64, u64, &'k [Rec], Option<u64>);
        let mut types: HashMap<StageKey, u32> = HashMap::new();
        let ty: Vec<u32> = (0..nn)
            .map(|s| {
                let f = (s < n).then(|| self.fsum[s + 1] - self.fsum[s]);
                let key = (z.x[s], z.ft[s], &z.rec[s][..], f);
                let k = types.len() as u32;
                *types.entry(key).or_insert(k)
            })
            .collect();
        // Per length: ids of the stage-type sequences s..t (from those of
        // s..t−1), then of the keys (sequence, x_t).
        // `None`: the empty sequence (before length 1).
        let mut seq: Vec<Option<u32>> = vec![None; nn];
        let mut seqs: HashMap<(Option<u32>, u32), u32> = HashMap::new();
        let mut keys: HashMap<(u32, u64), u32> = HashMap::new();
        let mut nclasses = 0usize;
        for len in 1..=nn {
            seqs.clear();
            keys.clear();
            for (s, sq) in seq.iter_mut().enumerate().take(nn - len + 1) {
                let t = s + len;
                let k = seqs.len() as u32;
                let id = *seqs.entry((*sq, ty[t - 1])).or_insert(k);
                *sq = Some(id);
                let k = (nclasses + keys.len()) as u32;
                let c = *keys.entry((id, z.x[t])).or_insert(k);
                self.class[idx(s, t)] = Some(c);
            }
            nclasses += keys.len();
        }
        self.rows = (0..nclasses).map(|_| OnceLock::new()).collect();
    }

    /// The row id of pair `(s, t)`, `s < t` (assigned by `classes`).
    #[inline]
    fn class_of(&self, s: usize, t: usize) -> usize {
        self.class[idx(s, t)].expect("every pair has a class") as usize
    }

    #[inline]
    fn row(&self, s: usize, t: usize) -> &Row<T> {
        self.rows[self.class_of(s, t)]
            .get()
            .expect("row computed before use")
    }

    /// Rounds a bound down to the filter tables' scale.
    #[inline]
    fn q(&self, v: T) -> u32 {
        if v >= T::INF {
            QINF
        } else {
            ((v.to_u64() >> self.shift) as u32).min(QFIN - 1)
        }
    }

    /// Fills every pair's row.
    ///
    /// Rows `s` are cut into bands of [`BAND`] (from the last), each swept over
    /// `t` ascending with `s` descending inside a column: pair `(s, t)` then
    /// finds its rows `(s, s')` (same band, earlier columns) and `(s', t)`
    /// (same column: this band, or a band above that has passed column `t`)
    /// ready. The rows `(s, ·)` of a band stay in cache along its sweep, and the
    /// rows `(s', t)` above it are read by all the rows of the band while in
    /// cache. Threads take bands in order and follow each other: a band waits
    /// for the band above to have finished the column it needs.
    fn run(&self) {
        let nn = self.nn;
        let nbands = nn.div_ceil(BAND);
        let band = |i: usize| {
            let top = nn - 1 - i * BAND;
            (top.saturating_sub(BAND - 1), top)
        };
        // progress[i]: the last column band i has finished (columns up to its
        // first row need nothing from it).
        let progress: Vec<AtomicUsize> = (0..nbands).map(|i| AtomicUsize::new(band(i).0)).collect();
        let next = AtomicUsize::new(0);
        let worker = || {
            let mut scratch = Scratch::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= nbands {
                    break;
                }
                let (lo, top) = band(i);
                for t in lo + 1..=nn {
                    if i > 0 {
                        let mut spins = 0u32;
                        while progress[i - 1].load(Ordering::Acquire) < t {
                            spins += 1;
                            if spins < 64 {
                                std::hint::spin_loop();
                            } else {
                                std::thread::yield_now();
                            }
                        }
                    }
                    for s in (lo..=top.min(t - 1)).rev() {
                        let c = self.class_of(s, t);
                        self.rows[c].get_or_init(|| self.compute_dispatch(s, t, &mut scratch));
                        // SAFETY: the places of pair (s, t) are written by this
                        // thread only, and read by pairs processed after this
                        // one in this band or after `progress[i]` reaches t.
                        unsafe { self.fill_samples(s, t) };
                    }
                    progress[i].store(t, Ordering::Release);
                }
            }
        };
        let threads = if nn < 64 {
            1
        } else {
            std::thread::available_parallelism().map_or(1, |p| p.get().min(nbands))
        };
        if threads <= 1 {
            worker();
        } else {
            std::thread::scope(|sc| {
                for _ in 1..threads {
                    sc.spawn(worker);
                }
                worker();
            });
        }
    }

    /// [`Dp::compute`], compiled for AVX2 when the CPU has it (the filter's
    /// u32 sums and compares run 8 wide, the relaxation's u64 minima 4 wide;
    /// the baseline x86-64 target has no packed unsigned minimum).
    fn compute_dispatch(&self, s: usize, t: usize, sc: &mut Scratch<T>) -> Row<T> {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: `avx2` is set only when the CPU supports AVX2 (`Dp::new`).
            return unsafe { self.compute_avx2(s, t, sc) };
        }
        self.compute(s, t, sc)
    }

    /// [`Dp::compute`] with AVX2 enabled (`compute`, `blocks`, `relax` and
    /// `prefetch` are inlined here).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn compute_avx2(&self, s: usize, t: usize, sc: &mut Scratch<T>) -> Row<T> {
        self.compute(s, t, sc)
    }

    /// Fills the filter tables of pair `(s, t)` from its row.
    ///
    /// # Safety
    /// See [`SharedTable`]: the caller has exclusive access to the places of
    /// pair `(s, t)`.
    unsafe fn fill_samples(&self, s: usize, t: usize) {
        let nn = self.nn;
        let fs = self.fsum[t] - self.fsum[s];
        let xs = self.z.x[s] as usize;
        let r = self.row(s, t);
        // SAFETY: caller's contract.
        unsafe {
            self.ref_t.write(idx(s, t), RowRef::new(r));
            self.ref_s
                .write(self.sl_off[s] / self.nblocks + (t - s - 1), RowRef::new(r));
        }
        for k in 0..self.nblocks {
            let end = ((k + 1) * self.block).min(self.w) - 1;
            let l = r.get(end);
            let vl = if l >= T::INF {
                QINF
            } else {
                self.q(T::from_u64(l.to_u64() + fs))
            };
            let vr = if end >= xs {
                self.q(r.get(end - xs))
            } else {
                QINF
            };
            // SAFETY: caller's contract.
            unsafe {
                self.sl
                    .write(self.sl_off[s] + k * (nn - s) + (t - s - 1), vl);
                self.sr.write(self.sr_off[t] + k * t + s, vr);
            }
        }
    }

    /// Computes the row of pair `(s, t)` from the rows of shorter pairs.
    #[inline(always)]
    fn compute(&self, s: usize, t: usize, sc: &mut Scratch<T>) -> Row<T> {
        let z = self.z;
        let w = self.w;
        let empty = |lo: usize| Row {
            lo,
            zero: lo,
            vals: Box::new([]),
        };
        if t == s + 1 && z.rec[s].len() == 1 {
            return empty((z.single(s).0 as usize).min(w));
        }
        let row = &mut sc.row;
        row.clear();
        row.resize(w, T::INF);
        let mut first = w;
        if t == s + 1 {
            // Each option from its own peak on.
            for (o, r) in z.rec[s].iter().enumerate() {
                let from = (z.single_with(s, o) as usize).min(w);
                let c = T::from_u64(r.cost);
                for v in &mut row[from..] {
                    *v = (*v).min(c);
                }
            }
        } else {
            // record s, with each of its options
            let sub = self.row(s + 1, t);
            for (o, r) in z.rec[s].iter().enumerate() {
                let need = z.record_need(s, t, o) as usize;
                let a = r.a as usize;
                let from = need.max(sub.lo + a);
                if from < w {
                    first = first.min(from);
                    let c = T::from_u64(r.cost);
                    for (m, v) in row.iter_mut().enumerate().skip(from) {
                        *v = (*v).min(c.add(sub.get(m - a)));
                    }
                }
            }
        }
        if t == s + 1 {
            first = w;
        }
        // checkpoints s' = s + j: rows, forward cost, first slot where defined
        let fp = &mut sc.fp;
        z.fwd_peaks(s, t, fp);
        // SAFETY: the refs of pairs (s, s') for s' < t and (s', t) for s' > s
        // are final (see `run`).
        let (lref, rref) = unsafe {
            let o = self.sl_off[s] / self.nblocks;
            (
                self.ref_s.slice(o..o + (t - s - 1)),
                self.ref_t.slice(idx(s + 1, t)..idx(t, t)),
            )
        };
        let view = |r: &RowRef<T>| -> (usize, &[T]) {
            let vals = if r.len == 0 {
                &[][..]
            } else {
                // SAFETY: `r` views a row of `self.rows`, immutable and alive
                // as long as `self`.
                unsafe { std::slice::from_raw_parts(r.ptr, r.len as usize) }
            };
            (r.lo as usize, vals)
        };
        let splits: Vec<Split<T>> = (s + 1..t)
            .zip(lref.iter().zip(rref))
            .map(|(sp, (l, r))| {
                let (ll, lv) = view(l);
                let (rl, rv) = view(r);
                let x = z.x[sp] as usize;
                let start = (fp[sp - s] as usize).max(ll).max(rl + x);
                first = first.min(start);
                Split {
                    ll,
                    lv,
                    rl,
                    rv,
                    x,
                    start,
                    fs: T::from_u64(self.fsum[sp] - self.fsum[s]),
                }
            })
            .collect();
        if first < w {
            self.blocks(s, t, &splits, first / self.block, sc);
        }
        let row = &sc.row;
        let lo = row.iter().position(|&v| v < T::INF).unwrap_or(w);
        let zero = row[lo..]
            .iter()
            .position(|&v| v == T::default())
            .map_or(w, |p| lo + p);
        Row {
            lo,
            zero,
            vals: row[lo..zero].into(),
        }
    }

    /// The checkpoint choices of pair `(s, t)` on the blocks from `k0` on.
    #[inline(always)]
    fn blocks(&self, s: usize, t: usize, splits: &[Split<'_, T>], k0: usize, sc: &mut Scratch<T>) {
        let w = self.w;
        let cm = splits.len();
        let nb = self.nblocks - k0;
        let stride = self.nn - s;
        // SAFETY: row s's places of pairs (s, s') for s' < t and column t's
        // places of pairs (s', t) for s' > s are final (see `run`).
        let (sl_row, sr_col) = unsafe {
            (
                self.sl
                    .slice(self.sl_off[s]..self.sl_off[s] + stride * self.nblocks),
                self.sr
                    .slice(self.sr_off[t]..self.sr_off[t] + t * self.nblocks),
            )
        };
        let Scratch {
            row,
            fp,
            v,
            guess,
            masks,
            runs,
        } = sc;
        // Lower bounds of each split over each block, and the split with the
        // smallest bound (a good guess of the best split at the block's end).
        v.clear();
        v.resize(nb * cm, u32::MAX);
        guess.clear();
        guess.resize(nb, None);
        let mut cnt = 0usize; // splits 0..cnt are defined somewhere in the block
        for kk in 0..nb {
            let k = k0 + kk;
            let m2 = ((k + 1) * self.block).min(w);
            while cnt < cm && (fp[cnt + 1] as usize) < m2 {
                cnt += 1;
            }
            let lq = &sl_row[k * stride..k * stride + cnt];
            let rq = &sr_col[k * t + s + 1..k * t + s + 1 + cnt];
            let vk = &mut v[kk * cm..kk * cm + cnt];
            let mut best = QINF;
            for (o, (&l, &r)) in vk.iter_mut().zip(lq.iter().zip(rq)) {
                *o = l + r;
                best = best.min(l + r);
            }
            if best < QINF {
                guess[kk] = vk.iter().position(|&x| x == best);
            }
        }
        // Pass 1: the guesses on their block and the next one.
        for (kk, &j) in guess.iter().enumerate() {
            if let Some(j) = j {
                let m1 = (k0 + kk) * self.block;
                let m2 = ((k0 + kk + 2) * self.block).min(w);
                relax(row, 0, &splits[j], m1, m2);
            }
        }
        // Pass 2: every split whose bound is below the block's current value
        // at its first slot (an upper bound of the optimum over the block),
        // relaxed over runs of consecutive blocks.
        let quant = |u: T| -> u32 {
            if u >= T::INF {
                QINF
            } else {
                (u.to_u64().div_ceil(1 << self.shift)).min(QINF as u64) as u32
            }
        };
        masks.clear();
        masks.resize(cm, 0);
        for c0 in (0..nb).step_by(64) {
            let c1 = (c0 + 64).min(nb);
            masks.fill(0);
            for kk in c0..c1 {
                let uq = quant(row[(k0 + kk) * self.block]);
                let bit = kk - c0;
                for (mk, &vv) in masks.iter_mut().zip(&v[kk * cm..(kk + 1) * cm]) {
                    *mk |= ((vv < uq) as u64) << bit;
                }
            }
            runs.clear();
            for (j, &mask) in masks.iter().enumerate() {
                let mut mask = mask;
                while mask != 0 {
                    let b0 = mask.trailing_zeros() as usize;
                    let run = (!(mask >> b0)).trailing_zeros() as usize;
                    mask &= !((u64::MAX >> (64 - run)) << b0);
                    let m1 = (k0 + c0 + b0) * self.block;
                    let m2 = ((k0 + c0 + b0 + run) * self.block).min(w);
                    runs.push((j as u32, m1 as u32, m2 as u32));
                }
            }
            // The rows are scattered in memory: fetch a few runs ahead.
            const AHEAD: usize = 6;
            for &(j, m1, m2) in runs.iter().take(AHEAD) {
                prefetch(&splits[j as usize], m1 as usize, m2 as usize);
            }
            for (i, &(j, m1, m2)) in runs.iter().enumerate() {
                if let Some(&(j, m1, m2)) = runs.get(i + AHEAD) {
                    prefetch(&splits[j as usize], m1 as usize, m2 as usize);
                }
                relax(row, 0, &splits[j as usize], m1 as usize, m2 as usize);
            }
        }
    }

    /// Extra cost of `(s, t)` at `m` (`INF` if infeasible).
    fn get(&self, s: usize, t: usize, m: usize) -> T {
        self.row(s, t).get(m)
    }

    /// A choice achieving `e(s, t, m)` (which must be finite): `(0, o)` = record with
    /// option `o`, `(k, 0)` = checkpoint at `s + k`.
    fn choice(&self, s: usize, t: usize, m: usize) -> (usize, usize) {
        let z = self.z;
        let v = self.get(s, t, m);
        debug_assert!(v < T::INF);
        for (o, r) in z.rec[s].iter().enumerate() {
            let c = T::from_u64(r.cost);
            if t == s + 1 {
                if m >= z.single_with(s, o) as usize && c == v {
                    return (0, o);
                }
                continue;
            }
            let a = r.a as usize;
            if m >= z.record_need(s, t, o) as usize
                && m >= a
                && c.add(self.get(s + 1, t, m - a)) == v
            {
                return (0, o);
            }
        }
        let mut fp = Vec::new();
        z.fwd_peaks(s, t, &mut fp);
        for sp in s + 1..t {
            let x = z.x[sp] as usize;
            if (fp[sp - s] as usize) > m || x > m {
                continue;
            }
            let fs = T::from_u64(self.fsum[sp] - self.fsum[s]);
            let c = fs.add(self.get(s, sp, m)).add(self.get(sp, t, m - x));
            if c == v {
                return (sp - s, 0);
            }
        }
        unreachable!("no choice achieves the DP value at ({s}, {t}, {m})")
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Runs the DP with cost type `T` and emits the optimal schedule, or `None`
/// if the discretised problem is infeasible.
fn solve<T: Cost>(z: &Sizes, m0: u64, fsum: Vec<u64>, bound: u64) -> Option<Schedule> {
    let n = z.n;
    let nn = n + 1;
    let dp = Dp::<T>::new(z, m0 as usize + 1, fsum, bound);
    dp.run();
    if dp.get(0, nn, m0 as usize) >= T::INF {
        return None;
    }
    let choice = |s: usize, t: usize, m: u64| dp.choice(s, t, m as usize);
    let mut sched = blank(n);
    emit(&mut sched, n, 0, nn, m0, &choice, z);
    Some(sched)
}

/// Minimum total compute schedule (Rotor DP) under `budget_bytes`, memory
/// discretised into `granularity` slots (see the module docs).
///
/// If the budget reaches the store-all peak, returns [`store_all`]. If the
/// budget is below [`min_peak_budget`], returns [`InfeasibleError`]. If the
/// budget is feasible but rounding to slots makes the discretised problem
/// infeasible, returns the minimum-peak schedule (valid, within budget, not
/// necessarily compute-optimal). Panics on an invalid chain or on forward
/// costs so large that `(n + 2) · Σ fwd` reaches `2^62`.
pub fn optimal(
    chain: &Chain,
    budget_bytes: u64,
    granularity: usize,
) -> Result<Schedule, InfeasibleError> {
    chain.validate().expect("valid chain");
    let n = chain.len();
    let sa = store_all(chain);
    let (sa_peak, _) = sa.simulate(chain).expect("store_all is valid");
    if budget_bytes >= sa_peak {
        return Ok(sa);
    }
    let g = granularity.max(1) as u64;
    let unit = budget_bytes.div_ceil(g).max(1);
    let mut z = Sizes::new(chain, unit);
    let slots = budget_bytes / unit;
    let fallback = || {
        let min_budget = min_peak_budget(chain);
        if budget_bytes < min_budget {
            Err(InfeasibleError { min_budget })
        } else {
            Ok(min_peak_schedule(chain))
        }
    };
    let Some(m0) = slots.checked_sub(z.x[0]) else {
        return fallback();
    };
    // Extra costs are sums of forward and in-backward recompute costs: work in units of
    // their gcd.
    let div = chain
        .fwd
        .iter()
        .chain(chain.options.iter().flatten().map(|o| &o.recompute))
        .fold(0, |g, &f| gcd(g, f))
        .max(1);
    let mut worst_recompute = 0u64;
    for r in &mut z.rec {
        for o in r.iter_mut() {
            o.cost /= div;
        }
        worst_recompute = worst_recompute
            .checked_add(r.iter().map(|o| o.cost).max().unwrap_or(0))
            .expect("recompute costs overflow");
    }
    let mut fsum = vec![0u64; n + 2];
    for i in 0..n {
        fsum[i + 1] = fsum[i]
            .checked_add(chain.fwd[i] / div)
            .expect("forward costs overflow");
    }
    fsum[n + 1] = fsum[n];
    // Each stage runs forward at most n + 1 times in the family: extra costs
    // plus one forward sum stay below this bound.
    let bound = (fsum[n] as u128) * (n as u128 + 2) + worst_recompute as u128;
    assert!(
        bound < INF as u128,
        "costs too large for the DP (must stay below 2^62)"
    );
    let bound = bound as u64;
    let res = if bound < <u32 as Cost>::INF as u64 {
        solve::<u32>(&z, m0, fsum, bound)
    } else {
        solve::<u64>(&z, m0, fsum, bound)
    };
    match res {
        Some(s) => Ok(s),
        None => fallback(),
    }
}
