#include "sherl_model.h"

#include "half.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void sherl_options_default(sherl_options *o)
{
    memset(o, 0, sizeof *o);
    o->method = METHOD_SHERL;
    o->late_layers = 1;
    o->downsample_factor = 2;
    o->dropout = 0.1f;
    o->task = TASK_CLASSIFICATION;
    o->num_labels = 2;
    o->pooling = POOL_MEAN;
    o->seed = 17;
}

static const char *const METHOD_NAMES[] = {"sherl", "full", "late", "linear"};

const char *train_method_name(train_method m)
{
    return (unsigned)m < 4 ? METHOD_NAMES[m] : "unknown";
}

sherl_status train_method_parse(const char *name, train_method *m)
{
    for (int i = 0; name && i < 4; i++)
        if (!strcmp(name, METHOD_NAMES[i])) {
            *m = (train_method)i;
            return sherl_ok();
        }
    return sherl_errorf(SHERL_EINVAL, "method '%s': expected sherl, full, late or linear",
                        name ? name : "(null)");
}

/* ------------------------------------------------------------------------------------------
 * creation */

/* Registers a trainable copy of backbone layer i ("layer.<i>.*"); returns 0 on failure. */
static int register_layer(param_set *ps, int i, int D, int F, int idx[12])
{
    static const struct {
        const char *suffix;
        int rows, cols, decay; /* rows/cols: 1 = D, 3 = 3D, 2 = F */
    } spec[12] = {
        {"qkv.weight", 3, 1, 1},     {"qkv.bias", 3, 0, 0},     {"attn_out.weight", 1, 1, 1},
        {"attn_out.bias", 1, 0, 0},  {"ln1.weight", 1, 0, 0},   {"ln1.bias", 1, 0, 0},
        {"ffn_in.weight", 2, 1, 1},  {"ffn_in.bias", 2, 0, 0},  {"ffn_out.weight", 1, 2, 1},
        {"ffn_out.bias", 1, 0, 0},   {"ln2.weight", 1, 0, 0},   {"ln2.bias", 1, 0, 0},
    };
    for (int j = 0; j < 12; j++) {
        char name[96];
        snprintf(name, sizeof name, "layer.%d.%s", i, spec[j].suffix);
        int64_t dims[4] = {0, D, F, 3 * (int64_t)D};
        idx[j] = param_set_add(ps, name, dims[spec[j].rows], dims[spec[j].cols], spec[j].decay);
        if (idx[j] < 0)
            return 0;
    }
    return 1;
}

/* Field order of bert_layer matches register_layer's spec. */
static float **layer_field(bert_layer *l, int j)
{
    float **f[12] = {&l->qkv_w,  &l->qkv_b,     &l->attn_out_w, &l->attn_out_b,
                     &l->ln1_w,  &l->ln1_b,     &l->ffn_in_w,   &l->ffn_in_b,
                     &l->ffn_out_w, &l->ffn_out_b, &l->ln2_w,   &l->ln2_b};
    return f[j];
}

/* Backend-to-backend copy: direct on host memory, else through a small host buffer. */
static void copy_backend(const sherl_backend *be, float *dst, const float *src, size_t n,
                         float *host, size_t host_n)
{
    if (be->host_memory) {
        be->copy_to_device(dst, src, n * sizeof(float));
        return;
    }
    for (size_t lo = 0; lo < n; lo += host_n) {
        size_t k = n - lo < host_n ? n - lo : host_n;
        be->copy_to_host(host, src + lo, k * sizeof(float));
        be->copy_to_device(dst + lo, host, k * sizeof(float));
    }
}

static sherl_status validate(const hf_config *cfg, const sherl_options *o, int *K_out)
{
    int L = cfg->num_hidden_layers;
    if ((unsigned)o->method > METHOD_LINEAR)
        return sherl_errorf(SHERL_EINVAL, "unknown method %d", (int)o->method);
    if (o->method == METHOD_SHERL || o->method == METHOD_LATE) {
        if (o->late_layers < 1 || o->late_layers >= L + (o->method == METHOD_LATE))
            return sherl_errorf(SHERL_EINVAL,
                                "late_layers %d: expected 1..%d for a %d-layer backbone",
                                o->late_layers, o->method == METHOD_LATE ? L : L - 1, L);
    }
    if (o->task == TASK_CLASSIFICATION && (o->num_labels < 2 || o->num_labels > 1000000))
        return sherl_errorf(SHERL_EINVAL, "num_labels %d: expected 2..1000000", o->num_labels);
    if (o->dropout < 0.0f || o->dropout >= 1.0f)
        return sherl_errorf(SHERL_EINVAL, "dropout %g: expected [0, 1)", (double)o->dropout);
    *K_out = 0;
    if (o->method != METHOD_SHERL)
        return sherl_ok();
    int last = L - o->late_layers;
    int D = cfg->hidden_size;
    if (o->side_dim < 0 || o->side_dim > D)
        return sherl_errorf(SHERL_EINVAL, "side_dim %d: expected 1..%d (or 0 for hidden / "
                                          "downsample_factor)",
                            o->side_dim, D);
    if (!o->side_dim && (o->downsample_factor < 1 || D / o->downsample_factor < 1))
        return sherl_errorf(SHERL_EINVAL, "downsample_factor %d: expected 1..%d",
                            o->downsample_factor, D);
    if (o->n_taps == 0) {
        *K_out = last + 1;
        if (*K_out < 2)
            return sherl_errorf(SHERL_EINVAL, "SHERL needs at least 2 taps; with %d late layers "
                                              "of %d there is only h_0",
                                o->late_layers, L);
        return sherl_ok();
    }
    if (o->n_taps < 2 || o->n_taps > SHERL_MAX_TAPS)
        return sherl_errorf(SHERL_EINVAL, "taps: %d given, expected 2..%d", o->n_taps,
                            last + 1 < SHERL_MAX_TAPS ? last + 1 : SHERL_MAX_TAPS);
    for (int i = 0; i < o->n_taps; i++) {
        if (o->taps[i] < 0 || o->taps[i] > last || (i && o->taps[i] <= o->taps[i - 1]))
            return sherl_errorf(SHERL_EINVAL, "taps[%d] = %d: expected increasing layer indices "
                                              "in 0..%d",
                                i, o->taps[i], last);
    }
    if (o->taps[o->n_taps - 1] != last)
        return sherl_errorf(SHERL_EINVAL, "taps: the last tap must be h_%d (the input of the "
                                          "first late layer), got h_%d",
                            last, o->taps[o->n_taps - 1]);
    *K_out = o->n_taps;
    return sherl_ok();
}

