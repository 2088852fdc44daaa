// emu_checks: cuda_emu's self-test (tests/cmake/emu_checks.cmake), a CUDA program built the way
// ops_cuda.cu is for the emulator: translate.cmake rewrites its launches, g++ compiles it against
// tests/emu/include. gpu_ops_emu trusts the emulator to run ops_cuda.cu's kernels as a GPU would;
// each check here pins one piece of that (thread coordinates, shuffles, barriers, shared memory,
// graphs, the cuBLAS products) against expectations computed by plain host loops, and each
// failure mode must be reported as a GPU reports it (or would hang on), never computed through.
// One line per check, "ok NAME" or "FAIL NAME: detail"; the exit status is nonzero when any
// failed. The failure modes make cuda_emu print its own messages on stderr: that is expected.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <thread>
#include <vector>

#define FULL_MASK 0xffffffffu

// ---- bookkeeping

static int n_passed, n_failed;

struct check {
    const char *name;
    cudaStream_t stream;
    char detail[400]; // the first failure (later ones usually follow from it); empty: passing
    void *dev[32];    // device allocations, freed by finish()
    int ndev;
};

static void start(check *c, const char *name, cudaStream_t s)
{
    memset(c, 0, sizeof *c);
    c->name = name;
    c->stream = s;
}

static void failf(check *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void failf(check *c, const char *fmt, ...)
{
    if (c->detail[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->detail, sizeof c->detail, fmt, ap);
    va_end(ap);
    if (!c->detail[0])
        snprintf(c->detail, sizeof c->detail, "(no detail)");
}

static bool failed(const check *c) { return c->detail[0] != 0; }

static bool cuda_ok(check *c, cudaError_t e, const char *what)
{
    if (e == cudaSuccess)
        return true;
    failf(c, "%s: %s", what, cudaGetErrorName(e));
    return false;
}
#define CUDA(c, call) cuda_ok((c), (call), #call)

static bool blas_ok(check *c, cublasStatus_t s, const char *what)
{
    if (s == CUBLAS_STATUS_SUCCESS)
        return true;
    failf(c, "%s: %s", what, cublasGetStatusString(s));
    return false;
}
#define BLAS(c, call) blas_ok((c), (call), #call)

static void finish(check *c)
{
    for (int i = 0; i < c->ndev; i++)
        cudaFree(c->dev[i]);
    c->ndev = 0;
    if (failed(c)) {
        printf("FAIL %s: %s\n", c->name, c->detail);
        n_failed++;
    } else {
        printf("ok %s\n", c->name);
        n_passed++;
    }
}

// device memory that finish() frees; NULL (and the check failed) when there is none
static void *dalloc(check *c, size_t bytes)
{
    void *p = NULL;
    if (c->ndev == (int)(sizeof c->dev / sizeof c->dev[0])) {
        failf(c, "more than %d device allocations in one check", c->ndev);
        return NULL;
    }
    if (CUDA(c, cudaMalloc(&p, bytes)))
        c->dev[c->ndev++] = p;
    return p;
}

static void to_dev(check *c, void *d, const void *h, size_t bytes)
{
    CUDA(c, cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, c->stream));
}

static void to_host(check *c, void *h, const void *d, size_t bytes)
{
    CUDA(c, cudaMemcpyAsync(h, d, bytes, cudaMemcpyDeviceToHost, c->stream));
}

static bool sync_stream(check *c) { return CUDA(c, cudaStreamSynchronize(c->stream)); }

// a launch's own error (a bad configuration) comes from cudaGetLastError, not the stream
static bool launched(check *c, const char *what) { return cuda_ok(c, cudaGetLastError(), what); }

static bool same_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }
static bool same_bits(double a, double b) { return memcmp(&a, &b, sizeof a) == 0; }

// a check in a host thread of its own: cuda_emu keeps a launch failure, sticky as a CUDA
// context's, per host thread, so the checks after it start clean
static void in_own_thread(void (*fn)(void))
{
    std::thread t(fn);
    t.join();
}

// ---- grid and block coordinates

#define COORD_FIELDS 10

// Every thread records its coordinates at its own linear index and counts its visits there;
// visits[n] counts the threads whose index is past the end.
__global__ void k_coords(unsigned *out, int *visits, unsigned n)
{
    unsigned block = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    unsigned tid = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    unsigned id = block * (blockDim.x * blockDim.y * blockDim.z) + tid;
    // warps are cut from the linear thread index, x fastest: lane 0 of mine is tid rounded down,
    // and the next lane holds tid + 1
    unsigned lane0 = __shfl_sync(FULL_MASK, tid, 0), next = __shfl_down_sync(FULL_MASK, tid, 1);
    if (id >= n) {
        atomicAdd(&visits[n], 1);
        return;
    }
    unsigned *o = out + (size_t)id * COORD_FIELDS;
    o[0] = blockIdx.x;
    o[1] = blockIdx.y;
    o[2] = blockIdx.z;
    o[3] = threadIdx.x;
    o[4] = threadIdx.y;
    o[5] = threadIdx.z;
    o[6] = gridDim.x * 10000 + gridDim.y * 100 + gridDim.z;
    o[7] = blockDim.x * 10000 + blockDim.y * 100 + blockDim.z;
    o[8] = lane0;
    o[9] = next;
    atomicAdd(&visits[id], 1);
}

static void check_coords(cudaStream_t s)
{
    check c;
    start(&c, "grid_block_coordinates", s);
    const unsigned gx = 3, gy = 2, gz = 2, bx = 8, by = 4, bz = 2;
    const unsigned per_block = bx * by * bz, n = gx * gy * gz * per_block;
    unsigned *d_out = (unsigned *)dalloc(&c, (size_t)n * COORD_FIELDS * sizeof(unsigned));
    int *d_visits = (int *)dalloc(&c, (n + 1) * sizeof(int));
    if (failed(&c))
        return finish(&c);
    CUDA(&c, cudaMemsetAsync(d_visits, 0, (n + 1) * sizeof(int), s));
    k_coords<<<dim3(gx, gy, gz), dim3(bx, by, bz), 0, s>>>(d_out, d_visits, n);
    launched(&c, "k_coords");
    std::vector<unsigned> out((size_t)n * COORD_FIELDS);
    std::vector<int> visits(n + 1);
    to_host(&c, out.data(), d_out, out.size() * sizeof(unsigned));
    to_host(&c, visits.data(), d_visits, (n + 1) * sizeof(int));
    if (!sync_stream(&c))
        return finish(&c);
    if (visits[n] != 0)
        failf(&c, "%d threads computed a linear id past the grid's %u", visits[n], n);
    for (unsigned id = 0; id < n && !failed(&c); id++) {
        unsigned block = id / per_block, t = id % per_block;
        unsigned want[COORD_FIELDS] = {block % gx, block / gx % gy, block / (gx * gy),
                                       t % bx, t / bx % by, t / (bx * by),
                                       gx * 10000 + gy * 100 + gz, bx * 10000 + by * 100 + bz,
                                       t / 32 * 32, t % 32 < 31 ? t + 1 : t};
        if (visits[id] != 1)
            failf(&c, "linear id %u written %d times", id, visits[id]);
        for (int f = 0; f < COORD_FIELDS; f++)
            if (out[(size_t)id * COORD_FIELDS + f] != want[f])
                failf(&c, "linear id %u field %d: %u, expected %u", id, f,
                      out[(size_t)id * COORD_FIELDS + f], want[f]);
    }
    finish(&c);
}

// ---- warp shuffles

#define SHFL_FIELDS 10

__global__ void k_shfl_float(const float *in, float *out)
{
    unsigned gid = blockIdx.x * blockDim.x + threadIdx.x;
    int lane = (int)(threadIdx.x % 32);
    float v = in[gid], *o = out + (size_t)gid * SHFL_FIELDS;
    o[0] = __shfl_sync(FULL_MASK, v, 5);
    o[1] = __shfl_sync(FULL_MASK, v, (lane * 7 + 3) % 32);
    o[2] = __shfl_sync(FULL_MASK, v, lane * 5 + 2, 16); // the source lane is taken modulo 16
    o[3] = __shfl_down_sync(FULL_MASK, v, 3);
    o[4] = __shfl_down_sync(FULL_MASK, v, 5, 16);
    o[5] = __shfl_up_sync(FULL_MASK, v, 4);
    o[6] = __shfl_up_sync(FULL_MASK, v, 3, 8);
    o[7] = __shfl_xor_sync(FULL_MASK, v, 6);
    float s = v;
    for (int m = 16; m > 0; m /= 2)
        s += __shfl_xor_sync(FULL_MASK, s, m);
    o[8] = s;
    s = v;
    for (int m = 8; m > 0; m /= 2)
        s += __shfl_xor_sync(FULL_MASK, s, m, 16);
    o[9] = s;
}

