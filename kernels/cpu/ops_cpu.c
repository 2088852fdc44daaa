/* CPU backend: BLIS (serial) for the matrix products, OpenMP for everything else.
 *
 * One thread pool only: BLIS runs single-threaded and we split each product across the
 * OpenMP threads ourselves. Two pools (a BLAS's pthreads spinning while the OpenMP loops run,
 * and the reverse) cost ~20% of a forward pass on 2 cores.
 * Reductions that feed comparisons with PyTorch (LayerNorm statistics, pooling norms) are
 * accumulated in double so our rounding error stays well below the oracle tolerances. */
#include <blis.h>
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "kernels.h"
#include "simd_math.h"

/* Below this many elements an OpenMP fork costs more than the loop. */
#define PAR_MIN 16384

/* ------------------------------------------------------------------------------------------
 * memory and threads */

static void *cpu_alloc(size_t bytes)
{
    size_t rounded = (bytes + 63) & ~(size_t)63;
    if (rounded == 0)
        rounded = 64;
    void *p = aligned_alloc(64, rounded);
    if (p)
        memset(p, 0, rounded);
    return p;
}

static void cpu_free(void *p) { free(p); }
static void cpu_copy(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
static void cpu_zero(void *p, size_t bytes) { memset(p, 0, bytes); }
static void cpu_synchronize(void) {}

static void cpu_set_threads(int n)
{
    if (n < 1)
        n = 1;
    omp_set_num_threads(n);
}

static int cpu_get_threads(void) { return omp_get_max_threads(); }

static void cpu_describe(char *buf, size_t len)
{
    snprintf(buf, len, "cpu: BLIS %s (%s kernels), %d OpenMP threads", bli_info_get_version_str(),
             bli_arch_string(bli_arch_query_id()), omp_get_max_threads());
}

/* BLIS picks kernels by CPU features; it only falls back to its generic ones on a CPU it has
 * no configuration for. */
static const char *cpu_performance_advice(void)
{
    if (bli_arch_query_id() != BLIS_ARCH_GENERIC)
        return NULL;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return "BLIS is using generic kernels on this AVX2 CPU; set BLIS_ARCH_TYPE to the id of "
               "its 'haswell' or 'zen' configuration for several times faster matrix products";
    return NULL;
}

/* The CPU backend reserves nothing ahead (its scratch is per op, counted by scratch_bytes).
 * Its ops fail only when that scratch cannot be had: the first such failure on a thread is kept
 * for take_error. */
static int cpu_prepare(const sherl_scratch_shape *shape) { (void)shape; return 0; }

static _Thread_local int cpu_failed;
static _Thread_local char cpu_err[256];

static void cpu_fail(const char *what, size_t bytes)
{
    if (cpu_failed)
        return;
    cpu_failed = 1;
    snprintf(cpu_err, sizeof cpu_err, "cpu: out of memory for %zu bytes of scratch (%s)", bytes,
             what);
}

static int cpu_take_error(char *msg, size_t len)
{
    int failed = cpu_failed;
    if (msg && len)
        snprintf(msg, len, "%s", failed ? cpu_err : "");
    cpu_failed = 0;
    return failed ? -1 : 0;
}

/* MemAvailable and MemTotal from /proc/meminfo. */
static int cpu_mem_info(size_t *free_bytes, size_t *total_bytes)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return -1;
    char line[256];
    unsigned long long kb, avail = 0, total = 0;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
            avail = kb;
        else if (sscanf(line, "MemTotal: %llu kB", &kb) == 1)
            total = kb;
    }
    fclose(f);
    if (!total)
        return -1;
    if (free_bytes)
        *free_bytes = (size_t)avail * 1024;
    if (total_bytes)
        *total_bytes = (size_t)total * 1024;
    return 0;
}

static void cpu_copy_device(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }

static void cpu_allow_tf32(int on) { (void)on; }

static void cpu_f32_to_bf16(uint16_t *dst, const float *src, size_t n)
{
#pragma omp parallel for if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++)
        dst[i] = sherl_f32_to_bf16(src[i]);
}

static void cpu_bf16_to_f32(float *dst, const uint16_t *src, size_t n)
{
#pragma omp parallel for if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++)
        dst[i] = sherl_bf16_to_f32(src[i]);
}

static void cpu_f32_to_f16(uint16_t *dst, const float *src, size_t n)
{
#pragma omp parallel for if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++)
        dst[i] = sherl_f32_to_f16(src[i]);
}

static void cpu_f16_to_f32(float *dst, const uint16_t *src, size_t n)
{
#pragma omp parallel for if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++)
        dst[i] = sherl_f16_to_f32(src[i]);
}

/* ------------------------------------------------------------------------------------------
 * matrix products */

static void sgemm1(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                   int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* Splits C into one block of rows (or of columns, when C is wide and short) per thread; each
 * block is a single-threaded sgemm over the full K, so every element has one owner. */
static void cpu_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                     int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    int nt = omp_get_max_threads();
    if (nt <= 1 || (double)M * N * K < 2e6 || omp_in_parallel()) {
        sgemm1(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    int split_rows = M >= N || M >= 64 * nt;
    int len = split_rows ? M : N;
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), n = omp_get_num_threads();
        int chunk = ((len + n - 1) / n + 15) & ~15; /* multiples of 16 suit the microkernels */
        int lo = t * chunk, hi = lo + chunk < len ? lo + chunk : len;
        if (lo < hi) {
            if (split_rows)
                sgemm1(trans_a, trans_b, hi - lo, N, K, alpha,
                       trans_a ? A + lo : A + (size_t)lo * lda, lda, B, ldb, beta,
                       C + (size_t)lo * ldc, ldc);
            else
                sgemm1(trans_a, trans_b, M, hi - lo, K, alpha, A, lda,
                       trans_b ? B + (size_t)lo * ldb : B + lo, ldb, beta, C + lo, ldc);
        }
    }
}

static void cpu_gemm_strided_batched(int trans_a, int trans_b, int M, int N, int K, float alpha,
                                     const float *A, int lda, long long stride_a, const float *B,
                                     int ldb, long long stride_b, float beta, float *C, int ldc,
                                     long long stride_c, int batch)
{
    if (batch == 1) {
        cpu_gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
#pragma omp parallel for schedule(static)
    for (int i = 0; i < batch; i++)
        sgemm1(trans_a, trans_b, M, N, K, alpha, A + i * stride_a, lda, B + i * stride_b, ldb,
               beta, C + i * stride_c, ldc);
}

/* bf16 inputs, fp32 accumulation: every bf16 value is exact in fp32, so widening both operands
 * and running the fp32 product is the reference semantics. The widened copies are the op's own
 * allocation (bf16 products are the GPU's business; on the CPU this is the reference). */
static void gemm_half(void (*widen)(float *, const uint16_t *, size_t), int trans_a, int trans_b,
                      int M, int N, int K, float alpha, const uint16_t *A, int lda,
                      const uint16_t *B, int ldb, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0 || K <= 0) {
        cpu_gemm(trans_a, trans_b, M, N, K, alpha, NULL, lda, NULL, ldb, beta, C, ldc);
        return;
    }
    /* the extent each operand spans: the last row holds only its used columns */
    size_t na = (size_t)((trans_a ? K : M) - 1) * lda + (size_t)(trans_a ? M : K);
    size_t nb = (size_t)((trans_b ? N : K) - 1) * ldb + (size_t)(trans_b ? K : N);
    float *a = malloc(na * sizeof(float)), *b = malloc(nb * sizeof(float));
    if (a && b) {
        widen(a, A, na);
        widen(b, B, nb);
        cpu_gemm(trans_a, trans_b, M, N, K, alpha, a, lda, b, ldb, beta, C, ldc);
    } else {
        cpu_fail("a half-precision product's widened operands", (na + nb) * sizeof(float));
    }
    free(a);
    free(b);
}

