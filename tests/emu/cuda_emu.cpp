// cuda_emu: the CUDA runtime and cuBLAS calls of kernels/cuda/ops_cuda.cu on the CPU (see
// include/cuda_runtime.h for what it is and is not). Every call runs synchronously on the
// calling host thread, in stream order; a capturing stream records instead, and a graph launch
// replays the record.
#include "include/cublasLt.h"
#include "include/cublas_v2.h"
#include "include/cuda_runtime.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

// An H100/H200's largest dynamic shared memory a block may opt in to (227 KiB), and an SM's
// (228 KiB)
#define EMU_SHARED_OPTIN 232448
#define EMU_SHARED_PER_SM 233472

extern "C" {
#include "kernels.h" // the half conversions, the CPU backend's own
}

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif


static const int max_devices = 16;
static thread_local cudaError_t last_error = cudaSuccess;
// A kernel or product that went wrong: as on a GPU, every later synchronisation reports it.
static thread_local cudaError_t sticky_error = cudaSuccess;

static void fault(void)
{
    last_error = sticky_error = cudaErrorLaunchFailure;
}
static thread_local int current_device = 0;

static cudaError_t fail(cudaError_t e)
{
    if (e != cudaSuccess)
        last_error = e;
    return e;
}

// SHERL_CUDA_EMU_DEVICES=N (default 1, 0 for none) emulated devices of 8 GiB each
static int device_count(void)
{
    static int n = -1;
    static std::once_flag once;
    std::call_once(once, [] {
        const char *v = getenv("SHERL_CUDA_EMU_DEVICES");
        char *end = NULL;
        long k = v && *v ? strtol(v, &end, 10) : 1;
        if (v && *v && (*end || k < 0 || k > max_devices)) {
            fprintf(stderr, "cuda_emu: SHERL_CUDA_EMU_DEVICES='%s' ignored: expected 0..%d\n", v,
                    max_devices);
            k = 1;
        }
        n = (int)k;
    });
    return n;
}
static const size_t device_bytes = (size_t)8 << 30;

// ---- errors
cudaError_t cudaGetLastError(void)
{
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}

const char *cudaGetErrorName(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    }
    return "cudaErrorUnknown";
}

const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorIllegalState: return "the operation cannot be performed in the present state";
    case cudaErrorLaunchFailure: return "unspecified launch failure (cuda_emu: see its message above)";
    }
    return "unknown error";
}

// ---- devices
cudaError_t cudaGetDeviceCount(int *n)
{
    *n = device_count();
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int d)
{
    if (d < 0 || d >= device_count())
        return fail(cudaErrorInvalidDevice);
    current_device = d;
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *d)
{
    *d = current_device;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d)
{
    if (d < 0 || d >= device_count())
        return fail(cudaErrorInvalidDevice);
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "cuda_emu (kernels run on the CPU)");
    p->totalGlobalMem = device_bytes;
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = 132;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int d)
{
    if (d < 0 || d >= device_count())
        return fail(cudaErrorInvalidDevice);
    if (a == cudaDevAttrComputeCapabilityMajor)
        *v = 9;
    else if (a == cudaDevAttrComputeCapabilityMinor)
        *v = 0;
    else if (a == cudaDevAttrMaxSharedMemoryPerBlockOptin)
        *v = EMU_SHARED_OPTIN;
    else if (a == cudaDevAttrMaxSharedMemoryPerMultiprocessor)
        *v = EMU_SHARED_PER_SM;
    else
        return fail(cudaErrorInvalidValue);
    return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int *v)
{
    *v = 13000;
    return cudaSuccess;
}

// ---- memory: every allocation is remembered, so copies are checked against its bounds
struct allocation {
    size_t bytes;
    int device;
};
static std::mutex mem_lock;
static std::map<uintptr_t, allocation> allocations;
static size_t used_bytes[max_devices];

// the allocation holding [p, p + bytes), or false
static bool in_allocation(const void *p, size_t bytes)
{
    std::lock_guard<std::mutex> g(mem_lock);
    uintptr_t a = (uintptr_t)p;
    auto it = allocations.upper_bound(a);
    if (it == allocations.begin())
        return false;
    --it;
    return a >= it->first && a - it->first <= it->second.bytes &&
           bytes <= it->second.bytes - (a - it->first);
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes)
{
    std::lock_guard<std::mutex> g(mem_lock);
    *free_bytes = device_bytes - used_bytes[current_device];
    *total_bytes = device_bytes;
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t bytes)
{
    *p = NULL;
    if (current_device >= device_count())
        return fail(cudaErrorInvalidDevice);
    if (bytes == 0)
        return cudaSuccess;
    {
        std::lock_guard<std::mutex> g(mem_lock);
        if (bytes > device_bytes - used_bytes[current_device])
            return fail(cudaErrorMemoryAllocation);
    }
    void *m = NULL;
    // exactly `bytes` (no rounding), so AddressSanitizer flags the first element past the end
    if (posix_memalign(&m, 256, bytes))
        return fail(cudaErrorMemoryAllocation);
    // a device's fresh memory holds whatever was there: all-ones bytes are NaN in every float
    // type, so a kernel that reads what nobody wrote shows it
    memset(m, 0xff, bytes);
    std::lock_guard<std::mutex> g(mem_lock);
    allocations[(uintptr_t)m] = {bytes, current_device};
    used_bytes[current_device] += bytes;
    *p = m;
    return cudaSuccess;
}

