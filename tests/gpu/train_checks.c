/* gpu_train_checks: two checks of training on a chosen backend, runnable on any backend (so the
 * CPU side runs in CI too).
 *
 *   gpu_train_checks parity  --backend B --model DIR --data DIR [--precision fp32|bf16]
 *                            [--steps 20] [--batch 8] [--max-length 32] [--lr X] [--threads N]
 *                            [--tune-late 0|1] [--graphs 0|1] [--tol X] [--dropout P]
 *                            [--control 0|1] [--reference-precision fp32|bf16] [--ffn-rows R]
 *                            [--work DIR]
 *   gpu_train_checks sharing --backend B --model DIR --data DIR [--jobs 4] [--steps 6]
 *                            [--batch 8] [--max-length 32] [--threads N] [--tol X] [--work DIR]
 *
 * B: cpu, cuda, auto, cpu-guarded (the CPU backend on memory the host cannot touch outside
 * backend calls, tests/unit/guarded_backend.c: bit-identical to cpu; single-threaded, so not for
 * sharing), cpu-counted (the CPU backend as a device: host_memory 0 and mem_info counting
 * exactly the bytes it allocated; thread-safe, so sharing's device path runs without a GPU) or
 * cpu-perturbed (the CPU backend with the results of its fp32 gemm, gemm_strided_batched and
 * matmul_forward nudged by about one ulp, as a device's other summation order would: the
 * forward's Linear products and MTSA's tap projections; single-threaded, so not for sharing) or cpu-timed (the CPU behind bench_gpu_train's timing
 * wrappers, timed_backend: bit-identical to cpu; not for sharing either). DIR (--data) holds train.jsonl and validation.jsonl
 * with "text" and "label" fields; tests/gpu/make_train_task.py makes a model and such a task.
 *
 * parity: the same SHERL job (method sherl, classification, log_every 1, the default dropout,
 *   seed 17, max_steps = --steps; --tune-late 1: the late layer trains too, so in bf16 its
 *   products run on half copies of fp32 masters) trained once on the CPU backend in fp32 and once on B at
 *   --precision (the spec says device "cpu"; B is given to train_run through hooks.backend);
 *   --reference-precision bf16: the CPU's run is bf16 too (for test backends that must give
 *   the CPU's bits: --tol 1e-300, with --ffn-rows 1 on a device-like backend, whose
 *   feed-forward chunks are otherwise larger than the CPU's: bert_ffn_chunk).
 *   Every step's training loss must match the CPU's within 1e-4 relative (fp32) or 2e-2 (bf16);
 *   with bf16 the final validation accuracy must also be within 0.01 of the fp32 run's (--tol
 *   sets the loss tolerance instead). --graphs 1: the tested run has resources.graphs (its
 *   passes recorded into a graph and replayed; both runs with MTSA dropout 0), and every pass
 *   must have run from a graph. --dropout P sets both runs' MTSA dropout (default: the spec's).
 *   A failing train_run (e.g. a precision the trainer refuses) is a FAIL with its message.
 *   --control 1: the reference's job (fp32) also trains on cpu-perturbed, a column of the
 *   table. SHERL's guidance weights alpha_j = a_j / (sum_m |a_m| + 1e-8) move by ~1/sum per
 *   unit of a_j, so a token whose scores are all <= 0 but one just above (sum ~1e-5) turns
 *   rounding into a visible gradient change, and from there the loss curves part. When B
 *   failed on its losses alone (all finite, the steps as expected, the control complete), the
 *   control left the tolerance at or before B's first step over it, B's worst difference is at
 *   most ILL_FACTOR times the control's and B's final validation accuracy is no further from
 *   the CPU's than the control's plus 0.01, the verdict is ILL-CONDITIONED (exit 3): those
 *   losses cannot tell B's error from rounding. Otherwise a failure is a FAIL.
 * sharing: ONE backbone loaded with bert_load on B, then --jobs SHERL jobs run concurrently (a
 *   thread each, hooks.backbone = that backbone), all held at their first step until every
 *   one is there, so they overlap. A monitor thread samples memory all along:
 *   - B's memory is not the host's (cuda) and mem_info works: device used (total - free), the
 *     maximum over the run minus the use before the backbone was loaded (taken after a one-step
 *     warm-up job, so the CUDA context and the kernels' code are not counted), against the
 *     plan's backbone + jobs x (arena bytes - backbone): within --tol (default 5%).
 *   - host memory (cpu): the process's RSS growth, against backbone + BLAS packing buffers (the
 *     process's, shared) + jobs x (planned peak - those), within --tol (default 10%); and, as RSS is noisy, also that every job ends
 *     with parameters bit-identical to a single job's run alone with the same seed. Under
 *     AddressSanitizer (shadow memory, freed blocks in quarantine) RSS means nothing: there
 *     only the parameters are checked, and the output says so.
 *
 * Exit 0 when the check passes (or, for --backend cuda, when there is no GPU: it says so and
 * runs nothing), 1 when it fails, 2 on bad arguments or unreadable inputs, 3 when
 * ILL-CONDITIONED (above).
 * Plain C without Criterion, so it builds on the GPU machine's image (tests/gpu/run.sh). */
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>

#include "guarded_backend.h"
#include "memstat.h"
#include "trainer.h"

#define PROG "gpu_train_checks"

/* Under AddressSanitizer the process's RSS holds shadow memory and freed blocks in quarantine:
 * the host memory comparison means nothing there, so only the parameters are checked. */
#if defined(__SANITIZE_ADDRESS__)
#define RSS_UNRELIABLE "an AddressSanitizer build"
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RSS_UNRELIABLE "an AddressSanitizer build"
#endif
#endif
#ifdef RSS_UNRELIABLE
#define RSS_NOTE RSS_UNRELIABLE
#else
#define RSS_NOTE "this build"
#endif
#define SEED 17

