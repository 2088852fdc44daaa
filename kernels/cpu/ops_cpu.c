/* CPU backend: OpenBLAS for the matrix products, OpenMP for everything else.
 *
 * One thread pool only: OpenBLAS runs single-threaded and we split each product across the
 * OpenMP threads ourselves. Two pools (OpenBLAS's pthreads spinning in sched_yield while the
 * OpenMP loops run, and the reverse) cost ~20% of a forward pass on 2 cores.
 * Reductions that feed comparisons with PyTorch (LayerNorm statistics, pooling norms) are
 * accumulated in double so our rounding error stays well below the oracle tolerances. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

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
    openblas_set_num_threads(1);
}

static int cpu_get_threads(void) { return omp_get_max_threads(); }

static void cpu_describe(char *buf, size_t len)
{
    /* openblas_get_config() is "OpenBLAS 0.3.21 <build flags...>": keep name and version */
    const char *cfg = openblas_get_config();
    const char *sp = strchr(cfg, ' ');
    sp = sp ? strchr(sp + 1, ' ') : NULL;
    int vlen = sp ? (int)(sp - cfg) : (int)strlen(cfg);
    snprintf(buf, len, "cpu: %.*s (%s kernels), %d OpenMP threads", vlen, cfg,
             openblas_get_corename(), omp_get_max_threads());
}

/* OpenBLAS 0.3.21 picks its kernels by CPU model number and falls back to its SSE3
 * ("Prescott") kernels on CPUs newer than it knows, which is 4-5x slower on matrix products
 * here. OPENBLAS_CORETYPE, read when the library loads, overrides the choice; we only say so,
 * because the right value is the operator's call (some sites set it on purpose). */
static const char *cpu_performance_advice(void)
{
    static const char *const wide[] = {"Haswell", "Zen", "SkylakeX", "Cooperlake",
                                       "SapphireRapids"};
    const char *core = openblas_get_corename();
    for (size_t i = 0; i < sizeof wide / sizeof wide[0]; i++)
        if (core && strcasecmp(core, wide[i]) == 0)
            return NULL;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return "OpenBLAS is using generic kernels on this AVX-512 CPU; "
               "export OPENBLAS_CORETYPE=SkylakeX for several times faster matrix products";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return "OpenBLAS is using generic kernels on this AVX2 CPU; "
               "export OPENBLAS_CORETYPE=Haswell for several times faster matrix products";
    return NULL;
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

/* ------------------------------------------------------------------------------------------
 * LayerNorm */

static void cpu_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                                  const float *weight, const float *bias, int N, int C, float eps)
{
#pragma omp parallel for if ((size_t)N * C >= PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *y = out + (size_t)n * C;
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
            mean[n] = fm;
        if (rstd)
            rstd[n] = rs;
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

/* One (batch, head): scores = q.k^T straight into probs[T,T], row softmax, out = probs.v.
 * Both products are single-threaded sgemm calls on strided views of qkv (heads are
 * parallelised above), so no gather is needed. */
static void attention_head_forward(float *out, float *probs, const float *base, const float *mrow,
                                   int T, int C, int h, int HS, float scale)
{
    const int C3 = 3 * C;
    sgemm1(0, 1, T, T, HS, 1.0f, base + h * HS, C3, base + C + h * HS, C3, 0.0f, probs, T);
    for (int i = 0; i < T; i++)
        softmax_row(probs + (size_t)i * T, probs + (size_t)i * T, mrow, scale, T);
    sgemm1(0, 0, T, HS, T, 1.0f, probs, T, base + 2 * C + h * HS, C3, 0.0f, out + h * HS, C);
}

static void cpu_attention_forward(float *out, float *probs, const float *qkv, const float *mask,
                                  int B, int T, int NH, int HS)
{
    const int C = NH * HS, C3 = 3 * C;
    const float scale = 1.0f / sqrtf((float)HS);
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * NH; bh++) {
        int b = bh / NH, h = bh % NH;
        attention_head_forward(out + (size_t)b * T * C, probs + (size_t)bh * T * T,
                               qkv + (size_t)b * T * C3, mask ? mask + (size_t)b * T : NULL, T, C,
                               h, HS, scale);
    }
}

