/* bench_gpu_train: samples/s and peak memory of whole training steps (forward, backward,
 * gradient clipping, AdamW: the trainer's sequence) of sherl, late and full in the engine on
 * one backend, the frozen early route's TFLOP/s, and the bf16 GEMM ceiling measured in the same
 * run (after the methods, so its buffers are in no method's peak). Prints numbers; never fails
 * on a timing. bench/gpu_train puts them next to PyTorch's.
 *
 *   bench_gpu_train [--backend cuda|cpu|cpu-guarded|cuda-timed|cpu-timed]
 *                   [--precision fp32|bf16] [--batch 64]
 *                   [--seq 128]
 *                   [--layers L] [--hidden D] [--steps 10] [--warmup 3] [--profile-steps 2]
 *                   [--methods sherl,late,full] [--late-layers 1] [--tune-late 1]
 *                   [--ceiling S] [--threads N] [--json FILE] MODEL_DIR
 *
 * --layers / --hidden are checks: the model's config must have that shape. The batch is random
 * token ids with full attention masks and labels of 3 classes; MTSA dropout is 0 and the late
 * layer is trained (--tune-late 1), so the step is bench/gpu_train_torch.py's. Per method: the
 * model and its step arena are made, be->prepare reserves the op scratch, --warmup steps run,
 * then --steps timed steps (be->synchronize() before each clock read; the median is reported),
 * then --profile-steps steps with a synchronised clock at every phase boundary (the frozen
 * route's time and the breakdown come from these, never from the timed ones).
 *
 * Peak memory. Device backends (host_memory == 0): be->mem_info's used bytes (total - free)
 * before the backbone is loaded, and the most used after each stretch of steps (the engine
 * allocates everything up front, so the first step is already the peak); the difference counts
 * the backbone, the model's arenas, the op scratch and the cuBLAS workspace and kernels. The
 * CPU backend: VmHWM minus the RSS before the backbone was loaded (engine/memstat.h), counted
 * from before the load for the first method (the load's transient buffers included) and
 * restarted before each later one (the allocator may keep a freed method's blocks, so those can
 * read high: bench/gpu_train runs one method a process). Load-time transients on a device are
 * not sampled (the planner counts them as transient). The planner's planned
 * peak is printed beside it. --ceiling S: the GEMM ceilings' size (default 8192 on a device,
 * 2048 on the CPU; 0 skips them).
 * --graphs 1 (the default): each method's passes go through sherl_train_pass with graphs on, so
 * on a backend that captures graphs (CUDA) the warm-up's first pass is recorded and every later
 * one replayed; the output says how many were, and why not when they were not. --graphs 0: op by
 * op. The profiled steps always run op by op (a clock between phases).
 * --backend cpu-guarded: the CPU ops behind tests/unit/guarded_backend.c, which counts every
 * call: each method also prints its backend calls per timed step, by op. On a device each call
 * is at least one kernel launch or copy, so this counts a step's launches on a machine without
 * a GPU (times and memory mean nothing there: memory is mapped and protected per call).
 * --backend cuda-timed / cpu-timed: that backend behind the same wrappers in their timed mode
 * (timed_backend): every call synchronised on both sides and its time charged to its op, so
 * each method also prints where its timed steps went, op by op (ms per step, calls, share),
 * with the synchronisation's own cost (measured, per call) taken off. The steps themselves are
 * then slower than real ones (a synchronisation per call, no graphs): read the ops' shares,
 * not the samples/s.
 * --ffn-rows R: a device's feed-forward chunk is at least R rows instead of
 * BERT_FFN_DEVICE_ROWS (engine/bert.h; the CPU's N*D/(2F) when larger), to compare chunk sizes.
 * --fused-forward 0: a device's forward-only half layers run as a training layer's forward does
 * (probabilities and an fp32 Q|K|V written) instead of fused (bert_set_fused_forward), to time
 * the fused path against the unfused one.
 * Exit status: 0, 1 on a failure, 2 on bad usage, 3 when this build lacks --precision. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cJSON.h>

#include "bench_util.h"
#include "bert.h"
#include "guarded_backend.h"
#include "memstat.h"
#include "optim.h"
#include "planner.h"
#include "sherl_model.h"

#define PROG "bench_gpu_train"
#define MAX_METHODS 4
#define EXIT_NO_PRECISION 3

static const sherl_backend *be;

/* ------------------------------------------------------------------------------------------
 * precision: the one place it reaches the engine */

/* Loads the backbone in `precision` (when *bb is NULL) and sets the model options `o` (NULL on
 * the first, load-only call) and the thread's TF32 switch for it, as the trainer does
 * (engine/trainer.c): fp32, or bf16 (the backbone's weight matrices in bf16, the layers'
 * products in bf16 with fp32 accumulation, a trained layer's on bf16 copies of its fp32 masters,
 * and the job's remaining fp32 products allowed TF32). */
