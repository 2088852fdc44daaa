/* The compute layer: one table of ops over raw float buffers, implemented once per backend
 * (cpu/ with C + BLIS + OpenMP, cuda/ with CUDA C + cuBLAS). The engine only ever calls
 * ops through a sherl_backend, so a model runs unchanged on any backend.
 *
 * Conventions (all backends):
 * - Row-major, fp32, shapes given explicitly; pointers are backend memory (host for cpu).
 * - Every *_backward ACCUMULATES (+=) into every gradient it writes, inputs and parameters
 *   alike, so micro-batches and branches (residuals, shared weights) add up without copies.
 *   Callers zero gradient buffers when they start a step.
 * - A gradient pointer may be NULL when that gradient is not needed (frozen weights).
 * - Weights are stored as PyTorch stores them: a Linear is weight[OC, C], bias[OC].
 * - Ops do not validate data (ids, shapes): the engine validates before calling. */
#ifndef SHERL_KERNELS_H
#define SHERL_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct sherl_backend sherl_backend;

/* The half types of the fused half ops (bias_gelu_half_forward, bias_half_round_forward). */
enum { SHERL_HALF_BF16 = 0, SHERL_HALF_F16 = 1 };

/* The shapes a training step runs its ops at, for the memory planner's scratch line. */
typedef struct {
    int B, T, NH, HS;     /* attention */
    int K, N, d;          /* MTSA guidance: taps, tokens, side width (K = 0: none) */
    size_t max_reduce;    /* the longest reduction (sumsq over every trainable element) */
    int threads;
    int F;                /* the feed-forward width (with NH * HS: the widest Linear) */
    int half;             /* products with bf16/fp16 operands run (a half-precision backbone) */
} sherl_scratch_shape;

struct sherl_backend {
    const char *name;

    /* ---- memory and execution ---- */
    void *(*alloc)(size_t bytes);             /* zeroed; NULL on failure */
    void (*free)(void *p);
    void (*copy_to_device)(void *dst, const void *src_host, size_t bytes);
    void (*copy_to_host)(void *dst_host, const void *src, size_t bytes);
    void (*zero)(void *p, size_t bytes);
    void (*synchronize)(void);
    void (*set_threads)(int n);               /* cpu: OpenMP threads (BLIS is serial) */
    int (*get_threads)(void);
    /* One line on the compute library and threads, e.g. for logs and benches. */
    void (*describe)(char *buf, size_t len);
    /* A line of advice when the backend runs well below what this machine can do (e.g.
     * the BLAS fell back to generic kernels on a CPU it does not know), else NULL. */
    const char *(*performance_advice)(void);
    /* Non-zero when backend memory is host memory the CPU may read and write directly (so
     * loaders and checkpoints need no staging copies). */
    int host_memory;
    /* Which of its kind this table runs on: the CUDA device index of a "cuda" table (each GPU
     * has its own table, sherl_backend_cuda_device), 0 for the CPU. */
    int device;
    /* The most memory any single op allocates for itself during a step of these shapes (its
     * transient scratch beyond its arguments), for the memory planner. */
    size_t (*scratch_bytes)(const sherl_scratch_shape *shape);
    /* Host memory the backend's libraries keep for the process's life once a job of `threads`
     * threads has run its products: BLIS's pool of packing buffers on the CPU (one set per
     * thread in a product at once), 0 on a GPU (cuBLAS's workspace is in scratch_bytes). A
     * process running several jobs shares it. */
    size_t (*library_bytes)(int threads);
    /* Reserves, for the calling thread, the scratch a step of these shapes needs (exactly
     * scratch_bytes(shape)), so that no op allocates inside a step. 0 on success, -1 when the
     * memory is not there (the message is then in take_error). Ops called without it, or at
     * larger shapes, grow the thread's scratch on first use. prepare(NULL) gives the thread's
     * scratch back (a job's end: the next job on the thread may need less). */
    int (*prepare)(const sherl_scratch_shape *shape);
    /* The first failure of any call on this backend from the calling thread since the last
     * take_error (a kernel launch, a library call, an allocation, a copy): returns 0 when there
     * was none, else -1 with its message in msg; either way the record is cleared. Ops have no
     * return value: callers check this once per step and turn a failure into a status. Device
     * work is asynchronous, so a fault inside a kernel is reported at the next synchronising
     * call (synchronize, copy_to_host, sumsq) or the one after. */
    int (*take_error)(char *msg, size_t len);
    /* Free and total bytes of the memory that alloc draws from (the device's, or the host's
     * available memory for cpu); 0 on success. */
    int (*mem_info)(size_t *free_bytes, size_t *total_bytes);
    /* dst = src, both backend memory (regions must not overlap) */
    void (*copy_device)(void *dst, const void *src, size_t bytes);
    /* Whether this thread's fp32 products (gemm, gemm_strided_batched, matmul_*, attention_*)
     * may use reduced-precision tensor cores (TF32 on CUDA: 10-bit mantissas, fp32 range and
     * accumulation). Off by default; a bf16 or fp16 job turns it on for its thread. No effect on
     * cpu. */
    void (*allow_tf32)(int on);