#define SHFL_D_FIELDS 4

__global__ void k_shfl_double(const double *in, double *out)
{
    unsigned gid = blockIdx.x * blockDim.x + threadIdx.x;
    int lane = (int)(threadIdx.x % 32);
    double v = in[gid], *o = out + (size_t)gid * SHFL_D_FIELDS;
    o[0] = __shfl_sync(FULL_MASK, v, (lane * 11 + 7) % 32);
    o[1] = __shfl_down_sync(FULL_MASK, v, 1);
    o[2] = __shfl_up_sync(FULL_MASK, v, 2, 16);
    double s = v;
    for (int m = 16; m > 0; m /= 2)
        s += __shfl_xor_sync(FULL_MASK, s, m);
    o[3] = s;
}

// Lanes 16..31 leave; the rest shuffle among themselves, legal since the mask names only them.
__global__ void k_shfl_half_warp(const float *in, float *out)
{
    unsigned gid = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x % 32;
    if (lane >= 16)
        return;
    out[gid] = __shfl_sync(0x0000ffffu, in[gid], (int)(lane ^ 1));
}

// xor partners outside the lane's segment of `width`: CUDA returns an earlier segment's value
// and the lane's own for a later segment
__global__ void k_shfl_xor_segments(const float *in, float *out)
{
    unsigned gid = blockIdx.x * blockDim.x + threadIdx.x;
    float v = in[gid];
    out[2 * gid] = __shfl_xor_sync(FULL_MASK, v, 16, 16);
    out[2 * gid + 1] = __shfl_xor_sync(FULL_MASK, v, 24, 16);
}

// the value lane `lane` of a warp of `v` ends with after a butterfly sum over segments of
// `width`, the partners added as the kernels add them
template <class T> static T butterfly(const T *v, int lane, int width)
{
    T cur[32], next[32];
    for (int l = 0; l < 32; l++)
        cur[l] = v[l];
    for (int m = width / 2; m > 0; m /= 2) {
        for (int l = 0; l < 32; l++)
            next[l] = cur[l] + cur[l ^ m];
        memcpy(cur, next, sizeof cur);
    }
    return cur[lane];
}

static void check_shfl_float(cudaStream_t s)
{
    check c;
    start(&c, "shfl_float", s);
    const int n = 128; // two blocks of two warps: warps are per block, lanes per warp
    std::vector<float> in(n), out((size_t)n * SHFL_FIELDS);
    for (int i = 0; i < n; i++)
        in[i] = (float)i + 1.0f / (float)(i + 3); // distinct, and sums that round
    float *d_in = (float *)dalloc(&c, n * sizeof(float));
    float *d_out = (float *)dalloc(&c, out.size() * sizeof(float));
    if (failed(&c))
        return finish(&c);
    to_dev(&c, d_in, in.data(), n * sizeof(float));
    k_shfl_float<<<2, 64, 0, s>>>(d_in, d_out);
    launched(&c, "k_shfl_float");
    to_host(&c, out.data(), d_out, out.size() * sizeof(float));
    if (!sync_stream(&c))
        return finish(&c);
    const char *what[SHFL_FIELDS] = {"shfl 5",     "shfl 7l+3",   "shfl 5l+2 w16", "down 3",
                                     "down 5 w16", "up 4",        "up 3 w8",       "xor 6",
                                     "xor sum",    "xor sum w16"};
    for (int i = 0; i < n && !failed(&c); i++) {
        int lane = i % 32, wb = i - lane;
        float want[SHFL_FIELDS] = {
            in[wb + 5],
            in[wb + (lane * 7 + 3) % 32],
            in[wb + lane / 16 * 16 + (lane * 5 + 2) % 16],
            lane + 3 < 32 ? in[i + 3] : in[i],
            lane % 16 + 5 < 16 ? in[i + 5] : in[i],
            lane >= 4 ? in[i - 4] : in[i],
            lane % 8 >= 3 ? in[i - 3] : in[i],
            in[wb + (lane ^ 6)],
            butterfly(&in[wb], lane, 32),
            butterfly(&in[wb], lane, 16),
        };
        for (int f = 0; f < SHFL_FIELDS; f++)
            if (!same_bits(out[(size_t)i * SHFL_FIELDS + f], want[f]))
                failf(&c, "%s, thread %d: %.9g, expected %.9g", what[f], i,
                      out[(size_t)i * SHFL_FIELDS + f], want[f]);
    }
    finish(&c);
}

static void check_shfl_double(cudaStream_t s)
{
    check c;
    start(&c, "shfl_double", s);
    const int n = 64;
    std::vector<double> in(n), out((size_t)n * SHFL_D_FIELDS);
    // both 32-bit halves differ from lane to lane, so a shuffle that moves only one shows it
    for (int i = 0; i < n; i++)
        in[i] = (double)(i + 1) + ldexp((double)(i * 3 + 1), -40);
    double *d_in = (double *)dalloc(&c, n * sizeof(double));
    double *d_out = (double *)dalloc(&c, out.size() * sizeof(double));
    if (failed(&c))
        return finish(&c);
    to_dev(&c, d_in, in.data(), n * sizeof(double));
    k_shfl_double<<<1, 64, 0, s>>>(d_in, d_out);
    launched(&c, "k_shfl_double");
    to_host(&c, out.data(), d_out, out.size() * sizeof(double));
    if (!sync_stream(&c))
        return finish(&c);
    const char *what[SHFL_D_FIELDS] = {"shfl 11l+7", "down 1", "up 2 w16", "xor sum"};
    for (int i = 0; i < n && !failed(&c); i++) {
        int lane = i % 32, wb = i - lane;
        double want[SHFL_D_FIELDS] = {in[wb + (lane * 11 + 7) % 32],
                                      lane + 1 < 32 ? in[i + 1] : in[i],
                                      lane % 16 >= 2 ? in[i - 2] : in[i],
                                      butterfly(&in[wb], lane, 32)};
        for (int f = 0; f < SHFL_D_FIELDS; f++)
            if (!same_bits(out[(size_t)i * SHFL_D_FIELDS + f], want[f]))
                failf(&c, "%s, thread %d: %.17g, expected %.17g", what[f], i,
                      out[(size_t)i * SHFL_D_FIELDS + f], want[f]);
    }
    finish(&c);
}

static void check_shfl_half_warp(cudaStream_t s)
{
    check c;
    start(&c, "shfl_partial_mask_after_exit", s);
    const int n = 64;
    const float untouched = -7.0f;
    std::vector<float> in(n), out(n, untouched);
    for (int i = 0; i < n; i++)
        in[i] = (float)(i * 10 + 1);
    float *d_in = (float *)dalloc(&c, n * sizeof(float));
    float *d_out = (float *)dalloc(&c, n * sizeof(float));
    if (failed(&c))
        return finish(&c);
    to_dev(&c, d_in, in.data(), n * sizeof(float));
    to_dev(&c, d_out, out.data(), n * sizeof(float));
    k_shfl_half_warp<<<1, 64, 0, s>>>(d_in, d_out);
    launched(&c, "k_shfl_half_warp");
    to_host(&c, out.data(), d_out, n * sizeof(float));
    if (!sync_stream(&c))
        return finish(&c);
    for (int i = 0; i < n; i++) {
        float want = i % 32 < 16 ? in[i ^ 1] : untouched;
        if (out[i] != want)
            failf(&c, "thread %d: %g, expected %g", i, out[i], want);
    }
    finish(&c);
}

