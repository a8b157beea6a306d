// Elementwise ops and their gradients. Codes mirror `UnaryCode`/`GradCode`/`BinaryCode` in
// crates/cuda/src/ops/elementwise.rs; formulas mirror lowmem-exec's kernels.

__device__ __forceinline__ float lm_erf(float x) { return erff(x); }

__device__ __forceinline__ float lm_unary_apply(int op, float x, float p0, float p1) {
    switch (op) {
    case 0: return x < 0.0f ? 0.0f : x;                       // Relu
    case 1: return x < 0.0f ? p0 * x : x;                     // LeakyRelu(alpha)
    case 2:                                                   // Sigmoid, stable on both tails
        if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
        else { float e = expf(x); return e / (1.0f + e); }
    case 3: return tanhf(x);                                  // Tanh
    case 4: return lm_erf(x);                                 // Erf
    case 5: return 0.5f * x * (1.0f + lm_erf(x * 0.70710678118654752f)); // Gelu
    case 6: {                                                 // Gelu, tanh approximation
        const float c = 0.7978846f;
        return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
    }
    case 7: return sqrtf(x);                                  // Sqrt
    case 8: return x < p0 ? p0 : (x > p1 ? p1 : x);           // Clip(min, max)
    case 9: return -x;                                        // Neg
    case 10: return p0 * x;                                   // Scale(alpha)
    default: return x;                                        // Identity
    }
}

// y = op(x); `y` may be `x` (in place).
extern "C" __global__ void lm_unary(const float* x, float* y, i64 n, int op, float p0, float p1) {
    LM_FOR(i, n) y[i] = lm_unary_apply(op, x[i], p0, p1);
}

__device__ __forceinline__ float lm_grad_apply(int op, float dy, float v, float p0, float p1) {
    switch (op) {
    case 0: return v > 0.0f ? dy : 0.0f;                      // Relu (reads Y)
    case 1: return v < 0.0f ? p0 * dy : dy;                   // LeakyRelu (reads X)
    case 2: return dy * v * (1.0f - v);                       // Sigmoid (reads Y)
    case 3: return dy * (1.0f - v * v);                       // Tanh (reads Y)
    case 4: return dy * 0.5f / v;                             // Sqrt (reads Y)
    case 5: return dy * 1.1283791670955126f * expf(-v * v);  // Erf (reads X)
    case 6: {                                                 // Gelu (reads X)
        float cdf = 0.5f * (1.0f + lm_erf(v * 0.70710678118654752f));
        return dy * (cdf + v * 0.3989423f * expf(-0.5f * v * v));
    }
    case 7: {                                                 // Gelu tanh (reads X)
        const float c = 0.7978846f, a = 0.044715f;
        float t = tanhf(c * (v + a * v * v * v));
        return dy * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * c * (1.0f + 3.0f * a * v * v));
    }
    case 8: return (v >= p0 && v <= p1) ? dy : 0.0f;          // Clip (reads X)
    default: return dy;
    }
}

// dx = op'(dy, v); `dx` may be `dy` (in place).
extern "C" __global__ void lm_unary_grad(const float* dy, const float* v, float* dx, i64 n, int op,
                                         float p0, float p1) {
    LM_FOR(i, n) dx[i] = lm_grad_apply(op, dy[i], v[i], p0, p1);
}

__device__ __forceinline__ float lm_binary_apply(int op, float a, float b) {
    switch (op) {
    case 0: return a + b;
    case 1: return a - b;
    case 2: return a * b;
    case 3: return a / b;
    default: return powf(a, b);
    }
}

// y = a op b with numpy broadcasting (strides in `d`); `y` may be `a` when `a` has y's shape.
extern "C" __global__ void lm_binary(const float* a, const float* b, float* y, Dims d, int op) {
    LM_FOR(i, d.n) {
        i64 oa, ob;
        lm_offsets(d, i, &oa, &ob);
        y[i] = lm_binary_apply(op, a[oa], b[ob]);
    }
}

// y = a op b, both of y's shape (no broadcast).
extern "C" __global__ void lm_binary_flat(const float* a, const float* b, float* y, i64 n, int op) {
    LM_FOR(i, n) y[i] = lm_binary_apply(op, a[i], b[i]);
}

// y += b, b broadcast to y's shape by `d` (strides in sb); the accumulation of Sum.
extern "C" __global__ void lm_accumulate(float* y, const float* b, Dims d) {
    LM_FOR(i, d.n) {
        i64 oa, ob;
        lm_offsets(d, i, &oa, &ob);
        y[i] += b[ob];
    }
}