static void cpu_gemm_bf16(int trans_a, int trans_b, int M, int N, int K, float alpha,
                          const uint16_t *A, int lda, const uint16_t *B, int ldb, float beta,
                          float *C, int ldc)
{
    gemm_half(cpu_bf16_to_f32, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

static void cpu_gemm_f16(int trans_a, int trans_b, int M, int N, int K, float alpha,
                         const uint16_t *A, int lda, const uint16_t *B, int ldb, float beta,
                         float *C, int ldc)
{
    gemm_half(cpu_f16_to_f32, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* The batched half products: one product at a time, each the reference semantics above. */
static void gemm_half_batched(void (*widen)(float *, const uint16_t *, size_t), int trans_a,
                              int trans_b, int M, int N, int K, float alpha, const uint16_t *A,
                              int lda, long long stride_a, const uint16_t *B, int ldb,
                              long long stride_b, float beta, float *C, int ldc,
                              long long stride_c, int batch)
{
    for (int i = 0; i < batch; i++)
        gemm_half(widen, trans_a, trans_b, M, N, K, alpha, A + i * stride_a, lda,
                  B + i * stride_b, ldb, beta, C + i * stride_c, ldc);
}

static void cpu_gemm_bf16_strided_batched(int trans_a, int trans_b, int M, int N, int K,
                                          float alpha, const uint16_t *A, int lda,
                                          long long stride_a, const uint16_t *B, int ldb,
                                          long long stride_b, float beta, float *C, int ldc,
                                          long long stride_c, int batch)
{
    gemm_half_batched(cpu_bf16_to_f32, trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb,
                      stride_b, beta, C, ldc, stride_c, batch);
}

static void cpu_gemm_f16_strided_batched(int trans_a, int trans_b, int M, int N, int K,
                                         float alpha, const uint16_t *A, int lda,
                                         long long stride_a, const uint16_t *B, int ldb,
                                         long long stride_b, float beta, float *C, int ldc,
                                         long long stride_c, int batch)
{
    gemm_half_batched(cpu_f16_to_f32, trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb,
                      stride_b, beta, C, ldc, stride_c, batch);
}

static void cpu_bias_add_forward(float *x, const float *bias, int N, int C)
{
#pragma omp parallel for if ((size_t)N * C >= PAR_MIN)
    for (int n = 0; n < N; n++) {
        float *row = x + (size_t)n * C;
#pragma omp simd
        for (int c = 0; c < C; c++)
            row[c] += bias[c];
    }
}

static void cpu_bias_add_backward(float *dbias, const float *dout, int N, int C)
{
    /* Parallel over columns: each thread owns its dbias entries, so no reduction races. */
#pragma omp parallel for if ((size_t)N * C >= PAR_MIN)
    for (int c = 0; c < C; c++) {
        double acc = 0.0;
        for (int n = 0; n < N; n++)
            acc += dout[(size_t)n * C + c];
        dbias[c] += (float)acc;
    }
}

static void cpu_matmul_forward(float *out, const float *inp, const float *weight,
                               const float *bias, int N, int C, int OC)
{
    /* out = inp . weight^T (+ bias): seed out with the bias and let sgemm accumulate. */
    float beta = 0.0f;
    if (bias) {
#pragma omp parallel for if ((size_t)N * OC >= PAR_MIN)
        for (int n = 0; n < N; n++)
            memcpy(out + (size_t)n * OC, bias, (size_t)OC * sizeof(float));
        beta = 1.0f;
    }
    cpu_gemm(0, 1, N, OC, C, 1.0f, inp, C, weight, C, beta, out, OC);
}

static void cpu_matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                                const float *inp, const float *weight, int N, int C, int OC)
{
    if (dinp)
        cpu_gemm(0, 0, N, C, OC, 1.0f, dout, OC, weight, C, 1.0f, dinp, C);
    if (dweight)
        cpu_gemm(1, 0, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dweight, C);
    if (dbias)
        cpu_bias_add_backward(dbias, dout, N, OC);
}

/* Grouped bias: each group exactly the ungrouped op on its block (the op's threads already
 * split a block's rows or columns). */
static void cpu_bias_add_grouped_forward(float *x, const float *bias, long long bias_stride,
                                         int G, int N, int C)
{
    for (int g = 0; g < G; g++)
        cpu_bias_add_forward(x + (size_t)g * N * C, bias + g * bias_stride, N, C);
}

static void cpu_bias_add_grouped_backward(float *dbias, long long bias_stride, const float *dout,
                                          int G, int N, int C)
{
    for (int g = 0; g < G; g++)
        cpu_bias_add_backward(dbias + g * bias_stride, dout + (size_t)g * N * C, N, C);
}

/* ------------------------------------------------------------------------------------------
 * LayerNorm */

/* One row of LayerNorm; statistics in double. */
static inline void layernorm_row(float *y, float *mean, float *rstd, const float *x,
                                 const float *weight, const float *bias, int C, float eps)
{
    double s = 0.0;
    for (int c = 0; c < C; c++)
        s += x[c];
    double m = s / C;
    double v = 0.0;
    for (int c = 0; c < C; c++) {
        double d = x[c] - m;
        v += d * d;
    }
    v /= C;
    float fm = (float)m;
    float rs = (float)(1.0 / sqrt(v + (double)eps));
#pragma omp simd
    for (int c = 0; c < C; c++)
        y[c] = (x[c] - fm) * rs * weight[c] + bias[c];
    if (mean)
        *mean = fm;
    if (rstd)
        *rstd = rs;
}

static void cpu_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                                  const float *weight, const float *bias, int N, int C, float eps)
{
#pragma omp parallel for if ((size_t)N * C >= PAR_MIN)
    for (int n = 0; n < N; n++)
        layernorm_row(out + (size_t)n * C, mean ? mean + n : NULL, rstd ? rstd + n : NULL,
                      inp + (size_t)n * C, weight, bias, C, eps);
}

static void cpu_residual_layernorm_forward(float *out, uint16_t *out16, float *res, float *mean,
                                           float *rstd, const float *x, const float *lin_bias,
                                           const float *resid, const float *weight,
                                           const float *bias, int N, int C, float eps, int type)
{
#pragma omp parallel for if ((size_t)N * C >= PAR_MIN)
    for (int n = 0; n < N; n++) {
        size_t at = (size_t)n * C;
        float *r = (res ? res : out) + at; /* out: LayerNorm reads each element before its own */
        for (int c = 0; c < C; c++) {
            float v = x[at + c];
            if (lin_bias)
                v += lin_bias[c];
            r[c] = v + resid[at + c];
        }
        layernorm_row(out + at, mean ? mean + n : NULL, rstd ? rstd + n : NULL, r, weight, bias,
                      C, eps);
        if (out16)
            for (int c = 0; c < C; c++)
                out16[at + c] = type == SHERL_HALF_F16 ? sherl_f32_to_f16(out[at + c])
                                                       : sherl_f32_to_bf16(out[at + c]);
    }
}

static void cpu_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                                   const float *inp, const float *weight, const float *mean,
                                   const float *rstd, int N, int C)
{
    if (dinp) {
#pragma omp parallel for if ((size_t)N * C >= PAR_MIN)
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C;
            const float *dy = dout + (size_t)n * C;
            float *dx = dinp + (size_t)n * C;
            float m = mean[n], rs = rstd[n];
            double a = 0.0, b = 0.0;
            for (int c = 0; c < C; c++) {
                double g = (double)dy[c] * weight[c];
                a += g;
                b += g * ((x[c] - m) * rs);
            }
            float ma = (float)(a / C), mb = (float)(b / C);
#pragma omp simd
            for (int c = 0; c < C; c++) {
                float norm = (x[c] - m) * rs;
                dx[c] += (dy[c] * weight[c] - ma - norm * mb) * rs;
            }
        }
    }
    if (dweight || dbias) {
#pragma omp parallel for if ((size_t)N * C >= PAR_MIN)
        for (int c = 0; c < C; c++) {
            double gw = 0.0, gb = 0.0;
            for (int n = 0; n < N; n++) {
                float dy = dout[(size_t)n * C + c];
                gw += (double)dy * ((inp[(size_t)n * C + c] - mean[n]) * rstd[n]);
                gb += dy;
            }
            if (dweight)
                dweight[c] += (float)gw;
            if (dbias)
                dbias[c] += (float)gb;
        }
    }
}

static void cpu_layernorm_grouped_forward(float *out, float *mean, float *rstd,
                                          long long stat_stride, const float *inp,
                                          const float *weight, const float *bias,
                                          long long param_stride, int G, int N, int C, float eps)
{
    for (int g = 0; g < G; g++) {
        size_t at = (size_t)g * N * C;
        cpu_layernorm_forward(out + at, mean ? mean + g * stat_stride : NULL,
                              rstd ? rstd + g * stat_stride : NULL, inp + at,
                              weight + g * param_stride, bias + g * param_stride, N, C, eps);
    }
}

