/* Hugging Face config.json for BERT-family encoders; see hf_config.h.
 *
 * Only the fields the engine uses are read; everything else in the file is ignored. Each
 * supported model_type has an entry in k_models below; adding RoBERTa later means adding its
 * enum value, a row here, and whatever checks differ (e.g. pad_token_id / position offset). */
#include "hf_config.h"

#include <cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_util.h"

#define HF_CONFIG_MAX_BYTES (16u * 1024u * 1024u)

/* Bounds that keep every later size computation far from overflow: each weight matrix has at
 * most HF_MAX_MATRIX elements (fits an int index), the whole model at most HF_MAX_PARAMS. */
#define HF_MAX_VOCAB 10000000
#define HF_MAX_HIDDEN 65536
#define HF_MAX_LAYERS 1024
#define HF_MAX_INTERMEDIATE 262144
#define HF_MAX_POSITIONS 1048576
#define HF_MAX_TYPE_VOCAB 1024
#define HF_MAX_MATRIX 2147483647LL
#define HF_MAX_PARAMS (1LL << 34)

static const struct {
    const char *name;
    hf_model_type type;
} k_models[] = {
    {"bert", HF_MODEL_BERT},
};
#define SUPPORTED_LIST "bert"

/* Optional string field that must equal `want` when present. */
static sherl_status check_string(const cJSON *root, const char *name, const char *want,
                                 const char *label)
{
    const char *v = NULL;
    SHERL_TRY(json_get_string(root, label, name, &v));
    if (v && strcmp(v, want) != 0)
        return sherl_errorf(SHERL_EUNSUPPORTED,
                            "%.200s: field '%s' is \"%.60s\", which is not supported (supported: \"%s\")",
                            label, name, v, want);
    return sherl_ok();
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Duplicate keys: cJSON keeps them all and lookups return the first, while Python's json keeps
 * the last. Refuse rather than silently disagree with transformers. */
static sherl_status check_duplicates(const cJSON *root, const char *label)
{
    int n = cJSON_GetArraySize(root);
    if (n < 2)
        return sherl_ok();
    const char **keys = malloc((size_t)n * sizeof *keys);
    if (!keys)
        return sherl_errorf(SHERL_ENOMEM, "%.200s: out of memory", label);
    int i = 0;
    for (const cJSON *c = root->child; c && i < n; c = c->next)
        keys[i++] = c->string;
    qsort(keys, (size_t)i, sizeof *keys, cmp_str);
    sherl_status st = sherl_ok();
    for (int k = 1; k < i; k++)
        if (strcmp(keys[k - 1], keys[k]) == 0) {
            st = sherl_errorf(SHERL_EFORMAT, "%.200s: field '%.100s' appears more than once", label,
                              keys[k]);
            break;
        }
    free(keys);
    return st;
}

static sherl_status parse_root(hf_config *cfg, const cJSON *root, const char *label)
{
    SHERL_TRY(json_expect_object(root, label, "config"));
    SHERL_TRY(check_duplicates(root, label));

    /* model_type first: it decides what else is expected. */
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (!mt)
        return sherl_errorf(SHERL_EFORMAT,
                            "%.200s: field 'model_type' is missing (supported: " SUPPORTED_LIST ")",
                            label);
    if (!cJSON_IsString(mt))
        return json_field_error(label, "model_type", mt, "a string (supported: " SUPPORTED_LIST ")");
    int found = -1;
    for (size_t i = 0; i < sizeof k_models / sizeof k_models[0]; i++)
        if (strcmp(mt->valuestring, k_models[i].name) == 0)
            found = (int)i;
    if (found < 0)
        return sherl_errorf(SHERL_EUNSUPPORTED,
                            "%.200s: model_type \"%.60s\" is not supported (supported: "
                            SUPPORTED_LIST ")", label, mt->valuestring);
    cfg->model_type = k_models[found].type;
    snprintf(cfg->model_type_name, sizeof cfg->model_type_name, "%s", k_models[found].name);

    SHERL_TRY(json_require_int(root, label, "vocab_size", 1, HF_MAX_VOCAB, &cfg->vocab_size));
    SHERL_TRY(json_require_int(root, label, "hidden_size", 1, HF_MAX_HIDDEN, &cfg->hidden_size));
    SHERL_TRY(json_require_int(root, label, "num_hidden_layers", 1, HF_MAX_LAYERS,
                               &cfg->num_hidden_layers));
    SHERL_TRY(json_require_int(root, label, "num_attention_heads", 1, cfg->hidden_size,
                               &cfg->num_attention_heads));
    SHERL_TRY(json_require_int(root, label, "intermediate_size", 1, HF_MAX_INTERMEDIATE,
                               &cfg->intermediate_size));
    SHERL_TRY(json_require_int(root, label, "max_position_embeddings", 1, HF_MAX_POSITIONS,
                               &cfg->max_position_embeddings));
    SHERL_TRY(json_require_int(root, label, "type_vocab_size", 1, HF_MAX_TYPE_VOCAB,
                               &cfg->type_vocab_size));
    cfg->pad_token_id = 0;
    SHERL_TRY(json_get_int(root, label, "pad_token_id", 0, cfg->vocab_size - 1,
                           &cfg->pad_token_id));

    if (cfg->hidden_size % cfg->num_attention_heads != 0)
        return sherl_errorf(SHERL_EFORMAT,
                            "%.200s: hidden_size %d is not divisible by num_attention_heads %d",
                            label, cfg->hidden_size, cfg->num_attention_heads);

    const cJSON *eps = cJSON_GetObjectItemCaseSensitive(root, "layer_norm_eps");
    if (!eps || cJSON_IsNull(eps)) {
        cfg->layer_norm_eps = 1e-12f;
    } else {
        if (!cJSON_IsNumber(eps) || !(eps->valuedouble > 0.0 && eps->valuedouble < 1.0) ||
            !((float)eps->valuedouble > 0.0f && (float)eps->valuedouble < 1.0f))
            return json_field_error(label, "layer_norm_eps", eps, "a number in (0, 1)");
        cfg->layer_norm_eps = (float)eps->valuedouble;
    }

    SHERL_TRY(check_string(root, "hidden_act", "gelu", label));
    SHERL_TRY(check_string(root, "position_embedding_type", "absolute", label));

    /* Size bounds across fields, so no later allocation can overflow. */
    long long h = cfg->hidden_size, inter = cfg->intermediate_size;
    struct {
        const char *what;
        long long n;
    } mats[] = {
        {"vocab_size x hidden_size", (long long)cfg->vocab_size * h},
        {"max_position_embeddings x hidden_size", (long long)cfg->max_position_embeddings * h},
        {"hidden_size x hidden_size", h * h},
        {"intermediate_size x hidden_size", inter * h},
    };
    for (size_t i = 0; i < sizeof mats / sizeof mats[0]; i++)
        if (mats[i].n > HF_MAX_MATRIX)
            return sherl_errorf(SHERL_EFORMAT,
                                "%.200s: %s = %lld elements is over the limit of %lld for one matrix",
                                label, mats[i].what, mats[i].n, HF_MAX_MATRIX);
    long long per_layer = 4 * (h * h + h) + 2 * inter * h + inter + h + 4 * h;
    long long total = (long long)cfg->num_hidden_layers * per_layer +
                      ((long long)cfg->vocab_size + cfg->max_position_embeddings +
                       cfg->type_vocab_size + 2) * h;
    if (total > HF_MAX_PARAMS)
        return sherl_errorf(SHERL_EFORMAT,
                            "%.200s: the model would have %lld parameters, over the limit of %lld",
                            label, total, HF_MAX_PARAMS);
    return sherl_ok();
}

sherl_status hf_config_parse(hf_config *cfg, const char *json, size_t len, const char *label)
{
    if (!cfg)
        return sherl_errorf(SHERL_EINVAL, "hf_config_parse: NULL config");
    memset(cfg, 0, sizeof *cfg);
    if (!label)
        label = "<config.json>";
    if (!json && len)
        return sherl_errorf(SHERL_EINVAL, "%.200s: NULL text", label);
    if (len > HF_CONFIG_MAX_BYTES)
        return sherl_errorf(SHERL_EFORMAT, "%.200s: %zu bytes is too large for a config (limit %u)",
                            label, len, HF_CONFIG_MAX_BYTES);
    cJSON *root = NULL;
    sherl_status st = json_parse(json, len, label, "config", &root);
    if (st.code == SHERL_OK)
        st = parse_root(cfg, root, label);
    cJSON_Delete(root);
    if (st.code != SHERL_OK)
        memset(cfg, 0, sizeof *cfg);
    return st;
}

sherl_status hf_config_load(hf_config *cfg, const char *path)
{
    if (!cfg || !path)
        return sherl_errorf(SHERL_EINVAL, "hf_config_load: NULL argument");
    memset(cfg, 0, sizeof *cfg);
    char *buf;
    size_t len;
    SHERL_TRY(sherl_read_file(path, HF_CONFIG_MAX_BYTES, &buf, &len));
    sherl_status st = hf_config_parse(cfg, buf, len, path);
    free(buf);
    return st;
}
