/* The handlers of sherl.v1.Sherl and grpc.health.v1.Health: decode, authenticate, call into
 * jobs.c / the registry / the store, encode. Every error names the field and the problem. */
#include "service.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "confine.h"
#include "events.h"
#include "grpc/health/v1/health.pb-c.h"
#include "memstat.h"
#include "rpc.h"
#include "sherl/v1/sherl.pb-c.h"

#define CHUNK (256 * 1024)

/* ------------------------------------------------------------------------------------------
 * helpers */

/* The caller's tenant: "" without tokens; NULL (after answering UNAUTHENTICATED) when tokens
 * are configured and the call has no valid one. */
static const char *tenant_of(sherld *d, rpc_call *c)
{
    if (!d->tokens)
        return "";
    size_t len;
    const char *h = rpc_metadata(c, "authorization", &len);
    const char *t = h ? auth_tenant(d->tokens, h, len) : NULL;
    if (!t)
        rpc_finish(c, RPC_UNAUTHENTICATED,
                   h ? "authorization: the bearer token is not valid"
                     : "authorization: missing; send 'authorization: Bearer <token>'",
                   NULL, 0);
    return t;
}

/* Ends the call with r's status when it is an error; 1 then. */
static int failed(rpc_call *c, job_result r)
{
    if (r.code == RPC_OK)
        return 0;
    rpc_finish(c, r.code, r.msg, NULL, 0);
    return 1;
}

static void reply(rpc_call *c, const ProtobufCMessage *m)
{
    size_t len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) {
        rpc_finish(c, RPC_RESOURCE_EXHAUSTED, "out of memory", NULL, 0);
        return;
    }
    protobuf_c_message_pack(m, buf);
    rpc_finish(c, RPC_OK, NULL, buf, len);
    free(buf);
}

#define DECODE(type, fn, var)                                                                  \
    size_t req_len_;                                                                           \
    const uint8_t *req_ = rpc_request(c, &req_len_);                                           \
    type *var = fn(NULL, req_len_, req_);                                                      \
    if (!var) {                                                                                \
        rpc_finish(c, RPC_INVALID_ARGUMENT, "request: not a valid " #type " message", NULL, 0); \
        return;                                                                                \
    }

static cJSON *add_obj(cJSON *o, const char *name)
{
    cJSON *x = cJSON_GetObjectItemCaseSensitive(o, name);
    return x ? x : cJSON_AddObjectToObject(o, name);
}

/* The typed spec as the JSON spec: fields at their zero value are left out so the JSON
 * defaults apply (has_* flags tell an explicit 0 from unset). */
static char *typed_spec_json(const Sherl__V1__JobSpec *s)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
#define STR(obj, key, v)                                                                       \
    if ((v) && *(v))                                                                           \
    cJSON_AddStringToObject(obj, key, v)
#define NUM(obj, key, v)                                                                       \
    if (v)                                                                                     \
    cJSON_AddNumberToObject(obj, key, (double)(v))
    STR(o, "name", s->name);
    STR(o, "backbone", s->backbone);
    STR(o, "method", s->method);
    if (s->sherl) {
        cJSON *x = add_obj(o, "sherl");
        NUM(x, "late_layers", s->sherl->late_layers);
        NUM(x, "downsample_factor", s->sherl->downsample_factor);
        NUM(x, "side_dim", s->sherl->side_dim);
        if (s->sherl->n_taps) {
            cJSON *t = cJSON_AddArrayToObject(x, "taps");
            for (size_t i = 0; i < s->sherl->n_taps; i++)
                cJSON_AddItemToArray(t, cJSON_CreateNumber(s->sherl->taps[i]));
        }
        if (s->sherl->has_dropout)
            cJSON_AddNumberToObject(x, "dropout", s->sherl->dropout);
        if (s->sherl->tune_late)
            cJSON_AddBoolToObject(x, "tune_late", 1);
    }
    if (s->task) {
        cJSON *x = add_obj(o, "task");
        STR(x, "type", s->task->type);
        STR(x, "pooling", s->task->pooling);
        if (s->task->n_text_fields) {
            cJSON *t = cJSON_AddArrayToObject(x, "text_fields");
            for (size_t i = 0; i < s->task->n_text_fields; i++)
                cJSON_AddItemToArray(t, cJSON_CreateString(s->task->text_fields[i]));
        }
        STR(x, "label_field", s->task->label_field);
    }
    if (s->data) {
        cJSON *x = add_obj(o, "data");
        STR(x, "train", s->data->train);
        STR(x, "validation", s->data->validation);
        STR(x, "test", s->data->test);
        NUM(x, "max_length", s->data->max_length);
    }
    if (s->optim) {
        cJSON *x = add_obj(o, "optim");
        NUM(x, "lr", s->optim->lr);
        if (s->optim->has_weight_decay)
            cJSON_AddNumberToObject(x, "weight_decay", s->optim->weight_decay);
        NUM(x, "warmup_ratio", s->optim->warmup_ratio);
        STR(x, "schedule", s->optim->schedule);
        if (s->optim->has_clip_norm)
            cJSON_AddNumberToObject(x, "clip_norm", s->optim->clip_norm);
        NUM(x, "beta1", s->optim->beta1);
        NUM(x, "beta2", s->optim->beta2);
        NUM(x, "eps", s->optim->eps);
    }
    if (s->train) {
        cJSON *x = add_obj(o, "train");
        NUM(x, "epochs", s->train->epochs);
        NUM(x, "max_steps", s->train->max_steps);
        NUM(x, "batch_size", s->train->batch_size);
        NUM(x, "grad_accum", s->train->grad_accum);
        NUM(x, "eval_every", s->train->eval_every_steps);
        NUM(x, "checkpoint_every", s->train->checkpoint_every);
        NUM(x, "seed", s->train->seed);
        NUM(x, "log_every", s->train->log_every);
    }
    if (s->resources) {
        cJSON *x = add_obj(o, "resources");
        STR(x, "device", s->resources->device);
        STR(x, "precision", s->resources->precision);
        NUM(x, "threads", s->resources->threads);
    }
#undef STR
#undef NUM
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return text;
}

