// CUDA backend: the op table of kernels.h on NVIDIA GPUs, one table per device, with cuBLAS for
// every matrix product and plain CUDA C kernels for the rest. Semantics are the CPU backend's
// (kernels/cpu/ops_cpu.c), op for op; tests/gpu/ops.c checks each against it.
//
// Execution model. Every host thread that calls the backend gets its own context: a
// non-blocking CUDA stream, a cuBLAS handle bound to it, the cuBLAS workspace and the ops'
// scratch. The daemon runs each job on its own thread, so each job has its own stream and
// jobs on one device overlap; all of a thread's work is ordered on its stream. Copies to the
// host, sumsq and synchronize wait for the stream; everything else is asynchronous.
//
// Devices. Each device has its own table (sherl_backend_cuda_device); its entries are the same
// functions, each wrapped to make its device the calling thread's current one first
// (on_device below). So a thread may use several devices' tables in any order, and the
// contexts are per thread and per device: the caller never calls cudaSetDevice.
//
// Failures. Ops return nothing, so every CUDA and cuBLAS result is checked and the first
// failure is kept in the thread's context with its call, file and line; take_error hands it
// to the engine, which turns it into the job's status. Nothing here exits or aborts.
//
// Precision. fp32 products run with CUBLAS_COMPUTE_32F (no TF32: the CPU parity tests hold at
// 1e-5) unless SHERL_CUDA_TF32=1; bf16 products take bf16 operands and accumulate in fp32.
// Reductions that the CPU backend does in double (LayerNorm statistics, norms, the MTSA dots,
// sumsq, the softmax backward dot) are done in double here too (and the softmax sum as well),
// in a fixed order, so results do not depend on timing. The one exception is
// embedding_backward, whose scatter-add uses atomics.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "kernels.h"
}

// ------------------------------------------------------------------------------------------
// per-thread context and error record

// cuBLAS asks for a 32 MiB workspace on Hopper; we give it exactly that, from our own
// allocation, so the planner can count it.
#define CUBLAS_WORKSPACE_BYTES ((size_t)32 << 20)
// The same chunking as the CPU's deterministic reductions.
#define RED_CHUNK 8192
// Tokens per block of the MTSA guidance's backward. Each token's block work is serial (the
// warps' dots, one thread's S x S pass, then the features), so a block of several tokens runs
// them one after another: measured on an H200 at BERT-base 64 x 128 (K = 12, d = 384), 32
// tokens a block made the MTSA backward 15 ms of a 33 ms step. One token a block, as the
// forward, at the price of a (d + 1)-double partial per token.
#define MTSA_CHUNK 1
#define MTSA_EPS 1e-8
// Column sums' partials (groups x chunks x C doubles, twice for LayerNorm); chunks shrink for
// very wide rows to fit, and groups whose partials still do not fit are summed without them.
#define COL_SCRATCH_BYTES ((size_t)4 << 20)

struct cuda_ctx {
    int dev;               // the device its stream, handle and memory are on (set when ready)
    int ready;             // stream created
    int blas_ready;        // cuBLAS handle and workspace created (on first product or prepare)
    int tf32;              // allow_tf32: this thread's fp32 products may use TF32
    int failed;            // an error has been recorded since the last take_error
    char err[512];
    cudaStream_t stream;
    cublasHandle_t blas;
    cublasLtHandle_t lt;   // cublasLt, for products with an epilogue (NULL: none to be had)
    void *workspace;       // cuBLAS workspace (cublasLt's too: both run on the stream in order)
    void *scratch;         // the ops' own scratch (attention dP, reduction partials)
    size_t scratch_bytes;
    unsigned long long gen; // changes of scratch and cuBLAS workspace (graphs hold their pointers)
    size_t strip_bytes;     // dynamic shared memory attention_strip_kernel may have (set when ready)
    size_t sm_shared;       // an SM's shared memory (set when ready; 0: unknown)

    ~cuda_ctx()
    {
        // Thread exit: give the resources back. Errors here have nowhere to go.
        if (ready || workspace || scratch)
            cudaSetDevice(dev);
        if (ready)
            cudaStreamSynchronize(stream);
        if (blas_ready)
            cublasDestroy(blas);
        if (lt)
            cublasLtDestroy(lt);
        if (ready)
            cudaStreamDestroy(stream);
        if (workspace)
            cudaFree(workspace);
        if (scratch)
            cudaFree(scratch);
        cudaGetLastError();
    }
};

// This thread's context on each device; the device of the call in progress (set by the table's
// wrapper, on_device); the device this thread last made current (-1: none, or that failed).
static thread_local cuda_ctx tls_ctx[SHERL_CUDA_MAX_DEVICES];
static thread_local int tls_dev;
static thread_local int tls_bound = -1;
// What ops get when their device could not be made current: never ready, so they do nothing
// (the reason is in the device's own context, for take_error).
static thread_local cuda_ctx tls_unbound;

static cuda_ctx *cur(void) { return &tls_ctx[tls_dev]; }

static void record(cuda_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void record(cuda_ctx *c, const char *fmt, ...)
{
    if (c->failed)
        return; // the first failure is the cause; later ones are its consequences
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    c->failed = 1;
}

static int check_cuda(cuda_ctx *c, cudaError_t e, const char *call, int line)
{
    if (e == cudaSuccess)
        return 0;
    record(c, "cuda: %s failed: %s (%s, ops_cuda.cu:%d)", call, cudaGetErrorString(e),
           cudaGetErrorName(e), line);
    // A failed call also leaves the runtime's last error set: clear it, or the next launch
    // check would report this failure again as its own (sticky errors stay sticky anyway).
    (void)cudaGetLastError();
    return -1;
}

static int check_blas(cuda_ctx *c, cublasStatus_t s, const char *call, int line)
{
    if (s == CUBLAS_STATUS_SUCCESS)
        return 0;
    record(c, "cublas: %s failed: %s (ops_cuda.cu:%d)", call, cublasGetStatusString(s), line);
    return -1;
}

#define CK(c, call) check_cuda((c), (call), #call, __LINE__)
#define CKB(c, call) check_blas((c), (call), #call, __LINE__)
// After a kernel launch: a bad configuration shows at once; faults inside show later.
#define LAUNCHED(c, name) check_cuda((c), cudaGetLastError(), "launch of " name, __LINE__)

// The calling thread's context: its stream, created on first use. On failure it stays unready
// with the reason recorded, and every op on this thread does nothing until take_error reports
// it.
static void strip_opt_in(cuda_ctx *c);

static cuda_ctx *ctx(void)
{
    cuda_ctx *c = cur();
    if (tls_bound != tls_dev)
        return &tls_unbound;
    if (c->ready)
        return c;
    if (CK(c, cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)))
        return c;
    c->dev = tls_dev;
    c->ready = 1;
    strip_opt_in(c);
    return c;
}

// Every entry of device d's table runs this first: d becomes the thread's current device (a
// cached no-op when it already is). A failure is kept in d's context; its ops then do nothing.
static void bind_device(int d)
{
    tls_dev = d;
    if (tls_bound == d)
        return;
    cudaError_t e = cudaSetDevice(d);
    if (e != cudaSuccess) {
        tls_bound = -1;
        (void)cudaGetLastError();
        record(&tls_ctx[d], "cuda: cudaSetDevice(%d) failed: %s (%s), so nothing ran on cuda:%d", d,
               cudaGetErrorString(e), cudaGetErrorName(e), d);
        return;
    }
    tls_bound = d;
}

// on_device<D, decltype(&f), &f>::call: f with device D made current first (see "Devices");
// ::select: f on D's context without touching the runtime: take_error and allow_tf32, which
// only read or set the record (so that take_error on a device that cannot be made current
// reports the failure once rather than making it again), and the entries that ask nothing of
// the device (describe, scratch_bytes, ...: the planner, on any thread, makes no CUDA context).
template <int D, typename Fn, Fn F> struct on_device;
template <int D, typename R, typename... A, R (*F)(A...)> struct on_device<D, R (*)(A...), F> {
    static R call(A... a)
    {
        bind_device(D);
        return F(a...);
    }
    static R select(A... a)
    {
        tls_dev = D;
        return F(a...);
    }
};

// The thread's cuBLAS handle on its stream, with our own workspace, made at prepare or the
// first product: threads that only allocate and copy (RPC handlers) never pay for one.
static int blas_ready(cuda_ctx *c)
{
    if (c->blas_ready)
        return 1;
    if (!c->ready || CKB(c, cublasCreate(&c->blas)))
        return 0;
    if (CKB(c, cublasSetStream(c->blas, c->stream)) ||
        CK(c, cudaMalloc(&c->workspace, CUBLAS_WORKSPACE_BYTES)) ||
        CKB(c, cublasSetWorkspace(c->blas, c->workspace, CUBLAS_WORKSPACE_BYTES))) {
        cublasDestroy(c->blas);
        if (c->workspace)
            cudaFree(c->workspace);
        c->workspace = NULL;
        return 0;
    }
    // without cublasLt the products it would fuse run unfused (lt_linear_half16)
    if (cublasLtCreate(&c->lt) != CUBLAS_STATUS_SUCCESS)
        c->lt = NULL;
    c->blas_ready = 1;
    c->gen++;
    return 1;
}

// The thread's scratch, grown to at least `bytes` (prepare sizes it ahead of a step, so a
// step never gets here with more than it has). NULL, with the error recorded, on failure.
static void *scratch(cuda_ctx *c, size_t bytes)
{
    if (bytes <= c->scratch_bytes)
        return c->scratch;
    // Work queued on the stream may still read the old block.
    if (CK(c, cudaStreamSynchronize(c->stream)))
        return NULL;
    if (c->scratch)
        cudaFree(c->scratch);
    c->scratch = NULL;
    c->scratch_bytes = 0;
    c->gen++;
    bytes = (bytes + 255) & ~(size_t)255;
    if (CK(c, cudaMalloc(&c->scratch, bytes)))
        return NULL;
    c->scratch_bytes = bytes;
    return c->scratch;
}

// Launch geometry for grid-stride loops over n elements.
static unsigned grid_for(size_t n, unsigned block)
{
    size_t g = (n + block - 1) / block;
    if (g > 65535u * 8u)
        g = 65535u * 8u;
    return g ? (unsigned)g : 1u;
}

#define GRID_STRIDE(i, n)                                                                      \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                    \
         i += (size_t)gridDim.x * blockDim.x)

// Launches an element-wise kernel over n elements on the thread's stream.
#define ELEMENTWISE(kernel, n, ...)                                                            \
    do {                                                                                       \
        cuda_ctx *c_ = ctx();                                                                  \
        if (!c_->ready || (n) == 0)                                                            \
            return;                                                                            \
        kernel<<<grid_for((n), 256), 256, 0, c_->stream>>>(__VA_ARGS__);                       \
        LAUNCHED(c_, #kernel);                                                                 \
    } while (0)

__device__ __forceinline__ double warp_sum(double v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_down_sync(0xffffffffu, v, o);
    return __shfl_sync(0xffffffffu, v, 0);
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
    return __shfl_sync(0xffffffffu, v, 0);
}

// ------------------------------------------------------------------------------------------
// memory and execution

static void *cuda_alloc(size_t bytes)
{
    cuda_ctx *c = ctx();
    if (!c->ready)
        return NULL;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 256);
    if (e == cudaErrorMemoryAllocation) {
        cudaGetLastError(); // out of memory is the caller's to report, with its sizes
        return NULL;
    }
    if (CK(c, e)) // anything else (a lost device, an earlier fault) is the real cause
        return NULL;
    if (CK(c, cudaMemsetAsync(p, 0, bytes, c->stream)) ||
        CK(c, cudaStreamSynchronize(c->stream))) {
        cudaFree(p);
        return NULL;
    }
    return p;
}

static void cuda_free(void *p)
{
    if (!p)
        return;
    cuda_ctx *c = ctx();
    // a device that cannot be made current: its memory goes with it (freeing it from another
    // device's context is not ours to try); the reason is in its record
    if (c == &tls_unbound)
        return;
    CK(c, cudaFree(p));
}

static void cuda_copy_to_device(void *dst, const void *src, size_t bytes)
{
    cuda_ctx *c = ctx();
    if (!c->ready || !bytes)
        return;
    // Synchronous for the caller: the host buffer may be reused as soon as we return.
    CK(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream));
    CK(c, cudaStreamSynchronize(c->stream));
}

static void cuda_copy_to_host(void *dst, const void *src, size_t bytes)
{
    cuda_ctx *c = ctx();
    if (!c->ready || !bytes)
        return;
    if (CK(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream)))
        return;
    CK(c, cudaStreamSynchronize(c->stream));
}

static void cuda_copy_device(void *dst, const void *src, size_t bytes)
{
    cuda_ctx *c = ctx();
    if (!c->ready || !bytes)
        return;
    CK(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream));
}

static void cuda_zero(void *p, size_t bytes)
{
    cuda_ctx *c = ctx();
    if (!c->ready || !bytes)
        return;
    CK(c, cudaMemsetAsync(p, 0, bytes, c->stream));
}

static void cuda_synchronize(void)
{
    cuda_ctx *c = ctx();
    if (c->ready)
        CK(c, cudaStreamSynchronize(c->stream));
}

static void cuda_set_threads(int n) { (void)n; }
static int cuda_get_threads(void) { return 1; }

static void cuda_describe(char *buf, size_t len)
{
    int dev = tls_dev, rt = 0, blas_major = 0, blas_minor = 0;
    cudaDeviceProp p;
    cudaRuntimeGetVersion(&rt);
    cublasGetProperty(MAJOR_VERSION, &blas_major);
    cublasGetProperty(MINOR_VERSION, &blas_minor);
    if (cudaGetDeviceProperties(&p, dev) != cudaSuccess) {
        cudaGetLastError();
        snprintf(buf, len, "cuda: device %d (properties unavailable)", dev);
        return;
    }
    const char *tf32 = getenv("SHERL_CUDA_TF32");
    snprintf(buf, len,
             "cuda:%d: %s (sm_%d%d, %d SMs, %.1f GiB), CUDA runtime %d.%d, cuBLAS %d.%d, fp32 %s",
             dev, p.name, p.major, p.minor, p.multiProcessorCount,
             (double)p.totalGlobalMem / (1024.0 * 1024.0 * 1024.0), rt / 1000, (rt % 1000) / 10,
             blas_major, blas_minor, tf32 && !strcmp(tf32, "1") ? "with TF32" : "without TF32");
}

static const char *cuda_performance_advice(void) { return NULL; }

static int cuda_mem_info(size_t *free_bytes, size_t *total_bytes)
{
    size_t f = 0, t = 0;
    if (tls_bound != tls_dev || cudaMemGetInfo(&f, &t) != cudaSuccess) {
        cudaGetLastError();
        return -1;
    }
    if (free_bytes)
        *free_bytes = f;
    if (total_bytes)
        *total_bytes = t;
    return 0;
}

static size_t round256(size_t b) { return (b + 255) & ~(size_t)255; }

// Scratch each op takes from the thread's block (they never need it at the same time).
// Attention's pointer arrays: `arrays` arrays of B*NH (sequence, head) block pointers (the
// forward's 5, the backward's 9 per group of heads).
#define ATTN_FWD_ARRAYS 5
#define ATTN_BWD_ARRAYS 9
static size_t attention_ptrs_bytes(int B, int NH, int arrays)
{
    return round256((size_t)arrays * sizeof(void *) * (size_t)B * NH);
}
// The backward for groups of NH heads: dP[B,NH,T,T], then its pointer arrays, 256-aligned.
static size_t attention_backward_bytes(int B, int T, int NH)
{
    return round256(sizeof(float) * (size_t)B * NH * T * T) +
           attention_ptrs_bytes(B, NH, ATTN_BWD_ARRAYS);
}
// At a step's shape (B the job's whole batch): the backward's dP of all heads at the sequences
// the engine calls attention on at a time (engine/bert.c attn_layout_seqs: about half a hidden
// state's worth of probabilities, at least one sequence, at most B), at least one head's over B,
// with the pointer arrays of every head; and the forward's pointers.
static size_t attention_scratch(int B, int T, int NH, int HS)
{
    size_t seq = (size_t)NH * T * T, half = (size_t)B * T * NH * HS / 2;
    size_t chunk = half > seq ? half : seq, all = (size_t)B * seq, head = (size_t)B * T * T;
    if (chunk > all)
        chunk = all;
    if (chunk < head)
        chunk = head;
    size_t bwd = round256(sizeof(float) * chunk) + attention_ptrs_bytes(B, NH, ATTN_BWD_ARRAYS),
           fwd = attention_ptrs_bytes(B, NH, ATTN_FWD_ARRAYS);
    return bwd > fwd ? bwd : fwd;
}
static size_t reduce_scratch(size_t n)
{
    return round256(sizeof(double) * ((n + RED_CHUNK - 1) / RED_CHUNK + 1));
}
// the guidance backward's partial parameter gradients: one row of d + 1 doubles per chunk of
// tokens, then one per MTSA_SUM_ROWS of those (mtsa_part_sum_kernel)
#define MTSA_SUM_ROWS 64
static size_t mtsa_part_rows(int N) { return (size_t)((N + MTSA_CHUNK - 1) / MTSA_CHUNK); }
static size_t mtsa_sum_rows(int N)
{
    return (mtsa_part_rows(N) + MTSA_SUM_ROWS - 1) / MTSA_SUM_ROWS;
}
static size_t mtsa_scratch(int N, int d)
{
    return round256(sizeof(double) * mtsa_part_rows(N) * (d + 1)) +
           round256(sizeof(double) * mtsa_sum_rows(N) * (d + 1));
}

static size_t op_scratch_bytes(const sherl_scratch_shape *q)
{
    // column sums, grouped or not: at most COL_SCRATCH_BYTES (partials that would need more
    // are not kept: the sum then runs in one stage)
    size_t most = COL_SCRATCH_BYTES, b0 = reduce_scratch(q->max_reduce > 0 ? q->max_reduce : 1);
    if (b0 > most)
        most = b0;
    size_t b = attention_scratch(q->B, q->T, q->NH, q->HS);
    if (b > most)
        most = b;
    if (q->K >= 2 && (b = mtsa_scratch(q->N, q->d)) > most)
        most = b;
    // gate_add_backward reduces over a tap's worth of elements
    if ((b = reduce_scratch((size_t)q->N * (q->NH * q->HS > q->d ? q->NH * q->HS : q->d))) > most)
        most = b;
    return most;
}

