/* Job spec parsing, validation and writing; see job_spec.h for the schema and its rules. */
#include "job_spec.h"

#include <cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "json_util.h"
#include "pooling.h"

/* ------------------------------------------------------------------------------------------ */
/* names                                                                                        */

static const char *const SCHEDULE_NAMES[] = {"linear", "cosine", "constant"};
static const char *const TASK_NAMES[] = {"classification", "regression"};
static const char *const DEVICE_NAMES[] = {"cpu", "cuda", "auto"};
static const char *const PRECISION_NAMES[] = {"fp32", "bf16", "fp16"};

const char *lr_schedule_name(lr_schedule s)
{
    return (unsigned)s < 3 ? SCHEDULE_NAMES[s] : "unknown";
}

/* The allowed keys of each object, in the order job_spec_to_json writes them. */
static const char *const TOP_KEYS[] = {"name",  "backbone", "method", "sherl",     "task",
                                       "data",  "optim",    "train",  "resources", "output"};
static const char *const SHERL_KEYS[] = {"late_layers", "downsample_factor", "side_dim",
                                         "taps",        "dropout",           "tune_late"};
static const char *const TASK_KEYS[] = {"type", "pooling", "text_fields", "label_field"};
static const char *const DATA_KEYS[] = {"train", "validation", "test", "max_length"};
static const char *const OPTIM_KEYS[] = {"lr",        "weight_decay", "warmup_ratio", "schedule",
                                         "clip_norm", "beta1",        "beta2",        "eps"};
static const char *const TRAIN_KEYS[] = {"epochs",     "max_steps",        "batch_size",
                                         "grad_accum", "eval_every",       "checkpoint_every",
                                         "seed",       "log_every"};
static const char *const RESOURCE_KEYS[] = {"device", "precision", "ranks", "threads", "graphs"};

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* 2^53: every integer up to it is exact in a JSON number (a double). */
#define SEED_MAX 9007199254740992.0

/* ------------------------------------------------------------------------------------------ */
/* field helpers                                                                                */

typedef struct {
    const char *label;
    const char *base_dir; /* NULL or "": no resolution */
} parse_ctx;

/* "sect.key", or "key" at the top level. */
static void field_path(char *buf, size_t cap, const char *sect, const char *key)
{
    if (sect)
        snprintf(buf, cap, "%.40s.%.60s", sect, key);
    else
        snprintf(buf, cap, "%.60s", key);
}

static sherl_status field_err(const parse_ctx *c, const char *sect, const char *key,
                              const cJSON *v, const char *expected)
{
    char path[128];
    field_path(path, sizeof path, sect, key);
    return json_field_error(c->label, path, v, expected);
}

/* The value of key in obj (obj may be NULL), or NULL when absent or null. */
static const cJSON *get(const cJSON *obj, const char *key)
{
    const cJSON *v = obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
    return cJSON_IsNull(v) ? NULL : v;
}

/* Every key of obj is one of allowed[n], and none appears twice. */
static sherl_status check_keys(const parse_ctx *c, const cJSON *obj, const char *sect,
                               const char *const *allowed, int n)
{
    unsigned seen = 0; /* n <= 10 */
    for (const cJSON *it = obj->child; it; it = it->next) {
        const char *key = it->string ? it->string : "";
        int k = 0;
        while (k < n && strcmp(key, allowed[k]) != 0)
            k++;
        char path[128];
        field_path(path, sizeof path, sect, key);
        if (k == n) {
            char list[256];
            size_t used = 0;
            list[0] = '\0';
            for (int i = 0; i < n && used < sizeof list; i++)
                used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "",
                                         allowed[i]);
            char where[64];
            if (sect)
                snprintf(where, sizeof where, "in '%.40s'", sect);
            else
                snprintf(where, sizeof where, "at the top level");
            return sherl_errorf(SHERL_EFORMAT, "%.160s: unknown field '%s' (allowed %s: %s)",
                                c->label, path, where, list);
        }
        if (seen & (1u << k))
            return sherl_errorf(SHERL_EFORMAT, "%.160s: field '%s' appears more than once",
                                c->label, path);
        seen |= 1u << k;
    }
    return sherl_ok();
}