static void check_shfl_xor_segments(cudaStream_t s)
{
    check c;
    start(&c, "shfl_xor_width16_other_segment", s);
    const int n = 64, width = 16, masks[2] = {16, 24};
    std::vector<float> in(n), out(2 * n);
    for (int i = 0; i < n; i++)
        in[i] = (float)(i + 100);
    float *d_in = (float *)dalloc(&c, n * sizeof(float));
    float *d_out = (float *)dalloc(&c, 2 * n * sizeof(float));
    if (failed(&c))
        return finish(&c);
    to_dev(&c, d_in, in.data(), n * sizeof(float));
    k_shfl_xor_segments<<<1, 64, 0, s>>>(d_in, d_out);
    launched(&c, "k_shfl_xor_segments");
    to_host(&c, out.data(), d_out, 2 * n * sizeof(float));
    if (!sync_stream(&c))
        return finish(&c);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < 2; k++) {
            // the CUDA Programming Guide's rule: partner lane ^ mask, unless it lies past the
            // end of the caller's segment
            int lane = i % 32, j = lane ^ masks[k], seg_end = lane / width * width + width - 1;
            float want = j <= seg_end ? in[i - lane + j] : in[i];
            if (out[2 * i + k] != want)
                failf(&c, "xor %d width %d, lane %d: %g (lane %d's), expected %g (lane %d's)",
                      masks[k], width, lane, out[2 * i + k], (int)out[2 * i + k] - 100 - (i - lane),
                      want, (int)want - 100 - (i - lane));
        }
    finish(&c);
}

// ---- block barriers and shared memory

// a tree over static shared memory: every level reads what other warps wrote before the barrier
__global__ void k_block_sum(const double *in, double *out)
{
    __shared__ double s[256];
    unsigned t = threadIdx.x;
    s[t] = in[blockIdx.x * blockDim.x + t];
    __syncthreads();
    for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
        if (t < half)
            s[t] += s[t + half];
        __syncthreads();
    }
    if (t == 0)
        out[blockIdx.x] = s[0];
}

// dynamic shared memory: blockDim values, then one partial per warp after them; each warp sums
// what the block stored in reverse, so every value crosses a barrier and a warp
__global__ void k_block_sum_dynamic(const double *in, double *out)
{
    extern __shared__ double buf[];
    unsigned t = threadIdx.x, n = blockDim.x, lane = t % 32, warp = t / 32;
    buf[t] = in[blockIdx.x * n + t];
    __syncthreads();
    double v = buf[n - 1 - t];
    for (int d = 16; d > 0; d /= 2)
        v += __shfl_down_sync(FULL_MASK, v, d);
    if (lane == 0)
        buf[n + warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < n / 32 ? buf[n + lane] : 0.0;
        for (int d = 16; d > 0; d /= 2)
            v += __shfl_down_sync(FULL_MASK, v, d);
        if (lane == 0)
            out[blockIdx.x] = v;
    }
}

static void check_block_sums(cudaStream_t s)
{
    const int blocks = 6, threads = 256, n = blocks * threads;
    std::vector<double> in(n), want(blocks, 0.0);
    // integer values: every order of summation gives the exact sum
    for (int i = 0; i < n; i++)
        in[i] = (double)((i * 37) % 201 - 100);
    for (int i = 0; i < n; i++)
        want[i / threads] += in[i];
    for (int dynamic = 0; dynamic < 2; dynamic++) {
        check c;
        start(&c, dynamic ? "block_sum_dynamic_shared" : "block_sum_static_shared", s);
        std::vector<double> out(blocks);
        double *d_in = (double *)dalloc(&c, n * sizeof(double));
        double *d_out = (double *)dalloc(&c, blocks * sizeof(double));
        if (failed(&c)) {
            finish(&c);
            continue;
        }
        to_dev(&c, d_in, in.data(), n * sizeof(double));
        if (dynamic) {
            size_t shared = (threads + threads / 32) * sizeof(double);
            k_block_sum_dynamic<<<blocks, threads, shared, s>>>(d_in, d_out);
        } else {
            k_block_sum<<<blocks, threads, 0, s>>>(d_in, d_out);
        }
        launched(&c, "block sum launch");
        to_host(&c, out.data(), d_out, blocks * sizeof(double));
        if (sync_stream(&c))
            for (int b = 0; b < blocks; b++)
                if (out[b] != want[b])
                    failf(&c, "block %d: %.17g, expected %.17g", b, out[b], want[b]);
        finish(&c);
    }
}

// Thread t writes s[t], then reads its neighbour's: right only when the barrier really ends the
// writes before any read, and the second barrier the reads before the next round's writes.
__global__ void k_rotate(int *out, int rounds)
{
    __shared__ int s[256];
    unsigned t = threadIdx.x, n = blockDim.x;
    for (int r = 0; r < rounds; r++) {
        s[t] = (int)(blockIdx.x * 100000 + r * 1000 + t);
        __syncthreads();
        out[(blockIdx.x * rounds + r) * n + t] = s[(t + 1 + r) % n];
        __syncthreads();
    }
}

static void check_rotate(cudaStream_t s)
{
    check c;
    start(&c, "shared_race_ordered_by_barrier", s);
    const int blocks = 3, n = 256, rounds = 3, total = blocks * rounds * n;
    std::vector<int> out(total);
    int *d_out = (int *)dalloc(&c, total * sizeof(int));
    if (failed(&c))
        return finish(&c);
    k_rotate<<<blocks, n, 0, s>>>(d_out, rounds);
    launched(&c, "k_rotate");
    to_host(&c, out.data(), d_out, total * sizeof(int));
    if (!sync_stream(&c))
        return finish(&c);
    for (int b = 0; b < blocks; b++)
        for (int r = 0; r < rounds; r++)
            for (int t = 0; t < n; t++) {
                int got = out[(b * rounds + r) * n + t];
                int want = b * 100000 + r * 1000 + (t + 1 + r) % n;
                if (got != want)
                    failf(&c, "block %d round %d thread %d read %d, expected %d", b, r, t, got,
                          want);
            }
    finish(&c);
}

// Warp w shuffles w times before it writes and reaches the barrier: the barrier must hold the
// early warps until the late ones, busy at their shuffles, have written too.
__global__ void k_uneven_warps(int *out)
{
    __shared__ int s[256];
    unsigned t = threadIdx.x, warp = t / 32;
    int v = (int)t;
    for (unsigned i = 0; i < warp; i++)
        v = __shfl_xor_sync(FULL_MASK, v, 1);
    s[t] = v;
    __syncthreads();
    out[t] = s[blockDim.x - 1 - t];
}

static void run_uneven_warps(check *c)
{
    const int n = 256;
    std::vector<int> out(n);
    int *d_out = (int *)dalloc(c, n * sizeof(int));
    if (failed(c))
        return;
    k_uneven_warps<<<1, n, 0, c->stream>>>(d_out);
    launched(c, "k_uneven_warps");
    to_host(c, out.data(), d_out, n * sizeof(int));
    if (sync_stream(c))
        for (int t = 0; t < n; t++) {
            int from = n - 1 - t, want = from ^ (from / 32 % 2); // an odd count of swaps
            if (out[t] != want)
                failf(c, "thread %d read %d, expected %d", t, out[t], want);
        }
}

// lanes exchange through shared memory ordered by __syncwarp alone (two warps, each on its own)
__global__ void k_syncwarp(int *out)
{
    __shared__ int s[64];
    unsigned t = threadIdx.x, lane = t % 32;
    s[t] = (int)(t * 5 + 1);
    __syncwarp();
    out[t] = s[t - lane + (lane + 1) % 32];
}

static void check_syncwarp(cudaStream_t s)
{
    check c;
    start(&c, "shared_exchange_ordered_by_syncwarp", s);
    const int n = 64;
    std::vector<int> out(n);
    int *d_out = (int *)dalloc(&c, n * sizeof(int));
    if (failed(&c))
        return finish(&c);
    k_syncwarp<<<1, n, 0, s>>>(d_out);
    launched(&c, "k_syncwarp");
    to_host(&c, out.data(), d_out, n * sizeof(int));
    if (sync_stream(&c))
        for (int t = 0; t < n; t++) {
            int want = (t - t % 32 + (t + 1) % 32) * 5 + 1;
            if (out[t] != want)
                failf(&c, "thread %d read %d, expected %d", t, out[t], want);
        }
    finish(&c);
}

// Threads 144.. leave before the barrier (four and a half warps stay). The emulator's barrier
// waits for the threads still running, as a GPU's does in practice, so the rest meet there.
__global__ void k_exit_then_barrier(int *out, unsigned live)
{
    __shared__ int s[256];
    unsigned t = threadIdx.x;
    if (t >= live)
        return;
    s[t] = (int)(t * 3 + blockIdx.x * 1000);
    __syncthreads();
    out[blockIdx.x * blockDim.x + t] = s[(t + 1) % live];
}