sherl_status sherl_model_shape(sherl_model **out, const hf_config *c, const sherl_options *opt,
                               int device)
{
    *out = NULL;
    int K = 0;
    SHERL_TRY(validate(c, opt, &K));
    sherl_model *m = calloc(1, sizeof *m);
    if (!m)
        return sherl_errorf(SHERL_ENOMEM, "out of memory");
    m->cfg = *c, m->opt = *opt, m->device = device;
    m->L = c->num_hidden_layers, m->D = c->hidden_size, m->K = K;
    m->k = (opt->method == METHOD_SHERL || opt->method == METHOD_LATE) ? opt->late_layers : 0;
    int L = m->L, D = m->D, F = c->intermediate_size;
    param_set_init(&m->ps, NULL);
    m->layers = calloc((size_t)L, sizeof(bert_layer));
    m->grads = calloc((size_t)L, sizeof(bert_layer));
    m->layer_trainable = calloc((size_t)L, sizeof(int));
    m->tap_layer = calloc((size_t)(K ? K : 1), sizeof(int));
    m->layer_idx = calloc((size_t)L, sizeof *m->layer_idx);
    for (int j = 0; j < 5; j++)
        m->emb_idx[j] = -1;
    sherl_status st = sherl_ok();
    if (!m->layers || !m->grads || !m->layer_trainable || !m->tap_layer || !m->layer_idx) {
        st = sherl_errorf(SHERL_ENOMEM, "out of memory");
        goto fail;
    }
    for (int i = 0; i < L; i++)
        m->layer_trainable[i] = opt->method == METHOD_FULL ||
                                (opt->method == METHOD_LATE && i >= L - m->k) ||
                                (opt->method == METHOD_SHERL && opt->tune_late && i >= L - m->k);
    /* registration: trainable backbone copies, MTSA, head */
    if (opt->method == METHOD_FULL) {
        m->emb_idx[0] = param_set_add(&m->ps, "emb.word", c->vocab_size, D, 1);
        m->emb_idx[1] = param_set_add(&m->ps, "emb.pos", c->max_position_embeddings, D, 1);
        m->emb_idx[2] = param_set_add(&m->ps, "emb.type", c->type_vocab_size, D, 1);
        m->emb_idx[3] = param_set_add(&m->ps, "emb.ln.weight", D, 0, 0);
        m->emb_idx[4] = param_set_add(&m->ps, "emb.ln.bias", D, 0, 0);
        for (int j = 0; j < 5; j++)
            if (m->emb_idx[j] < 0)
                st = sherl_errorf(SHERL_ENOMEM, "cannot register the embeddings");
    }
    for (int i = 0; !st.code && i < L; i++)
        if (m->layer_trainable[i] && !register_layer(&m->ps, i, D, F, m->layer_idx[i]))
            st = sherl_errorf(SHERL_ENOMEM, "cannot register layer %d", i);
    if (!st.code && opt->method == METHOD_SHERL) {
        int d = opt->side_dim ? opt->side_dim : D / opt->downsample_factor;
        for (int i = 0; i < K; i++)
            m->tap_layer[i] = opt->n_taps ? opt->taps[i] : i;
        st = mtsa_register(&m->side, &m->ps, K, D, d, c->layer_norm_eps, opt->dropout);
        m->side.prec = opt->precision;
    }
    if (st.code)
        goto fail;
    m->out_dim = opt->task == TASK_CLASSIFICATION ? opt->num_labels : 1;
    m->head_w = param_set_add(&m->ps, "head.weight", m->out_dim, D, 1);
    m->head_b = param_set_add(&m->ps, "head.bias", m->out_dim, 0, 0);
    if (m->head_w < 0 || m->head_b < 0) {
        st = sherl_errorf(SHERL_ENOMEM, "cannot register the head");
        goto fail;
    }
    *out = m;
    return sherl_ok();
fail:
    sherl_model_free(m);
    return st;
}

