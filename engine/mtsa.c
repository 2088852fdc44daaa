#include "mtsa.h"

#include "half.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define P(ps, i) ((ps)->items[(i)].data)
#define G(ps, i) ((ps)->items[(i)].grad)

/* The distance in floats between consecutive tensors idx[0..K) of ps, or -1 when they are not
 * evenly spaced, in order. */
static long long spacing(const param_set *ps, const int *idx, int K)
{
    long long step = param_set_distance(ps, idx[0], idx[1]);
    for (int i = 2; i < K; i++)
        if (step < 0 || param_set_distance(ps, idx[0], idx[i]) != i * step)
            return -1;
    return step;
}

sherl_status mtsa_register(mtsa *a, param_set *ps, int K, int D, int d, float out_eps,
                           float dropout)
{
    memset(a, 0, sizeof *a);
    if (K < 2)
        return sherl_errorf(SHERL_EINVAL, "MTSA needs at least 2 taps (a shallow one and the "
                                          "guide), got %d",
                            K);
    if (d < 1 || D < 1)
        return sherl_errorf(SHERL_EINVAL, "MTSA widths must be positive (D %d, side %d)", D, d);
    a->K = K, a->D = D, a->d = d, a->out_eps = out_eps, a->dropout = dropout;
    a->proj_w = calloc((size_t)K, sizeof(int));
    a->proj_b = calloc((size_t)K, sizeof(int));
    a->proj_ln_w = calloc((size_t)K, sizeof(int));
    a->proj_ln_b = calloc((size_t)K, sizeof(int));
    if (!a->proj_w || !a->proj_b || !a->proj_ln_w || !a->proj_ln_b) {
        mtsa_free(a);
        return sherl_errorf(SHERL_ENOMEM, "out of memory");
    }
    char name[96];
    int bad = 0;
    /* each kind in one run of K, so a kind's tensors are equally spaced (w_stride, v_stride) */
    for (int i = 0; i < K; i++) {
        snprintf(name, sizeof name, "mtsa.proj.%d.weight", i);
        bad |= (a->proj_w[i] = param_set_add(ps, name, d, D, 1)) < 0;
    }
    for (int i = 0; i < K; i++) {
        snprintf(name, sizeof name, "mtsa.proj.%d.bias", i);
        bad |= (a->proj_b[i] = param_set_add(ps, name, d, 0, 0)) < 0;
    }
    for (int i = 0; i < K; i++) {
        snprintf(name, sizeof name, "mtsa.proj_ln.%d.weight", i);
        bad |= (a->proj_ln_w[i] = param_set_add(ps, name, d, 0, 0)) < 0;
    }
    for (int i = 0; i < K; i++) {
        snprintf(name, sizeof name, "mtsa.proj_ln.%d.bias", i);
        bad |= (a->proj_ln_b[i] = param_set_add(ps, name, d, 0, 0)) < 0;
    }
    if (!bad) { /* param_set_add pads every tensor alike, so these hold by construction */
        a->w_stride = spacing(ps, a->proj_w, K);
        a->v_stride = spacing(ps, a->proj_b, K);
        bad |= a->w_stride < 0 || a->v_stride < 0 || spacing(ps, a->proj_ln_w, K) != a->v_stride ||
               spacing(ps, a->proj_ln_b, K) != a->v_stride;
    }
    bad |= (a->guide_w = param_set_add(ps, "mtsa.guide.weight", 1, d, 1)) < 0;
    bad |= (a->guide_c = param_set_add(ps, "mtsa.guide.bias", 1, 0, 0)) < 0;
    bad |= (a->up_w = param_set_add(ps, "mtsa.up.weight", D, d, 1)) < 0;
    bad |= (a->up_b = param_set_add(ps, "mtsa.up.bias", D, 0, 0)) < 0;
    bad |= (a->out_ln_w = param_set_add(ps, "mtsa.out_ln.weight", D, 0, 0)) < 0;
    bad |= (a->out_ln_b = param_set_add(ps, "mtsa.out_ln.bias", D, 0, 0)) < 0;
    bad |= (a->gate = param_set_add(ps, "mtsa.gate", 1, 0, 0)) < 0;
    if (bad) {
        mtsa_free(a);
        return sherl_errorf(SHERL_ENOMEM, "cannot register the MTSA parameters");
    }
    return sherl_ok();
}

