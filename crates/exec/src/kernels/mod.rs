//! The executor's kernels as plain functions over slices and shapes.
//!
//! Every kernel writes into a caller-provided output slice (and, where it needs scratch, a
//! caller-provided workspace whose size [`conv_workspace_len`] or another `*_workspace_len`
//! function reports); none allocates its output, so a planned-arena executor or the autodiff backward ops can reuse them. Shapes are
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

/// Highest tensor rank the kernels take (their index vectors live on the stack).
pub const MAX_RANK: usize = 12;

pub use conv::{MAX_SPATIAL_RANK, conv, conv_workspace_len, im2col};
pub use conv_grad::{
    col2im, conv_backward_data, conv_backward_data_workspace_len, conv_backward_filter,
    conv_backward_filter_workspace_len,
};
pub use elementwise::{Binary, Unary, binary, binary_inplace, expand, sum, unary, unary_inplace};
pub use grad::{
    AdamParams, UnaryGrad, adam_update, dropout, dropout_inplace, mse_loss, mse_loss_grad,
    pow_grad, sgd_update, softmax_cross_entropy, softmax_cross_entropy_grad, unary_grad,
    unary_grad_inplace,
};
pub use matmul::{gemm, matmul, sgemm};
pub use movement::{concat, slice, transpose};
pub use norm::{batch_norm, layer_norm, lrn, softmax};
pub use norm_grad::{
    batch_norm_grad, batch_norm_train, layer_norm_grad, layer_norm_grad_workspace_len, lrn_grad,
    softmax_grad,
};
pub use pool::{
    avg_pool, avg_pool_grad, global_avg_pool, global_avg_pool_grad, max_pool, max_pool_grad,
};
pub use reduce::{reduce, sum_to};

/// Element count above which elementwise-style kernels split their work over rayon.
pub(crate) const PAR_ELEMS: usize = 1 << 15;

/// Row-major strides.
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    lowmem_ir::shape::strides(shape)
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
