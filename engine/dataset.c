/* Labelled text datasets: JSON lines and GLUE-style TSV; see dataset.h. */
#include "dataset.h"

#include "arena.h"

#include <cJSON.h>
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "json_util.h"
#include "kernels.h"

/* Examples per dataset: below INT_MAX so every index fits an int. */
#define DATASET_MAX_EXAMPLES (INT_MAX / 2)
/* Known labels listed in an "unknown label" message. */
#define KNOWN_LABELS_SHOWN 5
/* Header columns listed in a "no column" message. */
#define HEADER_COLUMNS_SHOWN 12

/* ------------------------------------------------------------------------------------------ */
/* messages                                                                                     */

/* "path:line" (or "path" when line <= 0), the path shortened from the left to 170 bytes so the
 * line number always fits in a status message (json_util keeps 200 bytes of a label). */
static void where(char *buf, size_t cap, const char *path, long long line)
{
    size_t n = strlen(path);
    const char *dots = "";
    if (n > 170) {
        path += n - 167;
        dots = "...";
    }
    if (line > 0)
        snprintf(buf, cap, "%s%s:%lld", dots, path, line);
    else
        snprintf(buf, cap, "%s%s", dots, path);
}

/* "<path>:<line>: <reason>" */
static sherl_status fail(sherl_code code, const char *path, long long line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static sherl_status fail(sherl_code code, const char *path, long long line, const char *fmt, ...)
{
    char w[256], reason[400];
    where(w, sizeof w, path, line);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    return sherl_errorf(code, "%s: %s", w, reason);
}

/* ------------------------------------------------------------------------------------------ */
/* label names                                                                                  */

/* Whether s is an integer in canonical decimal form (-?(0|[1-9][0-9]*), within long long);
 * its value in *v. */
static int canonical_int(const char *s, long long *v)
{
    const char *p = s;
    if (*p == '-')
        p++;
    if (!(*p >= '0' && *p <= '9'))
        return 0;
    if (*p == '0' && p[1] != '\0')
        return 0; /* leading zero */
    if (s[0] == '-' && p[0] == '0')
        return 0; /* "-0" */
    for (const char *q = p; *q; q++)
        if (!(*q >= '0' && *q <= '9'))
            return 0;
    errno = 0;
    char *end;
    long long x = strtoll(s, &end, 10);
    if (errno == ERANGE || *end != '\0')
        return 0;
    *v = x;
    return 1;
}

/* A hash set of label names: name -> index in names[]. In a table built from a training file
 * the names are owned (strdup); in one filled from a caller's label_map they are borrowed. */
typedef struct {
    char **names;
    int n, cap;
    int *slots; /* index + 1, 0 = empty */
    size_t nslots;
    int owned;
} name_table;

static uint64_t hash_name(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ull;
    }
    return h;
}

static void table_free(name_table *t)
{
    if (t->owned)
        for (int i = 0; i < t->n; i++)
            free(t->names[i]);
    free(t->names);
    free(t->slots);
    memset(t, 0, sizeof *t);
}

/* -1 when absent. */
static int table_find(const name_table *t, const char *name)
{
    if (!t->nslots)
        return -1;
    size_t mask = t->nslots - 1;
    for (size_t k = (size_t)hash_name(name) & mask;; k = (k + 1) & mask) {
        int s = t->slots[k];
        if (!s)
            return -1;
        if (strcmp(t->names[s - 1], name) == 0)
            return s - 1;
    }
}

static void table_place(name_table *t, int idx)
{
    size_t mask = t->nslots - 1;
    size_t k = (size_t)hash_name(t->names[idx]) & mask;
    while (t->slots[k])
        k = (k + 1) & mask;
    t->slots[k] = idx + 1;
}