static void cpu_layernorm_grouped_backward(float *dinp, float *dweight, float *dbias,
                                           long long param_stride, const float *dout,
                                           const float *inp, const float *weight,
                                           const float *mean, const float *rstd,
                                           long long stat_stride, int G, int N, int C)
{
    for (int g = 0; g < G; g++) {
        size_t at = (size_t)g * N * C;
        cpu_layernorm_backward(dinp ? dinp + at : NULL, dweight ? dweight + g * param_stride : NULL,
                               dbias ? dbias + g * param_stride : NULL, dout + at, inp + at,
                               weight + g * param_stride, mean + g * stat_stride,
                               rstd + g * stat_stride, N, C);
    }
}

/* ------------------------------------------------------------------------------------------
 * GELU (erf form, as BERT) */

/* gelu(x) = 0.5 x (1 + erf(x/sqrt2)) = 0.5 x erfc(-x/sqrt2), which keeps full relative
 * accuracy in the negative tail where 1 + erf cancels. */
SHERL_SIMD_CLONES
static void gelu_span(float *out, const float *inp, size_t n)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * simd_erfcf(-x * (float)M_SQRT1_2);
    }
}

SHERL_SIMD_CLONES
static void gelu_grad_span(float *dinp, const float *inp, const float *dout, size_t n)
{
    const float inv_sqrt_2pi = 0.3989422804014327f;
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float cdf = 0.5f * simd_erfcf(-x * (float)M_SQRT1_2);
        float pdf = inv_sqrt_2pi * simd_expf(-0.5f * x * x);
        dinp[i] += dout[i] * (cdf + x * pdf);
    }
}

#define SPAN 4096

static void cpu_gelu_forward(float *out, const float *inp, size_t n)
{
    size_t spans = (n + SPAN - 1) / SPAN;
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t s = 0; s < spans; s++) {
        size_t lo = s * SPAN, len = n - lo < SPAN ? n - lo : SPAN;
        gelu_span(out + lo, inp + lo, len);
    }
}

static void cpu_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n)
{
    size_t spans = (n + SPAN - 1) / SPAN;
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t s = 0; s < spans; s++) {
        size_t lo = s * SPAN, len = n - lo < SPAN ? n - lo : SPAN;
        gelu_grad_span(dinp + lo, inp + lo, dout + lo, len);
    }
}

/* The fused half tails: the same spans, the same per-element arithmetic and the same rounding
 * as bias_add_forward, gelu_forward and f32_to_bf16/f16 one after another, so the bits match
 * the unfused ops'. */
static void add_bias_span(float *x, const float *bias, size_t lo, size_t len, int C)
{
    if (!bias)
        return;
    size_t c = lo % (size_t)C;
    for (size_t i = 0; i < len; i++) {
        x[i] += bias[c];
        if (++c == (size_t)C)
            c = 0;
    }
}

static void cpu_bias_gelu_half_forward(uint16_t *out16, const float *x, const float *bias, int N,
                                       int C, int type)
{
    size_t n = (size_t)N * C, spans = (n + SPAN - 1) / SPAN;
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t s = 0; s < spans; s++) {
        size_t lo = s * SPAN, len = n - lo < SPAN ? n - lo : SPAN;
        float g[SPAN];
        memcpy(g, x + lo, len * sizeof(float));
        add_bias_span(g, bias, lo, len, C);
        gelu_span(g, g, len);
        for (size_t i = 0; i < len; i++)
            out16[lo + i] = type == SHERL_HALF_F16 ? sherl_f32_to_f16(g[i])
                                                   : sherl_f32_to_bf16(g[i]);
    }
}

static void cpu_bias_half_round_forward(float *x, uint16_t *x16, const float *bias, int N, int C,
                                        int type)
{
    size_t n = (size_t)N * C, spans = (n + SPAN - 1) / SPAN;
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t s = 0; s < spans; s++) {
        size_t lo = s * SPAN, len = n - lo < SPAN ? n - lo : SPAN;
        add_bias_span(x + lo, bias, lo, len, C);
        for (size_t i = lo; i < lo + len; i++) {
            uint16_t h = type == SHERL_HALF_F16 ? sherl_f32_to_f16(x[i]) : sherl_f32_to_bf16(x[i]);
            if (x16)
                x16[i] = h;
            x[i] = type == SHERL_HALF_F16 ? sherl_f16_to_f32(h) : sherl_bf16_to_f32(h);
        }
    }
}

static void cpu_linear_half16_forward(uint16_t *out16, float *tmp, const uint16_t *inp16,
                                      const uint16_t *w16, const float *bias, int N, int C, int OC,
                                      int type)
{
    (type == SHERL_HALF_F16 ? cpu_gemm_f16 : cpu_gemm_bf16)(0, 1, N, OC, C, 1.0f, inp16, C, w16,
                                                            C, 0.0f, tmp, OC);
    cpu_bias_half_round_forward(tmp, out16, bias, N, OC, type);
}

/* ------------------------------------------------------------------------------------------
 * softmax */

/* One row: y = softmax(scale * x + mask). y may alias x. */
SHERL_SIMD_CLONES
static void softmax_row(float *y, const float *x, const float *mask, float scale, int Tk)
{
    float mx = -INFINITY;
    if (mask) {
#pragma omp simd reduction(max : mx)
        for (int k = 0; k < Tk; k++) {
            float v = scale * x[k] + mask[k];
            y[k] = v;
            mx = v > mx ? v : mx;
        }
    } else {
#pragma omp simd reduction(max : mx)
        for (int k = 0; k < Tk; k++) {
            float v = scale * x[k];
            y[k] = v;
            mx = v > mx ? v : mx;
        }
    }
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int k = 0; k < Tk; k++) {
        float e = simd_expf(y[k] - mx);
        y[k] = e;
        sum += e;
    }
    float inv = 1.0f / sum;
#pragma omp simd
    for (int k = 0; k < Tk; k++)
        y[k] *= inv;
}

static void cpu_softmax_forward(float *out, const float *inp, const float *mask, float scale, int B,
                                int H, int Tq, int Tk)
{
    long long rows = (long long)B * H * Tq;
#pragma omp parallel for if (rows * Tk >= PAR_MIN)
    for (long long r = 0; r < rows; r++) {
        int b = (int)(r / ((long long)H * Tq));
        softmax_row(out + r * Tk, inp + r * Tk, mask ? mask + (size_t)b * Tk : NULL, scale, Tk);
    }
}

static void cpu_softmax_backward(float *dinp, const float *dout, const float *out, float scale,
                                 int B, int H, int Tq, int Tk)
{
    long long rows = (long long)B * H * Tq;
#pragma omp parallel for if (rows * Tk >= PAR_MIN)
    for (long long r = 0; r < rows; r++) {
        const float *y = out + r * Tk, *dy = dout + r * Tk;
        float *dx = dinp + r * Tk;
        double dot = 0.0;
        for (int k = 0; k < Tk; k++)
            dot += (double)dy[k] * y[k];
        float fd = (float)dot;
#pragma omp simd
        for (int k = 0; k < Tk; k++)
            dx[k] += scale * y[k] * (dy[k] - fd);
    }
}

/* ------------------------------------------------------------------------------------------
 * attention
 *
 * One (batch, head) pair per task. The head's K is gathered transposed and V gathered
 * contiguously into per-thread scratch so every inner loop is a unit-stride axpy that the
 * compiler vectorises; the [T,T] probabilities go straight into `probs`. */

/* One (batch, head): scores = q.k^T straight into probs[T,T], row softmax (rounded to the half
 * type `half`, or not when it is -1), out = probs.v. Both products are single-threaded sgemm
 * calls on strided views of qkv (heads are parallelised above), so no gather is needed. */
