/* gpu_bert_oracle: the BERT encoder's forward on a chosen backend against Hugging Face
 * transformers (a dump of tests/gpu/bert_reference_dump.py, in the format of
 * tests/oracle/bert_reference.py).
 *
 *   gpu_bert_oracle --backend cpu|cuda|auto --model DIR --reference FILE [--tol 1e-4]
 *                   [--precision fp32|bf16|fp16]
 *
 * --precision bf16 (fp16) loads the weight matrices and embedding tables in bf16 (fp16) with
 * bert_load_prec and compares with the dump's hidden_bf16_* (hidden_f16_*) states: PyTorch's fp32
 * model with the tables and every encoder Linear's input and weight rounded the same way, fp32
 * accumulation: our half-precision semantics, computed independently.
 *
 * Loads DIR with bert_load on the backend, runs bert_forward on the reference batch (token ids,
 * token types and attention mask, padded rows included) keeping every hidden state the dump
 * holds (h_0 .. h_L, or only h_L), then synchronises and checks take_error. Each state passes when
 * max |ours - HF| / max |HF| <= tol over all its positions, padding included. Exit 0 when every
 * state passes (or, for --backend cuda, when there is no GPU: then it says so and runs nothing),
 * 1 when one fails or the backend reports an error, 2 on bad arguments or unreadable files.
 *
 * Plain C without Criterion, so it builds on the GPU machine's image (tests/gpu/run.sh). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bert.h"
#include "safetensors.h"

#define PROG "gpu_bert_oracle"

static void usage(void)
{
    fprintf(stderr,
            "usage: " PROG " --backend cpu|cuda|auto --model DIR --reference FILE [--tol 1e-4]\n"
            "       [--precision fp32|bf16|fp16]\n"
            "  Runs the BERT in DIR on the backend over the batch of FILE (written by\n"
            "  tests/gpu/bert_reference_dump.py) and compares every hidden state with it:\n"
            "  max |ours - HF| / max |HF| <= tol for each.\n");
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* An I32 [B,T] tensor of the reference, copied; NULL (with a message) when absent or off. */
static int32_t *read_ids(const safetensors_file *f, const char *name, int B, int T)
{
    const st_tensor *t = safetensors_find(f, name);
    if (!t || t->dtype != ST_I32 || t->ndim != 2 || t->shape[0] != B || t->shape[1] != T) {
        fprintf(stderr, PROG ": %s: tensor %s missing or not I32 [%d,%d]\n", f->path, name, B, T);
        return NULL;
    }
    int32_t *v = malloc(t->nbytes);
    if (v)
        memcpy(v, t->data, t->nbytes);
    return v;
}

