//! The reference kernels' scratch formulas that more than one place needs: the executor's
//! SGEMM blocking (its packing buffers are planned workspace) and the per-op sizes built on
//! it. [`crate::Op::workspace_bytes`] is written with these; lowmem-exec's kernels take their
//! blocking constants and size functions from here, so each fact lives once.

/// SGEMM depth block: rows of B (columns of A) packed at a time.
pub const GEMM_KC: usize = 256;
/// SGEMM row block: rows of A one task packs at a time (a multiple of every micro-tile
/// height).
pub const GEMM_MC: usize = 64;
/// SGEMM column block: columns of B packed at a time.
pub const GEMM_NC: usize = 2048;
/// Column slab: the columns of one parallel work item (a multiple of every micro-tile
/// width).
pub const GEMM_NS: usize = 256;
/// The tallest micro-tile of any kernel variant (A panels are padded to it).
pub const GEMM_MR_MAX: usize = 8;
/// The widest micro-tile of any kernel variant (B panels are padded to it).
pub const GEMM_NR_MAX: usize = 32;
/// The most parallel tasks one SGEMM (or one batched MatMul) splits into, whatever the
/// machine's thread count (each task has its own packed A block).
pub const GEMM_MAX_TASKS: usize = 16;
/// Multiply-adds from which one SGEMM, and a batched MatMul's batches, run in parallel.
pub const GEMM_PAR_MACS: usize = 1 << 18;

fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

/// Parallel tasks an `m x n x k` SGEMM uses at most: one per work item (a row block times a
/// column slab of the first column block), at most [`GEMM_MAX_TASKS`], one below
/// [`GEMM_PAR_MACS`].
pub fn sgemm_tasks(m: usize, n: usize, k: usize) -> usize {
    if m.saturating_mul(n).saturating_mul(k) < GEMM_PAR_MACS {
        return 1;
    }
    let items = m.div_ceil(GEMM_MC) * n.min(GEMM_NC).div_ceil(GEMM_NS);
    items.clamp(1, GEMM_MAX_TASKS)
}

/// Multiply-adds up to which an SGEMM runs directly, without packing (and so without
/// workspace): small products, where packing costs more than it saves.
pub const GEMM_DIRECT_MACS: usize = 1 << 22;

/// Whether an `m x n x k` SGEMM packs its operands into workspace.
pub fn sgemm_packs(m: usize, n: usize, k: usize) -> bool {
    m.saturating_mul(n).saturating_mul(k) > GEMM_DIRECT_MACS
}

/// f32 workspace an `m x n x k` SGEMM needs: the packed B block (`kc x nc`, padded to the
/// widest micro-tile) and one packed A block (`mc x kc`, padded to the tallest) per task.
pub fn sgemm_workspace_len(m: usize, n: usize, k: usize) -> usize {
    if m == 0 || n == 0 || k == 0 || !sgemm_packs(m, n, k) {
        return 0;
    }
    let kc = k.min(GEMM_KC);
    let nc = round_up(n.min(GEMM_NC), GEMM_NR_MAX);
    let mc = round_up(m.min(GEMM_MC), GEMM_MR_MAX);
    kc * (nc + sgemm_tasks(m, n, k) * mc)
}

/// How numpy `matmul` of `a_shape` by `b_shape` runs: `(m, n, k, gemms, parallel groups)`:
/// one tall GEMM (`gemms == 1`) when `b` is one matrix shared by every batch of `a`,
/// otherwise one GEMM per broadcast batch, over `groups` parallel groups (each with its
/// own GEMM workspace). `None` for shapes that do not multiply.
pub fn matmul_plan(a_shape: &[usize], b_shape: &[usize]) -> Option<[usize; 5]> {
    if a_shape.is_empty() || b_shape.is_empty() {
        return None;
    }
    let (ab, m, k) = match a_shape {
        [k] => (&[][..], 1, *k),
        [ab @ .., m, k] => (ab, *m, *k),
        [] => return None,
    };
    let (bb, n) = match b_shape {
        [_] => (&[][..], 1),
        [bb @ .., _, n] => (bb, *n),
        [] => return None,
    };
    // The broadcast batch's element count (without allocating its shape).
    let r = ab.len().max(bb.len());
    let mut nb = 1usize;
    for i in 0..r {
        let da = if i + ab.len() >= r {
            ab[i + ab.len() - r]
        } else {
            1
        };
        let db = if i + bb.len() >= r {
            bb[i + bb.len() - r]
        } else {
            1
        };
        if da != db && da != 1 && db != 1 {
            return None;
        }
        nb *= if da == 1 { db } else { da };
    }
    let (na, nbb) = (crate::shape::count(ab), crate::shape::count(bb));
    if nbb == 1 && na == nb {
        return Some([nb * m, n, k, 1, 1]);
    }
    let par = m.saturating_mul(n).saturating_mul(k) < GEMM_PAR_MACS && nb > 1;
    let groups = if par { nb.min(GEMM_MAX_TASKS) } else { 1 };
    Some([m, n, k, nb, groups])
}

