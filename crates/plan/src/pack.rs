//! Offset assignment ("dynamic storage allocation"): place buffers with half-open live ranges
//! `[lower, upper)` in one arena so that buffers that are live at the same time never share
//! bytes, minimising the arena height `max(offset + size)`.
//!
//! * [`lower_bound`] — the peak of the live bytes over time; no packing can be lower.
//! * [`greedy_by_size`], [`greedy_by_breadth`], [`best_fit_heap`] — fast `O(n log n + conflicts)`
//!   heuristics.
//! * [`pack`] — the best heuristic, then an exact branch-and-bound search over canonical
//!   (bottom-justified) placements that stops at the lower bound or at the time limit.
//! * [`verify`] — an independent `O(n log n)` checker.
//! * [`read_csv`] / [`write_csv`] — the MiniMalloc CSV format `id,lower,upper,size[,offset]`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::error::{CsvError, PackError, Placed};

lowmem_ir::define_index!(
    /// Index of a buffer in a packing problem (the slice of [`Buffer`]s and the
    /// [`Packing::offsets`] that place them).
    pub struct BufferId;
);

/// A buffer live over the half-open time range `[lower, upper)` that needs `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Buffer {
    pub lower: u64,
    pub upper: u64,
    pub size: u64,
}

impl Buffer {
    /// Whether the buffer occupies any memory at any time (non-empty range and size).
    pub fn is_active(&self) -> bool {
        self.size > 0 && self.lower < self.upper
    }

    /// Whether the live ranges of two buffers intersect.
    pub fn overlaps_in_time(&self, other: &Buffer) -> bool {
        self.lower < other.upper && other.lower < self.upper
    }
}

/// The result of an offset assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packing {
    /// One offset per input buffer (0 for zero-size or empty-range buffers).
    pub offsets: Vec<u64>,
    /// `max(offset + size)` over the buffers (0 when nothing is active); saturates at `u64::MAX`.
    pub height: u64,
    /// Which method produced the packing.
    pub heuristic: &'static str,
}

/// Rounds `x` up to a multiple of `align`, saturating at the largest multiple of `align`.
pub(crate) fn align_up(x: u64, align: u64) -> u64 {
    if align <= 1 {
        return x;
    }
    match x.checked_next_multiple_of(align) {
        Some(v) => v,
        None => (u64::MAX / align) * align,
    }
}

fn height_of(bufs: &[Buffer], offsets: &[u64]) -> u64 {
    bufs.iter()
        .zip(offsets)
        .filter(|(b, _)| b.is_active())
        .map(|(b, &o)| o.saturating_add(b.size))
        .max()
        .unwrap_or(0)
}

/// The peak over time of the sum of the sizes of live buffers (saturating). No valid packing
/// has a smaller height. `O(n log n)`.
pub fn lower_bound(bufs: &[Buffer]) -> u64 {
    let mut events: Vec<(u64, bool, u64)> = Vec::with_capacity(bufs.len() * 2);
    for b in bufs.iter().filter(|b| b.is_active()) {
        // `false` (end) sorts before `true` (start): ranges are half-open.
        events.push((b.lower, true, b.size));
        events.push((b.upper, false, b.size));
    }
    events.sort_unstable();
    let (mut live, mut peak) = (0u128, 0u128);
    for (_, start, size) in events {
        if start {
            live += size as u128;
            peak = peak.max(live);
        } else {
            live -= size as u128;
        }
    }
    u64::try_from(peak).unwrap_or(u64::MAX)
}

/// Sorted distinct time points of the active buffers, and each buffer's compressed range.
struct Times {
    coords: Vec<u64>,
}

impl Times {
    fn new(bufs: &[Buffer]) -> Self {
        let mut coords: Vec<u64> = bufs
            .iter()
            .filter(|b| b.is_active())
            .flat_map(|b| [b.lower, b.upper])
            .collect();
        coords.sort_unstable();
        coords.dedup();
        Times { coords }
    }
    fn idx(&self, t: u64) -> u32 {
        self.coords.partition_point(|&c| c < t) as u32
    }
    fn range(&self, b: &Buffer) -> (u32, u32) {
        (self.idx(b.lower), self.idx(b.upper))
    }
}