void mtsa_free(mtsa *a)
{
    free(a->proj_w), free(a->proj_b), free(a->proj_ln_w), free(a->proj_ln_b);
    memset(a, 0, sizeof *a);
}

/* U(-bound, bound) from the counter-based generator, so init is reproducible anywhere. */
static void fill_uniform(param_set *ps, int idx, float bound, uint64_t seed)
{
    sherl_param *p = &ps->items[idx];
    float *h = malloc(p->numel * sizeof(float));
    if (!h)
        return;
    for (size_t i = 0; i < p->numel; i++)
        h[i] = (2.0f * sherl_dropout_uniform(seed, i) - 1.0f) * bound;
    param_set_upload(ps, idx, h);
    free(h);
}

static void fill_const(param_set *ps, int idx, float v)
{
    sherl_param *p = &ps->items[idx];
    float *h = malloc(p->numel * sizeof(float));
    if (!h)
        return;
    for (size_t i = 0; i < p->numel; i++)
        h[i] = v;
    param_set_upload(ps, idx, h);
    free(h);
}

void mtsa_init(const mtsa *a, param_set *ps, uint64_t seed)
{
    float bD = 1.0f / sqrtf((float)a->D), bd = 1.0f / sqrtf((float)a->d);
    uint64_t k = seed * 1000003ull;
    for (int i = 0; i < a->K; i++) {
        fill_uniform(ps, a->proj_w[i], bD, k++);
        fill_uniform(ps, a->proj_b[i], bD, k++);
        fill_const(ps, a->proj_ln_w[i], 1.0f);
        fill_const(ps, a->proj_ln_b[i], 0.0f);
    }
    fill_uniform(ps, a->guide_w, bd, k++);
    fill_uniform(ps, a->guide_c, bd, k++);
    fill_uniform(ps, a->up_w, bd, k++);
    fill_uniform(ps, a->up_b, bd, k++);
    fill_const(ps, a->out_ln_w, 1.0f);
    fill_const(ps, a->out_ln_b, 0.0f);
    fill_const(ps, a->gate, 0.0f);
}

/* Tokens per pass of the guidance: its projections, projected taps x and their gradients d_x
 * are scratch of [K, chunk, d] floats, about N x D / 2 each at this many tokens, instead of the
 * whole batch's [K, N, d] (the guidance is per token; only the parameter gradients sum over
 * tokens, and those accumulate). The lower bound of a pass's tokens. */
static int chunk_tokens(const mtsa *a, int N)
{
    long long n = (long long)N * a->D / (2LL * a->K * a->d);
    return n < 1 ? 1 : n > N ? N : (int)n;
}

typedef struct {
    float **p;
    size_t n;
} mtsa_buf;

static void carve_all(const mtsa_buf *bufs, size_t n, sherl_arena *ar)
{
    for (size_t i = 0; i < n; i++)
        if (bufs[i].p)
            *bufs[i].p = arena_floats(ar, bufs[i].n);
}

void mtsa_acts_layout(mtsa_acts *t, const mtsa *a, int N, sherl_arena *ar)
{
    size_t K = (size_t)a->K, n = (size_t)N;
    t->N = N;
    mtsa_buf bufs[] = {
        {&t->ln_mean, K * n},          {&t->ln_rstd, K * n},
        {&t->s, n * (K - 1)},          {&t->rho, n * (K - 1)},    {&t->alpha, n * (K - 1)},
        {&t->z, n * a->d},
        {&t->out_mean, n},             {&t->out_rstd, n},
    };
    carve_all(bufs, sizeof bufs / sizeof bufs[0], ar);
}