/* An optional object member of root: *out is NULL when absent or null. */
static sherl_status get_section(const parse_ctx *c, const cJSON *root, const char *key,
                                const char *const *allowed, int n, const cJSON **out)
{
    *out = NULL;
    const cJSON *v = get(root, key);
    if (!v)
        return sherl_ok();
    if (!cJSON_IsObject(v))
        return field_err(c, NULL, key, v, "an object");
    SHERL_TRY(check_keys(c, v, key, allowed, n));
    *out = v;
    return sherl_ok();
}

static int is_integral(const cJSON *v, double lo, double hi)
{
    if (!cJSON_IsNumber(v))
        return 0;
    double d = v->valuedouble;
    return isfinite(d) && floor(d) == d && d >= lo && d <= hi;
}

/* An integer in [lo, hi] (hi <= INT_MAX). */
static sherl_status get_int(const parse_ctx *c, const cJSON *obj, const char *sect,
                            const char *key, int lo, int hi, int *out)
{
    const cJSON *v = get(obj, key);
    if (!v)
        return sherl_ok();
    if (!is_integral(v, lo, hi)) {
        char expected[64];
        if (hi == INT_MAX)
            snprintf(expected, sizeof expected, "an integer >= %d", lo);
        else
            snprintf(expected, sizeof expected, "an integer in [%d, %d]", lo, hi);
        return field_err(c, sect, key, v, expected);
    }
    *out = (int)v->valuedouble;
    return sherl_ok();
}

/* A number stored as a float: both the JSON value and the float must lie in the range, from
 * lo to hi, each bound open or closed; hi = INFINITY for none. */
static sherl_status get_float(const parse_ctx *c, const cJSON *obj, const char *sect,
                              const char *key, double lo, int lo_open, double hi, int hi_open,
                              float *out)
{
    const cJSON *v = get(obj, key);
    if (!v)
        return sherl_ok();
    int ok = cJSON_IsNumber(v) && isfinite(v->valuedouble);
    double vals[2] = {0, 0};
    if (ok) {
        vals[0] = v->valuedouble;
        vals[1] = (double)(float)v->valuedouble;
        for (int i = 0; i < 2; i++)
            ok = ok && isfinite(vals[i]) && (lo_open ? vals[i] > lo : vals[i] >= lo) &&
                 (hi_open ? vals[i] < hi : vals[i] <= hi);
    }
    if (!ok) {
        char expected[64];
        if (isinf(hi))
            snprintf(expected, sizeof expected, "a number %s %g", lo_open ? ">" : ">=", lo);
        else
            snprintf(expected, sizeof expected, "a number in %c%g, %g%c", lo_open ? '(' : '[',
                     lo, hi, hi_open ? ')' : ']');
        return field_err(c, sect, key, v, expected);
    }
    *out = (float)vals[0];
    return sherl_ok();
}

static sherl_status get_bool(const parse_ctx *c, const cJSON *obj, const char *sect,
                             const char *key, int *out)
{
    const cJSON *v = get(obj, key);
    if (!v)
        return sherl_ok();
    if (!cJSON_IsBool(v))
        return field_err(c, sect, key, v, "true or false");
    *out = cJSON_IsTrue(v) ? 1 : 0;
    return sherl_ok();
}

/* One of names[n]: *out is its index. expected: e.g. "one of \"cpu\", \"cuda\"". */
static sherl_status get_choice(const parse_ctx *c, const cJSON *obj, const char *sect,
                               const char *key, const char *const *names, int n, int *out)
{
    const cJSON *v = get(obj, key);
    if (!v)
        return sherl_ok();
    if (cJSON_IsString(v))
        for (int i = 0; i < n; i++)
            if (!strcmp(v->valuestring, names[i])) {
                *out = i;
                return sherl_ok();
            }
    char expected[128];
    size_t used = (size_t)snprintf(expected, sizeof expected, "one of");
    for (int i = 0; i < n && used < sizeof expected; i++)
        used += (size_t)snprintf(expected + used, sizeof expected - used, "%s \"%s\"",
                                 i ? "," : "", names[i]);
    return field_err(c, sect, key, v, expected);
}

/* A non-empty string of fewer than cap bytes, copied into buf (cleared first). */
static sherl_status get_short_string(const parse_ctx *c, const cJSON *v, const char *path,
                                     char *buf, size_t cap)
{
    if (!cJSON_IsString(v) || !v->valuestring[0] || strlen(v->valuestring) >= cap) {
        char expected[64];
        snprintf(expected, sizeof expected, "a non-empty string of at most %zu bytes", cap - 1);
        return json_field_error(c->label, path, v, expected);
    }
    memset(buf, 0, cap);
    memcpy(buf, v->valuestring, strlen(v->valuestring));
    return sherl_ok();
}

