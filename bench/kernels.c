/* bench_kernels: achieved throughput of the large ops of a BERT-base training step, called
 * through the op table of one backend, next to ceilings measured in the same run (device copy
 * bandwidth, a large bf16 GEMM, a large fp32 GEMM). Prints numbers; never fails on a timing.
 *
 *   bench_kernels [--backend cuda|cpu] [--rounds 5] [--only SUBSTR] [--json FILE]
 *
 * Per op: one warm-up call, then a calibrating call sets how many calls one timed region holds
 * (enough to last >= 20 ms), then --rounds timed regions; the median time per call is reported.
 * Every region is bracketed by be->synchronize() before the clock (CLOCK_MONOTONIC) is read.
 * Shapes: batch 64 x 128 tokens on a GPU (N = 8192 rows), 16 x 128 on the CPU so that a run on a
 * small machine ends within a minute; C = 768, FF = 3072, NH = 12, HS = 64. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "bench_util.h"
#include "kernels.h"

#define PROG "bench_kernels"
#define MIN_REGION_S 0.020 /* each timed region lasts at least this long */
#define MAX_REPS 100000

static const sherl_backend *be;

static void fail(const char *what, const char *msg)
{
    fprintf(stderr, PROG ": %s: %s\n", what, msg);
    exit(1);
}

/* be->alloc, or exit 1 naming the bytes */
static void *balloc(size_t bytes, const char *what)
{
    void *p = be->alloc(bytes);
    if (!p) {
        char msg[512] = "";
        be->take_error(msg, sizeof msg);
        fprintf(stderr,
                PROG ": cannot allocate %zu bytes (%.1f MiB) for %s on the %s backend%s%s\n", bytes,
                bytes / 1048576.0, what, be->name, msg[0] ? ": " : "", msg);
        exit(1);
    }
    return p;
}

static void bfree(void *p)
{
    if (p)
        be->free(p);
}

/* Random data (a 64-bit LCG, uniform in [lo, hi)) staged through a host buffer in chunks. */
#define STAGE_FLOATS ((size_t)1 << 22)
static uint64_t rng_state = 0x5eed5eed12345ull;

static float rnd(float lo, float hi)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return lo + (hi - lo) * (float)(rng_state >> 40) * (1.0f / 16777216.0f);
}

static void fill_f32(float *dst, size_t n, float lo, float hi)
{
    float *stage = malloc(sizeof(float) * STAGE_FLOATS);
    if (!stage)
        fail("host staging buffer", "out of memory");
    for (size_t off = 0; off < n; off += STAGE_FLOATS) {
        size_t k = n - off < STAGE_FLOATS ? n - off : STAGE_FLOATS;
        for (size_t i = 0; i < k; i++)
            stage[i] = rnd(lo, hi);
        be->copy_to_device(dst + off, stage, sizeof(float) * k);
    }
    free(stage);
}

static void fill_bf16(uint16_t *dst, size_t n, float lo, float hi)
{
    uint16_t *stage = malloc(sizeof(uint16_t) * STAGE_FLOATS);
    if (!stage)
        fail("host staging buffer", "out of memory");
    for (size_t off = 0; off < n; off += STAGE_FLOATS) {
        size_t k = n - off < STAGE_FLOATS ? n - off : STAGE_FLOATS;
        for (size_t i = 0; i < k; i++)
            stage[i] = sherl_f32_to_bf16(rnd(lo, hi));
        be->copy_to_device(dst + off, stage, sizeof(uint16_t) * k);
    }
    free(stage);
}

static float *rand_f32(size_t n, float lo, float hi, const char *what)
{
    float *p = balloc(sizeof(float) * n, what);
    fill_f32(p, n, lo, hi);
    return p;
}

static uint16_t *rand_bf16(size_t n, float lo, float hi, const char *what)
{
    uint16_t *p = balloc(sizeof(uint16_t) * n, what);
    fill_bf16(p, n, lo, hi);
    return p;
}

/* ---- the ops, as one switch over a state that holds every buffer ---- */

enum {
    OP_COPY, OP_GEMM_BF16_CEIL, OP_GEMM_F32_CEIL,
    OP_MM_QKV, OP_MM_FF1, OP_MM_FF2, OP_MM_FF1_BWD, OP_GEMM_BF16_FF1, OP_GEMM_BATCHED_SCORES,
    OP_LN_FWD, OP_LN_BWD, OP_GELU_FWD, OP_BIAS_GELU_HALF, OP_BIAS_HALF_ROUND, OP_RES_LN_HALF,
    OP_SOFTMAX_FWD,
    OP_ATTN_FWD, OP_ATTN_HALF_FWD, OP_ATTN_HALF_FUSED, OP_ATTN_HALF16, OP_ATTN_BWD,
    OP_MTSA_FWD, OP_MTSA_BWD, OP_ADAMW, OP_SUMSQ,
};