static size_t cuda_scratch_bytes(const sherl_scratch_shape *q)
{
    return CUBLAS_WORKSPACE_BYTES + op_scratch_bytes(q);
}

// cuBLAS's workspace is the thread's, in cuda_scratch_bytes: no library memory beyond it
static size_t cuda_library_bytes(int threads)
{
    (void)threads;
    return 0;
}

static int cuda_prepare(const sherl_scratch_shape *q)
{
    cuda_ctx *c = ctx();
    if (!q) { /* the job is over: its scratch and cuBLAS workspace go back to the device */
        if (!c->ready)
            return 0;
        CK(c, cudaStreamSynchronize(c->stream));
        if (c->scratch)
            cudaFree(c->scratch);
        c->scratch = NULL;
        c->scratch_bytes = 0;
        c->gen++;
        if (c->blas_ready) {
            cublasDestroy(c->blas);
            if (c->lt)
                cublasLtDestroy(c->lt);
            c->lt = NULL;
            cudaFree(c->workspace);
            c->workspace = NULL;
            c->blas_ready = 0;
        }
        return 0;
    }
    if (!c->ready || !blas_ready(c))
        return -1;
    return scratch(c, op_scratch_bytes(q)) ? 0 : -1;
}

static int cuda_take_error(char *msg, size_t len)
{
    cuda_ctx *c = cur();
    int failed = c->failed;
    if (msg && len)
        snprintf(msg, len, "%s", failed ? c->err : "");
    c->failed = 0;
    c->err[0] = 0;
    return failed ? -1 : 0;
}

// ------------------------------------------------------------------------------------------
// matrix products
//
// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: cuBLAS gets the operands
// swapped, with the same transposition flags and leading dimensions.

__global__ void scale_matrix_kernel(float *C, int M, int N, int ldc, long long stride, int batch,
                                    float beta)
{
    GRID_STRIDE(i, (size_t)M * N * batch)
    {
        size_t b = i / ((size_t)M * N), rc = i % ((size_t)M * N), r = rc / N, col = rc % N;
        float *p = C + b * stride + r * (size_t)ldc + col;
        *p = beta == 0.0f ? 0.0f : beta * *p;
    }
}

static int use_tf32; // SHERL_CUDA_TF32=1, read once when the backend is first asked for

static cublasComputeType_t fp32_compute(const cuda_ctx *c)
{
    return use_tf32 || c->tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
}

// ------------------------------------------------------------------------------------------
// graphs: a pass recorded by stream capture and replayed with one launch

// A graph's nodes hold the pointers of the thread's scratch and cuBLAS workspace at capture:
// it may only run on that thread, with those still in place (c->gen counts their changes).
struct cuda_graph {
    cudaGraphExec_t exec;
    const cuda_ctx *owner;
    unsigned long long gen;
};

static int cuda_capture_begin(void)
{
    cuda_ctx *c = ctx();
    // cuBLAS must exist before the capture (creating it is no stream work), and a failure
    // already recorded stays the caller's to report: refuse without touching it.
    if (!c->ready || c->failed || !blas_ready(c))
        return -1;
    return CK(c, cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal)) ? -1 : 0;
}

static void *cuda_capture_end(void)
{
    cuda_ctx *c = ctx();
    if (!c->ready)
        return NULL;
    cudaGraph_t g = NULL;
    // a call the capture refused invalidates it: the error comes back here
    if (CK(c, cudaStreamEndCapture(c->stream, &g)) || !g || c->failed) {
        if (g)
            cudaGraphDestroy(g);
        if (!c->failed)
            record(c, "cuda: the capture recorded no graph (ops_cuda.cu:%d)", __LINE__);
        return NULL;
    }
    cudaGraphExec_t exec = NULL;
    cudaError_t e = cudaGraphInstantiateWithFlags(&exec, g, 0);
    cudaGraphDestroy(g);
    if (CK(c, e))
        return NULL;
    cuda_graph *cg = (cuda_graph *)malloc(sizeof *cg);
    if (!cg) {
        cudaGraphExecDestroy(exec);
        record(c, "cuda: out of host memory for a graph (ops_cuda.cu:%d)", __LINE__);
        return NULL;
    }
    cg->exec = exec;
    cg->owner = c;
    cg->gen = c->gen;
    return cg;
}

static void cuda_graph_launch(void *graph)
{
    cuda_ctx *c = ctx();
    cuda_graph *g = (cuda_graph *)graph;
    if (!c->ready || !g)
        return;
    if (g->owner != c || g->gen != c->gen) {
        record(c, "cuda: a graph replayed on %s (ops_cuda.cu:%d)",
               g->owner != c ? "another thread or device than it was recorded on"
                             : "a thread whose scratch or cuBLAS workspace has moved since",
               __LINE__);
        return;
    }
    CK(c, cudaGraphLaunch(g->exec, c->stream));
}

static void cuda_graph_free(void *graph)
{
    cuda_graph *g = (cuda_graph *)graph;
    if (!g)
        return;
    cudaGraphExecDestroy(g->exec);
    free(g);
}

static void cuda_allow_tf32(int on) { cur()->tf32 = on != 0; }

static void gemm_any(int trans_a, int trans_b, int M, int N, int K, float alpha, const void *A,
                     int lda, long long stride_a, const void *B, int ldb, long long stride_b,
                     cudaDataType_t type, float beta, float *C, int ldc, long long stride_c,
                     int batch)
{
    cuda_ctx *c = ctx();
    if (!c->ready || M <= 0 || N <= 0 || batch <= 0)
        return;
    if (K <= 0) { // no products: C = beta C, as BLAS defines it
        scale_matrix_kernel<<<grid_for((size_t)M * N * batch, 256), 256, 0, c->stream>>>(
            C, M, N, ldc, stride_c, batch, beta);
        LAUNCHED(c, "scale_matrix_kernel");
        return;
    }
    if (!blas_ready(c))
        return;
    cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasComputeType_t compute = type == CUDA_R_32F ? fp32_compute(c) : CUBLAS_COMPUTE_32F;
    if (batch == 1)
        CKB(c, cublasGemmEx(c->blas, op_b, op_a, N, M, K, &alpha, B, type, ldb, A, type, lda,
                            &beta, C, CUDA_R_32F, ldc, compute, CUBLAS_GEMM_DEFAULT));
    else
        CKB(c, cublasGemmStridedBatchedEx(c->blas, op_b, op_a, N, M, K, &alpha, B, type, ldb,
                                          stride_b, A, type, lda, stride_a, &beta, C, CUDA_R_32F,
                                          ldc, stride_c, batch, compute, CUBLAS_GEMM_DEFAULT));
}

static void cuda_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                      int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    gemm_any(trans_a, trans_b, M, N, K, alpha, A, lda, 0, B, ldb, 0, CUDA_R_32F, beta, C, ldc, 0,
             1);
}

static void cuda_gemm_strided_batched(int trans_a, int trans_b, int M, int N, int K, float alpha,
                                      const float *A, int lda, long long stride_a,
                                      const float *B, int ldb, long long stride_b, float beta,
                                      float *C, int ldc, long long stride_c, int batch)
{
    gemm_any(trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, CUDA_R_32F,
             beta, C, ldc, stride_c, batch);
}

static void cuda_gemm_bf16_strided_batched(int trans_a, int trans_b, int M, int N, int K,
                                           float alpha, const uint16_t *A, int lda,
                                           long long stride_a, const uint16_t *B, int ldb,
                                           long long stride_b, float beta, float *C, int ldc,
                                           long long stride_c, int batch)
{
    gemm_any(trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, CUDA_R_16BF,
             beta, C, ldc, stride_c, batch);
}

static void cuda_gemm_f16_strided_batched(int trans_a, int trans_b, int M, int N, int K,
                                          float alpha, const uint16_t *A, int lda,
                                          long long stride_a, const uint16_t *B, int ldb,
                                          long long stride_b, float beta, float *C, int ldc,
                                          long long stride_c, int batch)
{
    gemm_any(trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, CUDA_R_16F,
             beta, C, ldc, stride_c, batch);
}

static void cuda_gemm_bf16(int trans_a, int trans_b, int M, int N, int K, float alpha,
                           const uint16_t *A, int lda, const uint16_t *B, int ldb, float beta,
                           float *C, int ldc)
{
    gemm_any(trans_a, trans_b, M, N, K, alpha, A, lda, 0, B, ldb, 0, CUDA_R_16BF, beta, C, ldc,
             0, 1);
}

__global__ void f32_to_f16_kernel(uint16_t *dst, const float *src, size_t n)
{
    GRID_STRIDE(i, n) dst[i] = sherl_f32_to_f16(src[i]);
}

__global__ void f16_to_f32_kernel(float *dst, const uint16_t *src, size_t n)
{
    GRID_STRIDE(i, n) dst[i] = sherl_f16_to_f32(src[i]);
}

// The conversions and the dropout RNG are kernels.h's own (SHERL_HD): both backends give the
// same bits.
__global__ void f32_to_bf16_kernel(uint16_t *dst, const float *src, size_t n)
{
    GRID_STRIDE(i, n) dst[i] = sherl_f32_to_bf16(src[i]);
}

__global__ void bf16_to_f32_kernel(float *dst, const uint16_t *src, size_t n)
{
    GRID_STRIDE(i, n) dst[i] = sherl_bf16_to_f32(src[i]);
}

static void cuda_gemm_f16(int trans_a, int trans_b, int M, int N, int K, float alpha,
                          const uint16_t *A, int lda, const uint16_t *B, int ldb, float beta,
                          float *C, int ldc)
{
    gemm_any(trans_a, trans_b, M, N, K, alpha, A, lda, 0, B, ldb, 0, CUDA_R_16F, beta, C, ldc,
             0, 1);
}

static void cuda_f32_to_f16(uint16_t *dst, const float *src, size_t n)
{
    ELEMENTWISE(f32_to_f16_kernel, n, dst, src, n);
}

static void cuda_f16_to_f32(float *dst, const uint16_t *src, size_t n)
{
    ELEMENTWISE(f16_to_f32_kernel, n, dst, src, n);
}

static void cuda_f32_to_bf16(uint16_t *dst, const float *src, size_t n)
{
    cuda_ctx *c = ctx();
    if (!c->ready || !n)
        return;
    f32_to_bf16_kernel<<<grid_for(n, 256), 256, 0, c->stream>>>(dst, src, n);
    LAUNCHED(c, "f32_to_bf16_kernel");
}

static void cuda_bf16_to_f32(float *dst, const uint16_t *src, size_t n)
{
    cuda_ctx *c = ctx();
    if (!c->ready || !n)
        return;
    bf16_to_f32_kernel<<<grid_for(n, 256), 256, 0, c->stream>>>(dst, src, n);
    LAUNCHED(c, "bf16_to_f32_kernel");
}

// ------------------------------------------------------------------------------------------
// column reductions (bias and LayerNorm parameter gradients)
//
// Two stages, no atomics, so the same inputs give the same bits. Stage 1: a grid of (group,
// 32-column tile) x (row chunk) blocks; each block's 32 x 32 threads walk their chunk's rows with
// per-thread sums in double, added over the 32 row lanes in a fixed tree into the chunk's
// partial. Stage 2: per group and column, the chunk partials in order. Enough chunks to fill the
// GPU for the usual widths (768 columns: 24 tiles x up to 64 chunks).
//
// Groups: G independent [N,C] blocks of one contiguous [G,N,C], each summed into its own output
// row. A group's rows are chunked exactly as an ungrouped [N,C] sum's (chunks from N and C only),
// so each group gets the bits it would get alone. When the G groups' partials would not fit in
// COL_SCRATCH_BYTES, stage 1 does stage 2's work too: one block per (group, tile) walks its
// chunks in turn and adds their partials in the same order stage 2 would (the same bits, no
// scratch, but G x tiles blocks only).

#define COL_TILE 32
#define COL_ROWS 32
#define COL_MAX_CHUNKS 64

// The outputs of column col of group g (rows out_stride apart) from its sums a and b.
__device__ __forceinline__ void column_store(float *out0, float *out1, long long out_stride,
                                             long long g, int col, double a, double b, int mode)
{
    long long o = g * out_stride + col;
    if (mode == 0) {
        out0[o] += (float)b;
    } else {
        if (out0)
            out0[o] += (float)a;
        if (out1)
            out1[o] += (float)b;
    }
}

// Block (g * tiles + tile, chunk): chunk `chunk` of group g's rows into part[g * chunks + chunk];
// with `direct` (a grid of one chunk row), every chunk of the group in order, into the outputs.
// mode 0: sum_n dout[g,n,c] (part1, b; part0 is not used)
// mode 1: also sum_n dout[g,n,c] (inp[g,n,c] - mean[g,n]) rstd[g,n] (part0, a), with group g's
//         statistics at mean/rstd + g * stat_stride
__global__ void column_partial_kernel(double *part0, double *part1, float *out0, float *out1,
                                      long long out_stride, const float *dout, const float *inp,
                                      const float *mean, const float *rstd,
                                      long long stat_stride, int N, int C, int chunks,
                                      int rows_per_chunk, int mode, int direct)
{
    __shared__ double s0[COL_ROWS][COL_TILE + 1], s1[COL_ROWS][COL_TILE + 1];
    const int tiles = (C + COL_TILE - 1) / COL_TILE;
    const long long g = blockIdx.x / tiles;
    const int col = (blockIdx.x % tiles) * COL_TILE + threadIdx.x;
    const size_t base = (size_t)g * N * C;
    const float *dy = dout + base;
    const float *x = mode == 1 ? inp + base : NULL;
    const float *m = mode == 1 ? mean + g * stat_stride : NULL;
    const float *rs = mode == 1 ? rstd + g * stat_stride : NULL;
    const int first = direct ? 0 : blockIdx.y, end = direct ? chunks : blockIdx.y + 1;
    double ta = 0.0, tb = 0.0; // direct: the chunks' partials so far, in order
    for (int chunk = first; chunk < end; chunk++) {
        int lo = chunk * rows_per_chunk, hi = lo + rows_per_chunk < N ? lo + rows_per_chunk : N;
        double a = 0.0, b = 0.0;
        if (col < C) {
            for (int n = lo + threadIdx.y; n < hi; n += COL_ROWS) {
                float d = dy[(size_t)n * C + col];
                b += d;
                if (mode == 1)
                    a += (double)d * ((x[(size_t)n * C + col] - m[n]) * rs[n]);
            }
        }
        s0[threadIdx.y][threadIdx.x] = a;
        s1[threadIdx.y][threadIdx.x] = b;
        __syncthreads();
        for (int h = COL_ROWS / 2; h > 0; h >>= 1) {
            if ((int)threadIdx.y < h) {
                s0[threadIdx.y][threadIdx.x] += s0[threadIdx.y + h][threadIdx.x];
                s1[threadIdx.y][threadIdx.x] += s1[threadIdx.y + h][threadIdx.x];
            }
            __syncthreads();
        }
        if (threadIdx.y == 0 && col < C) {
            if (direct) {
                ta += s0[0][threadIdx.x];
                tb += s1[0][threadIdx.x];
            } else {
                size_t p = ((size_t)g * chunks + chunk) * C + col;
                if (mode == 1)
                    part0[p] = s0[0][threadIdx.x];
                part1[p] = s1[0][threadIdx.x];
            }
        }
        __syncthreads(); // row 0 is read before the next chunk writes the tile again
    }
    if (direct && threadIdx.y == 0 && col < C)
        column_store(out0, out1, out_stride, g, col, ta, tb, mode);
}

__global__ void column_finish_kernel(float *out0, float *out1, long long out_stride,
                                     const double *part0, const double *part1, int G, int chunks,
                                     int C, int mode)
{
    GRID_STRIDE(i, (size_t)G * C)
    {
        size_t g = i / C, col = i % C, at = g * chunks * C + col;
        double a = 0.0, b = 0.0;
        for (int ch = 0; ch < chunks; ch++, at += C) {
            if (mode == 1)
                a += part0[at];
            b += part1[at];
        }
        column_store(out0, out1, out_stride, (long long)g, (int)col, a, b, mode);
    }
}

// Over G groups of [N,C] (dout, inp contiguous [G,N,C]), into output rows out_stride apart:
// mode 0: out0[g,c] += sum_n dout[g,n,c]
// mode 1: out0[g,c] += sum_n dout[g,n,c] (inp[g,n,c] - mean[g,n]) rstd[g,n];
//         out1[g,c] += sum_n dout[g,n,c]   (either may be NULL; statistics stat_stride apart)
// Two launches (one when the partials do not fit), whatever G.
static void column_sum(cuda_ctx *c, float *out0, float *out1, long long out_stride,
                       const float *dout, const float *inp, const float *mean, const float *rstd,
                       long long stat_stride, int G, int N, int C, int mode)
{
    if (G <= 0 || N <= 0 || C <= 0)
        return;
    // one group's chunking, as an ungrouped sum of [N,C] (whatever the mode: the same bits)
    int chunks = (N + 127) / 128;
    if (chunks > COL_MAX_CHUNKS)
        chunks = COL_MAX_CHUNKS;
    int fit = (int)(COL_SCRATCH_BYTES / (2 * sizeof(double) * (size_t)C));
    if (chunks > fit)
        chunks = fit > 0 ? fit : 1;
    int rows_per_chunk = (N + chunks - 1) / chunks;
    size_t tiles = ((size_t)C + COL_TILE - 1) / COL_TILE, blocks = (size_t)G * tiles;
    if (blocks > 0x7fffffffu) {
        record(c, "cuda: column sum of %d groups of %d columns: too many blocks (ops_cuda.cu:%d)",
               G, C, __LINE__);
        return;
    }
    // partials: G x chunks x C doubles, twice in mode 1
    size_t nparts = (size_t)G * chunks * C, part_bytes = sizeof(double) * nparts * (mode + 1);
    int direct = part_bytes > COL_SCRATCH_BYTES;
    double *part0 = NULL, *part1 = NULL;
    if (!direct) {
        part1 = (double *)scratch(c, part_bytes);
        if (!part1)
            return;
        part0 = mode == 1 ? part1 + nparts : NULL;
    }
    dim3 grid((unsigned)blocks, direct ? 1 : chunks), block(COL_TILE, COL_ROWS);
    column_partial_kernel<<<grid, block, 0, c->stream>>>(part0, part1, out0, out1, out_stride,
                                                         dout, inp, mean, rstd, stat_stride, N, C,
                                                         chunks, rows_per_chunk, mode, direct);
    LAUNCHED(c, "column_partial_kernel");
    if (direct)
        return;
    column_finish_kernel<<<grid_for((size_t)G * C, 128), 128, 0, c->stream>>>(
        out0, out1, out_stride, part0, part1, G, chunks, C, mode);
    LAUNCHED(c, "column_finish_kernel");
}