static Sherl__V1__MemoryPlan *plan_message(const memory_plan *p)
{
    Sherl__V1__MemoryPlan *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    sherl__v1__memory_plan__init(m);
    m->peak_bytes = (int64_t)p->peak_bytes;
    m->backbone_bytes = (int64_t)p->backbone_bytes;
    m->job_bytes = (int64_t)(p->peak_bytes - p->backbone_bytes);
    m->batch = p->B, m->seq_len = p->T;
    m->trainable_params = p->trainable_params, m->frozen_params = p->frozen_params;
    m->items = calloc((size_t)p->n, sizeof *m->items);
    Sherl__V1__MemoryItem *items = calloc((size_t)p->n, sizeof *items);
    if (!m->items || !items) {
        free(m->items), free(items), free(m);
        return NULL;
    }
    static const char *const kinds[] = {"arena", "host", "transient"};
    for (int i = 0; i < p->n; i++) {
        sherl__v1__memory_item__init(&items[i]);
        items[i].name = (char *)p->items[i].name;
        items[i].kind = (char *)kinds[p->items[i].kind];
        items[i].bytes = (int64_t)p->items[i].bytes;
        m->items[i] = &items[i];
    }
    m->n_items = (size_t)p->n;
    return m;
}

static void plan_message_free(Sherl__V1__MemoryPlan *m)
{
    if (!m)
        return;
    free(m->n_items ? m->items[0] : NULL);
    free(m->items);
    free(m);
}

/* A plan stored as JSON (memory_plan_to_json) back into a message: strings point into j. */
static Sherl__V1__MemoryPlan *plan_from_json(const cJSON *j)
{
    if (!cJSON_IsObject(j))
        return NULL;
    memory_plan p;
    memset(&p, 0, sizeof p);
    const cJSON *it;
    if ((it = cJSON_GetObjectItemCaseSensitive(j, "peak_bytes")) && cJSON_IsNumber(it))
        p.peak_bytes = (size_t)it->valuedouble;
    if ((it = cJSON_GetObjectItemCaseSensitive(j, "backbone_bytes")) && cJSON_IsNumber(it))
        p.backbone_bytes = (size_t)it->valuedouble;
    if ((it = cJSON_GetObjectItemCaseSensitive(j, "batch")) && cJSON_IsNumber(it))
        p.B = it->valueint;
    if ((it = cJSON_GetObjectItemCaseSensitive(j, "seq_len")) && cJSON_IsNumber(it))
        p.T = it->valueint;
    if ((it = cJSON_GetObjectItemCaseSensitive(j, "trainable_params")) && cJSON_IsNumber(it))
        p.trainable_params = (long long)it->valuedouble;
    if ((it = cJSON_GetObjectItemCaseSensitive(j, "frozen_params")) && cJSON_IsNumber(it))
        p.frozen_params = (long long)it->valuedouble;
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(j, "items"), *x;
    cJSON_ArrayForEach(x, items)
    {
        if (p.n >= PLAN_MAX_ITEMS)
            break;
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(x, "name");
        const cJSON *kind = cJSON_GetObjectItemCaseSensitive(x, "kind");
        const cJSON *bytes = cJSON_GetObjectItemCaseSensitive(x, "bytes");
        if (!cJSON_IsString(name) || !cJSON_IsString(kind) || !cJSON_IsNumber(bytes))
            continue;
        snprintf(p.items[p.n].name, sizeof p.items[p.n].name, "%s", name->valuestring);
        p.items[p.n].kind = !strcmp(kind->valuestring, "arena")  ? PLAN_ARENA
                            : !strcmp(kind->valuestring, "host") ? PLAN_HOST
                                                                 : PLAN_TRANSIENT;
        p.items[p.n].bytes = (size_t)bytes->valuedouble;
        p.n++;
    }
    /* item names are copied into p, which dies here: the message keeps its own copies */
    Sherl__V1__MemoryPlan *m = plan_message(&p);
    if (!m)
        return NULL;
    for (size_t i = 0; i < m->n_items; i++) {
        m->items[i]->name = strdup(p.items[i].name);
        m->items[i]->kind = strdup(m->items[i]->kind);
    }
    return m;
}

static void plan_from_json_free(Sherl__V1__MemoryPlan *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_items; i++)
        free(m->items[i]->name), free(m->items[i]->kind);
    plan_message_free(m);
}

/* A Job message for a record; last progress and evaluations come from the event log's tail.
 * Free with job_message_free. */
typedef struct {
    Sherl__V1__Job job;
    Sherl__V1__Progress *progress;
    Sherl__V1__EvalMetrics *evals[4];
    Sherl__V1__JobEvent *decoded[64];
    int n_decoded;
    Sherl__V1__MemoryPlan *plan;
    char method[16], backbone[JOB_PATH_MAX];
} job_msg;

static void job_message(sherld *d, const job_record *r, job_msg *out)
{
    memset(out, 0, sizeof *out);
    Sherl__V1__Job *j = &out->job;
    sherl__v1__job__init(j);
    j->id = (char *)r->id, j->name = (char *)r->name, j->tenant = (char *)r->tenant;
    j->state = (Sherl__V1__JobState)r->state;
    j->priority = r->priority;
    j->created_ms = r->created_ms, j->started_ms = r->started_ms, j->finished_ms = r->finished_ms;
    j->spec_json = r->spec_json ? r->spec_json : (char *)"";
    j->error = r->error ? r->error : (char *)"";
    j->resumes = r->resumes;
    cJSON *spec = r->spec_json ? cJSON_Parse(r->spec_json) : NULL;
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(spec, "method");
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(spec, "backbone");
    snprintf(out->method, sizeof out->method, "%s", cJSON_IsString(m) ? m->valuestring : "");
    snprintf(out->backbone, sizeof out->backbone, "%s", cJSON_IsString(b) ? b->valuestring : "");
    cJSON_Delete(spec);
    j->method = out->method, j->backbone = out->backbone;
    cJSON *plan = r->plan_json ? cJSON_Parse(r->plan_json) : NULL;
    out->plan = plan_from_json(plan);
    cJSON_Delete(plan);
    j->plan = out->plan;
    /* the newest events: the last progress and the last evaluation of each split */
    int64_t from = r->last_seq > 64 ? r->last_seq - 64 : 0;
    job_event *ev;
    int n;
    if (job_store_events(d->store, r->id, from, 64, &ev, &n).code)
        return;
    int n_evals = 0;
    for (int i = n - 1; i >= 0 && out->n_decoded < 64; i--) {
        if (ev[i].kind != EV_PROGRESS && ev[i].kind != EV_EVAL)
            continue;
        Sherl__V1__JobEvent *e = sherl__v1__job_event__unpack(NULL, ev[i].len, ev[i].payload);
        if (!e)
            continue;
        out->decoded[out->n_decoded++] = e;
        if (e->kind_case == SHERL__V1__JOB_EVENT__KIND_PROGRESS && !out->progress) {
            out->progress = e->progress;
        } else if (e->kind_case == SHERL__V1__JOB_EVENT__KIND_EVAL && n_evals < 4) {
            int dup = 0;
            for (int k = 0; k < n_evals; k++)
                dup |= !strcmp(out->evals[k]->split, e->eval->split);
            if (!dup)
                out->evals[n_evals++] = e->eval;
        }
    }
    job_events_free(ev, n);
    j->progress = out->progress;
    j->n_evals = (size_t)n_evals;
    j->evals = out->evals;
}

