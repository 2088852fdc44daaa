#include "params.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

void param_set_init(param_set *ps, const sherl_backend *be)
{
    memset(ps, 0, sizeof *ps);
    ps->be = be;
}

int param_set_add(param_set *ps, const char *name, int64_t d0, int64_t d1, int decay)
{
    if (ps->data || d0 <= 0 || d1 < 0 || strlen(name) >= sizeof ps->items[0].name ||
        param_set_find(ps, name))
        return -1;
    if (ps->n == ps->cap) {
        int cap = ps->cap ? 2 * ps->cap : 32;
        sherl_param *it = realloc(ps->items, sizeof *it * (size_t)cap);
        if (!it)
            return -1;
        ps->items = it;
        ps->cap = cap;
    }
    sherl_param *p = &ps->items[ps->n];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = d1 > 0 ? 2 : 1;
    p->shape[0] = d0;
    p->shape[1] = d1 > 0 ? d1 : 1;
    p->numel = (size_t)d0 * (size_t)p->shape[1];
    p->decay = decay != 0;
    /* Two groups, those with weight decay first, each in the order added: one AdamW call covers
     * a group (its padding is zero in all four arenas, and AdamW keeps zeros at zero).
     * 16-float alignment keeps every tensor on its own cache lines (and SIMD-aligned). */
    size_t span = (p->numel + 15) & ~(size_t)15;
    p->group_offset = p->decay ? ps->decay_total : ps->total - ps->decay_total;
    ps->total += span;
    if (p->decay)
        ps->decay_total += span;
    return ps->n++;
}

long long param_set_distance(const param_set *ps, int i, int j)
{
    const sherl_param *a = &ps->items[i], *b = &ps->items[j];
    if (a->decay != b->decay)
        return LLONG_MIN;
    return (long long)b->group_offset - (long long)a->group_offset;
}

sherl_status param_set_alloc(param_set *ps)
{
    size_t bytes = (ps->total ? ps->total : 16) * sizeof(float);
    ps->data = ps->be->alloc(bytes);
    ps->grad = ps->be->alloc(bytes);
    ps->m = ps->be->alloc(bytes);
    ps->v = ps->be->alloc(bytes);
    if (!ps->data || !ps->grad || !ps->m || !ps->v) {
        param_set_free(ps);
        return sherl_errorf(SHERL_ENOMEM, "cannot allocate 4 x %.1f MB for trainable parameters",
                            bytes / 1e6);
    }
    /* param_set_adamw runs over the padding too: backend memory comes zeroed (kernels.h), and
     * AdamW keeps a zero parameter with zero gradient and moments at zero */
    for (int i = 0; i < ps->n; i++) {
        sherl_param *p = &ps->items[i];
        p->offset = p->decay ? p->group_offset : ps->decay_total + p->group_offset;
        p->data = ps->data + p->offset;
        p->grad = ps->grad + p->offset;
        p->m = ps->m + p->offset;
        p->v = ps->v + p->offset;
    }
    return sherl_ok();
}

void param_set_free(param_set *ps)
{
    float *all[] = {ps->data, ps->grad, ps->m, ps->v};
    for (int i = 0; i < 4; i++)
        if (all[i])
            ps->be->free(all[i]);
    free(ps->items);
    const sherl_backend *be = ps->be;
    memset(ps, 0, sizeof *ps);
    ps->be = be;
}

const sherl_param *param_set_find(const param_set *ps, const char *name)
{
    for (int i = 0; i < ps->n; i++)
        if (!strcmp(ps->items[i].name, name))
            return &ps->items[i];
    return NULL;
}

void param_set_zero_grad(param_set *ps)
{
    ps->be->zero(ps->grad, ps->total * sizeof(float));
}

void param_set_upload(param_set *ps, int index, const float *host)
{
    sherl_param *p = &ps->items[index];
    ps->be->copy_to_device(p->data, host, p->numel * sizeof(float));
}

double param_set_grad_norm(const param_set *ps)
{
    /* padding between tensors is zero and stays zero: one pass over the arena is exact */
    double ss = ps->be->sumsq(ps->grad, ps->total);
    return ss > 0 ? sqrt(ss) : 0.0;
}

void param_set_adamw(param_set *ps, float lr, float beta1, float beta2, float eps,
                     float weight_decay, int step)
{
    /* param_set_add's two groups, one call each */
    const sherl_backend *be = ps->be;
    size_t d = ps->decay_total, rest = ps->total - ps->decay_total;
    if (d)
        be->adamw_update(ps->data, ps->grad, ps->m, ps->v, d, lr, beta1, beta2, eps,
                         weight_decay, step);
    if (rest)
        be->adamw_update(ps->data + d, ps->grad + d, ps->m + d, ps->v + d, rest, lr, beta1,
                         beta2, eps, 0.0f, step);
}

sherl_status param_set_load(param_set *ps, const char *path, int require_all)
{
    safetensors_file sf;
    SHERL_TRY(safetensors_open(&sf, path));
    sherl_status st = sherl_ok();
    float *host = NULL;
    size_t host_n = 0;
    for (int i = 0; !st.code && i < ps->n; i++) {
        sherl_param *p = &ps->items[i];
        if (!safetensors_find(&sf, p->name)) {
            if (require_all)
                st = sherl_errorf(SHERL_EFORMAT, "%s: tensor '%s' is missing", path, p->name);
            continue;
        }
        if (ps->be->host_memory) { /* straight into the tensor: no staging copy */
            st = safetensors_read_f32(&sf, p->name, p->data, p->ndim, p->shape);
            continue;
        }
        if (p->numel > host_n) {
            float *h = realloc(host, p->numel * sizeof(float));
            if (!h) {
                st = sherl_errorf(SHERL_ENOMEM, "out of memory loading '%s'", p->name);
                break;
            }
            host = h;
            host_n = p->numel;
        }
        st = safetensors_read_f32(&sf, p->name, host, p->ndim, p->shape);
        if (!st.code)
            param_set_upload(ps, i, host);
    }
    free(host);
    safetensors_close(&sf);
    return st;
}
