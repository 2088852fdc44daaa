/* The registry of resident backbones: one copy of each (folder, backend, precision), shared
 * read-only by every job on that backend that uses the folder at that precision. A load (seconds
 * to minutes) runs outside the lock behind a loading entry, so node status, admission and
 * loads of other backbones never wait for it. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "arena.h"
#include "sherld.h"

void backbones_init(backbone_registry *r)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->load_done, NULL);
}

/* After every RPC and job thread is done: no load is in flight. */
void backbones_free(backbone_registry *r)
{
    for (int i = 0; i < r->n; i++)
        bert_free(r->e[i].model);
    free(r->e);
    pthread_cond_destroy(&r->load_done);
    pthread_mutex_destroy(&r->mu);
    memset(r, 0, sizeof *r);
}

static int find_key(backbone_registry *r, const char *path, const sherl_backend *be,
                    sherl_precision prec)
{
    for (int i = 0; i < r->n; i++)
        if (r->e[i].be == be && r->e[i].prec == prec && !strcmp(r->e[i].path, path))
            return i;
    return -1;
}

int64_t backbones_planned_bytes(const hf_config *cfg, sherl_precision prec)
{
    /* as the planner counts it: one arena of the weights at this precision */
    return (int64_t)arena_round(bert_weight_bytes(cfg, prec));
}

sherl_status backbones_config(const char *path, hf_config *cfg)
{
    char cfg_path[PATH_MAX + 16];
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", path);
    return hf_config_load(cfg, cfg_path);
}

/* Tests only: SHERL_TEST_LOAD_GATE names a folder of FIFOs, named after model folders, so a test
 * can hold several loads at once and tell them apart, with no guess at timing. The FIFO
 * "<folder's base name><suffix>" there, opened for reading (a load's gate) or writing (a wait's
 * announcement); -1 when there is none. */
static int test_gate_open(const char *path, const char *suffix, int flags)
{
    const char *dir = getenv("SHERL_TEST_LOAD_GATE");
    if (!dir || !*dir)
        return -1;
    const char *slash = strrchr(path, '/');
    char fifo[PATH_MAX];
    struct stat sb;
    if (snprintf(fifo, sizeof fifo, "%s/%s%s", dir, slash ? slash + 1 : path, suffix) >=
            (int)sizeof fifo ||
        stat(fifo, &sb) != 0 || !S_ISFIFO(sb.st_mode))
        return -1;
    return open(fifo, flags | O_CLOEXEC);
}

/* A load waits at its gate, once its loading entry is in the registry, until the test writes a
 * byte or closes it. */
static void test_load_gate(const char *path)
{
    int fd = test_gate_open(path, "", O_RDONLY);
    if (fd < 0)
        return;
    char c;
    while (read(fd, &c, 1) < 0 && errno == EINTR)
        ;
    close(fd);
}

static void take(backbone_registry *r, int i, int pin)
{
    if (pin)
        r->e[i].pinned = 1;
    else
        r->e[i].refs++;
}

/* Makes entry n a loading placeholder of the key, counted from its config. Under r->mu. */
static sherl_status add_loading_locked(backbone_registry *r, const char *path,
                                       const sherl_backend *be, sherl_precision prec,
                                       const hf_config *cfg)
{
    if (r->n == r->cap) {
        int nc = r->cap ? 2 * r->cap : 4;
        backbone_entry *e = realloc(r->e, sizeof *e * (size_t)nc);
        if (!e)
            return sherl_errorf(SHERL_ENOMEM, "out of memory");
        r->e = e, r->cap = nc;
    }
    backbone_entry *e = &r->e[r->n++];
    memset(e, 0, sizeof *e);
    snprintf(e->path, sizeof e->path, "%s", path);
    const char *slash = strrchr(path, '/');
    snprintf(e->name, sizeof e->name, "%s", slash && slash[1] ? slash + 1 : path);
    e->be = be;
    sherl_backend_label(be, e->device, sizeof e->device);
    e->prec = prec;
    e->bytes = backbones_planned_bytes(cfg, prec);
    e->layers = cfg->num_hidden_layers, e->hidden = cfg->hidden_size;
    e->loading = 1;
    return sherl_ok();
}