static void job_message_free(job_msg *m)
{
    for (int i = 0; i < m->n_decoded; i++)
        sherl__v1__job_event__free_unpacked(m->decoded[i], NULL);
    plan_from_json_free(m->plan);
}

static void reply_job(sherld *d, rpc_call *c, const char *id)
{
    job_record r;
    job_result jr = jobs_get(d, NULL, id, &r);
    if (failed(c, jr))
        return;
    job_msg m;
    job_message(d, &r, &m);
    reply(c, &m.job.base);
    job_message_free(&m);
    job_record_free(&r);
}

/* ------------------------------------------------------------------------------------------
 * jobs */

static char *spec_text(const Sherl__V1__JobSpec *spec, const char *json, int source_case_json)
{
    if (source_case_json)
        return json ? strdup(json) : NULL;
    return spec ? typed_spec_json(spec) : NULL;
}

static void h_submit(rpc_call *c, void *ctx)
{
    sherld *d = ctx;
    const char *tenant = tenant_of(d, c);
    if (!tenant)
        return;
    DECODE(Sherl__V1__SubmitJobRequest, sherl__v1__submit_job_request__unpack, req);
    char *text = spec_text(req->spec, req->spec_json,
                           req->spec_source_case == SHERL__V1__SUBMIT_JOB_REQUEST__SPEC_SOURCE_SPEC_JSON);
    int priority = req->priority;
    sherl__v1__submit_job_request__free_unpacked(req, NULL);
    if (!text) {
        rpc_finish(c, RPC_INVALID_ARGUMENT, "spec: missing; set spec or spec_json", NULL, 0);
        return;
    }
    char id[JOB_ID_LEN + 1];
    job_result r = jobs_submit(d, tenant, text, priority, id);
    free(text);
    if (failed(c, r))
        return;
    reply_job(d, c, id);
}

static void h_estimate(rpc_call *c, void *ctx)
{
    sherld *d = ctx;
    const char *tenant = tenant_of(d, c);
    if (!tenant)
        return;
    DECODE(Sherl__V1__EstimateJobRequest, sherl__v1__estimate_job_request__unpack, req);
    char *text = spec_text(req->spec, req->spec_json,
                           req->spec_source_case ==
                               SHERL__V1__ESTIMATE_JOB_REQUEST__SPEC_SOURCE_SPEC_JSON);
    sherl__v1__estimate_job_request__free_unpacked(req, NULL);
    if (!text) {
        rpc_finish(c, RPC_INVALID_ARGUMENT, "spec: missing; set spec or spec_json", NULL, 0);
        return;
    }
    memory_plan plan;
    job_estimate est;
    job_result r = jobs_estimate(d, tenant, text, &plan, &est);
    free(text);
    if (failed(c, r))
        return;
    Sherl__V1__Estimate e = SHERL__V1__ESTIMATE__INIT;
    e.plan = plan_message(&plan);
    if (!e.plan) {
        rpc_finish(c, RPC_RESOURCE_EXHAUSTED, "out of memory", NULL, 0);
        return;
    }
    e.fits_now = est.fits_now, e.fits_ever = est.fits_ever;
    e.budget_bytes = d->budget, e.free_bytes = est.free_bytes;
    e.reason = est.reason;
    e.device = est.device;
    e.backend = (char *)est.backend;
    e.precision = (char *)est.precision;
    e.device_bytes = est.device_bytes, e.host_bytes = est.host_bytes;
    e.device_budget_bytes = est.device_budget, e.device_free_bytes = est.device_free;
    e.backbone_resident = est.backbone_resident;
    reply(c, &e.base);
    plan_message_free(e.plan);
}

static void h_get(rpc_call *c, void *ctx)
{
    sherld *d = ctx;
    const char *tenant = tenant_of(d, c);
    if (!tenant)
        return;
    DECODE(Sherl__V1__GetJobRequest, sherl__v1__get_job_request__unpack, req);
    job_record r;
    job_result jr = jobs_get(d, tenant, req->id, &r);
    sherl__v1__get_job_request__free_unpacked(req, NULL);
    if (failed(c, jr))
        return;
    job_msg m;
    job_message(d, &r, &m);
    reply(c, &m.job.base);
    job_message_free(&m);
    job_record_free(&r);
}

static void h_list(rpc_call *c, void *ctx)
{
    sherld *d = ctx;
    const char *tenant = tenant_of(d, c);
    if (!tenant)
        return;
    DECODE(Sherl__V1__ListJobsRequest, sherl__v1__list_jobs_request__unpack, req);
    int size = req->page_size ? req->page_size : 100;
    if (size < 0 || size > 1000) {
        rpc_finish(c, RPC_INVALID_ARGUMENT, "page_size: expected 1..1000 (0 = 100)", NULL, 0);
        sherl__v1__list_jobs_request__free_unpacked(req, NULL);
        return;
    }
    long long before = 0;
    char before_id[JOB_ID_LEN + 2] = "";
    if (req->page_token && *req->page_token &&
        (sscanf(req->page_token, "%lld:%20s", &before, before_id) != 2 || before <= 0)) {
        rpc_finish(c, RPC_INVALID_ARGUMENT, "page_token: not a token from ListJobs", NULL, 0);
        sherl__v1__list_jobs_request__free_unpacked(req, NULL);
        return;
    }
    job_state states[8];
    int ns = 0;
    for (size_t i = 0; i < req->n_states && ns < 8; i++) {
        if (req->states[i] < 1 || req->states[i] > 7) {
            rpc_finish(c, RPC_INVALID_ARGUMENT, "states: unknown state", NULL, 0);
            sherl__v1__list_jobs_request__free_unpacked(req, NULL);
            return;
        }
        states[ns++] = (job_state)req->states[i];
    }
    sherl__v1__list_jobs_request__free_unpacked(req, NULL);
    job_record *recs;
    int n;
    sherl_status st = job_store_list(d->store, tenant, states, ns, before, before_id, size + 1,
                                     &recs, &n);
    if (st.code) {
        rpc_finish(c, RPC_INTERNAL, st.msg, NULL, 0);
        return;
    }
    int shown = n > size ? size : n;
    job_msg *msgs = calloc((size_t)(shown ? shown : 1), sizeof *msgs);
    Sherl__V1__Job **jobs = calloc((size_t)(shown ? shown : 1), sizeof *jobs);
    Sherl__V1__ListJobsResponse resp = SHERL__V1__LIST_JOBS_RESPONSE__INIT;
    char token[64] = "";
    if (msgs && jobs) {
        for (int i = 0; i < shown; i++) {
            job_message(d, &recs[i], &msgs[i]);
            jobs[i] = &msgs[i].job;
        }
        resp.n_jobs = (size_t)shown, resp.jobs = jobs;
        if (n > size)
            snprintf(token, sizeof token, "%lld:%s", (long long)recs[shown - 1].created_ms,
                     recs[shown - 1].id);
        resp.next_page_token = token;
        reply(c, &resp.base);
        for (int i = 0; i < shown; i++)
            job_message_free(&msgs[i]);
    } else {
        rpc_finish(c, RPC_RESOURCE_EXHAUSTED, "out of memory", NULL, 0);
    }
    free(msgs), free(jobs);
    for (int i = 0; i < n; i++)
        job_record_free(&recs[i]);
    free(recs);
}