typedef struct {
    int B, T, N, C, FF, NH, HS; /* BERT shapes; N = B*T rows */
    int K, MN, d;               /* MTSA: taps, tokens, width */
    size_t n_params;            /* adamw / sumsq */
    size_t copy_bytes;          /* ceiling: device copy */
    int S;                      /* ceiling: GEMM S x S x S */

    /* ceilings (allocated for their section only) */
    void *cp_src, *cp_dst;
    uint16_t *cb_a, *cb_b;
    float *cb_c, *cf_a, *cf_b, *cf_c;
    /* Linear and LayerNorm */
    float *x, *ln_out, *ln_mean, *ln_rstd, *ln_w, *ln_b, *dx_c, *dln_w, *dln_b, *dout_c;
    float *w_qkv, *b_qkv, *qkv, *w1, *b1, *h1, *g1, *w2, *b2, *out2, *dw1, *db1;
    uint16_t *x16, *w1_16, *g16, *ln16, *qkv16; /* g16 [N,FF], ln16 [N,C], qkv16 [N,3C]: the
                                                 * fused tails' outputs */
    float *c16; /* fp32 output of the bf16 FF1 product */
    /* attention */
    float *q, *k, *scores, *mask, *probs_sm, *attn_out, *probs, *dqkv;
    /* MTSA */
    float *mx, *mw, *mc, *mz, *ms, *mrho, *malpha, *mdz, *mdx, *mdw, *mdc;
    /* optimizer */
    float *p, *g, *m, *v;
    volatile double sink;
} state;

static void run_op(state *s, int op)
{
    const int N = s->N, C = s->C, FF = s->FF;
    switch (op) {
    case OP_COPY:
        be->copy_device(s->cp_dst, s->cp_src, s->copy_bytes);
        break;
    case OP_GEMM_BF16_CEIL:
        be->gemm_bf16(0, 0, s->S, s->S, s->S, 1.0f, s->cb_a, s->S, s->cb_b, s->S, 0.0f, s->cb_c,
                      s->S);
        break;
    case OP_GEMM_F32_CEIL:
        be->gemm(0, 0, s->S, s->S, s->S, 1.0f, s->cf_a, s->S, s->cf_b, s->S, 0.0f, s->cf_c, s->S);
        break;
    case OP_MM_QKV:
        be->matmul_forward(s->qkv, s->x, s->w_qkv, s->b_qkv, N, C, 3 * C);
        break;
    case OP_MM_FF1:
        be->matmul_forward(s->h1, s->x, s->w1, s->b1, N, C, FF);
        break;
    case OP_MM_FF2:
        be->matmul_forward(s->out2, s->g1, s->w2, s->b2, N, FF, C);
        break;
    case OP_MM_FF1_BWD: /* dout = g1 [N,FF], inp = x [N,C], weight = w1 [FF,C] */
        be->matmul_backward(s->dx_c, s->dw1, s->db1, s->g1, s->x, s->w1, N, C, FF);
        break;
    case OP_GEMM_BF16_FF1: /* c16[N,FF] = x16[N,C] . w1_16[FF,C]^T */
        be->gemm_bf16(0, 1, N, FF, C, 1.0f, s->x16, C, s->w1_16, C, 0.0f, s->c16, FF);
        break;
    case OP_GEMM_BATCHED_SCORES: /* per (b,h): scores[T,T] = q[T,HS] . k[T,HS]^T / sqrt(HS) */
        be->gemm_strided_batched(0, 1, s->T, s->T, s->HS, 1.0f / sqrtf((float)s->HS), s->q, s->HS,
                                 (long long)s->T * s->HS, s->k, s->HS, (long long)s->T * s->HS,
                                 0.0f, s->scores, s->T, (long long)s->T * s->T, s->B * s->NH);
        break;
    case OP_LN_FWD:
        be->layernorm_forward(s->ln_out, s->ln_mean, s->ln_rstd, s->x, s->ln_w, s->ln_b, N, C,
                              1e-12f);
        break;
    case OP_LN_BWD:
        be->layernorm_backward(s->dx_c, s->dln_w, s->dln_b, s->dout_c, s->x, s->ln_w, s->ln_mean,
                               s->ln_rstd, N, C);
        break;
    case OP_GELU_FWD:
        be->gelu_forward(s->g1, s->h1, (size_t)N * FF);
        break;
    case OP_BIAS_GELU_HALF: /* g16 = bf16(gelu(g1 + b1)): a half FF1's tail */
        be->bias_gelu_half_forward(s->g16, s->g1, s->b1, N, FF, SHERL_HALF_BF16);
        break;
    case OP_BIAS_HALF_ROUND: /* qkv = bf16(qkv + b_qkv) widened, qkv16 = its bits: a half Q|K|V's
                              * tail (in place: repeats keep adding the bias, harmlessly) */
        be->bias_half_round_forward(s->qkv, s->qkv16, s->b_qkv, N, 3 * C, SHERL_HALF_BF16);
        break;
    case OP_RES_LN_HALF: /* out2 = dout_c + b2 + x; ln_out = LN(out2); ln16 = bf16(ln_out) */
        be->residual_layernorm_forward(s->ln_out, s->ln16, s->out2, s->ln_mean, s->ln_rstd,
                                       s->dout_c, s->b2, s->x, s->ln_w, s->ln_b, N, C, 1e-12f,
                                       SHERL_HALF_BF16);
        break;
    case OP_SOFTMAX_FWD:
        be->softmax_forward(s->probs_sm, s->scores, s->mask, 1.0f / sqrtf((float)s->HS), s->B,
                            s->NH, s->T, s->T);
        break;
    case OP_ATTN_FWD:
        be->attention_forward(s->attn_out, s->probs, s->qkv, s->mask, s->B, s->T, s->NH, s->HS);
        break;
    case OP_ATTN_HALF_FWD: /* a bf16 layer's: on a GPU both products on TF32 tensor cores */
        be->attention_half_forward(s->attn_out, s->probs, s->qkv, s->mask, s->B, s->T, s->NH,
                                   s->HS, SHERL_HALF_BF16);
        break;
    case OP_ATTN_HALF_FUSED: /* a forward-only bf16 layer's: no probabilities (fused on a GPU) */
        be->attention_half_forward(s->attn_out, NULL, s->qkv, s->mask, s->B, s->T, s->NH, s->HS,
                                   SHERL_HALF_BF16);
        break;
    case OP_ATTN_HALF16: /* a frozen bf16 layer's as the engine runs it: Q|K|V and out as halves */
        be->attention_half16_forward(s->ln16, s->qkv16, s->mask, s->B, s->T, s->NH, s->HS,
                                     SHERL_HALF_BF16);
        break;
    case OP_ATTN_BWD: /* dout = dout_c [N,C] */
        be->attention_backward(s->dqkv, s->dout_c, s->qkv, s->probs, s->B, s->T, s->NH, s->HS);
        break;
    case OP_MTSA_FWD:
        be->mtsa_guide_forward(s->mz, s->ms, s->mrho, s->malpha, s->mx, s->mw, s->mc, s->K, s->MN,
                               s->d);
        break;
    case OP_MTSA_BWD:
        be->mtsa_guide_backward(s->mdx, s->mdw, s->mdc, s->mdz, s->mx, s->mw, s->ms, s->mrho,
                                s->malpha, s->K, s->MN, s->d);
        break;
    case OP_ADAMW: /* lr small enough that thousands of repeats leave the data ordinary */
        be->adamw_update(s->p, s->g, s->m, s->v, s->n_params, 1e-6f, 0.9f, 0.999f, 1e-8f, 0.01f,
                         10);
        break;
    case OP_SUMSQ:
        s->sink = be->sumsq(s->g, s->n_params);
        break;
    }
}

