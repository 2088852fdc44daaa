/* The C training engine against the PyTorch reference (tests/oracle/sherl_reference.py) on a
 * random tiny BERT: for sherl (classification with mean pooling, regression with CLS pooling),
 * full, late and linear — the loss, the logits, the gradient of every trainable tensor after one
 * backward, and the loss before each of 20 AdamW steps on the same batch (relative error <= 1e-4).
 *
 * Gradients: max abs error <= 1e-4 x the tensor's largest entry against the exact gradient (the
 * reference model run in float64), and against PyTorch's float32 gradient within that plus
 * PyTorch's own distance from the exact one. The second margin matters for gradients that are
 * small sums of cancelling terms: float32 PyTorch is 1.7e-4 (relative) off the exact gradient of
 * the MTSA guide bias in the regression case, so no float32 engine can be held to 1e-4 of it. */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"
#include "half.h"
#include "mtsa.h"
#include "sherl_model.h"

#define REF SHERL_TEST_WORK "/sherl"

static float *tensor_f32(const safetensors_file *f, const char *name, int64_t *numel)
{
    const st_tensor *t = safetensors_find(f, name);
    cr_assert(t, "reference tensor '%s' missing", name);
    float *v = malloc((size_t)t->numel * sizeof(float));
    if (t->dtype == ST_F64) {
        for (int64_t i = 0; i < t->numel; i++) {
            double d;
            memcpy(&d, t->data + 8 * i, 8);
            v[i] = (float)d;
        }
    } else {
        sherl_status st = safetensors_read_f32(f, name, v, t->ndim, t->shape);
        cr_assert(st.code == SHERL_OK, "%s", st.msg);
    }
    *numel = t->numel;
    return v;
}

static int32_t *tensor_i32(const safetensors_file *f, const char *name)
{
    const st_tensor *t = safetensors_find(f, name);
    cr_assert(t && t->dtype == ST_I32, "reference tensor '%s' missing or not I32", name);
    int32_t *v = malloc(t->nbytes);
    memcpy(v, t->data, t->nbytes);
    return v;
}

/* The tiny backbone and the reference batch, shared by every case. */
typedef struct {
    bert_model *bb;
    bert_batch batch;
    int32_t *labels;
    float *targets;
} fixture;

static void fixture_load(fixture *f)
{
    sherl_status st = bert_load(&f->bb, REF "/tiny", sherl_backend_cpu());
    cr_assert(st.code == SHERL_OK, "%s", st.msg);
    safetensors_file bf;
    cr_assert(safetensors_open(&bf, REF "/batch.safetensors").code == SHERL_OK);
    const st_tensor *it = safetensors_find(&bf, "input_ids");
    cr_assert(it && it->ndim == 2, "batch.safetensors: input_ids missing");
    f->batch = (bert_batch){(int)it->shape[0], (int)it->shape[1], tensor_i32(&bf, "input_ids"),
                            tensor_i32(&bf, "token_type_ids"), tensor_i32(&bf, "attention_mask")};
    f->labels = tensor_i32(&bf, "labels");
    int64_t n;
    f->targets = tensor_f32(&bf, "targets", &n);
    safetensors_close(&bf);
}

static void fixture_free(fixture *f)
{
    free(f->batch.input_ids), free(f->batch.token_type_ids), free(f->batch.attention_mask);
    free(f->labels), free(f->targets);
    bert_free(f->bb);
}

typedef struct {
    int k;          /* late layers; 0 means 1 */
    int n_taps;     /* 0: all */
    int taps[4];
    int tune_late;
} case_options;