    /* ---- graph capture (CUDA graphs), optional: NULL on a backend without it ----
     * capture_begin: from here on, this thread's ops are recorded instead of run, until
     * capture_end returns them as a graph (NULL when the capture failed: the reason is then in
     * take_error and the ops recorded are lost). Between the two no call may copy to or from
     * the host, synchronize, allocate, or return a value (sumsq), and no op's scratch may grow
     * (prepare first). graph_launch runs the recorded ops again, with the same pointers and
     * arguments, on this thread's stream; graph_free releases a graph. A graph replaces a
     * fixed sequence of launches by one, where launching is what a step's time goes to. */
    int (*capture_begin)(void);
    void *(*capture_end)(void);
    void (*graph_launch)(void *graph);
    void (*graph_free)(void *graph);

    /* ---- general matrix multiply ----
     * C[M,N] = alpha * op(A)[M,K] . op(B)[K,N] + beta * C; op(X) = X or X^T (trans_x != 0).
     * Row-major with leading dimensions lda/ldb/ldc; beta = 1 accumulates.
     * The batched form repeats it `batch` times with element strides between matrices. */
    void (*gemm)(int trans_a, int trans_b, int M, int N, int K, float alpha,
                 const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);
    void (*gemm_strided_batched)(int trans_a, int trans_b, int M, int N, int K, float alpha,
                                 const float *A, int lda, long long stride_a,
                                 const float *B, int ldb, long long stride_b, float beta,
                                 float *C, int ldc, long long stride_c, int batch);

    /* ---- bf16 matrix multiply: A and B in bfloat16 (uint16_t bit patterns), C in fp32, products
     * accumulated in fp32; otherwise exactly as gemm. ---- */
    void (*gemm_bf16)(int trans_a, int trans_b, int M, int N, int K, float alpha,
                      const uint16_t *A, int lda, const uint16_t *B, int ldb, float beta, float *C,
                      int ldc);
    /* dst[i] = bf16(src[i]), rounded to nearest even (NaN stays NaN); and back, exactly */
    void (*f32_to_bf16)(uint16_t *dst, const float *src, size_t n);
    void (*bf16_to_f32)(float *dst, const uint16_t *src, size_t n);
    /* The same three for IEEE fp16 (binary16: overflow to inf, subnormals kept, NaN quiet). */
    void (*gemm_f16)(int trans_a, int trans_b, int M, int N, int K, float alpha, const uint16_t *A,
                     int lda, const uint16_t *B, int ldb, float beta, float *C, int ldc);
    void (*f32_to_f16)(uint16_t *dst, const float *src, size_t n);
    void (*f16_to_f32)(float *dst, const uint16_t *src, size_t n);
    /* gemm_bf16 / gemm_f16 repeated `batch` times with element strides between matrices, as
     * gemm_strided_batched (MTSA's K tap projections in one call instead of K). */
    void (*gemm_bf16_strided_batched)(int trans_a, int trans_b, int M, int N, int K, float alpha,
                                      const uint16_t *A, int lda, long long stride_a,
                                      const uint16_t *B, int ldb, long long stride_b, float beta,
                                      float *C, int ldc, long long stride_c, int batch);
    void (*gemm_f16_strided_batched)(int trans_a, int trans_b, int M, int N, int K, float alpha,
                                     const uint16_t *A, int lda, long long stride_a,
                                     const uint16_t *B, int ldb, long long stride_b, float beta,
                                     float *C, int ldc, long long stride_c, int batch);