static sherl_status apply_precision(const char *precision, const char *model_dir,
                                    bert_model **bb, sherl_options *o)
{
    sherl_precision prec;
    if (sherl_precision_parse(precision, &prec))
        return sherl_errorf(SHERL_EINVAL, "--precision '%s': expected fp32 or bf16", precision);
    if (o)
        o->precision = prec;
    be->allow_tf32(prec == SHERL_BF16);
    return *bb ? sherl_ok() : bert_load_prec(bb, model_dir, be, prec);
}

/* ------------------------------------------------------------------------------------------
 * memory */

typedef struct {
    int device;        /* be->mem_info (device memory), else memstat (host RSS) */
    size_t base;       /* used bytes / RSS before the backbone was loaded */
    size_t most;       /* the most used seen since mem_method_start (device) */
} mem_probe;

static size_t device_used(void)
{
    size_t f = 0, t = 0;
    if (be->mem_info(&f, &t))
        return 0;
    return t > f ? t - f : 0;
}

static void mem_init(mem_probe *p)
{
    memset(p, 0, sizeof *p);
    p->device = !be->host_memory;
    if (p->device) {
        be->synchronize(); /* the context and this thread's stream exist from here on */
        device_used();
        p->base = device_used();
    } else {
        memstat ms;
        memstat_read(&ms);
        p->base = ms.rss;
    }
}

static void mem_method_start(mem_probe *p)
{
    p->most = 0;
    if (!p->device)
        memstat_reset_peak();
}

static void mem_sample(mem_probe *p)
{
    if (p->device) {
        be->synchronize();
        size_t u = device_used();
        if (u > p->most)
            p->most = u;
    }
}

static size_t mem_peak(const mem_probe *p)
{
    if (p->device)
        return p->most > p->base ? p->most - p->base : 0;
    memstat ms;
    if (memstat_read(&ms))
        return 0;
    return ms.hwm > p->base ? ms.hwm - p->base : 0;
}

/* ------------------------------------------------------------------------------------------
 * the GEMM ceilings: S x S x S products, as bench/kernels measures them */

static void *balloc(size_t bytes, const char *what)
{
    void *p = be->alloc(bytes);
    if (!p) {
        char msg[512] = "";
        be->take_error(msg, sizeof msg);
        fprintf(stderr, PROG ": cannot allocate %.1f MiB for %s on the %s backend%s%s\n",
                bytes / 1048576.0, what, be->name, msg[0] ? ": " : "", msg);
    }
    return p;
}

/* Random values in [-1, 1) through a host staging buffer, as fp32 (bf16 = 0) or bf16. */
static int fill_random(void *dst, size_t n, int bf16)
{
    const size_t chunk = (size_t)1 << 22;
    void *stage = malloc(chunk * (bf16 ? 2 : 4));
    if (!stage)
        return -1;
    uint64_t r = 0x5eed5eed12345ull + n;
    for (size_t off = 0; off < n; off += chunk) {
        size_t k = n - off < chunk ? n - off : chunk;
        for (size_t i = 0; i < k; i++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            float v = -1.0f + 2.0f * (float)(r >> 40) * (1.0f / 16777216.0f);
            if (bf16)
                ((uint16_t *)stage)[i] = sherl_f32_to_bf16(v);
            else
                ((float *)stage)[i] = v;
        }
        if (bf16)
            be->copy_to_device((uint16_t *)dst + off, stage, k * 2);
        else
            be->copy_to_device((float *)dst + off, stage, k * 4);
    }
    free(stage);
    return 0;
}

/* TFLOP/s of the S^3 product (bf16 operands, or fp32), or -1 when it could not run: one
 * warm-up call, a calibrating call sets how many calls a region holds (>= 50 ms), the median
 * of 5 regions. */