static void h_cancel(rpc_call *c, void *ctx)
{
    sherld *d = ctx;
    const char *tenant = tenant_of(d, c);
    if (!tenant)
        return;
    DECODE(Sherl__V1__CancelJobRequest, sherl__v1__cancel_job_request__unpack, req);
    char id[JOB_ID_LEN + 8];
    snprintf(id, sizeof id, "%s", req->id);
    sherl__v1__cancel_job_request__free_unpacked(req, NULL);
    job_result r = jobs_cancel(d, tenant, id);
    if (failed(c, r))
        return;
    reply_job(d, c, id);
}

/* Replays the log from after_seq, then follows it until the job ends or the client leaves. */
/* For the streaming handlers: waits on d->changed for up to ms, until d->events moves past
 * *seen (or, seen NULL, the first wake-up) or the daemon stops. Then 1 when the call is over:
 * the client went away, or the daemon is stopping and (seen given) no event came since *seen
 * (the call is finished with stopping_msg); else 0, to go on. */
static int wait_for_change(sherld *d, rpc_call *c, const int64_t *seen, long ms,
                           const char *stopping_msg)
{
    pthread_mutex_lock(&d->mu);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000)
        until.tv_sec++, until.tv_nsec -= 1000000000;
    if (seen) {
        while (d->events == *seen && !d->stopping)
            if (pthread_cond_timedwait(&d->changed, &d->mu, &until))
                break;
    } else if (!d->stopping) {
        pthread_cond_timedwait(&d->changed, &d->mu, &until);
    }
    /* events that came with the stop (a drained job's last ones) still go out first */
    int stopping = d->stopping && !(seen && d->events != *seen);
    pthread_mutex_unlock(&d->mu);
    if (rpc_cancelled(c))
        return 1;
    if (stopping) {
        rpc_finish(c, RPC_UNAVAILABLE, stopping_msg, NULL, 0);
        return 1;
    }
    return 0;
}

static void watch_job(sherld *d, rpc_call *c);

/* Counted in d->watchers while it runs, so that a drain lets it send a job's last events (the
 * drain's own) before the server cuts every call. */
static void h_watch(rpc_call *c, void *ctx)
{
    sherld *d = ctx;
    pthread_mutex_lock(&d->mu);
    d->watchers++;
    pthread_mutex_unlock(&d->mu);
    watch_job(d, c);
    pthread_mutex_lock(&d->mu);
    d->watchers--;
    pthread_cond_broadcast(&d->changed);
    pthread_mutex_unlock(&d->mu);
}

static void watch_job(sherld *d, rpc_call *c)
{
    const char *tenant = tenant_of(d, c);
    if (!tenant)
        return;
    DECODE(Sherl__V1__WatchJobRequest, sherl__v1__watch_job_request__unpack, req);
    char id[JOB_ID_LEN + 8];
    snprintf(id, sizeof id, "%s", req->id);
    int64_t after = req->after_seq > 0 ? req->after_seq : 0;
    sherl__v1__watch_job_request__free_unpacked(req, NULL);
    job_record r;
    job_result jr = jobs_get(d, tenant, id, &r);
    if (failed(c, jr))
        return;
    job_record_free(&r);
    for (;;) {
        pthread_mutex_lock(&d->mu);
        int64_t seen = d->events;
        pthread_mutex_unlock(&d->mu);
        job_event *ev;
        int n;
        if (job_store_events(d->store, id, after, 256, &ev, &n).code) {
            rpc_finish(c, RPC_INTERNAL, "cannot read the job's events", NULL, 0);
            return;
        }
        for (int i = 0; i < n; i++) {
            size_t len;
            uint8_t *buf = events_frame(ev[i].seq, ev[i].time_ms, id, ev[i].payload, ev[i].len,
                                        &len);
            int gone = !buf || rpc_send(c, buf, len);
            free(buf);
            if (gone) {
                job_events_free(ev, n);
                return;
            }
            after = ev[i].seq;
        }
        job_events_free(ev, n);
        if (n == 256)
            continue;
        if (job_store_get(d->store, id, &r).code) {
            rpc_finish(c, RPC_INTERNAL, "cannot read the job", NULL, 0);
            return;
        }
        int done = job_state_is_final(r.state) && r.last_seq <= after;
        job_record_free(&r);
        if (done) {
            rpc_finish(c, RPC_OK, NULL, NULL, 0);
            return;
        }
        /* wait for the next event; wake now and then to notice a client that went away */
        if (wait_for_change(d, c, &seen, 250,
                            "the daemon is stopping; watch again after it restarts"))
            return;
    }
}

/* ------------------------------------------------------------------------------------------
 * files and artifacts */

