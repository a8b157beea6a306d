// The memory rewrites' kernels: SliceOut's unit window and its adjoint, ReLU's 1-bit
// backward mask, and DropIT's top-k compression (crates/exec/src/kernels/sparse.rs is the
// reference; every result here is bit for bit the CPU's).

// SliceWindow: y[o, j, i] = x[o, (s + j) % n, i] over `total` = outer * k * inner outputs,
// s = lm_window_start(seed, *step, n).
extern "C" __global__ void lm_slice_window(const float* x, float* y, i64 total, i64 n, i64 k,
                                           i64 inner, u64 seed, const i64* step) {
    i64 s = lm_window_start(seed, (u64)step[0], n);
    LM_FOR(e, total) {
        i64 i = e % inner, r = e / inner;
        i64 j = r % k, o = r / k;
        i64 u = s + j;
        if (u >= n) u -= n;
        y[e] = x[(o * n + u) * inner + i];
    }
}

// SliceWindowGrad: dx[o, u, i] = dy[o, j, i] where j = (u - s) mod n < k, else 0, over
// `total` = outer * n * inner outputs.
extern "C" __global__ void lm_slice_window_grad(const float* dy, float* dx, i64 total, i64 n,
                                                i64 k, i64 inner, u64 seed, const i64* step) {
    i64 s = lm_window_start(seed, (u64)step[0], n);
    LM_FOR(e, total) {
        i64 i = e % inner, r = e / inner;
        i64 u = r % n, o = r / n;
        i64 j = u - s;
        if (j < 0) j += n;
        dx[e] = j < k ? dy[(o * k + j) * inner + i] : 0.0f;
    }
}

// ReluMask: bit i % 8 (least significant first) of mask[i / 8] is y[i] > 0; one thread per
// byte of the `bytes` = ceil(n / 8).
extern "C" __global__ void lm_relu_mask(const float* y, unsigned char* mask, i64 n, i64 bytes) {
    LM_FOR(b, bytes) {
        unsigned m = 0;
        i64 i0 = b * 8;
        for (int j = 0; j < 8; ++j)
            if (i0 + j < n && y[i0 + j] > 0.0f) m |= 1u << j;
        mask[b] = (unsigned char)m;
    }
}

// ReluMaskGrad: dx = dy where the mask bit is set, else 0 (dx may be dy: in place).
extern "C" __global__ void lm_relu_mask_grad(const float* dy, const unsigned char* mask, float* dx,
                                             i64 n) {
    LM_FOR(i, n) dx[i] = (mask[i >> 3] >> (i & 7)) & 1u ? dy[i] : 0.0f;
}

// TopK: a radix select of the k-th largest magnitude key (the float's bits without the sign;
// NaNs above infinity, as the CPU orders them), 8 bits a pass from the top, then an ordered
// compaction over chunks of LM_TOPK_CHUNK elements. Workspace (u32 slots): the histogram
// [0, 256), the state [256, 272): prefix, mask, remaining (after the last pass: the key T
// and how many elements equal to T to take), then (count > T, count == T) per chunk, turned
// into exclusive prefixes. Every count is an integer, so the result is deterministic.
// Mirrors lowmem_ir::scratch::TOPK_CHUNK and TOPK_STATE.
#define LM_TOPK_CHUNK 256
#define LM_TOPK_STATE 272
#define LM_TOPK_SCAN 1024

__device__ __forceinline__ unsigned lm_topk_key(float v) {
    return (unsigned)__float_as_int(v) & 0x7FFFFFFFu;
}

// One pass's histogram of the digit at `shift` over the elements whose higher digits are the
// prefix so far (blockDim.x == 256): a shared histogram per block, added to the global one.
extern "C" __global__ void lm_topk_hist(const float* x, i64 n, unsigned* ws, int shift) {
    __shared__ unsigned h[256];
    unsigned prefix = ws[256], mask = ws[257];
    h[threadIdx.x] = 0;
    __syncthreads();
    LM_FOR(i, n) {
        unsigned key = lm_topk_key(x[i]);
        if ((key & mask) == prefix) atomicAdd(&h[(key >> shift) & 0xFFu], 1u);
    }
    __syncthreads();
    unsigned c = h[threadIdx.x];
    if (c != 0) atomicAdd(&ws[threadIdx.x], c);
}

