// Sums and means over any set of axes (ReduceSum, ReduceMean, SumTo, GlobalAveragePool) and
// GlobalAveragePool's gradient. Launch code: crates/cuda/src/ops/reduce/sum.rs.
//
// The input's dims are merged into alternating runs of kept and reduced dims. Output `o`
// reads from `kept offset(o)`; the reduced index space is `nq` outer positions (their offsets
// from `rd`) times an inner run of `len` elements `stride` apart. Accumulation is in double,
// as the CPU reference does, so results agree to the last float bit almost always.

// The offset of linear index `i` over `d.shape` with strides `d.sa`.
__device__ __forceinline__ i64 lm_red_offset(const Dims& d, i64 i) {
    i64 a = 0;
    for (int k = d.rank - 1; k >= 0; --k) {
        i64 s = d.shape[k];
        i64 c = i % s;
        i /= s;
        a += c * d.sa[k];
    }
    return a;
}

// Block (bx, by), by a power of two: thread (x, y) accumulates output `blockIdx.x * bx + x`
// over reduced positions y, y + by, ...; the `by` partials are then added as a tree in shared
// memory. With the reduced run innermost (stride 1), bx = 1 and a warp reads 32 consecutive
// elements of one output; with a kept run innermost, bx = 32 and a warp reads 32 consecutive
// outputs at one reduced position: coalesced either way, no atomics, a fixed order.
// `y[o] = sum` (or `sum / (nq * len)` with `mean`; 0/0 = NaN for an empty mean).
extern "C" __global__ void lm_reduce(const float* x, float* y, Dims kd, Dims rd, i64 n_out, i64 nq,
                                     i64 len, i64 stride, int mean) {
    __shared__ double part[1024];
    const int bx = blockDim.x, by = blockDim.y;
    const int tx = threadIdx.x, ty = threadIdx.y;
    for (i64 o0 = (i64)blockIdx.x * bx; o0 < n_out; o0 += (i64)gridDim.x * bx) {
        i64 o = o0 + tx;
        double acc = 0.0;
        if (o < n_out && len > 0) {
            const float* xo = x + lm_red_offset(kd, o);
            i64 q = 0, t = ty;
            if (t >= len) {
                q = t / len;
                t -= q * len;
            }
            i64 qoff = q < nq ? lm_red_offset(rd, q) : 0;
            while (q < nq) {
                acc += (double)xo[qoff + t * stride];
                t += by;
                if (t >= len) {
                    i64 dq = t / len;
                    q += dq;
                    t -= dq * len;
                    if (q < nq) qoff = lm_red_offset(rd, q);
                }
            }
        }
        part[ty * bx + tx] = acc;
        __syncthreads();
        for (int h = by / 2; h > 0; h >>= 1) {
            if (ty < h) part[ty * bx + tx] += part[(ty + h) * bx + tx];
            __syncthreads();
        }
        if (ty == 0 && o < n_out) {
            double s = part[tx];
            y[o] = mean ? (float)(s / (double)(nq * len)) : (float)s;
        }
        __syncthreads();
    }
}

// GlobalAveragePool's gradient: every element of plane p gets `dy[p] / plane`. Blocks walk
// planes (blockIdx.y) and chunks of a plane (blockIdx.x), so no division per element.
extern "C" __global__ void lm_reduce_gap_grad(const float* dy, float* dx, i64 planes, i64 plane) {
    const float cnt = (float)plane;
    for (i64 p = blockIdx.y; p < planes; p += gridDim.y) {
        const float v = dy[p] / cnt;
        float* o = dx + p * plane;
        for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < plane; i += (i64)gridDim.x * blockDim.x)
            o[i] = v;
    }
}