static void usage(void)
{
    fprintf(stderr,
            "usage: " PROG " parity  --backend B --model DIR --data DIR [--precision fp32|bf16]\n"
            "                         [--steps 20] [--batch 8] [--max-length 32] [--lr X]\n"
            "                         [--threads N] [--tune-late 0|1] [--graphs 0|1] [--tol X]\n"
            "                         [--dropout P] [--control 0|1]\n"
            "                         [--reference-precision fp32|bf16] [--ffn-rows R]\n"
            "                         [--work DIR]\n"
            "       " PROG " sharing --backend B --model DIR --data DIR [--jobs 4] [--steps 6]\n"
            "                         [--batch 8] [--max-length 32] [--threads N] [--tol X]\n"
            "                         [--work DIR]\n"
            "  B: cpu, cuda, auto, cpu-guarded, cpu-counted, cpu-perturbed or cpu-timed. DIR\n"
            "  (--data) holds train.jsonl and validation.jsonl (tests/gpu/make_train_task.py\n"
            "  makes a model and a task).\n"
            "  parity: per-step training loss on B vs the CPU in fp32 (1e-4 relative; bf16 2e-2\n"
            "  and validation accuracy within 0.01); --reference-precision bf16: the CPU's run in\n"
            "  bf16 instead (with --tol 1e-300: B must give the same bits). --control 1 also\n"
            "  trains on cpu-perturbed, the CPU in fp32 with its Linear and MTSA products nudged\n"
            "  by about 1 ulp: when B fails on its losses alone, the control fails too (no later\n"
            "  than B), B moved at most 10 times as far and its validation accuracy is within the\n"
            "  control's + 0.01, the verdict is ILL-CONDITIONED (exit 3) instead of FAIL.\n"
            "  --ffn-rows R: a device backend's feed-forward chunk is at least R rows (default\n"
            "  8192; 1: the CPU's chunks, for bit-for-bit comparisons).\n"
            "  sharing: N concurrent jobs on one resident backbone use backbone + N x job's\n"
            "  planned memory (5%% on a device, 10%% RSS on the host, plus identical parameters\n"
            "  to a single run).\n");
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double mib(double bytes) { return bytes / 1048576.0; }

/* ------------------------------------------------------------------------------------------
 * options */

typedef struct {
    const char *mode, *backend, *model, *data, *work, *precision, *ref_precision;
    int steps, batch, max_length, threads, jobs, tune_late, graphs, control, ffn_rows;
    double lr, tol, dropout; /* dropout < 0: the spec's default */
} options;

static int parse_int(const char *flag, const char *v, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || !*v || x < lo || x > hi) {
        fprintf(stderr, PROG ": %s %s is not an integer in [%d, %d]\n", flag, v, lo, hi);
        return -1;
    }
    *out = (int)x;
    return 0;
}

static int parse_double(const char *flag, const char *v, double *out)
{
    char *end;
    double x = strtod(v, &end);
    if (*end || !*v || !(x > 0) || !isfinite(x)) {
        fprintf(stderr, PROG ": %s %s is not a positive number\n", flag, v);
        return -1;
    }
    *out = x;
    return 0;
}

/* 0 ok, 1 help shown, 2 bad arguments */
static int parse_args(int argc, char **argv, options *o)
{
    memset(o, 0, sizeof *o);
    o->precision = o->ref_precision = "fp32";
    o->steps = -1, o->batch = 8, o->max_length = 32, o->threads = -1, o->jobs = 4;
    o->dropout = -1;
    if (argc < 2) {
        usage();
        return 2;
    }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage();
        return 1;
    }
    o->mode = argv[1];
    if (strcmp(o->mode, "parity") && strcmp(o->mode, "sharing")) {
        fprintf(stderr, PROG ": unknown check '%s' (parity or sharing)\n", o->mode);
        usage();
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            return 1;
        }
        if (!v) {
            fprintf(stderr, PROG ": %s needs a value (or is unknown)\n", a);
            return 2;
        }
        int bad = 0;
        if (!strcmp(a, "--backend"))
            o->backend = v;
        else if (!strcmp(a, "--model"))
            o->model = v;
        else if (!strcmp(a, "--data"))
            o->data = v;
        else if (!strcmp(a, "--work"))
            o->work = v;
        else if (!strcmp(a, "--precision"))
            o->precision = v;
        else if (!strcmp(a, "--reference-precision"))
            o->ref_precision = v;
        else if (!strcmp(a, "--steps"))
            bad = parse_int(a, v, 1, 100000, &o->steps);
        else if (!strcmp(a, "--batch"))
            bad = parse_int(a, v, 1, 65536, &o->batch);
        else if (!strcmp(a, "--max-length"))
            bad = parse_int(a, v, 3, 8192, &o->max_length);
        else if (!strcmp(a, "--threads"))
            bad = parse_int(a, v, 0, 1024, &o->threads);
        else if (!strcmp(a, "--jobs"))
            bad = parse_int(a, v, 1, 64, &o->jobs);
        else if (!strcmp(a, "--tune-late"))
            bad = parse_int(a, v, 0, 1, &o->tune_late);
        else if (!strcmp(a, "--graphs"))
            bad = parse_int(a, v, 0, 1, &o->graphs);
        else if (!strcmp(a, "--control"))
            bad = parse_int(a, v, 0, 1, &o->control);
        else if (!strcmp(a, "--ffn-rows"))
            bad = parse_int(a, v, 1, 1 << 30, &o->ffn_rows);
        else if (!strcmp(a, "--lr"))
            bad = parse_double(a, v, &o->lr);
        else if (!strcmp(a, "--tol"))
            bad = parse_double(a, v, &o->tol);
        else if (!strcmp(a, "--dropout")) {
            char *end;
            o->dropout = strtod(v, &end);
            bad = *end || !*v || !(o->dropout >= 0 && o->dropout < 1);
            if (bad)
                fprintf(stderr, PROG ": --dropout %s: expected a number in [0, 1)\n", v);
        }
        else {
            fprintf(stderr, PROG ": unknown argument %s\n", a);
            usage();
            return 2;
        }
        if (bad)
            return 2;
        i++;
    }
    if (!o->backend || !o->model || !o->data) {
        fprintf(stderr, PROG ": --backend, --model and --data are required\n");
        usage();
        return 2;
    }
    if (strcmp(o->precision, "fp32") && strcmp(o->precision, "bf16")) {
        fprintf(stderr, PROG ": --precision %s: fp32 or bf16\n", o->precision);
        return 2;
    }
    if (strcmp(o->ref_precision, "fp32") && strcmp(o->ref_precision, "bf16")) {
        fprintf(stderr, PROG ": --reference-precision %s: fp32 or bf16\n", o->ref_precision);
        return 2;
    }
    if (o->control && strcmp(o->ref_precision, "fp32")) {
        fprintf(stderr, PROG ": --control 1 needs the fp32 reference (the control is fp32)\n");
        return 2;
    }
    if (o->control && strcmp(o->mode, "parity")) {
        fprintf(stderr, PROG ": --control 1 is for parity, not for %s\n", o->mode);
        return 2;
    }
    if (!strcmp(o->mode, "sharing") &&
        (!strcmp(o->backend, "cpu-perturbed") || !strcmp(o->backend, "cpu-timed"))) {
        fprintf(stderr, PROG ": sharing runs jobs on several threads; %s is single-threaded\n",
                o->backend);
        return 2;
    }
    if (o->steps < 0)
        o->steps = !strcmp(o->mode, "parity") ? 20 : 6;
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * files */

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