static void scratch_carve(mtsa_acts *t, const mtsa *a, int N, int chunk, sherl_arena *ar)
{
    size_t K = (size_t)a->K, n = (size_t)N, D = (size_t)a->D, d = (size_t)a->d;
    int half = a->prec != SHERL_FP32;
    t->chunk = chunk;
    size_t c = (size_t)chunk;
    /* w16 (rounded at the start of the forward and of the backward) and d_z (from the head's
     * backward through the guidance's) live through a pass; the rest overlaps by phase:
     *   guidance:  xpre | x (then d_xpre) | d_x (or x16 while d_x is not live)  (K chunks each)
     *   head:      rz | ud (the up-projection u until un is written; the backward's u and
     *              d_ud) | un (d_un) | d_u | d_rz   (a chunk each) */
    t->w16 = half ? arena_take(ar, K * (size_t)a->w_stride * sizeof(uint16_t)) : NULL;
    t->d_z = arena_floats(ar, n * d);
    size_t at = ar->used, end;
    t->xpre = arena_floats(ar, K * c * d);
    t->x = t->d_xpre = arena_floats(ar, K * c * d);
    t->d_x = arena_floats(ar, K * c * d);
    t->x16 = half ? (uint16_t *)t->d_x : NULL;
    end = ar->used;
    ar->used = at;
    t->rz = arena_floats(ar, c * d);
    t->ud = t->d_ud = arena_floats(ar, c * D);
    t->un = t->d_un = arena_floats(ar, c * D);
    t->d_u = arena_floats(ar, c * D);
    t->d_rz = arena_floats(ar, c * d);
    if (ar->used < end)
        ar->used = end;
}

static size_t scratch_bytes_at(const mtsa *a, int N, int chunk)
{
    mtsa_acts t;
    sherl_arena m;
    arena_measure(&m);
    scratch_carve(&t, a, N, chunk, &m);
    return m.used;
}

void mtsa_scratch_layout(mtsa_acts *t, const mtsa *a, int N, size_t budget, sherl_arena *ar)
{
    /* the largest chunk whose scratch fits the budget, and at least chunk_tokens' (fewer,
     * larger passes: each pass launches 2 + 8K small ops on a device) */
    int lo = chunk_tokens(a, N), hi = N;
    if (scratch_bytes_at(a, N, hi) <= budget)
        lo = hi;
    else if (scratch_bytes_at(a, N, lo) <= budget)
        while (hi - lo > 1) { /* bytes(lo) <= budget < bytes(hi) */
            int mid = lo + (hi - lo) / 2;
            if (scratch_bytes_at(a, N, mid) <= budget)
                lo = mid;
            else
                hi = mid;
        }
    scratch_carve(t, a, N, lo, ar);
}

/* The projections of tokens [n0, n0 + n) of every tap into t->xpre ([K, n, d]): W_i h_i + b_i,
 * or in half precision half(half tap . half(W_i)^T + b_i) with fp32 sums, as autocast's Linear
 * returns it (the LayerNorm then reads it widened), all K taps in one batched product. The
 * forward and the backward both compute them, with the same bits, so nothing of them is kept
 * between the two. */
static void project_chunk(const mtsa *a, const param_set *ps, mtsa_acts *t, const float *taps,
                          const uint16_t *taps16, int n0, int n)
{
    const sherl_backend *be = ps->be;
    int K = a->K, D = a->D, d = a->d;
    long long tap = (long long)t->N * D, cd = (long long)n * d;
    if (a->prec == SHERL_FP32)
        be->gemm_strided_batched(0, 1, n, d, D, 1.0f, taps + (size_t)n0 * D, D, tap,
                                 P(ps, a->proj_w[0]), D, a->w_stride, 0.0f, t->xpre, d, cd, K);
    else
        half_gemm_batched(be, a->prec, 0, 1, n, d, D, taps16 + (size_t)n0 * D, D, tap, t->w16, D,
                          a->w_stride, 0.0f, t->xpre, d, cd, K);
    if (a->prec == SHERL_FP32) {
        be->bias_add_grouped_forward(t->xpre, P(ps, a->proj_b[0]), a->v_stride, K, n, d);
        return;
    }
    /* bias_add, round, widen in one pass a tap (the three ops' bits; 2 [K, n, d] floats moved
     * where the three moved 6 and the halves) */
    for (int i = 0; i < K; i++)
        be->bias_half_round_forward(t->xpre + (size_t)i * cd, NULL, P(ps, a->proj_b[i]), n, d,
                                    half_type(a->prec));
}