static void attention_head_forward(float *out, float *probs, const float *base, const float *mrow,
                                   int T, int C, int h, int HS, float scale, int half)
{
    const int C3 = 3 * C;
    sgemm1(0, 1, T, T, HS, 1.0f, base + h * HS, C3, base + C + h * HS, C3, 0.0f, probs, T);
    for (int i = 0; i < T; i++)
        softmax_row(probs + (size_t)i * T, probs + (size_t)i * T, mrow, scale, T);
    if (half >= 0)
        for (size_t i = 0; i < (size_t)T * T; i++)
            probs[i] = sherl_half_round_f32(probs[i], half);
    sgemm1(0, 0, T, HS, T, 1.0f, probs, T, base + 2 * C + h * HS, C3, 0.0f, out + h * HS, C);
}

/* probs NULL (attention_half_forward only): each thread's (batch, head) probabilities go to a
 * [T, T] block of its own, not kept */
static void attention_forward_any(float *out, float *probs, const float *qkv, const float *mask,
                                  int B, int T, int NH, int HS, int half)
{
    const int C = NH * HS, C3 = 3 * C;
    const float scale = 1.0f / sqrtf((float)HS);
    int failed = 0;
#pragma omp parallel reduction(| : failed)
    {
        float *own = probs ? NULL : malloc((size_t)T * T * sizeof(float));
        failed = !probs && !own;
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * NH; bh++) {
            int b = bh / NH, h = bh % NH;
            if (!probs && !own)
                continue;
            attention_head_forward(out + (size_t)b * T * C,
                                   probs ? probs + (size_t)bh * T * T : own,
                                   qkv + (size_t)b * T * C3, mask ? mask + (size_t)b * T : NULL, T,
                                   C, h, HS, scale, half);
        }
        free(own);
    }
    if (failed)
        cpu_fail("attention_half_forward's probabilities", (size_t)T * T * sizeof(float));
}

static void cpu_attention_forward(float *out, float *probs, const float *qkv, const float *mask,
                                  int B, int T, int NH, int HS)
{
    attention_forward_any(out, probs, qkv, mask, B, T, NH, HS, -1);
}

static void cpu_attention_half_forward(float *out, float *probs, const float *qkv,
                                       const float *mask, int B, int T, int NH, int HS, int type)
{
    attention_forward_any(out, probs, qkv, mask, B, T, NH, HS,
                          type == SHERL_HALF_F16 ? SHERL_HALF_F16 : SHERL_HALF_BF16);
}

/* The reference semantics, a sequence at a time: its qkv16 widened, attention_half_forward
 * without probabilities, the output rounded. */
static void cpu_attention_half16_forward(uint16_t *out16, const uint16_t *qkv16,
                                         const float *mask, int B, int T, int NH, int HS,
                                         int type)
{
    size_t no = (size_t)T * NH * HS, nq = 3 * no;
    float *qkv = malloc(nq * sizeof(float)), *out = malloc(no * sizeof(float));
    if (!qkv || !out) {
        free(qkv), free(out);
        cpu_fail("attention_half16_forward's widened operands", (nq + no) * sizeof(float));
        return;
    }
    int f16 = type == SHERL_HALF_F16;
    for (int b = 0; b < B; b++) {
        (f16 ? cpu_f16_to_f32 : cpu_bf16_to_f32)(qkv, qkv16 + (size_t)b * nq, nq);
        attention_forward_any(out, NULL, qkv, mask ? mask + (size_t)b * T : NULL, 1, T, NH, HS,
                              f16 ? SHERL_HALF_F16 : SHERL_HALF_BF16);
        (f16 ? cpu_f32_to_f16 : cpu_f32_to_bf16)(out16 + (size_t)b * no, out, no);
    }
    free(qkv), free(out);
}

/* dS for a block of R query rows fits in this many floats on each thread's stack. */
#define ATTN_BLOCK_FLOATS 16384

/* One (batch, head), query rows i0..i0+R at a time, as single-threaded sgemm calls on strided
 * views of qkv and dout:
 *   dP = dO V^T,  dV += P^T dO,  dS = scale * P (dP - rowsum(P dP)),  dQ += dS K,  dK += dS^T Q.
 * dp holds R x T floats. Row sums are in double; nothing depends on the thread count. */
static void attention_head_backward(float *dbase, float *dp, int R, const float *dout_b,
                                    const float *p, const float *base, int T, int C, int h, int HS,
                                    float scale)
{
    const int C3 = 3 * C;
    const float *q = base + h * HS, *k = base + C + h * HS, *v = base + 2 * C + h * HS;
    float *dq = dbase + h * HS, *dk = dbase + C + h * HS, *dv = dbase + 2 * C + h * HS;
    const float *dy = dout_b + h * HS;
    for (int i0 = 0; i0 < T; i0 += R) {
        int r = T - i0 < R ? T - i0 : R;
        const float *pb = p + (size_t)i0 * T, *dyb = dy + (size_t)i0 * C;
        sgemm1(0, 1, r, T, HS, 1.0f, dyb, C, v, C3, 0.0f, dp, T);
        sgemm1(1, 0, T, HS, r, 1.0f, pb, T, dyb, C, 1.0f, dv, C3);
        for (int i = 0; i < r; i++) {
            const float *pi = pb + (size_t)i * T;
            float *di = dp + (size_t)i * T;
            double dot = 0.0;
            for (int j = 0; j < T; j++)
                dot += (double)di[j] * pi[j];
            float fd = (float)dot;
#pragma omp simd
            for (int j = 0; j < T; j++)
                di[j] = scale * pi[j] * (di[j] - fd);
        }
        sgemm1(0, 0, r, HS, T, 1.0f, dp, T, k, C3, 1.0f, dq + (size_t)i0 * C3, C3);
        sgemm1(1, 0, T, HS, r, 1.0f, dp, T, q + (size_t)i0 * C3, C3, 1.0f, dk, C3);
    }
}

/* Per-thread scratch for dS lives on the stack (ATTN_BLOCK_FLOATS, so no allocation for any
 * T up to that); a longer row takes one row from the heap, and should even that fail the op
 * cannot report it (no error channel): the engine caps T at max_length 8192 well below. */
static void cpu_attention_backward(float *dqkv, const float *dout, const float *qkv,
                                   const float *probs, int B, int T, int NH, int HS)
{
    const int C = NH * HS, C3 = 3 * C;
    const float scale = 1.0f / sqrtf((float)HS);
    const int R = T <= ATTN_BLOCK_FLOATS ? (ATTN_BLOCK_FLOATS / T < T ? ATTN_BLOCK_FLOATS / T : T) : 1;
#pragma omp parallel
    {
        float local[ATTN_BLOCK_FLOATS];
        float *dp = T <= ATTN_BLOCK_FLOATS ? local : malloc(sizeof(float) * (size_t)T);
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * NH; bh++) {
            int b = bh / NH, h = bh % NH;
            if (dp)
                attention_head_backward(dqkv + (size_t)b * T * C3, dp, R, dout + (size_t)b * T * C,
                                        probs + (size_t)bh * T * T, qkv + (size_t)b * T * C3, T,
                                        C, h, HS, scale);
        }
        if (dp != local)
            free(dp);
    }
}

/* ------------------------------------------------------------------------------------------
 * embedding, residual, dropout */

static void cpu_embedding_forward(float *out, const int32_t *ids, const float *table, int N, int C)
{
#pragma omp parallel for if ((size_t)N * C >= PAR_MIN)
    for (int n = 0; n < N; n++)
        memcpy(out + (size_t)n * C, table + (size_t)ids[n] * C, sizeof(float) * C);
}

static void cpu_embedding_forward_bf16(float *out, const int32_t *ids, const uint16_t *table,
                                      int N, int C)
{
#pragma omp parallel for if ((size_t)N * C >= PAR_MIN)
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            out[(size_t)n * C + c] = sherl_bf16_to_f32(table[(size_t)ids[n] * C + c]);
}

static void cpu_embedding_forward_f16(float *out, const int32_t *ids, const uint16_t *table,
                                     int N, int C)
{
#pragma omp parallel for if ((size_t)N * C >= PAR_MIN)
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            out[(size_t)n * C + c] = sherl_f16_to_f32(table[(size_t)ids[n] * C + c]);
}

static void cpu_embedding_backward(float *dtable, const float *dout, const int32_t *ids, int N,
                                   int C)
{
    /* Rows can repeat ids: parallel over columns keeps every write owned by one thread. */
#pragma omp parallel for if ((size_t)N * C >= PAR_MIN)
    for (int c = 0; c < C; c++)
        for (int n = 0; n < N; n++)
            dtable[(size_t)ids[n] * C + c] += dout[(size_t)n * C + c];
}

