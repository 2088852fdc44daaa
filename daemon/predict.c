/* Predict: a succeeded job's artifact on the shared backbone, over texts. */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_util.h"
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
        st = backbones_acquire(&d->backbones, spec.backbone, be, spec.model.precision, 0, &bb,
                               NULL, NULL);
    if (!st.code)
        st = wordpiece_load(&tok, spec.backbone);
    if (!st.code)
        st = sherl_model_create(&m, bb, &opt);
    if (!st.code) {
        snprintf(path, sizeof path, "%s/%s/artifact/adapter_model.safetensors", d->jobs_dir, r->id);
        st = param_set_load(&m->ps, path, 1);
    }
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
    for (size_t i = 0; enc && i < n; i++)
        tok_encoding_free(&enc[i]);
    free(enc);
    if (have_step)
        sherl_step_free(&s, m);
    sherl_model_free(m);
    wordpiece_free(tok);
    if (bb)
        backbones_release(&d->backbones, bb);
    if (st.code) {
        int c2 = code != RPC_OK ? code : st.code == SHERL_ENOMEM ? RPC_RESOURCE_EXHAUSTED : RPC_INTERNAL;
        char msg[sizeof out->error];
        snprintf(msg, sizeof msg, "%.40s%.540s", out->error, st.msg);
        predict_result_free(out);
        return err(out, c2, msg);
    }
    return RPC_OK;
}
