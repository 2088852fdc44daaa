/* Predict: a succeeded job's artifact on the shared backbone, over texts. */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_util.h"
#include "planner.h"
#include "service.h"
#include "sherl_model.h"
#include "tokenizer.h"

#define PREDICT_MAX_TEXTS 1024
#define PREDICT_BATCH 32

void predict_result_free(predict_result *p)
{
    free(p->scores), free(p->best);
    for (size_t i = 0; p->labels && i < p->n_labels; i++)
        free(p->labels[i]);
    free(p->labels);
    memset(p, 0, sizeof *p);
}

static int err(predict_result *out, int code, const char *msg)
{
    snprintf(out->error, sizeof out->error, "%s", msg);
    return code;
}

typedef struct {
    sherld *d;
    call_use *u;
} predict_counted_ctx;

static void predict_counted(void *ctx)
{
    predict_counted_ctx *c = ctx;
    jobs_call_backbone_counted(c->d, c->u);
}

/* Admits what Predict will hold on its device at batch B x T: the planner's arenas for the
 * job's model but the shared backbone and the optimizer's moments (Predict has none), the op
 * scratch and the BLAS buffers; and while the backbone is not resident, the backbone and the
 * largest of its load's host buffers. */
static job_result predict_reserve(sherld *d, const job_spec *spec, const sherl_options *opt,
                                  const sherl_backend *be, int B, int T, const char *id,
                                  call_use *u)
{
    job_result jr = {0, ""};
    hf_config cfg;
    memory_plan plan;
    sherl_status st = backbones_config(spec->backbone, &cfg);
    if (!st.code)
        st = memory_plan_model(&plan, &cfg, opt, be,
                               B, T, spec->threads > 0 ? spec->threads : be->get_threads());
    if (st.code) {
        jr.code = RPC_INTERNAL;
        snprintf(jr.msg, sizeof jr.msg, "%s", st.msg);
        return jr;
    }
    memset(u, 0, sizeof *u);
    snprintf(u->id, sizeof u->id, "predict:%s", id);
    snprintf(u->name, sizeof u->name, "Predict on %s (%d x %d tokens)", id, B, T);
    u->pool = jobs_pool(d, be);
    int64_t loading = 0; /* the load's host buffers, when Predict loads the backbone itself */
    for (int i = 0; i < plan.n; i++) {
        const plan_item *it = &plan.items[i];
        int64_t b = (int64_t)it->bytes;
        if (!strcmp(it->name, "frozen backbone weights") || !strcmp(it->name, "AdamW moments"))
            continue;
        if (it->kind == PLAN_ARENA)
            u->own += b;
        else if (it->kind == PLAN_HOST || !strcmp(it->name, "op scratch"))
            *(be->host_memory ? &u->own : &u->host) += b;
        else if ((!strcmp(it->name, "load staging") ||
                  !strcmp(it->name, "half-precision rounding buffer")) && b > loading)
            loading = b;
    }
    if (!backbones_is_loaded(&d->backbones, spec->backbone, be, opt->precision)) {
        u->backbone = (int64_t)plan.backbone_bytes;
        *(be->host_memory ? &u->own : &u->host) += loading;
    }
    return jobs_call_reserve(d, u, "Predict");
}

static void predict_cleanup(tok_encoding *enc, size_t n, wordpiece_tokenizer *tok, sherl_model *m,
                            sherl_step *s, bert_model *bb, sherld *d)
{
    for (size_t i = 0; enc && i < n; i++)
        tok_encoding_free(&enc[i]);
    free(enc);
    if (s)
        sherl_step_free(s, m);
    sherl_model_free(m);
    wordpiece_free(tok);
    if (bb)
        backbones_release(&d->backbones, bb);
}