static void run_case_with(const char *name, train_method method, task_type task, pool_mode pooling,
                          case_options co)
{
    const sherl_backend *be = sherl_backend_cpu();
    fixture fx;
    fixture_load(&fx);
    bert_model *bb = fx.bb;
    bert_batch batch = fx.batch;
    int32_t *labels = fx.labels;
    float *targets = fx.targets;
    int64_t n;
    sherl_status st;
    sherl_options o;
    sherl_options_default(&o);
    o.method = method, o.task = task, o.pooling = pooling, o.num_labels = 3;
    o.late_layers = co.k ? co.k : 1, o.side_dim = 16, o.dropout = 0.0f;
    o.n_taps = co.n_taps, o.tune_late = co.tune_late;
    memcpy(o.taps, co.taps, sizeof co.taps);
    sherl_model *m;
    st = sherl_model_create(&m, bb, &o);
    cr_assert(st.code == SHERL_OK, "%s: %s", name, st.msg);
    char path[512];
    snprintf(path, sizeof path, REF "/%s_init.safetensors", name);
    st = param_set_load(&m->ps, path, 1);
    cr_assert(st.code == SHERL_OK, "%s: %s", name, st.msg);
    snprintf(path, sizeof path, REF "/%s_ref.safetensors", name);
    safetensors_file ref;
    cr_assert(safetensors_open(&ref, path).code == SHERL_OK, "%s missing", path);
    /* every reference gradient names a tensor of ours and the reverse: same trainable set */
    int n_ref_grads = 0;
    for (int i = 0; i < ref.n_tensors; i++)
        if (!strncmp(ref.tensors[i].name, "grad.", 5)) {
            n_ref_grads++;
            cr_expect(param_set_find(&m->ps, ref.tensors[i].name + 5),
                      "%s: reference trains '%s', the engine does not", name,
                      ref.tensors[i].name + 5);
        }
    cr_expect(n_ref_grads == m->ps.n, "%s: %d trainable tensors, reference has %d", name, m->ps.n,
              n_ref_grads);

    sherl_step s;
    st = sherl_step_create(&s, m, batch.B, batch.T);
    cr_assert(st.code == SHERL_OK, "%s", st.msg);
    double loss;
    float *logits = malloc(sizeof(float) * batch.B * m->out_dim);
    param_set_zero_grad(&m->ps);
    st = sherl_forward(m, &s, &batch, task == TASK_CLASSIFICATION ? labels : NULL,
                       task == TASK_REGRESSION ? targets : NULL, 1, 0, &loss, logits);
    cr_assert(st.code == SHERL_OK, "%s", st.msg);
    float *want_loss = tensor_f32(&ref, "loss", &n);
    cr_expect(fabs(loss - want_loss[0]) <= 1e-5 * fabs(want_loss[0]) + 1e-6,
              "%s: loss %.8g, reference %.8g", name, loss, (double)want_loss[0]);
    float *want_logits = tensor_f32(&ref, "logits", &n);
    for (int64_t i = 0; i < n; i++)
        cr_expect(fabsf(logits[i] - want_logits[i]) <= 1e-5f, "%s: logit %lld %.7g vs %.7g", name,
                  (long long)i, (double)logits[i], (double)want_logits[i]);
    sherl_backward(m, &s, 0);
    double worst_rel = 0;
    for (int i = 0; i < m->ps.n; i++) {
        const sherl_param *p = &m->ps.items[i];
        char gname[128];
        snprintf(gname, sizeof gname, "grad.%s", p->name);
        float *want = tensor_f32(&ref, gname, &n);
        snprintf(gname, sizeof gname, "grad64.%s", p->name);
        float *exact = tensor_f32(&ref, gname, &n);
        cr_assert(n == (int64_t)p->numel, "%s: %s has %lld elements, ours %zu", name, gname,
                  (long long)n, p->numel);
        float *got = malloc(p->numel * sizeof(float));
        be->copy_to_host(got, p->grad, p->numel * sizeof(float));
        double scale = 0, err = 0, err32 = 0, ref_err = 0;
        size_t at = 0;
        for (size_t e = 0; e < p->numel; e++) {
            scale = fmax(scale, fabs(exact[e]));
            double d = fabs((double)got[e] - exact[e]);
            if (d > err)
                err = d, at = e;
            err32 = fmax(err32, fabs((double)got[e] - want[e]));
            ref_err = fmax(ref_err, fabs((double)want[e] - exact[e]));
        }
        cr_expect(err <= 1e-4 * scale + 1e-9,
                  "%s: gradient of %s off the exact one by %.3g (relative %.3g) at %zu: %.7g vs "
                  "%.7g", name, p->name, err, scale > 0 ? err / scale : err, at, (double)got[at],
                  (double)exact[at]);
        cr_expect(err32 <= 1e-4 * scale + ref_err + 1e-9,
                  "%s: gradient of %s off PyTorch float32 by %.3g (> %.3g)", name, p->name, err32,
                  1e-4 * scale + ref_err);
        if (scale > 0)
            worst_rel = fmax(worst_rel, err / scale);
        free(exact);
        free(want), free(got);
    }
    fprintf(stderr, "%s: worst gradient error vs exact %.3g (relative to the tensor's largest entry)\n",
            name, worst_rel);
    /* 20 AdamW steps on the same batch */
    float *want_curve = tensor_f32(&ref, "losses", &n);
    for (int t = 1; t <= (int)n; t++) {
        param_set_zero_grad(&m->ps);
        st = sherl_forward(m, &s, &batch, task == TASK_CLASSIFICATION ? labels : NULL,
                           task == TASK_REGRESSION ? targets : NULL, 1, 0, &loss, NULL);
        cr_assert(st.code == SHERL_OK, "%s", st.msg);
        cr_expect(fabs(loss - want_curve[t - 1]) <= 1e-4 * fabs(want_curve[t - 1]),
                  "%s: loss before step %d %.8g, reference %.8g", name, t, loss,
                  (double)want_curve[t - 1]);
        sherl_backward(m, &s, 0);
        param_set_adamw(&m->ps, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, t);
    }
    fprintf(stderr, "%s: loss %.6f -> %.6f over %lld AdamW steps (reference %.6f -> %.6f)\n", name,
            (double)want_curve[0], loss, (long long)n, (double)want_curve[0],
            (double)want_curve[n - 1]);
    free(want_curve), free(want_loss), free(want_logits), free(logits);
    sherl_step_free(&s, m);
    sherl_model_free(m);
    safetensors_close(&ref);
    fixture_free(&fx);
}