static void h_upload(rpc_call *c, void *ctx)
{
    sherld *d = ctx;
    const char *tenant = tenant_of(d, c);
    if (!tenant)
        return;
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s/upload-XXXXXX", d->files_dir);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        rpc_finish(c, RPC_INTERNAL, "cannot create a file for the upload", NULL, 0);
        return;
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    char name[256] = "", claimed[80] = "";
    int64_t size = -1, got = 0;
    int code = RPC_OK, first = 1;
    char err[300] = "";
    uint8_t *msg;
    size_t len;
    int r;
    while ((r = rpc_recv(c, &msg, &len)) == 1) {
        Sherl__V1__UploadChunk *ch = sherl__v1__upload_chunk__unpack(NULL, len, msg);
        free(msg);
        if (!ch) {
            code = RPC_INVALID_ARGUMENT, snprintf(err, sizeof err, "chunk: not an UploadChunk");
            break;
        }
        if (first) {
            snprintf(name, sizeof name, "%s", ch->name ? ch->name : "");
            size = ch->size;
            first = 0;
            if (size < 0 || size > d->cfg.max_upload_bytes) {
                code = RPC_RESOURCE_EXHAUSTED;
                snprintf(err, sizeof err, "size: %lld bytes, the limit is %lld (max-upload-bytes)",
                         (long long)size, (long long)d->cfg.max_upload_bytes);
            }
        }
        if (code == RPC_OK && got + (int64_t)ch->data.len > (size >= 0 ? size : 0)) {
            code = RPC_INVALID_ARGUMENT;
            snprintf(err, sizeof err, "data: more than the %lld bytes announced in size",
                     (long long)size);
        }
        if (code == RPC_OK && ch->data.len) {
            EVP_DigestUpdate(md, ch->data.data, ch->data.len);
            size_t off = 0;
            while (off < ch->data.len) {
                ssize_t w = write(fd, ch->data.data + off, ch->data.len - off);
                if (w < 0 && errno != EINTR) {
                    code = RPC_INTERNAL, snprintf(err, sizeof err, "cannot store the upload");
                    break;
                }
                if (w > 0)
                    off += (size_t)w;
            }
            got += (int64_t)ch->data.len;
        }
        if (ch->sha256 && *ch->sha256)
            snprintf(claimed, sizeof claimed, "%s", ch->sha256);
        sherl__v1__upload_chunk__free_unpacked(ch, NULL);
        if (code != RPC_OK)
            break;
    }
    unsigned char digest[32];
    unsigned dl = 0;
    EVP_DigestFinal_ex(md, digest, &dl);
    EVP_MD_CTX_free(md);
    char hex[65];
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", digest[i]);
    if (code == RPC_OK && r < 0)
        code = RPC_CANCELLED, snprintf(err, sizeof err, "the upload was interrupted");
    if (code == RPC_OK && first)
        code = RPC_INVALID_ARGUMENT, snprintf(err, sizeof err, "no chunks");
    if (code == RPC_OK && got != size)
        code = RPC_INVALID_ARGUMENT,
        snprintf(err, sizeof err, "size: %lld bytes announced, %lld received", (long long)size,
                 (long long)got);
    if (code == RPC_OK && strcmp(claimed, hex))
        code = RPC_INVALID_ARGUMENT,
        snprintf(err, sizeof err, "sha256: '%.64s' given, the content's is %s", claimed, hex);
    if (code == RPC_OK && (fsync(fd) || close(fd) < 0))
        code = RPC_INTERNAL, snprintf(err, sizeof err, "cannot store the upload");
    else if (code != RPC_OK)
        close(fd);
    char final_path[PATH_MAX], ref[80];
    snprintf(final_path, sizeof final_path, "%s/%s", d->files_dir, hex);
    snprintf(ref, sizeof ref, "sha256:%s", hex);
    if (code == RPC_OK && rename(tmp, final_path))
        code = RPC_INTERNAL, snprintf(err, sizeof err, "cannot store the upload");
    if (code != RPC_OK) {
        unlink(tmp);
        rpc_finish(c, code, err, NULL, 0);
        return;
    }
    /* the data readers pick the format by extension: a link <hex>.<ext> from the upload's name */
    const char *dot = strrchr(name, '.');
    if (dot && (!strcmp(dot, ".jsonl") || !strcmp(dot, ".json") || !strcmp(dot, ".tsv"))) {
        char linked[PATH_MAX + 8];
        snprintf(linked, sizeof linked, "%s%s", final_path, dot);
        if (link(final_path, linked) && errno != EEXIST) {
            rpc_finish(c, RPC_INTERNAL, "cannot store the upload", NULL, 0);
            return;
        }
    }
    sherl_status st = job_store_put_file(d->store, ref, tenant, name, size, sherld_now_ms());
    if (st.code) {
        rpc_finish(c, RPC_INTERNAL, st.msg, NULL, 0);
        return;
    }
    Sherl__V1__FileInfo fi = SHERL__V1__FILE_INFO__INIT;
    fi.ref = ref, fi.name = name, fi.size = size;
    reply(c, &fi.base);
}

static void h_download(rpc_call *c, void *ctx)
{
    sherld *d = ctx;
    const char *tenant = tenant_of(d, c);
    if (!tenant)
        return;
    DECODE(Sherl__V1__DownloadArtifactRequest, sherl__v1__download_artifact_request__unpack, req);
    char id[JOB_ID_LEN + 8], file[64];
    snprintf(id, sizeof id, "%s", req->job_id);
    snprintf(file, sizeof file, "%s", req->file && *req->file ? req->file : "adapter_model.safetensors");
    sherl__v1__download_artifact_request__free_unpacked(req, NULL);
    static const char *const allowed[] = {"adapter_model.safetensors", "adapter_config.json",
                                          "metrics.json"};
    int ok = 0;
    for (int i = 0; i < 3; i++)
        ok |= !strcmp(file, allowed[i]);
    if (!ok) {
        rpc_finish(c, RPC_INVALID_ARGUMENT, "file: expected adapter_model.safetensors, "
                                            "adapter_config.json or metrics.json", NULL, 0);
        return;
    }
    job_record r;
    job_result jr = jobs_get(d, tenant, id, &r);
    if (failed(c, jr))
        return;
    job_state s = r.state;
    job_record_free(&r);
    if (s != JOB_SUCCEEDED) {
        char msg[160];
        snprintf(msg, sizeof msg, "job %s is %s: artifacts exist once it SUCCEEDED", id,
                 job_state_name(s));
        rpc_finish(c, RPC_FAILED_PRECONDITION, msg, NULL, 0);
        return;
    }
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s/%s%s", d->jobs_dir, id,
             strcmp(file, "metrics.json") ? "artifact/" : "", file);
    FILE *f = fopen(path, "rb");
    if (!f) {
        rpc_finish(c, RPC_NOT_FOUND, "the artifact file is missing", NULL, 0);
        return;
    }
    fseek(f, 0, SEEK_END);
    long total = ftell(f);
    rewind(f);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    uint8_t *buf = malloc(CHUNK);
    long sent = 0;
    int first = 1, gone = 0;
    while (buf && !gone) {
        size_t n = fread(buf, 1, CHUNK, f);
        EVP_DigestUpdate(md, buf, n);
        sent += (long)n;
        Sherl__V1__ArtifactChunk ch = SHERL__V1__ARTIFACT_CHUNK__INIT;
        ch.data.data = buf, ch.data.len = n;
        if (first)
            ch.file = file, ch.size = total;
        char hex[65];
        int last = n < CHUNK || sent >= total;
        if (last) {
            unsigned char dg[32];
            unsigned dl;
            EVP_DigestFinal_ex(md, dg, &dl);
            for (int i = 0; i < 32; i++)
                snprintf(hex + 2 * i, 3, "%02x", dg[i]);
            ch.sha256 = hex;
        }
        size_t len = sherl__v1__artifact_chunk__get_packed_size(&ch);
        uint8_t *out = malloc(len ? len : 1);
        if (!out)
            break;
        sherl__v1__artifact_chunk__pack(&ch, out);
        gone = rpc_send(c, out, len);
        free(out);
        first = 0;
        if (last)
            break;
    }
    EVP_MD_CTX_free(md);
    free(buf);
    fclose(f);
    if (!gone)
        rpc_finish(c, buf ? RPC_OK : RPC_RESOURCE_EXHAUSTED, buf ? NULL : "out of memory", NULL, 0);
}

