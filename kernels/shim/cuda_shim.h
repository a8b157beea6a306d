// The host shim: compiles lowmem's CUDA C kernels as C++ and runs them on the CPU, for tests
// on machines without a GPU. `__global__` functions become host functions; each block's
// threads run as fibers on one OS thread (switched by hand, no syscalls); `__syncthreads` is
// a block barrier and warp shuffles exchange through a per-warp slot between two warp
// barriers; `__shared__` variables are per OS thread, which runs one block at a time.
//
// What it cannot catch: memory ordering and real data races (fibers switch only at
// barriers, blocks run one after another), warp-synchronous code without shuffles, timing,
// and anything about the real hardware's limits (registers, occupancy: NVRTC's ptxas
// figures cover those).
#pragma once

#include <math.h>
#include <cstdint>
#include <cstring>
#include <utility>

struct dim3 {
    unsigned x, y, z;
};

namespace lm_shim {
struct Fiber;
extern thread_local dim3 block_idx, block_dim, grid_dim;
extern thread_local Fiber* current;
const dim3& thread_idx();
void sync_threads();
void sync_warp();
uint64_t shfl_xor(uint64_t v, int lane_mask);
void* dynamic_shared();
}  // namespace lm_shim

#define __global__
#define __device__ static inline
#define __forceinline__
#define __host__
#define __restrict__ __restrict
#define __shared__ static thread_local
#define threadIdx (::lm_shim::thread_idx())
#define blockIdx (::lm_shim::block_idx)
#define blockDim (::lm_shim::block_dim)
#define gridDim (::lm_shim::grid_dim)
#define LM_DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(::lm_shim::dynamic_shared())
#define __align__(n) alignas(n)

static inline void __syncthreads() { ::lm_shim::sync_threads(); }
static inline void __syncwarp(unsigned = 0xffffffffu) { ::lm_shim::sync_warp(); }

static inline float __int_as_float(int v) {
    float f;
    std::memcpy(&f, &v, 4);
    return f;
}
static inline int __float_as_int(float f) {
    int v;
    std::memcpy(&v, &f, 4);
    return v;
}

template <class T>
static inline T __shfl_xor_sync(unsigned, T v, int lane_mask) {
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    bits = ::lm_shim::shfl_xor(bits, lane_mask);
    T out;
    std::memcpy(&out, &bits, sizeof(T));
    return out;
}

// Blocks run one at a time, so plain read-modify-write is atomic here.
static inline float atomicAdd(float* p, float v) {
    float old = *p;
    *p = old + v;
    return old;
}
static inline unsigned atomicAdd(unsigned* p, unsigned v) {
    unsigned old = *p;
    *p = old + v;
    return old;
}

static inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

// A kernel's entry: unpacks cuLaunchKernel-style parameters (one pointer per argument).
namespace lm_shim {
using Thunk = void (*)(void** params);

template <class... A, unsigned long... I>
static inline void call_with(void (*f)(A...), void** p, std::integer_sequence<unsigned long, I...>) {
    f(*static_cast<A*>(p[I])...);
}
}  // namespace lm_shim

#define LM_SHIM_THUNK(f)                                                                 \
    [](void** p) {                                                                       \
        ::lm_shim::call_with(&f, p, std::make_integer_sequence<unsigned long,            \
                                                                ::lm_shim::arity(&f)>{}); \
    }

namespace lm_shim {
template <class... A>
constexpr unsigned long arity(void (*)(A...)) {
    return sizeof...(A);
}
}  // namespace lm_shim
