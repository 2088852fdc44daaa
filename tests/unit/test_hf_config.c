/* Hugging Face config.json parsing: the real MiniLM config, defaults, and each bad variant. */
#include <criterion/criterion.h>

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hf_config.h"
#include "test_util.h"

/* The MiniLM config, field for field, so variants do not depend on the installed model. */
static const char *k_base =
    "{\n"
    "  \"_name_or_path\": \"nreimers/MiniLM-L6-H384-uncased\",\n"
    "  \"architectures\": [\"BertModel\"],\n"
    "  \"attention_probs_dropout_prob\": 0.1,\n"
    "  \"gradient_checkpointing\": false,\n"
    "  \"hidden_act\": \"gelu\",\n"
    "  \"hidden_dropout_prob\": 0.1,\n"
    "  \"hidden_size\": 384,\n"
    "  \"initializer_range\": 0.02,\n"
    "  \"intermediate_size\": 1536,\n"
    "  \"layer_norm_eps\": 1e-12,\n"
    "  \"max_position_embeddings\": 512,\n"
    "  \"model_type\": \"bert\",\n"
    "  \"num_attention_heads\": 12,\n"
    "  \"num_hidden_layers\": 6,\n"
    "  \"pad_token_id\": 0,\n"
    "  \"position_embedding_type\": \"absolute\",\n"
    "  \"transformers_version\": \"4.8.2\",\n"
    "  \"type_vocab_size\": 2,\n"
    "  \"use_cache\": true,\n"
    "  \"vocab_size\": 30522\n"
    "}\n";

static void check_minilm(const hf_config *c)
{
    cr_assert_eq(c->model_type, HF_MODEL_BERT);
    cr_assert_str_eq(c->model_type_name, "bert");
    cr_assert_eq(c->vocab_size, 30522);
    cr_assert_eq(c->hidden_size, 384);
    cr_assert_eq(c->num_hidden_layers, 6);
    cr_assert_eq(c->num_attention_heads, 12);
    cr_assert_eq(c->intermediate_size, 1536);
    cr_assert_eq(c->max_position_embeddings, 512);
    cr_assert_eq(c->type_vocab_size, 2);
    cr_assert_eq(c->pad_token_id, 0);
    cr_assert_eq(c->layer_norm_eps, 1e-12f);
}

/* k_base with field `name` replaced by the JSON text `value` (NULL: removed). */
static char *variant(const char *name, const char *value)
{
    cJSON *root = cJSON_Parse(k_base);
    cr_assert_not_null(root);
    if (value) {
        cJSON *v = cJSON_Parse(value);
        cr_assert_not_null(v, "bad test value %s", value);
        if (cJSON_GetObjectItemCaseSensitive(root, name))
            cJSON_ReplaceItemInObjectCaseSensitive(root, name, v);
        else
            cJSON_AddItemToObject(root, name, v);
    } else {
        cJSON_DeleteItemFromObjectCaseSensitive(root, name);
    }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    return text;
}

static sherl_status parse_text(const char *text, hf_config *c)
{
    return hf_config_parse(c, text, strlen(text), "cfg.json");
}

/* Expect `code` and a message naming the label and each given string. */
static void expect_(const char *text, sherl_code code, const char *const *want)
{
    hf_config c;
    sherl_status st = parse_text(text, &c);
    cr_assert_eq(st.code, code, "expected %s, got %s: %s\n%s", sherl_code_name(code),
                 sherl_code_name(st.code), st.msg, text);
    cr_assert(strncmp(st.msg, "cfg.json: ", 10) == 0, "message lacks the label: %s", st.msg);
    for (int i = 0; want[i]; i++)
        cr_assert(strstr(st.msg, want[i]), "message '%s' lacks '%s'", st.msg, want[i]);
}
#define expect(text, code, ...) expect_(text, code, (const char *const[]){__VA_ARGS__, NULL})

static void expect_field_(const char *field, const char *value, sherl_code code,
                          const char *const *want)
{
    char *text = variant(field, value);
    expect_(text, code, want);
    free(text);
}
#define expect_field(field, value, code, ...) \
    expect_field_(field, value, code, (const char *const[]){__VA_ARGS__, NULL})

Test(hf_config, real_minilm_config)
{
    char path[1024];
    minilm_file(path, sizeof path, "config.json");
    hf_config c;
    sherl_status st = hf_config_load(&c, path);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    check_minilm(&c);
}