/* Adds name (absent from the table); its index in *idx. 0 on success, -1 out of memory. */
static int table_add(name_table *t, const char *name, int *idx)
{
    if (t->n == t->cap) {
        if (t->cap >= DATASET_MAX_EXAMPLES)
            return -1;
        int nc = t->cap ? 2 * t->cap : 16;
        char **p = realloc(t->names, (size_t)nc * sizeof *p);
        if (!p)
            return -1;
        t->names = p;
        t->cap = nc;
    }
    if ((size_t)(t->n + 1) * 2 > t->nslots) {
        size_t ns = t->nslots ? 2 * t->nslots : 64;
        int *s = calloc(ns, sizeof *s);
        if (!s)
            return -1;
        free(t->slots);
        t->slots = s;
        t->nslots = ns;
        for (int i = 0; i < t->n; i++)
            table_place(t, i);
    }
    char *copy = t->owned ? strdup(name) : (char *)name;
    if (!copy)
        return -1;
    t->names[t->n] = copy;
    table_place(t, t->n);
    *idx = t->n++;
    return 0;
}

typedef struct {
    const char *name;
    long long v;
    int idx;
} sort_item;

static int cmp_numeric(const void *pa, const void *pb)
{
    const sort_item *a = pa, *b = pb;
    if (a->v != b->v)
        return a->v < b->v ? -1 : 1;
    return strcmp(a->name, b->name);
}

static int cmp_string(const void *pa, const void *pb)
{
    const sort_item *a = pa, *b = pb;
    return strcmp(a->name, b->name);
}

/* ------------------------------------------------------------------------------------------ */
/* the loader                                                                                   */

typedef struct {
    const char *path;
    const dataset_options *opt;
    const wordpiece_tokenizer *tok;
    const label_map *given; /* classification without build_labels */
    int build;
    int limit; /* effective max_length */
    /* results */
    int n, cap;
    tok_encoding *enc;
    int32_t *labels; /* classification: index in `names` */
    float *targets;  /* regression */
    name_table names;
} loader;

static void loader_free(loader *L)
{
    for (int i = 0; i < L->n; i++)
        tok_encoding_free(&L->enc[i]);
    free(L->enc);
    free(L->labels);
    free(L->targets);
    table_free(&L->names);
}

static sherl_status oom(const loader *L, long long line)
{
    return fail(SHERL_ENOMEM, L->path, line, "out of memory");
}

/* Checks a classification label name; its index in L->names in *idx. */
static sherl_status class_label(loader *L, long long line, const char *name, int *idx)
{
    if (!name[0])
        return fail(SHERL_EFORMAT, L->path, line, "empty label in field '%.100s'",
                    L->opt->label_field);
    int k = table_find(&L->names, name);
    if (k >= 0) {
        *idx = k;
        return sherl_ok();
    }
    if (L->build) {
        if (table_add(&L->names, name, idx))
            return oom(L, line);
        return sherl_ok();
    }
    char known[300];
    size_t used = 0;
    known[0] = '\0';
    for (int i = 0; i < L->given->n && i < KNOWN_LABELS_SHOWN; i++) {
        int w = snprintf(known + used, sizeof known - used, "%s'%.40s'", i ? ", " : "",
                         L->given->names[i]);
        if (w < 0 || (size_t)w >= sizeof known - used)
            break;
        used += (size_t)w;
    }
    return fail(SHERL_EFORMAT, L->path, line,
                "unknown label '%.60s' (%d known label%s: %s%s)", name, L->given->n,
                L->given->n == 1 ? "" : "s", known,
                L->given->n > KNOWN_LABELS_SHOWN ? ", ..." : "");
}

/* kind: "field" (JSON) or "column" (TSV). */
static sherl_status check_target(const loader *L, long long line, double v, const char *kind,
                                 const char *shown)
{
    if (!isfinite(v) || fabs(v) > FLT_MAX)
        return fail(SHERL_EFORMAT, L->path, line,
                    "%s '%.100s' is %.60s, expected a finite number (in float's range)", kind,
                    L->opt->label_field, shown);
    return sherl_ok();
}