/* Joins a relative path to the base folder into buf[JOB_PATH_MAX] (cleared first); returns 0
 * when the result does not fit. */
static int resolve_path(char *buf, const char *base_dir, const char *path)
{
    char tmp[JOB_PATH_MAX];
    int n;
    if (path[0] == '/' || !base_dir || !base_dir[0])
        n = snprintf(tmp, sizeof tmp, "%s", path);
    else {
        size_t bl = strlen(base_dir);
        n = snprintf(tmp, sizeof tmp, "%s%s%s", base_dir, base_dir[bl - 1] == '/' ? "" : "/",
                     path);
    }
    if (n < 0 || (size_t)n >= sizeof tmp)
        return 0;
    memset(buf, 0, JOB_PATH_MAX);
    memcpy(buf, tmp, (size_t)n);
    return 1;
}

/* A path: a non-empty string, resolved against the base folder. Absent or null leaves buf as it
 * is, unless required. */
static sherl_status get_path(const parse_ctx *c, const cJSON *obj, const char *sect,
                             const char *key, int required, char *buf)
{
    const cJSON *v = get(obj, key);
    if (!v) {
        if (required)
            return field_err(c, sect, key, NULL, "a path (this field is required)");
        return sherl_ok();
    }
    if (!cJSON_IsString(v) || !v->valuestring[0])
        return field_err(c, sect, key, v, "a non-empty path string");
    if (!resolve_path(buf, c->base_dir, v->valuestring)) {
        char expected[128];
        snprintf(expected, sizeof expected,
                 "a path of at most %d bytes once joined to the spec's folder", JOB_PATH_MAX - 1);
        return field_err(c, sect, key, v, expected);
    }
    return sherl_ok();
}

/* ------------------------------------------------------------------------------------------ */
/* sections                                                                                     */

static int name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 127 || !strcmp(s, ".") || !strcmp(s, ".."))
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            return 0;
    }
    return 1;
}

static sherl_status parse_sherl(const parse_ctx *c, const cJSON *root, job_spec *s)
{
    const cJSON *o;
    SHERL_TRY(get_section(c, root, "sherl", SHERL_KEYS, COUNT(SHERL_KEYS), &o));
    if (!o)
        return sherl_ok();
    sherl_options *m = &s->model;
    SHERL_TRY(get_int(c, o, "sherl", "late_layers", 1, INT_MAX, &m->late_layers));
    SHERL_TRY(get_int(c, o, "sherl", "downsample_factor", 1, INT_MAX, &m->downsample_factor));
    SHERL_TRY(get_int(c, o, "sherl", "side_dim", 0, INT_MAX, &m->side_dim));
    SHERL_TRY(get_float(c, o, "sherl", "dropout", 0.0, 0, 1.0, 1, &m->dropout));
    SHERL_TRY(get_bool(c, o, "sherl", "tune_late", &m->tune_late));
    const cJSON *taps = get(o, "taps");
    if (taps) {
        char expected[96];
        snprintf(expected, sizeof expected,
                 "an array of 2 to %d increasing layer indices (integers >= 0)", SHERL_MAX_TAPS);
        if (!cJSON_IsArray(taps))
            return field_err(c, "sherl", "taps", taps, expected);
        int n = 0;
        for (const cJSON *t = taps->child; t; t = t->next)
            if (++n > SHERL_MAX_TAPS)
                break;
        if (n < 2 || n > SHERL_MAX_TAPS) {
            char got[64];
            if (n > SHERL_MAX_TAPS)
                snprintf(got, sizeof got, "more than %d", SHERL_MAX_TAPS);
            else
                snprintf(got, sizeof got, "%d", n);
            return sherl_errorf(SHERL_EFORMAT, "%.200s: field 'sherl.taps' has %s entries, "
                                "expected %s", c->label, got, expected);
        }
        int i = 0;
        for (const cJSON *t = taps->child; t; t = t->next, i++) {
            char path[64];
            snprintf(path, sizeof path, "sherl.taps[%d]", i);
            if (!is_integral(t, 0, INT_MAX))
                return json_field_error(c->label, path, t, "an integer >= 0 (a layer index)");
            int val = (int)t->valuedouble;
            if (i && val <= m->taps[i - 1]) {
                char exp2[96];
                snprintf(exp2, sizeof exp2, "an integer greater than sherl.taps[%d] = %d "
                         "(taps must increase)", i - 1, m->taps[i - 1]);
                return json_field_error(c->label, path, t, exp2);
            }
            m->taps[i] = val;
        }
        m->n_taps = n;
    }
    return sherl_ok();
}