/// The buffers placed so far, indexed by live range: a segment tree over the compressed time
/// points (for "live at time t") plus the placed buffers ordered by start (for "starts inside
/// (l, u)"). Together they report every placed buffer whose range intersects a query range in
/// `O(log n + k)`.
struct PlacedIndex {
    leaves: usize,
    seg: Vec<Vec<(u64, u64)>>,
    starts: BTreeMap<(u32, u32), (u64, u64)>,
}

impl PlacedIndex {
    fn new(points: usize) -> Self {
        let leaves = points.max(1).next_power_of_two();
        PlacedIndex {
            leaves,
            seg: vec![Vec::new(); 2 * leaves],
            starts: BTreeMap::new(),
        }
    }
    fn insert(&mut self, (lo, hi): (u32, u32), id: u32, bytes: (u64, u64)) {
        self.starts.insert((lo, id), bytes);
        let (mut l, mut r) = (lo as usize + self.leaves, hi as usize + self.leaves);
        while l < r {
            if l & 1 == 1 {
                self.seg[l].push(bytes);
                l += 1;
            }
            if r & 1 == 1 {
                r -= 1;
                self.seg[r].push(bytes);
            }
            l >>= 1;
            r >>= 1;
        }
    }
    /// Calls `f` with the byte range of every placed buffer whose compressed range intersects `[lo, hi)`.
    fn for_each_intersecting(&self, (lo, hi): (u32, u32), mut f: impl FnMut((u64, u64))) {
        let mut node = lo as usize + self.leaves;
        while node >= 1 {
            for &bytes in &self.seg[node] {
                f(bytes);
            }
            node >>= 1;
        }
        for (_, &bytes) in self.starts.range((lo + 1, 0)..(hi, 0)) {
            f(bytes);
        }
    }
}

/// Best-fit decoding: place the buffers in `order`, each in the smallest gap (between already
/// placed buffers that are live at the same time) that fits it, or on top of them.
pub(crate) fn decode_best_fit(bufs: &[Buffer], order: &[u32], align: u64) -> Vec<u64> {
    let align = align.max(1);
    let times = Times::new(bufs);
    let mut index = PlacedIndex::new(times.coords.len());
    let mut offsets = vec![0u64; bufs.len()];
    let mut busy: Vec<(u64, u64)> = Vec::new();
    for &i in order {
        let b = bufs[i as usize];
        if !b.is_active() {
            continue;
        }
        let range = times.range(&b);
        busy.clear();
        index.for_each_intersecting(range, |bytes| busy.push(bytes));
        busy.sort_unstable();
        let mut best: Option<(u64, u64)> = None; // (gap size, offset)
        let mut cur = 0u64;
        for &(o, e) in &busy {
            let start = align_up(cur, align);
            if o > start {
                let gap = o - start;
                if gap >= b.size && best.is_none_or(|(g, _)| gap < g) {
                    best = Some((gap, start));
                }
            }
            cur = cur.max(e);
        }
        let o = match best {
            Some((_, o)) => o,
            None => align_up(cur, align),
        };
        offsets[i as usize] = o;
        index.insert(range, i, (o, o.saturating_add(b.size)));
    }
    offsets
}

fn packing(bufs: &[Buffer], offsets: Vec<u64>, heuristic: &'static str) -> Packing {
    let height = height_of(bufs, &offsets);
    Packing {
        offsets,
        height,
        heuristic,
    }
}

