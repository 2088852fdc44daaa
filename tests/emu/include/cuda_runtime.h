// cuda_emu: the part of the CUDA runtime and device language that kernels/cuda/ops_cuda.cu uses,
// on the CPU, so that the CUDA backend's own kernels run (and are checked against the CPU
// backend by tests/gpu/ops.c) on machines without a GPU, CI's included. Not a GPU model: it
// gives each kernel thread its own fiber and runs a block's threads one after another, switching
// at __syncthreads and at warp shuffles, so any schedule-independent kernel computes what it
// computes on a GPU, bit for bit up to the math library (expf, erff: glibc's, not CUDA's). A
// block barrier or shuffle that could never complete (a divergent __syncthreads, a shuffle with
// an exited lane), an invalid launch configuration, or a copy past an allocation is an error, as
// on a GPU (or worse there: a hang). Device memory is host memory, so AddressSanitizer sees the
// kernels' out-of-bounds accesses.
//
// The file ops_cuda.cu is compiled as C++ after tests/emu/translate.cmake rewrites its launch
// syntax (k<<<g, b, s, st>>>(args) -> k | emu::config(g, b, s, st) | emu::args(args)) and its
// dynamic shared arrays; this header supplies everything else.
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <tuple>
#include <type_traits>
#include <utility>

// ---- device language
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...) // a hint to the register allocator; nothing to check here
#define __restrict__ __restrict
// One copy per block: blocks run one at a time on the launching thread, whose fibers share it.
#define __shared__ static thread_local

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
static inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w)
{
    return {x, y, z, w};
}
struct alignas(8) ushort4 {
    unsigned short x, y, z, w;
};
static inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
static inline ushort4 make_ushort4(unsigned short x, unsigned short y, unsigned short z,
                                   unsigned short w)
{
    return {x, y, z, w};
}

// the executing thread's coordinates (set by the scheduler before it resumes a fiber). Inline
// variables with constant initialisers: GCC 12's UBSan null check on an extern thread_local's
// address reads flags that binutils 2.40's TLS relaxation no longer sets, and reports a null
// access that is not there.
inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;

// IEEE round-to-nearest arithmetic: what the host's float operations are (built with
// -ffp-contract=off, so nothing is fused)
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }

// Every block runs on one host thread at a time, so these need no atomicity against the
// kernel's other threads; the scheduler never switches fibers inside them.
static inline float atomicAdd(float *p, float v)
{
    float old = *p;
    *p = old + v;
    return old;
}
static inline int atomicAdd(int *p, int v)
{
    int old = *p;
    *p = old + v;
    return old;
}
static inline unsigned atomicAdd(unsigned *p, unsigned v)
{
    unsigned old = *p;
    *p = old + v;
    return old;
}

namespace emu {
// The warp exchange behind every shuffle: the calling lane offers `bits` and reads those of
// lane `src` of its warp once every lane of `mask` has arrived (src < 0: its own).
uint64_t warp_exchange(unsigned mask, uint64_t bits, int src);
void block_barrier(void);
void warp_barrier(unsigned mask);
// a fault the kernel cannot go on from (a misaligned matrix load): the launch fails
[[noreturn]] void kernel_fault(const char *what);
void *dynamic_shared(void);
int lane_id(void);

template <class T> static inline uint64_t to_bits(T v)
{
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle type");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof v);
    return b;
}
template <class T> static inline T from_bits(uint64_t b)
{
    T v;
    memcpy(&v, &b, sizeof v);
    return v;
}
// the source lane of a shuffle within segments of `width` lanes
static inline int segment_base(int lane, int width) { return lane - lane % width; }
} // namespace emu

static inline void __syncthreads(void) { emu::block_barrier(); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::warp_barrier(mask); }

template <class T> static inline T __shfl_sync(unsigned mask, T v, int src, int width = 32)
{
    int lane = emu::lane_id();
    int from = emu::segment_base(lane, width) + ((src % width) + width) % width;
    return emu::from_bits<T>(emu::warp_exchange(mask, emu::to_bits(v), from));
}
template <class T> static inline T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32)
{
    int lane = emu::lane_id(), in = lane % width;
    int from = in + (int)d < width ? lane + (int)d : -1;
    return emu::from_bits<T>(emu::warp_exchange(mask, emu::to_bits(v), from));
}
template <class T> static inline T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32)
{
    int lane = emu::lane_id(), in = lane % width;
    int from = in - (int)d >= 0 ? lane - (int)d : -1;
    return emu::from_bits<T>(emu::warp_exchange(mask, emu::to_bits(v), from));
}
// the partner lane ^ m unless it lies past the end of the caller's segment (a later segment
// may read an earlier one's)
template <class T> static inline T __shfl_xor_sync(unsigned mask, T v, int m, int width = 32)
{
    int lane = emu::lane_id(), to = lane ^ (m & 31);
    int from = to < emu::segment_base(lane, width) + width ? to : -1;
    return emu::from_bits<T>(emu::warp_exchange(mask, emu::to_bits(v), from));
}