// ------------------------------------------------------------------------------------------
// bias and Linear

// Per-column element-wise ops ([rows, C] with a C-vector such as a bias) take 4 consecutive
// elements of a row a thread at a time where they can (vec4_ok): C a multiple of 4, each
// pointer aligned to 4 of its elements, and fewer than 2^31 groups of 4. Then one 32-bit
// division per 4 elements finds the column, where the scalar kernels divide in 64 bits (with a
// check for the 32-bit case) per element: in the feed-forward tail that, erfc and the address
// arithmetic left the kernel bound by instructions rather than memory. Each element gets the
// scalar kernel's own expression (a shared device function), so both paths give the same bits;
// the scalar kernels remain for the other shapes.
#define VEC4_MAX_GROUPS ((size_t)1 << 31)

static bool vec4_aligned(const void *p, size_t elem)
{
    return !p || (uintptr_t)p % (4 * elem) == 0;
}

static bool vec4_ok(size_t n, long long C, const float *f0, const float *f1, const uint16_t *h)
{
    return C % 4 == 0 && n % 4 == 0 && n / 4 < VEC4_MAX_GROUPS && vec4_aligned(f0, 4) &&
           vec4_aligned(f1, 4) && vec4_aligned(h, 2);
}

// 32-bit grid-stride loop over the groups of 4 (n4 < 2^31: i + stride cannot wrap)
#define GRID_STRIDE4(i, n4)                                                                    \
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < (n4);                          \
         i += gridDim.x * blockDim.x)

__device__ __forceinline__ float4 add4(float4 a, float4 b)
{
    return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}

// x[g,n,c] += bias[g * bias_stride + c] over n elements of [G,N,C], nc = N * C
__global__ void bias_add_kernel(float *x, const float *bias, long long bias_stride, size_t n,
                                size_t nc, int C)
{
    GRID_STRIDE(i, n) x[i] += bias[(long long)(i / nc) * bias_stride + (long long)(i % C)];
}

// the same in groups of 4: nc4 = N * C / 4, C4 = C / 4, bias_stride4 = bias_stride / 4
__global__ void bias_add_vec4_kernel(float4 *x, const float4 *bias, unsigned bias_stride4,
                                     unsigned n4, unsigned nc4, unsigned C4)
{
    GRID_STRIDE4(i, n4) x[i] = add4(x[i], bias[(i / nc4) * bias_stride4 + i % C4]);
}

// One launch whatever G.
static void cuda_bias_add_grouped_forward(float *x, const float *bias, long long bias_stride,
                                          int G, int N, int C)
{
    cuda_ctx *c = ctx();
    if (!c->ready || G <= 0 || N <= 0 || C <= 0)
        return;
    size_t nc = (size_t)N * C, n = (size_t)G * nc;
    if (vec4_ok(n, C, x, bias, NULL) && bias_stride % 4 == 0 &&
        (size_t)G * (size_t)bias_stride / 4 < VEC4_MAX_GROUPS) {
        bias_add_vec4_kernel<<<grid_for(n / 4, 256), 256, 0, c->stream>>>(
            (float4 *)x, (const float4 *)bias, (unsigned)(bias_stride / 4), (unsigned)(n / 4),
            (unsigned)(nc / 4), (unsigned)(C / 4));
        LAUNCHED(c, "bias_add_vec4_kernel");
        return;
    }
    bias_add_kernel<<<grid_for(n, 256), 256, 0, c->stream>>>(x, bias, bias_stride, n, nc, C);
    LAUNCHED(c, "bias_add_kernel");
}

static void cuda_bias_add_forward(float *x, const float *bias, int N, int C)
{
    cuda_bias_add_grouped_forward(x, bias, 0, 1, N, C);
}

static void cuda_bias_add_grouped_backward(float *dbias, long long bias_stride, const float *dout,
                                           int G, int N, int C)
{
    cuda_ctx *c = ctx();
    if (!c->ready)
        return;
    column_sum(c, dbias, NULL, bias_stride, dout, NULL, NULL, NULL, 0, G, N, C, 0);
}

static void cuda_bias_add_backward(float *dbias, const float *dout, int N, int C)
{
    cuda_bias_add_grouped_backward(dbias, 0, dout, 1, N, C);
}

static void cuda_matmul_forward(float *out, const float *inp, const float *weight,
                                const float *bias, int N, int C, int OC)
{
    cuda_gemm(0, 1, N, OC, C, 1.0f, inp, C, weight, C, 0.0f, out, OC);
    if (bias)
        cuda_bias_add_forward(out, bias, N, OC);
}

static void cuda_matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                                 const float *inp, const float *weight, int N, int C, int OC)
{
    if (dinp)
        cuda_gemm(0, 0, N, C, OC, 1.0f, dout, OC, weight, C, 1.0f, dinp, C);
    if (dweight)
        cuda_gemm(1, 0, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dweight, C);
    if (dbias)
        cuda_bias_add_backward(dbias, dout, N, OC);
}

// ------------------------------------------------------------------------------------------
// LayerNorm: one warp per row, statistics in double as on the CPU. Grouped: G independent
// LayerNorms over the G * N rows of [G,N,C]; row r is row r % N of group g = r / N, with the
// group's weight and bias at g * param_stride and its statistics at g * stat_stride. The
// ungrouped ops are G = 1.

#define ROWS_PER_BLOCK 8 // warps of a 256-thread block, one row each

static unsigned long_row_blocks(long long rows)
{
    return (unsigned)((rows + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK);
}

// The half bits of v as f32_to_bf16 / f32_to_f16 round it (the fused ops' last step).
__device__ __forceinline__ uint16_t to_half_bits(float v, int type)
{
    return type == SHERL_HALF_F16 ? sherl_f32_to_f16(v) : sherl_f32_to_bf16(v);
}

// One row of LayerNorm by one warp (lane: its lane), statistics in double; y16 (when not NULL)
// gets the outputs rounded to `type`; lane 0 stores the statistics where mean / rstd point.
__device__ void layernorm_row_warp(float *y, uint16_t *y16, int type, float *mean, float *rstd,
                                   const float *x, const float *weight, const float *bias, int C,
                                   float eps, int lane)
{
    double s = 0.0;
    for (int i = lane; i < C; i += 32)
        s += x[i];
    double m = warp_sum(s) / C;
    double v = 0.0;
    for (int i = lane; i < C; i += 32) {
        double d = x[i] - m;
        v += d * d;
    }
    v = warp_sum(v) / C;
    float fm = (float)m, rs = (float)(1.0 / sqrt(v + (double)eps));
    for (int i = lane; i < C; i += 32) {
        float o = (x[i] - fm) * rs * weight[i] + bias[i];
        y[i] = o;
        if (y16)
            y16[i] = to_half_bits(o, type);
    }
    if (lane == 0) {
        if (mean)
            *mean = fm;
        if (rstd)
            *rstd = rs;
    }
}

__global__ void layernorm_forward_kernel(float *out, float *mean, float *rstd,
                                         long long stat_stride, const float *inp,
                                         const float *weight, const float *bias,
                                         long long param_stride, long long rows, int N, int C,
                                         float eps)
{
    long long row = (long long)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows)
        return;
    long long g = row / N, n = row % N, st = g * stat_stride + n;
    layernorm_row_warp(out + (size_t)row * C, NULL, 0, mean ? mean + st : NULL,
                       rstd ? rstd + st : NULL, inp + (size_t)row * C, weight + g * param_stride,
                       bias + g * param_stride, C, eps, lane);
}

// residual_layernorm_forward: each lane forms its elements of res = (x + lin_bias) + resid as
// bias_add_kernel and residual_forward_kernel would, then the row's LayerNorm exactly as
// layernorm_forward_kernel (the same lanes, order and sums), with the rounding.
__global__ void residual_layernorm_kernel(float *out, uint16_t *out16, float *res, float *mean,
                                          float *rstd, const float *xin, const float *lin_bias,
                                          const float *resid, const float *weight,
                                          const float *bias, int N, int C, float eps, int type)
{
    long long row = (long long)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= N)
        return;
    size_t at = (size_t)row * C;
    // no res: the sum passes through out (each lane's LayerNorm reads an element of x before it
    // writes the same element of out), so only out's lines reach memory
    float *x = (res ? res : out) + at;
    for (int i = lane; i < C; i += 32) {
        float v = xin[at + i];
        if (lin_bias)
            v += lin_bias[i];
        x[i] = v + resid[at + i];
    }
    layernorm_row_warp(out + at, out16 ? out16 + at : NULL, type, mean ? mean + row : NULL,
                       rstd ? rstd + row : NULL, x, weight, bias, C, eps, lane);
}

__global__ void layernorm_backward_kernel(float *dinp, const float *dout, const float *inp,
                                          const float *weight, long long param_stride,
                                          const float *mean, const float *rstd,
                                          long long stat_stride, long long rows, int N, int C)
{
    long long row = (long long)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows)
        return;
    long long g = row / N, n = row % N;
    weight += g * param_stride;
    const float *x = inp + (size_t)row * C, *dy = dout + (size_t)row * C;
    float *dx = dinp + (size_t)row * C;
    float m = mean[g * stat_stride + n], rs = rstd[g * stat_stride + n];
    double a = 0.0, b = 0.0;
    for (int i = lane; i < C; i += 32) {
        double gw = (double)dy[i] * weight[i];
        a += gw;
        b += gw * ((x[i] - m) * rs);
    }
    float ma = (float)(warp_sum(a) / C), mb = (float)(warp_sum(b) / C);
    for (int i = lane; i < C; i += 32) {
        float norm = (x[i] - m) * rs;
        dx[i] += (dy[i] * weight[i] - ma - norm * mb) * rs;
    }
}

static unsigned row_blocks(int rows) { return (unsigned)((rows + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK); }

// One launch whatever G.
static void cuda_layernorm_grouped_forward(float *out, float *mean, float *rstd,
                                           long long stat_stride, const float *inp,
                                           const float *weight, const float *bias,
                                           long long param_stride, int G, int N, int C, float eps)
{
    cuda_ctx *c = ctx();
    if (!c->ready || G <= 0 || N <= 0 || C <= 0)
        return;
    long long rows = (long long)G * N;
    layernorm_forward_kernel<<<long_row_blocks(rows), 256, 0, c->stream>>>(
        out, mean, rstd, stat_stride, inp, weight, bias, param_stride, rows, N, C, eps);
    LAUNCHED(c, "layernorm_forward_kernel");
}

static void cuda_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                                   const float *weight, const float *bias, int N, int C, float eps)
{
    cuda_layernorm_grouped_forward(out, mean, rstd, 0, inp, weight, bias, 0, 1, N, C, eps);
}

static void cuda_residual_layernorm_forward(float *out, uint16_t *out16, float *res, float *mean,
                                            float *rstd, const float *x, const float *lin_bias,
                                            const float *resid, const float *weight,
                                            const float *bias, int N, int C, float eps, int type)
{
    cuda_ctx *c = ctx();
    if (!c->ready || N <= 0 || C <= 0)
        return;
    residual_layernorm_kernel<<<long_row_blocks(N), 256, 0, c->stream>>>(
        out, out16, res, mean, rstd, x, lin_bias, resid, weight, bias, N, C, eps, type);
    LAUNCHED(c, "residual_layernorm_kernel");
}

// At most three launches whatever G: dinp's, and the column sum's two for dweight and dbias.
static void cuda_layernorm_grouped_backward(float *dinp, float *dweight, float *dbias,
                                            long long param_stride, const float *dout,
                                            const float *inp, const float *weight,
                                            const float *mean, const float *rstd,
                                            long long stat_stride, int G, int N, int C)
{
    cuda_ctx *c = ctx();
    if (!c->ready || G <= 0 || N <= 0 || C <= 0)
        return;
    if (dinp) {
        long long rows = (long long)G * N;
        layernorm_backward_kernel<<<long_row_blocks(rows), 256, 0, c->stream>>>(
            dinp, dout, inp, weight, param_stride, mean, rstd, stat_stride, rows, N, C);
        LAUNCHED(c, "layernorm_backward_kernel");
    }
    if (dweight || dbias)
        column_sum(c, dweight, dbias, param_stride, dout, inp, mean, rstd, stat_stride, G, N, C,
                   1);
}

static void cuda_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                                    const float *inp, const float *weight, const float *mean,
                                    const float *rstd, int N, int C)
{
    cuda_layernorm_grouped_backward(dinp, dweight, dbias, 0, dout, inp, weight, mean, rstd, 0, 1,
                                    N, C);
}

// ------------------------------------------------------------------------------------------
// element-wise ops

// 0.5 x erfc(-x / sqrt 2): full relative accuracy in the negative tail, as on the CPU
__device__ __forceinline__ float gelu_erf(float x)
{
    return 0.5f * x * erfcf(-x * 0.70710678118654752f);
}

__global__ void gelu_forward_kernel(float *out, const float *inp, size_t n)
{
    GRID_STRIDE(i, n) out[i] = gelu_erf(inp[i]);
}

__global__ void gelu_backward_kernel(float *dinp, const float *inp, const float *dout, size_t n)
{
    GRID_STRIDE(i, n)
    {
        float x = inp[i];
        float cdf = 0.5f * erfcf(-x * 0.70710678118654752f);
        float pdf = 0.3989422804014327f * expf(-0.5f * x * x);
        dinp[i] += dout[i] * (cdf + x * pdf);
    }
}

// The fused half tails: per element exactly bias_add_kernel, gelu_forward_kernel and the
// conversion kernels in a row (the same expressions, so the same bits), in one pass.
__global__ void bias_gelu_half_kernel(uint16_t *out16, const float *x, const float *bias,
                                      size_t n, int C, int type)
{
    GRID_STRIDE(i, n)
    {
        float v = x[i];
        if (bias)
            v += bias[i % C];
        out16[i] = to_half_bits(gelu_erf(v), type);
    }
}

// The vector paths (vec4_ok) of the fused tails, one kernel per half type (TYPE), the bias a
// template flag so neither is a branch per element: n4 = n / 4, C4 = C / 4.
template <int TYPE, bool BIAS>
__global__ void bias_gelu_half_vec4_kernel(ushort4 *out16, const float4 *x, const float4 *bias,
                                           unsigned n4, unsigned C4)
{
    GRID_STRIDE4(i, n4)
    {
        float4 v = x[i];
        if (BIAS)
            v = add4(v, bias[i % C4]);
        out16[i] = make_ushort4(
            to_half_bits(gelu_erf(v.x), TYPE), to_half_bits(gelu_erf(v.y), TYPE),
            to_half_bits(gelu_erf(v.z), TYPE), to_half_bits(gelu_erf(v.w), TYPE));
    }
}

// v rounded to `type` and back: the bits x16 gets, and the value x keeps
__device__ __forceinline__ float half_bits_to_f32(uint16_t h, int type)
{
    return type == SHERL_HALF_F16 ? sherl_f16_to_f32(h) : sherl_bf16_to_f32(h);
}

__global__ void bias_half_round_kernel(float *x, uint16_t *x16, const float *bias, size_t n,
                                       int C, int type)
{
    GRID_STRIDE(i, n)
    {
        float v = x[i];
        if (bias)
            v += bias[i % C];
        uint16_t h = to_half_bits(v, type);
        if (x16)
            x16[i] = h;
        x[i] = half_bits_to_f32(h, type);
    }
}

template <int TYPE, bool BIAS, bool KEEP16>
__global__ void bias_half_round_vec4_kernel(float4 *x, ushort4 *x16, const float4 *bias,
                                            unsigned n4, unsigned C4)
{
    GRID_STRIDE4(i, n4)
    {
        float4 v = x[i];
        if (BIAS)
            v = add4(v, bias[i % C4]);
        ushort4 h = make_ushort4(to_half_bits(v.x, TYPE), to_half_bits(v.y, TYPE),
                                 to_half_bits(v.z, TYPE), to_half_bits(v.w, TYPE));
        if (KEEP16)
            x16[i] = h;
        x[i] = make_float4(half_bits_to_f32(h.x, TYPE), half_bits_to_f32(h.y, TYPE),
                           half_bits_to_f32(h.z, TYPE), half_bits_to_f32(h.w, TYPE));
    }
}

__global__ void residual_forward_kernel(float *out, const float *a, const float *b, size_t n)
{
    GRID_STRIDE(i, n) out[i] = a[i] + b[i];
}

__global__ void residual_backward_kernel(float *da, float *db, const float *dout, size_t n)
{
    GRID_STRIDE(i, n)
    {
        if (da)
            da[i] += dout[i];
        if (db)
            db[i] += dout[i];
    }
}

__global__ void relu_forward_kernel(float *out, const float *inp, size_t n)
{
    GRID_STRIDE(i, n) out[i] = inp[i] < 0.0f ? 0.0f : inp[i]; // NaN stays NaN, as torch.relu
}

__global__ void relu_backward_kernel(float *dinp, const float *inp, const float *dout, size_t n)
{
    GRID_STRIDE(i, n) dinp[i] += inp[i] > 0.0f ? dout[i] : 0.0f;
}

__global__ void scale_kernel(float *x, size_t n, float s)
{
    GRID_STRIDE(i, n) x[i] *= s;
}

__global__ void dropout_forward_kernel(float *out, const float *inp, size_t n, float p,
                                       float keep_scale, uint64_t seed, uint64_t offset)
{
    GRID_STRIDE(i, n) out[i] = sherl_dropout_uniform(seed, offset + i) >= p ? inp[i] * keep_scale : 0.0f;
}

__global__ void dropout_backward_kernel(float *dinp, const float *dout, size_t n, float p,
                                        float keep_scale, uint64_t seed, uint64_t offset)
{
    GRID_STRIDE(i, n)
    {
        if (p <= 0.0f || sherl_dropout_uniform(seed, offset + i) >= p)
            dinp[i] += dout[i] * keep_scale;
    }
}


static void cuda_gelu_forward(float *out, const float *inp, size_t n)
{
    ELEMENTWISE(gelu_forward_kernel, n, out, inp, n);
}

static void cuda_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n)
{
    ELEMENTWISE(gelu_backward_kernel, n, dinp, inp, dout, n);
}

