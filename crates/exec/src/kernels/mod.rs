//! The executor's kernels as plain functions over slices and shapes.
//!
//! Every kernel writes into a caller-provided output slice (and, for convolution, a
//! caller-provided workspace whose size [`conv_workspace_len`] reports); none allocates its
//! output, so a planned-arena executor or the autodiff backward ops can reuse them. Shapes are
//! row-major (`[N, C, spatial...]` for images). Kernels trust their arguments: they panic on
//! slices of the wrong length or shapes that do not agree (the graph executor [`crate::run`]
//! checks everything before calling them).

mod conv;
mod elementwise;
mod matmul;
mod movement;
mod norm;
mod pool;
mod reduce;

pub use conv::{MAX_SPATIAL_RANK, conv, conv_workspace_len, im2col};
pub use elementwise::{Binary, Unary, binary, binary_inplace, expand, sum, unary, unary_inplace};
pub use matmul::{gemm, matmul, sgemm};
pub use movement::{concat, transpose};
pub use norm::{batch_norm, layer_norm, lrn, softmax};
pub use pool::{avg_pool, global_avg_pool, max_pool};
pub use reduce::reduce;

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
