#include "events.h"

#include <stdlib.h>
#include <string.h>

#include "sherl/v1/sherl.pb-c.h"

static uint8_t *pack(const Sherl__V1__JobEvent *e, size_t *len)
{
    *len = sherl__v1__job_event__get_packed_size(e);
    uint8_t *buf = malloc(*len ? *len : 1);
    if (buf)
        sherl__v1__job_event__pack(e, buf);
    return buf;
}

uint8_t *events_state(job_state s, size_t *len)
{
    Sherl__V1__JobEvent e = SHERL__V1__JOB_EVENT__INIT;
    e.kind_case = SHERL__V1__JOB_EVENT__KIND_STATE;
    e.state = (Sherl__V1__JobState)s;
    return pack(&e, len);
}

uint8_t *events_message(const char *text, size_t *len)
{
    Sherl__V1__JobEvent e = SHERL__V1__JOB_EVENT__INIT;
    e.kind_case = SHERL__V1__JOB_EVENT__KIND_MESSAGE;
    e.message = (char *)text;
    return pack(&e, len);
}

uint8_t *events_progress(const train_progress *p, int64_t memory_bytes, int64_t planned_bytes,
                         int *kind, size_t *len)
{
    Sherl__V1__JobEvent e = SHERL__V1__JOB_EVENT__INIT;
    Sherl__V1__Progress pr = SHERL__V1__PROGRESS__INIT;
    Sherl__V1__EvalMetrics ev = SHERL__V1__EVAL_METRICS__INIT;
    if (p->is_eval) {
        ev.split = (char *)(p->eval_split ? p->eval_split : "");
        ev.step = p->step;
        ev.loss = p->eval_loss, ev.accuracy = p->eval_accuracy, ev.macro_f1 = p->eval_macro_f1;
        ev.pearson = p->eval_pearson, ev.spearman = p->eval_spearman;
        e.kind_case = SHERL__V1__JOB_EVENT__KIND_EVAL;
        e.eval = &ev;
        *kind = EV_EVAL;
    } else {
        pr.step = p->step, pr.total_steps = p->total_steps;
        pr.epoch = p->epoch, pr.epochs = p->epochs;
        pr.loss = p->loss, pr.lr = p->lr, pr.samples_per_s = p->samples_per_s;
        pr.elapsed_s = p->elapsed_s, pr.eta_s = p->eta_s;
        pr.memory_bytes = memory_bytes, pr.planned_bytes = planned_bytes;
        e.kind_case = SHERL__V1__JOB_EVENT__KIND_PROGRESS;
        e.progress = &pr;
        *kind = EV_PROGRESS;
    }
    return pack(&e, len);
}

uint8_t *events_frame(int64_t seq, int64_t time_ms, const char *job_id, const uint8_t *payload,
                      size_t plen, size_t *len)
{
    Sherl__V1__JobEvent h = SHERL__V1__JOB_EVENT__INIT;
    h.seq = seq, h.time_ms = time_ms, h.job_id = (char *)job_id;
    size_t hl = sherl__v1__job_event__get_packed_size(&h);
    uint8_t *buf = malloc(hl + plen + 1);
    if (!buf)
        return NULL;
    sherl__v1__job_event__pack(&h, buf);
    if (plen)
        memcpy(buf + hl, payload, plen);
    *len = hl + plen;
    return buf;
}