template <int TYPE>
static void bias_gelu_half_vec4(cuda_ctx *c, uint16_t *out16, const float *x, const float *bias,
                                size_t n, int C)
{
    unsigned n4 = (unsigned)(n / 4), C4 = (unsigned)(C / 4);
    ushort4 *o = (ushort4 *)out16;
    const float4 *x4 = (const float4 *)x, *b4 = (const float4 *)bias;
    unsigned g = grid_for(n4, 256);
    if (bias)
        bias_gelu_half_vec4_kernel<TYPE, true><<<g, 256, 0, c->stream>>>(o, x4, b4, n4, C4);
    else
        bias_gelu_half_vec4_kernel<TYPE, false><<<g, 256, 0, c->stream>>>(o, x4, b4, n4, C4);
    LAUNCHED(c, "bias_gelu_half_vec4_kernel");
}

static void cuda_bias_gelu_half_forward(uint16_t *out16, const float *x, const float *bias,
                                        int N, int C, int type)
{
    size_t n = N > 0 && C > 0 ? (size_t)N * C : 0;
    cuda_ctx *c = ctx();
    if (!c->ready || n == 0)
        return;
    if (!vec4_ok(n, C, x, bias, out16)) {
        bias_gelu_half_kernel<<<grid_for(n, 256), 256, 0, c->stream>>>(out16, x, bias, n, C,
                                                                        type);
        LAUNCHED(c, "bias_gelu_half_kernel");
    } else if (type == SHERL_HALF_F16) {
        bias_gelu_half_vec4<SHERL_HALF_F16>(c, out16, x, bias, n, C);
    } else {
        bias_gelu_half_vec4<SHERL_HALF_BF16>(c, out16, x, bias, n, C);
    }
}

template <int TYPE, bool BIAS>
static void bias_half_round_vec4(cuda_ctx *c, float *x, uint16_t *x16, const float *bias,
                                 size_t n, int C)
{
    unsigned n4 = (unsigned)(n / 4), C4 = (unsigned)(C / 4);
    float4 *x4 = (float4 *)x;
    ushort4 *h4 = (ushort4 *)x16;
    const float4 *b4 = (const float4 *)bias;
    unsigned g = grid_for(n4, 256);
    if (x16)
        bias_half_round_vec4_kernel<TYPE, BIAS, true><<<g, 256, 0, c->stream>>>(x4, h4, b4, n4, C4);
    else
        bias_half_round_vec4_kernel<TYPE, BIAS, false><<<g, 256, 0, c->stream>>>(x4, h4, b4, n4,
                                                                                C4);
    LAUNCHED(c, "bias_half_round_vec4_kernel");
}

static void cuda_bias_half_round_forward(float *x, uint16_t *x16, const float *bias, int N, int C,
                                         int type)
{
    size_t n = N > 0 && C > 0 ? (size_t)N * C : 0;
    cuda_ctx *c = ctx();
    if (!c->ready || n == 0)
        return;
    if (!vec4_ok(n, C, x, bias, x16)) {
        bias_half_round_kernel<<<grid_for(n, 256), 256, 0, c->stream>>>(x, x16, bias, n, C,
                                                                         type);
        LAUNCHED(c, "bias_half_round_kernel");
    } else if (type == SHERL_HALF_F16) {
        if (bias)
            bias_half_round_vec4<SHERL_HALF_F16, true>(c, x, x16, bias, n, C);
        else
            bias_half_round_vec4<SHERL_HALF_F16, false>(c, x, x16, bias, n, C);
    } else {
        if (bias)
            bias_half_round_vec4<SHERL_HALF_BF16, true>(c, x, x16, bias, n, C);
        else
            bias_half_round_vec4<SHERL_HALF_BF16, false>(c, x, x16, bias, n, C);
    }
}

// The largest power of two (at most 256) that divides p's address: cublasLt's heuristic must
// be told the operands' alignment, or it may pick an algorithm that needs more.
static uint32_t alignment_of(const void *p)
{
    uint32_t a = 256;
    while (a > 1 && (uintptr_t)p % a)
        a /= 2;
    return a;
}

// The heuristic's answer for a product, kept per thread and device: a step asks for the same
// few shapes every time, and the query costs tens of microseconds of host time.
struct lt_key {
    int N, C, OC, type, bias;
    uint32_t align_a, align_b, align_d;
};
#define LT_CACHE 16
struct lt_entry {
    lt_key key;
    int found; // 1: algo; 0: none offered
    cublasLtMatmulHeuristicResult_t h;
    cublasLtHandle_t lt; // the handle it was asked of (a new handle asks again)
};
static thread_local lt_entry lt_cache[SHERL_CUDA_MAX_DEVICES][LT_CACHE];
static thread_local unsigned lt_next[SHERL_CUDA_MAX_DEVICES];

static bool lt_heuristic(cuda_ctx *c, const lt_key &key, cublasLtMatmulDesc_t op,
                         cublasLtMatrixLayout_t la, cublasLtMatrixLayout_t lb,
                         cublasLtMatrixLayout_t ld, cublasLtMatmulPreference_t pref,
                         cublasLtMatmulHeuristicResult_t *h)
{
    lt_entry *cache = lt_cache[c->dev];
    for (int i = 0; i < LT_CACHE; i++)
        if (cache[i].lt == c->lt && !memcmp(&cache[i].key, &key, sizeof key)) {
            *h = cache[i].h;
            return cache[i].found;
        }
    int found = 0;
    if (cublasLtMatmulAlgoGetHeuristic(c->lt, op, la, lb, ld, ld, pref, 1, h, &found) !=
        CUBLAS_STATUS_SUCCESS)
        found = 0;
    lt_entry *e = &cache[lt_next[c->dev]++ % LT_CACHE];
    e->key = key, e->found = found > 0, e->h = *h, e->lt = c->lt;
    return found > 0;
}

// out16 = half(inp16 . w16^T + bias) as one cublasLt product, the bias added in its epilogue
// (in fp32, before the rounding to the 16-bit result, as bias_half_round_forward does): true
// when it ran. False, with nothing recorded, when cublasLt offers no algorithm for it (or there
// is no cublasLt); a failure of the product itself is recorded.
static bool lt_linear_half16(cuda_ctx *c, uint16_t *out16, const uint16_t *inp16,
                             const uint16_t *w16, const float *bias, int N, int C, int OC,
                             int type)
{
    if (!c->lt)
        return false;
    // column-major: out^T [OC, N] = op_T(W as [C, OC]) . inp^T as [C, N]
    const cudaDataType_t ht = type == SHERL_HALF_F16 ? CUDA_R_16F : CUDA_R_16BF;
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    const cublasLtEpilogue_t ep = bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    const cudaDataType_t bias_type = CUDA_R_32F;
    const uint64_t ws = CUBLAS_WORKSPACE_BYTES;
    const uint32_t align_a = alignment_of(w16), align_b = alignment_of(inp16),
                   align_d = alignment_of(out16);
    // split-K partial sums only in fp32: in the output type (in place, or an output-type
    // workspace) they would be rounded to 16 bits before they are added
    const uint32_t reduction = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    const lt_key key = {N, C, OC, type, bias != NULL, align_a, align_b, align_d};
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, ld = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t h;
    const cublasStatus_t ok = CUBLAS_STATUS_SUCCESS;
    bool usable =
        cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F) == ok &&
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta) == ok &&
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb) == ok &&
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep) == ok &&
        (!bias ||
         (cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                         sizeof bias) == ok &&
          cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                         sizeof bias_type) == ok)) &&
        cublasLtMatrixLayoutCreate(&la, ht, C, OC, C) == ok &&
        cublasLtMatrixLayoutCreate(&lb, ht, C, N, C) == ok &&
        cublasLtMatrixLayoutCreate(&ld, ht, OC, N, OC) == ok &&
        cublasLtMatmulPreferenceCreate(&pref) == ok &&
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                             sizeof ws) == ok &&
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                             &align_a, sizeof align_a) == ok &&
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                             &align_b, sizeof align_b) == ok &&
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                             &align_d, sizeof align_d) == ok &&
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                             &align_d, sizeof align_d) == ok &&
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                             &reduction, sizeof reduction) == ok &&
        lt_heuristic(c, key, op, la, lb, ld, pref, &h);
    if (usable) {
        const float alpha = 1.0f, beta = 0.0f;
        CKB(c, cublasLtMatmul(c->lt, op, &alpha, w16, la, inp16, lb, &beta, out16, ld, out16, ld,
                              &h.algo, c->workspace, CUBLAS_WORKSPACE_BYTES, c->stream));
    }
    if (pref)
        cublasLtMatmulPreferenceDestroy(pref);
    if (ld)
        cublasLtMatrixLayoutDestroy(ld);
    if (lb)
        cublasLtMatrixLayoutDestroy(lb);
    if (la)
        cublasLtMatrixLayoutDestroy(la);
    if (op)
        cublasLtMatmulDescDestroy(op);
    return usable;
}

// SHERL_CUDA_LT=0 turns the fused cublasLt products off (the product and its tail run apart)
static int use_lt = 1;

static void cuda_linear_half16_forward(uint16_t *out16, float *tmp, const uint16_t *inp16,
                                       const uint16_t *w16, const float *bias, int N, int C,
                                       int OC, int type)
{
    cuda_ctx *c = ctx();
    if (!c->ready || N <= 0 || OC <= 0 || !blas_ready(c))
        return;
    if (C > 0 && use_lt && lt_linear_half16(c, out16, inp16, w16, bias, N, C, OC, type))
        return;
    gemm_any(0, 1, N, OC, C, 1.0f, inp16, C, 0, w16, C, 0,
             type == SHERL_HALF_F16 ? CUDA_R_16F : CUDA_R_16BF, 0.0f, tmp, OC, 0, 1);
    cuda_bias_half_round_forward(tmp, out16, bias, N, OC, type);
}

static void cuda_residual_forward(float *out, const float *a, const float *b, size_t n)
{
    ELEMENTWISE(residual_forward_kernel, n, out, a, b, n);
}

static void cuda_residual_backward(float *da, float *db, const float *dout, size_t n)
{
    if (!da && !db)
        return;
    ELEMENTWISE(residual_backward_kernel, n, da, db, dout, n);
}

static void cuda_relu_forward(float *out, const float *inp, size_t n)
{
    ELEMENTWISE(relu_forward_kernel, n, out, inp, n);
}

static void cuda_relu_backward(float *dinp, const float *inp, const float *dout, size_t n)
{
    ELEMENTWISE(relu_backward_kernel, n, dinp, inp, dout, n);
}

static void cuda_scale(float *x, size_t n, float s) { ELEMENTWISE(scale_kernel, n, x, n, s); }

static void cuda_dropout_forward(float *out, const float *inp, size_t n, float p, uint64_t seed,
                                 uint64_t offset)
{
    if (p <= 0.0f) {
        if (out != inp) {
            cuda_ctx *c = ctx();
            if (c->ready && n)
                CK(c, cudaMemcpyAsync(out, inp, n * sizeof(float), cudaMemcpyDeviceToDevice,
                                      c->stream));
        }
        return;
    }
    float keep_scale = 1.0f / (1.0f - p);
    ELEMENTWISE(dropout_forward_kernel, n, out, inp, n, p, keep_scale, seed, offset);
}

static void cuda_dropout_backward(float *dinp, const float *dout, size_t n, float p,
                                  uint64_t seed, uint64_t offset)
{
    float keep_scale = p <= 0.0f ? 1.0f : 1.0f / (1.0f - p);
    ELEMENTWISE(dropout_backward_kernel, n, dinp, dout, n, p, keep_scale, seed, offset);
}

// ------------------------------------------------------------------------------------------
// softmax and attention

// Row r of [rows, Tk]: out = softmax(scale * inp + mask[b]) with b = r / rows_per_b, rounded
// to the half type `half` unless it is -1. out may alias inp: each element is read before its
// own thread writes it.
__global__ void softmax_forward_kernel(float *out, const float *inp, const float *mask,
                                       float scale, long long rows, long long rows_per_b, int Tk,
                                       int half)
{
    long long row = (long long)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows)
        return;
    const float *x = inp + row * Tk;
    const float *mk = mask ? mask + (row / rows_per_b) * Tk : NULL;
    float mx = -INFINITY;
    for (int k = lane; k < Tk; k += 32)
        mx = fmaxf(mx, scale * x[k] + (mk ? mk[k] : 0.0f));
    mx = warp_max(mx);
    double sum = 0.0;
    for (int k = lane; k < Tk; k += 32)
        sum += expf(scale * x[k] + (mk ? mk[k] : 0.0f) - mx);
    float inv = (float)(1.0 / warp_sum(sum));
    float *y = out + row * Tk;
    for (int k = lane; k < Tk; k += 32) {
        float p = expf(scale * x[k] + (mk ? mk[k] : 0.0f) - mx) * inv;
        y[k] = half < 0 ? p : sherl_half_round_f32(p, half);
    }
}

__global__ void softmax_backward_kernel(float *dinp, const float *dout, const float *out,
                                        float scale, long long rows, int Tk)
{
    long long row = (long long)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows)
        return;
    const float *y = out + row * Tk, *dy = dout + row * Tk;
    float *dx = dinp + row * Tk;
    double dot = 0.0;
    for (int k = lane; k < Tk; k += 32)
        dot += (double)dy[k] * y[k];
    float fd = (float)warp_sum(dot);
    for (int k = lane; k < Tk; k += 32)
        dx[k] += scale * y[k] * (dy[k] - fd);
}

static void softmax_forward_any(cuda_ctx *c, float *out, const float *inp, const float *mask,
                                float scale, int B, int H, int Tq, int Tk, int half)
{
    long long rows = (long long)B * H * Tq;
    if (!c->ready || rows <= 0 || Tk <= 0)
        return;
    softmax_forward_kernel<<<long_row_blocks(rows), 256, 0, c->stream>>>(
        out, inp, mask, scale, rows, (long long)H * Tq, Tk, half);
    LAUNCHED(c, "softmax_forward_kernel");
}

static void cuda_softmax_forward(float *out, const float *inp, const float *mask, float scale,
                                 int B, int H, int Tq, int Tk)
{
    softmax_forward_any(ctx(), out, inp, mask, scale, B, H, Tq, Tk, -1);
}

static void cuda_softmax_backward(float *dinp, const float *dout, const float *out, float scale,
                                  int B, int H, int Tq, int Tk)
{
    cuda_ctx *c = ctx();
    long long rows = (long long)B * H * Tq;
    if (!c->ready || rows <= 0 || Tk <= 0)
        return;
    softmax_backward_kernel<<<long_row_blocks(rows), 256, 0, c->stream>>>(dinp, dout, out, scale,
                                                                           rows, Tk);
    LAUNCHED(c, "softmax_backward_kernel");
}

// The (b, h) blocks of attention's products as pointer arrays, i = b NH + h: one batched GEMM
// covers every head of every sequence (the heads of q, k, v and the output are not one stride
// apart from the sequences', so a strided batch would take one launch per head). NH here is the
// heads the arrays cover (the backward's group), the bases those of their first head.
#define ATTN_MAX_ARRAYS ATTN_BWD_ARRAYS
struct attention_blocks {
    const float *base[ATTN_MAX_ARRAYS];
    // element offsets of the next sequence and the next head
    long long seq[ATTN_MAX_ARRAYS], head[ATTN_MAX_ARRAYS];
};

// out[w n + j] = block j of array w, for `arrays` arrays of n = B NH blocks
__global__ void attention_ptrs_kernel(const float **out, attention_blocks a, int arrays, int NH,
                                      int n)
{
    GRID_STRIDE(i, (size_t)arrays * n)
    {
        int which = (int)(i / n);
        size_t j = i % n;
        out[i] = a.base[which] + (long long)(j / NH) * a.seq[which] +
                 (long long)(j % NH) * a.head[which];
    }
}

static int attention_ptrs(cuda_ctx *c, const float **out, const attention_blocks &a, int arrays,
                          int NH, int n)
{
    attention_ptrs_kernel<<<grid_for((size_t)arrays * n, 256), 256, 0, c->stream>>>(out, a, arrays,
                                                                                    NH, n);
    return LAUNCHED(c, "attention_ptrs_kernel");
}

// Row-major C_i = op(A_i) op(B_i) + beta C_i for pointer arrays on the device (see gemm_any).
// compute: fp32_compute(c), or TF32 where every operand is a half value (exact in TF32).
static void gemm_ptr_batched(cuda_ctx *c, int trans_a, int trans_b, int M, int N, int K,
                             const float *const *A, int lda, const float *const *B, int ldb,
                             float beta, float *const *C, int ldc, int batch,
                             cublasComputeType_t compute)
{
    const float alpha = 1.0f;
    CKB(c, cublasGemmBatchedEx(c->blas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                               trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha,
                               (const void *const *)B, CUDA_R_32F, ldb, (const void *const *)A,
                               CUDA_R_32F, lda, &beta, (void *const *)C, CUDA_R_32F, ldc, batch,
                               compute, CUBLAS_GEMM_DEFAULT));
}

// Attention over every (sequence, head) block at once: S = Q K^T, softmax, O = P V, in four
// launches whatever B and NH (the pointer arrays, two batched GEMMs, the softmax). half >= 0
// (attention_half_forward): qkv holds half values and the softmax rounds P to that type, so
// both products take only half values, which TF32 holds exactly: they run on tensor cores, with
// fp32 sums as before.
static void attention_forward_any(float *out, float *probs, const float *qkv, const float *mask,
                                  int B, int T, int NH, int HS, int half)
{
    cuda_ctx *c = ctx();
    if (!c->ready || B <= 0 || T <= 0 || NH <= 0 || HS <= 0 || !blas_ready(c))
        return;
    const int C = NH * HS, C3 = 3 * C, n = B * NH;
    const float **ptr =
        (const float **)scratch(c, attention_ptrs_bytes(B, NH, ATTN_FWD_ARRAYS));
    if (!ptr)
        return;
    attention_blocks a = {{qkv, qkv + C, probs, qkv + 2 * C, out},
                          {(long long)T * C3, (long long)T * C3, (long long)NH * T * T,
                           (long long)T * C3, (long long)T * C},
                          {HS, HS, (long long)T * T, HS, HS}};
    if (attention_ptrs(c, ptr, a, ATTN_FWD_ARRAYS, NH, n))
        return;
    const float *const *q = ptr, *const *k = ptr + n, *const *p = ptr + 2 * n,
                       *const *v = ptr + 3 * n, *const *o = ptr + 4 * n;
    cublasComputeType_t compute = half < 0 ? fp32_compute(c) : CUBLAS_COMPUTE_32F_FAST_TF32;
    gemm_ptr_batched(c, 0, 1, T, T, HS, q, C3, k, C3, 0.0f, (float *const *)p, T, n, compute);
    softmax_forward_any(c, probs, probs, mask, 1.0f / sqrtf((float)HS), B, NH, T, T, half);
    gemm_ptr_batched(c, 0, 0, T, HS, T, p, T, v, C3, 0.0f, (float *const *)o, C, n, compute);
}

