/* The registry of resident backbones: one copy of each folder's weights, shared read-only by
 * every job that uses it. */
#include <stdlib.h>
#include <string.h>

#include "sherld.h"

void backbones_init(backbone_registry *r)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
}

void backbones_free(backbone_registry *r)
{
    for (int i = 0; i < r->n; i++)
        bert_free(r->e[i].model);
    free(r->e);
    pthread_mutex_destroy(&r->mu);
    memset(r, 0, sizeof *r);
}

static int find_path(backbone_registry *r, const char *path)
{
    for (int i = 0; i < r->n; i++)
        if (!strcmp(r->e[i].path, path))
            return i;
    return -1;
}

sherl_status backbones_acquire(backbone_registry *r, const char *path, int pin, bert_model **model)
{
    *model = NULL;
    /* Loading holds the lock: a second job on the same folder waits for the first load rather
     * than loading a second copy. */
    pthread_mutex_lock(&r->mu);
    int i = find_path(r, path);
    if (i < 0) {
        if (r->n == r->cap) {
            int nc = r->cap ? 2 * r->cap : 4;
            backbone_entry *e = realloc(r->e, sizeof *e * (size_t)nc);
            if (!e) {
                pthread_mutex_unlock(&r->mu);
                return sherl_errorf(SHERL_ENOMEM, "out of memory");
            }
            r->e = e, r->cap = nc;
        }
        bert_model *m;
        sherl_status st = bert_load(&m, path, sherl_backend_cpu());
        if (st.code) {
            pthread_mutex_unlock(&r->mu);
            return st;
        }
        backbone_entry *e = &r->e[r->n];
        memset(e, 0, sizeof *e);
        snprintf(e->path, sizeof e->path, "%s", path);
        const char *slash = strrchr(path, '/');
        snprintf(e->name, sizeof e->name, "%s", slash && slash[1] ? slash + 1 : path);
        e->model = m;
        e->bytes = (int64_t)bert_param_count(&m->cfg) * 4;
        i = r->n++;
    }
    if (pin)
        r->e[i].pinned = 1;
    else
        r->e[i].refs++;
    *model = r->e[i].model;
    pthread_mutex_unlock(&r->mu);
    return sherl_ok();
}

static void drop(backbone_registry *r, int i)
{
    bert_free(r->e[i].model);
    r->e[i] = r->e[--r->n];
}

void backbones_release(backbone_registry *r, const bert_model *model)
{
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

int backbones_is_loaded(backbone_registry *r, const char *path)
{
    pthread_mutex_lock(&r->mu);
    int found = find_path(r, path) >= 0;
    pthread_mutex_unlock(&r->mu);
    return found;
}

int backbones_unload(backbone_registry *r, const char *name)
{
    pthread_mutex_lock(&r->mu);
    int rc = -1;
    for (int i = 0; i < r->n; i++)
        if (!strcmp(r->e[i].name, name)) {
            if (r->e[i].refs > 0) {
                rc = -2;
            } else {
                drop(r, i);
                rc = 0;
            }
            break;
        }
    pthread_mutex_unlock(&r->mu);
    return rc;
}

int64_t backbones_bytes(backbone_registry *r)
{
    pthread_mutex_lock(&r->mu);
    int64_t b = 0;
    for (int i = 0; i < r->n; i++)
        b += r->e[i].bytes;
    pthread_mutex_unlock(&r->mu);
    return b;
}

int backbones_list(backbone_registry *r, backbone_entry **out)
{
    pthread_mutex_lock(&r->mu);
    *out = malloc(sizeof **out * (size_t)(r->n ? r->n : 1));
    int n = 0;
    if (*out) {
        memcpy(*out, r->e, sizeof **out * (size_t)r->n);
        n = r->n;
    }
    pthread_mutex_unlock(&r->mu);
    return n;
}