static sherl_status parse_task(const parse_ctx *c, const cJSON *root, job_spec *s)
{
    const cJSON *o;
    SHERL_TRY(get_section(c, root, "task", TASK_KEYS, COUNT(TASK_KEYS), &o));
    if (!o)
        return sherl_ok();
    int type = (int)s->model.task, pool = (int)s->model.pooling;
    SHERL_TRY(get_choice(c, o, "task", "type", TASK_NAMES, COUNT(TASK_NAMES), &type));
    static const char *const POOL_NAMES[] = {"mean", "cls"};
    SHERL_TRY(get_choice(c, o, "task", "pooling", POOL_NAMES, COUNT(POOL_NAMES), &pool));
    s->model.task = type ? TASK_REGRESSION : TASK_CLASSIFICATION;
    pool_mode pm = POOL_MEAN;
    if (pool_mode_parse(POOL_NAMES[pool], &pm).code != SHERL_OK) /* keeps the enums in step */
        return sherl_errorf(SHERL_EINVAL, "%.200s: internal: pooling table", c->label);
    s->model.pooling = pm;

    const cJSON *tf = get(o, "text_fields");
    if (tf) {
        const char *expected = "an array of 1 or 2 non-empty strings (the text columns)";
        if (!cJSON_IsArray(tf))
            return field_err(c, "task", "text_fields", tf, expected);
        int n = cJSON_GetArraySize(tf);
        if (n < 1 || n > 2)
            return sherl_errorf(SHERL_EFORMAT, "%.200s: field 'task.text_fields' has %d entries, "
                                "expected %s", c->label, n, expected);
        char fields[2][64];
        int i = 0;
        for (const cJSON *t = tf->child; t; t = t->next, i++) {
            char path[64];
            snprintf(path, sizeof path, "task.text_fields[%d]", i);
            SHERL_TRY(get_short_string(c, t, path, fields[i], sizeof fields[i]));
        }
        memcpy(s->text_fields, fields, sizeof(char[64]) * (size_t)n);
        if (n == 1)
            memset(s->text_fields[1], 0, sizeof s->text_fields[1]);
        s->n_text_fields = n;
    }
    const cJSON *lf = get(o, "label_field");
    if (lf)
        SHERL_TRY(get_short_string(c, lf, "task.label_field", s->label_field,
                                   sizeof s->label_field));
    return sherl_ok();
}

static sherl_status parse_data(const parse_ctx *c, const cJSON *root, job_spec *s)
{
    const cJSON *o;
    SHERL_TRY(get_section(c, root, "data", DATA_KEYS, COUNT(DATA_KEYS), &o));
    if (!o)
        return field_err(c, "data", "train", NULL, "a path (this field is required)");
    SHERL_TRY(get_path(c, o, "data", "train", 1, s->train));
    SHERL_TRY(get_path(c, o, "data", "validation", 0, s->validation));
    SHERL_TRY(get_path(c, o, "data", "test", 0, s->test));
    SHERL_TRY(get_int(c, o, "data", "max_length", 3, 8192, &s->max_length));
    return sherl_ok();
}

static sherl_status parse_optim(const parse_ctx *c, const cJSON *root, job_spec *s)
{
    const cJSON *o;
    SHERL_TRY(get_section(c, root, "optim", OPTIM_KEYS, COUNT(OPTIM_KEYS), &o));
    if (!o)
        return sherl_ok();
    SHERL_TRY(get_float(c, o, "optim", "lr", 0.0, 1, 1.0, 0, &s->lr));
    SHERL_TRY(get_float(c, o, "optim", "weight_decay", 0.0, 0, 1.0, 1, &s->weight_decay));
    SHERL_TRY(get_float(c, o, "optim", "warmup_ratio", 0.0, 0, 1.0, 1, &s->warmup_ratio));
    int sched = (int)s->schedule;
    SHERL_TRY(get_choice(c, o, "optim", "schedule", SCHEDULE_NAMES, COUNT(SCHEDULE_NAMES),
                         &sched));
    s->schedule = (lr_schedule)sched;
    SHERL_TRY(get_float(c, o, "optim", "clip_norm", 0.0, 0, INFINITY, 0, &s->clip_norm));
    SHERL_TRY(get_float(c, o, "optim", "beta1", 0.0, 0, 1.0, 1, &s->beta1));
    SHERL_TRY(get_float(c, o, "optim", "beta2", 0.0, 0, 1.0, 1, &s->beta2));
    SHERL_TRY(get_float(c, o, "optim", "eps", 0.0, 1, 1e-2, 0, &s->eps));
    return sherl_ok();
}

