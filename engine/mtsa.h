/* MTSA, the multi-tiered sensing adapter of SHERL (DESIGN.md section 2): per-tap projections,
 * redundancy-normalised guidance, consolidation onto the deepest tap, up-projection and the
 * tanh gate on h_{L-k}. Forward and backward on any backend; parameters live in a param_set. */
#ifndef SHERL_MTSA_H
#define SHERL_MTSA_H

#include <stdint.h>

#include "arena.h"
#include "bert.h"
#include "kernels.h"
#include "params.h"
#include "status.h"

#define MTSA_GATE_TEMPERATURE 0.1f
#define MTSA_PROJ_LN_EPS 1e-5f /* the projections' LayerNorm: PyTorch's default, as the reference */

/* Indices into the param_set, per tensor (per tap for the projections). */
typedef struct {
    int K, D, d;          /* taps, backbone width, side width */
    float out_eps;        /* LayerNorm_out eps: the backbone's */
    float dropout;
    int *proj_w, *proj_b, *proj_ln_w, *proj_ln_b; /* [K] each */
    /* The K taps' tensors of a kind lie at equal distances (floats) in the parameter arenas,
     * each kind registered in one run, so the per-tap ops run as one batched or grouped op:
     * w_stride between projection weights, v_stride between the d-vectors (projection biases,
     * LayerNorm weights and biases). */
    long long w_stride, v_stride;
    int guide_w, guide_c, up_w, up_b, out_ln_w, out_ln_b, gate;
    /* fp32, or bf16/fp16: the taps come in half precision (as a half backbone's activations
     * are kept) and the tap projections take half operands with fp32 sums, as autocast does */
    sherl_precision prec;
} mtsa;

/* Registers the MTSA tensors ("mtsa.*") in ps; call before param_set_alloc. */
sherl_status mtsa_register(mtsa *a, param_set *ps, int K, int D, int d, float out_eps,
                           float dropout);
void mtsa_free(mtsa *a);
/* PyTorch's default initialisation (Linear: U(+-1/sqrt(fan_in)); LayerNorm 1/0; gate 0), from a
 * seeded generator. After param_set_alloc. */
void mtsa_init(const mtsa *a, param_set *ps, uint64_t seed);

/* Activations for N tokens. */
typedef struct {
    int N;
    int chunk;    /* tokens per pass of the guidance and the head (mtsa_scratch_layout) */
    float *ln_mean, *ln_rstd; /* [K,N] the projections' LayerNorm statistics */
    float *s, *rho, *alpha;   /* [N,K-1] */
    float *z;                 /* [N,d] consolidated */
    float *out_mean, *out_rstd; /* [N] */
    /* scratch, for one chunk of tokens: the projections (half precision: rounded as autocast's
     * Linear returns them) and the projected taps, which the forward and the backward both
     * compute, and the gradients of the projected taps. The projections' gradients go over x
     * once the guidance's backward has read it; in half precision the projections and their
     * gradients are rounded into x16, over d_x when it is not live. */
    float *xpre, *x, *d_x;    /* [K,chunk,d] */
    float *d_xpre;            /* [K,chunk,d], = x */
    uint16_t *x16;            /* [K,chunk,d], over d_x (half precision only) */
    /* the head (up-projection, LayerNorm_out, dropout, gate) by the same chunks of tokens,
     * forward and backward: relu(z) and the up-projection are computed again in backward */
    float *rz;                /* [chunk,d] relu(z) */
    float *ud, *un;           /* [chunk,D] after dropout (the up-projection u until un is
                               * written), after LayerNorm_out */
    float *d_ud, *d_un, *d_u; /* [chunk,D]: d_ud and d_un over ud and un; u again over d_ud */
    float *d_rz;              /* [chunk,d] */
    float *d_z;               /* [N,d] */
    /* half precision only (scratch): every tap's projection weights rounded, w_stride apart */
    uint16_t *w16;            /* [K,w_stride] */
} mtsa_acts;

/* The activations the backward reads, kept from the forward. */
void mtsa_acts_layout(mtsa_acts *t, const mtsa *a, int N, sherl_arena *ar);
/* The forward's and the backward's own scratch, overlapped by phase, for chunks of the most
 * tokens whose scratch fits `budget` bytes, and at least about N * D / (2 K d) tokens: may share
 * memory with anything that is not live while mtsa_forward or mtsa_backward runs (in a step:
 * the layers' scratch, whose size is the budget). */
void mtsa_scratch_layout(mtsa_acts *t, const mtsa *a, int N, size_t budget, sherl_arena *ar);

/* y[N,D] = MTSA(taps, h_last), the taps one block [K,t->N,D] (tap i at i * t->N * D, t->N the
 * tokens the acts were laid out for, N <= t->N those of this call; the last tap is the guide's
 * source), h_last = h_{L-k}. The taps are fp32 (taps) or, when a->prec is
 * bf16/fp16, half (taps16; taps unused). Dropout (p = a->dropout when train) uses the
 * counter-based RNG at (seed, 0). */
void mtsa_forward(const mtsa *a, const param_set *ps, mtsa_acts *t, float *y, const float *taps,
                  const uint16_t *taps16, const float *h_last, int N, int train, uint64_t seed);
/* Accumulates every MTSA gradient into ps's grad arena; no gradient flows to the taps. */
void mtsa_backward(const mtsa *a, param_set *ps, mtsa_acts *t, const float *dy, const float *taps,
                   const uint16_t *taps16, const float *h_last, int N, int train, uint64_t seed);

#endif