/* Tokenizes a record and appends it, with its label index or target. */
static sherl_status add_example(loader *L, long long line, const char *a, const char *b,
                                int label, float target)
{
    if (L->n == L->cap) {
        if (L->cap >= DATASET_MAX_EXAMPLES)
            return fail(SHERL_EFORMAT, L->path, line, "too many examples (limit %d)",
                        DATASET_MAX_EXAMPLES);
        int nc = L->cap ? (L->cap > DATASET_MAX_EXAMPLES / 2 ? DATASET_MAX_EXAMPLES : 2 * L->cap)
                        : 256;
        tok_encoding *e = realloc(L->enc, (size_t)nc * sizeof *e);
        if (!e)
            return oom(L, line);
        L->enc = e;
        if (L->opt->task == TASK_CLASSIFICATION) {
            int32_t *p = realloc(L->labels, (size_t)nc * sizeof *p);
            if (!p)
                return oom(L, line);
            L->labels = p;
        } else {
            float *p = realloc(L->targets, (size_t)nc * sizeof *p);
            if (!p)
                return oom(L, line);
            L->targets = p;
        }
        L->cap = nc;
    }
    tok_encoding enc;
    sherl_status st = wordpiece_encode(L->tok, a, b, L->limit, &enc);
    if (st.code != SHERL_OK)
        return fail(st.code, L->path, line, "%s", st.msg);
    if (enc.len < 2 || enc.len > L->limit) { /* cannot happen with limit >= 3 */
        int len = enc.len;
        tok_encoding_free(&enc);
        return fail(SHERL_EINVAL, L->path, line, "tokenization gave %d tokens (max_length %d)",
                    len, L->limit);
    }
    L->enc[L->n] = enc;
    if (L->opt->task == TASK_CLASSIFICATION)
        L->labels[L->n] = label;
    else
        L->targets[L->n] = target;
    L->n++;
    return sherl_ok();
}

/* Strict UTF-8 (no overlongs, surrogates or code points above U+10FFFF) and no NUL byte: 0 when
 * s[0..n) is fine, else the offset of the first bad byte + 1. */
static size_t bad_utf8(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c == 0)
            return i + 1;
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t k;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            k = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            k = 2;
            if (c == 0xE0)
                lo = 0xA0;
            else if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            k = 3;
            if (c == 0xF0)
                lo = 0x90;
            else if (c == 0xF4)
                hi = 0x8F;
        } else {
            return i + 1;
        }
        if (n - i <= k)
            return i + 1;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return i + 1;
        for (size_t j = 2; j <= k; j++)
            if (s[i + j] < 0x80 || s[i + j] > 0xBF)
                return i + 1;
        i += k + 1;
    }
    return 0;
}

static int blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
            return 0;
    return 1;
}

/* Whether a JSON line escapes U+0000 (\u0000), which a C string cannot hold. */
static int escapes_nul(const char *s, size_t n)
{
    for (size_t i = 0; i + 1 < n; i++) {
        if (s[i] != '\\')
            continue;
        if (s[i + 1] == 'u' && i + 5 < n && memcmp(s + i + 2, "0000", 4) == 0)
            return 1;
        i++; /* the escaped character */
    }
    return 0;
}

/* A required string field of a JSON record. */
static sherl_status json_text(const loader *L, const char *w, const cJSON *obj,
                              const char *field, const char **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, field);
    if (!cJSON_IsString(v) || !v->valuestring)
        return json_field_error(w, field, v, "a string");
    *out = v->valuestring;
    return sherl_ok();
}

static sherl_status jsonl_record(loader *L, long long line, const char *s, size_t n)
{
    char w[256];
    where(w, sizeof w, L->path, line);
    if (escapes_nul(s, n))
        return fail(SHERL_EFORMAT, L->path, line,
                    "a string holds \\u0000 (U+0000), which texts cannot hold");
    cJSON *obj;
    SHERL_TRY(json_parse(s, n, w, NULL, &obj));
    sherl_status st = json_expect_object(obj, w, NULL);
    const char *a = NULL, *b = NULL;
    int label = 0;
    float target = 0;
    if (st.code == SHERL_OK)
        st = json_text(L, w, obj, L->opt->text_a_field, &a);
    if (st.code == SHERL_OK && L->opt->text_b_field)
        st = json_text(L, w, obj, L->opt->text_b_field, &b);
    if (st.code == SHERL_OK) {
        const char *field = L->opt->label_field;
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, field);
        if (L->opt->task == TASK_CLASSIFICATION) {
            char num[32];
            if (cJSON_IsString(v) && v->valuestring) {
                st = class_label(L, line, v->valuestring, &label);
            } else if (cJSON_IsNumber(v) && isfinite(v->valuedouble) &&
                       floor(v->valuedouble) == v->valuedouble &&
                       fabs(v->valuedouble) <= 9007199254740992.0 /* 2^53 */) {
                snprintf(num, sizeof num, "%lld", (long long)v->valuedouble);
                st = class_label(L, line, num, &label);
            } else {
                st = json_field_error(w, field, v, "a string or an integer");
            }
        } else if (!cJSON_IsNumber(v)) {
            st = json_field_error(w, field, v, "a finite number");
        } else {
            char shown[64];
            json_describe(v, shown, sizeof shown);
            st = check_target(L, line, v->valuedouble, "field", shown);
            target = (float)(st.code == SHERL_OK ? v->valuedouble : 0.0);
        }
    }
    if (st.code == SHERL_OK)
        st = add_example(L, line, a, b, label, target);
    cJSON_Delete(obj);
    return st;
}