sherl_status sherl_model_create(sherl_model **out, const bert_model *bb, const sherl_options *opt)
{
    *out = NULL;
    sherl_model *m;
    if (bb->prec != opt->precision)
        return sherl_errorf(SHERL_EINVAL, "the backbone holds its weights in %s, the job asks for %s",
                            sherl_precision_name(bb->prec), sherl_precision_name(opt->precision));
    SHERL_TRY(sherl_model_shape(&m, &bb->cfg, opt, !bb->be->host_memory));
    int L = m->L, D = m->D;
    m->bb = bb, m->be = bb->be, m->ps.be = bb->be;
    for (int i = 0; i < L; i++)
        m->layers[i] = bb->layers[i];
    sherl_status st;
    st = param_set_alloc(&m->ps);
    if (st.code)
        goto fail;

    /* initial values: copies of the backbone, PyTorch-style init for the new modules */
    const size_t host_n = SHERL_COPY_CHUNK;
    float *host = m->be->host_memory ? NULL : malloc(host_n * sizeof(float));
    if (!m->be->host_memory && !host) {
        st = sherl_errorf(SHERL_ENOMEM, "out of memory");
        goto fail;
    }
    if (opt->method == METHOD_FULL) {
        const float *src[5] = {bb->emb.word, bb->emb.pos, bb->emb.type, bb->emb.ln_w, bb->emb.ln_b};
        float **dst[5] = {&m->emb.word, &m->emb.pos, &m->emb.type, &m->emb.ln_w, &m->emb.ln_b};
        float **gdst[5] = {&m->emb_grads.word, &m->emb_grads.pos, &m->emb_grads.type,
                           &m->emb_grads.ln_w, &m->emb_grads.ln_b};
        for (int j = 0; j < 5; j++) {
            sherl_param *p = &m->ps.items[m->emb_idx[j]];
            if (bb->prec == SHERL_FP32)
                copy_backend(m->be, p->data, src[j], p->numel, host, host_n);
            *dst[j] = p->data;
            *gdst[j] = p->grad;
        }
        if (bb->prec != SHERL_FP32) { /* from the file's fp32 values, as the layers below */
            m->emb.word16 = m->emb.pos16 = m->emb.type16 = NULL;
            st = bert_read_embeddings_f32(bb, &m->emb);
            if (st.code) {
                free(host);
                goto fail;
            }
        }
    }
    for (int i = 0; i < L && !st.code; i++) {
        if (!m->layer_trainable[i])
            continue;
        /* a layer to train starts from the file's fp32 values: a bf16 backbone has only the
         * rounded ones */
        if (bb->prec != SHERL_FP32)
            memset(&m->layers[i], 0, sizeof m->layers[i]);
        for (int j = 0; j < 12; j++) {
            sherl_param *p = &m->ps.items[m->layer_idx[i][j]];
            if (bb->prec == SHERL_FP32)
                copy_backend(m->be, p->data, *layer_field(&bb->layers[i], j), p->numel, host,
                             host_n);
            *layer_field(&m->layers[i], j) = p->data;
            *layer_field(&m->grads[i], j) = p->grad;
        }
        if (bb->prec != SHERL_FP32)
            st = bert_read_layer_f32(bb, i, &m->layers[i]);
    }
    if (st.code) {
        free(host);
        goto fail;
    }
    free(host);
    if (opt->method == METHOD_SHERL)
        mtsa_init(&m->side, &m->ps, opt->seed);
    {
        /* head: PyTorch's Linear init, U(+-1/sqrt(D)) */
        float bound = 1.0f / sqrtf((float)D);
        for (int t = 0; t < 2; t++) {
            int idx = t ? m->head_b : m->head_w;
            sherl_param *p = &m->ps.items[idx];
            float *h = malloc(p->numel * sizeof(float));
            if (!h) {
                st = sherl_errorf(SHERL_ENOMEM, "out of memory");
                goto fail;
            }
            for (size_t e = 0; e < p->numel; e++)
                h[e] = (2.0f * sherl_dropout_uniform(opt->seed * 7919u + 1 + t, e) - 1.0f) * bound;
            param_set_upload(&m->ps, idx, h);
            free(h);
        }
    }
    *out = m;
    return sherl_ok();
fail:
    sherl_model_free(m);
    return st;
}

void sherl_model_free(sherl_model *m)
{
    if (!m)
        return;
    mtsa_free(&m->side);
    param_set_free(&m->ps);
    free(m->layers), free(m->grads), free(m->layer_trainable), free(m->tap_layer);
    free(m->layer_idx);
    free(m);
}

/* ------------------------------------------------------------------------------------------
 * step buffers */

/* Which hidden states a method keeps between forward and backward: the taps (sherl), the
 * late layers' inputs (sherl, late), every layer's input (full). The last state is read only
 * by the pooling right after the forward (no backward reads it), so it goes to scratch. In a
 * half job the taps are kept in half (tap16) and a layer's input only rounded, by the layer
 * itself when it trains (its acts' inp16: the Q|K|V weight gradient is all that reads it), so
 * only h_{L-k} stays, for the MTSA gate's backward. */
