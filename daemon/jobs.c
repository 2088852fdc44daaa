/* Jobs: validation and admission, the scheduler, the job threads, recovery after a restart and
 * the drain on SIGTERM. Every state change goes to the store (committed) before anyone hears
 * of it. */
#include <cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "confine.h"
#include "events.h"
#include "fsutil.h"
#include "json_util.h"
#include "memstat.h"
#include "rpc.h"
#include "sherld.h"

struct queued_job {
    queued_job *next;
    char id[JOB_ID_LEN + 1];
    char name[128];
    int priority;
    int64_t order;            /* FIFO within a priority */
    job_need need;            /* the plan by pool */
    int64_t planned_bytes;    /* the plan's peak */
    const sherl_backend *be;  /* NULL: not usable (need.pool -1): fails with the reason */
    int any_gpu;              /* placed on any GPU when it starts (be, need: the first GPU's) */
    sherl_precision prec;
    char backbone[PATH_MAX];
};

struct running_job {
    running_job *next;
    sherld *d;
    char id[JOB_ID_LEN + 1];
    char name[128];
    volatile int cancel;      /* the trainer stops at its next step, with a checkpoint */
    int user_cancel;          /* CancelJob asked (else the drain did) */
    int finalizing;           /* its thread is recording its last state: too late to cancel */
    job_need need;
    int64_t reserved_backbone; /* on need.pool while the job loads its backbone */
    int64_t planned_bytes;
    const sherl_backend *be;
    sherl_precision prec;
    size_t rss_at_start;
    char backbone[PATH_MAX];
};

static int64_t g_order;

static void wake_scheduler(sherld *d);

int64_t sherld_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static job_result ok_result(void)
{
    job_result r = {RPC_OK, ""};
    return r;
}

static job_result fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static job_result fail(int code, const char *fmt, ...)
{
    job_result r;
    r.code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r.msg, sizeof r.msg, fmt, ap);
    va_end(ap);
    return r;
}

static void new_job_id(char *id)
{
    uint8_t b[8];
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) { /* fall back: time and a counter */
        uint64_t t = (uint64_t)sherld_now_ms() * 2654435761u + (uint64_t)++g_order;
        memcpy(b, &t, sizeof b);
    }
    snprintf(id, JOB_ID_LEN + 1, "j-%02x%02x%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2], b[3],
             b[4], b[5], b[6], b[7]);
}

sherl_status jobs_event(sherld *d, const char *id, int kind, const uint8_t *payload, size_t len,
                        job_state new_state, const char *error)
{
    int64_t seq;
    sherl_status st = job_store_append(d->store, id, sherld_now_ms(), kind, payload, len,
                                       new_state, error, &seq);
    pthread_mutex_lock(&d->mu);
    d->events++;
    pthread_cond_broadcast(&d->changed);
    pthread_mutex_unlock(&d->mu);
    return st;
}

static sherl_status state_event(sherld *d, const char *id, job_state s, const char *error)
{
    size_t len;
    uint8_t *p = events_state(s, &len);
    if (!p)
        return sherl_errorf(SHERL_ENOMEM, "out of memory");
    sherl_status st = jobs_event(d, id, EV_STATE, p, len, s, error);
    free(p);
    return st;
}

static sherl_status message_event(sherld *d, const char *id, const char *text)
{
    size_t len;
    uint8_t *p = events_message(text, &len);
    if (!p)
        return sherl_errorf(SHERL_ENOMEM, "out of memory");
    sherl_status st = jobs_event(d, id, EV_MESSAGE, p, len, 0, NULL);
    free(p);
    return st;
}

/* ------------------------------------------------------------------------------------------
 * validation */

/* A data field: "sha256:<hex>" of a file this tenant uploaded, or a path inside a data root. */
static job_result resolve_data(sherld *d, const char *tenant, const char *field, char *path)
{
    if (!path[0])
        return ok_result();
    char resolved[PATH_MAX];
    if (!strncmp(path, "sha256:", 7)) {
        const char *hex = path + 7;
        int ok = strlen(hex) == 64;
        for (int i = 0; ok && i < 64; i++)
            ok = (hex[i] >= '0' && hex[i] <= '9') || (hex[i] >= 'a' && hex[i] <= 'f');
        if (!ok)
            return fail(RPC_INVALID_ARGUMENT, "%s: '%.80s' is not sha256:<64 lowercase hex>",
                        field, path);
        char name[256];
        if (!job_store_has_file(d->store, path, tenant, name, sizeof name, NULL))
            return fail(RPC_INVALID_ARGUMENT, "%s: no uploaded file %.80s", field, path);
        /* the upload's extension says its format (see the UploadFile handler) */
        const char *dot = strrchr(name, '.');
        snprintf(resolved, sizeof resolved, "%s/%s%s", d->files_dir, hex,
                 dot && strlen(dot) < 8 ? dot : "");
        if (access(resolved, R_OK))
            snprintf(resolved, sizeof resolved, "%s/%s", d->files_dir, hex);
    } else {
        sherl_status st = confine_path(field, path, NULL,
                                       (const char(*)[1024])d->cfg.data_roots,
                                       d->cfg.n_data_roots, resolved);
        if (st.code)
            return fail(RPC_INVALID_ARGUMENT, "%s", st.msg);
    }
    if (strlen(resolved) >= JOB_PATH_MAX)
        return fail(RPC_INVALID_ARGUMENT, "%s: path too long", field);
    memcpy(path, resolved, strlen(resolved) + 1);
    return ok_result();
}

job_result jobs_backend_named(const char *field, const char *device, const sherl_backend **be)
{
    *be = sherl_backend_by_name(device);
    if (*be)
        return ok_result();
    sherl_status st = backend_missing(field, device);
    return fail(st.code == SHERL_EUNSUPPORTED ? RPC_FAILED_PRECONDITION : RPC_INVALID_ARGUMENT,
                "%s", st.msg);
}

int jobs_any_gpu(const char *device, const sherl_backend *be)
{
    return be && !be->host_memory && (!strcmp(device, "cuda") || !strcmp(device, "auto"));
}

/* Parses the spec JSON, picks its backend, confines its paths and plans its memory on that
 * backend. A device this node cannot run ("cuda" without a usable GPU) is FAILED_PRECONDITION
 * with the runtime's reason: the spec is fine, this node is not. */