cudaError_t cudaFree(void *p)
{
    if (!p)
        return cudaSuccess;
    {
        std::lock_guard<std::mutex> g(mem_lock);
        auto it = allocations.find((uintptr_t)p);
        if (it == allocations.end())
            return fail(cudaErrorInvalidValue);
        used_bytes[it->second.device] -= it->second.bytes;
        allocations.erase(it);
    }
    free(p);
    return cudaSuccess;
}

// ---- streams and graphs
struct stream_op {
    std::shared_ptr<emu::work> kernel; // a launch, or
    emu::config cfg = emu::config(1, 1);
    std::function<void(void)> call; // anything else
};
struct emu_graph {
    std::vector<stream_op> ops;
};
struct emu_stream {
    int device;
    int capturing;
    int invalidated;
    emu_graph *graph;
};

static void run_grid(const emu::config &c, emu::work *w);

// Runs `op` now, or appends it to the capture of stream s
static cudaError_t enqueue(cudaStream_t s, stream_op op)
{
    if (s && s->capturing) {
        s->graph->ops.push_back(std::move(op));
        return cudaSuccess;
    }
    if (op.kernel)
        run_grid(op.cfg, op.kernel.get());
    else
        op.call();
    return cudaSuccess;
}

static cudaError_t enqueue_call(cudaStream_t s, std::function<void(void)> f)
{
    stream_op op;
    op.call = std::move(f);
    return enqueue(s, std::move(op));
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t s)
{
    if (bytes == 0)
        return cudaSuccess;
    bool dev_src = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    bool dev_dst = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    if (kind == cudaMemcpyDefault)
        dev_src = in_allocation(src, 1), dev_dst = in_allocation(dst, 1);
    if ((dev_src && !in_allocation(src, bytes)) || (dev_dst && !in_allocation(dst, bytes))) {
        fprintf(stderr, "cuda_emu: cudaMemcpyAsync of %zu bytes %p -> %p (kind %d) leaves its "
                        "device allocation\n", bytes, src, dst, (int)kind);
        return fail(cudaErrorInvalidValue);
    }
    if (s && s->capturing && (!dev_src || !dev_dst)) {
        // pageable host memory: a synchronous copy, which a capture cannot hold
        s->invalidated = 1;
        return fail(cudaErrorStreamCaptureUnsupported);
    }
    return enqueue_call(s, [dst, src, bytes] { memcpy(dst, src, bytes); });
}