static int keeps_state(const sherl_model *m, int i)
{
    int L = m->L, half = m->opt.precision != SHERL_FP32;
    if (i >= L)
        return 0;
    switch (m->opt.method) {
    case METHOD_SHERL:
        if (half)
            return i == L - m->k;
        for (int t = 0; t < m->K; t++)
            if (m->tap_layer[t] == i)
                return 1;
        return i > L - m->k;
    case METHOD_LATE:
        return !half && i >= L - m->k;
    case METHOD_FULL:
        return !half;
    case METHOD_LINEAR:
        return 0;
    }
    return 0;
}

/* Whether backprop runs through layer i (0-based), so its activations are kept. */
static int backprop_layer(const sherl_model *m, int i)
{
    if (m->opt.method == METHOD_FULL)
        return 1;
    if (m->opt.method == METHOD_SHERL || m->opt.method == METHOD_LATE)
        return i >= m->L - m->k;
    return 0;
}

const char *const SHERL_STEP_GROUP_NAMES[STEP_GROUPS] = {
    "kept hidden states", "layer activations", "MTSA activations", "layer scratch",
    "embeddings and masks", "head and loss", "half copies of trained matrices"};

void sherl_step_layout(sherl_step *s, const sherl_model *m, int B, int T, sherl_arena *ar,
                       size_t group_bytes[STEP_GROUPS])
{
    const hf_config *c = &m->cfg;
    int L = m->L, D = m->D, F = c->intermediate_size;
    size_t N = (size_t)B * T, ND = N * D;
    int C = m->out_dim;
    size_t mark = ar->used;
    size_t local[STEP_GROUPS];
    if (!group_bytes)
        group_bytes = local;
#define STEP_GROUP_END(g) (group_bytes[g] = ar->used - mark, mark = ar->used)
    s->B = B, s->T = T;
    int sherl = m->opt.method == METHOD_SHERL, half = m->opt.precision != SHERL_FP32;
    s->taps = sherl && !half ? arena_floats(ar, (size_t)m->K * ND) : NULL;
    s->taps16 = sherl && half ? arena_take(ar, (size_t)m->K * ND * sizeof(uint16_t)) : NULL;
    /* (decided by flags, never by pointers: a measuring arena's buffers are all NULL) */
    char in_taps[SHERL_MAX_LAYERS + 1] = {0};
    for (int i = 0; i <= L; i++)
        s->hidden[i] = NULL;
    if (sherl && !half)
        for (int t = 0; t < m->K; t++) {
            s->hidden[m->tap_layer[t]] = s->taps ? s->taps + (size_t)t * ND : NULL;
            in_taps[m->tap_layer[t]] = 1;
        }
    for (int i = 0; i <= L; i++)
        if (!in_taps[i] && keeps_state(m, i))
            s->hidden[i] = arena_floats(ar, ND);
    /* the gated h_{L-k} that enters the late route; a half job's goes to scratch (above) */
    s->y = sherl && !half ? arena_floats(ar, ND) : NULL;
    STEP_GROUP_END(STEP_KEPT);
    for (int i = 0; i < L; i++)
        if (backprop_layer(m, i))
            bert_layer_acts_layout(&s->acts[i], ar, B, T, D, m->opt.precision,
                                   m->layer_trainable[i]);
    STEP_GROUP_END(STEP_LAYER_ACTS);
    if (m->opt.method == METHOD_SHERL)
        mtsa_acts_layout(&s->side, &m->side, (int)N, ar);
    STEP_GROUP_END(STEP_MTSA_ACTS);
    /* Buffers of the forward and of the backward that are never live together share memory
     * (the backward reads only kept states and its own scratch):
     *   the forward-only layers' activations  |  one layer's backward scratch  |  MTSA's own
     *   the ping-pong for states not kept     |  the gradient ping-pong
     * (MTSA's forward runs between frozen layers and its backward after the late layers'; the
     * gradient it starts from, dy, is in the gradient ping-pong.) */
    size_t at = ar->used, end;
    bert_layer_scratch_layout(&s->ws.acts, ar, c, B, T, m->device);
    end = ar->used, ar->used = at;
    for (int i = 0; i < L; i++) /* a backprop layer's chunk buffers are scratch too */
        if (backprop_layer(m, i))
            bert_layer_acts_share_scratch(&s->acts[i], &s->ws.acts);
    if (m->opt.method != METHOD_LINEAR)
        bert_layer_grad_ws_layout(&s->gws, ar, c, B, T, m->device);
    if (ar->used > end)
        end = ar->used;
    ar->used = at;
    if (m->opt.method == METHOD_SHERL) /* as large a chunk as the layers' scratch holds */
        mtsa_scratch_layout(&s->side, &m->side, (int)N, end - at, ar);
    if (ar->used < end)
        ar->used = end;
    at = ar->used;
    s->scratch[0] = arena_floats(ar, ND);
    s->scratch[1] = arena_floats(ar, ND);
    end = ar->used, ar->used = at;
    if (m->opt.method != METHOD_LINEAR) {
        s->d_a = arena_floats(ar, ND);
        s->d_b = arena_floats(ar, ND);
    }
    if (ar->used < end)
        ar->used = end;
    STEP_GROUP_END(STEP_LAYER_SCRATCH);
    bert_workspace_layout(&s->ws, c, m->be, m->device, m->opt.precision, B, T, ar, 1);
    /* the embedding sum: kept for full fine-tuning's embeddings backward, else dead once h0
     * is written, before any layer's scratch is */
    s->ws.emb = m->opt.method == METHOD_FULL ? arena_floats(ar, ND) : s->ws.acts.qkv;
    s->mask = arena_ints(ar, N);
    STEP_GROUP_END(STEP_FORWARD_WS);
    pooler_layout(&s->pool, m->be, m->opt.pooling, B, ar);
    s->pooled = arena_floats(ar, (size_t)B * D);
    s->d_pooled = arena_floats(ar, (size_t)B * D);
    s->logits = arena_floats(ar, (size_t)B * C);
    s->probs = arena_floats(ar, (size_t)B * C);
    s->d_logits = arena_floats(ar, (size_t)B * C);
    s->losses = arena_floats(ar, (size_t)B);
    s->labels = arena_ints(ar, (size_t)B);
    s->targets = arena_floats(ar, (size_t)B);
    STEP_GROUP_END(STEP_HEAD);
    for (int i = 0; i < L; i++) {
        size_t n[4] = {(size_t)3 * D * D, (size_t)D * D, (size_t)F * D, (size_t)D * F};
        int rounded = half && m->layer_trainable[i];
        for (int j = 0; j < 4; j++)
            s->half_w[i][j] = rounded ? arena_take(ar, n[j] * sizeof(uint16_t)) : NULL;
    }
    STEP_GROUP_END(STEP_HALF_WEIGHTS);
#undef STEP_GROUP_END
}

