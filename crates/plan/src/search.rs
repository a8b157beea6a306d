//! Exact branch and bound over canonical placements (in the spirit of MiniMalloc, Moffitt 2023).
//!
//! Time is cut into *sections* (the elementary intervals between consecutive buffer endpoints);
//! each section has a *floor*, the lowest offset still free in it. A node takes the leftmost
//! maximal run `R` of sections whose floor is the global minimum `m` and branches on
//!
//! * placing at `m` an unplaced buffer whose sections all lie in `R` (the buffer then rests on
//!   the floor), or
//! * declaring that no buffer sits at level `m` in `R`: `R`'s floor rises to the lower of its
//!   neighbours' floors. (In a bottom-justified solution a buffer above `m` in `R` rests on a
//!   chain of buffers that ends in one reaching outside `R`, so nothing lies below that level.)
//!
//! Every bottom-justified packing, in particular an optimal one, is reached this way. Symmetry:
//! placements at the same level go left to right; identical buffers are placed in index order.
//! Pruning: a section's floor plus the bytes of the unplaced buffers live in it may not exceed
//! the height limit (placing never changes this sum, so only floor raises can violate it).
//! Finding a solution lowers the limit below its height and the search continues.

use std::time::Instant;

use crate::pack::{Buffer, align_up};

struct Search {
    start: Vec<u32>,
    end: Vec<u32>,
    size: Vec<u64>,
    /// Per section, the buffers starting there, in candidate priority order.
    by_start: Vec<Vec<u32>>,
    /// The previous buffer of identical shape (same sections and size), if any.
    twin: Vec<u32>,
    /// Position of each buffer in the candidate priority order.
    rank: Vec<u32>,
    floor: Vec<u64>,
    rem: Vec<u64>,
    placed: Vec<bool>,
    solution: Vec<u64>,
    cross: Vec<i32>,
    nplaced: usize,
    /// Every buffer must end at or below this.
    limit: u64,
    nodes: u64,
    node_limit: u64,
    deadline: Option<Instant>,
    cands: Vec<Vec<u32>>,
    /// Scratch: segment trees (size 2 * leaves) for floor maxima and inferred floors.
    leaves: usize,
    maxtree: Vec<u64>,
    mintree: Vec<u64>,
}

const NONE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Found,
    NotFound,
    Aborted,
}

impl Search {
    /// Section inference: an unplaced buffer cannot go below the highest floor among its
    /// sections, so no section can be filled below the lowest such bound of the buffers live in
    /// it. Returns false if some section then cannot hold its unplaced bytes under the limit.
    fn infer(&mut self) -> bool {
        let p = self.leaves;
        let sections = self.floor.len();
        self.maxtree[p..p + sections].copy_from_slice(&self.floor);
        for k in (1..p).rev() {
            self.maxtree[k] = self.maxtree[2 * k].max(self.maxtree[2 * k + 1]);
        }
        self.mintree.fill(u64::MAX);
        for b in 0..self.start.len() {
            if self.placed[b] {
                continue;
            }
            let (lo, hi) = (self.start[b] as usize + p, self.end[b] as usize + p);
            let mut c = 0;
            let (mut l, mut r) = (lo, hi);
            while l < r {
                if l & 1 == 1 {
                    c = c.max(self.maxtree[l]);
                    l += 1;
                }
                if r & 1 == 1 {
                    r -= 1;
                    c = c.max(self.maxtree[r]);
                }
                l >>= 1;
                r >>= 1;
            }
            if c.saturating_add(self.size[b]) > self.limit {
                return false;
            }
            let (mut l, mut r) = (lo, hi);
            while l < r {
                if l & 1 == 1 {
                    self.mintree[l] = self.mintree[l].min(c);
                    l += 1;
                }
                if r & 1 == 1 {
                    r -= 1;
                    self.mintree[r] = self.mintree[r].min(c);
                }
                l >>= 1;
                r >>= 1;
            }
        }
        for k in 2..2 * p {
            self.mintree[k] = self.mintree[k].min(self.mintree[k / 2]);
        }
        for s in 0..sections {
            let r = self.rem[s];
            if r > 0 && self.mintree[p + s].max(self.floor[s]).saturating_add(r) > self.limit {
                return false;
            }
        }
        true
    }