static void run_exit_then_barrier(check *c)
{
    const int blocks = 2, n = 256;
    const unsigned live = 144;
    std::vector<int> out(blocks * n, -1);
    int *d_out = (int *)dalloc(c, out.size() * sizeof(int));
    if (failed(c))
        return;
    to_dev(c, d_out, out.data(), out.size() * sizeof(int));
    k_exit_then_barrier<<<blocks, n, 0, c->stream>>>(d_out, live);
    launched(c, "k_exit_then_barrier");
    to_host(c, out.data(), d_out, out.size() * sizeof(int));
    if (!sync_stream(c))
        return;
    for (int b = 0; b < blocks; b++)
        for (unsigned t = 0; t < (unsigned)n; t++) {
            int want = t < live ? (int)((t + 1) % live * 3 + b * 1000) : -1;
            if (out[b * n + t] != want)
                failf(c, "block %d thread %u: %d, expected %d", b, t, out[b * n + t], want);
        }
}

// Runs a check in a child process: a barrier released at the wrong time resumes threads that
// have finished, which aborts the emulator, and that must not take the checks after it along.
// The child prints its own line; the parent counts it, or reports the crash.
static void in_child(const char *name, cudaStream_t s, void (*fn)(check *))
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        check c;
        start(&c, name, s);
        fn(&c);
        finish(&c);
        fflush(stdout);
        _exit(failed(&c) ? 1 : 0);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid) {
        printf("FAIL %s: could not run it in a child process\n", name);
        n_failed++;
    } else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        n_passed++;
    } else if (WIFEXITED(status)) {
        n_failed++;
    } else {
        printf("FAIL %s: the child process died of signal %d\n", name,
               WIFSIGNALED(status) ? WTERMSIG(status) : -1);
        n_failed++;
    }
}

// ---- failure modes, each in a host thread of its own (see in_own_thread)

// Within each warp, lanes 0..15 wait at the block barrier while lanes 16..31 wait for them at a
// full-warp shuffle: neither can ever complete (on a GPU: a hang). Lanes 0..15 would reach the
// shuffle too, past the barrier: only a barrier that holds them makes this a deadlock.
__global__ void k_barrier_vs_shuffle(float *out)
{
    float v = (float)threadIdx.x;
    if (threadIdx.x % 32 < 16) {
        __syncthreads();
        v = __shfl_sync(FULL_MASK, v, 0);
    } else {
        v = __shfl_sync(FULL_MASK, v, 0);
    }
    out[threadIdx.x] = v;
}

// lanes 16..31 have returned, yet lanes 0..15 name them in the shuffle's mask
__global__ void k_shfl_exited(float *out)
{
    unsigned lane = threadIdx.x % 32;
    if (lane >= 16)
        return;
    out[threadIdx.x] = __shfl_sync(FULL_MASK, (float)lane, (int)(lane ^ 1));
}

// a kernel that can never finish: the launch must fail, and so must every later
// synchronisation
static void expect_launch_failure(const char *name, void (*kernel)(float *))
{
    cudaStream_t s = NULL;
    check c;
    start(&c, name, NULL);
    if (!CUDA(&c, cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)))
        return finish(&c);
    c.stream = s;
    float *d_out = (float *)dalloc(&c, 64 * sizeof(float));
    // a clean start: a failure seen below is this kernel's
    if (!failed(&c) && sync_stream(&c)) {
        kernel<<<1, 64, 0, s>>>(d_out);
        cudaError_t e1 = cudaStreamSynchronize(s), e2 = cudaStreamSynchronize(s);
        cudaError_t last = cudaGetLastError();
        if (e1 != cudaErrorLaunchFailure)
            failf(&c, "cudaStreamSynchronize after the launch: %s, expected "
                      "cudaErrorLaunchFailure", cudaGetErrorName(e1));
        else if (e2 != cudaErrorLaunchFailure)
            failf(&c, "a second cudaStreamSynchronize: %s (the failure must be sticky)",
                  cudaGetErrorName(e2));
        else if (last != cudaErrorLaunchFailure)
            failf(&c, "cudaGetLastError: %s, expected cudaErrorLaunchFailure",
                  cudaGetErrorName(last));
    }
    finish(&c);
    cudaStreamDestroy(s);
}

static void fail_barrier_vs_shuffle(void)
{
    expect_launch_failure("fail_barrier_vs_shuffle_deadlock", k_barrier_vs_shuffle);
}

static void fail_shuffle_with_exited_lane(void)
{
    expect_launch_failure("fail_shuffle_with_exited_lanes", k_shfl_exited);
}

__global__ void k_fill(int *out, int v)
{
    unsigned t = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    out[blockIdx.x * blockDim.x * blockDim.y * blockDim.z + t] = v;
}

// 32 x 64 = 2048 threads: each dimension is within its limit, the block is not
static void fail_block_too_large(void)
{
    cudaStream_t s = NULL;
    check c;
    start(&c, "fail_block_of_2048_threads", NULL);
    if (!CUDA(&c, cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)))
        return finish(&c);
    c.stream = s;
    const int n = 2048;
    std::vector<int> out(n);
    int *d_out = (int *)dalloc(&c, n * sizeof(int));
    if (!failed(&c)) {
        CUDA(&c, cudaMemsetAsync(d_out, 0, n * sizeof(int), s));
        k_fill<<<1, dim3(32, 64), 0, s>>>(d_out, 5);
        cudaError_t e = cudaGetLastError();
        if (e != cudaErrorInvalidConfiguration)
            failf(&c, "cudaGetLastError after the launch: %s, expected "
                      "cudaErrorInvalidConfiguration", cudaGetErrorName(e));
        else if ((e = cudaGetLastError()) != cudaSuccess)
            failf(&c, "cudaGetLastError did not clear the error: %s", cudaGetErrorName(e));
        to_host(&c, out.data(), d_out, n * sizeof(int));
        // not sticky: the stream goes on
        if (sync_stream(&c))
            for (int i = 0; i < n; i++)
                if (out[i] != 0) {
                    failf(&c, "the kernel ran: element %d is %d", i, out[i]);
                    break;
                }
        // the largest legal block still runs
        k_fill<<<1, dim3(32, 32), 0, s>>>(d_out, 6);
        launched(&c, "a block of 32 x 32 threads");
        to_host(&c, out.data(), d_out, n * sizeof(int));
        if (sync_stream(&c))
            for (int i = 0; i < n; i++)
                if (out[i] != (i < 1024 ? 6 : 0)) {
                    failf(&c, "after a 32 x 32 block, element %d is %d", i, out[i]);
                    break;
                }
    }
    finish(&c);
    cudaStreamDestroy(s);
}

// thread 0 writes the last byte of the dynamic shared memory, everyone reads it after the barrier
__global__ void k_big_shared(int *out, unsigned bytes)
{
    extern __shared__ unsigned char big[];
    if (threadIdx.x == 0)
        big[bytes - 1] = 7;
    __syncthreads();
    out[threadIdx.x] = big[bytes - 1] + (int)threadIdx.x;
}

static void fail_shared_too_large(void)
{
    cudaStream_t s = NULL;
    check c;
    start(&c, "fail_64KiB_dynamic_shared", NULL);
    if (!CUDA(&c, cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)))
        return finish(&c);
    c.stream = s;
    const int n = 64;
    std::vector<int> out(n);
    int *d_out = (int *)dalloc(&c, n * sizeof(int));
    if (!failed(&c)) {
        CUDA(&c, cudaMemsetAsync(d_out, 0, n * sizeof(int), s));
        k_big_shared<<<1, n, 64 << 10, s>>>(d_out, 64 << 10);
        cudaError_t e = cudaGetLastError();
        if (e != cudaErrorInvalidConfiguration)
            failf(&c, "cudaGetLastError after the launch: %s, expected "
                      "cudaErrorInvalidConfiguration", cudaGetErrorName(e));
        to_host(&c, out.data(), d_out, n * sizeof(int));
        if (sync_stream(&c))
            for (int i = 0; i < n; i++)
                if (out[i] != 0) {
                    failf(&c, "the kernel ran: element %d is %d", i, out[i]);
                    break;
                }
        // 48 KiB, the most a launch may ask for without opting in, still runs
        k_big_shared<<<1, n, 48 << 10, s>>>(d_out, 48 << 10);
        launched(&c, "a launch with 48 KiB of dynamic shared memory");
        to_host(&c, out.data(), d_out, n * sizeof(int));
        if (sync_stream(&c))
            for (int i = 0; i < n; i++)
                if (out[i] != 7 + i) {
                    failf(&c, "with 48 KiB, element %d is %d, expected %d", i, out[i], 7 + i);
                    break;
                }
    }
    finish(&c);
    cudaStreamDestroy(s);
}

