#include "trainer.h"

#include "fsutil.h"
#include "memstat.h"

#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bert.h"
#include "dataset.h"
#include "json_util.h"
#include "metrics.h"
#include "optim.h"
#include "safetensors.h"
#include "sherl_model.h"
#include "tokenizer.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}


/* ------------------------------------------------------------------------------------------
 * checkpoints: output/checkpoint/params-<step>.safetensors, optim-<step>.safetensors and
 * state.json naming the step. Each file is written atomically and state.json last, so whenever
 * the process dies, state.json points at complete tensor files of one step; older step files are
 * removed only after it. */

static void remove_other_steps(const char *dir, int keep_step)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    char keep_p[64], keep_o[64];
    snprintf(keep_p, sizeof keep_p, "params-%08d.safetensors", keep_step);
    snprintf(keep_o, sizeof keep_o, "optim-%08d.safetensors", keep_step);
    while ((e = readdir(d))) {
        int ours = (!strncmp(e->d_name, "params-", 7) || !strncmp(e->d_name, "optim-", 6)) &&
                   strstr(e->d_name, ".safetensors");
        if (ours && strcmp(e->d_name, keep_p) && strcmp(e->d_name, keep_o)) {
            char path[JOB_PATH_MAX + 320];
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
    }
    closedir(d);
}

/* Writes the parameters (which = 0) or the AdamW moments (which = 1, "m.<name>", "v.<name>").
 * Host-memory backends are written in place; others through one staging copy. */
static sherl_status save_tensors(const param_set *ps, const char *path, int which)
{
    const sherl_backend *be = ps->be;
    int per = which ? 2 : 1;
    st_write_tensor *t = calloc((size_t)ps->n * per, sizeof *t);
    float *host = be->host_memory ? NULL
                                  : malloc((ps->total ? ps->total : 1) * sizeof(float) * per);
    char(*names)[112] = calloc((size_t)ps->n * 2, sizeof *names);
    if (!t || (!be->host_memory && !host) || !names) {
        free(t), free(host), free(names);
        return sherl_errorf(SHERL_ENOMEM, "out of memory writing %s", path);
    }
    int n = 0;
    for (int i = 0; i < ps->n; i++) {
        const sherl_param *p = &ps->items[i];
        for (int k = 0; k < per; k++) {
            const float *src = which ? (k ? p->v : p->m) : p->data;
            if (host) {
                float *dst = host + (size_t)k * ps->total + p->offset;
                be->copy_to_host(dst, src, p->numel * sizeof(float));
                src = dst;
            }
            if (which)
                snprintf(names[n], sizeof names[n], "%s.%s", k ? "v" : "m", p->name);
            else
                snprintf(names[n], sizeof names[n], "%s", p->name);
            t[n].name = names[n];
            t[n].ndim = p->ndim;
            t[n].shape[0] = p->shape[0];
            t[n].shape[1] = p->shape[1];
            t[n].data = src;
            n++;
        }
    }
    sherl_status st = safetensors_write_f32(path, t, n, NULL);
    free(t), free(host), free(names);
    return st;
}

static sherl_status load_moments(param_set *ps, const char *path)
{
    safetensors_file sf;
    SHERL_TRY(safetensors_open(&sf, path));
    sherl_status st = sherl_ok();
    float *host = NULL;
    for (int i = 0; !st.code && i < ps->n; i++) {
        sherl_param *p = &ps->items[i];
        if (!ps->be->host_memory) {
            float *h = realloc(host, p->numel * sizeof(float));
            if (!h) {
                st = sherl_errorf(SHERL_ENOMEM, "out of memory");
                break;
            }
            host = h;
        }
        for (int k = 0; k < 2 && !st.code; k++) {
            char name[112];
            snprintf(name, sizeof name, "%s.%s", k ? "v" : "m", p->name);
            float *dst = k ? p->v : p->m;
            st = safetensors_read_f32(&sf, name, host ? host : dst, p->ndim, p->shape);
            if (!st.code && host)
                ps->be->copy_to_device(dst, host, p->numel * sizeof(float));
        }
    }
    free(host);
    safetensors_close(&sf);
    return st;
}