/* TSV: the columns the options name. */
typedef struct {
    int ncols;
    int a, b, label; /* column indices; b = -1 without a second text */
    long long header_line;
} tsv_header;

/* Splits s (NUL-terminated, modified in place) at tabs: up to max fields in f; returns the
 * number of fields there are (even when above max). */
static int split_tabs(char *s, char **f, int max)
{
    int k = 0;
    for (;;) {
        if (k < max)
            f[k] = s;
        k++;
        char *t = strchr(s, '\t');
        if (!t)
            return k;
        *t = '\0';
        s = t + 1;
    }
}

static sherl_status tsv_parse_header(loader *L, long long line, char *s, tsv_header *h)
{
    int ncols = 1;
    for (const char *p = s; *p; p++)
        ncols += *p == '\t';
    char **f = malloc((size_t)ncols * sizeof *f);
    if (!f)
        return oom(L, line);
    split_tabs(s, f, ncols);
    const char *want[3] = {L->opt->text_a_field, L->opt->text_b_field, L->opt->label_field};
    int at[3] = {-1, -1, -1};
    sherl_status st = sherl_ok();
    for (int w = 0; w < 3 && st.code == SHERL_OK; w++) {
        if (!want[w])
            continue;
        for (int c = 0; c < ncols; c++) {
            if (strcmp(f[c], want[w]) != 0)
                continue;
            if (at[w] >= 0) {
                st = fail(SHERL_EFORMAT, L->path, line,
                          "the header names column '%.100s' twice (columns %d and %d)", want[w],
                          at[w] + 1, c + 1);
                break;
            }
            at[w] = c;
        }
        if (st.code == SHERL_OK && at[w] < 0) {
            char cols[300];
            size_t used = 0;
            cols[0] = '\0';
            for (int c = 0; c < ncols && c < HEADER_COLUMNS_SHOWN; c++) {
                int k = snprintf(cols + used, sizeof cols - used, "%s'%.30s'", c ? ", " : "",
                                 f[c]);
                if (k < 0 || (size_t)k >= sizeof cols - used)
                    break;
                used += (size_t)k;
            }
            st = fail(SHERL_EFORMAT, L->path, line,
                      "the header has no column '%.60s' (its %d column%s: %s%s)", want[w], ncols,
                      ncols == 1 ? "" : "s", cols, ncols > HEADER_COLUMNS_SHOWN ? ", ..." : "");
        }
    }
    free(f);
    h->ncols = ncols;
    h->a = at[0];
    h->b = at[1];
    h->label = at[2];
    h->header_line = line;
    return st;
}

