//! Our SGEMM, packing into the caller's workspace (no allocation): BLIS-style blocking
//! (`KC x NC` blocks of B packed once and shared, `MC x KC` blocks of A packed per task), a
//! register-blocked micro-kernel written for LLVM to vectorise, compiled for AVX-512, for
//! AVX2 + FMA (`std::arch` intrinsics, 8 x 32 and 6 x 16 tiles) and a portable one for the
//! baseline target (4 x 16, plain loops for LLVM to vectorise), chosen at run time.
//!
//! Determinism: every output element is reduced over `k` in the same order (depth blocks in
//! order, each accumulated from zero in the micro-kernel and then added to `c`) whichever
//! task computes it, so results do not depend on the thread count (they do depend on the
//! kernel variant the CPU selects).

pub use lowmem_ir::scratch::sgemm_workspace_len;
use lowmem_ir::scratch::{
    GEMM_KC as KC, GEMM_MC as MC, GEMM_MR_MAX, GEMM_NC as NC, GEMM_NR_MAX, GEMM_NS as NS,
    sgemm_tasks,
};
use rayon::prelude::*;

/// A strided read-only matrix: element `(i, j)` at `i * rs + j * cs`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    d: &'a [f32],
    rs: usize,
    cs: usize,
}

/// `c`'s base pointer, shared by tasks that write disjoint tiles.
#[derive(Clone, Copy)]
struct CPtr(*mut f32);
// SAFETY: tasks write disjoint elements of `c` (distinct work items), see `driver`.
unsafe impl Send for CPtr {}
unsafe impl Sync for CPtr {}

impl CPtr {
    /// (A method, so that closures capture the whole `CPtr`, not its raw field.)
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// The micro-kernel: `acc = A panel (MR x kc, k-major) * B panel (kc x NR, k-major)`.
#[inline(always)]
fn micro<const MR: usize, const NR: usize, const FMA: bool>(
    kc: usize,
    a: &[f32],
    b: &[f32],
    acc: &mut [[f32; NR]; MR],
) {
    let mut c = [[0f32; NR]; MR];
    for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(kc) {
        let ap: &[f32; MR] = ap.try_into().unwrap();
        let bp: &[f32; NR] = bp.try_into().unwrap();
        for i in 0..MR {
            for j in 0..NR {
                c[i][j] = if FMA {
                    ap[i].mul_add(bp[j], c[i][j])
                } else {
                    c[i][j] + ap[i] * bp[j]
                };
            }
        }
    }
    *acc = c;
}

type Kernel<const MR: usize, const NR: usize> =
    unsafe fn(usize, &[f32], &[f32], &mut [[f32; NR]; MR]);

/// AVX-512 8 x 32 micro-kernel (16 zmm accumulators).
///
/// # Safety
/// The CPU has AVX-512F; `a` holds `8 * kc` and `b` `32 * kc` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn micro_avx512(kc: usize, a: &[f32], b: &[f32], acc: &mut [[f32; 32]; 8]) {
    use std::arch::x86_64::*;
    assert!(a.len() >= 8 * kc && b.len() >= 32 * kc);
    let mut c = [[_mm512_setzero_ps(); 2]; 8];
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for p in 0..kc {
        // SAFETY: p < kc, within the lengths asserted above.
        unsafe {
            let b0 = _mm512_loadu_ps(bp.add(p * 32));
            let b1 = _mm512_loadu_ps(bp.add(p * 32 + 16));
            for (i, ci) in c.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add(p * 8 + i));
                ci[0] = _mm512_fmadd_ps(av, b0, ci[0]);
                ci[1] = _mm512_fmadd_ps(av, b1, ci[1]);
            }
        }
    }
    for (row, ci) in acc.iter_mut().zip(&c) {
        // SAFETY: each row holds 32 values.
        unsafe {
            _mm512_storeu_ps(row.as_mut_ptr(), ci[0]);
            _mm512_storeu_ps(row.as_mut_ptr().add(16), ci[1]);
        }
    }
}

