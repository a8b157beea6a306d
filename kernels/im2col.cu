// im2col / col2im for the GEMM convolutions (crates/cuda/src/ops/conv.rs), in the CPU
// executor's column layout: `[channels * K, P]` rows (K kernel taps, P output positions),
// so the planned workspace and the GEMMs are the same on both backends.
//
// The window arrives packed in a Dims (`geo_dims` in ops/conv.rs), read with common.cuh's
// LM_W* macros. Indices are int: the launch code checks that every tensor these kernels
// index has fewer than 2^31 elements.

// Unfolds `channels` contiguous input planes `x` into `col` ([channels * K, P]); taps in the
// padding read as zero. One thread per column element: writes are coalesced.
extern "C" __global__ void lm_im2col(const float* __restrict__ x, float* __restrict__ col, int channels, Dims w) {
    const int k1 = LM_WK(w, 1), k2 = LM_WK(w, 2), kk = LM_WK(w, 0) * k1 * k2;
    const int o1 = LM_WO(w, 1), o2 = LM_WO(w, 2), p = LM_WO(w, 0) * o1 * o2;
    const int i0 = LM_WI(w, 0), i1 = LM_WI(w, 1), i2 = LM_WI(w, 2), isz = i0 * i1 * i2;
    const i64 n = (i64)channels * kk * p;
    LM_FOR(idx, n) {
        int e = (int)idx;
        int r = e / p, pos = e - r * p;
        int ch = r / kk, ki = r - ch * kk;
        int t2 = ki % k2, t1 = (ki / k2) % k1, t0 = ki / (k1 * k2);
        int q2 = pos % o2, q1 = (pos / o2) % o1, q0 = pos / (o1 * o2);
        int a0 = q0 * LM_WS(w, 0) + t0 * LM_WD(w, 0) - LM_WPB(w, 0);
        int a1 = q1 * LM_WS(w, 1) + t1 * LM_WD(w, 1) - LM_WPB(w, 1);
        int a2 = q2 * LM_WS(w, 2) + t2 * LM_WD(w, 2) - LM_WPB(w, 2);
        float v = 0.0f;
        if ((unsigned)a0 < (unsigned)i0 && (unsigned)a1 < (unsigned)i1 && (unsigned)a2 < (unsigned)i2)
            v = x[ch * isz + (a0 * i1 + a1) * i2 + a2];
        col[e] = v;
    }
}

// The adjoint of lm_im2col: each input element of `channels` planes `x` is the sum of the
// column entries that read it, gathered (no atomics) in increasing tap order, as the CPU's
// col2im adds them. Overwrites `x`.
extern "C" __global__ void lm_col2im(const float* __restrict__ col, float* __restrict__ x, int channels, Dims w) {
    const int k0 = LM_WK(w, 0), k1 = LM_WK(w, 1), k2 = LM_WK(w, 2), kk = k0 * k1 * k2;
    const int o0 = LM_WO(w, 0), o1 = LM_WO(w, 1), o2 = LM_WO(w, 2), p = o0 * o1 * o2;
    const int i1 = LM_WI(w, 1), i2 = LM_WI(w, 2), isz = LM_WI(w, 0) * i1 * i2;
    const int s0 = LM_WS(w, 0), s1 = LM_WS(w, 1), s2 = LM_WS(w, 2);
    const i64 n = (i64)channels * isz;
    LM_FOR(idx, n) {
        int e = (int)idx;
        int ch = e / isz, rem = e - ch * isz;
        int a2 = rem % i2, a1 = (rem / i2) % i1, a0 = rem / (i1 * i2);
        const float* cc = col + (i64)ch * kk * p;
        float s = 0.0f;
        for (int t0 = 0; t0 < k0; ++t0) {
            int n0 = a0 + LM_WPB(w, 0) - t0 * LM_WD(w, 0);
            if (n0 < 0 || n0 % s0 != 0 || n0 / s0 >= o0) continue;
            int q0 = n0 / s0;
            for (int t1 = 0; t1 < k1; ++t1) {
                int n1 = a1 + LM_WPB(w, 1) - t1 * LM_WD(w, 1);
                if (n1 < 0 || n1 % s1 != 0 || n1 / s1 >= o1) continue;
                int q1 = n1 / s1;
                for (int t2 = 0; t2 < k2; ++t2) {
                    int n2 = a2 + LM_WPB(w, 2) - t2 * LM_WD(w, 2);
                    if (n2 < 0 || n2 % s2 != 0 || n2 / s2 >= o2) continue;
                    int ki = (t0 * k1 + t1) * k2 + t2;
                    s += cc[(i64)ki * p + (q0 * o1 + q1) * o2 + n2 / s2];
                }
            }
        }
        x[e] = s;
    }
}

// Fills every output plane `[N, M, P]` with its channel's bias, for GEMMs with beta = 1 to
// add onto (the CPU's order: bias first, then the products).
extern "C" __global__ void lm_conv_fill_bias(float* __restrict__ y, const float* __restrict__ bias, i64 n, int m, int p) {
    LM_FOR(i, n) y[i] = bias[(i / p) % m];
}