static sherl_status parse_train(const parse_ctx *c, const cJSON *root, job_spec *s)
{
    const cJSON *o;
    SHERL_TRY(get_section(c, root, "train", TRAIN_KEYS, COUNT(TRAIN_KEYS), &o));
    if (!o)
        return sherl_ok();
    SHERL_TRY(get_int(c, o, "train", "epochs", 1, 10000, &s->epochs));
    SHERL_TRY(get_int(c, o, "train", "max_steps", 0, INT_MAX, &s->max_steps));
    SHERL_TRY(get_int(c, o, "train", "batch_size", 1, 65536, &s->batch_size));
    SHERL_TRY(get_int(c, o, "train", "grad_accum", 1, 4096, &s->grad_accum));
    const cJSON *ev = get(o, "eval_every");
    if (ev) {
        if (cJSON_IsString(ev) && !strcmp(ev->valuestring, "epoch"))
            s->eval_every_steps = 0;
        else if (is_integral(ev, 1, INT_MAX))
            s->eval_every_steps = (int)ev->valuedouble;
        else
            return field_err(c, "train", "eval_every", ev,
                             "\"epoch\" or a number of steps (an integer >= 1)");
    }
    SHERL_TRY(get_int(c, o, "train", "checkpoint_every", 0, INT_MAX, &s->checkpoint_every));
    const cJSON *seed = get(o, "seed");
    if (seed) {
        if (!is_integral(seed, 0, SEED_MAX))
            return field_err(c, "train", "seed", seed, "an integer in [0, 2^53]");
        s->seed = (uint64_t)seed->valuedouble;
    }
    SHERL_TRY(get_int(c, o, "train", "log_every", 1, INT_MAX, &s->log_every));
    return sherl_ok();
}

static sherl_status parse_resources(const parse_ctx *c, const cJSON *root, job_spec *s)
{
    const cJSON *o;
    SHERL_TRY(get_section(c, root, "resources", RESOURCE_KEYS, COUNT(RESOURCE_KEYS), &o));
    if (!o)
        return sherl_ok();
    int prec = 0;
    for (int i = 0; i < COUNT(PRECISION_NAMES); i++)
        if (!strcmp(s->precision, PRECISION_NAMES[i]))
            prec = i;
    const cJSON *dev = get(o, "device");
    if (dev) {
        /* a name, or one GPU "cuda:N"; whether this node has it is the backend's to say */
        int known = cJSON_IsString(dev) && sherl_cuda_device_of_name(dev->valuestring) >= 0;
        for (int i = 0; !known && cJSON_IsString(dev) && i < COUNT(DEVICE_NAMES); i++)
            known = !strcmp(dev->valuestring, DEVICE_NAMES[i]);
        if (!known) {
            char expected[128];
            snprintf(expected, sizeof expected,
                     "one of \"cpu\", \"cuda\" (any GPU), \"cuda:N\" (GPU N, 0..%d) or "
                     "\"auto\"",
                     SHERL_CUDA_MAX_DEVICES - 1);
            return field_err(c, "resources", "device", dev, expected);
        }
        memset(s->device, 0, sizeof s->device);
        memcpy(s->device, dev->valuestring, strlen(dev->valuestring));
    }
    SHERL_TRY(get_choice(c, o, "resources", "precision", PRECISION_NAMES,
                         COUNT(PRECISION_NAMES), &prec));
    /* bf16 and fp16 run on every device: on the CPU their products widen the halves to fp32 (the
     * reference semantics, for tests; no faster than fp32 there). */
    memset(s->precision, 0, sizeof s->precision);
    memcpy(s->precision, PRECISION_NAMES[prec], strlen(PRECISION_NAMES[prec]));
    sherl_precision_parse(s->precision, &s->model.precision);
    SHERL_TRY(get_int(c, o, "resources", "ranks", 1, 4096, &s->ranks));
    SHERL_TRY(get_int(c, o, "resources", "threads", 0, 1024, &s->threads));
    SHERL_TRY(get_bool(c, o, "resources", "graphs", &s->graphs));
    return sherl_ok();
}