// k_big_shared's twin, whose limit the check below raises (the attribute is per function)
__global__ void k_big_shared_opted(int *out, unsigned bytes)
{
    extern __shared__ unsigned char big[];
    if (threadIdx.x == 0)
        big[bytes - 1] = 7;
    __syncthreads();
    out[threadIdx.x] = big[bytes - 1] + (int)threadIdx.x;
}

// Past 48 KiB only after cudaFuncSetAttribute(MaxDynamicSharedMemorySize), and only as far as
// it allowed; the device's opt-in limit (an H100's 227 KiB) bounds the attribute.
static void fail_shared_past_opt_in(void)
{
    cudaStream_t s = NULL;
    check c;
    start(&c, "fail_dynamic_shared_past_opt_in", NULL);
    if (!CUDA(&c, cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)))
        return finish(&c);
    c.stream = s;
    int optin = 0;
    CUDA(&c, cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0));
    if (optin != 232448)
        failf(&c, "opt-in limit %d, expected 232448", optin);
    if (cudaFuncSetAttribute(k_big_shared_opted, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             optin + 1) != cudaErrorInvalidValue)
        failf(&c, "an attribute past the opt-in limit was taken");
    (void)cudaGetLastError();
    const int n = 64, bytes = 100 << 10;
    std::vector<int> out(n);
    int *d_out = (int *)dalloc(&c, n * sizeof(int));
    if (!failed(&c)) {
        CUDA(&c, cudaFuncSetAttribute(k_big_shared_opted,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
        // the attribute is the function's: its twin still gets 48 KiB at most
        k_big_shared<<<1, n, bytes, s>>>(d_out, bytes);
        if (cudaGetLastError() != cudaErrorInvalidConfiguration)
            failf(&c, "another kernel took 100 KiB on the first one's attribute");
        k_big_shared_opted<<<1, n, bytes, s>>>(d_out, bytes);
        launched(&c, "a launch with 100 KiB after opting in to 100 KiB");
        to_host(&c, out.data(), d_out, n * sizeof(int));
        if (sync_stream(&c))
            for (int i = 0; i < n; i++)
                if (out[i] != 7 + i) {
                    failf(&c, "with 100 KiB, element %d is %d, expected %d", i, out[i], 7 + i);
                    break;
                }
    }
    if (!failed(&c)) {
        // one byte more than allowed: refused, and nothing runs
        CUDA(&c, cudaMemsetAsync(d_out, 0, n * sizeof(int), s));
        k_big_shared_opted<<<1, n, bytes + 1, s>>>(d_out, bytes + 1);
        cudaError_t e = cudaGetLastError();
        if (e != cudaErrorInvalidConfiguration)
            failf(&c, "cudaGetLastError after a launch past the opt-in: %s, expected "
                      "cudaErrorInvalidConfiguration", cudaGetErrorName(e));
        to_host(&c, out.data(), d_out, n * sizeof(int));
        if (sync_stream(&c))
            for (int i = 0; i < n; i++)
                if (out[i] != 0) {
                    failf(&c, "the kernel ran past its opt-in: element %d is %d", i, out[i]);
                    break;
                }
    }
    finish(&c);
    cudaStreamDestroy(s);
}

static void fail_copy_past_allocation(void)
{
    cudaStream_t s = NULL;
    check c;
    start(&c, "fail_copy_past_allocation", NULL);
    if (!CUDA(&c, cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)))
        return finish(&c);
    c.stream = s;
    const size_t bytes = 256;
    std::vector<unsigned char> host(bytes + 4), back(bytes + 4), pattern(bytes + 4);
    for (size_t i = 0; i < bytes + 4; i++)
        pattern[i] = (unsigned char)(i * 7 + 1);
    unsigned char *d = (unsigned char *)dalloc(&c, bytes);
    if (!failed(&c)) {
        std::vector<unsigned char> zeros(bytes, 0);
        to_dev(&c, d, zeros.data(), bytes);
        sync_stream(&c);
        struct {
            const char *what;
            void *dst;
            const void *src;
            cudaMemcpyKind kind;
        } bad[3] = {
            {"device to host, 4 bytes too many", host.data(), d, cudaMemcpyDeviceToHost},
            {"host to device, 4 bytes too many", d, pattern.data(), cudaMemcpyHostToDevice},
            {"device to host from 4 bytes in", host.data(), d + 4, cudaMemcpyDeviceToHost},
        };
        for (int k = 0; k < 3; k++) {
            memcpy(host.data(), pattern.data(), bytes + 4);
            size_t len = k == 2 ? bytes : bytes + 4;
            cudaError_t e = cudaMemcpyAsync(bad[k].dst, bad[k].src, len, bad[k].kind, s);
            cudaError_t last = cudaGetLastError();
            if (e != cudaErrorInvalidValue || last != cudaErrorInvalidValue)
                failf(&c, "%s: %s (cudaGetLastError %s), expected cudaErrorInvalidValue",
                      bad[k].what, cudaGetErrorName(e), cudaGetErrorName(last));
            if (!sync_stream(&c))
                break;
            if (memcmp(host.data(), pattern.data(), bytes + 4) != 0)
                failf(&c, "%s: the host buffer was written", bad[k].what);
            to_host(&c, back.data(), d, bytes);
            if (sync_stream(&c) && memcmp(back.data(), zeros.data(), bytes) != 0)
                failf(&c, "%s: the allocation was written", bad[k].what);
        }
        // the exact size is a copy like any other
        to_host(&c, host.data(), d, bytes);
        if (sync_stream(&c) && memcmp(host.data(), zeros.data(), bytes) != 0)
            failf(&c, "a copy of exactly the allocation's size did not copy it");
    }
    finish(&c);
    cudaStreamDestroy(s);
}

// an operand that leaves its allocation: cuBLAS would read or write past it, the emulator fails
// the stream as for a faulting kernel
static void fail_gemm_operand_past_allocation(void)
{
    cudaStream_t s = NULL;
    cublasHandle_t h = NULL;
    check c;
    start(&c, "fail_gemm_operand_past_allocation", NULL);
    if (!CUDA(&c, cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)))
        return finish(&c);
    c.stream = s;
    const int m = 4, n = 4, k = 4;
    float *d_a = (float *)dalloc(&c, m * k * sizeof(float));
    float *d_b = (float *)dalloc(&c, k * n * sizeof(float));
    float *d_c = (float *)dalloc(&c, (m * n - 1) * sizeof(float)); // one element short
    if (!failed(&c) && BLAS(&c, cublasCreate(&h)) && BLAS(&c, cublasSetStream(h, s)) &&
        sync_stream(&c)) {
        float alpha = 1.0f, beta = 0.0f;
        BLAS(&c, cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &alpha, d_a, CUDA_R_32F, m,
                              d_b, CUDA_R_32F, k, &beta, d_c, CUDA_R_32F, m, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
        cudaError_t e = cudaStreamSynchronize(s);
        if (e != cudaErrorLaunchFailure)
            failf(&c, "cudaStreamSynchronize: %s, expected cudaErrorLaunchFailure",
                  cudaGetErrorName(e));
    }
    if (h)
        cublasDestroy(h);
    finish(&c);
    cudaStreamDestroy(s);
}

// ---- stream capture and graphs

__global__ void k_add(float *x, float v, int n)
{
    int i = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    if (i < n)
        x[i] += v;
}

__global__ void k_scale(float *x, float v, int n)
{
    int i = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    if (i < n)
        x[i] *= v;
}