static void cpu_residual_forward(float *out, const float *a, const float *b, size_t n)
{
#pragma omp parallel for simd if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
}

static void cpu_residual_backward(float *da, float *db, const float *dout, size_t n)
{
#pragma omp parallel for simd if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        if (da)
            da[i] += dout[i];
        if (db)
            db[i] += dout[i];
    }
}

static void cpu_dropout_forward(float *out, const float *inp, size_t n, float p, uint64_t seed,
                                uint64_t offset)
{
    if (p <= 0.0f) {
        if (out != inp)
            memmove(out, inp, n * sizeof(float));
        return;
    }
    float keep_scale = 1.0f / (1.0f - p);
#pragma omp parallel for if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++)
        out[i] = sherl_dropout_uniform(seed, offset + i) >= p ? inp[i] * keep_scale : 0.0f;
}

static void cpu_dropout_backward(float *dinp, const float *dout, size_t n, float p, uint64_t seed,
                                 uint64_t offset)
{
    float keep_scale = p <= 0.0f ? 1.0f : 1.0f / (1.0f - p);
#pragma omp parallel for if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++)
        if (p <= 0.0f || sherl_dropout_uniform(seed, offset + i) >= p)
            dinp[i] += dout[i] * keep_scale;
}

/* ------------------------------------------------------------------------------------------
 * pooling and normalisation */

/* 1 / max(number of real tokens, 1e-9), as sentence-transformers clamps it. */
static float inv_token_count(const int32_t *mask_row, int T)
{
    int cnt = 0;
    for (int t = 0; t < T; t++)
        cnt += mask_row[t] != 0;
    return (float)(1.0 / (cnt > 0 ? (double)cnt : 1e-9));
}

static void cpu_mean_pool_forward(float *out, const float *inp, const int32_t *mask, int B, int T,
                                  int C)
{
#pragma omp parallel for if ((size_t)B * T * C >= PAR_MIN)
    for (int b = 0; b < B; b++) {
        float inv = inv_token_count(mask + (size_t)b * T, T);
        for (int c = 0; c < C; c++) {
            double s = 0.0;
            for (int t = 0; t < T; t++)
                if (mask[(size_t)b * T + t])
                    s += inp[((size_t)b * T + t) * C + c];
            out[(size_t)b * C + c] = (float)s * inv;
        }
    }
}

static void cpu_mean_pool_backward(float *dinp, const float *dout, const int32_t *mask, int B,
                                   int T, int C)
{
#pragma omp parallel for if ((size_t)B * T * C >= PAR_MIN)
    for (int b = 0; b < B; b++) {
        float inv = inv_token_count(mask + (size_t)b * T, T);
        for (int t = 0; t < T; t++) {
            if (!mask[(size_t)b * T + t])
                continue;
            float *dx = dinp + ((size_t)b * T + t) * C;
            const float *dy = dout + (size_t)b * C;
            for (int c = 0; c < C; c++)
                dx[c] += dy[c] * inv;
        }
    }
}

static double row_norm(const float *x, int C)
{
    double ss = 0.0;
    for (int c = 0; c < C; c++)
        ss += (double)x[c] * x[c];
    return sqrt(ss);
}

static void cpu_l2norm_forward(float *out, const float *inp, int N, int C, float eps)
{
#pragma omp parallel for if ((size_t)N * C >= PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        double nrm = row_norm(x, C);
        float inv = (float)(1.0 / (nrm > eps ? nrm : eps));
        for (int c = 0; c < C; c++)
            out[(size_t)n * C + c] = x[c] * inv;
    }
}

static void cpu_l2norm_backward(float *dinp, const float *dout, const float *inp, int N, int C,
                                float eps)
{
#pragma omp parallel for if ((size_t)N * C >= PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        float *dx = dinp + (size_t)n * C;
        double nrm = row_norm(x, C);
        if (nrm > eps) {
            /* y = x/|x|: dx = (dy - y (y . dy)) / |x| */
            double ydy = 0.0;
            for (int c = 0; c < C; c++)
                ydy += (double)x[c] * dy[c];
            ydy /= nrm;
            for (int c = 0; c < C; c++)
                dx[c] += (float)((dy[c] - (x[c] / nrm) * ydy) / nrm);
        } else {
            for (int c = 0; c < C; c++)
                dx[c] += dy[c] / eps;
        }
    }
}

/* ------------------------------------------------------------------------------------------
 * deterministic reductions
 *
 * A sum over many elements is cut into fixed chunks of RED_CHUNK, independent of the thread
 * count; each chunk is summed in double, in a fixed order, into its own slot and the slots are
 * then added in order on one thread. The result is the same to the bit for any number of
 * threads. */

#define RED_CHUNK 8192

static size_t red_chunks(size_t n) { return (n + RED_CHUNK - 1) / RED_CHUNK; }

/* A small array of per-chunk partial sums: on the stack when it fits, else on the heap. */
typedef struct {
    double local[64];
    double *p;
} partials;

static double *partials_get(partials *pt, size_t count)
{
    if (count <= sizeof pt->local / sizeof pt->local[0]) {
        memset(pt->local, 0, sizeof pt->local);
        pt->p = pt->local;
    } else {
        pt->p = calloc(count, sizeof(double));
    }
    return pt->p;
}

static void partials_put(partials *pt)
{
    if (pt->p != pt->local)
        free(pt->p);
    pt->p = NULL;
}

/* Four running sums, combined in a fixed order: exact same rounding on every call. */
static double chunk_sumsq(const float *x, size_t n)
{
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += (double)x[i] * x[i];
        s1 += (double)x[i + 1] * x[i + 1];
        s2 += (double)x[i + 2] * x[i + 2];
        s3 += (double)x[i + 3] * x[i + 3];
    }
    for (; i < n; i++)
        s0 += (double)x[i] * x[i];
    return (s0 + s1) + (s2 + s3);
}

static double chunk_dot(const float *a, const float *b, size_t n)
{
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += (double)a[i] * b[i];
        s1 += (double)a[i + 1] * b[i + 1];
        s2 += (double)a[i + 2] * b[i + 2];
        s3 += (double)a[i + 3] * b[i + 3];
    }
    for (; i < n; i++)
        s0 += (double)a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

/* sum_i x[i]^2 (y NULL) or sum_i x[i] y[i], chunked as above. */
static double det_dot(const float *x, const float *y, size_t n)
{
    if (n == 0)
        return 0.0;
    size_t nc = red_chunks(n);
    partials pt;
    double *part = partials_get(&pt, nc);
    double total = 0.0;
    if (!part) { /* no memory for the slots: the same chunks, summed on this thread */
        for (size_t c = 0; c < nc; c++) {
            size_t lo = c * RED_CHUNK, len = n - lo < RED_CHUNK ? n - lo : RED_CHUNK;
            total += y ? chunk_dot(x + lo, y + lo, len) : chunk_sumsq(x + lo, len);
        }
        return total;
    }
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t c = 0; c < nc; c++) {
        size_t lo = c * RED_CHUNK, len = n - lo < RED_CHUNK ? n - lo : RED_CHUNK;
        part[c] = y ? chunk_dot(x + lo, y + lo, len) : chunk_sumsq(x + lo, len);
    }
    for (size_t c = 0; c < nc; c++)
        total += part[c];
    partials_put(&pt);
    return total;
}

/* ------------------------------------------------------------------------------------------
 * ReLU */

static void cpu_relu_forward(float *out, const float *inp, size_t n)
{
    /* x < 0 ? 0 : x keeps NaN as NaN, as torch.relu does */
#pragma omp parallel for simd if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++)
        out[i] = inp[i] < 0.0f ? 0.0f : inp[i];
}

static void cpu_relu_backward(float *dinp, const float *inp, const float *dout, size_t n)
{
    /* a select, not a product: relu'(0) = 0 and an infinite dout on a dead unit gives 0 */
#pragma omp parallel for simd if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++)
        dinp[i] += inp[i] > 0.0f ? dout[i] : 0.0f;
}

