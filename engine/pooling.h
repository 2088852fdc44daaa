/* Sequence pooling: [B,T,D] token states -> [B,D] sequence vectors, forward and backward.
 *   mean: average over the tokens whose attention mask is 1 (sentence-transformers' mean)
 *   cls:  the first token's state ([CLS] for BERT) */
#ifndef SHERL_POOLING_H
#define SHERL_POOLING_H

#include <stdint.h>

#include "arena.h"
#include "kernels.h"
#include "status.h"

typedef enum { POOL_MEAN = 0, POOL_CLS } pool_mode;

/* "mean" or "cls"; anything else is SHERL_EINVAL naming the value. */
sherl_status pool_mode_parse(const char *name, pool_mode *mode);
const char *pool_mode_name(pool_mode mode);

typedef struct {
    const sherl_backend *be;
    pool_mode mode;
    int max_B, T;        /* T: the sequence length first_rows was built for */
    int32_t *first_rows; /* [max_B] on the backend: b*T, the rows of the first tokens */
    sherl_arena own;     /* pooler_create's arena; empty when carved from another */
} pooler;

sherl_status pooler_check(int max_B);
/* Carves the pooler's buffers from ar (see arena.h); max_B checked by pooler_check. */
void pooler_layout(pooler *p, const sherl_backend *be, pool_mode mode, int max_B, sherl_arena *ar);
/* A pooler in an arena of its own. */
sherl_status pooler_create(pooler *p, const sherl_backend *be, pool_mode mode, int max_B);
void pooler_free(pooler *p);
/* out[B,D] from hidden[B,T,D]; mask [B,T] on the backend (used by mean); B <= max_B. */
/* Uploads what pooling sequences of length T needs (CLS: the first rows' indices), so that
 * pool_forward / pool_backward at that T copy nothing from the host (a device may then record
 * them into a graph); they do it themselves otherwise. */
void pool_prepare(pooler *p, int T);
void pool_forward(pooler *p, float *out, const float *hidden, const int32_t *mask, int B, int T,
                  int D);
/* dhidden[B,T,D] += d(out)/d(hidden) . dout */
void pool_backward(pooler *p, float *dhidden, const float *dout, const int32_t *mask, int B, int T,
                   int D);

#endif