static sherl_status tsv_record(loader *L, long long line, char *s, const tsv_header *h,
                               char **f)
{
    int k = split_tabs(s, f, h->ncols);
    if (k != h->ncols)
        return fail(SHERL_EFORMAT, L->path, line,
                    "row has %d column%s, the header (line %lld) has %d", k, k == 1 ? "" : "s",
                    h->header_line, h->ncols);
    const char *a = f[h->a], *b = h->b >= 0 ? f[h->b] : NULL, *lab = f[h->label];
    int label = 0;
    float target = 0;
    if (L->opt->task == TASK_CLASSIFICATION) {
        SHERL_TRY(class_label(L, line, lab, &label));
    } else {
        char *end = NULL;
        double v = 0;
        int ok = lab[0] && lab[0] != ' ' && lab[0] != '\t' && !(lab[0] >= '\n' && lab[0] <= '\r');
        if (ok) {
            v = strtod(lab, &end);
            ok = end != lab && *end == '\0';
        }
        char shown[80];
        snprintf(shown, sizeof shown, "'%.60s'", lab);
        if (!ok)
            return fail(SHERL_EFORMAT, L->path, line,
                        "column '%.100s' is %s, expected a finite number", L->opt->label_field,
                        shown);
        SHERL_TRY(check_target(L, line, v, "column", shown));
        target = (float)v;
    }
    return add_example(L, line, a, b, label, target);
}

/* Walks the lines of data[0..len) (modified in place: lines are NUL-terminated). */
static sherl_status load_lines(loader *L, char *data, size_t len, int tsv)
{
    size_t pos = 0;
    if (len >= 3 && memcmp(data, "\xEF\xBB\xBF", 3) == 0)
        pos = 3; /* UTF-8 byte order mark */
    long long line = 0;
    tsv_header h = {0, -1, -1, -1, 0};
    int have_header = 0;
    char **fields = NULL;
    sherl_status st = sherl_ok();
    while (pos < len && st.code == SHERL_OK) {
        line++;
        char *s = data + pos;
        char *nl = memchr(s, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - s) : len - pos;
        pos += n + (nl ? 1 : 0);
        if (n > DATASET_MAX_LINE_BYTES) {
            st = fail(SHERL_EFORMAT, L->path, line, "line is too long (%zu bytes, limit %u)", n,
                      DATASET_MAX_LINE_BYTES);
            break;
        }
        if (n && s[n - 1] == '\r')
            n--;
        s[n] = '\0';
        size_t bad = bad_utf8((const unsigned char *)s, n);
        if (bad) {
            unsigned char c = (unsigned char)s[bad - 1];
            st = fail(SHERL_EFORMAT, L->path, line,
                      c ? "invalid UTF-8 (byte 0x%02x at byte %zu of the line)"
                        : "NUL byte (0x%02x) at byte %zu of the line",
                      c, bad);
            break;
        }
        if (blank(s, n))
            continue;
        if (!tsv) {
            st = jsonl_record(L, line, s, n);
        } else if (!have_header) {
            st = tsv_parse_header(L, line, s, &h);
            have_header = 1;
            if (st.code == SHERL_OK && !(fields = malloc((size_t)h.ncols * sizeof *fields)))
                st = oom(L, line);
        } else {
            st = tsv_record(L, line, s, &h, fields);
        }
    }
    free(fields);
    if (st.code == SHERL_OK && L->n == 0) {
        const char *why = len == 0                ? "the file is empty"
                          : tsv && have_header    ? "only a header row"
                                                  : "only blank lines";
        st = fail(SHERL_EFORMAT, L->path, 0, "no examples (%s)", why);
    }
    return st;
}

/* Moves the built label names into *lm in sorted order and renumbers the examples' labels. */
static sherl_status finish_labels(loader *L, label_map *lm)
{
    int k = L->names.n;
    sort_item *items = malloc((size_t)k * sizeof *items);
    int *rank = malloc((size_t)k * sizeof *rank);
    char **names = malloc((size_t)k * sizeof *names);
    if (!items || !rank || !names) {
        free(items);
        free(rank);
        free(names);
        return oom(L, 0);
    }
    int numeric = 1;
    for (int i = 0; i < k; i++) {
        items[i].name = L->names.names[i];
        items[i].idx = i;
        items[i].v = 0;
        if (numeric && !canonical_int(items[i].name, &items[i].v))
            numeric = 0;
    }
    qsort(items, (size_t)k, sizeof *items, numeric ? cmp_numeric : cmp_string);
    for (int r = 0; r < k; r++) {
        rank[items[r].idx] = r;
        names[r] = L->names.names[items[r].idx];
    }
    for (int i = 0; i < L->n; i++)
        L->labels[i] = rank[L->labels[i]];
    /* the names now belong to the map */
    free(L->names.names);
    free(L->names.slots);
    memset(&L->names, 0, sizeof L->names);
    free(items);
    free(rank);
    lm->n = k;
    lm->names = names;
    return sherl_ok();
}

