// Softmax, LogSoftmax and their gradients along one axis. Launch code:
// crates/cuda/src/ops/reduce/softmax.rs.
//
// The tensor is viewed as [outer, len, inner]: each of the outer * inner "rows" (len
// elements `inner` apart) is normalised on its own. `mode`: 0 softmax, 1 log-softmax (a = x),
// 2 softmax gradient, 3 log-softmax gradient (a = dy, b = the forward's output y). Sums are
// accumulated in double (the CPU reference sums in f64); the max and elementwise math are
// float.

// One row per warp (`warp_rows`, rows of up to a few thousand elements) or per block.
// Threads of a group stride over the row, so with inner = 1 the reads are coalesced.
// `y` may not alias `a` or `b`.
extern "C" __global__ void lm_softmax_rows(const float* a, const float* b, float* y, i64 rows, i64 len,
                                           i64 inner, int mode, int warp_rows) {
    __shared__ float fscratch[32];
    __shared__ double dscratch[32];
    const bool warp = warp_rows != 0;
    const int per_block = warp ? blockDim.x / LM_WARP : 1;
    const int lane = warp ? threadIdx.x % LM_WARP : threadIdx.x;
    const int size = warp ? LM_WARP : blockDim.x;
    for (i64 r0 = (i64)blockIdx.x * per_block; r0 < rows; r0 += (i64)gridDim.x * per_block) {
        const i64 r = r0 + (warp ? threadIdx.x / LM_WARP : 0);
        const bool ok = r < rows;
        const i64 base = ok ? (r / inner) * len * inner + r % inner : 0;
        const float* ar = a + base;
        const float* br = b + base;
        float* yr = y + base;
        const i64 n = ok ? len : 0;
        if (mode < 2) {
            float m = -lm_inf();
            for (i64 i = lane; i < n; i += size) m = fmaxf(m, ar[i * inner]);
            m = lm_group_max(m, warp, fscratch);
            double s = 0.0;
            for (i64 i = lane; i < n; i += size) s += (double)expf(ar[i * inner] - m);
            s = lm_group_dsum(s, warp, dscratch);
            if (mode == 0) {
                const float sf = (float)s;
                for (i64 i = lane; i < n; i += size) yr[i * inner] = expf(ar[i * inner] - m) / sf;
            } else {
                const float ls = (float)log(s);
                for (i64 i = lane; i < n; i += size) yr[i * inner] = (ar[i * inner] - m) - ls;
            }
        } else {
            double s = 0.0;
            if (mode == 2) {
                for (i64 i = lane; i < n; i += size) s += (double)ar[i * inner] * (double)br[i * inner];
            } else {
                for (i64 i = lane; i < n; i += size) s += (double)ar[i * inner];
            }
            s = lm_group_dsum(s, warp, dscratch);
            const float sf = (float)s;
            if (mode == 2) {
                for (i64 i = lane; i < n; i += size) yr[i * inner] = br[i * inner] * (ar[i * inner] - sf);
            } else {
                for (i64 i = lane; i < n; i += size) yr[i * inner] = ar[i * inner] - expf(br[i * inner]) * sf;
            }
        }
    }
}

// One thread per row when rows are strided (inner > 1, many of them): consecutive threads
// take consecutive j, so every step along the axis reads a coalesced run.
extern "C" __global__ void lm_softmax_cols(const float* a, const float* b, float* y, i64 rows, i64 len,
                                           i64 inner, int mode) {
    LM_FOR(r, rows) {
        const i64 base = (r / inner) * len * inner + r % inner;
        const float* ar = a + base;
        const float* br = b + base;
        float* yr = y + base;
        if (mode < 2) {
            float m = -lm_inf();
            for (i64 i = 0; i < len; ++i) m = fmaxf(m, ar[i * inner]);
            double s = 0.0;
            for (i64 i = 0; i < len; ++i) s += (double)expf(ar[i * inner] - m);
            if (mode == 0) {
                const float sf = (float)s;
                for (i64 i = 0; i < len; ++i) yr[i * inner] = expf(ar[i * inner] - m) / sf;
            } else {
                const float ls = (float)log(s);
                for (i64 i = 0; i < len; ++i) yr[i * inner] = (ar[i * inner] - m) - ls;
            }
        } else if (mode == 2) {
            double s = 0.0;
            for (i64 i = 0; i < len; ++i) s += (double)ar[i * inner] * (double)br[i * inner];
            const float sf = (float)s;
            for (i64 i = 0; i < len; ++i) yr[i * inner] = br[i * inner] * (ar[i * inner] - sf);
        } else {
            double s = 0.0;
            for (i64 i = 0; i < len; ++i) s += (double)ar[i * inner];
            const float sf = (float)s;
            for (i64 i = 0; i < len; ++i) yr[i * inner] = ar[i * inner] - expf(br[i * inner]) * sf;
        }
    }
}