static void run_case(const char *name, train_method method, task_type task, pool_mode pooling)
{
    run_case_with(name, method, task, pooling, (case_options){0});
}

Test(sherl_oracle, sherl_classification_mean_pooling, .timeout = 120)
{
    run_case("sherl", METHOD_SHERL, TASK_CLASSIFICATION, POOL_MEAN);
}

Test(sherl_oracle, sherl_regression_cls_pooling, .timeout = 120)
{
    run_case("sherl_cls_regression", METHOD_SHERL, TASK_REGRESSION, POOL_CLS);
}

/* a subset of taps: h_0, h_1 and h_3 of 4 layers, skipping h_2 (at least 3 taps: with 2, the
 * L1-normalised weight of the single shallow tap is 1 and the guide's gradient vanishes) */
Test(sherl_oracle, sherl_tap_subset, .timeout = 120)
{
    run_case_with("sherl_tap_subset", METHOD_SHERL, TASK_CLASSIFICATION, POOL_MEAN,
                  (case_options){.n_taps = 3, .taps = {0, 1, 3}});
}

/* two late layers whose weights train too (tune_late); taps h_0, h_1, h_2 */
Test(sherl_oracle, sherl_two_late_layers_tuned, .timeout = 120)
{
    run_case_with("sherl_k2_tune_late", METHOD_SHERL, TASK_CLASSIFICATION, POOL_CLS,
                  (case_options){.k = 2, .tune_late = 1});
}

Test(sherl_oracle, full, .timeout = 120) { run_case("full", METHOD_FULL, TASK_CLASSIFICATION, POOL_MEAN); }
Test(sherl_oracle, late, .timeout = 120) { run_case("late", METHOD_LATE, TASK_CLASSIFICATION, POOL_CLS); }
Test(sherl_oracle, linear, .timeout = 120) { run_case("linear", METHOD_LINEAR, TASK_CLASSIFICATION, POOL_MEAN); }

/* Finite differences of the engine's own float32 loss, independent of PyTorch: for every
 * trainable tensor, the 3 entries with the largest gradient. h = 1e-3 balances float32 rounding
 * of the loss (~1e-7 / h) against the O(h^2) truncation and the chance of stepping over a relu
 * kink of the guidance (which a larger h does); tolerance 2% of the entry + 1e-4. */