/* Median seconds per call of op over `rounds` timed regions. */
static double measure(state *s, int op, int rounds, const char *name)
{
    be->synchronize();
    run_op(s, op); /* warm-up: scratch, library handles, page-ins */
    be->synchronize();
    double t0 = bench_now();
    run_op(s, op);
    be->synchronize();
    double t1 = bench_now() - t0;
    int reps = t1 >= MIN_REGION_S ? 1 : (int)ceil(MIN_REGION_S / (t1 > 1e-7 ? t1 : 1e-7));
    if (reps > MAX_REPS)
        reps = MAX_REPS;
    double *t = malloc(sizeof(double) * rounds);
    if (!t)
        fail("timing buffer", "out of memory");
    for (int r = 0; r < rounds; r++) {
        be->synchronize();
        t0 = bench_now();
        for (int i = 0; i < reps; i++)
            run_op(s, op);
        be->synchronize();
        t[r] = (bench_now() - t0) / reps;
    }
    double med = bench_median(t, rounds);
    free(t);
    char msg[512];
    if (be->take_error(msg, sizeof msg))
        fail(name, msg);
    return med;
}

/* ---- results ---- */

enum { CEIL_NONE, CEIL_BF16, CEIL_F32, CEIL_COPY };

typedef struct {
    char op[48], shape[64];
    double ms, achieved;
    const char *unit; /* "TFLOP/s" or "GB/s" */
    int ceiling;      /* which ceiling the % is against; CEIL_NONE for the ceilings themselves */
    int is_ceiling;
} row;

static row rows[32];
static int n_rows;
static double ceil_val[4];