void backbones_wake(backbone_registry *r)
{
    pthread_mutex_lock(&r->mu);
    pthread_cond_broadcast(&r->load_done);
    pthread_mutex_unlock(&r->mu);
}

/* An acquire about to wait for another's load opens "<name>.waiting" for writing first, so the
 * test knows (by opening it for reading) that the wait has begun. Called without the lock. */
static void test_wait_announce(const char *path)
{
    int fd = test_gate_open(path, ".waiting", O_WRONLY);
    if (fd >= 0)
        close(fd);
}

sherl_status backbones_acquire(backbone_registry *r, const char *path, const sherl_backend *be,
                               sherl_precision prec, int pin, bert_model **model,
                               const backbone_hooks *hooks)
{
    void (*counted)(void *) = hooks ? hooks->counted : NULL;
    void *ctx = hooks ? hooks->ctx : NULL;
    const volatile int *stop = hooks ? hooks->stop : NULL;
    *model = NULL;
    if (!be)
        return sherl_errorf(SHERL_EINVAL, "backbone: no backend to load it onto");
    hf_config cfg;
    int have_cfg = 0, claimed = 0, announced = 0;
    unsigned long long waited_on = 0; /* the gen of the entry this call counted itself in */
    pthread_mutex_lock(&r->mu);
    for (;;) {
        int i = find_key(r, path, be, prec);
        if (i >= 0 && waited_on && r->e[i].gen == waited_on)
            r->e[i].waiters--;
        waited_on = 0;
        if (i >= 0 && !r->e[i].loading) {
            take(r, i, pin);
            *model = r->e[i].model;
            pthread_mutex_unlock(&r->mu);
            if (counted)
                counted(ctx);
            return sherl_ok();
        }
        int stopped = stop && *stop;
        if (i >= 0 && r->e[i].orphaned && !stopped) { /* its loader failed: load it here */
            r->e[i].orphaned = 0;
            claimed = 1;
            break;
        }
        if (i < 0 && stopped) { /* nothing to wait for, and no load worth starting */
            pthread_mutex_unlock(&r->mu);
            return sherl_errorf(SHERL_ECANCELLED, "stopped before the backbone was acquired");
        }
        if (i >= 0 && stopped) {
            if (r->e[i].orphaned && r->e[i].waiters == 0) { /* nobody left to load it */
                r->e[i] = r->e[--r->n];
                pthread_cond_broadcast(&r->load_done);
            }
            pthread_mutex_unlock(&r->mu);
            return sherl_errorf(SHERL_ECANCELLED, "stopped while the backbone loaded for "
                                                  "another user");
        }
        if (i >= 0) { /* another user loads it: wait, then look again */
            r->e[i].waiters++;
            waited_on = r->e[i].gen;
            if (!announced) {
                announced = 1;
                pthread_mutex_unlock(&r->mu);
                test_wait_announce(path);
                pthread_mutex_lock(&r->mu);
            } else {
                pthread_cond_wait(&r->load_done, &r->mu);
            }
            continue;
        }
        if (have_cfg)
            break;
        pthread_mutex_unlock(&r->mu); /* a file read: not under the lock */
        sherl_status st = backbones_config(path, &cfg);
        if (st.code)
            return st;
        have_cfg = 1;
        pthread_mutex_lock(&r->mu);
    }
    sherl_status st = sherl_ok();
    if (!claimed) {
        st = add_loading_locked(r, path, be, prec, &cfg);
        if (!st.code)
            r->e[r->n - 1].gen = ++r->gens;
    }
    pthread_mutex_unlock(&r->mu);
    if (st.code)
        return st;
    if (counted)
        counted(ctx);
    test_load_gate(path);
    bert_model *m = NULL;
    st = bert_load_prec(&m, path, be, prec);
    pthread_mutex_lock(&r->mu);
    /* still there: a loading entry goes only when its loader fails with nobody waiting, or
     * (orphaned) with the last waiter; though others may move it */
    int i = find_key(r, path, be, prec);
    if (st.code && r->e[i].waiters > 0) {
        r->e[i].orphaned = 1;
    } else if (st.code) {
        r->e[i] = r->e[--r->n];
    } else {
        r->e[i].model = m;
        r->e[i].loading = 0;
        r->e[i].bytes = backbones_planned_bytes(&m->cfg, prec);
        r->e[i].layers = m->cfg.num_hidden_layers, r->e[i].hidden = m->cfg.hidden_size;
        take(r, i, pin);
        *model = m;
    }
    pthread_cond_broadcast(&r->load_done);
    pthread_mutex_unlock(&r->mu);
    return st;
}

