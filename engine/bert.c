#include "bert.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/stat.h>

#include "half.h"
#include "safetensors.h"

/* ------------------------------------------------------------------------------------------
 * loading */

int sherl_precision_parse(const char *name, sherl_precision *out)
{
    if (name && !strcmp(name, "fp32"))
        return *out = SHERL_FP32, 0;
    if (name && !strcmp(name, "bf16"))
        return *out = SHERL_BF16, 0;
    if (name && !strcmp(name, "fp16"))
        return *out = SHERL_FP16, 0;
    return -1;
}

const char *sherl_precision_name(sherl_precision p)
{
    return p == SHERL_BF16 ? "bf16" : p == SHERL_FP16 ? "fp16" : "fp32";
}

typedef struct {
    const safetensors_file *sf;
    const char *prefix; /* "" or "bert." */
    const sherl_backend *be;
    float *arena;       /* the fp32 parameters, then (bf16 models) the bf16 matrices */
    size_t used, cap;   /* in floats */
    uint16_t *arena16;
    size_t used16, cap16;
    float *host;        /* staging buffer, big enough for the largest tensor */
    size_t host_cap;    /* in floats */
    float *wide;        /* half models: one tensor in fp32 on the host, before rounding (the
                         * staging buffer on a device) */
    size_t wide_cap;    /* in floats */
    uint16_t *half;     /* half models on a device: a block of rounded elements on the host */
    sherl_precision prec;
    int failed;         /* a carve did not fit: the sizes and the layout disagree (a bug) */
} loader;

/* Reads a tensor into backend memory: directly when the backend's memory is host memory,
 * else through the staging buffer. */
static sherl_status read_tensor(loader *ld, float *dst, const char *name, int ndim,
                                const int64_t *shape, size_t n)
{
    if (!dst || (!ld->be->host_memory && n > ld->host_cap))
        return sherl_errorf(SHERL_EINTERNAL, "'%s': no buffer for %zu floats", name, n);
    if (ld->be->host_memory)
        return safetensors_read_f32(ld->sf, name, dst, ndim, shape);
    SHERL_TRY(safetensors_read_f32(ld->sf, name, ld->host, ndim, shape));
    ld->be->copy_to_device(dst, ld->host, n * sizeof(float));
    return sherl_ok();
}

/* ld->wide is its own only on a host-memory backend (a device's is the staging buffer) */
static void free_wide(loader *ld)
{
    if (ld->wide && ld->wide != ld->host)
        free(ld->wide);
    free(ld->half);
}

#define HALF_BLOCK ((size_t)1 << 20) /* elements rounded on the host per copy to a device */

/* A weight matrix: into w32 in fp32, or (w32 NULL) rounded to bf16/fp16 into w16. The fp32 values
 * stay on the host: a host-memory backend rounds them straight into w16; for a device they are
 * rounded here a block at a time (kernels.h's conversions, the same bits as the backends') and
 * copied, so the device never holds an fp32 copy of a table. */
static sherl_status read_matrix(loader *ld, float *w32, uint16_t *w16, const char *name,
                                int64_t d0, int64_t d1)
{
    int64_t shape[2] = {d0, d1};
    size_t n = (size_t)d0 * (size_t)d1;
    if (w32)
        return read_tensor(ld, w32, name, 2, shape, n);
    if (!w16 || !ld->wide || n > ld->wide_cap || (!ld->be->host_memory && !ld->half))
        return sherl_errorf(SHERL_EINTERNAL, "'%s': no half buffer for %zu elements", name, n);
    SHERL_TRY(safetensors_read_f32(ld->sf, name, ld->wide, 2, shape));
    if (ld->be->host_memory) {
        half_round(ld->be, ld->prec, w16, ld->wide, n);
        return sherl_ok();
    }
    for (size_t at = 0; at < n; at += HALF_BLOCK) {
        size_t k = n - at < HALF_BLOCK ? n - at : HALF_BLOCK;
        const float *src = ld->wide + at;
        if (ld->prec == SHERL_FP16)
            for (size_t i = 0; i < k; i++)
                ld->half[i] = sherl_f32_to_f16(src[i]);
        else
            for (size_t i = 0; i < k; i++)
                ld->half[i] = sherl_f32_to_bf16(src[i]);
        ld->be->copy_to_device(w16 + at, ld->half, k * sizeof(uint16_t));
    }
    return sherl_ok();
}

/* Every tensor starts 256 bytes into the arena's alignment (cudaMalloc's), so the GEMM
 * libraries take their vectorised paths for every operand. */
#define CARVE_ALIGN 256

static float *carve(loader *ld, size_t n)
{
    size_t at = (ld->used + CARVE_ALIGN / sizeof(float) - 1) & ~(CARVE_ALIGN / sizeof(float) - 1);
    if (at + n > ld->cap) {
        ld->failed = 1;
        return NULL;
    }
    ld->used = at + n;
    return ld->arena + at;
}

static uint16_t *carve16(loader *ld, size_t n)
{
    size_t at = (ld->used16 + CARVE_ALIGN / sizeof(uint16_t) - 1) &
                ~(CARVE_ALIGN / sizeof(uint16_t) - 1);
    if (at + n > ld->cap16) {
        ld->failed = 1;
        return NULL;
    }
    ld->used16 = at + n;
    return ld->arena16 + at;
}

/* Tensors a load carves: 5 for the embeddings, 12 per layer; each may waste < CARVE_ALIGN. */
static size_t carve_slack(const hf_config *c)
{
    return (5 + 12 * (size_t)c->num_hidden_layers) * CARVE_ALIGN;
}

/* Layer i's twelve tensors from the file into dst's pointers; Q, K and V stacked into one
 * [3D, D] weight and [3D] bias. */