/// Greedy by size (Pisarchyk & Lee 2020, TFLite's `GreedyBySize`): largest buffers first (ties:
/// longer lifetime first), each in the best-fitting gap among the already placed buffers that
/// are live at the same time. `O(n log n + conflicts)`.
pub fn greedy_by_size(bufs: &[Buffer], align: u64) -> Packing {
    let mut order: Vec<u32> = (0..bufs.len() as u32).collect();
    order.sort_by_key(|&i| {
        let b = bufs[i as usize];
        (
            std::cmp::Reverse(b.size),
            std::cmp::Reverse(b.upper.saturating_sub(b.lower)),
            i,
        )
    });
    packing(bufs, decode_best_fit(bufs, &order, align), "greedy-by-size")
}

/// Greedy by breadth (Pisarchyk & Lee 2020): buffers live at the busiest moments first. Each
/// buffer's key is the total size live at the busiest point of its own lifetime; larger keys
/// first, then larger sizes; best-fit placement as in [`greedy_by_size`].
pub fn greedy_by_breadth(bufs: &[Buffer], align: u64) -> Packing {
    let times = Times::new(bufs);
    let c = times.coords.len();
    // Live bytes on each elementary interval [coords[k], coords[k+1]).
    let mut delta = vec![0i128; c + 1];
    let ranges: Vec<(u32, u32)> = bufs.iter().map(|b| times.range(b)).collect();
    for (b, &(lo, hi)) in bufs.iter().zip(&ranges) {
        if b.is_active() {
            delta[lo as usize] += b.size as i128;
            delta[hi as usize] -= b.size as i128;
        }
    }
    let mut live = Vec::with_capacity(c);
    let mut acc = 0i128;
    for d in delta.iter().take(c) {
        acc += d;
        live.push(acc as u128);
    }
    // Sparse table for range maxima.
    let mut table = vec![live];
    let mut w = 1;
    while 2 * w <= c {
        let prev = table.last().expect("non-empty");
        let next: Vec<u128> = (0..=c - 2 * w).map(|k| prev[k].max(prev[k + w])).collect();
        table.push(next);
        w *= 2;
    }
    let range_max = |lo: usize, hi: usize| -> u128 {
        if lo >= hi {
            return 0;
        }
        let k = (usize::BITS - 1 - (hi - lo).leading_zeros()) as usize;
        table[k][lo].max(table[k][hi - (1 << k)])
    };
    let keys: Vec<u128> = bufs
        .iter()
        .zip(&ranges)
        .map(|(b, &(lo, hi))| {
            if b.is_active() {
                range_max(lo as usize, hi as usize)
            } else {
                0
            }
        })
        .collect();
    let mut order: Vec<u32> = (0..bufs.len() as u32).collect();
    order.sort_by_key(|&i| {
        let b = bufs[i as usize];
        (
            std::cmp::Reverse(keys[i as usize]),
            std::cmp::Reverse(b.size),
            std::cmp::Reverse(b.upper.saturating_sub(b.lower)),
            i,
        )
    });
    packing(
        bufs,
        decode_best_fit(bufs, &order, align),
        "greedy-by-breadth",
    )
}