static double gemm_ceiling(int S, int bf16)
{
    size_t n = (size_t)S * S, el = bf16 ? 2 : 4;
    void *a = balloc(n * el, "the ceiling's A"), *b = a ? balloc(n * el, "the ceiling's B") : NULL;
    float *c = b ? balloc(n * 4, "the ceiling's C") : NULL;
    double tflops = -1;
    if (c && !fill_random(a, n, bf16) && !fill_random(b, n, bf16)) {
#define CALL()                                                                                  \
    (bf16 ? be->gemm_bf16(0, 0, S, S, S, 1.0f, a, S, b, S, 0.0f, c, S)                          \
          : be->gemm(0, 0, S, S, S, 1.0f, a, S, b, S, 0.0f, c, S))
        CALL();
        be->synchronize();
        double t0 = bench_now();
        CALL();
        be->synchronize();
        double one = bench_now() - t0;
        int reps = one > 0 ? (int)(0.050 / one) + 1 : 1000;
        if (reps > 1000)
            reps = 1000;
        double t[5];
        for (int r = 0; r < 5; r++) {
            t0 = bench_now();
            for (int i = 0; i < reps; i++)
                CALL();
            be->synchronize();
            t[r] = (bench_now() - t0) / reps;
        }
#undef CALL
        double med = bench_median(t, 5);
        char msg[512];
        if (be->take_error(msg, sizeof msg))
            fprintf(stderr, PROG ": the %s ceiling failed: %s\n", bf16 ? "bf16" : "fp32", msg);
        else
            tflops = 2.0 * S * (double)S * S / med * 1e-12;
    }
    if (a)
        be->free(a);
    if (b)
        be->free(b);
    if (c)
        be->free(c);
    return tflops;
}

/* ------------------------------------------------------------------------------------------
 * one method */

typedef struct {
    const char *name;
    int ok;
    double med_s, min_s, loss;
    size_t peak, planned, planned_backbone;
    long long trainable;
    int frozen_layers;
    double frozen_s, frozen_flops; /* per step */
    double phase_s[SHERL_PHASES], opt_s; /* per step, from the profiled steps */
    double calls; /* backend calls per timed step (--backend cpu-guarded, *-timed), else 0 */
    long long graph_passes; /* warm-up and timed steps replayed from a graph */
    double eager_med_s;     /* with graphs replayed: the median of as many steps op by op */
    char graph_note[240];   /* why steps ran op by op (with --graphs 1) */
} method_result;

typedef struct {
    int B, T, steps, warmup, profile_steps, k, tune_late, threads;
    const char *precision, *model_dir;
    int count_calls; /* --backend cpu-guarded or *-timed: the backend counts its calls */
    int time_ops;    /* --backend *-timed: ... and times them */
    int graphs;      /* --graphs: passes recorded into a graph and replayed (sherl_train_pass) */
    int fused_forward; /* --fused-forward (bert_set_fused_forward) */
} bench_cfg;

/* One optimizer step as the trainer takes it (engine/trainer.c): zero the gradients, forward,
 * backward, clip, AdamW at step t (1-based); then the backend's error record. */
static sherl_status train_step(sherl_model *m, sherl_step *s, const bert_batch *batch,
                               const int32_t *labels, int t, double *loss, double *opt_s)
{
    param_set_zero_grad(&m->ps);
    SHERL_TRY(sherl_train_pass(m, s, batch, labels, NULL, (uint64_t)t, loss));
    double t0 = 0;
    if (opt_s) {
        be->synchronize();
        t0 = bench_now();
    }
    clip_grad_norm(&m->ps, 1.0);
    param_set_adamw(&m->ps, 1e-4f, 0.9f, 0.999f, 1e-8f, 0.01f, t);
    if (opt_s) {
        be->synchronize();
        *opt_s += bench_now() - t0;
    }
    return sherl_backend_status(be, "a training step");
}

/* FLOPs of one frozen layer's forward: its four weight matrices' products (2 x weights x
 * tokens) and attention's two batched products (4 B NH T^2 HS). */
static double layer_flops(const hf_config *c, int B, int T)
{
    double D = c->hidden_size, F = c->intermediate_size, NH = c->num_attention_heads;
    double HS = D / NH, tokens = (double)B * T;
    return 2.0 * (4.0 * D * D + 2.0 * D * F) * tokens + 4.0 * B * NH * (double)T * T * HS;
}

/* The guarded backend's counts over the timed steps, per step: the total and the ops that make
 * most of it (the synchronize calls around the clock reads included, 2 a step). */