/// AVX2 + FMA 6 x 16 micro-kernel (12 ymm accumulators).
///
/// # Safety
/// The CPU has AVX2 and FMA; `a` holds `6 * kc` and `b` `16 * kc` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn micro_avx2(kc: usize, a: &[f32], b: &[f32], acc: &mut [[f32; 16]; 6]) {
    use std::arch::x86_64::*;
    assert!(a.len() >= 6 * kc && b.len() >= 16 * kc);
    let mut c = [[_mm256_setzero_ps(); 2]; 6];
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for p in 0..kc {
        // SAFETY: p < kc, within the lengths asserted above.
        unsafe {
            let b0 = _mm256_loadu_ps(bp.add(p * 16));
            let b1 = _mm256_loadu_ps(bp.add(p * 16 + 8));
            for (i, ci) in c.iter_mut().enumerate() {
                let av = _mm256_set1_ps(*ap.add(p * 6 + i));
                ci[0] = _mm256_fmadd_ps(av, b0, ci[0]);
                ci[1] = _mm256_fmadd_ps(av, b1, ci[1]);
            }
        }
    }
    for (row, ci) in acc.iter_mut().zip(&c) {
        // SAFETY: each row holds 16 values.
        unsafe {
            _mm256_storeu_ps(row.as_mut_ptr(), ci[0]);
            _mm256_storeu_ps(row.as_mut_ptr().add(8), ci[1]);
        }
    }
}

unsafe fn micro_base(kc: usize, a: &[f32], b: &[f32], acc: &mut [[f32; 16]; 4]) {
    micro::<4, 16, false>(kc, a, b, acc)
}

/// BLAS-style `c = alpha * op(a) * op(b) + beta * c` on contiguous row-major matrices.
///
/// `a` is `m x k` (`k x m` when `trans_a`), `b` is `k x n` (`n x k` when `trans_b`), `c` is
/// `m x n`. With `beta == 0` the old contents of `c` are not read (NaNs there do not leak).
/// `ws`: at least [`sgemm_workspace_len`]`(m, n, k)` elements (the packed blocks).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    trans_a: bool,
    b: &[f32],
    trans_b: bool,
    beta: f32,
    c: &mut [f32],
    ws: &mut [f32],
) {
    assert!(
        a.len() >= m * k,
        "sgemm: a has {} < {m}x{k} elements",
        a.len()
    );
    assert!(
        b.len() >= k * n,
        "sgemm: b has {} < {k}x{n} elements",
        b.len()
    );
    assert!(
        c.len() >= m * n,
        "sgemm: c has {} < {m}x{n} elements",
        c.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    let c = &mut c[..m * n];
    if k == 0 {
        if beta == 0.0 {
            c.fill(0.0);
        } else {
            c.iter_mut().for_each(|v| *v *= beta);
        }
        return;
    }
    if !lowmem_ir::scratch::sgemm_packs(m, n, k) {
        direct(m, n, k, alpha, a, trans_a, b, trans_b, beta, c);
        return;
    }
    assert!(
        ws.len() >= sgemm_workspace_len(m, n, k),
        "sgemm: workspace of {} < {} elements",
        ws.len(),
        sgemm_workspace_len(m, n, k)
    );
    let a = if trans_a {
        Mat { d: a, rs: 1, cs: m }
    } else {
        Mat { d: a, rs: k, cs: 1 }
    };
    let b = if trans_b {
        Mat { d: b, rs: 1, cs: k }
    } else {
        Mat { d: b, rs: n, cs: 1 }
    };
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return driver::<8, 32>(m, n, k, alpha, a, b, beta, c, ws, micro_avx512);
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return driver::<6, 16>(m, n, k, alpha, a, b, beta, c, ws, micro_avx2);
        }
    }
    driver::<4, 16>(m, n, k, alpha, a, b, beta, c, ws, micro_base)
}