static void fd_case(train_method method, task_type task, pool_mode pooling, float dropout)
{
    const sherl_backend *be = sherl_backend_cpu();
    fixture fx;
    fixture_load(&fx);
    bert_model *bb = fx.bb;
    bert_batch batch = fx.batch;
    int32_t *labels = fx.labels;
    float *targets = fx.targets;
    sherl_options o;
    sherl_options_default(&o);
    o.method = method, o.task = task, o.pooling = pooling, o.num_labels = 3;
    o.side_dim = 16, o.dropout = dropout, o.tune_late = 1, o.seed = 5;
    sherl_model *m;
    cr_assert(sherl_model_create(&m, bb, &o).code == SHERL_OK);
    sherl_step s;
    cr_assert(sherl_step_create(&s, m, batch.B, batch.T).code == SHERL_OK);
    const int32_t *lab = task == TASK_CLASSIFICATION ? labels : NULL;
    const float *tgt = task == TASK_REGRESSION ? targets : NULL;
    double loss;
    param_set_zero_grad(&m->ps);
    cr_assert(sherl_forward(m, &s, &batch, lab, tgt, 1, 0, &loss, NULL).code == SHERL_OK);
    sherl_backward(m, &s, 0);
    int checked = 0;
    for (int i = 0; i < m->ps.n; i++) {
        sherl_param *p = &m->ps.items[i];
        float *g = malloc(p->numel * sizeof(float));
        be->copy_to_host(g, p->grad, p->numel * sizeof(float));
        for (int pick = 0; pick < 3 && pick < (int)p->numel; pick++) {
            size_t best = 0;
            for (size_t e = 0; e < p->numel; e++)
                if (fabsf(g[e]) > fabsf(g[best]))
                    best = e;
            float analytic = g[best];
            g[best] = 0.0f; /* next pick: the next largest */
            if (fabsf(analytic) < 1e-4f)
                break;
            float x0, x;
            be->copy_to_host(&x0, p->data + best, sizeof(float));
            double lp, lm;
            float h = 1e-3f;
            x = x0 + h;
            be->copy_to_device(p->data + best, &x, sizeof(float));
            cr_assert(sherl_forward(m, &s, &batch, lab, tgt, 1, 0, &lp, NULL).code == SHERL_OK);
            x = x0 - h;
            be->copy_to_device(p->data + best, &x, sizeof(float));
            cr_assert(sherl_forward(m, &s, &batch, lab, tgt, 1, 0, &lm, NULL).code == SHERL_OK);
            be->copy_to_device(p->data + best, &x0, sizeof(float));
            double fd = (lp - lm) / (2.0 * h);
            cr_expect(fabs(fd - analytic) <= 0.02 * fabs(analytic) + 1e-4,
                      "%s %s[%zu]: analytic %.6g, finite difference %.6g",
                      train_method_name(method), p->name, best, (double)analytic, fd);
            checked++;
        }
        free(g);
    }
    cr_expect(checked >= m->ps.n, "only %d entries were large enough to check", checked);
    sherl_step_free(&s, m);
    sherl_model_free(m);
    fixture_free(&fx);
}

Test(sherl_finite_differences, sherl_tune_late_every_tensor, .timeout = 120)
{
    fd_case(METHOD_SHERL, TASK_CLASSIFICATION, POOL_MEAN, 0.0f);
}

/* MTSA dropout on (p 0.3): the backward must apply the forward's mask (the same seed, the same
 * element indices), which the finite differences of the masked loss check */
Test(sherl_finite_differences, sherl_mtsa_dropout_every_tensor, .timeout = 120)
{
    fd_case(METHOD_SHERL, TASK_CLASSIFICATION, POOL_MEAN, 0.3f);
}

Test(sherl_finite_differences, sherl_regression_every_tensor, .timeout = 120)
{
    fd_case(METHOD_SHERL, TASK_REGRESSION, POOL_CLS, 0.0f);
}

Test(sherl_finite_differences, full_every_tensor, .timeout = 120)
{
    fd_case(METHOD_FULL, TASK_CLASSIFICATION, POOL_MEAN, 0.0f);
}

/* The MTSA alone in half precision (a bf16/fp16 job: half taps, projections with half operands
 * and fp32 sums, their outputs rounded as autocast returns them, the weight gradient from the
 * rounded output gradient) against sherl_reference.py's float64 emulation of that rounding
 * (mtsa_<precision>.safetensors, on a grid that makes every projection sum exact). The output and
 * every gradient must match the emulation, and be several times nearer it than the unrounded
 * MTSA, so an engine that skipped a rounding fails. The projection weights' gradients get a wider
 * tolerance: the engine rounds its float32 output gradient, the emulation its float64 one, and
 * the two may round a value on a rounding boundary one half-ulp apart. In fp32 the same data
 * check the unrounded MTSA against the float64 one. Every case runs the guidance in more than
 * one chunk of tokens (a step sizes its chunks to its scratch, often one chunk on tiny models). */
static double max_rel_diff(const float *a, const float *b, size_t n)
{
    double most = 0.0, scale = 0.0;
    for (size_t i = 0; i < n; i++) {
        most = fmax(most, fabs((double)a[i] - b[i]));
        scale = fmax(scale, fabs((double)b[i]));
    }
    return most / (scale > 0.0 ? scale : 1.0);
}

/* The fixture's taps "tap.0", "tap.1", ... (up to 8) as one block [K,N,D], as MTSA reads them;
 * their count in *K. */
static float *read_taps(safetensors_file *f, int *K, size_t ND)
{
    float *block = malloc(8 * ND * sizeof(float));
    char name[32];
    int64_t n;
    for (*K = 0; *K < 8; (*K)++) {
        snprintf(name, sizeof name, "tap.%d", *K);
        if (!safetensors_find(f, name))
            break;
        float *t = tensor_f32(f, name, &n);
        cr_assert((size_t)n == ND, "%s has %lld entries, expected %zu", name, (long long)n, ND);
        memcpy(block + (size_t)*K * ND, t, ND * sizeof(float));
        free(t);
    }
    return block;
}