static sherl_status save_checkpoint(const job_spec *spec, const param_set *ps,
                                    const label_map *labels, int step, int epoch, int pos)
{
    char dir[JOB_PATH_MAX + 32], path[JOB_PATH_MAX + 64];
    snprintf(dir, sizeof dir, "%s/checkpoint", spec->output);
    SHERL_TRY(fs_mkdir_p(dir));
    snprintf(path, sizeof path, "%s/params-%08d.safetensors", dir, step);
    SHERL_TRY(save_tensors(ps, path, 0));
    snprintf(path, sizeof path, "%s/optim-%08d.safetensors", dir, step);
    SHERL_TRY(save_tensors(ps, path, 1));
    cJSON *st = cJSON_CreateObject();
    cJSON_AddNumberToObject(st, "step", step);
    cJSON_AddNumberToObject(st, "epoch", epoch);
    cJSON_AddNumberToObject(st, "position", pos);
    cJSON *lab = cJSON_AddArrayToObject(st, "labels");
    for (int i = 0; labels && i < labels->n; i++)
        cJSON_AddItemToArray(lab, cJSON_CreateString(labels->names[i]));
    char *spec_json = job_spec_to_json(spec);
    cJSON_AddItemToObject(st, "spec", spec_json ? cJSON_Parse(spec_json) : cJSON_CreateNull());
    free(spec_json);
    char *text = cJSON_Print(st);
    cJSON_Delete(st);
    if (!text)
        return sherl_errorf(SHERL_ENOMEM, "out of memory");
    snprintf(path, sizeof path, "%s/state.json", dir);
    sherl_status r = fs_write_atomic(path, text);
    free(text);
    if (!r.code)
        remove_other_steps(dir, step);
    return r;
}