/* Measures op and appends its row: work is flops (TFLOP/s) or bytes (GB/s). */
static const char *only; /* --only: the rows whose op contains it (and the ceilings) */

static void bench(state *s, int op, int rounds, const char *name, const char *shape, double work,
                  int ceiling, int is_ceiling)
{
    if (only && !is_ceiling && !strstr(name, only))
        return;
    fprintf(stderr, PROG ": %-28s %s ...\n", name, shape);
    double t = measure(s, op, rounds, name);
    row *r = &rows[n_rows++];
    snprintf(r->op, sizeof r->op, "%s", name);
    snprintf(r->shape, sizeof r->shape, "%s", shape);
    r->ms = t * 1e3;
    r->unit = ceiling == CEIL_COPY ? "GB/s" : "TFLOP/s";
    r->achieved = ceiling == CEIL_COPY ? work / t * 1e-9 : work / t * 1e-12;
    r->ceiling = ceiling;
    r->is_ceiling = is_ceiling;
    if (is_ceiling)
        ceil_val[ceiling] = r->achieved;
}

static const char *ceil_name(int c)
{
    return c == CEIL_BF16  ? "bf16 gemm"
           : c == CEIL_F32 ? "fp32 gemm"
           : c == CEIL_COPY ? "copy"
                            : "";
}

static double pct(const row *r)
{
    return ceil_val[r->ceiling] > 0 ? 100.0 * r->achieved / ceil_val[r->ceiling] : NAN;
}