/* tag: the fixture file's precision; prec: the engine's (SHERL_FP32: the unrounded MTSA, on the
 * same data, against the "plain" reference). */
static void mtsa_case(const char *tag, sherl_precision prec, double proj_tol)
{
    const sherl_backend *be = sherl_backend_cpu();
    char path[512];
    snprintf(path, sizeof path, REF "/mtsa_%s.safetensors", tag);
    safetensors_file f;
    cr_assert(safetensors_open(&f, path).code == SHERL_OK, "%s missing", path);
    int64_t n;
    const st_tensor *t0 = safetensors_find(&f, "tap.0");
    const st_tensor *w0 = safetensors_find(&f, "mtsa.proj.0.weight");
    cr_assert(t0 && w0 && t0->ndim == 2 && w0->ndim == 2, "%s: tap.0 / mtsa.proj.0.weight", path);
    int N = (int)t0->shape[0], D = (int)t0->shape[1], d = (int)w0->shape[0], K = 0;
    char name[128];
    int half = prec != SHERL_FP32;
    const char *want_kind = half ? "half" : "plain";
    const char *label = half ? tag : "fp32", *ref = half ? "the emulation" : "the float64 MTSA";
    size_t ND = (size_t)N * D;
    float *taps32 = read_taps(&f, &K, ND);
    uint16_t *taps16 = malloc((size_t)K * ND * sizeof(uint16_t));
    half_round(be, half ? prec : SHERL_BF16, taps16, taps32, (size_t)K * ND);
    cr_assert(K >= 2, "%s: %d taps", path, K);

    param_set ps;
    param_set_init(&ps, be);
    mtsa a;
    cr_assert(mtsa_register(&a, &ps, K, D, d, 1e-12f, 0.0f).code == SHERL_OK);
    a.prec = prec;
    cr_assert(param_set_alloc(&ps).code == SHERL_OK);
    sherl_status st = param_set_load(&ps, path, 1);
    cr_assert(st.code == SHERL_OK, "%s", st.msg);
    mtsa_acts acts;
    sherl_arena ar;
    arena_measure(&ar);
    mtsa_acts_layout(&acts, &a, N, &ar);
    mtsa_scratch_layout(&acts, &a, N, 0, &ar); /* no budget: the smallest chunks */
    size_t bytes = ar.used;
    cr_assert(arena_alloc(&ar, be, bytes, "MTSA activations").code == SHERL_OK);
    mtsa_acts_layout(&acts, &a, N, &ar);
    mtsa_scratch_layout(&acts, &a, N, 0, &ar); /* no budget: the smallest chunks */
    cr_assert(arena_check(&ar, "MTSA activations").code == SHERL_OK);
    cr_assert(acts.chunk < N, "the case should take more than one chunk (chunk %d of %d)",
              acts.chunk, N);

    float *h_last = tensor_f32(&f, "h_last", &n), *dy = tensor_f32(&f, "dy", &n);
    float *y = malloc((size_t)N * D * sizeof(float));
    const uint16_t *t16 = half ? taps16 : NULL;
    const float *t32 = half ? NULL : taps32;
    mtsa_forward(&a, &ps, &acts, y, t32, t16, h_last, N, 0, 0);
    param_set_zero_grad(&ps);
    mtsa_backward(&a, &ps, &acts, dy, t32, t16, h_last, N, 0, 0);

    snprintf(name, sizeof name, "y.%s", want_kind);
    float *want = tensor_f32(&f, name, &n), *plain = tensor_f32(&f, "y.plain", &n);
    double e = max_rel_diff(y, want, n), e_plain = max_rel_diff(y, plain, n);
    cr_expect(e <= 1e-5, "%s: y is %.3g off %s (relative to its largest entry)", label, e, ref);
    double worst = e, worst_plain = e_plain;
    free(want), free(plain);
    for (int i = 0; i < ps.n; i++) {
        const sherl_param *p = &ps.items[i];
        snprintf(name, sizeof name, "grad.%s.%s", want_kind, p->name);
        want = tensor_f32(&f, name, &n);
        snprintf(name, sizeof name, "grad.plain.%s", p->name);
        plain = tensor_f32(&f, name, &n);
        cr_assert((size_t)n == p->numel, "%s: %s has %lld entries, the engine %zu", tag, name,
                  (long long)n, p->numel);
        double tol = strstr(p->name, "mtsa.proj.") && strstr(p->name, ".weight") ? proj_tol : 2e-4;
        e = max_rel_diff(p->grad, want, p->numel);
        e_plain = max_rel_diff(p->grad, plain, p->numel);
        cr_expect(e <= tol, "%s: grad %s is %.3g off %s (tolerance %.3g)", label, p->name, e, ref,
                  tol);
        worst = fmax(worst, e), worst_plain = fmax(worst_plain, e_plain);
        free(want), free(plain);
    }
    cr_expect(!half || worst * 4 <= worst_plain,
              "%s: the engine is %.3g off the emulation at worst but only %.3g off the unrounded "
              "MTSA: it does not round as a half job does", tag, worst, worst_plain);
    cr_log_info("mtsa %s: worst %.3g off %s, %.3g off the unrounded MTSA (chunks of %d of %d "
                "tokens)\n", label, worst, ref, worst_plain, acts.chunk, N);
    free(y), free(h_last), free(dy), free(taps16), free(taps32);
    arena_release(&ar);
    param_set_free(&ps);
    mtsa_free(&a);
    safetensors_close(&f);
}