static void check_graph(void)
{
    cudaStream_t s = NULL;
    cudaGraph_t g = NULL;
    cudaGraphExec_t exec = NULL;
    check c;
    start(&c, "graph_capture_and_replay", NULL);
    if (!CUDA(&c, cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)))
        return finish(&c);
    c.stream = s;
    const int n = 100;
    std::vector<float> x0(n), x(n);
    for (int i = 0; i < n; i++)
        x0[i] = (float)i;
    float *d_x = (float *)dalloc(&c, n * sizeof(float));
    if (failed(&c)) {
        finish(&c);
        cudaStreamDestroy(s);
        return;
    }
    to_dev(&c, d_x, x0.data(), n * sizeof(float));
    sync_stream(&c);
    // two kernels whose order matters: a replay runs them as recorded, x -> (x + 1) * 2
    if (CUDA(&c, cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal))) {
        k_add<<<2, 64, 0, s>>>(d_x, 1.0f, n);
        launched(&c, "k_add while capturing");
        k_scale<<<2, 64, 0, s>>>(d_x, 2.0f, n);
        launched(&c, "k_scale while capturing");
        CUDA(&c, cudaStreamEndCapture(s, &g));
    }
    to_host(&c, x.data(), d_x, n * sizeof(float));
    if (sync_stream(&c) && memcmp(x.data(), x0.data(), n * sizeof(float)) != 0)
        failf(&c, "the captured kernels ran while capturing: x[1] = %g", x[1]);
    if (g && CUDA(&c, cudaGraphInstantiateWithFlags(&exec, g, 0))) {
        CUDA(&c, cudaGraphLaunch(exec, s));
        CUDA(&c, cudaGraphLaunch(exec, s));
        to_host(&c, x.data(), d_x, n * sizeof(float));
        if (sync_stream(&c))
            for (int i = 0; i < n; i++) {
                float want = ((x0[i] + 1.0f) * 2.0f + 1.0f) * 2.0f;
                if (x[i] != want) {
                    failf(&c, "after two replays x[%d] = %g, expected %g", i, x[i], want);
                    break;
                }
            }
    }
    if (exec)
        cudaGraphExecDestroy(exec);
    if (g)
        cudaGraphDestroy(g);
    finish(&c);

    // a synchronisation while capturing: it fails, the capture is invalidated, nothing recorded
    // runs, and the stream is usable again afterwards
    start(&c, "graph_sync_during_capture_invalidates", s);
    float *d_y = (float *)dalloc(&c, n * sizeof(float));
    if (!failed(&c)) {
        to_dev(&c, d_y, x0.data(), n * sizeof(float));
        sync_stream(&c);
        g = NULL;
        if (CUDA(&c, cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal))) {
            k_add<<<2, 64, 0, s>>>(d_y, 1.0f, n);
            cudaError_t e = cudaStreamSynchronize(s);
            if (e == cudaSuccess)
                failf(&c, "cudaStreamSynchronize while capturing succeeded");
            e = cudaStreamEndCapture(s, &g);
            if (e == cudaSuccess || g)
                failf(&c, "cudaStreamEndCapture after the synchronisation: %s, graph %p",
                      cudaGetErrorName(e), (void *)g);
            cudaGetLastError();
        }
        to_host(&c, x.data(), d_y, n * sizeof(float));
        if (sync_stream(&c) && memcmp(x.data(), x0.data(), n * sizeof(float)) != 0)
            failf(&c, "a kernel of the invalidated capture ran: y[1] = %g", x[1]);
        if (g)
            cudaGraphDestroy(g);
    }
    finish(&c);
    cudaStreamDestroy(s);
}

// ---- cuBLAS: column-major products as cuBLAS defines them

// fixed pseudo-random values in [-1, 1)
static void fill_random(float *x, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = (float)(seed >> 8) / 8388608.0f - 1.0f;
    }
}

// Stores the row-major rows x cols matrix L column-major as a cuBLAS operand M with op(M) = L
// (M = L for N, its transpose for T) and leading dimension ld. The rest of each column is NaN:
// a product that reads rows it was not given shows it.
static std::vector<float> lay_out(const float *l, int rows, int cols, cublasOperation_t op,
                                  int ld)
{
    std::vector<float> m((size_t)ld * (op == CUBLAS_OP_N ? cols : rows), NAN);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            if (op == CUBLAS_OP_N)
                m[r + (size_t)c * ld] = l[r * cols + c];
            else
                m[c + (size_t)r * ld] = l[r * cols + c];
        }
    return m;
}

// exactly representable floats (small multiples of 1/8) as bfloat16: their upper 16 bits
static std::vector<uint16_t> to_bf16_exact(const std::vector<float> &x)
{
    std::vector<uint16_t> b(x.size());
    for (size_t i = 0; i < x.size(); i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        b[i] = (uint16_t)(u >> 16);
    }
    return b;
}

// The expectation of one m x n product stored at exp + off with leading dimension ldc:
// alpha L_A L_B + beta C0 in double from the row-major L_A (m x k), L_B (k x n), C0 (m x n); mag
// gets the sum of the terms' magnitudes, what fp32 rounding error scales with. The padding of
// the leading dimension keeps its expectation (the untouched value, with magnitude 0).
static void expect_product(double *exp, double *mag, size_t off, int ldc, int m, int n, int k,
                           double alpha, const float *la, const float *lb, double beta,
                           const float *c0)
{
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double sum = 0.0, size = 0.0;
            for (int p = 0; p < k; p++) {
                sum += (double)la[i * k + p] * lb[p * n + j];
                size += fabs((double)la[i * k + p] * lb[p * n + j]);
            }
            double e = alpha * sum, e_mag = fabs(alpha) * size;
            if (beta != 0.0) {
                e += beta * c0[i * n + j];
                e_mag += fabs(beta * c0[i * n + j]);
            }
            exp[off + i + (size_t)j * ldc] = e;
            mag[off + i + (size_t)j * ldc] = e_mag;
        }
}

// every element of got against its expectation: within tol times its magnitude (0: exactly)
static void compare(check *c, const char *what, const float *got, const double *exp,
                    const double *mag, size_t n, double tol)
{
    for (size_t i = 0; i < n; i++)
        if (!(fabs((double)got[i] - exp[i]) <= tol * mag[i])) {
            failf(c, "%s: element %zu is %.9g, expected %.9g", what, i, got[i], exp[i]);
            return;
        }
}

static const float pad_value = 4321.0f; // C's padding rows: a product must not write them

// One cublasGemmEx of fp32 operands with every leading dimension above its minimum, against a
// double host product: relative 1e-5 of the terms' magnitudes. beta 0 starts C at NaN, which a
// product that reads C (0 * NaN) cannot hide.
static void check_gemm_f32(const char *name, cublasHandle_t h, cudaStream_t s,
                           cublasOperation_t ta, cublasOperation_t tb, float alpha, float beta)
{
    check c;
    start(&c, name, s);
    const int m = 5, n = 4, k = 7;
    int lda = (ta == CUBLAS_OP_N ? m : k) + 2, ldb = (tb == CUBLAS_OP_N ? k : n) + 3,
        ldc = m + 1;
    std::vector<float> la(m * k), lb(k * n), lc(m * n);
    fill_random(la.data(), la.size(), 1);
    fill_random(lb.data(), lb.size(), 2);
    fill_random(lc.data(), lc.size(), 3);
    std::vector<float> a = lay_out(la.data(), m, k, ta, lda), b = lay_out(lb.data(), k, n, tb, ldb);
    std::vector<float> cm((size_t)ldc * n, pad_value), got(cm.size());
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++)
            cm[i + (size_t)j * ldc] = beta == 0.0f ? NAN : lc[i * n + j];
    std::vector<double> exp(cm.size(), pad_value), mag(cm.size(), 0.0);
    expect_product(exp.data(), mag.data(), 0, ldc, m, n, k, alpha, la.data(), lb.data(), beta,
                   lc.data());
    float *d_a = (float *)dalloc(&c, a.size() * sizeof(float));
    float *d_b = (float *)dalloc(&c, b.size() * sizeof(float));
    float *d_c = (float *)dalloc(&c, cm.size() * sizeof(float));
    if (failed(&c))
        return finish(&c);
    to_dev(&c, d_a, a.data(), a.size() * sizeof(float));
    to_dev(&c, d_b, b.data(), b.size() * sizeof(float));
    to_dev(&c, d_c, cm.data(), cm.size() * sizeof(float));
    BLAS(&c, cublasGemmEx(h, ta, tb, m, n, k, &alpha, d_a, CUDA_R_32F, lda, d_b, CUDA_R_32F, ldb,
                          &beta, d_c, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    to_host(&c, got.data(), d_c, got.size() * sizeof(float));
    if (sync_stream(&c))
        compare(&c, "C", got.data(), exp.data(), mag.data(), got.size(), 1e-5);
    finish(&c);
}

// bf16 operands widened exactly, summed in fp32: multiples of 1/8 give an exact product
static void check_gemm_bf16(cublasHandle_t h, cudaStream_t s)
{
    check c;
    start(&c, "gemm_bf16_compute_32f_exact", s);
    const int m = 6, n = 5, k = 9, lda = k + 1, ldb = k + 2, ldc = m + 2;
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    float alpha = 1.5f, beta = 0.5f;
    std::vector<float> la(m * k), lb(k * n), lc(m * n);
    for (int i = 0; i < m * k; i++)
        la[i] = (float)((i * 5) % 25 - 12) / 8.0f;
    for (int i = 0; i < k * n; i++)
        lb[i] = (float)((i * 7) % 23 - 11) / 8.0f;
    for (int i = 0; i < m * n; i++)
        lc[i] = (float)(i % 9 - 4) / 8.0f;
    std::vector<uint16_t> a = to_bf16_exact(lay_out(la.data(), m, k, ta, lda));
    std::vector<uint16_t> b = to_bf16_exact(lay_out(lb.data(), k, n, tb, ldb));
    std::vector<float> cm((size_t)ldc * n, pad_value), got(cm.size());
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++)
            cm[i + (size_t)j * ldc] = lc[i * n + j];
    std::vector<double> exp(cm.size(), pad_value), mag(cm.size(), 0.0);
    expect_product(exp.data(), mag.data(), 0, ldc, m, n, k, alpha, la.data(), lb.data(), beta,
                   lc.data());
    void *d_a = dalloc(&c, a.size() * sizeof(uint16_t));
    void *d_b = dalloc(&c, b.size() * sizeof(uint16_t));
    float *d_c = (float *)dalloc(&c, cm.size() * sizeof(float));
    if (failed(&c))
        return finish(&c);
    to_dev(&c, d_a, a.data(), a.size() * sizeof(uint16_t));
    to_dev(&c, d_b, b.data(), b.size() * sizeof(uint16_t));
    to_dev(&c, d_c, cm.data(), cm.size() * sizeof(float));
    BLAS(&c, cublasGemmEx(h, ta, tb, m, n, k, &alpha, d_a, CUDA_R_16BF, lda, d_b, CUDA_R_16BF,
                          ldb, &beta, d_c, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                          CUBLAS_GEMM_DEFAULT));
    to_host(&c, got.data(), d_c, got.size() * sizeof(float));
    if (sync_stream(&c))
        compare(&c, "C", got.data(), exp.data(), mag.data(), got.size(), 0.0);
    finish(&c);
}

