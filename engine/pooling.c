#include "pooling.h"

#include <stdlib.h>
#include <string.h>

sherl_status pool_mode_parse(const char *name, pool_mode *mode)
{
    if (name && !strcmp(name, "mean")) {
        *mode = POOL_MEAN;
        return sherl_ok();
    }
    if (name && !strcmp(name, "cls")) {
        *mode = POOL_CLS;
        return sherl_ok();
    }
    return sherl_errorf(SHERL_EINVAL, "pooling '%s': expected 'mean' or 'cls'",
                        name ? name : "(null)");
}

const char *pool_mode_name(pool_mode mode) { return mode == POOL_CLS ? "cls" : "mean"; }

/* Row indices b*T of each sequence's first token, for the current T. */
static void set_first_rows(pooler *p, int T)
{
    if (p->T == T)
        return;
    int32_t rows[256];
    for (int b0 = 0; b0 < p->max_B; b0 += 256) {
        int n = p->max_B - b0 < 256 ? p->max_B - b0 : 256;
        for (int k = 0; k < n; k++)
            rows[k] = (b0 + k) * T;
        p->be->copy_to_device(p->first_rows + b0, rows, sizeof(int32_t) * (size_t)n);
    }
    p->T = T;
}

sherl_status pooler_create(pooler *p, const sherl_backend *be, pool_mode mode, int max_B)
{
    memset(p, 0, sizeof *p);
    if (max_B <= 0)
        return sherl_errorf(SHERL_EINVAL, "pooler for %d sequences: must be positive", max_B);
    p->be = be, p->mode = mode, p->max_B = max_B;
    if (mode == POOL_CLS) {
        /* CLS pooling is an embedding gather from the [B*T, D] states at rows b*T, so it
         * reuses the embedding op (and its scatter-add backward) on every backend. */
        p->first_rows = be->alloc(sizeof(int32_t) * (size_t)max_B);
        if (!p->first_rows)
            return sherl_errorf(SHERL_ENOMEM, "out of memory for a pooler of %d rows", max_B);
    }
    return sherl_ok();
}

void pooler_free(pooler *p)
{
    if (p->be && p->first_rows)
        p->be->free(p->first_rows);
    memset(p, 0, sizeof *p);
}

void pool_forward(pooler *p, float *out, const float *hidden, const int32_t *mask, int B, int T,
                  int D)
{
    if (p->mode == POOL_CLS) {
        set_first_rows(p, T);
        p->be->embedding_forward(out, p->first_rows, hidden, B, D);
    } else {
        p->be->mean_pool_forward(out, hidden, mask, B, T, D);
    }
}

void pool_backward(pooler *p, float *dhidden, const float *dout, const int32_t *mask, int B, int T,
                   int D)
{
    if (p->mode == POOL_CLS) {
        set_first_rows(p, T);
        p->be->embedding_backward(dhidden, dout, p->first_rows, B, D);
    } else {
        p->be->mean_pool_backward(dhidden, dout, mask, B, T, D);
    }
}