/* ------------------------------------------------------------------------------------------
 * backbones, node, health */

static void fill_backbone(Sherl__V1__Backbone *m, const backbone_entry *e)
{
    sherl__v1__backbone__init(m);
    m->name = (char *)e->name, m->path = (char *)e->path;
    m->bytes = e->bytes, m->jobs = e->refs, m->loaded = !e->loading;
    m->layers = e->layers, m->hidden = e->hidden;
    m->device = (char *)e->device;
    m->precision = (char *)sherl_precision_name(e->prec);
}

/* LoadBackbone's and UnloadBackbone's optional device and precision; empty: dflt (NULL: any).
 * any_gpu: the device names any GPU ("cuda", or "auto" on a node with one), be then the first.
 * Ends the call and returns 1 on a bad value. */
static int backbone_key(rpc_call *c, const char *device, const char *precision,
                        const char *dflt_device, const sherl_backend **be, int *any_gpu,
                        int *prec)
{
    *be = NULL, *prec = -1, *any_gpu = 0;
    if ((device && *device) || dflt_device) {
        const char *name = device && *device ? device : dflt_device;
        job_result r = jobs_backend_named("device", name, be);
        if (failed(c, r))
            return 1;
        *any_gpu = jobs_any_gpu(name, *be);
    }
    if (precision && *precision) {
        sherl_precision p;
        if (sherl_precision_parse(precision, &p)) {
            char msg[160];
            snprintf(msg, sizeof msg, "precision: '%.40s', expected \"fp32\", \"bf16\" or \"fp16\"",
                     precision);
            rpc_finish(c, RPC_INVALID_ARGUMENT, msg, NULL, 0);
            return 1;
        }
        *prec = (int)p;
    } else if (dflt_device) {
        *prec = SHERL_FP32;
    }
    return 0;
}

static void h_load_backbone(rpc_call *c, void *ctx)
{
    sherld *d = ctx;
    if (!tenant_of(d, c))
        return;
    DECODE(Sherl__V1__LoadBackboneRequest, sherl__v1__load_backbone_request__unpack, req);
    const sherl_backend *be;
    int prec, any_gpu;
    if (backbone_key(c, req->device, req->precision, "cpu", &be, &any_gpu, &prec)) {
        sherl__v1__load_backbone_request__free_unpacked(req, NULL);
        return;
    }
    char path[PATH_MAX];
    sherl_status st = confine_path("path", req->path, NULL, (const char(*)[1024])d->cfg.data_roots,
                                   d->cfg.n_data_roots, path);
    sherl__v1__load_backbone_request__free_unpacked(req, NULL);
    int code = RPC_INVALID_ARGUMENT;
    char msg[600] = "";
    if (!st.code && any_gpu) { /* the GPU already holding it, else the one with most room */
        hf_config cfg;
        st = backbones_config(path, &cfg);
        if (!st.code) {
            const sherl_backend *gpu = jobs_gpu_for_backbone(
                d, path, (sherl_precision)prec, backbones_planned_bytes(&cfg, prec));
            be = gpu ? gpu : be;
        }
    }
    int pool = st.code ? 0 : jobs_pool(d, be);
    if (!st.code && pool < 0)
        snprintf(msg, sizeof msg, "device: no room for another memory pool");
    /* a backbone not resident yet must fit its device's free budget (jobs' plans are admitted
     * against what stays) */
    if (!st.code && !msg[0] && !backbones_is_loaded(&d->backbones, path, be, (sherl_precision)prec)) {
        hf_config cfg;
        st = backbones_config(path, &cfg);
        if (!st.code) {
            int64_t need = backbones_planned_bytes(&cfg, (sherl_precision)prec);
            pool_status *ps;
            int np = jobs_pools(d, &ps);
            if (pool < np && need > ps[pool].pool.budget - ps[pool].planned) {
                code = RPC_RESOURCE_EXHAUSTED;
                snprintf(msg, sizeof msg, "path: the backbone needs %lld MiB of %s memory, %lld "
                                          "MiB of its budget of %lld MiB are free",
                         (long long)(need >> 20), ps[pool].pool.name,
                         (long long)((ps[pool].pool.budget - ps[pool].planned) >> 20),
                         (long long)(ps[pool].pool.budget >> 20));
            }
            jobs_pools_free(ps, np);
        }
    }
    bert_model *m = NULL;
    if (!st.code && !msg[0])
        st = backbones_acquire(&d->backbones, path, be, (sherl_precision)prec, 1, &m, NULL);
    if (st.code || msg[0]) {
        if (st.code)
            code = st.code == SHERL_ENOMEM || st.code == SHERL_EDEVICE ? RPC_RESOURCE_EXHAUSTED
                                                                        : RPC_INVALID_ARGUMENT;
        rpc_finish(c, code, msg[0] ? msg : st.msg, NULL, 0);
        return;
    }
    backbone_entry *list;
    int n = backbones_list(&d->backbones, &list);
    int sent = 0;
    for (int i = 0; i < n && !sent; i++)
        if (!strcmp(list[i].path, path) && list[i].be == be && (int)list[i].prec == prec) {
            Sherl__V1__Backbone b;
            fill_backbone(&b, &list[i]);
            reply(c, &b.base);
            sent = 1;
        }
    free(list);
    if (!sent) /* unloaded again between the two calls */
        rpc_finish(c, RPC_ABORTED, "path: the backbone was unloaded while loading; try again",
                   NULL, 0);
}

