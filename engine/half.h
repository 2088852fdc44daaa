/* The half-precision ops of a bf16 or fp16 model, by its sherl_precision: one place that maps
 * the precision to the backend's bf16 or fp16 op. */
#ifndef SHERL_HALF_H
#define SHERL_HALF_H

#include "bert.h"

static inline void half_round(const sherl_backend *be, sherl_precision p, uint16_t *dst,
                              const float *src, size_t n)
{
    if (p == SHERL_FP16)
        be->f32_to_f16(dst, src, n);
    else
        be->f32_to_bf16(dst, src, n);
}

static inline void half_widen(const sherl_backend *be, sherl_precision p, float *dst,
                              const uint16_t *src, size_t n)
{
    if (p == SHERL_FP16)
        be->f16_to_f32(dst, src, n);
    else
        be->bf16_to_f32(dst, src, n);
}

/* C = op(A) op(B) + beta C, as gemm, with half operands and fp32 sums (alpha 1) */
static inline void half_gemm(const sherl_backend *be, sherl_precision p, int ta, int tb, int M,
                             int N, int K, const uint16_t *A, int lda, const uint16_t *B, int ldb,
                             float beta, float *C, int ldc)
{
    if (p == SHERL_FP16)
        be->gemm_f16(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
    else
        be->gemm_bf16(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
}

/* half_gemm repeated `batch` times, element strides between the matrices */
static inline void half_gemm_batched(const sherl_backend *be, sherl_precision p, int ta, int tb,
                                     int M, int N, int K, const uint16_t *A, int lda,
                                     long long sa, const uint16_t *B, int ldb, long long sb,
                                     float beta, float *C, int ldc, long long sc, int batch)
{
    if (p == SHERL_FP16)
        be->gemm_f16_strided_batched(ta, tb, M, N, K, 1.0f, A, lda, sa, B, ldb, sb, beta, C, ldc,
                                     sc, batch);
    else
        be->gemm_bf16_strided_batched(ta, tb, M, N, K, 1.0f, A, lda, sa, B, ldb, sb, beta, C,
                                      ldc, sc, batch);
}

/* the backend's fused half ops' type for a half precision */
static inline int half_type(sherl_precision p)
{
    return p == SHERL_FP16 ? SHERL_HALF_F16 : SHERL_HALF_BF16;
}

static inline void half_gather(const sherl_backend *be, sherl_precision p, float *out,
                               const int32_t *ids, const uint16_t *table, int N, int C)
{
    if (p == SHERL_FP16)
        be->embedding_forward_f16(out, ids, table, N, C);
    else
        be->embedding_forward_bf16(out, ids, table, N, C);
}

#endif
