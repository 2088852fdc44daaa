#include "optim.h"

#include <math.h>

int lr_warmup_steps(float warmup_ratio, int total)
{
    if (warmup_ratio <= 0 || total <= 0)
        return 0;
    return (int)ceil((double)warmup_ratio * total);
}

double lr_at(lr_schedule schedule, double base_lr, int warmup, int total, int step)
{
    if (step < warmup)
        return base_lr * (double)step / (double)(warmup > 0 ? warmup : 1);
    if (schedule == SCHEDULE_CONSTANT)
        return base_lr;
    int span = total - warmup;
    if (span <= 0)
        return 0.0;
    double progress = (double)(step - warmup) / span;
    if (progress > 1.0)
        progress = 1.0;
    if (schedule == SCHEDULE_COSINE)
        return base_lr * 0.5 * (1.0 + cos(M_PI * progress));
    return base_lr * (1.0 - progress);
}

double clip_grad_norm(param_set *ps, double max_norm)
{
    double norm = param_set_grad_norm(ps);
    if (max_norm > 0 && norm > max_norm) {
        double coef = max_norm / (norm + 1e-6);
        ps->be->scale(ps->grad, ps->total, (float)coef);
    }
    return norm;
}
