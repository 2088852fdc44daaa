/* A test backend: the CPU backend's ops on memory the host may not touch.
 *
 * Every alloc is its own mapping, kept PROT_NONE except while one of the backend's own calls
 * runs; copies go through copy_to_device / copy_to_host as they must on a GPU. So engine code
 * that reads or writes backend memory directly, which works on the CPU backend (host_memory =
 * 1) and is wrong on a device, faults here at once, on a machine without a GPU. The results are
 * the CPU backend's bit for bit, so a run on this backend must equal a run on the CPU.
 *
 * The op wrappers below were generated from the table in kernels.h (one per op, the same
 * signature). A new op in the table without a wrapper here runs the CPU op on closed memory,
 * and the first test that uses it faults: add its wrapper. */
#include "guarded_backend.h"

#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAX_REGIONS 4096

typedef struct {
    void *p;
    size_t len;
} region;

static region regions[MAX_REGIONS];
static int n_regions;
static const sherl_backend *cpu;

/* Opening and closing every region around each call keeps the wrappers trivial; the engine
 * holds a few dozen allocations, so that is a few hundred mprotect calls per step. */
static void protect_all(int prot)
{
    for (int i = 0; i < n_regions; i++)
        if (mprotect(regions[i].p, regions[i].len, prot) != 0) {
            perror("guarded backend: mprotect");
            abort();
        }
}

static void open_all(void) { protect_all(PROT_READ | PROT_WRITE); }

/* Calls per wrapper since the last reset: what a device would launch or copy (each call of the
 * table is at least one launch there), counted where every call already passes; in the timed
 * mode (timed_backend) also the seconds each took. */
#define MAX_COUNTED 128
static struct {
    const char *fn; /* the wrapper's __func__: one static string per wrapper */
    unsigned long long calls;
    double seconds;
} counted[MAX_COUNTED];
static int n_counted;

/* timed_backend: the wrappers run `cpu` (then any backend) with a synchronisation on each side
 * and charge the time between to the op, instead of opening and closing the memory */
static int timing, timed_op = -1;
static double timed_t0;

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void open_call(const char *fn)
{
    int i = 0;
    while (i < n_counted && counted[i].fn != fn)
        i++;
    if (i == n_counted && n_counted < MAX_COUNTED)
        counted[n_counted++].fn = fn;
    if (i < n_counted)
        counted[i].calls++;
    if (timing) {
        cpu->synchronize();
        timed_op = i < n_counted ? i : -1;
        timed_t0 = mono_s();
        return;
    }
    open_all();
}

/* the end of every wrapped call */
static void close_all(void)
{
    if (timing) {
        cpu->synchronize();
        if (timed_op >= 0)
            counted[timed_op].seconds += mono_s() - timed_t0;
        return;
    }
    protect_all(PROT_NONE);
}

void guarded_backend_reset_calls(void)
{
    for (int i = 0; i < n_counted; i++)
        counted[i].calls = 0, counted[i].seconds = 0;
}

static int by_calls_desc(const void *a, const void *b)
{
    unsigned long long x = ((const guarded_op_calls *)a)->calls;
    unsigned long long y = ((const guarded_op_calls *)b)->calls;
    return x < y ? 1 : x > y ? -1 : strcmp(((const guarded_op_calls *)a)->op, ((const guarded_op_calls *)b)->op);
}

int guarded_backend_calls(guarded_op_calls *out, int max)
{
    int n = 0;
    for (int i = 0; i < n_counted && n < max; i++)
        if (counted[i].calls) {
            out[n].op = counted[i].fn + 2; /* "g_" */
            out[n].calls = counted[i].calls;
            out[n].seconds = counted[i].seconds;
            n++;
        }
    qsort(out, (size_t)n, sizeof *out, by_calls_desc);
    return n;
}

static size_t page_round(size_t n)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    return n ? (n + pg - 1) / pg * pg : pg;
}

/* Graph capture, as a device records it: between capture_begin and capture_end every op is
 * recorded with its arguments (not run), and graph_launch runs the record again. A call a
 * device cannot capture (a copy to or from the host, a synchronisation, an allocation, sumsq)
 * aborts, so engine code that would break a CUDA capture fails here, on a machine without a
 * GPU. */
typedef struct {
    void (*replay)(const void *args);
    void *args;
} recorded_op;

typedef struct {
    recorded_op *ops;
    size_t n, cap;
} recorded_graph;

static int capturing;
static recorded_graph *capture;

static void capture_forbidden(const char *call)
{
    if (!capturing)
        return;
    fprintf(stderr, "guarded backend: %s during a graph capture (a device cannot capture it)\n",
            call);
    abort();
}

static void capture_add(void (*replay)(const void *), const void *args, size_t size)
{
    recorded_graph *g = capture;
    if (g->n == g->cap) {
        size_t cap = g->cap ? 2 * g->cap : 256;
        recorded_op *ops = realloc(g->ops, cap * sizeof *ops);
        if (!ops) {
            perror("guarded backend: recording a graph");
            abort();
        }
        g->ops = ops, g->cap = cap;
    }
    void *copy = malloc(size);
    if (!copy) {
        perror("guarded backend: recording a graph");
        abort();
    }
    memcpy(copy, args, size);
    g->ops[g->n].replay = replay;
    g->ops[g->n].args = copy;
    g->n++;
}

static void g_graph_free(void *graph)
{
    recorded_graph *g = graph;
    if (!g)
        return;
    for (size_t i = 0; i < g->n; i++)
        free(g->ops[i].args);
    free(g->ops);
    free(g);
}

static int g_capture_begin(void)
{
    if (capturing) {
        fprintf(stderr, "guarded backend: capture_begin inside a capture\n");
        abort();
    }
    capture = calloc(1, sizeof *capture);
    if (!capture)
        return -1;
    capturing = 1;
    return 0;
}

static void *g_capture_end(void)
{
    if (!capturing) {
        fprintf(stderr, "guarded backend: capture_end without capture_begin\n");
        abort();
    }
    capturing = 0;
    recorded_graph *g = capture;
    capture = NULL;
    return g;
}

static void g_graph_launch(void *graph)
{
    capture_forbidden("graph_launch");
    recorded_graph *g = graph;
    for (size_t i = 0; i < g->n; i++)
        g->ops[i].replay(g->ops[i].args);
}

static unsigned long long graph_launches;

static void count_graph_launch(void *graph)
{
    graph_launches++;
    g_graph_launch(graph);
}

unsigned long long guarded_backend_graph_launches(void) { return graph_launches; }


static void g_synchronize(void)
{
    capture_forbidden("synchronize");
    cpu->synchronize();
}

static void *g_alloc(size_t bytes)
{
    capture_forbidden("alloc");
    if (n_regions == MAX_REGIONS)
        return NULL;
    size_t len = page_round(bytes);
    void *p = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0); /* zeroed */
    if (p == MAP_FAILED)
        return NULL;
    regions[n_regions].p = p;
    regions[n_regions].len = len;
    n_regions++;
    return p;
}

static void g_free(void *p)
{
    capture_forbidden("free");
    if (!p)
        return;
    for (int i = 0; i < n_regions; i++)
        if (regions[i].p == p) {
            munmap(p, regions[i].len);
            regions[i] = regions[--n_regions];
            return;
        }
    fprintf(stderr, "guarded backend: free of %p, which alloc did not return\n", p);
    abort();
}

