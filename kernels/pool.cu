// Max and average pooling over 1- to 3-D windows and their gradients, as the CPU executor's
// kernels (crates/exec/src/kernels/pool.rs): the same valid taps, divisors and tie-breaking.
// The gradients gather per input element (no atomics), visiting the windows that hold it in
// output order, so overlapping windows add up in the CPU's order.
//
// The window arrives packed in a Dims as for kernels/im2col.cu (`geo_dims` in
// crates/cuda/src/ops/conv.rs), padded to 3 spatial dims: kernel, strides, dilations,
// pad_begin in `shape`; input size, output size, pad_end in `sa`. Spatial indices are int
// (checked by the launch code); plane offsets are i64.

// f32::MIN, max pooling's initial value (onnxruntime's).
#define LM_POOL_MIN (-3.40282347e+38f)

// The taps of output position `o` along `dim`: valid taps [lo, hi), the input index of tap
// lo, and (for count_include_pad) the taps inside the padded input.
struct LmTaps {
    int lo, hi, first, padded;
};

__device__ __forceinline__ LmTaps lm_pool_taps(const Dims& w, int dim, int o) {
    int s = LM_WS(w, dim), d = LM_WD(w, dim), pb = LM_WPB(w, dim), n = LM_WI(w, dim), k = LM_WK(w, dim);
    int start = o * s;
    LmTaps t;
    int lo = pb > start ? (pb - start + d - 1) / d : 0;
    t.lo = lo < k ? lo : k;
    int hi = pb + n > start ? (pb + n - 1 - start) / d + 1 : 0;
    hi = hi < k ? hi : k;
    t.hi = hi > t.lo ? hi : t.lo;
    int pend = n + pb + LM_WPE(w, dim);
    int padded = start < pend ? (pend - start + d - 1) / d : 0;
    t.padded = padded < k ? padded : k;
    int first = start + t.lo * d - pb;
    t.first = first > 0 ? first : 0;
    return t;
}

// The divisor of an average window.
__device__ __forceinline__ int lm_pool_count(const LmTaps& t0, const LmTaps& t1, const LmTaps& t2, int include_pad) {
    return include_pad ? t0.padded * t1.padded * t2.padded
                       : (t0.hi - t0.lo) * (t1.hi - t1.lo) * (t2.hi - t2.lo);
}

// The element of plane `xp` the CPU's max_pool_grad picks in window (q0, q1, q2): the first
// maximum in scan order (a NaN never wins; -1 when every element is NaN).
__device__ __forceinline__ int lm_pool_argmax(const float* xp, const Dims& w, int q0, int q1, int q2) {
    LmTaps t0 = lm_pool_taps(w, 0, q0), t1 = lm_pool_taps(w, 1, q1), t2 = lm_pool_taps(w, 2, q2);
    const int i1 = LM_WI(w, 1), i2 = LM_WI(w, 2);
    float m = LM_POOL_MIN;
    int best = -1;
    for (int a = 0; a < t0.hi - t0.lo; ++a) {
        int r0 = t0.first + a * LM_WD(w, 0);
        for (int b = 0; b < t1.hi - t1.lo; ++b) {
            int row = (r0 * i1 + t1.first + b * LM_WD(w, 1)) * i2 + t2.first;
            for (int c = 0; c < t2.hi - t2.lo; ++c) {
                int j = row + c * LM_WD(w, 2);
                float v = xp[j];
                if (v > m || (best < 0 && v == m)) {
                    m = v;
                    best = j;
                }
            }
        }
    }
    return best;
}

// y [planes, P] = max over each window of x [planes, I]; padding never wins, a window with no
// input element gives f32::MIN, NaNs are skipped. One thread per output element.
extern "C" __global__ void lm_maxpool(const float* __restrict__ x, float* __restrict__ y, i64 n, Dims w) {
    const int o1 = LM_WO(w, 1), o2 = LM_WO(w, 2), p = LM_WO(w, 0) * o1 * o2;
    const int i1 = LM_WI(w, 1), i2 = LM_WI(w, 2), isz = LM_WI(w, 0) * i1 * i2;
    LM_FOR(idx, n) {
        i64 plane = idx / p;
        int pos = (int)(idx - plane * p);
        const float* xp = x + plane * isz;
        LmTaps t0 = lm_pool_taps(w, 0, pos / (o1 * o2)), t1 = lm_pool_taps(w, 1, (pos / o2) % o1),
               t2 = lm_pool_taps(w, 2, pos % o2);
        float m = LM_POOL_MIN;
        for (int a = 0; a < t0.hi - t0.lo; ++a) {
            int r0 = t0.first + a * LM_WD(w, 0);
            for (int b = 0; b < t1.hi - t1.lo; ++b) {
                int row = (r0 * i1 + t1.first + b * LM_WD(w, 1)) * i2 + t2.first;
                for (int c = 0; c < t2.hi - t2.lo; ++c) {
                    float v = xp[row + c * LM_WD(w, 2)];
                    if (v > m) m = v;
                }
            }
        }
        y[idx] = m;
    }
}

