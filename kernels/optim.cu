// Optimizer steps (PyTorch's SGD and Adam/AdamW), elementwise in float in the CPU reference's
// order. Launch code: crates/cuda/src/ops/reduce/optim.rs. Each output may be its input
// (updated in place): every thread reads an element before it writes it.

// SGD: g' = g + wd * w; with momentum v = momentum * v + g', w -= lr * v; else w -= lr * g'.
// `v_in`/`v` are read only with `with_v`.
extern "C" __global__ void lm_sgd(const float* w_in, const float* g, const float* v_in, float* w, float* v,
                                  i64 n, float lr, float momentum, float wd, int with_v) {
    LM_FOR(i, n) {
        float wi = w_in[i];
        float gi = g[i] + wd * wi;
        if (with_v) {
            float vi = momentum * v_in[i] + gi;
            v[i] = vi;
            w[i] = wi - lr * vi;
        } else {
            w[i] = wi - lr * gi;
        }
    }
}

// a^b by squaring, as compiler-rt's __powisf2 (what the CPU reference's f32::powi calls), so
// the bias corrections agree bit for bit.
__device__ __forceinline__ float lm_adam_powi(float a, int b) {
    bool recip = b < 0;
    unsigned p = recip ? 0u - (unsigned)b : (unsigned)b;
    float r = 1.0f;
    for (;;) {
        if (p & 1u) r *= a;
        p >>= 1;
        if (p == 0) break;
        a *= a;
    }
    return recip ? 1.0f / r : r;
}

// Adam at the 1-based step `*step` (read on the device): g' = g + wd * w unless decoupled;
// m = b1 m + (1 - b1) g'; v = b2 v + (1 - b2) g'^2; w -= lr * (mhat / (sqrt(vhat) + eps)
// + (decoupled ? wd * w : 0)). A step below 1 (the CPU executor refuses it) makes w NaN.
extern "C" __global__ void lm_adam(const float* w_in, const float* g, const float* m_in, const float* v_in,
                                   const i64* step, float* w, float* m, float* v, i64 n, float lr, float b1,
                                   float b2, float eps, float wd, int decoupled) {
    const i64 st = *step;
    const int t = st > 2147483647ll ? 2147483647 : (int)st;
    const float bc1 = 1.0f - lm_adam_powi(b1, t);
    const float bc2 = 1.0f - lm_adam_powi(b2, t);
    const float bad = st < 1 ? __int_as_float(0x7fc00000) : 0.0f;
    LM_FOR(i, n) {
        float wi = w_in[i];
        float gi = decoupled ? g[i] : g[i] + wd * wi;
        float mi = b1 * m_in[i] + (1.0f - b1) * gi;
        float vi = b2 * v_in[i] + (1.0f - b2) * gi * gi;
        float mhat = mi / bc1;
        float vhat = vi / bc2;
        float decay = decoupled ? wd * wi : 0.0f;
        m[i] = mi;
        v[i] = vi;
        w[i] = wi - lr * (mhat / (sqrtf(vhat) + eps) + decay) + bad;
    }
}