static job_result prepare(sherld *d, const char *tenant, const char *spec_json, job_spec *spec,
                          memory_plan *plan, const sherl_backend **be)
{
    *be = NULL;
    if (!spec_json || !*spec_json)
        return fail(RPC_INVALID_ARGUMENT, "spec: empty; give spec or spec_json");
    sherl_status st = job_spec_parse(spec, spec_json, strlen(spec_json), "spec", NULL);
    if (st.code)
        return fail(RPC_INVALID_ARGUMENT, "%s", st.msg);
    st = job_backend(spec, be);
    if (st.code)
        return fail(st.code == SHERL_EUNSUPPORTED ? RPC_FAILED_PRECONDITION : RPC_INVALID_ARGUMENT,
                    "%s", st.msg);
    job_result r = resolve_data(d, tenant, "data.train", spec->train);
    if (r.code == RPC_OK)
        r = resolve_data(d, tenant, "data.validation", spec->validation);
    if (r.code == RPC_OK)
        r = resolve_data(d, tenant, "data.test", spec->test);
    if (r.code != RPC_OK)
        return r;
    char bb[PATH_MAX];
    if (!strchr(spec->backbone, '/') && backbones_find_name(&d->backbones, spec->backbone, bb)) {
        /* the name of a loaded backbone */
    } else {
        st = confine_path("backbone", spec->backbone, NULL, (const char(*)[1024])d->cfg.data_roots,
                          d->cfg.n_data_roots, bb);
        if (st.code)
            return fail(RPC_INVALID_ARGUMENT, "%s", st.msg);
    }
    if (strlen(bb) >= JOB_PATH_MAX)
        return fail(RPC_INVALID_ARGUMENT, "backbone: path too long");
    memcpy(spec->backbone, bb, strlen(bb) + 1);
    if (!spec->threads)
        spec->threads = d->cfg.threads;
    st = plan_job(plan, spec, *be);
    if (st.code)
        return fail(st.code == SHERL_ENOMEM ? RPC_RESOURCE_EXHAUSTED : RPC_INVALID_ARGUMENT, "%s",
                    st.msg);
    return ok_result();
}

/* ------------------------------------------------------------------------------------------
 * memory pools and admission */

job_need job_need_of(int pool, int host_memory, int64_t peak, int64_t arena, int64_t backbone)
{
    job_need n = {pool, 0, 0, backbone};
    if (pool < 0)
        n.backbone = 0;
    else if (host_memory)
        n.dev_own = peak - backbone;
    else
        n.dev_own = arena - backbone, n.host_own = peak - arena;
    return n;
}

void job_need_bytes(const job_need *j, int backbone_resident, int64_t *bytes, int n)
{
    for (int p = 0; p < n; p++)
        bytes[p] = 0;
    if (j->pool < 0 || j->pool >= n)
        return;
    bytes[j->pool] += j->dev_own + (backbone_resident ? 0 : j->backbone);
    bytes[0] += j->host_own;
}

int pools_short(const int64_t *bytes, const int64_t *used, const int64_t *budget, int n)
{
    for (int p = 0; p < n; p++)
        if (bytes[p] > 0 && used[p] + bytes[p] > budget[p])
            return p;
    return -1;
}

int pools_pick(const job_need *j, const pool_choice *c, int nc, const int64_t *used,
               const int64_t *budget, int n)
{
    int best = -1;
    int64_t best_left = 0;
    for (int i = 0; i < nc; i++) {
        if (c[i].pool < 0 || c[i].pool >= n)
            continue;
        job_need here = *j;
        here.pool = c[i].pool;
        int64_t bytes[SHERLD_MAX_POOLS];
        job_need_bytes(&here, c[i].resident, bytes, n);
        if (pools_short(bytes, used, budget, n) >= 0)
            continue;
        int64_t left = budget[c[i].pool] - used[c[i].pool] - bytes[c[i].pool];
        if (best < 0 || c[i].jobs < c[best].jobs ||
            (c[i].jobs == c[best].jobs &&
             (c[i].resident > c[best].resident ||
              (c[i].resident == c[best].resident && left > best_left))))
            best = i, best_left = left;
    }
    return best;
}

static int find_pool_locked(const sherld *d, const sherl_backend *be)
{
    if (!be || be->host_memory)
        return 0;
    for (int p = 1; p < d->n_pools; p++)
        if (d->pools[p].be == be)
            return p;
    return -1;
}

int jobs_pool(sherld *d, const sherl_backend *be)
{
    pthread_mutex_lock(&d->mu);
    int p = find_pool_locked(d, be);
    pthread_mutex_unlock(&d->mu);
    if (p >= 0)
        return p;
    size_t fr = 0, tot = 0; /* outside the lock: a device may take a while to answer first */
    if (be->mem_info(&fr, &tot))
        tot = 0;
    pthread_mutex_lock(&d->mu);
    p = find_pool_locked(d, be);
    if (p < 0 && d->n_pools < SHERLD_MAX_POOLS) {
        mem_pool *m = &d->pools[p = d->n_pools++];
        memset(m, 0, sizeof *m);
        m->be = be;
        sherl_backend_label(be, m->name, sizeof m->name);
        m->total = (int64_t)tot;
        m->budget = m->total > d->cfg.gpu_memory_reserve ? m->total - d->cfg.gpu_memory_reserve
                                                         : 0;
    }
    pthread_mutex_unlock(&d->mu);
    return p;
}

static const sherl_backend *jobs_pool_backend(sherld *d, int pool)
{
    pthread_mutex_lock(&d->mu);
    const sherl_backend *be = pool >= 0 && pool < d->n_pools ? d->pools[pool].be : NULL;
    pthread_mutex_unlock(&d->mu);
    return be;
}

/* Every GPU pool as a choice for a job or backbone of (backbone, prec): its jobs and whether
 * the backbone is resident there. Under d->mu. */
static int gpu_choices_locked(sherld *d, const char *backbone, sherl_precision prec,
                              pool_choice *out)
{
    int n = 0;
    for (int p = 1; p < d->n_pools; p++) {
        if (d->pools[p].be->host_memory)
            continue;
        pool_choice *c = &out[n++];
        c->pool = p, c->jobs = 0;
        c->resident = backbones_is_loaded(&d->backbones, backbone, d->pools[p].be, prec);
        for (running_job *r = d->running; r; r = r->next)
            c->jobs += r->need.pool == p;
    }
    return n;
}

static void pools_used_locked(sherld *d, int64_t *used);
static void budgets_locked(const sherld *d, int64_t *budget);

/* For a job that may go to any GPU (q->any_gpu): the GPU it goes to now, with its need moved
 * there; 0 when none has room now (it stays where it was). Under d->mu. */
static int place_locked(sherld *d, job_need *need, const sherl_backend **be, const char *backbone,
                        sherl_precision prec)
{
    pool_choice c[SHERLD_MAX_POOLS];
    int64_t used[SHERLD_MAX_POOLS], budget[SHERLD_MAX_POOLS];
    int nc = gpu_choices_locked(d, backbone, prec, c);
    pools_used_locked(d, used);
    budgets_locked(d, budget);
    int i = pools_pick(need, c, nc, used, budget, d->n_pools);
    if (i < 0)
        return 0;
    need->pool = c[i].pool;
    *be = d->pools[c[i].pool].be;
    return 1;
}

