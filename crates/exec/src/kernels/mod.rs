//! The executor's kernels as plain functions over slices and shapes.
//!
//! Every kernel writes into a caller-provided output slice and, where it needs scratch
//! proportional to its tensors, a caller-provided workspace whose size [`conv_workspace_len`]
//! or another `*_workspace_len` function reports (the formulas themselves live in
//! [`lowmem_ir::Op::workspace_bytes`] and [`lowmem_ir::scratch`], which is what the planner
//! plans). No kernel allocates on its success path: index and stride vectors are stack
//! [`Dims`] (ranks up to [`MAX_RANK`]) and small fixed buffers live on the stack, so a
//! planned-arena step allocates nothing in its kernels. Shapes are
//! row-major (`[N, C, spatial...]` for images). Kernels trust their arguments: they panic on
//! slices of the wrong length or shapes that do not agree (the graph executor [`crate::run`]
//! checks everything before calling them). The few data-dependent failures (a bad class label)
//! are returned as errors instead.

mod conv;
mod conv_grad;
mod elementwise;
mod grad;
mod matmul;
mod movement;
mod norm;
mod norm_grad;
mod pool;
mod reduce;
mod sgemm;
mod sparse;

pub use conv::{ConvDims, Geo, MAX_SPATIAL_RANK, conv, conv_workspace_len, im2col};
pub use conv_grad::{
    col2im, conv_backward_data, conv_backward_data_workspace_len, conv_backward_filter,
    conv_backward_filter_workspace_len,
};
pub use elementwise::{
    Binary, Float, Unary, binary, binary_inplace, cast, expand, sum, unary, unary_inplace,
};
pub use grad::{
    AdamParams, UnaryGrad, adam_update, dropout, dropout_inplace, mse_loss, mse_loss_grad,
    pow_grad, sgd_update, softmax_cross_entropy, softmax_cross_entropy_grad, unary_grad,
    unary_grad_inplace,
};
pub use matmul::{gemm, matmul, matmul_workspace_len};
pub use movement::{concat, slice, transpose};
pub use norm::{batch_norm, layer_norm, layer_norm_workspace_len, lrn, softmax};
pub use norm_grad::{
    batch_norm_grad, batch_norm_train, layer_norm_grad, layer_norm_grad_workspace_len, lrn_grad,
    softmax_grad,
};
pub use pool::{
    avg_pool, avg_pool_grad, global_avg_pool, global_avg_pool_grad, max_pool, max_pool_grad,
};
pub use reduce::{reduce, reduce_workspace_len, sum_to};
pub use sgemm::{sgemm, sgemm_workspace_len};
pub use sparse::{
    relu_mask, relu_mask_grad_inplace, slice_window, slice_window_grad, topk, topk_scatter,
};

/// Element count above which elementwise-style kernels split their work over rayon.
pub(crate) const PAR_ELEMS: usize = 1 << 15;

/// The highest tensor rank the kernels handle: their index and stride vectors are
/// fixed-size stack arrays ([`Dims`]) so that no kernel allocates. [`crate::run`] and
/// [`crate::run_planned`] reject nodes with a higher rank up front (an error, not a panic);
/// a kernel called directly with one panics.
pub const MAX_RANK: usize = 12;

/// A stack vector of at most [`MAX_RANK`] sizes, strides or indices.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    len: u8,
    d: [usize; MAX_RANK],
}

impl Dims {
    /// No elements.
    pub const fn new() -> Dims {
        Dims {
            len: 0,
            d: [0; MAX_RANK],
        }
    }

    /// `n` copies of `v`.
    pub fn filled(n: usize, v: usize) -> Dims {
        assert!(n <= MAX_RANK, "rank {n} exceeds MAX_RANK {MAX_RANK}");
        let mut d = Dims::new();
        d.len = n as u8;
        d.d[..n].fill(v);
        d
    }

    /// A copy of `s`.
    pub fn from_slice(s: &[usize]) -> Dims {
        let mut d = Dims::filled(s.len(), 0);
        d.d[..s.len()].copy_from_slice(s);
        d
    }

    /// Appends `v`; panics past [`MAX_RANK`].
    #[inline]
    pub fn push(&mut self, v: usize) {
        let n = self.len as usize;
        assert!(n < MAX_RANK, "rank exceeds MAX_RANK {MAX_RANK}");
        self.d[n] = v;
        self.len += 1;
    }

    /// Removes and returns the last element.
    #[inline]
    pub fn pop(&mut self) -> Option<usize> {
        let n = self.len.checked_sub(1)?;
        self.len = n;
        Some(self.d[n as usize])
    }

    pub fn as_slice(&self) -> &[usize] {
        &self.d[..self.len as usize]
    }

    pub fn as_mut_slice(&mut self) -> &mut [usize] {
        &mut self.d[..self.len as usize]
    }
}

impl Default for Dims {
    fn default() -> Dims {
        Dims::new()
    }
}

impl std::ops::Deref for Dims {
    type Target = [usize];
    fn deref(&self) -> &[usize] {
        self.as_slice()
    }
}

impl std::ops::DerefMut for Dims {
    fn deref_mut(&mut self) -> &mut [usize] {
        self.as_mut_slice()
    }
}

impl<'a> IntoIterator for &'a Dims {
    type Item = &'a usize;
    type IntoIter = std::slice::Iter<'a, usize>;
    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

impl std::fmt::Debug for Dims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_slice().fmt(f)
    }
}

/// Row-major strides.
pub(crate) fn strides(shape: &[usize]) -> Dims {
    let mut s = Dims::filled(shape.len(), 1);
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// f32 elements of workspace that hold `n` f64 values whatever the workspace's alignment
/// (one spare element to align to 8 bytes).
pub fn f64_scratch_len(n: usize) -> usize {
    2 * n + 1
}

/// `n` f64 values from the front of `ws` (at least [`f64_scratch_len`]`(n)` elements), and
/// the rest of `ws` after them.
pub(crate) fn f64_scratch(ws: &mut [f32], n: usize) -> (&mut [f64], &mut [f32]) {
    assert!(
        ws.len() >= f64_scratch_len(n),
        "workspace of {} f32 too small for {n} f64 accumulators",
        ws.len()
    );
    let skip = !(ws.as_ptr() as usize).is_multiple_of(8) as usize;
    let (head, rest) = ws[skip..].split_at_mut(2 * n);
    let acc: &mut [f64] = bytemuck::cast_slice_mut(head);
    let rest = if skip == 0 { &mut rest[1..] } else { rest };
    (acc, rest)
}

/// Advances a multi-index `idx` over `dims` (last fastest); returns false after the last one.
#[inline]
pub(crate) fn next_index(idx: &mut [usize], dims: &[usize]) -> bool {
    for i in (0..dims.len()).rev() {
        idx[i] += 1;
        if idx[i] < dims[i] {
            return true;
        }
        idx[i] = 0;
    }
    false
}

/// Sets `idx` to the multi-index of linear position `lin` over `dims`.
pub(crate) fn unravel(mut lin: usize, dims: &[usize], idx: &mut [usize]) {
    for i in (0..dims.len()).rev() {
        idx[i] = lin % dims[i];
        lin /= dims[i];
    }
}
