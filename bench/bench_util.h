/* Small helpers shared by the C benchmarks: a monotonic clock, medians, and --name N options. */
#ifndef SHERL_BENCH_UTIL_H
#define SHERL_BENCH_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cJSON.h>

#include "kernels.h"

/* The backend a bench runs on: name NULL takes cuda when usable, else the CPU. Returns -1 with
 * *be set, else the exit status to end with: 0 after a "no GPU" line when cuda was asked for and
 * there is none (an answer, not a failure), 1 when a GPU is there but unusable, 2 for a name
 * that is neither cuda nor cpu. */
static inline int bench_backend(const char *prog, const char *name, const sherl_backend **be)
{
    if (!name) {
        *be = sherl_backend_by_name("cuda");
        if (!*be)
            *be = sherl_backend_cpu();
        return -1;
    }
    if (!strcmp(name, "cpu")) {
        *be = sherl_backend_cpu();
        return -1;
    }
    if (strcmp(name, "cuda")) {
        fprintf(stderr, "%s: unknown backend '%s' (cuda or cpu)\n", prog, name);
        return 2;
    }
    *be = sherl_backend_by_name("cuda");
    if (*be)
        return -1;
    char why[256];
    if (sherl_cuda_absent(why, sizeof why) == 0) {
        printf("%s: no GPU (%s)\n", prog, why);
        return 0;
    }
    fprintf(stderr, "%s: %s\n", prog, why);
    return 1;
}

static inline double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Wall-clock milliseconds since the epoch (comparable with the daemon's event times). */
static inline double bench_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static int bench_cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Sorts t[n] and returns its median. */
static inline double bench_median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof(double), bench_cmp_d);
    return t[n / 2];
}

typedef struct {
    const char *name; /* "--batch" */
    int *value;
} bench_int_opt;

/* Parses "--name N" pairs (N a positive integer) from argv[first..]; strings named in
 * str_names (may be NULL) take any value into str_values. Returns 0, or 2 after a message. */
static inline int bench_parse(const char *prog, int argc, char **argv, int first,
                              const bench_int_opt *opts, int n_opts, const char *const *str_names,
                              const char **str_values, int n_str)
{
    for (int i = first; i < argc; i += 2) {
        if (i + 1 >= argc) {
            fprintf(stderr, "%s: %s needs a value\n", prog, argv[i]);
            return 2;
        }
        int done = 0;
        for (int k = 0; k < n_str && !done; k++)
            if (!strcmp(argv[i], str_names[k]))
                str_values[k] = argv[i + 1], done = 1;
        for (int k = 0; k < n_opts && !done; k++) {
            if (strcmp(argv[i], opts[k].name))
                continue;
            char *end;
            long v = strtol(argv[i + 1], &end, 10);
            if (*end || v <= 0 || v > 1 << 20) {
                fprintf(stderr, "%s: %s needs a positive integer, got '%s'\n", prog, argv[i],
                        argv[i + 1]);
                return 2;
            }
            *opts[k].value = (int)v;
            done = 1;
        }
        if (!done) {
            fprintf(stderr, "%s: unknown option %s\n", prog, argv[i]);
            return 2;
        }
    }
    return 0;
}

/* Writes j as pretty JSON to path and frees it; 0 on success, -1 on any failure. */
static inline int bench_write_json(const char *path, cJSON *j)
{
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    if (!text)
        return -1;
    FILE *f = fopen(path, "w");
    int ok = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    if (f && fclose(f))
        ok = 0;
    free(text);
    return ok ? 0 : -1;
}

#endif