/* rm -rf; a missing path is fine */
static void remove_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) == 0)
        nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int mkdir_p(const char *path)
{
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(buf, 0755) && errno != EEXIST)
                return -1;
            *p = '/';
        }
    return mkdir(buf, 0755) && errno != EEXIST ? -1 : 0;
}

static char *read_file(const char *path, long *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *b = NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (*n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (b = malloc((size_t)*n + 1)) && fread(b, 1, (size_t)*n, f) != (size_t)*n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    return b;
}

/* ------------------------------------------------------------------------------------------
 * the backend */

/* "cpu-counted": the CPU backend with its memory counted as a device's (host_memory 0, so the
 * engine stages every copy; mem_info's used bytes = exactly what alloc handed out and free has
 * not taken back). Thread-safe, unlike cpu-guarded: sharing's device path runs on it in CI. */
#define COUNTED_HEADER 64 /* keeps the CPU backend's 64-byte alignment */
static sherl_backend counted;
static atomic_size_t counted_used;

static void *counted_alloc(size_t bytes)
{
    unsigned char *p = sherl_backend_cpu()->alloc(bytes + COUNTED_HEADER);
    if (!p)
        return NULL;
    memcpy(p, &bytes, sizeof bytes);
    atomic_fetch_add(&counted_used, bytes);
    return p + COUNTED_HEADER;
}

static void counted_free(void *q)
{
    if (!q)
        return;
    unsigned char *p = (unsigned char *)q - COUNTED_HEADER;
    size_t bytes;
    memcpy(&bytes, p, sizeof bytes);
    atomic_fetch_sub(&counted_used, bytes);
    sherl_backend_cpu()->free(p);
}

static int counted_mem_info(size_t *free_bytes, size_t *total_bytes)
{
    const size_t total = (size_t)1 << 40;
    size_t used = atomic_load(&counted_used);
    if (free_bytes)
        *free_bytes = total - used;
    if (total_bytes)
        *total_bytes = total;
    return 0;
}

static const sherl_backend *counted_backend(void)
{
    counted = *sherl_backend_cpu();
    counted.name = "cpu-counted";
    counted.host_memory = 0;
    counted.alloc = counted_alloc;
    counted.free = counted_free;
    counted.mem_info = counted_mem_info;
    return &counted;
}

/* "cpu-perturbed": the CPU backend with every fp32 product's result nudged by about one unit
 * in the last place (a fixed hash of call and element picks -1, 0 or +1 ulp), as a device's
 * different summation order would: parity against it says what rounding alone does to the
 * check. Single-threaded callers only. */
static sherl_backend perturbed;
static uint64_t perturb_calls;

static void perturb(float *C, int M, int N, int ldc)
{
    uint64_t call = ++perturb_calls;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float u = sherl_dropout_uniform(call, (uint64_t)i * N + j);
            float *c = &C[(size_t)i * ldc + j];
            if (u < 1.0f / 3)
                *c = nextafterf(*c, -INFINITY);
            else if (u > 2.0f / 3)
                *c = nextafterf(*c, INFINITY);
        }
}

static void perturbed_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A,
                           int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    sherl_backend_cpu()->gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    perturb(C, M, N, ldc);
}

static void perturbed_gemm_sb(int ta, int tb, int M, int N, int K, float alpha, const float *A,
                              int lda, long long sa, const float *B, int ldb, long long sb,
                              float beta, float *C, int ldc, long long sc, int batch)
{
    sherl_backend_cpu()->gemm_strided_batched(ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb,
                                              beta, C, ldc, sc, batch);
    for (int b = 0; b < batch; b++)
        perturb(C + b * sc, M, N, ldc);
}

static void perturbed_matmul_forward(float *out, const float *inp, const float *weight,
                                     const float *bias, int N, int C, int OC)
{
    sherl_backend_cpu()->matmul_forward(out, inp, weight, bias, N, C, OC);
    perturb(out, N, OC, OC);
}

static const sherl_backend *perturbed_backend(void)
{
    perturbed = *sherl_backend_cpu();
    perturbed.name = "cpu-perturbed";
    perturbed.gemm = perturbed_gemm;
    perturbed.gemm_strided_batched = perturbed_gemm_sb;
    perturbed.matmul_forward = perturbed_matmul_forward;
    return &perturbed;
}

typedef enum { BE_OK, BE_NO_GPU, BE_FAIL, BE_BAD } be_result;

static be_result pick_backend(const char *name, const sherl_backend **be)
{
    *be = NULL;
    if (!strcmp(name, "cpu-guarded")) {
        *be = guarded_backend();
        return BE_OK;
    }
    if (!strcmp(name, "cpu-counted")) {
        *be = counted_backend();
        return BE_OK;
    }
    if (!strcmp(name, "cpu-perturbed")) {
        *be = perturbed_backend();
        return BE_OK;
    }
    if (!strcmp(name, "cpu-timed")) { /* the timing wrappers must not change a bit */
        *be = timed_backend(sherl_backend_cpu());
        return BE_OK;
    }
    *be = sherl_backend_by_name(name);
    if (*be)
        return BE_OK;
    if (strcmp(name, "cuda")) {
        fprintf(stderr, PROG ": unknown backend '%s' (cpu, cuda, auto, cpu-guarded, "
                        "cpu-counted, cpu-perturbed or cpu-timed)\n", name);
        return BE_BAD;
    }
    char why[256];
    if (sherl_cuda_absent(why, sizeof why) == 0) {
        printf(PROG ": no GPU: 1 test not run (%s)\n", why);
        return BE_NO_GPU;
    }
    fprintf(stderr, PROG ": %s\n", why); /* a GPU this build cannot use: a failure */
    return BE_FAIL;
}