    /* ---- Linear: out[N,OC] = inp[N,C] . weight[OC,C]^T + bias[OC] (bias may be NULL) ---- */
    void (*matmul_forward)(float *out, const float *inp, const float *weight, const float *bias,
                           int N, int C, int OC);
    /* dinp[N,C] += dout . weight; dweight[OC,C] += dout^T . inp; dbias[OC] += sum_n dout */
    void (*matmul_backward)(float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, int N, int C, int OC);

    /* ---- bias: x[N,C] += bias[C] ---- */
    void (*bias_add_forward)(float *x, const float *bias, int N, int C);
    void (*bias_add_backward)(float *dbias, const float *dout, int N, int C);

    /* ---- grouped bias: G independent [N,C] blocks, each with its own bias row ----
     * x[g,n,c] += bias[g * bias_stride + c]   (x [G,N,C] contiguous) */
    void (*bias_add_grouped_forward)(float *x, const float *bias, long long bias_stride, int G,
                                     int N, int C);
    /* dbias[g * bias_stride + c] += sum_n dout[g,n,c] */
    void (*bias_add_grouped_backward)(float *dbias, long long bias_stride, const float *dout,
                                      int G, int N, int C);

    /* ---- LayerNorm over the last dim; mean/rstd [N] saved for backward ---- */
    void (*layernorm_forward)(float *out, float *mean, float *rstd, const float *inp,
                              const float *weight, const float *bias, int N, int C, float eps);
    void (*layernorm_backward)(float *dinp, float *dweight, float *dbias, const float *dout,
                               const float *inp, const float *weight, const float *mean,
                               const float *rstd, int N, int C);

    /* ---- a sublayer's end, fused: res[N,C] = (x + lin_bias) + resid, out = LayerNorm(res)
     * with mean/rstd saved, and out16 = half(out) (type SHERL_HALF_BF16/F16) when not NULL;
     * lin_bias may be NULL, res may alias x, or be NULL when the sum need not be kept (a
     * forward-only layer: it then passes through out, and memory moves one [N,C] less; out may
     * then alias x or resid exactly, never in part). Exactly
     * bias_add_forward, residual_forward, layernorm_forward and f32_to_half in a row, bit for
     * bit on each backend. ---- */
    void (*residual_layernorm_forward)(float *out, uint16_t *out16, float *res, float *mean,
                                       float *rstd, const float *x, const float *lin_bias,
                                       const float *resid, const float *weight,
                                       const float *bias, int N, int C, float eps, int type);

    /* ---- grouped LayerNorm: G independent LayerNorms over [G,N,C] (inp, out, dout, dinp
     * contiguous), group g with weight/bias at g * param_stride and its statistics at
     * mean/rstd + g * stat_stride (may be NULL in forward). Each group's results are exactly
     * layernorm_forward / layernorm_backward's on that group alone. ---- */
    void (*layernorm_grouped_forward)(float *out, float *mean, float *rstd, long long stat_stride,
                                      const float *inp, const float *weight, const float *bias,
                                      long long param_stride, int G, int N, int C, float eps);
    void (*layernorm_grouped_backward)(float *dinp, float *dweight, float *dbias,
                                       long long param_stride, const float *dout,
                                       const float *inp, const float *weight, const float *mean,
                                       const float *rstd, long long stat_stride, int G, int N,
                                       int C);

    /* ---- GELU, exact erf form: 0.5 x (1 + erf(x / sqrt 2)) ---- */
    void (*gelu_forward)(float *out, const float *inp, size_t n);
    void (*gelu_backward)(float *dinp, const float *inp, const float *dout, size_t n);

