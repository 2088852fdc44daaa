#include "planner.h"

#include <cJSON.h>
#include <stdio.h>
#include <string.h>

#include "arena.h"
#include "bert.h"

/* ------------------------------------------------------------------------------------------
 * job inputs */

sherl_status job_inputs_load(job_inputs *in, const job_spec *spec)
{
    memset(in, 0, sizeof *in);
    char path[JOB_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/config.json", spec->backbone);
    sherl_status st = hf_config_load(&in->cfg, path);
    if (!st.code)
        st = wordpiece_load(&in->tok, spec->backbone);
    dataset_options dopt = {spec->text_fields[0],
                            spec->n_text_fields > 1 ? spec->text_fields[1] : NULL,
                            spec->label_field, spec->model.task, spec->max_length};
    if (!st.code)
        st = dataset_load(&in->train, spec->train, &dopt, in->tok, &in->labels, 1);
    if (!st.code && spec->validation[0])
        st = dataset_load(&in->val, spec->validation, &dopt, in->tok, &in->labels, 0);
    if (!st.code && spec->test[0])
        st = dataset_load(&in->test, spec->test, &dopt, in->tok, &in->labels, 0);
    in->opt = spec->model;
    if (!st.code && in->opt.task == TASK_CLASSIFICATION) {
        if (in->labels.n < 2)
            st = sherl_errorf(SHERL_EINVAL, "%s: classification needs at least 2 distinct labels, "
                                            "found %d",
                              spec->train, in->labels.n);
        in->opt.num_labels = in->labels.n;
    }
    if (st.code) {
        job_inputs_free(in);
        return st;
    }
    in->T = 2;
    const dataset *all[3] = {&in->train, &in->val, &in->test};
    for (int d = 0; d < 3; d++)
        for (int i = 0; i < all[d]->n; i++)
            if (all[d]->enc[i].len > in->T)
                in->T = all[d]->enc[i].len;
    return sherl_ok();
}

void job_inputs_free(job_inputs *in)
{
    dataset_free(&in->train);
    dataset_free(&in->val);
    dataset_free(&in->test);
    label_map_free(&in->labels);
    wordpiece_free(in->tok);
    memset(in, 0, sizeof *in);
}

/* ------------------------------------------------------------------------------------------
 * plans */

static void add(memory_plan *p, const char *name, plan_kind kind, size_t bytes)
{
    if (p->n >= PLAN_MAX_ITEMS || !bytes)
        return;
    plan_item *it = &p->items[p->n++];
    snprintf(it->name, sizeof it->name, "%s", name);
    it->kind = kind;
    it->bytes = bytes;
    if (kind == PLAN_ARENA)
        p->arena_bytes += bytes;
}

/* Transient items are held one at a time, so only the largest counts toward the peak. */
static void total(memory_plan *p)
{
    size_t sum = 0, transient = 0;
    for (int i = 0; i < p->n; i++) {
        if (p->items[i].kind == PLAN_TRANSIENT) {
            if (p->items[i].bytes > transient)
                transient = p->items[i].bytes;
        } else {
            sum += p->items[i].bytes;
        }
    }
    p->peak_bytes = sum + transient;
}

sherl_status memory_plan_model(memory_plan *p, const hf_config *cfg, const sherl_options *opt,
                               const sherl_backend *be, int B, int T, int threads)
{
    memset(p, 0, sizeof *p);
    sherl_model *m;
    SHERL_TRY(sherl_model_shape(&m, cfg, opt, !be->host_memory));
    size_t step_total, groups[STEP_GROUPS];
    sherl_status st = sherl_step_bytes(m, B, T, &step_total, groups);
    if (st.code) {
        sherl_model_free(m);
        return st;
    }
    snprintf(p->method, sizeof p->method, "%s", train_method_name(opt->method));
    p->step_bytes = step_total;
    p->B = B, p->T = T, p->K = m->K;
    p->side_dim = opt->method == METHOD_SHERL ? m->side.d : 0;
    p->frozen_params = (long long)bert_param_count(cfg);
    p->trainable_params = 0;
    for (int i = 0; i < m->ps.n; i++)
        p->trainable_params += (long long)m->ps.items[i].numel;

    p->backbone_bytes = arena_round(bert_weight_bytes(cfg, opt->precision));
    add(p, "frozen backbone weights", PLAN_ARENA, p->backbone_bytes);
    size_t ps_bytes = arena_round((m->ps.total ? m->ps.total : 16) * sizeof(float));
    add(p, "trainable parameters", PLAN_ARENA, ps_bytes);
    add(p, "gradients", PLAN_ARENA, ps_bytes);
    add(p, "AdamW moments", PLAN_ARENA, 2 * ps_bytes);
    for (int g = 0; g < STEP_GROUPS; g++)
        add(p, SHERL_STEP_GROUP_NAMES[g], PLAN_ARENA, groups[g]);

    sherl_scratch_shape q = sherl_step_scratch_shape(m, B, T, threads);
    if (be->host_memory)
        add(p, "op scratch", PLAN_TRANSIENT, be->scratch_bytes(&q));
    else /* a device keeps its library workspace and op scratch for the whole run */
        add(p, "op scratch and cuBLAS workspace", PLAN_ARENA, be->scratch_bytes(&q));
    add(p, "BLAS packing buffers", PLAN_HOST, be->library_bytes(threads));
    add(p, "load staging", PLAN_TRANSIENT, bert_load_staging_bytes(cfg, be));
    add(p, "half-precision rounding buffer", PLAN_TRANSIENT,
        bert_load_wide_bytes(cfg, be, opt->precision) + bert_load_staging_bytes(cfg, be));
    if (!be->host_memory) {
        add(p, "copy staging", PLAN_TRANSIENT, SHERL_COPY_CHUNK * sizeof(float));
        add(p, "checkpoint staging", PLAN_TRANSIENT, 2 * m->ps.total * sizeof(float));
    }
    sherl_model_free(m);
    total(p);
    return sherl_ok();
}

/* The trainer's own host arrays: the shuffled order, one batch's ids, labels and logits, and
 * the evaluation's predictions (see trainer.c). */
static size_t trainer_host_bytes(const job_inputs *in, int B, int T, int C)
{
    int n_eval = in->val.n > in->test.n ? in->val.n : in->test.n;
    size_t b = arena_malloc_size(sizeof(int) * (size_t)in->train.n);
    b += 3 * arena_malloc_size(sizeof(int32_t) * (size_t)B);         /* idx, labels, targets */
    b += 3 * arena_malloc_size(sizeof(int32_t) * (size_t)B * T);     /* the batch */
    b += arena_malloc_size(sizeof(tok_encoding) * (size_t)B);
    b += 3 * arena_malloc_size(sizeof(int32_t) * (size_t)B);         /* evaluation's */
    b += arena_malloc_size(sizeof(float) * (size_t)B * C);
    b += 2 * arena_malloc_size(sizeof(float) * (size_t)n_eval);
    return b;
}

sherl_status memory_plan_job(memory_plan *p, const job_spec *spec, const job_inputs *in,
                             const sherl_backend *be)
{
    int threads = spec->threads > 0 ? spec->threads : be->get_threads();
    SHERL_TRY(memory_plan_model(p, &in->cfg, &in->opt, be, spec->batch_size, in->T, threads));
    add(p, "tokenizer", PLAN_HOST, wordpiece_memory_bytes(in->tok));
    add(p, "datasets", PLAN_HOST, in->train.mem_bytes + in->val.mem_bytes + in->test.mem_bytes);
    int C = in->opt.task == TASK_CLASSIFICATION ? in->opt.num_labels : 1;
    add(p, "trainer buffers", PLAN_HOST, trainer_host_bytes(in, spec->batch_size, in->T, C));
    total(p);
    return sherl_ok();
}

sherl_status plan_job(memory_plan *p, const job_spec *spec, const sherl_backend *be)
{
    job_inputs in;
    SHERL_TRY(job_inputs_load(&in, spec));
    sherl_status st = memory_plan_job(p, spec, &in, be);
    job_inputs_free(&in);
    return st;
}

const plan_item *memory_plan_find(const memory_plan *p, const char *name)
{
    for (int i = 0; i < p->n; i++)
        if (!strcmp(p->items[i].name, name))
            return &p->items[i];
    return NULL;
}

static const char *kind_name(plan_kind k)
{
    return k == PLAN_ARENA ? "arena" : k == PLAN_HOST ? "host" : "transient";
}

void memory_plan_print(FILE *f, const memory_plan *p)
{
    fprintf(f, "memory plan: method %s, batch %d x %d tokens", p->method, p->B, p->T);
    if (p->K)
        fprintf(f, ", %d taps, side width %d", p->K, p->side_dim);
    fprintf(f, "\n  parameters: %lld frozen, %lld trainable\n", p->frozen_params,
            p->trainable_params);
    for (int i = 0; i < p->n; i++)
        fprintf(f, "  %-26s %10.2f MiB  %s\n", p->items[i].name, p->items[i].bytes / 1048576.0,
                kind_name(p->items[i].kind));
    fprintf(f, "  %-26s %10.2f MiB  (%zu bytes; arenas %zu bytes)\n", "planned peak",
            p->peak_bytes / 1048576.0, p->peak_bytes, p->arena_bytes);
}

cJSON *memory_plan_to_json(const memory_plan *p)
{
    cJSON *o = cJSON_CreateObject(), *items = cJSON_CreateArray();
    if (!o || !items) {
        cJSON_Delete(o), cJSON_Delete(items);
        return NULL;
    }
    cJSON_AddItemToObject(o, "items", items);
    cJSON_AddStringToObject(o, "method", p->method);
    cJSON_AddNumberToObject(o, "batch", p->B);
    cJSON_AddNumberToObject(o, "seq_len", p->T);
    cJSON_AddNumberToObject(o, "frozen_params", (double)p->frozen_params);
    cJSON_AddNumberToObject(o, "trainable_params", (double)p->trainable_params);
    cJSON_AddNumberToObject(o, "peak_bytes", (double)p->peak_bytes);
    cJSON_AddNumberToObject(o, "arena_bytes", (double)p->arena_bytes);
    cJSON_AddNumberToObject(o, "backbone_bytes", (double)p->backbone_bytes);
    for (int i = 0; i < p->n; i++) {
        cJSON *it = cJSON_CreateObject();
        if (!it)
            break;
        cJSON_AddStringToObject(it, "name", p->items[i].name);
        cJSON_AddStringToObject(it, "kind", kind_name(p->items[i].kind));
        cJSON_AddNumberToObject(it, "bytes", (double)p->items[i].bytes);
        cJSON_AddItemToArray(items, it);
    }
    return o;
}

sherl_status job_backend(const job_spec *spec, const sherl_backend **be)
{
    *be = sherl_backend_by_name(spec->device);
    if (*be)
        return sherl_ok();
    return backend_missing("resources.device", spec->device);
}

sherl_status backend_missing(const char *field, const char *device)
{
    int index = sherl_cuda_device_of_name(device);
    if (strcmp(device, "cuda") && index < 0)
        return sherl_errorf(SHERL_EINVAL,
                            "%s: \"%.40s\", expected \"cpu\", \"cuda\", \"cuda:N\" (N 0..%d) or "
                            "\"auto\"",
                            field, device, SHERL_CUDA_MAX_DEVICES - 1);
    char why[256] = "";
    int n = sherl_cuda_devices(NULL, 0, why, sizeof why), usable = 0;
    for (int i = 0; i < SHERL_CUDA_MAX_DEVICES; i++)
        usable += sherl_backend_cuda_device(i) != NULL;
    if (index >= 0 && usable > 0)
        return sherl_errorf(SHERL_EUNSUPPORTED,
                            "%s \"%s\": this node has no usable GPU %d (%d CUDA device%s, %d "
                            "usable); use \"cuda\" for any GPU",
                            field, device, index, n, n == 1 ? "" : "s", usable);
    if (!why[0])
        snprintf(why, sizeof why, "%s",
                 n > 0 ? "its GPUs are older than sm_90, or SHERL_CUDA_DISABLE is set"
                       : "no CUDA device found");
    return sherl_errorf(SHERL_EUNSUPPORTED,
                        "%s \"%s\": no usable CUDA GPU (%s); use \"cpu\", or \"auto\" to take "
                        "a GPU when there is one",
                        field, device, why);
}