/* ------------------------------------------------------------------------------------------
 * a job's spec and progress */

/* The job as JSON, parsed and validated as any spec is. precision "bf16" with device "cpu" goes
 * through the same validation as a user's spec. */
/* graphs: resources.graphs for this run. With --graphs 1 every run has MTSA dropout 0 (dropout
 * keeps a run from graphs), so that the runs compared are the same job. */
static sherl_status make_spec(job_spec *spec, const options *o, const char *model,
                              const char *data, const char *name, const char *precision,
                              int threads, const char *out, int graphs)
{
    char train[PATH_MAX + 32], val[PATH_MAX + 32];
    snprintf(train, sizeof train, "%s/train.jsonl", data);
    snprintf(val, sizeof val, "%s/validation.jsonl", data);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "name", name);
    cJSON_AddStringToObject(j, "backbone", model);
    cJSON_AddStringToObject(j, "method", "sherl");
    cJSON *sh = cJSON_AddObjectToObject(j, "sherl");
    if (o->tune_late)
        cJSON_AddBoolToObject(sh, "tune_late", 1);
    if (o->graphs || o->dropout >= 0)
        cJSON_AddNumberToObject(sh, "dropout", o->graphs ? 0.0 : o->dropout);
    cJSON *d = cJSON_AddObjectToObject(j, "data");
    cJSON_AddStringToObject(d, "train", train);
    cJSON_AddStringToObject(d, "validation", val);
    cJSON_AddNumberToObject(d, "max_length", o->max_length);
    if (o->lr > 0)
        cJSON_AddNumberToObject(cJSON_AddObjectToObject(j, "optim"), "lr", o->lr);
    cJSON *t = cJSON_AddObjectToObject(j, "train");
    cJSON_AddNumberToObject(t, "epochs", 1);
    cJSON_AddNumberToObject(t, "max_steps", o->steps);
    cJSON_AddNumberToObject(t, "batch_size", o->batch);
    cJSON_AddNumberToObject(t, "log_every", 1);
    cJSON_AddNumberToObject(t, "seed", SEED);
    cJSON *r = cJSON_AddObjectToObject(j, "resources");
    cJSON_AddStringToObject(r, "device", "cpu");
    cJSON_AddStringToObject(r, "precision", precision);
    cJSON_AddNumberToObject(r, "threads", threads);
    cJSON_AddBoolToObject(r, "graphs", graphs);
    cJSON_AddStringToObject(j, "output", out);
    char *text = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!text)
        return sherl_errorf(SHERL_ENOMEM, "out of memory");
    sherl_status st = job_spec_parse(spec, text, strlen(text), "job spec", NULL);
    free(text);
    return st;
}

typedef struct {
    int n, cap;
    int *step;
    double *loss;
    double val_accuracy;
    int has_val;
    /* sharing: the gate every job passes at its first step */
    struct gate *gate;
    int arrived;
} run_log;

static void log_free(run_log *l)
{
    free(l->step), free(l->loss);
    l->step = NULL, l->loss = NULL, l->n = l->cap = 0;
}

static void gate_arrive(struct gate *g);

static void on_progress(void *ctx, const train_progress *p)
{
    run_log *l = ctx;
    if (p->is_eval) {
        if (p->eval_split && !strcmp(p->eval_split, "validation"))
            l->val_accuracy = p->eval_accuracy, l->has_val = 1;
        return;
    }
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 64;
        int *s = realloc(l->step, sizeof(int) * (size_t)cap);
        if (s)
            l->step = s;
        double *x = realloc(l->loss, sizeof(double) * (size_t)cap);
        if (x)
            l->loss = x;
        if (!s || !x)
            return; /* out of memory: the step count then differs and the check fails */
        l->cap = cap;
    }
    l->step[l->n] = p->step;
    l->loss[l->n] = p->loss;
    l->n++;
    if (l->gate && !l->arrived) {
        l->arrived = 1;
        gate_arrive(l->gate);
    }
}

/* ------------------------------------------------------------------------------------------
 * parity */

/* ILL-CONDITIONED: how much further than the control the tested run may move (see below) */
#define ILL_FACTOR 10

static double rel_diff(double ref, double x)
{
    return ref == x ? 0.0 : fabs(x - ref) / fmax(fabs(ref), 1e-30);
}

