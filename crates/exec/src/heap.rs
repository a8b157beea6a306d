//! A counting global allocator: the heap bytes live now, their peak over a window, and the
//! allocations made on threads that asked to be tracked. Programs that report measured
//! memory install it with `#[global_allocator]`; it forwards to the system allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

pub struct CountingAlloc {
    live: AtomicUsize,
    peak: AtomicUsize,
    tracked_allocs: AtomicU64,
    tracked_bytes: AtomicU64,
    allocs: AtomicU64,
}

thread_local! {
    static TRACKED: Cell<bool> = const { Cell::new(false) };
}

impl CountingAlloc {
    pub const fn new() -> CountingAlloc {
        CountingAlloc {
            live: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            tracked_allocs: AtomicU64::new(0),
            tracked_bytes: AtomicU64::new(0),
            allocs: AtomicU64::new(0),
        }
    }

    /// Heap bytes allocated and not yet freed.
    pub fn live(&self) -> usize {
        self.live.load(Relaxed)
    }

    /// The most bytes live since the last [`CountingAlloc::reset_peak`].
    pub fn peak(&self) -> usize {
        self.peak.load(Relaxed)
    }

    /// Starts a new peak window at the bytes live now.
    pub fn reset_peak(&self) {
        self.peak.store(self.live(), Relaxed);
    }

    /// Counts the allocations of the current thread from now until [`CountingAlloc::untrack`].
    pub fn track(&self) {
        TRACKED.with(|t| t.set(true));
    }

    pub fn untrack(&self) {
        TRACKED.with(|t| t.set(false));
    }

    /// (allocations, bytes) made by tracked threads so far (reallocations count as one
    /// allocation of the new size).
    pub fn tracked(&self) -> (u64, u64) {
        (
            self.tracked_allocs.load(Relaxed),
            self.tracked_bytes.load(Relaxed),
        )
    }

    /// Allocations (and reallocations) on every thread so far.
    pub fn allocations(&self) -> u64 {
        self.allocs.load(Relaxed)
    }

    fn added(&self, n: usize) {
        self.allocs.fetch_add(1, Relaxed);
        let now = self.live.fetch_add(n, Relaxed) + n;
        self.peak.fetch_max(now, Relaxed);
        if TRACKED.try_with(Cell::get).unwrap_or(false) {
            self.tracked_allocs.fetch_add(1, Relaxed);
            self.tracked_bytes.fetch_add(n as u64, Relaxed);
        }
    }
}

impl Default for CountingAlloc {
    fn default() -> Self {
        CountingAlloc::new()
    }
}

// SAFETY: every call forwards to `System` with the caller's layout; the counters are atomics.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            self.added(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            self.added(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) };
        self.live.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            self.live.fetch_sub(layout.size(), Relaxed);
            self.added(new_size);
        }
        p
    }
}