Test(sherl_oracle, mtsa_fp32_chunked, .timeout = 60) { mtsa_case("bf16", SHERL_FP32, 2e-4); }
Test(sherl_oracle, mtsa_bf16, .timeout = 60) { mtsa_case("bf16", SHERL_BF16, 2e-3); }
Test(sherl_oracle, mtsa_fp16, .timeout = 60) { mtsa_case("fp16", SHERL_FP16, 3e-4); }

/* One forward and backward of the MTSA in fp32 with its scratch laid out for `budget` bytes;
 * y and the concatenated gradients (ps order) come back in malloc'd buffers. */
static int mtsa_run_chunked(const mtsa *a, param_set *ps, int N, size_t budget,
                            const float *taps, const float *h_last, const float *dy,
                            int train, float **y, float **grads)
{
    const sherl_backend *be = ps->be;
    mtsa_acts acts;
    sherl_arena ar;
    arena_measure(&ar);
    mtsa_acts_layout(&acts, a, N, &ar);
    mtsa_scratch_layout(&acts, a, N, budget, &ar);
    cr_assert(arena_alloc(&ar, be, ar.used, "MTSA activations").code == SHERL_OK);
    mtsa_acts_layout(&acts, a, N, &ar);
    mtsa_scratch_layout(&acts, a, N, budget, &ar);
    cr_assert(arena_check(&ar, "MTSA activations").code == SHERL_OK);
    *y = malloc((size_t)N * a->D * sizeof(float));
    mtsa_forward(a, ps, &acts, *y, taps, NULL, h_last, N, train, 11);
    param_set_zero_grad(ps);
    mtsa_backward(a, ps, &acts, dy, taps, NULL, h_last, N, train, 11);
    size_t total = 0, at = 0;
    for (int i = 0; i < ps->n; i++)
        total += ps->items[i].numel;
    *grads = malloc(total * sizeof(float));
    for (int i = 0; i < ps->n; i++) {
        memcpy(*grads + at, ps->items[i].grad, ps->items[i].numel * sizeof(float));
        at += ps->items[i].numel;
    }
    arena_release(&ar);
    return acts.chunk;
}

/* Dropout inside the MTSA draws its mask by element index, so the chunks of tokens the head runs
 * by must not change it: the smallest chunks give the one-chunk run's output and gradients
 * (up to summation order), and the mask is really applied (the output moves from p = 0's). */