const sherl_backend *jobs_gpu_for_backbone(sherld *d, const char *path, sherl_precision prec,
                                           int64_t bytes)
{
    pthread_mutex_lock(&d->mu);
    pool_choice c[SHERLD_MAX_POOLS];
    int64_t used[SHERLD_MAX_POOLS], budget[SHERLD_MAX_POOLS];
    int nc = gpu_choices_locked(d, path, prec, c), best = -1, best_fits = 0;
    pools_used_locked(d, used);
    budgets_locked(d, budget);
    for (int i = 0; i < nc && best < 0; i++)
        if (c[i].resident)
            best = i;
    for (int i = 0; i < nc && !(best >= 0 && c[best].resident); i++) {
        int64_t left = budget[c[i].pool] - used[c[i].pool];
        int fits = left >= bytes;
        if (best < 0 || fits > best_fits ||
            (fits == best_fits && left > budget[c[best].pool] - used[c[best].pool]))
            best = i, best_fits = fits;
    }
    const sherl_backend *be = best >= 0 ? d->pools[c[best].pool].be : NULL;
    pthread_mutex_unlock(&d->mu);
    return be;
}

/* Planned bytes in use in each pool: resident backbones and running jobs. Under d->mu (the
 * registry's lock is taken inside it, the documented order). */
static void pools_used_locked(sherld *d, int64_t *used)
{
    for (int p = 0; p < SHERLD_MAX_POOLS; p++)
        used[p] = 0;
    backbone_entry *list;
    int n = backbones_list(&d->backbones, &list);
    for (int i = 0; i < n; i++) {
        int p = find_pool_locked(d, list[i].be);
        if (p >= 0)
            used[p] += list[i].bytes;
    }
    free(list);
    for (running_job *r = d->running; r; r = r->next) {
        if (r->need.pool < 0)
            continue;
        used[r->need.pool] += r->need.dev_own + r->reserved_backbone;
        used[0] += r->need.host_own;
    }
    for (call_use *u = d->calls; u; u = u->next) {
        used[u->pool] += u->own + u->backbone;
        used[0] += u->host;
    }
}

static int64_t mib(int64_t b);

job_result jobs_call_reserve(sherld *d, call_use *u, const char *what)
{
    if (u->pool < 0 || u->pool >= SHERLD_MAX_POOLS)
        return fail(RPC_INTERNAL, "%s: no memory pool for its device", what);
    int64_t used[SHERLD_MAX_POOLS], budget[SHERLD_MAX_POOLS], need[SHERLD_MAX_POOLS] = {0};
    need[u->pool] += u->own + u->backbone;
    need[0] += u->host;
    pthread_mutex_lock(&d->mu);
    pools_used_locked(d, used);
    budgets_locked(d, budget);
    int short_at = pools_short(need, used, budget, d->n_pools);
    char pool_name[32];
    if (short_at >= 0) {
        snprintf(pool_name, sizeof pool_name, "%s", d->pools[short_at].name);
    } else {
        u->next = d->calls;
        d->calls = u;
    }
    pthread_mutex_unlock(&d->mu);
    if (short_at >= 0)
        return fail(RPC_RESOURCE_EXHAUSTED,
                    "%s needs %lld MiB of %s memory now, %lld MiB of its budget of %lld MiB are "
                    "free (jobs and backbones hold the rest); try again when a job finishes, or "
                    "with fewer or shorter texts",
                    what, (long long)mib(need[short_at]), pool_name,
                    (long long)(budget[short_at] > used[short_at]
                                    ? (budget[short_at] - used[short_at]) >> 20 : 0),
                    (long long)(budget[short_at] >> 20));
    return ok_result();
}

void jobs_call_release(sherld *d, call_use *u)
{
    pthread_mutex_lock(&d->mu);
    for (call_use **p = &d->calls; *p; p = &(*p)->next)
        if (*p == u) {
            *p = u->next;
            break;
        }
    pthread_mutex_unlock(&d->mu);
    wake_scheduler(d);
}

/* A reservation of a backbone's bytes ends (the registry counts them now): a job that was short
 * of them may start. */
static void end_backbone_reservation(sherld *d, int64_t *reserved)
{
    pthread_mutex_lock(&d->mu);
    int64_t was = *reserved;
    *reserved = 0;
    pthread_mutex_unlock(&d->mu);
    if (was)
        wake_scheduler(d);
}

void jobs_call_backbone_counted(sherld *d, call_use *u)
{
    end_backbone_reservation(d, &u->backbone);
}

static void budgets_locked(const sherld *d, int64_t *budget)
{
    for (int p = 0; p < SHERLD_MAX_POOLS; p++)
        budget[p] = p < d->n_pools ? d->pools[p].budget : 0;
}

int64_t jobs_used_bytes(sherld *d)
{
    int64_t used[SHERLD_MAX_POOLS];
    pthread_mutex_lock(&d->mu);
    pools_used_locked(d, used);
    pthread_mutex_unlock(&d->mu);
    return used[0];
}

void jobs_counts(sherld *d, int *queued, int *running)
{
    pthread_mutex_lock(&d->mu);
    int q = 0;
    for (queued_job *j = d->queue; j; j = j->next)
        q++;
    *queued = q, *running = d->n_running;
    pthread_mutex_unlock(&d->mu);
}

static int64_t mib(int64_t b) { return (b + (1 << 20) - 1) >> 20; }

/* Why a job can never fit pool p (where bytes[p] exceeds the budget), with the numbers. */
static void never_fits(sherld *d, int p, const job_need *j, const int64_t *bytes,
                       const memory_plan *plan, char *out, size_t cap)
{
    pthread_mutex_lock(&d->mu);
    mem_pool pool = d->pools[p], dev = d->pools[j->pool >= 0 ? j->pool : 0];
    pthread_mutex_unlock(&d->mu);
    if (p == 0 && j->pool == 0)
        snprintf(out, cap, "the job needs %lld MiB at peak (planned: %s, batch %d x %d), the "
                           "memory budget is %lld MiB",
                 (long long)mib(bytes[0]), plan->method, plan->B, plan->T,
                 (long long)mib(pool.budget));
    else if (p == 0)
        snprintf(out, cap, "the job needs %lld MiB of host memory (planned: %s, batch %d x %d; "
                           "its %lld MiB of arenas go to %s), the memory budget is %lld MiB",
                 (long long)mib(bytes[0]), plan->method, plan->B, plan->T,
                 (long long)mib(bytes[j->pool]), dev.name, (long long)mib(pool.budget));
    else
        snprintf(out, cap, "the job needs %lld MiB of %s memory at peak (arenas: the backbone "
                           "%lld MiB + the job's own %lld MiB; planned: %s, batch %d x %d), the "
                           "device's budget is %lld MiB (%lld MiB total minus gpu-memory-reserve "
                           "%lld MiB)",
                 (long long)mib(bytes[p]), pool.name, (long long)mib(j->backbone),
                 (long long)mib(j->dev_own), plan->method, plan->B, plan->T,
                 (long long)mib(pool.budget), (long long)mib(pool.total),
                 (long long)mib(d->cfg.gpu_memory_reserve));
}