/* ------------------------------------------------------------------------------------------
 * SHERL guidance (kernels.h, DESIGN.md section 2 steps 2-6)
 *
 * Per token, everything is done in double from the float inputs. The cosines come from the
 * Gram matrix G[j,m] = x_j . x_m of the shallow taps: ||x_j|| = sqrt(G[j,j]) and
 * cos(j,m) = G[j,m] inv_j inv_m with inv_j = 1 / (||x_j|| + 1e-8), so no normalised copy of
 * the taps is ever stored. Loops over the feature dim keep one double accumulator per
 * feature (unit stride, vectorisable) and add the taps in a fixed order. */

#define MTSA_EPS 1e-8
/* Tokens per reduction chunk of dw/dc in backward (fixed, so sums do not depend on threads). */
#define MTSA_CHUNK 32

/* Per-thread scratch in doubles: G and the coefficient matrix M (S x S each), 8 vectors of S,
 * 3 vectors of d (about 11 KiB for S = 11, d = 384). Should this small allocation fail, the op
 * leaves its outputs untouched and reports it through take_error. */
static size_t mtsa_scratch_bytes(int S, int d)
{
    return (2 * (size_t)S * S + 8 * (size_t)S + 3 * (size_t)d) * sizeof(double);
}

static double *mtsa_scratch(int S, int d) { return malloc(mtsa_scratch_bytes(S, d)); }

/* sum_e a[e] b[e] for float a, double b, in four fixed lanes */
static double dot_fd(const float *a, const double *b, int n)
{
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
    }
    for (; i < n; i++)
        s0 += a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

/* Gram matrix, norms and inverse padded norms of the S shallow taps of one token. */
static void mtsa_gram(double *G, double *nrm, double *inv, const float *x, int S, size_t tap,
                      int d)
{
    for (int j = 0; j < S; j++)
        for (int m = j; m < S; m++)
            G[j * S + m] = G[m * S + j] = chunk_dot(x + (size_t)j * tap, x + (size_t)m * tap, d);
    for (int j = 0; j < S; j++) {
        nrm[j] = sqrt(G[j * S + j]);
        inv[j] = 1.0 / (nrm[j] + MTSA_EPS);
    }
}

static double mtsa_cos(const double *G, const double *inv, int S, int j, int m)
{
    return G[j * S + m] * inv[j] * inv[m];
}

/* wg[e] = w[e] g[e] (exact in double) */
static void mtsa_wg(double *wg, const float *w, const float *g, int d)
{
    for (int e = 0; e < d; e++)
        wg[e] = (double)w[e] * g[e];
}

static void mtsa_token_forward(float *z, float *s_out, float *rho_out, float *alpha_out,
                               const float *x, const float *w, float c, int S, size_t tap, int d,
                               double *scratch)
{
    double *G = scratch, *nrm = G + 2 * (size_t)S * S, *inv = nrm + S, *a = inv + S;
    double *wg = nrm + 8 * (size_t)S, *acc = wg + d;
    const float *g = x + (size_t)S * tap;
    mtsa_gram(G, nrm, inv, x, S, tap, d);
    mtsa_wg(wg, w, g, d);
    double asum = 0.0;
    for (int j = 0; j < S; j++) {
        double rho = 0.0;
        for (int m = 0; m < S; m++) {
            double cs = mtsa_cos(G, inv, S, j, m);
            rho += cs > 0.0 ? cs : 0.0;
        }
        double s = c + dot_fd(x + (size_t)j * tap, wg, d);
        a[j] = (s > 0.0 ? s : 0.0) / rho;
        asum += fabs(a[j]);
        s_out[j] = (float)s;
        rho_out[j] = (float)rho;
    }
    double A = asum + MTSA_EPS;
    for (int e = 0; e < d; e++)
        acc[e] = g[e];
    for (int j = 0; j < S; j++) {
        double al = a[j] / A;
        const float *xj = x + (size_t)j * tap;
        alpha_out[j] = (float)al;
        for (int e = 0; e < d; e++)
            acc[e] += al * xj[e];
    }
    for (int e = 0; e < d; e++)
        z[e] = (float)acc[e];
}

static void cpu_mtsa_guide_forward(float *z, float *s, float *rho, float *alpha, const float *x,
                                   const float *w, const float *c, int K, int N, int d)
{
    const int S = K - 1;
    const size_t tap = (size_t)N * d;
    if (S < 1 || N <= 0)
        return;
    const float c0 = c ? c[0] : 0.0f;
    int missing = 0; /* a thread without scratch: reported on the caller's thread below */
#pragma omp parallel if ((size_t)K * N * d >= PAR_MIN)
    {
        double *scratch = mtsa_scratch(S, d);
        if (!scratch) {
#pragma omp atomic write
            missing = 1;
        }
#pragma omp for schedule(static)
        for (int n = 0; n < N; n++)
            if (scratch)
                mtsa_token_forward(z + (size_t)n * d, s + (size_t)n * S, rho + (size_t)n * S,
                                   alpha + (size_t)n * S, x + (size_t)n * d, w, c0, S, tap, d,
                                   scratch);
        free(scratch);
    }
    if (missing)
        cpu_fail("mtsa_guide_forward", mtsa_scratch_bytes(S, d));
}

/* One token's backward. x, dx point at the token's row in tap 0 (taps `tap` floats apart);
 * dwc (d + 1 doubles: dw then dc) receives this token's parameter gradient, or is NULL. */
static void mtsa_token_backward(float *dx, double *dwc, const float *dz, const float *x,
                                const float *w, const float *s, const float *rho,
                                const float *alpha, int S, size_t tap, int d, double *scratch)
{
    double *G = scratch, *M = G + (size_t)S * S, *nrm = M + (size_t)S * S, *inv = nrm + S;
    double *a = inv + S, *dal = a + S, *ds = dal + S, *drho = ds + S, *q = drho + S,
           *sg = q + S;
    double *wg = sg + S, *acc = wg + d, *u = acc + d;
    const float *g = x + (size_t)S * tap;

    /* z = g + sum_j alpha_j x_j  ->  dalpha_j = dz . x_j */
    double asum = 0.0, t = 0.0;
    for (int j = 0; j < S; j++) {
        dal[j] = chunk_dot(dz, x + (size_t)j * tap, d);
        t += dal[j] * alpha[j];
        a[j] = (s[j] > 0.0f ? (double)s[j] : 0.0) / rho[j];
        asum += fabs(a[j]);
        sg[j] = a[j] > 0.0 ? 1.0 : (a[j] < 0.0 ? -1.0 : 0.0); /* d|a|/da, sign(0) = 0 */
    }
    /* alpha_j = a_j / A, A = sum_m |a_m| + eps:
     *   da_j = (dalpha_j - sign(a_j) sum_m dalpha_m alpha_m) / A
     * a_j = relu(s_j) / rho_j: ds_j = [s_j > 0] da_j / rho_j, drho_j = -da_j a_j / rho_j */
    double A = asum + MTSA_EPS, dcs = 0.0;
    for (int j = 0; j < S; j++) {
        double da = (dal[j] - sg[j] * t) / A;
        ds[j] = s[j] > 0.0f ? da / rho[j] : 0.0;
        drho[j] = -da * a[j] / rho[j];
        dcs += ds[j];
    }
    /* s_j = w . (x_j * g) + c; u = sum_j ds_j x_j gives dg += w * u, dw += g * u */
    for (int e = 0; e < d; e++)
        u[e] = 0.0;
    for (int j = 0; j < S; j++) {
        const float *xj = x + (size_t)j * tap;
        for (int e = 0; e < d; e++)
            u[e] += ds[j] * xj[e];
    }
    if (dwc) {
        for (int e = 0; e < d; e++)
            dwc[e] += (double)g[e] * u[e];
        dwc[d] += dcs;
    }
    if (!dx)
        return;
    float *dg = dx + (size_t)S * tap;
    for (int e = 0; e < d; e++)
        dg[e] += (float)((double)dz[e] + (double)w[e] * u[e]);

    /* rho_j = sum_m relu(cos_jm), cos = xh xh^T with xh_j = x_j inv_j:
     *   d xh_j = sum_m (drho_j + drho_m) [cos_jm > 0] xh_m   (the diagonal m = j counts twice)
     * and through xh_j = x_j / (||x_j|| + eps), in terms of the x_m:
     *   dx_j += sum_m M[j,m] x_m + q_j x_j,  M[j,m] = inv_j [cos_jm > 0] (drho_j + drho_m) inv_m,
     *   q_j = -(d xh_j . x_j) inv_j^2 / ||x_j||   (0 when ||x_j|| = 0, as torch's norm backward),
     * where d xh_j . x_j = sum_m [cos_jm > 0] (drho_j + drho_m) inv_m G[j,m]. */
    mtsa_gram(G, nrm, inv, x, S, tap, d);
    for (int j = 0; j < S; j++) {
        double dxh_dot_x = 0.0;
        for (int m = 0; m < S; m++) {
            double cm = mtsa_cos(G, inv, S, j, m) > 0.0 ? (drho[j] + drho[m]) * inv[m] : 0.0;
            dxh_dot_x += cm * G[j * S + m];
            M[j * S + m] = inv[j] * cm;
        }
        q[j] = nrm[j] > 0.0 ? -dxh_dot_x * inv[j] * inv[j] / nrm[j] : 0.0;
    }
    /* the rest of dx_j: alpha_j dz (from z) + ds_j w g (from s_j) */
    mtsa_wg(wg, w, g, d);
    for (int j = 0; j < S; j++) {
        const float *xj = x + (size_t)j * tap;
        double al = alpha[j];
        for (int e = 0; e < d; e++)
            acc[e] = al * dz[e] + ds[j] * wg[e] + q[j] * xj[e];
        for (int m = 0; m < S; m++) {
            const float *xm = x + (size_t)m * tap;
            double mjm = M[(size_t)j * S + m];
            for (int e = 0; e < d; e++)
                acc[e] += mjm * xm[e];
        }
        float *dxj = dx + (size_t)j * tap;
        for (int e = 0; e < d; e++)
            dxj[e] += (float)acc[e];
    }
}