/// A heap simulation over time in the style of XLA's heap simulator with a best-fit free list:
/// walk the allocation and free events in time order (frees first at equal times, larger
/// allocations first); each allocation takes the smallest free block that fits it (aligned), or
/// extends the top of the heap. `O(n log n)`.
pub fn best_fit_heap(bufs: &[Buffer], align: u64) -> Packing {
    let align = align.max(1);
    // (time, kind, tie, index): kind 0 = free, 1 = alloc; allocations larger first.
    let mut events: Vec<(u64, u8, std::cmp::Reverse<u64>, u32)> = Vec::new();
    for (i, b) in bufs.iter().enumerate() {
        if b.is_active() {
            events.push((b.lower, 1, std::cmp::Reverse(b.size), i as u32));
            events.push((b.upper, 0, std::cmp::Reverse(0), i as u32));
        }
    }
    events.sort_unstable();
    let mut offsets = vec![0u64; bufs.len()];
    let mut by_offset: BTreeMap<u64, u64> = BTreeMap::new(); // free block offset -> length
    let mut by_len: BTreeSet<(u64, u64)> = BTreeSet::new(); // (length, offset)
    let mut top = 0u64;
    for (_, kind, _, i) in events {
        let b = bufs[i as usize];
        if kind == 1 {
            // Best fit: the shortest free block that holds the aligned buffer.
            let mut chosen = None;
            for (checked, &(len, off)) in by_len.range((b.size, 0)..).enumerate() {
                let a = align_up(off, align);
                if a.saturating_add(b.size) <= off + len {
                    chosen = Some((len, off, a));
                    break;
                }
                if checked >= 64 {
                    // Any block this long fits whatever its alignment.
                    let need = b.size.saturating_add(align - 1);
                    chosen = by_len.range((need, 0)..).next().map(|&(len, off)| {
                        let a = align_up(off, align);
                        (len, off, a)
                    });
                    break;
                }
            }
            let a = match chosen {
                Some((len, off, a)) => {
                    by_len.remove(&(len, off));
                    by_offset.remove(&off);
                    if a > off {
                        by_offset.insert(off, a - off);
                        by_len.insert((a - off, off));
                    }
                    let end = a + b.size;
                    if end < off + len {
                        by_offset.insert(end, off + len - end);
                        by_len.insert((off + len - end, end));
                    }
                    a
                }
                None => {
                    let a = align_up(top, align);
                    if a > top {
                        by_offset.insert(top, a - top);
                        by_len.insert((a - top, top));
                    }
                    top = a.saturating_add(b.size);
                    a
                }
            };
            offsets[i as usize] = a;
        } else {
            let (mut off, mut end) = (
                offsets[i as usize],
                offsets[i as usize].saturating_add(b.size),
            );
            // Coalesce with the neighbouring free blocks.
            if let Some((&po, &pl)) = by_offset.range(..off).next_back()
                && po + pl == off
            {
                by_offset.remove(&po);
                by_len.remove(&(pl, po));
                off = po;
            }
            if let Some(&nl) = by_offset.get(&end) {
                by_offset.remove(&end);
                by_len.remove(&(nl, end));
                end += nl;
            }
            if end >= top {
                top = off;
            } else {
                by_offset.insert(off, end - off);
                by_len.insert((end - off, off));
            }
        }
    }
    packing(bufs, offsets, "best-fit-heap")
}

/// Offset assignment: the best of the heuristics, then an exact branch-and-bound search over
/// canonical placements that improves on it until the height equals the lower bound (or is
/// proven optimal) or `time_limit` has passed. Always returns the best packing found.
/// Deterministic except for where the time limit cuts the search.
pub fn pack(bufs: &[Buffer], align: u64, time_limit: Duration) -> Packing {
    let deadline = Instant::now().checked_add(time_limit);
    let align = align.max(1);
    let mut best = greedy_by_size(bufs, align);
    for p in [greedy_by_breadth(bufs, align), best_fit_heap(bufs, align)] {
        if p.height < best.height {
            best = p;
        }
    }
    let lb = lower_bound(bufs);
    if best.height <= lb {
        return best;
    }
    if let Some(offsets) = crate::search::improve(bufs, align, best.height, deadline) {
        let p = packing(bufs, offsets, "branch-and-bound");
        if p.height < best.height && verify(bufs, &p.offsets, align).is_ok() {
            best = p;
        }
    }
    best
}