Test(hf_config, embedded_copy_and_defaults)
{
    hf_config c;
    sherl_status st = parse_text(k_base, &c);
    cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
    check_minilm(&c);

    /* optional fields: defaults */
    char *t1 = variant("pad_token_id", NULL);
    char *t2 = variant("layer_norm_eps", NULL);
    char *t3 = variant("hidden_act", NULL);
    char *t4 = variant("position_embedding_type", NULL);
    char *t5 = variant("pad_token_id", "null");
    char *t6 = variant("pad_token_id", "1");
    char *t7 = variant("layer_norm_eps", "1e-5");
    char *all[] = {t1, t2, t3, t4, t5};
    for (int i = 0; i < 5; i++) {
        st = parse_text(all[i], &c);
        cr_assert_eq(st.code, SHERL_OK, "%s", st.msg);
        check_minilm(&c);
    }
    cr_assert_eq(parse_text(t6, &c).code, SHERL_OK);
    cr_assert_eq(c.pad_token_id, 1);
    cr_assert_eq(parse_text(t7, &c).code, SHERL_OK);
    cr_assert_eq(c.layer_norm_eps, 1e-5f);
    for (int i = 0; i < 5; i++)
        free(all[i]);
    free(t6);
    free(t7);

    /* integral numbers written as floats or exponents are integers */
    char *t8 = variant("hidden_size", "3.84e2");
    cr_assert_eq(parse_text(t8, &c).code, SHERL_OK);
    cr_assert_eq(c.hidden_size, 384);
    free(t8);
}

Test(hf_config, model_type)
{
    expect_field("model_type", "\"roberta\"", SHERL_EUNSUPPORTED, "model_type", "roberta",
                 "supported: bert");
    expect_field("model_type", "\"xlm-roberta\"", SHERL_EUNSUPPORTED, "xlm-roberta", "bert");
    expect_field("model_type", "\"gpt2\"", SHERL_EUNSUPPORTED, "gpt2", "bert");
    expect_field("model_type", "\"BERT\"", SHERL_EUNSUPPORTED, "BERT");
    expect_field("model_type", NULL, SHERL_EFORMAT, "model_type", "missing", "bert");
    expect_field("model_type", "5", SHERL_EFORMAT, "model_type", "5", "string");
}

Test(hf_config, integer_fields)
{
    static const char *const fields[] = {"vocab_size", "hidden_size", "num_hidden_layers",
                                         "num_attention_heads", "intermediate_size",
                                         "max_position_embeddings", "type_vocab_size"};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        const char *f = fields[i];
        expect_field(f, NULL, SHERL_EFORMAT, f, "missing");
        expect_field(f, "3.5", SHERL_EFORMAT, f, "3.5", "integer");
        expect_field(f, "\"384\"", SHERL_EFORMAT, f, "string \"384\"", "integer");
        expect_field(f, "-1", SHERL_EFORMAT, f, "-1");
        expect_field(f, "0", SHERL_EFORMAT, f, "is 0");
        expect_field(f, "true", SHERL_EFORMAT, f, "true");
        expect_field(f, "null", SHERL_EFORMAT, f, "null");
        expect_field(f, "[384]", SHERL_EFORMAT, f, "array");
        expect_field(f, "1e300", SHERL_EFORMAT, f, "1e+300");
        expect_field(f, "-0.5", SHERL_EFORMAT, f, "-0.5");
    }
    expect_field("pad_token_id", "-1", SHERL_EFORMAT, "pad_token_id", "-1");
    expect_field("pad_token_id", "30522", SHERL_EFORMAT, "pad_token_id", "30522", "30521");
    expect_field("pad_token_id", "0.5", SHERL_EFORMAT, "pad_token_id", "0.5");
    expect_field("pad_token_id", "\"0\"", SHERL_EFORMAT, "pad_token_id");
}

Test(hf_config, upper_bounds)
{
    expect_field("hidden_size", "70000", SHERL_EFORMAT, "hidden_size", "70000", "65536");
    expect_field("num_hidden_layers", "2000", SHERL_EFORMAT, "num_hidden_layers", "2000", "1024");
    expect_field("vocab_size", "10000001", SHERL_EFORMAT, "vocab_size", "10000001");
    expect_field("max_position_embeddings", "2000000", SHERL_EFORMAT, "max_position_embeddings",
                 "2000000");
    expect_field("intermediate_size", "1000000", SHERL_EFORMAT, "intermediate_size", "1000000");
    expect_field("type_vocab_size", "100000", SHERL_EFORMAT, "type_vocab_size", "100000");
    expect_field("num_attention_heads", "385", SHERL_EFORMAT, "num_attention_heads", "385");
    expect_field("vocab_size", "4294967297", SHERL_EFORMAT, "vocab_size", "4294967297");

    /* combinations that would overflow later allocations */
    char *t = variant("vocab_size", "10000000");
    cJSON *root = cJSON_Parse(t);
    free(t);
    cJSON_ReplaceItemInObjectCaseSensitive(root, "hidden_size", cJSON_CreateNumber(1024));
    cJSON_ReplaceItemInObjectCaseSensitive(root, "num_attention_heads", cJSON_CreateNumber(16));
    t = cJSON_Print(root);
    cJSON_Delete(root);
    expect(t, SHERL_EFORMAT, "vocab_size x hidden_size", "limit");
    free(t);

    t = variant("num_hidden_layers", "1024");
    root = cJSON_Parse(t);
    free(t);
    cJSON_ReplaceItemInObjectCaseSensitive(root, "hidden_size", cJSON_CreateNumber(16384));
    cJSON_ReplaceItemInObjectCaseSensitive(root, "num_attention_heads", cJSON_CreateNumber(16));
    cJSON_ReplaceItemInObjectCaseSensitive(root, "intermediate_size", cJSON_CreateNumber(65536));
    t = cJSON_Print(root);
    cJSON_Delete(root);
    expect(t, SHERL_EFORMAT, "parameters", "limit");
    free(t);
}