static void cuda_attention_forward(float *out, float *probs, const float *qkv, const float *mask,
                                   int B, int T, int NH, int HS)
{
    attention_forward_any(out, probs, qkv, mask, B, T, NH, HS, -1);
}

// ---- fused half attention: attention_half_forward without probabilities
//
// One block per (sequence, head); each warp takes a strip of 16 query rows at a time and the
// block's warps walk the keys together, a stage of 16-key tiles of K (and V) at a time staged
// in shared memory as halves. Per strip, on tensor cores, three passes over the keys compute
// each 16 x 16 tile of S = Q K^T again (the same operands, so the same bits each time) instead
// of keeping S: pass 0 the row maxima, pass 1 the sums of the exponentials (in double), pass 2
// P = half(exp(.) / sum) and O += P V. The formulas are softmax_forward_kernel's, and both
// products sum the same exact half products as the unfused path's (in the tensor cores' order),
// so nothing T x T is ever written to memory.
//
// Shared memory: the stage's K and V ([16 stage_tiles, hsp] halves each; hsp = HS rounded up
// to 16, zero-padded, which adds nothing to a product), then per warp its strip of Q ([16, hsp]
// halves), a tile of scores ([16, 16] floats) and of probabilities ([16, 16] halves). Staged
// rows are hsp + 8 halves apart (FUSED_PAD): at hsp apart (128 bytes for HS 64) a fragment
// load's 8 rows all fall in the same 4 banks.
#define FUSED_MAX_WARPS 8
#define FUSED_MAX_TILES 4
#define FUSED_MAX_BYTES (48 * 1024) // what a launch may have without opting in

struct fused_shape {
    int hsp, stage_tiles, warps;
    size_t bytes;
};

// A score tile's row stride in floats: 16 would put a lane's 8 reads of its row (lane % 16)
// in 2 banks for 16 lanes; 20 (wmma needs a multiple of 4) spreads them over 8
#define SS_LD 20

#define FUSED_PAD 8

__host__ __device__ static size_t fused_warp_bytes(int hsp)
{
    return (size_t)16 * (hsp + FUSED_PAD) * 2 + 16 * SS_LD * 4 + 16 * 16 * 2;
}

// The most warps (at most one per strip), then the longest stage, that fit; false for heads
// wider than SHERL_ATTN_FUSED_MAX_HS (kernels.h), which the engine never sends here.
static bool fused_plan(int T, int HS, fused_shape *f)
{
    f->hsp = (HS + 15) / 16 * 16;
    int strips = (T + 15) / 16;
    if (HS > SHERL_ATTN_FUSED_MAX_HS)
        return false;
    for (int w = FUSED_MAX_WARPS; w >= 1; w /= 2) {
        if (w > 1 && w > strips)
            continue;
        for (int st = FUSED_MAX_TILES; st >= 1; st /= 2) {
            size_t b = (size_t)2 * 16 * st * (f->hsp + FUSED_PAD) * 2 +
                       (size_t)w * fused_warp_bytes(f->hsp);
            if (b <= FUSED_MAX_BYTES) {
                f->stage_tiles = st, f->warps = w, f->bytes = b;
                return true;
            }
        }
    }
    return false;
}

template <int TYPE> struct wmma_half;
template <> struct wmma_half<SHERL_HALF_BF16> {
    typedef __nv_bfloat16 t;
};
template <> struct wmma_half<SHERL_HALF_F16> {
    typedef __half t;
};

__device__ __forceinline__ uint16_t half_bits_of(float v, int type) { return to_half_bits(v, type); }
__device__ __forceinline__ uint16_t half_bits_of(uint16_t v, int type) { return v; }

// rows [r0, r0 + rows) of a head's [T, HS] slice (row stride ld) into dst[rows, hsp] (rows
// hsp + FUSED_PAD apart) as halves, zero past T and HS; by threads tid, tid + nthreads, ...
// IN: float (half values) or uint16_t (their bits).
template <class IN>
__device__ void fused_stage(uint16_t *dst, const IN *src, int r0, int rows, int T, int HS,
                            int hsp, int ld, int type, int tid, int nthreads)
{
    for (int i = tid; i < rows * hsp; i += nthreads) {
        int r = i / hsp, c = i % hsp;
        dst[(size_t)r * (hsp + FUSED_PAD) + c] =
            r0 + r < T && c < HS ? half_bits_of(src[(size_t)(r0 + r) * ld + c], type) : 0;
    }
}

// The same for 16-bit sources whose rows are 16-byte aligned runs of HS % 8 == 0 halves (hsp
// is then HS rounded up to 16): 8 halves a thread per load, one division per 8
__device__ void fused_stage(uint16_t *dst, const uint16_t *src, int r0, int rows, int T, int HS,
                            int hsp, int ld, int type, int tid, int nthreads, bool wide)
{
    if (!wide) {
        fused_stage<uint16_t>(dst, src, r0, rows, T, HS, hsp, ld, type, tid, nthreads);
        return;
    }
    const int per_row = hsp / 8;
    for (int i = tid; i < rows * per_row; i += nthreads) {
        int r = i / per_row, c = (i % per_row) * 8;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r0 + r < T && c < HS)
            v = *(const uint4 *)(src + (size_t)(r0 + r) * ld + c);
        *(uint4 *)(dst + (size_t)r * (hsp + FUSED_PAD) + c) = v;
    }
}

__device__ __forceinline__ void fused_stage(uint16_t *dst, const float *src, int r0, int rows,
                                            int T, int HS, int hsp, int ld, int type, int tid,
                                            int nthreads, bool wide)
{
    fused_stage<float>(dst, src, r0, rows, T, HS, hsp, ld, type, tid, nthreads);
}

// ss[16, 16] (rows ld floats apart) = qs[16, hsp] . ks[16, hsp]^T (staged rows), by the whole
// warp
template <class H> __device__ void fused_scores(float *ss, int ld, const uint16_t *qs,
                                                const uint16_t *ks, int hsp)
{
    using namespace nvcuda;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> s;
    wmma::fill_fragment(s, 0.0f);
    for (int k = 0; k < hsp; k += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, H, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, H, wmma::col_major> kt;
        wmma::load_matrix_sync(a, (const H *)(qs + k), hsp + FUSED_PAD);
        wmma::load_matrix_sync(kt, (const H *)(ks + k), hsp + FUSED_PAD);
        wmma::mma_sync(s, a, kt, s);
    }
    wmma::store_matrix_sync(ss, s, ld, wmma::mem_row_major);
    __syncwarp();
}

// A warp's output tiles of column group g: O[16, 16 NCT] (rows r0.., columns 16 g NCT.. of head
// h of sequence b) through the warp's [16, SS_LD] float tile, as floats or (OUT16) halves,
// rows past T and columns past HS left out
template <int TYPE, int NCT, bool OUT16>
__device__ __forceinline__ void fused_store_out(void *out,
                                nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16,
                                                       float> (&acc)[NCT],
                                float *tile, int g, int col_tiles, int b, int h, int r0, int T,
                                int C, int HS, int lane)
{
#pragma unroll
    for (int i = 0; i < NCT; i++) {
        int ct = g * NCT + i;
        if (ct >= col_tiles)
            continue;
        nvcuda::wmma::store_matrix_sync(tile, acc[i], SS_LD, nvcuda::wmma::mem_row_major);
        __syncwarp();
        for (int e = lane; e < 256; e += 32) {
            int r = e / 16, col = 16 * ct + e % 16;
            size_t o = ((size_t)b * T + r0 + r) * C + (size_t)h * HS + col;
            if (r0 + r < T && col < HS && OUT16)
                ((uint16_t *)out)[o] = to_half_bits(tile[r * SS_LD + e % 16], TYPE);
            else if (r0 + r < T && col < HS)
                ((float *)out)[o] = tile[r * SS_LD + e % 16];
        }
        __syncwarp();
    }
}

// NCT: output column tiles held in registers at once (1, 2, 4 or 8); wider heads take pass 2
// once per group of NCT tiles.
// IN: float (attention_half_forward's qkv of half values) or uint16_t (attention_half16's
// qkv16); OUT16: out holds halves (out16) instead of floats.
template <int TYPE, int NCT, class IN, bool OUT16>
__global__ void attention_fused_kernel(void *out, const IN *qkv, const float *mask, int T, int NH,
                                       int HS, int hsp, int stage_tiles, float scale, bool wide)
{
    using namespace nvcuda;
    typedef typename wmma_half<TYPE>::t H;
    extern __shared__ __align__(128) unsigned char fused_smem[];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    const int b = blockIdx.x / NH, h = blockIdx.x % NH;
    const int C = NH * HS, C3 = 3 * C, strips = (T + 15) / 16, keys = 16 * stage_tiles;
    const int col_tiles = hsp / 16, groups = (col_tiles + NCT - 1) / NCT;
    const IN *qb = qkv + (size_t)b * T * C3 + (size_t)h * HS, *kb = qb + C, *vb = qb + 2 * C;
    const float *mk = mask ? mask + (size_t)b * T : NULL;
    const int hst = hsp + FUSED_PAD; // a staged row's stride
    uint16_t *ks = (uint16_t *)fused_smem, *vs = ks + (size_t)keys * hst;
    uint16_t *qs = (uint16_t *)((unsigned char *)(vs + (size_t)keys * hst) +
                                (size_t)warp * fused_warp_bytes(hsp));
    float *ss = (float *)(qs + 16 * hst);
    uint16_t *ps = (uint16_t *)(ss + 16 * SS_LD);
    // a lane's share of a score tile: row `row`, columns c0 .. c0 + 7
    const int row = lane % 16, c0 = lane / 16 * 8;
    for (int s0 = 0; s0 < strips; s0 += warps) {
        const int r0 = (s0 + warp) * 16;
        const bool active = s0 + warp < strips; // warp-uniform; idle warps still stage keys
        if (active)
            fused_stage(qs, qb, r0, 16, T, HS, hsp, C3, TYPE, lane, 32, wide);
        float mx = -INFINITY, inv = 0.0f;
        double sum = 0.0;
        for (int pass = 0; pass < 3; pass++) {
            for (int g = 0; g < (pass < 2 ? 1 : groups); g++) {
                wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[NCT];
#pragma unroll
                for (int i = 0; i < NCT; i++)
                    wmma::fill_fragment(acc[i], 0.0f);
                for (int k0 = 0; k0 < T; k0 += keys) {
                    __syncthreads(); // every warp is done with the last stage
                    fused_stage(ks, kb, k0, keys, T, HS, hsp, C3, TYPE, threadIdx.x, blockDim.x,
                                wide);
                    if (pass == 2)
                        fused_stage(vs, vb, k0, keys, T, HS, hsp, C3, TYPE, threadIdx.x,
                                    blockDim.x, wide);
                    __syncthreads();
                    if (!active)
                        continue;
                    for (int t = 0; t < stage_tiles && k0 + 16 * t < T; t++) {
                        fused_scores<H>(ss, SS_LD, qs, ks + (size_t)16 * t * hst, hsp);
                        // the lane's 8 scores as two 16-byte loads (rows 80 bytes apart)
                        const float4 *s4 = (const float4 *)(ss + row * SS_LD + c0);
                        const float4 lo = s4[0], hi = s4[1];
                        const float sv[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
                        uint16_t pv[8];
#pragma unroll
                        for (int j = 0; j < 8; j++) {
                            int k = k0 + 16 * t + c0 + j;
                            float x = k < T ? scale * sv[j] + (mk ? mk[k] : 0.0f) : 0.0f;
                            if (pass == 0 && k < T)
                                mx = fmaxf(mx, x);
                            else if (pass == 1 && k < T)
                                sum += expf(x - mx);
                            pv[j] = pass == 2 ? to_half_bits(k < T ? expf(x - mx) * inv : 0.0f,
                                                             TYPE)
                                              : 0;
                        }
                        if (pass == 2) // one 16-byte store of the lane's 8 probabilities
                            *(uint4 *)(ps + row * 16 + c0) =
                                make_uint4(pv[0] | (unsigned)pv[1] << 16,
                                           pv[2] | (unsigned)pv[3] << 16,
                                           pv[4] | (unsigned)pv[5] << 16,
                                           pv[6] | (unsigned)pv[7] << 16);
                        if (pass == 2) {
                            __syncwarp();
                            wmma::fragment<wmma::matrix_a, 16, 16, 16, H, wmma::row_major> pa;
                            wmma::load_matrix_sync(pa, (const H *)ps, 16);
#pragma unroll
                            for (int i = 0; i < NCT; i++) {
                                int ct = g * NCT + i;
                                if (ct < col_tiles) {
                                    wmma::fragment<wmma::matrix_b, 16, 16, 16, H, wmma::row_major>
                                        vt;
                                    wmma::load_matrix_sync(
                                        vt, (const H *)(vs + (size_t)16 * t * hst + 16 * ct), hst);
                                    wmma::mma_sync(acc[i], pa, vt, acc[i]);
                                }
                            }
                        }
                        __syncwarp(); // ss and ps are the next tile's
                    }
                }
                if (!active || pass < 2)
                    continue;
                fused_store_out<TYPE, NCT, OUT16>(out, acc, ss, g, col_tiles, b, h, r0, T, C, HS,
                                                  lane);
            }
            if (active && pass == 0)
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
            if (active && pass == 1) {
                sum += __shfl_xor_sync(0xffffffffu, sum, 16);
                inv = (float)(1.0 / sum);
            }
        }
    }
}

template <int TYPE, class IN, bool OUT16>
static void attention_fused(cuda_ctx *c, void *out, const IN *qkv, const float *mask, int B,
                            int T, int NH, int HS, const fused_shape &f)
{
    const int tiles = f.hsp / 16, nct = tiles >= 8 ? 8 : tiles >= 4 ? 4 : tiles >= 2 ? 2 : 1;
    const float scale = 1.0f / sqrtf((float)HS);
    // 16-bit rows in 16-byte runs (fused_stage's wide loads): every head's start and row stride
    // are multiples of 8 halves when HS is
    const bool wide = sizeof(IN) == 2 && HS % 8 == 0 && (uintptr_t)qkv % 16 == 0;
    dim3 grid((unsigned)B * NH), block(32 * f.warps);
    if (nct == 8)
        attention_fused_kernel<TYPE, 8, IN, OUT16><<<grid, block, f.bytes, c->stream>>>(
            out, qkv, mask, T, NH, HS, f.hsp, f.stage_tiles, scale, wide);
    else if (nct == 4)
        attention_fused_kernel<TYPE, 4, IN, OUT16><<<grid, block, f.bytes, c->stream>>>(
            out, qkv, mask, T, NH, HS, f.hsp, f.stage_tiles, scale, wide);
    else if (nct == 2)
        attention_fused_kernel<TYPE, 2, IN, OUT16><<<grid, block, f.bytes, c->stream>>>(
            out, qkv, mask, T, NH, HS, f.hsp, f.stage_tiles, scale, wide);
    else
        attention_fused_kernel<TYPE, 1, IN, OUT16><<<grid, block, f.bytes, c->stream>>>(
            out, qkv, mask, T, NH, HS, f.hsp, f.stage_tiles, scale, wide);
    LAUNCHED(c, "attention_fused_kernel");
}

// ---- fused half attention with the score strip kept (the usual case)
//
// attention_fused_kernel's arithmetic, but each warp keeps its strip's scores [16, T] (fp32) in
// shared memory, so S = Q K^T is computed once instead of three times: the keys pass once (S),
// the softmax runs over the kept strip (x = scale s + mask in place; the row maximum; e =
// exp(x - max) in place with the sum in double; then half(e / sum) over the strip's own floats,
// 32 columns at a time, ascending, so a chunk's halves land only on floats already read), and the
// values pass once (O += P V, P read as halves from the strip). A block takes `warps` strips of
// one (sequence, head), grid B NH per_head, and stages K, then V, `keys` rows at a time.
// Shared memory: the stage [keys, hsp + FUSED_PAD] halves, then per warp its Q strip [16,
// hsp + FUSED_PAD] halves, its scores [16, lds] floats (lds = T rounded up to 16, plus 4: rows
// 16 bytes off a bank multiple) and an output tile [16, SS_LD] floats. Over 48 KiB it needs the
// opt-in strip_opt_in makes; sequences too long for one warp's strip within what the device
// allows take attention_fused_kernel.
#define STRIP_MAX_WARPS 4
#define STRIP_MAX_BYTES (112 * 1024) // two blocks an SM on an H100/H200 (228 KiB)
// The fewest warps an SM must hold for the strip kernel to be taken: a long sequence's strips
// (T 384 and up at a head of 64) leave 2 to 6, each stage then latency-bound with little to
// hide it, where the three-pass kernel keeps 16 an SM for three times the products.
#define STRIP_MIN_WARPS_PER_SM 8

__host__ __device__ static size_t strip_warp_bytes(int hsp, int lds)
{
    return (size_t)16 * (hsp + FUSED_PAD) * 2 + (size_t)16 * lds * 4 + 16 * SS_LD * 4;
}

// A lane's share of its strip row (the 16-column runs c0 = 16 half, 16 half + 32, ..., 16 bytes
// a read and a write), in place; columns past T (to tp) become 0. PASS 0: x = scale s + mask,
// their maximum into mx; PASS 1: e = exp(x - mx), their sum into sum.
template <int PASS>
__device__ __forceinline__ void strip_row_pass(float *sr, int half, int tp, int T, float scale,
                                               const float *mk, float &mx, double &sum)
{
    for (int c0 = 16 * half; c0 < tp; c0 += 32)
        for (int j = 0; j < 16; j += 4) {
            float4 v = *(float4 *)(sr + c0 + j);
            float x[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int i = 0; i < 4; i++) {
                int k = c0 + j + i;
                if (PASS == 0)
                    x[i] = k < T ? scale * x[i] + (mk ? mk[k] : 0.0f) : 0.0f;
                else
                    x[i] = k < T ? expf(x[i] - mx) : 0.0f;
                if (PASS == 0 && k < T)
                    mx = fmaxf(mx, x[i]);
                else if (k < T)
                    sum += x[i];
            }
            *(float4 *)(sr + c0 + j) = make_float4(x[0], x[1], x[2], x[3]);
        }
}

template <int TYPE, int NCT, class IN, bool OUT16>
__global__ void __launch_bounds__(32 * STRIP_MAX_WARPS)
    attention_strip_kernel(void *out, const IN *qkv, const float *mask, int T, int NH, int HS,
                           int hsp, int lds, int keys, int per_head, float scale, bool wide)
{
    using namespace nvcuda;
    typedef typename wmma_half<TYPE>::t H;
    extern __shared__ __align__(128) unsigned char strip_smem[];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    const int bh = blockIdx.x / per_head, b = bh / NH, h = bh % NH;
    const int C = NH * HS, C3 = 3 * C, tp = (T + 15) / 16 * 16;
    const int col_tiles = hsp / 16, groups = (col_tiles + NCT - 1) / NCT;
    const int r0 = (blockIdx.x % per_head * warps + warp) * 16;
    const bool active = r0 < T; // warp-uniform; idle warps still stage
    const IN *qb = qkv + (size_t)b * T * C3 + (size_t)h * HS, *kb = qb + C, *vb = qb + 2 * C;
    const float *mk = mask ? mask + (size_t)b * T : NULL;
    const int hst = hsp + FUSED_PAD;
    uint16_t *kv = (uint16_t *)strip_smem;
    unsigned char *mine =
        strip_smem + (size_t)keys * hst * 2 + (size_t)warp * strip_warp_bytes(hsp, lds);
    uint16_t *qs = (uint16_t *)mine;
    float *ss = (float *)(mine + (size_t)16 * hst * 2), *os = ss + (size_t)16 * lds;
    const uint16_t *ps = (const uint16_t *)ss; // the probabilities, rows 2 lds halves apart
    if (active)
        fused_stage(qs, qb, r0, 16, T, HS, hsp, C3, TYPE, lane, 32, wide);
    // S = Q K^T, a stage of keys at a time
    for (int k0 = 0; k0 < T; k0 += keys) {
        __syncthreads(); // every warp is done with the last stage (and qs is staged)
        fused_stage(kv, kb, k0, keys, T, HS, hsp, C3, TYPE, threadIdx.x, blockDim.x, wide);
        __syncthreads();
        if (!active)
            continue;
        for (int t = 0; t < keys / 16 && k0 + 16 * t < T; t++)
            fused_scores<H>(ss + k0 + 16 * t, lds, qs, kv + (size_t)16 * t * hst, hsp);
    }
    if (active) {
        // a lane's share of the strip: row `row`, 16 columns of every 32 (c0 = 16 half + 32 q)
        const int row = lane % 16, half = lane / 16;
        float *sr = ss + (size_t)row * lds;
        float mx = -INFINITY;
        double sum = 0.0;
        strip_row_pass<0>(sr, half, tp, T, scale, mk, mx, sum);
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
        strip_row_pass<1>(sr, half, tp, T, scale, mk, mx, sum);
        sum += __shfl_xor_sync(0xffffffffu, sum, 16);
        const float inv = (float)(1.0 / sum);
        // halves over the floats: chunk q's go to bytes [64 q, 64 q + 64) of the row, floats of
        // chunk q / 2 <= q, all read before (chunk 0's own before the first __syncwarp)
        for (int q = 0; q < (tp + 31) / 32; q++) {
            const int c0 = 32 * q + 16 * half;
            uint32_t pk[8];
            if (c0 < tp)
#pragma unroll
                for (int j = 0; j < 16; j += 4) { // 16-byte reads: 4 rows of a row's 8 banks
                    float4 e = *(const float4 *)(sr + c0 + j);
                    pk[j / 2] = to_half_bits(e.x * inv, TYPE) |
                                (uint32_t)to_half_bits(e.y * inv, TYPE) << 16;
                    pk[j / 2 + 1] = to_half_bits(e.z * inv, TYPE) |
                                    (uint32_t)to_half_bits(e.w * inv, TYPE) << 16;
                }
            __syncwarp();
            if (c0 < tp) {
                uint4 *dst = (uint4 *)((uint16_t *)sr + c0);
                dst[0] = make_uint4(pk[0], pk[1], pk[2], pk[3]);
                dst[1] = make_uint4(pk[4], pk[5], pk[6], pk[7]);
            }
            __syncwarp();
        }
    }
    // O = P V, a group of NCT column tiles at a time, a stage of values at a time
    for (int g = 0; g < groups; g++) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[NCT];
#pragma unroll
        for (int i = 0; i < NCT; i++)
            wmma::fill_fragment(acc[i], 0.0f);
        for (int k0 = 0; k0 < T; k0 += keys) {
            __syncthreads();
            fused_stage(kv, vb, k0, keys, T, HS, hsp, C3, TYPE, threadIdx.x, blockDim.x, wide);
            __syncthreads();
            if (!active)
                continue;
            for (int t = 0; t < keys / 16 && k0 + 16 * t < T; t++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, H, wmma::row_major> pa;
                wmma::load_matrix_sync(pa, (const H *)(ps + k0 + 16 * t), 2 * lds);
#pragma unroll
                for (int i = 0; i < NCT; i++) {
                    int ct = g * NCT + i;
                    if (ct < col_tiles) {
                        wmma::fragment<wmma::matrix_b, 16, 16, 16, H, wmma::row_major> vt;
                        wmma::load_matrix_sync(vt, (const H *)(kv + (size_t)16 * t * hst + 16 * ct),
                                               hst);
                        wmma::mma_sync(acc[i], pa, vt, acc[i]);
                    }
                }
            }
        }
        if (!active)
            continue;
        fused_store_out<TYPE, NCT, OUT16>(out, acc, os, g, col_tiles, b, h, r0, T, C, HS, lane);
    }
}

