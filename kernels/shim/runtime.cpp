// The host shim's runtime: fibers, barriers, warp exchange and the launcher (see
// cuda_shim.h).
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "cuda_shim.h"

extern "C" void lm_ctx_switch(void** save_sp, void* load_sp);
extern "C" void lm_fiber_trampoline();

#if !defined(__x86_64__)
#error "the host shim's fibers are written for x86-64"
#endif

// Saves the callee-saved registers on the current stack, stores the stack pointer in
// *save_sp, loads load_sp and restores that fiber's registers.
asm(R"(
    .text
    .globl lm_ctx_switch
    .type lm_ctx_switch,@function
lm_ctx_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size lm_ctx_switch, .-lm_ctx_switch

    .globl lm_fiber_trampoline
    .type lm_fiber_trampoline,@function
lm_fiber_trampoline:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size lm_fiber_trampoline, .-lm_fiber_trampoline
)");

namespace lm_shim {

enum State { Ready, AtBlockBarrier, AtWarpBarrier, Done };

struct Fiber {
    void* sp = nullptr;
    dim3 tid{0, 0, 0};
    unsigned linear = 0;
    State state = Ready;
    std::vector<unsigned char> stack;
};

thread_local dim3 block_idx, block_dim, grid_dim;
thread_local Fiber* current = nullptr;

namespace {
constexpr size_t kStack = 64 * 1024;

// Fibers (and their stacks) outlive launches: one pool per OS thread.
thread_local std::vector<Fiber> fiber_pool;

struct Block {
    std::vector<Fiber>& fibers = fiber_pool;
    void* scheduler_sp = nullptr;
    std::vector<uint64_t> warp_slots;
    std::vector<unsigned char> shared;
    void (*thunk)(void**) = nullptr;
    void** params = nullptr;
    const char* kernel = "";
};

thread_local Block* block = nullptr;

[[noreturn]] void die(const std::string& msg) {
    std::fprintf(stderr, "lowmem cuda shim: %s\n", msg.c_str());
    std::abort();
}

void yield_to_scheduler() { lm_ctx_switch(&current->sp, block->scheduler_sp); }

void fiber_main(void*) {
    block->thunk(block->params);
    current->state = Done;
    yield_to_scheduler();
    die("a finished fiber was resumed");
}

void start_fiber(Fiber& f) {
    if (f.stack.size() != kStack) f.stack.assign(kStack, 0);
    auto top = reinterpret_cast<uintptr_t>(f.stack.data() + f.stack.size()) & ~uintptr_t(15);
    auto* sp = reinterpret_cast<uint64_t*>(top) - 8;
    // Popped by lm_ctx_switch: control words, r15, r14, r13 (entry), r12 (argument), rbx,
    // rbp, then the return address.
    uint32_t mxcsr;
    uint16_t fpucw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpucw));
    sp[0] = uint64_t(mxcsr) | (uint64_t(fpucw) << 32);
    sp[1] = 0;
    sp[2] = 0;
    sp[3] = reinterpret_cast<uint64_t>(&fiber_main);
    sp[4] = 0;
    sp[5] = 0;
    sp[6] = 0;
    sp[7] = reinterpret_cast<uint64_t>(&lm_fiber_trampoline);
    f.sp = sp;
    f.state = Ready;
}

void run_block(Block& b) {
    unsigned n = block_dim.x * block_dim.y * block_dim.z;
    unsigned warps = (n + 31) / 32;
    b.warp_slots.assign(size_t(warps) * 32, 0);
    if (b.fibers.size() < n) b.fibers.resize(n);
    for (unsigned i = 0; i < n; ++i) {
        Fiber& f = b.fibers[i];
        f.linear = i;
        f.tid = dim3{i % block_dim.x, (i / block_dim.x) % block_dim.y, i / (block_dim.x * block_dim.y)};
        start_fiber(f);
    }
    for (;;) {
        for (unsigned i = 0; i < n; ++i) {
            Fiber& f = b.fibers[i];
            if (f.state != Ready) continue;
            current = &f;
            lm_ctx_switch(&b.scheduler_sp, f.sp);
            current = nullptr;
        }
        // Every fiber waits or is done: release a complete warp barrier, else the block
        // barrier.
        bool released = false, all_done = true, any_block = false;
        for (unsigned w = 0; w < warps; ++w) {
            unsigned lo = w * 32, hi = lo + 32 < n ? lo + 32 : n;
            bool waiting = false, complete = true;
            for (unsigned i = lo; i < hi; ++i) {
                State s = b.fibers[i].state;
                if (s == AtWarpBarrier) waiting = true;
                else if (s != Done) complete = false;
            }
            if (waiting && complete) {
                for (unsigned i = lo; i < hi; ++i)
                    if (b.fibers[i].state == AtWarpBarrier) b.fibers[i].state = Ready;
                released = true;
            }
        }
        if (released) continue;
        for (unsigned i = 0; i < n; ++i) {
            State s = b.fibers[i].state;
            if (s != Done) all_done = false;
            if (s == AtBlockBarrier) any_block = true;
        }
        if (all_done) return;
        bool uniform = any_block;
        for (unsigned i = 0; i < n; ++i) {
            State s = b.fibers[i].state;
            if (s != Done && s != AtBlockBarrier) uniform = false;
        }
        if (!uniform)
            die(std::string("kernel ") + b.kernel +
                ": threads wait at different barriers (divergent __syncthreads or shuffle)");
        for (unsigned i = 0; i < n; ++i)
            if (b.fibers[i].state == AtBlockBarrier) b.fibers[i].state = Ready;
    }
}
}  // namespace

const dim3& thread_idx() { return current->tid; }

void sync_threads() {
    current->state = AtBlockBarrier;
    yield_to_scheduler();
}

void sync_warp() {
    current->state = AtWarpBarrier;
    yield_to_scheduler();
}

uint64_t shfl_xor(uint64_t v, int lane_mask) {
    unsigned lane = current->linear % 32, base = current->linear - lane;
    block->warp_slots[base + lane] = v;
    sync_warp();
    unsigned src = lane ^ unsigned(lane_mask);
    uint64_t out = src < 32 ? block->warp_slots[base + src] : v;
    sync_warp();
    return out;
}

void* dynamic_shared() { return block->shared.data(); }

}  // namespace lm_shim

using lm_shim::Thunk;
extern "C" Thunk lm_shim_lookup(const char* name);

// Runs kernel `name` over the grid, block after block: cuLaunchKernel's contract.
// Returns 0, or 1 for an unknown kernel, 2 for a bad launch shape.
extern "C" int lm_shim_launch(const char* name, unsigned gx, unsigned gy, unsigned gz,
                              unsigned bx, unsigned by, unsigned bz, unsigned shared_bytes,
                              void** params) {
    Thunk t = lm_shim_lookup(name);
    if (!t) return 1;
    if (bx * by * bz == 0 || bx * by * bz > 1024 || gy > 65535 || gz > 65535) return 2;
    lm_shim::Block b;
    b.thunk = t;
    b.params = params;
    b.kernel = name;
    b.shared.assign(shared_bytes + 16, 0);
    lm_shim::block = &b;
    lm_shim::grid_dim = dim3{gx, gy, gz};
    lm_shim::block_dim = dim3{bx, by, bz};
    for (unsigned z = 0; z < gz; ++z)
        for (unsigned y = 0; y < gy; ++y)
            for (unsigned x = 0; x < gx; ++x) {
                lm_shim::block_idx = dim3{x, y, z};
                lm_shim::run_block(b);
            }
    lm_shim::block = nullptr;
    return 0;
}