/* The job's split by pool from its plan on backend be; RPC_OK, or RESOURCE_EXHAUSTED with the
 * numbers when it can never fit (its whole plan, backbone included, against the budgets). A job
 * for any GPU (any_gpu) fits when it fits one of them alone: its split is then that GPU's (the
 * first such); else the message is about the GPU with the largest budget. */
static job_result admit_ever(sherld *d, const sherl_backend *be, int any_gpu,
                             const memory_plan *plan, job_need *j)
{
    *j = job_need_of(-1, 0, 0, 0, 0);
    int pool = jobs_pool(d, be);
    if (pool < 0)
        return fail(RPC_RESOURCE_EXHAUSTED, "resources.device: no room for another memory pool "
                                            "(backend %s)", be->name);
    *j = job_need_of(pool, be->host_memory, (int64_t)plan->peak_bytes,
                     (int64_t)plan->arena_bytes, (int64_t)plan->backbone_bytes);
    int64_t bytes[SHERLD_MAX_POOLS], zero[SHERLD_MAX_POOLS] = {0}, budget[SHERLD_MAX_POOLS];
    int cand[SHERLD_MAX_POOLS], nc = 0;
    pthread_mutex_lock(&d->mu);
    budgets_locked(d, budget);
    int n = d->n_pools;
    for (int p = 1; any_gpu && p < n; p++)
        if (!d->pools[p].be->host_memory)
            cand[nc++] = p;
    pthread_mutex_unlock(&d->mu);
    if (!nc)
        cand[nc++] = pool;
    job_need worst = *j;
    int worst_p = -1;
    for (int i = 0; i < nc; i++) {
        job_need here = *j;
        here.pool = cand[i];
        job_need_bytes(&here, 0, bytes, n);
        int p = pools_short(bytes, zero, budget, n);
        if (p < 0) {
            *j = here;
            return ok_result();
        }
        if (worst_p < 0 || budget[cand[i]] > budget[worst.pool])
            worst = here, worst_p = p;
    }
    job_need_bytes(&worst, 0, bytes, n);
    job_result r = {RPC_RESOURCE_EXHAUSTED, ""};
    never_fits(d, worst_p, &worst, bytes, plan, r.msg, sizeof r.msg);
    return r;
}

job_result jobs_estimate(sherld *d, const char *tenant, const char *spec_json, memory_plan *plan,
                         job_estimate *e)
{
    memset(e, 0, sizeof *e);
    job_spec spec;
    const sherl_backend *be;
    job_result r = prepare(d, tenant, spec_json, &spec, plan, &be);
    if (r.code != RPC_OK)
        return r;
    job_need j;
    int any_gpu = jobs_any_gpu(spec.device, be);
    job_result ever = admit_ever(d, be, any_gpu, plan, &j);
    if (ever.code != RPC_OK && ever.code != RPC_RESOURCE_EXHAUSTED)
        return ever;
    if (j.pool < 0) /* no pool at all: the message says why */
        return ever;
    if (any_gpu) /* the GPU admit_ever settled on, as at submit */
        be = jobs_pool_backend(d, j.pool);
    e->fits_ever = ever.code == RPC_OK;
    e->backend = be->name;
    e->precision = sherl_precision_name(spec.model.precision);
    e->device_bytes = (int64_t)plan->arena_bytes;
    e->host_bytes = (int64_t)(plan->peak_bytes - plan->arena_bytes);
    int64_t used[SHERLD_MAX_POOLS], budget[SHERLD_MAX_POOLS], bytes[SHERLD_MAX_POOLS];
    pthread_mutex_lock(&d->mu);
    /* a job for any GPU: the one it would go to now, when one has room */
    if (any_gpu && e->fits_ever)
        place_locked(d, &j, &be, spec.backbone, spec.model.precision);
    pthread_mutex_unlock(&d->mu);
    e->backbone_resident =
        backbones_is_loaded(&d->backbones, spec.backbone, be, spec.model.precision);
    pthread_mutex_lock(&d->mu);
    pools_used_locked(d, used);
    budgets_locked(d, budget);
    int n = d->n_pools;
    snprintf(e->device, sizeof e->device, "%s", d->pools[j.pool].name);
    char short_name[32];
    pthread_mutex_unlock(&d->mu);
    job_need_bytes(&j, e->backbone_resident, bytes, n);
    int sp = pools_short(bytes, used, budget, n);
    e->free_bytes = budget[0] - used[0];
    e->device_budget = budget[j.pool];
    e->device_free = budget[j.pool] - used[j.pool];
    int queued, running;
    jobs_counts(d, &queued, &running);
    e->fits_now = e->fits_ever && sp < 0 && running < d->cfg.max_concurrent_jobs && queued == 0;
    if (!e->fits_ever) {
        snprintf(e->reason, sizeof e->reason, "%s", ever.msg);
    } else if (!e->fits_now) {
        int p = sp >= 0 ? sp : j.pool;
        pthread_mutex_lock(&d->mu);
        snprintf(short_name, sizeof short_name, "%s", d->pools[p].name);
        pthread_mutex_unlock(&d->mu);
        snprintf(e->reason, sizeof e->reason, "would wait: %d running of %d, %d queued, %lld MiB "
                                              "free of %lld MiB needed (%s)",
                 running, d->cfg.max_concurrent_jobs, queued, (long long)mib(budget[p] - used[p]),
                 (long long)mib(bytes[p]), short_name);
    }
    return ok_result();
}

static void add_use(pool_status *ps, const char *id, const char *name, const char *prec,
                    int64_t bytes)
{
    pool_use *u = &ps->uses[ps->n_backbones + ps->n_jobs];
    snprintf(u->id, sizeof u->id, "%s", id);
    snprintf(u->name, sizeof u->name, "%s", name);
    snprintf(u->precision, sizeof u->precision, "%s", prec);
    u->bytes = bytes;
    ps->planned += bytes;
}

/* A job's (or a call's) use of its pool, and on a device its host side too. */
static void add_job_use(pool_status *ps, int pool, const char *id, const char *name, int64_t own,
                        int64_t host)
{
    add_use(&ps[pool], id, name, "", own);
    ps[pool].n_jobs++;
    if (pool != 0) {
        add_use(&ps[0], id, name, "", host);
        ps[0].n_jobs++;
    }
}

