/* Hugging Face config.json for BERT-family encoders; see hf_config.h.
 *
 * Only the fields the engine uses are read; everything else in the file is ignored. Each
 * supported model_type has an entry in k_models below; adding RoBERTa later means adding its
 * enum value, a row here, and whatever checks differ (e.g. pad_token_id / position offset). */
#include "hf_config.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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

/* Shortest of %.15g / %.17g that reads back as the same double. */
static void fmt_double(char *buf, size_t cap, double d)
{
    snprintf(buf, cap, "%.15g", d);
    if (strtod(buf, NULL) != d)
        snprintf(buf, cap, "%.17g", d);
}

static void describe(const cJSON *v, char *buf, size_t cap)
{
    if (cJSON_IsNumber(v))
        fmt_double(buf, cap, v->valuedouble);
    else if (cJSON_IsString(v))
        snprintf(buf, cap, "the string \"%.40s\"", v->valuestring);
    else if (cJSON_IsBool(v))
        snprintf(buf, cap, "%s", cJSON_IsTrue(v) ? "true" : "false");
    else if (cJSON_IsNull(v))
        snprintf(buf, cap, "null");
    else if (cJSON_IsArray(v))
        snprintf(buf, cap, "an array");
    else if (cJSON_IsObject(v))
        snprintf(buf, cap, "an object");
    else
        snprintf(buf, cap, "an invalid value");
}

/* Whether the JSON text nests arrays/objects deeper than `limit` (cJSON refuses those; this
 * only picks the error message). */
static int json_too_deep(const char *s, size_t n, int limit)
{
    int depth = 0, in_str = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = 0;
        } else if (c == '"') {
            in_str = 1;
        } else if (c == '[' || c == '{') {
            if (++depth > limit)
                return 1;
        } else if (c == ']' || c == '}') {
            depth--;
        }
    }
    return 0;
}

/* Reads integer field `name` into *out. Absent (or null when has_default) gives def. */
static sherl_status get_int(const cJSON *root, const char *name, int has_default, int def,
                            long long lo, long long hi, int *out, const char *label)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    if (!v || (has_default && cJSON_IsNull(v))) {
        if (has_default) {
            *out = def;
            return sherl_ok();
        }
        return sherl_errorf(SHERL_EFORMAT,
                            "%.200s: field '%s' is missing (expected an integer in [%lld, %lld])",
                            label, name, lo, hi);
    }
    char desc[96];
    describe(v, desc, sizeof desc);
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || floor(v->valuedouble) != v->valuedouble)
        return sherl_errorf(SHERL_EFORMAT, "%.200s: field '%s' is %s, expected an integer in [%lld, %lld]",
                            label, name, desc, lo, hi);
    double d = v->valuedouble;
    if (d < (double)lo || d > (double)hi)
        return sherl_errorf(SHERL_EFORMAT, "%.200s: field '%s' is %s, expected an integer in [%lld, %lld]",
                            label, name, desc, lo, hi);
    *out = (int)d;
    return sherl_ok();
}