static sherl_status parse_root(const parse_ctx *c, const cJSON *root, job_spec *s)
{
    SHERL_TRY(json_expect_object(root, c->label, "job spec"));
    SHERL_TRY(check_keys(c, root, NULL, TOP_KEYS, COUNT(TOP_KEYS)));

    const cJSON *name = get(root, "name");
    if (name) {
        if (!cJSON_IsString(name) || !name_ok(name->valuestring))
            return field_err(c, NULL, "name", name,
                             "1 to 127 characters of A-Z a-z 0-9 . _ - (not \".\" or \"..\")");
        memset(s->name, 0, sizeof s->name);
        memcpy(s->name, name->valuestring, strlen(name->valuestring));
    }
    SHERL_TRY(get_path(c, root, NULL, "backbone", 1, s->backbone));

    const cJSON *method = get(root, "method");
    if (method) {
        train_method m;
        if (!cJSON_IsString(method) || train_method_parse(method->valuestring, &m).code != SHERL_OK)
            return field_err(c, NULL, "method", method,
                             "one of \"sherl\", \"full\", \"late\", \"linear\"");
        s->model.method = m;
    }
    SHERL_TRY(parse_sherl(c, root, s));
    SHERL_TRY(parse_task(c, root, s));
    SHERL_TRY(parse_data(c, root, s));
    SHERL_TRY(parse_optim(c, root, s));
    SHERL_TRY(parse_train(c, root, s));
    s->model.seed = s->seed;
    SHERL_TRY(parse_resources(c, root, s));

    if (get(root, "output")) {
        SHERL_TRY(get_path(c, root, NULL, "output", 1, s->output));
    } else {
        char def[160];
        snprintf(def, sizeof def, "runs/%s", s->name);
        if (!resolve_path(s->output, c->base_dir, def))
            return sherl_errorf(SHERL_EFORMAT,
                                "%.160s: field 'output' is missing and its default '%s' joined "
                                "to the spec's folder is longer than %d bytes",
                                c->label, def, JOB_PATH_MAX - 1);
    }
    return sherl_ok();
}

/* ------------------------------------------------------------------------------------------ */
/* API                                                                                          */

void job_spec_default(job_spec *spec)
{
    if (!spec)
        return;
    memset(spec, 0, sizeof *spec);
    memcpy(spec->name, "job", 3);
    sherl_options_default(&spec->model);
    memcpy(spec->text_fields[0], "text", 4);
    spec->n_text_fields = 1;
    memcpy(spec->label_field, "label", 5);
    spec->max_length = 128;
    spec->lr = 5e-4f;
    spec->weight_decay = 0.01f;
    spec->warmup_ratio = 0.06f;
    spec->clip_norm = 1.0f;
    spec->beta1 = 0.9f;
    spec->beta2 = 0.999f;
    spec->eps = 1e-8f;
    spec->schedule = SCHEDULE_LINEAR;
    spec->epochs = 3;
    spec->max_steps = 0;
    spec->batch_size = 32;
    spec->grad_accum = 1;
    spec->eval_every_steps = 0;
    spec->checkpoint_every = 0;
    spec->seed = 17;
    spec->model.seed = spec->seed;
    spec->log_every = 10;
    memcpy(spec->device, "cpu", 3);
    memcpy(spec->precision, "fp32", 4);
    spec->ranks = 1;
    spec->threads = 0;
    memcpy(spec->output, "runs/job", 8);
}

