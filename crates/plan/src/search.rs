//! Exact branch and bound over canonical placements, following MiniMalloc (Moffitt, ASPLOS 2023).
//!
//! * Canonical solutions: buffers are placed one at a time, each at its *minimal offset* (the
//!   highest top among the already placed buffers it overlaps in time, aligned up), in
//!   non-decreasing order of (offset, priority rank). Every optimal packing with the least sum
//!   of offsets is produced this way.
//! * Minimal offsets are maintained incrementally: placing a buffer only raises the minimal
//!   offsets of the unplaced buffers that overlap it (changes are logged and undone).
//! * Dominance: a candidate whose minimal offset is at or above `min(min_offset + size)` over
//!   the unplaced buffers would leave a gap another buffer could drop into; it is skipped.
//!   Identical buffers (same sections and size) are placed in rank order.
//! * Section inference: time is cut into sections (elementary intervals between endpoints).
//!   Each keeps a floor (the top of the placed buffers there, raised to the lowest minimal
//!   offset of its unplaced buffers) and the bytes of its unplaced buffers. With the monotonic
//!   floor (nothing later goes below the last placed offset), `max(offset, floor) + bytes` may
//!   not exceed the height limit.
//! * Dynamic decomposition: when no unplaced buffer crosses a section boundary any more, the
//!   two sides are solved independently.
//!
//! The search answers "is there a packing of height <= limit"; [`improve`] drives it with
//! round robins over several priority orders and doubling node limits (restarts), first at the
//! lower bound, then bisecting between the proven bound and the best height found.

use std::time::Instant;

use crate::pack::{Buffer, align_up};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Found,
    NotFound,
    Aborted,
}

struct Solver {
    align: u64,
    s0: Vec<u32>,
    s1: Vec<u32>,
    size: Vec<u64>,
    /// Unplaced-or-not buffers overlapping each buffer in time.
    overlaps: Vec<Vec<u32>>,
    /// Buffers live in each section.
    sec_bufs: Vec<Vec<u32>>,
    /// The priority heuristic, and per buffer its lifetime and area (for the keys).
    heuristic: u8,
    length: Vec<u128>,
    area: Vec<u128>,
    /// The previous buffer of identical shape in index order.
    twin: Vec<Option<u32>>,
    placed: Vec<bool>,
    min_off: Vec<u64>,
    floor: Vec<u64>,
    total: Vec<u64>,
    /// Per boundary `k` (between sections `k` and `k + 1`): unplaced buffers crossing it.
    cuts: Vec<u32>,
    limit: u64,
    solution: Vec<u64>,
    off_log: Vec<(u32, u64)>,
    floor_log: Vec<(u32, u64)>,
    stamp: Vec<u32>,
    generation: u32,
    affected: Vec<u32>,
    orderings: Vec<Vec<(u64, u32, u32)>>,
    /// Per depth: prefix and suffix maxima of the section totals of the current part.
    maxima: Vec<(Vec<u64>, Vec<u64>)>,
    nodes_left: u64,
    nodes: u64,
    deadline: Option<Instant>,
}