static int check_parity(const options *o, const sherl_backend *be, const char *model,
                        const char *data, const char *work)
{
    int bf16 = !strcmp(o->precision, "bf16");
    double tol = o->tol > 0 ? o->tol : bf16 ? 2e-2 : 1e-4, acc_tol = 0.01;
    int threads = o->threads >= 0 ? o->threads : 0;
    char out_ref[PATH_MAX + 64], out_test[PATH_MAX + 64];
    const char *rp = o->ref_precision;
    snprintf(out_ref, sizeof out_ref, "%s/parity-cpu-%s", work, rp);
    snprintf(out_test, sizeof out_test, "%s/parity-%s-%s", work, be->name, o->precision);
    remove_tree(out_ref);
    remove_tree(out_test);

    char desc[256] = "";
    be->describe(desc, sizeof desc);
    printf(PROG ": parity: %s %s against cpu %s; %d steps, batch %d, max_length %d, seed %d\n"
           "  tested backend: %s\n  model %s, data %s\n",
           be->name, o->precision, rp, o->steps, o->batch, o->max_length, SEED, desc, model, data);

    job_spec ref, test;
    sherl_status st = make_spec(&ref, o, model, data, "parity-cpu", rp, threads, out_ref, 0);
    if (st.code) {
        fprintf(stderr, PROG ": the reference spec: %s\n", st.msg);
        return 2;
    }
    run_log lr = {0}, lt = {0};
    train_result rr, rt;
    const sherl_backend *cpu = sherl_backend_cpu();
    train_hooks hr = {.on_progress = on_progress, .ctx = &lr, .backend = cpu};
    double t0 = now_s();
    st = train_run(&ref, &hr, &rr);
    double t_ref = now_s() - t0;
    if (st.code) {
        printf("parity: %s %s: FAIL (the reference run on cpu %s failed: %s)\n", be->name,
               o->precision, rp, st.msg);
        log_free(&lr);
        return 1;
    }
    printf("  cpu %s run: %d steps in %.2f s (%.1f steps/s), validation accuracy %.4f\n", rp,
           rr.steps, t_ref, rr.steps / (t_ref > 1e-9 ? t_ref : 1e-9), rr.val_accuracy);

    /* the tested run: its spec may be refused (precision), or train_run may refuse it */
    st = make_spec(&test, o, model, data, "parity-test", o->precision, threads, out_test,
                   o->graphs);
    if (!st.code) {
        train_hooks ht = {.on_progress = on_progress, .ctx = &lt, .backend = be};
        t0 = now_s();
        st = train_run(&test, &ht, &rt);
    }
    double t_test = now_s() - t0;
    if (st.code) {
        printf("parity: %s %s: FAIL (the run on %s %s failed: %s)\n", be->name, o->precision,
               be->name, o->precision, st.msg);
        log_free(&lr), log_free(&lt);
        return 1;
    }
    printf("  %s %s run: %d steps in %.2f s (%.1f steps/s), validation accuracy %.4f\n\n",
           be->name, o->precision, rt.steps, t_test, rt.steps / (t_test > 1e-9 ? t_test : 1e-9),
           rt.val_accuracy);
    int graph_fail = 0;
    if (o->graphs) { /* every pass must have run from a graph, or the check checked nothing */
        graph_fail = rt.graph_passes < rt.steps || rt.graph_captures < 1;
        printf("  graphs: %lld recorded, %lld of %d passes run from one%s%s%s\n\n",
               rt.graph_captures, rt.graph_passes, rt.steps,
               rt.graph_note[0] ? "; op by op because: " : "", rt.graph_note,
               graph_fail ? ": FAIL" : "");
    }

    /* --control 1: the same job as the reference on cpu-perturbed, so the table shows what
     * fp32 rounding alone does to this trajectory */
    run_log lc = {0};
    train_result rcr = {0};
    int controlled = 0;
    if (o->control) {
        char out_ctrl[PATH_MAX + 64];
        snprintf(out_ctrl, sizeof out_ctrl, "%s/parity-control", work);
        remove_tree(out_ctrl);
        job_spec ctrl;
        st = make_spec(&ctrl, o, model, data, "parity-control", "fp32", threads, out_ctrl, 0);
        if (!st.code) {
            train_hooks hc = {.on_progress = on_progress, .ctx = &lc,
                              .backend = perturbed_backend()};
            st = train_run(&ctrl, &hc, &rcr);
        }
        if (st.code) {
            printf("parity: %s %s: FAIL (the control run on cpu-perturbed failed: %s)\n",
                   be->name, o->precision, st.msg);
            log_free(&lr), log_free(&lt), log_free(&lc);
            return 1;
        }
        controlled = 1;
    }

    char col[64];
    snprintf(col, sizeof col, "%s %s loss", be->name, o->precision);
    char ref_col[32];
    snprintf(ref_col, sizeof ref_col, "cpu %s loss", rp);
    printf("  %5s  %14s  %22s  %10s%s\n", "step", ref_col, col, "rel diff",
           controlled ? "   cpu-perturbed rel diff" : "");
    double worst = 0, control_worst = 0;
    int worst_step = 0, failed = 0, first_bad = 0, control_bad = 0, other_failure = 0;
    int n = lr.n > lt.n ? lr.n : lt.n;
    for (int i = 0; i < n; i++) {
        if (i >= lr.n || i >= lt.n || lr.step[i] != lt.step[i]) {
            printf("  %5d  %14s  %22s  (steps differ)\n", i < lr.n ? lr.step[i] : lt.step[i],
                   i < lr.n ? "" : "-", i < lt.n ? "" : "-");
            failed = other_failure = 1;
            continue;
        }
        double rel = rel_diff(lr.loss[i], lt.loss[i]);
        int ok = rel <= tol; /* false for NaN */
        printf("  %5d  %14.9f  %22.9f  %10.3g%s", lr.step[i], lr.loss[i], lt.loss[i], rel,
               ok ? "" : "  > tol");
        if (!isfinite(lr.loss[i]) || !isfinite(lt.loss[i]))
            other_failure = 1; /* a NaN or infinite loss is never rounding's doing */
        if (controlled) {
            /* a control that lost a step is broken: no verdict can rest on it */
            double rc = NAN;
            if (i < lc.n && lc.step[i] == lr.step[i])
                rc = rel_diff(lr.loss[i], lc.loss[i]);
            else
                other_failure = 1;
            printf("%*s%10.3g%s", ok ? 17 : 10, "", rc, rc <= tol ? "" : "  > tol");
            if (!(rc <= tol) && !control_bad)
                control_bad = lr.step[i];
            if (!(rc <= control_worst))
                control_worst = rc;
        }
        printf("\n");
        if (!ok) {
            failed = 1;
            if (!first_bad)
                first_bad = lr.step[i];
        }
        if (!(rel <= worst)) /* NaN sticks */
            worst = rel, worst_step = lr.step[i];
    }
    if (lr.n != o->steps || lt.n != o->steps || (controlled && lc.n != o->steps)) {
        printf("  expected %d steps: cpu logged %d, %s logged %d", o->steps, lr.n, be->name,
               lt.n);
        if (controlled)
            printf(", the control %d", lc.n);
        printf("\n");
        failed = other_failure = 1;
    }
    if (controlled && control_bad)
        printf("\n  control: cpu-perturbed left the tolerance first at step %d, worst rel diff "
               "%.3g\n", control_bad, control_worst);
    else if (controlled)
        printf("\n  control: cpu-perturbed stayed within the tolerance (worst rel diff %.3g)\n",
               control_worst);
    printf("\n  validation: cpu %s accuracy %.4f loss %.6f; %s %s accuracy %.4f loss %.6f\n",
           rp, rr.val_accuracy, rr.val_loss, be->name, o->precision, rt.val_accuracy, rt.val_loss);
    double acc_diff = fabs(rt.val_accuracy - rr.val_accuracy);
    if (!rr.has_val || !rt.has_val) {
        printf("  no validation result (cpu %d, %s %d)\n", rr.has_val, be->name, rt.has_val);
        failed = other_failure = 1;
    } else if (bf16) {
        int ok = acc_diff <= acc_tol + 1e-12;
        printf("  validation accuracy |diff| %.4f (tol %.2f)%s\n", acc_diff, acc_tol,
               ok ? "" : ": FAIL");
        if (!ok)
            failed = other_failure = 1;
    }
    if (graph_fail)
        failed = other_failure = 1;
    /* ILL-CONDITIONED: B failed on its losses alone, rounding alone (the control) left the
     * tolerance no later than B did, B's losses moved no more than ILL_FACTOR times as far as
     * the control's, and B's final validation accuracy is no further from the CPU's than the
     * control's is, plus acc_tol. Anything else wrong is a FAIL. */
    int ill = 0;
    if (failed && !other_failure && controlled && first_bad && control_bad &&
        control_bad <= first_bad) {
        double ctrl_acc = rcr.has_val ? fabs(rcr.val_accuracy - rr.val_accuracy) : INFINITY;
        int near = worst <= ILL_FACTOR * control_worst;
        int acc_ok = acc_diff <= ctrl_acc + acc_tol + 1e-12;
        printf("  %s moved %.3g times as far as the control (at most %g), validation accuracy "
               "|diff| %.4f against the control's %.4f + %.2f%s\n", be->name,
               control_worst > 0 ? worst / control_worst : INFINITY, (double)ILL_FACTOR, acc_diff,
               ctrl_acc, acc_tol, near && acc_ok ? "" : ": FAIL");
        ill = near && acc_ok;
    }
    char at[32] = "";
    if (!(worst <= 0))
        snprintf(at, sizeof at, " at step %d", worst_step);
    printf("parity: %s %s%s: %s worst rel diff %.3g%s (tol %.0e)\n", be->name, o->precision,
           o->graphs ? " graphs" : "", ill ? "ILL-CONDITIONED" : failed ? "FAIL" : "PASS", worst,
           at, tol);
    if (ill)
        printf("  (the CPU with its products nudged by 1 ulp left the tolerance at step %d, "
               "%s at step %d: on this trajectory the losses cannot tell %s's error from "
               "rounding)\n", control_bad, be->name, first_bad, be->name);
    log_free(&lr), log_free(&lt), log_free(&lc);
    return ill ? 3 : failed ? 1 : 0;
}