/* x = LayerNorm_i(xpre) for every tap of a chunk (statistics saved when mean is given) */
static void normalise_chunk(const mtsa *a, const param_set *ps, mtsa_acts *t, int N, int n0,
                            int n, int keep_stats)
{
    ps->be->layernorm_grouped_forward(t->x, keep_stats ? t->ln_mean + n0 : NULL,
                                      keep_stats ? t->ln_rstd + n0 : NULL, N, t->xpre,
                                      P(ps, a->proj_ln_w[0]), P(ps, a->proj_ln_b[0]),
                                      a->v_stride, a->K, n, a->d, MTSA_PROJ_LN_EPS);
}

/* Half precision: every tap's projection weights rounded into t->w16 (they may have moved since
 * the last pass); one conversion over the K weights and the zero padding between them. */
static void round_proj_weights(const mtsa *a, const param_set *ps, mtsa_acts *t)
{
    if (a->prec != SHERL_FP32)
        half_round(ps->be, a->prec, t->w16, P(ps, a->proj_w[0]),
                   (size_t)((a->K - 1) * a->w_stride + (long long)a->d * a->D));
}

void mtsa_forward(const mtsa *a, const param_set *ps, mtsa_acts *t, float *y, const float *taps,
                  const uint16_t *taps16, const float *h_last, int N, int train, uint64_t seed)
{
    const sherl_backend *be = ps->be;
    int K = a->K, D = a->D, d = a->d;
    round_proj_weights(a, ps, t);
    /* 1-6. x_i = LayerNorm_i(W_i h_i + b_i), the guidance and the consolidation onto the guide,
     * a chunk of tokens at a time */
    for (int n0 = 0; n0 < N; n0 += t->chunk) {
        int n = N - n0 < t->chunk ? N - n0 : t->chunk;
        project_chunk(a, ps, t, taps, taps16, n0, n);
        normalise_chunk(a, ps, t, N, n0, n, 1);
        be->mtsa_guide_forward(t->z + (size_t)n0 * d, t->s + (size_t)n0 * (K - 1),
                               t->rho + (size_t)n0 * (K - 1), t->alpha + (size_t)n0 * (K - 1),
                               t->x, P(ps, a->guide_w), P(ps, a->guide_c), K, n, d);
    }
    /* 7. y = Dropout(LayerNorm_out(W_u relu(z) + b_u)) + tanh(lambda / 0.1) h_last, by the
     * same chunks of tokens (every op is per token; dropout's stream is indexed by element) */
    for (int n0 = 0; n0 < N; n0 += t->chunk) {
        int n = N - n0 < t->chunk ? N - n0 : t->chunk;
        size_t cd = (size_t)n * d, cD = (size_t)n * D, r0 = (size_t)n0 * D;
        float *u = t->ud; /* the up-projection, until LayerNorm_out has read it */
        be->relu_forward(t->rz, t->z + (size_t)n0 * d, cd);
        be->matmul_forward(u, t->rz, P(ps, a->up_w), P(ps, a->up_b), n, d, D);
        be->layernorm_forward(t->un, t->out_mean + n0, t->out_rstd + n0, u, P(ps, a->out_ln_w),
                              P(ps, a->out_ln_b), n, D, a->out_eps);
        be->dropout_forward(t->ud, t->un, cD, train ? a->dropout : 0.0f, seed, r0);
        be->gate_add_forward(y + r0, t->ud, h_last + r0, P(ps, a->gate), MTSA_GATE_TEMPERATURE,
                             cD);
    }
}