// ---- runtime API
typedef enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevice = 101,
    cudaErrorStreamCaptureUnsupported = 900,
    cudaErrorStreamCaptureInvalidated = 901,
    cudaErrorIllegalState = 401,
    cudaErrorLaunchFailure = 719,
} cudaError_t;

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};
enum cudaStreamCaptureMode {
    cudaStreamCaptureModeGlobal = 0,
    cudaStreamCaptureModeThreadLocal = 1,
    cudaStreamCaptureModeRelaxed = 2,
};
enum cudaDeviceAttr {
    cudaDevAttrComputeCapabilityMajor = 75,
    cudaDevAttrComputeCapabilityMinor = 76,
    cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
    cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
enum cudaFuncAttribute {
    cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
};
#define cudaStreamNonBlocking 0x01

typedef struct emu_stream *cudaStream_t;
typedef struct emu_graph *cudaGraph_t;
typedef struct emu_graph *cudaGraphExec_t;

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    int major, minor;
    int multiProcessorCount;
};

cudaError_t cudaGetLastError(void);
const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDevice(int *d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d);
cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int d);
cudaError_t cudaRuntimeGetVersion(int *v);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
cudaError_t cudaMalloc(void **p, size_t bytes);
cudaError_t cudaFree(void *p);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t s = 0);
cudaError_t cudaMemsetAsync(void *p, int v, size_t bytes, cudaStream_t s = 0);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g);
cudaError_t cudaGraphInstantiateWithFlags(cudaGraphExec_t *exec, cudaGraph_t g,
                                          unsigned long long flags);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s);
cudaError_t cudaGraphDestroy(cudaGraph_t g);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);

// ---- launches
namespace emu {
struct config {
    dim3 grid, block;
    size_t shared;
    cudaStream_t stream;
    config(dim3 g, dim3 b, size_t s = 0, cudaStream_t st = 0)
        : grid(g), block(b), shared(s), stream(st)
    {
    }
};

// A launch's work: run(ctx) runs the kernel body once for the thread the scheduler resumed.
struct work {
    virtual ~work() {}
    virtual void run_thread(void) = 0;
};
// Runs `w` over the grid now, or records it when `stream` is capturing (taking ownership).
// kernel: the launched function, whose dynamic shared memory may exceed 48 KiB only as far as
// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, ...) allowed.
void launch(const config &c, work *w, const void *kernel);
cudaError_t func_set_attribute(const void *kernel, cudaFuncAttribute attr, int value);

template <class... P> struct bound {
    void (*kernel)(P...);
    config cfg;
};
template <class... A> struct arg_pack {
    std::tuple<A...> values;
};
template <class... P> struct kernel_work : work {
    void (*kernel)(P...);
    std::tuple<typename std::decay<P>::type...> params;
    template <class Tuple>
    kernel_work(void (*k)(P...), Tuple &&t) : kernel(k), params(std::forward<Tuple>(t))
    {
    }
    void run_thread(void) override { std::apply(kernel, params); }
};

template <class... A> static inline arg_pack<typename std::decay<A>::type...> args(A &&...a)
{
    return {std::tuple<typename std::decay<A>::type...>(std::forward<A>(a)...)};
}
template <class... P> static inline bound<P...> operator|(void (*k)(P...), const config &c)
{
    return {k, c};
}
template <class... P, class... A>
static inline void operator|(const bound<P...> &b, const arg_pack<A...> &a)
{
    static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong argument count");
    // the parameters as a real launch converts them: each argument to its parameter's type
    auto params = std::apply(
        [](const A &...v) {
            return std::tuple<typename std::decay<P>::type...>(
                static_cast<typename std::decay<P>::type>(v)...);
        },
        a.values);
    launch(b.cfg, new kernel_work<P...>(b.kernel, std::move(params)),
           reinterpret_cast<const void *>(b.kernel));
}
} // namespace emu

template <class T> static inline cudaError_t cudaFuncSetAttribute(T *entry, cudaFuncAttribute attr,
                                                                  int value)
{
    return emu::func_set_attribute(reinterpret_cast<const void *>(entry), attr, value);
}