    /* ---- a half product's output tail, fused: each is exactly the unfused ops in a row, bit
     * for bit on each backend, in one pass over memory instead of three (a bf16/fp16
     * backbone's feed-forward and Q|K|V; type: SHERL_HALF_BF16 or SHERL_HALF_F16; bias may be
     * NULL) ----
     * out16[N,C] = half(gelu(x + bias))   (bias_add_forward, gelu_forward, f32_to_half; x is
     * left as it was: the forward needs only the rounded activation) */
    void (*bias_gelu_half_forward)(uint16_t *out16, const float *x, const float *bias, int N,
                                   int C, int type);
    /* x[N,C] = widen(half(x + bias)); x16 = half(x + bias) when not NULL (bias_add_forward,
     * f32_to_half, half_to_f32) */
    void (*bias_half_round_forward)(float *x, uint16_t *x16, const float *bias, int N, int C,
                                    int type);
    /* out16[N,OC] = half(inp16 . w16^T + bias), a forward-only half Linear whose output is only
     * read rounded (a frozen layer's Q|K|V): the bits of gemm_bf16/gemm_f16 into fp32, then
     * bias_half_round_forward's x16. tmp [N,OC] floats the op may overwrite (a device fuses
     * the bias and the rounding into the product when its library can, and then leaves tmp
     * alone). bias may be NULL. */
    void (*linear_half16_forward)(uint16_t *out16, float *tmp, const uint16_t *inp16,
                                  const uint16_t *w16, const float *bias, int N, int C, int OC,
                                  int type);

    /* ---- softmax over the last dim of [B,H,Tq,Tk] of scale * inp + mask[b, k]
     * (mask: additive [B,Tk], may be NULL). out may alias inp. ---- */
    void (*softmax_forward)(float *out, const float *inp, const float *mask, float scale,
                            int B, int H, int Tq, int Tk);
    /* dinp += scale * out * (dout - sum_k dout * out) */
    void (*softmax_backward)(float *dinp, const float *dout, const float *out, float scale,
                             int B, int H, int Tq, int Tk);

    /* ---- multi-head scaled dot-product attention ----
     * qkv[B,T,3*C]: per token q | k | v, each C = NH*HS wide, heads contiguous in each.
     * out[B,T,C]; probs[B,NH,T,T] (softmax of q.k^T / sqrt(HS) + mask[b,k]) saved for
     * backward; mask additive [B,T] or NULL. */
    void (*attention_forward)(float *out, float *probs, const float *qkv, const float *mask,
                              int B, int T, int NH, int HS);
    /* dqkv[B,T,3C] += d(q|k|v) */
    void (*attention_backward)(float *dqkv, const float *dout, const float *qkv,
                               const float *probs, int B, int T, int NH, int HS);
    /* attention_forward in a half layer (type: SHERL_HALF_*), close to autocast's bf16 flash
     * attention (which rounds the unnormalised exponentials and divides after): qkv holds
     * values of the half type (a half layer's Q|K|V, rounded as its Linear returns them,
     * widened), both products sum in fp32, and the probabilities are rounded to the half type
     * (kept widened in probs) before out = probs.v. Every operand of both products is then a
     * half value, which TF32 holds exactly: a GPU runs them on tensor cores with the same
     * operands and exact products (its sums may run in another order). A trained half layer's
     * backward hands these probs to attention_backward (dV = half(P)^T dO, and the softmax's
     * backward through them too). probs may be NULL when HS <= SHERL_ATTN_FUSED_MAX_HS: the
     * probabilities are then not kept, and a device computes the whole attention in one pass
     * (the same formulas) without writing anything of size T x T. */
    void (*attention_half_forward)(float *out, float *probs, const float *qkv, const float *mask,
                                   int B, int T, int NH, int HS, int type);
    /* attention_half_forward without probabilities on halves: out16[B,T,C] = half(out) of
     * qkv16[B,T,3C] widened (a forward-only half layer, whose projection reads its attention
     * rounded); HS <= SHERL_ATTN_FUSED_MAX_HS */
    void (*attention_half16_forward)(uint16_t *out16, const uint16_t *qkv16, const float *mask,
                                     int B, int T, int NH, int HS, int type);