/// Independent checker: every offset is a multiple of `align` and no two buffers whose live
/// ranges intersect share bytes. Returns the height. A sweep over time keeps the live buffers
/// ordered by offset, so each new buffer is checked against its two neighbours: `O(n log n)`.
pub fn verify(bufs: &[Buffer], offsets: &[u64], align: u64) -> Result<u64, PackError> {
    if bufs.len() != offsets.len() {
        return Err(PackError::Count {
            buffers: bufs.len(),
            offsets: offsets.len(),
        });
    }
    let align = align.max(1);
    let mut height = 0u64;
    for (i, (b, &o)) in bufs.iter().zip(offsets).enumerate() {
        let buffer = BufferId::new(i);
        if b.lower > b.upper {
            return Err(PackError::Range {
                buffer,
                lower: b.lower,
                upper: b.upper,
            });
        }
        if o % align != 0 {
            return Err(PackError::Misaligned {
                buffer,
                offset: o,
                align,
            });
        }
        if b.is_active() {
            let end = o.checked_add(b.size).ok_or(PackError::Overflow {
                buffer,
                offset: o,
                size: b.size,
            })?;
            height = height.max(end);
        }
    }
    let mut events: Vec<(u64, bool, u32)> = Vec::new();
    for (i, b) in bufs.iter().enumerate() {
        if b.is_active() {
            events.push((b.lower, true, i as u32));
            events.push((b.upper, false, i as u32));
        }
    }
    events.sort_unstable(); // ends (false) before starts at equal times: half-open ranges
    let describe = |i: usize| {
        let b = bufs[i];
        Placed {
            buffer: BufferId::new(i),
            lower: b.lower,
            upper: b.upper,
            offset: offsets[i],
            size: b.size,
        }
    };
    let mut live: BTreeMap<u64, u32> = BTreeMap::new(); // offset -> buffer
    for (_, start, i) in events {
        let (o, size) = (offsets[i as usize], bufs[i as usize].size);
        if !start {
            live.remove(&o);
            continue;
        }
        if let Some((&po, &j)) = live.range(..=o).next_back()
            && po + bufs[j as usize].size > o
        {
            return Err(PackError::Overlap(
                describe(j as usize),
                describe(i as usize),
            ));
        }
        if let Some((&no, &j)) = live.range(o..).next()
            && no < o + size
        {
            return Err(PackError::Overlap(
                describe(i as usize),
                describe(j as usize),
            ));
        }
        live.insert(o, i);
    }
    Ok(height)
}

/// Parses the MiniMalloc CSV format: header `id,lower,upper,size` (further columns such as
/// `offset` are ignored), then one buffer per line. Blank lines are skipped. Errors name the
/// line.
pub fn read_csv(text: &str) -> Result<Vec<(String, Buffer)>, CsvError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(k, l)| (k + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty());
    let (hline, header) = lines.next().ok_or(CsvError::Empty)?;
    let names: Vec<&str> = header.split(',').map(str::trim).collect();
    if names.len() < 4 || names[..4] != ["id", "lower", "upper", "size"] {
        return Err(CsvError::Header {
            line: hline,
            found: header.to_string(),
        });
    }
    let mut out = Vec::new();
    for (k, line) in lines {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() < 4 {
            return Err(CsvError::Fields {
                line: k,
                found: fields.len(),
            });
        }
        let num = |f: usize, field: &'static str| -> Result<u64, CsvError> {
            fields[f].parse::<u64>().map_err(|e| CsvError::Number {
                line: k,
                field,
                value: fields[f].to_string(),
                reason: e.to_string(),
            })
        };
        let b = Buffer {
            lower: num(1, "lower")?,
            upper: num(2, "upper")?,
            size: num(3, "size")?,
        };
        if b.lower > b.upper {
            return Err(CsvError::Range {
                line: k,
                lower: b.lower,
                upper: b.upper,
            });
        }
        out.push((fields[0].to_string(), b));
    }
    Ok(out)
}

/// Writes `id,lower,upper,size,offset` CSV.
///
/// # Panics
/// If the three slices differ in length.
pub fn write_csv<S: AsRef<str>>(ids: &[S], bufs: &[Buffer], offsets: &[u64]) -> String {
    assert_eq!(ids.len(), bufs.len(), "one id per buffer");
    assert_eq!(offsets.len(), bufs.len(), "one offset per buffer");
    let mut s = String::from("id,lower,upper,size,offset\n");
    for ((id, b), o) in ids.iter().zip(bufs).zip(offsets) {
        s.push_str(&format!(
            "{},{},{},{},{}\n",
            id.as_ref(),
            b.lower,
            b.upper,
            b.size,
            o
        ));
    }
    s
}
