// SoftmaxCrossEntropy, MseLoss and their gradients. Launch code:
// crates/cuda/src/ops/reduce/losses.rs.
//
// The scalar losses run in one block (the node has no workspace for per-block partials and
// atomics would make the sum's order depend on timing); partial sums are double, as the CPU
// reference's. A label outside [0, k) cannot be reported from the device: it makes the loss
// (or that row of the gradient) NaN where the CPU executor refuses the step.

__device__ __forceinline__ float lm_ls_nan() { return __int_as_float(0x7fc00000); }

// out[0] = mean over rows of logsumexp(row) - row[label]; one block, a warp per row.
extern "C" __global__ void lm_xent_loss(const float* logits, const i64* labels, float* out, i64 n, i64 k) {
    __shared__ double scratch[32];
    const int lane = threadIdx.x % LM_WARP;
    const int nw = blockDim.x / LM_WARP;
    double total = 0.0;
    for (i64 r = threadIdx.x / LM_WARP; r < n; r += nw) {
        const float* row = logits + r * k;
        float m = -lm_inf();
        for (i64 i = lane; i < k; i += LM_WARP) m = fmaxf(m, row[i]);
        m = lm_warp_max(m);
        double s = 0.0;
        for (i64 i = lane; i < k; i += LM_WARP) s += (double)expf(row[i] - m);
        s = lm_warp_dsum(s);
        const i64 l = labels[r];
        if (lane == 0) total += (l >= 0 && l < k) ? (double)m + log(s) - (double)row[l] : (double)lm_ls_nan();
    }
    total = lm_block_dsum(total, scratch);
    if (threadIdx.x == 0) out[0] = (float)(total / (double)n);
}

// dx = dloss / n * (softmax(row) - onehot(label)), a row per warp (`warp_rows`) or per block.
extern "C" __global__ void lm_xent_grad(const float* dloss, const float* logits, const i64* labels, float* dx,
                                        i64 n, i64 k, int warp_rows) {
    __shared__ float fscratch[32];
    __shared__ double dscratch[32];
    const bool warp = warp_rows != 0;
    const int per_block = warp ? blockDim.x / LM_WARP : 1;
    const int lane = warp ? threadIdx.x % LM_WARP : threadIdx.x;
    const int size = warp ? LM_WARP : blockDim.x;
    const double scale = (double)dloss[0] / (double)n;
    for (i64 r0 = (i64)blockIdx.x * per_block; r0 < n; r0 += (i64)gridDim.x * per_block) {
        const i64 r = r0 + (warp ? threadIdx.x / LM_WARP : 0);
        const i64 len = r < n ? k : 0;
        const float* row = logits + r * k;
        float* o = dx + r * k;
        float m = -lm_inf();
        for (i64 i = lane; i < len; i += size) m = fmaxf(m, row[i]);
        m = lm_group_max(m, warp, fscratch);
        double s = 0.0;
        for (i64 i = lane; i < len; i += size) s += (double)expf(row[i] - m);
        s = lm_group_dsum(s, warp, dscratch);
        if (len > 0) {
            const float sf = (float)s;
            const i64 l = labels[r];
            const bool bad = l < 0 || l >= k;
            for (i64 i = lane; i < len; i += size) {
                float p = expf(row[i] - m) / sf - (i == l ? 1.0f : 0.0f);
                o[i] = bad ? lm_ls_nan() : (float)((double)p * scale);
            }
        }
    }
}

// out[0] = mean((p - t)^2); one block.
extern "C" __global__ void lm_mse_loss(const float* p, const float* t, float* out, i64 n) {
    __shared__ double scratch[32];
    double s = 0.0;
    for (i64 i = threadIdx.x; i < n; i += blockDim.x) {
        double d = (double)p[i] - (double)t[i];
        s += d * d;
    }
    s = lm_block_dsum(s, scratch);
    if (threadIdx.x == 0) out[0] = (float)(s / (double)n);
}

// dx = (dloss * 2 / n) * (p - t), in float as the CPU reference.
extern "C" __global__ void lm_mse_grad(const float* dloss, const float* p, const float* t, float* dx, i64 n) {
    const float c = dloss[0] * 2.0f / (float)n;
    LM_FOR(i, n) dx[i] = c * (p[i] - t[i]);
}