Test(sherl_oracle, mtsa_dropout_chunks, .timeout = 60)
{
    const sherl_backend *be = sherl_backend_cpu();
    safetensors_file f;
    cr_assert(safetensors_open(&f, REF "/mtsa_bf16.safetensors").code == SHERL_OK);
    int64_t n;
    const st_tensor *t0 = safetensors_find(&f, "tap.0");
    const st_tensor *w0 = safetensors_find(&f, "mtsa.proj.0.weight");
    cr_assert(t0 && w0);
    int N = (int)t0->shape[0], D = (int)t0->shape[1], d = (int)w0->shape[0], K = 0;
    float *taps = read_taps(&f, &K, (size_t)N * D);
    float *h_last = tensor_f32(&f, "h_last", &n), *dy = tensor_f32(&f, "dy", &n);
    float *y[3], *g[3];
    int chunk[3];
    for (int run = 0; run < 3; run++) { /* p 0.3 one chunk, p 0.3 smallest chunks, p 0 */
        param_set ps;
        param_set_init(&ps, be);
        mtsa a;
        cr_assert(mtsa_register(&a, &ps, K, D, d, 1e-12f, run < 2 ? 0.3f : 0.0f).code == SHERL_OK);
        cr_assert(param_set_alloc(&ps).code == SHERL_OK);
        cr_assert(param_set_load(&ps, REF "/mtsa_bf16.safetensors", 1).code == SHERL_OK);
        chunk[run] = mtsa_run_chunked(&a, &ps, N, run == 1 ? 0 : (size_t)1 << 30,
                                      taps, h_last, dy, 1, &y[run], &g[run]);
        if (run == 0)
            for (int i = n = 0; i < ps.n; i++)
                n += (int64_t)ps.items[i].numel;
        param_set_free(&ps);
        mtsa_free(&a);
    }
    cr_assert(chunk[0] == N && chunk[1] < N, "chunks %d and %d of %d", chunk[0], chunk[1], N);
    double ey = max_rel_diff(y[1], y[0], (size_t)N * D), eg = max_rel_diff(g[1], g[0], (size_t)n);
    double moved = max_rel_diff(y[2], y[0], (size_t)N * D);
    cr_expect(ey <= 1e-6 && eg <= 1e-5,
              "chunks of %d tokens differ from one chunk under dropout: y %.3g, gradients %.3g",
              chunk[1], ey, eg);
    cr_expect(moved >= 1e-2, "dropout p = 0.3 left y within %.3g of p = 0", moved);
    cr_log_info("mtsa dropout: chunks of %d vs %d tokens: y %.3g, gradients %.3g apart; p = 0 "
                "is %.3g away\n", chunk[1], N, ey, eg, moved);
    for (int run = 0; run < 3; run++)
        free(y[run]), free(g[run]);
    free(taps), free(h_last), free(dy);
    safetensors_close(&f);
}

/* A bert_layer's twelve tensors in the order of fused_layer_tensors (sherl_reference.py). */
static const char *const LAYER_TENSOR[12] = {
    "qkv.weight", "qkv.bias", "attn_out.weight", "attn_out.bias", "ln1.weight", "ln1.bias",
    "ffn_in.weight", "ffn_in.bias", "ffn_out.weight", "ffn_out.bias", "ln2.weight", "ln2.bias"};

static float **layer_tensor(bert_layer *ly, int j)
{
    float **f[12] = {&ly->qkv_w,    &ly->qkv_b,    &ly->attn_out_w, &ly->attn_out_b,
                     &ly->ln1_w,    &ly->ln1_b,    &ly->ffn_in_w,   &ly->ffn_in_b,
                     &ly->ffn_out_w, &ly->ffn_out_b, &ly->ln2_w,     &ly->ln2_b};
    return f[j];
}

/* A layer trained in a bf16 job: its four products take its matrices' half copies and half
 * operands with fp32 sums (linear_forward / linear_backward), as autocast runs them, and its
 * attention rounds Q|K|V and the probabilities (attention_half_forward); the rest of the layer
 * is fp32. Against sherl_reference.py's float64 emulation (layer_half.safetensors):
 * the output, the input gradient and every weight gradient must match it, and be several times
 * nearer it than the unrounded layer, so an engine that skipped a rounding (or kept its fp32
 * products) fails. */