struct strip_shape {
    int hsp, lds, keys, warps, per_head;
    size_t bytes;
};

// The most warps (at most one per strip), then the longest stage (at most 128 keys), that fit
// in max_bytes; false when one warp's strip does not (long sequences), when the SM would hold
// fewer than STRIP_MIN_WARPS_PER_SM of them (sm_shared bytes an SM; 0: not checked), or when
// the head is wider than SHERL_ATTN_FUSED_MAX_HS.
static bool strip_plan(int T, int HS, size_t max_bytes, size_t sm_shared, strip_shape *f)
{
    if (HS > SHERL_ATTN_FUSED_MAX_HS)
        return false;
    const int tp = (T + 15) / 16 * 16, strips = tp / 16;
    f->hsp = (HS + 15) / 16 * 16;
    f->lds = tp + 4;
    const size_t per = strip_warp_bytes(f->hsp, f->lds);
    for (int w = STRIP_MAX_WARPS; w >= 1; w /= 2) {
        if (w > 1 && w > strips)
            continue;
        for (int keys = tp < 128 ? tp : 128; keys >= 16; keys = keys / 32 * 16) {
            size_t bytes = (size_t)keys * (f->hsp + FUSED_PAD) * 2 + (size_t)w * per;
            if (bytes <= max_bytes) {
                f->keys = keys, f->warps = w, f->per_head = (strips + w - 1) / w, f->bytes = bytes;
                // an SM keeps 1 KiB of its shared memory per block for the system
                size_t blocks = sm_shared ? sm_shared / (bytes + 1024) : STRIP_MIN_WARPS_PER_SM;
                return blocks * (size_t)w >= STRIP_MIN_WARPS_PER_SM;
            }
            if (keys == 16)
                break;
        }
    }
    return false;
}

template <int TYPE, int NCT, class IN, bool OUT16> static cudaError_t strip_allow(int bytes)
{
    return cudaFuncSetAttribute(attention_strip_kernel<TYPE, NCT, IN, OUT16>,
                                cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

template <int TYPE, class IN, bool OUT16> static cudaError_t strip_allow_all(int bytes)
{
    cudaError_t e = strip_allow<TYPE, 1, IN, OUT16>(bytes);
    if (e == cudaSuccess)
        e = strip_allow<TYPE, 2, IN, OUT16>(bytes);
    if (e == cudaSuccess)
        e = strip_allow<TYPE, 4, IN, OUT16>(bytes);
    if (e == cudaSuccess)
        e = strip_allow<TYPE, 8, IN, OUT16>(bytes);
    return e;
}

// Lets every attention_strip_kernel have STRIP_MAX_BYTES of shared memory, or what the device
// allows when less (the plan then takes shorter stages, fewer warps, or attention_fused_kernel);
// once per thread and device, outside any capture (the attribute is the function's on the
// device, so the threads' calls agree).
static void strip_opt_in(cuda_ctx *c)
{
    int optin = 0;
    if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, c->dev) !=
        cudaSuccess) {
        (void)cudaGetLastError();
        optin = 0;
    }
    int per_sm = 0;
    if (cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, c->dev) !=
        cudaSuccess) {
        (void)cudaGetLastError();
        per_sm = 0;
    }
    c->sm_shared = per_sm > 0 ? (size_t)per_sm : 0;
    // the device's opt-in within STRIP_MAX_BYTES; without one, what any launch may have
    int bytes = optin <= FUSED_MAX_BYTES ? FUSED_MAX_BYTES
                : optin < STRIP_MAX_BYTES ? optin
                                          : STRIP_MAX_BYTES;
    c->strip_bytes = FUSED_MAX_BYTES;
    // SHERL_CUDA_ATTN_STRIP=0: the three-pass kernel always; =N: at most N bytes a block (as a
    // device with less to opt in to), to time or check those plans
    const char *env = getenv("SHERL_CUDA_ATTN_STRIP");
    char *end = NULL;
    long cap = env ? strtol(env, &end, 10) : -1;
    if (env && (end == env || *end || cap < 0))
        cap = -1; // not a byte count: ignored
    if (cap == 0) {
        c->strip_bytes = 0;
        return;
    }
    if (cap > 0 && cap < bytes)
        bytes = (int)cap;
    if (bytes <= FUSED_MAX_BYTES) {
        c->strip_bytes = (size_t)bytes;
        return;
    }
    cudaError_t e = strip_allow_all<SHERL_HALF_BF16, float, false>(bytes);
    if (e == cudaSuccess)
        e = strip_allow_all<SHERL_HALF_F16, float, false>(bytes);
    if (e == cudaSuccess)
        e = strip_allow_all<SHERL_HALF_BF16, uint16_t, true>(bytes);
    if (e == cudaSuccess)
        e = strip_allow_all<SHERL_HALF_F16, uint16_t, true>(bytes);
    if (e == cudaSuccess)
        c->strip_bytes = (size_t)bytes;
    else
        (void)cudaGetLastError(); // 48 KiB then: a smaller plan, not a failure
}

template <int TYPE, class IN, bool OUT16>
static void attention_strip(cuda_ctx *c, void *out, const IN *qkv, const float *mask, int B,
                            int T, int NH, int HS, const strip_shape &f)
{
    const int tiles = f.hsp / 16, nct = tiles >= 8 ? 8 : tiles >= 4 ? 4 : tiles >= 2 ? 2 : 1;
    const float scale = 1.0f / sqrtf((float)HS);
    const bool wide = sizeof(IN) == 2 && HS % 8 == 0 && (uintptr_t)qkv % 16 == 0;
    dim3 grid((unsigned)B * NH * f.per_head), block(32 * f.warps);
    if (nct == 8)
        attention_strip_kernel<TYPE, 8, IN, OUT16><<<grid, block, f.bytes, c->stream>>>(
            out, qkv, mask, T, NH, HS, f.hsp, f.lds, f.keys, f.per_head, scale, wide);
    else if (nct == 4)
        attention_strip_kernel<TYPE, 4, IN, OUT16><<<grid, block, f.bytes, c->stream>>>(
            out, qkv, mask, T, NH, HS, f.hsp, f.lds, f.keys, f.per_head, scale, wide);
    else if (nct == 2)
        attention_strip_kernel<TYPE, 2, IN, OUT16><<<grid, block, f.bytes, c->stream>>>(
            out, qkv, mask, T, NH, HS, f.hsp, f.lds, f.keys, f.per_head, scale, wide);
    else
        attention_strip_kernel<TYPE, 1, IN, OUT16><<<grid, block, f.bytes, c->stream>>>(
            out, qkv, mask, T, NH, HS, f.hsp, f.lds, f.keys, f.per_head, scale, wide);
    LAUNCHED(c, "attention_strip_kernel");
}

// The fused attention: with the strip kept where one fits, else in three passes; heads wider
// than they take are a recorded error (the engine never sends them)
template <int TYPE, class IN, bool OUT16>
static void attention_fused_call(cuda_ctx *c, const char *op, void *out, const IN *qkv,
                                 const float *mask, int B, int T, int NH, int HS)
{
    if (!c->ready || B <= 0 || T <= 0 || NH <= 0 || HS <= 0)
        return;
    strip_shape sf;
    fused_shape f;
    if (strip_plan(T, HS, c->strip_bytes, c->sm_shared, &sf))
        attention_strip<TYPE, IN, OUT16>(c, out, qkv, mask, B, T, NH, HS, sf);
    else if (fused_plan(T, HS, &f))
        attention_fused<TYPE, IN, OUT16>(c, out, qkv, mask, B, T, NH, HS, f);
    else
        record(c, "cuda: %s takes heads of at most %d, not %d (ops_cuda.cu:%d)", op,
               SHERL_ATTN_FUSED_MAX_HS, HS, __LINE__);
}

static void cuda_attention_half_forward(float *out, float *probs, const float *qkv,
                                        const float *mask, int B, int T, int NH, int HS, int type)
{
    int half = type == SHERL_HALF_F16 ? SHERL_HALF_F16 : SHERL_HALF_BF16;
    if (probs) {
        attention_forward_any(out, probs, qkv, mask, B, T, NH, HS, half);
        return;
    }
    const char *op = "attention_half_forward without probabilities";
    if (half == SHERL_HALF_F16)
        attention_fused_call<SHERL_HALF_F16, float, false>(ctx(), op, out, qkv, mask, B, T, NH,
                                                           HS);
    else
        attention_fused_call<SHERL_HALF_BF16, float, false>(ctx(), op, out, qkv, mask, B, T, NH,
                                                            HS);
}

static void cuda_attention_half16_forward(uint16_t *out16, const uint16_t *qkv16,
                                          const float *mask, int B, int T, int NH, int HS,
                                          int type)
{
    const char *op = "attention_half16_forward";
    if (type == SHERL_HALF_F16)
        attention_fused_call<SHERL_HALF_F16, uint16_t, true>(ctx(), op, out16, qkv16, mask, B, T,
                                                             NH, HS);
    else
        attention_fused_call<SHERL_HALF_BF16, uint16_t, true>(ctx(), op, out16, qkv16, mask, B, T,
                                                              NH, HS);
}

// dS = scale * P (dP - rowsum(P dP)), in place in dp[B,hg,T,T] for heads h0 .. h0 + hg - 1 of
// probs[B,NH,T,T]: rows = B hg T, one warp a row.
__global__ void attention_dscores_kernel(float *dp, const float *probs, long long rows, int T,
                                         int NH, int hg, int h0, float scale)
{
    long long row = (long long)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows)
        return;
    long long per_b = (long long)hg * T, b = row / per_b, r = row % per_b; // r = g T + i
    const float *p = probs + ((b * NH + h0) * T + r) * T;
    float *d = dp + row * T;
    double dot = 0.0;
    for (int j = lane; j < T; j += 32)
        dot += (double)d[j] * p[j];
    float fd = (float)warp_sum(dot);
    for (int j = lane; j < T; j += 32)
        d[j] = scale * p[j] * (d[j] - fd);
}

// The heads in groups whose dP fits in the scratch prepare reserved (all of them at the
// engine's shapes; one at a time where the thread has less than one head needs, the scratch
// then growing to that), each group in six launches whatever B: the pointer arrays,
// dP = dO V^T, dV += P^T dO, dS, dQ += dS K, dK += dS^T Q.
static void cuda_attention_backward(float *dqkv, const float *dout, const float *qkv,
                                    const float *probs, int B, int T, int NH, int HS)
{
    cuda_ctx *c = ctx();
    if (!c->ready || B <= 0 || T <= 0 || NH <= 0 || HS <= 0 || !blas_ready(c))
        return;
    size_t have = c->scratch_bytes, one = attention_backward_bytes(B, T, 1);
    if (have < one)
        have = one;
    int hg = NH;
    while (hg > 1 && attention_backward_bytes(B, T, hg) > have)
        hg--;
    char *s = (char *)scratch(c, attention_backward_bytes(B, T, hg));
    if (!s)
        return;
    float *dp = (float *)s;
    const float **ptr = (const float **)(s + round256(sizeof(float) * (size_t)B * hg * T * T));
    const int C = NH * HS, C3 = 3 * C;
    const long long sq = (long long)T * C3, sp = (long long)NH * T * T, so = (long long)T * C,
                    sd = (long long)T * T;
    const float scale = 1.0f / sqrtf((float)HS);
    for (int h0 = 0; h0 < NH; h0 += hg) {
        const int g = NH - h0 < hg ? NH - h0 : hg, n = B * g;
        const long long o = (long long)h0 * HS; // the group's first head in q|k|v and dout
        attention_blocks a = {
            {dout + o, qkv + 2 * C + o, dp, probs + h0 * sd, dqkv + 2 * C + o, qkv + C + o,
             dqkv + o, qkv + o, dqkv + C + o},
            {so, sq, g * sd, sp, sq, sq, sq, sq, sq},
            {HS, HS, sd, sd, HS, HS, HS, HS, HS}};
        if (attention_ptrs(c, ptr, a, ATTN_BWD_ARRAYS, g, n))
            return;
        const float *const *dy = ptr, *const *v = ptr + n, *const *ds = ptr + 2 * n,
                           *const *p = ptr + 3 * n, *const *dv = ptr + 4 * n,
                           *const *k = ptr + 5 * n, *const *dq = ptr + 6 * n,
                           *const *q = ptr + 7 * n, *const *dk = ptr + 8 * n;
        // dP = dO V^T;  dV += P^T dO
        gemm_ptr_batched(c, 0, 1, T, T, HS, dy, C, v, C3, 0.0f, (float *const *)ds, T, n,
                         fp32_compute(c));
        gemm_ptr_batched(c, 1, 0, T, HS, T, p, T, dy, C, 1.0f, (float *const *)dv, C3, n,
                         fp32_compute(c));
        long long rows = (long long)n * T;
        attention_dscores_kernel<<<long_row_blocks(rows), 256, 0, c->stream>>>(
            dp, probs, rows, T, NH, g, h0, scale);
        if (LAUNCHED(c, "attention_dscores_kernel"))
            return;
        // dQ += dS K;  dK += dS^T Q
        gemm_ptr_batched(c, 0, 0, T, HS, T, ds, T, k, C3, 1.0f, (float *const *)dq, C3, n,
                         fp32_compute(c));
        gemm_ptr_batched(c, 1, 0, T, HS, T, ds, T, q, C3, 1.0f, (float *const *)dk, C3, n,
                         fp32_compute(c));
    }
}