static int has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcasecmp(s + n - m, suf) == 0;
}

sherl_status dataset_load(dataset *ds, const char *path, const dataset_options *opt,
                          const wordpiece_tokenizer *tok, label_map *labels, int build_labels)
{
    if (!ds)
        return sherl_errorf(SHERL_EINVAL, "dataset_load: NULL dataset");
    memset(ds, 0, sizeof *ds);
    if (!path || !opt || !tok)
        return sherl_errorf(SHERL_EINVAL, "dataset_load: NULL %s",
                            !path ? "path" : !opt ? "options" : "tokenizer");
    if (strlen(path) >= sizeof ds->path)
        return sherl_errorf(SHERL_EINVAL, "dataset path is too long (%zu bytes, limit %zu)",
                            strlen(path), sizeof ds->path - 1);
    if (!opt->text_a_field || !opt->text_a_field[0] || !opt->label_field ||
        !opt->label_field[0] || (opt->text_b_field && !opt->text_b_field[0]))
        return sherl_errorf(SHERL_EINVAL, "%.300s: dataset options: empty or NULL field name",
                            path);
    if (opt->task != TASK_CLASSIFICATION && opt->task != TASK_REGRESSION)
        return sherl_errorf(SHERL_EINVAL, "%.300s: dataset options: unknown task %d", path,
                            (int)opt->task);
    int limit = opt->max_length;
    if (limit == 0) {
        const wordpiece_options *wo = wordpiece_get_options(tok);
        limit = wo ? wo->model_max_length : 0;
    }
    if (limit < 3 || limit > (1 << 20))
        return sherl_errorf(SHERL_EINVAL,
                            "%.300s: dataset options: max_length %d is out of range (3 to %d, "
                            "or 0 for the tokenizer's)", path, opt->max_length, 1 << 20);
    if (opt->task == TASK_CLASSIFICATION) {
        if (!labels)
            return sherl_errorf(SHERL_EINVAL, "%.300s: classification needs a label map", path);
        if (!build_labels && (labels->n <= 0 || !labels->names))
            return sherl_errorf(SHERL_EINVAL, "%.300s: the label map is empty", path);
    }
    int tsv;
    if (has_suffix(path, ".tsv"))
        tsv = 1;
    else if (has_suffix(path, ".jsonl") || has_suffix(path, ".json"))
        tsv = 0;
    else
        return fail(SHERL_EUNSUPPORTED, path, 0,
                    "unknown dataset format (expected a .jsonl, .json or .tsv file)");

    loader L;
    memset(&L, 0, sizeof L);
    L.path = path;
    L.opt = opt;
    L.tok = tok;
    L.limit = limit;
    L.build = opt->task == TASK_CLASSIFICATION && build_labels;
    L.names.owned = L.build;
    sherl_status st = sherl_ok();
    if (opt->task == TASK_CLASSIFICATION && !build_labels) {
        L.given = labels;
        for (int i = 0; i < labels->n && st.code == SHERL_OK; i++) {
            int idx;
            if (!labels->names[i])
                st = sherl_errorf(SHERL_EINVAL, "label map: label %d has no name", i);
            else if (table_find(&L.names, labels->names[i]) >= 0)
                st = sherl_errorf(SHERL_EINVAL, "label map: label '%.60s' appears twice",
                                  labels->names[i]);
            else if (table_add(&L.names, labels->names[i], &idx))
                st = oom(&L, 0);
        }
    }
    char *data = NULL;
    size_t len = 0;
    if (st.code == SHERL_OK)
        st = sherl_read_file(path, (size_t)DATASET_MAX_FILE_BYTES, &data, &len);
    if (st.code == SHERL_OK)
        st = load_lines(&L, data, len, tsv);
    free(data);
    if (st.code == SHERL_OK && L.build)
        st = finish_labels(&L, labels);
    if (st.code != SHERL_OK) {
        loader_free(&L);
        return st;
    }
    table_free(&L.names);
    ds->n = L.n;
    ds->enc = L.enc;
    ds->labels = L.labels;
    ds->targets = L.targets;
    /* what stays resident: the arrays at their capacity, each encoding's three id arrays, and
     * glibc's 16-byte header per allocation (for the memory plan) */
    ds->mem_bytes = (size_t)L.cap * (sizeof *L.enc + sizeof(int32_t)) + 2 * 16;
    for (int i = 0; i < L.n; i++)
        ds->mem_bytes += 3 * (arena_malloc_size((size_t)L.enc[i].len * sizeof(int32_t)));
    memcpy(ds->path, path, strlen(path) + 1);
    return sherl_ok();
}

