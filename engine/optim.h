/* Learning-rate schedule and gradient clipping around the AdamW of param_set. */
#ifndef SHERL_OPTIM_H
#define SHERL_OPTIM_H

#include "job_spec.h"
#include "params.h"

/* Warmup steps for a run of total optimizer steps: ceil(warmup_ratio * total), as HF's Trainer. */
int lr_warmup_steps(float warmup_ratio, int total);
/* The learning rate of optimizer step `step` (0-based: the number of steps already taken), as
 * HF's get_{linear,cosine,constant}_schedule_with_warmup: step/warmup during warmup, then
 * linear decay to 0 at `total`, half a cosine to 0, or constant. */
double lr_at(lr_schedule schedule, double base_lr, int warmup, int total, int step);
/* Scales all gradients so their global L2 norm is at most max_norm (0 = no clipping), as
 * torch.nn.utils.clip_grad_norm_ (factor max_norm / (norm + 1e-6) when norm > max_norm).
 * Returns the norm before clipping. */
double clip_grad_norm(param_set *ps, double max_norm);

#endif
