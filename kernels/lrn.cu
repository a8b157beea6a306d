// Local response normalization across channels of x [N, C, sp] and its exact gradient
// (crates/exec/src/kernels/{norm,norm_grad}.rs). Channel c's window is
// [c - (size-1)/2, c + ceil((size-1)/2)] clipped to [0, C); S_c = bias + alpha/size * sum
// of x^2 over it. One thread per element; neighbouring threads read neighbouring positions.

// S of channel `ch` at the position `xp` points to (channel 0's element), summed in channel
// order.
__device__ __forceinline__ float lm_lrn_s(const float* xp, i64 sp, int ch, int c, int lo, int hi, float bias, float k) {
    int c0 = ch - lo > 0 ? ch - lo : 0, c1 = ch + hi + 1 < c ? ch + hi + 1 : c;
    float q = 0.0f;
    for (int cc = c0; cc < c1; ++cc) {
        float v = xp[cc * sp];
        q += v * v;
    }
    return bias + k * q;
}

// y = x / S^beta (k = alpha / size).
extern "C" __global__ void lm_lrn(const float* __restrict__ x, float* __restrict__ y, i64 n, i64 sp, int c, int lo, int hi, float k, float beta, float bias) {
    LM_FOR(i, n) {
        i64 plane = i / sp;
        int ch = (int)(plane % c);
        const float* xp = x + (i - ch * sp);
        y[i] = x[i] / powf(lm_lrn_s(xp, sp, ch, c, lo, hi, bias, k), beta);
    }
}

// dx_j = dy_j S_j^-beta - 2 beta k x_j sum_{c: j in win(c)} dy_c y_c / S_c.
extern "C" __global__ void lm_lrn_grad(const float* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ y, float* __restrict__ dx, i64 n, i64 sp, int c, int lo, int hi, float k, float beta, float bias) {
    LM_FOR(i, n) {
        i64 plane = i / sp;
        int j = (int)(plane % c);
        i64 base = i - j * sp;
        const float* xp = x + base;
        int c0 = j - hi > 0 ? j - hi : 0, c1 = j + lo + 1 < c ? j + lo + 1 : c;
        float acc = 0.0f;
        for (int ch = c0; ch < c1; ++ch)
            acc += dy[base + ch * sp] * y[base + ch * sp] / lm_lrn_s(xp, sp, ch, c, lo, hi, bias, k);
        float sj = lm_lrn_s(xp, sp, j, c, lo, hi, bias, k);
        dx[i] = dy[i] * powf(sj, -beta) - 2.0f * beta * k * x[i] * acc;
    }
}