static void h_list_backbones(rpc_call *c, void *ctx)
{
    sherld *d = ctx;
    if (!tenant_of(d, c))
        return;
    backbone_entry *list;
    int n = backbones_list(&d->backbones, &list);
    Sherl__V1__Backbone *bs = calloc((size_t)(n ? n : 1), sizeof *bs);
    Sherl__V1__Backbone **ps = calloc((size_t)(n ? n : 1), sizeof *ps);
    Sherl__V1__ListBackbonesResponse resp = SHERL__V1__LIST_BACKBONES_RESPONSE__INIT;
    if (bs && ps) {
        for (int i = 0; i < n; i++)
            fill_backbone(&bs[i], &list[i]), ps[i] = &bs[i];
        resp.n_backbones = (size_t)n, resp.backbones = ps;
        reply(c, &resp.base);
    } else {
        rpc_finish(c, RPC_RESOURCE_EXHAUSTED, "out of memory", NULL, 0);
    }
    free(bs), free(ps), free(list);
}

static void h_unload_backbone(rpc_call *c, void *ctx)
{
    sherld *d = ctx;
    if (!tenant_of(d, c))
        return;
    DECODE(Sherl__V1__UnloadBackboneRequest, sherl__v1__unload_backbone_request__unpack, req);
    const sherl_backend *be;
    int prec, any_gpu;
    if (backbone_key(c, req->device, req->precision, NULL, &be, &any_gpu, &prec)) {
        sherl__v1__unload_backbone_request__free_unpacked(req, NULL);
        return;
    }
    if (any_gpu) /* "cuda": on whichever GPU it is */
        be = NULL;
    char name[PATH_MAX];
    int too_long = strlen(req->name) >= sizeof name;
    snprintf(name, sizeof name, "%s", req->name);
    sherl__v1__unload_backbone_request__free_unpacked(req, NULL);
    if (!name[0] || too_long) {
        rpc_finish(c, RPC_INVALID_ARGUMENT,
                   too_long ? "name: too long" : "name: empty; give a loaded backbone's name or path",
                   NULL, 0);
        return;
    }
    backbone_entry e;
    char others[300];
    int r = backbones_unload(&d->backbones, name, be, any_gpu, prec, &e, others, sizeof others);
    if (r == -1) {
        rpc_finish(c, RPC_NOT_FOUND,
                   be || any_gpu || prec >= 0 ? "name: no loaded backbone by that name on that "
                                                "device and precision"
                                   : "name: no loaded backbone by that name",
                   NULL, 0);
        return;
    }
    if (r == -3) {
        char msg[400];
        snprintf(msg, sizeof msg, "name: several loaded backbones match (%s); give device and "
                                  "precision",
                 others);
        rpc_finish(c, RPC_INVALID_ARGUMENT, msg, NULL, 0);
        return;
    }
    if (r == -2) {
        rpc_finish(c, RPC_FAILED_PRECONDITION, "name: jobs are using this backbone", NULL, 0);
        return;
    }
    if (r == -4) {
        rpc_finish(c, RPC_FAILED_PRECONDITION,
                   "name: this backbone is still loading; unload it once it is loaded", NULL, 0);
        return;
    }
    Sherl__V1__Backbone b = SHERL__V1__BACKBONE__INIT;
    b.name = e.name, b.path = e.path, b.loaded = 0;
    b.device = e.device;
    b.precision = (char *)sherl_precision_name(e.prec);
    b.bytes = e.bytes, b.layers = e.layers, b.hidden = e.hidden;
    reply(c, &b.base);
}

/* A pool's uses [from, from + n) as MemoryUse messages (pointing into the pool_status). */
static Sherl__V1__MemoryUse **uses_message(pool_use *u, int n, Sherl__V1__MemoryUse *store)
{
    Sherl__V1__MemoryUse **ps = calloc((size_t)(n ? n : 1), sizeof *ps);
    for (int i = 0; ps && i < n; i++) {
        sherl__v1__memory_use__init(&store[i]);
        store[i].id = u[i].id, store[i].name = u[i].name, store[i].precision = u[i].precision;
        store[i].bytes = u[i].bytes;
        ps[i] = &store[i];
    }
    return ps;
}

static void h_node(rpc_call *c, void *ctx)
{
    sherld *d = ctx;
    if (!tenant_of(d, c))
        return;
    Sherl__V1__NodeStatus ns = SHERL__V1__NODE_STATUS__INIT;
    char device[256];
    sherl_backend_cpu()->describe(device, sizeof device);
    ns.version = (char *)SHERLD_VERSION;
    ns.device = device;
    memstat m;
    if (memstat_read(&m) == 0)
        ns.rss_bytes = (int64_t)m.rss;
    int q, r;
    jobs_counts(d, &q, &r);
    ns.queued = q, ns.running = r;
    ns.max_concurrent_jobs = d->cfg.max_concurrent_jobs;
    pthread_mutex_lock(&d->mu);
    ns.draining = d->draining;
    pthread_mutex_unlock(&d->mu);
    ns.uptime_s = (sherld_now_ms() - d->started_ms) / 1000;
    backbone_entry *list;
    int n = backbones_list(&d->backbones, &list);
    Sherl__V1__Backbone *bs = calloc((size_t)(n ? n : 1), sizeof *bs);
    Sherl__V1__Backbone **ps = calloc((size_t)(n ? n : 1), sizeof *ps);
    pool_status *pools;
    int np = jobs_pools(d, &pools);
    Sherl__V1__DeviceStatus *ds = calloc((size_t)(np ? np : 1), sizeof *ds);
    Sherl__V1__DeviceStatus **dps = calloc((size_t)(np ? np : 1), sizeof *dps);
    Sherl__V1__MemoryUse **stores = calloc((size_t)(np ? np : 1), sizeof *stores);
    int ok = bs && ps && ds && dps && stores && np > 0;
    for (int i = 0; ok && i < np; i++) {
        pool_status *p = &pools[i];
        int nu = p->n_backbones + p->n_jobs;
        stores[i] = calloc((size_t)(nu ? nu : 1), sizeof *stores[i]);
        Sherl__V1__DeviceStatus *x = &ds[i];
        sherl__v1__device_status__init(x);
        x->name = p->pool.name;
        x->backend = (char *)p->pool.be->name;
        x->description = p->description;
        x->total_bytes = p->total, x->free_bytes = p->free;
        x->budget_bytes = p->pool.budget, x->planned_bytes = p->planned;
        if (!stores[i]) {
            ok = 0;
            break;
        }
        x->backbones = uses_message(p->uses, p->n_backbones, stores[i]);
        x->jobs = uses_message(p->uses + p->n_backbones, p->n_jobs, stores[i] + p->n_backbones);
        ok = x->backbones && x->jobs;
        x->n_backbones = (size_t)p->n_backbones, x->n_jobs = (size_t)p->n_jobs;
        dps[i] = x;
        if (i == 0)
            ns.memory_budget_bytes = p->pool.budget, ns.memory_used_bytes = p->planned;
    }
    if (ok) {
        for (int i = 0; i < n; i++)
            fill_backbone(&bs[i], &list[i]), ps[i] = &bs[i];
        ns.n_backbones = (size_t)n, ns.backbones = ps;
        ns.n_devices = (size_t)np, ns.devices = dps;
        reply(c, &ns.base);
    } else {
        rpc_finish(c, RPC_RESOURCE_EXHAUSTED, "out of memory", NULL, 0);
    }
    for (int i = 0; ds && i < np; i++)
        free(ds[i].backbones), free(ds[i].jobs);
    for (int i = 0; stores && i < np; i++)
        free(stores[i]);
    free(stores), free(ds), free(dps);
    jobs_pools_free(pools, np);
    free(bs), free(ps), free(list);
}