Test(hf_config, heads_divide_hidden)
{
    expect_field("num_attention_heads", "7", SHERL_EFORMAT, "hidden_size 384",
                 "num_attention_heads 7", "divisible");
    hf_config c;
    char *t = variant("num_attention_heads", "384");
    cr_assert_eq(parse_text(t, &c).code, SHERL_OK);
    free(t);
}

Test(hf_config, layer_norm_eps)
{
    expect_field("layer_norm_eps", "0", SHERL_EFORMAT, "layer_norm_eps", "(0, 1)");
    expect_field("layer_norm_eps", "1", SHERL_EFORMAT, "layer_norm_eps", "is 1,");
    expect_field("layer_norm_eps", "-1e-12", SHERL_EFORMAT, "layer_norm_eps", "-1e-12");
    expect_field("layer_norm_eps", "\"1e-12\"", SHERL_EFORMAT, "layer_norm_eps", "string");
    expect_field("layer_norm_eps", "1e-50", SHERL_EFORMAT, "layer_norm_eps", "1e-50");
    expect_field("layer_norm_eps", "false", SHERL_EFORMAT, "layer_norm_eps", "false");
}

Test(hf_config, activation_and_positions)
{
    expect_field("hidden_act", "\"relu\"", SHERL_EUNSUPPORTED, "hidden_act", "relu", "gelu");
    expect_field("hidden_act", "\"gelu_new\"", SHERL_EUNSUPPORTED, "hidden_act", "gelu_new");
    expect_field("hidden_act", "3", SHERL_EFORMAT, "hidden_act", "3");
    expect_field("position_embedding_type", "\"relative_key\"", SHERL_EUNSUPPORTED,
                 "position_embedding_type", "relative_key", "absolute");
    expect_field("position_embedding_type", "[1]", SHERL_EFORMAT, "position_embedding_type");
}

Test(hf_config, bad_json)
{
    expect("", SHERL_EFORMAT, "JSON");
    expect("   ", SHERL_EFORMAT, "JSON");
    expect("[1, 2]", SHERL_EFORMAT, "object");
    expect("\"bert\"", SHERL_EFORMAT, "object");
    expect("{\"model_type\": \"bert\"", SHERL_EFORMAT, "JSON", "line 1");
    expect("{\n\"model_type\": bert}", SHERL_EFORMAT, "JSON", "line 2");
    expect("{\"model_type\": \"bert\"} x", SHERL_EFORMAT, "after the JSON");

    /* duplicate keys: cJSON would take the first, Python the last */
    size_t n = strlen(k_base);
    char *dup = malloc(n + 64);
    snprintf(dup, n + 64, "{\"hidden_size\": 768,%s", k_base + 1);
    expect(dup, SHERL_EFORMAT, "hidden_size", "more than once");
    free(dup);

    /* a NUL byte inside */
    hf_config c;
    char nul[] = "{\"model_type\": \"bert\0\"}";
    sherl_status st = hf_config_parse(&c, nul, sizeof nul - 1, "cfg.json");
    cr_assert_eq(st.code, SHERL_EFORMAT);
    cr_assert(strstr(st.msg, "NUL"), "%s", st.msg);

    /* deep nesting is refused, not a stack overflow */
    char *deep = nested_json(100000);
    expect(deep, SHERL_EFORMAT, "deeper");
    free(deep);
}

Test(hf_config, load_errors)
{
    hf_config c;
    sherl_status st = hf_config_load(&c, SHERL_TEST_WORK "/no-such-config.json");
    cr_assert_eq(st.code, SHERL_EIO);
    cr_assert(strstr(st.msg, "no-such-config.json"), "%s", st.msg);
    st = hf_config_load(&c, SHERL_TEST_WORK);
    cr_assert_eq(st.code, SHERL_EIO);

    const char *path = SHERL_TEST_WORK "/hf_bad_config.json";
    char *t = variant("hidden_act", "\"silu\"");
    write_file(path, t, strlen(t));
    free(t);
    st = hf_config_load(&c, path);
    cr_assert_eq(st.code, SHERL_EUNSUPPORTED);
    cr_assert(strstr(st.msg, "hf_bad_config.json") && strstr(st.msg, "silu"), "%s", st.msg);
}