sherl_status job_spec_parse(job_spec *spec, const char *json, size_t len, const char *label,
                            const char *base_dir)
{
    if (!spec)
        return sherl_errorf(SHERL_EINVAL, "job_spec_parse: NULL spec");
    job_spec_default(spec);
    parse_ctx c = {label ? label : "job spec", base_dir};
    if (!json)
        return sherl_errorf(SHERL_EINVAL, "%.200s: NULL text", c.label);
    if (len > JOB_SPEC_MAX_BYTES)
        return sherl_errorf(SHERL_EFORMAT, "%.200s: job spec is too large: %zu bytes (limit %u)",
                            c.label, len, JOB_SPEC_MAX_BYTES);
    job_spec *tmp = malloc(sizeof *tmp);
    if (!tmp)
        return sherl_errorf(SHERL_ENOMEM, "%.200s: out of memory", c.label);
    job_spec_default(tmp);
    cJSON *root = NULL;
    sherl_status st = json_parse(json, len, c.label, "job spec", &root);
    if (st.code == SHERL_OK)
        st = parse_root(&c, root, tmp);
    cJSON_Delete(root);
    if (st.code == SHERL_OK)
        memcpy(spec, tmp, sizeof *spec);
    free(tmp);
    return st;
}

/* The absolute folder of the file at path into out[cap]; falls back to the folder as written
 * when the current directory is unknown. Returns 0 when it does not fit. */
static int spec_folder(const char *path, char *out, size_t cap)
{
    const char *slash = strrchr(path, '/');
    char dir[JOB_PATH_MAX];
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == path)
        snprintf(dir, sizeof dir, "/");
    else if ((size_t)(slash - path) >= sizeof dir)
        return 0;
    else
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    if (dir[0] == '/') {
        snprintf(out, cap, "%s", dir);
        return strlen(dir) < cap;
    }
    char cwd[JOB_PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) {
        snprintf(out, cap, "%s", dir);
        return strlen(dir) < cap;
    }
    const char *rel = dir;
    while (rel[0] == '.' && rel[1] == '/')
        rel += 2;
    int n;
    if (!strcmp(rel, ".") || !rel[0])
        n = snprintf(out, cap, "%s", cwd);
    else
        n = snprintf(out, cap, "%s%s%s", cwd, strcmp(cwd, "/") ? "/" : "", rel);
    return n >= 0 && (size_t)n < cap;
}

sherl_status job_spec_load(job_spec *spec, const char *path)
{
    if (!spec)
        return sherl_errorf(SHERL_EINVAL, "job_spec_load: NULL spec");
    job_spec_default(spec);
    if (!path || !path[0])
        return sherl_errorf(SHERL_EINVAL, "job_spec_load: no path");
    char base[JOB_PATH_MAX];
    if (!spec_folder(path, base, sizeof base))
        return sherl_errorf(SHERL_EINVAL, "%.200s: path too long", path);
    char *text;
    size_t len;
    SHERL_TRY(sherl_read_file(path, JOB_SPEC_MAX_BYTES, &text, &len));
    sherl_status st = job_spec_parse(spec, text, len, path, base);
    free(text);
    return st;
}

/* f as JSON text with the fewest significant digits that read back as the same float (null
 * for inf and NaN, which JSON cannot hold). Written raw: cJSON_Print may round doubles. */
static cJSON *float_number(float f)
{
    if (!isfinite(f))
        return cJSON_CreateNull();
    char buf[32];
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, (double)f);
        if ((float)strtod(buf, NULL) == f)
            break;
    }
    return cJSON_CreateRaw(buf);
}

/* An integer as exact JSON text (cJSON_Print rounds integers above 2^31 to 15 digits). */
static cJSON *u64_number(uint64_t v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)v);
    return cJSON_CreateRaw(buf);
}

typedef struct {
    int ok;
} json_builder;

static cJSON *add(json_builder *b, cJSON *obj, const char *key, cJSON *item)
{
    if (!item || !obj) {
        cJSON_Delete(item);
        b->ok = 0;
        return NULL;
    }
    cJSON_AddItemToObject(obj, key, item);
    return item;
}

/* A string from a char buffer of cap bytes, read up to its NUL or its end. */
static cJSON *buf_string(const char *s, size_t cap)
{
    size_t n = strnlen(s, cap);
    if (n < cap)
        return cJSON_CreateString(s);
    char *tmp = malloc(n + 1);
    if (!tmp)
        return NULL;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    cJSON *v = cJSON_CreateString(tmp);
    free(tmp);
    return v;
}
#define BUF_STRING(field) buf_string((field), sizeof(field))

/* A path, or null when unset. */
static cJSON *path_or_null(const char *s, size_t cap)
{
    return s[0] ? buf_string(s, cap) : cJSON_CreateNull();
}