/* ------------------------------------------------------------------------------------------
 * sharing */

/* Holds every job at its first step until all are there (or have failed), so that the jobs'
 * memory overlaps; the last to arrive samples the memory with all of them resident. */
struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n, arrived, failed, open;
    size_t (*sample)(void);
    size_t at_gate; /* the sample taken when every job was there */
};

static void gate_check_locked(struct gate *g)
{
    if (!g->open && g->arrived + g->failed >= g->n) {
        if (g->arrived == g->n)
            g->at_gate = g->sample();
        g->open = 1;
        pthread_cond_broadcast(&g->cv);
    }
}

static void gate_arrive(struct gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->arrived++;
    gate_check_locked(g);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 600; /* never hang the test: a job that never comes is reported below */
    while (!g->open)
        if (pthread_cond_timedwait(&g->cv, &g->mu, &until) == ETIMEDOUT) {
            g->open = 1;
            break;
        }
    pthread_mutex_unlock(&g->mu);
}

static void gate_job_ended(struct gate *g, int arrived)
{
    pthread_mutex_lock(&g->mu);
    if (!arrived) {
        g->failed++;
        gate_check_locked(g);
    }
    pthread_mutex_unlock(&g->mu);
}

/* memory samples: device used bytes, or the process's RSS */
static const sherl_backend *sample_be;
static size_t sample_device(void)
{
    size_t f = 0, t = 0;
    if (sample_be->mem_info(&f, &t))
        return 0;
    return t - f;
}
static size_t sample_rss(void)
{
    memstat m;
    return memstat_read(&m) ? 0 : m.rss;
}

typedef struct {
    size_t (*sample)(void);
    volatile int stop;
    size_t max;
    long samples;
    pthread_mutex_t mu;
} monitor;

static void *monitor_main(void *arg)
{
    monitor *m = arg;
    struct timespec pause = {0, 2000000}; /* 2 ms */
    for (;;) {
        size_t s = m->sample();
        pthread_mutex_lock(&m->mu);
        if (s > m->max)
            m->max = s;
        m->samples++;
        int stop = m->stop;
        pthread_mutex_unlock(&m->mu);
        if (stop)
            break;
        nanosleep(&pause, NULL);
    }
    return NULL;
}

typedef struct {
    job_spec spec;
    train_hooks hooks;
    train_result res;
    run_log log;
    sherl_status st;
    struct gate *gate;
    double wall;
} job;

static void *job_main(void *arg)
{
    job *j = arg;
    double t0 = now_s();
    j->st = train_run(&j->spec, &j->hooks, &j->res);
    j->wall = now_s() - t0;
    if (j->gate)
        gate_job_ended(j->gate, j->log.arrived);
    return NULL;
}

static int start_thread(pthread_t *t, void *(*fn)(void *), void *arg)
{
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setstacksize(&at, 8u << 20);
    int rc = pthread_create(t, &at, fn, arg);
    pthread_attr_destroy(&at);
    return rc;
}

/* The final parameters of a finished run (its last checkpoint). */
static char *params_of(const job *j, long *n)
{
    char path[JOB_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/checkpoint/params-%08d.safetensors", j->spec.output,
             j->res.steps);
    return read_file(path, n);
}