impl Solver {
    /// Solves the sections `lo..hi` whose unplaced buffers are those of `prev`.
    fn search(
        &mut self,
        lo: usize,
        hi: usize,
        prev: &[(u64, u32, u32)],
        last_off: u64,
        last_rank: u32,
        depth: usize,
    ) -> Status {
        if self.nodes_left == 0 {
            return Status::Aborted;
        }
        self.nodes_left -= 1;
        self.nodes += 1;
        if self.nodes & 1023 == 0 && self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.nodes_left = 0;
            return Status::Aborted;
        }
        if self.orderings.len() <= depth {
            self.orderings.resize_with(depth + 1, Vec::new);
        }
        let mut ord = std::mem::take(&mut self.orderings[depth]);
        ord.clear();
        for &(_, r, b) in prev {
            if !self.placed[b as usize] {
                ord.push((self.min_off[b as usize], r, b));
            }
        }
        if ord.is_empty() {
            self.orderings[depth] = ord;
            return Status::Found;
        }
        ord.sort(); // nearly sorted already
        let mut min_height = u64::MAX;
        for &(o, _, b) in &ord {
            min_height = min_height.min(o.saturating_add(self.size[b as usize]));
        }
        // Monotonic floor: every later buffer goes at or above `o`, so a placement at `o` fails
        // if a section outside the placed buffer holds more than `limit - o` unplaced bytes.
        if self.maxima.len() <= depth {
            self.maxima.resize_with(depth + 1, Default::default);
        }
        let (mut pre, mut suf) = std::mem::take(&mut self.maxima[depth]);
        pre.clear();
        suf.clear();
        pre.push(0);
        for s in lo..hi {
            pre.push(pre[s - lo].max(self.total[s]));
        }
        suf.resize(hi - lo + 1, 0);
        for s in (lo..hi).rev() {
            suf[s - lo] = suf[s - lo + 1].max(self.total[s]);
        }
        let mut status = Status::NotFound;
        for k in 0..ord.len() {
            let (o, r, b) = ord[k];
            if o >= min_height {
                break;
            }
            if o < last_off || (o == last_off && r < last_rank) {
                continue;
            }
            let b = b as usize;
            let outside = pre[self.s0[b] as usize - lo].max(suf[self.s1[b] as usize - lo]);
            if o.saturating_add(outside) > self.limit {
                continue;
            }
            if self.twin[b].is_some_and(|t| !self.placed[t as usize]) {
                continue;
            }
            let st = self.place(lo, hi, &ord, b, o, r, depth);
            if st == Status::Found {
                self.solution[b] = o;
            }
            if st != Status::NotFound {
                status = st;
                break;
            }
        }
        self.orderings[depth] = ord;
        self.maxima[depth] = (pre, suf);
        status
    }

    /// Places buffer `b` at offset `o`, checks, recurses (decomposing if possible) and undoes.
    #[allow(clippy::too_many_arguments)]
    fn place(
        &mut self,
        lo: usize,
        hi: usize,
        ord: &[(u64, u32, u32)],
        b: usize,
        o: u64,
        r: u32,
        depth: usize,
    ) -> Status {
        let top = o.saturating_add(self.size[b]);
        if top > self.limit {
            return Status::NotFound;
        }
        let (bs0, bs1) = (self.s0[b] as usize, self.s1[b] as usize);
        self.placed[b] = true;
        let off_mark = self.off_log.len();
        let floor_mark = self.floor_log.len();
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.stamp.fill(0);
            self.generation = 1;
        }
        let gen_now = self.generation;
        self.affected.clear();
        let new_min = align_up(top, self.align);
        for k in 0..self.overlaps[b].len() {
            let j = self.overlaps[b][k] as usize;
            if self.placed[j] || self.min_off[j] >= new_min {
                continue;
            }
            self.off_log.push((j as u32, self.min_off[j]));
            self.min_off[j] = new_min;
            for s in self.s0[j] as usize..self.s1[j] as usize {
                if self.stamp[s] != gen_now {
                    self.stamp[s] = gen_now;
                    self.affected.push(s as u32);
                }
            }
        }
        for s in bs0..bs1 {
            self.floor_log.push((s as u32, self.floor[s]));
            self.floor[s] = top;
            self.total[s] -= self.size[b];
        }
        for k in 0..self.affected.len() {
            let s = self.affected[k] as usize;
            // A raised buffer lives here with minimal offset `new_min`, so the lowest minimal
            // offset here is at most `new_min`; stop early once one is at or below the floor.
            let f = self.floor[s];
            if f >= new_min {
                continue;
            }
            // The lowest minimal offset of the unplaced buffers here, if any.
            let mut lowest: Option<u64> = None;
            for &j in &self.sec_bufs[s] {
                let j = j as usize;
                if !self.placed[j] {
                    let m = lowest.map_or(self.min_off[j], |m| m.min(self.min_off[j]));
                    lowest = Some(m);
                    if m <= f {
                        break;
                    }
                }
            }
            if let Some(m) = lowest.filter(|&m| f < m) {
                self.floor_log.push((s as u32, self.floor[s]));
                self.floor[s] = m;
            }
        }
        // Sections without unplaced bytes have their floor at most `limit` already.
        let ok = self.floor[lo..hi]
            .iter()
            .zip(&self.total[lo..hi])
            .all(|(&f, &t)| f.max(o).saturating_add(t) <= self.limit);
        let status = if ok {
            self.decompose(lo, hi, ord, b, o, r, depth)
        } else {
            Status::NotFound
        };
        while self.floor_log.len() > floor_mark {
            let (s, f) = self.floor_log.pop().expect("logged");
            self.floor[s as usize] = f;
        }
        for s in bs0..bs1 {
            self.total[s] += self.size[b];
        }
        while self.off_log.len() > off_mark {
            let (j, m) = self.off_log.pop().expect("logged");
            self.min_off[j as usize] = m;
        }
        self.placed[b] = false;
        status
    }

    #[allow(clippy::too_many_arguments)]
    fn decompose(
        &mut self,
        lo: usize,
        hi: usize,
        ord: &[(u64, u32, u32)],
        b: usize,
        o: u64,
        r: u32,
        depth: usize,
    ) -> Status {
        let (bs0, bs1) = (self.s0[b] as usize, self.s1[b] as usize);
        let mut cutpoints: Vec<usize> = Vec::new();
        for k in bs0..bs1.saturating_sub(1) {
            self.cuts[k] -= 1;
            if self.cuts[k] == 0 {
                cutpoints.push(k + 1);
            }
        }
        let status = if cutpoints.is_empty() {
            self.search(lo, hi, ord, o, r, depth + 1)
        } else {
            self.solve_parts(lo, hi, &cutpoints, ord, depth + 1)
        };
        for k in bs0..bs1.saturating_sub(1) {
            self.cuts[k] += 1;
        }
        status
    }

    /// Solves the parts of `lo..hi` between the given cut points independently.
    fn solve_parts(
        &mut self,
        lo: usize,
        hi: usize,
        cutpoints: &[usize],
        ord: &[(u64, u32, u32)],
        depth: usize,
    ) -> Status {
        let mut bounds = Vec::with_capacity(cutpoints.len() + 2);
        bounds.push(lo);
        bounds.extend(cutpoints.iter().copied().filter(|&c| c > lo && c < hi));
        bounds.push(hi);
        for w in bounds.windows(2) {
            let (a, c) = (w[0], w[1]);
            // MiniMalloc's static preordering, with the section totals of this moment.
            let mut keyed: Vec<((u128, u128, u128), u32)> = ord
                .iter()
                .filter(|&&(_, _, j)| {
                    let j = j as usize;
                    !self.placed[j] && (self.s0[j] as usize) < c && (self.s1[j] as usize) > a
                })
                .map(|&(_, _, j)| (self.key(j as usize), j))
                .collect();
            if keyed.is_empty() {
                continue;
            }
            keyed.sort_unstable_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
            let sub: Vec<(u64, u32, u32)> = keyed
                .iter()
                .enumerate()
                .map(|(k, &(_, j))| (self.min_off[j as usize], k as u32, j))
                .collect();
            let st = self.search(a, c, &sub, 0, 0, depth);
            if st != Status::Found {
                return st;
            }
        }
        Status::Found
    }

    /// The preordering key of buffer `b` (larger first): W = lifetime, A = area, T = the
    /// largest remaining total of its sections, in the order of the current heuristic.
    fn key(&self, b: usize) -> (u128, u128, u128) {
        let t = self.total[self.s0[b] as usize..self.s1[b] as usize]
            .iter()
            .copied()
            .max()
            .unwrap_or(0) as u128;
        let (w, a) = (self.length[b], self.area[b]);
        match self.heuristic {
            0 => (w, a, t),
            1 => (t, a, w),
            _ => (t, w, a),
        }
    }

    /// One decision search with the current order: a packing of height <= `limit`?
    fn run(&mut self, limit: u64, node_limit: u64) -> Status {
        self.limit = limit;
        self.nodes_left = node_limit;
        let sections = self.floor.len();
        if self.total.iter().any(|&t| t > limit) {
            return Status::NotFound;
        }
        let all: Vec<(u64, u32, u32)> = (0..self.size.len() as u32).map(|b| (0, b, b)).collect();
        let cutpoints: Vec<usize> = (0..sections.saturating_sub(1))
            .filter(|&k| self.cuts[k] == 0)
            .map(|k| k + 1)
            .collect();
        self.solve_parts(0, sections, &cutpoints, &all, 0)
    }
}

