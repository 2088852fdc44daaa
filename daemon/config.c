#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "json_util.h"

typedef enum { OPT_STRING, OPT_INT, OPT_SIZE, OPT_LEVEL, OPT_PATHS } opt_type;

/* The one table of options. Defaults are written as text and parsed by the same code as the
 * file and the flags, so --help, the example config and the behaviour cannot drift apart. */
typedef struct {
    const char *name;
    opt_type type;
    const char *def;
    int64_t min, max; /* OPT_INT, OPT_SIZE */
    size_t offset, cap;
    const char *help;
} option;

#define F(field) offsetof(sherld_config, field), sizeof(((sherld_config *)0)->field)

static const option OPTIONS[] = {
    {"listen", OPT_STRING, "127.0.0.1:7070", 0, 0, F(listen),
     "address to serve on: host:port (port 0 picks a free one) or unix:/path. Anything but "
     "loopback or a unix socket needs tls-cert, tls-key and tokens-file"},
    {"state-dir", OPT_STRING, "/var/lib/sherld", 0, 0, F(state_dir),
     "job store (SQLite), uploads, checkpoints and artifacts"},
    {"data-roots", OPT_PATHS, "", 0, 0, F(data_roots),
     "colon-separated folders that job data and backbones must resolve into (after symlinks); "
     "uploaded files are always allowed"},
    {"max-concurrent-jobs", OPT_INT, "1", 1, 1024, F(max_concurrent_jobs),
     "jobs that run at the same time"},
    {"max-queued-jobs", OPT_INT, "1000", 1, 1000000, F(max_queued_jobs),
     "jobs waiting in QUEUED before SubmitJob answers RESOURCE_EXHAUSTED"},
    {"memory-budget", OPT_SIZE, "0", 0, INT64_MAX, F(memory_budget),
     "bytes the jobs and backbones may hold (suffixes K, M, G, T; 0 = 80% of the memory "
     "available at start)"},
    {"gpu-memory-reserve", OPT_SIZE, "2G", 0, INT64_MAX, F(gpu_memory_reserve),
     "bytes of each GPU's memory that admission leaves to the CUDA context, libraries and other "
     "processes: a GPU's budget is its total memory minus this (suffixes K, M, G, T)"},
    {"threads", OPT_INT, "0", 0, 1024, F(threads),
     "compute threads per job (0 = every online CPU)"},
    {"log-level", OPT_LEVEL, "info", 0, 0, F(log_level), "error, warn, info or debug"},
    {"log-file", OPT_STRING, "", 0, 0, F(log_file),
     "log to this file instead of stderr (reopened on SIGHUP)"},
    {"tokens-file", OPT_STRING, "", 0, 0, F(tokens_file),
     "bearer tokens, one 'token tenant' pair per line; when set, every call needs one and each "
     "tenant sees only its own jobs, files and artifacts"},
    {"max-upload-bytes", OPT_SIZE, "4G", 1, INT64_MAX, F(max_upload_bytes),
     "largest file UploadFile accepts"},
    {"max-message-bytes", OPT_SIZE, "16M", 4096, 1 << 30, F(max_message_bytes),
     "largest single gRPC message"},
    {"drain-timeout", OPT_INT, "60", 1, 86400, F(drain_timeout_s),
     "seconds running jobs get to checkpoint on SIGTERM before the daemon exits anyway"},
    {"tls-cert", OPT_STRING, "", 0, 0, F(tls_cert), "server certificate (PEM file)"},
    {"tls-key", OPT_STRING, "", 0, 0, F(tls_key), "its private key (PEM file)"},
};
#define N_OPTIONS (sizeof OPTIONS / sizeof OPTIONS[0])

static const char *const LEVELS[] = {"error", "warn", "info", "debug"};

const char *log_level_name(log_level l)
{
    return (unsigned)l < 4 ? LEVELS[l] : "unknown";
}

static const option *find_option(const char *name)
{
    for (size_t i = 0; i < N_OPTIONS; i++)
        if (!strcmp(OPTIONS[i].name, name))
            return &OPTIONS[i];
    return NULL;
}