Test(sherl_oracle, layer_bf16_trained, .timeout = 60)
{
    const sherl_backend *be = sherl_backend_cpu();
    bert_model *bb;
    sherl_status st = bert_load_prec(&bb, REF "/tiny", be, SHERL_BF16);
    cr_assert(st.code == SHERL_OK, "%s", st.msg);
    const hf_config *c = &bb->cfg;
    size_t D = (size_t)c->hidden_size, F = (size_t)c->intermediate_size;
    int li = c->num_hidden_layers - 1;
    safetensors_file f, bf;
    cr_assert(safetensors_open(&f, REF "/layer_half.safetensors").code == SHERL_OK);
    cr_assert(safetensors_open(&bf, REF "/batch.safetensors").code == SHERL_OK);
    const st_tensor *tx = safetensors_find(&f, "x");
    cr_assert(tx && tx->ndim == 3 && (size_t)tx->shape[2] == D, "layer_half: x");
    int B = (int)tx->shape[0], T = (int)tx->shape[1];
    size_t N = (size_t)B * T;
    int64_t n;
    float *x = tensor_f32(&f, "x", &n), *dout = tensor_f32(&f, "dout", &n);
    int32_t *mask = tensor_i32(&bf, "attention_mask");
    float *mask_add = malloc(N * sizeof(float));
    for (size_t i = 0; i < N; i++)
        mask_add[i] = mask[i] ? 0.0f : -FLT_MAX;

    size_t numel[12] = {3 * D * D, 3 * D, D * D, D, D, D, F * D, F, D * F, D, D, D};
    bert_layer master, grads, ly;
    memset(&master, 0, sizeof master), memset(&grads, 0, sizeof grads);
    for (int j = 0; j < 12; j++) {
        *layer_tensor(&master, j) = malloc(numel[j] * sizeof(float));
        *layer_tensor(&grads, j) = calloc(numel[j], sizeof(float));
    }
    st = bert_read_layer_f32(bb, li, &master);
    cr_assert(st.code == SHERL_OK, "%s", st.msg);
    ly = master;
    uint16_t *w16[4];
    int mat[4] = {0, 2, 6, 8};
    for (int j = 0; j < 4; j++) {
        w16[j] = malloc(numel[mat[j]] * sizeof(uint16_t));
        half_round(be, SHERL_BF16, w16[j], *layer_tensor(&master, mat[j]), numel[mat[j]]);
        *layer_tensor(&ly, mat[j]) = NULL;
    }
    ly.qkv_w16 = w16[0], ly.attn_out_w16 = w16[1], ly.ffn_in_w16 = w16[2], ly.ffn_out_w16 = w16[3];

    bert_workspace ws;
    cr_assert(bert_workspace_create(&ws, bb, B, T).code == SHERL_OK);
    bert_layer_acts acts;
    bert_layer_grad_ws gws;
    sherl_arena ar;
    arena_measure(&ar);
    bert_layer_acts_layout(&acts, &ar, B, T, (int)D, SHERL_BF16, 1);
    bert_layer_grad_ws_layout(&gws, &ar, c, B, T, !bb->be->host_memory);
    cr_assert(arena_alloc(&ar, be, ar.used, "layer activations").code == SHERL_OK);
    bert_layer_acts_layout(&acts, &ar, B, T, (int)D, SHERL_BF16, 1);
    bert_layer_grad_ws_layout(&gws, &ar, c, B, T, !bb->be->host_memory);
    cr_assert(arena_check(&ar, "layer activations").code == SHERL_OK);
    bert_layer_acts_share_scratch(&acts, &ws.acts);

    float *out = malloc(N * D * sizeof(float)), *dx = calloc(N * D, sizeof(float));
    bert_layer_forward(bb, &ly, &acts, out, x, mask_add, ws.act16, ws.act16_n, B, T);
    bert_layer_backward(bb, &ly, &grads, &acts, &gws, dx, dout, x, mask_add, ws.act16,
                        ws.act16_n, B, T);

    double worst = 0.0, worst_plain = 0.0;
    char name[96];
    for (int j = -2; j < 12; j++) {
        const float *got = j == -2 ? out : j == -1 ? dx : *layer_tensor(&grads, j);
        const char *what = j == -2 ? "out" : j == -1 ? "dx" : LAYER_TENSOR[j];
        size_t cnt = j < 0 ? N * D : numel[j];
        snprintf(name, sizeof name, j < 0 ? "%s.half" : "grad.half.%s", what);
        float *want = tensor_f32(&f, name, &n);
        snprintf(name, sizeof name, j < 0 ? "%s.plain" : "grad.plain.%s", what);
        float *plain = tensor_f32(&f, name, &n);
        cr_assert((size_t)n == cnt, "%s: %lld entries, the engine %zu", name, (long long)n, cnt);
        double e = max_rel_diff(got, want, cnt), e_plain = max_rel_diff(got, plain, cnt);
        cr_expect(e <= 2e-4, "bf16 trained layer: %s is %.3g off the emulation (tolerance 2e-4)",
                  what, e);
        worst = fmax(worst, e), worst_plain = fmax(worst_plain, e_plain);
        free(want), free(plain);
    }
    cr_expect(worst * 4 <= worst_plain,
              "bf16 trained layer: %.3g off the emulation at worst but only %.3g off the "
              "unrounded layer: its products do not round as a half job's do", worst, worst_plain);
    cr_log_info("layer bf16 trained: worst %.3g off the emulation, %.3g off the unrounded layer\n",
                worst, worst_plain);
    free(out), free(dx), free(x), free(dout), free(mask), free(mask_add);
    for (int j = 0; j < 12; j++)
        free(*layer_tensor(&grads, j)), free(*layer_tensor(&master, j));
    for (int j = 0; j < 4; j++)
        free(w16[j]);
    arena_release(&ar);
    bert_workspace_free(&ws);
    safetensors_close(&f), safetensors_close(&bf);
    bert_free(bb);
}