sherl_status sherl_step_check(const sherl_model *m, int B, int T)
{
    SHERL_TRY(bert_workspace_check(&m->cfg, B, T));
    return pooler_check(B);
}

sherl_status sherl_step_bytes(const sherl_model *m, int B, int T, size_t *total,
                              size_t group_bytes[STEP_GROUPS])
{
    SHERL_TRY(sherl_step_check(m, B, T));
    sherl_step s;
    memset(&s, 0, sizeof s);
    float *hidden[SHERL_MAX_LAYERS + 1];
    bert_layer_acts acts[SHERL_MAX_LAYERS];
    if (m->L > SHERL_MAX_LAYERS)
        return sherl_errorf(SHERL_EUNSUPPORTED, "%d layers: at most %d", m->L, SHERL_MAX_LAYERS);
    s.hidden = hidden, s.acts = acts;
    s.half_w = calloc((size_t)m->L, sizeof *s.half_w);
    if (!s.half_w)
        return sherl_errorf(SHERL_ENOMEM, "out of memory");
    memset(acts, 0, sizeof acts);
    sherl_arena measure;
    arena_measure(&measure);
    sherl_step_layout(&s, m, B, T, &measure, group_bytes);
    free(s.half_w);
    *total = measure.used;
    return sherl_ok();
}

sherl_scratch_shape sherl_step_scratch_shape(const sherl_model *m, int B, int T, int threads)
{
    int sherl = m->opt.method == METHOD_SHERL;
    sherl_scratch_shape q = {B, T, m->cfg.num_attention_heads,
                             m->cfg.hidden_size / m->cfg.num_attention_heads, sherl ? m->K : 0,
                             B * T, sherl ? m->side.d : 0, m->ps.total, threads,
                             m->cfg.intermediate_size, m->opt.precision != SHERL_FP32};
    return q;
}

sherl_status sherl_step_create(sherl_step *s, const sherl_model *m, int B, int T)
{
    memset(s, 0, sizeof *s);
    size_t total;
    SHERL_TRY(sherl_step_bytes(m, B, T, &total, NULL));
    s->grad_scale = 1.0f;
    s->hidden = calloc((size_t)m->L + 1, sizeof(float *));
    s->acts = calloc((size_t)m->L, sizeof(bert_layer_acts));
    s->half_w = calloc((size_t)m->L, sizeof *s->half_w);
    sherl_status st;
    if (!s->hidden || !s->acts || !s->half_w) {
        st = sherl_errorf(SHERL_ENOMEM, "out of memory");
        goto fail;
    }
    char what[96];
    snprintf(what, sizeof what, "a %d x %d training step", B, T);
    st = arena_alloc(&s->arena, m->be, total, what);
    if (st.code)
        goto fail;
    sherl_step_layout(s, m, B, T, &s->arena, NULL);
    st = arena_check(&s->arena, what);
    if (st.code)
        goto fail;
    return sherl_ok();
fail:
    sherl_step_free(s, m);
    return st;
}

void sherl_step_free(sherl_step *s, const sherl_model *m)
{
    if (s->graph && m)
        m->be->graph_free(s->graph);
    arena_release(&s->arena);
    free(s->hidden), free(s->acts), free(s->half_w);
    memset(s, 0, sizeof *s);
}

/* ------------------------------------------------------------------------------------------
 * forward and backward */

/* Layer i as the step's products take it: the model's, or for a trained layer of a half job its
 * matrices' half copies (round_trained_layers), the fp32 masters then out of the products. */