    /// Decision search on the sections `lo..=hi` (no unplaced buffer crosses their borders):
    /// place every unplaced buffer there with its top at most `limit`. On success the offsets
    /// are in `solution`.
    fn dfs(
        &mut self,
        depth: usize,
        lo: usize,
        hi: usize,
        last_level: u64,
        last_end: u32,
    ) -> Status {
        self.nodes += 1;
        if self.nodes & 255 == 0
            && (self.nodes >= self.node_limit || self.deadline.is_some_and(|d| Instant::now() >= d))
        {
            return Status::Aborted;
        }
        let mut m = u64::MAX;
        let mut rs = 0;
        for s in lo..=hi {
            let r = self.rem[s];
            if r > 0 {
                let f = self.floor[s];
                if f.saturating_add(r) > self.limit {
                    return Status::NotFound;
                }
                if f < m {
                    m = f;
                    rs = s;
                }
            }
        }
        if m == u64::MAX {
            return Status::Found; // everything here is placed
        }
        if !self.infer() {
            return Status::NotFound;
        }
        // Decomposition: sections joined by no unplaced buffer are independent subproblems.
        self.cross[lo..=hi].fill(0);
        for b in 0..self.start.len() {
            let (s0, s1) = (self.start[b] as usize, self.end[b] as usize);
            if !self.placed[b] && s0 >= lo && s1 <= hi + 1 && s1 - s0 > 1 {
                self.cross[s0] += 1;
                self.cross[s1 - 1] -= 1;
            }
        }
        let mut parts: Vec<(usize, usize)> = Vec::new();
        let mut acc = 0i32;
        let mut s = lo;
        while s <= hi {
            if self.rem[s] == 0 {
                s += 1;
                continue;
            }
            let a = s;
            loop {
                acc += self.cross[s];
                if acc == 0 || s == hi {
                    break;
                }
                s += 1;
            }
            parts.push((a, s));
            s += 1;
        }
        if parts.len() > 1 {
            for &(a, b) in &parts {
                let st = self.dfs(depth + 1, a, b, u64::MAX, 0);
                if st != Status::Found {
                    return st;
                }
            }
            return Status::Found;
        }
        let mut re = rs;
        while re < hi && self.rem[re + 1] > 0 && self.floor[re + 1] == m {
            re += 1;
        }
        let from = if last_level == m {
            (last_end as usize).max(rs)
        } else {
            rs
        };
        if self.cands.len() <= depth {
            self.cands.resize_with(depth + 1, Vec::new);
        }
        let mut cands = std::mem::take(&mut self.cands[depth]);
        cands.clear();
        for s in from..=re {
            for &b in &self.by_start[s] {
                let bi = b as usize;
                if !self.placed[bi]
                    && self.end[bi] as usize <= re + 1
                    && (self.twin[bi] == NONE || self.placed[self.twin[bi] as usize])
                {
                    cands.push(b);
                }
            }
        }
        cands.sort_unstable_by_key(|&b| self.rank[b as usize]);
        let mut status = Status::NotFound;
        for &b in &cands {
            let bi = b as usize;
            let (s0, s1, size) = (
                self.start[bi] as usize,
                self.end[bi] as usize,
                self.size[bi],
            );
            for s in s0..s1 {
                self.floor[s] = m + size;
                self.rem[s] -= size;
            }
            self.placed[bi] = true;
            self.nplaced += 1;
            status = self.dfs(depth + 1, lo, hi, m, s1 as u32);
            self.nplaced -= 1;
            self.placed[bi] = false;
            for s in s0..s1 {
                self.floor[s] = m;
                self.rem[s] += size;
            }
            if status == Status::Found {
                self.solution[bi] = m;
            }
            if status != Status::NotFound {
                break;
            }
        }
        self.cands[depth] = cands;
        if status != Status::NotFound {
            return status;
        }
        // Nothing at level m in R: raise R to its lower neighbour.
        let left = if rs > lo && self.rem[rs - 1] > 0 {
            self.floor[rs - 1]
        } else {
            u64::MAX
        };
        let right = if re < hi && self.rem[re + 1] > 0 {
            self.floor[re + 1]
        } else {
            u64::MAX
        };
        let level = left.min(right);
        if level > self.limit {
            return Status::NotFound;
        }
        // Dominance: a buffer inside R that fits below `level` would rest lower in any packing
        // of this branch, so this branch holds no bottom-justified packing.
        for s in rs..=re {
            for &b in &self.by_start[s] {
                let bi = b as usize;
                if !self.placed[bi] && self.end[bi] as usize <= re + 1 && self.size[bi] <= level - m
                {
                    return Status::NotFound;
                }
            }
        }
        for s in rs..=re {
            self.floor[s] = level;
        }
        let status = self.dfs(depth + 1, lo, hi, last_level, last_end);
        for s in rs..=re {
            self.floor[s] = m;
        }
        status
    }
}