static void cpu_attention_backward(float *dqkv, const float *dout, const float *qkv,
                                   const float *probs, int B, int T, int NH, int HS)
{
    const int C = NH * HS, C3 = 3 * C;
    const float scale = 1.0f / sqrtf((float)HS);
#pragma omp parallel
    {
        float *ds = malloc(sizeof(float) * (size_t)T); /* one row of d(scores) */
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * NH; bh++) {
            int b = bh / NH, h = bh % NH;
            const float *base = qkv + (size_t)b * T * C3;
            float *dbase = dqkv + (size_t)b * T * C3;
            for (int i = 0; i < T; i++) {
                const float *p = probs + ((size_t)bh * T + i) * T;
                const float *dy = dout + ((size_t)b * T + i) * C + h * HS;
                const float *q = base + (size_t)i * C3 + h * HS;
                float *dq = dbase + (size_t)i * C3 + h * HS;
                /* dP[i,j] = dy . v_j; dV[j] += P[i,j] dy */
                double dot = 0.0;
                for (int j = 0; j < T; j++) {
                    const float *vj = base + (size_t)j * C3 + 2 * C + h * HS;
                    float *dvj = dbase + (size_t)j * C3 + 2 * C + h * HS;
                    float acc = 0.0f;
                    float pij = p[j];
#pragma omp simd reduction(+ : acc)
                    for (int d = 0; d < HS; d++) {
                        acc += dy[d] * vj[d];
                        dvj[d] += pij * dy[d];
                    }
                    ds[j] = acc;
                    dot += (double)acc * pij;
                }
                /* dS = P (dP - sum_j P dP), times the score scale */
                float fd = (float)dot;
                for (int j = 0; j < T; j++)
                    ds[j] = scale * p[j] * (ds[j] - fd);
                /* dQ[i] += dS[i,:] K; dK[j] += dS[i,j] q_i */
                for (int j = 0; j < T; j++) {
                    const float *kj = base + (size_t)j * C3 + C + h * HS;
                    float *dkj = dbase + (size_t)j * C3 + C + h * HS;
                    float g = ds[j];
#pragma omp simd
                    for (int d = 0; d < HS; d++) {
                        dq[d] += g * kj[d];
                        dkj[d] += g * q[d];
                    }
                }
            }
        }
        free(ds);
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
    .gemm = cpu_gemm,
    .gemm_strided_batched = cpu_gemm_strided_batched,
    .matmul_forward = cpu_matmul_forward,
    .matmul_backward = cpu_matmul_backward,
    .bias_add_forward = cpu_bias_add_forward,
    .bias_add_backward = cpu_bias_add_backward,
    .layernorm_forward = cpu_layernorm_forward,
    .layernorm_backward = cpu_layernorm_backward,
    .gelu_forward = cpu_gelu_forward,
    .gelu_backward = cpu_gelu_backward,
    .softmax_forward = cpu_softmax_forward,
    .softmax_backward = cpu_softmax_backward,
    .attention_forward = cpu_attention_forward,
    .attention_backward = cpu_attention_backward,
    .embedding_forward = cpu_embedding_forward,
    .embedding_backward = cpu_embedding_backward,
    .residual_forward = cpu_residual_forward,
    .residual_backward = cpu_residual_backward,
    .dropout_forward = cpu_dropout_forward,
    .dropout_backward = cpu_dropout_backward,
    .mean_pool_forward = cpu_mean_pool_forward,
    .mean_pool_backward = cpu_mean_pool_backward,
    .l2norm_forward = cpu_l2norm_forward,
    .l2norm_backward = cpu_l2norm_backward,
};

/* OpenBLAS starts with a pool of one thread per core; ours is the only pool we want. */
static void cpu_backend_init(void) { openblas_set_num_threads(1); }

const sherl_backend *sherl_backend_cpu(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, cpu_backend_init);
    return &cpu_backend;
}