// y = mean over each window (divisor: valid taps, or with `include_pad` the window clipped
// to the padded input; 0 for an empty window). One thread per output element.
extern "C" __global__ void lm_avgpool(const float* __restrict__ x, float* __restrict__ y, i64 n, Dims w, int include_pad) {
    const int o1 = LM_WO(w, 1), o2 = LM_WO(w, 2), p = LM_WO(w, 0) * o1 * o2;
    const int i1 = LM_WI(w, 1), i2 = LM_WI(w, 2), isz = LM_WI(w, 0) * i1 * i2;
    LM_FOR(idx, n) {
        i64 plane = idx / p;
        int pos = (int)(idx - plane * p);
        const float* xp = x + plane * isz;
        LmTaps t0 = lm_pool_taps(w, 0, pos / (o1 * o2)), t1 = lm_pool_taps(w, 1, (pos / o2) % o1),
               t2 = lm_pool_taps(w, 2, pos % o2);
        float s = 0.0f;
        for (int a = 0; a < t0.hi - t0.lo; ++a) {
            int r0 = t0.first + a * LM_WD(w, 0);
            for (int b = 0; b < t1.hi - t1.lo; ++b) {
                int row = (r0 * i1 + t1.first + b * LM_WD(w, 1)) * i2 + t2.first;
                for (int c = 0; c < t2.hi - t2.lo; ++c) s += xp[row + c * LM_WD(w, 2)];
            }
        }
        int cnt = lm_pool_count(t0, t1, t2, include_pad);
        y[idx] = cnt == 0 ? 0.0f : s / (float)cnt;
    }
}

// Output coordinate of the window whose tap `t` reads input index `a` along `dim`, or -1.
__device__ __forceinline__ int lm_pool_window_of(const Dims& w, int dim, int a, int t) {
    int num = a + LM_WPB(w, dim) - t * LM_WD(w, dim), s = LM_WS(w, dim);
    if (num < 0 || num % s != 0 || num / s >= LM_WO(w, dim)) return -1;
    return num / s;
}

// dx [planes, I] (`mode` 0: max pool, reading x; 1: average pool; 2: average pool counting
// the padding): each input element adds the gradients of the windows holding it, windows
// in output order (taps in decreasing order). One thread per input element.
__device__ __forceinline__ void lm_pool_grad(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ dx, i64 n, const Dims& w, int mode) {
    const int k0 = LM_WK(w, 0), k1 = LM_WK(w, 1), k2 = LM_WK(w, 2);
    const int o1 = LM_WO(w, 1), o2 = LM_WO(w, 2), p = LM_WO(w, 0) * o1 * o2;
    const int i1 = LM_WI(w, 1), i2 = LM_WI(w, 2), isz = LM_WI(w, 0) * i1 * i2;
    LM_FOR(idx, n) {
        i64 plane = idx / isz;
        int rem = (int)(idx - plane * isz);
        int a2 = rem % i2, a1 = (rem / i2) % i1, a0 = rem / (i1 * i2);
        const float* dyp = dy + plane * p;
        float acc = 0.0f;
        for (int t0 = k0 - 1; t0 >= 0; --t0) {
            int q0 = lm_pool_window_of(w, 0, a0, t0);
            if (q0 < 0) continue;
            for (int t1 = k1 - 1; t1 >= 0; --t1) {
                int q1 = lm_pool_window_of(w, 1, a1, t1);
                if (q1 < 0) continue;
                for (int t2 = k2 - 1; t2 >= 0; --t2) {
                    int q2 = lm_pool_window_of(w, 2, a2, t2);
                    if (q2 < 0) continue;
                    float d = dyp[(q0 * o1 + q1) * o2 + q2];
                    if (mode == 0) {
                        if (lm_pool_argmax(x + plane * isz, w, q0, q1, q2) == rem) acc += d;
                    } else {
                        int cnt = lm_pool_count(lm_pool_taps(w, 0, q0), lm_pool_taps(w, 1, q1),
                                                lm_pool_taps(w, 2, q2), mode == 2);
                        if (cnt != 0) acc += d / (float)cnt;
                    }
                }
            }
        }
        dx[idx] = acc;
    }
}

// MaxPool's gradient: each dy goes to its window's first maximum in x.
extern "C" __global__ void lm_maxpool_grad(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ dx, i64 n, Dims w) {
    lm_pool_grad(dy, x, dx, n, w, 0);
}

// AveragePool's gradient: each dy spread over its window with the forward's divisor.
extern "C" __global__ void lm_avgpool_grad(const float* __restrict__ dy, float* __restrict__ dx, i64 n, Dims w, int include_pad) {
    lm_pool_grad(dy, dy, dx, n, w, include_pad ? 2 : 1);
}