/// Searches for a packing lower than `incumbent` (sizes padded to `align`, so every floor and
/// offset stays aligned). Returns offsets for all of `bufs` (0 for inactive ones) if it finds
/// one.
pub(crate) fn improve(
    bufs: &[Buffer],
    align: u64,
    incumbent: u64,
    deadline: Option<Instant>,
) -> Option<Vec<u64>> {
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
    let mut start = Vec::with_capacity(n);
    let mut end = Vec::with_capacity(n);
    let mut size = Vec::with_capacity(n);
    let mut rem = vec![0u64; sections];
    for &i in &ids {
        let b = bufs[i];
        let s0 = coords.partition_point(|&c| c < b.lower);
        let s1 = coords.partition_point(|&c| c < b.upper);
        let sz = align_up(b.size, align);
        if sz < b.size {
            return None; // padding overflowed
        }
        for r in &mut rem[s0..s1] {
            *r = r.checked_add(sz)?;
        }
        start.push(s0 as u32);
        end.push(s1 as u32);
        size.push(sz);
    }
    let lb = rem.iter().copied().max().unwrap_or(0);
    // Candidate priority orders (MiniMalloc's preorderings): T = the largest total of the
    // sections the buffer lives in, W = its number of sections, A = its area (bytes x time).
    let total: Vec<u64> = (0..n)
        .map(|b| {
            rem[start[b] as usize..end[b] as usize]
                .iter()
                .copied()
                .max()
                .unwrap_or(0)
        })
        .collect();
    let width: Vec<u64> = (0..n).map(|b| (end[b] - start[b]) as u64).collect();
    let area: Vec<u128> = (0..n)
        .map(|b| size[b] as u128 * (bufs[ids[b]].upper - bufs[ids[b]].lower) as u128)
        .collect();
    let orders: Vec<Vec<u32>> = [0, 1, 2]
        .iter()
        .map(|&h| {
            let mut order: Vec<u32> = (0..n as u32).collect();
            order.sort_by_key(|&b| {
                let b = b as usize;
                let (t, w, a) = (total[b] as u128, width[b] as u128, area[b]);
                let key = match h {
                    0 => (w, a, t),
                    1 => (t, a, w),
                    _ => (t, w, a),
                };
                (std::cmp::Reverse(key), b)
            });
            order
        })
        .collect();
    let leaves = sections.next_power_of_two();
    let mut search = Search {
        start,
        end,
        size,
        by_start: Vec::new(),
        twin: Vec::new(),
        rank: vec![0; n],
        floor: vec![0; sections],
        rem,
        placed: vec![false; n],
        solution: vec![0; n],
        cross: vec![0; sections],
        nplaced: 0,
        limit: incumbent.saturating_sub(1),
        nodes: 0,
        node_limit: u64::MAX,
        deadline,
        cands: Vec::new(),
        leaves,
        maxtree: vec![0; 2 * leaves],
        mintree: vec![0; 2 * leaves],
    };
    let set_order = |search: &mut Search, order: &[u32]| {
        search.by_start = vec![Vec::new(); sections];
        search.twin = vec![NONE; n];
        let mut last_of_shape = std::collections::HashMap::new();
        for (k, &b) in order.iter().enumerate() {
            let bi = b as usize;
            search.rank[bi] = k as u32;
            search.by_start[search.start[bi] as usize].push(b);
            if let Some(prev) =
                last_of_shape.insert((search.start[bi], search.end[bi], search.size[bi]), b)
            {
                search.twin[bi] = prev;
            }
        }
    };
    let frac = 0.6; // share of the time for phase 1
    let phase1 = deadline.map(|d| {
        let now = Instant::now();
        now + d.saturating_duration_since(now).mul_f64(frac)
    });
    let mut best_height = incumbent;
    // Deep recursion: run on a thread with a generous stack.
    let result = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn_scoped(scope, || {
                let mut found = None;
                // Phase 1 looks for a packing at the lower bound (tightest pruning). Phase 2
                // bisects between the proven bound and the best height so far. Both are round
                // robins over the candidate orders with doubling node limits (restarts), as in
                // MiniMalloc.
                let mut proven = lb; // no packing is lower than this
                for phase in 0..2 {
                    search.deadline = if phase == 0 { phase1 } else { deadline };
                    let mut node_limit = n as u64;
                    'rounds: loop {
                        node_limit = node_limit.saturating_mul(2);
                        let mut tried = proven;
                        for order in &orders {
                            if best_height <= proven.max(1) || best_height - 1 <= tried {
                                tried = proven;
                            }
                            let target = if phase == 0 {
                                lb
                            } else {
                                tried + (best_height - 1 - tried).div_ceil(2)
                            };
                            set_order(&mut search, order);
                            search.limit = target;
                            search.nodes = 0;
                            search.node_limit = node_limit;
                            match search.dfs(0, 0, sections - 1, u64::MAX, 0) {
                                Status::Found => {
                                    let offs = search.solution.clone();
                                    best_height =
                                        (0..n).map(|b| offs[b] + search.size[b]).max().unwrap_or(0);
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
                            if search.deadline.is_some_and(|d| Instant::now() >= d) {
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