static bert_layer layer_in_use(const sherl_model *m, const sherl_step *s, int i)
{
    bert_layer ly = m->layers[i];
    if (!s->half_w[i][0])
        return ly;
    ly.qkv_w16 = s->half_w[i][0], ly.attn_out_w16 = s->half_w[i][1];
    ly.ffn_in_w16 = s->half_w[i][2], ly.ffn_out_w16 = s->half_w[i][3];
    ly.qkv_w = ly.attn_out_w = ly.ffn_in_w = ly.ffn_out_w = NULL;
    return ly;
}

/* The half copies of trained matrices from their fp32 masters, as autocast casts a Linear's
 * weight at each forward (the optimizer has moved the masters since the last one). */
static void round_trained_layers(const sherl_model *m, sherl_step *s)
{
    size_t D = (size_t)m->D, F = (size_t)m->cfg.intermediate_size;
    for (int i = 0; i < m->L; i++) {
        if (!s->half_w[i][0])
            continue;
        const bert_layer *ly = &m->layers[i];
        half_round(m->be, m->opt.precision, s->half_w[i][0], ly->qkv_w, 3 * D * D);
        half_round(m->be, m->opt.precision, s->half_w[i][1], ly->attn_out_w, D * D);
        half_round(m->be, m->opt.precision, s->half_w[i][2], ly->ffn_in_w, F * D);
        half_round(m->be, m->opt.precision, s->half_w[i][3], ly->ffn_out_w, D * F);
    }
}

const char *const SHERL_PHASE_NAMES[SHERL_PHASES] = {
    "embeddings", "frozen layers (forward only)", "MTSA forward", "backprop layers forward",
    "head and loss (fwd + bwd)", "backprop layers backward", "MTSA backward",
    "embeddings backward"};

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Ends the current phase (when profiling): charges the time since *t0 to phase. */
static void phase_end(const sherl_model *m, sherl_step *s, int phase, double *t0)
{
    if (!s->profile)
        return;
    m->be->synchronize();
    double t = mono_s();
    s->phase_s[phase] += t - *t0;
    *t0 = t;
}

#define PD(i) (m->ps.items[(i)].data)
#define PG(i) (m->ps.items[(i)].grad)

/* Half-precision taps: hidden state `state` (just computed, fp32) rounded into each tap that
 * reads it (taps a step's whole N x D apart, as the fp32 block, whatever this batch's size). */
static void keep_half_taps(const sherl_model *m, sherl_step *s, int state, const float *h,
                           size_t n, const uint16_t *done)
{
    if (m->opt.method != METHOD_SHERL || m->opt.precision == SHERL_FP32)
        return;
    size_t stride = (size_t)s->B * s->T * m->D;
    for (int t = 0; t < m->K; t++)
        if (m->tap_layer[t] == state && s->taps16 + t * stride != done)
            half_round(m->be, m->opt.precision, s->taps16 + t * stride, h, n);
}

/* A half sherl job's kept tap of hidden state `state` (its first, if listed twice), or NULL */
static uint16_t *half_tap(const sherl_model *m, sherl_step *s, int state)
{
    if (m->opt.method != METHOD_SHERL || m->opt.precision == SHERL_FP32 || !s->taps16)
        return NULL;
    for (int t = 0; t < m->K; t++)
        if (m->tap_layer[t] == state)
            return s->taps16 + t * (size_t)s->B * s->T * m->D;
    return NULL;
}

/* The host side of a forward: the batch (and labels or targets, with want_loss) validated and
 * uploaded, so that the forward's ops that follow copy nothing from the host. */
static sherl_status forward_upload(const sherl_model *m, sherl_step *s, const bert_batch *batch,
                                   const int32_t *labels, const float *targets, int want_loss)
{
    const sherl_backend *be = m->be;
    int B = batch->B, T = batch->T;
    if (B > s->B || T > s->T)
        return sherl_errorf(SHERL_EINVAL, "batch %d x %d exceeds the step's %d x %d", B, T, s->B,
                            s->T);
    int cls = m->opt.task == TASK_CLASSIFICATION;
    if (want_loss && !(cls ? (const void *)labels : (const void *)targets))
        return sherl_errorf(SHERL_EINVAL, "a loss needs %s", cls ? "labels" : "targets");
    if (labels && cls)
        for (int b = 0; b < B; b++)
            if (labels[b] < 0 || labels[b] >= m->opt.num_labels)
                return sherl_errorf(SHERL_EINVAL, "label %d of example %d: expected 0..%d",
                                    labels[b], b, m->opt.num_labels - 1);
    if (targets && !cls)
        for (int b = 0; b < B; b++)
            if (!isfinite(targets[b]))
                return sherl_errorf(SHERL_EINVAL, "target of example %d is not finite", b);
    SHERL_TRY(bert_embed_upload(m->bb, &s->ws, batch));
    /* every upload before the first op: a copy to a device waits for its queue to drain */
    be->copy_to_device(s->mask, batch->attention_mask, (size_t)B * T * sizeof(int32_t));
    if (want_loss && cls)
        be->copy_to_device(s->labels, labels, (size_t)B * sizeof(int32_t));
    else if (want_loss)
        be->copy_to_device(s->targets, targets, (size_t)B * sizeof(float));
    pool_prepare(&s->pool, T);
    return sherl_ok();
}