/// Packs rows `ic..ic + mc`, depths `pc..pc + kc` of `a` into MR-row panels (k-major,
/// zero-padded rows).
fn pack_a<const MR: usize>(a: Mat, ic: usize, mc: usize, pc: usize, kc: usize, dst: &mut [f32]) {
    for (r, panel) in dst[..mc.div_ceil(MR) * MR * kc]
        .chunks_exact_mut(MR * kc)
        .enumerate()
    {
        let i0 = ic + r * MR;
        let rows = MR.min(ic + mc - i0);
        if rows < MR {
            panel.fill(0.0);
        }
        // Written in order, `k` outer: one short contiguous row of the panel at a time
        // (a copy when A is transposed), rather than `MR`-strided scalar stores.
        if a.rs == 1 {
            for (p, dst) in panel.chunks_exact_mut(MR).enumerate() {
                let base = (pc + p) * a.cs + i0;
                dst[..rows].copy_from_slice(&a.d[base..base + rows]);
            }
        } else if rows == MR && a.cs == 1 {
            let start: [usize; MR] = std::array::from_fn(|i| (i0 + i) * a.rs + pc);
            let src: [&[f32]; MR] = std::array::from_fn(|i| &a.d[start[i]..start[i] + kc]);
            for (p, dst) in panel.chunks_exact_mut(MR).enumerate() {
                for i in 0..MR {
                    dst[i] = src[i][p];
                }
            }
        } else {
            for (p, dst) in panel.chunks_exact_mut(MR).enumerate() {
                for (i, d) in dst.iter_mut().enumerate().take(rows) {
                    *d = a.d[(i0 + i) * a.rs + (pc + p) * a.cs];
                }
            }
        }
    }
}

/// Packs depths `pc..pc + kc`, columns `jc..jc + nc` of `b` into NR-column panels (k-major,
/// zero-padded columns).
/// Packs columns `jc..jc + nc` of B's depth block `pc..pc + kc` into `NR`-wide panels, in
/// parallel when `parallel` (each panel is independent; the contents do not depend on it).
fn pack_b<const NR: usize>(
    b: Mat,
    pc: usize,
    kc: usize,
    jc: usize,
    nc: usize,
    dst: &mut [f32],
    parallel: bool,
) {
    let dst = &mut dst[..nc.div_ceil(NR) * NR * kc];
    if parallel {
        dst.par_chunks_exact_mut(NR * kc)
            .enumerate()
            .for_each(|(q, panel)| pack_b_panel::<NR>(b, pc, kc, jc + q * NR, jc + nc, panel));
    } else {
        for (q, panel) in dst.chunks_exact_mut(NR * kc).enumerate() {
            pack_b_panel::<NR>(b, pc, kc, jc + q * NR, jc + nc, panel);
        }
    }
}