int jobs_pools(sherld *d, pool_status **out)
{
    *out = NULL;
    pthread_mutex_lock(&d->mu);
    int np = d->n_pools, nr = 0;
    for (running_job *r = d->running; r; r = r->next)
        nr++;
    for (call_use *u = d->calls; u; u = u->next)
        nr++;
    backbone_entry *list;
    int nb = backbones_list(&d->backbones, &list);
    pool_status *ps = calloc((size_t)np, sizeof *ps);
    int ok = ps != NULL;
    for (int p = 0; ok && p < np; p++) {
        ps[p].pool = d->pools[p];
        ps[p].uses = calloc((size_t)(nb + nr + 1), sizeof *ps[p].uses);
        ok = ps[p].uses != NULL;
    }
    for (int i = 0; ok && i < nb; i++) {
        int p = find_pool_locked(d, list[i].be);
        if (p >= 0) {
            add_use(&ps[p], list[i].path, list[i].name, sherl_precision_name(list[i].prec),
                    list[i].bytes);
            ps[p].n_backbones++;
        }
    }
    for (running_job *r = d->running; ok && r; r = r->next)
        if (r->need.pool >= 0)
            add_job_use(ps, r->need.pool, r->id, r->name, r->need.dev_own + r->reserved_backbone,
                        r->need.host_own);
    for (call_use *u = d->calls; ok && u; u = u->next) /* listed with the jobs */
        add_job_use(ps, u->pool, u->id, u->name, u->own + u->backbone, u->host);
    pthread_mutex_unlock(&d->mu);
    free(list);
    if (!ok) {
        jobs_pools_free(ps, np);
        return 0;
    }
    for (int p = 0; p < np; p++) { /* the backends answer outside the lock */
        const sherl_backend *be = ps[p].pool.be;
        be->describe(ps[p].description, sizeof ps[p].description);
        size_t fr = 0, tot = 0;
        if (!be->mem_info(&fr, &tot))
            ps[p].free = (int64_t)fr, ps[p].total = (int64_t)tot;
        else
            ps[p].total = ps[p].pool.total;
    }
    *out = ps;
    return np;
}

void jobs_pools_free(pool_status *p, int n)
{
    for (int i = 0; p && i < n; i++)
        free(p[i].uses);
    free(p);
}

static void enqueue_locked(sherld *d, queued_job *q)
{
    queued_job **p = &d->queue;
    while (*p && ((*p)->priority > q->priority ||
                  ((*p)->priority == q->priority && (*p)->order < q->order)))
        p = &(*p)->next;
    q->next = *p;
    *p = q;
}

