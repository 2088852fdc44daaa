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
static void close_all(void) { protect_all(PROT_NONE); }

static size_t page_round(size_t n)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    return n ? (n + pg - 1) / pg * pg : pg;
}

static void *g_alloc(size_t bytes)
{
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
    open_all();
    memcpy(dst, src_host, bytes);
    close_all();
}

static void g_copy_to_host(void *dst_host, const void *src, size_t bytes)
{
    open_all();
    memcpy(dst_host, src, bytes);
    close_all();
}

static void g_copy_device(void *dst, const void *src, size_t bytes)
{
    open_all();
    memmove(dst, src, bytes);
    close_all();
}

static void g_zero(void *p, size_t bytes)
{
    open_all();
    memset(p, 0, bytes);
    close_all();
}

static void g_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    open_all();
    cpu->gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    close_all();
}

static void g_gemm_strided_batched(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda, long long stride_a, const float *B, int ldb, long long stride_b, float beta, float *C, int ldc, long long stride_c, int batch)
{
    open_all();
    cpu->gemm_strided_batched(trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc, stride_c, batch);
    close_all();
}

static void g_gemm_bf16(int trans_a, int trans_b, int M, int N, int K, float alpha, const uint16_t *A, int lda, const uint16_t *B, int ldb, float beta, float *C, int ldc)
{
    open_all();
    cpu->gemm_bf16(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    close_all();
}

static void g_f32_to_bf16(uint16_t *dst, const float *src, size_t n)
{
    open_all();
    cpu->f32_to_bf16(dst, src, n);
    close_all();
}

static void g_bf16_to_f32(float *dst, const uint16_t *src, size_t n)
{
    open_all();
    cpu->bf16_to_f32(dst, src, n);
    close_all();
}

static void g_matmul_forward(float *out, const float *inp, const float *weight, const float *bias, int N, int C, int OC)
{
    open_all();
    cpu->matmul_forward(out, inp, weight, bias, N, C, OC);
    close_all();
}

static void g_matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp, const float *weight, int N, int C, int OC)
{
    open_all();
    cpu->matmul_backward(dinp, dweight, dbias, dout, inp, weight, N, C, OC);
    close_all();
}

static void g_bias_add_forward(float *x, const float *bias, int N, int C)
{
    open_all();
    cpu->bias_add_forward(x, bias, N, C);
    close_all();
}

static void g_bias_add_backward(float *dbias, const float *dout, int N, int C)
{
    open_all();
    cpu->bias_add_backward(dbias, dout, N, C);
    close_all();
}

static void g_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight, const float *bias, int N, int C, float eps)
{
    open_all();
    cpu->layernorm_forward(out, mean, rstd, inp, weight, bias, N, C, eps);
    close_all();
}

static void g_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp, const float *weight, const float *mean, const float *rstd, int N, int C)
{
    open_all();
    cpu->layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
    close_all();
}

static void g_gelu_forward(float *out, const float *inp, size_t n)
{
    open_all();
    cpu->gelu_forward(out, inp, n);
    close_all();
}

static void g_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n)
{
    open_all();
    cpu->gelu_backward(dinp, inp, dout, n);
    close_all();
}

static void g_softmax_forward(float *out, const float *inp, const float *mask, float scale, int B, int H, int Tq, int Tk)
{
    open_all();
    cpu->softmax_forward(out, inp, mask, scale, B, H, Tq, Tk);
    close_all();
}

static void g_softmax_backward(float *dinp, const float *dout, const float *out, float scale, int B, int H, int Tq, int Tk)
{
    open_all();
    cpu->softmax_backward(dinp, dout, out, scale, B, H, Tq, Tk);
    close_all();
}

static void g_attention_forward(float *out, float *probs, const float *qkv, const float *mask, int B, int T, int NH, int HS)
{
    open_all();
    cpu->attention_forward(out, probs, qkv, mask, B, T, NH, HS);
    close_all();
}

static void g_attention_backward(float *dqkv, const float *dout, const float *qkv, const float *probs, int B, int T, int NH, int HS)
{
    open_all();
    cpu->attention_backward(dqkv, dout, qkv, probs, B, T, NH, HS);
    close_all();
}

static void g_embedding_forward(float *out, const int32_t *ids, const float *table, int N, int C)
{
    open_all();
    cpu->embedding_forward(out, ids, table, N, C);
    close_all();
}

static void g_embedding_forward_bf16(float *out, const int32_t *ids, const uint16_t *table, int N, int C)
{
    open_all();
    cpu->embedding_forward_bf16(out, ids, table, N, C);
    close_all();
}

static void g_embedding_backward(float *dtable, const float *dout, const int32_t *ids, int N, int C)
{
    open_all();
    cpu->embedding_backward(dtable, dout, ids, N, C);
    close_all();
}

static void g_residual_forward(float *out, const float *a, const float *b, size_t n)
{
    open_all();
    cpu->residual_forward(out, a, b, n);
    close_all();
}

static void g_residual_backward(float *da, float *db, const float *dout, size_t n)
{
    open_all();
    cpu->residual_backward(da, db, dout, n);
    close_all();
}

static void g_dropout_forward(float *out, const float *inp, size_t n, float p, uint64_t seed, uint64_t offset)
{
    open_all();
    cpu->dropout_forward(out, inp, n, p, seed, offset);
    close_all();
}