/* Returns 1 and fills step/epoch/pos when a checkpoint was restored, 0 when there is none. */
static sherl_status load_checkpoint(const job_spec *spec, param_set *ps, const label_map *labels,
                                    int *restored, int *step, int *epoch, int *pos)
{
    *restored = 0;
    char path[JOB_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/checkpoint/state.json", spec->output);
    if (access(path, F_OK))
        return sherl_ok();
    cJSON *root;
    SHERL_TRY(json_load_object(path, 64u << 20, &root));
    sherl_status st = sherl_ok();
    int s = -1, e = -1, p = -1;
    st = json_require_int(root, path, "step", 0, 1 << 30, &s);
    if (!st.code)
        st = json_require_int(root, path, "epoch", 0, 1 << 30, &e);
    if (!st.code)
        st = json_require_int(root, path, "position", 0, 1 << 30, &p);
    const cJSON *lab = cJSON_GetObjectItemCaseSensitive(root, "labels");
    if (!st.code && labels && labels->n) {
        int ok = cJSON_IsArray(lab) && cJSON_GetArraySize(lab) == labels->n;
        for (int i = 0; ok && i < labels->n; i++) {
            const cJSON *it = cJSON_GetArrayItem(lab, i);
            ok = cJSON_IsString(it) && !strcmp(it->valuestring, labels->names[i]);
        }
        if (!ok)
            st = sherl_errorf(SHERL_EINVAL, "%s: the checkpoint's labels differ from the "
                                            "training data's: not the same run",
                              path);
    }
    cJSON_Delete(root);
    if (st.code)
        return st;
    snprintf(path, sizeof path, "%s/checkpoint/params-%08d.safetensors", spec->output, s);
    SHERL_TRY(param_set_load(ps, path, 1));
    snprintf(path, sizeof path, "%s/checkpoint/optim-%08d.safetensors", spec->output, s);
    SHERL_TRY(load_moments(ps, path));
    *restored = 1, *step = s, *epoch = e, *pos = p;
    return sherl_ok();
}

/* ------------------------------------------------------------------------------------------
 * evaluation */

typedef struct {
    double loss, accuracy, macro_f1, pearson, spearman;
} eval_metrics;

static sherl_status evaluate(const sherl_model *m, sherl_step *s, const dataset *ds, int batch_size,
                             int pad_id, eval_metrics *out)
{
    int n = ds->n, C = m->out_dim;
    int *idx = malloc(sizeof(int) * (size_t)batch_size);
    float *logits = malloc(sizeof(float) * (size_t)batch_size * C);
    int32_t *pred = malloc(sizeof(int32_t) * (size_t)n), *lab = malloc(sizeof(int32_t) * batch_size);
    float *pv = malloc(sizeof(float) * (size_t)n), *tg = malloc(sizeof(float) * batch_size);
    sherl_status st = sherl_ok();
    double loss_sum = 0;
    if (!idx || !logits || !pred || !lab || !pv || !tg) {
        st = sherl_errorf(SHERL_ENOMEM, "out of memory evaluating %s", ds->path);
        goto done;
    }
    for (int b0 = 0; b0 < n && !st.code; b0 += batch_size) {
        int nb = n - b0 < batch_size ? n - b0 : batch_size;
        for (int k = 0; k < nb; k++)
            idx[k] = b0 + k;
        bert_batch batch;
        int is_cls = m->opt.task == TASK_CLASSIFICATION;
        st = dataset_batch(ds, idx, nb, pad_id, &batch, is_cls ? lab : NULL, is_cls ? NULL : tg);
        if (st.code)
            break;
        double loss;
        int cls = m->opt.task == TASK_CLASSIFICATION;
        st = sherl_forward(m, s, &batch, cls ? lab : NULL, cls ? NULL : tg, 0, 0, &loss, logits);
        bert_batch_free(&batch);
        if (st.code)
            break;
        if ((st = sherl_backend_status(m->be, "evaluating")).code)
            break;
        loss_sum += loss * nb;
        for (int k = 0; k < nb; k++) {
            if (cls) {
                int best = 0;
                for (int c = 1; c < C; c++)
                    if (logits[k * C + c] > logits[k * C + best])
                        best = c;
                pred[b0 + k] = best;
            } else {
                pv[b0 + k] = logits[k];
            }
        }
    }
    if (!st.code) {
        memset(out, 0, sizeof *out);
        out->loss = loss_sum / (n ? n : 1);
        if (m->opt.task == TASK_CLASSIFICATION) {
            out->accuracy = metric_accuracy(pred, ds->labels, n);
            out->macro_f1 = metric_macro_f1(pred, ds->labels, n, m->opt.num_labels);
        } else {
            out->pearson = metric_pearson(pv, ds->targets, n);
            out->spearman = metric_spearman(pv, ds->targets, n);
        }
    }
done:
    free(idx), free(logits), free(pred), free(lab), free(pv), free(tg);
    return st;
}

static void add_metrics(cJSON *obj, const char *split, const eval_metrics *e, task_type task)
{
    cJSON *o = cJSON_AddObjectToObject(obj, split);
    cJSON_AddNumberToObject(o, "loss", e->loss);
    if (task == TASK_CLASSIFICATION) {
        cJSON_AddNumberToObject(o, "accuracy", e->accuracy);
        cJSON_AddNumberToObject(o, "macro_f1", e->macro_f1);
    } else {
        cJSON_AddNumberToObject(o, "pearson", isnan(e->pearson) ? 0 : e->pearson);
        cJSON_AddNumberToObject(o, "spearman", isnan(e->spearman) ? 0 : e->spearman);
    }
}

static void report_eval(const train_hooks *h, train_progress *p, const char *split,
                        const eval_metrics *e)
{
    if (!h || !h->on_progress)
        return;
    p->is_eval = 1;
    p->eval_split = split;
    p->eval_loss = e->loss, p->eval_accuracy = e->accuracy, p->eval_macro_f1 = e->macro_f1;
    p->eval_pearson = e->pearson, p->eval_spearman = e->spearman;
    h->on_progress(h->ctx, p);
    p->is_eval = 0;
}

/* ------------------------------------------------------------------------------------------
 * the run */

/* The peak resident memory of the run: VmHWM minus the RSS when the run started. */
static void measure_peak(train_result *res, const memstat *start)
{
    memstat now;
    if (memstat_read(&now) == 0 && now.hwm > start->rss)
        res->measured_peak_bytes = now.hwm - start->rss;
}

/* The backend's first failure during optimizer step `step` (0-based), as the run's status. */
static sherl_status step_status(const sherl_backend *be, int step)
{
    char doing[64];
    snprintf(doing, sizeof doing, "training step %d", step + 1);
    return sherl_backend_status(be, doing);
}

sherl_status train_run(const job_spec *spec, const train_hooks *hooks, train_result *res)
{
    memset(res, 0, sizeof *res);
    res->resumed_from_step = -1;
    double t_start = now_s();
    const sherl_backend *be = hooks ? hooks->backend : NULL;
    if (!be)
        SHERL_TRY(job_backend(spec, &be));
    if (spec->threads > 0)
        be->set_threads(spec->threads);
    /* the peak is measured from here: what the process held before is the baseline */
    memstat ms0;
    res->peak_reset = memstat_reset_peak() == 0;
    memstat_read(&ms0);
    bert_model *bb = NULL;
    sherl_model *m = NULL;
    job_inputs in;
    sherl_step s;
    int have_step = 0, have_inputs = 0;
    int *perm = NULL, *idx = NULL;
    int32_t *lab = NULL;
    float *tg = NULL;
    sherl_status st = job_inputs_load(&in, spec);
    if (st.code)
        return st;
    have_inputs = 1;
    st = memory_plan_job(&res->plan, spec, &in, be);
    const bert_model *backbone = hooks ? hooks->backbone : NULL;
    if (!st.code && backbone) {
        /* a shared backbone must be the one the spec names: same config as the folder's */
        const hf_config *a = &backbone->cfg, *b = &in.cfg;
        if (a->vocab_size != b->vocab_size || a->hidden_size != b->hidden_size ||
            a->num_hidden_layers != b->num_hidden_layers ||
            a->num_attention_heads != b->num_attention_heads ||
            a->intermediate_size != b->intermediate_size ||
            a->max_position_embeddings != b->max_position_embeddings ||
            a->type_vocab_size != b->type_vocab_size || a->layer_norm_eps != b->layer_norm_eps ||
            backbone->be != be || backbone->prec != in.opt.precision)
            st = sherl_errorf(SHERL_EINVAL, "backbone: the loaded backbone differs from %s "
                                            "(config, device or precision)",
                              spec->backbone);
    } else if (!st.code) {
        st = bert_load_prec(&bb, spec->backbone, be, in.opt.precision);
        backbone = bb;
    }
    if (!st.code)
        st = sherl_model_create(&m, backbone, &in.opt);
    if (st.code)
        goto done;
    const sherl_options opt = in.opt;
    int T = in.T, B = spec->batch_size;
    st = sherl_step_create(&s, m, B, T);
    if (st.code)
        goto done;
    have_step = 1;
    s.graphs = spec->graphs;
    const int pad_for_graphs = !sherl_graph_unusable(m, &s);
    /* a half-precision job trades fp32 products for speed anyway: its fp32 ones (attention, the
     * MTSA up-projection, the head) may use TF32 tensor cores; turned off again at the end */
    be->allow_tf32(opt.precision != SHERL_FP32);
    {
        int threads = spec->threads > 0 ? spec->threads : be->get_threads();
        sherl_scratch_shape q = sherl_step_scratch_shape(m, B, T, threads);
        if (be->prepare(&q)) {
            st = sherl_backend_status(be, "reserving the step's scratch");
            if (!st.code)
                st = sherl_errorf(SHERL_ENOMEM, "reserving the step's scratch failed");
            goto done;
        }
    }
    if (s.arena.cap != res->plan.step_bytes) { /* the planner and the trainer disagree: a bug */
        st = sherl_errorf(SHERL_EINTERNAL, "the step arena (%zu bytes) differs from its plan "
                                           "(%zu bytes)",
                          s.arena.cap, res->plan.step_bytes);
        goto done;
    }
    int n = in.train.n, accum = spec->grad_accum;
    int micro_per_epoch = (n + B - 1) / B;
    int steps_per_epoch = (micro_per_epoch + accum - 1) / accum;
    int total = spec->max_steps > 0 ? spec->max_steps : steps_per_epoch * spec->epochs;
    int warmup = lr_warmup_steps(spec->warmup_ratio, total);
    perm = malloc(sizeof(int) * (size_t)n);
    idx = malloc(sizeof(int) * (size_t)B);
    lab = malloc(sizeof(int32_t) * (size_t)B);
    tg = malloc(sizeof(float) * (size_t)B);
    if (!perm || !idx || !lab || !tg) {
        st = sherl_errorf(SHERL_ENOMEM, "out of memory");
        goto done;
    }
    int step = 0, epoch = 0, pos = 0, restored = 0;
    if (hooks && hooks->resume) {
        st = load_checkpoint(spec, &m->ps, &in.labels, &restored, &step, &epoch, &pos);
        if (st.code)
            goto done;
        if (restored)
            res->resumed_from_step = step;
    }
    int pad = wordpiece_pad_id(in.tok);
    int cls = opt.task == TASK_CLASSIFICATION;
    train_progress prog = {0};
    prog.total_steps = total, prog.epochs = spec->epochs;
    double win_loss = 0, win_t0 = now_s(), run_t0 = now_s();
    int win_steps = 0, win_samples = 0, steps_this_run = 0;
    int eval_every = spec->eval_every_steps;
    int ckpt_every = spec->checkpoint_every;
    dataset_shuffle(perm, n, spec->seed, epoch);
    while (step < total && !st.code) {
        if (pos >= n) { /* epoch boundary: evaluate, checkpoint, reshuffle */
            epoch++;
            pos = 0;
            if (in.val.n && !eval_every) {
                eval_metrics e;
                st = evaluate(m, &s, &in.val, B, pad, &e);
                if (st.code)
                    break;
                prog.step = step, prog.epoch = epoch;
                report_eval(hooks, &prog, "validation", &e);
            }
            if (!ckpt_every && (st = save_checkpoint(spec, &m->ps, &in.labels, step, epoch, pos)).code)
                break;
            dataset_shuffle(perm, n, spec->seed, epoch);
        }
        /* one optimizer step: accum micro-batches, each weighted by its share of examples */
        param_set_zero_grad(&m->ps);
        double step_loss = 0;
        int step_examples = 0;
        /* each micro-batch's mean-loss gradient is weighted by its share of the step's examples,
         * so the accumulated gradient is the mean over the whole step */
        int in_step = n - pos < accum * B ? n - pos : accum * B;
        for (int a = 0; a < accum && pos < n && !st.code; a++) {
            int nb = n - pos < B ? n - pos : B;
            for (int k = 0; k < nb; k++)
                idx[k] = perm[pos + k];
            bert_batch batch;
            st = dataset_batch(&in.train, idx, nb, pad, &batch, cls ? lab : NULL, cls ? NULL : tg);
            if (st.code)
                break;
            /* a graph replays one shape: every batch padded to the step's (the masks keep the
             * padding out of attention and pooling), unless MTSA dropout keeps graphs off (its
             * masks are drawn by element, so padding would change them for nothing) */
            if (pad_for_graphs && (st = bert_batch_pad_to(&batch, T, pad)).code) {
                bert_batch_free(&batch);
                break;
            }
            double loss;
            /* a distinct dropout mask per micro-batch, reproducible from (seed, step, a) */
            uint64_t dseed = spec->seed * 0x9E3779B97F4A7C15ull + (uint64_t)step * 4096u + a;
            s.grad_scale = (float)nb / (float)in_step;
            st = sherl_train_pass(m, &s, &batch, cls ? lab : NULL, cls ? NULL : tg, dseed, &loss);
            bert_batch_free(&batch);
            if (st.code)
                break;
            step_loss += loss * nb;
            step_examples += nb;
            pos += nb;
        }
        if (st.code)
            break;
        /* a device fault first: it would read as divergence, or update the parameters */
        if ((st = step_status(be, step)).code)
            break;
        if (!isfinite(step_loss)) {
            st = sherl_errorf(SHERL_EINVAL, "training diverged at step %d (loss %g): lower "
                                            "optim.lr or set optim.clip_norm",
                              step + 1, step_loss);
            break;
        }
        clip_grad_norm(&m->ps, spec->clip_norm);
        double lr = lr_at(spec->schedule, spec->lr, warmup, total, step);
        param_set_adamw(&m->ps, (float)lr, spec->beta1, spec->beta2, spec->eps, spec->weight_decay,
                        step + 1);
        if ((st = step_status(be, step)).code)
            break;
        step++;
        steps_this_run++;
        win_loss += step_loss / step_examples;
        win_steps++;
        win_samples += step_examples;
        res->final_train_loss = step_loss / step_examples;
        if (hooks && hooks->on_progress && (step % spec->log_every == 0 || step == total)) {
            double t = now_s();
            prog.step = step, prog.epoch = epoch;
            prog.loss = win_loss / win_steps;
            prog.lr = lr;
            prog.samples_per_s = win_samples / (t - win_t0 > 1e-9 ? t - win_t0 : 1e-9);
            prog.elapsed_s = t - t_start;
            prog.eta_s = (t - run_t0) / steps_this_run * (total - step);
            hooks->on_progress(hooks->ctx, &prog);
            win_loss = 0, win_steps = 0, win_samples = 0, win_t0 = t;
        }
        if (eval_every && step % eval_every == 0 && in.val.n) {
            eval_metrics e;
            st = evaluate(m, &s, &in.val, B, pad, &e);
            if (st.code)
                break;
            report_eval(hooks, &prog, "validation", &e);
        }
        int stop = (hooks && hooks->cancel && *hooks->cancel) ||
                   (hooks && hooks->stop_after_steps > 0 && steps_this_run >= hooks->stop_after_steps);
        if ((ckpt_every && step % ckpt_every == 0) || stop) {
            st = save_checkpoint(spec, &m->ps, &in.labels, step, epoch, pos);
            if (st.code)
                break;
        }
        if (stop) {
            res->stopped_early = 1;
            break;
        }
    }
    if (st.code)
        goto done;
    res->steps = step;
    res->epochs_done = epoch + (pos >= n);
    res->graph_captures = s.graph_captures, res->graph_passes = s.graph_passes;
    snprintf(res->graph_note, sizeof res->graph_note, "%s", s.graph_note);
    if (!res->stopped_early) {
        st = save_checkpoint(spec, &m->ps, &in.labels, step, epoch, pos);
        eval_metrics e;
        cJSON *metrics = cJSON_CreateObject();
        cJSON_AddStringToObject(metrics, "method", train_method_name(opt.method));
        cJSON_AddNumberToObject(metrics, "steps", step);
        size_t trainable = 0;
        for (int i = 0; i < m->ps.n; i++)
            trainable += m->ps.items[i].numel;
        cJSON_AddNumberToObject(metrics, "trainable_parameters", (double)trainable);
        cJSON_AddNumberToObject(metrics, "final_train_loss", res->final_train_loss);
        if (!st.code && in.val.n && !(st = evaluate(m, &s, &in.val, B, pad, &e)).code) {
            res->has_val = 1;
            res->val_loss = e.loss, res->val_accuracy = e.accuracy, res->val_macro_f1 = e.macro_f1;
            res->val_pearson = e.pearson, res->val_spearman = e.spearman;
            add_metrics(metrics, "validation", &e, opt.task);
            report_eval(hooks, &prog, "validation", &e);
        }
        if (!st.code && in.test.n && !(st = evaluate(m, &s, &in.test, B, pad, &e)).code) {
            res->has_test = 1;
            res->test_loss = e.loss, res->test_accuracy = e.accuracy, res->test_macro_f1 = e.macro_f1;
            res->test_pearson = e.pearson, res->test_spearman = e.spearman;
            add_metrics(metrics, "test", &e, opt.task);
            report_eval(hooks, &prog, "test", &e);
        }
        res->wall_s = now_s() - t_start;
        cJSON_AddNumberToObject(metrics, "wall_s", res->wall_s);
        if (spec->graphs) {
            cJSON *g = cJSON_AddObjectToObject(metrics, "graphs");
            if (g) {
                cJSON_AddNumberToObject(g, "captures", (double)s.graph_captures);
                cJSON_AddNumberToObject(g, "replayed_passes", (double)s.graph_passes);
                cJSON_AddStringToObject(g, "op_by_op_because", s.graph_note);
            }
        }
        measure_peak(res, &ms0);
        cJSON *mem = memory_plan_to_json(&res->plan);
        if (mem) {
            cJSON_AddNumberToObject(mem, "measured_peak_bytes", (double)res->measured_peak_bytes);
            cJSON_AddNumberToObject(mem, "baseline_rss_bytes", (double)ms0.rss);
            cJSON_AddBoolToObject(mem, "peak_counts_from_run_start", res->peak_reset);
            cJSON_AddItemToObject(metrics, "memory", mem);
        }
        char *text = cJSON_Print(metrics);
        cJSON_Delete(metrics);
        if (!st.code && text) {
            char path[JOB_PATH_MAX + 32];
            snprintf(path, sizeof path, "%s/metrics.json", spec->output);
            st = fs_write_atomic(path, text);
        }
        free(text);
    }
done:
    be->allow_tf32(0);
    be->prepare(NULL); /* the thread's scratch goes back: the next job may need less */
    res->wall_s = now_s() - t_start;
    measure_peak(res, &ms0);
    free(perm), free(idx), free(lab), free(tg);
    if (have_step)
        sherl_step_free(&s, m);
    sherl_model_free(m);
    if (have_inputs)
        job_inputs_free(&in);
    bert_free(bb);
    return st;
}