static int by_seconds_desc(const void *a, const void *b)
{
    double x = ((const guarded_op_calls *)a)->seconds, y = ((const guarded_op_calls *)b)->seconds;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* --backend *-timed: the ops by time per step, the synchronisation's cost (sync_s a call) off */
static void print_op_times(const method_result *r, guarded_op_calls *c, int n, int steps,
                           double sync_s)
{
    qsort(c, (size_t)n, sizeof *c, by_seconds_desc);
    double total = 0;
    for (int i = 0; i < n; i++)
        total += fmax(c[i].seconds - sync_s * (double)c[i].calls, 0.0);
    printf("%s: op times per step (each call synchronised; %.1f us a call taken off as the "
           "synchronisation's own), %.3f ms in all:\n", r->name, sync_s * 1e6,
           total / steps * 1e3);
    printf("  %-30s %9s %10s %10s %6s\n", "op", "calls", "ms", "us/call", "share");
    for (int i = 0; i < n; i++) {
        double net = fmax(c[i].seconds - sync_s * (double)c[i].calls, 0.0);
        printf("  %-30s %9.0f %10.3f %10.1f %5.1f%%\n", c[i].op, (double)c[i].calls / steps,
               net / steps * 1e3, net / (double)c[i].calls * 1e6,
               total > 0 ? 100.0 * net / total : 0.0);
    }
}

static void print_calls(method_result *r, int steps, int time_ops)
{
    guarded_op_calls c[128];
    int n = guarded_backend_calls(c, 128);
    unsigned long long total = 0;
    for (int i = 0; i < n; i++)
        total += c[i].calls;
    r->calls = (double)total / steps;
    printf("%s: %.0f backend calls per step; by op:", r->name, r->calls);
    for (int i = 0; i < n; i++)
        printf("%s %s %.0f", i ? "," : "", c[i].op, (double)c[i].calls / steps);
    printf("\n");
    if (time_ops)
        print_op_times(r, c, n, steps, timed_backend_sync_seconds());
    fflush(stdout);
}

/* cfg->steps steps, each timed alone into t[] (synchronised clock reads around it) */
static sherl_status timed_steps(const bench_cfg *cfg, sherl_model *m, sherl_step *s,
                                const bert_batch *batch, const int32_t *labels, int *step,
                                double *t, method_result *r)
{
    for (int i = 0; i < cfg->steps; i++) {
        be->synchronize();
        double t0 = bench_now();
        SHERL_TRY(train_step(m, s, batch, labels, ++*step, &r->loss, NULL));
        be->synchronize();
        t[i] = bench_now() - t0;
    }
    return sherl_ok();
}

/* first: the first method of the run, whose peak counts from before the backbone's load
 * (its transient buffers included); later ones restart the peak when they start. */
static sherl_status run_method(const bench_cfg *cfg, bert_model **bb, train_method method,
                               int first, mem_probe *mem, method_result *r)
{
    memset(r, 0, sizeof *r);
    r->name = train_method_name(method);
    sherl_options o;
    sherl_options_default(&o);
    o.method = method;
    o.late_layers = cfg->k;
    o.tune_late = cfg->tune_late;
    o.dropout = 0.0f;
    o.num_labels = 3;
    if (!first)
        mem_method_start(mem);
    SHERL_TRY(apply_precision(cfg->precision, cfg->model_dir, bb, &o));
    const bert_model *bbm = *bb;
    const int B = cfg->B, T = cfg->T;
    memory_plan plan;
    SHERL_TRY(memory_plan_model(&plan, &bbm->cfg, &o, be, B, T, cfg->threads));
    r->planned = plan.peak_bytes;
    r->planned_backbone = plan.backbone_bytes;

    sherl_model *m = NULL;
    sherl_step s;
    int have_step = 0;
    bert_batch batch = {B, T, malloc(sizeof(int32_t) * B * T), calloc((size_t)B * T, 4),
                        malloc(sizeof(int32_t) * B * T)};
    int32_t *labels = malloc(sizeof(int32_t) * B);
    double *t = malloc(sizeof(double) * cfg->steps);
    sherl_status st = sherl_ok();
    if (!batch.input_ids || !batch.token_type_ids || !batch.attention_mask || !labels || !t) {
        st = sherl_errorf(SHERL_ENOMEM, "out of memory");
        goto done;
    }
    uint64_t rng = 42;
    int vocab = bbm->cfg.vocab_size;
    for (int i = 0; i < B * T; i++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        int lo = vocab > 2000 ? 1000 : 1;
        batch.input_ids[i] = lo + (int32_t)((rng >> 33) % (uint64_t)(vocab - lo));
        batch.attention_mask[i] = 1;
    }
    for (int b = 0; b < B; b++)
        labels[b] = b % 3;

    if ((st = sherl_model_create(&m, bbm, &o)).code || (st = sherl_step_create(&s, m, B, T)).code)
        goto done;
    have_step = 1;
    s.graphs = cfg->graphs;
    sherl_scratch_shape q = sherl_step_scratch_shape(m, B, T, cfg->threads);
    if (be->prepare(&q)) {
        st = sherl_backend_status(be, "reserving the step's scratch");
        if (!st.code)
            st = sherl_errorf(SHERL_ENOMEM, "reserving the step's scratch failed");
        goto done;
    }
    for (int i = 0; i < m->ps.n; i++)
        r->trainable += (long long)m->ps.items[i].numel;
    mem_sample(mem);

    int step = 0;
    for (int i = 0; i < cfg->warmup; i++)
        if ((st = train_step(m, &s, &batch, labels, ++step, &r->loss, NULL)).code)
            goto done;
    mem_sample(mem);
    if (cfg->count_calls)
        guarded_backend_reset_calls();
    if ((st = timed_steps(cfg, m, &s, &batch, labels, &step, t, r)).code)
        goto done;
    mem_sample(mem);
    if (cfg->count_calls)
        print_calls(r, cfg->steps, cfg->time_ops);
    r->min_s = t[0];
    for (int i = 1; i < cfg->steps; i++)
        if (t[i] < r->min_s)
            r->min_s = t[i];
    r->med_s = bench_median(t, cfg->steps);
    /* the timed steps' graph use (the profiled ones below always run op by op) */
    r->graph_passes = s.graph_passes;
    snprintf(r->graph_note, sizeof r->graph_note, "%s", s.graph_note);
    if (s.graph_passes > 0) { /* the same steps op by op, for the graphs' gain */
        s.graphs = 0;
        if ((st = timed_steps(cfg, m, &s, &batch, labels, &step, t, r)).code)
            goto done;
        r->eager_med_s = bench_median(t, cfg->steps);
    }

    /* profiled steps: a synchronised clock at every phase boundary */
    s.profile = 1;
    memset(s.phase_s, 0, sizeof s.phase_s);
    for (int i = 0; i < cfg->profile_steps; i++)
        if ((st = train_step(m, &s, &batch, labels, ++step, &r->loss, &r->opt_s)).code)
            goto done;
    s.profile = 0;
    mem_sample(mem);
    if (cfg->profile_steps > 0) {
        for (int p = 0; p < SHERL_PHASES; p++)
            r->phase_s[p] = s.phase_s[p] / cfg->profile_steps;
        r->opt_s /= cfg->profile_steps;
    }
    /* the frozen early route, the layers that run forward only: sherl and late the first
     * L - k, linear all, full none */
    r->frozen_layers = method == METHOD_FULL     ? 0
                       : method == METHOD_LINEAR ? m->L
                                                 : m->L - m->k;
    r->frozen_s = r->phase_s[PH_FROZEN];
    r->frozen_flops = r->frozen_layers * layer_flops(&bbm->cfg, B, T);
    r->peak = mem_peak(mem);
    r->ok = 1;
done:
    free(t), free(labels);
    bert_batch_free(&batch);
    if (have_step)
        sherl_step_free(&s, m);
    sherl_model_free(m);
    return st;
}

/* ------------------------------------------------------------------------------------------
 * output */

static double mib(size_t b) { return b / 1048576.0; }

static int write_json(const char *path, const char *desc, const bench_cfg *cfg,
                      const hf_config *hc, const char *peak_source, int ceiling,
                      double ceil_bf16, double ceil_f32, const method_result *res, int n)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return -1;
    cJSON_AddStringToObject(o, "impl", "sherl");
    cJSON_AddStringToObject(o, "backend", be->name);
    cJSON_AddStringToObject(o, "device", desc);
    cJSON_AddStringToObject(o, "precision", cfg->precision);
    cJSON_AddBoolToObject(o, "graphs", cfg->graphs);
    cJSON_AddBoolToObject(o, "fused_forward", cfg->fused_forward);
    cJSON_AddNumberToObject(o, "batch", cfg->B);
    cJSON_AddNumberToObject(o, "seq", cfg->T);
    cJSON_AddNumberToObject(o, "layers", hc->num_hidden_layers);
    cJSON_AddNumberToObject(o, "hidden", hc->hidden_size);
    cJSON_AddNumberToObject(o, "heads", hc->num_attention_heads);
    cJSON_AddNumberToObject(o, "ffn", hc->intermediate_size);
    cJSON_AddNumberToObject(o, "late_layers", cfg->k);
    cJSON_AddBoolToObject(o, "tune_late", cfg->tune_late);
    cJSON_AddNumberToObject(o, "steps", cfg->steps);
    cJSON_AddNumberToObject(o, "warmup", cfg->warmup);
    cJSON_AddStringToObject(o, "peak_source", peak_source);
    cJSON_AddNumberToObject(o, "ceiling_size", ceiling);
    if (ceil_bf16 > 0)
        cJSON_AddNumberToObject(o, "gemm_bf16_ceiling_tflops", ceil_bf16);
    else
        cJSON_AddNullToObject(o, "gemm_bf16_ceiling_tflops");
    if (ceil_f32 > 0)
        cJSON_AddNumberToObject(o, "gemm_fp32_ceiling_tflops", ceil_f32);
    else
        cJSON_AddNullToObject(o, "gemm_fp32_ceiling_tflops");
    cJSON *ms = cJSON_AddObjectToObject(o, "methods");
    for (int i = 0; ms && i < n; i++) {
        const method_result *r = &res[i];
        cJSON *m = cJSON_AddObjectToObject(ms, r->name);
        if (!m)
            break;
        cJSON_AddNumberToObject(m, "median_s", r->med_s);
        cJSON_AddNumberToObject(m, "min_s", r->min_s);
        cJSON_AddNumberToObject(m, "samples_per_s", cfg->B / r->med_s);
        cJSON_AddNumberToObject(m, "peak_bytes", (double)r->peak);
        cJSON_AddNumberToObject(m, "planned_peak_bytes", (double)r->planned);
        cJSON_AddNumberToObject(m, "planned_backbone_bytes", (double)r->planned_backbone);
        cJSON_AddNumberToObject(m, "trainable", (double)r->trainable);
        if (r->calls > 0)
            cJSON_AddNumberToObject(m, "backend_calls_per_step", r->calls);
        cJSON_AddNumberToObject(m, "graph_steps", (double)r->graph_passes);
        if (r->eager_med_s > 0)
            cJSON_AddNumberToObject(m, "op_by_op_median_s", r->eager_med_s);
        cJSON_AddStringToObject(m, "op_by_op_because", r->graph_note);
        cJSON_AddNumberToObject(m, "loss", r->loss);
        cJSON_AddNumberToObject(m, "frozen_layers", r->frozen_layers);
        if (r->frozen_layers && r->frozen_s > 0) {
            double tf = r->frozen_flops / r->frozen_s * 1e-12;
            cJSON_AddNumberToObject(m, "frozen_forward_s", r->frozen_s);
            cJSON_AddNumberToObject(m, "frozen_forward_flops", r->frozen_flops);
            cJSON_AddNumberToObject(m, "frozen_forward_tflops", tf);
            if (ceil_bf16 > 0)
                cJSON_AddNumberToObject(m, "frozen_forward_frac_of_bf16_ceiling", tf / ceil_bf16);
        }
        cJSON *ph = cJSON_AddObjectToObject(m, "phases_s");
        for (int p = 0; ph && p < SHERL_PHASES; p++)
            cJSON_AddNumberToObject(ph, SHERL_PHASE_NAMES[p], r->phase_s[p]);
        if (ph)
            cJSON_AddNumberToObject(ph, "clip + AdamW", r->opt_s);
    }
    return bench_write_json(path, o);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: " PROG " [--backend cuda|cpu|cpu-guarded|cuda-timed|cpu-timed] "
               "[--precision fp32|bf16] [--batch 64] "
               "[--seq 128] [--layers L] [--hidden D] [--steps 10] [--warmup 3] "
               "[--profile-steps 2] [--methods sherl,late,full] [--late-layers 1] "
               "[--tune-late 1] [--ceiling S] [--graphs 0|1] [--threads N] [--ffn-rows R] "
               "[--fused-forward 0|1] [--json FILE] MODEL_DIR\n");
}

