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

sherl_status pooler_check(int max_B)
{
    if (max_B <= 0)
        return sherl_errorf(SHERL_EINVAL, "pooler for %d sequences: must be positive", max_B);
    return sherl_ok();
}

void pooler_layout(pooler *p, const sherl_backend *be, pool_mode mode, int max_B, sherl_arena *ar)
{
    p->be = be, p->mode = mode, p->max_B = max_B, p->T = 0;
    /* CLS pooling is an embedding gather from the [B*T, D] states at rows b*T, so it reuses
     * the embedding op (and its scatter-add backward) on every backend. */
    p->first_rows = mode == POOL_CLS ? arena_ints(ar, (size_t)max_B) : NULL;
}

sherl_status pooler_create(pooler *p, const sherl_backend *be, pool_mode mode, int max_B)
{
    memset(p, 0, sizeof *p);
    SHERL_TRY(pooler_check(max_B));
    sherl_arena measure;
    arena_measure(&measure);
    pooler_layout(p, be, mode, max_B, &measure);
    SHERL_TRY(arena_alloc(&p->own, be, measure.used, "a pooler"));
    pooler_layout(p, be, mode, max_B, &p->own);
    return arena_check(&p->own, "pooler");
}

void pooler_free(pooler *p)
{
    arena_release(&p->own);
    memset(p, 0, sizeof *p);
}

void pool_prepare(pooler *p, int T)
{
    if (p->mode == POOL_CLS)
        set_first_rows(p, T);
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