cudaError_t cudaMemsetAsync(void *p, int v, size_t bytes, cudaStream_t s)
{
    if (bytes == 0)
        return cudaSuccess;
    if (!in_allocation(p, bytes))
        return fail(cudaErrorInvalidValue);
    return enqueue_call(s, [p, v, bytes] { memset(p, v, bytes); });
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags)
{
    (void)flags;
    if (current_device >= device_count())
        return fail(cudaErrorInvalidDevice);
    *s = new emu_stream{current_device, 0, 0, NULL};
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    if (!s)
        return fail(cudaErrorInvalidValue);
    delete s->graph;
    delete s;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
    if (s && s->capturing) {
        s->invalidated = 1;
        return fail(cudaErrorStreamCaptureUnsupported);
    }
    return sticky_error;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode)
{
    (void)mode;
    if (!s || s->capturing)
        return fail(cudaErrorIllegalState);
    s->capturing = 1;
    s->invalidated = 0;
    s->graph = new emu_graph;
    return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g)
{
    *g = NULL;
    if (!s || !s->capturing)
        return fail(cudaErrorIllegalState);
    s->capturing = 0;
    emu_graph *graph = s->graph;
    s->graph = NULL;
    if (s->invalidated) {
        delete graph;
        return fail(cudaErrorStreamCaptureInvalidated);
    }
    *g = graph;
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiateWithFlags(cudaGraphExec_t *exec, cudaGraph_t g,
                                          unsigned long long flags)
{
    (void)flags;
    if (!g)
        return fail(cudaErrorInvalidValue);
    *exec = new emu_graph(*g);
    return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s)
{
    if (!exec)
        return fail(cudaErrorInvalidValue);
    for (const stream_op &op : exec->ops)
        enqueue(s, op);
    return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t g)
{
    delete g;
    return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec)
{
    delete exec;
    return cudaSuccess;
}

// ---- the kernels' threads: one fiber each, a block at a time
//
// On x86-64 a fiber switch is a plain swap of the callee-saved registers and the stack pointer
// (emu_switch below); ucontext's swapcontext also saves the signal mask, a system call per
// switch, which made the emulated kernels 3x slower. Elsewhere ucontext does it.
#if defined(__x86_64__)
extern "C" void emu_switch(void **save_sp, void *next_sp);
asm(".text\n"
    ".globl emu_switch\n"
    ".hidden emu_switch\n"
    ".type emu_switch,@function\n"
    "emu_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n"
    ".size emu_switch, .-emu_switch\n");
#define EMU_ASM_SWITCH 1
#else
#define EMU_ASM_SWITCH 0
#endif

namespace {
enum fiber_state { RUNNABLE, AT_BLOCK_BARRIER, AT_WARP_EXCHANGE, DONE };
struct fiber {
#if EMU_ASM_SWITCH
    void *sp;
#else
    ucontext_t ctx;
#endif
    char *stack;
    uint3 tid;
    int state;
    unsigned mask; // a waiting exchange's lanes, its offer, its source and, once done, its result
    uint64_t offer, result;
    int src;
    void *fake_stack; // AddressSanitizer's bookkeeping of the switch
};
// Kernel threads run shallow code (no recursion, small locals; a wmma fragment is 1 KiB here)
const size_t stack_bytes = (EMU_ASAN ? 256 : 64) << 10;
// Each fiber's stack top is this many bytes lower than the last's, modulo a page: tops at the
// same offset of equally sized stacks fall in the same cache sets, and every switch missed.
const size_t stack_stagger = 320;
struct scheduler {
#if EMU_ASM_SWITCH
    void *main_sp;
#else
    ucontext_t main;
#endif
    std::vector<fiber> fibers;
    std::vector<char *> stacks; // mapped once, reused by every block
    fiber *cur;
    emu::work *work;
    int live;
    unsigned char *dynamic; // the block's dynamic shared memory (128-byte aligned, as a GPU's)
    size_t dynamic_cap;
    bool faulted; // a thread of the launch hit a kernel_fault
    const void *main_bottom;
    size_t main_size;
    bool dirty_stacks; // fibers were abandoned mid-run: their stacks' poison is stale

    ~scheduler()
    {
        for (char *st : stacks)
            munmap(st, stack_bytes);
        free(dynamic);
    }
};
thread_local scheduler sched;

void switch_to_fiber(fiber *f)
{
#if EMU_ASAN
    void *fake = NULL;
    __sanitizer_start_switch_fiber(&fake, f->stack, stack_bytes);
#endif
#if EMU_ASM_SWITCH
    emu_switch(&sched.main_sp, f->sp);
#else
    swapcontext(&sched.main, &f->ctx);
#endif
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, NULL, NULL);
#endif
}

// back to the scheduler; `last`: the fiber has finished and is never resumed
void switch_to_main(fiber *f, bool last)
{
#if EMU_ASAN
    __sanitizer_start_switch_fiber(last ? NULL : &f->fake_stack, sched.main_bottom,
                                   sched.main_size);
#endif
#if EMU_ASM_SWITCH
    emu_switch(&f->sp, sched.main_sp);
#else
    if (last)
        setcontext(&sched.main);
    swapcontext(&f->ctx, &sched.main);
#endif
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(f->fake_stack, &sched.main_bottom, &sched.main_size);
#endif
}

void fiber_main(void)
{
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(NULL, &sched.main_bottom, &sched.main_size);
#endif
    fiber *f = sched.cur;
    sched.work->run_thread();
    f->state = DONE;
    sched.live--;
    switch_to_main(f, true);
    abort(); // never resumed
}

void fiber_init(fiber *f)
{
#if EMU_ASM_SWITCH
    // the stack emu_switch pops: six callee-saved registers, then fiber_main as the return
    // address, entered with the stack aligned as after a call
    size_t index = (size_t)(f - sched.fibers.data());
    uintptr_t top = ((uintptr_t)f->stack + stack_bytes - index * stack_stagger % 4096) &
                    ~(uintptr_t)15;
    void **sp = (void **)top;
    *--sp = NULL;
    *--sp = (void *)fiber_main;
    for (int r = 0; r < 6; r++)
        *--sp = NULL;
    f->sp = sp;
#else
    getcontext(&f->ctx);
    f->ctx.uc_stack.ss_sp = f->stack;
    f->ctx.uc_stack.ss_size = stack_bytes;
    f->ctx.uc_link = &sched.main;
    makecontext(&f->ctx, fiber_main, 0);
#endif
}

// Wakes the lanes of each warp whose exchange every lane of the waiting lanes' masks has
// reached; false when one waits on a lane that has exited (it never completes). One pass over
// a warp's lanes for the union of their masks, then one over the lanes it names.
bool release_warps(int nthreads, bool *progressed, char *why, size_t why_len)
{
    for (int w0 = 0; w0 < nthreads; w0 += 32) {
        int n = nthreads - w0 < 32 ? nthreads - w0 : 32;
        fiber *lanes = &sched.fibers[w0];
        unsigned named = 0;
        for (int l = 0; l < n; l++)
            if (lanes[l].state == AT_WARP_EXCHANGE)
                named |= lanes[l].mask;
        if (!named)
            continue;
        bool ready = true;
        for (int m = 0; m < n; m++) {
            if (!(named >> m & 1u))
                continue;
            if (lanes[m].state == DONE) {
                snprintf(why, why_len, "a lane of warp %d shuffles with lane %d, which has exited",
                         w0 / 32, m);
                return false;
            }
            if (lanes[m].state != AT_WARP_EXCHANGE)
                ready = false;
        }
        if (!ready)
            continue;
        for (int l = 0; l < n; l++) {
            if (lanes[l].state != AT_WARP_EXCHANGE)
                continue;
            int s = lanes[l].src;
            lanes[l].result = s < 0 || s >= n ? lanes[l].offer : lanes[s].offer;
        }
        for (int l = 0; l < n; l++)
            if (lanes[l].state == AT_WARP_EXCHANGE)
                lanes[l].state = RUNNABLE;
        *progressed = true;
    }
    return true;
}

// Runs one block to the end; false (with the reason) when its threads can make no progress
bool run_block(const emu::config &c, int nthreads, char *why, size_t why_len)
{
    if ((int)sched.stacks.size() < nthreads) {
        for (int i = (int)sched.stacks.size(); i < nthreads; i++) {
            void *m = mmap(NULL, stack_bytes, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (m == MAP_FAILED) {
                snprintf(why, why_len, "no memory for %d thread stacks", nthreads);
                return false;
            }
            sched.stacks.push_back((char *)m);
        }
    }
#if EMU_ASAN
    if (sched.dirty_stacks) {
        for (char *s : sched.stacks)
            ASAN_UNPOISON_MEMORY_REGION(s, stack_bytes);
        sched.dirty_stacks = false;
    }
#endif
    sched.fibers.resize(nthreads);
    if (c.shared)
        memset(sched.dynamic, 0xff, c.shared); // shared memory starts undefined
    for (int i = 0; i < nthreads; i++) {
        fiber *f = &sched.fibers[i];
        f->stack = sched.stacks[i];
        f->tid = {i % c.block.x, i / c.block.x % c.block.y, i / (c.block.x * c.block.y)};
        f->state = RUNNABLE;
        fiber_init(f);
    }
    sched.live = nthreads;
    while (sched.live > 0) {
        bool progressed = false;
        for (int i = 0; i < nthreads; i++) {
            fiber *f = &sched.fibers[i];
            if (f->state != RUNNABLE)
                continue;
            sched.cur = f;
            threadIdx = f->tid;
            switch_to_fiber(f);
            progressed = true;
        }
        int at_barrier = 0;
        for (int i = 0; i < nthreads; i++)
            at_barrier += sched.fibers[i].state == AT_BLOCK_BARRIER;
        if (at_barrier && at_barrier == sched.live) {
            for (int i = 0; i < nthreads; i++)
                if (sched.fibers[i].state == AT_BLOCK_BARRIER)
                    sched.fibers[i].state = RUNNABLE;
            progressed = true;
        }
        if (!release_warps(nthreads, &progressed, why, why_len))
            break;
        if (!progressed) {
            snprintf(why, why_len, "%d of %d threads wait at __syncthreads while others wait at a "
                     "shuffle", at_barrier, sched.live);
            break;
        }
    }
    if (sched.live > 0) {
        for (int i = 0; i < nthreads; i++)
            if (sched.fibers[i].state != DONE)
                sched.fibers[i].state = DONE;
        sched.dirty_stacks = true;
        return false;
    }
    return true;
}
} // namespace

namespace emu {
int lane_id(void)
{
    const uint3 &t = sched.cur->tid;
    return (int)((t.x + t.y * blockDim.x + t.z * blockDim.x * blockDim.y) % 32);
}

void block_barrier(void)
{
    fiber *f = sched.cur;
    f->state = AT_BLOCK_BARRIER;
    switch_to_main(f, false);
}

uint64_t warp_exchange(unsigned mask, uint64_t bits, int src)
{
    fiber *f = sched.cur;
    f->state = AT_WARP_EXCHANGE;
    f->mask = mask;
    f->offer = bits;
    f->src = src;
    switch_to_main(f, false);
    return f->result;
}

void warp_barrier(unsigned mask) { (void)warp_exchange(mask, 0, -1); }

void kernel_fault(const char *what)
{
    if (!sched.faulted) // the first thread's says it; the others' would repeat it
        fprintf(stderr, "cuda_emu: thread (%u,%u,%u) of block (%u,%u,%u): %s\n", threadIdx.x,
                threadIdx.y, threadIdx.z, blockIdx.x, blockIdx.y, blockIdx.z, what);
    fiber *f = sched.cur;
    sched.faulted = true;
    f->state = DONE;
    sched.live--;
    switch_to_main(f, true);
    abort(); // never resumed
}

void *dynamic_shared(void) { return sched.dynamic; }
} // namespace emu

static void run_grid(const emu::config &c, emu::work *w)
{
    if (sched.work) { // a kernel's thread launching: device-side launches are not emulated
        fprintf(stderr, "cuda_emu: a launch from inside a kernel\n");
        abort();
    }
    int nthreads = (int)(c.block.x * c.block.y * c.block.z);
    blockDim = c.block;
    gridDim = c.grid;
    sched.work = w;
    if (sched.dynamic_cap < c.shared || !sched.dynamic) {
        free(sched.dynamic);
        sched.dynamic_cap = c.shared > 256 ? c.shared : 256;
        sched.dynamic = (unsigned char *)aligned_alloc(128, (sched.dynamic_cap + 127) & ~(size_t)127);
        if (!sched.dynamic) {
            sched.dynamic_cap = 0;
            sched.work = NULL;
            fprintf(stderr, "cuda_emu: no memory for %zu bytes of shared memory\n", c.shared);
            fault();
            return;
        }
    }
    sched.faulted = false;
    char why[200] = "";
    for (unsigned z = 0; z < c.grid.z; z++)
        for (unsigned y = 0; y < c.grid.y; y++)
            for (unsigned x = 0; x < c.grid.x; x++) {
                blockIdx = {x, y, z};
                bool finished = run_block(c, nthreads, why, sizeof why);
                if (sched.faulted) { // the fault said why
                    fault();
                    sched.work = NULL;
                    return;
                }
                if (!finished) {
                    fprintf(stderr, "cuda_emu: block (%u,%u,%u) of a grid (%u,%u,%u) x (%u,%u,%u) "
                                    "never finishes: %s\n", x, y, z, c.grid.x, c.grid.y,
                            c.grid.z, c.block.x, c.block.y, c.block.z, why);
                    fault();
                    sched.work = NULL;
                    return;
                }
            }
    sched.work = NULL;
}

// Each kernel's cudaFuncAttributeMaxDynamicSharedMemorySize (48 KiB until set), for every
// device alike
static std::mutex attr_lock;
static std::map<const void *, int> max_dynamic_shared;

cudaError_t emu::func_set_attribute(const void *kernel, cudaFuncAttribute attr, int value)
{
    if (!kernel || attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
        value > EMU_SHARED_OPTIN) {
        fprintf(stderr, "cuda_emu: cudaFuncSetAttribute(%d, %d): the attribute is not "
                        "emulated or the value is past %d\n", (int)attr, value, EMU_SHARED_OPTIN);
        return fail(cudaErrorInvalidValue);
    }
    std::lock_guard<std::mutex> g(attr_lock);
    max_dynamic_shared[kernel] = value;
    return cudaSuccess;
}

static size_t dynamic_shared_limit(const void *kernel)
{
    std::lock_guard<std::mutex> g(attr_lock);
    auto it = max_dynamic_shared.find(kernel);
    return it != max_dynamic_shared.end() && it->second > 48 * 1024 ? (size_t)it->second
                                                                     : 48 * 1024;
}

void emu::launch(const config &c, work *w, const void *kernel)
{
    std::shared_ptr<work> owned(w);
    unsigned long long threads = (unsigned long long)c.block.x * c.block.y * c.block.z;
    if (c.block.x == 0 || c.block.y == 0 || c.block.z == 0 || threads > 1024 ||
        c.block.z > 64 || c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 ||
        c.grid.x > 0x7fffffffu || c.grid.y > 65535 || c.grid.z > 65535 ||
        c.shared > dynamic_shared_limit(kernel)) {
        fprintf(stderr, "cuda_emu: invalid launch: grid (%u,%u,%u), block (%u,%u,%u), %zu bytes "
                        "of shared memory (at most %zu for this kernel)\n", c.grid.x, c.grid.y,
                c.grid.z, c.block.x, c.block.y, c.block.z, c.shared,
                dynamic_shared_limit(kernel));
        fail(cudaErrorInvalidConfiguration);
        return;
    }
    if (c.stream && c.stream->device != current_device) {
        fprintf(stderr, "cuda_emu: a launch on device %d's stream while device %d is current\n",
                c.stream->device, current_device);
        fail(cudaErrorInvalidValue);
        return;
    }
    stream_op op;
    op.kernel = owned;
    op.cfg = c;
    enqueue(c.stream, std::move(op));
}

// ---- cuBLAS
struct emu_blas {
    cudaStream_t stream;
};

cublasStatus_t cublasCreate(cublasHandle_t *h)
{
    *h = new emu_blas{NULL};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t h)
{
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s)
{
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetWorkspace(cublasHandle_t h, void *ws, size_t bytes)
{
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if (bytes && !in_allocation(ws, bytes))
        return CUBLAS_STATUS_INVALID_VALUE;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetProperty(libraryPropertyType t, int *v)
{
    *v = t == MAJOR_VERSION ? 13 : 0;
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusString(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

static float load(const void *p, cudaDataType_t t, size_t i, bool tf32)
{
    if (t == CUDA_R_16BF)
        return sherl_bf16_to_f32(((const uint16_t *)p)[i]);
    if (t == CUDA_R_16F)
        return sherl_f16_to_f32(((const uint16_t *)p)[i]);
    float v = ((const float *)p)[i];
    if (!tf32 || !isfinite(v))
        return v;
    // TF32 keeps 10 of fp32's 23 mantissa bits: round to nearest, ties to even
    uint32_t b;
    memcpy(&b, &v, 4);
    b = (b + 0xfffu + ((b >> 13) & 1u)) & ~0x1fffu;
    memcpy(&v, &b, 4);
    return v;
}

namespace {
struct gemm_args {
    cublasOperation_t ta, tb;
    int m, n, k;
    float alpha, beta;
    cudaDataType_t at, bt;
    int lda, ldb, ldc;
    bool tf32;
};
}

// dst[r cols + c] = op(X)[r, c] widened, X column-major with leading dimension ld
static void widen_operand(std::vector<float> &dst, const void *X, cudaDataType_t t,
                          cublasOperation_t op, int rows, int cols, int ld, bool tf32)
{
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            size_t at = op == CUBLAS_OP_N ? (size_t)r + (size_t)c * ld : (size_t)c + (size_t)r * ld;
            dst[(size_t)r * cols + c] = load(X, t, at, tf32);
        }
}

// sums[j m + i] = sum over p of op(A)[i, p] op(B)[p, j], each in fp32 with p ascending (the
// operands widened first, then a row of B at a time, which keeps each sum's order)
static std::vector<float> gemm_sums(const gemm_args &g, const void *A, const void *B)
{
    std::vector<float> a((size_t)g.m * g.k), b((size_t)g.k * g.n), row(g.n),
        sums((size_t)g.m * g.n);
    widen_operand(a, A, g.at, g.ta, g.m, g.k, g.lda, g.tf32);
    widen_operand(b, B, g.bt, g.tb, g.k, g.n, g.ldb, g.tf32);
    for (int i = 0; i < g.m; i++) {
        std::fill(row.begin(), row.end(), 0.0f);
        for (int p = 0; p < g.k; p++) {
            float x = a[(size_t)i * g.k + p];
            const float *bp = &b[(size_t)p * g.n];
            for (int j = 0; j < g.n; j++)
                row[j] += x * bp[j];
        }
        for (int j = 0; j < g.n; j++)
            sums[(size_t)j * g.m + i] = row[j];
    }
    return sums;
}

// column-major C[m, n] = alpha op(A) op(B) + beta C; C is not read when beta is 0
static void gemm_one(const gemm_args &g, const void *A, const void *B, float *C)
{
    std::vector<float> sums = gemm_sums(g, A, B);
    for (int j = 0; j < g.n; j++)
        for (int i = 0; i < g.m; i++) {
            float s = sums[(size_t)j * g.m + i];
            float *c = &C[(size_t)i + (size_t)j * g.ldc];
            *c = g.beta == 0.0f ? g.alpha * s : g.alpha * s + g.beta * *c;
        }
}

// cuBLAS's own argument checks, and the type combinations ops_cuda.cu may ask for
static cublasStatus_t gemm_check(cublasHandle_t h, const gemm_args &g, cudaDataType_t ct,
                                 cublasComputeType_t compute, int batch)
{
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    int rows_a = g.ta == CUBLAS_OP_N ? g.m : g.k, rows_b = g.tb == CUBLAS_OP_N ? g.k : g.n;
    if (g.m < 0 || g.n < 0 || g.k < 0 || batch < 0 || g.lda < (rows_a > 1 ? rows_a : 1) ||
        g.ldb < (rows_b > 1 ? rows_b : 1) || g.ldc < (g.m > 1 ? g.m : 1))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (g.at != g.bt || ct != CUDA_R_32F)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (g.tf32 ? g.at != CUDA_R_32F : compute != CUBLAS_COMPUTE_32F)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    return CUBLAS_STATUS_SUCCESS;
}

static gemm_args gemm_of(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                         const void *alpha, cudaDataType_t at, int lda, cudaDataType_t bt,
                         int ldb, const void *beta, int ldc, cublasComputeType_t compute)
{
    return {ta, tb, m, n, k, *(const float *)alpha, *(const float *)beta, at, bt, lda, ldb, ldc,
            compute == CUBLAS_COMPUTE_32F_FAST_TF32};
}

static size_t elem_bytes(cudaDataType_t t) { return t == CUDA_R_32F ? 4 : 2; }

// Each operand must lie inside one device allocation (cuBLAS would read or write past it)
static bool operand_ok(const void *p, cudaDataType_t t, int rows, int cols, int ld)
{
    if (rows == 0 || cols == 0)
        return true;
    size_t last = (size_t)(cols - 1) * ld + rows;
    if (!in_allocation(p, last * elem_bytes(t))) {
        fprintf(stderr, "cuda_emu: a cuBLAS operand at %p (%d x %d, leading dimension %d) leaves "
                        "its device allocation\n", p, rows, cols, ld);
        return false;
    }
    return true;
}

static bool operands_ok(const gemm_args &g, const void *A, const void *B, const void *C)
{
    int ra = g.ta == CUBLAS_OP_N ? g.m : g.k, ca = g.ta == CUBLAS_OP_N ? g.k : g.m;
    int rb = g.tb == CUBLAS_OP_N ? g.k : g.n, cb = g.tb == CUBLAS_OP_N ? g.n : g.k;
    return operand_ok(A, g.at, ra, ca, g.lda) && operand_ok(B, g.bt, rb, cb, g.ldb) &&
           operand_ok(C, CUDA_R_32F, g.m, g.n, g.ldc);
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void *alpha, const void *A, cudaDataType_t at,
                            int lda, const void *B, cudaDataType_t bt, int ldb, const void *beta,
                            void *C, cudaDataType_t ct, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t algo)
{
    (void)algo;
    gemm_args g = gemm_of(ta, tb, m, n, k, alpha, at, lda, bt, ldb, beta, ldc, compute);
    cublasStatus_t s = gemm_check(h, g, ct, compute, 1);
    if (s != CUBLAS_STATUS_SUCCESS)
        return s;
    enqueue_call(h->stream, [g, A, B, C] {
        if (operands_ok(g, A, B, C))
            gemm_one(g, A, B, (float *)C);
        else
            fault();
    });
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t ta,
                                          cublasOperation_t tb, int m, int n, int k,
                                          const void *alpha, const void *A, cudaDataType_t at,
                                          int lda, long long sa, const void *B,
                                          cudaDataType_t bt, int ldb, long long sb,
                                          const void *beta, void *C, cudaDataType_t ct, int ldc,
                                          long long sc, int batch, cublasComputeType_t compute,
                                          cublasGemmAlgo_t algo)
{
    (void)algo;
    gemm_args g = gemm_of(ta, tb, m, n, k, alpha, at, lda, bt, ldb, beta, ldc, compute);
    cublasStatus_t s = gemm_check(h, g, ct, compute, batch);
    if (s != CUBLAS_STATUS_SUCCESS)
        return s;
    enqueue_call(h->stream, [g, A, B, C, sa, sb, sc, batch] {
        for (int i = 0; i < batch; i++) {
            const char *a = (const char *)A + (size_t)i * sa * elem_bytes(g.at);
            const char *b = (const char *)B + (size_t)i * sb * elem_bytes(g.bt);
            float *c = (float *)C + (size_t)i * sc;
            if (!operands_ok(g, a, b, c)) {
                fault();
                return;
            }
            gemm_one(g, a, b, c);
        }
    });
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmBatchedEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                   int m, int n, int k, const void *alpha, const void *const A[],
                                   cudaDataType_t at, int lda, const void *const B[],
                                   cudaDataType_t bt, int ldb, const void *beta, void *const C[],
                                   cudaDataType_t ct, int ldc, int batch,
                                   cublasComputeType_t compute, cublasGemmAlgo_t algo)
{
    (void)algo;
    gemm_args g = gemm_of(ta, tb, m, n, k, alpha, at, lda, bt, ldb, beta, ldc, compute);
    cublasStatus_t s = gemm_check(h, g, ct, compute, batch);
    if (s != CUBLAS_STATUS_SUCCESS)
        return s;
    // the pointer arrays are device memory, read when the product runs (a kernel writes them)
    enqueue_call(h->stream, [g, A, B, C, batch] {
        size_t bytes = (size_t)batch * sizeof(void *);
        if (batch && (!in_allocation(A, bytes) || !in_allocation(B, bytes) ||
                      !in_allocation(C, bytes))) {
            fprintf(stderr, "cuda_emu: cublasGemmBatchedEx's pointer arrays are not device "
                            "memory\n");
            fault();
            return;
        }
        for (int i = 0; i < batch; i++) {
            if (!operands_ok(g, A[i], B[i], C[i])) {
                fault();
                return;
            }
            gemm_one(g, A[i], B[i], (float *)C[i]);
        }
    });
    return CUBLAS_STATUS_SUCCESS;
}

// ---- cublasLt
struct emu_lt {
    int unused;
};
struct emu_lt_desc {
    cublasComputeType_t compute;
    cudaDataType_t scale;
    cublasOperation_t ta, tb;
    cublasLtEpilogue_t epilogue;
    const void *bias;
    int bias_type; // -1: D's type
};
struct emu_lt_layout {
    cudaDataType_t type;
    uint64_t rows, cols;
    int64_t ld;
};
struct emu_lt_pref {
    uint64_t workspace;
    uint32_t align[4]; // A, B, C, D
    uint32_t reduction_mask;
};

cublasStatus_t cublasLtCreate(cublasLtHandle_t *h)
{
    *h = new emu_lt{0};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t h)
{
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *d, cublasComputeType_t compute,
                                        cudaDataType_t scale)
{
    *d = new emu_lt_desc{compute, scale, CUBLAS_OP_N, CUBLAS_OP_N, CUBLASLT_EPILOGUE_DEFAULT, NULL,
                         -1};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d)
{
    delete d;
    return CUBLAS_STATUS_SUCCESS;
}

template <class T> static bool take(T *dst, const void *buf, size_t size)
{
    if (size != sizeof(T))
        return false;
    memcpy(dst, buf, sizeof(T));
    return true;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d,
                                              cublasLtMatmulDescAttributes_t a, const void *buf,
                                              size_t size)
{
    bool ok = false;
    switch (a) {
    case CUBLASLT_MATMUL_DESC_TRANSA: ok = take(&d->ta, buf, size); break;
    case CUBLASLT_MATMUL_DESC_TRANSB: ok = take(&d->tb, buf, size); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE: ok = take(&d->epilogue, buf, size); break;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: ok = take(&d->bias, buf, size); break;
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: ok = take(&d->bias_type, buf, size); break;
    }
    return ok ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *l, cudaDataType_t type,
                                          uint64_t rows, uint64_t cols, int64_t ld)
{
    *l = new emu_lt_layout{type, rows, cols, ld};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l)
{
    delete l;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *p)
{
    *p = new emu_lt_pref{0, {256, 256, 256, 256}, 7};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p)
{
    delete p;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t a,
                                                    const void *buf, size_t size)
{
    bool ok = false;
    switch (a) {
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: ok = take(&p->workspace, buf, size); break;
    case CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK: ok = take(&p->reduction_mask, buf, size); break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES: ok = take(&p->align[0], buf, size); break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES: ok = take(&p->align[1], buf, size); break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES: ok = take(&p->align[2], buf, size); break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: ok = take(&p->align[3], buf, size); break;
    }
    return ok ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}

// The one kind of product offered: 16-bit A, B, C and D of one type, fp32 compute and scale,
// no epilogue or a bias of fp32 or D's type, shapes that agree
static bool lt_supported(const emu_lt_desc *d, const emu_lt_layout *a, const emu_lt_layout *b,
                         const emu_lt_layout *c, const emu_lt_layout *dl)
{
    cudaDataType_t t = dl->type;
    int bias_type = d->bias_type < 0 ? (int)t : d->bias_type;
    uint64_t m = dl->rows, n = dl->cols;
    uint64_t am = d->ta == CUBLAS_OP_N ? a->rows : a->cols, ak = d->ta == CUBLAS_OP_N ? a->cols : a->rows;
    uint64_t bk = d->tb == CUBLAS_OP_N ? b->rows : b->cols, bn = d->tb == CUBLAS_OP_N ? b->cols : b->rows;
    return (t == CUDA_R_16BF || t == CUDA_R_16F) && a->type == t && b->type == t && c->type == t &&
           d->compute == CUBLAS_COMPUTE_32F && d->scale == CUDA_R_32F &&
           (d->epilogue == CUBLASLT_EPILOGUE_DEFAULT ||
            (d->epilogue == CUBLASLT_EPILOGUE_BIAS &&
             (bias_type == CUDA_R_32F || bias_type == (int)t))) &&
           am == m && bn == n && ak == bk && c->rows == m && c->cols == n &&
           a->ld >= (int64_t)a->rows && b->ld >= (int64_t)b->rows && dl->ld >= (int64_t)m &&
           c->ld >= (int64_t)m;
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t h, cublasLtMatmulDesc_t d,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t dl,
                                              cublasLtMatmulPreference_t p, int requested,
                                              cublasLtMatmulHeuristicResult_t results[],
                                              int *returned)
{
    *returned = 0;
    if (!h || requested < 1)
        return CUBLAS_STATUS_INVALID_VALUE;
    if (!lt_supported(d, a, b, c, dl))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    memset(&results[0], 0, sizeof results[0]);
    for (int i = 0; i < 4; i++) // the alignments the algorithm was chosen for
        results[0].algo.data[i] = p->align[i];
    results[0].state = CUBLAS_STATUS_SUCCESS;
    *returned = 1;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t d, const void *alpha,
                              const void *A, cublasLtMatrixLayout_t a, const void *B,
                              cublasLtMatrixLayout_t b, const void *beta, const void *C,
                              cublasLtMatrixLayout_t c, void *D, cublasLtMatrixLayout_t dl,
                              const cublasLtMatmulAlgo_t *algo, void *workspace, size_t ws_bytes,
                              cudaStream_t stream)
{
    if (!h || !algo || !lt_supported(d, a, b, c, dl))
        return CUBLAS_STATUS_INVALID_VALUE;
    const void *ptrs[4] = {A, B, C, D};
    for (int i = 0; i < 4; i++)
        if ((uintptr_t)ptrs[i] % algo->data[i]) {
            fprintf(stderr, "cuda_emu: cublasLtMatmul operand %c at %p is less aligned than the "
                            "%u bytes its algorithm was chosen for\n", "ABCD"[i], ptrs[i],
                    (unsigned)algo->data[i]);
            return CUBLAS_STATUS_INVALID_VALUE;
        }
    if (ws_bytes && !in_allocation(workspace, ws_bytes))
        return CUBLAS_STATUS_INVALID_VALUE;
    gemm_args g = {d->ta, d->tb, (int)dl->rows, (int)dl->cols,
                   (int)(d->ta == CUBLAS_OP_N ? a->cols : a->rows), *(const float *)alpha,
                   *(const float *)beta, a->type, b->type, (int)a->ld, (int)b->ld, (int)dl->ld,
                   false};
    const emu_lt_desc desc = *d;
    const cudaDataType_t t = dl->type, bias_type = desc.bias_type < 0 ? t : (cudaDataType_t)desc.bias_type;
    const int ldc = (int)c->ld;
    enqueue_call(stream, [g, desc, A, B, C, D, t, bias_type, ldc] {
        int ra = g.ta == CUBLAS_OP_N ? g.m : g.k, ca = g.ta == CUBLAS_OP_N ? g.k : g.m;
        int rb = g.tb == CUBLAS_OP_N ? g.k : g.n, cb = g.tb == CUBLAS_OP_N ? g.n : g.k;
        bool bias = desc.epilogue == CUBLASLT_EPILOGUE_BIAS;
        if (!operand_ok(A, g.at, ra, ca, g.lda) || !operand_ok(B, g.bt, rb, cb, g.ldb) ||
            !operand_ok(D, t, g.m, g.n, g.ldc) ||
            (g.beta != 0.0f && !operand_ok(C, t, g.m, g.n, ldc)) ||
            (bias && !operand_ok(desc.bias, bias_type, g.m, 1, g.m))) {
            fault();
            return;
        }
        std::vector<float> sums = gemm_sums(g, A, B);
        for (int j = 0; j < g.n; j++)
            for (int i = 0; i < g.m; i++) {
                float v = g.alpha * sums[(size_t)j * g.m + i];
                if (g.beta != 0.0f)
                    v += g.beta * load(C, t, (size_t)i + (size_t)j * ldc, false);
                if (bias)
                    v += load(desc.bias, bias_type, (size_t)i, false);
                uint16_t out = t == CUDA_R_16F ? sherl_f32_to_f16(v) : sherl_f32_to_bf16(v);
                ((uint16_t *)D)[(size_t)i + (size_t)j * g.ldc] = out;
            }
    });
    return CUBLAS_STATUS_SUCCESS;
}