static void cpu_mtsa_guide_backward(float *dx, float *dw, float *dc, const float *dz,
                                    const float *x, const float *w, const float *s,
                                    const float *rho, const float *alpha, int K, int N, int d)
{
    const int S = K - 1;
    const size_t tap = (size_t)N * d;
    if (S < 1 || N <= 0 || (!dx && !dw && !dc))
        return;
    /* dw and dc: one slot of d + 1 doubles per chunk of MTSA_CHUNK tokens, summed in order */
    const int nchunks = (N + MTSA_CHUNK - 1) / MTSA_CHUNK;
    double *part = NULL;
    if (dw || dc) {
        part = calloc((size_t)nchunks * (d + 1), sizeof(double));
        if (!part) {
            cpu_fail("mtsa_guide_backward", (size_t)nchunks * (d + 1) * sizeof(double));
            return;
        }
    }
    int missing = 0;
#pragma omp parallel if ((size_t)K * N * d >= PAR_MIN)
    {
        double *scratch = mtsa_scratch(S, d);
        if (!scratch) {
#pragma omp atomic write
            missing = 1;
        }
#pragma omp for schedule(static)
        for (int ch = 0; ch < nchunks; ch++) {
            int lo = ch * MTSA_CHUNK, hi = lo + MTSA_CHUNK < N ? lo + MTSA_CHUNK : N;
            for (int n = lo; n < hi && scratch; n++)
                mtsa_token_backward(dx ? dx + (size_t)n * d : NULL,
                                    part ? part + (size_t)ch * (d + 1) : NULL, dz + (size_t)n * d,
                                    x + (size_t)n * d, w, s + (size_t)n * S, rho + (size_t)n * S,
                                    alpha + (size_t)n * S, S, tap, d, scratch);
        }
        free(scratch);
    }
    if (missing)
        cpu_fail("mtsa_guide_backward", mtsa_scratch_bytes(S, d));
    if (part) {
        for (int e = 0; e <= d; e++) {
            double acc = 0.0;
            for (int ch = 0; ch < nchunks; ch++)
                acc += part[(size_t)ch * (d + 1) + e];
            if (e < d && dw)
                dw[e] += (float)acc;
            else if (e == d && dc)
                dc[0] += (float)acc;
        }
        free(part);
    }
}

/* ------------------------------------------------------------------------------------------
 * tanh gate */

static void cpu_gate_add_forward(float *out, const float *y, const float *h, const float *lambda,
                                 float temp, size_t n)
{
    const float gate = (float)tanh((double)lambda[0] / temp);
#pragma omp parallel for simd if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++)
        out[i] = y[i] + gate * h[i];
}

static void cpu_gate_add_backward(float *dy, float *dlambda, const float *dout, const float *h,
                                  const float *lambda, float temp, size_t n)
{
    if (dy) {
#pragma omp parallel for simd if (n >= PAR_MIN)
        for (size_t i = 0; i < n; i++)
            dy[i] += dout[i];
    }
    if (dlambda) {
        double th = tanh((double)lambda[0] / temp);
        dlambda[0] += (float)(det_dot(dout, h, n) * (1.0 - th * th) / temp);
    }
}

/* ------------------------------------------------------------------------------------------
 * losses */

static void cpu_crossentropy_forward(float *losses, float *probs, const float *logits,
                                     const int32_t *labels, int B, int C)
{
#pragma omp parallel for if ((size_t)B * C >= PAR_MIN)
    for (int b = 0; b < B; b++) {
        const float *x = logits + (size_t)b * C;
        float *p = probs + (size_t)b * C;
        double mx = -INFINITY;
        for (int c = 0; c < C; c++)
            mx = x[c] > mx ? x[c] : mx;
        double sum = 0.0;
        for (int c = 0; c < C; c++)
            sum += exp((double)x[c] - mx);
        double lse = log(sum);
        for (int c = 0; c < C; c++)
            p[c] = (float)exp((double)x[c] - mx - lse);
        losses[b] = (float)(lse - ((double)x[labels[b]] - mx));
    }
}

static void cpu_crossentropy_backward(float *dlogits, const float *probs, const int32_t *labels,
                                      float scale, int B, int C)
{
#pragma omp parallel for if ((size_t)B * C >= PAR_MIN)
    for (int b = 0; b < B; b++) {
        const float *p = probs + (size_t)b * C;
        float *dx = dlogits + (size_t)b * C;
        int y = labels[b];
        for (int c = 0; c < C; c++)
            dx[c] += scale * (p[c] - (c == y ? 1.0f : 0.0f));
    }
}

static void cpu_mse_forward(float *losses, const float *pred, const float *target, int B)
{
#pragma omp parallel for simd if (B >= PAR_MIN)
    for (int b = 0; b < B; b++) {
        float r = pred[b] - target[b];
        losses[b] = r * r;
    }
}

static void cpu_mse_backward(float *dpred, const float *pred, const float *target, float scale,
                             int B)
{
#pragma omp parallel for simd if (B >= PAR_MIN)
    for (int b = 0; b < B; b++)
        dpred[b] += scale * 2.0f * (pred[b] - target[b]);
}

/* ------------------------------------------------------------------------------------------
 * optimizer */

/* torch.optim.AdamW (1.13, single-tensor path): the hyper-parameters are Python floats, so the
 * scalars are formed in double and rounded to float where a tensor op takes them; the
 * element-wise steps are float in PyTorch's order (addcmul: value * t1 * t2; addcdiv:
 * value * t1 / t2). */
static void cpu_adamw_update(float *param, const float *grad, float *m, float *v, size_t n,
                             float lr, float beta1, float beta2, float eps, float weight_decay,
                             int t)
{
    const float decay = (float)(1.0 - (double)lr * weight_decay);
    const float b1 = beta1, b2 = beta2;
    const float one_b1 = (float)(1.0 - (double)beta1), one_b2 = (float)(1.0 - (double)beta2);
    const double bc1 = 1.0 - pow((double)beta1, t), bc2 = 1.0 - pow((double)beta2, t);
    const float neg_step = (float)(-((double)lr / bc1));
    const float bc2_sqrt = (float)sqrt(bc2);
#pragma omp parallel for simd if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float g = grad[i];
        float p = param[i] * decay;
        float mi = m[i] * b1 + one_b1 * g;
        float vi = v[i] * b2 + one_b2 * g * g;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        m[i] = mi;
        v[i] = vi;
        param[i] = p + neg_step * mi / denom;
    }
}

static double cpu_sumsq(const float *x, size_t n) { return det_dot(x, NULL, n); }

static void cpu_scale(float *x, size_t n, float s)
{
#pragma omp parallel for simd if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++)
        x[i] *= s;
}