/* The device side of a forward of the uploaded B x T batch, through the logits and (with
 * want_loss) the per-example losses: ops only, no host transfer (but the profile's clocks). */
static void forward_ops(const sherl_model *m, sherl_step *s, int B, int T, int train,
                        uint64_t dropout_seed, int want_loss, double *t0)
{
    const sherl_backend *be = m->be;
    int L = m->L, D = m->D, C = m->out_dim;
    size_t N = (size_t)B * T;
    round_trained_layers(m, s);
    /* embeddings: the trainable copy for full fine-tuning, else the backbone's */
    float *prev = s->hidden[0] ? s->hidden[0] : s->scratch[0];
    bert_embed_compute(m->bb, m->opt.method == METHOD_FULL ? &m->emb : &m->bb->emb, &s->ws, B, T,
                       prev);
    keep_half_taps(m, s, 0, prev, N * D, NULL);
    phase_end(m, s, PH_EMBED, t0);
    int first_late = L - m->k; /* layers [first_late, L) are the late route (sherl, late) */
    for (int i = 0; i < L; i++) {
        const float *inp = prev;
        if (m->opt.method == METHOD_SHERL && i == first_late) {
            float *y = s->y ? s->y : prev == s->scratch[0] ? s->scratch[1] : s->scratch[0];
            mtsa_forward(&m->side, &m->ps, &s->side, y, s->taps, s->taps16, s->hidden[first_late],
                         (int)N, train, dropout_seed);
            inp = y;
            phase_end(m, s, PH_MTSA_FWD, t0);
        }
        float *dst = s->hidden[i + 1];
        if (!dst) /* the scratch buffer the input is not in */
            dst = inp == s->scratch[0] ? s->scratch[1] : s->scratch[0];
        bert_layer_acts *acts = backprop_layer(m, i) ? &s->acts[i] : &s->ws.acts;
        bert_layer ly = layer_in_use(m, s, i);
        /* a half tap's rounding comes from the layer's last LayerNorm, and the layer after
         * reads it instead of rounding its input again (not MTSA's output y: no tap) */
        uint16_t *out16 = half_tap(m, s, i + 1);
        const uint16_t *inp16 = inp == prev ? half_tap(m, s, i) : NULL;
        bert_layer_forward_halves(m->bb, &ly, acts, dst, out16, inp, inp16, s->ws.mask_add,
                                  s->ws.act16, s->ws.act16_n, B, T);
        keep_half_taps(m, s, i + 1, dst, N * D, out16);
        prev = dst;
        phase_end(m, s, backprop_layer(m, i) ? PH_LATE_FWD : PH_FROZEN, t0);
    }
    s->final = prev;
    s->last_B = B, s->last_T = T;
    pool_forward(&s->pool, s->pooled, s->final, s->mask, B, T, D);
    be->matmul_forward(s->logits, s->pooled, PD(m->head_w), PD(m->head_b), B, D, C);
    if (!want_loss)
        return;
    if (m->opt.task == TASK_CLASSIFICATION)
        be->crossentropy_forward(s->losses, s->probs, s->logits, s->labels, B, C);
    else
        be->mse_forward(s->losses, s->logits, s->targets, B);
}

/* The mean of the B per-example losses the forward left on the backend. */
static sherl_status read_loss(const sherl_model *m, sherl_step *s, int B, double *loss)
{
    float host_losses[1024];
    float *hl = B <= 1024 ? host_losses : malloc((size_t)B * sizeof(float));
    if (!hl)
        return sherl_errorf(SHERL_ENOMEM, "out of memory");
    m->be->copy_to_host(hl, s->losses, (size_t)B * sizeof(float));
    double sum = 0.0;
    for (int b = 0; b < B; b++)
        sum += hl[b];
    *loss = sum / B;
    if (hl != host_losses)
        free(hl);
    return sherl_ok();
}

sherl_status sherl_forward(const sherl_model *m, sherl_step *s, const bert_batch *batch,
                           const int32_t *labels, const float *targets, int train,
                           uint64_t dropout_seed, double *loss, float *logits_out)
{
    int B = batch->B;
    double t0 = s->profile ? mono_s() : 0;
    SHERL_TRY(forward_upload(m, s, batch, labels, targets, loss != NULL));
    forward_ops(m, s, B, batch->T, train, dropout_seed, loss != NULL, &t0);
    if (logits_out)
        m->be->copy_to_host(logits_out, s->logits, (size_t)B * m->out_dim * sizeof(float));
    if (loss)
        SHERL_TRY(read_loss(m, s, B, loss));
    phase_end(m, s, PH_HEAD, &t0);
    return sherl_ok();
}

const char *sherl_graph_unusable(const sherl_model *m, const sherl_step *s)
{
    const sherl_backend *be = m->be;
    if (!s->graphs)
        return "not asked for";
    if (!be->capture_begin || !be->capture_end || !be->graph_launch || !be->graph_free)
        return "the backend cannot capture graphs";
    if (s->graph_failed)
        return "an earlier capture failed";
    if (s->profile)
        return "profiling (a clock between phases)";
    if (m->opt.method == METHOD_SHERL && m->side.dropout > 0.0f)
        return "MTSA dropout is on (its masks change every step)";
    return NULL;
}