void dataset_free(dataset *ds)
{
    if (!ds)
        return;
    for (int i = 0; i < ds->n; i++)
        tok_encoding_free(&ds->enc[i]);
    free(ds->enc);
    free(ds->labels);
    free(ds->targets);
    memset(ds, 0, sizeof *ds);
}

void label_map_free(label_map *lm)
{
    if (!lm)
        return;
    for (int i = 0; i < lm->n; i++)
        free(lm->names[i]);
    free(lm->names);
    memset(lm, 0, sizeof *lm);
}

int label_map_find(const label_map *lm, const char *name)
{
    if (!lm || !name || !lm->names)
        return -1;
    for (int i = 0; i < lm->n; i++)
        if (lm->names[i] && strcmp(lm->names[i], name) == 0)
            return i;
    return -1;
}

/* ------------------------------------------------------------------------------------------ */
/* batches and shuffling                                                                        */

sherl_status dataset_batch(const dataset *ds, const int *idx, int n, int pad_id, bert_batch *batch,
                           int32_t *labels, float *targets)
{
    if (!batch)
        return sherl_errorf(SHERL_EINVAL, "dataset_batch: NULL batch");
    memset(batch, 0, sizeof *batch);
    if (!ds || !idx)
        return sherl_errorf(SHERL_EINVAL, "dataset_batch: NULL %s", !ds ? "dataset" : "indices");
    if (n <= 0)
        return sherl_errorf(SHERL_EINVAL, "dataset_batch: batch size %d", n);
    for (int i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= ds->n)
            return sherl_errorf(SHERL_EINVAL,
                                "dataset_batch: index %d (position %d) is outside 0..%d", idx[i],
                                i, ds->n - 1);
    tok_encoding *encs = malloc((size_t)n * sizeof *encs);
    if (!encs)
        return sherl_errorf(SHERL_ENOMEM, "dataset_batch: out of memory");
    for (int i = 0; i < n; i++)
        encs[i] = ds->enc[idx[i]]; /* shallow: the batch copies the ids */
    sherl_status st = bert_batch_from_encodings(batch, encs, n, pad_id);
    free(encs);
    if (st.code != SHERL_OK)
        return st;
    for (int i = 0; i < n; i++) {
        if (labels)
            labels[i] = ds->labels ? ds->labels[idx[i]] : 0;
        if (targets)
            targets[i] = ds->targets ? ds->targets[idx[i]] : 0.0f;
    }
    return sherl_ok();
}

/* splitmix64's finalizer: the epoch's contribution to the shuffle key. */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void dataset_shuffle(int *perm, int n, uint64_t seed, int epoch)
{
    if (!perm || n <= 0)
        return;
    for (int i = 0; i < n; i++)
        perm[i] = i;
    /* A key of its own for each epoch (and apart from the dropout streams of the same seed). */
    uint64_t key = seed ^ mix64(0x53485546464C45ull /* "SHUFFLE" */ + (uint64_t)(uint32_t)epoch *
                                                                          0x9E3779B97F4A7C15ull);
    for (int i = n - 1; i > 0; i--) {
        /* 48 random bits from two 24-bit draws; the modulo bias is below n / 2^48. */
        uint64_t hi = (uint64_t)(sherl_dropout_uniform(key, 2 * (uint64_t)i) * 16777216.0f);
        uint64_t lo = (uint64_t)(sherl_dropout_uniform(key, 2 * (uint64_t)i + 1) * 16777216.0f);
        int j = (int)(((hi << 24) | lo) % (uint64_t)(i + 1));
        int t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}