int predict_run(sherld *d, const job_record *r, const char *const *texts, size_t n,
                const char *const *texts_b, size_t nb, predict_result *out)
{
    memset(out, 0, sizeof *out);
    if (r->state != JOB_SUCCEEDED) {
        char m[160];
        snprintf(m, sizeof m, "job_id: job %s is %s; Predict needs a SUCCEEDED job", r->id,
                 job_state_name(r->state));
        return err(out, RPC_FAILED_PRECONDITION, m);
    }
    if (n == 0 || n > PREDICT_MAX_TEXTS)
        return err(out, RPC_INVALID_ARGUMENT, "texts: expected 1..1024 texts");
    if (nb && nb != n)
        return err(out, RPC_INVALID_ARGUMENT, "texts_b: give none or one per text");
    job_spec spec;
    sherl_status st = job_spec_parse(&spec, r->spec_json, strlen(r->spec_json), "stored spec", NULL);
    if (st.code)
        return err(out, RPC_INTERNAL, st.msg);
    char path[JOB_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s/artifact/adapter_config.json", d->jobs_dir, r->id);
    cJSON *cfg;
    st = json_load_object(path, 16u << 20, &cfg);
    if (st.code)
        return err(out, RPC_INTERNAL, st.msg);
    sherl_options opt = spec.model;
    const cJSON *labels = cJSON_GetObjectItemCaseSensitive(cfg, "labels");
    if (opt.task == TASK_CLASSIFICATION) {
        int nl = cJSON_GetArraySize(labels);
        out->labels = calloc((size_t)(nl > 0 ? nl : 1), sizeof *out->labels);
        for (int i = 0; out->labels && i < nl; i++) {
            const cJSON *l = cJSON_GetArrayItem(labels, i);
            out->labels[i] = strdup(cJSON_IsString(l) ? l->valuestring : "");
            out->n_labels++;
        }
        opt.num_labels = nl;
    }
    cJSON_Delete(cfg);
    bert_model *bb = NULL;
    wordpiece_tokenizer *tok = NULL;
    sherl_model *m = NULL;
    sherl_step s;
    int have_step = 0;
    int code = RPC_OK;
    /* the job's backend and the resident copy for its (folder, device, precision): the one
     * its training used when the node still has that device */
    const sherl_backend *be = NULL;
    st = job_backend(&spec, &be);
    if (st.code) {
        code = st.code == SHERL_EUNSUPPORTED ? RPC_FAILED_PRECONDITION : RPC_INTERNAL;
        snprintf(out->error, sizeof out->error, "job_id: ");
    }
    if (!st.code && jobs_any_gpu(spec.device, be)) { /* the GPU holding it, else most room */
        const sherl_backend *gpu =
            jobs_gpu_for_backbone(d, spec.backbone, spec.model.precision, 0);
        be = gpu ? gpu : be;
    }
    if (!st.code)
        st = wordpiece_load(&tok, spec.backbone);
    tok_encoding *enc = calloc(n, sizeof *enc);
    if (!st.code && !enc)
        st = sherl_errorf(SHERL_ENOMEM, "out of memory");
    int T = 2;
    for (size_t i = 0; !st.code && i < n; i++) {
        st = wordpiece_encode(tok, texts[i], nb ? texts_b[i] : NULL, spec.max_length, &enc[i]);
        if (st.code) {
            snprintf(out->error, sizeof out->error, "texts[%zu]: ", i);
            code = RPC_INVALID_ARGUMENT;
        } else if (enc[i].len > T) {
            T = enc[i].len;
        }
    }
    int B = n < PREDICT_BATCH ? (int)n : PREDICT_BATCH;
    /* its memory admitted as a job's, before anything big is allocated */
    call_use use;
    int reserved = 0;
    if (!st.code) {
        job_result jr = predict_reserve(d, &spec, &opt, be, B, T, r->id, &use);
        if (jr.code) {
            predict_cleanup(enc, n, tok, NULL, NULL, NULL, d);
            predict_result_free(out);
            return err(out, jr.code, jr.msg);
        }
        reserved = 1;
    }
    predict_counted_ctx cc = {d, &use};
    backbone_hooks hooks = {predict_counted, &cc, NULL};
    if (!st.code)
        st = backbones_acquire(&d->backbones, spec.backbone, be, spec.model.precision, 0, &bb,
                               &hooks);
    if (!st.code)
        st = sherl_model_create(&m, bb, &opt);
    if (!st.code) {
        snprintf(path, sizeof path, "%s/%s/artifact/adapter_model.safetensors", d->jobs_dir, r->id);
        st = param_set_load(&m->ps, path, 1);
    }
    if (!st.code && !(st = sherl_step_create(&s, m, B, T)).code)
        have_step = 1;
    size_t C = m ? (size_t)m->out_dim : 0;
    out->n = n, out->n_out = C;
    out->scores = st.code ? NULL : calloc(n * (C ? C : 1), sizeof(float));
    out->best = st.code ? NULL : calloc(n, sizeof(int));
    if (!st.code && (!out->scores || !out->best))
        st = sherl_errorf(SHERL_ENOMEM, "out of memory");
    for (size_t b0 = 0; !st.code && b0 < n; b0 += (size_t)B) {
        int nb_ = (int)(n - b0 < (size_t)B ? n - b0 : (size_t)B);
        bert_batch batch;
        st = bert_batch_from_encodings(&batch, enc + b0, nb_, wordpiece_pad_id(tok));
        if (!st.code)
            st = sherl_forward(m, &s, &batch, NULL, NULL, 0, 0, NULL, out->scores + b0 * C);
        bert_batch_free(&batch);
        for (int k = 0; !st.code && k < nb_; k++) {
            float *row = out->scores + (b0 + (size_t)k) * C;
            if (opt.task != TASK_CLASSIFICATION) {
                out->best[b0 + (size_t)k] = -1;
                continue;
            }
            int best = 0;
            float mx = row[0];
            for (size_t c = 1; c < C; c++)
                if (row[c] > mx)
                    mx = row[c], best = (int)c;
            double sum = 0;
            for (size_t c = 0; c < C; c++)
                sum += exp((double)row[c] - mx);
            for (size_t c = 0; c < C; c++)
                row[c] = (float)(exp((double)row[c] - mx) / sum);
            out->best[b0 + (size_t)k] = best;
        }
    }
    predict_cleanup(enc, n, tok, m, have_step ? &s : NULL, bb, d);
    if (reserved)
        jobs_call_release(d, &use);
    if (st.code) {
        int c2 = code != RPC_OK ? code : st.code == SHERL_ENOMEM ? RPC_RESOURCE_EXHAUSTED : RPC_INTERNAL;
        char msg[sizeof out->error];
        snprintf(msg, sizeof msg, "%.40s%.540s", out->error, st.msg);
        predict_result_free(out);
        return err(out, c2, msg);
    }
    return RPC_OK;
}