int main(int argc, char **argv)
{
    /* MODEL_DIR is the one argument not starting with "--"; the rest are "--name value" */
    const char *model_dir = NULL;
    char **optv = malloc(sizeof(char *) * (size_t)(argc + 1));
    int optc = 0;
    if (!optv)
        return 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            free(optv);
            return 0;
        }
        if (!strncmp(argv[i], "--", 2)) {
            optv[optc++] = argv[i];
            if (i + 1 < argc)
                optv[optc++] = argv[++i];
        } else if (!model_dir) {
            model_dir = argv[i];
        } else {
            fprintf(stderr, PROG ": one MODEL_DIR only ('%s', '%s')\n", model_dir, argv[i]);
            usage(stderr);
            free(optv);
            return 2;
        }
    }
    int B = 64, T = 128, L = 0, D = 0, steps = 10, warmup = 3, profile_steps = 2, k = 1;
    int tune_late = 1, ceiling = -1, graphs = 1, threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    int ffn_rows = 0, fused_forward = 1;
    /* zero-valued options go through strings (bench_parse takes positive integers only) */
    const char *str_names[] = {"--backend", "--precision", "--methods", "--json",
                               "--warmup", "--profile-steps", "--tune-late", "--ceiling",
                               "--graphs",  "--fused-forward"};
    const char *sv[] = {NULL, "fp32", "sherl,late,full", NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    bench_int_opt opts[] = {{"--batch", &B},       {"--seq", &T},         {"--layers", &L},
                            {"--hidden", &D},      {"--steps", &steps},   {"--late-layers", &k},
                            {"--threads", &threads}, {"--ffn-rows", &ffn_rows}};
    int bad = bench_parse(PROG, optc, optv, 0, opts, 8, str_names, sv, 10);
    free(optv);
    if (bad) {
        usage(stderr);
        return 2;
    }
    const char *backend = sv[0], *precision = sv[1], *methods = sv[2], *json = sv[3];
    const char *int0_names[] = {"--warmup", "--profile-steps", "--tune-late", "--ceiling",
                                "--graphs",  "--fused-forward"};
    int *int0_vals[] = {&warmup, &profile_steps, &tune_late, &ceiling, &graphs, &fused_forward};
    const long int0_max[] = {1000, 1000, 1, 32768, 1, 1};
    for (int i = 0; i < 6; i++) {
        const char *v = sv[4 + i];
        if (!v)
            continue;
        char *end;
        long x = strtol(v, &end, 10);
        if (*end || !*v || x < 0 || x > int0_max[i]) {
            fprintf(stderr, PROG ": %s needs an integer in 0..%ld, got '%s'\n", int0_names[i],
                    int0_max[i], v);
            return 2;
        }
        *int0_vals[i] = (int)x;
    }
    if (ffn_rows)
        bert_set_ffn_device_rows(ffn_rows);
    bert_set_fused_forward(fused_forward);
    if (strcmp(precision, "fp32") && strcmp(precision, "bf16")) {
        fprintf(stderr, PROG ": --precision '%s': expected fp32 or bf16\n", precision);
        return 2;
    }
    train_method list[MAX_METHODS];
    int n_methods = 0;
    {
        char buf[256];
        snprintf(buf, sizeof buf, "%s", methods);
        for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
             tok = strtok_r(NULL, ",", &save)) {
            sherl_status st = train_method_parse(tok, &list[n_methods]);
            if (st.code || n_methods == MAX_METHODS) {
                fprintf(stderr, PROG ": --methods: %s\n", st.code ? st.msg : "too many");
                return 2;
            }
            n_methods++;
        }
        if (!n_methods) {
            fprintf(stderr, PROG ": --methods names none\n");
            return 2;
        }
    }

    /* the backend first: no GPU is an answer, not a failure */
    int count_calls = backend && !strcmp(backend, "cpu-guarded"), time_ops = 0;
    int ended = -1;
    size_t blen = backend ? strlen(backend) : 0;
    if (count_calls) {
        be = guarded_backend();
    } else if (blen > 6 && !strcmp(backend + blen - 6, "-timed")) {
        char inner[16];
        snprintf(inner, sizeof inner, "%.*s", (int)(blen - 6), backend);
        if (strcmp(inner, "cuda") && strcmp(inner, "cpu")) {
            fprintf(stderr, PROG ": unknown backend '%s' (cuda, cpu, cpu-guarded, cuda-timed or "
                            "cpu-timed)\n", backend);
            return 2;
        }
        if ((ended = bench_backend(PROG, inner, &be)) >= 0)
            return ended;
        be = timed_backend(be);
        count_calls = time_ops = 1;
    } else {
        ended = bench_backend(PROG, backend, &be);
    }
    if (ended >= 0)
        return ended;
    if (!model_dir) {
        fprintf(stderr, PROG ": MODEL_DIR is missing\n");
        usage(stderr);
        return 2;
    }
    const int gpu = !be->host_memory;
    if (ceiling < 0)
        ceiling = gpu ? 8192 : 2048;
    be->set_threads(threads);
    bench_cfg cfg = {B, T, steps, warmup, profile_steps, k, tune_late, threads, precision,
                     model_dir, count_calls, time_ops, graphs, fused_forward};

    mem_probe mem;
    mem_init(&mem);
    mem_method_start(&mem);
    bert_model *bb = NULL;
    sherl_status st = apply_precision(precision, model_dir, &bb, NULL);
    if (st.code) {
        fprintf(stderr, PROG ": %s\n", st.msg);
        return st.code == SHERL_EUNSUPPORTED ? EXIT_NO_PRECISION : 1;
    }
    const hf_config *hc = &bb->cfg;
    if ((L && hc->num_hidden_layers != L) || (D && hc->hidden_size != D)) {
        fprintf(stderr, PROG ": %s has %d layers of width %d, not the %d x %d asked for\n",
                model_dir, hc->num_hidden_layers, hc->hidden_size, L ? L : hc->num_hidden_layers,
                D ? D : hc->hidden_size);
        bert_free(bb);
        return 1;
    }

    char desc[256] = "";
    be->describe(desc, sizeof desc);
    printf("backend: %s\n", desc);
    if (be->performance_advice && be->performance_advice())
        printf("note: %s\n", be->performance_advice());
    printf("model: %s: %d layers, width %d, %d heads, FF %d; batch %d x %d tokens; precision "
           "%s; late layers %d (%s); %d warm-up + %d timed + %d profiled steps per method\n",
           model_dir, hc->num_hidden_layers, hc->hidden_size, hc->num_attention_heads,
           hc->intermediate_size, B, T, precision, k, tune_late ? "trained" : "frozen", warmup,
           steps, profile_steps);
    printf("feed-forward chunk: %d rows of %d (%s)\n", bert_ffn_chunk(hc, B * T, !be->host_memory),
           B * T, be->host_memory ? "the CPU's" : "a device's: bert_ffn_chunk");
    if (!be->host_memory && strcmp(precision, "fp32"))
        printf("forward-only layers: %s\n",
               fused_forward ? "fused (Q|K|V as halves, attention without probabilities)"
                             : "unfused (--fused-forward 0: probabilities and fp32 Q|K|V written)");
    fflush(stdout);

    const char *peak_source = gpu ? "device mem_info (total - free) minus before the backbone"
                                  : "VmHWM minus the RSS before the backbone";
    method_result res[MAX_METHODS];
    int failed = 0;
    for (int i = 0; i < n_methods; i++) {
        method_result *r = &res[i];
        st = run_method(&cfg, &bb, list[i], i == 0, &mem, r);
        if (st.code) {
            fprintf(stderr, PROG ": %s: %s\n", train_method_name(list[i]), st.msg);
            r->ok = 0;
            failed = 1;
            continue;
        }
        printf("ours %-5s %s %s B=%d T=%d: median %.4f s/step (min %.4f), %.2f samples/s, peak "
               "%.1f MiB (planned %.1f MiB), loss %.4f, %lld trainable\n",
               r->name, precision, be->name, B, T, r->med_s, r->min_s, B / r->med_s,
               mib(r->peak), mib(r->planned), r->loss, r->trainable);
        if (cfg.graphs)
            printf("  graphs: %lld of %d warm-up and timed steps replayed from a graph%s%s\n",
                   r->graph_passes, warmup + steps, r->graph_note[0] ? "; op by op: " : "",
                   r->graph_note);
        if (r->eager_med_s > 0)
            printf("  op by op instead: median %.4f s/step, %.2f samples/s (graphs %.2fx)\n",
                   r->eager_med_s, B / r->eager_med_s, r->eager_med_s / r->med_s);
        if (r->frozen_layers && r->frozen_s > 0)
            printf("  frozen forward (%d of %d layers): %.2f ms, %.3f TFLOP/s\n", r->frozen_layers,
                   hc->num_hidden_layers, 1e3 * r->frozen_s,
                   r->frozen_flops / r->frozen_s * 1e-12);
        double tot = 0;
        for (int p = 0; p < SHERL_PHASES; p++)
            tot += r->phase_s[p];
        tot += r->opt_s;
        printf("  profiled step %.2f ms:", 1e3 * tot);
        for (int p = 0; p < SHERL_PHASES; p++)
            if (r->phase_s[p] > 0)
                printf(" %s %.2f;", SHERL_PHASE_NAMES[p], 1e3 * r->phase_s[p]);
        printf(" clip + AdamW %.2f\n", 1e3 * r->opt_s);
        fflush(stdout);
    }
    printf("peak memory: %s\n", peak_source);
    /* the ceilings last, so their buffers are in no method's peak; fp32 without TF32 */
    double ceil_bf16 = -1, ceil_f32 = -1;
    if (ceiling > 0) {
        be->allow_tf32(0);
        ceil_bf16 = gemm_ceiling(ceiling, 1);
        ceil_f32 = gemm_ceiling(ceiling, 0);
        printf("ceiling: gemm_bf16 %d^3 %.2f TFLOP/s, gemm fp32 %d^3 %.2f TFLOP/s\n", ceiling,
               ceil_bf16, ceiling, ceil_f32);
        for (int i = 0; i < n_methods && ceil_bf16 > 0; i++) {
            const method_result *r = &res[i];
            if (!r->ok || !r->frozen_layers || r->frozen_s <= 0)
                continue;
            double tf = r->frozen_flops / r->frozen_s * 1e-12;
            printf("  %s frozen forward: %.1f%% of the bf16 GEMM ceiling", r->name,
                   100 * tf / ceil_bf16);
            if (ceil_f32 > 0)
                printf(", %.1f%% of the fp32 one", 100 * tf / ceil_f32);
            printf("\n");
        }
    }
    int n_ok = 0;
    method_result ok_res[MAX_METHODS];
    for (int i = 0; i < n_methods; i++)
        if (res[i].ok)
            ok_res[n_ok++] = res[i];
    if (json && write_json(json, desc, &cfg, hc, peak_source, ceiling, ceil_bf16, ceil_f32,
                           ok_res, n_ok)) {
        fprintf(stderr, PROG ": cannot write %s\n", json);
        failed = 1;
    }
    bert_free(bb);
    return failed;
}