static int check_sharing(const options *o, const sherl_backend *be, const char *model,
                         const char *data, const char *work)
{
    if (!strcmp(be->name, "cpu-guarded")) {
        fprintf(stderr, PROG ": sharing runs jobs on threads; the cpu-guarded backend is "
                        "single-threaded: use cpu or cuda\n");
        return 2;
    }
    int N = o->jobs;
    int device = !be->host_memory && be->mem_info != NULL;
    double tol = o->tol > 0 ? o->tol : device ? 0.05 : 0.10;
    /* on the host, one OpenMP thread per job: N jobs share the cores as the daemon's do */
    int threads = o->threads >= 0 ? o->threads : device ? 0 : 1;
    char desc[256] = "";
    be->describe(desc, sizeof desc);
    printf(PROG ": sharing: %d concurrent SHERL jobs x %d steps on one %s backbone; batch %d, "
           "max_length %d, seed %d\n  backend: %s\n  model %s, data %s\n",
           N, o->steps, be->name, o->batch, o->max_length, SEED, desc, model, data);
    sample_be = be;
    size_t (*sample)(void) = device ? sample_device : sample_rss;
    if (device) {
        size_t f, t;
        if (be->mem_info(&f, &t)) {
            fprintf(stderr, PROG ": %s: mem_info failed\n", be->name);
            return 1;
        }
    }

    job *jobs = calloc((size_t)N + 1, sizeof *jobs); /* + 1: the single (or warm-up) run */
    pthread_t *th = calloc((size_t)N, sizeof *th);
    struct gate g = {.n = N, .sample = sample};
    pthread_mutex_init(&g.mu, NULL);
    pthread_cond_init(&g.cv, NULL);
    int rc = 0;
    if (!jobs || !th) {
        fprintf(stderr, PROG ": out of memory\n");
        free(jobs), free(th);
        return 2;
    }
    for (int i = 0; i <= N; i++) {
        char name[32], out[PATH_MAX + 64];
        if (i < N)
            snprintf(name, sizeof name, "share-%d", i + 1);
        else
            snprintf(name, sizeof name, "%s", device ? "warmup" : "single");
        snprintf(out, sizeof out, "%s/%s", work, name);
        remove_tree(out);
        sherl_status st = make_spec(&jobs[i].spec, o, model, data, name, "fp32", threads, out, 0);
        if (st.code) {
            fprintf(stderr, PROG ": the job spec: %s\n", st.msg);
            free(jobs), free(th);
            return 2;
        }
        jobs[i].hooks.on_progress = on_progress;
        jobs[i].hooks.ctx = &jobs[i].log;
        jobs[i].hooks.backend = be;
    }

    /* the baseline: on a device, after a one-step job (with its own backbone) on a thread that
     * then exits, so the context, the libraries' and kernels' code are loaded and not counted */
    size_t warm_before = 0;
    if (device) {
        warm_before = sample();
        job *w = &jobs[N];
        w->spec.max_steps = 1;
        pthread_t wt;
        if (start_thread(&wt, job_main, w)) {
            fprintf(stderr, PROG ": pthread_create failed\n");
            free(jobs), free(th);
            return 2;
        }
        pthread_join(wt, NULL);
        if (w->st.code) {
            printf("sharing: %s %d jobs: FAIL (the warm-up job failed: %s)\n", be->name, N,
                   w->st.msg);
            log_free(&w->log);
            free(jobs), free(th);
            return 1;
        }
    }
    size_t base = sample();
    if (device)
        printf("  device memory in use: %.1f MiB before, %.1f MiB after a 1-step warm-up job "
               "(what stays once a backend is used, e.g. the CUDA context and the libraries' "
               "code: not counted)\n",
               mib((double)warm_before), mib((double)base));
    else
        printf("  process RSS before the backbone: %.1f MiB\n", mib((double)base));

    double t0 = now_s();
    bert_model *bb = NULL;
    sherl_status st = bert_load(&bb, model, be);
    if (st.code) {
        fprintf(stderr, PROG ": bert_load(%s) on %s: %s\n", model, be->name, st.msg);
        log_free(&jobs[N].log);
        free(jobs), free(th);
        return 2;
    }
    size_t after_bb = sample();
    printf("  backbone loaded in %.2f s: %d layers, hidden %d, vocab %d; memory +%.1f MiB\n",
           now_s() - t0, bb->cfg.num_hidden_layers, bb->cfg.hidden_size, bb->cfg.vocab_size,
           mib((double)after_bb - (double)base));

    monitor mon = {.sample = sample};
    pthread_mutex_init(&mon.mu, NULL);
    pthread_t mt;
    int have_monitor = start_thread(&mt, monitor_main, &mon) == 0;
    int started = 0;
    char *running = calloc((size_t)N, 1);
    t0 = now_s();
    for (int i = 0; i < N; i++) {
        jobs[i].hooks.backbone = bb;
        jobs[i].gate = &g;
        jobs[i].log.gate = &g;
        if (!running || start_thread(&th[i], job_main, &jobs[i])) {
            fprintf(stderr, PROG ": starting job %d's thread failed\n", i + 1);
            /* count it as failed at the gate so the others are not held */
            jobs[i].st = sherl_errorf(SHERL_EINTERNAL, "its thread could not be started");
            gate_job_ended(&g, 0);
            continue;
        }
        running[i] = 1;
        started++;
    }
    for (int i = 0; i < N; i++)
        if (running && running[i])
            pthread_join(th[i], NULL);
    free(running);
    double t_jobs = now_s() - t0;
    if (have_monitor) {
        pthread_mutex_lock(&mon.mu);
        mon.stop = 1;
        pthread_mutex_unlock(&mon.mu);
        pthread_join(mt, NULL);
    }
    size_t peak = mon.max > g.at_gate ? mon.max : g.at_gate;

    int failed = 0;
    printf("  %d jobs ran together in %.2f s:\n", started, t_jobs);
    for (int i = 0; i < N; i++) {
        job *j = &jobs[i];
        if (j->st.code) {
            printf("    job %d: FAILED: %s\n", i + 1, j->st.msg);
            failed = 1;
        } else {
            printf("    job %d: %d steps in %.2f s, final train loss %.6f, validation accuracy "
                   "%.4f\n", i + 1, j->res.steps, j->wall, j->res.final_train_loss,
                   j->res.val_accuracy);
            if (j->res.steps != o->steps)
                failed = 1;
        }
    }
    if (!g.at_gate || g.arrived != N) {
        printf("  not every job reached its first step together (%d of %d did)\n", g.arrived, N);
        failed = 1;
    }

    /* expected: the backbone once plus each job's own planned bytes */
    const memory_plan *plan = NULL;
    for (int i = 0; i < N && !plan; i++)
        if (!jobs[i].st.code)
            plan = &jobs[i].res.plan;
    double ratio = 0;
    int rss_checked = 1;
    if (plan) {
        printf("\n  each job's plan (the same for all):\n");
        memory_plan_print(stdout, plan);
        for (int i = 0; i < N; i++)
            if (!jobs[i].st.code && (jobs[i].res.plan.arena_bytes != plan->arena_bytes ||
                                     jobs[i].res.plan.peak_bytes != plan->peak_bytes)) {
                printf("  job %d's plan differs: arenas %zu, peak %zu bytes\n", i + 1,
                       jobs[i].res.plan.arena_bytes, jobs[i].res.plan.peak_bytes);
                failed = 1;
            }
        size_t backbone = plan->backbone_bytes;
        /* on the host, the BLAS packing pool is the process's, shared by its jobs: once */
        const plan_item *lib = memory_plan_find(plan, "BLAS packing buffers");
        size_t shared = backbone + (!device && lib ? lib->bytes : 0);
        size_t own = device ? plan->arena_bytes - backbone : plan->peak_bytes - shared;
        double expected = (double)shared + (double)N * (double)own;
        double measured = (double)peak - (double)base;
        double at_gate = (double)g.at_gate - (double)base;
        ratio = measured / expected;
        int ok = fabs(ratio - 1.0) <= tol;
#ifdef RSS_UNRELIABLE
        if (!device) {
            rss_checked = 0;
            ok = 1;
        }
#endif
        printf("\n  %s: measured %.2f MiB (max of %ld samples over the run; %.2f MiB with all %d "
               "jobs at their first step)\n",
               device ? "device memory used" : "process RSS growth", mib(measured), mon.samples,
               mib(at_gate), N);
        printf("  expected: backbone %.2f MiB%s + %d x job's %s %.2f MiB = %.2f MiB\n",
               mib((double)shared), shared > backbone ? " and BLAS packing buffers" : "", N,
               device ? "arenas" : "planned peak less those", mib((double)own), mib(expected));
        printf("  ratio measured / expected %.4f (tol %.0f%%)%s; a backbone copy per job would "
               "give %.2f\n",
               ratio, tol * 100, !rss_checked ? ": not checked in " RSS_NOTE : ok ? "" : ": FAIL",
               ((double)N * (double)backbone + (double)(shared - backbone) +
                (double)N * (double)own) / expected);
        if (!ok)
            failed = 1;
    } else {
        failed = 1;
    }

    /* the parameters: every job against a single run alone (checked on the host, where the
     * memory number is the noisier one; shown for information on a device) */
    const char *param_check = "parameters not compared";
    if (plan) {
        job *s = &jobs[N];
        sherl_status sst = sherl_ok();
        if (device) { /* the warm-up's slot becomes the single run */
            char out[PATH_MAX + 64];
            snprintf(out, sizeof out, "%s/single", work);
            remove_tree(out);
            log_free(&s->log);
            sst = make_spec(&s->spec, o, model, data, "single", "fp32", threads, out, 0);
        }
        s->hooks.backbone = bb;
        s->gate = NULL;
        s->log.gate = NULL;
        if (!sst.code) {
            job_main(s);
            sst = s->st;
        }
        if (sst.code) {
            printf("  the single run failed: %s\n", sst.msg);
            failed = 1;
        } else {
            long ns = 0;
            char *ps = params_of(s, &ns);
            int same = 0, compared = 0;
            for (int i = 0; i < N && ps; i++) {
                if (jobs[i].st.code)
                    continue;
                long nj = 0;
                char *pj = params_of(&jobs[i], &nj);
                compared++;
                same += pj && nj == ns && !memcmp(pj, ps, (size_t)ns);
                free(pj);
            }
            printf("  parameters: %d of %d jobs bit-identical to a single run alone (%d steps)%s\n",
                   same, compared, s->res.steps,
                   device ? " (for information on a device)" : "");
            if (!device) {
                param_check = "parameters identical to a single run";
                if (!ps || same != N)
                    failed = 1;
            }
            free(ps);
        }
    }
    if (rss_checked)
        printf("sharing: %s %d jobs: %s (checked: %s within %.0f%% of backbone + %d x job plan, "
               "ratio %.4f%s%s)\n",
               be->name, N, failed ? "FAIL" : "PASS", device ? "device memory" : "RSS growth",
               tol * 100, N, ratio, device ? "" : "; ", device ? "" : param_check);
    else
        printf("sharing: %s %d jobs: %s (checked: %s only; RSS growth not checked in "
               RSS_NOTE ", ratio %.4f)\n",
               be->name, N, failed ? "FAIL" : "PASS", param_check, ratio);
    rc = failed ? 1 : 0;

    bert_free(bb);
    for (int i = 0; i <= N; i++)
        log_free(&jobs[i].log);
    free(jobs), free(th);
    pthread_mutex_destroy(&g.mu);
    pthread_cond_destroy(&g.cv);
    pthread_mutex_destroy(&mon.mu);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    options o;
    int a = parse_args(argc, argv, &o);
    if (a)
        return a == 1 ? 0 : 2;
    if (o.ffn_rows)
        bert_set_ffn_device_rows(o.ffn_rows);
    const sherl_backend *be;
    switch (pick_backend(o.backend, &be)) {
    case BE_OK:
        break;
    case BE_NO_GPU:
        return 0;
    case BE_FAIL:
        return 1;
    case BE_BAD:
        return 2;
    }
    char model[PATH_MAX], data[PATH_MAX], work[PATH_MAX];
    if (!realpath(o.model, model)) {
        fprintf(stderr, PROG ": --model %s: %s\n", o.model, strerror(errno));
        return 2;
    }
    if (!realpath(o.data, data)) {
        fprintf(stderr, PROG ": --data %s: %s\n", o.data, strerror(errno));
        return 2;
    }
    char probe[PATH_MAX + 32];
    const char *need[] = {"train.jsonl", "validation.jsonl"};
    for (int i = 0; i < 2; i++) {
        snprintf(probe, sizeof probe, "%s/%s", data, need[i]);
        if (access(probe, R_OK)) {
            fprintf(stderr, PROG ": %s: %s\n", probe, strerror(errno));
            return 2;
        }
    }
    int temp = !o.work;
    if (temp) {
        snprintf(work, sizeof work, "/tmp/" PROG ".XXXXXX");
        if (!mkdtemp(work)) {
            fprintf(stderr, PROG ": mkdtemp: %s\n", strerror(errno));
            return 2;
        }
    } else {
        if (mkdir_p(o.work) || !realpath(o.work, work)) {
            fprintf(stderr, PROG ": --work %s: %s\n", o.work, strerror(errno));
            return 2;
        }
    }
    int rc = !strcmp(o.mode, "parity") ? check_parity(&o, be, model, data, work)
                                       : check_sharing(&o, be, model, data, work);
    if (temp)
        remove_tree(work);
    return rc;
}