/// One `kc x NR` panel of B from column `j0` (columns at or past `end` are zero).
fn pack_b_panel<const NR: usize>(
    b: Mat,
    pc: usize,
    kc: usize,
    j0: usize,
    end: usize,
    panel: &mut [f32],
) {
    {
        let cols = NR.min(end - j0);
        if b.cs == 1 {
            for (p, row) in panel.chunks_exact_mut(NR).enumerate() {
                let base = (pc + p) * b.rs + j0;
                row[..cols].copy_from_slice(&b.d[base..base + cols]);
                row[cols..].fill(0.0);
            }
        } else {
            if cols < NR {
                panel.fill(0.0);
            }
            for j in 0..cols {
                let base = (j0 + j) * b.cs + pc * b.rs;
                for p in 0..kc {
                    panel[p * NR + j] = b.d[base + p * b.rs];
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn driver<const MR: usize, const NR: usize>(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: Mat,
    b: Mat,
    beta: f32,
    c: &mut [f32],
    ws: &mut [f32],
    kern: Kernel<MR, NR>,
) {
    debug_assert!(
        MR <= GEMM_MR_MAX && NR <= GEMM_NR_MAX && MC.is_multiple_of(MR) && NS.is_multiple_of(NR)
    );
    let kc_max = k.min(KC);
    let (bbuf, abufs) = ws.split_at_mut(kc_max * n.min(NC).div_ceil(GEMM_NR_MAX) * GEMM_NR_MAX);
    let a_len = kc_max * m.min(MC).div_ceil(GEMM_MR_MAX) * GEMM_MR_MAX;
    let tasks = sgemm_tasks(m, n, k);
    let parallel = tasks > 1 && rayon::current_num_threads() > 1;
    let cp = CPtr(c.as_mut_ptr());
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let first = pc == 0;
            pack_b::<NR>(b, pc, kc, jc, nc, bbuf, parallel);
            let bp = &*bbuf;
            let slabs = nc.div_ceil(NS);
            let items = m.div_ceil(MC) * slabs;
            // Work item `it`: row block `it / slabs`, column slab `it % slabs`; a task runs
            // a contiguous range of items, repacking A only when the row block changes.
            let run = |abuf: &mut [f32], lo: usize, hi: usize| {
                let mut packed: Option<usize> = None;
                let mut acc = [[0f32; NR]; MR];
                for it in lo..hi {
                    let (ib, sb) = (it / slabs, it % slabs);
                    let (ic, mc) = (ib * MC, MC.min(m - ib * MC));
                    if packed != Some(ib) {
                        pack_a::<MR>(a, ic, mc, pc, kc, abuf);
                        packed = Some(ib);
                    }
                    let (j_lo, j_hi) = (sb * NS, nc.min(sb * NS + NS));
                    for jr in (j_lo..j_hi).step_by(NR) {
                        let nr = NR.min(j_hi - jr);
                        let bpan = &bp[(jr / NR) * NR * kc..(jr / NR + 1) * NR * kc];
                        for ir in (0..mc).step_by(MR) {
                            let mr = MR.min(mc - ir);
                            let apan = &abuf[(ir / MR) * MR * kc..(ir / MR + 1) * MR * kc];
                            // SAFETY: `kern` is the variant whose target features the CPU
                            // was detected to have.
                            unsafe { kern(kc, apan, bpan, &mut acc) };
                            for (i, row) in acc.iter().enumerate().take(mr) {
                                let at = (ic + ir + i) * n + jc + jr;
                                // SAFETY: row `ic + ir + i` < m and columns `jc + jr ..
                                // + nr` <= n lie in `c`; the items of different tasks
                                // cover disjoint tiles of `c`.
                                let out = unsafe { std::slice::from_raw_parts_mut(cp.at(at), nr) };
                                let row = &row[..nr];
                                if !first {
                                    for (o, &v) in out.iter_mut().zip(row) {
                                        *o += alpha * v;
                                    }
                                } else if beta == 0.0 {
                                    for (o, &v) in out.iter_mut().zip(row) {
                                        *o = alpha * v;
                                    }
                                } else {
                                    for (o, &v) in out.iter_mut().zip(row) {
                                        *o = alpha * v + beta * *o;
                                    }
                                }
                            }
                        }
                    }
                }
            };
            if parallel {
                // One task per thread at most: items are ordered by A block, so contiguous
                // ranges repack A as little as possible (the workspace allows `tasks`).
                let t = tasks.min(items).min(rayon::current_num_threads());
                abufs[..t * a_len]
                    .par_chunks_mut(a_len)
                    .enumerate()
                    .for_each(|(ti, abuf)| run(abuf, ti * items / t, (ti + 1) * items / t));
            } else {
                run(&mut abufs[..a_len], 0, items);
            }
        }
    }
}

/// `row += x(p) * B[p, :]` for `p` in order, each element accumulated exactly as a plain
/// loop would; blocks of 64 columns stay in registers across `p` instead of going through
/// memory at every `p`.
#[inline]
fn axpy_rows(row: &mut [f32], k: usize, x: impl Fn(usize) -> f32, b: &[f32], n: usize) {
    const NB: usize = 64;
    let mut j0 = 0;
    for chunk in row.chunks_mut(NB) {
        if chunk.len() == NB {
            let mut acc = [0f32; NB];
            acc.copy_from_slice(chunk);
            for p in 0..k {
                let xp = x(p);
                let bp: &[f32; NB] = b[p * n + j0..p * n + j0 + NB].try_into().unwrap();
                for l in 0..NB {
                    acc[l] += xp * bp[l];
                }
            }
            chunk.copy_from_slice(&acc);
        } else {
            for p in 0..k {
                let xp = x(p);
                for (o, &bv) in chunk.iter_mut().zip(&b[p * n + j0..]) {
                    *o += xp * bv;
                }
            }
        }
        j0 += NB;
    }
}

/// Small products without packing (no workspace): row `i` of C accumulates `A[i, p] * B[p, :]`
/// over `p` in order (or dot products along `p` when B is transposed).
#[allow(clippy::too_many_arguments)]
fn direct(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    trans_a: bool,
    b: &[f32],
    trans_b: bool,
    beta: f32,
    c: &mut [f32],
) {
    let at = |i: usize, p: usize| if trans_a { a[p * m + i] } else { a[i * k + p] };
    // Rows are independent: in parallel above the SGEMM's parallel threshold, each computed
    // as it would be alone (no workspace, the same results whatever the thread count).
    let row_of = |(i, row): (usize, &mut [f32])| {
        if trans_b {
            for (j, o) in row.iter_mut().enumerate() {
                let bj = &b[j * k..(j + 1) * k];
                let mut acc = 0f32;
                for (p, &bv) in bj.iter().enumerate() {
                    acc += at(i, p) * bv;
                }
                *o = if beta == 0.0 {
                    alpha * acc
                } else {
                    alpha * acc + beta * *o
                };
            }
        } else if beta == 0.0 {
            row.fill(0.0);
            axpy_rows(row, k, |p| at(i, p), b, n);
            if alpha != 1.0 {
                row.iter_mut().for_each(|v| *v *= alpha);
            }
        } else {
            // C[i, :] = beta * C[i, :] + alpha * sum_p A[i, p] * B[p, :]
            row.iter_mut().for_each(|v| *v *= beta);
            axpy_rows(row, k, |p| alpha * at(i, p), b, n);
        }
    };
    if m * n * k >= lowmem_ir::scratch::GEMM_PAR_MACS && m > 1 && rayon::current_num_threads() > 1 {
        c.par_chunks_exact_mut(n).enumerate().for_each(row_of);
    } else {
        c.chunks_exact_mut(n).enumerate().for_each(row_of);
    }
}

#[cfg(test)]
mod tests {
    /// The unpacked path equals the plain loop bit for bit (register blocks of 64 columns,
    /// a ragged tail, beta 0 and not, alpha 1 and not).
    #[test]
    fn unpacked_products_equal_the_plain_loop() {
        let mut s = 7u64;
        let mut rnd = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        for (m, n, k) in [(3, 130, 17), (5, 64, 9), (2, 7, 33)] {
            assert!(!lowmem_ir::scratch::sgemm_packs(m, n, k));
            let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
            let c0: Vec<f32> = (0..m * n).map(|_| rnd()).collect();
            for (alpha, beta) in [(1.0f32, 0.0f32), (0.5, 0.0), (1.5, 2.0)] {
                let mut want = c0.clone();
                for i in 0..m {
                    let row = &mut want[i * n..(i + 1) * n];
                    if beta == 0.0 {
                        row.fill(0.0);
                    } else {
                        row.iter_mut().for_each(|v| *v *= beta);
                    }
                    for p in 0..k {
                        let x = if beta == 0.0 {
                            a[i * k + p]
                        } else {
                            alpha * a[i * k + p]
                        };
                        for j in 0..n {
                            row[j] += x * b[p * n + j];
                        }
                    }
                    if beta == 0.0 && alpha != 1.0 {
                        row.iter_mut().for_each(|v| *v *= alpha);
                    }
                }
                let mut got = c0.clone();
                super::sgemm(
                    m,
                    n,
                    k,
                    alpha,
                    &a,
                    false,
                    &b,
                    false,
                    beta,
                    &mut got,
                    &mut [],
                );
                assert!(got == want, "{m}x{n}x{k} alpha {alpha} beta {beta}");
            }
        }
    }
}