static sherl_status read_layer(loader *ld, const bert_layer *dst, int i, const hf_config *c)
{
    static const char *const parts[3] = {"query", "key", "value"};
    int64_t D = c->hidden_size, F = c->intermediate_size;
    char n[256];
    for (int p = 0; p < 3; p++) {
        int64_t bshape[1] = {D};
        snprintf(n, sizeof n, "%sencoder.layer.%d.attention.self.%s.weight", ld->prefix, i,
                 parts[p]);
        SHERL_TRY(read_matrix(ld, dst->qkv_w ? dst->qkv_w + (size_t)p * D * D : NULL,
                              dst->qkv_w16 ? (uint16_t *)dst->qkv_w16 + (size_t)p * D * D : NULL,
                              n, D, D));
        snprintf(n, sizeof n, "%sencoder.layer.%d.attention.self.%s.bias", ld->prefix, i,
                 parts[p]);
        SHERL_TRY(read_tensor(ld, dst->qkv_b + (size_t)p * D, n, 1, bshape, (size_t)D));
    }
#define MAT(w, suffix, a, b)                                                                  \
    do {                                                                                      \
        snprintf(n, sizeof n, "%sencoder.layer.%d.%s", ld->prefix, i, suffix);                \
        SHERL_TRY(read_matrix(ld, dst->w, (uint16_t *)dst->w##16, n, a, b));                  \
    } while (0)
#define VEC(v, suffix, len)                                                                   \
    do {                                                                                      \
        int64_t shape_[1] = {len};                                                            \
        snprintf(n, sizeof n, "%sencoder.layer.%d.%s", ld->prefix, i, suffix);                \
        SHERL_TRY(read_tensor(ld, dst->v, n, 1, shape_, (size_t)(len)));                      \
    } while (0)
    MAT(attn_out_w, "attention.output.dense.weight", D, D);
    VEC(attn_out_b, "attention.output.dense.bias", D);
    VEC(ln1_w, "attention.output.LayerNorm.weight", D);
    VEC(ln1_b, "attention.output.LayerNorm.bias", D);
    MAT(ffn_in_w, "intermediate.dense.weight", F, D);
    VEC(ffn_in_b, "intermediate.dense.bias", F);
    MAT(ffn_out_w, "output.dense.weight", D, F);
    VEC(ffn_out_b, "output.dense.bias", D);
    VEC(ln2_w, "output.LayerNorm.weight", D);
    VEC(ln2_b, "output.LayerNorm.bias", D);
#undef MAT
#undef VEC
    return sherl_ok();
}

/* Carves layer i's tensors (the matrices in bf16 when the loader has a bf16 region) and
 * reads them. */
static sherl_status load_layer(loader *ld, bert_layer *ly, int i, const hf_config *c)
{
    size_t D = c->hidden_size, F = c->intermediate_size;
    memset(ly, 0, sizeof *ly);
    if (ld->arena16) {
        ly->qkv_w16 = carve16(ld, 3 * D * D);
        ly->attn_out_w16 = carve16(ld, D * D);
        ly->ffn_in_w16 = carve16(ld, F * D);
        ly->ffn_out_w16 = carve16(ld, D * F);
    } else {
        ly->qkv_w = carve(ld, 3 * D * D);
        ly->attn_out_w = carve(ld, D * D);
        ly->ffn_in_w = carve(ld, F * D);
        ly->ffn_out_w = carve(ld, D * F);
    }
    ly->qkv_b = carve(ld, 3 * D);
    ly->attn_out_b = carve(ld, D);
    ly->ln1_w = carve(ld, D);
    ly->ln1_b = carve(ld, D);
    ly->ffn_in_b = carve(ld, F);
    ly->ffn_out_b = carve(ld, D);
    ly->ln2_w = carve(ld, D);
    ly->ln2_b = carve(ld, D);
    if (ld->failed)
        return sherl_errorf(SHERL_EINTERNAL, "weight arena too small at layer %d", i);
    return read_layer(ld, ly, i, c);
}

/* Elements of the four weight matrices of one layer; the rest are vectors. */
static size_t layer_matrix_elems(const hf_config *c)
{
    size_t D = c->hidden_size, F = c->intermediate_size;
    return 4 * D * D + 2 * D * F;
}

/* Elements of the three embedding tables. */
static size_t embedding_table_elems(const hf_config *c)
{
    return ((size_t)c->vocab_size + c->max_position_embeddings + c->type_vocab_size) *
           (size_t)c->hidden_size;
}

/* What a bf16 backbone holds in bf16: every matrix and the embedding tables. */
static size_t bf16_elems(const hf_config *c)
{
    return layer_matrix_elems(c) * (size_t)c->num_hidden_layers + embedding_table_elems(c);
}

size_t bert_param_count(const hf_config *c)
{
    size_t D = c->hidden_size, F = c->intermediate_size;
    size_t emb = ((size_t)c->vocab_size + c->max_position_embeddings + c->type_vocab_size) * D +
                 2 * D;
    size_t layer = 4 * D * D + 4 * D + 2 * D * F + F + D + 4 * D;
    return emb + layer * (size_t)c->num_hidden_layers;
}

/* The bf16 region starts 256-byte aligned after the fp32 parameters. */
static size_t fp32_region_bytes(const hf_config *c, sherl_precision prec)
{
    size_t floats = bert_param_count(c);
    if (prec != SHERL_FP32)
        floats -= bf16_elems(c);
    return (floats * sizeof(float) + carve_slack(c) + 255) & ~(size_t)255;
}

size_t bert_weight_bytes(const hf_config *c, sherl_precision prec)
{
    size_t b = fp32_region_bytes(c, prec);
    if (prec != SHERL_FP32)
        b += bf16_elems(c) * sizeof(uint16_t) + carve_slack(c);
    return b;
}

/* Floats of the largest tensor a load reads whole: every tensor is [rows, D] or [D, F] with rows
 * one of V, P, TV, F, 3 x D (the Q, K, V parts are read one at a time: D) or a vector. */
static size_t largest_tensor_floats(const hf_config *c)
{
    size_t D = c->hidden_size, rows = c->intermediate_size;
    size_t other[4] = {D, (size_t)c->vocab_size, (size_t)c->max_position_embeddings,
                       (size_t)c->type_vocab_size};
    for (int i = 0; i < 4; i++)
        if (other[i] > rows)
            rows = other[i];
    return rows * D;
}

size_t bert_load_staging_bytes(const hf_config *c, const sherl_backend *be)
{
    return be->host_memory ? 0 : largest_tensor_floats(c) * sizeof(float);
}

/* Half loads round each table and matrix from an fp32 copy on the host: on a host-memory backend
 * a buffer for the largest; on a device the staging buffer, and a block of halves. */
size_t bert_load_wide_bytes(const hf_config *c, const sherl_backend *be, sherl_precision prec)
{
    if (prec == SHERL_FP32)
        return 0;
    return be->host_memory ? largest_tensor_floats(c) * sizeof(float)
                           : HALF_BLOCK * sizeof(uint16_t);
}

/* The embeddings: tables into dst's float pointers, or (float pointer NULL) rounded to bf16
 * into the *16 ones; the LayerNorm in fp32. */
static sherl_status read_embeddings(loader *ld, const bert_embeddings *dst, const hf_config *c)
{
    int64_t D = c->hidden_size;
    static const char *const names[3] = {"word_embeddings", "position_embeddings",
                                         "token_type_embeddings"};
    float *w32[3] = {dst->word, dst->pos, dst->type};
    uint16_t *w16[3] = {(uint16_t *)dst->word16, (uint16_t *)dst->pos16, (uint16_t *)dst->type16};
    int64_t rows[3] = {c->vocab_size, c->max_position_embeddings, c->type_vocab_size};
    char n[256];
    for (int t = 0; t < 3; t++) {
        snprintf(n, sizeof n, "%sembeddings.%s.weight", ld->prefix, names[t]);
        SHERL_TRY(read_matrix(ld, w32[t], w16[t], n, rows[t], D));
    }
    int64_t shape[1] = {D};
    snprintf(n, sizeof n, "%sembeddings.LayerNorm.weight", ld->prefix);
    SHERL_TRY(read_tensor(ld, dst->ln_w, n, 1, shape, (size_t)D));
    snprintf(n, sizeof n, "%sembeddings.LayerNorm.bias", ld->prefix);
    return read_tensor(ld, dst->ln_b, n, 1, shape, (size_t)D);
}

/* Opens the model file and finds the tensor-name prefix. */
/* The identity of a file as bert_model keeps it; -1 when it cannot be read. */
static int file_identity(const char *path, bert_model *id)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return -1;
    id->file_dev = (unsigned long long)st.st_dev;
    id->file_ino = (unsigned long long)st.st_ino;
    id->file_size = (long long)st.st_size;
    id->file_mtime_ns = (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
    return 0;
}

/* Opens the model file and finds the tensor-name prefix; with `same` (a loaded model), only
 * when the file is still the one it was loaded from. */
static sherl_status open_weights(safetensors_file *sf, const char **prefix, const char *dir,
                                 const bert_model *same)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (same) {
        bert_model now;
        if (file_identity(path, &now) != 0 || now.file_dev != same->file_dev ||
            now.file_ino != same->file_ino || now.file_size != same->file_size ||
            now.file_mtime_ns != same->file_mtime_ns)
            return sherl_errorf(SHERL_EINVAL,
                                "%s changed or went away since the backbone was loaded from it: "
                                "its trainable layers cannot be read from the same checkpoint "
                                "(unload and load the backbone again)",
                                path);
    }
    SHERL_TRY(safetensors_open(sf, path));
    *prefix = safetensors_find(sf, "embeddings.word_embeddings.weight")        ? ""
              : safetensors_find(sf, "bert.embeddings.word_embeddings.weight") ? "bert."
                                                                               : NULL;
    if (!*prefix) {
        safetensors_close(sf);
        return sherl_errorf(SHERL_EFORMAT,
                            "%s: no 'embeddings.word_embeddings.weight' (nor with a 'bert.' "
                            "prefix): not a BERT checkpoint",
                            path);
    }
    return sherl_ok();
}

/* Re-reads part of a loaded model from its file in fp32: `layer` (i >= 0) or the embeddings
 * (i < 0), into the float pointers of dst_layer / dst_emb. */
static sherl_status reread_f32(const bert_model *m, int i, const bert_layer *dst_layer,
                               const bert_embeddings *dst_emb)
{
    safetensors_file sf;
    loader ld = {.be = m->be};
    SHERL_TRY(open_weights(&sf, &ld.prefix, m->dir, m));
    ld.sf = &sf;
    size_t staging = bert_load_staging_bytes(&m->cfg, m->be);
    ld.host = staging ? malloc(staging) : NULL;
    ld.host_cap = staging / sizeof(float);
    sherl_status st = staging && !ld.host
                          ? sherl_errorf(SHERL_ENOMEM, "out of memory re-reading %s", m->dir)
                          : sherl_ok();
    if (!st.code && i >= 0) {
        bert_layer fp32 = *dst_layer;
        fp32.qkv_w16 = fp32.attn_out_w16 = fp32.ffn_in_w16 = fp32.ffn_out_w16 = NULL;
        st = read_layer(&ld, &fp32, i, &m->cfg);
    } else if (!st.code) {
        bert_embeddings fp32 = *dst_emb;
        fp32.word16 = fp32.pos16 = fp32.type16 = NULL;
        st = read_embeddings(&ld, &fp32, &m->cfg);
    }
    free(ld.host);
    safetensors_close(&sf);
    return st;
}

sherl_status bert_read_layer_f32(const bert_model *m, int i, const bert_layer *dst)
{
    if (i < 0 || i >= m->cfg.num_hidden_layers || !dst->qkv_w || !dst->attn_out_w ||
        !dst->ffn_in_w || !dst->ffn_out_w)
        return sherl_errorf(SHERL_EINTERNAL, "bert_read_layer_f32: layer %d or its buffers", i);
    return reread_f32(m, i, dst, NULL);
}

sherl_status bert_read_embeddings_f32(const bert_model *m, const bert_embeddings *dst)
{
    if (!dst->word || !dst->pos || !dst->type || !dst->ln_w || !dst->ln_b)
        return sherl_errorf(SHERL_EINTERNAL, "bert_read_embeddings_f32: missing buffers");
    return reread_f32(m, -1, NULL, dst);
}

sherl_status bert_load(bert_model **out, const char *model_dir, const sherl_backend *be)
{
    return bert_load_prec(out, model_dir, be, SHERL_FP32);
}

sherl_status bert_load_prec(bert_model **out, const char *model_dir, const sherl_backend *be,
                            sherl_precision prec)
{
    *out = NULL;
    char path[4200];
    bert_model *m = calloc(1, sizeof *m);
    if (!m)
        return sherl_errorf(SHERL_ENOMEM, "out of memory");
    m->be = be;
    m->prec = prec;
    if (strlen(model_dir) >= sizeof m->dir) {
        free(m);
        return sherl_errorf(SHERL_EINVAL, "model folder path of %zu bytes: at most %zu",
                            strlen(model_dir), sizeof m->dir - 1);
    }
    snprintf(m->dir, sizeof m->dir, "%s", model_dir);
    snprintf(path, sizeof path, "%s/config.json", model_dir);
    sherl_status st = hf_config_load(&m->cfg, path);
    if (st.code) {
        free(m);
        return st;
    }
    const hf_config *c = &m->cfg;
    safetensors_file sf;
    loader ld = {.be = be, .prec = prec};
    if (prec != SHERL_FP32 && prec != SHERL_BF16 && prec != SHERL_FP16) {
        free(m);
        return sherl_errorf(SHERL_EINVAL, "precision %d: expected fp32, bf16 or fp16", (int)prec);
    }
    st = open_weights(&sf, &ld.prefix, model_dir, NULL);
    if (st.code) {
        free(m);
        return st;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", model_dir);
    if (file_identity(path, m) != 0) { /* open a moment ago: a race with its removal */
        safetensors_close(&sf);
        free(m);
        return sherl_errorf(SHERL_EIO, "%s: cannot stat it", path);
    }
    ld.sf = &sf;
    size_t D = c->hidden_size;
    size_t fp32_bytes = fp32_region_bytes(c, prec), total = bert_weight_bytes(c, prec);
    ld.cap = fp32_bytes / sizeof(float);
    ld.arena = be->alloc(total);
    if (ld.arena && prec != SHERL_FP32) {
        ld.arena16 = (uint16_t *)((char *)ld.arena + fp32_bytes);
        ld.cap16 = (bert_weight_bytes(c, prec) - fp32_bytes) / sizeof(uint16_t);
    }
    size_t staging = bert_load_staging_bytes(c, be);
    ld.host = staging ? malloc(staging) : NULL;
    ld.host_cap = staging / sizeof(float);
    if (ld.arena && prec != SHERL_FP32) {
        if (be->host_memory) {
            ld.wide = malloc(bert_load_wide_bytes(c, be, prec));
            ld.wide_cap = bert_load_wide_bytes(c, be, prec) / sizeof(float);
        } else {
            ld.wide = ld.host, ld.wide_cap = ld.host_cap;
            ld.half = malloc(bert_load_wide_bytes(c, be, prec));
        }
    }
    m->layers = calloc((size_t)c->num_hidden_layers, sizeof(bert_layer));
    if (!ld.arena || (staging && !ld.host) || !m->layers ||
        (prec != SHERL_FP32 && (!ld.wide || (!be->host_memory && !ld.half)))) {
        st = sherl_errorf(SHERL_ENOMEM, "cannot allocate %.1f MB for the weights of %s",
                          total / 1e6, model_dir);
        goto fail;
    }
    if (prec != SHERL_FP32) {
        m->emb.word16 = carve16(&ld, (size_t)c->vocab_size * D);
        m->emb.pos16 = carve16(&ld, (size_t)c->max_position_embeddings * D);
        m->emb.type16 = carve16(&ld, (size_t)c->type_vocab_size * D);
    } else {
        m->emb.word = carve(&ld, (size_t)c->vocab_size * D);
        m->emb.pos = carve(&ld, (size_t)c->max_position_embeddings * D);
        m->emb.type = carve(&ld, (size_t)c->type_vocab_size * D);
    }
    m->emb.ln_w = carve(&ld, D);
    m->emb.ln_b = carve(&ld, D);
    st = ld.failed ? sherl_errorf(SHERL_EINTERNAL, "weight arena too small for the embeddings")
                   : read_embeddings(&ld, &m->emb, c);
    for (int i = 0; !st.code && i < c->num_hidden_layers; i++)
        st = load_layer(&ld, &m->layers[i], i, c);
    if (!st.code)
        be->synchronize(); /* a host-memory backend's rounding reads ld.wide, freed below */
    if (!st.code)
        st = sherl_backend_status(be, "uploading the weights");
    if (st.code)
        goto fail;
    m->n_params = (long long)bert_param_count(c);
    m->arena = ld.arena;
    free_wide(&ld);
    free(ld.host);
    safetensors_close(&sf);
    *out = m;
    return sherl_ok();
fail:
    if (ld.arena)
        be->free(ld.arena);
    free_wide(&ld);
    free(ld.host);
    free(m->layers);
    free(m);
    safetensors_close(&sf);
    return st;
}

void bert_free(bert_model *m)
{
    if (!m)
        return;
    if (m->arena)
        m->be->free(m->arena);
    free(m->layers);
    free(m);
}

/* ------------------------------------------------------------------------------------------
 * batches */

sherl_status bert_batch_from_encodings(bert_batch *batch, const tok_encoding *encs, int n,
                                       int pad_id)
{
    memset(batch, 0, sizeof *batch);
    if (n <= 0)
        return sherl_errorf(SHERL_EINVAL, "empty batch");
    int T = 0;
    for (int i = 0; i < n; i++)
        if (encs[i].len > T)
            T = encs[i].len;
    if (T == 0)
        return sherl_errorf(SHERL_EINVAL, "every sequence in the batch is empty");
    size_t cells = (size_t)n * T;
    batch->input_ids = malloc(cells * sizeof(int32_t));
    batch->token_type_ids = calloc(cells, sizeof(int32_t));
    batch->attention_mask = calloc(cells, sizeof(int32_t));
    if (!batch->input_ids || !batch->token_type_ids || !batch->attention_mask) {
        bert_batch_free(batch);
        return sherl_errorf(SHERL_ENOMEM, "out of memory for a %d x %d batch", n, T);
    }
    batch->B = n;
    batch->T = T;
    for (int i = 0; i < n; i++)
        for (int t = 0; t < T; t++) {
            size_t k = (size_t)i * T + t;
            int in = t < encs[i].len;
            batch->input_ids[k] = in ? encs[i].input_ids[t] : pad_id;
            batch->token_type_ids[k] = in ? encs[i].token_type_ids[t] : 0;
            batch->attention_mask[k] = in ? encs[i].attention_mask[t] : 0;
        }
    return sherl_ok();
}

sherl_status bert_batch_pad_to(bert_batch *batch, int T, int pad_id)
{
    if (T < batch->T)
        return sherl_errorf(SHERL_EINVAL, "cannot pad a batch of %d tokens to %d", batch->T, T);
    if (T == batch->T)
        return sherl_ok();
    bert_batch p = {batch->B, T, malloc((size_t)batch->B * T * sizeof(int32_t)),
                    calloc((size_t)batch->B * T, sizeof(int32_t)),
                    calloc((size_t)batch->B * T, sizeof(int32_t))};
    if (!p.input_ids || !p.token_type_ids || !p.attention_mask) {
        bert_batch_free(&p);
        return sherl_errorf(SHERL_ENOMEM, "out of memory for a %d x %d batch", batch->B, T);
    }
    for (int b = 0; b < batch->B; b++)
        for (int t = 0; t < T; t++) {
            size_t k = (size_t)b * T + t, o = (size_t)b * batch->T + t;
            int in = t < batch->T;
            p.input_ids[k] = in ? batch->input_ids[o] : pad_id;
            p.token_type_ids[k] = in && batch->token_type_ids ? batch->token_type_ids[o] : 0;
            p.attention_mask[k] = in ? batch->attention_mask[o] : 0;
        }
    bert_batch_free(batch);
    *batch = p;
    return sherl_ok();
}

void bert_batch_free(bert_batch *batch)
{
    free(batch->input_ids);
    free(batch->token_type_ids);
    free(batch->attention_mask);
    memset(batch, 0, sizeof *batch);
}

/* ------------------------------------------------------------------------------------------
 * workspace */

static int ffn_device_rows = BERT_FFN_DEVICE_ROWS;
static int fused_forward = 1;

void bert_set_fused_forward(int on) { fused_forward = on != 0; }

void bert_set_ffn_device_rows(int rows)
{
    ffn_device_rows = rows > 0 ? rows : BERT_FFN_DEVICE_ROWS;
}

int bert_ffn_chunk(const hf_config *c, int N, int device)
{
    long long n = (long long)N * c->hidden_size / (2LL * c->intermediate_size);
    if (device && n < ffn_device_rows)
        n = ffn_device_rows;
    return n < 1 ? 1 : n > N ? N : (int)n;
}

int bert_ffn_pass_rows(const hf_config *c, int N, int device, int layout_rows)
{
    int chunk = bert_ffn_chunk(c, N, device);
    return layout_rows > 0 && chunk > layout_rows ? layout_rows : chunk;
}

/* Sequences per attention pass at the layout's shape: the most whose probabilities take at most
 * half a hidden state's floats; on a device (fewer, larger launches) at least as many as fit in
 * one feed-forward chunk buffer, [chunk, F], with their Q|K|V [T, 3D] and probabilities
 * [NH, T, T] each. The attention buffers of both layouts lie over the feed-forward block's
 * (bert_layer_scratch_layout: Q|K|V and probabilities over two chunk buffers; the backward's:
 * d_attn, d_qkv, Q|K|V and probabilities over d_ln1 and three), so that costs no memory. At
 * least one, at most B. */
static int attn_layout_seqs(const hf_config *c, int B, int T, int device)
{
    long long per_seq = (long long)c->num_attention_heads * T * T;
    long long s = (long long)B * T * c->hidden_size / 2 / per_seq;
    if (device) {
        long long chunk_f = (long long)bert_ffn_chunk(c, B * T, 1) * c->intermediate_size;
        long long fit = chunk_f / (3LL * T * c->hidden_size + per_seq);
        if (fit > s)
            s = fit;
    }
    return s < 1 ? 1 : s > B ? B : (int)s;
}

int bert_attn_seqs(const bert_layer_acts *a, int NH, int B, int T)
{
    size_t by_probs = a->probs_n / ((size_t)NH * T * T), by_rows = (size_t)a->chunk_rows / T;
    size_t s = by_probs < by_rows ? by_probs : by_rows;
    return s < 1 ? 1 : s > (size_t)B ? B : (int)s;
}

void bert_layer_acts_layout(bert_layer_acts *a, sherl_arena *ar, int B, int T, int D,
                            sherl_precision prec, int trained)
{
    size_t BT = (size_t)B * T;
    int half = prec != SHERL_FP32;
    a->qkv = half ? NULL : arena_floats(ar, BT * 3 * D);
    a->qkv_whole = !half;
    a->qkv16 = half ? arena_take(ar, BT * 3 * D * sizeof(uint16_t)) : NULL;
    a->attn = half ? NULL : arena_floats(ar, BT * D);
    a->attn16 = half && trained ? arena_take(ar, BT * D * sizeof(uint16_t)) : NULL;
    a->res1 = arena_floats(ar, BT * D);
    a->ln1 = half ? NULL : arena_floats(ar, BT * D);
    a->ln1_16 = half ? arena_take(ar, BT * D * sizeof(uint16_t)) : NULL;
    a->inp16 = half && trained ? arena_take(ar, BT * D * sizeof(uint16_t)) : NULL;
    a->ln1_mean = arena_floats(ar, BT);
    a->ln1_rstd = arena_floats(ar, BT);
    a->res2 = arena_floats(ar, BT * D);
    a->ln2_mean = arena_floats(ar, BT);
    a->ln2_rstd = arena_floats(ar, BT);
    a->kept = 1;
    /* forward scratch (bert_layer_acts_share_scratch): the backward computes them again */
    a->probs = a->ffn_pre = a->ffn_act = NULL;
    a->probs_n = 0, a->chunk_rows = 0, a->ffn_rows = 0;
}

void bert_layer_acts_share_scratch(bert_layer_acts *a, const bert_layer_acts *scratch)
{
    a->probs = scratch->probs;
    a->probs_n = scratch->probs_n;
    a->chunk_rows = scratch->chunk_rows;
    a->ffn_pre = scratch->ffn_pre;
    a->ffn_act = scratch->ffn_act;
    a->ffn_rows = scratch->ffn_rows;
    /* a half layer's qkv, attn and ln1 (kept rounded): the scratch's, which overlap each other
     * only as their lives do not, and none of the other buffers a backprop layer uses */
    if (!a->qkv)
        a->qkv = scratch->qkv;
    if (!a->attn)
        a->attn = scratch->attn;
    if (!a->ln1)
        a->ln1 = scratch->ln1;
}

void bert_layer_scratch_layout(bert_layer_acts *a, sherl_arena *ar, const hf_config *c, int B,
                               int T, int device)
{
    int D = c->hidden_size, NH = c->num_attention_heads;
    size_t BT = (size_t)B * T, at = ar->used, end;
    a->ffn_rows = bert_ffn_chunk(c, B * T, device);
    size_t chunk_f = (size_t)a->ffn_rows * c->intermediate_size;
    int seqs = attn_layout_seqs(c, B, T, device);
    a->chunk_rows = seqs * T;
    a->probs_n = (size_t)seqs * NH * T * T;
    a->qkv_whole = 0, a->kept = 0;
    a->qkv16 = NULL, a->attn16 = a->ln1_16 = a->inp16 = NULL;
    /* the attention block's buffers: its output, and one chunk's Q|K|V and probabilities... */
    a->attn = arena_floats(ar, BT * D);
    a->qkv = arena_floats(ar, (size_t)a->chunk_rows * 3 * D);
    a->probs = arena_floats(ar, a->probs_n);
    end = ar->used;
    /* ...and the feed-forward block's: ln1 over attn (which the projection into res1 has
     * consumed), res1 over the chunk buffers; one chunk's ffn_pre and ffn_act; res2 (written
     * from ffn_act, then ln1 added) over res1, which LayerNorm 1 has consumed */
    ar->used = at;
    a->ln1 = arena_floats(ar, BT * D);
    a->res1 = arena_floats(ar, BT * D);
    a->ffn_pre = arena_floats(ar, chunk_f);
    a->ffn_act = arena_floats(ar, chunk_f);
    a->res2 = a->res1;
    if (ar->used < end)
        ar->used = end;
    a->ln1_mean = arena_floats(ar, BT);
    a->ln1_rstd = arena_floats(ar, BT);
    a->ln2_mean = arena_floats(ar, BT);
    a->ln2_rstd = arena_floats(ar, BT);
}

sherl_status bert_workspace_check(const hf_config *c, int B, int T)
{
    if (B <= 0 || T <= 0)
        return sherl_errorf(SHERL_EINVAL, "batch shape %d x %d: both must be positive", B, T);
    if (T > c->max_position_embeddings)
        return sherl_errorf(SHERL_EINVAL,
                            "sequence length %d exceeds the model's max_position_embeddings %d",
                            T, c->max_position_embeddings);
    return sherl_ok();
}

void bert_workspace_layout(bert_workspace *ws, const hf_config *c, const sherl_backend *be,
                           int device, sherl_precision prec, int B, int T, sherl_arena *ar,
                           int for_step)
{
    ws->be = be;
    ws->B = B, ws->T = T, ws->D = c->hidden_size, ws->F = c->intermediate_size;
    ws->NH = c->num_attention_heads;
    size_t BT = (size_t)B * T;
    if (!for_step)
        bert_layer_scratch_layout(&ws->acts, ar, c, B, T, device);
    ws->emb = for_step ? NULL : arena_floats(ar, BT * ws->D);
    ws->tmp = for_step ? NULL : arena_floats(ar, BT * ws->D);
    ws->mask_add = arena_floats(ar, BT);
    ws->ids = arena_ints(ar, BT);
    ws->types = arena_ints(ar, BT);
    ws->positions = arena_ints(ar, BT);
    ws->emb_mean = arena_floats(ar, BT);
    ws->emb_rstd = arena_floats(ar, BT);
    /* a half product's rounded operand, whole when it is a feed-forward chunk's [chunk, F] or an
     * input [BT, D], a block of rows at a time when wider (the Q|K|V gradient [BT, 3D]; a
     * trained matrix's output gradient and input side by side, at least one row of each) */
    size_t n16 = BT * ws->D, ffn = (size_t)bert_ffn_chunk(c, B * T, device) * ws->F;
    if (n16 < ffn)
        n16 = ffn;
    if (n16 < (size_t)ws->F + 3 * (size_t)ws->D) /* a row of a trained product's dout and inp */
        n16 = (size_t)ws->F + 3 * (size_t)ws->D;
    ws->act16_n = prec != SHERL_FP32 ? n16 : 0;
    ws->act16 = prec != SHERL_FP32 ? arena_take(ar, n16 * sizeof(uint16_t)) : NULL;
}

sherl_status bert_workspace_create(bert_workspace *ws, const bert_model *m, int B, int T)
{
    memset(ws, 0, sizeof *ws);
    SHERL_TRY(bert_workspace_check(&m->cfg, B, T));
    sherl_arena measure;
    arena_measure(&measure);
    bert_workspace_layout(ws, &m->cfg, m->be, !m->be->host_memory, m->prec, B, T, &measure, 0);
    SHERL_TRY(arena_alloc(&ws->own, m->be, measure.used, "the encoder workspace"));
    bert_workspace_layout(ws, &m->cfg, m->be, !m->be->host_memory, m->prec, B, T, &ws->own, 0);
    sherl_status st = arena_check(&ws->own, "encoder workspace");
    if (st.code)
        bert_workspace_free(ws);
    return st;
}

void bert_workspace_free(bert_workspace *ws)
{
    arena_release(&ws->own);
    memset(ws, 0, sizeof *ws);
}

/* ------------------------------------------------------------------------------------------
 * forward */

sherl_status bert_embed_forward(const bert_model *m, bert_workspace *ws, const bert_batch *batch,
                                float *h0)
{
    return bert_embed_forward_weights(m, &m->emb, ws, batch, h0);
}

sherl_status bert_embed_forward_weights(const bert_model *m, const bert_embeddings *w,
                                        bert_workspace *ws, const bert_batch *batch, float *h0)
{
    SHERL_TRY(bert_embed_upload(m, ws, batch));
    bert_embed_compute(m, w, ws, batch->B, batch->T, h0);
    return sherl_ok();
}

sherl_status bert_embed_upload(const bert_model *m, bert_workspace *ws, const bert_batch *batch)
{
    const hf_config *c = &m->cfg;
    const sherl_backend *be = m->be;
    int B = batch->B, T = batch->T;
    if (B <= 0 || T <= 0 || B > ws->B || T > ws->T)
        return sherl_errorf(SHERL_EINVAL, "batch %d x %d does not fit the workspace %d x %d", B,
                            T, ws->B, ws->T);
    size_t BT = (size_t)B * T;
    for (size_t k = 0; k < BT; k++) {
        int32_t id = batch->input_ids[k];
        if (id < 0 || id >= c->vocab_size)
            return sherl_errorf(SHERL_EINVAL,
                                "input_ids[%zu][%zu] = %d is outside the vocabulary [0, %d)",
                                k / T, k % T, id, c->vocab_size);
        int32_t ty = batch->token_type_ids ? batch->token_type_ids[k] : 0;
        if (ty < 0 || ty >= c->type_vocab_size)
            return sherl_errorf(SHERL_EINVAL,
                                "token_type_ids[%zu][%zu] = %d is outside [0, %d)", k / T, k % T,
                                ty, c->type_vocab_size);
        int32_t mk = batch->attention_mask[k];
        if (mk != 0 && mk != 1)
            return sherl_errorf(SHERL_EINVAL, "attention_mask[%zu][%zu] = %d: expected 0 or 1",
                                k / T, k % T, mk);
    }
    int32_t *pos = malloc(BT * sizeof(int32_t));
    int32_t *types = malloc(BT * sizeof(int32_t));
    float *madd = malloc(BT * sizeof(float));
    if (!pos || !types || !madd) {
        free(pos), free(types), free(madd);
        return sherl_errorf(SHERL_ENOMEM, "out of memory");
    }
    for (size_t k = 0; k < BT; k++) {
        pos[k] = (int32_t)(k % T);
        types[k] = batch->token_type_ids ? batch->token_type_ids[k] : 0;
        /* as Hugging Face: padded keys get the most negative finite float */
        madd[k] = batch->attention_mask[k] ? 0.0f : -FLT_MAX;
    }
    be->copy_to_device(ws->ids, batch->input_ids, BT * sizeof(int32_t));
    be->copy_to_device(ws->types, types, BT * sizeof(int32_t));
    be->copy_to_device(ws->positions, pos, BT * sizeof(int32_t));
    be->copy_to_device(ws->mask_add, madd, BT * sizeof(float));
    free(pos), free(types), free(madd);
    return sherl_ok();
}

void bert_embed_compute(const bert_model *m, const bert_embeddings *w, bert_workspace *ws, int B,
                        int T, float *h0)
{
    const hf_config *c = &m->cfg;
    const sherl_backend *be = m->be;
    int D = c->hidden_size;
    size_t BT = (size_t)B * T;
    /* e = word[ids] + pos[t] + type[tt]; h0 = LayerNorm(e). h0 doubles as scratch. */
    if (w->word) {
        be->embedding_forward(ws->emb, ws->ids, w->word, (int)BT, D);
        be->embedding_forward(h0, ws->positions, w->pos, (int)BT, D);
    } else {
        half_gather(be, m->prec, ws->emb, ws->ids, w->word16, (int)BT, D);
        half_gather(be, m->prec, h0, ws->positions, w->pos16, (int)BT, D);
    }
    be->residual_forward(ws->emb, ws->emb, h0, BT * D);
    if (w->type)
        be->embedding_forward(h0, ws->types, w->type, (int)BT, D);
    else
        half_gather(be, m->prec, h0, ws->types, w->type16, (int)BT, D);
    be->residual_forward(ws->emb, ws->emb, h0, BT * D);
    be->layernorm_forward(h0, ws->emb_mean, ws->emb_rstd, ws->emb, w->ln_w, w->ln_b, (int)BT, D,
                          c->layer_norm_eps);
}

void bert_embed_backward(const bert_model *m, const bert_embeddings *w,
                         const bert_embeddings *grads, bert_workspace *ws, float *d_sum,
                         const float *dh0, int B, int T)
{
    const sherl_backend *be = m->be;
    int D = m->cfg.hidden_size, N = B * T;
    be->zero(d_sum, (size_t)N * D * sizeof(float));
    be->layernorm_backward(d_sum, grads->ln_w, grads->ln_b, dh0, ws->emb, w->ln_w, ws->emb_mean,
                           ws->emb_rstd, N, D);
    if (grads->word)
        be->embedding_backward(grads->word, d_sum, ws->ids, N, D);
    if (grads->pos)
        be->embedding_backward(grads->pos, d_sum, ws->positions, N, D);
    if (grads->type)
        be->embedding_backward(grads->type, d_sum, ws->types, N, D);
}

/* out[N,OC] = inp[N,C] . W^T + bias, W fp32 (w) or bf16 (w16: inp is rounded to bf16 into
 * x16 and the product accumulates in fp32). */
/* Row blocks of an [N, width] operand that fit x16's x16_n halves (at least one row). */
static int rows_per_block(size_t x16_n, int width)
{
    size_t r = x16_n / (size_t)width;
    return r < 1 ? 1 : r > (size_t)INT32_MAX ? INT32_MAX : (int)r;
}

/* out[N, cols] = half(a) . op(w16) + beta out, with a [N, K] rounded into x16 (x16_n halves) a
 * block of rows at a time; w16 is [cols, K] (tb) or [K, cols]. */
static void half_rows_gemm(const bert_model *m, uint16_t *x16, size_t x16_n, const float *a,
                           int N, int K, const uint16_t *w16, int tb, int cols, float beta,
                           float *out)
{
    int rows = rows_per_block(x16_n, K);
    for (int r0 = 0; r0 < N; r0 += rows) {
        int n = N - r0 < rows ? N - r0 : rows;
        half_round(m->be, m->prec, x16, a + (size_t)r0 * K, (size_t)n * K);
        half_gemm(m->be, m->prec, 0, tb, n, cols, K, x16, K, w16, tb ? K : cols, beta,
                  out + (size_t)r0 * cols, cols);
    }
}

/* inp16, when not NULL, is inp already rounded (kept by the layer): the product reads it
 * instead of rounding inp again (the same bits). */
static void linear_forward(const bert_model *m, float *out, const float *inp,
                           const uint16_t *inp16, const float *w, const uint16_t *w16,
                           const float *bias, uint16_t *x16, size_t x16_n, int N, int C, int OC)
{
    const sherl_backend *be = m->be;
    if (w) {
        be->matmul_forward(out, inp, w, bias, N, C, OC);
        return;
    }
    if (inp16)
        half_gemm(be, m->prec, 0, 1, N, OC, C, inp16, C, w16, C, 0.0f, out, OC);
    else
        half_rows_gemm(m, x16, x16_n, inp, N, C, w16, 1, OC, 0.0f, out);
    if (bias)
        be->bias_add_forward(out, bias, N, OC);
}

/* Backward of linear_forward. With a half matrix: dinp += half(dout) . W16, and when dw is
 * given (a trained layer's half copy of its fp32 master) dw += half(dout)^T . half(inp) and
 * db += column sums of dout, in fp32; dout and inp (unless inp16 holds it rounded) are rounded a
 * block of rows at a time, side by side in x16. */
static void linear_backward(const bert_model *m, float *dinp, float *dw, float *db,
                            const float *dout, const float *inp, const uint16_t *inp16,
                            const float *w, const uint16_t *w16, uint16_t *x16, size_t x16_n,
                            int N, int C, int OC)
{
    const sherl_backend *be = m->be;
    if (w) {
        be->matmul_backward(dinp, dw, db, dout, inp, w, N, C, OC);
        return;
    }
    if (!dw) {
        if (dinp)
            half_rows_gemm(m, x16, x16_n, dout, N, OC, w16, 0, C, 1.0f, dinp);
        return;
    }
    int rows = rows_per_block(x16_n, inp16 ? OC : C + OC);
    for (int r0 = 0; r0 < N; r0 += rows) {
        int n = N - r0 < rows ? N - r0 : rows;
        uint16_t *d16 = x16;
        const uint16_t *i16 = inp16 ? inp16 + (size_t)r0 * C : x16 + (size_t)n * OC;
        half_round(be, m->prec, d16, dout + (size_t)r0 * OC, (size_t)n * OC);
        if (!inp16)
            half_round(be, m->prec, x16 + (size_t)n * OC, inp + (size_t)r0 * C, (size_t)n * C);
        if (dinp)
            half_gemm(be, m->prec, 0, 0, n, C, OC, d16, OC, w16, C, 1.0f, dinp + (size_t)r0 * C,
                      C);
        half_gemm(be, m->prec, 1, 0, OC, C, n, d16, OC, i16, C, 1.0f, dw, C);
        if (db)
            be->bias_add_backward(db, dout + (size_t)r0 * OC, n, OC);
    }
}

/* A layer's attention: a half model's (its Q|K|V rounded to the half type) rounds the
 * probabilities too, as autocast's bf16 attention does, so both products take half operands. */
static void attention_forward(const bert_model *m, float *out, float *probs, const float *qkv,
                              const float *mask_add, int B, int T)
{
    int NH = m->cfg.num_attention_heads, HS = m->cfg.hidden_size / NH;
    if (m->prec == SHERL_FP32)
        m->be->attention_forward(out, probs, qkv, mask_add, B, T, NH, HS);
    else
        m->be->attention_half_forward(out, probs, qkv, mask_add, B, T, NH, HS,
                                      half_type(m->prec));
}

void bert_layer_forward(const bert_model *m, const bert_layer *ly, bert_layer_acts *a, float *out,
                        const float *inp, const float *mask_add, uint16_t *act16, size_t act16_n,
                        int B, int T)
{
    bert_layer_forward_halves(m, ly, a, out, NULL, inp, NULL, mask_add, act16, act16_n, B, T);
}

void bert_layer_forward_halves(const bert_model *m, const bert_layer *ly, bert_layer_acts *a,
                               float *out, uint16_t *out16, const float *inp,
                               const uint16_t *inp16, const float *mask_add, uint16_t *act16,
                               size_t act16_n, int B, int T)
{
    const sherl_backend *be = m->be;
    const hf_config *c = &m->cfg;
    int D = c->hidden_size, F = c->intermediate_size, NH = c->num_attention_heads;
    int N = B * T;
    float eps = c->layer_norm_eps;
    /* attention block: LN1(x + Wo . attention(Wqkv x)), Q|K|V and the attention a chunk of
     * sequences at a time (bert_attn_seqs) */
    int seqs = bert_attn_seqs(a, NH, B, T);
    /* A half model's layers have only half matrices (layer_in_use): their products leave the
     * bias to the fused ops after them (each the bits of the unfused ops in a row); an fp32
     * product adds its own, inside matmul_forward. */
    const int half = m->prec != SHERL_FP32;
    /* A half layer that keeps no Q|K|V has no backward, so its probabilities need not exist: a
     * device then runs its attention fused, with nothing of size T x T in memory. */
    const int fused = fused_forward && half && !a->qkv16 && !be->host_memory &&
                      D / NH <= SHERL_ATTN_FUSED_MAX_HS;
    if (m->prec == SHERL_FP32)
        inp16 = NULL, out16 = NULL;
    if (a->inp16 && inp16)
        be->copy_device(a->inp16, inp16, (size_t)N * D * sizeof(uint16_t));
    else if (a->inp16)
        half_round(be, m->prec, a->inp16, inp, (size_t)N * D);
    if (a->inp16)
        inp16 = a->inp16;
    /* ...and when a pass's Q|K|V fits the probabilities' buffer (unused then) as halves, its
     * Q|K|V and attention output exist only rounded, as its products read them: the Q|K|V
     * product writes halves (its bias and rounding fused in), the attention reads and writes
     * halves, its output in attn's floats. */
    uint16_t *qkv16 = fused && a->probs && a->probs_n * sizeof(float) >=
                                               (size_t)seqs * T * 3 * D * sizeof(uint16_t)
                          ? (uint16_t *)a->probs
                          : NULL;
    uint16_t *attn16 = qkv16 ? (uint16_t *)a->attn : a->attn16;
    for (int b0 = 0; qkv16 && b0 < B; b0 += seqs) {
        int b = B - b0 < seqs ? B - b0 : seqs;
        size_t r0 = (size_t)b0 * T;
        const uint16_t *x16 = inp16 ? inp16 + r0 * D : act16;
        if (!inp16)
            half_round(be, m->prec, act16, inp + r0 * D, (size_t)b * T * D);
        be->linear_half16_forward(qkv16, a->qkv, x16, ly->qkv_w16, ly->qkv_b, b * T, D, 3 * D,
                                  half_type(m->prec));
        be->attention_half16_forward(attn16 + r0 * D, qkv16, mask_add + r0, b, T, NH, D / NH,
                                     half_type(m->prec));
    }
    for (int b0 = 0; !qkv16 && b0 < B; b0 += seqs) {
        int b = B - b0 < seqs ? B - b0 : seqs;
        size_t r0 = (size_t)b0 * T;
        float *qkv = a->qkv + (a->qkv_whole ? r0 * 3 * D : 0);
        linear_forward(m, qkv, inp + r0 * D, inp16 ? inp16 + r0 * D : NULL, ly->qkv_w,
                       ly->qkv_w16, half ? NULL : ly->qkv_b, act16, act16_n, b * T, D, 3 * D);
        if (half) /* Q|K|V rounded, as autocast's Linear returns them */
            be->bias_half_round_forward(qkv, a->qkv16 ? a->qkv16 + r0 * 3 * D : NULL, ly->qkv_b,
                                        b * T, 3 * D, half_type(m->prec));
        attention_forward(m, a->attn + r0 * D, fused ? NULL : a->probs, qkv, mask_add + r0, b,
                          T);
    }
    if (a->attn16)
        half_round(be, m->prec, a->attn16, a->attn, (size_t)N * D);
    linear_forward(m, a->res1, a->attn, attn16, ly->attn_out_w, ly->attn_out_w16,
                   half ? NULL : ly->attn_out_b, act16, act16_n, N, D, D);
    /* A half layer that keeps no ln1_16 (forward only) rounds ln1 in the LayerNorm's pass too,
     * into the chunk buffer ffn_act, which a half layer's feed-forward leaves unused (its GELU
     * goes to act16): a pass's chunk holds at least N D / 2F rows (bert_ffn_chunk), so
     * [chunk, F] floats hold [N, D] halves. */
    uint16_t *ln1_16 = a->ln1_16;
    if (!ln1_16 && half && a->ffn_act &&
        (size_t)a->ffn_rows * F * sizeof(float) >= (size_t)N * D * sizeof(uint16_t))
        ln1_16 = (uint16_t *)a->ffn_act;
    /* a layer that is not kept needs neither LayerNorm's input afterwards: not written */
    be->residual_layernorm_forward(a->ln1, ln1_16, a->kept ? a->res1 : NULL, a->ln1_mean,
                                   a->ln1_rstd, a->res1,
                                   half ? ly->attn_out_b : NULL, inp, ly->ln1_w, ly->ln1_b,
                                   N, D, eps, half_type(m->prec));
    /* feed-forward block: LN2(h + W2 gelu(W1 h)), a chunk of tokens at a time through the
     * [chunk, F] buffers (bert_ffn_chunk) */
    int chunk = bert_ffn_pass_rows(c, N, !be->host_memory, a->ffn_rows);
    for (int n0 = 0; n0 < N; n0 += chunk) {
        int n = N - n0 < chunk ? N - n0 : chunk;
        size_t r = (size_t)n0 * D;
        linear_forward(m, a->ffn_pre, a->ln1 + r, ln1_16 ? ln1_16 + r : NULL,
                       ly->ffn_in_w, ly->ffn_in_w16, half ? NULL : ly->ffn_in_b, act16, act16_n,
                       n, D, F);
        if (half) { /* act16 (at least a chunk's [n, F]) = half(gelu(ffn_pre + b1)); b2 is
                     * added with the residual below */
            be->bias_gelu_half_forward(act16, a->ffn_pre, ly->ffn_in_b, n, F,
                                       half_type(m->prec));
            linear_forward(m, a->res2 + r, NULL, act16, NULL, ly->ffn_out_w16, NULL, NULL, 0, n,
                           F, D);
            continue;
        }
        be->gelu_forward(a->ffn_act, a->ffn_pre, (size_t)n * F);
        linear_forward(m, a->res2 + r, a->ffn_act, NULL, ly->ffn_out_w, ly->ffn_out_w16,
                       ly->ffn_out_b, act16, act16_n, n, F, D);
    }
    be->residual_layernorm_forward(out, out16, a->kept ? a->res2 : NULL, a->ln2_mean,
                                   a->ln2_rstd, a->res2,
                                   half ? ly->ffn_out_b : NULL, a->ln1, ly->ln2_w, ly->ln2_b, N,
                                   D, eps, half_type(m->prec));
}

void bert_layer_grad_ws_layout(bert_layer_grad_ws *g, sherl_arena *ar, const hf_config *c, int B,
                               int T, int device)
{
    int D = c->hidden_size, NH = c->num_attention_heads;
    size_t BT = (size_t)B * T, at = ar->used, chunks_at, end;
    g->ffn_rows = bert_ffn_chunk(c, B * T, device);
    size_t chunk_f = (size_t)g->ffn_rows * c->intermediate_size;
    int seqs = attn_layout_seqs(c, B, T, device);
    size_t rows = (size_t)seqs * T;
    g->d_res2 = arena_floats(ar, BT * D);
    chunks_at = ar->used;
    g->d_ln1 = arena_floats(ar, BT * D);
    g->ffn_pre = arena_floats(ar, chunk_f);
    g->d_ffn_act = arena_floats(ar, chunk_f);
    g->d_ffn_pre = arena_floats(ar, chunk_f);
    end = ar->used;
    /* the attention block's come once the feed-forward block's are dead: d_res1 over d_res2,
     * the chunk buffers over d_ln1 (dead once LayerNorm 1's backward has read it into d_res1,
     * before the first chunk) */
    ar->used = at;
    g->d_res1 = arena_floats(ar, BT * D);
    ar->used = chunks_at;
    g->d_attn = arena_floats(ar, rows * D);
    g->d_qkv = arena_floats(ar, rows * 3 * D);
    g->probs = arena_floats(ar, (size_t)seqs * NH * T * T);
    g->qkv = arena_floats(ar, rows * 3 * D);
    if (ar->used < end)
        ar->used = end;
}

void bert_layer_backward(const bert_model *m, const bert_layer *ly, const bert_layer *gr,
                         const bert_layer_acts *a, bert_layer_grad_ws *g, float *dinp,
                         const float *dout, const float *inp, const float *mask_add,
                         uint16_t *act16, size_t act16_n, int B, int T)
{
    const sherl_backend *be = m->be;
    const hf_config *c = &m->cfg;
    int D = c->hidden_size, F = c->intermediate_size, NH = c->num_attention_heads;
    int N = B * T;
    size_t ND = (size_t)N * D;
#define GR(field) (gr ? gr->field : NULL)
    /* Backward ops accumulate: each scratch gradient is zeroed just before its first use (the
     * attention block's share memory with the feed-forward block's). */
    be->zero(g->d_res2, ND * sizeof(float));
    be->zero(g->d_ln1, ND * sizeof(float));
    /* out = LN2(res2), res2 = W2 gelu(W1 ln1) + ln1 */
    be->layernorm_backward(g->d_res2, GR(ln2_w), GR(ln2_b), dout, a->res2, ly->ln2_w, a->ln2_mean,
                           a->ln2_rstd, N, D);
    be->residual_backward(g->d_ln1, NULL, g->d_res2, ND);
    /* The feed-forward block by the forward's chunks of tokens: ffn_pre = W1 ln1 and its gelu
     * again (the same bits as the forward's; two [N, F] buffers less kept from forward to
     * backward), then the gradients through them; weight gradients accumulate over chunks. */
    int chunk = bert_ffn_pass_rows(c, N, !be->host_memory,
                                   a->ffn_rows < g->ffn_rows ? a->ffn_rows : g->ffn_rows);
    for (int n0 = 0; n0 < N; n0 += chunk) {
        int n = N - n0 < chunk ? N - n0 : chunk;
        size_t r = (size_t)n0 * D, nF = (size_t)n * F;
        float *act = g->d_ffn_act; /* gelu(ffn_pre) until dW2 has read it */
        linear_forward(m, g->ffn_pre, a->ln1 + r, a->ln1_16 ? a->ln1_16 + r : NULL,
                       ly->ffn_in_w, ly->ffn_in_w16, ly->ffn_in_b, act16, act16_n, n, D, F);
        be->gelu_forward(act, g->ffn_pre, nF);
        if (gr)
            linear_backward(m, NULL, gr->ffn_out_w, gr->ffn_out_b, g->d_res2 + r, act, NULL,
                            ly->ffn_out_w, ly->ffn_out_w16, act16, act16_n, n, F, D);
        be->zero(g->d_ffn_act, nF * sizeof(float));
        linear_backward(m, g->d_ffn_act, NULL, NULL, g->d_res2 + r, NULL, NULL, ly->ffn_out_w,
                        ly->ffn_out_w16, act16, act16_n, n, F, D);
        be->zero(g->d_ffn_pre, nF * sizeof(float));
        be->gelu_backward(g->d_ffn_pre, g->ffn_pre, g->d_ffn_act, nF);
        linear_backward(m, g->d_ln1 + r, GR(ffn_in_w), GR(ffn_in_b), g->d_ffn_pre, a->ln1 + r,
                        a->ln1_16 ? a->ln1_16 + r : NULL,
                        ly->ffn_in_w, ly->ffn_in_w16, act16, act16_n, n, D, F);
    }
    /* ln1 = LN1(res1), res1 = Wo attention(Wqkv inp) + inp */
    be->zero(g->d_res1, ND * sizeof(float));
    be->layernorm_backward(g->d_res1, GR(ln1_w), GR(ln1_b), g->d_ln1, a->res1, ly->ln1_w,
                           a->ln1_mean, a->ln1_rstd, N, D);
    if (dinp)
        be->residual_backward(dinp, NULL, g->d_res1, ND);
    /* The attention block by the forward's chunks of sequences: the probabilities again (the
     * same bits as the forward's; its output goes to d_attn, overwritten next), then the
     * gradients through the projection, the attention and Q|K|V. */
    int seqs = bert_attn_seqs(a, NH, B, T);
    for (int b0 = 0; b0 < B; b0 += seqs) {
        int b = B - b0 < seqs ? B - b0 : seqs, n = b * T;
        size_t r0 = (size_t)b0 * T, nD = (size_t)n * D;
        const float *qkv = g->qkv; /* a half layer's kept Q|K|V widened, or the kept fp32 */
        if (a->qkv16)
            half_widen(be, m->prec, g->qkv, a->qkv16 + r0 * 3 * D, nD * 3);
        else
            qkv = a->qkv + r0 * 3 * D;
        attention_forward(m, g->d_attn, g->probs, qkv, mask_add + r0, b, T);
        be->zero(g->d_attn, nD * sizeof(float));
        linear_backward(m, g->d_attn, GR(attn_out_w), GR(attn_out_b), g->d_res1 + r0 * D,
                        a->attn + r0 * D, a->attn16 ? a->attn16 + r0 * D : NULL, ly->attn_out_w,
                        ly->attn_out_w16, act16, act16_n, n, D, D);
        be->zero(g->d_qkv, nD * 3 * sizeof(float));
        be->attention_backward(g->d_qkv, g->d_attn, qkv, g->probs, b, T, NH, D / NH);
        linear_backward(m, dinp ? dinp + r0 * D : NULL, GR(qkv_w), GR(qkv_b), g->d_qkv,
                        inp ? inp + r0 * D : NULL, a->inp16 ? a->inp16 + r0 * D : NULL,
                        ly->qkv_w, ly->qkv_w16, act16, act16_n, n, D, 3 * D);
    }
#undef GR
}

sherl_status bert_forward(const bert_model *m, bert_workspace *ws, const bert_batch *batch,
                          float **hidden)
{
    int L = m->cfg.num_hidden_layers;
    if (!hidden || !hidden[L])
        return sherl_errorf(SHERL_EINVAL, "bert_forward: the last hidden state needs a buffer");
    for (int i = 0; i <= L; i++)
        for (int j = i + 1; j <= L; j++)
            if (hidden[i] && hidden[i] == hidden[j])
                return sherl_errorf(SHERL_EINVAL, "bert_forward: hidden[%d] and hidden[%d] alias",
                                    i, j);
    /* States the caller does not keep ping-pong between two workspace buffers. */
    float *prev = hidden[0] ? hidden[0] : ws->tmp;
    SHERL_TRY(bert_embed_forward(m, ws, batch, prev));
    for (int i = 1; i <= L; i++) {
        float *dst = hidden[i] ? hidden[i] : prev == ws->tmp ? ws->emb : ws->tmp;
        bert_layer_forward(m, &m->layers[i - 1], &ws->acts, dst, prev, ws->mask_add, ws->act16,
                           ws->act16_n,
                           batch->B,
                           batch->T);
        prev = dst;
    }
    return sherl_backend_status(m->be, "the encoder forward");
}

sherl_status bert_sentence_embedding(const bert_model *m, bert_workspace *ws,
                                     const bert_batch *batch, pool_mode mode, float *out)
{
    const sherl_backend *be = m->be;
    int L = m->cfg.num_hidden_layers, D = m->cfg.hidden_size;
    size_t BT = (size_t)batch->B * batch->T;
    float *last = be->alloc(BT * D * sizeof(float));
    float **hidden = calloc((size_t)L + 1, sizeof(float *));
    int32_t *mask = be->alloc(BT * sizeof(int32_t));
    float *pooled = be->alloc((size_t)batch->B * D * sizeof(float));
    pooler pool = {0};
    sherl_status st = sherl_ok();
    if (!last || !hidden || !mask || !pooled) {
        st = sherl_errorf(SHERL_ENOMEM, "out of memory for the sentence embedding");
        goto done;
    }
    st = pooler_create(&pool, be, mode, batch->B);
    if (st.code)
        goto done;
    hidden[L] = last;
    st = bert_forward(m, ws, batch, hidden);
    if (st.code)
        goto done;
    be->copy_to_device(mask, batch->attention_mask, BT * sizeof(int32_t));
    pool_forward(&pool, pooled, last, mask, batch->B, batch->T, D);
    be->l2norm_forward(out, pooled, batch->B, D, 1e-12f);
done:
    pooler_free(&pool);
    if (last)
        be->free(last);
    if (mask)
        be->free(mask);
    if (pooled)
        be->free(pooled);
    free(hidden);
    return st;
}