// Argument errors come back from the call, and nothing runs: C keeps its contents.
static void check_gemm_rejects(cublasHandle_t h, cudaStream_t s)
{
    check c;
    start(&c, "gemm_argument_errors", s);
    const int m = 3, n = 4, k = 6; // m < k: a transposed A's rows are k, not m
    std::vector<float> a(64, 1.0f), b(64, 1.0f), cm(64, pad_value), got(64);
    float *d_a = (float *)dalloc(&c, a.size() * sizeof(float));
    float *d_b = (float *)dalloc(&c, b.size() * sizeof(float));
    float *d_c = (float *)dalloc(&c, cm.size() * sizeof(float));
    if (failed(&c))
        return finish(&c);
    to_dev(&c, d_a, a.data(), a.size() * sizeof(float));
    to_dev(&c, d_b, b.data(), b.size() * sizeof(float));
    to_dev(&c, d_c, cm.data(), cm.size() * sizeof(float));
    float alpha = 1.0f, beta = 0.0f;
    struct {
        const char *what;
        cublasOperation_t ta, tb;
        int lda, ldb, ldc;
        cudaDataType_t type;
        cublasComputeType_t compute;
        cublasStatus_t want;
    } cases[] = {
        {"lda < m (A not transposed)", CUBLAS_OP_N, CUBLAS_OP_N, m - 1, k, m, CUDA_R_32F,
         CUBLAS_COMPUTE_32F, CUBLAS_STATUS_INVALID_VALUE},
        {"lda < k (A transposed)", CUBLAS_OP_T, CUBLAS_OP_N, k - 1, k, m, CUDA_R_32F,
         CUBLAS_COMPUTE_32F, CUBLAS_STATUS_INVALID_VALUE},
        {"ldb < k (B not transposed)", CUBLAS_OP_N, CUBLAS_OP_N, m, k - 1, m, CUDA_R_32F,
         CUBLAS_COMPUTE_32F, CUBLAS_STATUS_INVALID_VALUE},
        {"ldb < n (B transposed)", CUBLAS_OP_N, CUBLAS_OP_T, m, n - 1, m, CUDA_R_32F,
         CUBLAS_COMPUTE_32F, CUBLAS_STATUS_INVALID_VALUE},
        {"ldc < m", CUBLAS_OP_N, CUBLAS_OP_N, m, k, m - 1, CUDA_R_32F, CUBLAS_COMPUTE_32F,
         CUBLAS_STATUS_INVALID_VALUE},
        {"FAST_TF32 compute with bf16 inputs", CUBLAS_OP_N, CUBLAS_OP_N, m, k, m, CUDA_R_16BF,
         CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_STATUS_NOT_SUPPORTED},
    };
    for (const auto &t : cases) {
        cublasStatus_t st = cublasGemmEx(h, t.ta, t.tb, m, n, k, &alpha, d_a, t.type, t.lda, d_b,
                                         t.type, t.ldb, &beta, d_c, CUDA_R_32F, t.ldc, t.compute,
                                         CUBLAS_GEMM_DEFAULT);
        if (st != t.want)
            failf(&c, "%s: %s, expected %s", t.what, cublasGetStatusString(st),
                  cublasGetStatusString(t.want));
    }
    to_host(&c, got.data(), d_c, got.size() * sizeof(float));
    if (sync_stream(&c) && memcmp(got.data(), cm.data(), got.size() * sizeof(float)) != 0)
        failf(&c, "a rejected call wrote C");
    // and the smallest legal leading dimensions pass: the rows of op(A) transposed are k, not m
    BLAS(&c, cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &alpha, d_a, CUDA_R_32F, m, d_b,
                          CUDA_R_32F, k, &beta, d_c, CUDA_R_32F, m, CUBLAS_COMPUTE_32F,
                          CUBLAS_GEMM_DEFAULT));
    BLAS(&c, cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_T, m, n, k, &alpha, d_a, CUDA_R_32F, k, d_b,
                          CUDA_R_32F, n, &beta, d_c, CUDA_R_32F, m, CUBLAS_COMPUTE_32F,
                          CUBLAS_GEMM_DEFAULT));
    sync_stream(&c);
    finish(&c);
}

// TF32 compute reads fp32 operands with 10 mantissa bits, as tensor cores do: 1 + 2^-12 is 1
// there; plain fp32 compute keeps it
static void check_gemm_tf32(cublasHandle_t h, cudaStream_t s)
{
    check c;
    start(&c, "gemm_tf32_rounds_operands", s);
    float *d = (float *)dalloc(&c, 3 * sizeof(float));
    if (failed(&c))
        return finish(&c);
    const float fine = 1.0f + ldexpf(1.0f, -12), coarse = 1.0f + ldexpf(1.0f, -10);
    struct {
        float a, b;
        cublasComputeType_t compute;
        float want;
    } cases[] = {
        {fine, 1.0f, CUBLAS_COMPUTE_32F_FAST_TF32, 1.0f},
        {1.0f, fine, CUBLAS_COMPUTE_32F_FAST_TF32, 1.0f},
        {fine, 1.0f, CUBLAS_COMPUTE_32F, fine},
        {coarse, 1.0f, CUBLAS_COMPUTE_32F_FAST_TF32, coarse}, // representable in TF32: kept
    };
    float alpha = 1.0f, beta = 0.0f;
    for (const auto &t : cases) {
        float in[3] = {t.a, t.b, NAN}, out = 0.0f;
        to_dev(&c, d, in, sizeof in);
        BLAS(&c, cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &alpha, d, CUDA_R_32F, 1,
                              d + 1, CUDA_R_32F, 1, &beta, d + 2, CUDA_R_32F, 1, t.compute,
                              CUBLAS_GEMM_DEFAULT));
        to_host(&c, &out, d + 2, sizeof out);
        if (sync_stream(&c) && !same_bits(out, t.want))
            failf(&c, "(%.9g) x (%.9g) with %s: %.9g, expected %.9g", t.a, t.b,
                  t.compute == CUBLAS_COMPUTE_32F ? "COMPUTE_32F" : "FAST_TF32", out, t.want);
    }
    finish(&c);
}

