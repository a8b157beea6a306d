// LayerNormalization and its gradient over the trailing `inner` elements of each of `rows`
// rows. Launch code: crates/cuda/src/ops/reduce/layernorm.rs.
//
// Statistics and row sums are double, as the CPU reference's (biased variance, two passes).
// A scale or bias that broadcasts is first expanded to `inner` values in the workspace, so
// the row kernels index it by column.

// dst[i] = src[offset of i] (a broadcasting scale or bias, strides in d.sa).
extern "C" __global__ void lm_ln_expand(const float* src, float* dst, Dims d) {
    LM_FOR(i, d.n) {
        i64 a, b;
        lm_offsets(d, i, &a, &b);
        dst[i] = src[a];
    }
}

// A row's mean and 1 / sqrt(biased variance + eps), in two passes over its `n` elements
// (0 for a group past the last row) by the group's `size` threads.
__device__ __forceinline__ void lm_ln_row_stats(const float* xr, i64 n, int lane, int size, double d, float eps,
                                                bool warp, double* scratch, double* mean, double* inv) {
    double s = 0.0;
    for (i64 i = lane; i < n; i += size) s += (double)xr[i];
    const double m = lm_group_dsum(s, warp, scratch) / d;
    double q = 0.0;
    for (i64 i = lane; i < n; i += size) {
        double c = (double)xr[i] - m;
        q += c * c;
    }
    *mean = m;
    *inv = 1.0 / sqrt(lm_group_dsum(q, warp, scratch) / d + (double)eps);
}

// y = (x - mean) * rsqrt(var + eps) * scale + bias per row, a row per warp (`warp_rows`) or
// per block. `bias` is read only with `has_bias`.
extern "C" __global__ void lm_ln_fwd(const float* x, const float* scale, const float* bias, float* y, i64 rows,
                                     i64 inner, float eps, int has_bias, int warp_rows) {
    __shared__ double scratch[32];
    const bool warp = warp_rows != 0;
    const int per_block = warp ? blockDim.x / LM_WARP : 1;
    const int lane = warp ? threadIdx.x % LM_WARP : threadIdx.x;
    const int size = warp ? LM_WARP : blockDim.x;
    const double d = (double)inner;
    for (i64 r0 = (i64)blockIdx.x * per_block; r0 < rows; r0 += (i64)gridDim.x * per_block) {
        const i64 r = r0 + (warp ? threadIdx.x / LM_WARP : 0);
        const i64 n = r < rows ? inner : 0;
        const float* xr = x + r * inner;
        float* yr = y + r * inner;
        double mean, inv;
        lm_ln_row_stats(xr, n, lane, size, d, eps, warp, scratch, &mean, &inv);
        for (i64 i = lane; i < n; i += size) {
            float v = (float)(((double)xr[i] - mean) * inv) * scale[i];
            yr[i] = has_bias ? v + bias[i] : v + 0.0f;
        }
    }
}

// The backward per row: with xhat = (x - mean) * inv and g = dy * scale,
// dx = inv / d * (d * g - sum(g) - xhat * sum(g * xhat)); the row's mean and inv go to
// `stats` (2 floats a row) for the parameter gradients.
extern "C" __global__ void lm_ln_grad_rows(const float* dy, const float* x, const float* scale, float* dx,
                                           float* stats, i64 rows, i64 inner, float eps, int warp_rows) {
    __shared__ double scratch[32];
    const bool warp = warp_rows != 0;
    const int per_block = warp ? blockDim.x / LM_WARP : 1;
    const int lane = warp ? threadIdx.x % LM_WARP : threadIdx.x;
    const int size = warp ? LM_WARP : blockDim.x;
    const double d = (double)inner;
    for (i64 r0 = (i64)blockIdx.x * per_block; r0 < rows; r0 += (i64)gridDim.x * per_block) {
        const i64 r = r0 + (warp ? threadIdx.x / LM_WARP : 0);
        const i64 n = r < rows ? inner : 0;
        const float* xr = x + r * inner;
        const float* gr = dy + r * inner;
        float* o = dx + r * inner;
        double mean, inv;
        lm_ln_row_stats(xr, n, lane, size, d, eps, warp, scratch, &mean, &inv);
        double s1 = 0.0, s2 = 0.0;
        for (i64 i = lane; i < n; i += size) {
            double g = (double)gr[i] * (double)scale[i];
            s1 += g;
            s2 += g * ((double)xr[i] - mean) * inv;
        }
        s1 = lm_group_dsum(s1, warp, scratch);
        s2 = lm_group_dsum(s2, warp, scratch);
        for (i64 i = lane; i < n; i += size) {
            double xhat = ((double)xr[i] - mean) * inv;
            double g = (double)gr[i] * (double)scale[i];
            o[i] = (float)(inv / d * (d * g - s1 - xhat * s2));
        }
        if (lane == 0 && n > 0) {
            stats[2 * r] = (float)mean;
            stats[2 * r + 1] = (float)inv;
        }
    }
}

// Column sums over the rows: gs[j] = sum_r dy * (x - mean_r) * inv_r, bs[j] = sum_r dy.
// Block (32, by), by a power of two: 32 consecutive columns (coalesced), `by` lanes of rows
// each, added as a tree in shared memory (a fixed order, no atomics).
extern "C" __global__ void lm_ln_grad_cols(const float* dy, const float* x, const float* stats, float* gs,
                                           float* bs, i64 rows, i64 inner) {
    __shared__ double pg[1024];
    __shared__ double pb[1024];
    const int bx = blockDim.x, by = blockDim.y;
    const int tx = threadIdx.x, ty = threadIdx.y;
    for (i64 j0 = (i64)blockIdx.x * bx; j0 < inner; j0 += (i64)gridDim.x * bx) {
        const i64 j = j0 + tx;
        double ga = 0.0, ba = 0.0;
        if (j < inner) {
            for (i64 r = ty; r < rows; r += by) {
                double g = (double)dy[r * inner + j];
                ga += g * ((double)x[r * inner + j] - (double)stats[2 * r]) * (double)stats[2 * r + 1];
                ba += g;
            }
        }
        pg[ty * bx + tx] = ga;
        pb[ty * bx + tx] = ba;
        __syncthreads();
        for (int h = by / 2; h > 0; h >>= 1) {
            if (ty < h) {
                pg[ty * bx + tx] += pg[(ty + h) * bx + tx];
                pb[ty * bx + tx] += pb[(ty + h) * bx + tx];
            }
            __syncthreads();
        }
        if (ty == 0 && j < inner) {
            gs[j] = (float)pg[tx];
            bs[j] = (float)pb[tx];
        }
        __syncthreads();
    }
}