static void drop(backbone_registry *r, int i)
{
    bert_free(r->e[i].model);
    r->e[i] = r->e[--r->n];
}

void backbones_release(backbone_registry *r, const bert_model *model)
{
    if (!model) /* loading entries' NULL model is nobody's */
        return;
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < r->n; i++)
        if (r->e[i].model == model) {
            if (--r->e[i].refs <= 0 && !r->e[i].pinned)
                drop(r, i);
            break;
        }
    pthread_mutex_unlock(&r->mu);
}

int backbones_find_name(backbone_registry *r, const char *name, char *path)
{
    pthread_mutex_lock(&r->mu);
    int found = 0;
    for (int i = 0; i < r->n && !found; i++)
        if (!strcmp(r->e[i].name, name)) {
            snprintf(path, PATH_MAX, "%s", r->e[i].path);
            found = 1;
        }
    pthread_mutex_unlock(&r->mu);
    return found;
}

int backbones_is_loaded(backbone_registry *r, const char *path, const sherl_backend *be,
                        sherl_precision prec)
{
    pthread_mutex_lock(&r->mu);
    int found = find_key(r, path, be, prec) >= 0;
    pthread_mutex_unlock(&r->mu);
    return found;
}

/* name: the base name, or the resolved path when it starts with '/'. */
static int matches(const backbone_entry *e, const char *name, const sherl_backend *be,
                   int gpu_only, int prec)
{
    if (strcmp(name[0] == '/' ? e->path : e->name, name))
        return 0;
    return (!be || e->be == be) && (!gpu_only || !e->be->host_memory) &&
           (prec < 0 || (int)e->prec == prec);
}

int backbones_unload(backbone_registry *r, const char *name, const sherl_backend *be,
                     int gpu_only, int prec, backbone_entry *out, char *others,
                     size_t others_cap)
{
    pthread_mutex_lock(&r->mu);
    int n = 0, hit = -1;
    size_t used = 0;
    if (others && others_cap)
        others[0] = 0;
    for (int i = 0; i < r->n; i++)
        if (matches(&r->e[i], name, be, gpu_only, prec)) {
            if (others && used < others_cap)
                used += (size_t)snprintf(others + used, others_cap - used, "%s%s/%s",
                                         n ? ", " : "", r->e[i].device,
                                         sherl_precision_name(r->e[i].prec));
            n++, hit = i;
        }
    int rc;
    if (n == 0) {
        rc = -1;
    } else if (n > 1) {
        rc = -3;
    } else {
        if (out) {
            *out = r->e[hit];
            out->model = NULL;
        }
        if (r->e[hit].loading) {
            rc = -4;
        } else if (r->e[hit].refs > 0) {
            rc = -2;
        } else {
            drop(r, hit);
            rc = 0;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return rc;
}

int backbones_list(backbone_registry *r, backbone_entry **out)
{
    pthread_mutex_lock(&r->mu);
    *out = malloc(sizeof **out * (size_t)(r->n ? r->n : 1));
    int n = 0;
    if (*out) {
        if (r->n) /* r->e is NULL before the first load */
            memcpy(*out, r->e, sizeof **out * (size_t)r->n);
        n = r->n;
        for (int i = 0; i < n; i++) /* a snapshot: the model does not outlive the lock */
            (*out)[i].model = NULL;
    }
    pthread_mutex_unlock(&r->mu);
    return n;
}