// The gradients of a ^ b at y's shape: da = dy * b * a^(b-1) (0 where b == 0),
// db = dy * a^b * ln a (0 where a == 0 and b >= 0).
extern "C" __global__ void lm_pow_grad(const float* dy, const float* a, const float* b, float* da,
                                       float* db, Dims d) {
    LM_FOR(i, d.n) {
        i64 oa, ob;
        lm_offsets(d, i, &oa, &ob);
        float av = a[oa], bv = b[ob], g = dy[i];
        da[i] = bv == 0.0f ? 0.0f : g * bv * powf(av, bv - 1.0f);
        db[i] = (av == 0.0f && bv >= 0.0f) ? 0.0f : g * powf(av, bv) * logf(av);
    }
}

// Dropout in training: y = keep ? x / (1 - ratio) : 0, the mask from (seed, step, index);
// `y` may be `x`. The step is read from device memory (a graph input).
extern "C" __global__ void lm_dropout(const float* x, float* y, i64 n, float ratio, u64 seed,
                                      const i64* step) {
    float scale = 1.0f / (1.0f - ratio);
    u64 s = (u64)step[0];
    LM_FOR(i, n) y[i] = lm_dropout_keep(seed, s, (u64)i, ratio) ? x[i] * scale : 0.0f;
}

// IEEE float <-> half and bfloat16, round to nearest even, bit for bit as the `half` crate
// (the CPU executor) converts: NaN payloads keep their high bits with the quiet bit set.
__device__ __forceinline__ unsigned short lm_f32_to_f16(float f) {
    unsigned x = (unsigned)__float_as_int(f);
    unsigned sign = x & 0x80000000u, exp = x & 0x7F800000u, man = x & 0x007FFFFFu;
    unsigned hs = sign >> 16;
    if (exp == 0x7F800000u) return (unsigned short)(hs | 0x7C00u | (man ? 0x0200u : 0u) | (man >> 13));
    int he = (int)(exp >> 23) - 127 + 15;
    if (he >= 0x1F) return (unsigned short)(hs | 0x7C00u);
    if (he <= 0) {
        if (14 - he > 24) return (unsigned short)hs;
        unsigned m = man | 0x00800000u;
        unsigned hm = m >> (14 - he);
        unsigned rb = 1u << (13 - he);
        if ((m & rb) != 0u && (m & (3u * rb - 1u)) != 0u) hm += 1u;
        return (unsigned short)(hs | hm);
    }
    unsigned h = hs | ((unsigned)he << 10) | (man >> 13);
    unsigned rb = 0x00001000u;
    if ((man & rb) != 0u && (man & (3u * rb - 1u)) != 0u) h += 1u;
    return (unsigned short)h;
}

__device__ __forceinline__ float lm_f16_to_f32(unsigned short h) {
    unsigned i = h;
    if ((i & 0x7FFFu) == 0u) return __int_as_float((int)(i << 16));
    unsigned hs = i & 0x8000u, he = i & 0x7C00u, hm = i & 0x03FFu;
    unsigned sign = hs << 16;
    if (he == 0x7C00u) {
        if (hm == 0u) return __int_as_float((int)(sign | 0x7F800000u));
        return __int_as_float((int)(sign | 0x7FC00000u | (hm << 13)));
    }
    if (he == 0u) {
        // Subnormal: normalise (e = leading zeros of the 16-bit mantissa, minus 6).
        int e = 0;
        while ((hm & (0x8000u >> e)) == 0u) ++e;
        e -= 6;
        unsigned exp = (unsigned)(127 - 15 - e) << 23;
        unsigned m = (hm << (14 + e)) & 0x007FFFFFu;
        return __int_as_float((int)(sign | exp | m));
    }
    unsigned exp = (unsigned)(((int)(he >> 10) - 15) + 127) << 23;
    return __int_as_float((int)(sign | exp | (hm << 13)));
}

__device__ __forceinline__ unsigned short lm_f32_to_bf16(float f) {
    unsigned x = (unsigned)__float_as_int(f);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (unsigned short)((x >> 16) | 0x0040u);
    unsigned rb = 0x00008000u;
    if ((x & rb) != 0u && (x & (3u * rb - 1u)) != 0u) return (unsigned short)((x >> 16) + 1u);
    return (unsigned short)(x >> 16);
}

__device__ __forceinline__ float lm_bf16_to_f32(unsigned short b) {
    unsigned i = b;
    if ((i & 0x7FFFu) > 0x7F80u) i |= 0x0040u;
    return __int_as_float((int)(i << 16));
}

// dst = src converted; `from`/`to`: 0 f32, 1 f16, 2 bf16.
extern "C" __global__ void lm_cast(const void* src, void* dst, i64 n, int from, int to) {
    LM_FOR(i, n) {
        float x;
        if (from == 0) x = ((const float*)src)[i];
        else if (from == 1) x = lm_f16_to_f32(((const unsigned short*)src)[i]);
        else x = lm_bf16_to_f32(((const unsigned short*)src)[i]);
        if (to == 0) ((float*)dst)[i] = x;
        else if (to == 1) ((unsigned short*)dst)[i] = lm_f32_to_f16(x);
        else ((unsigned short*)dst)[i] = lm_f32_to_bf16(x);
    }
}