/* "16M" -> 16 MiB; binary suffixes K, M, G, T (optionally followed by B or iB). */
static int parse_size(const char *s, int64_t *out)
{
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (end == s || errno || !(v >= 0))
        return -1;
    double mul = 1;
    switch (toupper((unsigned char)*end)) {
    case 'K': mul = 1024.0, end++; break;
    case 'M': mul = 1024.0 * 1024, end++; break;
    case 'G': mul = 1024.0 * 1024 * 1024, end++; break;
    case 'T': mul = 1024.0 * 1024 * 1024 * 1024, end++; break;
    default: break;
    }
    if (mul > 1 && (!strcasecmp(end, "B") || !strcasecmp(end, "iB")))
        end += strlen(end);
    if (*end || v * mul > 9.2e18)
        return -1;
    *out = (int64_t)(v * mul);
    return 0;
}

sherl_status config_set(sherld_config *c, const char *name, const char *value, const char *where)
{
    char at[300] = "";
    if (where)
        snprintf(at, sizeof at, "%.280s: ", where);
    const option *o = find_option(name);
    if (!o)
        return sherl_errorf(SHERL_EINVAL, "%sunknown option '%.64s' (see sherld --help)", at, name);
    void *field = (char *)c + o->offset;
    switch (o->type) {
    case OPT_STRING:
        if (strlen(value) >= o->cap)
            return sherl_errorf(SHERL_EINVAL, "%s%s: value is %zu bytes, at most %zu", at, o->name,
                                strlen(value), o->cap - 1);
        memcpy(field, value, strlen(value) + 1);
        return sherl_ok();
    case OPT_INT:
    case OPT_SIZE: {
        int64_t v;
        char *end;
        errno = 0;
        if (o->type == OPT_INT) {
            long long ll = strtoll(value, &end, 10);
            if (end == value || *end || errno)
                return sherl_errorf(SHERL_EINVAL, "%s%s: '%.64s' is not an integer", at, o->name,
                                    value);
            v = ll;
        } else if (parse_size(value, &v)) {
            return sherl_errorf(SHERL_EINVAL, "%s%s: '%.64s' is not a size (e.g. 512M, 8G)", at,
                                o->name, value);
        }
        if (v < o->min || v > o->max)
            return sherl_errorf(SHERL_EINVAL, "%s%s: %" PRId64 " is out of range %" PRId64
                                              "..%" PRId64,
                                at, o->name, v, o->min, o->max);
        if (o->type == OPT_INT)
            *(int *)field = (int)v;
        else
            *(int64_t *)field = v;
        return sherl_ok();
    }
    case OPT_LEVEL:
        for (int i = 0; i < 4; i++)
            if (!strcmp(value, LEVELS[i])) {
                *(log_level *)field = (log_level)i;
                return sherl_ok();
            }
        return sherl_errorf(SHERL_EINVAL, "%s%s: '%.64s', expected error, warn, info or debug", at,
                            o->name, value);
    case OPT_PATHS: {
        c->n_data_roots = 0;
        const char *p = value;
        while (*p) {
            const char *colon = strchr(p, ':');
            size_t len = colon ? (size_t)(colon - p) : strlen(p);
            if (len) {
                if (c->n_data_roots == SHERLD_MAX_ROOTS)
                    return sherl_errorf(SHERL_EINVAL, "%s%s: more than %d folders", at, o->name,
                                        SHERLD_MAX_ROOTS);
                if (len >= SHERLD_PATH_MAX || p[0] != '/')
                    return sherl_errorf(SHERL_EINVAL, "%s%s: '%.*s' must be an absolute path "
                                                      "shorter than %d bytes",
                                        at, o->name, (int)(len > 200 ? 200 : len), p,
                                        SHERLD_PATH_MAX);
                memcpy(c->data_roots[c->n_data_roots], p, len);
                c->data_roots[c->n_data_roots++][len] = 0;
            }
            p += len + (colon ? 1 : 0);
        }
        return sherl_ok();
    }
    }
    return sherl_errorf(SHERL_EINTERNAL, "option %s has no type", o->name);
}

sherl_status config_defaults(sherld_config *c)
{
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < N_OPTIONS; i++)
        SHERL_TRY(config_set(c, OPTIONS[i].name, OPTIONS[i].def, "default"));
    return sherl_ok();
}