/* Optional string field that must equal `want` when present. */
static sherl_status check_string(const cJSON *root, const char *name, const char *want,
                                 const char *label)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    if (!v || cJSON_IsNull(v))
        return sherl_ok();
    if (!cJSON_IsString(v)) {
        char desc[96];
        describe(v, desc, sizeof desc);
        return sherl_errorf(SHERL_EFORMAT, "%.200s: field '%s' is %s, expected the string \"%s\"",
                            label, name, desc, want);
    }
    if (strcmp(v->valuestring, want) != 0)
        return sherl_errorf(SHERL_EUNSUPPORTED,
                            "%.200s: field '%s' is \"%.60s\", which is not supported (supported: \"%s\")",
                            label, name, v->valuestring, want);
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
    if (!cJSON_IsObject(root))
        return sherl_errorf(SHERL_EFORMAT, "%.200s: config is not a JSON object", label);
    SHERL_TRY(check_duplicates(root, label));

    /* model_type first: it decides what else is expected. */
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (!mt)
        return sherl_errorf(SHERL_EFORMAT,
                            "%.200s: field 'model_type' is missing (supported: " SUPPORTED_LIST ")",
                            label);
    if (!cJSON_IsString(mt)) {
        char desc[96];
        describe(mt, desc, sizeof desc);
        return sherl_errorf(SHERL_EFORMAT,
                            "%.200s: field 'model_type' is %s, expected a string (supported: "
                            SUPPORTED_LIST ")", label, desc);
    }
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

    SHERL_TRY(get_int(root, "vocab_size", 0, 0, 1, HF_MAX_VOCAB, &cfg->vocab_size, label));
    SHERL_TRY(get_int(root, "hidden_size", 0, 0, 1, HF_MAX_HIDDEN, &cfg->hidden_size, label));
    SHERL_TRY(get_int(root, "num_hidden_layers", 0, 0, 1, HF_MAX_LAYERS, &cfg->num_hidden_layers,
                      label));
    SHERL_TRY(get_int(root, "num_attention_heads", 0, 0, 1, cfg->hidden_size,
                      &cfg->num_attention_heads, label));
    SHERL_TRY(get_int(root, "intermediate_size", 0, 0, 1, HF_MAX_INTERMEDIATE,
                      &cfg->intermediate_size, label));
    SHERL_TRY(get_int(root, "max_position_embeddings", 0, 0, 1, HF_MAX_POSITIONS,
                      &cfg->max_position_embeddings, label));
    SHERL_TRY(get_int(root, "type_vocab_size", 0, 0, 1, HF_MAX_TYPE_VOCAB, &cfg->type_vocab_size,
                      label));
    SHERL_TRY(get_int(root, "pad_token_id", 1, 0, 0, cfg->vocab_size - 1, &cfg->pad_token_id,
                      label));

    if (cfg->hidden_size % cfg->num_attention_heads != 0)
        return sherl_errorf(SHERL_EFORMAT,
                            "%.200s: hidden_size %d is not divisible by num_attention_heads %d",
                            label, cfg->hidden_size, cfg->num_attention_heads);

    const cJSON *eps = cJSON_GetObjectItemCaseSensitive(root, "layer_norm_eps");
    if (!eps || cJSON_IsNull(eps)) {
        cfg->layer_norm_eps = 1e-12f;
    } else {
        char desc[96];
        describe(eps, desc, sizeof desc);
        if (!cJSON_IsNumber(eps) || !(eps->valuedouble > 0.0 && eps->valuedouble < 1.0) ||
            !((float)eps->valuedouble > 0.0f && (float)eps->valuedouble < 1.0f))
            return sherl_errorf(SHERL_EFORMAT,
                                "%.200s: field 'layer_norm_eps' is %s, expected a number in (0, 1)",
                                label, desc);
        cfg->layer_norm_eps = (float)eps->valuedouble;
    }

    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (act && !cJSON_IsString(act)) {
        char desc[96];
        describe(act, desc, sizeof desc);
        return sherl_errorf(SHERL_EFORMAT, "%.200s: field 'hidden_act' is %s, expected the string \"gelu\"",
                            label, desc);
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
    if (len && memchr(json, '\0', len))
        return sherl_errorf(SHERL_EFORMAT, "%.200s: config contains a NUL byte at offset %zu", label,
                            (size_t)((const char *)memchr(json, '\0', len) - json));
    /* NUL-terminated private copy: cJSON never reads past it. */
    char *text = malloc(len + 1);
    if (!text)
        return sherl_errorf(SHERL_ENOMEM, "%.200s: out of memory", label);
    if (len)
        memcpy(text, json, len);
    text[len] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    sherl_status st;
    if (!root) {
        size_t pos = end && end >= text && end <= text + len ? (size_t)(end - text) : 0;
        int line = 1, col = 1;
        for (size_t i = 0; i < pos; i++) {
            if (text[i] == '\n') {
                line++;
                col = 1;
            } else {
                col++;
            }
        }
        if (json_too_deep(text, len, CJSON_NESTING_LIMIT))
            st = sherl_errorf(SHERL_EFORMAT, "%.200s: JSON nests deeper than %d levels", label,
                              CJSON_NESTING_LIMIT);
        else
            st = sherl_errorf(SHERL_EFORMAT, "%.200s: not valid JSON (error near line %d, column %d)",
                              label, line, col);
    } else {
        size_t pos = end && end >= text && end <= text + len ? (size_t)(end - text) : len;
        while (pos < len && (text[pos] == ' ' || text[pos] == '\t' || text[pos] == '\n' ||
                             text[pos] == '\r'))
            pos++;
        if (pos < len)
            st = sherl_errorf(SHERL_EFORMAT,
                              "%.200s: unexpected data after the JSON object (byte %zu)", label, pos);
        else
            st = parse_root(cfg, root, label);
    }
    cJSON_Delete(root);
    free(text);
    if (st.code != SHERL_OK)
        memset(cfg, 0, sizeof *cfg);
    return st;
}

sherl_status hf_config_load(hf_config *cfg, const char *path)
{
    if (!cfg || !path)
        return sherl_errorf(SHERL_EINVAL, "hf_config_load: NULL argument");
    memset(cfg, 0, sizeof *cfg);
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return sherl_errorf(SHERL_EIO, "%.300s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(fp), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(fp);
        return sherl_errorf(SHERL_EIO, "%.300s: not a regular file", path);
    }
    if ((unsigned long long)sb.st_size > HF_CONFIG_MAX_BYTES) {
        fclose(fp);
        return sherl_errorf(SHERL_EFORMAT, "%.300s: %lld bytes is too large for a config (limit %u)",
                            path, (long long)sb.st_size, HF_CONFIG_MAX_BYTES);
    }
    size_t cap = (size_t)sb.st_size + 1;
    char *buf = malloc(cap);
    if (!buf) {
        fclose(fp);
        return sherl_errorf(SHERL_ENOMEM, "%.300s: out of memory", path);
    }
    size_t len = fread(buf, 1, cap, fp);
    int err = ferror(fp);
    fclose(fp);
    if (err) {
        free(buf);
        return sherl_errorf(SHERL_EIO, "%.300s: read failed", path);
    }
    if (len == cap) { /* grew while we read it */
        free(buf);
        return sherl_errorf(SHERL_EIO, "%.300s: file changed while being read", path);
    }
    sherl_status st = hf_config_parse(cfg, buf, len, path);
    free(buf);
    return st;
}