/* BLIS packs each product's blocks of A (MC x KC) and panels of B (KC x NC) into buffers from a
 * pool of its own that it keeps for the process's life, one set per thread in a product at once
 * (every thread here). The pool sizes its blocks for the widest type, but a float product
 * touches only a float block's pages; a block may grow to the maximum sizes (a final partition
 * takes up to those), so those count. */
static size_t cpu_library_bytes(int threads)
{
    if (threads <= 0)
        threads = cpu_get_threads();
    cntx_t *cx = bli_gks_query_cntx();
    size_t mc = (size_t)bli_cntx_get_blksz_max_dt(BLIS_FLOAT, BLIS_MC, cx);
    size_t kc = (size_t)bli_cntx_get_blksz_max_dt(BLIS_FLOAT, BLIS_KC, cx);
    size_t nc = (size_t)bli_cntx_get_blksz_max_dt(BLIS_FLOAT, BLIS_NC, cx);
    return (size_t)threads * (mc * kc + kc * nc) * sizeof(float);
}

/* What the ops above allocate on the heap for themselves; the largest single op bounds the
 * step's transient scratch. glibc's per-allocation header is counted too. */
static size_t cpu_scratch_bytes(const sherl_scratch_shape *q)
{
    size_t threads = q->threads > 0 ? (size_t)q->threads : (size_t)cpu_get_threads();
    size_t most = 0, b;
    /* attention backward: a heap row only past the stack block */
    if (q->T > ATTN_BLOCK_FLOATS && (b = threads * (sizeof(float) * (size_t)q->T + 16)) > most)
        most = b;
    if (q->K >= 2) {
        size_t S = (size_t)q->K - 1, d = (size_t)q->d;
        size_t per_thread = (2 * S * S + 8 * S + 3 * d) * sizeof(double) + 16;
        size_t chunks = ((size_t)q->N + MTSA_CHUNK - 1) / MTSA_CHUNK;
        b = threads * per_thread + chunks * (d + 1) * sizeof(double) + 16;
        if (b > most)
            most = b;
    }
    /* attention_half_forward without probabilities: a [T, T] block per thread; with
     * attention_half16_forward's widened Q|K|V and output of a sequence ([T, 4 C] floats) */
    if (q->half) {
        size_t att = (size_t)q->T * 4 * q->NH * q->HS * sizeof(float) + 32;
        if ((b = att + threads * ((size_t)q->T * q->T * sizeof(float) + 16)) > most)
            most = b;
    }
    size_t nc = red_chunks(q->max_reduce);
    if (nc > 64 && (b = nc * sizeof(double) + 16) > most) /* partials beyond the stack slots */
        most = b;
    if (q->half) { /* gemm_half widens both operands: the widest activation (the engine's are
                    * [N, 3D] at most, the Q|K|V gradient, or a feed-forward chunk of at least
                    * one row of F) and the widest weight */
        size_t D = (size_t)q->NH * q->HS;
        size_t wide = (size_t)q->F > 3 * D ? (size_t)q->F : 3 * D;
        size_t act = (size_t)q->N * 3 * D > (size_t)q->F ? (size_t)q->N * 3 * D : (size_t)q->F;
        if ((b = (act + wide * D) * sizeof(float) + 32) > most)
            most = b;
    }
    return most;
}

static const sherl_backend cpu_backend = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .copy_to_device = cpu_copy,
    .copy_to_host = cpu_copy,
    .zero = cpu_zero,
    .synchronize = cpu_synchronize,
    .set_threads = cpu_set_threads,
    .get_threads = cpu_get_threads,
    .describe = cpu_describe,
    .performance_advice = cpu_performance_advice,
    .host_memory = 1,
    .scratch_bytes = cpu_scratch_bytes,
    .library_bytes = cpu_library_bytes,
    .prepare = cpu_prepare,
    .take_error = cpu_take_error,
    .mem_info = cpu_mem_info,
    .copy_device = cpu_copy_device,
    .allow_tf32 = cpu_allow_tf32,
    .gemm_bf16 = cpu_gemm_bf16,
    .f32_to_bf16 = cpu_f32_to_bf16,
    .bf16_to_f32 = cpu_bf16_to_f32,
    .gemm_f16 = cpu_gemm_f16,
    .f32_to_f16 = cpu_f32_to_f16,
    .f16_to_f32 = cpu_f16_to_f32,
    .embedding_forward_f16 = cpu_embedding_forward_f16,
    .gemm = cpu_gemm,
    .gemm_strided_batched = cpu_gemm_strided_batched,
    .matmul_forward = cpu_matmul_forward,
    .matmul_backward = cpu_matmul_backward,
    .bias_add_forward = cpu_bias_add_forward,
    .bias_add_backward = cpu_bias_add_backward,
    .layernorm_forward = cpu_layernorm_forward,
    .residual_layernorm_forward = cpu_residual_layernorm_forward,
    .layernorm_backward = cpu_layernorm_backward,
    .gemm_bf16_strided_batched = cpu_gemm_bf16_strided_batched,
    .gemm_f16_strided_batched = cpu_gemm_f16_strided_batched,
    .bias_add_grouped_forward = cpu_bias_add_grouped_forward,
    .bias_add_grouped_backward = cpu_bias_add_grouped_backward,
    .layernorm_grouped_forward = cpu_layernorm_grouped_forward,
    .layernorm_grouped_backward = cpu_layernorm_grouped_backward,
    .gelu_forward = cpu_gelu_forward,
    .gelu_backward = cpu_gelu_backward,
    .bias_gelu_half_forward = cpu_bias_gelu_half_forward,
    .bias_half_round_forward = cpu_bias_half_round_forward,
    .softmax_forward = cpu_softmax_forward,
    .softmax_backward = cpu_softmax_backward,
    .attention_forward = cpu_attention_forward,
    .attention_half_forward = cpu_attention_half_forward,
    .attention_half16_forward = cpu_attention_half16_forward,
    .linear_half16_forward = cpu_linear_half16_forward,
    .attention_backward = cpu_attention_backward,
    .embedding_forward = cpu_embedding_forward,
    .embedding_forward_bf16 = cpu_embedding_forward_bf16,
    .embedding_backward = cpu_embedding_backward,
    .residual_forward = cpu_residual_forward,
    .residual_backward = cpu_residual_backward,
    .dropout_forward = cpu_dropout_forward,
    .dropout_backward = cpu_dropout_backward,
    .mean_pool_forward = cpu_mean_pool_forward,
    .mean_pool_backward = cpu_mean_pool_backward,
    .l2norm_forward = cpu_l2norm_forward,
    .l2norm_backward = cpu_l2norm_backward,
    .relu_forward = cpu_relu_forward,
    .relu_backward = cpu_relu_backward,
    .mtsa_guide_forward = cpu_mtsa_guide_forward,
    .mtsa_guide_backward = cpu_mtsa_guide_backward,
    .gate_add_forward = cpu_gate_add_forward,
    .gate_add_backward = cpu_gate_add_backward,
    .crossentropy_forward = cpu_crossentropy_forward,
    .crossentropy_backward = cpu_crossentropy_backward,
    .mse_forward = cpu_mse_forward,
    .mse_backward = cpu_mse_backward,
    .adamw_update = cpu_adamw_update,
    .sumsq = cpu_sumsq,
    .scale = cpu_scale,
};

/* BLIS 0.9 takes its 'haswell' (AVX2) kernels on AVX-512 CPUs whose FMA-unit count it cannot
 * tell from the model name (virtual machines, newer Xeons), though its 'skx' kernels are correct
 * on every AVX-512 CPU and about twice as fast where there are two units (measured 62 vs 140
 * GFLOP/s on one core here). BLIS reads BLIS_ARCH_TYPE when it initialises, on first use, so
 * we set it then, unless the operator already chose. */
static void cpu_backend_init(void)
{
    __builtin_cpu_init();
    if (!getenv("BLIS_ARCH_TYPE") && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512cd") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")) {
        char id[16];
        snprintf(id, sizeof id, "%d", (int)BLIS_ARCH_SKX);
        setenv("BLIS_ARCH_TYPE", id, 0);
    }
    bli_init();
}

const sherl_backend *sherl_backend_cpu(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, cpu_backend_init);
    return &cpu_backend;
}