    /* ---- embedding gather: out[N,C] = table[ids[n], :] ---- */
    void (*embedding_forward)(float *out, const int32_t *ids, const float *table, int N, int C);
    /* the same from a bf16 table (a bf16 backbone's frozen embeddings), widened exactly */
    void (*embedding_forward_bf16)(float *out, const int32_t *ids, const uint16_t *table, int N,
                                   int C);
    void (*embedding_forward_f16)(float *out, const int32_t *ids, const uint16_t *table, int N,
                                  int C);
    /* dtable[ids[n], :] += dout[n, :] */
    void (*embedding_backward)(float *dtable, const float *dout, const int32_t *ids, int N, int C);

    /* ---- residual: out[n] = a[n] + b[n] (out may alias a or b) ---- */
    void (*residual_forward)(float *out, const float *a, const float *b, size_t n);
    void (*residual_backward)(float *da, float *db, const float *dout, size_t n);

    /* ---- dropout with a counter-based RNG: element i is kept iff
     * sherl_dropout_uniform(seed, offset + i) >= p, and then scaled by 1/(1-p). The mask is
     * recomputed in backward from (seed, offset), never stored. p = 0 copies. ---- */
    void (*dropout_forward)(float *out, const float *inp, size_t n, float p, uint64_t seed,
                            uint64_t offset);
    void (*dropout_backward)(float *dinp, const float *dout, size_t n, float p, uint64_t seed,
                             uint64_t offset);

    /* ---- masked mean over tokens: out[B,C] = sum_t mask[b,t] inp[b,t,:] / max(sum_t mask, 1e-9)
     * (sentence-transformers' mean pooling); mask [B,T] of 0/1 ---- */
    void (*mean_pool_forward)(float *out, const float *inp, const int32_t *mask, int B, int T,
                              int C);
    void (*mean_pool_backward)(float *dinp, const float *dout, const int32_t *mask, int B, int T,
                               int C);

    /* ---- L2 normalisation of rows: out[N,C] = x / max(||x||_2, eps) (torch F.normalize) ---- */
    void (*l2norm_forward)(float *out, const float *inp, int N, int C, float eps);
    void (*l2norm_backward)(float *dinp, const float *dout, const float *inp, int N, int C,
                            float eps);

    /* ---- ReLU ---- */
    void (*relu_forward)(float *out, const float *inp, size_t n);
    /* dinp += dout * (inp > 0) */
    void (*relu_backward)(float *dinp, const float *inp, const float *dout, size_t n);

    /* ---- SHERL guidance (DESIGN.md section 2, steps 2-6), independently for each of N tokens.
     * x[K,N,d]: the K projected taps, tap-major; the guide is g = x[K-1], the shallow set
     * x[0..K-2] (S = K-1 >= 1 members). With xh = x / (||x||_2 + 1e-8):
     *   rho_j   = sum_{m in S} relu(xh_j . xh_m)  (m = j included: rho_j >= 1 unless x_j = 0,
     *             where rho_j = 0 and s, a are NaN on every backend, as in the reference)
     *   s_j     = w . (x_j * g) + c[0]
     *   a_j     = relu(s_j) / rho_j
     *   alpha_j = a_j / (sum_{m in S} |a_m| + 1e-8)
     *   z       = g + sum_{j in S} alpha_j x_j
     * z [N,d]; s, rho, alpha [N,S] saved for backward; w [d], c [1]. */
    void (*mtsa_guide_forward)(float *z, float *s, float *rho, float *alpha, const float *x,
                               const float *w, const float *c, int K, int N, int d);
    /* dx[K,N,d] += dz-propagated (shallow taps and guide); dw[d] += ; dc[1] += (may be NULL) */
    void (*mtsa_guide_backward)(float *dx, float *dw, float *dc, const float *dz, const float *x,
                                const float *w, const float *s, const float *rho,
                                const float *alpha, int K, int N, int d);