// three products at strides past each matrix's end: the gaps between them stay untouched
static void check_gemm_strided(cublasHandle_t h, cudaStream_t s)
{
    check c;
    start(&c, "gemm_strided_batched", s);
    const int batch = 3, m = 4, n = 3, k = 5;
    const cublasOperation_t ta = CUBLAS_OP_N, tb = CUBLAS_OP_T;
    const int lda = m + 1, ldb = n + 2, ldc = m + 3;
    const long long sa = (long long)lda * k + 3, sb = (long long)ldb * k + 5,
                    sc = (long long)ldc * n + 2;
    float alpha = 1.5f, beta = 0.5f;
    std::vector<float> a(batch * sa, NAN), b(batch * sb, NAN), cm(batch * sc, pad_value);
    std::vector<float> got(cm.size());
    std::vector<double> exp(cm.size(), pad_value), mag(cm.size(), 0.0);
    for (int i = 0; i < batch; i++) {
        std::vector<float> la(m * k), lb(k * n), lc(m * n);
        fill_random(la.data(), la.size(), 10 + i);
        fill_random(lb.data(), lb.size(), 20 + i);
        fill_random(lc.data(), lc.size(), 30 + i);
        std::vector<float> ai = lay_out(la.data(), m, k, ta, lda);
        std::vector<float> bi = lay_out(lb.data(), k, n, tb, ldb);
        memcpy(&a[i * sa], ai.data(), ai.size() * sizeof(float));
        memcpy(&b[i * sb], bi.data(), bi.size() * sizeof(float));
        for (int r = 0; r < m; r++)
            for (int col = 0; col < n; col++)
                cm[i * sc + r + (size_t)col * ldc] = lc[r * n + col];
        expect_product(exp.data(), mag.data(), i * sc, ldc, m, n, k, alpha, la.data(), lb.data(),
                       beta, lc.data());
    }
    float *d_a = (float *)dalloc(&c, a.size() * sizeof(float));
    float *d_b = (float *)dalloc(&c, b.size() * sizeof(float));
    float *d_c = (float *)dalloc(&c, cm.size() * sizeof(float));
    if (failed(&c))
        return finish(&c);
    to_dev(&c, d_a, a.data(), a.size() * sizeof(float));
    to_dev(&c, d_b, b.data(), b.size() * sizeof(float));
    to_dev(&c, d_c, cm.data(), cm.size() * sizeof(float));
    BLAS(&c, cublasGemmStridedBatchedEx(h, ta, tb, m, n, k, &alpha, d_a, CUDA_R_32F, lda, sa,
                                        d_b, CUDA_R_32F, ldb, sb, &beta, d_c, CUDA_R_32F, ldc, sc,
                                        batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    to_host(&c, got.data(), d_c, got.size() * sizeof(float));
    if (sync_stream(&c))
        compare(&c, "C", got.data(), exp.data(), mag.data(), got.size(), 1e-5);
    finish(&c);
}

// three products whose operands are separate allocations, named by device pointer arrays
static void check_gemm_batched(cublasHandle_t h, cudaStream_t s)
{
    check c;
    start(&c, "gemm_batched_pointer_arrays", s);
    const int batch = 3, m = 3, n = 5, k = 4;
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_T;
    const int lda = k + 1, ldb = n + 2, ldc = m + 2;
    float alpha = 1.5f, beta = 0.5f;
    std::vector<float> a[batch], b[batch], cm[batch], got[batch];
    std::vector<double> exp[batch], mag[batch];
    void *d_a[batch], *d_b[batch], *d_c[batch];
    for (int i = 0; i < batch; i++) {
        std::vector<float> la(m * k), lb(k * n), lc(m * n);
        fill_random(la.data(), la.size(), 40 + i);
        fill_random(lb.data(), lb.size(), 50 + i);
        fill_random(lc.data(), lc.size(), 60 + i);
        a[i] = lay_out(la.data(), m, k, ta, lda);
        b[i] = lay_out(lb.data(), k, n, tb, ldb);
        cm[i].assign((size_t)ldc * n, pad_value);
        got[i].resize(cm[i].size());
        for (int r = 0; r < m; r++)
            for (int col = 0; col < n; col++)
                cm[i][r + (size_t)col * ldc] = lc[r * n + col];
        exp[i].assign(cm[i].size(), pad_value);
        mag[i].assign(cm[i].size(), 0.0);
        expect_product(exp[i].data(), mag[i].data(), 0, ldc, m, n, k, alpha, la.data(),
                       lb.data(), beta, lc.data());
        d_a[i] = dalloc(&c, a[i].size() * sizeof(float));
        d_b[i] = dalloc(&c, b[i].size() * sizeof(float));
        d_c[i] = dalloc(&c, cm[i].size() * sizeof(float));
    }
    void **d_pa = (void **)dalloc(&c, sizeof d_a), **d_pb = (void **)dalloc(&c, sizeof d_b);
    void **d_pc = (void **)dalloc(&c, sizeof d_c);
    if (failed(&c))
        return finish(&c);
    for (int i = 0; i < batch; i++) {
        to_dev(&c, d_a[i], a[i].data(), a[i].size() * sizeof(float));
        to_dev(&c, d_b[i], b[i].data(), b[i].size() * sizeof(float));
        to_dev(&c, d_c[i], cm[i].data(), cm[i].size() * sizeof(float));
    }
    to_dev(&c, d_pa, d_a, sizeof d_a);
    to_dev(&c, d_pb, d_b, sizeof d_b);
    to_dev(&c, d_pc, d_c, sizeof d_c);
    BLAS(&c, cublasGemmBatchedEx(h, ta, tb, m, n, k, &alpha, (const void *const *)d_pa,
                                 CUDA_R_32F, lda, (const void *const *)d_pb, CUDA_R_32F, ldb,
                                 &beta, (void *const *)d_pc, CUDA_R_32F, ldc, batch,
                                 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    for (int i = 0; i < batch; i++)
        to_host(&c, got[i].data(), d_c[i], got[i].size() * sizeof(float));
    if (sync_stream(&c))
        for (int i = 0; i < batch; i++) {
            char what[32];
            snprintf(what, sizeof what, "C[%d]", i);
            compare(&c, what, got[i].data(), exp[i].data(), mag[i].data(), got[i].size(), 1e-5);
        }
    finish(&c);
}

static void check_cublas(cudaStream_t s)
{
    cublasHandle_t h = NULL;
    check c;
    start(&c, "cublas_create", s);
    if (!BLAS(&c, cublasCreate(&h)) || !BLAS(&c, cublasSetStream(h, s)))
        return finish(&c);
    finish(&c);
    const cublasOperation_t N = CUBLAS_OP_N, T = CUBLAS_OP_T;
    check_gemm_f32("gemm_f32_NN", h, s, N, N, 1.5f, 0.5f);
    check_gemm_f32("gemm_f32_NT", h, s, N, T, 1.5f, 0.5f);
    check_gemm_f32("gemm_f32_TN", h, s, T, N, 1.5f, 0.5f);
    check_gemm_f32("gemm_f32_TT", h, s, T, T, 1.5f, 0.5f);
    check_gemm_f32("gemm_f32_beta0_ignores_nan_C", h, s, T, N, 1.5f, 0.0f);
    check_gemm_bf16(h, s);
    check_gemm_rejects(h, s);
    check_gemm_tf32(h, s);
    check_gemm_strided(h, s);
    check_gemm_batched(h, s);
    cublasDestroy(h);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0); // lines in order with cuda_emu's messages on stderr
    cudaStream_t s = NULL;
    if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess) {
        printf("FAIL stream: no stream\nemu_checks: 0 passed, 1 failed\n");
        return 1;
    }
    check_coords(s);
    check_shfl_float(s);
    check_shfl_double(s);
    check_shfl_half_warp(s);
    check_shfl_xor_segments(s);
    check_block_sums(s);
    check_rotate(s);
    check_syncwarp(s);
    in_child("barrier_waits_for_warps_at_shuffles", s, run_uneven_warps);
    in_child("barrier_after_threads_exit", s, run_exit_then_barrier);

    in_own_thread(fail_barrier_vs_shuffle);
    in_own_thread(fail_shuffle_with_exited_lane);
    in_own_thread(fail_block_too_large);
    in_own_thread(fail_shared_too_large);
    in_own_thread(fail_shared_past_opt_in);
    in_own_thread(fail_copy_past_allocation);
    in_own_thread(fail_gemm_operand_past_allocation);

    // the failures above stayed in their threads
    check c;
    start(&c, "failures_stay_in_their_thread", s);
    CUDA(&c, cudaGetLastError());
    sync_stream(&c);
    finish(&c);

    check_graph();
    check_cublas(s);
    cudaStreamDestroy(s);
    printf("emu_checks: %d passed, %d failed\n", n_passed, n_failed);
    return n_failed != 0;
}