sherl_status config_load_file(sherld_config *c, const char *path)
{
    char *data;
    size_t len;
    SHERL_TRY(sherl_read_file(path, 1 << 20, &data, &len));
    sherl_status st = sherl_ok();
    int lineno = 0;
    char *cursor = data, *line;
    while (!st.code && (line = config_next_line(&cursor, &lineno))) {
        char *name = line;
        while (isspace((unsigned char)*name))
            name++;
        if (!*name)
            continue;
        char *sp = name;
        while (*sp && !isspace((unsigned char)*sp))
            sp++;
        char *value = sp;
        if (*sp)
            *value++ = 0;
        while (isspace((unsigned char)*value))
            value++;
        char *e = value + strlen(value);
        while (e > value && isspace((unsigned char)e[-1]))
            *--e = 0;
        char where[SHERLD_PATH_MAX + 32];
        snprintf(where, sizeof where, "%s:%d", path, lineno);
        st = config_set(c, name, value, where);
    }
    free(data);
    return st;
}

char *config_next_line(char **cursor, int *lineno)
{
    char *line = *cursor;
    if (!line)
        return NULL;
    char *next = strchr(line, '\n');
    if (next)
        *next++ = 0;
    *cursor = next;
    (*lineno)++;
    char *hash = strchr(line, '#');
    if (hash)
        *hash = 0;
    return line;
}

static int is_loopback(const char *listen)
{
    if (!strncmp(listen, "unix:", 5))
        return 1;
    return !strncmp(listen, "127.", 4) || !strncmp(listen, "localhost:", 10) ||
           !strncmp(listen, "[::1]:", 6);
}

sherl_status config_validate(const sherld_config *c)
{
    if (!c->listen[0])
        return sherl_errorf(SHERL_EINVAL, "listen: empty; expected host:port or unix:/path");
    if (!strncmp(c->listen, "unix:", 5) ? c->listen[5] != '/' : !strrchr(c->listen, ':'))
        return sherl_errorf(SHERL_EINVAL, "listen: '%s', expected host:port or unix:/absolute/path",
                            c->listen);
    if (c->state_dir[0] != '/')
        return sherl_errorf(SHERL_EINVAL, "state-dir: '%s' must be an absolute path", c->state_dir);
    if (!c->tls_cert[0] != !c->tls_key[0])
        return sherl_errorf(SHERL_EINVAL, "tls-cert and tls-key: give both or neither");
    if (!is_loopback(c->listen) && (!c->tls_cert[0] || !c->tokens_file[0]))
        return sherl_errorf(SHERL_EINVAL, "listen: '%s' is not loopback: it needs tls-cert, "
                                          "tls-key and tokens-file",
                            c->listen);
    return sherl_ok();
}

static const char *type_name(opt_type t)
{
    switch (t) {
    case OPT_STRING: return "string";
    case OPT_INT: return "integer";
    case OPT_SIZE: return "size";
    case OPT_LEVEL: return "level";
    case OPT_PATHS: return "paths";
    }
    return "?";
}

void config_print_help(FILE *f)
{
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const option *o = &OPTIONS[i];
        fprintf(f, "  --%s %s (default: %s", o->name, type_name(o->type),
                o->def[0] ? o->def : "none");
        if (o->type == OPT_INT || o->type == OPT_SIZE) {
            if (o->max == INT64_MAX)
                fprintf(f, "; >= %" PRId64, o->min);
            else
                fprintf(f, "; %" PRId64 "..%" PRId64, o->min, o->max);
        }
        fprintf(f, ")\n      %s\n", o->help);
    }
}

void config_print(FILE *f, const sherld_config *c)
{
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const option *o = &OPTIONS[i];
        const void *field = (const char *)c + o->offset;
        fprintf(f, "%s ", o->name);
        switch (o->type) {
        case OPT_STRING: fprintf(f, "%s\n", (const char *)field); break;
        case OPT_INT: fprintf(f, "%d\n", *(const int *)field); break;
        case OPT_SIZE: fprintf(f, "%" PRId64 "\n", *(const int64_t *)field); break;
        case OPT_LEVEL: fprintf(f, "%s\n", log_level_name(*(const log_level *)field)); break;
        case OPT_PATHS:
            for (int r = 0; r < c->n_data_roots; r++)
                fprintf(f, "%s%s", r ? ":" : "", c->data_roots[r]);
            fprintf(f, "\n");
            break;
        }
    }
}

int config_option_count(void) { return (int)N_OPTIONS; }
const char *config_option_name(int i) { return i >= 0 && i < (int)N_OPTIONS ? OPTIONS[i].name : NULL; }