    /* ---- tanh gate: out[i] = y[i] + tanh(lambda[0] / temp) * h[i]; lambda on the backend ---- */
    void (*gate_add_forward)(float *out, const float *y, const float *h, const float *lambda,
                             float temp, size_t n);
    /* dy += dout (may be NULL); dlambda[0] += sum_i dout[i] h[i] (1 - tanh^2(lambda/temp)) / temp
     * (may be NULL). h is frozen: no gradient for it. */
    void (*gate_add_backward)(float *dy, float *dlambda, const float *dout, const float *h,
                              const float *lambda, float temp, size_t n);

    /* ---- losses ----
     * cross-entropy over C classes: losses[b] = -log softmax(logits[b])[labels[b]]; probs [B,C]
     * saved. labels must be in [0, C) (the engine validates). */
    void (*crossentropy_forward)(float *losses, float *probs, const float *logits,
                                 const int32_t *labels, int B, int C);
    /* dlogits[B,C] += scale * (probs - onehot(labels)); scale = 1/B for a mean loss */
    void (*crossentropy_backward)(float *dlogits, const float *probs, const int32_t *labels,
                                  float scale, int B, int C);
    /* squared error: losses[b] = (pred[b] - target[b])^2 */
    void (*mse_forward)(float *losses, const float *pred, const float *target, int B);
    /* dpred[b] += scale * 2 (pred[b] - target[b]) */
    void (*mse_backward)(float *dpred, const float *pred, const float *target, float scale, int B);

    /* ---- optimizer ----
     * AdamW at step t (1-based), exactly PyTorch's torch.optim.AdamW order of operations:
     *   p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
     *   p -= (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps) */
    void (*adamw_update)(float *param, const float *grad, float *m, float *v, size_t n, float lr,
                         float beta1, float beta2, float eps, float weight_decay, int t);
    /* sum of x[i]^2, accumulated in double (gradient-norm clipping); returns to the host */
    double (*sumsq)(const float *x, size_t n);
    /* x[i] *= s */
    void (*scale)(float *x, size_t n, float s);
};

/* The helpers below are compiled for the host and, in the CUDA backend, for the device: one
 * definition, so every backend draws the same masks and rounds to the same bits. */
#ifdef __CUDACC__
#define SHERL_HD __host__ __device__
#else
#define SHERL_HD
#endif

/* The RNG behind dropout, shared by every backend so masks are identical everywhere:
 * a splitmix64 hash of (seed, counter), top 24 bits as a uniform float in [0, 1). */