/// f32 workspace numpy `matmul` of `a_shape` by `b_shape` needs (see [`matmul_plan`]).
pub fn matmul_workspace_len(a_shape: &[usize], b_shape: &[usize]) -> usize {
    match matmul_plan(a_shape, b_shape) {
        Some([m, n, k, nb, groups]) if nb > 0 => groups * sgemm_workspace_len(m, n, k),
        _ => 0,
    }
}

/// Whether a convolution of input `x_shape` by weight `w_shape` in `group` groups is
/// depthwise (one input channel per group): every backend runs those by direct loops, with
/// no workspace.
pub fn conv_is_depthwise(x_shape: &[usize], w_shape: &[usize], group: usize) -> bool {
    group > 1 && x_shape[1] / group == 1 && w_shape[1] == 1
}

/// Which convolution kernel a workspace is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPass {
    Forward,
    BackwardData,
    BackwardFilter,
}

/// f32 workspace a convolution kernel needs for input `x_shape`, weight `w_shape` and window
/// `win` (from [`crate::ConvAttrs::window`]): the im2col columns, `(C / group) *
/// prod(kernel) * prod(output spatial)`, none for depthwise or pointwise (1x1, stride 1, no
/// padding) convolutions, then the per-group GEMM's packing buffers (none for depthwise,
/// which runs direct loops).
pub fn conv_workspace_len(
    x_shape: &[usize],
    w_shape: &[usize],
    win: &crate::Window,
    group: usize,
    pass: ConvPass,
) -> usize {
    let g = group.max(1);
    if x_shape.len() < 2 || w_shape.len() < 2 {
        return 0;
    }
    if conv_is_depthwise(x_shape, w_shape, g) {
        return 0;
    }
    let pointwise = win.kernel.iter().all(|&k| k == 1)
        && win.strides.iter().all(|&s| s == 1)
        && win.pad_begin.iter().all(|&p| p == 0)
        && win.output == win.input;
    let (cg, mg) = (x_shape[1] / g, w_shape[0] / g);
    let p = win.output_size();
    let ck = if pointwise {
        cg
    } else {
        cg * win.kernel_size()
    };
    let cols = if pointwise { 0 } else { ck * p };
    cols + match pass {
        ConvPass::Forward => sgemm_workspace_len(mg, p, ck),
        ConvPass::BackwardData => sgemm_workspace_len(ck, p, mg),
        ConvPass::BackwardFilter => sgemm_workspace_len(mg, ck, p),
    }
}

/// Elements per chunk of [`crate::Op::TopK`]'s ordered compaction on a GPU: one thread
/// counts, then places, one chunk's selected elements, so the output order (index order) does
/// not depend on scheduling.
pub const TOPK_CHUNK: usize = 256;

/// u32 slots of the GPU radix select's state: a 256-bin histogram and the running prefix,
/// mask and remaining count (padded).
pub const TOPK_STATE: usize = 272;

/// 4-byte slots of [`crate::Op::TopK`]'s workspace over `n` elements: the GPU kernels' radix
/// state and two counts per chunk (the reference kernel keeps its histograms on the stack).
/// A small fraction of `n`: compressing a tensor never needs a tensor-sized scratch.
pub fn topk_workspace_len(n: usize) -> usize {
    TOPK_STATE + 2 * n.div_ceil(TOPK_CHUNK)
}