static void g_copy_to_device(void *dst, const void *src_host, size_t bytes)
{
    capture_forbidden("copy_to_device");
    open_call(__func__);
    memcpy(dst, src_host, bytes);
    close_all();
}

static void g_copy_to_host(void *dst_host, const void *src, size_t bytes)
{
    capture_forbidden("copy_to_host");
    open_call(__func__);
    memcpy(dst_host, src, bytes);
    close_all();
}

typedef struct { void *dst; const void *src; size_t bytes; } rec_copy_device;
static void replay_copy_device(const void *p);

static void g_copy_device(void *dst, const void *src, size_t bytes)
{
    if (capturing) {
        rec_copy_device rec = {dst, src, bytes};
        capture_add(replay_copy_device, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->copy_device(dst, src, bytes);
    close_all();
}

static void replay_copy_device(const void *p)
{
    const rec_copy_device *r = p;
    g_copy_device(r->dst, r->src, r->bytes);
}

typedef struct { void *p; size_t bytes; } rec_zero;
static void replay_zero(const void *p);

static void g_zero(void *p, size_t bytes)
{
    if (capturing) {
        rec_zero rec = {p, bytes};
        capture_add(replay_zero, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->zero(p, bytes);
    close_all();
}

static void replay_zero(const void *p)
{
    const rec_zero *r = p;
    g_zero(r->p, r->bytes);
}

typedef struct { int trans_a; int trans_b; int M; int N; int K; float alpha; const float *A; int lda; const float *B; int ldb; float beta; float *C; int ldc; } rec_gemm;
static void replay_gemm(const void *p);

static void g_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    if (capturing) {
        rec_gemm rec = {trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc};
        capture_add(replay_gemm, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    close_all();
}

static void replay_gemm(const void *p)
{
    const rec_gemm *r = p;
    g_gemm(r->trans_a, r->trans_b, r->M, r->N, r->K, r->alpha, r->A, r->lda, r->B, r->ldb, r->beta, r->C, r->ldc);
}

typedef struct { int trans_a; int trans_b; int M; int N; int K; float alpha; const float *A; int lda; long long stride_a; const float *B; int ldb; long long stride_b; float beta; float *C; int ldc; long long stride_c; int batch; } rec_gemm_strided_batched;
static void replay_gemm_strided_batched(const void *p);

static void g_gemm_strided_batched(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda, long long stride_a, const float *B, int ldb, long long stride_b, float beta, float *C, int ldc, long long stride_c, int batch)
{
    if (capturing) {
        rec_gemm_strided_batched rec = {trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc, stride_c, batch};
        capture_add(replay_gemm_strided_batched, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->gemm_strided_batched(trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc, stride_c, batch);
    close_all();
}

static void replay_gemm_strided_batched(const void *p)
{
    const rec_gemm_strided_batched *r = p;
    g_gemm_strided_batched(r->trans_a, r->trans_b, r->M, r->N, r->K, r->alpha, r->A, r->lda, r->stride_a, r->B, r->ldb, r->stride_b, r->beta, r->C, r->ldc, r->stride_c, r->batch);
}

typedef struct { int trans_a; int trans_b; int M; int N; int K; float alpha; const uint16_t *A; int lda; const uint16_t *B; int ldb; float beta; float *C; int ldc; } rec_gemm_bf16;
static void replay_gemm_bf16(const void *p);

static void g_gemm_bf16(int trans_a, int trans_b, int M, int N, int K, float alpha, const uint16_t *A, int lda, const uint16_t *B, int ldb, float beta, float *C, int ldc)
{
    if (capturing) {
        rec_gemm_bf16 rec = {trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc};
        capture_add(replay_gemm_bf16, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->gemm_bf16(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    close_all();
}

static void replay_gemm_bf16(const void *p)
{
    const rec_gemm_bf16 *r = p;
    g_gemm_bf16(r->trans_a, r->trans_b, r->M, r->N, r->K, r->alpha, r->A, r->lda, r->B, r->ldb, r->beta, r->C, r->ldc);
}

typedef struct { int trans_a; int trans_b; int M; int N; int K; float alpha; const uint16_t *A; int lda; long long stride_a; const uint16_t *B; int ldb; long long stride_b; float beta; float *C; int ldc; long long stride_c; int batch; } rec_gemm_bf16_strided_batched;
static void replay_gemm_bf16_strided_batched(const void *p);

static void g_gemm_bf16_strided_batched(int trans_a, int trans_b, int M, int N, int K, float alpha, const uint16_t *A, int lda, long long stride_a, const uint16_t *B, int ldb, long long stride_b, float beta, float *C, int ldc, long long stride_c, int batch)
{
    if (capturing) {
        rec_gemm_bf16_strided_batched rec = {trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc, stride_c, batch};
        capture_add(replay_gemm_bf16_strided_batched, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->gemm_bf16_strided_batched(trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc, stride_c, batch);
    close_all();
}

static void replay_gemm_bf16_strided_batched(const void *p)
{
    const rec_gemm_bf16_strided_batched *r = p;
    g_gemm_bf16_strided_batched(r->trans_a, r->trans_b, r->M, r->N, r->K, r->alpha, r->A, r->lda, r->stride_a, r->B, r->ldb, r->stride_b, r->beta, r->C, r->ldc, r->stride_c, r->batch);
}

typedef struct { int trans_a; int trans_b; int M; int N; int K; float alpha; const uint16_t *A; int lda; long long stride_a; const uint16_t *B; int ldb; long long stride_b; float beta; float *C; int ldc; long long stride_c; int batch; } rec_gemm_f16_strided_batched;
static void replay_gemm_f16_strided_batched(const void *p);

static void g_gemm_f16_strided_batched(int trans_a, int trans_b, int M, int N, int K, float alpha, const uint16_t *A, int lda, long long stride_a, const uint16_t *B, int ldb, long long stride_b, float beta, float *C, int ldc, long long stride_c, int batch)
{
    if (capturing) {
        rec_gemm_f16_strided_batched rec = {trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc, stride_c, batch};
        capture_add(replay_gemm_f16_strided_batched, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->gemm_f16_strided_batched(trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc, stride_c, batch);
    close_all();
}

static void replay_gemm_f16_strided_batched(const void *p)
{
    const rec_gemm_f16_strided_batched *r = p;
    g_gemm_f16_strided_batched(r->trans_a, r->trans_b, r->M, r->N, r->K, r->alpha, r->A, r->lda, r->stride_a, r->B, r->ldb, r->stride_b, r->beta, r->C, r->ldc, r->stride_c, r->batch);
}

typedef struct { float *x; const float *bias; long long bias_stride; int G; int N; int C; } rec_bias_add_grouped_forward;
static void replay_bias_add_grouped_forward(const void *p);

static void g_bias_add_grouped_forward(float *x, const float *bias, long long bias_stride, int G, int N, int C)
{
    if (capturing) {
        rec_bias_add_grouped_forward rec = {x, bias, bias_stride, G, N, C};
        capture_add(replay_bias_add_grouped_forward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->bias_add_grouped_forward(x, bias, bias_stride, G, N, C);
    close_all();
}

static void replay_bias_add_grouped_forward(const void *p)
{
    const rec_bias_add_grouped_forward *r = p;
    g_bias_add_grouped_forward(r->x, r->bias, r->bias_stride, r->G, r->N, r->C);
}

typedef struct { float *dbias; long long bias_stride; const float *dout; int G; int N; int C; } rec_bias_add_grouped_backward;
static void replay_bias_add_grouped_backward(const void *p);

static void g_bias_add_grouped_backward(float *dbias, long long bias_stride, const float *dout, int G, int N, int C)
{
    if (capturing) {
        rec_bias_add_grouped_backward rec = {dbias, bias_stride, dout, G, N, C};
        capture_add(replay_bias_add_grouped_backward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->bias_add_grouped_backward(dbias, bias_stride, dout, G, N, C);
    close_all();
}

static void replay_bias_add_grouped_backward(const void *p)
{
    const rec_bias_add_grouped_backward *r = p;
    g_bias_add_grouped_backward(r->dbias, r->bias_stride, r->dout, r->G, r->N, r->C);
}

typedef struct { float *out; float *mean; float *rstd; long long stat_stride; const float *inp; const float *weight; const float *bias; long long param_stride; int G; int N; int C; float eps; } rec_layernorm_grouped_forward;
static void replay_layernorm_grouped_forward(const void *p);

static void g_layernorm_grouped_forward(float *out, float *mean, float *rstd, long long stat_stride, const float *inp, const float *weight, const float *bias, long long param_stride, int G, int N, int C, float eps)
{
    if (capturing) {
        rec_layernorm_grouped_forward rec = {out, mean, rstd, stat_stride, inp, weight, bias, param_stride, G, N, C, eps};
        capture_add(replay_layernorm_grouped_forward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->layernorm_grouped_forward(out, mean, rstd, stat_stride, inp, weight, bias, param_stride, G, N, C, eps);
    close_all();
}

static void replay_layernorm_grouped_forward(const void *p)
{
    const rec_layernorm_grouped_forward *r = p;
    g_layernorm_grouped_forward(r->out, r->mean, r->rstd, r->stat_stride, r->inp, r->weight, r->bias, r->param_stride, r->G, r->N, r->C, r->eps);
}

typedef struct { float *dinp; float *dweight; float *dbias; long long param_stride; const float *dout; const float *inp; const float *weight; const float *mean; const float *rstd; long long stat_stride; int G; int N; int C; } rec_layernorm_grouped_backward;
static void replay_layernorm_grouped_backward(const void *p);

static void g_layernorm_grouped_backward(float *dinp, float *dweight, float *dbias, long long param_stride, const float *dout, const float *inp, const float *weight, const float *mean, const float *rstd, long long stat_stride, int G, int N, int C)
{
    if (capturing) {
        rec_layernorm_grouped_backward rec = {dinp, dweight, dbias, param_stride, dout, inp, weight, mean, rstd, stat_stride, G, N, C};
        capture_add(replay_layernorm_grouped_backward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->layernorm_grouped_backward(dinp, dweight, dbias, param_stride, dout, inp, weight, mean, rstd, stat_stride, G, N, C);
    close_all();
}

static void replay_layernorm_grouped_backward(const void *p)
{
    const rec_layernorm_grouped_backward *r = p;
    g_layernorm_grouped_backward(r->dinp, r->dweight, r->dbias, r->param_stride, r->dout, r->inp, r->weight, r->mean, r->rstd, r->stat_stride, r->G, r->N, r->C);
}

typedef struct { uint16_t *dst; const float *src; size_t n; } rec_f32_to_bf16;
static void replay_f32_to_bf16(const void *p);

static void g_f32_to_bf16(uint16_t *dst, const float *src, size_t n)
{
    if (capturing) {
        rec_f32_to_bf16 rec = {dst, src, n};
        capture_add(replay_f32_to_bf16, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->f32_to_bf16(dst, src, n);
    close_all();
}

static void replay_f32_to_bf16(const void *p)
{
    const rec_f32_to_bf16 *r = p;
    g_f32_to_bf16(r->dst, r->src, r->n);
}

typedef struct { float *dst; const uint16_t *src; size_t n; } rec_bf16_to_f32;
static void replay_bf16_to_f32(const void *p);

static void g_bf16_to_f32(float *dst, const uint16_t *src, size_t n)
{
    if (capturing) {
        rec_bf16_to_f32 rec = {dst, src, n};
        capture_add(replay_bf16_to_f32, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->bf16_to_f32(dst, src, n);
    close_all();
}

static void replay_bf16_to_f32(const void *p)
{
    const rec_bf16_to_f32 *r = p;
    g_bf16_to_f32(r->dst, r->src, r->n);
}

typedef struct { float *out; const float *inp; const float *weight; const float *bias; int N; int C; int OC; } rec_matmul_forward;
static void replay_matmul_forward(const void *p);

static void g_matmul_forward(float *out, const float *inp, const float *weight, const float *bias, int N, int C, int OC)
{
    if (capturing) {
        rec_matmul_forward rec = {out, inp, weight, bias, N, C, OC};
        capture_add(replay_matmul_forward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->matmul_forward(out, inp, weight, bias, N, C, OC);
    close_all();
}

static void replay_matmul_forward(const void *p)
{
    const rec_matmul_forward *r = p;
    g_matmul_forward(r->out, r->inp, r->weight, r->bias, r->N, r->C, r->OC);
}

typedef struct { float *dinp; float *dweight; float *dbias; const float *dout; const float *inp; const float *weight; int N; int C; int OC; } rec_matmul_backward;
static void replay_matmul_backward(const void *p);

static void g_matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp, const float *weight, int N, int C, int OC)
{
    if (capturing) {
        rec_matmul_backward rec = {dinp, dweight, dbias, dout, inp, weight, N, C, OC};
        capture_add(replay_matmul_backward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->matmul_backward(dinp, dweight, dbias, dout, inp, weight, N, C, OC);
    close_all();
}

static void replay_matmul_backward(const void *p)
{
    const rec_matmul_backward *r = p;
    g_matmul_backward(r->dinp, r->dweight, r->dbias, r->dout, r->inp, r->weight, r->N, r->C, r->OC);
}

typedef struct { float *x; const float *bias; int N; int C; } rec_bias_add_forward;
static void replay_bias_add_forward(const void *p);

static void g_bias_add_forward(float *x, const float *bias, int N, int C)
{
    if (capturing) {
        rec_bias_add_forward rec = {x, bias, N, C};
        capture_add(replay_bias_add_forward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->bias_add_forward(x, bias, N, C);
    close_all();
}

static void replay_bias_add_forward(const void *p)
{
    const rec_bias_add_forward *r = p;
    g_bias_add_forward(r->x, r->bias, r->N, r->C);
}

typedef struct { float *dbias; const float *dout; int N; int C; } rec_bias_add_backward;
static void replay_bias_add_backward(const void *p);

static void g_bias_add_backward(float *dbias, const float *dout, int N, int C)
{
    if (capturing) {
        rec_bias_add_backward rec = {dbias, dout, N, C};
        capture_add(replay_bias_add_backward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->bias_add_backward(dbias, dout, N, C);
    close_all();
}

static void replay_bias_add_backward(const void *p)
{
    const rec_bias_add_backward *r = p;
    g_bias_add_backward(r->dbias, r->dout, r->N, r->C);
}

typedef struct { float *out; float *mean; float *rstd; const float *inp; const float *weight; const float *bias; int N; int C; float eps; } rec_layernorm_forward;
static void replay_layernorm_forward(const void *p);

static void g_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight, const float *bias, int N, int C, float eps)
{
    if (capturing) {
        rec_layernorm_forward rec = {out, mean, rstd, inp, weight, bias, N, C, eps};
        capture_add(replay_layernorm_forward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->layernorm_forward(out, mean, rstd, inp, weight, bias, N, C, eps);
    close_all();
}

static void replay_layernorm_forward(const void *p)
{
    const rec_layernorm_forward *r = p;
    g_layernorm_forward(r->out, r->mean, r->rstd, r->inp, r->weight, r->bias, r->N, r->C, r->eps);
}

typedef struct { float *dinp; float *dweight; float *dbias; const float *dout; const float *inp; const float *weight; const float *mean; const float *rstd; int N; int C; } rec_layernorm_backward;
static void replay_layernorm_backward(const void *p);

static void g_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp, const float *weight, const float *mean, const float *rstd, int N, int C)
{
    if (capturing) {
        rec_layernorm_backward rec = {dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C};
        capture_add(replay_layernorm_backward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
    close_all();
}

static void replay_layernorm_backward(const void *p)
{
    const rec_layernorm_backward *r = p;
    g_layernorm_backward(r->dinp, r->dweight, r->dbias, r->dout, r->inp, r->weight, r->mean, r->rstd, r->N, r->C);
}

typedef struct { float *out; const float *inp; size_t n; } rec_gelu_forward;
static void replay_gelu_forward(const void *p);

static void g_gelu_forward(float *out, const float *inp, size_t n)
{
    if (capturing) {
        rec_gelu_forward rec = {out, inp, n};
        capture_add(replay_gelu_forward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->gelu_forward(out, inp, n);
    close_all();
}

static void replay_gelu_forward(const void *p)
{
    const rec_gelu_forward *r = p;
    g_gelu_forward(r->out, r->inp, r->n);
}

typedef struct { float *out; uint16_t *out16; float *res; float *mean; float *rstd; const float *x; const float *lin_bias; const float *resid; const float *weight; const float *bias; int N; int C; float eps; int type; } rec_residual_layernorm_forward;
static void replay_residual_layernorm_forward(const void *p);

static void g_residual_layernorm_forward(float *out, uint16_t *out16, float *res, float *mean, float *rstd, const float *x, const float *lin_bias, const float *resid, const float *weight, const float *bias, int N, int C, float eps, int type)
{
    if (capturing) {
        rec_residual_layernorm_forward rec = {out, out16, res, mean, rstd, x, lin_bias, resid, weight, bias, N, C, eps, type};
        capture_add(replay_residual_layernorm_forward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->residual_layernorm_forward(out, out16, res, mean, rstd, x, lin_bias, resid, weight, bias, N, C, eps, type);
    close_all();
}

static void replay_residual_layernorm_forward(const void *p)
{
    const rec_residual_layernorm_forward *r = p;
    g_residual_layernorm_forward(r->out, r->out16, r->res, r->mean, r->rstd, r->x, r->lin_bias, r->resid, r->weight, r->bias, r->N, r->C, r->eps, r->type);
}

typedef struct { uint16_t *out16; const float *x; const float *bias; int N; int C; int type; } rec_bias_gelu_half_forward;
static void replay_bias_gelu_half_forward(const void *p);

static void g_bias_gelu_half_forward(uint16_t *out16, const float *x, const float *bias, int N, int C, int type)
{
    if (capturing) {
        rec_bias_gelu_half_forward rec = {out16, x, bias, N, C, type};
        capture_add(replay_bias_gelu_half_forward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->bias_gelu_half_forward(out16, x, bias, N, C, type);
    close_all();
}

static void replay_bias_gelu_half_forward(const void *p)
{
    const rec_bias_gelu_half_forward *r = p;
    g_bias_gelu_half_forward(r->out16, r->x, r->bias, r->N, r->C, r->type);
}

typedef struct { float *x; uint16_t *x16; const float *bias; int N; int C; int type; } rec_bias_half_round_forward;
static void replay_bias_half_round_forward(const void *p);

static void g_bias_half_round_forward(float *x, uint16_t *x16, const float *bias, int N, int C, int type)
{
    if (capturing) {
        rec_bias_half_round_forward rec = {x, x16, bias, N, C, type};
        capture_add(replay_bias_half_round_forward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->bias_half_round_forward(x, x16, bias, N, C, type);
    close_all();
}

static void replay_bias_half_round_forward(const void *p)
{
    const rec_bias_half_round_forward *r = p;
    g_bias_half_round_forward(r->x, r->x16, r->bias, r->N, r->C, r->type);
}

typedef struct { float *dinp; const float *inp; const float *dout; size_t n; } rec_gelu_backward;
static void replay_gelu_backward(const void *p);

static void g_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n)
{
    if (capturing) {
        rec_gelu_backward rec = {dinp, inp, dout, n};
        capture_add(replay_gelu_backward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->gelu_backward(dinp, inp, dout, n);
    close_all();
}

static void replay_gelu_backward(const void *p)
{
    const rec_gelu_backward *r = p;
    g_gelu_backward(r->dinp, r->inp, r->dout, r->n);
}

typedef struct { float *out; const float *inp; const float *mask; float scale; int B; int H; int Tq; int Tk; } rec_softmax_forward;
static void replay_softmax_forward(const void *p);

static void g_softmax_forward(float *out, const float *inp, const float *mask, float scale, int B, int H, int Tq, int Tk)
{
    if (capturing) {
        rec_softmax_forward rec = {out, inp, mask, scale, B, H, Tq, Tk};
        capture_add(replay_softmax_forward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->softmax_forward(out, inp, mask, scale, B, H, Tq, Tk);
    close_all();
}

static void replay_softmax_forward(const void *p)
{
    const rec_softmax_forward *r = p;
    g_softmax_forward(r->out, r->inp, r->mask, r->scale, r->B, r->H, r->Tq, r->Tk);
}

typedef struct { float *dinp; const float *dout; const float *out; float scale; int B; int H; int Tq; int Tk; } rec_softmax_backward;
static void replay_softmax_backward(const void *p);

static void g_softmax_backward(float *dinp, const float *dout, const float *out, float scale, int B, int H, int Tq, int Tk)
{
    if (capturing) {
        rec_softmax_backward rec = {dinp, dout, out, scale, B, H, Tq, Tk};
        capture_add(replay_softmax_backward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->softmax_backward(dinp, dout, out, scale, B, H, Tq, Tk);
    close_all();
}

static void replay_softmax_backward(const void *p)
{
    const rec_softmax_backward *r = p;
    g_softmax_backward(r->dinp, r->dout, r->out, r->scale, r->B, r->H, r->Tq, r->Tk);
}

typedef struct { float *out; float *probs; const float *qkv; const float *mask; int B; int T; int NH; int HS; } rec_attention_forward;
static void replay_attention_forward(const void *p);

static void g_attention_forward(float *out, float *probs, const float *qkv, const float *mask, int B, int T, int NH, int HS)
{
    if (capturing) {
        rec_attention_forward rec = {out, probs, qkv, mask, B, T, NH, HS};
        capture_add(replay_attention_forward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->attention_forward(out, probs, qkv, mask, B, T, NH, HS);
    close_all();
}

static void replay_attention_forward(const void *p)
{
    const rec_attention_forward *r = p;
    g_attention_forward(r->out, r->probs, r->qkv, r->mask, r->B, r->T, r->NH, r->HS);
}

typedef struct { float *dqkv; const float *dout; const float *qkv; const float *probs; int B; int T; int NH; int HS; } rec_attention_backward;
static void replay_attention_backward(const void *p);

static void g_attention_backward(float *dqkv, const float *dout, const float *qkv, const float *probs, int B, int T, int NH, int HS)
{
    if (capturing) {
        rec_attention_backward rec = {dqkv, dout, qkv, probs, B, T, NH, HS};
        capture_add(replay_attention_backward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->attention_backward(dqkv, dout, qkv, probs, B, T, NH, HS);
    close_all();
}

static void replay_attention_backward(const void *p)
{
    const rec_attention_backward *r = p;
    g_attention_backward(r->dqkv, r->dout, r->qkv, r->probs, r->B, r->T, r->NH, r->HS);
}

typedef struct { uint16_t *out16; const uint16_t *qkv16; const float *mask; int B; int T; int NH; int HS; int type; } rec_attention_half16_forward;
static void replay_attention_half16_forward(const void *p);

static void g_attention_half16_forward(uint16_t *out16, const uint16_t *qkv16, const float *mask, int B, int T, int NH, int HS, int type)
{
    if (capturing) {
        rec_attention_half16_forward rec = {out16, qkv16, mask, B, T, NH, HS, type};
        capture_add(replay_attention_half16_forward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->attention_half16_forward(out16, qkv16, mask, B, T, NH, HS, type);
    close_all();
}

static void replay_attention_half16_forward(const void *p)
{
    const rec_attention_half16_forward *r = p;
    g_attention_half16_forward(r->out16, r->qkv16, r->mask, r->B, r->T, r->NH, r->HS, r->type);
}

typedef struct { uint16_t *out16; float *tmp; const uint16_t *inp16; const uint16_t *w16; const float *bias; int N; int C; int OC; int type; } rec_linear_half16_forward;
static void replay_linear_half16_forward(const void *p);

static void g_linear_half16_forward(uint16_t *out16, float *tmp, const uint16_t *inp16, const uint16_t *w16, const float *bias, int N, int C, int OC, int type)
{
    if (capturing) {
        rec_linear_half16_forward rec = {out16, tmp, inp16, w16, bias, N, C, OC, type};
        capture_add(replay_linear_half16_forward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->linear_half16_forward(out16, tmp, inp16, w16, bias, N, C, OC, type);
    close_all();
}

static void replay_linear_half16_forward(const void *p)
{
    const rec_linear_half16_forward *r = p;
    g_linear_half16_forward(r->out16, r->tmp, r->inp16, r->w16, r->bias, r->N, r->C, r->OC, r->type);
}

typedef struct { float *out; float *probs; const float *qkv; const float *mask; int B; int T; int NH; int HS; int type; } rec_attention_half_forward;
static void replay_attention_half_forward(const void *p);

static void g_attention_half_forward(float *out, float *probs, const float *qkv, const float *mask, int B, int T, int NH, int HS, int type)
{
    if (capturing) {
        rec_attention_half_forward rec = {out, probs, qkv, mask, B, T, NH, HS, type};
        capture_add(replay_attention_half_forward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->attention_half_forward(out, probs, qkv, mask, B, T, NH, HS, type);
    close_all();
}

static void replay_attention_half_forward(const void *p)
{
    const rec_attention_half_forward *r = p;
    g_attention_half_forward(r->out, r->probs, r->qkv, r->mask, r->B, r->T, r->NH, r->HS, r->type);
}

typedef struct { float *out; const int32_t *ids; const float *table; int N; int C; } rec_embedding_forward;
static void replay_embedding_forward(const void *p);

static void g_embedding_forward(float *out, const int32_t *ids, const float *table, int N, int C)
{
    if (capturing) {
        rec_embedding_forward rec = {out, ids, table, N, C};
        capture_add(replay_embedding_forward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->embedding_forward(out, ids, table, N, C);
    close_all();
}

static void replay_embedding_forward(const void *p)
{
    const rec_embedding_forward *r = p;
    g_embedding_forward(r->out, r->ids, r->table, r->N, r->C);
}

typedef struct { float *out; const int32_t *ids; const uint16_t *table; int N; int C; } rec_embedding_forward_bf16;
static void replay_embedding_forward_bf16(const void *p);

static void g_embedding_forward_bf16(float *out, const int32_t *ids, const uint16_t *table, int N, int C)
{
    if (capturing) {
        rec_embedding_forward_bf16 rec = {out, ids, table, N, C};
        capture_add(replay_embedding_forward_bf16, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->embedding_forward_bf16(out, ids, table, N, C);
    close_all();
}

static void replay_embedding_forward_bf16(const void *p)
{
    const rec_embedding_forward_bf16 *r = p;
    g_embedding_forward_bf16(r->out, r->ids, r->table, r->N, r->C);
}

typedef struct { float *dtable; const float *dout; const int32_t *ids; int N; int C; } rec_embedding_backward;
static void replay_embedding_backward(const void *p);

static void g_embedding_backward(float *dtable, const float *dout, const int32_t *ids, int N, int C)
{
    if (capturing) {
        rec_embedding_backward rec = {dtable, dout, ids, N, C};
        capture_add(replay_embedding_backward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->embedding_backward(dtable, dout, ids, N, C);
    close_all();
}

static void replay_embedding_backward(const void *p)
{
    const rec_embedding_backward *r = p;
    g_embedding_backward(r->dtable, r->dout, r->ids, r->N, r->C);
}

typedef struct { float *out; const float *a; const float *b; size_t n; } rec_residual_forward;
static void replay_residual_forward(const void *p);

static void g_residual_forward(float *out, const float *a, const float *b, size_t n)
{
    if (capturing) {
        rec_residual_forward rec = {out, a, b, n};
        capture_add(replay_residual_forward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->residual_forward(out, a, b, n);
    close_all();
}

static void replay_residual_forward(const void *p)
{
    const rec_residual_forward *r = p;
    g_residual_forward(r->out, r->a, r->b, r->n);
}

typedef struct { float *da; float *db; const float *dout; size_t n; } rec_residual_backward;
static void replay_residual_backward(const void *p);

static void g_residual_backward(float *da, float *db, const float *dout, size_t n)
{
    if (capturing) {
        rec_residual_backward rec = {da, db, dout, n};
        capture_add(replay_residual_backward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->residual_backward(da, db, dout, n);
    close_all();
}

static void replay_residual_backward(const void *p)
{
    const rec_residual_backward *r = p;
    g_residual_backward(r->da, r->db, r->dout, r->n);
}

typedef struct { float *out; const float *inp; size_t n; float p; uint64_t seed; uint64_t offset; } rec_dropout_forward;
static void replay_dropout_forward(const void *p);

static void g_dropout_forward(float *out, const float *inp, size_t n, float p, uint64_t seed, uint64_t offset)
{
    if (capturing) {
        rec_dropout_forward rec = {out, inp, n, p, seed, offset};
        capture_add(replay_dropout_forward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->dropout_forward(out, inp, n, p, seed, offset);
    close_all();
}

static void replay_dropout_forward(const void *p)
{
    const rec_dropout_forward *r = p;
    g_dropout_forward(r->out, r->inp, r->n, r->p, r->seed, r->offset);
}

typedef struct { float *dinp; const float *dout; size_t n; float p; uint64_t seed; uint64_t offset; } rec_dropout_backward;
static void replay_dropout_backward(const void *p);

static void g_dropout_backward(float *dinp, const float *dout, size_t n, float p, uint64_t seed, uint64_t offset)
{
    if (capturing) {
        rec_dropout_backward rec = {dinp, dout, n, p, seed, offset};
        capture_add(replay_dropout_backward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->dropout_backward(dinp, dout, n, p, seed, offset);
    close_all();
}

static void replay_dropout_backward(const void *p)
{
    const rec_dropout_backward *r = p;
    g_dropout_backward(r->dinp, r->dout, r->n, r->p, r->seed, r->offset);
}

typedef struct { float *out; const float *inp; const int32_t *mask; int B; int T; int C; } rec_mean_pool_forward;
static void replay_mean_pool_forward(const void *p);

static void g_mean_pool_forward(float *out, const float *inp, const int32_t *mask, int B, int T, int C)
{
    if (capturing) {
        rec_mean_pool_forward rec = {out, inp, mask, B, T, C};
        capture_add(replay_mean_pool_forward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->mean_pool_forward(out, inp, mask, B, T, C);
    close_all();
}

static void replay_mean_pool_forward(const void *p)
{
    const rec_mean_pool_forward *r = p;
    g_mean_pool_forward(r->out, r->inp, r->mask, r->B, r->T, r->C);
}

typedef struct { float *dinp; const float *dout; const int32_t *mask; int B; int T; int C; } rec_mean_pool_backward;
static void replay_mean_pool_backward(const void *p);

static void g_mean_pool_backward(float *dinp, const float *dout, const int32_t *mask, int B, int T, int C)
{
    if (capturing) {
        rec_mean_pool_backward rec = {dinp, dout, mask, B, T, C};
        capture_add(replay_mean_pool_backward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->mean_pool_backward(dinp, dout, mask, B, T, C);
    close_all();
}

static void replay_mean_pool_backward(const void *p)
{
    const rec_mean_pool_backward *r = p;
    g_mean_pool_backward(r->dinp, r->dout, r->mask, r->B, r->T, r->C);
}

typedef struct { float *out; const float *inp; int N; int C; float eps; } rec_l2norm_forward;
static void replay_l2norm_forward(const void *p);

static void g_l2norm_forward(float *out, const float *inp, int N, int C, float eps)
{
    if (capturing) {
        rec_l2norm_forward rec = {out, inp, N, C, eps};
        capture_add(replay_l2norm_forward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->l2norm_forward(out, inp, N, C, eps);
    close_all();
}

static void replay_l2norm_forward(const void *p)
{
    const rec_l2norm_forward *r = p;
    g_l2norm_forward(r->out, r->inp, r->N, r->C, r->eps);
}

typedef struct { float *dinp; const float *dout; const float *inp; int N; int C; float eps; } rec_l2norm_backward;
static void replay_l2norm_backward(const void *p);

static void g_l2norm_backward(float *dinp, const float *dout, const float *inp, int N, int C, float eps)
{
    if (capturing) {
        rec_l2norm_backward rec = {dinp, dout, inp, N, C, eps};
        capture_add(replay_l2norm_backward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->l2norm_backward(dinp, dout, inp, N, C, eps);
    close_all();
}

static void replay_l2norm_backward(const void *p)
{
    const rec_l2norm_backward *r = p;
    g_l2norm_backward(r->dinp, r->dout, r->inp, r->N, r->C, r->eps);
}

typedef struct { float *out; const float *inp; size_t n; } rec_relu_forward;
static void replay_relu_forward(const void *p);

static void g_relu_forward(float *out, const float *inp, size_t n)
{
    if (capturing) {
        rec_relu_forward rec = {out, inp, n};
        capture_add(replay_relu_forward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->relu_forward(out, inp, n);
    close_all();
}

static void replay_relu_forward(const void *p)
{
    const rec_relu_forward *r = p;
    g_relu_forward(r->out, r->inp, r->n);
}

typedef struct { float *dinp; const float *inp; const float *dout; size_t n; } rec_relu_backward;
static void replay_relu_backward(const void *p);

static void g_relu_backward(float *dinp, const float *inp, const float *dout, size_t n)
{
    if (capturing) {
        rec_relu_backward rec = {dinp, inp, dout, n};
        capture_add(replay_relu_backward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->relu_backward(dinp, inp, dout, n);
    close_all();
}

static void replay_relu_backward(const void *p)
{
    const rec_relu_backward *r = p;
    g_relu_backward(r->dinp, r->inp, r->dout, r->n);
}

typedef struct { float *z; float *s; float *rho; float *alpha; const float *x; const float *w; const float *c; int K; int N; int d; } rec_mtsa_guide_forward;
static void replay_mtsa_guide_forward(const void *p);

static void g_mtsa_guide_forward(float *z, float *s, float *rho, float *alpha, const float *x, const float *w, const float *c, int K, int N, int d)
{
    if (capturing) {
        rec_mtsa_guide_forward rec = {z, s, rho, alpha, x, w, c, K, N, d};
        capture_add(replay_mtsa_guide_forward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->mtsa_guide_forward(z, s, rho, alpha, x, w, c, K, N, d);
    close_all();
}

static void replay_mtsa_guide_forward(const void *p)
{
    const rec_mtsa_guide_forward *r = p;
    g_mtsa_guide_forward(r->z, r->s, r->rho, r->alpha, r->x, r->w, r->c, r->K, r->N, r->d);
}

typedef struct { float *dx; float *dw; float *dc; const float *dz; const float *x; const float *w; const float *s; const float *rho; const float *alpha; int K; int N; int d; } rec_mtsa_guide_backward;
static void replay_mtsa_guide_backward(const void *p);

static void g_mtsa_guide_backward(float *dx, float *dw, float *dc, const float *dz, const float *x, const float *w, const float *s, const float *rho, const float *alpha, int K, int N, int d)
{
    if (capturing) {
        rec_mtsa_guide_backward rec = {dx, dw, dc, dz, x, w, s, rho, alpha, K, N, d};
        capture_add(replay_mtsa_guide_backward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->mtsa_guide_backward(dx, dw, dc, dz, x, w, s, rho, alpha, K, N, d);
    close_all();
}

static void replay_mtsa_guide_backward(const void *p)
{
    const rec_mtsa_guide_backward *r = p;
    g_mtsa_guide_backward(r->dx, r->dw, r->dc, r->dz, r->x, r->w, r->s, r->rho, r->alpha, r->K, r->N, r->d);
}

typedef struct { float *out; const float *y; const float *h; const float *lambda; float temp; size_t n; } rec_gate_add_forward;
static void replay_gate_add_forward(const void *p);

static void g_gate_add_forward(float *out, const float *y, const float *h, const float *lambda, float temp, size_t n)
{
    if (capturing) {
        rec_gate_add_forward rec = {out, y, h, lambda, temp, n};
        capture_add(replay_gate_add_forward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->gate_add_forward(out, y, h, lambda, temp, n);
    close_all();
}

static void replay_gate_add_forward(const void *p)
{
    const rec_gate_add_forward *r = p;
    g_gate_add_forward(r->out, r->y, r->h, r->lambda, r->temp, r->n);
}

typedef struct { float *dy; float *dlambda; const float *dout; const float *h; const float *lambda; float temp; size_t n; } rec_gate_add_backward;
static void replay_gate_add_backward(const void *p);

static void g_gate_add_backward(float *dy, float *dlambda, const float *dout, const float *h, const float *lambda, float temp, size_t n)
{
    if (capturing) {
        rec_gate_add_backward rec = {dy, dlambda, dout, h, lambda, temp, n};
        capture_add(replay_gate_add_backward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->gate_add_backward(dy, dlambda, dout, h, lambda, temp, n);
    close_all();
}

static void replay_gate_add_backward(const void *p)
{
    const rec_gate_add_backward *r = p;
    g_gate_add_backward(r->dy, r->dlambda, r->dout, r->h, r->lambda, r->temp, r->n);
}

typedef struct { float *losses; float *probs; const float *logits; const int32_t *labels; int B; int C; } rec_crossentropy_forward;
static void replay_crossentropy_forward(const void *p);

static void g_crossentropy_forward(float *losses, float *probs, const float *logits, const int32_t *labels, int B, int C)
{
    if (capturing) {
        rec_crossentropy_forward rec = {losses, probs, logits, labels, B, C};
        capture_add(replay_crossentropy_forward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->crossentropy_forward(losses, probs, logits, labels, B, C);
    close_all();
}

static void replay_crossentropy_forward(const void *p)
{
    const rec_crossentropy_forward *r = p;
    g_crossentropy_forward(r->losses, r->probs, r->logits, r->labels, r->B, r->C);
}

typedef struct { float *dlogits; const float *probs; const int32_t *labels; float scale; int B; int C; } rec_crossentropy_backward;
static void replay_crossentropy_backward(const void *p);

static void g_crossentropy_backward(float *dlogits, const float *probs, const int32_t *labels, float scale, int B, int C)
{
    if (capturing) {
        rec_crossentropy_backward rec = {dlogits, probs, labels, scale, B, C};
        capture_add(replay_crossentropy_backward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->crossentropy_backward(dlogits, probs, labels, scale, B, C);
    close_all();
}

static void replay_crossentropy_backward(const void *p)
{
    const rec_crossentropy_backward *r = p;
    g_crossentropy_backward(r->dlogits, r->probs, r->labels, r->scale, r->B, r->C);
}

typedef struct { float *losses; const float *pred; const float *target; int B; } rec_mse_forward;
static void replay_mse_forward(const void *p);

static void g_mse_forward(float *losses, const float *pred, const float *target, int B)
{
    if (capturing) {
        rec_mse_forward rec = {losses, pred, target, B};
        capture_add(replay_mse_forward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->mse_forward(losses, pred, target, B);
    close_all();
}

static void replay_mse_forward(const void *p)
{
    const rec_mse_forward *r = p;
    g_mse_forward(r->losses, r->pred, r->target, r->B);
}

typedef struct { float *dpred; const float *pred; const float *target; float scale; int B; } rec_mse_backward;
static void replay_mse_backward(const void *p);

static void g_mse_backward(float *dpred, const float *pred, const float *target, float scale, int B)
{
    if (capturing) {
        rec_mse_backward rec = {dpred, pred, target, scale, B};
        capture_add(replay_mse_backward, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->mse_backward(dpred, pred, target, scale, B);
    close_all();
}

static void replay_mse_backward(const void *p)
{
    const rec_mse_backward *r = p;
    g_mse_backward(r->dpred, r->pred, r->target, r->scale, r->B);
}

typedef struct { float *param; const float *grad; float *m; float *v; size_t n; float lr; float beta1; float beta2; float eps; float weight_decay; int t; } rec_adamw_update;
static void replay_adamw_update(const void *p);

static void g_adamw_update(float *param, const float *grad, float *m, float *v, size_t n, float lr, float beta1, float beta2, float eps, float weight_decay, int t)
{
    if (capturing) {
        rec_adamw_update rec = {param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, t};
        capture_add(replay_adamw_update, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->adamw_update(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, t);
    close_all();
}

static void replay_adamw_update(const void *p)
{
    const rec_adamw_update *r = p;
    g_adamw_update(r->param, r->grad, r->m, r->v, r->n, r->lr, r->beta1, r->beta2, r->eps, r->weight_decay, r->t);
}

static double g_sumsq(const float *x, size_t n)
{
    capture_forbidden("sumsq");
    open_call(__func__);
    double r = cpu->sumsq(x, n);
    close_all();
    return r;
}

typedef struct { float *x; size_t n; float s; } rec_scale;
static void replay_scale(const void *p);

static void g_scale(float *x, size_t n, float s)
{
    if (capturing) {
        rec_scale rec = {x, n, s};
        capture_add(replay_scale, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->scale(x, n, s);
    close_all();
}

static void replay_scale(const void *p)
{
    const rec_scale *r = p;
    g_scale(r->x, r->n, r->s);
}

typedef struct { int trans_a; int trans_b; int M; int N; int K; float alpha; const uint16_t *A; int lda; const uint16_t *B; int ldb; float beta; float *C; int ldc; } rec_gemm_f16;
static void replay_gemm_f16(const void *p);

static void g_gemm_f16(int trans_a, int trans_b, int M, int N, int K, float alpha, const uint16_t *A, int lda, const uint16_t *B, int ldb, float beta, float *C, int ldc)
{
    if (capturing) {
        rec_gemm_f16 rec = {trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc};
        capture_add(replay_gemm_f16, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->gemm_f16(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    close_all();
}

static void replay_gemm_f16(const void *p)
{
    const rec_gemm_f16 *r = p;
    g_gemm_f16(r->trans_a, r->trans_b, r->M, r->N, r->K, r->alpha, r->A, r->lda, r->B, r->ldb, r->beta, r->C, r->ldc);
}

typedef struct { uint16_t *dst; const float *src; size_t n; } rec_f32_to_f16;
static void replay_f32_to_f16(const void *p);

static void g_f32_to_f16(uint16_t *dst, const float *src, size_t n)
{
    if (capturing) {
        rec_f32_to_f16 rec = {dst, src, n};
        capture_add(replay_f32_to_f16, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->f32_to_f16(dst, src, n);
    close_all();
}

static void replay_f32_to_f16(const void *p)
{
    const rec_f32_to_f16 *r = p;
    g_f32_to_f16(r->dst, r->src, r->n);
}

typedef struct { float *dst; const uint16_t *src; size_t n; } rec_f16_to_f32;
static void replay_f16_to_f32(const void *p);

static void g_f16_to_f32(float *dst, const uint16_t *src, size_t n)
{
    if (capturing) {
        rec_f16_to_f32 rec = {dst, src, n};
        capture_add(replay_f16_to_f32, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->f16_to_f32(dst, src, n);
    close_all();
}

static void replay_f16_to_f32(const void *p)
{
    const rec_f16_to_f32 *r = p;
    g_f16_to_f32(r->dst, r->src, r->n);
}

typedef struct { float *out; const int32_t *ids; const uint16_t *table; int N; int C; } rec_embedding_forward_f16;
static void replay_embedding_forward_f16(const void *p);

static void g_embedding_forward_f16(float *out, const int32_t *ids, const uint16_t *table, int N, int C)
{
    if (capturing) {
        rec_embedding_forward_f16 rec = {out, ids, table, N, C};
        capture_add(replay_embedding_forward_f16, &rec, sizeof rec);
        return;
    }
    open_call(__func__);
    cpu->embedding_forward_f16(out, ids, table, N, C);
    close_all();
}

static void replay_embedding_forward_f16(const void *p)
{
    const rec_embedding_forward_f16 *r = p;
    g_embedding_forward_f16(r->out, r->ids, r->table, r->N, r->C);
}

static sherl_backend guarded;

static void fill(void)
{
    cpu = sherl_backend_cpu();
    guarded = *cpu;
    sherl_backend *t = &guarded;
    t->name = "cpu-guarded";
    t->host_memory = 0;
    t->alloc = g_alloc;
    t->free = g_free;
    t->copy_to_device = g_copy_to_device;
    t->copy_to_host = g_copy_to_host;
    t->copy_device = g_copy_device;
    t->zero = g_zero;
    t->synchronize = g_synchronize;
    t->capture_begin = g_capture_begin;
    t->capture_end = g_capture_end;
    t->graph_launch = count_graph_launch;
    t->graph_free = g_graph_free;
    t->gemm = g_gemm;
    t->gemm_strided_batched = g_gemm_strided_batched;
    t->gemm_bf16 = g_gemm_bf16;
    t->f32_to_bf16 = g_f32_to_bf16;
    t->gemm_bf16_strided_batched = g_gemm_bf16_strided_batched;
    t->gemm_f16_strided_batched = g_gemm_f16_strided_batched;
    t->bias_add_grouped_forward = g_bias_add_grouped_forward;
    t->bias_add_grouped_backward = g_bias_add_grouped_backward;
    t->layernorm_grouped_forward = g_layernorm_grouped_forward;
    t->layernorm_grouped_backward = g_layernorm_grouped_backward;
    t->bf16_to_f32 = g_bf16_to_f32;
    t->matmul_forward = g_matmul_forward;
    t->matmul_backward = g_matmul_backward;
    t->bias_add_forward = g_bias_add_forward;
    t->bias_add_backward = g_bias_add_backward;
    t->layernorm_forward = g_layernorm_forward;
    t->layernorm_backward = g_layernorm_backward;
    t->gelu_forward = g_gelu_forward;
    t->bias_gelu_half_forward = g_bias_gelu_half_forward;
    t->residual_layernorm_forward = g_residual_layernorm_forward;
    t->bias_half_round_forward = g_bias_half_round_forward;
    t->gelu_backward = g_gelu_backward;
    t->softmax_forward = g_softmax_forward;
    t->softmax_backward = g_softmax_backward;
    t->attention_forward = g_attention_forward;
    t->attention_half_forward = g_attention_half_forward;
    t->attention_half16_forward = g_attention_half16_forward;
    t->linear_half16_forward = g_linear_half16_forward;
    t->attention_backward = g_attention_backward;
    t->embedding_forward = g_embedding_forward;
    t->embedding_forward_bf16 = g_embedding_forward_bf16;
    t->embedding_forward_f16 = g_embedding_forward_f16;
    t->gemm_f16 = g_gemm_f16;
    t->f32_to_f16 = g_f32_to_f16;
    t->f16_to_f32 = g_f16_to_f32;
    t->embedding_backward = g_embedding_backward;
    t->residual_forward = g_residual_forward;
    t->residual_backward = g_residual_backward;
    t->dropout_forward = g_dropout_forward;
    t->dropout_backward = g_dropout_backward;
    t->mean_pool_forward = g_mean_pool_forward;
    t->mean_pool_backward = g_mean_pool_backward;
    t->l2norm_forward = g_l2norm_forward;
    t->l2norm_backward = g_l2norm_backward;
    t->relu_forward = g_relu_forward;
    t->relu_backward = g_relu_backward;
    t->mtsa_guide_forward = g_mtsa_guide_forward;
    t->mtsa_guide_backward = g_mtsa_guide_backward;
    t->gate_add_forward = g_gate_add_forward;
    t->gate_add_backward = g_gate_add_backward;
    t->crossentropy_forward = g_crossentropy_forward;
    t->crossentropy_backward = g_crossentropy_backward;
    t->mse_forward = g_mse_forward;
    t->mse_backward = g_mse_backward;
    t->adamw_update = g_adamw_update;
    t->sumsq = g_sumsq;
    t->scale = g_scale;
}

const sherl_backend *guarded_backend(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, fill);
    return &guarded;
}

static sherl_backend timed;
static char timed_name[64];

const sherl_backend *timed_backend(const sherl_backend *inner)
{
    guarded_backend();
    if (timed.name) /* one inner backend a process */
        return cpu == inner ? &timed : NULL;
    cpu = inner;
    timing = 1;
    timed = guarded;
    snprintf(timed_name, sizeof timed_name, "%s-timed", inner->name);
    timed.name = timed_name;
    /* memory, threads, errors and the rest: the inner backend's own; graphs: none (every call
     * is timed as it runs) */
    timed.host_memory = inner->host_memory;
    timed.alloc = inner->alloc;
    timed.free = inner->free;
    timed.copy_to_device = inner->copy_to_device;
    timed.copy_to_host = inner->copy_to_host;
    timed.synchronize = inner->synchronize;
    timed.set_threads = inner->set_threads;
    timed.get_threads = inner->get_threads;
    timed.describe = inner->describe;
    timed.performance_advice = inner->performance_advice;
    timed.scratch_bytes = inner->scratch_bytes;
    timed.library_bytes = inner->library_bytes;
    timed.prepare = inner->prepare;
    timed.take_error = inner->take_error;
    timed.mem_info = inner->mem_info;
    timed.allow_tf32 = inner->allow_tf32;
    timed.capture_begin = NULL;
    timed.capture_end = NULL;
    timed.graph_launch = NULL;
    timed.graph_free = NULL;
    return &timed;
}

double timed_backend_sync_seconds(void)
{
    if (!timing)
        return 0;
    enum { REPS = 200 };
    double best = 1e9;
    for (int r = 0; r < REPS; r++) {
        cpu->synchronize();
        double t0 = mono_s();
        cpu->synchronize();
        double t = mono_s() - t0;
        if (t < best)
            best = t;
    }
    return best;
}
