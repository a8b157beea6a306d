// Shared by every kernel file: prepended to each source before NVRTC compiles it (and before
// the host shim compiles it as C++). No includes: NVRTC provides the math builtins.
#pragma once

typedef long long i64;
typedef unsigned long long u64;

#ifndef LM_DYNAMIC_SHARED
// The launch's dynamic shared memory as an array of T.
extern __shared__ __align__(16) unsigned char lm_dynamic_smem[];
#define LM_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(lm_dynamic_smem)
#endif

#define LM_MAX_RANK 12
#define LM_WARP 32

// A strided view of up to LM_MAX_RANK dimensions: the output's shape and, per operand, the
// element stride of each output dimension (0 where the operand is broadcast).
// Mirrors `Dims` in crates/cuda/src/args.rs (repr(C)).
struct Dims {
    int rank;
    int pad_;
    i64 n;
    i64 shape[LM_MAX_RANK];
    i64 sa[LM_MAX_RANK];
    i64 sb[LM_MAX_RANK];
};

// Grid-stride loop over [0, n).
#define LM_FOR(i, n) \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

// The operand offsets of output element `i`.
__device__ __forceinline__ void lm_offsets(const Dims& d, i64 i, i64* oa, i64* ob) {
    i64 a = 0, b = 0;
    for (int k = d.rank - 1; k >= 0; --k) {
        i64 s = d.shape[k];
        i64 c = i % s;
        i /= s;
        a += c * d.sa[k];
        b += c * d.sb[k];
    }
    *oa = a;
    *ob = b;
}

__device__ __forceinline__ float lm_inf() { return __int_as_float(0x7f800000); }

__device__ __forceinline__ float lm_warp_sum(float v) {
    for (int m = LM_WARP / 2; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
    return v;
}

__device__ __forceinline__ float lm_warp_max(float v) {
    for (int m = LM_WARP / 2; m > 0; m >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, m));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
// `scratch` holds 32 floats of shared memory.
__device__ __forceinline__ float lm_block_sum(float v, float* scratch) {
    int lane = threadIdx.x % LM_WARP, warp = threadIdx.x / LM_WARP;
    int nw = blockDim.x / LM_WARP;
    v = lm_warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < nw ? scratch[lane] : 0.0f;
    return lm_warp_sum(t);
}

__device__ __forceinline__ float lm_block_max(float v, float* scratch) {
    int lane = threadIdx.x % LM_WARP, warp = threadIdx.x / LM_WARP;
    int nw = blockDim.x / LM_WARP;
    v = lm_warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < nw ? scratch[lane] : -lm_inf();
    return lm_warp_max(t);
}

// The f64 versions, for sums the CPU reference accumulates in f64.
__device__ __forceinline__ double lm_warp_dsum(double v) {
    for (int m = LM_WARP / 2; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
    return v;
}

// `scratch` holds 32 doubles of shared memory.
__device__ __forceinline__ double lm_block_dsum(double v, double* scratch) {
    int lane = threadIdx.x % LM_WARP, warp = threadIdx.x / LM_WARP;
    int nw = blockDim.x / LM_WARP;
    v = lm_warp_dsum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    double t = lane < nw ? scratch[lane] : 0.0;
    return lm_warp_dsum(t);
}

// Over a row's group of threads: its warp (`warp`), or the whole block.
__device__ __forceinline__ double lm_group_dsum(double v, bool warp, double* scratch) {
    return warp ? lm_warp_dsum(v) : lm_block_dsum(v, scratch);
}

__device__ __forceinline__ float lm_group_max(float v, bool warp, float* scratch) {
    return warp ? lm_warp_max(v) : lm_block_max(v, scratch);
}

// A convolution or pooling window packed in a Dims (`geo_dims` in
// crates/cuda/src/ops/conv.rs), padded to 3 spatial dims (leading dims of size 1): kernel,
// strides, dilations and pad_begin in `shape`; input size, output size and pad_end in `sa`.
#define LM_WK(w, a) ((int)(w).shape[(a)])
#define LM_WS(w, a) ((int)(w).shape[3 + (a)])
#define LM_WD(w, a) ((int)(w).shape[6 + (a)])
#define LM_WPB(w, a) ((int)(w).shape[9 + (a)])
#define LM_WI(w, a) ((int)(w).sa[(a)])
#define LM_WO(w, a) ((int)(w).sa[3 + (a)])
#define LM_WPE(w, a) ((int)(w).sa[6 + (a)])

// splitmix64 of the counter (seed, step, i): lowmem_ir's `mix`, bit for bit, so dropout
// masks and SliceWindow's windows agree across backends and recomputation.
__device__ __forceinline__ u64 lm_mix(u64 seed, u64 step, u64 i) {
    u64 z = seed * 0x9E3779B97F4A7C15ull + step * 0xD1B54A32D192ED03ull + i * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Whether element `i` survives dropout at `step` (lowmem_ir::dropout_keep).
__device__ __forceinline__ bool lm_dropout_keep(u64 seed, u64 step, u64 i, float ratio) {
    return (float)(lm_mix(seed, step, i) >> 40) / (float)(1ull << 24) >= ratio;
}

// The first unit of SliceWindow's window over `n` units at `step` (lowmem_ir::window_start):
// the hash at the counter u64::MAX, which no element index reaches, reduced mod n.
__device__ __forceinline__ i64 lm_window_start(u64 seed, u64 step, i64 n) {
    return (i64)(lm_mix(seed, step, ~0ull) % (u64)(n > 0 ? n : 1));
}