/// Searches for a packing lower than `incumbent`. Returns offsets for all of `bufs` (0 for
/// inactive ones) for the lowest packing it finds before `deadline`, if any.
pub(crate) fn improve(
    bufs: &[Buffer],
    align: u64,
    incumbent: u64,
    deadline: Option<Instant>,
) -> Option<Vec<u64>> {
    let align = align.max(1);
    let ids: Vec<usize> = (0..bufs.len()).filter(|&i| bufs[i].is_active()).collect();
    if ids.is_empty() {
        return None;
    }
    let mut coords: Vec<u64> = ids
        .iter()
        .flat_map(|&i| [bufs[i].lower, bufs[i].upper])
        .collect();
    coords.sort_unstable();
    coords.dedup();
    let sections = coords.len() - 1;
    let n = ids.len();
    let mut s0 = Vec::with_capacity(n);
    let mut s1 = Vec::with_capacity(n);
    let mut size = Vec::with_capacity(n);
    let mut total = vec![0u64; sections];
    let mut sec_bufs: Vec<Vec<u32>> = vec![Vec::new(); sections];
    let mut cuts = vec![0u32; sections.saturating_sub(1)];
    for (b, &i) in ids.iter().enumerate() {
        let buf = bufs[i];
        let a = coords.partition_point(|&c| c < buf.lower);
        let c = coords.partition_point(|&c| c < buf.upper);
        for s in a..c {
            total[s] = total[s].checked_add(buf.size)?;
            sec_bufs[s].push(b as u32);
        }
        for cut in &mut cuts[a..c - 1] {
            *cut += 1;
        }
        s0.push(a as u32);
        s1.push(c as u32);
        size.push(buf.size);
    }
    let lb = total.iter().copied().max().unwrap_or(0);
    // Overlaps: a sweep over sections.
    let mut overlaps: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (b, ov) in overlaps.iter_mut().enumerate() {
        let mut seen: Vec<u32> = Vec::new();
        for live in &sec_bufs[s0[b] as usize..s1[b] as usize] {
            seen.extend(live.iter().copied().filter(|&j| j as usize != b));
        }
        seen.sort_unstable();
        seen.dedup();
        *ov = seen;
    }
    // Identical buffers (same sections and size) are placed in index order.
    let mut last_of_shape = std::collections::HashMap::new();
    let twin: Vec<Option<u32>> = (0..n)
        .map(|b| last_of_shape.insert((s0[b], s1[b], size[b]), b as u32))
        .collect();
    let length: Vec<u128> = (0..n)
        .map(|b| (bufs[ids[b]].upper - bufs[ids[b]].lower) as u128)
        .collect();
    let area: Vec<u128> = (0..n).map(|b| size[b] as u128 * length[b]).collect();
    let mut solver = Solver {
        align,
        s0,
        s1,
        size,
        overlaps,
        sec_bufs,
        heuristic: 0,
        length,
        area,
        twin,
        placed: vec![false; n],
        min_off: vec![0; n],
        floor: vec![0; sections],
        total,
        cuts,
        limit: 0,
        solution: vec![0; n],
        off_log: Vec::new(),
        floor_log: Vec::new(),
        stamp: vec![0; sections],
        generation: 0,
        affected: Vec::new(),
        orderings: Vec::new(),
        maxima: Vec::new(),
        nodes_left: 0,
        nodes: 0,
        deadline,
    };
    let frac = 0.3; // share of the time for phase 1
    let phase1 = deadline.map(|d| {
        let now = Instant::now();
        now + d.saturating_duration_since(now).mul_f64(frac)
    });
    let mut best_height = incumbent;
    let result = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn_scoped(scope, || {
                let mut found = None;
                let mut proven = lb; // no packing is lower than this
                for phase in 0..2 {
                    solver.deadline = if phase == 0 { phase1 } else { deadline };
                    let mut node_limit = n as u64;
                    'rounds: loop {
                        node_limit = node_limit.saturating_mul(2);
                        let mut tried = proven;
                        for k in 0..6u8 {
                            let h = k / 2;
                            if phase == 0 && k % 2 == 1 {
                                continue; // one lower-bound run per heuristic
                            }
                            if best_height <= proven.max(1) || best_height - 1 <= tried {
                                tried = proven;
                            }
                            let target = if phase == 0 {
                                lb
                            } else {
                                // Alternately bisect and step just below the best height.
                                let gap = best_height - 1 - tried;
                                if k % 2 == 0 {
                                    tried + gap.div_ceil(2)
                                } else {
                                    best_height - 1 - gap / 4
                                }
                            };
                            solver.heuristic = h;
                            match solver.run(target, node_limit) {
                                Status::Found => {
                                    let offs = solver.solution.clone();
                                    best_height =
                                        (0..n).map(|b| offs[b] + solver.size[b]).max().unwrap_or(0);
                                    found = Some(offs);
                                    if best_height <= proven {
                                        return found;
                                    }
                                }
                                Status::NotFound => {
                                    proven = target + 1;
                                    if best_height <= proven || phase == 0 {
                                        break 'rounds;
                                    }
                                }
                                Status::Aborted => tried = target,
                            }
                            if solver.deadline.is_some_and(|d| Instant::now() >= d) {
                                break 'rounds;
                            }
                        }
                    }
                    if best_height <= proven {
                        break;
                    }
                }
                found
            })
            .ok()?
            .join()
            .ok()?
    });
    let offs = result?;
    let mut offsets = vec![0u64; bufs.len()];
    for (b, &i) in ids.iter().enumerate() {
        offsets[i] = offs[b];
    }
    Some(offsets)
}