static int serving(sherld *d, const char *service)
{
    if (service && *service && strcmp(service, "sherl.v1.Sherl"))
        return GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
    pthread_mutex_lock(&d->mu);
    int draining = d->draining;
    pthread_mutex_unlock(&d->mu);
    return draining ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
                    : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
}

static void h_health_check(rpc_call *c, void *ctx)
{
    sherld *d = ctx;
    DECODE(Grpc__Health__V1__HealthCheckRequest, grpc__health__v1__health_check_request__unpack,
           req);
    int s = serving(d, req->service);
    grpc__health__v1__health_check_request__free_unpacked(req, NULL);
    if (s == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN) {
        rpc_finish(c, RPC_NOT_FOUND, "service: unknown (serving '' and 'sherl.v1.Sherl')", NULL, 0);
        return;
    }
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)s;
    reply(c, &resp.base);
}

static void h_health_watch(rpc_call *c, void *ctx)
{
    sherld *d = ctx;
    DECODE(Grpc__Health__V1__HealthCheckRequest, grpc__health__v1__health_check_request__unpack,
           req);
    char service[128];
    snprintf(service, sizeof service, "%s", req->service ? req->service : "");
    grpc__health__v1__health_check_request__free_unpacked(req, NULL);
    int last = -1;
    for (;;) {
        int s = serving(d, service);
        if (s != last) {
            Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
            resp.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)s;
            uint8_t buf[16];
            size_t len = grpc__health__v1__health_check_response__pack(&resp, buf);
            if (rpc_send(c, buf, len))
                return;
            last = s;
        }
        if (wait_for_change(d, c, NULL, 1000, "the daemon is stopping"))
            return;
    }
}

static void h_predict(rpc_call *c, void *ctx)
{
    sherld *d = ctx;
    const char *tenant = tenant_of(d, c);
    if (!tenant)
        return;
    DECODE(Sherl__V1__PredictRequest, sherl__v1__predict_request__unpack, req);
    job_record r;
    job_result jr = jobs_get(d, tenant, req->job_id, &r);
    if (jr.code != RPC_OK) {
        sherl__v1__predict_request__free_unpacked(req, NULL);
        rpc_finish(c, jr.code, jr.msg, NULL, 0);
        return;
    }
    predict_result pr;
    int code = predict_run(d, &r, (const char *const *)req->texts, req->n_texts,
                           (const char *const *)req->texts_b, req->n_texts_b, &pr);
    job_record_free(&r);
    sherl__v1__predict_request__free_unpacked(req, NULL);
    if (code != RPC_OK) {
        rpc_finish(c, code, pr.error, NULL, 0);
        return;
    }
    Sherl__V1__PredictResponse resp = SHERL__V1__PREDICT_RESPONSE__INIT;
    Sherl__V1__Prediction *ps = calloc(pr.n ? pr.n : 1, sizeof *ps);
    Sherl__V1__Prediction **pp = calloc(pr.n ? pr.n : 1, sizeof *pp);
    if (ps && pp) {
        for (size_t i = 0; i < pr.n; i++) {
            sherl__v1__prediction__init(&ps[i]);
            ps[i].label = pr.best[i] >= 0 && pr.labels ? pr.labels[pr.best[i]] : (char *)"";
            ps[i].n_scores = pr.n_out;
            ps[i].scores = pr.scores + i * pr.n_out;
            pp[i] = &ps[i];
        }
        resp.n_predictions = pr.n, resp.predictions = pp;
        resp.n_labels = pr.labels ? pr.n_out : 0, resp.labels = pr.labels;
        reply(c, &resp.base);
    } else {
        rpc_finish(c, RPC_RESOURCE_EXHAUSTED, "out of memory", NULL, 0);
    }
    free(ps), free(pp);
    predict_result_free(&pr);
}

static const rpc_method METHODS[] = {
    {"/sherl.v1.Sherl/SubmitJob", RPC_UNARY, h_submit},
    {"/sherl.v1.Sherl/EstimateJob", RPC_UNARY, h_estimate},
    {"/sherl.v1.Sherl/GetJob", RPC_UNARY, h_get},
    {"/sherl.v1.Sherl/ListJobs", RPC_UNARY, h_list},
    {"/sherl.v1.Sherl/CancelJob", RPC_UNARY, h_cancel},
    {"/sherl.v1.Sherl/WatchJob", RPC_SERVER_STREAM, h_watch},
    {"/sherl.v1.Sherl/UploadFile", RPC_CLIENT_STREAM, h_upload},
    {"/sherl.v1.Sherl/DownloadArtifact", RPC_SERVER_STREAM, h_download},
    {"/sherl.v1.Sherl/LoadBackbone", RPC_UNARY, h_load_backbone},
    {"/sherl.v1.Sherl/ListBackbones", RPC_UNARY, h_list_backbones},
    {"/sherl.v1.Sherl/UnloadBackbone", RPC_UNARY, h_unload_backbone},
    {"/sherl.v1.Sherl/Predict", RPC_UNARY, h_predict},
    {"/sherl.v1.Sherl/GetNodeStatus", RPC_UNARY, h_node},
    {"/grpc.health.v1.Health/Check", RPC_UNARY, h_health_check},
    {"/grpc.health.v1.Health/Watch", RPC_SERVER_STREAM, h_health_watch},
};

const rpc_method *service_methods(int *n)
{
    *n = (int)(sizeof METHODS / sizeof METHODS[0]);
    return METHODS;
}