job_result jobs_submit(sherld *d, const char *tenant, const char *spec_json, int priority,
                       char *id)
{
    job_spec spec;
    memory_plan plan;
    const sherl_backend *be;
    job_result r = prepare(d, tenant, spec_json, &spec, &plan, &be);
    if (r.code != RPC_OK)
        return r;
    job_need need;
    int any_gpu = jobs_any_gpu(spec.device, be);
    r = admit_ever(d, be, any_gpu, &plan, &need);
    if (r.code != RPC_OK)
        return r;
    if (any_gpu) /* the pool admit_ever found room in: its backend until the job is placed */
        be = jobs_pool_backend(d, need.pool);
    int queued, running;
    jobs_counts(d, &queued, &running);
    pthread_mutex_lock(&d->mu);
    int draining = d->draining;
    pthread_mutex_unlock(&d->mu);
    if (draining)
        return fail(RPC_UNAVAILABLE, "the daemon is stopping; submit again after it restarts");
    if (queued >= d->cfg.max_queued_jobs)
        return fail(RPC_RESOURCE_EXHAUSTED, "the queue is full (%d jobs; max-queued-jobs)", queued);
    new_job_id(id);
    snprintf(spec.output, sizeof spec.output, "%s/%s", d->jobs_dir, id);
    char *resolved = job_spec_to_json(&spec);
    cJSON *pj = memory_plan_to_json(&plan);
    char *plan_text = pj ? cJSON_PrintUnformatted(pj) : NULL;
    cJSON_Delete(pj);
    queued_job *q = calloc(1, sizeof *q);
    size_t len;
    uint8_t *ev = events_state(JOB_QUEUED, &len);
    if (!resolved || !plan_text || !q || !ev) {
        free(resolved), free(plan_text), free(q), free(ev);
        return fail(RPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    job_record rec;
    memset(&rec, 0, sizeof rec);
    snprintf(rec.id, sizeof rec.id, "%s", id);
    snprintf(rec.tenant, sizeof rec.tenant, "%s", tenant ? tenant : "");
    snprintf(rec.name, sizeof rec.name, "%s", spec.name);
    rec.state = JOB_QUEUED;
    rec.priority = priority;
    rec.created_ms = sherld_now_ms();
    rec.planned_bytes = (int64_t)plan.peak_bytes;
    rec.spec_json = resolved;
    rec.plan_json = plan_text;
    sherl_status st = job_store_insert(d->store, &rec, rec.created_ms, EV_STATE, ev, len);
    free(ev), free(resolved), free(plan_text);
    if (st.code) {
        free(q);
        return fail(RPC_INTERNAL, "%s", st.msg);
    }
    snprintf(q->id, sizeof q->id, "%s", id);
    snprintf(q->name, sizeof q->name, "%s", spec.name);
    q->priority = priority;
    q->need = need;
    q->planned_bytes = (int64_t)plan.peak_bytes;
    q->be = be;
    q->any_gpu = any_gpu;
    q->prec = spec.model.precision;
    snprintf(q->backbone, sizeof q->backbone, "%s", spec.backbone);
    pthread_mutex_lock(&d->mu);
    q->order = ++g_order;
    enqueue_locked(d, q);
    d->events++;
    pthread_cond_broadcast(&d->changed);
    pthread_mutex_unlock(&d->mu);
    wake_scheduler(d);
    return ok_result();
}

job_result jobs_get(sherld *d, const char *tenant, const char *id, job_record *out)
{
    sherl_status st = job_store_get(d->store, id, out);
    if (st.code == SHERL_EINVAL)
        return fail(RPC_NOT_FOUND, "job '%.40s' not found", id);
    if (st.code)
        return fail(RPC_INTERNAL, "%s", st.msg);
    if (tenant && strcmp(out->tenant, tenant)) { /* another tenant's job does not exist for you */
        job_record_free(out);
        return fail(RPC_NOT_FOUND, "job '%.40s' not found", id);
    }
    return ok_result();
}

job_result jobs_cancel(sherld *d, const char *tenant, const char *id)
{
    job_record rec;
    job_result r = jobs_get(d, tenant, id, &rec);
    if (r.code != RPC_OK)
        return r;
    job_state s = rec.state;
    job_record_free(&rec);
    if (job_state_is_final(s))
        return fail(RPC_FAILED_PRECONDITION, "job %s is already %s", id, job_state_name(s));
    pthread_mutex_lock(&d->mu);
    queued_job **p = &d->queue, *found = NULL;
    for (; *p; p = &(*p)->next)
        if (!strcmp((*p)->id, id)) {
            found = *p;
            *p = found->next;
            break;
        }
    running_job *rj = NULL;
    for (running_job *x = d->running; x && !found; x = x->next)
        if (!strcmp(x->id, id))
            rj = x;
    int ending = rj && rj->finalizing;
    if (rj && !ending)
        rj->cancel = 1, rj->user_cancel = 1;
    pthread_mutex_unlock(&d->mu);
    if (ending)
        return fail(RPC_FAILED_PRECONDITION, "job %s is ending: its final state is being recorded",
                    id);
    sherl_status st = sherl_ok();
    if (found) {
        free(found);
        st = state_event(d, id, JOB_CANCELLED, NULL);
    } else if (rj) {
        st = state_event(d, id, JOB_STOPPING, NULL);
        /* a job waiting for another's load of its backbone stops waiting, after STOPPING */
        backbones_wake(&d->backbones);
    }
    if (st.code && jobs_get(d, NULL, id, &rec).code == RPC_OK) { /* it ended meanwhile? */
        s = rec.state;
        job_record_free(&rec);
        if (s == JOB_CANCELLED && rj) /* this cancel's doing, recorded before its STOPPING */
            return ok_result();
        if (job_state_is_final(s))
            return fail(RPC_FAILED_PRECONDITION, "job %s is already %s", id, job_state_name(s));
    }
    if (st.code)
        return fail(RPC_INTERNAL, "%s", st.msg);
    return ok_result();
}

/* ------------------------------------------------------------------------------------------
 * job threads */

static void on_progress(void *ctx, const train_progress *p)
{
    running_job *rj = ctx;
    memstat m;
    int64_t mem = 0;
    if (memstat_read(&m) == 0 && m.rss > rj->rss_at_start)
        mem = (int64_t)(m.rss - rj->rss_at_start);
    int kind;
    size_t len;
    uint8_t *ev = events_progress(p, mem, rj->planned_bytes, &kind, &len);
    if (ev)
        jobs_event(rj->d, rj->id, kind, ev, len, 0, NULL);
    free(ev);
}

/* The artifact of a succeeded job, in the shape of a PEFT adapter: adapter_model.safetensors
 * (the trainable tensors) and adapter_config.json (how to rebuild the module around the
 * backbone). */
static sherl_status write_artifact(const job_spec *spec)
{
    char path[JOB_PATH_MAX + 64], dir[JOB_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/checkpoint/state.json", spec->output);
    cJSON *state;
    SHERL_TRY(json_load_object(path, 64u << 20, &state));
    int step = -1;
    sherl_status st = json_require_int(state, path, "step", 0, 1 << 30, &step);
    snprintf(dir, sizeof dir, "%s/artifact", spec->output);
    if (!st.code)
        st = fs_mkdir_p(dir);
    if (!st.code) {
        char src[JOB_PATH_MAX + 64], dst[JOB_PATH_MAX + 64];
        snprintf(src, sizeof src, "%s/checkpoint/params-%08d.safetensors", spec->output, step);
        snprintf(dst, sizeof dst, "%s/adapter_model.safetensors", dir);
        st = fs_copy_atomic(src, dst);
    }
    char *spec_text = st.code ? NULL : job_spec_to_json(spec);
    cJSON *cfg = cJSON_CreateObject();
    if (!st.code && (!spec_text || !cfg))
        st = sherl_errorf(SHERL_ENOMEM, "out of memory");
    if (!st.code) {
        cJSON_AddStringToObject(cfg, "format", "sherl-adapter");
        cJSON_AddNumberToObject(cfg, "format_version", 1);
        cJSON_AddStringToObject(cfg, "base_model_name_or_path", spec->backbone);
        cJSON_AddStringToObject(cfg, "method", train_method_name(spec->model.method));
        cJSON *labels = cJSON_DetachItemFromObject(state, "labels");
        if (labels)
            cJSON_AddItemToObject(cfg, "labels", labels);
        cJSON_AddNumberToObject(cfg, "step", step);
        cJSON *sp = cJSON_Parse(spec_text);
        if (sp)
            cJSON_AddItemToObject(cfg, "spec", sp);
        char *text = cJSON_Print(cfg);
        snprintf(path, sizeof path, "%s/adapter_config.json", dir);
        st = text ? fs_write_atomic(path, text) : sherl_errorf(SHERL_ENOMEM, "out of memory");
        free(text);
    }
    cJSON_Delete(cfg);
    cJSON_Delete(state);
    free(spec_text);
    return st;
}

static void finish_job(sherld *d, running_job *rj)
{
    pthread_mutex_lock(&d->mu);
    for (running_job **p = &d->running; *p; p = &(*p)->next)
        if (*p == rj) {
            *p = rj->next;
            break;
        }
    d->n_running--;
    pthread_cond_broadcast(&d->changed);
    pthread_mutex_unlock(&d->mu);
    free(rj);
    wake_scheduler(d);
}

/* backbones_acquire's counted for a job */
static void backbone_counted(void *arg)
{
    running_job *rj = arg;
    end_backbone_reservation(rj->d, &rj->reserved_backbone);
}

static void *job_thread(void *arg)
{
    running_job *rj = arg;
    sherld *d = rj->d;
    job_record rec;
    job_spec spec;
    sherl_status st = job_store_get(d->store, rj->id, &rec);
    if (st.code) {
        finish_job(d, rj);
        return NULL;
    }
    st = job_spec_parse(&spec, rec.spec_json, strlen(rec.spec_json), "stored spec", NULL);
    job_record_free(&rec);
    if (!st.code)
        st = state_event(d, rj->id, JOB_LOADING, NULL);
    const sherl_backend *be = rj->be;
    if (!st.code && !be) /* recovered on a node that cannot run it: the reason, as at submit */
        st = job_backend(&spec, &be);
    bert_model *bb = NULL;
    backbone_hooks wait = {backbone_counted, rj, &rj->cancel};
    if (!st.code)
        st = backbones_acquire(&d->backbones, spec.backbone, be, spec.model.precision, 0, &bb,
                               &wait);
    /* the flags and, when the job ends here, finalizing in one go: a cancel from now on is
     * refused rather than recorded after the job's last state */
    pthread_mutex_lock(&d->mu);
    int cancelled_early = rj->cancel && rj->user_cancel;
    int drained_early = rj->cancel && !rj->user_cancel;
    if (st.code || cancelled_early)
        rj->finalizing = 1;
    pthread_mutex_unlock(&d->mu);
    if (st.code == SHERL_ECANCELLED && drained_early) { /* stopped before it had its backbone */
        message_event(d, rj->id, "stopped by the daemon's shutdown before training began; it "
                                 "starts when the daemon restarts");
        state_event(d, rj->id, JOB_QUEUED, NULL);
        finish_job(d, rj);
        return NULL;
    }
    if (st.code == SHERL_ECANCELLED && cancelled_early) {
        state_event(d, rj->id, JOB_CANCELLED, NULL);
        finish_job(d, rj);
        return NULL;
    }
    if (st.code) {
        state_event(d, rj->id, JOB_FAILED, st.msg);
        finish_job(d, rj);
        return NULL;
    }
    if (cancelled_early) {
        backbones_release(&d->backbones, bb);
        state_event(d, rj->id, JOB_CANCELLED, NULL);
        finish_job(d, rj);
        return NULL;
    }
    char where[96], label[32];
    sherl_backend_label(be, label, sizeof label);
    snprintf(where, sizeof where, "running on %s, backbone weights in %s", label,
             sherl_precision_name(spec.model.precision));
    message_event(d, rj->id, where);
    state_event(d, rj->id, JOB_RUNNING, NULL);
    memstat m;
    memstat_read(&m);
    rj->rss_at_start = m.rss;
    train_hooks hooks = {.on_progress = on_progress, .ctx = rj, .cancel = &rj->cancel,
                         .resume = 1, .backbone = bb, .backend = be};
    train_result res;
    st = train_run(&spec, &hooks, &res);
    backbones_release(&d->backbones, bb);
    if (res.resumed_from_step >= 0) {
        char msg[96];
        snprintf(msg, sizeof msg, "resumed from the checkpoint at step %d", res.resumed_from_step);
        message_event(d, rj->id, msg);
    }
    pthread_mutex_lock(&d->mu);
    int user = rj->user_cancel;
    rj->finalizing = 1;
    pthread_mutex_unlock(&d->mu);
    /* a cancel that came after the last step finds a finished run: it stands (SUCCEEDED) */
    if (st.code) {
        state_event(d, rj->id, JOB_FAILED, st.msg);
    } else if (res.stopped_early && user) {
        state_event(d, rj->id, JOB_CANCELLED, NULL);
    } else if (res.stopped_early) {
        char msg[160];
        snprintf(msg, sizeof msg, "stopped by the daemon's shutdown after step %d; it resumes "
                                  "from its checkpoint when the daemon restarts",
                 res.steps);
        message_event(d, rj->id, msg);
        state_event(d, rj->id, JOB_QUEUED, NULL);
    } else {
        st = write_artifact(&spec);
        state_event(d, rj->id, st.code ? JOB_FAILED : JOB_SUCCEEDED, st.code ? st.msg : NULL);
    }
    finish_job(d, rj);
    return NULL;
}

/* ------------------------------------------------------------------------------------------
 * scheduler */

/* Starts every queued job that may start now: a free slot, the head of the queue (FIFO within a
 * priority; a big job is not starved by smaller ones behind it) and its planned memory within
 * the budget. Runs on the libuv loop thread, woken by uv_async_send from submit, cancel and
 * finishing jobs, and by a timer. */
static void schedule(sherld *d)
{
    for (;;) {
        pthread_mutex_lock(&d->mu);
        queued_job *q = d->queue;
        running_job *rj = NULL;
        if (q && !d->draining && d->n_running < d->cfg.max_concurrent_jobs) {
            int64_t used[SHERLD_MAX_POOLS], budget[SHERLD_MAX_POOLS], need[SHERLD_MAX_POOLS];
            if (q->any_gpu && q->be) /* a GPU with room now; else it waits where it was */
                place_locked(d, &q->need, &q->be, q->backbone, q->prec);
            pools_used_locked(d, used);
            budgets_locked(d, budget);
            int loaded = q->be && backbones_is_loaded(&d->backbones, q->backbone, q->be, q->prec);
            job_need_bytes(&q->need, loaded, need, d->n_pools);
            if (pools_short(need, used, budget, d->n_pools) < 0 && (rj = calloc(1, sizeof *rj))) {
                d->queue = q->next;
                rj->d = d;
                snprintf(rj->id, sizeof rj->id, "%s", q->id);
                snprintf(rj->name, sizeof rj->name, "%s", q->name);
                rj->need = q->need;
                rj->reserved_backbone = loaded ? 0 : q->need.backbone;
                rj->planned_bytes = q->planned_bytes;
                rj->be = q->be;
                rj->prec = q->prec;
                snprintf(rj->backbone, sizeof rj->backbone, "%s", q->backbone);
                rj->next = d->running;
                d->running = rj;
                d->n_running++;
                free(q);
            }
        }
        pthread_mutex_unlock(&d->mu);
        if (!rj)
            return;
        pthread_t th;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        int err = pthread_create(&th, &at, job_thread, rj);
        pthread_attr_destroy(&at);
        if (err) {
            state_event(d, rj->id, JOB_FAILED, "the daemon could not start a thread for the job");
            finish_job(d, rj);
        }
    }
}

static void on_wake(uv_async_t *h) { schedule(h->data); }
static void on_tick(uv_timer_t *h) { schedule(h->data); }

/* From any thread: have the loop run the scheduler. */
static void wake_scheduler(sherld *d)
{
    pthread_mutex_lock(&d->mu);
    if (d->loop_handles && !d->handles_closed)
        uv_async_send(&d->wake);
    pthread_mutex_unlock(&d->mu);
}

/* ------------------------------------------------------------------------------------------
 * start, recovery, stop */

static sherl_status requeue(sherld *d, const job_record *r)
{
    queued_job *q = calloc(1, sizeof *q);
    if (!q)
        return sherl_errorf(SHERL_ENOMEM, "out of memory");
    snprintf(q->id, sizeof q->id, "%s", r->id);
    snprintf(q->name, sizeof q->name, "%s", r->name);
    q->priority = r->priority;
    cJSON *plan = r->plan_json ? cJSON_Parse(r->plan_json) : NULL;
    const cJSON *peak = cJSON_GetObjectItemCaseSensitive(plan, "peak_bytes");
    const cJSON *arena = cJSON_GetObjectItemCaseSensitive(plan, "arena_bytes");
    const cJSON *bbb = cJSON_GetObjectItemCaseSensitive(plan, "backbone_bytes");
    int64_t backbone = cJSON_IsNumber(bbb) ? (int64_t)bbb->valuedouble : 0;
    int64_t peak_bytes = cJSON_IsNumber(peak) ? (int64_t)peak->valuedouble : r->planned_bytes;
    int64_t arena_bytes = cJSON_IsNumber(arena) ? (int64_t)arena->valuedouble : peak_bytes;
    cJSON_Delete(plan);
    q->planned_bytes = peak_bytes;
    /* the backend as the spec selects it on this node now; when it cannot, the job starts
     * without a reservation and fails with the reason (the scheduler never holds it back) */
    job_spec *spec = malloc(sizeof *spec);
    if (!spec) {
        free(q);
        return sherl_errorf(SHERL_ENOMEM, "out of memory");
    }
    q->need.pool = -1;
    if (!job_spec_parse(spec, r->spec_json, strlen(r->spec_json), "stored spec", NULL).code) {
        snprintf(q->backbone, sizeof q->backbone, "%s", spec->backbone);
        q->prec = spec->model.precision;
        const sherl_backend *be;
        if (!job_backend(spec, &be).code) {
            int pool = jobs_pool(d, be);
            if (pool >= 0) {
                q->be = be;
                q->any_gpu = jobs_any_gpu(spec->device, be);
                q->need = job_need_of(pool, be->host_memory, peak_bytes, arena_bytes, backbone);
            }
        }
    }
    free(spec);
    pthread_mutex_lock(&d->mu);
    q->order = ++g_order;
    enqueue_locked(d, q);
    pthread_mutex_unlock(&d->mu);
    return sherl_ok();
}

static sherl_status recover(sherld *d)
{
    job_state live[] = {JOB_QUEUED, JOB_LOADING, JOB_RUNNING, JOB_STOPPING};
    job_record *recs;
    int n;
    SHERL_TRY(job_store_list(d->store, NULL, live, 4, 0, NULL, 1000000, &recs, &n));
    sherl_status st = sherl_ok();
    for (int i = n - 1; i >= 0 && !st.code; i--) { /* oldest first keeps FIFO order */
        job_record *r = &recs[i];
        if (r->state == JOB_STOPPING) {
            st = message_event(d, r->id, "the daemon restarted while the job was stopping");
            if (!st.code)
                st = state_event(d, r->id, JOB_CANCELLED, NULL);
            continue;
        }
        if (r->state == JOB_LOADING || r->state == JOB_RUNNING) {
            st = message_event(d, r->id, "the daemon restarted: the job resumes from its last "
                                         "checkpoint");
            if (!st.code)
                st = job_store_count_resume(d->store, r->id);
            if (!st.code)
                st = state_event(d, r->id, JOB_QUEUED, NULL);
        }
        if (!st.code)
            st = requeue(d, r);
    }
    for (int i = 0; i < n; i++)
        job_record_free(&recs[i]);
    free(recs);
    return st;
}

static int64_t default_budget(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    long long kb = 0;
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lld kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb > 0 ? (int64_t)(kb * 1024 * 0.8) : (int64_t)4 << 30;
}

sherl_status jobs_start(sherld *d, uv_loop_t *loop)
{
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->changed, NULL);
    backbones_init(&d->backbones);
    d->started_ms = sherld_now_ms();
    d->budget = d->cfg.memory_budget ? d->cfg.memory_budget : default_budget();
    const sherl_backend *cpu = sherl_backend_cpu();
    size_t fr = 0, tot = 0;
    if (cpu->mem_info(&fr, &tot))
        tot = 0;
    memset(d->pools, 0, sizeof d->pools);
    d->pools[0].be = cpu;
    snprintf(d->pools[0].name, sizeof d->pools[0].name, "cpu");
    d->pools[0].budget = d->budget;
    d->pools[0].total = (int64_t)tot;
    d->n_pools = 1;
    /* every usable GPU gets its pool now: GetNodeStatus shows them before the first job */
    for (int i = 0; i < SHERL_CUDA_MAX_DEVICES; i++) {
        const sherl_backend *gpu = sherl_backend_cuda_device(i);
        if (gpu)
            jobs_pool(d, gpu);
    }
    snprintf(d->files_dir, sizeof d->files_dir, "%s/files", d->cfg.state_dir);
    snprintf(d->jobs_dir, sizeof d->jobs_dir, "%s/jobs", d->cfg.state_dir);
    SHERL_TRY(fs_mkdir_p(d->files_dir));
    SHERL_TRY(fs_mkdir_p(d->jobs_dir));
    char db[PATH_MAX];
    snprintf(db, sizeof db, "%s/sherld.db", d->cfg.state_dir);
    SHERL_TRY(job_store_open(&d->store, db));
    if (d->cfg.tokens_file[0])
        SHERL_TRY(auth_load(&d->tokens, d->cfg.tokens_file));
    SHERL_TRY(recover(d));
    if (uv_async_init(loop, &d->wake, on_wake) || uv_timer_init(loop, &d->tick))
        return sherl_errorf(SHERL_EIO, "cannot set up the scheduler's event loop handles");
    d->wake.data = d, d->tick.data = d;
    /* a periodic pass besides the wake-ups: cheap, and no wake-up can ever be missed */
    uv_timer_start(&d->tick, on_tick, 1000, 1000);
    pthread_mutex_lock(&d->mu);
    d->loop_handles = 1;
    pthread_mutex_unlock(&d->mu);
    wake_scheduler(d); /* recovered jobs start on the loop's first turn */
    return sherl_ok();
}

void jobs_stop(sherld *d)
{
    pthread_mutex_lock(&d->mu);
    d->draining = 1;
    for (running_job *r = d->running; r; r = r->next)
        r->cancel = 1;
    backbones_wake(&d->backbones); /* (d->mu, then the registry's: the documented order) */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += d->cfg.drain_timeout_s;
    while (d->n_running > 0)
        if (pthread_cond_timedwait(&d->changed, &d->mu, &until) == ETIMEDOUT)
            break; /* still RUNNING in the store: recovered as resumable on the next start */
    d->stopping = 1;
    pthread_cond_broadcast(&d->changed);
    /* watchers send what the drain appended, then end on their own (at most 5 s more), before
     * the server cuts every call */
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 5;
    while (d->watchers > 0)
        if (pthread_cond_timedwait(&d->changed, &d->mu, &until) == ETIMEDOUT)
            break;
    int handles = d->loop_handles && !d->handles_closed;
    d->handles_closed = 1; /* job threads still running no longer wake the loop */
    pthread_mutex_unlock(&d->mu);
    if (handles) {
        uv_timer_stop(&d->tick);
        uv_close((uv_handle_t *)&d->tick, NULL);
        uv_close((uv_handle_t *)&d->wake, NULL);
    }
}