void mtsa_backward(const mtsa *a, param_set *ps, mtsa_acts *t, const float *dy, const float *taps,
                   const uint16_t *taps16, const float *h_last, int N, int train, uint64_t seed)
{
    const sherl_backend *be = ps->be;
    int K = a->K, D = a->D, d = a->d;
    be->zero(t->d_z, (size_t)N * d * sizeof(float));
    /* The head by the forward's chunks of tokens: relu(z) and the up-projection again (the
     * same bits as the forward's; nothing of the head kept from forward to backward but z and
     * LayerNorm_out's statistics), u over d_ud, which dropout's backward has consumed. */
    for (int n0 = 0; n0 < N; n0 += t->chunk) {
        int n = N - n0 < t->chunk ? N - n0 : t->chunk;
        size_t cd = (size_t)n * d, cD = (size_t)n * D, r0 = (size_t)n0 * D;
        float *u = t->d_ud;
        be->zero(t->d_ud, cD * sizeof(float));
        be->gate_add_backward(t->d_ud, G(ps, a->gate), dy + r0, h_last + r0, P(ps, a->gate),
                              MTSA_GATE_TEMPERATURE, cD);
        be->zero(t->d_un, cD * sizeof(float));
        be->dropout_backward(t->d_un, t->d_ud, cD, train ? a->dropout : 0.0f, seed, r0);
        be->relu_forward(t->rz, t->z + (size_t)n0 * d, cd);
        be->matmul_forward(u, t->rz, P(ps, a->up_w), P(ps, a->up_b), n, d, D);
        be->zero(t->d_u, cD * sizeof(float));
        be->layernorm_backward(t->d_u, G(ps, a->out_ln_w), G(ps, a->out_ln_b), t->d_un, u,
                               P(ps, a->out_ln_w), t->out_mean + n0, t->out_rstd + n0, n, D);
        be->zero(t->d_rz, cd * sizeof(float));
        be->matmul_backward(t->d_rz, G(ps, a->up_w), G(ps, a->up_b), t->d_u, t->rz,
                            P(ps, a->up_w), n, d, D);
        be->relu_backward(t->d_z + (size_t)n0 * d, t->z + (size_t)n0 * d, t->d_rz, cd);
    }
    /* The guidance, a chunk of tokens at a time: the projections and the projected taps again
     * (the same bits as the forward's), their gradients, and on through the taps' LayerNorms
     * and projections (whose weight gradients accumulate over the chunks), every tap in one
     * grouped or batched op. */
    round_proj_weights(a, ps, t);
    long long tap = (long long)t->N * D;
    for (int n0 = 0; n0 < N; n0 += t->chunk) {
        int n = N - n0 < t->chunk ? N - n0 : t->chunk;
        size_t cd = (size_t)n * d, r0 = (size_t)n0 * d;
        project_chunk(a, ps, t, taps, taps16, n0, n);
        normalise_chunk(a, ps, t, N, n0, n, 0);
        be->zero(t->d_x, (size_t)K * cd * sizeof(float));
        be->mtsa_guide_backward(t->d_x, G(ps, a->guide_w), G(ps, a->guide_c), t->d_z + r0, t->x,
                                P(ps, a->guide_w), t->s + (size_t)n0 * (K - 1),
                                t->rho + (size_t)n0 * (K - 1), t->alpha + (size_t)n0 * (K - 1),
                                K, n, d);
        /* x is dead: its memory takes the projections' gradients */
        be->zero(t->d_xpre, (size_t)K * cd * sizeof(float));
        be->layernorm_grouped_backward(t->d_xpre, G(ps, a->proj_ln_w[0]), G(ps, a->proj_ln_b[0]),
                                       a->v_stride, t->d_x, t->xpre, P(ps, a->proj_ln_w[0]),
                                       t->ln_mean + n0, t->ln_rstd + n0, N, K, n, d);
        /* the taps are frozen early-route outputs: no input gradient. dW_i += d_xpre_i^T . tap_i
         * (half: half(d_xpre_i)^T . half tap_i with fp32 sums, d_xpre rounded over the consumed
         * d_x); db_i in fp32 */
        if (a->prec == SHERL_FP32) {
            be->gemm_strided_batched(1, 0, d, D, n, 1.0f, t->d_xpre, d, (long long)cd,
                                     taps + (size_t)n0 * D, D, tap, 1.0f, G(ps, a->proj_w[0]), D,
                                     a->w_stride, K);
        } else {
            half_round(be, a->prec, t->x16, t->d_xpre, K * cd);
            half_gemm_batched(be, a->prec, 1, 0, d, D, n, t->x16, d, (long long)cd,
                              taps16 + (size_t)n0 * D, D, tap, 1.0f, G(ps, a->proj_w[0]), D,
                              a->w_stride, K);
        }
        be->bias_add_grouped_backward(G(ps, a->proj_b[0]), a->v_stride, t->d_xpre, K, n, d);
    }
}