int main(int argc, char **argv)
{
    const char *backend = NULL, *model_dir = NULL, *ref_path = NULL;
    double tol = 1e-4;
    sherl_precision prec = SHERL_FP32;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            return 0;
        }
        if (!v) {
            fprintf(stderr, PROG ": %s needs a value (or is unknown)\n", a);
            usage();
            return 2;
        }
        if (!strcmp(a, "--backend")) {
            backend = v;
        } else if (!strcmp(a, "--model")) {
            model_dir = v;
        } else if (!strcmp(a, "--reference")) {
            ref_path = v;
        } else if (!strcmp(a, "--precision")) {
            if (sherl_precision_parse(v, &prec)) {
                fprintf(stderr, PROG ": --precision %s: expected fp32, bf16 or fp16\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--tol")) {
            char *end;
            tol = strtod(v, &end);
            if (*end || !(tol > 0)) {
                fprintf(stderr, PROG ": --tol %s is not a positive number\n", v);
                return 2;
            }
        } else {
            fprintf(stderr, PROG ": unknown argument %s\n", a);
            usage();
            return 2;
        }
        i++;
    }
    if (!backend || !model_dir || !ref_path) {
        fprintf(stderr, PROG ": --backend, --model and --reference are required\n");
        usage();
        return 2;
    }

    const sherl_backend *be = sherl_backend_by_name(backend);
    if (!be) {
        if (strcmp(backend, "cuda") != 0) {
            fprintf(stderr, PROG ": unknown backend '%s' (cpu, cuda or auto)\n", backend);
            return 2;
        }
        char why[256];
        if (sherl_cuda_absent(why, sizeof why) == 0) {
            printf(PROG ": no GPU: 1 test not run (%s)\n", why);
            return 0;
        }
        fprintf(stderr, PROG ": %s\n", why); /* a GPU this build cannot use: a failure */
        return 1;
    }
    char desc[256] = "";
    if (be->describe)
        be->describe(desc, sizeof desc);
    printf(PROG ": backend %s (%s)\n", be->name, desc);

    double t0 = now_s();
    bert_model *m;
    sherl_status st = bert_load_prec(&m, model_dir, be, prec);
    if (st.code != SHERL_OK) {
        fprintf(stderr, PROG ": bert_load(%s) on %s: %s\n", model_dir, be->name, st.msg);
        return 2;
    }
    double t_load = now_s() - t0;
    safetensors_file ref;
    st = safetensors_open(&ref, ref_path);
    if (st.code != SHERL_OK) {
        fprintf(stderr, PROG ": %s\n", st.msg);
        bert_free(m);
        return 2;
    }
    const st_tensor *ids_t = safetensors_find(&ref, "input_ids");
    if (!ids_t || ids_t->ndim != 2) {
        fprintf(stderr, PROG ": %s has no 2-D input_ids\n", ref_path);
        return 2;
    }
    int B = (int)ids_t->shape[0], T = (int)ids_t->shape[1];
    int L = m->cfg.num_hidden_layers, D = m->cfg.hidden_size;
    bert_batch batch = {B, T, read_ids(&ref, "input_ids", B, T),
                        safetensors_find(&ref, "token_type_ids")
                            ? read_ids(&ref, "token_type_ids", B, T)
                            : NULL,
                        read_ids(&ref, "attention_mask", B, T)};
    if (!batch.input_ids || !batch.attention_mask ||
        (safetensors_find(&ref, "token_type_ids") && !batch.token_type_ids))
        return 2;
    int n_real = 0;
    for (int k = 0; k < B * T; k++)
        n_real += batch.attention_mask[k] != 0;

    size_t BTD = (size_t)B * T * D;
    float **hidden = calloc((size_t)L + 1, sizeof *hidden);
    float *host = malloc(BTD * sizeof(float));
    float *want = malloc(BTD * sizeof(float));
    if (!hidden || !host || !want) {
        fprintf(stderr, PROG ": out of host memory for [%d,%d,%d] states\n", B, T, D);
        return 2;
    }
    int n_states = 0;
    for (int i = 0; i <= L; i++) {
        char name[32];
        snprintf(name, sizeof name,
                 prec == SHERL_BF16   ? "hidden_bf16_%d"
                 : prec == SHERL_FP16 ? "hidden_f16_%d"
                                      : "hidden_%d",
                 i);
        if (!safetensors_find(&ref, name) && i < L)
            continue; /* the dump holds only some states: compare those */
        hidden[i] = be->alloc(BTD * sizeof(float));
        if (!hidden[i]) {
            fprintf(stderr, PROG ": %s: out of memory for h_%d (%zu bytes)\n", be->name, i,
                    BTD * sizeof(float));
            return 1;
        }
        n_states++;
    }
    bert_workspace ws;
    st = bert_workspace_create(&ws, m, B, T);
    if (st.code != SHERL_OK) {
        fprintf(stderr, PROG ": bert_workspace_create(%d, %d): %s\n", B, T, st.msg);
        return 1;
    }

    t0 = now_s();
    st = bert_forward(m, &ws, &batch, hidden);
    be->synchronize();
    double t_fwd = now_s() - t0;
    char err[512];
    if (st.code != SHERL_OK) {
        fprintf(stderr, PROG ": bert_forward: %s\n", st.msg);
        return 1;
    }
    if (be->take_error(err, sizeof err) != 0) {
        fprintf(stderr, PROG ": %s reported an error during the forward: %s\n", be->name, err);
        return 1;
    }
    printf(PROG ": %s: %d layers, hidden %d, %d heads; batch %dx%d (%d real tokens, %d padding); "
           "load %.2f s, forward %.3f s\n",
           model_dir, L, D, m->cfg.num_attention_heads, B, T, n_real, B * T - n_real, t_load,
           t_fwd);

    int failed = 0;
    double worst = 0.0;
    for (int i = 0; i <= L; i++) {
        if (!hidden[i])
            continue;
        char name[32], name64[32];
        snprintf(name, sizeof name,
                 prec == SHERL_BF16   ? "hidden_bf16_%d"
                 : prec == SHERL_FP16 ? "hidden_f16_%d"
                                      : "hidden_%d",
                 i);
        snprintf(name64, sizeof name64, "hidden64_%d", i);
        int64_t shape[3] = {B, T, D};
        st = safetensors_read_f32(&ref, name, want, 3, shape);
        if (st.code != SHERL_OK) {
            fprintf(stderr, PROG ": %s\n", st.msg);
            return 2;
        }
        be->copy_to_host(host, hidden[i], BTD * sizeof(float));
        if (be->take_error(err, sizeof err) != 0) {
            fprintf(stderr, PROG ": %s: copying h_%d back: %s\n", be->name, i, err);
            return 1;
        }
        double scale = 0.0, e_real = 0.0, e_pad = 0.0, e_all = 0.0;
        size_t at = 0;
        int finite = 1;
        for (size_t k = 0; k < BTD; k++) {
            double e = fabs((double)host[k] - (double)want[k]);
            scale = fmax(scale, fabs((double)want[k]));
            if (!isfinite(host[k]))
                finite = 0;
            if (batch.attention_mask[k / D])
                e_real = fmax(e_real, e);
            else
                e_pad = fmax(e_pad, e);
            if (e > e_all)
                e_all = e, at = k;
        }
        double rel = scale > 0 ? e_all / scale : e_all;
        int ok = finite && rel <= tol;
        /* bf16/fp16: after the first layer, ours must also be nearer the half semantics than
         * the fp32 model (else the products were not in bf16: fp32 results sit within the
         * tolerance of the bf16 reference on small random weights) */
        char versus[128] = "";
        if (prec != SHERL_FP32 && i > 0) {
            char name32[32];
            snprintf(name32, sizeof name32, "hidden_%d", i);
            float *f32 = malloc(BTD * sizeof(float));
            if (!f32 || safetensors_read_f32(&ref, name32, f32, 3, shape).code != SHERL_OK) {
                fprintf(stderr, PROG ": %s: no fp32 state %s to compare with\n", ref_path, name32);
                return 2;
            }
            double e32 = 0.0;
            for (size_t k = 0; k < BTD; k++)
                e32 = fmax(e32, fabs((double)host[k] - (double)f32[k]));
            free(f32);
            double rel32 = scale > 0 ? e32 / scale : e32;
            int nearer = rel < rel32;
            snprintf(versus, sizeof versus, "; vs the fp32 model %.3g (%s)", rel32,
                     nearer ? "half nearer, as it must be"
                            : "NOT nearer the half-precision semantics");
            ok = ok && nearer;
        }
        /* the float64 run, when the dump has it: how far HF's own float32 is from exact */
        char exact[96] = "";
        const st_tensor *t64 = safetensors_find(&ref, name64);
        if (t64 && t64->dtype == ST_F64 && t64->numel == (int64_t)BTD) {
            double e64 = 0.0, eref = 0.0;
            for (size_t k = 0; k < BTD; k++) {
                double x;
                memcpy(&x, t64->data + k * sizeof x, sizeof x);
                e64 = fmax(e64, fabs((double)host[k] - x));
                eref = fmax(eref, fabs((double)want[k] - x));
            }
            snprintf(exact, sizeof exact, "; vs float64 fp32 model %.3g (the reference itself %.3g)",
                     e64 / scale, eref / scale);
        }
        printf("%s h_%d: max|ours-HF| %.3g real tokens, %.3g padding; max|HF| %.3g; "
               "relative %.3g (tol %.1g)%s%s%s\n",
               ok ? "ok  " : "FAIL", i, e_real, e_pad, scale, rel, tol, exact, versus,
               finite ? "" : "; NON-FINITE values");
        if (!ok) {
            printf("     worst at [%zu,%zu,%zu]: ours %.8g, HF %.8g\n", at / ((size_t)T * D),
                   at / D % T, at % D, (double)host[at], (double)want[at]);
            failed++;
        }
        worst = fmax(worst, rel);
    }
    printf(PROG ": %s: %s: %d of %d hidden states within %.1g, worst relative error %.3g\n",
           be->name, failed ? "FAIL" : "PASS", n_states - failed, n_states, tol, worst);

    for (int i = 0; i <= L; i++)
        if (hidden[i])
            be->free(hidden[i]);
    free(hidden), free(host), free(want);
    bert_workspace_free(&ws);
    free(batch.input_ids), free(batch.token_type_ids), free(batch.attention_mask);
    safetensors_close(&ref);
    bert_free(m);
    return failed ? 1 : 0;
}