// ------------------------------------------------------------------------------------------
// embedding, pooling, normalisation

__global__ void embedding_forward_kernel(float *out, const int32_t *ids, const float *table,
                                         size_t n, int C)
{
    GRID_STRIDE(i, n) out[i] = table[(size_t)ids[i / C] * C + i % C];
}

__global__ void embedding_forward_bf16_kernel(float *out, const int32_t *ids,
                                              const uint16_t *table, size_t n, int C)
{
    GRID_STRIDE(i, n) out[i] = sherl_bf16_to_f32(table[(size_t)ids[i / C] * C + i % C]);
}

__global__ void embedding_forward_f16_kernel(float *out, const int32_t *ids,
                                             const uint16_t *table, size_t n, int C)
{
    GRID_STRIDE(i, n) out[i] = sherl_f16_to_f32(table[(size_t)ids[i / C] * C + i % C]);
}

__global__ void embedding_backward_kernel(float *dtable, const float *dout, const int32_t *ids,
                                          size_t n, int C)
{
    // Rows may repeat an id: an atomic add is the one ordering-dependent sum in this backend.
    GRID_STRIDE(i, n) atomicAdd(&dtable[(size_t)ids[i / C] * C + i % C], dout[i]);
}

static void cuda_embedding_forward(float *out, const int32_t *ids, const float *table, int N,
                                   int C)
{
    size_t n = N > 0 && C > 0 ? (size_t)N * C : 0;
    ELEMENTWISE(embedding_forward_kernel, n, out, ids, table, n, C);
}

static void cuda_embedding_forward_bf16(float *out, const int32_t *ids, const uint16_t *table,
                                       int N, int C)
{
    size_t n = N > 0 && C > 0 ? (size_t)N * C : 0;
    ELEMENTWISE(embedding_forward_bf16_kernel, n, out, ids, table, n, C);
}

static void cuda_embedding_forward_f16(float *out, const int32_t *ids, const uint16_t *table,
                                      int N, int C)
{
    size_t n = N > 0 && C > 0 ? (size_t)N * C : 0;
    ELEMENTWISE(embedding_forward_f16_kernel, n, out, ids, table, n, C);
}

static void cuda_embedding_backward(float *dtable, const float *dout, const int32_t *ids, int N,
                                    int C)
{
    size_t n = N > 0 && C > 0 ? (size_t)N * C : 0;
    ELEMENTWISE(embedding_backward_kernel, n, dtable, dout, ids, n, C);
}

// 1 / max(number of real tokens of row b, 1e-9), counted by the whole block.
__device__ float block_inv_token_count(const int32_t *mask_row, int T)
{
    __shared__ int count;
    if (threadIdx.x == 0)
        count = 0;
    __syncthreads();
    int local = 0;
    for (int t = threadIdx.x; t < T; t += blockDim.x)
        local += mask_row[t] != 0;
    atomicAdd(&count, local); // integers: exact in any order
    __syncthreads();
    int cnt = count;
    __syncthreads(); // everyone has read count before any later reset of it
    return (float)(1.0 / (cnt > 0 ? (double)cnt : 1e-9));
}

// One block per batch row.
__global__ void mean_pool_forward_kernel(float *out, const float *inp, const int32_t *mask, int T,
                                         int C)
{
    int b = blockIdx.x;
    const int32_t *mk = mask + (size_t)b * T;
    float inv = block_inv_token_count(mk, T);
    for (int col = threadIdx.x; col < C; col += blockDim.x) {
        double s = 0.0;
        for (int t = 0; t < T; t++)
            if (mk[t])
                s += inp[((size_t)b * T + t) * C + col];
        out[(size_t)b * C + col] = (float)s * inv;
    }
}

__global__ void mean_pool_backward_kernel(float *dinp, const float *dout, const int32_t *mask,
                                          int T, int C)
{
    int b = blockIdx.x;
    const int32_t *mk = mask + (size_t)b * T;
    float inv = block_inv_token_count(mk, T);
    for (size_t i = threadIdx.x; i < (size_t)T * C; i += blockDim.x) {
        size_t t = i / C, col = i % C;
        if (mk[t])
            dinp[((size_t)b * T + t) * C + col] += dout[(size_t)b * C + col] * inv;
    }
}

static void cuda_mean_pool_forward(float *out, const float *inp, const int32_t *mask, int B,
                                   int T, int C)
{
    cuda_ctx *c = ctx();
    if (!c->ready || B <= 0 || C <= 0)
        return;
    mean_pool_forward_kernel<<<B, 256, 0, c->stream>>>(out, inp, mask, T, C);
    LAUNCHED(c, "mean_pool_forward_kernel");
}

static void cuda_mean_pool_backward(float *dinp, const float *dout, const int32_t *mask, int B,
                                    int T, int C)
{
    cuda_ctx *c = ctx();
    if (!c->ready || B <= 0 || C <= 0 || T <= 0)
        return;
    mean_pool_backward_kernel<<<B, 256, 0, c->stream>>>(dinp, dout, mask, T, C);
    LAUNCHED(c, "mean_pool_backward_kernel");
}

__global__ void l2norm_forward_kernel(float *out, const float *inp, int N, int C, float eps)
{
    int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N)
        return;
    const float *x = inp + (size_t)row * C;
    double ss = 0.0;
    for (int i = lane; i < C; i += 32)
        ss += (double)x[i] * x[i];
    double nrm = sqrt(warp_sum(ss));
    float inv = (float)(1.0 / (nrm > eps ? nrm : (double)eps));
    for (int i = lane; i < C; i += 32)
        out[(size_t)row * C + i] = x[i] * inv;
}

__global__ void l2norm_backward_kernel(float *dinp, const float *dout, const float *inp, int N,
                                       int C, float eps)
{
    int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N)
        return;
    const float *x = inp + (size_t)row * C, *dy = dout + (size_t)row * C;
    float *dx = dinp + (size_t)row * C;
    double ss = 0.0, xdy = 0.0;
    for (int i = lane; i < C; i += 32) {
        ss += (double)x[i] * x[i];
        xdy += (double)x[i] * dy[i];
    }
    double nrm = sqrt(warp_sum(ss));
    xdy = warp_sum(xdy);
    if (nrm > eps) {
        // y = x/|x|: dx = (dy - y (y . dy)) / |x|
        double ydy = xdy / nrm;
        for (int i = lane; i < C; i += 32)
            dx[i] += (float)((dy[i] - (x[i] / nrm) * ydy) / nrm);
    } else {
        for (int i = lane; i < C; i += 32)
            dx[i] += dy[i] / eps;
    }
}

static void cuda_l2norm_forward(float *out, const float *inp, int N, int C, float eps)
{
    cuda_ctx *c = ctx();
    if (!c->ready || N <= 0 || C <= 0)
        return;
    l2norm_forward_kernel<<<row_blocks(N), 256, 0, c->stream>>>(out, inp, N, C, eps);
    LAUNCHED(c, "l2norm_forward_kernel");
}

static void cuda_l2norm_backward(float *dinp, const float *dout, const float *inp, int N, int C,
                                 float eps)
{
    cuda_ctx *c = ctx();
    if (!c->ready || N <= 0 || C <= 0)
        return;
    l2norm_backward_kernel<<<row_blocks(N), 256, 0, c->stream>>>(dinp, dout, inp, N, C, eps);
    LAUNCHED(c, "l2norm_backward_kernel");
}

// ------------------------------------------------------------------------------------------
// deterministic reductions: sum x[i] y[i] (y NULL: x[i]^2) in fixed chunks of RED_CHUNK, one
// block per chunk, then the chunk sums in order by one block; the total stays on the device.

#define RED_THREADS 256

__device__ double block_sum(double v)
{
    __shared__ double part[RED_THREADS / 32];
    v = warp_sum(v);
    if (threadIdx.x % 32 == 0)
        part[threadIdx.x / 32] = v;
    __syncthreads();
    double s = 0.0;
    if (threadIdx.x == 0)
        for (int w = 0; w < (int)(blockDim.x / 32); w++)
            s += part[w];
    __syncthreads();
    return s; // meaningful in thread 0
}

__global__ void chunk_dot_kernel(double *partial, const float *x, const float *y, size_t n)
{
    size_t lo = (size_t)blockIdx.x * RED_CHUNK, hi = lo + RED_CHUNK < n ? lo + RED_CHUNK : n;
    double s = 0.0;
    for (size_t i = lo + threadIdx.x; i < hi; i += blockDim.x)
        s += y ? (double)x[i] * y[i] : (double)x[i] * x[i];
    s = block_sum(s);
    if (threadIdx.x == 0)
        partial[blockIdx.x] = s;
}

__global__ void sum_partials_kernel(double *total, const double *partial, size_t count)
{
    double s = 0.0;
    for (size_t i = threadIdx.x; i < count; i += blockDim.x)
        s += partial[i];
    s = block_sum(s);
    if (threadIdx.x == 0)
        *total = s;
}

// Leaves the sum in the last slot of the returned scratch (NULL on failure).
static double *device_dot(cuda_ctx *c, const float *x, const float *y, size_t n)
{
    size_t chunks = (n + RED_CHUNK - 1) / RED_CHUNK;
    double *part = (double *)scratch(c, reduce_scratch(n));
    if (!part)
        return NULL;
    if (chunks) {
        chunk_dot_kernel<<<(unsigned)chunks, RED_THREADS, 0, c->stream>>>(part, x, y, n);
        LAUNCHED(c, "chunk_dot_kernel");
    }
    sum_partials_kernel<<<1, RED_THREADS, 0, c->stream>>>(part + chunks, part, chunks);
    LAUNCHED(c, "sum_partials_kernel");
    return part + chunks;
}

static double cuda_sumsq(const float *x, size_t n)
{
    cuda_ctx *c = ctx();
    double total = 0.0;
    if (!c->ready || !n)
        return 0.0;
    const double *d = device_dot(c, x, NULL, n);
    if (!d)
        return 0.0;
    if (!CK(c, cudaMemcpyAsync(&total, d, sizeof total, cudaMemcpyDeviceToHost, c->stream)))
        CK(c, cudaStreamSynchronize(c->stream));
    return total;
}

// ------------------------------------------------------------------------------------------
// tanh gate

__global__ void gate_add_forward_kernel(float *out, const float *y, const float *h,
                                        const float *lambda, float temp, size_t n)
{
    const float gate = (float)tanh((double)lambda[0] / temp);
    GRID_STRIDE(i, n) out[i] = y[i] + gate * h[i];
}

__global__ void gate_lambda_grad_kernel(float *dlambda, const double *dot, const float *lambda,
                                        float temp)
{
    double th = tanh((double)lambda[0] / temp);
    dlambda[0] += (float)(*dot * (1.0 - th * th) / temp);
}

static void cuda_gate_add_forward(float *out, const float *y, const float *h, const float *lambda,
                                  float temp, size_t n)
{
    ELEMENTWISE(gate_add_forward_kernel, n, out, y, h, lambda, temp, n);
}

static void cuda_gate_add_backward(float *dy, float *dlambda, const float *dout, const float *h,
                                   const float *lambda, float temp, size_t n)
{
    cuda_ctx *c = ctx();
    if (!c->ready || !n)
        return;
    if (dy) {
        residual_backward_kernel<<<grid_for(n, 256), 256, 0, c->stream>>>(dy, NULL, dout, n);
        LAUNCHED(c, "residual_backward_kernel");
    }
    if (dlambda) {
        const double *dot = device_dot(c, dout, h, n);
        if (!dot)
            return;
        gate_lambda_grad_kernel<<<1, 1, 0, c->stream>>>(dlambda, dot, lambda, temp);
        LAUNCHED(c, "gate_lambda_grad_kernel");
    }
}

// ------------------------------------------------------------------------------------------
// SHERL guidance (kernels.h; the CPU version in ops_cpu.c has the derivation)
//
// Forward: one block per token. Its warps share out the dot products of the token (the Gram
// matrix of the S shallow taps and the S scores), each in double over the feature dim; one
// thread does the S x S scalar work; then the threads combine the taps feature by feature.
// Backward: one block per chunk of MTSA_CHUNK tokens, taken in order, so that each thread
// adds its features' dw terms into the chunk's own slot in the order the CPU does; the chunk
// slots are then summed in a fixed order, 64 at a time and then those sums (two more kernels;
// no atomics: the same bits each run).

#define MTSA_THREADS 128

// Shared layout for S shallow taps: G[S*S], M[S*S], then 8 vectors of S (all double).
static size_t mtsa_shared_bytes(int S) { return (2 * (size_t)S * S + 8 * (size_t)S) * sizeof(double); }

// The token's dots, shared out among the warps: G[j,m] = x_j . x_m (m >= j, mirrored), and
// extra[j] = x_j . v for v = (mode 0) w * g, or (mode 1) dz.
__device__ void mtsa_token_dots(double *G, double *extra, const float *x, size_t tap, int S, int d,
                                const float *w, const float *g, const float *dz, int mode)
{
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    const int pairs = S * (S + 1) / 2;
    for (int task = warp; task < pairs + S; task += warps) {
        double s = 0.0;
        if (task < pairs) {
            int j = 0, r = task; // task -> (j, m), m >= j, row by row
            while (r >= S - j) {
                r -= S - j;
                j++;
            }
            int m = j + r;
            const float *a = x + (size_t)j * tap, *b = x + (size_t)m * tap;
            for (int e = lane; e < d; e += 32)
                s += (double)a[e] * b[e];
            s = warp_sum(s);
            if (lane == 0)
                G[j * S + m] = G[m * S + j] = s;
        } else {
            int j = task - pairs;
            const float *a = x + (size_t)j * tap;
            for (int e = lane; e < d; e += 32)
                s += mode == 0 ? a[e] * ((double)w[e] * g[e]) : (double)dz[e] * a[e];
            s = warp_sum(s);
            if (lane == 0)
                extra[j] = s;
        }
    }
}