static void g_dropout_backward(float *dinp, const float *dout, size_t n, float p, uint64_t seed, uint64_t offset)
{
    open_all();
    cpu->dropout_backward(dinp, dout, n, p, seed, offset);
    close_all();
}

static void g_mean_pool_forward(float *out, const float *inp, const int32_t *mask, int B, int T, int C)
{
    open_all();
    cpu->mean_pool_forward(out, inp, mask, B, T, C);
    close_all();
}

static void g_mean_pool_backward(float *dinp, const float *dout, const int32_t *mask, int B, int T, int C)
{
    open_all();
    cpu->mean_pool_backward(dinp, dout, mask, B, T, C);
    close_all();
}

static void g_l2norm_forward(float *out, const float *inp, int N, int C, float eps)
{
    open_all();
    cpu->l2norm_forward(out, inp, N, C, eps);
    close_all();
}

static void g_l2norm_backward(float *dinp, const float *dout, const float *inp, int N, int C, float eps)
{
    open_all();
    cpu->l2norm_backward(dinp, dout, inp, N, C, eps);
    close_all();
}

static void g_relu_forward(float *out, const float *inp, size_t n)
{
    open_all();
    cpu->relu_forward(out, inp, n);
    close_all();
}

static void g_relu_backward(float *dinp, const float *inp, const float *dout, size_t n)
{
    open_all();
    cpu->relu_backward(dinp, inp, dout, n);
    close_all();
}

static void g_mtsa_guide_forward(float *z, float *s, float *rho, float *alpha, const float *x, const float *w, const float *c, int K, int N, int d)
{
    open_all();
    cpu->mtsa_guide_forward(z, s, rho, alpha, x, w, c, K, N, d);
    close_all();
}

static void g_mtsa_guide_backward(float *dx, float *dw, float *dc, const float *dz, const float *x, const float *w, const float *s, const float *rho, const float *alpha, int K, int N, int d)
{
    open_all();
    cpu->mtsa_guide_backward(dx, dw, dc, dz, x, w, s, rho, alpha, K, N, d);
    close_all();
}

static void g_gate_add_forward(float *out, const float *y, const float *h, const float *lambda, float temp, size_t n)
{
    open_all();
    cpu->gate_add_forward(out, y, h, lambda, temp, n);
    close_all();
}

static void g_gate_add_backward(float *dy, float *dlambda, const float *dout, const float *h, const float *lambda, float temp, size_t n)
{
    open_all();
    cpu->gate_add_backward(dy, dlambda, dout, h, lambda, temp, n);
    close_all();
}

static void g_crossentropy_forward(float *losses, float *probs, const float *logits, const int32_t *labels, int B, int C)
{
    open_all();
    cpu->crossentropy_forward(losses, probs, logits, labels, B, C);
    close_all();
}

static void g_crossentropy_backward(float *dlogits, const float *probs, const int32_t *labels, float scale, int B, int C)
{
    open_all();
    cpu->crossentropy_backward(dlogits, probs, labels, scale, B, C);
    close_all();
}

static void g_mse_forward(float *losses, const float *pred, const float *target, int B)
{
    open_all();
    cpu->mse_forward(losses, pred, target, B);
    close_all();
}

static void g_mse_backward(float *dpred, const float *pred, const float *target, float scale, int B)
{
    open_all();
    cpu->mse_backward(dpred, pred, target, scale, B);
    close_all();
}

static void g_adamw_update(float *param, const float *grad, float *m, float *v, size_t n, float lr, float beta1, float beta2, float eps, float weight_decay, int t)
{
    open_all();
    cpu->adamw_update(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, t);
    close_all();
}

static double g_sumsq(const float *x, size_t n)
{
    open_all();
    double r = cpu->sumsq(x, n);
    close_all();
    return r;
}

static void g_scale(float *x, size_t n, float s)
{
    open_all();
    cpu->scale(x, n, s);
    close_all();
}

static void g_gemm_f16(int trans_a, int trans_b, int M, int N, int K, float alpha, const uint16_t *A, int lda, const uint16_t *B, int ldb, float beta, float *C, int ldc)
{
    open_all();
    cpu->gemm_f16(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    close_all();
}

static void g_f32_to_f16(uint16_t *dst, const float *src, size_t n)
{
    open_all();
    cpu->f32_to_f16(dst, src, n);
    close_all();
}

static void g_f16_to_f32(float *dst, const uint16_t *src, size_t n)
{
    open_all();
    cpu->f16_to_f32(dst, src, n);
    close_all();
}

static void g_embedding_forward_f16(float *out, const int32_t *ids, const uint16_t *table, int N, int C)
{
    open_all();
    cpu->embedding_forward_f16(out, ids, table, N, C);
    close_all();
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
    t->gemm = g_gemm;
    t->gemm_strided_batched = g_gemm_strided_batched;
    t->gemm_bf16 = g_gemm_bf16;
    t->f32_to_bf16 = g_f32_to_bf16;
    t->bf16_to_f32 = g_bf16_to_f32;
    t->matmul_forward = g_matmul_forward;
    t->matmul_backward = g_matmul_backward;
    t->bias_add_forward = g_bias_add_forward;
    t->bias_add_backward = g_bias_add_backward;
    t->layernorm_forward = g_layernorm_forward;
    t->layernorm_backward = g_layernorm_backward;
    t->gelu_forward = g_gelu_forward;
    t->gelu_backward = g_gelu_backward;
    t->softmax_forward = g_softmax_forward;
    t->softmax_backward = g_softmax_backward;
    t->attention_forward = g_attention_forward;
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