// Picks the pass's digit (one block of 256 threads): the digit d whose bin holds the
// `remaining`-th largest key (counting from the top); the prefix takes d, `remaining` drops
// by the count of larger digits. Zeroes the histogram for the next pass. `first`: the
// first pass (remaining starts at k).
extern "C" __global__ void lm_topk_select(unsigned* ws, int shift, int k, int first) {
    __shared__ unsigned suf[256];
    unsigned t = threadIdx.x;
    unsigned rem = first ? (unsigned)k : ws[258];
    unsigned mine = ws[t];
    ws[t] = 0;
    suf[t] = mine;
    __syncthreads();
    // Inclusive suffix sums: suf[d] = count of digits >= d.
    for (unsigned off = 1; off < 256; off <<= 1) {
        unsigned v = suf[t] + (t + off < 256 ? suf[t + off] : 0u);
        __syncthreads();
        suf[t] = v;
        __syncthreads();
    }
    unsigned above = suf[t] - mine;
    if (above < rem && rem <= suf[t]) {
        ws[256] |= t << shift;
        ws[257] |= 0xFFu << shift;
        ws[258] = rem - above;
    }
}

// Per chunk: how many keys are above T and equal to it (one thread per chunk).
extern "C" __global__ void lm_topk_count(const float* x, i64 n, unsigned* ws, i64 chunks) {
    unsigned t = ws[256];
    unsigned* cnt = ws + LM_TOPK_STATE;
    LM_FOR(c, chunks) {
        i64 lo = c * LM_TOPK_CHUNK, hi = lo + LM_TOPK_CHUNK < n ? lo + LM_TOPK_CHUNK : n;
        unsigned gt = 0, eq = 0;
        for (i64 i = lo; i < hi; ++i) {
            unsigned key = lm_topk_key(x[i]);
            gt += key > t;
            eq += key == t;
        }
        cnt[2 * c] = gt;
        cnt[2 * c + 1] = eq;
    }
}

// The per-chunk counts to exclusive prefixes, in place (one block of LM_TOPK_SCAN threads,
// each over a contiguous run of chunks).
extern "C" __global__ void lm_topk_scan(unsigned* ws, i64 chunks) {
    __shared__ unsigned sg[LM_TOPK_SCAN], se[LM_TOPK_SCAN];
    unsigned* cnt = ws + LM_TOPK_STATE;
    unsigned t = threadIdx.x;
    i64 per = (chunks + LM_TOPK_SCAN - 1) / LM_TOPK_SCAN;
    i64 lo = t * per, hi = lo + per < chunks ? lo + per : chunks;
    unsigned gt = 0, eq = 0;
    for (i64 c = lo; c < hi; ++c) {
        gt += cnt[2 * c];
        eq += cnt[2 * c + 1];
    }
    sg[t] = gt;
    se[t] = eq;
    __syncthreads();
    // Inclusive prefix sums over the threads.
    for (unsigned off = 1; off < LM_TOPK_SCAN; off <<= 1) {
        unsigned g = sg[t] + (t >= off ? sg[t - off] : 0u);
        unsigned e = se[t] + (t >= off ? se[t - off] : 0u);
        __syncthreads();
        sg[t] = g;
        se[t] = e;
        __syncthreads();
    }
    gt = sg[t] - gt;
    eq = se[t] - eq;
    for (i64 c = lo; c < hi; ++c) {
        unsigned g = cnt[2 * c], e = cnt[2 * c + 1];
        cnt[2 * c] = gt;
        cnt[2 * c + 1] = eq;
        gt += g;
        eq += e;
    }
}

// Writes each chunk's selected elements in index order (one thread per chunk): a key above
// T, or equal to T among the first `ties` such keys overall; at gt_before + min(eq_before,
// ties) onwards.
extern "C" __global__ void lm_topk_place(const float* x, i64 n, const unsigned* ws, i64 chunks,
                                         float* values, int* indices) {
    unsigned t = ws[256], ties = ws[258];
    const unsigned* cnt = ws + LM_TOPK_STATE;
    LM_FOR(c, chunks) {
        unsigned eq = cnt[2 * c + 1];
        unsigned pos = cnt[2 * c] + (eq < ties ? eq : ties);
        i64 lo = c * LM_TOPK_CHUNK, hi = lo + LM_TOPK_CHUNK < n ? lo + LM_TOPK_CHUNK : n;
        for (i64 i = lo; i < hi; ++i) {
            float v = x[i];
            unsigned key = lm_topk_key(v);
            bool take = key > t;
            if (key == t) take = eq++ < ties;
            if (take) {
                values[pos] = v;
                indices[pos] = (int)i;
                ++pos;
            }
        }
    }
}

// TopKScatter's values at their flat indices (the output zeroed before; indices outside
// [0, n) are skipped).
extern "C" __global__ void lm_topk_scatter(const float* values, const int* indices, float* y,
                                           i64 k, i64 n) {
    LM_FOR(j, k) {
        i64 i = indices[j];
        if (i >= 0 && i < n) y[i] = values[j];
    }
}
