// Depthwise convolutions (one input channel per group, `mg` output channels per input
// channel) and their backward passes, direct: no columns, no workspace. Sums run in the CPU
// executor's tap order.
//
// The window arrives packed in a Dims as for kernels/im2col.cu (`geo_dims` in
// crates/cuda/src/ops/conv.rs): kernel, strides, dilations, pad_begin in `shape`; input,
// output sizes in `sa`; padded to 3 spatial dims. Spatial indices are int (checked by the
// launch code); tensor offsets are i64.

// y [N, C*mg, P] = bias + depthwise conv of x [N, C, I] with w [C*mg, 1, K]; `bias` may be
// null. One thread per output element.
extern "C" __global__ void lm_dw_conv(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias, float* __restrict__ y, i64 n, int c, int mg, Dims g) {
    const int k0 = LM_WK(g, 0), k1 = LM_WK(g, 1), k2 = LM_WK(g, 2);
    const int o1 = LM_WO(g, 1), o2 = LM_WO(g, 2), p = LM_WO(g, 0) * o1 * o2;
    const int i0 = LM_WI(g, 0), i1 = LM_WI(g, 1), i2 = LM_WI(g, 2);
    const int m = c * mg;
    LM_FOR(idx, n) {
        i64 plane = idx / p;
        int pos = (int)(idx - plane * p);
        int mo = (int)(plane % m);
        i64 b = plane / m;
        const float* xp = x + (b * c + mo / mg) * ((i64)i0 * i1 * i2);
        const float* wk = w + (i64)mo * k0 * k1 * k2;
        int q2 = pos % o2, q1 = (pos / o2) % o1, q0 = pos / (o1 * o2);
        float acc = bias ? bias[mo] : 0.0f;
        for (int t0 = 0; t0 < k0; ++t0) {
            int a0 = q0 * LM_WS(g, 0) + t0 * LM_WD(g, 0) - LM_WPB(g, 0);
            if ((unsigned)a0 >= (unsigned)i0) continue;
            for (int t1 = 0; t1 < k1; ++t1) {
                int a1 = q1 * LM_WS(g, 1) + t1 * LM_WD(g, 1) - LM_WPB(g, 1);
                if ((unsigned)a1 >= (unsigned)i1) continue;
                for (int t2 = 0; t2 < k2; ++t2) {
                    int a2 = q2 * LM_WS(g, 2) + t2 * LM_WD(g, 2) - LM_WPB(g, 2);
                    if ((unsigned)a2 >= (unsigned)i2) continue;
                    acc += wk[(t0 * k1 + t1) * k2 + t2] * xp[(a0 * i1 + a1) * i2 + a2];
                }
            }
        }
        y[idx] = acc;
    }
}

// dx [N, C, I] from dy [N, C*mg, P] and w: each input element gathers the outputs whose
// taps read it (channel by channel, taps in order). One thread per input element.
extern "C" __global__ void lm_dw_data(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx, i64 n, int c, int mg, Dims g) {
    const int k0 = LM_WK(g, 0), k1 = LM_WK(g, 1), k2 = LM_WK(g, 2), kk = k0 * k1 * k2;
    const int o0 = LM_WO(g, 0), o1 = LM_WO(g, 1), o2 = LM_WO(g, 2), p = o0 * o1 * o2;
    const int i1 = LM_WI(g, 1), i2 = LM_WI(g, 2), isz = LM_WI(g, 0) * i1 * i2;
    const int s0 = LM_WS(g, 0), s1 = LM_WS(g, 1), s2 = LM_WS(g, 2);
    LM_FOR(idx, n) {
        i64 plane = idx / isz;
        int rem = (int)(idx - plane * isz);
        int ci = (int)(plane % c);
        i64 b = plane / c;
        int a2 = rem % i2, a1 = (rem / i2) % i1, a0 = rem / (i1 * i2);
        float acc = 0.0f;
        for (int mo = ci * mg; mo < (ci + 1) * mg; ++mo) {
            const float* dyp = dy + (b * c * mg + mo) * p;
            const float* wk = w + (i64)mo * kk;
            for (int t0 = 0; t0 < k0; ++t0) {
                int n0 = a0 + LM_WPB(g, 0) - t0 * LM_WD(g, 0);
                if (n0 < 0 || n0 % s0 != 0 || n0 / s0 >= o0) continue;
                int q0 = n0 / s0;
                for (int t1 = 0; t1 < k1; ++t1) {
                    int n1 = a1 + LM_WPB(g, 1) - t1 * LM_WD(g, 1);
                    if (n1 < 0 || n1 % s1 != 0 || n1 / s1 >= o1) continue;
                    int q1 = n1 / s1;
                    for (int t2 = 0; t2 < k2; ++t2) {
                        int n2 = a2 + LM_WPB(g, 2) - t2 * LM_WD(g, 2);
                        if (n2 < 0 || n2 % s2 != 0 || n2 / s2 >= o2) continue;
                        acc += wk[(t0 * k1 + t1) * k2 + t2] * dyp[(q0 * o1 + q1) * o2 + n2 / s2];
                    }
                }
            }
        }
        dx[idx] = acc;
    }
}

// dw [C*mg, 1, K]: one block per weight element (blockIdx.x = mo * K + tap), reducing
// dy * x over the batch and the output positions (block reduction, no atomics).
extern "C" __global__ void lm_dw_filter(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ dw, int batch, int c, int mg, Dims g) {
    __shared__ float scratch[32];
    const int k0 = LM_WK(g, 0), k1 = LM_WK(g, 1), k2 = LM_WK(g, 2), kk = k0 * k1 * k2;
    const int o1 = LM_WO(g, 1), o2 = LM_WO(g, 2), p = LM_WO(g, 0) * o1 * o2;
    const int i0 = LM_WI(g, 0), i1 = LM_WI(g, 1), i2 = LM_WI(g, 2), isz = i0 * i1 * i2;
    const int mo = blockIdx.x / kk, ki = blockIdx.x - mo * kk;
    const int t2 = ki % k2, t1 = (ki / k2) % k1, t0 = ki / (k1 * k2);
    const int m = c * mg, ci = mo / mg;
    float acc = 0.0f;
    // (image b, position pos) of this thread's flat index, stepped without a division per
    // element where p >= blockDim.x.
    int b = threadIdx.x / p, pos = threadIdx.x - b * p;
    for (; b < batch; pos += blockDim.x) {
        if (pos >= p) {
            int q = pos / p;
            b += q;
            pos -= q * p;
            if (b >= batch) break;
        }
        int q2 = pos % o2, q1 = (pos / o2) % o1, q0 = pos / (o1 * o2);
        int a0 = q0 * LM_WS(g, 0) + t0 * LM_WD(g, 0) - LM_WPB(g, 0);
        int a1 = q1 * LM_WS(g, 1) + t1 * LM_WD(g, 1) - LM_WPB(g, 1);
        int a2 = q2 * LM_WS(g, 2) + t2 * LM_WD(g, 2) - LM_WPB(g, 2);
        if ((unsigned)a0 < (unsigned)i0 && (unsigned)a1 < (unsigned)i1 && (unsigned)a2 < (unsigned)i2)
            acc += dy[((i64)b * m + mo) * p + pos] * x[((i64)b * c + ci) * isz + (a0 * i1 + a1) * i2 + a2];
    }
    acc = lm_block_sum(acc, scratch);
    if (threadIdx.x == 0) dw[blockIdx.x] = acc;
}