sherl_status sherl_train_pass(sherl_model *m, sherl_step *s, const bert_batch *batch,
                              const int32_t *labels, const float *targets,
                              uint64_t dropout_seed, double *loss)
{
    const sherl_backend *be = m->be;
    int B = batch->B, T = batch->T;
    double t0 = s->profile ? mono_s() : 0;
    SHERL_TRY(forward_upload(m, s, batch, labels, targets, 1));
    const char *why = sherl_graph_unusable(m, s);
    if (!why && s->graph &&
        (s->graph_B != B || s->graph_T != T || s->graph_scale != s->grad_scale)) {
        be->graph_free(s->graph); /* another shape: record this one instead */
        s->graph = NULL;
    }
    if (!why && !s->graph) {
        int began = be->capture_begin() == 0;
        if (began) {
            forward_ops(m, s, B, T, 1, dropout_seed, 1, &t0);
            sherl_backward(m, s, dropout_seed);
            s->graph = be->capture_end();
        }
        if (s->graph) {
            s->graph_B = B, s->graph_T = T, s->graph_scale = s->grad_scale;
            s->graph_captures++;
        } else { /* nothing ran: the same work op by op, from now on */
            char msg[200] = "";
            if (began) /* the capture's own failure, consumed here; one from before a refused
                        * start stays for the caller's status check */
                be->take_error(msg, sizeof msg);
            snprintf(s->graph_note, sizeof s->graph_note, "%s: %s",
                     began ? "capture failed" : "capture refused to start",
                     msg[0] ? msg : "the backend gave no reason");
            s->graph_failed = 1;
        }
    }
    if (!why && s->graph) {
        be->graph_launch(s->graph);
        s->last_B = B, s->last_T = T;
        s->graph_passes++;
    } else {
        if (why && !s->graph_failed)
            snprintf(s->graph_note, sizeof s->graph_note, "%s", why);
        forward_ops(m, s, B, T, 1, dropout_seed, 1, &t0);
        sherl_backward(m, s, dropout_seed);
    }
    return read_loss(m, s, B, loss);
}

void sherl_backward(sherl_model *m, sherl_step *s, uint64_t dropout_seed)
{
    const sherl_backend *be = m->be;
    int L = m->L, D = m->D, B = s->last_B, T = s->last_T, C = m->out_dim;
    size_t N = (size_t)B * T, ND = N * D;
    double t0 = s->profile ? mono_s() : 0;
    be->zero(s->d_logits, (size_t)B * C * sizeof(float));
    if (m->opt.task == TASK_CLASSIFICATION)
        be->crossentropy_backward(s->d_logits, s->probs, s->labels, s->grad_scale / B, B, C);
    else
        be->mse_backward(s->d_logits, s->logits, s->targets, s->grad_scale / B, B);
    int through_backbone = m->opt.method != METHOD_LINEAR;
    be->zero(s->d_pooled, (size_t)B * D * sizeof(float));
    be->matmul_backward(through_backbone ? s->d_pooled : NULL, PG(m->head_w), PG(m->head_b),
                        s->d_logits, s->pooled, PD(m->head_w), B, D, C);
    phase_end(m, s, PH_HEAD, &t0);
    if (!through_backbone)
        return;
    float *dcur = s->d_a, *dnext = s->d_b;
    be->zero(dcur, ND * sizeof(float));
    pool_backward(&s->pool, dcur, s->d_pooled, s->mask, B, T, D);
    int first = m->opt.method == METHOD_FULL ? 0 : L - m->k;
    for (int i = L - 1; i >= first; i--) {
        /* the layer's input: the previous state, or the MTSA output for sherl's first late layer
         * (NULL in a half job: a trained layer keeps it rounded, a frozen one never reads it) */
        const float *inp = (m->opt.method == METHOD_SHERL && i == first) ? s->y : s->hidden[i];
        int need_dinp = i > first || m->opt.method != METHOD_LATE;
        if (need_dinp)
            be->zero(dnext, ND * sizeof(float));
        bert_layer ly = layer_in_use(m, s, i);
        bert_layer_backward(m->bb, &ly, m->layer_trainable[i] ? &m->grads[i] : NULL,
                            &s->acts[i], &s->gws, need_dinp ? dnext : NULL, dcur, inp, s->ws.mask_add, s->ws.act16,
                            s->ws.act16_n, B, T);
        float *t = dcur;
        dcur = dnext;
        dnext = t;
    }
    phase_end(m, s, PH_LATE_BWD, &t0);
    if (m->opt.method == METHOD_SHERL) {
        mtsa_backward(&m->side, &m->ps, &s->side, dcur, s->taps, s->taps16, s->hidden[first],
                      (int)N, 1, dropout_seed);
        phase_end(m, s, PH_MTSA_BWD, &t0);
    } else if (m->opt.method == METHOD_FULL) {
        bert_embed_backward(m->bb, &m->emb, &m->emb_grads, &s->ws, dnext, dcur, B, T);
        phase_end(m, s, PH_EMBED_BWD, &t0);
    }
}