__global__ void mtsa_forward_kernel(float *z, float *s_out, float *rho_out, float *alpha_out,
                                    const float *x, const float *w, const float *cptr, int S,
                                    int N, int d)
{
    extern __shared__ double sh[];
    double *G = sh, *inv = G + 2 * (size_t)S * S, *sv = inv + S, *al = sv + S;
    const int n = blockIdx.x;
    const size_t tap = (size_t)N * d;
    const float *xt = x + (size_t)n * d, *g = xt + (size_t)S * tap;
    mtsa_token_dots(G, sv, xt, tap, S, d, w, g, NULL, 0);
    __syncthreads();
    if (threadIdx.x == 0) {
        const double c0 = cptr ? cptr[0] : 0.0f;
        for (int j = 0; j < S; j++)
            inv[j] = 1.0 / (sqrt(G[j * S + j]) + MTSA_EPS);
        double asum = 0.0;
        for (int j = 0; j < S; j++) {
            double rho = 0.0;
            for (int m = 0; m < S; m++) {
                double cs = G[j * S + m] * inv[j] * inv[m];
                rho += cs > 0.0 ? cs : 0.0;
            }
            double s = c0 + sv[j];
            double a = (s > 0.0 ? s : 0.0) / rho;
            al[j] = a;
            asum += fabs(a);
            s_out[(size_t)n * S + j] = (float)s;
            rho_out[(size_t)n * S + j] = (float)rho;
        }
        double A = asum + MTSA_EPS;
        for (int j = 0; j < S; j++) {
            al[j] /= A;
            alpha_out[(size_t)n * S + j] = (float)al[j];
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < d; e += blockDim.x) {
        double acc = g[e];
        for (int j = 0; j < S; j++)
            acc += al[j] * xt[(size_t)j * tap + e];
        z[(size_t)n * d + e] = (float)acc;
    }
}

__global__ void mtsa_backward_kernel(float *dx, double *part, const float *dz, const float *x,
                                     const float *w, const float *s_in, const float *rho_in,
                                     const float *alpha_in, int S, int N, int d)
{
    extern __shared__ double sh[];
    double *G = sh, *M = G + (size_t)S * S, *inv = M + (size_t)S * S, *dal = inv + S,
           *ds = dal + S, *q = ds + S, *al = q + S, *a = al + S, *drho = a + S, *dcs = drho + S;
    const size_t tap = (size_t)N * d;
    const int lo = blockIdx.x * MTSA_CHUNK, hi = lo + MTSA_CHUNK < N ? lo + MTSA_CHUNK : N;
    double *slot = part ? part + (size_t)blockIdx.x * (d + 1) : NULL;
    for (int n = lo; n < hi; n++) {
        const float *xt = x + (size_t)n * d, *g = xt + (size_t)S * tap, *dzt = dz + (size_t)n * d;
        const float *s = s_in + (size_t)n * S, *rho = rho_in + (size_t)n * S,
                    *alpha = alpha_in + (size_t)n * S;
        mtsa_token_dots(G, dal, xt, tap, S, d, NULL, NULL, dzt, 1);
        __syncthreads();
        if (threadIdx.x == 0) {
            // alpha_j = a_j / A: da_j = (dalpha_j - sign(a_j) sum_m dalpha_m alpha_m) / A;
            // a_j = relu(s_j) / rho_j: ds_j = [s_j > 0] da_j / rho_j, drho_j = -da_j a_j / rho_j
            double asum = 0.0, t = 0.0, dc_sum = 0.0;
            for (int j = 0; j < S; j++) {
                t += dal[j] * alpha[j];
                a[j] = (s[j] > 0.0f ? (double)s[j] : 0.0) / rho[j];
                asum += fabs(a[j]);
            }
            double A = asum + MTSA_EPS;
            for (int j = 0; j < S; j++) {
                double sg = a[j] > 0.0 ? 1.0 : (a[j] < 0.0 ? -1.0 : 0.0);
                double da = (dal[j] - sg * t) / A;
                ds[j] = s[j] > 0.0f ? da / rho[j] : 0.0;
                drho[j] = -da * a[j] / rho[j];
                dc_sum += ds[j];
                al[j] = alpha[j];
            }
            dcs[0] = dc_sum;
            // through the cosines of rho: M[j,m] and q_j as in ops_cpu.c
            for (int j = 0; j < S; j++)
                inv[j] = 1.0 / (sqrt(G[j * S + j]) + MTSA_EPS);
            for (int j = 0; j < S; j++) {
                double nrm = sqrt(G[j * S + j]), dxh_dot_x = 0.0;
                for (int m = 0; m < S; m++) {
                    double cs = G[j * S + m] * inv[j] * inv[m];
                    double cm = cs > 0.0 ? (drho[j] + drho[m]) * inv[m] : 0.0;
                    dxh_dot_x += cm * G[j * S + m];
                    M[j * S + m] = inv[j] * cm;
                }
                q[j] = nrm > 0.0 ? -dxh_dot_x * inv[j] * inv[j] / nrm : 0.0;
            }
        }
        __syncthreads();
        for (int e = threadIdx.x; e < d; e += blockDim.x) {
            double u = 0.0;
            for (int j = 0; j < S; j++)
                u += ds[j] * xt[(size_t)j * tap + e];
            if (slot)
                slot[e] += (double)g[e] * u;
            if (dx) {
                float *dxt = dx + (size_t)n * d;
                dxt[(size_t)S * tap + e] += (float)((double)dzt[e] + (double)w[e] * u);
                double wg = (double)w[e] * g[e];
                for (int j = 0; j < S; j++) {
                    double acc = al[j] * dzt[e] + ds[j] * wg + q[j] * xt[(size_t)j * tap + e];
                    for (int m = 0; m < S; m++)
                        acc += M[(size_t)j * S + m] * xt[(size_t)m * tap + e];
                    dxt[(size_t)j * tap + e] += (float)acc;
                }
            }
        }
        if (slot && threadIdx.x == 0)
            slot[d] += dcs[0];
        __syncthreads(); // the shared arrays are the next token's
    }
}

// part[rows, d + 1] -> out[ceil(rows / MTSA_SUM_ROWS), d + 1]: block b sums rows
// b * MTSA_SUM_ROWS ... of each column, in order. The parameter gradient then sums a few hundred
// rows instead of one per token (a serial sum over N rows by d + 1 threads took most of the
// backward's time), in a fixed order: the same bits each run.
__global__ void mtsa_part_sum_kernel(double *out, const double *part, int rows, int d)
{
    const int r0 = blockIdx.x * MTSA_SUM_ROWS,
              r1 = r0 + MTSA_SUM_ROWS < rows ? r0 + MTSA_SUM_ROWS : rows;
    for (int e = threadIdx.x; e <= d; e += blockDim.x) {
        double acc = 0.0;
        for (int r = r0; r < r1; r++)
            acc += part[(size_t)r * (d + 1) + e];
        out[(size_t)blockIdx.x * (d + 1) + e] = acc;
    }
}

__global__ void mtsa_param_grad_kernel(float *dw, float *dc, const double *part, int chunks, int d)
{
    GRID_STRIDE(e, (size_t)d + 1)
    {
        double acc = 0.0;
        for (int ch = 0; ch < chunks; ch++)
            acc += part[(size_t)ch * (d + 1) + e];
        if ((int)e < d && dw)
            dw[e] += (float)acc;
        else if ((int)e == d && dc)
            dc[0] += (float)acc;
    }
}

static int mtsa_check(cuda_ctx *c, int S, int d)
{
    size_t sh = mtsa_shared_bytes(S);
    if (sh > 48 * 1024) {
        record(c, "cuda: mtsa_guide with %d taps needs %zu bytes of shared memory (limit 48 KiB)",
               S + 1, sh);
        return -1;
    }
    (void)d;
    return 0;
}

static void cuda_mtsa_guide_forward(float *z, float *s, float *rho, float *alpha, const float *x,
                                    const float *w, const float *cptr, int K, int N, int d)
{
    cuda_ctx *c = ctx();
    const int S = K - 1;
    if (!c->ready || S < 1 || N <= 0 || d <= 0 || mtsa_check(c, S, d))
        return;
    mtsa_forward_kernel<<<N, MTSA_THREADS, mtsa_shared_bytes(S), c->stream>>>(
        z, s, rho, alpha, x, w, cptr, S, N, d);
    LAUNCHED(c, "mtsa_forward_kernel");
}

static void cuda_mtsa_guide_backward(float *dx, float *dw, float *dc, const float *dz,
                                     const float *x, const float *w, const float *s,
                                     const float *rho, const float *alpha, int K, int N, int d)
{
    cuda_ctx *c = ctx();
    const int S = K - 1;
    if (!c->ready || S < 1 || N <= 0 || d <= 0 || (!dx && !dw && !dc) || mtsa_check(c, S, d))
        return;
    const int chunks = (N + MTSA_CHUNK - 1) / MTSA_CHUNK;
    double *part = NULL;
    if (dw || dc) {
        part = (double *)scratch(c, mtsa_scratch(N, d));
        if (!part ||
            CK(c, cudaMemsetAsync(part, 0, sizeof(double) * (size_t)chunks * (d + 1), c->stream)))
            return;
    }
    mtsa_backward_kernel<<<chunks, MTSA_THREADS, mtsa_shared_bytes(S), c->stream>>>(
        dx, part, dz, x, w, s, rho, alpha, S, N, d);
    LAUNCHED(c, "mtsa_backward_kernel");
    if (part) {
        double *sums = part + round256(sizeof(double) * mtsa_part_rows(N) * (d + 1)) /
                                  sizeof(double);
        const int rows = (int)mtsa_sum_rows(N);
        mtsa_part_sum_kernel<<<rows, 128, 0, c->stream>>>(sums, part, chunks, d);
        LAUNCHED(c, "mtsa_part_sum_kernel");
        mtsa_param_grad_kernel<<<grid_for((size_t)d + 1, 128), 128, 0, c->stream>>>(dw, dc, sums,
                                                                                   rows, d);
        LAUNCHED(c, "mtsa_param_grad_kernel");
    }
}

// ------------------------------------------------------------------------------------------
// losses

// One warp per row, in double as the CPU.
__global__ void crossentropy_forward_kernel(float *losses, float *probs, const float *logits,
                                            const int32_t *labels, int B, int C)
{
    int b = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (b >= B)
        return;
    const float *x = logits + (size_t)b * C;
    float mxf = -INFINITY;
    for (int i = lane; i < C; i += 32)
        mxf = fmaxf(mxf, x[i]);
    double mx = warp_max(mxf);
    double sum = 0.0;
    for (int i = lane; i < C; i += 32)
        sum += exp((double)x[i] - mx);
    double lse = log(warp_sum(sum));
    for (int i = lane; i < C; i += 32)
        probs[(size_t)b * C + i] = (float)exp((double)x[i] - mx - lse);
    if (lane == 0)
        losses[b] = (float)(lse - ((double)x[labels[b]] - mx));
}

__global__ void crossentropy_backward_kernel(float *dlogits, const float *probs,
                                             const int32_t *labels, float scale, size_t n, int C)
{
    GRID_STRIDE(i, n)
    {
        int b = (int)(i / C), col = (int)(i % C);
        dlogits[i] += scale * (probs[i] - (col == labels[b] ? 1.0f : 0.0f));
    }
}

__global__ void mse_forward_kernel(float *losses, const float *pred, const float *target, size_t n)
{
    GRID_STRIDE(i, n)
    {
        float r = pred[i] - target[i];
        losses[i] = r * r;
    }
}

__global__ void mse_backward_kernel(float *dpred, const float *pred, const float *target,
                                    float scale, size_t n)
{
    GRID_STRIDE(i, n) dpred[i] += scale * 2.0f * (pred[i] - target[i]);
}

static void cuda_crossentropy_forward(float *losses, float *probs, const float *logits,
                                      const int32_t *labels, int B, int C)
{
    cuda_ctx *c = ctx();
    if (!c->ready || B <= 0 || C <= 0)
        return;
    crossentropy_forward_kernel<<<row_blocks(B), 256, 0, c->stream>>>(losses, probs, logits,
                                                                       labels, B, C);
    LAUNCHED(c, "crossentropy_forward_kernel");
}

static void cuda_crossentropy_backward(float *dlogits, const float *probs, const int32_t *labels,
                                       float scale, int B, int C)
{
    size_t n = B > 0 && C > 0 ? (size_t)B * C : 0;
    ELEMENTWISE(crossentropy_backward_kernel, n, dlogits, probs, labels, scale, n, C);
}

static void cuda_mse_forward(float *losses, const float *pred, const float *target, int B)
{
    size_t n = B > 0 ? (size_t)B : 0;
    ELEMENTWISE(mse_forward_kernel, n, losses, pred, target, n);
}

static void cuda_mse_backward(float *dpred, const float *pred, const float *target, float scale,
                              int B)
{
    size_t n = B > 0 ? (size_t)B : 0;
    ELEMENTWISE(mse_backward_kernel, n, dpred, pred, target, scale, n);
}

// ------------------------------------------------------------------------------------------
// optimizer

// torch.optim.AdamW's order of float operations, as the CPU backend; the _rn intrinsics keep
// nvcc from fusing multiply-adds, so both backends round the same way.
__global__ void adamw_kernel(float *param, const float *grad, float *m, float *v, size_t n,
                             float decay, float b1, float b2, float one_b1, float one_b2,
                             float neg_step, float bc2_sqrt, float eps)
{
    GRID_STRIDE(i, n)
    {
        float g = grad[i];
        float p = __fmul_rn(param[i], decay);
        float mi = __fadd_rn(__fmul_rn(m[i], b1), __fmul_rn(one_b1, g));
        float vi = __fadd_rn(__fmul_rn(v[i], b2), __fmul_rn(__fmul_rn(one_b2, g), g));
        float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
        m[i] = mi;
        v[i] = vi;
        param[i] = __fadd_rn(p, __fdiv_rn(__fmul_rn(neg_step, mi), denom));
    }
}

static void cuda_adamw_update(float *param, const float *grad, float *m, float *v, size_t n,
                              float lr, float beta1, float beta2, float eps, float weight_decay,
                              int t)
{
    const float decay = (float)(1.0 - (double)lr * weight_decay);
    const float one_b1 = (float)(1.0 - (double)beta1), one_b2 = (float)(1.0 - (double)beta2);
    const double bc1 = 1.0 - pow((double)beta1, t), bc2 = 1.0 - pow((double)beta2, t);
    const float neg_step = (float)(-((double)lr / bc1));
    const float bc2_sqrt = (float)sqrt(bc2);
    ELEMENTWISE(adamw_kernel, n, param, grad, m, v, n, decay, beta1, beta2, one_b1, one_b2,
                neg_step, bc2_sqrt, eps);
}

// ------------------------------------------------------------------------------------------
// the table

static sherl_backend cuda_backends[SHERL_CUDA_MAX_DEVICES];
static int cuda_usable[SHERL_CUDA_MAX_DEVICES];

// C++17 has no designated initialisers: the table is filled by name, once per device, each
// entry the op wrapped to run on device D.
template <int D> static void cuda_backend_fill(sherl_backend *t)
{
#define OP(f) t->f = on_device<D, decltype(&cuda_##f), &cuda_##f>::call
#define SELECT(f) t->f = on_device<D, decltype(&cuda_##f), &cuda_##f>::select
    t->name = "cuda";
    t->device = D;
    OP(alloc);
    OP(free);
    OP(copy_to_device);
    OP(copy_to_host);
    OP(zero);
    OP(synchronize);
    SELECT(set_threads);
    SELECT(get_threads);
    SELECT(describe);
    SELECT(performance_advice);
    t->host_memory = 0;
    SELECT(scratch_bytes);
    SELECT(library_bytes);
    OP(prepare);
    SELECT(take_error);
    OP(mem_info);
    OP(copy_device);
    SELECT(allow_tf32);
    OP(capture_begin);
    OP(capture_end);
    OP(graph_launch);
    OP(graph_free);
    OP(gemm);
    OP(gemm_strided_batched);
    OP(gemm_bf16);
    OP(gemm_bf16_strided_batched);
    OP(gemm_f16_strided_batched);
    OP(f32_to_bf16);
    OP(bf16_to_f32);
    OP(matmul_forward);
    OP(matmul_backward);
    OP(bias_add_forward);
    OP(bias_add_backward);
    OP(layernorm_forward);
    OP(residual_layernorm_forward);
    OP(layernorm_backward);
    OP(bias_add_grouped_forward);
    OP(bias_add_grouped_backward);
    OP(layernorm_grouped_forward);
    OP(layernorm_grouped_backward);
    OP(gelu_forward);
    OP(gelu_backward);
    OP(bias_gelu_half_forward);
    OP(bias_half_round_forward);
    OP(softmax_forward);
    OP(softmax_backward);
    OP(attention_forward);
    OP(attention_half_forward);
    OP(attention_half16_forward);
    OP(linear_half16_forward);
    OP(attention_backward);
    OP(embedding_forward);
    OP(embedding_forward_bf16);
    OP(embedding_forward_f16);
    OP(gemm_f16);
    OP(f32_to_f16);
    OP(f16_to_f32);
    OP(embedding_backward);
    OP(residual_forward);
    OP(residual_backward);
    OP(dropout_forward);
    OP(dropout_backward);
    OP(mean_pool_forward);
    OP(mean_pool_backward);
    OP(l2norm_forward);
    OP(l2norm_backward);
    OP(relu_forward);
    OP(relu_backward);
    OP(mtsa_guide_forward);
    OP(mtsa_guide_backward);
    OP(gate_add_forward);
    OP(gate_add_backward);
    OP(crossentropy_forward);
    OP(crossentropy_backward);
    OP(mse_forward);
    OP(mse_backward);
    OP(adamw_update);
    OP(sumsq);
    OP(scale);
#undef OP
#undef SELECT
}

static_assert(SHERL_CUDA_MAX_DEVICES == 16, "one filler per device below");
static void (*const cuda_fillers[SHERL_CUDA_MAX_DEVICES])(sherl_backend *) = {
    cuda_backend_fill<0>,  cuda_backend_fill<1>,  cuda_backend_fill<2>,  cuda_backend_fill<3>,
    cuda_backend_fill<4>,  cuda_backend_fill<5>,  cuda_backend_fill<6>,  cuda_backend_fill<7>,
    cuda_backend_fill<8>,  cuda_backend_fill<9>,  cuda_backend_fill<10>, cuda_backend_fill<11>,
    cuda_backend_fill<12>, cuda_backend_fill<13>, cuda_backend_fill<14>, cuda_backend_fill<15>,
};

// ------------------------------------------------------------------------------------------
// discovery

// sherl_cuda_devices, without the test fakes (kernels/backend.c)
extern "C" int cuda_list_devices(sherl_device_info *out, int max, char *why, size_t why_len)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        // Without a GPU the runtime says "driver insufficient" (35), not "no device": any error
        // means there is none to use.
        if (why && why_len)
            snprintf(why, why_len, "%s (%s)", cudaGetErrorString(e), cudaGetErrorName(e));
        cudaGetLastError();
        return 0;
    }
    if (n == 0) {
        if (why && why_len)
            snprintf(why, why_len, "no CUDA device found");
        return 0;
    }
    // Listing free memory makes a context on every device (a few hundred MiB each, for the
    // life of the process): only `sherl inspect --devices` asks for the list.
    int current = 0;
    cudaGetDevice(&current);
    for (int i = 0; i < n && i < max && out; i++) {
        cudaDeviceProp p;
        sherl_device_info *d = &out[i];
        memset(d, 0, sizeof *d);
        d->index = i;
        if (cudaGetDeviceProperties(&p, i) == cudaSuccess) {
            snprintf(d->name, sizeof d->name, "%s", p.name);
            d->cc_major = p.major;
            d->cc_minor = p.minor;
            d->total_bytes = p.totalGlobalMem;
            d->multiprocessors = p.multiProcessorCount;
        }
        size_t f = 0, t = 0;
        if (cudaSetDevice(i) == cudaSuccess && cudaMemGetInfo(&f, &t) == cudaSuccess)
            d->free_bytes = f;
        cudaGetLastError();
    }
    cudaSetDevice(current);
    if (why && why_len)
        why[0] = 0;
    return n;
}

// Usable: a device is there, it is the generation this build has machine code for (sm_90
// SASS; PTX for later ones), and SHERL_CUDA_DISABLE is not set to a non-empty value other
// than "0". An older GPU would fail every launch, so "auto" must fall back to the CPU. Each
// device is judged alone (a node may mix generations); devices past SHERL_CUDA_MAX_DEVICES are
// not used.
static void cuda_backend_init(void)
{
    const char *off = getenv("SHERL_CUDA_DISABLE");
    const char *tf32 = getenv("SHERL_CUDA_TF32"), *lt = getenv("SHERL_CUDA_LT");
    use_tf32 = tf32 && !strcmp(tf32, "1");
    use_lt = !(lt && !strcmp(lt, "0"));
    // Every handle gets our own workspace (cublasSetWorkspace, counted by the planner); without
    // this cuBLAS also keeps a default one per handle, which on an H200 was 70 MiB a job thread
    // more than planned (4 jobs: 1.32x the plan; with it 1.03x). A value the user set stands.
    setenv("CUBLAS_WORKSPACE_CONFIG", ":0:0", 0);
    for (int d = 0; d < SHERL_CUDA_MAX_DEVICES; d++)
        cuda_fillers[d](&cuda_backends[d]);
    int n = 0;
    if ((off && *off && strcmp(off, "0")) || cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return;
    }
    for (int d = 0; d < n && d < SHERL_CUDA_MAX_DEVICES; d++) {
        int major = 0;
        if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, d) != cudaSuccess)
            cudaGetLastError();
        cuda_usable[d] = major >= 9;
    }
}

static void cuda_init_once(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, cuda_backend_init);
}

// sherl_backend_cuda_device, without the test fakes (kernels/backend.c)
extern "C" const sherl_backend *cuda_device_table(int index)
{
    cuda_init_once();
    return index >= 0 && index < SHERL_CUDA_MAX_DEVICES && cuda_usable[index]
               ? &cuda_backends[index]
               : NULL;
}

extern "C" const sherl_backend *sherl_backend_cuda_table_for_tests(int index)
{
    cuda_init_once();
    return index >= 0 && index < SHERL_CUDA_MAX_DEVICES ? &cuda_backends[index] : NULL;
}
