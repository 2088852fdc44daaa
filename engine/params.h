/* A named set of trainable tensors with their gradients and AdamW moments, each kind in one
 * backend allocation. Names are what checkpoints and artifacts store (safetensors), so the same
 * set loads initial values from a PyTorch dump, saves, and resumes. */
#ifndef SHERL_PARAMS_H
#define SHERL_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"
#include "status.h"

typedef struct {
    char name[96];
    int ndim;
    int64_t shape[2];
    size_t numel;
    size_t offset;  /* in floats, within each arena; set by param_set_alloc */
    size_t group_offset; /* in floats, within its group (decay or not; see param_set_add) */
    int decay;      /* 1: AdamW weight decay applies (not to biases, LayerNorm, the gate) */
    float *data, *grad, *m, *v; /* backend memory, valid after param_set_alloc */
} sherl_param;

typedef struct {
    const sherl_backend *be;
    sherl_param *items;
    int n, cap;
    size_t total;       /* floats per arena */
    size_t decay_total; /* of which the first decay_total hold the tensors with weight decay */
    float *data, *grad, *m, *v;
} param_set;

void param_set_init(param_set *ps, const sherl_backend *be);
/* Registers a tensor (shape d0, or d0 x d1 when d1 > 0); returns its index or -1 on failure
 * (out of memory, duplicate name). Only before param_set_alloc. */
int param_set_add(param_set *ps, const char *name, int64_t d0, int64_t d1, int decay);
/* The distance in floats from tensor i to tensor j in the arenas (negative when j comes first),
 * known from registration on: tensors with weight decay come first, then the others, each group
 * in the order added (so each group is one AdamW call). LLONG_MIN when one has weight decay and
 * the other not (their distance is only known after param_set_alloc). */
long long param_set_distance(const param_set *ps, int i, int j);
/* Allocates the four arenas (zeroed) and points every tensor into them. */
sherl_status param_set_alloc(param_set *ps);
void param_set_free(param_set *ps);
const sherl_param *param_set_find(const param_set *ps, const char *name);
void param_set_zero_grad(param_set *ps);
/* Fills data from host values; n must equal the tensor's numel. */
void param_set_upload(param_set *ps, int index, const float *host);

/* Global gradient L2 norm (double precision, fixed order). */
double param_set_grad_norm(const param_set *ps);
/* One AdamW step on every tensor: weight decay only where decay is set. */
void param_set_adamw(param_set *ps, float lr, float beta1, float beta2, float eps,
                     float weight_decay, int step);

/* Every tensor of the set present in the safetensors file at path is loaded (shape checked);
 * with require_all, a missing one is an error naming it. */
sherl_status param_set_load(param_set *ps, const char *path, int require_all);

#endif