char *job_spec_to_json(const job_spec *s)
{
    if (!s)
        return NULL;
    json_builder b = {1};
    cJSON *root = cJSON_CreateObject();
    if (!root)
        return NULL;
    add(&b, root, "name", BUF_STRING(s->name));
    add(&b, root, "backbone", BUF_STRING(s->backbone));
    add(&b, root, "method", cJSON_CreateString(train_method_name(s->model.method)));

    cJSON *sh = add(&b, root, "sherl", cJSON_CreateObject());
    add(&b, sh, "late_layers", cJSON_CreateNumber(s->model.late_layers));
    add(&b, sh, "downsample_factor", cJSON_CreateNumber(s->model.downsample_factor));
    add(&b, sh, "side_dim", cJSON_CreateNumber(s->model.side_dim));
    if (s->model.n_taps > 0 && s->model.n_taps <= SHERL_MAX_TAPS)
        add(&b, sh, "taps", cJSON_CreateIntArray(s->model.taps, s->model.n_taps));
    else
        add(&b, sh, "taps", cJSON_CreateNull());
    add(&b, sh, "dropout", float_number(s->model.dropout));
    add(&b, sh, "tune_late", cJSON_CreateBool(s->model.tune_late));

    cJSON *task = add(&b, root, "task", cJSON_CreateObject());
    add(&b, task, "type",
        cJSON_CreateString(TASK_NAMES[s->model.task == TASK_REGRESSION ? 1 : 0]));
    add(&b, task, "pooling", cJSON_CreateString(pool_mode_name(s->model.pooling)));
    cJSON *tf = add(&b, task, "text_fields", cJSON_CreateArray());
    for (int i = 0; tf && i < s->n_text_fields && i < 2; i++) {
        cJSON *f = BUF_STRING(s->text_fields[i]);
        if (!f)
            b.ok = 0;
        else
            cJSON_AddItemToArray(tf, f);
    }
    add(&b, task, "label_field", BUF_STRING(s->label_field));

    cJSON *data = add(&b, root, "data", cJSON_CreateObject());
    add(&b, data, "train", BUF_STRING(s->train));
    add(&b, data, "validation", path_or_null(s->validation, sizeof s->validation));
    add(&b, data, "test", path_or_null(s->test, sizeof s->test));
    add(&b, data, "max_length", cJSON_CreateNumber(s->max_length));

    cJSON *op = add(&b, root, "optim", cJSON_CreateObject());
    add(&b, op, "lr", float_number(s->lr));
    add(&b, op, "weight_decay", float_number(s->weight_decay));
    add(&b, op, "warmup_ratio", float_number(s->warmup_ratio));
    add(&b, op, "schedule", cJSON_CreateString(lr_schedule_name(s->schedule)));
    add(&b, op, "clip_norm", float_number(s->clip_norm));
    add(&b, op, "beta1", float_number(s->beta1));
    add(&b, op, "beta2", float_number(s->beta2));
    add(&b, op, "eps", float_number(s->eps));

    cJSON *tr = add(&b, root, "train", cJSON_CreateObject());
    add(&b, tr, "epochs", cJSON_CreateNumber(s->epochs));
    add(&b, tr, "max_steps", cJSON_CreateNumber(s->max_steps));
    add(&b, tr, "batch_size", cJSON_CreateNumber(s->batch_size));
    add(&b, tr, "grad_accum", cJSON_CreateNumber(s->grad_accum));
    add(&b, tr, "eval_every", s->eval_every_steps > 0 ? cJSON_CreateNumber(s->eval_every_steps)
                                                      : cJSON_CreateString("epoch"));
    add(&b, tr, "checkpoint_every", cJSON_CreateNumber(s->checkpoint_every));
    add(&b, tr, "seed", u64_number(s->seed));
    add(&b, tr, "log_every", cJSON_CreateNumber(s->log_every));

    cJSON *res = add(&b, root, "resources", cJSON_CreateObject());
    add(&b, res, "device", BUF_STRING(s->device));
    add(&b, res, "precision", BUF_STRING(s->precision));
    add(&b, res, "ranks", cJSON_CreateNumber(s->ranks));
    add(&b, res, "threads", cJSON_CreateNumber(s->threads));
    add(&b, res, "graphs", cJSON_CreateBool(s->graphs));

    add(&b, root, "output", BUF_STRING(s->output));

    char *text = b.ok ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    return text;
}