static inline SHERL_HD float sherl_dropout_uniform(uint64_t seed, uint64_t counter)
{
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * (counter + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}

/* float <-> bfloat16 as every backend rounds it: nearest even, NaN kept quiet. */
/* (memcpy for the bit casts: this header is also compiled as C++, where union punning is not
 * defined) */
static inline SHERL_HD uint16_t sherl_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep the sign, force a quiet payload */
        return (uint16_t)((u >> 16) | 0x0040u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static inline SHERL_HD float sherl_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* float <-> IEEE binary16 as every backend rounds it: nearest even, overflow to inf, subnormals
 * kept, NaN quiet (after F. Giesen's float_to_half_fast3_rtne; the subnormal case relies on the
 * default round-to-nearest float addition without flush-to-zero, as C and CUDA have it). */
static inline SHERL_HD uint16_t sherl_f32_to_f16(float f)
{
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    uint32_t sign = (bits >> 16) & 0x8000u, x = bits & 0x7fffffffu;
    uint32_t o;
    if (x >= 0x47800000u) { /* >= 65536, inf or NaN */
        o = x > 0x7f800000u ? 0x7e00u : 0x7c00u;
    } else if (x < 0x38800000u) { /* below 2^-14: a subnormal or zero, rounded by the addition */
        float a, r;
        memcpy(&a, &x, sizeof a);
        r = a + 0.5f;
        memcpy(&o, &r, sizeof o);
        o -= 0x3f000000u;
    } else {
        uint32_t odd = (x >> 13) & 1u;
        x += ((uint32_t)(15 - 127) << 23) + 0xfffu + odd; /* rebias, round half to even */
        o = x >> 13;                                       /* may carry into inf: right */
    }
    return (uint16_t)(sign | o);
}

static inline SHERL_HD float sherl_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, u;
    if (e == 0x1f) {
        u = sign | 0x7f800000u | (m << 13);
    } else if (e) {
        u = sign | ((e + 112u) << 23) | (m << 13);
    } else if (m) { /* subnormal: normalise */
        e = 113;
        while (!(m & 0x400u)) {
            m <<= 1;
            e--;
        }
        u = sign | (e << 23) | ((m & 0x3ffu) << 13);
    } else {
        u = sign;
    }
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* v rounded to the half type (SHERL_HALF_*) and widened back: f32_to_bf16/f16 then the widening */
static inline SHERL_HD float sherl_half_round_f32(float v, int type)
{
    return type == SHERL_HALF_F16 ? sherl_f16_to_f32(sherl_f32_to_f16(v))
                                  : sherl_bf16_to_f32(sherl_f32_to_bf16(v));
}

/* One CUDA device as the runtime reports it. */
typedef struct {
    int index;
    char name[256];
    int cc_major, cc_minor;
    size_t total_bytes, free_bytes;
    int multiprocessors;
} sherl_device_info;

/* The CUDA devices this process can use: fills up to max entries and returns how many there
 * are; 0 with the runtime's reason in why (e.g. "CUDA driver version is insufficient") when
 * there are none, or when this build has no CUDA backend. */
int sherl_cuda_devices(sherl_device_info *out, int max, char *why, size_t why_len);

/* Why sherl_backend_cuda() gave none, for tools and tests that were asked for "cuda": 0 when
 * this machine has no usable GPU (no device, the runtime's error, or SHERL_CUDA_DISABLE set):
 * nothing to run, a skip; -1 when a GPU is present but this build cannot use it: a failure.
 * Either way the reason is in why. */
int sherl_cuda_absent(char *why, size_t len);

/* The CPU backend: always available. */
const sherl_backend *sherl_backend_cpu(void);
/* The most CUDA devices one process uses (cuda:0 .. cuda:15; CUDA_VISIBLE_DEVICES picks them). */
#define SHERL_CUDA_MAX_DEVICES 16
/* attention_half_forward may go without probabilities (probs NULL) for heads up to this size */
#define SHERL_ATTN_FUSED_MAX_HS 256
/* CUDA device `index`'s table ("cuda:<index>"), or NULL when this build has no CUDA backend,
 * that device is absent or not usable (older than sm_90), or SHERL_CUDA_DISABLE is set. Every
 * call through a device's table runs on that device, from any thread: a thread may use several
 * devices' tables, and memory belongs to the device whose table allocated it. */
const sherl_backend *sherl_backend_cuda_device(int index);
/* (For tests of the layers above on machines without GPUs, SHERL_TEST_FAKE_GPUS=N[:SIZE]
 * replaces the CUDA devices, here and in sherl_cuda_devices, by N copies of the CPU backend that
 * have no host memory as far as the engine knows and SIZE bytes each (default 4G).) */
/* The first usable CUDA device's table, or NULL when there is none. */
const sherl_backend *sherl_backend_cuda(void);
/* For tests only: device index's table whether or not that device is usable (NULL without a
 * CUDA backend or for an index out of range). Its calls fail, through take_error, where the
 * device cannot be made current. */
const sherl_backend *sherl_backend_cuda_table_for_tests(int index);
/* By name: "cpu"; "cuda" (the first usable GPU); "cuda:N" (device N, digits only, N <
 * SHERL_CUDA_MAX_DEVICES); "auto" (the first usable GPU, else cpu). NULL for unknown names and
 * for GPUs that are not usable. */
const sherl_backend *sherl_backend_by_name(const char *name);
/* The CUDA device index of a name "cuda:N" (N in 0..SHERL_CUDA_MAX_DEVICES-1, digits only, no
 * sign or leading zero but "0"), -1 for any other name. */
int sherl_cuda_device_of_name(const char *name);
/* The label of backend be for users and memory pools: "cpu", "cuda:1"; a test backend's name
 * (host memory) or name:device. */
void sherl_backend_label(const sherl_backend *be, char *buf, size_t len);

#endif