static int write_json(const char *path, const char *desc, const char *device, const state *s,
                      int rounds)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "bench", "kernels");
    cJSON_AddStringToObject(root, "backend", be->name);
    cJSON_AddStringToObject(root, "describe", desc);
    if (device[0])
        cJSON_AddStringToObject(root, "device", device);
    cJSON_AddNumberToObject(root, "rounds", rounds);
    cJSON *sh = cJSON_AddObjectToObject(root, "shape");
    cJSON_AddNumberToObject(sh, "B", s->B);
    cJSON_AddNumberToObject(sh, "T", s->T);
    cJSON_AddNumberToObject(sh, "N", s->N);
    cJSON_AddNumberToObject(sh, "C", s->C);
    cJSON_AddNumberToObject(sh, "FF", s->FF);
    cJSON_AddNumberToObject(sh, "NH", s->NH);
    cJSON_AddNumberToObject(sh, "HS", s->HS);
    cJSON_AddNumberToObject(sh, "mtsa_K", s->K);
    cJSON_AddNumberToObject(sh, "mtsa_N", s->MN);
    cJSON_AddNumberToObject(sh, "mtsa_d", s->d);
    cJSON_AddNumberToObject(sh, "adamw_params", (double)s->n_params);
    cJSON *arr = cJSON_AddArrayToObject(root, "rows");
    for (int i = 0; i < n_rows; i++) {
        const row *r = &rows[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "op", r->op);
        cJSON_AddStringToObject(o, "shape", r->shape);
        cJSON_AddNumberToObject(o, "time_ms", r->ms);
        cJSON_AddNumberToObject(o, "achieved", r->achieved);
        cJSON_AddStringToObject(o, "unit", r->unit);
        cJSON_AddBoolToObject(o, "ceiling", r->is_ceiling);
        if (r->is_ceiling) {
            cJSON_AddNullToObject(o, "pct_of_ceiling");
        } else {
            cJSON_AddStringToObject(o, "vs", ceil_name(r->ceiling));
            double p = pct(r);
            if (isnan(p))
                cJSON_AddNullToObject(o, "pct_of_ceiling");
            else
                cJSON_AddNumberToObject(o, "pct_of_ceiling", p);
        }
        cJSON_AddItemToArray(arr, o);
    }
    return bench_write_json(path, root);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: " PROG " [--backend cuda|cpu] [--rounds 5] [--only SUBSTR] [--json FILE]\n"
               "  --only SUBSTR: only the ops whose name contains SUBSTR, beside the ceilings\n");
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        }
    int rounds = 5;
    const char *backend = NULL, *json = NULL;
    bench_int_opt opts[] = {{"--rounds", &rounds}};
    const char *str_names[] = {"--backend", "--json", "--only"};
    const char *str_values[] = {NULL, NULL, NULL};
    if (bench_parse(PROG, argc, argv, 1, opts, 1, str_names, str_values, 3)) {
        usage(stderr);
        return 2;
    }
    backend = str_values[0], json = str_values[1], only = str_values[2];

    sherl_device_info dev[8];
    char why[256] = "";
    int ended = bench_backend(PROG, backend, &be);
    if (ended >= 0)
        return ended;
    const int gpu = strcmp(be->name, "cpu") != 0;

    char desc[256] = "", device[1024] = "";
    be->describe(desc, sizeof desc);
    if (gpu) {
        int n = sherl_cuda_devices(dev, 8, why, sizeof why);
        if (n > 0)
            snprintf(device, sizeof device, "%s (sm_%d%d, %d SMs, %.1f GiB)", dev[0].name,
                     dev[0].cc_major, dev[0].cc_minor, dev[0].multiprocessors,
                     dev[0].total_bytes / 1073741824.0);
        else
            snprintf(device, sizeof device, "unknown (%s)", why);
    }

    state st_, *s = &st_;
    memset(s, 0, sizeof *s);
    s->B = gpu ? 64 : 16, s->T = 128, s->C = 768, s->FF = 3072, s->NH = 12, s->HS = 64;
    s->N = s->B * s->T;
    s->K = 12, s->MN = 8192, s->d = 96;
    s->n_params = gpu ? (size_t)110000000 : (size_t)5000000;
    s->copy_bytes = gpu ? (size_t)1 << 30 : (size_t)256 << 20;
    s->S = gpu ? 8192 : 2048;
    const int B = s->B, T = s->T, N = s->N, C = s->C, FF = s->FF, NH = s->NH, HS = s->HS;
    const int K = s->K, MN = s->MN, d = s->d, S = s->S;
    const size_t NC = (size_t)N * C, NFF = (size_t)N * FF, att = (size_t)B * NH * T * T;

    printf("backend: %s\n", desc);
    if (gpu)
        printf("device: %s\n", device);
    if (be->performance_advice && be->performance_advice())
        printf("note: %s\n", be->performance_advice());
    printf("shape: BERT-base step, batch %d x %d tokens (N = %d rows), C = %d, FF = %d, NH = %d, "
           "HS = %d; MTSA K = %d, N = %d, d = %d; AdamW %zu params; copy %zu MiB; ceiling "
           "GEMMs %d^3; %d rounds\n",
           B, T, N, C, FF, NH, HS, K, MN, d, s->n_params, s->copy_bytes >> 20, S, rounds);
    fflush(stdout);

    sherl_scratch_shape shape = {B, T, NH, HS, K, MN, d, s->n_params, be->get_threads(), FF, 1};
    if (be->prepare(&shape)) {
        char msg[512];
        be->take_error(msg, sizeof msg);
        fail("prepare", msg);
    }
    char sh[64];

    /* ---- ceilings, each section's buffers freed before the next ---- */
    s->cp_src = rand_f32(s->copy_bytes / sizeof(float), -1, 1, "copy source");
    s->cp_dst = balloc(s->copy_bytes, "copy destination");
    snprintf(sh, sizeof sh, "%zu MiB", s->copy_bytes >> 20);
    /* a copy reads and writes every byte */
    bench(s, OP_COPY, rounds, "copy_device", sh, 2.0 * s->copy_bytes, CEIL_COPY, 1);
    bfree(s->cp_src), bfree(s->cp_dst), s->cp_src = s->cp_dst = NULL;

    const double S3 = 2.0 * S * S * S;
    snprintf(sh, sizeof sh, "%dx%dx%d", S, S, S);
    s->cb_a = rand_bf16((size_t)S * S, -1, 1, "bf16 ceiling A");
    s->cb_b = rand_bf16((size_t)S * S, -1, 1, "bf16 ceiling B");
    s->cb_c = balloc(sizeof(float) * S * S, "bf16 ceiling C");
    bench(s, OP_GEMM_BF16_CEIL, rounds, "gemm_bf16 (ceiling)", sh, S3, CEIL_BF16, 1);
    bfree(s->cb_a), bfree(s->cb_b), bfree(s->cb_c), s->cb_a = s->cb_b = NULL, s->cb_c = NULL;

    s->cf_a = rand_f32((size_t)S * S, -1, 1, "fp32 ceiling A");
    s->cf_b = rand_f32((size_t)S * S, -1, 1, "fp32 ceiling B");
    s->cf_c = balloc(sizeof(float) * S * S, "fp32 ceiling C");
    bench(s, OP_GEMM_F32_CEIL, rounds, "gemm fp32 (ceiling)", sh, S3, CEIL_F32, 1);
    bfree(s->cf_a), bfree(s->cf_b), bfree(s->cf_c), s->cf_a = s->cf_b = s->cf_c = NULL;

    /* ---- BERT-shape buffers ---- */
    s->x = rand_f32(NC, -1, 1, "x [N,C]");
    s->ln_out = balloc(sizeof(float) * NC, "layernorm out");
    s->ln_mean = balloc(sizeof(float) * N, "layernorm mean");
    s->ln_rstd = balloc(sizeof(float) * N, "layernorm rstd");
    s->ln_w = rand_f32(C, 0.5f, 1.5f, "layernorm weight");
    s->ln_b = rand_f32(C, -0.1f, 0.1f, "layernorm bias");
    s->dx_c = rand_f32(NC, -0.01f, 0.01f, "dinp [N,C]");
    s->dln_w = rand_f32(C, -0.01f, 0.01f, "layernorm dweight");
    s->dln_b = rand_f32(C, -0.01f, 0.01f, "layernorm dbias");
    s->dout_c = rand_f32(NC, -0.01f, 0.01f, "dout [N,C]");
    s->w_qkv = rand_f32((size_t)3 * C * C, -0.05f, 0.05f, "qkv weight");
    s->b_qkv = rand_f32((size_t)3 * C, -0.05f, 0.05f, "qkv bias");
    s->qkv = balloc(sizeof(float) * 3 * NC, "qkv [N,3C]");
    s->w1 = rand_f32((size_t)FF * C, -0.05f, 0.05f, "FF1 weight");
    s->b1 = rand_f32(FF, -0.05f, 0.05f, "FF1 bias");
    s->h1 = balloc(sizeof(float) * NFF, "FF1 out [N,FF]");
    s->g1 = rand_f32(NFF, -1, 1, "GELU out [N,FF]");
    s->w2 = rand_f32((size_t)C * FF, -0.05f, 0.05f, "FF2 weight");
    s->b2 = rand_f32(C, -0.05f, 0.05f, "FF2 bias");
    s->out2 = balloc(sizeof(float) * NC, "FF2 out [N,C]");
    s->dw1 = rand_f32((size_t)FF * C, -0.01f, 0.01f, "FF1 dweight");
    s->db1 = rand_f32(FF, -0.01f, 0.01f, "FF1 dbias");
    s->x16 = rand_bf16(NC, -1, 1, "bf16 x [N,C]");
    s->w1_16 = rand_bf16((size_t)FF * C, -0.05f, 0.05f, "bf16 FF1 weight");
    s->c16 = balloc(sizeof(float) * NFF, "bf16 FF1 out [N,FF]");
    s->g16 = balloc(sizeof(uint16_t) * NFF, "bf16 GELU out [N,FF]");
    s->ln16 = balloc(sizeof(uint16_t) * NC, "bf16 layernorm out [N,C]");
    s->qkv16 = rand_bf16((size_t)3 * NC, -1, 1, "bf16 Q|K|V [N,3C]"); /* for --only's rows */
    s->q = rand_f32(NC, -1, 1, "q [B*NH,T,HS]");
    s->k = rand_f32(NC, -1, 1, "k [B*NH,T,HS]");
    s->scores = balloc(sizeof(float) * att, "scores [B,NH,T,T]");
    s->probs_sm = balloc(sizeof(float) * att, "softmax out [B,NH,T,T]");
    s->attn_out = balloc(sizeof(float) * NC, "attention out [N,C]");
    s->probs = balloc(sizeof(float) * att, "attention probs [B,NH,T,T]");
    s->dqkv = rand_f32(3 * NC, -0.01f, 0.01f, "dqkv [N,3C]");
    {
        /* additive mask [B,T]: sequence b pads its last (7 b mod 32) tokens */
        float *hm = malloc(sizeof(float) * B * T);
        if (!hm)
            fail("host mask", "out of memory");
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++)
                hm[b * T + t] = t >= T - (7 * b) % 32 ? -10000.0f : 0.0f;
        s->mask = balloc(sizeof(float) * B * T, "mask [B,T]");
        be->copy_to_device(s->mask, hm, sizeof(float) * B * T);
        free(hm);
    }
    const size_t Kx = (size_t)K * MN * d, Sm = (size_t)MN * (K - 1);
    s->mx = rand_f32(Kx, -1, 1, "mtsa x [K,N,d]");
    s->mw = rand_f32(d, -0.5f, 0.5f, "mtsa w");
    s->mc = rand_f32(1, 0.1f, 0.2f, "mtsa c");
    s->mz = balloc(sizeof(float) * MN * d, "mtsa z [N,d]");
    s->ms = balloc(sizeof(float) * Sm, "mtsa s");
    s->mrho = balloc(sizeof(float) * Sm, "mtsa rho");
    s->malpha = balloc(sizeof(float) * Sm, "mtsa alpha");
    s->mdz = rand_f32((size_t)MN * d, -0.01f, 0.01f, "mtsa dz");
    s->mdx = rand_f32(Kx, -0.01f, 0.01f, "mtsa dx");
    s->mdw = rand_f32(d, -0.01f, 0.01f, "mtsa dw");
    s->mdc = rand_f32(1, -0.01f, 0.01f, "mtsa dc");
    {
        char msg[512];
        if (be->take_error(msg, sizeof msg))
            fail("filling the buffers", msg);
    }

    /* ---- GEMMs: 2 M N K flops each product ---- */
    snprintf(sh, sizeof sh, "%dx%d . %dx%d", N, C, C, 3 * C);
    bench(s, OP_MM_QKV, rounds, "matmul_forward QKV", sh, 2.0 * N * C * 3 * C, CEIL_F32, 0);
    snprintf(sh, sizeof sh, "%dx%d . %dx%d", N, C, C, FF);
    bench(s, OP_MM_FF1, rounds, "matmul_forward FF1", sh, 2.0 * N * C * FF, CEIL_F32, 0);
    snprintf(sh, sizeof sh, "%dx%d . %dx%d", N, FF, FF, C);
    bench(s, OP_MM_FF2, rounds, "matmul_forward FF2", sh, 2.0 * N * FF * C, CEIL_F32, 0);
    /* dinp and dweight: two products of N C FF each (the dbias column sum is not counted) */
    snprintf(sh, sizeof sh, "FF1 %dx%d->%d, dinp+dW+db", N, C, FF);
    bench(s, OP_MM_FF1_BWD, rounds, "matmul_backward FF1", sh, 4.0 * N * C * FF, CEIL_F32, 0);
    snprintf(sh, sizeof sh, "%dx%d . (%dx%d)^T", N, C, FF, C);
    bench(s, OP_GEMM_BF16_FF1, rounds, "gemm_bf16 FF1", sh, 2.0 * N * C * FF, CEIL_BF16, 0);
    snprintf(sh, sizeof sh, "%d x %dx%d . (%dx%d)^T", B * NH, T, HS, T, HS);
    bench(s, OP_GEMM_BATCHED_SCORES, rounds, "gemm_strided_batched QK^T", sh,
          2.0 * B * NH * T * T * HS, CEIL_F32, 0);

    /* ---- memory-bound ops: bytes read + written, 4 bytes a float ---- */
    snprintf(sh, sizeof sh, "%dx%d", N, C);
    /* forward reads inp [N,C], weight and bias [C]; writes out [N,C], mean and rstd [N] */
    bench(s, OP_LN_FWD, rounds, "layernorm_forward", sh, 4.0 * (2.0 * NC + 2.0 * C + 2.0 * N),
          CEIL_COPY, 0);
    /* backward reads dout and inp [N,C], weight [C], mean and rstd [N]; reads and writes
     * (accumulates) dinp [N,C], dweight and dbias [C] */
    bench(s, OP_LN_BWD, rounds, "layernorm_backward", sh,
          4.0 * (2.0 * NC + C + 2.0 * N + 2.0 * NC + 4.0 * C), CEIL_COPY, 0);
    snprintf(sh, sizeof sh, "%dx%d", N, FF);
    /* reads inp, writes out */
    bench(s, OP_GELU_FWD, rounds, "gelu_forward", sh, 4.0 * 2.0 * NFF, CEIL_COPY, 0);
    /* reads x [N,FF] and the bias, writes bf16 [N,FF] (what bias_add, gelu and the rounding
     * moved in three passes: 4 x 7 NFF bytes) */
    bench(s, OP_BIAS_GELU_HALF, rounds, "bias_gelu_half_forward", sh, 4.0 * NFF + 2.0 * NFF,
          CEIL_COPY, 0);
    snprintf(sh, sizeof sh, "%dx%d", N, 3 * C);
    /* reads x [N,3C] and the bias, writes x and its bf16 bits */
    bench(s, OP_BIAS_HALF_ROUND, rounds, "bias_half_round_forward", sh,
          (4.0 + 4.0 + 2.0) * 3 * NC, CEIL_COPY, 0);
    snprintf(sh, sizeof sh, "%dx%d", N, C);
    /* reads x and resid [N,C], writes res and out [N,C], the bf16 out, mean and rstd [N] */
    bench(s, OP_RES_LN_HALF, rounds, "residual_layernorm_forward", sh,
          4.0 * 4.0 * NC + 2.0 * NC + 4.0 * 2.0 * N, CEIL_COPY, 0);
    snprintf(sh, sizeof sh, "%dx%dx%dx%d + mask", B, NH, T, T);
    /* reads inp [B,NH,T,T] and mask [B,T], writes out [B,NH,T,T] */
    bench(s, OP_SOFTMAX_FWD, rounds, "softmax_forward", sh, 4.0 * (2.0 * att + (double)B * T),
          CEIL_COPY, 0);

    /* ---- attention: flops of its batched products (QK^T and P V forward; four backward) ---- */
    snprintf(sh, sizeof sh, "B=%d T=%d NH=%d HS=%d", B, T, NH, HS);
    bench(s, OP_ATTN_FWD, rounds, "attention_forward", sh, 4.0 * B * NH * T * T * HS, CEIL_F32, 0);
    bench(s, OP_ATTN_HALF_FWD, rounds, "attention_half_forward bf16", sh,
          4.0 * B * NH * T * T * HS, CEIL_BF16, 0);
    bench(s, OP_ATTN_HALF_FUSED, rounds, "attention_half_forward bf16 without probs", sh,
          4.0 * B * NH * T * T * HS, CEIL_BF16, 0);
    bench(s, OP_ATTN_HALF16, rounds, "attention_half16_forward bf16", sh,
          4.0 * B * NH * T * T * HS, CEIL_BF16, 0);
    bench(s, OP_ATTN_BWD, rounds, "attention_backward", sh, 8.0 * B * NH * T * T * HS, CEIL_F32,
          0);

    /* ---- MTSA guidance ---- */
    snprintf(sh, sizeof sh, "K=%d N=%d d=%d", K, MN, d);
    /* forward: reads x [K,N,d], writes z [N,d] (the saved s, rho, alpha [N,K-1], ~2.5% more,
     * and w [d] are not counted) */
    bench(s, OP_MTSA_FWD, rounds, "mtsa_guide_forward", sh, 4.0 * ((double)Kx + (double)MN * d),
          CEIL_COPY, 0);
    /* backward: reads x [K,N,d] and dz [N,d], reads and writes (accumulates) dx [K,N,d] (the
     * saved s, rho, alpha are not counted) */
    bench(s, OP_MTSA_BWD, rounds, "mtsa_guide_backward", sh,
          4.0 * (3.0 * (double)Kx + (double)MN * d), CEIL_COPY, 0);

    /* free the BERT-shape buffers before the optimizer's */
    float **fb[] = {&s->x, &s->ln_out, &s->ln_mean, &s->ln_rstd, &s->ln_w, &s->ln_b, &s->dx_c,
                    &s->dln_w, &s->dln_b, &s->dout_c, &s->w_qkv, &s->b_qkv, &s->qkv, &s->w1,
                    &s->b1, &s->h1, &s->g1, &s->w2, &s->b2, &s->out2, &s->dw1, &s->db1, &s->c16,
                    &s->q, &s->k, &s->scores, &s->mask, &s->probs_sm, &s->attn_out, &s->probs,
                    &s->dqkv, &s->mx, &s->mw, &s->mc, &s->mz, &s->ms, &s->mrho, &s->malpha,
                    &s->mdz, &s->mdx, &s->mdw, &s->mdc};
    for (size_t i = 0; i < sizeof fb / sizeof fb[0]; i++)
        bfree(*fb[i]), *fb[i] = NULL;
    bfree(s->x16), bfree(s->w1_16), bfree(s->g16), bfree(s->ln16), bfree(s->qkv16);
    s->x16 = s->w1_16 = s->g16 = s->ln16 = s->qkv16 = NULL;

    /* ---- optimizer ---- */
    const size_t P = s->n_params;
    s->p = rand_f32(P, -0.1f, 0.1f, "adamw param");
    s->g = rand_f32(P, -0.01f, 0.01f, "adamw grad");
    s->m = rand_f32(P, -0.001f, 0.001f, "adamw m");
    s->v = rand_f32(P, 0.0f, 1e-4f, "adamw v");
    snprintf(sh, sizeof sh, "%.0fM params", P / 1e6);
    /* reads p, g, m, v; writes p, m, v: 28 bytes an element */
    bench(s, OP_ADAMW, rounds, "adamw_update", sh, 28.0 * P, CEIL_COPY, 0);
    /* reads x once */
    bench(s, OP_SUMSQ, rounds, "sumsq", sh, 4.0 * P, CEIL_COPY, 0);
    bfree(s->p), bfree(s->g), bfree(s->m), bfree(s->v);

    char msg[512];
    if (be->take_error(msg, sizeof msg))
        fail("after the run", msg);

    /* ---- the table ---- */
    printf("\n%-26s %-30s %10s %10s %-8s %8s  %s\n", "op", "shape", "time ms", "achieved", "unit",
           "% ceil", "vs");
    for (int i = 0; i < n_rows; i++) {
        const row *r = &rows[i];
        char ach[32], pc[32];
        snprintf(ach, sizeof ach, strcmp(r->unit, "GB/s") ? "%.3f" : "%.1f", r->achieved);
        if (r->is_ceiling)
            snprintf(pc, sizeof pc, "ceiling");
        else
            snprintf(pc, sizeof pc, "%.1f", pct(r));
        printf("%-26s %-30s %10.3f %10s %-8s %8s%s%s\n", r->op, r->shape, r->ms, ach, r->unit, pc,
               r->is_ceiling ? "" : "  ", r->is_ceiling ? "" : ceil_name(r->ceiling));
    }
    if (json) {
        if (write_json(json, desc, device, s, rounds)) {
            fprintf(stderr, PROG ": cannot write %s\n", json);
            return 1;
        }
        printf("wrote %s\n", json);
    }
    return 0;
}
